"""Argument checks shared by every module: one message and one exception per mistake.

A value of the wrong type raises ``ArgumentTypeError`` (a ``TypeError`` and a
``ValueError``, so callers may catch either); a value of the right type outside its
range raises ``ValueError``. Each check returns the value as a plain Python number.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["ArgumentTypeError", "positive", "positive_int", "probability", "positive_range", "check_callable",
           "no_unknown_arguments"]


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (e.g. a string or a bool where a number belongs)."""


def _number(name: str, value: Any, kind: type, what: str):
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ArgumentTypeError(f"`{name}` must be {what}, got {value!r}.")
    return value


def positive(name: str, value: Any) -> float:
    """``value`` as a float; raises unless it is a finite number ``> 0``."""
    v = float(_number(name, value, numbers.Real, "a positive number"))
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"`{name}` must be positive and finite, got {value!r}.")
    return v


def positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int; raises unless it is an integer ``>= minimum`` (bools are not integers)."""
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    v = int(_number(name, value, numbers.Integral, what))
    if v < minimum:
        raise ValueError(f"`{name}` must be {what}, got {value!r}.")
    return v


def probability(name: str, value: Any) -> float:
    """``value`` as a float in the open interval ``(0, 1)``."""
    v = float(_number(name, value, numbers.Real, "a number in (0, 1)"))
    if not 0 < v < 1:
        raise ValueError(f"`{name}` must be in (0, 1), got {value!r}.")
    return v


def positive_range(name: str, value: Any, strict: bool = False) -> tuple[float, float]:
    """A pair ``(lo, hi)`` of positive numbers with ``lo <= hi`` (``lo < hi`` if ``strict``)."""
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise ValueError(f"`{name}` as a range must be a pair (lo, hi), got {value!r}.")
    lo, hi = positive(name, value[0]), positive(name, value[1])
    if not (lo < hi if strict else lo <= hi):
        raise ValueError(f"`{name}` range (lo, hi) needs lo {'<' if strict else '<='} hi, got {value!r}.")
    return lo, hi


def check_callable(owner: str, name: str, value: Any) -> None:
    """``TypeError`` unless ``value`` is callable."""
    if not callable(value):
        raise TypeError(f"{owner}: `{name}` must be callable, got {type(value).__name__}.")


def no_unknown_arguments(owner: str, unknown: dict, accepted: list[str]) -> None:
    """``TypeError`` naming the public ``owner`` when ``unknown`` keyword arguments were passed."""
    if unknown:
        raise TypeError(
            f"{owner}() got unexpected keyword argument(s) {', '.join(map(repr, sorted(unknown)))}; "
            f"it takes {', '.join(accepted)}."
        )
