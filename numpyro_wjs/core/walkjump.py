"""Walk-jump sampling as pure JAX functions (Saremi & Hyvarinen 2019, "Neural Empirical Bayes").

WALK: Langevin MCMC on the smoothed density ``p_Y = p_X * N(0, sigma^2 I)`` with the
score given by a denoiser through Tweedie-Miyasawa,
``grad log p_Y(y) = (E[X | y] - y) / sigma^2``. JUMP: ``x = E[X | y] = y + sigma^2 grad log p_Y(y)``. Jumps never
feed back into the walk.

With ``M`` measurements ``y_m = x + sigma eps_m`` the mean ``ybar`` is sufficient
for ``x`` with noise ``sigma / sqrt(M)``, so (Saremi & Srivastava 2022)

* ``joint``: walk on all ``M`` copies with ``grad_{y_m} log p = (E[X | ybar] - y_m) / sigma^2``
  and jump to ``E[X | ybar]`` at noise ``sigma / sqrt(M)`` (``joint_score``);
* ``sequential``: walk ``y_1`` at ``sigma`` (this is what mixes), and at each jump draw
  ``y_2 .. y_M`` from ``p(y_m | y_1..y_{m-1})``, whose score is
  ``(E[X | y_1..y_m] - y_m) / sigma^2``, by short Langevin runs; jump to
  ``E[X | y_1..y_M]`` (``sequential_jump``; Saremi, Park & Bach 2024).

``walk_jump_step`` is one draw: ``num_steps`` walk steps, then the jump. Everything
here runs inside ``jax.lax.scan``, ``vmap`` and ``jit``; ``numpyro_wjs.infer.walkjump``
wraps it as a NumPyro kernel.

Example
-------
>>> import jax, jax.numpy as jnp
>>> from numpyro_wjs.core import walkjump
>>> from numpyro_wjs.targets import GaussianMixture
>>> gm = GaussianMixture([0.5, 0.5], [[-2.0], [2.0]], [0.5, 0.5])
>>> score = walkjump.smoothed_score(gm.denoiser(1.0), 1.0)
>>> jump = lambda key, y, score: y + 1.0**2 * score   # Tweedie: E[X | y] at sigma = 1
>>> state = walkjump.walk_init(jnp.zeros(1), score, jax.random.key(0))
>>> def body(state, key):
...     state, info = walkjump.walk_jump_step(key, state, score, jump, 1.0, 0.5, num_steps=1)
...     return state, state.x
>>> _, xs = jax.lax.scan(body, state, jax.random.split(jax.random.key(1), 500))
>>> xs.shape
(500, 1)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import random

from numpyro_wjs.core import langevin as core
from numpyro_wjs.core import metropolis

Array = jax.Array
ScoreFn = Callable[[Array], Array]
JumpFn = Callable[[Array, Array, Array], Array]

__all__ = [
    "WalkJumpState",
    "WalkInfo",
    "smoothed_score",
    "joint_score",
    "walk_init",
    "walk_step",
    "sequential_jump",
    "walk_jump_step",
]


def smoothed_score(denoiser: Callable[[Array], Array], sigma: float) -> Callable[[Array], Array]:
    """Tweedie-Miyasawa: ``grad log p_Y(y) = (denoiser(y) - y) / sigma^2``."""
    return lambda y: (denoiser(y) - y) / sigma**2


def joint_score(denoiser: Callable[[Array, float], Array], sigma: float, num_measurements: int):
    """Score of ``p(y_1..y_M)`` on ``y`` of shape ``(M, *event)``.

    ``grad_{y_m} log p = (E[X | ybar] - y_m) / sigma^2`` with ``E[X | ybar]`` at noise
    ``sigma / sqrt(M)``; ``denoiser(y, s)`` is noise-conditional.
    """
    s = sigma / math.sqrt(num_measurements)
    return lambda y: (denoiser(jnp.mean(y, axis=0), s)[None] - y) / sigma**2


class WalkInfo(NamedTuple):
    """What happened during the walk of one draw."""

    acceptance_rate: Array = 0.0
    """Mean estimated Metropolis acceptance of the walk steps (0 for a discarded step)."""
    diverging: Array = False
    """A walk step was non-finite or its estimated energy error exceeded
    ``MAX_LOG_ACCEPT_DROP`` (it was discarded), or the jump was non-finite (the last
    jump was kept)."""
    energy_error: Array = 0.0
    """Mean estimated energy error of the walk steps."""


class WalkJumpState(NamedTuple):
    """State of walk-jump sampling, as the NumPyro kernel carries it."""

    x: Array
    """The last jump ``E[X | y]`` (the draw)."""
    y: Array
    """Noisy position of the walk (one measurement ``(*event)``, or ``(M, *event)``)."""
    velocity: Array
    """Momentum of the underdamped walk (zeros and unused for the overdamped one)."""
    score: Array
    """``grad log p_Y(y)``; the jump ``E[X|y]`` is ``y + sigma^2 score``, free of charge."""


def walk_init(y: Array, score_fn: ScoreFn, rng_key: Array | None = None, x: Array | None = None) -> WalkJumpState:
    """State at ``y``; velocity ``v ~ N(0, I)`` when ``rng_key`` is given (underdamped), else 0;
    the jump ``x`` (default ``y``) until the first draw."""
    v = jnp.zeros_like(y) if rng_key is None else core.draw_velocity(rng_key, y)
    return WalkJumpState(y if x is None else x, y, v, score_fn(y))


def walk_step(
    rng_key: Array,
    state: WalkJumpState,
    score_fn: Callable[[Array], Array],
    step_size,
    friction,
    underdamped: bool = True,
) -> tuple[WalkJumpState, Array]:
    """One walk step: BAOAB (underdamped) or ULA (overdamped) on ``p_Y``.

    Returns the new state and the *estimated* log Metropolis-Hastings ratio of the
    step (``langevin.baoab_log_ratio`` / ``langevin.langevin_log_ratio``), with
    ``log p_Y`` differences from the trapezoid rule on the score: exact when ``p_Y``
    is locally Gaussian. Minus it is the step's energy error, which flags divergence
    and (optionally) tunes the step; the walk itself is never rejected.
    """
    old = (state.y, state.velocity, state.score)
    if underdamped:
        new = core.baoab(rng_key, *old, score_fn, step_size, friction)
        log_ratio = core.baoab_log_ratio(old, new, step_size)
    else:
        y0, v0, g0 = old
        y1 = core.langevin_proposal(rng_key, y0, g0, step_size)
        g1 = score_fn(y1)
        new = (y1, v0, g1)
        log_ratio = core.langevin_log_ratio(y0, g0, y1, g1, core.trapezoid_dlogp(y0, g0, y1, g1), step_size)
    return state._replace(y=new[0], velocity=new[1], score=new[2]), log_ratio


def sequential_jump(
    rng_key: Array,
    y1: Array,
    xhat1: Array,
    denoiser: Callable[[Array, float], Array],
    sigma: float,
    num_measurements: int,
    num_inner_steps: int,
    step_size,
    friction,
) -> Array:
    """``E[X | y_1..y_M]`` with ``y_2..y_M`` drawn one after another from their conditionals.

    ``y_m | y_1..y_{m-1}`` has score ``(E[X | ybar_m] - y_m) / sigma^2`` where
    ``ybar_m`` is the mean of ``y_1..y_m`` and ``E[X | ybar_m]`` is at noise
    ``sigma / sqrt(m)``. Each ``y_m`` starts at ``E[X | y_1..y_{m-1}] + sigma eps``
    and takes ``num_inner_steps`` BAOAB steps. ``xhat1 = E[X | y_1]`` is known from
    the walk's score, so the jump costs ``(M - 1) (num_inner_steps + 1)`` denoiser calls.
    """
    xhat = xhat1
    total = y1
    for m in range(2, num_measurements + 1):
        s_m = sigma / math.sqrt(m)
        rng_key, key_init, key_v, key_walk = random.split(rng_key, 4)
        prev_total = total

        def score(y, prev_total=prev_total, m=m, s_m=s_m):
            return (denoiser((prev_total + y) / m, s_m) - y) / sigma**2

        y = xhat + sigma * core.normal_like(key_init, y1)
        walk = (y, core.draw_velocity(key_v, y), score(y))

        def body(walk, key, score=score):
            return core.baoab(key, *walk, score, step_size, friction), None

        (y, _, g), _ = jax.lax.scan(body, walk, random.split(key_walk, num_inner_steps))
        total = prev_total + y
        xhat = y + sigma**2 * g  # = E[X | ybar_m] at the final y_m
    return xhat




def walk_jump_step(
    rng_key: Array,
    state: WalkJumpState,
    score_fn: ScoreFn,
    jump_fn: JumpFn,
    step_size,
    friction,
    num_steps: int = 1,
    underdamped: bool = True,
) -> tuple[WalkJumpState, WalkInfo]:
    """One walk-jump draw: ``num_steps`` walk steps on ``p_Y``, then the jump.

    Each walk step is ``walk_step``; a divergent one is discarded (the walk stays
    where it was). The jump is ``jump_fn(rng_key, y, score)``: Tweedie's
    ``y + sigma^2 score``, or a ``sequential_jump`` over ``M`` measurements; a non-finite
    jump keeps the last one and flags ``diverging``. ``rng_key`` is split in three: the
    walk, the jump, and a first part left to the caller (a kernel's next key).
    """
    _, key_walk, key_jump = random.split(rng_key, 3)

    def body(carry, key):
        st, diverging = carry
        new, log_ratio = walk_step(key, st, score_fn, step_size, friction, underdamped)
        bad = metropolis.diverged(log_ratio, new.y, new.velocity, new.score)
        new = metropolis.select(bad, st, new)
        return (new, diverging | bad), (jnp.where(bad, 0.0, metropolis.accept_prob(log_ratio)), -log_ratio)

    (state, diverging), (accepts, errors) = jax.lax.scan(
        body, (state, jnp.array(False)), random.split(key_walk, num_steps)
    )
    x = jump_fn(key_jump, state.y, state.score)
    ok = metropolis.all_finite(x)
    state = state._replace(x=jnp.where(ok, x, state.x))
    return state, WalkInfo(jnp.mean(accepts), diverging | ~ok, jnp.mean(errors))
