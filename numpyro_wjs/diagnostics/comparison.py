"""Samplers compared at an equal budget of gradient or denoiser evaluations.

Every sampler runs the same number of chains from the same initial points with the
same random keys, and its sampling phase is cut to the same number ``B`` of
evaluations of ``grad log p`` (or of the denoiser, for walk-jump) per chain:

* one-evaluation kernels (``ULA``,
  ``MALA``, ``UnderdampedLangevin``,
  ``numpyro.infer.BarkerMH``): ``e = 1`` per draw, ``n = floor(B / e)`` draws;
* ``WalkJump``: ``e = jump_every`` per draw (the jump
  ``y + sigma^2 grad log p_Y(y)`` is free), plus
  ``1 + (M - 1)(num_inner_steps + 1)`` in sequential mode with ``M > 1``
  measurements (one denoiser call for ``E[X | y_1]``, then per extra measurement
  one for the initial score and one per inner step); the Gibbs walk-jump on a
  model (``WalkJump(model=...)``): ``1 + num_mala_steps`` gradients per draw
  (the hop from the noisy point, then the MALA refinement);
* ``numpyro.infer.HMC`` / ``numpyro.infer.NUTS``: one gradient per
  leapfrog step, counted exactly from the ``num_steps`` of every draw. Warmup and
  sampling run in chunks of ``ceil(num_warmup / 4)`` iterations (100 without
  warmup) until the sampling-phase count (mean over chains) reaches ``B``; the
  draws are then cut at the last one whose cumulative count is ``<= B`` (the cut
  draws, at most one chunk, are computed and count in the wall time).

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
import numbers
import time
from collections.abc import Callable, Mapping
from typing import Any

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr
from numpyro import handlers
from numpyro.infer import HMC, NUTS, BarkerMH
from numpyro.infer.mcmc import MCMCKernel
from tqdm.auto import tqdm

from numpyro_wjs.diagnostics.modes import mode_hopping
from numpyro_wjs.infer.langevin import MALA, ULA, UnderdampedLangevin
from numpyro_wjs.targets import GaussianMixture
from numpyro_wjs.infer.gibbs import GibbsWalkJump
from numpyro_wjs.infer.walkjump import WalkJump

__all__ = [
    "Run",
    "compare",
    "default_samplers",
    "evaluations_per_draw",
    "run_samplers",
    "summarize",
    "walk_jump_sigma",
]

#: Iterations per chunk of an HMC/NUTS run without warmup.
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
        ``diverging``, ``evaluations`` (per draw), and where the kernel has them
        ``n_steps`` (leapfrog steps), ``acceptance_rate`` and the walk ``y``.
    evaluations : float
        Gradient or denoiser evaluations per chain in the sampling phase (mean over
        chains; the same for every chain except for NUTS/HMC).
    evaluations_per_draw : numpy.ndarray
        ``(chain, draw)`` integer evaluations of each kept draw.
    wall_time : float
        Seconds for warmup plus sampling, compilation included, measured after
        ``jax.block_until_ready``.
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

    ``None`` for HMC/NUTS, whose cost varies per draw and is read from ``num_steps``.
    Raises ``TypeError`` for a kernel whose cost is unknown.
    """
    if isinstance(kernel, HMC):
        return None
    if isinstance(kernel, (WalkJump, GibbsWalkJump)):
        return kernel.evaluations_per_draw
    if isinstance(kernel, (ULA, MALA, UnderdampedLangevin, BarkerMH)):
        return 1
    raise TypeError(
        f"Cannot count the gradient evaluations of a {type(kernel).__name__} kernel; use one of "
        "NUTS, HMC, BarkerMH, ULA, MALA, UnderdampedLangevin or WalkJump."
    )


def _bottleneck_distance(means: np.ndarray) -> float:
    """Longest edge of the Euclidean minimum spanning tree of ``means`` (Prim)."""
    K = means.shape[0]
    if K < 2:
        return 0.0
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1)
    in_tree = np.zeros(K, bool)
    in_tree[0] = True
    best = dist[0].copy()
    longest = 0.0
    for _ in range(K - 1):
        k = int(np.argmin(np.where(in_tree, np.inf, best)))
        longest = max(longest, float(best[k]))
        in_tree[k] = True
        best = np.minimum(best, dist[k])
    return longest


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
    if isinstance(z, bool) or not isinstance(z, numbers.Real) or not (math.isfinite(z) and z > 0):
        raise ValueError(f"`z` must be a positive finite number, got {z!r}.")
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
        "ULA": ULA(score_fn=target.score, step_size=0.1 * tau_min**2, adapt_step_size=False),
        "WalkJump": WalkJump(target.denoiser(sigma), sigma),
    }


# --------------------------------------------------------------------------- running
def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an integer, got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}.")
    return int(value)


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


def _extra_fields(kernel: MCMCKernel) -> tuple[str, ...]:
    """State fields kept as sample stats, besides ``diverging``."""
    if isinstance(kernel, HMC):
        return ("num_steps", "accept_prob")
    if isinstance(kernel, GibbsWalkJump):
        return ("y", "accept_prob", "hop_accept_prob")
    if isinstance(kernel, WalkJump):
        return ("y", "accept_prob")
    if isinstance(kernel, (MALA, BarkerMH)):
        return ("accept_prob",)
    return ()


_STAT_NAMES = {
    "num_steps": "n_steps",
    "accept_prob": "acceptance_rate",
    "hop_accept_prob": "hop_acceptance_rate",
    "diverging": "diverging",
    "y": "y",
}


def _chunk_fn(kernel: MCMCKernel, length: int, fields: tuple[str, ...], vectorized: bool, model_args, model_kwargs):
    """Jitted ``state -> (state, draws)``: ``length`` transitions of every chain.

    Draws are the kernel's sample field mapped by its ``postprocess_fn`` (constrained
    values for a model) and the state ``fields``, each ``(chain, length, ...)``.
    Vectorized: all chains advance together (``vmap``); otherwise one chain after
    another (``lax.map``).
    """
    postprocess = kernel.postprocess_fn(model_args, model_kwargs)
    if vectorized:
        postprocess = jax.vmap(postprocess)

    def step(state, _):
        state = kernel.sample(state, model_args, model_kwargs)
        out = {name: getattr(state, name) for name in fields}
        out[""] = postprocess(getattr(state, kernel.sample_field))
        return state, out

    def run(state):
        return jax.lax.scan(step, state, length=length)

    if vectorized:

        @jax.jit
        def chunk(state):
            state, out = run(state)
            return state, jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), out)

    else:
        chunk = jax.jit(lambda state: jax.lax.map(run, state))
    return chunk


def _init_state(kernel, key, init, num_chains, num_warmup, vectorized, model_args, model_kwargs):
    """Initial state of all chains: batched ``kernel.init``, or one chain at a time, stacked."""
    keys = jax.random.split(key, num_chains)
    if vectorized:
        return kernel.init(keys, num_warmup, init, model_args, model_kwargs)
    states = [
        kernel.init(keys[c], num_warmup, None if init is None else jax.tree.map(lambda a: a[c], init),
                    model_args, model_kwargs)
        for c in range(num_chains)
    ]
    return jax.tree.map(lambda *a: jnp.stack(a), *states)


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
    """Warmup and sampling of one kernel; the sampling phase is cut at ``budget``."""
    cost = evaluations_per_draw(kernel)
    if cost is not None and cost > budget:
        raise ValueError(f"{name}: one draw costs {cost} evaluations, more than budget={budget}.")
    fields = ("diverging",) + _extra_fields(kernel)
    vectorized = cost is not None
    # fixed cost: one loop of warmup + budget // cost draws; HMC/NUTS: chunks until the budget is spent
    length = num_warmup + budget // cost if vectorized else (-(-num_warmup // 4) or _NUTS_CHUNK)
    start = time.perf_counter()
    state = _init_state(kernel, key, init, num_chains, num_warmup, vectorized, model_args, model_kwargs)
    chunk = _chunk_fn(kernel, length, fields, vectorized, model_args, model_kwargs)
    outputs, done, spent = [], 0, 0.0
    with tqdm(desc=name, unit="it", total=length if vectorized else None, disable=not progress_bar) as bar:
        while True:
            state, out = chunk(state)
            out = jax.tree.map(np.asarray, out)
            first = max(num_warmup - done, 0)  # warmup iterations in this chunk
            done += length
            bar.update(length)
            if first < length:
                out = jax.tree.map(lambda a: a[:, first:], out)
                outputs.append(out)
                if vectorized:
                    break
                spent += float(out["num_steps"].mean(0).sum())
                if spent >= budget:
                    break
    wall = time.perf_counter() - start
    out = jax.tree.map(lambda *a: np.concatenate(a, axis=1), *outputs)
    if vectorized:
        per_draw = np.full(out["diverging"].shape, cost, np.int64)
    else:
        per_draw = out["num_steps"].astype(np.int64)
        keep = int(np.searchsorted(np.cumsum(per_draw.mean(0)), budget, side="right"))
        if keep < 1:
            raise ValueError(f"{name}: the first draw costs more than budget={budget} evaluations.")
        out = jax.tree.map(lambda a: a[:, :keep], out)
        per_draw = per_draw[:, :keep]
    draws = out.pop("")
    posterior = dict(draws) if isinstance(draws, Mapping) else {"x": draws}
    stats = {_STAT_NAMES[k]: v for k, v in out.items()}
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
    samplers: Mapping[str, MCMCKernel] | None = None,
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
    samplers : dict of str to MCMCKernel, optional
        Kernels by name; their cost per draw is ``evaluations_per_draw``.
    budget : int
        Evaluations of ``grad log p`` (or the denoiser) per chain in the sampling
        phase; warmup is not counted.
    num_chains : int
        Chains per sampler: vectorized, except HMC/NUTS chains, which run one after
        another (vectorized NUTS moves all chains in lockstep, each waiting for the
        longest trajectory).
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
        A tqdm bar per sampler (iterations of warmup and sampling).
    model_args, model_kwargs
        Arguments of the model(s).

    Returns
    -------
    dict of str to Run
        In the order of ``samplers``.
    """
    budget = _check_int("budget", budget, 1)
    num_chains = _check_int("num_chains", num_chains, 1)
    num_warmup = _check_int("num_warmup", num_warmup, 0)
    seed = _check_int("seed", seed, 0)
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
    if not isinstance(samplers, Mapping):
        raise TypeError(f"`samplers` must be a dict of name -> MCMCKernel, got {type(samplers).__name__}.")
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
def _posterior_var(data: xr.DataTree, var_name: str | None, required: bool) -> str | None:
    """The posterior variable to label: ``var_name``, ``"x"``, the only one, or ``None`` (all)."""
    names = list(data["posterior"].data_vars)
    if var_name is not None:
        if var_name not in names:
            raise ValueError(f"`var_name` {var_name!r} is not one of the posterior variables {names}.")
        return var_name
    if "x" in names:
        return "x"
    if len(names) == 1:
        return names[0]
    if not required:
        return None
    raise ValueError(f"Pass `var_name`, one of {names}, to choose the draws that get mode labels.")


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
        ``r_hat`` (max over coordinates) and ``wall_time_s``.
    """
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError("`runs` must be a non-empty dict of name -> Run.")
    rows = []
    for name, run in runs.items():
        if not isinstance(run, Run):
            raise TypeError(f"runs[{name!r}] must be a Run, got {type(run).__name__}.")
        var = _posterior_var(run.data, var_name, required=labeller is not None)
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
        row["wall_time_s"] = run.wall_time
        rows.append(row)
    table = pd.DataFrame(rows).set_index("sampler")
    order = ["evaluations", "draws", *_MODE_COLUMNS, "ess_bulk", "r_hat", "wall_time_s"]
    return table[[c for c in order if c in table.columns]]


def compare(
    target: GaussianMixture | Callable,
    samplers: Mapping[str, MCMCKernel] | None = None,
    *,
    budget: int = 20_000,
    num_chains: int = 4,
    num_warmup: int = 500,
    seed: int = 0,
    labeller: Any = None,
    weights: Any = None,
    var_name: str | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """``run_samplers`` then ``summarize``: one row per sampler at the shared budget.

    ``labeller`` defaults to ``target`` when it is a ``GaussianMixture`` (and
    ``weights`` to its weights). Other keyword arguments (``init``,
    ``progress_bar``, ``model_args``, ``model_kwargs``) go to ``run_samplers``.
    Under a fixed ``seed`` the table is reproducible except ``wall_time_s``.
    """
    runs = run_samplers(
        target, samplers, budget=budget, num_chains=num_chains, num_warmup=num_warmup, seed=seed, **kwargs
    )
    if labeller is None and isinstance(target, GaussianMixture):
        labeller = target
    return summarize(runs, labeller, weights, var_name=var_name)
