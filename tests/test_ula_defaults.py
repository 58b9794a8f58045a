"""ULA on its defaults, in place of NUTS, on two models a NumPyro user writes first.

A non-centred eight schools and a 4-coefficient logistic regression (correlated
features, intercept), each run as a NUTS user would: 4 vectorized chains of 1,000
warmup and 2,000 draws. ULA must mix (bulk ESS > 300 for every site, rank-normalized
split R-hat < 1.01) and agree with NUTS, run the same way, within Monte Carlo error:
every posterior mean and sd within ``N_SE`` combined ArviZ standard errors
(``mcse_mean``, ``mcse_sd`` of both runs), so ULA's step-size bias must stay below the
Monte Carlo error of a run of this size.
"""

import arviz as az
import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC, NUTS

from mc import N_SE
from numpyro_wjs import ULA

Y8 = np.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
S8 = np.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def eight_schools():
    mu = numpyro.sample("mu", dist.Normal(0, 5))
    tau = numpyro.sample("tau", dist.HalfCauchy(5))
    with numpyro.plate("J", 8):
        theta = numpyro.sample("theta_t", dist.Normal(0, 1))
        numpyro.sample("obs", dist.Normal(mu + tau * theta, S8), obs=Y8)


def _logistic_data():
    rng = np.random.default_rng(0)
    corr = np.array([[1, 0.5, 0.3, 0], [0.5, 1, 0.2, 0], [0.3, 0.2, 1, 0], [0, 0, 0, 1.0]])
    x = rng.normal(size=(200, 4)) @ np.linalg.cholesky(corr).T
    logits = x @ np.array([1.0, -1.5, 0.5, 2.0]) + 0.3
    return x, (rng.uniform(size=200) < 1 / (1 + np.exp(-logits))).astype(float)


X, YLR = _logistic_data()


def logistic_regression():
    w = numpyro.sample("w", dist.Normal(0, 1).expand([4]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0, 1))
    numpyro.sample("y", dist.Bernoulli(logits=X @ w + b), obs=YLR)


def _summary(kernel, seed):
    mcmc = MCMC(kernel, num_warmup=1000, num_samples=2000, num_chains=4, chain_method="vectorized",
                progress_bar=False)
    mcmc.run(jax.random.key(seed))
    return az.summary(az.from_numpyro(mcmc))


@pytest.mark.parametrize("model", [eight_schools, logistic_regression], ids=["eight_schools", "logistic"])
def test_ula_defaults_mix_and_agree_with_nuts(model):
    ula, nuts = _summary(ULA(model), 0), _summary(NUTS(model), 1)
    assert (ula.ess_bulk > 300).all(), f"ULA bulk ESS below 300:\n{ula.ess_bulk}"
    assert (ula.r_hat < 1.01).all(), f"ULA r_hat not below 1.01:\n{ula.r_hat}"
    for stat, se in (("mean", "mcse_mean"), ("sd", "mcse_sd")):
        z = (ula[stat] - nuts[stat]) / np.hypot(ula[se], nuts[se])
        assert (z.abs() <= N_SE).all(), f"ULA {stat} differs from NUTS by more than {N_SE} MCSE:\n{z}"
