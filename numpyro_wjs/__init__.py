"""numpyro_wjs: Langevin MCMC and walk-jump sampling for NumPyro.

Layers (docs/architecture.md): ``core`` (pure JAX steps), ``infer`` (NumPyro kernels),
``nn`` (denoisers, training, checkpoints, pretrained networks), ``diagnostics``.
The kernels, the exact targets and the pure steps are re-exported here.
"""

from numpyro_wjs.core import gibbs, langevin, malt, metropolis, sgld, walkjump
from numpyro_wjs.infer.gibbs import GibbsWalkJump
from numpyro_wjs.infer.langevin import MALA, ULA, UnderdampedLangevin
from numpyro_wjs.infer.malt import MALT
from numpyro_wjs.infer.numpyro_hooks import link_numpyro_submodules
from numpyro_wjs.infer.sgld import SGHMC, SGLD
from numpyro_wjs.infer.walkjump import WalkJump
from numpyro_wjs.targets import Gaussian, GaussianMixture

__version__ = "0.1.0"

__all__ = [
    "ULA",
    "MALA",
    "UnderdampedLangevin",
    "MALT",
    "SGLD",
    "SGHMC",
    "WalkJump",
    "GibbsWalkJump",
    "GaussianMixture",
    "Gaussian",
    "langevin",
    "metropolis",
    "walkjump",
    "gibbs",
    "malt",
    "sgld",
    "__version__",
]


link_numpyro_submodules()
