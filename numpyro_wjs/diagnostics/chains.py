"""Chains that stray from the others: an unadjusted chain's excursion, flagged after the run.

An unadjusted kernel (``ULA``, ``UnderdampedLangevin``, walk-jump) has no Metropolis test
that would stop it, and its estimated acceptance can stay near 1 while one chain wanders
where the exact posterior has almost no mass. Several chains from dispersed starts show
it: a chain whose mean of some coordinate lies many within-chain standard deviations
from the other chains' means. For chains that sample the same law, a chain mean differs
from the others by about ``sd / sqrt(ESS)``, far below ``sd``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from numpyro_wjs.diagnostics._draws import dataset

__all__ = ["STRAY_THRESHOLD", "stray_chains", "warn_stray_chains"]

#: A chain strays when a coordinate's chain mean is this many within-chain sds from the others'.
STRAY_THRESHOLD = 5.0


def stray_chains(data: Any, *, threshold: float = STRAY_THRESHOLD, var_names=None,
                 group: str = "posterior") -> dict[str, list[int]]:
    """``{variable: chains}`` whose mean of some coordinate strays from the other chains.

    For every coordinate, with ``m_c`` and ``s_c`` chain ``c``'s mean and standard deviation,
    chain ``c`` strays when ``|m_c - median_k m_k| > threshold * median_k s_k`` (the
    medians over all chains, so one stray chain moves neither). Needs at least 3 chains;
    variables with fewer chains, or without spread, are skipped. ``data``: an ArviZ
    DataTree (or anything ``numpyro_wjs.diagnostics`` reads as draws ``(chain, draw, ...)``).
    """
    ds = dataset(data, group)
    names = list(ds.data_vars) if var_names is None else list(var_names)
    out = {}
    for name in names:
        x = np.asarray(ds[name], dtype=np.float64)
        if x.shape[0] < 3:
            continue
        x = x.reshape(x.shape[0], x.shape[1], -1)
        means, sds = x.mean(1), x.std(1)
        scale = np.median(sds, axis=0)
        far = np.abs(means - np.median(means, axis=0)) > threshold * np.where(scale > 0, scale, np.inf)
        chains = np.nonzero(far.any(1) | ~np.isfinite(means).all(1))[0]
        if chains.size:
            out[name] = chains.tolist()
    return out


def warn_stray_chains(data: Any, **kwargs) -> dict[str, list[int]]:
    """``stray_chains``, with a ``RuntimeWarning`` naming them when there are any."""
    found = stray_chains(data, **kwargs)
    if found:
        listed = "; ".join(f"{name}: chains {chains}" for name, chains in found.items())
        warnings.warn(
            f"chains stray from the others ({listed}): an excursion (an unadjusted kernel's bias, "
            "or a chain stuck in another mode). Check them (traces, R-hat); on a model or "
            "potential use an exact kernel (MALT, MALA, NUTS) or a smaller step.",
            RuntimeWarning,
            stacklevel=2,
        )
    return found
