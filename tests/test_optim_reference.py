"""Reference equivalence (QUALITY.md §2): HD against Baydin et al.'s published SGD-HD and Adam-HD update
equations (METHODS.md §1.9), and FOP's hypergradient step on M against its closed form (§1.2, §1.6).

The references are written here, inline, in float64, on the flattened parameter vector θ.
"""

from __future__ import annotations

import math

import pytest
import torch
from optim_helpers import assert_close, backward_at, clone_params, make_model
from torch import nn

from precondalg import families
from precondalg.fitters import TorchOptimizer
from precondalg.optim import HD, Preconditioned
from precondalg.placement import InputSide

STEPS = 15
LR = 0.05


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def _write(model: nn.Module, theta: torch.Tensor) -> None:
    with torch.no_grad():
        offset = 0
        for p in model.parameters():
            p.copy_(theta[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


def sgdhd_reference(
    kind: str, beta: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0
) -> tuple[list[torch.Tensor], float]:
    """Baydin's SGDHD (hypergrad/sgd_hd.py): one global α over the flattened parameters, updated before
    the step with h = ⟨g_t, d_{t−1}⟩, d the last update direction.  Returns (final params, final α)."""
    model = make_model(kind)
    alpha = LR
    d_prev = buf = None
    for t in range(STEPS):
        backward_at(model, kind, t)
        theta = _flat(model.parameters())
        g = _flat(p.grad for p in model.parameters()) + weight_decay * theta
        if d_prev is not None:
            alpha = alpha + beta * torch.dot(g, d_prev).item()
        if momentum:
            buf = g.clone() if buf is None else momentum * buf + g
            d = g + momentum * buf if nesterov else buf
        else:
            d = g
        d_prev = d
        _write(model, theta - alpha * d)
    return clone_params(model.parameters()), alpha


def adamhd_reference(
    kind: str,
    beta: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    in_turn: bool = False,
) -> tuple[list[torch.Tensor], float]:
    """Baydin's AdamHD: α ← α + β⟨g_t, d_{t−1}⟩ for t > 1, then the Adam step θ ← θ − α d_t.

    ε is placed as torch.optim.Adam places it, outside the bias-corrected root:
    d_t = (m_t/(1−β₁ᵗ)) / (√v_t/√(1−β₂ᵗ) + ε); Baydin's code has √(1−β₂ᵗ)/(1−β₁ᵗ)·m_t/(√v_t + ε),
    ε inside, a difference of order ε that `HD` documents.  With ``in_turn`` the update follows Baydin's
    code ordering — α updated with each parameter tensor's h in turn, just before that tensor's step —
    instead of the paper's single h over the whole θ.
    """
    model = make_model(kind)
    b1, b2 = betas
    alpha = LR
    params = list(model.parameters())
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    d_prev = [torch.zeros_like(p) for p in params]
    for t in range(1, STEPS + 1):
        backward_at(model, kind, t - 1)
        grads = [p.grad.detach().clone() for p in params]
        if t > 1 and not in_turn:
            alpha = alpha + beta * sum(
                torch.dot(g.reshape(-1), d.reshape(-1)).item() for g, d in zip(grads, d_prev)
            )
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grads)):
                if t > 1 and in_turn:
                    alpha = alpha + beta * torch.dot(g.reshape(-1), d_prev[i].reshape(-1)).item()
                m[i] = b1 * m[i] + (1 - b1) * g
                v[i] = b2 * v[i] + (1 - b2) * g * g
                d = (m[i] / (1 - b1**t)) / (v[i].sqrt() / math.sqrt(1 - b2**t) + eps)
                d_prev[i] = d
                p.sub_(alpha * d)
    return clone_params(params), alpha


def _hd_run(kind: str, beta: float, base: str, **kwargs) -> tuple[list[torch.Tensor], float]:
    model = make_model(kind)
    opt = HD(model.parameters(), LR, beta, "global", base, **kwargs)
    for t in range(STEPS):
        backward_at(model, kind, t)
        opt.step()
    ((_, P),) = opt.preconditioners()
    return clone_params(model.parameters()), P.alpha.item()


@pytest.mark.parametrize(
    ("base", "kwargs"),
    [
        ("sgd", {}),
        ("sgd", {"weight_decay": 0.1}),
        ("momentum", {"momentum": 0.9}),
        ("momentum", {"momentum": 0.5, "nesterov": True, "weight_decay": 0.05}),
    ],
)
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_hd_is_sgdhd(kind, base, kwargs):
    beta = 1e-2
    want, alpha_want = sgdhd_reference(kind, beta, **kwargs)
    got, alpha_got = _hd_run(kind, beta, base, **kwargs)
    assert abs(alpha_want - LR) > 1e-4, "α barely moved: the comparison would not test the hypergradient"
    assert abs(alpha_got - alpha_want) <= 1e-13 * abs(alpha_want)
    assert_close(want, got, 1e-12)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_hd_is_adamhd(kind):
    beta, betas, eps = 1e-3, (0.8, 0.99), 1e-6
    want, alpha_want = adamhd_reference(kind, beta, betas, eps)
    got, alpha_got = _hd_run(kind, beta, "adam", betas=betas, eps=eps)
    assert abs(alpha_want - LR) > 1e-4
    assert abs(alpha_got - alpha_want) <= 1e-13 * abs(alpha_want)
    assert_close(want, got, 1e-12)


def test_hd_is_adamhd_code_ordering_for_a_single_tensor():
    """With one parameter tensor, Baydin's per-tensor-in-turn code ordering and the paper's equation
    coincide, and HD equals both (with several tensors they differ: `HD` follows the equation)."""
    beta = 1e-3
    want, alpha_want = adamhd_reference("single", beta, in_turn=True)
    got, alpha_got = _hd_run("single", beta, "adam")
    assert abs(alpha_want - LR) > 1e-5
    assert abs(alpha_got - alpha_want) <= 1e-13 * abs(alpha_want)
    assert_close(want, got, 1e-12)


# ----------------------------------------------------------------------------------------------
# FOP: M ← M − ρ∇_M with ∇_M = −α M(G_{t−1}ᵀG_t + G_tᵀG_{t−1}) (PyTorch layout, METHODS.md §1.2)
# ----------------------------------------------------------------------------------------------
def _grads(k: int, shape: tuple[int, int] = (3, 4)) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(k)]


def _fop_sgd(W: torch.Tensor, alpha: float, rho: float, **kwargs) -> Preconditioned:
    return Preconditioned(
        [W],
        alpha,
        structure=families.dense_gram(),
        placement=InputSide(),
        fitter=TorchOptimizer(torch.optim.SGD, lr=rho),
        **kwargs,
    )


def _M(opt: Preconditioned, W: torch.Tensor) -> torch.Tensor:
    (M,) = opt.state[W]["preconditioner"]["phi"]
    return M.clone()


def _step(opt: Preconditioned, W: torch.Tensor, G: torch.Tensor) -> None:
    W.grad = G.clone()
    opt.step()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": "sgd"},
        {"base": "momentum", "momentum": 0.9},
        {"base": "momentum", "momentum": 0.5, "nesterov": True},
    ],
    ids=["sgd", "momentum", "nesterov"],
)
def test_fop_hypergradient_step_on_M(kwargs):
    """M_t = M_{t−1} + ρα M_{t−1}(G_{t−1}ᵀG_t + G_tᵀG_{t−1}) with the RAW previous gradient G_{t−1}, also
    under momentum (FOP Eqs. 6–8, THEORY.md FOP-7), from M₀ = I and then from a non-identity M."""
    alpha, rho = 0.1, 0.3
    G = _grads(4)
    W = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    opt = _fop_sgd(W, alpha, rho, **kwargs)
    M = torch.eye(4, dtype=torch.float64)
    _step(opt, W, G[0])
    assert torch.equal(_M(opt, W), M), "the first step has no previous gradient: M must stay I"
    for t in (1, 2, 3):
        M = M + rho * alpha * M @ (G[t - 1].T @ G[t] + G[t].T @ G[t - 1])
        _step(opt, W, G[t])
        torch.testing.assert_close(_M(opt, W), M, rtol=1e-14, atol=1e-14)
    assert (M - torch.eye(4, dtype=torch.float64)).abs().max() > 0.1


def test_fop_step_uses_the_fitted_M():
    """The documented order (preconditioned.py): fit φ with (G_{t−1}, G_t), then W ← W − α G_t MᵀM with the
    new M."""
    alpha, rho = 0.1, 0.3
    G = _grads(3)
    W = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    opt = _fop_sgd(W, alpha, rho)
    for t in range(3):
        before = W.detach().clone()
        _step(opt, W, G[t])
        M = _M(opt, W)
        torch.testing.assert_close(W.detach(), before - alpha * G[t] @ (M.T @ M), rtol=1e-14, atol=1e-14)


# The single-tensor model used by the AdamHD code-ordering test.
class _Single(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(x))


@pytest.fixture(autouse=True)
def _register_single(monkeypatch):
    import optim_helpers

    monkeypatch.setitem(optim_helpers.MODELS, "single", _Single)
    monkeypatch.setitem(optim_helpers.INPUT_SHAPES, "single", (5,))


_GROUPS = {
    "momentum": [
        {"momentum": 0.9, "dampening": 0.0, "nesterov": False},
        {"momentum": 0.9, "dampening": 0.3, "nesterov": False},
        {"momentum": 0.8, "dampening": 0.0, "nesterov": True},
    ],
    "ema": [{"momentum": 0.9}],
    "adam": [{"betas": (0.9, 0.999), "eps": 1e-8}, {"betas": (0.5, 0.9), "eps": 1e-3}],
    "rmsprop": [{"alpha": 0.99, "eps": 1e-8}],
    "adagrad": [{"eps": 1e-10}],
    "sgd": [{}],
}


@pytest.mark.parametrize("name", sorted(_GROUPS))
def test_each_rules_batched_update_is_its_update_bit_for_bit(name):
    """The optimizer applies a param group's base rule through `update_many` (foreach operations): it
    must give exactly the per-tensor `update`'s states and steps, over three steps (the first, where
    momentum starts and Adam's bias corrections are largest, included), for tensors of two dtypes."""
    from precondalg.optim.base_rules import BASE_RULES

    rule = BASE_RULES[name]
    g = torch.Generator().manual_seed(0)
    shapes = [((3, 4), torch.float32), ((5,), torch.float32), ((2, 2), torch.float64)]
    for group in _GROUPS[name]:
        states = [rule.init(torch.zeros(s, dtype=dt)) for s, dt in shapes]
        one = [dict(s) for s in states]
        for _ in range(3):
            ds = [torch.randn(s, generator=g, dtype=dt) for s, dt in shapes]
            states, steps = rule.updates(ds, states, group)
            singles = [rule.update(d, st, group) for d, st in zip(ds, one)]
            one = [st for st, _ in singles]
            for step, (_, single) in zip(steps, singles):
                assert step.dtype == single.dtype and torch.equal(step, single)
            for st, single in zip(states, one):
                assert st.keys() == single.keys()
                assert all(torch.equal(st[k], single[k]) for k in st)
