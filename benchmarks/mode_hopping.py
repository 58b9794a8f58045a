"""Mode hopping at an equal budget of gradient / denoiser evaluations.

Target: ``K = 8`` isotropic Gaussian components on a ring of radius 5 in the first
two coordinates of ``R^d`` (``d = 2`` and ``d = 32``; the other coordinates are
pure ``N(0, tau^2)``), scale ``tau = 0.3``, weights proportional to ``1, ..., 8``.
Neighbouring means are ``2 * 5 * sin(pi / 8) = 3.83`` apart, so at the midpoint
``-log p`` is ``3.83^2 / (8 tau^2) = 20`` nats above the modes: a local sampler
started in one mode stays there.

Samplers, all from the same initial points (every chain at the heaviest mode plus
``N(0, (0.03)^2)`` jitter) with the same budget of evaluations per chain
(:func:`numpyro_wjs.diagnostics.comparison.compare`):

* ``NUTS`` and ``MALA`` on ``target.model()`` (adapted step size and diagonal mass);
* ``ULA`` on the score, step ``0.1 tau^2``;
* ``UnderdampedLangevin`` (BAOAB) on the score, step ``0.5 tau``, friction 1;
* ``WalkJump`` with the exact Bayes denoiser at ``sigma = walk_jump_sigma(target)``
  (smoothed component scale = a quarter of the neighbour distance), default walk.

Reported per sampler: mode switches per 1,000 evaluations, TV distance of the
pooled mode occupancy to the weights, draws and evaluations until a chain has seen
every mode (max over chains; "never" if some chain has not), R-hat and bulk ESS of
the draws (ArviZ; worst coordinate), wall time (compilation included).

Second part, at the same ``sigma``: sequential multi-measurement jumps
(``num_measurements = M``, ``mode="sequential"``) against ``M = 1``, with the same
number of draws per chain. For each mode ``k`` the jumps labelled ``k`` give a
mean ``m_k`` and per-coordinate variances ``v_k``; reported are
``|| m_k - mu_k ||`` and ``mean(v_k) / tau^2`` (1 for ``p_X``), averaged over the
modes, and the energy distance of (up to 500 of) the jumps labelled ``k`` to 500
exact draws of component ``k``, averaged over modes (its value for exact draws of
``p_X``, last row, is the estimator's noise floor). Rows "direct" are the same
statistics for exact draws of ``E[X | X + (sigma / sqrt(M)) N]``, the law the
sequential jumps aim at.

Third part, ``--sweep``: the default ``WalkJump`` alone (exact denoiser, fixed walk
step ``sigma``, friction 0.5) on the same ring in ``d = 2, 32, 128, 512`` (the extra
coordinates are independent Gaussians), at the same budget: switches per 1,000
evaluations and the occupancy TV must not degrade with ``d`` (goals: >= 50 and
<= 0.03 at every ``d``).

Run from the repository root (a few minutes on two cores)::

    python benchmarks/mode_hopping.py            # budget 20,000, 8 chains, d = 2 and 32
    python benchmarks/mode_hopping.py --quick    # budget 2,000, 4 chains
    python benchmarks/mode_hopping.py --sweep    # the dimension sweep alone
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from numpyro.infer import NUTS

from numpyro_wjs import MALA, ULA, UnderdampedLangevin, WalkJump
from numpyro_wjs.diagnostics.comparison import compare, evaluations_per_draw, run_samplers, walk_jump_sigma
from numpyro_wjs.targets import GaussianMixture

from _context import machine

K, RADIUS, TAU = 8, 5.0, 0.3
WEIGHTS = np.arange(1, K + 1, dtype=np.float32)
ENERGY_POINTS = 500


def make_target(dim: int) -> GaussianMixture:
    """The ring mixture in ``R^dim``."""
    return GaussianMixture.ring(K, RADIUS, TAU, dim=dim, weights=WEIGHTS)


def samplers(target: GaussianMixture, sigma: float) -> dict:
    """The compared kernels (fresh instances)."""
    return {
        "NUTS": NUTS(target.model()),
        "MALA": MALA(target.model()),
        "ULA": ULA(score_fn=target.score, step_size=0.1 * TAU**2, adapt_step_size=False, num_steps=1),
        "UnderdampedLangevin": UnderdampedLangevin(
            score_fn=target.score, step_size=0.5 * TAU, friction=1.0, adapt_step_size=False
        ),
        "WalkJump": WalkJump(target.denoiser(sigma), sigma),
    }


def per_mode_statistics(
    target: GaussianMixture, x: np.ndarray, rng: np.random.Generator, min_count: int = 10
) -> tuple[float, float, float, int]:
    """Means over modes of ``||m_k - mu_k||``, ``mean(v_k) / tau_k^2`` and the energy
    distance of the draws labelled ``k`` to ``N(mu_k, tau_k^2 I)``, for draws ``x`` (n, d).

    Modes with fewer than ``min_count`` draws are skipped; the number used is returned too.
    """
    labels = np.asarray(target.mode_of(jnp.asarray(x)))
    means, scales = np.asarray(target.means), np.asarray(target.scales)
    errors, ratios, distances = [], [], []
    for k in range(target.K):
        xk = x[labels == k]
        if xk.shape[0] < min_count:
            continue
        errors.append(np.linalg.norm(xk.mean(0) - means[k]))
        ratios.append(xk.var(0, ddof=1).mean() / scales[k] ** 2)
        xk = xk[rng.choice(xk.shape[0], min(ENERGY_POINTS, xk.shape[0]), replace=False)]
        exact = means[k] + scales[k] * rng.standard_normal((ENERGY_POINTS, target.dim))
        distances.append(energy_distance(xk, exact))
    if not errors:
        return math.nan, math.nan, math.nan, 0
    return float(np.mean(errors)), float(np.mean(ratios)), float(np.mean(distances)), len(errors)


def energy_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``2 E||A - B|| - E||A - A'|| - E||B - B'||`` (zero iff the laws agree), by V-statistics."""
    def mean_dist(u, v):
        u, v = jnp.asarray(u, jnp.float32), jnp.asarray(v, jnp.float32)
        sq = jnp.sum(u**2, 1)[:, None] + jnp.sum(v**2, 1)[None] - 2.0 * u @ v.T
        return float(jnp.mean(jnp.sqrt(jnp.maximum(sq, 0.0))))

    return 2.0 * mean_dist(a, b) - mean_dist(a, a) - mean_dist(b, b)


def sequential_table(target: GaussianMixture, sigma: float, args: argparse.Namespace) -> pd.DataFrame:
    """Per-mode statistics of ``M``-measurement sequential jumps, of exact laws and of ``p_X``."""
    conditional = lambda y, s: target.denoiser(s)(y)  # noqa: E731
    rng = np.random.default_rng(args.seed)
    rows = []

    def row(name, x, evals_per_draw=math.nan, wall=math.nan):
        err, ratio, dist, used = per_mode_statistics(target, x, rng)
        rows.append({"jumps": name, "evals/draw": evals_per_draw, "draws": x.shape[0], "modes used": used,
                     "mean error": err, "variance ratio": ratio, "energy distance": dist, "wall_time_s": wall})

    for m in args.measurements:
        if m == 1:
            kernel = WalkJump(target.denoiser(sigma), sigma)
        else:
            kernel = WalkJump(conditional, sigma, num_measurements=m, noise_conditional=True, mode="sequential")
        cost = evaluations_per_draw(kernel)
        run = run_samplers(
            target, {"jumps": kernel}, budget=args.jumps * cost, num_chains=args.chains,
            num_warmup=args.warmup, seed=args.seed,
        )["jumps"]
        row(f"WalkJump M={m}", np.asarray(run.data["posterior"]["x"]).reshape(-1, target.dim),
            run.evaluations / run.num_draws, run.wall_time)
    for m in args.measurements:
        kx, kn = jax.random.split(jax.random.key(args.seed + 1))
        s = sigma / math.sqrt(m)
        x = target.sample(kx, (200_000,))
        row(f"direct E[X|Y], noise sigma/sqrt({m})",
            np.asarray(target.denoiser(s)(x + s * jax.random.normal(kn, x.shape, x.dtype))))
    row("p_X (exact draws)", np.asarray(target.sample(jax.random.key(args.seed + 3), (200_000,))))
    return pd.DataFrame(rows).set_index("jumps")


def markdown(table: pd.DataFrame, index: str) -> str:
    """A GitHub markdown table; -1 in the visit columns prints as "never"."""
    def fmt(col: str, v) -> str:
        if isinstance(v, (float, np.floating)) and math.isnan(v):
            return "-"
        if col in ("steps_to_visit_all", "evals_to_visit_all") and v == -1:
            return "never"
        if isinstance(v, (int, np.integer)):
            return f"{v:,}"
        if col in ("tv_distance", "r_hat", "mean error", "variance ratio", "energy distance"):
            return f"{v:.3f}"
        if col in ("evaluations",) and float(v).is_integer():
            return f"{int(v):,}"
        return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.2f}"

    cols = list(table.columns)
    lines = ["| " + " | ".join([index, *cols]) + " |", "|" + "---|" * (len(cols) + 1)]
    for i, name in enumerate(table.index):
        lines.append("| " + " | ".join([str(name), *(fmt(c, table[c].iloc[i]) for c in cols)]) + " |")
    return "\n".join(lines)




def goals(table: pd.DataFrame) -> str:
    """The targets: WJS TV <= 0.05 where NUTS > 0.3; >= 100x NUTS's switches per evaluation."""
    wjs, nuts = table.loc["WalkJump"], table.loc["NUTS"]
    ratio = (math.inf if nuts.switches_per_1000_evals == 0
             else wjs.switches_per_1000_evals / nuts.switches_per_1000_evals)
    return (
        f"WalkJump TV {wjs.tv_distance:.3f} (goal <= 0.05: {'met' if wjs.tv_distance <= 0.05 else 'NOT met'}); "
        f"NUTS TV {nuts.tv_distance:.3f} (> 0.3: {'yes' if nuts.tv_distance > 0.3 else 'no'}); "
        f"switches per evaluation WalkJump / NUTS = {ratio:.3g} (goal >= 100: {'met' if ratio >= 100 else 'NOT met'})"
    )


def dimension_sweep(args: argparse.Namespace) -> pd.DataFrame:
    """The default walk-jump on the ring in every dimension of ``args.sweep_dims``."""
    rows = {}
    for dim in args.sweep_dims:
        target = make_target(dim)
        sigma = walk_jump_sigma(target)
        kernel = WalkJump(target.denoiser(sigma), sigma)
        table = compare(target, {"WalkJump": kernel}, budget=args.budget, num_chains=args.chains,
                        num_warmup=args.warmup, seed=args.seed)
        row = table.loc["WalkJump"]
        rows[dim] = {"walk step / sigma": kernel._step_size / sigma,
                     "switches_per_1000_evals": row.switches_per_1000_evals, "tv_distance": row.tv_distance,
                     "evals_to_visit_all": row.evals_to_visit_all, "ess_bulk": row.ess_bulk,
                     "r_hat": row.r_hat, "wall_time_s": row.wall_time_s}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "d"
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=20_000, help="evaluations per chain")
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 32])
    parser.add_argument("--jumps", type=int, default=2000, help="draws per chain in the M comparison")
    parser.add_argument("--measurements", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="budget 2,000, 4 chains, 200 warmup, M in (1, 4)")
    parser.add_argument("--sweep", action="store_true", help="only the dimension sweep of the default walk-jump")
    parser.add_argument("--sweep-dims", type=int, nargs="+", default=[2, 32, 128, 512])
    args = parser.parse_args()
    if args.quick:
        args.budget, args.chains, args.warmup, args.jumps, args.measurements = 2000, 4, 200, 300, [1, 4]

    print(machine())
    print(f"K={K} ring radius={RADIUS} tau={TAU} weights={WEIGHTS.tolist()} (normalised); "
          f"budget={args.budget:,} evaluations per chain, chains={args.chains}, warmup={args.warmup}, seed={args.seed}")
    if args.sweep:
        table = dimension_sweep(args)
        print("\n### Default WalkJump against the dimension\n")
        print(markdown(table.reset_index().astype({"d": str}).set_index("d"), "d"))
        ok = (table.switches_per_1000_evals >= 50).all() and (table.tv_distance <= 0.03).all()
        print(f"\ngoals (>= 50 switches per 1,000 evaluations, TV <= 0.03 at every d): {'met' if ok else 'NOT met'}")
        return
    for dim in args.dims:
        target = make_target(dim)
        sigma = walk_jump_sigma(target)
        start = time.perf_counter()
        table = compare(target, samplers(target, sigma), budget=args.budget, num_chains=args.chains,
                        num_warmup=args.warmup, seed=args.seed)
        print(f"\n### d = {dim} (sigma = {sigma:.3f}; {time.perf_counter() - start:.0f} s)\n")
        print(markdown(table, "sampler"))
        print("\n" + goals(table))
        print(f"\nSequential jumps at sigma = {sigma:.3f}, {args.jumps:,} draws per chain, "
              f"{args.chains} chains (20 inner steps per measurement):\n")
        print(markdown(sequential_table(target, sigma, args), "jumps"))


if __name__ == "__main__":
    main()
