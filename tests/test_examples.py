"""Every example script runs in its fast mode, writes its figures and its results.

The claims checked on the fast-mode results are those that hold for any seed at that
budget (the reason is given beside each); the full-mode numbers are in
``docs/examples.md``.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mnist_data import skip_without_mnist

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "examples").glob("[0-9][0-9]_*.py"))
NEEDS_MNIST = {"07_mnist.py", "08_tradeoff.py"}


def run_example(script: Path, out: Path) -> dict:
    env = {**os.environ, "MPLBACKEND": "Agg", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, str(script), "--fast", "--out", str(out)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{script.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    raw = re.findall(r"\d\.\d{6,}", result.stdout)  # e.g. 0.30000001192092896
    assert not raw, f"{script.name} prints unformatted numbers: {raw[:5]}"
    name = script.stem[3:]
    figures = sorted(out.glob(f"{name}*.png"))
    assert figures, f"{script.name} wrote no figure named {name}*.png"
    for fig in figures:
        assert fig.stat().st_size > 5_000, f"{fig.name} looks empty"
    results = json.loads((out / f"{name}.json").read_text())
    assert results, f"{script.name} wrote no results"
    return results


def test_examples_exist():
    assert len(SCRIPTS) == 8, [s.name for s in SCRIPTS]


def test_examples_write_to_figures_not_the_docs(tmp_path, monkeypatch):
    """By default an example writes to ./figures; docs/figures only when asked."""
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    monkeypatch.chdir(tmp_path)
    import _cli

    assert _cli.parse_args("doc", []).out.resolve() == tmp_path / "figures"
    assert (tmp_path / "figures").is_dir()
    docs = ROOT / "docs" / "figures"
    assert _cli.parse_args("doc", ["--out", str(docs)]).out == docs


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_example_runs_fast(script, tmp_path):
    if script.name in NEEDS_MNIST:
        skip_without_mnist()
    results = run_example(script, tmp_path)
    check = CLAIMS.get(script.stem)
    if check is not None:
        check(results)


def check_langevin_step_size(r: dict) -> None:
    # h = 2.5 > 2 s^2: |x| grows by 1.5 per step and overflows within ~220 of 1000
    # steps, so most steps are flagged; a stable step can never overflow.
    assert r["ula_diverging_fraction_too_large"] > 0.5
    assert max(r["ula_diverging_fraction"]) == 0
    assert r["ula_2d_diverging_fraction"][-1] > 0.5
    # At h = 1.5 ULA's variance is 4 s^2 (oracle) and MALA's is s^2, with standard
    # errors near 0.07 and 0.03: a factor 2 is many standard errors from both.
    assert r["ula_variance"][-1] > 2 * r["mala_variance"][-1]
    # ESS per step of ULA on N(0, 1) is h / (2 - h): 35 times larger at h = 0.3 than at 0.01.
    assert r["ula_ess_per_step"][3] > 5 * r["ula_ess_per_step"][0]


def check_preconditioning(r: dict) -> None:
    # Condition number 1e4: without a dense metric the wide direction barely moves
    # (a few effective draws per chain), with one it mixes like the narrow one.
    assert r["dense_ess_per_gradient_wide"] > 10 * r["none_ess_per_gradient_wide"]
    assert r["dense_step_size"] > 10 * r["none_step_size"]
    assert r["dense_rhat_wide"] < 1.05


def check_mixture_trapping(r: dict) -> None:
    # Crossing between modes needs an 11-nat drop in log density: after warmup MALA
    # and NUTS stay put, while independent draws switch thousands of times.
    assert r["mala_switches"] + r["nuts_switches"] <= 2
    assert r["iid_switches"] > 100 * (r["mala_switches"] + r["nuts_switches"] + 1)
    # TV of 30k iid draws against the weights: standard error about 0.006.
    assert r["iid_tv_distance"] < 0.05


def check_smoothing(r: dict) -> None:
    # Deterministic: modes are sign changes of the closed-form smoothed score on a grid,
    # and 1/2 N(-2, 0.5^2) + 1/2 N(2, 0.5^2) merges at sqrt(D^2/4 - tau^2) = 1.936.
    assert r["num_modes_1d"]["0"] == 2 and r["num_modes_1d"]["2.5"] == 1
    assert abs(r["merge_sigma"] - r["merge_sigma_theory"]) <= 0.01
    # Mean noise norm against the exact chi mean: 5 standard errors.
    n = r["num_draws_norm"]
    for mean, exact, std in zip(r["norm_mean"], r["norm_mean_exact"], r["norm_std_exact"]):
        assert abs(mean - exact) < 5 * std / math.sqrt(n)
    assert abs(r["var_y"] - r["var_y_theory"]) < 5 * r["var_y_stderr"]


def check_tweedie(r: dict) -> None:
    for d in ("1d", "2d"):
        # E[X|y] = y + sigma^2 grad log p_Y(y), both in closed form: float32 round-off.
        assert r[f"tweedie_identity_max_abs_error_{d}"] < 1e-4
        # Excess MSE over the exact denoiser on the same pairs is sigma^4 E|score error|^2
        # plus a zero-mean cross term with standard error at most excess_mse_stderr.
        assert abs(r[f"excess_mse_{d}"] - r[f"sigma4_score_mse_{d}"]) < 5 * r[f"excess_mse_stderr_{d}"]
        # No network beats the Bayes denoiser on the same pairs.
        assert r[f"ratio_{d}"] > 0.99


def check_walk_jump_mixture(r: dict) -> None:
    # A ~12-nat barrier keeps MALA in its start mode (TV = 1 - 0.3 = 0.7, no switch),
    # while walk-jump at the default sigma hops (TV 0.08-0.13 at the fast budget).
    assert r["mala_switches_per_1000_draws"] == 0 < r["walkjump_m1_switches_per_1000_draws"]
    assert r["mala_tv"] > r["walkjump_m1_tv"]
    assert r["walkjump_m1_modes_visited_min"] >= 2


def check_mnist(r: dict) -> None:
    # The shipped denoiser against leaving the noise in (784 s^2 per image): it cuts
    # the error 11- to 44-fold; the standard error is about 3% of the MSE.
    for errors in r["heldout_mse_per_image"].values():
        assert errors["mse"] < 0.2 * errors["mse_noisy_theory"]
    assert r["evaluations_per_draw"] == r["jump_every"]  # fast mode: one measurement
    assert r["heldout_confidence"] > 0.95  # fixed digits and weights, no randomness


def check_tradeoff(r: dict) -> None:
    rows = r["table"]
    assert len(rows) == 2 and [row["num_measurements"] for row in rows] == [1, 2]
    for row in rows:
        # Cost of a sequential jump: jump_every + (M - 1) (num_inner_steps + 1) calls.
        extra = (row["num_measurements"] - 1) * (r["num_inner_steps"] + 1)
        assert row["evaluations_per_draw"] == row["jump_every"] + extra
        # The jumps are posterior means at sigma / sqrt(M).
        assert abs(row["jump_noise"] - row["sigma"] / math.sqrt(row["num_measurements"])) < 1e-4
        # The two rates count the same changes, per walk step and per denoiser call.
        per_call = row["changes_per_1000_steps"] * row["jump_every"] / row["evaluations_per_draw"]
        assert math.isclose(row["changes_per_1000_evaluations"], per_call, rel_tol=1e-9, abs_tol=1e-9)
        assert 0 < row["confident"] <= 1 and 0 <= row["class_tv"] < 0.9
        assert row["frechet"] >= 0 and row["frechet_floor"] > 0
        assert math.isclose(row["frechet_ratio"], row["frechet"] / row["frechet_floor"], rel_tol=1e-9)
        # one jump every thin_steps walk steps of the recorded draws of every chain
        draws = (r["walk_steps_per_chain"] - r["burn_in_steps"]) // row["jump_every"]
        thin = max(1, r["thin_steps"] // row["jump_every"])
        assert row["frechet_samples"] == r["chains"] * math.ceil(draws / thin)
    # Both rows walk at the same sigma; the extra measurement costs (num_inner_steps + 1)
    # calls per draw.
    assert rows[0]["sigma"] == rows[1]["sigma"]
    assert rows[1]["evaluations_per_draw"] - rows[1]["jump_every"] == r["num_inner_steps"] + 1


CLAIMS = {
    "01_langevin_step_size": check_langevin_step_size,
    "02_preconditioning": check_preconditioning,
    "03_mixture_trapping": check_mixture_trapping,
    "04_smoothing": check_smoothing,
    "05_tweedie": check_tweedie,
    "06_walk_jump_mixture": check_walk_jump_mixture,
    "07_mnist": check_mnist,
    "08_tradeoff": check_tradeoff,
}
