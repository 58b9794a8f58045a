"""The kernels on their defaults against posteriors with published ground truth.

Targets from Google's Inference Gym (``inference-gym`` with ``tfp-nightly``; not a
dependency of the package: ``pip install inference-gym tfp-nightly`` in a scratch
environment): an ill-conditioned Gaussian, the banana, eight schools, Neal's
funnel and Brownian motion with unknown scales (and missing middle observations,
the variant that ships its data). Each target is sampled in its
unconstrained space (``default_event_space_bijector``, log-Jacobian included) through
``potential_fn``, 4 vectorized chains, 1,000 warmup iterations, then NUTS's
gradient budget: NUTS runs 2,000 draws first and every other kernel gets as many
gradient evaluations per chain as NUTS used after warmup (``num_steps``).

Reported per target and kernel: ``err/sd``, the largest over coordinates of
``|mean - ground_truth_mean| / ground_truth_sd`` of the ``identity`` sample
transformation (the Monte Carlo floor at ``n`` effective draws is about
``1/sqrt(n)``); ``sd ratio``, the worst ``sd / ground_truth_sd`` (farthest from 1);
the fraction of ``diverging`` draws; the largest ``|x|`` seen (a blow-up shows as
1e6 and more).

Run from the repository root, in an environment with inference-gym::

    python benchmarks/gym_posteriors.py [--targets EightSchools Banana] [--kernels NUTS ULA]
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC, NUTS

from numpyro_wjs import MALA, ULA, GibbsWalkJump, UnderdampedLangevin

from _context import machine

TARGETS = (
    "IllConditionedGaussian", "Banana", "EightSchools", "NealsFunnel", "BrownianMotionUnknownScalesMissingMiddleObservations"
)
KERNELS = {
    "NUTS": NUTS,
    "MALA": MALA,
    "UnderdampedLangevin": lambda potential_fn: UnderdampedLangevin(potential_fn=potential_fn, adapt_mass_matrix=True),
    "ULA": lambda potential_fn: ULA(potential_fn=potential_fn),
    "GibbsWalkJump": lambda potential_fn: GibbsWalkJump(potential_fn=potential_fn),
}
CHAINS, WARMUP, NUTS_DRAWS = 4, 1000, 2000


def load(name: str):
    import inference_gym.using_jax as gym

    target = gym.targets.VectorModel(getattr(gym.targets, name)(), flatten_sample_transformations=True)
    bijector = target.default_event_space_bijector
    dim = int(np.prod(bijector.inverse_event_shape(target.event_shape)))

    def potential_fn(z):
        x = bijector(z)
        return -(target.unnormalized_log_prob(x) + bijector.forward_log_det_jacobian(z, event_ndims=1))

    identity = target.sample_transformations["identity"]
    return potential_fn, bijector, identity, dim


def run(kernel, potential_fn, dim, draws, seed):
    mcmc = MCMC(kernel, num_warmup=WARMUP, num_samples=draws, num_chains=CHAINS, chain_method="vectorized",
                progress_bar=False)
    init = 0.1 * jax.random.normal(jax.random.key(seed + 1), (CHAINS, dim))
    fields = ("diverging", "num_steps") if isinstance(kernel, NUTS) else ("diverging",)
    mcmc.run(jax.random.key(seed), init_params=init, extra_fields=fields)
    return mcmc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", nargs="+", default=list(TARGETS))
    parser.add_argument("--kernels", nargs="+", default=list(KERNELS), choices=list(KERNELS),
                        help="kernels to run (default: all); NUTS always runs, as it sets the budget")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    kernels = {k: make for k, make in KERNELS.items() if k == "NUTS" or k in args.kernels}
    print(machine())
    print(f"{CHAINS} chains, {WARMUP} warmup; budget: NUTS's gradients after warmup ({NUTS_DRAWS} NUTS draws)\n")
    print("| target | kernel | gradients / chain | err/sd | sd ratio | diverging | max abs x | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.targets:
        potential_fn, bijector, identity, dim = load(name)
        truth_mean = np.asarray(identity.ground_truth_mean)
        truth_sd = np.asarray(identity.ground_truth_standard_deviation)
        budget = None
        for kname, make in kernels.items():
            kernel = make(potential_fn=potential_fn)
            cost = getattr(kernel, "evaluations_per_draw", 1)
            draws = NUTS_DRAWS if budget is None else max(int(budget // cost), 10)
            start = time.perf_counter()
            mcmc = run(kernel, potential_fn, dim, draws, args.seed)
            wall = time.perf_counter() - start
            fields = mcmc.get_extra_fields(group_by_chain=True)
            if budget is None:
                budget = float(np.asarray(fields["num_steps"]).sum(1).mean())
            z = np.asarray(mcmc.get_samples())
            x = np.asarray(jax.vmap(lambda zz: identity(bijector(zz)))(jnp.asarray(z)))
            finite = np.isfinite(x).all()
            err = np.max(np.abs(x.mean(0) - truth_mean) / truth_sd) if finite else math.inf
            ratio = x.std(0) / truth_sd if finite else np.array([math.inf])
            worst = ratio[np.argmax(np.abs(np.log(ratio)))] if finite else math.inf
            print(f"| {name} | {kname} | {budget if kname == 'NUTS' else draws * cost:,.0f} | {err:.3f} | {worst:.3f} | "
                  f"{np.asarray(fields['diverging']).mean():.3f} | {np.abs(z).max():.3g} | {wall:.1f} |", flush=True)


if __name__ == "__main__":
    main()
