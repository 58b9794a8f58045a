"""Draws streamed to disk a chunk at a time, resumable after the process is killed.

``DrawStore`` is a Zarr (format 2) directory: one array per site, shaped
``(chain, draw, *event)``, chunked along ``draw``, uncompressed, with xarray's
``_ARRAY_DIMENSIONS``; ``xarray.open_zarr`` reads it where ``zarr`` is installed and
``open_draws`` reads it with NumPy alone. ``stream_samples`` runs ``MCMC.warmup`` once,
then the kernel one chunk of draws at a time from the last state, so memory holds one
chunk whatever the number of draws.

**Commit protocol.** A chunk's files are written under temporary names and renamed;
then ``.progress.npz`` (draws done, the settings, the chains' last state) replaces the
previous one in one rename: that is the commit. Array shapes (``.zarray``) follow it.
A run killed at any point (even by SIGKILL) leaves the store readable at its last
commit, and ``stream_samples`` on the same store with the same settings continues
from that commit's state: no draw lost or repeated, and the draws are those of an
uninterrupted run.

Example
-------
>>> import jax, numpyro, numpyro.distributions as dist, tempfile
>>> from numpyro.infer import MCMC
>>> from numpyro_wjs import MALA
>>> def model():
...     numpyro.sample("x", dist.Normal(0.0, 1.0))
>>> mcmc = MCMC(MALA(model), num_warmup=20, num_samples=5, num_chains=2,
...             chain_method="vectorized", progress_bar=False)
>>> path = tempfile.mkdtemp() + "/draws.zarr"
>>> store = stream_samples(mcmc, path, jax.random.key(0), num_draws=12, chunk_draws=5, progress=False)
>>> open_draws(path)["x"].shape
(2, 12)
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["DrawStore", "StoreError", "open_draws", "stream_samples"]

#: The commit file: draws done, settings, the chains' last state.
PROGRESS = ".progress.npz"


class StoreError(ValueError):
    """A store that cannot be written with these settings (another run's, or not a store)."""


def _write_atomic(path: Path, data: bytes) -> None:
    """``data`` to ``path`` whole or not at all (a temporary file, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fill_value(dtype: np.dtype):
    return "NaN" if dtype.kind == "f" else (False if dtype.kind == "b" else 0)


class DrawStore:
    """A Zarr v2 directory of draws ``(chain, draw, *event)`` per site, appended a chunk at a time.

    Parameters
    ----------
    path
        The store's directory: new, empty, or a store written with the same ``settings``.
    settings
        JSON-serialisable description of the run (chains, draws, sampler, ...): a store
        with other settings is refused (``StoreError``), so draws of two runs never mix.
    chunk_draws
        Draws per chunk (and per ``MCMC.run``).
    """

    def __init__(self, path: str | os.PathLike, settings: Mapping[str, Any], chunk_draws: int):
        self.path = Path(path).expanduser()
        self.settings = json.loads(json.dumps({**settings, "chunk_draws": int(chunk_draws)}))
        self.chunk_draws = int(chunk_draws)
        self.draws = 0
        self._state = None
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"{str(self.path)!r} exists and is not a folder; choose another output.")
        progress = self.path / PROGRESS
        if progress.exists():
            self._resume(progress)
        elif self.path.is_dir() and any(self.path.iterdir()):
            raise StoreError(f"{str(self.path)!r} is not empty and holds no draws store; choose a new or "
                             "empty output folder.")
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.path / ".zgroup", json.dumps({"zarr_format": 2}).encode())
            _write_atomic(self.path / ".zattrs", json.dumps({"numpyro_wjs": self.settings}, indent=1).encode())

    def _resume(self, progress: Path) -> None:
        try:
            with np.load(progress) as saved:
                old = json.loads(str(saved["settings"]))
                self.draws = int(saved["draws"])
                self._state = {k: saved[k] for k in saved.files if k not in ("settings", "draws")}
        except (OSError, ValueError, KeyError) as err:
            raise StoreError(f"{progress} is unreadable ({err}); the store cannot be resumed.") from None
        if old != self.settings:
            diff = ", ".join(f"{k}: {old.get(k)!r} there, {self.settings.get(k)!r} now"
                             for k in sorted(set(old) | set(self.settings)) if old.get(k) != self.settings.get(k))
            raise StoreError(f"{str(self.path)!r} holds draws of a run with other settings ({diff}); "
                             "use the same settings to resume it, or choose a new output.")
        for name in self.sites():  # shapes follow the commit (a kill may have come in between)
            self._set_draws(name, self.draws)

    def sites(self) -> list[str]:
        """The sites stored so far."""
        return sorted(p.parent.name for p in self.path.glob("*/.zarray"))

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Site -> committed shape ``(chain, draw, *event)``, from the metadata alone."""
        return {name: tuple(json.loads((self.path / name / ".zarray").read_text())["shape"]) for name in self.sites()}

    def last_state(self):
        """The chains' state at the last commit (``None`` before the first); keys are typed again."""
        if self._state is None:
            return None
        treedef = pickle.loads(self._state["treedef"].tobytes())
        impls = json.loads(str(self._state["key_impls"]))
        leaves = [self._state[f"leaf{i}"] for i in range(treedef.num_leaves)]
        leaves = [a if impl is None else jax.random.wrap_key_data(a, impl=impl) for a, impl in zip(leaves, impls)]
        return jax.tree.unflatten(treedef, leaves)

    def append(self, draws: Mapping[str, Any], state) -> None:
        """Write ``draws`` (site -> ``(chain, n, *event)``, ``n <= chunk_draws``) as the next chunk
        and commit ``state``, the chains' state after the last of them."""
        draws = {k: np.asarray(v) for k, v in draws.items()}
        n = {v.shape[1] for v in draws.values()}
        if len(n) != 1 or n.pop() > self.chunk_draws or self.draws % self.chunk_draws:
            raise ValueError("append takes one chunk of at most `chunk_draws` draws per site, after whole chunks.")
        index = self.draws // self.chunk_draws
        for name, value in draws.items():
            self._write_chunk(name, value, index)
        self._commit(self.draws + next(iter(draws.values())).shape[1], state)
        for name in draws:
            self._set_draws(name, self.draws)

    def _write_chunk(self, name: str, value: np.ndarray, index: int) -> None:
        folder = self.path / name
        meta = folder / ".zarray"
        chunks = [value.shape[0], self.chunk_draws, *value.shape[2:]]
        if meta.exists():
            old = json.loads(meta.read_text())
            if old["chunks"] != chunks or np.dtype(old["dtype"]) != value.dtype:
                raise StoreError(
                    f"{str(self.path)!r}: site {name!r} is stored as {old['dtype']} chunks {old['chunks']}, "
                    f"the sampler gives {value.dtype.str} {chunks}: another model or denoiser; choose a new output."
                )
        else:
            folder.mkdir(exist_ok=True)
            dims = ["chain", "draw", *(f"{name}_dim_{i}" for i in range(value.ndim - 2))]
            _write_atomic(folder / ".zattrs", json.dumps({"_ARRAY_DIMENSIONS": dims}).encode())
            self._write_meta(meta, value.dtype, [value.shape[0], 0, *value.shape[2:]], chunks)
        full = np.full(chunks, np.nan if value.dtype.kind == "f" else 0, value.dtype)
        full[:, : value.shape[1]] = value
        key = ".".join(["0", str(index)] + ["0"] * (value.ndim - 2))
        _write_atomic(folder / key, np.ascontiguousarray(full).tobytes())

    @staticmethod
    def _write_meta(meta: Path, dtype: np.dtype, shape: list[int], chunks: list[int]) -> None:
        _write_atomic(meta, json.dumps({
            "zarr_format": 2, "shape": shape, "chunks": chunks, "dtype": dtype.str, "compressor": None,
            "fill_value": _fill_value(dtype), "order": "C", "filters": None, "dimension_separator": ".",
        }, indent=1).encode())

    def _set_draws(self, name: str, draws: int) -> None:
        meta = self.path / name / ".zarray"
        info = json.loads(meta.read_text())
        if info["shape"][1] != draws:
            self._write_meta(meta, np.dtype(info["dtype"]), [info["shape"][0], draws, *info["shape"][2:]],
                             info["chunks"])

    def _commit(self, draws: int, state) -> None:
        leaves, treedef = jax.tree.flatten(state)
        impls = [str(jax.random.key_impl(a)) if _is_key(a) else None for a in leaves]
        arrays = {f"leaf{i}": np.asarray(jax.random.key_data(a) if _is_key(a) else a) for i, a in enumerate(leaves)}
        state = {"key_impls": np.array(json.dumps(impls)),
                 "treedef": np.frombuffer(pickle.dumps(treedef), np.uint8), **arrays}
        buffer = io.BytesIO()
        np.savez(buffer, draws=draws, settings=json.dumps(self.settings), **state)
        _write_atomic(self.path / PROGRESS, buffer.getvalue())
        self.draws, self._state = draws, state


def _is_key(a) -> bool:
    return hasattr(a, "dtype") and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)


def open_draws(path: str | os.PathLike):
    """The store's committed draws as an ``xarray.Dataset`` ``(chain, draw, ...)``, read with NumPy."""
    import xarray as xr

    path = Path(path)
    if not (path / ".zgroup").exists():
        raise StoreError(f"{str(path)!r} is not a draws store (no .zgroup).")
    data = {}
    for meta in sorted(path.glob("*/.zarray")):
        info = json.loads(meta.read_text())
        dims = json.loads((meta.parent / ".zattrs").read_text())["_ARRAY_DIMENSIONS"]
        shape, chunks, dtype = info["shape"], info["chunks"], np.dtype(info["dtype"])
        parts = []
        for index in range(math.ceil(shape[1] / chunks[1])):
            key = ".".join(["0", str(index)] + ["0"] * (len(shape) - 2))
            parts.append(np.fromfile(meta.parent / key, dtype).reshape(chunks))
        values = np.concatenate(parts, axis=1) if parts else np.zeros([shape[0], 0, *shape[2:]], dtype)
        data[meta.parent.name] = (dims, values[:, : shape[1]])
    return xr.Dataset(data)


def stream_samples(mcmc, path, rng_key, num_draws: int, *, chunk_draws: int = 100,
                   settings: Mapping[str, Any] | None = None, init_params=None, progress: bool = True,
                   model_args: tuple = (), model_kwargs: Mapping[str, Any] | None = None,
                   mesh: Mesh | None = None) -> DrawStore:
    """Sample until ``num_draws`` draws per chain are in the store at ``path``.

    ``mcmc`` (a ``numpyro.infer.MCMC`` with ``chain_method="vectorized"`` or one chain) gives the
    kernel, ``num_warmup``, ``num_chains`` and ``thinning`` (steps per kept draw); with
    ``num_draws``, ``chunk_draws`` and ``settings`` they identify the run. A new store runs
    ``mcmc.warmup`` from ``rng_key`` and ``init_params``; a store with a commit continues from its
    last state. One compiled function advances the chains by a chunk (``lax.scan``), whose
    constrained draws are appended. The chains' state is sharded over the first axis of
    ``mesh`` (default: all devices of the process when they divide the chains), and the
    draws do not depend on it: a store may be resumed on another layout. Returns the store.
    """
    if mcmc.num_chains > 1 and mcmc.chain_method != "vectorized":
        raise ValueError(f"stream_samples runs chains vectorized; got chain_method={mcmc.chain_method!r}.")
    kernel = mcmc.sampler
    store = DrawStore(path, {
        "kernel": f"{type(kernel).__module__}.{type(kernel).__qualname__}", "num_chains": mcmc.num_chains,
        "num_warmup": mcmc.num_warmup, "thinning": mcmc.thinning, "num_draws": int(num_draws),
        **(settings or {}),
    }, chunk_draws)
    model_kwargs = dict(model_kwargs or {})
    state = store.last_state()
    if state is None:
        mcmc.warmup(rng_key, *model_args, init_params=init_params, **model_kwargs)
        state = mcmc.post_warmup_state
    elif store.draws < num_draws:  # the kernel builds its functions in init; its state is the saved one
        keys = jax.random.split(rng_key, mcmc.num_chains) if mcmc.num_chains > 1 else rng_key
        kernel.init(keys, mcmc.num_warmup, init_params, model_args=model_args, model_kwargs=model_kwargs)
    state = _shard_chains(state, mcmc.num_chains, mesh)
    advance = _chunk_fn(mcmc, model_args, model_kwargs)
    bar = _progress(progress, num_draws, store.draws)
    while store.draws < num_draws:
        n = min(chunk_draws, num_draws - store.draws)
        state, draws = advance(state, n)
        store.append(draws, state)
        if bar is not None:
            bar.update(n)
    if bar is not None:
        bar.close()
    return store


def _shard_chains(state, num_chains: int, mesh: Mesh | None):
    """``state`` with its chain axis split over ``mesh`` (see ``stream_samples``); one process only."""
    if jax.process_count() > 1:
        raise ValueError("stream_samples writes from one process; run it without jax.distributed.")
    if mesh is None:
        if jax.device_count() == 1 or num_chains % jax.device_count():
            return state
        mesh = Mesh(np.array(jax.devices()), ("chains",))
    chains = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(
        lambda a: jax.device_put(a, chains if np.ndim(a) and np.shape(a)[0] == num_chains else replicated), state
    )


def _chunk_fn(mcmc, model_args, model_kwargs):
    """``(state, n) -> (state, {site: (chain, n, ...)})``: ``n`` draws, ``mcmc.thinning`` steps each,
    compiled once per ``n``."""
    kernel, thin = mcmc.sampler, mcmc.thinning
    constrain = kernel.postprocess_fn(model_args, model_kwargs)
    if mcmc.num_chains > 1:
        constrain = jax.vmap(constrain)

    def draw(state, _):
        state = jax.lax.fori_loop(0, thin, lambda _, s: kernel.sample(s, model_args, model_kwargs), state)
        return state, constrain(getattr(state, kernel.sample_field))

    @partial(jax.jit, static_argnums=1)
    def advance(state, n):
        state, draws = jax.lax.scan(draw, state, length=n)
        chain_first = (lambda a: jnp.swapaxes(a, 0, 1)) if mcmc.num_chains > 1 else (lambda a: a[None])
        return state, jax.tree.map(chain_first, draws)

    return advance


def _progress(enabled: bool, total: int, done: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="draw", desc="sampling")
