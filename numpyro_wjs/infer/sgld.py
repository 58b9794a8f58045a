"""Stochastic-gradient Langevin kernels for ``numpyro.infer.MCMC``: SGLD and SGHMC.

They run the user's unchanged NumPyro model whose likelihood sits in
``numpyro.plate("data", N, subsample_size=B)``: each step draws a fresh minibatch
for every subsample plate, substitutes it as the plate's indices (the plate then
scales the likelihood by ``N / B``), and differentiates the model's potential in
unconstrained space (``numpyro.infer.util.potential_energy``), as NUTS does with the
whole data. The math lives in ``numpyro_wjs.core.sgld``; these classes bind the
model, run warmup and keep the state.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro.optim
from jax import random
from jax.flatten_util import ravel_pytree
from numpyro.handlers import seed, substitute
from numpyro.infer.gibbs import prototype_trace
from numpyro.infer.hmc_util import HMCAdaptState
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.util import potential_energy

from numpyro_wjs import validation
from numpyro_wjs.core import langevin, metropolis
from numpyro_wjs.core import sgld as core
from numpyro_wjs.infer.adaptation import StepAdaptation
from numpyro_wjs.infer.base import Kernel, KernelState
from numpyro_wjs.infer.sources import check_finite_start

__all__ = ["SGHMC", "SGLD", "NoiseLimitedAdaptation", "SGAdaptState", "SGStats", "subsample_plates"]

Array = jax.Array

class SGStats(NamedTuple):
    """What a step of ``SGLD`` / ``SGHMC`` did (``KernelState.info``); the defaults are the
    info before the first step."""

    acceptance_rate: Array = 1.0
    """During adapted warmup, the minibatch Metropolis acceptance of the step (applied); 1
    after warmup (nothing is rejected)."""
    diverging: Array = False
    """The step was non-finite (or, during warmup, its minibatch energy error exceeded
    ``metropolis.MAX_LOG_ACCEPT_DROP``); it was discarded."""
    step_size: Array = 0.0
    """``h`` of the step (ArviZ ``sample_stats`` ``step_size``)."""
    minibatch_size: Array = 0
    """Data rows drawn per step, summed over subsample plates."""
    noise_var: Array | None = None
    """During adapted warmup, the per-coordinate gradient-noise variance measured at the
    step's start (``core.sgld.noise_variance`` of two independent minibatch gradients);
    zeros otherwise."""


class SGAdaptState(NamedTuple):
    """Warmup state of ``SGLD`` / ``SGHMC`` (``KernelState.adapt_state``)."""

    step_size: Array
    """The step of the next sampling step: the warmup's result (before a schedule)."""
    dual: HMCAdaptState
    """Dual averaging of the warmup step and the diagonal mass matrix (NumPyro's
    ``warmup_adapter`` through ``StepAdaptation``)."""
    noise_var: Array
    """Running mean over the second half of warmup of ``SGStats.noise_var``."""


@dataclass(frozen=True)
class NoiseLimitedAdaptation:
    """The stochastic-gradient warmup as an adaptation component.

    ``steps`` (a ``StepAdaptation``) tunes the minibatch-Metropolis warmup step by dual
    averaging and, with ``adapt_mass``, a diagonal ``C``; the gradient-noise variance is
    averaged over the second half of warmup, and the last warmup step sets the sampling
    step to ``min(h_DA, core.sgld.noise_limited_step(...))``.
    """

    steps: StepAdaptation
    inflation: float
    friction: float | None
    rmsprop: core.RMSProp | None
    adapt_mass: bool

    def init(self, z, rng_key, step_size, inverse_mass_matrix=None) -> SGAdaptState:
        x = ravel_pytree(z)[0]
        dual = self.steps.init(x, rng_key, step_size, inverse_mass_matrix)
        return SGAdaptState(jnp.asarray(step_size, x.dtype), dual, jnp.zeros_like(x))

    def update(self, i, info: SGStats, state, square_avg, adapt_state: SGAdaptState) -> SGAdaptState:
        """After warmup step ``i`` to ``state`` (``square_avg``: RMSprop's ``V`` there)."""
        w = self.steps.num_warmup
        dual = self.steps.update(i, info.acceptance_rate, ravel_pytree(state.z)[0], adapt_state.dual, True)
        n = jnp.maximum(i - w // 2 + 1, 1)
        noise_var = jnp.where(i >= w // 2, adapt_state.noise_var + (info.noise_var - adapt_state.noise_var) / n,
                              adapt_state.noise_var)
        if self.rmsprop is not None:
            c = core.rmsprop_metric(square_avg, self.rmsprop).inverse_mass_matrix
        else:
            c = dual.inverse_mass_matrix if self.adapt_mass else None
        h_noise = core.noise_limited_step(noise_var, c, self.inflation, self.friction)
        step_size = jnp.where(i == w - 1, jnp.minimum(dual.step_size, h_noise), dual.step_size)
        return SGAdaptState(step_size.astype(noise_var.dtype), dual, noise_var)

    def metric(self, state: SGAdaptState):
        """The adapted diagonal ``C`` (``None``: identity, or RMSprop's, set by the core step)."""
        return self.steps.metric(state.dual) if self.adapt_mass else None


def subsample_plates(kernel: str, model, model_args, model_kwargs, rng_key) -> dict[str, tuple[int, int]]:
    """``{name: (N, B)}`` of the model's subsample plates (``B < N``).

    ``ValueError`` when a plate's ``subsample_size`` exceeds its size (NumPyro would use
    the whole data with only a warning), when there is no subsample plate (on full data
    a stochastic-gradient kernel is ULA / ``UnderdampedLangevin`` with extra bias), or
    when a latent site lies inside a subsample plate.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        trace = prototype_trace(model, rng_key, model_args, model_kwargs)
    plates = {n: s["args"] for n, s in trace.items() if s["type"] == "plate" and s["args"][1] is not None}
    for name, (size, batch) in plates.items():
        if batch > size:
            raise ValueError(
                f"{kernel}: plate '{name}' has subsample_size={batch} larger than its size {size}; "
                f"use subsample_size <= {size}."
            )
    plates = {n: (int(s), int(b)) for n, (s, b) in plates.items() if b < s}
    if not plates:
        raise ValueError(
            f"{kernel} needs a model whose likelihood sits in a subsample plate, e.g. "
            "`with numpyro.plate('data', N, subsample_size=B): numpyro.sample('y', ..., "
            "obs=numpyro.subsample(y, event_dim=0))`; the model has none. On full data use ULA, "
            "UnderdampedLangevin or NUTS (the same dynamics without gradient noise)."
        )
    for name, site in trace.items():
        if site["type"] == "sample" and not site["is_observed"]:
            inside = [f.name for f in site["cond_indep_stack"] if f.name in plates]
            if inside:
                raise ValueError(
                    f"{kernel}: latent site '{name}' lies inside the subsample plate '{inside[0]}': a "
                    "per-row latent is only seen on the rows of the minibatch, so it has no stochastic "
                    "gradient here. Marginalise it, or move it out of the plate."
                )
    return plates


def _check_schedule(schedule) -> Callable | None:
    """``None`` (constant) or ``t -> multiplier`` of the tuned step, ``t`` counting sampling steps."""
    if schedule is None or schedule == "constant":
        return None
    if isinstance(schedule, tuple) and len(schedule) == 3 and schedule[0] == "polynomial":
        b = validation.positive("schedule b", schedule[1])
        gamma = validation.positive("schedule gamma", schedule[2])
        # a (b + t)^-gamma with a = h b^gamma: h at the first sampling step
        return core.polynomial_decay(b**gamma, b, gamma)
    raise ValueError(
        f"`schedule` must be None, 'constant' or ('polynomial', b, gamma), got {schedule!r}."
    )


class _SGKernel(Kernel):
    """Shared by SGLD and SGHMC on the generic shell: the model's minibatch gradient, the
    warmup step (minibatch Metropolis) and the sampling step (unadjusted)."""

    _friction = None
    _info_type = SGStats
    _key_parts = 4
    _target_fields = ("score",)

    def __init__(
        self,
        model,
        *,
        step_size=1e-3,
        adapt_step_size=True,
        target_accept_prob=0.99,
        variance_inflation=0.1,
        preconditioner=None,
        rmsprop_alpha=0.99,
        rmsprop_lambda=1e-5,
        adapt_mass_matrix=None,
        schedule=None,
        control_variates=False,
        with_replacement=True,
        mode_steps=1000,
        init_strategy=init_to_uniform,
    ):
        name = type(self).__name__
        if model is None:
            raise ValueError(f"{name} needs `model`: a NumPyro model with a subsample plate.")
        validation.check_callable(name, "model", model)
        self._model, self._init_strategy = model, init_strategy
        self._step_size = validation.positive("step_size", step_size)
        self._tune = bool(adapt_step_size)  # not `_adapt_step_size`: the noise rule may shrink h on purpose
        self._target_accept_prob = validation.probability("target_accept_prob", target_accept_prob)
        self._variance_inflation = validation.positive("variance_inflation", variance_inflation)
        if preconditioner not in (None, "rmsprop"):
            raise ValueError(f"`preconditioner` must be None or 'rmsprop', got {preconditioner!r}.")
        self._rmsprop = None
        if preconditioner == "rmsprop":
            alpha = validation.probability("rmsprop_alpha", rmsprop_alpha)
            self._rmsprop = core.RMSProp(alpha, validation.positive("rmsprop_lambda", rmsprop_lambda))
        if adapt_mass_matrix and self._rmsprop is not None:
            raise ValueError("`adapt_mass_matrix=True` and `preconditioner='rmsprop'` are two preconditioners; pick one.")
        self._adapt_mass = self._rmsprop is None if adapt_mass_matrix is None else bool(adapt_mass_matrix)
        self._decay = _check_schedule(schedule)
        self._control_variates = bool(control_variates)
        self._replace = bool(with_replacement)
        self._mode_steps = validation.positive_int("mode_steps", mode_steps, minimum=0)

    # -- MCMCKernel interface ---------------------------------------------------
    @property
    def sample_field(self):
        return "z"

    sample_stats = ("diverging", "step_size", "minibatch_size")

    @property
    def evaluations_per_draw(self) -> int:
        """Minibatch gradients per draw after warmup: one (two with control variates)."""
        return 2 if self._control_variates else 1

    def get_diagnostics_str(self, state):
        return f"step size {float(jnp.max(state.step_size)):.2e}, minibatch {int(jnp.max(state.minibatch_size))}"

    def postprocess_fn(self, args, kwargs):
        # the fixed seed lets the replay of the model (deterministic sites) draw its plates' indices
        fn = seed(super().postprocess_fn(args, kwargs), 0)

        def quiet(z):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return fn(z)

        return quiet

    def wrap_model(self, wrapper):
        """Refused: ``numpyro.infer.Gibbs`` does not take models with subsample plates (it
        raises for them), and these kernels need one."""
        raise ValueError(
            f"{type(self).__name__} cannot be a block of numpyro.infer.Gibbs: Gibbs refuses models with "
            "subsample plates, which stochastic-gradient kernels need. Sample the whole model with "
            f"{type(self).__name__}, or use full-data blocks (MALA, MALT, NUTS) in Gibbs."
        )

    def sample(self, state, model_args, model_kwargs):
        """With control variates, the centre first moves to the chain at warmup steps
        ``W/8, W/4, W/2`` (``_recentre_steps``); then the shell's step."""
        if self._control_variates:
            i = state.i[0] if self._setup.vectorized else state.i
            due = jnp.any(jnp.array([i == k for k in self._recentre_steps()] + [False]))
            state = jax.lax.cond(due, lambda s: self._recentre(s, model_args, model_kwargs), lambda s: s, state)
        return super().sample(state, model_args, model_kwargs)

    # -- the shell's hooks ---------------------------------------------------------
    def _options(self, model_args, model_kwargs):
        """The subsample plates ``{name: (N, B)}`` (checked: ``subsample_plates``)."""
        return subsample_plates(type(self).__name__, self._model, model_args, model_kwargs, random.key(0))

    def _adaptation(self, num_warmup, example):
        steps = StepAdaptation(
            num_warmup, ravel_pytree(example)[0], adapt_step_size=True, adapt_mass_matrix=self._adapt_mass,
            target_accept_prob=self._target_accept_prob,
        )
        return NoiseLimitedAdaptation(steps, self._variance_inflation, self._friction, self._rmsprop,
                                      self._adapt_mass)

    def _source(self, z, model_args, model_kwargs):
        """``(x_flat, indices) -> -log p_S(x)``: the model with its plates' indices substituted."""
        unravel = ravel_pytree(z)[1]

        def pe(x, indices):
            with warnings.catch_warnings():  # full-data indices: NumPyro warns the size differs
                warnings.simplefilter("ignore", UserWarning)
                return potential_energy(substitute(self._model, data=indices), model_args, model_kwargs, unravel(x))

        return pe

    def _initial_info(self, z):
        info = super()._initial_info(z)
        return info._replace(noise_var=jnp.zeros_like(ravel_pytree(z)[0]))

    def _init_state(self, z, rng_key, source, metric):
        key, key_core, key_mode = random.split(rng_key, 3)
        x, unravel = ravel_pytree(z)
        if self._mode_steps:
            x = self._towards_mode(key_mode, x, self._grad_fn(source))
            z = unravel(x)
        centre = centre_grad = None
        if self._control_variates:
            centre, centre_grad = x, self._full_grad(source, x)
        state = self._core_init(key_core, z, self._grad_fn(source, centre, centre_grad), metric)
        return state._replace(centre=centre, centre_grad=centre_grad), key

    def _towards_mode(self, rng_key, x, grad_fn):
        """``x`` after ``mode_steps`` minibatch Adam steps up ``log p`` (learning rate 1e-2
        decaying geometrically to 1e-4), a non-finite result leaving ``x`` where it was."""
        n = self._mode_steps
        optim = numpyro.optim.Adam(lambda i: 1e-2 * 0.01 ** (i / n))

        def body(state, key):
            return optim.update(-grad_fn(key, optim.get_params(state)), state), None

        state, _ = jax.lax.scan(body, optim.init(x), random.split(rng_key, n))
        found = optim.get_params(state)
        return jnp.where(jnp.all(jnp.isfinite(found)), found, x)

    def _check_start(self, state) -> None:
        check_finite_start(
            type(self).__name__, state.score, problem="the minibatch gradient is not finite at the initial point",
            fix="Choose `init_params` inside the support, or check the model.",
        )

    def _step_state(self, s: KernelState, source, warmup):
        grad_fn = self._grad_fn(source, s.state.centre, s.state.centre_grad)
        if not self._tune:
            return self._sampling_step(s, grad_fn)
        return jax.lax.cond(warmup, partial(self._warmup_step, grad_fn=grad_fn),
                            partial(self._sampling_step, grad_fn=grad_fn), s)

    def _adapt(self, s: KernelState, new, info, warmup):
        """During adapted warmup: the adaptation update, then ``_after_warmup_step``."""
        if not self._tune:
            return new, s.adapt_state

        def update(new):
            adaptation = self._setup.adaptation
            adapt_state = adaptation.update(s.i, info, new, new.square_avg, s.adapt_state)
            key = random.fold_in(self._step_keys(s)[2], 1)
            return self._after_warmup_step(new, adaptation.metric(adapt_state), key), adapt_state

        return jax.lax.cond(warmup, update, lambda new: (new, s.adapt_state), new)

    # -- the model's gradients ---------------------------------------------------
    def _grad_fn(self, source, centre=None, centre_grad=None) -> core.GradFn:
        """``(key, x) -> g~(x)``: a fresh minibatch per key; control variates around ``centre``."""
        plates = self._setup.options

        def grad_fn(key, x):
            keys = random.split(key, len(plates))
            idx = {n: core.minibatch(k, size, b, self._replace) for k, (n, (size, b)) in zip(keys, plates.items())}
            return -jax.grad(source)(x, idx)

        return grad_fn if centre is None else core.control_variate(grad_fn, centre, centre_grad)

    def _full_grad(self, source, x):
        """``grad log p(x)`` on all the data (every plate's indices ``0..N-1``; no scaling)."""
        return -jax.grad(source)(x, {n: jnp.arange(size) for n, (size, _) in self._setup.options.items()})

    def _minibatch_size(self):
        return jnp.array(sum(b for _, b in self._setup.options.values()))

    # -- steps ---------------------------------------------------------------------
    def _recentre_steps(self) -> list[int]:
        """Warmup steps ``W/8, W/4, W/2`` at which the control-variate centre moves."""
        w = self._setup.num_warmup
        return sorted({k for k in (w // 8, w // 4, w // 2) if k >= 1})

    def _recentre(self, state, model_args, model_kwargs):
        """The control-variate centre moved to the current position, with its full-data gradient."""
        def one(s):
            x = ravel_pytree(s.state.z)[0]
            grad = self._full_grad(self._source(s.state.z, model_args, model_kwargs), x)
            return s._replace(state=s.state._replace(centre=x, centre_grad=grad, score=grad))

        return jax.vmap(one)(state) if self._setup.vectorized else one(state)

    def _sampling_step(self, s, grad_fn):
        """One unadjusted step with ``h = h_warmup * decay(t)``, ``t`` the sampling step."""
        key = self._step_keys(s)[0]
        h = s.adapt_state.step_size
        if self._decay is not None:  # decay(0) = 1
            h = h * self._decay(jnp.maximum(s.i - self._setup.num_warmup, 0))
        h = jnp.asarray(h, s.state.score.dtype)
        new, info = self._core_step(key, s.state, grad_fn, h, self._metric(s))
        return new, SGStats(jnp.ones((), h.dtype), info.diverging, h, self._minibatch_size(),
                            jnp.zeros_like(s.state.score))

    def _warmup_step(self, s, grad_fn):
        """An adapted warmup step (``docs/kernels/sgld.md``): a Metropolis-adjusted step on
        the minibatch target, the gradient noise measured at its start."""
        key_step, key_batch, key_mh = self._step_keys(s)
        h = s.adapt_state.dual.step_size
        g_here = grad_fn(key_batch, ravel_pytree(s.state.z)[0])  # independent of s.state.score's minibatch
        old = s.state._replace(score=g_here)
        metric = self._metric(s)
        new, _ = self._core_step(key_step, old, lambda k, x: grad_fn(key_batch, x), h, metric)
        kept, info = metropolis.metropolis_hastings(key_mh, self._log_ratio(old, new, h, metric), new, old,
                                                    *jax.tree.leaves(new))
        noise = core.noise_variance(g_here, s.state.score)
        return kept, SGStats(info.acceptance_rate, info.diverging, jnp.asarray(h, g_here.dtype),
                             self._minibatch_size(), noise)

    def _after_warmup_step(self, state, metric, key):
        return state

    def _core_init(self, key, z, grad_fn, metric):
        raise NotImplementedError

    def _core_step(self, key, core_state, grad_fn, h, metric):
        raise NotImplementedError

    def _log_ratio(self, old, new, h, metric):
        raise NotImplementedError


class SGLD(_SGKernel):
    r"""Stochastic-gradient Langevin dynamics (Welling & Teh 2011) on a subsampled NumPyro model.

    $$
    z' = z + h\,C\,\tilde g(z) + \sqrt{2h}\,S\varepsilon,\qquad
    \tilde g(z) = \nabla\log p_0(z) + \tfrac{N}{B}\sum_{i\in S}\nabla\log p(x_i\mid z),
    $$

    a fresh minibatch ``S`` of each subsample plate per step (``core.sgld.sgld_step``).
    ``preconditioner="rmsprop"`` is pSGLD (Li et al. 2016: ``C = diag(1/(lam + sqrt(V)))``,
    ``V`` a running mean of ``g~^2``, correction term dropped); ``control_variates=True``
    is SGLD-CV (Baker et al. 2019): ``g~`` is the full-data gradient at a centre plus
    the minibatch difference between ``z`` and the centre.

    **Start.** The chain starts from ``init_strategy``'s point moved ``mode_steps`` minibatch
    Adam steps up ``log p`` (learning rate ``1e-2`` decaying to ``1e-4``): at large ``N``
    the posterior is narrow and a random start lies hundreds of posterior sds away, which
    the Metropolis-adjusted warmup below crosses too slowly (``N = 10^6``: one start in two
    was still far at the end of 3,000 warmup steps without it). Adam moves each coordinate
    by at most about ``lr`` per step, about 2 unconstrained units over the 1,000 default
    steps: enough from ``init_to_uniform``'s ``[-2, 2]``; start closer otherwise.

    **Warmup (no full-data gradient).** Each warmup step is a Metropolis-adjusted step on
    the *minibatch* target ``p_S`` (both ends on the same minibatch, trapezoid rule:
    ``core.sgld.sgld_log_ratio``), and dual averaging tunes ``h`` to
    ``target_accept_prob``: that bounds the discretisation error on the curvature that
    ``p_S`` shares with ``p`` on average. SGLD's other bias is the gradient noise: it
    inflates the stationary variance by about ``h Var(g~) / 2`` per (preconditioned)
    coordinate (``docs/theory.md`` section 8). Its variance is estimated over the
    second half of warmup from two independent minibatch gradients at the same point
    (``core.sgld.noise_variance``), and the sampling step is the smaller of the two
    rules: ``h = min(h_DA, 2 variance_inflation / max_j c_j Var_j)``
    (``core.sgld.noise_limited_step``). With control variates the centre starts at the
    initial point and moves to the current position at warmup steps ``W/8``, ``W/4``
    and ``W/2`` (a full-data gradient each time, four in all), so the chain homes in
    on the mode while the centre follows it, and the noise, hence the step limit, is
    measured around the last centre.

    Parameters
    ----------
    model
        NumPyro model with at least one ``numpyro.plate(..., subsample_size=B)``
        (``B < N``); none raises ``ValueError`` (for full data use ULA or NUTS);
        ``subsample_size > N`` raises ``ValueError``.
    step_size : float
        Initial ``h > 0`` (warmup's start), or the step when ``adapt_step_size=False``.
    adapt_step_size : bool
        Tune ``h`` during warmup as above (default True); otherwise warmup steps are
        plain SGLD steps at ``step_size``.
    target_accept_prob : float
        Minibatch Metropolis acceptance that dual averaging aims at (0.99).
    variance_inflation : float
        Largest gradient-noise inflation of a coordinate's variance (0.1).
    preconditioner : None or "rmsprop"
        pSGLD's diagonal preconditioner (``rmsprop_alpha`` 0.99, ``rmsprop_lambda`` 1e-5).
    adapt_mass_matrix : bool
        A diagonal ``C`` from the warmup positions (windowed Welford, as NUTS); default
        True without RMSprop (which replaces it). Needs ``adapt_step_size=True``.
    schedule : None, "constant" or ("polynomial", b, gamma)
        Step after warmup: constant, or ``h_t = a (b + t)^-gamma`` with
        ``a = h b^gamma`` (``h`` at ``t = 0``), ``t`` counting sampling steps.
    control_variates : bool
        SGLD-CV (default False).
    with_replacement : bool
        Draw minibatches with replacement (default True: ``O(B)`` per step; without
        replacement ``jax.random.choice`` permutes all ``N`` rows every step, which
        dominates the cost for large ``N``). The noise variance differs by the factor
        ``1 - B/N`` only.
    mode_steps : int
        Minibatch Adam steps towards the mode before warmup (1000; 0: none).
    init_strategy : callable
        NumPyro init strategy.

    Example
    -------
    >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> from numpyro.infer import MCMC
    >>> from numpyro_wjs.infer.sgld import SGLD
    >>> y = 1.0 + jax.random.normal(jax.random.key(0), (1000,))
    >>> def model(y):
    ...     mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    ...     with numpyro.plate("data", y.shape[0], subsample_size=100):
    ...         numpyro.sample("y", dist.Normal(mu, 1.0), obs=numpyro.subsample(y, event_dim=0))
    >>> mcmc = MCMC(SGLD(model, control_variates=True), num_warmup=200, num_samples=500, progress_bar=False)
    >>> mcmc.run(jax.random.key(1), y, extra_fields=("step_size", "minibatch_size"))
    >>> stats = mcmc.get_extra_fields()
    >>> mcmc.get_samples()["mu"].shape, stats["minibatch_size"].max()
    ((500,), Array(100, dtype=int32))
    """

    def _core_init(self, key, z, grad_fn, metric):
        return core.sgld_init(key, z, grad_fn, self._rmsprop)

    def _core_step(self, key, core_state, grad_fn, h, metric):
        return core.sgld_step(key, core_state, grad_fn, h, self._rmsprop, metric)

    def _log_ratio(self, old, new, h, metric):
        return core.sgld_log_ratio(old, new, h, self._rmsprop, metric)


class SGHMC(_SGKernel):
    r"""Stochastic-gradient underdamped Langevin: BAOAB with a minibatch gradient.

    ``core.sgld.sghmc_step``: ``core.langevin.baoab`` (half kick, half drift, exact
    Ornstein-Uhlenbeck refresh with ``friction``, half drift, half kick) with ``g~`` in
    place of the score, one minibatch gradient per step, the velocity kept across
    steps: SGHMC (Chen, Fox & Guestrin 2014) in the splitting the package already
    uses. ``preconditioner="rmsprop"`` makes the mass ``M = diag(lam + sqrt(V))``.

    Warmup as ``SGLD`` (minibatch energy error of the BAOAB step,
    ``core.sgld.sghmc_log_ratio``, for dual averaging), with a fresh velocity every
    warmup step (one-step HMC moves, stable while ``C`` is still being learnt); the
    noise rule allows ``friction`` times the SGLD step, since gradient noise heats the
    velocity by ``h Var(g~) / (2 friction)``. The velocity persists after warmup.

    Parameters
    ----------
    model
        As ``SGLD``.
    friction : float
        ``gamma > 0`` (1.0).
    **kwargs
        As ``SGLD``.
    """

    def __init__(self, model, *, friction=1.0, **kwargs):
        super().__init__(model, **kwargs)
        self._friction = validation.positive("friction", friction)

    def _core_init(self, key, z, grad_fn, metric):
        return core.sghmc_init(key, z, grad_fn, self._rmsprop, metric)

    def _core_step(self, key, core_state, grad_fn, h, metric):
        return core.sghmc_step(key, core_state, grad_fn, h, self._friction, self._rmsprop, metric)

    def _log_ratio(self, old, new, h, metric):
        return core.sghmc_log_ratio(old, new, h, self._rmsprop, metric)

    def _after_warmup_step(self, state, metric, key):
        """A fresh velocity ``v ~ N(0, M)`` after every warmup step: warmup steps are then
        one-step HMC moves (full refresh), which stay stable while ``C`` is still far from
        the posterior's scale (before the first window, ``friction`` in the units of
        ``C = I`` can leave the dynamics underdamped by orders of magnitude)."""
        if self._rmsprop is not None:
            metric = core.rmsprop_metric(state.square_avg, self._rmsprop)
        return state._replace(velocity=langevin.draw_velocity(key, state.velocity, metric))

