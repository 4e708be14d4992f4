"""FOP (Moskovitz 2019) theory checks: FOP-3 to FOP-8.

FOP preconditions θ_t = θ_{t−1} − ε P g_{t−1} with P = MᵀM (Eq. 2) and learns M by
hypergradient descent on J(θ_t) (§1.2, Eqs. 3–4).  FOP-4 builds P as ``gram(Dense(M))`` and takes the
hypergradient with ``torch.func.grad`` through that structure.  FOP-3 and FOP-5 to FOP-8 exercise
precondalg's own pieces: the `Hypergradient` objective, the families `dense_gram`, `low_rank_gram` and
`normalized_dense_gram`, the placements `InputSide`, `Spatial` and `Flatten`, and the `Preconditioned`
optimizer and its `FOP` preset.  They compare these with closed forms and with computations written
here independently.

PyTorch layout: W is (out, in), M acts on the input axis, and the step is
G ↦ G·MᵀM.  The hypergradient is then −ε M (G_{t−1}ᵀG_t + G_tᵀG_{t−1}), the transpose-free form of the
paper's TF-layout −ε M (G_{t−1}G_tᵀ + G_tG_{t−1}ᵀ).  A conv kernel (o, i, h, w) is reshaped to
(o·i)×(h·w), a vector θ to 1×n.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree

import precondalg as pa
from precondalg.families import Family, dense_gram, low_rank_gram, normalized_dense_gram
from precondalg.fitters import TorchOptimizer
from precondalg.objectives import BlockContext, Hypergradient, Objective
from precondalg.optim import FOP, Preconditioned
from precondalg.placement import Flatten, InputSide, Placement, Spatial
from theory_checks._numerics import (
    E_ATOL,
    E_RTOL,
    E_TOL,
    central_diff,
    dense_of,
    generator,
    numerical_rank,
    rel_err,
    sym_err,
)
from theory_checks.registry import Measures, Outcome, check

Precond = Callable[[torch.Tensor], pa.Structure]
HyperStep = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
HyperOptimizer = Callable[[], HyperStep]


def fop_preconditioner(M: torch.Tensor) -> pa.Structure:
    """FOP's P = MᵀM (Eq. 2) for an r×n M, as the structure gram(Dense(M))."""
    return pa.gram(pa.Dense(M))


def _symmetric_sum(M: torch.Tensor) -> pa.Structure:
    """Mutant: P = Mᵀ I_{r×n} + I_{r×n}ᵀ M (M + Mᵀ for square M): symmetric but indefinite."""
    E = torch.eye(*M.shape)
    return pa.Dense(M.mT @ E + E.mT @ M)


def sgd() -> HyperStep:
    """Plain SGD on M (the hyper-update FOP-4(b) is stated for): M ← M − ρ ∇_M."""
    return lambda M, grad, rho: M - rho * grad


def adam() -> HyperStep:
    """Adam on M (torch.optim.Adam, the paper's experimental hyper-optimizer): the FOP-4 mutant."""
    state: dict[str, torch.Tensor | torch.optim.Adam] = {}

    def step(M: torch.Tensor, grad: torch.Tensor, rho: float) -> torch.Tensor:
        if not state:
            state["p"] = torch.nn.Parameter(M.clone())
            state["opt"] = torch.optim.Adam([state["p"]], lr=rho)
        state["opt"].param_groups[0]["lr"] = rho
        state["p"].grad = grad.clone()
        state["opt"].step()
        return state["p"].detach().clone()

    return step


def _loss(X: torch.Tensor, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A smooth non-quadratic J(θ) = ½ Σ log(1 + (Xθ − y)²)."""
    return lambda theta: 0.5 * torch.log1p((X @ theta - y) ** 2).sum()


def fop_run(
    J: Callable[[torch.Tensor], torch.Tensor],
    theta: torch.Tensor,
    M: torch.Tensor,
    eps: float,
    rho_of: Callable[[torch.Tensor, torch.Tensor], float],
    precond: Precond,
    hyper: HyperStep,
    steps: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]]:
    """FOP's loop (Eqs. 2–4, Alg. 1): yields (M_{t−1}, M_t, g_{t−1}, g_t, ρ_t) for t = 1..steps.

    θ_t = θ_{t−1} − ε P(M_{t−1}) g_{t−1}; the hypergradient ∇_{M_{t−1}} J(θ_t) comes from
    ``torch.func.grad`` of M ↦ J(θ_{t−1} − ε P(M) g_{t−1}); then M_t = hyper(M_{t−1}, ∇, ρ_t) with
    ρ_t = rho_of(g_t, g_{t−1}).
    """
    grad_J = torch.func.grad(J)
    g_prev = grad_J(theta)
    for _ in range(steps):
        theta_new = theta - eps * (precond(M) @ g_prev)
        g = grad_J(theta_new)
        hyper_grad = torch.func.grad(lambda M_, th=theta, gp=g_prev: J(th - eps * (precond(M_) @ gp)))(M)
        rho = rho_of(g, g_prev)
        M_new = hyper(M, hyper_grad, rho)
        yield M, M_new, g_prev, g, rho
        theta, g_prev, M = theta_new, g, M_new


def _ab(g: torch.Tensor, g_prev: torch.Tensor) -> tuple[float, float]:
    """a = g_t·g_{t−1} and b = ‖g_t‖‖g_{t−1}‖ (FOP-4(b))."""
    return float(g @ g_prev), float(g.norm() * g_prev.norm())


def _psd_any_shape(precond: Precond, gen: torch.Generator, draws: int) -> tuple[float, float]:
    """FOP-4(a): worst asymmetry and worst λ_min(P)/‖M‖₂² over random M of random shapes."""
    asym, lam = 0.0, math.inf
    for _ in range(draws):
        r, n = (int(v) for v in torch.randint(1, 9, (2,), generator=gen))
        M = torch.randn(r, n, generator=gen) * 10 ** (4 * torch.rand((), generator=gen) - 2)
        P = dense_of(precond(M))
        asym = max(asym, sym_err(P))
        lowest = float(torch.linalg.eigvalsh((P + P.mT) / 2)[0])
        lam = min(lam, lowest / float(torch.linalg.matrix_norm(M, 2)) ** 2)
    return asym, lam


def _det_recursion(J, theta, precond, hyper, eps: float, rho: float, steps: int) -> float:
    """FOP-4(b): worst relative error of det M_t = det M_{t−1}(1+ρε(a+b))(1+ρε(a−b))."""
    n = theta.shape[0]
    worst = 0.0
    run = fop_run(J, theta, torch.eye(n), eps, lambda *_: rho, precond, hyper(), steps)
    for M_prev, M, g_prev, g, _ in run:
        a, b = _ab(g, g_prev)
        predicted = torch.linalg.det(M_prev) * (1 + rho * eps * (a + b)) * (1 + rho * eps * (a - b))
        worst = max(worst, float((torch.linalg.det(M) - predicted).abs() / predicted.abs()))
    return worst


def _counter_example(J, theta, precond, hyper, eps: float) -> float:
    """FOP-4(c): with ρ chosen so that ρε(b − a) = 1, |λ_min(P_1)|/λ_max(P_1) after one hyper-step."""
    n = theta.shape[0]

    def rho_of(g: torch.Tensor, g_prev: torch.Tensor) -> float:
        a, b = _ab(g, g_prev)
        return 1.0 / (eps * (b - a))

    _, M1, *_ = next(fop_run(J, theta, torch.eye(n), eps, rho_of, precond, hyper(), 1))
    eig = torch.linalg.eigvalsh(dense_of(precond(M1)))
    return float(eig.abs().min() / eig.abs().max())


def _lambda_min(precond: Precond, M: torch.Tensor) -> float:
    """λ_min of the dense P = precond(M)."""
    return float(torch.linalg.eigvalsh(dense_of(precond(M)))[0])


def _stays_pd(J, theta, precond, hyper, eps: float, gen: torch.Generator, steps: int) -> tuple[float, float]:
    """FOP-4(d): max ρε‖g_t‖‖g_{t−1}‖ (kept < ½ by drawing ρ_t), and the worst ratio of λ_min(P_t) to
    its proven floor (1 − ρε(b − a))²·λ_min(P_{t−1}), over the steps.

    The floor: M_t = M_{t−1}(I + ρεS) with S = g_{t−1}g_tᵀ + g_tg_{t−1}ᵀ, whose eigenvalues are a ± b and
    0, so I + ρεS is symmetric with smallest eigenvalue 1 − ρε(b − a) ≥ 1 − 2ρεb > 0, and
    σ_min(M_t) ≥ (1 − ρε(b − a))·σ_min(M_{t−1}).
    """
    n = theta.shape[0]
    fractions = iter((0.49 * (0.2 + 0.8 * torch.rand(steps, generator=gen))).tolist())

    def rho_of(g: torch.Tensor, g_prev: torch.Tensor) -> float:
        return next(fractions) / (eps * _ab(g, g_prev)[1])

    worst_cond, floor_ratio = 0.0, math.inf
    for M_prev, M, g_prev, g, rho in fop_run(J, theta, torch.eye(n), eps, rho_of, precond, hyper(), steps):
        a, b = _ab(g, g_prev)
        worst_cond = max(worst_cond, rho * eps * b)
        floor = (1 - rho * eps * (b - a)) ** 2 * _lambda_min(precond, M_prev)
        floor_ratio = min(floor_ratio, _lambda_min(precond, M) / floor)
    return worst_cond, floor_ratio


@check(
    id="FOP-4",
    paper="FOP Eqs. 2-4 (Moskovitz 2019)",
    statement=(
        "Identities and a bound for P = gram(Dense(M)) = MᵀM: P is symmetric PSD (24 random M); under plain "
        "SGD on M with the autograd hypergradient (the check's own loop), det M_t = det M_{t−1}"
        "(1+ρε(a+b))(1+ρε(a−b)) (25 steps), P is singular after a step with ρε(b−a) = 1, and while "
        "ρεb < ½, λ_min(P_t) >= (1−ρε(b−a))²·λ_min(P_{t−1}) > 0 (30 steps); a = g_t·g_{t−1}, "
        "b = ‖g_t‖‖g_{t−1}‖."
    ),
    tolerance=(
        f"{E_TOL}; λ_min >= -1e-12‖M‖²; counter-example |λ_min|/λ_max <= 1e-10; "
        "λ_min floor: ratio >= 1 − 1e-10"
    ),
    provenance="PAPER+DERIVED",
    mutants={
        "P = M + Mᵀ": {"precond": _symmetric_sum},
        "Adam on M while asserting the SGD determinant recursion": {"hyper": adam},
    },
)
def fop_4(precond: Precond = fop_preconditioner, hyper: HyperOptimizer = sgd, seed: int = 4) -> Outcome:
    """FOP-4 (Moskovitz 2019, Eqs. 2–4): (a) PSD for any shape, (b) the determinant recursion under SGD
    on M, (c) the constructed singular counter-example, (d) under ρε‖g_t‖‖g_{t−1}‖ < ½ the per-step floor
    λ_min(P_t) ≥ (1 − ρε(b − a))²·λ_min(P_{t−1}) > 0 (reached at the first step, from M₀ = I).

    J is ½Σlog(1 + (Xθ − y)²) with X 8×4, ε = 0.1; (b) uses ρ = 0.5 for 25 steps, (d) 30 steps.
    """
    gen, out = generator(seed), Measures()
    X, y = torch.randn(8, 4, generator=gen), torch.randn(8, generator=gen)
    J, theta = _loss(X, y), torch.randn(4, generator=gen)
    asym, lam_a = _psd_any_shape(precond, gen, draws=24)
    det_err = _det_recursion(J, theta, precond, hyper, eps=0.1, rho=0.5, steps=25)
    singular = _counter_example(J, theta, precond, hyper, eps=0.1)
    worst_cond, floor_d = _stays_pd(J, theta, precond, hyper, eps=0.1, gen=gen, steps=30)
    out.at_least("(a) min λ_min(MᵀM)/‖M‖₂² over 24 shapes", lam_a, -E_ATOL)
    out.at_most("(a) max asymmetry of P", asym, E_RTOL)
    out.at_most("(b) max rel. error of the det recursion (25 steps)", det_err, E_RTOL)
    out.at_most("(c) |λ_min(P_1)|/λ_max(P_1) at ρε(b−a) = 1", singular, E_RTOL)
    out.add("(d) max ρε‖g_t‖‖g_{t−1}‖ (precondition)", worst_cond, "<", 0.5)
    out.at_least("(d) min_t λ_min(P_t) / [(1 − ρε(b−a))²·λ_min(P_{t−1})] (30 steps)", floor_d, 1 - E_RTOL)
    return out.outcome()


# ----- shared pieces of FOP-3 to FOP-8 -----


def _tensor_loss(shape: tuple[int, ...], gen: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """A smooth non-quadratic J(W) = ½ Σ log(1 + (X vec(W) − y)²) on tensors of this shape."""
    numel = math.prod(shape)
    X, y = torch.randn(numel + 4, numel, generator=gen) / numel**0.5, torch.randn(numel + 4, generator=gen)
    J = _loss(X, y)
    return lambda W: J(W.reshape(-1))


def _trajectory(
    params: list[torch.Tensor], J: Callable[[], torch.Tensor], opt: torch.optim.Optimizer, steps: int
) -> list[list[torch.Tensor]]:
    """The parameters after each of `steps` optimizer steps on the loss J() of `params`."""
    out = []
    for _ in range(steps):
        opt.zero_grad()
        J().backward()
        opt.step()
        out.append([p.detach().clone() for p in params])
    return out


def _trajectory_err(run: list[list[torch.Tensor]], reference: list[list[torch.Tensor]]) -> float:
    """The worst normwise relative difference of two trajectories, over steps and parameters."""
    return max(rel_err(a, b) for step, ref in zip(run, reference) for a, b in zip(step, ref))


def _leaf(x: torch.Tensor) -> torch.Tensor:
    """A fresh leaf tensor with x's values that requires grad (an optimizer parameter)."""
    return x.detach().clone().requires_grad_(True)


# ----- FOP-3: the hypergradient formula -----


@dataclasses.dataclass(frozen=True)
class HyperCase:
    """One FOP-3 layout.

    Attributes:
        name: the case, as listed in the details.
        shape: the parameter's shape (PyTorch layout).
        placement: precondalg's placement for it.
        family: precondalg's family (its form gives P).
        n: the size P acts on, read off the shape here (not from the placement): in, or h·w.
        rank: r for the low-rank P = I + MᵀM (M r×n), None for P = MᵀM with square M.
    """

    name: str
    shape: tuple[int, ...]
    placement: Placement
    family: Family
    n: int
    rank: int | None = None


HYPER_CASES = (
    HyperCase("vector θ (5,), Flatten, P = MᵀM", (5,), Flatten(), dense_gram(), 5),
    HyperCase("dense W (3, 5), InputSide, P = MᵀM", (3, 5), InputSide(), dense_gram(), 5),
    HyperCase("dense W (3, 6), InputSide, P = I + MᵀM, r = 2", (3, 6), InputSide(), low_rank_gram(2), 6, 2),
    HyperCase("conv W (2, 3, 3, 3), Spatial, P = MᵀM", (2, 3, 3, 3), Spatial(), dense_gram(), 9),
)
SQUARE_CASES = tuple(c for c in HYPER_CASES if c.rank is None)
HYPERGRADIENT = Hypergradient()
"""precondalg's online hypergradient objective (the real piece FOP-3 checks)."""


def hypergradient_closed_form(
    M: torch.Tensor, G_prev: torch.Tensor, G: torch.Tensor, eps: float
) -> torch.Tensor:
    """FOP-3 in PyTorch layout: ∇_M J(θ_t) = −ε M (G_{t−1}ᵀG_t + G_tᵀG_{t−1}), G reshaped to (·, n).

    Args:
        M: (r, n) preconditioner factor (r = n for full FOP).
        G_prev: g_{t−1} in the parameter's shape; reshaped (row-major) to (·, n).
        G: g_t, likewise.
        eps: the base learning rate ε.
    """
    n = M.shape[1]
    Gp, Gt = G_prev.reshape(-1, n), G.reshape(-1, n)
    return -eps * M @ (Gp.mT @ Gt + Gt.mT @ Gp)


def fop_step(
    theta: torch.Tensor, G_prev: torch.Tensor, M: torch.Tensor, eps: float, plus_identity: bool
) -> torch.Tensor:
    """θ − ε·G P with G reshaped to (·, n) and P = MᵀM, or I + MᵀM (Eq. 2; §2.2 for the low-rank form)."""
    G = G_prev.reshape(-1, M.shape[1])
    GP = (G @ M.mT) @ M + (G if plus_identity else 0)
    return theta - eps * GP.reshape(theta.shape)


def _ours(objective: Objective, case: HyperCase, M: torch.Tensor, G_prev, G, eps: float) -> torch.Tensor:
    """The objective's meta-gradient for M, with the case's family and placement (as `Preconditioned`)."""
    view, family = case.placement.view, case.family
    cache = {"u": view([G_prev]), "lr": eps}
    ctx = BlockContext(pa.Dense(M), family.hyper_form or family.form, view([G]), cache)
    return objective.meta_grad(ctx).A


class _Wrapped(Objective):
    """Base of this module's mutant and recording objectives: it wraps an objective (by default
    precondalg's `Hypergradient`), uses its `evaluate`, and defines its own per-block `meta_grad`."""

    def __init__(self, inner: Objective | None = None) -> None:
        self.inner = inner if inner is not None else Hypergradient()

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.evaluate(*args, **kwargs)

    @abc.abstractmethod
    def meta_grad(self, ctx: BlockContext) -> pa.Structure | None:
        """The meta-gradient for one block, or None."""

    def meta_grads(self, blocks: list[BlockContext], evaluation: Any) -> list[pa.Structure | None]:
        return [self.meta_grad(ctx) for ctx in blocks]


class _Formula(_Wrapped):
    """Mutant objectives: a hand-written hypergradient −lr·formula(M, U, X) in the placement's space,
    U = u_{t−1} and X = g_t both (n, k), so that U Xᵀ is G_{t−1}ᵀG_t."""

    def __init__(self, formula: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.formula = formula

    def meta_grad(self, ctx: BlockContext) -> pa.Structure | None:
        if "u" not in ctx.cache:
            return None
        return pa.Dense(-ctx.cache["lr"] * self.formula(ctx.phi.A, ctx.cache["u"], ctx.grad))


class _Negated(_Wrapped):
    """Mutant objective: precondalg's hypergradient with its sign flipped."""

    def meta_grad(self, ctx: BlockContext) -> pa.Structure | None:
        grad = self.inner.meta_grad(ctx)
        return None if grad is None else pytree.tree_map(torch.neg, grad)


def _unsymmetrised(M: torch.Tensor, U: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """2 M G_tᵀG_{t−1}: the PyTorch form of the unsymmetrised 2 G_t G_{t−1}ᵀ."""
    return 2 * M @ (X @ U.mT)


def _transposed_factor(M: torch.Tensor, U: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Mᵀ(G_{t−1}ᵀG_t + G_tᵀG_{t−1}) instead of M(…) (square M only)."""
    return M.mT @ (U @ X.mT + X @ U.mT)


def _random_factor(case: HyperCase, gen: torch.Generator) -> torch.Tensor:
    """A random non-symmetric M: I + N(0, 1/4n) for square M, N(0, 1/4) entries for r×n."""
    if case.rank is None:
        return torch.eye(case.n) + torch.randn(case.n, case.n, generator=gen) / (2 * case.n**0.5)
    return torch.randn(case.rank, case.n, generator=gen) / 2


@check(
    id="FOP-3",
    paper="FOP Eqs. 3-4 (Moskovitz 2019)",
    statement=(
        "Closed form: precondalg's Hypergradient objective returns ∇_M J(θ_t) = −εM(G_{t−1}ᵀG_t + "
        "G_tᵀG_{t−1}) (PyTorch layout) for P = MᵀM and P = I + MᵀM, on a vector, a dense W (input side) "
        "and a conv kernel (spatial taps); autograd and central differences agree with it."
    ),
    tolerance=f"{E_TOL} (ours and autograd vs closed form); central FD (h = 1e-6): rel. error <= 1e-7",
    provenance="RECON+DERIVED",
    mutants={
        "unsymmetrised −2εM G_tᵀG_{t−1}": {"objective": _Formula(_unsymmetrised)},
        "Mᵀ(…) instead of M(…) (square M)": {
            "objective": _Formula(_transposed_factor),
            "cases": SQUARE_CASES,
        },
        "sign flipped": {"objective": _Negated()},
    },
)
def fop_3(
    objective: Objective = HYPERGRADIENT,
    cases: Sequence[HyperCase] = HYPER_CASES,
    eps: float = 0.3,
    h: float = 1e-6,
    seed: int = 3,
) -> Outcome:
    """FOP-3 (Moskovitz 2019, Eqs. 3–4): the hypergradient, four layouts.

    Per case: J = ½Σlog(1 + (X vec W − y)²), a random non-symmetric M, θ_t = θ_{t−1} − εP g_{t−1} by the
    family's form and the placement (checked against `fop_step`), then ``objective.meta_grad`` vs the
    closed form vs ``torch.autograd.grad`` of M ↦ J(fop_step(θ_{t−1}, g_{t−1}, M)) vs central
    differences of the same function.
    """
    gen, out = generator(seed), Measures()
    errs = {"ours": 0.0, "autograd": 0.0, "fd": 0.0, "step": 0.0}
    for case in cases:
        J = _tensor_loss(case.shape, gen)
        grad_J = torch.func.grad(J)
        theta, M = torch.randn(case.shape, generator=gen), _random_factor(case, gen)
        G_prev = grad_J(theta)
        P = case.family.form(pa.Dense(M))
        theta_t = theta - eps * case.placement.unview(P @ case.placement.view([G_prev]), [case.shape])[0]
        G = grad_J(theta_t)

        def f(M_: torch.Tensor, theta=theta, G_prev=G_prev, J=J, plus=case.rank is not None) -> torch.Tensor:
            return J(fop_step(theta, G_prev, M_, eps, plus))

        closed = hypergradient_closed_form(M, G_prev, G, eps)
        M_var = M.clone().requires_grad_(True)
        (auto,) = torch.autograd.grad(f(M_var), M_var)
        step = fop_step(theta, G_prev, M, eps, case.rank is not None)
        errs["step"] = max(errs["step"], rel_err(theta_t, step))
        errs["ours"] = max(errs["ours"], rel_err(_ours(objective, case, M, G_prev, G, eps), closed))
        errs["autograd"] = max(errs["autograd"], rel_err(auto, closed))
        errs["fd"] = max(errs["fd"], rel_err(central_diff(f, M, h), closed))
    out.at_most("max rel. error, Hypergradient().meta_grad vs closed form", errs["ours"], E_RTOL)
    out.at_most("max rel. error, autograd of J(θ − εG·P(M)) vs closed form", errs["autograd"], E_RTOL)
    out.at_most("max rel. error, central differences vs closed form", errs["fd"], 1e-7)
    out.at_most("max rel. error, family+placement step vs G·P step", errs["step"], E_RTOL)
    out.details["cases"] = [c.name for c in cases]
    return out.outcome()


# ----- FOP-5: low-rank FOP, P = I + MᵀM -----

LOW_RANK_DIMS = ((6, 1), (8, 3), (16, 4))
"""(n, r) pairs of FOP-5: M is r×n, r < n."""


def _gram_without_identity(rank: int, std: float = 1e-3) -> Family:
    """Mutant: `low_rank_gram`'s init with P = MᵀM (rank r < n, so λ_min(P) = 0)."""
    return dataclasses.replace(low_rank_gram(rank, std), form=pa.gram)


@check(
    id="FOP-5",
    paper="FOP §2.2, Eq. 5 reconstructed (Moskovitz 2019)",
    statement=(
        "Properties of low_rank_gram(r, σ), P = I + MᵀM (M r×n), at the init and at a random M: "
        "rank(P − I) <= r, λ_min(P) >= 1, ‖P₀ − I‖₂ = ‖M₀‖₂²; Monte Carlo at the N(0, σ²) init: mean "
        "‖M₀‖₂ <= σ(√r + √n) and entry std σ; P g equals the dense (I + MᵀM)g and P.cost() declares "
        "2nr multiply-adds for it."
    ),
    tolerance=f"{E_TOL}; rank at 1e-12‖P‖₂; MC: mean ‖M₀‖₂ <= σ(√r+√n) + 5·se; exact: cost().matvec",
    provenance="RECON+DERIVED",
    mutants={"P = MᵀM with r < n": {"family": _gram_without_identity}},
)
def fop_5(
    family: Callable[[int, float], Family] = low_rank_gram,
    sigma: float = 1e-3,
    draws: int = 300,
    seed: int = 5,
) -> Outcome:
    """FOP-5 (Moskovitz 2019, §2.2): `low_rank_gram(r, σ)` for three (n, r), σ = 1e-3
    (the FOP preset's default `low_rank_std`).

    (a), (b) and (d) use the init M₀ and a far-from-init M with N(0, 1) entries; (c) the init, once for the
    identity and `draws` times for the Monte-Carlo mean of ‖M₀‖₂ (Gordon's bound; z = (mean − bound)/se)
    and for the std of the entries (z against σ, se = σ/√(2N)).
    """
    gen, out = generator(seed), Measures()
    like = torch.empty(())
    rank_excess, lam, norm_err, z, std_z, mv_err, cost_err = -math.inf, math.inf, 0.0, -math.inf, 0.0, 0.0, 0
    for n, r in LOW_RANK_DIMS:
        fam, eye = family(r, sigma), torch.eye(n)
        M0 = fam.init((n,), like, gen).A
        for M in (M0, torch.randn(r, n, generator=gen)):
            P = fam.form(pa.Dense(M))
            dense, g = dense_of(P), torch.randn(n, 3, generator=gen)
            scale = float(torch.linalg.matrix_norm(dense, 2))
            rank_excess = max(rank_excess, numerical_rank(dense - eye, E_ATOL * scale) - r)
            lam = min(lam, (float(torch.linalg.eigvalsh(dense)[0]) - 1) / scale)
            mv_err = max(mv_err, rel_err(P @ g, (eye + M.mT @ M) @ g))
            cost_err = max(cost_err, abs(P.cost().matvec - 2 * n * r))
        m0_sq = float(torch.linalg.matrix_norm(M0, 2)) ** 2
        p0 = float(torch.linalg.matrix_norm(dense_of(fam.form(pa.Dense(M0))) - eye, 2))
        norm_err = max(norm_err, abs(p0 - m0_sq) / m0_sq)
        inits = torch.stack([fam.init((n,), like, gen).A for _ in range(draws)])
        norms, bound = torch.linalg.matrix_norm(inits, 2), sigma * (r**0.5 + n**0.5)
        z = max(z, float((norms.mean() - bound) / (norms.std() / draws**0.5)))
        std_z = max(std_z, abs(float(inits.std()) - sigma) / (sigma / (2 * inits.numel()) ** 0.5))
        out.details[f"E‖M₀‖₂/σ(√r+√n), n={n}, r={r}"] = float(norms.mean() / bound)
    out.at_most("(a) max rank(P − I) − r", rank_excess, 0)
    out.at_least("(b) min (λ_min(P) − 1)/‖P‖₂", lam, -E_RTOL)
    out.at_most("(c) max rel. error, ‖P₀ − I‖₂ vs ‖M₀‖₂²", norm_err, E_RTOL)
    out.at_most(f"(c) max z of MC mean ‖M₀‖₂ above σ(√r+√n) ({draws} draws)", z, 5.0)
    out.at_most("(c) max |z| of the MC std of M₀'s entries vs σ", std_z, 5.0)
    out.at_most("(d) max rel. error, structure P g vs dense (I + MᵀM) g", mv_err, E_RTOL)
    out.equal("(d) max |P.cost().matvec − 2nr|", cost_err, 0)
    return out.outcome()


# ----- FOP-6: normalized FOP -----


def _scaled_init(family: Family, c: float) -> Family:
    """The family with φ₀ replaced by c·φ₀ (Dense(c·I) for the FOP families); same form and hyper_form."""

    def init(dims: tuple[int, ...], like: torch.Tensor, gen: torch.Generator | None) -> pa.Structure:
        return pytree.tree_map(lambda leaf: c * leaf, family.init(dims, like, gen))

    return dataclasses.replace(family, init=init)


def _normalized_by_m_frobenius(phi: pa.Structure) -> pa.Structure:
    """Mutant form: √n·MᵀM/‖M‖_F instead of √n·MᵀM/‖MᵀM‖_F."""
    M = phi.A
    return pa.scale(pa.gram(phi), M.shape[0] ** 0.5 / torch.linalg.matrix_norm(M))


def _norm_by_m_frobenius() -> Family:
    """Mutant family: `normalized_dense_gram` with the form `_normalized_by_m_frobenius`."""
    return dataclasses.replace(normalized_dense_gram(), form=_normalized_by_m_frobenius)


def _fop_norm_run(
    family: Family,
    W0: torch.Tensor,
    J: Callable[[torch.Tensor], torch.Tensor],
    eps: float,
    rho: float,
    steps: int,
) -> tuple[list[list[torch.Tensor]], torch.Tensor]:
    """FOP-norm with plain-SGD hyper-updates (ρ) through `Preconditioned` on a weight W (input side):
    the trajectory and the final dense P."""
    W = _leaf(W0)
    fitter = TorchOptimizer(torch.optim.SGD, lr=rho)
    opt = Preconditioned([W], eps, structure=family, placement=InputSide(), fitter=fitter, base="sgd")
    run = _trajectory([W], lambda: J(W), opt, steps)
    return run, dense_of(opt.preconditioners()[0][1])


@check(
    id="FOP-6",
    paper="FOP App. A.1 (Moskovitz 2019)",
    statement=(
        "Identity and invariance of FOP-norm P = √n·MᵀM/‖MᵀM‖_F: ‖P‖_F = √n (random M); through "
        "Preconditioned with the plain MᵀM hypergradient and SGD on M, the 50-step trajectory from "
        "M₀ = c·I equals that from M₀ = I; with ρ = 0 (P = I) it equals torch.optim.SGD."
    ),
    tolerance=f"{E_TOL}; trajectories: rel. difference <= 1e-12",
    provenance="RECON+DERIVED",
    mutants={"normalised by ‖M‖_F instead of ‖MᵀM‖_F": {"family": _norm_by_m_frobenius}},
)
def fop_6(
    family: Callable[[], Family] = normalized_dense_gram,
    c: float = 3.7,
    eps: float = 0.1,
    rho: float = 0.5,
    steps: int = 50,
    seed: int = 6,
) -> Outcome:
    """FOP-6 (Moskovitz 2019, App. A.1): (a) ‖P‖_F over random square M, n = 1..8;
    (b) 50 steps of `Preconditioned(normalized_dense_gram(), InputSide(), SGD(ρ) on M, base "sgd")`
    on W (4, 6), from M₀ = I and from M₀ = c·I; (c) from M₀ = c·I with ρ = 0 (P = I throughout) vs
    torch.optim.SGD.
    """
    gen, out = generator(seed), Measures()
    fam = family()
    norm_err = 0.0
    for n in (1, 2, 3, 5, 8):
        P = dense_of(fam.form(pa.Dense(torch.randn(n, n, generator=gen))))
        norm_err = max(norm_err, abs(float(torch.linalg.matrix_norm(P)) - n**0.5) / n**0.5)
    J, W0 = _tensor_loss((4, 6), gen), torch.randn(4, 6, generator=gen)
    base_run, P_base = _fop_norm_run(fam, W0, J, eps, rho, steps)
    scaled_run, P_scaled = _fop_norm_run(_scaled_init(fam, c), W0, J, eps, rho, steps)
    fixed_run, _ = _fop_norm_run(_scaled_init(fam, c), W0, J, eps, 0.0, steps)
    W = _leaf(W0)
    gd_run = _trajectory([W], lambda: J(W), torch.optim.SGD([W], lr=eps), steps)
    rotation = float(torch.linalg.matrix_norm(P_base - torch.eye(6)) / 6**0.5)
    out.at_most("(a) max rel. error, ‖√n·MᵀM/‖MᵀM‖_F‖_F vs √n", norm_err, E_RTOL)
    out.at_most(
        f"(b) max rel. difference of θ_t, M₀ = {c}·I vs I ({steps} steps)",
        _trajectory_err(scaled_run, base_run),
        1e-12,
    )
    out.at_most(f"(b) rel. difference of P_{steps}, M₀ = {c}·I vs I", rel_err(P_scaled, P_base), 1e-12)
    out.at_least(f"(b) ‖P_{steps} − I‖_F/√n (P has moved: a non-trivial run)", rotation, 0.05)
    out.at_most(
        f"(c) max rel. difference of θ_t, P = I (ρ = 0) vs torch.optim.SGD ({steps} steps)",
        _trajectory_err(fixed_run, gd_run),
        E_RTOL,
    )
    return out.outcome()


# ----- FOP-7: FOP with momentum -----

MU = 0.9
"""FOP-7's heavy-ball momentum μ (the paper's 0.9)."""


class _Recorder(_Wrapped):
    """Wraps an objective and keeps (M, meta-gradient) of every block and step that has one."""

    def __init__(self, inner: Objective) -> None:
        super().__init__(inner)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def meta_grad(self, ctx: BlockContext) -> pa.Structure | None:
        grad = self.inner.meta_grad(ctx)
        if grad is not None:
            self.calls.append((ctx.phi.A.clone(), grad.A.clone()))
        return grad


class _ThroughVelocity(_Wrapped):
    """Mutant: the hypergradient through v_{t−1} = μv_{t−2} + εP(M_{t−2})g_{t−2} as well, for a perturbation
    of M shared by both steps: the real one plus μ × the previous step's VJP (at the previous φ and u)."""

    def __init__(self) -> None:
        super().__init__()
        self.history: list[tuple[pa.Structure, torch.Tensor]] = []

    def meta_grad(self, ctx: BlockContext) -> pa.Structure | None:
        grad = self.inner.meta_grad(ctx)
        if grad is None:
            return None
        if self.history:
            phi, u = self.history[-1]
            older = self.inner.meta_grad(dataclasses.replace(ctx, phi=phi, cache={**ctx.cache, "u": u}))
            grad = pytree.tree_map(lambda a, b: a + MU * b, grad, older)
        self.history.append((pytree.tree_map(torch.clone, ctx.phi), ctx.cache["u"].clone()))
        return grad


def _momentum_theta(theta, v_prev, G, M, eps: float) -> torch.Tensor:
    """Eq. 8 in PyTorch layout: θ_t = θ_{t−1} − μv_{t−1} − ε G_{t−1}MᵀM."""
    return fop_step(theta - MU * v_prev, G, M, eps, plus_identity=False)


@check(
    id="FOP-7",
    paper="FOP §2.4, Eqs. 6-8 (Moskovitz 2019)",
    statement=(
        "Identity: with momentum v_t = μv_{t−1} + εMᵀM g_{t−1}, Preconditioned's hypergradient equals "
        "autograd of J(θ_t) with v_{t−1} held constant (the FOP-3 formula) and θ_t follows Eq. 8; it "
        "differs from the gradient through v_{t−1}."
    ),
    tolerance=f"{E_TOL}; the difference from the gradient through v_{{t−1}}: rel. >= 1e-3",
    provenance="RECON+DERIVED",
    mutants={"gradient through v_{t−1}": {"objective": _ThroughVelocity}},
)
def fop_7(
    objective: Callable[[], Objective] = Hypergradient, eps: float = 0.1, steps: int = 8, seed: int = 7
) -> Outcome:
    """FOP-7 (Moskovitz 2019, §2.4, Eqs. 6–8): `Preconditioned` with FOP's choices (dense_gram, InputSide,
    Adam on M, lr 1e-2 here so that M moves; base "momentum", μ = 0.9) on W (3, 5), `steps` steps.

    The optimizer's meta-gradients are recorded at each step (with the M they were taken at).  Independently:
    v_{t−1} = θ_{t−2} − θ_{t−1} from the recorded θ's, Eq. 8 (checked to reproduce θ_t), and
    ``torch.func.grad`` of M ↦ J(θ_t(M)) with v_{t−1} constant, and (through v_{t−1}) of a perturbation D
    shared by both steps: θ_t(D) = θ_{t−1} − μ(μv_{t−2} + εG_{t−2}P(M_{t−2} + D)) − εG_{t−1}P(M_{t−1} + D).
    """
    gen, out = generator(seed), Measures()
    J, W = _tensor_loss((3, 5), gen), _leaf(torch.randn(3, 5, generator=gen))
    recorder = _Recorder(objective())
    opt = Preconditioned(
        [W],
        eps,
        structure=dense_gram(),
        placement=InputSide(),
        objective=recorder,
        fitter=TorchOptimizer(torch.optim.Adam, lr=1e-2),
        base="momentum",
        momentum=MU,
    )
    thetas = [W.detach().clone()] + [step[0] for step in _trajectory([W], lambda: J(W), opt, steps)]
    grads = [torch.func.grad(J)(theta) for theta in thetas]
    zero = torch.zeros_like(thetas[0])
    velocity = [zero] + [a - b for a, b in zip(thetas, thetas[1:])]  # velocity[k] = v_{k−1}
    theta_err, detached_err, difference = 0.0, 0.0, math.inf
    for k, (M, ours) in enumerate(recorder.calls):
        theta, G, v_prev = thetas[k], grads[k], velocity[k]
        theta_err = max(theta_err, rel_err(_momentum_theta(theta, v_prev, G, M, eps), thetas[k + 1]))
        detached = torch.func.grad(lambda M_, a=theta, v=v_prev, g=G: J(_momentum_theta(a, v, g, M_, eps)))(M)
        detached_err = max(detached_err, rel_err(ours, detached))
        if k >= 1:
            M_older, v_older, G_older = recorder.calls[k - 1][0], velocity[k - 1], grads[k - 1]

            def through(D, theta=theta, G=G, M=M, v_older=v_older, G_older=G_older, M_older=M_older):
                v = fop_step(MU * v_older, G_older, M_older + D, -eps, plus_identity=False)
                return J(fop_step(theta - MU * v, G, M + D, eps, plus_identity=False))

            difference = min(difference, rel_err(ours, torch.func.grad(through)(torch.zeros_like(M))))
    out.at_most(
        "max rel. error, optimizer's hypergradient vs autograd with v_{t−1} detached", detached_err, E_RTOL
    )
    out.at_least("min rel. difference from autograd through v_{t−1} (the approximation)", difference, 1e-3)
    out.at_most("max rel. error, Eq. 8 with the recorded M vs the optimizer's θ_t", theta_err, E_RTOL)
    out.details["hypergradients compared"] = len(recorder.calls)
    return out.outcome()


# ----- FOP-8: FOP starts as the base optimizer -----


def _gaussian_init(rank: int | None) -> Callable[..., pa.Structure]:
    """An init of M with N(0, 1/n) entries, (rank or n)×n."""

    def init(dims: tuple[int, ...], like: torch.Tensor, gen: torch.Generator | None) -> pa.Structure:
        n = math.prod(dims)
        M = torch.randn(rank or n, n, generator=gen, dtype=torch.float64) / n**0.5
        return pa.Dense(M.to(like.dtype))

    return init


def _fop_gaussian_m0(
    params: Any,
    lr: float,
    momentum: float = MU,
    hyper_lr: float = 1e-4,
    rank: int | None = None,
    low_rank_std: float = 1e-3,
) -> Preconditioned:
    """Mutant FOP preset: M₀ with N(0, 1/n) entries (n×n, or r×n with P = I + MᵀM, whatever low_rank_std)."""
    full = dataclasses.replace(dense_gram(), init=_gaussian_init(None))
    matrix = dataclasses.replace(low_rank_gram(rank), init=_gaussian_init(rank)) if rank else full
    return Preconditioned(
        params,
        lr,
        structure=lambda shape: matrix if len(shape) == 2 else full,
        placement=lambda shape: {2: InputSide(), 4: Spatial()}.get(len(shape)),
        fitter=TorchOptimizer(torch.optim.Adam, lr=hyper_lr),
        base="momentum",
        momentum=momentum,
    )


def _conv_net(
    gen: torch.Generator,
) -> tuple[list[torch.Tensor], Callable[[list[torch.Tensor]], torch.Tensor]]:
    """A conv (3, 2, 3, 3) + bias, tanh, linear (4, 27) + bias model on a fixed batch: parameters and
    the loss ½ Σ log(1 + (out − y)²) as a function of them."""
    x, y = torch.randn(5, 2, 5, 5, generator=gen), torch.randn(5, 4, generator=gen)
    shapes = ((3, 2, 3, 3), (3,), (4, 27), (4,))
    params = [torch.randn(s, generator=gen) / 3 for s in shapes]

    def J(ps: list[torch.Tensor]) -> torch.Tensor:
        K, bK, W, b = ps
        out = torch.tanh(F.conv2d(x, K, bK)).flatten(1) @ W.mT + b
        return 0.5 * torch.log1p((out - y) ** 2).sum()

    return params, J


def _fop_vs_sgd(fop, params0, J, lr: float, steps: int, **kwargs: Any) -> tuple[list, list]:
    """Trajectories of `fop(params, lr, momentum=μ, **kwargs)` and torch.optim.SGD(lr, momentum=μ)."""
    runs = []
    for make in (lambda ps: fop(ps, lr=lr, momentum=MU, **kwargs), lambda ps: torch.optim.SGD(ps, lr, MU)):
        ps = [_leaf(p) for p in params0]
        runs.append(_trajectory(ps, lambda ps=ps: J(ps), make(ps), steps))
    return runs[0], runs[1]


def _first_step_error(fop, params0, J, lr: float, rank: int, std: float) -> tuple[float, float]:
    """The first-step error of `fop(rank, low_rank_std=std)` against SGD-momentum, measured and closed form.

    Measured: ‖θ₁(FOP) − θ₁(SGD)‖ / ‖θ₁(SGD) − θ₀‖ over all parameters.  Closed form: the first
    heavy-ball step is θ₀ − lr·P₀g for both (the momentum buffer starts at the step's direction) and FOP
    has no hypergradient yet, so the difference is lr·G(P₀ − I) per preconditioned parameter (G reshaped
    to (·, n), P₀ the n×n preconditioner read from the optimizer before its step) and the error is
    ‖G(P₀ − I)‖/‖g‖.
    """
    ps = [_leaf(p) for p in params0]
    opt = fop(ps, lr=lr, momentum=MU, hyper_lr=1e-4, rank=rank, low_rank_std=std)
    initial = {id(block[0]): dense_of(P) for block, P in opt.preconditioners()}
    (fop_1,) = _trajectory(ps, lambda: J(ps), opt, 1)
    ref = [_leaf(p) for p in params0]
    (sgd_1,) = _trajectory(ref, lambda: J(ref), torch.optim.SGD(ref, lr, MU), 1)
    grads = torch.func.grad(J)([p.detach() for p in params0])
    closed = 0.0
    for p, G in zip(ps, grads):
        if id(p) in initial:
            P0 = initial[id(p)]
            closed += float((G.reshape(-1, P0.shape[0]) @ (P0 - torch.eye(P0.shape[0]))).square().sum())
    diff = sum(float((a - b).square().sum()) for a, b in zip(fop_1, sgd_1))
    step = sum(float((b - p).square().sum()) for b, p in zip(sgd_1, params0))
    gradient = sum(float(G.square().sum()) for G in grads)
    return (diff / step) ** 0.5, (closed / gradient) ** 0.5


@check(
    id="FOP-8",
    paper="FOP §2, Alg. 1 (Moskovitz 2019): 'begins as straightforward gradient descent'",
    statement=(
        "Identities of the FOP preset: with M₀ = I (dense and spatial) its first step, and with "
        "hyper_lr = 0 its first 10 steps, equal torch.optim.SGD with momentum; low-rank FOP with M₀ = σZ "
        "differs on its first step by exactly lr·G(P₀ − I) = lr·G·M₀ᵀM₀, so by exactly σ² times a "
        "constant (σ = 1e-2, 1e-3)."
    ),
    tolerance=f"{E_TOL} (trajectories, the first-step closed form and the σ² scaling)",
    provenance="PAPER+DERIVED",
    mutants={"M₀ with N(0, 1/n) entries": {"fop": _fop_gaussian_m0}},
)
def fop_8(
    fop: Callable[..., torch.optim.Optimizer] = FOP,
    lr: float = 0.05,
    rank: int = 2,
    sigmas: tuple[float, float] = (1e-2, 1e-3),
    steps: int = 10,
    seed: int = 8,
) -> Outcome:
    """FOP-8 (Moskovitz 2019, §2, Alg. 1): `FOP` on a conv + linear model (the kernel's taps
    get spatial FOP, the weight input-side FOP, the biases none) vs torch.optim.SGD(momentum = 0.9):
    the first step with FOP's defaults (hyper_lr 1e-4), `steps` steps with hyper_lr = 0, and the
    first-step error of `FOP(rank=r, low_rank_std=σ)` for the two σ (the same draw Z, scaled) against its
    closed form (see `_first_step_error`) and against the exact σ² scaling.  The error is a difference
    of two θ₁ of size ~0.3, so its round-off is ~1e-11 relative at σ = 1e-3, within class E.
    """
    gen, out = generator(seed), Measures()
    params0, J = _conv_net(gen)
    first, sgd = _fop_vs_sgd(fop, params0, J, lr, 1)
    frozen, sgd_many = _fop_vs_sgd(fop, params0, J, lr, steps, hyper_lr=0.0)
    (big, big_closed), (small, small_closed) = (
        _first_step_error(fop, params0, J, lr, rank, s) for s in sigmas
    )
    out.at_most(
        "rel. difference of θ₁, FOP (M₀ = I, hyper_lr 1e-4) vs SGD-momentum",
        _trajectory_err(first, sgd),
        E_RTOL,
    )
    out.at_most(
        f"max rel. difference of θ_t, FOP (hyper_lr 0) vs SGD-momentum ({steps} steps)",
        _trajectory_err(frozen, sgd_many),
        E_RTOL,
    )
    out.at_most(
        "low rank: max |first-step err / its closed form ‖G(P₀ − I)‖/‖g‖ − 1| (both σ)",
        max(abs(big / big_closed - 1), abs(small / small_closed - 1)),
        E_RTOL,
    )
    out.at_most(
        "low rank: |err(σ₁)/err(σ₂) / (σ₁/σ₂)² − 1| (M₀ = σZ, the same Z)",
        abs(big / small / (sigmas[0] / sigmas[1]) ** 2 - 1),
        E_RTOL,
    )
    out.details["first-step err / σ²"] = [big / sigmas[0] ** 2, small / sigmas[1] ** 2]
    return out.outcome()
