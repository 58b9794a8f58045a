"""Tests of numpyro_wjs.data: IDX parsing, MNIST splits, verified downloads, arrays."""

from __future__ import annotations

import gzip
import hashlib
import struct
import urllib.error
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mnist_data import SHARED_MNIST, needs_mnist

from numpyro_wjs import data
from numpyro_wjs.data import (
    DataError,
    as_array,
    download_mnist,
    load_digits8x8,
    load_mnist,
    mixture_samples,
    read_idx,
)

README_FIRST_LABELS = [7, 2, 1, 0, 4, 1, 4, 9, 5, 9, 0, 6, 9, 0, 1, 5, 9, 7, 3, 4]
README_MD5 = {
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}

def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """Serialise a uint8 array as IDX with the given magic number."""
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", s) for s in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_pair(directory: Path, prefix: str, n: int, seed: int = 0, gz: bool = True) -> None:
    """Write a synthetic MNIST-format image/label pair with ``n`` digits."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    for stem, payload in (
        (f"{prefix}-images-idx3-ubyte", idx_bytes(images, 2051)),
        (f"{prefix}-labels-idx1-ubyte", idx_bytes(labels, 2049)),
    ):
        if gz:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(payload))
        else:
            (directory / stem).write_bytes(payload)


# ----------------------------------------------------------------- the real MNIST


@needs_mnist
def test_real_mnist_checksums_and_labels():
    for name, md5 in README_MD5.items():
        raw = gzip.decompress((SHARED_MNIST / name).read_bytes())
        assert hashlib.md5(raw).hexdigest() == md5
        # The shipped SHA-256 of the t10k pair are those of the project's real copy.
        assert hashlib.sha256(raw).hexdigest() == data.MNIST_SHA256[name.removesuffix(".gz")]
    images, labels = load_mnist(SHARED_MNIST, split="all")
    assert images.shape == (10000, 28, 28, 1)
    assert images.dtype == np.float32 and labels.dtype == np.int32
    assert images.min() == 0.0 and images.max() == 1.0
    assert labels[:20].tolist() == README_FIRST_LABELS
    assert set(np.unique(labels).tolist()) == set(range(10))
    raw = read_idx(SHARED_MNIST / "t10k-images-idx3-ubyte.gz", 2051)
    np.testing.assert_array_equal(images[..., 0], raw / np.float32(255))


@needs_mnist
def test_real_mnist_splits_are_disjoint_and_cover():
    all_images, all_labels = load_mnist(SHARED_MNIST, split="all")
    train_images, train_labels = load_mnist(SHARED_MNIST, split="train")
    held_images, held_labels = load_mnist(SHARED_MNIST, split="heldout")
    assert train_images.shape == (8000, 28, 28, 1) and train_labels.shape == (8000,)
    assert held_images.shape == (2000, 28, 28, 1) and held_labels.shape == (2000,)
    np.testing.assert_array_equal(train_images, all_images[:8000])
    np.testing.assert_array_equal(held_images, all_images[8000:])
    np.testing.assert_array_equal(np.concatenate([train_labels, held_labels]), all_labels)
    train_keys = {img.tobytes() for img in train_images}
    assert not any(img.tobytes() in train_keys for img in held_images)


@needs_mnist
def test_default_path_finds_shared_copy(monkeypatch, tmp_path):
    monkeypatch.delenv("NUMPYRO_WJS_MNIST", raising=False)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    images, _ = load_mnist(split="heldout", cache_dir=tmp_path / "empty")
    assert images.shape == (2000, 28, 28, 1)


def test_env_var_takes_precedence(monkeypatch, tmp_path):
    write_pair(tmp_path, "t10k", 8010)
    monkeypatch.setenv("NUMPYRO_WJS_MNIST", str(tmp_path))
    images, labels = load_mnist(split="heldout")
    assert images.shape == (10, 28, 28, 1) and labels.shape == (10,)


def test_missing_everywhere_lists_places(monkeypatch, tmp_path):
    monkeypatch.setenv("NUMPYRO_WJS_MNIST", str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, "__file__", str(tmp_path / "pkg" / "numpyro_wjs" / "data.py"))
    with pytest.raises(FileNotFoundError) as err:
        load_mnist(cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert "nowhere" in message and "cache" in message
    assert "download=True" in message and "NUMPYRO_WJS_MNIST" in message


def test_missing_everywhere_lists_each_place_once_then_the_advice(monkeypatch, tmp_path):
    """Run from the repository root, the two ``../shared/data/mnist`` candidates are one
    folder: listed once, one folder a line, the advice after the list (also once the
    CLI joins the message into one line)."""
    from numpyro_wjs.cli import _one_line

    repo = tmp_path / "repo"
    repo.mkdir()
    monkeypatch.delenv("NUMPYRO_WJS_MNIST", raising=False)
    monkeypatch.chdir(repo)
    monkeypatch.setattr(data, "__file__", str(repo / "numpyro_wjs" / "data.py"))
    cache = tmp_path / "cache"
    with pytest.raises(FileNotFoundError) as err:
        load_mnist(cache_dir=cache)
    message = str(err.value)
    shared = str(tmp_path / "shared" / "data" / "mnist")
    assert message.count(shared) == 1 and message.count(str(cache)) == 1
    lines = message.splitlines()
    assert lines[1:3] == [f"  {shared!r},", f"  {str(cache)!r}."]
    assert lines[3].startswith("To fix: ") and "NUMPYRO_WJS_MNIST" in lines[3]
    assert "--data-path" in lines[3] and "download=True" in lines[3] and "--download" in lines[3]
    assert f"searched: {shared!r}, {str(cache)!r}. To fix: pass path=" in _one_line(err.value)


def test_missing_dir_and_bad_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="lacks t10k-images-idx3-ubyte.*--download"):
        load_mnist(tmp_path / "absent")
    write_pair(tmp_path, "t10k", 8010)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks t10k-labels-idx1-ubyte\(\.gz\);.*--data-path"):
        load_mnist(tmp_path)
    write_pair(tmp_path, "t10k", 8010)
    with pytest.raises(ValueError, match="split must be one of"):
        load_mnist(tmp_path, split="test")


# ------------------------------------------------------------- splits with train-*


@pytest.mark.parametrize("gz", [True, False])
def test_train_set_joins_train_split(tmp_path, gz):
    write_pair(tmp_path, "t10k", 8005, seed=1, gz=gz)
    write_pair(tmp_path, "train", 7, seed=2, gz=gz)
    train, _ = load_mnist(tmp_path, split="train")
    held, _ = load_mnist(tmp_path, split="heldout")
    everything, _ = load_mnist(tmp_path, split="all")
    assert train.shape[0] == 7 + 8000 and held.shape[0] == 5
    assert everything.shape[0] == 7 + 8005
    np.testing.assert_array_equal(everything[:8007], train)
    np.testing.assert_array_equal(everything[8007:], held)


def test_incomplete_pair(tmp_path):
    write_pair(tmp_path, "t10k", 8005)
    write_pair(tmp_path, "train", 3)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="no matching train labels"):
        load_mnist(tmp_path)


# ------------------------------------------------------------------ corrupt files


def test_bad_magic(tmp_path):
    file = tmp_path / "t10k-images-idx3-ubyte"
    file.write_bytes(idx_bytes(np.zeros((2, 28, 28), np.uint8), 2049))
    with pytest.raises(DataError, match="magic number 2049 where 2051"):
        read_idx(file, 2051)


def test_truncated_and_overlong(tmp_path):
    payload = idx_bytes(np.zeros((3, 28, 28), np.uint8), 2051)
    file = tmp_path / "images"
    file.write_bytes(payload[:-5])
    with pytest.raises(DataError, match="truncated"):
        read_idx(file, 2051)
    file.write_bytes(payload + b"\x00")
    with pytest.raises(DataError, match="too long"):
        read_idx(file, 2051)
    file.write_bytes(payload[:10])
    with pytest.raises(DataError, match="truncated IDX header"):
        read_idx(file, 2051)


def test_not_gzip_and_bad_crc(tmp_path):
    payload = idx_bytes(np.zeros((3, 28, 28), np.uint8), 2051)
    file = tmp_path / "images.gz"
    file.write_bytes(payload)
    with pytest.raises(DataError, match="not a valid gzip file.*download it again"):
        read_idx(file)
    compressed = bytearray(gzip.compress(payload))
    compressed[-8] ^= 0xFF  # the CRC32 of the gzip trailer
    file.write_bytes(bytes(compressed))
    with pytest.raises(DataError, match="not a valid gzip file"):
        read_idx(file)
    file.write_bytes(gzip.compress(payload)[:-12])
    with pytest.raises(DataError, match="not a valid gzip file"):
        read_idx(file)


def test_mismatched_counts(tmp_path):
    write_pair(tmp_path, "t10k", 8005)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros(8004, np.uint8), 2049))
    )
    with pytest.raises(DataError, match="8005 images but .* 8004 labels"):
        load_mnist(tmp_path)


def test_wrong_image_size_and_labels(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(
        idx_bytes(np.zeros((8005, 8, 8), np.uint8), 2051)
    )
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(8005, np.uint8), 2049))
    with pytest.raises(DataError, match=r"expected \(28, 28\)"):
        load_mnist(tmp_path)
    write_pair(tmp_path, "t10k", 8005, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(
        idx_bytes(np.full(8005, 11, np.uint8), 2049)
    )
    with pytest.raises(DataError, match="outside 0-9"):
        load_mnist(tmp_path)


def test_too_few_test_digits(tmp_path):
    write_pair(tmp_path, "t10k", 100)
    with pytest.raises(DataError, match="fewer than"):
        load_mnist(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "nothing.gz")


# -------------------------------------------------------------------- downloads


@pytest.fixture
def served(tmp_path, monkeypatch):
    """Fake mirrors: the first always fails, the second serves synthetic files whose
    uncompressed checksums replace the table in ``data.MNIST_SHA256``."""
    source = tmp_path / "source"
    source.mkdir()
    write_pair(source, "t10k", 8003, seed=3)
    write_pair(source, "train", 4, seed=4)
    sha256 = {
        stem: hashlib.sha256(gzip.decompress((source / f"{stem}.gz").read_bytes())).hexdigest()
        for stem in data.MNIST_SHA256
    }
    monkeypatch.setattr(data, "MNIST_SHA256", sha256)
    calls = []

    def fake_fetch(url, dest):
        calls.append(url)
        if url.startswith("https://down.example/"):
            raise urllib.error.URLError("mirror down")
        Path(dest).write_bytes((source / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(data, "_fetch", fake_fetch)
    return source, calls


MIRRORS = ("https://down.example/", "https://up.example/mnist")


def test_download_writes_verified_files(tmp_path, served, monkeypatch):
    _, calls = served
    cache = tmp_path / "cache"
    monkeypatch.setattr(data, "MNIST_MIRRORS", MIRRORS)
    images, labels = load_mnist(split="train", download=True, cache_dir=cache)
    assert images.shape == (4 + 8000, 28, 28, 1) and labels.shape == (8004,)
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{s}.gz" for s in data.MNIST_SHA256)
    assert len(calls) == 8  # every file: the dead mirror, then the live one
    download_mnist(cache, mirrors=MIRRORS)
    assert len(calls) == 8  # verified files are not downloaded again


def test_download_fetches_only_what_the_split_needs(tmp_path, served, monkeypatch):
    source, calls = served
    monkeypatch.setattr(data, "MNIST_MIRRORS", ("https://up.example/mnist",))
    directory = tmp_path / "t10k_only"
    directory.mkdir()
    for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (directory / f"{stem}.gz").write_bytes((source / f"{stem}.gz").read_bytes())
    images, _ = load_mnist(directory, download=True, split="heldout")
    assert images.shape == (3, 28, 28, 1) and calls == []  # the train files are not needed
    load_mnist(directory, download=True, split="train")
    assert sorted(url.rsplit("/", 1)[1] for url in calls) == [
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"
    ]
    with pytest.raises(ValueError, match="unknown MNIST files"):
        download_mnist(directory, files=["t10k-images"])


def test_download_checksum_mismatch_leaves_nothing(tmp_path, served, monkeypatch):
    monkeypatch.setitem(data.MNIST_SHA256, "t10k-images-idx3-ubyte", "0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="does not match the known MNIST checksum"):
        download_mnist(cache, mirrors=MIRRORS)
    assert not (cache / "t10k-images-idx3-ubyte.gz").exists()
    assert not [p for p in cache.iterdir() if p.name.endswith(".part")]


def test_download_unreachable(tmp_path, served):
    with pytest.raises(ConnectionError, match="any mirror"):
        download_mnist(tmp_path / "cache", mirrors=("https://down.example/",))


@needs_mnist
def test_download_accepts_real_files(tmp_path, monkeypatch):
    """The real t10k bytes pass the shipped checksums (train-* are not available here)."""
    monkeypatch.setattr(
        data,
        "_fetch",
        lambda url, dest: Path(dest).write_bytes(
            (SHARED_MNIST / url.rsplit("/", 1)[1]).read_bytes()
        ),
    )
    assert load_mnist(tmp_path, download=True, split="heldout")[0].shape == (2000, 28, 28, 1)


# ------------------------------------------------------------ other data sources


def test_digits8x8():
    images, labels = load_digits8x8()
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.float32
    assert images.min() == 0.0 and images.max() == 1.0
    assert labels.shape == (1797,) and labels.dtype == np.int32
    assert labels[:10].tolist() == list(range(10))


def test_mixture_samples():
    from numpyro_wjs.targets import GaussianMixture

    mixture = GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[-2.0, 0.0], [2.0, 0.0]]), 0.5)
    n = 4000
    draws = mixture_samples(mixture, jax.random.key(0), n)
    assert isinstance(draws, np.ndarray) and draws.shape == (n, 2) and draws.dtype == np.float32
    # First coordinate: mean 0.3 * -2 + 0.7 * 2 = 0.8, variance
    # 0.5^2 + 4 - 0.8^2 = 3.61; tol = 5 standard errors = 5 sqrt(3.61 / n).
    assert abs(draws[:, 0].mean() - 0.8) < 5 * np.sqrt(3.61 / n)
    with pytest.raises(ValueError, match="positive integer"):
        mixture_samples(mixture, jax.random.key(0), 0)


def test_as_array():
    out = as_array(jnp.ones((4, 2, 3), jnp.float32))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (4, 2, 3)
    assert as_array(np.arange(6).reshape(3, 2)).dtype == np.float32
    with pytest.raises(ValueError, match="at least 2-D"):
        as_array(np.ones(3))
    with pytest.raises(ValueError, match="empty"):
        as_array(np.ones((0, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        as_array(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="non-finite"):
        as_array(np.array([[1e300, 0.0]]))
    with pytest.raises(TypeError, match="real numbers"):
        as_array(np.array([["a", "b"]]))
    with pytest.raises(TypeError, match="real numbers"):
        as_array(np.ones((2, 2), bool))
