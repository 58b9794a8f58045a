"""Tests for numpyro_wjs.targets against closed forms, quadrature and Monte Carlo.

Monte Carlo tolerances are 5 standard errors of the estimator (two-sided
probability of a false failure below 1e-6 per check under normality), with the
standard error either known in closed form or estimated from the same draws.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
import scipy.stats
from numpyro import handlers
from numpyro.infer.util import log_density

from numpyro_wjs.targets import Gaussian, GaussianMixture

Z = 5.0  # tolerance in standard errors
# points for exact checks / Monte Carlo draws; shared sizes reuse compiled programs
SMALL, BIG = 64, 200_000


def mix1d():
    return GaussianMixture([0.2, 0.5, 0.3], [-3.0, 0.0, 4.0], [0.5, 1.0, 0.7])


def mix2d():
    return GaussianMixture([1.0, 2.0, 1.0], [[-4.0, 0.0], [0.0, 3.0], [4.0, -1.0]], [0.6, 0.8, 0.5])


def mix5d():
    means = jax.random.normal(jax.random.PRNGKey(3), (4, 5)) * 3.0
    return GaussianMixture([0.1, 0.4, 0.3, 0.2], means, [0.5, 1.0, 0.8, 1.5])


def mixture_moments(t):
    """Exact mean and covariance: sum_k pi_k (tau_k^2 I + mu_k mu_k^T) - m m^T."""
    w, mu, tau = (np.asarray(a, np.float64) for a in (t.weights, t.means, t.scales))
    m = w @ mu
    second = np.einsum("k,ki,kj->ij", w, mu, mu) + np.sum(w * tau**2) * np.eye(t.dim)
    return m, second - np.outer(m, m)


def assert_moments(x, mean, cov):
    """Sample mean and covariance within Z standard errors (SEs estimated from x)."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    se_mean = np.sqrt(np.diag(cov) / n)
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), Z * se_mean)
    c = x - x.mean(0)
    prods = c[:, :, None] * c[:, None, :]
    se_cov = prods.std(0) / math.sqrt(n)
    np.testing.assert_array_less(np.abs(prods.mean(0) - cov), Z * se_cov + 1e-6)


# ---------------------------------------------------------------- densities


def test_log_prob_normalises_1d():
    grid = np.linspace(-15.0, 15.0, 30001)
    dens = np.exp(np.asarray(mix1d().log_prob(grid[:, None]), np.float64))
    assert abs(np.trapezoid(dens, grid) - 1.0) < 1e-4


def test_log_prob_normalises_2d():
    g = np.linspace(-10.0, 10.0, 401)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    pts = np.stack([xx, yy], -1).astype(np.float32)
    dens = np.exp(np.asarray(mix2d().log_prob(pts), np.float64))
    assert abs(np.trapezoid(np.trapezoid(dens, g, axis=1), g) - 1.0) < 1e-4


def test_log_prob_matches_references():
    x = np.random.default_rng(0).normal(size=(SMALL, 3)).astype(np.float32)
    single = GaussianMixture([3.0], [[0.5, -1.0, 2.0]], 1.7)
    ref = scipy.stats.multivariate_normal([0.5, -1.0, 2.0], 1.7**2).logpdf(x)
    np.testing.assert_allclose(single.log_prob(x), ref, rtol=1e-5, atol=1e-5)
    t = mix2d()
    ref_mix = dist.MixtureSameFamily(
        dist.Categorical(probs=t.weights), dist.Normal(t.means, t.scales[:, None]).to_event(1)
    )
    y = t.sample(jax.random.PRNGKey(1), (SMALL,))
    np.testing.assert_allclose(t.log_prob(y), jax.jit(ref_mix.log_prob)(y), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(t.potential_fn(y), -t.log_prob(y))


@pytest.mark.parametrize("make", [mix1d, mix2d, mix5d])
def test_score_equals_autodiff(make):
    t = make()
    x = t.sample(jax.random.PRNGKey(2), (SMALL,)) * 1.5
    auto = jax.vmap(jax.grad(t.log_prob))(x)
    scale = np.abs(np.asarray(auto)).max()
    np.testing.assert_allclose(t.score(x), auto, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(t.score(x[0]), auto[0], rtol=1e-4, atol=1e-5 * scale)
    # far from every mode the naive sum of exponentials underflows; logsumexp does not
    far = jnp.full((t.dim,), 1e3)
    lp, s = t.log_prob(far), t.score(far)
    assert np.isfinite(lp) and np.all(np.isfinite(s))
    np.testing.assert_allclose(s, jax.grad(t.log_prob)(far), rtol=1e-4)
    assert np.all(np.isfinite(t.denoiser(1.0)(far)))


def test_jit_vmap_and_pytree():
    t = mix2d()
    x = t.sample(jax.random.PRNGKey(4), (SMALL,))
    np.testing.assert_allclose(jax.jit(lambda t, x: t.log_prob(x))(t, x), t.log_prob(x), rtol=1e-6)
    smooth_lp = jax.jit(lambda s: t.smooth(s).log_prob(x))(0.7)
    np.testing.assert_allclose(smooth_lp, t.smooth(0.7).log_prob(x), rtol=1e-6)
    leaves, treedef = jax.tree_util.tree_flatten(t)
    assert len(leaves) == 3
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    np.testing.assert_array_equal(rebuilt.means, t.means)
    np.testing.assert_allclose(jax.vmap(t.log_prob)(x), t.log_prob(x), rtol=1e-6)


def test_responsibilities_and_mode_of():
    t = mix5d()
    np.testing.assert_array_equal(t.mode_of(t.means), np.arange(t.K))
    assert t.mode_of(t.means).dtype == jnp.int32
    r = t.responsibilities(t.means.reshape(2, 2, t.dim))
    assert r.shape == (2, 2, t.K)
    np.testing.assert_allclose(r.sum(-1), 1.0, rtol=1e-6)


def test_parameters_are_normalised_and_broadcast():
    t = GaussianMixture([1.0, 3.0], [1.0, -1.0], 0.5)
    assert (t.K, t.dim) == (2, 1) and t.means.shape == (2, 1)
    np.testing.assert_allclose(t.weights, [0.25, 0.75])
    np.testing.assert_allclose(t.scales, [0.5, 0.5])
    assert t.weights.dtype == jnp.float32 and "K=2" in repr(t)
    ring = GaussianMixture.ring(K=6, radius=3.0, scale=0.2, dim=4)
    np.testing.assert_allclose(np.linalg.norm(ring.means, axis=1), 3.0, rtol=1e-6)
    np.testing.assert_allclose(ring.means[:, 2:], 0.0)
    second = [3 * np.cos(np.pi / 3), 3 * np.sin(np.pi / 3)]
    np.testing.assert_allclose(ring.means[1, :2], second, rtol=1e-6)


# ---------------------------------------------------------------- sampling


def test_sample_moments_and_frequencies():
    t, n = mix2d(), BIG
    x = t.sample(jax.random.PRNGKey(6), (n,))
    assert x.shape == (n, 2)
    assert jax.eval_shape(lambda k: t.sample(k, (3, 4)), jax.random.PRNGKey(0)).shape == (3, 4, 2)
    # modes >= 5 std devs apart: mode_of recovers the component up to ~1e-6 misassignment
    counts = np.bincount(np.asarray(t.mode_of(x)), minlength=t.K) / n
    pi = np.asarray(t.weights, np.float64)
    np.testing.assert_array_less(np.abs(counts - pi), Z * np.sqrt(pi * (1 - pi) / n))
    assert_moments(x, *mixture_moments(t))


def test_smooth_matches_noisy_samples():
    t, sigma, n = mix2d(), 1.3, BIG
    kx, kn, ky = jax.random.split(jax.random.PRNGKey(7), 3)
    x = t.sample(kx, (n,))
    noisy = np.asarray(x + sigma * jax.random.normal(kn, x.shape), np.float64)
    y = np.asarray(t.smooth(sigma).sample(ky, (n,)), np.float64)
    np.testing.assert_allclose(t.smooth(sigma).scales, np.sqrt(t.scales**2 + sigma**2), rtol=1e-6)
    # two-sample comparison: SE of a difference of independent means
    se = np.sqrt(noisy.var(0) / n + y.var(0) / n)
    np.testing.assert_array_less(np.abs(noisy.mean(0) - y.mean(0)), Z * se)
    cn, cy = noisy - noisy.mean(0), y - y.mean(0)
    pn, py = cn[:, :, None] * cn[:, None, :], cy[:, :, None] * cy[:, None, :]
    se_cov = np.sqrt(pn.var(0) / n + py.var(0) / n)
    np.testing.assert_array_less(np.abs(pn.mean(0) - py.mean(0)), Z * se_cov)
    m, c = mixture_moments(t)
    assert_moments(y, m, c + sigma**2 * np.eye(2))


def test_smooth_log_prob_is_convolution_1d():
    t, sigma = mix1d(), 0.8
    grid = np.linspace(-20.0, 20.0, 40001)
    px = np.exp(np.asarray(t.log_prob(grid[:, None]), np.float64))
    ys = np.array([-5.0, -1.5, 0.0, 2.0, 6.0])
    kernel = scipy.stats.norm.pdf(ys[:, None] - grid[None, :], scale=sigma)
    conv = np.trapezoid(px[None, :] * kernel, grid, axis=1)
    np.testing.assert_allclose(t.smooth(sigma).log_prob(ys[:, None]), np.log(conv), atol=1e-5)


# ---------------------------------------------------------------- denoising


@pytest.mark.parametrize("make", [mix1d, mix2d, mix5d])
@pytest.mark.parametrize("sigma", [0.1, 1.0, 3.0])
def test_denoiser_is_tweedie(make, sigma):
    t = make()
    y = t.smooth(sigma).sample(jax.random.PRNGKey(8), (SMALL,))
    tweedie = y + sigma**2 * jax.vmap(jax.grad(t.smooth(sigma).log_prob))(y)
    scale = np.abs(np.asarray(y)).max()
    np.testing.assert_allclose(t.denoiser(sigma)(y), tweedie, atol=2e-6 * scale, rtol=1e-5)
    np.testing.assert_allclose(t.denoiser(sigma)(y[0]), tweedie[0], atol=2e-6 * scale, rtol=1e-5)


def test_denoiser_matches_importance_sampling():
    t, sigma, n = mix2d(), 1.0, BIG
    x = np.asarray(t.sample(jax.random.PRNGKey(9), (n,)), np.float64)
    ys = np.array([[-4.0, 0.0], [-2.0, 1.5], [1.0, 1.0], [3.0, -0.5]])
    denoised = np.asarray(t.denoiser(sigma)(ys.astype(np.float32)), np.float64)
    for y, d in zip(ys, denoised):
        logw = -0.5 * np.sum((x - y) ** 2, -1) / sigma**2
        w = np.exp(logw - logw.max())
        w /= w.sum()
        est = w @ x
        # delta-method SE of the self-normalised estimator: sqrt(sum w_i^2 (x_i - est)^2)
        se = np.sqrt(w**2 @ (x - est) ** 2)
        np.testing.assert_array_less(np.abs(d - est), Z * se)


def test_bayes_mse_single_component_closed_form():
    tau, sigma, d = 1.5, 0.8, 3
    t = GaussianMixture([1.0], [[1.0, 2.0, -1.0]], tau)
    mse, se = t.bayes_mse(sigma, jax.random.PRNGKey(10), 100_000, return_stderr=True)
    exact = d * tau**2 * sigma**2 / (tau**2 + sigma**2)
    assert isinstance(mse, float) and abs(mse - exact) < Z * se


def test_bayes_mse_bounds_and_small_noise_limit():
    t = mix2d()
    prior_var = np.trace(mixture_moments(t)[1])
    for sigma in [0.3, 1.0, 3.0]:
        mse = t.bayes_mse(sigma, jax.random.PRNGKey(11))
        assert 0.0 < mse < min(prior_var, t.dim * sigma**2)
    # modes >= 20 tau apart: misassignment has probability ~1e-20, so risk is the
    # single-Gaussian value d tau^2 sigma^2 / (tau^2 + sigma^2)
    sep = GaussianMixture([0.3, 0.5, 0.2], [[-10.0, 0.0], [10.0, 0.0], [0.0, 20.0]], 1.0)
    mse, se = sep.bayes_mse(0.2, jax.random.PRNGKey(12), 100_000, return_stderr=True)
    assert abs(mse - 2 * 0.04 / 1.04) < Z * se
    assert t.bayes_mse(0.5) == t.bayes_mse(0.5, jax.random.PRNGKey(0))


# ---------------------------------------------------------------- numpyro, dtypes


@pytest.mark.parametrize("make", [mix2d, lambda: Gaussian.ill_conditioned(10.0, dim=3)])
def test_model_log_density_matches(make):
    t = make()
    tr = handlers.trace(handlers.seed(t.model("z"), 0)).get_trace()
    value = tr["z"]["value"]
    assert value.shape == (t.dim,)
    np.testing.assert_allclose(tr["z"]["fn"].log_prob(value), t.log_prob(value), rtol=1e-6)
    x = t.sample(jax.random.PRNGKey(13), ())
    lp = log_density(t.model("z"), (), {}, {"z": x})[0]
    np.testing.assert_allclose(lp, t.log_prob(x), rtol=1e-6)


def test_float64_is_kept():
    with jax.enable_x64(True):
        w, mu, tau = np.array([1.0, 2.0]), np.array([[0.0, 1.0], [2.0, 0.0]]), np.array([0.5, 1.0])
        t = GaussianMixture(w, mu, tau)
        x = jnp.array([0.3, -0.2], jnp.float64)
        assert t.means.dtype == jnp.float64
        for out in [t.log_prob(x), t.score(x), t.denoiser(0.5)(x), t.sample(jax.random.PRNGKey(0))]:
            assert out.dtype == jnp.float64
        g = Gaussian(np.zeros(2), np.array([[2.0, 0.3], [0.3, 1.0]]))
        assert g.log_prob(x).dtype == jnp.float64
    assert GaussianMixture([1.0], [0.0], 1.0).means.dtype == jnp.float32


@pytest.mark.parametrize(
    "weights, means, scales, arg",
    [
        ([1.0, -1.0], [0.0, 1.0], 1.0, "weights"),
        ([1.0, 0.0], [0.0, 1.0], 1.0, "weights"),
        ([1.0, np.nan], [0.0, 1.0], 1.0, "weights"),
        ([[1.0, 1.0]], [0.0, 1.0], 1.0, "weights"),
        ([1.0, 1.0], [0.0, np.inf], 1.0, "means"),
        ([1.0, 1.0], [0.0, 1.0, 2.0], 1.0, "means"),
        ([1.0, 1.0], np.zeros((2, 2, 2)), 1.0, "means"),
        ([1.0, 1.0], [0.0, 1.0], 0.0, "scales"),
        ([1.0, 1.0], [0.0, 1.0], [1.0, -1.0], "scales"),
        ([1.0, 1.0], [0.0, 1.0], [1.0, np.inf], "scales"),
        ([1.0, 1.0], [0.0, 1.0], [1.0, 1.0, 1.0], "scales"),
    ],
)
def test_bad_mixture_parameters(weights, means, scales, arg):
    with pytest.raises(ValueError, match=f"`{arg}`"):
        GaussianMixture(weights, means, scales)


def test_bad_call_arguments():
    t = mix2d()
    with pytest.raises(ValueError, match="`x`"):
        t.log_prob(jnp.zeros(3))
    with pytest.raises(ValueError, match="`sigma`"):
        t.smooth(-1.0)
    with pytest.raises(ValueError, match="`sigma`"):
        Gaussian.ill_conditioned().denoiser(float("nan"))


# ---------------------------------------------------------------- Gaussian


def test_gaussian_density_score_and_moments():
    g = Gaussian([1.0, -2.0, 0.5], [[2.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 0.5]])
    x = g.sample(jax.random.PRNGKey(14), (BIG,))
    y = x[:SMALL]
    ref = scipy.stats.multivariate_normal(np.asarray(g.mean), np.asarray(g.cov)).logpdf(y)
    np.testing.assert_allclose(g.log_prob(y), ref, rtol=1e-5, atol=1e-5)
    auto = jax.vmap(jax.grad(g.log_prob))(y)
    np.testing.assert_allclose(g.score(y), auto, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(g.potential_fn(y), -g.log_prob(y))
    assert_moments(x, np.asarray(g.mean, np.float64), np.asarray(g.cov, np.float64))
    np.testing.assert_allclose(Gaussian([0.0, 0.0], [4.0, 1.0]).cov, np.diag([4.0, 1.0]))
    np.testing.assert_allclose(g.smooth(0.5).cov, g.cov + 0.25 * np.eye(3), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda g, x: g.score(x))(g, y), g.score(y), rtol=1e-6)


def test_gaussian_denoiser_and_bayes_mse():
    g, sigma, n = Gaussian.ill_conditioned(100.0, dim=3), 0.3, BIG
    y = g.smooth(sigma).sample(jax.random.PRNGKey(15), (SMALL,))
    tweedie = y + sigma**2 * jax.vmap(jax.grad(g.smooth(sigma).log_prob))(y)
    np.testing.assert_allclose(g.denoiser(sigma)(y), tweedie, rtol=1e-4, atol=1e-5)
    lam = np.linalg.eigvalsh(np.asarray(g.cov, np.float64))
    exact = np.sum(lam * sigma**2 / (lam + sigma**2))
    assert abs(g.bayes_mse(sigma) - exact) < 1e-5
    kx, kn = jax.random.split(jax.random.PRNGKey(16))
    x = g.sample(kx, (n,))
    y = x + sigma * jax.random.normal(kn, x.shape)
    err = np.asarray(jnp.sum((x - g.denoiser(sigma)(y)) ** 2, -1))
    assert abs(err.mean() - exact) < Z * err.std() / math.sqrt(n)


@pytest.mark.parametrize("kappa, dim", [(100.0, 2), (1000.0, 4)])
def test_ill_conditioned(kappa, dim):
    g = Gaussian.ill_conditioned(kappa, dim=dim, rotation=np.pi / 6)
    lam, vec = np.linalg.eigh(np.asarray(g.cov, np.float64))
    np.testing.assert_allclose(lam.max() / lam.min(), kappa, rtol=1e-3)
    np.testing.assert_allclose(lam.max(), 1.0, rtol=1e-6)
    lead = vec[:, -1] * np.sign(vec[0, -1])
    np.testing.assert_allclose(lead[:2], [np.cos(np.pi / 6), np.sin(np.pi / 6)], atol=1e-5)


@pytest.mark.parametrize(
    "mean, cov, message",
    [
        ([0.0, 0.0], [[1.0, 0.5], [0.0, 1.0]], "symmetric"),
        ([0.0, 0.0], [[1.0, 2.0], [2.0, 1.0]], "positive definite"),
        ([0.0, 0.0], [[1.0, 0.0], [0.0, 0.0]], "positive definite"),
        ([0.0, 0.0], np.eye(3), "`cov`"),
        ([0.0, 0.0], [1.0, -1.0], "`cov`"),
        ([0.0, 0.0], [[1.0, np.nan], [np.nan, 1.0]], "`cov`"),
        ([0.0, np.nan], np.eye(2), "`mean`"),
        (np.zeros((2, 2)), np.eye(2), "`mean`"),
    ],
)
def test_bad_gaussian_parameters(mean, cov, message):
    with pytest.raises(ValueError, match=message):
        Gaussian(mean, cov)
