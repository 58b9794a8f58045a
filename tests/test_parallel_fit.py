"""``nn.fit`` over a mesh that spans two processes (``jax.distributed``, Gloo on CPU):
the loss curve of one process, orbax checkpoints written by both, and a resume."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

STEPS = 30


def _worker(out: str, process_id: int, num_processes: int, port: int, checkpoint_dir: str) -> None:
    """Train a small MLP denoiser on a mesh of all global devices; process 0 saves the losses."""
    import jax

    if num_processes > 1:
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id)
    from flax import nnx
    from jax.sharding import Mesh

    from numpyro_wjs.nn.denoisers import MLP
    from numpyro_wjs.nn.fit import TrainConfig, fit
    from numpyro_wjs.nn.train import DenoisingLoss

    data = np.random.default_rng(0).normal(size=(512, 4)).astype(np.float32)  # the same on every process
    net = MLP(4, hidden=(16,), sigma=0.5, sigma_data=1.0, rngs=nnx.Rngs(0))
    result = fit(net, DenoisingLoss(0.5), data, TrainConfig(steps=STEPS, batch_size=32),
                 mesh=Mesh(np.array(jax.devices()), ("data",)), progress_bar=False,
                 checkpoint_dir=checkpoint_dir or None, checkpoint_every=10)
    if process_id == 0:
        np.save(out, result.loss_history)


def _launch(out: Path, devices: int, processes: int, checkpoint_dir: Path | str = "") -> list[subprocess.Popen]:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [subprocess.Popen([sys.executable, __file__, str(out), str(i), str(processes), str(port),
                              str(checkpoint_dir)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True) for i in range(processes)]


def _wait(group: list[subprocess.Popen]) -> None:
    for p in group:
        output, _ = p.communicate(timeout=240)
        assert p.returncode == 0, output[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fit")
    one, two = _launch(tmp / "one.npy", 1, 1), _launch(tmp / "two.npy", 2, 2, tmp / "ckpt")
    _wait(one + two)
    shutil.rmtree(tmp / "ckpt" / f"step_{STEPS:08d}")  # as if both processes died after step 20's checkpoint
    _wait(_launch(tmp / "resumed.npy", 2, 2, tmp / "ckpt"))
    return tmp


def test_two_processes_follow_the_one_process_loss_curve(runs):
    one, two = np.load(runs / "one.npy"), np.load(runs / "two.npy")
    assert one.shape == two.shape == (STEPS,)
    # the batch mean is summed over 4 devices instead of 1: another order of float32 additions
    np.testing.assert_allclose(two, one, rtol=1e-6)


def test_a_two_process_run_resumes_from_its_last_checkpoint(runs):
    from numpyro_wjs.nn.train import load_denoiser

    np.testing.assert_array_equal(np.load(runs / "resumed.npy"), np.load(runs / "two.npy"))
    net = load_denoiser(runs / "ckpt")  # one process reads what two wrote
    assert np.isfinite(np.asarray(net(np.zeros(4, np.float32)))).all()


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
