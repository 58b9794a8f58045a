"""Pure JAX stochastic-gradient Langevin steps: SGLD, pSGLD, SGHMC (BAOAB), SGLD-CV.

A stochastic gradient is a function ``grad_fn(rng_key, x) -> g~(x)`` of a key (which
draws the minibatch) and a flat ``(d,)`` position, unbiased for ``grad log p(z)``:
for ``N`` data and a minibatch ``S`` of size ``B``,
``g~(z) = grad log p0(z) + (N / B) sum_{i in S} grad log p(x_i | z)``
(the scaling of ``numpyro.plate(..., subsample_size=B)``). The same key gives the
same minibatch, so ``grad_fn(key, z) - grad_fn(key, z_hat)`` is a difference on one
minibatch (control variates).

Each step is a function of ``(rng_key, state, grad_fn, step_size, ...)`` and reuses the
deterministic steps of ``numpyro_wjs.core.langevin`` with the stochastic gradient in
place of the score; the state caches ``g~`` at its position (drawn on a fresh
minibatch when the position was reached), so a step costs one minibatch gradient. A
step whose new position or gradient is non-finite is discarded and flagged
(``SGInfo.diverging``).

Exact oracle (``docs/theory.md`` section 8): on the Gaussian-mean posterior the noise
of ``g~`` does not depend on ``z`` and SGLD is an AR(1) with stationary variance
``(2 + h Var xi) / (P (2 - h P))``.

Example
-------
>>> import jax, jax.numpy as jnp
>>> from numpyro_wjs.core import sgld
>>> x = jax.random.normal(jax.random.key(1), (1000,)) + 2.0   # data, N = 1000
>>> def grad_fn(key, z):                                      # prior N(0, 10^2), B = 10
...     idx = sgld.minibatch(key, 1000, 10)
...     return -z / 100.0 + 100.0 * jnp.sum(x[idx] - z)
>>> state = sgld.sgld_init(jax.random.key(0), jnp.zeros(1), grad_fn)
>>> def body(state, key):
...     state, info = sgld.sgld_step(key, state, grad_fn, 1e-5)
...     return state, state.z
>>> _, zs = jax.lax.scan(body, state, jax.random.split(jax.random.key(2), 2000))
>>> zs.shape
(2000, 1)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import random
from jax.flatten_util import ravel_pytree

from numpyro_wjs.core.langevin import (
    Metric,
    baoab,
    baoab_log_ratio,
    draw_velocity,
    langevin_log_ratio,
    langevin_proposal,
    metric,
    trapezoid_dlogp,
)
from numpyro_wjs.core.metropolis import all_finite, select

Array = jax.Array
GradFn = Callable[[Array, Array], Array]

__all__ = [
    "GradFn",
    "RMSProp",
    "SGHMCState",
    "SGInfo",
    "SGLDState",
    "constant",
    "control_variate",
    "minibatch",
    "noise_limited_step",
    "noise_variance",
    "polynomial_decay",
    "rmsprop_metric",
    "rmsprop_update",
    "sghmc_init",
    "sghmc_log_ratio",
    "sghmc_step",
    "sgld_init",
    "sgld_log_ratio",
    "sgld_step",
]


def minibatch(rng_key: Array, num_data: int, batch_size: int, replace: bool = False) -> Array:
    """``batch_size`` indices of ``range(num_data)``, uniformly without (or with) replacement."""
    if replace:
        return random.randint(rng_key, (batch_size,), 0, num_data)
    return random.choice(rng_key, num_data, (batch_size,), replace=False)


# --------------------------------------------------------------------------- pSGLD
class RMSProp(NamedTuple):
    """The diagonal preconditioner of pSGLD (Li, Chen, Carlson & Carin 2016).

    ``V <- alpha V + (1 - alpha) g~ * g~`` and ``C = diag(1 / (lam + sqrt(V)))``.
    """

    alpha: float = 0.99
    """Decay of the running mean of squared gradients."""
    lam: float = 1e-5
    """``lambda``: keeps ``C`` bounded where the gradient vanishes."""


def rmsprop_update(square_avg: Array, g: Array, params: RMSProp) -> Array:
    """``V' = alpha V + (1 - alpha) g * g`` (Li et al. 2016, Algorithm 1)."""
    return params.alpha * square_avg + (1.0 - params.alpha) * g * g


def rmsprop_metric(square_avg: Array, params: RMSProp) -> Metric:
    """``C = diag(1 / (lam + sqrt(V)))`` as a ``core.langevin.Metric``."""
    return metric(1.0 / (params.lam + jnp.sqrt(square_avg)))


# --------------------------------------------------------------------------- SGLD
class SGLDState(NamedTuple):
    """State of (preconditioned) stochastic-gradient Langevin dynamics."""

    z: Any
    """Position: a flat ``(d,)`` array or a pytree (``grad_fn`` and the flat fields act on its
    ``ravel_pytree``)."""
    score: Array
    """``g~(z)``: the stochastic gradient at ``z`` on the minibatch drawn when ``z`` was reached."""
    square_avg: Array | None = None
    """pSGLD's running mean ``V`` of ``g~ * g~`` (``None`` without preconditioner)."""
    centre: Array | None = None
    """SGLD-CV's centre ``z_hat`` (flat; ``None`` without control variates): the caller
    builds ``grad_fn`` as ``control_variate(g, centre, centre_grad)``; the steps carry it."""
    centre_grad: Array | None = None
    """The full-data gradient at ``centre``."""


class SGInfo(NamedTuple):
    """What happened during one stochastic-gradient step."""

    diverging: Array
    """The new position or its gradient was non-finite; the step was discarded."""


def sgld_init(rng_key: Array, z: Any, grad_fn: GradFn, rmsprop: RMSProp | None = None) -> SGLDState:
    """Initial state: ``g~(z)`` on a fresh minibatch; pSGLD's ``V`` starts at ``g~ * g~``.

    (Li et al. start from ``V = 0``, which makes the first preconditioner ``1 / lam``.)
    """
    g = grad_fn(rng_key, ravel_pytree(z)[0])
    return SGLDState(z, g, None if rmsprop is None else g * g)


def _keep_finite(new, old, *values):
    """``(new or old, diverging)``: ``new`` is discarded when any of ``values`` is non-finite."""
    diverging = ~all_finite(*values)
    return select(diverging, old, new), SGInfo(diverging)


def sgld_step(
    rng_key: Array,
    state: SGLDState,
    grad_fn: GradFn,
    step_size: float | Array,
    rmsprop: RMSProp | None = None,
    metric: Metric | None = None,
) -> tuple[SGLDState, SGInfo]:
    """One SGLD step (Welling & Teh 2011), pSGLD with ``rmsprop`` (Li et al. 2016).

    ``z' = z + h C g~(z) + sqrt(2h) S eps``, ``S S^T = C``, ``eps ~ N(0, I)``, then
    ``g~(z')`` on a fresh minibatch. Without ``rmsprop`` ``C`` is ``metric`` (identity
    by default). With ``rmsprop``, ``V`` is first updated with ``g~(z)`` and
    ``C = diag(1 / (lam + sqrt(V)))``. **Correction term:** pSGLD's drift has a term
    ``h Gamma(z)``, ``Gamma_i = sum_j dC_ij / dz_j``; like Li et al. in their
    experiments we drop it: ``V`` is a running mean over about ``1 / (1 - alpha)``
    steps that depends on ``z`` only through past gradients, and the bias this leaves
    vanishes as ``alpha -> 1`` (their Theorem 2 discussion).
    """
    key_noise, key_batch = random.split(rng_key)
    square_avg = state.square_avg
    if rmsprop is not None:
        square_avg = rmsprop_update(square_avg, state.score, rmsprop)
        metric = rmsprop_metric(square_avg, rmsprop)
    x, unravel = ravel_pytree(state.z)
    x = langevin_proposal(key_noise, x, state.score, step_size, metric)
    g = grad_fn(key_batch, x)
    return _keep_finite(state._replace(z=unravel(x), score=g, square_avg=square_avg), state, x, g)


# --------------------------------------------------------------------------- SGHMC (BAOAB)
class SGHMCState(NamedTuple):
    """State of stochastic-gradient underdamped Langevin (BAOAB with ``g~``)."""

    z: Any
    """Position (a flat array or a pytree, as ``SGLDState.z``)."""
    velocity: Array
    """Flat momentum ``v ~ N(0, M)``, ``M = C^{-1}``; kept across steps."""
    score: Array
    """``g~(z)`` on the minibatch drawn when ``z`` was reached; the next step's first half kick."""
    square_avg: Array | None = None
    """RMSprop's running mean ``V`` of ``g~ * g~`` (``None`` without preconditioner)."""
    centre: Array | None = None
    """As ``SGLDState.centre``."""
    centre_grad: Array | None = None
    """As ``SGLDState.centre_grad``."""


def sghmc_init(
    rng_key: Array, z: Any, grad_fn: GradFn, rmsprop: RMSProp | None = None, metric: Metric | None = None
) -> SGHMCState:
    """Initial state: ``g~(z)``, ``V = g~ * g~`` with ``rmsprop``, and ``v ~ N(0, M)``."""
    key_batch, key_v = random.split(rng_key)
    x = ravel_pytree(z)[0]
    g = grad_fn(key_batch, x)
    square_avg = None if rmsprop is None else g * g
    if rmsprop is not None:
        metric = rmsprop_metric(square_avg, rmsprop)
    return SGHMCState(z, draw_velocity(key_v, x, metric), g, square_avg)


def sghmc_step(
    rng_key: Array,
    state: SGHMCState,
    grad_fn: GradFn,
    step_size: float | Array,
    friction: float | Array,
    rmsprop: RMSProp | None = None,
    metric: Metric | None = None,
) -> tuple[SGHMCState, SGInfo]:
    """One BAOAB step of underdamped Langevin with the stochastic gradient ``g~``.

    ``core.langevin.baoab`` with ``g~``: the gradient at the end of a step (on a
    fresh minibatch) gives that step's last half kick and the next step's first, so
    each step adds ``h g~`` to the velocity, as SGHMC (Chen, Fox & Guestrin 2014) does;
    the O part is the exact Ornstein-Uhlenbeck refresh with friction ``gamma``. The
    gradient noise heats the velocity: for small ``h`` its stationary variance grows by
    about ``h Var(xi) / (2 gamma)`` (SGLD: ``h Var(xi) / 2``); SGHMC's friction
    correction ``B^ = h V^ / 2`` is not applied.

    With ``rmsprop``, ``V`` is updated with ``g~(z)`` and the mass is
    ``M = diag(lam + sqrt(V))``; the velocity is rescaled by ``sqrt(M' / M)`` so that
    ``v ~ N(0, M)`` stays ``v ~ N(0, M')`` (the correction term is dropped as in
    ``sgld_step``).
    """
    key_noise, key_batch = random.split(rng_key)
    square_avg, velocity = state.square_avg, state.velocity
    if rmsprop is not None:
        square_avg = rmsprop_update(square_avg, state.score, rmsprop)
        old = rmsprop_metric(state.square_avg, rmsprop)
        metric = rmsprop_metric(square_avg, rmsprop)
        velocity = velocity * metric.mass_matrix_sqrt / old.mass_matrix_sqrt
    x, unravel = ravel_pytree(state.z)
    x, v, g = baoab(key_noise, x, velocity, state.score, lambda y: grad_fn(key_batch, y), step_size, friction,
                    metric)
    new = state._replace(z=unravel(x), velocity=v, score=g, square_avg=square_avg)
    return _keep_finite(new, state, x, v, g)


# --------------------------------------------------------------------------- minibatch Metropolis ratio
def _step_metric(old_square_avg, new_square_avg, rmsprop, metric):
    """``(C before, C of the step)``: RMSprop's from ``V`` and ``V'``, else ``metric`` for both."""
    if rmsprop is None:
        return metric, metric
    return rmsprop_metric(old_square_avg, rmsprop), rmsprop_metric(new_square_avg, rmsprop)


def sgld_log_ratio(old: SGLDState, new: SGLDState, step_size, rmsprop: RMSProp | None = None, metric=None) -> Array:
    """Log Metropolis-Hastings ratio of an SGLD step for the minibatch target ``p_S``.

    ``old.score`` and ``new.score`` must be gradients on the same minibatch ``S``;
    ``log p_S(z') - log p_S(z)`` is the trapezoid rule on them
    (``core.langevin.trapezoid_dlogp``), and the proposal is Langevin's
    (``core.langevin.langevin_log_ratio``) with the step's preconditioner, used for
    both directions. A warmup statistic: it tunes the step on minibatch curvature
    without full-data gradients; it is exact for the step on ``p_S`` only without
    RMSprop.
    """
    _, c = _step_metric(old.square_avg, new.square_avg, rmsprop, metric)
    x, x_new = ravel_pytree(old.z)[0], ravel_pytree(new.z)[0]
    dlogp = trapezoid_dlogp(x, old.score, x_new, new.score)
    return langevin_log_ratio(x, old.score, x_new, new.score, dlogp, step_size, c)


def sghmc_log_ratio(old: SGHMCState, new: SGHMCState, step_size, rmsprop: RMSProp | None = None, metric=None) -> Array:
    """Minus the energy error of a BAOAB step on the minibatch target ``p_S``
    (``core.langevin.baoab_log_ratio``), both scores on the same minibatch; the
    velocity entering the step is rescaled as ``sghmc_step`` does under RMSprop."""
    c_old, c = _step_metric(old.square_avg, new.square_avg, rmsprop, metric)
    v = old.velocity if rmsprop is None else old.velocity * c.mass_matrix_sqrt / c_old.mass_matrix_sqrt
    x, x_new = ravel_pytree(old.z)[0], ravel_pytree(new.z)[0]
    return baoab_log_ratio((x, v, old.score), (x_new, new.velocity, new.score), step_size, c)


# --------------------------------------------------------------------------- control variates
def control_variate(grad_fn: GradFn, centre: Array, centre_grad: Array) -> GradFn:
    """SGLD-CV's gradient (Baker, Fearnhead, Fox & Nemeth 2019).

    ``g_cv(z) = grad log p(z_hat) + g~_S(z) - g~_S(z_hat)``: the full-data gradient
    ``centre_grad`` at the centre ``z_hat`` (computed once), plus the difference of the
    stochastic gradient at ``z`` and at ``z_hat`` on the same minibatch ``S`` (same key).
    Unbiased; its variance is ``O(|z - z_hat|^2)`` (zero at the centre), and zero
    everywhere when the per-datum gradients are affine in ``z`` (Gaussian likelihoods).
    """

    def grad_cv(rng_key, z):
        both = jax.vmap(grad_fn, in_axes=(None, 0))(rng_key, jnp.stack([z, centre]))
        return centre_grad + both[0] - both[1]

    return grad_cv


# --------------------------------------------------------------------------- step schedules
def constant(a: float | Array) -> Callable[[Array], Array]:
    """``h_t = a``."""
    return lambda t: jnp.asarray(a) * jnp.ones_like(jnp.asarray(t, dtype=jnp.result_type(float)))


def polynomial_decay(a: float | Array, b: float | Array, gamma: float | Array) -> Callable[[Array], Array]:
    """``h_t = a (b + t)^(-gamma)`` (Welling & Teh 2011).

    With ``0.5 < gamma <= 1``, ``sum h_t = inf`` and ``sum h_t^2 < inf``: the conditions
    under which SGLD's draws, weighted by ``h_t``, converge to the posterior.
    """
    return lambda t: a * (b + jnp.asarray(t, dtype=jnp.result_type(float))) ** (-gamma)


# --------------------------------------------------------------------------- warmup rule from gradient noise
def noise_variance(g1: Array, g2: Array) -> Array:
    """Per coordinate, ``(g1 - g2)^2 / 2``: an unbiased estimate of ``Var(g~)`` from two
    stochastic gradients at the same point on independent minibatches."""
    return 0.5 * (g1 - g2) ** 2


def noise_limited_step(noise_var: Array, inverse_mass_diag: Array | None, inflation: float, friction=None) -> Array:
    """The largest ``h`` whose gradient noise inflates no coordinate's stationary variance
    by more than ``inflation`` (a fraction).

    On a Gaussian with noise variance ``s^2`` per (preconditioned) coordinate, SGLD's
    variance is ``(2 + h s^2) / (P (2 - h P))`` (theory.md section 8), a relative
    inflation of about ``h (s^2 + P) / 2`` for small ``h``, of which ``h s^2 / 2`` is
    the noise: ``h = 2 inflation / max_j c_j s_j^2``. For BAOAB with friction
    ``gamma`` the noise heats the velocity by ``h s^2 / (2 gamma)``, so ``h`` is
    multiplied by ``gamma``. The discretisation part ``h P / 2`` is left to the step
    size's own tuning.
    """
    scaled = noise_var if inverse_mass_diag is None else noise_var * inverse_mass_diag
    h = 2.0 * inflation / jnp.max(scaled)
    return h if friction is None else h * friction
