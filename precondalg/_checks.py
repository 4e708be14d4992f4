"""Argument checks shared by every constructor of the engine (not part of the public API).

One wording for every bad hyperparameter: ``"<Owner>: '<name>' must be <what>; got <value> (<type>)"``,
a `TypeError` when the value is not a number at all (a string, a bool, None) and a `ValueError` when it
is a number out of range (NaN included).  Classes passed where an instance is expected are refused with
the instance to write instead.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["check_choice", "check_instance", "check_number", "given", "unset"]


def _got(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def check_number(
    owner: str,
    name: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    integer: bool = False,
) -> None:
    """Check that `value` is a real number (an int with `integer`) in the interval from lo to hi.

    Args:
        owner: who checks, e.g. "Fisher" (starts the message).
        name: the argument's name, e.g. "damping".
        value: the value given.
        lo: the lower end (None: unbounded).
        hi: the upper end (None: unbounded).
        lo_open: exclude lo.
        hi_open: exclude hi.
        integer: require an int.

    Raises:
        TypeError: not a real number (or not an int with `integer`; bool is never a number here).
        ValueError: out of range, or NaN.
    """
    kind = "an int" if integer else "a real number"
    lower = "" if lo is None else (f" > {lo:g}" if lo_open else f" >= {lo:g}")
    upper = "" if hi is None else (f" < {hi:g}" if hi_open else f" <= {hi:g}")
    what = kind + lower + (" and" if lower and upper else "") + upper
    wanted = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, wanted):
        raise TypeError(f"{owner}: '{name}' must be {what}; got {_got(value)}")
    x = float(value)
    ok = not math.isnan(x)
    ok = ok and (lo is None or (x > lo if lo_open else x >= lo))
    ok = ok and (hi is None or (x < hi if hi_open else x <= hi))
    if not ok:
        raise ValueError(f"{owner}: '{name}' must be {what}; got {value!r}")


def check_choice(owner: str, name: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Check that `value` is one of `choices`.

    Raises:
        ValueError: it is not (the message lists the choices).
    """
    if not any(value == c and type(value) is type(c) for c in choices):
        raise ValueError(f"{owner}: '{name}' must be one of {choices}; got {value!r}")


def check_instance(owner: str, name: str, value: Any, expected: type, example: str) -> None:
    """Check that `value` is an instance of `expected`; a class is refused with the instance to pass.

    Args:
        owner: who checks.
        name: the argument's name.
        value: the value given.
        expected: the abstract base class the value must be an instance of.
        example: an example of a right value, e.g. "objective=Fisher(damping=1e-3)".

    Raises:
        TypeError: the value is not an instance of `expected` (naming the argument and the fix).
    """
    if isinstance(value, expected):
        return
    if isinstance(value, type) and issubclass(value, expected):
        raise TypeError(
            f"{owner}: '{name}' must be an instance of {expected.__name__}; got the class "
            f"{value.__name__} itself: write {name}={value.__name__}(...)"
        )
    raise TypeError(f"{owner}: '{name}' must be a {expected.__name__}, e.g. {example}; got {_got(value)}")


class _Default(float):
    """A float default that knows it was not given (its value shows in signatures)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return float.__repr__(self)


class _DefaultTuple(tuple):
    """A tuple default that knows it was not given."""

    __slots__ = ()


class _DefaultInt(int):
    """An int default that knows it was not given."""

    __slots__ = ()

    def __repr__(self) -> str:
        return int.__repr__(self)


class _DefaultStr(str):
    """A str default that knows it was not given."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str.__repr__(self)


_DEFAULTS = (_Default, _DefaultTuple, _DefaultInt, _DefaultStr)


def unset(value: float | int | str | tuple[float, ...]) -> Any:
    """A default argument value that `given` can tell from the same value passed by the caller.

    Examples:
        >>> def f(momentum=unset(0.9)):
        ...     return given(momentum)
        >>> f(), f(0.9)
        (False, True)
    """
    if isinstance(value, tuple):
        return _DefaultTuple(value)
    if isinstance(value, str):
        return _DefaultStr(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return _DefaultInt(value)
    return _Default(value)


def given(value: Any) -> bool:
    """Whether an argument whose default is `unset(...)` was passed by the caller."""
    return not isinstance(value, _DEFAULTS)
