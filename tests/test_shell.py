"""The kernel shell: one state per algorithm, carried as the core step returns it, and
nothing set on a kernel but what ``init`` builds."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC

from numpyro_wjs import MALA, SGHMC, SGLD, ULA, GibbsWalkJump, UnderdampedLangevin, WalkJump
from numpyro_wjs.core import gibbs, langevin, malt, sgld, walkjump
from numpyro_wjs.infer.malt import MALT
from numpyro_wjs.infer.base import KernelState
from numpyro_wjs.targets import GaussianMixture

GM = GaussianMixture([0.5, 0.5], [[-2.0], [2.0]], [0.5, 0.5])


def model():
    numpyro.sample("a", dist.Normal(0.0, 1.0).expand([2]))
    numpyro.sample("s", dist.LogNormal(0.0, 0.5))


Y = jnp.linspace(-1.0, 3.0, 50)


def subsampled_model():
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", 50, subsample_size=10):
        numpyro.sample("y", dist.Normal(mu, 1.0), obs=numpyro.subsample(Y, event_dim=0))


KERNELS = {
    "ULA": (lambda: ULA(model), langevin.LangevinState, {}),
    "MALA": (lambda: MALA(model), langevin.LangevinState, {}),
    "UnderdampedLangevin": (lambda: UnderdampedLangevin(model), langevin.UnderdampedState, {}),
    "WalkJump": (lambda: WalkJump(GM.denoiser(1.0), sigma=1.0), walkjump.WalkJumpState,
                 {"init_params": jnp.zeros((2, 1))}),
    "GibbsWalkJump": (lambda: GibbsWalkJump(model), gibbs.GibbsWalkJumpState, {}),
    "MALT": (lambda: MALT(model), malt.MALTState, {}),
    "SGLD": (lambda: SGLD(subsampled_model, control_variates=True), sgld.SGLDState, {}),
    "SGHMC": (lambda: SGHMC(subsampled_model), sgld.SGHMCState, {}),
}


@pytest.mark.parametrize("name", list(KERNELS))
def test_init_sets_only_the_setup_and_the_state_is_the_core_state(name):
    make, core_type, kw = KERNELS[name]
    kernel = make()
    before = dict(kernel.__dict__)
    mcmc = MCMC(kernel, num_warmup=20, num_samples=10, num_chains=2, chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(0), **kw)
    added = set(kernel.__dict__) - set(before)
    assert added <= {"_setup", "_sample_fn"}, added
    assert all(kernel.__dict__[k] is v for k, v in before.items()), "init changed a constructor setting"
    state = mcmc.last_state
    assert isinstance(state, KernelState) and type(state.state) is core_type
    # the algorithm's fields read through the shell's state
    assert getattr(state, kernel.sample_field) is getattr(state.state, kernel.sample_field)
    assert state.mean_accept_prob.shape == (2,) and state.diverging.dtype == jnp.bool_


def test_a_kernel_step_is_the_core_step_on_the_carried_state():
    # after warmup, a MALA kernel step is core.mala_step on the state it carries, with
    # the step key split(rng_key)[1]: nothing is re-packed in between
    logp = lambda x: -0.5 * jnp.sum(x**2 * jnp.array([1.0, 4.0]))  # noqa: E731
    kernel = MALA(potential_fn=lambda x: -logp(x), step_size=0.3, adapt_step_size=False, adapt_mass_matrix=False)
    state = kernel.init(jax.random.key(1), 0, jnp.array([0.5, -0.2]))
    for _ in range(5):
        new = kernel.sample(state, (), {})
        expected, info = langevin.mala_step(jax.random.split(state.rng_key)[1], state.state, logp, 0.3)
        for a, b in zip(jax.tree.leaves(new.state), jax.tree.leaves(expected), strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(new.accept_prob, info.acceptance_rate)
        np.testing.assert_array_equal(new.info.energy_error, info.energy_error)
        state = new
