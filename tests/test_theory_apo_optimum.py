"""Tests of the APO optimum theory checks (`theory_checks.apo_optimum`): APO-3, APO-4 and APO-5 pass,
every mutant fails on the part meant to catch it, the numbers worth pinning are pinned, and the pieces
they rest on (the instances, the exact meta-step through `Preconditioned`, the mutants) behave as
documented, also on `hypothesis` draws.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import seeds
from theory_helpers import assert_passes_with_every_mutant_caught, mutant, part

import theory_checks  # noqa: F401  (registers the checks of the package)
from theory_checks import REGISTRY, Check
from theory_checks import apo_optimum as ao
from theory_checks._numerics import generator
from theory_checks.psgd_criteria import spd
from theory_checks.runner import check_environment

IDS = ("APO-3", "APO-4", "APO-5")
KIND = st.sampled_from(sorted(ao.NOISE))


# ----- registration, pass and mutants -----


def test_the_checks_are_registered_in_order():
    assert all(isinstance(REGISTRY[id], Check) for id in IDS)
    assert [id for id in REGISTRY.ids() if id in IDS] == list(IDS)


@pytest.mark.parametrize("id", IDS)
def test_check_passes_and_every_mutant_fails(records, id):
    assert_passes_with_every_mutant_caught(records[id])


def test_apo3_mutants_are_caught_where_intended(records):
    r = records["APO-3"]
    minimiser, gradient = "max ‖P − (λ_F G + λ_W I)⁻¹‖", "max rel. error, engine ∂Q/∂P"
    half = mutant(r, "the ½ missing")
    assert half.quantity.startswith(minimiser) and half.measured == pytest.approx(0.5, abs=1e-9)  # (2K)⁻¹
    transposed = mutant(r, "P applied as Pᵀ")  # P* is symmetric: only the meta-gradient sees Pᵀ
    assert len(transposed.caught_by) == 1 and transposed.caught_by[0].startswith(gradient)
    for name in ("S from a different batch", "library: FSD on the training batch"):
        m = mutant(r, name)
        assert len(m.caught_by) == 2 and m.measured > 0.1


def test_apo4_mutants_are_caught_where_intended(records):
    r = records["APO-4"]
    identified = mutant(r, "S non-singular")
    assert identified.caught_by == ("min ‖P − P*‖_F/‖P*‖_F of the fitted P",) and identified.measured < 1e-10
    half = mutant(r, "the ½ missing")  # the minimisers of the mutant satisfy KPS = S/2
    assert half.quantity.startswith("max ‖KPS − S‖") and half.measured == pytest.approx(0.5, abs=1e-9)
    assert len(mutant(r, "library: FSD on the training batch").caught_by) == 2


def test_apo5_mutants_are_caught_where_intended(records):
    r = records["APO-5"]
    assert len(mutant(r, "loss term evaluated at θ").caught_by) == 4  # Q does not see the loss at all
    for name in ("the ½ missing", "library: FSD on the training batch"):  # (c) has λ = 0
        assert [c[:3] for c in mutant(r, name).caught_by] == ["(a)", "(b)"]


# ----- pinned numbers -----


def test_apo3_pinned(records):
    r = records["APO-3"]
    assert r.measured < 1e-10 and part(r, "max rel. error, engine")["measured"] < 1e-14
    draws = r.details["draws"]
    assert {d["kind"] for d in draws} == set(ao.NOISE)
    assert {d["d"] for d in draws} >= {2, 12} and all(d["nb"] >= 3 * d["d"] for d in draws)
    assert draws[0]["λ_F"] == 0 and draws[1]["λ_W"] == 0
    assert max(d["cond(S)"] for d in draws) > 500  # S far from isotropic: P* does not depend on it


def test_apo4_pinned(records):
    r = records["APO-4"]
    assert part(r, "max ‖KPS − S‖")["measured"] < 1e-12
    assert part(r, "min ‖P − P*‖")["measured"] > 0.3
    assert [(d["nb"], d["rank(S)"]) for d in r.details["draws"]] == [(1, 1), (3, 3), (9, 9)]


def test_apo5_pinned(records):
    r = records["APO-5"]
    assert part(r, "(a)")["measured"] < 1e-9 and part(r, "(b)")["measured"] < 1e-13
    assert part(r, "(c) max_t")["measured"] < 1e-12
    draws = r.details["draws"]
    assert (draws[0]["λ_F"], draws[0]["λ_W"], draws[1]["λ_F"]) == (0, 0, 0) and draws[1]["λ_W"] > 0
    assert all(0.1 < run["‖θ_T − c‖/‖θ₀ − c‖"] < 0.9 for run in r.details["(c) runs"])  # moved, unconverged


# ----- the pieces -----


@pytest.mark.parametrize("kind", sorted(ao.NOISE))
def test_gradient_kinds_have_a_mean_and_are_not_gaussian(float64, kind):
    z = ao.NOISE[kind]((20000, 1), generator(0))
    kurtosis = float(((z - z.mean()) ** 4).mean() / z.var() ** 2)
    assert (kind == "shifted") == (abs(kurtosis - 3) < 0.3)
    g = ao.draw_gradients(kind, 4000, 3, generator(1))
    assert g.shape == (4000, 3) and g.mean(0).norm() > 5 * (g.var(0).sum() / 4000).sqrt()


def test_fsd_inputs_reproduce_the_fsd_hessian(float64):
    G = spd(5, generator(2))
    X = ao.fsd_inputs_for(G)
    torch.testing.assert_close(X.mT @ X / 5, G, rtol=1e-12, atol=1e-14)


def test_the_problems_have_the_stated_losses_and_gradients(float64):
    gen = generator(3)
    gradients, G = ao.draw_gradients("heavy", 6, 4, gen), spd(4, gen)
    linear = ao.linear_problem(gradients, G, 0.5, 0.1, gen)
    model = torch.nn.Linear(4, 6, bias=False)
    with torch.no_grad():
        model.weight.copy_(linear.weight)
    linear.loss_fn(model(linear.batch[0]), linear.batch[1]).backward()
    torch.testing.assert_close(model.weight.grad, gradients, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(linear.G, G, rtol=1e-12, atol=1e-14)
    H, theta, centres = spd(4, gen), torch.randn(4, generator=gen), torch.randn(3, 4, generator=gen)
    quadratic = ao.quadratic_problem(H, theta, centres, G, 0.0, 0.0)
    outputs = quadratic.batch[0] @ quadratic.weight.mT
    expected = sum(0.5 * (theta - c) @ H @ (theta - c) for c in centres)
    torch.testing.assert_close(quadratic.loss_fn(outputs, quadratic.batch[1]), expected, rtol=1e-12, atol=0)


def test_exact_meta_step_lands_on_the_minimiser_nearest_to_phi0(float64):
    """With S of rank r < d (eigenvectors V_r), the minimisers are {P : P V_r = K⁻¹V_r} and the one nearest
    to P₀ in the Frobenius norm is P₀ + (K⁻¹ − P₀)V_rV_rᵀ: the engine's exact meta-step gives it."""
    gen = generator(4)
    problem = ao.linear_problem(ao.draw_gradients("skewed", 2, 5, gen), spd(5, gen), 0.7, 0.2, gen)
    P0 = torch.randn(5, 5, generator=gen)
    P = ao.fitted(problem, ao.dense_from(P0), ao.proximal, ao.same_batch, ao.InputSide())
    V = torch.linalg.qr(problem.batch[1]).Q  # (5, 2): the span of the two gradients
    nearest = P0 + (torch.linalg.inv(problem.K) - P0) @ V @ V.mT
    torch.testing.assert_close(P, nearest, rtol=1e-10, atol=1e-12)


def test_meta_gradient_is_one_plain_sgd_meta_step(float64):
    gen = generator(5)
    problem = ao.linear_problem(ao.draw_gradients("discrete", 9, 3, gen), spd(3, gen), 1.0, 0.5, gen)
    P1 = torch.randn(3, 3, generator=gen)
    Sigma = problem.batch[1] @ problem.batch[1].mT
    expected = problem.K @ P1 @ Sigma - Sigma
    torch.testing.assert_close(ao.meta_gradient(problem, ao.dense_from(P1), ao.proximal, ao.same_batch),
                               expected, rtol=1e-12, atol=1e-12)
    transposed = ao.meta_gradient(problem, ao._transposed_from(P1), ao.proximal, ao.same_batch)
    torch.testing.assert_close(transposed, Sigma @ P1 @ problem.K - Sigma, rtol=1e-12, atol=1e-12)


def test_route_mutant_pairs_each_loss_with_the_next_gradient(float64):
    inputs, targets = torch.eye(2), torch.arange(6.0).reshape(2, 3)
    assert ao.same_batch((inputs, targets))[1] is targets
    assert torch.equal(ao._next_batch((inputs, targets))[1], targets[:, [1, 2, 0]])


def test_optimal_lr_is_the_minimiser_of_the_written_out_meta_objective(float64):
    """η* against a grid of the exact meta-objective, E_B[J_B(θ − ηg_B)] + (λ_W/2)η²E‖g‖²
    + (λ_F/2)η²E[gᵀGg], written out."""
    gen = generator(6)
    H, G = spd(3, gen), spd(3, gen)
    theta, centres = torch.randn(3, generator=gen), torch.randn(4, 3, generator=gen)
    g = (theta - centres) @ H
    etas = torch.linspace(0.0, 2.0, 200001)
    u = theta - etas[:, None, None] * g  # (grid, nb, d)
    loss = 0.5 * (((u - centres) @ H) * (u - centres)).sum((1, 2))
    q = loss + 0.5 * etas**2 * (0.3 * g.square().sum() + 0.8 * (g @ G * g).sum())
    best = float(etas[q.argmin()])
    assert ao.optimal_lr(H, G, theta, centres, 0.8, 0.3) == pytest.approx(best, abs=2e-5)


# ----- hypothesis: other draws -----


def _regular(d: int, kind: str) -> bool:
    """Whether S is non-singular almost surely: ±1 entries with d = 2 give all nb rows equal with
    probability 4^{1−nb} (S of rank 1), a degenerate draw."""
    return kind != "discrete" or d > 2


@settings(max_examples=8, deadline=None)
@given(seed=seeds(), d=st.integers(2, 8), extra=st.integers(0, 8), kind=KIND)
def test_apo3_holds_for_other_draws(seed, d, extra, kind):
    assume(_regular(d, kind))
    nb = 3 * d + min(extra, d)
    with check_environment():
        outcome = ao.apo_3(draws=((d, nb, kind),) * 3, seed=seed)  # both corners and random λ
    assert outcome.passed, [p for p in outcome.parts if not p.passed]


@settings(max_examples=8, deadline=None)
@given(seed=seeds(), d=st.integers(2, 8), nb_fraction=st.floats(0, 0.999), kind=KIND)
def test_apo4_holds_for_other_draws(seed, d, nb_fraction, kind):
    nb = 1 + math.floor(nb_fraction * (d - 1))
    with check_environment():
        outcome = ao.apo_4(draws=((d, nb, kind),), seed=seed)
    assert outcome.passed, [p for p in outcome.parts if not p.passed]


@settings(max_examples=4, deadline=None)
@given(seed=seeds(), d=st.integers(2, 6), extra=st.integers(0, 6), kind=KIND)
def test_apo5_holds_for_other_draws(seed, d, extra, kind):
    assume(_regular(d, kind))
    with check_environment():
        outcome = ao.apo_5(draws=((d, 2 * d + extra, kind),) * 3, seed=seed)
    assert outcome.passed, [p for p in outcome.parts if not p.passed]
