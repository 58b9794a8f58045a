"""Figures of numpyro_wjs.diagnostics.plots on tiny synthetic data: they draw, save and decode."""

import matplotlib

matplotlib.use("Agg")

import arviz as az
import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from numpyro_wjs.diagnostics import plots
from numpyro_wjs.targets import GaussianMixture

WEIGHTS = np.array([0.5, 0.3, 0.2])
MEANS = np.array([[-4.0, 0.0], [0.0, 3.0], [4.0, 0.0]])


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def target():
    return GaussianMixture(WEIGHTS, MEANS, 0.5)


def _draws(seed: int, chains: int = 2, draws: int = 60, hop: bool = True) -> np.ndarray:
    """Synthetic draws (chain, draw, 2): around one mode per chain, or hopping every 10 draws."""
    rng = np.random.default_rng(seed)
    modes = (np.arange(draws) // 10) % 3 if hop else np.zeros(draws, int)
    modes = (modes[None] + np.arange(chains)[:, None]) % 3
    return MEANS[modes] + 0.5 * rng.normal(size=(chains, draws, 2))


def _run(seed: int, walk: bool, cost: int = 1):
    """A comparison-like run: ``.data`` DataTree with posterior x and sample stats."""
    x = _draws(seed, hop=walk)
    stats = {"evaluations": np.full(x.shape[:2], cost)}
    if walk:
        stats["y"] = x + np.random.default_rng(seed + 1).normal(size=x.shape)

    class Run:
        data = az.from_dict({"posterior": {"x": x}, "sample_stats": stats})

    return Run()


def _check_png(fig: Figure, path, min_width: int = 200, min_height: int = 150) -> np.ndarray:
    assert isinstance(fig, Figure)
    fig.savefig(path, dpi=80)
    image = mpimg.imread(path)
    assert image.ndim == 3 and image.shape[0] >= min_height and image.shape[1] >= min_width
    # not blank: a drawn figure has many distinct pixel values
    assert np.unique(image.reshape(-1, image.shape[-1]), axis=0).shape[0] > 20
    return image


def test_plot_trace_array_and_runs(tmp_path, target):
    fig = plots.plot_trace(_draws(0), target)
    _check_png(fig, tmp_path / "trace.png")
    assert len(fig.axes) == 1
    runs = {"NUTS": _run(0, walk=False, cost=5), "WalkJump": _run(1, walk=True)}
    fig = plots.plot_trace(runs, target, coords=(0, 1), against="evaluations", limit=100)
    _check_png(fig, tmp_path / "trace_runs.png", min_width=400)
    assert len(fig.axes) == 4
    # three shaded mode bands per panel, x axis cut at the limit
    assert len(fig.axes[0].patches) == 3
    assert fig.axes[0].get_xlim()[1] == 100


def test_plot_trace_on_given_axes_and_datatree(target):
    fig, ax = plt.subplots()
    data = az.from_dict({"posterior": {"x": _draws(2)}})
    assert plots.plot_trace(data, ax=ax) is fig


def test_plot_trace_bad_input(target):
    with pytest.raises(ValueError, match="against"):
        plots.plot_trace(_draws(0), against="time")
    with pytest.raises(ValueError, match="evaluations"):
        plots.plot_trace(_draws(0), against="evaluations")
    with pytest.raises(ValueError, match="out of range"):
        plots.plot_trace(_draws(0), coords=(5,))
    with pytest.raises(ValueError, match="Variable"):
        plots.plot_trace(az.from_dict({"posterior": {"z": _draws(0)}}))


def test_plot_mode_occupancy(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(3, 80))
    fig = plots.plot_mode_occupancy(labels, 3, weights=WEIGHTS)
    _check_png(fig, tmp_path / "occ.png", min_width=400)
    fig = plots.plot_mode_occupancy({"A": labels, "B": np.zeros((3, 80), int)}, 3, weights=WEIGHTS)
    _check_png(fig, tmp_path / "occ2.png", min_width=400, min_height=250)
    assert len(fig.axes) == 4
    # the running occupancy of a chain stuck in mode 0 is exactly (1, 0, 0)
    running = [line.get_ydata() for line in fig.axes[3].get_lines()[::2]]
    np.testing.assert_array_equal(running[0], 1.0)
    np.testing.assert_array_equal(running[1], 0.0)


def test_plot_mode_occupancy_bad_input():
    with pytest.raises(ValueError, match="must lie in"):
        plots.plot_mode_occupancy(np.array([[0, 3]]), 3)
    with pytest.raises(TypeError, match="integers"):
        plots.plot_mode_occupancy(np.array([[0.0, 1.0]]), 2)
    with pytest.raises(ValueError, match="weights"):
        plots.plot_mode_occupancy(np.array([[0, 1]]), 2, weights=[1.0, 0.0, 0.0])


def test_plot_density_paths(tmp_path, target):
    runs = {"NUTS": _run(0, walk=False), "WalkJump": _run(1, walk=True), "draws": _draws(3)}
    fig = plots.plot_density_paths(target, runs, max_draws=30, grid_size=60)
    _check_png(fig, tmp_path / "paths.png", min_width=400)
    visible = [a for a in fig.axes if a.get_visible()]
    assert len(visible) == 3
    # walk-jump panel: the walk of chain 0 plus one line and one start marker per chain
    assert len(visible[1].get_lines()) == 1 + 2 * 2
    assert len(visible[0].get_lines()) == 2 * 2
    fig = plots.plot_density_paths(target, _draws(4), chains=(1,), extent=(-6, 6, -3, 5), grid_size=40)
    _check_png(fig, tmp_path / "paths1.png")
    target3 = GaussianMixture(WEIGHTS, np.concatenate([MEANS, np.zeros((3, 1))], 1), 0.5)
    draws3 = np.concatenate([_draws(5), np.zeros((2, 60, 1))], -1)
    _check_png(plots.plot_density_paths(target3, draws3, grid_size=30), tmp_path / "paths3.png")
    with pytest.raises(ValueError, match="Chain 7"):
        plots.plot_density_paths(target, _draws(4), chains=(7,), grid_size=20)
    with pytest.raises(ValueError, match="extent"):
        plots.plot_density_paths(target, _draws(4), extent=(1, 0, 0, 1), grid_size=20)


def test_plot_walk_jump_strip(tmp_path):
    rng = np.random.default_rng(0)
    jumps = np.clip(rng.random((25, 12, 12, 1)), 0, 1)
    walk = jumps + rng.normal(size=jumps.shape)
    fig = plots.plot_walk_jump_strip(walk, jumps, num_frames=6, labels=rng.integers(0, 10, 25))
    _check_png(fig, tmp_path / "strip.png", min_width=300, min_height=120)
    assert len(fig.axes) == 12
    assert fig.axes[0].get_title() == "t=0" and fig.axes[5].get_title() == "t=24"
    with pytest.raises(ValueError, match="same shape"):
        plots.plot_walk_jump_strip(walk[:3], jumps)
    with pytest.raises(ValueError, match="images"):
        plots.plot_walk_jump_strip(walk[..., 0, 0], jumps[..., 0, 0])


def test_plot_sample_grid(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.random((11, 10, 10))
    fig = plots.plot_sample_grid(images, labels=np.arange(11), ncols=4, title="jumps")
    _check_png(fig, tmp_path / "grid.png", min_width=200, min_height=200)
    visible = [a for a in fig.axes if a.get_visible()]
    assert len(visible) == 11 and visible[10].get_title() == "10"
    _check_png(plots.plot_sample_grid(rng.random((4, 8, 8, 3))), tmp_path / "rgb.png", min_width=150, min_height=40)
    with pytest.raises(ValueError, match="labels"):
        plots.plot_sample_grid(images, labels=np.arange(3))
    with pytest.raises(ValueError, match="non-finite"):
        plots.plot_sample_grid(np.full((2, 4, 4), np.nan))
