"""Objectives and the Lie-group fitter: closed forms against autograd, HVPs against the Hessian,
the exact unroll against autograd, checkpoints of the random draws, and bad input."""

import copy
import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad

import precondalg as pa
from precondalg.families import Family, dense_gram
from precondalg.fitters import LieGroup, TorchOptimizer
from precondalg.objectives import (
    Fisher,
    Hypergradient,
    Newton,
    Proximal,
    closed_form_relative_gradient,
    criterion,
    kl_divergence,
    squared_error,
)
from precondalg.optim import Preconditioned
from precondalg.placement import Concatenated, InputSide

F64 = torch.float64


def _own(opt: Preconditioned) -> dict:
    """The optimizer's own entries of its state dict (generators, steps, configuration)."""
    return opt.state_dict()["param_groups"][0]["precondalg"]


def _group(kind: str, gen: torch.Generator) -> pa.Structure:
    """A well-conditioned group element with a positive diagonal."""

    def eye_plus(n: int) -> torch.Tensor:
        return 2 * torch.eye(n, dtype=F64) + 0.3 * torch.randn(n, n, generator=gen, dtype=F64)

    def positive(n: int) -> torch.Tensor:
        return 1 + torch.rand(n, generator=gen, dtype=F64)

    return {
        "triangular": lambda: pa.Triangular(eye_plus(4)),
        "dense": lambda: pa.Dense(eye_plus(3)),
        "diagonal": lambda: pa.Diagonal(positive(5)),
        "scalar": lambda: pa.Scalar(positive(1)[0], 5),
        "normalization": lambda: pa.Normalization(positive(4), torch.randn(3, generator=gen, dtype=F64)),
        "kronecker": lambda: pa.Kronecker(
            pa.Triangular(eye_plus(2)),
            pa.Diagonal(positive(3)),
            pa.Normalization(positive(2), torch.ones(1, dtype=F64)),
        ),
    }[kind]()


KINDS = ["triangular", "dense", "diagonal", "scalar", "normalization", "kronecker"]


def _c(Q: pa.Structure, h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PSGD's criterion at P = QᵀQ."""
    return criterion(pa.gram(Q), h, v)


@settings(max_examples=15, deadline=None)
@given(kind=st.sampled_from(KINDS), seed=st.integers(0, 2**31 - 1), k=st.integers(1, 3))
def test_closed_form_relative_gradient_equals_autograd(kind, seed, k):
    gen = torch.Generator().manual_seed(seed)
    Q = _group(kind, gen)
    n = Q.shape[0]
    h, v = torch.randn(n, k, generator=gen, dtype=F64), torch.randn(n, k, generator=gen, dtype=F64)
    euclidean = grad(_c)(Q, h, v)
    generic = pa.relative_gradient(Q, euclidean).to_dense()
    closed = closed_form_relative_gradient(Q, h, v).to_dense()
    assert (generic - closed).abs().max() <= 1e-11 * closed.abs().max()


def test_relative_gradient_is_the_derivative_along_the_algebra():
    """⟨R, E⟩_F equals d/dt c((I + tE)Q) at t = 0, for random algebra elements E (central differences)."""
    gen = torch.Generator().manual_seed(0)
    for kind in ["triangular", "diagonal", "scalar", "normalization", "dense"]:
        Q = _group(kind, gen)
        n = Q.shape[0]
        h, v = torch.randn(n, 2, generator=gen, dtype=F64), torch.randn(n, 2, generator=gen, dtype=F64)
        R = pa.relative_gradient(Q, grad(_c)(Q, h, v))
        E = pa.lie_project(Q, torch.randn(n, n, generator=gen, dtype=F64))
        t = 1e-6
        fd = (_c(pa.lie_step(Q, E, -t), h, v) - _c(pa.lie_step(Q, E, t), h, v)) / (2 * t)
        assert abs(float((R.to_dense() * E.to_dense()).sum() - fd)) <= 1e-6 * abs(float(fd))


def test_relative_gradient_rejects_a_gradient_of_another_type():
    Q = pa.Triangular(torch.eye(3, dtype=F64))
    with pytest.raises(TypeError, match="relative_gradient: G must be a Triangular"):
        pa.relative_gradient(Q, pa.Dense(torch.eye(3, dtype=F64)))


def _quartic(x: torch.Tensor) -> torch.Tensor:
    return (x**4).sum() / 4 + (x[:-1] * x[1:]).sum() + torch.sin(x).sum()


@pytest.mark.parametrize("hvp", ["autograd", "finite_difference"])
def test_newton_hessian_vector_products(hvp):
    """h = Hv against the explicit Hessian (exact for autograd, 1e-6 relative for finite differences)."""
    x = torch.nn.Parameter(torch.tensor([0.3, -1.2, 0.7, 2.0], dtype=F64))
    gen = torch.Generator().manual_seed(3)
    evaluation = Newton(hvp=hvp).evaluate([x], lambda: _quartic(x), gen)
    v, h = evaluation.of("v", [x])[0], evaluation.of("h", [x])[0]
    H = torch.autograd.functional.hessian(_quartic, x.detach())
    tol = 1e-12 if hvp == "autograd" else 1e-6
    assert (h - H @ v).abs().max() <= tol * (H @ v).abs().max()
    assert torch.equal(x.grad, torch.func.grad(_quartic)(x.detach()))
    assert torch.equal(v, torch.randn(4, generator=torch.Generator().manual_seed(3), dtype=F64))


def test_newton_torch_func_hvp_is_forward_over_reverse_of_the_functional_loss():
    """h by torch.func (functional_call, jvp of grad) equals the explicit Hessian of the flat loss."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).to(F64)
    x, y = torch.randn(10, 3, dtype=F64), torch.randn(10, 2, dtype=F64)
    params = list(model.parameters())
    sizes = [p.numel() for p in params]

    def flat_loss(theta: torch.Tensor) -> torch.Tensor:
        chunks = dict(zip(dict(model.named_parameters()), torch.split(theta, sizes)))
        named = {name: c.reshape(p.shape) for (name, p), c in zip(model.named_parameters(), chunks.values())}
        return squared_error(torch.func.functional_call(model, named, (x,)), y)

    objective = Newton(hvp="torch.func", model=model, loss_fn=squared_error)
    evaluation = objective.evaluate(params, None, torch.Generator().manual_seed(2), batch=(x, y))
    v = torch.cat([t.reshape(-1) for t in evaluation.of("v", params)])
    h = torch.cat([t.reshape(-1) for t in evaluation.of("h", params)])
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    H = torch.autograd.functional.hessian(flat_loss, theta)
    assert (h - H @ v).abs().max() <= 1e-12 * (H @ v).abs().max()
    g = torch.cat([p.grad.reshape(-1) for p in params])
    assert (g - torch.func.grad(flat_loss)(theta)).abs().max() <= 1e-15
    assert torch.equal(evaluation.loss, flat_loss(theta))
    with pytest.raises(ValueError, match="hvp='torch.func' needs 'model' and 'loss_fn'"):
        Newton(hvp="torch.func")
    with pytest.raises(TypeError, match="needs batch=\\(inputs, targets\\) and no closure"):
        objective.evaluate(params, lambda: 0.0, torch.Generator(), batch=(x, y))


def test_fisher_pairs_and_damping():
    x = torch.nn.Parameter(torch.tensor([1.0, 2.0], dtype=F64))
    x.grad = torch.tensor([0.5, -0.25], dtype=F64)
    evaluation = Fisher(damping=0.1).evaluate([x], None, torch.Generator().manual_seed(1))
    v, h = evaluation.of("v", [x])[0], evaluation.of("h", [x])[0]
    assert torch.equal(h, x.grad + 0.1 * v)


def test_objective_input_errors():
    x = torch.nn.Parameter(torch.zeros(2, dtype=F64))
    with pytest.raises(ValueError, match=r"Newton\(hvp='autograd'\): step\(\) needs a closure"):
        Newton().evaluate([x], None, torch.Generator())
    with pytest.raises(ValueError, match="Newton: 'hvp'"):
        Newton(hvp="exact")
    with pytest.raises(ValueError, match="Fisher: 'damping' must be a real number >= 0"):
        Fisher(damping=-1.0)
    with pytest.raises(ValueError, match="Hypergradient: 'mode'"):
        Hypergradient(mode="two-step")
    with pytest.raises(ValueError, match="mode='unroll'\\): step\\(\\) needs a closure"):
        Hypergradient(mode="unroll").evaluate([x], None, torch.Generator())
    with pytest.raises(TypeError, match="Hypergradient: step\\(\\) takes no keyword inputs"):
        Hypergradient().evaluate([x], None, torch.Generator(), batch=1)
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="Proximal: 'fsd'"):
        Proximal(model, squared_error, fsd="l1")
    with pytest.raises(ValueError, match="Proximal: 'lam_wsd' must be a real number >= 0"):
        Proximal(model, squared_error, lam_wsd=-1.0)
    with pytest.raises(ValueError, match="λ_FSD > 0 needs step"):
        Proximal(model, squared_error, lam_fsd=1.0).evaluate([x], None, torch.Generator(), batch=(1, 2))
    with pytest.raises(TypeError, match="Proximal: step\\(\\) takes 'batch' and 'fsd_batch'"):
        Proximal(model, squared_error).evaluate([x], None, torch.Generator(), batches=1)


def test_divergences():
    new, old = torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64)
    p, q = old.softmax(-1), new.softmax(-1)
    assert torch.allclose(kl_divergence(new, old), (p * (p.log() - q.log())).sum(-1).mean(), rtol=1e-12)
    assert torch.allclose(squared_error(new, old), 0.5 * ((new - old) ** 2).sum(-1).mean(), rtol=1e-12)
    assert kl_divergence(old, old) == 0


def test_hypergradient_unroll_is_the_exact_one_step_derivative():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3, bias=False).double()
    x, y = torch.randn(10, 4, dtype=F64), torch.randn(10, 3, dtype=F64)

    def loss_of(W):
        return 0.5 * ((x @ W.T - y) ** 2).sum(-1).mean()

    def closure():
        model.zero_grad()
        loss = loss_of(model.weight)
        loss.backward()
        return loss

    rho, lr = 0.1, 0.3
    opt = Preconditioned(
        model.parameters(),
        lr=lr,
        structure=dense_gram(),
        placement=InputSide(),
        objective=Hypergradient(mode="unroll"),
        fitter=TorchOptimizer(torch.optim.SGD, lr=rho),
    )
    W0 = model.weight.detach().clone()
    opt.step(closure)
    M1 = opt.preconditioners()[0][1].Q.A
    M = torch.eye(4, dtype=F64, requires_grad=True)
    G = torch.func.grad(loss_of)(W0)
    (expected,) = torch.autograd.grad(loss_of(W0 - lr * G @ (M.T @ M)), M)
    assert (M1 - (torch.eye(4, dtype=F64) - rho * expected)).abs().max() <= 1e-15
    assert (model.weight.detach() - (W0 - lr * G @ (M1.T @ M1))).abs().max() <= 1e-15
    assert torch.equal(model.weight.grad, G)


def _triangular_family(scale: float) -> Family:
    return Family(
        init=lambda dims, like, gen: pa.Triangular(scale * torch.eye(dims[0], dtype=like.dtype)), form=pa.gram
    )


def _rosenbrock_run(steps: int, objective, x0=(-1.0, 1.0)):
    x = torch.nn.Parameter(torch.tensor(x0, dtype=F64))
    opt = Preconditioned(
        [x],
        lr=0.5,
        structure=_triangular_family(0.1),
        placement=Concatenated(),
        objective=objective,
        fitter=LieGroup(lr=0.2),
        seed=5,
    )

    def f():
        return 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2

    for _ in range(steps):
        opt.step(f)
    return x, opt, f


def test_psgd_newton_solves_rosenbrock_with_the_papers_settings():
    """PSGD §4.2 / hello_psgd.py: triangular Q₀ = 0.1I, μ₀ = 0.2, μ = 0.5, Newton type, 300 steps."""
    x, opt, f = _rosenbrock_run(300, Newton())
    assert (x.detach() - torch.ones(2, dtype=F64)).abs().max() < 1e-8
    (P,) = [P for _, P in opt.preconditioners()]
    assert isinstance(P, pa.Gram) and isinstance(P.Q, pa.Triangular)


def test_lie_fitter_step_is_the_normalised_multiplicative_step():
    gen = torch.Generator().manual_seed(4)
    for kind in KINDS:
        Q = _group(kind, gen)
        leaves, spec = torch.utils._pytree.tree_flatten(Q)
        leaves = [leaf.clone() for leaf in leaves]
        n = Q.shape[0]
        h, v = torch.randn(n, 2, generator=gen, dtype=F64), torch.randn(n, 2, generator=gen, dtype=F64)
        G = grad(_c)(Q, h, v)
        LieGroup(lr=0.3).build(leaves, spec).step(torch.utils._pytree.tree_leaves(G))
        new = torch.utils._pytree.tree_unflatten(leaves, spec)
        R = pa.relative_gradient(Q, G)
        terms = R.terms if isinstance(R, pa.KroneckerSum) else (R,)
        normalised = [t / pa.max_abs(t) for t in terms]
        E = pa.KroneckerSum(*normalised) if isinstance(R, pa.KroneckerSum) else normalised[0]
        expected = pa.lie_step(Q, E, 0.3)
        assert type(new) is type(Q)
        assert (new.to_dense() - expected.to_dense()).abs().max() <= 1e-14 * expected.to_dense().abs().max()


def test_lie_fitter_lipschitz_normaliser():
    Q = pa.Triangular(torch.eye(3, dtype=F64) * 2)
    leaves, spec = torch.utils._pytree.tree_flatten(Q)
    leaves = [leaf.clone() for leaf in leaves]
    fit = LieGroup(lr=0.5, normalizer="lipschitz", beta_lipschitz=0.9).build(leaves, spec)
    G = pa.Triangular(torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 0.5], [0.0, 0.0, 3.0]], dtype=F64))
    R = pa.relative_gradient(Q, G)
    ell = torch.linalg.matrix_norm(R.to_dense(), ord=2)
    fit.step(torch.utils._pytree.tree_leaves(G))
    assert torch.equal(fit.state_dict()["lipschitz"], ell.reshape(1))  # max(0.9·0 + 0.1ℓ, ℓ) = ℓ
    expected = pa.lie_step(Q, R / ell, 0.5)
    assert torch.allclose(leaves[0], expected.R, rtol=1e-14, atol=0)
    # A second step with a smaller relative gradient: the running estimate max(βℓ₁ + (1 − β)ℓ₂, ℓ₂).
    Q1 = pa.Triangular(leaves[0].clone())
    R2 = pa.relative_gradient(Q1, pa.scale(G, 0.1))
    ell2 = torch.linalg.matrix_norm(R2.to_dense(), ord=2)
    running = torch.maximum(0.9 * ell + 0.1 * ell2, ell2)
    assert ell2 < ell and running > ell2
    fit.step(torch.utils._pytree.tree_leaves(pa.scale(G, 0.1)))
    torch.testing.assert_close(fit.state_dict()["lipschitz"], running.reshape(1), rtol=1e-14, atol=0)
    torch.testing.assert_close(leaves[0], pa.lie_step(Q1, R2 / running, 0.5).R, rtol=1e-14, atol=0)


MAX_ABS_LR = r"LieGroup: 'lr' must be a real number >= 0 and < 1"


def test_lie_fitter_errors():
    with pytest.raises(ValueError, match=MAX_ABS_LR):
        LieGroup(lr=-0.1)
    with pytest.raises(ValueError, match="LieGroup: 'normalizer'"):
        LieGroup(normalizer="frobenius")
    with pytest.raises(ValueError, match="LieGroup: 'beta_lipschitz'"):
        LieGroup(beta_lipschitz=1.0)
    with pytest.raises(ValueError, match="LieGroup: 'diagonal' must be one of"):
        LieGroup(diagonal="sign")


@pytest.mark.parametrize("objective", [Newton(), Newton(hvp="finite_difference"), Fisher(damping=0.1)])
def test_psgd_checkpoint_resumes_bit_for_bit(objective):
    """The random draws of v come from the optimizer's generator, whose state travels in the checkpoint."""
    _, opt, _ = _rosenbrock_run(0, objective)
    x_ref, opt_ref, f_ref = _rosenbrock_run(5, objective)
    buffer = io.BytesIO()
    torch.save(opt_ref.state_dict(), buffer)
    snapshot = x_ref.detach().clone()
    closure_ref = f_ref if isinstance(objective, Newton) else _backward(f_ref, x_ref)
    for _ in range(5):
        opt_ref.step(closure_ref)
    x2, opt2, f2 = _rosenbrock_run(0, objective)
    with torch.no_grad():
        x2.copy_(snapshot)
    buffer.seek(0)
    opt2.load_state_dict(torch.load(buffer, weights_only=True))
    closure2 = f2 if isinstance(objective, Newton) else _backward(f2, x2)
    for _ in range(5):
        opt2.step(closure2)
    assert torch.equal(x2, x_ref)
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            opt2.state[x2]["preconditioner"]["phi"], opt_ref.state[x_ref]["preconditioner"]["phi"]
        )
    )
    assert _own(copy.deepcopy(opt2))["generator"].equal(_own(opt2)["generator"])


def _backward(f, x):
    def closure():
        x.grad = None
        loss = f()
        loss.backward()
        return loss

    return closure
