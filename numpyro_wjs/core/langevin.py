"""Pure JAX Langevin steps: ULA, MALA and underdamped Langevin (BAOAB).

Each algorithm is an ``init`` function and a ``step`` function of
``(rng_key, state, <target>, <parameters>)``; none holds hidden state, so they run
inside ``jax.lax.scan``, ``jax.vmap`` and ``jax.jit`` without NumPyro. The NumPyro
kernels in ``numpyro_wjs.infer.langevin`` are thin shells around these functions.

A state's position ``z`` is an array or any pytree (a model's unconstrained sites);
the steps work on its flat vector ``ravel_pytree(z)[0]``, which ``score_fn`` and
``logdensity_fn`` take, and keep the score and velocity flat. The moves ``baoab`` and
``langevin_proposal`` work on arrays of any shape (with an identity or diagonal metric).
A step returns ``(state, info)``: ``info`` (``metropolis.MetropolisInfo``) has the
acceptance (applied or what it would be), the energy error and ``diverging``.

The metric (preconditioner) ``C = M^{-1}`` is stored as NumPyro's
``hmc_util`` stores it during adaptation:

* ``inverse_mass_matrix`` ``C``: ``(d,)`` (diagonal) or ``(d, d)`` (dense);
* ``mass_matrix_sqrt`` ``L`` with ``M = L L^T``;
* ``mass_matrix_sqrt_inv`` ``S^T`` with ``C = S S^T`` (``sqrt(C)`` when diagonal).

Example
-------
>>> import jax, jax.numpy as jnp
>>> from numpyro_wjs import langevin
>>> score = lambda x: -x                       # N(0, I)
>>> state = langevin.ula_init(jnp.zeros(3), score)
>>> def body(state, key):
...     state, info = langevin.ula_step(key, state, score, 0.1)
...     return state, state.z
>>> _, xs = jax.lax.scan(body, state, jax.random.split(jax.random.key(0), 1000))
>>> xs.shape
(1000, 3)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import random
from jax.flatten_util import ravel_pytree
from jax.scipy.linalg import solve_triangular

from numpyro_wjs.core.metropolis import (
    MAX_LOG_ACCEPT_DROP,
    MetropolisInfo,
    accept_prob,
    all_finite,
    diverged,
    metropolis_hastings,
    select,
    trapezoid_dlogp,
)

Array = jax.Array
ScoreFn = Callable[[Array], Array]
LogDensityFn = Callable[[Array], Array]

__all__ = [
    "Metric",
    "metric",
    "LangevinState",
    "ula_init",
    "ula_step",
    "langevin_proposal",
    "mala_init",
    "mala_step",
    "UnderdampedState",
    "underdamped_init",
    "underdamped_step",
    "baoab",
    "MAX_LOG_ACCEPT_DROP",
    "trapezoid_dlogp",
    "langevin_log_ratio",
    "baoab_log_ratio",
    "accept_prob",
    "diverged",
    "draw_velocity",
    "all_finite",
    "normal_like",
]

# --------------------------------------------------------------------------- metric
class Metric(NamedTuple):
    """Preconditioner ``C = M^{-1}`` in the layout of ``numpyro.infer.hmc_util``."""

    inverse_mass_matrix: Array
    """``C``: diagonal ``(d,)`` or dense ``(d, d)``."""
    mass_matrix_sqrt: Array
    """``L`` with ``M = L L^T`` (diagonal: ``1 / sqrt(C)``)."""
    mass_matrix_sqrt_inv: Array
    """``S^T`` with ``C = S S^T`` (diagonal: ``sqrt(C)``)."""


def metric(inverse_mass_matrix: Array) -> Metric:
    """Build a ``Metric`` from ``C``: a ``(d,)`` diagonal or a ``(d, d)`` matrix."""
    c = jnp.asarray(inverse_mass_matrix)
    if c.ndim not in (1, 2) or (c.ndim == 2 and c.shape[0] != c.shape[1]):
        raise ValueError(
            "inverse_mass_matrix must be a (d,) diagonal or a square (d, d) matrix, "
            f"got shape {c.shape}."
        )
    if c.ndim == 1:
        sqrt_inv = jnp.sqrt(c)
        return Metric(c, 1.0 / sqrt_inv, sqrt_inv)
    # S^T upper triangular with C = S S^T (the layout of numpyro.infer.hmc_util)
    sqrt_inv = jnp.swapaxes(jnp.linalg.cholesky(c[::-1, ::-1])[::-1, ::-1], -2, -1)
    return Metric(c, solve_triangular(sqrt_inv, jnp.identity(c.shape[0], c.dtype), lower=True), sqrt_inv)


def _times(matrix: Array, v: Array, transpose: bool = False) -> Array:
    """``matrix @ v`` (``matrix.T @ v`` if ``transpose``) for a dense matrix; ``matrix * v`` for a diagonal."""
    if jnp.ndim(matrix) == 2:
        return (matrix.T if transpose else matrix) @ v
    return matrix * v


def _apply_c(m: Metric | None, g: Array) -> Array:
    """``C g``."""
    return g if m is None else _times(m.inverse_mass_matrix, g)


def _noise_c(m: Metric | None, eps: Array) -> Array:
    """``S eps ~ N(0, C)`` for ``eps ~ N(0, I)``."""
    return eps if m is None else _times(m.mass_matrix_sqrt_inv, eps, transpose=True)


def _noise_m(m: Metric | None, xi: Array) -> Array:
    """``L xi ~ N(0, M)`` for ``xi ~ N(0, I)``."""
    return xi if m is None else _times(m.mass_matrix_sqrt, xi)


def _sq_norm_c(m: Metric | None, v: Array) -> Array:
    """``v^T C v`` (twice the kinetic energy of ``v`` for mass ``M = C^{-1}``)."""
    w = v if m is None else _times(m.mass_matrix_sqrt_inv, v)
    return jnp.sum(w * w)


def _sq_norm_m(m: Metric | None, v: Array) -> Array:
    """``v^T M v``."""
    w = v if m is None else _times(m.mass_matrix_sqrt, v, transpose=True)
    return jnp.sum(w * w)


def normal_like(rng_key: Array, x: Array) -> Array:
    """``N(0, I)`` noise shaped like ``x``, drawn flat (image shapes compile slowly on CPU)."""
    return random.normal(rng_key, (jnp.size(x),), jnp.result_type(x)).reshape(jnp.shape(x))

def _flat(state) -> tuple[Array, Callable[[Array], Any]]:
    """``(x, unravel)``: the state's position ``z`` as a flat vector, and back."""
    return ravel_pytree(state.z)


def _step_key(rng_key: Array) -> Array:
    """The key a chain step draws from: ``split(rng_key)[1]`` (part 0 is the caller's next key)."""
    return random.split(rng_key)[1]


def _target_at(x: Array, score_fn: ScoreFn, logdensity_fn: LogDensityFn | None) -> tuple[Array, Array]:
    """``(potential_energy, score)`` at the flat ``x``: ``-log p`` is 0 without ``logdensity_fn``."""
    if logdensity_fn is None:
        return jnp.zeros((), jnp.result_type(x)), score_fn(x)
    logp, g = jax.value_and_grad(logdensity_fn)(x)
    return -logp, g


def _energy_change(x, g, pe, x_new, g_new, score_fn, logdensity_fn):
    """``(potential_energy', log p(x') - log p(x))``: exact with ``logdensity_fn``, else trapezoid."""
    if logdensity_fn is None:
        return pe, trapezoid_dlogp(x, g, x_new, g_new)
    logp = logdensity_fn(x_new)
    return -logp, logp + pe


def _correct(rng_key, log_ratio, new, old, adjusted):
    """``(kept, MetropolisInfo)`` of an unadjusted move: accepted or rejected by its Metropolis
    probability where ``adjusted`` (warmup: the adaptation windows see exact draws); otherwise
    only a divergent move is dropped."""
    corrected, info = metropolis_hastings(rng_key, log_ratio, new, old, *jax.tree.leaves(new))
    return select(adjusted, corrected, select(info.diverging, old, new)), info


# --------------------------------------------------------------------------- ULA and MALA
class LangevinState(NamedTuple):
    """State of overdamped Langevin (ULA and MALA), as the NumPyro kernels carry it."""

    z: Any
    """Position: an array, or any pytree (flattened by the steps; a model's unconstrained sites)."""
    potential_energy: Array
    """``-log p(z)`` up to a constant; 0 where only the score is known."""
    score: Array
    """``grad log p(z)`` (flat for a pytree ``z``), kept so each step evaluates the score once."""


def ula_init(z, score_fn: ScoreFn, logdensity_fn: LogDensityFn | None = None) -> LangevinState:
    """Initial state at ``z``: the score (and ``-log p`` with ``logdensity_fn``) there.

    ``score_fn`` and ``logdensity_fn`` take the flat position ``ravel_pytree(z)[0]``.
    """
    x = ravel_pytree(z)[0]
    potential_energy, score = _target_at(x, score_fn, logdensity_fn)
    return LangevinState(z, potential_energy, score)


def mala_init(z, logdensity_fn: LogDensityFn) -> LangevinState:
    """``ula_init`` from ``log p`` alone (its gradient is the score)."""
    return ula_init(z, jax.grad(logdensity_fn), logdensity_fn)


def langevin_proposal(rng_key: Array, x: Array, g: Array, step_size, metric: Metric | None = None) -> Array:
    """``x' = x + h C g + sqrt(2h) S eps``, ``eps ~ N(0, I)``, ``S S^T = C``: the Langevin move."""
    eps = normal_like(rng_key, x)
    return x + step_size * _apply_c(metric, g) + jnp.sqrt(2 * step_size) * _noise_c(metric, eps)


def ula_step(
    rng_key: Array,
    state: LangevinState,
    score_fn: ScoreFn,
    step_size: float | Array,
    metric: Metric | None = None,
    *,
    logdensity_fn: LogDensityFn | None = None,
    num_steps: int = 1,
    adjusted: bool | Array = False,
) -> tuple[LangevinState, MetropolisInfo]:
    """``num_steps`` unadjusted Langevin moves ``x' = x + h C grad log p(x) + sqrt(2h) S eps``.

    Biased: on ``N(0, s^2)`` (``C = 1``) the stationary variance is
    ``s^2 / (1 - h / (2 s^2))``; it diverges for ``h >= 2 s^2``. Each move's
    Metropolis-Hastings ratio (``langevin_log_ratio``: exact with ``logdensity_fn``,
    trapezoid estimate from the scores otherwise) is reported in the info (mean
    acceptance, mean energy error) and applied only where ``adjusted``; a divergent move
    is always dropped. The moves draw from ``split(rng_key)[1]``, the tests from
    ``fold_in(rng_key, 1)``. Cost: ``num_steps`` score evaluations.
    """
    x, unravel = _flat(state)
    h = step_size

    def one(carry, j):
        (x, g, pe), key, key_mh = carry
        x_new = langevin_proposal(key, x, g, h, metric)
        g_new = score_fn(x_new)
        pe_new, dlogp = _energy_change(x, g, pe, x_new, g_new, score_fn, logdensity_fn)
        log_ratio = langevin_log_ratio(x, g, x_new, g_new, dlogp, h, metric)
        kept, info = _correct(key_mh, log_ratio, (x_new, g_new, pe_new), (x, g, pe), adjusted)
        keys = random.fold_in(key, j + 1), random.fold_in(key_mh, j + 1)
        return (kept, *keys), info

    start = ((x, state.score, state.potential_energy), _step_key(rng_key), random.fold_in(rng_key, 1))
    ((x, g, pe), _, _), info = jax.lax.scan(one, start, jnp.arange(num_steps))
    info = MetropolisInfo(jnp.mean(info.acceptance_rate), jnp.all(info.is_accepted), jnp.any(info.diverging),
                          jnp.mean(info.energy_error))
    return LangevinState(unravel(x), pe, g), info


def _mala_log_q(m: Metric | None, x_to: Array, x_from: Array, g_from: Array, h) -> Array:
    """``log q(x_to | x_from) + const`` for ``q = N(x_from + h C g_from, 2 h C)``."""
    d = x_to - x_from - h * _apply_c(m, g_from)
    return -_sq_norm_m(m, d) / (4 * h)


def langevin_log_ratio(x: Array, g: Array, x_new: Array, g_new: Array, dlogp: Array, step_size, metric=None):
    """Log Metropolis-Hastings ratio of the Langevin proposal ``x -> x_new``.

    ``log [p(x') q(x | x') / (p(x) q(x' | x))]`` with ``q(x' | x) = N(x + h C g, 2 h C)``
    and ``dlogp = log p(x') - log p(x)`` (exact, or ``trapezoid_dlogp`` from scores).
    MALA applies it; ULA computes it to tune its step and to flag divergence.
    """
    return dlogp + _mala_log_q(metric, x, x_new, g_new, step_size) - _mala_log_q(metric, x_new, x, g, step_size)


def mala_step(
    rng_key: Array,
    state: LangevinState,
    logdensity_fn: LogDensityFn,
    step_size: float | Array,
    metric: Metric | None = None,
) -> tuple[LangevinState, MetropolisInfo]:
    """One Metropolis-adjusted Langevin step (exact for ``p``).

    Proposal ``x' ~ N(x + h C grad log p(x), 2 h C)``, accepted with probability
    ``min(1, p(x') q(x | x') / (p(x) q(x' | x)))``. One gradient evaluation.
    """
    key_prop, key_accept = random.split(rng_key)
    x, unravel = _flat(state)
    # one computation of x_new: XLA may otherwise recompute it inside several fusions, with a
    # rounding that depends on the batch of chains (draws would depend on the device layout)
    x_new = jax.lax.optimization_barrier(langevin_proposal(key_prop, x, state.score, step_size, metric))
    logp_new, g_new = jax.value_and_grad(logdensity_fn)(x_new)
    log_ratio = langevin_log_ratio(x, state.score, x_new, g_new, logp_new + state.potential_energy, step_size, metric)
    new = LangevinState(unravel(x_new), -logp_new, g_new)
    return metropolis_hastings(key_accept, log_ratio, new, state, logp_new, g_new)


# --------------------------------------------------------------------------- underdamped
class UnderdampedState(NamedTuple):
    """State of underdamped (kinetic) Langevin, as the NumPyro kernel carries it."""

    z: Any
    """Position (an array or a pytree, as in ``LangevinState``)."""
    velocity: Array
    """Momentum ``v`` (flat for a pytree ``z``); it persists across steps (that is what makes
    the dynamics kinetic)."""
    potential_energy: Array
    """``-log p(z)``; 0 where only the score is known."""
    score: Array
    """``grad log p(z)``, reused by the next step's first half kick."""


def underdamped_init(
    z,
    score_fn: ScoreFn,
    rng_key: Array | None = None,
    metric: Metric | None = None,
    logdensity_fn: LogDensityFn | None = None,
) -> UnderdampedState:
    """Initial state; velocity ``v ~ N(0, M)`` when ``rng_key`` is given, else zero."""
    st = ula_init(z, score_fn, logdensity_fn)
    v = jnp.zeros_like(st.score) if rng_key is None else draw_velocity(rng_key, st.score, metric)
    return UnderdampedState(z, v, st.potential_energy, st.score)


def draw_velocity(rng_key: Array, like: Array, metric: Metric | None = None) -> Array:
    """A velocity ``v ~ N(0, M)`` shaped like ``like``, for mass ``M = C^{-1}``."""
    return _noise_m(metric, normal_like(rng_key, like))


def baoab(rng_key: Array, x: Array, v: Array, g: Array, score_fn: ScoreFn, step_size, friction, metric=None):
    """One BAOAB move of underdamped Langevin with mass ``M = C^{-1}``: ``(x', v', g')``.

    ``dx = M^{-1} v dt``, ``dv = grad log p(x) dt - gamma v dt + sqrt(2 gamma) M^{1/2} dW``::

        B: v <- v + (h/2) grad log p(x)
        A: x <- x + (h/2) C v
        O: v <- exp(-gamma h) v + sqrt(1 - exp(-2 gamma h)) L xi,    L L^T = M
        A: x <- x + (h/2) C v
        B: v <- v + (h/2) grad log p(x)

    On a Gaussian target the position marginal of BAOAB is exact at any stable ``h``
    (Leimkuhler & Matthews 2013). One score evaluation.
    """
    h = step_size
    a = jnp.exp(-friction * h)
    v = v + 0.5 * h * g
    x = x + 0.5 * h * _apply_c(metric, v)
    xi = normal_like(rng_key, v)
    v = a * v + jnp.sqrt(1.0 - a * a) * _noise_m(metric, xi)
    x = x + 0.5 * h * _apply_c(metric, v)
    g = score_fn(x)
    v = v + 0.5 * h * g
    return x, v, g


def baoab_log_ratio(old, new, step_size, metric=None, dlogp=None) -> Array:
    """Minus the energy error of a BAOAB move ``old -> new``, each ``(x, v, g)``: ``dlogp - dK``.

    The O step is an exact Ornstein-Uhlenbeck move, so only the ``B A`` and ``A B``
    halves change the energy ``-log p(x) + v^T C v / 2``; ``dK`` is their kinetic
    change. ``dlogp = log p(x') - log p(x)``, by default ``trapezoid_dlogp`` of the
    scores. ``min(1, exp(.))`` is the acceptance the move would have with a
    Metropolis correction.
    """
    (x, v, g), (x_new, v_new, g_new) = old, new
    h = step_size
    if dlogp is None:
        dlogp = trapezoid_dlogp(x, g, x_new, g_new)
    v_a = v + 0.5 * h * g  # after the first B
    v_b = v_new - 0.5 * h * g_new  # before the last B
    dk = 0.5 * (_sq_norm_c(metric, v_a) - _sq_norm_c(metric, v) + _sq_norm_c(metric, v_new) - _sq_norm_c(metric, v_b))
    return dlogp - dk


def underdamped_step(
    rng_key: Array,
    state: UnderdampedState,
    score_fn: ScoreFn,
    step_size: float | Array,
    friction: float | Array,
    metric: Metric | None = None,
    *,
    logdensity_fn: LogDensityFn | None = None,
    adjusted: bool | Array = False,
) -> tuple[UnderdampedState, MetropolisInfo]:
    """One BAOAB step (``baoab``) of underdamped Langevin, unadjusted unless ``adjusted``.

    Its Metropolis-Hastings ratio (``baoab_log_ratio``, exact ``log p`` with
    ``logdensity_fn``, trapezoid otherwise) is reported in the info and applied only where
    ``adjusted``; a divergent step is always dropped. A step rejected where ``adjusted``
    draws a fresh velocity ``v ~ N(0, M)`` (from ``fold_in(rng_key, 2)``); one dropped
    otherwise reverses it (Horowitz 1991), so the chain retreats from where the step
    failed. The move draws from ``split(rng_key)[1]``, the test from ``fold_in(rng_key, 1)``.
    One score evaluation.
    """
    x, unravel = _flat(state)
    old = (x, state.velocity, state.score)
    new = baoab(_step_key(rng_key), *old, score_fn, step_size, friction, metric)
    pe, dlogp = _energy_change(x, state.score, state.potential_energy, new[0], new[2], score_fn, logdensity_fn)
    log_ratio = baoab_log_ratio(old, new, step_size, metric, dlogp)
    fresh = draw_velocity(random.fold_in(rng_key, 2), state.velocity, metric)
    rejected = (x, jnp.where(adjusted, fresh, -state.velocity), state.score, state.potential_energy)
    (x, v, g, pe), info = _correct(random.fold_in(rng_key, 1), log_ratio, (*new, pe), rejected, adjusted)
    return UnderdampedState(unravel(x), v, pe, g), info
