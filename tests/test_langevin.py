"""The pure step functions against exact oracles (theory.md section 1)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mc import assert_moments_close
from numpyro_wjs import langevin


def _run(step, state, key, num_steps):
    def body(s, k):
        s = step(k, s)
        return s, s.z

    keys = jax.random.split(key, num_steps)
    return jax.jit(lambda s: jax.lax.scan(body, s, keys))(state)[1]


def _vrun(step, init, key, num_chains, num_steps, burn=200):
    """Run chains with vmap over scan; return draws (chain, draw, d) after burn-in."""
    keys = jax.random.split(key, num_chains)
    out = jax.vmap(lambda k: _run(step, init, k, num_steps))(keys)
    return np.asarray(out)[:, burn:]


@pytest.mark.parametrize("h", [0.2, 0.6])
def test_ula_stationary_variance_is_the_known_biased_one(h):
    s2 = 1.5
    score = lambda x: -x / s2
    draws = _vrun(lambda k, st: langevin.ula_step(k, st, score, h)[0], langevin.ula_init(jnp.zeros(1), score),
                  jax.random.key(1), 32, 3000)
    biased = s2 / (1 - h / (2 * s2))
    assert_moments_close(draws, [0.0], [[biased]])
    # the bias is real: the unbiased variance is rejected
    assert abs(draws.var() - s2) > 0.5 * (biased - s2)


def test_preconditioned_ula_on_correlated_gaussian():
    cov = np.array([[1.0, 0.9], [0.9, 1.0]])
    prec = jnp.asarray(np.linalg.inv(cov))
    score = lambda x: -prec @ x
    m = langevin.metric(jnp.asarray(cov))
    h = 0.3
    draws = _vrun(lambda k, st: langevin.ula_step(k, st, score, h, m)[0], langevin.ula_init(jnp.zeros(2), score),
                  jax.random.key(2), 32, 3000)
    # with C = cov: x' = (1 - h) x + sqrt(2h) S eps, stationary covariance cov / (1 - h/2)
    assert_moments_close(draws, [0.0, 0.0], cov / (1 - h / 2))


METRICS = {
    "identity": None,
    "diagonal": jnp.array([0.5, 0.8]),
    "dense": jnp.array([[0.5, 0.2], [0.2, 0.8]]),  # correlated: L and S are not symmetric
}


@pytest.mark.parametrize("which", list(METRICS))
def test_baoab_position_marginal_exact_on_gaussian_at_large_step(which):
    cov = np.array([[1.0, 0.3], [0.3, 0.5]])
    prec = jnp.asarray(np.linalg.inv(cov))
    score = lambda x: -prec @ x
    m = None if METRICS[which] is None else langevin.metric(METRICS[which])
    h, gamma = 0.9, 1.0  # ULA at this step size would be far off
    init = langevin.underdamped_init(jnp.zeros(2), score, jax.random.key(0), m)
    draws = _vrun(lambda k, st: langevin.underdamped_step(k, st, score, h, gamma, m)[0], init,
                  jax.random.key(3), 32, 3000)
    assert_moments_close(draws, [0.0, 0.0], cov)


def test_one_baoab_step_is_the_documented_splitting():
    # B A O A B with the O step's noise rebuilt from the same key: a friction, a noise
    # scale or a half step that differs from the docstring changes the result.
    c = jnp.array([[0.5, 0.2], [0.2, 0.8]])
    m = langevin.metric(c)
    score = lambda x: -2.0 * x + jnp.sin(x)
    x0, v0 = jnp.array([0.3, -1.2]), jnp.array([0.7, 0.4])
    h, gamma = 0.4, 1.7
    key = jax.random.key(11)
    new_x, new_v, _ = langevin.baoab(key, x0, v0, score(x0), score, h, gamma, m)
    a = np.exp(-gamma * h)
    big_l = np.linalg.cholesky(np.linalg.inv(np.asarray(c)))  # L L^T = M = C^{-1}
    xi = np.asarray(langevin.normal_like(key, v0))
    v = np.asarray(v0) + 0.5 * h * np.asarray(score(x0))
    x = np.asarray(x0) + 0.5 * h * np.asarray(c) @ v
    v = a * v + np.sqrt(1 - a * a) * big_l @ xi
    x = x + 0.5 * h * np.asarray(c) @ v
    v = v + 0.5 * h * np.asarray(score(jnp.asarray(x)))
    np.testing.assert_allclose(new_x, x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_v, v, rtol=1e-5, atol=1e-6)


def test_mala_exact_with_dense_metric():
    cov = np.array([[1.0, -0.7], [-0.7, 2.0]])
    mean = np.array([1.0, -2.0])
    prec = jnp.asarray(np.linalg.inv(cov))
    logp = lambda x: -0.5 * (x - mean) @ prec @ (x - mean)
    m = langevin.metric(jnp.asarray(cov) * 0.8)

    def step(k, st):
        return langevin.mala_step(k, st, logp, 1.2, m)[0]

    draws = _vrun(step, langevin.mala_init(jnp.zeros(2), logp), jax.random.key(4), 32, 3000)
    assert_moments_close(draws, mean, cov)


def test_mala_info_and_rejection_of_nonfinite_proposals():
    # log p = -inf outside the unit interval: proposals there are rejected and flagged
    logp = lambda x: jnp.where(jnp.all(jnp.abs(x) < 1), -0.5 * jnp.sum(x**2), -jnp.inf)
    state = langevin.mala_init(jnp.zeros(1), logp)
    new, info = langevin.mala_step(jax.random.key(0), state, logp, 100.0)
    assert not bool(info.is_accepted) and bool(info.diverging)
    assert float(info.acceptance_rate) == 0.0
    np.testing.assert_array_equal(new.z, state.z)


def test_steps_work_on_image_shaped_positions():
    score = lambda x: -x
    x = jnp.zeros((28, 28, 1))
    st, _ = langevin.underdamped_step(jax.random.key(0), langevin.underdamped_init(x, score, jax.random.key(1)),
                                      score, 0.1, 1.0)
    assert st.z.shape == (28, 28, 1)
    st, _ = langevin.ula_step(jax.random.key(0), langevin.ula_init(x, score), score, 0.1)
    assert st.z.shape == (28, 28, 1)
    x, _, _ = langevin.baoab(jax.random.key(0), x, x, x, score, 0.1, 1.0)
    assert x.shape == (28, 28, 1)


def test_metric_rejects_bad_shapes():
    with pytest.raises(ValueError, match="inverse_mass_matrix"):
        langevin.metric(jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="inverse_mass_matrix"):
        langevin.metric(jnp.ones((2, 2, 2)))


def test_mala_energy_error_is_minus_the_exact_hastings_log_ratio():
    # from a state carrying -log p (as the kernels do): the step's energy error is
    # -[log p(x') - log p(x) + log q(x | x') - log q(x' | x)], q = N(x + h C grad log p(x), 2 h C)
    c = jnp.array([[0.6, 0.1], [0.1, 0.3]])
    logp = lambda x: -0.5 * jnp.sum(x**2 * jnp.array([1.0, 3.0])) - 2.0 * jnp.sin(x[0])  # noqa: E731
    h = 0.4
    state = langevin.mala_init(jnp.array([0.7, -0.4]), logp)
    new, info = langevin.mala_step(jax.random.key(5), state, logp, h, langevin.metric(c))
    prop = langevin.langevin_proposal(jax.random.split(jax.random.key(5))[0], state.z, state.score, h,
                                      langevin.metric(c))
    prec = np.linalg.inv(np.asarray(c, np.float64))

    def log_q(to, frm):
        d = np.asarray(to - frm - h * c @ jax.grad(logp)(frm), np.float64)
        return -d @ prec @ d / (4 * h)

    exact = float(logp(prop) - logp(state.z)) + log_q(state.z, prop) - log_q(prop, state.z)
    np.testing.assert_allclose(float(info.energy_error), -exact, rtol=1e-4, atol=1e-5)
    assert float(info.acceptance_rate) == pytest.approx(min(1.0, np.exp(exact)), rel=1e-4)
