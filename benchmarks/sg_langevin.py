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

``--methods`` adds baselines through the same table: ``hmcecs`` (NumPyro's HMCECS, NUTS
inner kernel, second-order Taylor proxy around a MAP point) and BlackJAX's ``sgld`` /
``sghmc`` (``bj-*``; ``-cv``: BlackJAX's control variates around the same MAP point).
The MAP point is a short minibatch SVI fit (``AutoDelta``); its wall time is added to
every row that uses it. BlackJAX tunes no step: it gets ``--bj-scale`` times the step
this package's warmup picked for SGLD-CV / SGHMC-CV (same ``--sg-warmup``), in the
unpreconditioned units BlackJAX uses (``h mean(C)`` for SGLD, ``h sqrt(mean(C))`` for
SGHMC's time step); the package warmup's own time is not added to those rows. BlackJAX
chains start at the MAP point and discard ``--sg-warmup`` steps; ``sghmc`` makes one draw
per 10 integration steps on one minibatch (BlackJAX's default), ``sgld`` keeps every
10th step, so a draw costs 10 minibatch gradients in both.

Run from the repository root::

    python benchmarks/sg_langevin.py [--n 100000] [--d 50] [--batch 1000] [--methods nuts,sgld-cv,...]
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
from numpyro.infer import HMCECS, MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoDelta

from numpyro_wjs.infer.sgld import SGHMC, SGLD

try:  # the `bench` extra
    import blackjax
except ImportError:
    blackjax = None


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


def flat(samples):
    """Every latent site's draws, flattened and concatenated (sites sorted by name)."""
    return np.concatenate([np.asarray(v).reshape(len(v), -1) for _, v in sorted(samples.items())], axis=1)


def run(kernel, x, y, batch, warmup, draws, thinning=1, seed=1, mcmc_out=None):
    """``(draws of every latent site, flattened and concatenated; wall seconds)``;
    ``mcmc_out``, a list, receives the ``MCMC`` object."""
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=draws, thinning=thinning, progress_bar=False)
    start = time.perf_counter()
    mcmc.run(jax.random.key(seed), x, y, batch)
    w = flat(mcmc.get_samples())
    if mcmc_out is not None:
        mcmc_out.append(mcmc)
    return w, time.perf_counter() - start


def map_point(target, x, y, batch, steps, seed=2):
    """``(MAP point {site: value}, wall seconds)``: minibatch SVI with ``AutoDelta``, Adam
    with the learning rate decaying from 1e-2 to 1e-4."""
    guide = AutoDelta(target)
    optim = numpyro.optim.Adam(lambda i: 1e-2 * 0.01 ** (i / steps))
    start = time.perf_counter()
    result = SVI(target, guide, optim, Trace_ELBO()).run(jax.random.key(seed), steps, x, y, batch, progress_bar=False)
    params = jax.block_until_ready(guide.median(result.params))
    return params, time.perf_counter() - start


def blackjax_run(kind, x, y, batch, centre, step, burn, draws, thin=10, cv=False, seed=1):
    """BlackJAX's ``sgld`` / ``sghmc`` on the logistic regression from ``centre`` (flat),
    minibatches of ``batch`` rows drawn with replacement: ``(draws, wall seconds)``. SGLD
    keeps every ``thin``-th step; SGHMC draws once per step of ``thin`` integration steps."""
    start = time.perf_counter()
    n = x.shape[0]
    grads = blackjax.sgmcmc.gradients.grad_estimator(
        lambda w: dist.Normal(0.0, 1.0).log_prob(w).sum(),
        lambda w, row: dist.Bernoulli(logits=row[0] @ w).log_prob(row[1]), n)
    if cv:
        grads = blackjax.sgmcmc.gradients.control_variates(grads, centre, (x, y))
    if kind == "sgld":
        algo, per_draw, steps = blackjax.sgld(grads), thin, burn + draws * thin
    else:
        algo, per_draw, steps = blackjax.sghmc(grads, num_integration_steps=thin), 1, burn // thin + draws

    @jax.jit
    def chain(key, x, y):
        def one(pos, key):
            k_batch, k_step = jax.random.split(key)
            idx = jax.random.randint(k_batch, (batch,), 0, n)
            pos = algo.step(k_step, pos, (x[idx], y[idx]), step)
            return pos, pos

        return jax.lax.scan(one, algo.init(centre), jax.random.split(key, steps))[1]

    path = np.asarray(chain(jax.random.key(seed), x, y))
    return path[steps - draws * per_draw + per_draw - 1::per_draw], time.perf_counter() - start


def effective_step(mcmc, kind):
    """The step the package's warmup picked, in unpreconditioned units (``C`` averaged):
    ``h mean(C)`` for SGLD, ``h sqrt(mean(C))`` (a time step) for SGHMC."""
    adapt = mcmc.last_state.adapt_state
    c = float(np.mean(np.asarray(adapt.dual.inverse_mass_matrix)))
    h = float(adapt.step_size)
    return h * c if kind == "sgld" else h * np.sqrt(c)


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
    p.add_argument("--methods", default="nuts,sgld-cv,sghmc-cv,sgld",
                   help="comma list of nuts, sgld-cv, sghmc-cv, sgld, hmcecs, bj-sgld, bj-sgld-cv, bj-sghmc, bj-sghmc-cv")
    p.add_argument("--ecs", default="200:200,500:500", help="HMCECS budgets warmup:draws,...")
    p.add_argument("--ecs-blocks", type=int, default=100, help="HMCECS num_blocks (as NumPyro's hmcecs example)")
    p.add_argument("--map-steps", type=int, default=3000, help="SVI steps of the MAP point (HMCECS, BlackJAX)")
    p.add_argument("--bj-scale", default="1", help="BlackJAX steps: multiples of the package's warmup step")
    args = p.parse_args()
    x, y = data(args.n, args.d, groups=args.model == "hierarchical")
    target = {"logistic": model, "hierarchical": hierarchical}[args.model]
    print(machine(**({"blackjax": blackjax.__version__} if blackjax else {})))
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

    sw, b = args.sg_warmup, args.batch
    package = {"sgld": SGLD, "sghmc": SGHMC}
    mcmcs, fitted = {}, []  # the package's SG-CV runs (for BlackJAX's steps); the MAP point

    def pkg(kind, cv, draws):
        def go():
            out = mcmcs.setdefault(kind, []) if cv else None
            return run(package[kind](target, control_variates=cv), x, y, b, sw, draws * 10, 10, mcmc_out=out)
        return go

    def map_fit():
        if not fitted:
            params, t = map_point(target, x, y, b, args.map_steps)
            fitted.extend((params, t, flat(jax.tree.map(lambda v: v[None], params))[0]))
            print(f"MAP point: {args.map_steps} SVI steps, {t:.1f} s, "
                  f"max |MAP - reference mean| = {np.max(np.abs(fitted[2] - ref_mean) / ref_sd):.2f} sd")
        return fitted

    def ecs(warmup, draws):
        def go():
            params, t_map, _ = map_fit()
            w, t = run(HMCECS(NUTS(target), num_blocks=args.ecs_blocks, proxy=HMCECS.taylor_proxy(params)),
                       x, y, b, warmup, draws)
            return w, t + t_map
        return go

    def bj(kind, cv, scale, draws):
        def go():
            if not mcmcs.get(kind):
                print(f"step from a {kind.upper()}-CV warmup of this package: {pkg(kind, True, 1)()[1]:.1f} s")
            step = scale * effective_step(mcmcs[kind][0], kind)
            _, t_map, centre = map_fit()
            print(f"BlackJAX {kind}: step {step:.3g} ({scale:g} x the package's)", flush=True)
            w, t = blackjax_run(kind, x, y, b, centre, step, sw, draws, cv=cv)
            return w, t + t_map
        return go

    nuts, ecs_budgets = ([tuple(map(int, v.split(":"))) for v in spec.split(",")] for spec in (args.nuts, args.ecs))
    scales = [float(v) for v in args.bj_scale.split(",")]
    budgets = {  # key: (label, [(warmup, steps column, run), ...])
        "nuts": ("NUTS (full data)", [(w, f"{s}", lambda w=w, s=s: run(NUTS(target), x, y, None, w, s)) for w, s in nuts]),
        "sgld-cv": ("SGLD-CV", [(sw, f"{s}k", pkg("sgld", True, s * 100)) for s in (10, 30)]),
        "sghmc-cv": ("SGHMC-CV", [(sw, f"{s}k", pkg("sghmc", True, s * 100)) for s in (10, 30)]),
        "sgld": ("SGLD (no CV)", [(sw, "30k", pkg("sgld", False, 3000))]),
        "hmcecs": (f"HMCECS (Taylor, {args.ecs_blocks} blocks)", [(w, f"{s}", ecs(w, s)) for w, s in ecs_budgets]),
    }
    for kind in package:
        for cv in (False, True):
            label = f"BlackJAX {kind}{'-CV' if cv else ''}"
            budgets[f"bj-{kind}{'-cv' if cv else ''}"] = (label, [
                (sw, f"30k, step x{c:g}", bj(kind, cv, c, 3000)) for c in scales])
    unknown = set(args.methods.split(",")) - set(budgets)
    if unknown:
        raise SystemExit(f"unknown --methods {sorted(unknown)}; choose from {sorted(budgets)}")
    print("| method | warmup + steps | wall s | mean error max / rms (sd) | sd error max / rms | reached |")
    print("|---|---|---:|---:|---:|---|")
    for key in args.methods.split(","):
        name, runs = budgets[key]
        for warmup, steps, go in runs:
            w, t = go()
            em, em2, es, es2 = errors(w, ref_mean, ref_sd)
            ok = "yes" if em < 0.1 and es < 0.1 else "no"
            print(f"| {name} | {warmup} + {steps} | {t:.1f} | {em:.3f} / {em2:.3f} | {es:.1%} / {es2:.1%} | {ok} |",
                  flush=True)


if __name__ == "__main__":
    main()
