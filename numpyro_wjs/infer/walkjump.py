"""``WalkJump``: walk-jump sampling on a denoiser as a NumPyro kernel.

The kernel shell around ``numpyro_wjs.core.walkjump``: it binds the denoiser and its
noise level, adapts the walk step during warmup (optional) and runs one
``walk_jump_step`` per draw. For a NumPyro model without a denoiser, see
``numpyro_wjs.infer.gibbs.GibbsWalkJump``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import random

from numpyro.util import identity

from numpyro_wjs import validation
from numpyro_wjs.core import walkjump as core
from numpyro_wjs.core.langevin import normal_like
from numpyro_wjs.infer.base import Kernel
from numpyro_wjs.infer.sources import Source, check_finite_start, check_output_shape

Array = jax.Array

__all__ = ["WalkJump"]

#: Largest walk step, in units of sigma (underdamped) or sigma^2 (overdamped): the
#: stiffest direction of p_Y has curvature at most 1 / sigma^2, and BAOAB and ULA are
#: unstable from 2 of those units on.
_MAX_STEP = 1.5


class WalkJump(Kernel):
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

    For a NumPyro model or potential with no denoiser, use ``GibbsWalkJump``.

    Parameters
    ----------
    denoiser : callable or Denoiser
        ``y -> E[X | y]`` at noise ``sigma`` (single point of the event shape), or,
        noise-conditional, ``(y, s) -> E[X | y]`` at noise ``s`` (required for
        ``num_measurements > 1``). A denoiser that describes itself (a
        ``numpyro_wjs.nn.denoisers.Denoiser``, or any callable with attributes
        ``noise_conditional`` and ``sigma``) gives its noise conditioning, and a
        fixed-sigma one its ``sigma``.
    sigma : float, optional
        Noise level of the walk, ``> 0``; defaults to the ``sigma`` of a fixed-sigma
        ``Denoiser``, and must agree with it when given.
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
    noise_conditional : bool, optional
        Whether ``denoiser`` takes the noise level as second argument; read from a
        self-describing denoiser, False for a plain callable.
    adapt_step_size : bool, optional
        Tune the walk step during warmup; default False for the underdamped walk
        (fixed step ``sigma``), True for the overdamped one.
    target_accept_prob : float
        Target of the estimated acceptance when adapting (default 0.9).
    init_noisy : bool
        If True, ``init_params`` are walk positions ``y0``; otherwise they are clean
        points ``x0`` and the walk starts at ``y0 = x0 + sigma * eps``.

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
    >>> x, y = mcmc.get_samples()["x"], mcmc.get_extra_fields()["y"]
    >>> bool(jnp.allclose(x, gm.denoiser(1.0)(y), atol=1e-5))  # each draw is the jump E[X | y]
    True

    """

    def __init__(
        self,
        denoiser: Callable[..., Array],
        sigma: float | None = None,
        *,
        step_size: float | None = None,
        friction: float = 0.5,
        underdamped: bool = True,
        jump_every: int = 1,
        num_measurements: int = 1,
        mode: str = "joint",
        num_inner_steps: int = 20,
        noise_conditional: bool | None = None,
        adapt_step_size: bool | None = None,
        target_accept_prob: float = 0.9,
        init_noisy: bool = False,
    ):
        validation.check_callable("WalkJump", "denoiser", denoiser)
        _check_not_a_model(denoiser)
        self._noise_conditional, sigma = _noise_setting(denoiser, noise_conditional, sigma)
        self._sigma = validation.positive("sigma", sigma)
        # time scale of the stiffest direction of p_Y: sigma (underdamped), sigma^2 (overdamped)
        scale = self._sigma if underdamped else self._sigma**2
        self._max_step_size = _MAX_STEP * scale
        default_step = 1.0 * scale if underdamped else 0.5 * scale
        self._step_size = default_step if step_size is None else validation.positive("step_size", step_size)
        if self._step_size > self._max_step_size:
            raise ValueError(
                f"`step_size`={step_size} exceeds the stability bound {self._max_step_size:.3g} of the walk "
                f"({_MAX_STEP} x {'sigma' if underdamped else 'sigma^2'}); use a smaller step."
            )
        self._friction = validation.positive("friction", friction)
        self._jump_every = validation.positive_int("jump_every", jump_every)
        self._M = validation.positive_int("num_measurements", num_measurements)
        self._num_inner_steps = validation.positive_int("num_inner_steps", num_inner_steps)
        if mode not in ("joint", "sequential"):
            raise ValueError(f"`mode` must be 'joint' or 'sequential', got {mode!r}.")
        if num_measurements > 1 and not self._noise_conditional:
            raise ValueError(
                f"num_measurements={num_measurements} needs the denoiser at noise sigma/sqrt(m): "
                "pass a noise-conditional denoiser `(y, s) -> E[X|y]` with noise_conditional=True "
                "(e.g. `lambda y, s: gm.denoiser(s)(y)` for a GaussianMixture `gm`, or a "
                "noise-conditional network)."
            )
        self._target_accept_prob = validation.probability("target_accept_prob", target_accept_prob)
        self._denoiser = denoiser
        self._underdamped = underdamped
        self._mode = mode
        self._adapt_step_size = (not underdamped) if adapt_step_size is None else adapt_step_size
        self._init_noisy = init_noisy

    sample_stats = ("diverging", "accept_prob", "y")
    sample_field = "x"
    _key_parts = 3
    _info_type = core.WalkInfo

    @property
    def label(self) -> str:
        """``WalkJump``, with the measurements and mode when ``M > 1``."""
        return "WalkJump" if self._M == 1 else f"WalkJump (M={self._M}, {self._mode})"

    def postprocess_fn(self, args, kwargs):
        """Names the draws: ``{"x": x}``, the sample site in NumPyro and ArviZ output."""
        return lambda x: {"x": x}

    def get_diagnostics_str(self, state):
        return (
            f"step size {float(state.adapt_state.step_size):.2e}. "
            f"est. acc. prob={float(state.mean_accept_prob):.2f}"
        )

    @property
    def _joint(self):
        return self._M > 1 and self._mode == "joint"

    @property
    def evaluations_per_draw(self) -> int:
        """Denoiser evaluations per MCMC draw: the walk steps, plus the measurements of a
        sequential jump."""
        cost = self._jump_every
        if self._M > 1 and self._mode == "sequential":
            cost += (self._M - 1) * (self._num_inner_steps + 1)
        return cost

    def _denoise(self, y, s):
        return self._denoiser(y, s) if self._noise_conditional else self._denoiser(y)

    def _walk_score(self):
        if self._joint:
            return core.joint_score(self._denoiser, self._sigma, self._M)
        return core.smoothed_score(lambda y: self._denoise(y, self._sigma), self._sigma)

    def _tweedie(self, y, score):
        """``E[X | y] = y + sigma^2 grad log p_Y(y)`` from the walk's score (free); joint: of ``ybar``."""
        if self._joint:
            y, score = y[0], score[0]
        return y + self._sigma**2 * score

    def _jump_fn(self):
        """``(key, y, score) -> x``: the Tweedie jump, or the sequential jump over ``M`` measurements."""
        if self._M == 1 or self._joint:
            return lambda key, y, score: self._tweedie(y, score)

        def jump(key, y, score):
            return core.sequential_jump(
                key, y, self._tweedie(y, score), self._denoiser, self._sigma, self._M, self._num_inner_steps,
                0.5 * self._sigma / math.sqrt(self._M), self._friction,
            )

        return jump

    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs={}):
        if init_params is None:
            raise ValueError("WalkJump: pass `init_params` (a clean point x0, or y0 with init_noisy=True).")
        return super().init(rng_key, num_warmup, init_params)

    def _adaptation(self, num_warmup, example):
        check_output_shape(
            "WalkJump", "the denoiser", lambda y: self._denoise(y, self._sigma), example,
            " It is called on one unbatched point (vmap handles chains).",
        )
        # the walk adapts its step only (no mass matrix), up to the stability bound
        return self._step_adaptation(
            num_warmup, None, adapt_step_size=self._adapt_step_size,
            target_accept_prob=self._target_accept_prob, max_step_size=self._max_step_size,
        )

    def _source(self, x, model_args, model_kwargs):
        """The walk's score ``grad log p_Y`` from the denoiser (positions keep their shape)."""
        return Source(self._walk_score(), None, identity)

    def _init_state(self, x0, rng_key, source, metric):
        rng_key, key_noise, key_v, _ = random.split(rng_key, 4)
        shape = ((self._M,) if self._joint else ()) + x0.shape
        noise = 0.0 if self._init_noisy else self._sigma * normal_like(key_noise, jnp.zeros(shape, x0.dtype))
        st = core.walk_init(jnp.broadcast_to(x0, shape) + noise, source.score, key_v if self._underdamped else None)
        return st._replace(x=self._tweedie(st.y, st.score)), rng_key

    def _check_start(self, state) -> None:
        check_finite_start(
            "WalkJump", state.score, problem="the denoiser returned non-finite values at the initial point",
            fix="Check the denoiser (and its input scaling) and `init_params`.",
        )

    def _step_state(self, s, source, warmup):
        return core.walk_jump_step(
            s.rng_key, s.state, source.score, self._jump_fn(), s.adapt_state.step_size, self._friction,
            self._jump_every, self._underdamped,
        )


def _check_not_a_model(denoiser) -> None:
    """``TypeError`` for a callable that cannot take a point ``y``: a NumPyro model passed by mistake."""
    try:
        signature = inspect.signature(denoiser)
    except ValueError:  # no signature (a builtin): nothing to check
        return
    if not any(_binds(signature, n) for n in (1, 2)):
        raise TypeError(
            f"WalkJump: `denoiser` must be called as denoiser(y) (or denoiser(y, s)), but "
            f"{getattr(denoiser, '__name__', type(denoiser).__name__)} takes no point. "
            "For walk-jump on a NumPyro model (no denoiser, no training) use GibbsWalkJump(model)."
        )


def _binds(signature: inspect.Signature, n: int) -> bool:
    try:
        signature.bind(*([None] * n))
        return True
    except TypeError:
        return False


def _noise_setting(denoiser, noise_conditional: bool | None, sigma) -> tuple[bool, float]:
    """``(noise_conditional, sigma)`` from the arguments and what the denoiser says of itself.

    A self-describing denoiser has attributes ``noise_conditional`` and ``sigma`` (its
    training noise level when fixed-sigma); a plain callable has neither.
    """
    declared = getattr(denoiser, "noise_conditional", None)
    if declared is not None and noise_conditional is not None and bool(declared) != noise_conditional:
        raise ValueError(
            f"WalkJump: noise_conditional={noise_conditional} but the denoiser is "
            f"{'' if declared else 'not '}noise-conditional; leave `noise_conditional` out."
        )
    conditional = bool(declared) if noise_conditional is None and declared is not None else bool(noise_conditional)
    trained = None if conditional else getattr(denoiser, "sigma", None)
    if trained is not None:
        if sigma is None:
            return conditional, trained
        if not math.isclose(validation.positive("sigma", sigma), trained, rel_tol=1e-6):
            raise ValueError(
                f"WalkJump: sigma={sigma} but the denoiser was trained at sigma={trained}; its score is "
                "only right at that noise level. Leave `sigma` out, or use a noise-conditional denoiser."
            )
    if sigma is None:
        raise ValueError("WalkJump: `sigma`, the noise level the denoiser was made for, is required.")
    return conditional, sigma
