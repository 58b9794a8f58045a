"""Walk-jump from a NumPyro model alone (Gibbs on (z, y)) against quadrature."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC, NUTS

from mc import assert_mean_close, assert_moments_close
from numpyro_wjs import GibbsWalkJump, WalkJump
from numpyro_wjs.core import gibbs, langevin

OBS_1D = np.array([2.9, 2.1])


def sign_model():
    """theta enters the likelihood as theta^2: two modes at +-1.6 with unequal mass."""
    theta = numpyro.sample("theta", dist.Normal(0.5, 2.0))
    numpyro.sample("obs", dist.Normal(theta**2, 1.0), obs=jnp.asarray(OBS_1D))


def _quadrature_1d():
    g = np.linspace(-8, 8, 400_001)
    lp = -0.5 * ((g - 0.5) / 2) ** 2 - 0.5 * np.sum((OBS_1D[:, None] - g**2) ** 2, 0)
    w = np.exp(lp - lp.max())
    w /= w.sum()
    return g, w


DATA_2D = np.array([-2.6, -2.2, -2.9, 2.4, 2.8, 2.2, 2.6, 3.0, 2.3, 2.7])
W_2D = np.array([0.3, 0.7])


def label_switching_model():
    """Two-component mixture with known weights 0.3 / 0.7: mu and its swap are both modes."""
    mu = numpyro.sample("mu", dist.Normal(0.0, 3.0).expand([2]).to_event(1))
    mix = dist.MixtureSameFamily(dist.Categorical(probs=jnp.asarray(W_2D)), dist.Normal(mu, 1.0))
    numpyro.sample("obs", mix, obs=jnp.asarray(DATA_2D))


def _quadrature_2d():
    g = np.linspace(-7, 7, 701)
    m1, m2 = np.meshgrid(g, g, indexing="ij")
    d = DATA_2D[:, None, None]
    lik = np.sum(np.log(W_2D[0] * np.exp(-0.5 * (d - m1) ** 2) + W_2D[1] * np.exp(-0.5 * (d - m2) ** 2)), 0)
    lp = lik - 0.5 * (m1**2 + m2**2) / 9
    w = np.exp(lp - lp.max())
    return m1, m2, w / w.sum()


def _run(kernel, num_chains=4, num_warmup=500, num_samples=3000, seed=0, **kw):
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(seed), extra_fields=("hop_accept_prob", "accept_prob", "sigma_base"), **kw)
    return mcmc


def test_sign_ambiguity_mode_masses_and_moments_match_quadrature():
    g, w = _quadrature_1d()
    mcmc = _run(GibbsWalkJump(sign_model))
    theta = np.asarray(mcmc.get_samples(group_by_chain=True)["theta"])
    assert_mean_close((theta > 0).astype(float), w[g > 0].sum(), what="P(theta > 0)")
    assert_mean_close(theta, (w * g).sum(), what="E[theta]")
    assert_mean_close(theta**2, (w * g * g).sum(), what="E[theta^2]")
    assert np.all(np.isfinite(theta))


def test_label_switching_mode_masses_match_quadrature_where_nuts_is_trapped():
    m1, m2, w = _quadrature_2d()
    exact = w[m1 < m2].sum()
    mcmc = _run(GibbsWalkJump(label_switching_model), num_samples=3000)
    mu = np.asarray(mcmc.get_samples(group_by_chain=True)["mu"])
    assert_mean_close((mu[..., 0] < mu[..., 1]).astype(float), exact, what="P(mu1 < mu2)")
    assert_mean_close(mu[..., 0], (w * m1).sum(), what="E[mu1]")
    # most chains visit both labelings (the minor one holds about 10% of the mass)
    per_chain = (mu[..., 0] < mu[..., 1]).mean(1)
    assert np.sum((per_chain > 0) & (per_chain < 1)) >= 2, per_chain
    nuts = MCMC(NUTS(label_switching_model), num_warmup=300, num_samples=500, num_chains=4,
                chain_method="vectorized", progress_bar=False)
    nuts.run(jax.random.key(0))
    mu_n = np.asarray(nuts.get_samples(group_by_chain=True)["mu"])
    assert np.all(np.isin((mu_n[..., 0] < mu_n[..., 1]).mean(1), [0.0, 1.0])), "NUTS chains should stay in one labeling"


def test_unimodal_constrained_model_agrees_with_the_exact_answer_and_nuts():
    def model():
        rate = numpyro.sample("rate", dist.Gamma(3.0, 2.0))
        numpyro.deterministic("twice", 2 * rate)

    mcmc = _run(GibbsWalkJump(model, sigma=0.5))
    s = mcmc.get_samples(group_by_chain=True)
    rate = np.asarray(s["rate"])
    assert rate.min() > 0
    assert_mean_close(rate, 1.5, what="E[rate]")  # Gamma(3, 2): mean 1.5, variance 0.75
    assert_mean_close((rate - 1.5) ** 2, 0.75, what="Var[rate]")
    np.testing.assert_allclose(s["twice"], 2 * s["rate"], rtol=1e-6)
    nuts = MCMC(NUTS(model), num_warmup=300, num_samples=2000, num_chains=2, progress_bar=False,
                chain_method="vectorized")
    nuts.run(jax.random.key(1))
    assert_mean_close(np.asarray(nuts.get_samples(group_by_chain=True)["rate"]), 1.5, what="NUTS E[rate]")


def test_potential_fn_with_a_sigma_range():
    cov = np.array([[1.0, 0.6], [0.6, 2.0]])
    prec = jnp.asarray(np.linalg.inv(cov))
    kernel = GibbsWalkJump(potential_fn=lambda z: 0.5 * z @ prec @ z, sigma=(0.3, 3.0))
    mcmc = _run(kernel, init_params=jnp.zeros((4, 2)))
    assert_moments_close(np.asarray(mcmc.get_samples(group_by_chain=True)), [0.0, 0.0], cov)
    sig = np.asarray(mcmc.get_extra_fields()["sigma_base"])
    assert np.allclose(sig, 0.3)  # a given range is not adapted


@pytest.mark.parametrize("num_mala_steps", [0, 2])
def test_denoise_step_leaves_the_conditional_invariant(num_mala_steps):
    # p(z) = N(0, 1): p(z | y) = N(y / (1 + sigma^2), sigma^2 / (1 + sigma^2)).
    # With no MALA steps this is the hop alone, an independence sampler with proposal
    # N(y, sigma^2) and acceptance min(1, p(z') / p(z)): the Gaussian terms N(y; z, sigma^2)
    # cancel against the proposal, and counting them moves the conditional mean from
    # 0.872 to 1.04 (with MALA steps after each hop the same bias is smaller, 0.89).
    sigma, y = 0.7, jnp.array([1.3])
    logp = lambda z: -0.5 * jnp.sum(z**2)

    def body(point, key):
        point, _ = gibbs.denoise_step(key, point, y, logp, sigma, 0.2, num_mala_steps)
        return point, point.z

    z0 = jnp.array([0.0])
    point = langevin.LangevinState(z0, -logp(z0), -z0)
    keys = jax.random.split(jax.random.key(0), 4 * 5000).reshape(4, 5000)
    zs = jax.vmap(lambda k: jax.lax.scan(body, point, k)[1])(keys)
    var = sigma**2 / (1 + sigma**2)
    assert_moments_close(np.asarray(zs)[:, 100:], [float(y[0]) / (1 + sigma**2)], [[var]])


def test_noise_step_draws_y_around_z_with_variance_sigma_squared():
    sigma, n = 0.7, 200_000
    z = jnp.full((n,), 2.0)
    y = np.asarray(gibbs.noise_step(jax.random.key(2), z, sigma), np.float64)
    assert_moments_close(y.reshape(1, n, 1), [2.0], [[sigma**2]])


def test_gibbs_sweep_targets_p():
    # A full sweep (walk y ~ N(z, sigma^2), then the jump) on a two-mode p(z):
    # 0.3 N(-1.5, 0.5^2) + 0.7 N(1.5, 0.5^2) has mean 0.6 and second moment 2.5.
    # sigma != 1, so that a walk with unit noise cannot pass.
    sigma = 1.3
    logp = lambda z: jax.scipy.special.logsumexp(
        jnp.log(jnp.array([0.3, 0.7])) - 2.0 * (z[0] - jnp.array([-1.5, 1.5])) ** 2)

    def body(point, key):
        k_walk, k_jump = jax.random.split(key)
        y = gibbs.noise_step(k_walk, point.z, sigma)
        point, _ = gibbs.denoise_step(k_jump, point, y, logp, sigma, 0.1, 2)
        return point, point.z[0]

    z0 = jnp.array([0.0])
    point = langevin.LangevinState(z0, -logp(z0), jax.grad(logp)(z0))
    keys = jax.random.split(jax.random.key(1), 4 * 5000).reshape(4, 5000)
    zs = np.asarray(jax.vmap(lambda k: jax.lax.scan(body, point, k)[1])(keys))[:, 100:]
    assert_mean_close(zs, 0.6, what="E[z]")
    assert_mean_close(zs**2, 2.5, what="E[z^2]")


def test_sigma_adaptation_reaches_the_target_hop_acceptance():
    # A float sigma with adapt_sigma=True: warmup tunes it and sampling uses it alone, so the
    # sampling hops are accepted at the target rate (dual averaging ends within a few
    # hundredths of it, as for the step sizes). Both a larger and a smaller start converge.
    cov = np.array([[1.0, 0.6], [0.6, 2.0]])
    prec = jnp.asarray(np.linalg.inv(cov))
    for sigma0 in (0.2, 3.0):
        kernel = GibbsWalkJump(potential_fn=lambda z: 0.5 * z @ prec @ z, sigma=sigma0, adapt_sigma=True,
                          target_hop_accept_prob=0.3)
        mcmc = _run(kernel, num_samples=1000, init_params=jnp.zeros((4, 2)))
        hop = np.asarray(mcmc.get_extra_fields()["hop_accept_prob"])
        assert abs(hop.mean() - 0.3) < 0.05, (sigma0, hop.mean())
        assert_moments_close(np.asarray(mcmc.get_samples(group_by_chain=True)), [0.0, 0.0], cov)


def test_bad_model_walkjump_arguments():
    # one class per algorithm: the other algorithm's arguments are refused
    with pytest.raises(TypeError, match="model"):
        WalkJump(lambda y: y, 1.0, model=sign_model)
    with pytest.raises(TypeError, match="num_mala_steps"):
        WalkJump(lambda y: y, 1.0, num_mala_steps=3)
    with pytest.raises(TypeError, match="jump_every"):
        GibbsWalkJump(sign_model, jump_every=5)
    with pytest.raises(TypeError, match="num_measurements"):
        GibbsWalkJump(sign_model, num_measurements=4, mode="sequential")
    with pytest.raises(ValueError, match="exactly one"):
        GibbsWalkJump(sign_model, potential_fn=lambda z: z)
    with pytest.raises(ValueError, match="sigma"):
        GibbsWalkJump(sign_model, sigma=-1.0)
    with pytest.raises(ValueError, match="lo <= hi"):
        GibbsWalkJump(sign_model, sigma=(2.0, 1.0))
    with pytest.raises(ValueError, match="num_mala_steps"):
        GibbsWalkJump(sign_model, num_mala_steps=0)
    with pytest.raises(ValueError, match="sigma"):
        WalkJump(lambda y: y)
    with pytest.raises(ValueError, match="init_params"):
        _run(GibbsWalkJump(potential_fn=lambda z: jnp.sum(z**2)), num_chains=1)
