"""Gibbs walk-jump as pure JAX functions: walk-jump for a density with no trained denoiser.

For an unnormalised density ``p(z)`` and noise ``sigma``, the joint
``p(z, y) = p(z) N(y; z, sigma^2 I)`` has ``z``-marginal ``p`` exactly. Alternating

* NOISE (the walk): ``y ~ N(z, sigma^2 I)``;
* DENOISE (the jump): ``z ~ p(z | y) ∝ p(z) N(y; z, sigma^2 I)``

is a Gibbs sampler, so its ``z`` draws target ``p`` (Diffusive Gibbs sampling,
Chen et al. 2024). ``p(z | y)`` keeps the model's barriers, so the denoise move
starts from the noisy point: a proposal ``z' ~ N(y, sigma^2 I)`` accepted with
probability ``min(1, p(z') / p(z))`` (the Metropolis-Hastings ratio on ``p(z | y)``
for that proposal), followed by MALA steps on ``p(z | y)``. Both moves leave
``p(z | y)`` invariant, so the whole sampler is exact for every ``sigma``; ``sigma``
only sets how far a hop can go (``z' - z ~ N(0, 2 sigma^2 I)`` given ``z``).

``numpyro_wjs.infer.gibbs.GibbsWalkJump`` wraps these moves as a NumPyro kernel.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import random
from jax.flatten_util import ravel_pytree

from numpyro_wjs.core import langevin as core
from numpyro_wjs.core import metropolis

__all__ = ["GibbsWalkJumpState", "GibbsInfo", "noise_step", "denoise_step", "gibbs_walk_jump_step"]


class GibbsWalkJumpState(NamedTuple):
    """State of Gibbs walk-jump, as the NumPyro kernel carries it."""

    z: object
    """Clean point (an array or pytree; a model's unconstrained sites)."""
    y: jax.Array
    """The last noisy point (flat)."""
    potential_energy: jax.Array
    """``-log p(z)`` up to a constant."""
    score: jax.Array
    """``grad log p(z)`` (flat)."""
    sigma: jax.Array
    """Noise level of the last iteration."""
    sigma_base: jax.Array
    """Lower end of the noise range ``(sigma_base, ratio * sigma_base)``."""
    sigma_state: tuple
    """Dual-averaging state of ``log sigma_base`` (``numpyro.infer.hmc_util.dual_averaging``)."""


class GibbsInfo(NamedTuple):
    """What happened during one iteration."""

    acceptance_rate: jax.Array = 0.0
    """Mean acceptance probability of the MALA refinement steps."""
    hop_accept_prob: jax.Array = 0.0
    """Acceptance probability of the hop ``z' ~ N(y, sigma^2 I)``."""
    diverging: jax.Array = False
    """A MALA step was non-finite or far too unlikely."""


def noise_step(rng_key, z, sigma):
    """The walk: ``y ~ N(z, sigma^2 I)``."""
    return z + sigma * core.normal_like(rng_key, z)


def denoise_step(rng_key, point: core.LangevinState, y, logdensity_fn, sigma, step_size, num_mala_steps, metric=None):
    """The jump: a move that leaves ``p(z | y) ∝ p(z) N(y; z, sigma^2 I)`` invariant.

    ``point`` is a flat ``LangevinState`` (``z``, ``-log p``, score). Hop:
    ``z' ~ N(y, sigma^2 I)``, accepted with ``min(1, p(z') / p(z))``; then
    ``num_mala_steps`` MALA steps on ``log p(z) - |y - z|^2 / (2 sigma^2)``.
    """
    key_prop, key_acc, key_mala = random.split(rng_key, 3)
    z_prop = noise_step(key_prop, y, sigma)
    logp_prop, score_prop = jax.value_and_grad(logdensity_fn)(z_prop)
    proposal = core.LangevinState(z_prop, -logp_prop, score_prop)
    point, hop = metropolis.metropolis_hastings(
        key_acc, logp_prop + point.potential_energy, proposal, point, logp_prop, score_prop
    )
    inv2s2 = 0.5 / sigma**2

    def cond_logdensity(z):
        return logdensity_fn(z) - inv2s2 * jnp.sum((y - z) ** 2)

    def body(state, key):
        state, info = core.mala_step(key, state, cond_logdensity, step_size, metric)
        return state, (info.acceptance_rate, info.diverging)

    c = core.LangevinState(
        point.z,
        point.potential_energy + inv2s2 * jnp.sum((y - point.z) ** 2),
        point.score + (y - point.z) / sigma**2,
    )
    c, (accepts, divs) = jax.lax.scan(body, c, random.split(key_mala, num_mala_steps))
    point = core.LangevinState(
        c.z,
        c.potential_energy - inv2s2 * jnp.sum((y - c.z) ** 2),
        c.score - (y - c.z) / sigma**2,
    )
    return point, GibbsInfo(jnp.mean(accepts), hop.acceptance_rate, jnp.any(divs))


def gibbs_walk_jump_step(
    rng_key, state: GibbsWalkJumpState, logdensity_fn, step_size, num_mala_steps, metric=None, *,
    sigma_ratio=1.0, fix_sigma=False,
) -> tuple[GibbsWalkJumpState, GibbsInfo]:
    """One iteration: ``sigma ~ LogUniform(sigma_base, sigma_ratio * sigma_base)`` (``sigma_base``
    where ``fix_sigma``), the walk ``y ~ N(z, sigma^2 I)``, then ``denoise_step``.

    ``sigma`` is drawn independently of the state, so the mixture of exact Gibbs kernels is
    exact. ``logdensity_fn`` takes the flat position. ``rng_key`` is split in four; part 0 is
    left to the caller. Cost: ``1 + num_mala_steps`` gradient evaluations.
    """
    _, key_sigma, key_noise, key_denoise = random.split(rng_key, 4)
    x, unravel = ravel_pytree(state.z)
    u = jnp.where(fix_sigma, 0.0, random.uniform(key_sigma, dtype=x.dtype))
    sigma = state.sigma_base * sigma_ratio**u
    y = noise_step(key_noise, x, sigma)
    point = core.LangevinState(x, state.potential_energy, state.score)
    point, info = denoise_step(key_denoise, point, y, logdensity_fn, sigma, step_size, num_mala_steps, metric)
    return state._replace(z=unravel(point.z), y=y, potential_energy=point.potential_energy, score=point.score,
                          sigma=sigma), info
