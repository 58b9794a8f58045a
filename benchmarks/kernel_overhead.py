"""Time per step of the Langevin kernels driven by ``numpyro.infer.MCMC``.

Target: an isotropic Gaussian mixture ``p(x) = (1/K) sum_k N(x; mu_k, I)`` on
``R^d`` with ``|mu_k| = 3``. For each of ULA, MALA and UnderdampedLangevin (BAOAB)
the same update runs on ``C`` vectorized chains for ``T`` steps in these loops:

* ``mcmc``: ``MCMC(kernel, num_warmup=0, num_samples=T, num_chains=C,
  chain_method="vectorized", progress_bar=False)`` with adaptation off (fixed step
  size), timed on repeated ``run`` calls with the same arguments: what a user pays,
  i.e. the kernel's ``init``, the loop, the collection of every draw, the
  ``(T, C, d) -> (C, T, d)`` transpose and any recompilation;
* ``mcmc-jit``: the same ``MCMC`` built and run inside one ``jax.jit``-ed function
  (compiled once), so the cost is the compiled program alone;
* ``floor``: ``jax.lax.scan`` over ``jax.vmap`` of the pure step of
  :mod:`numpyro_wjs.core.langevin`, stacking the positions into ``(T, C, d)``;
* ``blackjax`` (MALA only): ``blackjax.mala`` in the same scan-vmap loop.

Every scan loop carries one key per chain and splits it once per step, as the
kernels do. Also timed: ``floor-chain-major``, the floor returning ``(C, T, d)``
like ``MCMC``; ``*-fixed``, a 10-step run (the per-run fixed cost);
``mcmc-jit-warmup-adapt`` and ``mcmc-jit-warmup-fixed-h``, ``num_warmup =
num_samples = T/2`` with adaptation (step size for MALA, diagonal mass matrix for
all) on and off; and ``transpose``, ``jnp.swapaxes`` of one ``(T, C, d)`` array.

All cases are timed round-robin (one warm-up call each, then ``--reps`` rounds),
so load changes on a shared machine hit every case alike. Reported per step for
all ``C`` chains together: the median and the minimum wall time, and the median
process CPU time (less sensitive to other jobs on the machine). ``compiles`` counts
XLA compilations during the timed calls (0 means the compiled program was reused).

Needs BlackJAX (``pip install -e ".[bench]"``). Run from the repository root::

    python benchmarks/kernel_overhead.py [--chains 64] [--dim 100] [--steps 2000] [--reps 5]
    python benchmarks/kernel_overhead.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC

from numpyro_wjs import MALA, ULA, UnderdampedLangevin, langevin
from numpyro_wjs.targets import GaussianMixture

from _context import CompileCounter, machine

KERNELS = ("ULA", "MALA", "UnderdampedLangevin")
ULA_STEP = 0.05
MALA_STEP = 0.2
BAOAB_STEP = 0.3
FRICTION = 1.0
FIXED_STEPS = 10




def make_target(dim: int, modes: int) -> GaussianMixture:
    """``K`` unit-variance components with means ``3 u_k``, ``u_k`` uniform on the sphere."""
    rng = np.random.default_rng(0)
    u = rng.standard_normal((modes, dim))
    means = 3.0 * u / np.linalg.norm(u, axis=1, keepdims=True)
    return GaussianMixture(np.ones(modes, np.float32), means.astype(np.float32), 1.0)


def scan_loop(
    step: Callable, state: Any, keys: jax.Array, steps: int, chain_major: bool = False
) -> Callable[[], Any]:
    """Jitted ``lax.scan`` of ``vmap(step)`` over chains.

    Returns the last carry and the positions, ``(T, C, d)``, or ``(C, T, d)`` (the
    layout ``MCMC`` returns) with ``chain_major``.
    """

    def body(carry, _):
        state, keys = carry
        split = jax.vmap(jax.random.split)(keys)
        state = jax.vmap(step)(split[:, 1], state)
        return (state, split[:, 0]), state[0]  # the position: z, or BlackJAX's position

    def run(state, keys):
        last, xs = jax.lax.scan(body, (state, keys), length=steps)
        return last, (jnp.swapaxes(xs, 0, 1) if chain_major else xs)

    run = jax.jit(run)
    return lambda: run(state, keys)


def mcmc_loop(
    kernel, num_warmup: int, num_samples: int, chains: int, key: jax.Array, init: jax.Array, jit: bool
) -> Callable[[], Any]:
    """Vectorized ``MCMC.run``; returns the draws ``(C, T, d)`` and the last state.

    Without ``jit`` one ``MCMC`` object is run again on every call, as a user would.
    With ``jit`` the ``MCMC`` object is built and run inside one ``jax.jit``-ed
    function; the kernel is built outside it.
    """

    def make() -> MCMC:
        return MCMC(
            kernel,
            num_warmup=num_warmup,
            num_samples=num_samples,
            num_chains=chains,
            chain_method="vectorized",
            progress_bar=False,
        )

    def run(mcmc: MCMC, key: jax.Array, init: jax.Array):
        mcmc.run(key, init_params=init)
        return mcmc.get_samples(group_by_chain=True), mcmc.last_state

    if jit:
        compiled = jax.jit(lambda key, init: run(make(), key, init))
        return lambda: compiled(key, init)
    mcmc = make()
    return lambda: run(mcmc, key, init)


def build_cases(args: argparse.Namespace) -> dict[str, Callable[[], Any]]:
    """Name -> zero-argument callable whose output is blocked on when timed."""
    import blackjax

    target = make_target(args.dim, args.modes)
    key_init, key_run, key_chains = jax.random.split(jax.random.key(0), 3)
    init = target.sample(key_init, (args.chains,))
    chain_keys = jax.random.split(key_chains, args.chains)
    score, logp, potential = target.score, target.log_prob, target.potential_fn
    T, C = args.steps, args.chains

    def kernel(name: str, adapt: bool):
        if name == "ULA":
            return ULA(score_fn=score, step_size=ULA_STEP, adapt_step_size=adapt, adapt_mass_matrix=adapt, num_steps=1)
        if name == "MALA":
            return MALA(
                potential_fn=potential, step_size=MALA_STEP, adapt_step_size=adapt, adapt_mass_matrix=adapt
            )
        return UnderdampedLangevin(
            score_fn=score, step_size=BAOAB_STEP, friction=FRICTION, adapt_step_size=adapt, adapt_mass_matrix=adapt
        )

    bj = blackjax.mala(logp, MALA_STEP)
    steps = {
        "ULA": (  # the bare move, without the energy error the kernel reports
            lambda k, s: s._replace(z=(x := langevin.langevin_proposal(k, s.z, s.score, ULA_STEP)), score=score(x)),
            jax.vmap(lambda x: langevin.ula_init(x, score))(init),
        ),
        "MALA": (
            lambda k, s: langevin.mala_step(k, s, logp, MALA_STEP)[0],
            jax.vmap(lambda x: langevin.mala_init(x, logp))(init),
        ),
        "UnderdampedLangevin": (
            lambda k, s: s._replace(**dict(zip(("z", "velocity", "score"), langevin.baoab(
                k, s.z, s.velocity, s.score, score, BAOAB_STEP, FRICTION)))),
            jax.vmap(lambda x, k: langevin.underdamped_init(x, score, k))(init, chain_keys),
        ),
    }
    cases: dict[str, Callable[[], Any]] = {}
    for name in KERNELS:
        cases[f"{name}/mcmc"] = mcmc_loop(kernel(name, False), 0, T, C, key_run, init, jit=False)
        cases[f"{name}/mcmc-jit"] = mcmc_loop(kernel(name, False), 0, T, C, key_run, init, jit=True)
        cases[f"{name}/floor"] = scan_loop(*steps[name], chain_keys, T)
        cases[f"{name}/floor-chain-major"] = scan_loop(*steps[name], chain_keys, T, chain_major=True)
    cases["MALA/blackjax"] = scan_loop(
        lambda k, s: bj.step(k, s)[0], jax.vmap(bj.init)(init), chain_keys, T
    )
    for name in KERNELS:
        for jit in (False, True):
            cases[f"{name}/mcmc{'-jit' if jit else ''}-fixed"] = mcmc_loop(
                kernel(name, False), 0, FIXED_STEPS, C, key_run, init, jit=jit
            )
    if not args.no_adapt:
        for name in KERNELS:
            for adapt in (False, True):
                cases[f"{name}/mcmc-jit-warmup-{'adapt' if adapt else 'fixed-h'}"] = mcmc_loop(
                    kernel(name, adapt), T // 2, T - T // 2, C, key_run, init, jit=True
                )
    draws = jnp.zeros((T, C, args.dim))
    cases["transpose"] = lambda: jnp.swapaxes(draws, 0, 1)
    return cases


def time_cases(cases: dict[str, Callable[[], Any]], reps: int) -> dict[str, dict[str, float]]:
    """Round-robin timing; per case: ``first`` (s), ``wall`` and ``cpu`` medians, ``min`` (s), ``compiles``."""
    counter = CompileCounter()
    out = {name: {"compiles": 0} for name in cases}
    for name, fn in cases.items():
        start = time.perf_counter()
        jax.block_until_ready(fn())
        out[name]["first"] = time.perf_counter() - start
    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(reps):
        for name, fn in cases.items():
            before = counter.count
            start, start_cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn())
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            out[name]["compiles"] += counter.count - before
    for name in cases:
        out[name].update(wall=statistics.median(wall[name]), min=min(wall[name]), cpu=statistics.median(cpu[name]))
    return out




def report(args: argparse.Namespace, res: dict[str, dict[str, float]]) -> None:
    T = args.steps

    def per_step(name: str, field: str) -> float:
        return 1e6 * res[name][field] / T

    def ratio(a: str, b: str) -> str:
        return f"{res[a]['wall'] / res[b]['wall']:6.2f} ({res[a]['cpu'] / res[b]['cpu']:5.2f})"

    import blackjax

    print(machine(blackjax=blackjax.__version__))
    print(f"chains={args.chains} dim={args.dim} modes={args.modes} steps={T} reps={args.reps}")
    header = ("wall us/step", 12), ("min", 8), ("cpu us/step", 11), ("run s", 8), ("1st s", 7), ("compiles", 8)
    print(f"\n{'case':44s} " + " ".join(f"{h:>{w}s}" for h, w in header))
    for name, r in res.items():
        if name.endswith("-fixed"):
            cols = f"{'-':>12s} {'-':>8s} {'-':>11s}"
        else:
            cols = f"{per_step(name, 'wall'):12.1f} {per_step(name, 'min'):8.1f} {per_step(name, 'cpu'):11.1f}"
        print(f"{name:44s} {cols} {r['wall']:8.3f} {r['first']:7.2f} {r['compiles']:8d}")
    print("\nratios: median wall (median cpu)")
    for name in KERNELS:
        pairs = [("mcmc", "floor"), ("mcmc-jit", "floor"), ("mcmc-jit", "floor-chain-major")]
        if f"{name}/mcmc-jit-warmup-adapt" in res:
            pairs.append(("mcmc-jit-warmup-adapt", "mcmc-jit-warmup-fixed-h"))
        for a, b in pairs:
            print(f"  {f'{name} {a} / {b}':68s} {ratio(f'{name}/{a}', f'{name}/{b}')}")
    for v in ("mcmc", "mcmc-jit", "floor"):
        print(f"  {f'MALA {v} / blackjax':68s} {ratio(f'MALA/{v}', 'MALA/blackjax')}")
    print("\nfixed cost per run, s (10-step run): " + ", ".join(
        f"{name} {res[f'{name}/mcmc-fixed']['wall']:.3f} (jit {res[f'{name}/mcmc-jit-fixed']['wall']:.4f})"
        for name in KERNELS
    ))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chains", type=int, default=64)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--modes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-adapt", action="store_true", help="skip the adaptation-on runs")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 8 chains, d=10, 50 steps, 1 rep, no adaptation runs"
    )
    args = parser.parse_args()
    if args.quick:
        args.chains, args.dim, args.steps, args.reps, args.no_adapt = 8, 10, 50, 1, True
    if args.chains < 2 or args.dim < 1 or args.modes < 1 or args.reps < 1:
        parser.error("need --chains >= 2, --dim >= 1, --modes >= 1 and --reps >= 1.")
    if args.steps <= FIXED_STEPS:
        parser.error(f"--steps must exceed {FIXED_STEPS}, the length of the fixed-cost run.")
    report(args, time_cases(build_cases(args), args.reps))


if __name__ == "__main__":
    main()
