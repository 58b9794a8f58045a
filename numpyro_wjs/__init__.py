"""numpyro_wjs: Langevin MCMC and walk-jump sampling for NumPyro.

Layers (docs/architecture.md): ``core`` (pure JAX steps), ``infer`` (NumPyro kernels),
``nn`` (denoisers, training, checkpoints, pretrained networks), ``diagnostics``.
The kernels, the exact targets and the pure steps are re-exported here.
"""

import sys as _sys

from numpyro_wjs.core import gibbs, langevin, metropolis, walkjump
from numpyro_wjs.infer.gibbs import GibbsWalkJump
from numpyro_wjs.infer.langevin import MALA, ULA, UnderdampedLangevin
from numpyro_wjs.infer.walkjump import WalkJump
from numpyro_wjs.targets import Gaussian, GaussianMixture

__version__ = "0.1.0"

__all__ = [
    "ULA",
    "MALA",
    "UnderdampedLangevin",
    "WalkJump",
    "GibbsWalkJump",
    "GaussianMixture",
    "Gaussian",
    "langevin",
    "metropolis",
    "walkjump",
    "gibbs",
    "__version__",
]


def _link_numpyro_submodules() -> None:
    """Bind every loaded ``numpyro.*`` submodule to its parent package.

    When ArviZ is imported before NumPyro, its lazy import of ``numpyro`` makes
    ``numpyro.infer`` load twice and the submodules (``numpyro.infer.initialization``,
    ``numpyro.infer.util``, ...) end up bound to the discarded copy; ``az.from_numpyro``
    then fails with ``AttributeError``. Binding them again is what a normal import does.
    """
    for name, module in list(_sys.modules.items()):
        parent_name, _, child = name.rpartition(".")
        if module is None or not name.startswith("numpyro."):
            continue
        parent = _sys.modules.get(parent_name)
        if parent is not None and getattr(parent, child, None) is not module:
            setattr(parent, child, module)


_link_numpyro_submodules()
