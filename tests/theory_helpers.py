"""Helpers shared by the theory-check test files: a record's named part and named mutant result, and a
check run (real run and mutants) with drawn keyword arguments."""

from __future__ import annotations

import math
from typing import Any

from theory_checks.registry import Check
from theory_checks.runner import check_environment


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


def assert_discriminates(chk: Check, **overrides: Any) -> None:
    """The check PASSES with `overrides` (e.g. a drawn ``seed``) and FAILS on each of its mutants with the
    same overrides, as the runner requires of the report's run (THEORY.md §1.3).

    Every run is made as the runner makes it: in `check_environment` (float64, one thread), the real run
    first.  A mutant's own overrides take precedence over `overrides`; a run that raises propagates (a
    raising mutant is not caught by a measurement).

    Args:
        chk: the registered check.
        **overrides: keyword arguments of the check, given to the real run and to every mutant.
    """
    with check_environment():
        real = chk.fn(**overrides)
        mutants = {name: chk.fn(**{**overrides, **ov}) for name, ov in chk.mutants.items()}
    failed = [(p.name, p.measured, p.relation, p.bound) for p in real.parts if not p.passed]
    assert real.passed, f"{chk.id} with {overrides}: the real run FAILS on {failed}"
    escaped = [name for name, out in mutants.items() if out.passed]
    assert not escaped, f"{chk.id} with {overrides}: these mutants PASS: {escaped}"
