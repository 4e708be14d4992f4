"""APO's small experiments (`precondalg.experiments.apo`; Bae et al. 2022): the problems they run on and
their loops, then the experiments themselves.

- APO-E1, the Rosenbrock function (App. C.1; `precondalg.problems.Rosenbrock`): the function, its gradient
  and Hessian against closed forms and automatic differentiation, the model that holds the point
  (θ = c·w, the gradient c∇f), the input scale as APO-Precond's initial preconditioner c²·I, the loop
  `minimize` (APO's batch, the recorded path, divergence), APO-LR's first meta-step against the sign of
  ∂Q/∂η written out.  Float64 and deterministic.
- APO-E2, the poorly conditioned two-layer linear regression (§5 after Rahimi & Recht 2017;
  `precondalg.problems.ill_conditioned_regression`): the construction (A's singular values, seeded
  determinism, shapes, the loss), the loop `train` (APO's batches, K-FAC's empirical and sampled Fisher
  statistics written out, divergence), and two facts that follow from the mathematics of the problem: A's
  conditioning is what makes it hard, and K-FAC with the sampled Fisher solves the last layer.
- APO-E8, learning-rate adaptation on a digits MLP (§6.3; `precondalg.problems.digits_classification`):
  the task (data, model, seeded batches, the separate B′ stream), the loop `train_classifier` (the same
  batches for every optimizer, divergence), `learned_learning_rate` and the first meta-steps of η.
- The experiments: equal budgets, the quick grids against the committed full run's winners, the rows'
  construction, the measured values of short runs (exact, float64), the claims' arithmetic (a diverged
  reference is no reference), and short end-to-end runs (files, selection, curves).  The ``--quick
  --strict`` runs are the slow tier.
"""

from __future__ import annotations

import csv
import doctest
import importlib
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from precondalg.experiments import apo, registered
from precondalg.experiments.core import run_experiment
from precondalg.objectives import factored_tikhonov
from precondalg.optim import APO, KFAC
from precondalg.problems import (
    IllConditionedRegression,
    Rosenbrock,
    RosenbrockRun,
    digits_classification,
    ill_conditioned_regression,
    learned_learning_rate,
    log_spaced_singular_values,
    minimize,
    regression_loss,
    rosenbrock,
    train,
    train_classifier,
)

F64 = torch.float64
ROSENBROCK = importlib.import_module("precondalg.problems.rosenbrock")
REGRESSION = importlib.import_module("precondalg.problems.ill_conditioned_regression")
DIGITS = importlib.import_module("precondalg.problems.digits_mlp")
EXPERIMENTS = registered()
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "experiments" / "results"
NAMES = ("APO-E1", "APO-E2", "APO-E8")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def task():
    return digits_classification()


def _points(n: int, seed: int = 0) -> torch.Tensor:
    return 3 * torch.rand(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64) - 1.5


# ------------------------------------------------------------------------------- APO-E1: the function
def test_rosenbrock_doctests():
    assert doctest.testmod(ROSENBROCK).failed == 0


def test_values_at_known_points():
    p = Rosenbrock()
    for point, value in (((-1.0, 1.0), 4.0), ((1.0, 1.0), 0.0), ((-1.5, 2.5), 12.5), ((0.0, 0.0), 1.0)):
        assert p.value(torch.tensor(point, dtype=F64)).item() == value
    q = Rosenbrock(a=2.0, b=10.0)
    assert q.value(q.minimum).item() == 0.0 and q.minimum.tolist() == [2.0, 4.0]
    assert rosenbrock(torch.tensor([0.0, 1.0]), a=2.0, b=10.0).item() == 4.0 + 10.0


@pytest.mark.parametrize("a, b", [(1.0, 100.0), (2.0, 10.0)])
def test_gradient_and_hessian_against_autograd(a, b):
    """The closed forms equal torch.func's gradient and Hessian of f at 20 random points (to round-off)."""
    p = Rosenbrock(a=a, b=b)
    for point in _points(20):
        grad = torch.func.grad(p.value)(point)
        hess = torch.func.hessian(p.value)(point)
        assert torch.allclose(p.gradient(point), grad, rtol=1e-13, atol=1e-12)
        assert torch.allclose(p.hessian(point), hess, rtol=1e-13, atol=1e-12)


def test_minimum_is_stationary_and_ill_conditioned():
    """∇f(1, 1) = 0; ∇²f(1, 1) = [[802, −400], [−400, 200]], eigenvalues 501 ± √(501² − 400): the
    curvature across the valley is 2508 times that along it."""
    p = Rosenbrock()
    assert p.gradient(p.minimum).abs().max().item() == 0.0
    H = p.hessian(p.minimum)
    assert H.tolist() == [[802.0, -400.0], [-400.0, 200.0]]
    expected = [501 - math.sqrt(501**2 - 400), 501 + math.sqrt(501**2 - 400)]
    assert torch.allclose(torch.linalg.eigvalsh(H), torch.tensor(expected, dtype=F64), rtol=1e-13)


@pytest.mark.parametrize("c", [1.0, 0.03])
@pytest.mark.parametrize("start", [(-1.0, 1.0), (-1.5, 2.5)])
def test_model_holds_the_point_and_gives_c_times_the_gradient(c, start):
    """θ = c·w: the model's output on the input c is the start, and ∂f/∂w = c·∇f(θ) (shape (2, 1))."""
    p = Rosenbrock(start=start, input_scale=c)
    model = p.make_model()
    assert model.weight.shape == (2, 1) and model.bias is None and model.weight.dtype == F64
    assert torch.allclose(p.point(model), torch.tensor(start, dtype=F64), rtol=1e-15)
    p.loss_fn(model(p.inputs)).backward()
    theta = torch.tensor(start, dtype=F64)
    assert torch.allclose(model.weight.grad[:, 0], c * p.gradient(theta), rtol=1e-13)
    assert p.loss_fn(model(p.inputs)).item() == pytest.approx(p.value(theta).item(), rel=1e-14)


def test_rosenbrock_refusals():
    for bad in ({"input_scale": 0.0}, {"input_scale": -1.0}, {"input_scale": math.inf}, {"start": (1.0,)}):
        with pytest.raises(ValueError):
            Rosenbrock(**bad)
    p = Rosenbrock()
    model = p.make_model()
    sgd = torch.optim.SGD(model.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="steps"):
        minimize(p, model, sgd, -1)
    with pytest.raises(ValueError, match="diverge_factor"):
        minimize(p, model, sgd, 1, diverge_factor=1.0)


# ------------------------------------------------------------------------- APO-E1: the input scale
@pytest.mark.parametrize("eta0", [1e-3, 3e-4])
def test_input_scale_is_the_initial_preconditioner(eta0):
    """With meta_lr = 0 (P̂ stays I), APO-Precond on the input c = √η₀ with lr 1 takes the θ-steps of
    SGD at 0.9·η₀ on c = 1 (a w-step −0.9∇_w = −0.9c∇f is the θ-step −0.9c²∇f), and the preset's own
    route (c = 1, lr = η₀) does too: the two ways of starting at SGD differ only in the lookahead."""
    steps = 100
    ref = Rosenbrock()
    model = ref.make_model()
    sgd = minimize(ref, model, torch.optim.SGD(model.parameters(), lr=0.9 * eta0), steps, record_points=True)
    for c, lr in ((math.sqrt(eta0), 1.0), (1.0, eta0)):
        p = Rosenbrock(input_scale=c)
        model = p.make_model()
        opt = APO(
            model.parameters(), lr, model=model, loss_fn=p.loss_fn, base="sgd", meta_lr=0.0, lam_fsd=0.0
        )
        run = minimize(p, model, opt, steps, record_points=True)
        assert torch.allclose(torch.tensor(run.points), torch.tensor(sgd.points), rtol=1e-12, atol=1e-14)


# ------------------------------------------------------------------------------- APO-E1: the loop
def test_minimize_records_the_path():
    p = Rosenbrock(start=(-1.5, 2.5))
    model = p.make_model()
    run = minimize(p, model, torch.optim.SGD(model.parameters(), lr=1e-4), 25, record_points=True)
    assert isinstance(run, RosenbrockRun) and run.diverged_at is None and run.skipped == 0
    assert len(run.losses) == 25 and len(run.points) == 26
    assert run.points[0] == (-1.5, 2.5) and run.losses[0] == 12.5
    assert run.points[-1] == tuple(p.point(model).tolist()) and run.final == p.value(p.point(model)).item()
    for value, point in zip(run.losses, run.points):
        assert value == pytest.approx(p.value(torch.tensor(point, dtype=F64)).item(), rel=1e-14)
    assert minimize(p, p.make_model(), torch.optim.SGD(model.parameters(), lr=1e-4), 3).points == []


def test_minimize_stops_at_divergence():
    """SGD at lr 0.1 from (−1, 1) overshoots the valley and the quartic term takes over within a few
    steps (measured: f > 1e6·f₀ at step 5)."""
    p = Rosenbrock()
    model = p.make_model()
    run = minimize(p, model, torch.optim.SGD(model.parameters(), lr=0.1), 100)
    assert run.final == math.inf and run.diverged_at is not None and run.diverged_at <= 10
    assert len(run.losses) == run.diverged_at


@pytest.mark.parametrize("eta0", [1e-2, 1e-4])
def test_apo_lr_first_meta_step_has_the_sign_of_minus_dQ_deta(eta0):
    """minimize steps APO with its batch.  With λ_FSD = λ_WSD = 0, Q(η) = f(θ − ηg) and
    ∂Q/∂log η = −η∇f(θ − ηg)·g (closed form); the first meta-step (step 0) of RMSprop (lr 0.1) on log η
    has size 1 (first step of RMSprop: 0.1·g/(√((1 − α)g²) + ε), α = 0.99; ε = 1e-8 shortens it by
    6e-5 relative at η₀ = 1e-4, where |g| ≈ 1.6e-3), so η₁ = η₀·exp(−sign ∂Q/∂log η); then
    the meta-updates are at steps 10 and 20 only."""
    p = Rosenbrock()
    theta = torch.tensor(p.start, dtype=F64)
    g = p.gradient(theta)
    slope = -eta0 * torch.dot(p.gradient(theta - eta0 * g), g).item()
    model = p.make_model()
    opt = APO(
        model.parameters(),
        eta0,
        model=model,
        loss_fn=p.loss_fn,
        mode="lr",
        base="sgd",
        lam_fsd=0.0,
        lam_wsd=0.0,
        meta_every=10,
    )
    etas = []
    for _ in range(21):
        minimize(p, model, opt, 1)
        etas.append(float(opt.preconditioners()[0][1].alpha))
    assert etas[0] == pytest.approx(eta0 * math.exp(-math.copysign(1.0, slope)), rel=1e-3)
    changes = [t for t in range(1, 21) if etas[t] != etas[t - 1]]
    assert changes == [10, 20]


def _exact_factors(p: IllConditionedRegression) -> tuple[torch.Tensor, torch.Tensor]:
    """W₁ = diag(√s) Vᵀ, W₂ = U diag(√s): W₂W₁ = A (a balanced factorisation)."""
    root = p.singular_values.sqrt()
    return root[:, None] * p.V.mT, p.U * root


# ------------------------------------------------------------------------- APO-E2: construction
def test_regression_doctests():
    assert doctest.testmod(REGRESSION).failed == 0


@pytest.mark.parametrize("kappa", [1e5, 1e10])
@pytest.mark.parametrize("seed", [0, 7])
def test_singular_values_are_exactly_log_spaced(seed, kappa):
    p = ill_conditioned_regression(seed, kappa=kappa)
    expected = torch.tensor([kappa ** (-i / 5) for i in range(6)], dtype=F64)
    assert torch.allclose(p.singular_values, expected, rtol=1e-14, atol=0)
    assert (torch.linalg.svdvals(p.A) - expected).abs().max() <= 1e-12
    assert torch.linalg.cond(p.A).item() == pytest.approx(kappa, rel=1e-5)
    assert torch.allclose(p.U.mT @ p.U, torch.eye(6, dtype=F64), atol=1e-14)
    assert torch.allclose(p.V.mT @ p.V, torch.eye(6, dtype=F64), atol=1e-14)
    assert torch.allclose((p.U * p.singular_values) @ p.V.mT, p.A, atol=1e-15)


def test_log_spaced_singular_values():
    assert log_spaced_singular_values(1, 1e5).tolist() == [1.0]
    s = log_spaced_singular_values(11, 1e10)
    assert s[0] == 1.0 and s[-1] == pytest.approx(1e-10, rel=1e-12)
    assert torch.allclose(s[1:] / s[:-1], torch.full((10,), 0.1, dtype=F64), rtol=1e-12)
    for bad in ({"k": 0, "kappa": 10.0}, {"k": 3, "kappa": 0.5}, {"k": 3, "kappa": math.inf}):
        with pytest.raises(ValueError):
            log_spaced_singular_values(**bad)


def test_shapes_dtype_and_model():
    p = ill_conditioned_regression(0)
    assert (p.A.shape, p.X.shape, p.Y.shape, p.n) == ((10, 6), (1000, 6), (1000, 10), 1000)
    assert all(t.dtype == F64 for t in (p.A, p.U, p.V, p.X, p.Y, p.singular_values))
    assert torch.equal(p.Y, p.X @ p.A.mT)
    model = p.make_model()
    assert [type(m) for m in model] == [torch.nn.Linear, torch.nn.Linear]
    assert [tuple(m.weight.shape) for m in model] == [(6, 6), (10, 6)]
    assert all(m.bias is None and m.weight.dtype == F64 for m in model)
    assert p.config["kappa"] == 1e5 and p.config["singular_values"] == p.singular_values.tolist()
    small = ill_conditioned_regression(3, n=50, d_in=3, d_out=4, hidden=5, init_std=0.5)
    assert (small.X.shape, small.A.shape) == ((50, 3), (4, 3))
    assert [tuple(m.weight.shape) for m in small.make_model()] == [(5, 3), (4, 5)]


def test_seeded_determinism():
    a, b, c = ill_conditioned_regression(3), ill_conditioned_regression(3), ill_conditioned_regression(4)
    for name in ("A", "U", "V", "X", "Y"):
        assert torch.equal(getattr(a, name), getattr(b, name))
        assert not torch.equal(getattr(a, name), getattr(c, name))
    wa = [m.weight for m in a.make_model()]
    wb = [m.weight for m in b.make_model()]
    assert all(torch.equal(x, y) for x, y in zip(wa, wb))
    assert not torch.equal(wa[0], c.make_model()[0].weight)
    assert not torch.equal(wa[0], a.make_model(init_seed=5)[0].weight)  # the init has its own seed
    assert torch.equal(
        ill_conditioned_regression(3, init_seed=5).make_model()[0].weight, a.make_model(init_seed=5)[0].weight
    )


def test_initialisation_is_standard_normal():
    """N(0, init_std²) per entry: the sample moments over 20 models (2,400 entries each way)."""
    p = ill_conditioned_regression(0, init_std=0.5)
    w = torch.cat([m.weight.flatten() for s in range(20) for m in p.make_model(init_seed=s)]).detach()
    assert abs(w.mean().item()) < 0.05 and w.std().item() == pytest.approx(0.5, rel=0.05)


def test_regression_refusals():
    for bad in ({"n": 0}, {"d_in": 11}, {"hidden": 1.5}, {"init_std": -1.0}, {"kappa": 0.1}):
        with pytest.raises(ValueError):
            ill_conditioned_regression(0, **bad)


# --------------------------------------------------------------------------------- APO-E2: loss
def test_exact_solution_has_zero_loss():
    """W₂W₁ = A: the loss is 0 up to round-off (measured ~1e-32)."""
    p = ill_conditioned_regression(1)
    W1, W2 = _exact_factors(p)
    model = p.make_model()
    with torch.no_grad():
        model[0].weight.copy_(W1)
        model[1].weight.copy_(W2)
        assert p.loss(model).item() <= 1e-20
        assert p.product_loss(W2 @ W1).item() <= 1e-20
        assert p.population_loss(W2 @ W1).item() <= 1e-20


def test_loss_is_the_sample_quadratic_form():
    """J = tr((W − A) Σ̂ (W − A)ᵀ), Σ̂ = XᵀX/N, = 10·mse_loss; its population value ‖W − A‖²_F."""
    p = ill_conditioned_regression(2)
    model = p.make_model()
    with torch.no_grad():
        W = model[1].weight @ model[0].weight
        D, S = W - p.A, p.X.mT @ p.X / p.n
        J = p.loss(model)
        assert J.item() == pytest.approx(torch.trace(D @ S @ D.mT).item(), rel=1e-12)
        assert J.item() == pytest.approx(10 * torch.nn.functional.mse_loss(model(p.X), p.Y).item(), rel=1e-12)
        assert J.item() == pytest.approx(p.product_loss(W).item(), rel=1e-12)
        assert p.population_loss(W).item() == pytest.approx((D**2).sum().item(), rel=1e-14)
        assert J.item() == pytest.approx(p.population_loss(W).item(), rel=0.2)  # Σ̂ ≈ I at N = 1000
    assert regression_loss(torch.ones(4, 3), torch.zeros(4, 3)).item() == 3.0


# ------------------------------------------------------------------------------ APO-E2: the loop
def _layer2(opt):
    """The preconditioner of the second layer (Ḡ 10×10, Ā 6×6)."""
    (P,) = [P for _, P in opt.preconditioners() if [f.shape[0] for f in P.factors] == [10, 6]]
    return P.to_dense()


def _expected_kfac(G: torch.Tensor, A: torch.Tensor, damping: float) -> torch.Tensor:
    gamma_G, gamma_A = factored_tikhonov(damping, [G, A])
    eye = lambda n: torch.eye(n, dtype=F64)  # noqa: E731
    return torch.kron(
        torch.linalg.inv(G + gamma_G * eye(G.shape[0])), torch.linalg.inv(A + gamma_A * eye(A.shape[0]))
    )


def test_kfac_empirical_statistics_are_the_residuals():
    """The preset's empirical Fisher on this loss: Ḡ₂ = (4/N) Σ e eᵀ (e = f(x) − y), Ā₂ = (1/N) Σ h hᵀ
    (h = W₁x): the curvature shrinks with the residual (rank ≤ 6 of 10 here)."""
    p = ill_conditioned_regression(0)
    model = p.make_model()
    with torch.no_grad():
        h = model[0](p.X)
        e = model[1](h) - p.Y
    opt = KFAC(model.parameters(), lr=0.1, model=model, damping=1e-3)
    train(p, model, opt, 1)
    G, A = 4 * e.mT @ e / p.n, h.mT @ h / p.n
    assert torch.linalg.matrix_rank(G).item() == 6
    assert torch.allclose(_layer2(opt), _expected_kfac(G, A, 1e-3), rtol=1e-8, atol=0)


def test_kfac_sampled_statistics_are_gauss_newton():
    """fisher="sampled": Ḡ₂ = (2/N) Σ εεᵀ with the harness's ε (seeded), ≈ 2I (the Gauss–Newton
    factor of J; each entry's standard deviation is about 0.09 at N = 1000)."""
    p = ill_conditioned_regression(0)
    model = p.make_model()
    with torch.no_grad():
        h = model[0](p.X)
    opt = KFAC(model.parameters(), lr=0.1, model=model, damping=1e-3)
    train(p, model, opt, 1, fisher="sampled", seed=3)
    eps = torch.randn(p.n, 10, generator=torch.Generator().manual_seed(3), dtype=F64)
    G, A = 2 * eps.mT @ eps / p.n, h.mT @ h / p.n
    assert (G - 2 * torch.eye(10, dtype=F64)).abs().max().item() < 0.45
    assert torch.allclose(_layer2(opt), _expected_kfac(G, A, 1e-3), rtol=1e-8, atol=0)


def test_train_steps_apo_with_the_whole_sample():
    """APO's meta-updates need batch= and fsd_batch= (a ValueError otherwise): train passes them."""
    p = ill_conditioned_regression(0)
    model = p.make_model()
    opt = APO(model.parameters(), 0.01, model=model, loss_fn=regression_loss, fsd="squared", meta_lr=1e-3)
    r = train(p, model, opt, 21)
    assert len(r.losses) == 21 and r.diverged_at is None and r.skipped == 0
    assert r.final < 0.1 * r.losses[0]  # measured 11.9 from 408
    dense = [P.to_dense() for _, P in opt.preconditioners()]
    assert all(not torch.allclose(P, 0.9 * torch.eye(P.shape[0], dtype=F64)) for P in dense)  # P̂ was fitted


def test_train_stops_at_divergence():
    p = ill_conditioned_regression(0)
    model = p.make_model()
    r = train(p, model, torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9), 100)
    assert r.final == math.inf and r.diverged_at is not None and r.diverged_at <= 5
    assert len(r.losses) == r.diverged_at


def test_train_refusals():
    p = ill_conditioned_regression(0)
    model = p.make_model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="sampled"):
        train(p, model, sgd, 1, fisher="sampled")
    with pytest.raises(ValueError, match="fisher"):
        train(p, model, sgd, 1, fisher="true")
    with pytest.raises(ValueError, match="steps"):
        train(p, model, sgd, -1)


# ----------------------------------------------------------------------- APO-E2: the mathematics
def test_conditioning_is_what_makes_it_hard():
    """Same seed, initialisation, SGD-momentum (lr 0.01, μ 0.9) and 500 steps: κ = 1 reaches round-off
    (measured 1.1e-20), κ = 1e5 does not come near it (measured 3.7e-5): the small singular values of
    W₂W₁ that A needs are learned slowly."""
    finals = {}
    for kappa in (1.0, 1e5):
        p = ill_conditioned_regression(0, kappa=kappa)
        model = p.make_model()
        finals[kappa] = train(p, model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), 500).final
    assert finals[1.0] < 1e-15
    assert finals[1e5] > 1e-6


@pytest.mark.parametrize("seed", [0, 2])
def test_sampled_fisher_kfac_solves_the_last_layer(seed):
    """With W₁ fixed, J is a linear least-squares problem in W₂ whose Hessian is 2I ⊗ Ā₂ (Ā₂ = W₁Σ̂W₁ᵀ)
    and whose minimum is 0 (W₂ = A W₁⁻¹); K-FAC with the sampled Fisher (Ḡ → 2I), lr 1 and no damping
    is Newton's step up to Ḡ's sampling error, a contraction: 30 steps reach round-off (measured
    5e-32 on seed 0, 7e-28 on seed 2).  SGD-momentum, the best of lr ∈ {.1, .03, .01, .003}, is
    conditioned by κ(Ā₂) and stays far from it (measured 7.4 and 7.3)."""
    p = ill_conditioned_regression(seed)
    model = p.make_model()
    kfac = train(p, model, KFAC([model[1].weight], lr=1.0, model=model, damping=0.0), 30, fisher="sampled")
    sgd = []
    for lr in (0.1, 0.03, 0.01, 0.003):
        model = p.make_model()
        sgd.append(train(p, model, torch.optim.SGD([model[1].weight], lr=lr, momentum=0.9), 30).final)
    assert kfac.final < 1e-20 * kfac.losses[0]
    assert min(sgd) > 1e-3 * kfac.losses[0]


def _apo_lr(model, eta0, base="momentum", **kw):
    return APO(model.parameters(), eta0, model=model, loss_fn=F.cross_entropy, mode="lr", base=base, **kw)


# ------------------------------------------------------------------------------- APO-E8: the task
def test_digits_doctests():
    assert doctest.testmod(DIGITS).failed == 0


def test_data(task):
    """load_digits: 1797 images, 64 pixels / 16 in [0, 1], 10 classes of 174–183 images each."""
    assert task.X.shape == (1797, 64) and task.X.dtype == torch.float32 and task.y.dtype == torch.int64
    assert task.X.min().item() == 0.0 and task.X.max().item() == 1.0
    assert torch.equal(task.X * 16, (task.X * 16).round())
    counts = torch.bincount(task.y)
    assert counts.numel() == 10 and counts.min().item() == 174 and counts.max().item() == 183
    assert task.steps_per_epoch() == 18 and task.config["batch_size"] == 100


def test_batches_are_seeded_and_cover_the_data_once_per_epoch(task):
    """The same seed gives the same batches; each epoch is a permutation (17 batches of 100, one of 97);
    the next epoch reshuffles; the B′ loader's order differs from the training loader's."""
    first = [(x.clone(), y.clone()) for x, y in task.loader(3)]
    again = [(x, y) for x, y in task.loader(3)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert [len(y) for _, y in first] == [100] * 17 + [97]
    rows, expected = (
        torch.unique(torch.cat([x for x, _ in first]), dim=0, return_counts=True),
        torch.unique(task.X, dim=0, return_counts=True),
    )
    assert all(torch.equal(a, b) for a, b in zip(rows, expected))  # the same rows, with multiplicities
    loader = task.loader(3)
    epoch1, epoch2 = [y for _, y in loader], [y for _, y in loader]
    assert not torch.equal(torch.cat(epoch1), torch.cat(epoch2))
    fsd = [y for _, y in task.fsd_loader(3)]
    assert not torch.equal(torch.cat(fsd), torch.cat([y for _, y in first]))


def test_model_is_seeded_and_leaves_the_global_generator(task):
    state = torch.random.get_rng_state()
    a, b, c = task.make_model(0), task.make_model(0), task.make_model(1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert [tuple(p.shape) for p in a.parameters()] == [
        (256, 64),
        (256,),
        (256, 256),
        (256,),
        (10, 256),
        (10,),
    ]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a[0].weight, c[0].weight)
    assert [type(m).__name__ for m in digits_classification(hidden=(8,)).make_model(0)] == [
        "Linear",
        "ReLU",
        "Linear",
    ]


def test_digits_refusals(task):
    for bad in ({"hidden": ()}, {"hidden": (0,)}, {"batch_size": 0}, {"batch_size": 1.5}):
        with pytest.raises(ValueError):
            digits_classification(**bad)
    model = task.make_model(0)
    with pytest.raises(ValueError, match="epochs"):
        train_classifier(task, model, torch.optim.SGD(model.parameters(), lr=0.1), -1, seed=0)
    with pytest.raises(ValueError, match="one scalar preconditioner"):
        learned_learning_rate(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="one scalar preconditioner"):
        learned_learning_rate(APO(model.parameters(), 0.1, model=model, loss_fn=F.cross_entropy))


# ------------------------------------------------------------------------------- APO-E8: the loop
def test_same_batches_for_every_optimizer(task):
    """APO in mode "lr" with meta_lr = 0 keeps η = η₀ and is SGD-momentum (test_apo's reduction), so
    through train_classifier it must follow torch's SGD(lr=η₀, momentum=0.9) on the same seed: the same
    batches in the same order (and B′ drawn from its own stream changes nothing).  Float32: equal to
    1e-4 relative after 2 epochs (measured: identical)."""
    runs = {}
    for name in ("torch", "apo"):
        model = task.make_model(5)
        if name == "torch":
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        else:
            opt = _apo_lr(model, 0.1, meta_lr=0.0)
        watch = learned_learning_rate if name == "apo" else None
        runs[name] = train_classifier(task, model, opt, 2, seed=5, watch=watch)
    assert runs["apo"].steps == runs["torch"].steps == 36 and runs["apo"].skipped == 0
    assert runs["apo"].epoch_losses == pytest.approx(runs["torch"].epoch_losses, rel=1e-4)
    assert runs["apo"].watched == pytest.approx([0.1] * 36, rel=1e-6) and runs["torch"].watched == []
    assert runs["torch"].final == runs["torch"].epoch_losses[-1] < 0.5 * runs["torch"].epoch_losses[0]


def test_divergence_stops_the_run(task):
    """SGD-momentum at lr 1e4: the batch loss is non-finite within a few steps; final is inf."""
    model = task.make_model(0)
    r = train_classifier(task, model, torch.optim.SGD(model.parameters(), lr=1e4, momentum=0.9), 3, seed=0)
    assert r.final == math.inf and r.diverged_at is not None and r.steps == r.diverged_at <= 18
    assert len(r.epoch_losses) == 1


@pytest.mark.parametrize("base, eta0", [("momentum", 0.1), ("rmsprop", 3e-4)])
def test_learned_eta_moves_by_e_at_the_first_meta_step_only_every_k(task, base, eta0):
    """η = exp φ, RMSprop (lr 0.1) on φ: its first step has size 1 in φ (× e or ÷ e; RMSprop's ε = 1e-8
    shortens it by < 1e-4 relative here), and η changes at steps 0, 10, 20, … only (K = 10)."""
    model = task.make_model(0)
    opt = _apo_lr(model, eta0, base=base)
    assert learned_learning_rate(opt) == pytest.approx(eta0, rel=1e-6)
    r = train_classifier(task, model, opt, 2, seed=0, watch=learned_learning_rate)
    assert min(abs(r.watched[0] / eta0 - math.e), abs(r.watched[0] / eta0 - 1 / math.e)) < 1e-4 * math.e
    changes = [t for t in range(1, len(r.watched)) if r.watched[t] != r.watched[t - 1]]
    assert set(changes) <= set(range(10, 36, 10)) and changes  # watched[t] is η after step t + 1


# ------------------------------------------------------------------------------------- the experiments
def test_module_doctests():
    assert doctest.testmod(apo).failed == 0


def test_registered_with_the_papers_figures_and_settings():
    e1, e2, e8 = (EXPERIMENTS[n] for n in NAMES)
    assert (e1.figure, e2.figure, e8.figure) == ("App. C.1, Fig. 7", "§5, Fig. 4 left", "§6.3, Fig. 5")
    assert {e.paper for e in (e1, e2, e8)} == {"APO (Bae et al. 2022)"}
    assert (e1.steps, e1.quick_steps, e1.seeds) == (2000, 2000, 3)
    assert (e2.steps, e2.quick_steps, e2.seeds) == (2000, 500, 5)
    assert (e8.steps, e8.quick_steps, e8.seeds) == (1800, 180, 3)  # 100 and 10 epochs of 18 steps
    assert apo.META_EVERY == 10 and apo.STARTS == ((-1.0, 1.0), (-1.5, 2.5)) and apo.KAPPA == 1e5
    assert apo.ETA0 == {"SGDm-APO": 0.1, "RMSprop-APO": 3e-4}


@pytest.mark.parametrize("grids, size", [("E1_GRIDS", 6), ("E2_GRIDS", 4), ("E8_GRIDS", 4)])
def test_grids_give_equal_budgets(grids, size):
    grids = getattr(apo, grids)
    assert {name: len(g) for name, g in grids.items()} == dict.fromkeys(grids, size)
    assert all(len({tuple(hp.items()) for hp in g}) == size for g in grids.values())  # no repeats
    with pytest.raises(ValueError, match="equal sizes"):
        apo._tune(
            {"a": [{"lr": 1.0}], "b": [{"lr": 1.0}, {"lr": 2.0}]}, lambda n, hp: (0.0, None), lambda: None
        )


@pytest.mark.parametrize("name", NAMES)
def test_quick_grids_hold_the_full_runs_winner(name):
    """The committed full run (docs/experiments/results/NAME) chose, for every method, a point of the
    quick grid (APO-E2's: 2 points of the full grid; the others': that point alone), so that the quick
    run's tuning can reach the full run's choice."""
    full = {"APO-E1": apo.E1_GRIDS, "APO-E2": apo.E2_GRIDS, "APO-E8": apo.E8_GRIDS}[name]
    quick = apo.QUICK_GRIDS[name]
    assert set(quick) == set(full) and all(
        len(g) == (2 if name == "APO-E2" else 1) and all(hp in full[m] for hp in g) for m, g in quick.items()
    )
    tuning = json.loads((RESULTS / name / "results.json").read_text())["tuning"]
    assert {m: rec["chosen"] in quick[m] for m, rec in tuning.items()} == dict.fromkeys(full, True)


def test_tune_picks_the_lowest_finite_loss_and_flags_grid_edges():
    grid = apo.product(lr=(1.0, 0.1, 0.01), damping=(10.0, 1.0))
    scores = {(0.1, 1.0): 2.0, (0.01, 10.0): 1.0, (1.0, 10.0): math.nan}
    tuning, winners = apo._tune(
        {"m": grid}, lambda n, hp: (scores.get((hp["lr"], hp["damping"]), 5.0), hp["lr"]), lambda: None
    )
    rec = tuning["m"]
    assert rec["chosen"] == {"lr": 0.01, "damping": 10.0} and winners == {"m": 0.01}
    assert rec["at_grid_edge"] and rec["trials"][0] == [{"lr": 1.0, "damping": 10.0}, math.inf]
    assert apo.edge_axes(grid, {"lr": 0.1, "damping": 10.0}) == []  # damping has two values: no edge


# ---------------------------------------------------------------------------------------------- APO-E1
def test_e1_precond_rows_run_on_the_input_sqrt_eta0():
    """The APO-Precond rows put c = √η₀ in the problem, lr 1 (SGD) or 0.1 (momentum), λ_WSD·c² in the
    preset (its weight-space equivalent of λ_WSD = 10 in θ); the other rows c = 1."""
    hp = {"eta0": 4e-4, "meta_lr": 0.01}
    for row, lr in ((apo.PRECOND_SGD, 1.0), (apo.PRECOND_SGDM, 0.1)):
        run, opt, problem = apo._descend(row, hp, (-1.0, 1.0), 0)
        assert problem.input_scale == pytest.approx(0.02) and opt.param_groups[0]["lr"] == lr
        assert opt.objective.lam_wsd == pytest.approx(10.0 * 4e-4) and opt.objective.lam_fsd == 0.0
        assert run.points == [(-1.0, 1.0)]
    _, opt, problem = apo._descend(apo.APO_LR, {"eta0": 1e-2, "meta_lr": 0.1}, (-1.0, 1.0), 0)
    assert problem.input_scale == 1.0 and opt.objective.lam_wsd == 0.0


def test_e1_short_runs_equal_the_measured_values():
    """300 steps from (−1, 1), run here, equal the values measured with the former script (SGD, SGDm,
    APO-LR: benchmarks/apo_rosenbrock.py --quick) and with this module (APO-Precond on SGDm at λ_WSD 10,
    its full run's winner, still near f(start) = 4 after 300 steps) to 1e-6 relative (float64 on two
    numbers: the margin covers another CPU's rounding), and show the ordering at this budget: APO-LR more
    than 4× below SGD (measured 4.4×)."""
    measured = {
        "SGD": ({"lr": 3e-3}, 0.24623439001823075),
        "SGDm": ({"lr": 3e-3}, 1.832433198428269e-05),
        apo.APO_LR: ({"eta0": 1e-2, "meta_lr": 0.1}, 0.05567228968176999),
        apo.PRECOND_SGDM: ({"eta0": 1e-2, "meta_lr": 0.3}, 2.929168388393567),
    }
    finals = {}
    for name, (hp, value) in measured.items():
        finals[name] = apo._descend(name, hp, (-1.0, 1.0), 300)[0].final
        assert finals[name] == pytest.approx(value, rel=1e-6), name
    assert finals[apo.APO_LR] < finals["SGD"] / 4


def test_e1_claims():
    """Per APO-Precond row: the ordering APO-Precond < APO-LR < SGD, and the factor 1e-2 to SGD; a
    diverged row (inf) fails both."""
    f = {"SGD": 1e-2, apo.APO_LR: 1e-3, apo.PRECOND_SGD: 5e-3, apo.PRECOND_SGDM: 1e-20}
    claims = apo._e1_claims(f, 2000)
    assert [c.holds for c in claims] == [False, False, True, True]
    assert [c.claim.split(":")[0] for c in claims] == [apo.PRECOND_SGD] * 2 + [apo.PRECOND_SGDM] * 2
    assert [c.holds for c in apo._e1_claims(f | {apo.PRECOND_SGDM: math.inf}, 2000)][2:] == [False, False]
    assert all(any(c.claim.startswith(k) for c in claims) for k in EXPERIMENTS["APO-E1"].known_failures)


def test_e1_runs_end_to_end(tmp_path):
    """30 steps of the full grids: the files, each winner the lowest of its 6 trials (the same on every
    seed), the winners also from (−1.5, 2.5), the claims per APO-Precond row, one loss curve per method
    from (−1, 1), the paths figure."""
    run_experiment(EXPERIMENTS["APO-E1"], tmp_path, steps=30, show_progress=False)
    r = json.loads((tmp_path / "results.json").read_text())
    for name, rec in r["tuning"].items():
        m = r["metrics"][name]
        assert len(rec["trials"]) == 6 and set(m) == {
            "f after 30 steps",
            "first step with f < 0.001",
            "f from (−1.5, 2.5), tuned at (−1, 1)",
        }
        assert m["f after 30 steps"]["per_seed"] == [min(float(t[1]) for t in rec["trials"])] * 3
    assert len(r["claims"]) == 4
    with (tmp_path / "loss.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {row["method"] for row in rows} == set(apo.E1_GRIDS) and {row["seed"] for row in rows} == {"0"}
    assert (tmp_path / "paths.png").read_bytes()[:4] == b"\x89PNG"


# ---------------------------------------------------------------------------------------------- APO-E2
def test_e2_a_claim_against_a_diverged_run_fails():
    """A diverged reference (inf) is no reference: "APO ≤ 1.5 × diverged" does not pass; finite values are
    judged as given."""
    med = {"APO-Precond": 1e-4, "KFAC": math.inf, "Shampoo": 1e-5, "SGDm": 1e-3, "Adam": 1e-7}
    assert [c.holds for c in apo._e2_claims(med, 5)] == [False, False, False, False]
    med |= {"KFAC": 1e-4, "Adam": 1e-1}
    assert [c.holds for c in apo._e2_claims(med, 5)] == [True, False, False, True]
    med |= {"APO-Precond": 1e-6}
    assert [c.holds for c in apo._e2_claims(med, 5)] == [True, True, False, True]
    assert apo.at_most(1.0, 1.5, 1.0) and not apo.at_most(math.nan, 1.5, 1.0)


def test_e2_runs_end_to_end(tmp_path):
    """20 steps of the quick configuration on 3 seeds: tuned on seed 1000, the winners on 0, 1, 2 (their
    finals, and the median the claims use), one curve per seed starting at J before the first step."""
    run_experiment(EXPERIMENTS["APO-E2"], tmp_path, steps=20, quick=True, show_progress=False)
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["config"]["tune_seed"] == 1000 and r["config"]["seeds"] == [0, 1, 2]
    chosen = r["tuning"]["SGDm"]["chosen"]
    expected = [apo._fit("SGDm", chosen, s, 20).final for s in (0, 1, 2)]
    assert r["metrics"]["SGDm"]["final loss"]["per_seed"] == expected
    assert r["metrics"]["SGDm"]["median final loss"]["per_seed"] == [sorted(expected)[1]] * 3
    with (tmp_path / "loss.csv").open() as f:
        first = [row for row in csv.DictReader(f) if row["method"] == "Adam" and row["step"] == "0.0"]
    start = ill_conditioned_regression(0).loss(ill_conditioned_regression(0).make_model()).item()
    assert len(first) == 3 and float(first[0]["value"]) == pytest.approx(start, rel=1e-12)


# ---------------------------------------------------------------------------------------------- APO-E8
def test_e8_rows():
    """The APO rows: mode "lr" from the paper's η₀ = 0.1 (SGDm) or the project's 3e-4 (RMSprop), KL FSD,
    the λ's of the grid point; the λ grid holds the preset's (1, 0.1)."""
    assert {"lam_fsd": 1.0, "lam_wsd": 0.1} in apo.LAMBDAS
    model = torch.nn.Linear(2, 2)
    opt = apo._e8_optimizer("RMSprop-APO", model, {"lam_fsd": 0.1, "lam_wsd": 0.01})
    assert opt.objective.lam_fsd == 0.1 and opt.objective.lam_wsd == 0.01 and opt.objective.fsd == "kl"
    assert learned_learning_rate(opt) == pytest.approx(3e-4, rel=1e-6)
    assert learned_learning_rate(apo._e8_optimizer("SGDm-APO", model, apo.LAMBDAS[0])) == pytest.approx(0.1)


def test_e8_criterion():
    """≥ 2× below passes, less fails; with both means below 1e-3, one standard deviation decides; a
    diverged run fails."""
    assert apo.beats_by_2x_or_1_std([0.1, 0.1], [0.2, 0.2]) and not apo.beats_by_2x_or_1_std(
        [0.11] * 2, [0.2] * 2
    )
    assert apo.beats_by_2x_or_1_std([3.5e-4, 3.5e-4], [4e-4, 6e-4])  # difference 1.5e-4 ≥ std 1.4e-4
    assert not apo.beats_by_2x_or_1_std([3.5e-4, 3.5e-4], [3e-4, 7e-4])  # 1.5e-4 < std 2.8e-4
    assert not apo.beats_by_2x_or_1_std([math.inf, 0.1], [0.2, 0.2])


def test_e8_runs_end_to_end(tmp_path):
    """One epoch of the quick configuration: η₀ and η after steps 10 of each APO row per seed, the best
    fixed lr of its base as the plot's reference, one loss point per epoch; whole epochs only."""
    exp = EXPERIMENTS["APO-E8"]
    run_experiment(exp, tmp_path, steps=18, quick=True, show_progress=False)
    r = json.loads((tmp_path / "results.json").read_text())
    assert len(r["claims"]) == 2
    with (tmp_path / "eta_sgdm.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(row["seed"], row["step"]) for row in rows] == [(s, x) for s in "012" for x in ("0.0", "10.0")]
    assert {float(row["value"]) for row in rows if row["step"] == "0.0"} == {0.1}
    with (tmp_path / "loss.csv").open() as f:
        assert sum(row["method"] == "RMSprop" for row in csv.DictReader(f)) == 3 * 2
    with pytest.raises(ValueError, match="whole epochs"):
        run_experiment(exp, tmp_path, steps=20, quick=True, show_progress=False)

