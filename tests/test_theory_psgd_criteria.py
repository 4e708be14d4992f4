"""Tests of the PSGD criteria theory checks (`theory_checks.psgd_criteria`): PSGD-1 to PSGD-7 and
PSGD-13 pass, every mutant fails, the report rows are complete and fast, and the closed forms and
helpers they rest on hold on small hand-made cases and on `hypothesis` draws.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import seeds

import precondalg as pa
from theory_checks import REGISTRY, Check, run_check
from theory_checks import psgd_criteria as pc
from theory_checks.runner import check_environment

IDS = ("PSGD-1", "PSGD-2", "PSGD-3", "PSGD-4", "PSGD-5", "PSGD-6", "PSGD-7", "PSGD-13")


def parts(record) -> dict[str, dict]:
    return {p["name"]: p for p in record.parts}


def part(record, prefix: str) -> dict:
    (found,) = [p for name, p in parts(record).items() if name.startswith(prefix)]
    return found


# ----- every check passes, every mutant fails -----


def test_the_checks_are_registered_in_paper_order():
    assert all(isinstance(REGISTRY[id], Check) for id in IDS)
    psgd = [id for id in REGISTRY.ids() if id in IDS]
    assert psgd == list(IDS)




@pytest.mark.parametrize("id", ["PSGD-4", "PSGD-7"])
def test_checks_are_deterministic(id):
    assert run_check(REGISTRY[id]).parts == run_check(REGISTRY[id]).parts


def test_scale_invariance_claim_cites_psgd1_as_checked():
    reason = REGISTRY["PSGD-SCALEINV"].reason
    assert "PSGD-1 checks" in reason and "PSGD-1 (planned)" not in reason


# ----- what the measurements pin -----


def test_psgd1_noiseless_preconditioner_is_inverse_absolute_hessian(records, float64):
    H = torch.diag(torch.tensor([2.0, -0.5, 4.0]))
    P = pc.optimal_preconditioner(pc.linear_moments(H, torch.eye(3), torch.zeros(3, 3)))
    torch.testing.assert_close(P, torch.diag(torch.tensor([0.5, 2.0, 0.25])), rtol=1e-14, atol=1e-14)
    r = records["PSGD-1"]
    assert part(r, "noiseless: mismatches")["measured"] == 0
    secant = {m.name: m for m in r.mutants}["secant estimate E[δθδĝᵀ]E[δĝδĝᵀ]⁻¹ (H⁻¹ when noiseless)"]
    assert any(name.startswith("noiseless: mismatches") for name in secant.caught_by)
    assert any(name.startswith("min λ_min(P)") for name in secant.caught_by)


def test_psgd2_noise_keeps_eigenvalues_inside_the_unit_disc(records):
    r = records["PSGD-2"]
    assert part(r, "(b) max (|eig(PH)| − 1)/cond(A)")["measured"] <= 1e-12
    assert r.details["(b) max |eig(PH)|"] <= 1 + 1e-9
    assert part(r, "(b) noiseless draws")["measured"] <= 1e-12  # |eig| = 1 without noise, up to rounding
    assert part(r, "(c) min λ_min")["measured"] >= 0  # P ⪯ |H|⁻¹


def test_psgd3_scalar_formula_and_sharp_dynamics_bounds(records):
    assert pc.scalar_optimum(3.0, 16.0) == pytest.approx(0.2, rel=1e-15)
    r = records["PSGD-3"]
    assert part(r, "(a) negative roots with c″ < 0")["measured"] == 12
    contract, expand = part(r, "(d) h > 0"), part(r, "(d) h < 0")
    # μ = 0.5, μ₀ = 0.1: the bounds 0.595 and 1.405 are nearly reached (the band is sharp)
    assert contract["bound"] == pytest.approx(0.595, rel=1e-9) and contract["measured"] > 0.58
    assert expand["bound"] == pytest.approx(1.405, rel=1e-9) and expand["measured"] < 1.42


def test_psgd4_mutant_without_create_graph_returns_zeros(records, float64):
    problem = pc.hvp_problems(torch.Generator().manual_seed(0))[0]
    params = list(problem.model.parameters())
    x, y = problem.batch
    ev = pc._NoCreateGraph().evaluate(params, lambda: problem.loss_fn(problem.model(x), y),
                                      torch.Generator().manual_seed(1))
    assert all(bool((h == 0).all()) for h in ev.per_param["h"].values())
    mutants = {m.name: m for m in records["PSGD-4"].mutants}
    no_graph = mutants["double backward without create_graph=True (h = 0)"]
    assert no_graph.caught_by == ("max rel. error, Newton(hvp='autograd') h vs Ĥv (3 problems)",)
    assert no_graph.measured == 1.0


def test_psgd5_batch_moment_limits_and_the_fisher_pairs(float64):
    gen = torch.Generator().manual_seed(0)
    g, F = torch.randn(3, generator=gen), pc.spd(3, gen)
    torch.testing.assert_close(pc.batch_second_moment(F, g, 1), F)  # one sample: F
    big = pc.batch_second_moment(F, g, 10**8)
    torch.testing.assert_close(big, torch.outer(g, g), rtol=1e-6, atol=1e-6)  # large batch: ggᵀ
    assert pc.fisher_map_error(0.7, gen) == 0.0
    h, v = pc.fisher_columns(torch.randn(3, 4, generator=gen), 0.3)
    assert h.shape == v.shape == (3, 4 * 6)
    torch.testing.assert_close(v @ v.mT / v.shape[1], torch.eye(3))  # the sigma points: E[vvᵀ] = I


def test_psgd6_derived_inertia_counts():
    assert pc.derived_negative_count(torch.tensor([1.0, 2.0])) == 0  # positive definite: minimum
    assert pc.derived_negative_count(torch.tensor([-1.0, -2.0])) == 3  # negative definite: maximum
    assert pc.derived_negative_count(torch.tensor([2.0, -1.0])) == 2  # one diagonal, one pair
    assert pc.derived_negative_count(torch.tensor([1.0, -2.0])) == 1  # d₁d₂(d₁ + d₂) > 0: diagonal only


def test_psgd6_counts(records):
    r = records["PSGD-6"]
    assert part(r, "points found")["measured"] == 8 + 32
    assert part(r, "points that are stationary")["measured"] == 40


@pytest.mark.parametrize(
    "Q, size",
    [
        (pa.Triangular(torch.eye(4, dtype=torch.float64)), 10),
        (pa.Diagonal(torch.ones(4, dtype=torch.float64)), 4),
        (pa.Kronecker(pa.Triangular(torch.eye(3, dtype=torch.float64)),
                      pa.Triangular(torch.eye(2, dtype=torch.float64))), 9),
        (pa.Normalization(torch.ones(4, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)), 7),
    ],
)
def test_psgd7_algebra_bases_have_the_group_dimension(Q, size, float64):
    assert len(pc.algebra_basis(Q)) == size


def test_psgd7_mutants_are_caught_by_finite_differences(records):
    for m in records["PSGD-7"].mutants:
        assert any(name.startswith("max rel. error, central differences") for name in m.caught_by), m.name


def test_psgd13_documents_the_epsilon_inside_the_root(records, float64):
    v = torch.tensor([0.0, 0.04, 1.0, 9.0])
    torch.testing.assert_close(pc.fisher_diagonal(v, 0.5), 1 / (v + 0.25).sqrt())
    rms = pc.rmsprop_denominator(v, 0.25)  # precondalg's rmsprop rule: torch.optim's √v + ε
    torch.testing.assert_close(rms, 1 / (v.sqrt() + 0.25))
    assert float((rms - pc.fisher_diagonal(v, 0.5)).abs().max()) > 0.1  # the conventions differ
    H = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
    torch.testing.assert_close(pc.equilibration(H), torch.tensor([0.2, 0.5]))
    r = records["PSGD-13"]
    assert r.details["max rel. gap, 1/√(v + λ²) vs the rmsprop rule's 1/(√v + λ²)"] > 1e-2


# ----- the closed forms on hypothesis draws -----


@settings(max_examples=25, deadline=None)
@given(seed=seeds(), n=st.integers(2, 6), noise=st.floats(0.0, 2.0))
def test_optimal_preconditioner_solves_eq8_and_damps(seed, n, noise):
    with check_environment():
        gen = torch.Generator().manual_seed(seed)
        H, B = pc.sym_indefinite(n, gen), pc.spd(n, gen)
        m = pc.linear_moments(H, B, pc.psd_noise(n, gen, noise))
        P = pc.optimal_preconditioner(m)
        scale = float(m.B.abs().max())
        assert float((P @ m.A @ P - m.B).abs().max()) <= 1e-9 * scale
        assert float(torch.linalg.eigvalsh((P + P.mT) / 2)[0]) > 0
        assert float(torch.linalg.eigvals(P @ H).abs().max()) <= 1 + 1e-9


@settings(max_examples=25, deadline=None)
@given(seed=seeds(), n=st.integers(2, 5))
def test_stationary_points_are_stationary_for_the_criterion(seed, n):
    with check_environment():
        gen = torch.Generator().manual_seed(seed)
        A = pc.spd(n, gen)
        found = pc.stationary_points(A)
        assert len(found) == 2**n
        assert sum(bool(torch.linalg.eigvalsh(P)[0] > 0) for P in found) == 1
        for P in found:
            grad = pc.criterion_gradient(P, pc._factor(A), torch.eye(n))
            assert float(grad.abs().max()) <= 1e-9 * float(A.abs().max())
