"""The shell every kernel of the package shares.

``Kernel`` is a ``numpyro.infer.mcmc.MCMCKernel`` that owns what does not depend on
the algorithm: the score source (``model``, ``potential_fn`` or ``score_fn``, see
``numpyro_wjs.infer.sources``), vectorized chains, the warmup gate, warmup
adaptation with ``numpyro.infer.hmc_util.warmup_adapter`` and running means. A
subclass states its algorithm in ``_step(state, model_args, model_kwargs, warmup)``,
where ``warmup`` is a Python bool: ``sample`` branches on the phase once, outside
``vmap``, so vectorized chains adapt during warmup only.
"""

from __future__ import annotations

import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import random, vmap
from jax.flatten_util import ravel_pytree
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.mcmc import MCMCKernel
from numpyro.util import is_prng_key

from numpyro_wjs.core import langevin as core
from numpyro_wjs.infer.sources import check_source, init_model, make_source, postprocess

__all__ = ["Kernel", "STEP_COLLAPSE_FRACTION", "as_float", "split_keys", "metric_of"]

#: A warmup that ends with a step size below this fraction of the initial one warns.
STEP_COLLAPSE_FRACTION = 1e-3


def split_keys(rng_key, n):
    """``random.split`` for a key or a batch of keys (vectorized chains)."""
    if is_prng_key(rng_key):
        return random.split(rng_key, n)
    return jnp.swapaxes(vmap(lambda k: random.split(k, n))(rng_key), 0, 1)


def as_float(tree):
    """``init_params`` with integer or boolean leaves cast to the default float type."""
    def cast(a):
        a = jnp.asarray(a)
        return a if jnp.issubdtype(a.dtype, jnp.inexact) else a.astype(jnp.result_type(float))

    return jax.tree.map(cast, tree)


def metric_of(adapt_state) -> core.Metric:
    """The ``core.Metric`` held by a ``numpyro.infer.hmc_util.HMCAdaptState``."""
    return core.Metric(adapt_state.inverse_mass_matrix, adapt_state.mass_matrix_sqrt, adapt_state.mass_matrix_sqrt_inv)


def _warn_step_collapse(kernel: str, step_size, initial: float) -> None:
    step_size = np.asarray(step_size)
    low = step_size < STEP_COLLAPSE_FRACTION * initial
    if np.any(low):
        warnings.warn(
            f"{kernel}: warmup shrank the step size from {initial:.3g} to {float(step_size.min()):.3g} "
            f"(below {STEP_COLLAPSE_FRACTION:g} of its start) in {int(low.sum())} of {low.size} chain(s): "
            "the chain barely moves. Usually the score (or denoiser) is non-finite or huge near the "
            "chain; check it there, rescale the target, or fix `step_size` with adapt_step_size=False.",
            RuntimeWarning,
            stacklevel=2,
        )


class Kernel(MCMCKernel):
    """Score source, vectorized chains, the warmup gate, adaptation and running means.

    Subclasses implement ``sample_field``, ``evaluations_per_draw`` and
    ``_step(state, model_args, model_kwargs, warmup)``; their states carry ``i``
    (the iteration) and ``adapt_state`` (``HMCAdaptState``) when they adapt.
    When the step size is adapted, the last warmup step warns if it collapsed
    (``STEP_COLLAPSE_FRACTION``).
    """

    _model = None
    _potential_fn = None
    _score_fn = None
    _init_strategy = staticmethod(init_to_uniform)
    _adapt_step_size = False
    _step_size = None  # the initial step size, when the kernel adapts one
    _num_warmup = 0
    _vectorized = False
    _wa_update = None
    _sample_fn = None  # set by init; numpyro.infer.MCMC calls init again while it is None
    _potential_fn_gen = None
    _postprocess_fn_gen = None

    def _set_source(self, model, potential_fn, score_fn, init_strategy, *, needs_potential: bool) -> None:
        check_source(type(self).__name__, model, potential_fn, score_fn, needs_potential=needs_potential)
        self._model, self._potential_fn, self._score_fn = model, potential_fn, score_fn
        self._init_strategy = init_strategy

    # -- MCMCKernel interface ---------------------------------------------------------
    @property
    def model(self):
        return self._model

    @property
    def default_fields(self):
        return (self.sample_field, "diverging")

    @property
    def evaluations_per_draw(self) -> int:
        """Score (gradient or denoiser) evaluations per MCMC draw."""
        raise NotImplementedError

    def postprocess_fn(self, args, kwargs):
        return postprocess(self._postprocess_fn_gen, args, kwargs)

    def sample(self, state, model_args, model_kwargs):
        def run(warmup):
            step = partial(self._step, model_args=model_args, model_kwargs=model_kwargs, warmup=warmup)
            return vmap(step) if self._vectorized else step

        i = state.i[0] if self._vectorized else state.i  # vectorized chains move in lockstep
        new = jax.lax.cond(i < self._num_warmup, run(True), run(False), state)
        if self._adapt_step_size and self._step_size is not None and self._num_warmup > 0:
            jax.lax.cond(
                i + 1 == self._num_warmup,
                lambda s: jax.debug.callback(
                    partial(_warn_step_collapse, type(self).__name__, initial=self._step_size), s
                ),
                lambda s: None,
                new.adapt_state.step_size,
            )
        return new

    def _step(self, state, model_args, model_kwargs, warmup: bool):
        raise NotImplementedError

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_wa_update"] = None  # closures over the model are rebuilt by init
        state["_sample_fn"] = None
        return state

    # -- shared pieces ------------------------------------------------------------------
    def _initial_params(self, rng_key, num_warmup, init_params, model_args, model_kwargs):
        """``(rng_key, init_params, example)``: the model's initial points (unless given), as
        floats, and one chain's point; records ``num_warmup`` and whether chains are vectorized."""
        self._num_warmup = num_warmup
        self._vectorized = not is_prng_key(rng_key)
        rng_key, key_model = split_keys(rng_key, 2)
        if self._model is not None:
            init_params, self._potential_fn_gen, self._postprocess_fn_gen = init_model(
                key_model, self._model, self._init_strategy, model_args, model_kwargs or {}, init_params
            )
        elif init_params is None:
            raise ValueError(
                f"{type(self).__name__}: `init_params` must be given with `potential_fn` or `score_fn`."
            )
        init_params = as_float(init_params)
        example = jax.tree.map(lambda a: a[0], init_params) if self._vectorized else init_params
        return rng_key, init_params, example

    def _start(self, init_one, init_params, rng_key):
        """Initial state of every chain: ``init_one(params, key)``, vmapped for vectorized chains."""
        self._sample_fn = self._step
        return jax.jit(vmap(init_one) if self._vectorized else init_one)(init_params, rng_key)

    def _source(self, z, model_args, model_kwargs):
        if self._model is not None:
            potential_fn = self._potential_fn_gen(*model_args, **(model_kwargs or {}))
            return make_source(z, potential_fn=potential_fn)
        return make_source(z, self._potential_fn, self._score_fn)

    def _adapt(self, i, accept_prob, x, adapt_state, warmup: bool):
        """Warmup update of the step size and mass matrix at the flat position ``x``."""
        return self._wa_update(i, accept_prob, (x,), adapt_state) if warmup else adapt_state

    def _running_mean(self, mean, value, i, warmup: bool):
        """Mean of ``value`` over the current phase (warmup, then sampling) after step ``i``."""
        n = i + 1 if warmup else i + 1 - self._num_warmup
        return mean + (value - mean) / n
