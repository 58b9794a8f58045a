"""The shipped MNIST denoiser: loads by name and keeps its held-out quality."""

import json

import jax
import numpy as np
import pytest
from mnist_data import SHARED_MNIST, needs_mnist

from numpyro_wjs import pretrained
from numpyro_wjs.data import load_mnist
from numpyro_wjs.train import denoising_errors


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
