"""``MALT``: Metropolis-adjusted Langevin trajectories as a ``numpyro.infer.MCMC`` kernel.

A thin shell around ``numpyro_wjs.core.malt``, built like ``MALA`` on the shared
Langevin shell (score sources, vectorized chains, dual averaging of the step size,
diagonal / dense / structured mass matrices, ``numpyro.infer.Gibbs`` blocks); it adds
the trajectory length ``T``, tuned during warmup by ChEES, and the friction ``1 / T``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from numpyro_wjs import validation
from numpyro_wjs.core import malt as core
from numpyro_wjs.core import metropolis
from numpyro_wjs.infer.langevin import _LangevinKernel

__all__ = ["DEFAULT_MAX_NUM_STEPS", "DEFAULT_TRAJECTORY_LENGTH", "MALT"]

#: Initial trajectory length ``T`` (in the units of the preconditioned target) before ChEES.
DEFAULT_TRAJECTORY_LENGTH = 1.0
#: Largest number of OBABO steps (gradients) in one draw, as NUTS's tree depth 10.
DEFAULT_MAX_NUM_STEPS = 1023

class MALT(_LangevinKernel):
    r"""Metropolis-adjusted Langevin trajectories (Riou-Durand & Vogrinc 2022).

    Each draw refreshes the velocity $v \sim N(0, M)$, runs $L$ OBABO steps of
    underdamped Langevin with friction $\gamma$ (partial refresh $e^{-\gamma h}$ per
    step) and accepts the end point with probability $\min(1, e^{-\Delta})$, $\Delta$ the
    summed energy error of the leapfrog ($BAB$) parts; a rejection keeps the start. Exact
    at any step, friction and length; $\gamma = 0$ is HMC. Needs ``log p`` (a ``model`` or
    ``potential_fn``). Costs $L$ gradients per draw (``num_steps`` in the state).

    **Defaults need no tuning.** During warmup the step size $h$ is tuned by dual
    averaging so that the trajectory acceptance averages ``target_accept_prob`` (0.8),
    the mass matrix by windowed Welford estimates (both ``numpyro.infer.hmc_util``, as
    NUTS), and the trajectory length $T$ by ChEES (Hoffman, Radul & Sountsov 2021) on
    each chain (``core.malt.chees_gradient``, ``core.malt.length_update``). Each draw
    takes $L = \lceil 2uT/h \rceil$ steps with $u$ the van der Corput sequence of the
    iteration (a jitter on $(0, 2T]$, the same for vectorized chains, which move in
    lockstep), at most ``max_num_steps``. The friction is $\gamma = 1 / T$
    (``core.malt.friction_from_length``).

    Parameters
    ----------
    model, potential_fn
        Exactly one target.
    trajectory_length : float, optional
        ``None`` (default): start at ``DEFAULT_TRAJECTORY_LENGTH`` and adapt ``T`` by
        ChEES during warmup; a number: ``T`` fixed (still jittered).
    num_steps : int, optional
        A fixed number of steps per draw (no jitter, no length adaptation).
    friction : float, optional
        ``gamma > 0``; ``None`` (default): ``1 / T``.
    max_num_steps : int
        Cap on the steps of one draw (default 1023).
    **kwargs
        ``step_size`` (initial ``h``, 0.1), ``adapt_step_size`` (True),
        ``target_accept_prob`` (0.8), ``inverse_mass_matrix``, ``adapt_mass_matrix``
        (True), ``dense_mass`` (False, True or blocks of sites) and ``init_strategy``,
        as ``MALA``.

    Example
    -------
    >>> import jax, numpyro, numpyro.distributions as dist
    >>> from numpyro.infer import MCMC
    >>> from numpyro_wjs.infer.malt import MALT
    >>> def model():
    ...     numpyro.sample("x", dist.Normal(0.0, 2.0).expand([3]))
    >>> mcmc = MCMC(MALT(model), num_warmup=300, num_samples=500, progress_bar=False)
    >>> mcmc.run(jax.random.key(0), extra_fields=("num_steps",))
    >>> mcmc.get_samples()["x"].shape
    (500, 3)
    """

    _needs_potential = True
    _default_target_accept_prob = 0.8
    _default_adapt_mass_matrix = True
    sample_stats = ("diverging", "accept_prob", "num_steps", "trajectory_length", "energy_error")
    _info_type = core.MALTStats

    def __init__(
        self,
        model=None,
        potential_fn=None,
        *,
        trajectory_length=None,
        num_steps=None,
        friction=None,
        max_num_steps=DEFAULT_MAX_NUM_STEPS,
        **kwargs,
    ):
        super().__init__(model, potential_fn, **kwargs)
        if trajectory_length is not None and num_steps is not None:
            raise ValueError("MALT: give `trajectory_length` or `num_steps`, not both.")
        self._trajectory_length = None if trajectory_length is None else validation.positive(
            "trajectory_length", trajectory_length)
        self._num_steps = None if num_steps is None else validation.positive_int("num_steps", num_steps)
        self._friction = None if friction is None else validation.positive("friction", friction)
        self._max_num_steps = validation.positive_int("max_num_steps", max_num_steps)

    @property
    def _adapt_length(self) -> bool:
        return self._trajectory_length is None and self._num_steps is None

    @property
    def evaluations_per_draw(self) -> int | None:
        """Gradient evaluations per draw: ``num_steps`` when fixed; otherwise ``None``: it
        varies from draw to draw (jitter) and is the state's ``num_steps``, as for NUTS."""
        return None if self._num_steps is None else self._num_steps * core.GRADIENTS_PER_STEP

    def get_diagnostics_str(self, state):
        return f"{int(state.num_steps)} steps of size {float(state.adapt_state.step_size):.2e}. " \
               f"acc. prob={float(state.mean_accept_prob):.2f}"

    def _init_state(self, z, rng_key, source, metric):
        rng_key, _, _ = jax.random.split(rng_key, 3)
        length = core.length_init(ravel_pytree(z)[0], self._trajectory_length or DEFAULT_TRAJECTORY_LENGTH)
        return core.malt_init(z, source.logdensity)._replace(length=length), rng_key

    def _step_state(self, s, source, warmup):
        h, metric, adapt = s.adapt_state.step_size, self._metric(s), s.state.length
        length = jnp.exp(jnp.where(warmup, adapt.log_length, adapt.log_length_avg))
        if self._num_steps is not None:
            num_steps = self._num_steps
        else:
            u = core.van_der_corput(s.i)
            num_steps = core.jittered_num_steps(u, length, h, self._max_num_steps)
        friction = core.friction_from_length(length) if self._friction is None else self._friction
        kept, info = core.malt_step(self._step_keys(s)[0], s.state, source.logdensity, h, num_steps,
                                    friction, metric)
        if self._adapt_length:
            x = ravel_pytree(s.state.z)[0]
            chees = core.chees_gradient(x, info, adapt.center, h, metric)
            x_kept = jnp.where(info.is_accepted, info.proposal.z, x)
            updated = core.length_update(adapt, chees, x_kept, (h, self._max_num_steps * h))
            adapt = metropolis.select(warmup, updated, adapt)
        stats = core.MALTStats(info.acceptance_rate, info.is_accepted, info.energy_error, info.diverging,
                               info.num_steps, length)
        return kept._replace(length=adapt), stats
