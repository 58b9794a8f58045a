"""Langevin step size: too small crawls, too large diverges, and ULA is biased in between.

ULA and MALA (``numpyro_wjs.ULA`` and ``numpyro_wjs.MALA`` run by ``numpyro.infer.MCMC``)
sample ``N(0, s^2)`` over a grid of step sizes ``h``, one vectorized run per kernel in
which every block of chains has its own ``h``. The reader sees traces at a step size
that is too small (the chain crawls: low ESS per step), a reasonable one, and one beyond
``h = 2 s^2`` where ULA diverges; ULA's stationary variance following the exact
``s^2 / (1 - h / (2 s^2))`` while MALA's stays at ``s^2``; the ESS per step of both; and,
on a 2-D Gaussian with scales ``(1, 0.5)``, that the stable step is set by the narrowest
direction: ULA diverges once ``h >= 2 * 0.5^2`` although the wide coordinate alone would
still be stable.
"""

from __future__ import annotations

import time

import arviz as az
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from _cli import parse_args, save_figure, save_results
from numpyro.infer import MCMC

from numpyro_wjs import MALA, ULA, Gaussian

SCALE = 1.0
STEP_SIZES = (0.01, 0.03, 0.1, 0.3, 0.6, 1.0, 1.5)
TOO_LARGE = 2.5
TRACE_STEP_SIZES = {"too small": 0.01, "good": 0.3, "too large": TOO_LARGE}
SCALES_2D = (1.0, 0.5)
STEP_SIZES_2D = (0.1, 0.3, 0.45, 0.6)


def run_step_sizes(kernel, step_sizes, chains_per_step, init, num_samples, rng_key, extra_fields=()):
    """One vectorized MCMC run in which block ``i`` of ``chains_per_step`` chains moves with ``step_sizes[i]``.

    Vectorized chains each carry their own ``adapt_state``; writing the step sizes into the
    initial state and handing it to ``MCMC.post_warmup_state`` sweeps ``h`` with one compilation.

    Returns
    -------
    dict
        ``"x"``: draws ``(len(step_sizes), chains_per_step, num_samples, d)`` and one entry
        per extra field, shaped ``(len(step_sizes), chains_per_step, num_samples)``.
    """
    num_chains = len(step_sizes) * chains_per_step
    key_init, key_run = jax.random.split(rng_key)
    state = kernel.init(jax.random.split(key_init, num_chains), 0, init)
    h = jnp.repeat(jnp.asarray(step_sizes, init.dtype), chains_per_step)
    state = state._replace(adapt_state=state.adapt_state._replace(step_size=h))
    mcmc = MCMC(kernel, num_warmup=0, num_samples=num_samples, num_chains=num_chains,
                chain_method="vectorized", progress_bar=False)
    mcmc.post_warmup_state = state
    mcmc.run(key_run, extra_fields=extra_fields)
    shape = (len(step_sizes), chains_per_step, num_samples)
    out = {"x": np.asarray(mcmc.get_samples(group_by_chain=True), np.float64).reshape(shape + (-1,))}
    for name, value in mcmc.get_extra_fields(group_by_chain=True).items():
        out[name] = np.asarray(value).reshape(shape)
    return out


def variance_and_se(x):
    """Stationary variance ``E[x^2]`` (the mean is 0) and its Monte Carlo standard error.

    ``x`` is ``(chain, draw)``; the error is ``sd(x^2) / sqrt(ESS(x^2))`` with ArviZ's ESS.
    """
    sq = x**2
    ess = float(az.ess(sq, method="mean"))
    return float(sq.mean()), float(sq.std() / np.sqrt(ess))


def ess_per_step(x):
    """ArviZ ESS of the mean of ``x`` ``(chain, draw)`` per MCMC step (all chains)."""
    return float(az.ess(x, method="mean")) / x.size


def main(argv=None):
    args = parse_args(__doc__, argv)
    start = time.perf_counter()
    chains, draws, burn = (8, 1000, 100) if args.fast else (64, 5000, 500)
    num_chains = chains * (len(STEP_SIZES) + 1)
    key = jax.random.key(args.seed)
    k_init, k_ula, k_mala, k_init2, k_ula2 = jax.random.split(key, 5)

    target = Gaussian(jnp.zeros(1), jnp.full(1, SCALE**2))
    s2 = SCALE**2
    grid = STEP_SIZES + (TOO_LARGE,)
    init = target.sample(k_init, (num_chains,))
    ula = run_step_sizes(ULA(score_fn=target.score, num_steps=1), grid, chains, init, draws, k_ula)
    mala = run_step_sizes(
        MALA(potential_fn=target.potential_fn, adapt_step_size=False, adapt_mass_matrix=False),
        grid, chains, init, draws, k_mala, extra_fields=("accept_prob",),
    )
    ula_x, mala_x = ula["x"][:, :, burn:, 0], mala["x"][:, :, burn:, 0]
    stable = slice(0, len(STEP_SIZES))
    ula_var = [variance_and_se(x) for x in ula_x[stable]]
    mala_var = [variance_and_se(x) for x in mala_x]
    accept = mala["accept_prob"][:, :, burn:].mean(axis=(1, 2))
    ula_div = ula["diverging"].mean(axis=(1, 2))

    target2 = Gaussian(jnp.zeros(2), jnp.asarray(SCALES_2D) ** 2)
    chains_2d = num_chains // len(STEP_SIZES_2D)
    init2 = target2.sample(k_init2, (chains_2d * len(STEP_SIZES_2D),))
    ula2 = run_step_sizes(ULA(score_fn=target2.score, num_steps=1), STEP_SIZES_2D, chains_2d, init2, draws, k_ula2)
    s2_2d = np.asarray(SCALES_2D) ** 2
    h_crit_2d = 2 * s2_2d.min()
    ula2_stable = [i for i, h in enumerate(STEP_SIZES_2D) if h < h_crit_2d]
    ula2_var = [[variance_and_se(ula2["x"][i, :, burn:, j])[0] for j in range(2)] for i in ula2_stable]
    ula2_theory = [(s2_2d / (1 - STEP_SIZES_2D[i] / (2 * s2_2d))).tolist() for i in ula2_stable]

    results = {
        "scale": SCALE,
        "true_variance": s2,
        "critical_step_size": 2 * s2,
        "step_sizes": list(STEP_SIZES),
        "ula_variance": [v for v, _ in ula_var],
        "ula_variance_se": [se for _, se in ula_var],
        "ula_variance_theory": [s2 / (1 - h / (2 * s2)) for h in STEP_SIZES],
        "mala_variance": [v for v, _ in mala_var[stable]],
        "mala_variance_se": [se for _, se in mala_var[stable]],
        "mala_accept_prob": accept[stable].tolist(),
        "ula_ess_per_step": [ess_per_step(x) for x in ula_x[stable]],
        "ula_ess_per_step_theory": [h / (2 * s2 - h) for h in STEP_SIZES],
        "mala_ess_per_step": [ess_per_step(x) for x in mala_x[stable]],
        "ula_diverging_fraction": ula_div[stable].tolist(),
        "too_large_step_size": TOO_LARGE,
        "ula_diverging_fraction_too_large": float(ula_div[-1]),
        "mala_variance_too_large": mala_var[-1][0],
        "mala_accept_prob_too_large": float(accept[-1]),
        "scales_2d": list(SCALES_2D),
        "critical_step_size_2d": float(h_crit_2d),
        "step_sizes_2d": list(STEP_SIZES_2D),
        "ula_2d_diverging_fraction": ula2["diverging"].mean(axis=(1, 2)).tolist(),
        "ula_2d_stable_step_sizes": [STEP_SIZES_2D[i] for i in ula2_stable],
        "ula_2d_variance": ula2_var,
        "ula_2d_variance_theory": ula2_theory,
        "num_chains_per_step_size": chains,
        "num_draws_per_chain": draws - burn,
    }

    fig_traces(ula, mala, grid, accept, ula_div, burn, args)
    fig_variance(results, args)
    results["wall_time_s"] = round(time.perf_counter() - start, 1)
    save_results(results, args, "langevin_step_size")


def fig_traces(ula, mala, grid, accept, ula_div, burn, args):
    """Traces of one ULA and one MALA chain at the three step sizes of ``TRACE_STEP_SIZES``."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4), layout="constrained")
    n = min(1000, ula["x"].shape[2])
    t = np.arange(n)
    for ax, (name, h) in zip(axes, TRACE_STEP_SIZES.items()):
        i = grid.index(h)
        mala_ess = ess_per_step(mala["x"][i, :, burn:, 0])
        if h < 2 * SCALE**2:
            ax.axhspan(-2 * SCALE, 2 * SCALE, color="0.9", lw=0, label=r"$\pm 2s$")
            ax.plot(t, ula["x"][i, 0, :n, 0], lw=0.7, color="C3", label="ULA")
            ax.plot(t, mala["x"][i, 0, :n, 0], lw=0.7, color="C0", label="MALA")
            ula_txt = f"ULA ESS/step {ess_per_step(ula['x'][i, :, burn:, 0]):.3f}"
        else:
            ax.semilogy(t, np.abs(ula["x"][i, 0, :n, 0]), lw=0.9, color="C3", label="ULA")
            ax.semilogy(t, np.abs(mala["x"][i, 0, :n, 0]), lw=0.7, color="C0", label="MALA")
            ax.axhline(2 * SCALE, color="0.6", lw=0.8, ls="--")
            ax.set_ylabel("|x| (log scale)")
            ax.text(0.98, 0.5, f"ULA: |x| grows by |1 - h/s²| = {abs(1 - h / SCALE**2):.1f} per step\n"
                    "until it overflows; every later step\nis discarded and flagged diverging",
                    transform=ax.transAxes, ha="right", va="center", fontsize=8, color="C3")
            ula_txt = f"ULA diverging in {ula_div[i]:.0%} of steps"
        ax.set_title(f"h = {h:g} ({name})\n{ula_txt}; MALA ESS/step {mala_ess:.3f}, "
                     f"accept {accept[i]:.2f}", fontsize=9, loc="left")
        ax.set_xlabel("step")
    axes[0].set_ylabel("x")
    axes[0].legend(loc="lower left", fontsize=8, ncol=3)
    fig.suptitle(r"Langevin on $N(0, 1)$: traces at three step sizes (ULA diverges for $h \geq 2s^2 = 2$)",
                 fontsize=11)
    save_figure(fig, args, "langevin_step_size_traces")


def fig_variance(r, args):
    """ULA's stationary variance against the oracle and MALA's; ESS per step against ``h``."""
    h = np.asarray(r["step_sizes"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
    hh = np.linspace(h.min(), 1.9 * r["true_variance"], 300)
    ax1.plot(hh, r["true_variance"] / (1 - hh / (2 * r["true_variance"])), color="C3", lw=1,
             label=r"ULA theory $s^2/(1-h/2s^2)$")
    ax1.errorbar(h, r["ula_variance"], yerr=2 * np.asarray(r["ula_variance_se"]), fmt="o", color="C3",
                 ms=4, capsize=2, label="ULA measured (±2 s.e.)")
    ax1.errorbar(h, r["mala_variance"], yerr=2 * np.asarray(r["mala_variance_se"]), fmt="s", color="C0",
                 ms=4, capsize=2, label="MALA measured (±2 s.e.)")
    ax1.axhline(r["true_variance"], color="k", ls="--", lw=1, label=r"true $s^2$")
    ax1.axvline(r["critical_step_size"], color="0.5", ls=":", lw=1)
    ax1.text(r["critical_step_size"], r["true_variance"] * 1.6, r"ULA diverges at $h = 2s^2$ ",
             fontsize=8, color="0.3", ha="right")
    ax1.set_yscale("log")
    ax1.set_xlabel("step size h")
    ax1.set_ylabel("stationary variance")
    ax1.set_title("ULA is biased, MALA is exact", fontsize=10, loc="left")
    ax1.legend(fontsize=8, loc="upper left")

    ax2.plot(h, r["ula_ess_per_step_theory"], color="C3", lw=1, label=r"ULA theory $h/(2s^2-h)$")
    ax2.plot(h, r["ula_ess_per_step"], "o", color="C3", ms=4, label="ULA measured")
    ax2.plot(h, r["mala_ess_per_step"], "s-", color="C0", ms=4, lw=1, label="MALA measured")
    for hi, e, a in zip(h, r["mala_ess_per_step"], r["mala_accept_prob"]):
        if hi >= 0.3:
            ax2.annotate(f"{a:.2f}", (hi, e), textcoords="offset points", xytext=(0, -11), fontsize=7,
                         color="C0", ha="center")
    ax2.plot([], [], " ", label="(numbers: MALA acceptance rate)")
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("step size h")
    ax2.set_ylabel("ESS of the mean per step")
    ax2.set_title("Too small a step mixes slowly", fontsize=10, loc="left")
    ax2.legend(fontsize=8, loc="upper left")
    save_figure(fig, args, "langevin_step_size_variance")


if __name__ == "__main__":
    main()
