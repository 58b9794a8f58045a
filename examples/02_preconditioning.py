"""Preconditioning: an adapted dense mass matrix lets MALA move along an ill-conditioned Gaussian.

The target is a 2-D Gaussian with standard deviations 10 and 0.1 along axes rotated by 45
degrees. Without a preconditioner the stable step size is set by the narrow direction
(``h ~ 0.1^2``), so the wide direction crawls: it needs about ``10^2 / h`` steps per
independent draw. A diagonal mass matrix cannot help here (both coordinates have the same
marginal variance, so it only rescales what the step size already scales); a dense one,
adapted during warmup (``MALA(..., adapt_mass_matrix=True, dense_mass=True)``), learns the
covariance, whitens the target and mixes in a few steps. Chains start as NumPyro's
``init_to_uniform`` would, uniformly in ``[-2, 2]^2``. The reader sees the adapted step
sizes and acceptance rates, the ESS per gradient evaluation in each direction, and the
draws and traces of the slow direction for no, diagonal and dense preconditioning.
"""

from __future__ import annotations

import math
import time

import arviz as az
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from _cli import parse_args, save_figure, save_results
from numpyro.infer import MCMC

from numpyro_wjs import MALA, Gaussian

SCALES = (10.0, 0.1)
ANGLE_DEG = 45.0
CONFIGS = {
    "none": {"adapt_mass_matrix": False},
    "diagonal": {"adapt_mass_matrix": True, "dense_mass": False},
    "dense": {"adapt_mass_matrix": True, "dense_mass": True},
}


def rotated_gaussian(scales, angle_deg):
    """``N(0, R diag(scales^2) R^T)`` with ``R`` the rotation by ``angle_deg``; returns the target and ``R``."""
    a = math.radians(angle_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    cov = rot @ np.diag(np.square(scales)) @ rot.T
    return Gaussian(jnp.zeros(2), jnp.asarray(cov, jnp.float32)), rot


def ess_per_gradient(x):
    """ArviZ bulk ESS of ``x`` ``(chain, draw)`` per gradient evaluation (MALA: one per draw)."""
    return float(az.ess(x)) / x.size


def main(argv=None):
    args = parse_args(__doc__, argv)
    start = time.perf_counter()
    chains, warmup, samples = (8, 500, 1000) if args.fast else (16, 2000, 5000)
    target, rot = rotated_gaussian(SCALES, ANGLE_DEG)
    key_init, *keys = jax.random.split(jax.random.key(args.seed), len(CONFIGS) + 1)
    init = jax.random.uniform(key_init, (chains, 2), minval=-2.0, maxval=2.0)

    runs, results = {}, {
        "scales": list(SCALES),
        "angle_deg": ANGLE_DEG,
        "true_covariance": np.asarray(target.cov).tolist(),
        "condition_number": (SCALES[0] / SCALES[1]) ** 2,
        "num_chains": chains,
        "num_warmup": warmup,
        "num_samples": samples,
    }
    for (name, config), key in zip(CONFIGS.items(), keys):
        mcmc = MCMC(MALA(potential_fn=target.potential_fn, step_size=1e-3, **config), num_warmup=warmup,
                    num_samples=samples, num_chains=chains, chain_method="vectorized", progress_bar=False)
        mcmc.run(key, init_params=init, extra_fields=("accept_prob",))
        x = np.asarray(mcmc.get_samples(group_by_chain=True), np.float64)
        uv = x @ rot  # principal coordinates: u along the wide axis, v along the narrow one
        adapt = mcmc.last_state.adapt_state
        runs[name] = uv
        results[f"{name}_step_size"] = float(np.median(adapt.step_size))
        results[f"{name}_accept_prob"] = float(np.mean(mcmc.get_extra_fields()["accept_prob"]))
        results[f"{name}_ess_per_gradient_x"] = [ess_per_gradient(x[..., i]) for i in range(2)]
        results[f"{name}_ess_per_gradient_wide"] = ess_per_gradient(uv[..., 0])
        results[f"{name}_ess_per_gradient_narrow"] = ess_per_gradient(uv[..., 1])
        results[f"{name}_rhat_wide"] = float(az.rhat(uv[..., 0]))
        results[f"{name}_std_wide"] = float(uv[..., 0].std())
        results[f"{name}_std_narrow"] = float(uv[..., 1].std())
        imm = np.asarray(adapt.inverse_mass_matrix, np.float64).mean(0)
        results[f"{name}_inverse_mass_matrix"] = imm.tolist()
        metric = np.diag(imm) if imm.ndim == 1 else imm
        for j, axis in enumerate(("wide", "narrow")):
            # h r^T C r: the step size the preconditioned chain takes along the unit direction r
            step = results[f"{name}_step_size"] * float(rot[:, j] @ metric @ rot[:, j])
            results[f"{name}_effective_step_{axis}"] = step
    results["dense_over_none_ess_wide"] = (
        results["dense_ess_per_gradient_wide"] / results["none_ess_per_gradient_wide"]
    )

    fig_draws(runs, results, args)
    results["wall_time_s"] = round(time.perf_counter() - start, 1)
    save_results(results, args, "preconditioning")


def fig_draws(runs, r, args):
    """Draws in principal coordinates over the target's contours (top) and traces of the wide one (bottom)."""
    fig, axes = plt.subplots(2, 3, figsize=(11.5, 5.8), layout="constrained", sharey="row")
    su, sv = SCALES
    u, v = np.meshgrid(np.linspace(-4 * su, 4 * su, 200), np.linspace(-4 * sv, 4 * sv, 200))
    for j, (name, uv) in enumerate(runs.items()):
        a = axes[0, j]
        a.contour(u, v, (u / su) ** 2 + (v / sv) ** 2, levels=[1, 4], colors="0.5", linewidths=0.8)
        pts = uv[:, :: max(1, uv.shape[0] * uv.shape[1] // 600)].reshape(-1, 2)
        a.plot(pts[:, 0], pts[:, 1], ".", ms=2, color=f"C{j}")
        a.set_xlim(-4 * su, 4 * su)
        a.set_ylim(-4 * sv, 4 * sv)
        a.set_title(f"{name} mass matrix: h = {r[f'{name}_step_size']:.2g}, "
                    f"accept {r[f'{name}_accept_prob']:.2f}\n"
                    f"ESS/1000 gradients: wide {1000 * r[f'{name}_ess_per_gradient_wide']:.3g}, "
                    f"narrow {1000 * r[f'{name}_ess_per_gradient_narrow']:.3g}", fontsize=9, loc="left")
        b = axes[1, j]
        b.axhspan(-2 * su, 2 * su, color="0.92", lw=0)
        thin = max(1, uv.shape[1] // 200)
        t = np.arange(0, uv.shape[1], thin)
        for c in range(min(2, uv.shape[0])):
            b.plot(t, uv[c, ::thin, 0], lw=0.6)
        b.set_title(f"{name}: trace of u (2 chains), R-hat(u) = {r[f'{name}_rhat_wide']:.2f}",
                    fontsize=9, loc="left")
    for a in axes.ravel():
        a.locator_params(nbins=5)
    axes[0, 1].set_xlabel("u (wide direction, sd 10)")
    axes[1, 1].set_xlabel("draw (one gradient each)" + (f"; one draw in {thin} shown" if thin > 1 else ""))
    axes[0, 0].set_ylabel("v (narrow direction, sd 0.1)")
    axes[1, 0].set_ylabel("u (band: ±2 sd)")
    fig.suptitle("MALA on a 2-D Gaussian with sd 10 and 0.1 along axes rotated by 45°, drawn in those axes "
                 "(contours: 1 and 2 sd)", fontsize=11)
    save_figure(fig, args, "preconditioning_draws")


if __name__ == "__main__":
    main()
