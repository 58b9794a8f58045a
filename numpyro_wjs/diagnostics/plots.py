"""Figures for mode hopping and walk-jump sampling (matplotlib).

Every function draws on new or given axes and returns the
``matplotlib.figure.Figure``; none calls ``plt.show``, so all of them work
with the non-interactive ``Agg`` backend. Draws are accepted as

* an ArviZ ``DataTree`` (its ``posterior`` group), an ``xarray`` Dataset or DataArray
  with dims ``("chain", "draw", ...)``, read with ArviZ's ``convert_to_dataset``;
* a bare array ``(chain, draw, d)`` (or ``(draw, d)`` for one chain);
* any object with a ``data`` attribute holding one of the above (a comparison run);
* a mapping ``name -> one of the above``, drawn as one panel per name.

Mode ``k`` always has colour ``k`` of the ``tab10`` colormap, in every figure.
Figures are created through ``matplotlib.pyplot`` (so ``plt.show()`` displays
them in scripts); close them with ``plt.close(fig)`` when making many.

Example
-------
>>> import numpy as np
>>> from numpyro_wjs.diagnostics.plots import plot_mode_occupancy
>>> labels = np.random.default_rng(0).integers(0, 3, size=(2, 100))
>>> fig = plot_mode_occupancy(labels, 3, weights=[0.5, 0.3, 0.2])
>>> fig.savefig("occupancy.png")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import matplotlib.colors as mcolors
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from numpyro_wjs.diagnostics._draws import dataset, draws, is_array, unwrap
from numpyro_wjs.validation import positive, positive_int

__all__ = [
    "plot_density_paths",
    "plot_mode_occupancy",
    "plot_sample_grid",
    "plot_trace",
    "plot_walk_jump_strip",
]

_MODE_CMAP = matplotlib.colormaps["tab10"]
_PATH_COLORS = ("#e41a1c", "#ff7f00", "#984ea3", "#a65628", "#f781bf", "#4daf4a", "#222222", "#999999")
_CHAIN_COLORS = ("#111111", "#7f3b08", "#2d004b", "#00441b", "#67001f", "#08306b", "#545454", "#b35806")


def _mode_color(k: int) -> tuple[float, float, float, float]:
    return _MODE_CMAP(k % _MODE_CMAP.N)


# --------------------------------------------------------------------------- inputs
def _as_draws(obj: Any, var_name: str = "x") -> np.ndarray:
    """Draws of ``var_name`` as a float array ``(chain, draw, d)`` (event dims flattened).

    A bare array is ``(draw,)``, ``(draw, d)`` or ``(chain, draw, *event)``.
    """
    event_ndim = 1
    if is_array(obj):
        obj = np.asarray(obj)
        obj = obj[:, None] if obj.ndim == 1 else obj
        event_ndim = max(obj.ndim - 2, 1)
    x = np.asarray(draws(obj, var_name, event_ndim=event_ndim).values)
    x = x.reshape(x.shape[:2] + (-1,))
    if not np.issubdtype(x.dtype, np.number) or x.shape[2] == 0:
        raise ValueError(
            f"Draws must be numeric with at least one coordinate, got shape {x.shape} and dtype {x.dtype}."
        )
    return x.astype(np.float64, copy=False)


def _sample_stat(item: Any, name: str) -> xr.DataArray | None:
    """Sample stat ``name`` of a run's DataTree, or None if it has none."""
    data = unwrap(item)
    if not isinstance(data, xr.DataTree) or "sample_stats" not in data.children:
        return None
    stats = dataset(data, "sample_stats")
    return stats[name] if name in stats.data_vars else None


def _as_mapping(obj: Any) -> dict[str, Any]:
    """``{name: item}``; a single item gets the name ``""``."""
    if isinstance(obj, Mapping) and not isinstance(obj, (xr.DataTree, xr.Dataset)):
        if not obj:
            raise ValueError("Got an empty mapping of runs; pass at least one.")
        return {str(k): v for k, v in obj.items()}
    return {"": obj}


def _new_axes(
    nrows: int,
    ncols: int,
    fig: Figure | None,
    figsize: tuple[float, float],
    layout: str = "constrained",
    **kw: Any,
) -> tuple[Figure, np.ndarray]:
    if fig is None:
        fig = plt.figure(figsize=figsize, layout=layout)
    elif not isinstance(fig, Figure):
        raise TypeError(f"`fig` must be a matplotlib Figure, got {type(fig).__name__}.")
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _check_axes(ax: Any, n: int, name: str = "ax") -> list[Axes]:
    axes = [ax] if isinstance(ax, Axes) else list(np.ravel(np.asarray(ax, dtype=object)))
    if len(axes) != n or not all(isinstance(a, Axes) for a in axes):
        raise ValueError(f"`{name}` must be {n} matplotlib Axes for {n} panel(s), got {ax!r}.")
    return axes


def _mixture_parts(target: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(weights, means, scales)`` of a Gaussian mixture target, else None."""
    if all(hasattr(target, a) for a in ("weights", "means", "scales")):
        return np.asarray(target.weights), np.asarray(target.means), np.asarray(target.scales)
    return None


# --------------------------------------------------------------------------- trace
def plot_trace(
    data: Any,
    target: Any = None,
    coords: Sequence[int] = (0,),
    ax: Axes | Sequence[Axes] | None = None,
    *,
    var_name: str = "x",
    against: str = "draw",
    limit: float | None = None,
) -> Figure:
    """Trace ``x_t[i]`` of every chain and coordinate ``i``, against draw or cost.

    With a Gaussian mixture ``target`` (``weights``, ``means``, ``scales``), each
    component's region ``mu_k[i] +- 2 tau_k`` is shaded in the colour of mode ``k``,
    so a chain that never leaves one band is trapped in that mode.

    Parameters
    ----------
    data : draws or mapping name -> draws
        See the module docstring; a mapping gives one row of panels per name.
    target : GaussianMixture, optional
        Mixture whose mode regions are shaded.
    coords : sequence of int
        Coordinates ``i`` to plot, one column of panels each.
    ax : Axes or sequence of Axes, optional
        ``rows x len(coords)`` axes to draw on (row-major); new ones by default.
    var_name : str
        Variable holding the draws.
    against : {"draw", "evaluations"}
        Horizontal axis: the draw index, or the cumulative number of gradient or
        denoiser evaluations (``sample_stats`` variable ``evaluations`` of a
        comparison run), which puts samplers of different cost per draw on one scale.
    limit : float, optional
        Plot only draws whose horizontal position is at most ``limit``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if against not in ("draw", "evaluations"):
        raise ValueError(f"`against` must be 'draw' or 'evaluations', got {against!r}.")
    items = _as_mapping(data)
    runs = {name: _as_draws(d, var_name) for name, d in items.items()}
    coords = [int(c) for c in np.atleast_1d(coords)]
    if not coords:
        raise ValueError("`coords` must name at least one coordinate.")
    limit = None if limit is None else positive("limit", limit)
    nrows, ncols = len(runs), len(coords)
    if ax is None:
        figsize = (7.0 * ncols + 1.6, 2.0 * nrows + 0.6)
        fig, grid = _new_axes(nrows, ncols, None, figsize, sharex=True, sharey="col")
        axes = list(grid.ravel())
    else:
        axes = _check_axes(ax, nrows * ncols)
        fig = axes[0].figure
    parts = _mixture_parts(target)
    positions = {name: _positions(items[name], x.shape[:2], against) for name, x in runs.items()}
    right = max(float(t[:, -1].max()) for t in positions.values())
    for r, (name, x) in enumerate(runs.items()):
        t = positions[name]
        for c, i in enumerate(coords):
            a = axes[r * ncols + c]
            if not -x.shape[2] <= i < x.shape[2]:
                raise ValueError(f"Coordinate {i} is out of range for draws of dimension {x.shape[2]}.")
            if parts is not None:
                weights, means, scales = parts
                for k in range(weights.size):
                    lo, hi = means[k, i] - 2 * scales[k], means[k, i] + 2 * scales[k]
                    a.axhspan(lo, hi, color=_mode_color(k), alpha=0.15, lw=0)
            for ch in range(x.shape[0]):
                keep = slice(None) if limit is None else t[ch] <= limit
                color = _CHAIN_COLORS[ch % len(_CHAIN_COLORS)]
                a.plot(t[ch][keep], x[ch, keep, i], lw=0.6, color=color, label=f"chain {ch}")
            a.set_ylabel(f"$x_{{{i}}}$")
            a.set_title(f"{name + ': ' if name else ''}trace of coordinate {i}", fontsize=10, loc="left")
    for a in axes:
        a.set_xlim(0, right if limit is None else min(right, limit))
    for a in axes[-ncols:]:
        a.set_xlabel("draw" if against == "draw" else "gradient / denoiser evaluations per chain")
    handles = list(axes[0].get_lines())
    if parts is not None:
        handles += [
            Patch(color=_mode_color(k), alpha=0.3, label=rf"mode {k} ($\pi$={parts[0][k]:.2f})")
            for k in range(parts[0].size)
        ]
    axes[0].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    return fig


def _positions(item: Any, shape: tuple[int, int], against: str) -> np.ndarray:
    """Horizontal positions ``(chain, draw)``: draw index or cumulative evaluations."""
    if against == "draw":
        return np.broadcast_to(np.arange(shape[1], dtype=np.float64), shape)
    evals = _sample_stat(item, "evaluations")
    if evals is None:
        raise ValueError("against='evaluations' needs runs with the sample_stats variable `evaluations` (per draw).")
    evals = np.asarray(evals.transpose("chain", "draw").values, dtype=np.float64)
    if evals.shape != shape:
        raise ValueError(f"sample_stats `evaluations` has shape {evals.shape}, the draws {shape}.")
    return np.cumsum(evals, axis=1)


# --------------------------------------------------------------------------- occupancy
def _as_labels(labels: Any) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim == 1:
        lab = lab[None]
    if lab.ndim != 2 or lab.size == 0:
        raise ValueError(f"`labels` must have shape (chain, draw) or (draw,), got {lab.shape}.")
    if not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(f"Mode labels must be integers, got dtype {lab.dtype}.")
    return lab


def plot_mode_occupancy(
    labels: Any,
    num_modes: int,
    weights: Any = None,
    fig: Figure | None = None,
) -> Figure:
    """Mode labels over time per chain, and the running occupancy against the weights.

    Left panel: a raster with one row per chain and one column per draw, coloured by
    the label ``l_t``. Right panel: the running occupancy
    ``o_k(t) = #{s <= t : l_s = k} / t`` pooled over chains, one line per mode, with
    the true weights ``pi_k`` dashed; an exact sampler's lines converge to them.

    Parameters
    ----------
    labels : int array (chain, draw) or (draw,), or mapping name -> such an array
        Mode labels in ``{0, ..., num_modes - 1}``; a mapping gives one row per name.
    num_modes : int
        ``K``.
    weights : array (K,), optional
        True mode weights (normalised to sum 1).
    fig : Figure, optional
        Figure to draw on (empty); a new one by default.

    Returns
    -------
    matplotlib.figure.Figure
    """
    runs = {name: _as_labels(lab) for name, lab in _as_mapping(labels).items()}
    K = positive_int("num_modes", num_modes)
    for name, lab in runs.items():
        if lab.min() < 0 or lab.max() >= K:
            raise ValueError(
                f"Labels of {name or 'the run'} must lie in [0, {K}), got [{lab.min()}, {lab.max()}]."
            )
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (K,) or np.any(weights < 0) or not weights.sum() > 0:
            raise ValueError(f"`weights` must be {K} non-negative numbers, not all zero; got {weights}.")
        weights = weights / weights.sum()
    fig, axes = _new_axes(len(runs), 2, fig, (11.0, 1.0 + 2.0 * len(runs)), width_ratios=(3, 2))
    cmap = mcolors.ListedColormap([_mode_color(k) for k in range(K)])
    norm = mcolors.BoundaryNorm(np.arange(K + 1) - 0.5, K)
    for r, (name, lab) in enumerate(runs.items()):
        a_img, a_occ = axes[r]
        C, N = lab.shape
        a_img.imshow(
            lab, aspect="auto", interpolation="nearest", cmap=cmap, norm=norm,
            extent=(-0.5, N - 0.5, C - 0.5, -0.5),
        )
        a_img.set_yticks(np.arange(C))
        a_img.set_ylabel(f"{name}\nchain" if name else "chain")
        a_img.set_title(f"{name + ': ' if name else ''}mode of each draw", fontsize=10, loc="left")
        t = np.arange(1, N + 1)
        running = np.cumsum(lab[..., None] == np.arange(K), axis=1).sum(0) / (C * t[:, None])
        for k in range(K):
            a_occ.plot(t, running[:, k], color=_mode_color(k), lw=1.2)
            if weights is not None:
                a_occ.axhline(weights[k], color=_mode_color(k), ls="--", lw=1)
        a_occ.set_ylim(-0.03, 1.03)
        a_occ.set_xlim(1, max(N, 2))
        a_occ.set_ylabel("occupancy")
        a_occ.set_title("running occupancy (all chains)", fontsize=10, loc="left")
        for a in (a_img, a_occ):
            a.set_xlabel("draw")
            a.xaxis.set_major_locator(MaxNLocator(6, integer=True))
    handles = [Patch(color=_mode_color(k), label=f"mode {k}") for k in range(K)]
    if weights is not None:
        handles.append(Line2D([], [], color="k", ls="--", lw=1, label=r"true weight $\pi_k$"))
    axes[0, 1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    return fig


# --------------------------------------------------------------------------- density
def _grid(
    target: Any, runs: dict[str, np.ndarray], extent: Sequence[float] | None, grid_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if extent is None:
        parts = _mixture_parts(target)
        if parts is not None:
            _, means, scales = parts
            pad = 4.0 * float(scales.max())
            lo, hi = means[:, :2].min(0) - pad, means[:, :2].max(0) + pad
        else:
            pts = np.concatenate([x[..., :2].reshape(-1, 2) for x in runs.values()])
            lo, hi = np.quantile(pts, 0.005, axis=0), np.quantile(pts, 0.995, axis=0)
            pad = 0.1 * (hi - lo)
            lo, hi = lo - pad, hi + pad
        extent = (lo[0], hi[0], lo[1], hi[1])
    if len(extent) != 4 or not (extent[0] < extent[1] and extent[2] < extent[3]):
        raise ValueError(f"`extent` must be (xmin, xmax, ymin, ymax) with min < max, got {extent}.")
    gx, gy = np.meshgrid(
        np.linspace(extent[0], extent[1], grid_size), np.linspace(extent[2], extent[3], grid_size)
    )
    dim = int(getattr(target, "dim", 2))
    pts = np.zeros(gx.shape + (max(dim, 2),), np.float32)
    pts[..., 0], pts[..., 1] = gx, gy
    logp = np.asarray(target.log_prob(pts), dtype=np.float64)
    if logp.shape != gx.shape:
        raise ValueError(
            f"`target.log_prob` must map points (..., 2) to (...); got shape {logp.shape} for {pts.shape}."
        )
    return gx, gy, logp


def plot_density_paths(
    target: Any,
    runs_or_draws: Any,
    *,
    chains: Sequence[int] | None = None,
    max_draws: int = 300,
    show_walk: bool = True,
    extent: Sequence[float] | None = None,
    grid_size: int = 200,
    var_name: str = "x",
    fig: Figure | None = None,
) -> Figure:
    """Paths of the chains over the target density ``p(x)`` on ``R^2``, one panel per sampler.

    The density is drawn as filled contours of ``p`` (levels linear in ``p``, so
    light weights look light); each chain's first ``max_draws`` draws are joined by a
    line that starts at a white circle. For walk-jump runs (a ``sample_stats``
    variable ``y``) the walk of the first drawn chain is drawn faintly under the
    jumps when ``show_walk``.

    Parameters
    ----------
    target : object with ``log_prob``
        ``log p`` of points ``(..., d)`` (e.g. a ``GaussianMixture``); for ``d > 2``
        (attribute ``dim``) the density drawn is the slice ``x_2 = ... = 0``.
    runs_or_draws : draws or mapping name -> draws
        See the module docstring. Only the first two coordinates are drawn.
    chains : sequence of int, optional
        Chains to draw; all by default.
    max_draws : int
        Draws per chain to draw.
    show_walk : bool
        Also draw the walk ``y`` of walk-jump runs.
    extent : (xmin, xmax, ymin, ymax), optional
        Plot window; by default the mixture means padded by 4 scales, or the
        range of the draws.
    grid_size : int
        Grid points per axis for the density.
    var_name : str
        Variable holding the draws.
    fig : Figure, optional
        Figure to draw on (empty); a new one by default.

    Returns
    -------
    matplotlib.figure.Figure
    """
    items = _as_mapping(runs_or_draws)
    runs = {name: _as_draws(d, var_name) for name, d in items.items()}
    for name, x in runs.items():
        if x.shape[2] < 2:
            raise ValueError(f"Draws of {name or 'the run'} have dimension {x.shape[2]}; need at least 2.")
    max_draws = positive_int("max_draws", max_draws, 2)
    gx, gy, logp = _grid(target, runs, extent, positive_int("grid_size", grid_size, 2))
    density = np.exp(logp - logp.max())
    n = len(runs)
    ncols = 2 if n == 4 else min(n, 3)
    nrows = math.ceil(n / ncols)
    aspect = float(np.ptp(gy) / np.ptp(gx))
    figsize = (4.2 * ncols + 0.4, (4.0 * min(max(aspect, 0.4), 2.5) + 1.1) * nrows)
    fig, axes = _new_axes(nrows, ncols, fig, figsize, layout="compressed", sharex=True, sharey=True)
    axes = axes.ravel()
    for a in axes[n:]:
        a.set_visible(False)
    for a, (name, x) in zip(axes, runs.items()):
        a.contourf(gx, gy, density, levels=12, cmap="Blues")
        a.contour(gx, gy, density, levels=6, colors="steelblue", linewidths=0.4)
        walk = None
        if show_walk:
            walk = _walk_of(items[name])
        sel = range(x.shape[0]) if chains is None else [int(c) for c in chains]
        m = min(max_draws, x.shape[1])
        for j, ch in enumerate(sel):
            if not 0 <= ch < x.shape[0]:
                raise ValueError(f"Chain {ch} does not exist in {name or 'the run'} ({x.shape[0]} chains).")
            color = _PATH_COLORS[j % len(_PATH_COLORS)]
            if walk is not None and j == 0:
                a.plot(walk[ch, :m, 0], walk[ch, :m, 1], color="0.3", lw=0.4, alpha=0.5,
                       label=f"walk $y$ of chain {ch}")
            a.plot(x[ch, :m, 0], x[ch, :m, 1], "-", color=color, lw=0.8, alpha=0.9, marker=".", ms=2.5,
                   label=f"chain {ch}")
            a.plot(x[ch, 0, 0], x[ch, 0, 1], "o", mfc="white", mec="k", ms=6, zorder=5)
        a.set_xlim(gx.min(), gx.max())
        a.set_ylim(gy.min(), gy.max())
        a.set_aspect("equal")
        a.set_title(f"{name + ': ' if name else ''}first {m} draws", fontsize=10)
        a.set_xlabel("$x_0$")
        a.set_ylabel("$x_1$")
        a.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=3, fontsize=7, frameon=False)
    return fig


def _walk_of(item: Any) -> np.ndarray | None:
    """The walk ``y`` (chain, draw, d) of a walk-jump run, if it is recorded."""
    y = _sample_stat(item, "y")
    if y is None:
        return None
    y = _as_draws(y)
    return y if y.shape[2] >= 2 else None


# --------------------------------------------------------------------------- images
def _as_images(images: Any, name: str) -> np.ndarray:
    """Images ``(N, H, W)`` (gray) or ``(N, H, W, 3|4)`` (colour)."""
    im = np.asarray(images, dtype=np.float64)
    if im.ndim == 4 and im.shape[-1] == 1:
        im = im[..., 0]
    if not (im.ndim == 3 or (im.ndim == 4 and im.shape[-1] in (3, 4))) or im.shape[0] == 0:
        raise ValueError(f"`{name}` must be images (N, H, W), (N, H, W, 1) or (N, H, W, 3), got {im.shape}.")
    if not np.all(np.isfinite(im)):
        raise ValueError(f"`{name}` holds non-finite pixels.")
    return im


def _show(a: Axes, image: np.ndarray, vmin: float, vmax: float, cmap: str) -> None:
    if image.ndim == 3:
        a.imshow(np.clip((image - vmin) / (vmax - vmin), 0, 1), interpolation="nearest")
    else:
        a.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    a.set_xticks([])
    a.set_yticks([])


def plot_walk_jump_strip(
    walk: Any,
    jumps: Any,
    num_frames: int = 10,
    *,
    labels: Any = None,
    steps: Sequence[int] | None = None,
    vmin: float = 0.0,
    vmax: float = 1.0,
    cmap: str = "gray",
    fig: Figure | None = None,
) -> Figure:
    """One chain of walk-jump sampling on images: the walk ``y_t`` above, the jumps
    ``xhat(y_t)`` below, at ``num_frames`` evenly spaced times.

    Parameters
    ----------
    walk, jumps : arrays (N, H, W[, C])
        The walk and its jumps for one chain (``C`` = 1 or 3), same shape.
    num_frames : int
        Number of columns (at most ``N``).
    labels : int array (N,), optional
        Classifier labels of the jumps, shown under them.
    steps : sequence of int, optional
        Step number of each of the ``N`` frames (default ``0..N-1``), for the titles.
    vmin, vmax : float
        Pixel range mapped to black and white (``[0, 1]`` by default, the library's
        pixel convention); the noisy walk is clipped to it.
    cmap : str
        Colormap of gray images.
    fig : Figure, optional
        Figure to draw on (empty); a new one by default.

    Returns
    -------
    matplotlib.figure.Figure
    """
    walk, jumps = _as_images(walk, "walk"), _as_images(jumps, "jumps")
    if walk.shape != jumps.shape:
        raise ValueError(f"`walk` {walk.shape} and `jumps` {jumps.shape} must have the same shape.")
    N = walk.shape[0]
    num_frames = positive_int("num_frames", num_frames)
    if not vmax > vmin:
        raise ValueError(f"Need vmin < vmax, got {vmin}, {vmax}.")
    steps = np.arange(N) if steps is None else np.asarray(steps)
    if steps.shape != (N,):
        raise ValueError(f"`steps` must have one entry per frame ({N}), got shape {steps.shape}.")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (N,):
            raise ValueError(f"`labels` must have shape ({N},), got {labels.shape}.")
    n = min(num_frames, N)
    idx = np.unique(np.round(np.linspace(0, N - 1, n)).astype(int))
    fig, axes = _new_axes(2, idx.size, fig, (1.1 * idx.size + 0.6, 2.7), layout="compressed")
    for j, t in enumerate(idx):
        _show(axes[0, j], walk[t], vmin, vmax, cmap)
        _show(axes[1, j], jumps[t], vmin, vmax, cmap)
        axes[0, j].set_title(f"t={steps[t]}", fontsize=8)
        if labels is not None:
            axes[1, j].set_xlabel(f"label {labels[t]}", fontsize=8)
    axes[0, 0].set_ylabel("walk $y_t$", fontsize=9)
    axes[1, 0].set_ylabel(r"jump $\hat{x}(y_t)$", fontsize=9)
    return fig


def plot_sample_grid(
    images: Any,
    labels: Any = None,
    ncols: int = 8,
    *,
    vmin: float = 0.0,
    vmax: float = 1.0,
    cmap: str = "gray",
    title: str | None = None,
    fig: Figure | None = None,
) -> Figure:
    """A grid of images (e.g. jump samples), each titled with its label.

    Parameters
    ----------
    images : array (N, H, W[, C])
        Images with ``C`` = 1 or 3.
    labels : int array (N,), optional
        Labels (e.g. from a classifier) shown above each image.
    ncols : int
        Images per row.
    vmin, vmax : float
        Pixel range mapped to black and white.
    cmap : str
        Colormap of gray images.
    title : str, optional
        Figure title.
    fig : Figure, optional
        Figure to draw on (empty); a new one by default.

    Returns
    -------
    matplotlib.figure.Figure
    """
    im = _as_images(images, "images")
    N = im.shape[0]
    ncols = positive_int("ncols", ncols)
    if not vmax > vmin:
        raise ValueError(f"Need vmin < vmax, got {vmin}, {vmax}.")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (N,):
            raise ValueError(f"`labels` must have shape ({N},), got {labels.shape}.")
    ncols = min(int(ncols), N)
    nrows = math.ceil(N / ncols)
    fig, axes = _new_axes(
        nrows, ncols, fig, (1.0 * ncols + 0.2, 1.15 * nrows + (0.4 if title else 0.1)), layout="compressed"
    )
    for j, a in enumerate(axes.ravel()):
        if j >= N:
            a.set_visible(False)
            continue
        _show(a, im[j], vmin, vmax, cmap)
        if labels is not None:
            a.set_title(str(labels[j]), fontsize=9, pad=2)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
