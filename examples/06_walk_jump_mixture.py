"""Walk-jump sampling on a ring of six modes: the walk mixes on the smoothed density, the jumps land in the modes.

The target is a 2-D mixture of six well separated Gaussians with unequal weights.
MALA started in the heaviest mode never leaves it: the score points back into the
mode everywhere around it. Walk-jump (Saremi & Hyvarinen 2019) walks instead on
``p_Y = p_X * N(0, sigma^2 I)``, where ``sigma`` (``comparison.walk_jump_sigma``)
lowers the barriers between neighbouring modes to about 1.3 nats, with the exact
score ``(E[X|y] - y) / sigma^2`` of the mixture, and jumps to ``x = E[X|y]``.

The figures show the paths over the density (the walk ``y`` in grey, the jumps in
colour), the mode of every draw over time with the running occupancy against the
true weights, and where the jumps land. Printed: mode occupancy TV distance to the
weights and switches per 1000 draws (``diagnostics.mode_hopping``) for MALA and
walk-jump at the same number of gradient / denoiser evaluations. Jumps are
posterior means, not draws from ``p_X``: near a mode ``E[X|y] - mu_k`` has standard
deviation ``tau^2 / sqrt(tau^2 + s^2)`` per coordinate at noise ``s``, smaller than
the component scale ``tau``, and a walk between two modes jumps to a point between
them. With ``M = 4`` measurements drawn sequentially (a noise-conditional
denoiser, here the exact one at ``s = sigma / sqrt(m)``) the jump has the quality
of noise ``sigma / 2``: its spread moves toward ``tau`` and fewer jumps land between
the modes. The spread of each run is printed next to a Monte Carlo oracle, the
spread of ``E[X | Y]`` for exact draws ``Y ~ p_Y``.
"""

from __future__ import annotations

import math
import time

import arviz as az
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr
from _cli import parse_args, save_figure, save_results
from numpyro.infer import MCMC
from numpyro.infer.mcmc import MCMCKernel

from numpyro_wjs import MALA, WalkJump
from numpyro_wjs.diagnostics.comparison import walk_jump_sigma
from numpyro_wjs.diagnostics.modes import mode_hopping
from numpyro_wjs.diagnostics.plots import plot_density_paths, plot_mode_occupancy
from numpyro_wjs.targets import GaussianMixture

WEIGHTS = (3.0, 1.0, 2.0, 1.0, 2.0, 1.0)
RADIUS, TAU = 3.0, 0.3
M = 4
JUMP_EVERY = 5  # walk steps per draw of the M-measurement run


def spread(x: np.ndarray, target: GaussianMixture) -> tuple[float, float]:
    """Spread of points ``x`` (n, 2) around the mean of their nearest mode, and the fraction
    of points farther than ``3 tau`` from every mean (between the modes).

    The spread is ``median |x - mu| / sqrt(2 ln 2)``: for ``x ~ N(mu, s^2 I_2)`` the
    distance is Rayleigh with median ``s sqrt(2 ln 2)``, so this estimates the
    per-coordinate scale ``s`` of the points that sit in a mode, unmoved by the
    minority between the modes.
    """
    means = np.asarray(target.means)
    nearest = np.linalg.norm(x[:, None, :] - means[None], axis=-1).min(1)
    return float(np.median(nearest) / math.sqrt(2.0 * math.log(2.0))), float(np.mean(nearest > 3 * TAU))


def jump_law(target: GaussianMixture, s: float, key: jax.Array, n: int) -> np.ndarray:
    """``n`` exact draws of ``E[X | Y]`` with ``Y ~ p_Y`` at noise ``s``: the law of ideal jumps."""
    y = target.smooth(s).sample(key, (n,))
    return np.asarray(target.denoiser(s)(y), np.float64)


def run(
    kernel: MCMCKernel, key: jax.Array, num_warmup: int, num_samples: int, num_chains: int, init: jax.Array,
    extra_fields: tuple[str, ...] = (),
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Vectorized chains through ``numpyro.infer.MCMC``; draws ``(chain, draw, d)`` and the extra fields."""
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method="vectorized", progress_bar=False)
    if num_chains == 1:
        init = init[0]
    mcmc.run(key, init_params=init, extra_fields=extra_fields)
    (x,) = jax.tree.leaves(mcmc.get_samples(group_by_chain=True))  # WalkJump's site "x", MALA's array
    x = np.asarray(x, np.float64)
    extras = {k: np.asarray(v) for k, v in mcmc.get_extra_fields(group_by_chain=True).items()}
    return x, extras


def _tree(x: np.ndarray, y: np.ndarray | None) -> xr.DataTree:
    """Draws (and the walk ``y`` as a sample stat) in the ArviZ layout that ``plot_density_paths`` reads."""
    groups = {"posterior": {"x": x}}
    if y is not None:
        groups["sample_stats"] = {"y": y}
    return az.from_dict(groups)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__, argv)
    start = time.perf_counter()
    budget = 2_000 if args.fast else 40_000  # denoiser / gradient evaluations per chain
    num_chains = 1 if args.fast else 4
    num_warmup = 300 if args.fast else 1_000
    num_inner = 10

    target = GaussianMixture.ring(K=len(WEIGHTS), radius=RADIUS, scale=TAU, weights=np.array(WEIGHTS))
    weights = np.asarray(target.weights, np.float64)
    sigma = walk_jump_sigma(target)
    key_init, key_mala, key_wj, key_seq, key_law = jax.random.split(jax.random.key(args.seed), 5)
    heaviest = int(np.argmax(weights))
    init = target.means[heaviest] + 0.1 * TAU * jax.random.normal(key_init, (num_chains, 2))

    kernels = {
        "MALA": MALA(potential_fn=target.potential_fn),
        "WalkJump M=1": WalkJump(target.denoiser(sigma), sigma),
        f"WalkJump M={M}": WalkJump(
            lambda y, s: target.denoiser(s)(y), sigma, num_measurements=M, mode="sequential",
            noise_conditional=True, num_inner_steps=num_inner, jump_every=JUMP_EVERY,
        ),
    }
    evals_per_draw = {"MALA": 1, **{k: v.evaluations_per_draw for k, v in kernels.items() if k != "MALA"}}
    draws, walks = {}, {}
    for (name, kernel), key in zip(kernels.items(), (key_mala, key_wj, key_seq)):
        n = budget // evals_per_draw[name]
        x, extra = run(kernel, key, num_warmup, n, num_chains, init, () if name == "MALA" else ("y",))
        if "y" in extra:
            walks[name] = extra["y"]
        draws[name] = x

    stats = {name: mode_hopping(x, target) for name, x in draws.items()}
    walk_stats = {name: mode_hopping(y, target.smooth(sigma)) for name, y in walks.items()}
    n_law = 20_000 if args.fast else 200_000
    x_exact = np.asarray(target.sample(key_law, (n_law,)), np.float64)
    law = {
        "WalkJump M=1": spread(jump_law(target, sigma, key_law, n_law), target),
        f"WalkJump M={M}": spread(jump_law(target, sigma / math.sqrt(M), key_law, n_law), target),
        "exact p_X": spread(x_exact, target),
    }
    measured = {name: spread(x.reshape(-1, 2), target) for name, x in draws.items()}

    # ---- figure 1: paths over the density
    # the first 300 walk steps of chain 0 (a draw of the M=4 run is jump_every walk steps)
    shown = {k: _tree(draws[k][:1, :n], None if k not in walks else walks[k][:1, :n])
             for k, n in zip(draws, (300, 300, 300 // JUMP_EVERY))}
    fig = plot_density_paths(target, shown, max_draws=300, grid_size=120,
                             fig=plt.figure(figsize=(10.5, 4.3), layout="compressed"))
    fig.suptitle(rf"six modes, $\tau={TAU:g}$, walk noise $\sigma={sigma:.3f}$, 300 walk steps: "
                 rf"grey = walk $y$, colour = draws / jumps", fontsize=10)
    save_figure(fig, args, "walk_jump_mixture_paths")

    # ---- figure 2: mode of every draw and running occupancy
    labels = {name: np.asarray(target.mode_of(jnp.asarray(x, jnp.float32))) for name, x in draws.items()}
    fig = plot_mode_occupancy(labels, target.K, weights=weights)
    fig.suptitle(f"same budget: {budget:,} gradient / denoiser evaluations per chain", fontsize=10)
    save_figure(fig, args, "walk_jump_mixture_occupancy")

    # ---- figure 3: final occupancy and where the jumps land
    fig, axes = plt.subplots(1, 4, figsize=(15.0, 3.9), layout="constrained", width_ratios=(1.3, 1, 1, 1))
    width = 0.8 / (len(draws) + 1)
    ks = np.arange(target.K)
    axes[0].bar(ks - 0.4 + width / 2, weights, width, color="k", label="true weight")
    for j, name in enumerate(draws):
        occ = np.asarray(stats[name].occupancy_all)
        axes[0].bar(ks - 0.4 + (j + 1.5) * width, occ, width, color=f"C{j}",
                    label=f"{name} (TV {float(stats[name].tv_distance_all):.2f})")
    axes[0].set_xticks(ks)
    axes[0].set_xlabel("mode")
    axes[0].set_ylabel("occupancy")
    axes[0].set_title("mode occupancy of all draws", fontsize=10)
    axes[0].legend(fontsize=7, frameon=False)
    rng = np.random.default_rng(args.seed)
    panels = [("WalkJump M=1", draws["WalkJump M=1"]), (f"WalkJump M={M}", draws[f"WalkJump M={M}"]),
              ("exact p_X", x_exact[None])]
    for a, (name, x) in zip(axes[1:], panels):
        pts = x.reshape(-1, 2)
        pts = pts[rng.choice(pts.shape[0], min(2_000, pts.shape[0]), replace=False)]
        for mu in np.asarray(target.means):
            for r, ls in ((TAU, "-"), (3 * TAU, ":")):
                a.add_patch(plt.Circle(mu, r, fill=False, color="k", lw=0.8, ls=ls, zorder=3))
        a.plot(pts[:, 0], pts[:, 1], ".", ms=2.5, color="C3", alpha=0.6, mew=0)
        scale, between = measured.get(name, law[name])
        what = "draws from $p_X$" if name == "exact p_X" else f"jumps, {name}"
        a.set_title(f"{what}: spread {scale:.3f} ($\\tau$ = {TAU:g})\n"
                    f"{100 * between:.1f}% farther than $3\\tau$ from every mode", fontsize=9)
        a.set_aspect("equal")
        a.set_xlabel(r"circles: $\tau$ and $3\tau$ around each mean", fontsize=8)
        a.set_xlim(-4.5, 4.5)
        a.set_ylim(-4.5, 4.5)
    save_figure(fig, args, "walk_jump_mixture_jumps")

    results = {"sigma": sigma, "tau": TAU, "weights": weights.tolist(), "budget_per_chain": budget,
               "num_chains": num_chains}
    for name in draws:
        key = name.replace("WalkJump ", "walkjump_").replace("=", "").lower()
        st = stats[name]
        results[f"{key}_evaluations_per_draw"] = evals_per_draw[name]
        results[f"{key}_draws_per_chain"] = int(draws[name].shape[1])
        results[f"{key}_tv"] = float(st.tv_distance_all)
        results[f"{key}_occupancy"] = np.asarray(st.occupancy_all).tolist()
        results[f"{key}_switches_per_1000_draws"] = float(st.switches_per_1000.mean())
        results[f"{key}_switches_per_1000_evals"] = float(st.switches_per_1000.mean()) / evals_per_draw[name]
        results[f"{key}_modes_visited_min"] = int(st.modes_visited.min())
        results[f"{key}_spread"] = measured[name][0]
        results[f"{key}_between_modes_fraction"] = measured[name][1]
        if name in walks:
            results[f"{key}_walk_tv"] = float(walk_stats[name].tv_distance_all)
            results[f"{key}_spread_law"] = law[name][0]
            results[f"{key}_between_modes_fraction_law"] = law[name][1]
    s_m = sigma / math.sqrt(M)
    results["spread_exact_px"] = law["exact p_X"][0]
    results["between_modes_fraction_exact_px"] = law["exact p_X"][1]
    results["spread_single_mode_theory_m1"] = TAU**2 / math.sqrt(TAU**2 + sigma**2)
    results[f"spread_single_mode_theory_m{M}"] = TAU**2 / math.sqrt(TAU**2 + s_m**2)
    results["wall_time_s"] = time.perf_counter() - start
    save_results(results, args, "walk_jump_mixture")
    return results


if __name__ == "__main__":
    main()
