"""Networks shipped with the package, loaded by name, and the recipes that made them.

Both were trained on MNIST test digits 0-7999 only; digits 8000-9999 are held out
for every number reported in their metadata (``numpyro_wjs.data``).

* ``"mnist"``: a noise-conditional U-Net denoiser ``net(y, s) -> E[X | y]`` for
  ``s`` in ``[0.05, 1.2]`` (pixels in ``[0, 1]``). One network serves walk-jump at
  any ``sigma`` in that range and the many-measurement modes, which need every
  level ``sigma / sqrt(m)``. Trained on digits 0-6999 with ``ln s`` normal around
  ``ln 0.6`` (where the walk jumps), its checkpoint chosen on digits 7000-7999.
* ``"mnist-classifier"``: a small CNN for mode (digit) labels in diagnostics.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
MNIST_DENOISER_DIR = PRETRAINED_DIR / "mnist_denoiser"

#: Noise levels at which the shipped denoiser's held-out error is reported.
EVAL_SIGMAS = (0.1, 0.25, 0.5, 0.71, 1.0)
#: Noise levels of the validation error that selects the published checkpoint.
VALIDATION_SIGMAS = (0.25, 0.5, 1.0)
#: Training digits ``VALIDATION_START``-7999 are the validation split.
VALIDATION_START = 7000
#: ``WalkJump`` settings for the shipped denoiser (``numpyro-wjs demo --mnist``,
#: examples 7 and 8): the best point of the sigma / measurements frontier measured in
#: docs/benchmarks.md, a walk that hops between digits with jumps at the quality of
#: ``sigma / sqrt(num_measurements)``.
MNIST_WALK_JUMP = {"sigma": 1.2, "num_measurements": 4, "mode": "sequential", "num_inner_steps": 8, "jump_every": 5}

__all__ = [
    "EVAL_SIGMAS",
    "MNIST_DENOISER_DIR",
    "MNIST_WALK_JUMP",
    "PRETRAINED_DIR",
    "heldout_errors",
    "load_pretrained",
    "train_pretrained_denoiser",
]


def load_pretrained(name: str = "mnist"):
    """Load a shipped network: ``"mnist"`` (denoiser) or ``"mnist-classifier"``.

    Returns the network (an NNX module, callable). Metadata (recipe, held-out
    scores) is in ``metadata.json`` beside the weights.
    """
    if name == "mnist":
        from numpyro_wjs.nn.train import load_denoiser

        if not MNIST_DENOISER_DIR.exists():
            raise FileNotFoundError(
                f"The pretrained MNIST denoiser is missing from {MNIST_DENOISER_DIR}; "
                "recreate it with `numpyro-wjs train --pretrained-mnist`."
            )
        return load_denoiser(MNIST_DENOISER_DIR)
    if name == "mnist-classifier":
        from numpyro_wjs.nn.classifier import load_pretrained_classifier

        return load_pretrained_classifier()[0]
    raise ValueError(f"Unknown pretrained network {name!r}; choose 'mnist' or 'mnist-classifier'.")


def train_pretrained_denoiser(
    out_dir: str | os.PathLike = MNIST_DENOISER_DIR,
    *,
    data_path: str | os.PathLike | None = None,
    channels: tuple[int, ...] = (16, 64, 192),
    sigma_range: tuple[float, float] = (0.05, 1.2),
    noise_levels: tuple[float, float] | None = (math.log(0.6), 0.7),
    steps: int = 20000,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    ema_decay: float = 0.9995,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 1000,
    progress_bar: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """Train the shipped MNIST denoiser and save it to ``out_dir``.

    A noise-conditional ``UNet`` trained on digits 0-6999 of
    ``load_mnist(data_path, split="train")`` with ``ln s ~ N(noise_levels)`` truncated
    to ``sigma_range`` (``None``: log-uniform). Digits 7000-7999 are the validation
    split: their MSE at ``VALIDATION_SIGMAS`` is recorded every ``checkpoint_every``
    steps, and with ``checkpoint_dir`` the published weights are those of the kept
    checkpoint with the lowest validation error (the sum over the levels). The
    held-out digits 8000-9999 are only scored: the mean squared error per image
    (summed over the 784 pixels) at each of ``EVAL_SIGMAS`` goes into the metadata.
    With ``checkpoint_dir`` an interrupted run resumes where it stopped, and a larger
    ``steps`` continues a finished one.
    """
    from flax import nnx

    from numpyro_wjs.data import MNIST_HELDOUT_START, load_mnist
    from numpyro_wjs.nn.denoisers import UNet
    from numpyro_wjs.nn.checkpoints import STEP_NAMES
    from numpyro_wjs.nn.train import load_denoiser, save_checkpoint, train_denoiser

    # t10k digits 0-7999: split="train" ends with them (after MNIST's 60,000 training
    # digits when those files are present too)
    digits = load_mnist(data_path, split="train")[0][-MNIST_HELDOUT_START:]
    heldout, _ = load_mnist(data_path, split="heldout")
    train_images, validation = digits[:VALIDATION_START], digits[VALIDATION_START:]
    recipe = {
        "channels": list(channels),
        "sigma_range": list(sigma_range),
        "noise_levels": None if noise_levels is None else list(noise_levels),
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "ema_decay": ema_decay,
        "seed": seed,
        "function": "numpyro_wjs.nn.pretrained.train_pretrained_denoiser",
    }
    start = time.perf_counter()
    net = UNet(1, tuple(channels), noise_conditional=True, rngs=nnx.Rngs(seed))
    result = train_denoiser(
        net,
        train_images,
        tuple(sigma_range),
        noise_levels=noise_levels,
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        ema_decay=ema_decay,
        eval_data=validation,
        eval_every=checkpoint_every,
        eval_sigmas=VALIDATION_SIGMAS,
        seed=seed,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every if checkpoint_dir is not None else None,
        keep_checkpoints=steps // checkpoint_every + 1,
        normalisation={"pixels": "float32 in [0, 1]", "layout": "NHWC (28, 28, 1)"},
        progress_bar=progress_bar,
    )
    model, selected = result.ema_model, steps
    if checkpoint_dir is not None and len(result.eval_steps):
        best = int(np.argmin(result.eval_mse.sum(axis=1)))
        selected = int(result.eval_steps[best])
        if selected != steps:
            model = load_denoiser(Path(checkpoint_dir) / STEP_NAMES.build_name(selected))
    metadata = {
        "name": "mnist",
        "train_split": f"MNIST t10k digits 0-{VALIDATION_START - 1} ({train_images.shape[0]} digits)",
        "validation_split": f"MNIST t10k digits {VALIDATION_START}-7999 ({validation.shape[0]} digits)",
        "heldout_split": "MNIST t10k digits 8000-9999",
        "heldout_mse_per_image": heldout_errors(model, heldout),
        "validation_mse_per_image": {
            "steps": result.eval_steps.tolist(),
            "sigmas": [float(s) for s in result.eval_sigmas],
            "mse": result.eval_mse.tolist(),
        },
        "selected_step": selected,
        "images_seen": selected * batch_size,
        "training_recipe": recipe,
        "training_seconds": round(time.perf_counter() - start, 1),
        "training_device": f"{jax.default_backend()} ({jax.device_count()} device(s), {os.cpu_count()} CPU cores)",
    }
    save_checkpoint(out_dir, model, metadata=metadata)
    return model, metadata


def heldout_errors(model: Any, heldout: np.ndarray) -> dict[str, dict[str, float]]:
    """Mean squared error per image (and its standard error) at each of ``EVAL_SIGMAS``.

    The noise of level ``i`` comes from ``jax.random.key(1000 + i)``, so every network
    is scored on the same noisy images.
    """
    from numpyro_wjs.nn.train import denoising_errors

    scores = {}
    for i, s in enumerate(EVAL_SIGMAS):
        err = denoising_errors(model, heldout, s, key=jax.random.key(1000 + i))
        scores[str(s)] = {"mse": float(np.mean(err)), "stderr": float(np.std(err) / np.sqrt(err.size))}
    return scores
