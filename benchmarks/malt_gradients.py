"""Gradients to accuracy (issue 24): MALT against NUTS, MALA and UnderdampedLangevin.

The measure of the MAMS paper (Robnik, Cohn-Gordon & Seljak 2025). After ``n``
post-warmup draws of a chain, with ``mu_i``, ``sd_i`` the ground truth of coordinate
``i`` (unconstrained space),

    b2(n) = max_i max((mean_n x_i - mu_i)^2 / sd_i^2, (mean_n (x_i - mu_i)^2 - sd_i^2)^2 / (2 sd_i^4)),

averaged over chains. NUTS runs ``--draws`` draws; every other kernel gets as many
post-warmup gradients per chain as NUTS used. Reported: the post-warmup gradients per chain (each chain's own
count: NUTS's and MALT's ``num_steps``, one per draw for MALA and UnderdampedLangevin)
at which ``b2`` first falls below 0.01 (``-`` if never), and the warmup gradients.

Targets available without the internet:

* ``gauss``: a 20-d Gaussian, standard deviations log-spaced over ``[0.1, 10]``
  (condition number 10^4 in the covariance), rotated by a random orthogonal matrix
  so that a diagonal mass matrix cannot undo it; exact moments.
* ``schools``: eight schools, non-centred (``mu``, ``log tau``, ``theta``), ground
  truth from a long NUTS run (``--truth-draws`` per chain, 4 chains).

Run from the repository root::

    python benchmarks/malt_gradients.py [--chains 8] [--warmup 1000] [--draws 2000]
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
from numpyro.infer.util import initialize_model

from numpyro_wjs import MALA, UnderdampedLangevin
from numpyro_wjs.infer.malt import MALT

THRESHOLD = 0.01


def gauss_target(d=20, seed=0):
    rng = np.random.default_rng(seed)
    sd = np.exp(np.linspace(np.log(0.1), np.log(10.0), d))
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    cov = (q * sd**2) @ q.T
    prec = jnp.asarray(np.linalg.inv(cov), jnp.float32)

    def potential_fn(x):
        return 0.5 * x @ prec @ x

    return potential_fn, np.zeros(d), np.sqrt(np.diag(cov)), d


def eight_schools(sigma, y=None):
    mu = numpyro.sample("mu", dist.Normal(0, 5))
    tau = numpyro.sample("tau", dist.HalfCauchy(5))
    with numpyro.plate("J", len(sigma)):
        theta = numpyro.sample("theta", dist.Normal(0, 1))
        numpyro.sample("obs", dist.Normal(mu + tau * theta, sigma), obs=y)


Y = jnp.array([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0])
SIGMA = jnp.array([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0])


def schools_target(truth_draws, seed=0):
    info = initialize_model(jax.random.key(seed), eight_schools, model_args=(SIGMA, Y))
    potential_fn, unravel = info.potential_fn, None
    from jax.flatten_util import ravel_pytree

    _, unravel = ravel_pytree(info.param_info.z)

    def flat_potential(x):
        return potential_fn(unravel(x))

    d = ravel_pytree(info.param_info.z)[0].shape[0]
    mcmc = MCMC(NUTS(potential_fn=flat_potential, target_accept_prob=0.95), num_warmup=2000,
                num_samples=truth_draws, num_chains=4, chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.key(seed + 100), init_params=jnp.zeros((4, d)))
    x = np.asarray(mcmc.get_samples(), np.float64)
    return flat_potential, x.mean(0), x.std(0), d


def b2_curve(x, mu, sd):
    """``b2`` after each draw, averaged over chains: x (chains, draws, d)."""
    x = np.asarray(x, np.float64)
    n = np.arange(1, x.shape[1] + 1)[None, :, None]
    mean = np.cumsum(x, 1) / n
    second = np.cumsum((x - mu) ** 2, 1) / n
    b = np.maximum((mean - mu) ** 2 / sd**2, (second - sd**2) ** 2 / (2 * sd**4))
    return b.max(-1).mean(0)


KERNELS = {
    "MALT": lambda pot: MALT(potential_fn=pot),
    "NUTS": lambda pot: NUTS(potential_fn=pot),
    "MALA": lambda pot: MALA(potential_fn=pot),
    "UnderdampedLangevin": lambda pot: UnderdampedLangevin(potential_fn=pot, adapt_mass_matrix=True),
}
STEPS = {"MALT": "num_steps", "NUTS": "num_steps"}


def measure(name, potential_fn, mu, sd, d, chains, warmup, budget, seed):
    """Warmup, then draws worth about ``budget`` gradients per chain (NUTS: ``budget`` draws)."""
    mcmc = MCMC(KERNELS[name](potential_fn), num_warmup=warmup, num_samples=budget, num_chains=chains,
                chain_method="vectorized", progress_bar=False)
    init = jnp.asarray(np.random.default_rng(seed).standard_normal((chains, d)) * 0.1, jnp.float32)
    field = STEPS.get(name)
    start = time.perf_counter()
    mcmc.warmup(jax.random.key(seed), init_params=init, extra_fields=(field,) if field else (),
                collect_warmup=bool(field))
    warm_steps = np.asarray(mcmc.get_extra_fields(group_by_chain=True)[field]) if field else np.ones((1, warmup))
    warm = float(warm_steps.sum(1).mean())
    if name != "NUTS":  # the budget in gradients, from the steps per draw of the last quarter of warmup
        mcmc.num_samples = max(1, int(budget / warm_steps[:, -max(warmup // 4, 1):].mean()))
    mcmc.run(jax.random.key(seed + 1), extra_fields=(field,) if field else ())
    wall = time.perf_counter() - start
    x = np.asarray(mcmc.get_samples(group_by_chain=True))
    steps = (np.asarray(mcmc.get_extra_fields(group_by_chain=True)[field]) if field
             else np.ones(x.shape[:2]))
    grads = np.cumsum(steps, 1).mean(0)  # mean over chains of each chain's own count
    b2 = b2_curve(x, mu, sd)
    below = np.nonzero(b2 < THRESHOLD)[0]
    # first n after which b2 stays below the threshold until the end of the run
    above = np.nonzero(b2 >= THRESHOLD)[0]
    reached = None
    if below.size and (above.size == 0 or above[-1] + 1 < len(b2)):
        reached = grads[0 if above.size == 0 else above[-1] + 1]
    return {"reached": reached, "warmup": warm, "final": float(b2[-1]), "per_draw": float(steps.mean()), "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=2000, help="NUTS's draws; the others get its gradients")
    parser.add_argument("--truth-draws", type=int, default=25000)
    parser.add_argument("--targets", nargs="*", default=["gauss", "schools"])
    parser.add_argument("--kernels", nargs="*", default=list(KERNELS))
    args = parser.parse_args()
    print(machine())
    print(f"{args.chains} chains, {args.warmup} warmup, {args.draws} draws; gradients per chain to b2 < {THRESHOLD}")
    for target in args.targets:
        pot, mu, sd, d = gauss_target() if target == "gauss" else schools_target(args.truth_draws)
        print(f"\n{target} (d = {d})")
        print(f"{'kernel':22s} {'to b2<0.01':>11s} {'warmup':>9s} {'grads/draw':>10s} {'final b2':>9s} {'wall s':>7s}")
        budget = args.draws
        for name in sorted(args.kernels, key=lambda k: k != "NUTS"):
            r = measure(name, pot, mu, sd, d, args.chains, args.warmup, budget, seed=1)
            if name == "NUTS":
                budget = int(r["per_draw"] * args.draws)
            reached = "-" if r["reached"] is None else f"{r['reached']:.0f}"
            print(f"{name:22s} {reached:>11s} {r['warmup']:9.0f} {r['per_draw']:10.1f} {r['final']:9.4f} "
                  f"{r['wall']:7.1f}", flush=True)


if __name__ == "__main__":
    main()
