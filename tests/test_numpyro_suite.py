"""NumPyro's own MCMC kernel tests (``test/infer/test_mcmc.py``), run with this package's kernels.

Every test is parametrised over ``ULA``, ``MALA``, ``UnderdampedLangevin``,
``GibbsWalkJump`` and ``MALT`` on their default settings (UnderdampedLangevin with
``adapt_mass_matrix=True``; ``dense_mass=True`` where NumPyro asks for it and the kernel
accepts it) in place of HMC/NUTS/SA/BarkerMH.

Tolerances are NumPyro's. Where NumPyro compares with constants that depend on its data
(drawn from JAX's random stream, which has changed since: the logistic-regression
"MAP" ``[0.97, 2.05, 3.18]``) or with the true parameters of simulated data, the
comparison here is with the exact posterior of the data at hand (closed form,
quadrature, or importance sampling with negligible error), at NumPyro's tolerance;
that is no looser than NumPyro's test and does not depend on the random stream.
``mc.assert_within`` also requires ``5 x MCSE <= tolerance`` (ArviZ MCSE), so a
pass is not luck: a kernel that mixes too slowly to resolve NumPyro's tolerance with
NumPyro's number of draws fails, with a message saying so. Sample counts are NumPyro's,
fewer where the Monte Carlo error still resolves the tolerance, or more (in vectorized
chains) where one chain of NumPyro's length does not; each test says which.
"""

import functools
import inspect
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax import random
from numpy.testing import assert_allclose
from numpyro.distributions.transforms import AffineTransform
from numpyro.infer import MCMC, Predictive
from numpyro.infer.reparam import TransformReparam
from numpyro.util import is_prng_key

from mc import assert_mean_close, assert_within
from numpyro_wjs import MALA, MALT, ULA, GibbsWalkJump, UnderdampedLangevin

# kernel name -> (class, settings other than the default ones)
KERNELS = {
    "ULA": (ULA, {}),
    "MALA": (MALA, {}),
    "UnderdampedLangevin": (UnderdampedLangevin, {"adapt_mass_matrix": True}),
    "GibbsWalkJump": (GibbsWalkJump, {}),
    "MALT": (MALT, {}),
}
KERNEL_NAMES = list(KERNELS)


def accepts_dense_mass(name):
    cls = KERNELS[name][0]
    return any("dense_mass" in inspect.signature(c.__init__).parameters for c in cls.__mro__ if "__init__" in vars(c))


# (kernel, dense_mass) pairs: dense only for the kernels that have a dense mass matrix
KERNEL_MASS = [
    pytest.param(k, dense, id=f"{k}-{'dense' if dense else 'diag'}")
    for k in KERNEL_NAMES
    for dense in (False, True)
    if not dense or accepts_dense_mass(k)
]


def make_kernel(name, model=None, potential_fn=None, dense_mass=False):
    cls, kw = KERNELS[name]
    kw = dict(kw)
    if model is not None:
        kw["model"] = model
    else:
        kw["potential_fn"] = potential_fn
    if dense_mass and accepts_dense_mass(name):
        kw["dense_mass"] = True
    return cls(**kw)


def run_mcmc(kernel, num_warmup, num_samples, *args, num_chains=1, chain_method="vectorized", seed=0, **kw):
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method=chain_method, progress_bar=False)
    mcmc.run(random.PRNGKey(seed), *args, **kw)
    return mcmc


# ----------------------------------------------------------------- test_unnormalized_normal_x64
@pytest.mark.parametrize("kernel, dense_mass", KERNEL_MASS)
def test_unnormalized_normal(kernel, dense_mass):
    # NumPyro: 1000 warmup + 8000 draws, rtol 0.07 on mean and std. Here 4 vectorized chains of
    # 8000 draws, so that 5 MCSE of the mean and std resolves the tolerance for every kernel
    # (ULA's small default step makes about 0.06 effective draws per draw).
    true_mean, true_std = 1.0, 0.5

    def potential_fn(z):
        return 0.5 * jnp.sum(((z - true_mean) / true_std) ** 2)

    mcmc = run_mcmc(make_kernel(kernel, potential_fn=potential_fn, dense_mass=dense_mass), 1000, 8000, num_chains=4,
                    init_params=jnp.zeros(4))
    z = np.asarray(mcmc.get_samples(group_by_chain=True))
    assert z.shape == (4, 8000)
    assert_within(z, true_mean, 0.07 * true_mean, what="mean")
    assert_within(z, true_std, 0.07 * true_std, what="std", stat="sd")


# ----------------------------------------------------------------- test_logistic_regression_x64
LR_N, LR_DIM = 3000, 3


@functools.cache
def logistic_data():
    data = random.normal(random.PRNGKey(0), (LR_N, LR_DIM))
    true_coefs = jnp.arange(1.0, LR_DIM + 1.0)
    labels = dist.Bernoulli(logits=jnp.sum(true_coefs * data, axis=-1)).sample(random.PRNGKey(1))
    return np.asarray(data), np.asarray(labels)


def logistic_model(labels):
    data = jnp.asarray(logistic_data()[0])
    coefs = numpyro.sample("coefs", dist.Normal(jnp.zeros(LR_DIM), jnp.ones(LR_DIM)))
    logits = numpyro.deterministic("logits", jnp.sum(coefs * data, axis=-1))
    return numpyro.sample("obs", dist.Bernoulli(logits=logits), obs=labels)


@functools.cache
def logistic_posterior_mean():
    """Exact posterior mean (float64 numpy): importance sampling from a Student-t at the Laplace fit.

    The posterior is close to Gaussian, so the weights are nearly uniform: with 20000 draws the
    error of the mean is below 1e-3, two orders under the tolerances it is used with.
    """
    x, y = logistic_data()
    x, y = x.astype(np.float64), y.astype(np.float64)

    def logp(b):  # b: (..., dim)
        eta = b @ x.T
        return np.sum(y * eta - np.logaddexp(0.0, eta), -1) - 0.5 * np.sum(b**2, -1)

    b = np.zeros(LR_DIM)
    for _ in range(50):  # Newton's method to the mode
        p = 1.0 / (1.0 + np.exp(-(x @ b)))
        grad = x.T @ (y - p) - b
        hess = (x * (p * (1 - p))[:, None]).T @ x + np.eye(LR_DIM)
        b = b + np.linalg.solve(hess, grad)
    chol = np.linalg.cholesky(np.linalg.inv(hess))
    rng = np.random.default_rng(0)
    df, n = 10.0, 20000
    eps = rng.standard_normal((n, LR_DIM)) / np.sqrt(rng.chisquare(df, (n, 1)) / df)
    draws = b + eps @ chol.T
    log_q = -0.5 * (df + LR_DIM) * np.log1p(np.sum(eps**2, -1) / df)
    log_w = np.concatenate([logp(c) for c in np.array_split(draws, 20)]) - log_q
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    assert 1.0 / np.sum(w**2) > 0.5 * n, "importance sampling oracle degenerate"
    return w @ draws


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_logistic_regression(kernel):
    # NumPyro: 1000 warmup + 8000 draws, atol 0.1 on the posterior mean of coefs (against its
    # stream-dependent constants; here against the exact posterior mean). The posterior sd is
    # about 0.06, so 2 chains of 2000 draws resolve atol 0.1 many times over.
    _, labels = logistic_data()
    mcmc = run_mcmc(make_kernel(kernel, model=logistic_model), 1000, 2000, jnp.asarray(labels), num_chains=2)
    samples = mcmc.get_samples(group_by_chain=True)
    assert samples["logits"].shape == (2, 2000, LR_N)
    coefs = np.asarray(samples["coefs"])
    expected = logistic_posterior_mean()
    for i in range(LR_DIM):
        assert_within(coefs[..., i], expected[i], 0.1, what=f"coefs[{i}]")


# ----------------------------------------------------------------- test_beta_bernoulli_x64
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_beta_bernoulli(kernel):
    # NumPyro: 500 warmup + 20000 draws, atol 0.05 against the true probabilities; here against
    # the exact Beta posterior mean, with 4 chains of 2000 draws (posterior sd ~0.01).
    def model(data):
        alpha = jnp.array([1.1, 1.1])
        beta = jnp.array([1.1, 1.1])
        p_latent = numpyro.sample("p_latent", dist.Beta(alpha, beta))
        numpyro.sample("obs", dist.Bernoulli(p_latent), obs=data)
        return p_latent

    true_probs = jnp.array([0.9, 0.1])
    data = dist.Bernoulli(true_probs).sample(random.PRNGKey(1), (1000,))
    exact = (1.1 + np.asarray(data).sum(0)) / (2.2 + 1000)
    mcmc = run_mcmc(make_kernel(kernel, model=model), 500, 2000, data, num_chains=4, seed=2)
    p = np.asarray(mcmc.get_samples(group_by_chain=True)["p_latent"])
    assert p.shape == (4, 2000, 2)
    for i in range(2):
        assert_within(p[..., i], exact[i], 0.05, what=f"p_latent[{i}]")


# ----------------------------------------------------------------- test_dirichlet_categorical_x64
@pytest.mark.parametrize("kernel, dense_mass", KERNEL_MASS)
def test_dirichlet_categorical(kernel, dense_mass):
    # NumPyro: 100 warmup (kept: short warmup is part of the test) + 20000 draws, atol 0.02
    # against the true probabilities; here against the exact Dirichlet posterior mean, with 4
    # chains of 2500 draws (posterior sd <= 0.011).
    def model(data):
        p_latent = numpyro.sample("p_latent", dist.Dirichlet(jnp.ones(3)))
        numpyro.sample("obs", dist.Categorical(p_latent), obs=data)
        return p_latent

    true_probs = jnp.array([0.1, 0.6, 0.3])
    data = dist.Categorical(true_probs).sample(random.PRNGKey(1), (2000,))
    exact = (1.0 + np.bincount(np.asarray(data), minlength=3)) / (3.0 + 2000)
    mcmc = run_mcmc(make_kernel(kernel, model=model, dense_mass=dense_mass), 100, 2500, data,
                    num_chains=4, seed=2)
    p = np.asarray(mcmc.get_samples(group_by_chain=True)["p_latent"])
    for i in range(3):
        assert_within(p[..., i], exact[i], 0.02, what=f"p_latent[{i}]")


# ----------------------------------------------------------------- test_dense_mass
@pytest.mark.parametrize("rho", [-0.7, 0.8])
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_dense_mass(kernel, rho):
    # NumPyro's counts and tolerances: 20000 warmup + 10000 draws (here in each of 4 vectorized
    # chains, NumPyro runs one: the mean of x0, sd 3.2, needs that many for 5 MCSE <= 0.5 with
    # a diagonal mass matrix); the adapted mass matrix estimates the covariance to rtol 0.1
    # (its diagonal, for a kernel with a diagonal mass matrix: WalkJump); mean atol 0.5 / 0.05,
    # E[x0 x1] atol 0.2, variances rtol 0.2.
    true_cov = np.array([[10.0, rho], [rho, 0.1]])

    def model():
        numpyro.sample("x", dist.MultivariateNormal(jnp.zeros(2), covariance_matrix=jnp.asarray(true_cov)))

    mcmc = run_mcmc(make_kernel(kernel, model=model, dense_mass=True), 20000, 10000, num_chains=4)
    # One estimate per chain; their mean is checked (NumPyro checks its single chain's): checking
    # each of 4 chains at rtol 0.1 would be 4 chances for Monte Carlo noise in the last
    # adaptation window to fail a kernel whose estimate is unbiased.
    imm = np.asarray(mcmc.last_state.adapt_state.inverse_mass_matrix)
    assert np.all(np.isfinite(imm)), imm
    if imm.ndim == 3:
        assert_allclose(imm.mean(0), true_cov, rtol=0.10)
    else:
        assert not accepts_dense_mass(kernel), "dense_mass=True was asked for"
        assert_allclose(imm.mean(0), np.diag(true_cov), rtol=0.10)

    x = np.asarray(mcmc.get_samples(group_by_chain=True)["x"])
    assert_within(x[..., 0], 0.0, 0.5, what="mean x0")
    assert_within(x[..., 1], 0.0, 0.05, what="mean x1")
    assert_within(x[..., 0] * x[..., 1], rho, 0.2, what="E[x0 x1]")
    for i in range(2):
        sd = math.sqrt(true_cov[i, i])
        assert_within(x[..., i], sd, (math.sqrt(1.2) - 1) * sd, what=f"sd x{i}",
                      stat="sd")  # var rtol 0.2 => sd within +9.5% (MC guard)
        assert_allclose(np.var(x[..., i]), true_cov[i, i], rtol=0.20)


# ----------------------------------------------------------------- test_uniform_normal: warmup, run, continue
def _uniform_normal_model(data):
    alpha = numpyro.sample("alpha", dist.Uniform(0, 1))
    with numpyro.handlers.reparam(config={"loc": TransformReparam()}):
        loc = numpyro.sample("loc", dist.TransformedDistribution(dist.Uniform(0, 1), AffineTransform(0, alpha)))
    numpyro.sample("obs", dist.Normal(loc, 0.1), obs=data)


def _uniform_normal_exact(data):
    """E[loc | data]: loc = alpha * u with alpha, u ~ U(0, 1) has prior density -log(loc) on (0, 1)."""
    data = np.asarray(data, np.float64)
    g = np.linspace(1e-6, 1 - 1e-6, 200_001)
    lp = np.log(-np.log(g)) - 0.5 * (len(data) * (g - data.mean()) ** 2) / 0.1**2
    w = np.exp(lp - lp.max())
    return float((w * g).sum() / w.sum())


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_warmup_run_and_continue_from_last_state(kernel):
    # NumPyro test_uniform_normal: 1000 warmup + 1000 draws, atol 0.05 on E[loc] (against the
    # true 0.9; here against the exact posterior mean, by quadrature); warmup() then run(), then
    # run() again from last_state. Also: the continued run does not adapt any more.
    data = 0.9 + random.normal(random.PRNGKey(0), (1000,))
    exact = _uniform_normal_exact(data)
    num_warmup, num_samples = 1000, 1000
    mcmc = MCMC(make_kernel(kernel, model=_uniform_normal_model), num_warmup=num_warmup,
                num_samples=num_samples, progress_bar=False)
    mcmc.warmup(random.PRNGKey(2), data, collect_warmup=True)
    assert mcmc.post_warmup_state is not None
    assert len(mcmc.get_samples()["loc"]) == num_warmup
    step_size = float(mcmc.post_warmup_state.adapt_state.step_size)

    mcmc.run(random.PRNGKey(3), data, extra_fields=("adapt_state.step_size",))
    loc = np.asarray(mcmc.get_samples()["loc"])
    assert len(loc) == num_samples
    assert_within(loc, exact, 0.05, what="E[loc] after warmup()")
    assert_allclose(mcmc.get_extra_fields()["adapt_state.step_size"], step_size, rtol=1e-6)

    mcmc.post_warmup_state = mcmc.last_state
    mcmc.run(random.PRNGKey(3), data, extra_fields=("adapt_state.step_size",))
    loc = np.asarray(mcmc.get_samples()["loc"])
    assert len(loc) == num_samples
    assert_within(loc, exact, 0.05, what="E[loc] continued from last_state")
    assert_allclose(mcmc.get_extra_fields()["adapt_state.step_size"], step_size, rtol=1e-6)


# ----------------------------------------------------------------- test_improper_prior
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_improper_prior(kernel):
    # NumPyro: 1000 warmup + 8000 draws, rtol 0.05 on E[mean] and E[std] (against the true 1
    # and 2; here against the exact posterior under the flat priors: E[mean] = ybar and
    # E[std] = sqrt(S / 2) Gamma((n - 3) / 2) / Gamma((n - 2) / 2), S = sum (y - ybar)^2).
    true_mean, true_std = 1.0, 2.0

    def model(data):
        mean = numpyro.sample("mean", dist.Normal(0, 1).mask(False))
        std = numpyro.sample("std", dist.ImproperUniform(dist.constraints.positive, (), ()))
        return numpyro.sample("obs", dist.Normal(mean, std), obs=data)

    data = dist.Normal(true_mean, true_std).sample(random.PRNGKey(1), (2000,))
    y = np.asarray(data, np.float64)
    n, s = len(y), np.sum((y - y.mean()) ** 2)
    exact_std = math.sqrt(s / 2) * math.exp(math.lgamma((n - 3) / 2) - math.lgamma((n - 2) / 2))

    mcmc = MCMC(make_kernel(kernel, model=model), num_warmup=1000, num_samples=8000, progress_bar=False)
    mcmc.warmup(random.PRNGKey(2), data)
    mcmc.run(random.PRNGKey(2), data)
    samples = mcmc.get_samples()
    assert_within(samples["mean"], y.mean(), 0.05 * abs(y.mean()), what="E[mean]")
    assert_within(samples["std"], exact_std, 0.05 * exact_std, what="E[std]")


# ----------------------------------------------------------------- test_mcmc_progbar
def _tree_assert_allclose(a, b):
    def key_data(x):
        return random.key_data(x) if is_prng_key(x) else x

    a, b = jax.tree.map(key_data, a), jax.tree.map(key_data, b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert_allclose(np.asarray(x), np.asarray(y), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_progress_bar_on_and_off_give_the_same_draws(kernel):
    # NumPyro test_mcmc_progbar: warmup(k2) + run(k3) with the progress bar equals the same
    # without it (draws and post-warmup state to 1e-4), and differs from run(k2). NumPyro runs
    # 10 warmup + 10 draws; here 100 + 100: the posterior sd of `mean` is 0.045, and a kernel
    # that starts dual averaging at step size 0.1 (MALA, WalkJump's refinement; NUTS first
    # searches for a reasonable step size) can still reject every proposal after 10 warmup
    # steps, which would make "differs from run(k2)" fail for a kernel that is not wrong.
    def model(data):
        mean = numpyro.sample("mean", dist.Normal(0, 1).mask(False))
        std = numpyro.sample("std", dist.LogNormal(0, 1).mask(False))
        return numpyro.sample("obs", dist.Normal(mean, std), obs=data)

    data = dist.Normal(1.0, 2.0).sample(random.PRNGKey(1), (2000,))
    kernel = make_kernel(kernel, model=model)
    mcmc = MCMC(kernel, num_warmup=100, num_samples=100, progress_bar=True)
    mcmc.warmup(random.PRNGKey(2), data)
    mcmc.run(random.PRNGKey(3), data)
    mcmc1 = MCMC(kernel, num_warmup=100, num_samples=100, progress_bar=False)
    mcmc1.run(random.PRNGKey(2), data)
    with pytest.raises(AssertionError):
        _tree_assert_allclose(mcmc1.get_samples(), mcmc.get_samples())
    mcmc1.warmup(random.PRNGKey(2), data)
    mcmc1.run(random.PRNGKey(3), data)
    _tree_assert_allclose(mcmc1.get_samples(), mcmc.get_samples())
    _tree_assert_allclose(mcmc1.post_warmup_state, mcmc.post_warmup_state)


# ----------------------------------------------------------------- test_chain: chain methods
CHAIN_WARMUP, CHAIN_SAMPLES = 1000, 5000  # NumPyro: 5000 + 5000


def run_logistic_chains(kernel, chain_method):
    """NumPyro test_chain: logistic regression, 2 chains (NumPyro: 5000 + 5000 per chain)."""
    _, labels = logistic_data()
    mcmc = MCMC(make_kernel(kernel, model=logistic_model), num_warmup=CHAIN_WARMUP, num_samples=CHAIN_SAMPLES,
                num_chains=2, chain_method=chain_method, progress_bar=False)
    mcmc.run(random.PRNGKey(2), jnp.asarray(labels))
    return np.asarray(mcmc.get_samples()["coefs"]), np.asarray(mcmc.get_samples(group_by_chain=True)["coefs"])


_PARALLEL_SCRIPT = """
import sys, warnings
import jax
import numpy as np
assert jax.local_device_count() == 2, jax.devices()
import test_numpyro_suite as suite
with warnings.catch_warnings():
    # NumPyro warns, and runs the chains sequentially, when there are too few devices
    warnings.filterwarnings("error", message="There are not enough devices")
    flat, grouped = suite.run_logistic_chains(sys.argv[1], "parallel")
np.savez(sys.argv[2], flat=flat, grouped=grouped)
"""


@pytest.mark.parametrize("chain_method", ["sequential", "parallel", "vectorized"])
@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_chain_methods(kernel, chain_method, tmp_path):
    # NumPyro test_chain: shapes, and atol 0.21 on the posterior mean of coefs (against the true
    # coefficients; here against the exact posterior mean). On one CPU device NumPyro runs
    # "parallel" sequentially, so that case runs in a subprocess with two host devices.
    if chain_method == "parallel":
        out = tmp_path / "draws.npz"
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
        root, tests = Path(__file__).resolve().parents[1], Path(__file__).resolve().parent
        env["PYTHONPATH"] = os.pathsep.join([str(tests), str(root), env.get("PYTHONPATH", "")])
        result = subprocess.run([sys.executable, "-c", textwrap.dedent(_PARALLEL_SCRIPT), kernel, str(out)],
                                capture_output=True, text=True, timeout=600, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        with np.load(out) as f:
            flat, grouped = f["flat"], f["grouped"]
    else:
        flat, grouped = run_logistic_chains(kernel, chain_method)
    assert flat.shape == (2 * CHAIN_SAMPLES, LR_DIM)
    assert grouped.shape == (2, CHAIN_SAMPLES, LR_DIM)
    assert_allclose(flat.reshape(2, CHAIN_SAMPLES, LR_DIM), grouped)
    expected = logistic_posterior_mean()
    for i in range(LR_DIM):
        assert_within(grouped[..., i], expected[i], 0.21, what=f"coefs[{i}]")


# ----------------------------------------------------------------- Predictive on the draws
def _normal_mean_model(n, y=None):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    with numpyro.plate("data", n):
        numpyro.sample("obs", dist.Normal(mu, 1.0), obs=y)


@pytest.mark.parametrize("kernel", KERNEL_NAMES)
def test_predictive_on_the_draws(kernel):
    # Posterior predictive of y_i ~ N(mu, 1), mu ~ N(0, 10^2), n = 100 observations: mu | y is
    # N(m, v) with v = 1 / (n + 0.01), m = v sum(y); a replicated data set given mu has mean
    # mu + N(0, 1 / n). Checks shapes (flat and by chain) and these moments.
    n = 100
    y = np.asarray(1.0 + random.normal(random.PRNGKey(0), (n,)), np.float64)
    v = 1.0 / (n + 1e-2)
    m = v * y.sum()
    mcmc = run_mcmc(make_kernel(kernel, model=_normal_mean_model), 500, 1000, n, jnp.asarray(y), num_chains=4)
    post = mcmc.get_samples(group_by_chain=True)
    pred = Predictive(_normal_mean_model, posterior_samples=post, batch_ndims=2)(random.PRNGKey(1), n)
    assert pred["obs"].shape == (4, 1000, n)
    flat = Predictive(_normal_mean_model, posterior_samples=mcmc.get_samples())(random.PRNGKey(1), n)
    assert flat["obs"].shape == (4000, n)

    obs = np.asarray(pred["obs"], np.float64)
    mu = np.asarray(post["mu"], np.float64)
    assert np.all(np.isfinite(obs))
    ybar = obs.mean(-1)
    # a fixed tolerance first (MCSE alone would excuse chains that disagree wildly): half the
    # posterior sd of mu, 0.05, with 5 MCSE resolving it; then the variance at 5 MCSE
    assert_within(ybar, m, 0.5 * math.sqrt(v), what="E[ybar_rep]")
    assert_mean_close((ybar - m) ** 2, v + 1.0 / n, what="Var[ybar_rep]")
    # each replicate is drawn from the mu it is paired with: residuals are iid N(0, 1)
    resid = obs - mu[..., None]
    assert abs(resid.mean()) < 5 / math.sqrt(resid.size), resid.mean()
    assert abs(resid.var() - 1.0) < 5 * math.sqrt(2 / resid.size), resid.var()
