"""Command line interface: ``numpyro-wjs <command> [options]``.

Commands
--------
``demo``
    Compare NUTS, MALA, ULA and walk-jump sampling at an equal budget of gradient
    (or denoiser) evaluations on a built-in two-dimensional Gaussian mixture with
    five well separated modes of unequal weight; print the table and write
    ``trace.png``, ``occupancy.png``, ``paths.png`` and ``summary.md`` to ``--out``.
    Runs on a CPU in about a minute (``--quick``: NUTS and walk-jump only, at a tenth
    of the budget). With
    ``--mnist`` it walks and jumps on MNIST with the pretrained denoiser instead,
    with a progress bar. ``--out`` must be empty or hold the same demo's files, which
    are replaced; other files are refused unless ``--overwrite`` (which deletes the
    other demo's files and keeps the rest).

``train``
    Train a denoiser (U-Net for images, MLP for vectors) on MNIST, scikit-learn's
    8x8 digits (the default) or samples of a Gaussian mixture, with resumable orbax
    checkpoints in ``--out`` (a folder holding a saved model, another run, or files
    but no run is refused unless ``--overwrite``); ``--pretrained-mnist`` /
    ``--pretrained-classifier`` re-create the shipped networks with their recorded
    recipes. With ``--distributed`` the same command on every process trains on a
    mesh over all their devices (``jax.distributed``), each process reading its rows
    of every batch; process 0 reports.

``sample``
    Stream draws of walk-jump sampling with a saved denoiser (``--denoiser DIR``), or of
    a NumPyro model (``--model demo``, ``FILE.py:NAME`` or ``package.module:NAME``) with
    ``--kernel`` (MALA by default), to a Zarr store ``--out`` a chunk at a
    time (``numpyro_wjs.streaming``): memory holds one chunk, and the same command
    after a kill continues from the last complete chunk.

Every command is one function ``_<name>(args) -> int`` and one parser entry in
``_COMMANDS``. Every error prints one line, ``numpyro-wjs <command>: error: ...``:
usage errors (bad or conflicting options, an unusable output folder, missing
pretrained weights) return exit code 2, as argparse does for bad options; failures
(unreadable data or checkpoints, a run with other settings) return 1; Ctrl-C
returns 130 after any checkpoint being written is complete.

Example
-------
.. code-block:: console

    $ numpyro-wjs demo --quick --out /tmp/wjs-demo
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from numpyro_wjs.targets import GaussianMixture

__all__ = ["build_parser", "demo_target", "main"]

from numpyro_wjs.nn.pretrained import MNIST_DENOISER_DIR, MNIST_WALK_JUMP, PRETRAINED_DIR  # noqa: F401 - part of the CLI's API

#: Weights ``pi_k`` of the demo target ``p(x) = sum_k pi_k N(x; mu_k, 0.5^2 I)`` on ``R^2``.
DEMO_WEIGHTS = (0.35, 0.25, 0.2, 0.12, 0.08)
#: Means ``mu_k`` of the demo target: neighbours are 5.8 to 6.7 apart, about 12 standard deviations.
DEMO_MEANS = ((-6.0, -2.0), (-3.0, 3.0), (0.0, -3.0), (3.0, 3.0), (6.0, -2.0))
#: Common standard deviation ``tau`` of the demo target's components.
DEMO_SCALE = 0.5

#: Budgets, chains and warmup of the full and the ``--quick`` Gaussian-mixture demo.
_GM_DEFAULTS = {"budget": 20_000, "chains": 4, "warmup": 500}
_GM_QUICK = {"budget": 2_000, "chains": 2, "warmup": 200}
#: Samplers of the ``--quick`` demo: the two of the lecture's picture (NUTS compiles slowly).
_QUICK_SAMPLERS = ("NUTS", "WalkJump")
#: Walk steps and warmup of the full and the ``--quick`` MNIST demo.
_MNIST_DEFAULTS = {"budget": 200, "chains": 4, "warmup": 100}
_MNIST_QUICK = {"budget": 30, "chains": 2, "warmup": 20}
#: Optimizer steps of ``train`` (``--pretrained-mnist``: the recipe's).
_TRAIN_STEPS = 2000
#: Files each demo writes into ``--out``; any other file there belongs to another run.
_DEMO_FILES = {
    "mixture": ("summary.md", "trace.png", "occupancy.png", "paths.png"),
    "mnist": ("summary.md", "walk_jump_strip.png", "samples.png"),
}


class UsageError(Exception):
    """A problem the user can fix from the command line (exit code 2)."""


# --------------------------------------------------------------------------- helpers
def _int_at_least(minimum: int, what: str):
    """An argparse ``type`` accepting integers ``>= minimum`` (``what`` names them)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "an integer >= 0")


def _positive_float(text: str) -> float:
    """An argparse ``type`` accepting finite numbers ``> 0``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _output_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check that files can be written into it."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"output folder {str(out)!r} exists and is not a folder; choose another --out.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UsageError(
            f"cannot write to output folder {str(out)!r} ({reason}); choose another --out."
        ) from None
    return out


def _names(paths: Sequence[Path], limit: int = 6) -> str:
    """``a, b, c`` for the first ``limit`` names, then ``and N more``."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in paths)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _entries(out: Path) -> list[Path]:
    """The entries of the folder ``out`` (none if it does not exist), hidden ones aside."""
    return [p for p in out.iterdir() if not p.name.startswith(".")] if out.is_dir() else []


def _markdown_table(table: Any, formats: dict[str, str] | None = None) -> str:
    """A pandas DataFrame as a GitHub-flavoured markdown table (index first).

    ``formats`` maps column names to format strings; other floats get ``{:.3g}``.
    """
    formats = formats or {}
    header = [table.index.name or ""] + [str(c) for c in table.columns]

    def cell(column: str, v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            if not math.isfinite(v):
                return str(v)
            if column in formats:
                return formats[column].format(v)
            return str(int(v)) if float(v).is_integer() else f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|"]
    for index, row in zip(table.index, table.itertuples(index=False)):
        cells = [str(index)] + [cell(c, v) for c, v in zip(table.columns, row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


#: Number formats of the comparison table's columns in ``summary.md``.
_TABLE_FORMATS = {
    "evaluations": "{:.0f}",
    "switches_per_1000_evals": "{:.1f}",
    "tv_distance": "{:.3f}",
    "ess_bulk": "{:.0f}",
    "r_hat": "{:.3f}",
    "wall_time_s": "{:.1f}",
}


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    try:
        fig.savefig(path, dpi=110)
    except OSError as err:
        raise UsageError(f"cannot write {str(path)!r} ({err.strerror or err}).") from None
    finally:
        plt.close(fig)


def _write_text(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise UsageError(f"cannot write {str(path)!r} ({err.strerror or err}).") from None


# --------------------------------------------------------------------------- demo
def demo_target() -> GaussianMixture:
    """The demo's target: five well separated modes of unequal weight in 2-D.

    Returns
    -------
    GaussianMixture
        ``sum_k pi_k N(mu_k, 0.5^2 I)`` with ``DEMO_WEIGHTS`` and ``DEMO_MEANS``.
    """
    from numpyro_wjs.targets import GaussianMixture

    return GaussianMixture(np.array(DEMO_WEIGHTS), np.array(DEMO_MEANS), DEMO_SCALE)


def _settings(args: argparse.Namespace, defaults: dict[str, int], quick: dict[str, int]) -> dict[str, int]:
    base = quick if args.quick else defaults
    return {
        "budget": base["budget"] if args.budget is None else args.budget,
        "chains": base["chains"] if args.chains is None else args.chains,
        "warmup": base["warmup"] if args.warmup is None else args.warmup,
    }


def _demo(args: argparse.Namespace) -> int:
    """``numpyro-wjs demo``: see the module docstring."""
    if args.mnist and not MNIST_DENOISER_DIR.exists():
        raise UsageError(
            f"--mnist needs the pretrained MNIST denoiser, which is not installed at "
            f"{MNIST_DENOISER_DIR}. Run the demo without --mnist (Gaussian mixture), or train "
            "and save a denoiser there first."
        )
    out = _output_dir(args.out)
    _check_demo_out(out, "mnist" if args.mnist else "mixture", args.overwrite)
    return _demo_mnist(args, out) if args.mnist else _demo_mixture(args, out)


def _check_demo_out(out: Path, kind: str, overwrite: bool) -> None:
    """Let the demo ``kind`` write only into a folder empty or holding its own files.

    Other files are refused (exit 2), naming them; with ``overwrite`` the other
    demo's files are deleted and any further files are left as they are.
    """
    other = [p for p in _entries(out) if p.name not in _DEMO_FILES[kind]]
    if not other:
        return
    if not overwrite:
        raise UsageError(
            f"--out {str(out)!r} holds files of another run ({_names(other)}); choose a new or "
            "empty --out folder, or pass --overwrite to write there anyway (deleting the other "
            "demo's files)."
        )
    stale = [p for p in other if p.is_file() and any(p.name in files for files in _DEMO_FILES.values())]
    for path in stale:
        path.unlink()
    if stale:
        print(f"Deleted {_names(stale)} of the other demo in {out} (--overwrite).", flush=True)


def _demo_mixture(args: argparse.Namespace, out: Path) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from numpyro_wjs.diagnostics import plots
    from numpyro_wjs.diagnostics.comparison import default_samplers, run_samplers, summarize, walk_jump_sigma

    s = _settings(args, _GM_DEFAULTS, _GM_QUICK)
    target = demo_target()
    samplers = default_samplers(target)
    if args.quick:
        samplers = {name: samplers[name] for name in _QUICK_SAMPLERS}
    sigma = walk_jump_sigma(target)
    print(
        f"Gaussian mixture: {target.K} modes in 2-D, weights {list(DEMO_WEIGHTS)}, scale {DEMO_SCALE}.\n"
        f"Budget {s['budget']} gradient/denoiser evaluations per chain, {s['chains']} chains, "
        f"{s['warmup']} warmup iterations, seed {args.seed}; every chain starts in the heaviest mode.",
        flush=True,
    )
    runs: dict[str, Any] = {}
    start = time.perf_counter()
    for i, (name, kernel) in enumerate(samplers.items(), 1):
        print(f"[{i}/{len(samplers)}] running {name} ...", end=" ", flush=True)
        try:
            run = run_samplers(
                target,
                {name: kernel},
                budget=s["budget"],
                num_chains=s["chains"],
                num_warmup=s["warmup"],
                seed=args.seed,
            )
        except ValueError as err:  # settings the sampler cannot run with, e.g. a budget below one draw
            print(flush=True)
            raise UsageError(str(err) if str(err).startswith(name) else f"{name}: {err}") from None
        runs.update(run)
        print(f"{runs[name].num_draws} draws per chain in {runs[name].wall_time:.1f} s", flush=True)
    table = summarize(runs, target, target.weights)
    with pd.option_context("display.width", 250, "display.max_columns", 50, "display.precision", 3):
        print("\n" + table.to_string() + "\n", flush=True)

    print(f"Writing figures to {out} ...", flush=True)
    limit = min(s["budget"], 2_000)
    _save(plots.plot_trace(runs, target, against="evaluations", limit=limit), out / "trace.png")
    labels = {name: _labels(target, run) for name, run in runs.items()}
    _save(plots.plot_mode_occupancy(labels, target.K, np.asarray(target.weights)), out / "occupancy.png")
    _save(plots.plot_density_paths(target, runs, max_draws=200), out / "paths.png")
    _write_text(out / "summary.md", _mixture_summary(table, s, args.seed, sigma))
    elapsed = time.perf_counter() - start
    print(f"Done in {elapsed:.0f} s: summary.md, trace.png, occupancy.png, paths.png in {out}", flush=True)
    return 0


def _labels(target: Any, run: Any) -> np.ndarray:
    """Mode labels ``(chain, draw)`` of a run's draws ``x``."""
    x = np.asarray(run.data["posterior"]["x"].transpose("chain", "draw", ...).values)
    return np.asarray(target.mode_of(x))


def _mixture_summary(table: Any, s: dict[str, int], seed: int, sigma: float) -> str:
    """``summary.md`` of the Gaussian-mixture demo: target, settings, table, reading."""
    modes = "\n".join(
        f"| {k} | ({m[0]:g}, {m[1]:g}) | {w:g} |" for k, (m, w) in enumerate(zip(DEMO_MEANS, DEMO_WEIGHTS))
    )
    K = len(DEMO_WEIGHTS)
    findings = []
    for name, row in table.iterrows():
        visited = int(row["modes_visited"])
        coverage = "every chain visited all" if visited == K else f"some chain visited only {visited} of"
        findings.append(
            f"- **{name}**: {int(row['switches'])} mode switches in total "
            f"({row['switches_per_1000_evals']:.1f} per 1000 evaluations per chain); "
            f"{coverage} {K} modes; total variation distance of the occupancy to the true weights "
            f"{row['tv_distance']:.3f}."
        )
    local = ", ".join(n for n in table.index if n != "WalkJump")
    return f"""# numpyro-wjs demo: mode hopping at an equal evaluation budget

Target: a mixture of {len(DEMO_WEIGHTS)} Gaussians in 2-D,
`p(x) = sum_k pi_k N(x; mu_k, {DEMO_SCALE}^2 I)`; neighbouring means are about 12
component standard deviations apart, so the density between modes is essentially zero.

| mode k | mean mu_k | weight pi_k |
|---:|---|---:|
{modes}

Settings: budget {s['budget']} evaluations of `grad log p` (walk-jump: of the denoiser)
per chain after warmup, {s['chains']} chains, {s['warmup']} warmup iterations, seed {seed}.
Every chain starts in the heaviest mode (0). Walk-jump walks on `p_Y = p_X * N(0, sigma^2 I)`
with sigma = {sigma:.3g} and the exact Bayes denoiser `E[X | y]`.

## Results

{_markdown_table(table, _TABLE_FORMATS)}

{chr(10).join(findings)}

## What it shows

Gradient-based samplers ({local}) follow the score `grad log p`, which near a well
separated mode points back to that mode: their chains stay in the mode they start in,
so their occupancy misses the other modes' weight (large TV distance), R-hat cannot
flag it when all chains share the mode, and ESS is that of one mode only. Walk-jump
sampling walks on the smoothed density, where the modes are connected, and jumps back
with `E[X | y]`: its chains switch modes often and their occupancy approaches the true
weights.

Columns: `evaluations` and `draws` per chain; `switches` (total over chains) and
`switches_per_1000_evals`; `tv_distance` between pooled occupancy and the weights;
`steps_to_visit_all` / `evals_to_visit_all` (-1: some chain never saw every mode);
`modes_visited` (fewest over chains); `round_trips` between modes 0 and
{len(DEMO_WEIGHTS) - 1}; `ess_bulk` (smallest over coordinates) and `r_hat` (largest);
`stray_chains` (chains whose mean strays from the others': stuck in another mode);
`wall_time_s` including compilation.

Figures: `trace.png` (first coordinate against evaluations, mode regions shaded),
`occupancy.png` (mode of every draw per chain, running occupancy against the weights),
`paths.png` (first draws of every chain over the density).
"""


def _demo_mnist(args: argparse.Namespace, out: Path) -> int:
    """Walk-jump sampling of MNIST digits with the pretrained denoiser and classifier."""
    import jax
    import jax.numpy as jnp
    import matplotlib

    matplotlib.use("Agg")
    from numpyro.infer import MCMC
    from tqdm import tqdm

    from numpyro_wjs.diagnostics import plots
    from numpyro_wjs.nn.classifier import load_pretrained_classifier
    from numpyro_wjs.diagnostics.modes import mode_hopping
    from numpyro_wjs.nn.train import load_denoiser
    from numpyro_wjs.infer.walkjump import WalkJump

    s = _settings(args, _MNIST_DEFAULTS, _MNIST_QUICK)
    print(f"Loading the pretrained denoiser from {MNIST_DENOISER_DIR} and the classifier ...", flush=True)
    net = load_denoiser(MNIST_DENOISER_DIR)
    classifier, _ = load_pretrained_classifier()

    def tick(i: Any, _: Any) -> None:  # ``bar``: the progress bar of ``mcmc.run`` below
        done = int(np.max(i))
        if done > bar.n:
            bar.set_description("warmup" if done <= s["warmup"] else "sampling", refresh=False)
            bar.update(done - bar.n)

    class WalkJumpWithProgress(WalkJump):
        """``WalkJump`` that moves the progress bar after each draw of all chains."""

        def sample(self, state, model_args, model_kwargs):
            new = super().sample(state, model_args, model_kwargs)
            jax.debug.callback(tick, new.i, jnp.ravel(new.x)[0])  # reads x: runs once the draw is done
            return new

    if net.noise_conditional:
        settings = dict(MNIST_WALK_JUMP)
        sigma = settings.pop("sigma")
        kernel = WalkJumpWithProgress(net, sigma, **settings)
        how = (f"sigma={sigma:g}, {settings['num_measurements']} sequential measurements, "
               f"{settings['jump_every']} walk steps per jump")
    else:
        sigma = float(net.sigma)
        kernel = WalkJumpWithProgress(net, sigma)
        how = f"sigma={sigma:g}"
    mcmc = MCMC(
        kernel,
        num_warmup=s["warmup"],
        num_samples=s["budget"],
        num_chains=s["chains"],
        chain_method="vectorized",
        progress_bar=False,
    )
    x0 = jnp.full((s["chains"], 28, 28, 1), 0.0) if s["chains"] > 1 else jnp.full((28, 28, 1), 0.0)
    print(
        f"Walk-jump on MNIST ({how}): {s['warmup']} warmup jumps, then {s['budget']} jumps, "
        f"{s['chains']} chain(s).\nCompiling the sampler (15-20 s on two CPU cores; the bar starts "
        "moving when it is done), then sampling ...",
        flush=True,
    )
    start = time.perf_counter()
    with tqdm(total=s["warmup"] + s["budget"], desc="compiling", unit="jump", file=sys.stderr) as bar:
        mcmc.run(jax.random.key(args.seed), init_params=x0, extra_fields=("y",))
    print("Labelling the jumps with the classifier ...", flush=True)
    jumps = np.asarray(mcmc.get_samples(group_by_chain=True)["x"])
    walk = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["y"])
    labels = np.stack([np.asarray(classifier.predict(jnp.asarray(c))) for c in jumps])
    stats = mode_hopping(labels, num_modes=10, weights=np.full(10, 0.1))
    print(
        f"{time.perf_counter() - start:.0f} s; digit switches per chain: {stats.switches.values.tolist()}, "
        f"digits visited: {stats.modes_visited.values.tolist()}, TV to uniform: "
        f"{float(stats.tv_distance_all):.2f}",
        flush=True,
    )
    _save(plots.plot_walk_jump_strip(walk[0], jumps[0], 12, labels=labels[0]), out / "walk_jump_strip.png")
    idx = np.linspace(0, jumps.shape[1] - 1, min(40, jumps.shape[1])).astype(int)
    _save(plots.plot_sample_grid(jumps[0, idx], labels[0, idx], ncols=10, title="jumps of chain 0"),
          out / "samples.png")
    occupancy = " | ".join(f"{v:.2f}" for v in stats.occupancy_all.values)
    _write_text(
        out / "summary.md",
        f"# numpyro-wjs demo: walk-jump sampling on MNIST\n\n"
        f"Denoiser: `{MNIST_DENOISER_DIR}` ({how}); {s['budget']} jumps after "
        f"{s['warmup']} warmup jumps, {s['chains']} chain(s), seed {args.seed}.\n\n"
        f"Digit switches per chain: {stats.switches.values.tolist()}; digits visited: "
        f"{stats.modes_visited.values.tolist()}; total variation distance of the digit occupancy "
        f"to uniform: {float(stats.tv_distance_all):.3f}.\n\n"
        "| digit | " + " | ".join(map(str, range(10))) + " |\n|---|" + "---:|" * 10 + "\n"
        f"| occupancy | {occupancy} |\n\n"
        "Figures: `walk_jump_strip.png` (walk above, jumps below, classifier labels), "
        "`samples.png` (jumps labelled by the classifier).\n",
    )
    print(f"Wrote summary.md, walk_jump_strip.png, samples.png to {out}", flush=True)
    return 0


def _add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    g, q, m, mq = _GM_DEFAULTS, _GM_QUICK, _MNIST_DEFAULTS, _MNIST_QUICK
    parser.add_argument("--out", default="wjs-output",
                        help="output folder: empty, or holding an earlier run of the same demo (default: ./wjs-output)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an --out holding other files, deleting the other demo's files")
    parser.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--budget",
        type=_positive_int,
        default=None,
        help=f"evaluations per chain (default: {g['budget']}; --quick: {q['budget']}; "
        f"--mnist: {m['budget']} jumps, --quick --mnist: {mq['budget']})",
    )
    parser.add_argument(
        "--chains",
        type=_positive_int,
        default=None,
        help=f"chains per sampler (default: {g['chains']}; --quick: {q['chains']}; "
        f"--mnist: {m['chains']}, --quick --mnist: {mq['chains']})",
    )
    parser.add_argument(
        "--warmup",
        type=_non_negative_int,
        default=None,
        help=f"warmup iterations (default: {g['warmup']}; --quick: {q['warmup']}; "
        f"--mnist: {m['warmup']}, --quick --mnist: {mq['warmup']})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a small, fast version: NUTS and walk-jump only, smaller budget"
    )
    parser.add_argument(
        "--mnist", action="store_true", help="walk-jump on MNIST with the pretrained denoiser instead"
    )


# --------------------------------------------------------------------------- train
def _train(args: argparse.Namespace) -> int:
    """Train a denoiser, or re-create a shipped network."""
    if args.data_path == "":
        raise UsageError("--data-path is empty; give the folder of the MNIST IDX files, or add --download.")
    if args.download and not (args.data == "mnist" or args.pretrained_mnist or args.pretrained_classifier):
        raise UsageError(f"--download fetches MNIST; --data {args.data} needs no download.")
    distributed = args.distributed or any(
        getattr(args, name) is not None for name in ("coordinator", "num_processes", "process_id"))
    if distributed and (args.pretrained_mnist or args.pretrained_classifier):
        raise UsageError("--pretrained-mnist and --pretrained-classifier train in one process; drop --distributed "
                         "(and --coordinator, --num-processes, --process-id).")
    if args.pretrained_mnist or args.pretrained_classifier:
        from numpyro_wjs.nn.classifier import PRETRAINED_CLASSIFIER_DIR, train_pretrained_classifier
        from numpyro_wjs.data import download_mnist

        if args.download:
            download_mnist(args.data_path)
        from numpyro_wjs.nn.pretrained import train_pretrained_denoiser

        default = PRETRAINED_CLASSIFIER_DIR if args.pretrained_classifier else MNIST_DENOISER_DIR
        out = Path(args.out) if args.out else default
        if out.exists():
            raise UsageError(f"{out} already exists; move it away or pass --out to a new folder.")
        if args.pretrained_classifier:
            _, meta = train_pretrained_classifier(out, data_path=args.data_path)
            print(f"held-out accuracy {meta['heldout_accuracy']:.4f}; saved to {out}")
        else:
            recipe = {} if args.steps is None else {"steps": args.steps}
            _, meta = train_pretrained_denoiser(
                out, data_path=args.data_path, checkpoint_dir=args.checkpoint_dir, **recipe
            )
            print(f"held-out MSE per image: {meta['heldout_mse_per_image']}; saved to {out}")
        return 0
    import jax

    if distributed:  # before anything touches a device
        try:
            jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        except ValueError as err:  # nothing detected, or an incomplete set of options
            raise UsageError(f"--distributed: {err} Outside SLURM (or another cluster JAX detects) pass "
                             "--coordinator HOST:PORT --num-processes N --process-id I.") from None
    from flax import nnx

    from numpyro_wjs.nn.fit import TrainConfig, process_batches
    from numpyro_wjs.nn.registry import build_network
    from numpyro_wjs.nn.train import check_outside_package, train_denoiser

    sigma = _train_sigma(args)
    network = _TRAIN_NETWORKS["vectors" if args.data == "mixture" else "images"]
    for other in _TRAIN_NETWORKS.values():
        if other is not network and getattr(args, other.option):
            raise UsageError(
                f"--{other.option} does not apply to --data {args.data} (images train a U-Net sized by "
                "--channels, --data mixture an MLP sized by --hidden); drop it."
            )
    try:
        check_outside_package(Path(args.out or "wjs-denoiser"), "--out")
    except ValueError as err:
        raise UsageError(str(err)) from None
    _check_train_out(Path(args.out or "wjs-denoiser").expanduser(), args.overwrite)
    data, eval_data = _training_data(args)
    config = {
        network.size: data.shape[-1],
        network.option: list(getattr(args, network.option) or network.default),
        "noise_conditional": isinstance(sigma, tuple),
    }
    net = build_network(network.architecture, config, nnx.Rngs(args.seed))
    out = _output_dir(args.out or "wjs-denoiser")
    steps, mesh, lead = args.steps or _TRAIN_STEPS, None, jax.process_index() == 0
    if jax.process_count() > 1:  # one mesh over every process's devices; each reads its rows of a batch
        from jax.sharding import Mesh

        if args.batch_size % jax.device_count():
            raise UsageError(f"--batch-size {args.batch_size} must be divisible by the {jax.device_count()} "
                             f"devices of the {jax.process_count()} processes.")
        mesh = Mesh(np.array(jax.devices()), ("data",))
        data = process_batches(data, TrainConfig(steps, args.batch_size, seed=args.seed))
    result = train_denoiser(
        net, data, sigma, steps=steps, batch_size=args.batch_size, learning_rate=args.lr,
        eval_data=eval_data, seed=args.seed, checkpoint_dir=out, checkpoint_every=args.checkpoint_every,
        overwrite=args.overwrite, mesh=mesh, progress_bar=lead,
    )
    if not lead:  # one process reports
        return 0
    if np.size(result.eval_mse):
        last = np.atleast_1d(np.asarray(result.eval_mse)[-1])
        sigmas = np.atleast_1d(np.asarray(result.eval_sigmas))
        print("held-out MSE per example: " + ", ".join(f"{v:.4f} at s={s:g}" for s, v in zip(sigmas, last)))
    print(f"checkpoint in {out}; load it with numpyro_wjs.nn.train.load_denoiser({str(out)!r})")
    return 0


class _TrainNetwork(NamedTuple):
    """A registered architecture ``train`` builds: ``size`` is set from the data's last
    axis, ``option`` (a config entry and a CLI flag) sets the widths."""

    architecture: str
    size: str
    option: str
    default: tuple[int, ...]


#: The network ``train`` builds (through ``numpyro_wjs.nn.registry``) for each kind of data.
_TRAIN_NETWORKS = {
    "images": _TrainNetwork("UNet", "in_channels", "channels", (16, 32)),
    "vectors": _TrainNetwork("MLP", "dim", "hidden", (256, 256)),
}


def _check_train_out(out: Path, overwrite: bool) -> None:
    """Let ``train`` write only into a new or empty folder or one holding a training run.

    A saved model, or files but no training run, are refused (exit 2) unless
    ``overwrite``: ``train_denoiser`` then deletes the saved model, and other files
    are left as they are (with a warning).
    """
    import orbax.checkpoint as ocp

    from numpyro_wjs.nn.checkpoints import SAVED_MODEL_ENTRIES, is_checkpoint, step_paths

    if not out.is_dir():
        return
    saved_model = is_checkpoint(out)
    if saved_model and not overwrite:
        raise UsageError(
            f"--out {str(out)!r} holds a saved model (metadata.json, weights/) that training would hide "
            "from load_denoiser; pass --overwrite to replace it, or choose another --out folder."
        )
    if step_paths(out):  # a training run: resumed, continued or (settings differ) refused by train_denoiser
        return
    ours = SAVED_MODEL_ENTRIES if saved_model else ()
    other = [p for p in _entries(out) if p.name not in ours and not ocp.utils.is_tmp_checkpoint(p)]
    if not other:
        return
    if not overwrite:
        raise UsageError(
            f"--out {str(out)!r} holds files that are not a training run ({_names(other)}); choose a "
            "new or empty --out folder, or pass --overwrite to train there anyway (they are kept)."
        )
    warnings.warn(f"training beside files that are not checkpoints in {out}: {_names(other)}")


def _train_sigma(args: argparse.Namespace) -> float | tuple[float, float]:
    """The training noise of ``train``: ``--sigma`` or ``--sigma-range``, never both."""
    if args.sigma_range is None:
        return 0.5 if args.sigma is None else args.sigma
    if args.sigma is not None:
        raise UsageError("--sigma (a fixed-sigma denoiser) and --sigma-range (a noise-conditional one) "
                         "exclude each other; pass one.")
    lo, hi = args.sigma_range
    if not lo < hi:
        raise UsageError(f"--sigma-range needs 0 < LO < HI, got {lo:g} {hi:g}.")
    return lo, hi


def _training_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) arrays for ``train --data``."""
    from numpyro_wjs import data

    if args.data == "mnist":
        train = data.load_mnist(args.data_path, split="train", download=args.download)[0]
        return train, data.load_mnist(args.data_path, split="heldout")[0]
    if args.data == "digits":
        images = data.load_digits8x8()[0]
        return images[:1500], images[1500:]
    import jax

    from numpyro_wjs.targets import GaussianMixture

    target = GaussianMixture.ring(8, 4.0, 0.5)
    return (data.mixture_samples(target, jax.random.key(args.seed), 50_000),
            data.mixture_samples(target, jax.random.key(args.seed + 1), 5_000))


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", choices=("mnist", "digits", "mixture"), default="digits",
                        help="training data: MNIST digits 0-7999, scikit-learn's 8x8 digits (no download), "
                             "or an 8-mode 2-D ring (default: digits)")
    parser.add_argument("--data-path", default=None,
                        help="folder of the MNIST IDX files (default: $NUMPYRO_WJS_MNIST, then "
                             "../shared/data/mnist, then ~/.cache/numpyro_wjs/mnist)")
    parser.add_argument("--download", action="store_true",
                        help="download the MNIST files (SHA-256 verified) into --data-path or the cache")
    parser.add_argument("--sigma", type=_positive_float, default=None,
                        help="noise level of a fixed-sigma denoiser (default: 0.5)")
    parser.add_argument("--sigma-range", type=_positive_float, nargs=2, metavar=("LO", "HI"), default=None,
                        help="train a noise-conditional denoiser on s log-uniform in [LO, HI] instead "
                             "(default: off; not with --sigma)")
    parser.add_argument("--steps", type=_positive_int, default=None,
                        help=f"total optimizer steps (default: {_TRAIN_STEPS}; --pretrained-mnist: the "
                             "recipe's 20000); more than a finished run in --out (or --checkpoint-dir) "
                             "continues it")
    parser.add_argument("--batch-size", type=_positive_int, default=64,
                        help="examples per optimizer step (default: 64)")
    parser.add_argument("--lr", type=_positive_float, default=1e-3,
                        help="peak learning rate of AdamW, warmed up then cosine-decayed (default: 0.001)")
    parser.add_argument("--channels", type=_positive_int, nargs="+", default=None,
                        help="U-Net widths for image data (default: 16 32)")
    parser.add_argument("--hidden", type=_positive_int, nargs="+", default=None,
                        help="MLP widths for --data mixture (default: 256 256)")
    parser.add_argument("--seed", type=_non_negative_int, default=0,
                        help="random seed of the initial weights, batches and noise (default: 0)")
    parser.add_argument("--checkpoint-every", type=_positive_int, default=500,
                        help="steps between checkpoints; the last step is always saved (default: 500)")
    parser.add_argument("--out", default=None,
                        help="checkpoint folder: new, empty, or a run to resume (default: ./wjs-denoiser; "
                             "--pretrained-*: the shipped network's folder)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the saved model or other run in --out and train from scratch; "
                             "train beside other files there")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="with --pretrained-mnist: resumable training folder (default: none)")
    parser.add_argument("--pretrained-mnist", action="store_true", help="re-create the shipped MNIST denoiser")
    parser.add_argument("--pretrained-classifier", action="store_true", help="re-create the shipped MNIST classifier")
    parser.add_argument("--distributed", action="store_true",
                        help="train data-parallel over the devices of several processes: call "
                             "jax.distributed.initialize() first (detected on SLURM and other clusters; "
                             "start the same command on every process, --out on a shared folder)")
    parser.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                        help="address of process 0; implies --distributed (default: detected, e.g. on SLURM)")
    parser.add_argument("--num-processes", type=_positive_int, default=None,
                        help="number of processes; implies --distributed (default: detected)")
    parser.add_argument("--process-id", type=_non_negative_int, default=None,
                        help="this process's rank, 0 to N-1; implies --distributed (default: detected)")


# --------------------------------------------------------------------------- sample
def _sample(args: argparse.Namespace) -> int:
    """Stream draws to a Zarr store; see the module docstring."""
    import jax
    import jax.numpy as jnp
    from numpyro.infer import MCMC

    from numpyro_wjs.streaming import stream_samples

    if (args.denoiser is None) == (args.model is None):
        raise UsageError("give one of --denoiser DIR (walk-jump with a saved denoiser) or --model (demo, "
                         "FILE.py:NAME or package.module:NAME).")
    kernel, shape, settings = _sample_kernel(args)
    mcmc = MCMC(kernel, num_warmup=args.warmup, num_samples=args.thin, num_chains=args.chains,
                thinning=args.thin, chain_method="vectorized", progress_bar=False)
    init = None if shape is None else jnp.zeros((args.chains, *shape) if args.chains > 1 else shape)
    store = stream_samples(mcmc, args.out, jax.random.key(args.seed), args.draws, chunk_draws=args.chunk,
                           settings={**settings, "seed": args.seed}, init_params=init)
    sizes = ", ".join(f"{k} {shape}" for k, shape in store.shapes().items())
    print(f"{store.draws} draws per chain in {store.path} ({sizes}, {jax.device_count()} device(s)); read them with "
          f"numpyro_wjs.streaming.open_draws({str(store.path)!r}) or xarray.open_zarr.")
    return 0


#: ``sample --kernel``: kernels that take a NumPyro model as their first argument.
SAMPLE_KERNELS = ("MALA", "MALT", "NUTS", "ULA", "UnderdampedLangevin", "GibbsWalkJump")


def load_model(spec: str) -> Any:
    """The model named by ``FILE.py:NAME`` or ``package.module:NAME`` (``UsageError`` if
    it cannot be loaded or is not callable)."""
    import importlib
    import importlib.util

    source, _, name = spec.rpartition(":")
    if not source or not name:
        raise UsageError(f"--model {spec!r}: give demo, FILE.py:NAME or package.module:NAME.")
    if source.endswith(".py") and not Path(source).is_file():
        raise UsageError(f"--model {spec!r}: no file {source!r}.")
    try:
        if source.endswith(".py"):
            module_spec = importlib.util.spec_from_file_location(Path(source).stem, source)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(source)
    except Exception as err:  # noqa: BLE001 - the user's module failed to import
        raise UsageError(f"--model {spec!r}: importing {source!r} failed: {type(err).__name__}: {err}") from None
    model = getattr(module, name, None)
    if not callable(model):
        raise UsageError(f"--model {spec!r}: {source!r} has no callable {name!r}.")
    return model


def _sample_kernel(args: argparse.Namespace) -> tuple[Any, tuple[int, ...] | None, dict[str, Any]]:
    """``(kernel, event shape of the initial zeros (None: the model's own start), settings)``."""
    if args.model is not None:
        import numpyro.infer

        import numpyro_wjs

        model = demo_target().model() if args.model == "demo" else load_model(args.model)
        kernel = getattr(numpyro_wjs, args.kernel, None) or getattr(numpyro.infer, args.kernel)
        return kernel(model), None, {"model": args.model, "kernel": args.kernel}
    from numpyro_wjs.infer.walkjump import WalkJump
    from numpyro_wjs.nn.train import load_denoiser

    net = load_denoiser(args.denoiser)
    shape = tuple(args.shape) if args.shape else ((net.dim,) if hasattr(net, "dim") else (28, 28, net.in_channels))
    try:
        net.check_event_shape(shape)
    except ValueError as err:
        raise UsageError(f"--shape {' '.join(map(str, shape))} does not fit the denoiser: {err}") from None
    recipe = dict(MNIST_WALK_JUMP) if net.noise_conditional and args.sigma is None else {}
    sigma = recipe.pop("sigma", args.sigma if args.sigma is not None else float(net.sigma))
    settings = {"denoiser": str(Path(args.denoiser).resolve()), "shape": list(shape), "sigma": sigma, **recipe}
    return WalkJump(net, sigma, **recipe), shape, settings


def _add_sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--denoiser", default=None, help="folder of a saved denoiser: walk-jump sampling (default: none; give it or --model)")
    parser.add_argument("--model", default=None,
                        help="sample a NumPyro model instead: demo (the demo's 2-D Gaussian mixture), FILE.py:NAME "
                             "or package.module:NAME, a model that takes no arguments (default: none)")
    parser.add_argument("--kernel", choices=SAMPLE_KERNELS, default="MALA",
                        help="kernel for --model (default: MALA)")
    parser.add_argument("--out", default="wjs-draws.zarr",
                        help="Zarr store to write: new, empty, or one to resume with the same settings "
                             "(default: ./wjs-draws.zarr)")
    parser.add_argument("--chains", type=_positive_int, default=4, help="chains (default: 4)")
    parser.add_argument("--draws", type=_positive_int, default=1000, help="draws per chain (default: 1000)")
    parser.add_argument("--thin", type=_positive_int, default=1, help="steps per kept draw (default: 1)")
    parser.add_argument("--warmup", type=_non_negative_int, default=100, help="warmup steps (default: 100)")
    parser.add_argument("--chunk", type=_positive_int, default=100,
                        help="draws per chunk written at once (default: 100)")
    parser.add_argument("--sigma", type=_positive_float, default=None,
                        help="walk noise (default: the denoiser's; noise-conditional: the MNIST recipe)")
    parser.add_argument("--shape", type=_positive_int, nargs="+", default=None,
                        help="event shape of an image denoiser (default: 28 28 CHANNELS)")
    parser.add_argument("--seed", type=_non_negative_int, default=0, help="random seed (default: 0)")


# --------------------------------------------------------------------------- dispatch
class _Command(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


_COMMANDS: dict[str, _Command] = {
    "demo": _Command(
        "compare samplers on a multimodal target and write a table and figures",
        _add_demo_arguments,
        _demo,
    ),
    "train": _Command(
        "train a denoiser (or re-create a shipped network) with checkpoints",
        _add_train_arguments,
        _train,
    ),
    "sample": _Command(
        "stream draws of a saved denoiser or a model to a resumable Zarr store",
        _add_sample_arguments,
        _sample,
    ),
}
"""Subcommands: name -> (help, parser setup, function returning the exit code)."""


def build_parser() -> argparse.ArgumentParser:
    """The ``numpyro-wjs`` argument parser with one subparser per command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="numpyro-wjs", description="Langevin MCMC and walk-jump sampling for NumPyro."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in _COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.help, description=command.help))
    return parser


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 success, 1 failure, 2 usage error,
    130 interrupted).

    Bad options make argparse print usage and raise ``SystemExit(2)``. Errors and
    warnings print one line each.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    prefix = f"numpyro-wjs {args.command}"
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_, **__: print(
            f"{prefix}: warning: {_one_line(message)}", file=sys.stderr
        )
        try:
            return _COMMANDS[args.command].run(args)
        except UsageError as err:
            print(f"{prefix}: error: {_one_line(err)}", file=sys.stderr)
            return 2
        except (ValueError, OSError, FloatingPointError) as err:  # DataError, CheckpointError, files
            print(f"{prefix}: error: {_one_line(err)}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"{prefix}: interrupted", file=sys.stderr)
            return 130
