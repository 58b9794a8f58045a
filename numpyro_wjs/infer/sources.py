"""Score sources: where a kernel gets ``log p`` and ``grad log p`` from.

A kernel is given exactly one of

* ``model``: a NumPyro model; potential and gradient in unconstrained space via
  ``numpyro.infer.util.initialize_model``, draws mapped back by its
  ``postprocess_fn`` (as NUTS does);
* ``potential_fn``: ``z -> -log p(z)`` (needs ``init_params``);
* ``score_fn``: ``z -> grad log p(z)``, analytic or learned (needs ``init_params``).

Positions may be any pytree; ``Source`` works on the flat vector
(``jax.flatten_util.ravel_pytree``) that the step functions of
``numpyro_wjs.core.langevin`` use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from numpyro.distributions.transforms import biject_to
from numpyro.infer.initialization import init_to_value
from numpyro.infer.util import initialize_model
from numpyro.util import identity

from numpyro_wjs.validation import check_callable


class Source(NamedTuple):
    """Flat-vector views of the target for one set of model arguments."""

    score: Callable[[jax.Array], jax.Array]
    """``x_flat -> grad log p``."""
    logdensity: Callable[[jax.Array], jax.Array] | None
    """``x_flat -> log p`` up to a constant, or ``None`` for a bare score."""
    unravel: Callable[[jax.Array], Any]
    """``x_flat -> z`` pytree."""


def check_source(kernel: str, model, potential_fn, score_fn, *, needs_potential: bool) -> None:
    """Raise ``ValueError`` unless exactly one usable source is given."""
    given = [n for n, v in (("model", model), ("potential_fn", potential_fn), ("score_fn", score_fn)) if v is not None]
    if len(given) != 1:
        raise ValueError(
            f"{kernel} needs exactly one of `model=`, `potential_fn=` or `score_fn=`; "
            f"got {', '.join(given) if given else 'none'}."
        )
    if needs_potential and score_fn is not None:
        raise ValueError(
            f"{kernel} needs log p for its Metropolis-Hastings correction; a bare `score_fn` "
            "is not enough. Pass `potential_fn=` (z -> -log p(z)) or `model=`, or use the "
            "unadjusted kernels (ULA, UnderdampedLangevin) which run on a score alone."
        )
    for name, fn in (("model", model), ("potential_fn", potential_fn), ("score_fn", score_fn)):
        if fn is not None:
            check_callable(kernel, name, fn)


def init_model(rng_key, model, init_strategy, model_args, model_kwargs, init_params=None, *, constrained=False):
    """Initialise a NumPyro model; return ``(init_params, potential_fn_gen, postprocess_fn_gen,
    (inv_transforms, dynamic_support))`` (see ``model_transforms``).

    ``rng_key`` may be batched (vectorized chains); user ``init_params`` (unconstrained)
    take precedence over the ones found by ``init_strategy``. With ``constrained``
    (a block of ``numpyro.infer.Gibbs``, which hands its blocks constrained values)
    ``init_params`` are constrained values, mapped to unconstrained space by the model.
    """
    if constrained and init_params is not None:
        init_strategy, init_params = init_to_value(values=init_params), None
    params_info, potential_fn_gen, postprocess_fn_gen, model_trace = initialize_model(
        rng_key,
        model,
        dynamic_args=True,
        init_strategy=init_strategy,
        model_args=model_args,
        model_kwargs=model_kwargs,
    )
    if init_params is None:
        init_params = params_info[0]
    return init_params, potential_fn_gen, postprocess_fn_gen, model_transforms(model_trace)


def model_transforms(model_trace) -> tuple[dict, bool]:
    """``(inv_transforms, dynamic_support)`` of a model trace: the bijection from unconstrained
    space onto the support of every continuous latent sample site, and whether a support may
    depend on other values (a bound that is not a Python number, as
    ``numpyro.infer.HMC`` decides), when constraining must replay the model."""
    inv_transforms, dynamic = {}, False
    for name, site in model_trace.items():
        if site["type"] != "sample" or site["is_observed"] or site["fn"].support.is_discrete:
            continue
        support = site["fn"].support
        inv_transforms[name] = biject_to(support)
        for bound in ("lower_bound", "upper_bound"):
            if hasattr(support, bound) and not isinstance(getattr(support, bound), int | float):
                dynamic = True
    return inv_transforms, dynamic


def make_source(example_z, potential_fn=None, score_fn=None) -> Source:
    """Flat views of ``potential_fn`` or ``score_fn`` around the structure of ``example_z``."""
    _, unravel = ravel_pytree(example_z)
    if potential_fn is not None:

        def logdensity(x):
            return -potential_fn(unravel(x))

        def score(x):
            return jax.grad(logdensity)(x)

        return Source(score, logdensity, unravel)

    def score(x):
        return ravel_pytree(score_fn(unravel(x)))[0]

    return Source(score, None, unravel)


def check_output_shape(kernel: str, name: str, fn, z, note: str = "") -> None:
    """``ValueError`` if calling ``fn`` on ``z`` fails or does not return the structure and
    shapes of ``z`` (a score, or a denoiser's ``E[X | y]``); ``note`` is added to the message."""
    try:
        out = jax.eval_shape(fn, z)
    except Exception as e:  # noqa: BLE001 - re-raised with context
        raise ValueError(f"{kernel}: calling {name} on the initial point failed: {e}") from e
    want = jax.tree.map(lambda a: jnp.shape(a), z)
    got = jax.tree.map(lambda a: jnp.shape(a), out)
    if jax.tree.structure(z) != jax.tree.structure(out) or want != got:
        raise ValueError(
            f"{kernel}: {name} must return values with the shape of its input; "
            f"input shapes {want}, output shapes {got}.{note}"
        )


def check_finite_start(
    kernel: str,
    *arrays,
    problem: str = "the log density or score is not finite at the initial point",
    fix: str = "Choose `init_params` inside the support, or check the score function.",
) -> None:
    """``ValueError`` (``problem``, then ``fix``) if an initial value in ``arrays``
    (density, score) is non-finite.

    Skipped under tracing (values are not known then).
    """
    try:
        ok = all(bool(jnp.all(jnp.isfinite(a))) for a in arrays)
    except jax.errors.ConcretizationTypeError:
        return
    if not ok:
        raise ValueError(f"{kernel}: {problem}. {fix}")


def postprocess(postprocess_fn_gen, model_args, model_kwargs):
    """The kernel's ``postprocess_fn``: constrain draws of a model, identity otherwise."""
    if postprocess_fn_gen is None:
        return identity
    return postprocess_fn_gen(*model_args, **model_kwargs)
