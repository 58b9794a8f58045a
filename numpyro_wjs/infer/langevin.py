"""Langevin kernels for ``numpyro.infer.MCMC``: ULA, MALA, UnderdampedLangevin.

Thin shells around the pure steps of ``numpyro_wjs.core.langevin``: a kernel binds a
score source (``numpyro_wjs.infer.sources``), runs warmup adaptation with
``numpyro.infer.hmc_util.warmup_adapter`` (dual averaging for the step size,
windowed Welford estimates for the mass matrix), and calls the step. Built on a
model, each is a block of NumPyro's ``numpyro.infer.Gibbs`` (``Kernel.refresh``
recomputes the cached ``potential_energy`` and ``score``; the underdamped velocity
is kept, as a Gibbs update of the other sites leaves it a valid auxiliary draw).
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from numpyro.infer.initialization import init_to_uniform

from numpyro_wjs import validation
from numpyro_wjs.core import langevin as core
from numpyro_wjs.infer.base import Kernel, check_mass
from numpyro_wjs.infer.sources import check_output_shape

__all__ = ["ULA", "MALA", "UnderdampedLangevin"]


class _LangevinKernel(Kernel):
    """Shared by the Langevin kernels: their arguments, the mass matrix, the checks at ``init``."""

    _needs_potential = False
    #: the subclass's defaults, used where an argument is left ``None``
    _default_target_accept_prob = 0.99
    _default_adapt_mass_matrix = False
    _default_dense_mass = False

    def __init__(
        self,
        model=None,
        potential_fn=None,
        score_fn=None,
        *,
        step_size=0.1,
        adapt_step_size=True,
        target_accept_prob=None,
        inverse_mass_matrix=None,
        adapt_mass_matrix=None,
        dense_mass=None,
        init_strategy=init_to_uniform,
        **unknown,
    ):
        validation.no_unknown_arguments(type(self).__name__, unknown, self._accepted_arguments())
        self._set_source(model, potential_fn, score_fn, init_strategy, needs_potential=self._needs_potential)
        self._step_size = validation.positive("step_size", step_size)
        if target_accept_prob is None:
            target_accept_prob = self._default_target_accept_prob
        self._target_accept_prob = validation.probability("target_accept_prob", target_accept_prob)
        self._dense_mass, self._inverse_mass_matrix = check_mass(
            dense_mass, inverse_mass_matrix, self._default_dense_mass
        )
        self._adapt_step_size = adapt_step_size
        self._adapt_mass_matrix = self._default_adapt_mass_matrix if adapt_mass_matrix is None else adapt_mass_matrix

    @classmethod
    def _accepted_arguments(cls) -> list[str]:
        """The keyword arguments of ``cls`` and of the shared constructor, for error messages."""
        names = []
        for init in (cls.__init__, _LangevinKernel.__init__):
            names += [n for n, p in inspect.signature(init).parameters.items()
                      if n != "self" and p.kind is not p.VAR_KEYWORD and n not in names]
        return names

    sample_field = "z"

    @property
    def evaluations_per_draw(self) -> int:
        """Score (gradient) evaluations per MCMC draw: one."""
        return 1

    def _adaptation(self, num_warmup, example):
        name = type(self).__name__
        if self._score_fn is not None:
            check_output_shape(name, "`score_fn`", self._score_fn, example)
        dim = ravel_pytree(example)[0].shape[0]
        imm = self._inverse_mass_matrix
        if imm is not None and not isinstance(imm, dict) and imm.shape[0] != dim:
            raise ValueError(
                f"{name}: inverse_mass_matrix has size {imm.shape[0]} but the position has {dim} entries."
            )
        return self._step_adaptation(
            num_warmup, example, adapt_step_size=self._adapt_step_size,
            adapt_mass_matrix=self._adapt_mass_matrix, target_accept_prob=self._target_accept_prob,
        )

    def _init_state(self, z, rng_key, source, metric):
        rng_key, _, key_core = jax.random.split(rng_key, 3)
        return core.ula_init(z, source.score, source.logdensity), rng_key


class ULA(_LangevinKernel):
    r"""Unadjusted (overdamped) Langevin algorithm.

    $$
    x_{t+1} = x_t + h\,C\,\nabla\log p(x_t) + \sqrt{2h}\,S\,\varepsilon_t,
    \qquad S S^\top = C,\ \varepsilon_t \sim N(0, I).
    $$

    For targets known only through their score (a learned one); with ``log p`` at hand,
    ``MALA`` (exact) or NUTS are better. ULA is biased: on ``N(0, s^2)`` its stationary
    variance is ``s^2 / (1 - h / (2 s^2))`` and it diverges for ``h >= 2 s^2``.

    **One draw is ``num_steps`` steps** (default 16, ``evaluations_per_draw``): the step
    that keeps the bias small moves the chain by about ``sqrt(2h)`` per step, so a draw
    of one step would be strongly autocorrelated. At the defaults ULA passes NUTS's
    checks (bulk ESS, R-hat) on NumPyro models at about twice NUTS's gradients per draw,
    with fewer effective draws per gradient (docs/kernels/ula.md).

    **Step size and mass matrix.** During warmup, dual averaging (``numpyro.infer.hmc_util``)
    tunes ``h`` so that the Metropolis-Hastings acceptance each step *would* have,
    computed and applied during warmup only, averages ``target_accept_prob`` (0.99):
    exact with a model or ``potential_fn``, from the trapezoid rule on the score with a
    bare score. ``C`` is adapted from warmup draws (windowed Welford, as NUTS). The bias
    left is about ``h / 2`` of the variance per preconditioned direction, below the
    Monte Carlo error of a 4 x 2,000-draw run on the defaults; raise
    ``target_accept_prob`` to shrink it for longer runs. ``adapt_step_size=False``
    keeps ``step_size`` fixed. Warmup applies the Metropolis correction (it is MALA,
    with the estimated ratio for a bare score), so the chain stays in the typical set
    while ``h`` and ``C`` are tuned; sampling is unadjusted. A step that is non-finite
    or whose energy error exceeds ``langevin.MAX_LOG_ACCEPT_DROP`` is discarded and
    flagged in ``diverging``.

    Parameters
    ----------
    model, potential_fn, score_fn
        Exactly one score source (see ``numpyro_wjs.infer.sources``).
    num_steps : int
        Langevin steps per draw (default 16).
    **kwargs
        ``step_size`` (initial ``h``, 0.1), ``adapt_step_size`` (True),
        ``target_accept_prob`` (the computed acceptance the tuning aims at, 0.99),
        ``inverse_mass_matrix`` (initial ``C``: ``(d,)``, ``(d, d)`` or blocks keyed by
        site names; identity), ``adapt_mass_matrix`` (True), ``dense_mass`` (False, or
        dense blocks of sites as in NUTS) and ``init_strategy``.

    Example
    -------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro.infer import MCMC
    >>> from numpyro_wjs import ULA
    >>> mcmc = MCMC(ULA(score_fn=lambda x: -x), num_warmup=100,
    ...             num_samples=1000, progress_bar=False)
    >>> mcmc.run(jax.random.key(0), init_params=jnp.zeros(2))
    >>> mcmc.get_samples().shape
    (1000, 2)
    """

    _default_adapt_mass_matrix = True
    #: ``accept_prob`` is the acceptance a Metropolis test would have had: never applied
    sample_stats = ("diverging",)

    def __init__(self, model=None, potential_fn=None, score_fn=None, *, num_steps=16, **kwargs):
        super().__init__(model, potential_fn, score_fn, **kwargs)
        self._num_steps = validation.positive_int("num_steps", num_steps)

    @property
    def evaluations_per_draw(self) -> int:
        """Score (gradient) evaluations per MCMC draw: ``num_steps``."""
        return self._num_steps

    def _step_state(self, s, source, warmup):
        return core.ula_step(s.rng_key, s.state, source.score, s.adapt_state.step_size, self._metric(s),
                             logdensity_fn=source.logdensity, num_steps=self._num_steps, adjusted=warmup)


class MALA(_LangevinKernel):
    r"""Metropolis-adjusted Langevin algorithm (Roberts & Tweedie 1996).

    Proposal $x' \sim N(x + h\,C\,\nabla\log p(x),\ 2h\,C)$, accepted with
    probability $\min\{1, p(x')q(x\mid x') / (p(x)q(x'\mid x))\}$: exact for
    ``p``. The step size is tuned during warmup by dual averaging towards
    ``target_accept_prob`` (0.574 is asymptotically optimal, Roberts & Rosenthal
    1998), and ``C`` by windowed Welford estimates: both from
    ``numpyro.infer.hmc_util.warmup_adapter``, as NUTS and BarkerMH do.

    Needs ``log p``: pass ``model=`` or ``potential_fn=`` (a bare ``score_fn`` raises).

    Parameters
    ----------
    model, potential_fn
        Exactly one target.
    step_size : float
        Initial step size ``h > 0``.
    target_accept_prob : float
        Acceptance rate that dual averaging aims at.
    adapt_step_size, adapt_mass_matrix : bool
        Warmup adaptation switches (default True).
    dense_mass : bool or list of tuples
        Dense rather than diagonal mass matrix, or dense blocks of sites as in NUTS
        (``[("a", "b")]``). Default False.
    inverse_mass_matrix : array or dict, optional
        Initial ``C`` (blocks keyed by site names for a structured one).
    init_strategy : callable
        NumPyro init strategy for ``model``.

    Example
    -------
    >>> import jax, numpyro, numpyro.distributions as dist
    >>> from numpyro.infer import MCMC
    >>> from numpyro_wjs import MALA
    >>> def model():
    ...     numpyro.sample("scale", dist.LogNormal(0.0, 0.5))
    >>> mcmc = MCMC(MALA(model), num_warmup=500, num_samples=1000, progress_bar=False)
    >>> mcmc.run(jax.random.key(0))
    >>> mcmc.get_samples()["scale"].shape
    (1000,)
    """

    _needs_potential = True
    _default_target_accept_prob = 0.574
    _default_adapt_mass_matrix = True

    def _step_state(self, s, source, warmup):
        (key,) = self._step_keys(s)
        return core.mala_step(key, s.state, source.logdensity, s.adapt_state.step_size, self._metric(s))


class UnderdampedLangevin(_LangevinKernel):
    r"""Underdamped (kinetic) Langevin dynamics with the BAOAB splitting.

    $$
    dx = M^{-1} v\,dt,\qquad
    dv = \nabla\log p(x)\,dt - \gamma v\,dt + \sqrt{2\gamma}\,M^{1/2} dW
    $$

    integrated by ``numpyro_wjs.core.langevin.baoab`` (half kick, half drift,
    exact Ornstein-Uhlenbeck velocity refresh, half drift, half kick). The velocity
    persists across steps, so the chain moves ballistically over a distance of
    about ``1 / friction`` before it forgets its direction. Unadjusted (runs on a
    score alone); on a Gaussian target its position marginal is exact at any stable
    step size (Leimkuhler & Matthews 2013); elsewhere its bias is ``O(h^2)``.

    **Step size.** During warmup, dual averaging tunes ``h`` so that the acceptance
    a Metropolis correction of the step's energy error would have
    (``langevin.baoab_log_ratio``: exact ``log p`` with a potential, trapezoid
    estimate with a score; applied during warmup only) averages
    ``target_accept_prob`` (0.99). Raise it to shrink the bias;
    ``adapt_step_size=False`` keeps ``step_size`` fixed. As for ``ULA``, warmup
    applies the correction and sampling is unadjusted. A step that is non-finite or
    whose energy error exceeds ``langevin.MAX_LOG_ACCEPT_DROP`` is discarded and
    flagged in ``diverging``. A step rejected during warmup, or a new mass matrix,
    draws a fresh velocity ``v ~ N(0, M)``; a step discarded after warmup keeps the
    position and reverses the velocity (Horowitz 1991), so the chain retreats from
    where the step failed instead of trying the same direction again.

    Parameters
    ----------
    model, potential_fn, score_fn
        Exactly one score source.
    friction : float
        ``gamma > 0``; ``exp(-gamma h)`` of the velocity survives each step.
    **kwargs
        ``step_size``, ``adapt_step_size``, ``target_accept_prob`` (the computed
        acceptance the tuning aims at), ``inverse_mass_matrix``, ``adapt_mass_matrix``,
        ``dense_mass`` and ``init_strategy``, with the defaults of ``ULA``.

    Example
    -------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro.infer import MCMC
    >>> from numpyro_wjs import UnderdampedLangevin
    >>> kernel = UnderdampedLangevin(score_fn=lambda x: -x, step_size=0.5, friction=1.0)
    >>> mcmc = MCMC(kernel, num_warmup=100, num_samples=1000, progress_bar=False)
    >>> mcmc.run(jax.random.key(0), init_params=jnp.zeros(2))
    >>> mcmc.get_samples().shape
    (1000, 2)

    With the step held fixed, the draws have the variance of ``N(0, I)`` (BAOAB is exact
    on a Gaussian at any stable step; 0.3 is about 5 standard errors here):

    >>> kernel = UnderdampedLangevin(score_fn=lambda x: -x, step_size=0.5, friction=1.0, adapt_step_size=False)
    >>> mcmc = MCMC(kernel, num_warmup=100, num_samples=1000, progress_bar=False)
    >>> mcmc.run(jax.random.key(0), init_params=jnp.zeros(2))
    >>> bool(abs(float(mcmc.get_samples().var()) - 1.0) < 0.3)
    True
    """

    sample_stats = ULA.sample_stats

    def __init__(self, model=None, potential_fn=None, score_fn=None, *, friction=1.0, **kwargs):
        super().__init__(model, potential_fn, score_fn, **kwargs)
        self._friction = validation.positive("friction", friction)

    def _init_state(self, z, rng_key, source, metric):
        rng_key, _, key_core = jax.random.split(rng_key, 3)
        return core.underdamped_init(z, source.score, key_core, metric, source.logdensity), rng_key

    def _step_state(self, s, source, warmup):
        return core.underdamped_step(s.rng_key, s.state, source.score, s.adapt_state.step_size, self._friction,
                                     self._metric(s), logdensity_fn=source.logdensity, adjusted=warmup)

    def _adapt(self, s, new, info, warmup):
        new, adapt_state = super()._adapt(s, new, info, warmup)
        if not self._adapt_mass_matrix:
            return new, adapt_state
        # a new mass matrix M (end of an adaptation window): draw the velocity from N(0, M)
        pairs = zip(jax.tree.leaves(adapt_state.inverse_mass_matrix), jax.tree.leaves(s.adapt_state.inverse_mass_matrix))
        changed = jnp.any(jnp.stack([jnp.any(a != b) for a, b in pairs]))
        fresh = core.draw_velocity(jax.random.fold_in(s.rng_key, 2), new.velocity, self._metric(adapt_state))
        return new._replace(velocity=jnp.where(changed, fresh, new.velocity)), adapt_state
