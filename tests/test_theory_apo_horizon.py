"""Tests of the APO theory checks APO-9, APO-10 and APO-11 (`theory_checks.apo_horizon`): each passes,
every mutant fails on the part meant to catch it, the numbers worth pinning are pinned, and the harness
they rest on (per-replica meta-gradients from one `Preconditioned` step, the library's FSD term, the
learning-rate schedules of the `APO` preset, the library's eigenbasis step) behaves as documented, also
on `hypothesis` draws.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import seeds
from theory_helpers import (
    assert_passes_with_every_mutant_caught,
    assert_registered_in_paper_order,
    mutant,
    part,
)

import precondalg as pa
from theory_checks import REGISTRY, Check
from theory_checks import apo_horizon as ah
from theory_checks.apo import _unsquared_preconditioner, structured_preconditioner
from theory_checks.runner import check_environment

IDS = ("APO-9", "APO-10", "APO-11")


# ----- registration, pass and mutants -----


def test_the_checks_are_registered_in_paper_order():
    assert all(isinstance(REGISTRY[id], Check) for id in IDS)
    assert_registered_in_paper_order(REGISTRY, "APO-", IDS)


@pytest.mark.parametrize("id", IDS)
def test_check_passes_and_every_mutant_fails(records, id):
    assert_passes_with_every_mutant_caught(records[id])


def test_apo9_mutants_are_caught_where_intended(records):
    r = records["APO-9"]
    a_parts = {"(a) max |η̂*_same − η*_same|/se", "(a) max |η̂*_diff − η*_diff|/se"}
    assert set(mutant(r, "loss term at θ").caught_by) == a_parts  # no zero: 0/0 or η̂* = 0
    assert set(mutant(r, "lookahead uphill").caught_by) == a_parts
    assert mutant(r, "lookahead uphill").measured > 100  # η̂* < 0
    ascent = mutant(r, "meta-gradient sign flipped")
    assert ascent.caught_by and all(c.startswith("(b)") for c in ascent.caught_by)


def test_apo10_and_11_mutants_are_caught_where_intended(records):
    r = records["APO-10"]
    assert "min (FSD on B − FSD on B′)/se, paired" in mutant(r, "fsd_batch ignored").caught_by
    half = mutant(r, "squared-error divergence without its ½")
    assert all(c.startswith("max |mean FSD") for c in half.caught_by) and half.measured > 10
    r = records["APO-11"]
    for name in ("S unsquared", "outer factor untransposed"):
        m = mutant(r, name)
        assert m.quantity == "min gᵀP̂g/(‖P̂‖‖g‖²)" and m.measured < -0.1
    step = mutant(r, "applied step 2.5")
    assert step.caught_by == ("min decrease/(claimed factor·α·gᵀP̂g)",
                              "max sampled (J₁ − J₀)·Lλ_max/gᵀP̂g − PEPit worst case")
    assert step.measured < 0  # J increases on the tight instance
    faster = mutant(r, "claimed decrease (1 − c/4)")  # refuted by the exact worst case, not only sampled
    assert "PEPit worst-case decrease − claimed (c = 0.9)" in faster.caught_by


def test_apo11_certificate_is_the_descent_lemma_and_reaches_the_samples(records):
    r = records["APO-11"]
    # PEPit's exact worst case on L-smooth functions is the descent lemma, −c(1 − c/2)·‖g‖²/L.
    for c in (0.5, 0.9, 1.0, 1.5, 2.1):
        value, gap, status = ah.pep_descent(c)
        assert status == "optimal" and abs(gap) < 1e-9
        assert value == pytest.approx(-c * (1 - c / 2), abs=ah.PEP_TOL)
    # The isotropic quadratic along P̂'s top eigenvector attains the worst case.
    assert part(r, "max sampled")["measured"] == pytest.approx(0.0, abs=ah.PEP_TOL)
    assert r.details["solver"] == "CLARABEL" and r.details["max_duality_gap"] < 1e-9


# ----- pinned numbers -----


def test_apo9_pinned(records):
    r = records["APO-9"]
    quadratics = r.details["(a) quadratics"]
    at_star = quadratics["NQM d=10 at θ*, λ=0"]
    assert at_star["same"]["closed form"] == pytest.approx(1.2246420309, rel=1e-9)  # tr(H²C)/tr(H³C)
    assert at_star["diff"]["closed form"] == 0
    assert all(abs(q["same"]["MC η*"] / q["same"]["closed form"] - 1) < 0.02 for q in quadratics.values())
    assert part(r, "(b) median Spearman")["measured"] < -0.9
    assert part(r, "(b) median η_T different / same")["measured"] < 0.35
    assert max(r.details["(b) η_T different batch"]) < min(r.details["(b) η_T same batch"])
    assert r.details["(b) run"] == {"steps": 300, "seeds": 3, "eta0": 0.5, "meta_lr": 0.01, "seed": 9}


def test_apo10_and_11_pinned(records):
    rows = records["APO-10"].details["regressions"]
    assert [row["d"] for row in rows] == [1, 3, 8, 5]
    assert rows[1]["delta"] == 0 and rows[2]["noise"] == 0
    noise_only = rows[1]  # δ = 0: the ratio of the two means is exactly (d + 2)σ²/σ² = d + 2 = 5
    assert noise_only["same"]["closed form"] / noise_only["other"]["closed form"] == pytest.approx(5.0)
    assert part(records["APO-10"], "min (FSD on B")["measured"] > 10
    steps = records["APO-11"].details["steps"]
    tight = [s["decrease/bound"] for s in steps if s["J"] == "tight"]
    assert len(tight) == 18 and all(abs(x - 1) < 1e-12 for x in tight)  # the bound is attained
    assert {s["J"] for s in steps} == {"quadratic", "tight", "softmax"}


# ----- the harness -----


def _quadratic(seed: int, d: int, lam_fsd: float = 0.0, lam_wsd: float = 0.0) -> ah.Quadratic:
    gen = torch.Generator().manual_seed(seed)
    return ah.Quadratic(ah.spd(d, gen), ah.spd(d, gen), torch.randn(d, generator=gen), lam_fsd, lam_wsd)


@settings(max_examples=10, deadline=None)
@given(seed=seeds(), d=st.integers(1, 5), eta=st.floats(0.0, 2.0), lam=st.floats(0.0, 1.0))
def test_replica_meta_gradients_are_each_replicas_closed_form(seed, d, eta, lam):
    """∂Q_i/∂η = −g′ᵢᵀgᵢ + η(1 + λ_F)gᵢᵀHgᵢ + λ_W η‖gᵢ‖², replica by replica (class E)."""
    with check_environment():
        q, gen = _quadratic(seed, d, lam, 1 - lam), torch.Generator().manual_seed(seed)
        root = torch.linalg.cholesky(q.H).mT
        batch, meta_batch = (ah._nqm_targets(q, root, 6, gen) for _ in range(2))
        model = ah.Replicas([q.r.expand(6, -1)], root)
        objective = ah.proximal(model, ah.squared_loss, q.lam_fsd, q.lam_wsd)
        got = ah.replica_meta_gradients(model, objective, eta, batch, meta_batch, batch[0])
        c, c_meta = (torch.linalg.solve(root, t.reshape(6, d).mT).mT for t in (batch[1], meta_batch[1]))
        g, g_meta = (q.r - c) @ q.H, (q.r - c_meta) @ q.H
        want = (-(g_meta * g).sum(1) + eta * (1 + q.lam_fsd) * (g @ q.H * g).sum(1)
                + q.lam_wsd * eta * g.square().sum(1))
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12 * float(want.abs().max()))


def test_replica_meta_gradients_sum_to_the_single_learning_rates():
    """APO's lr mode proper (one η = `scalar` on `Concatenated` over all replicas) has meta-gradient
    Σᵢ ∂Q_i/∂ηᵢ: the per-row diagonal η is that learning rate, replica by replica."""
    with check_environment():
        q, gen = _quadratic(5, 3, 0.4, 0.3), torch.Generator().manual_seed(5)
        root = torch.linalg.cholesky(q.H).mT
        batch, meta_batch = (ah._nqm_targets(q, root, 7, gen) for _ in range(2))
        model = ah.Replicas([q.r.expand(7, -1)], root)
        objective = ah.proximal(model, ah.squared_loss, q.lam_fsd, q.lam_wsd)
        rows = ah.replica_meta_gradients(model, objective, 0.6, batch, meta_batch, batch[0])
        opt = pa.optim.Preconditioned(
            model.parameters(), 0.0, structure=pa.families.scalar(0.6), placement=pa.placement.Concatenated(),
            objective=objective, fitter=pa.fitters.TorchOptimizer(torch.optim.SGD, lr=1.0), base="sgd",
            position="direction",
        )
        model.zero_grad()
        ah.squared_loss(model(batch[0]), batch[1]).backward()
        opt.step(batch=meta_batch, fsd_batch=batch[0])
        ((_, P),) = opt.preconditioners()
        assert float(0.6 - P.alpha) == pytest.approx(float(rows.sum()), rel=1e-10)


def test_optimal_lrs_at_the_optimum_and_by_brute_force():
    with check_environment():
        H, C = ah.nqm_curvature(), 0.5 * torch.eye(10)
        same, diff = ah.optimal_lrs(ah.Quadratic(H, C, torch.zeros(10), 0.0, 0.0))
        assert same == pytest.approx(float(torch.trace(H @ H @ C) / torch.trace(H @ H @ H @ C)))
        assert diff == 0
        q = _quadratic(3, 4, 0.3, 0.2)  # E over 2·10⁵ batches of the per-batch numerator/denominator
        gen = torch.Generator().manual_seed(0)
        c = torch.randn(200000, 4, generator=gen) @ torch.linalg.cholesky(q.C).mT
        g = (q.r - c) @ q.H
        denominator = 1.3 * (g @ q.H * g).sum(1).mean() + 0.2 * g.square().sum(1).mean()
        same, diff = ah.optimal_lrs(q)
        assert same == pytest.approx(float(g.square().sum(1).mean() / denominator), rel=0.01)
        assert diff == pytest.approx(float((q.H @ q.r).square().sum() / denominator), rel=0.01)


@settings(max_examples=10, deadline=None)
@given(seed=seeds(), d=st.integers(1, 6), sigma=st.floats(0.5, 2.0), noise=st.floats(0.0, 1.0))
def test_fsd_moments_by_brute_force(seed, d, sigma, noise):
    """The derived Gaussian moments against a direct Monte-Carlo estimate (10⁵ draws, 5 se)."""
    p = ah.Regression(d, sigma, 1.0, noise, 0.2)
    gen = torch.Generator().manual_seed(seed)
    x, x_other = sigma * torch.randn(2, 100000, d, generator=gen, dtype=torch.float64)
    delta = torch.randn(d, generator=gen, dtype=torch.float64)
    e = x @ (delta / delta.norm()) - noise * torch.randn(100000, generator=gen, dtype=torch.float64)
    g = x * e[:, None]
    for sample, truth in zip(((x * g).sum(1), (x_other * g).sum(1)), ah.fsd_moments(p)):
        fsd = 0.5 * p.eta**2 * sample.square()
        assert abs(float(fsd.mean()) - truth) <= 5 * float(fsd.std()) / math.sqrt(100000)


def test_library_fsd_is_half_eta_squared_times_the_projection():
    """The FSD read from the meta-gradients is ½η²(x̃ᵀg)² exactly, on B and on B′."""
    with check_environment():
        p, gen = ah.Regression(3, 1.0, 1.0, 0.5, 0.3), torch.Generator().manual_seed(1)
        on_b, on_other = ah.library_fsd(p, ah.proximal, 8, gen)
        gen = torch.Generator().manual_seed(1)  # replay the draws of library_fsd
        theta_star, direction = torch.randn(3, generator=gen), torch.randn(3, generator=gen)
        theta = theta_star + direction / direction.norm()
        x, x_other = torch.randn(2, 1, 8, 3, generator=gen)
        y = x @ theta_star + 0.5 * torch.randn(1, 8, generator=gen)
        g = x[0] * (x[0] @ theta - y[0])[:, None]
        for got, inputs in ((on_b, x), (on_other, x_other)):
            torch.testing.assert_close(got, 0.5 * 0.09 * (inputs[0] * g).sum(1).square(), rtol=1e-10, atol=0)


def test_sigmas_and_worst_keep_failures_visible():
    assert ah.sigmas(0.5, 0.0) == math.inf and math.isnan(ah.sigmas(0.0, 0.0))
    assert ah.sigmas(-2.0, 0.5) == 4.0
    assert math.isnan(ah.worst([1.0, float("nan"), 0.0])) and ah.worst([1.0, 3.0]) == 3.0


def test_lr_schedules_are_the_presets_and_memoised():
    with check_environment():
        spec = dataclasses.replace(ah.Schedule(), steps=5, seed=123)
        etas, skipped = ah.lr_schedules(ah.apo_lr, spec)
        assert etas.shape == (5, 6) and skipped == 0 and ah.lr_schedules(ah.apo_lr, spec)[0] is etas
        # RMSprop's first step on log η is meta_lr·g/√(0.01 g²) = ±10·meta_lr = ±0.1
        torch.testing.assert_close((etas[0] / 0.5).log().abs(), torch.full((6,), 0.1), rtol=1e-6, atol=0)


def test_the_ascending_mutant_differs_from_the_preset_only_in_the_sign():
    """The spelt-out configuration reproduces the preset bit for bit; with maximize=True it differs."""
    with check_environment():
        spec = dataclasses.replace(ah.Schedule(), steps=20, seed=7)
        spelt_out = functools.partial(ah.preset_configuration, maximize=False)
        assert torch.equal(ah.lr_schedules(spelt_out, spec)[0], ah.lr_schedules(ah.apo_lr, spec)[0])
        first = (ah.lr_schedules(ah._ascending_apo_lr, spec)[0][0] / 0.5).log()
        torch.testing.assert_close(first, -(ah.lr_schedules(ah.apo_lr, spec)[0][0] / 0.5).log())


@settings(max_examples=20, deadline=None)
@given(seed=seeds(), m=st.integers(1, 4), n=st.integers(1, 4))
def test_min_quadratic_form_of_the_eigenbasis_and_of_its_mutant(seed, m, n):
    with check_environment():
        gen = torch.Generator().manual_seed(seed)
        A, B, S = ah._factors(m, n, gen, "")
        assert ah._min_quadratic_form(structured_preconditioner(A, B, S), gen) >= -1e-12
        if (S < 0).any():  # unsquared and a negative scale: P has a negative eigenvalue
            assert ah._min_quadratic_form(_unsquared_preconditioner(A, B, S), gen) < 0


@settings(max_examples=10, deadline=None)
@given(seed=seeds(), m=st.integers(1, 3), n=st.integers(1, 3))
def test_library_step_is_theta_minus_scaled_eigenbasis_gradient(seed, m, n):
    """The step APO-11 measures is θ − 0.9·lr·P̂g with P̂ the drawn Eigenbasis (the family at φ)."""
    with check_environment():
        gen = torch.Generator().manual_seed(seed)
        A, B, S = ah._factors(m, n, gen, "")
        J = ah._quadratic(m, n, gen)
        P = pa.Eigenbasis(B, A, S)
        decrease, g = ah.library_step(J, ah.at_phi(structured_preconditioner, A, B, S, 0.9), 0.01)
        W1 = J.W0 - 0.009 * (P @ g).reshape(m, n)
        assert decrease == pytest.approx(float(J.loss(J.W0) - J.loss(W1)), rel=1e-9, abs=1e-14)


def test_tight_instance_attains_the_descent_bound():
    with check_environment():
        gen = torch.Generator().manual_seed(0)
        A, B, S = ah._factors(2, 3, gen, "")
        P = structured_preconditioner(A, B, S)
        J = ah._tight(2, 3, P, gen)
        lam = float(torch.linalg.eigvalsh(ah.dense_of(P))[-1])
        decrease, g = ah.library_step(J, ah.at_phi(structured_preconditioner, A, B, S, 0.9), 1 / (J.L * lam))
        bound = ah.descent_factor(0.9) * 0.9 / (J.L * lam) * float(g @ (P @ g))
        assert decrease / bound == pytest.approx(1.0, rel=1e-12)
