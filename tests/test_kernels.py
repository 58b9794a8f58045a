"""ULA, MALA and UnderdampedLangevin as NumPyro kernels: exactness and MCMC plumbing."""

import os
import re
import subprocess
import sys
from pathlib import Path

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC, NUTS
from numpyro.infer.util import potential_energy

from mc import assert_mean_close, assert_moments_close
from numpyro_wjs import MALA, ULA, GibbsWalkJump, UnderdampedLangevin, WalkJump

ROOT = Path(__file__).resolve().parents[1]


def _ill_conditioned(cond=100.0, angle=np.pi / 6):
    r = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return r @ np.diag([1.0, 1.0 / cond]) @ r.T


def _gauss_potential(cov, mean=None):
    prec = jnp.asarray(np.linalg.inv(cov))
    mean = jnp.zeros(cov.shape[0]) if mean is None else jnp.asarray(mean)
    return lambda z: 0.5 * (z - mean) @ prec @ (z - mean)


def _run(kernel, num_warmup=500, num_samples=2000, num_chains=4, chain_method="vectorized", seed=0, **kw):
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method=chain_method, progress_bar=False)
    mcmc.run(jax.random.key(seed), **kw)
    return mcmc


# ----------------------------------------------------------------- exactness and known bias
def test_ula_kernel_has_the_known_bias():
    s2, h = 2.0, 1.0
    mcmc = _run(ULA(score_fn=lambda x: -x / s2, step_size=h, adapt_step_size=False), num_samples=3000, num_chains=16,
                init_params=jnp.zeros((16, 1)))
    draws = np.asarray(mcmc.get_samples(group_by_chain=True))
    assert_moments_close(draws, [0.0], [[s2 / (1 - h / (2 * s2))]])


@pytest.mark.parametrize("dense", [False, True])
def test_mala_recovers_ill_conditioned_gaussian_with_adaptation(dense):
    cov = _ill_conditioned(100.0)
    mean = np.array([0.5, -1.0])
    kernel = MALA(potential_fn=_gauss_potential(cov, mean), dense_mass=dense)
    mcmc = _run(kernel, num_warmup=1000, num_samples=3000, init_params=jnp.zeros((4, 2)),
                extra_fields=("accept_prob", "adapt_state.step_size"))
    draws = np.asarray(mcmc.get_samples(group_by_chain=True))
    assert_moments_close(draws, mean, cov)
    # dual averaging reaches its target acceptance rate (binomial-ish error on 12000 draws)
    acc = np.asarray(mcmc.get_extra_fields()["accept_prob"]).mean()
    assert abs(acc - 0.574) < 0.06
    if dense:  # a dense metric makes the problem isotropic: large steps
        assert float(mcmc.get_extra_fields()["adapt_state.step_size"][-1]) > 0.3


def test_underdamped_exact_on_gaussian_from_a_score():
    cov = np.array([[1.0, 0.5], [0.5, 0.8]])
    prec = jnp.asarray(np.linalg.inv(cov))
    kernel = UnderdampedLangevin(score_fn=lambda z: -prec @ z, step_size=0.8, friction=1.0, adapt_step_size=False)
    mcmc = _run(kernel, num_samples=3000, num_chains=8, init_params=jnp.zeros((8, 2)))
    assert_moments_close(np.asarray(mcmc.get_samples(group_by_chain=True)), [0.0, 0.0], cov)


def _gamma_model():
    numpyro.sample("rate", dist.Gamma(3.0, 2.0))


LOC, SCALE = 0.3, 0.5


def _lognormal_model():
    # unconstrained u = log(rate) ~ N(LOC, SCALE^2): a Gaussian target, where the unadjusted
    # kernels' stationary laws are known exactly
    numpyro.sample("rate", dist.LogNormal(LOC, SCALE))


def _ula_variance(s2, h):
    """Stationary variance of ULA with step ``h`` on ``N(m, s2)`` (theory.md, section 1)."""
    return s2 / (1 - h / (2 * s2))


def test_mala_on_a_model_with_a_constrained_site():
    mcmc = _run(MALA(_gamma_model), num_warmup=500, num_samples=3000)
    rate = np.asarray(mcmc.get_samples(group_by_chain=True)["rate"])
    assert rate.min() > 0
    # exact: Gamma(3, 2) has mean 1.5 and variance 0.75
    assert_mean_close(rate, 1.5, what="E[rate]")
    assert_mean_close((rate - 1.5) ** 2, 0.75, what="Var[rate]")


@pytest.mark.parametrize("kernel_cls", [UnderdampedLangevin, ULA])
def test_unadjusted_kernel_on_a_model_with_a_constrained_site(kernel_cls):
    # In unconstrained space the target is N(LOC, SCALE^2): BAOAB's position marginal is exact
    # and ULA's variance is s2 / (1 - h / (2 s2)) at its step h (read per chain from the
    # recorded step). A tempered kernel (wrong noise scale) fails the variance check.
    mcmc = _run(kernel_cls(_lognormal_model, step_size=0.05, adapt_step_size=False), num_warmup=500, num_samples=3000,
                extra_fields=("adapt_state.step_size",))
    rate = np.asarray(mcmc.get_samples(group_by_chain=True)["rate"], np.float64)
    assert rate.min() > 0
    u = np.log(rate)
    s2 = SCALE**2
    if kernel_cls is ULA:
        h = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["adapt_state.step_size"], np.float64)[:, -1:]
        var = _ula_variance(s2, h)
    else:
        var = s2
    assert_mean_close(u, LOC, what="E[log rate]")
    assert_mean_close((u - LOC) ** 2 - var, 0.0, what="Var[log rate] - exact")


def _normal_mean_model(y):
    mu = numpyro.sample("mu", dist.Normal(0.0, 10.0))
    numpyro.deterministic("mu2", 2 * mu)
    numpyro.sample("obs", dist.Normal(mu, 1.0), obs=y)


@pytest.mark.parametrize("jit_model_args", [False, True])
def test_model_args_deterministic_sites_and_jit_model_args(jit_model_args):
    y = jnp.array([0.3, 1.2, 0.8, 2.0])
    mcmc = MCMC(MALA(_normal_mean_model), num_warmup=300, num_samples=2000, num_chains=2,
                chain_method="sequential", progress_bar=False, jit_model_args=jit_model_args)
    for data in (y, y + 3.0):  # a second call with new data must see the new data
        mcmc.run(jax.random.key(1), data)
        s = mcmc.get_samples(group_by_chain=True)
        post_var = 1.0 / (len(data) + 1e-2)
        post_mean = float(data.sum()) * post_var
        assert_mean_close(np.asarray(s["mu"]), post_mean, what="E[mu]")
        assert_mean_close((np.asarray(s["mu"]) - post_mean) ** 2, post_var, what="Var[mu]")
        np.testing.assert_allclose(s["mu2"], 2 * s["mu"], rtol=1e-6)


# ----------------------------------------------------------------- MCMC plumbing
@pytest.mark.parametrize("kernel_cls", [ULA, UnderdampedLangevin, MALA])
def test_pytree_positions(kernel_cls):
    # a ~ N(0, I_3), b ~ N(0, 4) as a dict: each leaf keeps its shape and its variance.
    # BAOAB and MALA are exact on a Gaussian; ULA has the known variance s2 / (1 - h / (2 s2)).
    var = {"a": 1.0, "b": 4.0}
    if kernel_cls is MALA:
        kernel = MALA(potential_fn=lambda z: 0.5 * jnp.sum(z["a"] ** 2) + z["b"] ** 2 / 8)
    else:
        score = lambda z: {"a": -z["a"], "b": -z["b"] / 4}
        kernel = kernel_cls(score_fn=score, step_size=0.1 if kernel_cls is ULA else 0.3, adapt_step_size=False)
    init = {"a": jnp.zeros((4, 3)), "b": jnp.zeros(4)}
    mcmc = _run(kernel, num_samples=1000, init_params=init, extra_fields=("adapt_state.step_size",))
    s = mcmc.get_samples()
    assert s["a"].shape == (4000, 3) and s["b"].shape == (4000,)
    grouped = mcmc.get_samples(group_by_chain=True)
    h = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["adapt_state.step_size"], np.float64)[:, -1:]
    for name, s2 in var.items():
        exact = _ula_variance(s2, h) if kernel_cls is ULA else s2
        draws = np.asarray(grouped[name], np.float64).reshape(4, 1000, -1)
        for i in range(draws.shape[-1]):
            assert_mean_close(draws[..., i] ** 2 - exact, 0.0, what=f"Var[{name}][{i}] - exact")


_CHAIN_METHODS_SCRIPT = """
import warnings
warnings.filterwarnings("error", message="There are not enough devices")
import jax, jax.numpy as jnp, numpy as np
from numpyro.infer import MCMC
from numpyro_wjs import MALA, ULA, GibbsWalkJump, UnderdampedLangevin, WalkJump

assert jax.local_device_count() == 2, jax.devices()
for cls in (ULA, MALA, UnderdampedLangevin):
    runs = {}
    for method in ("sequential", "vectorized", "parallel"):
        mcmc = MCMC(cls(potential_fn=lambda z: 0.5 * jnp.sum(z**2)), num_warmup=50, num_samples=100,
                    num_chains=2, chain_method=method, progress_bar=False)
        mcmc.run(jax.random.key(0), init_params=jnp.ones((2, 3)))
        runs[method] = np.asarray(mcmc.get_samples(group_by_chain=True))
    np.testing.assert_allclose(runs["sequential"], runs["vectorized"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(runs["sequential"], runs["parallel"], rtol=1e-4, atol=1e-5)
    print(cls.__name__, "agree")
"""


def test_chain_methods_agree():
    # On one CPU device NumPyro runs "parallel" chains sequentially (with a warning), so the
    # comparison runs in a subprocess with two host devices, where "parallel" is pmap.
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", _CHAIN_METHODS_SCRIPT], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.split() == ["ULA", "agree", "MALA", "agree", "UnderdampedLangevin", "agree"]


def test_thinning_extra_fields_continuation_and_arviz(capsys):
    kernel = MALA(potential_fn=lambda z: 0.5 * jnp.sum(z**2))
    mcmc = MCMC(kernel, num_warmup=200, num_samples=400, num_chains=2, chain_method="vectorized",
                thinning=2, progress_bar=False)
    mcmc.run(jax.random.key(0), init_params=jnp.zeros((2, 2)),
             extra_fields=("accept_prob", "adapt_state.step_size", "potential_energy"))
    assert mcmc.get_samples().shape == (400, 2)
    fields = mcmc.get_extra_fields(group_by_chain=True)
    assert fields["accept_prob"].shape == (2, 200) and fields["diverging"].shape == (2, 200)

    dt = az.from_numpyro(mcmc)
    stats = dt["sample_stats"]
    for name in ("acceptance_rate", "step_size", "diverging", "lp"):
        assert name in stats, name
    assert az.summary(dt) is not None

    # continuation: sampling goes on from the last state, without new warmup
    step = np.asarray(fields["adapt_state.step_size"][:, -1:])
    mcmc.post_warmup_state = mcmc.last_state
    mcmc.run(mcmc.post_warmup_state.rng_key, extra_fields=("adapt_state.step_size",))
    np.testing.assert_allclose(mcmc.get_extra_fields(group_by_chain=True)["adapt_state.step_size"],
                               np.broadcast_to(step, (2, 200)))
    mcmc.print_summary()
    assert "Number of divergences: 0" in capsys.readouterr().out


def test_model_runs_convert_to_datatree_with_site_names():
    mcmc = _run(MALA(_gamma_model), num_warmup=100, num_samples=200, num_chains=2,
                extra_fields=("accept_prob",))
    dt = az.from_numpyro(mcmc)
    assert dt["posterior"]["rate"].shape == (2, 200)
    assert "acceptance_rate" in dt["sample_stats"]


def test_progress_bar_shows_the_step_size(capsys, monkeypatch):
    # NumPyro turns the progress bar off when CI or PYTEST_XDIST_WORKER is set
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    mcmc = MCMC(MALA(potential_fn=lambda z: 0.5 * jnp.sum(z**2)), num_warmup=20, num_samples=20)
    mcmc.run(jax.random.key(0), init_params=jnp.zeros(2))
    assert mcmc.get_samples().shape == (20, 2)
    err = capsys.readouterr().err  # tqdm writes to stderr
    assert "warmup" in err and "sample" in err
    assert re.search(r"step size \d\.\d\de[+-]\d\d\. acc\. prob=\d\.\d\d", err), err[-500:]


def test_mala_and_nuts_agree_on_a_model():
    def model():
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        numpyro.sample("y", dist.Normal(x, 0.5), obs=1.0)

    nuts = _run(NUTS(model), num_samples=2000, num_chains=2)
    mala = _run(MALA(model), num_samples=4000, num_chains=2, extra_fields=("potential_energy",))
    # the state carries -log p of its own position (a stale or sign-flipped value biases the
    # next Metropolis-Hastings ratio)
    x = mala.get_samples()["x"][:200]
    recorded = mala.get_extra_fields()["potential_energy"][:200]
    exact = jax.vmap(lambda v: potential_energy(model, (), {}, {"x": v}))(x)
    np.testing.assert_allclose(recorded, exact, rtol=1e-5, atol=1e-5)
    # conjugate: posterior N(0.8, 0.2); a broken Hastings ratio can keep the mean (by symmetry)
    # but not the variance
    mean, var = 1.0 * 1.0 / (1.0 + 0.25), 1.0 / (1.0 + 4.0)
    for name, run in (("MALA", mala), ("NUTS", nuts)):
        x = np.asarray(run.get_samples(group_by_chain=True)["x"])
        assert_mean_close(x, mean, what=f"{name} E[x]")
        assert_mean_close((x - mean) ** 2, var, what=f"{name} Var[x]")


# ----------------------------------------------------------------- divergence is flagged, never NaN
def test_ula_beyond_stability_flags_divergence_and_keeps_finite_draws():
    mcmc = _run(ULA(score_fn=lambda z: -z, step_size=2.5), num_warmup=0, num_samples=600, num_chains=2,
                init_params=jnp.ones((2, 1)))
    draws = np.asarray(mcmc.get_samples())
    div = np.asarray(mcmc.get_extra_fields()["diverging"])
    assert np.all(np.isfinite(draws))
    assert div.sum() > 0


def test_underdamped_nonfinite_score_is_flagged():
    score = lambda z: jnp.where(jnp.abs(z) > 1.5, jnp.nan, -z)
    mcmc = _run(UnderdampedLangevin(score_fn=score, step_size=0.5), num_warmup=0, num_samples=500,
                num_chains=2, init_params=jnp.zeros((2, 1)))
    assert np.all(np.isfinite(np.asarray(mcmc.get_samples())))
    assert np.asarray(mcmc.get_extra_fields()["diverging"]).sum() > 0


# ----------------------------------------------------------------- bad input
def test_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one"):
        ULA()
    with pytest.raises(ValueError, match="exactly one"):
        ULA(potential_fn=lambda z: z, score_fn=lambda z: z)
    with pytest.raises(ValueError, match="exactly one"):
        MALA(_gamma_model, potential_fn=lambda z: z)


@pytest.mark.parametrize("cls", [ULA, MALA, UnderdampedLangevin])
def test_an_unknown_option_names_the_kernel_and_what_it_takes(cls):
    # a NUTS option passed to a Langevin kernel: the message names the public class
    with pytest.raises(TypeError, match=rf"^{cls.__name__}\(\) got unexpected keyword argument\(s\) 'max_tree_depth'; "
                                        r"it takes model, .*step_size") as err:
        cls(_gamma_model, max_tree_depth=8)
    assert "_LangevinKernel" not in str(err.value)


def test_walkjump_refuses_a_model_and_points_to_gibbs_walkjump():
    def model():
        numpyro.sample("x", dist.Normal())

    for kwargs in ({}, {"sigma": 1.0}):
        with pytest.raises(TypeError, match="GibbsWalkJump"):
            WalkJump(model, **kwargs)
    WalkJump(lambda y, s: y, sigma=1.0, noise_conditional=True)  # a denoiser of (y, s) is accepted


def test_mala_refuses_a_bare_score():
    with pytest.raises(ValueError, match="log p"):
        MALA(score_fn=lambda z: -z)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_step_size_and_friction_must_be_positive(bad):
    with pytest.raises(ValueError, match="step_size"):
        ULA(score_fn=lambda z: -z, step_size=bad)
    with pytest.raises(ValueError, match="friction"):
        UnderdampedLangevin(score_fn=lambda z: -z, friction=bad)


def test_bad_arguments():
    with pytest.raises(TypeError, match="step_size"):
        ULA(score_fn=lambda z: -z, step_size="big")
    with pytest.raises(ValueError, match="target_accept_prob"):
        MALA(potential_fn=lambda z: z, target_accept_prob=1.5)
    with pytest.raises(TypeError, match="callable"):
        ULA(score_fn=3.0)
    with pytest.raises(ValueError, match="inverse_mass_matrix"):
        ULA(score_fn=lambda z: -z, inverse_mass_matrix=jnp.ones((2, 3)))


def test_init_errors():
    with pytest.raises(ValueError, match="init_params"):
        _run(ULA(score_fn=lambda z: -z), num_chains=1)
    with pytest.raises(ValueError, match="shape"):
        _run(ULA(score_fn=lambda z: -z[:1]), num_chains=1, init_params=jnp.zeros(3))
    with pytest.raises(ValueError, match="has size 2"):
        _run(ULA(score_fn=lambda z: -z, inverse_mass_matrix=jnp.ones(2)), num_chains=1, init_params=jnp.zeros(3))
    with pytest.raises(ValueError, match="not finite"):
        _run(ULA(score_fn=lambda z: z / 0.0), num_chains=1, init_params=jnp.zeros(3))
    with pytest.raises(ValueError, match="not finite"):
        _run(MALA(potential_fn=lambda z: jnp.sum(jnp.log(z))), num_chains=2, init_params=-jnp.ones((2, 3)))


def test_from_numpyro_works_when_arviz_is_imported_first():
    # ArviZ's lazy import of numpyro, done before numpyro itself is imported, leaves
    # numpyro.infer's submodules unbound; importing numpyro_wjs binds them again.
    code = """
import arviz as az
import jax
from numpyro.infer import MCMC
import numpyro, numpyro.distributions as dist
from numpyro_wjs import MALA

def model():
    numpyro.sample("a", dist.Normal())

mcmc = MCMC(MALA(model), num_warmup=10, num_samples=20, progress_bar=False)
mcmc.run(jax.random.key(0))
assert az.from_numpyro(mcmc).posterior["a"].shape == (1, 20)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


# ----------------------------------------------------------------- structured mass matrix, as NUTS takes it
_RHO = 0.95
_BLOCK_COV = np.array([[4.0, _RHO * 2.0 * 0.3], [_RHO * 2.0 * 0.3, 0.09]])  # a, b: scales 2 and 0.3


def _block_model():
    a = numpyro.sample("a", dist.Normal(0.0, 2.0))
    numpyro.sample("b", dist.Normal(_RHO * 0.3 / 2.0 * a, 0.3 * np.sqrt(1 - _RHO**2)))
    numpyro.sample("c", dist.Normal(1.0, 0.5))


@pytest.mark.parametrize("make", [
    lambda **kw: MALA(_block_model, **kw),
    lambda **kw: UnderdampedLangevin(_block_model, adapt_mass_matrix=True, **kw),
    lambda **kw: GibbsWalkJump(_block_model, **kw),
], ids=["MALA", "UnderdampedLangevin", "GibbsWalkJump"])
def test_structured_dense_mass(make):
    mcmc = _run(make(dense_mass=[("a", "b")]), num_warmup=1000, num_samples=2000)
    imm = mcmc.last_state.adapt_state.inverse_mass_matrix
    assert set(imm) == {("a", "b"), ("c",)}
    assert imm[("a", "b")].shape == (4, 2, 2) and imm[("c",)].shape == (4, 1)  # a dense block, a diagonal one
    assert np.all(np.asarray(imm[("a", "b")])[:, 0, 1] > 0)  # the block learned the correlation
    samples = mcmc.get_samples(group_by_chain=True)
    ab = np.stack([np.asarray(samples["a"]), np.asarray(samples["b"])], axis=-1)
    assert_moments_close(ab, np.zeros(2), _BLOCK_COV)
    assert_mean_close(np.asarray(samples["c"]), 1.0)


def test_structured_dense_mass_errors():
    with pytest.raises(TypeError, match="dense_mass"):
        MALA(_block_model, dense_mass="yes")
    with pytest.raises(TypeError, match="dense_mass"):
        MALA(_block_model, dense_mass=[("a", 3)])
    with pytest.raises(ValueError, match="'zz'"):
        _run(MALA(_block_model, dense_mass=[("a", "zz")]), num_chains=1)
    with pytest.raises(ValueError, match="needs a `model`"):
        _run(MALA(potential_fn=lambda z: jnp.sum(z**2), dense_mass=[("x",)]), num_chains=1, init_params=jnp.zeros(2))
