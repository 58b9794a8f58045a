"""Chains sharded over a device mesh, on one process or many (``jax.distributed``).

``sharded()`` is a ``chain_method`` for ``numpyro.infer.MCMC``: the ``C`` chains run as
one vectorized computation (``jax.vmap`` of NumPyro's one-chain run) whose chain axis is
split over the devices of a ``jax.sharding.Mesh`` with ``jax.shard_map``, each device
running ``C / n`` chains. It works for every kernel (the package's and NumPyro's), as
``chain_method=jax.vmap`` does, and needs nothing from the kernel.

**Layout-invariant draws.** Chain ``c`` uses key ``c`` of the run's keys and never
talks to another chain, so its draws do not depend on how many devices or processes
share the chains; on CPU they are bit-identical across 1, 2 and 4 devices and across
2 processes x 2 devices (``tests/test_parallel.py``).

**Several processes.** Start each process with ``jax.distributed.initialize(...)``,
then call ``MCMC.run`` with the same key and settings everywhere. The mesh spans all
global devices; each process returns only its own block of chains, so
``get_samples()``, ``last_state`` and ``arviz.from_numpyro`` hold that block
(``local_chains`` says which); ``gather`` collects the full chain axis on every process
and ``gather_datatree`` makes one ArviZ DataTree of all chains.

Example
-------
>>> import jax, numpyro, numpyro.distributions as dist
>>> from numpyro.infer import MCMC
>>> from numpyro_wjs import MALA
>>> from numpyro_wjs.parallel import sharded
>>> def model():
...     numpyro.sample("x", dist.Normal(0.0, 1.0))
>>> mcmc = MCMC(MALA(model), num_warmup=20, num_samples=10, num_chains=2,
...             chain_method=sharded(), progress_bar=False)
>>> mcmc.run(jax.random.key(0))
>>> mcmc.get_samples(group_by_chain=True)["x"].shape
(2, 10)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["ShardedChains", "chain_mesh", "gather", "gather_datatree", "local_chains", "sharded"]


def chain_mesh(axis: str = "chains") -> Mesh:
    """A one-axis mesh named ``axis`` over all devices of all processes (``jax.devices()``)."""
    return Mesh(np.array(jax.devices()), (axis,))


def local_chains(num_chains: int, mesh: Mesh | None = None, axis: str = "chains") -> range:
    """The chains this process runs (and returns) when ``num_chains`` are sharded over ``axis``."""
    mesh = chain_mesh(axis) if mesh is None else mesh
    _check_divisible(num_chains, mesh, axis)
    per_device = num_chains // mesh.shape[axis]
    spec = PartitionSpec(axis)
    blocks = NamedSharding(mesh, spec).addressable_devices_indices_map((num_chains,)).values()
    starts = sorted({(b[0].start or 0) for b in blocks})
    if starts != list(range(starts[0], starts[0] + per_device * len(starts), per_device)):
        raise ValueError(f"the mesh gives this process chain blocks {starts} that are not contiguous; "
                         "order the mesh's devices by process (as `jax.devices()` does).")
    return range(starts[0], starts[-1] + per_device)


def gather(tree):
    """``tree`` of process-local chain blocks (leading axis) -> the full chain axis, as NumPy
    arrays, on every process (``multihost_utils.process_allgather``); one process: unchanged."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, _key_data(tree))
    return multihost_utils.process_allgather(_key_data(tree), tiled=True)


def gather_datatree(mcmc):
    """An ArviZ DataTree of all chains of a sharded ``mcmc`` run, on every process: ``posterior``
    (``get_samples``) and ``sample_stats`` (``get_extra_fields``), each ``gather``-ed.
    Every process must call it (it is a collective)."""
    import arviz as az

    posterior = gather(mcmc.get_samples(group_by_chain=True))
    stats = gather(mcmc.get_extra_fields(group_by_chain=True))
    return az.from_dict({"posterior": dict(posterior), "sample_stats": dict(stats)})


@dataclass(frozen=True)
class ShardedChains:
    """The ``chain_method`` built by ``sharded``: ``fn -> run(map_args)`` for ``numpyro.infer.MCMC``.

    ``mesh``: the mesh (``None``: ``chain_mesh(axis)``, built at run time); ``axis``: the mesh
    axis the chains are split over (other mesh axes hold replicas).
    """

    mesh: Mesh | None = None
    axis: str = "chains"

    def __call__(self, fn):
        """``fn`` maps one chain's ``(rng_key, init_state, init_params)`` to ``(draws, last_state)``."""

        def run(map_args):
            mesh = chain_mesh(self.axis) if self.mesh is None else self.mesh
            if self.axis not in mesh.shape:
                raise ValueError(f"sharded: the mesh has axes {tuple(mesh.shape)}, not {self.axis!r}.")
            num_chains = _num_chains(map_args, mesh, self.axis)
            spec = PartitionSpec(self.axis)
            args, impls = _unwrap_keys(map_args)

            out_impls = []  # the outputs' key types, recorded when `shard` is traced

            def shard(local):
                out, kinds = _unwrap_keys(jax.vmap(fn)(_wrap_keys(local, impls)))
                out_impls.append(kinds)
                return out

            mapped = jax.jit(jax.shard_map(shard, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False))
            with warnings.catch_warnings():  # fori_collect donates buffers that XLA cannot reuse here
                warnings.filterwarnings("ignore", "Some donated buffers were not usable")
                out = mapped(_to_global(args, mesh, spec, num_chains))
            if jax.process_count() > 1:
                out = multihost_utils.global_array_to_host_local_array(out, mesh, spec)
            return _wrap_keys(out, out_impls[0])

        return run


def sharded(mesh: Mesh | None = None, axis: str = "chains") -> ShardedChains:
    """A ``chain_method`` for ``numpyro.infer.MCMC`` that shards the chains over ``mesh``.

    Parameters
    ----------
    mesh
        A ``jax.sharding.Mesh`` with an axis named ``axis``; default: all devices of all
        processes in one axis (``chain_mesh``).
    axis
        The mesh axis that splits the chains; ``num_chains`` must be a multiple of its size.

    Returns
    -------
    ShardedChains
        Pass it as ``MCMC(kernel, num_chains=C, chain_method=sharded())``. With several
        processes, each returns its own chains (``local_chains``; ``gather`` merges them).
    """
    return ShardedChains(mesh, axis)


def _check_divisible(num_chains: int, mesh: Mesh, axis: str) -> None:
    n = mesh.shape[axis]
    if num_chains % n:
        up = -(-num_chains // n) * n
        raise ValueError(
            f"sharded: {num_chains} chains cannot be split evenly over the {n} devices of mesh axis "
            f"{axis!r}; use a multiple of {n} (e.g. num_chains={up}) or a smaller mesh."
        )


def _num_chains(map_args, mesh: Mesh, axis: str) -> int:
    """The global number of chains of NumPyro's ``(rng_key, init_state, init_params)``. With several
    processes an ``init_state`` (a ``last_state`` that ``sharded`` returned) is this process's block."""
    rng_key, init_state, _ = map_args
    num_chains = jax.tree.leaves(rng_key)[0].shape[0]
    if jax.process_count() > 1 and init_state is not None:
        n = mesh.shape[axis]
        num_chains = jax.tree.leaves(init_state)[0].shape[0] * n // len(local_chains(n, mesh, axis))
    _check_divisible(num_chains, mesh, axis)
    return num_chains


def _is_key(a) -> bool:
    return hasattr(a, "dtype") and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)


def _key_data(tree):
    return jax.tree.map(lambda a: jax.random.key_data(a) if _is_key(a) else a, tree)


def _unwrap_keys(tree):
    """``(tree with typed keys as their raw data, the key implementation of each leaf or None)``."""
    impls = jax.tree.map(lambda a: jax.random.key_impl(a) if _is_key(a) else None, tree)
    return _key_data(tree), impls


def _wrap_keys(tree, impls):
    return jax.tree.map(
        lambda impl, a: a if impl is None else jax.random.wrap_key_data(a, impl=impl),
        impls, tree, is_leaf=lambda x: x is None,
    )


def _to_global(tree, mesh: Mesh, spec: PartitionSpec, num_chains: int):
    """Inputs as arrays sharded over the chain axis. Several processes: a leaf of ``num_chains``
    rows is the full axis (the same on every process); one of this process's block size is
    that block (a ``last_state`` returned by ``sharded``)."""
    sharding = NamedSharding(mesh, spec)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    block = len(local_chains(num_chains, mesh, spec[0]))

    def one(a):
        a = np.asarray(a)
        if a.shape[0] == num_chains:
            return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])
        if a.shape[0] == block:
            return jax.make_array_from_process_local_data(sharding, a, (num_chains, *a.shape[1:]))
        raise ValueError(f"sharded: an input has {a.shape[0]} chains, expected {num_chains} "
                         f"(all) or {block} (this process's).")

    return jax.tree.map(one, tree)
