"""The shell every kernel of the package shares.

``Kernel`` is a ``numpyro.infer.mcmc.MCMCKernel`` that owns what does not depend on
the algorithm: the score source (``model``, ``potential_fn`` or ``score_fn``, see
``numpyro_wjs.infer.sources``), vectorized chains, the warmup gate, warmup
adaptation with ``numpyro.infer.hmc_util.warmup_adapter`` and running means. A
subclass states its algorithm in ``_step(state, model_args, model_kwargs, warmup)``,
where ``warmup`` (a traced bool, the same for vectorized chains, which move in
lockstep) says whether step ``state.i`` is a warmup step.
"""

from __future__ import annotations

import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import random, vmap
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.mcmc import MCMCKernel
from numpyro.util import is_prng_key

from numpyro_wjs.core import langevin as core
from numpyro_wjs.infer import numpyro_hooks
from numpyro_wjs.infer.adaptation import StepAdaptation
from numpyro_wjs.infer.sources import check_source, init_model, make_source, postprocess

__all__ = ["Kernel", "STEP_COLLAPSE_FRACTION", "as_float", "split_keys", "check_mass"]

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


def check_mass(dense_mass, inverse_mass_matrix, default=False):
    """``(dense_mass, inverse_mass_matrix)`` checked, as NUTS takes them.

    ``dense_mass``: a bool, or a list of tuples of site names, each a dense block of a
    block-diagonal mass matrix (the other sites diagonal); ``None`` is ``default``, or,
    when ``inverse_mass_matrix`` is given, dense where it is a matrix.
    ``inverse_mass_matrix``: ``(d,)``, ``(d, d)``, or a dict of blocks keyed by tuples
    of site names.
    """
    if isinstance(inverse_mass_matrix, dict):
        inverse_mass_matrix = {tuple(k): jnp.asarray(v) for k, v in inverse_mass_matrix.items()}
        if dense_mass is None:
            dense_mass = [k for k, v in inverse_mass_matrix.items() if v.ndim == 2]
    elif inverse_mass_matrix is not None:
        inverse_mass_matrix = jnp.asarray(inverse_mass_matrix)
        core.metric(inverse_mass_matrix)  # validates the shape
        if dense_mass is None:
            dense_mass = inverse_mass_matrix.ndim == 2
    dense_mass = default if dense_mass is None else dense_mass
    if isinstance(dense_mass, bool) and not isinstance(inverse_mass_matrix, dict):
        return dense_mass, inverse_mass_matrix
    if not (
        isinstance(dense_mass, list)
        and all(isinstance(b, tuple) and b and all(isinstance(s, str) for s in b) for b in dense_mass)
    ):
        raise TypeError(
            "`dense_mass` must be True, False, or a list of tuples of site names such as "
            f"[('a', 'b'), ('c',)] (with a dict `inverse_mass_matrix`), got {dense_mass!r}."
        )
    return dense_mass, inverse_mass_matrix


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
    _adaptation = None  # the StepAdaptation built by init
    _potential_fn_gen = None
    _postprocess_fn_gen = None
    _dense_mass = False

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

    #: State fields worth keeping as ArviZ ``sample_stats`` (``extra_fields`` of a run).
    sample_stats: tuple[str, ...] = ("diverging", "accept_prob")

    @property
    def label(self) -> str:
        """A short name for tables and plots."""
        return type(self).__name__

    def postprocess_fn(self, args, kwargs):
        return postprocess(self._postprocess_fn_gen, args, kwargs)

    def sample(self, state, model_args, model_kwargs):
        def step(s, warmup):
            return self._step(s, model_args, model_kwargs, warmup)

        # vectorized chains move in lockstep: one unbatched flag, so that a `lax.cond` on it
        # stays a branch under vmap (a batched one would run the adaptation at every step)
        i = state.i[0] if self._vectorized else state.i
        warmup = i < self._num_warmup
        new = vmap(step, in_axes=(0, None))(state, warmup) if self._vectorized else step(state, warmup)
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

    def _step(self, state, model_args, model_kwargs, warmup):
        raise NotImplementedError

    def __getstate__(self):
        state = self.__dict__.copy()
        for name in ("_adaptation", "_sigma_adaptation", numpyro_hooks.MCMC_INIT_MARKER):  # rebuilt by init
            state.pop(name, None)
        return state

    # -- shared pieces ------------------------------------------------------------------
    def _initial_params(self, rng_key, num_warmup, init_params, model_args, model_kwargs, split_key=True):
        """``(rng_key, init_params, example)``: the model's initial points (unless given), as
        floats, and one chain's point; records ``num_warmup`` and whether chains are vectorized.
        With ``split_key`` a key for the model's initial points is split off ``rng_key``."""
        self._num_warmup = num_warmup
        self._vectorized = not is_prng_key(rng_key)
        if split_key:
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
        numpyro_hooks.mark_initialised(self, self._step)
        return jax.jit(vmap(init_one) if self._vectorized else init_one)(init_params, rng_key)

    def _source(self, z, model_args, model_kwargs):
        if self._model is not None:
            potential_fn = self._potential_fn_gen(*model_args, **(model_kwargs or {}))
            return make_source(z, potential_fn=potential_fn)
        return make_source(z, self._potential_fn, self._score_fn)

    def _adapter(self, num_warmup, example, **settings) -> StepAdaptation:
        """The kernel's ``StepAdaptation`` (its ``dense_mass`` and the given settings) for
        positions shaped like ``example``; kept for ``sample``."""
        self._adaptation = StepAdaptation(num_warmup, example, dense_mass=self._dense_mass, **settings)
        return self._adaptation

    def _metric(self, adapt_state) -> core.Metric:
        return self._adaptation.metric(adapt_state)

    def _adapt(self, i, accept_prob, x, adapt_state, warmup):
        """Warmup update of the step size and mass matrix at the flat position ``x``."""
        return self._adaptation.update(i, accept_prob, x, adapt_state, warmup)

    def _running_mean(self, mean, value, i, warmup):
        """Mean of ``value`` over the current phase (warmup, then sampling) after step ``i``."""
        n = jnp.where(warmup, i + 1, i + 1 - self._num_warmup)
        return mean + (value - mean) / n
