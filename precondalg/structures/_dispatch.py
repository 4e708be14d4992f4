"""Tiny dispatch tables for the algebra's free functions (one table per operation).

Rules are looked up by the exact types of the operands: structure classes are final, so there is no
inheritance to walk.  A rule may return None to decline (e.g. factor shapes that do not conform), in
which case the operation falls back to its lazy composite.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Rules:
    """A table of rules keyed by a tuple of operand types."""

    def __init__(self, operation: str) -> None:
        self.operation = operation
        self._table: dict[tuple[type, ...], Callable[..., Any]] = {}

    def register(self, *types: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering a rule for operands of exactly these types."""

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._table[types] = fn
            return fn

        return decorate

    def lookup(self, *operands: Any) -> Callable[..., Any] | None:
        """The rule for these operands' types, or None."""
        return self._table.get(tuple(map(type, operands)))

    def types(self) -> list[tuple[type, ...]]:
        """The registered type signatures (used by the docs and the tests)."""
        return list(self._table)
