"""Tests for numpyro_wjs.nn.fit (the one trainer), its TrainConfig and the registry.

The denoiser and classifier wrappers are tested in test_train.py and
test_classifier.py; here: the recipe of docs/architecture.md runs, ``fit`` with
``DenoisingLoss`` is ``train_denoiser``, a run saved before ``TrainConfig`` existed
resumes, the config round-trips through JSON, and a plain loss function trains.
"""

import ast
import json
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from numpyro_wjs.nn import checkpoints, registry, train
from numpyro_wjs.nn.denoisers import MLP
from numpyro_wjs.nn.fit import TrainConfig, _Epochs, fit
from numpyro_wjs.nn.train import CheckpointError, DenoisingLoss, checkpoint_metadata, train_denoiser

ROOT = Path(__file__).resolve().parents[1]


def params(model):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def assert_same_params(a, b):
    for x, y in zip(params(a), params(b), strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).normal(size=(256, 2)).astype(np.float32)


def net(seed=0):
    return MLP(2, (16,), sigma_data=1.0, rngs=nnx.Rngs(seed))


# ---------------------------------------------------------------------------
# docs/architecture.md


def recipe_block() -> str:
    page = (ROOT / "docs" / "architecture.md").read_text()
    section = page.split("## Recipe: a new network architecture", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the recipe section holds one Python block"
    return blocks[0]


def test_architecture_recipe_runs(tmp_path):
    """The recipe defines, registers, trains (3 steps here) and loads back a network."""
    block = recipe_block()
    assert len(block.strip().splitlines()) <= 25
    for old, new in [("steps=500", "steps=3"), ('"residual-run"', repr(str(tmp_path / "run")))]:
        assert block.count(old) >= 1, old
        block = block.replace(old, new)
    namespace: dict = {}
    exec(compile(block, "docs/architecture.md (recipe)", "exec"), namespace)
    assert registry.ARCHITECTURES["Residual"] is namespace["Residual"]
    meta = checkpoint_metadata(tmp_path / "run")
    assert meta["architecture"] == "Residual" and meta["step"] == 3
    assert TrainConfig.from_dict({k: v for k, v in meta["train"].items()
                                  if k not in ("sigma", "noise_levels", "num_examples")}).steps == 3


# ---------------------------------------------------------------------------
# One loop


def test_fit_with_denoising_loss_is_train_denoiser(x):
    a = train_denoiser(net(), x, 0.5, steps=12, batch_size=32, progress_bar=False)
    b = fit(net(), DenoisingLoss(0.5), x, TrainConfig(steps=12, batch_size=32), progress_bar=False)
    np.testing.assert_array_equal(a.loss_history, b.loss_history)
    assert_same_params(a.ema_model, b.ema_model)
    assert_same_params(a.model, b.model)
    assert b.model.sigma == 0.5  # DenoisingLoss.prepare sets a fixed-sigma network's sigma


def test_plain_loss_function_and_pytree_data_in_epochs(tmp_path):
    """A function objective on (inputs, targets), passes without replacement, no EMA."""
    rng = np.random.default_rng(1)
    inputs = rng.normal(size=(64, 3)).astype(np.float32)
    targets = inputs @ np.array([[1.0], [-2.0], [0.5]], np.float32)

    def squared_error(model, batch, key):
        u, v = batch
        return jnp.mean((model(u) - v) ** 2)

    config = TrainConfig(steps=40, batch_size=16, learning_rate=0.05, ema_decay=None, sampling="epochs")
    model = nnx.Linear(3, 1, rngs=nnx.Rngs(0))
    result = fit(model, squared_error, (inputs, targets), config, progress_bar=False)
    assert result.ema_model is model and result.loss_history.shape == (40,)
    assert result.loss_history[-4:].mean() < 0.2 * result.loss_history[:4].mean()
    with pytest.raises(TypeError, match="format"):
        fit(model, squared_error, (inputs, targets), config, checkpoint_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="batch_size <= N"):
        fit(model, squared_error, (inputs[:8], targets[:8]), config)
    with pytest.raises(ValueError, match="sharing N"):
        fit(model, squared_error, (inputs, targets[:10]), config)


def test_epochs_visit_every_example_once_per_pass_and_replay():
    picks = _Epochs(10, 3, seed=0)
    steps = [picks(t) for t in range(9)]  # three passes of 3 batches (one example left out)
    for p in range(3):
        seen = np.concatenate(steps[3 * p : 3 * p + 3])
        assert len(set(seen.tolist())) == 9
    again = _Epochs(10, 3, seed=0)
    np.testing.assert_array_equal(again(7), steps[7])  # resuming at step 7
    np.testing.assert_array_equal(again(1), steps[1])  # and going back


# ---------------------------------------------------------------------------
# TrainConfig


def test_train_config_round_trips_through_json():
    config = TrainConfig(steps=100, batch_size=8, warmup_steps=5, grad_clip=None, ema_decay=None,
                         sampling="epochs", seed=3, continued_from=(50,))
    text = json.dumps(config.to_dict())
    assert TrainConfig.from_dict(json.loads(text)) == config
    # an entry missing from an older checkpoint takes its default
    old = {k: v for k, v in TrainConfig(steps=10).to_dict().items() if k not in ("final_lr_fraction", "sampling")}
    assert TrainConfig.from_dict(old) == TrainConfig(steps=10)
    with pytest.raises(TypeError, match=r"no settings \['sigma'\]"):
        TrainConfig.from_dict({"steps": 10, "sigma": 0.5})


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(steps=0), ValueError, "steps"),
        (dict(batch_size=1.5), TypeError, "batch_size"),
        (dict(learning_rate=float("nan")), ValueError, "learning_rate"),
        (dict(ema_decay=1.0), ValueError, "ema_decay"),
        (dict(final_lr_fraction=2.0), ValueError, "final_lr_fraction"),
        (dict(sampling="shuffle"), ValueError, "sampling"),
        (dict(seed=True), TypeError, "seed"),
        (dict(warmup_steps=-1), ValueError, "warmup_steps"),
    ],
)
def test_train_config_validates(change, error, message):
    with pytest.raises(error, match=message):
        TrainConfig(**{"steps": 10, **change})


# ---------------------------------------------------------------------------
# Checkpoints: a run saved before TrainConfig, a changed setting


RUN = dict(steps=20, batch_size=32, checkpoint_every=10, progress_bar=False)


def test_run_saved_before_train_config_resumes(x, tmp_path):
    """Metadata without the entries TrainConfig added (as written before it existed)
    resumes, to the result of an uninterrupted run."""
    straight = train_denoiser(net(), x, 0.5, **RUN)
    run = tmp_path / "run"
    train_denoiser(net(), x, 0.5, checkpoint_dir=run, **RUN)
    shutil.rmtree(run / "step_00000020")
    meta_file = run / "step_00000010" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    for key in ("final_lr_fraction", "sampling", "continued_from"):
        del meta["train"][key]
    meta_file.write_text(json.dumps(meta))
    resumed = train_denoiser(net(seed=9), x, 0.5, checkpoint_dir=run, **RUN)
    np.testing.assert_array_equal(resumed.loss_history, straight.loss_history)
    assert_same_params(resumed.ema_model, straight.ema_model)
    assert checkpoint_metadata(run)["train"]["sampling"] == "replacement"


def test_changed_setting_is_refused_with_what_differs(x, tmp_path):
    run = tmp_path / "run"
    fit(net(), DenoisingLoss(0.5), x, TrainConfig(steps=10, batch_size=32), checkpoint_dir=run,
        progress_bar=False)
    for config, objective, differ in [
        (TrainConfig(steps=10, batch_size=32, weight_decay=0.0), DenoisingLoss(0.5), "train.weight_decay"),
        (TrainConfig(steps=10, batch_size=32, final_lr_fraction=0.1), DenoisingLoss(0.5),
         "train.final_lr_fraction"),
        (TrainConfig(steps=10, batch_size=32), DenoisingLoss(0.6), "train.sigma"),
    ]:
        with pytest.raises(CheckpointError, match=rf"settings differ \(.*{differ}: checkpoint"):
            fit(net(), objective, x, config, checkpoint_dir=run, progress_bar=False)


# ---------------------------------------------------------------------------
# Where things live


def test_one_checkpoint_metadata_and_the_registry_in_its_own_module():
    assert train.checkpoint_metadata is checkpoints.checkpoint_metadata
    assert train.register_architecture is registry.register_architecture
    tree = ast.parse((ROOT / "numpyro_wjs" / "nn" / "checkpoints.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert not imported & {"MLP", "UNet", "DigitClassifier", "is_noise_conditional"}


def test_build_network_from_the_registry():
    built = registry.build_network("MLP", {"dim": 2, "hidden": [8]}, nnx.Rngs(0))
    assert isinstance(built, MLP) and built.config["hidden"] == [8]
    with pytest.raises(ValueError, match="unknown architecture 'Transformer'"):
        registry.build_network("Transformer", {}, nnx.Rngs(0))
    with pytest.raises(ValueError, match="invalid MLP config"):
        registry.build_network("MLP", {"dim": 2, "depth": 3}, nnx.Rngs(0))
