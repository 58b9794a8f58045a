"""Stochastic-gradient Langevin against full-data NUTS (issue 22): error against wall time.

Bayesian logistic regression, ``N`` synthetic rows, ``d`` features (prior ``N(0, 1)``
on every weight), the likelihood in ``numpyro.plate("data", N, subsample_size=B)``;
``--model hierarchical`` adds 20 non-centred group intercepts (``mu``, ``tau``,
``eta``), global latents outside the data plate.
Reference: one long full-data NUTS run. Each method runs at a few budgets (warmup and
draws growing together); for each run: wall time (compilation included, as a user
pays it), the largest error of a posterior mean in reference posterior sds, and the
largest relative error of a posterior sd. "Reached" is the first budget with means
within 0.1 sd and sds within 10 % (the issue's goal). The reference's own Monte
Carlo error (about ``1 / sqrt(ESS)`` sd for the means) is printed beside it.

Run from the repository root::

    python benchmarks/sg_langevin.py [--n 100000] [--d 50] [--batch 1000]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from _context import machine
from numpyro.infer import MCMC, NUTS

from numpyro_wjs.infer.sgld import SGHMC, SGLD


def model(x, y, batch):
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    with numpyro.plate("data", x.shape[0], subsample_size=batch):
        xb, yb = numpyro.subsample(x, event_dim=1), numpyro.subsample(y, event_dim=0)
        numpyro.sample("y", dist.Bernoulli(logits=xb @ w), obs=yb)


GROUPS = 20


def hierarchical(x, y, batch):
    """Logistic regression with non-centred group intercepts (row ``i`` in group ``i % 20``)."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    tau = numpyro.sample("tau", dist.HalfNormal(1.0))
    eta = numpyro.sample("eta", dist.Normal(0.0, 1.0).expand([GROUPS]).to_event(1))
    with numpyro.plate("data", x.shape[0], subsample_size=batch) as idx:
        logits = x[idx] @ w + mu + tau * eta[idx % GROUPS]
        numpyro.sample("y", dist.Bernoulli(logits=logits), obs=y[idx])


def data(n, d, seed=0, groups=False):
    kx, kw, ky = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(kx, (n, d))
    w = 2.0 * jax.random.normal(kw, (d,)) / jnp.sqrt(d)
    logits = x @ w
    if groups:  # intercepts 0.5 + 0.5 * N(0, 1) per group
        logits = logits + 0.5 + 0.5 * jax.random.normal(jax.random.key(seed + 1), (GROUPS,))[jnp.arange(n) % GROUPS]
    y = (jax.random.uniform(ky, (n,)) < jax.nn.sigmoid(logits)).astype(jnp.float32)
    return x, y


def run(kernel, x, y, batch, warmup, draws, thinning=1, seed=1):
    """``(draws of every latent site, flattened and concatenated; wall seconds)``."""
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, thinning=thinning, progress_bar=False)
    start = time.perf_counter()
    mcmc.run(jax.random.key(seed), x, y, batch)
    samples = mcmc.get_samples()
    w = np.concatenate([np.asarray(samples[k]).reshape(draws // thinning, -1) for k in sorted(samples)], axis=1)
    return w, time.perf_counter() - start


def laplace(x, y, iterations=12):
    """Posterior mean and sds of the logistic regression by Laplace's approximation: Newton's
    method to the mode, sds from the inverse Hessian. For ``N >> d`` the posterior is Gaussian
    up to ``O(1 / sqrt(N))`` (Bernstein-von Mises): at ``N = 10^6``, ``d = 50`` far below
    any Monte Carlo error here, and cheaper than a long NUTS run."""
    w = jnp.zeros(x.shape[1])
    for _ in range(iterations):
        p = jax.nn.sigmoid(x @ w)
        grad = x.T @ (y - p) - w
        hess = (x * (p * (1 - p))[:, None]).T @ x + jnp.eye(x.shape[1])
        w = w + jnp.linalg.solve(hess, grad)
    p = jax.nn.sigmoid(x @ w)
    hess = (x * (p * (1 - p))[:, None]).T @ x + jnp.eye(x.shape[1])
    return np.asarray(w), np.sqrt(np.diag(np.linalg.inv(np.asarray(hess, dtype=np.float64))))


def errors(w, ref_mean, ref_sd):
    """Max and root-mean-square over coordinates of the mean error (in sds) and sd error."""
    em, es = np.abs(w.mean(0) - ref_mean) / ref_sd, np.abs(w.std(0) / ref_sd - 1)
    return em.max(), np.sqrt(np.mean(em**2)), es.max(), np.sqrt(np.mean(es**2))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--d", type=int, default=50)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--ref-draws", type=int, default=3000)
    p.add_argument("--sg-warmup", type=int, default=3000)
    p.add_argument("--nuts", default="100:100,200:400,300:1000", help="NUTS budgets warmup:draws,...")
    p.add_argument("--model", choices=["logistic", "hierarchical"], default="logistic")
    p.add_argument("--reference", choices=["nuts", "laplace"], default="nuts",
                   help="laplace: the Gaussian approximation at the mode (logistic model, N >> d)")
    args = p.parse_args()
    x, y = data(args.n, args.d, groups=args.model == "hierarchical")
    target = {"logistic": model, "hierarchical": hierarchical}[args.model]
    print(machine())
    print(f"{args.model}: N = {args.n}, d = {args.d}, B = {args.batch}")

    if args.reference == "laplace":
        start = time.perf_counter()
        ref_mean, ref_sd = laplace(x, y)
        print(f"reference: Laplace approximation, {time.perf_counter() - start:.1f} s")
    else:
        ref, t_ref = run(NUTS(target), x, y, None, 300, args.ref_draws, seed=0)
        ref_mean, ref_sd = ref.mean(0), ref.std(0)
        print(f"reference: NUTS 300 + {args.ref_draws} draws, {t_ref:.1f} s "
              f"(its MC error of a mean ~ {1 / np.sqrt(args.ref_draws):.3f} sd x sqrt(autocorrelation time))")

    sw = args.sg_warmup
    budgets = {
        "NUTS (full data)": [(lambda: NUTS(target), None, int(w), int(s), 1)
                             for w, s in (b.split(":") for b in args.nuts.split(","))],
        "SGLD-CV": [(lambda: SGLD(target, control_variates=True), args.batch, sw, s, 10) for s in (1000, 3000)],
        "SGHMC-CV": [(lambda: SGHMC(target, control_variates=True), args.batch, sw, s, 10) for s in (1000, 3000)],
        "SGLD (no CV)": [(lambda: SGLD(target), args.batch, sw, s, 10) for s in (3000,)],
    }
    print("| method | warmup | draws x thinning | wall s | mean error (sd): max / rms | sd error: max / rms | reached |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name, runs in budgets.items():
        for make, batch, warmup, draws, thin in runs:
            w, t = run(make(), x, y, batch, warmup, draws * thin, thinning=thin)
            em, em2, es, es2 = errors(w, ref_mean, ref_sd)
            ok = "yes" if em < 0.1 and es < 0.1 else "no"
            print(f"| {name} | {warmup} | {draws} x {thin} | {t:.1f} | {em:.3f} / {em2:.3f} | {es:.1%} / {es2:.1%} | {ok} |",
                  flush=True)


if __name__ == "__main__":
    main()
