"""Tweedie-Miyasawa: a least-squares denoiser is a score model, and the Bayes risk is the floor it trains down to.

For ``Y = X + sigma N`` the posterior mean is ``E[X | y] = y + sigma^2 grad log p_Y(y)``,
so a network trained on ``E||x - xhat(x + sigma eps)||^2`` gives the score of the
smoothed density as ``(xhat(y) - y) / sigma^2``. On a Gaussian mixture both sides are
closed form (``GaussianMixture.denoiser``, ``GaussianMixture.smooth(sigma).score``)
and no denoiser can have a mean squared error below the Bayes risk
``E||X - E[X|Y]||^2`` (``GaussianMixture.bayes_mse``).

The script trains an MLP (``numpyro_wjs.nn.train.train_denoiser``) on a 1-D mixture
and on a 2-D ring. The first figure draws the exact and learned denoisers over
``y`` with the identity line (where the denoiser crosses it the score is zero: the
two modes of ``p_Y`` and the valley between them), the two scores, and the training
loss against the Bayes risk;
the second shows the 2-D score field, exact against learned, and noisy points
carried to their denoised values. Printed: the held-out MSE of each network and of
the exact denoiser on the same ``(x, eps)`` pairs, their ratio, and the score error;
by the Pythagorean identity ``E||X - f(Y)||^2 = Bayes risk + E||E[X|Y] - f(Y)||^2``
the excess MSE equals ``sigma^4`` times the mean squared score error.
"""

from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from _cli import parse_args, save_figure, save_results
from flax import nnx

from numpyro_wjs.data import mixture_samples
from numpyro_wjs.nn.denoisers import MLP
from numpyro_wjs.targets import GaussianMixture
from numpyro_wjs.nn.train import train_denoiser

SIGMA_1D = 1.0
SIGMA_2D = 0.8


@nnx.jit
def denoise(model: MLP, y: jax.Array) -> jax.Array:
    """``xhat(y)`` of a fixed-sigma network on a batch ``(n, d)``."""
    return model(y)


def fit(
    target: GaussianMixture, sigma: float, key: jax.Array, fast: bool, seed: int, plot_points: np.ndarray
) -> dict:
    """Train an MLP denoiser at ``sigma`` and score it against the exact one on held-out pairs.

    The exact denoiser, the exact score and the network are also evaluated at
    ``plot_points`` (in the same calls as the held-out points).
    """
    n_train, n_eval = (5_000, 8 * 1024) if fast else (200_000, 100 * 1024)
    steps = 100 if fast else {1: 6_000, 2: 12_000}[target.dim]
    hidden = (64, 64) if fast else (128, 128, 128)
    key_data, key_noise, key_bayes = jax.random.split(key, 3)
    x_train, x_eval = np.split(mixture_samples(target, key_data, n_train + n_eval), [n_train])
    net = MLP(target.dim, hidden, sigma_data=float(x_train.std(0).mean()), rngs=nnx.Rngs(seed))
    start = time.perf_counter()
    result = train_denoiser(
        net, x_train, sigma, steps=steps, batch_size=256, learning_rate=2e-3, seed=seed, progress_bar=False,
    )
    train_s = time.perf_counter() - start
    model = result.ema_model
    n_bayes = 100_000 if fast else 1_000_000
    bayes_mse, bayes_se = target.bayes_mse(sigma, key_bayes, num_samples=n_bayes, return_stderr=True)

    # held-out pairs (x, y = x + sigma eps), denoised by the network and by the exact E[X|y]
    y = x_eval + np.float32(sigma) * np.asarray(jax.random.normal(key_noise, x_eval.shape))
    pts = np.concatenate([y, plot_points.astype(np.float32)])
    xhat_exact = np.asarray(target.denoiser(sigma)(pts), np.float64)
    xhat_net = np.asarray(denoise(model, pts), np.float64)
    score_exact = np.asarray(target.smooth(sigma).score(pts), np.float64)
    err_net = np.sum((x_eval - xhat_net[:n_eval]) ** 2, -1)
    err_bayes = np.sum((x_eval - xhat_exact[:n_eval]) ** 2, -1)
    diff = err_net - err_bayes

    # Tweedie-Miyasawa: E[X|y] = y + sigma^2 grad log p_Y(y), so the network's score is (xhat(y) - y) / sigma^2
    tweedie_gap = np.abs(xhat_exact - (pts + sigma**2 * score_exact)).max()
    score_net = (xhat_net - pts) / sigma**2
    sq_score_err = np.sum((score_net[:n_eval] - score_exact[:n_eval]) ** 2, -1)
    return {
        "model": model,
        "y_eval": y,
        "xhat_net_eval": xhat_net[:n_eval],
        "plot_xhat_exact": xhat_exact[n_eval:],
        "plot_xhat_net": xhat_net[n_eval:],
        "plot_score_exact": score_exact[n_eval:],
        "plot_score_net": score_net[n_eval:],
        "result": result,
        "train_s": train_s,
        "steps": steps,
        "n_train": n_train,
        "n_eval": n_eval,
        "mlp_mse": float(err_net.mean()),
        "exact_mse_same_pairs": float(err_bayes.mean()),
        "ratio": float(err_net.mean() / err_bayes.mean()),
        "excess_mse": float(diff.mean()),
        "excess_mse_stderr": float(diff.std(ddof=1) / math.sqrt(diff.size)),
        "bayes_mse": bayes_mse,
        "bayes_mse_stderr": bayes_se,
        "score_rel_mse": float(sq_score_err.mean() / np.sum(score_exact[:n_eval] ** 2, -1).mean()),
        "sigma4_score_mse": float(sigma**4 * sq_score_err.mean()),
        "tweedie_identity_max_abs_error": float(tweedie_gap),
    }


def running_mean(a: np.ndarray, w: int) -> np.ndarray:
    """Mean of the last ``w`` values at every step (shorter windows at the start)."""
    c = np.cumsum(np.concatenate([[0.0], a]))
    idx = np.arange(1, a.size + 1)
    return (c[idx] - c[np.maximum(idx - w, 0)]) / np.minimum(idx, w)


def plot_loss(ax: plt.Axes, fit_: dict, title: str) -> None:
    """Training loss (running mean) and held-out EMA error against the Bayes risk."""
    r = fit_["result"]
    loss = np.asarray(r.loss_history, np.float64)
    steps = np.arange(1, loss.size + 1)
    w = max(20, loss.size // 60)
    ax.plot(steps, running_mean(loss, w), color="C0", lw=1.5, label=f"training loss (mean of {w} batches)")
    ax.plot([loss.size], [fit_["mlp_mse"]], "o", color="C1", ms=6,
            label=f"held-out MSE of the EMA net ({fit_['n_eval']:,} pairs)")
    ax.plot([loss.size], [fit_["exact_mse_same_pairs"]], "x", color="k", ms=7, mew=1.5,
            label="exact denoiser, same pairs")
    ax.axhline(fit_["bayes_mse"], color="k", ls="--", lw=1.2,
               label=f"Bayes risk {fit_['bayes_mse']:.4f} $\\pm$ {fit_['bayes_mse_stderr']:.4f}")
    ax.set_ylim(0.9 * fit_["bayes_mse"], 1.6 * fit_["bayes_mse"])
    ax.set_xlabel("training step")
    ax.set_ylabel(r"$\|x - \hat x(x+\sigma\epsilon)\|^2$")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, frameon=False)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(__doc__, argv)
    start = time.perf_counter()
    key1, key2 = jax.random.split(jax.random.key(args.seed))
    gm1 = GaussianMixture([0.35, 0.65], [-2.0, 2.0], [0.4, 0.6])
    ring = GaussianMixture.ring(K=6, radius=3.0, scale=0.4)
    ys = np.linspace(-6.0, 6.0, 601)[:, None]
    q = np.linspace(-4.2, 4.2, 13)
    qx, qy = np.meshgrid(q, q)
    qpts = np.stack([qx, qy], -1).reshape(-1, 2)
    f1 = fit(gm1, SIGMA_1D, key1, args.fast, args.seed, ys)
    f2 = fit(ring, SIGMA_2D, key2, args.fast, args.seed, qpts)

    # ---- figure 1: 1-D denoiser, score, loss
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(14.0, 4.0), layout="constrained")
    y1 = ys[:, 0]
    exact, learned = f1["plot_xhat_exact"][:, 0], f1["plot_xhat_net"][:, 0]
    p_y = np.exp(np.asarray(gm1.smooth(SIGMA_1D).log_prob(jnp.asarray(ys, jnp.float32))))
    a1.fill_between(y1, -6, -6 + 8 * p_y, color="C0", alpha=0.15, lw=0, label=r"$p_Y$ (scaled)")
    a1.plot(y1, y1, ":", color="0.4", lw=1, label=r"identity $\hat x = y$")
    a1.plot(y1, exact, "k-", lw=2, label=r"exact $E[X\mid y]$")
    a1.plot(y1, learned, "--", color="C3", lw=1.8, label="MLP")
    for m in (-2.0, 2.0):
        a1.axhline(m, color="0.6", lw=0.6)
    a1.set_xlim(-6, 6)
    a1.set_ylim(-6, 6)
    a1.set_xlabel("noisy $y$")
    a1.set_ylabel(r"denoised $\hat x(y)$")
    a1.set_title(rf"1-D denoiser at $\sigma={SIGMA_1D:g}$: posterior means snap to the modes $\pm 2$", fontsize=10)
    a1.legend(fontsize=7, frameon=False, loc="upper left")

    score_exact, score_mlp = f1["plot_score_exact"][:, 0], f1["plot_score_net"][:, 0]
    a2.axhline(0, color="0.6", lw=0.6)
    a2.plot(y1, score_exact, "k-", lw=2, label=r"exact $\nabla\log p_Y(y)$")
    a2.plot(y1, score_mlp, "--", color="C3", lw=1.8, label=r"MLP $(\hat x(y) - y)/\sigma^2$")
    a2.set_xlim(-6, 6)
    a2.set_ylim(-5, 5)
    a2.set_xlabel("noisy $y$")
    a2.set_title(f"score of the smoothed density (relative MSE {f1['score_rel_mse']:.1e})", fontsize=10)
    a2.legend(fontsize=7, frameon=False)
    plot_loss(a3, f1, f"1-D training; held-out MSE / exact MSE, same pairs: {f1['ratio']:.4f}")
    save_figure(fig, args, "tweedie_1d")

    # ---- figure 2: 2-D score field and denoised points
    fig, (b1, b2, b3) = plt.subplots(1, 3, figsize=(14.0, 4.5), layout="constrained")
    g = np.linspace(-5.0, 5.0, 150)
    gx, gy = np.meshgrid(g, g)
    grid = jnp.asarray(np.stack([gx, gy], -1), jnp.float32)
    s_exact, s_mlp = f2["plot_score_exact"], f2["plot_score_net"]
    y_pts, xh_pts = f2["y_eval"][:120], f2["xhat_net_eval"][:120]
    b1.contourf(gx, gy, np.exp(np.asarray(ring.smooth(SIGMA_2D).log_prob(grid))), levels=8, cmap="Blues")
    # arrow length in data units: the median exact score spans 0.6 of the grid spacing
    scale = np.median(np.linalg.norm(s_exact, axis=-1)) / (0.6 * (q[1] - q[0]))
    b1.quiver(qx, qy, s_exact[:, 0], s_exact[:, 1], color="k", angles="xy", scale_units="xy", scale=scale,
              width=0.005, label="exact score")
    b1.quiver(qx, qy, s_mlp[:, 0], s_mlp[:, 1], color="C3", angles="xy", scale_units="xy", scale=scale,
              width=0.003, label=r"MLP $(\hat x - y)/\sigma^2$")
    b1.set_title(rf"score of $p_Y$ on the ring, $\sigma={SIGMA_2D:g}$: exact (black) under MLP (red)", fontsize=10)
    b1.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncols=2, frameon=False)

    b2.contourf(gx, gy, np.exp(np.asarray(ring.log_prob(grid))), levels=8, cmap="Blues")
    b2.plot(np.stack([y_pts[:, 0], xh_pts[:, 0]]), np.stack([y_pts[:, 1], xh_pts[:, 1]]), color="0.5", lw=0.5)
    b2.plot(y_pts[:, 0], y_pts[:, 1], ".", color="0.4", ms=3, label=r"noisy $y = x + \sigma\epsilon$")
    b2.plot(xh_pts[:, 0], xh_pts[:, 1], ".", color="C3", ms=4, label=r"denoised $\hat x(y)$ (MLP)")
    b2.set_title(r"denoising pulls $y$ back to the modes of $p_X$", fontsize=10)
    b2.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.06), ncols=2, frameon=False)
    for b in (b1, b2):
        b.set_aspect("equal")
        b.set_xlim(-5, 5)
        b.set_ylim(-5, 5)
    plot_loss(b3, f2, f"2-D training; held-out MSE / exact MSE, same pairs: {f2['ratio']:.4f}")
    save_figure(fig, args, "tweedie_2d")

    results = {}
    for name, f, sigma in (("1d", f1, SIGMA_1D), ("2d", f2, SIGMA_2D)):
        results[f"sigma_{name}"] = sigma
        for k in ("mlp_mse", "exact_mse_same_pairs", "bayes_mse", "bayes_mse_stderr", "ratio", "excess_mse",
                  "excess_mse_stderr", "sigma4_score_mse", "score_rel_mse", "tweedie_identity_max_abs_error",
                  "steps", "n_train", "n_eval", "train_s"):
            results[f"{k}_{name}"] = f[k]
    results["wall_time_s"] = time.perf_counter() - start
    save_results(results, args, "tweedie")
    return results


if __name__ == "__main__":
    main()
