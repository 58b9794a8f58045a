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
from collections import namedtuple
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import random, vmap
from jax.flatten_util import ravel_pytree
from numpyro.handlers import seed, substitute
from numpyro.infer.gibbs import prototype_trace
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.util import potential_energy
from numpyro.util import is_prng_key

from numpyro_wjs import validation
from numpyro_wjs.core import langevin, metropolis
from numpyro_wjs.core import sgld as core
from numpyro_wjs.infer import numpyro_hooks
from numpyro_wjs.infer.adaptation import StepAdaptation
from numpyro_wjs.infer.base import Kernel, as_float, split_keys
from numpyro_wjs.infer.sources import check_finite_start, init_model

__all__ = ["SGHMC", "SGLD", "SGHMCState", "SGLDState", "subsample_plates"]

_FIELDS = [
    "i", "z", "score", "square_avg", "step_size", "minibatch_size", "accept_prob", "diverging",
    "adapt_state", "noise_var", "centre", "centre_grad", "rng_key",
]

SGLDState = namedtuple("SGLDState", _FIELDS)
"""State of ``SGLD``.

- **i**: iteration (continues after warmup).
- **z**: current position (unconstrained values of the model's latent sites).
- **score**: flat stochastic gradient ``g~(z)`` (control-variate estimate with
  ``control_variates=True``) on the minibatch drawn when ``z`` was reached.
- **square_avg**: RMSprop's running mean of ``g~ * g~`` (``None`` without it).
- **step_size**: ``h`` of the last step (ArviZ ``sample_stats`` ``step_size``).
- **minibatch_size**: data rows drawn per step, summed over subsample plates.
- **accept_prob**: during adapted warmup, the minibatch Metropolis acceptance of the
  last step (applied); 1 after warmup (nothing is rejected).
- **diverging**: the last step was non-finite (or, during warmup, its minibatch energy
  error exceeded ``metropolis.MAX_LOG_ACCEPT_DROP``); it was discarded.
- **adapt_state**: dual averaging of the warmup step (``HMCAdaptState``).
- **noise_var**: running mean over the second half of warmup of the per-coordinate
  gradient-noise variance (``core.sgld.noise_variance``).
- **centre**, **centre_grad**: the control-variate centre and the full-data gradient
  there (``None`` without control variates).
- **rng_key**: random key.
"""

SGHMCState = namedtuple("SGHMCState", _FIELDS[:2] + ["velocity"] + _FIELDS[2:])
"""State of ``SGHMC``: the fields of ``SGLDState`` and **velocity** (flat, kept across steps)."""


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
    """Shared by SGLD and SGHMC: the model's minibatch gradient, warmup and the state."""

    _friction = None

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
        init_strategy=init_to_uniform,
    ):
        name = type(self).__name__
        if model is None:
            raise ValueError(f"{name} needs `model`: a NumPyro model with a subsample plate.")
        validation.check_callable(name, "model", model)
        self._model, self._init_strategy = model, init_strategy
        self._initial_step = validation.positive("step_size", step_size)
        self._adapt = bool(adapt_step_size)
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

    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs=None):
        name = type(self).__name__
        model_kwargs = model_kwargs or {}
        self._num_warmup = num_warmup
        self._vectorized = not is_prng_key(rng_key)
        rng_key, key_model = split_keys(rng_key, 2)
        one_key = key_model[0] if self._vectorized else key_model
        self._plates = subsample_plates(name, self._model, model_args, model_kwargs, one_key)
        # the fixed seed lets postprocess_fn replay the model (deterministic sites) with its plates
        init_params, _, self._postprocess_fn_gen, transforms = init_model(
            key_model, seed(self._model, 0), self._init_strategy, model_args, model_kwargs, init_params
        )
        self._inv_transforms, self._dynamic_support = transforms
        init_params = as_float(init_params)
        example = jax.tree.map(lambda a: a[0], init_params) if self._vectorized else init_params
        x0 = ravel_pytree(example)[0]
        self._adaptation = StepAdaptation(
            num_warmup, x0, adapt_step_size=True, adapt_mass_matrix=self._adapt_mass,
            target_accept_prob=self._target_accept_prob,
        )
        minibatch_size = sum(b for _, b in self._plates.values())

        def init_one(z, key):
            key, key_core, key_wa = random.split(key, 3)
            x = ravel_pytree(z)[0]
            centre = centre_grad = None
            if self._control_variates:
                centre, centre_grad = x, self._full_grad(x, example, model_args, model_kwargs)
            grad_fn = self._grad_fn(example, model_args, model_kwargs, centre, centre_grad)
            zero = jnp.zeros((), x.dtype)
            fields = {
                "i": jnp.array(0), "z": z, "step_size": jnp.asarray(self._initial_step, x.dtype),
                "minibatch_size": jnp.array(minibatch_size), "accept_prob": zero, "diverging": jnp.array(False),
                "adapt_state": self._adaptation.init(x, key_wa, self._initial_step),
                "noise_var": jnp.zeros_like(x), "centre": centre,
                "centre_grad": centre_grad, "rng_key": key,
            }
            return self._init_state(fields, key_core, x, grad_fn)

        numpyro_hooks.mark_initialised(self, self.sample)
        state = jax.jit(vmap(init_one) if self._vectorized else init_one)(init_params, rng_key)
        check_finite_start(
            name, state.score, problem="the minibatch gradient is not finite at the initial point",
            fix="Choose `init_params` inside the support, or check the model.",
        )
        return state

    def postprocess_fn(self, args, kwargs):
        fn = self._postprocess_fn_gen(*args, **kwargs)

        def quiet(z):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return fn(z)

        return quiet

    def refresh(self, state, model_args, model_kwargs):
        raise ValueError(f"{type(self).__name__} cannot be a block of numpyro.infer.Gibbs.")

    # -- the model's gradients ---------------------------------------------------
    def _potential(self, example, model_args, model_kwargs):
        """``(x_flat, indices) -> -log p_S(x)``: the model with its plates' indices substituted."""
        unravel = ravel_pytree(example)[1]

        def pe(x, indices):
            with warnings.catch_warnings():  # full-data indices: NumPyro warns the size differs
                warnings.simplefilter("ignore", UserWarning)
                return potential_energy(substitute(self._model, data=indices), model_args, model_kwargs, unravel(x))

        return pe

    def _grad_fn(self, example, model_args, model_kwargs, centre=None, centre_grad=None) -> core.GradFn:
        """``(key, x) -> g~(x)``: a fresh minibatch per key; control variates around ``centre``."""
        pe = self._potential(example, model_args, model_kwargs)

        def grad_fn(key, x):
            keys = random.split(key, len(self._plates))
            idx = {n: core.minibatch(k, size, b, self._replace) for k, (n, (size, b)) in zip(keys, self._plates.items())}
            return -jax.grad(pe)(x, idx)

        if centre is None:
            return grad_fn
        return core.control_variate(grad_fn, centre, centre_grad)

    def _full_grad(self, x, example, model_args, model_kwargs):
        """``grad log p(x)`` on all the data (every plate's indices ``0..N-1``; no scaling)."""
        idx = {n: jnp.arange(size) for n, (size, _) in self._plates.items()}
        return -jax.grad(self._potential(example, model_args, model_kwargs))(x, idx)

    # -- steps ---------------------------------------------------------------------
    def _recentre_steps(self) -> list[int]:
        """Warmup steps ``W/8, W/4, W/2`` at which the control-variate centre moves."""
        w = self._num_warmup
        return sorted({k for k in (w // 8, w // 4, w // 2) if k >= 1})

    def sample(self, state, model_args, model_kwargs):
        if self._control_variates:
            i = state.i[0] if self._vectorized else state.i
            due = jnp.any(jnp.array([i == k for k in self._recentre_steps()] + [False]))
            state = jax.lax.cond(due, lambda s: self._recentre(s, model_args, model_kwargs), lambda s: s, state)

        def step(s, warmup):
            return self._step(s, model_args, model_kwargs, warmup)

        # one unbatched warmup flag for vectorized chains (they move in lockstep), as Kernel.sample
        i = state.i[0] if self._vectorized else state.i
        warmup = i < self._num_warmup
        return vmap(step, in_axes=(0, None))(state, warmup) if self._vectorized else step(state, warmup)

    def _recentre(self, state, model_args, model_kwargs):
        """The control-variate centre moved to the current position, with its full-data gradient."""
        def one(s):
            x = ravel_pytree(s.z)[0]
            grad = self._full_grad(x, s.z, model_args, model_kwargs)
            return s._replace(centre=x, centre_grad=grad, score=grad)

        return vmap(one)(state) if self._vectorized else one(state)

    def _step(self, state, model_args, model_kwargs, warmup):
        grad_fn = self._grad_fn(state.z, model_args, model_kwargs, state.centre, state.centre_grad)
        if not self._adapt:
            return self._sampling_step(state, grad_fn, self._initial_step)
        return jax.lax.cond(
            warmup,
            lambda s: self._warmup_step(s, grad_fn),
            lambda s: self._sampling_step(s, grad_fn, s.step_size),
            state,
        )

    def _sampling_step(self, state, grad_fn, step_size):
        """One unadjusted step with ``h = step_size * decay(t)``, ``t`` the sampling step."""
        key_step, key_next = random.split(state.rng_key)
        h = step_size
        if self._decay is not None:  # h_t = h_{t-1} decay(t) / decay(t-1), decay(0) = 1
            t = jnp.maximum(state.i - self._num_warmup, 0)
            h = h * self._decay(t) / self._decay(jnp.maximum(t - 1, 0))
        h = jnp.asarray(h, state.score.dtype)
        new, info = self._core_step(key_step, self._core_state(state), grad_fn, h, self._metric(state.adapt_state))
        one = jnp.ones((), state.score.dtype)
        return self._next(state, new, i=state.i + 1, step_size=h, accept_prob=one, diverging=info.diverging, rng_key=key_next)

    def _warmup_step(self, state, grad_fn):
        """An adapted warmup step (``docs/kernels/sgld.md``): a minibatch-Metropolis step
        tuned by dual averaging; the gradient-noise variance and the control-variate
        centre are estimated on the side; the last step sets the sampling step."""
        key_step, key_batch, key_mh, key_next = random.split(state.rng_key, 4)
        i, x, h = state.i, ravel_pytree(state.z)[0], state.adapt_state.step_size
        g_here = grad_fn(key_batch, x)  # independent of state.score's minibatch
        old = self._core_state(state)._replace(score=g_here)
        metric = self._metric(state.adapt_state)
        new, _ = self._core_step(key_step, old, lambda k, z: grad_fn(key_batch, z), h, metric)
        log_ratio = self._log_ratio(old, new, h, metric)
        kept, info = metropolis.metropolis_hastings(key_mh, log_ratio, new, old, *jax.tree.leaves(new))
        adapt_state = self._adaptation.update(i, info.acceptance_rate, kept.z, state.adapt_state, True)
        kept = self._after_warmup_step(kept, info, metric, self._metric(adapt_state), random.fold_in(key_mh, 1))

        w = self._num_warmup
        second_half = i >= w // 2
        n_noise = jnp.maximum(i - w // 2 + 1, 1)
        noise = core.noise_variance(g_here, state.score)
        noise_var = jnp.where(second_half, state.noise_var + (noise - state.noise_var) / n_noise, state.noise_var)

        if self._rmsprop is not None:
            c = core.rmsprop_metric(kept.square_avg, self._rmsprop).inverse_mass_matrix
        else:
            c = None if not self._adapt_mass else adapt_state.inverse_mass_matrix
        h_noise = core.noise_limited_step(noise_var, c, self._variance_inflation, self._friction)
        step_size = jnp.where(i == w - 1, jnp.minimum(adapt_state.step_size, h_noise), adapt_state.step_size)
        return self._next(
            state, kept, i=i + 1, step_size=step_size.astype(x.dtype), accept_prob=info.acceptance_rate,
            diverging=info.diverging, adapt_state=adapt_state, noise_var=noise_var, rng_key=key_next,
        )

    def _next(self, state, new, **fields):
        unravel = ravel_pytree(state.z)[1]
        core_fields = {k: v for k, v in new._asdict().items() if k != "z"}
        return state._replace(z=unravel(new.z), **core_fields, **fields)

    def _metric(self, adapt_state):
        """The adapted diagonal ``C`` (``None``: identity, or RMSprop's, set by the core step)."""
        return self._adaptation.metric(adapt_state) if self._adapt_mass else None

    def _after_warmup_step(self, kept, info, old_metric, new_metric, key):
        return kept

    def _core_state(self, state):
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

    def _init_state(self, fields, key, x, grad_fn):
        c = core.sgld_init(key, x, grad_fn, self._rmsprop)
        return SGLDState(score=c.score, square_avg=c.square_avg, **fields)

    def _core_state(self, state):
        return core.SGLDState(ravel_pytree(state.z)[0], state.score, state.square_avg)

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

    def _init_state(self, fields, key, x, grad_fn):
        c = core.sghmc_init(key, x, grad_fn, self._rmsprop)
        return SGHMCState(velocity=c.velocity, score=c.score, square_avg=c.square_avg, **fields)

    def _core_state(self, state):
        return core.SGHMCState(ravel_pytree(state.z)[0], state.velocity, state.score, state.square_avg)

    def _core_step(self, key, core_state, grad_fn, h, metric):
        return core.sghmc_step(key, core_state, grad_fn, h, self._friction, self._rmsprop, metric)

    def _log_ratio(self, old, new, h, metric):
        return core.sghmc_log_ratio(old, new, h, self._rmsprop, metric)

    def _after_warmup_step(self, kept, info, old_metric, new_metric, key):
        """A fresh velocity ``v ~ N(0, M)`` after every warmup step: warmup steps are then
        one-step HMC moves (full refresh), which stay stable while ``C`` is still far from
        the posterior's scale (before the first window, ``friction`` in the units of
        ``C = I`` can leave the dynamics underdamped by orders of magnitude)."""
        if self._rmsprop is not None:
            new_metric = core.rmsprop_metric(kept.square_avg, self._rmsprop)
        return kept._replace(velocity=langevin.draw_velocity(key, kept.velocity, new_metric))

