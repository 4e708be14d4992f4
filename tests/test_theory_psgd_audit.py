"""Tests of the audited PSGD theory checks (`theory_checks.psgd`): PSGD-8 runs the library's Lie-group
fitting (and the `PSGD` preset) against Eq. 20 written densely, PSGD-11 takes the block-triangular group
and the Lie projection from the library, and each library bug of the audit (a tril triangular Lie
projection, the Lie step's normaliser replaced by 1, b = Q⁻¹v in the relative gradient, Newton fitting
with g, Fisher ignoring λ) makes its check fail through a measured part, not by raising.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import seeds

import precondalg as pa
from precondalg.objectives import BlockContext
from precondalg.structures import lie
from theory_checks import REGISTRY
from theory_checks import psgd as ps
from theory_checks._numerics import numerical_rank
from theory_checks.runner import check_environment

SHORT = {"steps": ps.PSGD8_MUTANT_STEPS, "draws": 2}
"""A short PSGD-8 run: the mutants' long runs and two drawn runs."""
STEP_ERROR = "max rel. error, fitter's Q′ vs dense (I − μ₀E)Q"
PRESET_ERROR = "PSGD preset: max rel. error of Q′ vs dense (I − μ₀E)Q"


@pytest.fixture(scope="module")
def short_psgd8():
    """PSGD-8's short run with the library's pieces: name → part."""
    with check_environment():
        return {p.name: p for p in ps.psgd_8(**SHORT).parts}


def _failing(outcome) -> set[str]:
    return {p.name for p in outcome.parts if not p.passed}


def test_short_psgd8_passes_with_the_library(short_psgd8):
    assert all(p.passed for p in short_psgd8.values()), [p for p in short_psgd8.values() if not p.passed]
    assert short_psgd8[PRESET_ERROR].measured < 1e-13
    assert short_psgd8[STEP_ERROR].measured < 1e-13


@pytest.mark.parametrize(
    ("name", "caught_by"),
    [
        ("triangular Lie projection tril(E), not triu(E)", {STEP_ERROR, PRESET_ERROR}),
        ("relative gradient with b = Q⁻¹v (not Q⁻ᵀv)", {STEP_ERROR}),
        ("PSGD preset: Newton fits with g where Hv belongs", {PRESET_ERROR}),
        ("PSGD preset: Fisher ignores λ", {PRESET_ERROR}),
    ],
)
def test_psgd8_audit_mutants_fail_on_the_step_error(name, caught_by):
    overrides = {**REGISTRY["PSGD-8"].mutants[name], **SHORT}
    with check_environment():
        failing = _failing(ps.psgd_8(**overrides))
    assert caught_by <= failing, failing


def test_psgd8_unit_normaliser_breaks_the_diagonal_bounds():
    overrides = {**REGISTRY["PSGD-8"].mutants["Lie step's normaliser ‖R‖ replaced by 1"], **SHORT}
    with check_environment():
        failing = _failing(ps.psgd_8(**overrides))
    assert STEP_ERROR in failing
    assert any(name.startswith("min q_ii′/q_ii") for name in failing)


def test_psgd11_tril_projection_fails_on_the_projection():
    with check_environment():
        failing = _failing(ps.psgd_11(rules=ps.TRIL_RULES))
    assert "max rel. error, lie_project(X, E) vs orthogonal projection onto the algebra" in failing


def test_psgd11_block_triangular_inverse_is_the_library_s():
    mutant = REGISTRY["PSGD-11"].mutants["SCAN inverse's last column without 1/dₙ"]
    with check_environment():
        failing = _failing(ps.psgd_11(**mutant))
    assert failing == {"block-triangular: max rel. error of the blocks of inverse(X)"}


def test_lie_rules_restores_the_library_rule_after_an_error():
    probe = object.__new__(pa.Triangular)
    original = lie.project_rules.lookup(probe)
    with pytest.raises(RuntimeError), ps.lie_rules(ps.TRIL_RULES):
        assert lie.project_rules.lookup(probe) is ps._tril_projection
        raise RuntimeError("inside")
    assert lie.project_rules.lookup(probe) is original


def test_kronecker_algebra_span_has_the_shared_identity_once():
    """dim of the algebra of Triangular(3) ⊗ Triangular(2): 6 + 3 − 1 (span(I) is shared)."""
    with check_environment():
        span = ps.kron_kind(ps.triu_kind(3), ps.triu_kind(2)).algebra()
        assert span.dtype == torch.float64
        assert numerical_rank(span.flatten(1), 1e-12) == 8


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=seeds(), name=st.sampled_from(sorted(ps.PSGD8_GROUPS)), n=st.integers(2, 6))
def test_one_library_step_is_eq20(seed, name, n):
    """One step of the library's fitting from a drawn Q₀ equals the dense Eq. 20, on hypothesis draws."""
    with check_environment():
        gen = torch.Generator().manual_seed(seed)
        row = ps._psgd8_instance(ps.PSGD8_GROUPS[name](n), n, 0.5, 3, ps.LieGroup(0.5), ps.NEWTON, gen)
    assert row["steps"] == 3 and row["off-pattern"] == 0
    assert row["max step rel. error"] < 1e-10
    assert 0.5 * (1 - 1e-10) <= row["min diagonal factor"] <= row["max diagonal factor"] <= 1.5 * (1 + 1e-10)


# ----- PSGD-15: the clipping bound, with library-side mutants -----

CLIP_BOUND = "max ‖θ′ − θ‖/(μΩ)"
CLIP_ERROR = "max rel. error of θ′ − θ vs μPĝ/max(1, ‖Pĝ‖/Ω)"


@pytest.mark.parametrize(
    ("name", "caught_by"),
    [
        ("clipping factor from ‖Pĝ‖_max, not the 2-norm", {CLIP_BOUND, CLIP_ERROR}),
        ("clipping factor not capped at 1", {CLIP_ERROR}),
    ],
)
def test_psgd15_wrong_clipping_in_the_preset_fails_where_intended(name, caught_by):
    with check_environment():
        failing = _failing(ps.psgd_15(**REGISTRY["PSGD-15"].mutants[name]))
    assert failing == caught_by


@settings(max_examples=5, deadline=None)
@given(seed=seeds())
def test_psgd15_holds_and_its_mutants_fail_for_other_draws(seed):
    with check_environment():
        outcome = ps.psgd_15(seed=seed)
        assert outcome.passed, [p for p in outcome.parts if not p.passed]
        for name, overrides in REGISTRY["PSGD-15"].mutants.items():
            assert _failing(ps.psgd_15(**overrides, seed=seed)), name


def test_the_mutant_criteria_handle_kronecker_and_closed_form_fits():
    """`InverseNotTransposed` makes b = Q⁻¹v on a Kronecker Q too, and `FisherWithoutDamping` drops λ
    from the closed form's statistics as well as from h (PSGD-9, PSGD-10 and PSGD-16 use them)."""
    with check_environment():
        gen = torch.Generator().manual_seed(5)
        Q = pa.Kronecker(ps.triu_kind(2).draw(gen), ps.triu_kind(3).draw(gen))
        v, h = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)

        def context(relative=False, statistics=False):
            return BlockContext(phi=Q, form=pa.gram, grad=h, cache={}, extras={"h": h, "v": v},
                                relative=relative, statistics=statistics, power=2)

        wrong = ps.InverseNotTransposed().meta_grad(context(relative=True))
        inv_v = ps.Newton().meta_grad(
            BlockContext(phi=Q, form=pa.gram, grad=h, cache={}, extras={"h": h, "v": Q.T @ Q.solve(v)},
                         relative=True)
        )
        right = ps.Newton().meta_grad(context(relative=True))
        torch.testing.assert_close(wrong.R.to_dense(), inv_v.R.to_dense())
        assert (wrong.R.to_dense() - right.R.to_dense()).abs().max() > 1e-3
        damped = ps.Fisher(damping=0.7)
        ignoring = ps.FisherWithoutDamping(damping=0.7)
        h_damped = h + 0.7 * v
        ctx = dataclasses.replace(context(statistics=True), extras={"h": h_damped, "v": v})
        undamped = ps.Fisher().meta_grad(dataclasses.replace(ctx, extras={"h": h, "v": v}))
        for got, want in zip(ignoring.meta_grad(ctx).samples, undamped.samples):
            torch.testing.assert_close(got, want)
        assert any(
            (a - b).abs().max() > 1e-3 for a, b in zip(damped.meta_grad(ctx).samples, undamped.samples)
        )


# ----- the criteria checks (PSGD-1, 2, 3, 5, 13) on the library's closed form -----

NEWTON_WITH_G = "Newton fits with g where Hv belongs"
FISHER_IGNORES_LAMBDA = "Fisher ignores λ (fits with h = g, statistics without λ²I)"
CLOSED_FORM_ROW = "max rel. error, library P vs diag(1/‖H_{i,:}‖₂) and diag(1 ⊘ √(E[ĝ⊙ĝ] + λ²))"


@pytest.mark.parametrize(
    ("id", "name", "knobs", "caught_by"),
    [
        ("PSGD-1", NEWTON_WITH_G, {"cases": 6}, "max ‖PAP − B‖/‖B‖ (Eq. 8) over 6 noisy draws"),
        ("PSGD-2", NEWTON_WITH_G, {"cases": 12, "samples": 20_000},
         "(b) noiseless draws: max ||eig(PH)| − 1|/cond(A)"),
        ("PSGD-3", NEWTON_WITH_G, {"draws": 4, "samples": 20_000}, "(a) max rel. error, library p vs Eq. 15"),
        ("PSGD-5", FISHER_IGNORES_LAMBDA, {"draws": 2, "per_sample": 40_000},
         "(a) max rel. error, Preconditioned(Fisher, ClosedForm) P vs scipy (E[ĝĝᵀ] + λ²I)^{-1/2}"),
        ("PSGD-13", NEWTON_WITH_G, {"draws": 1}, CLOSED_FORM_ROW),
        ("PSGD-13", FISHER_IGNORES_LAMBDA, {"draws": 1}, CLOSED_FORM_ROW),
    ],
)
def test_audit_bugs_fail_the_criteria_checks_on_the_closed_form(id, name, knobs, caught_by):
    """Newton fitting with g and Fisher ignoring λ, as the library's closed-form path (`ClosedForm` on
    the objective's statistics, or `Preconditioned`) runs them, fail PSGD-1, 2, 3, 5 and 13 through a
    row comparing the library's P with its independent reference, while the library passes."""
    chk = REGISTRY[id]
    with check_environment():
        assert chk.fn(**knobs).passed
        failing = _failing(chk.fn(**knobs, **chk.mutants[name]))
    assert caught_by in failing, failing
