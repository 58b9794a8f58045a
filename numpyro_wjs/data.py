"""Datasets for denoiser training and evaluation, as NumPy arrays.

Pixel convention (stated here once for the whole library): images are ``float32``
arrays in ``[0, 1]`` laid out NHWC, ``(N, H, W, C)``; an 8-bit pixel ``b`` becomes
``b / 255`` (MNIST) and a 4-bit one ``b / 16`` (scikit-learn's 8x8 digits). Labels are
``int32`` class indices.

MNIST split convention. The 10,000 digits of the MNIST test set (``t10k``) are split
by index: digits ``0-7999`` may be used for training, digits ``8000-9999`` are held
out for every evaluation (denoising error, classifier accuracy, sample quality). When
the 60,000-digit training set (``train-*``) is present too, it joins the training
split:

- ``split="train"``: ``t10k[:8000]`` (8,000 digits); with the training set,
  ``train + t10k[:8000]`` (68,000).
- ``split="heldout"``: ``t10k[8000:]`` (2,000 digits), whatever else is present.
- ``split="all"``: ``t10k`` (10,000); with the training set, ``train + t10k`` (70,000).

Example
-------
>>> from numpyro_wjs.data import load_mnist
>>> images, labels = load_mnist(split="heldout")  # doctest: +SKIP
>>> images.shape, images.dtype, labels[:3]  # doctest: +SKIP
((2000, 28, 28, 1), dtype('float32'), array([...], dtype=int32))
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from numpyro_wjs.validation import positive_int

if TYPE_CHECKING:
    from numpyro_wjs.targets import GaussianMixture

__all__ = [
    "DataError",
    "MNIST_HELDOUT_START",
    "MNIST_MIRRORS",
    "MNIST_SHA256",
    "as_array",
    "download_mnist",
    "load_digits8x8",
    "load_mnist",
    "mixture_samples",
    "read_idx",
]

MNIST_HELDOUT_START = 8000
"""Index of the first held-out digit of the MNIST test set (digits 8000-9999)."""

MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
"""SHA-256 of the *uncompressed* IDX bytes of the four MNIST files (robust to
re-gzipping; unlike MD5 it also guards against deliberate substitution)."""

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
"""Mirrors serving ``<name>.gz`` for every name in ``MNIST_SHA256``, tried in order."""

_TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_SPLIT_FILES = {"heldout": _TEST_FILES, "train": tuple(MNIST_SHA256), "all": tuple(MNIST_SHA256)}
"""The files ``download=True`` fetches for each split (the training set joins "train" and "all")."""

MNIST_ENV_VAR = "NUMPYRO_WJS_MNIST"
_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049
_SPLITS = ("train", "heldout", "all")
_FIX_HINT = (
    "pass path=<directory with the IDX files> (CLI: --data-path), set the environment "
    f"variable {MNIST_ENV_VAR}, or download them with load_mnist(download=True) (CLI: --download)"
)


class DataError(ValueError):
    """A data file exists but is corrupt, truncated or inconsistent."""


# --------------------------------------------------------------------------- IDX files


def _read_file_bytes(file: Path) -> bytes:
    """Bytes of ``file``, gunzipped when its name ends in ``.gz``."""
    raw = file.read_bytes()
    if file.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataError(
            f"{file} is not a valid gzip file ({err}); the download is probably "
            "truncated or corrupt: delete it and download it again, or provide "
            "the uncompressed IDX file without the .gz suffix."
        ) from err


def _parse_idx(data: bytes, name: str, expected_magic: int | None = None) -> np.ndarray:
    """Parse IDX bytes with an unsigned-byte payload into a ``uint8`` array."""
    if len(data) < 4:
        raise DataError(f"{name}: {len(data)} bytes is too short for an IDX header.")
    magic = int.from_bytes(data[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise DataError(
            f"{name}: magic number {magic} where {expected_magic} was expected "
            f"({_IMAGES_MAGIC}: images, {_LABELS_MAGIC}: labels); the file is not "
            "the IDX file its name says, or it is corrupt."
        )
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(
            f"{name}: magic number {magic} is not an unsigned-byte IDX file "
            "(expected 0x0000 08 NN)."
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{name}: truncated IDX header ({len(data)} bytes, {ndim} dims).")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "too long"
        raise DataError(
            f"{name}: {kind}: {len(data)} bytes where the header {shape} implies "
            f"{expected}; delete the file and download it again."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(file: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzip-compressed when named ``*.gz``).

    Parameters
    ----------
    file
        Path of the file.
    expected_magic
        2051 for MNIST images, 2049 for labels; ``None`` accepts any unsigned-byte
        IDX file.

    Returns
    -------
    numpy.ndarray
        ``uint8`` array with the shape stored in the header.

    Raises
    ------
    FileNotFoundError
        ``file`` does not exist.
    DataError
        Bad magic number, bad gzip stream (CRC), truncated or overlong payload.
    """
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"IDX file {file} does not exist.")
    return _parse_idx(_read_file_bytes(file), str(file), expected_magic)


def _find_idx(directory: Path, stem: str) -> Path | None:
    """``directory/stem`` if present, else ``directory/stem.gz``, else ``None``."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _load_pair(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Images ``(N, 28, 28)`` uint8 and labels ``(N,)`` of one MNIST file pair."""
    images_file = _find_idx(directory, f"{prefix}-images-idx3-ubyte")
    labels_file = _find_idx(directory, f"{prefix}-labels-idx1-ubyte")
    if images_file is None and labels_file is None:
        return None
    if images_file is None or labels_file is None:
        present, missing = (
            (images_file, "labels") if labels_file is None else (labels_file, "images")
        )
        raise FileNotFoundError(
            f"{present} has no matching {prefix} {missing} file in {directory}; "
            f"add {prefix}-{missing}-idx{1 if missing == 'labels' else 3}-ubyte(.gz) "
            "or remove the incomplete pair."
        )
    images = read_idx(images_file, _IMAGES_MAGIC)
    labels = read_idx(labels_file, _LABELS_MAGIC)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{images_file}: image shape {images.shape[1:]}, expected (28, 28).")
    if labels.ndim != 1:
        raise DataError(f"{labels_file}: labels of shape {labels.shape}, expected 1-D.")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_file} holds {images.shape[0]} images but {labels_file} holds "
            f"{labels.shape[0]} labels; one of them is from another data set or "
            "corrupt: download both again."
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"{labels_file}: label {labels.max()} outside 0-9.")
    return images, labels


# ------------------------------------------------------------------- locating MNIST


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "numpyro_wjs" / "mnist"


def _has_t10k(directory: Path) -> bool:
    return all(_find_idx(directory, stem) is not None for stem in _TEST_FILES)


def _search_dirs(cache_dir: Path | None) -> list[Path]:
    """Directories searched, in order, when ``load_mnist`` gets no ``path`` (absolute,
    each once)."""
    dirs = []
    env = os.environ.get(MNIST_ENV_VAR)
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(Path.cwd() / ".." / "shared" / "data" / "mnist")
    dirs.append(Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist")
    dirs.append(Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir())
    return list(dict.fromkeys(d.resolve() for d in dirs))


# ---------------------------------------------------------------------- downloading


def _fetch(url: str, dest: Path) -> None:
    """Download ``url`` to the file ``dest`` (a plain HTTP GET)."""
    with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as out:
        while chunk := response.read(1 << 20):
            out.write(chunk)


def _sha256_idx(file: Path, compressed: bool) -> str | None:
    """SHA-256 of the IDX bytes of ``file`` (gunzipped if ``compressed``); ``None`` when
    it is not valid gzip."""
    raw = file.read_bytes()
    try:
        return hashlib.sha256(gzip.decompress(raw) if compressed else raw).hexdigest()
    except (gzip.BadGzipFile, EOFError, zlib.error):
        return None


def download_mnist(
    directory: str | os.PathLike | None = None,
    *,
    mirrors: Sequence[str] | None = None,
    files: Sequence[str] | None = None,
) -> Path:
    """Download MNIST IDX files (gzip) and verify their SHA-256 checksums.

    Files already present (raw or gzip) with the right checksum are kept. Each file is
    written to a temporary file in ``directory`` and renamed only once the SHA-256 of
    its uncompressed bytes equals ``MNIST_SHA256``, so an interrupted, corrupt or
    substituted download never leaves a file that the loader would read.

    Parameters
    ----------
    directory
        Destination; default ``~/.cache/numpyro_wjs/mnist``.
    mirrors
        Base URLs tried in order for each file; default ``MNIST_MIRRORS``.
    files
        Names (keys of ``MNIST_SHA256``) to fetch; default all four.

    Returns
    -------
    pathlib.Path
        The directory holding the verified files.

    Raises
    ------
    DataError
        A file's checksum did not match on any mirror.
    ConnectionError
        No mirror could be reached for a file.
    """
    directory = Path(directory).expanduser() if directory is not None else _default_cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    mirrors = MNIST_MIRRORS if mirrors is None else tuple(mirrors)
    unknown = sorted(set(files or ()) - set(MNIST_SHA256))
    if unknown:
        raise ValueError(f"unknown MNIST files {unknown}; choose from {sorted(MNIST_SHA256)}.")
    for stem in files or MNIST_SHA256:
        sha256 = MNIST_SHA256[stem]
        dest = directory / f"{stem}.gz"
        present = ((dest, True), (directory / stem, False))
        if any(f.is_file() and _sha256_idx(f, gz) == sha256 for f, gz in present):
            continue
        failures = []
        checksum_failed = False
        for mirror in mirrors:
            url = mirror.rstrip("/") + f"/{stem}.gz"
            fd, tmp_name = tempfile.mkstemp(prefix=f".{stem}.", suffix=".part", dir=directory)
            os.close(fd)
            tmp = Path(tmp_name)
            try:
                _fetch(url, tmp)
                got = _sha256_idx(tmp, True)
                if got == sha256:
                    os.replace(tmp, dest)
                    break
                checksum_failed = True
                failures.append(
                    f"{url}: "
                    + ("not a valid gzip file" if got is None else f"sha256 {got} != {sha256}")
                )
            except OSError as err:
                failures.append(f"{url}: {err}")
            finally:
                tmp.unlink(missing_ok=True)
        else:
            details = "; ".join(failures) or "no mirrors given"
            if checksum_failed:
                raise DataError(
                    f"Downloaded {stem}.gz does not match the known MNIST checksum "
                    f"({details}). Nothing was written; retry later or download the "
                    f"file by hand into {directory}."
                )
            raise ConnectionError(
                f"Could not download {stem}.gz from any mirror ({details}). Check the "
                f"network, or copy the IDX files into {directory} and pass path=."
            )
    return directory


# ------------------------------------------------------------------------- loaders


def load_mnist(
    path: str | os.PathLike | None = None,
    *,
    split: str = "train",
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST digits from IDX files, split by the project's convention.

    The test set ``t10k-{images-idx3,labels-idx1}-ubyte[.gz]`` is required; the
    training set ``train-*`` is added to the ``"train"`` and ``"all"`` splits when
    present (see the module docstring for the split table).

    Parameters
    ----------
    path
        Directory holding the IDX files (raw or ``.gz``). When ``None``: the
        environment variable ``NUMPYRO_WJS_MNIST``, then ``../shared/data/mnist``
        relative to the working directory and to the repository root, then the cache
        directory.
    split
        ``"train"`` (t10k digits 0-7999, plus the 60k training set if present),
        ``"heldout"`` (t10k digits 8000-9999) or ``"all"``.
    download
        Download (and verify by SHA-256) the files the split needs into ``path`` or,
        when ``path`` is ``None``, into the cache directory, then load from there:
        the t10k pair for ``"heldout"``, all four files for ``"train"`` and ``"all"``.
        Files already there with the right checksum are not fetched again.
    cache_dir
        Cache directory; default ``~/.cache/numpyro_wjs/mnist``.

    Returns
    -------
    images : numpy.ndarray
        ``(N, 28, 28, 1)`` float32 in ``[0, 1]`` (byte / 255).
    labels : numpy.ndarray
        ``(N,)`` int32 digits 0-9.

    Raises
    ------
    FileNotFoundError
        No directory with the t10k files was found.
    DataError
        A file is corrupt or the files disagree.
    ValueError
        Unknown ``split``.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")
    if download:
        target = path if path is not None else cache_dir
        directory = download_mnist(target, files=_SPLIT_FILES[split])
    elif path is not None:
        directory = Path(path).expanduser()
        missing = [stem for stem in _TEST_FILES if _find_idx(directory, stem) is None]
        if missing:
            raise FileNotFoundError(
                f"{directory} lacks {' and '.join(f'{m}(.gz)' for m in missing)}; {_FIX_HINT}."
            )
    else:
        searched = _search_dirs(Path(cache_dir) if cache_dir is not None else None)
        directory = next((d for d in searched if _has_t10k(d)), None)
        if directory is None:
            places = ",\n  ".join(repr(str(d)) for d in searched)
            raise FileNotFoundError(
                f"MNIST IDX files (t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) "
                f"not found in any of the folders searched:\n  {places}.\n"
                f"To fix: {_FIX_HINT}."
            )
    test = _load_pair(directory, "t10k")
    if test is None:
        raise FileNotFoundError(f"{directory} does not contain the MNIST t10k files.")
    if test[0].shape[0] <= MNIST_HELDOUT_START:
        raise DataError(
            f"{directory}: the t10k files hold {test[0].shape[0]} digits, fewer than "
            f"the {MNIST_HELDOUT_START + 1} the train/held-out split needs."
        )
    train = _load_pair(directory, "train")
    if split == "heldout":
        parts = [(test[0][MNIST_HELDOUT_START:], test[1][MNIST_HELDOUT_START:])]
    else:
        end = MNIST_HELDOUT_START if split == "train" else None
        parts = ([train] if train is not None else []) + [(test[0][:end], test[1][:end])]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return (images[..., None].astype(np.float32) / np.float32(255.0), labels.astype(np.int32))


def load_digits8x8() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 handwritten digits (no download needed).

    Returns
    -------
    images : numpy.ndarray
        ``(1797, 8, 8, 1)`` float32 in ``[0, 1]`` (4-bit value / 16).
    labels : numpy.ndarray
        ``(1797,)`` int32 digits 0-9.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.asarray(digits.images, dtype=np.float32).reshape(-1, 8, 8, 1) / np.float32(16.0)
    return images, np.asarray(digits.target, dtype=np.int32)


def mixture_samples(mixture: GaussianMixture, rng_key: Any, n: int) -> np.ndarray:
    """Draw ``n`` points ``x_i ~ p_X`` from a Gaussian mixture as training data.

    Parameters
    ----------
    mixture
        A ``numpyro_wjs.targets.GaussianMixture`` (anything with
        ``sample(rng_key, sample_shape)``).
    rng_key
        JAX PRNG key.
    n
        Number of draws, positive.

    Returns
    -------
    numpy.ndarray
        ``(n, d)`` float32 array.
    """
    n = positive_int("n", n)
    draws = np.asarray(mixture.sample(rng_key, (n,))).reshape(n, -1)
    return as_array(draws)


def as_array(data: Any) -> np.ndarray:
    """Validate a data set ``(N, ...)`` and return it as a float32 NumPy array.

    Parameters
    ----------
    data
        NumPy or JAX array (or nested sequence) of real numbers, at least 2-D with the
        examples along the first axis.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of the same shape.

    Raises
    ------
    TypeError
        Non-numeric or complex data.
    ValueError
        Fewer than 2 dimensions, no examples, or non-finite values.
    """
    array = np.asarray(data)
    if array.dtype == bool or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise TypeError(f"data must hold real numbers, got dtype {array.dtype}.")
    if array.ndim < 2:
        raise ValueError(
            f"data must be at least 2-D (N, ...) with examples on the first axis, got "
            f"shape {array.shape}; use x[:, None] for scalar examples."
        )
    if array.size == 0:
        raise ValueError(f"data is empty (shape {array.shape}).")
    with np.errstate(over="ignore"):
        array = array.astype(np.float32, copy=False)
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - finite.sum())
        raise ValueError(
            f"data holds {bad} non-finite values (NaN or inf) (or values too large "
            "for float32); remove or fix them."
        )
    return array
