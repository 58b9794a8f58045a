"""NUTS vs GibbsWalkJump(...) on multimodal posteriors, at the same gradient budget.

Three models whose posterior has modes of known mass (grid quadrature):

* ``sign``: ``theta ~ N(0.5, 2)``, ``obs ~ N(theta^2, 1)``: modes at ``+-1.6``;
* ``label``: a two-component mixture with known weights 0.3/0.7: ``mu`` and its swap;
* ``product``: ``a, b ~ N(0.5, 1)``, ``obs ~ N(a b, 0.3)``: modes ``(a, b)`` and ``(-a, -b)``.

For each sampler: mass of the "positive" mode against the exact one, mode switches
per 1,000 gradient evaluations, ESS (ArviZ) of the mode indicator, wall time.
Gradient evaluations: NUTS counts its leapfrog steps (``num_steps``); WalkJump
spends ``1 + num_mala_steps`` per draw.

Run: ``python benchmarks/model_posteriors.py [--quick]``.
"""

from __future__ import annotations

import argparse
import platform
import time

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS

from numpyro_wjs import GibbsWalkJump

OBS_SIGN = np.array([2.9, 2.1])
DATA_LABEL = np.array([-2.6, -2.2, -2.9, 2.4, 2.8, 2.2, 2.6, 3.0, 2.3, 2.7])
W_LABEL = np.array([0.3, 0.7])
OBS_PRODUCT = np.array([1.1, 0.8, 1.3])


def sign_model():
    theta = numpyro.sample("theta", dist.Normal(0.5, 2.0))
    numpyro.sample("obs", dist.Normal(theta**2, 1.0), obs=jnp.asarray(OBS_SIGN))


def label_model():
    mu = numpyro.sample("mu", dist.Normal(0.0, 3.0).expand([2]).to_event(1))
    mix = dist.MixtureSameFamily(dist.Categorical(probs=jnp.asarray(W_LABEL)), dist.Normal(mu, 1.0))
    numpyro.sample("obs", mix, obs=jnp.asarray(DATA_LABEL))


def product_model():
    a = numpyro.sample("a", dist.Normal(0.5, 1.0))
    b = numpyro.sample("b", dist.Normal(0.5, 1.0))
    numpyro.sample("obs", dist.Normal(a * b, 0.3), obs=jnp.asarray(OBS_PRODUCT))


def _grid_mass(logp_fn, lim, n, positive):
    g = np.linspace(-lim, lim, n)
    if positive.__code__.co_argcount == 1:
        lp = logp_fn(g)
        w = np.exp(lp - lp.max())
        return float(w[positive(g)].sum() / w.sum())
    u, v = np.meshgrid(g, g, indexing="ij")
    lp = logp_fn(u, v)
    w = np.exp(lp - lp.max())
    return float(w[positive(u, v)].sum() / w.sum())


def exact_masses():
    sign = _grid_mass(
        lambda t: -0.5 * ((t - 0.5) / 2) ** 2 - 0.5 * np.sum((OBS_SIGN[:, None] - t**2) ** 2, 0),
        8, 400_001, lambda t: t > 0,
    )

    def label_lp(m1, m2):
        d = DATA_LABEL[:, None, None]
        lik = np.log(W_LABEL[0] * np.exp(-0.5 * (d - m1) ** 2) + W_LABEL[1] * np.exp(-0.5 * (d - m2) ** 2))
        return lik.sum(0) - 0.5 * (m1**2 + m2**2) / 9

    def product_lp(a, b):
        d = OBS_PRODUCT[:, None, None]
        return -0.5 * np.sum(((d - a * b) / 0.3) ** 2, 0) - 0.5 * ((a - 0.5) ** 2 + (b - 0.5) ** 2)

    label = _grid_mass(label_lp, 7, 1401, lambda u, v: u < v)
    product = _grid_mass(product_lp, 5, 1401, lambda u, v: u + v > 0)
    return {"sign": sign, "label": label, "product": product}


MODELS = {
    "sign": (sign_model, lambda s: s["theta"] > 0),
    "label": (label_model, lambda s: s["mu"][..., 0] < s["mu"][..., 1]),
    "product": (product_model, lambda s: s["a"] + s["b"] > 0),
}


def _run(kernel, model_name, num_warmup, num_samples, num_chains, seed, extra):
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method="vectorized", progress_bar=False)
    t0 = time.perf_counter()
    mcmc.run(jax.random.key(seed), extra_fields=extra)
    samples = jax.block_until_ready(mcmc.get_samples(group_by_chain=True))
    wall = time.perf_counter() - t0
    indicator = np.asarray(MODELS[model_name][1](samples)).astype(float)
    return mcmc, indicator, wall


def _row(name, indicator, evaluations, exact, wall):
    switches = np.abs(np.diff(indicator, axis=1)).sum()
    mass = indicator.mean()
    ess = float(az.ess(indicator, method="mean")) if 0 < mass < 1 else float("nan")
    per_chain = indicator.mean(1)
    return {
        "sampler": name,
        "mass": mass,
        "exact": exact,
        "|error|": abs(mass - exact),
        "chains seeing both": int(np.sum((per_chain > 0) & (per_chain < 1))),
        "switches/1k evals": 1000 * switches / evaluations,
        "ESS(indicator)": ess,
        "evals": int(evaluations),
        "wall s": wall,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--budget", type=int, default=60_000, help="gradient evaluations per chain")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.chains, args.budget, args.warmup = 4, 6_000, 200

    exact = exact_masses()
    print(f"jax {jax.__version__}, numpyro {numpyro.__version__}, {platform.processor() or platform.machine()}, "
          f"{jax.local_device_count()} device(s) {jax.devices()[0].platform}")
    print(f"budget {args.budget} gradient evaluations per chain, {args.chains} chains\n")
    for model_name, (model, _) in MODELS.items():
        rows = []
        # NUTS: a pilot run measures its leapfrog steps per draw, then the budget fixes the draws
        pilot, _, _ = _run(NUTS(model), model_name, args.warmup, 200, args.chains, args.seed, ("num_steps",))
        steps = float(np.mean(pilot.get_extra_fields()["num_steps"]))
        n_nuts = max(10, int(args.budget / steps))
        mcmc, ind, wall = _run(NUTS(model), model_name, args.warmup, n_nuts, args.chains, args.seed, ("num_steps",))
        evals = float(np.sum(mcmc.get_extra_fields()["num_steps"]))
        rows.append(_row("NUTS", ind, evals, exact[model_name], wall))

        kernel = GibbsWalkJump(model)
        per_draw = 1 + 5
        n_wj = args.budget // per_draw
        mcmc, ind, wall = _run(kernel, model_name, args.warmup, n_wj, args.chains, args.seed,
                               ("hop_accept_prob", "sigma_base"))
        rows.append(_row("GibbsWalkJump", ind, n_wj * per_draw * args.chains, exact[model_name], wall))
        hop = float(np.mean(mcmc.get_extra_fields()["hop_accept_prob"]))
        sigma = float(np.mean(mcmc.get_extra_fields()["sigma_base"]))

        print(f"### {model_name}   (exact mass {exact[model_name]:.4f}; WalkJump sigma_lo {sigma:.3f}, hop acc. {hop:.3f})")
        cols = list(rows[0])
        print("| " + " | ".join(cols) + " |")
        print("|" + "---|" * len(cols))
        for r in rows:
            print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
        print()


if __name__ == "__main__":
    main()
