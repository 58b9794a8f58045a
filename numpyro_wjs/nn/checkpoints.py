"""Checkpoints of every saved network: Orbax weights plus a self-describing ``metadata.json``.

A checkpoint is a directory written by Orbax (one PyTree item per sub-folder:
``weights/`` for the published ``nnx.Param`` values, ``train_state/`` for training
runs) and a ``metadata.json`` naming the format, the registered architecture and its
constructor config, the library version, the items, the SHA-256 of every file and
whatever the saver adds (noise settings, training recipe, held-out scores). A
training run keeps its checkpoints as ``step_00000100/`` folders managed by an
``orbax.checkpoint.CheckpointManager``. ``metadata.json`` is written last, so a
checkpoint without it is incomplete.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import signal
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from numpyro_wjs.nn.registry import ARCHITECTURES, architecture_name, build_network

__all__ = [
    "CheckpointError",
    "IncompatibleCheckpoint",
    "SAVED_MODEL_ENTRIES",
    "checkpoint_metadata",
    "load_network",
    "network_metadata",
    "read_metadata",
    "restore",
    "save_network",
    "save_step",
    "step_manager",
    "validated_metadata",
    "write_metadata",
]

METADATA_FILE = "metadata.json"
#: What ``save_network`` writes into a saved model's folder (Orbax's files included).
SAVED_MODEL_ENTRIES = (METADATA_FILE, "weights", "train_state", "_CHECKPOINT_METADATA", "commit_success.txt")


class CheckpointError(ValueError):
    """A checkpoint exists but is partial, corrupt or inconsistent with its metadata."""


def _check_finite(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"metadata value at {where} is {value}; JSON metadata must be finite.")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_finite(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_finite(item, f"{where}[{i}]")


def write_metadata(path: str | os.PathLike, metadata: Mapping[str, Any]) -> Path:
    """Write ``metadata`` as JSON to ``path`` atomically (temporary file + rename).

    Parameters
    ----------
    path
        Destination file, e.g. ``<checkpoint>/metadata.json``; its directory must exist.
    metadata
        Mapping with string keys and JSON-serialisable, finite values.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    TypeError
        ``metadata`` is not a mapping with string keys, or holds a value JSON cannot
        encode (convert arrays with ``.tolist()`` / ``float()`` first).
    ValueError
        A float is NaN or infinite.
    """
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping, got {type(metadata).__name__}.")
    bad_keys = [k for k in metadata if not isinstance(k, str)]
    if bad_keys:
        raise TypeError(f"metadata keys must be strings, got {bad_keys!r}.")
    _check_finite(dict(metadata), "metadata")
    try:
        text = json.dumps(dict(metadata), indent=2, sort_keys=True, allow_nan=False)
    except TypeError as err:
        raise TypeError(
            f"metadata is not JSON-serialisable ({err}); convert arrays and other "
            "objects to lists, numbers or strings."
        ) from err
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"Directory {path.parent} does not exist; create it first.")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def read_metadata(path: str | os.PathLike, required: Iterable[str] = ()) -> dict[str, Any]:
    """Read a JSON metadata file written by ``write_metadata``.

    Parameters
    ----------
    path
        The JSON file.
    required
        Keys that must be present.

    Returns
    -------
    dict
        The metadata.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    CheckpointError
        Not valid JSON, not a JSON object, or a required key is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint metadata {path} does not exist.")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"{path} is not valid JSON ({err}); the checkpoint is corrupt: save it again."
        ) from err
    if not isinstance(metadata, dict):
        raise CheckpointError(
            f"{path} holds a JSON {type(metadata).__name__}, expected an object."
        )
    missing = [key for key in required if key not in metadata]
    if missing:
        raise CheckpointError(
            f"{path} lacks the keys {missing}; the checkpoint was written by another "
            "program or is incomplete: save it again."
        )
    return metadata


# ---------------------------------------------------------------------------
# Network checkpoints: Orbax items + metadata.json

FORMAT_VERSION = 2
#: Checkpoint formats (what the network is) and the function that loads each.
LOADERS = {
    "numpyro_wjs.denoiser": "numpyro_wjs.nn.train.load_denoiser",
    "numpyro_wjs.DigitClassifier": "numpyro_wjs.nn.classifier.load_classifier",
}
#: Names of the step folders of a training run: ``step_00000100``.
STEP_NAMES = ocp.step.standard_name_format(step_prefix="step", step_format_fixed_length=8)
_RESERVED = {"format", "format_version", "architecture", "config", "step", "items", "files", "train"}


def check_json(name: str, value: Any) -> None:
    """``TypeError`` unless ``value`` is JSON-serialisable with finite numbers."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be JSON-serialisable (finite numbers): {err}") from err


def _library_version() -> str:
    try:
        return importlib.metadata.version("numpyro-wjs")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def network_metadata(
    model: nnx.Module, fmt: str, step: int | None, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The metadata every checkpoint of ``model`` starts with (format, library version,
    registered architecture, ``model.config``, step), updated by ``extra``.

    ``extra`` may not set the entries the checkpoint code owns (``format``,
    ``architecture``, ``config``, ``step``, ...); ``ValueError`` if it does.
    """
    config = getattr(model, "config", {})
    check_json(f"{type(model).__name__}.config", config)
    extra = dict(extra or {})
    clash = sorted(set(extra) & _RESERVED)
    if clash:
        raise ValueError(f"metadata may not set the reserved entries {clash}")
    check_json("metadata", extra)
    return {
        "format": fmt,
        "format_version": FORMAT_VERSION,
        "library_version": _library_version(),
        "architecture": architecture_name(model),
        "config": config,
        "step": step,
        **extra,
    }


def pure_params(model: nnx.Module) -> dict:
    """The ``nnx.Param`` values of ``model`` as a plain nested dict of arrays."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@contextlib.contextmanager
def interrupts_deferred():
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
    """SHA-256 of every file under ``directory`` but ``metadata.json`` and the temporary files
    ``write_metadata`` makes on the way to it (another process of a multi-process run may be
    sealing the same checkpoint), by relative path."""
    return {
        file.relative_to(directory).as_posix(): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(directory.rglob("*"))
        if file.is_file() and file.name != METADATA_FILE and not file.name.startswith(f".{METADATA_FILE}.")
    }


def _checkpointer(names: Iterable[str]) -> ocp.Checkpointer:
    """A synchronous Orbax checkpointer of the PyTree items ``names`` of one checkpoint."""
    handlers = {name: ocp.StandardCheckpointHandler() for name in names}
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler(**handlers))


def _composite(items: Mapping[str, Any]) -> ocp.args.Composite:
    return ocp.args.Composite(
        **{name: ocp.args.StandardSave(jax.device_get(tree)) for name, tree in items.items()}
    )


def _seal(path: Path, items: Mapping[str, Any], metadata: Mapping[str, Any]) -> Path:
    """Write ``metadata.json`` (with the item names and file digests) into the
    finished Orbax checkpoint ``path``: the mark of a complete checkpoint."""
    write_metadata(
        path / METADATA_FILE, {**metadata, "items": sorted(items), "files": _file_digests(path)}
    )
    return path


def save_network(
    path: str | os.PathLike, items: Mapping[str, Any], metadata: Mapping[str, Any],
    *, replace: bool = False,
) -> Path:
    """Write the PyTrees ``items`` (e.g. ``{"weights": pure_params(model)}``) as one
    Orbax checkpoint at ``path``, then its ``metadata.json``.

    Orbax writes under a temporary name and renames when complete; Ctrl-C waits for
    the save to end. ``FileExistsError`` if ``path`` exists, unless ``replace``.
    """
    path = Path(path).absolute()
    if path.exists() and not replace:
        raise FileExistsError(f"checkpoint path {path} already exists; choose a new path")
    path.parent.mkdir(parents=True, exist_ok=True)
    with interrupts_deferred(), _checkpointer(items) as ckptr:
        ckptr.save(path, _composite(items), force=replace)
        return _seal(path, items, metadata)


def step_manager(directory: Path, keep: int | None = None) -> ocp.CheckpointManager:
    """Orbax manager of the ``step_*`` checkpoints in ``directory``, keeping the
    newest ``keep`` (all if ``None``); read-only when ``keep`` is ``None``."""
    with quiet_orbax():  # a read-only manager logs the options it ignores
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            step_name_format=STEP_NAMES,
            enable_async_checkpointing=False,
            read_only=keep is None,
            create=keep is not None,
        )
        return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def save_step(
    manager: ocp.CheckpointManager, step: int, items: Mapping[str, Any], metadata: Mapping[str, Any]
) -> Path:
    """``save_network`` for step ``step`` of a training run, through ``manager`` (which
    removes the checkpoints beyond its ``max_to_keep``); replaces an earlier ``step``."""
    with interrupts_deferred():
        if step in manager.all_steps():  # a damaged checkpoint that resuming skipped
            manager.delete(step)
        manager.save(step, args=_composite(items), force=True)
        manager.wait_until_finished()
        return _seal(Path(manager.directory) / STEP_NAMES.build_name(step), items, metadata)


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is one checkpoint (rather than a folder of ``step_*`` ones)."""
    return (path / METADATA_FILE).exists() or (path / "weights").exists()


def step_paths(directory: Path) -> list[Path]:
    """The ``step_*`` checkpoints in ``directory``, newest first."""
    if not Path(directory).is_dir():
        return []
    steps = step_manager(directory).all_steps()
    return [Path(directory) / STEP_NAMES.build_name(s) for s in sorted(steps, reverse=True)]


def _locate(path: Path) -> list[Path]:
    """The checkpoints ``path`` names, to try in order: itself, or its ``step_*``
    checkpoints from the newest."""
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: the path does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file; a checkpoint is a directory")
    if is_checkpoint(path):
        return [path]
    found = step_paths(path)
    if not found:
        raise FileNotFoundError(
            f"no checkpoint in {path}: expected metadata.json and weights/, or step_* "
            "checkpoint directories"
        )
    return found


class IncompatibleCheckpoint(CheckpointError):
    """An intact checkpoint that cannot serve (e.g. a training run with other settings):
    never skipped."""


def newest_intact(path: str | os.PathLike, use: Callable[[Path], Any]) -> Any:
    """``use(checkpoint)`` on the newest checkpoint ``path`` names that ``use`` can read.

    ``path`` is one checkpoint or a folder of ``step_*`` ones. A damaged checkpoint is
    skipped with a warning; if none can be read, the newest one's ``CheckpointError``
    is raised. ``IncompatibleCheckpoint`` is raised at once.
    """
    candidates = _locate(Path(path))
    first_error = None
    for checkpoint in candidates:
        try:
            return use(checkpoint)
        except IncompatibleCheckpoint:
            raise
        except CheckpointError as err:
            first_error = first_error or err
            if checkpoint is not candidates[-1]:
                warnings.warn(f"skipping damaged checkpoint ({err})", stacklevel=3)
    raise first_error


def checkpoint_metadata(path: str | os.PathLike, fmt: str | None = None) -> dict[str, Any]:
    """Validated ``metadata.json`` of a checkpoint (or of the newest intact one of a
    training folder), with ``path`` added.

    Parameters
    ----------
    path : str or Path
        One checkpoint, or a folder of ``step_*`` checkpoints (a damaged newer one is
        skipped with a warning).
    fmt : str, optional
        Required format (a key of ``LOADERS``); default any of them.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist or holds no checkpoint.
    CheckpointError
        If the metadata is missing, not valid JSON, lacks required entries, names
        another format or an unregistered architecture, if a listed item is missing or
        a file differs from its recorded SHA-256.
    """
    return newest_intact(path, lambda checkpoint: validated_metadata(checkpoint, fmt))


def validated_metadata(path: Path, fmt: str | None = None) -> dict[str, Any]:
    """The ``metadata.json`` of the one checkpoint ``path``, checked as
    ``checkpoint_metadata`` describes (``CheckpointError`` if damaged)."""
    meta_path = path / METADATA_FILE
    if not meta_path.exists():
        raise CheckpointError(f"incomplete checkpoint {path}: weights without metadata.json")
    meta = read_metadata(meta_path)
    if meta.get("format") in LOADERS and fmt is not None and meta["format"] != fmt:
        raise CheckpointError(
            f"{path} holds a {meta['format']} checkpoint, not a {fmt}: load it with "
            f"{LOADERS[meta['format']]}"
        )
    required = {"format": str, "format_version": int, "architecture": str, "config": dict, "items": list}
    for key, kind in required.items():
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(
                f"corrupt checkpoint {path}: metadata.json entry {key!r} is missing or not "
                f"a {kind.__name__}"
            )
    known = meta["format"] == fmt if fmt is not None else meta["format"] in LOADERS
    if not known or meta["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format {meta['format']!r} version {meta['format_version']}, "
            f"expected {fmt or sorted(LOADERS)!r} up to version {FORMAT_VERSION}"
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
def quiet_orbax():
    """Silence Orbax's (absl) log: a damaged file is reported once, by us."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        absl.setLevel(level)


def restore(path: Path, targets: Mapping[str, Any]) -> dict[str, Any]:
    """Restore the items ``targets`` (name -> PyTree) of the checkpoint ``path``, each
    into the structure, shapes and dtypes of its target, on the default device.

    The stored shapes are compared with the targets' before any array is read, so a
    mismatch is reported by name and nothing is half restored.
    """
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = {
        name: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree)
        for name, tree in targets.items()
    }
    try:
        with quiet_orbax(), _checkpointer(targets) as ckptr:
            stored_items = ckptr.metadata(path.absolute()).item_metadata
            for item, tree in abstract.items():
                stored = getattr(stored_items.get(item) if stored_items else None, "tree", None)
                if stored is None:
                    raise CheckpointError(
                        f"cannot restore {path}: the Orbax metadata of {item}/ is missing or corrupt"
                    )
                stored, wanted = _shapes(stored), _shapes(tree)
                for name in sorted(set(stored) | set(wanted)):
                    if stored.get(name) != wanted.get(name):
                        raise CheckpointError(
                            f"checkpoint {path} does not match the network: {item} array {name!r} "
                            f"is {stored.get(name, 'missing')} in the checkpoint, the network "
                            f"needs {wanted.get(name, 'nothing')} (shape, dtype)"
                        )
            args = {name: ocp.args.StandardRestore(tree) for name, tree in abstract.items()}
            restored = dict(ckptr.restore(path.absolute(), ocp.args.Composite(**args)))
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
    try:
        return nnx.eval_shape(lambda: build_network(meta["architecture"], meta["config"], nnx.Rngs(0)))
    except ValueError as err:
        raise CheckpointError(f"checkpoint {meta['path']} has an {err}") from err


def load_network(path: str | os.PathLike, fmt: str) -> tuple[nnx.Module, dict[str, Any]]:
    """Rebuild the network of format ``fmt`` saved at ``path`` (one checkpoint, or the
    newest intact one of a folder of ``step_*`` checkpoints) and return it with its
    metadata.

    Raises ``FileNotFoundError`` if ``path`` holds no checkpoint, ``CheckpointError`` if
    the checkpoint is incomplete, corrupt, of another format, does not match its
    metadata or names an unregistered class.
    """

    def load(checkpoint: Path) -> tuple[nnx.Module, dict[str, Any]]:
        meta = validated_metadata(checkpoint, fmt)
        graphdef, state = nnx.split(_build(meta))
        nnx.replace_by_pure_dict(state, restore(checkpoint, {"weights": nnx.to_pure_dict(state)})["weights"])
        return nnx.merge(graphdef, state), meta

    return newest_intact(path, load)
