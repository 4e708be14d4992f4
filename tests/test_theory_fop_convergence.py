"""Tests of FOP-1/1′ (Theorem 2 of the FOP paper and its sharper form) in `theory_checks.fop_convergence`:
the check passes, every mutant fails on the part meant to catch it (the faster claimed rate is refuted
by PEPit's exact worst case), PEPit's values are pinned against closed forms, and the rates hold on
`hypothesis` draws of the shared strategies (`pl_problem()` families and dims, `spd(n, −1.3, 1.3)` for P).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import pl_problem, spd
from theory_helpers import mutant, part

from theory_checks import REGISTRY, Check, run
from theory_checks import fop_convergence as fc
from theory_checks._numerics import E_RTOL
from theory_checks.runner import check_environment

ID = "FOP-1"
STEP = "max rel. error, library step"
PEPIT = "min claimed rate − PEPit"
ALIGNED = "aligned diagonal quadratic"


@pytest.fixture(scope="module")
def record():
    """FOP-1 and its mutants, run once through the runner API."""
    (r,) = run(REGISTRY, ids=[ID])
    return r


def test_check_passes_and_every_mutant_fails(record):
    r = record
    assert isinstance(REGISTRY[ID], Check)
    assert r.status == "PASS", (r.error, [p for p in r.parts if not p["passed"]])
    assert r.mutants and all(m.error is None and m.failed and m.caught_by for m in r.mutants), r.mutants


def test_mutants_are_caught_where_intended(record):
    r = record
    for name in ("P⁻¹", "M Mᵀ"):  # P applied as something else: the dense reference and the worst case
        caught = mutant(r, name).caught_by
        assert part(r, STEP)["name"] in caught and part(r, ALIGNED)["name"] in caught
    assert part(r, "max step contraction / Theorem 2")["name"] in mutant(r, "step ignores").caught_by
    faster = mutant(r, "claimed rate").caught_by  # refuted by the exact PEPit worst case
    assert part(r, PEPIT)["name"] in faster


def test_certificate_details(record):
    d = record.details
    assert d["solver"] == "CLARABEL" and d["max_duality_gap"] < 1e-9
    assert d["pl_relaxation"].startswith("certified 8, inconclusive 0")
    assert part(record, "PEPit solves not")["measured"] == 0


def test_pepit_values_match_closed_forms(float64):
    # Smooth strongly convex, γL ≤ 1: the exact one-step worst case is (1 − γμ)².
    for mu, gamma in ((0.1, 0.5), (0.3, 1.0)):
        value, gap, status = fc.pep_one_step("sc", mu, gamma)
        assert status == "optimal" and abs(gap) < 1e-9
        assert value == pytest.approx((1 - gamma * mu) ** 2, abs=fc.PEP_TOL)
    # Near rate 1 (found by a drawn seed): posed at f(x₀) − f* ≤ μ, the value is the closed form to 1e-9;
    # posed at f(x₀) − f* ≤ 1 it was 2.4e-6 below it, under an instance that attains it.
    mu, gamma = 2.778e-4, 0.0171
    value, _, status = fc.pep_one_step("sc", mu, gamma)
    assert status == "optimal" and value == pytest.approx((1 - gamma * mu) ** 2, abs=1e-9)
    # Beyond 2/(L + μ) the worst case is the fast mode, (1 − γL)² (the step-ignores-λ_max mutant's regime).
    value, _, status = fc.pep_one_step("sc", 5.7e-4, 7.8)
    assert status == "optimal" and value == pytest.approx((1 - 7.8) ** 2, rel=1e-6)
    # The Łojasiewicz relaxation lies below the PL rate 1 − μγ(2 − Lγ) (PEPit's documented 0.683267).
    value, _, status = fc.pep_one_step("pl", 0.2, 1.0)
    assert status == "optimal" and value == pytest.approx(0.683267, abs=1e-5) and value < 0.8


@settings(max_examples=10, deadline=None)
@given(problem=pl_problem(), data=st.data())
def test_rates_hold_on_drawn_pl_problems(problem, data):
    """A `pl_problem()` draw with P from spd(n, −1.3, 1.3) (THEORY.md §6): FOP-1's comparisons of the
    instance (`fop_convergence._instance`: the library's steps at both step sizes) all hold — also at a
    scalar P (spd draws P = I exactly when its log-range is [0, 0]), where ε = 1/(Lc) is Newton's step at
    θ* = 0 of x² + 3sin²x and each θ_{t+1} is a cancellation (the step error is measured against the
    operands' scale, as class E says).
    """
    P = torch.from_numpy(data.draw(spd(problem.theta0.numel(), *fc.P_LOG_RANGE), label="P"))
    tally = fc._Tally()
    with check_environment():
        fc._instance(problem, P, torch.linalg.cholesky(P).mT, tally, fc._fixed_p, fc.STEP_SIZES, fc.RATES)
    assert tally.paper <= 1 + fc.RATE_RTOL and tally.sharp <= 1 + fc.RATE_RTOL, tally
    assert tally.ref <= E_RTOL, tally
    assert tally.sampled_vs_pep <= fc.PEP_TOL and tally.rate_minus_pep >= -fc.PEP_TOL, tally
    assert tally.failed_solves == 0 and tally.gap <= fc.PEP_TOL / 1000, tally


def test_a_solver_failure_is_a_failed_certificate_not_an_exception(monkeypatch):
    """`_pep.solve` turns the solver giving up (cvxpy's SolverError) into status "solver_error" and NaN
    values, which FOP-1's tally counts as a failed solve (a failing part), instead of ending the check."""
    from cvxpy.error import SolverError
    from PEPit import PEP

    def give_up(self, **kwargs):
        raise SolverError("CLARABEL failed")

    monkeypatch.setattr(PEP, "solve", give_up)
    tally = fc._Tally()
    value = tally.pep("sc", 0.1234, 0.5678)  # an instance no other test solves (`pep_one_step` caches)
    assert value != value and tally.failed_solves == 1  # NaN: no bound, and the solve counts as failed
