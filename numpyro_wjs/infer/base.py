"""The shell every kernel of the package shares: a pure ``init`` / ``step`` pair becomes an ``MCMCKernel``.

An algorithm is a pair in ``core``: ``init`` builds its state (one ``NamedTuple``), and
``step(rng_key, state, ...) -> (state, info)`` moves it, with an ``info`` that has the
acceptance (applied or estimated), the energy error and ``diverging``. ``Kernel`` carries
that state as it is inside a ``KernelState`` with the iteration, the key, the adaptation
state and the running means of the info, and owns what does not depend on the
algorithm: the score source (``model``, ``potential_fn`` or ``score_fn``, see
``numpyro_wjs.infer.sources``), vectorized chains, the warmup gate (``warmup`` is a
traced bool, the same for vectorized chains, which move in lockstep), warmup adaptation
(``infer.adaptation.StepAdaptation``) and the step-collapse warning. A subclass states
the algorithm in three methods: ``_adaptation`` (what warmup tunes), ``_init_state``
and ``_step_state`` (calls of the core pair). Everything ``init`` builds is one frozen
``Setup`` on the kernel; nothing else is set on it after construction.

It also makes every kernel built on a model a block of NumPyro's composable
``numpyro.infer.Gibbs``: ``refresh`` (recompute the cached ``-log p`` and score at the
current point for a new conditioning), ``wrap_model`` (a copy bound to the conditioned
model) and ``get_constrain_fn`` (transforms only, as HMC's), mirroring
``numpyro.infer.HMC``.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple

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
from numpyro_wjs.core.metropolis import MetropolisInfo
from numpyro_wjs.infer import numpyro_hooks
from numpyro_wjs.infer.adaptation import StepAdaptation
from numpyro_wjs.infer.sources import check_finite_start, check_source, init_model, make_source, postprocess

__all__ = ["Kernel", "KernelState", "Setup", "STEP_COLLAPSE_FRACTION", "as_float", "split_keys", "check_mass"]

Array = jax.Array

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


class KernelState(NamedTuple):
    """What ``Kernel`` keeps around an algorithm's state.

    The algorithm's fields (``z``, ``potential_energy``, ``score``, ``y``, ...) and its
    info's (``hop_accept_prob``, ...) read through, so ``extra_fields=("potential_energy",)``
    and ``state.z`` work as for NumPyro's ``HMCState``.
    """

    i: Array
    """Iteration (continues after warmup)."""
    state: Any
    """The algorithm's state, as its core ``step`` returns it."""
    info: Any
    """The last step's info: ``acceptance_rate`` (applied or estimated), ``diverging``, ..."""
    mean_info: Any
    """Running means of ``info`` over the current phase (warmup, then sampling)."""
    adapt_state: Any
    """``numpyro.infer.hmc_util.HMCAdaptState``: ``step_size``, ``inverse_mass_matrix``, ..."""
    rng_key: Array
    """Random key."""

    @property
    def accept_prob(self):
        """Acceptance probability of the last step (the one a Metropolis test would have had,
        for an unadjusted step)."""
        return self.info.acceptance_rate

    @property
    def mean_accept_prob(self):
        """Its running mean."""
        return self.mean_info.acceptance_rate

    @property
    def diverging(self):
        """The last step was non-finite or its energy error exceeded ``MAX_LOG_ACCEPT_DROP``."""
        return self.info.diverging

    def __getattr__(self, name):
        for part in (self.state, self.info):
            if name in getattr(type(part), "_fields", ()):
                return getattr(part, name)
        raise AttributeError(f"{type(self).__name__} (around {type(self.state).__name__}) has no field {name!r}")


@dataclass(frozen=True)
class Setup:
    """Everything a kernel's ``init`` builds, set on the kernel in one piece."""

    num_warmup: int
    vectorized: bool
    adaptation: StepAdaptation
    potential_fn_gen: Any = None
    postprocess_fn_gen: Any = None
    inv_transforms: Any = None
    """The model's latent sites -> constrained values."""
    dynamic_support: bool = False
    """A support depends on other values: constrain by replaying the model."""
    options: Any = None
    """What a kernel derives from the model arguments (``Kernel._options``; SGLD: the
    subsample plates)."""


class Kernel(MCMCKernel):
    """Score source, vectorized chains, the warmup gate, adaptation and running means.

    A subclass sets ``sample_field``, ``evaluations_per_draw``, ``sample_stats``, ``_info_type``
    (its core ``Info``, whose field defaults are the state before the first step) and
    implements

    * ``_adaptation(num_warmup, example) -> StepAdaptation``: what warmup tunes;
    * ``_init_state(z, rng_key, source, metric) -> (state, rng_key)``: one chain's core state
      at ``z`` and the key the chain goes on with;
    * ``_step_state(s, source, warmup) -> (state, info)``: the core step from ``s``, the
      ``KernelState`` (``s.state``, ``s.rng_key``, ``s.adapt_state``, ``s.i``).

    ``_adapt`` (the warmup update after a step) and ``_source`` (the target's flat views)
    may be overridden. The shell keeps part 0 of ``random.split(rng_key, _key_parts)`` as
    the chain's next key; the step draws from the rest. When the step size is adapted, the
    last warmup step warns if it collapsed (``STEP_COLLAPSE_FRACTION``).

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
    _step_size = None  # the initial step size
    _inverse_mass_matrix = None  # the initial one, if given
    _setup: Setup | None = None  # built by init
    _key_parts = 2
    _info_type = MetropolisInfo
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

    def get_diagnostics_str(self, state):
        return f"step size {float(state.adapt_state.step_size):.2e}. acc. prob={float(state.mean_accept_prob):.2f}"

    def postprocess_fn(self, args, kwargs):
        return postprocess(self._setup.postprocess_fn_gen if self._setup else None, args, kwargs)

    def init(self, rng_key, num_warmup, init_params=None, model_args=(), model_kwargs={}):
        vectorized = not is_prng_key(rng_key)
        rng_key, init_params, example, model_fns = self._initial_params(
            rng_key, vectorized, init_params, model_args, model_kwargs
        )
        adaptation = self._adaptation(num_warmup, example)
        options = self._options(model_args, model_kwargs or {})
        self._setup = setup = Setup(num_warmup, vectorized, adaptation, *model_fns, options=options)

        def init_one(z, key):
            adapt_state = adaptation.init(z, key, self._step_size, self._inverse_mass_matrix)
            source = self._source(z, model_args, model_kwargs)
            state, key = self._init_state(z, key, source, adaptation.metric(adapt_state))
            info = self._initial_info(z)
            mean_info = jax.tree.map(lambda a: a.astype(info.acceptance_rate.dtype), info)
            return KernelState(jnp.array(0), state, info, mean_info, adapt_state, key)

        numpyro_hooks.mark_initialised(self, self.sample)
        state = jax.jit(vmap(init_one) if setup.vectorized else init_one)(init_params, rng_key)
        self._check_start(state)
        return state

    def sample(self, state, model_args, model_kwargs):
        setup = self._setup

        def step(s, warmup):
            source = self._source(getattr(s.state, self.sample_field), model_args, model_kwargs)
            new, info = self._step_state(s, source, warmup)
            new, adapt_state = self._adapt(s, new, info, warmup)
            n = jnp.where(warmup, s.i + 1, s.i + 1 - setup.num_warmup)
            mean_info = jax.tree.map(lambda m, v: m + (v - m) / n, s.mean_info, info)
            rng_key = random.split(s.rng_key, self._key_parts)[0]
            return KernelState(s.i + 1, new, info, mean_info, adapt_state, rng_key)

        # vectorized chains move in lockstep: one unbatched flag, so that a `lax.cond` on it
        # stays a branch under vmap (a batched one would run the adaptation at every step)
        i = state.i[0] if setup.vectorized else state.i
        warmup = i < setup.num_warmup
        new = vmap(step, in_axes=(0, None))(state, warmup) if setup.vectorized else step(state, warmup)
        if self._adapt_step_size and self._step_size is not None and setup.num_warmup > 0:
            jax.lax.cond(
                i + 1 == setup.num_warmup,
                lambda s: jax.debug.callback(
                    partial(_warn_step_collapse, type(self).__name__, initial=self._step_size), s
                ),
                lambda s: None,
                new.adapt_state.step_size,
            )
        return new

    # -- what a subclass states -----------------------------------------------------------
    def _adaptation(self, num_warmup, example) -> StepAdaptation:
        raise NotImplementedError

    def _init_state(self, z, rng_key, source, metric):
        raise NotImplementedError

    def _step_state(self, s, source, warmup):
        raise NotImplementedError

    def _step_keys(self, s: KernelState):
        """The keys a step from ``s`` draws from: parts ``1..`` of
        ``random.split(s.rng_key, _key_parts)`` (part 0 is the chain's next key)."""
        return random.split(s.rng_key, self._key_parts)[1:]

    def _options(self, model_args, model_kwargs):
        """What the kernel derives from the model arguments at ``init`` (``Setup.options``)."""
        return None

    def _initial_info(self, z):
        """The info before the first step: ``_info_type()``'s field defaults as arrays
        (floats of the position's dtype)."""
        dtype = jnp.result_type(*jax.tree.leaves(z))
        return jax.tree.map(lambda d: jnp.asarray(d, dtype if isinstance(d, float) else None), self._info_type())

    def _metric(self, s) -> core.Metric:
        """The preconditioner ``C`` of a ``KernelState`` (or of an adaptation state)."""
        return self._setup.adaptation.metric(s.adapt_state if isinstance(s, KernelState) else s)

    def _adapt(self, s: KernelState, new, info, warmup):
        """``(state, adapt_state)`` after the step from ``s`` to ``new``: the warmup update of
        the step size (and mass matrix, at the new sample) from the step's acceptance."""
        z = getattr(new, self.sample_field)
        return new, self._setup.adaptation.update(s.i, info.acceptance_rate, z, s.adapt_state, warmup)

    def _check_start(self, state) -> None:
        """``ValueError`` when the target is non-finite at an initial point."""
        check_finite_start(type(self).__name__, *(getattr(state, f) for f in self._target_fields
                                                  if f in state.state._fields))

    def __getstate__(self):
        state = self.__dict__.copy()
        for name in ("_setup", numpyro_hooks.MCMC_INIT_MARKER):  # rebuilt by init
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
            z = getattr(s.state, self.sample_field)
            logp, score = jax.value_and_grad(self._source(z, model_args, model_kwargs).logdensity)(
                ravel_pytree(z)[0]
            )
            values = {"potential_energy": -logp, "score": score}
            return s._replace(state=s.state._replace(
                **{k: values[k] for k in self._target_fields if k in s.state._fields}))

        return vmap(one)(state) if self._setup.vectorized else one(state)

    def wrap_model(self, wrapper):
        """A shallow copy bound to ``wrapper(self.model)``, everything built from the old model
        (the ``Setup``, the initialised mark) dropped, so that its next ``init`` rebuilds it (as
        ``numpyro.infer.HMC.wrap_model``)."""
        if self._model is None:
            raise ValueError(
                f"{type(self).__name__} has no model to condition (it was built from `potential_fn`, "
                "`score_fn` or a denoiser), so it cannot be a block of numpyro.infer.Gibbs; build "
                "the block on the composite's model instead, e.g. MALA(model)."
            )
        kernel = copy.copy(self)
        kernel._model = wrapper(self._model)
        for name in ("_setup", numpyro_hooks.MCMC_INIT_MARKER):
            kernel.__dict__.pop(name, None)
        return kernel

    def get_constrain_fn(self, model_args=(), model_kwargs=None, *, return_deterministic=False):
        """Unconstrained draws -> constrained site values. With a model and no value-dependent
        supports (and ``return_deterministic=False``) by the sites' transforms alone, without
        running the model; otherwise ``postprocess_fn`` (a model replay). Identity without a
        model. Needs ``init`` (as ``numpyro.infer.HMC.get_constrain_fn``)."""
        if self._model is None:
            return identity
        if self._setup is None:
            raise RuntimeError(f"{type(self).__name__}: `get_constrain_fn` needs `init` to have run.")
        if return_deterministic or self._setup.dynamic_support:
            return self.postprocess_fn(model_args, {} if model_kwargs is None else model_kwargs)
        return partial(transform_fn, self._setup.inv_transforms)

    # -- shared pieces ------------------------------------------------------------------
    def _initial_params(self, rng_key, vectorized, init_params, model_args, model_kwargs):
        """``(rng_key, init_params, example, model_fns)``: the model's initial points (unless
        given; a key for them is split off ``rng_key``), as floats, one chain's point, and
        ``(potential_fn_gen, postprocess_fn_gen, inv_transforms, dynamic_support)`` of the
        model. As a block of ``numpyro.infer.Gibbs`` (its conditioning in ``model_kwargs``),
        ``init_params`` are constrained values, the composite's convention."""
        model_fns = ()
        if self._model is not None:
            rng_key, key_model = split_keys(rng_key, 2)
            model_kwargs = model_kwargs or {}
            init_params, potential_fn_gen, postprocess_fn_gen, transforms = init_model(
                key_model, self._model, self._init_strategy, model_args, model_kwargs, init_params,
                constrained=GIBBS_SITES_KWARG in model_kwargs,
            )
            model_fns = (potential_fn_gen, postprocess_fn_gen, *transforms)
        elif init_params is None:
            raise ValueError(
                f"{type(self).__name__}: `init_params` must be given with `potential_fn` or `score_fn`."
            )
        elif self._potential_fn is not None or self._score_fn is not None:
            rng_key = split_keys(rng_key, 2)[0]  # the key a model would have had is left unused
        init_params = as_float(init_params)
        example = jax.tree.map(lambda a: a[0], init_params) if vectorized else init_params
        return rng_key, init_params, example, model_fns

    def _source(self, z, model_args, model_kwargs):
        if self._model is not None:
            potential_fn = self._setup.potential_fn_gen(*model_args, **(model_kwargs or {}))
            return make_source(z, potential_fn=potential_fn)
        return make_source(z, self._potential_fn, self._score_fn)

    def _step_adaptation(self, num_warmup, example, **settings) -> StepAdaptation:
        """A ``StepAdaptation`` with the kernel's ``dense_mass`` and the given settings."""
        return StepAdaptation(num_warmup, example, dense_mass=getattr(self, "_dense_mass", False), **settings)
