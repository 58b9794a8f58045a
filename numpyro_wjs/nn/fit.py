"""One training loop for every network: ``fit(model, objective, data, config)``.

``fit`` minimises ``objective(model, batch, key)`` over batches of ``data`` with the
optax optimizer of a ``TrainConfig`` (AdamW, linear warmup, cosine decay, optional
global-norm clipping), keeps an exponential moving average (EMA) of the weights,
records held-out scores, shows one progress bar, stops on a non-finite loss, shards
batches over devices and checkpoints/resumes with Orbax. ``train_denoiser`` (with
``DenoisingLoss``) and ``train_classifier`` (with ``ClassificationLoss``) are thin
wrappers around it.

Every random number of step ``t`` comes from ``k_t = fold_in(key, t)``: batches drawn
from an array use ``split(k_t)[0]`` and the objective receives ``k_t`` (the denoising
loss takes its noise from ``split(k_t)[1]``), so a run is a deterministic function of
the key and resuming at any step reproduces it.

A training run in ``checkpoint_dir`` keeps ``step_00000100/``-style checkpoints (an
Orbax ``CheckpointManager``), each holding ``weights/`` (the published, EMA, weights),
``train_state/`` (raw weights, optimizer state, loss history) and ``metadata.json``,
whose ``train`` entry is ``TrainConfig.to_dict()`` with the objective's ``settings``
and the number of examples. A run resumes only with the same entries, ``steps``
aside.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import json
import logging
import numbers
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from numpyro_wjs.nn.checkpoints import (
    SAVED_MODEL_ENTRIES,
    CheckpointError,
    IncompatibleCheckpoint,
    check_json,
    is_checkpoint,
    network_metadata,
    newest_intact,
    pure_params,
    restore,
    save_step,
    step_manager,
    step_paths,
    validated_metadata,
)
from numpyro_wjs.nn.registry import architecture_name
from numpyro_wjs.validation import positive, positive_int

__all__ = [
    "Evaluation",
    "FitResult",
    "ProcessBatches",
    "TrainConfig",
    "check_outside_package",
    "ema_update",
    "fit",
    "fit_step",
    "is_batch_stream",
    "make_optimizer",
    "process_batches",
]

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
_log = logging.getLogger(__name__)
_LOG_EVERY = 50


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The settings a training run's result depends on, besides the network, the
    objective and the data.

    JSON-serialisable (``to_dict``, ``from_dict``): stored as the ``train`` entry of
    every training checkpoint's metadata and compared when a run resumes. The
    defaults are ``train_denoiser``'s.

    Attributes
    ----------
    steps : int
        Total number of optimizer steps.
    batch_size : int
        Examples per step.
    learning_rate : float
        Peak learning rate: linear warmup from 0 over ``warmup_steps``, then cosine
        decay to ``final_lr_fraction * learning_rate`` at ``steps``.
    warmup_steps : int or None
        ``None``: ``min(1000, steps // 10)``, or that of the run in ``checkpoint_dir``
        when continuing it (``fit`` fills it in).
    final_lr_fraction : float
        Learning rate at the end of the decay, as a fraction of ``learning_rate``.
    grad_clip : float or None
        Global-norm gradient clipping threshold (``None``: no clipping).
    weight_decay : float
        AdamW decoupled weight decay.
    ema_decay : float or None
        EMA decay in ``[0, 1)``, warmed up as ``min(ema_decay, (1 + t) / (10 + t))``;
        ``None``: no EMA, the trained weights are published.
    sampling : {"replacement", "epochs"}
        How batches are drawn from arrays: uniformly with replacement (from the key),
        or in shuffled passes without replacement (NumPy generator seeded with
        ``seed``; a pass is ``N // batch_size`` batches).
    seed : int
        Seed of the run's randomness.
    optimizer : {"adamw", "custom"}
        ``"custom"`` when ``fit`` got an optax transformation, which replaces the
        learning-rate settings (set by ``fit``).
    continued_from : tuple of int
        The ``steps`` of the earlier runs that a continued run extends (set by ``fit``).
    """

    steps: int
    batch_size: int = 128
    learning_rate: float = 1e-3
    warmup_steps: int | None = None
    final_lr_fraction: float = 0.01
    grad_clip: float | None = 1.0
    weight_decay: float = 1e-4
    ema_decay: float | None = 0.999
    sampling: str = "replacement"
    seed: int = 0
    optimizer: str = "adamw"
    continued_from: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        set_ = functools.partial(object.__setattr__, self)
        set_("steps", positive_int("steps", self.steps))
        set_("batch_size", positive_int("batch_size", self.batch_size))
        set_("learning_rate", positive("learning_rate", self.learning_rate))
        if self.warmup_steps is not None:
            set_("warmup_steps", positive_int("warmup_steps", self.warmup_steps, minimum=0))
        if not 0.0 <= self.final_lr_fraction <= 1.0:
            raise ValueError(f"final_lr_fraction must be in [0, 1], got {self.final_lr_fraction!r}")
        if self.grad_clip is not None:
            set_("grad_clip", positive("grad_clip", self.grad_clip))
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be non-negative, got {self.weight_decay!r}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (or None: no EMA), got {self.ema_decay!r}")
        if self.sampling not in ("replacement", "epochs"):
            raise ValueError(f"sampling must be 'replacement' or 'epochs', got {self.sampling!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise TypeError(f"seed must be an integer, got {self.seed!r}")
        set_("seed", int(self.seed))
        if self.optimizer not in ("adamw", "custom"):
            raise ValueError(f"optimizer must be 'adamw' or 'custom', got {self.optimizer!r}")
        set_("continued_from", tuple(positive_int("continued_from", s) for s in self.continued_from))

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-serialisable dict (``from_dict`` inverts it)."""
        return {**dataclasses.asdict(self), "continued_from": list(self.continued_from)}

    @classmethod
    def from_dict(cls, settings: Mapping[str, Any]) -> TrainConfig:
        """The config of ``to_dict``'s output; missing entries take their defaults (a
        run saved before an entry existed had the default's behaviour)."""
        unknown = sorted(set(settings) - set(_CONFIG_NAMES))
        if unknown:
            raise TypeError(f"TrainConfig has no settings {unknown}; it has {list(_CONFIG_NAMES)}")
        return cls(**settings)


_CONFIG_NAMES = tuple(f.name for f in dataclasses.fields(TrainConfig))


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Held-out scores of the published network, recorded every ``every`` steps and at
    the end of training.

    ``score(model)`` returns one number per entry of ``at`` (e.g. the mean squared
    error at each noise level). Callbacks and the progress bar see them as
    ``metrics[metric] = {f"{a:g}": value}``; checkpoints store the history as
    ``eval_history = {"steps": [...], names[0]: at, names[1]: [[value, ...], ...]}``,
    which resuming restores.
    """

    score: Callable[[nnx.Module], Sequence[float]]
    at: tuple[float, ...]
    every: int
    metric: str = "heldout_mse"
    names: tuple[str, str] = ("sigmas", "mse")


@dataclasses.dataclass(frozen=True)
class FitResult:
    """Outcome of ``fit``.

    Attributes
    ----------
    ema_model : nnx.Module
        The published network: the EMA weights, or ``model`` itself without EMA.
    model : nnx.Module
        The network passed in, trained in place (final raw weights).
    loss_history : np.ndarray, shape (steps,)
        Training loss of every step.
    eval_steps : np.ndarray, shape (n_evals,)
        Steps of the evaluations.
    eval_values : np.ndarray, shape (n_evals, len(evaluation.at))
        Their scores.
    """

    ema_model: nnx.Module
    model: nnx.Module
    loss_history: np.ndarray
    eval_steps: np.ndarray
    eval_values: np.ndarray


# ---------------------------------------------------------------------------
# The step


@nnx.jit
def ema_update(ema_model: nnx.Module, model: nnx.Module, decay: jax.Array) -> None:
    """``theta_ema <- decay * theta_ema + (1 - decay) * theta`` in place."""
    ema = nnx.state(ema_model, nnx.Param)
    params = nnx.state(model, nnx.Param)
    nnx.update(ema_model, jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params))


@functools.partial(nnx.jit, static_argnames=("batch_size", "ema_decay", "batch_sharding"))
def fit_step(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    ema_model: nnx.Module | None,
    objective: Any,
    data: Any,
    picked: Any,
    key: jax.Array,
    step: jax.Array,
    *,
    batch_size: int,
    ema_decay: float | None,
    batch_sharding: NamedSharding | None = None,
) -> jax.Array:
    """Step ``step`` of training, in place; returns the loss.

    The batch is ``picked`` itself when ``data`` is ``None``, else ``data[picked]``
    (every array of the pytree ``data``), with ``picked`` drawn uniformly with
    replacement from ``split(k_t)[0]`` when ``None``; ``k_t = fold_in(key, step)``.
    Then one optimizer step on ``objective(model, batch, k_t)`` and, unless
    ``ema_model`` is ``None``, an EMA update with decay
    ``min(ema_decay, (1 + t) / (10 + t))``. With ``batch_sharding`` a batch taken from
    ``data`` is split over devices.
    """
    key_t = jax.random.fold_in(key, step)
    if data is None:
        batch = picked
    else:
        if picked is None:
            size = jax.tree.leaves(data)[0].shape[0]
            picked = jax.random.randint(jax.random.split(key_t)[0], (batch_size,), 0, size)
        batch = jax.tree.map(lambda a: a[picked], data)
        if batch_sharding is not None:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
    loss, grads = nnx.value_and_grad(objective)(model, batch, key_t)
    optimizer.update(model, grads)
    if ema_model is not None:
        ema_update(ema_model, model, jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step)))
    return loss


@functools.lru_cache(maxsize=16)
def _adamw(
    steps: int, learning_rate: float, warmup_steps: int, final_lr_fraction: float,
    grad_clip: float | None, weight_decay: float,
) -> optax.GradientTransformation:
    """Cached, so that equal settings give the same object and compiled steps are reused."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=max(steps, warmup_steps + 1),
        end_value=final_lr_fraction * learning_rate,
    )
    adamw = optax.adamw(schedule, weight_decay=weight_decay)
    if grad_clip is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(grad_clip), adamw)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """AdamW with linear warmup to ``learning_rate``, cosine decay to
    ``final_lr_fraction`` of it at ``steps`` and, with ``grad_clip``, global-norm
    clipping first (``config.warmup_steps`` must be set)."""
    if config.warmup_steps is None:
        raise ValueError("config.warmup_steps is None; fit fills it in, or set it")
    return _adamw(config.steps, config.learning_rate, config.warmup_steps,
                  config.final_lr_fraction, config.grad_clip, config.weight_decay)


# ---------------------------------------------------------------------------
# Data


def is_batch_stream(data: Any) -> bool:
    """Whether ``data`` is an iterable of batches (generator, Grain or tf.data
    pipeline) rather than arrays (one array, or a tuple/dict of arrays)."""
    if isinstance(data, (np.ndarray, jax.Array, list, tuple, dict)) or hasattr(data, "__array__"):
        return False
    return hasattr(data, "__iter__") or hasattr(data, "__next__")


class _Batches(NamedTuple):
    """Where the batch of each step comes from: ``arrays`` (a pytree of arrays ``(N, ...)``)
    indexed inside the step by ``pick(step)`` (``None``: drawn there with replacement), or,
    without ``arrays``, the batch ``pick(step)`` itself (this process's rows of it under a
    mesh over several processes), read from an iterable or a ``ProcessBatches``."""

    arrays: Any
    pick: Callable[[int], Any] | None
    num_examples: int | None
    data_shape: Any


def _batches(data: Any, config: TrainConfig, rows: np.ndarray | None = None, key: jax.Array | None = None) -> _Batches:
    """The batches of ``data`` (arrays, a ``ProcessBatches`` or an iterable of batches) as
    ``config`` draws them; ``rows``: the rows of each global batch this process places
    (``None``: all of them), which is what an iterable yields and a ``ProcessBatches`` reads."""
    local = config.batch_size if rows is None else len(rows)
    if isinstance(data, ProcessBatches):
        data.check(config, key)
        pick = functools.partial(data.batch, rows=np.arange(config.batch_size) if rows is None else rows)
        return _Batches(None, pick, data.num_examples, _event_shapes(data.arrays))
    if is_batch_stream(data):
        batches = iter(data)
        first = next(batches, None)
        if first is None:
            raise ValueError("data yielded no batches")
        first = jax.tree.map(np.asarray, first)
        pick = _stream(itertools.chain([first], batches), first, local, config.steps, config.batch_size)
        return _Batches(None, pick, None, _event_shapes(first))
    arrays = jax.tree.map(np.asarray, data)
    size = _num_examples(arrays)
    pick = None
    if config.sampling == "epochs":
        _check_epochs(size, config.batch_size)
        pick = _Epochs(size, config.batch_size, config.seed)
    return _Batches(arrays, pick, size, _event_shapes(arrays))


def _num_examples(arrays: Any) -> int:
    """``N`` of a pytree of arrays ``(N, ...)``."""
    sizes = {np.shape(a)[0] if np.ndim(a) else 0 for a in jax.tree.leaves(arrays)}
    if len(sizes) != 1 or min(sizes) < 1:
        raise ValueError(
            f"data must be an array (N, ...) or a pytree of arrays sharing N >= 1, got lengths {sorted(sizes)}"
        )
    return sizes.pop()


def _check_epochs(size: int, batch_size: int) -> None:
    if batch_size > size:
        raise ValueError(
            f"batch_size={batch_size} exceeds the {size} examples of data; passes without "
            "replacement (sampling='epochs') need batch_size <= N"
        )


def _process_rows(sharding: jax.sharding.Sharding, batch_size: int) -> np.ndarray:
    """The rows of a global batch ``(batch_size, ...)`` that this process's devices hold
    under ``sharding``, in increasing order (the order of
    ``jax.make_array_from_process_local_data``)."""
    rows: set[int] = set()
    for index in sharding.addressable_devices_indices_map((batch_size,)).values():
        rows.update(range(batch_size)[index[0]])
    return np.asarray(sorted(rows), dtype=np.int64)


def _default_key(seed: int) -> jax.Array:
    """The key of a run's random numbers when none is given (``train_denoiser``'s)."""
    return jax.random.split(jax.random.key(seed))[0]


@functools.partial(jax.jit, static_argnames=("batch_size", "size"))
def _replacement_indices(key: jax.Array, step: jax.Array, *, batch_size: int, size: int) -> jax.Array:
    """The indices ``fit_step`` draws with replacement at ``step`` (the same computation)."""
    return jax.random.randint(jax.random.split(jax.random.fold_in(key, step))[0], (batch_size,), 0, size)


class ProcessBatches:
    """This process's rows of the global batches ``fit`` draws from ``arrays`` (made by
    ``process_batches``).

    ``indices(step)`` are the rows of ``arrays`` in the global batch of ``step``, drawn
    exactly as ``fit`` draws them from arrays with the same ``config`` and ``key``, on
    every process alike; ``batch(step, rows)`` reads the rows ``rows`` of that batch
    (default ``own_rows()``: this process's, as its devices hold them on a mesh over
    ``jax.devices()``), so each process reads only its share of every batch. Iterating
    yields ``batch(0)``, ..., ``batch(config.steps - 1)``.

    ``fit`` reads it by step, with the rows of its own mesh, so a resumed run continues
    at its checkpoint's step with nothing to skip.
    """

    def __init__(self, arrays: Any, config: TrainConfig, key: jax.Array | None = None):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.arrays = jax.tree.map(np.asarray, arrays)  # a memory map stays on disk
        self.num_examples = _num_examples(self.arrays)
        self.config = config
        self.key = _default_key(config.seed) if key is None else key
        self._epochs = None
        if config.sampling == "epochs":
            _check_epochs(self.num_examples, config.batch_size)
            self._epochs = _Epochs(self.num_examples, config.batch_size, config.seed)

    def indices(self, step: int) -> np.ndarray:
        """Rows of ``arrays`` in the global batch of ``step``, ``(batch_size,)``."""
        if self._epochs is not None:
            return self._epochs(step)
        return np.asarray(_replacement_indices(self.key, jnp.int32(step), batch_size=self.config.batch_size,
                                               size=self.num_examples))

    def own_rows(self) -> np.ndarray:
        """This process's rows of a global batch on a mesh over ``jax.devices()``: a
        block of ``batch_size / jax.process_count()``."""
        if self.config.batch_size % jax.device_count():
            raise ValueError(f"batch_size={self.config.batch_size} must be divisible by the "
                             f"{jax.device_count()} devices")
        mesh = Mesh(np.array(jax.devices()), ("data",))
        return _process_rows(NamedSharding(mesh, PartitionSpec("data")), self.config.batch_size)

    def batch(self, step: int, rows: np.ndarray | None = None) -> Any:
        """Rows ``rows`` (default: ``own_rows()``) of the global batch of ``step``."""
        picked = self.indices(step)[self.own_rows() if rows is None else rows]
        batch = jax.tree.map(lambda a: np.asarray(a[picked]), self.arrays)
        for leaf in jax.tree.leaves(batch):
            if np.issubdtype(leaf.dtype, np.floating) and not np.all(np.isfinite(leaf)):
                raise ValueError(f"batch {step} of data contains NaN or infinite values")
        return batch

    def __len__(self) -> int:
        return self.config.steps

    def __iter__(self) -> Any:
        rows = self.own_rows()
        return (self.batch(step, rows) for step in range(self.config.steps))

    def check(self, config: TrainConfig, key: jax.Array | None) -> None:
        """Raise ``ValueError`` unless ``fit(..., config, key=key)`` draws these batches."""
        mine = {k: getattr(self.config, k) for k in ("batch_size", "sampling", "seed")}
        theirs = {k: getattr(config, k) for k in mine}
        if mine != theirs:
            raise ValueError(f"process_batches was made for {mine} but fit got {theirs}; pass fit's config")
        key = _default_key(config.seed) if key is None else key
        if not np.array_equal(jax.random.key_data(key), jax.random.key_data(self.key)):
            raise ValueError("process_batches was made with another key than fit's; pass the same key= to both")

    def __repr__(self) -> str:
        return (f"ProcessBatches({self.num_examples} examples, batch_size={self.config.batch_size}, "
                f"sampling={self.config.sampling!r}, process {jax.process_index()} of {jax.process_count()})")


def process_batches(arrays: Any, config: TrainConfig, *, key: jax.Array | None = None) -> ProcessBatches:
    """This process's rows of each global batch that ``fit`` draws from ``arrays``.

    The data argument of ``fit`` (and ``train_denoiser``) for training over a mesh
    that spans processes when each process should read only its rows of every batch:
    from ``config.seed`` (or ``key``, ``fit``'s) every process draws the same global
    batch indices as a single-process run on ``arrays`` (``config.sampling`` alike) and
    reads the rows its devices hold, e.g. from ``np.load(path, mmap_mode="r")``, which
    reads only those rows from disk. The global batch, and so the loss curve, is that
    of the single-process run. A resumed run continues at its step.

    Parameters
    ----------
    arrays : array or pytree of arrays sharing their first axis ``N``
    config : TrainConfig
        The config passed to ``fit`` (its ``batch_size``, ``sampling`` and ``seed`` are
        checked there).
    key : PRNG key, optional
        ``fit``'s ``key``, if one is passed there.

    Returns
    -------
    ProcessBatches

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(10.0, dtype=np.float32)[:, None]
    >>> batches = process_batches(x, TrainConfig(steps=3, batch_size=4))
    >>> [b.shape for b in batches]  # one process: the whole batch of each step
    [(4, 1), (4, 1), (4, 1)]
    """
    return ProcessBatches(arrays, config, key)


def _event_shapes(batch: Any) -> Any:
    """The shapes after the first axis of the arrays of ``batch``, as JSON reads them back."""
    return json.loads(json.dumps(jax.tree.map(lambda a: list(np.shape(a)[1:]), batch)))


class _Epochs:
    """Indices of step ``t`` in shuffled passes without replacement: pass ``e`` is the
    ``(e + 1)``-th permutation drawn by ``np.random.default_rng(seed)``."""

    def __init__(self, size: int, batch_size: int, seed: int):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.per_pass = size // batch_size
        self.rng, self.epoch, self.order = np.random.default_rng(seed), -1, None

    def __call__(self, step: int) -> np.ndarray:
        epoch, i = divmod(step, self.per_pass)
        if epoch < self.epoch:
            self.rng, self.epoch = np.random.default_rng(self.seed), -1
        while self.epoch < epoch:
            self.order, self.epoch = self.rng.permutation(self.size), self.epoch + 1
        return self.order[i * self.batch_size : (i + 1) * self.batch_size]


def _stream(batches: Any, first: Any, rows: int, steps: int, batch_size: int) -> Callable[[int], Any]:
    """The batch of step ``t`` from the iterator ``batches``, checked against ``first``:
    ``rows`` examples, this process's share of the global ``batch_size``."""
    structure = jax.tree.structure(first)
    reference = jax.tree.leaves(first)

    def next_batch(step: int) -> Any:
        batch = next(batches, None)
        if batch is None:
            raise ValueError(
                f"data ran out of batches at step {step} of {steps}; pass an iterable that "
                "yields at least `steps` batches (e.g. repeat the dataset)"
            )
        batch = jax.tree.map(np.asarray, batch)
        if jax.tree.structure(batch) != structure:
            raise ValueError(f"batch {step} of data is a {jax.tree.structure(batch)}, the first a {structure}")
        for leaf, ref in zip(jax.tree.leaves(batch), reference):
            if leaf.shape != (rows, *ref.shape[1:]):
                if rows != batch_size:
                    raise ValueError(
                        f"batch {step} of data has shape {leaf.shape} on process {jax.process_index()}, expected "
                        f"{(rows, *ref.shape[1:])}: on a mesh over {jax.process_count()} processes each yields "
                        f"only its {rows} rows of the global batch_size={batch_size} (see process_batches)"
                    )
                raise ValueError(
                    f"batch {step} of data has shape {leaf.shape}, expected {(batch_size, *ref.shape[1:])} "
                    "(batch_size, *event_shape); drop incomplete batches (e.g. drop_remainder=True)"
                )
            if leaf.dtype != ref.dtype:
                raise ValueError(f"batch {step} of data has dtype {leaf.dtype}, the first batch {ref.dtype}")
            if np.issubdtype(leaf.dtype, np.floating) and not np.all(np.isfinite(leaf)):
                raise ValueError(f"batch {step} of data contains NaN or infinite values")
        return batch

    return next_batch


def _data_mesh(mesh: Mesh | None, batch_size: int) -> Mesh | None:
    """The mesh batches are sharded over (``None``: one device)."""
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
# The loop


def fit(
    model: nnx.Module,
    objective: Callable[[nnx.Module, Any, jax.Array], jax.Array],
    data: Any,
    config: TrainConfig,
    callbacks: Sequence[Callable[[int, dict[str, Any]], None]] = (),
    *,
    evaluation: Evaluation | None = None,
    optimizer: optax.GradientTransformation | None = None,
    key: jax.Array | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int | None = None,
    keep_checkpoints: int = 2,
    overwrite: bool = False,
    metadata: Mapping[str, Any] | None = None,
    fmt: str | None = None,
    mesh: Mesh | None = None,
    progress_bar: bool = True,
    desc: str = "train",
) -> FitResult:
    """Train ``model`` in place by minimising ``objective`` over batches of ``data``.

    Each step takes a batch (drawn from arrays as ``config.sampling`` says, or the
    next batch of an iterable), takes an optimizer step on
    ``objective(model, batch, k_t)`` and updates the EMA of the weights. With more
    than one local device (or a given ``mesh``) batches are sharded over the mesh
    axis ``'data'`` and the weights replicated.

    With ``checkpoint_dir``, checkpoints are written every ``checkpoint_every`` steps
    and at the end. If the folder holds a run with the same settings, training resumes
    from its newest intact checkpoint (weights, optimizer state, EMA, step, losses,
    evaluations) and ends with the result of an uninterrupted run; a larger
    ``config.steps`` continues a run, finished or not (the default schedule is
    stretched to the new ``steps``, ``continued_from`` lists the earlier targets). A
    damaged newest checkpoint is skipped with a warning; temporary folders of killed
    saves are removed. A folder holding a saved model or a run with other settings is
    refused unless ``overwrite=True``, which deletes those checkpoints first; a folder
    inside the installed package is always refused.

    Parameters
    ----------
    model : nnx.Module
        Network to train. Checkpointing needs its class registered
        (``register_architecture``).
    objective : callable
        ``objective(model, batch, key) -> scalar loss``: a function, or a JAX pytree
        with that ``__call__`` whose array fields are traced (``DenoisingLoss``,
        ``ClassificationLoss``). Optional members: ``prepare(model)`` (called first:
        checks and sets up ``model``), ``settings`` (JSON dict stored with the config
        and compared on resume), ``metadata(model)`` (JSON entries of each
        checkpoint) and ``format`` (the checkpoint format, which names the loader).
    data : array, pytree of arrays, or iterable of batches
        Arrays sharing their first axis ``N`` (e.g. ``x`` or ``(images, labels)``),
        or an iterable (generator, Grain or tf.data pipeline) yielding at least
        ``config.steps`` batches of ``batch_size`` examples; a resumed run reads it
        from where it stands. On a ``mesh`` over several processes an iterable yields
        on each process only its rows of every global batch of ``batch_size`` (the
        rows its devices hold: ``batch_size / jax.process_count()`` on a mesh of
        ``jax.devices()``), assembled with ``jax.make_array_from_process_local_data``;
        a ``ProcessBatches`` (``process_batches(arrays, config)``) reads each process's
        rows of the batches drawn from arrays, the single-process batches.
    config : TrainConfig
    callbacks : sequence of callables
        Each called as ``callback(step, metrics)`` every 50 steps, at every
        evaluation, checkpoint and at the end; ``metrics["loss"]`` is the mean loss
        since the previous call (at most 50 steps), ``metrics["images_per_second"]``
        the throughput and, at evaluations, ``metrics[evaluation.metric]`` the scores.
    evaluation : Evaluation, optional
        Held-out scores of the published network.
    optimizer : optax.GradientTransformation, optional
        Replaces ``make_optimizer(config)``.
    key : PRNG key, optional
        Key of the run's random numbers; default ``split(key(config.seed))[0]``
        (``train_denoiser``'s).
    checkpoint_dir : str or Path, optional
        Directory of training checkpoints (created if missing).
    checkpoint_every : int, optional
        Default ``max(1, steps // 10)``.
    keep_checkpoints : int
        Number of most recent checkpoints kept.
    overwrite : bool
        Delete the checkpoints in ``checkpoint_dir`` and train from scratch.
    metadata : mapping, optional
        Extra JSON-serialisable entries of every checkpoint's metadata.
    fmt : str, optional
        Checkpoint format; default ``objective.format``.
    mesh : jax.sharding.Mesh, optional
        Device mesh with an axis ``'data'``; default all local devices if more than one.
        A mesh over the devices of several processes (after ``jax.distributed.initialize``)
        trains data-parallel across them: every process calls ``fit`` alike, with
        ``checkpoint_dir`` a folder all of them see.
    progress_bar : bool
        Show a tqdm bar named ``desc`` with the running loss, the throughput and the
        latest scores; a run already at ``steps`` prints one line saying so instead.
    desc : str
        Name of the bar and of that line.

    Returns
    -------
    FitResult

    Raises
    ------
    ValueError
        For invalid data; ``CheckpointError`` for a run with other settings, or when
        no checkpoint in ``checkpoint_dir`` is intact.
    FileExistsError
        If ``checkpoint_dir`` holds a saved model and ``overwrite`` is false.
    FloatingPointError
        If the loss becomes NaN or infinite.
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be a Flax NNX module, got {type(model)}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not callable(objective):
        raise TypeError(f"objective must be callable as objective(model, batch, key), got {objective!r}")
    if optimizer is None and config.optimizer == "custom":
        raise ValueError("config.optimizer is 'custom': pass the optax transformation as optimizer=")
    if hasattr(objective, "prepare"):
        objective.prepare(model)
    extra = {**getattr(objective, "metadata", lambda _: {})(model), **(metadata or {})}
    check_json("metadata", extra)
    steps, batch_size = config.steps, config.batch_size
    mesh = _data_mesh(mesh, batch_size)
    batch_sharding = None if mesh is None else NamedSharding(mesh, PartitionSpec("data"))
    # a mesh over several processes: each places (and an iterable yields) only its rows of a batch
    processes = batch_sharding is not None and not batch_sharding.is_fully_addressable
    if key is None:
        key = _default_key(config.seed)
    source = _batches(data, config, _process_rows(batch_sharding, batch_size) if processes else None, key)
    settings = {**getattr(objective, "settings", {}), "num_examples": source.num_examples}
    check_json("objective.settings", settings)
    clash = sorted(set(settings) & set(_CONFIG_NAMES))
    if clash:
        raise ValueError(f"objective.settings may not use the TrainConfig names {clash}")
    leaves = jax.tree.leaves(objective)
    if len(leaves) == 1 and leaves[0] is objective:  # a function: static in the step
        objective = jax.tree_util.Partial(objective)
    keep_checkpoints = positive_int("keep_checkpoints", keep_checkpoints)
    checkpoint_every = positive_int("checkpoint_every", checkpoint_every or max(1, steps // 10))

    previous: dict[str, Any] = {}
    if checkpoint_dir is not None:
        fmt = fmt or getattr(objective, "format", None)
        if not isinstance(fmt, str):
            raise TypeError("checkpointing needs a format: pass fmt= or an objective with a `format`")
        checkpoint_dir = Path(checkpoint_dir)
        network_metadata(model, fmt, None)  # an unregistered class fails now, not after training
        # every process checks the folder; one deletes, then all read it
        _prepare_checkpoint_dir(checkpoint_dir, overwrite, remove=not processes or jax.process_index() == 0)
        if processes:
            multihost_utils.sync_global_devices(f"numpyro_wjs.fit: {checkpoint_dir} prepared")
        previous = _previous_settings(checkpoint_dir, fmt)
    config = dataclasses.replace(
        config,
        warmup_steps=previous.get("warmup_steps", min(1000, steps // 10))
        if config.warmup_steps is None else config.warmup_steps,
        optimizer="adamw" if optimizer is None else "custom",
    )

    opt = nnx.Optimizer(model, make_optimizer(config) if optimizer is None else optimizer, wrt=nnx.Param)
    ema_model = None if config.ema_decay is None else nnx.clone(model)
    published = model if ema_model is None else ema_model
    start, losses, eval_steps, eval_values = 0, [], [], []
    if checkpoint_dir is not None and step_paths(checkpoint_dir):
        start, losses, eval_steps, eval_values, config = newest_intact(
            checkpoint_dir,
            lambda path: _resume(path, fmt, model, opt, ema_model, config, settings, source.data_shape, evaluation),
        )

    if mesh is not None:
        replicated = NamedSharding(mesh, PartitionSpec())
    else:
        replicated = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    nodes = (model, opt) if ema_model is None else (model, opt, ema_model)
    state = nnx.state(nodes)
    if jax.process_count() > 1:  # restored weights sit on one local device; a mesh over processes takes host copies
        state = jax.device_get(state)
    nnx.update(nodes, jax.device_put(state, replicated))
    step_fn = functools.partial(
        nnx.cached_partial(fit_step, model, opt, ema_model),
        jax.device_put(objective, replicated),
        None if source.arrays is None else jax.device_put(jax.tree.map(jnp.asarray, source.arrays), replicated),
        batch_size=batch_size, ema_decay=config.ema_decay, batch_sharding=batch_sharding,
    )

    def run_step(step: int) -> jax.Array:
        picked = None if source.pick is None else source.pick(step)
        if processes and source.arrays is None:  # this process's rows -> the global batch
            picked = jax.tree.map(lambda rows: jax.make_array_from_process_local_data(
                batch_sharding, rows, (batch_size, *rows.shape[1:])), picked)
        elif source.arrays is None:
            picked = jax.device_put(picked, batch_sharding or replicated)
        return step_fn(picked, key, jnp.int32(step))

    pending: list[jax.Array] = []

    def flush(step: int) -> float:
        new = np.asarray(jax.device_get(pending), dtype=np.float64)
        pending.clear()
        if not np.all(np.isfinite(new)):
            bad = step - len(new) + int(np.argmin(np.isfinite(new)))
            raise FloatingPointError(
                f"training loss became {new[~np.isfinite(new)][0]} at step {bad}; lower "
                f"learning_rate (now {config.learning_rate:g}), enable grad_clip or check the data scaling"
            )
        losses.extend(new.tolist())
        return float(np.mean(losses[-_LOG_EVERY:]))

    if start >= steps:  # a finished run: one line instead of a full bar
        done_message = (f"the run in {checkpoint_dir} is already complete at step {start}; "
                        f"to train it further, pass steps > {start} (CLI: a larger --steps)")
        _log.info(done_message)
        if progress_bar:
            print(f"{desc}: {done_message}", file=sys.stderr, flush=True)
    postfix: dict[str, str] = {}
    last_time, last_step = time.perf_counter(), start
    manager = None
    with tqdm(total=steps, initial=start, disable=not progress_bar or start >= steps, desc=desc) as bar, \
            contextlib.ExitStack() as closing:
        for step in range(start, steps):
            pending.append(run_step(step))
            done = step + 1
            bar.update(1)
            evaluate_now = evaluation is not None and (done % evaluation.every == 0 or done == steps)
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
                values = [float(v) for v in evaluation.score(published)]
                eval_steps.append(done)
                eval_values.append(values)
                metrics[evaluation.metric] = {f"{a:g}": v for a, v in zip(evaluation.at, values)}
                postfix[evaluation.metric] = "/".join(f"{v:.4g}" for v in values)
                _log.info("step %d: loss %s, %s images/s, %s %s", done, postfix["loss"], postfix["img/s"],
                          evaluation.metric, metrics[evaluation.metric])
            bar.set_postfix(postfix)
            for callback in callbacks:
                callback(done, metrics)
            if save_now:
                if manager is None:
                    manager = step_manager(checkpoint_dir, keep_checkpoints)
                    closing.callback(manager.close)
                meta = network_metadata(published, fmt, done, {**extra, "data_shape": source.data_shape})
                if evaluation is not None:
                    meta["eval_history"] = {"steps": list(eval_steps), evaluation.names[0]: list(evaluation.at),
                                            evaluation.names[1]: [list(row) for row in eval_values]}
                meta["train"] = {**settings, **config.to_dict()}
                save_step(manager, done, _train_items(model, opt, published, losses), meta)

    width = 0 if evaluation is None else len(evaluation.at)
    return FitResult(
        ema_model=published,
        model=model,
        loss_history=np.asarray(losses, dtype=np.float32),
        eval_steps=np.asarray(eval_steps, dtype=np.int64),
        eval_values=np.asarray(eval_values, dtype=np.float64).reshape(len(eval_steps), width),
    )


# ---------------------------------------------------------------------------
# Checkpoint folders and resuming


def _train_items(
    model: nnx.Module, opt: nnx.Optimizer, published: nnx.Module, losses: Sequence[float]
) -> dict[str, Any]:
    """The Orbax items of a training checkpoint: the published weights, and the raw
    weights, optimizer state and losses to resume from."""
    return {
        "weights": pure_params(published),
        "train_state": {
            "params": pure_params(model),
            "optimizer": nnx.to_pure_dict(nnx.state(opt)),
            "losses": np.asarray(losses, dtype=np.float32),
        },
    }


def check_outside_package(directory: Path, name: str) -> None:
    """Raise ``ValueError`` if ``directory`` (the argument ``name``) lies inside the
    installed package, which training must never write into."""
    if Path(directory).resolve().is_relative_to(_PACKAGE_DIR):
        raise ValueError(
            f"{name} {directory} is inside the installed numpyro_wjs package; choose a folder outside it"
        )


def _prepare_checkpoint_dir(directory: Path, overwrite: bool, remove: bool = True) -> None:
    """Refuse (or, with ``overwrite``, clear) a training folder that is not ours to resume.

    Removes the temporary folders of saves that were killed midway. Without ``remove``
    (every process but one of a run over several), only checks.
    """
    check_outside_package(directory, "checkpoint_dir")
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"checkpoint_dir {directory} exists and is not a directory")
    if not directory.is_dir():
        return
    for entry in directory.iterdir() if remove else ():
        if ocp.utils.is_tmp_checkpoint(entry):
            shutil.rmtree(entry, ignore_errors=True)
    if not overwrite:
        if is_checkpoint(directory):
            raise FileExistsError(
                f"{directory} holds a saved model that training would hide from its loader "
                "(load_denoiser, load_classifier); choose another folder or pass overwrite=True "
                "(CLI: --overwrite)"
            )
        return
    for target in [*(directory / name for name in SAVED_MODEL_ENTRIES), *step_paths(directory)] if remove else ():
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def _previous_settings(directory: Path, fmt: str) -> dict[str, Any]:
    """The ``train`` entry of the newest readable checkpoint in ``directory`` (or ``{}``)."""
    for path in step_paths(directory):
        try:
            train = validated_metadata(path, fmt).get("train")
        except (CheckpointError, FileNotFoundError):
            continue
        return train if isinstance(train, dict) else {}
    return {}


def _resume(
    path: Path,
    fmt: str,
    model: nnx.Module,
    opt: nnx.Optimizer,
    ema_model: nnx.Module | None,
    config: TrainConfig,
    settings: dict[str, Any],
    data_shape: Any,
    evaluation: Evaluation | None,
) -> tuple[int, list[float], list[int], list[list[float]], TrainConfig]:
    """Load the training checkpoint ``path`` into ``model``, ``opt`` and ``ema_model``;
    return its step, losses, evaluations and ``config`` with ``continued_from`` set.

    Refused (``IncompatibleCheckpoint``) if the network, the data shape, the config or
    the objective's settings differ, ``steps`` aside: a smaller or larger ``steps``
    continues the run and is recorded in ``continued_from``.
    """
    meta = validated_metadata(path, fmt)
    if not isinstance(meta.get("train"), dict) or "train_state" not in meta["items"]:
        raise CheckpointError(f"checkpoint {path} was not written by a training run; cannot resume")
    try:
        recorded = TrainConfig.from_dict({k: v for k, v in meta["train"].items() if k in _CONFIG_NAMES})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"corrupt checkpoint {path}: invalid training settings ({err})") from err
    found_train = {**{k: v for k, v in meta["train"].items() if k not in _CONFIG_NAMES}, **recorded.to_dict()}
    now_train = {**settings, **config.to_dict()}
    compared = sorted((set(found_train) | set(now_train)) - {"steps", "continued_from"})
    expected = {
        "architecture": architecture_name(model),
        "config": getattr(model, "config", {}),
        "data_shape": data_shape,
        **{f"train.{k}": now_train.get(k) for k in compared},
    }
    found = {
        "architecture": meta["architecture"],
        "config": meta["config"],
        "data_shape": meta.get("data_shape"),
        **{f"train.{k}": found_train.get(k) for k in compared},
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
    if step > config.steps:
        raise IncompatibleCheckpoint(
            f"cannot resume from {path}: it is at step {step}, beyond steps={config.steps}; "
            f"pass steps >= {step}"
        )
    earlier = list(recorded.continued_from)
    if recorded.steps != config.steps:
        earlier.append(recorded.steps)
    published = model if ema_model is None else ema_model
    restored = restore(path, _train_items(model, opt, published, np.zeros(step)))
    train_state = restored["train_state"]
    for module, kind, pure in (
        (model, nnx.Param, train_state["params"]),
        (published, nnx.Param, restored["weights"]),
        (opt, ..., train_state["optimizer"]),
    ):
        state = nnx.state(module, kind)
        nnx.replace_by_pure_dict(state, pure)
        nnx.update(module, state)
    history = meta.get("eval_history", {}) if evaluation is not None else {}
    return (
        int(step),
        [float(v) for v in np.asarray(train_state["losses"])],
        [int(v) for v in history.get("steps", [])],
        [list(map(float, row)) for row in history.get(evaluation.names[1] if evaluation else "", [])],
        dataclasses.replace(config, continued_from=tuple(earlier)),
    )
