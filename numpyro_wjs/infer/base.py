"""The shell every kernel of the package shares.

``Kernel`` is a ``numpyro.infer.mcmc.MCMCKernel`` that owns what does not depend on
the algorithm: the score source (``model``, ``potential_fn`` or ``score_fn``, see
``numpyro_wjs.infer.sources``), vectorized chains, the warmup gate, warmup
adaptation with ``numpyro.infer.hmc_util.warmup_adapter`` and running means. A
subclass states its algorithm in ``_step(state, model_args, model_kwargs, warmup)``,
where ``warmup`` (a traced bool, the same for vectorized chains, which move in
lockstep) says whether step ``state.i`` is a warmup step.

It also makes every kernel built on a model a block of NumPyro's composable
``numpyro.infer.Gibbs``: ``refresh`` (recompute the cached ``-log p`` and score at the
current point for a new conditioning), ``wrap_model`` (a copy bound to the conditioned
model) and ``get_constrain_fn`` (transforms only, as HMC's), mirroring
``numpyro.infer.HMC``.
"""

from __future__ import annotations

import copy
import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import random, vmap
from jax.flatten_util import ravel_pytree
from numpyro.infer.gibbs import GIBBS_SITES_KWARG
from numpyro.infer.initialization import init_to_uniform
from numpyro.infer.mcmc import MCMCKernel
from numpyro.infer.util import transform_fn
from numpyro.util import identity, is_prng_key

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

    **As a block of** ``numpyro.infer.Gibbs``. A kernel built on a model runs on the
    model conditioned on the other blocks' sites, as NUTS blocks do: ``Gibbs`` rebinds
    it with ``wrap_model``, calls ``init`` with the block's initial *constrained*
    values (the composite's convention for blocks other than HMC; they are mapped to
    unconstrained space here), ``refresh`` whenever a sibling moved, and
    ``get_constrain_fn`` to pass its draws on. Warmup adaptation (step size, mass
    matrix, ...) runs on the block's own conditional during the composite's warmup.
    A kernel built from ``potential_fn`` or ``score_fn`` has no model to condition and
    cannot be a block.
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
    _inv_transforms = None  # the model's latent sites -> constrained values (set by init)
    _dynamic_support = None  # a support depends on other values: constrain by replaying the model
    _dense_mass = False
    #: attributes that ``init`` builds (dropped on pickling, and by ``wrap_model``)
    _built_by_init: tuple[str, ...] = ("_adaptation",)
    #: state fields that are functions of the target at the sample field, recomputed by
    #: ``refresh``: ``-log p`` and the flat score (those the state has)
    _target_fields: tuple[str, ...] = ("potential_energy", "score")

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
        for name in (*self._built_by_init, numpyro_hooks.MCMC_INIT_MARKER):  # rebuilt by init
            state.pop(name, None)
        return state

    # -- composite kernels (numpyro.infer.Gibbs) ---------------------------------------
    def refresh(self, state, model_args, model_kwargs):
        """The state with ``potential_energy`` and ``score`` (the ``_target_fields`` it has)
        recomputed at the current point for ``(model_args, model_kwargs)``, the chain not
        advanced: ``numpyro.infer.Gibbs`` calls it when the sites a block is conditioned on
        have moved. A kernel without a model returns ``state``: its target does not depend
        on the model arguments."""
        if self._model is None:
            return state

        def one(s):
            return s._replace(**self._refreshed_fields(s, model_args, model_kwargs))

        return vmap(one)(state) if self._vectorized else one(state)

    def _refreshed_fields(self, state, model_args, model_kwargs) -> dict:
        """The ``_target_fields`` of one chain's ``state`` at its point for the given arguments;
        a kernel caching more functions of the target adds them here."""
        z = getattr(state, self.sample_field)
        logp, score = jax.value_and_grad(self._source(z, model_args, model_kwargs).logdensity)(
            ravel_pytree(z)[0]
        )
        values = {"potential_energy": -logp, "score": score}
        return {k: values[k] for k in self._target_fields if k in state._fields}

    def wrap_model(self, wrapper):
        """A shallow copy bound to ``wrapper(self.model)``, everything built from the old model
        (potential, postprocessing, transforms, adaptation, the initialised mark) reset, so that
        its next ``init`` rebuilds it (as ``numpyro.infer.HMC.wrap_model``)."""
        if self._model is None:
            raise ValueError(
                f"{type(self).__name__} has no model to condition (it was built from `potential_fn`, "
                "`score_fn` or a denoiser), so it cannot be a block of numpyro.infer.Gibbs; build "
                "the block on the composite's model instead, e.g. MALA(model)."
            )
        kernel = copy.copy(self)
        kernel._model = wrapper(self._model)
        for name in ("_potential_fn_gen", "_postprocess_fn_gen", "_inv_transforms", "_dynamic_support",
                     *self._built_by_init, numpyro_hooks.MCMC_INIT_MARKER):
            kernel.__dict__.pop(name, None)
        return kernel

    def get_constrain_fn(self, model_args=(), model_kwargs=None, *, return_deterministic=False):
        """Unconstrained draws -> constrained site values. With a model and no value-dependent
        supports (and ``return_deterministic=False``) by the sites' transforms alone, without
        running the model; otherwise ``postprocess_fn`` (a model replay). Identity without a
        model. Needs ``init`` (as ``numpyro.infer.HMC.get_constrain_fn``)."""
        if self._model is None:
            return identity
        if self._inv_transforms is None:
            raise RuntimeError(f"{type(self).__name__}: `get_constrain_fn` needs `init` to have run.")
        if return_deterministic or self._dynamic_support:
            return self.postprocess_fn(model_args, {} if model_kwargs is None else model_kwargs)
        return partial(transform_fn, self._inv_transforms)

    # -- shared pieces ------------------------------------------------------------------
    def _initial_params(self, rng_key, num_warmup, init_params, model_args, model_kwargs, split_key=True):
        """``(rng_key, init_params, example)``: the model's initial points (unless given), as
        floats, and one chain's point; records ``num_warmup`` and whether chains are vectorized.
        With ``split_key`` a key for the model's initial points is split off ``rng_key``.
        As a block of ``numpyro.infer.Gibbs`` (its conditioning in ``model_kwargs``),
        ``init_params`` are constrained values, the composite's convention."""
        self._num_warmup = num_warmup
        self._vectorized = not is_prng_key(rng_key)
        if split_key:
            rng_key, key_model = split_keys(rng_key, 2)
        if self._model is not None:
            model_kwargs = model_kwargs or {}
            init_params, self._potential_fn_gen, self._postprocess_fn_gen, transforms = init_model(
                key_model, self._model, self._init_strategy, model_args, model_kwargs, init_params,
                constrained=GIBBS_SITES_KWARG in model_kwargs,
            )
            self._inv_transforms, self._dynamic_support = transforms
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
