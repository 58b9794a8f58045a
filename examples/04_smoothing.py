"""Gaussian noise smooths a density: modes merge as sigma grows, and in high dimension the noise lives on a sphere.

Adding noise, ``Y = X + sigma N`` with ``N ~ N(0, I)``, convolves the density:
``p_Y = p_X * N(0, sigma^2 I)``. For a Gaussian mixture the convolution is again a
mixture with every component variance raised by ``sigma^2``
(``GaussianMixture.smooth``). The first figure shows a 1-D mixture of two modes
and a 2-D ring of six modes at growing ``sigma``: the valleys fill in and the modes
merge. For two equal components ``N(+-D/2, tau^2)`` the smoothed density is bimodal
exactly while ``D > 2 sqrt(tau^2 + sigma^2)``; the script finds the merging
``sigma`` by counting the zeros of the smoothed score on a grid and compares it
with ``sqrt(D^2/4 - tau^2)``, and checks a Monte Carlo histogram of ``X + sigma N``
against the smoothed density.

The second figure shows the other face of noise in high dimension: ``|sigma N|``
concentrates at ``sigma sqrt(d)`` with a standard deviation that tends to
``sigma / sqrt(2)`` whatever ``d``, so relative to its radius the noise shell gets
thinner like ``1 / sqrt(2 d)``. Measured means and standard deviations are printed
next to the exact chi-distribution values and the asymptotes.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from _cli import parse_args, save_figure, save_results
from scipy.special import gammaln

from numpyro_wjs.targets import GaussianMixture

# 1-D: two equal modes at -D/2 and D/2 with std TAU
HALF_GAP, TAU = 2.0, 0.5
SIGMAS_1D = (0.0, 0.5, 1.0, 1.5, 2.5)
SIGMA_HIST = 1.0
# 2-D: six modes on a circle of radius 3, std 0.3
SIGMAS_2D = (0.0, 0.75, 1.5, 3.0)
# concentration of the noise norm
SIGMA_NORM = 0.5
DIMS = (1, 10, 100, 784, 3072)


def count_modes_1d(target: GaussianMixture, grid: jax.Array) -> int:
    """Number of local maxima of ``p`` on ``grid``: sign changes of the score from + to -."""
    s = np.asarray(target.score(grid[:, None]))[:, 0]
    return int(np.sum((s[:-1] > 0) & (s[1:] <= 0)))


def chi_mean_std(d: int, sigma: float) -> tuple[float, float]:
    """Exact mean and std of ``|sigma N|``, ``N ~ N(0, I_d)`` (sigma times a chi_d variable)."""
    mean = math.sqrt(2.0) * math.exp(gammaln((d + 1) / 2) - gammaln(d / 2))
    return sigma * mean, sigma * math.sqrt(max(d - mean**2, 0.0))


def chi_density(r: np.ndarray, d: int) -> np.ndarray:
    """Density of ``|N| / sqrt(d)`` at ``r``: ``sqrt(d)`` times the chi_d density at ``r sqrt(d)``."""
    u = r * math.sqrt(d)
    log_chi = (d - 1) * np.log(np.maximum(u, 1e-300)) - 0.5 * u**2 - (d / 2 - 1) * math.log(2.0) - gammaln(d / 2)
    return math.sqrt(d) * np.exp(log_chi)


def noise_norms(key: jax.Array, d: int, sigma: float, n: int, chunk: int = 2000) -> np.ndarray:
    """``n`` draws of ``|sigma N|`` in ``R^d``, generated ``chunk`` at a time."""
    norms = []
    for i, k in enumerate(jax.random.split(key, -(-n // chunk))):
        m = min(chunk, n - i * chunk)
        norms.append(np.asarray(jnp.linalg.norm(sigma * jax.random.normal(k, (m, d)), axis=-1)))
    return np.concatenate(norms).astype(np.float64)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__, argv)
    start = time.perf_counter()
    n_mc = 20_000 if args.fast else 200_000
    n_norm = 2_000 if args.fast else 20_000
    key_mc, key_norm = jax.random.split(jax.random.key(args.seed))

    # ---- 1-D: densities at growing sigma, number of modes, merging sigma
    gm1 = GaussianMixture([0.5, 0.5], [-HALF_GAP, HALF_GAP], TAU)
    xs = jnp.linspace(-7.0, 7.0, 2800)  # even count: the centre 0 is not a grid point
    modes_1d = {f"{s:g}": count_modes_1d(gm1.smooth(s), xs) for s in SIGMAS_1D}
    sigma_scan = np.arange(0.0, 3.0, 0.005)
    counts = np.array([count_modes_1d(gm1.smooth(float(s)), xs) for s in sigma_scan])
    merge_measured = float(sigma_scan[np.argmax(counts == 1)])
    merge_theory = math.sqrt(HALF_GAP**2 - TAU**2)

    # Monte Carlo: X + sigma N against the closed-form smoothed density
    key_x, key_n = jax.random.split(key_mc)
    x = gm1.sample(key_x, (n_mc,))
    y = np.asarray(x + SIGMA_HIST * jax.random.normal(key_n, x.shape))[:, 0].astype(np.float64)
    var_x = TAU**2 + HALF_GAP**2
    var_y_theory = var_x + SIGMA_HIST**2
    # std error of a sample variance: sqrt((m4 - var^2) / n) with the sample 4th central moment
    var_y_stderr = math.sqrt((np.mean((y - y.mean()) ** 4) - y.var() ** 2) / n_mc)

    # ---- 2-D ring
    ring = GaussianMixture.ring(K=6, radius=3.0, scale=0.3)

    fig = plt.figure(figsize=(13.0, 6.4), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=(1.0, 1.0))
    ax1, ax2 = top.subplots(1, 2, width_ratios=(1.6, 1.0))
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, len(SIGMAS_1D)))
    grid = np.asarray(xs)
    for s, c in zip(SIGMAS_1D, colors):
        p = np.exp(np.asarray(gm1.smooth(s).log_prob(xs[:, None])))
        ax1.plot(grid, p, color=c, lw=1.8, label=rf"$\sigma={s:g}$: {modes_1d[f'{s:g}']} mode(s)")
    p_merge = np.exp(np.asarray(gm1.smooth(merge_theory).log_prob(xs[:, None])))
    ax1.plot(grid, p_merge, "k--", lw=1.2, label=rf"$\sigma^*={merge_theory:.3f}$ (modes merge)")
    ax1.set_xlabel("$y$")
    ax1.set_ylabel(r"$p_Y(y) = (p_X * N(0, \sigma^2))(y)$")
    ax1.set_title(rf"1-D: $\frac{{1}}{{2}}N(\pm{HALF_GAP:g}, {TAU:g}^2)$ smoothed at growing $\sigma$", fontsize=11)
    ax1.legend(fontsize=8, frameon=False)
    ax1.set_ylim(0, None)

    p_hist = np.exp(np.asarray(gm1.smooth(SIGMA_HIST).log_prob(xs[:, None])))
    ax2.hist(y, bins=120, range=(-7, 7), density=True, color="0.75",
             label=rf"histogram of $X+{SIGMA_HIST:g}N$ ({n_mc:,} draws)")
    ax2.plot(grid, p_hist, color="C3", lw=1.8, label=rf"closed form, $\tau^2 \to \tau^2+\sigma^2$")
    ax2.set_xlabel("$y$")
    ax2.set_title(rf"Monte Carlo check at $\sigma={SIGMA_HIST:g}$", fontsize=11)
    ax2.legend(fontsize=8, frameon=False, loc="upper right")
    ax2.set_ylim(0, 1.35 * p_hist.max())

    axes2d = bottom.subplots(1, len(SIGMAS_2D), sharex=True, sharey=True)
    g = np.linspace(-5.5, 5.5, 160)
    gx, gy = np.meshgrid(g, g)
    pts = jnp.asarray(np.stack([gx, gy], -1), jnp.float32)
    for a, s in zip(axes2d, SIGMAS_2D):
        dens = np.exp(np.asarray(ring.smooth(s).log_prob(pts)))
        a.contourf(gx, gy, dens, levels=12, cmap="Blues")
        a.set_aspect("equal")
        a.set_title(rf"2-D ring, $\sigma={s:g}$", fontsize=10)
        a.set_xticks([-4, 0, 4])
        a.set_yticks([-4, 0, 4])
    bottom.suptitle("six modes (radius 3, std 0.3): first the gaps fill, then the ring fills in", fontsize=10)
    save_figure(fig, args, "smoothing_mixture")

    # ---- concentration of the noise norm
    rows = {}
    fig, (axh, axs) = plt.subplots(1, 2, figsize=(11.5, 3.9), layout="constrained", width_ratios=(1.4, 1.0))
    for d, k in zip(DIMS, jax.random.split(key_norm, len(DIMS))):
        norms = noise_norms(k, d, SIGMA_NORM, n_norm)
        mean_exact, std_exact = chi_mean_std(d, SIGMA_NORM)
        rows[d] = {
            "mean": float(norms.mean()),
            "mean_exact": mean_exact,
            "sigma_sqrt_d": SIGMA_NORM * math.sqrt(d),
            "std": float(norms.std(ddof=1)),
            "std_exact": std_exact,
            "std_asymptote": SIGMA_NORM / math.sqrt(2.0),
        }
        # bins over +-5 asymptotic standard deviations 1 / sqrt(2 d) of the normalised norm
        half = min(5.0 / math.sqrt(2.0 * d), 1.0)
        color = axh.plot([], [], lw=1.5)[0].get_color()
        axh.hist(norms / (SIGMA_NORM * math.sqrt(d)), bins=np.linspace(1.0 - half, 1.0 + half, 41),
                 density=True, histtype="step", lw=1.5, color=color, label=f"d = {d}")
        r = np.linspace(1.0 - half, 1.0 + half, 400)
        axh.plot(r, chi_density(r, d), color=color, lw=0.8, ls="--")
    axh.plot([], [], "k--", lw=0.8, label=r"exact ($\chi_d / \sqrt{d}$)")
    axh.axvline(1.0, color="k", ls=":", lw=1)
    axh.set_ylim(0, None)
    axh.set_xlabel(r"$|\sigma N| \,/\, (\sigma\sqrt{d})$")
    axh.set_ylabel("density")
    axh.set_title(r"the norm of $\sigma N$ concentrates at $\sigma\sqrt{d}$", fontsize=11)
    axh.legend(fontsize=8, frameon=False)

    dd = np.unique(np.round(np.geomspace(1, 4000, 60)).astype(int))
    axs.plot(dd, [chi_mean_std(int(d), SIGMA_NORM)[1] for d in dd], "C0-", lw=1.5, label=r"exact ($\sigma\,\chi_d$)")
    axs.axhline(SIGMA_NORM / math.sqrt(2), color="k", ls="--", lw=1, label=r"$\sigma/\sqrt{2}$")
    axs.plot(DIMS, [rows[d]["std"] for d in DIMS], "o", color="C3", label=f"measured ({n_norm:,} draws)")
    axs.set_xscale("log")
    axs.set_xlabel("dimension $d$")
    axs.set_ylabel(r"std of $|\sigma N|$")
    axs.set_ylim(0, 0.5)
    axs.set_title(rf"its spread stays $\approx\sigma/\sqrt{{2}}$ ($\sigma={SIGMA_NORM:g}$)", fontsize=11)
    axs.legend(fontsize=8, frameon=False, loc="lower right")
    save_figure(fig, args, "smoothing_concentration")

    results = {
        "num_modes_1d": modes_1d,
        "merge_sigma": merge_measured,
        "merge_sigma_theory": merge_theory,
        "merge_sigma_grid_step": 0.005,
        "hist_sigma": SIGMA_HIST,
        "var_y": float(y.var(ddof=1)),
        "var_y_stderr": var_y_stderr,
        "var_y_theory": var_y_theory,
        "norm_sigma": SIGMA_NORM,
        "norm_dims": list(DIMS),
        "norm_mean": [rows[d]["mean"] for d in DIMS],
        "norm_mean_exact": [rows[d]["mean_exact"] for d in DIMS],
        "norm_sigma_sqrt_d": [rows[d]["sigma_sqrt_d"] for d in DIMS],
        "norm_mean_over_sigma_sqrt_d": [rows[d]["mean"] / rows[d]["sigma_sqrt_d"] for d in DIMS],
        "norm_std": [rows[d]["std"] for d in DIMS],
        "norm_std_exact": [rows[d]["std_exact"] for d in DIMS],
        "norm_std_asymptote": SIGMA_NORM / math.sqrt(2.0),
        "num_draws_norm": n_norm,
        "wall_time_s": time.perf_counter() - start,
    }
    save_results(results, args, "smoothing")
    return results


if __name__ == "__main__":
    main()
