"""FOP (Moskovitz 2019) theory checks: FOP-3 to FOP-8.

FOP preconditions θ_t = θ_{t−1} − ε P g_{t−1} with P = MᵀM (Eq. 2) and learns M by
hypergradient descent on J(θ_t) (§1.2, Eqs. 3–4).  Every check runs precondalg's own code: the
`Hypergradient` objective and the fitters through `Preconditioned` (FOP-3, FOP-4, FOP-6), the families
`dense_gram`, `low_rank_gram` and `normalized_dense_gram` (FOP-4 to FOP-6), the placements `InputSide`,
`Spatial` and `Flatten`, and the `FOP` preset itself (FOP-7, FOP-8).  The references are independent:
closed forms, dense computations of the loss after the step with autograd and central differences,
and torch.optim.

PyTorch layout: W is (out, in), M acts on the input axis, and the step is
G ↦ G·MᵀM.  The hypergradient is then −ε M (G_{t−1}ᵀG_t + G_tᵀG_{t−1}), the transpose-free form of the
paper's TF-layout −ε M (G_{t−1}G_tᵀ + G_tG_{t−1}ᵀ).  A conv kernel (o, i, h, w) is reshaped to
(o·i)×(h·w), a vector θ to 1×n.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable, Sequence
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


def _loss(X: torch.Tensor, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A smooth non-quadratic J(θ) = ½ Σ log(1 + (Xθ − y)²)."""
    return lambda theta: 0.5 * torch.log1p((X @ theta - y) ** 2).sum()


def fop_step(
    theta: torch.Tensor, G_prev: torch.Tensor, M: torch.Tensor, eps: float, plus_identity: bool
) -> torch.Tensor:
    """The reference step θ − ε·G P, dense: G reshaped (row-major) to (·, n), P = MᵀM, or I + MᵀM
    (Eq. 2; §2.2 for the low-rank form)."""
    G = G_prev.reshape(-1, M.shape[1])
    GP = (G @ M.mT) @ M + (G if plus_identity else 0)
    return theta - eps * GP.reshape(theta.shape)


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


class _Recorder(_Wrapped):
    """Wraps an objective and keeps (M, meta-gradient) of every block and step that has one: the
    meta-gradients `Preconditioned` computes and hands to its fitter."""

    def __init__(self, inner: Objective) -> None:
        super().__init__(inner)
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def meta_grad(self, ctx: BlockContext) -> pa.Structure | None:
        grad = self.inner.meta_grad(ctx)
        if grad is not None:
            self.calls.append((ctx.phi.A.clone(), grad.A.clone()))
        return grad


class _Negated(_Wrapped):
    """Mutant objective: precondalg's hypergradient with its sign flipped."""

    def meta_grad(self, ctx: BlockContext) -> pa.Structure | None:
        grad = self.inner.meta_grad(ctx)
        return None if grad is None else pytree.tree_map(torch.neg, grad)


def _with_factor(family: Family, M: torch.Tensor) -> Family:
    """The family with its init replaced by φ₀ = Dense(M) (same form and hypergradient)."""
    return dataclasses.replace(family, init=lambda dims, like, gen: pa.Dense(M.clone()))


def _fitted_run(
    J: Callable[[torch.Tensor], torch.Tensor],
    theta0: torch.Tensor,
    steps: int,
    eps: float,
    **engine: Any,
) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]], Preconditioned]:
    """`steps` steps of ``Preconditioned([θ], ε, base="sgd", **engine)`` on J, its objective recorded.

    Returns:
        θ after 0..steps steps; the recorded (M, ∇_M) of every hyper-step (one per step from the second
        on: the first has no cached g_{t−1}); the optimizer.
    """
    theta = _leaf(theta0)
    recorder = _Recorder(engine.pop("objective"))
    opt = Preconditioned([theta], eps, objective=recorder, base="sgd", **engine)
    run = _trajectory([theta], lambda: J(theta), opt, steps)
    return [theta0.clone()] + [step[0] for step in run], recorder.calls, opt


# ----- FOP-3: the hypergradient formula -----


@dataclasses.dataclass(frozen=True)
class HyperCase:
    """One drawn FOP-3 layout.

    Attributes:
        layout: "vector" (Flatten), "dense" (InputSide, P = MᵀM), "low-rank" (InputSide, P = I + MᵀM) or
            "conv" (Spatial).
        shape: the parameter's shape (PyTorch layout).
        n: the size P acts on, read off the shape here (not from the placement): in, or h·w.
        rank: r of the r×n M for "low-rank" (M is n×n otherwise).
    """

    layout: str
    shape: tuple[int, ...]
    n: int
    rank: int | None = None

    @property
    def placement(self) -> Placement:
        """precondalg's placement for the layout."""
        return {"vector": Flatten(), "conv": Spatial()}.get(self.layout, InputSide())

    @property
    def family(self) -> Family:
        """precondalg's family for the layout."""
        return low_rank_gram(self.rank) if self.rank is not None else dense_gram()


LAYOUTS = ("vector", "dense", "low-rank", "conv")
HYPERGRADIENT = Hypergradient()
"""precondalg's online hypergradient objective (what FOP-3 checks through `Preconditioned`)."""
SQUARE_LAYOUTS = ("vector", "dense", "conv")


def _draw_case(layout: str, gen: torch.Generator) -> HyperCase:
    """A case of this layout with n ∈ [2, 8] (n = h·w for conv, h ∈ [1, 3], w ∈ [2, 3]), out and in
    channels in [1, 3], and r ∈ [1, n] for low rank."""

    def draw(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (), generator=gen))

    if layout == "conv":
        h, w = draw(1, 3), draw(2, 3)
        return HyperCase(layout, (draw(1, 3), draw(1, 3), h, w), h * w)
    n = draw(2, 8)
    if layout == "vector":
        return HyperCase(layout, (n,), n)
    return HyperCase(layout, (draw(1, 3), n), n, draw(1, n) if layout == "low-rank" else None)


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


def _hyper_case(objective: Objective, case: HyperCase, eps: float, h: float, gen: torch.Generator) -> dict:
    """One FOP-3 case: two steps of `Preconditioned` (the case's family with φ₀ = Dense(M), placement,
    `objective`, SGD on M at lr 0) and its hypergradient at the second, against the references.

    Returns:
        The relative errors of the recorded hypergradient against the closed form ("closed"), autograd
        of M ↦ J(fop_step(θ₀, g₀, M)) ("autograd") and central differences of it ("fd"), and of the
        optimizer's θ₁ against fop_step(θ₀, g₀, M) ("step").
    """
    J = _tensor_loss(case.shape, gen)
    theta0, M = torch.randn(case.shape, generator=gen), _random_factor(case, gen)
    thetas, calls, _ = _fitted_run(
        J,
        theta0,
        2,
        eps,
        structure=_with_factor(case.family, M),
        placement=case.placement,
        objective=objective,
        fitter=TorchOptimizer(torch.optim.SGD, lr=0.0),
    )
    ((_, ours),) = calls
    G_prev, G = (torch.func.grad(J)(theta) for theta in thetas[:2])
    plus = case.rank is not None

    def after_step(M_: torch.Tensor) -> torch.Tensor:
        return J(fop_step(theta0, G_prev, M_, eps, plus))

    return {
        "closed": rel_err(ours, hypergradient_closed_form(M, G_prev, G, eps)),
        "autograd": rel_err(ours, torch.func.grad(after_step)(M)),
        "fd": rel_err(ours, central_diff(after_step, M, h)),
        "step": rel_err(thetas[1], fop_step(theta0, G_prev, M, eps, plus)),
    }


@check(
    id="FOP-3",
    paper="FOP Eqs. 3-4 (Moskovitz 2019)",
    statement=(
        "Closed form: the hypergradient Preconditioned computes with the Hypergradient objective (dense_gram "
        "P = MᵀM and low_rank_gram P = I + MᵀM, on a vector, a dense W (input side) and a conv kernel "
        "(spatial taps), drawn sizes) is ∇_M J(θ_t) = −εM(G_{t−1}ᵀG_t + G_tᵀG_{t−1}) (PyTorch layout), "
        "the autograd gradient and the central differences of M ↦ J(θ_{t−1} − εG_{t−1}P(M)) computed "
        "densely; its step is θ_{t−1} − εG_{t−1}P."
    ),
    tolerance=f"{E_TOL} (closed form, autograd, step); central FD (h = 1e-6): rel. error <= 1e-7",
    provenance="RECON+DERIVED",
    mutants={
        "unsymmetrised −2εM G_tᵀG_{t−1}": {"objective": _Formula(_unsymmetrised)},
        "Mᵀ(…) instead of M(…) (square M)": {
            "objective": _Formula(_transposed_factor),
            "layouts": SQUARE_LAYOUTS,
        },
        "sign flipped": {"objective": _Negated()},
    },
)
def fop_3(
    objective: Objective = HYPERGRADIENT,
    layouts: Sequence[str] = LAYOUTS,
    draws: int = 2,
    eps: float = 0.3,
    h: float = 1e-6,
    seed: int = 3,
) -> Outcome:
    """FOP-3 (Moskovitz 2019, Eqs. 3–4): the hypergradient of `Preconditioned`, `draws` drawn cases
    per layout (see `_draw_case` and `_hyper_case`).

    J = ½Σlog(1 + (X vec W − y)²), a random non-symmetric M set as φ₀; the meta-gradient recorded at the
    second step (the first hyper-step) is compared with the closed form, autograd and central
    differences of the densely computed loss after the step.
    """
    gen, out = generator(seed), Measures()
    cases = [_draw_case(layout, gen) for layout in layouts for _ in range(draws)]
    errs = [_hyper_case(objective, case, eps, h, gen) for case in cases]
    worst = {key: max(e[key] for e in errs) for key in errs[0]}
    out.at_most("max rel. error, Preconditioned's hypergradient vs closed form", worst["closed"], E_RTOL)
    out.at_most("max rel. error, hypergradient vs autograd of J(θ − εG·P(M))", worst["autograd"], E_RTOL)
    out.at_most("max rel. error, hypergradient vs central differences", worst["fd"], 1e-7)
    out.at_most("max rel. error, Preconditioned's θ₁ vs dense θ₀ − εG₀P", worst["step"], E_RTOL)
    out.details["cases"] = [f"{c.layout} {c.shape}" + (f" r={c.rank}" if c.rank else "") for c in cases]
    return out.outcome()


# ----- FOP-4: PSD of MᵀM, the determinant recursion and when PD is preserved -----


def _sum_family() -> Family:
    """Mutant family: P = Mᵀ I_{r×n} + I_{r×n}ᵀ M (M + Mᵀ for square M), symmetric but indefinite."""

    def form(phi: pa.Structure) -> pa.Structure:
        E = torch.eye(*phi.A.shape, dtype=phi.A.dtype)
        return pa.Dense(phi.A.mT @ E + E.mT @ phi.A)

    return dataclasses.replace(dense_gram(), form=form, hyper_vjp=None)


def _unsymmetrised_vjp_family() -> Family:
    """Mutant family (a library bug): `dense_gram` whose closed-form VJP of M ↦ MᵀMu with cotangent c
    is 2M u cᵀ instead of M(u cᵀ + c uᵀ)."""
    return dataclasses.replace(dense_gram(), hyper_vjp=lambda phi, u, c: pa.Dense(2 * phi.A @ u @ c.mT))


def sgd_on_m(rho: float) -> TorchOptimizer:
    """Plain SGD on M, M ← M − ρ∇_M (the hyper-update FOP-4(b) is stated for)."""
    return TorchOptimizer(torch.optim.SGD, lr=rho)


def _adam_on_m(rho: float) -> TorchOptimizer:
    """Mutant fitter: Adam on M (the paper's experimental hyper-optimizer) with lr ρ."""
    return TorchOptimizer(torch.optim.Adam, lr=rho)


def _psd_any_shape(family: Family, gen: torch.Generator, draws: int) -> tuple[float, float]:
    """(a): worst asymmetry and worst λ_min(P)/‖M‖₂² of P = family.form(Dense(M)) over random M of
    shapes r×n, r, n ∈ [1, 8], entries scaled by 10^U(−2, 2)."""
    asym, lam = 0.0, math.inf
    for _ in range(draws):
        r, n = (int(v) for v in torch.randint(1, 9, (2,), generator=gen))
        M = torch.randn(r, n, generator=gen) * 10 ** (4 * torch.rand((), generator=gen) - 2)
        P = dense_of(family.form(pa.Dense(M)))
        asym = max(asym, sym_err(P))
        lowest = float(torch.linalg.eigvalsh((P + P.mT) / 2)[0])
        lam = min(lam, lowest / float(torch.linalg.matrix_norm(M, 2)) ** 2)
    return asym, lam


def _engine(engine: dict[str, Any], rho: float) -> dict[str, Any]:
    """`Preconditioned`'s choices for FOP-4: ``engine["family"]`` on a vector (Flatten), a fresh
    ``engine["objective"]()`` and ``engine["fitter"](ρ)``."""
    return {
        "structure": engine["family"],
        "placement": Flatten(),
        "objective": engine["objective"](),
        "fitter": engine["fitter"](rho),
    }


@dataclasses.dataclass(frozen=True)
class _VectorProblem:
    """J(θ) = ½Σlog(1 + (Xθ − y)²) with X (n + 4)×n, θ₀, and B = (½‖X‖₂√(n + 4))² >= ‖∇J‖² everywhere
    (|r/(1 + r²)| <= ½), so that ρεB < ½ gives ρε‖g_t‖‖g_{t−1}‖ < ½ at every step."""

    J: Callable[[torch.Tensor], torch.Tensor]
    theta0: torch.Tensor
    bound: float


def _vector_problem(n: int, gen: torch.Generator) -> _VectorProblem:
    """A drawn FOP-4 problem of size n."""
    X, y = torch.randn(n + 4, n, generator=gen), torch.randn(n + 4, generator=gen)
    bound = (0.5 * float(torch.linalg.matrix_norm(X, 2)) * (n + 4) ** 0.5) ** 2
    return _VectorProblem(_loss(X, y), torch.randn(n, generator=gen), bound)


def _ab(g: torch.Tensor, g_prev: torch.Tensor) -> tuple[float, float]:
    """a = g_t·g_{t−1} and b = ‖g_t‖‖g_{t−1}‖ (FOP-4(b))."""
    return float(g @ g_prev), float(g.norm() * g_prev.norm())


def _lambda_min(family: Family, M: torch.Tensor) -> float:
    """λ_min of the symmetric part of the dense P = family.form(Dense(M))."""
    P = dense_of(family.form(pa.Dense(M)))
    return float(torch.linalg.eigvalsh((P + P.mT) / 2)[0])


def _fop4_run(
    prob: _VectorProblem, engine: dict[str, Any], rho: float, eps: float, steps: int, fd_steps: int, h: float
) -> dict[str, float]:
    """(b) and (d) on one drawn problem: `steps` steps of ``Preconditioned([θ], ε, family, Flatten(),
    objective, fitter(ρ), base "sgd")`` from M₀ = I (`engine` holds family, fitter and objective).

    At each recorded hyper-step k (M_k, ∇_k; g_{k−1} = ∇J(θ_k), g_k = ∇J(θ_{k+1}) by autograd at the
    optimizer's θ's) it measures: ∇_k against autograd (and, for the first `fd_steps`, central
    differences) of M ↦ J(θ_k − εMᵀM g_{k−1}); M_{k+1} against the SGD step M_k − ρ∇_k; θ_{k+2} against
    θ_{k+1} − εM_{k+1}ᵀM_{k+1}g_k; det M_{k+1} against det M_k(1+ρε(a+b))(1+ρε(a−b)); ρεb; and
    λ_min(P_{k+1}) over its floor (1 − ρε(b − a))²λ_min(P_k).
    """
    thetas, calls, _ = _fitted_run(prob.J, prob.theta0, steps, eps, **_engine(engine, rho))
    family = engine["family"]
    grads = [torch.func.grad(prob.J)(theta) for theta in thetas]
    worst = {"auto": 0.0, "fd": 0.0, "sgd": 0.0, "step": 0.0, "det": 0.0, "cond": 0.0, "floor": math.inf}
    for k, ((M, ours), (M_next, _)) in enumerate(zip(calls, calls[1:])):
        g_prev, g = grads[k], grads[k + 1]

        def after_step(M_: torch.Tensor, theta=thetas[k], g_prev=g_prev) -> torch.Tensor:
            return prob.J(theta - eps * (M_.mT @ (M_ @ g_prev)))

        worst["auto"] = max(worst["auto"], rel_err(ours, torch.func.grad(after_step)(M)))
        if k < fd_steps:
            worst["fd"] = max(worst["fd"], rel_err(ours, central_diff(after_step, M, h)))
        worst["sgd"] = max(worst["sgd"], rel_err(M_next, M - rho * ours))
        step = thetas[k + 1] - eps * (M_next.mT @ (M_next @ g))
        worst["step"] = max(worst["step"], rel_err(thetas[k + 2], step))
        a, b = _ab(g, g_prev)
        predicted = torch.linalg.det(M) * (1 + rho * eps * (a + b)) * (1 + rho * eps * (a - b))
        worst["det"] = max(
            worst["det"], float((torch.linalg.det(M_next) - predicted).abs() / predicted.abs())
        )
        worst["cond"] = max(worst["cond"], rho * eps * b)
        floor = (1 - rho * eps * (b - a)) ** 2 * _lambda_min(family, M)
        worst["floor"] = min(worst["floor"], _lambda_min(family, M_next) / floor)
    return worst


def _counter_example(prob: _VectorProblem, engine: dict[str, Any], eps: float) -> float:
    """(c): with ρ = 1/(ε(b − a)) for g₀ = ∇J(θ₀), g₁ = ∇J(θ₀ − εg₀) (autograd; M₀ = I), two steps of
    the optimizer of `_fop4_run`: |λ|_min/|λ|_max of the P it holds after the first hyper-step."""
    g0 = torch.func.grad(prob.J)(prob.theta0)
    a, b = _ab(torch.func.grad(prob.J)(prob.theta0 - eps * g0), g0)
    rho = 1.0 / (eps * (b - a))
    *_, opt = _fitted_run(prob.J, prob.theta0, 2, eps, **_engine(engine, rho))
    eig = torch.linalg.eigvals(dense_of(opt.preconditioners()[0][1])).abs()
    return float(eig.min() / eig.max())


@check(
    id="FOP-4",
    paper="FOP Eqs. 2-4 (Moskovitz 2019)",
    statement=(
        "For dense_gram P = MᵀM: P is symmetric PSD for any M (24 drawn shapes); through Preconditioned "
        "(Flatten, Hypergradient, plain SGD on M, base SGD) on 3 drawn problems, its hypergradient is the "
        "gradient of M ↦ J(θ_{t−1} − εMᵀMg_{t−1}) (autograd, central differences), its M_t is the SGD "
        "step, det M_t = det M_{t−1}(1+ρε(a+b))(1+ρε(a−b)), P is singular after a step with ρε(b−a) = 1, "
        "and while ρεb < ½, λ_min(P_t) >= (1−ρε(b−a))²·λ_min(P_{t−1}) > 0; a = g_t·g_{t−1}, "
        "b = ‖g_t‖‖g_{t−1}‖."
    ),
    tolerance=(
        f"{E_TOL}; central FD (h = 1e-6) rel. error <= 1e-7; λ_min >= -1e-12‖M‖²; counter-example "
        "|λ|_min/|λ|_max <= 1e-10; λ_min floor: ratio >= 1 − 1e-10"
    ),
    provenance="PAPER+DERIVED",
    mutants={
        "P = M + Mᵀ (family)": {"family": _sum_family},
        "Adam on M while asserting the SGD determinant recursion": {"fitter": _adam_on_m},
        "dense_gram's closed-form VJP unsymmetrised, 2Mucᵀ": {"family": _unsymmetrised_vjp_family},
        "hypergradient sign flipped (objective)": {"objective": _Negated},
    },
)
def fop_4(
    family: Callable[[], Family] = dense_gram,
    fitter: Callable[[float], TorchOptimizer] = sgd_on_m,
    objective: Callable[[], Objective] = Hypergradient,
    draws: int = 3,
    eps: float = 0.1,
    steps: int = 20,
    seed: int = 4,
) -> Outcome:
    """FOP-4 (Moskovitz 2019, Eqs. 2–4): (a) PSD for any shape, (b) the determinant recursion under SGD
    on M, (c) the constructed singular counter-example, (d) under ρε‖g_t‖‖g_{t−1}‖ < ½ the per-step floor
    λ_min(P_t) ≥ (1 − ρε(b − a))²·λ_min(P_{t−1}) > 0, all on `Preconditioned`'s own hypergradient and
    SGD step on M (see `_fop4_run`, `_counter_example`).

    The floor: M_t = M_{t−1}(I + ρεS) with S = g_{t−1}g_tᵀ + g_tg_{t−1}ᵀ, whose eigenvalues are a ± b
    and 0, so σ_min(M_t) ≥ (1 − ρε(b − a))·σ_min(M_{t−1}).  Drawn: n ∈ [2, 8] and ρ with ρεB drawn
    log-uniformly in [0.02, 0.49] (B of `_VectorProblem`), `steps` steps per problem.
    """
    gen, out, fam = generator(seed), Measures(), family()
    engine = {"family": fam, "fitter": fitter, "objective": objective}
    asym, lam_a = _psd_any_shape(fam, gen, draws=24)
    worst: dict[str, float] = {}
    singular = 0.0
    for _ in range(draws):
        prob = _vector_problem(int(torch.randint(2, 9, (), generator=gen)), gen)
        frac = 10 ** (math.log10(0.02) + math.log10(0.49 / 0.02) * float(torch.rand((), generator=gen)))
        run = _fop4_run(prob, engine, frac / (eps * prob.bound), eps, steps, fd_steps=2, h=1e-6)
        worst = {k: (min if k == "floor" else max)(v, worst.get(k, v)) for k, v in run.items()}
        singular = max(singular, _counter_example(prob, engine, eps))
    out.at_least("(a) min λ_min(P)/‖M‖₂² over 24 shapes", lam_a, -E_ATOL)
    out.at_most("(a) max asymmetry of P", asym, E_RTOL)
    out.at_most(
        "max rel. error, Preconditioned's hypergradient vs autograd of J after the step",
        worst["auto"],
        E_RTOL,
    )
    out.at_most(
        "max rel. error, hypergradient vs central differences (first 2 hyper-steps)", worst["fd"], 1e-7
    )
    out.at_most("max rel. error, M_t vs the SGD step M_{t−1} − ρ∇", worst["sgd"], E_RTOL)
    out.at_most("max rel. error, θ_t vs θ_{t−1} − εM_tᵀM_t g_{t−1}", worst["step"], E_RTOL)
    out.at_most(
        f"(b) max rel. error of the det recursion ({draws}×{steps - 2} hyper-steps)", worst["det"], E_RTOL
    )
    out.at_most("(c) |λ|_min/|λ|_max of P_1 at ρε(b−a) = 1", singular, E_RTOL)
    out.add("(d) max ρε‖g_t‖‖g_{t−1}‖ (precondition)", worst["cond"], "<", 0.5)
    out.at_least("(d) min_t λ_min(P_t) / [(1 − ρε(b−a))²·λ_min(P_{t−1})]", worst["floor"], 1 - E_RTOL)
    return out.outcome()


# ----- FOP-5: low-rank FOP, P = I + MᵀM -----


def _low_rank_draw(gen: torch.Generator) -> tuple[int, int, float]:
    """A FOP-5 draw: n ∈ [2, 16], r ∈ [1, n − 1] and σ log-uniform in [1e-3, 1e-1] (below 1e-3 the
    round-off of the dense I + MᵀM − I, ~1e-16, is more than 1e-10 of ‖M₀‖₂²: a float64 limit)."""
    n = int(torch.randint(2, 17, (), generator=gen))
    r = int(torch.randint(1, n, (), generator=gen))
    return n, r, 10 ** (-3 + 2 * float(torch.rand((), generator=gen)))


def _gram_without_identity(rank: int, std: float = 1e-3) -> Family:
    """Mutant: `low_rank_gram`'s init with P = MᵀM (rank r < n, so λ_min(P) = 0)."""
    return dataclasses.replace(low_rank_gram(rank, std), form=pa.gram)


@check(
    id="FOP-5",
    paper="FOP §2.2, Eq. 5 reconstructed (Moskovitz 2019)",
    statement=(
        "Properties of low_rank_gram(r, σ), P = I + MᵀM (M r×n; 4 drawn n ∈ [2, 16], r < n, σ ∈ "
        "[1e-3, 1e-1]), at the init and at a random M: "
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
    instances: int = 4,
    draws: int = 300,
    seed: int = 5,
) -> Outcome:
    """FOP-5 (Moskovitz 2019, §2.2): `low_rank_gram(r, σ)` for `instances` drawn (n, r, σ)
    (`_low_rank_draw`; the FOP preset's default `low_rank_std` is 1e-3).

    (a), (b) and (d) use the init M₀ and a far-from-init M with N(0, 1) entries; (c) the init, once for the
    identity and `draws` times for the Monte-Carlo mean of ‖M₀‖₂ (Gordon's bound; z = (mean − bound)/se)
    and for the std of the entries (z against σ, se = σ/√(2N)).
    """
    gen, out = generator(seed), Measures()
    like = torch.empty(())
    rank_excess, lam, norm_err, z, std_z, mv_err, cost_err = -math.inf, math.inf, 0.0, -math.inf, 0.0, 0.0, 0
    for n, r, sigma in (_low_rank_draw(gen) for _ in range(instances)):
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
        out.details[f"E‖M₀‖₂/σ(√r+√n), n={n}, r={r}, σ={sigma:.2e}"] = float(norms.mean() / bound)
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


def _norm_draw(gen: torch.Generator) -> tuple[tuple[int, int], float]:
    """A FOP-6 draw: W (o, n), o ∈ [1, 4], n ∈ [2, 8], and c log-uniform in [0.1, 10]."""
    shape = (int(torch.randint(1, 5, (), generator=gen)), int(torch.randint(2, 9, (), generator=gen)))
    return shape, 10 ** (2 * float(torch.rand((), generator=gen)) - 1)


def _norm_case(
    fam: Family, shape: tuple[int, int], c: float, eps: float, rho: float, steps: int, gen
) -> dict:
    """One FOP-6 (b)–(c) draw on W of `shape` (see `fop_6`): the relative differences of the trajectories
    and of the final P, and how far P moved."""
    J, W0 = _tensor_loss(shape, gen), torch.randn(shape, generator=gen)
    base_run, P_base = _fop_norm_run(fam, W0, J, eps, rho, steps)
    scaled_run, P_scaled = _fop_norm_run(_scaled_init(fam, c), W0, J, eps, rho, steps)
    fixed_run, _ = _fop_norm_run(_scaled_init(fam, c), W0, J, eps, 0.0, steps)
    W = _leaf(W0)
    gd_run = _trajectory([W], lambda: J(W), torch.optim.SGD([W], lr=eps), steps)
    n = shape[1]
    return {
        "theta": _trajectory_err(scaled_run, base_run),
        "P": rel_err(P_scaled, P_base),
        "moved": float(torch.linalg.matrix_norm(P_base - torch.eye(n)) / n**0.5),
        "sgd": _trajectory_err(fixed_run, gd_run),
    }


@check(
    id="FOP-6",
    paper="FOP App. A.1 (Moskovitz 2019)",
    statement=(
        "Identity and invariance of FOP-norm P = √n·MᵀM/‖MᵀM‖_F (normalized_dense_gram): ‖P‖_F = √n "
        "(random M); through Preconditioned with the plain MᵀM hypergradient and SGD on M, the 50-step "
        "trajectory from M₀ = c·I equals that from M₀ = I (2 drawn W (o, n), c ∈ [0.1, 10]); with ρ = 0 "
        "(P = I) it equals torch.optim.SGD."
    ),
    tolerance=f"{E_TOL}; trajectories: rel. difference <= 1e-12",
    provenance="RECON+DERIVED",
    mutants={"normalised by ‖M‖_F instead of ‖MᵀM‖_F": {"family": _norm_by_m_frobenius}},
)
def fop_6(
    family: Callable[[], Family] = normalized_dense_gram,
    draws: int = 2,
    eps: float = 0.1,
    rho: float = 0.5,
    steps: int = 50,
    seed: int = 6,
) -> Outcome:
    """FOP-6 (Moskovitz 2019, App. A.1): (a) ‖P‖_F over random square M, n = 1..8;
    (b) 50 steps of `Preconditioned(normalized_dense_gram(), InputSide(), SGD(ρ) on M, base "sgd")`
    on `draws` drawn W (o, n), from M₀ = I and from M₀ = c·I (`_norm_draw`); (c) from M₀ = c·I with
    ρ = 0 (P = I throughout) vs torch.optim.SGD.
    """
    gen, out = generator(seed), Measures()
    fam = family()
    norm_err = 0.0
    for n in (1, 2, 3, 5, 8):
        P = dense_of(fam.form(pa.Dense(torch.randn(n, n, generator=gen))))
        norm_err = max(norm_err, abs(float(torch.linalg.matrix_norm(P)) - n**0.5) / n**0.5)
    drawn = [_norm_draw(gen) for _ in range(draws)]
    cases = [_norm_case(fam, shape, c, eps, rho, steps, gen) for shape, c in drawn]
    out.at_most("(a) max rel. error, ‖√n·MᵀM/‖MᵀM‖_F‖_F vs √n", norm_err, E_RTOL)
    out.at_most(
        f"(b) max rel. difference of θ_t, M₀ = c·I vs I ({steps} steps)",
        max(k["theta"] for k in cases),
        1e-12,
    )
    out.at_most(f"(b) max rel. difference of P_{steps}, M₀ = c·I vs I", max(k["P"] for k in cases), 1e-12)
    out.at_least(
        f"(b) min ‖P_{steps} − I‖_F/√n (P has moved: a non-trivial run)", min(k["moved"] for k in cases), 0.05
    )
    out.at_most(
        f"(c) max rel. difference of θ_t, P = I (ρ = 0) vs torch.optim.SGD ({steps} steps)",
        max(k["sgd"] for k in cases),
        E_RTOL,
    )
    out.details["draws (shape, c)"] = [[list(shape), c] for shape, c in drawn]
    return out.outcome()


# ----- FOP-7: FOP with momentum -----

MU = 0.9
"""FOP-7's heavy-ball momentum μ (the paper's 0.9)."""
HYPER_LR = 1e-2
"""FOP-7's Adam learning rate on M (larger than the paper's 1e-4, so that M moves in a few steps)."""


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


def _fop_variant(objective: Objective, position: str = "gradient") -> Callable[..., Preconditioned]:
    """A mutant FOP preset: FOP's choices for one weight or conv kernel with another objective or
    position (a library bug in the preset)."""

    def make(params: Any, lr: float, momentum: float, hyper_lr: float) -> Preconditioned:
        return Preconditioned(
            params,
            lr,
            structure=dense_gram(),
            placement=lambda shape: {2: InputSide(), 4: Spatial()}.get(len(shape)),
            objective=objective,
            fitter=TorchOptimizer(torch.optim.Adam, lr=hyper_lr),
            base="momentum",
            momentum=momentum,
            position=position,
        )

    return make


def _through_velocity_preset() -> Callable[..., Preconditioned]:
    """Mutant preset: FOP whose hypergradient also goes through v_{t−1} (`_ThroughVelocity`)."""
    return _fop_variant(_ThroughVelocity())


def _after_momentum_preset() -> Callable[..., Preconditioned]:
    """Mutant preset: FOP with P applied after the momentum rule, W ← W − αP(μb + G)."""
    return _fop_variant(Hypergradient(), position="direction")


def fop_preset() -> Callable[..., Preconditioned]:
    """The `FOP` preset (FOP-7 takes a factory: a mutant preset may hold per-run state)."""
    return FOP


def _momentum_reference(
    J: Callable[[torch.Tensor], torch.Tensor], W0: torch.Tensor, n: int, eps: float, steps: int, through: bool
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """FOP with momentum (Eqs. 6–8), written densely: θ_{k+1} = θ_k − v_k with v_k = μv_{k−1} + εG_kP(M_k)
    (v_{−1} = 0, G_k = ∇J(θ_k) reshaped row-major to (·, n), P(M) = MᵀM), M₀ = I, and before each step
    k ≥ 1 one torch.optim.Adam step (lr `HYPER_LR`) on M with ``torch.func.grad`` of the loss after the
    previous step, D ↦ J(θ_{k−1} − v_{k−1}(D)), v_{k−1}(D) = μv_{k−2} + εG_{k−1}P(M_{k−1} + D).

    With `through` False, v_{k−2} is the constant of Eq. 8; with `through` True it moves with the same
    perturbation, v_{k−2}(D) = μv_{k−3} + εG_{k−2}P(M_{k−2} + D).

    Returns:
        θ_0..θ_steps, and the P(M_k) used at each step k = 0..steps−1.
    """
    M = torch.eye(n, requires_grad=True)
    adam = torch.optim.Adam([M], lr=HYPER_LR)
    thetas, Gs, Ms, vs = [W0], [], [], []

    def velocity(k: int, D: torch.Tensor, older: torch.Tensor | None = None) -> torch.Tensor:
        """v_k(D) = μ·older + εG_kP(M_k + D), `older` v_{k−1} as stored by default (0 for k < 0)."""
        if k < 0:
            return torch.zeros_like(W0)
        if older is None:
            older = vs[k - 1] if k else torch.zeros_like(W0)
        return fop_step(MU * older, Gs[k], Ms[k] + D, -eps, False)

    def after_step(D: torch.Tensor) -> torch.Tensor:
        k = len(Ms) - 1
        return J(thetas[k] - velocity(k, D, velocity(k - 1, D) if through else None))

    for k in range(steps):
        Gs.append(torch.func.grad(J)(thetas[k]))
        if k >= 1:
            M.grad = torch.func.grad(after_step)(torch.zeros(n, n))
            adam.step()
        Ms.append(M.detach().clone())
        vs.append(velocity(k, torch.zeros(n, n)))
        thetas.append(thetas[k] - vs[k])
    return thetas, [M_k.mT @ M_k for M_k in Ms]


def _momentum_case(fop: Callable[..., Any], shape: tuple[int, ...], eps: float, steps: int, gen) -> dict:
    """One FOP-7 draw: `fop` (the FOP preset, μ = 0.9, hyper_lr `HYPER_LR`) on one tensor of `shape`
    against `_momentum_reference` with v_{t−1} held constant and through v_{t−1}.

    Returns:
        The worst relative differences of θ_t and of P_t from the constant-v reference ("theta", "P")
        and the relative difference of the final P_t from the through-v reference ("through").
    """
    n = shape[1] if len(shape) == 2 else shape[2] * shape[3]
    J, W = _tensor_loss(shape, gen), _leaf(torch.randn(shape, generator=gen))
    W0 = W.detach().clone()
    opt = fop([W], lr=eps, momentum=MU, hyper_lr=HYPER_LR)
    thetas, Ps = [], []
    for _ in range(steps):
        (theta,) = _trajectory([W], lambda: J(W), opt, 1)[0]
        thetas.append(theta)
        Ps.append(dense_of(opt.preconditioners()[0][1]))
    ref_thetas, ref_Ps = _momentum_reference(J, W0, n, eps, steps, through=False)
    _, through_Ps = _momentum_reference(J, W0, n, eps, steps, through=True)
    return {
        "theta": max(rel_err(a, b) for a, b in zip(thetas, ref_thetas[1:])),
        "P": max(rel_err(a, b) for a, b in zip(Ps, ref_Ps)),
        "through": rel_err(Ps[-1], through_Ps[-1]),
    }


def _momentum_shape(gen: torch.Generator, conv: bool) -> tuple[int, ...]:
    """A drawn weight (o, n), o ∈ [1, 4], n ∈ [2, 8], or conv kernel (o, i, h, w), o, i ∈ [1, 3],
    h ∈ [1, 3], w ∈ [2, 3]."""

    def draw(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (), generator=gen))

    return (draw(1, 3), draw(1, 3), draw(1, 3), draw(2, 3)) if conv else (draw(1, 4), draw(2, 8))


@check(
    id="FOP-7",
    paper="FOP §2.4, Eqs. 6-8 (Moskovitz 2019)",
    statement=(
        "Identity: the FOP preset with momentum (μ = 0.9; 2 drawn weights, 1 drawn conv kernel) follows "
        "Eqs. 6-8 with v_{t−1} held constant in the hypergradient: its θ_t and P_t equal a dense "
        "reference (v_t = μv_{t−1} + εG_{t−1}MᵀM, θ_t = θ_{t−1} − v_t, Adam on M with the autograd "
        "gradient of J(θ_t(M)), v_{t−1} detached); they differ from the reference whose hypergradient "
        "goes through v_{t−1}."
    ),
    tolerance=f"{E_TOL}; the difference from the gradient through v_{{t−1}}: final P, rel. >= 1e-3",
    provenance="RECON+DERIVED",
    mutants={
        "hypergradient through v_{t−1} (objective)": {"fop": _through_velocity_preset},
        "P applied after the momentum rule (position 'direction')": {"fop": _after_momentum_preset},
    },
)
def fop_7(
    fop: Callable[[], Callable[..., Any]] = fop_preset,
    eps: float = 0.1,
    steps: int = 8,
    seed: int = 7,
) -> Outcome:
    """FOP-7 (Moskovitz 2019, §2.4, Eqs. 6–8): `FOP` against `_momentum_reference`, `steps` steps on
    each drawn tensor (see `_momentum_case`)."""
    gen, out = generator(seed), Measures()
    shapes = [_momentum_shape(gen, conv) for conv in (False, False, True)]
    cases = [_momentum_case(fop(), shape, eps, steps, gen) for shape in shapes]
    out.at_most(
        "max rel. difference of θ_t, FOP vs Eqs. 6-8 with v_{t−1} detached",
        max(c["theta"] for c in cases),
        E_RTOL,
    )
    out.at_most(
        "max rel. difference of P_t, FOP vs Eqs. 6-8 with v_{t−1} detached",
        max(c["P"] for c in cases),
        E_RTOL,
    )
    out.at_least(
        f"min rel. difference of P_{steps}, FOP vs the hypergradient through v_{{t−1}} (the approximation)",
        min(c["through"] for c in cases),
        1e-3,
    )
    out.details["shapes"] = [list(s) for s in shapes]
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


def _differing(run: list[list[torch.Tensor]], reference: list[list[torch.Tensor]]) -> int:
    """How many entries of two trajectories differ in any bit (over steps and parameters)."""
    return sum(int(torch.ne(a, b).sum()) for step, ref in zip(run, reference) for a, b in zip(step, ref))


@check(
    id="FOP-8",
    paper="FOP §2, Alg. 1 (Moskovitz 2019): 'begins as straightforward gradient descent'",
    statement=(
        "Identities of the FOP preset on 2 drawn conv + linear models: with M₀ = I (dense and spatial) its "
        "first step, and with hyper_lr = 0 its first 10 steps, equal torch.optim.SGD with momentum bit for "
        "bit; low-rank FOP with M₀ = σZ differs on its first step by exactly lr·G(P₀ − I) = lr·G·M₀ᵀM₀, "
        "so by exactly σ² times a constant (σ₁ drawn in [1e-2, 1e-1], σ₂ = σ₁/10)."
    ),
    tolerance=(
        f"bit for bit (torch.equal) for the trajectories; {E_TOL} (the first-step closed form and the "
        "σ² scaling)"
    ),
    provenance="PAPER+DERIVED",
    mutants={"M₀ with N(0, 1/n) entries": {"fop": _fop_gaussian_m0}},
)
def fop_8(
    fop: Callable[..., torch.optim.Optimizer] = FOP,
    lr: float = 0.05,
    rank: int = 2,
    nets: int = 2,
    steps: int = 10,
    seed: int = 8,
) -> Outcome:
    """FOP-8 (Moskovitz 2019, §2, Alg. 1): `FOP` on `nets` drawn conv + linear models (the kernel's taps
    get spatial FOP, the weight input-side FOP, the biases none) vs torch.optim.SGD(momentum = 0.9),
    compared with torch.equal: the first step with FOP's defaults (hyper_lr 1e-4), `steps` steps with
    hyper_lr = 0; and the first-step error of `FOP(rank=r, low_rank_std=σ)` for σ₁ and σ₂ = σ₁/10 (the
    same draw Z, scaled) against its closed form (see `_first_step_error`) and against the exact σ²
    scaling.  The error is a difference of two θ₁ of size ~0.3, so its round-off is ~1e-13 relative at
    σ = 1e-3, within class E.
    """
    gen, out = generator(seed), Measures()
    first_bits, many_bits, closed_err, scaling_err, per_sigma_sq = 0, 0, 0.0, 0.0, []
    for _ in range(nets):
        params0, J = _conv_net(gen)
        sigma = 10 ** (-2 + float(torch.rand((), generator=gen)))
        sigmas = (sigma, sigma / 10)
        first_bits += _differing(*_fop_vs_sgd(fop, params0, J, lr, 1))
        many_bits += _differing(*_fop_vs_sgd(fop, params0, J, lr, steps, hyper_lr=0.0))
        (big, big_closed), (small, small_closed) = (
            _first_step_error(fop, params0, J, lr, rank, s) for s in sigmas
        )
        closed_err = max(closed_err, abs(big / big_closed - 1), abs(small / small_closed - 1))
        scaling_err = max(scaling_err, abs(big / small / (sigmas[0] / sigmas[1]) ** 2 - 1))
        per_sigma_sq.append([big / sigmas[0] ** 2, small / sigmas[1] ** 2])
    out.equal("entries of θ₁ differing, FOP (M₀ = I, hyper_lr 1e-4) vs SGD-momentum", first_bits, 0)
    out.equal(f"entries of θ_t differing, FOP (hyper_lr 0) vs SGD-momentum ({steps} steps)", many_bits, 0)
    out.at_most(
        "low rank: max |first-step err / its closed form ‖G(P₀ − I)‖/‖g‖ − 1| (both σ)", closed_err, E_RTOL
    )
    out.at_most("low rank: max |err(σ₁)/err(σ₂) / (σ₁/σ₂)² − 1| (M₀ = σZ, the same Z)", scaling_err, E_RTOL)
    out.details["first-step err / σ² per model"] = per_sigma_sq
    return out.outcome()
