"""Draws streamed to a Zarr store (``numpyro_wjs.streaming``, ``numpyro-wjs sample``):
killed and resumed with no draw lost or repeated, flat memory, bad stores refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from numpyro.infer import MCMC

from numpyro_wjs import MALA, cli
from numpyro_wjs.streaming import DrawStore, StoreError, open_draws, stream_samples

#: ``resource`` reports the peak RSS of the run after the CLI returns.
_RUN = ("import resource, sys; from numpyro_wjs.cli import main; code = main(sys.argv[1:]); "
        "print('peak_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")


def _cli(*argv: str, devices: int = 1) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.Popen([sys.executable, "-c", _RUN, "sample", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def _draws_done(store) -> int:
    try:
        return json.loads((store / "x" / ".zarray").read_text())["shape"][1]
    except (OSError, ValueError):
        return 0


def test_killed_run_resumes_to_the_draws_of_an_uninterrupted_one(tmp_path):
    """Killed on 1 device, resumed with the chains sharded over 2, against a run over 4: the same draws."""
    args = ["--model", "demo", "--chains", "4", "--draws", "200", "--chunk", "10", "--thin", "2000",
            "--warmup", "50"]
    reference = _cli(*args, "--out", str(tmp_path / "whole.zarr"), devices=4)
    killed = _cli(*args, "--out", str(tmp_path / "killed.zarr"))
    deadline = time.monotonic() + 120
    while _draws_done(tmp_path / "killed.zarr") < 20 and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    done = _draws_done(tmp_path / "killed.zarr")
    assert killed.returncode == -signal.SIGKILL and 20 <= done < 200, "killed too late"
    partial = open_draws(tmp_path / "killed.zarr")["x"].values  # readable at its last commit
    assert partial.shape == (4, done, 2) and np.isfinite(partial).all()
    resumed = _cli(*args, "--out", str(tmp_path / "killed.zarr"), devices=2)
    for p, devices in ((resumed, 2), (reference, 4)):
        output, _ = p.communicate(timeout=180)
        assert p.returncode == 0, output[-2000:]
        assert f"{devices} device(s)" in output
    whole = open_draws(tmp_path / "whole.zarr")["x"].values
    assert whole.shape == (4, 200, 2)
    np.testing.assert_array_equal(open_draws(tmp_path / "killed.zarr")["x"].values, whole)


def test_peak_memory_does_not_grow_with_the_draws(tmp_path):
    """2,000 chains: 4,000 draws hold 64 MB, 200 draws 3.2 MB; the peak RSS differs by far less."""
    runs = {n: _cli("--model", "demo", "--chains", "2000", "--draws", str(n), "--chunk", "100", "--warmup", "10",
                    "--out", str(tmp_path / f"{n}.zarr")) for n in (200, 4000)}
    peak = {}
    for n, p in runs.items():
        output, _ = p.communicate(timeout=180)
        assert p.returncode == 0, output[-2000:]
        peak[n] = int(output.split("peak_kb")[-1].split()[0]) / 1024
    assert open_draws(tmp_path / "4000.zarr")["x"].shape == (2000, 4000, 2)
    assert peak[4000] - peak[200] < 16, peak


def _mcmc(chains=2):
    import numpyro
    import numpyro.distributions as dist

    def model():
        numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]))

    return MCMC(MALA(model), num_warmup=10, num_samples=1, num_chains=chains, chain_method="vectorized",
                progress_bar=False)


def test_a_store_of_other_settings_or_other_files_is_refused(tmp_path):
    store = tmp_path / "draws.zarr"
    stream_samples(_mcmc(), store, jax.random.key(0), 6, chunk_draws=4, progress=False)
    assert open_draws(store)["x"].shape == (2, 6, 2)
    with pytest.raises(StoreError, match=r"other settings \(num_chains: 2 there, 4 now"):
        stream_samples(_mcmc(4), store, jax.random.key(0), 6, chunk_draws=4, progress=False)
    stream_samples(_mcmc(), store, jax.random.key(0), 6, chunk_draws=4, progress=False)  # complete: a no-op
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty and holds no draws store"):
        DrawStore(tmp_path / "other", {}, 4)
    with pytest.raises(StoreError, match="site 'x' is stored as <f4 chunks \\[2, 4, 2\\]"):
        resumed = DrawStore(store, json.loads((store / ".zattrs").read_text())["numpyro_wjs"], 4)
        resumed.draws = 8  # as if after the second chunk: the next one has another event shape
        resumed.append({"x": np.zeros((2, 4, 3), np.float32)}, None)


def test_cli_samples_a_saved_denoiser_and_refuses_a_wrong_shape(tmp_path, capsys):
    from numpyro_wjs.nn.denoisers import MLP
    from numpyro_wjs.nn.train import save_checkpoint

    net = MLP(2, hidden=(8,), sigma=0.5, sigma_data=1.0, rngs=nnx.Rngs(0))
    save_checkpoint(tmp_path / "net", net)
    out = tmp_path / "wj.zarr"
    args = ["sample", "--denoiser", str(tmp_path / "net"), "--chains", "2", "--draws", "5", "--chunk", "2",
            "--warmup", "5", "--out", str(out)]
    assert cli.main(args) == 0
    x = open_draws(out)["x"].values
    assert x.shape == (2, 5, 2) and np.isfinite(x).all() and not jnp.allclose(x[:, 0], x[:, -1])
    assert cli.main([*args[:-2], "--shape", "3", "--out", str(tmp_path / "bad.zarr")]) == 2
    assert cli.main([*args[:-2], "--chains", "3", "--out", str(out)]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]  # the bars aside
    assert len(err) == 2 and "numpyro-wjs sample: error: --shape 3 does not fit the denoiser" in err[0]
    assert "other settings (num_chains: 2 there, 3 now" in err[1]
    assert open_draws(out)["x"].shape == (2, 5, 2)  # the refused run left the store as it was


MODEL_FILE = '''
import numpyro, numpyro.distributions as dist

def model():
    loc = numpyro.sample("loc", dist.Normal(3.0, 1.0))
    numpyro.sample("scale", dist.LogNormal(loc, 0.1))
'''


@pytest.mark.parametrize("kernel", ["MALT", "NUTS"])
def test_cli_samples_a_model_from_a_file(tmp_path, capsys, kernel):
    path = tmp_path / "my_model.py"
    path.write_text(MODEL_FILE)
    out = tmp_path / "m.zarr"
    args = ["sample", "--model", f"{path}:model", "--kernel", kernel, "--chains", "2", "--draws", "300",
            "--chunk", "100", "--warmup", "200", "--out", str(out)]
    assert cli.main(args) == 0
    draws = open_draws(out)
    assert draws["loc"].shape == (2, 300) and draws["scale"].shape == (2, 300)
    assert abs(float(draws["loc"].mean()) - 3.0) < 0.5  # N(3, 1), 600 draws: a few MCSE
    assert np.all(draws["scale"].values > 0)  # constrained values
    for bad, message in [(f"{tmp_path}/missing.py:model", "no file"), (f"{path}:other", "has no callable 'other'"),
                         ("model", "give demo, FILE.py:NAME")]:
        assert cli.main([*args[:2], bad, *args[3:-2], "--out", str(tmp_path / "bad.zarr")]) == 2
        assert message in capsys.readouterr().err
