"""Checkpoint metadata: the JSON file stored beside a network's weights.

A checkpoint directory holds the weights (written by Orbax) and a ``metadata.json``
describing how to rebuild and interpret them (architecture arguments, pixel scaling,
training recipe, held-out scores). This module only handles the JSON side and the
error raised for unusable checkpoints; it is shared by every saved network.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["CheckpointError", "read_metadata", "write_metadata"]


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
