"""Reading MCMC draws through ArviZ's ``convert_to_dataset``, for ``modes``, ``comparison`` and ``plots``.

Accepted inputs: an ArviZ ``DataTree`` (one of its groups, ``posterior`` by default),
an ``xarray`` Dataset or DataArray with dims ``("chain", "draw", ...)``, a dict of
arrays ``(chain, draw, ...)``, a bare array (``(chain, draw, *event)`` or
``(draw, *event)``), or an object whose ``data`` attribute is one of these (a
comparison ``Run``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import arviz as az
import numpy as np
import xarray as xr

_XARRAY = (xr.DataTree, xr.Dataset, xr.DataArray)


def unwrap(obj: Any) -> Any:
    """The ``data`` of a comparison run; anything else unchanged."""
    if hasattr(obj, "data") and not isinstance(obj, (np.ndarray, *_XARRAY)):
        return obj.data
    return obj


def is_array(obj: Any) -> bool:
    """Whether ``obj`` is read as a bare array (not xarray, not a dict, not a run)."""
    obj = unwrap(obj)
    return not isinstance(obj, (*_XARRAY, Mapping))


def dataset(obj: Any, group: str = "posterior") -> xr.Dataset:
    """Group ``group`` of ``obj`` as an ``xarray.Dataset`` (``arviz.convert_to_dataset``).

    Arrays and dict values are read as ``(chain, draw, ...)``; a bare array becomes the
    variable ``"x"``.
    """
    obj = unwrap(obj)
    if isinstance(obj, xr.DataTree) and group not in obj.children:
        raise ValueError(f"The DataTree has no {group!r} group to read draws from; groups: {list(obj.children)}.")
    if isinstance(obj, xr.DataArray) and obj.name is None:
        obj = obj.rename("x")  # convert_to_dataset would name the caller's array in place
    return az.convert_to_dataset(obj, group=group, sample_dims=["chain", "draw"], check_conventions=False)


def variable(ds: xr.Dataset, var_name: str | None, *, prefer: str | None = None, required: bool = True) -> str | None:
    """The variable of ``ds`` to read: ``var_name``, else ``prefer``, else the only one.

    ``None`` when several remain and ``required`` is false.
    """
    names = list(ds.data_vars)
    if var_name is not None:
        if var_name not in names:
            raise ValueError(f"Variable {var_name!r} not found; pass `var_name`, one of {names}.")
        return var_name
    if prefer in names:
        return prefer
    if len(names) == 1:
        return names[0]
    if not required:
        return None
    raise ValueError(f"Pass `var_name`, one of {names}, to choose the draws.")


def draws(
    obj: Any, var_name: str | None = None, *, event_ndim: int = 1, prefer: str | None = None, group: str = "posterior"
) -> xr.DataArray:
    """Draws of one variable of ``obj`` with dims ``("chain", "draw", *event)``.

    A bare array is ``(chain, draw, *event)`` or ``(draw, *event)`` (one chain), told
    apart by ``event_ndim``; a DataArray is read as it is; otherwise the variable is
    chosen by ``variable``. Raises ``ValueError`` for other shapes, missing
    ``chain``/``draw`` dims and empty draws.
    """
    obj = unwrap(obj)
    if is_array(obj):
        x = np.asarray(obj)
        if x.ndim == event_ndim + 1:
            x = x[None]
        if x.ndim != event_ndim + 2:
            raise ValueError(
                f"Expected shape (chain, draw, *event) or (draw, *event) with {event_ndim} event "
                f"dims, got {x.shape}; set `event_ndim` for draws."
            )
        obj = x
    if isinstance(obj, xr.DataArray):
        da = obj
    else:
        ds = dataset(obj, group)
        da = ds[variable(ds, var_name, prefer=prefer)]
    if not {"chain", "draw"} <= set(da.dims):
        raise ValueError(f"Draws need dims ('chain', 'draw', ...), got {da.dims}.")
    da = da.transpose("chain", "draw", ...)
    if 0 in da.shape[:2]:
        raise ValueError(f"Need at least one chain with draws, got shape {da.shape}.")
    return da
