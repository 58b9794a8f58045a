"""Samplers compared at an equal budget of gradient or denoiser evaluations.

Every sampler runs through ``numpyro.infer.MCMC`` with the same number of chains,
the same initial points and the same random keys (a fixed-cost kernel in one run
with its warmup; HMC/NUTS in ``warmup``, then sampling runs continued from
``post_warmup_state``), and its sampling phase is cut to the same number ``B`` of
evaluations of ``grad log p`` (or of the denoiser, for walk-jump) per chain. The
cost ``e`` of a draw is ``evaluations_per_draw(kernel)``:

* ``numpyro.infer.BarkerMH`` and the package's kernels, which state their cost as
  ``kernel.evaluations_per_draw``: ``ULA``, ``MALA`` and ``UnderdampedLangevin``
  ``e = 1``; ``WalkJump`` ``e = jump_every`` (the jump ``y + sigma^2 grad log p_Y(y)``
  is free), plus ``(M - 1)(num_inner_steps + 1)`` in sequential mode with
  ``M > 1`` measurements (per extra measurement one call for the initial score and
  one per inner step); the Gibbs
  walk-jump on a model (``GibbsWalkJump``) ``1 + num_mala_steps`` gradients
  (the hop from the noisy point, then the MALA refinement). One run of
  ``n = floor(B / e)`` draws (chains vectorized, except BarkerMH's, which run one
  after another);
* ``numpyro.infer.HMC`` / ``numpyro.infer.NUTS``: one gradient per leapfrog step,
  counted exactly from the ``num_steps`` of every draw. Chains run one after another
  (``lax.map``); sampling runs continue from the last state, each sized for 25 %
  more than the remaining budget at the leapfrog steps per draw seen so far (at
  first those of the last quarter of warmup), until the sampling-phase count (mean
  over chains) reaches ``B``; the draws are then cut at the last one whose
  cumulative count is ``<= B`` (the cut draws are computed and count in the wall
  time).

So the evaluations per chain of every run satisfy ``B - c < evaluations <= B``,
with ``c`` the cost of one more draw (``e``, or for NUTS at most
``2^max_tree_depth - 1``). Mode statistics (theory.md, section 7) come from
``numpyro_wjs.diagnostics.modes.mode_hopping``; R-hat and ESS from ArviZ.

Example
-------
>>> from numpyro_wjs.diagnostics.comparison import compare
>>> from numpyro_wjs.targets import GaussianMixture
>>> target = GaussianMixture([0.5, 0.5], [[-5.0], [5.0]], 0.5)
>>> table = compare(target, budget=2000, num_chains=2, num_warmup=200)
>>> list(table.index)
['NUTS', 'MALA', 'ULA', 'WalkJump']
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr
from numpyro import handlers
from numpyro.infer import HMC, MCMC, NUTS, BarkerMH
from numpyro.infer.mcmc import MCMCKernel
from scipy.sparse import csr_array
from scipy.sparse.csgraph import minimum_spanning_tree

from numpyro_wjs.diagnostics._draws import dataset, variable
from numpyro_wjs.diagnostics.chains import stray_chains
from numpyro_wjs.diagnostics.modes import mode_hopping
from numpyro_wjs.infer.langevin import MALA, ULA, UnderdampedLangevin
from numpyro_wjs.infer.walkjump import WalkJump
from numpyro_wjs.targets import GaussianMixture
from numpyro_wjs.validation import positive, positive_int

__all__ = [
    "Run",
    "compare",
    "default_samplers",
    "evaluations_per_draw",
    "run_samplers",
    "summarize",
    "walk_jump_sigma",
]

#: Draws of the first HMC/NUTS run when there was no warmup to estimate the rate from.
_NUTS_CHUNK = 100

#: Columns of ``summarize`` that need mode labels.
_MODE_COLUMNS = (
    "switches",
    "switches_per_1000_evals",
    "tv_distance",
    "steps_to_visit_all",
    "evals_to_visit_all",
    "modes_visited",
    "round_trips",
)


@dataclasses.dataclass(frozen=True)
class Run:
    """One sampler's run at the shared budget.

    Attributes
    ----------
    name : str
        Sampler name (the key in ``samplers``).
    data : xarray.DataTree
        ArviZ data: ``posterior`` holds the draws (variable ``"x"`` for array-valued
        samplers, the model's sites otherwise); ``sample_stats`` holds
        ``evaluations`` (per draw) and, where the kernel's state has them,
        ``diverging``, ``n_steps`` (leapfrog steps), ``acceptance_rate`` (not for
        the unadjusted ``ULA`` and ``UnderdampedLangevin``), ``hop_acceptance_rate``
        and the walk ``y``.
    evaluations : float
        Gradient or denoiser evaluations per chain in the sampling phase (mean over
        chains; the same for every chain except for NUTS/HMC).
    evaluations_per_draw : numpy.ndarray
        ``(chain, draw)`` integer evaluations of each kept draw.
    wall_time : float
        Seconds for warmup plus sampling, compilation included, until the draws are
        on the host.
    num_draws : int
        Kept draws per chain.
    """

    name: str
    data: xr.DataTree
    evaluations: float
    evaluations_per_draw: np.ndarray
    wall_time: float
    num_draws: int


# --------------------------------------------------------------------------- budget rules
def evaluations_per_draw(kernel: MCMCKernel) -> int | None:
    """Evaluations of ``grad log p`` (or of the denoiser) per draw of ``kernel``.

    ``None`` for HMC/NUTS, whose cost varies per draw and is read from ``num_steps``, and for
    a kernel that says the same (``evaluations_per_draw`` is ``None`` and ``num_steps`` is
    among its ``sample_stats``: ``MALT`` with an adapted length); 1 for ``BarkerMH``;
    otherwise the kernel's ``evaluations_per_draw`` property (the package's kernels state
    it). Raises ``TypeError`` for a kernel without one.
    """
    varies = getattr(kernel, "evaluations_per_draw", 0) is None and "num_steps" in getattr(kernel, "sample_stats", ())
    if isinstance(kernel, HMC) or varies:
        return None
    if isinstance(kernel, BarkerMH):
        return 1
    cost = getattr(kernel, "evaluations_per_draw", None)
    if cost is None:
        raise TypeError(
            f"Cannot count the gradient evaluations of a {type(kernel).__name__} kernel; use NUTS, HMC, "
            "BarkerMH or a kernel with an `evaluations_per_draw` property (ULA, MALA, UnderdampedLangevin, "
            "WalkJump)."
        )
    return positive_int(f"{type(kernel).__name__}.evaluations_per_draw", cost)


def _bottleneck_distance(means: np.ndarray) -> float:
    """Longest edge of the Euclidean minimum spanning tree of ``means``."""
    K = means.shape[0]
    i, j = np.triu_indices(K, 1)
    # every pair as an explicit sparse entry: csgraph would read zero (and near-zero)
    # entries of a dense matrix as missing edges
    dist = np.linalg.norm(means[i] - means[j], axis=-1)
    tree = minimum_spanning_tree(csr_array((dist, (i, j)), shape=(K, K)))
    return float(tree.data.max(initial=0.0))


def walk_jump_sigma(target: GaussianMixture, z: float = 2.0) -> float:
    r"""Walk noise ``sigma`` at which every mode of ``target`` can be reached by easy hops.

    Let ``D`` be the bottleneck distance of the means (the longest edge of their
    minimum spanning tree: the widest gap a chain must cross to reach every mode)
    and ``tau`` the largest component scale. ``sigma`` makes the smoothed scale
    ``s = sqrt(tau^2 + sigma^2)`` equal to ``D / (2 z)``: the midpoint between two
    modes ``D`` apart is ``z`` smoothed standard deviations from each, so in
    ``p_Y`` the density there is about ``2 exp(-z^2 / 2)`` of the peak (a barrier
    of 1.3 nats at ``z = 2``; the modes merge for ``z <= 1``), and the Bayes
    classifier of ``y`` confuses the two with probability ``Phi(-z)`` (2.3 % at
    ``z = 2``). When ``D / (2 z) <= tau`` the modes of ``p_X`` already overlap and
    ``sigma`` is the smallest component scale.

    Parameters
    ----------
    target : GaussianMixture
        The mixture.
    z : float
        Half-gap in smoothed standard deviations, ``> 0``.

    Returns
    -------
    float
        ``sigma > 0``.
    """
    if not isinstance(target, GaussianMixture):
        raise TypeError(f"`target` must be a GaussianMixture, got {type(target).__name__}.")
    z = positive("z", z)
    scales = np.asarray(target.scales, np.float64)
    s = _bottleneck_distance(np.asarray(target.means, np.float64)) / (2.0 * z)
    if s <= scales.max():
        return float(scales.min())
    return float(math.sqrt(s**2 - scales.max() ** 2))


def default_samplers(target: GaussianMixture) -> dict[str, MCMCKernel]:
    """NUTS and MALA on ``target.model()``, ULA on ``target.score``, walk-jump with the exact denoiser.

    ULA's step is fixed at ``0.1 tau_min^2`` (on a component ``N(mu, tau^2)`` its stationary
    variance is ``tau^2 / (1 - h / (2 tau^2))``: 5 % too large at most); the walk
    uses ``sigma = walk_jump_sigma(target)`` and the exact Bayes denoiser
    ``target.denoiser(sigma)``.
    """
    tau_min = float(np.min(np.asarray(target.scales)))
    sigma = walk_jump_sigma(target)
    return {
        "NUTS": NUTS(target.model()),
        "MALA": MALA(target.model()),
        "ULA": ULA(score_fn=target.score, step_size=0.1 * tau_min**2, adapt_step_size=False, num_steps=1),
        "WalkJump": WalkJump(target.denoiser(sigma), sigma),
    }


# --------------------------------------------------------------------------- running
def _default_init(target: GaussianMixture, num_chains: int, key: jax.Array) -> jax.Array:
    """All chains at the mean of the heaviest component, jittered by 0.1 of its scale."""
    k = int(np.argmax(np.asarray(target.weights)))
    eps = jax.random.normal(key, (num_chains, target.dim), target.means.dtype)
    return target.means[k] + 0.1 * target.scales[k] * eps


def _latent_sites(model: Callable, model_args: tuple, model_kwargs: dict) -> list[str]:
    tr = handlers.trace(handlers.seed(model, 0)).get_trace(*model_args, **model_kwargs)
    return [n for n, s in tr.items() if s["type"] == "sample" and not s["is_observed"]]


def _kernel_init(kernel: MCMCKernel, init: Any, num_chains: int, model_args: tuple, model_kwargs: dict) -> Any:
    """``init`` with a leading chain axis, as a site dict for a model kernel, an array otherwise."""
    if init is None:
        if kernel.model is None:
            raise ValueError(
                f"{type(kernel).__name__} has no model to draw initial points from; pass `init` "
                "(an array of shape (num_chains, d) or (d,))."
            )
        return None
    if isinstance(init, Mapping):
        init = {k: jnp.asarray(v) for k, v in init.items()}
        for k, v in init.items():
            if v.ndim == 0 or v.shape[0] != num_chains:
                raise ValueError(
                    f"`init[{k!r}]` must have a leading axis of num_chains={num_chains}, got shape {v.shape}."
                )
        if kernel.model is not None:
            return init
        if len(init) != 1:
            raise ValueError(
                f"{type(kernel).__name__} takes an array initial point; `init` has sites {list(init)}."
            )
        init = next(iter(init.values()))
    init = jnp.asarray(init)
    if init.ndim == 0:
        raise ValueError("`init` must have shape (num_chains, d) or (d,), got a scalar.")
    if init.ndim == 1 or init.shape[0] != num_chains:
        init = jnp.broadcast_to(init, (num_chains,) + init.shape)
    if kernel.model is None:
        return init
    sites = _latent_sites(kernel.model, model_args, model_kwargs)
    if len(sites) != 1:
        raise ValueError(f"The model has latent sites {sites}: pass `init` as a dict of unconstrained values.")
    return {sites[0]: init}


#: State fields kept as sample stats, under their ArviZ names.
_STAT_NAMES = {
    "diverging": "diverging",
    "num_steps": "n_steps",
    "accept_prob": "acceptance_rate",
    "hop_accept_prob": "hop_acceptance_rate",
    "y": "y",
}


#: The sample stats of NumPyro's own kernels, which do not declare them.
_NUMPYRO_STATS = {HMC: ("diverging", "num_steps", "accept_prob"), BarkerMH: ("accept_prob",)}


def sample_stats(kernel: MCMCKernel) -> tuple[str, ...]:
    """The state fields of ``kernel`` kept as sample stats: those of ``_STAT_NAMES`` that it
    declares in ``kernel.sample_stats`` (the package's kernels; for NumPyro's HMC/NUTS and
    BarkerMH they are known; any other kernel: its ``default_fields``)."""
    declared = getattr(kernel, "sample_stats", None)
    if declared is None:
        declared = next((v for k, v in _NUMPYRO_STATS.items() if isinstance(kernel, k)), kernel.default_fields)
    return tuple(f for f in _STAT_NAMES if f in declared)


def _map_chains(fn: Callable) -> Callable:
    """``chain_method`` running the chains one after another in one ``lax.map`` (one compilation)."""
    return partial(jax.lax.map, fn)


def _chain_method(kernel: MCMCKernel, progress_bar: bool) -> str | Callable:
    """Vectorized chains, except for NumPyro's HMC/NUTS and BarkerMH.

    Those run their chains one after another: vectorized NUTS moves all chains in
    lockstep, each waiting for the longest trajectory, and BarkerMH takes no batch of
    keys. With a progress bar: ``"sequential"`` (MCMC shows none for a callable).
    """
    if not isinstance(kernel, (HMC, BarkerMH)):
        return "vectorized"
    return "sequential" if progress_bar else _map_chains


def _next_chunk(remaining: float, steps: np.ndarray) -> int:
    """Draws for the next HMC/NUTS run: 25 % more than ``remaining`` evaluations take at
    the mean of ``steps`` per draw, and at least 10 (every run compiles anew)."""
    return max(10, math.ceil(1.25 * remaining / max(float(steps.mean()), 1.0)))


def _run_one(
    name: str,
    kernel: MCMCKernel,
    init: Any,
    *,
    budget: int,
    num_chains: int,
    num_warmup: int,
    key: jax.Array,
    progress_bar: bool,
    model_args: tuple,
    model_kwargs: dict,
) -> Run:
    """Warmup and sampling of one kernel with ``numpyro.infer.MCMC``; sampling is cut at ``budget``.

    A fixed-cost kernel runs warmup and ``budget // cost`` draws in one run.
    HMC/NUTS run until the mean over chains of their summed ``num_steps`` reaches
    ``budget``, each run continuing from the last state and sized from the leapfrog
    steps per draw seen so far (the last quarter of warmup at first).
    """
    cost = evaluations_per_draw(kernel)
    if cost is not None and cost > budget:
        raise ValueError(f"{name}: one draw costs {cost} evaluations, more than budget={budget}.")
    mcmc = MCMC(
        kernel,
        num_warmup=num_warmup,
        num_samples=budget // cost if cost is not None else _NUTS_CHUNK,
        num_chains=num_chains,
        chain_method=_chain_method(kernel, progress_bar),
        progress_bar=progress_bar,
    )
    if num_chains == 1 and init is not None:
        init = jax.tree.map(lambda a: a[0], init)  # MCMC takes one chain's point unbatched
    fields = sample_stats(kernel)
    start = time.perf_counter()
    if cost is None:
        rate_from_warmup = num_warmup > 0
        mcmc.warmup(key, *model_args, init_params=init, extra_fields=("num_steps",) if rate_from_warmup else (),
                    collect_warmup=rate_from_warmup, **model_kwargs)
        if rate_from_warmup:
            warmup_steps = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["num_steps"])
            mcmc.num_samples = _next_chunk(budget, warmup_steps[:, -max(num_warmup // 4, 1):])
    chunks, spent = [], 0.0
    while True:
        if cost is not None:  # warmup and sampling in one run, as a user would
            mcmc.run(key, *model_args, init_params=init, extra_fields=fields, **model_kwargs)
        else:
            mcmc.run(mcmc.post_warmup_state.rng_key, *model_args, extra_fields=fields, **model_kwargs)
        chunks.append(jax.device_get((mcmc.get_samples(group_by_chain=True),
                                      mcmc.get_extra_fields(group_by_chain=True))))
        if cost is not None:
            break
        spent += float(chunks[-1][1]["num_steps"].mean(0).sum())
        if spent >= budget:
            break
        mcmc.post_warmup_state = mcmc.last_state
        mcmc.num_samples = _next_chunk(budget - spent, np.concatenate([c[1]["num_steps"] for c in chunks], 1))
    wall = time.perf_counter() - start
    draws, out = jax.tree.map(lambda *a: np.concatenate(a, axis=1), *chunks)
    if cost is not None:
        per_draw = np.full(np.shape(jax.tree.leaves(draws)[0])[:2], cost, np.int64)
    else:
        per_draw = out["num_steps"].astype(np.int64)
        keep = int(np.searchsorted(np.cumsum(per_draw.mean(0)), budget, side="right"))
        if keep < 1:
            raise ValueError(f"{name}: the first draw costs more than budget={budget} evaluations.")
        draws, out = jax.tree.map(lambda a: a[:, :keep], (draws, out))
        per_draw = per_draw[:, :keep]
    posterior = dict(draws) if isinstance(draws, Mapping) else {"x": draws}
    stats = {_STAT_NAMES[k]: v for k, v in out.items() if k in _STAT_NAMES}
    stats["evaluations"] = per_draw
    return Run(
        name=name,
        data=az.from_dict({"posterior": posterior, "sample_stats": stats}),
        evaluations=float(per_draw.sum(1).mean()),
        evaluations_per_draw=per_draw,
        wall_time=wall,
        num_draws=int(per_draw.shape[1]),
    )


def run_samplers(
    target: GaussianMixture | Callable,
    samplers: Mapping[str, MCMCKernel] | Sequence[MCMCKernel] | None = None,
    *,
    budget: int = 20_000,
    num_chains: int = 4,
    num_warmup: int = 500,
    seed: int = 0,
    init: Any = None,
    progress_bar: bool = False,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
) -> dict[str, Run]:
    """Run every sampler for the same evaluation budget, chains, keys and initial points.

    Parameters
    ----------
    target : GaussianMixture or callable
        A mixture (then ``samplers`` defaults to ``default_samplers``) or a
        NumPyro model (then ``samplers`` is required).
    samplers : dict of str to MCMCKernel, or list of MCMCKernel, optional
        Kernels by name, or a list named by each kernel's ``label`` (its class name for
        NumPyro's kernels); their cost per draw is ``evaluations_per_draw`` and their
        sample stats ``sample_stats``.
    budget : int
        Evaluations of ``grad log p`` (or the denoiser) per chain in the sampling
        phase; warmup is not counted.
    num_chains : int
        Chains per sampler: vectorized, except those of HMC/NUTS and BarkerMH,
        which run one after another (vectorized NUTS moves all chains in lockstep,
        each waiting for the longest trajectory; BarkerMH takes no batch of keys).
    num_warmup : int
        Warmup iterations (adaptation) of every sampler.
    seed : int
        Seed of the random keys, the same for every sampler, and of the default
        initial jitter.
    init : array or dict, optional
        Initial points, ``(num_chains, d)`` or ``(d,)`` (unconstrained values, or a
        dict by site for model kernels). For a mixture the default puts every
        chain at the mean of its heaviest component plus ``N(0, (0.1 tau)^2)``
        jitter: the case where local samplers stay trapped. For a model, ``None``
        lets each kernel's init strategy choose.
    progress_bar : bool
        ``numpyro.infer.MCMC``'s progress bars.
    model_args, model_kwargs
        Arguments of the model(s).

    Returns
    -------
    dict of str to Run
        In the order of ``samplers``.
    """
    budget = positive_int("budget", budget)
    num_chains = positive_int("num_chains", num_chains)
    num_warmup = positive_int("num_warmup", num_warmup, minimum=0)
    seed = positive_int("seed", seed, minimum=0)
    model_kwargs = {} if model_kwargs is None else dict(model_kwargs)
    is_mixture = isinstance(target, GaussianMixture)
    if samplers is None:
        if not is_mixture:
            raise ValueError(
                f"Default samplers need a GaussianMixture target, got {type(target).__name__}; "
                "pass `samplers` (a dict of name -> MCMCKernel)."
            )
        samplers = default_samplers(target)
    elif not is_mixture and not callable(target):
        raise TypeError(f"`target` must be a GaussianMixture or a NumPyro model, got {type(target).__name__}.")
    if isinstance(samplers, list | tuple):  # named by the kernels' labels
        names = [getattr(k, "label", type(k).__name__) for k in samplers]
        if len(set(names)) < len(names):
            raise ValueError(f"Samplers with the same label {names}: pass a dict of name -> MCMCKernel.")
        samplers = dict(zip(names, samplers))
    if not isinstance(samplers, Mapping):
        raise TypeError(
            f"`samplers` must be a dict of name -> MCMCKernel or a list of kernels, got {type(samplers).__name__}."
        )
    if not samplers:
        raise ValueError("`samplers` is empty; give at least one kernel.")
    for name, kernel in samplers.items():
        if not isinstance(name, str):
            raise TypeError(f"Sampler names must be strings, got {name!r}.")
        if not isinstance(kernel, MCMCKernel):
            raise TypeError(f"Sampler {name!r} must be a numpyro MCMCKernel, got {type(kernel).__name__}.")
        evaluations_per_draw(kernel)
    key_init, key_run = jax.random.split(jax.random.key(seed))
    if init is None and is_mixture:
        init = _default_init(target, num_chains, key_init)
    runs = {}
    for name, kernel in samplers.items():
        runs[name] = _run_one(
            name,
            kernel,
            _kernel_init(kernel, init, num_chains, model_args, model_kwargs),
            budget=budget,
            num_chains=num_chains,
            num_warmup=num_warmup,
            key=key_run,
            progress_bar=progress_bar,
            model_args=model_args,
            model_kwargs=model_kwargs,
        )
    return runs


# --------------------------------------------------------------------------- summaries
def _extreme(result: xr.DataTree | xr.Dataset, reduce: Callable) -> float:
    """``reduce`` over every variable and coordinate of an ArviZ ``ess``/``rhat`` result."""
    ds = result.to_dataset() if isinstance(result, xr.DataTree) else result
    values = np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in ds.data_vars.values()])
    return float(reduce(values))


def summarize(
    runs: Mapping[str, Run],
    labeller: Any = None,
    weights: Any = None,
    *,
    var_name: str | None = None,
) -> pd.DataFrame:
    """One row per run: cost, mode hopping and convergence at the shared budget.

    Parameters
    ----------
    runs : dict of str to Run
        From ``run_samplers``.
    labeller : object with ``mode_of``, or callable, optional
        Maps draws ``(B, *event)`` to mode labels (e.g. the ``GaussianMixture``).
        Without it the mode columns are left out.
    weights : array (K,), optional
        True mode weights; default ``labeller.weights``. Without them
        ``tv_distance`` is left out.
    var_name : str, optional
        Posterior variable to label and to compute ESS and R-hat on; default
        ``"x"`` or the only variable (without a labeller: all variables).

    Returns
    -------
    pandas.DataFrame
        Index ``sampler``; columns ``evaluations`` (per chain), ``draws`` (per
        chain), ``switches`` (total over chains), ``switches_per_1000_evals``
        (``1000 * switches / (chains * evaluations)``), ``tv_distance`` (pooled
        occupancy against ``weights``), ``steps_to_visit_all`` (max over chains, in
        draws; -1 if some chain missed a mode), ``evals_to_visit_all`` (the same in
        evaluations), ``modes_visited`` (min over chains), ``round_trips`` (total
        between modes 0 and K-1), ``ess_bulk`` (min over coordinates),
        ``r_hat`` (max over coordinates), ``stray_chains`` (chains whose mean strays from
        the others', ``chains.stray_chains``: an excursion or a stuck chain) and
        ``wall_time_s``.
    """
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError("`runs` must be a non-empty dict of name -> Run.")
    rows = []
    for name, run in runs.items():
        if not isinstance(run, Run):
            raise TypeError(f"runs[{name!r}] must be a Run, got {type(run).__name__}.")
        var = variable(dataset(run.data), var_name, prefer="x", required=labeller is not None)
        var_names = None if var is None else [var]
        num_chains = run.evaluations_per_draw.shape[0]
        row: dict[str, Any] = {"sampler": name, "evaluations": run.evaluations, "draws": run.num_draws}
        if labeller is not None:
            ds = mode_hopping(run.data, labeller, weights=weights, var_name=var)
            switches = int(ds.switches.sum())
            steps = np.asarray(ds.steps_to_visit_all)
            cum = np.cumsum(run.evaluations_per_draw, axis=1)
            evals = np.where(steps > 0, cum[np.arange(num_chains), np.maximum(steps, 1) - 1], -1)
            row.update(
                switches=switches,
                switches_per_1000_evals=1000.0 * switches / (num_chains * run.evaluations),
                steps_to_visit_all=int(steps.max()) if np.all(steps > 0) else -1,
                evals_to_visit_all=int(evals.max()) if np.all(steps > 0) else -1,
                modes_visited=int(ds.modes_visited.min()),
                round_trips=int(ds.round_trips.sum()),
            )
            if "tv_distance_all" in ds:
                row["tv_distance"] = float(ds.tv_distance_all)
        row["ess_bulk"] = _extreme(az.ess(run.data, var_names=var_names, method="bulk"), np.min)
        row["r_hat"] = _extreme(az.rhat(run.data, var_names=var_names), np.max)
        row["stray_chains"] = len({c for cs in stray_chains(run.data, var_names=var_names).values() for c in cs})
        row["wall_time_s"] = run.wall_time
        rows.append(row)
    table = pd.DataFrame(rows).set_index("sampler")
    order = ["evaluations", "draws", *_MODE_COLUMNS, "ess_bulk", "r_hat", "stray_chains", "wall_time_s"]
    return table[[c for c in order if c in table.columns]]


def compare(
    target: GaussianMixture | Callable,
    samplers: Mapping[str, MCMCKernel] | Sequence[MCMCKernel] | None = None,
    *,
    labeller: Any = None,
    weights: Any = None,
    var_name: str | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """``run_samplers`` then ``summarize``: one row per sampler at the shared budget.

    ``labeller`` defaults to ``target`` when it is a ``GaussianMixture`` (and
    ``weights`` to its weights). The other keyword arguments (``budget``,
    ``num_chains``, ``num_warmup``, ``seed``, ``init``, ``progress_bar``,
    ``model_args``, ``model_kwargs``) go to ``run_samplers``, with its defaults.
    Under a fixed ``seed`` the table is reproducible except ``wall_time_s``.
    """
    runs = run_samplers(target, samplers, **kwargs)
    if labeller is None and isinstance(target, GaussianMixture):
        labeller = target
    return summarize(runs, labeller, weights, var_name=var_name)
