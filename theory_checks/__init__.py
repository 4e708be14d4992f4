"""Runnable theory checks for precondalg: claims of the FOP (Moskovitz 2019), PSGD (Li 2019), LODO (Liao
2023) and APO (Bae 2022) papers checked numerically against the real implementation, one module per
paper, with a registry, a runner and a CLI.

Importing the package registers every check of `fop`, `psgd` (with `psgd_criteria`, `psgd_fitting`),
`lodo` (with `lodo_dynamics`, `lodo_bowl`) and `apo`, and the claims of
`untested` (not numerically checkable as stated), in `REGISTRY`.
Run ``python -m theory_checks`` for the report, or use the runner API::

    from theory_checks import REGISTRY, run
    records = run(REGISTRY, ids=["APO-7"])
"""

from theory_checks import (  # noqa: F401  (registers)
    apo,
    apo_horizon,
    apo_kfac,
    apo_optimum,
    apo_proximal,
    fop,
    fop_convergence,
    fop_rotation,
    lodo,
    lodo_bowl,
    lodo_dynamics,
    psgd,
    psgd_criteria,
    psgd_fitting,
    untested,
)
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
