"""Warmup adaptation as components: ``init`` / ``update`` / ``metric`` over named parameters.

Every kernel of the package adapts through these two objects, built once in its
``init`` from the number of warmup steps and one chain's position:

* ``StepAdaptation``: the step size by dual averaging (Nesterov 2009, Hoffman & Gelman
  2014) and the mass matrix by windowed Welford estimates, both NumPyro's
  ``numpyro.infer.hmc_util.warmup_adapter`` (as NUTS), on the position; a dense,
  diagonal or structured (``dense_mass=[("a", "b")]``) mass matrix; an upper bound on
  the step size (the walk of ``WalkJump``). Built without an example position
  (``example=None``) it tunes the step size alone.
* ``ScalarAdaptation``: one positive parameter (``GibbsWalkJump``'s sigma) by the same
  dual averaging on its logarithm, towards a target statistic.

Both update only while ``warmup`` is true and, like ``warmup_adapter``, end warmup at
the averaged iterate of the dual averaging.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro.infer.hmc_util import HMCAdaptState, dual_averaging, warmup_adapter

from numpyro_wjs.core import langevin as core
from numpyro_wjs.core import metropolis

__all__ = ["StepAdaptation", "ScalarAdaptation", "site_index", "metric_of"]


def site_index(example, blocks) -> dict[str, np.ndarray]:
    """Flat position (``ravel_pytree`` order) of every entry of each site of ``example``."""
    if not isinstance(example, dict):
        raise ValueError("a structured `dense_mass` names sites: it needs a `model` (or dict-valued positions).")
    missing = sorted({s for b in blocks for s in b} - set(example))
    if missing:
        raise ValueError(f"`dense_mass` names sites {missing} that the model does not have; it has {sorted(example)}.")
    index, start = {}, 0
    for name in sorted(example):  # the order of ravel_pytree on a dict
        size = int(np.size(example[name]))
        index[name] = np.arange(start, start + size)
        start += size
    return index


def metric_of(adapt_state, index: dict[str, np.ndarray] | None = None) -> core.Metric:
    """The ``core.Metric`` of a ``numpyro.infer.hmc_util.HMCAdaptState``.

    A structured mass matrix (dicts of blocks keyed by site names) becomes the dense
    block-diagonal matrices on the flat position, with the sites' positions ``index``.
    """
    parts = (adapt_state.inverse_mass_matrix, adapt_state.mass_matrix_sqrt, adapt_state.mass_matrix_sqrt_inv)
    if not isinstance(parts[0], dict):
        return core.Metric(*parts)
    d = sum(i.size for i in index.values())

    def assemble(blocks):
        out = jnp.zeros((d, d), next(iter(blocks.values())).dtype)
        for sites, block in blocks.items():
            idx = np.concatenate([index[s] for s in sites])
            out = out.at[np.ix_(idx, idx)].set(block) if block.ndim == 2 else out.at[idx, idx].set(block)
        return out

    return core.Metric(*map(assemble, parts))


@dataclass(frozen=True)
class StepAdaptation:
    """Step size ``h`` (dual averaging to ``target_accept_prob``) and mass matrix during warmup.

    ``example`` is one chain's position (a pytree), or ``None`` to tune the step size
    alone (no mass matrix; positions are then ignored). ``dense_mass`` is a bool or a list of tuples of site names (dense blocks,
    the rest diagonal), as NUTS takes it. ``h`` never exceeds ``max_step_size``.
    """

    num_warmup: int
    example: object
    adapt_step_size: bool = True
    adapt_mass_matrix: bool = False
    dense_mass: bool | list = False
    target_accept_prob: float = 0.8
    max_step_size: float = math.inf

    @cached_property
    def _adapter(self):
        return warmup_adapter(
            self.num_warmup,
            adapt_step_size=self.adapt_step_size,
            adapt_mass_matrix=self.adapt_mass_matrix,
            dense_mass=self.dense_mass,
            target_accept_prob=self.target_accept_prob,
        )

    @cached_property
    def _site_index(self):
        return None if isinstance(self.dense_mass, bool) else site_index(self.example, self.dense_mass)

    def _sites(self, z):
        """The position as the adapter sees it: flat, or by site for a structured mass matrix,
        or empty without a mass matrix."""
        if self.example is None:
            return jnp.zeros(0, jnp.result_type(float))
        return ravel_pytree(z)[0] if self._site_index is None else z

    def _bound(self, state: HMCAdaptState) -> HMCAdaptState:
        if math.isinf(self.max_step_size):
            return state
        return state._replace(step_size=jnp.minimum(state.step_size, self.max_step_size))

    def init(self, z, rng_key, step_size, inverse_mass_matrix=None) -> HMCAdaptState:
        """The adaptation state at the position ``z``, starting from ``step_size``."""
        size = 0 if self.example is None else ravel_pytree(z)[0].shape[0]
        state = self._adapter[0](
            (self._sites(z),), rng_key, step_size, inverse_mass_matrix=inverse_mass_matrix,
            mass_matrix_size=size,
        )
        return self._bound(state._replace(rng_key=None))

    def update(self, i, accept_prob, z, state: HMCAdaptState, warmup) -> HMCAdaptState:
        """Step ``i``'s update from its acceptance and the new position ``z``; a no-op after warmup."""
        def update(s):
            return self._bound(self._adapter[1](i, accept_prob, (self._sites(z),), s))

        return jax.lax.cond(warmup, update, lambda s: s, state)

    def metric(self, state: HMCAdaptState) -> core.Metric:
        """The preconditioner ``C = M^{-1}`` of ``state`` on the flat position."""
        return metric_of(state, self._site_index)


@dataclass(frozen=True)
class ScalarAdaptation:
    """A positive parameter ``theta`` tuned during warmup by dual averaging on ``log theta``.

    Each warmup step moves ``log theta`` against ``target - statistic`` (so a statistic
    that falls as ``theta`` grows, e.g. an acceptance rate, is driven to ``target``); the
    last warmup step sets ``theta`` to the averaged iterate.
    """

    num_warmup: int
    target: float

    @cached_property
    def _dual_averaging(self):
        return dual_averaging()

    def init(self, theta):
        """The dual-averaging state started at ``theta``."""
        return self._dual_averaging[0](jnp.log(theta))

    def update(self, i, statistic, theta, state, warmup):
        """``(theta, state)`` after warmup step ``i``; unchanged after warmup."""
        new_state = self._dual_averaging[1](self.target - statistic, state)
        last = i == self.num_warmup - 1
        new_theta = jnp.exp(jnp.where(last, new_state[1], new_state[0]))
        theta = jnp.where(warmup, new_theta, theta).astype(theta.dtype)
        return theta, metropolis.select(warmup, new_state, state)
