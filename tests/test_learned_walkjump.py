"""A trained MLP's score drives WalkJump to the mixture's mode occupancy."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from numpyro.infer import MCMC

from numpyro_wjs import GaussianMixture, WalkJump
from numpyro_wjs.denoisers import MLP
from numpyro_wjs.train import train_denoiser

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
    modes = np.asarray(TARGET.mode_of(mcmc.get_samples()))
    occupancy = np.bincount(modes, minlength=3) / modes.size
    # the exact law of the jumps puts its mass within 0.02 of the weights (test_walkjump);
    # a learned denoiser near the Bayes risk adds a small bias; MC error of the occupancy
    # with ~100 effective mode switches per chain is about 0.03: allow 0.08 in total
    np.testing.assert_allclose(occupancy, np.asarray(TARGET.weights), atol=0.08)
    assert all(len(np.unique(m)) == 3 for m in modes.reshape(chains, -1))
