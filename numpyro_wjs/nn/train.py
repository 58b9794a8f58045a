"""Least-squares training of denoisers, and their checkpoints.

A denoiser ``xhat`` trained on (theory.md section 4)::

    L(theta) = E_{x ~ p_X, eps ~ N(0, I)} || x - xhat_theta(x + sigma eps) ||^2

estimates ``E[X | y]``, hence the score ``(xhat(y) - y) / sigma^2`` of the smoothed
density (Tweedie-Miyasawa). ``train_denoiser`` minimises a Monte Carlo estimate of
``L`` with AdamW, keeps an exponential moving average (EMA) of the weights, evaluates
held-out error, shards batches over several devices and checkpoints/resumes with
Orbax. ``load_denoiser`` rebuilds a trained network from a checkpoint directory
alone.

Checkpoint layout (one directory per checkpoint)::

    metadata.json   architecture, constructor kwargs, sigma, data shape,
                    normalisation, step, library version, training settings
    weights/        Orbax PyTree of the published (EMA) ``nnx.Param`` values
    train_state/    Orbax PyTree: raw weights, optimizer state, loss history
                    (training checkpoints; optimizer state only for save_checkpoint)

``train_denoiser(..., checkpoint_dir=d)`` writes ``d/step_00000100/`` etc. A
checkpoint directory is written under a temporary name and renamed when complete
(Ctrl-C waits for the save to end), so an interrupted save never looks like a
checkpoint. Any Flax NNX module called as ``model(y)`` or ``model(y, s)`` trains;
checkpoints name its class, which ``register_architecture`` makes loadable (the
package's ``MLP`` and ``UNet`` are registered).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.metadata
import inspect
import itertools
import json
import logging
import math
import re
import shutil
import signal
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from numpyro_wjs.nn.checkpoints import CheckpointError, write_metadata
from numpyro_wjs.nn.checkpoints import read_metadata as _read_json
from numpyro_wjs.nn.denoisers import MLP, Denoiser, UNet, edm_preconditioning

__all__ = [
    "CheckpointError",
    "TrainResult",
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

ARCHITECTURES: dict[str, type[nnx.Module]] = {"MLP": MLP, "UNet": UNet}
"""Network classes that checkpoints can name and ``load_denoiser`` can rebuild, by name.

Filled by ``register_architecture``; a checkpoint only names its class, so loading one
never imports or runs code chosen by the file.
"""
_PACKAGE_DIR = Path(__file__).resolve().parent.parent
_log = logging.getLogger(__name__)

FORMAT = "numpyro_wjs.denoiser"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")
_LOG_EVERY = 50


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
# Loss, step, EMA


def _standard_normal(key: jax.Array, shape: tuple[int, ...], dtype: Any) -> jax.Array:
    """``N(0, I)`` noise of ``shape = (N, *event)``, drawn as an ``(N, prod(event))`` matrix.

    2-D draws compile much faster on XLA:CPU than draws of image-shaped arrays.
    """
    return jax.random.normal(key, (shape[0], math.prod(shape[1:])), dtype).reshape(shape)


def _noise_conditional(model: nnx.Module) -> bool:
    """Whether ``model`` is called as ``model(y, s)`` rather than ``model(y)``.

    Its ``noise_conditional`` attribute when it has one (the package's denoisers), else
    whether its ``__call__`` takes a second positional parameter.
    """
    flag = getattr(model, "noise_conditional", None)
    if flag is not None:
        return bool(flag)
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = inspect.signature(model.__call__).parameters.values()
    return sum(p.kind in kinds for p in params) >= 2


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
    if _noise_conditional(model):
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


@nnx.jit
def ema_update(ema_model: nnx.Module, model: nnx.Module, decay: jax.Array) -> None:
    """``theta_ema <- decay * theta_ema + (1 - decay) * theta`` in place."""
    ema = nnx.state(ema_model, nnx.Param)
    params = nnx.state(model, nnx.Param)
    nnx.update(ema_model, jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params))


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
    """Step ``step`` of training on a given batch: ``train_step``, then ``ema_update``.

    The noise comes from ``fold_in(key, step)`` (the second of its two splits), as in
    ``train_iteration``; the EMA decay is warmed up as
    ``min(ema_decay, (1 + t) / (10 + t))``.
    """
    key_noise = jax.random.split(jax.random.fold_in(key, step))[1]
    loss = train_step(model, optimizer, batch, key_noise, sigma, noise_levels)
    decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
    ema_update(ema_model, model, decay)
    return loss


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
    """Step ``step`` of training: draw a batch from ``data``, then ``train_on_batch``.

    The batch is ``batch_size`` indices drawn uniformly with replacement, and every
    random number of step ``t`` comes from ``fold_in(key, t)`` (batch indices from its
    first split, noise from its second), so a run is a deterministic function of the
    key and resuming at any step reproduces it. With ``batch_sharding`` the batch is
    split over devices (data parallelism).
    """
    key_batch = jax.random.split(jax.random.fold_in(key, step))[0]
    batch = data[jax.random.randint(key_batch, (batch_size,), 0, data.shape[0])]
    if batch_sharding is not None:
        batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    return train_on_batch(
        model, optimizer, ema_model, batch, key, step, sigma,
        ema_decay=ema_decay, noise_levels=noise_levels,
    )


@nnx.jit
def _squared_errors(model: nnx.Module, x: jax.Array, eps: jax.Array, s: jax.Array) -> jax.Array:
    y = x + s * eps
    xhat = model(y, jnp.full(x.shape[:1], s)) if _noise_conditional(model) else model(y)
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
    _check_sigma_value(sigma)
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


def _check_sigma_value(sigma: Any) -> None:
    if not isinstance(sigma, (int, float, np.floating, np.integer)) or not (
        math.isfinite(sigma) and sigma > 0
    ):
        raise ValueError(f"sigma must be a finite positive number, got {sigma!r}")


def _check_sigma(model: nnx.Module, sigma: Any) -> float | tuple[float, float]:
    if isinstance(sigma, (tuple, list)):
        if len(sigma) != 2:
            raise ValueError(f"a sigma range must be a pair (lo, hi), got {sigma!r}")
        lo, hi = sigma
        _check_sigma_value(lo)
        _check_sigma_value(hi)
        if not lo < hi:
            raise ValueError(f"sigma range (lo, hi) needs lo < hi, got {sigma!r}")
        if not _noise_conditional(model):
            raise ValueError(
                f"sigma={sigma!r} is a range but the model is a fixed-sigma network: pass a "
                "float, or use a model called as model(y, s)"
            )
        return float(lo), float(hi)
    _check_sigma_value(sigma)
    if _noise_conditional(model):
        raise ValueError(
            f"the model is noise-conditional: pass a noise range sigma=(lo, hi), not {sigma!r}"
        )
    if getattr(model, "sigma", None) is not None and not math.isclose(model.sigma, sigma, rel_tol=1e-6):
        raise ValueError(
            f"the model was built for sigma={model.sigma} but training asked for sigma={sigma}"
        )
    return float(sigma)


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


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _data_mesh(mesh: Mesh | None, batch_size: int) -> Mesh | None:
    if mesh is None:
        devices = jax.local_devices()
        if len(devices) < 2:
            return None
        mesh = Mesh(np.array(devices), ("data",))
    if "data" not in mesh.axis_names:
        raise ValueError(f"mesh must have an axis named 'data', got axes {mesh.axis_names}")
    if batch_size % mesh.shape["data"]:
        raise ValueError(
            f"batch_size={batch_size} must be divisible by the {mesh.shape['data']} devices "
            "of the mesh's 'data' axis"
        )
    return mesh


# ---------------------------------------------------------------------------
# Training


@functools.lru_cache(maxsize=16)
def _default_optimizer(
    steps: int,
    learning_rate: float,
    warmup_steps: int,
    grad_clip: float | None,
    weight_decay: float,
) -> optax.GradientTransformation:
    """AdamW with linear warmup to ``learning_rate`` then cosine decay to 1% of it.

    Cached, so that equal settings give the same object and compiled steps are reused.
    """
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=max(steps, warmup_steps + 1),
        end_value=0.01 * learning_rate,
    )
    adamw = optax.adamw(schedule, weight_decay=weight_decay)
    if grad_clip is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(grad_clip), adamw)


def _is_batch_stream(data: Any) -> bool:
    """Whether ``data`` is an iterable of batches (generator, Grain or tf.data pipeline)
    rather than one array."""
    if isinstance(data, (np.ndarray, jax.Array, list, tuple)) or hasattr(data, "__array__"):
        return False
    return hasattr(data, "__iter__") or hasattr(data, "__next__")


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

    Each step takes ``batch_size`` clean samples (drawn uniformly with replacement
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
        from where it stands: position it at the resumed step for an exact resume.
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
        shown in the progress bar and the ``numpyro_wjs.nn.train`` log.
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
        Show a tqdm bar with the running loss and the latest held-out MSE.
    callback : callable, optional
        Called as ``callback(step, metrics)`` every 50 steps, at every evaluation and
        at the end; ``metrics["loss"]`` is the mean loss of the last 50 steps,
        ``metrics["images_per_second"]`` the training throughput since the previous
        call and, at evaluations, ``metrics["heldout_mse"]`` maps each evaluation noise
        level to the held-out MSE.
    mesh : jax.sharding.Mesh, optional
        Device mesh with an axis ``'data'``; default: all local devices if more than one.

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
    steps = _check_positive_int("steps", steps)
    batch_size = _check_positive_int("batch_size", batch_size)
    sigma = _check_sigma(model, sigma)
    batches = None
    if _is_batch_stream(data):
        batches = iter(data)
        first = next(batches, None)
        if first is None:
            raise ValueError("data yielded no batches")
        first = _check_data(model, first, "the first batch of data")
        batches = itertools.chain([first], batches)
        data_shape = first.shape[1:]
    else:
        data = _check_data(model, data, "data")
        data_shape = data.shape[1:]
    if eval_data is not None:
        eval_data = _check_data(model, eval_data, "eval_data")
    if noise_levels is not None:
        if not isinstance(sigma, tuple):
            raise ValueError("noise_levels needs a noise-conditional network and a sigma range (lo, hi)")
        noise_levels = tuple(float(v) for v in noise_levels)
        if len(noise_levels) != 2 or not (math.isfinite(noise_levels[0]) and noise_levels[1] > 0):
            raise ValueError(
                f"noise_levels must be (mean, std) of ln s with std > 0, got {noise_levels!r}"
            )
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}")
    if not (isinstance(learning_rate, (int, float)) and learning_rate > 0):
        raise ValueError(f"learning_rate must be positive, got {learning_rate!r}")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be positive or None, got {grad_clip!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be non-negative, got {weight_decay!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    eval_every = _check_positive_int("eval_every", eval_every or max(1, steps // 10))
    checkpoint_every = _check_positive_int(
        "checkpoint_every", checkpoint_every or max(1, steps // 10)
    )
    keep_checkpoints = _check_positive_int("keep_checkpoints", keep_checkpoints)
    mesh = _data_mesh(mesh, batch_size)
    _check_json("normalisation", normalisation)
    previous: dict[str, Any] = {}
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        _base_metadata(model, None)  # an unregistered class fails now, not after training
        _prepare_checkpoint_dir(checkpoint_dir, overwrite)
        previous = _previous_settings(checkpoint_dir)
    if warmup_steps is None:
        warmup_steps = previous.get("warmup_steps", min(1000, steps // 10))
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be a non-negative integer, got {warmup_steps!r}")

    if isinstance(model, Denoiser) and not model.noise_conditional:
        model.sigma = sigma
    if optimizer is None:
        tx = _default_optimizer(steps, learning_rate, warmup_steps, grad_clip, weight_decay)
    else:
        tx = optimizer
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    ema_model = nnx.clone(model)
    train_settings = {
        "sigma": list(sigma) if isinstance(sigma, tuple) else sigma,
        "steps": steps,
        "batch_size": batch_size,
        "seed": int(seed),
        "optimizer": "custom" if optimizer is not None else "adamw",
        "learning_rate": learning_rate,
        "warmup_steps": warmup_steps,
        "grad_clip": grad_clip,
        "weight_decay": weight_decay,
        "ema_decay": ema_decay,
        "num_examples": None if batches is not None else int(data.shape[0]),
    }
    train_settings["noise_levels"] = None if noise_levels is None else list(noise_levels)
    if eval_sigmas is None:
        eval_sigmas = np.geomspace(sigma[0], sigma[1], 3) if isinstance(sigma, tuple) else [sigma]
    eval_sigmas = np.asarray(eval_sigmas, dtype=np.float64).reshape(-1)
    for s in eval_sigmas:
        _check_sigma_value(float(s))

    start, losses, eval_steps, eval_mse = 0, [], [], []
    if checkpoint_dir is not None and _step_dirs(checkpoint_dir):
        start, losses, eval_steps, eval_mse = _newest_intact(
            checkpoint_dir,
            lambda path: _resume(path, model, opt, ema_model, train_settings, data_shape),
        )

    if mesh is not None:
        replicated = NamedSharding(mesh, PartitionSpec())
        batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    else:
        replicated = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        batch_sharding = None
    state = nnx.state((model, opt, ema_model))
    nnx.update((model, opt, ema_model), jax.device_put(state, replicated))
    if batches is None:
        data_device = jax.device_put(jnp.asarray(data), replicated)
        dtype = data_device.dtype
    else:
        dtype = jnp.asarray(first).dtype
    sigma_device = jax.device_put(jnp.asarray(sigma, dtype), replicated)
    train_key, eval_key = jax.random.split(jax.random.key(seed))
    if batches is None:
        iteration = functools.partial(
            nnx.cached_partial(train_iteration, model, opt, ema_model), data_device,
            batch_size=batch_size, ema_decay=ema_decay, batch_sharding=batch_sharding,
            noise_levels=noise_levels,
        )
    else:
        on_batch = functools.partial(
            nnx.cached_partial(train_on_batch, model, opt, ema_model),
            ema_decay=ema_decay, noise_levels=noise_levels,
        )

        def iteration(key: jax.Array, step: jax.Array, sigma: jax.Array) -> jax.Array:
            batch = next(batches, None)
            if batch is None:
                raise ValueError(
                    f"data ran out of batches at step {int(step)} of {steps}; pass an "
                    "iterable that yields at least `steps` batches (e.g. repeat the dataset)"
                )
            batch = _check_data(model, batch, f"batch {int(step)} of data")
            if batch.shape != (batch_size, *data_shape):
                raise ValueError(
                    f"batch {int(step)} of data has shape {batch.shape}, expected "
                    f"{(batch_size, *data_shape)} (batch_size, *event_shape); drop incomplete "
                    "batches (e.g. drop_remainder=True)"
                )
            return on_batch(jax.device_put(batch, batch_sharding or replicated), key, step, sigma)

    def evaluate(step: int) -> dict[str, float]:
        errors = [
            denoising_errors(ema_model, eval_data, float(s), key=eval_key).mean(dtype=np.float64)
            for s in eval_sigmas
        ]
        eval_steps.append(step)
        eval_mse.append(errors)
        return {f"{s:g}": float(e) for s, e in zip(eval_sigmas, errors)}

    pending: list[jax.Array] = []

    def flush(step: int) -> float:
        new = np.asarray(jax.device_get(pending), dtype=np.float64)
        pending.clear()
        if not np.all(np.isfinite(new)):
            bad = step - len(new) + int(np.argmin(np.isfinite(new)))
            raise FloatingPointError(
                f"training loss became {new[~np.isfinite(new)][0]} at step {bad}; lower "
                "learning_rate, enable grad_clip or check the data scaling"
            )
        losses.extend(new.tolist())
        return float(np.mean(losses[-_LOG_EVERY:]))

    postfix: dict[str, str] = {}
    last_time, last_step = time.perf_counter(), start
    with tqdm(total=steps, initial=start, disable=not progress_bar, desc="train") as bar:
        for step in range(start, steps):
            pending.append(iteration(train_key, jnp.int32(step), sigma_device))
            done = step + 1
            bar.update(1)
            evaluate_now = eval_data is not None and (done % eval_every == 0 or done == steps)
            save_now = checkpoint_dir is not None and (done % checkpoint_every == 0 or done == steps)
            if not (evaluate_now or save_now or done % _LOG_EVERY == 0 or done == steps):
                continue
            metrics: dict[str, Any] = {"loss": flush(done)}
            now = time.perf_counter()
            metrics["images_per_second"] = (done - last_step) * batch_size / max(now - last_time, 1e-9)
            last_time, last_step = now, done
            postfix["loss"] = f"{metrics['loss']:.4g}"
            postfix["img/s"] = f"{metrics['images_per_second']:.0f}"
            if evaluate_now:
                metrics["heldout_mse"] = evaluate(done)
                postfix["heldout_mse"] = "/".join(f"{v:.4g}" for v in metrics["heldout_mse"].values())
                _log.info(
                    "step %d: loss %s, %s images/s, held-out MSE %s",
                    done, postfix["loss"], postfix["img/s"], metrics["heldout_mse"],
                )
            bar.set_postfix(postfix)
            if callback is not None:
                callback(done, metrics)
            if save_now:
                _save_training_checkpoint(
                    checkpoint_dir, done, model, opt, ema_model, losses,
                    eval_steps, eval_sigmas, eval_mse, train_settings, data_shape,
                    normalisation, keep_checkpoints,
                )

    return TrainResult(
        ema_model=ema_model,
        model=model,
        loss_history=np.asarray(losses, dtype=np.float32),
        eval_steps=np.asarray(eval_steps, dtype=np.int64),
        eval_sigmas=eval_sigmas,
        eval_mse=np.asarray(eval_mse, dtype=np.float64).reshape(len(eval_steps), len(eval_sigmas)),
    )


# ---------------------------------------------------------------------------
# Checkpoints


def _library_version() -> str:
    try:
        return importlib.metadata.version("numpyro-wjs")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _check_json(name: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be JSON-serialisable (finite numbers): {err}") from err


def _pure_params(model: nnx.Module) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _abstract(tree: Any) -> Any:
    """Restore targets: shapes and dtypes of ``tree`` on the default device."""
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


@contextlib.contextmanager
def _interrupts_deferred():
    """Hold Ctrl-C (SIGINT) until the block ends, then deliver it.

    A checkpoint is then written whole or not at all, and Orbax's background threads
    are never cut off mid-save (which printed their tracebacks).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[Any, ...]] = []
    previous = signal.signal(signal.SIGINT, lambda *args: caught.append(args))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        signal.raise_signal(signal.SIGINT)  # to the handler the block displaced


def _file_digests(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under ``directory`` but ``metadata.json``, by relative path."""
    return {
        file.relative_to(directory).as_posix(): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(directory.rglob("*"))
        if file.is_file() and file.name != "metadata.json"
    }


def _write_checkpoint(path: Path, items: dict[str, Any], metadata: dict[str, Any]) -> Path:
    """Write ``items`` (Orbax PyTrees) and ``metadata.json`` atomically to ``path``."""
    path = Path(path).absolute()
    if path.exists():
        raise FileExistsError(f"checkpoint path {path} already exists; choose a new path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    with _interrupts_deferred():
        tmp.mkdir()
        try:
            with ocp.StandardCheckpointer() as ckptr:
                for name, tree in items.items():
                    ckptr.save(tmp / name, jax.device_get(tree))
                ckptr.wait_until_finished()
            files = _file_digests(tmp)
            write_metadata(tmp / "metadata.json", {**metadata, "items": sorted(items), "files": files})
            tmp.rename(path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return path


def register_architecture(cls: type[nnx.Module], name: str | None = None) -> type[nnx.Module]:
    """Let checkpoints name the network class ``cls`` and ``load_denoiser`` rebuild it.

    A checkpoint stores the class's registered name and ``model.config`` (a dict of
    JSON-serialisable constructor keyword arguments; ``{}`` when the module has no
    ``config``); loading calls ``cls(**config, rngs=nnx.Rngs(0))`` and restores the
    weights. Only classes registered in the running program can be rebuilt: a
    checkpoint never names code to import. Call it (or use it as a class decorator)
    before saving or loading. ``MLP`` and ``UNet`` are registered already.

    Parameters
    ----------
    cls : type
        A ``flax.nnx.Module`` subclass whose constructor accepts ``**config`` and
        ``rngs``.
    name : str, optional
        Name stored in checkpoints; default ``cls.__name__``.

    Returns
    -------
    type
        ``cls`` (so that it works as a decorator).

    Raises
    ------
    TypeError
        If ``cls`` is not an NNX module class.
    ValueError
        If ``name`` is taken by another class.
    """
    if not (isinstance(cls, type) and issubclass(cls, nnx.Module)):
        raise TypeError(f"register_architecture needs an nnx.Module subclass, got {cls!r}")
    name = cls.__name__ if name is None else name
    if ARCHITECTURES.setdefault(name, cls) is not cls:
        raise ValueError(
            f"architecture name {name!r} is taken by {ARCHITECTURES[name]}; pass another name="
        )
    return cls


def _architecture_name(model: nnx.Module) -> str:
    found = [name for name, cls in ARCHITECTURES.items() if cls is type(model)]
    if not found:
        raise TypeError(
            f"cannot checkpoint {type(model).__qualname__}: register it first with "
            f"numpyro_wjs.nn.train.register_architecture({type(model).__name__})"
        )
    return found[0]


def _base_metadata(model: nnx.Module, step: int | None) -> dict[str, Any]:
    config = getattr(model, "config", {})
    _check_json(f"{type(model).__name__}.config", config)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": _library_version(),
        "architecture": _architecture_name(model),
        "config": config,
        "noise_conditional": _noise_conditional(model),
        "sigma": getattr(model, "sigma", None),
        "step": step,
    }


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
    meta = _base_metadata(model, step)
    extra = dict(metadata or {})
    reserved = {"format", "format_version", "architecture", "config", "step", "items", "files", "train"}
    clash = sorted(set(extra) & reserved)
    if clash:
        raise ValueError(f"metadata may not set the reserved entries {clash}")
    _check_json("metadata", extra)
    meta.update(extra)
    items = {"weights": _pure_params(model)}
    if optimizer is not None:
        items["train_state"] = {"optimizer": nnx.to_pure_dict(nnx.state(optimizer))}
    return _write_checkpoint(Path(path), items, meta)


def _save_training_checkpoint(
    directory: Path, step: int, model: nnx.Module, opt: nnx.Optimizer, ema_model: nnx.Module,
    losses: list[float], eval_steps: list[int], eval_sigmas: np.ndarray,
    eval_mse: list[list[float]], train_settings: dict[str, Any],
    data_shape: tuple[int, ...], normalisation: Mapping[str, Any] | None, keep: int,
) -> None:
    meta = _base_metadata(ema_model, step)
    meta.update(
        sigma=train_settings["sigma"],
        data_shape=list(data_shape),
        normalisation=normalisation,
        train=train_settings,
        eval_history={
            "steps": list(eval_steps),
            "sigmas": eval_sigmas.tolist(),
            "mse": [list(map(float, row)) for row in eval_mse],
        },
    )
    items = {
        "weights": _pure_params(ema_model),
        "train_state": {
            "params": _pure_params(model),
            "optimizer": nnx.to_pure_dict(nnx.state(opt)),
            "losses": np.asarray(losses, dtype=np.float32),
        },
    }
    path = directory / f"step_{step:08d}"
    if path.exists():  # a damaged checkpoint that resuming skipped
        shutil.rmtree(path)
    _write_checkpoint(path, items, meta)
    for old in _step_dirs(directory)[:-keep]:
        shutil.rmtree(old[1])


def _step_dirs(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in directory.iterdir()
        if p.is_dir() and (m := _STEP_DIR.match(p.name))
    ]
    return sorted(found)


def _is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is one checkpoint (rather than a folder of ``step_*`` ones)."""
    return (path / "metadata.json").exists() or (path / "weights").exists()


def _locate(path: str | Path) -> list[Path]:
    """The checkpoints ``path`` names, to try in order: itself, or its ``step_*``
    checkpoints from the newest."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: the path does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file; a checkpoint is a directory")
    if _is_checkpoint(path):
        return [path]
    found = [p for _, p in reversed(_step_dirs(path))]
    if not found:
        raise FileNotFoundError(
            f"no checkpoint in {path}: expected metadata.json and weights/, or step_* "
            "checkpoint directories"
        )
    return found


class _IncompatibleCheckpoint(CheckpointError):
    """An intact training checkpoint of another run (other settings): never skipped."""


def _newest_intact(path: str | Path, use: Callable[[Path], Any]) -> Any:
    """``use(checkpoint)`` on the newest checkpoint ``path`` names that ``use`` can read.

    A damaged checkpoint is skipped with a warning; if none can be read, the newest
    one's ``CheckpointError`` is raised. ``_IncompatibleCheckpoint`` is raised at once.
    """
    candidates = _locate(path)
    first_error = None
    for checkpoint in candidates:
        try:
            return use(checkpoint)
        except _IncompatibleCheckpoint:
            raise
        except CheckpointError as err:
            first_error = first_error or err
            if checkpoint is not candidates[-1]:
                warnings.warn(f"skipping damaged checkpoint ({err})", stacklevel=3)
    raise first_error


def check_outside_package(directory: Path, name: str) -> None:
    """Raise ``ValueError`` if ``directory`` (the argument ``name``) lies inside the
    installed package, which training must never write into."""
    if Path(directory).resolve().is_relative_to(_PACKAGE_DIR):
        raise ValueError(
            f"{name} {directory} is inside the installed numpyro_wjs package; choose a folder outside it"
        )


def _prepare_checkpoint_dir(directory: Path, overwrite: bool) -> None:
    """Refuse (or, with ``overwrite``, clear) a training folder that is not ours to resume.

    Removes the temporary folders of saves that were killed midway.
    """
    check_outside_package(directory, "checkpoint_dir")
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"checkpoint_dir {directory} exists and is not a directory")
    if not directory.is_dir():
        return
    for tmp in directory.glob(".step_*.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    if not overwrite:
        if _is_checkpoint(directory):
            raise FileExistsError(
                f"{directory} holds a saved model that training would hide from "
                "load_denoiser; choose another folder or pass overwrite=True (CLI: --overwrite)"
            )
        return
    for entry in ["metadata.json", "weights", "train_state", *(p.name for _, p in _step_dirs(directory))]:
        target = directory / entry
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def _previous_settings(directory: Path) -> dict[str, Any]:
    """Training settings of the newest readable checkpoint in ``directory`` (or ``{}``)."""
    for _, path in reversed(_step_dirs(directory)):
        try:
            train = checkpoint_metadata(path).get("train")
        except (CheckpointError, FileNotFoundError):
            continue
        return train if isinstance(train, dict) else {}
    return {}


def checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """Validated ``metadata.json`` of a checkpoint (or of the latest one in a training dir).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist or holds no checkpoint.
    CheckpointError
        If the metadata is missing, not valid JSON, or lacks required entries, or if a
        listed item is missing.
    """
    return _newest_intact(path, _checkpoint_metadata)


def _checkpoint_metadata(path: Path) -> dict[str, Any]:
    meta_path = path / "metadata.json"
    if not meta_path.exists():
        raise CheckpointError(f"incomplete checkpoint {path}: weights without metadata.json")
    meta = _read_json(meta_path)
    if meta.get("format") == "numpyro_wjs.DigitClassifier":
        raise CheckpointError(
            f"{path} holds a digit classifier, not a denoiser: load it with "
            "numpyro_wjs.nn.classifier.load_classifier"
        )
    required = {
        "format": str,
        "format_version": int,
        "architecture": str,
        "config": dict,
        "items": list,
    }
    for key, kind in required.items():
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(
                f"corrupt checkpoint {path}: metadata.json entry {key!r} is missing or not "
                f"a {kind.__name__}"
            )
    if meta["format"] != FORMAT or meta["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format {meta['format']!r} version {meta['format_version']}; "
            f"this library reads {FORMAT!r} up to version {FORMAT_VERSION}"
        )
    if meta["architecture"] not in ARCHITECTURES:
        raise CheckpointError(
            f"checkpoint {path} names unknown architecture {meta['architecture']!r} (registered: "
            f"{sorted(ARCHITECTURES)}); register its class with register_architecture first"
        )
    if "weights" not in meta["items"]:
        raise CheckpointError(f"corrupt checkpoint {path}: metadata.json lists no weights item")
    for item in meta["items"]:
        if not (path / str(item)).is_dir():
            raise CheckpointError(f"incomplete checkpoint {path}: metadata.json without {item}/")
    # Checked before Orbax reads anything: it reports damaged files in pages of log.
    recorded = meta.get("files", {})
    if not isinstance(recorded, dict):
        raise CheckpointError(f"corrupt checkpoint {path}: metadata.json entry 'files' is not a dict")
    found = _file_digests(path) if recorded else {}
    damaged = sorted(name for name, digest in recorded.items() if found.get(name) != digest)
    if damaged:
        raise CheckpointError(
            f"damaged checkpoint {path}: {damaged[0]} is missing or differs from its recorded "
            f"SHA-256 ({len(damaged)} file(s) in all)"
        )
    meta["path"] = str(path)
    return meta


def _shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{"a/0/kernel": (shape, dtype)}`` for every array of a (metadata) PyTree."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys): (
            tuple(leaf.shape),
            np.dtype(leaf.dtype),
        )
        for keys, leaf in flat
    }


@contextlib.contextmanager
def _quiet_orbax():
    """Silence Orbax's (absl) log while reading: a damaged file is reported once, by us."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        absl.setLevel(level)


def _restore(path: Path, target: Any) -> Any:
    """Restore an Orbax PyTree into the structure, shapes and dtypes of ``target``.

    The stored shapes are compared with the target's before any array is read, so a
    mismatch is reported by name and nothing is half restored.
    """
    abstract = _abstract(target)
    try:
        with _quiet_orbax(), ocp.StandardCheckpointer() as ckptr:
            item_metadata = ckptr.metadata(path.absolute()).item_metadata
            if item_metadata is None:
                raise CheckpointError(
                    f"cannot restore {path}: its Orbax metadata is missing or corrupt"
                )
            stored = _shapes(item_metadata.tree)
            wanted = _shapes(abstract)
            for name in sorted(set(stored) | set(wanted)):
                if stored.get(name) != wanted.get(name):
                    raise CheckpointError(
                        f"checkpoint {path} does not match the network: array {name!r} is "
                        f"{stored.get(name, 'missing')} in the checkpoint, the network needs "
                        f"{wanted.get(name, 'nothing')} (shape, dtype)"
                    )
            restored = ckptr.restore(path.absolute(), abstract)
    except CheckpointError:
        raise
    except Exception as err:  # Orbax/TensorStore raise many types for damaged files
        raise CheckpointError(f"cannot restore {path}: {type(err).__name__}: {err}") from err
    for name, leaf in jax.tree_util.tree_flatten_with_path(restored)[0]:
        values = np.asarray(leaf)
        if np.issubdtype(values.dtype, np.floating) and not np.all(np.isfinite(values)):
            raise CheckpointError(
                f"checkpoint {path} holds non-finite values in {jax.tree_util.keystr(name)}"
            )
    return restored


def _build(meta: dict[str, Any]) -> nnx.Module:
    """The network named by the metadata, with placeholder (abstract) weights."""
    cls = ARCHITECTURES[meta["architecture"]]
    try:
        return nnx.eval_shape(lambda: cls(**meta["config"], rngs=nnx.Rngs(0)))
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint {meta['path']} has an invalid {meta['architecture']} config "
            f"{meta['config']}: {err}"
        ) from err


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
    return _newest_intact(path, _load)


def _load(path: Path) -> nnx.Module:
    meta = _checkpoint_metadata(path)
    abstract = _build(meta)
    graphdef, state = nnx.split(abstract)
    weights = _restore(Path(meta["path"]) / "weights", nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, weights)
    return nnx.merge(graphdef, state)


def _resume(
    path: Path,
    model: nnx.Module,
    opt: nnx.Optimizer,
    ema_model: nnx.Module,
    train_settings: dict[str, Any],
    data_shape: tuple[int, ...],
) -> tuple[int, list[float], list[int], list[list[float]]]:
    """Load a training checkpoint into ``model``, ``opt`` and ``ema_model``.

    A checkpoint of a run with fewer or more ``steps`` is continued: its earlier
    targets are recorded in ``train_settings["continued_from"]``.
    """
    meta = _checkpoint_metadata(path)
    if not isinstance(meta.get("train"), dict) or "train_state" not in meta["items"]:
        raise CheckpointError(f"checkpoint {path} was not written by train_denoiser; cannot resume")
    compared = [k for k in train_settings if k not in ("steps", "continued_from")]
    expected = {
        "architecture": _architecture_name(model),
        "config": getattr(model, "config", {}),
        "data_shape": list(data_shape),
        **{f"train.{k}": train_settings[k] for k in compared},
    }
    found = {
        "architecture": meta["architecture"],
        "config": meta["config"],
        "data_shape": meta.get("data_shape"),
        **{f"train.{k}": meta["train"].get(k) for k in compared},
    }
    differ = [k for k in expected if found[k] != expected[k]]
    if differ:
        details = "; ".join(f"{k}: checkpoint {found[k]!r}, now {expected[k]!r}" for k in differ)
        raise _IncompatibleCheckpoint(
            f"cannot resume from {path}: settings differ ({details}); use the checkpoint's "
            "settings, a new checkpoint_dir, or overwrite=True (CLI: --overwrite)"
        )
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise CheckpointError(f"corrupt checkpoint {path}: invalid step {step!r} in metadata.json")
    if step > train_settings["steps"]:
        raise _IncompatibleCheckpoint(
            f"cannot resume from {path}: it is at step {step}, beyond steps={train_settings['steps']}; "
            f"pass steps >= {step}"
        )
    earlier = list(meta["train"].get("continued_from", []))
    if meta["train"].get("steps") != train_settings["steps"]:
        earlier.append(meta["train"].get("steps"))
    train_settings["continued_from"] = earlier
    history = meta.get("eval_history", {})
    target = {
        "params": _pure_params(model),
        "optimizer": nnx.to_pure_dict(nnx.state(opt)),
        "losses": np.zeros(step, np.float32),
    }
    train_state = _restore(path / "train_state", target)
    weights = _restore(path / "weights", _pure_params(ema_model))
    restored = (
        (model, nnx.Param, train_state["params"]),
        (ema_model, nnx.Param, weights),
        (opt, ..., train_state["optimizer"]),
    )
    for module, kind, pure in restored:
        state = nnx.state(module, kind)
        nnx.replace_by_pure_dict(state, pure)
        nnx.update(module, state)
    return (
        int(step),
        [float(v) for v in np.asarray(train_state["losses"])],
        [int(v) for v in history.get("steps", [])],
        [list(map(float, row)) for row in history.get("mse", [])],
    )
