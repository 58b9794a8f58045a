"""Networks shipped with the package, loaded by name, and the recipes that made them.

Both were trained on MNIST test digits 0-7999 only; digits 8000-9999 are held out
for every number reported in their metadata (``numpyro_wjs.data``).

* ``"mnist"``: a noise-conditional U-Net denoiser ``net(y, s) -> E[X | y]`` for
  ``s`` in ``[0.05, 1.2]`` (pixels in ``[0, 1]``). One network serves walk-jump at
  any ``sigma`` in that range and the many-measurement modes, which need every
  level ``sigma / sqrt(m)``.
* ``"mnist-classifier"``: a small CNN for mode (digit) labels in diagnostics.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
MNIST_DENOISER_DIR = PRETRAINED_DIR / "mnist_denoiser"

#: Noise levels at which the shipped denoiser's held-out error is reported.
EVAL_SIGMAS = (0.1, 0.25, 0.5, 1.0)

__all__ = ["load_pretrained", "train_pretrained_denoiser", "PRETRAINED_DIR", "MNIST_DENOISER_DIR"]


def load_pretrained(name: str = "mnist"):
    """Load a shipped network: ``"mnist"`` (denoiser) or ``"mnist-classifier"``.

    Returns the network (an NNX module, callable). Metadata (recipe, held-out
    scores) is in ``metadata.json`` beside the weights.
    """
    if name == "mnist":
        from .train import load_denoiser

        if not MNIST_DENOISER_DIR.exists():
            raise FileNotFoundError(
                f"The pretrained MNIST denoiser is missing from {MNIST_DENOISER_DIR}; "
                "recreate it with `numpyro-wjs train --pretrained-mnist`."
            )
        return load_denoiser(MNIST_DENOISER_DIR)
    if name == "mnist-classifier":
        from .classifier import load_pretrained_classifier

        return load_pretrained_classifier()[0]
    raise ValueError(f"Unknown pretrained network {name!r}; choose 'mnist' or 'mnist-classifier'.")


def train_pretrained_denoiser(
    out_dir: str | os.PathLike = MNIST_DENOISER_DIR,
    *,
    data_path: str | os.PathLike | None = None,
    channels: tuple[int, ...] = (16, 32, 64),
    sigma_range: tuple[float, float] = (0.05, 1.2),
    steps: int = 4000,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    progress_bar: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Train the shipped MNIST denoiser and save it to ``out_dir``.

    A noise-conditional ``UNet`` trained on
    ``load_mnist(data_path, split="train")`` with ``s`` log-uniform in
    ``sigma_range``; the held-out mean squared error per image (summed over the 784
    pixels) at each of ``EVAL_SIGMAS`` is stored in the metadata. With
    ``checkpoint_dir`` an interrupted run resumes where it stopped.
    """
    from flax import nnx

    from .data import load_mnist
    from .denoisers import UNet
    from .train import denoising_errors, save_checkpoint, train_denoiser

    train_images, _ = load_mnist(data_path, split="train")
    heldout, _ = load_mnist(data_path, split="heldout")
    recipe = {
        "channels": list(channels),
        "sigma_range": list(sigma_range),
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "function": "numpyro_wjs.pretrained.train_pretrained_denoiser",
    }
    start = time.perf_counter()
    net = UNet(1, tuple(channels), noise_conditional=True, rngs=nnx.Rngs(seed))
    result = train_denoiser(
        net,
        train_images,
        tuple(sigma_range),
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=500 if checkpoint_dir is not None else None,
        normalisation={"pixels": "float32 in [0, 1]", "layout": "NHWC (28, 28, 1)"},
        progress_bar=progress_bar,
    )
    model = result.ema_model
    heldout_mse = {}
    for i, s in enumerate(EVAL_SIGMAS):
        err = denoising_errors(model, heldout, s, key=jax.random.key(1000 + i))
        heldout_mse[str(s)] = {"mse": float(np.mean(err)), "stderr": float(np.std(err) / np.sqrt(err.size))}
    metadata = {
        "name": "mnist",
        "train_split": f"MNIST t10k digits 0-7999 ({train_images.shape[0]} digits)",
        "heldout_split": "MNIST t10k digits 8000-9999",
        "heldout_mse_per_image": heldout_mse,
        "training_recipe": recipe,
        "training_seconds": round(time.perf_counter() - start, 1),
    }
    save_checkpoint(out_dir, model, metadata=metadata)
    return model, metadata
