"""A small convolutional digit classifier for mode-hopping diagnostics.

Walk-jump samples of images carry no label; to count how often a chain moves between
digit classes (its *modes*), every jump ``xhat(y_t)`` is labelled by a classifier
``f: [0, 1]^{H x W x C} -> {0, ..., K-1}``, ``f(x) = argmax_k softmax(g(x))_k``. The
penultimate activations ``phi(x)`` serve as features for a Frechet distance between
sample and data distributions.

Architecture (``g``)::

    x -> conv3x3(c1) -> relu -> maxpool2 -> conv3x3(c2) -> relu -> maxpool2
      -> flatten -> dense(hidden) -> relu  (= phi(x), "features")
      -> dense(K)                           (= logits)

Inputs follow the pixel convention of ``numpyro_wjs.data`` (float32 in ``[0, 1]``,
NHWC); flat vectors of length ``H * W * C`` (as produced by samplers on ``R^d``) are
accepted too.

Example
-------
>>> from numpyro_wjs.nn.classifier import load_pretrained_classifier
>>> model, info = load_pretrained_classifier()  # doctest: +SKIP
>>> model.predict(samples.reshape(-1, 784))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from numpyro_wjs.data import as_array, load_mnist
from numpyro_wjs.nn.checkpoints import (
    METADATA_FILE,
    load_network,
    network_metadata,
    pure_params,
    save_network,
)
from numpyro_wjs.nn.fit import TrainConfig, fit
from numpyro_wjs.nn.registry import register_architecture
from numpyro_wjs.validation import positive_int

__all__ = [
    "PRETRAINED_CLASSIFIER_DIR",
    "ClassificationLoss",
    "ClassifierTrainInfo",
    "DigitClassifier",
    "accuracy",
    "load_classifier",
    "load_pretrained_classifier",
    "save_classifier",
    "train_classifier",
    "train_pretrained_classifier",
]

PRETRAINED_CLASSIFIER_DIR = Path(__file__).resolve().parent / "pretrained" / "mnist_classifier"
"""Directory of the shipped MNIST classifier (trained on digits 0-7999 only)."""

_FORMAT = "numpyro_wjs.DigitClassifier"
_PIXEL_SCALING = "float32 in [0, 1], NHWC (byte / 255 for MNIST)"


@register_architecture
class DigitClassifier(nnx.Module):
    """Two-layer CNN classifier ``x -> logits`` (see the module docstring).

    Parameters
    ----------
    rngs
        ``nnx.Rngs`` used to initialise the weights.
    image_shape
        ``(H, W, C)`` of one image; ``H`` and ``W`` at least 4.
    num_classes
        Number of classes ``K``.
    channels
        Output channels ``(c1, c2)`` of the two convolutions.
    hidden
        Width of the penultimate (feature) layer.
    """

    def __init__(
        self,
        *,
        rngs: nnx.Rngs,
        image_shape: Sequence[int] = (28, 28, 1),
        num_classes: int = 10,
        channels: Sequence[int] = (16, 32),
        hidden: int = 64,
    ):
        image_shape = tuple(int(s) for s in image_shape)
        channels = tuple(int(c) for c in channels)
        if len(image_shape) != 3 or min(image_shape[:2]) < 4 or image_shape[2] < 1:
            raise ValueError(
                f"image_shape must be (H, W, C) with H, W >= 4 and C >= 1, got {image_shape}."
            )
        if len(channels) != 2 or min(channels) < 1:
            raise ValueError(f"channels must be two positive integers, got {channels}.")
        if int(num_classes) < 2 or int(hidden) < 1:
            raise ValueError(
                f"num_classes must be >= 2 and hidden >= 1, got {num_classes}, {hidden}."
            )
        self.image_shape = image_shape
        self.num_classes = int(num_classes)
        self.channels = channels
        self.hidden = int(hidden)
        h, w, c = image_shape
        self.conv1 = nnx.Conv(c, channels[0], (3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(channels[0], channels[1], (3, 3), rngs=rngs)
        self.dense1 = nnx.Linear((h // 4) * (w // 4) * channels[1], self.hidden, rngs=rngs)
        self.dense2 = nnx.Linear(self.hidden, self.num_classes, rngs=rngs)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments (without ``rngs``), JSON-serialisable."""
        return {
            "image_shape": list(self.image_shape),
            "num_classes": self.num_classes,
            "channels": list(self.channels),
            "hidden": self.hidden,
        }

    def _as_batch(self, images: jax.Array) -> tuple[jax.Array, tuple[int, ...]]:
        """Reshape ``(..., H, W, C)`` or ``(..., H*W*C)`` to ``(B, H, W, C)``."""
        images = jnp.asarray(images)
        size = math.prod(self.image_shape)
        if images.ndim >= 3 and images.shape[-3:] == self.image_shape:
            batch_shape = images.shape[:-3]
        elif images.ndim >= 1 and images.shape[-1] == size:
            batch_shape = images.shape[:-1]
        else:
            raise ValueError(
                f"images must have shape (..., {', '.join(map(str, self.image_shape))}) "
                f"or (..., {size}), got {images.shape}."
            )
        return images.reshape((-1, *self.image_shape)), batch_shape

    def _features(self, x: jax.Array) -> jax.Array:
        x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), strides=(2, 2))
        x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))
        return nnx.relu(self.dense1(x.reshape(x.shape[0], -1)))

    def features(self, images: jax.Array) -> jax.Array:
        """Penultimate activations ``phi(x)``, shape ``(..., hidden)``."""
        x, batch_shape = self._as_batch(images)
        return self._features(x).reshape((*batch_shape, self.hidden))

    def __call__(self, images: jax.Array) -> jax.Array:
        """Logits ``g(x)``, shape ``(..., num_classes)``."""
        x, batch_shape = self._as_batch(images)
        return self.dense2(self._features(x)).reshape((*batch_shape, self.num_classes))

    def probs(self, images: jax.Array) -> jax.Array:
        """Class probabilities ``softmax(g(x))``, shape ``(..., num_classes)``."""
        return jax.nn.softmax(self(images), axis=-1)

    def predict(self, images: jax.Array) -> jax.Array:
        """Labels ``argmax_k g(x)_k``, shape ``(...)``, int32."""
        return jnp.argmax(self(images), axis=-1).astype(jnp.int32)


class ClassifierTrainInfo(NamedTuple):
    """Diagnostics of ``train_classifier``."""

    losses: np.ndarray
    """Mini-batch cross-entropy at every step, shape ``(steps,)``: the learning curve."""
    eval_accuracy: float | None
    """Accuracy on ``eval_data`` after training, ``None`` without ``eval_data``."""


def _blur(x: jax.Array) -> jax.Array:
    """Separable binomial ``[1, 2, 1] / 4`` blur of NHWC images (zero padding)."""
    p = jnp.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0)))
    x = (p[:, :-2] + 2.0 * p[:, 1:-1] + p[:, 2:]) / 4.0
    p = jnp.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)))
    return (p[:, :, :-2] + 2.0 * p[:, :, 1:-1] + p[:, :, 2:]) / 4.0


def _augment(key: jax.Array, x: jax.Array, noise: float, shift: int) -> jax.Array:
    """Random translation by up to ``shift`` pixels; with ``noise > 0``, a blur on half
    the images and Gaussian noise of standard deviation ``s ~ U(0, noise)`` per image."""
    k_shift, k_blur, k_std, k_eps = jax.random.split(key, 4)
    n, h, w, c = x.shape
    if shift > 0:
        offsets = jax.random.randint(k_shift, (n, 2), 0, 2 * shift + 1)
        padded = jnp.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)))
        x = jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c)))(
            padded, offsets
        )
    if noise > 0:
        blurred = jax.random.bernoulli(k_blur, 0.5, (n, 1, 1, 1))
        x = jnp.where(blurred, _blur(x), x)
        std = noise * jax.random.uniform(k_std, (n, 1, 1, 1))
        x = x + std * jax.random.normal(k_eps, x.shape)
    return x


def _loss_fn(model: DigitClassifier, images: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean cross-entropy ``-log softmax(g(x))_y``."""
    logits = model(images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ClassificationLoss:
    """The objective of ``train_classifier`` for ``fit``: the mean cross-entropy of a
    batch ``(images, labels)``, the images augmented with the key of the step.

    Attributes
    ----------
    augment_noise : float
        If positive, blur half of the images and add Gaussian noise of standard
        deviation ``~ U(0, augment_noise)`` per image.
    augment_shift : int
        Random translations of up to this many pixels.
    """

    augment_noise: float = jax.tree.static(default=0.0)
    augment_shift: int = jax.tree.static(default=0)
    format: ClassVar[str] = _FORMAT

    def __post_init__(self) -> None:
        if not self.augment_noise >= 0 or not math.isfinite(self.augment_noise):
            raise ValueError(f"augment_noise must be >= 0 and finite, got {self.augment_noise}.")
        object.__setattr__(self, "augment_noise", float(self.augment_noise))
        object.__setattr__(self, "augment_shift", positive_int("augment_shift", self.augment_shift, minimum=0))

    def __call__(self, model: nnx.Module, batch: tuple[jax.Array, jax.Array], key: jax.Array) -> jax.Array:
        images, labels = batch
        return _loss_fn(model, _augment(key, images, self.augment_noise, self.augment_shift), labels)

    @property
    def settings(self) -> dict[str, Any]:
        """The augmentation, recorded with the training config."""
        return {"augment_noise": self.augment_noise, "augment_shift": self.augment_shift}

    def metadata(self, model: nnx.Module) -> dict[str, Any]:
        """The pixel scaling, recorded in each checkpoint."""
        return {"pixel_scaling": _PIXEL_SCALING}


@nnx.jit
def _predict_batch(model: DigitClassifier, images: jax.Array) -> jax.Array:
    return model.predict(images)


def _check_labels(labels: Any, n: int, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be an integer array of shape ({n},), got {labels.dtype} "
            f"{labels.shape}."
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}], got range "
            f"[{labels.min()}, {labels.max()}]."
        )
    return labels.astype(np.int32)


def accuracy(
    model: DigitClassifier, images: Any, labels: Any, *, batch_size: int = 1000
) -> float:
    """Fraction of ``images`` whose predicted label equals ``labels``.

    Parameters
    ----------
    model
        The classifier.
    images
        ``(N, H, W, C)`` or ``(N, H*W*C)`` images in ``[0, 1]``.
    labels
        ``(N,)`` integer labels.
    batch_size
        Images per forward pass (bounds memory).

    Returns
    -------
    float
        ``mean_i [f(x_i) = y_i]``.
    """
    images = as_array(images)
    labels = _check_labels(labels, images.shape[0], model.num_classes)
    positive_int("batch_size", batch_size)
    correct = 0
    for start in range(0, images.shape[0], batch_size):
        predicted = _predict_batch(model, jnp.asarray(images[start : start + batch_size]))
        correct += int(np.sum(np.asarray(predicted) == labels[start : start + batch_size]))
    return correct / images.shape[0]


def train_classifier(
    images: Any,
    labels: Any,
    *,
    steps: int,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    eval_data: tuple[Any, Any] | None = None,
    progress_bar: bool = True,
    augment_noise: float = 0.0,
    augment_shift: int = 0,
    num_classes: int = 10,
    channels: Sequence[int] = (16, 32),
    hidden: int = 64,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
) -> tuple[DigitClassifier, ClassifierTrainInfo]:
    """Fit a ``DigitClassifier`` by minimising the cross-entropy with AdamW.

    ``numpyro_wjs.nn.fit.fit`` with ``ClassificationLoss`` and a ``TrainConfig``
    without warmup, clipping or EMA. Mini-batches are drawn without replacement within
    each epoch (``sampling="epochs"``). The learning rate follows a cosine decay
    ``lr_t = lr (0.05 + 0.95 (1 + cos(pi t / steps)) / 2)``. Training is deterministic
    given ``seed`` (initialisation, batch order and augmentation all derive from it).

    Parameters
    ----------
    images
        ``(N, H, W, C)`` training images in ``[0, 1]``.
    labels
        ``(N,)`` integer labels in ``[0, num_classes)``.
    steps
        Number of optimisation steps.
    batch_size
        Images per step (at most ``N``).
    learning_rate, weight_decay
        AdamW peak learning rate and decoupled weight decay.
    seed
        Seed of everything random.
    eval_data
        Optional ``(images, labels)`` scored after training.
    progress_bar
        Show a tqdm bar with the running loss.
    augment_noise
        If positive, blur half of each batch and add Gaussian noise with standard
        deviation ``~ U(0, augment_noise)`` per image, so that the classifier stays
        reliable on blurry, slightly noisy walk-jump samples.
    augment_shift
        Random translations of up to this many pixels.
    num_classes, channels, hidden
        Architecture, see ``DigitClassifier``.
    checkpoint_dir, checkpoint_every
        Resumable training checkpoints, as in ``fit`` (``load_classifier`` reads the
        newest); default none.

    Returns
    -------
    model : DigitClassifier
    info : ClassifierTrainInfo

    Raises
    ------
    ValueError
        Bad shapes, labels or hyper-parameters.
    FloatingPointError
        The loss became non-finite (lower ``learning_rate``).
    """
    images = as_array(images)
    if images.ndim != 4:
        raise ValueError(f"images must be NHWC (N, H, W, C), got shape {images.shape}.")
    labels = _check_labels(labels, images.shape[0], num_classes)
    config = TrainConfig(
        steps=steps, batch_size=batch_size, learning_rate=learning_rate, warmup_steps=0,
        final_lr_fraction=0.05, grad_clip=None, weight_decay=weight_decay, ema_decay=None,
        sampling="epochs", seed=seed,
    )
    objective = ClassificationLoss(augment_noise, augment_shift)
    model = DigitClassifier(
        rngs=nnx.Rngs(seed),
        image_shape=images.shape[1:],
        num_classes=num_classes,
        channels=channels,
        hidden=hidden,
    )
    result = fit(
        model, objective, (images, labels), config, key=jax.random.key(seed),
        checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
        mesh=Mesh(np.array(jax.local_devices()[:1]), ("data",)),  # one device, as always
        progress_bar=progress_bar, desc="classifier",
    )
    eval_accuracy = None if eval_data is None else accuracy(model, *eval_data)
    return model, ClassifierTrainInfo(losses=result.loss_history, eval_accuracy=eval_accuracy)


# ---------------------------------------------------------------------- checkpoints


def save_classifier(
    path: str | os.PathLike, model: DigitClassifier, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Save a classifier in the checkpoint format of every network (``nn.checkpoints``).

    The metadata records the architecture and its config, the pixel scaling and
    whatever ``metadata`` adds (held-out accuracy, training recipe). An earlier
    classifier checkpoint at ``path`` is replaced.

    Parameters
    ----------
    path
        Checkpoint directory.
    model
        The classifier.
    metadata
        Extra JSON-serialisable entries; may not use the keys of the checkpoint format
        (``format``, ``architecture``, ``config``, ...), ``model_kwargs`` or
        ``pixel_scaling``.

    Returns
    -------
    pathlib.Path
        The absolute checkpoint directory.

    Raises
    ------
    FileExistsError
        ``path`` exists and is not an (empty directory or) classifier checkpoint.
    """
    if not isinstance(model, DigitClassifier):
        raise TypeError(f"model must be a DigitClassifier, got {type(model).__name__}.")
    extra = dict(metadata or {})
    reserved = {"model_kwargs", "pixel_scaling"} & extra.keys()
    if reserved:
        raise ValueError(f"metadata may not set the reserved keys {sorted(reserved)}.")
    meta = network_metadata(model, _FORMAT, None, {**extra, "pixel_scaling": _PIXEL_SCALING})
    path = Path(path).expanduser().resolve()
    if path.exists() and not (
        path.is_dir() and ((path / METADATA_FILE).is_file() or not any(path.iterdir()))
    ):
        raise FileExistsError(
            f"{path} exists and is not a classifier checkpoint; choose another path."
        )
    return save_network(path, {"weights": pure_params(model)}, meta, replace=path.exists())


def load_classifier(path: str | os.PathLike) -> tuple[DigitClassifier, dict[str, Any]]:
    """Load a classifier saved by ``save_classifier``.

    Parameters
    ----------
    path
        Checkpoint directory.

    Returns
    -------
    model : DigitClassifier
    metadata : dict
        The contents of ``metadata.json``, with ``model_kwargs`` (the constructor
        arguments, ``config``) and ``path``.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    CheckpointError
        Metadata or weights missing, corrupt, non-finite or inconsistent.
    """
    model, metadata = load_network(Path(path).expanduser().resolve(), _FORMAT)
    return model, {**metadata, "model_kwargs": metadata["config"]}


def load_pretrained_classifier() -> tuple[DigitClassifier, dict[str, Any]]:
    """Load the shipped MNIST classifier (trained on digits 0-7999 only).

    Its ``metadata["heldout_accuracy"]`` is the accuracy on digits 8000-9999.
    """
    if not PRETRAINED_CLASSIFIER_DIR.exists():
        raise FileNotFoundError(
            f"The pretrained classifier is missing from {PRETRAINED_CLASSIFIER_DIR}; "
            "create it with train_pretrained_classifier(PRETRAINED_CLASSIFIER_DIR)."
        )
    return load_classifier(PRETRAINED_CLASSIFIER_DIR)


def train_pretrained_classifier(
    out_dir: str | os.PathLike = PRETRAINED_CLASSIFIER_DIR,
    *,
    data_path: str | os.PathLike | None = None,
    steps: int = 3000,
    batch_size: int = 128,
    learning_rate: float = 3e-3,
    weight_decay: float = 1e-4,
    augment_noise: float = 0.1,
    augment_shift: int = 2,
    seed: int = 0,
    progress_bar: bool = True,
) -> tuple[DigitClassifier, dict[str, Any]]:
    """Train the shipped MNIST classifier and save it to ``out_dir``.

    Trains on ``load_mnist(data_path, split="train")`` only, scores on the held-out
    digits 8000-9999, and records the recipe and score in the metadata.

    Parameters
    ----------
    out_dir
        Checkpoint directory (default: the package's pretrained directory).
    data_path
        MNIST directory passed to ``numpyro_wjs.data.load_mnist``.
    steps, batch_size, learning_rate, weight_decay, augment_noise, augment_shift, seed
        Recipe, see ``train_classifier``.
    progress_bar
        Show a tqdm bar.

    Returns
    -------
    model : DigitClassifier
    metadata : dict
        What was written to ``metadata.json``.
    """
    train_images, train_labels = load_mnist(data_path, split="train")
    heldout_images, heldout_labels = load_mnist(data_path, split="heldout")
    recipe = {
        "steps": steps,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "weight_decay": weight_decay,
        "augment_noise": augment_noise,
        "augment_shift": augment_shift,
        "seed": seed,
    }
    start, start_cpu = time.perf_counter(), time.process_time()
    model, info = train_classifier(
        train_images,
        train_labels,
        eval_data=(heldout_images, heldout_labels),
        progress_bar=progress_bar,
        **recipe,
    )
    metadata = {
        "heldout_accuracy": info.eval_accuracy,
        "heldout_split": "MNIST t10k digits 8000-9999",
        "train_split": f"load_mnist(split='train'): {train_images.shape[0]} digits",
        "training_recipe": {
            **recipe,
            "optimizer": "adamw, cosine decay to 0.05 lr",
            "function": "numpyro_wjs.nn.classifier.train_pretrained_classifier",
        },
        "final_loss": float(np.mean(info.losses[-100:])),
        "training_seconds": round(time.perf_counter() - start, 1),
        "training_cpu_seconds": round(time.process_time() - start_cpu, 1),
    }
    save_classifier(out_dir, model, metadata)
    return model, metadata
