"""Network classes by name: what checkpoints record and what loaders and the CLI build.

A checkpoint stores only a registered name and the network's ``config`` (JSON
constructor keyword arguments), so loading one never imports or runs code chosen by
the file. ``MLP`` and ``UNet`` are registered here, ``DigitClassifier`` by its module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flax import nnx

from numpyro_wjs.nn.denoisers import MLP, UNet

__all__ = ["ARCHITECTURES", "architecture_name", "build_network", "register_architecture"]

ARCHITECTURES: dict[str, type[nnx.Module]] = {}
"""Registered network classes by name; filled by ``register_architecture``."""


def register_architecture(cls: type[nnx.Module], name: str | None = None) -> type[nnx.Module]:
    """Let checkpoints name the network class ``cls`` and the loaders rebuild it.

    A checkpoint stores the class's registered name and ``model.config`` (a dict of
    JSON-serialisable constructor keyword arguments; ``{}`` when the module has no
    ``config``); loading calls ``cls(**config, rngs=nnx.Rngs(0))`` and restores the
    weights. Only classes registered in the running program can be rebuilt: a
    checkpoint never names code to import. Call it (or use it as a class decorator)
    before saving or loading. ``MLP``, ``UNet`` and ``DigitClassifier`` are registered
    already. Public as ``numpyro_wjs.nn.train.register_architecture``.

    Parameters
    ----------
    cls : type
        A ``flax.nnx.Module`` subclass whose constructor accepts ``**config`` and
        ``rngs``.
    name : str, optional
        Name stored in checkpoints; default ``cls.__name__``.

    Returns
    -------
    type
        ``cls`` (so that it works as a decorator).

    Raises
    ------
    TypeError
        If ``cls`` is not an NNX module class.
    ValueError
        If ``name`` is taken by another class.
    """
    if not (isinstance(cls, type) and issubclass(cls, nnx.Module)):
        raise TypeError(f"register_architecture needs an nnx.Module subclass, got {cls!r}")
    name = cls.__name__ if name is None else name
    if ARCHITECTURES.setdefault(name, cls) is not cls:
        raise ValueError(
            f"architecture name {name!r} is taken by {ARCHITECTURES[name]}; pass another name="
        )
    return cls


def architecture_name(model: nnx.Module) -> str:
    """The registered name of ``model``'s class; ``TypeError`` if it has none."""
    found = [name for name, cls in ARCHITECTURES.items() if cls is type(model)]
    if not found:
        raise TypeError(
            f"cannot checkpoint {type(model).__qualname__}: register it first with "
            f"numpyro_wjs.nn.train.register_architecture({type(model).__name__})"
        )
    return found[0]


def build_network(name: str, config: Mapping[str, Any], rngs: nnx.Rngs) -> nnx.Module:
    """The registered network ``name`` built as ``cls(**config, rngs=rngs)``.

    Raises
    ------
    ValueError
        If ``name`` is not registered, or the constructor rejects ``config``.
    """
    if name not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {name!r} (registered: {sorted(ARCHITECTURES)}); register its "
            "class with register_architecture first"
        )
    try:
        return ARCHITECTURES[name](**config, rngs=rngs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"invalid {name} config {dict(config)}: {err}") from err


register_architecture(MLP)
register_architecture(UNet)
