"""Step-size control, divergence and the dimension-free walk: the kernels' defaults."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer import MCMC

from mc import assert_mean_close
from numpyro_wjs import ULA, UnderdampedLangevin, WalkJump, langevin
from numpyro_wjs.diagnostics.comparison import walk_jump_sigma
from numpyro_wjs.diagnostics.modes import mode_hopping
from numpyro_wjs.targets import GaussianMixture


def _run(kernel, init, num_warmup=500, num_samples=2000, num_chains=4, seed=0, fields=()):
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(seed), init_params=init, extra_fields=("diverging", "adapt_state.step_size", *fields))
    return mcmc


# ----------------------------------------------------------------- step-size control on the defaults
@pytest.mark.parametrize("source", ["score", "potential"])
def test_ula_default_step_is_tuned_and_its_bias_is_the_known_one(source):
    # N(0, s2): the computed MH acceptance of a ULA step is 0.997 at h = 0.05 s2 and 0.98 at
    # h = 0.2 s2 (1-D), so the default target 0.99 puts h / s2 between them; the draws then
    # have ULA's exact stationary variance s2 / (1 - h / (2 s2)) at the tuned h. With the
    # adapted mass matrix C the step is h C: each chain has its own, so the draws of chain c
    # are compared, as x^2 / (its stationary variance), with 1.
    s2 = 4.0
    kw = {"score_fn": lambda x: -x / s2} if source == "score" else {"potential_fn": lambda x: 0.5 * jnp.sum(x**2) / s2}
    mcmc = _run(ULA(**kw), jnp.zeros((8, 1)), num_samples=400, num_chains=8,
                fields=("adapt_state.inverse_mass_matrix",))
    fields = mcmc.get_extra_fields(group_by_chain=True)
    h = np.asarray(fields["adapt_state.step_size"])[:, -1] * np.asarray(fields["adapt_state.inverse_mass_matrix"])[:, -1, 0]
    assert np.all((0.05 * s2 < h) & (h < 0.2 * s2)), h
    x = np.asarray(mcmc.get_samples(group_by_chain=True))[..., 0]
    assert_mean_close(x**2 / (s2 / (1 - h / (2 * s2)))[:, None], 1.0, what="ULA variance / its value at the tuned step")
    assert not np.asarray(mcmc.get_extra_fields()["diverging"]).any()


def test_underdamped_default_step_is_tuned_below_the_stability_bound():
    # BAOAB on N(0, s2) is exact at any stable step (h < 2 s) and its energy error grows with
    # h: dual averaging to 0.99 must land strictly inside (0, 2 s), and the draws are exact.
    s = 2.0
    mcmc = _run(UnderdampedLangevin(score_fn=lambda x: -x / s**2), jnp.zeros((8, 1)), num_samples=4000,
                num_chains=8, fields=("accept_prob",))
    h = float(mcmc.get_extra_fields()["adapt_state.step_size"][-1])
    assert 0.3 * s < h < 2 * s
    x = np.asarray(mcmc.get_samples(group_by_chain=True))[..., 0]
    assert_mean_close(x**2, s**2, what="BAOAB variance")
    acc = np.asarray(mcmc.get_extra_fields()["accept_prob"])
    assert 0.85 < acc.mean() < 1.0


def test_fixed_step_is_kept_without_adaptation():
    mcmc = _run(ULA(score_fn=lambda x: -x, step_size=0.3, adapt_step_size=False), jnp.zeros((2, 1)),
                num_warmup=100, num_samples=10, num_chains=2)
    np.testing.assert_allclose(np.asarray(mcmc.get_extra_fields()["adapt_state.step_size"]), 0.3)


# ----------------------------------------------------------------- divergence means energy error
@pytest.mark.parametrize("kernel", [
    UnderdampedLangevin(score_fn=lambda z: -z, step_size=2.5),  # BAOAB unstable from h = 2
    ULA(score_fn=lambda z: -z, step_size=3.0),  # ULA unstable from h = 2
], ids=["underdamped", "ula"])
def test_blow_ups_are_flagged_in_the_first_steps_and_discarded(kernel):
    # unstable on N(0, 1): |x| grows geometrically. The energy error of a step reaches
    # MAX_LOG_ACCEPT_DROP = 1000 once |x| is a few tens, within about ten steps; such steps
    # are discarded, so the draws stay where the chain left the typical set.
    mcmc = _run(kernel, jnp.ones((2, 1)), num_warmup=0, num_samples=50, num_chains=2)
    div = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["diverging"])
    x = np.asarray(mcmc.get_samples(group_by_chain=True))
    for c in range(2):
        assert div[c].any() and np.argmax(div[c]) < 15
    assert np.all(np.isfinite(x)) and np.abs(x).max() < 100


def test_log_ratio_helpers_match_the_exact_energy_error_on_a_gaussian():
    # p = N(0, C) with a dense metric C: the trapezoid rule is exact, so the estimated
    # log ratios equal the ones computed from the exact log density.
    cov = jnp.array([[2.0, 0.6], [0.6, 0.5]])
    prec = jnp.linalg.inv(cov)
    logp = lambda x: -0.5 * x @ prec @ x
    score = lambda x: -prec @ x
    m = langevin.metric(cov)
    x = jnp.array([0.8, -0.4])
    new, _ = langevin.ula_step(jax.random.key(0), langevin.ula_init(x, score), score, 0.3, m)
    exact = langevin.langevin_log_ratio(x, score(x), new.z, new.score, logp(new.z) - logp(x), 0.3, m)
    est = langevin.langevin_log_ratio(x, score(x), new.z, new.score,
                                      langevin.trapezoid_dlogp(x, score(x), new.z, new.score), 0.3, m)
    np.testing.assert_allclose(float(est), float(exact), rtol=1e-5, atol=1e-6)
    init = langevin.underdamped_init(x, score, jax.random.key(1), m)
    old = (init.z, init.velocity, init.score)
    new = langevin.baoab(jax.random.key(2), *old, score, 0.7, 1.0, m)
    # kinetic energy v^T C v / 2 for mass M = C^{-1}, evaluated directly
    kin = lambda v: 0.5 * v @ cov @ v
    (_, v, g), (x_new, v_new, g_new) = old, new
    v_a = v + 0.35 * g
    v_b = v_new - 0.35 * g_new
    energy_error = -(logp(x_new) - logp(x)) + kin(v_a) - kin(v) + kin(v_new) - kin(v_b)
    np.testing.assert_allclose(float(langevin.baoab_log_ratio(old, new, 0.7, m)), float(-energy_error),
                               rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------- a chain never freezes silently
_GM = GaussianMixture([0.5, 0.5], [[-3.0], [3.0]], [0.5, 0.5])
_NAN_DENOISER = lambda y: jnp.where(jnp.abs(y) > 7, jnp.nan, _GM.denoiser(2.0)(y))  # noqa: E731


def test_nan_denoiser_default_walk_moves_and_flags_divergence():
    mcmc = _run(WalkJump(_NAN_DENOISER, 2.0), jnp.zeros((1, 1)), num_warmup=100, num_samples=2000, num_chains=1)
    x = np.asarray(mcmc.get_samples()["x"])
    assert np.all(np.isfinite(x)) and len(np.unique(x)) > 1000
    assert np.asarray(mcmc.get_extra_fields()["diverging"]).any()


def test_collapsed_warmup_step_warns():
    with pytest.warns(RuntimeWarning, match="shrank the step size"):
        mcmc = _run(WalkJump(_NAN_DENOISER, 2.0, adapt_step_size=True), jnp.zeros((1, 1)), num_warmup=100,
                    num_samples=20, num_chains=1)
    assert float(mcmc.get_extra_fields()["adapt_state.step_size"][-1]) < 2e-3


def test_healthy_warmup_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        _run(ULA(score_fn=lambda x: -x), jnp.zeros((2, 1)), num_warmup=200, num_samples=10, num_chains=2)


# ----------------------------------------------------------------- the walk does not slow with dimension
def test_default_walk_mixes_as_fast_in_64_dimensions_as_in_2():
    # 8-mode ring plus independent Gaussian coordinates: with the default fixed step sigma the
    # walk's ring coordinates move as in 2-D, so the switch rates agree within Monte Carlo
    # error (per-chain counts: their spread gives the standard error of the difference).
    rates = {}
    for d in (2, 64):
        target = GaussianMixture.ring(8, 5.0, 0.3, dim=d)
        sigma = walk_jump_sigma(target)
        init = jnp.tile(target.means[0], (8, 1))
        kernel = WalkJump(target.denoiser(sigma), sigma)
        assert kernel._step_size == pytest.approx(sigma)
        mcmc = _run(kernel, init, num_warmup=100, num_samples=3000, num_chains=8)
        stats = mode_hopping(np.asarray(mcmc.get_samples(group_by_chain=True)["x"]), target)
        rates[d] = np.asarray(stats.switches_per_1000)
    diff = rates[64].mean() - rates[2].mean()
    se = np.sqrt(rates[64].var(ddof=1) / 8 + rates[2].var(ddof=1) / 8)
    assert rates[2].mean() > 40  # per 1000 walk steps: the walk hops
    assert abs(diff) <= 5 * se + 1e-9


# ----------------------------------------------------------------- inputs
@pytest.mark.parametrize("make", [
    lambda: ULA(score_fn=lambda x: -x),
    lambda: UnderdampedLangevin(potential_fn=lambda x: 0.5 * jnp.sum(x**2)),
    lambda: WalkJump(_GM.denoiser(1.0), 1.0),
], ids=["ula", "underdamped", "walkjump"])
def test_integer_init_params_are_cast_to_float(make):
    mcmc = _run(make(), jnp.zeros((2, 1), dtype=jnp.int32), num_warmup=10, num_samples=10, num_chains=2)
    assert jnp.issubdtype(jax.tree.leaves(mcmc.get_samples())[0].dtype, jnp.floating)


def test_mode_hopping_refuses_non_finite_draws():
    x = np.zeros((2, 10, 1), np.float32)
    x[1, 3] = np.nan
    with pytest.raises(ValueError, match="1 of 20 draws are not finite"):
        mode_hopping(x, _GM)


def test_a_discarded_kinetic_step_reverses_the_velocity():
    # a step into the region where the score is NaN is discarded; the chain keeps its
    # position and reverses its velocity, so the next steps retreat instead of repeating it
    kernel = UnderdampedLangevin(score_fn=lambda z: jnp.where(jnp.abs(z) > 1.5, jnp.nan, -z), step_size=0.5,
                                 adapt_step_size=False)
    state = kernel.init(jax.random.key(0), 0, jnp.array([1.4]))
    state = state._replace(state=state.state._replace(velocity=jnp.array([5.0])))
    new = kernel.sample(state, (), {})
    assert bool(new.diverging)
    np.testing.assert_allclose(np.asarray(new.z), [1.4])
    np.testing.assert_allclose(np.asarray(new.velocity), [-5.0])
