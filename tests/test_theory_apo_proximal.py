"""Tests of the APO proximal-step theory checks (`theory_checks.apo_proximal`): APO-1 and APO-2 pass,
every mutant fails on the part meant to catch it, the numbers worth pinning are pinned, and the harness
they rest on (the `LibraryQ` probe on what `Preconditioned` hands to `Proximal.meta_grads`, the
independent model copies, the Fisher and GGN references, the minimisers) behaves as documented, also on
`hypothesis` draws.
"""

from __future__ import annotations

import pytest
import scipy.optimize
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import seeds
from theory_helpers import assert_passes_with_every_mutant_caught, mutant, part

import precondalg as pa
import theory_checks.apo_proximal as ap
from theory_checks import REGISTRY, Check, run
from theory_checks._apo import Recorder, WsdWithoutHalf
from theory_checks._numerics import rel_err
from theory_checks.psgd_criteria import spd
from theory_checks.runner import check_environment

IDS = ("APO-1", "APO-2")
KINDS = {"softmax": (3, 4), "gaussian": (3, 2), "mlp": (2, 3, 2)}
"""A model of each kind, for the harness tests."""


@pytest.fixture(scope="module")
def apo_records():
    """APO-1 and APO-2 (and their mutants), run once through the runner API: id → record."""
    return {r.id: r for r in run(REGISTRY, ids=list(IDS))}


# ----- registration, pass and mutants -----


def test_the_checks_are_registered_first_among_apo():
    assert all(isinstance(REGISTRY[id], Check) for id in IDS)
    assert [id for id in REGISTRY.ids() if id.startswith("APO-")][:2] == list(IDS)


@pytest.mark.parametrize("id", IDS)
def test_check_passes_and_every_mutant_fails(apo_records, id):
    assert_passes_with_every_mutant_caught(apo_records[id])
    assert all(p["relation"] == "<=" for p in apo_records[id].parts)


def test_apo1_pinned_and_mutants(apo_records):
    r = apo_records["APO-1"]
    step = "max rel. error, the library minimiser's step"
    assert part(r, step)["measured"] < 1e-9  # cond up to 7.5e5
    assert part(r, "max ‖∂Q/∂P at P*‖_F")["measured"] < 1e-10
    conds = [row[-1] for row in r.details["instances (n, λ_F, λ_W, cond(λ_F G + λ_W I))"]]
    assert max(conds) == pytest.approx(7.5e5, rel=1e-3) and min(conds) == pytest.approx(1.0)
    for m in r.mutants:  # the library mutants minimise their own Q: only the step is off
        assert len(m.caught_by) == 1 and m.caught_by[0].startswith(step)
    assert mutant(r, "(λ_F G + λ_W I) without").measured > 1e3
    assert mutant(r, "λ_W outside").measured > 0.5
    assert mutant(r, "library Q with the WSD").measured == pytest.approx(
        0.5, abs=1e-3
    )  # −g/(2λ_W) at λ_F = 0
    assert mutant(r, "library squared-error FSD").measured > 0.3


def test_apo2_pinned(apo_records):
    r = apo_records["APO-2"]
    assert all(part(r, f"(a) {rows}")["measured"] < 1e-11 for rows in ("GD", "NG", "GGN"))
    assert part(r, "(c) max ‖∇FSD(θ)‖")["measured"] < 1e-14
    assert part(r, "(c) max rel. error, library ∇²FSD(θ)")["measured"] < 1e-13
    assert part(r, "(c) max |vᵀ∇²FSD(θ)v")["measured"] < 4  # 72 z-scores
    assert part(r, "(d) direct PPM")["measured"] < 1e-12
    assert part(r, "(d) max |log₁₀")["measured"] < 5e-3
    assert part(r, "(d) max |λ_W·ε")["measured"] < 1e-3
    assert set(r.details["(a) max rel. error per row"]) == {row.method for row in ap.APO2_ROWS}
    ratios = [v for k, v in r.details.items() if k.startswith("(d) seed")]
    assert len(ratios) == 6 and all(abs(v[-1] - 1) < abs(v[0] - 1) for v in ratios)  # λ_W·ε → ‖Hg‖/‖g‖


def test_apo2_mutants_are_caught_where_intended(apo_records):
    r = apo_records["APO-2"]
    empirical = mutant(r, "empirical Fisher")
    assert empirical.caught_by == ("(c) max |vᵀ∇²FSD(θ)v − MC vᵀFv|/se (y ~ p_θ)",)
    jtj = mutant(r, "GGN without ∇²ρ")
    assert {c[:7] for c in jtj.caught_by} == {"(a) GGN", "(c) max"} and len(jtj.caught_by) == 2
    summed = mutant(r, "library KL FSD summed")
    assert any(c.startswith("(c) max rel. error") for c in summed.caught_by)
    assert any(c.startswith("(a) NG") for c in summed.caught_by)
    assert not any(c.startswith("(a) GD") for c in summed.caught_by)  # the Gaussian models have no KL
    wsd = mutant(r, "library Q with the WSD")
    assert any(c.startswith("(a) GD") for c in wsd.caught_by) and any(
        c.startswith("(d) max |log") for c in wsd.caught_by
    )
    assert not any(c.startswith("(c)") for c in wsd.caught_by)  # λ_W = 0 there


# ----- the probe: the library's Q as Preconditioned evaluates it -----


def _softmax_q(seed: int, P0: torch.Tensor | None = None) -> tuple[ap.LibraryQ, torch.Tensor | None]:
    """The library Q of a softmax-regression draw, and, for a dense P₀, the meta-gradient that one real
    `Preconditioned` step with fitter SGD(lr = 1) applies to φ = P₀ (φ₀ − φ₁)."""
    model = ap.Model("softmax", (3, 3))
    data = ap.draw_data(model, seed)
    q = ap.model_q(model, data, "model", 0.7, 0.2, ap.Proximal, "kl")
    if P0 is None:
        return q, None
    module = model.module()
    ap.set_flat_parameters(module, data.theta)
    objective = ap.Proximal(module, model.loss, fsd="kl", lam_fsd=0.7, lam_wsd=0.2)
    opt = pa.optim.Preconditioned(
        module.parameters(),
        lr=0.0,
        structure=pa.families.Family(init=lambda dims, like, gen: pa.Dense(P0.clone())),
        placement=pa.placement.Concatenated(),
        objective=objective,
        fitter=pa.fitters.TorchOptimizer(torch.optim.SGD, lr=1.0),
    )
    model.loss(module(data.inputs), data.targets).backward()
    opt.step(batch=(data.inputs, data.targets), fsd_batch=data.fsd_inputs)
    (phi,) = next(iter(opt.state.values()))["preconditioner"]["phi"]
    return q, P0 - phi


@settings(max_examples=5, deadline=None)
@given(seed=seeds())
def test_probe_meta_gradient_is_what_the_optimizer_fits_with(seed):
    """`LibraryQ.meta_gradient` at P₀ (from the context of a step at P = 0) is the ∂Q/∂φ that a real
    step of the optimizer started at φ = P₀ applies."""
    with check_environment():
        P0 = 0.3 * torch.randn(12, 12, generator=torch.Generator().manual_seed(seed % 2**31))
        q, applied = _softmax_q(seed, P0)
        assert rel_err(q.meta_gradient(P0), applied) < 1e-12


@settings(max_examples=10, deadline=None)
@given(seed=seeds(), n=st.integers(1, 5))
def test_probe_gradient_and_hessian_of_the_linearised_q(seed, n):
    """On APO-1's Q, ∇Q(u) = g + (λ_F G + λ_W I)(u − θ) at any u, and ∇²Q = λ_F G + λ_W I."""
    with check_environment():
        gen = torch.Generator().manual_seed(seed % 2**31)
        theta, g, G, lam_fsd, lam_wsd = ap.apo1_instance(n, None, None, None, gen)
        q = ap.linearised_q(theta, g, G, lam_fsd, lam_wsd, ap.Proximal, "squared")
        K = lam_fsd * G + lam_wsd * torch.eye(n)
        u = theta + torch.randn(n, generator=gen)
        assert rel_err(q.grad(u), g + K @ (u - theta)) < 1e-12
        assert rel_err(q.hessian(u), K) < 1e-12
        assert rel_err(q.theta - q.preconditioner_to(u) @ q.g, u) < 1e-14  # the lookahead is u


def test_recorder_leaves_the_step_unchanged(float64):
    """With lr > 0 the recorded optimizer moves θ exactly as the optimizer on the bare objective."""
    model = ap.Model("softmax", (2, 3))
    data = ap.draw_data(model, 5)
    moved = []
    for wrap in (lambda o: o, Recorder):
        module = model.module()
        ap.set_flat_parameters(module, data.theta)
        objective = wrap(ap.Proximal(module, model.loss, fsd="kl", lam_fsd=1.0, lam_wsd=0.1))
        assert objective.reads_cache is False and objective.requires == ()  # the inner objective's flags
        opt = pa.optim.Preconditioned(
            module.parameters(),
            lr=0.1,
            structure=pa.families.dense(1.0),
            placement=pa.placement.Concatenated(),
            objective=objective,
            fitter=pa.fitters.TorchOptimizer(torch.optim.SGD, lr=0.5),
        )
        for _ in range(2):
            module.zero_grad()
            model.loss(module(data.inputs), data.targets).backward()
            opt.step(batch=(data.inputs, data.targets), fsd_batch=data.fsd_inputs)
        moved.append(torch.nn.utils.parameters_to_vector(module.parameters()).detach())
    assert torch.equal(moved[0], moved[1]) and not torch.equal(moved[0], data.theta)


def test_minimiser_is_stationary_and_matches_the_independent_newton(float64):
    model = ap.Model("mlp", (2, 3, 2))
    data = ap.draw_data(model, 3)
    q = ap.model_q(model, data, "model", 0.5, 50.0, ap.Proximal, "squared")
    u = q.minimiser()
    assert q.grad(u).norm() < 1e-12 * q.grad(q.theta).norm()
    reference = ap.newton_minimiser(ap.exact_objective(model, data, 0.5, 50.0), data.theta)
    assert rel_err(u - data.theta, reference - data.theta) < 1e-10


def test_wsd_mutant_doubles_the_damping(float64):
    """The mutant objective's minimiser with λ_F = 0 and a linear loss is −g/(2λ_W)."""
    theta, g = torch.randn(3), torch.randn(3)
    q = ap.linearised_q(theta, g, torch.eye(3), 0.0, 0.5, WsdWithoutHalf, "squared")
    assert rel_err(q.newton_step() - theta, -g) < 1e-13


# ----- the references -----


@settings(max_examples=10, deadline=None)
@given(seed=seeds(), n=st.integers(1, 6))
def test_fsd_inputs_reproduce_g(seed, n):
    with check_environment():
        G = spd(n, torch.Generator().manual_seed(seed % 2**31), -3, 3)
        X = ap.fsd_inputs(G)
        assert rel_err(X.mT @ X / n, G) < 1e-10


@settings(max_examples=10, deadline=None)
@given(seed=seeds(), kind=st.sampled_from(sorted(KINDS)), data=st.data())
def test_independent_copy_is_the_module(seed, kind, data):
    """`Model.outputs` on the flat parameters is the module's forward (same parameter order)."""
    sizes = tuple(data.draw(st.integers(1, 4)) for _ in KINDS[kind])
    with check_environment():
        model = ap.Model(kind, sizes)
        draw = ap.draw_data(model, seed % 2**31)
        module = model.module()
        ap.set_flat_parameters(module, draw.theta)
        assert sum(p.numel() for p in module.parameters()) == model.n
        assert rel_err(model.outputs(draw.theta, draw.inputs), module(draw.inputs).detach()) < 1e-14


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_true_fisher_is_the_ggn(float64, kind):
    """For these exponential-family outputs (softmax; unit-variance Gaussian) F = E[J_fᵀ∇²ρJ_f]."""
    model = ap.Model(kind, KINDS[kind])
    data = ap.draw_data(model, 11)
    assert rel_err(ap.fisher(model, data), ap.ggn(model, data, ap.output_hessian)) < 1e-13
    if kind == "softmax":
        assert rel_err(ap.ggn(model, data, ap._identity_output_hessian), ap.fisher(model, data)) > 0.5


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fisher_mc_matches_the_exact_fisher(float64, kind):
    model = ap.Model(kind, KINDS[kind])
    data = ap.draw_data(model, 12)
    gen = torch.Generator().manual_seed(0)
    V = torch.nn.functional.normalize(torch.randn(6, model.n, generator=gen), dim=-1)
    mean, se = ap.fisher_mc(model, data, ap.model_labels, V, 512, gen)
    exact = torch.einsum("kn,nm,km->k", V, ap.fisher(model, data), V)
    assert ((mean - exact).abs() / se).max() < 5
    assert (se < 0.1 * exact).all()


def test_empirical_fisher_has_no_mc_error(float64):
    """The mutant's labels are B′'s data labels, the same in every draw: zero standard error."""
    model = ap.Model("softmax", KINDS["softmax"])
    data = ap.draw_data(model, 13)
    V = torch.eye(model.n)[:3]
    mean, se = ap.fisher_mc(model, data, ap._data_labels, V, 8, torch.Generator().manual_seed(0))
    assert torch.equal(se, torch.zeros(3)) and (mean > 0).all()


@settings(max_examples=10, deadline=None)
@given(seed=seeds(), n=st.integers(1, 5))
def test_proximal_step_is_the_argmin_of_the_linearised_objective(seed, n):
    """APO-1's closed form against scipy's BFGS on gᵀs + λ_F/2 sᵀGs + λ_W/2‖s‖² (well-conditioned draws)."""
    with check_environment():
        gen = torch.Generator().manual_seed(seed % 2**31)
        G, g = spd(n, gen), torch.randn(n, generator=gen)
        lam_fsd, lam_wsd = 1.0 + float(torch.rand((), generator=gen)), 0.5
        K = (lam_fsd * G + lam_wsd * torch.eye(n)).numpy()

        def f(s):
            return g.numpy() @ s + 0.5 * s @ K @ s, g.numpy() + K @ s

        found = scipy.optimize.minimize(f, g.numpy() * 0, jac=True, method="BFGS", options={"gtol": 1e-12}).x
        assert rel_err(torch.from_numpy(found), ap.proximal_step(G, g, lam_fsd, lam_wsd)) < 1e-6


# ----- other draws -----


@settings(max_examples=5, deadline=None)
@given(seed=seeds())
def test_apo1_holds_for_other_draws(seed):
    with check_environment():
        outcome = ap.apo_1(seed=seed % 2**31)
    assert outcome.passed, [p for p in outcome.parts if not p.passed]


@settings(max_examples=3, deadline=None)
@given(
    seed=st.integers(1000, 2**31 - 1),
    d=st.integers(2, 5),
    classes=st.integers(3, 4),
    hidden=st.integers(2, 5),
)
def test_apo2_holds_for_other_draws(seed, d, classes, hidden):
    models = (
        ap.Model("softmax", (d, classes)),
        ap.Model("gaussian", (d, 2)),
        ap.Model("mlp", (d, hidden, 1)),
    )
    with check_environment():
        outcome = ap.apo_2(draws=(ap.Draw(seed, models, None, None),))
    assert outcome.passed, [p for p in outcome.parts if not p.passed]
