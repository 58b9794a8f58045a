"""Known-answer target distributions: isotropic Gaussian mixtures and Gaussians.

Everything the samplers and denoisers are tested against is closed form here
(theory.md, section 3): for ``Y = X + sigma N`` with ``N ~ N(0, I)``,

* mixture ``p_X = sum_k pi_k N(mu_k, tau_k^2 I)`` smooths to
  ``p_Y = sum_k pi_k N(mu_k, (tau_k^2 + sigma^2) I)`` and
  ``E[X | y] = sum_k r_k(y) (tau_k^2 y + sigma^2 mu_k) / (tau_k^2 + sigma^2)``;
* Gaussian ``N(m, C)`` smooths to ``N(m, C + sigma^2 I)`` and
  ``E[X | y] = m + C (C + sigma^2 I)^{-1} (y - m)``.

Both classes are pytrees, so they can be passed into ``jax.jit``-ed functions,
and every method is pure ``jax.numpy``.

Example
-------
>>> import jax
>>> from numpyro_wjs.targets import GaussianMixture
>>> target = GaussianMixture.ring(K=8, radius=4.0, scale=0.3)
>>> x = target.sample(jax.random.PRNGKey(0), (1000,))
>>> target.log_prob(x).shape
(1000,)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
from jax.scipy.special import logsumexp
from numpyro import distributions as dist
from numpyro.distributions import constraints

Array = jax.Array
_LOG_2PI = math.log(2.0 * math.pi)
_matmul = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)


def _is_concrete(*values: Any) -> bool:
    return not any(isinstance(v, jax.core.Tracer) for v in values)


def _float_dtype(*values: Any) -> np.dtype:
    dtype = jnp.result_type(*(np.asarray(v) if _is_concrete(v) else v for v in values))
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)


def _check_values(name: str, value: Any, positive: bool) -> None:
    if not _is_concrete(value):
        return
    v = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"`{name}` must be finite, got {value!r}.")
    if positive and not np.all(v > 0):
        raise ValueError(f"`{name}` must be strictly positive, got {value!r}.")


def _check_sigma(sigma: Any) -> None:
    if _is_concrete(sigma):
        s = np.asarray(sigma, dtype=np.float64)
        if s.ndim != 0 or not np.isfinite(s) or s < 0:
            raise ValueError(f"`sigma` must be a finite scalar >= 0, got {sigma!r}.")


def _check_point(x: Any, dim: int, dtype: np.dtype) -> Array:
    x = jnp.asarray(x)
    x = x.astype(jnp.result_type(x.dtype, dtype))
    if x.ndim == 0 or x.shape[-1] != dim:
        raise ValueError(f"`x` must have shape (..., {dim}), got {x.shape}.")
    return x


@functools.partial(jax.jit, static_argnums=3)
def _squared_errors(target: GaussianMixture, key: Array, sigma: Array, num_samples: int) -> Array:
    """``||x - E[X|y]||^2`` for ``x ~ p_X``, ``y = x + sigma N``, shape ``(num_samples,)``."""
    key_x, key_n = jax.random.split(key)
    x = target.sample(key_x, (num_samples,))
    y = x + sigma * jax.random.normal(key_n, x.shape, x.dtype)
    return jnp.sum((x - target._denoise(sigma, y)) ** 2, -1)


class _TargetDistribution(dist.Distribution):
    """A NumPyro distribution whose ``log_prob`` and ``sample`` are a target's."""

    support = constraints.real_vector
    pytree_data_fields = ("target",)

    def __init__(self, target: GaussianMixture | Gaussian):
        self.target = target
        super().__init__(batch_shape=(), event_shape=(target.dim,))

    def sample(self, key: Array, sample_shape: tuple[int, ...] = ()) -> Array:
        return self.target.sample(key, sample_shape)

    def log_prob(self, value: Array) -> Array:
        return self.target.log_prob(value)


class _TargetMixin:
    """Methods shared by both targets: potential, NumPyro model and pytree flattening."""

    _leaves: tuple[str, ...]  # the array attributes, in the order ``_set`` takes them

    def tree_flatten(self) -> tuple[tuple[Array, ...], None]:
        return tuple(getattr(self, name) for name in self._leaves), None

    @classmethod
    def tree_unflatten(cls, aux: None, children: tuple[Array, ...]) -> _TargetMixin:
        return cls.__new__(cls)._set(*children)

    def potential_fn(self, x: Array) -> Array:
        """Potential energy ``U(x) = -log p(x)``, shape ``x.shape[:-1]``."""
        return -self.log_prob(x)

    def model(self, name: str = "x") -> Callable[[], Array]:
        """A NumPyro model (no arguments) with one site ``name`` drawn from this target."""

        def model() -> Array:
            return numpyro.sample(name, _TargetDistribution(self))

        return model


@jax.tree_util.register_pytree_node_class
class GaussianMixture(_TargetMixin):
    """``p(x) = sum_k pi_k N(x; mu_k, tau_k^2 I)`` on ``R^d`` (isotropic components).

    Parameters
    ----------
    weights : array (K,)
        Positive mixture weights; normalised internally to ``pi``.
    means : array (K, d) or (K,)
        Component means ``mu_k``; a 1-D array means ``d = 1``.
    scales : array (K,) or scalar
        Component standard deviations ``tau_k > 0``; a scalar is shared by all K.

    Notes
    -----
    The dtype is ``jnp.result_type`` of the inputs (float32 unless float64 inputs
    are given with x64 enabled). Invalid parameters raise ``ValueError``.
    """

    _leaves = ("weights", "means", "scales")

    def __init__(self, weights: Any, means: Any, scales: Any):
        dtype = _float_dtype(weights, means, scales)
        weights, means, scales = (jnp.asarray(a, dtype) for a in (weights, means, scales))
        if weights.ndim != 1 or weights.shape[0] == 0:
            raise ValueError(f"`weights` must have shape (K,) with K >= 1, got {weights.shape}.")
        K = weights.shape[0]
        if means.ndim == 1:
            means = means[:, None]
        if means.ndim != 2:
            raise ValueError(f"`means` must have shape (K, d) or (K,), got {means.shape}.")
        if means.shape[0] != K:
            raise ValueError(f"`means` has {means.shape[0]} rows but `weights` has K={K}.")
        if scales.ndim == 0:
            scales = jnp.full((K,), scales, dtype)
        if scales.shape != (K,):
            raise ValueError(f"`scales` must be a scalar or have shape ({K},), got {scales.shape}.")
        _check_values("weights", weights, positive=True)
        _check_values("means", means, positive=False)
        _check_values("scales", scales, positive=True)
        self._set(weights / jnp.sum(weights), means, scales)

    def _set(self, weights: Array, means: Array, scales: Array) -> GaussianMixture:
        self.weights, self.means, self.scales = weights, means, scales
        return self

    @property
    def K(self) -> int:
        """Number of components."""
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        """Dimension ``d`` of the space."""
        return self.means.shape[1]

    def _log_joint(self, x: Array) -> Array:
        """``log pi_k + log N(x; mu_k, tau_k^2 I)``, shape ``(..., K)``."""
        x = _check_point(x, self.dim, self.means.dtype)
        sq = jnp.sum((x[..., None, :] - self.means) ** 2, axis=-1)
        var = self.scales**2
        log_norm = -0.5 * self.dim * (_LOG_2PI + jnp.log(var))
        return jnp.log(self.weights) + log_norm - 0.5 * sq / var

    @jax.jit
    def log_prob(self, x: Array) -> Array:
        """Normalised ``log p(x)`` via logsumexp; ``x`` (..., d) -> (...)."""
        return logsumexp(self._log_joint(x), axis=-1)

    @jax.jit
    def responsibilities(self, x: Array) -> Array:
        """``r_k(x) = pi_k N_k(x) / p(x)``, shape ``(..., K)``."""
        return jax.nn.softmax(self._log_joint(x), axis=-1)

    @jax.jit
    def mode_of(self, x: Array) -> Array:
        """Index of the most responsible component, int32 of shape ``(...)``."""
        return jnp.argmax(self._log_joint(x), axis=-1).astype(jnp.int32)

    @jax.jit
    def score(self, x: Array) -> Array:
        """``grad log p(x) = sum_k r_k(x) (mu_k - x) / tau_k^2``, shape ``(..., d)``."""
        x = _check_point(x, self.dim, self.means.dtype)
        r_over_var = self.responsibilities(x) / self.scales**2
        return _matmul(r_over_var, self.means) - jnp.sum(r_over_var, -1, keepdims=True) * x

    def sample(self, rng_key: Array, sample_shape: tuple[int, ...] = ()) -> Array:
        """Draw ``sample_shape + (d,)`` points: ``k ~ pi``, ``x = mu_k + tau_k eps``."""
        return self._sample(rng_key, tuple(sample_shape))

    @functools.partial(jax.jit, static_argnums=2)
    def _sample(self, rng_key: Array, sample_shape: tuple[int, ...]) -> Array:
        key_k, key_eps = jax.random.split(rng_key)
        k = jax.random.categorical(key_k, jnp.log(self.weights), shape=sample_shape)
        eps = jax.random.normal(key_eps, sample_shape + (self.dim,), self.means.dtype)
        return self.means[k] + self.scales[k][..., None] * eps

    def smooth(self, sigma: float | Array) -> GaussianMixture:
        """Law of ``Y = X + sigma N``: the mixture with scales ``sqrt(tau_k^2 + sigma^2)``."""
        _check_sigma(sigma)
        scales = jnp.sqrt(self.scales**2 + jnp.asarray(sigma, self.scales.dtype) ** 2)
        return type(self).__new__(type(self))._set(self.weights, self.means, scales)

    def denoiser(self, sigma: float | Array) -> Callable[[Array], Array]:
        """Bayes denoiser ``y -> E[X | y]`` at noise ``sigma``.

        ``E[X | y] = sum_k r_k(y) (tau_k^2 y + sigma^2 mu_k) / (tau_k^2 + sigma^2)`` with
        ``r_k`` the responsibilities under ``p_Y``; ``y`` (..., d) -> (..., d).
        """
        _check_sigma(sigma)
        return functools.partial(self._denoise, jnp.asarray(sigma, self.scales.dtype))

    @jax.jit
    def _denoise(self, sigma: Array, y: Array) -> Array:
        smoothed = self.smooth(sigma)
        tau2, s2 = self.scales**2, smoothed.scales**2
        r = smoothed.responsibilities(y)
        return _matmul(r, tau2 / s2)[..., None] * y + sigma**2 * _matmul(r / s2, self.means)

    def bayes_mse(
        self,
        sigma: float,
        rng_key: Array | None = None,
        num_samples: int = 100_000,
        return_stderr: bool = False,
    ) -> float | tuple[float, float]:
        """Monte Carlo Bayes risk ``E ||X - E[X|Y]||^2`` at noise ``sigma``.

        The squared error is summed over the ``d`` coordinates (per sample);
        divide by ``d`` for the per-coordinate risk. With ``return_stderr`` the
        Monte Carlo standard error is returned as well. ``rng_key`` defaults to
        ``PRNGKey(0)``.
        """
        _check_sigma(sigma)
        if num_samples < 2:
            raise ValueError(f"`num_samples` must be >= 2, got {num_samples}.")
        key = jax.random.PRNGKey(0) if rng_key is None else rng_key
        err = np.asarray(_squared_errors(self, key, sigma, int(num_samples)), np.float64)
        mean, stderr = float(err.mean()), float(err.std(ddof=1) / math.sqrt(num_samples))
        return (mean, stderr) if return_stderr else mean

    @classmethod
    def ring(
        cls, K: int, radius: float, scale: float, dim: int = 2, weights: Any = None
    ) -> GaussianMixture:
        """``K`` modes equally spaced on a circle of ``radius`` in the first two
        coordinates (other coordinates 0), common std ``scale``, uniform weights by default."""
        if int(K) < 1 or int(dim) < 2:
            raise ValueError(f"`ring` needs K >= 1 and dim >= 2, got K={K}, dim={dim}.")
        angles = 2.0 * np.pi * np.arange(K) / K
        means = np.zeros((K, dim), np.float32)
        means[:, 0], means[:, 1] = radius * np.cos(angles), radius * np.sin(angles)
        weights = np.ones(K, np.float32) if weights is None else weights
        return cls(weights, means, scale)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.K}, dim={self.dim}, dtype={self.means.dtype})"


@jax.tree_util.register_pytree_node_class
class Gaussian(_TargetMixin):
    """``N(mean, cov)`` on ``R^d``, e.g. an ill-conditioned test target.

    Parameters
    ----------
    mean : array (d,)
        Mean vector.
    cov : array (d, d) or (d,)
        Symmetric positive definite covariance, or the diagonal variances.
    """

    _leaves = ("mean", "cov", "chol")

    def __init__(self, mean: Any, cov: Any):
        dtype = _float_dtype(mean, cov)
        mean, cov = jnp.atleast_1d(jnp.asarray(mean, dtype)), jnp.asarray(cov, dtype)
        if mean.ndim != 1:
            raise ValueError(f"`mean` must have shape (d,), got {mean.shape}.")
        d = mean.shape[0]
        if cov.ndim == 1:
            _check_values("cov", cov, positive=True)
            cov = jnp.diag(cov)
        if cov.shape != (d, d):
            raise ValueError(f"`cov` must have shape ({d}, {d}) or ({d},), got {cov.shape}.")
        _check_values("mean", mean, positive=False)
        _check_values("cov", cov, positive=False)
        if _is_concrete(cov):
            c = np.asarray(cov, np.float64)
            if not np.allclose(c, c.T, rtol=1e-5, atol=1e-6 * np.abs(c).max()):
                raise ValueError("`cov` must be symmetric.")
            if np.any(np.linalg.eigvalsh(c) <= 0):
                raise ValueError("`cov` must be positive definite.")
            cov = 0.5 * (cov + cov.T)
        self._set(mean, cov)
        if _is_concrete(self.chol) and not np.all(np.isfinite(np.asarray(self.chol))):
            raise ValueError(f"`cov` is too ill-conditioned for {dtype} (Cholesky failed).")

    def _set(self, mean: Array, cov: Array, chol: Array | None = None) -> Gaussian:
        self.mean, self.cov = mean, cov
        self.chol = jnp.linalg.cholesky(cov) if chol is None else chol
        return self

    @property
    def dim(self) -> int:
        """Dimension ``d`` of the space."""
        return self.mean.shape[0]

    def _whiten(self, x: Array) -> Array:
        """``L^{-1} (x - mean)`` for ``cov = L L^T``, shape ``(..., d)``."""
        diff = _check_point(x, self.dim, self.mean.dtype) - self.mean
        z = jax.scipy.linalg.solve_triangular(self.chol, diff.reshape(-1, self.dim).T, lower=True)
        return z.T.reshape(diff.shape)

    @jax.jit
    def log_prob(self, x: Array) -> Array:
        """``log N(x; mean, cov)``; ``x`` (..., d) -> (...)."""
        z = self._whiten(x)
        log_det = 2.0 * jnp.sum(jnp.log(jnp.diag(self.chol)))
        return -0.5 * (jnp.sum(z**2, -1) + log_det + self.dim * _LOG_2PI)

    @jax.jit
    def score(self, x: Array) -> Array:
        """``grad log p(x) = -cov^{-1} (x - mean)``, shape ``(..., d)``."""
        z = self._whiten(x)
        s = jax.scipy.linalg.solve_triangular(self.chol.T, z.reshape(-1, self.dim).T, lower=False)
        return -s.T.reshape(z.shape)

    def sample(self, rng_key: Array, sample_shape: tuple[int, ...] = ()) -> Array:
        """Draw ``sample_shape + (d,)`` points ``mean + L eps``."""
        return self._sample(rng_key, tuple(sample_shape))

    @functools.partial(jax.jit, static_argnums=2)
    def _sample(self, rng_key: Array, sample_shape: tuple[int, ...]) -> Array:
        eps = jax.random.normal(rng_key, sample_shape + (self.dim,), self.mean.dtype)
        return self.mean + _matmul(eps, self.chol.T)

    def smooth(self, sigma: float | Array) -> Gaussian:
        """Law of ``Y = X + sigma N``: ``N(mean, cov + sigma^2 I)``."""
        _check_sigma(sigma)
        sigma2 = jnp.asarray(sigma, self.cov.dtype) ** 2
        return type(self).__new__(type(self))._set(self.mean, self.cov + sigma2 * jnp.eye(self.dim))

    def _gain(self, sigma: float | Array) -> Array:
        """``(cov + sigma^2 I)^{-1} cov`` (symmetric: both factors are functions of cov)."""
        smoothed = self.smooth(sigma)
        return jax.scipy.linalg.cho_solve((smoothed.chol, True), self.cov)

    def denoiser(self, sigma: float | Array) -> Callable[[Array], Array]:
        """Bayes denoiser ``y -> mean + cov (cov + sigma^2 I)^{-1} (y - mean)``."""
        _check_sigma(sigma)
        return functools.partial(self._denoise, jnp.asarray(sigma, self.mean.dtype))

    @jax.jit
    def _denoise(self, sigma: Array, y: Array) -> Array:
        diff = _check_point(y, self.dim, self.mean.dtype) - self.mean
        return self.mean + _matmul(diff, self._gain(sigma))

    def bayes_mse(
        self,
        sigma: float,
        rng_key: Array | None = None,
        num_samples: int | None = None,
        return_stderr: bool = False,
    ) -> float | tuple[float, float]:
        """Exact Bayes risk ``tr(cov - cov (cov + sigma^2 I)^{-1} cov)`` (summed over
        coordinates). ``rng_key`` and ``num_samples`` are accepted for symmetry with
        ``GaussianMixture.bayes_mse`` and ignored; the standard error is 0."""
        mse = float(jnp.trace(self.cov - _matmul(self.cov, self._gain(sigma))))
        return (mse, 0.0) if return_stderr else mse

    @classmethod
    def ill_conditioned(
        cls, condition_number: float = 100.0, dim: int = 2, rotation: float = math.pi / 6
    ) -> Gaussian:
        """Zero-mean Gaussian whose covariance has eigenvalues log-spaced from 1 down to
        ``1 / condition_number`` (largest variance 1), rotated by ``rotation`` radians in
        the plane of the first two coordinates."""
        if not condition_number >= 1.0 or int(dim) < 2:
            raise ValueError(
                f"`ill_conditioned` needs condition_number >= 1 and dim >= 2, "
                f"got {condition_number}, {dim}."
            )
        rot = np.eye(dim)
        c, s = np.cos(rotation), np.sin(rotation)
        rot[:2, :2] = [[c, -s], [s, c]]
        eigvals = np.geomspace(1.0, 1.0 / condition_number, dim)
        cov = rot @ np.diag(eigvals) @ rot.T
        return cls(np.zeros(dim, np.float32), (0.5 * (cov + cov.T)).astype(np.float32))

    def __repr__(self) -> str:
        return f"Gaussian(dim={self.dim}, dtype={self.mean.dtype})"
