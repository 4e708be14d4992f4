"""Run registered checks and their mutants, producing the report records.

Each check runs in float64 on one thread (`check_environment`, restored afterwards) first with no overrides,
which must PASS, then once per mutant, which must FAIL.  A mutant that passes makes the check
"non-discriminating", and a mutant that raises an exception is reported as an error: neither counts
as "failed as required", so a check can only be green if each mutant is caught by its measurements.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from theory_checks.registry import REGISTRY, Check, NotTested, Outcome, Registry

__all__ = ["MutantResult", "Record", "check_environment", "json_safe", "margin", "run", "run_check"]


@dataclasses.dataclass(frozen=True)
class MutantResult:
    """One mutant's run.

    Attributes:
        name: the mutant's name.
        failed: True when the check FAILED on the mutant, as required.
        measured: the headline quantity measured on the mutant (None if it raised).
        quantity: what the headline measures.
        caught_by: the names of the parts that failed on the mutant.
        error: the exception, if the run raised (the mutant then does not count as failed).
    """

    name: str
    failed: bool
    measured: float | None
    quantity: str | None
    caught_by: tuple[str, ...] = ()
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class Record:
    """One report row.

    `status` is "PASS", "FAIL" or "NOT TESTED".  A check FAILs when its real run fails, raises, or any
    mutant does not fail.  "NOT TESTED" rows carry a `reason` and are never counted as failures.
    `quantity`, `measured`, `bound`, `relation` and `margin` describe the headline part (the first failing
    part, else the first); `parts` holds every part, each with its `margin` (see `margin`), `passed` the
    real run's verdict alone, and `seconds` the wall time of the real run plus all its mutant runs.

    The **margin** of a part is the room left before it would fail, as a fraction of its bound:
    (bound − measured)/|bound| for an upper bound (<=, <) and (measured − bound)/|bound| for a lower bound
    (>=, >); where the bound is 0, the absolute room bound − measured or measured − bound.  A passing part
    has margin >= 0 (> 0 for a strict relation): 1 means the measurement uses none of its bound (an error
    of 1e-16 against a tolerance of 1e-10), 0.01 that it is within 1% of it (a theorem's rate nearly
    attained); a failing part has a negative margin, the fraction by which it breaks its bound.  An
    equality (==, counts and bit-exact zeros) has no margin (None; the report prints "exact").
    """

    id: str
    paper: str
    statement: str
    provenance: str
    status: str
    tolerance: str | None = None
    quantity: str | None = None
    measured: float | None = None
    bound: float | None = None
    relation: str | None = None
    passed: bool | None = None
    mutants: tuple[MutantResult, ...] = ()
    parts: tuple[dict[str, Any], ...] = ()
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    reason: str | None = None
    error: str | None = None
    margin: float | None = None

    @property
    def mutants_failed(self) -> int:
        """How many mutants failed, as required."""
        return sum(m.failed for m in self.mutants)

    @property
    def counts_as_failure(self) -> bool:
        """Whether this row makes the run fail (a FAIL; NOT TESTED rows never do)."""
        return self.status == "FAIL"

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-safe data (non-finite floats as the strings "nan", "inf", "-inf")."""
        return json_safe(dataclasses.asdict(self))


@contextlib.contextmanager
def check_environment() -> Iterator[None]:
    """Run the body in float64 on one intra-op thread, restoring both after.

    The checks work on small matrices, where one thread is faster and its timings far steadier than
    several threads contending for a shared CPU.
    """
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)


def json_safe(x: Any) -> Any:
    """Convert nested data to JSON-safe values: tuples to lists, tensors and numpy scalars to floats,
    non-finite floats to "nan"/"inf"/"-inf"."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, (int, str)):
        return x
    if isinstance(x, torch.Tensor):
        return json_safe(x.tolist())
    value = float(x)
    return value if math.isfinite(value) else str(value)


def margin(measured: float, relation: str, bound: float) -> float | None:
    """The margin of one part (see `Record`): the room left before `measured relation bound` fails.

    Args:
        measured: the measured value (NaN gives NaN).
        relation: one of <=, <, >=, >, ==.
        bound: the bound.

    Returns:
        (bound − measured)/|bound| for <= and <, (measured − bound)/|bound| for >= and >, the absolute
        difference where the bound is 0; None for ==.

    Examples:
        >>> margin(1e-12, "<=", 1e-10)
        0.99
        >>> margin(0.5, ">=", 1.0)
        -0.5
    """
    if relation == "==":
        return None
    room = bound - measured if relation in ("<=", "<") else measured - bound
    return room / abs(bound) if bound != 0 else room


def _call(chk: Check, overrides: dict[str, Any]) -> Outcome:
    with check_environment():
        out = chk.fn(**overrides)
    if not isinstance(out, Outcome):
        raise TypeError(f"{chk.id}: a check must return an Outcome; got {type(out).__name__}")
    return out


def _run_mutant(chk: Check, name: str, overrides: dict[str, Any]) -> MutantResult:
    try:
        out = _call(chk, overrides)
    except Exception as exc:  # noqa: BLE001 - a raising mutant is reported, not propagated
        return MutantResult(name, False, None, None, error=f"{type(exc).__name__}: {exc}")
    caught_by = tuple(p.name for p in out.parts if not p.passed)
    return MutantResult(name, not out.passed, out.headline.measured, out.headline.name, caught_by)


def run_check(entry: Check | NotTested) -> Record:
    """Run one check (real run, then each mutant) and return its record."""
    common = {"id": entry.id, "paper": entry.paper, "statement": entry.statement, "provenance": entry.tag}
    if isinstance(entry, NotTested):
        return Record(**common, status="NOT TESTED", reason=entry.reason)
    start = time.perf_counter()
    try:
        out = _call(entry, {})
    except Exception as exc:  # noqa: BLE001 - a raising check is a FAIL row, not a crash of the report
        return Record(
            **common,
            status="FAIL",
            tolerance=entry.tolerance,
            passed=False,
            seconds=time.perf_counter() - start,
            error="".join(traceback.format_exception_only(exc)).strip(),
        )
    mutants = tuple(_run_mutant(entry, name, ov) for name, ov in entry.mutants.items())
    head = out.headline
    ok = out.passed and all(m.failed for m in mutants)
    return Record(
        **common,
        status="PASS" if ok else "FAIL",
        tolerance=entry.tolerance,
        quantity=head.name,
        measured=head.measured,
        bound=head.bound,
        relation=head.relation,
        passed=out.passed,
        mutants=mutants,
        parts=tuple(
            dataclasses.asdict(p) | {"margin": margin(p.measured, p.relation, p.bound)} for p in out.parts
        ),
        details=out.details,
        seconds=time.perf_counter() - start,
        margin=margin(head.measured, head.relation, head.bound),
    )


def run(
    registry: Registry = REGISTRY,
    ids: Iterable[str] | None = None,
    progress: Callable[[int, int, Record], None] | None = None,
) -> list[Record]:
    """Run the checks of `registry` (all, or those in `ids`, in registry order).

    Args:
        registry: the checks and claims.
        ids: the ids to run (None: all).
        progress: called after each record as ``progress(k, n, record)``, k = 1 … n.

    Raises:
        KeyError: an id in `ids` is not registered.
    """
    wanted = registry.ids() if ids is None else list(ids)
    unknown = [i for i in wanted if i not in registry.ids()]
    if unknown:
        raise KeyError(f"unknown check id(s) {unknown}; known: {registry.ids()}")
    entries = [e for e in registry if e.id in wanted]
    records = []
    for k, entry in enumerate(entries, 1):
        records.append(run_check(entry))
        if progress is not None:
            progress(k, len(entries), records[-1])
    return records
