"""Walk-jump chain-steps per second with the MNIST U-Net: ``MCMC`` against a bare loop.

The denoiser is the shipped noise-conditional U-Net (``load_pretrained("mnist")``,
channels ``(16, 32, 64)``), or, when it is not installed, an untrained network of
the same architecture (the speed does not depend on the weights). The walk is the
fixed walk of :class:`~numpyro_wjs.WalkJump` (no adaptation): BAOAB on ``p_Y`` at ``sigma = 0.5`` with
step ``0.5 sigma``, friction 1, one jump ``x = y + sigma^2 score(y)`` per walk step,
so each chain-step costs one denoiser evaluation. Chains start at held-out MNIST
digits (uniform noise images when MNIST is not available). For ``C`` chains and
``T`` steps, three programs do the same work:

* ``mcmc``: ``MCMC(WalkJump(lambda y: net(y, sigma), sigma), num_warmup=0,
  num_samples=T, num_chains=C, chain_method="vectorized", progress_bar=False)``,
  timed on later ``run`` calls with the same arguments on the same object (the
  first one compiles): what a user pays per run, i.e. the kernel's ``init`` (one
  denoiser call per chain), the loop, the collection of every jump ``x`` (and
  ``diverging``), the ``(T, C) -> (C, T)`` transpose and any recompilation;
* ``mcmc-jit``: the same ``MCMC`` built and run inside one ``jax.jit``-ed function,
  compiled ahead of time: the compiled program alone;
* ``bare``: one ``jax.jit``-ed function: ``vmap`` over chains of the same
  initialisation, then ``jax.lax.scan`` of ``vmap(walkjump.walk_step)`` and the
  jump, stacking the jumps into ``(T, C, 28, 28, 1)``; compiled ahead of time.

``T`` is chosen per size so that one run takes about ``--seconds`` (from the time
of one batched denoiser call), unless ``--steps`` fixes it. The cases are timed
round-robin, ``--reps`` times each (median reported). Reported: chain-steps per
second (``C T`` over the wall time of a run), the wall and process-CPU times, the
XLA compilations per timed run, and the ratios ``mcmc / bare`` (the goal is at
most 1.1) and ``mcmc-jit / bare``. The CPU time, which sums all threads, is less
sensitive to other jobs on a shared machine. ``--variants`` adds, at the sizes it
lists, ``mcmc-jit`` with ``extra_fields=("y",)`` (the walk collected as well),
``mcmc-jit`` with ``thinning=10``, ``bare`` without collection (last state only),
and the kernel's ``init`` alone against the jitted initialisation of ``bare``.

Run from the repository root::

    python benchmarks/mnist_sampling.py [--sizes 1 16 256 1024] [--seconds 6] [--reps 2]
    python benchmarks/mnist_sampling.py --sizes 1 16 --variants 1 16 --reps 3
    python benchmarks/mnist_sampling.py --quick
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
from flax import nnx
from numpyro.infer import MCMC

from numpyro_wjs import langevin
from numpyro_wjs.core import walkjump
from numpyro_wjs.core.walkjump import WalkJumpState
from numpyro_wjs.infer.walkjump import WalkJump
from numpyro_wjs.nn.denoisers import UNet

from _context import CompileCounter, machine

SIGMA = 0.5
STEP_SIZE = 0.5 * SIGMA
FRICTION = 1.0
CHANNELS = (16, 32, 64)
THINNING = 10




def load_network() -> tuple[UNet, str]:
    """The shipped MNIST denoiser, or an untrained U-Net of the same architecture."""
    try:
        from numpyro_wjs.nn.pretrained import load_pretrained

        return load_pretrained("mnist"), "pretrained MNIST denoiser (load_pretrained('mnist'))"
    except FileNotFoundError:
        net = UNet(1, CHANNELS, noise_conditional=True, rngs=nnx.Rngs(0))
        return net, f"untrained UNet(1, {CHANNELS}, noise_conditional=True) (no pretrained weights installed)"


def initial_digits(n: int) -> jax.Array:
    """``n`` held-out MNIST digits (repeated if needed), or uniform noise images."""
    try:
        from numpyro_wjs.data import load_mnist

        images, _ = load_mnist(split="heldout")
    except FileNotFoundError:
        images = np.random.default_rng(0).uniform(size=(2000, 28, 28, 1)).astype(np.float32)
    return jnp.asarray(np.resize(images, (n, *images.shape[1:])))


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall and process-CPU seconds of ``fn()``, blocking on its output."""
    start, start_cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    return time.perf_counter() - start, time.process_time() - start_cpu


def bare_program(net: UNet, steps: int, collect: bool = True) -> Callable:
    """``(chain_keys, x0) -> (jumps (T, C, ...) or None, last WalkJumpState)``, jitted.

    Per chain, as :class:`WalkJump` does: ``y0 = x0 + sigma eps``, ``v0 ~ N(0, I)``,
    then per step split the chain's key, one :func:`walkjump.walk_step` and the jump
    ``y + sigma^2 score``.
    """
    score_fn = walkjump.smoothed_score(lambda y: net(y, SIGMA), SIGMA)

    def init_one(x0: jax.Array, key: jax.Array) -> tuple[WalkJumpState, jax.Array]:
        key, key_noise, key_v = jax.random.split(key, 3)
        y0 = x0 + SIGMA * langevin.normal_like(key_noise, x0)
        return walkjump.walk_init(y0, score_fn, key_v), key

    def step_one(state: WalkJumpState, key: jax.Array) -> tuple[WalkJumpState, jax.Array, jax.Array]:
        key, key_walk = jax.random.split(key)
        state, _ = walkjump.walk_step(key_walk, state, score_fn, STEP_SIZE, FRICTION)
        return state, key, state.y + SIGMA**2 * state.score

    def run(keys: jax.Array, x0: jax.Array):
        states, keys = jax.vmap(init_one)(x0, keys)

        def body(carry, _):
            states, keys, x = jax.vmap(step_one)(*carry)
            return (states, keys), (x if collect else None)

        (states, _), xs = jax.lax.scan(body, (states, keys), length=steps)
        return xs, states

    return jax.jit(run)


def bare_init_program(net: UNet) -> Callable:
    """Jitted ``vmap`` of the initialisation alone (one denoiser call per chain)."""
    score_fn = walkjump.smoothed_score(lambda y: net(y, SIGMA), SIGMA)

    def init(keys: jax.Array, x0: jax.Array) -> WalkJumpState:
        def one(x, key):
            key_noise, key_v = jax.random.split(key)
            return walkjump.walk_init(x + SIGMA * langevin.normal_like(key_noise, x), score_fn, key_v)

        return jax.vmap(one)(x0, keys)

    return jax.jit(init)


def mcmc_runner(
    net: UNet, steps: int, chains: int, key: jax.Array, x0: jax.Array,
    extra_fields: tuple[str, ...] = (), thinning: int = 1, jit: bool = False,
) -> Callable[[], Any]:
    """Zero-argument callable: one ``MCMC.run`` returning the draws, extra fields and last state.

    With ``jit`` the ``MCMC`` object is built and run inside one ``jax.jit``-ed
    function, compiled here ahead of time, so a call costs the compiled program alone.
    """

    def build() -> MCMC:
        kernel = WalkJump(lambda y: net(y, SIGMA), SIGMA, step_size=STEP_SIZE, friction=FRICTION)
        return MCMC(
            kernel, num_warmup=0, num_samples=steps, num_chains=chains,
            chain_method="vectorized", progress_bar=False, thinning=thinning,
        )

    def run(mcmc: MCMC, key: jax.Array, x0: jax.Array):
        mcmc.run(key, init_params=x0[0] if chains == 1 else x0, extra_fields=extra_fields)
        return mcmc.get_samples(group_by_chain=True)["x"], mcmc.get_extra_fields(group_by_chain=True), mcmc.last_state

    if jit:
        compiled = jax.jit(lambda key, x0: run(build(), key, x0)).lower(key, x0).compile()
        return lambda: compiled(key, x0)
    mcmc = build()
    return lambda: run(mcmc, key, x0)


def kernel_init(net: UNet, chains: int, key: jax.Array, x0: jax.Array) -> Callable[[], Any]:
    """``WalkJump.init`` as ``MCMC`` calls it (batched keys, or one key for one chain)."""
    kernel = WalkJump(lambda y: net(y, SIGMA), SIGMA, step_size=STEP_SIZE, friction=FRICTION)
    keys = jax.random.split(key, chains)
    if chains == 1:
        return lambda: kernel.init(key, 0, x0[0])
    return lambda: kernel.init(keys, 0, x0)


def measure(net: UNet, chains: int, args: argparse.Namespace, counter: CompileCounter) -> dict[str, Any]:
    """All timings at one number of chains."""
    key = jax.random.key(0)
    x0 = initial_digits(chains)
    keys = jax.random.split(key, chains)
    res: dict[str, Any] = {"chains": chains}

    init_bare = bare_init_program(net)
    jax.block_until_ready(init_bare(keys, x0))
    eval_s = min(timed(lambda: init_bare(keys, x0))[0] for _ in range(2))
    res["eval_s"] = eval_s
    steps = args.steps or int(np.clip(round(args.seconds / eval_s), 2, args.max_steps))
    res["steps"] = steps

    start = time.perf_counter()
    bare = bare_program(net, steps).lower(keys, x0).compile()
    res["bare_compile_s"] = time.perf_counter() - start
    start = time.perf_counter()
    mcmc_jit = mcmc_runner(net, steps, chains, key, x0, jit=True)
    res["mcmc_jit_compile_s"] = time.perf_counter() - start
    mcmc = mcmc_runner(net, steps, chains, key, x0)
    before = counter.count
    res["mcmc_first_s"] = timed(mcmc)[0]
    res["mcmc_first_compiles"] = counter.count - before

    cases: dict[str, Callable[[], Any]] = {
        "bare": lambda: bare(keys, x0), "mcmc-jit": mcmc_jit, "mcmc": mcmc,
    }
    if chains in args.variants:
        nocollect = bare_program(net, steps, collect=False).lower(keys, x0).compile()
        cases["bare-nocollect"] = lambda: nocollect(keys, x0)
        cases["mcmc-jit+y"] = mcmc_runner(net, steps, chains, key, x0, extra_fields=("y",), jit=True)
        if steps >= THINNING:
            cases[f"mcmc-jit-thin{THINNING}"] = mcmc_runner(
                net, steps, chains, key, x0, thinning=THINNING, jit=True
            )
        cases["init-kernel"] = kernel_init(net, chains, key, x0)
        cases["init-bare"] = lambda: init_bare(keys, x0)
        jax.block_until_ready(cases["init-kernel"]())

    wall: dict[str, list[float]] = {name: [] for name in cases}
    cpu: dict[str, list[float]] = {name: [] for name in cases}
    compiles = {name: 0 for name in cases}
    for _ in range(args.reps):
        for name, fn in cases.items():
            before = counter.count
            w, c = timed(fn)
            wall[name].append(w)
            cpu[name].append(c)
            compiles[name] += counter.count - before
    res["cases"] = {
        name: {"wall": statistics.median(wall[name]), "cpu": statistics.median(cpu[name]),
               "min": min(wall[name]), "compiles": compiles[name] / args.reps}
        for name in cases
    }
    return res




def report_size(res: dict[str, Any]) -> None:
    C, T = res["chains"], res["steps"]
    cases = res["cases"]
    print(
        f"\nC={C} chains, T={T} steps (one batched denoiser call {res['eval_s'] * 1e3:.1f} ms); "
        f"compile: bare {res['bare_compile_s']:.1f} s, mcmc-jit {res['mcmc_jit_compile_s']:.1f} s; "
        f"mcmc first run {res['mcmc_first_s']:.1f} s ({res['mcmc_first_compiles']} compilations)"
    )
    print(f"  {'case':18s} {'chain-steps/s':>13s} {'wall s':>8s} {'min s':>8s} {'cpu s':>8s} {'compiles/run':>12s}")
    for name, r in cases.items():
        rate = f"{C * T / r['wall']:13.1f}" if not name.startswith("init") else f"{'-':>13s}"
        print(f"  {name:18s} {rate} {r['wall']:8.3f} {r['min']:8.3f} {r['cpu']:8.3f} {r['compiles']:12.1f}")
    pairs = (
        ("mcmc", "bare"), ("mcmc-jit", "bare"), ("mcmc", "mcmc-jit"), ("mcmc-jit+y", "mcmc-jit"),
        (f"mcmc-jit-thin{THINNING}", "mcmc-jit"), ("bare", "bare-nocollect"), ("init-kernel", "init-bare"),
    )
    for a, b in pairs:
        if a in cases and b in cases:
            print(f"  ratio {a} / {b}: wall {cases[a]['wall'] / cases[b]['wall']:.3f}, "
                  f"cpu {cases[a]['cpu'] / cases[b]['cpu']:.3f}; difference "
                  f"{cases[a]['wall'] - cases[b]['wall']:.2f} s wall")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 256, 1024], help="numbers of chains")
    parser.add_argument("--seconds", type=float, default=6.0, help="target wall time of one run")
    parser.add_argument("--steps", type=int, default=None, help="fix T instead of choosing it per size")
    parser.add_argument("--max-steps", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=2, help="timed runs per case (median reported)")
    parser.add_argument("--variants", type=int, nargs="*", default=[], help="sizes at which to time the variants")
    parser.add_argument("--quick", action="store_true", help="smoke run: sizes 1 and 16, 0.5 s runs, 1 rep, no variants")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.seconds, args.reps, args.variants = [1, 16], 0.5, 1, []
    if min(args.sizes) < 1 or args.reps < 1 or args.seconds <= 0 or (args.steps is not None and args.steps < 1):
        raise ValueError("need --sizes >= 1, --reps >= 1, --seconds > 0 and --steps >= 1.")
    net, source = load_network()
    print(machine())
    print(f"denoiser: {source}; sigma={SIGMA}, step={STEP_SIZE}, friction={FRICTION}")
    counter = CompileCounter()
    summary = []
    for chains in args.sizes:
        res = measure(net, chains, args, counter)
        report_size(res)
        summary.append(res)
    print(f"\n{'chains':>7s} {'T':>6s} {'chain-steps/s: bare':>20s} {'mcmc-jit':>9s} {'mcmc':>9s}"
          f" {'mcmc-jit/bare wall (cpu)':>25s} {'mcmc/bare wall (cpu)':>21s}")
    for res in summary:
        C, T, cases = res["chains"], res["steps"], res["cases"]
        b, j, m = cases["bare"], cases["mcmc-jit"], cases["mcmc"]
        print(f"{C:7d} {T:6d} {C * T / b['wall']:20.1f} {C * T / j['wall']:9.1f} {C * T / m['wall']:9.1f}"
              f" {j['wall'] / b['wall']:16.3f} ({j['cpu'] / b['cpu']:.3f})"
              f" {m['wall'] / b['wall']:12.3f} ({m['cpu'] / b['cpu']:.3f})")

if __name__ == "__main__":
    main()
