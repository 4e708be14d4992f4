"""FOP (Moskovitz 2019) theory checks: FOP-4, positive (semi)definiteness of P = MᵀM.

FOP preconditions θ_t = θ_{t−1} − ε P g_{t−1} with P = MᵀM (METHODS.md §1.1, Eq. 2) and learns M by
hypergradient descent on J(θ_t) (§1.2, Eqs. 3–4).  Here P is ``gram(Dense(M))`` and the
hypergradient is ``torch.func.grad`` through that structure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

import precondalg as pa
from theory_checks._numerics import E_ATOL, E_RTOL, E_TOL, dense_of, generator, min_eig_rel, sym_err
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
    """FOP's loop (METHODS.md §1.2–1.3): yields (M_{t−1}, M_t, g_{t−1}, g_t, ρ_t) for t = 1..steps.

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


def _stays_pd(J, theta, precond, hyper, eps: float, gen: torch.Generator, steps: int) -> tuple[float, float]:
    """FOP-4(d): max ρε‖g_t‖‖g_{t−1}‖ (kept < ½ by drawing ρ_t) and min_t λ_min(P_t)/λ_max(P_t)."""
    n = theta.shape[0]
    fractions = iter((0.49 * (0.2 + 0.8 * torch.rand(steps, generator=gen))).tolist())

    def rho_of(g: torch.Tensor, g_prev: torch.Tensor) -> float:
        return next(fractions) / (eps * _ab(g, g_prev)[1])

    worst_cond, lam = 0.0, math.inf
    for _, M, g_prev, g, rho in fop_run(J, theta, torch.eye(n), eps, rho_of, precond, hyper(), steps):
        worst_cond = max(worst_cond, rho * eps * _ab(g, g_prev)[1])
        lam = min(lam, min_eig_rel(dense_of(precond(M))))
    return worst_cond, lam


@check(
    id="FOP-4",
    paper="FOP Eqs. 2-4 (Moskovitz 2019)",
    statement=(
        "P = MᵀM is symmetric PSD for every M; with SGD hyper-updates det M_t = det M_{t−1}"
        "(1+ρε(a+b))(1+ρε(a−b)), so PD is lost exactly when ρε(b−a) = 1 and kept when ρεb < ½."
    ),
    tolerance=f"{E_TOL}; λ_min >= -1e-12‖M‖²; counter-example |λ_min|/λ_max <= 1e-10",
    provenance="PAPER+DERIVED",
    mutants={
        "P = M + Mᵀ": {"precond": _symmetric_sum},
        "Adam on M while asserting the SGD determinant recursion": {"hyper": adam},
    },
)
def fop_4(precond: Precond = fop_preconditioner, hyper: HyperOptimizer = sgd, seed: int = 4) -> Outcome:
    """FOP-4 (THEORY.md §2): (a) PSD for any shape, (b) the determinant recursion under SGD on M,
    (c) the constructed singular counter-example, (d) PD kept under ρε‖g_t‖‖g_{t−1}‖ < ½.

    J is ½Σlog(1 + (Xθ − y)²) with X 8×4, ε = 0.1; (b) uses ρ = 0.5 for 25 steps, (d) 30 steps.
    """
    gen, out = generator(seed), Measures()
    X, y = torch.randn(8, 4, generator=gen), torch.randn(8, generator=gen)
    J, theta = _loss(X, y), torch.randn(4, generator=gen)
    asym, lam_a = _psd_any_shape(precond, gen, draws=24)
    det_err = _det_recursion(J, theta, precond, hyper, eps=0.1, rho=0.5, steps=25)
    singular = _counter_example(J, theta, precond, hyper, eps=0.1)
    worst_cond, lam_d = _stays_pd(J, theta, precond, hyper, eps=0.1, gen=gen, steps=30)
    out.at_least("(a) min λ_min(MᵀM)/‖M‖₂² over 24 shapes", lam_a, -E_ATOL)
    out.at_most("(a) max asymmetry of P", asym, E_RTOL)
    out.at_most("(b) max rel. error of the det recursion (25 steps)", det_err, E_RTOL)
    out.at_most("(c) |λ_min(P_1)|/λ_max(P_1) at ρε(b−a) = 1", singular, E_RTOL)
    out.add("(d) max ρε‖g_t‖‖g_{t−1}‖ (precondition)", worst_cond, "<", 0.5)
    out.positive("(d) min_t λ_min(P_t)/λ_max(P_t) (30 steps)", lam_d)
    return out.outcome()
