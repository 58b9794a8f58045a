"""Langevin kernels for ``numpyro.infer.MCMC``: ULA, MALA, UnderdampedLangevin.

Thin shells around the pure steps of ``numpyro_wjs.core.langevin``: a kernel binds a
score source (``numpyro_wjs.infer.sources``), runs warmup adaptation with
``numpyro.infer.hmc_util.warmup_adapter`` (dual averaging for the step size,
windowed Welford estimates for the mass matrix), and calls the step.
"""

from __future__ import annotations

import math
import warnings
from collections import namedtuple
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import random, vmap
from jax.flatten_util import ravel_pytree
from numpyro.infer.hmc_util import warmup_adapter
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.mcmc import MCMCKernel
from numpyro.util import is_prng_key

from numpyro_wjs.core import langevin as core
from numpyro_wjs.infer.sources import (
    check_finite_start,
    check_score_output,
    check_source,
    init_model,
    make_source,
    postprocess,
)

__all__ = ["ULA", "MALA", "UnderdampedLangevin", "ULAState", "MALAState", "UnderdampedLangevinState"]

_UNADJUSTED_FIELDS = [
    "i", "z", "potential_energy", "score", "accept_prob", "mean_accept_prob", "diverging", "adapt_state", "rng_key"
]

ULAState = namedtuple("ULAState", _UNADJUSTED_FIELDS)
"""State of ``ULA``.

- **i**: iteration (continues after warmup).
- **z**: current position (a pytree; unconstrained values for a model).
- **potential_energy**: ``-log p(z)`` with a model or ``potential_fn``; 0 with a bare score.
- **score**: flattened ``grad log p(z)``.
- **accept_prob**: the Metropolis-Hastings acceptance the last step *would* have had
  (exact with a potential, trapezoid estimate with a score); it tunes the step size
  and is applied during warmup only.
- **mean_accept_prob**: its running mean over warmup, then over sampling.
- **diverging**: the last step was non-finite or its energy error exceeded
  ``langevin.MAX_LOG_ACCEPT_DROP``; it was discarded.
- **adapt_state**: ``numpyro.infer.hmc_util.HMCAdaptState`` (``step_size``,
  ``inverse_mass_matrix``, ...).
- **rng_key**: random key.
"""

MALAState = namedtuple("MALAState", _UNADJUSTED_FIELDS)
"""State of ``MALA``: the fields of ``ULAState``; **accept_prob** is the acceptance
probability of the last (applied) Metropolis-Hastings correction."""

UnderdampedLangevinState = namedtuple(
    "UnderdampedLangevinState", _UNADJUSTED_FIELDS[:2] + ["velocity"] + _UNADJUSTED_FIELDS[2:]
)
"""State of ``UnderdampedLangevin``: as ``ULAState``, plus **velocity**
(flattened momentum, kept across steps)."""

#: A warmup that ends with a step size below this fraction of the initial one warns.
STEP_COLLAPSE_FRACTION = 1e-3


def check_positive(name: str, value) -> float:
    """``value`` as a float; ``TypeError``/``ValueError`` naming ``name`` unless positive and finite."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a positive number, got {value!r}.") from None
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"`{name}` must be positive and finite, got {value!r}.")
    return v


def split_keys(rng_key, n):
    """``random.split`` for a key or a batch of keys (vectorized chains)."""
    if is_prng_key(rng_key):
        return random.split(rng_key, n)
    return jnp.swapaxes(vmap(lambda k: random.split(k, n))(rng_key), 0, 1)


def _metric(adapt_state) -> core.Metric:
    return core.Metric(
        adapt_state.inverse_mass_matrix, adapt_state.mass_matrix_sqrt, adapt_state.mass_matrix_sqrt_inv
    )


def as_float(tree):
    """``init_params`` with integer or boolean leaves cast to the default float type."""
    def cast(a):
        a = jnp.asarray(a)
        return a if jnp.issubdtype(a.dtype, jnp.inexact) else a.astype(jnp.result_type(float))

    return jax.tree.map(cast, tree)


def _warn_step_collapse(kernel: str, step_size, initial: float) -> None:
    step_size = np.asarray(step_size)
    low = step_size < STEP_COLLAPSE_FRACTION * initial
    if np.any(low):
        warnings.warn(
            f"{kernel}: warmup shrank the step size from {initial:.3g} to {float(step_size.min()):.3g} "
            f"(below {STEP_COLLAPSE_FRACTION:g} of its start) in {int(low.sum())} of {low.size} chain(s): "
            "the chain barely moves. Usually the score (or denoiser) is non-finite or huge near the "
            "chain; check it there, rescale the target, or fix `step_size` with adapt_step_size=False.",
            RuntimeWarning,
            stacklevel=2,
        )


class ClosureKernel(MCMCKernel):
    """An ``MCMCKernel`` whose ``init`` builds ``_sample_fn`` (vmapped for vectorized chains).

    When the step size is adapted, the last warmup step checks it against its start
    and warns when it collapsed (``STEP_COLLAPSE_FRACTION``).
    """

    _sample_fn = None
    _adapt_step_size = False
    _step_size = None  # the initial step size, when the kernel adapts one

    def sample(self, state, model_args, model_kwargs):
        new = self._sample_fn(state, model_args, model_kwargs)
        if self._adapt_step_size and self._step_size is not None and self._num_warmup > 0:
            i = new.i if jnp.ndim(new.i) == 0 else new.i[0]  # vectorized chains move in lockstep
            jax.lax.cond(
                i == self._num_warmup,
                lambda s: jax.debug.callback(
                    partial(_warn_step_collapse, type(self).__name__, initial=self._step_size), s
                ),
                lambda s: None,
                new.adapt_state.step_size,
            )
        return new

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_wa_update"] = None  # closures over the model are rebuilt by init
        state["_sample_fn"] = None
        return state


class _LangevinKernel(ClosureKernel):
    """Shared machinery: score source, warmup adaptation, vectorized chains, divergence."""

    _needs_potential = False

    def __init__(
        self,
        model=None,
        potential_fn=None,
        score_fn=None,
        *,
        step_size=0.1,
        inverse_mass_matrix=None,
        adapt_step_size=True,
        adapt_mass_matrix=False,
        dense_mass=None,
        target_accept_prob=0.574,
        init_strategy=init_to_uniform,
    ):
        name = type(self).__name__
        check_source(name, model, potential_fn, score_fn, needs_potential=self._needs_potential)
        self._step_size = check_positive("step_size", step_size)
        if not 0 < target_accept_prob < 1:
            raise ValueError(f"`target_accept_prob` must be in (0, 1), got {target_accept_prob}.")
        if inverse_mass_matrix is not None:
            inverse_mass_matrix = jnp.asarray(inverse_mass_matrix)
            core.metric(inverse_mass_matrix)  # validates the shape
        if dense_mass is None:
            dense_mass = inverse_mass_matrix is not None and inverse_mass_matrix.ndim == 2
        if not isinstance(dense_mass, bool):
            raise TypeError("`dense_mass` must be True or False.")
        self._model = model
        self._potential_fn = potential_fn
        self._score_fn = score_fn
        self._inverse_mass_matrix = inverse_mass_matrix
        self._adapt_step_size = adapt_step_size
        self._adapt_mass_matrix = adapt_mass_matrix
        self._dense_mass = dense_mass
        self._target_accept_prob = target_accept_prob
        self._init_strategy = init_strategy
        self._potential_fn_gen = None
        self._postprocess_fn_gen = None
        self._sample_fn = None

    # -- MCMCKernel interface ---------------------------------------------------
    @property
    def model(self):
        return self._model

    @property
    def sample_field(self):
        return "z"

    @property
    def default_fields(self):
        return ("z", "diverging")

    @property
    def evaluations_per_draw(self) -> int:
        """Score (gradient) evaluations per MCMC draw: one."""
        return 1

    def get_diagnostics_str(self, state):
        return f"step size {float(state.adapt_state.step_size):.2e}. acc. prob={float(state.mean_accept_prob):.2f}"

    def postprocess_fn(self, args, kwargs):
        return postprocess(self._postprocess_fn_gen, args, kwargs)

    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs={}):
        name = type(self).__name__
        model_kwargs = {} if model_kwargs is None else model_kwargs
        self._num_warmup = num_warmup
        rng_key, key_model = split_keys(rng_key, 2)
        if self._model is not None:
            init_params, self._potential_fn_gen, self._postprocess_fn_gen = init_model(
                key_model, self._model, self._init_strategy, model_args, model_kwargs, init_params
            )
        elif init_params is None:
            raise ValueError(f"{name}: `init_params` must be given with `potential_fn` or `score_fn`.")
        init_params = as_float(init_params)
        batched = not is_prng_key(rng_key)
        example_z = jax.tree.map(lambda a: a[0], init_params) if batched else init_params
        if self._score_fn is not None:
            check_score_output(name, self._score_fn, example_z)
        dim = ravel_pytree(example_z)[0].shape[0]
        imm = self._inverse_mass_matrix
        if imm is not None and imm.shape[0] != dim:
            raise ValueError(
                f"{name}: inverse_mass_matrix has size {imm.shape[0]} but the position has {dim} entries."
            )
        wa_init, self._wa_update = warmup_adapter(
            num_warmup,
            adapt_step_size=self._adapt_step_size,
            adapt_mass_matrix=self._adapt_mass_matrix,
            dense_mass=self._dense_mass,
            target_accept_prob=self._target_accept_prob,
        )

        def init_one(z, key):
            key, key_wa, key_core = random.split(key, 3)
            x = ravel_pytree(z)[0]
            wa_state = wa_init((x,), key_wa, self._step_size, inverse_mass_matrix=imm, mass_matrix_size=dim)
            wa_state = wa_state._replace(rng_key=None)
            source = self._source(z, model_args, model_kwargs)
            if source.logdensity is None:
                logp, score = jnp.zeros((), x.dtype), source.score(x)
            else:
                logp, score = jax.value_and_grad(source.logdensity)(x)
            zero = jnp.zeros((), x.dtype)
            fields = dict(i=jnp.array(0), z=z, potential_energy=-logp, score=score, accept_prob=zero,
                          mean_accept_prob=zero, diverging=jnp.array(False), adapt_state=wa_state, rng_key=key)
            return self._init_state(fields, x, key_core)

        if batched:
            state = jax.jit(vmap(init_one))(init_params, rng_key)
            self._sample_fn = self._vectorized_sample
        else:
            state = jax.jit(init_one)(init_params, rng_key)
            self._sample_fn = self._sample_one
        check_finite_start(name, state.score, state.potential_energy)
        return state

    # -- shared pieces -----------------------------------------------------------
    def _source(self, z, model_args, model_kwargs):
        if self._model is not None:
            potential_fn = self._potential_fn_gen(*model_args, **(model_kwargs or {}))
            return make_source(z, potential_fn=potential_fn)
        return make_source(z, self._potential_fn, self._score_fn)

    def _vectorized_sample(self, state, model_args, model_kwargs):
        """Vectorized chains move in lockstep: branch on the phase once, outside ``vmap``.

        (Under ``vmap`` a ``lax.cond`` on the batched counter would run the adaptation
        at every step, warmup or not.)
        """
        def run(warmup):
            fn = lambda s, a, k: self._sample_one(s, a, k, warmup=warmup)  # noqa: E731
            return lambda s: vmap(fn, in_axes=(0, None, None))(s, model_args, model_kwargs)

        return jax.lax.cond(state.i[0] < self._num_warmup, run(True), run(False), state)

    def _adapt(self, i, accept_prob, x, adapt_state, warmup=None):
        """Warmup update of step size / mass matrix; ``warmup`` None means decide from ``i``."""
        if warmup is None:
            return jax.lax.cond(
                i < self._num_warmup,
                lambda s: self._wa_update(i, accept_prob, (x,), s),
                lambda s: s,
                adapt_state,
            )
        return self._wa_update(i, accept_prob, (x,), adapt_state) if warmup else adapt_state

    def _finish(self, state, source, new_fields, log_ratio, warmup):
        """Shared end of a step: divergence, adaptation, running mean, the new state.

        ``new_fields`` holds the proposed ``z`` (flat), ``score``, ``potential_energy``
        (and ``velocity``); a step that is non-finite or whose energy error
        ``-log_ratio`` exceeds ``MAX_LOG_ACCEPT_DROP`` is discarded and flagged. During
        warmup the step is also accepted or rejected with its computed Metropolis
        probability, so that the chain stays in the typical set while the step size
        and mass matrix are tuned; after warmup the kernel is unadjusted.
        """
        diverging = core.diverged(log_ratio, *new_fields.values())
        prob = jnp.where(diverging, 0.0, core.accept_prob(log_ratio))
        move = ~diverging
        if warmup is not False:  # warmup applies the correction: the windows see exact draws
            accepted = random.uniform(random.fold_in(state.rng_key, 1), dtype=prob.dtype) < prob
            move = move & (accepted if warmup else accepted | (state.i >= self._num_warmup))
        old = {k: getattr(state, k) for k in new_fields}
        old["z"] = ravel_pytree(state.z)[0]
        new = jax.tree.map(lambda a, b: jnp.where(move, a, b), new_fields, self._rejected(state, old, warmup))
        return self._update(state, source, new, prob, diverging, warmup)

    def _update(self, state, source, new, accept_prob, diverging, warmup):
        """Adapt, update the running acceptance mean, and build the next state from ``new``."""
        i = state.i
        adapt_state = self._adapt(i, accept_prob, new["z"], state.adapt_state, warmup)
        n = jnp.where(i < self._num_warmup, i + 1, i + 1 - self._num_warmup)
        mean_accept_prob = state.mean_accept_prob + (accept_prob - state.mean_accept_prob) / n
        rng_key = random.split(state.rng_key)[0]
        return state._replace(
            **{**new, "z": source.unravel(new["z"])}, i=i + 1, accept_prob=accept_prob,
            mean_accept_prob=mean_accept_prob, diverging=diverging, adapt_state=adapt_state, rng_key=rng_key,
        )

    def _rejected(self, state, old, warmup):
        """The fields a rejected or discarded step leaves: the old ones."""
        return old

    def _dlogp(self, source, state, x_new, g_new):
        """``(potential_energy', log p(x') - log p(x))``: exact with a potential, else trapezoid."""
        if source.logdensity is None:
            x = ravel_pytree(state.z)[0]
            return state.potential_energy, core.trapezoid_dlogp(x, state.score, x_new, g_new)
        logp = source.logdensity(x_new)
        return -logp, logp + state.potential_energy

    def _step_inputs(self, state, model_args, model_kwargs):
        """``(source, key, x, step_size, metric)`` for one step."""
        source = self._source(state.z, model_args, model_kwargs)
        key = random.split(state.rng_key)[1]
        adapt_state = state.adapt_state
        return source, key, ravel_pytree(state.z)[0], adapt_state.step_size, _metric(adapt_state)

    def _sample_one(self, state, model_args, model_kwargs, warmup=None):
        raise NotImplementedError

    def _init_state(self, fields, x, key_core):
        raise NotImplementedError


class ULA(_LangevinKernel):
    r"""Unadjusted (overdamped) Langevin algorithm.

    $$
    x_{t+1} = x_t + h\,C\,\nabla\log p(x_t) + \sqrt{2h}\,S\,\varepsilon_t,
    \qquad S S^\top = C,\ \varepsilon_t \sim N(0, I).
    $$

    Needs only the score, so it runs on an analytic or a learned one. It is biased:
    on ``N(0, s^2)`` its stationary variance is ``s^2 / (1 - h / (2 s^2))`` and it
    diverges for ``h >= 2 s^2``.

    **Step size.** During warmup, dual averaging (``numpyro.infer.hmc_util``) tunes
    ``h`` so that the Metropolis-Hastings acceptance the step *would* have, computed
    and applied during warmup only, averages ``target_accept_prob`` (0.99): exact with a model or
    ``potential_fn``, from the trapezoid rule on the score with a bare score. The
    bias left is about ``h / 2`` of the variance per preconditioned direction
    (1-D Gaussian: 6 % at 0.99); raise ``target_accept_prob`` to shrink it, or use
    ``MALA`` when ``log p`` is known. ``adapt_step_size=False`` keeps ``step_size``
    fixed. Warmup applies that Metropolis correction (it is MALA, with the
    estimated ratio for a bare score), so the chain stays in the typical set while
    ``h`` and the mass matrix are tuned; sampling is unadjusted. A step that is
    non-finite or whose energy error exceeds ``langevin.MAX_LOG_ACCEPT_DROP`` is
    discarded and flagged in ``diverging``.

    Parameters
    ----------
    model, potential_fn, score_fn
        Exactly one score source (see ``numpyro_wjs.infer.sources``).
    step_size : float
        Initial (or, without adaptation, fixed) ``h > 0``.
    adapt_step_size : bool
        Tune ``h`` during warmup (default True).
    target_accept_prob : float
        Computed Metropolis acceptance that the tuning aims at (default 0.99).
    inverse_mass_matrix : array, optional
        Preconditioner ``C``: ``(d,)`` diagonal or ``(d, d)`` dense; identity by default.
    adapt_mass_matrix : bool
        Estimate ``C`` from warmup draws (windowed Welford, as NUTS does). Default False.
    dense_mass : bool, optional
        Dense rather than diagonal adaptation (defaults to the shape of
        ``inverse_mass_matrix``).
    init_strategy : callable
        NumPyro init strategy for ``model``.

    Example
    -------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro.infer import MCMC
    >>> from numpyro_wjs import ULA
    >>> mcmc = MCMC(ULA(score_fn=lambda x: -x, step_size=0.1), num_warmup=100,
    ...             num_samples=1000, progress_bar=False)
    >>> mcmc.run(jax.random.key(0), init_params=jnp.zeros(2))
    >>> mcmc.get_samples().shape
    (1000, 2)
    """

    def __init__(
        self,
        model=None,
        potential_fn=None,
        score_fn=None,
        *,
        step_size=0.1,
        adapt_step_size=True,
        target_accept_prob=0.99,
        inverse_mass_matrix=None,
        adapt_mass_matrix=False,
        dense_mass=None,
        init_strategy=init_to_uniform,
    ):
        super().__init__(
            model,
            potential_fn,
            score_fn,
            step_size=step_size,
            inverse_mass_matrix=inverse_mass_matrix,
            adapt_step_size=adapt_step_size,
            adapt_mass_matrix=adapt_mass_matrix,
            dense_mass=dense_mass,
            target_accept_prob=target_accept_prob,
            init_strategy=init_strategy,
        )

    def _init_state(self, fields, x, key_core):
        return ULAState(**fields)

    def _sample_one(self, state, model_args, model_kwargs, warmup=None):
        source, key, x, h, metric = self._step_inputs(state, model_args, model_kwargs)
        x_new, g_new = core.ula_step(key, core.LangevinState(x, state.score), source.score, h, metric)
        potential_energy, dlogp = self._dlogp(source, state, x_new, g_new)
        log_ratio = core.langevin_log_ratio(x, state.score, x_new, g_new, dlogp, h, metric)
        new = {"z": x_new, "score": g_new, "potential_energy": potential_energy}
        return self._finish(state, source, new, log_ratio, warmup)


class MALA(_LangevinKernel):
    r"""Metropolis-adjusted Langevin algorithm (Roberts & Tweedie 1996).

    Proposal $x' \sim N(x + h\,C\,\nabla\log p(x),\ 2h\,C)$, accepted with
    probability $\min\{1, p(x')q(x\mid x') / (p(x)q(x'\mid x))\}$: exact for
    ``p``. The step size is tuned during warmup by dual averaging towards
    ``target_accept_prob`` (0.574 is asymptotically optimal, Roberts & Rosenthal
    1998), and ``C`` by windowed Welford estimates: both from
    ``numpyro.infer.hmc_util.warmup_adapter``, as NUTS and BarkerMH do.

    Needs ``log p``: pass ``model=`` or ``potential_fn=`` (a bare ``score_fn`` raises).

    Parameters
    ----------
    model, potential_fn
        Exactly one target.
    step_size : float
        Initial step size ``h > 0``.
    target_accept_prob : float
        Acceptance rate that dual averaging aims at.
    adapt_step_size, adapt_mass_matrix : bool
        Warmup adaptation switches (default True).
    dense_mass : bool
        Dense rather than diagonal mass matrix.
    inverse_mass_matrix : array, optional
        Initial ``C``.
    init_strategy : callable
        NumPyro init strategy for ``model``.

    Example
    -------
    >>> import jax, numpyro, numpyro.distributions as dist
    >>> from numpyro.infer import MCMC
    >>> from numpyro_wjs import MALA
    >>> def model():
    ...     numpyro.sample("scale", dist.LogNormal(0.0, 0.5))
    >>> mcmc = MCMC(MALA(model), num_warmup=500, num_samples=1000, progress_bar=False)
    >>> mcmc.run(jax.random.key(0))
    >>> mcmc.get_samples()["scale"].shape
    (1000,)
    """

    _needs_potential = True

    def __init__(
        self,
        model=None,
        potential_fn=None,
        score_fn=None,
        *,
        step_size=0.1,
        target_accept_prob=0.574,
        adapt_step_size=True,
        adapt_mass_matrix=True,
        dense_mass=False,
        inverse_mass_matrix=None,
        init_strategy=init_to_uniform,
    ):
        super().__init__(
            model,
            potential_fn,
            score_fn,
            step_size=step_size,
            inverse_mass_matrix=inverse_mass_matrix,
            adapt_step_size=adapt_step_size,
            adapt_mass_matrix=adapt_mass_matrix,
            dense_mass=dense_mass,
            target_accept_prob=target_accept_prob,
            init_strategy=init_strategy,
        )

    def _init_state(self, fields, x, key_core):
        return MALAState(**fields)

    def _sample_one(self, state, model_args, model_kwargs, warmup=None):
        source, key, x, h, metric = self._step_inputs(state, model_args, model_kwargs)
        c = core.AdjustedLangevinState(x, -state.potential_energy, state.score)
        c, info = core.mala_step(key, c, source.logdensity, h, metric)
        new = {"z": c.position, "score": c.score, "potential_energy": -c.logdensity}
        return self._update(state, source, new, info.acceptance_rate, info.diverging, warmup)


class UnderdampedLangevin(_LangevinKernel):
    r"""Underdamped (kinetic) Langevin dynamics with the BAOAB splitting.

    $$
    dx = M^{-1} v\,dt,\qquad
    dv = \nabla\log p(x)\,dt - \gamma v\,dt + \sqrt{2\gamma}\,M^{1/2} dW
    $$

    integrated by ``numpyro_wjs.core.langevin.baoab_step`` (half kick, half drift,
    exact Ornstein-Uhlenbeck velocity refresh, half drift, half kick). The velocity
    persists across steps, so the chain moves ballistically over a distance of
    about ``1 / friction`` before it forgets its direction. Unadjusted (runs on a
    score alone); on a Gaussian target its position marginal is exact at any stable
    step size (Leimkuhler & Matthews 2013); elsewhere its bias is ``O(h^2)``.

    **Step size.** During warmup, dual averaging tunes ``h`` so that the acceptance
    a Metropolis correction of the step's energy error would have
    (``langevin.baoab_log_ratio``: exact ``log p`` with a potential, trapezoid
    estimate with a score; applied during warmup only) averages
    ``target_accept_prob`` (0.99). Raise it to shrink the bias;
    ``adapt_step_size=False`` keeps ``step_size`` fixed. As for ``ULA``, warmup
    applies the correction and sampling is unadjusted. A step that is non-finite or
    whose energy error exceeds ``langevin.MAX_LOG_ACCEPT_DROP`` is discarded and
    flagged in ``diverging``. A step rejected during warmup, or a new mass matrix,
    draws a fresh velocity ``v ~ N(0, M)``; a step discarded after warmup keeps the
    position and reverses the velocity (Horowitz 1991), so the chain retreats from
    where the step failed instead of trying the same direction again.

    Parameters
    ----------
    model, potential_fn, score_fn
        Exactly one score source.
    step_size : float
        Initial (or, without adaptation, fixed) ``h > 0``.
    friction : float
        ``gamma > 0``; ``exp(-gamma h)`` of the velocity survives each step.
    adapt_step_size : bool
        Tune ``h`` during warmup (default True).
    target_accept_prob : float
        Computed acceptance that the tuning aims at (default 0.99).
    inverse_mass_matrix, adapt_mass_matrix, dense_mass, init_strategy
        As for ``ULA``.

    Example
    -------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro.infer import MCMC
    >>> from numpyro_wjs import UnderdampedLangevin
    >>> kernel = UnderdampedLangevin(score_fn=lambda x: -x, step_size=0.5, friction=1.0)
    >>> mcmc = MCMC(kernel, num_warmup=100, num_samples=1000, progress_bar=False)
    >>> mcmc.run(jax.random.key(0), init_params=jnp.zeros(2))
    >>> mcmc.get_samples().shape
    (1000, 2)

    With the step held fixed, the draws have the variance of ``N(0, I)`` (BAOAB is exact
    on a Gaussian at any stable step; 0.3 is about 5 standard errors here):

    >>> kernel = UnderdampedLangevin(score_fn=lambda x: -x, step_size=0.5, friction=1.0, adapt_step_size=False)
    >>> mcmc = MCMC(kernel, num_warmup=100, num_samples=1000, progress_bar=False)
    >>> mcmc.run(jax.random.key(0), init_params=jnp.zeros(2))
    >>> bool(abs(float(mcmc.get_samples().var()) - 1.0) < 0.3)
    True
    """

    def __init__(
        self,
        model=None,
        potential_fn=None,
        score_fn=None,
        *,
        step_size=0.1,
        friction=1.0,
        adapt_step_size=True,
        target_accept_prob=0.99,
        inverse_mass_matrix=None,
        adapt_mass_matrix=False,
        dense_mass=None,
        init_strategy=init_to_uniform,
    ):
        super().__init__(
            model,
            potential_fn,
            score_fn,
            step_size=step_size,
            inverse_mass_matrix=inverse_mass_matrix,
            adapt_step_size=adapt_step_size,
            adapt_mass_matrix=adapt_mass_matrix,
            dense_mass=dense_mass,
            target_accept_prob=target_accept_prob,
            init_strategy=init_strategy,
        )
        self._friction = check_positive("friction", friction)

    def _init_state(self, fields, x, key_core):
        velocity = core.draw_velocity(key_core, x, _metric(fields["adapt_state"]))
        return UnderdampedLangevinState(velocity=velocity, **fields)

    def _sample_one(self, state, model_args, model_kwargs, warmup=None):
        source, key, x, h, metric = self._step_inputs(state, model_args, model_kwargs)
        old = core.UnderdampedState(x, state.velocity, state.score)
        new = core.baoab_step(key, old, source.score, h, self._friction, metric)
        potential_energy, dlogp = self._dlogp(source, state, new.position, new.score)
        log_ratio = core.baoab_log_ratio(old, new, h, metric, dlogp)
        fields = {"z": new.position, "velocity": new.velocity, "score": new.score,
                  "potential_energy": potential_energy}
        out = self._finish(state, source, fields, log_ratio, warmup)
        if warmup is False or not self._adapt_mass_matrix:
            return out
        # a new mass matrix M (end of an adaptation window): draw the velocity from N(0, M)
        changed = jnp.any(out.adapt_state.inverse_mass_matrix != state.adapt_state.inverse_mass_matrix)
        fresh = self._fresh_velocity(state, out.adapt_state)
        return out._replace(velocity=jnp.where(changed, fresh, out.velocity))

    def _fresh_velocity(self, state, adapt_state):
        """``v ~ N(0, M)`` for the metric of ``adapt_state``."""
        return core.draw_velocity(random.fold_in(state.rng_key, 2), state.velocity, _metric(adapt_state))

    def _rejected(self, state, old, warmup):
        """A rejected warmup step draws a fresh velocity (the windows then see a chain that
        keeps moving); a step discarded after warmup reverses it (Horowitz 1991), so the
        chain retreats from where the step failed instead of trying it again."""
        reverse = -state.velocity
        if warmup is False:
            return {**old, "velocity": reverse}
        fresh = self._fresh_velocity(state, state.adapt_state)
        velocity = fresh if warmup else jnp.where(state.i < self._num_warmup, fresh, reverse)
        return {**old, "velocity": velocity}
