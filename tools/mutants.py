"""Planted-bug (mutation) testing of the samplers' math. Run by hand, not in CI.

Each mutant is one bug that matters, written as an exact source snippet of a core
module and its replacement, with the tests that should catch it. For each mutant
the package and the tests are copied to a temporary directory, the snippet is
replaced there (the working tree is never modified), and only the mutant's tests
run (``pytest -x``). A mutant is *killed* when a test fails, *survived* when all pass.

Usage (from the repository root)::

    python tools/mutants.py                 # baseline check, then every mutant
    python tools/mutants.py --list          # names, files and reasons
    python tools/mutants.py --only NAME [--only NAME ...]
    python tools/mutants.py --jobs 2        # mutants in parallel (default 1)

A mutant may carry alternative anchors (the same bug on a later layout of the code);
the first anchor found exactly once is used. When none is found the script stops
before anything runs ("snippet not found: update mutant NAME"): re-anchor that
mutant on the new code. ``--root DIR`` runs against another checkout.
The baseline run (all listed tests on the unmodified code) must pass, otherwise a
"kill" would mean nothing; skip it with ``--no-baseline``.

The mutation score and the survivors are recorded in ``docs/testing.md``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = "numpyro_wjs"


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to numpyro_wjs/
    snippet: str
    replacement: str
    tests: tuple[str, ...]  # pytest node ids, relative to the repository root
    why: str
    #: the same bug anchored on another layout of the code (e.g. a checkout, ``--root``,
    #: from before a refactor), ``(file, snippet, replacement)``; the first anchor found
    #: exactly once is used. No mutant carries one at present.
    alternatives: tuple[tuple[str, str, str], ...] = ()

    def anchors(self):
        return ((self.file, self.snippet, self.replacement), *self.alternatives)


T_LANGEVIN = "tests/test_langevin.py"
T_WJ = "tests/test_walkjump.py"
T_MWJ = "tests/test_model_walkjump.py"
T_KER = "tests/test_kernels.py"
T_STEP = "tests/test_step_control.py"

ULA_VAR = f"{T_LANGEVIN}::test_ula_stationary_variance_is_the_known_biased_one"
ULA_PRECOND = f"{T_LANGEVIN}::test_preconditioned_ula_on_correlated_gaussian"
BAOAB_ONE = f"{T_LANGEVIN}::test_one_baoab_step_is_the_documented_splitting"
BAOAB_EXACT = f"{T_LANGEVIN}::test_baoab_position_marginal_exact_on_gaussian_at_large_step"
MALA_DENSE = f"{T_LANGEVIN}::test_mala_exact_with_dense_metric"
WJ_LAW = f"{T_WJ}::test_walk_matches_p_y_and_jumps_match_the_law_of_the_posterior_mean"
WJ_ACC = f"{T_WJ}::test_estimated_acceptance_is_exact_for_gaussian_p_y"
WJ_TUNE = f"{T_WJ}::test_overdamped_walk_tunes_its_step_to_the_target_acceptance"
WJ_SEQ = f"{T_WJ}::test_sequential_jump_has_the_law_of_the_posterior_mean_at_sigma_over_sqrt_m"
WJ_MANY = f"{T_WJ}::test_many_measurement_jumps_match_the_posterior_mean_at_sigma_over_sqrt_m"
WJ_2D = f"{T_WJ}::test_2d_mixture_mode_occupancy_matches_the_weights_with_adaptation"
HOP = f"{T_MWJ}::test_denoise_step_leaves_the_conditional_invariant"
SWEEP = f"{T_MWJ}::test_gibbs_sweep_targets_p"
NOISE = f"{T_MWJ}::test_noise_step_draws_y_around_z_with_variance_sigma_squared"
SIGMA_ADAPT = f"{T_MWJ}::test_sigma_adaptation_reaches_the_target_hop_acceptance"
MALA_ADAPT = f"{T_KER}::test_mala_recovers_ill_conditioned_gaussian_with_adaptation"


# files, relative to numpyro_wjs/
C_LANGEVIN = "core/langevin.py"
C_METROPOLIS = "core/metropolis.py"
C_WALKJUMP = "core/walkjump.py"
C_GIBBS = "core/gibbs.py"
I_BASE = "infer/base.py"
I_ADAPTATION = "infer/adaptation.py"
I_WALKJUMP = "infer/walkjump.py"
I_GIBBS = "infer/gibbs.py"

MUTANTS: list[Mutant] = [
    # ------------------------------------------------------------------ core/langevin.py, core/metropolis.py
    Mutant("ula_noise_sqrt_h", C_LANGEVIN,
           "        x_new = langevin_proposal(key, x, g, h, metric)",
           "        x_new = langevin_proposal(key, x, g, h / 2, metric) + h * _apply_c(metric, g) / 2",
           (ULA_VAR,), "ULA noise sqrt(h) instead of sqrt(2h): samples p^2 (half the variance)"),
    Mutant("ula_drift_half", C_LANGEVIN,
           "        x_new = langevin_proposal(key, x, g, h, metric)",
           "        x_new = langevin_proposal(key, x, g, h, metric) - h * _apply_c(metric, g) / 2",
           (ULA_VAR,), "ULA drift h/2: samples sqrt(p) (twice the variance)"),
    Mutant("mala_proposal_noise_sqrt_h", C_LANGEVIN,
           "langevin_proposal(key_prop, x, state.score, step_size, metric)",
           "langevin_proposal(key_prop, x, state.score, step_size / 2, metric)"
           " + step_size * _apply_c(metric, state.score) / 2",
           (MALA_DENSE,), "MALA proposes with half the variance its Hastings ratio assumes"),
    Mutant("mala_hastings_flipped", C_LANGEVIN,
           "return dlogp + _mala_log_q(metric, x, x_new, g_new, step_size) - _mala_log_q(metric, x_new, x, g, step_size)",
           "return dlogp - _mala_log_q(metric, x, x_new, g_new, step_size) + _mala_log_q(metric, x_new, x, g, step_size)",
           (MALA_DENSE,), "Hastings correction with the wrong sign"),
    Mutant("mala_hastings_reverse_dropped", C_LANGEVIN,
           "return dlogp + _mala_log_q(metric, x, x_new, g_new, step_size) - _mala_log_q(metric, x_new, x, g, step_size)",
           "return dlogp - _mala_log_q(metric, x_new, x, g, step_size)",
           (MALA_DENSE,), "Hastings ratio without q(x | x')"),
    Mutant("mala_log_q_scale", C_LANGEVIN,
           "return -_sq_norm_m(m, d) / (4 * h)", "return -_sq_norm_m(m, d) / (2 * h)",
           (MALA_DENSE,), "proposal density with variance h instead of 2h"),
    Mutant("mala_accept_inverted", C_METROPOLIS,
           "dtype=jnp.result_type(prob)) < prob",
           "dtype=jnp.result_type(prob)) > prob",
           (MALA_DENSE,), "accepts with probability 1 - a (the Metropolis-Hastings step that MALA shares)"),
    Mutant("dense_noise_c_transpose_lost", C_LANGEVIN,
           "_times(m.mass_matrix_sqrt_inv, eps, transpose=True)", "_times(m.mass_matrix_sqrt_inv, eps)",
           (ULA_PRECOND,), "dense metric: noise S^T eps has covariance S^T S != C"),
    Mutant("dense_sq_norm_transpose_lost", C_LANGEVIN,
           "_times(m.mass_matrix_sqrt, v, transpose=True)", "_times(m.mass_matrix_sqrt, v)",
           (MALA_DENSE,), "dense metric: MALA's proposal density uses L L^T v instead of v^T M v"),
    Mutant("dense_momentum_noise_transposed", C_LANGEVIN,
           "_times(m.mass_matrix_sqrt, xi)", "_times(m.mass_matrix_sqrt, xi, transpose=True)",
           (BAOAB_EXACT,), "dense metric: BAOAB's velocity refresh has covariance L^T L != M"),
    Mutant("diag_metric_ignored_in_drift", C_LANGEVIN,
           "return g if m is None else _times(m.inverse_mass_matrix, g)",
           "return g if m is None or jnp.ndim(m.inverse_mass_matrix) == 1 else _times(m.inverse_mass_matrix, g)",
           (BAOAB_EXACT, ULA_PRECOND), "diagonal metric: drift not preconditioned, noise is"),
    Mutant("baoab_O_noise_scale", C_LANGEVIN,
           "jnp.sqrt(1.0 - a * a)", "jnp.sqrt(1.0 - a)",
           (BAOAB_EXACT,), "BAOAB's O step refreshes with the wrong variance (wrong temperature)"),
    Mutant("baoab_friction_halved", C_LANGEVIN,
           "a = jnp.exp(-friction * h)", "a = jnp.exp(-0.5 * friction * h)",
           (BAOAB_ONE,), "friction half of what the user asked for (invariant law unchanged)"),
    Mutant("baoab_second_drift_full_step", C_LANGEVIN,
           "x = x + 0.5 * h * _apply_c(metric, v)\n    g = score_fn(x)",
           "x = x + h * _apply_c(metric, v)\n    g = score_fn(x)",
           (BAOAB_EXACT,), "BAOAB's second A step moves a full step"),
    Mutant("baoab_last_kick_dropped", C_LANGEVIN,
           "    v = v + 0.5 * h * g\n    return x, v, g",
           "    return x, v, g",
           (BAOAB_EXACT,), "BAOAB without its closing B half kick"),
    # ------------------------------------------------------------------ walk-jump: core/walkjump.py, infer/walkjump.py
    Mutant("smoothed_score_over_sigma", C_WALKJUMP,
           "return lambda y: (denoiser(y) - y) / sigma**2", "return lambda y: (denoiser(y) - y) / sigma",
           (WJ_LAW,), "Tweedie score divided by sigma instead of sigma^2"),
    Mutant("joint_noise_level_sigma", C_WALKJUMP,
           "s = sigma / math.sqrt(num_measurements)\n    return lambda",
           "s = sigma\n    return lambda",
           (f"{WJ_MANY}[joint]",), "joint walk denoises ybar at sigma instead of sigma/sqrt(M)"),
    Mutant("joint_uses_first_measurement", C_WALKJUMP,
           "denoiser(jnp.mean(y, axis=0), s)", "denoiser(y[0], s)",
           (f"{WJ_MANY}[joint]",), "joint walk denoises y_1 instead of the sufficient ybar"),
    # the single-measurement and the joint jump share one line in WalkJump._tweedie: each
    # mutant below breaks one of them only
    Mutant("tweedie_jump_without_sigma2", I_WALKJUMP,
           "            y, score = y[0], score[0]\n        return y + self._sigma**2 * score",
           "            return y[0] + self._sigma**2 * score[0]\n        return y + score",
           (WJ_LAW,), "issue 15: the jump y + score instead of y + sigma^2 score"),
    Mutant("joint_jump_without_sigma2", I_WALKJUMP,
           "            y, score = y[0], score[0]\n",
           "            return y[0] + score[0]\n",
           (f"{WJ_MANY}[joint]",), "joint jump y + score instead of y + sigma^2 score"),
    Mutant("sequential_noise_level_sigma", C_WALKJUMP,
           "s_m = sigma / math.sqrt(m)", "s_m = sigma",
           (WJ_SEQ,), "sequential conditionals denoise at sigma instead of sigma/sqrt(m)"),
    Mutant("sequential_forgets_earlier_measurements", C_WALKJUMP,
           "denoiser((prev_total + y) / m, s_m)", "denoiser(y, s_m)",
           (WJ_SEQ,), "y_m's score ignores y_1..y_{m-1}"),
    Mutant("sequential_final_jump_without_sigma2", C_WALKJUMP,
           "xhat = y + sigma**2 * g", "xhat = y + g",
           (WJ_SEQ,), "sequential jump y + score instead of y + sigma^2 score"),
    Mutant("overdamped_acceptance_terms_swapped", C_WALKJUMP,
           "core.langevin_log_ratio(y0, g0, y1, g1, core.trapezoid_dlogp(y0, g0, y1, g1), step_size)",
           "core.langevin_log_ratio(y1, g1, y0, g0, core.trapezoid_dlogp(y0, g0, y1, g1), step_size)",
           (WJ_ACC,), "issue 15: overdamped acceptance estimate with its proposal terms swapped"),
    Mutant("overdamped_log_q_scale", C_WALKJUMP,
           "core.langevin_log_ratio(y0, g0, y1, g1, core.trapezoid_dlogp(y0, g0, y1, g1), step_size)",
           "core.langevin_log_ratio(y0, g0, y1, g1, core.trapezoid_dlogp(y0, g0, y1, g1), 2 * step_size)",
           (WJ_ACC,), "overdamped acceptance estimate with the wrong proposal density"),
    Mutant("underdamped_kinetic_sign", C_LANGEVIN,
           "    return dlogp - dk",
           "    return dlogp + dk",
           (WJ_ACC,), "underdamped acceptance estimate adds the kinetic energy change"),
    Mutant("trapezoid_without_half", C_METROPOLIS,
           "return 0.5 * jnp.sum((g0 + g1) * (x1 - x0))",
           "return jnp.sum((g0 + g1) * (x1 - x0))",
           (WJ_ACC,), "trapezoid rule counts the log-density change twice"),
    Mutant("walk_adapts_to_a_fixed_target", I_WALKJUMP,
           "target_accept_prob=self._target_accept_prob,", "target_accept_prob=0.6,",
           (WJ_TUNE,), "the walk's dual averaging ignores target_accept_prob"),
    # ------------------------------------------------------------------ Gibbs walk-jump: core/gibbs.py, infer/gibbs.py
    Mutant("hop_counts_gaussian_terms", C_GIBBS,
           "logp_prop + point.potential_energy, proposal",
           "logp_prop + point.potential_energy - 0.5 * jnp.sum((y - z_prop) ** 2) / sigma**2"
           " + 0.5 * jnp.sum((y - point.z) ** 2) / sigma**2, proposal",
           (HOP,), "issue 15: hop acceptance also counts N(y; z, sigma^2), which the proposal cancels"),
    Mutant("hop_ratio_flipped", C_GIBBS,
           "logp_prop + point.potential_energy, proposal", "-point.potential_energy - logp_prop, proposal",
           (HOP,), "hop accepted with p(z) / p(z')"),
    Mutant("hop_proposal_too_wide", C_GIBBS,
           "z_prop = noise_step(key_prop, y, sigma)", "z_prop = noise_step(key_prop, y, 2 * sigma)",
           (HOP,), "hop proposes from N(y, 4 sigma^2) but accepts as if N(y, sigma^2)"),
    Mutant("hop_centred_on_z", C_GIBBS,
           "z_prop = noise_step(key_prop, y, sigma)", "z_prop = noise_step(key_prop, point.z, sigma)",
           (HOP,), "hop is a random walk from z with the independence sampler's ratio"),
    Mutant("conditional_gaussian_factor", C_GIBBS,
           "inv2s2 = 0.5 / sigma**2", "inv2s2 = 1.0 / sigma**2",
           (HOP,), "MALA refinement targets p(z) N(y; z, sigma^2 / 2)"),
    Mutant("conditional_score_sign", C_GIBBS,
           "point.score + (y - point.z) / sigma**2,", "point.score - (y - point.z) / sigma**2,",
           (HOP,), "MALA refinement starts from a wrong conditional score"),
    Mutant("walk_noise_unit", C_GIBBS,
           "return z + sigma * core.normal_like(rng_key, z)", "return z + core.normal_like(rng_key, z)",
           (NOISE, SWEEP), "the walk y ~ N(z, 1) instead of N(z, sigma^2)"),
    Mutant("sigma_adaptation_direction", I_ADAPTATION,
           "self.target - statistic", "statistic - self.target",
           (SIGMA_ADAPT,), "sigma adaptation moves away from target_hop_accept_prob"),
    # ------------------------------------------------------------------ Langevin kernels: infer/langevin.py
    Mutant("mala_kernel_potential_sign", C_LANGEVIN,
           "x_new, g_new, logp_new + state.potential_energy, step_size",
           "x_new, g_new, logp_new - state.potential_energy, step_size",
           (f"{T_LANGEVIN}::test_mala_energy_error_is_minus_the_exact_hastings_log_ratio",),
           "MALA uses +potential as log p at the current point"),
    Mutant("mala_kernel_adapts_to_rejection", I_BASE,
           "update(s.i, info.acceptance_rate, z,",
           "update(s.i, 1.0 - info.acceptance_rate, z,",
           (f"{MALA_ADAPT}[False]",), "dual averaging fed the rejection rate instead of the acceptance"),
    # ------------------------------------------------------------------ step control of the unadjusted kernels
    Mutant("baoab_kinetic_energy_in_mass_metric", C_LANGEVIN,
           "w = v if m is None else _times(m.mass_matrix_sqrt_inv, v)",
           "w = v if m is None else _times(m.mass_matrix_sqrt, v, transpose=True)",
           (f"{T_STEP}::test_log_ratio_helpers_match_the_exact_energy_error_on_a_gaussian",),
           "BAOAB's energy error measures v^T M v instead of v^T C v: the tuning statistic is wrong"),
    Mutant("ula_adapts_on_the_wrong_logp_difference", C_LANGEVIN,
           "return -logp, logp + pe",
           "return -logp, -logp - pe",
           (f"{T_STEP}::test_ula_default_step_is_tuned_and_its_bias_is_the_known_one[potential]",),
           "the exact log p difference of the computed acceptance has its sign flipped"),
    Mutant("divergence_threshold_ignored", C_METROPOLIS,
           "return ~(all_finite(log_ratio, *xs) & (log_ratio >= -MAX_LOG_ACCEPT_DROP))",
           "return ~(all_finite(log_ratio, *xs) & (log_ratio > -jnp.inf))",
           (f"{T_STEP}::test_blow_ups_are_flagged_in_the_first_steps_and_discarded",),
           "only non-finite steps count as divergent: a blow-up runs to 1e17 unflagged"),
    Mutant("discarded_kinetic_step_keeps_velocity", C_LANGEVIN,
           "jnp.where(adjusted, fresh, -state.velocity)", "jnp.where(adjusted, fresh, state.velocity)",
           (f"{T_STEP}::test_a_discarded_kinetic_step_reverses_the_velocity",),
           "a divergent kinetic step is retried in the same direction (stuck in a funnel's neck)"),
]


def find_anchor(m: Mutant, root: Path):
    """The first of the mutant's anchors whose snippet occurs exactly once, or None."""
    for file, snippet, replacement in m.anchors():
        path = root / PKG / file
        if path.is_file() and path.read_text().count(snippet) == 1:
            return file, snippet, replacement
    return None


def check_anchors(mutants: list[Mutant], root: Path) -> dict:
    anchors, problems = {}, []
    for m in mutants:
        anchor = find_anchor(m, root)
        if anchor is None:
            counts = [(f, (root / PKG / f).read_text().count(sn)) for f, sn, _ in m.anchors()]
            problems.append(f"snippet not found: update mutant {m.name} "
                            f"(occurrences per anchor: {counts}; each must occur exactly once)")
        anchors[m.name] = anchor
    if problems:
        sys.exit("\n".join(problems))
    return anchors


def copy_tree(root: Path, dest: Path) -> None:
    shutil.copytree(root / PKG, dest / PKG, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(root / "tests", dest / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(root / "pyproject.toml", dest / "pyproject.toml")


def run_tests(workdir: Path, tests, timeout: float) -> tuple[str, str]:
    env = {**os.environ, "PYTHONPATH": str(workdir), "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
           "-o", "addopts=", *tests]
    try:
        r = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", ""
    out = r.stdout + r.stderr
    if r.returncode == 0:
        return "passed", out
    if r.returncode == 1:
        return "failed", out
    return f"error (rc {r.returncode})", out


def first_failure(out: str) -> str:
    for line in out.splitlines():
        if line.startswith("FAILED") or line.startswith("E  "):
            return line.strip()[:160]
    return ""


def run_mutant(m: Mutant, anchor, root: Path, timeout: float, verbose: bool) -> tuple[Mutant, str, float, str]:
    t0 = time.perf_counter()
    file, snippet, replacement = anchor
    with tempfile.TemporaryDirectory(prefix=f"mutant-{m.name}-") as tmp:
        work = Path(tmp)
        copy_tree(root, work)
        path = work / PKG / file
        path.write_text(path.read_text().replace(snippet, replacement, 1))
        status, out = run_tests(work, m.tests, timeout)
    dt = time.perf_counter() - t0
    verdict = {"failed": "killed", "passed": "SURVIVED"}.get(status, status)
    detail = first_failure(out) if verdict == "killed" else ""
    if verbose or verdict not in ("killed", "SURVIVED"):
        detail = detail or out[-2000:]
    return m, verdict, dt, detail


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--only", action="append", default=[], metavar="NAME", help="run only these mutants")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run at the same time")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant")
    ap.add_argument("--no-baseline", action="store_true", help="skip the run on the unmodified code")
    ap.add_argument("-v", "--verbose", action="store_true", help="print the failing assertion of each kill")
    ap.add_argument("--root", type=Path, default=ROOT,
                    help="checkout whose numpyro_wjs/ and tests/ are mutated and run (default: this one)")
    args = ap.parse_args(argv)

    names = [m.name for m in MUTANTS]
    assert len(set(names)) == len(names), "duplicate mutant names"
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:42s} {m.file:18s} {m.why}")
            for file, snippet, _ in m.alternatives:
                print(f"{'':42s} {file:18s} (alternative anchor) {snippet!r}")
        return 0
    unknown = set(args.only) - set(names)
    if unknown:
        sys.exit(f"unknown mutant(s): {', '.join(sorted(unknown))} (see --list)")
    selected = [m for m in MUTANTS if not args.only or m.name in args.only]
    root = args.root.resolve()
    anchors = check_anchors(selected, root)

    t_start = time.perf_counter()
    if not args.no_baseline:
        tests = sorted({t for m in selected for t in m.tests})
        with tempfile.TemporaryDirectory(prefix="mutant-baseline-") as tmp:
            copy_tree(root, Path(tmp))
            status, out = run_tests(Path(tmp), tests, 4 * args.timeout)
        print(f"baseline ({len(tests)} test ids on the unmodified code): {status} "
              f"in {time.perf_counter() - t_start:.0f} s", flush=True)
        if status != "passed":
            print(out[-4000:])
            return 2

    results = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for m, verdict, dt, detail in pool.map(lambda m: run_mutant(m, anchors[m.name], root, args.timeout, args.verbose),
                                                   selected):
            results.append((m, verdict, dt))
            print(f"{m.name:42s} {verdict:9s} {dt:6.1f} s  {detail if args.verbose or verdict != 'killed' else ''}",
                  flush=True)
    killed = sum(v == "killed" for _, v, _ in results)
    print(f"\nmutation score: {killed}/{len(results)} killed in {time.perf_counter() - t_start:.0f} s")
    survivors = [m.name for m, v, _ in results if v != "killed"]
    if survivors:
        print("not killed:", ", ".join(survivors))
    return 0 if not survivors else 1


if __name__ == "__main__":
    raise SystemExit(main())
