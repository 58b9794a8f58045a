"""Learned denoisers against the Bayes risk on Gaussian mixtures.

For ``p_X = sum_k pi_k N(mu_k, tau_k^2 I)`` the posterior mean ``E[X | y]`` is exact
(theory.md section 3), so the Bayes risk ``E||X - E[X|Y]||^2`` is the floor for any
denoiser. Each case trains an MLP with :func:`numpyro_wjs.nn.train.train_denoiser` and
scores the EMA network and the exact Bayes denoiser on the same held-out pairs
``(x, eps)``; the ratio of their mean squared errors should be at most 1.05. The
standard error of the excess ``mean(err_net - err_bayes)`` comes from the paired
differences.

Cases: ``2d`` (8 modes on a ring, sigma 1), ``16d`` (8 random modes in R^16,
sigma 1) and ``cond`` (a noise-conditional MLP on the 16-D mixture, trained on
``s in [0.1, 2]`` and scored at 0.1, 0.5 and 2). Run::

    python benchmarks/denoiser_bayes_risk.py [--steps 5000] [--cases 2d 16d cond]
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np
from flax import nnx

from numpyro_wjs.nn.denoisers import MLP
from numpyro_wjs.targets import GaussianMixture
from numpyro_wjs.nn.train import denoising_errors, train_denoiser


def ring_2d() -> GaussianMixture:
    """8 modes on a circle of radius 3, std 0.4."""
    return GaussianMixture.ring(8, 3.0, 0.4)


def random_16d() -> GaussianMixture:
    """8 modes with N(0, 1.5^2 I) means in R^16, std 0.5 to 1, unequal weights."""
    rng = np.random.default_rng(16)
    means = 1.5 * rng.standard_normal((8, 16))
    scales = rng.uniform(0.5, 1.0, 8)
    weights = rng.uniform(0.5, 1.5, 8)
    return GaussianMixture(weights, means, scales)


def score(net, mixture, x, sigma, key, conditional):
    """Paired squared errors of the network and of the Bayes denoiser."""
    err_net = denoising_errors(net, x, sigma, key=key)
    eps = np.asarray(jax.random.normal(key, x.shape))
    xhat = np.asarray(mixture.denoiser(sigma)(x + sigma * eps))
    err_bayes = np.sum((x - xhat) ** 2, axis=-1)
    d = err_net - err_bayes
    return err_net.mean(), err_bayes.mean(), d.mean(), d.std(ddof=1) / np.sqrt(d.size)


def run_case(name, mixture, sigma, eval_sigmas, args):
    key_train, key_eval, key_noise = jax.random.split(jax.random.key(args.seed), 3)
    x = np.asarray(mixture.sample(key_train, (args.n_train,)), np.float32)
    x_eval = np.asarray(mixture.sample(key_eval, (args.n_eval,)), np.float32)
    sigma_data = float(np.sqrt(x.var(axis=0).mean()))
    conditional = isinstance(sigma, tuple)
    net = MLP(
        mixture.dim, tuple(args.hidden), noise_conditional=conditional,
        sigma_data=sigma_data, rngs=nnx.Rngs(args.seed),
    )
    start = time.perf_counter()
    result = train_denoiser(
        net, x, sigma, steps=args.steps, batch_size=args.batch_size,
        learning_rate=args.learning_rate, seed=args.seed, progress_bar=args.progress,
    )
    seconds = time.perf_counter() - start
    rows = []
    for s in eval_sigmas:
        mse, bayes, gap, se = score(result.ema_model, mixture, x_eval, s, key_noise, conditional)
        rows.append((name, mixture.dim, s, mse, bayes, mse / bayes, se / bayes, seconds))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=["2d", "16d", "cond"], choices=["2d", "16d", "cond"])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 128, 128])
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--n-train", type=int, default=200_000)
    parser.add_argument("--n-eval", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-ratio", type=float, default=1.05)
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()

    cases = {
        "2d": lambda: run_case("2d", ring_2d(), 1.0, [1.0], args),
        "16d": lambda: run_case("16d", random_16d(), 1.0, [1.0], args),
        "cond": lambda: run_case("cond-16d", random_16d(), (0.1, 2.0), [0.1, 0.5, 2.0], args),
    }
    print(f"steps={args.steps} batch={args.batch_size} hidden={args.hidden} "
          f"n_train={args.n_train} n_eval={args.n_eval} devices={jax.device_count()}")
    header = f"{'case':9s} {'dim':>4s} {'sigma':>6s} {'learned':>9s} {'bayes':>9s} {'ratio':>7s} {'+-se':>7s} {'train_s':>8s}"
    print(header)
    worst = 0.0
    for name in args.cases:
        for case, dim, s, mse, bayes, ratio, se, seconds in cases[name]():
            worst = max(worst, ratio)
            print(f"{case:9s} {dim:4d} {s:6.2f} {mse:9.4f} {bayes:9.4f} {ratio:7.4f} {se:7.4f} {seconds:8.1f}", flush=True)
    ok = worst <= args.max_ratio
    print(f"worst ratio {worst:.4f}: {'PASS' if ok else 'FAIL'} (limit {args.max_ratio})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
