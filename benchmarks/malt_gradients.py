"""Gradients to accuracy (issue 24): MALT against NUTS, MALA, UnderdampedLangevin and MAMS.

The measure of the MAMS paper (Robnik, Cohn-Gordon & Seljak 2025). After ``n``
post-warmup draws of a chain, with ``mu_i``, ``sd_i`` the ground truth of coordinate
``i``,

    b2(n) = max_i max((mean_n x_i - mu_i)^2 / sd_i^2, (mean_n (x_i - mu_i)^2 - sd_i^2)^2 / (2 sd_i^4)),

averaged over chains. NUTS runs ``--draws`` draws; every other kernel gets as many
post-warmup gradients per chain as NUTS used. Reported: the post-warmup gradients per chain (each chain's own
count: NUTS's and MALT's ``num_steps``, one per draw for MALA and UnderdampedLangevin,
two per integration step for MAMS) after which ``b2`` stays below 0.01 until the end
of the run (``-`` if it is not below at the end; the final ``b2`` is printed), the
warmup gradients per chain, the gradients per post-warmup draw. A kernel whose
gradients per draw vary (MALT, MAMS) draws as many as the end of its warmup predicts,
which can overshoot NUTS's gradients by some 20 %, so its ``b2`` after the last draw
within NUTS's gradients is printed too ("b2 at NUTS's budget").

All samplers start from the same points, ``0.1 * N(0, I)`` on unconstrained space
(seed 1), one per chain. A run that would keep more than ``--max-stored`` draws per
chain is thinned (MALA and UnderdampedLangevin on the costlier targets): ``b2`` is then
computed from every ``k``-th draw and each kept draw is charged ``k`` draws' gradients.

Local targets (no extra packages):

* ``gauss``: a 20-d Gaussian, standard deviations log-spaced over ``[0.1, 10]``
  (condition number 10^4 in the covariance), rotated by a random orthogonal matrix
  so that a diagonal mass matrix cannot undo it; exact moments.
* ``schools``: eight schools, non-centred (``mu``, ``log tau``, ``theta``), ground
  truth from a long NUTS run (``--truth-draws`` per chain, 4 chains).

Inference Gym targets (``--gym``, or their names in ``--targets``; imported lazily,
install ``inference-gym tfp-nightly blackjax`` in a scratch environment; measured
with inference-gym 0.0.5, tfp-nightly 0.26.0.dev20261027, blackjax 1.7.1, jax 0.12.1,
no pins needed): ``IllConditionedGaussian`` (d 100), ``Banana`` (2), ``EightSchools``
(10), ``NealsFunnel`` (10), ``BrownianMotionUnknownScalesMissingMiddleObservations``
(32), ``StochasticVolatilitySP500Small`` (103), ``SyntheticItemResponseTheory`` (501).
``gym.targets.VectorModel(..., flatten_sample_transformations=True)``, sampled on the
unconstrained space of ``default_event_space_bijector`` (log-Jacobian included), ground
truth: the gym's mean and standard deviation of the ``identity`` sample transformation.
That ground truth is of the constrained values, so ``b2`` compares ``identity(bijector(z))``
with it. For every target but two the bijector is the identity and this *is* the
unconstrained space; the exceptions are Brownian motion (its two scales,
``innovation_noise_scale`` and ``observation_noise_scale``, through softplus) and
stochastic volatility (``persistence_of_volatility`` through sigmoid,
``white_noise_shock_scale`` through softplus), where those 2 or 3 coordinates are
compared on the constrained scale (the gym has no unconstrained ground truth) and the
other 30 or 100 on the unconstrained one. For these two targets the output also gives
``b2`` over the unconstrained coordinates only (found by checking which outputs of
``identity(bijector(z))`` equal an input coordinate). On Brownian motion this matters:
every sampler, run long, disagrees with the gym's ground truth for the two scales (8
NUTS chains x 2,000 draws: means 0.115 and 0.113 against 0.120 and 0.101, i.e. -0.10 and
+0.28 ground-truth sd; sds 0.86 and 0.84 of the gym's), which puts a floor of about
0.08 under the all-coordinate ``b2`` of every sampler; the 30 ``locs`` agree.

Measured on 2 shared CPU cores (docs/benchmarks.md): 32 chains, 1,000 warmup, 2,000
NUTS draws on Banana, EightSchools, NealsFunnel and Brownian motion; 1,000 NUTS draws
(the ``--gym`` default) on StochasticVolatilitySP500Small, IllConditionedGaussian and
SyntheticItemResponseTheory. On a load average near 2 the last two took 22 and 44
minutes for the five samplers (NUTS 96 s and 580 s; MALT 544 s and 1,011 s); under a
load of 4-8 they had not finished. MAMS's first call on stochastic volatility and item
response theory spends most of its time in XLA compiling the vmapped tuner (734 s and
676 s in all).

MAMS is BlackJAX's ``adjusted_mclmc_dynamic`` (isokinetic McLachlan integrator:
coefficients ``[b1, a1, b2, a1, b1]``, two position updates, so **two gradient calls per
integration step**, the last gradient carried to the next step; random trajectory
length, mean ``L / step_size`` steps), tuned by its own
``adjusted_mclmc_find_L_and_step_size`` (target acceptance 0.9 as in the Sampling Book,
diagonal preconditioning, ``frac_tune1 = frac_tune2 = 0.1`` of ``num_steps = 5 *
--warmup``, so ``--warmup`` tuning iterations), each chain tuned on its own (vmapped).
Its warmup gradients are counted exactly: one for the initial state plus two per
integration step the tuner reports (``total_num_tuning_integrator_steps``). In blackjax
1.7.1 the tuner fixes ``L = 2 * step_size`` (``target_num_integration_steps = 2``), so a
MAMS draw averages about two integration steps, four gradients.

Each row also prints ``max|z|``, the largest unconstrained coordinate of any kept draw.

``--excursion`` reproduces the issue's UnderdampedLangevin excursion on Brownian motion
(32 chains from ``0.1 * N(0, I)``, ``UnderdampedLangevin(potential_fn=...,
adapt_mass_matrix=True)`` on its defaults, ``--excursion-warmup`` (2,000) warmup,
``--excursion-draws`` draws)
and runs MALT the same way: max ``|z|`` per chain, final ``b2``, divergences per chain.

Run from the repository root::

    python benchmarks/malt_gradients.py [--chains 8] [--warmup 1000] [--draws 2000]
    python benchmarks/malt_gradients.py --gym [--targets Banana EightSchools] [--draws 1000]
    python benchmarks/malt_gradients.py --excursion [--excursion-draws 30000]
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


GYM_TARGETS = (
    "IllConditionedGaussian", "Banana", "EightSchools", "NealsFunnel",
    "BrownianMotionUnknownScalesMissingMiddleObservations", "StochasticVolatilitySP500Small",
    "SyntheticItemResponseTheory",
)
BROWNIAN = "BrownianMotionUnknownScalesMissingMiddleObservations"


def gym_target(name):
    """An Inference Gym target: potential on unconstrained space, the map to the values the
    ground truth is of (``identity(bijector(z))``), ground-truth mean and sd, dimension."""
    import inference_gym.using_jax as gym

    target = gym.targets.VectorModel(getattr(gym.targets, name)(), flatten_sample_transformations=True)
    bijector = target.default_event_space_bijector
    d = int(np.prod(bijector.inverse_event_shape(target.event_shape)))
    identity = target.sample_transformations["identity"]

    def potential_fn(z):
        return -(target.unnormalized_log_prob(bijector(z)) + bijector.forward_log_det_jacobian(z, event_ndims=1))

    jitted = jax.jit(jax.vmap(lambda z: identity(bijector(z))))

    def to_truth(z):
        return jitted(z)

    mu = np.asarray(identity.ground_truth_mean, np.float64)
    sd = np.asarray(identity.ground_truth_standard_deviation, np.float64)
    # the coordinates the bijector leaves as they are (possibly reordered): there the
    # ground truth is of the unconstrained value
    z = np.random.default_rng(0).normal(size=(1, d)) * 3
    x = np.asarray(to_truth(jnp.asarray(z, jnp.float32)))[0]
    to_truth.unconstrained = np.array([np.isclose(z[0], v, rtol=0, atol=1e-6).any() for v in x])
    return potential_fn, mu, sd, d, to_truth


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
    "MAMS": None,  # BlackJAX, run by ``run_mams``
}
STEPS = {"MALT": "num_steps", "NUTS": "num_steps"}


def initial_points(chains, d, seed):
    """The same starting points for every sampler: ``0.1 * N(0, I)``."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal((chains, d)) * 0.1, jnp.float32)


def first_below(b2, grads):
    """The gradients after which ``b2`` stays below the threshold to the end (None if never)."""
    above = np.nonzero(~(b2 < THRESHOLD))[0]  # NaN counts as above
    if above.size == 0:
        return grads[0]
    return grads[above[-1] + 1] if above[-1] + 1 < len(b2) else None


def summarize(x, grads, mu, sd, to_truth=None, budget=None):
    """b2 over all coordinates: gradients to the threshold, final value and (``at_budget``)
    the value after the last draw within ``budget`` gradients per chain; with a gym target
    whose bijector constrains some coordinates, also over the others (``*_unc``)."""
    out = {}
    if to_truth is not None:
        out["max_abs_z"] = float(np.abs(x).max())
        x = np.asarray(jax.lax.map(to_truth, jnp.asarray(x)))
        keep = to_truth.unconstrained
        if not keep.all():
            b2 = b2_curve(x[..., keep], mu[keep], sd[keep])
            out.update(reached_unc=first_below(b2, grads), final_unc=float(b2[-1]))
    b2 = b2_curve(x, mu, sd)
    within = np.nonzero(grads <= (np.inf if budget is None else budget))[0]
    out.update(reached=first_below(b2, grads), final=float(b2[-1]),
               at_budget=float(b2[within[-1]]) if within.size else float("nan"))
    return out


def measure(name, potential_fn, mu, sd, d, chains, warmup, budget, seed, to_truth=None, max_stored=5000):
    """Warmup, then draws worth about ``budget`` gradients per chain (NUTS: ``budget`` draws)."""
    if name == "MAMS":
        return run_mams(potential_fn, mu, sd, d, chains, warmup, budget, seed, to_truth, max_stored)
    kernel = KERNELS[name](potential_fn)
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=budget, num_chains=chains,
                chain_method="vectorized", progress_bar=False)
    init = initial_points(chains, d, seed)
    field = STEPS.get(name)
    start = time.perf_counter()
    mcmc.warmup(jax.random.key(seed), init_params=init, extra_fields=(field,) if field else (),
                collect_warmup=bool(field))
    per = 1 if field else kernel.evaluations_per_draw
    warm_steps = (np.asarray(mcmc.get_extra_fields(group_by_chain=True)[field]) if field
                  else np.full((1, warmup), per))
    warm = float(warm_steps.sum(1).mean())
    if name != "NUTS":  # the budget in gradients, from the steps per draw of the last quarter of warmup
        mcmc.num_samples = max(1, int(budget / warm_steps[:, -max(warmup // 4, 1):].mean()))
    thin = max(1, -(-mcmc.num_samples // max_stored))
    mcmc.thinning = thin
    mcmc.run(jax.random.key(seed + 1), extra_fields=(field, "diverging") if field else ("diverging",))
    wall = time.perf_counter() - start
    x = np.asarray(mcmc.get_samples(group_by_chain=True))
    fields = mcmc.get_extra_fields(group_by_chain=True)
    steps = np.asarray(fields[field]) * thin if field else np.full(x.shape[:2], per * thin)
    grads = np.cumsum(steps, 1).mean(0)  # mean over chains of each chain's own count
    return {**summarize(x, grads, mu, sd, to_truth, budget=None if name == "NUTS" else budget),
            "warmup": warm, "per_draw": float(steps.mean() / thin), "wall": wall, "thin": thin,
            "draws": mcmc.num_samples, "total": float(grads[-1]),
            "diverging": float(np.asarray(fields["diverging"]).mean())}


MAMS_GRADIENTS_PER_STEP = 2  # isokinetic McLachlan: two position updates, one gradient each


def run_mams(potential_fn, mu, sd, d, chains, warmup, budget, seed, to_truth=None, max_stored=5000,
             target_accept=0.9):
    """BlackJAX MAMS (``adjusted_mclmc_dynamic``) tuned by ``adjusted_mclmc_find_L_and_step_size``,
    each chain on its own; gradients counted from the integration steps."""
    import blackjax
    from blackjax.mcmc import adjusted_mclmc_dynamic as amd
    from blackjax.mcmc.integrators import isokinetic_mclachlan

    def logdensity_fn(x):
        return -potential_fn(x)

    steps_fn = amd.make_random_trajectory_length_fn(True)
    base = amd.build_kernel(integration_steps_fn=steps_fn, integrator=isokinetic_mclachlan)

    def kernel(rng_key, state, logdensity_fn, step_size, inverse_mass_matrix, integration_steps_params):
        return base(rng_key, state, logdensity_fn, step_size, inverse_mass_matrix=inverse_mass_matrix,
                    integration_steps_params=integration_steps_params)

    @jax.jit
    @jax.vmap
    def tune(key, x0):
        init_key, tune_key = jax.random.split(key)
        state = amd.init(x0, logdensity_fn, init_key)
        state, params, n_steps = blackjax.adjusted_mclmc_find_L_and_step_size(
            mclmc_kernel=kernel, logdensity_fn=logdensity_fn, num_steps=5 * warmup, state=state,
            rng_key=tune_key, target=target_accept, frac_tune1=0.1, frac_tune2=0.1, frac_tune3=0.0,
            diagonal_preconditioning=True)
        return state, params, n_steps

    init = initial_points(chains, d, seed)
    start = time.perf_counter()
    keys = jax.random.split(jax.random.key(seed), chains)
    state, params, n_tune = tune(keys, init)
    warm = float(np.mean(1 + MAMS_GRADIENTS_PER_STEP * np.asarray(n_tune)))
    avg = np.asarray(params.L / params.step_size)  # mean integration steps per draw, per chain
    draws = max(1, int(budget / (MAMS_GRADIENTS_PER_STEP * avg.mean())))
    thin = max(1, -(-draws // max_stored))
    stored = -(-draws // thin)

    @jax.jit
    @jax.vmap
    def sample(key, state, params):
        def one(carry, k):
            st, n, div = carry
            st, info = kernel(k, st, logdensity_fn, params.step_size, params.inverse_mass_matrix,
                              (params.L / params.step_size,))
            return (st, n + info.num_integration_steps, div + info.is_divergent), None

        def block(st, key):
            (st, n, div), _ = jax.lax.scan(one, (st, 0, 0), jax.random.split(key, thin))
            return st, (st.position, n, div)

        _, out = jax.lax.scan(block, state, jax.random.split(key, stored))
        return out

    x, n_steps, div = sample(jax.random.split(jax.random.key(seed + 1), chains), state, params)
    x = np.asarray(x)
    wall = time.perf_counter() - start
    steps = MAMS_GRADIENTS_PER_STEP * np.asarray(n_steps, np.float64)
    grads = np.cumsum(steps, 1).mean(0)
    return {**summarize(x, grads, mu, sd, to_truth, budget), "warmup": warm, "per_draw": float(steps.mean() / thin),
            "wall": wall, "thin": thin, "draws": stored * thin, "total": float(grads[-1]),
            "diverging": float(np.asarray(div).sum() / (chains * stored * thin)),
            "step_size": float(np.mean(np.asarray(params.step_size))), "L": float(np.mean(np.asarray(params.L)))}


def excursion(draws, warmup=2000, chains=32, seed=1):
    """The issue's UnderdampedLangevin excursion on Brownian motion, and MALT the same way."""
    pot, mu, sd, d, to_truth = gym_target(BROWNIAN)
    init = initial_points(chains, d, seed)
    print(f"\n{BROWNIAN} (d = {d}): {chains} chains from 0.1 * N(0, I), {warmup} warmup, {draws} draws")
    for name in ("UnderdampedLangevin", "MALT"):
        start = time.perf_counter()
        mcmc = MCMC(KERNELS[name](pot), num_warmup=warmup, num_samples=draws, num_chains=chains,
                    chain_method="vectorized", progress_bar=False)
        mcmc.run(jax.random.key(seed), init_params=init, extra_fields=("diverging",))
        wall = time.perf_counter() - start
        z = np.asarray(mcmc.get_samples(group_by_chain=True))
        div = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["diverging"]).sum(1)
        finite = np.isfinite(z).all(axis=(1, 2))
        x = np.asarray(jax.lax.map(to_truth, jnp.asarray(z)))
        keep = to_truth.unconstrained
        b2_unc = b2_curve(x[..., keep], mu[keep], sd[keep])[-1]
        b2 = b2_curve(x, mu, sd)
        # b2 per chain at the end, to show which chains carry it
        per_chain = np.array([b2_curve(x[c:c + 1], mu, sd)[-1] for c in range(chains)])
        print(f"{name}: wall {wall:.0f} s; final b2 (mean over chains) {b2[-1]:.4g}, "
              f"{b2_unc:.4g} over the {keep.sum()} unconstrained coordinates; "
              f"chains finite {finite.sum()}/{chains}; divergences total {div.sum()}")
        print("  max |z| per chain:", " ".join(f"{v:.3g}" for v in np.abs(z).max((1, 2))))
        print("  final b2 per chain:", " ".join(f"{v:.3g}" for v in per_chain))
        print("  divergences per chain:", " ".join(str(int(v)) for v in div), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=None, help="default 8 (local targets), 32 (--gym)")
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=None,
                        help="NUTS's draws; the others get its gradients (default 2000; 1000 with --gym)")
    parser.add_argument("--truth-draws", type=int, default=25000)
    parser.add_argument("--targets", nargs="*", default=None,
                        help="gauss, schools and/or Inference Gym names (default: gauss schools; all gym ones with --gym)")
    parser.add_argument("--gym", action="store_true", help="the Inference Gym targets, 32 chains")
    parser.add_argument("--kernels", nargs="*", default=list(KERNELS))
    parser.add_argument("--max-stored", type=int, default=5000, help="draws kept per chain; more are thinned")
    parser.add_argument("--excursion", action="store_true", help="only the UnderdampedLangevin excursion")
    parser.add_argument("--excursion-draws", type=int, default=30000)
    parser.add_argument("--excursion-warmup", type=int, default=2000)
    args = parser.parse_args()
    kernels = list(args.kernels)
    try:
        import blackjax

        print(machine(blackjax=blackjax.__version__))
    except ImportError:  # MAMS needs blackjax; the local targets run without it
        kernels = [k for k in kernels if k != "MAMS"]
        print(machine(), "(no blackjax: MAMS left out)")
    if args.excursion:
        excursion(args.excursion_draws, warmup=args.excursion_warmup)
        return
    chains = args.chains or (32 if args.gym else 8)
    draws = args.draws or (1000 if args.gym else 2000)
    targets = args.targets or (list(GYM_TARGETS) if args.gym else ["gauss", "schools"])
    print(f"{chains} chains, {args.warmup} warmup, {draws} NUTS draws; gradients per chain to b2 < {THRESHOLD}")
    for target in targets:
        to_truth = None
        if target == "gauss":
            pot, mu, sd, d = gauss_target()
        elif target == "schools":
            pot, mu, sd, d = schools_target(args.truth_draws)
        else:
            pot, mu, sd, d, to_truth = gym_target(target)
        print(f"\n{target} (d = {d})")
        print(f"{'kernel':22s} {'to b2<0.01':>11s} {'warmup':>9s} {'grads/draw':>10s} {'final b2':>9s} "
              f"{'post grads':>10s} {'draws':>7s} {'thin':>4s} {'div':>6s} {'wall s':>7s}")
        budget = draws
        for name in sorted(kernels, key=lambda k: k != "NUTS"):
            r = measure(name, pot, mu, sd, d, chains, args.warmup, budget, seed=1, to_truth=to_truth,
                        max_stored=args.max_stored)
            if name == "NUTS":
                budget = int(r["per_draw"] * draws)
            reached = "-" if r["reached"] is None else f"{r['reached']:.0f}"
            extra = f"  max|z| {r['max_abs_z']:.3g}" if "max_abs_z" in r else ""
            if "final_unc" in r:
                unc = "-" if r["reached_unc"] is None else f"{r['reached_unc']:.0f}"
                extra += f"  unconstrained coordinates only: to b2<0.01 {unc}, final b2 {r['final_unc']:.4f}"
            if name != "NUTS":
                extra += f"  b2 at NUTS's budget {r['at_budget']:.4g}"
            if name == "MAMS":
                extra += f"  (step {r['step_size']:.3g}, L {r['L']:.3g})"
            print(f"{name:22s} {reached:>11s} {r['warmup']:9.0f} {r['per_draw']:10.1f} {r['final']:9.4f} "
                  f"{r['total']:10.0f} {r['draws']:7d} {r['thin']:4d} {r['diverging']:6.3f} {r['wall']:7.1f}{extra}",
                  flush=True)


if __name__ == "__main__":
    main()
