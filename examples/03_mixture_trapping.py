"""Mode trapping: after warmup, MALA and NUTS chains never leave their mode of a well separated mixture.

The target is the 1-D mixture ``0.6 N(-5, 0.5^2) + 0.1 N(0, 0.5^2) + 0.3 N(5, 0.5^2)``
(``numpyro_wjs.GaussianMixture``). Near a mode the score is about ``(mu_k - x) / tau^2``,
so a Langevin chain behaves as if that one Gaussian were the whole target, and the empty
space between modes (the log density drops by about 11 there) is never crossed. Chains
start at evenly spread points, as overdispersed initialisations would; during warmup the
exploratory step sizes of the adaptation may throw a chain into a neighbouring mode, and
after warmup each chain stays in the one mode it has settled in. The reader sees the
traces over the mode bands, the number of mode switches
(``numpyro_wjs.diagnostics.modes.mode_hopping``), and the occupancy of each mode for MALA and NUTS
against the true weights and against exact independent draws: the samplers' occupancy is
the fraction of chains that settled in each mode, not the weight of the mode.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from _cli import parse_args, save_figure, save_results
from numpyro.infer import MCMC, NUTS

from numpyro_wjs import MALA, GaussianMixture
from numpyro_wjs.diagnostics.modes import mode_hopping
from numpyro_wjs.diagnostics.plots import plot_trace

WEIGHTS = (0.6, 0.1, 0.3)
MEANS = (-5.0, 0.0, 5.0)
SCALE = 0.5
NUM_CHAINS = 6
START_RANGE = 7.0
TRACE_POINTS = 120


def run(kernel, init, warmup, samples, rng_key, extra_fields=()):
    """Vectorized ``MCMC`` run; returns the MCMC object and draws ``(chain, draw, 1)``."""
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=samples, num_chains=init.shape[0],
                chain_method="vectorized", progress_bar=False)
    mcmc.run(rng_key, init_params=init, extra_fields=extra_fields)
    return mcmc, np.asarray(mcmc.get_samples(group_by_chain=True), np.float64)


def summarize(name, ds, results, chains=True):
    """Write the mode-hopping statistics of one sampler into ``results``.

    With ``chains``, also the mode each chain sits in most and the number of chains per mode.
    """
    results[f"{name}_occupancy"] = ds.occupancy_all.values.tolist()
    results[f"{name}_tv_distance"] = float(ds.tv_distance_all)
    results[f"{name}_switches"] = int(ds.switches.sum())
    results[f"{name}_switches_per_chain"] = ds.switches.values.tolist()
    results[f"{name}_modes_visited_per_chain"] = ds.modes_visited.values.tolist()
    if chains:
        chain_modes = ds.occupancy.values.argmax(1)
        results[f"{name}_chain_modes"] = chain_modes.tolist()
        results[f"{name}_chains_per_mode"] = np.bincount(chain_modes, minlength=ds.sizes["mode"]).tolist()


def main(argv=None):
    args = parse_args(__doc__, argv)
    start = time.perf_counter()
    warmup, samples = (300, 1000) if args.fast else (1000, 5000)
    gm = GaussianMixture(jnp.asarray(WEIGHTS), jnp.asarray(MEANS), SCALE)
    key_mala, key_nuts, key_iid = jax.random.split(jax.random.key(args.seed), 3)
    init = jnp.linspace(-START_RANGE, START_RANGE, NUM_CHAINS)[:, None]
    barrier = float(gm.log_prob(jnp.array([MEANS[1]])) - gm.log_prob(jnp.array([(MEANS[1] + MEANS[2]) / 2])))

    mala, mala_x = run(MALA(potential_fn=gm.potential_fn), init, warmup, samples, key_mala,
                       extra_fields=("accept_prob",))
    nuts, nuts_x = run(NUTS(potential_fn=gm.potential_fn), init, warmup, samples, key_nuts,
                       extra_fields=("num_steps",))
    iid_x = np.asarray(gm.sample(key_iid, (NUM_CHAINS, samples)), np.float64)
    draws = {"MALA": mala_x, "NUTS": nuts_x, "exact iid draws": iid_x}
    stats = {name: mode_hopping(x, gm) for name, x in draws.items()}

    results = {
        "weights": list(WEIGHTS),
        "means": list(MEANS),
        "scale": SCALE,
        "log_density_drop_between_modes": barrier,
        "start_points": np.asarray(init[:, 0]).tolist(),
        "start_modes": np.asarray(gm.mode_of(init)).tolist(),
        "num_chains": NUM_CHAINS,
        "num_warmup": warmup,
        "num_samples": samples,
        "mala_step_size": float(np.median(mala.last_state.adapt_state.step_size)),
        "mala_accept_prob": float(np.mean(mala.get_extra_fields()["accept_prob"])),
        "nuts_step_size": float(np.median(nuts.last_state.adapt_state.step_size)),
        "nuts_mean_num_steps": float(np.mean(nuts.get_extra_fields()["num_steps"])),
    }
    for name, key in (("MALA", "mala"), ("NUTS", "nuts"), ("exact iid draws", "iid")):
        summarize(key, stats[name], results, chains=key != "iid")

    fig_traces(gm, {k: draws[k] for k in ("MALA", "NUTS")}, results, args)
    fig_occupancy(stats, results, args)
    results["wall_time_s"] = round(time.perf_counter() - start, 1)
    save_results(results, args, "mixture_trapping")


def fig_traces(gm, draws, r, args):
    """Density of the mixture beside the traces of MALA and NUTS, with the mode bands shaded."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 4.6), layout="constrained", sharey=True,
                             gridspec_kw={"width_ratios": (1, 7)})
    grid = np.linspace(MEANS[0] - 3, MEANS[-1] + 3, 600)
    density = np.exp(np.asarray(gm.log_prob(jnp.asarray(grid[:, None], jnp.float32))))
    for a in axes[:, 0]:
        a.fill_betweenx(grid, density, color="0.6")
        a.set_xlim(density.max() * 1.1, 0)
        a.set_xlabel("p(x)")
    axes[0, 0].set_ylabel("x")
    axes[1, 0].set_ylabel("x")
    total = r["num_samples"]
    thin = max(1, total // TRACE_POINTS)
    plot_trace({k: x[:, ::thin] for k, x in draws.items()}, target=gm, ax=list(axes[:, 1]))
    for a, name in zip(axes[:, 1], draws):
        key = name.lower()
        n = len(range(0, total, thin))
        for line, x0 in zip(a.get_lines(), r["start_points"]):
            y = line.get_ydata()[0]
            a.plot([-0.06 * n, 0], [x0, y], ":", color=line.get_color(), lw=1.2)
            a.plot(-0.06 * n, x0, "o", mfc="white", mec=line.get_color(), ms=6, mew=1.5, zorder=5)
        a.set_xlim(-0.08 * n, n)
        ticks = np.linspace(0, total, 6)
        a.set_xticks(ticks / thin, [f"{t:.0f}" for t in ticks])
        extra = (f"acceptance {r['mala_accept_prob']:.2f}" if key == "mala"
                 else f"{r['nuts_mean_num_steps']:.1f} gradients per draw")
        a.set_title(f"{name}: {r[f'{key}_switches']} mode switches in {r['num_chains']} chains x "
                    f"{r['num_samples']} draws after warmup ({extra})", fontsize=10, loc="left")
    axes[1, 1].set_xlabel("draw after warmup" + (f" (one draw in {thin} shown)" if thin > 1 else ""))
    fig.suptitle("After warmup each chain stays in one mode (bands: mode ± 2 sd; circles: starting points;\n"
                 "dotted: where warmup took each chain)", fontsize=11)
    save_figure(fig, args, "mixture_trapping_traces")


def fig_occupancy(stats, r, args):
    """Stacked bars: the occupancy of each mode per sampler against the true weights."""
    fig, ax = plt.subplots(figsize=(8.5, 3.8), layout="constrained")
    rows = {"true weights": np.asarray(WEIGHTS)}
    rows.update({name: ds.occupancy_all.values for name, ds in stats.items()})
    cmap = plt.get_cmap("tab10")
    for i, (name, occ) in enumerate(rows.items()):
        left = 0.0
        for k, o in enumerate(occ):
            ax.barh(i, o, left=left, color=cmap(k), edgecolor="white", label=f"mode {k} (mean {MEANS[k]:g})"
                    if i == 0 else None)
            if o > 0.04:
                ax.text(left + o / 2, i, f"{o:.2f}", ha="center", va="center", fontsize=8)
            left += o
        if name in stats:
            per_mode = np.bincount(stats[name].occupancy.values.argmax(1), minlength=len(WEIGHTS))
            sampled = name in ("MALA", "NUTS")
            chains = "chains per mode " + "/".join(map(str, per_mode)) if sampled else "independent draws"
            ax.text(1.01, i, f"TV {float(stats[name].tv_distance_all):.2f}, "
                    f"{int(stats[name].switches.sum())} switches\n{chains}", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), list(rows))
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of draws in each mode (all chains pooled)")
    ax.set_title(f"Mode occupancy vs the true weights ({r['num_chains']} chains started at evenly spread points)",
                 fontsize=10, loc="left")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncols=3, fontsize=8, frameon=False)
    save_figure(fig, args, "mixture_trapping_occupancy")


if __name__ == "__main__":
    main()
