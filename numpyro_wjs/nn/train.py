"""Least-squares training of denoisers, and their checkpoints.

A denoiser ``xhat`` trained on (theory.md section 4)::

    L(theta) = E_{x ~ p_X, eps ~ N(0, I)} || x - xhat_theta(x + sigma eps) ||^2

estimates ``E[X | y]``, hence the score ``(xhat(y) - y) / sigma^2`` of the smoothed
density (Tweedie-Miyasawa). ``DenoisingLoss`` is a Monte Carlo estimate of ``L``;
``train_denoiser`` minimises it with the package's one trainer,
``numpyro_wjs.nn.fit.fit`` (AdamW, an exponential moving average of the weights,
held-out error, data parallelism, Orbax checkpoints and resume). ``load_denoiser``
rebuilds a trained network from a checkpoint directory alone.

Checkpoint layout (one directory per checkpoint, ``numpyro_wjs.nn.checkpoints``)::

    metadata.json   architecture, constructor kwargs, sigma, data shape,
                    normalisation, step, library version, training settings
    weights/        Orbax PyTree of the published (EMA) ``nnx.Param`` values
    train_state/    Orbax PyTree: raw weights, optimizer state, loss history
                    (training checkpoints; optimizer state only for save_checkpoint)

Any Flax NNX module called as ``model(y)`` or ``model(y, s)`` trains; checkpoints name
its class, which ``register_architecture`` makes loadable (the package's ``MLP`` and
``UNet`` are registered).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import numbers
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from numpyro_wjs.nn.checkpoints import (
    CheckpointError,
    check_json,
    checkpoint_metadata,
    load_network,
    network_metadata,
    pure_params,
    save_network,
)
from numpyro_wjs.nn.denoisers import Denoiser, edm_preconditioning, is_noise_conditional
from numpyro_wjs.nn.fit import (
    Evaluation,
    ProcessBatches,
    TrainConfig,
    check_outside_package,
    ema_update,
    fit,
    fit_step,
    is_batch_stream,
)
from numpyro_wjs.nn.registry import register_architecture
from numpyro_wjs.validation import positive, positive_int, positive_range

__all__ = [
    "CheckpointError",
    "DenoisingLoss",
    "TrainResult",
    "check_outside_package",
    "checkpoint_metadata",
    "denoising_errors",
    "ema_update",
    "load_denoiser",
    "loss_fn",
    "register_architecture",
    "save_checkpoint",
    "train_denoiser",
    "train_iteration",
    "train_on_batch",
    "train_step",
]

FORMAT = "numpyro_wjs.denoiser"


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Outcome of ``train_denoiser``.

    Attributes
    ----------
    ema_model : nnx.Module
        Network with the EMA weights: the one to use (and the one checkpoints publish).
    model : nnx.Module
        Network with the final raw weights (the ``model`` passed in, trained in place).
    loss_history : np.ndarray, shape (steps,)
        Training loss of every step (see ``loss_fn``).
    eval_steps : np.ndarray, shape (n_evals,)
        Steps at which the EMA network was evaluated on ``eval_data``.
    eval_sigmas : np.ndarray, shape (k,)
        Noise levels of the evaluation: ``[sigma]``, or ``lo``, ``sqrt(lo hi)``, ``hi``.
    eval_mse : np.ndarray, shape (n_evals, k)
        Held-out mean of ``||x - xhat(x + s eps)||^2`` per evaluation and noise level.
    """

    ema_model: nnx.Module
    model: nnx.Module
    loss_history: np.ndarray
    eval_steps: np.ndarray
    eval_sigmas: np.ndarray
    eval_mse: np.ndarray


# ---------------------------------------------------------------------------
# Loss, objective, steps


def _standard_normal(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """``N(0, I)`` noise of ``shape = (N, *event)``, drawn as an ``(N, prod(event))`` matrix.

    2-D draws compile much faster on XLA:CPU than draws of image-shaped arrays.
    """
    return jax.random.normal(key, (shape[0], math.prod(shape[1:])), dtype).reshape(shape)


def loss_fn(
    model: nnx.Module,
    batch: jax.Array,
    key: jax.Array,
    sigma: jax.Array,
    noise_levels: tuple[float, float] | None = None,
) -> jax.Array:
    """Monte Carlo denoising loss on one batch.

    Fixed-sigma networks (``sigma`` a scalar): the plain squared error, summed over
    coordinates and averaged over the batch::

        (1/B) sum_b || x_b - xhat(x_b + sigma eps_b) ||^2

    Noise-conditional networks (``sigma = [lo, hi]``): ``s_b`` is drawn log-uniformly
    on ``[lo, hi]`` per example (with ``noise_levels = (m, v)``: ``ln s_b ~ N(m, v^2)``
    truncated to ``[ln lo, ln hi]``, EDM's log-normal restricted to the range), the
    network is called as ``model(y, s)`` with ``s`` of shape ``(B,)``, and each error is weighted by ``1 / c_out(s_b)^2`` with the model's
    ``sigma_data`` (1 when it has none; EDM weighting: it makes the regression target
    of the raw network unit-scale at every noise level, so small noise levels are not
    drowned out)::

        (1/B) sum_b || x_b - xhat(x_b + s_b eps_b, s_b) ||^2 / c_out(s_b)^2

    Parameters
    ----------
    model : nnx.Module
        A ``Denoiser``, or any module with ``__call__(y)`` (fixed sigma) or
        ``__call__(y, s)`` (noise-conditional).
    batch : array, shape (B, *event_shape)
        Clean samples.
    key : PRNG key
    sigma : array, shape () or (2,)
    noise_levels : (float, float), optional
        Mean and standard deviation of ``ln s`` (noise-conditional networks); default
        log-uniform.

    Returns
    -------
    scalar array
    """
    key_s, key_eps = jax.random.split(key)
    eps = _standard_normal(key_eps, batch.shape, batch.dtype)
    event_axes = tuple(range(1, batch.ndim))
    expand = (slice(None),) + (None,) * len(event_axes)
    if is_noise_conditional(model):
        log_lo, log_hi = jnp.log(sigma[0]), jnp.log(sigma[1])
        if noise_levels is None:
            u = jax.random.uniform(key_s, batch.shape[:1], batch.dtype)
            s = jnp.exp(log_lo + u * (log_hi - log_lo))
        else:
            m, v = noise_levels
            z = jax.random.truncated_normal(
                key_s, (log_lo - m) / v, (log_hi - m) / v, batch.shape[:1], batch.dtype
            )
            s = jnp.exp(m + v * z)
        xhat = model(batch + s[expand] * eps, s)
        weight = 1.0 / edm_preconditioning(s, getattr(model, "sigma_data", 1.0))[1] ** 2
    else:
        xhat = model(batch + sigma * eps)
        weight = 1.0
    return jnp.mean(weight * jnp.sum((batch - xhat) ** 2, axis=event_axes))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DenoisingLoss:
    """The objective of ``train_denoiser`` for ``fit``: ``loss_fn`` at noise ``sigma``.

    ``objective(model, batch, k_t)`` draws the noise from ``split(k_t)[1]``. A JAX
    pytree: ``sigma`` is traced, ``noise_levels`` is static.

    Attributes
    ----------
    sigma : float or (float, float)
        Training noise level; a range ``(lo, hi)`` for a noise-conditional network.
    noise_levels : (float, float), optional
        Mean and standard deviation of ``ln s`` for a range (see ``loss_fn``);
        default log-uniform.
    """

    sigma: Any
    noise_levels: tuple[float, float] | None = jax.tree.static(default=None)
    format: ClassVar[str] = FORMAT

    def __post_init__(self) -> None:
        values = self.sigma if isinstance(self.sigma, (tuple, list)) else (self.sigma,)
        if all(isinstance(v, numbers.Real) and not isinstance(v, jax.Array) for v in values):
            # as built by the user (JAX rebuilds it with arrays and placeholders)
            object.__setattr__(self, "sigma", _valid_sigma(self.sigma))
            object.__setattr__(self, "noise_levels", _valid_noise_levels(self.sigma, self.noise_levels))

    def __call__(self, model: nnx.Module, batch: jax.Array, key: jax.Array) -> jax.Array:
        """``loss_fn`` on ``batch`` with the noise of ``split(key)[1]``."""
        sigma = jnp.asarray(self.sigma, batch.dtype)
        return loss_fn(model, batch, jax.random.split(key)[1], sigma, self.noise_levels)

    def prepare(self, model: nnx.Module) -> None:
        """Check that ``sigma`` suits ``model``; a fixed-sigma ``Denoiser`` gets
        ``model.sigma = sigma``."""
        _valid_noise_levels(_valid_sigma(self.sigma), self.noise_levels)
        _check_sigma(model, self.sigma)
        if isinstance(model, Denoiser) and not model.noise_conditional:
            model.sigma = self.sigma

    @property
    def settings(self) -> dict[str, Any]:
        """``sigma`` and ``noise_levels`` as JSON, recorded with the training config."""
        return {
            "sigma": list(self.sigma) if isinstance(self.sigma, tuple) else self.sigma,
            "noise_levels": None if self.noise_levels is None else list(self.noise_levels),
        }

    def metadata(self, model: nnx.Module) -> dict[str, Any]:
        """The denoiser entries of each checkpoint: ``sigma`` and ``noise_conditional``."""
        return {"sigma": self.settings["sigma"], "noise_conditional": is_noise_conditional(model)}


@functools.partial(nnx.jit, static_argnames=("noise_levels",))
def train_step(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    batch: jax.Array,
    key: jax.Array,
    sigma: jax.Array,
    noise_levels: tuple[float, float] | None = None,
) -> jax.Array:
    """One optimizer step on ``loss_fn``; updates ``model`` and ``optimizer`` in place."""
    loss, grads = nnx.value_and_grad(loss_fn)(model, batch, key, sigma, noise_levels)
    optimizer.update(model, grads)
    return loss


@functools.partial(nnx.jit, static_argnames=("ema_decay", "noise_levels"))
def train_on_batch(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    ema_model: nnx.Module,
    batch: jax.Array,
    key: jax.Array,
    step: jax.Array,
    sigma: jax.Array,
    *,
    ema_decay: float,
    noise_levels: tuple[float, float] | None = None,
) -> jax.Array:
    """Step ``step`` of training on a given batch: ``fit_step`` with ``DenoisingLoss``.

    The noise comes from ``fold_in(key, step)`` (the second of its two splits), as in
    ``train_iteration``; the EMA decay is warmed up as
    ``min(ema_decay, (1 + t) / (10 + t))``.
    """
    return fit_step(model, optimizer, ema_model, DenoisingLoss(sigma, noise_levels), None, batch, key,
                    step, batch_size=batch.shape[0], ema_decay=ema_decay)


@functools.partial(
    nnx.jit, static_argnames=("batch_size", "ema_decay", "batch_sharding", "noise_levels")
)
def train_iteration(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    ema_model: nnx.Module,
    data: jax.Array,
    key: jax.Array,
    step: jax.Array,
    sigma: jax.Array,
    *,
    batch_size: int,
    ema_decay: float,
    batch_sharding: NamedSharding | None = None,
    noise_levels: tuple[float, float] | None = None,
) -> jax.Array:
    """Step ``step`` of ``train_denoiser`` on the array ``data`` (``fit_step`` with
    ``DenoisingLoss``).

    The batch is ``batch_size`` indices drawn uniformly with replacement, and every
    random number of step ``t`` comes from ``fold_in(key, t)`` (batch indices from its
    first split, noise from its second), so a run is a deterministic function of the
    key and resuming at any step reproduces it. With ``batch_sharding`` the batch is
    split over devices (data parallelism).
    """
    return fit_step(model, optimizer, ema_model, DenoisingLoss(sigma, noise_levels), data, None, key,
                    step, batch_size=batch_size, ema_decay=ema_decay, batch_sharding=batch_sharding)


@nnx.jit
def _squared_errors(model: nnx.Module, x: jax.Array, eps: jax.Array, s: jax.Array) -> jax.Array:
    y = x + s * eps
    xhat = model(y, jnp.full(x.shape[:1], s)) if is_noise_conditional(model) else model(y)
    return jnp.sum((x - xhat) ** 2, axis=tuple(range(1, x.ndim)))


def denoising_errors(
    model: nnx.Module,
    data: Any,
    sigma: float,
    *,
    key: jax.Array,
    batch_size: int = 1024,
) -> np.ndarray:
    """Per-example squared errors ``||x - xhat(x + sigma eps)||^2`` of a denoiser.

    ``eps = jax.random.normal(key, (N, prod(event_shape))).reshape(data.shape)``
    (``jax.random.normal(key, data.shape)`` for vectors), so the same key gives
    the same noise to any other denoiser (e.g. the exact Bayes denoiser). Their mean
    estimates the denoising risk; its standard error is ``std / sqrt(N)``.

    Parameters
    ----------
    model : nnx.Module
        A fixed-sigma network is called as ``model(y)`` (``sigma`` then only sets the
        noise added), a noise-conditional one as ``model(y, s)`` with ``s`` of shape
        ``(batch,)`` filled with ``sigma``.
    data : array, shape (N, *event_shape)
        Clean samples.
    sigma : float
        Noise level.
    key : PRNG key
    batch_size : int
        Examples per jitted evaluation call.

    Returns
    -------
    np.ndarray, shape (N,)
    """
    data = _check_data(model, data, "data")
    positive("sigma", sigma)
    eps = np.asarray(_standard_normal(key, data.shape, jax.dtypes.canonicalize_dtype(data.dtype)))
    sharding = jax.tree.leaves(nnx.state(model, nnx.Param))[0].sharding
    s = jax.device_put(jnp.asarray(sigma, eps.dtype), sharding)
    errors = [
        _squared_errors(
            model,
            jax.device_put(data[i : i + batch_size].astype(eps.dtype), sharding),
            jax.device_put(eps[i : i + batch_size], sharding),
            s,
        )
        for i in range(0, data.shape[0], batch_size)
    ]
    return np.concatenate([np.asarray(e) for e in errors])


# ---------------------------------------------------------------------------
# Validation


def _valid_sigma(sigma: Any) -> float | tuple[float, float]:
    """``sigma`` as a float, or as a range ``(lo, hi)`` with ``0 < lo < hi``."""
    if isinstance(sigma, (tuple, list)):
        return positive_range("sigma", sigma, strict=True)
    return positive("sigma", sigma)


def _valid_noise_levels(sigma: Any, noise_levels: Any) -> tuple[float, float] | None:
    """``noise_levels`` as ``(mean, std)`` of ``ln s`` with ``std > 0``, for a range ``sigma``."""
    if noise_levels is not None and not isinstance(sigma, tuple):
        raise ValueError("noise_levels needs a noise-conditional network and a sigma range (lo, hi)")
    if noise_levels is None:
        return None
    levels = tuple(float(v) for v in noise_levels)
    if len(levels) != 2 or not (math.isfinite(levels[0]) and levels[1] > 0):
        raise ValueError(f"noise_levels must be (mean, std) of ln s with std > 0, got {levels!r}")
    return levels


def _check_sigma(model: nnx.Module, sigma: float | tuple[float, float]) -> None:
    """``ValueError`` unless the (valid) ``sigma`` suits ``model``: a range for a
    noise-conditional network, else a float equal to ``model.sigma`` if it has one."""
    if isinstance(sigma, tuple):
        if not is_noise_conditional(model):
            raise ValueError(
                f"sigma={sigma!r} is a range but the model is a fixed-sigma network: pass a "
                "float, or use a model called as model(y, s)"
            )
        return
    if is_noise_conditional(model):
        raise ValueError(
            f"the model is noise-conditional: pass a noise range sigma=(lo, hi), not {sigma!r}"
        )
    if getattr(model, "sigma", None) is not None and not math.isclose(model.sigma, sigma, rel_tol=1e-6):
        raise ValueError(
            f"the model was built for sigma={model.sigma} but training asked for sigma={sigma}"
        )


def _check_data(model: nnx.Module, data: Any, name: str) -> np.ndarray:
    data = np.asarray(data)
    if not np.issubdtype(data.dtype, np.floating):
        raise TypeError(
            f"{name} must be floating point, got dtype {data.dtype} (scale integer pixels, "
            "e.g. data / 255)"
        )
    event_ndim = getattr(model, "event_ndim", None)
    if data.ndim < 2 or (event_ndim is not None and data.ndim != 1 + event_ndim):
        raise ValueError(
            f"{name} must have shape (N, *event_shape) with {event_ndim or 'at least 1'} "
            f"event dimension(s) for {type(model).__name__}, got shape {data.shape}"
        )
    if data.shape[0] < 1:
        raise ValueError(f"{name} is empty")
    if hasattr(model, "check_event_shape"):
        model.check_event_shape(tuple(data.shape[1:]))
    if not np.all(np.isfinite(data)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return data


# ---------------------------------------------------------------------------
# Training


def train_denoiser(
    model: nnx.Module,
    data: Any,
    sigma: float | tuple[float, float],
    *,
    steps: int,
    batch_size: int = 128,
    noise_levels: tuple[float, float] | None = None,
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float = 1e-3,
    warmup_steps: int | None = None,
    grad_clip: float | None = 1.0,
    weight_decay: float = 1e-4,
    ema_decay: float = 0.999,
    eval_data: Any = None,
    eval_every: int | None = None,
    eval_sigmas: Any = None,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    keep_checkpoints: int = 2,
    overwrite: bool = False,
    normalisation: Mapping[str, Any] | None = None,
    progress_bar: bool = True,
    callback: Callable[[int, dict[str, Any]], None] | None = None,
    mesh: Mesh | None = None,
) -> TrainResult:
    """Train a denoiser by least squares, ``min E||x - xhat(x + s eps)||^2``.

    ``fit`` with ``DenoisingLoss(sigma, noise_levels)`` and a ``TrainConfig`` of the
    settings below; the held-out MSE is its ``Evaluation``. Each step takes ``batch_size`` clean samples (drawn uniformly with replacement
    from an array ``data``, or the next batch of an iterable ``data``), adds noise,
    takes an optimizer step on ``loss_fn`` and updates an EMA of the weights. With
    more than one local device (or a given ``mesh``) the batch is sharded over the
    mesh axis ``'data'`` and the weights are replicated.

    With ``checkpoint_dir``, checkpoints are written every ``checkpoint_every`` steps
    and at the end. If the directory already holds a run with the same settings,
    training resumes from its latest intact checkpoint (weights, optimizer state, EMA,
    step, loss history; the random stream is a function of ``seed`` and the step) and
    ends with the same result as an uninterrupted run. A larger ``steps`` continues a
    run, finished or not: the default learning-rate schedule is stretched to the new
    ``steps`` and the metadata's ``train.continued_from`` lists the earlier targets.
    A damaged latest checkpoint is skipped with a warning; temporary folders left by a
    killed save are removed. A folder that holds a saved model (``save_checkpoint``)
    or a run with other settings is refused unless ``overwrite=True``, which deletes
    those checkpoints first; a folder inside the installed package is always refused.

    Parameters
    ----------
    model : nnx.Module
        Network to train (in place): an ``MLP`` or ``UNet``, or any Flax NNX module
        called as ``model(y)`` (fixed sigma) or ``model(y, s)`` with ``s`` of shape
        ``(B,)`` (noise-conditional). A ``Denoiser`` with fixed sigma gets
        ``model.sigma = sigma``. Checkpointing a class of your own needs
        ``register_architecture`` first.
    data : array, shape (N, *event_shape), or iterable of arrays (batch_size, *event_shape)
        Clean training samples (floating point, finite): one array, or an iterable of
        batches (a generator, a Grain or tf.data pipeline; anything ``np.asarray``
        converts) yielding at least ``steps`` batches. A resumed run reads an iterable
        from where it stands: position it at the resumed step for an exact resume. On
        a ``mesh`` over several processes an iterable yields each process's rows of
        every batch (``batch_size / jax.process_count()`` on a mesh of
        ``jax.devices()``), or pass ``numpyro_wjs.nn.fit.process_batches(x, config)``
        (``config``: a ``TrainConfig`` with this ``steps``, ``batch_size`` and ``seed``):
        each process reads only its rows of the batches drawn from ``x``.
    sigma : float or (float, float)
        Training noise level; a range ``(lo, hi)`` for a noise-conditional network,
        sampled log-uniformly per example.
    steps : int
        Total number of optimizer steps.
    batch_size : int
        Examples per step (divisible by the number of devices of the mesh).
    noise_levels : (float, float), optional
        Noise-conditional networks: mean and standard deviation of ``ln s``, drawn
        from a normal truncated to ``sigma``'s range (EDM's log-normal); default
        log-uniform on the range.
    optimizer : optax.GradientTransformation, optional
        Replaces the default AdamW (``learning_rate``, ``warmup_steps``, ``grad_clip``
        and ``weight_decay`` then play no role).
    learning_rate : float
        Peak learning rate of the default schedule: linear warmup from 0, then cosine
        decay to ``0.01 * learning_rate`` at ``steps``.
    warmup_steps : int, optional
        Warmup length; default ``min(1000, steps // 10)`` (that of the run in
        ``checkpoint_dir`` when continuing one).
    grad_clip : float or None
        Global-norm gradient clipping threshold (``None``: no clipping).
    weight_decay : float
        AdamW decoupled weight decay.
    ema_decay : float
        EMA decay in ``[0, 1)``, warmed up as ``min(ema_decay, (1 + t) / (10 + t))``.
    eval_data : array, optional
        Held-out clean samples; the EMA network's mean squared error on them (fixed
        noise from ``seed``) is recorded every ``eval_every`` steps and at the end, and
        shown in the progress bar and the ``numpyro_wjs.nn.fit`` log.
    eval_every : int, optional
        Default ``max(1, steps // 10)``.
    eval_sigmas : sequence of float, optional
        Noise levels of the held-out MSE; default ``sigma``, or three levels spread
        geometrically over its range.
    seed : int
        Seed of all randomness (batches, noise, evaluation noise).
    checkpoint_dir : str or Path, optional
        Directory of training checkpoints (created if missing).
    checkpoint_every : int, optional
        Default ``max(1, steps // 10)``.
    keep_checkpoints : int
        Number of most recent checkpoints kept.
    overwrite : bool
        Delete the checkpoints in ``checkpoint_dir`` (a saved model or another run)
        and train from scratch.
    normalisation : mapping, optional
        JSON-serialisable description of the data scaling (e.g.
        ``{"pixel_range": [0, 1]}``), stored in the checkpoint metadata.
    progress_bar : bool
        Show a tqdm bar with the running loss and the latest held-out MSE; a run in
        ``checkpoint_dir`` that is already at ``steps`` prints one line saying so instead.
    callback : callable, optional
        Called as ``callback(step, metrics)`` every 50 steps, at every evaluation and
        at the end; ``metrics["loss"]`` is the mean loss of the last 50 steps,
        ``metrics["images_per_second"]`` the training throughput since the previous
        call and, at evaluations, ``metrics["heldout_mse"]`` maps each evaluation noise
        level to the held-out MSE.
    mesh : jax.sharding.Mesh, optional
        Device mesh with an axis ``'data'``; default: all local devices if more than one.
        A mesh over the devices of several processes (``jax.distributed``) trains
        data-parallel across them; see ``fit``.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        For invalid settings or data; ``CheckpointError`` for an incompatible run, or
        when no checkpoint in ``checkpoint_dir`` is intact.
    FileExistsError
        If ``checkpoint_dir`` holds a saved model and ``overwrite`` is false.
    FloatingPointError
        If the loss becomes NaN or infinite.

    Examples
    --------
    >>> import numpy as np
    >>> from flax import nnx
    >>> from numpyro_wjs.nn.denoisers import MLP
    >>> x = np.random.default_rng(0).normal(size=(1000, 2)).astype("float32")
    >>> net = MLP(2, (32, 32), sigma_data=1.0, rngs=nnx.Rngs(0))
    >>> result = train_denoiser(net, x, 0.5, steps=100, progress_bar=False)
    >>> result.ema_model(np.zeros(2, "float32")).shape
    (2,)
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(
            f"model must be a Flax NNX module called as model(y) or model(y, s), got {type(model)}"
        )
    config = TrainConfig(
        steps=steps, batch_size=batch_size, learning_rate=learning_rate, warmup_steps=warmup_steps,
        grad_clip=grad_clip, weight_decay=weight_decay, ema_decay=ema_decay, seed=seed,
    )
    sigma = _valid_sigma(sigma)
    _check_sigma(model, sigma)
    objective = DenoisingLoss(sigma, noise_levels)
    if isinstance(data, ProcessBatches):
        if not isinstance(data.arrays, np.ndarray):
            raise TypeError(f"process_batches for train_denoiser needs one array, got {type(data.arrays).__name__}")
        _check_data(model, data.arrays[:1], "data")  # the rows read are checked for NaN as they are read
    elif is_batch_stream(data):
        batches = iter(data)
        first = next(batches, None)
        if first is None:
            raise ValueError("data yielded no batches")
        data = itertools.chain([_check_data(model, first, "the first batch of data")], batches)
    else:
        data = _check_data(model, data, "data")
    check_json("normalisation", normalisation)
    if eval_sigmas is None:
        eval_sigmas = np.geomspace(sigma[0], sigma[1], 3) if isinstance(sigma, tuple) else [sigma]
    eval_sigmas = np.asarray(eval_sigmas, dtype=np.float64).reshape(-1)
    for s in eval_sigmas:
        positive("eval_sigmas", float(s))
    eval_every = positive_int("eval_every", eval_every or max(1, steps // 10))
    train_key, eval_key = jax.random.split(jax.random.key(config.seed))
    evaluation = None
    if eval_data is not None:
        eval_data = _check_data(model, eval_data, "eval_data")
        evaluation = Evaluation(
            score=lambda net: [
                denoising_errors(net, eval_data, float(s), key=eval_key).mean(dtype=np.float64)
                for s in eval_sigmas
            ],
            at=tuple(eval_sigmas.tolist()),
            every=eval_every,
        )
    result = fit(
        model, objective, data, config, [] if callback is None else [callback],
        evaluation=evaluation, optimizer=optimizer, key=train_key, checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints, overwrite=overwrite,
        metadata={"normalisation": normalisation}, mesh=mesh, progress_bar=progress_bar, desc="train",
    )
    return TrainResult(
        ema_model=result.ema_model,
        model=result.model,
        loss_history=result.loss_history,
        eval_steps=result.eval_steps,
        eval_sigmas=eval_sigmas,
        eval_mse=result.eval_values.reshape(len(result.eval_steps), len(eval_sigmas)),
    )


# ---------------------------------------------------------------------------
# Checkpoints


def save_checkpoint(
    path: str | Path,
    model: nnx.Module,
    *,
    optimizer: nnx.Optimizer | None = None,
    step: int | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Save a denoiser's weights and metadata so that ``load_denoiser`` rebuilds it.

    Parameters
    ----------
    path : str or Path
        New directory (must not exist).
    model : nnx.Module
        Network whose ``nnx.Param`` values are saved (for a trained model, pass the
        EMA network): an ``MLP``, a ``UNet`` or a class registered with
        ``register_architecture``.
    optimizer : nnx.Optimizer, optional
        Its state is saved as well (item ``train_state``).
    step : int, optional
        Training step, recorded in the metadata.
    metadata : mapping, optional
        Extra JSON-serialisable entries, e.g. ``sigma`` (a noise range for
        noise-conditional networks), ``data_shape``, ``normalisation``. They may not
        override the architecture, config, format or step entries.

    Returns
    -------
    Path
        The checkpoint directory.
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be a Flax NNX module, got {type(model)}")
    meta = network_metadata(model, FORMAT, step, {
        "noise_conditional": is_noise_conditional(model), "sigma": getattr(model, "sigma", None), **(metadata or {}),
    })
    items = {"weights": pure_params(model)}
    if optimizer is not None:
        items["train_state"] = {"optimizer": nnx.to_pure_dict(nnx.state(optimizer))}
    return save_network(path, items, meta)


def load_denoiser(path: str | Path) -> nnx.Module:
    """Rebuild a trained denoiser from a checkpoint directory alone.

    Parameters
    ----------
    path : str or Path
        A checkpoint directory, or a training ``checkpoint_dir`` (its newest intact
        checkpoint is used; a damaged newer one is skipped with a warning).

    Returns
    -------
    nnx.Module
        The network with the published (EMA) weights, ready to call: an ``MLP``, a
        ``UNet`` or a class registered with ``register_architecture``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist or holds no checkpoint.
    CheckpointError
        If the checkpoint is incomplete, corrupt, does not match its metadata, names
        an unregistered class, or is a classifier.
    """
    return load_network(path, FORMAT)[0]
