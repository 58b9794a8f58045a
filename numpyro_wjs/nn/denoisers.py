"""Neural denoisers ``xhat(y) ~= E[X | Y = y]`` for ``Y = X + s N``, ``N ~ N(0, I)``.

A least-squares denoiser is a score model (Tweedie-Miyasawa, theory.md section 4)::

    grad log p_Y(y) = (E[X | y] - y) / s^2

Every network here is wrapped in the EDM preconditioning of Karras et al. (2022),
"Elucidating the Design Space of Diffusion-Based Generative Models"::

    xhat(y, s) = c_skip(s) y + c_out(s) F(c_in(s) y, c_noise(s))

    c_skip  = sd^2 / (s^2 + sd^2)        c_out   = s sd / sqrt(s^2 + sd^2)
    c_in    = 1 / sqrt(s^2 + sd^2)       c_noise = log(s) / 4

with ``sd`` the data standard deviation. The output layer of ``F`` starts at zero, so an
untrained network is the Bayes denoiser of ``N(0, sd^2 I)`` data and training only
learns the correction. Fixed-sigma networks use the same formula at the training noise
level ``s = sigma`` stored on the module; noise-conditional networks also feed
``c_noise`` to ``F`` through sinusoidal features, a small MLP and an additive bias in
every block.

A trained network is a plain callable: ``net(y)`` (fixed sigma) or ``net(y, s)``
(noise-conditional), on a single point or on any batch of points, and
``net.score(y[, s])`` is the score of the smoothed density.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from numpyro_wjs.validation import positive, positive_int

__all__ = [
    "Denoiser",
    "MLP",
    "UNet",
    "conv_kernel_init",
    "edm_preconditioning",
    "is_noise_conditional",
    "noise_features",
]


def edm_preconditioning(
    s: jax.Array, sigma_data: float
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """EDM coefficients ``(c_skip, c_out, c_in, c_noise)`` at noise level ``s``.

    Parameters
    ----------
    s : array
        Noise standard deviations (any shape, positive).
    sigma_data : float
        Standard deviation of the clean data.

    Returns
    -------
    tuple of arrays
        ``c_skip = sd^2/(s^2+sd^2)``, ``c_out = s sd/sqrt(s^2+sd^2)``,
        ``c_in = 1/sqrt(s^2+sd^2)`` and ``c_noise = log(s)/4``, each shaped like ``s``.
    """
    total = s**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = s * sigma_data / jnp.sqrt(total)
    c_in = 1.0 / jnp.sqrt(total)
    c_noise = jnp.log(s) / 4.0
    return c_skip, c_out, c_in, c_noise


def noise_features(c_noise: jax.Array, num_features: int) -> jax.Array:
    """Sinusoidal features ``[c, sin(w_k c), cos(w_k c)]`` of the noise input ``c``.

    The angular frequencies ``w_k`` are spaced geometrically from 1 to 64, which
    resolves ``c_noise = log(s)/4`` over noise levels from ``1e-3`` to ``1e3``.

    Parameters
    ----------
    c_noise : array, shape (batch,)
        Noise conditioning input.
    num_features : int
        Output width (odd widths get one extra sine).

    Returns
    -------
    array, shape (batch, num_features)
    """
    half = (num_features - 1) // 2
    freqs = jnp.exp(jnp.linspace(0.0, math.log(64.0), half, dtype=c_noise.dtype))
    angles = c_noise[:, None] * freqs
    feats = [c_noise[:, None], jnp.sin(angles), jnp.cos(angles)]
    if num_features - 1 - 2 * half:
        feats.append(jnp.sin(0.5 * c_noise[:, None]))
    return jnp.concatenate(feats, axis=-1)


class NoiseEmbedding(nnx.Module):
    """``c_noise -> MLP(sinusoidal features(c_noise))``, shape (batch, dim)."""

    def __init__(self, dim: int, *, rngs: nnx.Rngs):
        self.num_features = dim
        self.linear1 = nnx.Linear(dim, dim, rngs=rngs)
        self.linear2 = nnx.Linear(dim, dim, rngs=rngs)

    def __call__(self, c_noise: jax.Array) -> jax.Array:
        h = noise_features(c_noise, self.num_features)
        h = nnx.silu(self.linear1(h))
        return nnx.silu(self.linear2(h))


def _check_widths(name: str, values: Any) -> tuple[int, ...]:
    values = tuple(values)
    if not values:
        raise ValueError(f"{name} must be a non-empty sequence of positive ints, got {values!r}")
    return tuple(positive_int(name, v) for v in values)


def is_noise_conditional(model: Any) -> bool:
    """Whether ``model`` is called as ``model(y, s)`` rather than ``model(y)``.

    Its ``noise_conditional`` attribute when it has one (the package's denoisers), else
    whether its ``__call__`` takes a second positional parameter.
    """
    flag = getattr(model, "noise_conditional", None)
    if flag is not None:
        return bool(flag)
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = inspect.signature(model.__call__).parameters.values()
    return sum(p.kind in kinds for p in params) >= 2


def _is_concrete(x: Any) -> bool:
    return not isinstance(x, jax.core.Tracer)


class Denoiser(nnx.Module):
    """EDM-preconditioned denoiser ``xhat(y, s) = c_skip y + c_out F(c_in y, c_noise)``.

    Subclasses define the backbone ``F`` in ``backbone``, the number of event
    dimensions ``event_ndim`` and ``check_event_shape``; this class handles the
    preconditioning, batching (any number of leading axes, including none) and the
    score. Attributes ``sigma`` (training noise level of a fixed-sigma network, set
    by ``numpyro_wjs.nn.train.train_denoiser`` when left ``None``), ``sigma_data``
    and ``noise_conditional`` are read by the trainer and the checkpoint code.

    Keyword arguments of every subclass
    -----------------------------------
    noise_conditional : bool
        Whether the network takes the noise level as a second input.
    sigma : float, optional
        Training noise level of a fixed-sigma network (set by the trainer if omitted).
    sigma_data : float
        Standard deviation of the data used by the EDM preconditioning (set it to
        the data's per-coordinate standard deviation, e.g. about 0.5 for pixels in
        ``[0, 1]``).
    embed_dim : int
        Width of the noise embedding (noise-conditional networks only).
    rngs : nnx.Rngs
        Parameter initialisation keys.
    """

    event_ndim: ClassVar[int]
    noise_conditional: bool
    sigma: float | None
    sigma_data: float
    embed_dim: int

    def backbone(self, x: jax.Array, c_noise: jax.Array) -> jax.Array:
        """The raw network ``F(c_in y, c_noise)`` on a flat batch ``(batch, *event)``."""
        raise NotImplementedError

    def check_event_shape(self, event_shape: tuple[int, ...]) -> None:
        """Raise ``ValueError`` if inputs with this trailing shape are not supported."""
        raise NotImplementedError

    @property
    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments (without ``rngs``) that rebuild this module."""
        raise NotImplementedError

    def _set_noise_settings(
        self, noise_conditional: bool, sigma: float | None, sigma_data: float, embed_dim: int
    ) -> None:
        if sigma is not None:
            positive("sigma", sigma)
        positive("sigma_data", sigma_data)
        self.noise_conditional = bool(noise_conditional)
        self.sigma = None if sigma is None else float(sigma)
        self.sigma_data = float(sigma_data)
        self.embed_dim = int(embed_dim)

    def _noise_config(self) -> dict[str, Any]:
        return {
            "noise_conditional": self.noise_conditional,
            "sigma": self.sigma,
            "sigma_data": self.sigma_data,
            "embed_dim": self.embed_dim,
        }

    def __call__(self, y: jax.Array, s: jax.Array | float | None = None) -> jax.Array:
        """Posterior mean ``E[X | y]`` at noise level ``s`` (or the training sigma).

        Parameters
        ----------
        y : array, shape (..., *event_shape)
            Noisy points; leading axes are batch axes (none for a single point).
        s : array or float, optional
            Noise level, broadcastable to the batch shape ``y.shape[:-event_ndim]``.
            Required by noise-conditional networks, not accepted by fixed-sigma ones.

        Returns
        -------
        array, same shape as ``y``
        """
        y = self._as_input(y)
        batch_shape, event_shape = self._split_shape(y)
        s = self._noise_level(s, batch_shape, y.dtype)

        x = y.reshape((-1, *event_shape))
        c_skip, c_out, c_in, c_noise = edm_preconditioning(s.reshape(-1), self.sigma_data)
        expand = (slice(None),) + (None,) * self.event_ndim
        xhat = c_skip[expand] * x + c_out[expand] * self.backbone(c_in[expand] * x, c_noise)
        return xhat.reshape(y.shape)

    def score(self, y: jax.Array, s: jax.Array | float | None = None) -> jax.Array:
        """Score of the smoothed density, ``(xhat(y, s) - y) / s^2`` (Tweedie-Miyasawa).

        Parameters
        ----------
        y : array, shape (..., *event_shape)
        s : array or float, optional
            As in ``__call__``.

        Returns
        -------
        array, same shape as ``y``
        """
        y = self._as_input(y)
        batch_shape, _ = self._split_shape(y)
        s_b = self._noise_level(s, batch_shape, y.dtype)
        s_b = s_b.reshape(batch_shape + (1,) * self.event_ndim)
        return (self(y, s) - y) / s_b**2

    def _as_input(self, y: jax.Array) -> jax.Array:
        y = jnp.asarray(y)
        if not jnp.issubdtype(y.dtype, jnp.floating):
            y = y.astype(jnp.result_type(float))
        return y

    def _split_shape(self, y: jax.Array) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if y.ndim < self.event_ndim:
            raise ValueError(
                f"{type(self).__name__} expects inputs with at least {self.event_ndim} "
                f"dimension(s) (event shape), got shape {y.shape}"
            )
        split = y.ndim - self.event_ndim
        event_shape = tuple(y.shape[split:])
        self.check_event_shape(event_shape)
        return tuple(y.shape[:split]), event_shape

    def _noise_level(self, s: Any, batch_shape: tuple[int, ...], dtype: Any) -> jax.Array:
        name = type(self).__name__
        if not self.noise_conditional:
            if s is not None:
                raise TypeError(
                    f"this {name} is a fixed-sigma denoiser (sigma={self.sigma}); "
                    "call it as net(y), without a noise level"
                )
            if self.sigma is None:
                raise ValueError(
                    f"this {name} has no training noise level: pass sigma=... to the "
                    "constructor or train it with train_denoiser"
                )
            return jnp.full(batch_shape, self.sigma, dtype)
        if s is None:
            raise TypeError(
                f"this {name} is noise-conditional: call it as net(y, s) with the noise "
                "standard deviation s"
            )
        if _is_concrete(s) and not np.all(np.asarray(s) > 0):
            raise ValueError(f"noise level s must be positive, got {s}")
        s = jnp.asarray(s, dtype)
        try:
            return jnp.broadcast_to(s, batch_shape)
        except ValueError as err:
            raise ValueError(
                f"noise level s of shape {s.shape} does not broadcast to the batch "
                f"shape {batch_shape}"
            ) from err


class MLP(Denoiser):
    """Fully connected denoiser for vectors of shape ``(..., dim)``.

    ``F`` is ``Linear -> SiLU`` per hidden width, then a zero-initialised ``Linear``
    back to ``dim``; a noise-conditional network adds a projection of the noise
    embedding to every hidden pre-activation.

    Parameters
    ----------
    dim : int
        Dimension of the data.
    hidden : sequence of int
        Hidden widths.
    noise_conditional, sigma, sigma_data, embed_dim, rngs
        See ``Denoiser``.

    Examples
    --------
    >>> from flax import nnx
    >>> net = MLP(2, hidden=(64, 64), sigma=0.5, sigma_data=1.0, rngs=nnx.Rngs(0))
    >>> net(jnp.zeros(2)).shape
    (2,)
    """

    event_ndim = 1

    def __init__(
        self,
        dim: int,
        hidden: tuple[int, ...] = (256, 256),
        *,
        noise_conditional: bool = False,
        sigma: float | None = None,
        sigma_data: float = 0.5,
        embed_dim: int = 64,
        rngs: nnx.Rngs,
    ):
        positive_int("dim", dim)
        hidden = _check_widths("hidden", hidden)
        self._set_noise_settings(noise_conditional, sigma, sigma_data, embed_dim)
        self.dim = dim
        self.hidden = hidden

        widths = (dim, *hidden)
        self.layers = nnx.List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])]
        )
        self.output = nnx.Linear(
            hidden[-1], dim, kernel_init=nnx.initializers.zeros, rngs=rngs
        )
        if self.noise_conditional:
            self.embedding = NoiseEmbedding(self.embed_dim, rngs=rngs)
            self.noise_bias = nnx.List(
                [nnx.Linear(self.embed_dim, h, rngs=rngs) for h in hidden]
            )

    @property
    def config(self) -> dict[str, Any]:
        return {"dim": self.dim, "hidden": list(self.hidden), **self._noise_config()}

    def check_event_shape(self, event_shape: tuple[int, ...]) -> None:
        if event_shape != (self.dim,):
            raise ValueError(
                f"MLP(dim={self.dim}) expects inputs of shape (..., {self.dim}), got "
                f"trailing shape {event_shape}"
            )

    def backbone(self, x: jax.Array, c_noise: jax.Array) -> jax.Array:
        emb = self.embedding(c_noise) if self.noise_conditional else None
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if emb is not None:
                h = h + self.noise_bias[i](emb)
            h = nnx.silu(h)
        return self.output(h)


def conv_kernel_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """LeCun-normal convolution kernel, drawn as a ``(fan_in, fan_out)`` matrix.

    The same law as the default ``nnx.Conv`` initialiser (``fan_in = kh * kw * c_in``);
    drawing a 2-D array and reshaping it compiles much faster on XLA:CPU than a 4-D draw.
    """
    fan_in = math.prod(shape[:-1])
    return nnx.initializers.lecun_normal()(key, (fan_in, shape[-1]), dtype).reshape(shape)


class ConvBlock(nnx.Module):
    """``[Conv3x3 -> GroupNorm -> (+ noise bias) -> SiLU] x 2`` on NHWC images."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_groups: int,
        embed_dim: int | None,
        *,
        rngs: nnx.Rngs,
    ):
        self.conv1 = nnx.Conv(
            in_channels, out_channels, (3, 3), kernel_init=conv_kernel_init, rngs=rngs
        )
        self.norm1 = nnx.GroupNorm(out_channels, num_groups=num_groups, rngs=rngs)
        self.conv2 = nnx.Conv(
            out_channels, out_channels, (3, 3), kernel_init=conv_kernel_init, rngs=rngs
        )
        self.norm2 = nnx.GroupNorm(out_channels, num_groups=num_groups, rngs=rngs)
        self.noise_bias = (
            nnx.Linear(embed_dim, out_channels, rngs=rngs) if embed_dim is not None else None
        )

    def __call__(self, x: jax.Array, emb: jax.Array | None) -> jax.Array:
        h = self.norm1(self.conv1(x))
        if emb is not None:
            h = h + self.noise_bias(emb)[:, None, None, :]
        h = nnx.silu(h)
        return nnx.silu(self.norm2(self.conv2(h)))


def _upsample2(x: jax.Array) -> jax.Array:
    """Nearest-neighbour upsampling of NHWC images by a factor 2."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class UNet(Denoiser):
    """U-Net denoiser (Ronneberger et al. 2015) for NHWC images ``(..., H, W, C)``.

    ``channels[i]`` is the width at resolution level ``i``. Down path: a
    ``ConvBlock`` per level followed by a stride-2 convolution; bottleneck: a
    block at ``channels[-1]``; up path: nearest upsampling and a 3x3 convolution,
    concatenation with the skip connection of the same level, a block; finally a
    zero-initialised 1x1 convolution back to ``in_channels``. ``H`` and ``W`` must be
    divisible by ``2**(len(channels) - 1)``.

    Parameters
    ----------
    in_channels : int
        Number of image channels ``C``.
    channels : sequence of int
        Widths per resolution level; each must be divisible by ``num_groups``.
    num_groups : int
        Groups of the GroupNorm layers.
    noise_conditional, sigma, sigma_data, embed_dim, rngs
        See ``Denoiser``.

    Examples
    --------
    >>> from flax import nnx
    >>> net = UNet(1, (8, 16), num_groups=4, sigma=1.0, rngs=nnx.Rngs(0))
    >>> net(jnp.zeros((28, 28, 1))).shape
    (28, 28, 1)
    """

    event_ndim = 3

    def __init__(
        self,
        in_channels: int = 1,
        channels: tuple[int, ...] = (32, 64),
        num_groups: int = 8,
        *,
        noise_conditional: bool = False,
        sigma: float | None = None,
        sigma_data: float = 0.5,
        embed_dim: int = 64,
        rngs: nnx.Rngs,
    ):
        positive_int("in_channels", in_channels)
        channels = _check_widths("channels", channels)
        positive_int("num_groups", num_groups)
        if any(c % num_groups for c in channels):
            raise ValueError(
                f"every entry of channels={channels} must be divisible by num_groups={num_groups}"
            )
        self._set_noise_settings(noise_conditional, sigma, sigma_data, embed_dim)
        self.in_channels = in_channels
        self.channels = channels
        self.num_groups = num_groups

        emb = self.embed_dim if self.noise_conditional else None
        if self.noise_conditional:
            self.embedding = NoiseEmbedding(self.embed_dim, rngs=rngs)
        ins = (in_channels, *channels[:-2])
        self.down = nnx.List(
            [ConvBlock(a, b, num_groups, emb, rngs=rngs) for a, b in zip(ins, channels[:-1])]
        )
        self.downsample = nnx.List(
            [
                nnx.Conv(c, c, (3, 3), strides=2, kernel_init=conv_kernel_init, rngs=rngs)
                for c in channels[:-1]
            ]
        )
        bottleneck_in = channels[-2] if len(channels) > 1 else in_channels
        self.bottleneck = ConvBlock(bottleneck_in, channels[-1], num_groups, emb, rngs=rngs)
        self.upsample = nnx.List(
            [
                nnx.Conv(c_below, c, (3, 3), kernel_init=conv_kernel_init, rngs=rngs)
                for c_below, c in zip(channels[:0:-1], channels[-2::-1])
            ]
        )
        self.up = nnx.List(
            [ConvBlock(2 * c, c, num_groups, emb, rngs=rngs) for c in channels[-2::-1]]
        )
        self.output = nnx.Conv(
            channels[0], in_channels, (1, 1), kernel_init=nnx.initializers.zeros, rngs=rngs
        )

    @property
    def config(self) -> dict[str, Any]:
        return {
            "in_channels": self.in_channels,
            "channels": list(self.channels),
            "num_groups": self.num_groups,
            **self._noise_config(),
        }

    def check_event_shape(self, event_shape: tuple[int, ...]) -> None:
        h, w, c = event_shape
        factor = 2 ** (len(self.channels) - 1)
        if c != self.in_channels:
            raise ValueError(
                f"UNet(in_channels={self.in_channels}) got images with {c} channels "
                f"(shape (..., H, W, C) = {event_shape}); images must be NHWC"
            )
        if h % factor or w % factor:
            raise ValueError(
                f"UNet with {len(self.channels)} levels needs H and W divisible by "
                f"{factor}, got H={h}, W={w}; pad or crop the images"
            )

    def backbone(self, x: jax.Array, c_noise: jax.Array) -> jax.Array:
        emb = self.embedding(c_noise) if self.noise_conditional else None
        skips = []
        for block, downsample in zip(self.down, self.downsample):
            x = block(x, emb)
            skips.append(x)
            x = downsample(x)
        x = self.bottleneck(x, emb)
        for upsample, block, skip in zip(self.upsample, self.up, reversed(skips)):
            x = upsample(_upsample2(x))
            x = block(jnp.concatenate([x, skip], axis=-1), emb)
        return self.output(x)
