"""The two places where the package relies on NumPyro's private behaviour, kept together.

``tests/test_numpyro_hooks.py`` fails when NumPyro changes either of them.

* ``mark_initialised``: ``numpyro.infer.MCMC`` (``_single_chain_mcmc``) calls a kernel's
  ``init`` again before every run whose kernel has no ``_sample_fn`` attribute, even
  with a ``post_warmup_state``. A kernel marks itself initialised by setting it.
* ``link_numpyro_submodules``: when ArviZ is imported before NumPyro, its lazy import
  of ``numpyro`` loads ``numpyro.infer`` twice and leaves the submodules
  (``numpyro.infer.initialization``, ``numpyro.infer.util``, ...) bound to the
  discarded copy, so ``az.from_numpyro`` fails; binding them again is what a normal
  import does. Run once, when ``numpyro_wjs`` is imported.
"""

from __future__ import annotations

import sys

#: The attribute ``numpyro.infer.MCMC`` reads to decide whether a kernel needs ``init``.
MCMC_INIT_MARKER = "_sample_fn"


def mark_initialised(kernel, sample_fn) -> None:
    """Tell ``numpyro.infer.MCMC`` that ``kernel`` has been initialised (see the module note)."""
    setattr(kernel, MCMC_INIT_MARKER, sample_fn)


def link_numpyro_submodules() -> None:
    """Bind every loaded ``numpyro.*`` submodule to its parent package."""
    for name, module in list(sys.modules.items()):
        parent_name, _, child = name.rpartition(".")
        if module is None or not name.startswith("numpyro."):
            continue
        parent = sys.modules.get(parent_name)
        if parent is not None and getattr(parent, child, None) is not module:
            setattr(parent, child, module)
