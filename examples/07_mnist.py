"""MNIST: a learned denoiser turns noisy digits back into digits, and walk-jump samples new ones.

The reader sees held-out digits (8000-9999) with Gaussian noise at several sigma next
to the pretrained noise-conditional U-Net's estimates ``E[X | y]`` (held-out squared
error per sigma against ``784 sigma^2``, the error of the noisy image itself); one
walk-jump chain as a strip, the noisy walk ``y_t`` at sigma = 1.2 above and its jumps
below, each jump the posterior mean given four measurements (sequential mode: the
sharpness of sigma / 2; the shipped settings ``MNIST_WALK_JUMP``, the best point of
example 8's frontier); and the classifier's digit label of every jump over time: the
chains hop between digit classes and visit all ten, in proportions close to those of
the held-out digits.

``--train`` trains a small U-Net on the training digits 0-7999 (a few minutes on a
CPU, with a progress bar) instead of loading the pretrained one; ``--fast`` always
uses the pretrained one, with a short single-measurement chain.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from _cli import load_mnist_digits, parse_args, save_figure, save_results
from numpyro.infer import MCMC

from numpyro_wjs.diagnostics import plots
from numpyro_wjs.diagnostics.modes import mode_hopping
from numpyro_wjs.nn.pretrained import EVAL_SIGMAS, MNIST_WALK_JUMP, load_pretrained
from numpyro_wjs.nn.train import denoising_errors
from numpyro_wjs.infer.walkjump import WalkJump

#: Noise levels shown in the denoising figure.
GRID_SIGMAS = (0.25, 0.5, 1.0)
FULL = {"heldout": 2000, "shown": 8, "chains": 4, "warmup": 50, "draws": 300}
FAST = {"heldout": 200, "shown": 4, "chains": 2, "warmup": 10, "draws": 25}




def train_small_denoiser(train_images: np.ndarray, heldout_images: np.ndarray, seed: int):
    """A noise-conditional U-Net trained for ``s`` log-uniform in ``[0.05, 1.2]``."""
    from flax import nnx

    from numpyro_wjs.nn.denoisers import UNet
    from numpyro_wjs.nn.train import train_denoiser

    net = UNet(1, (8, 16, 32), noise_conditional=True, rngs=nnx.Rngs(seed))
    result = train_denoiser(
        net, train_images, (0.05, 1.2), steps=1500, batch_size=32, learning_rate=2e-3,
        eval_data=heldout_images[:500], seed=seed, progress_bar=True,
    )
    return result.ema_model


def run_walk_jump(kernel: WalkJump, key: jax.Array, x0: jax.Array, warmup: int, draws: int):
    """Jumps ``x`` and walk ``y`` ``(chain, draw, 28, 28, 1)``, and the final step size.

    ``MCMC`` is built and run inside one ``jax.jit``, so the U-Net is compiled once
    together with the whole chain.
    """

    def run(key, x0):
        mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, num_chains=x0.shape[0],
                    chain_method="vectorized", progress_bar=False)
        mcmc.run(key, init_params=x0 if x0.shape[0] > 1 else x0[0], extra_fields=("y",))
        walk = mcmc.get_extra_fields(group_by_chain=True)["y"]
        return mcmc.get_samples(group_by_chain=True)["x"], walk, mcmc.last_state.adapt_state.step_size

    jumps, walk, step_size = jax.jit(run)(key, x0)
    return np.asarray(jumps), np.asarray(walk), float(np.mean(step_size))


def denoising_figure(images: np.ndarray, net, key: jax.Array):
    """Rows: clean digits, then noisy ``y = x + sigma eps`` and ``E[X | y]`` per sigma."""
    denoise = jax.jit(lambda y, s: net(y, s))
    rows, names = [images], ["clean $x$"]
    for i, s in enumerate(GRID_SIGMAS):
        y = images + s * np.asarray(jax.random.normal(jax.random.fold_in(key, i), images.shape))
        rows += [y, np.asarray(denoise(jnp.asarray(y), s))]
        names += [f"noisy, $\\sigma$={s:g}", r"$E[X\,|\,y]$"]
    n = images.shape[0]
    fig = plots.plot_sample_grid(
        np.clip(np.concatenate(rows), 0.0, 1.0), ncols=n,
        title="Held-out digits: noisy measurements and the U-Net's denoised estimates",
    )
    for r, name in enumerate(names):
        fig.axes[r * n].set_ylabel(name, fontsize=8, rotation=0, ha="right", va="center")
    return fig


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__, argv, {"--train": "train a small U-Net instead of loading the pretrained one"})
    budget = FAST if args.fast else FULL
    start = time.perf_counter()
    key = jax.random.key(args.seed)
    train_images, heldout_images, heldout_labels = load_mnist_digits()
    classifier = load_pretrained("mnist-classifier")
    if args.train and not args.fast:
        net, source = train_small_denoiser(train_images, heldout_images, args.seed), "trained (UNet 8-16-32, 1500 steps)"
    else:
        if args.train:
            print("--fast: using the pretrained denoiser instead of training one")
        net, source = load_pretrained("mnist"), "pretrained"

    # 1. Denoising held-out digits: E||x - E[X | x + sigma eps]||^2 per image.
    evaluation = heldout_images[: budget["heldout"]]
    denoising = {}
    for i, s in enumerate(EVAL_SIGMAS):
        err = denoising_errors(net, evaluation, s, key=jax.random.fold_in(key, 100 + i))
        denoising[str(s)] = {
            "mse": float(err.mean()),
            "stderr": float(err.std(ddof=1) / np.sqrt(err.size)),
            "mse_noisy_theory": 784 * s**2,  # E||sigma eps||^2: the error of not denoising
        }
    fig = denoising_figure(heldout_images[: budget["shown"]], net, jax.random.fold_in(key, 1))
    save_figure(fig, args, "mnist_denoising")

    # 2. Walk-jump chains from a black image; every draw is one jump.
    settings = dict(MNIST_WALK_JUMP)
    if args.fast:
        settings["num_measurements"] = 1
    sigma = settings.pop("sigma")
    kernel = WalkJump(net, sigma, **settings)
    x0 = jnp.zeros((budget["chains"], 28, 28, 1))
    sampling_start = time.perf_counter()
    jumps, walk, step_size = run_walk_jump(
        kernel, jax.random.fold_in(key, 2), x0, budget["warmup"], budget["draws"]
    )
    sampling_seconds = time.perf_counter() - sampling_start

    # 3. Class hopping: the classifier's digit label of every jump.
    predict = jax.jit(lambda x: classifier.predict(x))
    confidence = jax.jit(lambda x: classifier.probs(x).max(-1))
    frequencies = np.bincount(heldout_labels, minlength=10) / heldout_labels.size
    stats = mode_hopping(jumps, predict, num_modes=10, weights=frequencies, event_ndim=3, batch_size=512)
    labels = np.asarray(predict(jnp.asarray(jumps.reshape(-1, 28, 28, 1)))).reshape(jumps.shape[:2])

    steps = (np.arange(jumps.shape[1]) + 1) * settings["jump_every"]
    fig = plots.plot_walk_jump_strip(walk[0], jumps[0], 12, labels=labels[0], steps=steps)
    fig.suptitle(
        f"Chain 0: walk $y_t$ at $\\sigma$={sigma:g} (top) and jumps $E[X\\,|\\,y_1..y_M]$, "
        f"M={settings['num_measurements']} (bottom); t = walk step", fontsize=10,
    )
    save_figure(fig, args, "mnist_walk_jump")
    fig = plots.plot_mode_occupancy(labels, 10, weights=frequencies)
    fig.suptitle("Classifier label (digit) of every jump: the chains hop between classes", fontsize=10)
    fig.axes[0].set_title("digit of each jump", fontsize=10, loc="left")
    for text in fig.axes[1].get_legend().get_texts():
        text.set_text(text.get_text().replace("mode", "digit").replace(r"true weight $\pi_k$", "held-out share"))
    save_figure(fig, args, "mnist_class_hopping")

    chains, draws = labels.shape
    evaluations = kernel.evaluations_per_draw
    switches = int(stats.switches.values.sum())
    save_results(
        {
            "denoiser": source,
            "heldout_digits_scored": int(evaluation.shape[0]),
            "heldout_mse_per_image": denoising,
            "sigma": sigma,
            **settings,
            "evaluations_per_draw": evaluations,
            "chains": chains,
            "warmup_draws": budget["warmup"],
            "draws_per_chain": draws,
            "walk_step_size": step_size,
            "switches_per_chain": stats.switches.values.tolist(),
            "switches_per_1000_walk_steps": 1000 * switches / (chains * (draws - 1) * settings["jump_every"]),
            "switches_per_1000_evaluations": 1000 * switches / (chains * (draws - 1) * evaluations),
            "digits_visited_per_chain": stats.modes_visited.values.tolist(),
            "draws_to_visit_all_digits": stats.steps_to_visit_all.values.tolist(),
            "occupancy": stats.occupancy_all.values.round(4).tolist(),
            "heldout_frequencies": frequencies.round(4).tolist(),
            "tv_distance_to_heldout_frequencies": float(stats.tv_distance_all),
            "jump_confidence": float(np.mean(confidence(jnp.asarray(jumps)))),
            "heldout_confidence": float(np.mean(confidence(jnp.asarray(evaluation)))),
            "sampling_seconds": round(sampling_seconds, 1),
            "wall_seconds": round(time.perf_counter() - start, 1),
        },
        args,
        "mnist",
    )


if __name__ == "__main__":
    main()
