"""``GibbsWalkJump``: walk-jump for NumPyro models and potentials, with no trained denoiser.

The kernel shell around the Gibbs moves of ``numpyro_wjs.core.gibbs`` (walk
``y ~ N(z, sigma^2 I)``, jump by a move that leaves ``p(z | y)`` invariant).
"""

from __future__ import annotations

from collections import namedtuple

import jax
import jax.numpy as jnp
from jax import random
from jax.flatten_util import ravel_pytree
from numpyro.infer.initialization import init_to_uniform

from numpyro_wjs import validation
from numpyro_wjs.core import gibbs
from numpyro_wjs.infer.adaptation import ScalarAdaptation
from numpyro_wjs.infer.base import Kernel, check_mass
from numpyro_wjs.infer.sources import check_finite_start

__all__ = ["GibbsWalkJump", "GibbsWalkJumpState"]

GibbsWalkJumpState = namedtuple(
    "GibbsWalkJumpState",
    [
        "i", "z", "y", "potential_energy", "score", "accept_prob", "hop_accept_prob", "mean_accept_prob",
        "mean_hop_accept_prob", "diverging", "sigma", "sigma_base", "sigma_state", "adapt_state", "rng_key",
    ],
)
"""State of ``GibbsWalkJump``.

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

#: With ``sigma=None`` the lower end of the noise range is adapted and ``sigma`` is drawn
#: log-uniformly up to this many times it.
DEFAULT_SIGMA_RATIO = 30.0


class GibbsWalkJump(Kernel):
    r"""Walk-jump on a NumPyro model or potential, without training: Gibbs sampling on ``(z, y)``.

    The walk ``y ~ N(z, sigma^2 I)``; the jump a move that leaves
    ``p(z | y) ∝ p(z) N(y; z, sigma^2 I)`` invariant: a hop ``z' ~ N(y, sigma^2 I)``
    accepted with ``min(1, p(z')/p(z))``, then ``num_mala_steps`` MALA steps
    (``numpyro_wjs.core.gibbs``). Its ``z`` draws target the exact posterior for
    every ``sigma`` (in unconstrained space; constrained and deterministic sites come
    back through ``postprocess_fn`` as with NUTS). ``sigma`` sets how far a hop can
    reach: about half the distance between the modes (in unconstrained space) lets
    the chain hop, while the hop acceptance falls like ``(mode width / sigma)^d``.
    ``sigma`` may be a float, a range ``(lo, hi)`` (drawn log-uniformly at every
    iteration, independently of the state, so still exact), or ``None``: warmup then
    tunes ``lo`` by dual averaging so that hops at ``lo`` are accepted with
    probability ``target_hop_accept_prob`` (the local scale of the posterior), and
    sampling draws ``sigma`` in ``(lo, 30 lo)``. The MALA step size and mass matrix
    are adapted with ``hmc_util`` as in ``MALA``. Watch ``hop_accept_prob`` (extra
    field): near zero means ``sigma`` is too large for the model's dimension.

    Parameters
    ----------
    model, potential_fn
        Exactly one target (``potential_fn`` needs ``init_params``).
    sigma : float, (float, float) or None
        Noise level, a range drawn log-uniformly, or None (adapted range).
    num_mala_steps : int
        MALA refinement steps per jump (default 5).
    step_size : float, optional
        Initial MALA step size; default ``0.25 * sigma**2`` (lower end of the range).
    adapt_step_size, adapt_mass_matrix : bool
        Warmup adaptation of the MALA step (default True for both).
    dense_mass : bool or list of tuples
        Dense rather than diagonal MALA mass matrix, or dense blocks of sites as in
        NUTS (``[("a", "b")]``). Default False.
    adapt_sigma : bool, optional
        Adapt the lower end of the noise range (default: when ``sigma`` is None).
    target_hop_accept_prob : float
        Hop acceptance that sigma adaptation aims at (default 0.3).
    init_strategy : callable
        NumPyro init strategy for ``model``.

    Example
    -------
    On a NumPyro model whose posterior has two modes:

    >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist
    >>> from numpyro.infer import MCMC
    >>> from numpyro_wjs import GibbsWalkJump
    >>> def model():
    ...     theta = numpyro.sample("theta", dist.Normal(0.5, 2.0))
    ...     numpyro.sample("obs", dist.Normal(theta**2, 1.0), obs=jnp.array([2.9, 2.1]))
    >>> mcmc = MCMC(GibbsWalkJump(model), num_warmup=500, num_samples=2000, progress_bar=False)
    >>> mcmc.run(jax.random.key(0), extra_fields=("hop_accept_prob",))
    >>> theta = mcmc.get_samples()["theta"]
    >>> bool((theta > 0).any() and (theta < 0).any())  # the chain visits both modes
    True

    Built on a model, it is also a block of NumPyro's ``numpyro.infer.Gibbs`` (see
    ``Kernel``): ``refresh`` recomputes ``potential_energy`` and ``score`` for the new
    conditioning; the walk ``y`` needs nothing, as every step draws it afresh from ``z``,
    and the noise level and step size keep adapting on the block's conditional during
    warmup.
    """

    #: the sigma adaptation is built by ``init`` too
    _built_by_init = Kernel._built_by_init + ("_sigma_adaptation",)

    def __init__(
        self,
        model=None,
        potential_fn=None,
        *,
        sigma: float | tuple[float, float] | None = None,
        num_mala_steps: int = 5,
        step_size: float | None = None,
        adapt_step_size: bool = True,
        adapt_mass_matrix: bool = True,
        dense_mass: bool | list[tuple[str, ...]] = False,
        adapt_sigma: bool | None = None,
        target_hop_accept_prob: float = 0.3,
        init_strategy=init_to_uniform,
    ):
        self._set_source(model, potential_fn, None, init_strategy, needs_potential=True)
        if sigma is None:
            lo, hi = 1.0, DEFAULT_SIGMA_RATIO
        elif isinstance(sigma, tuple | list):
            lo, hi = validation.positive_range("sigma", sigma)
        else:
            lo = hi = validation.positive("sigma", sigma)
        self._sigma0 = lo
        self._sigma_ratio = hi / lo
        self._num_mala_steps = validation.positive_int("num_mala_steps", num_mala_steps)
        self._inner_step_size = None if step_size is None else validation.positive("step_size", step_size)
        self._adapt_sigma = sigma is None if adapt_sigma is None else adapt_sigma
        self._target_hop = validation.probability("target_hop_accept_prob", target_hop_accept_prob)
        self._adapt_step_size = adapt_step_size
        self._adapt_mass_matrix = adapt_mass_matrix
        self._dense_mass, _ = check_mass(dense_mass, None)

    sample_stats = ("diverging", "accept_prob", "hop_accept_prob")

    # -- MCMCKernel interface ---------------------------------------------------------
    @property
    def sample_field(self):
        return "z"

    @property
    def evaluations_per_draw(self) -> int:
        """Gradient evaluations per draw: the hop and the MALA refinement steps."""
        return 1 + self._num_mala_steps

    def get_diagnostics_str(self, state):
        return (
            f"sigma {float(state.sigma):.2e}. hop acc. prob={float(state.mean_hop_accept_prob):.2f}. "
            f"mala acc. prob={float(state.mean_accept_prob):.2f}"
        )

    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs={}):
        rng_key, init_params, example = self._initial_params(
            rng_key, num_warmup, init_params, model_args, model_kwargs
        )
        adaptation = self._adapter(
            num_warmup,
            example,
            adapt_step_size=self._adapt_step_size,
            adapt_mass_matrix=self._adapt_mass_matrix,
            target_accept_prob=0.574,
        )
        self._sigma_adaptation = ScalarAdaptation(num_warmup, self._target_hop)
        step0 = self._inner_step_size if self._inner_step_size is not None else 0.25 * self._sigma0**2

        def init_one(z, key):
            key, key_wa, key_y = random.split(key, 3)
            source = self._source(z, model_args, model_kwargs)
            x = ravel_pytree(z)[0]
            logp, g = jax.value_and_grad(source.logdensity)(x)
            wa = adaptation.init(x, key_wa, step0)
            sigma = jnp.asarray(self._sigma0, x.dtype)
            zero = jnp.zeros((), x.dtype)
            return GibbsWalkJumpState(
                jnp.array(0), z, gibbs.noise_step(key_y, x, sigma), -logp, g, zero, zero, zero, zero,
                jnp.array(False), sigma, sigma, self._sigma_adaptation.init(sigma), wa, key,
            )

        state = self._start(init_one, init_params, rng_key)
        check_finite_start(type(self).__name__, state.score, state.potential_energy)
        return state

    def _step(self, state, model_args, model_kwargs, warmup):
        source = self._source(state.z, model_args, model_kwargs)
        rng_key, key_sigma, key_noise, key_denoise = random.split(state.rng_key, 4)
        x = ravel_pytree(state.z)[0]
        i = state.i
        # sigma ~ LogUniform(base, ratio * base), drawn independently of the state: a mixture
        # of exact Gibbs kernels is exact. While sigma is adapted (warmup) only the base is used.
        u = random.uniform(key_sigma, dtype=x.dtype)
        if self._adapt_sigma:
            u = jnp.where(warmup, 0.0, u)
        sigma = state.sigma_base * self._sigma_ratio**u
        y = gibbs.noise_step(key_noise, x, sigma)
        adapt = state.adapt_state
        point = gibbs.GibbsPoint(x, -state.potential_energy, state.score)
        point, info = gibbs.denoise_step(
            key_denoise, point, y, source.logdensity, sigma, adapt.step_size, self._num_mala_steps, self._metric(adapt)
        )
        adapt = self._adapt(i, info.mala_accept_prob, point.z, adapt, warmup)
        sigma_base, sigma_state = state.sigma_base, state.sigma_state
        if self._adapt_sigma:
            # a larger sigma proposes farther hops, which are accepted less often
            sigma_base, sigma_state = self._sigma_adaptation.update(
                i, info.hop_accept_prob, sigma_base, sigma_state, warmup
            )
        return GibbsWalkJumpState(
            i + 1,
            source.unravel(point.z),
            y,
            -point.logdensity,
            point.score,
            info.mala_accept_prob,
            info.hop_accept_prob,
            self._running_mean(state.mean_accept_prob, info.mala_accept_prob, i, warmup),
            self._running_mean(state.mean_hop_accept_prob, info.hop_accept_prob, i, warmup),
            info.diverging,
            sigma,
            sigma_base,
            sigma_state,
            adapt,
            rng_key,
        )
