"""Helpers shared by the theory-check test files: a record's named part and named mutant result."""

from __future__ import annotations

import math
from typing import Any


def part(record: Any, prefix: str) -> dict:
    """The one part of a check's record whose name starts with `prefix`."""
    (found,) = [p for p in record.parts if p["name"].startswith(prefix)]
    return found


def mutant(record: Any, prefix: str) -> Any:
    """The one mutant result of a check's record whose name starts with `prefix`."""
    (found,) = [m for m in record.mutants if m.name.startswith(prefix)]
    return found


def assert_passes_with_every_mutant_caught(record: Any) -> None:
    """The check passed, every mutant failed through a measured part (not by raising), and every bound
    is finite and not the vacuous "> 0"."""
    assert record.status == "PASS", (record.error, [p for p in record.parts if not p["passed"]])
    assert record.mutants and all(m.error is None and m.failed and m.caught_by for m in record.mutants), (
        record.mutants
    )
    for p in record.parts:
        assert math.isfinite(p["bound"]) and not (p["relation"] == ">" and p["bound"] == 0)


def assert_registered_in_paper_order(registry: Any, prefix: str, ids: tuple[str, ...]) -> None:
    """`ids` are registered checks, and the paper's numbered ids come in numeric order."""
    numbered = [id for id in registry.ids() if id.startswith(prefix) and id[len(prefix):].isdigit()]
    assert numbered == sorted(numbered, key=lambda id: int(id[len(prefix):])) and set(ids) <= set(numbered)
