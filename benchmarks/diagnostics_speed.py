"""Time ``mode_hopping`` on 10^6 mode labels (8 chains x 125,000 draws, K modes).

Labels follow a sticky Markov chain (switch probability 0.01 per draw), so every
statistic, the indicator ESS included, does real work. Run:
``python benchmarks/diagnostics_speed.py [--modes 10] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from numpyro_wjs.diagnostics import modes as diagnostics


def sticky_labels(rng: np.random.Generator, chains: int, draws: int, K: int) -> np.ndarray:
    """Labels that jump to a uniform random other mode with probability 0.01."""
    jump = rng.random((chains, draws)) < 0.01
    step = np.where(jump, rng.integers(1, K, (chains, draws)), 0)
    return np.cumsum(step, axis=1) % K


def best_of(fn, repeats: int) -> float:
    """Smallest wall time of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--draws", type=int, default=125_000)
    parser.add_argument("--modes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    labels = sticky_labels(np.random.default_rng(0), args.chains, args.draws, args.modes)
    lengths = np.full(args.chains, args.draws)
    weights = np.full(args.modes, 1.0 / args.modes)
    total = best_of(lambda: diagnostics.mode_hopping(labels, weights=weights), args.repeats)
    core = best_of(
        lambda: diagnostics._chain_stats(labels.ravel(), lengths, args.modes, 0, args.modes - 1),
        args.repeats,
    )
    occupancy = np.bincount(labels.ravel(), minlength=args.modes) / labels.size
    ess = best_of(lambda: diagnostics._indicator_ess(labels, occupancy), args.repeats)
    print(f"{labels.size:,} labels ({args.chains} chains x {args.draws:,} draws, K={args.modes})")
    print(f"mode_hopping total:               {total * 1e3:8.1f} ms")
    print(f"  switches/occupancy/visits/trips: {core * 1e3:8.1f} ms")
    print(f"  indicator ESS (ArviZ):           {ess * 1e3:8.1f} ms")


if __name__ == "__main__":
    main()
