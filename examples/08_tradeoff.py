"""The walk-jump trade-off on MNIST: mixing across digits against sharp jumps, per (sigma, M, mode).

The reader sees a sweep over the walk's noise sigma, the number of measurements M and
the measurement mode with the pretrained U-Net denoiser, 32 chains of 1,000 walk steps
each (a quarter burn-in), every configuration scored by the shipped classifier
(``diagnostics.classifier_scores``): for mixing, *confident* digit changes (between
consecutive jumps classified with probability >= 0.9) per 1,000 walk steps and per
1,000 denoiser calls, and the class total variation to uniform; for quality, the share
of confident jumps and the Frechet distance of classifier features of one jump every
50 walk steps to the held-out digits 8000-9999, as a ratio to its floor (training
digits against held-out ones at the same sample size). With M = 1 the points trace a
frontier: a large sigma mixes, a small one gives sharp digits. Sequential M > 1 keeps
the walk (and so the mixing per walk step) of sigma and sharpens the jumps towards
the quality of sigma / sqrt(M), at (M - 1) (8 + 1) more calls per jump. Next to
every measured Frechet ratio is its oracle: the same score for
``E[X | x + (sigma / sqrt(M)) eps]`` with ``x`` training digits, what the jumps of a
walk that samples ``p_Y`` exactly would give.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from _cli import load_mnist_digits, parse_args, save_figure, save_results
from numpyro.infer import MCMC

from numpyro_wjs.diagnostics import plots
from numpyro_wjs.diagnostics.modes import classifier_scores, frechet_distance
from numpyro_wjs.nn.pretrained import MNIST_WALK_JUMP, load_pretrained
from numpyro_wjs.infer.walkjump import WalkJump

#: Langevin steps per extra measurement of a sequential jump, and walk steps per draw:
#: one jump per walk step when jumps are free (M = 1, joint mode), else those of the
#: shipped settings (``MNIST_WALK_JUMP``: 8 inner steps, a jump every 5 walk steps).
INNER_STEPS, SEQUENTIAL_JUMP_EVERY = MNIST_WALK_JUMP["num_inner_steps"], MNIST_WALK_JUMP["jump_every"]
#: Walk steps between the jumps scored for quality (closer ones are too correlated).
THIN_STEPS = 50
CONFIGS = [(0.7, 1, "sequential"), (1.0, 1, "sequential"), (1.2, 1, "sequential"),
           (1.0, 2, "sequential"), (1.2, 2, "sequential"), (1.0, 4, "sequential"), (1.2, 4, "sequential"),
           (1.0, 8, "sequential"), (1.2, 4, "joint")]
FULL = {"configs": CONFIGS, "chains": 32, "steps": 1000, "heldout": 2000, "shown": 10}
FAST = {"configs": [(1.0, 1, "sequential"), (1.0, 2, "sequential")], "chains": 2, "steps": 80,
        "heldout": 200, "shown": 5}
MARKERS = {1: "o", 2: "s", 4: "^", 8: "v"}


def jump_every(m: int, mode: str) -> int:
    return SEQUENTIAL_JUMP_EVERY if m > 1 and mode == "sequential" else 1


def run_walk_jump(kernel: WalkJump, key: jax.Array, x0: jax.Array, warmup: int, draws: int) -> np.ndarray:
    """Jumps ``(chain, draw, 28, 28, 1)``; ``MCMC`` runs inside one ``jax.jit`` (one compilation)."""

    def run(key, x0):
        mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=x0.shape[0],
                    chain_method="vectorized", progress_bar=False)
        mcmc.run(key, init_params=x0 if x0.shape[0] > 1 else x0[0])
        return mcmc.get_samples(group_by_chain=True)["x"]

    return np.asarray(jax.jit(run)(key, x0))


def frontier_figure(rows: list[dict], heldout_confident: float):
    """Quality (rows of panels) against mixing per walk step and per evaluation (columns).

    Dashed: the held-out digits' own share of confident labels, and the Frechet floor
    (training against held-out digits at the same sample size, ratio 1).
    """
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), layout="constrained", sharey="row")
    xs = (("changes_per_1000_steps", "confident digit changes per 1,000 walk steps"),
          ("changes_per_1000_evaluations", "confident digit changes per 1,000 denoiser calls"))
    ys = (("confident", "share of jumps classified with p >= 0.9\n(higher is better)", heldout_confident,
           "held-out digits themselves"),
          ("frechet_ratio", "Frechet distance to held-out digits / floor\n(classifier features; lower is better)",
           1.0, "floor: training digits, same size"))
    groups = sorted({(r["num_measurements"], r["mode"]) for r in rows})
    for (yk, ylabel, ref, ref_label), row in zip(ys, axes):
        for (xk, xlabel), ax in zip(xs, row):
            for g, (m, mode) in enumerate(groups):
                sel = [r for r in rows if (r["num_measurements"], r["mode"]) == (m, mode)]
                ax.plot([r[xk] for r in sel], [r[yk] for r in sel], marker=MARKERS.get(m, "D"), ms=7,
                        color=f"C{g}", label=f"M = {m}" + (f" ({mode})" if m > 1 else ""))
                for r in sel:
                    ax.annotate(f"$\\sigma$={r['sigma']:g}", (r[xk], r[yk]), textcoords="offset points",
                                xytext=(6, 4), fontsize=8, color=f"C{g}")
            ax.axhline(ref, color="0.4", ls="--", lw=1, label=ref_label)
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
        row[0].set_ylabel(ylabel)
    axes[1, 0].set_yscale("log")
    axes[0, 0].legend(loc="lower left", fontsize=8)
    axes[1, 0].legend(loc="upper left", fontsize=8)
    fig.suptitle("Mixing against quality of walk-jump on MNIST: a larger sigma mixes, more "
                 "measurements sharpen the jumps at more calls per jump", fontsize=11)
    return fig


def samples_figure(examples: dict[str, tuple[np.ndarray, np.ndarray]]):
    """Evenly spaced jumps of chain 0 per configuration, labelled by the classifier."""
    n = min(images.shape[0] for images, _ in examples.values())
    images = np.concatenate([im[:n] for im, _ in examples.values()])
    labels = np.concatenate([lab[:n] for _, lab in examples.values()])
    fig = plots.plot_sample_grid(np.clip(images, 0, 1), labels, ncols=n,
                                 title="Jumps of chain 0 at evenly spaced draws (classifier label above each); "
                                       "both rows of a sigma share the walk")
    for r, name in enumerate(examples):
        fig.axes[r * n].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    return fig


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__, argv)
    budget = FAST if args.fast else FULL
    start = time.perf_counter()
    key = jax.random.key(args.seed)
    train, heldout, _ = load_mnist_digits()
    heldout = heldout[: budget["heldout"]]
    net = load_pretrained("mnist")
    classifier = load_pretrained("mnist-classifier")
    predict = jax.jit(lambda x: classifier.predict(x))
    classify = SimpleNamespace(probs=jax.jit(classifier.probs), features=jax.jit(classifier.features))
    denoise = jax.jit(lambda y, s: net(y, s))
    heldout_features = np.asarray(classify.features(heldout))

    C, T = budget["chains"], budget["steps"]
    x0 = jnp.zeros((C, 28, 28, 1))
    rows, examples = [], {}
    for i, (sigma, M, mode) in enumerate(budget["configs"]):
        t = time.perf_counter()
        J = jump_every(M, mode)
        kernel = WalkJump(net, sigma, num_measurements=M,
                          mode=mode, num_inner_steps=INNER_STEPS, jump_every=J)
        # a quarter of the walk steps is burn-in; the same key for every configuration
        jumps = run_walk_jump(kernel, jax.random.fold_in(key, 2), x0, T // 4 // J, (T - T // 4) // J)
        seconds = time.perf_counter() - t
        evaluations = kernel.evaluations_per_draw
        scores = classifier_scores(jumps, classify, heldout, train, steps_per_draw=J,
                                   evaluations_per_draw=evaluations, thin_steps=THIN_STEPS, seed=args.seed)
        # Oracle: E[X | x + (sigma / sqrt(M)) eps] for training digits x, what the jumps of
        # a walk that samples p_Y exactly would give, scored at the same sample size.
        s_eff = sigma / np.sqrt(M)
        n = scores["frechet_samples"]
        x = train[np.random.default_rng(args.seed + 1).choice(train.shape[0], n, replace=False)]
        noise = np.asarray(jax.random.normal(jax.random.fold_in(key, 1), x.shape))
        oracle = np.asarray(denoise(jnp.asarray(x + s_eff * noise), s_eff))
        oracle_fd = frechet_distance(np.asarray(classify.features(oracle)), heldout_features)
        rows.append({
            "sigma": sigma, "num_measurements": M, "mode": mode, "jump_every": J,
            "jump_noise": round(float(s_eff), 4),
            "evaluations_per_draw": evaluations,
            **scores,
            "frechet_ratio_oracle": oracle_fd / scores["frechet_floor"],
            "seconds": round(seconds, 1),
        })
        idx = np.linspace(0, jumps.shape[1] - 1, min(jumps.shape[1], budget["shown"])).astype(int)
        examples[f"$\\sigma$={sigma:g}, M={M}" + (" joint" if mode == "joint" and M > 1 else "")] = (
            jumps[0, idx], np.asarray(predict(jnp.asarray(jumps[0, idx]))))
        r = rows[-1]
        print(f"[{i + 1}/{len(budget['configs'])}] sigma={sigma:g} M={M} {mode}: "
              f"{r['changes_per_1000_steps']:.1f} changes / 1000 steps, {r['confident']:.1%} confident, "
              f"class TV {r['class_tv']:.3f}, FD {r['frechet_ratio']:.2f}x floor "
              f"(oracle {r['frechet_ratio_oracle']:.2f}x), {seconds:.0f} s", flush=True)

    heldout_confident = float(np.mean(np.asarray(classify.probs(heldout)).max(-1) >= 0.9))
    save_figure(frontier_figure(rows, heldout_confident), args, "tradeoff_frontier")
    save_figure(samples_figure(examples), args, "tradeoff_samples")
    save_results(
        {
            "chains": C,
            "walk_steps_per_chain": T,
            "burn_in_steps": T // 4,
            "thin_steps": THIN_STEPS,
            "num_inner_steps": INNER_STEPS,
            "heldout_digits": int(heldout.shape[0]),
            "heldout_confident": heldout_confident,
            "table": rows,
            "wall_seconds": round(time.perf_counter() - start, 1),
        },
        args,
        "tradeoff",
    )


if __name__ == "__main__":
    main()
