"""Tests of the audited PSGD theory checks (`theory_checks.psgd`): PSGD-8 runs the library's Lie-group
fitting (and the `PSGD` preset) against Eq. 20 written densely, PSGD-11 takes the block-triangular group
and the Lie projection from the library, and each library bug of the audit (a tril triangular Lie
projection, the Lie step's normaliser replaced by 1, b = Q⁻¹v in the relative gradient, Newton fitting
with g, Fisher ignoring λ) makes its check fail through a measured part, not by raising.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import seeds

import precondalg as pa
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
