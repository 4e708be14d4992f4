"""The registry of theory checks: the `@check` decorator, outcomes, and "not tested" claims.

A check is a function of keyword arguments only.  Its defaults are the real
implementation pieces (functions, structures, constants) and each *mutant* is a dict of keyword
overrides that substitutes a deliberately wrong variant.  The runner (`theory_checks.runner`) calls
the function once with no overrides, which must PASS, and once per mutant, which must FAIL.

A check returns an `Outcome`, usually built with `Measures`: a list of named quantities, each compared
with its bound, so that the report shows the real numbers measured in the run.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from collections.abc import Callable
from typing import Any

__all__ = [
    "PROVENANCE_TAGS",
    "TIERS",
    "REGISTRY",
    "Check",
    "Measures",
    "NotTested",
    "Outcome",
    "Part",
    "Registry",
    "check",
    "not_tested",
]

PROVENANCE_TAGS = ("PAPER", "CODE", "RECON", "DERIVED", "UNKNOWN")
TIERS = ("fast", "dynamics")
"""A check's tier: "fast" runs in seconds; "dynamics" trains (stochastic trajectories, their medians)."""
PAPER_ORDER = ("FOP", "PSGD", "LODO", "APO")
"""The order of the papers in the report."""
_RELATIONS: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda x, b: x <= b,
    "<": lambda x, b: x < b,
    ">=": lambda x, b: x >= b,
    ">": lambda x, b: x > b,
    "==": lambda x, b: x == b,
}


@dataclasses.dataclass(frozen=True)
class Part:
    """One measured quantity of a check, compared with its bound.

    Attributes:
        name: what was measured (e.g. "max rel. error, fast form vs P @ vec(G)").
        measured: the value measured in the run (NaN counts as a failure).
        bound: the bound it is compared with (a proven bound, or zero error up to its tolerance class).
        relation: how `measured` must compare with `bound`: one of <=, <, >=, >, ==.
        passed: whether it does.
    """

    name: str
    measured: float
    bound: float
    relation: str
    passed: bool


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What a check returns: the headline quantity, its bound, pass/fail and every part.

    The headline is the first failing part, or the first part when all pass; the check passes only
    when every part passes.
    """

    parts: tuple[Part, ...]
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("Outcome: a check must measure at least one quantity; got no parts")

    @property
    def passed(self) -> bool:
        """Whether every part passed."""
        return all(p.passed for p in self.parts)

    @property
    def headline(self) -> Part:
        """The first failing part, else the first part."""
        return next((p for p in self.parts if not p.passed), self.parts[0])


class Measures:
    """Collects the parts of an `Outcome`, in report order (the first is the headline).

    Examples:
        >>> m = Measures()
        >>> m.at_most("max rel. error", 3e-16, 1e-10)
        >>> m.outcome().passed
        True
    """

    def __init__(self) -> None:
        self._parts: list[Part] = []
        self.details: dict[str, Any] = {}

    def add(self, name: str, measured: float, relation: str, bound: float) -> None:
        """Record `measured relation bound` (NaN never passes)."""
        if relation not in _RELATIONS:
            raise ValueError(f"Measures.add: relation must be one of {sorted(_RELATIONS)}; got {relation!r}")
        x, b = float(measured), float(bound)
        ok = not math.isnan(x) and _RELATIONS[relation](x, b)
        self._parts.append(Part(name, x, b, relation, ok))

    def at_most(self, name: str, measured: float, bound: float) -> None:
        """Record `measured <= bound` (errors against a tolerance)."""
        self.add(name, measured, "<=", bound)

    def at_least(self, name: str, measured: float, bound: float) -> None:
        """Record `measured >= bound` (e.g. a minimum eigenvalue against −tolerance)."""
        self.add(name, measured, ">=", bound)

    def positive(self, name: str, measured: float) -> None:
        """Record `measured > 0`."""
        self.add(name, measured, ">", 0.0)

    def equal(self, name: str, measured: float, expected: float) -> None:
        """Record an exact equality (counts, bit-exact zeros)."""
        self.add(name, measured, "==", expected)

    def outcome(self) -> Outcome:
        """The collected parts and details as an `Outcome`."""
        return Outcome(tuple(self._parts), dict(self.details))


@dataclasses.dataclass(frozen=True)
class Check:
    """A registered check.

    Attributes:
        id: the check's id, e.g. "PSGD-8" (paper prefix and number).
        paper: paper and equation, e.g. "PSGD (Li 2019), Eq. 20".
        statement: what is measured and the claim it checks (identity, invariant, closed form, bound,
            cost count, ...), one or two sentences.
        tolerance: tolerance class and bound, e.g. "E: rel. error <= 1e-10".
        provenance: tags from `PROVENANCE_TAGS`, e.g. ("PAPER", "DERIVED").
        fn: the check function (keyword arguments only, real implementation as defaults).
        mutants: mutant name -> keyword overrides.
        tier: "fast" (identities, closed forms, bounds: seconds) or "dynamics" (training trajectories
            and their statistics), one of `TIERS`.
    """

    id: str
    paper: str
    statement: str
    tolerance: str
    provenance: tuple[str, ...]
    fn: Callable[..., Outcome]
    mutants: dict[str, dict[str, Any]]
    tier: str = "fast"

    @property
    def tag(self) -> str:
        """The provenance tag as printed, e.g. "[PAPER+DERIVED]"."""
        return "[" + "+".join(self.provenance) + "]"


@dataclasses.dataclass(frozen=True)
class NotTested:
    """A claim listed in the report as "not tested", with the reason; never a failure."""

    id: str
    paper: str
    statement: str
    reason: str
    provenance: tuple[str, ...]

    @property
    def tag(self) -> str:
        """The provenance tag as printed."""
        return "[" + "+".join(self.provenance) + "]"


class Registry:
    """An ordered collection of checks and not-tested claims, keyed by id."""

    def __init__(self) -> None:
        self._entries: dict[str, Check | NotTested] = {}

    def __iter__(self):
        return iter(sorted(self._entries.values(), key=_report_order))

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, id: str) -> Check | NotTested:
        return self._entries[id]

    def ids(self) -> list[str]:
        """All ids, in report order (see `_report_order`)."""
        return [e.id for e in self]

    def _add(self, entry: Check | NotTested) -> None:
        if entry.id in self._entries:
            raise ValueError(f"Registry: id {entry.id!r} is already registered")
        self._entries[entry.id] = entry

    def check(
        self,
        *,
        id: str,
        paper: str,
        statement: str,
        tolerance: str,
        provenance: str | tuple[str, ...],
        mutants: dict[str, dict[str, Any]],
        tier: str = "fast",
    ) -> Callable[[Callable[..., Outcome]], Callable[..., Outcome]]:
        """Decorator registering a check function (see the module docstring).

        Raises:
            ValueError: no mutants, a mutant overriding an argument the function does not take, an
                argument without a default, an unknown provenance tag or tier, or a duplicate id.
        """
        tags = _tags(id, provenance)
        if tier not in TIERS:
            raise ValueError(f"{id}: tier must be one of {TIERS}; got {tier!r}")

        def decorate(fn: Callable[..., Outcome]) -> Callable[..., Outcome]:
            _validate_mutants(id, fn, mutants)
            self._add(Check(id, paper, statement, tolerance, tags, fn, dict(mutants), tier))
            return fn

        return decorate

    def not_tested(
        self, *, id: str, paper: str, statement: str, reason: str, provenance: str | tuple[str, ...]
    ) -> None:
        """Register a claim that is listed as "not tested", with the reason."""
        self._add(NotTested(id, paper, statement, reason, _tags(id, provenance)))


def _report_order(entry: Check | NotTested) -> tuple:
    """Checks before not-tested claims; papers in `PAPER_ORDER`; then the number in the id."""
    paper, _, rest = entry.id.partition("-")
    number = re.match(r"\d+", rest)
    return (
        isinstance(entry, NotTested),
        PAPER_ORDER.index(paper) if paper in PAPER_ORDER else len(PAPER_ORDER),
        paper,
        int(number.group()) if number else math.inf,
        entry.id,
    )


def _tags(id: str, provenance: str | tuple[str, ...]) -> tuple[str, ...]:
    tags = tuple(provenance.split("+")) if isinstance(provenance, str) else tuple(provenance)
    unknown = [t for t in tags if t not in PROVENANCE_TAGS]
    if not tags or unknown:
        raise ValueError(f"{id}: provenance tags must be among {PROVENANCE_TAGS}; got {provenance!r}")
    return tags


def _validate_mutants(id: str, fn: Callable[..., Any], mutants: dict[str, dict[str, Any]]) -> None:
    if not mutants:
        raise ValueError(f"{id}: a check needs at least one mutant (the mutation self-test); got none")
    params = inspect.signature(fn).parameters
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty]
    if missing:
        raise ValueError(f"{id}: every argument of a check needs a default (the real piece): {missing}")
    for name, overrides in mutants.items():
        unknown = sorted(set(overrides) - set(params))
        if not overrides or unknown:
            raise ValueError(
                f"{id}: mutant {name!r} must override some of the arguments {sorted(params)}; got "
                f"{sorted(overrides)}"
            )


REGISTRY = Registry()
check = REGISTRY.check
not_tested = REGISTRY.not_tested
