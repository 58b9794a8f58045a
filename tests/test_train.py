"""Tests for numpyro_wjs.nn.train: learning against the Bayes risk, determinism, resume,
checkpoints, data parallelism and input validation.

Oracle for learning: on a Gaussian mixture the exact posterior mean E[X | y] is known
in closed form (numpyro_wjs.targets.GaussianMixture.denoiser), so the Bayes risk
E||X - E[X|Y]||^2 is the floor for any denoiser. The learned and the Bayes denoiser are
scored on the *same* held-out pairs (x, eps); the paired differences
d_i = err_net_i - err_bayes_i have standard error se = std(d) / sqrt(n), and every
comparison allows 5 se (a false failure has probability below 1e-6 under normality).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from numpyro_wjs.nn import checkpoints
from numpyro_wjs.nn import train as train_module
from numpyro_wjs.nn.denoisers import MLP, UNet
from numpyro_wjs.targets import GaussianMixture
from numpyro_wjs.nn.train import (
    CheckpointError,
    checkpoint_metadata,
    denoising_errors,
    load_denoiser,
    register_architecture,
    save_checkpoint,
    train_denoiser,
)

ROOT = Path(__file__).resolve().parents[1]
Z = 5.0  # tolerance in standard errors

# A 4-mode ring in 2-D: modes at radius 2, std 0.5; per-coordinate data std
# sqrt(0.5^2 + 2^2 / 2) = 1.5. At sigma = 1 the posterior over modes is uncertain, so
# the Bayes denoiser is far from linear.
MIXTURE = GaussianMixture.ring(4, 2.0, 0.5)
SIGMA = 1.0
SIGMA_DATA = 1.5


def mixture_data(seed, n):
    return np.asarray(MIXTURE.sample(jax.random.key(seed), (n,)), np.float32)


def tiny_mlp(seed=0):
    return MLP(2, (16, 16), sigma_data=SIGMA_DATA, rngs=nnx.Rngs(seed))


apply = nnx.jit(lambda model, y: model(y))


def numpy_init(cls, *args, **kwargs):
    """A network with N(0, 0.1^2) weights, built without compiling initialisers."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: cls(*args, **kwargs, rngs=nnx.Rngs(0))))
    leaves, treedef = jax.tree.flatten(state)
    rng = np.random.default_rng(0)
    values = [jnp.asarray(0.1 * rng.standard_normal(x.shape), x.dtype) for x in leaves]
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, values))


def params(model):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def assert_same_params(a, b, rtol=0.0, atol=0.0):
    for x, y in zip(params(a), params(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------
# Learning


def test_mlp_reaches_bayes_risk_on_mixture():
    train = mixture_data(1, 50_000)
    held_out = mixture_data(2, 20_000)
    net = MLP(2, (64, 64), sigma_data=SIGMA_DATA, rngs=nnx.Rngs(0))
    result = train_denoiser(
        net, train, SIGMA, steps=600, batch_size=256, learning_rate=3e-3,
        eval_data=held_out[:2000], eval_every=300, progress_bar=False,
    )
    key = jax.random.key(3)
    err_net = denoising_errors(result.ema_model, held_out, SIGMA, key=key)
    eps = np.asarray(jax.random.normal(key, held_out.shape))
    y = held_out + SIGMA * eps
    err_bayes = np.sum((held_out - np.asarray(MIXTURE.denoiser(SIGMA)(y))) ** 2, axis=-1)
    # The best linear (Wiener) denoiser, c y with c = v / (v + sigma^2): the check below
    # must reject it, otherwise it would not test that the network learned the modes.
    v = SIGMA_DATA**2
    err_linear = np.sum((held_out - v / (v + SIGMA**2) * y) ** 2, axis=-1)

    def excess(err):
        d = err - err_bayes
        return d.mean(), d.std(ddof=1) / np.sqrt(d.size)

    bayes = err_bayes.mean()
    gap, se = excess(err_net)
    assert gap >= -Z * se, f"learned MSE below the Bayes risk: {gap:.4g} +- {se:.2g}"
    assert gap <= 0.10 * bayes + Z * se, (
        f"learned MSE {err_net.mean():.4f} vs Bayes risk {bayes:.4f} (ratio "
        f"{err_net.mean() / bayes:.4f}); allowed 10% + {Z} se = {0.10 * bayes + Z * se:.4f}"
    )
    linear_gap, linear_se = excess(err_linear)
    assert linear_gap > 0.10 * bayes + Z * linear_se

    assert result.loss_history.shape == (600,)
    np.testing.assert_array_equal(result.eval_steps, [300, 600])
    assert result.eval_mse.shape == (2, 1) and np.all(np.isfinite(result.eval_mse))


# ---------------------------------------------------------------------------
# Determinism, resume, checkpoints (all runs share one configuration, so the
# training step is compiled once)

N = 20
RUN = dict(steps=2 * N, batch_size=32, eval_every=N, progress_bar=False)


@pytest.fixture(scope="module")
def data():
    return mixture_data(4, 512), mixture_data(5, 128)


@pytest.fixture(scope="module")
def straight(data):
    """2N steps without interruption and without checkpoints."""
    x, x_eval = data
    return train_denoiser(tiny_mlp(), x, SIGMA, eval_data=x_eval, **RUN)


@pytest.fixture(scope="module")
def checkpointed(data, tmp_path_factory):
    """The same run with checkpoints at N and 2N."""
    x, x_eval = data
    directory = tmp_path_factory.mktemp("ckpt") / "run"
    result = train_denoiser(
        tiny_mlp(), x, SIGMA, eval_data=x_eval, checkpoint_dir=directory,
        checkpoint_every=N, normalisation={"scale": "identity"}, **RUN,
    )
    return result, directory


def assert_same_run(a, b, rtol=0.0, atol=0.0):
    np.testing.assert_allclose(a.loss_history, b.loss_history, rtol=rtol, atol=atol)
    np.testing.assert_array_equal(a.eval_steps, b.eval_steps)
    np.testing.assert_allclose(a.eval_mse, b.eval_mse, rtol=rtol, atol=atol)
    assert_same_params(a.model, b.model, rtol, atol)
    assert_same_params(a.ema_model, b.ema_model, rtol, atol)


def test_same_seed_same_run(straight, checkpointed, data):
    assert straight.loss_history.shape == (2 * N,)
    assert np.all(np.isfinite(straight.loss_history))
    assert_same_run(straight, checkpointed[0])
    x, x_eval = data
    other = train_denoiser(tiny_mlp(), x, SIGMA, eval_data=x_eval, seed=1, **RUN)
    assert not np.allclose(other.loss_history, straight.loss_history)


def test_resume_equals_uninterrupted(straight, checkpointed, data, tmp_path):
    _, directory = checkpointed
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(directory, resumed_dir)
    shutil.rmtree(resumed_dir / f"step_{2 * N:08d}")  # interrupted after step N
    x, x_eval = data
    # A different initialisation: everything must come from the checkpoint.
    resumed = train_denoiser(
        tiny_mlp(seed=123), x, SIGMA, eval_data=x_eval, checkpoint_dir=resumed_dir,
        checkpoint_every=N, normalisation={"scale": "identity"}, **RUN,
    )
    assert_same_run(straight, resumed, rtol=1e-6, atol=1e-7)
    # A finished run is returned from its checkpoint without training.
    again = train_denoiser(
        tiny_mlp(seed=7), x, SIGMA, eval_data=x_eval, checkpoint_dir=resumed_dir,
        checkpoint_every=N, normalisation={"scale": "identity"}, **RUN,
    )
    assert_same_run(resumed, again)


def test_finished_run_says_so_once_without_a_bar(checkpointed, data, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(checkpointed[1], run)
    x, x_eval = data
    capsys.readouterr()
    again = train_denoiser(tiny_mlp(), x, SIGMA, eval_data=x_eval, checkpoint_dir=run, checkpoint_every=N,
                           normalisation={"scale": "identity"}, **{**RUN, "progress_bar": True})
    assert_same_run(checkpointed[0], again)
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"train: the run in {run} is already complete at step {2 * N}; "
        f"to train it further, pass steps > {2 * N} (CLI: a larger --steps)"
    ]


def test_resume_with_other_settings_raises(checkpointed, data):
    _, directory = checkpointed
    x, x_eval = data
    with pytest.raises(CheckpointError, match="batch_size"):
        train_denoiser(
            tiny_mlp(), x, SIGMA, checkpoint_dir=directory,
            **{**RUN, "batch_size": 16},
        )


def test_checkpoint_round_trip_and_metadata(checkpointed):
    result, directory = checkpointed
    loaded = load_denoiser(directory)  # the latest checkpoint of a training run
    y = jnp.asarray(np.random.default_rng(0).normal(size=(7, 2)), jnp.float32)
    np.testing.assert_array_equal(apply(loaded, y), apply(result.ema_model, y))
    np.testing.assert_array_equal(apply(loaded, y[0]), apply(result.ema_model, y[0]))
    assert isinstance(loaded, MLP) and loaded.sigma == SIGMA
    meta = checkpoint_metadata(directory)
    assert meta["architecture"] == "MLP"
    assert meta["config"] == result.ema_model.config
    assert meta["sigma"] == SIGMA and meta["data_shape"] == [2]
    assert meta["step"] == 2 * N and meta["normalisation"] == {"scale": "identity"}
    assert meta["library_version"] and meta["train"]["batch_size"] == 32
    assert sorted(p.name for p in directory.iterdir()) == [f"step_{N:08d}", f"step_{2 * N:08d}"]


def test_unet_noise_conditional_train_save_load(tmp_path):
    images = np.random.default_rng(0).uniform(size=(16, 8, 8, 1)).astype(np.float32)
    # One resolution level keeps the compile short; test_denoisers covers deeper U-Nets.
    net = numpy_init(UNet, 1, (4,), 2, noise_conditional=True, embed_dim=8)
    result = train_denoiser(
        net, images, (0.1, 1.0), steps=2, batch_size=4, eval_data=images[:4],
        eval_every=2, progress_bar=False,
    )
    assert result.eval_mse.shape == (1, 3) and np.all(np.isfinite(result.eval_mse))
    np.testing.assert_allclose(result.eval_sigmas, [0.1, np.sqrt(0.1), 1.0], rtol=1e-6)
    path = save_checkpoint(
        tmp_path / "unet", result.ema_model, step=2,
        metadata={
            "sigma": [0.1, 1.0],
            "data_shape": [8, 8, 1],
            "normalisation": {"pixel_range": [0, 1]},
        },
    )
    loaded = load_denoiser(path)
    apply_s = nnx.jit(lambda m, y, s: m(y, s))
    s = jnp.array([0.1, 0.5, 1.0, 0.2])
    np.testing.assert_array_equal(
        apply_s(loaded, images[:4], s), apply_s(result.ema_model, images[:4], s)
    )
    assert checkpoint_metadata(path)["sigma"] == [0.1, 1.0]
    with pytest.raises(FileExistsError):
        save_checkpoint(path, result.ema_model)


# ---------------------------------------------------------------------------
# Damaged checkpoints


@pytest.fixture
def ckpt(checkpointed, tmp_path):
    """A private copy of the step-N checkpoint."""
    _, directory = checkpointed
    path = tmp_path / "ckpt"
    shutil.copytree(directory / f"step_{N:08d}", path)
    return path


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_denoiser(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        load_denoiser(tmp_path / "empty")


def test_partial_checkpoints(ckpt):
    shutil.rmtree(ckpt / "weights")
    with pytest.raises(CheckpointError, match="without weights"):
        load_denoiser(ckpt)


def test_weights_without_metadata(ckpt):
    (ckpt / "metadata.json").unlink()
    with pytest.raises(CheckpointError, match="without metadata.json"):
        load_denoiser(ckpt)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: "{not json", "not valid JSON"),
        (lambda m: json.dumps([1, 2]), "expected an object"),
        (lambda m: json.dumps({**m, "architecture": "Transformer"}), "unknown architecture"),
        (lambda m: json.dumps({k: v for k, v in m.items() if k != "config"}), "config"),
        (lambda m: json.dumps({**m, "config": {**m["config"], "hidden": [32, 16]}}), "shape"),
        (lambda m: json.dumps({**m, "config": {**m["config"], "dim": -1}}), "invalid MLP config"),
    ],
)
def test_corrupt_metadata(ckpt, edit, message):
    meta = json.loads((ckpt / "metadata.json").read_text())
    (ckpt / "metadata.json").write_text(edit(meta))
    with pytest.raises(CheckpointError, match=message):
        load_denoiser(ckpt)


def test_corrupt_weight_files(ckpt):
    rng = np.random.default_rng(0)
    for file in (ckpt / "weights").rglob("*"):
        if file.is_file():
            file.write_bytes(rng.bytes(max(file.stat().st_size, 16)))
    with pytest.raises(CheckpointError, match="damaged checkpoint .*SHA-256"):
        load_denoiser(ckpt)
    # Checkpoints without recorded digests (older ones) are still checked by Orbax.
    meta = json.loads((ckpt / "metadata.json").read_text())
    del meta["files"]
    (ckpt / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="cannot restore"):
        load_denoiser(ckpt)


def test_resume_from_corrupt_checkpoint_raises(ckpt, data, tmp_path):
    directory = tmp_path / "run"
    directory.mkdir()
    shutil.move(ckpt, directory / f"step_{N:08d}")
    shutil.rmtree(directory / f"step_{N:08d}" / "train_state")
    x, _ = data
    with pytest.raises(CheckpointError, match="train_state"):
        train_denoiser(tiny_mlp(), x, SIGMA, checkpoint_dir=directory, **RUN)


# ---------------------------------------------------------------------------
# Data parallelism

_DATA_PARALLEL_SCRIPT = """
import sys
import jax, numpy as np
from flax import nnx
assert jax.local_device_count() == 2, jax.local_devices()
from numpyro_wjs.nn.denoisers import MLP
from numpyro_wjs.nn.train import train_denoiser
d = np.load(sys.argv[1])
net = MLP(2, (16, 16), sigma_data={sigma_data}, rngs=nnx.Rngs(0))
r = train_denoiser(net, d["x"], {sigma}, eval_data=d["x_eval"], steps={steps},
                   batch_size={batch_size}, eval_every={eval_every}, progress_bar=False)
leaf = jax.tree.leaves(nnx.state(r.ema_model, nnx.Param))[0]
assert len(leaf.sharding.device_set) == 2, leaf.sharding
np.savez(sys.argv[2], losses=r.loss_history, eval_mse=r.eval_mse,
         *[np.asarray(p) for p in jax.tree.leaves(nnx.state(r.ema_model, nnx.Param))])
"""


def test_data_parallel_matches_single_device(straight, data, tmp_path):
    x, x_eval = data
    np.savez(tmp_path / "data.npz", x=x, x_eval=x_eval)
    script = _DATA_PARALLEL_SCRIPT.format(sigma_data=SIGMA_DATA, sigma=SIGMA, **RUN)
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "data.npz"), str(tmp_path / "out.npz")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    # Only the order of the batch reduction differs: float32 rounding, amplified a
    # little by 2N Adam steps.
    np.testing.assert_allclose(out["losses"], straight.loss_history, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["eval_mse"], straight.eval_mse, rtol=1e-4)
    for i, p in enumerate(params(straight.ema_model)):
        np.testing.assert_allclose(out[f"arr_{i}"], p, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    "change, error, message",
    [
        (dict(sigma=0.0), ValueError, "sigma"),
        (dict(sigma=-1.0), ValueError, "sigma"),
        (dict(sigma=float("nan")), ValueError, "sigma"),
        (dict(sigma=(1.0, 0.5)), ValueError, "lo < hi"),
        (dict(steps=0), ValueError, "steps"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(data=np.zeros((10, 3), np.float32)), ValueError, r"\(\.\.\., 2\)"),
        (dict(data=np.zeros((10, 2, 1), np.float32)), ValueError, "event dimension"),
        (dict(data=np.full((10, 2), np.nan, np.float32)), ValueError, "NaN"),
        (dict(data=np.zeros((10, 2), np.int32)), TypeError, "floating"),
        (dict(eval_data=np.zeros((4, 5), np.float32)), ValueError, r"\(\.\.\., 2\)"),
        (dict(ema_decay=1.0), ValueError, "ema_decay"),
        (dict(model="net"), TypeError, "NNX module"),
    ],
)
def test_bad_inputs(change, error, message):
    args = dict(model=tiny_mlp(), data=np.zeros((10, 2), np.float32), sigma=0.5, steps=5)
    args.update(change)
    with pytest.raises(error, match=message):
        train_denoiser(**args, progress_bar=False)


def test_sigma_must_match_model():
    x = np.zeros((10, 2), np.float32)
    with pytest.raises(ValueError, match="noise-conditional"):
        train_denoiser(MLP(2, (4,), noise_conditional=True, rngs=nnx.Rngs(0)), x, 0.5, steps=1)
    with pytest.raises(ValueError, match="fixed-sigma"):
        train_denoiser(tiny_mlp(), x, (0.1, 1.0), steps=1)
    with pytest.raises(ValueError, match="built for sigma=0.3"):
        train_denoiser(MLP(2, (4,), sigma=0.3, rngs=nnx.Rngs(0)), x, 0.5, steps=1)


def test_divergence_raises(data):
    x, _ = data
    with pytest.raises(FloatingPointError, match="loss became"):
        train_denoiser(tiny_mlp(), np.full_like(x, 1e30), SIGMA, **{**RUN, "eval_every": None})


# ---------------------------------------------------------------------------
# Networks of the user's own, iterators of batches, continuing, callbacks


@register_architecture
class ResidualNet(nnx.Module):
    """A user's fixed-sigma network, not from this package: ``y + F(y)``."""

    def __init__(self, dim, width, *, rngs):
        self.dim, self.width = dim, width
        self.inner = nnx.Linear(dim, width, rngs=rngs)
        self.outer = nnx.Linear(width, dim, rngs=rngs)

    @property
    def config(self):
        return {"dim": self.dim, "width": self.width}

    def __call__(self, y):
        return y + self.outer(nnx.tanh(self.inner(y)))


class ConditionalNet(nnx.Module):
    """A user's noise-conditional network ``F(y, log s)``, never registered."""

    def __init__(self, dim, *, rngs):
        self.linear = nnx.Linear(dim + 1, dim, rngs=rngs)

    def __call__(self, y, s):
        return self.linear(jnp.concatenate([y, jnp.log(s)[:, None]], axis=-1))


USER_RUN = dict(batch_size=32, eval_every=10, checkpoint_every=10, progress_bar=False)


def test_user_network_trains_checkpoints_resumes_continues_and_loads(data, tmp_path):
    x, x_eval = data
    straight = train_denoiser(ResidualNet(2, 8, rngs=nnx.Rngs(0)), x, SIGMA, eval_data=x_eval,
                              steps=30, **USER_RUN)
    run = tmp_path / "run"
    first = train_denoiser(ResidualNet(2, 8, rngs=nnx.Rngs(0)), x, SIGMA, eval_data=x_eval,
                           steps=20, checkpoint_dir=run, **USER_RUN)
    assert first.loss_history.shape == (20,)
    loaded = load_denoiser(run)
    assert isinstance(loaded, ResidualNet) and loaded.config == {"dim": 2, "width": 8}
    np.testing.assert_array_equal(apply(loaded, x_eval), apply(first.ema_model, x_eval))
    # Continue the finished 20-step run to 30 steps: the schedule is stretched to 30.
    continued = train_denoiser(ResidualNet(2, 8, rngs=nnx.Rngs(5)), x, SIGMA, eval_data=x_eval,
                               steps=30, checkpoint_dir=run, warmup_steps=2, **USER_RUN)
    np.testing.assert_array_equal(continued.loss_history[:20], first.loss_history)
    assert continued.loss_history.shape == (30,) and continued.eval_steps.tolist() == [10, 20, 30]
    meta = checkpoint_metadata(run)
    assert meta["step"] == 30 and meta["train"]["steps"] == 30
    assert meta["train"]["continued_from"] == [20] and meta["architecture"] == "ResidualNet"
    # The first 20 steps used the 20-step schedule, so the curve departs from a 30-step run.
    np.testing.assert_array_equal(continued.loss_history[:2], straight.loss_history[:2])
    # Resume an interrupted continuation from step 20: the same result.
    shutil.rmtree(run / f"step_{30:08d}")
    resumed = train_denoiser(ResidualNet(2, 8, rngs=nnx.Rngs(9)), x, SIGMA, eval_data=x_eval,
                             steps=30, checkpoint_dir=run, warmup_steps=2, **USER_RUN)
    assert_same_run(continued, resumed, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(apply(load_denoiser(run), x_eval), apply(resumed.ema_model, x_eval))
    assert checkpoint_metadata(run)["train"]["continued_from"] == [20]


def test_user_noise_conditional_network_and_unregistered_checkpoint(data, tmp_path):
    x, x_eval = data
    net = ConditionalNet(2, rngs=nnx.Rngs(0))
    result = train_denoiser(net, x, (0.2, 1.0), steps=4, batch_size=8, eval_data=x_eval,
                            eval_every=4, progress_bar=False)
    assert result.eval_mse.shape == (1, 3) and np.all(np.isfinite(result.eval_mse))
    with pytest.raises(TypeError, match=r"register_architecture\(ConditionalNet\)"):
        train_denoiser(net, x, (0.2, 1.0), steps=4, checkpoint_dir=tmp_path / "c", progress_bar=False)
    assert not (tmp_path / "c").exists()
    with pytest.raises(TypeError, match="register_architecture"):
        save_checkpoint(tmp_path / "d", net)


def test_registry_refuses_a_taken_name():
    class MLP(nnx.Module):  # noqa: N801 - the clash is the point
        pass

    with pytest.raises(ValueError, match="taken"):
        register_architecture(MLP)
    with pytest.raises(TypeError, match="nnx.Module subclass"):
        register_architecture(len)


def batches_like_array(x, seed, batch_size, steps):
    """The batches train_denoiser draws from the array ``x`` (train_iteration's indices)."""
    train_key = jax.random.split(jax.random.key(seed))[0]
    for step in range(steps):
        key_batch = jax.random.split(jax.random.fold_in(train_key, step))[0]
        yield np.asarray(x)[np.asarray(jax.random.randint(key_batch, (batch_size,), 0, x.shape[0]))]


def test_iterator_of_batches_matches_array(straight, data):
    x, x_eval = data
    stream = batches_like_array(x, 0, RUN["batch_size"], RUN["steps"])
    result = train_denoiser(tiny_mlp(), stream, SIGMA, eval_data=x_eval, **RUN)
    # Same batches and noise: bit-identical on XLA:CPU; the tolerance leaves room for
    # backends that fuse the batch gather (inside the compiled step for an array, on
    # the host for an iterator) differently.
    assert_same_run(straight, result, rtol=1e-5, atol=1e-6)


def test_iterator_errors(data):
    x, _ = data
    with pytest.raises(ValueError, match="ran out of batches at step 3"):
        train_denoiser(tiny_mlp(), iter([x[:8]] * 3), SIGMA, steps=5, batch_size=8, progress_bar=False)
    with pytest.raises(ValueError, match="drop_remainder"):
        train_denoiser(tiny_mlp(), iter([x[:8], x[:5]]), SIGMA, steps=2, batch_size=8,
                       progress_bar=False)
    with pytest.raises(ValueError, match="no batches"):
        train_denoiser(tiny_mlp(), iter([]), SIGMA, steps=2, progress_bar=False)


def test_callback_and_progress_bar_show_heldout_mse(data, capsys):
    x, x_eval = data
    seen = []
    result = train_denoiser(tiny_mlp(), x, SIGMA, eval_data=x_eval, callback=lambda *a: seen.append(a),
                            **{**RUN, "progress_bar": True})
    assert [step for step, _ in seen] == [N, 2 * N]
    assert all(set(m) == {"loss", "images_per_second", "heldout_mse"} for _, m in seen)
    assert all(m["images_per_second"] > 0 for _, m in seen)
    assert seen[-1][1]["heldout_mse"] == {"1": pytest.approx(result.eval_mse[-1, 0])}
    assert f"heldout_mse={result.eval_mse[-1, 0]:.4g}" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Noise levels of noise-conditional training


class _RecordsNoise:
    """Stands in for a noise-conditional network: records ``s`` and returns zeros."""

    noise_conditional = True

    def __call__(self, y, s):
        self.s = np.asarray(s)
        return jnp.zeros_like(y)


@pytest.mark.parametrize("noise_levels", [None, (np.log(0.6), 0.7)])
def test_noise_levels_follow_their_distribution_within_the_range(noise_levels):
    from scipy import stats

    lo, hi, n = 0.05, 1.2, 20_000
    stub = _RecordsNoise()
    train_module.loss_fn(stub, jnp.zeros((n, 2)), jax.random.key(0), jnp.array([lo, hi]), noise_levels)
    log_s = np.log(stub.s)
    assert log_s.shape == (n,) and lo <= stub.s.min() and stub.s.max() <= hi * (1 + 1e-6)
    if noise_levels is None:
        exact = stats.uniform(np.log(lo), np.log(hi) - np.log(lo))
    else:
        m, v = noise_levels
        exact = stats.truncnorm((np.log(lo) - m) / v, (np.log(hi) - m) / v, loc=m, scale=v)
    assert abs(log_s.mean() - exact.mean()) < Z * exact.std() / np.sqrt(n)
    # the share above ln 0.7, a binomial proportion
    p = exact.sf(np.log(0.7))
    assert abs(np.mean(log_s > np.log(0.7)) - p) < Z * np.sqrt(p * (1 - p) / n)


def test_noise_levels_are_part_of_the_run(data, tmp_path):
    x, x_eval = data
    net = lambda: MLP(2, (8,), noise_conditional=True, sigma_data=SIGMA_DATA, rngs=nnx.Rngs(0))  # noqa: E731
    run = dict(steps=4, batch_size=16, progress_bar=False, checkpoint_dir=tmp_path / "run")
    result = train_denoiser(net(), x, (0.1, 2.0), noise_levels=(0.0, 0.5), eval_data=x_eval,
                            eval_sigmas=[0.3, 1.0], **run)
    np.testing.assert_array_equal(result.eval_sigmas, [0.3, 1.0])
    assert checkpoint_metadata(tmp_path / "run")["train"]["noise_levels"] == [0.0, 0.5]
    for other in [(0.0, 0.6), None]:
        with pytest.raises(CheckpointError, match="noise_levels"):
            train_denoiser(net(), x, (0.1, 2.0), noise_levels=other, **{**run, "steps": 8})
    with pytest.raises(ValueError, match="sigma range"):
        train_denoiser(tiny_mlp(), x, SIGMA, noise_levels=(0.0, 0.5), steps=2, progress_bar=False)
    with pytest.raises(ValueError, match="std > 0"):
        train_denoiser(net(), x, (0.1, 2.0), noise_levels=(0.0, 0.0), steps=2, progress_bar=False)


# ---------------------------------------------------------------------------
# The user's files: saved models, the package, killed saves, damaged checkpoints


def test_saved_model_is_never_shadowed(data, tmp_path):
    x, _ = data
    out = tmp_path / "out"
    save_checkpoint(out, MLP(2, (8,), sigma=0.2, rngs=nnx.Rngs(0)))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        train_denoiser(tiny_mlp(), x, SIGMA, checkpoint_dir=out, **RUN)
    assert load_denoiser(out).sigma == 0.2
    result = train_denoiser(tiny_mlp(), x, SIGMA, checkpoint_dir=out, overwrite=True, **RUN)
    loaded = load_denoiser(out)
    assert loaded.sigma == SIGMA and loaded.config == result.ema_model.config
    assert not (out / "metadata.json").exists() and not (out / "weights").exists()


def test_other_run_refused_unless_overwrite(checkpointed, data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(checkpointed[1], run)
    x, _ = data
    with pytest.raises(CheckpointError, match="overwrite=True"):
        train_denoiser(tiny_mlp(), x, SIGMA, checkpoint_dir=run, **{**RUN, "batch_size": 16})
    result = train_denoiser(tiny_mlp(), x, SIGMA, checkpoint_dir=run, overwrite=True,
                            **{**RUN, "batch_size": 16})
    assert checkpoint_metadata(run)["train"]["batch_size"] == 16 and result.loss_history.shape == (2 * N,)


def test_never_trains_inside_the_package(data):
    x, _ = data
    target = Path(train_module.__file__).parent / "pretrained" / "mnist_denoiser"
    before = sorted(p.name for p in target.iterdir())
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="inside the installed numpyro_wjs package"):
            train_denoiser(tiny_mlp(), x, SIGMA, checkpoint_dir=target, overwrite=overwrite, **RUN)
    assert sorted(p.name for p in target.iterdir()) == before


def test_killed_save_leaves_no_temporary_folder(checkpointed, data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(checkpointed[1], run)
    leftover = run / f"step_{3 * N:08d}.orbax-checkpoint-tmp-1234"
    (leftover / "weights").mkdir(parents=True)
    x, _ = data
    train_denoiser(tiny_mlp(), x, SIGMA, checkpoint_dir=run, **RUN)
    assert not leftover.exists()


def test_interrupt_during_save_waits_for_the_save(tmp_path, monkeypatch):
    """Ctrl-C in the middle of a save: the checkpoint is completed, then the interrupt
    is raised, and no temporary folder remains."""
    real = checkpoints.write_metadata

    def interrupted(path, metadata):
        os.kill(os.getpid(), signal.SIGINT)
        return real(path, metadata)

    monkeypatch.setattr(checkpoints, "write_metadata", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "c", tiny_mlp())
    assert load_denoiser(tmp_path / "c").config == tiny_mlp().config
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def test_damaged_latest_checkpoint_falls_back(checkpointed, straight, data, tmp_path, capfd):
    run = tmp_path / "run"
    shutil.copytree(checkpointed[1], run)
    latest = run / f"step_{2 * N:08d}"
    for file in (latest / "weights").rglob("*"):
        if file.is_file():
            file.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="skipping damaged checkpoint"):
        loaded = load_denoiser(run)
    with pytest.warns(UserWarning, match="SHA-256"):
        assert checkpoint_metadata(run)["step"] == N
    assert "Event loop is closed" not in capfd.readouterr().err
    x, x_eval = data
    with pytest.warns(UserWarning, match=f"step_{2 * N:08d}"):
        resumed = train_denoiser(tiny_mlp(), x, SIGMA, checkpoint_dir=run, eval_data=x_eval,
                                 checkpoint_every=N, normalisation={"scale": "identity"},
                                 **{**RUN, "steps": 2 * N})
    assert_same_run(straight, resumed, rtol=1e-6, atol=1e-7)
    y = jnp.zeros((3, 2), jnp.float32)
    assert not np.array_equal(apply(loaded, y), apply(resumed.ema_model, y))  # step N weights


def test_classifier_checkpoint_names_its_loader():
    from numpyro_wjs.nn.classifier import PRETRAINED_CLASSIFIER_DIR

    with pytest.raises(CheckpointError, match="load_classifier"):
        load_denoiser(PRETRAINED_CLASSIFIER_DIR)
