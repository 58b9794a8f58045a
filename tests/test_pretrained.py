"""The shipped MNIST denoiser: loads by name and keeps its held-out quality."""

import json

import jax
import numpy as np
import pytest
from flax import nnx
from mnist_data import SHARED_MNIST, needs_mnist

from numpyro_wjs.nn import pretrained
from numpyro_wjs.data import load_mnist
from numpyro_wjs.nn.train import denoising_errors


@pytest.fixture(scope="module")
def net():
    return pretrained.load_pretrained("mnist")


@needs_mnist
def test_shipped_denoiser_matches_its_recorded_heldout_error(net):
    meta = json.loads((pretrained.MNIST_DENOISER_DIR / "metadata.json").read_text())
    assert meta["heldout_split"] == "MNIST t10k digits 8000-9999"
    heldout, _ = load_mnist(SHARED_MNIST, split="heldout")
    x = heldout[:500]
    err = denoising_errors(net, x, 0.5, key=jax.random.key(7))
    recorded = meta["heldout_mse_per_image"]["0.5"]["mse"]
    # 500 of the 2000 held-out digits: 5 standard errors of this subsample's mean
    assert abs(err.mean() - recorded) < 5 * err.std() / np.sqrt(err.size)
    # denoising removes most of the noise: E||noise||^2 = 784 * 0.25
    assert err.mean() < 0.1 * 784 * 0.25


def test_shipped_denoiser_is_noise_conditional_and_gives_a_score(net):
    assert net.noise_conditional
    y = np.full((28, 28, 1), 0.3, np.float32)
    assert net(y, 0.5).shape == (28, 28, 1)
    np.testing.assert_allclose(net.score(y, 0.5), (net(y, 0.5) - y) / 0.25, rtol=1e-5, atol=1e-5)


def test_load_pretrained_errors(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="mnist"):
        pretrained.load_pretrained("cifar")
    monkeypatch.setattr(pretrained, "MNIST_DENOISER_DIR", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="train --pretrained-mnist"):
        pretrained.load_pretrained("mnist")


@needs_mnist
def test_shipped_denoiser_was_chosen_on_validation_digits_only():
    meta = json.loads((pretrained.MNIST_DENOISER_DIR / "metadata.json").read_text())
    assert meta["train_split"].startswith("MNIST t10k digits 0-6999")
    assert meta["validation_split"].startswith("MNIST t10k digits 7000-7999")
    validation = meta["validation_mse_per_image"]
    best = int(np.argmin(np.sum(validation["mse"], axis=1)))
    assert meta["selected_step"] == validation["steps"][best]
    assert meta["images_seen"] == meta["selected_step"] * meta["training_recipe"]["batch_size"]
    assert set(meta["heldout_mse_per_image"]) == {str(s) for s in pretrained.EVAL_SIGMAS}


@needs_mnist
def test_recipe_publishes_the_checkpoint_with_the_lowest_validation_error(tmp_path, monkeypatch):
    from numpyro_wjs import data
    from numpyro_wjs.nn import train

    # Make the validation error of step 10 the lowest, whatever the training did.
    real = train.denoising_errors
    calls = []

    def scored(model, data, sigma, *, key, batch_size=1024):
        err = real(model, data, sigma, key=key, batch_size=batch_size)
        if data.shape[0] == 1000:  # the validation digits 7000-7999
            calls.append(1)
            return err * (0.5 if len(calls) <= 3 else 1.0)  # the first evaluation: step 10
        return err

    monkeypatch.setattr(train, "denoising_errors", scored)
    # With MNIST's training set present, split="train" puts its digits first: the
    # recipe still takes t10k digits 0-6999 and validates on 7000-7999.
    real_load = data.load_mnist

    def with_training_set(path=None, *, split="train", **kwargs):
        images, labels = real_load(path, split=split, **kwargs)
        if split != "train":
            return images, labels
        extra = np.ones((50, 28, 28, 1), np.float32), np.zeros(50, np.int32)
        return np.concatenate([extra[0], images]), np.concatenate([extra[1], labels])

    monkeypatch.setattr(data, "load_mnist", with_training_set)
    model, meta = pretrained.train_pretrained_denoiser(
        tmp_path / "out", data_path=SHARED_MNIST, channels=(8, 16), steps=20, checkpoint_every=10,
        checkpoint_dir=tmp_path / "run", progress_bar=False,
    )
    assert meta["validation_mse_per_image"]["steps"] == [10, 20]
    assert meta["selected_step"] == 10 and meta["images_seen"] == 10 * 64
    assert meta["train_split"].endswith("(7000 digits)")
    assert meta["validation_split"].endswith("(1000 digits)")
    published = train.load_denoiser(tmp_path / "out")
    at_10 = train.load_denoiser(tmp_path / "run" / "step_00000010")
    for a, b in zip(jax.tree.leaves(nnx.state(published, nnx.Param)), jax.tree.leaves(nnx.state(at_10, nnx.Param))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
