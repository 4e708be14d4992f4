"""PSGD (Li 2019) theory checks on the criteria and their closed forms: PSGD-1 (the optimum of Eq. 8),
PSGD-2 (noise damping, eigenvalues of PH in [−1, 1]), PSGD-3 (the scalar case, Eqs. 15–16), PSGD-4
(Hessian-vector products, Eq. 9), PSGD-5 (the Fisher-type closed form, Eqs. 11–14), PSGD-6 (the
stationary points of the Newton criterion, §3.3), PSGD-7 (the relative gradient on the group, Eqs.
17–18) and PSGD-13 (the diagonal closed forms of §6.1–6.2: RMSProp/Adam and equilibrated SGD).

Every optimum under test comes from the library path a user takes: the `Newton` or `Fisher` objective's
statistics set in closed form by the `ClosedForm` fitter (`closed_form_fit`, on the dense, Gram, triangular
Gram, diagonal and scalar families), the `Preconditioned` optimizer with `Fisher` and `ClosedForm` on
drawn gradients (`fisher_closed_form_run`), or the `LieGroup` fitter iterated on the objective's relative
gradient.  Each is compared with an independent reference: matrix roots by scipy (`scipy.linalg.sqrtm`),
dense eigendecompositions, an L-BFGS/BFGS minimiser of the expected criterion written densely in the
check, random perturbations, the paper's closed forms, Monte Carlo averages.  Expectations over
v ~ N(0, I) are exact where a check says so: the pairs (h, v) are columns whose means are the
expectations ((1/k)Σ vvᵀ = I, (1/k)Σ hhᵀ = E[ĤvvᵀĤ] over every sign pattern of a Rademacher Hessian
noise).  This is the closed form's convention: it sets P = ((1/k)Σ_k E_v[h_k h_kᵀ])^{-1/2} over the k
pairs of a step (v integrated out, E[vvᵀ] = I), the criterion's minimiser (through `Preconditioned`, one
column per step with the bias-corrected average of ClosedForm(β < 1)).  The mutants are library-side: a
`Newton` that fits with the gradient g where Hv belongs and a `Fisher` that ignores λ
(`theory_checks.psgd`'s), a `ClosedForm` fitter that takes the wrong matrix power, a criterion with its
two terms swapped, wrong Hessian-vector products.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import scipy.linalg
import scipy.optimize
import torch
import torch.utils._pytree as pytree

import precondalg as pa
from precondalg import families
from precondalg.families import Family, diagonal_gram
from precondalg.fitters import ClosedForm, Fit, LieGroup
from precondalg.objectives import (
    BlockContext,
    Evaluation,
    Fisher,
    Newton,
    closed_form_relative_gradient,
    criterion,
)
from precondalg.objectives.statistics import Statistics
from precondalg.optim import Preconditioned
from precondalg.optim.base_rules import BASE_RULES
from precondalg.placement import Flatten
from theory_checks._numerics import E_ATOL, E_RTOL, E_TOL, generator, log_uniform, rel_err, sym_err
from theory_checks.psgd import (
    FisherWithoutDamping,
    NewtonWithGradient,
    diag_kind,
    kron_kind,
    normalization_kind,
    triu_kind,
)
from theory_checks.registry import Measures, Outcome, check

S_RTOL = 1e-6
"""Class S (solved by an optimizer): relative error of an argmin found by L-BFGS/BFGS."""
S_TOL = "S: rel. error <= 1e-6"
MC_SIGMAS = 5.0
"""Class MC: |estimate − truth| <= 5 standard errors."""
NEWTON = Newton()
"""precondalg's Newton-type criterion (its `meta_grad` is ∂c/∂φ through P_φ = form(φ))."""
CLOSED_FORM = ClosedForm()
"""precondalg's closed-form fitter (β = 1, ε = 0, symmetric eigendecomposition)."""
FAMILIES = (families.dense(), families.dense_gram(), families.triangular_gram())
"""The structure families the dense closed forms are set on, in turn over the draws: P = φ (power 1),
P = φᵀφ with φ symmetric, and P = RᵀR with R upper triangular (power 2, a Cholesky factor)."""


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


def random_symmetric(n: int, gen: torch.Generator) -> torch.Tensor:
    """A random symmetric matrix of spectral norm 1."""
    E = torch.randn(n, n, generator=gen)
    E = E + E.mT
    return E / torch.linalg.matrix_norm(E, 2)


def hessian_noise(n: int, gen: torch.Generator, scale: float) -> list[torch.Tensor]:
    """Two symmetric directions S₁, S₂ of spectral norm `scale`: the Hessian noise Ĥ = H + ξ₁S₁ + ξ₂S₂."""
    return [scale * random_symmetric(n, gen) for _ in range(2)]


def matrix_function(M: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """fn applied to the eigenvalues of the symmetric M (principal branch for roots)."""
    lam, U = torch.linalg.eigh((M + M.mT) / 2)
    return _from_eigen(U, fn(lam))


def sigma_points(n: int) -> torch.Tensor:
    """The 2n columns ±√n·eᵢ (n × 2n): their mean is 0 and their mean outer product is I, so the mean
    over them of a function quadratic in v is its expectation under v ~ N(0, I)."""
    e = torch.eye(n) * n**0.5
    return torch.cat([e, -e], 1)


def _factor(M: torch.Tensor) -> torch.Tensor:
    """The Cholesky factor L of an SPD M (its columns satisfy Σ_k l_k l_kᵀ = M)."""
    return torch.linalg.cholesky((M + M.mT) / 2)


# ----- the library's closed form (PSGD-1, 2, 3, 5, 6, 13) -----


class Pairs(NamedTuple):
    """Columns (n, k) of the criterion's pairs whose means are exact expectations: h = Ĥv, v with
    (1/k)Σ vvᵀ = I, and the gradients Ĥθ at drawn θ (what a criterion that fits with g would read)."""

    h: torch.Tensor
    v: torch.Tensor
    grad: torch.Tensor


def hessian_pairs(H: torch.Tensor, noise: list[torch.Tensor], gen: torch.Generator) -> Pairs:
    """For Ĥ = H + Σⱼ ξⱼSⱼ with Rademacher ξ and v ~ N(0, I): the k = n·2^m pairs v = √n·eᵢ, h = Ĥ_ξv over
    every sign pattern ξ (m = len(noise)) and unit vector eᵢ, whose means are the expectations:
    (1/k)Σ vvᵀ = E[vvᵀ] = I and (1/k)Σ hhᵀ = E[ĤvvᵀĤ] = H² + Σⱼ Sⱼ²; the gradients Ĥ_ξ·√n·θᵢ at
    θ ~ N(0, I)."""
    n = H.shape[0]
    c = n**0.5
    signs = itertools.product((1.0, -1.0), repeat=len(noise))
    hats = [H + sum(x * S for x, S in zip(xi, noise)) for xi in signs]
    theta = torch.randn(n, n, generator=gen)
    return Pairs(torch.cat([c * M for M in hats], 1), c * torch.eye(n).repeat(1, len(hats)),
                 torch.cat([c * M @ theta for M in hats], 1))


def closed_form_fit(
    pairs: Pairs, objective: Newton | Fisher = NEWTON, family: Family = FAMILIES[0],
    fitter: ClosedForm = CLOSED_FORM,
) -> torch.Tensor:
    """The dense P = form(φ) that precondalg's closed-form path sets from the pairs: the objective's
    `Statistics` for the block (n, k) (``BlockContext.statistics``, the family's power), proposed to the
    `ClosedForm` fitter built on the family's φ₀ — what `Preconditioned` does with these objects at one
    step.  For the PSGD criteria, P = ((1/k)Σ hhᵀ)^{-1/2} over the k pairs, v integrated out (E[vvᵀ] = I)."""
    h = pairs.h
    phi = family.init((h.shape[0],), h, None)
    leaves, spec = pytree.tree_flatten(phi)
    ctx = BlockContext(phi=phi, form=family.form, grad=pairs.grad, cache={}, extras={"h": h, "v": pairs.v},
                       statistics=True, power=family.power)
    new = fitter.build([x.clone() for x in leaves], spec).propose_statistics(objective.meta_grad(ctx))
    return family.form(pytree.tree_unflatten(new, spec)).to_dense()


def library_optimum(
    H: torch.Tensor, noise: list[torch.Tensor], B: torch.Tensor, gen: torch.Generator,
    objective: Newton = NEWTON, family: Family = FAMILIES[0], fitter: ClosedForm = CLOSED_FORM,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The library's Newton-type optimum for δθ of second moment B and the noisy Hessian Ĥ = H + Σξⱼ Sⱼ:
    in the coordinates θ = Dθ′ (D the Cholesky factor of B) the steps δθ′ = v′ have E[v′v′ᵀ] = I and
    the Hessian is DᵀĤD, where the closed form sets P′ (`closed_form_fit` on `hessian_pairs`); back in
    θ the preconditioner is P = DP′Dᵀ.  Returns P and A = E[δĝδĝᵀ] = HBH + Σⱼ SⱼBSⱼ."""
    D = _factor(B)
    pairs = hessian_pairs(D.mT @ H @ D, [D.mT @ S @ D for S in noise], gen)
    P = D @ closed_form_fit(pairs, objective, family, fitter) @ D.mT
    return P, H @ B @ H + sum((S @ B @ S for S in noise), torch.zeros_like(B))


def fisher_closed_form_run(
    gs: torch.Tensor, lam: float, beta: float, family: Family, fisher: Callable[..., Fisher] = Fisher,
    closed_form: Callable[..., ClosedForm] = ClosedForm, seed: int = 0,
) -> torch.Tensor:
    """`Preconditioned([θ], lr=0, structure=family, placement=Flatten(), objective=fisher(damping=λ),
    fitter=closed_form(beta=β))` stepped once per column g_t of gs (n × T) set as θ's gradient: the
    dense P it holds after the T steps (the bias-corrected average of the statistics)."""
    theta = torch.zeros(gs.shape[0], requires_grad=True)
    opt = Preconditioned([theta], 0.0, structure=family, placement=Flatten(), objective=fisher(damping=lam),
                         fitter=closed_form(beta=beta), seed=seed)
    for g in gs.mT:
        theta.grad = g.clone()
        opt.step()
    ((_, P),) = opt.preconditioners()
    return P.to_dense()


def ema_weights(T: int, beta: float) -> torch.Tensor:
    """The weights (1 − β)β^(T−t)/(1 − β^T), t = 1..T, of the bias-corrected exponential average: the
    distribution of ĝ whose expectation the closed form reads after T steps."""
    w = (1 - beta) * beta ** torch.arange(T - 1, -1, -1, dtype=torch.float64)
    return w / (1 - beta**T)


class _WrongPowerFit(Fit):
    """The `ClosedForm` fit with every exponent doubled (see `_WrongPowerClosedForm`): the library's own
    fit, wrapped through the public `Fit` interface, sees the statistics with exponents 2e."""

    def __init__(self, inner: Fit) -> None:
        self.inner = inner

    def step(self, grads: list[torch.Tensor]) -> None:
        self.inner.step(grads)

    def propose_statistics(self, statistics: Statistics) -> list[torch.Tensor] | None:
        doubled = tuple(2 * e for e in statistics.exponents)
        return self.inner.propose_statistics(dataclasses.replace(statistics, exponents=doubled))

    def tensors(self) -> list[torch.Tensor]:
        return self.inner.tensors()

    def failed(self) -> torch.Tensor | None:
        return self.inner.failed()

    def phi(self) -> pa.Structure | None:
        return self.inner.phi()

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)


@dataclasses.dataclass(frozen=True)
class _WrongPowerClosedForm(ClosedForm):
    """Mutant fitter: `ClosedForm` setting the part to (S + δI)^(2e) — P = (Σhhᵀ)⁻¹ for the PSGD
    criteria, the wrong matrix power."""

    def build(self, leaves: list[torch.Tensor], spec: pytree.TreeSpec | None = None) -> _WrongPowerFit:
        return _WrongPowerFit(super().build(leaves, spec))


NEWTON_WITH_GRADIENT = NewtonWithGradient()
"""Mutant objective: the `Newton` criterion fitting with the gradient g where Hv belongs."""
WRONG_POWER = _WrongPowerClosedForm()
"""Mutant fitter: the closed form with the wrong matrix power, (Σhhᵀ)⁻¹."""


# ----- independent references -----


def _np(M: torch.Tensor) -> np.ndarray:
    return M.detach().numpy()


def scipy_inverse_sqrt(M: torch.Tensor) -> torch.Tensor:
    """M^{-1/2} of an SPD M by scipy (`scipy.linalg.sqrtm` and `scipy.linalg.inv`)."""
    return torch.from_numpy(scipy.linalg.inv(np.real(scipy.linalg.sqrtm(_np(M)))))


def geometric_mean(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """The positive definite solution of PAP = B (Eq. 8), A^{-1/2}(A^{1/2}BA^{1/2})^{1/2}A^{-1/2} (the
    matrix geometric mean of A⁻¹ and B), by scipy's principal square roots."""
    root = np.real(scipy.linalg.sqrtm(_np(A)))
    inv_root = scipy.linalg.inv(root)
    return torch.from_numpy(inv_root @ np.real(scipy.linalg.sqrtm(root @ _np(B) @ root)) @ inv_root)


def inverse_abs(H: torch.Tensor) -> torch.Tensor:
    """|H|⁻¹ = U diag(1/|λ|) Uᵀ from the eigendecomposition of the symmetric H."""
    return matrix_function(H, lambda lam: 1 / lam.abs())


def reference_criterion(P: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """The expected criterion c(P) = tr(PA) + tr(P⁻¹B) (Eq. 7), written densely."""
    return torch.trace(P @ A) + torch.trace(torch.linalg.solve(P, B))


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


def _lambda_range(P: torch.Tensor) -> tuple[float, float]:
    lam = torch.linalg.eigvalsh((P + P.mT) / 2)
    return float(lam[0]), float(lam[-1])


def _noise_scale(gen: torch.Generator) -> float:
    """The Hessian noise scale, U(0, 2)."""
    return 2 * float(torch.rand((), generator=gen))


# ----- PSGD-1 -----


def _psgd1_noisy(
    objective: Newton, fitter: ClosedForm, gen: torch.Generator, cases: int, perturbed: int, solved: int
) -> dict[str, float]:
    """The noisy case over `cases` draws: worst Riccati residual, error against scipy's geometric mean,
    asymmetry, PD floor and ceiling ratios, precondalg's criterion gradient; perturbation gap and
    L-BFGS error on the first draws."""
    worst = {"riccati": 0.0, "scipy": 0.0, "asym": 0.0, "floor": math.inf, "ceiling": 0.0, "grad": 0.0,
             "gap": math.inf, "lbfgs": 0.0}
    for i in range(cases):
        n = 2 + int(torch.randint(5, (), generator=gen))
        H, B = sym_indefinite(n, gen), spd(n, gen)
        noise = hessian_noise(n, gen, _noise_scale(gen))
        P, A = library_optimum(H, noise, B, gen, objective, FAMILIES[i % 3], fitter)
        lo, hi = _lambda_range(P)
        a_lo, a_hi = _lambda_range(A)
        b_lo, b_hi = _lambda_range(B)
        worst["riccati"] = max(worst["riccati"], rel_err(P @ A @ P, B))
        worst["scipy"] = max(worst["scipy"], rel_err(P, geometric_mean(A, B)) / float(torch.linalg.cond(A)))
        worst["asym"] = max(worst["asym"], sym_err(P))
        worst["floor"] = min(worst["floor"], lo / math.sqrt(b_lo / a_hi))
        worst["ceiling"] = max(worst["ceiling"], hi / math.sqrt(b_hi / a_lo))
        grad = criterion_gradient(P, _factor(A), _factor(B))
        worst["grad"] = max(worst["grad"], float(grad.abs().max() / A.abs().max()))
        c = lambda X, A=A, B=B: reference_criterion(X, A, B)  # noqa: E731
        if i < perturbed:
            worst["gap"] = min(worst["gap"], perturbation_gap(c, P, gen, draws=200, t=1e-3))
        if i < solved:
            worst["lbfgs"] = max(worst["lbfgs"], rel_err(P, lbfgs_minimiser(c, n)))
    return worst


def _psgd1_noiseless(
    objective: Newton, fitter: ClosedForm, gen: torch.Generator, cases: int
) -> tuple[float, float, int]:
    """B = I, no noise: worst rel. error of the library's P against |H|⁻¹, worst ||eig(PH)| − 1|, and
    the total mismatch between the number of eigenvalues −1 of PH and of negative eigenvalues of H."""
    err, unit, mismatch = 0.0, 0.0, 0
    for i in range(cases):
        n = 2 + int(torch.randint(5, (), generator=gen))
        H = sym_indefinite(n, gen)
        P, _ = library_optimum(H, [], torch.eye(n), gen, objective, FAMILIES[i % 3], fitter)
        err = max(err, rel_err(P, inverse_abs(H)))
        eig = torch.linalg.eigvals(P @ H)
        unit = max(unit, float((eig.abs() - 1).abs().max()))
        minus = int((eig.real < 0).sum())
        mismatch += abs(minus - int((torch.linalg.eigvalsh(H) < 0).sum()))
    return err, unit, mismatch


def _psgd1_covariance(objective: Newton, fitter: ClosedForm, gen: torch.Generator, cases: int) -> float:
    """θ′ = Dθ (D drawn near-diagonal, invertible): the library's optimum for the moved problem
    (H′ = D⁻ᵀHD⁻¹, S′ⱼ = D⁻ᵀSⱼD⁻¹, B′ = DBDᵀ) against DPDᵀ, P the library's optimum for the original;
    the worst rel. error divided by cond(A′)."""
    err = 0.0
    for i in range(cases):
        n = 2 + int(torch.randint(5, (), generator=gen))
        H, B = sym_indefinite(n, gen), spd(n, gen)
        noise = hessian_noise(n, gen, _noise_scale(gen))
        D = torch.randn(n, n, generator=gen) / (2 * n**0.5) + torch.diag(0.5 + torch.rand(n, generator=gen))
        Di = torch.linalg.inv(D)
        P, _ = library_optimum(H, noise, B, gen, objective, FAMILIES[i % 3], fitter)
        moved, A = library_optimum(Di.mT @ H @ Di, [Di.mT @ S @ Di for S in noise], D @ B @ D.mT, gen,
                                   objective, FAMILIES[(i + 1) % 3], fitter)
        err = max(err, rel_err(moved, D @ P @ D.mT) / float(torch.linalg.cond(A)))
    return err


@check(
    id="PSGD-1",
    paper="PSGD Eqs. 7-8 (Li 2019)",
    statement=(
        "Closed form: the P that precondalg's Newton objective and ClosedForm fitter set (dense, Gram and "
        "triangular Gram families; noisy Hessian Ĥ = H + ξ₁S₁ + ξ₂S₂, δθ of second moment B through the "
        "coordinates θ = Dθ′, DDᵀ = B) solves PAP = B for A = E[δĝδĝᵀ] = HBH + ΣSⱼBSⱼ (Eq. 8), equals "
        "scipy's geometric mean A^{-1/2}(A^{1/2}BA^{1/2})^{1/2}A^{-1/2}, is symmetric positive definite with "
        "√(λ_min(B)/λ_max(A)) <= λ(P) <= √(λ_max(B)/λ_min(A)), and minimises c(P) = tr(PA) + tr(P⁻¹B): zero "
        "gradient of precondalg's criterion, no decrease under 200 random perturbations, equal to an L-BFGS "
        "minimiser; noiseless (B = I): P = |H|⁻¹, eig(PH) = ±1 with as many −1 as H has negative "
        "eigenvalues; covariance: the library's optimum after θ′ = Dθ is DPDᵀ."
    ),
    tolerance=(
        f"{E_TOL} (scipy: <= 1e-12·cond(A), covariance: <= 1e-12·cond(A′)); {S_TOL} (L-BFGS); perturbation "
        "gap >= 0; exact: sign-count mismatches == 0"
    ),
    provenance="PAPER+DERIVED",
    mutants={
        "Newton fits with g where Hv belongs": {"objective": NEWTON_WITH_GRADIENT},
        "ClosedForm with the wrong matrix power, (Σhhᵀ)⁻¹": {"fitter": WRONG_POWER},
    },
)
def psgd_1(objective: Newton = NEWTON, fitter: ClosedForm = CLOSED_FORM, cases: int = 20,
           seed: int = 1) -> Outcome:
    """PSGD-1 (Li 2019, Eqs. 7–8): the optimal preconditioner and the noiseless case.

    Proof: c(P) = tr(PA) + tr(P⁻¹B) is convex on the positive definite cone (tr(P⁻¹B) is) with
    gradient A − P⁻¹BP⁻¹, so its minimisers are the positive definite solutions of PAP = B.  Writing
    S = A^{1/2}PA^{1/2}, this is S² = A^{1/2}BA^{1/2}, whose only positive definite solution is the
    principal root: P = A^{-1/2}(A^{1/2}BA^{1/2})^{1/2}A^{-1/2}, the geometric mean A⁻¹ # B.  The mean is
    monotone in each argument, so (1/λ_max(A))I # λ_min(B)I ⪯ P ⪯ (1/λ_min(A))I # λ_max(B)I, which are the
    eigenvalue bounds.  Noiseless, A = H² and B = I, so P = (H²)^{-1/2} = |H|⁻¹ and PH = sign(H), with
    eigenvalues ±1 (one −1 per negative eigenvalue of H).  The library's closed form integrates v out with
    E[vvᵀ] = I; for δθ = Dv′ the criterion is covariant (θ = Dθ′ maps the optimum P′ of A′ = DᵀAD, B′ = I
    to DP′Dᵀ, which solves PAP = DDᵀ), so P = DP′Dᵀ.  Covariance for any invertible D: under θ′ = Dθ,
    A′ = D⁻ᵀAD⁻¹ and B′ = DBDᵀ, and DPDᵀ solves P′A′P′ = B′ and is positive definite, hence is the
    solution; the check moves H, the noise and B and compares the library's two optima.

    Draws: n = 2..6, H with eigenvalue magnitudes in [0.1, 10], B with eigenvalues in [0.1, 10], the
    Hessian noise scale in [0, 2]; the families dense, dense Gram, triangular Gram in turn.  The references
    are scipy's roots, the dense criterion (perturbations E: 5 draws × 200, symmetric of spectral norm
    λ_min(P), t = 1e-3; L-BFGS on 3 draws) and the eigendecomposition of H; precondalg's criterion is
    evaluated on Dense(P) with h, v the Cholesky factors of A and B.
    """
    gen, out = generator(seed), Measures()
    worst = _psgd1_noisy(objective, fitter, gen, cases, perturbed=5, solved=3)
    err, unit, mismatch = _psgd1_noiseless(objective, fitter, gen, cases=10)
    cov = _psgd1_covariance(objective, fitter, gen, cases=5)
    out.at_most(f"max ‖PAP − B‖/‖B‖ (Eq. 8) over {cases} noisy draws", worst["riccati"], E_RTOL)
    out.at_most("max rel. error/cond(A), P vs scipy's geometric mean", worst["scipy"], E_ATOL)
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
    """(a), gradient noise independent of δθ: δθ ~ N(0, B), ε = Σ^{1/2}r with Rademacher r and
    Σ^{1/2} a random SPD root, δĝ = Hδθ + ε.  Returns λ_min(M̂)/se."""
    H, B = sym_indefinite(n, gen), spd(n, gen)
    root_sigma = spd(n, gen)
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


def _psgd2_eigen(objective: Newton, fitter: ClosedForm, gen: torch.Generator, cases: int) -> dict[str, float]:
    """(b) over `cases` draws (every fourth noiseless) of the library's P, each divided by κ = cond(A)
    (the matrix roots lose digits in proportion to it): the worst (|eig(PH)| − 1)/κ, the worst error of
    the identity ‖B^{-1/2}PHB^{1/2}‖₂² = 1 − λ_min(B^{-1/2}PΣPB^{-1/2}) (Σ = ΣⱼSⱼBSⱼ), the worst
    ||eig(PH)| − 1|/κ over the noiseless draws; the worst criterion gradient at P; the plain max |eig(PH)|."""
    worst = {"eig": -math.inf, "identity": 0.0, "unit": 0.0, "grad": 0.0, "max |eig|": 0.0}
    for i in range(cases):
        n = 2 + i % 5
        H, B = sym_indefinite(n, gen), spd(n, gen)
        noiseless = i % 4 == 0
        noise = [] if noiseless else hessian_noise(n, gen, _noise_scale(gen))
        P, A = library_optimum(H, noise, B, gen, objective, FAMILIES[i % 3], fitter)
        Sigma = A - H @ B @ H
        eig = torch.linalg.eigvals(P @ H).abs()
        kappa = float(torch.linalg.cond(A))
        worst["max |eig|"] = max(worst["max |eig|"], float(eig.max()))
        worst["eig"] = max(worst["eig"], float(eig.max() - 1) / kappa)
        if noiseless:
            worst["unit"] = max(worst["unit"], float((eig - 1).abs().max()) / kappa)
        b_root, b_inv_root = matrix_function(B, torch.sqrt), matrix_function(B, torch.rsqrt)
        norm2 = float(torch.linalg.matrix_norm(b_inv_root @ P @ H @ b_root, 2)) ** 2
        damp = float(torch.linalg.eigvalsh(b_inv_root @ P @ Sigma @ P @ b_inv_root)[0])
        worst["identity"] = max(worst["identity"], abs(norm2 - (1 - damp)) / kappa)
        grad = criterion_gradient(P, _factor(A), _factor(B))
        worst["grad"] = max(worst["grad"], float(grad.abs().max() / A.abs().max()))
    return worst


def _psgd2_damping(objective: Newton, fitter: ClosedForm, gen: torch.Generator, cases: int) -> float:
    """(c) B = I: min λ_min(|H|⁻¹ − P)/‖|H|⁻¹‖₂ over `cases` noisy draws of the library's P."""
    worst = math.inf
    for i in range(cases):
        n = 2 + i % 5
        H = sym_indefinite(n, gen)
        noise = hessian_noise(n, gen, _noise_scale(gen))
        P, _ = library_optimum(H, noise, torch.eye(n), gen, objective, FAMILIES[i % 3], fitter)
        inv_abs = inverse_abs(H)
        lam = torch.linalg.eigvalsh(inv_abs - (P + P.mT) / 2)
        worst = min(worst, float(lam[0] / torch.linalg.eigvalsh(inv_abs)[-1]))
    return worst


@check(
    id="PSGD-2",
    paper="PSGD §2.2 and §3.3 (Li 2019)",
    statement=(
        "Bounds: (a) H⁻¹E[δĝδĝᵀ]H⁻¹ ⪰ E[δθδθᵀ] for gradient noise uncorrelated with δθ (MC, 2·10⁵ samples: "
        "independent Rademacher noise, and precondalg's finite-difference δĝ of a noisy-Hessian quadratic); "
        "(b) for the P that precondalg's Newton objective and ClosedForm fitter set (PSGD-1's draws), every "
        "eigenvalue of PH has modulus <= 1, by the identity "
        "‖B^{-1/2}PHB^{1/2}‖₂² = 1 − λ_min(B^{-1/2}PΣPB^{-1/2}) (= 1 iff Σ = 0), over 100 draws; (c) with "
        "B = I, the library's P = (H² + Σ)^{-1/2} ⪯ |H|⁻¹."
    ),
    tolerance=(
        "MC: λ_min >= −5·se; E: |eig(PH)| − 1 and the norm identity's error <= 1e-12·cond(A), ∂c/∂P rel. "
        "<= 1e-10, λ_min(|H|⁻¹ − P) >= −1e-12"
    ),
    provenance="PAPER+DERIVED",
    mutants={
        "Newton fits with g where Hv belongs": {"objective": NEWTON_WITH_GRADIENT},
        "ClosedForm with the wrong matrix power, (Σhhᵀ)⁻¹": {"fitter": WRONG_POWER},
    },
)
def psgd_2(objective: Newton = NEWTON, fitter: ClosedForm = CLOSED_FORM, cases: int = 100,
           samples: int = 200_000, seed: int = 2) -> Outcome:
    """PSGD-2 (Li 2019, §2.2 citing Li 2018, and §3.3): noise damping and eigenvalues of PH in [−1, 1].

    (a) With δĝ = Hδθ + ε and E[δθεᵀ] = 0, H⁻¹E[δĝδĝᵀ]H⁻¹ = E[δθδθᵀ] + H⁻¹E[εεᵀ]H⁻¹.  (b) For the
    optimal P (PSGD-1), PAP = B with A = HBH + Σ gives PHBHP = B − PΣP; conjugating by B^{-1/2},
    KKᵀ = I − B^{-1/2}PΣPB^{-1/2} for K = B^{-1/2}PHB^{1/2}, so ‖K‖₂² = 1 − λ_min(B^{-1/2}PΣPB^{-1/2}) <= 1,
    and PH is similar to K, so |eig(PH)| <= ‖K‖₂ <= 1, with KKᵀ = I (all |eig| = 1) iff Σ = 0.  (c) With
    B = I, P = (H² + Σ)^{-1/2} and t ↦ t^{-1/2} is operator monotone decreasing, so P ⪯ (H²)^{-1/2} = |H|⁻¹.

    P is the library's (`library_optimum`); each draw also checks that precondalg's criterion has zero
    gradient there.  (a) uses n = 4, two noise models, and the standard error of the per-sample values
    along the eigenvector of λ_min.  The (b) identities go through matrix roots, which lose about
    cond(A)·eps (cond(A) reaches 10⁶ for these draws): their errors are compared with 1e-12·cond(A).
    100 draws for (b), the budget of PSGD-1/2.
    """
    gen, out = generator(seed), Measures()
    mc_independent = _psgd2_independent(gen, 4, samples)
    mc_engine = _psgd2_engine(gen, 4, samples)
    worst = _psgd2_eigen(objective, fitter, gen, cases)
    damping = _psgd2_damping(objective, fitter, gen, cases=50)
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


def scalar_optimum(h: float, noise_var: float) -> float:
    """Eq. 15, the positive root: p = 1/√(h² + E[(ĥ − h)²])."""
    return 1 / math.sqrt(h * h + noise_var)


def scalar_pairs(h: float, s: float, gen: torch.Generator) -> Pairs:
    """The exact expectation of the scalar criterion as a two-point mean: pairs (v, ĥv) = (1, h ± s), so
    that the means are E[v²] = 1 and E[ĥ²v²] = h² + s² = E[ĥ²]E[v²] (ĥ − h independent of v); the
    gradients ĥθ at θ ~ N(0, 1).  1 × 2 tensors."""
    hv = torch.tensor([[h + s, h - s]])
    return Pairs(hv, torch.ones(1, 2), hv * torch.randn(1, 2, generator=gen))


def _psgd3_exact(
    objective: Newton, fitter: ClosedForm, gen: torch.Generator, draws: int
) -> dict[str, float]:
    """(a) the library's scalar closed form against the BFGS argmin of the dense expected criterion and
    against Eq. 15; |ph| and the curvature of precondalg's criterion at −p."""
    worst = {"argmin": 0.0, "eq15": 0.0, "ph": 0.0, "unit": 0.0, "maxima": 0}
    for i in range(draws):
        h = float(log_uniform((), -1, 1, gen)) * (1 if i % 2 else -1)
        s = 0.0 if i % 4 == 0 else 5 * float(torch.rand((), generator=gen))
        pairs = scalar_pairs(h, s, gen)
        p = float(closed_form_fit(pairs, objective, families.scalar(), fitter).squeeze())
        found = float(bfgs_argmin_log(lambda q, h=h, s=s: q * (h * h + s * s) + 1 / q, 0))
        worst["argmin"] = max(worst["argmin"], abs(p - found) / found)
        worst["eq15"] = max(worst["eq15"], abs(p / scalar_optimum(h, s * s) - 1))
        worst["ph"] = max(worst["ph"], abs(p * h))
        if s == 0:
            worst["unit"] = max(worst["unit"], abs(abs(p * h) - 1))
        curvature = torch.func.grad(torch.func.grad(
            lambda q, pairs=pairs: criterion(pa.Scalar(q, 1), pairs.h, pairs.v)))
        worst["maxima"] += int(curvature(torch.tensor(-p)) < 0)
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


def _psgd3_mc(objective: Newton, fitter: ClosedForm, gen: torch.Generator, samples: int) -> float:
    """(b) For ĥ = h + sξ and v of the six law pairs: the library's closed form p̂ = (mean ĥ²v²)^{-1/2}
    from the N pairs (ĥv, v) (v integrated out, E[v²] = 1); the worst |p̂ − p|/se against Eq. 15,
    se by the delta method."""
    worst = 0.0
    for xi_law, v_law in itertools.product(("Gaussian", "Rademacher", "Student-t5"), ("Gaussian", "uniform")):
        h = float(log_uniform((), -1, 1, gen)) * (1 if torch.rand((), generator=gen) < 0.5 else -1)
        s = 5 * float(torch.rand((), generator=gen))
        v = _unit_variance(v_law, samples, gen)
        hv = (h + s * _unit_variance(xi_law, samples, gen)) * v
        p_hat = float(closed_form_fit(Pairs(hv[None], v[None], hv[None]), objective,
                                      families.scalar(), fitter).squeeze())
        W = hv * hv
        se = p_hat * 0.5 * float(W.std() / W.mean()) / samples**0.5
        worst = max(worst, abs(p_hat - scalar_optimum(h, s * s)) / se)
    return worst


def fit_scalar(
    pairs: Pairs, objective: Newton = NEWTON, mu: float = 0.5, tol: float = 1e-10, steps: int = 400
) -> float:
    """Iterate PSGD's Lie-group step on the group of non-zero scalars as `Preconditioned` does with
    `LieGroup`: the objective's relative gradient R for P = q² and the pairs (``BlockContext.relative``),
    then the fitter's step q ← q(1 − μR/|R|) from q = 1, with μ halved whenever the step reverses
    direction (a bisection in log q) until μ < tol.  Returns q²."""
    leaves, spec = pytree.tree_flatten(pa.Scalar(torch.tensor(1.0), 1))
    leaves = [leaf.clone() for leaf in leaves]
    last = 0.0
    for _ in range(steps):
        ctx = BlockContext(phi=pytree.tree_unflatten(leaves, spec), form=pa.gram, grad=pairs.grad, cache={},
                           extras={"h": pairs.h, "v": pairs.v}, relative=True)
        before = float(leaves[0])
        answer = objective.meta_grad(ctx)
        LieGroup(lr=mu).build(leaves, spec).step_relative(answer.R, answer.scale)
        direction = math.copysign(1.0, float(leaves[0]) - before) if float(leaves[0]) != before else 0.0
        if direction == 0.0:
            break
        if last and direction != last:
            mu /= 2
            if mu < tol:
                break
        last = direction
    return float(leaves[0]) ** 2


def _psgd3_fit(objective: Newton, gen: torch.Generator, draws: int) -> float:
    """(c) worst |q²/p − 1| of the LieGroup fixed point against Eq. 15, over drawn (h, s)."""
    worst = 0.0
    for _ in range(draws):
        h = float(log_uniform((), -1, 1, gen)) * (1 if torch.rand((), generator=gen) < 0.5 else -1)
        s = 5 * float(torch.rand((), generator=gen))
        q2 = fit_scalar(scalar_pairs(h, s, gen), objective)
        worst = max(worst, abs(q2 / scalar_optimum(h, s * s) - 1))
    return worst


def _psgd3_descent(
    objective: Newton, h: float, mu: float, mu0: float, steps: int, burn: int, seed: int
) -> list[float]:
    """(d) precondalg's `Preconditioned` optimizer (diagonal_gram, the objective, LieGroup(μ₀), lr μ) on
    f(x) = ½hx² from x = 1: the per-step factors x_{k+1}/x_k after `burn` steps."""
    x = torch.ones(1, requires_grad=True)
    opt = Preconditioned([x], lr=mu, structure=diagonal_gram(), placement=Flatten(), objective=objective,
                         fitter=LieGroup(lr=mu0), seed=seed)
    xs = [1.0]
    for _ in range(steps):
        opt.step(lambda: 0.5 * h * (x * x).sum())
        xs.append(float(x.detach()))
    return [b / a for a, b in zip(xs[burn:-1], xs[burn + 1:])]


@check(
    id="PSGD-3",
    paper="PSGD Eqs. 15-16, §3.3 (Li 2019)",
    statement=(
        "The scalar case, from the library: (a) the p that precondalg's Newton objective and ClosedForm "
        "fitter set (scalar family) from the exact expectation equals the BFGS argmin of p(h² + s²) + 1/p "
        "and p = 1/√(h² + s²) (Eq. 15), so |ph| <= 1 (Eq. 16, = 1 noiseless), and −p is a local maximum of "
        "precondalg's criterion; (b) MC, 2·10⁵ samples, ĥ = h + sξ for six noise/v laws: the closed form "
        "from the samples is within 5 se of Eq. 15; (c) the LieGroup fitter on the Newton criterion's "
        "gradient converges to q² = p; (d) the Preconditioned optimizer (diagonal_gram, Newton, LieGroup) "
        "on ½hx² contracts by a factor in 1 − μ[(1 − μ₀)², (1 + μ₀)²] per step when h > 0 and grows by at "
        "least 1 + μ(1 − μ₀)² when h < 0; h, s drawn."
    ),
    tolerance=f"{S_TOL} (BFGS, fitter); {E_TOL} (Eq. 15); MC: <= 5·se; exact: counts",
    provenance="PAPER+DERIVED",
    mutants={
        "Newton fits with g where Hv belongs": {"objective": NEWTON_WITH_GRADIENT},
        "ClosedForm with the wrong matrix power, 1/(h² + s²)": {"fitter": WRONG_POWER},
    },
)
def psgd_3(objective: Newton = NEWTON, fitter: ClosedForm = CLOSED_FORM, draws: int = 12,
           samples: int = 200_000, mu: float = 0.5, mu0: float = 0.1, seed: int = 3) -> Outcome:
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
    (0, 1)) or expands (h < 0: a maximum is repelled).  From q₀ = 1 the band is entered within
    ½|ln h|/ln(1 + μ₀) <= 12 steps for |h| ∈ [0.1, 10].

    Draws: h = ±10^U(−1, 1), s = U(0, 5) (s = 0 for every fourth draw of (a)); (b) laws of ξ Gaussian,
    Rademacher, Student-t₅ and of v Gaussian, uniform, all of unit variance; (c) 4 draws; (d) h = 10^U(−1, 1)
    and h = −10^U(−1, 1), μ = 0.5, μ₀ = 0.1, 40 steps, the factors of the last 25.
    """
    gen, out = generator(seed), Measures()
    exact = _psgd3_exact(objective, fitter, gen, draws)
    mc = _psgd3_mc(objective, fitter, gen, samples)
    fitted = _psgd3_fit(objective, gen, draws=4)
    hs = (float(log_uniform((), -1, 1, gen)), -float(log_uniform((), -1, 1, gen)))
    factors = {h: _psgd3_descent(objective, h, mu, mu0, steps=40, burn=15, seed=seed) for h in hs}
    contract = max(abs(f) for f in factors[hs[0]])
    expand = min(factors[hs[1]])
    out.at_most(f"(a) max rel. error, library p vs BFGS argmin of the criterion, {draws} draws",
                exact["argmin"], S_RTOL)
    out.at_most("(a) max rel. error, library p vs Eq. 15", exact["eq15"], E_RTOL)
    out.at_most("(a) max |ph| (Eq. 16)", exact["ph"], 1 + E_RTOL)
    out.at_most("(a) noiseless draws: max ||ph| − 1|", exact["unit"], E_RTOL)
    out.equal("(a) negative roots −p with c″ < 0 (local maxima)", exact["maxima"], draws)
    out.at_most("(b) max |p̂ − p|/se over 6 laws (MC)", mc, MC_SIGMAS)
    out.at_most("(c) max |q²/p − 1| of the LieGroup fixed point (4 draws)", fitted, S_RTOL)
    contraction_bound = max(abs(1 - mu * (1 - mu0) ** 2), abs(1 - mu * (1 + mu0) ** 2))
    out.at_most("(d) h > 0: max |x_{k+1}/x_k| (bound max|1 − μ(1 ∓ μ₀)²|)", contract,
                contraction_bound * (1 + E_RTOL))
    out.at_least("(d) h < 0: min x_{k+1}/x_k (bound 1 + μ(1 − μ₀)²)", expand,
                 (1 + mu * (1 - mu0) ** 2) * (1 - E_RTOL))
    out.details["(d) h and |x_40/x_15|"] = {h: math.prod(fs) for h, fs in factors.items()}
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
    """A drawn instance of each loss: a quadratic ½θᵀAθ + bᵀθ (A symmetric indefinite, n ∈ [2, 6]), the
    Rosenbrock function at the paper's start (−1, 1) moved by N(0, 0.5²I), and a tanh MLP 3→w→2 (w ∈
    [2, 6], four parameter tensors) with squared error on a batch of N ∈ [2, 16] samples."""
    n = int(torch.randint(2, 7, (), generator=gen))
    A, b = sym_indefinite(n, gen), torch.randn(n, generator=gen)
    quadratic = HvpProblem(f"quadratic n={n}", _Vector(torch.randn(n, generator=gen)),
                           lambda t, _: 0.5 * t @ A @ t + b @ t, (torch.zeros(1), torch.zeros(1)))
    start = torch.tensor([-1.0, 1.0]) + 0.5 * torch.randn(2, generator=gen)
    rosenbrock = HvpProblem("Rosenbrock", _Vector(start), _rosenbrock, (torch.zeros(1), torch.zeros(1)))
    width, N = int(torch.randint(2, 7, (), generator=gen)), int(torch.randint(2, 17, (), generator=gen))
    skip = torch.nn.utils.skip_init  # no draw from torch's global generator; the values come from `gen`
    mlp = torch.nn.Sequential(skip(torch.nn.Linear, 3, width), torch.nn.Tanh(),
                              skip(torch.nn.Linear, width, 2))
    with torch.no_grad():
        for p in mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    batch = (torch.randn(N, 3, generator=gen), torch.randn(N, 2, generator=gen))
    return [quadratic, rosenbrock, HvpProblem(f"tanh MLP w={width} N={N}", mlp, _mse, batch)]


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
        "Hessian (torch.autograd.functional.hessian), on drawn instances of a quadratic (n ∈ [2, 6]), the "
        "Rosenbrock function (around the paper's start) and a tanh MLP 3→w→2 (four parameter tensors, "
        "w ∈ [2, 6], batch N ∈ [2, 16]), for hvp = \"autograd\" (double backward, Eq. 9), \"torch.func\" "
        "(forward-over-reverse) and \"finite_difference\" (δθ = √eps·v, as psgd_np's demo)."
    ),
    tolerance=f"{E_TOL} (autograd, torch.func); finite differences: rel. error <= 1e-6",
    provenance="PAPER+CODE",
    mutants={
        "double backward without create_graph=True (h = 0)": {"newton": _no_create_graph},
        "v redrawn after h (pair broken)": {"newton": _redrawn_v},
    },
)
def psgd_4(newton: Callable[[str, HvpProblem], Newton] = newton_objective, draws: int = 1,
           seed: int = 4) -> Outcome:
    """PSGD-4 (Li 2019, Eq. 9): ∂/∂θ[(∂f̂/∂θ)ᵀv] = Ĥv, since v does not depend on θ.

    `newton(hvp, problem)` builds the objective under test; each of the `draws` drawn instances of the
    three problems is evaluated once per hvp with a seeded generator, and h is compared with the
    explicit Hessian times the v it returned.
    """
    gen, out = generator(seed), Measures()
    problems = [p for _ in range(draws) for p in hvp_problems(gen)]
    errors: dict[str, dict[str, float]] = {}
    for hvp in ("autograd", "torch.func", "finite_difference"):
        errors[hvp] = {}
        for p in problems:
            errors[hvp][p.name] = max(errors[hvp].get(p.name, 0.0), hvp_error(newton(hvp, p), p, gen))
    for hvp, bound in HVP_TOLERANCES.items():
        out.at_most(f"max rel. error, Newton(hvp={hvp!r}) h vs Ĥv ({len(problems)} problems)",
                    max(errors[hvp].values()), bound)
    out.details["rel. errors"] = errors
    return out.outcome()



# ----- PSGD-5 -----


def batch_second_moment(F: torch.Tensor, g: torch.Tensor, B: int) -> torch.Tensor:
    """Eq. 14: E[ĝĝᵀ] = F/B + (B − 1)ggᵀ/B for the mean ĝ of B i.i.d. per-sample gradients of second
    moment F and mean g."""
    return F / B + (B - 1) * torch.outer(g, g) / B


def fisher_map_error(fisher: Callable[..., Fisher], lam: float, gen: torch.Generator) -> float:
    """precondalg's `Fisher(damping=λ)` pairs its own v with h = g + λv (Eq. 11): the normwise error of
    its h against g + λv, for a linear loss gᵀθ (gradient g)."""
    g = torch.randn(4, generator=gen)
    theta = torch.randn(4, generator=gen).requires_grad_(True)
    ev = fisher(damping=lam).evaluate([theta], lambda: (g * theta).sum(), gen)
    return rel_err(ev.per_param["h"][theta], g + lam * ev.per_param["v"][theta])


def fisher_columns(gs: torch.Tensor, lam: float, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pairs (h, v) = (g_t + λv_i, v_i)·√(w_t/2n) for every gradient sample g_t (columns of gs, of
    weight w_t) and every sigma point v_i: the sum of the criterion over them is its exact expectation
    (Eq. 12) for ĝ = g_t with probability w_t and v ~ N(0, I) independent of ĝ.  Returns (h, v),
    n × (T·2n)."""
    V = sigma_points(gs.shape[0])
    c = (w / V.shape[1]).sqrt()
    h = torch.cat([(g[:, None] + lam * V) * ct for g, ct in zip(gs.mT, c)], 1)
    return h, torch.cat([V * ct for ct in c], 1)


def relative_residual(Q: pa.Structure, h: torch.Tensor, v: torch.Tensor) -> float:
    """max|R|/max|2Σaaᵀ| for precondalg's closed-form relative gradient R = 2Π(Σaaᵀ − Σbbᵀ) at Q
    (a = Qh, b = Q⁻ᵀv): zero where P = QᵀQ is a stationary point of the criterion on the group."""
    R = closed_form_relative_gradient(Q, h, v)
    a = Q @ h
    return float(R.to_dense().abs().max() / (2 * (a @ a.mT).abs().max()))


def _fisher_draw(gen: torch.Generator) -> tuple[torch.Tensor, float, float, torch.Tensor]:
    """A Fisher instance: n ∈ [2, 6], T ∈ [n + 1, 16] gradients (n × T, so that E[ĝĝᵀ] is non-singular)
    with a common non-zero mean, λ ∈ U(0.1, 1), the averaging β ∈ U(0.5, 0.95) and its weights w."""
    n = int(torch.randint(2, 7, (), generator=gen))
    T = int(torch.randint(n + 1, 17, (), generator=gen))
    gs = torch.randn(n, T, generator=gen) + torch.randn(n, 1, generator=gen)
    lam = 0.1 + 0.9 * float(torch.rand((), generator=gen))
    beta = 0.5 + 0.45 * float(torch.rand((), generator=gen))
    return gs, lam, beta, ema_weights(T, beta)


def _psgd5_closed_form(
    fisher: Callable[..., Fisher], closed_form: Callable[..., ClosedForm], gen: torch.Generator, draws: int
) -> dict[str, float]:
    """(a) over `draws` Fisher instances: Fisher's pairs (Eq. 11), precondalg's criterion against Eq. 12
    at a random P, and the P the `Preconditioned` optimizer sets (Fisher, ClosedForm(β)) against scipy's
    (E[ĝĝᵀ] + λ²I)^{-1/2}, the relative gradient there (Q its Cholesky factor, triangular), the
    perturbation gap and the L-BFGS argmin of the dense expected criterion."""
    worst = {"map": 0.0, "eq12": 0.0, "scipy": 0.0, "residual": 0.0, "gap": math.inf, "lbfgs": 0.0}
    for i in range(draws):
        gs, lam, beta, w = _fisher_draw(gen)
        n = gs.shape[0]
        worst["map"] = max(worst["map"], fisher_map_error(fisher, lam, gen))
        M = (gs * w) @ gs.mT + lam**2 * torch.eye(n)
        h, v = fisher_columns(gs, lam, w)
        X = spd(n, gen)
        expected = reference_criterion(X, M, torch.eye(n))
        worst["eq12"] = max(worst["eq12"], rel_err(criterion(pa.Dense(X), h, v), expected))
        P = fisher_closed_form_run(gs, lam, beta, FAMILIES[i % 3], fisher, closed_form, seed=i)
        worst["scipy"] = max(worst["scipy"], rel_err(P, scipy_inverse_sqrt(M)))
        Q = pa.Triangular(_factor(P).mT)  # P = QᵀQ, Q upper triangular (PSGD's group)
        worst["residual"] = max(worst["residual"], relative_residual(Q, h, v))
        c = lambda X, M=M: reference_criterion(X, M, torch.eye(M.shape[0]))  # noqa: E731
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


def library_second_moment(
    rows: torch.Tensor, fisher: Callable[..., Fisher], closed_form: Callable[..., ClosedForm]
) -> torch.Tensor:
    """The second moment that precondalg's closed form reads from the N gradient rows (N × n), as
    P⁻² for the P that `Fisher(λ = 0)` and the closed-form fitter set from the N columns rows (their mean
    second moment)."""
    columns = rows.mT
    P = closed_form_fit(Pairs(columns, torch.zeros_like(columns), columns), fisher(damping=0.0),
                        FAMILIES[0], closed_form())
    return torch.linalg.inv(P @ P)


def _z_scores(estimate: torch.Tensor, rows: torch.Tensor, truth: torch.Tensor, scale: float = 1.0) -> float:
    """max over entries i <= j of |scale·estimate_ij − truth_ij| / (scale·se), se that of the sample mean
    of x_i x_j over the rows."""
    n, N = rows.shape[1], rows.shape[0]
    worst = 0.0
    for i, j in itertools.combinations_with_replacement(range(n), 2):
        se = scale * float((rows[:, i] * rows[:, j]).std()) / N**0.5
        worst = max(worst, float((scale * estimate[i, j] - truth[i, j]).abs()) / se)
    return worst


@check(
    id="PSGD-5",
    paper="PSGD Eqs. 11-14 (Li 2019)",
    statement=(
        "Closed form and MC, from the library: (a) precondalg's Fisher objective pairs h = g + λv; its "
        "criterion's exact expectation is tr{P(E[ĝĝᵀ] + λ²I) + P⁻¹} (Eq. 12); the P that the Preconditioned "
        "optimizer sets with Fisher(λ) and ClosedForm(β) on drawn gradients equals scipy's "
        "(E[ĝĝᵀ] + λ²I)^{-1/2} (Eq. 13, E the bias-corrected average), has zero relative gradient on the "
        "triangular group, no decrease under 200 perturbations and equals an L-BFGS minimiser; (b) the "
        "second moment the closed form reads from batch means is F/B + (B − 1)ggᵀ/B (Eq. 14); (c) from "
        "ĝ − g + g/√B it is F/B (λ = 0: P²/B estimates F⁻¹).  MC: 4·10⁵ skewed per-sample gradients in "
        "batches of B = 2 and B = 16."
    ),
    tolerance=f"{E_TOL}; {S_TOL} (L-BFGS); perturbation gap >= 0; MC: <= 5·se",
    provenance="PAPER",
    mutants={
        "Fisher ignores λ (fits with h = g, statistics without λ²I)": {"fisher": FisherWithoutDamping},
        "ClosedForm with the wrong matrix power, (E[ĝĝᵀ] + λ²I)⁻¹": {"closed_form": _WrongPowerClosedForm},
    },
)
def psgd_5(fisher: Callable[..., Fisher] = Fisher, closed_form: Callable[..., ClosedForm] = ClosedForm,
           draws: int = 3, per_sample: int = 400_000, seed: int = 5) -> Outcome:
    """PSGD-5 (Li 2019, Eqs. 11–14): the Fisher-type criterion and its closed form.

    (a) With v ~ N(0, I) independent of ĝ, E[(ĝ + λv)ᵀP(ĝ + λv)] = tr(PE[ĝĝᵀ]) + λ²tr(P) (the cross term
    has zero mean) and E[vᵀP⁻¹v] = tr(P⁻¹): Eq. 12.  Its gradient E[ĝĝᵀ] + λ²I − P⁻² vanishes at the
    positive definite P = (E[ĝĝᵀ] + λ²I)^{-1/2} (Eq. 13), the minimum (the criterion is convex on the
    positive definite cone).  (b) For ĝ = (1/B)Σgᵢ, E[ĝĝᵀ] = (1/B²)(B·F + B(B − 1)ggᵀ).  (c) With s = g,
    E[(ĝ − g + g/√B)(·)ᵀ] = Cov(ĝ) + ggᵀ/B = (F − ggᵀ)/B + ggᵀ/B = F/B, so the Eq. 13 optimum with λ = 0
    is P = (F/B)^{-1/2} and P²/B = F⁻¹.

    (a) draws n ∈ [2, 6], T ∈ [2, 16] gradients with a common non-zero mean set as θ's gradient one per
    step, λ ∈ U(0.1, 1), β ∈ U(0.5, 0.95) (ĝ = g_t with the bias-corrected weight (1 − β)β^(T−t)/(1 − β^T)),
    the dense, Gram and triangular Gram families in turn; the expectation over v is exact (sigma points).
    (b), (c): n = 3, per-sample gradients g + Lz with skewed z, 4·10⁵ of them for each B (2·10⁵ batches of
    2, 2.5·10⁴ batches of 16); the closed form reads the mean of ĝĝᵀ over the batches.
    """
    gen, out = generator(seed), Measures()
    worst = _psgd5_closed_form(fisher, closed_form, gen, draws)
    n = 3
    g, L = torch.randn(n, generator=gen), torch.randn(n, n, generator=gen) / n**0.5 + torch.eye(n)
    F = torch.outer(g, g) + L @ L.mT
    z14, zshift = 0.0, 0.0
    for B in (2, 16):
        rows = _batch_means(g, L, B, per_sample // B, gen)
        z14 = max(z14, _z_scores(library_second_moment(rows, fisher, closed_form), rows,
                                 batch_second_moment(F, g, B)))
        shifted = rows - g + g / B**0.5
        moment = library_second_moment(shifted, fisher, closed_form)
        zshift = max(zshift, _z_scores(moment, shifted, F, scale=B))
    out.at_most("(a) max rel. error, Fisher's h vs g + λv (Eq. 11)", worst["map"], E_RTOL)
    out.at_most("(a) max rel. error, precondalg's expected criterion vs tr{P(E[ĝĝᵀ] + λ²I) + P⁻¹} (Eq. 12)",
                worst["eq12"], E_RTOL)
    out.at_most("(a) max rel. error, Preconditioned(Fisher, ClosedForm) P vs scipy (E[ĝĝᵀ] + λ²I)^{-1/2}",
                worst["scipy"], E_RTOL)
    out.at_most("(a) max |R|/scale of the relative gradient at the library's P (Eq. 13)", worst["residual"],
                E_RTOL)
    out.at_least(f"(a) min (c(P + tE) − c(P))/c(P), {draws} draws × 200 symmetric E, t = 1e-3", worst["gap"],
                 0.0)
    out.at_most("(a) max rel. error, P vs L-BFGS argmin over P = LLᵀ", worst["lbfgs"], S_RTOL)
    out.at_most("(b) max |P⁻² − (F/B + (B−1)ggᵀ/B)|/se (Eq. 14), B = 2, 16", z14, MC_SIGMAS)
    out.at_most("(c) max |B·P⁻² − F|/se, P from ĝ − g + g/√B", zshift, MC_SIGMAS)
    return out.outcome()


# ----- PSGD-6 -----


Criterion = Callable[[pa.Structure, torch.Tensor, torch.Tensor], torch.Tensor]


def _swapped_criterion(P: pa.Structure, h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Mutant criterion: Σ vᵀPv + hᵀP⁻¹h (the roles of h and v swapped; its stationary points are
    P² = A, not P⁻² = A)."""
    return criterion(P, v, h)


def sign_points(A: torch.Tensor) -> list[torch.Tensor]:
    """All P = U diag(±a^{-1/2}) Uᵀ for A = U diag(a) Uᵀ (torch.linalg.eigh): the 2ⁿ symmetric solutions
    of P⁻² = A, the all-plus one first."""
    a, U = torch.linalg.eigh(A)
    return [_from_eigen(U, torch.tensor(signs) * a.rsqrt())
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
        "Stationary points of the Newton criterion c(P) = tr(PA) + tr(P⁻¹), A = E[ĤvvᵀĤ] = H² + S₁² + S₂² "
        "with distinct eigenvalues, 2 drawn n ∈ [2, 5]: the P that precondalg's Newton objective and "
        "ClosedForm fitter set is the positive definite point U diag(a^{-1/2})Uᵀ (eigh of A); all 2ⁿ points "
        "U diag(±a^{-1/2})Uᵀ are stationary for precondalg's criterion; exactly one is positive definite, "
        "and it is the only local minimum (Hessian by torch.func); the negative definite one is the only "
        "local maximum, the others are saddles, with the derived number of negative curvature directions."
    ),
    tolerance=f"{E_TOL}; exact: counts",
    provenance="PAPER+DERIVED",
    mutants={
        "ClosedForm with the wrong matrix power, A⁻¹": {"fitter": WRONG_POWER},
        "criterion with h and v swapped, Σ vᵀPv + hᵀP⁻¹h": {"crit": _swapped_criterion},
    },
)
def psgd_6(objective: Newton = NEWTON, fitter: ClosedForm = CLOSED_FORM, crit: Criterion = criterion,
           draws: int = 2, seed: int = 6) -> Outcome:
    """PSGD-6 (Li 2019, §3.3): "(10) determines a unique positive definite preconditioner ...  Other
    minimum solutions of criterion (10) are either indefinite or negative definite".

    With v ~ N(0, I), c(P) = tr(PA) + tr(P⁻¹) and ∂c/∂P = A − P⁻², so the symmetric stationary points
    are the P with P² = A⁻¹: P = U diag(sᵢ aᵢ^{-1/2}) Uᵀ for signs sᵢ (2ⁿ of them when the aᵢ are distinct),
    exactly one of them (all sᵢ = +1) positive definite.  The second variation is d²c[E, E] =
    2tr(P⁻¹EP⁻¹EP⁻¹); with dᵢ = sᵢaᵢ^{1/2} (the eigenvalues of P⁻¹) and F = UᵀEU it is
    2Σᵢdᵢ³Fᵢᵢ² + 4Σ_{i<j}dᵢdⱼ(dᵢ + dⱼ)Fᵢⱼ².  So the positive definite point is the only local minimum, the
    negative definite one a local maximum, and every other point a saddle: the paper's "other minimum
    solutions" are stationary points, not minima (c is unbounded below on the non-PD points).

    Ĥ = H + ξ₁S₁ + ξ₂S₂ (ξ Rademacher, S of spectral norm U(0.5, 1.5)), H symmetric indefinite; the closed
    form is set from the pairs `hessian_pairs` (means (1/k)Σhhᵀ = A, (1/k)Σvvᵀ = I; the dense, Gram and
    triangular Gram families in turn); precondalg's criterion is evaluated on Dense(P) with h the
    Cholesky factor of A and v = I (its exact expectation); curvature signs are counted with a threshold
    of 1e-8 relative to the largest |eigenvalue| of the Hessian.
    """
    gen, out = generator(seed), Measures()
    total = stationary = pd_miss = min_miss = max_miss = inertia_miss = 0
    residual, grad, library, gap, sizes = 0.0, 0.0, 0.0, math.inf, []
    for i in range(draws):
        n = int(torch.randint(2, 6, (), generator=gen))
        sizes.append(n)
        H = sym_indefinite(n, gen)
        noise = hessian_noise(n, gen, 0.5 + float(torch.rand((), generator=gen)))
        pairs = hessian_pairs(H, noise, gen)
        A = H @ H + sum(S @ S for S in noise)
        a = torch.linalg.eigvalsh(A)
        gap = min(gap, float((a[1:] - a[:-1]).min() / a[-1]))

        h, v = _factor(A), torch.eye(n)

        def c(P: torch.Tensor, h: torch.Tensor = h, v: torch.Tensor = v) -> torch.Tensor:
            return crit(pa.Dense(P), h, v)

        found = sign_points(A)
        library = max(library, rel_err(closed_form_fit(pairs, objective, FAMILIES[i % 3], fitter), found[0]))
        total += len(found)
        pd = minima = maxima = 0
        for P in found:
            res = rel_err(torch.linalg.inv(P @ P), A)
            g = float(torch.func.grad(c)(P).abs().max() / A.abs().max())
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
    out.at_most("max rel. error, the library's closed-form P vs the positive definite point", library, E_RTOL)
    out.equal(f"points found, n = {sizes}", total, sum(2**n for n in sizes))
    out.equal("points that are stationary (both residuals <= 1e-10)", stationary, total)
    out.at_most("max ‖P⁻² − A‖/‖A‖", residual, E_RTOL)
    out.at_most("max |∂c/∂P|/max|A| of precondalg's criterion", grad, E_RTOL)
    out.equal("|#PD − 1| + |#local minima − 1| + |#local maxima − 1|, summed over the draws", pd_miss, 0)
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


DIAGONAL_FAMILIES = (diagonal_gram(), families.diagonal())
"""The diagonal families the closed forms are set on, in turn over the draws: P = diag(q)ᵀdiag(q) (power
2, PSGD's diagonal group) and P = diag(d) (power 1)."""


def equilibration(H: torch.Tensor) -> torch.Tensor:
    """§6.2: the Newton-type diagonal optimum for v ~ N(0, I) and a noiseless Hessian,
    √(E[v⊙v] ⊘ E[Hv⊙Hv]) = 1/‖H_{i,:}‖₂, the equilibration preconditioner of Dauphin et al. (2015)."""
    return 1 / torch.linalg.vector_norm(H, dim=1)


def fisher_diagonal(second_moment: torch.Tensor, lam: float) -> torch.Tensor:
    """§6.1: the Fisher-type diagonal optimum 1 ⊘ √(E[ĝ⊙ĝ] + λ²): an RMSProp/Adam denominator with
    ε = λ² inside the root."""
    return (second_moment + lam**2).rsqrt()


def diagonal_criterion(p: torch.Tensor, h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The criterion on P = diag(p), Σ_k Σᵢ pᵢh_ik² + v_ik²/pᵢ, written densely."""
    return (p[:, None] * h * h + v * v / p[:, None]).sum()


def fit_diagonal(h: torch.Tensor, v: torch.Tensor, objective: Newton | Fisher = NEWTON, steps: int = 100,
                 mu: float = 0.5, decay: float = 0.85) -> torch.Tensor:
    """Iterate PSGD's Lie-group step on the diagonal group as `Preconditioned` does with `LieGroup`: the
    objective's relative gradient R for P = diag(q²) and the pairs (h, v) (``BlockContext.relative``,
    the closed form of Eq. 18), then `LieGroup(lr=μ_k)`'s step q ← (I − μ_k R/‖R‖_max)q from q = 1, with
    μ_k = μ·decay^k.  Returns q²."""
    leaves, spec = pytree.tree_flatten(pa.Diagonal(torch.ones(h.shape[0])))
    leaves = [x.clone() for x in leaves]
    for k in range(steps):
        ctx = BlockContext(phi=pytree.tree_unflatten(leaves, spec), form=pa.gram, grad=h, cache={},
                           extras={"h": h, "v": v}, relative=True)
        answer = objective.meta_grad(ctx)
        LieGroup(lr=mu * decay**k).build(leaves, spec).step_relative(answer.R, answer.scale)
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
        "Diagonal closed forms from the library, on drawn n ∈ [2, 6]: the P that precondalg's Newton "
        "objective and ClosedForm fitter set from the exact expectation (diagonal Gram and diagonal "
        "families) is diag(√(E[v⊙v] ⊘ E[Hv⊙Hv])) = diag(1/‖H_{i,:}‖₂) (equilibrated SGD); the P that the "
        "Preconditioned optimizer sets with Fisher(λ) and ClosedForm(β) on T ∈ [2, 16] drawn gradients is "
        "diag(1 ⊘ √(E[ĝ⊙ĝ] + λ²)) (RMSProp/Adam with ε = λ² inside the root, not torch's 1/(√v + ε)); both "
        "are (a) the BFGS argmin over log p of the dense expected criterion, (b) the fixed point of the "
        "LieGroup fitter on the criterion's gradient, and (c) exact zeros of precondalg's relative gradient."
    ),
    tolerance=f"{S_TOL} (BFGS, fitter); {E_TOL}",
    provenance="PAPER+DERIVED",
    mutants={
        "Newton fits with g where Hv belongs": {"objective": NEWTON_WITH_GRADIENT},
        "Fisher ignores λ (fits with h = g, statistics without λ²I)": {"fisher": FisherWithoutDamping},
        "ClosedForm with the wrong matrix power": {"closed_form": _WrongPowerClosedForm},
    },
)
def psgd_13(objective: Newton = NEWTON, fisher: Callable[..., Fisher] = Fisher,
            closed_form: Callable[..., ClosedForm] = ClosedForm, draws: int = 3, seed: int = 13) -> Outcome:
    """PSGD-13 (Li 2019, §6.1–6.2): diagonal closed forms.

    On the diagonal group c(p) = Σᵢ pᵢE[hᵢ²] + E[vᵢ²]/pᵢ separates, with minimiser pᵢ = √(E[vᵢ²]/E[hᵢ²]).
    Fisher type, h = ĝ + λv: E[hᵢ²] = E[ĝᵢ²] + λ² and E[vᵢ²] = 1, so p = 1 ⊘ √(E[ĝ⊙ĝ] + λ²), the
    RMSProp/Adam denominator with the exact second moment in place of its moving average and ε = λ²
    inside the root.  Newton type, h = Hv with v ~ N(0, I): E[hᵢ²] = (H²)ᵢᵢ = ‖H_{i,:}‖², so
    p = 1/‖H_{i,:}‖₂ (Dauphin et al. 2015).  The relative gradient on the diagonal group at P = diag(q²) is
    R = 2 diag(q²E[h²] − E[v²]/q²), zero exactly at the closed form.

    Per draw: H symmetric indefinite with the pairs √n(He_i, e_i) (means H² and I); the Fisher instance
    as PSGD-5's (T gradients with a common mean, λ ∈ U(0.1, 1), β ∈ U(0.5, 0.95), ĝ = g_t with the
    bias-corrected weights), whose expectation over v is exact with the weighted sigma points.  (b)
    iterates 100 steps with μ_k = 0.5·0.85^k.  The details compare with precondalg's "rmsprop" base rule
    (torch.optim's √v + ε), which matches the PSGD form only approximately.
    """
    gen, out = generator(seed), Measures()
    argmin: dict[str, float] = {"Newton": 0.0, "Fisher": 0.0}
    closed, fitted, residual = dict(argmin), dict(argmin), dict(argmin)
    gap = 0.0
    for i in range(draws):
        family = DIAGONAL_FAMILIES[i % 2]
        n = int(torch.randint(2, 7, (), generator=gen))
        H = sym_indefinite(n, gen)
        pairs = hessian_pairs(H, [], gen)
        newton_p = torch.diagonal(closed_form_fit(pairs, objective, family, closed_form()))
        gs, lam, beta, w = _fisher_draw(gen)
        second_moment = (gs * gs * w).sum(1)
        fisher_p = torch.diagonal(fisher_closed_form_run(gs, lam, beta, family, fisher, closed_form, seed=i))
        cases = {
            "Newton": (newton_p, equilibration(H), pairs.h, pairs.v),
            "Fisher": (fisher_p, fisher_diagonal(second_moment, lam), *fisher_columns(gs, lam, w)),
        }
        for name, (p, reference, h, v) in cases.items():
            closed[name] = max(closed[name], rel_err(p, reference))
            found = bfgs_argmin_log(lambda p_, h=h, v=v: diagonal_criterion(p_, h, v), p.shape[0])
            argmin[name] = max(argmin[name], rel_err(p, found))
            fitted[name] = max(fitted[name], rel_err(fit_diagonal(h, v, objective), p))
            residual[name] = max(residual[name], relative_residual(pa.Diagonal(p.sqrt()), h, v))
        rms = rmsprop_denominator(second_moment, lam**2)
        gap = max(gap, float(((rms - fisher_p) / fisher_p).abs().max()))
    out.at_most("max rel. error, library P vs diag(1/‖H_{i,:}‖₂) and diag(1 ⊘ √(E[ĝ⊙ĝ] + λ²))",
                max(closed.values()), E_RTOL)
    out.at_most("(a) max rel. error, library P vs BFGS argmin over log p", max(argmin.values()), S_RTOL)
    out.at_most("(b) max rel. error, LieGroup fixed point q² vs library P", max(fitted.values()), S_RTOL)
    out.at_most("(c) max |R|/scale of precondalg's relative gradient at the library P",
                max(residual.values()), E_RTOL)
    out.details["errors"] = {"closed form": closed, "BFGS": argmin, "LieGroup": fitted,
                             "relative gradient": residual}
    out.details["max rel. gap, library 1/√(v + λ²) vs the rmsprop rule's 1/(√v + λ²)"] = gap
    return out.outcome()
