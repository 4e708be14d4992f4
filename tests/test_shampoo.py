"""Shampoo (Gupta, Koren & Singer 2018) as a row of the engine: against a published implementation
(pytorch-optimizer 4.1.0's `Shampoo`, whose conventions match: L₀ = εI, the sum, root 2k, roots every
step), against the formula written out with scipy's fractional matrix powers (β₂ < 1 with bias
correction, refits every k steps, grafting), and the closed-form fitter's reductions and refusals."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from optim_helpers import assert_close, clone_params, make_model, run
from pytorch_optimizer import Shampoo as ReferenceShampoo

from precondalg import families
from precondalg.fitters import ClosedForm
from precondalg.matrix_functions import newton_inverse_root, psd_power
from precondalg.objectives import BlockwiseObjective, Evaluation, Fisher, GradientStatistics, Statistics
from precondalg.objectives.base import run_closure
from precondalg.optim import Graft, Preconditioned, Shampoo, SkippedStepWarning
from precondalg.placement import EveryAxis, Flatten, InputSide, OutputSide, TwoSided
from precondalg.structures import simple_parts

F64 = torch.float64


def _root(S: np.ndarray, exponent: float) -> np.ndarray:
    """S^exponent of a symmetric positive definite matrix, by scipy (independent of torch)."""
    return np.real(scipy.linalg.fractional_matrix_power(S, exponent))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_equals_pytorch_optimizer_shampoo(kind):
    """Every parameter (matrices, biases, 4-d conv kernels) after 6 steps equals pytorch-optimizer's
    Shampoo (Gupta et al.'s Algorithm 2 for order-k tensors: L₀ = εI, Lᵢ += GᵢGᵢᵀ, (Lᵢ)^(−1/2k))."""
    ours, theirs = make_model(kind), make_model(kind)
    opt = Shampoo(ours.parameters(), lr=0.1, epsilon=1e-3)
    reference = ReferenceShampoo(theirs.parameters(), lr=0.1, matrix_eps=1e-3)
    run(ours, opt, kind, 6)
    run(theirs, reference, kind, 6)
    assert_close(clone_params(ours.parameters()), clone_params(theirs.parameters()), 1e-12)


def test_three_way_tensor_equals_pytorch_optimizer():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3, 4, 5, dtype=F64))
    v = torch.nn.Parameter(w.detach().clone())
    ours, theirs = Shampoo([w], lr=0.1, epsilon=1e-3), ReferenceShampoo([v], lr=0.1, matrix_eps=1e-3)
    for _ in range(4):
        T = torch.randn(3, 4, 5, dtype=F64)
        for p, opt in ((w, ours), (v, theirs)):
            opt.zero_grad()
            (p * T).sum().pow(2).backward()
            opt.step()
    assert_close([w], [v], 1e-12)


def _written_out(W0, grads_of, steps, lr, beta2, eps, every, graft=None):
    """Shampoo on one matrix parameter W (m×n), written out with numpy/scipy: L, R the statistics
    (sum, or bias-corrected EMA), roots (L̂ + εI)^(−1/4), (R̂ + εI)^(−1/4) refitted at steps 1, 1 + every,
    …; optionally grafted to Adam (β₁ = 0) with β₂ 0.999, ε 1e-10 (Distributed Shampoo's Adam
    grafting config)."""
    W = W0.copy()
    m, n = W.shape
    L, R, weight, v = np.zeros((m, m)), np.zeros((n, n)), 0.0, np.zeros_like(W)
    A, B = np.eye(m), np.eye(n)
    for t in range(1, steps + 1):
        G = grads_of(W, t)
        if beta2 == 1:
            L, R = L + G @ G.T, R + G.T @ G
        else:
            L, R = beta2 * L + (1 - beta2) * G @ G.T, beta2 * R + (1 - beta2) * G.T @ G
            weight = beta2 * weight + (1 - beta2)
        if (t - 1) % every == 0:
            Lh, Rh = (L, R) if beta2 == 1 else (L / weight, R / weight)
            A, B = _root(Lh + eps * np.eye(m), -0.25), _root(Rh + eps * np.eye(n), -0.25)
        D = A @ G @ B
        if graft is not None:
            v = 0.999 * v + 0.001 * G * G
            g = G / (np.sqrt(v / (1 - 0.999**t)) + 1e-10)
            D = D * (np.linalg.norm(g) / (np.linalg.norm(D) + 1e-16))
        W = W - lr * D
    return W


def _grads(W, t):
    """The gradient of a fixed quadratic-plus-noise loss at W, for step t (deterministic)."""
    rng = np.random.default_rng(t)
    X, Y = rng.standard_normal((7, W.shape[1])), rng.standard_normal((7, W.shape[0]))
    return 2 * (X @ W.T - Y).T @ X / 7


@pytest.mark.parametrize(
    ("beta2", "every", "root", "graft"),
    [(1.0, 1, "eigh", None), (0.9, 3, "eigh", None), (0.95, 2, "newton", None), (1.0, 2, "eigh", "adam")],
)
def test_matrix_step_equals_the_formula_written_out(beta2, every, root, graft):
    rng = np.random.default_rng(0)
    W0 = rng.standard_normal((4, 6))
    expected = _written_out(W0, _grads, 7, 0.05, beta2, 1e-3, every, graft)
    W = torch.nn.Parameter(torch.tensor(W0))
    opt = Shampoo([W], lr=0.05, beta2=beta2, epsilon=1e-3, update_every=every, root=root, grafting=graft)
    for t in range(1, 8):
        W.grad = torch.tensor(_grads(W.detach().numpy(), t))
        opt.step()
    tol = 1e-11 if root == "eigh" else 1e-9
    assert np.abs(W.detach().numpy() - expected).max() <= tol * np.abs(expected).max()


def test_momentum_is_heavy_ball_after_p():
    """momentum μ: torch.optim.SGD's buffer on the preconditioned direction (Distributed Shampoo's)."""
    rng = np.random.default_rng(1)
    W0 = rng.standard_normal((3, 5))
    W = torch.nn.Parameter(torch.tensor(W0))
    opt = Shampoo([W], lr=0.05, epsilon=1e-3, momentum=0.9)
    Wref, L, R, buf = W0.copy(), np.zeros((3, 3)), np.zeros((5, 5)), None
    for t in range(1, 5):
        G = _grads(W.detach().numpy(), t)
        W.grad = torch.tensor(G)
        opt.step()
        G = _grads(Wref, t)
        L, R = L + G @ G.T, R + G.T @ G
        D = _root(L + 1e-3 * np.eye(3), -0.25) @ G @ _root(R + 1e-3 * np.eye(5), -0.25)
        buf = D if buf is None else 0.9 * buf + D
        Wref = Wref - 0.05 * buf
    assert np.abs(W.detach().numpy() - Wref).max() <= 1e-11 * np.abs(Wref).max()


@pytest.mark.parametrize("exponent", [-0.25, -0.5, -1.0, -0.125])
def test_newton_root_equals_eigh(exponent, float64):
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(6, 9, generator=gen, dtype=F64)
    S = G @ G.mT
    p = round(-1 / exponent)
    assert_close([newton_inverse_root(S, p, 1e-3)], [psd_power(S, exponent, 1e-3)], 1e-10)
    scipy_root = torch.tensor(_root(S.numpy() + 1e-3 * np.eye(6), exponent))
    assert_close([psd_power(S, exponent, 1e-3)], [scipy_root], 1e-10)


def test_matrix_functions_say_nan_instead_of_a_wrong_answer(float64):
    S = torch.zeros(3, 3, dtype=F64)
    assert not torch.isfinite(psd_power(S, -0.5)).all()  # a zero eigenvalue without damping
    S[0, 0] = math.nan
    assert torch.isnan(psd_power(S, -0.5, 1.0)).all() and torch.isnan(newton_inverse_root(S, 2, 1.0)).all()
    slow = newton_inverse_root(torch.diag(torch.tensor([1.0, 1e-30], dtype=F64)), 4, max_iterations=3)
    assert torch.isnan(slow).all()
    with pytest.raises(ValueError, match="'p' must be an int >= 1"):
        newton_inverse_root(S, 0)


class _IdentityStatistics(BlockwiseObjective):
    """Statistics frozen at I: every part's sample is the identity (exponents −1/4)."""

    reads_cache = False
    gives_statistics = True
    gives_gradients = False

    def evaluate(self, params, closure, generator, **inputs):
        return Evaluation(run_closure(closure, params, "test"))

    def meta_grad(self, ctx):
        parts = simple_parts(ctx.phi)
        samples = tuple(
            torch.ones(p.shape[0], dtype=ctx.grad.dtype) if type(p).__name__ == "Diagonal"
            else torch.eye(p.shape[0], dtype=ctx.grad.dtype)
            for p in parts
        )
        return Statistics(samples, tuple(-0.25 for _ in parts), ctx.power)


@pytest.mark.parametrize(
    "structure",
    [families.kronecker(), families.kronecker_gram(), families.kronecker_gram("triangular")],
    ids=["kronecker", "kronecker_gram", "kronecker_gram_triangular"],
)
def test_statistics_frozen_at_identity_give_the_base_rule(structure):
    """With every statistic I and no damping (ε = 0; β < 1, read bias-corrected, is I too) P = I: the
    step is torch.optim.SGD's with momentum, to round-off."""
    ours, theirs = make_model("mlp"), make_model("mlp")
    opt = Preconditioned(
        ours.parameters(), 0.05, structure=structure, placement=EveryAxis(),
        objective=_IdentityStatistics(), fitter=ClosedForm(beta=0.5), base="momentum", momentum=0.9,
    )
    reference = torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9)
    run(ours, opt, "mlp", 5)
    run(theirs, reference, "mlp", 5)
    assert_close(clone_params(ours.parameters()), clone_params(theirs.parameters()), 1e-13)


@pytest.mark.parametrize(
    ("structure", "placement"),
    [
        (families.dense(), Flatten()),  # full-matrix AdaGrad: (Σ ggᵀ + εI)^(−1/2)
        (families.diagonal(), Flatten()),  # diagonal AdaGrad: g/√(Σ g² + ε)
        (families.dense_gram(), InputSide()),  # one-sided: (Σ GᵀG + εI)^(−1/2) on the input side, as MᵀM
        (families.scalar(), Flatten()),  # AdaGrad-norm: (Σ‖g‖²/n + ε)^(−1/2)
    ],
)
def test_closed_form_of_every_simple_structure_against_dense(structure, placement, float64):
    """GradientStatistics + ClosedForm on a 3×4 weight: the step is (S + εI)^(−1/2) applied in the
    placement's space, S the summed second moment of the placed gradient (computed here densely)."""
    W = torch.nn.Parameter(torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=F64))
    opt = Preconditioned(
        [W], 0.1, structure=structure, placement=placement, objective=GradientStatistics(),
        fitter=ClosedForm(epsilon=1e-3),
    )
    S = None
    for t in range(1, 5):
        G = torch.tensor(_grads(W.detach().numpy(), t))
        X = placement.view([G])
        n = X.shape[0]
        kind = type(structure.init(placement.dims([(3, 4)]), torch.empty((), dtype=F64), None)).__name__
        sample = {
            "Dense": X @ X.mT,
            "Diagonal": torch.diag((X * X).sum(1)),
            "Scalar": torch.eye(n, dtype=F64) * (X * X).sum() / n,
        }[kind]
        S = sample if S is None else S + sample
        P = torch.tensor(_root(S.numpy() + 1e-3 * np.eye(n), -0.5))
        expected = W.detach() - 0.1 * placement.unview(P @ X, [(3, 4)])[0]
        W.grad = G
        opt.step()
        assert_close([W.detach()], [expected], 1e-11)


@pytest.mark.parametrize(
    ("structure", "placement"),
    [(families.dense(), Flatten()), (families.diagonal(), Flatten()), (families.dense_gram(), Flatten())],
)
def test_fisher_statistics_equal_adagrads(structure, placement):
    """PSGD's Fisher criterion with λ = 0, solved in closed form, is full-matrix (or diagonal) AdaGrad
    where φ is not a Kronecker product and a block is one column (one pair (v, h) per step): the same
    parameters as GradientStatistics, bit for bit."""
    runs = []
    for objective in (GradientStatistics(), Fisher()):
        model = make_model("mlp")
        opt = Preconditioned(
            [model.fc1.weight], 0.05, structure=structure, placement=placement,
            objective=objective, fitter=ClosedForm(epsilon=1e-4), base="momentum", momentum=0.9,
        )
        run(model, opt, "mlp", 4)
        runs.append(clone_params(model.parameters()))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("placement", [InputSide(), OutputSide()])
def test_fisher_closed_form_is_the_criterions_minimiser_for_a_block_of_k_columns(placement, float64):
    """A block placed as k columns is k pairs (v, h) of the criterion Σ hᵀPh + vᵀP⁻¹v, minimised by
    P(Σhhᵀ)P = Σvvᵀ = kI: with β < 1 (bias-corrected, so one step reads s itself) Fisher(λ) + ClosedForm
    sets P = (Σ_j g_j g_jᵀ/k + λ²I)^(−1/2) — √k times AdaGrad's (Σ g_j g_jᵀ + kλ²I)^(−1/2) — and the
    criterion's gradient (precondalg's `criterion`, by autograd) vanishes there in expectation over v."""
    W = torch.nn.Parameter(torch.zeros(4, 6, dtype=F64))
    opt = Preconditioned(
        [W], 0.0, structure=families.dense(), placement=placement, objective=Fisher(damping=0.5),
        fitter=ClosedForm(beta=0.5),
    )
    W.grad = torch.randn(4, 6, generator=torch.Generator().manual_seed(3), dtype=F64)
    opt.step()
    ((_, P),) = opt.preconditioners()
    X = placement.view([W.grad])  # (d, k): the k columns the block's P acts on
    d, k = X.shape
    expected = _root((X @ X.mT / k).numpy() + 0.25 * np.eye(d), -0.5)
    assert_close([P.to_dense()], [torch.tensor(expected)], 1e-12)
    # E_v over the k columns of ∂/∂P [Σ (g + λv)ᵀP(g + λv) + vᵀP⁻¹v] = Σ ggᵀ + kλ²I − k P⁻² = 0.
    Pd = torch.tensor(expected)
    residual = X @ X.mT + k * 0.25 * torch.eye(d, dtype=F64) - k * torch.linalg.inv(Pd @ Pd)
    assert residual.abs().max() < 1e-10


def test_fisher_damping_is_integrated_out(float64):
    """Fisher(λ) + ClosedForm: E_v[hhᵀ] = ggᵀ + λ²I per step, whatever v was drawn: after T steps on a
    flattened 3×4 weight P = (Σ ggᵀ + Tλ²I)^(−1/2), the same for two seeds (to round-off)."""
    finals = []
    for seed in (0, 1):
        W = torch.nn.Parameter(torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=F64))
        opt = Preconditioned(
            [W], 0.0, structure=families.dense(), placement=Flatten(), objective=Fisher(damping=0.3),
            fitter=ClosedForm(), seed=seed,
        )
        S = 4 * 0.09 * torch.eye(12, dtype=F64)
        for t in range(1, 5):
            W.grad = torch.tensor(_grads(W.detach().numpy(), t))
            S = S + W.grad.reshape(-1, 1) @ W.grad.reshape(1, -1)
            opt.step()
        ((_, P),) = opt.preconditioners()
        assert_close([P.to_dense()], [torch.tensor(_root(S.numpy(), -0.5))], 1e-11)
        finals.append(P.to_dense())
    assert_close(finals[:1], finals[1:], 1e-12)  # g = h − λv: v cancels to round-off (then through eigh)


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 4)])
@pytest.mark.parametrize("family", ["kronecker", "kronecker_gram", "kronecker_gram_triangular"])
def test_fisher_closed_form_is_exact_for_a_kronecker_covariance(shape, family, float64):
    """The criterion's optimum P = C^(−1/2) (P C P = I) for C = A₁ ⊗ ⋯ ⊗ A_K exactly: gradients
    G = (A₁^(1/2) ⊗ ⋯) vec(E_j) over every basis tensor E_j sum to Σ vec(G)vec(G)ᵀ = C, and the
    closed-form fit of the Kronecker structure gives ⊗ Aᵢ^(−1/2) (with Shampoo's −1/(2K) roots it would
    give a multiple of C^(−1/4))."""
    structure = {
        "kronecker": families.kronecker(),
        "kronecker_gram": families.kronecker_gram(),
        "kronecker_gram_triangular": families.kronecker_gram("triangular"),
    }[family]
    gen = torch.Generator().manual_seed(3)
    factors = []
    for d in shape:
        M = torch.randn(d, d, generator=gen, dtype=F64)
        factors.append(M @ M.mT + 0.5 * torch.eye(d, dtype=F64))
    roots = [torch.tensor(_root(A.numpy(), 0.5)) for A in factors]
    W = torch.nn.Parameter(torch.zeros(shape, dtype=F64))
    opt = Preconditioned(
        [W], 0.0, structure=structure, placement=EveryAxis(), objective=Fisher(), fitter=ClosedForm()
    )
    with pytest.warns(SkippedStepWarning, match="rolled back"):
        _basis_steps(opt, W, shape, roots)
    expected = functools.reduce(torch.kron, [torch.tensor(_root(A.numpy(), -0.5)) for A in factors])
    ((_, P),) = opt.preconditioners()
    assert_close([P.to_dense()], [expected], 1e-10)
    # The first refits, from singular sums without damping, kept φ (counted) while the sums still grew.
    assert opt.skip_counts()[0]["meta_skipped"] >= 1 and opt.skip_counts()[0]["skipped"] == 0


def _basis_steps(opt, W, shape, roots):
    """One step per basis tensor E_j with the gradient (⊗ roots) vec(E_j), lr 0."""
    for j in range(math.prod(shape)):
        E = torch.zeros(math.prod(shape), dtype=F64)
        E[j] = 1.0
        g = E.reshape(shape)
        for i, R in enumerate(roots):  # factor i acts on axis i
            g = torch.movedim(torch.tensordot(R, g, dims=([1], [i])), 0, i)
        W.grad = g
        opt.step()


def test_same_structure_fitted_by_lie_group_or_closed_form():
    """The issue's mixed row: kronecker_gram fitted by Fisher + LieGroup (PSGD) and by Fisher +
    ClosedForm from the same call; the closed form's P is the criterion's Kronecker optimum
    tr(C)^(1/2)·(L + εI)^(−1/2) ⊗ (R + εI)^(−1/2) with L, R the summed mode Grams."""
    from precondalg.fitters import LieGroup

    for fitter in (LieGroup(lr=0.1), ClosedForm(epsilon=1e-4)):
        model = make_model("mlp")
        opt = Preconditioned(
            model.parameters(), 0.05, structure=families.kronecker_gram(), placement=EveryAxis(),
            objective=Fisher(), fitter=fitter,
        )
        W = model.fc1.weight
        L = R = 0
        for t in range(3):
            run(model, opt, "mlp", 1, start=t)
            G = W.grad.detach()
            L, R = L + G @ G.mT, R + G.mT @ G
        P = dict((id(ps[0]), P) for ps, P in opt.preconditioners())[id(W)]
        if isinstance(fitter, ClosedForm):  # C^(−1/2) for C = L ⊗ R / tr(C), tr(C) = √(tr L tr R)
            trace = math.sqrt(float(L.trace() * R.trace()))
            expected = math.sqrt(trace) * torch.kron(
                torch.tensor(_root(L.numpy() + 1e-4 * np.eye(4), -0.5)),
                torch.tensor(_root(R.numpy() + 1e-4 * np.eye(5), -0.5)),
            )
            assert_close([P.to_dense()], [expected], 1e-11)
        else:
            assert not torch.allclose(P.to_dense(), torch.eye(20, dtype=F64))


def test_graft_sgd_keeps_the_gradient_norm():
    W = torch.nn.Parameter(torch.randn(4, 3, dtype=F64))
    opt = Shampoo([W], lr=1.0, epsilon=1e-6, grafting="sgd")
    W.grad = torch.randn(4, 3, dtype=F64)
    before = W.detach().clone()
    opt.step()
    assert math.isclose(float((before - W.detach()).norm()), float(W.grad.norm()), rel_tol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        (dict(beta2=0.0), ValueError, "beta"),
        (dict(beta2=1.5), ValueError, "beta"),
        (dict(epsilon=-1.0), ValueError, "epsilon"),
        (dict(update_every=0), ValueError, "update_every"),
        (dict(update_every=2.5), TypeError, "update_every"),
        (dict(root="svd"), ValueError, "root"),
        (dict(grafting="lion"), ValueError, "grafting"),
        (dict(grafting=0.5), TypeError, "grafting"),
        (dict(momentum=1.0), ValueError, "momentum"),
        (dict(weight_decay=-0.1), ValueError, "weight_decay"),
    ],
)
def test_bad_hyperparameters_are_refused(kwargs, error, words):
    with pytest.raises(error, match=words):
        Shampoo(torch.nn.Linear(3, 2).parameters(), 0.1, **kwargs)


def test_a_param_group_cannot_choose_shampoo_arguments():
    net = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="cannot choose 'beta2'"):
        Shampoo([{"params": net.parameters(), "beta2": 0.9}], 0.1)


def test_param_groups_keep_their_learning_rates():
    a, b = make_model("mlp"), make_model("mlp")
    groups = [{"params": a.fc1.parameters(), "lr": 0.0}, {"params": a.fc2.parameters()}]
    opt = Shampoo(groups, 0.1, epsilon=1e-3)
    ref = Shampoo(b.fc2.parameters(), 0.1, epsilon=1e-3)
    start = clone_params(a.fc1.parameters())
    for t in range(3):
        run(a, opt, "mlp", 1, start=t)
        run(b, ref, "mlp", 1, start=t)
    assert_close(clone_params(a.fc1.parameters()), start, 0.0)
    assert_close(clone_params(a.fc2.parameters()), clone_params(b.fc2.parameters()), 0.0)


def test_closed_form_refusals():
    net = torch.nn.Linear(3, 2)
    from precondalg.objectives import Hypergradient

    with pytest.raises(ValueError, match="does not give"):
        Preconditioned(net.parameters(), structure=families.kronecker(), placement=TwoSided(),
                       objective=Hypergradient(), fitter=ClosedForm())
    with pytest.raises(ValueError, match="gives statistics"):
        Preconditioned(net.parameters(), structure=families.kronecker(), placement=TwoSided(),
                       objective=GradientStatistics())
    with pytest.raises(ValueError, match="sets φ in closed form"):
        Preconditioned([net.weight], structure=families.low_rank_gram(1), placement=InputSide(),
                       objective=GradientStatistics(), fitter=ClosedForm())
    with pytest.raises(TypeError, match="Graft"):
        Preconditioned(net.parameters(), structure=families.kronecker(), placement=TwoSided(), graft="adam")
    with pytest.raises(ValueError, match="'beta2' is read by"):
        Graft("sgd", beta2=0.9)
