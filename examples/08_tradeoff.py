"""The walk-jump trade-off on MNIST: mixing across digits against sharp jumps, and how measurements move it.

The reader sees a sweep over the walk's noise sigma and the number of measurements M
(sequential mode) with the pretrained U-Net denoiser, every configuration scored for
mixing (classifier-label switches per 1,000 walk steps and per 1,000 denoiser
evaluations, walk steps until all ten digits were visited) and for quality (mean
classifier confidence of the jumps, Frechet distance between the classifier features
of the jumps and of the held-out digits 8000-9999). With M = 1 the points trace a
frontier: a large sigma mixes, a small one gives sharp digits. M = 4 keeps the walk
(and so the mixing per walk step) of sigma and sharpens the jumps towards the quality
of sigma / 2, above that frontier, at the price of more denoiser evaluations per jump. Next to every measured
quality is its oracle: the same score for ``E[X | x + (sigma / sqrt(M)) eps]`` with
``x`` training digits, what the jumps of a chain that samples ``p_Y`` exactly give.
"""

from __future__ import annotations

import itertools
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from _cli import load_mnist_digits, parse_args, save_figure, save_results
from numpyro.infer import MCMC

from numpyro_wjs import plots
from numpyro_wjs.diagnostics import frechet_distance, mode_hopping
from numpyro_wjs.pretrained import load_pretrained
from numpyro_wjs.walkjump import WalkJump

#: Walk steps per jump and Langevin steps per extra measurement (``numpyro-wjs demo --mnist``).
JUMP_EVERY, INNER_STEPS = 5, 8
FULL = {"configs": list(itertools.product((0.5, 0.7, 1.0, 1.2), (1, 4))), "chains": 6, "warmup": 30,
        "draws": 200, "heldout": 2000, "shown": 10}
FAST = {"configs": [(1.0, 1), (1.0, 2)], "chains": 1, "warmup": 5, "draws": 15, "heldout": 200, "shown": 5}
MARKERS = {1: "o", 2: "s", 4: "s"}




def run_walk_jump(kernel: WalkJump, key: jax.Array, x0: jax.Array, warmup: int, draws: int) -> np.ndarray:
    """Jumps ``(chain, draw, 28, 28, 1)``; ``MCMC`` runs inside one ``jax.jit`` (one compilation)."""

    def run(key, x0):
        mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=x0.shape[0],
                    chain_method="vectorized", progress_bar=False)
        mcmc.run(key, init_params=x0 if x0.shape[0] > 1 else x0[0])
        return mcmc.get_samples(group_by_chain=True)

    return np.asarray(jax.jit(run)(key, x0))


def frontier_figure(rows: list[dict], references: dict[str, float]):
    """Quality (rows of panels) against mixing per walk step and per evaluation (columns).

    ``references``: the held-out digits' own confidence and the Frechet distance of
    training digits (the floor of the estimate at this sample size), drawn dashed.
    """
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), layout="constrained", sharey="row")
    xs = (("switches_per_1000_steps", "digit switches per 1,000 walk steps"),
          ("switches_per_1000_evaluations", "digit switches per 1,000 denoiser evaluations"))
    ys = (("confidence", "mean classifier confidence of the jumps\n(higher is better)", "held-out digits themselves"),
          ("frechet", "Frechet distance to held-out digits\n(classifier features; lower is better)",
           "training digits (floor)"))
    for (yk, ylabel, ref), row in zip(ys, axes):
        for (xk, xlabel), ax in zip(xs, row):
            for m in sorted({r["num_measurements"] for r in rows}):
                sel = [r for r in rows if r["num_measurements"] == m]
                ax.plot([r[xk] for r in sel], [r[yk] for r in sel], marker=MARKERS.get(m, "^"), ms=7,
                        color=f"C{0 if m == 1 else 1}", label=f"M = {m}" + (" (sequential)" if m > 1 else ""))
                for r in sel:
                    ax.annotate(f"$\\sigma$={r['sigma']:g}", (r[xk], r[yk]), textcoords="offset points",
                                xytext=(6, 5 if m == 1 else -12), fontsize=8, color=f"C{0 if m == 1 else 1}")
            ax.axhline(references[yk], color="0.4", ls="--", lw=1, label=ref)
            ax.set_xlabel(xlabel)
            ax.grid(alpha=0.3)
        row[0].set_ylabel(ylabel)
    axes[1, 0].set_yscale("log")
    axes[0, 0].legend(loc="lower left", fontsize=9)
    axes[1, 0].legend(loc="upper right", fontsize=9)
    fig.suptitle("Mixing against quality of walk-jump on MNIST: M > 1 lifts the frontier "
                 "per walk step, at more evaluations per jump", fontsize=11)
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
    train, heldout, heldout_labels = load_mnist_digits()
    heldout = heldout[: budget["heldout"]]
    net = load_pretrained("mnist")
    classifier = load_pretrained("mnist-classifier")
    predict = jax.jit(lambda x: classifier.predict(x))
    confidence = jax.jit(lambda x: classifier.probs(x).max(-1))
    features = jax.jit(lambda x: classifier.features(x))
    denoise = jax.jit(lambda y, s: net(y, s))
    heldout_features = np.asarray(features(jnp.asarray(heldout)))

    C, N = budget["chains"], budget["draws"]
    num_jumps = C * N
    # Oracle inputs: training digits, as many as jumps (the Frechet estimate's bias depends on n).
    reference = train[np.random.default_rng(args.seed).choice(train.shape[0], num_jumps, replace=False)]
    reference_noise = np.asarray(jax.random.normal(jax.random.fold_in(key, 1), reference.shape))
    x0 = jnp.zeros((C, 28, 28, 1))
    rows, examples = [], {}
    for i, (sigma, M) in enumerate(budget["configs"]):
        t = time.perf_counter()
        kernel = WalkJump(lambda y, s: net(y, s), sigma, noise_conditional=True, num_measurements=M,
                          mode="sequential", num_inner_steps=INNER_STEPS, jump_every=JUMP_EVERY)
        # the same key for every configuration: equal sigma gives the same walk whatever M
        jumps = run_walk_jump(kernel, jax.random.fold_in(key, 2), x0, budget["warmup"], N)
        seconds = time.perf_counter() - t
        stats = mode_hopping(jumps, predict, num_modes=10, weights=np.bincount(heldout_labels, minlength=10),
                             event_ndim=3, batch_size=512)
        flat = jnp.asarray(jumps.reshape(num_jumps, 28, 28, 1))
        evaluations = kernel.evaluations_per_draw
        switches = int(stats.switches.values.sum())
        draws_to_all = stats.steps_to_visit_all.values
        s_eff = sigma / np.sqrt(M)
        oracle = np.asarray(denoise(jnp.asarray(reference + s_eff * reference_noise), s_eff))
        rows.append({
            "sigma": sigma,
            "num_measurements": M,
            "jump_noise": round(float(s_eff), 4),
            "evaluations_per_draw": evaluations,
            "switches": switches,
            "switches_per_1000_steps": 1000 * switches / (C * (N - 1) * JUMP_EVERY),
            "switches_per_1000_evaluations": 1000 * switches / (C * (N - 1) * evaluations),
            "digits_visited_per_chain": stats.modes_visited.values.tolist(),
            "steps_to_visit_all_per_chain": np.where(draws_to_all > 0, draws_to_all * JUMP_EVERY, -1).tolist(),
            "evaluations_to_visit_all_per_chain": np.where(draws_to_all > 0, draws_to_all * evaluations, -1).tolist(),
            "tv_to_heldout_frequencies": float(stats.tv_distance_all),
            "confidence": float(np.mean(confidence(flat))),
            "confidence_oracle": float(np.mean(confidence(jnp.asarray(oracle)))),
            "frechet": frechet_distance(np.asarray(features(flat)), heldout_features),
            "frechet_oracle": frechet_distance(np.asarray(features(jnp.asarray(oracle))), heldout_features),
            "seconds": round(seconds, 1),
        })
        idx = np.linspace(0, N - 1, min(N, budget["shown"])).astype(int)
        examples[f"$\\sigma$={sigma:g}, M={M}"] = (jumps[0, idx], np.asarray(predict(jnp.asarray(jumps[0, idx]))))
        r = rows[-1]
        print(f"[{i + 1}/{len(budget['configs'])}] sigma={sigma:g} M={M}: "
              f"{r['switches_per_1000_steps']:.1f} switches / 1000 steps, confidence {r['confidence']:.3f} "
              f"(oracle {r['confidence_oracle']:.3f}), FD {r['frechet']:.2f} (oracle {r['frechet_oracle']:.2f}), "
              f"{seconds:.0f} s", flush=True)

    data_floor = frechet_distance(np.asarray(features(jnp.asarray(reference))), heldout_features)
    heldout_confidence = float(np.mean(confidence(jnp.asarray(heldout))))
    references = {"confidence": heldout_confidence, "frechet": data_floor}
    save_figure(frontier_figure(rows, references), args, "tradeoff_frontier")
    save_figure(samples_figure(examples), args, "tradeoff_samples")
    save_results(
        {
            "chains": C,
            "warmup_draws": budget["warmup"],
            "draws_per_chain": N,
            "jump_every": JUMP_EVERY,
            "num_inner_steps": INNER_STEPS,
            "heldout_digits": int(heldout.shape[0]),
            "frechet_training_digits": data_floor,
            "heldout_confidence": heldout_confidence,
            "table": rows,
            "wall_seconds": round(time.perf_counter() - start, 1),
        },
        args,
        "tradeoff",
    )


if __name__ == "__main__":
    main()
