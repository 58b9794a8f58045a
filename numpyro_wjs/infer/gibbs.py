"""Walk-jump for NumPyro models with no trained denoiser: Gibbs sampling on ``(z, y)``.

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
"""

from __future__ import annotations

from collections import namedtuple
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import random, vmap
from jax.flatten_util import ravel_pytree
from numpyro.infer.hmc_util import dual_averaging, warmup_adapter
from numpyro.util import is_prng_key

from numpyro_wjs.core import langevin as core
from numpyro_wjs.infer.langevin import as_float, split_keys
from numpyro_wjs.infer.sources import check_finite_start, init_model, make_source, postprocess

__all__ = ["GibbsPoint", "GibbsInfo", "noise_step", "denoise_step", "ModelWalkJumpState"]


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
    log_ratio = jnp.where(jnp.isfinite(logp_prop) & core.all_finite(score_prop), logp_prop - point.logdensity, -jnp.inf)
    hop_accept = jnp.minimum(1.0, jnp.exp(log_ratio))
    accepted = random.uniform(key_acc, dtype=jnp.result_type(hop_accept)) < hop_accept
    proposal = GibbsPoint(z_prop, logp_prop, score_prop)
    point = jax.tree.map(lambda a, b: jnp.where(accepted, a, b), proposal, point)

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
    return point, GibbsInfo(hop_accept, jnp.mean(accepts), jnp.any(divs))


ModelWalkJumpState = namedtuple(
    "ModelWalkJumpState",
    [
        "i", "z", "y", "potential_energy", "score", "accept_prob", "hop_accept_prob", "mean_accept_prob",
        "mean_hop_accept_prob", "diverging", "sigma", "sigma_base", "sigma_state", "adapt_state", "rng_key",
    ],
)
"""State of the model-based ``WalkJump``.

- **i**: iteration. **z**: the clean draw (pytree, unconstrained). **y**: the noisy walk (flat).
- **potential_energy**, **score**: ``-log p(z)`` and ``grad log p(z)`` (flat).
- **accept_prob**: mean MALA acceptance of the refinement; **hop_accept_prob**: acceptance
  of the hop from the noisy point; both with running means.
- **diverging**: a refinement step was non-finite.
- **sigma**: the noise level of the last iteration; **sigma_base**: the lower end of the
  noise range (adapted during warmup when requested); **sigma_state**: its
  dual-averaging state.
- **adapt_state**: ``HMCAdaptState`` of the MALA refinement (step size, mass matrix).
- **rng_key**: random key.
"""


class ModelWalkJumpMixin:
    """Model/potential walk-jump; mixed into ``WalkJump``."""

    def _setup_model(self, model, potential_fn, sigma, sigma_ratio, num_mala_steps, step_size, adapt_sigma,
                     target_hop_accept_prob, adapt_step_size, adapt_mass_matrix, init_strategy):
        self._model = model
        self._potential_fn = potential_fn
        self._sigma0 = sigma
        self._sigma_ratio = sigma_ratio
        self._num_mala_steps = num_mala_steps
        self._inner_step_size = step_size
        self._adapt_sigma = adapt_sigma
        self._target_hop = target_hop_accept_prob
        self._adapt_step_size = adapt_step_size
        self._adapt_mass_matrix = adapt_mass_matrix
        self._init_strategy = init_strategy
        self._potential_fn_gen = None
        self._postprocess_fn_gen = None
        self._sample_fn = None

    def _model_source(self, z, model_args, model_kwargs):
        if self._model is not None:
            return make_source(z, potential_fn=self._potential_fn_gen(*model_args, **(model_kwargs or {})))
        return make_source(z, potential_fn=self._potential_fn)

    def _init_model(self, rng_key, num_warmup, init_params, model_args, model_kwargs):
        model_kwargs = {} if model_kwargs is None else model_kwargs
        self._num_warmup = num_warmup
        batched = not is_prng_key(rng_key)
        rng_key, key_model = split_keys(rng_key, 2)
        if self._model is not None:
            init_params, self._potential_fn_gen, self._postprocess_fn_gen = init_model(
                key_model, self._model, self._init_strategy, model_args, model_kwargs, init_params
            )
        elif init_params is None:
            raise ValueError("WalkJump: `init_params` must be given with `potential_fn`.")
        init_params = as_float(init_params)
        example = jax.tree.map(lambda a: a[0], init_params) if batched else init_params
        dim = ravel_pytree(example)[0].shape[0]
        wa_init, self._wa_update = warmup_adapter(
            num_warmup,
            adapt_step_size=self._adapt_step_size,
            adapt_mass_matrix=self._adapt_mass_matrix,
            target_accept_prob=0.574,
        )
        self._sigma_init, self._sigma_update = dual_averaging()
        step0 = self._inner_step_size if self._inner_step_size is not None else 0.25 * self._sigma0**2

        def init_one(z, key):
            key, key_wa, key_y = random.split(key, 3)
            source = self._model_source(z, model_args, model_kwargs)
            x = ravel_pytree(z)[0]
            logp, g = jax.value_and_grad(source.logdensity)(x)
            wa = wa_init((x,), key_wa, step0, mass_matrix_size=dim)._replace(rng_key=None)
            sigma = jnp.asarray(self._sigma0, x.dtype)
            zero = jnp.zeros((), x.dtype)
            return ModelWalkJumpState(
                jnp.array(0), z, noise_step(key_y, x, sigma), -logp, g, zero, zero, zero, zero,
                jnp.array(False), sigma, sigma, self._sigma_init(jnp.log(sigma)), wa, key,
            )

        if batched:
            state = jax.jit(vmap(init_one))(init_params, rng_key)
            self._sample_fn = vmap(self._sample_model, in_axes=(0, None, None))
        else:
            state = jax.jit(init_one)(init_params, rng_key)
            self._sample_fn = self._sample_model
        check_finite_start("WalkJump", state.score, state.potential_energy)
        return state

    def _sample_model(self, state, model_args, model_kwargs):
        source = self._model_source(state.z, model_args, model_kwargs)
        rng_key, key_sigma, key_noise, key_denoise = random.split(state.rng_key, 4)
        x = ravel_pytree(state.z)[0]
        i = state.i
        warm = i < self._num_warmup
        # sigma ~ LogUniform(base, ratio * base), drawn independently of the state: a mixture
        # of exact Gibbs kernels is exact. While sigma is adapted (warmup) only the base is used.
        u = random.uniform(key_sigma, dtype=x.dtype)
        if self._adapt_sigma:
            u = jnp.where(warm, 0.0, u)
        sigma = state.sigma_base * self._sigma_ratio**u
        y = noise_step(key_noise, x, sigma)
        adapt = state.adapt_state
        metric = core.Metric(adapt.inverse_mass_matrix, adapt.mass_matrix_sqrt, adapt.mass_matrix_sqrt_inv)
        point = GibbsPoint(x, -state.potential_energy, state.score)
        point, info = denoise_step(
            key_denoise, point, y, source.logdensity, sigma, adapt.step_size, self._num_mala_steps, metric
        )
        adapt = jax.lax.cond(
            warm, lambda s: self._wa_update(i, info.mala_accept_prob, (point.z,), s), lambda s: s, adapt
        )
        sigma_base, sigma_state = self._adapt_noise(i, warm, info.hop_accept_prob, state.sigma_base, state.sigma_state)
        n = jnp.where(warm, i + 1, i + 1 - self._num_warmup)
        return ModelWalkJumpState(
            i + 1,
            source.unravel(point.z),
            y,
            -point.logdensity,
            point.score,
            info.mala_accept_prob,
            info.hop_accept_prob,
            state.mean_accept_prob + (info.mala_accept_prob - state.mean_accept_prob) / n,
            state.mean_hop_accept_prob + (info.hop_accept_prob - state.mean_hop_accept_prob) / n,
            info.diverging,
            sigma,
            sigma_base,
            sigma_state,
            adapt,
            rng_key,
        )

    def _adapt_noise(self, i, warm, hop_accept, sigma, sigma_state):
        """Dual averaging on ``log sigma`` towards ``target_hop_accept_prob`` during warmup."""
        if not self._adapt_sigma:
            return sigma, sigma_state
        # a larger sigma proposes farther hops, which are accepted less often
        new_state = self._sigma_update(self._target_hop - hop_accept, sigma_state)
        last = i == self._num_warmup - 1
        new_sigma = jnp.exp(jnp.where(last, new_state[1], new_state[0]))
        sigma = jnp.where(warm, new_sigma, sigma).astype(sigma.dtype)
        sigma_state = jax.tree.map(lambda a, b: jnp.where(warm, a, b), new_state, sigma_state)
        return sigma, sigma_state

    def _postprocess_model(self, args, kwargs):
        return postprocess(self._postprocess_fn_gen, args, kwargs)

