"""Walk-jump sampling against exact answers on Gaussian mixtures (theory.md sections 3-6)."""

import math

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer import MCMC

from mc import N_SE, assert_mean_close, assert_moments_close, mcse
from numpyro_wjs import WalkJump
from numpyro_wjs.core import walkjump
from numpyro_wjs.targets import GaussianMixture

GM1 = GaussianMixture([0.3, 0.7], [[-2.0], [2.0]], [0.5, 0.5])
GM2 = GaussianMixture([0.2, 0.3, 0.5], [[-3.0, 0.0], [0.0, 3.0], [3.0, 0.0]], [0.6, 0.6, 0.6])


def conditional(gm):
    return lambda y, s: gm.denoiser(s)(y)


def _run(kernel, x0, num_chains=8, num_warmup=300, num_samples=4000, seed=0):
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(seed), init_params=jnp.broadcast_to(x0, (num_chains,) + x0.shape),
             extra_fields=("y", "accept_prob", "adapt_state.step_size"))
    return mcmc


def _assert_same_mean(chain_stat, direct_stat, what):
    """Chain draws (chain, draw) against i.i.d. draws of the exact law: 5 combined SEs."""
    chain_stat = np.asarray(chain_stat, np.float64)
    direct_stat = np.asarray(direct_stat, np.float64)
    se = math.hypot(mcse(chain_stat), direct_stat.std() / math.sqrt(direct_stat.size))
    diff = chain_stat.mean() - direct_stat.mean()
    assert abs(diff) <= N_SE * se, f"{what}: chain {chain_stat.mean():.4f} vs exact {direct_stat.mean():.4f} (5 SE = {N_SE * se:.4f})"


def _direct(gm, sigma, n=400_000, seed=123):
    """Exact draws of Y = X + sigma N and of the jump E[X | Y]."""
    kx, kn = jax.random.split(jax.random.key(seed))
    x = gm.sample(kx, (n,))
    y = x + sigma * jax.random.normal(kn, x.shape)
    return np.asarray(y), np.asarray(gm.denoiser(sigma)(y))


def _statistics(v, gm):
    """Moments and mode indicators: the statistics compared between chain and exact law."""
    v = np.asarray(v)
    stats = {f"mean[{i}]": v[..., i] for i in range(v.shape[-1])}
    stats.update({f"second[{i}]": v[..., i] ** 2 for i in range(v.shape[-1])})
    modes = np.asarray(gm.mode_of(jnp.asarray(v)))
    stats.update({f"mode{k}": (modes == k).astype(float) for k in range(gm.K)})
    return stats


@pytest.mark.parametrize("underdamped", [True, False])
def test_walk_matches_p_y_and_jumps_match_the_law_of_the_posterior_mean(underdamped):
    # sigma != 1, so that a jump that drops its sigma^2 (y + score) cannot pass
    sigma = 1.5
    # a step well inside the stability bound keeps the unadjusted walk's bias below MC error
    step = 0.3 * (sigma if underdamped else sigma**2)
    kernel = WalkJump(GM1.denoiser(sigma), sigma, step_size=step, underdamped=underdamped, adapt_step_size=False)
    mcmc = _run(kernel, jnp.zeros(1), num_samples=6000)
    ys = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["y"])
    xs = np.asarray(mcmc.get_samples(group_by_chain=True)["x"])
    y_direct, x_direct = _direct(GM1, sigma)
    for name, (chain_stat, direct_stat) in _paired(_statistics(ys, GM1), _statistics(y_direct, GM1)):
        _assert_same_mean(chain_stat, direct_stat, "walk " + name)
    for name, (chain_stat, direct_stat) in _paired(_statistics(xs, GM1), _statistics(x_direct, GM1)):
        _assert_same_mean(chain_stat, direct_stat, "jump " + name)
    # the jump is the Tweedie posterior mean of the walk
    np.testing.assert_allclose(xs, np.asarray(GM1.denoiser(sigma)(jnp.asarray(ys))), rtol=1e-5, atol=1e-5)


def _paired(a, b):
    return [(k, (a[k], b[k])) for k in a]


def test_2d_mixture_mode_occupancy_matches_the_weights_with_adaptation():
    sigma = 1.5
    mcmc = _run(WalkJump(GM2.denoiser(sigma), sigma, adapt_step_size=True), jnp.zeros(2), num_warmup=500,
                num_samples=5000)
    xs = np.asarray(mcmc.get_samples(group_by_chain=True)["x"])
    modes = np.asarray(GM2.mode_of(jnp.asarray(xs)))
    _, x_direct = _direct(GM2, sigma)
    direct_modes = np.asarray(GM2.mode_of(jnp.asarray(x_direct)))
    for k in range(GM2.K):
        _assert_same_mean((modes == k).astype(float), (direct_modes == k).astype(float), f"occupancy of mode {k}")
        # and the exact law puts the jumps' mass on the weights (modes are separated)
        assert abs((direct_modes == k).mean() - float(GM2.weights[k])) < 0.02
    # every chain visits every mode: the walk mixes
    assert all(len(np.unique(m)) == GM2.K for m in modes)
    # warmup tuned the estimated acceptance and kept the step below the stability bound
    acc = float(np.mean(mcmc.get_extra_fields()["accept_prob"]))
    assert abs(acc - 0.9) < 0.05
    assert float(mcmc.get_extra_fields()["adapt_state.step_size"][-1]) <= 1.5 * sigma + 1e-6


@pytest.mark.parametrize("mode", ["joint", "sequential"])
def test_many_measurement_jumps_match_the_posterior_mean_at_sigma_over_sqrt_m(mode):
    sigma, m = 1.5, 4
    kernel = WalkJump(conditional(GM2), sigma, num_measurements=m, noise_conditional=True, mode=mode,
                      num_inner_steps=40, step_size=0.4 * sigma, adapt_step_size=False)
    mcmc = _run(kernel, jnp.zeros(2), num_samples=3000)
    xs = np.asarray(mcmc.get_samples(group_by_chain=True)["x"])
    _, x_direct = _direct(GM2, sigma / math.sqrt(m))
    for name, (chain_stat, direct_stat) in _paired(_statistics(xs, GM2), _statistics(x_direct, GM2)):
        _assert_same_mean(chain_stat, direct_stat, f"{mode} jump " + name)
    y = mcmc.get_extra_fields()["y"]
    assert y.shape == ((8 * 3000, m, 2) if mode == "joint" else (8 * 3000, 2))
    if mode == "joint":  # each jump is the posterior mean given ybar, at noise sigma / sqrt(M)
        expected = GM2.denoiser(sigma / math.sqrt(m))(jnp.mean(y, axis=1))
        np.testing.assert_allclose(mcmc.get_samples()["x"], expected, rtol=1e-4, atol=1e-4)


def _blur(x):
    """Squared distance of each jump to the nearest mixture mean: large for blurred jumps."""
    x = np.asarray(x, np.float64)
    means = np.asarray(GM2.means, np.float64)
    return np.min(np.sum((x[..., None, :] - means) ** 2, axis=-1), axis=-1)


def test_sequential_jumps_are_sharper_than_single_measurement_jumps():
    # Each run's blur matches its exact law (direct simulation at sigma, and at sigma/sqrt(M)
    # for M = 8), and the M = 8 jumps are sharper than the M = 1 jumps by more than 5
    # combined Monte Carlo standard errors.
    sigma, m = 1.5, 8
    kw = dict(step_size=0.4 * sigma, adapt_step_size=False)
    single = _run(WalkJump(GM2.denoiser(sigma), sigma, **kw), jnp.zeros(2), num_samples=1000)
    seq = _run(WalkJump(conditional(GM2), sigma, num_measurements=m, noise_conditional=True, mode="sequential",
                        num_inner_steps=40, **kw), jnp.zeros(2), num_samples=1000)
    b1 = _blur(single.get_samples(group_by_chain=True)["x"])
    b8 = _blur(seq.get_samples(group_by_chain=True)["x"])
    _assert_same_mean(b1, _blur(_direct(GM2, sigma)[1]), "M = 1 blur")
    _assert_same_mean(b8, _blur(_direct(GM2, sigma / math.sqrt(m))[1]), "M = 8 blur")
    se = math.hypot(mcse(b1), mcse(b8))
    assert b1.mean() - b8.mean() > N_SE * se, (b1.mean(), b8.mean(), se)


def test_jump_every_and_image_shaped_states():
    # N(0, I) prior on 6x6x1 "images": E[X|y] = y / (1 + sigma^2), p_Y = N(0, (1 + sigma^2) I)
    sigma = 0.8
    denoiser = lambda y: y / (1 + sigma**2)
    # BAOAB's position marginal is exact on a Gaussian p_Y at any stable step, so with a
    # fixed step the only error is Monte Carlo error
    kernel = WalkJump(denoiser, sigma, jump_every=3, step_size=0.6 * sigma, adapt_step_size=False)
    mcmc = _run(kernel, jnp.zeros((6, 6, 1)), num_chains=4, num_samples=2000)
    ys = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["y"])
    xs = np.asarray(mcmc.get_samples(group_by_chain=True)["x"])
    assert xs.shape == (4, 2000, 6, 6, 1) and ys.shape == (4, 2000, 6, 6, 1)
    # pixels are independent chains of the same law: E[y^2] = 1 + sigma^2 and, for the
    # jump x = y / (1 + sigma^2), E[x^2] = 1 / (1 + sigma^2)
    pix = lambda a: np.moveaxis(a, (2, 3, 4), (0, 1, 2)).reshape(36 * 4, 2000) ** 2
    assert_mean_close(pix(ys), 1 + sigma**2, what="E[y^2]")
    assert_mean_close(pix(xs), 1 / (1 + sigma**2), what="E[x^2]")


def test_init_noisy_and_single_chain_and_arviz():
    # init_noisy=True: init_params is the walk's start y0 itself; otherwise y0 = x0 + sigma eps
    x0 = jnp.array([5.0])
    noisy = WalkJump(GM1.denoiser(1.0), 1.0, init_noisy=True).init(jax.random.key(0), 10, x0)
    clean = WalkJump(GM1.denoiser(1.0), 1.0).init(jax.random.key(0), 10, x0)
    np.testing.assert_array_equal(noisy.y, x0)
    assert float(jnp.abs(clean.y - x0)[0]) > 0
    np.testing.assert_allclose(noisy.x, GM1.denoiser(1.0)(x0), rtol=1e-6)  # the jump from y0
    kernel = WalkJump(GM1.denoiser(1.0), 1.0, init_noisy=True)
    mcmc = MCMC(kernel, num_warmup=50, num_samples=100, progress_bar=False)
    mcmc.run(jax.random.key(0), init_params=jnp.array([5.0]), extra_fields=("y", "accept_prob"))
    assert mcmc.get_samples()["x"].shape == (100, 1)
    dt = az.from_numpyro(mcmc)
    assert "y" in dt["sample_stats"] and "acceptance_rate" in dt["sample_stats"]
    assert "diverging" in dt["sample_stats"]


def test_functional_core_in_a_scan():
    sigma = 1.0
    score = walkjump.smoothed_score(GM1.denoiser(sigma), sigma)
    from numpyro_wjs import langevin
    st = walkjump.walk_init(jnp.zeros(1), score, jax.random.key(0))

    def body(st, key):
        st, log_ratio = walkjump.walk_step(key, st, score, 0.5, 1.0)
        return st, (st.y + sigma**2 * st.score, langevin.accept_prob(log_ratio))

    _, (jumps, acc) = jax.lax.scan(body, st, jax.random.split(jax.random.key(1), 500))
    assert jumps.shape == (500, 1) and bool(jnp.all((acc >= 0) & (acc <= 1)))


def _exact_walk_log_ratio(y0, v0, y1, v1, h, logp, score, underdamped):
    """Log Metropolis-Hastings ratio of one walk step from the exact ``log p_Y``.

    BAOAB: ``exp(-energy error)`` of its deterministic halves (the O step is exact);
    ULA: the MALA ratio with ``q(b | a) = N(b; a + h score(a), 2 h)``.
    """
    if underdamped:
        v_a = v0 + 0.5 * h * score(y0)
        v_b = v1 - 0.5 * h * score(y1)
        dk = 0.5 * (jnp.sum(v_a**2) - jnp.sum(v0**2) + jnp.sum(v1**2) - jnp.sum(v_b**2))
        log_ratio = logp(y1) - logp(y0) - dk
    else:
        log_q = lambda b, a: -jnp.sum((b - a - h * score(a)) ** 2) / (4 * h)
        log_ratio = logp(y1) - logp(y0) + log_q(y0, y1) - log_q(y1, y0)
    return log_ratio


@pytest.mark.parametrize("underdamped", [True, False])
def test_estimated_acceptance_is_exact_for_gaussian_p_y(underdamped):
    # Gaussian p_Y: the trapezoid rule is exact, so the estimated log ratio equals the true
    # Metropolis-Hastings log ratio of the step, computed here from the exact log density,
    # over 256 random steps (a wrong sign or a swapped term shows on most of them).
    s2, h = 2.0, (1.6 if underdamped else 1.5)  # p_Y = N(0, s2 I); both steps are stable
    score = lambda y: -y / s2
    logp = lambda y: -0.5 * jnp.sum(y**2) / s2

    def one(key):
        k_y, k_v, k_step = jax.random.split(key, 3)
        y0 = math.sqrt(s2) * jax.random.normal(k_y, (3,))
        v0 = jax.random.normal(k_v, (3,))
        new, log_ratio = walkjump.walk_step(k_step, walkjump.WalkJumpState(y0, y0, v0, score(y0)), score, h, 1.0,
                                            underdamped)
        return log_ratio, _exact_walk_log_ratio(y0, v0, new.y, new.velocity, h, logp, score, underdamped)

    log_ratio, exact = jax.vmap(one)(jax.random.split(jax.random.key(3), 256))
    assert np.mean(np.exp(np.asarray(exact)) < 0.9) > 0.2, "most steps should have a ratio well below 1"
    np.testing.assert_allclose(np.asarray(log_ratio), np.asarray(exact), rtol=1e-4, atol=1e-4)


def test_overdamped_walk_tunes_its_step_to_the_target_acceptance():
    # Gaussian prior: p_Y = N(0, (tau^2 + sigma^2) I) is Gaussian, so every recorded acceptance is
    # the exact Metropolis acceptance of the ULA step between consecutive walk positions
    # X ~ N(0, tau^2 I): the target is reached below the step's cap 1.5 sigma^2
    sigma, tau2, target = 1.5, 0.25, 0.9
    s2 = tau2 + sigma**2
    h0 = 0.1 * sigma**2
    kernel = WalkJump(lambda y: tau2 * y / s2, sigma, underdamped=False, step_size=h0, adapt_step_size=True,
                      target_accept_prob=target)
    mcmc = _run(kernel, jnp.zeros(2), num_chains=4, num_warmup=500, num_samples=2000)
    f = mcmc.get_extra_fields(group_by_chain=True)
    ys, acc = np.asarray(f["y"], np.float64), np.asarray(f["accept_prob"], np.float64)
    h = jnp.asarray(f["adapt_state.step_size"][:, -1])  # each chain tunes its own step
    score = lambda y: -y / s2
    logp = lambda y: -0.5 * jnp.sum(y**2) / s2
    exact = jax.vmap(lambda hc, y0, y1: jax.vmap(
        lambda a, b: jnp.minimum(1.0, jnp.exp(_exact_walk_log_ratio(a, a, b, b, hc, logp, score, False))))(y0, y1))(
        h, jnp.asarray(ys[:, :-1]), jnp.asarray(ys[:, 1:]))
    np.testing.assert_allclose(acc[:, 1:], np.asarray(exact), rtol=1e-3, atol=1e-5)
    # warmup moved the step up from h0, below its cap, and dual averaging reached its target:
    # it ends within a few hundredths of it (as for MALA in test_kernels)
    assert np.all((2 * h0 < h) & (h < 1.5 * sigma**2 - 1e-6)), h
    assert abs(acc.mean() - target) < 0.05, acc.mean()


def test_sequential_jump_has_the_law_of_the_posterior_mean_at_sigma_over_sqrt_m():
    # X ~ N(0, 1) and y_1 ~ p_Y: the jump E[X | y_1..y_M] = ybar_M / (1 + sigma^2 / M) is
    # N(0, 1 / (1 + sigma^2 / M)), and E[jump * y_1] = E[X y_1] = 1.
    sigma, m = 1.5, 4
    den = lambda y, s: y / (1 + s**2)

    def one(key):
        k_y, k_jump = jax.random.split(key)
        y1 = math.sqrt(1 + sigma**2) * jax.random.normal(k_y, (1,))
        x = walkjump.sequential_jump(k_jump, y1, den(y1, sigma), den, sigma, m, 60, 0.5 * sigma / math.sqrt(m), 1.0)
        return jnp.concatenate([x, x * y1])

    out = np.asarray(jax.vmap(one)(jax.random.split(jax.random.key(5), 20_000))).reshape(4, 5000, 2)
    var = 1 / (1 + sigma**2 / m)
    assert_moments_close(out[..., :1], [0.0], [[var]])
    assert_mean_close(out[..., 1], 1.0, what="E[jump * y_1]")


# --------------------------------------------------------------------------- divergence
def test_non_finite_denoiser_during_the_walk_is_flagged_not_returned():
    sigma = 1.0
    den = lambda y: jnp.where(jnp.abs(y) > 2.5, jnp.nan, GM1.denoiser(sigma)(y))
    mcmc = _run(WalkJump(den, sigma, adapt_step_size=False), jnp.zeros(1), num_chains=2, num_warmup=0, num_samples=2000)
    assert np.all(np.isfinite(np.asarray(mcmc.get_samples()["x"])))
    assert np.all(np.isfinite(np.asarray(mcmc.get_extra_fields()["y"])))
    assert np.asarray(mcmc.get_extra_fields()["diverging"]).sum() > 0


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("sigma", [0.0, -1.0, float("nan")])
def test_sigma_must_be_positive(sigma):
    with pytest.raises(ValueError, match="sigma"):
        WalkJump(GM1.denoiser(1.0), sigma)


def test_bad_options():
    den = GM1.denoiser(1.0)
    with pytest.raises(ValueError, match="num_measurements"):
        WalkJump(den, 1.0, num_measurements=0)
    with pytest.raises(ValueError, match="noise-conditional"):
        WalkJump(den, 1.0, num_measurements=4)
    with pytest.raises(ValueError, match="mode"):
        WalkJump(conditional(GM1), 1.0, num_measurements=2, noise_conditional=True, mode="parallel")
    with pytest.raises(ValueError, match="jump_every"):
        WalkJump(den, 1.0, jump_every=0)
    with pytest.raises(ValueError, match="stability bound"):
        WalkJump(den, 1.0, step_size=5.0)
    with pytest.raises(TypeError, match="callable"):
        WalkJump("denoiser", 1.0)


def test_denoiser_with_wrong_shape_or_non_finite_output():
    with pytest.raises(ValueError, match="shape"):
        _run(WalkJump(lambda y: jnp.sum(y), 1.0), jnp.zeros(3), num_chains=1)
    with pytest.raises(ValueError, match="non-finite"):
        _run(WalkJump(lambda y: y * jnp.nan, 1.0), jnp.zeros(3), num_chains=2)
    with pytest.raises(ValueError, match="init_params"):
        MCMC(WalkJump(GM1.denoiser(1.0), 1.0), num_warmup=1, num_samples=1).run(jax.random.key(0))


# ----------------------------------------------------------------- self-describing denoisers
def test_denoiser_module_gives_its_sigma_and_noise_conditioning():
    from flax import nnx

    from numpyro_wjs.nn.denoisers import MLP

    fixed = MLP(1, (8,), sigma=0.8, rngs=nnx.Rngs(0))
    kernel = WalkJump(fixed)  # sigma from the module
    assert kernel._sigma == 0.8 and WalkJump(fixed, 0.8)._sigma == 0.8
    with pytest.raises(ValueError, match="trained at sigma=0.8"):
        WalkJump(fixed, 0.3)
    with pytest.raises(ValueError, match="noise-conditional"):
        WalkJump(fixed, 0.8, noise_conditional=True)

    conditional = MLP(1, (8,), noise_conditional=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="required"):
        WalkJump(conditional)
    kernel = WalkJump(conditional, 0.5, num_measurements=2)  # called as net(y, s): no flag to repeat
    mcmc = MCMC(kernel, num_warmup=5, num_samples=10, progress_bar=False)
    mcmc.run(jax.random.key(0), init_params=jnp.zeros(1))
    expected = conditional(mcmc.last_state.y.mean(0), 0.5 / np.sqrt(2))
    np.testing.assert_allclose(mcmc.last_state.x, expected, rtol=1e-5, atol=1e-6)


def test_draws_are_the_site_x_in_numpyro_and_arviz():
    mcmc = MCMC(WalkJump(GM1.denoiser(1.0), 1.0), num_warmup=10, num_samples=20, num_chains=2,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(0), init_params=jnp.zeros((2, 1)))
    assert set(mcmc.get_samples()) == {"x"} and mcmc.get_samples()["x"].shape == (40, 1)
    assert list(az.from_numpyro(mcmc).posterior.data_vars) == ["x"]


def test_walk_jump_step_is_exact_on_a_gaussian():
    # X ~ N(0, 1), sigma = 0.5: p_Y = N(0, 1.25), on which BAOAB is exact, and the jump
    # E[X | y] = y / 1.25 has variance 0.8. Four chains of the pure step in a scan.
    sigma = 0.5
    score = walkjump.smoothed_score(lambda y: y / (1 + sigma**2), sigma)
    tweedie = lambda key, y, g: y + sigma**2 * g  # noqa: E731

    def chain(key):
        key_init, key_run = jax.random.split(key)
        state = walkjump.walk_init(jnp.zeros(2), score, key_init)

        def body(state, key):
            state, info = walkjump.walk_jump_step(key, state, score, tweedie, sigma, 0.5, num_steps=2)
            return state, (state.x, info.diverging)

        return jax.lax.scan(body, state, jax.random.split(key_run, 4000))[1]

    xs, diverging = jax.vmap(chain)(jax.random.split(jax.random.key(0), 4))
    assert not bool(diverging.any())
    xs = np.asarray(xs)[:, 500:]  # (chain, draw, 2)
    for d in range(2):
        assert_mean_close(xs[..., d], 0.0)
        assert_mean_close(xs[..., d] ** 2, 1 / (1 + sigma**2), what="E[x^2]")
