"""Samplers at an equal evaluation budget (numpyro_wjs.diagnostics.comparison)."""

import math

import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pandas as pd
import pytest
from numpyro.infer import NUTS, SA, BarkerMH

from numpyro_wjs import MALA, ULA, GibbsWalkJump, WalkJump
from numpyro_wjs.diagnostics.comparison import (
    compare,
    evaluations_per_draw,
    run_samplers,
    summarize,
    walk_jump_sigma,
)
from numpyro_wjs.targets import GaussianMixture

# Two modes 10 apart with scale 0.5: at the midpoint -log p is 10^2 / (8 * 0.5^2) = 50 nats
# above the modes, so a local sampler started in one mode crosses with probability ~e^-50.
# With sigma = walk_jump_sigma(GM) the smoothed scale is 2.5 and p_Y's barrier is ~1.3 nats.
GM = GaussianMixture([0.5, 0.5], [[-5.0], [5.0]], 0.5)
BUDGET = 2000
COLUMNS = [
    "evaluations",
    "draws",
    "switches",
    "switches_per_1000_evals",
    "tv_distance",
    "steps_to_visit_all",
    "evals_to_visit_all",
    "modes_visited",
    "round_trips",
    "ess_bulk",
    "r_hat",
    "stray_chains",
    "wall_time_s",
]


def test_default_samplers_at_an_equal_budget():
    # one test, so that the runs are made once even when tests are spread over processes
    runs = run_samplers(GM, budget=BUDGET, num_chains=2, num_warmup=150, seed=0)
    table = summarize(runs, GM)
    _check_table(table)
    _check_budgets(runs)
    _check_hopping(table)


def _check_table(table):
    assert list(table.index) == ["NUTS", "MALA", "ULA", "WalkJump"]
    assert list(table.columns) == COLUMNS
    assert table.index.name == "sampler"
    assert np.all(np.isfinite(table.to_numpy(dtype=float)))


def _check_budgets(runs):
    for name, run in runs.items():
        assert run.evaluations_per_draw.shape == (2, run.num_draws)
        assert run.data["posterior"]["x"].shape == (2, run.num_draws, 1)
        stats = run.data["sample_stats"]
        np.testing.assert_array_equal(stats["evaluations"].values, run.evaluations_per_draw)
        assert run.evaluations == pytest.approx(run.evaluations_per_draw.sum(1).mean())
        assert run.evaluations <= BUDGET and run.wall_time > 0
        if name == "NUTS":
            # one gradient per leapfrog step; the cut leaves less than one more draw,
            # and a NUTS draw costs at most 2^max_tree_depth - 1 = 1023 leapfrog steps
            np.testing.assert_array_equal(stats["n_steps"].values, run.evaluations_per_draw)
            assert BUDGET - run.evaluations < 2**10 - 1
        else:
            assert np.all(run.evaluations_per_draw == 1)
            assert run.evaluations == BUDGET and run.num_draws == BUDGET
    assert "y" in runs["WalkJump"].data["sample_stats"]
    # the unadjusted ULA applies no Metropolis test, so it reports no acceptance
    assert "acceptance_rate" not in runs["ULA"].data["sample_stats"]
    assert "acceptance_rate" in runs["MALA"].data["sample_stats"]


def _check_hopping(table):
    nuts, wjs = table.loc["NUTS"], table.loc["WalkJump"]
    assert nuts.switches == 0 and nuts.modes_visited == 1 and nuts.steps_to_visit_all == -1
    assert nuts.tv_distance == pytest.approx(0.5)  # all mass on one of two equal modes
    assert wjs.modes_visited == 2 and wjs.switches > 0 and wjs.round_trips > 0
    assert wjs.switches_per_1000_evals == pytest.approx(1000 * wjs.switches / (2 * BUDGET))
    assert wjs.evals_to_visit_all == wjs.steps_to_visit_all  # one evaluation per draw


def test_compare_is_deterministic_under_the_seed():
    # fresh kernels, the same seed: the same draws, hence the same table (wall time aside);
    # NUTS exercises the chunked run and the cut at the budget
    def table():
        samplers = {"NUTS": NUTS(GM.model()), "WalkJump": WalkJump(GM.denoiser(2.0), 2.0)}
        return compare(GM, samplers, budget=500, num_chains=2, num_warmup=60, seed=3)

    first, second = table(), table()
    pd.testing.assert_frame_equal(first.drop(columns="wall_time_s"), second.drop(columns="wall_time_s"))
    assert first.loc["WalkJump", "draws"] == 500


def test_numpyro_model_with_explicit_samplers():
    def model():
        numpyro.sample("mu", dist.Normal(0.0, 1.0))
        numpyro.sample("tau", dist.HalfNormal(1.0))

    runs = run_samplers(model, {"ULA": ULA(model, step_size=0.05, num_steps=1)}, budget=300, num_chains=2, num_warmup=0)
    table = summarize(runs)
    assert list(table.index) == ["ULA"]
    assert list(table.columns) == ["evaluations", "draws", "ess_bulk", "r_hat", "stray_chains", "wall_time_s"]
    assert np.all(table.evaluations == 300)
    posterior = runs["ULA"].data["posterior"]
    assert set(posterior.data_vars) == {"mu", "tau"} and posterior["tau"].shape == (2, 300)
    assert bool((posterior["tau"] > 0).all())  # draws are constrained


def test_evaluation_cost_of_the_kernels():
    assert evaluations_per_draw(NUTS(GM.model())) is None
    assert evaluations_per_draw(MALA(GM.model())) == 1
    assert evaluations_per_draw(ULA(GM.model())) == 16 and evaluations_per_draw(ULA(GM.model(), num_steps=3)) == 3
    assert evaluations_per_draw(WalkJump(GM.denoiser(1.0), 1.0, jump_every=3)) == 3
    seq = WalkJump(lambda y, s: GM.denoiser(s)(y), 1.0, num_measurements=4, noise_conditional=True,
                   mode="sequential", num_inner_steps=10, jump_every=2)
    assert evaluations_per_draw(seq) == 2 + 3 * 11
    joint = WalkJump(lambda y, s: GM.denoiser(s)(y), 1.0, num_measurements=4, noise_conditional=True)
    assert evaluations_per_draw(joint) == 1
    assert evaluations_per_draw(GibbsWalkJump(GM.model(), num_mala_steps=3)) == 1 + 3  # hop + MALA steps


def test_cost_stated_by_the_kernel_and_barker_runs():
    class TwoScores(ULA):
        evaluations_per_draw = 2

    assert evaluations_per_draw(TwoScores(score_fn=GM.score)) == 2
    assert evaluations_per_draw(BarkerMH(GM.model())) == 1
    run = run_samplers(GM, {"Barker": BarkerMH(GM.model())}, budget=50, num_chains=2, num_warmup=10)["Barker"]
    assert run.evaluations == 50 and run.num_draws == 50
    assert set(run.data["sample_stats"].data_vars) == {"acceptance_rate", "evaluations"}


def test_walk_jump_sigma_rule():
    # bottleneck distance 10, tau 0.5: sqrt(0.5^2 + sigma^2) = 10 / (2 z)
    assert walk_jump_sigma(GM) == pytest.approx(math.sqrt(2.5**2 - 0.25))
    assert walk_jump_sigma(GM, z=1.0) == pytest.approx(math.sqrt(5.0**2 - 0.25))
    # a ring of K = 8: the bottleneck is the side 2 r sin(pi / 8)
    ring = GaussianMixture.ring(8, radius=4.0, scale=0.1)
    side = 2 * 4.0 * math.sin(math.pi / 8)
    assert walk_jump_sigma(ring) == pytest.approx(math.sqrt((side / 4) ** 2 - 0.01), rel=1e-5)
    # overlapping modes: the smallest scale
    assert walk_jump_sigma(GaussianMixture([1.0, 1.0], [[0.0], [0.5]], [0.4, 0.6])) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="z"):
        walk_jump_sigma(GM, z=0.0)
    # coincident means add no gap
    twin = GaussianMixture([1.0, 1.0, 1.0], [[-5.0], [-5.0], [5.0]], 0.5)
    assert walk_jump_sigma(twin) == pytest.approx(walk_jump_sigma(GM))


def _model():
    numpyro.sample("x", dist.Normal(0.0, 1.0))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: run_samplers(GM, {}), "empty"),
        (lambda: run_samplers(GM, budget=0), "budget"),
        (lambda: compare(GM, budget=-5), "budget"),
        (lambda: run_samplers(_model), "GaussianMixture"),
        (lambda: compare("not a target"), "GaussianMixture"),
        (lambda: run_samplers(GM, num_chains=0), "num_chains"),
        (lambda: run_samplers(GM, num_warmup=-1), "num_warmup"),
        (lambda: run_samplers(_model, {"ULA": ULA(score_fn=GM.score)}), "init"),
        (lambda: run_samplers(GM, {"ULA": ULA(score_fn=GM.score)}, num_chains=2, init={"x": jnp.zeros((3, 1))}),
         "num_chains"),
        (lambda: summarize({}), "non-empty"),
        (lambda: run_samplers(GM, {"WJS": WalkJump(lambda y, s: GM.denoiser(s)(y), 1.0, num_measurements=4,
                                                   noise_conditional=True, mode="sequential")}, budget=10),
         "budget"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_types_raise_type_error():
    with pytest.raises(TypeError, match="MCMCKernel"):
        run_samplers(GM, {"bad": object()})
    with pytest.raises(TypeError, match="SA"):
        run_samplers(GM, {"SA": SA(GM.model())})
    with pytest.raises(TypeError, match="NumPyro model"):
        run_samplers(3.0, {"ULA": ULA(score_fn=GM.score)})
    with pytest.raises(TypeError, match="budget"):
        run_samplers(GM, budget=10.5)


def test_kernels_declare_their_cost_stats_and_label():
    # the comparison asks each kernel: no class switch, no initial state built to look
    from numpyro_wjs.diagnostics.comparison import sample_stats

    assert sample_stats(ULA(GM.model())) == ("diverging",)  # accept_prob never applied: not a stat
    assert sample_stats(MALA(GM.model())) == ("diverging", "accept_prob")
    assert sample_stats(NUTS(GM.model())) == ("diverging", "num_steps", "accept_prob")
    assert sample_stats(WalkJump(GM.denoiser(1.0), 1.0)) == ("diverging", "accept_prob", "y")
    seq = WalkJump(lambda y, s: GM.denoiser(s)(y), 1.0, num_measurements=4, noise_conditional=True,
                   mode="sequential")
    assert seq.label == "WalkJump (M=4, sequential)" and MALA(GM.model()).label == "MALA"


def test_samplers_as_a_list_are_named_by_their_labels():
    runs = run_samplers(GM, [MALA(GM.model()), WalkJump(GM.denoiser(1.0), 1.0)], budget=60, num_chains=2,
                        num_warmup=10)
    assert list(runs) == ["MALA", "WalkJump"]
    assert "acceptance_rate" in runs["MALA"].data["sample_stats"]
    with pytest.raises(ValueError, match="same label"):
        run_samplers(GM, [MALA(GM.model()), MALA(GM.model())], budget=60)


def test_malt_cost_is_its_num_steps_when_the_length_is_adapted():
    from numpyro_wjs import MALT

    assert evaluations_per_draw(MALT(GM.model())) is None  # read from each draw's num_steps, as NUTS
    assert evaluations_per_draw(MALT(GM.model(), num_steps=8)) == 8
