"""Least-squares training of denoisers, and their checkpoints.

A denoiser ``xhat`` trained on (theory.md section 4)::

    L(theta) = E_{x ~ p_X, eps ~ N(0, I)} || x - xhat_theta(x + sigma eps) ||^2

estimates ``E[X | y]``, hence the score ``(xhat(y) - y) / sigma^2`` of the smoothed
density (Tweedie-Miyasawa). ``train_denoiser`` minimises a Monte Carlo estimate of
``L`` with AdamW, keeps an exponential moving average (EMA) of the weights, evaluates
held-out error, shards batches over several devices and checkpoints/resumes with
Orbax. ``load_denoiser`` rebuilds a trained network from a checkpoint directory
alone.

Checkpoint layout (one directory per checkpoint, ``numpyro_wjs.nn.checkpoints``)::

    metadata.json   architecture, constructor kwargs, sigma, data shape,
                    normalisation, step, library version, training settings
    weights/        Orbax PyTree of the published (EMA) ``nnx.Param`` values
    train_state/    Orbax PyTree: raw weights, optimizer state, loss history
                    (training checkpoints; optimizer state only for save_checkpoint)

``train_denoiser(..., checkpoint_dir=d)`` writes ``d/step_00000100/`` etc. through an
Orbax ``CheckpointManager`` (written under a temporary name and renamed when
complete; Ctrl-C waits for the save to end). Any Flax NNX module called as
``model(y)`` or ``model(y, s)`` trains; checkpoints name its class, which
``register_architecture`` makes loadable (the package's ``MLP`` and ``UNet`` are
registered).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import math
import shutil
import sys
import time
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

from numpyro_wjs.nn.checkpoints import (
    ARCHITECTURES,
    CheckpointError,
    IncompatibleCheckpoint,
    architecture_name,
    check_json,
    is_checkpoint,
    load_network,
    network_metadata,
    newest_intact,
    pure_params,
    register_architecture,
    restore,
    save_network,
    save_step,
    step_manager,
    step_paths,
)
from numpyro_wjs.nn.checkpoints import checkpoint_metadata as _checked_metadata
from numpyro_wjs.nn.denoisers import Denoiser, edm_preconditioning, is_noise_conditional
from numpyro_wjs.validation import positive, positive_int, positive_range

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

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
_log = logging.getLogger(__name__)

FORMAT = "numpyro_wjs.denoiser"
#: What ``save_checkpoint`` writes beside its Orbax items: removed by ``overwrite``.
_SAVED_MODEL_ENTRIES = ("metadata.json", "weights", "train_state", "_CHECKPOINT_METADATA", "commit_success.txt")
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


def _check_sigma(model: nnx.Module, sigma: Any) -> float | tuple[float, float]:
    if isinstance(sigma, (tuple, list)):
        lo, hi = positive_range("sigma", sigma, strict=True)
        if not is_noise_conditional(model):
            raise ValueError(
                f"sigma={sigma!r} is a range but the model is a fixed-sigma network: pass a "
                "float, or use a model called as model(y, s)"
            )
        return lo, hi
    sigma = positive("sigma", sigma)
    if is_noise_conditional(model):
        raise ValueError(
            f"the model is noise-conditional: pass a noise range sigma=(lo, hi), not {sigma!r}"
        )
    if getattr(model, "sigma", None) is not None and not math.isclose(model.sigma, sigma, rel_tol=1e-6):
        raise ValueError(
            f"the model was built for sigma={model.sigma} but training asked for sigma={sigma}"
        )
    return sigma


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
    steps = positive_int("steps", steps)
    batch_size = positive_int("batch_size", batch_size)
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
    positive("learning_rate", learning_rate)
    if grad_clip is not None:
        positive("grad_clip", grad_clip)
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be non-negative, got {weight_decay!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    eval_every = positive_int("eval_every", eval_every or max(1, steps // 10))
    checkpoint_every = positive_int(
        "checkpoint_every", checkpoint_every or max(1, steps // 10)
    )
    keep_checkpoints = positive_int("keep_checkpoints", keep_checkpoints)
    mesh = _data_mesh(mesh, batch_size)
    check_json("normalisation", normalisation)
    previous: dict[str, Any] = {}
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        network_metadata(model, FORMAT, None)  # an unregistered class fails now, not after training
        _prepare_checkpoint_dir(checkpoint_dir, overwrite)
        previous = _previous_settings(checkpoint_dir)
    if warmup_steps is None:
        warmup_steps = previous.get("warmup_steps", min(1000, steps // 10))
    warmup_steps = positive_int("warmup_steps", warmup_steps, minimum=0)

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
        positive("eval_sigmas", float(s))

    start, losses, eval_steps, eval_mse = 0, [], [], []
    if checkpoint_dir is not None and step_paths(checkpoint_dir):
        start, losses, eval_steps, eval_mse = newest_intact(
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

    if start >= steps:  # a finished run: one line instead of a full bar
        done_message = (f"the run in {checkpoint_dir} is already complete at step {start}; "
                        f"to train it further, pass steps > {start} (CLI: a larger --steps)")
        _log.info(done_message)
        if progress_bar:
            print(f"train: {done_message}", file=sys.stderr, flush=True)
    postfix: dict[str, str] = {}
    last_time, last_step = time.perf_counter(), start
    manager = None
    with tqdm(total=steps, initial=start, disable=not progress_bar or start >= steps, desc="train") as bar, \
            contextlib.ExitStack() as closing:
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
                if manager is None:
                    manager = step_manager(checkpoint_dir, keep_checkpoints)
                    closing.callback(manager.close)
                _save_training_checkpoint(
                    manager, done, model, opt, ema_model, losses, eval_steps, eval_sigmas,
                    eval_mse, train_settings, data_shape, normalisation,
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
    meta = network_metadata(model, FORMAT, step, metadata)
    items = {"weights": pure_params(model)}
    if optimizer is not None:
        items["train_state"] = {"optimizer": nnx.to_pure_dict(nnx.state(optimizer))}
    return save_network(path, items, meta)


def _save_training_checkpoint(
    manager: ocp.CheckpointManager, step: int, model: nnx.Module, opt: nnx.Optimizer,
    ema_model: nnx.Module, losses: list[float], eval_steps: list[int], eval_sigmas: np.ndarray,
    eval_mse: list[list[float]], train_settings: dict[str, Any],
    data_shape: tuple[int, ...], normalisation: Mapping[str, Any] | None,
) -> None:
    meta = network_metadata(ema_model, FORMAT, step, {
        "sigma": train_settings["sigma"],
        "data_shape": list(data_shape),
        "normalisation": normalisation,
        "eval_history": {
            "steps": list(eval_steps),
            "sigmas": eval_sigmas.tolist(),
            "mse": [list(map(float, row)) for row in eval_mse],
        },
    })
    meta["train"] = train_settings
    items = {
        "weights": pure_params(ema_model),
        "train_state": {
            "params": pure_params(model),
            "optimizer": nnx.to_pure_dict(nnx.state(opt)),
            "losses": np.asarray(losses, dtype=np.float32),
        },
    }
    save_step(manager, step, items, meta)


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
    for entry in directory.iterdir():
        if ocp.utils.is_tmp_checkpoint(entry):
            shutil.rmtree(entry, ignore_errors=True)
    if not overwrite:
        if is_checkpoint(directory):
            raise FileExistsError(
                f"{directory} holds a saved model that training would hide from "
                "load_denoiser; choose another folder or pass overwrite=True (CLI: --overwrite)"
            )
        return
    for target in [*(directory / name for name in _SAVED_MODEL_ENTRIES), *step_paths(directory)]:
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def _previous_settings(directory: Path) -> dict[str, Any]:
    """Training settings of the newest readable checkpoint in ``directory`` (or ``{}``)."""
    for path in step_paths(directory):
        try:
            train = _checked_metadata(path, FORMAT).get("train")
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
        If the metadata is missing, not valid JSON, or lacks required entries, if a
        listed item is missing or a file differs from its recorded SHA-256.
    """
    return newest_intact(path, lambda checkpoint: _checked_metadata(checkpoint, FORMAT))


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
    meta = _checked_metadata(path, FORMAT)
    if not isinstance(meta.get("train"), dict) or "train_state" not in meta["items"]:
        raise CheckpointError(f"checkpoint {path} was not written by train_denoiser; cannot resume")
    compared = [k for k in train_settings if k not in ("steps", "continued_from")]
    expected = {
        "architecture": architecture_name(model),
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
        raise IncompatibleCheckpoint(
            f"cannot resume from {path}: settings differ ({details}); use the checkpoint's "
            "settings, a new checkpoint_dir, or overwrite=True (CLI: --overwrite)"
        )
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise CheckpointError(f"corrupt checkpoint {path}: invalid step {step!r} in metadata.json")
    if step > train_settings["steps"]:
        raise IncompatibleCheckpoint(
            f"cannot resume from {path}: it is at step {step}, beyond steps={train_settings['steps']}; "
            f"pass steps >= {step}"
        )
    earlier = list(meta["train"].get("continued_from", []))
    if meta["train"].get("steps") != train_settings["steps"]:
        earlier.append(meta["train"].get("steps"))
    train_settings["continued_from"] = earlier
    history = meta.get("eval_history", {})
    restored = restore(path, {
        "weights": pure_params(ema_model),
        "train_state": {
            "params": pure_params(model),
            "optimizer": nnx.to_pure_dict(nnx.state(opt)),
            "losses": np.zeros(step, np.float32),
        },
    })
    train_state = restored["train_state"]
    for module, kind, pure in (
        (model, nnx.Param, train_state["params"]),
        (ema_model, nnx.Param, restored["weights"]),
        (opt, ..., train_state["optimizer"]),
    ):
        state = nnx.state(module, kind)
        nnx.replace_by_pure_dict(state, pure)
        nnx.update(module, state)
    return (
        int(step),
        [float(v) for v in np.asarray(train_state["losses"])],
        [int(v) for v in history.get("steps", [])],
        [list(map(float, row)) for row in history.get("mse", [])],
    )
