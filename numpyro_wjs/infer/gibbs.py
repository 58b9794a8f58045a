"""``GibbsWalkJump``: walk-jump for NumPyro models and potentials, with no trained denoiser.

The kernel shell around the Gibbs moves of ``numpyro_wjs.core.gibbs`` (walk
``y ~ N(z, sigma^2 I)``, jump by a move that leaves ``p(z | y)`` invariant).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import random
from jax.flatten_util import ravel_pytree
from numpyro.infer.initialization import init_to_uniform

from numpyro_wjs import validation
from numpyro_wjs.core import gibbs, langevin
from numpyro_wjs.infer.adaptation import ScalarAdaptation
from numpyro_wjs.infer.base import Kernel, check_mass

__all__ = ["GibbsWalkJump"]

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
        self._step_size = 0.25 * lo**2 if step_size is None else validation.positive("step_size", step_size)
        self._adapt_sigma = sigma is None if adapt_sigma is None else adapt_sigma
        self._target_hop = validation.probability("target_hop_accept_prob", target_hop_accept_prob)
        self._adapt_step_size = adapt_step_size
        self._adapt_mass_matrix = adapt_mass_matrix
        self._dense_mass, _ = check_mass(dense_mass, None)

    sample_stats = ("diverging", "accept_prob", "hop_accept_prob")
    sample_field = "z"
    _key_parts = 4
    _info_type = gibbs.GibbsInfo

    @property
    def evaluations_per_draw(self) -> int:
        """Gradient evaluations per draw: the hop and the MALA refinement steps."""
        return 1 + self._num_mala_steps

    def get_diagnostics_str(self, state):
        return (
            f"sigma {float(state.sigma):.2e}. hop acc. prob={float(state.mean_info.hop_accept_prob):.2f}. "
            f"mala acc. prob={float(state.mean_accept_prob):.2f}"
        )

    def _adaptation(self, num_warmup, example):
        return self._step_adaptation(
            num_warmup, example, adapt_step_size=self._adapt_step_size,
            adapt_mass_matrix=self._adapt_mass_matrix, target_accept_prob=0.574,
        )

    def _init_state(self, z, rng_key, source, metric):
        rng_key, _, key_y = random.split(rng_key, 3)
        x = ravel_pytree(z)[0]
        point = langevin.mala_init(z, source.logdensity)
        sigma = jnp.asarray(self._sigma0, x.dtype)
        y = gibbs.noise_step(key_y, x, sigma)
        sigma_state = ScalarAdaptation(0, self._target_hop).init(sigma)
        return gibbs.GibbsWalkJumpState(z, y, point.potential_energy, point.score, sigma, sigma, sigma_state), rng_key

    def _step_state(self, s, source, warmup):
        # while sigma is adapted (warmup) only the lower end of its range is used
        return gibbs.gibbs_walk_jump_step(
            s.rng_key, s.state, source.logdensity, s.adapt_state.step_size, self._num_mala_steps,
            self._metric(s), sigma_ratio=self._sigma_ratio,
            fix_sigma=self._adapt_sigma & warmup,
        )

    def _adapt(self, s, new, info, warmup):
        new, adapt_state = super()._adapt(s, new, info, warmup)
        if self._adapt_sigma:
            # a larger sigma proposes farther hops, which are accepted less often
            base, sigma_state = ScalarAdaptation(self._setup.num_warmup, self._target_hop).update(
                s.i, info.hop_accept_prob, new.sigma_base, new.sigma_state, warmup
            )
            new = new._replace(sigma_base=base, sigma_state=sigma_state)
        return new, adapt_state
