"""Chains sharded over a mesh (``numpyro_wjs.parallel``): the same draws on every layout.

Device counts are fixed when JAX starts, so each layout runs this file as a script in
fresh processes: 1 device, 4 forced host devices, and 2 processes x 2 devices under
``jax.distributed`` (coordinator on 127.0.0.1, Gloo CPU collectives).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.sharding import Mesh
from numpyro.infer import MCMC

from numpyro_wjs import MALA
from numpyro_wjs.parallel import gather, gather_datatree, local_chains, sharded

CHAINS = 8


def model():
    numpyro.sample("x", dist.Normal(0.0, 1.0).expand([3]))
    numpyro.sample("s", dist.HalfNormal(1.0))


def _runs():
    """``{name: MCMC}`` factories of the runs compared across layouts."""
    from numpyro.infer import NUTS

    from numpyro_wjs import WalkJump

    w = jax.random.normal(jax.random.key(3), (6, 16)) / 4.0

    def denoiser(y):  # a small network: matrix products whose batch size is the per-device chains
        return y - 0.3 * jax.numpy.tanh(y @ w) @ w.T

    def mcmc(kernel):
        return MCMC(kernel, num_warmup=30, num_samples=10, num_chains=CHAINS, chain_method=sharded(),
                    progress_bar=False)

    return {
        "mala": (mcmc(MALA(model)), {}),
        "nuts": (mcmc(NUTS(model)), {}),
        "walkjump": (mcmc(WalkJump(denoiser, sigma=0.5)), {"init_params": np.zeros((CHAINS, 6), np.float32)}),
    }


def _worker(out: str, process_id: int, num_processes: int, port: int) -> None:
    """Run every case of ``_runs`` and save the gathered draws (process 0) to ``out``."""
    if num_processes > 1:
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id)
    draws = {}
    for name, (mcmc, kwargs) in _runs().items():
        if name == "nuts" and num_processes == 1 and jax.device_count() == 4:
            continue  # NUTS: 1 device against 2 processes x 2 devices (its compilation dominates the file)
        mcmc.run(jax.random.key(0), **kwargs)
        first = mcmc.get_samples(group_by_chain=True)
        assert len(jax.tree.leaves(first)[0]) == len(local_chains(CHAINS))
        if name == "mala":  # one DataTree of all chains, on every process
            tree = gather_datatree(mcmc)
            draws["mala_tree"] = tree["posterior"]["x"].values
            draws["mala_tree_diverging"] = tree["sample_stats"]["diverging"].values
        runs = [first]
        if name != "nuts":  # a second run continues from the (process-local) last state
            mcmc.post_warmup_state = mcmc.last_state
            mcmc.run(mcmc.last_state.rng_key, **kwargs)
            runs.append(mcmc.get_samples(group_by_chain=True))
        for i, samples in enumerate(runs):
            for site, value in jax.tree_util.tree_flatten_with_path(gather(samples))[0]:
                draws[f"{name}{i}{jax.tree_util.keystr(site)}"] = value
    if jax.device_count() == 4 and num_processes == 1:
        try:
            MCMC(MALA(model), num_warmup=1, num_samples=1, num_chains=6, chain_method=sharded()).run(
                jax.random.key(0))
        except ValueError as err:
            draws["error"] = np.array(str(err))
    if process_id == 0:
        np.savez(out, **draws)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path: Path, name: str, devices: int, processes: int) -> list[subprocess.Popen]:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_PLATFORMS": "cpu"}
    port = _free_port()
    return [
        subprocess.Popen([sys.executable, __file__, str(tmp_path / f"{name}.npz"), str(i), str(processes),
                          str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(processes)
    ]


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """``{layout: saved draws}`` for 1 device, 4 devices and 2 processes x 2 devices."""
    tmp = tmp_path_factory.mktemp("layouts")
    specs = {"1x1": (1, 1), "1x4": (4, 1), "2x2": (2, 2)}
    procs = {name: _launch(tmp, name, *spec) for name, spec in specs.items()}
    for name, group in procs.items():
        for p in group:
            output, _ = p.communicate(timeout=240)
            assert p.returncode == 0, f"{name}: {output[-3000:]}"
    return {name: dict(np.load(tmp / f"{name}.npz")) for name in specs}


def test_draws_are_bit_identical_on_every_layout(layouts):
    reference = layouts["1x1"]
    assert {k for k in reference if k.startswith(("mala", "nuts", "walkjump"))} >= {
        "mala0['x']", "mala1['s']", "nuts0['x']", "walkjump0['x']", "walkjump1['x']"}
    assert reference["mala_tree"].shape == (CHAINS, 10, 3)
    np.testing.assert_array_equal(reference["mala_tree"], reference["mala0['x']"])
    for name in ("1x4", "2x2"):
        for key, value in reference.items():
            if key.startswith("nuts") and name == "1x4":
                continue
            assert value.shape[0] == CHAINS
            np.testing.assert_array_equal(layouts[name][key], value, err_msg=f"{name} {key}")


def test_chains_not_a_multiple_of_the_devices_are_refused(layouts):
    message = str(layouts["1x4"]["error"])
    assert "6 chains cannot be split evenly over the 4 devices" in message and "num_chains=8" in message


def test_sharded_equals_vmap_and_reads_into_arviz():
    import arviz as az

    runs = {}
    for name, method in (("vmap", jax.vmap), ("sharded", sharded())):
        mcmc = MCMC(MALA(model), num_warmup=5, num_samples=5, num_chains=2, chain_method=method,
                    progress_bar=False)
        mcmc.run(jax.random.key(1))
        runs[name] = mcmc
    for site, value in runs["vmap"].get_samples(group_by_chain=True).items():
        np.testing.assert_array_equal(runs["sharded"].get_samples(group_by_chain=True)[site], value)
    posterior = az.from_numpyro(runs["sharded"])["posterior"]
    assert posterior["x"].shape == (2, 5, 3)
    assert local_chains(2) == range(2)
    np.testing.assert_array_equal(gather(runs["sharded"].get_samples())["s"], runs["vmap"].get_samples()["s"])


def test_a_mesh_without_the_axis_is_refused():
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    mcmc = MCMC(MALA(model), num_warmup=1, num_samples=1, num_chains=2, chain_method=sharded(mesh),
                progress_bar=False)
    with pytest.raises(ValueError, match="mesh has axes .*'data'.*not 'chains'"):
        mcmc.run(jax.random.key(0))


if __name__ == "__main__":
    _worker(sys.argv[1], *map(int, sys.argv[2:]))
