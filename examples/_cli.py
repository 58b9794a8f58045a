"""Command line shared by the example scripts: ``--fast``, ``--out`` and ``--seed``.

Every example runs in a full mode (the numbers and figures in the documentation) and a
fast mode (``--fast``: the same code on a small budget, run by the test suite). Output
goes to ``./figures`` unless ``--out`` says otherwise; the documentation's figures are
rebuilt on purpose with ``--out docs/figures``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")

DEFAULT_OUT = Path("figures")


def parse_args(
    doc: str | None, argv: list[str] | None = None, flags: dict[str, str] | None = None
) -> argparse.Namespace:
    """Parse ``--fast``, ``--out DIR`` (default ``./figures``), ``--seed`` and the
    example's own on/off ``flags`` (``{"--name": "help"}``)."""
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="small budget (seconds), as run by the tests")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="folder for figures and results (default ./figures; docs/figures: rebuild the docs)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed")
    for flag, help_text in (flags or {}).items():
        parser.add_argument(flag, action="store_true", help=help_text)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def save_figure(fig: Any, args: argparse.Namespace, name: str) -> Path:
    """Write ``fig`` as ``<out>/<name>.png`` and close it."""
    import matplotlib.pyplot as plt

    path = args.out / f"{name}.png"
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {os.path.relpath(path)}")
    return path


def format_value(value: Any) -> str:
    """``value`` for printing: floats to 3 decimals (3 significant digits below 0.01 or
    from 1e6), lists as ``[0.300, 0.700]``, dicts as ``{key: value}``; exact in the JSON."""
    if isinstance(value, np.ndarray | np.generic):
        value = value.tolist()
    if isinstance(value, float):
        return f"{value:.3f}" if value == 0 or 0.01 <= abs(value) < 1e6 else f"{value:.3g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


def save_results(results: dict[str, Any], args: argparse.Namespace, name: str) -> Path:
    """Print ``results`` (rounded, a list of rows one per line) and write them, exact,
    as ``<out>/<name>.json``."""
    path = args.out / f"{name}.json"
    path.write_text(json.dumps(results, indent=2, default=float) + "\n")
    for key, value in results.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            print(f"{key}:")
            for row in value:
                print(f"  {format_value(row)}")
        else:
            print(f"{key}: {format_value(value)}")
    print(f"wrote {os.path.relpath(path)}")
    return path


def load_mnist_digits() -> tuple[Any, Any, Any]:
    """Training digits (0-7999), held-out digits (8000-9999) and their labels, or exit
    with the loader's message when the MNIST files are missing or corrupt."""
    from numpyro_wjs.data import DataError, load_mnist

    try:
        train, _ = load_mnist(split="train")
        heldout, labels = load_mnist(split="heldout")
    except (FileNotFoundError, DataError) as err:
        sys.exit(f"{Path(sys.argv[0]).name}: the MNIST digits are needed and could not be loaded:\n{err}")
    return train, heldout, labels
