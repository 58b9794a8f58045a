"""Training throughput of the MNIST U-Net denoiser: images per second and peak memory.

Each configuration (U-Net channels, batch size) runs in a fresh Python process, so
its compilation and peak memory are its own. The process builds a noise-conditional
``UNet(1, channels)``, the AdamW optimizer of :func:`numpyro_wjs.nn.train.train_denoiser`
(global-norm clipping at 1, warmup-cosine schedule, weight decay 1e-4) and the EMA
copy, and calls :func:`numpyro_wjs.nn.train.train_iteration` (batch drawn from the data
on the device, noise ``s`` log-uniform in ``[0.05, 1.2]``, one optimizer step, EMA
update): the jitted step ``train_denoiser`` runs. The data are the MNIST training
split (``load_mnist(split="train")``, 8,000 digits; uniform noise images when MNIST is
not available). Timed: the first call (compilation and one step), then ``N`` steps
chosen from two warm steps so that they take about ``--seconds``, blocking on the
last loss. Reported: seconds per step, images per second (``N B`` over the wall
time), the process CPU time per step (all threads), and memory: on CPU the peak
resident set size of the process (``ru_maxrss``) and its growth from just before
the first call (compilation, optimizer state, activations); on an accelerator
``peak_bytes_in_use`` of the device (``Device.memory_stats()``).

The default backend is used (``JAX_PLATFORMS=cpu`` forces the CPU). Run from the
repository root::

    python benchmarks/train_throughput.py [--batch-sizes 32 64 128] [--channels 16,32,64 32,64,128] [--seconds 15]
    python benchmarks/train_throughput.py --quick
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import resource
import subprocess
import sys
import time
from typing import Any

from _context import machine

SIGMA_RANGE = (0.05, 1.2)
LEARNING_RATE = 1e-3
EMA_DECAY = 0.999


def _rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(channels: tuple[int, ...], batch_size: int, seconds: float, min_steps: int, max_steps: int) -> dict[str, Any]:
    """Throughput of ``train_iteration`` for one configuration, in this process."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from numpyro_wjs.nn.denoisers import UNet
    from numpyro_wjs.nn.train import train_iteration

    try:
        from numpyro_wjs.data import load_mnist

        data, _ = load_mnist(split="train")
        source = "MNIST train split"
    except FileNotFoundError:
        data = np.random.default_rng(0).uniform(size=(8000, 28, 28, 1)).astype(np.float32)
        source = "uniform noise images"

    model = UNet(1, channels, noise_conditional=True, rngs=nnx.Rngs(0))
    schedule = optax.warmup_cosine_decay_schedule(0.0, LEARNING_RATE, 100, 10_000, 0.01 * LEARNING_RATE)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=1e-4))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    ema_model = nnx.clone(model)
    num_params = sum(math.prod(p.shape) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    data_device = jax.device_put(jnp.asarray(data))
    sigma = jnp.asarray(SIGMA_RANGE, data_device.dtype)
    key = jax.random.key(0)
    iteration = functools.partial(
        nnx.cached_partial(train_iteration, model, opt, ema_model),
        batch_size=batch_size,
        ema_decay=EMA_DECAY,
        batch_sharding=None,
    )
    jax.block_until_ready(data_device)
    rss_before = _rss_mib()

    start = time.perf_counter()
    loss = iteration(data_device, key, jnp.int32(0), sigma)
    jax.block_until_ready(loss)
    first_s = time.perf_counter() - start

    start = time.perf_counter()
    for step in (1, 2):
        loss = iteration(data_device, key, jnp.int32(step), sigma)
    jax.block_until_ready(loss)
    estimate = (time.perf_counter() - start) / 2
    steps = int(np.clip(round(seconds / estimate), min_steps, max_steps))

    losses = []
    start, start_cpu = time.perf_counter(), time.process_time()
    for step in range(3, 3 + steps):
        losses.append(iteration(data_device, key, jnp.int32(step), sigma))
    jax.block_until_ready(losses)
    wall = time.perf_counter() - start
    cpu = time.process_time() - start_cpu
    if not np.all(np.isfinite(np.asarray(jax.device_get(losses)))):
        raise FloatingPointError("the training loss became non-finite during the benchmark")

    stats = jax.devices()[0].memory_stats() or {}
    return {
        "channels": list(channels),
        "batch_size": batch_size,
        "num_params": int(num_params),
        "data": source,
        "device": str(jax.devices()[0]),
        "first_call_s": first_s,
        "steps": steps,
        "wall_s": wall,
        "cpu_s": cpu,
        "s_per_step": wall / steps,
        "images_per_s": steps * batch_size / wall,
        "peak_rss_mib": _rss_mib(),
        "rss_growth_mib": _rss_mib() - rss_before,
        "device_peak_mib": stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None,
    }




def parse_channels(text: str) -> tuple[int, ...]:
    """``"16,32,64"`` -> ``(16, 32, 64)``."""
    try:
        channels = tuple(int(c) for c in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"channels must look like 16,32,64; got {text!r}") from None
    if not channels or min(channels) < 1 or any(c % 8 for c in channels):
        raise argparse.ArgumentTypeError(f"channels must be positive multiples of 8 (GroupNorm groups); got {text!r}")
    return channels


def run_child(config: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`measure` for ``config`` in a fresh process; its JSON result."""
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(config)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"configuration {config} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--channels", type=parse_channels, nargs="+", default=[(16, 32, 64), (32, 64, 128)],
                        help="U-Net widths per level, e.g. 16,32,64 (the shipped denoiser) 32,64,128")
    parser.add_argument("--seconds", type=float, default=15.0, help="target wall time of the timed steps")
    parser.add_argument("--min-steps", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="smoke run: batch 32 only, 2 s per configuration")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        c = json.loads(args.child)
        print(json.dumps(measure(tuple(c["channels"]), c["batch_size"], c["seconds"], c["min_steps"], c["max_steps"])))
        return
    if args.quick:
        args.batch_sizes, args.seconds, args.min_steps = [32], 2.0, 2
    if min(args.batch_sizes) < 1 or args.seconds <= 0 or not 1 <= args.min_steps <= args.max_steps:
        raise ValueError("need --batch-sizes >= 1, --seconds > 0 and 1 <= --min-steps <= --max-steps.")

    print(machine())
    print(f"noise-conditional UNet(1, channels), sigma ~ log-uniform{SIGMA_RANGE}, AdamW + EMA (train_iteration)")
    header = (f"{'channels':>12s} {'params':>8s} {'batch':>5s} {'steps':>5s} {'s/step':>7s} {'images/s':>9s} "
              f"{'cpu s/step':>10s} {'1st call s':>10s} {'peak RSS MiB':>12s} {'RSS growth':>10s} {'device peak MiB':>15s}")
    print(header, flush=True)
    results = []
    for channels in args.channels:
        for batch_size in args.batch_sizes:
            r = run_child({"channels": list(channels), "batch_size": batch_size, "seconds": args.seconds,
                           "min_steps": args.min_steps, "max_steps": args.max_steps})
            results.append(r)
            peak = "-" if r["device_peak_mib"] is None else f"{r['device_peak_mib']:.0f}"
            print(f"{','.join(map(str, r['channels'])):>12s} {r['num_params']:8d} {r['batch_size']:5d} {r['steps']:5d} "
                  f"{r['s_per_step']:7.3f} {r['images_per_s']:9.1f} {r['cpu_s'] / r['steps']:10.3f} "
                  f"{r['first_call_s']:10.1f} {r['peak_rss_mib']:12.0f} {r['rss_growth_mib']:10.0f} {peak:>15s}",
                  flush=True)
    print(f"device: {results[0]['device']}; data: {results[0]['data']}")


if __name__ == "__main__":
    main()
