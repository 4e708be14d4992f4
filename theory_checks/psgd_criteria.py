"""PSGD (Li 2019) theory checks on the criteria and their closed forms: PSGD-1 (the optimum of Eq. 8),
PSGD-2 (noise damping, eigenvalues of PH in [−1, 1]), PSGD-3 (the scalar case, Eqs. 15–16), PSGD-4
(Hessian-vector products, Eq. 9), PSGD-5 (the Fisher-type closed form, Eqs. 11–14), PSGD-6 (the
stationary points of the Newton criterion, §3.3), PSGD-7 (the relative gradient on the group, Eqs.
17–18) and PSGD-13 (the diagonal closed forms of §6.1–6.2: RMSProp/Adam and equilibrated SGD).

Every closed form is compared with precondalg's own criterion ``criterion(P, h, v) = Σ hᵀPh + vᵀP⁻¹v``
(`precondalg.objectives.criterion`), evaluated on precondalg structures, and with an independent
minimiser of it (L-BFGS over a Cholesky factor, BFGS over log p, random perturbations, its gradient and
Hessian by `torch.func`).  Expectations over v ~ N(0, I) are taken exactly where a check says "exact
expectation": the criterion is quadratic in v, so its mean over the 2n points v = ±√n·eᵢ (whose first
and second moments are those of N(0, I)) is its expectation.  The Hessian-vector products of PSGD-4 come
from the `Newton` objective itself; PSGD-3, PSGD-7 and PSGD-13 step with the `LieGroup` fitter on the
`Newton` criterion's gradient, and PSGD-3 runs the `Preconditioned` optimizer.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import scipy.optimize
import torch
import torch.utils._pytree as pytree

import precondalg as pa
from precondalg.families import diagonal_gram
from precondalg.fitters import LieGroup
from precondalg.objectives import (
    BlockContext,
    Evaluation,
    Fisher,
    Newton,
    closed_form_relative_gradient,
    criterion,
)
from precondalg.optim import Preconditioned
from precondalg.optim.base_rules import BASE_RULES
from precondalg.placement import Flatten
from theory_checks._numerics import E_ATOL, E_RTOL, E_TOL, generator, log_uniform, rel_err, sym_err
from theory_checks.psgd import diag_kind, kron_kind, normalization_kind, triu_kind
from theory_checks.registry import Measures, Outcome, check

S_RTOL = 1e-6
"""Class S (solved by an optimizer): relative error of an argmin found by L-BFGS/BFGS."""
S_TOL = "S: rel. error <= 1e-6"
MC_SIGMAS = 5.0
"""Class MC: |estimate − truth| <= 5 standard errors."""
NEWTON = Newton()
"""precondalg's Newton-type criterion (its `meta_grad` is ∂c/∂φ through P_φ = form(φ))."""


# ----- random matrices (float64, seeded) -----


def haar(n: int, gen: torch.Generator) -> torch.Tensor:
    """A Haar-distributed n×n orthogonal matrix (QR of a Gaussian with the sign fix)."""
    Q, R = torch.linalg.qr(torch.randn(n, n, generator=gen))
    return Q * torch.sign(torch.diagonal(R))


def _from_eigen(U: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    return (U * lam) @ U.mT


def sym_indefinite(n: int, gen: torch.Generator, negatives: int | None = None) -> torch.Tensor:
    """A symmetric indefinite n×n H: eigenvalue magnitudes log-uniform in [0.1, 10], `negatives` of
    them negative (drawn in [1, n − 1] when None), Haar eigenvectors."""
    k = int(torch.randint(1, n, (1,), generator=gen)) if negatives is None else negatives
    signs = torch.cat([-torch.ones(k), torch.ones(n - k)])
    return _from_eigen(haar(n, gen), log_uniform((n,), -1, 1, gen) * signs)


def spd(n: int, gen: torch.Generator, lo: float = -1.0, hi: float = 1.0) -> torch.Tensor:
    """A symmetric positive-definite n×n matrix with eigenvalues log-uniform in [10^lo, 10^hi]."""
    return _from_eigen(haar(n, gen), log_uniform((n,), lo, hi, gen))


def psd_noise(n: int, gen: torch.Generator, scale: float) -> torch.Tensor:
    """A random noise covariance Σ = GGᵀ with G n×n Gaussian of entries N(0, scale²/n)."""
    G = torch.randn(n, n, generator=gen) * (scale / n**0.5)
    return G @ G.mT


def matrix_function(M: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """fn applied to the eigenvalues of the symmetric M (principal branch for roots)."""
    lam, U = torch.linalg.eigh((M + M.mT) / 2)
    return _from_eigen(U, fn(lam))


def sigma_points(n: int) -> torch.Tensor:
    """The 2n columns ±√n·eᵢ (n × 2n): their mean is 0 and their mean outer product is I, so the mean
    over them of a function quadratic in v is its expectation under v ~ N(0, I)."""
    e = torch.eye(n) * n**0.5
    return torch.cat([e, -e], 1)


def random_symmetric(n: int, gen: torch.Generator) -> torch.Tensor:
    """A random symmetric matrix of spectral norm 1."""
    E = torch.randn(n, n, generator=gen)
    E = E + E.mT
    return E / torch.linalg.matrix_norm(E, 2)


# ----- the criterion on moments (PSGD-1, PSGD-2, PSGD-5) -----


class Moments(NamedTuple):
    """The second moments of the pairs (δθ, δĝ) in Eq. 7: A = E[δĝδĝᵀ], B = E[δθδθᵀ] and the cross
    moment C = E[δθδĝᵀ]."""

    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor


def linear_moments(H: torch.Tensor, B: torch.Tensor, Sigma: torch.Tensor) -> Moments:
    """The moments for δĝ = Hδθ + ε (Eq. 6), ε zero-mean with covariance Σ and uncorrelated with δθ:
    A = HBH + Σ, C = BH (H symmetric)."""
    return Moments(H @ B @ H + Sigma, B, B @ H)


def optimal_preconditioner(m: Moments) -> torch.Tensor:
    """The positive definite solution of P A P = B (Eq. 8): P = A^{-1/2}(A^{1/2} B A^{1/2})^{1/2}A^{-1/2}
    (the matrix geometric mean of A⁻¹ and B), with principal roots."""
    root, inv_root = matrix_function(m.A, torch.sqrt), matrix_function(m.A, torch.rsqrt)
    return inv_root @ matrix_function(root @ m.B @ root, torch.sqrt) @ inv_root


def _secant_preconditioner(m: Moments) -> torch.Tensor:
    """Mutant: the least-squares secant estimate P = E[δθδĝᵀ]E[δĝδĝᵀ]⁻¹ (H⁻¹ when noiseless: a
    solution of PAP = B, but not positive definite for an indefinite H)."""
    return torch.linalg.solve(m.A, m.C.mT).mT


def _inverse_preconditioner(m: Moments) -> torch.Tensor:
    """Mutant: P⁻¹ in place of P (the geometric mean of A and B⁻¹)."""
    return torch.linalg.inv(optimal_preconditioner(m))


def _commuting_preconditioner(m: Moments) -> torch.Tensor:
    """Mutant: the commuting-case shortcut P = A^{-1/2}B^{1/2} (right only when A and B commute)."""
    return matrix_function(m.A, torch.rsqrt) @ matrix_function(m.B, torch.sqrt)


def _ignores_b(m: Moments) -> torch.Tensor:
    """Mutant: P = A^{-1/2}, the optimum for B = I only (it ignores E[δθδθᵀ])."""
    return matrix_function(m.A, torch.rsqrt)


def _factor(M: torch.Tensor) -> torch.Tensor:
    """The Cholesky factor L of an SPD M (its columns satisfy Σ_k l_k l_kᵀ = M)."""
    return torch.linalg.cholesky((M + M.mT) / 2)


def expected_criterion(P: torch.Tensor, m: Moments) -> torch.Tensor:
    """c(P) = tr(PA) + tr(P⁻¹B) (Eq. 7 in expectation), evaluated by precondalg's criterion on the
    structure Dense(P) with h and v the Cholesky factors of A and B."""
    return criterion(pa.Dense(P), _factor(m.A), _factor(m.B))


def criterion_gradient(P: torch.Tensor, h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """∂c/∂P of precondalg's criterion c = Σ hᵀPh + vᵀP⁻¹v on Dense(P), by `torch.func.grad`."""
    return torch.func.grad(lambda X: criterion(pa.Dense(X), h, v))(P)


def perturbation_gap(
    c: Callable[[torch.Tensor], torch.Tensor], P: torch.Tensor, gen: torch.Generator, draws: int, t: float
) -> float:
    """min over `draws` random symmetric E of (c(P + tE) − c(P))/|c(P)|, with E scaled to spectral norm
    λ_min(P) (so that P + tE stays positive definite whenever P is)."""
    n = P.shape[0]
    c0 = c(P)
    lam = torch.linalg.eigvalsh((P + P.mT) / 2).abs().min()
    gaps = [c(P + t * lam * random_symmetric(n, gen)) - c0 for _ in range(draws)]
    return float(torch.stack(gaps).min() / c0.abs())


def lbfgs_minimiser(c: Callable[[torch.Tensor], torch.Tensor], n: int) -> torch.Tensor:
    """argmin of c(P) over positive definite P = LLᵀ, by torch's L-BFGS (strong Wolfe line search) on
    the lower-triangular L, from L = I: an independent minimiser of the criterion."""
    L = torch.eye(n).requires_grad_(True)
    opt = torch.optim.LBFGS(
        [L], lr=1, max_iter=2000, tolerance_grad=1e-13, tolerance_change=0.0, history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        T = torch.tril(L)
        value = c(T @ T.mT)
        value.backward()
        return value

    opt.step(closure)
    T = torch.tril(L.detach())
    return T @ T.mT


def _lambda_range(P: torch.Tensor) -> tuple[float, float]:
    lam = torch.linalg.eigvalsh((P + P.mT) / 2)
    return float(lam[0]), float(lam[-1])


# ----- PSGD-1 -----


Optimal = Callable[[Moments], torch.Tensor]


def _psgd1_noisy(
    optimal: Optimal, gen: torch.Generator, cases: int, perturbed: int, solved: int
) -> dict[str, float]:
    """The noisy case over `cases` draws: worst Riccati residual, asymmetry, PD floor and ceiling
    ratios, criterion gradient; perturbation gap and L-BFGS error on the first draws."""
    worst = {"riccati": 0.0, "asym": 0.0, "floor": math.inf, "ceiling": 0.0, "grad": 0.0,
             "gap": math.inf, "lbfgs": 0.0}
    for i in range(cases):
        n = 2 + i % 5
        H, B = sym_indefinite(n, gen), spd(n, gen)
        m = linear_moments(H, B, psd_noise(n, gen, 2 * float(torch.rand((), generator=gen))))
        P = optimal(m)
        lo, hi = _lambda_range(P)
        a_lo, a_hi = _lambda_range(m.A)
        b_lo, b_hi = _lambda_range(m.B)
        worst["riccati"] = max(worst["riccati"], rel_err(P @ m.A @ P, m.B))
        worst["asym"] = max(worst["asym"], sym_err(P))
        worst["floor"] = min(worst["floor"], lo / math.sqrt(b_lo / a_hi))
        worst["ceiling"] = max(worst["ceiling"], hi / math.sqrt(b_hi / a_lo))
        grad = criterion_gradient(P, _factor(m.A), _factor(m.B))
        worst["grad"] = max(worst["grad"], float(grad.abs().max() / m.A.abs().max()))
        if i < perturbed:
            gap = perturbation_gap(lambda X, m=m: expected_criterion(X, m), P, gen, draws=200, t=1e-3)
            worst["gap"] = min(worst["gap"], gap)
        if i < solved:
            found = lbfgs_minimiser(lambda X, m=m: expected_criterion(X, m), n)
            worst["lbfgs"] = max(worst["lbfgs"], rel_err(P, found))
    return worst


def _psgd1_noiseless(optimal: Optimal, gen: torch.Generator, cases: int) -> tuple[float, float, int]:
    """B = I, Σ = 0: worst rel. error of P against |H|⁻¹, worst ||eig(PH)| − 1|, and the total
    mismatch between the number of eigenvalues −1 of PH and of negative eigenvalues of H."""
    err, unit, mismatch = 0.0, 0.0, 0
    for i in range(cases):
        n = 2 + i % 5
        H = sym_indefinite(n, gen)
        P = optimal(linear_moments(H, torch.eye(n), torch.zeros(n, n)))
        err = max(err, rel_err(P, matrix_function(H, lambda lam: 1 / lam.abs())))
        eig = torch.linalg.eigvals(P @ H)
        unit = max(unit, float((eig.abs() - 1).abs().max()))
        mismatch += abs(int((eig.real < 0).sum()) - int((torch.linalg.eigvalsh(H) < 0).sum()))
    return err, unit, mismatch


def _psgd1_covariance(optimal: Optimal, gen: torch.Generator, cases: int) -> float:
    """θ′ = Dθ (δθ′ = Dδθ, δĝ′ = D⁻ᵀδĝ): worst rel. error of optimal(moments′) against DPDᵀ, divided
    by cond(A′) (the closed form's matrix roots lose digits in proportion to it)."""
    err = 0.0
    for i in range(cases):
        n = 2 + i % 5
        H, B = sym_indefinite(n, gen), spd(n, gen)
        m = linear_moments(H, B, psd_noise(n, gen, 1.0))
        D = torch.randn(n, n, generator=gen) / (2 * n**0.5) + torch.diag(0.5 + torch.rand(n, generator=gen))
        Di = torch.linalg.inv(D)
        moved = Moments(Di.mT @ m.A @ Di, D @ m.B @ D.mT, D @ m.C @ Di)
        kappa = float(torch.linalg.cond(moved.A))
        err = max(err, rel_err(optimal(moved), D @ optimal(m) @ D.mT) / kappa)
    return err


@check(
    id="PSGD-1",
    paper="PSGD Eqs. 7-8 (Li 2019)",
    statement=(
        "Closed form: for A = E[δĝδĝᵀ] = HBH + Σ (H symmetric indefinite, B, Σ ≻ 0), "
        "P = A^{-1/2}(A^{1/2}BA^{1/2})^{1/2}A^{-1/2} solves PAP = B (Eq. 8), is symmetric positive definite "
        "with √(λ_min(B)/λ_max(A)) <= λ(P) <= √(λ_max(B)/λ_min(A)), and minimises precondalg's criterion "
        "c(P) = tr(PA) + tr(P⁻¹B): zero gradient, no decrease under 200 random perturbations, equal to an "
        "L-BFGS minimiser; noiseless (B = I): P = |H|⁻¹, eig(PH) = ±1 with as many −1 as H has negative "
        "eigenvalues; covariance: θ′ = Dθ maps P to DPDᵀ."
    ),
    tolerance=(
        f"{E_TOL} (covariance: <= 1e-12·cond(A′)); {S_TOL} (L-BFGS); perturbation gap >= 0; exact: "
        "sign-count mismatches == 0"
    ),
    provenance="PAPER+DERIVED",
    mutants={
        "secant estimate E[δθδĝᵀ]E[δĝδĝᵀ]⁻¹ (H⁻¹ when noiseless)": {"optimal": _secant_preconditioner},
        "P⁻¹ in place of P": {"optimal": _inverse_preconditioner},
        "commuting-case shortcut A^{-1/2}B^{1/2}": {"optimal": _commuting_preconditioner},
    },
)
def psgd_1(optimal: Optimal = optimal_preconditioner, cases: int = 20, seed: int = 1) -> Outcome:
    """PSGD-1 (Li 2019, Eqs. 7–8): the optimal preconditioner and the noiseless case.

    Proof: c(P) = tr(PA) + tr(P⁻¹B) is convex on the positive definite cone (tr(P⁻¹B) is) with
    gradient A − P⁻¹BP⁻¹, so its minimisers are the positive definite solutions of PAP = B.  Writing
    S = A^{1/2}PA^{1/2}, this is S² = A^{1/2}BA^{1/2}, whose only positive definite solution is the
    principal root: P = A^{-1/2}(A^{1/2}BA^{1/2})^{1/2}A^{-1/2}, the geometric mean A⁻¹ # B.  The mean is
    monotone in each argument, so (1/λ_max(A))I # λ_min(B)I ⪯ P ⪯ (1/λ_min(A))I # λ_max(B)I, which are the
    eigenvalue bounds.  Noiseless, A = H² and B = I, so P = (H²)^{-1/2} = |H|⁻¹ and PH = sign(H), with
    eigenvalues ±1 (one −1 per negative eigenvalue of H).  Under θ′ = Dθ, A′ = D⁻ᵀAD⁻¹ and B′ = DBDᵀ,
    and DPDᵀ solves P′A′P′ = B′ and is positive definite, hence is the solution (the criterion is
    covariant).

    `optimal` maps the moments (A, B, C) to P.  Draws: n = 2..6, H with eigenvalue magnitudes in
    [0.1, 10], B with eigenvalues in [0.1, 10], Σ = GGᵀ with noise scale in [0, 2].  The criterion is
    precondalg's, on Dense(P) with h, v the Cholesky factors of A and B; the perturbations E (5 draws ×
    200) are symmetric of spectral norm λ_min(P), t = 1e-3; L-BFGS runs on 3 draws.
    """
    gen, out = generator(seed), Measures()
    worst = _psgd1_noisy(optimal, gen, cases, perturbed=5, solved=3)
    err, unit, mismatch = _psgd1_noiseless(optimal, gen, cases=10)
    cov = _psgd1_covariance(optimal, gen, cases=5)
    out.at_most(f"max ‖PAP − B‖/‖B‖ (Eq. 8) over {cases} noisy draws", worst["riccati"], E_RTOL)
    out.at_most("max asymmetry of P", worst["asym"], E_RTOL)
    out.at_least("min λ_min(P)/√(λ_min(B)/λ_max(A)) (PD, monotonicity floor)", worst["floor"], 1 - E_RTOL)
    out.at_most("max λ_max(P)/√(λ_max(B)/λ_min(A)) (monotonicity ceiling)", worst["ceiling"], 1 + E_RTOL)
    out.at_most("max |∂c/∂P|/max|A| of precondalg's criterion at P", worst["grad"], E_RTOL)
    out.at_least("min (c(P + tE) − c(P))/c(P), 5 draws × 200 symmetric E, t = 1e-3", worst["gap"], 0.0)
    out.at_most("max rel. error, P vs L-BFGS argmin of c over P = LLᵀ (3 draws)", worst["lbfgs"], S_RTOL)
    out.at_most("noiseless: max rel. error, P vs |H|⁻¹ (10 draws)", err, E_RTOL)
    out.at_most("noiseless: max ||eig(PH)| − 1|", unit, E_RTOL)
    out.equal("noiseless: mismatches, #(eig(PH) = −1) vs #(eig(H) < 0)", mismatch, 0)
    out.at_most("covariance: max rel. error/cond(A′), P(θ′ = Dθ) vs DPDᵀ (5 draws)", cov, E_ATOL)
    return out.outcome()


# ----- PSGD-2 -----


def _mc_psd_margin(dtheta: torch.Tensor, dg: torch.Tensor, H: torch.Tensor) -> tuple[float, float]:
    """λ_min of M̂ = H⁻¹ÂH⁻¹ − B̂ (Â, B̂ the sample second moments of the rows of dg and dtheta) and
    its standard error, from the per-sample values (xᵀH⁻¹δĝ)² − (xᵀδθ)² along the eigenvector x."""
    N = dtheta.shape[0]
    w = torch.linalg.solve(H, dg.mT).mT  # rows H⁻¹δĝ
    M = (w.mT @ w - dtheta.mT @ dtheta) / N
    lam, U = torch.linalg.eigh((M + M.mT) / 2)
    x = U[:, 0]
    s = (w @ x) ** 2 - (dtheta @ x) ** 2
    return float(lam[0]), float(s.std() / N**0.5)


def _psgd2_independent(gen: torch.Generator, n: int, samples: int) -> float:
    """(a), gradient noise independent of δθ: δθ ~ N(0, B), ε = Σ^{1/2}r with Rademacher r,
    δĝ = Hδθ + ε.  Returns λ_min(M̂)/se."""
    H, B = sym_indefinite(n, gen), spd(n, gen)
    root_sigma = matrix_function(psd_noise(n, gen, 1.0), torch.sqrt)
    dtheta = torch.randn(samples, n, generator=gen) @ _factor(B).mT
    r = torch.where(torch.rand(samples, n, generator=gen) < 0.5, -1.0, 1.0)
    lam, se = _mc_psd_margin(dtheta, dtheta @ H + r @ root_sigma, H)
    return lam / se


def _psgd2_engine(gen: torch.Generator, n: int, samples: int) -> float:
    """(a) with the pairs made by precondalg: rows θ_k of Θ (samples × n) with Hessian H + Σ_j ξ_kj S_j
    (ξ Rademacher), and `Newton(hvp="finite_difference")`'s δĝ = (∇f̂(θ + δv) − ∇f̂(θ))/δ for its
    own v ~ N(0, I) (the noise (Ĥ − H)v is uncorrelated with v).  Returns λ_min(M̂)/se."""
    H = sym_indefinite(n, gen)
    S = [random_symmetric(n, gen) for _ in range(2)]
    xi = torch.where(torch.rand(samples, len(S), generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.randn(samples, n, generator=gen).requires_grad_(True)

    def closure() -> torch.Tensor:
        f = 0.5 * ((theta @ H) * theta).sum()
        return f + 0.5 * sum((xi[:, j] * ((theta @ Sj) * theta).sum(1)).sum() for j, Sj in enumerate(S))

    own = generator(int(torch.randint(2**31, (1,), generator=gen)))
    ev = Newton(hvp="finite_difference").evaluate([theta], closure, own)
    v, h = ev.per_param["v"][theta], ev.per_param["h"][theta]
    lam, se = _mc_psd_margin(v, h, H)
    return lam / se


def _psgd2_eigen(optimal: Optimal, gen: torch.Generator, cases: int) -> dict[str, float]:
    """(b) over `cases` draws (every fourth noiseless), each divided by κ = cond(A) (the closed form's
    matrix roots lose digits in proportion to it): the worst (|eig(PH)| − 1)/κ, the worst error of the
    identity ‖B^{-1/2}PHB^{1/2}‖₂² = 1 − λ_min(B^{-1/2}PΣPB^{-1/2}), the worst ||eig(PH)| − 1|/κ over the
    noiseless draws; the worst criterion gradient at P; and the plain max |eig(PH)|."""
    worst = {"eig": -math.inf, "identity": 0.0, "unit": 0.0, "grad": 0.0, "max |eig|": 0.0}
    for i in range(cases):
        n = 2 + i % 5
        H, B = sym_indefinite(n, gen), spd(n, gen)
        noiseless = i % 4 == 0
        scale = 0.0 if noiseless else 2 * float(torch.rand((), generator=gen))
        Sigma = psd_noise(n, gen, scale)
        m = linear_moments(H, B, Sigma)
        P = optimal(m)
        eig = torch.linalg.eigvals(P @ H).abs()
        kappa = float(torch.linalg.cond(m.A))
        worst["max |eig|"] = max(worst["max |eig|"], float(eig.max()))
        worst["eig"] = max(worst["eig"], float(eig.max() - 1) / kappa)
        if noiseless:
            worst["unit"] = max(worst["unit"], float((eig - 1).abs().max()) / kappa)
        b_root, b_inv_root = matrix_function(B, torch.sqrt), matrix_function(B, torch.rsqrt)
        norm2 = float(torch.linalg.matrix_norm(b_inv_root @ P @ H @ b_root, 2)) ** 2
        damp = float(torch.linalg.eigvalsh(b_inv_root @ P @ Sigma @ P @ b_inv_root)[0])
        worst["identity"] = max(worst["identity"], abs(norm2 - (1 - damp)) / kappa)
        grad = criterion_gradient(P, _factor(m.A), _factor(m.B))
        worst["grad"] = max(worst["grad"], float(grad.abs().max() / m.A.abs().max()))
    return worst


def _psgd2_damping(optimal: Optimal, gen: torch.Generator, cases: int) -> float:
    """(c) B = I: min λ_min(|H|⁻¹ − P)/‖|H|⁻¹‖₂ over `cases` noisy draws."""
    worst = math.inf
    for i in range(cases):
        n = 2 + i % 5
        H = sym_indefinite(n, gen)
        Sigma = psd_noise(n, gen, 2 * float(torch.rand((), generator=gen)))
        P = optimal(linear_moments(H, torch.eye(n), Sigma))
        inv_abs = matrix_function(H, lambda lam: 1 / lam.abs())
        lam = torch.linalg.eigvalsh(inv_abs - (P + P.mT) / 2)
        worst = min(worst, float(lam[0] / torch.linalg.eigvalsh(inv_abs)[-1]))
    return worst


@check(
    id="PSGD-2",
    paper="PSGD §2.2 and §3.3 (Li 2019)",
    statement=(
        "Bounds: (a) H⁻¹E[δĝδĝᵀ]H⁻¹ ⪰ E[δθδθᵀ] for gradient noise uncorrelated with δθ (MC, 2·10⁵ samples: "
        "independent Rademacher noise, and precondalg's finite-difference δĝ of a noisy-Hessian quadratic); "
        "(b) for the optimal P, every eigenvalue of PH has modulus <= 1, by the identity "
        "‖B^{-1/2}PHB^{1/2}‖₂² = 1 − λ_min(B^{-1/2}PΣPB^{-1/2}) (equality iff Σ = 0), over 200 draws; "
        "(c) with B = I, P = (H² + Σ)^{-1/2} ⪯ |H|⁻¹."
    ),
    tolerance=(
        "MC: λ_min >= −5·se; E: |eig(PH)| − 1 and the norm identity's error <= 1e-12·cond(A), ∂c/∂P rel. "
        "<= 1e-10, λ_min(|H|⁻¹ − P) >= −1e-12"
    ),
    provenance="PAPER+DERIVED",
    mutants={"P = A^{-1/2} (ignores E[δθδθᵀ])": {"optimal": _ignores_b}},
)
def psgd_2(optimal: Optimal = optimal_preconditioner, cases: int = 200, samples: int = 200_000,
           seed: int = 2) -> Outcome:
    """PSGD-2 (Li 2019, §2.2 citing Li 2018, and §3.3): noise damping and eigenvalues of PH in [−1, 1].

    (a) With δĝ = Hδθ + ε and E[δθεᵀ] = 0, H⁻¹E[δĝδĝᵀ]H⁻¹ = E[δθδθᵀ] + H⁻¹E[εεᵀ]H⁻¹.  (b) For the
    optimal P (PSGD-1), PAP = B with A = HBH + Σ gives PHBHP = B − PΣP; conjugating by B^{-1/2},
    KKᵀ = I − B^{-1/2}PΣPB^{-1/2} for K = B^{-1/2}PHB^{1/2}, so ‖K‖₂² = 1 − λ_min(B^{-1/2}PΣPB^{-1/2}) <= 1,
    and PH is similar to K, so |eig(PH)| <= ‖K‖₂ <= 1, with KKᵀ = I (all |eig| = 1) iff Σ = 0.  (c) With
    B = I, P = (H² + Σ)^{-1/2} and t ↦ t^{-1/2} is operator monotone decreasing, so P ⪯ (H²)^{-1/2} = |H|⁻¹.

    `optimal` is the closed form under test; each draw also checks that precondalg's criterion has zero
    gradient there.  (a) uses n = 4, two noise models, and the standard error of the per-sample values
    along the eigenvector of λ_min.  The (b) identities are computed through the closed form's matrix
    roots, which lose about cond(A)·eps (cond(A) reaches 10⁶ for these draws): their errors are compared
    with 1e-12·cond(A).
    """
    gen, out = generator(seed), Measures()
    mc_independent = _psgd2_independent(gen, 4, samples)
    mc_engine = _psgd2_engine(gen, 4, samples)
    worst = _psgd2_eigen(optimal, gen, cases)
    damping = _psgd2_damping(optimal, gen, cases=50)
    out.at_least("(a) λ_min(H⁻¹ÂH⁻¹ − B̂)/se, independent noise", mc_independent, -MC_SIGMAS)
    out.at_least("(a) λ_min(H⁻¹ÂH⁻¹ − B̂)/se, Newton finite-difference pairs", mc_engine, -MC_SIGMAS)
    out.at_most(f"(b) max (|eig(PH)| − 1)/cond(A) over {cases} draws", worst["eig"], E_ATOL)
    out.at_most("(b) max |‖B^{-1/2}PHB^{1/2}‖₂² − (1 − λ_min(B^{-1/2}PΣPB^{-1/2}))|/cond(A)",
                worst["identity"], E_ATOL)
    out.at_most("(b) noiseless draws: max ||eig(PH)| − 1|/cond(A)", worst["unit"], E_ATOL)
    out.at_most("(b) max |∂c/∂P|/max|A| of precondalg's criterion at P", worst["grad"], E_RTOL)
    out.at_least("(c) min λ_min(|H|⁻¹ − P)/‖|H|⁻¹‖₂ (B = I, 50 draws)", damping, -E_ATOL)
    out.details["(a) λ_min/se"] = {"independent noise": mc_independent, "Newton pairs": mc_engine}
    out.details["(b) max |eig(PH)|"] = worst["max |eig|"]
    return out.outcome()


# ----- PSGD-3 -----


ScalarOptimum = Callable[[float, float], float]


def scalar_optimum(h: float, noise_var: float) -> float:
    """Eq. 15, the positive root: p = 1/√(h² + E[(ĥ − h)²])."""
    return 1 / math.sqrt(h * h + noise_var)


def _scalar_wrong_power(h: float, noise_var: float) -> float:
    """Mutant: p = 1/(h² + E[(ĥ − h)²]) (the wrong power)."""
    return 1 / (h * h + noise_var)


def scalar_pairs(h: float, s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact expectation of the scalar criterion as a two-point mean: columns (v, ĥv) = (1, h ± s),
    so that mean v² = E[v²] = 1 and mean ĥ²v² = h² + s² = E[ĥ²]E[v²] (ĥ − h independent of v).
    Returns (ĥv, v) as 1 × 2 tensors."""
    return torch.tensor([[h + s, h - s]]), torch.ones(1, 2)


def _scalar_criterion(p: torch.Tensor, hv: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """precondalg's criterion on the structure Scalar(p, 1), averaged over the columns."""
    return criterion(pa.Scalar(p, 1), hv, v) / v.shape[1]


def bfgs_argmin_log(f: Callable[[torch.Tensor], torch.Tensor], n: int) -> torch.Tensor:
    """exp(argmin_x f(exp x)) by scipy's BFGS from x = 0, with the gradient by autograd: an independent
    minimiser over positive p (a vector of size n, or a scalar when n = 0)."""

    def fun(x):
        t = torch.tensor(x, dtype=torch.float64).reshape(n if n else ()).requires_grad_(True)
        value = f(t.exp())
        (grad,) = torch.autograd.grad(value, t)
        return float(value.detach()), grad.reshape(-1).numpy()

    res = scipy.optimize.minimize(fun, [0.0] * max(n, 1), jac=True, method="BFGS", options={"gtol": 1e-13})
    return torch.tensor(res.x).reshape(n if n else ()).exp()


def _psgd3_exact(optimum: ScalarOptimum, gen: torch.Generator, draws: int) -> dict[str, float]:
    """(a) BFGS on the exact expected criterion vs the formula; |ph| and the curvature at −p."""
    worst = {"argmin": 0.0, "ph": 0.0, "unit": 0.0, "maxima": 0}
    for i in range(draws):
        h = float(log_uniform((), -1, 1, gen)) * (1 if i % 2 else -1)
        s = 0.0 if i % 4 == 0 else 5 * float(torch.rand((), generator=gen))
        hv, v = scalar_pairs(h, s)
        found = float(bfgs_argmin_log(lambda p, hv=hv, v=v: _scalar_criterion(p, hv, v), 0))
        p = optimum(h, s * s)
        worst["argmin"] = max(worst["argmin"], abs(found - p) / p)
        worst["ph"] = max(worst["ph"], abs(p * h))
        if s == 0:
            worst["unit"] = max(worst["unit"], abs(abs(p * h) - 1))
        curvature = torch.func.grad(torch.func.grad(lambda q, hv=hv, v=v: _scalar_criterion(q, hv, v)))
        worst["maxima"] += int(curvature(torch.tensor(-found)) < 0)
    return worst


def _unit_variance(kind: str, N: int, gen: torch.Generator) -> torch.Tensor:
    """N zero-mean, unit-variance draws of the named law."""
    if kind == "Gaussian":
        return torch.randn(N, generator=gen)
    if kind == "Rademacher":
        return torch.where(torch.rand(N, generator=gen) < 0.5, -1.0, 1.0)
    if kind == "uniform":
        return (2 * torch.rand(N, generator=gen) - 1) * 3**0.5
    chi2 = (torch.randn(5, N, generator=gen) ** 2).sum(0)  # Student-t with 5 degrees of freedom
    return torch.randn(N, generator=gen) / (chi2 / 5).sqrt() / (5 / 3) ** 0.5


def _psgd3_mc(optimum: ScalarOptimum, gen: torch.Generator, samples: int) -> tuple[float, float]:
    """(b) For ĥ = h + sξ and v of the six law pairs: the worst |p̂ − p|/se, with p̂ the minimiser of
    the sample criterion (stationary for precondalg's relative gradient, whose worst residual is the
    second value) and se by the delta method."""
    worst, residual = 0.0, 0.0
    for xi_law, v_law in itertools.product(("Gaussian", "Rademacher", "Student-t5"), ("Gaussian", "uniform")):
        h = float(log_uniform((), -1, 1, gen)) * (1 if torch.rand((), generator=gen) < 0.5 else -1)
        s = 5 * float(torch.rand((), generator=gen))
        v = _unit_variance(v_law, samples, gen)
        hv = (h + s * _unit_variance(xi_law, samples, gen)) * v
        V, W = v * v, hv * hv
        p_hat = float((V.mean() / W.mean()).sqrt())
        R = closed_form_relative_gradient(pa.Scalar(torch.tensor(p_hat**0.5), 1), hv[None], v[None])
        residual = max(residual, float(R.alpha.abs() / (2 * p_hat * W.sum())))
        se = p_hat * 0.5 * float((V / V.mean() - W / W.mean()).std()) / samples**0.5
        worst = max(worst, abs(p_hat - optimum(h, s * s)) / se)
    return worst, residual


def fit_scalar(
    hv: torch.Tensor, v: torch.Tensor, mu: float = 0.5, tol: float = 1e-10, steps: int = 400
) -> float:
    """Iterate PSGD's Lie-group step on the group of non-zero scalars: the `Newton` criterion's
    gradient ∂c/∂q for P = q² and the pairs (ĥv, v), then the `LieGroup` fitter's step
    q ← q(1 − μR/|R|) from q = 1, with μ halved whenever the step reverses direction (a bisection in
    log q) until μ < tol.  Returns q²."""
    leaves, spec = pytree.tree_flatten(pa.Scalar(torch.tensor(1.0), 1))
    leaves = [leaf.clone() for leaf in leaves]
    last = 0.0
    for _ in range(steps):
        ctx = BlockContext(phi=pytree.tree_unflatten(leaves, spec), form=pa.gram, grad=hv, cache={},
                           extras={"h": hv, "v": v})
        before = float(leaves[0])
        LieGroup(lr=mu).build(leaves, spec).step(pytree.tree_leaves(NEWTON.meta_grad(ctx)))
        direction = math.copysign(1.0, float(leaves[0]) - before) if float(leaves[0]) != before else 0.0
        if direction == 0.0:
            break
        if last and direction != last:
            mu /= 2
            if mu < tol:
                break
        last = direction
    return float(leaves[0]) ** 2


def _psgd3_fit(optimum: ScalarOptimum, cases: tuple[tuple[float, float], ...]) -> float:
    """(c) worst |q²/p − 1| of the fitted fixed point against the formula."""
    worst = 0.0
    for h, s in cases:
        q2 = fit_scalar(*scalar_pairs(h, s))
        worst = max(worst, abs(q2 / optimum(h, s * s) - 1))
    return worst


def _psgd3_descent(h: float, mu: float, mu0: float, steps: int, burn: int) -> list[float]:
    """(d) precondalg's `Preconditioned` optimizer (diagonal_gram, Newton, LieGroup(μ₀), lr μ) on
    f(x) = ½hx² from x = 1: the per-step factors x_{k+1}/x_k after `burn` steps."""
    x = torch.ones(1, requires_grad=True)
    opt = Preconditioned([x], lr=mu, structure=diagonal_gram(), placement=Flatten(), objective=Newton(),
                         fitter=LieGroup(lr=mu0), seed=3)
    xs = [1.0]
    for _ in range(steps):
        opt.step(lambda: 0.5 * h * (x * x).sum())
        xs.append(float(x.detach()))
    return [b / a for a, b in zip(xs[burn:-1], xs[burn + 1:])]


PSGD3_FIT_CASES = ((2.0, 0.0), (-0.5, 1.5), (0.3, 3.0), (-7.0, 0.5))
"""(h, s) of PSGD-3(c), h of both signs."""


@check(
    id="PSGD-3",
    paper="PSGD Eqs. 15-16, §3.3 (Li 2019)",
    statement=(
        "Closed form and dynamics of the scalar case: (a) the BFGS argmin of precondalg's exact expected "
        "criterion p(h² + s²) + 1/p is p = 1/√(h² + s²) (Eq. 15), so |ph| <= 1 (Eq. 16, = 1 noiseless), "
        "and the negative root is a local maximum; (b) MC, 2·10⁵ samples, ĥ = h + sξ for six noise/v "
        "laws; (c) the LieGroup fitter on the Newton criterion's gradient converges to q² = p; (d) the "
        "Preconditioned optimizer (diagonal_gram, Newton, LieGroup) on ½hx² contracts by a factor in "
        "1 − μ[(1 − μ₀)², (1 + μ₀)²] per step when h > 0 and grows by at least 1 + μ(1 − μ₀)² when h < 0."
    ),
    tolerance=f"{S_TOL} (BFGS, fitter); MC: <= 5·se; {E_TOL}; exact: counts",
    provenance="PAPER+DERIVED",
    mutants={"p = 1/(h² + s²) (the wrong power)": {"optimum": _scalar_wrong_power}},
)
def psgd_3(optimum: ScalarOptimum = scalar_optimum, draws: int = 12, samples: int = 200_000,
           mu: float = 0.5, mu0: float = 0.1, seed: int = 3) -> Outcome:
    """PSGD-3 (Li 2019, Eqs. 15–16): the scalar Newton-type preconditioner.

    With ĥ − h independent of v, E[ĥ²v²] = (h² + s²)E[v²], so c(p) = p(h² + s²)E[v²] + E[v²]/p, whose
    stationary points are p = ±1/√(h² + s²); c″(p) = 2E[v²]/p³ is positive at the positive root (the
    minimum on p > 0) and negative at the negative root, a local maximum (c is unbounded below on p < 0,
    so the negative root is not a minimum).  Then ph = h/√(h² + s²) ∈ [−1, 1], with |ph| = 1 iff s = 0.

    (c) The scalar group's relative gradient is R = 2(q²E[ĥ²v²] − E[v²]/q²), so the normalised step
    q ← q(1 − μ sign R) moves q toward √p and reverses when it passes it; halving μ at each reversal
    converges to q² = p.  (d) The fitter's band [q*(1 − μ₀), q*(1 + μ₀)] around q* = |h|^{-1/2} is
    invariant (a step from above multiplies by 1 − μ₀, from below by 1 + μ₀), so after it is entered
    P|h| = q²|h| ∈ [(1 − μ₀)², (1 + μ₀)²] and the parameter step x ← (1 − μPh)x contracts (h > 0, μ ∈
    (0, 1)) or expands (h < 0: a maximum is repelled).

    Draws: h = ±10^U(−1, 1), s = U(0, 5) (s = 0 for every fourth draw of (a)); (b) laws of ξ Gaussian,
    Rademacher, Student-t₅ and of v Gaussian, uniform, all of unit variance; (d) h ∈ {4, −0.3} (q₀ = 1
    above and below q*), μ = 0.5, μ₀ = 0.1, 40 steps, the factors of the last 25.
    """
    gen, out = generator(seed), Measures()
    exact = _psgd3_exact(optimum, gen, draws)
    mc, residual = _psgd3_mc(optimum, gen, samples)
    fitted = _psgd3_fit(optimum, PSGD3_FIT_CASES)
    factors = {h: _psgd3_descent(h, mu, mu0, steps=40, burn=15) for h in (4.0, -0.3)}
    contract = max(abs(f) for h, fs in factors.items() if h > 0 for f in fs)
    expand = min(f for h, fs in factors.items() if h < 0 for f in fs)
    out.at_most(f"(a) max rel. error, BFGS argmin of the criterion vs p (Eq. 15), {draws} draws",
                exact["argmin"], S_RTOL)
    out.at_most("(a) max |ph| (Eq. 16)", exact["ph"], 1 + E_RTOL)
    out.at_most("(a) noiseless draws: max ||ph| − 1|", exact["unit"], E_RTOL)
    out.equal("(a) negative roots with c″ < 0 (local maxima)", exact["maxima"], draws)
    out.at_most("(b) max |p̂ − p|/se over 6 laws (MC)", mc, MC_SIGMAS)
    out.at_most("(b) max |R(p̂)|/scale of precondalg's relative gradient", residual, E_RTOL)
    out.at_most("(c) max |q²/p − 1| of the LieGroup fixed point", fitted, S_RTOL)
    contraction_bound = max(abs(1 - mu * (1 - mu0) ** 2), abs(1 - mu * (1 + mu0) ** 2))
    out.at_most("(d) h > 0: max |x_{k+1}/x_k| (bound max|1 − μ(1 ∓ μ₀)²|)", contract,
                contraction_bound * (1 + E_RTOL))
    out.at_least("(d) h < 0: min x_{k+1}/x_k (bound 1 + μ(1 − μ₀)²)", expand,
                 (1 + mu * (1 - mu0) ** 2) * (1 - E_RTOL))
    out.details["(d) |x_40/x_15| for h = 4, −0.3"] = [
        math.prod(fs) for fs in factors.values()
    ]
    return out.outcome()


# ----- PSGD-4 -----


class _Vector(torch.nn.Module):
    """A module whose output is its parameter vector θ (so that loss_fn(model(x), y) = f(θ))."""

    def __init__(self, theta: torch.Tensor) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(theta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta


@dataclasses.dataclass(frozen=True)
class HvpProblem:
    """A loss for PSGD-4: loss_fn(model(inputs), targets), with the parameters in model order."""

    name: str
    model: torch.nn.Module
    loss_fn: Callable[[Any, Any], torch.Tensor]
    batch: tuple[torch.Tensor, torch.Tensor]


def _mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return ((out - y) ** 2).mean()


def _rosenbrock(theta: torch.Tensor, _: Any) -> torch.Tensor:
    """The paper's Rosenbrock test function (Sec. 7.1), f = 100(θ₂ − θ₁²)² + (1 − θ₁)²."""
    return 100 * (theta[1] - theta[0] ** 2) ** 2 + (1 - theta[0]) ** 2


def hvp_problems(gen: torch.Generator) -> list[HvpProblem]:
    """A quadratic ½θᵀAθ + bᵀθ (A symmetric indefinite, n = 5), the Rosenbrock function at the paper's
    start (−1, 1), and a tanh MLP 3→5→2 with squared error on 8 samples (four parameter tensors)."""
    A, b = sym_indefinite(5, gen), torch.randn(5, generator=gen)
    quadratic = HvpProblem("quadratic", _Vector(torch.randn(5, generator=gen)),
                           lambda t, _: 0.5 * t @ A @ t + b @ t, (torch.zeros(1), torch.zeros(1)))
    rosenbrock = HvpProblem("Rosenbrock", _Vector(torch.tensor([-1.0, 1.0])), _rosenbrock,
                            (torch.zeros(1), torch.zeros(1)))
    skip = torch.nn.utils.skip_init  # no draw from torch's global generator; the values come from `gen`
    mlp = torch.nn.Sequential(skip(torch.nn.Linear, 3, 5), torch.nn.Tanh(), skip(torch.nn.Linear, 5, 2))
    with torch.no_grad():
        for p in mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    batch = (torch.randn(8, 3, generator=gen), torch.randn(8, 2, generator=gen))
    return [quadratic, rosenbrock, HvpProblem("tanh MLP", mlp, _mse, batch)]


def newton_objective(hvp: str, problem: HvpProblem) -> Newton:
    """precondalg's `Newton` objective with the given Hessian-vector product."""
    if hvp == "torch.func":
        return Newton(hvp=hvp, model=problem.model, loss_fn=problem.loss_fn)
    return Newton(hvp=hvp)


class _NoCreateGraph(Newton):
    """Mutant: the double-backward Hessian-vector product with ∇L taken WITHOUT create_graph=True; the
    gradient then has no graph, and (as for a parameter the gradient does not depend on) h = 0."""

    def evaluate(
        self, params: list[torch.Tensor], closure: Callable[[], Any] | None, generator: torch.Generator,
        **inputs: Any,
    ) -> Evaluation:
        with torch.enable_grad():
            loss = closure()
            grads = torch.autograd.grad(loss, params)  # the bug: create_graph=False
        vs = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
        used = [(p, g, v) for p, g, v in zip(params, grads, vs) if g.requires_grad]
        second = torch.autograd.grad([g for _, g, _ in used], [p for p, _, _ in used],
                                     grad_outputs=[v for _, _, v in used]) if used else ()
        found = {p: h for (p, _, _), h in zip(used, second)}
        hs = [found.get(p, torch.zeros_like(p)).detach() for p in params]
        return Evaluation(loss.detach(), {"v": dict(zip(params, vs)), "h": dict(zip(params, hs))})


def _no_create_graph(hvp: str, problem: HvpProblem) -> Newton:
    return _NoCreateGraph() if hvp == "autograd" else newton_objective(hvp, problem)


class _RedrawnV(Newton):
    """Mutant: returns a v drawn after h was computed (h and v no longer a pair)."""

    def evaluate(
        self, params: list[torch.Tensor], closure: Callable[[], Any] | None, generator: torch.Generator,
        **inputs: Any,
    ) -> Evaluation:
        ev = super().evaluate(params, closure, generator, **inputs)
        fresh = {p: torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params}
        return Evaluation(ev.loss, {**ev.per_param, "v": fresh}, ev.data)


def _redrawn_v(hvp: str, problem: HvpProblem) -> Newton:
    if hvp == "torch.func":
        return _RedrawnV(hvp=hvp, model=problem.model, loss_fn=problem.loss_fn)
    return _RedrawnV(hvp=hvp)


def hvp_error(objective: Newton, problem: HvpProblem, gen: torch.Generator) -> float:
    """Normwise relative error of the objective's h against Ĥv, with Ĥ the full Hessian of the loss
    over all parameters from `torch.autograd.functional.hessian` and v the objective's own draw."""
    model, (x, y) = problem.model, problem.batch
    names = [name for name, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    if objective.hvp == "torch.func":
        ev = objective.evaluate(params, None, gen, batch=problem.batch)
    else:
        ev = objective.evaluate(params, lambda: problem.loss_fn(model(x), y), gen)
    v = torch.cat([ev.per_param["v"][p].reshape(-1) for p in params])
    h = torch.cat([ev.per_param["h"][p].reshape(-1) for p in params])
    sizes = [p.numel() for p in params]

    def flat_loss(theta: torch.Tensor) -> torch.Tensor:
        parts = {n: t.reshape(p.shape) for n, t, p in zip(names, theta.split(sizes), params)}
        return problem.loss_fn(torch.func.functional_call(model, parts, (x,)), y)

    theta = torch.cat([p.detach().reshape(-1) for p in params])
    hessian = torch.autograd.functional.hessian(flat_loss, theta)
    return rel_err(h, hessian @ v)


HVP_TOLERANCES = {"autograd": E_RTOL, "torch.func": E_RTOL, "finite_difference": 1e-6}
"""PSGD-4's bound per Hessian-vector product: exact (E) for the two autodiff ones; 1e-6 relative for
finite differences with δ = √eps (truncation O(δ), rounding O(eps/δ), both ≈ 1e-8 here)."""


@check(
    id="PSGD-4",
    paper="PSGD Eq. 9 (Li 2019)",
    statement=(
        "Identity: the h that precondalg's Newton objective returns with its own v equals Ĥv, Ĥ the full "
        "Hessian (torch.autograd.functional.hessian), on a quadratic, the Rosenbrock function and a tanh "
        "MLP (four parameter tensors), for hvp = \"autograd\" (double backward, Eq. 9), \"torch.func\" "
        "(forward-over-reverse) and \"finite_difference\" (δθ = √eps·v, as psgd_np's demo)."
    ),
    tolerance=f"{E_TOL} (autograd, torch.func); finite differences: rel. error <= 1e-6",
    provenance="PAPER+CODE",
    mutants={
        "double backward without create_graph=True (h = 0)": {"newton": _no_create_graph},
        "v redrawn after h (pair broken)": {"newton": _redrawn_v},
    },
)
def psgd_4(newton: Callable[[str, HvpProblem], Newton] = newton_objective, seed: int = 4) -> Outcome:
    """PSGD-4 (Li 2019, Eq. 9): ∂/∂θ[(∂f̂/∂θ)ᵀv] = Ĥv, since v does not depend on θ.

    `newton(hvp, problem)` builds the objective under test; each problem is evaluated once per hvp
    with a seeded generator, and h is compared with the explicit Hessian times the v it returned.
    """
    gen, out = generator(seed), Measures()
    problems = hvp_problems(gen)
    errors = {}
    for hvp in ("autograd", "torch.func", "finite_difference"):
        errors[hvp] = {p.name: hvp_error(newton(hvp, p), p, gen) for p in problems}
    for hvp, bound in HVP_TOLERANCES.items():
        out.at_most(f"max rel. error, Newton(hvp={hvp!r}) h vs Ĥv (3 problems)", max(errors[hvp].values()),
                    bound)
    out.details["rel. errors"] = errors
    return out.outcome()


# ----- PSGD-5 -----


FisherOptimum = Callable[[torch.Tensor, float], torch.Tensor]
SecondMoment = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def fisher_optimum(G: torch.Tensor, lam: float) -> torch.Tensor:
    """Eq. 13: P = (E[ĝĝᵀ] + λ²I)^{-1/2}, G = E[ĝĝᵀ]."""
    return matrix_function(G + lam**2 * torch.eye(G.shape[0]), torch.rsqrt)


def _fisher_wrong_power(G: torch.Tensor, lam: float) -> torch.Tensor:
    """Mutant: (E[ĝĝᵀ] + λ²I)⁻¹ (the wrong power)."""
    return torch.linalg.inv(G + lam**2 * torch.eye(G.shape[0]))


def batch_second_moment(F: torch.Tensor, g: torch.Tensor, B: int) -> torch.Tensor:
    """Eq. 14: E[ĝĝᵀ] = F/B + (B − 1)ggᵀ/B for the mean ĝ of B i.i.d. per-sample gradients of second
    moment F and mean g."""
    return F / B + (B - 1) * torch.outer(g, g) / B


def _missing_factor(F: torch.Tensor, g: torch.Tensor, B: int) -> torch.Tensor:
    """Mutant: F/B + ggᵀ (the factor (B − 1)/B missing)."""
    return F / B + torch.outer(g, g)


def fisher_map_error(lam: float, gen: torch.Generator) -> float:
    """precondalg's `Fisher(damping=λ)` pairs its own v with h = g + λv (Eq. 11): the normwise error of
    its h against g + λv, for a linear loss gᵀθ (gradient g)."""
    g = torch.randn(4, generator=gen)
    theta = torch.randn(4, generator=gen).requires_grad_(True)
    ev = Fisher(damping=lam).evaluate([theta], lambda: (g * theta).sum(), gen)
    return rel_err(ev.per_param["h"][theta], g + lam * ev.per_param["v"][theta])


def fisher_columns(gs: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs (h, v) = (g_j + λv_i, v_i) for every gradient sample g_j (columns of gs) and every
    sigma point v_i: the mean of the criterion over them is its exact expectation (Eq. 12) for ĝ
    uniform over the samples and v ~ N(0, I) independent of ĝ.  Returns (h, v), n × (m·2n)."""
    V = sigma_points(gs.shape[0])
    h = torch.cat([g[:, None] + lam * V for g in gs.mT], 1)
    return h, V.repeat(1, gs.shape[1])


def relative_residual(Q: pa.Structure, h: torch.Tensor, v: torch.Tensor) -> float:
    """max|R|/max|2Σaaᵀ| for precondalg's closed-form relative gradient R = 2Π(Σaaᵀ − Σbbᵀ) at Q
    (a = Qh, b = Q⁻ᵀv): zero where P = QᵀQ is a stationary point of the criterion on the group."""
    R = closed_form_relative_gradient(Q, h, v)
    a = Q @ h
    return float(R.to_dense().abs().max() / (2 * (a @ a.mT).abs().max()))


def _psgd5_closed_form(optimum: FisherOptimum, gen: torch.Generator) -> dict[str, float]:
    """(a) for (n, λ) in ((3, 0), (4, 0.3), (5, 1)): Eq. 12 at a random P, the relative gradient at the
    closed form (Q its Cholesky factor, triangular), the perturbation gap and the L-BFGS argmin."""
    worst = {"map": 0.0, "eq12": 0.0, "residual": 0.0, "gap": math.inf, "lbfgs": 0.0}
    for n, lam in ((3, 0.0), (4, 0.3), (5, 1.0)):
        worst["map"] = max(worst["map"], fisher_map_error(lam, gen))
        gs = torch.randn(n, 2 * n, generator=gen) + torch.randn(n, 1, generator=gen)
        G, I = gs @ gs.mT / gs.shape[1], torch.eye(n)
        h, v = fisher_columns(gs, lam)

        def c(P: torch.Tensor, h: torch.Tensor = h, v: torch.Tensor = v) -> torch.Tensor:
            return criterion(pa.Dense(P), h, v) / v.shape[1]

        X = spd(n, gen)
        eq12 = torch.trace(X @ (G + lam**2 * I)) + torch.trace(torch.linalg.inv(X))
        worst["eq12"] = max(worst["eq12"], rel_err(c(X), eq12))
        P = optimum(G, lam)
        Q = pa.Triangular(_factor(P).mT)  # P = QᵀQ, Q upper triangular (PSGD's group)
        worst["residual"] = max(worst["residual"], relative_residual(Q, h, v))
        worst["gap"] = min(worst["gap"], perturbation_gap(c, P, gen, draws=200, t=1e-3))
        worst["lbfgs"] = max(worst["lbfgs"], rel_err(P, lbfgs_minimiser(c, n)))
    return worst


def _batch_means(g: torch.Tensor, L: torch.Tensor, B: int, N: int, gen: torch.Generator) -> torch.Tensor:
    """N means of B i.i.d. per-sample gradients g + Lz, z with i.i.d. centred Exp(1) entries (mean 0,
    variance 1, skewed): second moment F = ggᵀ + LLᵀ.  Rows of the result, drawn in chunks."""
    chunks, chunk = [], 20_000
    for start in range(0, N, chunk):
        k = min(chunk, N - start)
        z = -torch.log1p(-torch.rand(k, B, g.shape[0], generator=gen)) - 1
        chunks.append(g + (z @ L.mT).mean(1))
    return torch.cat(chunks)


def _z_scores(rows: torch.Tensor, truth: torch.Tensor, scale: float = 1.0) -> float:
    """max over entries i <= j of |scale·mean(x_i x_j) − truth_ij| / (scale·se)."""
    n, N = rows.shape[1], rows.shape[0]
    worst = 0.0
    for i, j in itertools.combinations_with_replacement(range(n), 2):
        x = scale * rows[:, i] * rows[:, j]
        worst = max(worst, float((x.mean() - truth[i, j]).abs() / (x.std() / N**0.5)))
    return worst


@check(
    id="PSGD-5",
    paper="PSGD Eqs. 11-14 (Li 2019)",
    statement=(
        "Closed form and MC: (a) precondalg's Fisher objective pairs h = g + λv; the criterion's exact "
        "expectation is tr{P(E[ĝĝᵀ] + λ²I) + P⁻¹} (Eq. 12), minimised at P = (E[ĝĝᵀ] + λ²I)^{-1/2} (Eq. 13): "
        "zero relative gradient on the triangular group, no decrease under 200 perturbations, equal to an "
        "L-BFGS minimiser; (b) E[ĝĝᵀ] = F/B + (B − 1)ggᵀ/B for a batch mean (Eq. 14); (c) with ĝ − g + "
        "g/√B, B·E[(·)(·)ᵀ] = F and P²/B = F⁻¹ (λ = 0).  MC: 4·10⁵ skewed per-sample gradients in batches of "
        "B = 2 and B = 16."
    ),
    tolerance=f"{E_TOL}; {S_TOL} (L-BFGS); perturbation gap >= 0; MC: <= 5·se",
    provenance="PAPER",
    mutants={
        "P = (E[ĝĝᵀ] + λ²I)⁻¹ (the wrong power)": {"optimum": _fisher_wrong_power},
        "E[ĝĝᵀ] = F/B + ggᵀ (missing (B − 1)/B)": {"second_moment": _missing_factor},
    },
)
def psgd_5(optimum: FisherOptimum = fisher_optimum, second_moment: SecondMoment = batch_second_moment,
           per_sample: int = 400_000, seed: int = 5) -> Outcome:
    """PSGD-5 (Li 2019, Eqs. 11–14): the Fisher-type criterion and its closed form.

    (a) With v ~ N(0, I) independent of ĝ, E[(ĝ + λv)ᵀP(ĝ + λv)] = tr(PE[ĝĝᵀ]) + λ²tr(P) (the cross term
    has zero mean) and E[vᵀP⁻¹v] = tr(P⁻¹): Eq. 12.  Its gradient E[ĝĝᵀ] + λ²I − P⁻² vanishes at the
    positive definite P = (E[ĝĝᵀ] + λ²I)^{-1/2} (Eq. 13), the minimum (the criterion is convex on the
    positive definite cone).  (b) For ĝ = (1/B)Σgᵢ, E[ĝĝᵀ] = (1/B²)(B·F + B(B − 1)ggᵀ).  (c) With s = g,
    E[(ĝ − g + g/√B)(·)ᵀ] = Cov(ĝ) + ggᵀ/B = (F − ggᵀ)/B + ggᵀ/B = F/B, so the Eq. 13 optimum with λ = 0
    is P = (F/B)^{-1/2} and P²/B = F⁻¹.

    The expectation over v is exact (sigma points) and the one over ĝ is the mean over 2n samples with
    a common non-zero mean; the criterion is precondalg's on Dense(P), and its relative gradient is
    that of the triangular Q with QᵀQ = P.  (b), (c): n = 3, per-sample gradients g + Lz with skewed z,
    4·10⁵ of them for each B (2·10⁵ batches of 2, 2.5·10⁴ batches of 16).
    """
    gen, out = generator(seed), Measures()
    worst = _psgd5_closed_form(optimum, gen)
    n = 3
    g, L = torch.randn(n, generator=gen), torch.randn(n, n, generator=gen) / n**0.5 + torch.eye(n)
    F = torch.outer(g, g) + L @ L.mT
    z14, zshift, inverse = 0.0, 0.0, 0.0
    for B in (2, 16):
        rows = _batch_means(g, L, B, per_sample // B, gen)
        z14 = max(z14, _z_scores(rows, second_moment(F, g, B)))
        zshift = max(zshift, _z_scores(rows - g + g / B**0.5, F, scale=B))
        shifted = second_moment(F, g, B) - (1 - 1 / B) * torch.outer(g, g)
        P = optimum(shifted, 0.0)
        inverse = max(inverse, rel_err(P @ P / B, torch.linalg.inv(F)))
    out.at_most("(a) max rel. error, Fisher's h vs g + λv (Eq. 11)", worst["map"], E_RTOL)
    out.at_most("(a) max rel. error, expected criterion vs tr{P(E[ĝĝᵀ] + λ²I) + P⁻¹} (Eq. 12)",
                worst["eq12"], E_RTOL)
    out.at_most("(a) max |R|/scale of the relative gradient at the closed form (Eq. 13)", worst["residual"],
                E_RTOL)
    out.at_least("(a) min (c(P + tE) − c(P))/c(P), 3 draws × 200 symmetric E, t = 1e-3", worst["gap"], 0.0)
    out.at_most("(a) max rel. error, P vs L-BFGS argmin over P = LLᵀ", worst["lbfgs"], S_RTOL)
    out.at_most("(b) max |Ê[ĝĝᵀ] − (F/B + (B−1)ggᵀ/B)|/se (Eq. 14), B = 2, 16", z14, MC_SIGMAS)
    out.at_most("(c) max |B·Ê[(ĝ − g + g/√B)(·)ᵀ] − F|/se", zshift, MC_SIGMAS)
    out.at_most("(c) max rel. error, P²/B vs F⁻¹ (λ = 0)", inverse, E_RTOL)
    return out.outcome()


# ----- PSGD-6 -----


StationaryPoints = Callable[[torch.Tensor], list[torch.Tensor]]


def stationary_points(A: torch.Tensor) -> list[torch.Tensor]:
    """All P = U diag(±a^{-1/2}) Uᵀ for A = U diag(a) Uᵀ: the 2ⁿ symmetric solutions of P⁻² = A."""
    a, U = torch.linalg.eigh(A)
    return [_from_eigen(U, torch.tensor(signs) * a.rsqrt())
            for signs in itertools.product((1.0, -1.0), repeat=A.shape[0])]


def _points_wrong_power(A: torch.Tensor) -> list[torch.Tensor]:
    """Mutant: U diag(±a⁻¹) Uᵀ."""
    a, U = torch.linalg.eigh(A)
    return [_from_eigen(U, torch.tensor(signs) / a)
            for signs in itertools.product((1.0, -1.0), repeat=A.shape[0])]


def _points_misordered(A: torch.Tensor) -> list[torch.Tensor]:
    """Mutant: the eigenvalues paired with the eigenvectors in reverse order."""
    a, U = torch.linalg.eigh(A)
    return [_from_eigen(U.flip(1), torch.tensor(signs) * a.rsqrt())
            for signs in itertools.product((1.0, -1.0), repeat=A.shape[0])]


def symmetric_hessian(c: Callable[[torch.Tensor], torch.Tensor], P: torch.Tensor) -> torch.Tensor:
    """The Hessian of E ↦ c(P + E) over symmetric E, in the coordinates of E's upper triangle, by
    `torch.func.hessian`."""
    n = P.shape[0]
    rows, cols = torch.triu_indices(n, n)

    def f(x: torch.Tensor) -> torch.Tensor:
        E = torch.zeros(n, n, dtype=x.dtype).index_put((rows, cols), x)
        return c(P + E + torch.triu(E, 1).mT)

    return torch.func.hessian(f)(torch.zeros(rows.shape[0]))


def derived_negative_count(d: torch.Tensor) -> int:
    """The number of negative curvature directions of c at P = U diag(1/d) Uᵀ (v ~ N(0, I)):
    d²c[E, E] = 2Σᵢ dᵢ³Fᵢᵢ² + 2Σ_{i<j} dᵢdⱼ(dᵢ + dⱼ)·2Fᵢⱼ², F = UᵀEU, so one per dᵢ < 0 and one per pair
    with dᵢdⱼ(dᵢ + dⱼ) < 0."""
    pairs = sum(int(d[i] * d[j] * (d[i] + d[j]) < 0) for i, j in itertools.combinations(range(d.shape[0]), 2))
    return int((d < 0).sum()) + pairs


@check(
    id="PSGD-6",
    paper="PSGD §3.3 (Li 2019)",
    statement=(
        "Stationary points of the Newton criterion c(P) = tr(PA) + tr(P⁻¹), A = E[ĤvvᵀĤ] with distinct "
        "eigenvalues, n = 3 and 5: all 2ⁿ points U diag(±a^{-1/2})Uᵀ are stationary for precondalg's "
        "criterion; exactly one is positive definite, and it is the only local minimum (Hessian by "
        "torch.func); the negative definite one is the only local maximum, the others are saddles, with "
        "the derived number of negative curvature directions."
    ),
    tolerance=f"{E_TOL}; exact: counts",
    provenance="PAPER+DERIVED",
    mutants={
        "U diag(±a⁻¹) Uᵀ (the wrong power)": {"points": _points_wrong_power},
        "eigenvalues paired with reversed eigenvectors": {"points": _points_misordered},
    },
)
def psgd_6(
    points: StationaryPoints = stationary_points, sizes: tuple[int, ...] = (3, 5), seed: int = 6
) -> Outcome:
    """PSGD-6 (Li 2019, §3.3): "(10) determines a unique positive definite preconditioner ...  Other
    minimum solutions of criterion (10) are either indefinite or negative definite".

    With v ~ N(0, I), c(P) = tr(PA) + tr(P⁻¹) and ∂c/∂P = A − P⁻², so the symmetric stationary points
    are the P with P² = A⁻¹: P = U diag(sᵢ aᵢ^{-1/2}) Uᵀ for signs sᵢ (2ⁿ of them when the aᵢ are distinct),
    exactly one of them (all sᵢ = +1) positive definite.  The second variation is d²c[E, E] =
    2tr(P⁻¹EP⁻¹EP⁻¹); with dᵢ = sᵢaᵢ^{1/2} (the eigenvalues of P⁻¹) and F = UᵀEU it is
    2Σᵢdᵢ³Fᵢᵢ² + 4Σ_{i<j}dᵢdⱼ(dᵢ + dⱼ)Fᵢⱼ².  So the positive definite point is the only local minimum, the
    negative definite one a local maximum, and every other point a saddle: the paper's "other minimum
    solutions" are stationary points, not minima (c is unbounded below on the non-PD points).

    A = H² + S₁² + S₂² (Ĥ = H + ξ₁S₁ + ξ₂S₂, ξ zero-mean unit-variance), H symmetric indefinite.  The
    criterion is precondalg's on Dense(P) with h the Cholesky factor of A and v = I; curvature signs are
    counted with a threshold of 1e-8 relative to the largest |eigenvalue| of the Hessian.
    """
    gen, out = generator(seed), Measures()
    total = stationary = pd_miss = min_miss = max_miss = inertia_miss = 0
    residual, grad, gap = 0.0, 0.0, math.inf
    for n in sizes:
        H = sym_indefinite(n, gen)
        A = H @ H + sum(S @ S for S in (random_symmetric(n, gen), random_symmetric(n, gen)))
        a = torch.linalg.eigvalsh(A)
        gap = min(gap, float((a[1:] - a[:-1]).min() / a[-1]))
        h, v = _factor(A), torch.eye(n)

        def c(P: torch.Tensor, h: torch.Tensor = h, v: torch.Tensor = v) -> torch.Tensor:
            return criterion(pa.Dense(P), h, v)

        found = points(A)
        total += len(found)
        pd = minima = maxima = 0
        for P in found:
            res = rel_err(torch.linalg.inv(P @ P), A)
            g = float(criterion_gradient(P, h, v).abs().max() / A.abs().max())
            residual, grad = max(residual, res), max(grad, g)
            stationary += int(max(res, g) <= E_RTOL)
            lam = torch.linalg.eigvalsh((P + P.mT) / 2)
            pd += int(lam[0] > 0)
            curv = torch.linalg.eigvalsh(symmetric_hessian(c, P))
            tiny = 1e-8 * curv.abs().max()
            is_min, is_max = bool((curv > tiny).all()), bool((curv < -tiny).all())
            minima += is_min
            maxima += is_max
            min_miss += int(is_min != bool(lam[0] > 0))
            max_miss += int(is_max != bool(lam[-1] < 0))
            inertia_miss += int(int((curv < -tiny).sum()) != derived_negative_count(torch.linalg.eigvalsh(
                torch.linalg.inv((P + P.mT) / 2))))
        pd_miss += abs(pd - 1) + abs(minima - 1) + abs(maxima - 1)
    out.equal(f"points found, n = {sizes}", total, sum(2**n for n in sizes))
    out.equal("points that are stationary (both residuals <= 1e-10)", stationary, total)
    out.at_most("max ‖P⁻² − A‖/‖A‖", residual, E_RTOL)
    out.at_most("max |∂c/∂P|/max|A| of precondalg's criterion", grad, E_RTOL)
    out.equal("|#PD − 1| + |#local minima − 1| + |#local maxima − 1|, summed over n", pd_miss, 0)
    out.equal("points where (local minimum) != (PD) or (local maximum) != (ND)", min_miss + max_miss, 0)
    out.equal("points whose Hessian inertia differs from the derived count", inertia_miss, 0)
    out.details["min relative eigenvalue gap of A"] = gap
    return out.outcome()


# ----- PSGD-7 -----


RelGrad = Callable[[pa.Structure, torch.Tensor, torch.Tensor], pa.Structure]


def _psgd7_groups() -> dict[str, Callable[[torch.Generator], pa.Structure]]:
    """The groups of PSGD-7 (draws as in PSGD-11): the name and how to draw an element."""
    return {
        "Triangular (n = 4)": triu_kind(4).draw,
        "Diagonal (n = 4)": diag_kind(4).draw,
        "Kronecker(Triangular 3, Triangular 2)": kron_kind(triu_kind(3), triu_kind(2)).draw,
        "Normalization (SCAN's Q₂, n = 4)": normalization_kind(4).draw,
        "SCAN: Kronecker(Diagonal 2, Normalization 3)": kron_kind(diag_kind(2), normalization_kind(3)).draw,
    }


def algebra_basis(Q: pa.Structure) -> list[pa.Structure]:
    """A basis of Q's Lie algebra in the coordinates precondalg stores it in (`lie_project`'s type):
    each stored entry set to 1 in turn, keeping those that change the matrix (for a Kronecker group,
    one basis of each factor's algebra, as `KroneckerSum` terms)."""
    zero = pa.lie_project(Q, torch.zeros(Q.shape))
    leaves, spec = pytree.tree_flatten(zero)
    basis = []
    for i, leaf in enumerate(leaves):
        for j in range(leaf.numel()):
            bumped = [x.clone() for x in leaves]
            bumped[i].view(-1)[j] = 1.0
            E = pytree.tree_unflatten(bumped, spec)
            if isinstance(E, pa.KroneckerSum):
                changed = any(bool(t.to_dense().abs().max() > 0) for t in E.terms)
            else:
                changed = bool(E.to_dense().abs().max() > 0)
            if changed:
                basis.append(E)
    return basis


def pairing(R: pa.Structure, E: pa.Structure) -> float:
    """⟨R, E⟩ in the algebra's coordinates: the Frobenius product, term by term for a `KroneckerSum`
    (the derivative of c along factor i's E_i is ⟨R_i, E_i⟩)."""
    if isinstance(R, pa.KroneckerSum):
        return sum(pairing(r, e) for r, e in zip(R.terms, E.terms))
    return float((R.to_dense() * E.to_dense()).sum())


def _parts(R: pa.Structure) -> list[pa.Structure]:
    return list(R.terms) if isinstance(R, pa.KroneckerSum) else [R]


def _flat(R: pa.Structure) -> torch.Tensor:
    return torch.cat([r.to_dense().reshape(-1) for r in _parts(R)])


def _tril_relative_gradient(Q: pa.Structure, h: torch.Tensor, v: torch.Tensor) -> pa.Structure:
    """Mutant: tril in place of triu (the transpose of each term: tril(M) = triu(M)ᵀ for a symmetric
    M = aaᵀ − bbᵀ)."""
    R = closed_form_relative_gradient(Q, h, v)
    flipped = [pa.Dense(r.to_dense().mT) for r in _parts(R)]
    return pa.KroneckerSum(*flipped) if isinstance(R, pa.KroneckerSum) else flipped[0]


def _plus_relative_gradient(Q: pa.Structure, h: torch.Tensor, v: torch.Tensor) -> pa.Structure:
    """Mutant: 2Π(aaᵀ + bbᵀ) (the sign of the b-term dropped), as R(h, 0) − R(0, v)."""
    with_a = closed_form_relative_gradient(Q, h, torch.zeros_like(v))
    with_b = closed_form_relative_gradient(Q, torch.zeros_like(h), v)
    return pytree.tree_map(lambda x, y: x - y, with_a, with_b)


def _c_of(Q: pa.Structure, h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return criterion(pa.gram(Q), h, v)


def _psgd7_draw(
    relgrad: RelGrad, Q: pa.Structure, h: torch.Tensor, v: torch.Tensor, t: float, mu: float
) -> tuple[float, float, float]:
    """One (Q, h, v): the finite-difference error of ⟨R, E⟩ over the algebra basis, R's error against
    the autograd route, and the fitter's first-order descent ratio."""
    R = relgrad(Q, h, v)
    fd, predicted = [], []
    for E in algebra_basis(Q):
        up, down = _c_of(pa.lie_step(Q, E, -t), h, v), _c_of(pa.lie_step(Q, E, t), h, v)
        fd.append(float((up - down) / (2 * t)))
        predicted.append(pairing(R, E))
    fd_err = rel_err(torch.tensor(fd), torch.tensor(predicted))
    leaves, spec = pytree.tree_flatten(Q)
    leaves = [x.clone() for x in leaves]
    ctx = BlockContext(phi=Q, form=pa.gram, grad=h, cache={}, extras={"h": h, "v": v})
    euclidean = NEWTON.meta_grad(ctx)
    route_err = rel_err(_flat(R), _flat(pa.relative_gradient(Q, euclidean)))
    LieGroup(lr=mu).build(leaves, spec).step(pytree.tree_leaves(euclidean))
    change = float(_c_of(pytree.tree_unflatten(leaves, spec), h, v) - _c_of(Q, h, v))
    slope = -sum(pairing(r, r) / float(pa.max_abs(r)) for r in _parts(R))
    return fd_err, route_err, change / (mu * slope)


@check(
    id="PSGD-7",
    paper="PSGD Eqs. 17-18, 20 (Li 2019)",
    statement=(
        "Identity: for Q ← (I + E)Q with E in the Lie algebra (triangular, diagonal, Kronecker of two "
        "triangulars, Normalization = SCAN's Q₂, SCAN), the derivative of precondalg's sample criterion "
        "c = hᵀQᵀQh + vᵀQ⁻¹Q⁻ᵀv along each basis E equals ⟨R, E⟩, R = 2Π(aaᵀ − bbᵀ) (Eq. 18, a = Qh, "
        "b = Q⁻ᵀv; factor-wise for Kronecker) from closed_form_relative_gradient, which equals "
        "relative_gradient of the Newton objective's ∂c/∂Q; the LieGroup fitter's step (Eq. 20) changes c "
        "by −μΣᵢ‖Rᵢ‖²_F/‖Rᵢ‖_max to first order (descent)."
    ),
    tolerance=f"{E_TOL} (closed form vs autograd route); central differences (t = 1e-5): rel. error <= 1e-6; "
    "descent ratio within 1 ± 1e-4 (μ = 1e-6)",
    provenance="PAPER+CODE",
    mutants={
        "tril in place of triu": {"relgrad": _tril_relative_gradient},
        "b-term sign dropped: 2Π(aaᵀ + bbᵀ)": {"relgrad": _plus_relative_gradient},
    },
)
def psgd_7(relgrad: RelGrad = closed_form_relative_gradient, draws: int = 3, seed: int = 7) -> Outcome:
    """PSGD-7 (Li 2019, Eqs. 17–18): the relative gradient of the criterion on the group.

    Derivation: with P = QᵀQ and Q′ = (I + E)Q, hᵀP′h = ‖(I + E)a‖² and vᵀP′⁻¹v = ‖(I + E)⁻ᵀb‖², so
    dc[E] = 2aᵀEa − 2bᵀEb = ⟨2(aaᵀ − bbᵀ), E⟩_F; restricted to the algebra 𝔤 this is ⟨R, E⟩ with
    R = 2Π_𝔤(aaᵀ − bbᵀ) (Π = triu for the triangular group, diag for the diagonal one, the pattern for
    Normalization).  For Q = Q₁ ⊗ Q₂ stepped factor-wise, dc along factor i's Eᵢ is ⟨Rᵢ, Eᵢ⟩ with Rᵢ
    2Πᵢ of the mode-i partial trace.  The normalised step −μRᵢ/‖Rᵢ‖_max per part changes c by
    −μΣᵢ⟨Rᵢ, Rᵢ⟩/‖Rᵢ‖_max + O(μ²) < 0 when R ≠ 0.

    Per group, `draws` elements (as drawn by PSGD-11) with k = 2 columns of h and v, scaled by 10^U(−3, 3)
    independently; derivatives by central differences through `lie_step(Q, E, ∓t)` and
    `gram`; the descent ratio is (c(Q′) − c(Q))/(μ·slope) with Q′ from `LieGroup(lr=μ)` on the
    Newton objective's gradient.
    """
    gen, out = generator(seed), Measures()
    fd_err, route_err, ratio_err, per_group = 0.0, 0.0, 0.0, {}
    for name, draw in _psgd7_groups().items():
        for _ in range(draws):
            Q = draw(gen)
            n = Q.shape[0]
            h = torch.randn(n, 2, generator=gen) * float(log_uniform((), -3, 3, gen))
            v = torch.randn(n, 2, generator=gen) * float(log_uniform((), -3, 3, gen))
            fd, route, ratio = _psgd7_draw(relgrad, Q, h, v, t=1e-5, mu=1e-6)
            fd_err, route_err = max(fd_err, fd), max(route_err, route)
            ratio_err = max(ratio_err, abs(ratio - 1))
            per_group[name] = max(per_group.get(name, 0.0), fd)
    out.at_most("max rel. error, central differences of c vs ⟨R, E⟩ over the algebra bases", fd_err, 1e-6)
    out.at_most("max rel. error, R vs relative_gradient(Q, ∂c/∂Q) (Newton objective)", route_err, E_RTOL)
    out.at_most("max |Δc/(μ·slope) − 1| for the LieGroup step (descent, μ = 1e-6)", ratio_err, 1e-4)
    out.details["finite-difference error per group"] = per_group
    return out.outcome()


# ----- PSGD-13 -----


Equilibration = Callable[[torch.Tensor], torch.Tensor]
FisherDiagonal = Callable[[torch.Tensor, float], torch.Tensor]


def equilibration(H: torch.Tensor) -> torch.Tensor:
    """§6.2: the Newton-type diagonal optimum for v ~ N(0, I) and a noiseless Hessian,
    √(E[v⊙v] ⊘ E[Hv⊙Hv]) = 1/‖H_{i,:}‖₂, the equilibration preconditioner of Dauphin et al. (2015)."""
    return 1 / torch.linalg.vector_norm(H, dim=1)


def _l1_equilibration(H: torch.Tensor) -> torch.Tensor:
    """Mutant: 1/Σⱼ|Hᵢⱼ| (an L1 row norm)."""
    return 1 / H.abs().sum(1)


def fisher_diagonal(second_moment: torch.Tensor, lam: float) -> torch.Tensor:
    """§6.1: the Fisher-type diagonal optimum 1 ⊘ √(E[ĝ⊙ĝ] + λ²): an RMSProp/Adam denominator with
    ε = λ² inside the root."""
    return (second_moment + lam**2).rsqrt()


def _eps_outside_root(second_moment: torch.Tensor, lam: float) -> torch.Tensor:
    """Mutant: 1 ⊘ (√E[ĝ⊙ĝ] + λ²), torch.optim's RMSprop/Adam convention √v + ε."""
    return 1 / (second_moment.sqrt() + lam**2)


def fit_diagonal(h: torch.Tensor, v: torch.Tensor, steps: int = 100, mu: float = 0.5,
                 decay: float = 0.85) -> torch.Tensor:
    """Iterate PSGD's Lie-group step on the diagonal group: the `Newton` criterion's gradient ∂c/∂q for
    P = diag(q²) and the pairs (h, v), then `LieGroup(lr=μ_k)`'s step q ← (I − μ_k R/‖R‖_max)q from
    q = 1, with μ_k = μ·decay^k.  Returns q²."""
    leaves, spec = pytree.tree_flatten(pa.Diagonal(torch.ones(h.shape[0])))
    leaves = [x.clone() for x in leaves]
    for k in range(steps):
        ctx = BlockContext(phi=pytree.tree_unflatten(leaves, spec), form=pa.gram, grad=h, cache={},
                           extras={"h": h, "v": v})
        LieGroup(lr=mu * decay**k).build(leaves, spec).step(pytree.tree_leaves(NEWTON.meta_grad(ctx)))
    return leaves[0] ** 2


def rmsprop_denominator(second_moment: torch.Tensor, eps: float) -> torch.Tensor:
    """1/denominator of precondalg's "rmsprop" base rule (torch.optim's convention √v + ε), with its
    average held at v = E[ĝ⊙ĝ] (α = 1): the step it makes for d = 1."""
    _, s = BASE_RULES["rmsprop"].update(torch.ones_like(second_moment), {"square_avg": second_moment},
                                        {"alpha": 1.0, "eps": eps})
    return s


@check(
    id="PSGD-13",
    paper="PSGD §6.1-6.2 (Li 2019)",
    statement=(
        "Closed forms on the diagonal group, against precondalg's criterion with exact expectations: the "
        "Fisher type P = diag(1 ⊘ √(E[ĝ⊙ĝ] + λ²)) (RMSProp/Adam) and the Newton type "
        "P = diag(√(E[v⊙v] ⊘ E[Hv⊙Hv])) = diag(1/‖H_{i,:}‖₂) (equilibrated SGD) are (a) the BFGS argmin "
        "over log p, (b) the fixed point of the LieGroup fitter on the criterion's gradient, and (c) exact "
        "zeros of the relative gradient: the diagonal Fisher preconditioner is 1/√(v + ε) with ε = λ² "
        "inside the root (not torch's 1/(√v + ε))."
    ),
    tolerance=f"{S_TOL} (BFGS, fitter); {E_TOL}",
    provenance="PAPER+DERIVED",
    mutants={
        "equilibration with the L1 row norm 1/Σⱼ|Hᵢⱼ|": {"newton_form": _l1_equilibration},
        "Fisher with ε outside the root, 1/(√v + λ²)": {"fisher_form": _eps_outside_root},
    },
)
def psgd_13(newton_form: Equilibration = equilibration, fisher_form: FisherDiagonal = fisher_diagonal,
            n: int = 5, lam: float = 0.5, seed: int = 13) -> Outcome:
    """PSGD-13 (Li 2019, §6.1–6.2): diagonal closed forms.

    On the diagonal group c(p) = Σᵢ pᵢE[hᵢ²] + E[vᵢ²]/pᵢ separates, with minimiser pᵢ = √(E[vᵢ²]/E[hᵢ²]).
    Fisher type, h = ĝ + λv: E[hᵢ²] = E[ĝᵢ²] + λ² and E[vᵢ²] = 1, so p = 1 ⊘ √(E[ĝ⊙ĝ] + λ²), the
    RMSProp/Adam denominator with the exact second moment in place of its moving average and ε = λ²
    inside the root.  Newton type, h = Hv with v ~ N(0, I): E[hᵢ²] = (H²)ᵢᵢ = ‖H_{i,:}‖², so
    p = 1/‖H_{i,:}‖₂ (Dauphin et al. 2015).  The relative gradient on the diagonal group at P = diag(q²) is
    R = 2 diag(q²E[h²] − E[v²]/q²)·(2n or m·2n columns), zero exactly at the closed form.

    H symmetric indefinite (n = 5); the Fisher samples: six gradients ĝ with a common mean, λ = 0.5.
    Expectations over v are exact (sigma points); (b) iterates 100 steps with μ_k = 0.5·0.85^k.  The
    details compare with precondalg's "rmsprop" base rule (torch.optim's √v + ε), which matches the
    PSGD form only approximately.
    """
    gen, out = generator(seed), Measures()
    H = sym_indefinite(n, gen)
    V = sigma_points(n)
    gs = torch.randn(n, 6, generator=gen) + torch.randn(n, 1, generator=gen)
    m = (gs * gs).mean(1)
    cases = {"Newton": (newton_form(H), H @ V, V), "Fisher": (fisher_form(m, lam), *fisher_columns(gs, lam))}
    argmin, fitted, residual = {}, {}, {}
    for name, (p, h, v) in cases.items():
        found = bfgs_argmin_log(lambda p_, h=h, v=v: criterion(pa.Diagonal(p_), h, v) / v.shape[1], n)
        argmin[name] = rel_err(found, p)
        fitted[name] = rel_err(fit_diagonal(h, v), p)
        residual[name] = relative_residual(pa.Diagonal(p.sqrt()), h, v)
    out.at_most("(a) max rel. error, BFGS argmin over log p vs closed form (Newton, Fisher)",
                max(argmin.values()), S_RTOL)
    out.at_most("(b) max rel. error, LieGroup fixed point q² vs closed form", max(fitted.values()), S_RTOL)
    out.at_most("(c) max |R|/scale of the relative gradient at the closed forms", max(residual.values()),
                E_RTOL)
    rms = rmsprop_denominator(m, lam**2)
    out.details["errors"] = {"BFGS": argmin, "LieGroup": fitted, "relative gradient": residual}
    psgd = fisher_diagonal(m, lam)
    gap = float(((rms - psgd) / psgd).abs().max())
    out.details["max rel. gap, 1/√(v + λ²) vs the rmsprop rule's 1/(√v + λ²)"] = gap
    return out.outcome()
