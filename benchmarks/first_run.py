"""First-run latency: wall time and XLA compilations of a user's first ``MCMC.run``.

Each case runs in a fresh Python process (nothing compiled or cached before it):
import, build the kernel, one ``MCMC.run``, read the draws. Reported: the wall time
of the run (``MCMC.run`` plus ``get_samples``; imports and data loading excluded)
and the XLA compilations it triggered (``jax.monitoring`` backend-compile events).

Cases:

* a 10-d normal model, ``mu ~ N(0, I)``, ``obs ~ N(mu, 1)`` on 5 points per
  coordinate, 4 vectorized chains, 500 warmup + 1,000 draws, with ``NUTS``,
  ``MALA``, ``UnderdampedLangevin``, ``ULA`` and ``GibbsWalkJump(...)`` on their
  defaults;
* MNIST: ``WalkJump`` with the shipped noise-conditional U-Net at ``sigma = 1``,
  8 vectorized chains from black images, 0 warmup + 100 draws (the default walk
  is not adapted).

Run from the repository root::

    python benchmarks/first_run.py            # every case, 3 fresh processes each
    python benchmarks/first_run.py --reps 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

MODEL_CASES = ("NUTS", "MALA", "UnderdampedLangevin", "ULA", "GibbsWalkJump")
CASES = MODEL_CASES + ("WalkJump MNIST U-Net",)


def run_case(name: str) -> dict:
    """One first run in this process; returns wall seconds and compilations."""
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC, NUTS

    from numpyro_wjs import MALA, ULA, GibbsWalkJump, UnderdampedLangevin, WalkJump
    from _context import CompileCounter

    if name == "WalkJump MNIST U-Net":
        from numpyro_wjs.nn.pretrained import load_pretrained

        net = load_pretrained("mnist")
        kernel = WalkJump(net, 1.0)
        mcmc = MCMC(kernel, num_warmup=0, num_samples=100, num_chains=8, chain_method="vectorized",
                    progress_bar=False)
        args, kwargs = (), {"init_params": jnp.zeros((8, 28, 28, 1))}
    else:
        data = jax.random.normal(jax.random.key(1), (5, 10)) + 1.0

        def model(data):
            mu = numpyro.sample("mu", dist.Normal(0.0, 1.0).expand([10]).to_event(1))
            numpyro.sample("obs", dist.Normal(mu, 1.0).to_event(1), obs=data)

        make = {"NUTS": NUTS, "MALA": MALA, "UnderdampedLangevin": UnderdampedLangevin, "ULA": ULA,
                "GibbsWalkJump": lambda m: GibbsWalkJump(m)}[name]
        mcmc = MCMC(make(model), num_warmup=500, num_samples=1000, num_chains=4, chain_method="vectorized",
                    progress_bar=False)
        args, kwargs = (data,), {}
    counter = CompileCounter()
    start = time.perf_counter()
    mcmc.run(jax.random.key(0), *args, **kwargs)
    jax.block_until_ready(mcmc.get_samples())
    return {"wall_s": time.perf_counter() - start, "compiles": counter.count}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3, help="fresh processes per case")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case)))
        return
    from _context import machine

    print(machine())
    print(f"\n| case | first run, s (median of {args.reps}) | XLA compilations |\n|---|---|---|")
    for name in CASES:
        runs = []
        for _ in range(args.reps):
            out = subprocess.run([sys.executable, __file__, "--case", name], capture_output=True, text=True,
                                 check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        wall = statistics.median(r["wall_s"] for r in runs)
        print(f"| {name} | {wall:.2f} | {runs[0]['compiles']} |", flush=True)


if __name__ == "__main__":
    main()
