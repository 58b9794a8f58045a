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
checkpoint directory is written under a temporary name and renamed when complete,
so an interrupted save never looks like a checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import math
import re
import shutil
import uuid
from collections.abc import Mapping
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

from numpyro_wjs.checkpoints import CheckpointError, write_metadata
from numpyro_wjs.checkpoints import read_metadata as _read_json
from numpyro_wjs.denoisers import MLP, Denoiser, UNet, edm_preconditioning

__all__ = [
    "CheckpointError",
    "TrainResult",
    "checkpoint_metadata",
    "denoising_errors",
    "ema_update",
    "load_denoiser",
    "loss_fn",
    "save_checkpoint",
    "train_denoiser",
    "train_iteration",
    "train_step",
]

ARCHITECTURES: dict[str, type[Denoiser]] = {"MLP": MLP, "UNet": UNet}
"""Denoiser classes that checkpoints can name and ``load_denoiser`` can rebuild."""

FORMAT = "numpyro_wjs.denoiser"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d+)$")
_LOG_EVERY = 50


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Outcome of ``train_denoiser``.

    Attributes
    ----------
    ema_model : Denoiser
        Network with the EMA weights: the one to use (and the one checkpoints publish).
    model : Denoiser
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

    ema_model: Denoiser
    model: Denoiser
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


def loss_fn(model: Denoiser, batch: jax.Array, key: jax.Array, sigma: jax.Array) -> jax.Array:
    """Monte Carlo denoising loss on one batch.

    Fixed-sigma networks (``sigma`` a scalar): the plain squared error, summed over
    coordinates and averaged over the batch::

        (1/B) sum_b || x_b - xhat(x_b + sigma eps_b) ||^2

    Noise-conditional networks (``sigma = [lo, hi]``): ``s_b`` is drawn log-uniformly
    on ``[lo, hi]`` per example and each error is weighted by ``1 / c_out(s_b)^2``
    (EDM weighting; it makes the regression target of the raw network unit-scale at
    every noise level, so small noise levels are not drowned out)::

        (1/B) sum_b || x_b - xhat(x_b + s_b eps_b, s_b) ||^2 / c_out(s_b)^2

    Parameters
    ----------
    model : Denoiser
    batch : array, shape (B, *event_shape)
        Clean samples.
    key : PRNG key
    sigma : array, shape () or (2,)

    Returns
    -------
    scalar array
    """
    key_s, key_eps = jax.random.split(key)
    eps = _standard_normal(key_eps, batch.shape, batch.dtype)
    event_axes = tuple(range(1, batch.ndim))
    expand = (slice(None),) + (None,) * len(event_axes)
    if model.noise_conditional:
        log_lo, log_hi = jnp.log(sigma[0]), jnp.log(sigma[1])
        u = jax.random.uniform(key_s, batch.shape[:1], batch.dtype)
        s = jnp.exp(log_lo + u * (log_hi - log_lo))
        xhat = model(batch + s[expand] * eps, s)
        weight = 1.0 / edm_preconditioning(s, model.sigma_data)[1] ** 2
    else:
        xhat = model(batch + sigma * eps)
        weight = 1.0
    return jnp.mean(weight * jnp.sum((batch - xhat) ** 2, axis=event_axes))


@nnx.jit
def train_step(
    model: Denoiser,
    optimizer: nnx.Optimizer,
    batch: jax.Array,
    key: jax.Array,
    sigma: jax.Array,
) -> jax.Array:
    """One optimizer step on ``loss_fn``; updates ``model`` and ``optimizer`` in place."""
    loss, grads = nnx.value_and_grad(loss_fn)(model, batch, key, sigma)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def ema_update(ema_model: Denoiser, model: Denoiser, decay: jax.Array) -> None:
    """``theta_ema <- decay * theta_ema + (1 - decay) * theta`` in place."""
    ema = nnx.state(ema_model, nnx.Param)
    params = nnx.state(model, nnx.Param)
    nnx.update(ema_model, jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params))


@functools.partial(nnx.jit, static_argnames=("batch_size", "ema_decay", "batch_sharding"))
def train_iteration(
    model: Denoiser,
    optimizer: nnx.Optimizer,
    ema_model: Denoiser,
    data: jax.Array,
    key: jax.Array,
    step: jax.Array,
    sigma: jax.Array,
    *,
    batch_size: int,
    ema_decay: float,
    batch_sharding: NamedSharding | None = None,
) -> jax.Array:
    """Step ``step`` of training: draw a batch, ``train_step``, ``ema_update``.

    The batch is ``batch_size`` indices drawn uniformly with replacement, and every
    random number of step ``t`` comes from ``fold_in(key, t)``, so a run is a
    deterministic function of the key and resuming at any step reproduces it. The
    EMA decay is warmed up as ``min(ema_decay, (1 + t) / (10 + t))``. With
    ``batch_sharding`` the batch is split over devices (data parallelism).
    """
    key_batch, key_noise = jax.random.split(jax.random.fold_in(key, step))
    batch = data[jax.random.randint(key_batch, (batch_size,), 0, data.shape[0])]
    if batch_sharding is not None:
        batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    loss = train_step(model, optimizer, batch, key_noise, sigma)
    decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
    ema_update(ema_model, model, decay)
    return loss


@nnx.jit
def _squared_errors(model: Denoiser, x: jax.Array, eps: jax.Array, s: jax.Array) -> jax.Array:
    y = x + s * eps
    xhat = model(y, s) if model.noise_conditional else model(y)
    return jnp.sum((x - xhat) ** 2, axis=tuple(range(1, x.ndim)))


def denoising_errors(
    model: Denoiser,
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
    model : Denoiser
        A fixed-sigma network is called as ``model(y)`` (``sigma`` then only sets the
        noise added), a noise-conditional one as ``model(y, sigma)``.
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


def _check_sigma(model: Denoiser, sigma: Any) -> float | tuple[float, float]:
    if isinstance(sigma, (tuple, list)):
        if len(sigma) != 2:
            raise ValueError(f"a sigma range must be a pair (lo, hi), got {sigma!r}")
        lo, hi = sigma
        _check_sigma_value(lo)
        _check_sigma_value(hi)
        if not lo < hi:
            raise ValueError(f"sigma range (lo, hi) needs lo < hi, got {sigma!r}")
        if not model.noise_conditional:
            raise ValueError(
                f"sigma={sigma!r} is a range but the model is a fixed-sigma network: pass a "
                "float, or build the model with noise_conditional=True"
            )
        return float(lo), float(hi)
    _check_sigma_value(sigma)
    if model.noise_conditional:
        raise ValueError(
            f"the model is noise-conditional: pass a noise range sigma=(lo, hi), not {sigma!r}"
        )
    if model.sigma is not None and not math.isclose(model.sigma, sigma, rel_tol=1e-6):
        raise ValueError(
            f"the model was built for sigma={model.sigma} but training asked for sigma={sigma}"
        )
    return float(sigma)


def _check_data(model: Denoiser, data: Any, name: str) -> np.ndarray:
    data = np.asarray(data)
    if not np.issubdtype(data.dtype, np.floating):
        raise TypeError(
            f"{name} must be floating point, got dtype {data.dtype} (scale integer pixels, "
            "e.g. data / 255)"
        )
    if data.ndim != 1 + model.event_ndim:
        raise ValueError(
            f"{name} must have shape (N, *event_shape) with {model.event_ndim} event "
            f"dimension(s) for {type(model).__name__}, got shape {data.shape}"
        )
    if data.shape[0] < 1:
        raise ValueError(f"{name} is empty")
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


def train_denoiser(
    model: Denoiser,
    data: Any,
    sigma: float | tuple[float, float],
    *,
    steps: int,
    batch_size: int = 128,
    optimizer: optax.GradientTransformation | None = None,
    learning_rate: float = 1e-3,
    warmup_steps: int | None = None,
    grad_clip: float | None = 1.0,
    weight_decay: float = 1e-4,
    ema_decay: float = 0.999,
    eval_data: Any = None,
    eval_every: int | None = None,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    keep_checkpoints: int = 2,
    normalisation: Mapping[str, Any] | None = None,
    progress_bar: bool = True,
    mesh: Mesh | None = None,
) -> TrainResult:
    """Train a denoiser by least squares, ``min E||x - xhat(x + s eps)||^2``.

    Each step draws ``batch_size`` clean samples uniformly (with replacement) from
    ``data``, adds noise, takes an optimizer step on ``loss_fn`` and updates an
    EMA of the weights. With more than one local device (or a given ``mesh``) the
    batch is sharded over the mesh axis ``'data'`` and the weights are replicated.
    With ``checkpoint_dir``, checkpoints are written every ``checkpoint_every`` steps
    and at the end; if the directory already holds one, training resumes from the
    latest (weights, optimizer state, EMA, step, loss history; the random stream is a
    function of ``seed`` and the step) and ends with the same result as an
    uninterrupted run. The settings must then equal those of the checkpoint.

    Parameters
    ----------
    model : Denoiser
        Network to train (in place). A fixed-sigma network gets ``model.sigma = sigma``.
    data : array, shape (N, *event_shape)
        Clean training samples (floating point, finite).
    sigma : float or (float, float)
        Training noise level; a range ``(lo, hi)`` for a noise-conditional network,
        sampled log-uniformly per example.
    steps : int
        Total number of optimizer steps.
    batch_size : int
        Examples per step (divisible by the number of devices of the mesh).
    optimizer : optax.GradientTransformation, optional
        Replaces the default AdamW (``learning_rate``, ``warmup_steps``, ``grad_clip``
        and ``weight_decay`` then play no role).
    learning_rate : float
        Peak learning rate of the default schedule: linear warmup from 0, then cosine
        decay to ``0.01 * learning_rate`` at ``steps``.
    warmup_steps : int, optional
        Warmup length; default ``min(1000, steps // 10)``.
    grad_clip : float or None
        Global-norm gradient clipping threshold (``None``: no clipping).
    weight_decay : float
        AdamW decoupled weight decay.
    ema_decay : float
        EMA decay in ``[0, 1)``, warmed up as ``min(ema_decay, (1 + t) / (10 + t))``.
    eval_data : array, optional
        Held-out clean samples; the EMA network's mean squared error on them (fixed
        noise from ``seed``) is recorded every ``eval_every`` steps and at the end.
    eval_every : int, optional
        Default ``max(1, steps // 10)``.
    seed : int
        Seed of all randomness (batches, noise, evaluation noise).
    checkpoint_dir : str or Path, optional
        Directory of training checkpoints (created if missing).
    checkpoint_every : int, optional
        Default ``max(1, steps // 10)``.
    keep_checkpoints : int
        Number of most recent checkpoints kept.
    normalisation : mapping, optional
        JSON-serialisable description of the data scaling (e.g.
        ``{"pixel_range": [0, 1]}``), stored in the checkpoint metadata.
    progress_bar : bool
        Show a tqdm bar with the running loss.
    mesh : jax.sharding.Mesh, optional
        Device mesh with an axis ``'data'``; default: all local devices if more than one.

    Returns
    -------
    TrainResult

    Raises
    ------
    ValueError
        For invalid settings or data; ``CheckpointError`` for an unreadable or
        incompatible checkpoint in ``checkpoint_dir``.
    FloatingPointError
        If the loss becomes NaN or infinite.

    Examples
    --------
    >>> import numpy as np
    >>> from flax import nnx
    >>> from numpyro_wjs.denoisers import MLP
    >>> x = np.random.default_rng(0).normal(size=(1000, 2)).astype("float32")
    >>> net = MLP(2, (32, 32), sigma_data=1.0, rngs=nnx.Rngs(0))
    >>> result = train_denoiser(net, x, 0.5, steps=100, progress_bar=False)
    >>> result.ema_model(np.zeros(2, "float32")).shape
    (2,)
    """
    if not isinstance(model, Denoiser):
        raise TypeError(f"model must be a numpyro_wjs Denoiser (MLP, UNet), got {type(model)}")
    steps = _check_positive_int("steps", steps)
    batch_size = _check_positive_int("batch_size", batch_size)
    sigma = _check_sigma(model, sigma)
    data = _check_data(model, data, "data")
    if eval_data is not None:
        eval_data = _check_data(model, eval_data, "eval_data")
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
    warmup_steps = min(1000, steps // 10) if warmup_steps is None else warmup_steps
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be a non-negative integer, got {warmup_steps!r}")
    eval_every = _check_positive_int("eval_every", eval_every or max(1, steps // 10))
    checkpoint_every = _check_positive_int(
        "checkpoint_every", checkpoint_every or max(1, steps // 10)
    )
    keep_checkpoints = _check_positive_int("keep_checkpoints", keep_checkpoints)
    mesh = _data_mesh(mesh, batch_size)
    _check_json("normalisation", normalisation)

    if not model.noise_conditional:
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
        "num_examples": int(data.shape[0]),
    }
    eval_sigmas = (
        np.geomspace(sigma[0], sigma[1], 3) if isinstance(sigma, tuple) else np.array([sigma])
    )

    start, losses, eval_steps, eval_mse = 0, [], [], []
    if checkpoint_dir is not None:
        checkpoint_dir = Path(checkpoint_dir)
        if checkpoint_dir.exists() and not checkpoint_dir.is_dir():
            raise ValueError(f"checkpoint_dir {checkpoint_dir} exists and is not a directory")
        latest = _latest_checkpoint(checkpoint_dir)
        if latest is not None:
            start, losses, eval_steps, eval_mse = _resume(
                latest, model, opt, ema_model, train_settings, data.shape[1:]
            )

    if mesh is not None:
        replicated = NamedSharding(mesh, PartitionSpec())
        batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    else:
        replicated = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        batch_sharding = None
    state = nnx.state((model, opt, ema_model))
    nnx.update((model, opt, ema_model), jax.device_put(state, replicated))
    data_device = jax.device_put(jnp.asarray(data), replicated)
    sigma_device = jax.device_put(jnp.asarray(sigma, data_device.dtype), replicated)
    train_key, eval_key = jax.random.split(jax.random.key(seed))
    iteration = functools.partial(
        nnx.cached_partial(train_iteration, model, opt, ema_model),
        batch_size=batch_size,
        ema_decay=ema_decay,
        batch_sharding=batch_sharding,
    )

    def evaluate(step: int) -> None:
        errors = [
            denoising_errors(ema_model, eval_data, float(s), key=eval_key).mean(dtype=np.float64)
            for s in eval_sigmas
        ]
        eval_steps.append(step)
        eval_mse.append(errors)

    pending: list[jax.Array] = []

    def flush(step: int, bar: tqdm) -> None:
        if not pending:
            return
        new = np.asarray(jax.device_get(pending), dtype=np.float64)
        pending.clear()
        if not np.all(np.isfinite(new)):
            bad = step - len(new) + int(np.argmin(np.isfinite(new)))
            raise FloatingPointError(
                f"training loss became {new[~np.isfinite(new)][0]} at step {bad}; lower "
                "learning_rate, enable grad_clip or check the data scaling"
            )
        losses.extend(new.tolist())
        bar.set_postfix(loss=f"{np.mean(losses[-_LOG_EVERY:]):.4g}")

    with tqdm(total=steps, initial=start, disable=not progress_bar, desc="train") as bar:
        for step in range(start, steps):
            pending.append(iteration(data_device, train_key, jnp.int32(step), sigma_device))
            done = step + 1
            bar.update(1)
            if done % _LOG_EVERY == 0 or done == steps:
                flush(done, bar)
            if eval_data is not None and (done % eval_every == 0 or done == steps):
                flush(done, bar)
                evaluate(done)
            if checkpoint_dir is not None and (done % checkpoint_every == 0 or done == steps):
                flush(done, bar)
                _save_training_checkpoint(
                    checkpoint_dir, done, model, opt, ema_model, losses,
                    eval_steps, eval_sigmas, eval_mse, train_settings, data.shape[1:],
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


def _write_checkpoint(path: Path, items: dict[str, Any], metadata: dict[str, Any]) -> Path:
    """Write ``items`` (Orbax PyTrees) and ``metadata.json`` atomically to ``path``."""
    path = Path(path).absolute()
    if path.exists():
        raise FileExistsError(f"checkpoint path {path} already exists; choose a new path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        with ocp.StandardCheckpointer() as ckptr:
            for name, tree in items.items():
                ckptr.save(tmp / name, jax.device_get(tree))
            ckptr.wait_until_finished()
        write_metadata(tmp / "metadata.json", {**metadata, "items": sorted(items)})
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _base_metadata(model: Denoiser, step: int | None) -> dict[str, Any]:
    name = type(model).__name__
    if ARCHITECTURES.get(name) is not type(model):
        raise TypeError(
            f"cannot checkpoint {type(model)}: known architectures are {sorted(ARCHITECTURES)}"
        )
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": _library_version(),
        "architecture": name,
        "config": model.config,
        "noise_conditional": model.noise_conditional,
        "sigma": model.sigma,
        "step": step,
    }


def save_checkpoint(
    path: str | Path,
    model: Denoiser,
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
    model : Denoiser
        Network whose ``nnx.Param`` values are saved (for a trained model, pass the
        EMA network).
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
    if not isinstance(model, Denoiser):
        raise TypeError(f"model must be a numpyro_wjs Denoiser, got {type(model)}")
    meta = _base_metadata(model, step)
    extra = dict(metadata or {})
    reserved = {"format", "format_version", "architecture", "config", "step", "items", "train"}
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
    directory: Path, step: int, model: Denoiser, opt: nnx.Optimizer, ema_model: Denoiser,
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
    _write_checkpoint(directory / f"step_{step:08d}", items, meta)
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


def _latest_checkpoint(directory: Path) -> Path | None:
    found = _step_dirs(directory)
    return found[-1][1] if found else None


def _locate(path: str | Path) -> Path:
    """The checkpoint directory ``path`` names: itself, or its latest ``step_*``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: the path does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file; a checkpoint is a directory")
    if (path / "metadata.json").exists() or (path / "weights").exists():
        return path
    latest = _latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(
            f"no checkpoint in {path}: expected metadata.json and weights/, or step_* "
            "checkpoint directories"
        )
    return latest


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
    path = _locate(path)
    meta_path = path / "metadata.json"
    if not meta_path.exists():
        raise CheckpointError(f"incomplete checkpoint {path}: weights without metadata.json")
    meta = _read_json(meta_path)
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
            f"checkpoint {path} names unknown architecture {meta['architecture']!r}; known: "
            f"{sorted(ARCHITECTURES)}"
        )
    if "weights" not in meta["items"]:
        raise CheckpointError(f"corrupt checkpoint {path}: metadata.json lists no weights item")
    for item in meta["items"]:
        if not (path / str(item)).is_dir():
            raise CheckpointError(f"incomplete checkpoint {path}: metadata.json without {item}/")
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


def _restore(path: Path, target: Any) -> Any:
    """Restore an Orbax PyTree into the structure, shapes and dtypes of ``target``.

    The stored shapes are compared with the target's before any array is read, so a
    mismatch is reported by name and nothing is half restored.
    """
    abstract = _abstract(target)
    try:
        with ocp.StandardCheckpointer() as ckptr:
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


def _build(meta: dict[str, Any]) -> Denoiser:
    """The network named by the metadata, with placeholder (abstract) weights."""
    cls = ARCHITECTURES[meta["architecture"]]
    try:
        return nnx.eval_shape(lambda: cls(**meta["config"], rngs=nnx.Rngs(0)))
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint {meta['path']} has an invalid {meta['architecture']} config "
            f"{meta['config']}: {err}"
        ) from err


def load_denoiser(path: str | Path) -> Denoiser:
    """Rebuild a trained denoiser from a checkpoint directory alone.

    Parameters
    ----------
    path : str or Path
        A checkpoint directory, or a training ``checkpoint_dir`` (its latest
        checkpoint is used).

    Returns
    -------
    Denoiser
        The network with the published (EMA) weights, ready to call.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist or holds no checkpoint.
    CheckpointError
        If the checkpoint is incomplete, corrupt or does not match its metadata.
    """
    meta = checkpoint_metadata(path)
    abstract = _build(meta)
    graphdef, state = nnx.split(abstract)
    weights = _restore(Path(meta["path"]) / "weights", nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, weights)
    return nnx.merge(graphdef, state)


def _resume(
    path: Path,
    model: Denoiser,
    opt: nnx.Optimizer,
    ema_model: Denoiser,
    train_settings: dict[str, Any],
    data_shape: tuple[int, ...],
) -> tuple[int, list[float], list[int], list[list[float]]]:
    """Load a training checkpoint into ``model``, ``opt`` and ``ema_model``."""
    meta = checkpoint_metadata(path)
    if "train" not in meta or "train_state" not in meta["items"]:
        raise CheckpointError(f"checkpoint {path} was not written by train_denoiser; cannot resume")
    expected = {
        "architecture": type(model).__name__,
        "config": model.config,
        "data_shape": list(data_shape),
        **{f"train.{k}": v for k, v in train_settings.items()},
    }
    found = {
        "architecture": meta["architecture"],
        "config": meta["config"],
        "data_shape": meta.get("data_shape"),
        **{f"train.{k}": meta["train"].get(k) for k in train_settings},
    }
    differ = [k for k in expected if found[k] != expected[k]]
    if differ:
        details = "; ".join(f"{k}: checkpoint {found[k]!r}, now {expected[k]!r}" for k in differ)
        raise CheckpointError(
            f"cannot resume from {path}: settings differ ({details}); use the checkpoint's "
            "settings or a new checkpoint_dir"
        )
    step = meta.get("step")
    valid_step = isinstance(step, int) and not isinstance(step, bool)
    if not valid_step or not 0 < step <= train_settings["steps"]:
        raise CheckpointError(f"corrupt checkpoint {path}: invalid step {step!r} in metadata.json")
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
