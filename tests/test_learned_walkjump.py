"""A trained MLP's score drives WalkJump to the mixture's mode occupancy."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from mc import N_SE, mcse
from numpyro.infer import MCMC

from numpyro_wjs import GaussianMixture, WalkJump
from numpyro_wjs.nn.denoisers import MLP
from numpyro_wjs.nn.train import train_denoiser

TARGET = GaussianMixture([0.2, 0.3, 0.5], [[-3.0, 0.0], [0.0, 3.0], [3.0, 0.0]], [0.6, 0.6, 0.6])
SIGMA = 1.5


def test_learned_denoiser_walk_jump_occupancy():
    data = np.asarray(TARGET.sample(jax.random.key(0), (20_000,)), np.float32)
    net = MLP(2, (64, 64), sigma_data=2.0, rngs=nnx.Rngs(0))
    net = train_denoiser(net, data, SIGMA, steps=800, batch_size=256, progress_bar=False).ema_model

    chains = 4
    mcmc = MCMC(WalkJump(net, SIGMA), num_warmup=300, num_samples=3000, num_chains=chains,
                chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(1), init_params=jnp.zeros((chains, 2)))
    modes = np.asarray(TARGET.mode_of(mcmc.get_samples(group_by_chain=True)["x"]))
    # Exact draws Y = X + sigma N locate the two known errors of the occupancy: the exact
    # jump law's own offset from the weights (modes overlap a little at this sigma), and the
    # learned denoiser's misassigned jumps on the same Y. The chain adds Monte Carlo error
    # (5 MCSE from its own autocorrelation).
    kx, kn = jax.random.split(jax.random.key(2))
    x = TARGET.sample(kx, (200_000,))
    y = x + SIGMA * jax.random.normal(kn, x.shape)
    exact_modes = np.asarray(TARGET.mode_of(TARGET.denoiser(SIGMA)(y)))
    net_modes = np.asarray(TARGET.mode_of(jax.vmap(net)(y)))
    for k in range(3):
        ind = (modes == k).astype(float)
        law_offset = abs((exact_modes == k).mean() - float(TARGET.weights[k]))
        net_offset = abs((net_modes == k).mean() - (exact_modes == k).mean())
        allowed = N_SE * mcse(ind) + law_offset + net_offset
        assert abs(ind.mean() - float(TARGET.weights[k])) <= allowed, (k, ind.mean(), allowed)
    assert all(len(np.unique(m)) == 3 for m in modes)
