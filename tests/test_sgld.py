"""Stochastic-gradient Langevin (issue 22 part 2) against exact oracles (theory.md section 8).

The Gaussian-mean posterior makes the gradient noise independent of the position, so
SGLD's stationary law is Gaussian with known mean and variance at every step and
minibatch size; BAOAB with that gradient is a linear system whose stationary
covariance solves a discrete Lyapunov equation.
"""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import scipy.linalg
from numpyro.infer import MCMC, NUTS

from mc import N_SE, assert_mean_close
from numpyro_wjs.core import sgld
from numpyro_wjs.infer.sgld import SGHMC, SGLD

# --------------------------------------------------------------------------- the conjugate model
N, B, S0 = 200, 5, 10.0
X = np.asarray(1.0 + jax.random.normal(jax.random.key(0), (N,)))
P = 1 / S0**2 + N  # posterior precision
M = X.sum() / P  # posterior mean
SX2 = X.var(ddof=1)
VAR_XI = N**2 * (1 - B / N) * SX2 / B  # minibatch noise, without replacement
VAR_XI_REPLACE = N**2 * X.var() / B  # with replacement


def grad_fn(key, z, scale=N / B, replace=False):
    idx = sgld.minibatch(key, N, B, replace)
    return -z / S0**2 + scale * jnp.sum(jnp.asarray(X)[idx] - z)


def sgld_var(h, var_xi):
    """``V(h, B) = (2 + h Var xi) / (P (2 - h P))`` (theory.md section 8)."""
    return (2 + h * var_xi) / (P * (2 - h * P))


def run_chains(step, state, key, chains=200, steps=1000, burn=200, coordinate=0):
    """Draws of ``z[coordinate]`` (all of ``z`` if None), shape (chain, draw[, d]), from
    ``step(key, state) -> (state, info)``."""
    def one(k):
        def body(s, k):
            s, _ = step(k, s)
            return s, s.z if coordinate is None else s.z[coordinate]

        return jax.lax.scan(body, state, jax.random.split(k, steps))[1]

    return np.asarray(jax.jit(jax.vmap(one))(jax.random.split(key, chains)))[:, burn:]


def check_gaussian(draws, mean, var):
    assert_mean_close(draws, mean, what="mean")
    assert_mean_close((draws - mean) ** 2, var, what="variance")


H = 2.0 / VAR_XI  # h Var xi = 2: the noise doubles the variance


def test_sgld_stationary_law_is_the_exact_one():
    state = sgld.sgld_init(jax.random.key(1), jnp.full(1, M), grad_fn)
    draws = run_chains(lambda k, s: sgld.sgld_step(k, s, grad_fn, H), state, jax.random.key(2))
    v = sgld_var(H, VAR_XI)
    assert v * P > 1.9  # the inflation is visible: twice the posterior variance
    check_gaussian(draws, M, v)


def test_sgld_with_replacement_has_its_own_noise():
    def g(k, z):
        return grad_fn(k, z, replace=True)

    state = sgld.sgld_init(jax.random.key(1), jnp.full(1, M), g)
    draws = run_chains(lambda k, s: sgld.sgld_step(k, s, g, H), state, jax.random.key(3))
    check_gaussian(draws, M, sgld_var(H, VAR_XI_REPLACE))


def test_mutants_fail_the_oracle():
    """The oracle tells a missing sqrt(2) in the noise and a missing N/B scaling apart."""
    def no_sqrt2(key, s):
        k1, k2 = jax.random.split(key)
        z = s.z + H * s.score + jnp.sqrt(H) * jax.random.normal(k1, s.z.shape)
        return sgld.SGLDState(z, grad_fn(k2, z), None), None

    def unscaled(k, z):
        return grad_fn(k, z, scale=1.0)

    start = jnp.full(1, M)
    mutants = [
        (no_sqrt2, sgld.sgld_init(jax.random.key(1), start, grad_fn)),
        (lambda k, s: sgld.sgld_step(k, s, unscaled, H), sgld.sgld_init(jax.random.key(1), start, unscaled)),
    ]
    for step, state in mutants:
        draws = run_chains(step, state, jax.random.key(2))
        with pytest.raises(AssertionError):
            check_gaussian(draws, M, sgld_var(H, VAR_XI))


def baoab_variance(h, gamma, var_xi):
    """Stationary variance of BAOAB with the noisy gradient on the conjugate posterior: the
    state ``(z - m, v, xi)`` is linear, ``u' = A u + G w`` with ``w = (eta, xi')``."""
    a = np.exp(-gamma * h)

    def f(u, w):
        e, v, _ = u
        eta, xi_new = w
        v = v + h / 2 * (-P * e + u[2])
        e = e + h / 2 * v
        v = a * v + np.sqrt(1 - a * a) * eta
        e = e + h / 2 * v
        v = v + h / 2 * (-P * e + xi_new)
        return np.array([e, v, xi_new])

    A = np.stack([f(u, (0.0, 0.0)) for u in np.eye(3)], 1)
    G = np.stack([f(np.zeros(3), w) for w in np.eye(2)], 1)
    return scipy.linalg.solve_discrete_lyapunov(A, G @ np.diag([1.0, var_xi]) @ G.T)[0, 0]


def test_sghmc_stationary_law_solves_the_lyapunov_equation():
    h, gamma = 0.3 / np.sqrt(P), 2.0 * np.sqrt(P)
    state = sgld.sghmc_init(jax.random.key(1), jnp.full(1, M), grad_fn)
    draws = run_chains(lambda k, s: sgld.sghmc_step(k, s, grad_fn, h, gamma), state, jax.random.key(4), steps=600,
                       burn=100)
    v = baoab_variance(h, gamma, VAR_XI)
    assert v * P > 1.2 and abs(baoab_variance(h, gamma, 0.0) * P - 1) < 1e-9  # exact without noise
    check_gaussian(draws, M, v)


# --------------------------------------------------------------------------- control variates
def test_control_variates_remove_the_noise_at_the_centre_and_for_gaussians():
    full = jax.grad(lambda z: -0.5 * jnp.sum(z**2) / S0**2 - 0.5 * jnp.sum((jnp.asarray(X) - z[0]) ** 2))
    centre = jnp.full(1, M + 0.3)
    g_cv = sgld.control_variate(grad_fn, centre, full(centre))
    keys = jax.random.split(jax.random.key(5), 50)
    at_centre = jax.vmap(g_cv, (0, None))(keys, centre)
    np.testing.assert_allclose(at_centre, np.broadcast_to(full(centre), at_centre.shape), rtol=1e-5)
    # Gaussian likelihood: per-datum gradients are affine in z, so g_cv is exact everywhere
    z = jnp.full(1, M - 2.0)
    np.testing.assert_allclose(jax.vmap(g_cv, (0, None))(keys, z), np.broadcast_to(full(z), (50, 1)), rtol=1e-4)
    # so SGLD-CV's stationary variance is ULA's, 2 / (P (2 - h P)), at a step where SGLD's is 10x
    h = 1.0 / P
    state = sgld.sgld_init(jax.random.key(1), jnp.full(1, M), g_cv)
    draws = run_chains(lambda k, s: sgld.sgld_step(k, s, g_cv, h), state, jax.random.key(6), steps=600, burn=100)
    check_gaussian(draws, M, sgld_var(h, 0.0))
    assert sgld_var(h, VAR_XI) > 10 * sgld_var(h, 0.0)


def test_control_variates_shrink_the_variance_near_the_centre_of_a_logistic_regression():
    n, d = 500, 3
    xs = jax.random.normal(jax.random.key(7), (n, d))
    ys = (xs @ jnp.array([1.0, -1.0, 0.5]) + jax.random.logistic(jax.random.key(8), (n,)) > 0).astype(float)

    def loglik(z, idx):
        logits = xs[idx] @ z
        return jnp.sum(ys[idx] * logits - jnp.logaddexp(0.0, logits))

    def g(key, z):
        return (n / 20) * jax.grad(loglik)(z, sgld.minibatch(key, n, 20, replace=True))

    centre = jnp.array([1.0, -1.0, 0.5])
    g_cv = sgld.control_variate(g, centre, jax.grad(loglik)(centre, jnp.arange(n)))
    keys = jax.random.split(jax.random.key(9), 200)
    near = centre + 0.05
    plain = jax.vmap(g, (0, None))(keys, near).var(0)
    cv = jax.vmap(g_cv, (0, None))(keys, near).var(0)
    assert np.all(cv < 0.01 * plain)
    assert np.allclose(jax.vmap(g_cv, (0, None))(keys, centre).var(0), 0.0, atol=1e-6)


# --------------------------------------------------------------------------- schedules, noise rule
def test_schedules():
    t = jnp.arange(5)
    np.testing.assert_allclose(sgld.constant(0.3)(t), [0.3] * 5)
    np.testing.assert_allclose(sgld.polynomial_decay(2.0, 10.0, 0.55)(t), 2.0 * (10.0 + np.arange(5)) ** -0.55, rtol=1e-6)


def test_noise_rule_meets_its_inflation_on_the_oracle():
    h = sgld.noise_limited_step(jnp.array([VAR_XI]), None, 0.1)
    inflation = (2 + h * VAR_XI) / 2 - 1  # the noise's share of V(h, B) P (2 - h P) / 2 - 1
    np.testing.assert_allclose(inflation, 0.1, rtol=1e-6)
    samples = sgld.noise_variance(*jax.vmap(jax.vmap(grad_fn, (0, None)), (0, None))(
        jax.random.split(jax.random.key(10), (2, 4000)), jnp.zeros(1)))
    assert abs(float(samples.mean()) / VAR_XI - 1) < 5 * np.sqrt(2 / 4000) * 1.5


# --------------------------------------------------------------------------- pSGLD
def psgld_draws(alpha):
    sd = jnp.array([1.0, 10.0])

    def g(key, z):
        return -z / sd**2

    rms = sgld.RMSProp(alpha=alpha)
    state = sgld.sgld_init(jax.random.key(11), sd, g, rms)

    def one(k):
        def body(s, k):
            s, _ = sgld.sgld_step(k, s, g, 0.05, rms)
            return s, (s.z, s.square_avg)

        return jax.lax.scan(body, state, jax.random.split(k, 4000))[1]

    zs, vs = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(12), 100))
    return np.asarray(zs)[:, 1000:], np.asarray(vs)[:, 1000:]


def test_psgld_preconditioner_on_an_ill_scaled_gaussian():
    """N(0, diag(1, 10^2)) with exact gradients: RMSprop's C tends to 1 / RMS(gradient) = sd
    (10x larger steps along the wide axis). The dropped correction term leaves a bias
    that needs V's window, 1 / (1 - alpha) steps, long against the chain's relaxation
    time (sd / h = 200 steps on the wide axis): within 10 % at alpha = 0.999, +40 % on the
    wide axis at Li et al.'s alpha = 0.99 (where minibatch noise, not the position,
    dominates g~^2, the window matters less)."""
    zs, vs = psgld_draws(0.999)
    np.testing.assert_allclose((1 / np.sqrt(vs)).mean((0, 1)), [1.0, 10.0], rtol=0.1)
    for j, var in enumerate((1.0, 100.0)):
        assert_mean_close(zs[..., j], 0.0, what=f"mean[{j}]")
        assert abs(zs[..., j].var() / var - 1) < 0.1
    zs, _ = psgld_draws(0.99)
    assert zs[..., 1].var() / 100.0 > 1.25


def test_sghmc_with_rmsprop_keeps_an_ill_scaled_gaussian():
    """The velocity rescaled with the mass (``sqrt(M' / M)``): both variances within 10 %."""
    sd = jnp.array([1.0, 10.0])

    def g(key, z):
        return -z / sd**2

    rms = sgld.RMSProp(alpha=0.999)
    state = sgld.sghmc_init(jax.random.key(11), sd, g, rms)
    zs = run_chains(lambda k, s: sgld.sghmc_step(k, s, g, 0.2, 1.0, rms), state, jax.random.key(13), chains=100,
                    steps=4000, burn=1000, coordinate=None)
    for j, var in enumerate((1.0, 100.0)):
        assert_mean_close(zs[..., j], 0.0, what=f"mean[{j}]")
        assert abs(zs[..., j].var() / var - 1) < 0.1


# --------------------------------------------------------------------------- divergence
def test_non_finite_step_is_discarded_and_flagged():
    def g(key, z):
        return jnp.where(z > 5.0, jnp.nan, -z)

    state = sgld.SGLDState(jnp.array([4.9]), jnp.array([100.0]), None)
    new, info = sgld.sgld_step(jax.random.key(0), state, g, 0.1)
    assert bool(info.diverging) and new.z[0] == state.z[0] and new.score[0] == state.score[0]
    hmc = sgld.SGHMCState(jnp.array([4.9]), jnp.array([50.0]), jnp.array([100.0]), None)
    new, info = sgld.sghmc_step(jax.random.key(0), hmc, g, 0.1, 1.0)
    assert bool(info.diverging) and new.z[0] == hmc.z[0] and new.velocity[0] == hmc.velocity[0]
    new, info = sgld.sgld_step(jax.random.key(0), state._replace(z=jnp.array([0.0]), score=jnp.array([0.0])), g, 0.1)
    assert not bool(info.diverging)


# --------------------------------------------------------------------------- kernels through MCMC
def gaussian_model(x, batch=B):
    mu = numpyro.sample("mu", dist.Normal(0.0, S0))
    with numpyro.plate("data", x.shape[0], subsample_size=batch):
        numpyro.sample("x", dist.Normal(mu, 1.0), obs=numpyro.subsample(x, event_dim=0))


def test_kernel_with_a_fixed_step_has_the_exact_law():
    """The kernel draws the plate's minibatch, scaled N/B by NumPyro: the same oracle."""
    mcmc = MCMC(SGLD(gaussian_model, step_size=H, adapt_step_size=False, with_replacement=False), num_warmup=200, num_samples=800,
                num_chains=20, chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(13), jnp.asarray(X), extra_fields=("step_size", "minibatch_size", "diverging"))
    draws = np.asarray(mcmc.get_samples(group_by_chain=True)["mu"])
    check_gaussian(draws, M, sgld_var(H, VAR_XI))
    stats = mcmc.get_extra_fields()
    assert np.all(stats["minibatch_size"] == B) and np.allclose(stats["step_size"], H) and not stats["diverging"].any()


def logistic_model(x, y, batch):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0], subsample_size=batch):
        xb, yb = numpyro.subsample(x, event_dim=1), numpyro.subsample(y, event_dim=0)
        numpyro.sample("y", dist.Bernoulli(logits=xb @ w + b), obs=yb)


def test_tuned_sghmc_with_control_variates_on_the_gaussian_posterior():
    """Adapted warmup (minibatch Metropolis, mass matrix, control-variate centre) then BAOAB
    with g_cv, which is exact for this model, and BAOAB is exact on a Gaussian: the
    posterior itself, within Monte Carlo error."""
    mcmc = MCMC(SGHMC(gaussian_model, control_variates=True), num_warmup=300, num_samples=600, num_chains=4,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(20), jnp.asarray(X), extra_fields=("diverging",))
    check_gaussian(np.asarray(mcmc.get_samples(group_by_chain=True)["mu"]), M, 1 / P)
    assert not mcmc.get_extra_fields()["diverging"].any()


@pytest.fixture(scope="module")
def logistic():
    """Data (N = 2000, d = 3 and an intercept) and NUTS's posterior on all of it."""
    n, d = 2000, 3
    x = jax.random.normal(jax.random.key(14), (n, d))
    y = (x @ jnp.array([1.0, -0.5, 0.25]) + 0.3 + jax.random.logistic(jax.random.key(15), (n,)) > 0).astype(float)
    nuts = MCMC(NUTS(logistic_model), num_warmup=200, num_samples=800, progress_bar=False)
    nuts.run(jax.random.key(16), x, y, None)
    return x, y, {k: np.asarray(v) for k, v in nuts.get_samples().items()}


def test_logistic_regression_matches_nuts(logistic):
    """SGLD-CV with B = N/20 against NUTS on all the data: every posterior mean within
    0.1 posterior sd, and every sd within 5 % (the tuned step inflates the variance by
    at most about 10 %), plus 5 Monte Carlo standard errors of the difference (ArviZ's,
    of both runs: about 0.05 sd for the means and 3-4 % for the sds here)."""
    x, y, ref = logistic
    n = x.shape[0]
    mcmc = MCMC(SGLD(logistic_model, control_variates=True), num_warmup=500, num_samples=1000, thinning=4,
                num_chains=4, chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(17), x, y, n // 20, extra_fields=("step_size", "minibatch_size", "diverging"))
    got = mcmc.get_samples(group_by_chain=True)  # scalar sites: (chain, draw)
    for k in ref:
        draws = np.asarray(got[k]).reshape(4, 250, -1)  # (chain, draw, coordinate)
        for j in range(draws.shape[-1]):
            a, r = draws[..., j], ref[k].reshape(1, -1, draws.shape[-1])[..., j]
            sd = r.std()
            se_mean = np.hypot(az.mcse(a, method="mean"), az.mcse(r, method="mean"))
            se_sd = np.hypot(az.mcse(a, method="sd"), az.mcse(r, method="sd"))
            assert abs(a.mean() - r.mean()) <= 0.1 * sd + N_SE * se_mean, (k, j, "mean")
            assert abs(a.std() - sd) <= 0.05 * sd + N_SE * se_sd, (k, j, "sd")
    stats = mcmc.get_extra_fields()
    assert not stats["diverging"].any() and np.all(stats["minibatch_size"] == n // 20)


def test_polynomial_schedule_from_the_tuned_step_and_arviz_sample_stats():
    mcmc = MCMC(SGLD(gaussian_model, schedule=("polynomial", 100.0, 0.55)), num_warmup=50, num_samples=20,
                progress_bar=False)
    mcmc.run(jax.random.key(19), jnp.asarray(X), extra_fields=SGLD.sample_stats)
    h = np.asarray(mcmc.get_extra_fields()["step_size"])
    np.testing.assert_allclose(h / h[0], (100.0 / (100.0 + np.arange(20))) ** 0.55, rtol=1e-4)
    stats = az.from_numpyro(mcmc)["sample_stats"]
    assert {"step_size", "minibatch_size", "diverging"} <= set(stats.data_vars)
    # a fixed step decays from the given step_size
    mcmc = MCMC(SGLD(gaussian_model, step_size=H, adapt_step_size=False, schedule=("polynomial", 10.0, 1.0)),
                num_warmup=5, num_samples=20, progress_bar=False)
    mcmc.run(jax.random.key(19), jnp.asarray(X), extra_fields=("step_size",))
    np.testing.assert_allclose(mcmc.get_extra_fields()["step_size"], H * 10.0 / (10.0 + np.arange(20)), rtol=1e-5)


# --------------------------------------------------------------------------- bad input
def test_errors():
    def no_plate(x):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def run(kernel, *args):
        MCMC(kernel, num_warmup=2, num_samples=2, progress_bar=False).run(jax.random.key(0), *args)

    with pytest.raises(ValueError, match="subsample plate"):
        run(SGLD(no_plate), jnp.asarray(X))
    def local_latent(x):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", x.shape[0], subsample_size=B):
            z = numpyro.sample("z", dist.Normal(mu, 1.0))
            numpyro.sample("x", dist.Normal(z, 1.0), obs=numpyro.subsample(x, event_dim=0))

    with pytest.raises(ValueError, match="inside the subsample plate"):
        run(SGLD(local_latent), jnp.asarray(X))
    with pytest.raises(ValueError, match="larger than its size"):
        run(SGHMC(gaussian_model), jnp.asarray(X), N + 1)
    for bad in (0.0, -1e-3, float("nan")):
        with pytest.raises(ValueError, match="step_size"):
            SGLD(gaussian_model, step_size=bad)
    with pytest.raises(ValueError, match="preconditioner"):
        SGLD(gaussian_model, preconditioner="adam")
    with pytest.raises(ValueError, match="schedule"):
        SGLD(gaussian_model, schedule=("exponential", 1.0))
    with pytest.raises(ValueError, match="friction"):
        SGHMC(gaussian_model, friction=0.0)
    with pytest.raises(ValueError, match="pick one"):
        SGLD(gaussian_model, preconditioner="rmsprop", adapt_mass_matrix=True)
    with pytest.raises(ValueError, match="needs `model`"):
        SGLD(None)


def test_the_start_moves_towards_the_mode():
    """``mode_steps`` minibatch Adam steps take a start 25 posterior sds (1.8) away to the mode;
    ``mode_steps=0`` leaves it where it was."""
    sd = 1 / np.sqrt(P)
    start = {"mu": jnp.array(M - 25 * sd)}
    for steps, expected, tol in [(1000, M, 5 * sd), (0, M - 25 * sd, 1e-6)]:
        state = SGLD(gaussian_model, mode_steps=steps).init(jax.random.key(0), 10, start, (jnp.asarray(X),), {})
        assert abs(float(state.z["mu"]) - expected) < tol, (steps, float(state.z["mu"]), expected)
