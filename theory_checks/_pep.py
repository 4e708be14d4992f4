"""Certified worst cases with PEPit (performance estimation): the solver settings every check shares and
one call that solves a PEP and returns what a certificate needs — the dual value (the certified bound),
the duality gap and the solver's status.

A PEP maximises a performance metric over every function of a class that interpolates the iterates.  On
a class whose interpolation conditions are necessary and sufficient (PEPit's `SmoothFunction`, Taylor,
Hendrickx & Glineur 2017, and `SmoothStronglyConvexFunction`) its value is the exact worst case; on a
relaxed class (`SmoothQuadraticLojasiewiczFunction*`) it is an upper bound only.  A solve whose status is
not "optimal" is a failed certificate, never a pass: the checks count such solves as a failing part.
"""

from __future__ import annotations

import math
import warnings

from cvxpy.error import SolverError
from PEPit import PEP

__all__ = ["PEP_TOL", "SOLVER", "SOLVER_TOL", "solve"]

SOLVER = "CLARABEL"
SOLVER_TOL = 3e-10
"""CLARABEL's gap and feasibility tolerances (tol_gap_abs, tol_gap_rel, tol_feas)."""
EQUILIBRATE_ITERATIONS = 100
"""CLARABEL's matrix-equilibration iterations for a second solve (its default 10 leaves some solves
"optimal_inaccurate" where the rate is within 1e-5 of 1, e.g. μ/L = 8e-4 at γL = 7e-3)."""
PEP_TOL = 1e-6
"""Absolute tolerance of every comparison with a PEPit value: CLARABEL's value is within ~8e-7 of the
closed form (1 − γμ)² where that rate is within 1e-4 of 1, although its duality gaps stay below 1e-9."""


def solve(problem: PEP, tol: float = SOLVER_TOL) -> tuple[float, float, str]:
    """Solve `problem` with CLARABEL at `tol` (gap and feasibility) through PEPit's cvxpy wrapper; a
    solve that ends "optimal_inaccurate" is solved once more with `EQUILIBRATE_ITERATIONS` rounds of
    equilibration (the status of that second solve is what is returned and judged).  A solve the solver
    gives up on (cvxpy's SolverError, e.g. CLARABEL on a one-step PEP at γL = 398, whose worst ratio is
    1.6e5) returns (nan, nan, "solver_error"): a failed certificate, which the checks count, not an
    exception that would end the check.

    Returns:
        (dual value = the certified bound, duality gap dual − primal, the solver's status string).
    """
    options = dict(wrapper="cvxpy", solver=SOLVER, verbose=0, tol_gap_abs=tol, tol_gap_rel=tol, tol_feas=tol)
    with warnings.catch_warnings():  # cvxpy's "inaccurate" warning: the status returned is judged instead
        warnings.simplefilter("ignore", UserWarning)
        try:
            dual = problem.solve(**options)
            if problem.wrapper.prob.status == "optimal_inaccurate":
                dual = problem.solve(**options, equilibrate_max_iter=EQUILIBRATE_ITERATIONS)
        except SolverError:
            return math.nan, math.nan, "solver_error"
    prob = problem.wrapper.prob
    return float(dual), float(dual - prob.value), str(prob.status)
