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

from numpyro_wjs.core import langevin as core
from numpyro_wjs.core import metropolis

__all__ = ["GibbsPoint", "GibbsInfo", "noise_step", "denoise_step"]


class GibbsPoint(NamedTuple):
    """Position of the Gibbs chain with the model's ``log p`` and score there."""

    z: jax.Array
    """Clean point (flat, unconstrained)."""
    logdensity: jax.Array
    """``log p(z)`` up to a constant."""
    score: jax.Array
    """``grad log p(z)``."""


class GibbsInfo(NamedTuple):
    """What happened during one denoise move."""

    hop_accept_prob: jax.Array
    """Acceptance probability of the hop ``z' ~ N(y, sigma^2 I)``."""
    mala_accept_prob: jax.Array
    """Mean acceptance probability of the MALA refinement steps."""
    diverging: jax.Array
    """A MALA step was non-finite or far too unlikely."""


def noise_step(rng_key, z, sigma):
    """The walk: ``y ~ N(z, sigma^2 I)``."""
    return z + sigma * core.normal_like(rng_key, z)


def denoise_step(rng_key, point: GibbsPoint, y, logdensity_fn, sigma, step_size, num_mala_steps, metric=None):
    """The jump: a move that leaves ``p(z | y) ∝ p(z) N(y; z, sigma^2 I)`` invariant.

    Hop: ``z' ~ N(y, sigma^2 I)``, accepted with ``min(1, p(z') / p(z))``; then
    ``num_mala_steps`` MALA steps on ``log p(z) - |y - z|^2 / (2 sigma^2)``.
    """
    key_prop, key_acc, key_mala = random.split(rng_key, 3)
    z_prop = noise_step(key_prop, y, sigma)
    logp_prop, score_prop = jax.value_and_grad(logdensity_fn)(z_prop)
    proposal = GibbsPoint(z_prop, logp_prop, score_prop)
    point, hop = metropolis.metropolis_hastings(key_acc, logp_prop - point.logdensity, proposal, point, logp_prop, score_prop)

    inv2s2 = 0.5 / sigma**2

    def cond_logdensity(z):
        return logdensity_fn(z) - inv2s2 * jnp.sum((y - z) ** 2)

    def body(state, key):
        state, info = core.mala_step(key, state, cond_logdensity, step_size, metric)
        return state, (info.acceptance_rate, info.diverging)

    c = core.AdjustedLangevinState(
        point.z,
        point.logdensity - inv2s2 * jnp.sum((y - point.z) ** 2),
        point.score + (y - point.z) / sigma**2,
    )
    c, (accepts, divs) = jax.lax.scan(body, c, random.split(key_mala, num_mala_steps))
    point = GibbsPoint(
        c.position,
        c.logdensity + inv2s2 * jnp.sum((y - c.position) ** 2),
        c.score - (y - c.position) / sigma**2,
    )
    return point, GibbsInfo(hop.acceptance_rate, jnp.mean(accepts), jnp.any(divs))
