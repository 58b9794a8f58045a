"""Tests of numpyro_wjs.nn.classifier and numpyro_wjs.nn.checkpoints."""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mnist_data import SHARED_MNIST, needs_mnist, skip_without_mnist
from flax import nnx

from numpyro_wjs.nn.checkpoints import CheckpointError, read_metadata, write_metadata
from numpyro_wjs.nn.classifier import (
    PRETRAINED_CLASSIFIER_DIR,
    DigitClassifier,
    accuracy,
    load_classifier,
    load_pretrained_classifier,
    save_classifier,
    train_classifier,
)
from numpyro_wjs.data import load_mnist



@pytest.fixture(scope="module")
def mnist():
    skip_without_mnist()
    return load_mnist(SHARED_MNIST, split="train"), load_mnist(SHARED_MNIST, split="heldout")


@pytest.fixture
def small_model():
    return DigitClassifier(rngs=nnx.Rngs(1))


# ------------------------------------------------------------------------- training


@needs_mnist
def test_heldout_accuracy_after_short_training(mnist):
    (x, y), (xh, yh) = mnist
    model, info = train_classifier(x, y, steps=200, batch_size=128, seed=0, progress_bar=False)
    assert info.losses.shape == (200,) and np.isfinite(info.losses).all()
    assert info.losses[-20:].mean() < 0.5 * info.losses[:20].mean()
    assert info.eval_accuracy is None
    # Evaluated on the held-out digits 8000-9999 only; a small CNN reaches ~0.97 here.
    assert accuracy(model, xh, yh) > 0.9


def test_training_is_deterministic():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(64, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, size=64)
    kwargs = dict(steps=6, batch_size=16, augment_noise=0.1, augment_shift=1, progress_bar=False)
    m1, i1 = train_classifier(x, y, seed=3, eval_data=(x, y), **kwargs)
    m2, i2 = train_classifier(x, y, seed=3, eval_data=(x, y), **kwargs)
    m3, i3 = train_classifier(x, y, seed=4, **kwargs)
    np.testing.assert_array_equal(i1.losses, i2.losses)
    np.testing.assert_array_equal(np.asarray(m1(x)), np.asarray(m2(x)))
    assert i1.eval_accuracy == i2.eval_accuracy == accuracy(m1, x, y)
    assert not np.array_equal(i1.losses, i3.losses)


def test_checkpointed_training_resumes_and_loads(tmp_path):
    """The classifier trains through the same loop as the denoiser: an interrupted run
    resumes (mid-pass: the batch order is replayed) to the uninterrupted result."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(64, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, size=64)
    kwargs = dict(steps=6, batch_size=16, augment_noise=0.1, augment_shift=1, seed=3, progress_bar=False)
    straight, info = train_classifier(x, y, **kwargs)
    run = tmp_path / "run"
    train_classifier(x, y, checkpoint_dir=run, checkpoint_every=3, **kwargs)
    shutil.rmtree(run / "step_00000006")
    resumed, resumed_info = train_classifier(x, y, checkpoint_dir=run, checkpoint_every=3, **kwargs)
    np.testing.assert_array_equal(resumed_info.losses, info.losses)
    np.testing.assert_array_equal(np.asarray(resumed(x)), np.asarray(straight(x)))
    loaded, metadata = load_classifier(run)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(straight(x)))
    assert metadata["step"] == 6 and metadata["train"]["sampling"] == "epochs"
    assert metadata["train"]["augment_noise"] == 0.1 and "[0, 1]" in metadata["pixel_scaling"]
    with pytest.raises(CheckpointError, match="augment_noise: checkpoint 0.1, now 0.2"):
        train_classifier(x, y, checkpoint_dir=run, **{**kwargs, "augment_noise": 0.2})


def test_training_rejects_bad_input():
    x = np.zeros((10, 8, 8, 1), np.float32)
    y = np.zeros(10, np.int64)
    with pytest.raises(ValueError, match="labels must lie in"):
        train_classifier(x, y + 10, steps=1, batch_size=2)
    with pytest.raises(ValueError, match="labels must be an integer array"):
        train_classifier(x, y[:5], steps=1, batch_size=2)
    with pytest.raises(ValueError, match="steps"):
        train_classifier(x, y, steps=0, batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        train_classifier(x, y, steps=1, batch_size=11)
    with pytest.raises(ValueError, match="learning_rate"):
        train_classifier(x, y, steps=1, batch_size=2, learning_rate=float("nan"))
    with pytest.raises(ValueError, match="NHWC"):
        train_classifier(x.reshape(10, 64), y, steps=1, batch_size=2)
    with pytest.raises(ValueError, match="non-finite"):
        train_classifier(np.full_like(x, np.nan), y, steps=1, batch_size=2)


# ----------------------------------------------------------------------- the model


def test_input_shapes(small_model):
    model = small_model
    images = jax.random.uniform(jax.random.key(0), (2, 3, 28, 28, 1))
    logits = model(images)
    assert logits.shape == (2, 3, 10)
    np.testing.assert_allclose(model(images.reshape(2, 3, 784)), logits, rtol=1e-6)
    np.testing.assert_allclose(model(images[0, 1]), logits[0, 1], rtol=1e-5, atol=1e-6)
    assert model.features(images).shape == (2, 3, 64)
    np.testing.assert_allclose(model.probs(images).sum(-1), 1.0, rtol=1e-6)
    labels = model.predict(images)
    assert labels.shape == (2, 3) and labels.dtype == jnp.int32
    np.testing.assert_array_equal(labels, jnp.argmax(logits, -1))
    with pytest.raises(ValueError, match="images must have shape"):
        model(jnp.zeros((2, 27, 28, 1)))


def test_small_images_and_bad_config():
    model = DigitClassifier(rngs=nnx.Rngs(0), image_shape=(8, 8, 1), num_classes=3, hidden=5)
    assert model(jnp.zeros((4, 8, 8, 1))).shape == (4, 3)
    assert model.features(jnp.zeros((4, 64))).shape == (4, 5)
    with pytest.raises(ValueError, match="image_shape"):
        DigitClassifier(rngs=nnx.Rngs(0), image_shape=(28, 28))
    with pytest.raises(ValueError, match="channels"):
        DigitClassifier(rngs=nnx.Rngs(0), channels=(16,))
    with pytest.raises(ValueError, match="num_classes"):
        DigitClassifier(rngs=nnx.Rngs(0), num_classes=1)


# --------------------------------------------------------------------- checkpoints


def test_save_load_roundtrip(tmp_path, small_model):
    images = jax.random.uniform(jax.random.key(1), (5, 28, 28, 1))
    path = save_classifier(tmp_path / "clf", small_model, {"heldout_accuracy": 0.5})
    model, metadata = load_classifier(path)
    np.testing.assert_array_equal(np.asarray(model(images)), np.asarray(small_model(images)))
    assert metadata["heldout_accuracy"] == 0.5
    assert metadata["model_kwargs"] == small_model.config
    assert "[0, 1]" in metadata["pixel_scaling"]
    other = DigitClassifier(rngs=nnx.Rngs(2))
    save_classifier(path, other)  # replaces the earlier checkpoint
    reloaded, metadata = load_classifier(path)
    np.testing.assert_array_equal(np.asarray(reloaded(images)), np.asarray(other(images)))
    assert "heldout_accuracy" not in metadata
    assert [p.name for p in tmp_path.iterdir()] == ["clf"]


def test_save_refuses_foreign_dir_and_reserved_keys(tmp_path, small_model):
    (tmp_path / "data.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a classifier checkpoint"):
        save_classifier(tmp_path, small_model)
    assert (tmp_path / "data.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="reserved"):
        save_classifier(tmp_path / "clf", small_model, {"model_kwargs": {}})
    with pytest.raises(TypeError, match="DigitClassifier"):
        save_classifier(tmp_path / "clf", object())


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_classifier(tmp_path / "absent")


@pytest.fixture
def saved(tmp_path, small_model):
    return save_classifier(tmp_path / "clf", small_model)


def test_partial_checkpoints(saved):
    meta = saved / "metadata.json"
    text = meta.read_text()
    meta.write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_classifier(saved)
    meta.unlink()
    with pytest.raises(CheckpointError, match="without metadata.json"):
        load_classifier(saved)
    meta.write_text(text)
    shutil.rmtree(saved / "weights")
    with pytest.raises(CheckpointError, match="without weights/"):
        load_classifier(saved)


def expect_restore_error(path: Path, message: str) -> None:
    """``load_classifier(path)`` fails before or in Orbax's restore with a CheckpointError.

    Orbax abandons its other pending reads after the first failure; they are collected
    here so that their "never awaited" notices stay within the calling test, which
    filters them.
    """
    with pytest.raises(CheckpointError, match=message) as info:
        load_classifier(path)
    del info
    gc.collect()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_weights(saved):
    blobs = [p for p in (saved / "weights").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert blobs
    for blob in blobs:
        blob.write_bytes(blob.read_bytes()[:7])
    expect_restore_error(saved, "damaged checkpoint .*SHA-256")
    # Without recorded digests the damage is found by Orbax.
    meta = json.loads((saved / "metadata.json").read_text())
    del meta["files"]
    (saved / "metadata.json").write_text(json.dumps(meta))
    expect_restore_error(saved, "cannot restore")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_metadata_inconsistent_with_weights(saved):
    meta = json.loads((saved / "metadata.json").read_text())
    meta["config"]["hidden"] = 32
    (saved / "metadata.json").write_text(json.dumps(meta))
    expect_restore_error(saved, "does not match the network: weights array 'dense1/bias'")
    meta["config"]["channels"] = [16]
    (saved / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="invalid DigitClassifier config"):
        load_classifier(saved)
    meta["format"] = "something else"
    (saved / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="expected 'numpyro_wjs.DigitClassifier'"):
        load_classifier(saved)


def test_metadata_helpers(tmp_path):
    path = write_metadata(tmp_path / "m.json", {"a": 1, "b": [1.5, "x"], "c": {"d": None}})
    assert read_metadata(path, required=("a", "b")) == {"a": 1, "b": [1.5, "x"], "c": {"d": None}}
    with pytest.raises(CheckpointError, match=r"lacks the keys \['z'\]"):
        read_metadata(path, required=("a", "z"))
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        write_metadata(tmp_path / "m.json", {"a": object()})
    with pytest.raises(ValueError, match="finite"):
        write_metadata(tmp_path / "m.json", {"a": {"b": [float("nan")]}})
    with pytest.raises(TypeError, match="keys must be strings"):
        write_metadata(tmp_path / "m.json", {1: 2})
    assert read_metadata(path)["a"] == 1  # failed writes leave the old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="expected an object"):
        read_metadata(tmp_path / "list.json")
    with pytest.raises(FileNotFoundError):
        read_metadata(tmp_path / "absent.json")


# ------------------------------------------------------------- shipped classifier


@needs_mnist
@pytest.mark.skipif(
    not PRETRAINED_CLASSIFIER_DIR.exists(), reason="the pretrained classifier is not built"
)
def test_pretrained_classifier(mnist):
    _, (xh, yh) = mnist
    model, metadata = load_pretrained_classifier()
    assert metadata["model_kwargs"]["image_shape"] == [28, 28, 1]
    heldout = accuracy(model, xh, yh)
    # Forward passes may differ in the last bit across batch sizes and CPUs, which can
    # flip a borderline digit or two out of 2000.
    assert abs(heldout - metadata["heldout_accuracy"]) <= 2 / 2000
    assert heldout > 0.97
