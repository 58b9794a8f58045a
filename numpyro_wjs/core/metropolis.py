"""Metropolis-Hastings acceptance and divergence, shared by every step of the package.

A proposal with log ratio ``r = log [p(x') q(x | x') / (p(x) q(x' | x))]`` is accepted
with probability ``min(1, exp(r))``. A proposal is *divergent* when its values or
``r`` are non-finite, or its energy error ``-r`` exceeds ``MAX_LOG_ACCEPT_DROP`` (as
NumPyro's HMC ``max_delta_energy`` and Stan): it is never accepted.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import random

Array = jax.Array

__all__ = [
    "MAX_LOG_ACCEPT_DROP",
    "MetropolisInfo",
    "accept_prob",
    "all_finite",
    "diverged",
    "metropolis_hastings",
    "select",
    "trapezoid_dlogp",
]

#: A step whose energy error (minus its log Metropolis-Hastings ratio, exact or
#: estimated) exceeds ``MAX_LOG_ACCEPT_DROP``, or is non-finite, is divergent.
MAX_LOG_ACCEPT_DROP = 1000.0


class MetropolisInfo(NamedTuple):
    """What happened to one proposal."""

    acceptance_rate: Array = 0.0
    """``min(1, exp(log_ratio))``, 0 for a divergent proposal: drives step-size adaptation."""
    is_accepted: Array = False
    """Whether the proposal was accepted."""
    diverging: Array = False
    """The proposal was non-finite or its log ratio below ``-MAX_LOG_ACCEPT_DROP``."""
    energy_error: Array = 0.0
    """Minus the log ratio (the energy error of a Hamiltonian or Langevin move)."""


def all_finite(*xs: Array) -> Array:
    """True when every entry of every array is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs]))


def trapezoid_dlogp(x0: Array, g0: Array, x1: Array, g1: Array) -> Array:
    """``log p(x1) - log p(x0)`` by the trapezoid rule on the score (exact for Gaussians)."""
    return 0.5 * jnp.sum((g0 + g1) * (x1 - x0))


def diverged(log_ratio: Array, *xs: Array) -> Array:
    """A step is divergent when its values ``xs`` or its log ratio are non-finite, or its
    energy error ``-log_ratio`` exceeds ``MAX_LOG_ACCEPT_DROP``."""
    return ~(all_finite(log_ratio, *xs) & (log_ratio >= -MAX_LOG_ACCEPT_DROP))


def accept_prob(log_ratio: Array) -> Array:
    """``min(1, exp(log_ratio))``, 0 for a non-finite ratio."""
    return jnp.minimum(1.0, jnp.exp(jnp.where(jnp.isfinite(log_ratio), log_ratio, -jnp.inf)))


def select(pred: Array, on_true: Any, on_false: Any) -> Any:
    """Leafwise ``where(pred, on_true, on_false)`` over two pytrees of the same structure."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def metropolis_hastings(
    rng_key: Array, log_ratio: Array, proposal: Any, current: Any, *values: Array
) -> tuple[Any, MetropolisInfo]:
    """Accept ``proposal`` over ``current`` with probability ``min(1, exp(log_ratio))``.

    ``values`` (arrays computed at the proposal, e.g. its ``log p`` and score) make the
    proposal divergent, hence rejected, when non-finite. Returns the kept state and
    ``MetropolisInfo``.
    """
    diverging = diverged(log_ratio, *values)
    prob = jnp.where(diverging, 0.0, accept_prob(log_ratio))
    accepted = random.uniform(rng_key, dtype=jnp.result_type(prob)) < prob
    return select(accepted, proposal, current), MetropolisInfo(prob, accepted, diverging, -log_ratio)
