"""Metropolis-adjusted Langevin trajectories (MALT) as pure JAX functions.

Riou-Durand & Vogrinc (2022), "Metropolis Adjusted Langevin Trajectories: a robust
alternative to Hamiltonian Monte Carlo". With mass ``M = C^{-1}``, kinetic energy
``K(v) = v^T C v / 2`` and ``U = -log p``, one draw from ``x_0``:

1. full refresh ``v ~ N(0, M)``;
2. ``L`` OBABO steps, ``eta = exp(-gamma h / 2)``, ``xi ~ N(0, I)``::

       O: v <- eta v + sqrt(1 - eta^2) L_M xi          (L_M L_M^T = M)
       B: v <- v + (h/2) grad log p(x)
       A: x <- x + h C v
       B: v <- v + (h/2) grad log p(x)
       O: v <- eta v + sqrt(1 - eta^2) L_M xi'

3. accept ``x_L`` with probability ``min(1, exp(-Delta))``, where ``Delta`` is the sum
   over the ``L`` steps of the energy error ``U + K`` of the deterministic ``BAB`` part
   only (the O parts leave the energy distribution invariant); on rejection keep ``x_0``.

The chain is reversible for ``p`` at any step ``h``, friction ``gamma >= 0`` and
``L >= 1`` (their Theorem 1); ``gamma = 0`` is HMC with ``L`` leapfrog steps, a large
``gamma`` a chain of MALA-like moves. ``L`` may vary from draw to draw (jitter) as long
as it does not depend on the current point.

The trajectory length ``T = L h`` is tuned with the ChEES criterion (Hoffman, Radul &
Sountsov 2021): the expected squared change of ``|x - E x|^2`` over a trajectory,
maximised over ``log T`` by normalised stochastic gradient ascent (``length_update``),
with ``L`` jittered by a van der Corput sequence (``jittered_num_steps``).

Example
-------
>>> import jax, jax.numpy as jnp
>>> from numpyro_wjs.core import malt
>>> logdensity = lambda x: -0.5 * jnp.sum(x ** 2)          # N(0, I)
>>> state = malt.malt_init(jnp.zeros(3), logdensity)
>>> def body(state, key):
...     state, info = malt.malt_step(key, state, logdensity, 0.3, 5, 1.0)
...     return state, state.z
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
from jax.flatten_util import ravel_pytree

from numpyro_wjs.core.langevin import (
    Metric,
    _apply_c,
    _sq_norm_c,
    _sq_norm_m,
    draw_velocity,
)
from numpyro_wjs.core.metropolis import metropolis_hastings

Array = jax.Array
LogDensityFn = Callable[[Array], Array]

__all__ = [
    "EXACT",
    "FRICTION_TIMES_LENGTH",
    "GRADIENTS_PER_STEP",
    "LengthAdaptState",
    "MALTInfo",
    "MALTState",
    "MALTStats",
    "bab_step",
    "chees_gradient",
    "friction_from_length",
    "jittered_num_steps",
    "length_init",
    "length_update",
    "malt_init",
    "malt_step",
    "malt_trajectory",
    "van_der_corput",
]

#: MALT is exact for ``p`` (a Metropolis-Hastings chain) at any step size and friction.
EXACT = True
#: Gradient evaluations per OBABO step: one draw of ``num_steps`` steps costs ``num_steps``.
GRADIENTS_PER_STEP = 1
#: ``friction_from_length``: ``gamma = FRICTION_TIMES_LENGTH / T``.
FRICTION_TIMES_LENGTH = 1.0


class MALTState(NamedTuple):
    """The point of a MALT chain (the velocity is drawn afresh every draw, so it is not state),
    as the NumPyro kernel carries it."""

    z: Array
    """Position: a flat ``(d,)`` array, or (in ``malt_step``) any pytree."""
    potential_energy: Array
    """``-log p(z)``, needed by the energy error."""
    score: Array
    """``grad log p(z)`` (flat), the first half kick of the next trajectory."""
    length: LengthAdaptState | None = None
    """The ChEES adaptation of the trajectory length that a kernel carries (``None`` alone)."""


class MALTStats(NamedTuple):
    """What a MALT kernel reports for one draw (``MALTInfo`` without the trajectory's end)."""

    acceptance_rate: Array = 0.0
    is_accepted: Array = False
    energy_error: Array = 0.0
    diverging: Array = False
    num_steps: Array = 0
    """OBABO steps, i.e. gradient evaluations."""
    trajectory_length: Array = 0.0
    """The mean trajectory length ``T`` the draw's jittered length was drawn around."""


class MALTInfo(NamedTuple):
    """What happened during one MALT draw."""

    acceptance_rate: Array
    """``min(1, exp(-energy_error))``, 0 when divergent: drives step-size adaptation."""
    is_accepted: Array
    """Whether the end point was accepted."""
    energy_error: Array
    """``Delta``: the summed energy error of the trajectory's ``BAB`` parts."""
    diverging: Array
    """Non-finite end point or ``energy_error > MAX_LOG_ACCEPT_DROP``: rejected."""
    num_steps: Array
    """OBABO steps taken, which is the gradient evaluations spent."""
    proposal: MALTState
    """The end point of the trajectory, accepted or not (for ChEES)."""
    velocity: Array
    """The velocity at the end point (for ChEES)."""


def malt_init(z, logdensity_fn: LogDensityFn) -> MALTState:
    """Initial state: ``-log p`` and the score at ``z`` (a flat position, or a pytree whose
    ``ravel_pytree`` ``logdensity_fn`` takes)."""
    logp, score = jax.value_and_grad(logdensity_fn)(ravel_pytree(z)[0])
    return MALTState(z, -logp, score)


def bab_step(
    state: MALTState, v: Array, logdensity_fn: LogDensityFn, step_size, metric: Metric | None = None
) -> tuple[MALTState, Array, Array]:
    """One leapfrog (velocity Verlet) step ``B A B``: ``(new state, new velocity, energy error)``.

    The energy error is ``U(x') + K(v') - U(x) - K(v)``, ``O(h^3)`` for smooth ``p``.
    """
    h = step_size
    v_half = v + 0.5 * h * state.score
    z = state.z + h * _apply_c(metric, v_half)
    logp, score = jax.value_and_grad(logdensity_fn)(z)
    v_new = v_half + 0.5 * h * score
    error = (-logp - state.potential_energy) + 0.5 * (_sq_norm_c(metric, v_new) - _sq_norm_c(metric, v))
    return state._replace(z=z, potential_energy=-logp, score=score), v_new, error


def _ornstein_uhlenbeck(key: Array, v: Array, eta, metric: Metric | None) -> Array:
    """Exact OU move ``v <- eta v + sqrt(1 - eta^2) L_M xi``: leaves ``N(0, M)`` invariant."""
    return eta * v + jnp.sqrt(1.0 - eta * eta) * draw_velocity(key, v, metric)


def malt_trajectory(
    rng_key: Array,
    state: MALTState,
    velocity: Array,
    logdensity_fn: LogDensityFn,
    step_size,
    num_steps,
    friction,
    metric: Metric | None = None,
) -> tuple[MALTState, Array, Array]:
    """``num_steps`` OBABO steps from ``(state, velocity)``: ``(end state, end velocity, Delta)``.

    ``Delta`` sums the ``bab_step`` energy errors only; ``num_steps`` may be traced.
    With ``friction = 0`` this is ``num_steps`` leapfrog steps and ``Delta = H_end - H_start``.
    """
    eta = jnp.exp(-0.5 * friction * step_size)

    def body(j, carry):
        s, v, delta = carry
        key_1, key_2 = random.split(random.fold_in(rng_key, j))
        v = _ornstein_uhlenbeck(key_1, v, eta, metric)
        s, v, error = bab_step(s, v, logdensity_fn, step_size, metric)
        return s, _ornstein_uhlenbeck(key_2, v, eta, metric), delta + error

    zero = jnp.zeros((), jnp.result_type(state.potential_energy))
    return jax.lax.fori_loop(0, num_steps, body, (state, velocity, zero))


def malt_step(
    rng_key: Array,
    state: MALTState,
    logdensity_fn: LogDensityFn,
    step_size,
    num_steps,
    friction,
    metric: Metric | None = None,
) -> tuple[MALTState, MALTInfo]:
    """One MALT draw: full refresh ``v ~ N(0, M)``, ``malt_trajectory``, one Metropolis test.

    Accept with ``min(1, exp(-Delta))`` (Riou-Durand & Vogrinc 2022, Algorithm 1); a
    divergent trajectory (``core.metropolis.diverged``) is rejected. Costs ``num_steps``
    gradients.
    """
    key_v, key_traj, key_mh = random.split(rng_key, 3)
    x, unravel = ravel_pytree(state.z)
    start = MALTState(x, state.potential_energy, state.score)
    v = draw_velocity(key_v, x, metric)
    proposal, v_end, delta = malt_trajectory(key_traj, start, v, logdensity_fn, step_size, num_steps, friction, metric)
    kept, mh = metropolis_hastings(key_mh, -delta, proposal, start, *proposal[:3])
    info = MALTInfo(mh.acceptance_rate, mh.is_accepted, delta, mh.diverging, jnp.asarray(num_steps), proposal, v_end)
    return kept._replace(z=unravel(kept.z), length=state.length), info


# --------------------------------------------------------------------------- trajectory length
def van_der_corput(i: Array, bits: int = 32) -> Array:
    """The ``i``-th point (``i >= 0``) of the base-2 van der Corput sequence in ``(0, 1)``.

    The 1-d Halton sequence, as ChEES-HMC jitters with; ``i + 1`` is reversed in binary.
    """
    n = jnp.asarray(i, jnp.uint32) + 1
    k = jnp.arange(bits, dtype=jnp.uint32)
    digits = (n[..., None] >> k) & 1
    return jnp.sum(digits * 0.5 ** (k + 1.0), -1)


def jittered_num_steps(u: Array, trajectory_length, step_size, max_num_steps: int) -> Array:
    """``L = ceil(2 u T / h)`` clipped to ``[1, max_num_steps]``: ``u ~ U(0, 1)`` gives a
    mean trajectory of about ``T``, uniform on ``(0, 2T]``, as ChEES-HMC jitters."""
    n = jnp.ceil(2.0 * u * trajectory_length / step_size)
    return jnp.clip(jnp.nan_to_num(n, nan=1.0), 1, max_num_steps).astype(jnp.int32)


def friction_from_length(trajectory_length) -> Array:
    """``gamma = FRICTION_TIMES_LENGTH / T``: over one trajectory the velocity keeps
    ``exp(-1)`` of its direction, so it moves ballistically for about ``T`` but no
    U-turn of a periodic orbit (HMC's resonance) survives many trajectories. A choice
    of this package, not a published rule."""
    return FRICTION_TIMES_LENGTH / trajectory_length


def chees_gradient(z0: Array, info: MALTInfo, center: Array, step_size, metric: Metric | None = None):
    """``(ChEES sample, its gradient in log T)`` from one trajectory (Hoffman, Radul & Sountsov 2021).

    ``ChEES = E[(|x' - m|^2 - |x - m|^2)^2] / 4`` in the metric's norm ``|y|^2 = y^T M y``;
    its derivative along the trajectory is ``(|x' - m|^2 - |x - m|^2) (x' - m)^T v'``
    (``dx'/dt = C v'``), times ``dt / d log T = t = L h`` for a jittered ``t``. Both are
    weighted by the acceptance, and 0 for a non-finite trajectory. ``m`` estimates ``E x``.
    """
    z1 = info.proposal.z
    change = _sq_norm_m(metric, z1 - center) - _sq_norm_m(metric, z0 - center)
    value = info.acceptance_rate * 0.25 * change * change
    gradient = info.acceptance_rate * change * jnp.sum((z1 - center) * info.velocity) * info.num_steps * step_size
    ok = jnp.isfinite(value) & jnp.isfinite(gradient)
    return jnp.where(ok, value, 0.0), jnp.where(ok, gradient, 0.0)


class LengthAdaptState(NamedTuple):
    """ChEES adaptation of the trajectory length ``T`` during warmup."""

    log_length: Array
    """``log T``, the current iterate."""
    log_length_avg: Array
    """Running average of ``log T`` (the value used after warmup)."""
    moment: Array
    """Moving average of the ascent direction (momentum)."""
    sq_moment: Array
    """Moving average of its square (normalisation)."""
    center: Array
    """Running estimate of ``E x`` (this chain's recent draws)."""
    count: Array
    """Updates so far."""


def length_init(z: Array, trajectory_length) -> LengthAdaptState:
    """Start the adaptation at ``T = trajectory_length``, centred at ``z``."""
    log_t = jnp.log(jnp.asarray(trajectory_length, jnp.result_type(z)))
    zero = jnp.zeros_like(log_t)
    return LengthAdaptState(log_t, log_t, zero, zero, z, jnp.array(0))


def length_update(
    state: LengthAdaptState,
    chees: tuple[Array, Array],
    z: Array,
    bounds: tuple,
    learning_rate: float = 0.025,
    beta1: float = 0.9,
    beta2: float = 0.95,
    horizon: int = 100,
) -> LengthAdaptState:
    """One Adam step (Kingma & Ba 2015) of ascent on ChEES per gradient, ``ChEES / T``.

    ``chees`` is ``chees_gradient``'s ``(value, gradient)`` of one trajectory;
    ``d (ChEES / T) / d log T = (E gradient - E value) / T``, so the ascent direction is
    ``gradient - value`` (Adam divides out its scale, which changes with the mass
    matrix). Dividing by ``T`` (a trajectory costs ``T / h`` gradients) is this
    package's variant: ChEES alone is flat past its first maximum on a Gaussian, where
    a single chain's noisy gradient lets ``T`` drift upwards; per gradient it has one
    clear maximum. Momentum ``beta1`` averages one chain's noise (Hoffman et al. average
    over many chains). ``log T`` is clipped to ``log bounds``; the centre and
    ``log_length_avg`` are running means over the last ``horizon`` updates.
    """
    value, gradient = chees
    g = gradient - value
    count = state.count + 1
    moment = beta1 * state.moment + (1 - beta1) * g
    sq_moment = beta2 * state.sq_moment + (1 - beta2) * g * g
    m_hat = moment / (1 - beta1**count)
    v_hat = sq_moment / (1 - beta2**count)
    step = learning_rate * m_hat / (jnp.sqrt(v_hat) + 1e-12)
    log_t = jnp.clip(state.log_length + step, jnp.log(bounds[0]), jnp.log(bounds[1]))
    w = 1.0 / jnp.minimum(count, horizon)
    return LengthAdaptState(
        log_t,
        state.log_length_avg + w * (log_t - state.log_length_avg),
        moment,
        sq_moment,
        state.center + w * (z - state.center),
        count,
    )
