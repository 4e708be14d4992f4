"""Runnable theory checks for precondalg (THEORY.md): one module per paper, a registry, a runner, a CLI.

Importing the package registers every check of `fop`, `psgd`, `lodo` and `apo`, and the THEORY.md §7
claims of `untested`, in `REGISTRY`.
Run ``python -m theory_checks`` for the report, or use the runner API::

    from theory_checks import REGISTRY, run
    records = run(REGISTRY, ids=["APO-7"])
"""

from theory_checks import apo, fop, lodo, psgd, untested  # noqa: F401  (importing registers them)
from theory_checks.registry import REGISTRY, Check, Measures, NotTested, Outcome, Registry, check, not_tested
from theory_checks.runner import MutantResult, Record, run, run_check

__all__ = [
    "REGISTRY",
    "Check",
    "Measures",
    "MutantResult",
    "NotTested",
    "Outcome",
    "Record",
    "Registry",
    "check",
    "not_tested",
    "run",
    "run_check",
]
