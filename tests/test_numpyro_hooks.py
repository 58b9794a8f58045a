"""NumPyro's private behaviour that ``numpyro_wjs.infer.numpyro_hooks`` relies on is still there."""

import inspect

import jax
import jax.numpy as jnp
from numpyro.infer import MCMC
from numpyro.infer import mcmc as numpyro_mcmc

from numpyro_wjs import ULA
from numpyro_wjs.infer import numpyro_hooks


def test_mcmc_reinitialises_a_kernel_by_the_marker_attribute():
    source = inspect.getsource(numpyro_mcmc.MCMC._single_chain_mcmc)
    assert f'getattr(self.sampler, "{numpyro_hooks.MCMC_INIT_MARKER}", None) is None' in source, (
        "numpyro.infer.MCMC no longer decides re-initialisation by the kernel's "
        f"`{numpyro_hooks.MCMC_INIT_MARKER}`: update numpyro_wjs.infer.numpyro_hooks"
    )


def test_a_run_continued_from_post_warmup_state_does_not_call_init_again():
    kernel = ULA(score_fn=lambda x: -x)
    mcmc = MCMC(kernel, num_warmup=20, num_samples=5, progress_bar=False)
    mcmc.run(jax.random.key(0), init_params=jnp.zeros(2))
    calls = []
    init = kernel.init
    kernel.init = lambda *a, **k: calls.append(1) or init(*a, **k)
    mcmc.post_warmup_state = mcmc.last_state
    mcmc.run(mcmc.post_warmup_state.rng_key)
    assert not calls and mcmc.get_samples().shape == (5, 2)
