"""Mode-hopping diagnostics for MCMC runs on multimodal targets (theory.md, section 7).

Every draw ``x_t`` of chain ``c`` gets a mode label ``l_t = m(x_t)`` in
``{0, ..., K-1}`` (mixtures: the most responsible component; images: a
classifier's label). Per chain, with ``n`` draws:

* switches ``S = #{t >= 1 : l_t != l_{t-1}}`` and ``1000 S / (n - 1)``;
* occupancy ``o_k = #{t : l_t = k} / n`` and, for true weights ``pi``, the total
  variation distance ``TV = 1/2 sum_k |o_k - pi_k|``;
* steps to visit all modes ``1 + max_k min{t : l_t = k}`` (``-1`` if some mode is
  never visited) and the number of distinct modes visited;
* round trips between extreme modes ``a`` and ``b``: drop all draws not in
  ``{a, b}`` and merge repeated labels, leaving an alternating word such as
  ``b a b a b``; every ``a`` after the first closes one cycle ``a -> b -> a``, so
  ``round_trips = max(#a-runs - 1, 0)``;

and across chains the ArviZ bulk ESS of each indicator ``1[l_t = k]``.

Sample quality: ``frechet_distance`` between Gaussians fitted to two feature sets
(e.g. a classifier's features of samples and of held-out data). For image samplers
``classifier_scores`` puts both together: *confident* label changes (between
consecutive draws the classifier labels with probability ``>= threshold``, the
others skipped) per 1,000 walk steps, the share of confident draws, the total
variation of the confident class shares to uniform, and the Frechet distance of
thinned draws to held-out data next to its same-size floor (data against data).

Example
-------
>>> import numpy as np
>>> ds = mode_hopping(np.array([[0, 1, 1, 0, 1, 0], [1, 1, 1, 0, 0, 0]]))
>>> ds.switches.values.tolist(), ds.round_trips.values.tolist()
([4, 1], [2, 0])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import arviz as az
import numpy as np
import xarray as xr

from numpyro_wjs.diagnostics._draws import draws
from numpyro_wjs.validation import positive_int

__all__ = ["attach", "classifier_scores", "frechet_distance", "mode_hopping"]


def mode_hopping(
    data: Any,
    labeller: Any = None,
    *,
    weights: Any = None,
    var_name: str | None = None,
    num_modes: int | None = None,
    extremes: tuple[int, int] | None = None,
    event_ndim: int = 1,
    batch_size: int = 10_000,
) -> xr.Dataset:
    """Mode-hopping statistics of MCMC draws or of their mode labels.

    Parameters
    ----------
    data : DataTree, Dataset, DataArray, dict of arrays, array or list of 1-D arrays
        Draws with leading dims ``(chain, draw)``, read with ArviZ's
        ``convert_to_dataset`` (xarray: named dims; a DataTree is read from its
        ``posterior`` group; a comparison ``Run`` from its ``data``). A bare array
        of draws is ``(chain, draw, *event)`` or ``(draw, *event)`` (one chain),
        told apart by ``event_ndim``. Without ``labeller``, ``data`` are integer labels of shape
        ``(chain, draw)`` or ``(draw,)``, or a list of 1-D label arrays, one per
        chain, whose lengths may differ.
    labeller : None, object with ``mode_of`` or callable
        Maps a batch ``(B, *event)`` of draws to ``(B,)`` integer labels (draws must be
        finite: a non-finite draw raises ``ValueError`` with the count), e.g.
        ``GaussianMixture`` (``mode_of``; its ``weights`` and ``K`` are the defaults of
        ``weights`` and ``num_modes``) or an image classifier.
    weights : array (K,), optional
        True mode weights ``pi``; normalised to sum 1. Without them the TV
        distances are omitted.
    var_name : str, optional
        Variable to read from a DataTree or Dataset holding several.
    num_modes : int, optional
        ``K``; defaults to ``labeller.K``, ``len(weights)``, or the largest label + 1.
    extremes : (int, int), optional
        Modes ``(a, b)`` for round trips, default ``(0, K - 1)``.
    event_ndim : int
        Number of event dims of a bare array of draws (ignored for xarray input).
    batch_size : int
        Draws per labeller call; the last batch is padded to this size so that a
        jitted labeller compiles once.

    Returns
    -------
    xarray.Dataset
        Dims ``chain`` and ``mode``; variables ``switches``, ``switches_per_1000``,
        ``occupancy``, ``occupancy_all`` (pooled, weighted by chain length),
        ``tv_distance``, ``tv_distance_all`` (only with weights),
        ``steps_to_visit_all``, ``round_trips``, ``modes_visited``,
        ``ess_mode_indicator``; attrs ``num_chains``, ``num_draws`` (per chain),
        ``num_modes``, ``extremes`` and ``weights`` (when known).
        ``ess_mode_indicator`` is NaN for a mode whose indicator is constant
        (never or always occupied), for chains of unequal length, and for fewer
        than 4 draws per chain, as its ``note`` attribute says.
    """
    chain_coord, labels = _read_labels(data, labeller, var_name, event_ndim, batch_size)
    if weights is None and labeller is not None and hasattr(labeller, "weights"):
        weights = labeller.weights
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim != 1 or weights.size == 0:
            raise ValueError(f"`weights` must have shape (K,) with K >= 1, got {weights.shape}.")
        if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
            raise ValueError("`weights` must be finite, non-negative and not all zero.")
        weights = weights / weights.sum()
    max_label = max(int(chain.max()) for chain in labels)
    if num_modes is None:
        num_modes = getattr(labeller, "K", None)
    if num_modes is None:
        num_modes = weights.size if weights is not None else max_label + 1
    num_modes = int(num_modes)
    if num_modes < 2:
        raise ValueError(f"Need num_modes >= 2 for mode hopping, got {num_modes}; pass `num_modes`.")
    if weights is not None and weights.size != num_modes:
        raise ValueError(f"`weights` has length {weights.size} but num_modes is {num_modes}.")
    if max_label >= num_modes:
        raise ValueError(f"Label {max_label} is out of range for num_modes={num_modes}.")
    a, b = (0, num_modes - 1) if extremes is None else (int(e) for e in extremes)
    if a == b or not (0 <= a < num_modes and 0 <= b < num_modes):
        raise ValueError(f"`extremes` must be two distinct modes in [0, {num_modes}), got {(a, b)}.")

    lengths = np.array([chain.size for chain in labels])
    flat = np.concatenate(labels)
    stats = _chain_stats(flat, lengths, num_modes, a, b)
    occupancy = stats["counts"] / lengths[:, None]
    occupancy_all = stats["counts"].sum(0) / lengths.sum()
    chain_dim, mode_dim = ("chain",), ("mode",)
    ds = xr.Dataset(
        {
            "switches": (chain_dim, stats["switches"]),
            "switches_per_1000": (chain_dim, stats["switches"] / (lengths - 1) * 1000.0),
            "occupancy": (("chain", "mode"), occupancy),
            "occupancy_all": (mode_dim, occupancy_all),
            "steps_to_visit_all": (chain_dim, stats["steps_to_visit_all"]),
            "round_trips": (chain_dim, stats["round_trips"]),
            "modes_visited": (chain_dim, stats["modes_visited"]),
        },
        coords={"chain": chain_coord, "mode": np.arange(num_modes)},
        attrs={
            "num_chains": lengths.size,
            "num_draws": lengths.tolist(),
            "num_modes": num_modes,
            "extremes": [a, b],
        },
    )
    if weights is not None:
        ds["tv_distance"] = (chain_dim, 0.5 * np.abs(occupancy - weights).sum(1))
        ds["tv_distance_all"] = 0.5 * np.abs(occupancy_all - weights).sum()
        ds.attrs["weights"] = weights.tolist()
    equal = bool(np.all(lengths == lengths[0]))
    ess = _indicator_ess(flat.reshape(lengths.size, -1), occupancy_all) if equal else None
    ds["ess_mode_indicator"] = xr.DataArray(
        np.full(num_modes, np.nan) if ess is None else ess,
        dims=mode_dim,
        attrs={
            "note": "bulk ESS of 1[label == k]; NaN where the indicator is constant, "
            "chains differ in length, or chains have fewer than 4 draws"
        },
    )
    return ds


def attach(data_tree: xr.DataTree, ds: xr.Dataset, group: str = "mode_hopping") -> xr.DataTree:
    """Return a shallow copy of ``data_tree`` with ``ds`` as group ``group``.

    The input tree is left unchanged; a ``ValueError`` is raised if the group exists.
    """
    if not isinstance(data_tree, xr.DataTree):
        raise TypeError(f"`data_tree` must be an xarray.DataTree, got {type(data_tree).__name__}.")
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"`ds` must be an xarray.Dataset, got {type(ds).__name__}.")
    if group in data_tree.children:
        raise ValueError(f"Group {group!r} already exists; choose another `group`.")
    tree = data_tree.copy()
    tree[group] = xr.DataTree(ds)
    return tree


def frechet_distance(features_a: Any, features_b: Any) -> float:
    """Frechet distance between Gaussians fitted to two feature sets.

    With sample means ``mu_a, mu_b`` and unbiased sample covariances ``S_a, S_b`` of
    the rows,

    ``FD = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2})``,

    the squared 2-Wasserstein distance between ``N(mu_a, S_a)`` and
    ``N(mu_b, S_b)`` (on classifier features of images: the FID recipe). Computed in
    float64 with symmetric eigendecompositions; eigenvalues below zero from round-off
    are set to zero, and so is a total below zero. The estimate is biased upwards by
    ``O(d / n)`` for ``n`` rows in ``d`` dimensions: compare sets of equal size.

    Parameters
    ----------
    features_a, features_b : array (n_a, d), (n_b, d)
        Feature vectors, one per row; ``n_a, n_b >= 2``, same ``d``.

    Returns
    -------
    float
        ``FD >= 0``; zero for identical sets (up to round-off).

    Raises
    ------
    TypeError
        Non-numeric input.
    ValueError
        Not 2-D, different ``d``, fewer than 2 rows, or non-finite values.

    Example
    -------
    >>> import numpy as np
    >>> a = np.random.default_rng(0).standard_normal((1000, 3))
    >>> round(frechet_distance(a, a + [2.0, 0.0, 0.0]), 6)
    4.0
    """
    a = _as_features(features_a, "features_a")
    b = _as_features(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"features_a and features_b must have the same number of columns d, got "
            f"{a.shape[1]} and {b.shape[1]}."
        )
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False, ddof=1), np.cov(b, rowvar=False, ddof=1)
    root_a = _psd_sqrt(np.atleast_2d(cov_a))
    middle = root_a @ np.atleast_2d(cov_b) @ root_a
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (middle + middle.T)), 0.0, None)).sum()
    distance = np.sum((mean_a - mean_b) ** 2) + np.trace(np.atleast_2d(cov_a + cov_b)) - 2.0 * cross
    return max(float(distance), 0.0)


def classifier_scores(
    draws: Any,
    classifier: Any,
    heldout: Any,
    reference: Any,
    *,
    steps_per_draw: int = 1,
    evaluations_per_draw: int | None = None,
    thin_steps: int = 50,
    threshold: float = 0.9,
    seed: int = 0,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Mixing and quality of image draws, scored by a classifier.

    With ``p_t = classifier.probs(x_t)`` and features ``phi_t = classifier.features(x_t)``
    of the draws ``x_t`` of each chain:

    * ``confident``: the share of draws with ``max_k p_tk >= threshold``;
    * ``changes_per_1000_steps``: changes of ``argmax_k p_tk`` between consecutive
      confident draws of a chain (unconfident draws skipped), per 1,000 walk steps
      (``steps_per_draw`` per draw); ``changes_per_1000_evaluations`` the same per
      1,000 network calls when ``evaluations_per_draw`` is given;
    * ``class_tv``: ``1/2 sum_k |f_k - 1/K|`` for the class shares ``f`` of the
      confident draws (``K`` classes);
    * ``frechet``: ``frechet_distance`` between the features of one draw every
      ``thin_steps`` walk steps (the rest are too correlated to count as samples) and
      those of ``heldout``; ``frechet_floor``: the same for as many rows of
      ``reference`` (other samples of the data, drawn with ``seed``), the value a
      perfect sampler reaches at this sample size; ``frechet_ratio`` their ratio;
      ``frechet_samples`` the number of draws scored.

    Parameters
    ----------
    draws : array (chain, draw, *event)
    classifier : object with ``probs(x)`` and ``features(x)`` on batches ``(B, *event)``
    heldout, reference : arrays (n, *event)
        Held-out data, and data for the floor (e.g. training data).
    steps_per_draw, evaluations_per_draw, thin_steps : int
    threshold : float
        Confidence of a confident label, in ``(0, 1]``.
    seed : int
        Seed of the choice of ``reference`` rows.
    batch_size : int
        Images per classifier call.

    Returns
    -------
    dict of float
    """
    x = np.asarray(draws)
    if x.ndim < 3:
        raise ValueError(f"draws must have shape (chain, draw, *event), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("draws hold NaN or inf; look at the sampler's `diverging` field first")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    steps_per_draw = positive_int("steps_per_draw", steps_per_draw)
    thin_steps = positive_int("thin_steps", thin_steps)
    C, N = x.shape[:2]

    def batched(fn, images):
        images = np.asarray(images, np.float32)
        return np.concatenate([np.asarray(fn(images[i : i + batch_size]))
                               for i in range(0, images.shape[0], batch_size)])

    probs = batched(classifier.probs, x.reshape(C * N, *x.shape[2:])).reshape(C, N, -1)
    confident, labels = probs.max(-1) >= threshold, probs.argmax(-1)
    changes = sum(int(np.sum(np.diff(labels[c][confident[c]]) != 0)) for c in range(C))
    shares = np.bincount(labels[confident], minlength=probs.shape[-1]) / max(int(confident.sum()), 1)
    thin = max(1, thin_steps // steps_per_draw)
    scored = x[:, ::thin].reshape(-1, *x.shape[2:])
    heldout_features = batched(classifier.features, heldout)
    rows = np.random.default_rng(seed).choice(len(reference), scored.shape[0], replace=False)
    frechet = frechet_distance(batched(classifier.features, scored), heldout_features)
    floor = frechet_distance(batched(classifier.features, np.asarray(reference)[rows]), heldout_features)
    walk_steps = C * N * steps_per_draw
    scores = {
        "confident": float(confident.mean()),
        "changes_per_1000_steps": 1000.0 * changes / walk_steps,
        "class_tv": 0.5 * float(np.abs(shares - 1.0 / probs.shape[-1]).sum()),
        "frechet": frechet,
        "frechet_floor": floor,
        "frechet_ratio": frechet / floor,
        "frechet_samples": int(scored.shape[0]),
    }
    if evaluations_per_draw is not None:
        scores["changes_per_1000_evaluations"] = 1000.0 * changes / (C * N * evaluations_per_draw)
    return scores


def _as_features(x: Any, name: str) -> np.ndarray:
    """``x`` as a finite float64 ``(n, d)`` array with ``n >= 2``."""
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise TypeError(f"`{name}` must be a real numeric array, got dtype {x.dtype}.")
    if x.ndim != 2:
        raise ValueError(
            f"`{name}` must have shape (n, d), one feature vector per row, got {x.shape}; "
            "reshape it, e.g. x.reshape(n, -1)."
        )
    if x.shape[0] < 2 or x.shape[1] < 1:
        raise ValueError(
            f"`{name}` needs at least 2 rows (for a covariance) and 1 column, got {x.shape}."
        )
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"`{name}` holds non-finite values (NaN or inf); remove or fix them.")
    return x


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root ``V diag(sqrt(max(l, 0))) V^T`` of a symmetric PSD matrix."""
    values, vectors = np.linalg.eigh(0.5 * (s + s.T))
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def _chain_stats(flat: np.ndarray, lengths: np.ndarray, K: int, a: int, b: int) -> dict:
    """Per-chain counts on the concatenated labels ``flat`` of chains of ``lengths``."""
    C = lengths.size
    chain = np.repeat(np.arange(C), lengths)
    pos = np.arange(flat.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    switched = (flat[1:] != flat[:-1]) & (pos[1:] != 0)
    key = chain * K + flat
    counts = np.bincount(key, minlength=C * K).reshape(C, K)
    first = np.full(C * K, flat.size)
    np.minimum.at(first, key, pos)
    visited = counts > 0
    in_ab = (flat == a) | (flat == b)
    is_a, ab_chain = flat[in_ab] == a, chain[in_ab]
    new_a_run = is_a.copy()
    new_a_run[1:] &= ~(is_a[:-1] & (ab_chain[1:] == ab_chain[:-1]))
    a_runs = np.bincount(ab_chain[new_a_run], minlength=C)
    return {
        "switches": np.bincount(chain[1:][switched], minlength=C),
        "counts": counts,
        "steps_to_visit_all": np.where(visited.all(1), first.reshape(C, K).max(1) + 1, -1),
        "round_trips": np.maximum(a_runs - 1, 0),
        "modes_visited": visited.sum(1),
    }


def _indicator_ess(labels: np.ndarray, occupancy_all: np.ndarray) -> np.ndarray:
    """Bulk ESS of ``1[labels == k]`` over ``(chain, draw)``; NaN for constant ones.

    An indicator takes two values, so its rank normalisation is affine in it and
    the bulk ESS equals the ESS of the split chains ("mean" method), which skips the sort.
    """
    ess = np.full(occupancy_all.size, np.nan)
    live = np.flatnonzero((occupancy_all > 0) & (occupancy_all < 1))
    if live.size and labels.shape[1] >= 4:
        indicator = (labels[None] == live[:, None, None]).astype(np.float64)
        ess[live] = az.ess(indicator, chain_axis=-2, draw_axis=-1, method="mean")
    return ess


def _read_labels(
    data: Any, labeller: Any, var_name: str | None, event_ndim: int, batch_size: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Chain coordinate and one 1-D integer label array per chain."""
    if isinstance(data, (list, tuple)):
        chains = [np.asarray(c) for c in data]
        if labeller is not None:
            chains = [_apply(labeller, c, batch_size) for c in chains]
        if not chains or any(c.ndim != 1 for c in chains):
            raise ValueError("A list `data` must hold one 1-D label array per chain.")
        return np.arange(len(chains)), [_check_labels(c) for c in chains]
    da = draws(data, var_name, event_ndim=0 if labeller is None else event_ndim)
    if labeller is None and da.ndim != 2:
        raise ValueError(
            f"Mode labels must have shape (chain, draw) or (draw,), got dims {da.dims}; pass a `labeller`."
        )
    x = np.asarray(da.values)
    C, N = x.shape[:2]
    if labeller is not None:
        x = _apply(labeller, x.reshape((C * N,) + x.shape[2:]), batch_size).reshape(C, N)
    return da["chain"].values, [_check_labels(c) for c in x]


def _apply(labeller: Any, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Labels of ``x`` (B, *event) in padded batches of ``batch_size``."""
    fn: Callable = getattr(labeller, "mode_of", labeller)
    if not callable(fn):
        raise TypeError("`labeller` must have a `mode_of` method or be callable.")
    batch_size = positive_int("batch_size", batch_size)
    bad = ~np.isfinite(x.reshape(x.shape[0], -1)).all(1) if np.issubdtype(x.dtype, np.inexact) else np.zeros(0)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} of {bad.size} draws are not finite (NaN or inf), so they belong to no mode; "
            "look at the sampler's `diverging` field and drop or fix those chains before mode_hopping."
        )
    n, out = x.shape[0], []
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    size = min(batch_size, n)
    for start in range(0, n, size):
        batch = x[start : start + size]
        pad = size - batch.shape[0]
        if pad:
            batch = np.concatenate([batch, np.repeat(batch[:1], pad, axis=0)])
        labels = np.asarray(fn(batch))
        if labels.shape != (size,):
            raise ValueError(f"`labeller` must map {size} draws to shape ({size},), got {labels.shape}.")
        out.append(labels[: size - pad])
    return np.concatenate(out)


def _check_labels(labels: np.ndarray) -> np.ndarray:
    """``labels`` as int64 after checking the dtype, sign and length."""
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"Mode labels must be integers, got dtype {labels.dtype}.")
    if labels.size < 2:
        raise ValueError(f"Every chain needs at least 2 draws, got {labels.size}.")
    if labels.min() < 0:
        raise ValueError(f"Mode labels must be >= 0, got {labels.min()}.")
    return labels.astype(np.int64, copy=False)
