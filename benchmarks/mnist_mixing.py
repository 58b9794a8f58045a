"""Digit hopping and jump quality of walk-jump on MNIST at sigma = 1, M = 1.

The shipped noise-conditional U-Net (``load_pretrained("mnist")``) drives
``WalkJump`` at ``sigma = 1`` with one measurement (one jump and one denoiser call
per walk step); 64 vectorized chains start from black images and run ``--steps``
walk steps, the first quarter burn-in. The shipped classifier scores the jumps
(``diagnostics.classifier_scores``):

* ``changes / 1000 steps``: digit changes between consecutive *confident* jumps
  (top class probability >= 0.9; unconfident jumps are skipped), per chain and
  per 1,000 walk steps;
* ``confident``: the fraction of jumps classified with probability >= 0.9;
* ``class TV``: total variation between the class shares of the confident jumps
  and uniform;
* ``FD / floor``: Frechet distance of classifier features of one jump every 50 walk
  steps to the held-out digits 8000-9999, over the same distance for as many
  training digits (the floor at this sample size; the ratio of data is 1);
* ``step / sigma``: the walk step after warmup.

Settings: the default walk (fixed step ``sigma``, friction 0.5) and, with
``--former``, the former default (step tuned in warmup to an estimated acceptance of
0.9 of the whole step, friction 1), measured in the same run.

Run from the repository root (about 3 minutes on two cores, twice that with ``--former``)::

    python benchmarks/mnist_mixing.py [--steps 1500] [--chains 64] [--former]
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC

from numpyro_wjs.data import load_mnist
from numpyro_wjs.diagnostics.modes import classifier_scores
from numpyro_wjs.nn.pretrained import load_pretrained
from numpyro_wjs.infer.walkjump import WalkJump

from _context import machine

SIGMA = 1.0
CONFIDENT = 0.9
SETTINGS = {
    "default (step sigma, friction 0.5)": {},
    "tuned to acceptance 0.9, friction 1": {"adapt_step_size": True, "step_size": 0.5 * SIGMA, "friction": 1.0},
}


def run(net, classifier, data, kwargs: dict, args: argparse.Namespace) -> dict:
    kernel = WalkJump(net, SIGMA, **kwargs)
    burn_in = args.steps // 4

    def sample(key):
        mcmc = MCMC(kernel, num_warmup=burn_in, num_samples=args.steps - burn_in, num_chains=args.chains,
                    chain_method="vectorized", progress_bar=False)
        mcmc.run(key, init_params=jnp.zeros((args.chains, 28, 28, 1)),
                 extra_fields=("adapt_state.step_size", "diverging"))
        fields = mcmc.get_extra_fields(group_by_chain=True)
        return mcmc.get_samples(group_by_chain=True), fields["adapt_state.step_size"][:, -1], fields["diverging"]

    start = time.perf_counter()
    jumps, step, diverging = jax.block_until_ready(jax.jit(sample)(jax.random.key(args.seed)))
    wall = time.perf_counter() - start
    scores = classifier_scores(np.asarray(jumps), classifier, *data, threshold=CONFIDENT, seed=args.seed)
    return {
        "changes / 1000 steps": scores["changes_per_1000_steps"],
        "confident": scores["confident"],
        "class TV": scores["class_tv"],
        "FD / floor": scores["frechet_ratio"],
        "FD": scores["frechet"],
        "floor": scores["frechet_floor"],
        "step / sigma": float(np.mean(step)) / SIGMA,
        "diverging": int(np.asarray(diverging).sum()),
        "wall s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1500, help="walk steps per chain, a quarter burn-in")
    parser.add_argument("--chains", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--former", action="store_true", help="also run the former default walk")
    args = parser.parse_args()
    print(machine())
    print(f"sigma={SIGMA}, M=1, {args.chains} chains x {args.steps} walk steps (a quarter burn-in), "
          f"confident: p >= {CONFIDENT}\n")
    net, classifier = load_pretrained("mnist"), load_pretrained("mnist-classifier")
    classify = SimpleNamespace(probs=jax.jit(classifier.probs), features=jax.jit(classifier.features))
    data = (load_mnist(split="heldout")[0], load_mnist(split="train")[0])
    settings = SETTINGS if args.former else dict(list(SETTINGS.items())[:1])
    rows = {name: run(net, classify, data, kw, args) for name, kw in settings.items()}
    cols = list(next(iter(rows.values())))
    print("| walk | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) and r[c] < 10 else
                                         f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
