"""numpyro_wjs: Langevin MCMC and walk-jump sampling for NumPyro."""

from . import langevin
from .kernels import MALA, ULA, UnderdampedLangevin
from .targets import Gaussian, GaussianMixture
from .walkjump import WalkJump

__version__ = "0.1.0"

__all__ = ["langevin", "ULA", "MALA", "UnderdampedLangevin", "WalkJump", "GaussianMixture", "Gaussian", "__version__"]
