"""Chain-steps per second against the number of chains: vectorized vs sharded chains.

Targets: MALA (fixed step 0.5, no warmup) on a 100-d standard normal NumPyro model
(``--target mala100``, a chain-step is a MALA step), or walk-jump on MNIST with the
shipped denoiser and ``MNIST_WALK_JUMP`` recipe (``--target mnist``, a chain-step is a
denoiser call, 32 per draw). For each number of chains ``C`` the same
``MCMC(..., num_samples=S, num_chains=C)`` runs with

* ``vectorized``: ``chain_method="vectorized"``, one device (the kernel's own batch);
* ``sharded``: ``chain_method=numpyro_wjs.parallel.sharded()``, the chains split over
  all ``N`` devices of the process (``jax.vmap`` of one chain per device block).

Each ``MCMC`` is built and run inside one ``jax.jit``-ed function (compiled once, then
timed over ``--reps`` calls, median), so the numbers are the compiled program's. The
device count is fixed when JAX starts, so ``N`` = 1, 2 and 4 forced host devices
(``--xla_force_host_platform_device_count``) each run in a fresh process, which also
times its own vectorized baseline: ``ratio`` is sharded / vectorized in that process.
On a CPU the forced devices share the machine's cores; on a GPU machine run
``--devices 1`` (all of the process's GPUs form the mesh).

Run from the repository root::

    python benchmarks/chain_throughput.py                    # N = 1, 2, 4 forced CPU devices
    python benchmarks/chain_throughput.py --devices 1 --chains 256 4096 65536   # e.g. on a GPU
    python benchmarks/chain_throughput.py --target mnist --devices 1 --chains 256 1024 4096 --work 65536  # GPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

DIM = 100
#: Chain-steps per timed call (the steps ``S`` of a call are this over ``C``, at least 20).
WORK = 400_000
#: Chain-draws per timed call for MNIST walk-jump (at least 2 draws; ``--work`` on a GPU).
WORK_MNIST = 64


def _case(target: str):
    """``(make_kernel, init_params(C) or None, evaluations per draw, chain-steps per timed call)``."""
    import jax.numpy as jnp

    if target == "mnist":  # the shipped U-Net and walk-jump recipe (32 denoiser calls a draw)
        from numpyro_wjs import WalkJump
        from numpyro_wjs.nn.pretrained import MNIST_WALK_JUMP, load_pretrained

        net, recipe = load_pretrained("mnist"), dict(MNIST_WALK_JUMP)
        sigma = recipe.pop("sigma")
        kernel = WalkJump(net, sigma, **recipe)
        return (lambda: WalkJump(net, sigma, **recipe)), (lambda c: jnp.zeros((c, 28, 28, 1))), \
            kernel.evaluations_per_draw, WORK_MNIST
    import numpyro
    import numpyro.distributions as dist

    from numpyro_wjs import MALA

    def model():
        numpyro.sample("x", dist.Normal(0.0, 1.0).expand([DIM]))

    return (lambda: MALA(model, step_size=0.5, adapt_step_size=False)), (lambda c: None), 1, WORK


def _worker(target: str, chains: list[int], reps: int, work: int | None) -> list[dict]:
    import jax
    import jax.numpy as jnp
    from numpyro.infer import MCMC

    from numpyro_wjs.parallel import sharded

    make_kernel, init, evaluations, default_work = _case(target)
    work = work or default_work
    rows = []
    for c in chains:
        steps = max(2 if target == "mnist" else 20, work // c)
        times = {}
        for name, method in (("vectorized", "vectorized"), ("sharded", sharded())):
            if name == "sharded" and c % jax.device_count():
                continue

            @jax.jit
            def run(key, method=method, c=c, steps=steps):
                mcmc = MCMC(make_kernel(), num_warmup=0, num_samples=steps, num_chains=c, chain_method=method,
                            progress_bar=False)
                mcmc.run(key, init_params=init(c))
                return jnp.mean(mcmc.get_samples()["x"])

            run(jax.random.key(0)).block_until_ready()  # compile
            ts = []
            for r in range(reps):
                t = time.perf_counter()
                run(jax.random.key(r + 1)).block_until_ready()
                ts.append(time.perf_counter() - t)
            times[name] = statistics.median(ts)
        for name, t in times.items():
            rows.append({"devices": jax.device_count(), "chains": c, "method": name, "steps": steps,
                         "chain_steps_per_s": c * steps * evaluations / t,
                         "ratio": times["vectorized"] / t if name == "sharded" else 1.0})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4],
                        help="forced host device counts, one process each (default: 1 2 4)")
    parser.add_argument("--chains", type=int, nargs="+", default=[4, 16, 64, 256, 1024, 4096, 16384])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--work", type=int, default=None,
                        help=f"chain-draws per timed call (default: {WORK:,} for mala100, {WORK_MNIST} for mnist)")
    parser.add_argument("--target", choices=("mala100", "mnist"), default="mala100",
                        help="MALA on a 100-d normal model, or MNIST walk-jump with the shipped denoiser")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.target, args.chains, args.reps, args.work)))
        return 0
    sys.path.insert(0, os.path.dirname(__file__))
    from _context import machine

    rows = []
    for n in args.devices:
        env = dict(os.environ)
        if n > 1:
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()
        work = [] if args.work is None else ["--work", str(args.work)]
        out = subprocess.run([sys.executable, __file__, "--worker", "--target", args.target, "--reps", str(args.reps),
                              *work, "--chains", *map(str, args.chains)], env=env, capture_output=True, text=True,
                             check=True)
        rows += json.loads(out.stdout.strip().splitlines()[-1])
    what = "MNIST walk-jump (shipped U-Net; a chain-step is a denoiser call)" if args.target == "mnist" \
        else f"MALA, {DIM}-d standard normal model"
    print(f"{what}; {machine()}\n")
    print("| devices | chains | vectorized chain-steps/s | sharded chain-steps/s | sharded / vectorized |")
    print("|---:|---:|---:|---:|---:|")
    for n in args.devices:
        for c in args.chains:
            got = {r["method"]: r for r in rows if r["devices"] == n and r["chains"] == c}
            if not got:
                continue
            sharded = got.get("sharded")
            print(f"| {n} | {c} | {got['vectorized']['chain_steps_per_s']:,.0f} | "
                  + (f"{sharded['chain_steps_per_s']:,.0f} | {sharded['ratio']:.2f} |" if sharded else "- | - |"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
