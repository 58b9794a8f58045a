"""Walk-jump sampling (Saremi & Hyvarinen 2019, "Neural Empirical Bayes").

WALK: Langevin MCMC on the smoothed density ``p_Y = p_X * N(0, sigma^2 I)`` with the
score given by a denoiser through Tweedie-Miyasawa,
``grad log p_Y(y) = (E[X | y] - y) / sigma^2``. JUMP: ``x = E[X | y]``. Jumps never
feed back into the walk.

With ``M`` measurements ``y_m = x + sigma eps_m`` the mean ``ybar`` is sufficient
for ``x`` with noise ``sigma / sqrt(M)``, so (Saremi & Srivastava 2022)

* ``joint``: walk on all ``M`` copies with ``grad_{y_m} log p = (E[X | ybar] - y_m) / sigma^2``
  and jump to ``E[X | ybar]`` at noise ``sigma / sqrt(M)``;
* ``sequential``: walk ``y_1`` at ``sigma`` (this is what mixes), and at each jump draw
  ``y_2 .. y_M`` from ``p(y_m | y_1..y_{m-1})``, whose score is
  ``(E[X | y_1..y_m] - y_m) / sigma^2``, by short Langevin runs; jump to
  ``E[X | y_1..y_M]`` (Saremi, Park & Bach 2024, "Chain of log-concave Markov chains").

The pure functions (``smoothed_score``, ``joint_score``,
``sequential_jump``, ``walk_step``) run inside ``jax.lax.scan``;
``WalkJump`` wraps them as a NumPyro ``MCMCKernel``.
"""

from __future__ import annotations

import math
from collections import namedtuple
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import random, vmap
from numpyro.infer.hmc_util import warmup_adapter
from numpyro.infer.initialization import init_to_uniform
from numpyro.util import identity, is_prng_key

from numpyro_wjs.core import langevin as core
from numpyro_wjs.infer.gibbs import ModelWalkJumpMixin
from numpyro_wjs.infer.langevin import ClosureKernel, as_float
from numpyro_wjs.infer.langevin import check_positive as _positive
from numpyro_wjs.infer.sources import check_source

Array = jax.Array
Denoiser = Callable[..., Array]

__all__ = [
    "WalkJump",
    "WalkJumpState",
    "WalkState",
    "smoothed_score",
    "joint_score",
    "walk_step",
    "sequential_jump",
]


# --------------------------------------------------------------------------- pure core
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


class WalkState(NamedTuple):
    """State of the walk on ``p_Y``."""

    y: Array
    """Noisy position (one measurement ``(*event)``, or ``(M, *event)``)."""
    velocity: Array
    """Momentum of the underdamped walk (zeros and unused for the overdamped one)."""
    score: Array
    """``grad log p_Y(y)``; the jump ``E[X|y]`` is ``y + sigma^2 score``, free of charge."""


def walk_step(
    rng_key: Array,
    state: WalkState,
    score_fn: Callable[[Array], Array],
    step_size,
    friction,
    underdamped: bool = True,
) -> tuple[WalkState, Array]:
    """One walk step: BAOAB (underdamped) or ULA (overdamped) on ``p_Y``.

    Returns the new state and the *estimated* log Metropolis-Hastings ratio of the
    step (``langevin.baoab_log_ratio`` / ``langevin.langevin_log_ratio``), with
    ``log p_Y`` differences from the trapezoid rule on the score: exact when ``p_Y``
    is locally Gaussian. Minus it is the step's energy error, which flags divergence
    and (optionally) tunes the step; the walk itself is never rejected.
    """
    y0, v0, g0 = state
    if underdamped:
        old = core.UnderdampedState(y0, v0, g0)
        s = core.baoab_step(rng_key, old, score_fn, step_size, friction)
        return WalkState(*s), core.baoab_log_ratio(old, s, step_size)
    y1, g1 = core.ula_step(rng_key, core.LangevinState(y0, g0), score_fn, step_size)
    dlogp = core.trapezoid_dlogp(y0, g0, y1, g1)
    return WalkState(y1, v0, g1), core.langevin_log_ratio(y0, g0, y1, g1, dlogp, step_size)


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
        st = core.underdamped_init(y, score, key_v)

        def body(st, key, score=score):
            return core.baoab_step(key, st, score, step_size, friction), None

        st, _ = jax.lax.scan(body, st, random.split(key_walk, num_inner_steps))
        total = prev_total + st.position
        xhat = st.position + sigma**2 * st.score  # = E[X | ybar_m] at the final y_m
    return xhat


# --------------------------------------------------------------------------- kernel
WalkJumpState = namedtuple(
    "WalkJumpState",
    ["i", "x", "y", "velocity", "accept_prob", "mean_accept_prob", "diverging", "adapt_state", "rng_key", "score"],
)
"""State of ``WalkJump``.

- **i**: iteration.
- **x**: the jump ``E[X | y]`` (the sample field).
- **y**: the walk (noisy measurements; ``(M, *event)`` in joint mode).
- **velocity**: momentum of the underdamped walk.
- **accept_prob**: estimated Metropolis acceptance of the last walk steps (see
  ``walk_step``); drives step-size adaptation, never rejects.
- **mean_accept_prob**: its running mean.
- **diverging**: a walk step of this draw was non-finite or had an estimated energy
  error above ``langevin.MAX_LOG_ACCEPT_DROP``; it was discarded.
- **adapt_state**: ``HMCAdaptState``; ``adapt_state.step_size`` is the walk step size.
- **rng_key**: random key.
- **score**: ``grad log p_Y(y)``.
"""


#: Largest walk step, in units of sigma (underdamped) or sigma^2 (overdamped): the
#: stiffest direction of p_Y has curvature at most 1 / sigma^2, and BAOAB and ULA are
#: unstable from 2 of those units on.
_MAX_STEP = 1.5


def _sigma_range(sigma):
    """``(lo, hi)`` of the model walk-jump's noise: a float, a pair, or None (adaptive)."""
    if sigma is None:
        return 1.0, _DEFAULT_SIGMA_RATIO
    if isinstance(sigma, tuple | list):
        if len(sigma) != 2:
            raise ValueError(f"`sigma` as a range must be (lo, hi), got {sigma!r}.")
        lo, hi = _positive("sigma", sigma[0]), _positive("sigma", sigma[1])
        if not lo <= hi:
            raise ValueError(f"`sigma` range must have lo <= hi, got {sigma!r}.")
        return lo, hi
    s = _positive("sigma", sigma)
    return s, s


#: With ``sigma=None`` the model walk-jump adapts the lower end of its noise range and
#: draws ``sigma`` log-uniformly up to this many times it.
_DEFAULT_SIGMA_RATIO = 30.0


class WalkJump(ModelWalkJumpMixin, ClosureKernel):
    r"""Walk-jump sampling as a NumPyro kernel.

    WALK: underdamped (default, BAOAB) or overdamped Langevin on
    ``p_Y = p_X * N(0, sigma^2 I)`` with score ``(xhat(y) - y) / sigma^2``; JUMP:
    ``x = xhat(y)`` every ``jump_every`` walk steps. Each MCMC draw is one jump;
    the walk ``y`` is available through ``extra_fields=("y",)``.

    Large ``sigma`` mixes fast across modes but the jumps are blurred posterior
    means; small ``sigma`` gives sharp jumps but slow mixing. ``num_measurements=M``
    moves this trade-off: the walk keeps the smoothing of ``sigma`` while the jumps
    have the quality of ``sigma / sqrt(M)`` (``mode="sequential"``), or the whole
    chain works at ``sigma / sqrt(M)`` with ``M``-fold walk noise
    (``mode="joint"``).

    **Step size.** The Hessian of ``log p_Y`` is ``(Cov[X|y] - sigma^2 I) / sigma^4
    >= -I / sigma^2``, so the stiffest direction of ``p_Y`` has frequency at most
    ``1 / sigma`` *in every dimension*: the walk step scales with ``sigma``
    (``sigma^2`` for the overdamped walk), and never exceeds ``1.5 * sigma`` (BAOAB
    is unstable from ``2 sigma`` on). The underdamped walk's default is a fixed step
    ``sigma`` with friction 0.5: how far a step moves, in units of the smoothing,
    does not depend on the dimension, so neither does the mixing per step (BAOAB is
    exact on Gaussian ``p_Y`` at any stable step, so the fixed step adds no bias
    there). Tuning the step to a Metropolis acceptance of the whole step would
    shrink it as ``d`` grows (the energy error of a step sums over coordinates), and
    the walk with it. With ``adapt_step_size=True`` (the default of the overdamped
    walk, whose bias grows with the step) warmup tunes the step by dual averaging
    (``numpyro.infer.hmc_util``) so that the *estimated* Metropolis acceptance of a
    walk step, with ``log p_Y`` differences from the trapezoid rule on the score
    (exact for locally Gaussian ``p_Y``), equals ``target_accept_prob``: a bound on
    the discretisation error, not a rejection. A walk step that is non-finite or
    whose estimated energy error exceeds ``langevin.MAX_LOG_ACCEPT_DROP`` is
    discarded and flagged in ``diverging``.

    **Without a denoiser** (``model=`` or ``potential_fn=``): Gibbs sampling on
    ``(z, y)`` from ``numpyro_wjs.infer.gibbs``: the walk ``y ~ N(z, sigma^2 I)``, the
    jump a move that leaves ``p(z | y) ∝ p(z) N(y; z, sigma^2 I)`` invariant (a hop
    ``z' ~ N(y, sigma^2 I)`` accepted with ``min(1, p(z')/p(z))``, then
    ``num_mala_steps`` MALA steps). Its ``z`` draws target the exact posterior for
    every ``sigma`` (in unconstrained space; constrained and deterministic sites come
    back through ``postprocess_fn`` as with NUTS). ``sigma`` sets how far a hop can
    reach: about half the distance between the modes (in unconstrained space) lets
    the chain hop, while the hop acceptance falls like ``(mode width / sigma)^d``.
    ``sigma`` may be a float, a range ``(lo, hi)`` (drawn log-uniformly at every
    iteration, independently of the state, so still exact), or ``None``: warmup then
    tunes ``lo`` by dual averaging so that hops at ``lo`` are accepted with
    probability ``target_hop_accept_prob`` (the local scale of the posterior), and
    sampling draws ``sigma`` in ``(lo, 30 lo)``. The MALA step size and mass matrix
    are adapted with ``hmc_util`` as in ``MALA``. Watch
    ``hop_accept_prob`` (extra field): near zero means ``sigma`` is too large for
    the model's dimension.

    Parameters
    ----------
    denoiser : callable
        ``y -> E[X | y]`` at noise ``sigma`` (single point of the event shape), or,
        with ``noise_conditional=True``, ``(y, s) -> E[X | y]`` at noise ``s``.
        Required for ``num_measurements > 1``.
    sigma : float
        Noise level of the walk, ``> 0``.
    step_size : float, optional
        Walk step (initial step when adapted); default ``sigma`` (underdamped) or
        ``0.5 * sigma**2`` (overdamped), never more than 1.5 of those units (the
        stability bound is 2).
    friction : float
        Friction of the underdamped walk (per unit time), default 0.5:
        ``exp(-0.5 sigma)`` of the velocity survives a default step.
    underdamped : bool
        BAOAB walk (default) or overdamped (ULA) walk.
    jump_every : int
        Walk steps per draw.
    num_measurements : int
        ``M >= 1``.
    mode : {"joint", "sequential"}
        How ``M > 1`` measurements are used.
    num_inner_steps : int
        Langevin steps per conditional measurement in sequential mode.
    noise_conditional : bool
        Whether ``denoiser`` takes the noise level as second argument.
    adapt_step_size : bool, optional
        Tune the walk step during warmup; default False for the underdamped walk
        (fixed step ``sigma``), True for the overdamped one.
    target_accept_prob : float
        Target of the estimated acceptance when adapting (default 0.9).
    init_noisy : bool
        If True, ``init_params`` are walk positions ``y0``; otherwise they are clean
        points ``x0`` and the walk starts at ``y0 = x0 + sigma * eps``.
    model, potential_fn : optional
        Instead of ``denoiser``: the target of the Gibbs walk-jump.
    num_mala_steps : int
        MALA refinement steps per jump (model mode).
    adapt_sigma : bool, optional
        Adapt the lower end of the noise range (default: when ``sigma`` is None).
    target_hop_accept_prob : float
        Hop acceptance that sigma adaptation aims at (model mode).
    adapt_mass_matrix : bool
        Adapt the MALA mass matrix during warmup (model mode).
    init_strategy : callable
        NumPyro init strategy for ``model``.

    Example
    -------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro.infer import MCMC
    >>> from numpyro_wjs import WalkJump
    >>> from numpyro_wjs.targets import GaussianMixture
    >>> gm = GaussianMixture([0.5, 0.5], [[-3.0], [3.0]], [0.5, 0.5])
    >>> mcmc = MCMC(WalkJump(gm.denoiser(1.0), sigma=1.0), num_warmup=200,
    ...             num_samples=1000, progress_bar=False)
    >>> mcmc.run(jax.random.key(0), init_params=jnp.zeros(1), extra_fields=("y",))
    >>> x, y = mcmc.get_samples(), mcmc.get_extra_fields()["y"]
    >>> bool(jnp.allclose(x, gm.denoiser(1.0)(y), atol=1e-5))  # each draw is the jump E[X | y]
    True

    Without training, on a NumPyro model whose posterior has two modes:

    >>> import numpyro, numpyro.distributions as dist
    >>> def model():
    ...     theta = numpyro.sample("theta", dist.Normal(0.5, 2.0))
    ...     numpyro.sample("obs", dist.Normal(theta**2, 1.0), obs=jnp.array([2.9, 2.1]))
    >>> mcmc = MCMC(WalkJump(model=model), num_warmup=500, num_samples=2000, progress_bar=False)
    >>> mcmc.run(jax.random.key(0), extra_fields=("hop_accept_prob",))
    >>> theta = mcmc.get_samples()["theta"]
    >>> bool((theta > 0).any() and (theta < 0).any())  # the chain visits both modes
    True
    """

    def __init__(
        self,
        denoiser: Denoiser | None = None,
        sigma: float | None = None,
        *,
        model=None,
        potential_fn=None,
        step_size: float | None = None,
        friction: float = 0.5,
        underdamped: bool = True,
        jump_every: int = 1,
        num_measurements: int = 1,
        mode: str = "joint",
        num_inner_steps: int = 20,
        noise_conditional: bool = False,
        adapt_step_size: bool | None = None,
        target_accept_prob: float = 0.9,
        init_noisy: bool = False,
        num_mala_steps: int = 5,
        adapt_sigma: bool | None = None,
        target_hop_accept_prob: float = 0.3,
        adapt_mass_matrix: bool = True,
        init_strategy=init_to_uniform,
    ):
        self._from_model = denoiser is None
        if self._from_model:
            check_source("WalkJump", model, potential_fn, None, needs_potential=True)
            lo, hi = _sigma_range(sigma)
            if not isinstance(num_mala_steps, int) or isinstance(num_mala_steps, bool) or num_mala_steps < 1:
                raise ValueError(f"`num_mala_steps` must be an integer >= 1, got {num_mala_steps!r}.")
            if not 0 < target_hop_accept_prob < 1:
                raise ValueError(f"`target_hop_accept_prob` must be in (0, 1), got {target_hop_accept_prob}.")
            self._setup_model(
                model, potential_fn, lo, hi / lo, num_mala_steps,
                None if step_size is None else _positive("step_size", step_size),
                sigma is None if adapt_sigma is None else adapt_sigma, target_hop_accept_prob,
                True if adapt_step_size is None else adapt_step_size, adapt_mass_matrix, init_strategy,
            )
            return
        if model is not None or potential_fn is not None:
            raise ValueError(
                "WalkJump takes either a `denoiser` (walk-jump on a learned or exact score) or a "
                "`model=`/`potential_fn=` (Gibbs walk-jump without training), not both."
            )
        if sigma is None:
            raise ValueError("WalkJump: `sigma`, the noise level the denoiser was made for, is required.")
        if not callable(denoiser):
            raise TypeError(f"WalkJump: `denoiser` must be callable, got {type(denoiser).__name__}.")
        self._sigma = _positive("sigma", sigma)
        # time scale of the stiffest direction of p_Y: sigma (underdamped), sigma^2 (overdamped)
        scale = self._sigma if underdamped else self._sigma**2
        self._max_step_size = _MAX_STEP * scale
        default_step = 1.0 * scale if underdamped else 0.5 * scale
        self._step_size = default_step if step_size is None else _positive("step_size", step_size)
        if self._step_size > self._max_step_size:
            raise ValueError(
                f"`step_size`={step_size} exceeds the stability bound {self._max_step_size:.3g} of the walk "
                f"({_MAX_STEP} x {'sigma' if underdamped else 'sigma^2'}); use a smaller step."
            )
        self._friction = _positive("friction", friction)
        for name, v in (("jump_every", jump_every), ("num_measurements", num_measurements), ("num_inner_steps", num_inner_steps)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"`{name}` must be an integer >= 1, got {v!r}.")
        if mode not in ("joint", "sequential"):
            raise ValueError(f"`mode` must be 'joint' or 'sequential', got {mode!r}.")
        if num_measurements > 1 and not noise_conditional:
            raise ValueError(
                f"num_measurements={num_measurements} needs the denoiser at noise sigma/sqrt(m): "
                "pass a noise-conditional denoiser `(y, s) -> E[X|y]` with noise_conditional=True "
                "(e.g. `lambda y, s: gm.denoiser(s)(y)` for a GaussianMixture `gm`, or a "
                "noise-conditional network)."
            )
        if not 0 < target_accept_prob < 1:
            raise ValueError(f"`target_accept_prob` must be in (0, 1), got {target_accept_prob}.")
        self._denoiser = denoiser
        self._noise_conditional = noise_conditional
        self._underdamped = underdamped
        self._jump_every = jump_every
        self._M = num_measurements
        self._mode = mode
        self._num_inner_steps = num_inner_steps
        self._adapt_step_size = (not underdamped) if adapt_step_size is None else adapt_step_size
        self._target_accept_prob = target_accept_prob
        self._init_noisy = init_noisy
        self._sample_fn = None

    # -- MCMCKernel interface ---------------------------------------------------------
    @property
    def model(self):
        return self._model if self._from_model else None

    @property
    def sample_field(self):
        return "z" if self._from_model else "x"

    @property
    def default_fields(self):
        return (self.sample_field, "diverging")

    def get_diagnostics_str(self, state):
        if self._from_model:
            return (
                f"sigma {float(state.sigma):.2e}. hop acc. prob={float(state.mean_hop_accept_prob):.2f}. "
                f"mala acc. prob={float(state.mean_accept_prob):.2f}"
            )
        return (
            f"step size {float(state.adapt_state.step_size):.2e}. "
            f"est. acc. prob={float(state.mean_accept_prob):.2f}"
        )

    def postprocess_fn(self, args, kwargs):
        return self._postprocess_model(args, kwargs) if self._from_model else identity

    @property
    def _joint(self):
        return self._M > 1 and self._mode == "joint"

    @property
    def evaluations_per_draw(self) -> int:
        """Denoiser (or gradient) evaluations per MCMC draw."""
        if self._from_model:
            return 1 + self._num_mala_steps
        cost = self._jump_every
        if self._M > 1 and self._mode == "sequential":
            cost += (self._M - 1) * (self._num_inner_steps + 1)
        return cost

    def _denoise(self, y, s):
        return self._denoiser(y, s) if self._noise_conditional else self._denoiser(y)

    def _walk_score(self):
        if self._joint:
            return joint_score(self._denoiser, self._sigma, self._M)
        return smoothed_score(lambda y: self._denoise(y, self._sigma), self._sigma)

    def _check_denoiser(self, x):
        try:
            out = jax.eval_shape(lambda y: self._denoise(y, self._sigma), x)
        except Exception as e:  # noqa: BLE001 - re-raised with context
            raise ValueError(f"WalkJump: calling the denoiser on a point of shape {x.shape} failed: {e}") from e
        if out.shape != x.shape:
            raise ValueError(
                f"WalkJump: the denoiser must return E[X|y] with the shape of y; got {out.shape} for "
                f"input {x.shape}. It is called on one unbatched point (vmap handles chains)."
            )

    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs={}):
        if self._from_model:
            return self._init_model(rng_key, num_warmup, init_params, model_args, model_kwargs)
        if init_params is None:
            raise ValueError("WalkJump: pass `init_params` (a clean point x0, or y0 with init_noisy=True).")
        self._num_warmup = num_warmup
        batched = not is_prng_key(rng_key)
        init_params = as_float(init_params)
        x_example = init_params[0] if batched else init_params
        self._check_denoiser(x_example)
        wa_init, self._wa_update = warmup_adapter(
            num_warmup,
            adapt_step_size=self._adapt_step_size,
            adapt_mass_matrix=False,
            target_accept_prob=self._target_accept_prob,
        )
        score_fn = self._walk_score()

        def init_one(x0, key):
            key, key_noise, key_v, key_wa = random.split(key, 4)
            shape = ((self._M,) if self._joint else ()) + x0.shape
            noise = 0.0 if self._init_noisy else self._sigma * core.normal_like(key_noise, jnp.zeros(shape, x0.dtype))
            y0 = jnp.broadcast_to(x0, shape) + noise
            st = core.underdamped_init(y0, score_fn, key_v if self._underdamped else None)
            x = self._jump_from(st.position, st.score)
            wa = wa_init((jnp.zeros(1, x0.dtype),), key_wa, self._step_size, mass_matrix_size=1)
            wa = self._clip(wa._replace(rng_key=None))
            zero = jnp.zeros((), x0.dtype)
            return WalkJumpState(jnp.array(0), x, st.position, st.velocity, zero, zero, jnp.array(False), wa, key, st.score)

        if batched:
            state = jax.jit(vmap(init_one))(init_params, rng_key)
            self._sample_fn = vmap(self._sample_one, in_axes=(0, None, None))
        else:
            state = jax.jit(init_one)(init_params, rng_key)
            self._sample_fn = self._sample_one
        try:
            finite = bool(jnp.all(jnp.isfinite(state.score)))
        except jax.errors.ConcretizationTypeError:
            finite = True
        if not finite:
            raise ValueError(
                "WalkJump: the denoiser returned non-finite values at the initial point; "
                "check the denoiser (and its input scaling) and `init_params`."
            )
        return state

    # -- one draw ------------------------------------------------------------------------
    def _jump_from(self, y, score, rng_key=None):
        """Tweedie jump ``y + sigma^2 score`` (free), or the sequential M-measurement jump."""
        if self._joint:
            return y[0] + self._sigma**2 * score[0]
        xhat = y + self._sigma**2 * score
        if self._M == 1 or rng_key is None:
            return xhat
        return sequential_jump(
            rng_key, y, xhat, self._denoiser, self._sigma, self._M, self._num_inner_steps,
            0.5 * self._sigma / math.sqrt(self._M), self._friction,
        )

    def _clip(self, adapt_state):
        return adapt_state._replace(step_size=jnp.minimum(adapt_state.step_size, self._max_step_size))

    def _sample_one(self, state, model_args, model_kwargs):
        score_fn = self._walk_score()
        step_size = state.adapt_state.step_size
        rng_key, key_walk, key_jump = random.split(state.rng_key, 3)

        def body(carry, key):
            st, diverged = carry
            new, log_ratio = walk_step(key, st, score_fn, step_size, self._friction, self._underdamped)
            bad = core.diverged(log_ratio, *new)
            new = jax.tree.map(lambda a, b: jnp.where(bad, b, a), new, st)
            return (new, diverged | bad), jnp.where(bad, 0.0, core.accept_prob(log_ratio))

        st = WalkState(state.y, state.velocity, state.score)
        (st, diverging), accepts = jax.lax.scan(body, (st, jnp.array(False)), random.split(key_walk, self._jump_every))
        accept_prob = jnp.mean(accepts)
        x = self._jump_from(st.y, st.score, key_jump)
        ok = jnp.all(jnp.isfinite(x))
        x = jnp.where(ok, x, state.x)
        i = state.i
        adapt_state = jax.lax.cond(
            i < self._num_warmup,
            lambda s: self._clip(self._wa_update(i, accept_prob, (jnp.zeros(1, x.dtype),), s)),
            lambda s: s,
            state.adapt_state,
        )
        n = jnp.where(i < self._num_warmup, i + 1, i + 1 - self._num_warmup)
        mean_accept_prob = state.mean_accept_prob + (accept_prob - state.mean_accept_prob) / n
        return WalkJumpState(
            i + 1, x, st.y, st.velocity, accept_prob, mean_accept_prob, diverging | ~ok,
            adapt_state, rng_key, st.score,
        )
