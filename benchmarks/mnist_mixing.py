"""Digit hopping of walk-jump on MNIST: confident digit changes per 1,000 walk steps.

The shipped noise-conditional U-Net (``load_pretrained("mnist")``) drives
``WalkJump`` at ``sigma = 1`` with one measurement (``M = 1``, one jump per walk
step, one denoiser call per step); 32 vectorized chains start from black images,
run ``--warmup`` draws, then ``--steps`` recorded draws. The shipped classifier
labels every jump. Reported per walk setting:

* ``changes / 1000 steps``: digit changes between consecutive *confident* jumps
  (top class probability >= 0.9; unconfident jumps are skipped), per chain and
  per 1,000 walk steps;
* ``confident``: the fraction of jumps classified with probability >= 0.9;
* ``class TV``: total variation between the class shares of the confident jumps
  and uniform;
* ``step / sigma``: the walk step after warmup.

Settings: the default walk (fixed step ``sigma``, friction 0.5) against the
former default (step tuned in warmup to an estimated acceptance of 0.9 of the
whole step, friction 1), measured in the same run.

Run from the repository root (about 2 minutes on two cores)::

    python benchmarks/mnist_mixing.py [--steps 1000] [--chains 32]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import MCMC

from numpyro_wjs.pretrained import load_pretrained
from numpyro_wjs.walkjump import WalkJump

from _context import machine

SIGMA = 1.0
CONFIDENT = 0.9
SETTINGS = {
    "default (step sigma, friction 0.5)": {},
    "tuned to acceptance 0.9, friction 1": {"adapt_step_size": True, "step_size": 0.5 * SIGMA, "friction": 1.0},
}


def confident_changes(probs: np.ndarray) -> tuple[int, np.ndarray]:
    """Digit changes between consecutive confident jumps, and the confident labels; probs (C, T, 10)."""
    confident, labels = probs.max(-1) >= CONFIDENT, probs.argmax(-1)
    changes = 0
    for c in range(probs.shape[0]):
        seq = labels[c][confident[c]]
        changes += int((seq[1:] != seq[:-1]).sum())
    return changes, labels[confident]


def run(net, classify, kwargs: dict, args: argparse.Namespace) -> dict:
    kernel = WalkJump(lambda y, s: net(y, s), SIGMA, noise_conditional=True, **kwargs)

    def sample(key):
        mcmc = MCMC(kernel, num_warmup=args.warmup, num_samples=args.steps, num_chains=args.chains,
                    chain_method="vectorized", progress_bar=False)
        mcmc.run(key, init_params=jnp.zeros((args.chains, 28, 28, 1)),
                 extra_fields=("adapt_state.step_size", "diverging"))
        fields = mcmc.get_extra_fields(group_by_chain=True)
        return mcmc.get_samples(group_by_chain=True), fields["adapt_state.step_size"][:, -1], fields["diverging"]

    start = time.perf_counter()
    jumps, step, diverging = jax.jit(sample)(jax.random.key(args.seed))
    jumps = np.asarray(jumps)
    wall = time.perf_counter() - start
    probs = np.concatenate([np.asarray(classify(jnp.asarray(b))) for b in
                            np.array_split(jumps.reshape(-1, 28, 28, 1), 16)]).reshape(*jumps.shape[:2], 10)
    changes, labels = confident_changes(probs)
    shares = np.bincount(labels, minlength=10) / max(labels.size, 1)
    return {
        "changes / 1000 steps": 1000 * changes / (args.chains * args.steps),
        "confident": float((probs.max(-1) >= CONFIDENT).mean()),
        "class TV": 0.5 * float(np.abs(shares - 0.1).sum()),
        "step / sigma": float(np.mean(step)) / SIGMA,
        "diverging": int(np.asarray(diverging).sum()),
        "wall s": wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000, help="recorded walk steps per chain")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--chains", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(machine())
    print(f"sigma={SIGMA}, M=1, {args.chains} chains, {args.warmup} warmup + {args.steps} walk steps each, "
          f"confident: p >= {CONFIDENT}\n")
    net, classifier = load_pretrained("mnist"), load_pretrained("mnist-classifier")
    classify = jax.jit(classifier.probs)
    rows = {name: run(net, classify, kw, args) for name, kw in SETTINGS.items()}
    cols = list(next(iter(rows.values())))
    print("| walk | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) and r[c] < 10 else
                                         f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
