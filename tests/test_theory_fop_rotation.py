"""Tests of the FOP theory checks FOP-2 (Theorem 1, normalized FOP converges) and FOP-9 (the rotation
angle) in `theory_checks.fop_rotation`: each passes, every mutant fails on the part meant to catch it,
the numbers worth pinning are pinned, and the claims hold on `hypothesis` draws of the shared strategies
(`spd(n)`, dims, ranks, σ; for FOP-2 d, κL and ρ, in the slow tier).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import dims, seeds, spd
from theory_helpers import (
    assert_passes_with_every_mutant_caught,
    assert_registered_in_paper_order,
    mutant,
    part,
)

import precondalg as pa
from precondalg.optim import FOP
from theory_checks import REGISTRY, Check
from theory_checks import fop_rotation as fr
from theory_checks.runner import check_environment

IDS = ("FOP-2", "FOP-9")
NU = "max |ν_T − κ|"
BOUND, EQUALITY = "(a) min over P, g", "(a) max over P of |cos"


# ----- registration, pass and mutants -----


def test_the_checks_are_registered_in_paper_order():
    assert all(isinstance(REGISTRY[id], Check) for id in IDS)
    assert_registered_in_paper_order(REGISTRY, "FOP-", IDS)


@pytest.mark.parametrize("id", IDS)
def test_check_passes_and_every_mutant_fails(records, id):
    assert_passes_with_every_mutant_caught(records[id])


def test_fop2_mutants_are_caught_by_the_norm_they_break(records):
    r = records["FOP-2"]
    for m in r.mutants:
        assert any(c.startswith(NU) for c in m.caught_by), m
    assert mutant(r, "rescaled by ‖M‖_F").measured > 0.1  # ‖P̃‖₂ = κ‖P‖₂/‖M‖_F ≈ κ/√d
    assert any(c.startswith("control") for c in mutant(r, "rescaled by ‖M‖_F").caught_by)


def test_fop9_mutants_are_caught_where_intended(records):
    r = records["FOP-9"]
    indefinite = mutant(r, "indefinite")
    assert any(c.startswith(BOUND) for c in indefinite.caught_by) and indefinite.measured < -1  # cos < 0
    for name in ("P = MMᵀ", "P⁻¹"):  # SPD with P's spectrum: only the equality at g* sees them
        assert mutant(r, name).caught_by == (part(r, EQUALITY)["name"],)


# ----- pinned numbers -----


def test_fop2_pinned(records):
    r = records["FOP-2"]
    runs = r.details["runs"]
    assert [(row["d"], row["κL"], row["ρ"]) for row in runs] == [(2, 0.9, 1e-2), (6, 0.5, 1e-4)]
    assert all(abs(row["f_T − f*"]) < 1e-15 and abs(row["ν_T − κ"]) < 1e-6 for row in runs)
    assert part(r, "control")["measured"] > 0.05  # a stable oscillation around θ*, far from it


def test_fop9_pinned(records):
    r = records["FOP-9"]
    cases = r.details["cases"]
    assert [c["rank"] is None for c in cases] == [True] * 4 + [False] * 2
    assert cases[0]["κ"] == pytest.approx(1.0) and cases[1]["κ"] == pytest.approx(1e6, rel=1e-6)
    assert cases[1]["max angle (degrees)"] > 89.8  # the bound lets the angle approach 90°
    for c in cases[1:]:  # u_min + u_max is not where the bound is attained (unless κ = 1)
        assert c["cos at u_min + u_max"] > c["bound"] + 0.1
    assert part(r, "(b) max_t κ")["measured"] > 10


# ----- the claims on hypothesis draws -----


def _case_from(P: np.ndarray) -> fr.RotationCase:
    P_t = torch.as_tensor(P)
    P_t = (P_t + P_t.mT) / 2
    return fr.RotationCase(torch.linalg.cholesky(P_t).mT, P_t)


def _margins(case: fr.RotationCase, seed: int) -> tuple[float, float]:
    """min over probe g of cos − bound, and |cos(g*) − bound|, for one FOP step with the case's M."""
    G, kappa = fr.probe_gradients(case.P, torch.Generator().manual_seed(seed))
    cos = fr.cosines(fr.fop_directions(FOP, case.M, G, 0.1, case.rank), G)
    bound = fr.kantorovich(float(kappa))
    return float(cos.min()) - bound, abs(float(cos[-2]) - bound)


@settings(max_examples=100, deadline=None)
@given(P=dims(2, 8).flatmap(lambda n: spd(n)), seed=seeds())
def test_fop9_bound_holds_and_is_attained_for_drawn_spd(P, seed):
    """spd(n) (log λ in [lo, hi] ⊂ [−3, 3]): FOP's Pg has cos∠(Pg, g) >= 2√κ/(1+κ), with equality at g*."""
    with check_environment():
        margin, tight = _margins(_case_from(P), seed)
    assert margin >= -fr.ANGLE_TOL and tight <= fr.ANGLE_TOL


@settings(max_examples=100, deadline=None)
@given(n=dims(2, 8), data=st.data(), sigma=st.floats(1e-4, 1e-1), seed=seeds())
def test_fop9_bound_holds_for_low_rank_fop_at_its_own_init(n, data, sigma, seed):
    """FOP(rank=r, low_rank_std=σ): its own M₀ ~ N(0, σ²), P = I + M₀ᵀM₀ (reference formed here)."""
    rank = data.draw(st.integers(1, n - 1), label="rank")
    with check_environment():
        W = torch.zeros(3, n, requires_grad=True)
        opt = FOP([W], 0.1, rank=rank, low_rank_std=sigma, seed=seed % 2**31)
        (M,) = opt.state[W]["preconditioner"]["phi"]
        margin, tight = _margins(fr.RotationCase(M.clone(), torch.eye(n) + M.mT @ M, rank), seed)
    assert margin >= -fr.ANGLE_TOL and tight <= fr.ANGLE_TOL


@pytest.mark.slow
@settings(max_examples=5, deadline=None)
@given(seed=seeds(), d=dims(2, 6), kappa_l=st.sampled_from([0.5, 0.9]), rho=st.floats(1e-4, 1e-2))
def test_fop2_converges_on_drawn_instances(seed, d, kappa_l, rho):
    """Theorem 1's consequence on a drawn (d, κL, ρ) and problem: FOP-2 passes with that instance."""
    with check_environment():
        outcome = fr.fop_2(instances=((d, kappa_l, rho),), seed=seed % 2**31)
    assert outcome.passed, outcome.parts


def test_the_rescaled_preconditioner_has_norm_nu(float64):
    """The rescaled family's P̃ = ν_t·MᵀM/‖MᵀM‖₂ has spectral norm ν_t, at δ = 1 (‖P‖) and δ → 0 (κ)."""
    gen = torch.Generator().manual_seed(0)
    M = torch.randn(4, 4, generator=gen)
    schedule = fr.NuSchedule(0.3, fr.inverse_square)
    family = fr.rescaled_gram(schedule)
    for t, expected in ((1, float(torch.linalg.matrix_norm(M, 2)) ** 2), (10**8, 0.3)):
        schedule.t = t
        P = family.form(pa.Dense(M)) @ torch.eye(4)
        assert float(torch.linalg.matrix_norm(P, 2)) == pytest.approx(expected, rel=1e-12)
