"""Tests of the APO-6 theory check (`theory_checks.apo_kfac`, Corollary 2 and App. H of Bae et al. 2022):
it passes, every mutant fails on the part meant to catch it, the numbers worth pinning are pinned, and
the pieces it rests on behave as documented — the vectorised meta-gradient is the one `Preconditioned`
takes, the quadrature moments are exact, the vec conventions and the nearest-Kronecker residual are
right — also on `hypothesis` draws of the layer.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import seeds
from theory_helpers import assert_passes_with_every_mutant_caught, mutant, part

import precondalg as pa
from precondalg.fitters import TorchOptimizer
from precondalg.objectives import LayerStatistics, Proximal
from precondalg.optim import Preconditioned
from precondalg.placement import Layer
from theory_checks import REGISTRY, Check
from theory_checks import apo_kfac as ak
from theory_checks._numerics import dense_of, generator, rel_err
from theory_checks.psgd_criteria import spd
from theory_checks.runner import check_environment

STATIONARY = "(b) there, max|∂Q/∂φ|"
PLUGGED_IN = "(b) max rel. error, Eigenbasis(eig"
CLOSED_FORM = ("(b) max rel. error, ClosedForm", "(b) the same with λ_W > 0", "(b) max residual of its")


# ----- the check passes, every mutant fails where intended -----


def test_apo6_is_registered_with_its_mutants():
    chk = REGISTRY["APO-6"]
    assert isinstance(chk, Check) and len(chk.mutants) == 7
    assert chk.provenance == ("PAPER", "RECON", "DERIVED")


def test_apo6_passes(records):
    assert_passes_with_every_mutant_caught(records["APO-6"])


def test_proximal_mutants_fail_on_the_fit_and_the_stationarity(records):
    r = records["APO-6"]
    fsd_on_b = mutant(r, "FSD computed on batch B")
    assert set(fsd_on_b.caught_by) == {part(r, "(a)")["name"], part(r, STATIONARY)["name"]}
    assert fsd_on_b.measured > 0.1  # the fit of (a) reaches another optimum
    assert mutant(r, "WSD term without its ½").caught_by == (part(r, STATIONARY)["name"],)


def test_structure_mutants_fail_on_the_plugged_in_solution(records):
    r = records["APO-6"]
    swapped = mutant(r, "eigenbases of Ā and Ḡ swapped")
    assert set(swapped.caught_by) == {part(r, PLUGGED_IN)["name"], part(r, STATIONARY)["name"]}
    assert mutant(r, "S unsquared").caught_by == (part(r, PLUGGED_IN)["name"],)


def test_kfac_damping_fails_only_where_damped(records):
    """K-FAC's Kronecker closed form is exact without damping; with λ_W > 0 it is not (and is no
    `Eigenbasis`, so its (B, A, S) residual is NaN)."""
    r = records["APO-6"]
    damped = mutant(r, "damping on the factors")
    assert set(damped.caught_by) == {part(r, CLOSED_FORM[1])["name"], part(r, CLOSED_FORM[2])["name"]}


def test_statistics_mutants_fail_on_the_closed_form(records):
    r = records["APO-6"]
    closed_form = {part(r, name)["name"] for name in CLOSED_FORM}
    assert set(mutant(r, "the empirical Fisher").caught_by) == closed_form
    without_n = mutant(r, "Ḡ without the batch-size factor N")
    monte_carlo = {part(r, "(e) Ds ⫫ a: max |z| of Ḡ")["name"], part(r, "(e) Ds ⫫ a: max |z| of Ā⊗Ḡ")["name"]}
    assert set(without_n.caught_by) == closed_form | monte_carlo


# ----- pinned numbers -----


def test_apo6_pinned(records):
    r = records["APO-6"]
    assert part(r, "(a)")["measured"] < 1e-5  # the fits converge far below 1e-3
    assert r.details["(a) fits run per layer"] == [1, 1, 1, 1, 1]  # APO's φ₀ suffices for every layer
    for name in (*CLOSED_FORM, PLUGGED_IN, STATIONARY):
        assert part(r, name)["measured"] < 1e-13
    assert part(r, "(c) min rel. gap ‖P_KFAC")["measured"] > 0.3
    assert part(r, "(c) min rel. gap of the nearest")["measured"] > 1e-3
    assert part(r, "(d) non-Kronecker")["measured"] > 0.1
    assert part(r, "(d) its excess")["measured"] > 0.05
    assert part(r, "(e) noise depends on a")["measured"] > 0.3


# ----- the library's meta-gradient, as the check takes it -----


def _one_batch(problem: ak.MetaProblem, k: int = 0) -> ak.MetaProblem:
    """The problem with its k-th batch alone."""
    batch = slice(k, k + 1)
    return dataclasses.replace(
        problem, inputs=problem.inputs[batch], slopes=problem.slopes[batch], grads=problem.grads[batch]
    )


@pytest.mark.parametrize(("m", "n", "bias"), [(2, 3, True), (3, 1, False)])
def test_vectorised_meta_gradient_is_the_optimizers(float64, m, n, bias):
    """For one batch, `meta_gradient` equals φ₀ − φ₁ of one `Preconditioned` step with plain SGD (lr 1)
    on φ (the `Proximal` objective, `eigenbasis` family, `Layer` placement); over several batches, the
    vmapped mean equals the mean of one `meta_grads` call per batch."""
    gen = generator(3)
    layer = ak.draw_layer(m, n, bias, gen)
    problem = ak.meta_problem(layer, gen)
    objective = Proximal(problem.model, ak.linearised_loss, fsd=problem.fsd, lam_fsd=0.7, lam_wsd=0.3)
    phi = ak.initial_phi(1, *layer.shape, gen)
    start = pa.families.Family(init=lambda *_: pa.Eigenbasis(phi.B.clone(), phi.A.clone(), phi.S.clone()))
    opt = Preconditioned(
        problem.model.parameters(), 0.0, structure=start, placement=Layer(problem.model), objective=objective,
        fitter=TorchOptimizer(torch.optim.SGD, lr=1.0),
    )
    x, c = problem.inputs[0], problem.slopes[0]
    ak.linearised_loss(problem.model(x), c).backward()
    opt.step(batch=(x, c), fsd_batch=problem.fsd_inputs)
    stepped = next(iter(opt.state.values()))["preconditioner"]["phi"]
    expected = [a - b for a, b in zip((phi.B, phi.A, phi.S), stepped)]
    ours = ak.meta_gradient(_one_batch(problem), objective, ak._routes_as_configured)(phi)
    assert max(rel_err(a, b) for a, b in zip(ours, expected)) < 1e-12
    batches = range(len(problem.grads))
    route = ak._routes_as_configured
    per_batch = [ak.meta_gradient(_one_batch(problem, k), objective, route)(phi) for k in batches]
    mean = [torch.stack(g).mean(0) for g in zip(*per_batch)]
    together = ak.meta_gradient(problem, objective, ak._routes_as_configured)(phi)
    assert max(rel_err(a, b) for a, b in zip(together, mean)) < 1e-12


def test_q_hat_is_stationary_at_the_inverse_and_its_gradient_is_the_libraries(float64):
    """Q̂ written out is minimised by K⁻¹ (Theorem 1), and its gradient in φ (autograd through Eq. 9
    written out) is the library's meta-gradient, at a random φ."""
    gen = generator(4)
    layer = ak.draw_layer(2, 2, True, gen)
    problem = ak.meta_problem(layer, gen)
    K = problem.hessian + 0.2 * torch.eye(6)
    P = torch.linalg.inv(K).requires_grad_()
    (grad_P,) = torch.autograd.grad(ak.q_hat(P, problem.grads, K), P)
    assert grad_P.abs().max() < 1e-12
    phi = ak.initial_phi(1, 2, 3, gen)
    leaves = [t.clone().requires_grad_() for t in (phi.B, phi.A, phi.S)]
    expected = torch.autograd.grad(ak.q_hat(ak.eq9_dense(*leaves), problem.grads, K), leaves)
    objective = ak.proximal(problem.model, ak.linearised_loss, problem.fsd, 1.0, 0.2)
    ours = ak.meta_gradient(problem, objective, ak._routes_as_configured)(phi)
    assert max(rel_err(a, b) for a, b in zip(ours, expected)) < 1e-10


# ----- the family, the quadrature and the conventions -----


def test_quadrature_moments_are_exact(float64):
    layer = ak.draw_layer(3, 2, True, generator(5))
    a, r = layer.input_points(), layer.residual_points()
    assert rel_err(a.mean(0), layer.mean) < 1e-13
    assert rel_err((a - layer.mean).mT @ (a - layer.mean) / len(a), layer.covariance) < 1e-13
    assert r.mean(0).abs().max() < 1e-14 and rel_err(r.mT @ r / len(r), layer.noise) < 1e-13
    inputs, residuals, _ = ak.statistics_batch(layer, generator(6))
    abar = torch.cat([inputs, torch.ones(len(inputs), 1)], 1)
    scores = residuals @ layer.precision  # Ds of every example (Σ_y symmetric)
    v = (scores[:, :, None] * abar[:, None, :]).reshape(len(inputs), -1)
    fisher = v.mT @ v / len(inputs)  # the batch's Fisher, row-major: exactly Ḡ ⊗ Ā
    assert rel_err(fisher, torch.kron(layer.precision, layer.second_moment)) < 1e-12


def test_row_major_of_the_papers_kron_is_precondalgs_kronecker(float64):
    gen = generator(7)
    A, B = torch.randn(3, 3, generator=gen), torch.randn(2, 2, generator=gen)
    expected = dense_of(pa.Kronecker(pa.Dense(B), pa.Dense(A)))  # acts as G ↦ B G Aᵀ on G (2, 3)
    assert rel_err(ak.to_row_major(torch.kron(A, B), 2, 3), expected) < 1e-14


def test_damped_inverse_matches_the_eigenbasis_closed_form(float64):
    layer = ak.draw_layer(2, 3, False, generator(8))
    B, A, S = ak.corollary_2(layer.precision, layer.second_moment, 1.5, 0.4)
    assert rel_err(dense_of(pa.Eigenbasis(B, A, S)), ak.damped_inverse(layer, 1.5, 0.4)) < 1e-13
    assert rel_err(ak.eq9_dense(B, A, S), dense_of(pa.Eigenbasis(B, A, S))) < 1e-13


def test_kronecker_residual(float64):
    gen = generator(9)
    X, Y = spd(2, gen), spd(3, gen)
    assert ak.kronecker_residual(torch.kron(X, Y), 2, 3) < 1e-14
    M = torch.kron(X, Y) + torch.kron(spd(2, gen), spd(3, gen))
    residual = ak.kronecker_residual(M, 2, 3)
    assert 0.0 < residual < ak.frobenius_error(torch.kron(X, Y), M)  # the best X⊗Y beats any other


def test_corollary_residual_is_nan_for_another_structure(float64):
    layer = ak.draw_layer(2, 1, True, generator(10))
    assert torch.isnan(torch.tensor(ak.corollary_residual(pa.Dense(torch.eye(4)), layer, 0.0)))


def test_worst_and_least_keep_nan():
    nan = float("nan")
    assert torch.isnan(torch.tensor(ak.worst([1.0, nan, 0.0]))) and ak.worst([1.0, 3.0]) == 3.0
    assert torch.isnan(torch.tensor(ak.least([1.0, nan]))) and ak.least([1.0, 3.0]) == 1.0


def test_fits_are_memoised_per_objective_configuration(float64):
    gen = generator(11)
    layer = ak.draw_layer(3, 1, False, gen)
    problem = ak.meta_problem(layer, gen)
    target = ak.damped_inverse(layer, 1.0, 0.0)
    key = ("test", 11, ak._routes_as_configured)
    first = ak.best_fit(key, problem, ak.proximal(problem.model, ak.linearised_loss, problem.fsd, 1.0, 0.0),
                        ak._routes_as_configured, problem.hessian, target, seed=0)
    again = ak._FITS[(*key, Proximal, 1.0, 0.0)]
    assert first == again and first[0] < 1e-5 and first[1] == 1


# ----- hypothesis: the closed forms on drawn layers -----


@settings(max_examples=10, deadline=None)
@given(seed=seeds(), m=st.integers(1, 4), n=st.integers(1, 4), bias=st.booleans())
def test_closed_forms_on_drawn_layers(seed, m, n, bias):
    """`ClosedForm` from `LayerStatistics` equals (Ā⊗Ḡ + λ_W I)⁻¹ and the `Proximal` meta-gradient
    vanishes at Corollary 2's Eigenbasis, for λ_F, λ_W drawn, on any layer shape m, n ∈ [1, 4]."""
    with check_environment():
        gen = generator(seed)
        layer = ak.draw_layer(m, n, bias, gen)
        lam_f, lam_w = 0.5 + float(torch.rand((), generator=gen)), float(torch.rand((), generator=gen))
        batch = ak.statistics_batch(layer, gen)
        P = ak.closed_form_preconditioner(
            layer, ak.EIGENBASIS, LayerStatistics, ak.model_samples, lam_w, batch
        )
        assert rel_err(dense_of(P), ak.damped_inverse(layer, 1.0, lam_w)) < 1e-10
        assert ak.corollary_residual(P, layer, lam_w) < 1e-10
        problem = ak.meta_problem(layer, gen)
        B, A, S = ak.corollary_2(layer.precision, layer.second_moment, lam_f, lam_w)
        objective = ak.proximal(problem.model, ak.linearised_loss, problem.fsd, lam_f, lam_w)
        grad = ak.meta_gradient(problem, objective, ak._routes_as_configured)
        assert ak.largest_entry(grad(pa.Eigenbasis(B, A, S))) < 1e-10 * ak.largest_entry(
            grad(ak.initial_phi(0, *layer.shape, None))
        )

