"""Pure JAX Langevin steps: ULA, MALA and underdamped Langevin (BAOAB).

Each algorithm is an ``init`` function and a ``step`` function of
``(rng_key, state, <target>, <parameters>)``; none holds hidden state, so they run
inside ``jax.lax.scan``, ``jax.vmap`` and ``jax.jit`` without NumPyro. The NumPyro
kernels in ``numpyro_wjs.infer.langevin`` are thin shells around these functions.

Positions are arrays of any shape when the metric is ``None`` (identity) or a
diagonal of the same shape; a dense metric needs flat ``(d,)`` positions.

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
...     state = langevin.ula_step(key, state, score, 0.1)
...     return state, state.position
>>> _, xs = jax.lax.scan(body, state, jax.random.split(jax.random.key(0), 1000))
>>> xs.shape
(1000, 3)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import random
from jax.scipy.linalg import solve_triangular

from numpyro_wjs.core.metropolis import (
    MAX_LOG_ACCEPT_DROP,
    MetropolisInfo,
    accept_prob,
    all_finite,
    diverged,
    metropolis_hastings,
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
    "AdjustedLangevinState",
    "MALAInfo",
    "mala_init",
    "mala_step",
    "UnderdampedState",
    "underdamped_init",
    "baoab_step",
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


# --------------------------------------------------------------------------- ULA
class LangevinState(NamedTuple):
    """State of overdamped Langevin (ULA)."""

    position: Array
    """Current point ``x``."""
    score: Array
    """``grad log p(x)``, kept so each step evaluates the score once."""


def ula_init(position: Array, score_fn: ScoreFn) -> LangevinState:
    """Initial ULA state: the score at ``position``."""
    return LangevinState(position, score_fn(position))


def ula_step(
    rng_key: Array,
    state: LangevinState,
    score_fn: ScoreFn,
    step_size: float | Array,
    metric: Metric | None = None,
) -> LangevinState:
    """One unadjusted Langevin step.

    ``x' = x + h C grad log p(x) + sqrt(2h) S eps``, ``eps ~ N(0, I)``, ``S S^T = C``.

    Biased: on ``N(0, s^2)`` (``C = 1``) the stationary variance is
    ``s^2 / (1 - h / (2 s^2))``; it diverges for ``h >= 2 s^2``.
    """
    x, g = state
    eps = normal_like(rng_key, x)
    x_new = x + step_size * _apply_c(metric, g) + jnp.sqrt(2 * step_size) * _noise_c(metric, eps)
    return LangevinState(x_new, score_fn(x_new))


# --------------------------------------------------------------------------- MALA
class AdjustedLangevinState(NamedTuple):
    """State of the Metropolis-adjusted Langevin algorithm."""

    position: Array
    """Current point ``x``."""
    logdensity: Array
    """``log p(x)`` up to a constant, needed by the Metropolis-Hastings ratio."""
    score: Array
    """``grad log p(x)``, the drift of the proposal."""


MALAInfo = MetropolisInfo
"""What happened during one MALA step (``core.metropolis.MetropolisInfo``)."""


def mala_init(position: Array, logdensity_fn: LogDensityFn) -> AdjustedLangevinState:
    """Initial MALA state: ``log p`` and its gradient at ``position``."""
    logdensity, score = jax.value_and_grad(logdensity_fn)(position)
    return AdjustedLangevinState(position, logdensity, score)


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
    state: AdjustedLangevinState,
    logdensity_fn: LogDensityFn,
    step_size: float | Array,
    metric: Metric | None = None,
) -> tuple[AdjustedLangevinState, MALAInfo]:
    """One Metropolis-adjusted Langevin step.

    Proposal ``x' ~ N(x + h C grad log p(x), 2 h C)``, accepted with probability
    ``min(1, p(x') q(x | x') / (p(x) q(x' | x)))``; the chain is exact for ``p``.
    """
    key_prop, key_accept = random.split(rng_key)
    x, logp, g = state
    eps = normal_like(key_prop, x)
    x_new = x + step_size * _apply_c(metric, g) + jnp.sqrt(2 * step_size) * _noise_c(metric, eps)
    logp_new, g_new = jax.value_and_grad(logdensity_fn)(x_new)
    log_ratio = langevin_log_ratio(x, g, x_new, g_new, logp_new - logp, step_size, metric)
    new = AdjustedLangevinState(x_new, logp_new, g_new)
    return metropolis_hastings(key_accept, log_ratio, new, state, logp_new, g_new)


# --------------------------------------------------------------------------- underdamped
class UnderdampedState(NamedTuple):
    """State of underdamped (kinetic) Langevin."""

    position: Array
    """Current point ``x``."""
    velocity: Array
    """Momentum ``v``; it persists across steps (that is what makes the dynamics kinetic)."""
    score: Array
    """``grad log p(x)``, reused by the next step's first half kick."""


def underdamped_init(
    position: Array,
    score_fn: ScoreFn,
    rng_key: Array | None = None,
    metric: Metric | None = None,
) -> UnderdampedState:
    """Initial state; velocity ``v ~ N(0, M)`` when ``rng_key`` is given, else zero."""
    v = jnp.zeros_like(position) if rng_key is None else draw_velocity(rng_key, position, metric)
    return UnderdampedState(position, v, score_fn(position))


def draw_velocity(rng_key: Array, like: Array, metric: Metric | None = None) -> Array:
    """A velocity ``v ~ N(0, M)`` shaped like ``like``, for mass ``M = C^{-1}``."""
    return _noise_m(metric, normal_like(rng_key, like))


def baoab_step(
    rng_key: Array,
    state: UnderdampedState,
    score_fn: ScoreFn,
    step_size: float | Array,
    friction: float | Array,
    metric: Metric | None = None,
) -> UnderdampedState:
    """One BAOAB step of underdamped Langevin with mass ``M = C^{-1}``.

    ``dx = M^{-1} v dt``, ``dv = grad log p(x) dt - gamma v dt + sqrt(2 gamma) M^{1/2} dW``::

        B: v <- v + (h/2) grad log p(x)
        A: x <- x + (h/2) C v
        O: v <- exp(-gamma h) v + sqrt(1 - exp(-2 gamma h)) L xi,    L L^T = M
        A: x <- x + (h/2) C v
        B: v <- v + (h/2) grad log p(x)

    On a Gaussian target the position marginal of BAOAB is exact at any stable ``h``
    (Leimkuhler & Matthews 2013). One score evaluation per step.
    """
    x, v, g = state
    h = step_size
    a = jnp.exp(-friction * h)
    v = v + 0.5 * h * g
    x = x + 0.5 * h * _apply_c(metric, v)
    xi = normal_like(rng_key, v)
    v = a * v + jnp.sqrt(1.0 - a * a) * _noise_m(metric, xi)
    x = x + 0.5 * h * _apply_c(metric, v)
    g = score_fn(x)
    v = v + 0.5 * h * g
    return UnderdampedState(x, v, g)


def baoab_log_ratio(old: UnderdampedState, new: UnderdampedState, step_size, metric=None, dlogp=None) -> Array:
    """Minus the energy error of a BAOAB step: ``dlogp - dK`` over its deterministic halves.

    The O step is an exact Ornstein-Uhlenbeck move, so only the ``B A`` and ``A B``
    halves change the energy ``-log p(x) + v^T C v / 2``; ``dK`` is their kinetic
    change. ``dlogp = log p(x') - log p(x)``, by default ``trapezoid_dlogp`` of the
    scores. ``min(1, exp(.))`` is the acceptance the step would have with a
    Metropolis correction: it tunes the step and flags divergence, it never rejects.
    """
    h = step_size
    if dlogp is None:
        dlogp = trapezoid_dlogp(old.position, old.score, new.position, new.score)
    v_a = old.velocity + 0.5 * h * old.score  # after the first B
    v_b = new.velocity - 0.5 * h * new.score  # before the last B
    dk = 0.5 * (_sq_norm_c(metric, v_a) - _sq_norm_c(metric, old.velocity)
                + _sq_norm_c(metric, new.velocity) - _sq_norm_c(metric, v_b))
    return dlogp - dk
