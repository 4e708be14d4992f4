"""Helpers shared by the theory-check test files: a record's named part and named mutant result."""

from __future__ import annotations

from typing import Any


def part(record: Any, prefix: str) -> dict:
    """The one part of a check's record whose name starts with `prefix`."""
    (found,) = [p for p in record.parts if p["name"].startswith(prefix)]
    return found


def mutant(record: Any, prefix: str) -> Any:
    """The one mutant result of a check's record whose name starts with `prefix`."""
    (found,) = [m for m in record.mutants if m.name.startswith(prefix)]
    return found
