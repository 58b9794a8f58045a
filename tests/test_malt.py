"""MALT (Metropolis-adjusted Langevin trajectories): the pure core and the NumPyro kernel.

Exactness is checked against known moments at Monte Carlo tolerance (``mc.py``), at
step sizes where the unadjusted BAOAB chain is visibly biased; the trajectory against
NumPyro's leapfrog integrator at friction 0; the energy error's order in ``h``;
divergences; the kernel through ``numpyro.infer.MCMC`` against NUTS. NumPyro's ported
kernel tests run MALT on its defaults in ``test_numpyro_suite``.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
import test_gibbs_blocks
import test_ula_defaults
from mc import N_SE, assert_mean_close, assert_moments_close, mcse
from numpy.testing import assert_allclose
from numpyro.infer import MCMC, NUTS
from numpyro.infer.hmc_util import euclidean_kinetic_energy, velocity_verlet

from numpyro_wjs.core import langevin, malt
from numpyro_wjs.infer.malt import MALT


def _run_core(logdensity, d, step_size, num_steps, friction, metric=None, chains=4, draws=4000, seed=0):
    """``(positions (chains, draws, d), infos)`` of MALT chains started at 0."""
    state = malt.malt_init(jnp.zeros(d), logdensity)

    def body(s, key):
        s, info = malt.malt_step(key, s, logdensity, step_size, num_steps, friction, metric)
        return s, (s.z, info.acceptance_rate, info.diverging)

    keys = jax.random.split(jax.random.key(seed), (chains, draws))
    return jax.jit(jax.vmap(lambda k: jax.lax.scan(body, state, k)[1]))(keys)


def _by_coordinate(x):
    """(chains, draws, d) -> (chains * d, draws): independent coordinates as chains for MCSE."""
    x = np.asarray(x, np.float64)
    return x.transpose(0, 2, 1).reshape(-1, x.shape[1])


# --------------------------------------------------------------------------- exactness
def test_exact_on_anisotropic_gaussian_with_a_dense_metric():
    cov = np.array([[4.0, 1.2, 0.0], [1.2, 1.0, -0.3], [0.0, -0.3, 0.25]])
    prec = jnp.asarray(np.linalg.inv(cov), jnp.float32)
    mean = np.array([1.0, -2.0, 0.5])

    def logdensity(x):
        r = x - mean
        return -0.5 * r @ prec @ r

    # a metric that is neither the identity nor the covariance; a large step (acceptance ~0.6)
    m = langevin.metric(jnp.asarray(np.diag([2.0, 1.0, 0.5]), jnp.float32))
    x, acc, div = _run_core(logdensity, 3, 0.5, 6, 0.7, metric=m)
    assert 0.3 < float(acc.mean()) < 0.95
    assert not bool(div.any())
    assert_moments_close(x, mean, cov)


S2 = 0.49  # mixture 0.5 N(-1, S2) + 0.5 N(1, S2): E x^2 = 1 + S2


def _mixture(x):
    return jnp.sum(jnp.logaddexp(-0.5 * (x - 1) ** 2 / S2, -0.5 * (x + 1) ** 2 / S2))


def test_exact_on_a_mixture_where_unadjusted_baoab_is_biased():
    h, friction, d = 1.1, 0.5, 4
    x, _, _ = _run_core(_mixture, d, h, 4, friction)
    assert_mean_close(_by_coordinate(x**2), 1 + S2, what="MALT E[x^2]")
    assert_mean_close(_by_coordinate(x), 0.0, what="MALT E[x]")

    # the same OBABO dynamics unadjusted (BAOAB, UnderdampedLangevin's step) is biased here
    score = jax.grad(_mixture)
    start = langevin.underdamped_init(jnp.zeros(d), score, jax.random.key(1))

    def body(s, key):
        s, _ = langevin.underdamped_step(key, s, score, h, friction)
        return s, s.z

    keys = jax.random.split(jax.random.key(2), (4, 16000))
    y2 = _by_coordinate(jax.jit(jax.vmap(lambda k: jax.lax.scan(body, start, k)[1]))(keys) ** 2)
    bias = y2.mean() - (1 + S2)
    assert bias > 3 * N_SE * mcse(y2), (bias, mcse(y2))


# --------------------------------------------------------------------------- the trajectory
def _gaussian_logdensity(x):
    return -0.5 * jnp.sum(x**2 / jnp.array([1.0, 4.0, 0.25]))


def test_friction_zero_is_the_leapfrog_trajectory_of_hmc():
    imm = jnp.array([0.5, 2.0, 1.0])
    m = langevin.metric(imm)
    z0 = jnp.array([0.3, -1.0, 0.2])
    v0 = jnp.array([1.0, 0.5, -2.0])
    state = malt.malt_init(z0, _gaussian_logdensity)
    h, n = 0.2, 7
    end, v_end, delta = malt.malt_trajectory(jax.random.key(0), state, v0, _gaussian_logdensity, h, n, 0.0, m)

    init_fn, update_fn = velocity_verlet(lambda z: -_gaussian_logdensity(z), euclidean_kinetic_energy)
    s = init_fn(z0, v0)
    for _ in range(n):
        s = update_fn(h, imm, s)
    assert_allclose(end.z, s.z, rtol=1e-5, atol=1e-6)
    assert_allclose(v_end, s.r, rtol=1e-5, atol=1e-6)
    assert_allclose(end.potential_energy, s.potential_energy, rtol=1e-5)
    energy = s.potential_energy + euclidean_kinetic_energy(imm, s.r)
    assert_allclose(delta, energy - (state.potential_energy + euclidean_kinetic_energy(imm, v0)), atol=1e-5)


def test_one_step_energy_error_matches_baoab_log_ratio():
    # theory.md section 9: the energy error of one BAB step is minus BAOAB's log ratio (friction 0)
    state = malt.malt_init(jnp.array([0.3, -1.0, 0.2]), _gaussian_logdensity)
    v = jnp.array([1.0, 0.5, -2.0])
    _, _, error = malt.bab_step(state, v, _gaussian_logdensity, 0.3)
    old = (state.z, v, state.score)
    new = langevin.baoab(jax.random.key(0), *old, jax.grad(_gaussian_logdensity), 0.3, 0.0)
    dlogp = _gaussian_logdensity(new[0]) - _gaussian_logdensity(state.z)
    assert_allclose(error, -langevin.baoab_log_ratio(old, new, 0.3, None, dlogp), rtol=1e-4, atol=1e-6)


def _anharmonic(x):
    return -jnp.sum(0.5 * x**2 + 0.1 * x**4)


def test_energy_error_order_in_the_step_size():
    def slope(errors, hs):  # least-squares slope of log |error| against log h
        return float(np.polyfit(np.log(hs), np.log(np.abs(errors)), 1)[0])

    with jax.enable_x64(True):
        state = malt.malt_init(jnp.array([0.5, -0.4]), _anharmonic)
        v = jnp.array([0.7, 0.9])
        hs = np.array([0.04, 0.02, 0.01])
        one = [float(malt.bab_step(state, v, _anharmonic, h)[2]) for h in hs]
        assert 2.9 < slope(one, hs) < 3.3, one  # local error O(h^3)

        @jax.jit
        def mean_error(h, n, friction):
            keys = jax.random.split(jax.random.key(3), 400)
            run = jax.vmap(lambda k: malt.malt_trajectory(k, state, v, _anharmonic, h, n, friction)[2])
            return jnp.mean(jnp.abs(run(keys)))

        hs = np.array([0.1, 0.05, 0.025])
        for friction in (0.0, 1.0):  # fixed time 1: global error O(h^2), with or without friction
            errors = [float(mean_error(h, round(1 / h), friction)) for h in hs]
            assert 1.8 < slope(errors, hs) < 2.3, (friction, errors)


# --------------------------------------------------------------------------- divergence
def _cut_normal(x):
    """N(0, 1) restricted to x < 1, with a NaN potential beyond."""
    return jnp.sum(0.5 * x**2 + jnp.where(x > 1.0, jnp.nan, 0.0))


def test_divergent_trajectory_is_flagged_and_rejected():
    state = malt.malt_init(jnp.zeros(1), lambda x: -_cut_normal(x))
    keys = jax.random.split(jax.random.key(0), 200)
    new, info = jax.vmap(lambda k: malt.malt_step(k, state, lambda x: -_cut_normal(x), 0.5, 8, 0.5))(keys)
    assert bool(info.diverging.any()) and not bool(info.diverging.all())
    assert not bool(jnp.any(info.is_accepted & info.diverging))
    assert_allclose(new.z[info.diverging], 0.0)
    assert bool(jnp.all(jnp.isfinite(new.z)))

    mcmc = MCMC(MALT(potential_fn=_cut_normal), num_warmup=100, num_samples=300, progress_bar=False)
    mcmc.run(jax.random.key(1), init_params=jnp.zeros(1), extra_fields=("diverging",))
    z = np.asarray(mcmc.get_samples())
    assert np.all(np.isfinite(z)) and np.all(z <= 1.0)
    assert mcmc.get_extra_fields()["diverging"].any()


# --------------------------------------------------------------------------- the kernel
def test_eight_schools_matches_nuts():
    fields = ("num_steps", "trajectory_length", "energy_error", "accept_prob", "diverging")
    runs = {}
    model = test_ula_defaults.eight_schools  # non-centred
    for name, kernel in (("MALT", MALT(model)), ("NUTS", NUTS(model))):
        mcmc = MCMC(kernel, num_warmup=300, num_samples=600, num_chains=4, chain_method="vectorized",
                    progress_bar=False)
        mcmc.run(jax.random.key(0), extra_fields=fields if name == "MALT" else ())
        runs[name] = mcmc
    stats = runs["MALT"].get_extra_fields(group_by_chain=True)
    assert stats["num_steps"].shape == (4, 600) and np.all(stats["num_steps"] >= 1)
    assert np.all(np.isfinite(stats["energy_error"]) | stats["diverging"])
    assert 0.6 < float(stats["accept_prob"].mean()) < 0.99
    for site, f in (("mu", lambda a: a), ("tau", np.log), ("theta_t", lambda a: a[..., 0])):
        a, b = (f(np.asarray(runs[k].get_samples(group_by_chain=True)[site], np.float64)) for k in ("MALT", "NUTS"))
        se = math.hypot(mcse(a), mcse(b))
        assert abs(a.mean() - b.mean()) <= N_SE * se, (site, a.mean(), b.mean(), se)


def test_vectorized_chains_equal_sequential_chains():
    # With the step and length fixed the draws agree to roundoff. (Adapted, they agree for a
    # few dozen draws and then part: a roundoff-sized change of h or T flips the jittered
    # ceil(2uT/h), and the chains draw different numbers of steps from then on.)
    def potential(x):
        return 0.5 * jnp.sum(x**2 / jnp.array([1.0, 9.0]))

    draws = {}
    for method in ("vectorized", "sequential"):
        mcmc = MCMC(MALT(potential_fn=potential, num_steps=5, adapt_step_size=False, adapt_mass_matrix=False),
                    num_warmup=100, num_samples=100, num_chains=3, chain_method=method, progress_bar=False)
        mcmc.run(jax.random.key(0), init_params=jnp.ones((3, 2)), extra_fields=("num_steps",))
        draws[method] = np.asarray(mcmc.get_samples(group_by_chain=True))
        assert mcmc.get_extra_fields(group_by_chain=True)["num_steps"].shape == (3, 100)
    assert draws["vectorized"].shape == (3, 100, 2)
    assert not np.allclose(draws["vectorized"][0], draws["vectorized"][1])
    assert_allclose(draws["vectorized"], draws["sequential"], rtol=1e-4, atol=1e-4)


def test_fixed_num_steps_states_its_cost_and_adaptive_reads_num_steps():
    assert MALT(potential_fn=lambda x: 0.5 * jnp.sum(x**2), num_steps=5).evaluations_per_draw == 5
    assert MALT(potential_fn=lambda x: 0.5 * jnp.sum(x**2)).evaluations_per_draw is None


@pytest.mark.parametrize("kwargs, match", [
    ({"step_size": 0.0}, "step_size"),
    ({"step_size": -1.0}, "step_size"),
    ({"friction": 0.0}, "friction"),
    ({"friction": -0.5}, "friction"),
    ({"num_steps": 0}, "num_steps"),
    ({"trajectory_length": 0.0}, "trajectory_length"),
    ({"max_num_steps": 0}, "max_num_steps"),
    ({"num_steps": 3, "trajectory_length": 1.0}, "not both"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MALT(potential_fn=lambda x: 0.5 * jnp.sum(x**2), **kwargs)


def test_needs_a_log_density():
    with pytest.raises(ValueError):
        MALT(score_fn=lambda x: -x)


# NumPyro's ported kernel tests run MALT as one of tests/test_numpyro_suite.py's KERNELS.


def test_structured_mass_matrix():
    def model():
        a = numpyro.sample("a", dist.Normal(0.0, 1.0))
        numpyro.sample("b", dist.Normal(a, 0.5))
        numpyro.sample("c", dist.Normal(0.0, 3.0))

    mcmc = MCMC(MALT(model, dense_mass=[("a", "b")]), num_warmup=300, num_samples=200, progress_bar=False)
    mcmc.run(jax.random.key(0))
    imm = mcmc.last_state.adapt_state.inverse_mass_matrix
    assert set(imm) == {("a", "b"), ("c",)} and imm[("a", "b")].shape == (2, 2)
    assert all(np.all(np.isfinite(np.asarray(v))) for v in mcmc.get_samples().values())


def test_gibbs_block_plumbing():
    # NumPyro's test_init_params_and_gated_refresh (as ported in test_gibbs_blocks) with MALT
    test_gibbs_blocks.test_init_params_and_gated_refresh(MALT)
