"""Held-out error of the MNIST denoiser against training images seen: what more compute buys.

Reads a training folder of ``numpyro_wjs.nn.pretrained.train_pretrained_denoiser``
(``numpyro-wjs train --pretrained-mnist --checkpoint-dir DIR``), scores the EMA weights
of every ``--every``-th checkpoint on the held-out digits 8000-9999 (mean squared error
per pixel at ``EVAL_SIGMAS``, the same noise for every checkpoint) and prints a table
beside the validation error (digits 7000-7999) that chose the published checkpoint.
Held-out numbers are only reported, never used to choose. With ``--figure PATH`` it
draws the curve, with the targets (per pixel 0.0190 at sigma = 1, 0.0074 at 0.5) and
the former shipped network (128,000 images) for scale.

Run from the repository root::

    python benchmarks/mnist_denoiser_curve.py DIR [--every 2] [--figure docs/figures/mnist_denoiser_curve.png]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from numpyro_wjs.data import load_mnist
from numpyro_wjs.nn.pretrained import EVAL_SIGMAS, heldout_errors
from numpyro_wjs.nn.train import checkpoint_metadata, load_denoiser

from _context import machine

PIXELS = 784
TARGETS = {"1.0": 0.0190, "0.5": 0.0074}
#: The denoiser shipped before (UNet 16-32-64, log-uniform levels, 4,000 steps of 32 images).
FORMER = {"images": 128_000, "mse": {"0.1": 0.6880, "0.25": 2.5233, "0.5": 6.6464, "1.0": 18.0187}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="training folder (step_* checkpoints)")
    parser.add_argument("--every", type=int, default=1, help="score every k-th checkpoint (and the last)")
    parser.add_argument("--figure", type=Path, default=None)
    args = parser.parse_args()
    print(machine())
    steps = sorted(int(m.group(1)) for p in args.run.iterdir() if (m := re.fullmatch(r"step_(\d+)", p.name)))
    if not steps:
        raise SystemExit(f"no step_* checkpoints in {args.run}")
    chosen = steps[:: args.every] + ([steps[-1]] if (len(steps) - 1) % args.every else [])
    heldout, _ = load_mnist(split="heldout")
    last = checkpoint_metadata(args.run / f"step_{steps[-1]:08d}")
    batch = last["train"]["batch_size"]
    history = last.get("eval_history", {})
    validation = dict(zip(history.get("steps", []), history.get("mse", [])))
    rows = []
    for step in chosen:
        scores = heldout_errors(load_denoiser(args.run / f"step_{step:08d}"), heldout)
        rows.append((step, {s: v["mse"] / PIXELS for s, v in scores.items()}))
        print(f"step {step}: " + ", ".join(f"{s}: {v:.5f}" for s, v in rows[-1][1].items()), flush=True)
    levels = [str(s) for s in EVAL_SIGMAS]
    print(f"\nvalidation (digits 7000-7999) at sigma {history.get('sigmas')}: summed MSE per image\n")
    print("| step | images seen | validation | " + " | ".join(f"held-out sigma={s}" for s in levels) + " |")
    print("|---:|---:|---:|" + "---:|" * len(levels))
    for step, mse in rows:
        val = f"{sum(validation[step]):.2f}" if step in validation else "-"
        print(f"| {step} | {step * batch:,} | {val} | " + " | ".join(f"{mse[s]:.5f}" for s in levels) + " |")
    if args.figure is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
        images = np.array([step * batch for step, _ in rows])
        for i, s in enumerate(levels):
            ax.plot(images, [mse[s] for _, mse in rows], "o-", color=f"C{i}", ms=4, label=f"$\\sigma$={s}")
            ax.plot(FORMER["images"], FORMER["mse"][s] / PIXELS if s in FORMER["mse"] else np.nan, "x",
                    color=f"C{i}", ms=8)
            if s in TARGETS:
                ax.axhline(TARGETS[s], color=f"C{i}", ls="--", lw=1)
        ax.plot([], [], "kx", label="former shipped network")
        ax.plot([], [], "k--", lw=1, label="targets ($\\sigma$ = 1, 0.5)")
        ax.set(xscale="log", yscale="log", xlabel="training images seen",
               ylabel="held-out MSE per pixel (digits 8000-9999)",
               title="Shipped MNIST denoiser: held-out error against training images seen")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, ncol=2)
        fig.savefig(args.figure, dpi=90)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
