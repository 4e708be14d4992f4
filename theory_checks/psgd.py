"""PSGD (Li 2019) theory checks: PSGD-8 (Eq. 20's normalised step keeps Q in its group, with per-step
bounds), PSGD-11 (Lie-group closure rules, §5, Eqs. 21 and 25) and PSGD-15 (the clipping bound, §4.4,
through the `PSGD` preset).

Group elements are precondalg structures (`precondalg.structures.lie`).  PSGD-11 uses `compose` and
`inverse`; PSGD-8 runs PSGD's fitting loop: the `Newton` criterion's gradient and the `LieGroup`
fitter.  Both compare with dense matrices and with sparsity patterns written down independently of the
structures.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from functools import reduce

import torch
import torch.utils._pytree as pytree

import precondalg as pa
from precondalg.fitters import Fitter, LieGroup
from precondalg.objectives import BlockContext, Newton
from precondalg.optim import PSGD
from theory_checks._numerics import (
    E_ATOL,
    E_RTOL,
    E_TOL,
    dense_of,
    generator,
    log_uniform,
    off_pattern,
    rel_err,
)
from theory_checks.registry import Measures, Outcome, check

Draw = Callable[[torch.Generator], pa.Structure]


@dataclasses.dataclass(frozen=True)
class GroupKind:
    """A matrix group to check: how to draw a random element, and its sparsity pattern (bool, n×n)."""

    draw: Draw
    pattern: torch.Tensor


def _signs(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)


def _nonzero(n: int, gen: torch.Generator, signed: bool = True) -> torch.Tensor:
    """Entries of magnitude in [0.5, 1.5], with random signs when `signed`."""
    mag = 0.5 + torch.rand(n, generator=gen)
    return mag * _signs(n, gen) if signed else mag


def diag_kind(n: int) -> GroupKind:
    """Diagonal matrices with positive entries."""
    return GroupKind(lambda g: pa.Diagonal(_nonzero(n, g, signed=False)), torch.eye(n, dtype=torch.bool))


def triu_kind(n: int) -> GroupKind:
    """Invertible upper-triangular matrices (PSGD Eq. 18)."""

    def draw(g: torch.Generator) -> pa.Structure:
        return pa.Triangular(0.5 * torch.randn(n, n, generator=g) + torch.diag(_nonzero(n, g)))

    return GroupKind(draw, torch.ones(n, n, dtype=torch.bool).triu())


def dense_kind(n: int) -> GroupKind:
    """GL(n), drawn near ±I so that elements are well conditioned."""

    def draw(g: torch.Generator) -> pa.Structure:
        return pa.Dense(torch.randn(n, n, generator=g) / (2 * n**0.5) + torch.diag(_nonzero(n, g)))

    return GroupKind(draw, torch.ones(n, n, dtype=torch.bool))


def normalization_kind(n: int) -> GroupKind:
    """SCAN's Q₂: non-zero diagonal plus the last column."""
    pattern = torch.eye(n, dtype=torch.bool)
    pattern[:, -1] = True
    return GroupKind(lambda g: pa.Normalization(_nonzero(n, g), torch.randn(n - 1, generator=g)), pattern)


def kron_kind(*kinds: GroupKind) -> GroupKind:
    """The Kronecker product of groups (row-major, `pa.Kronecker`): pattern kron of the patterns."""
    pattern = reduce(lambda a, b: torch.kron(a.int(), b.int()).bool(), [k.pattern for k in kinds])
    return GroupKind(lambda g: pa.Kronecker(*[k.draw(g) for k in kinds]), pattern)


def direct_sum_kind(*kinds: GroupKind) -> GroupKind:
    """The direct sum of groups (`pa.BlockDiagonal`): block-diagonal pattern."""
    pattern = torch.block_diag(*[k.pattern.int() for k in kinds]).bool()
    return GroupKind(lambda g: pa.BlockDiagonal(*[k.draw(g) for k in kinds]), pattern)


def tridiagonal_kind(n: int) -> GroupKind:
    """Mutant: tridiagonal matrices, which are NOT a group (the product has bandwidth 2)."""
    i = torch.arange(n)
    pattern = (i[:, None] - i[None, :]).abs() <= 1

    def draw(g: torch.Generator) -> pa.Structure:
        return pa.Dense(torch.randn(n, n, generator=g) * pattern + 3 * torch.eye(n))

    return GroupKind(draw, pattern)


GROUP_KINDS: dict[str, GroupKind] = {
    "diag": diag_kind(4),
    "triu": triu_kind(5),
    "dense": dense_kind(4),
    "kron": kron_kind(triu_kind(3), triu_kind(2)),
    "scan": kron_kind(diag_kind(2), normalization_kind(3)),
    "scaw": kron_kind(diag_kind(3), triu_kind(2)),
    "direct_sum": direct_sum_kind(triu_kind(2), normalization_kind(3), dense_kind(2)),
}
"""The groups of PSGD-11 as structures (the block-triangular group is checked by its explicit formula)."""


def signature(A: pa.Structure) -> tuple:
    """The structure type of A, recursively through Kronecker factors and BlockDiagonal blocks."""
    children = getattr(A, "factors", None) or getattr(A, "blocks", None) or ()
    return (type(A).__name__, tuple(signature(c) for c in children))


def eq25_matrix(mean: torch.Tensor, std: torch.Tensor) -> pa.Structure:
    """PSGD Eq. 25: diag(1/σ, 1) plus the last column −m/σ, normalising features augmented with a 1."""
    return pa.Normalization(torch.cat([1 / std, torch.ones(1)]), -mean / std)


def _eq25_free_last_row(mean: torch.Tensor, std: torch.Tensor) -> pa.Structure:
    """Mutant: the Eq. 25 set with a non-constant last row (last diagonal entry 1 + mean σ)."""
    return pa.Normalization(torch.cat([1 / std, 1 + std.mean().reshape(1)]), -mean / std)


def _inverse_swapped_kronecker(A: pa.Structure) -> pa.Structure:
    """Mutant: (A⊗B)⁻¹ computed as B⁻¹⊗A⁻¹ (factor order swapped)."""
    if isinstance(A, pa.Kronecker):
        return pa.Kronecker(*[pa.inverse(f) for f in reversed(A.factors)])
    return pa.inverse(A)


def _det_identity_err(lhs: torch.Tensor, factors: list[torch.Tensor], powers: list[int]) -> float:
    """|det(lhs) / Π det(Fᵢ)^pᵢ − 1| from `torch.linalg.slogdet`; infinite when the signs differ or a
    determinant is zero or not finite (so a singular product or factor never passes)."""
    sign, logabs = torch.linalg.slogdet(lhs)
    for F, p in zip(factors, powers):
        s, la = torch.linalg.slogdet(F)
        sign, logabs = sign * s**p, logabs - p * la
    if not (bool(sign == 1) and bool(torch.isfinite(logabs))):
        return math.inf
    return abs(math.expm1(float(logabs)))


def _closure(kinds, compose, inverse, gen) -> dict[str, float]:
    """Over all kinds: type mismatches, errors against dense algebra, off-pattern mass, and the
    determinant identities det(X·Y) = det X · det Y and det(X⁻¹) = 1/det X."""
    worst = {"types": 0.0, "product": 0.0, "inverse": 0.0, "pattern": 0.0, "det": 0.0}
    for kind in kinds.values():
        X, Y = kind.draw(gen), kind.draw(gen)
        XY, Xi = compose(X, Y), inverse(X)
        worst["types"] += (signature(XY) != signature(X)) + (signature(Xi) != signature(X))
        XYd, Xid = dense_of(XY), dense_of(Xi)
        worst["product"] = max(worst["product"], rel_err(XYd, X.to_dense() @ Y.to_dense()))
        worst["inverse"] = max(worst["inverse"], rel_err(Xid, torch.linalg.inv(X.to_dense())))
        off = max(off_pattern(XYd, kind.pattern), off_pattern(Xid, kind.pattern))
        worst["pattern"] = max(worst["pattern"], off)
        Xd, Yd = X.to_dense(), Y.to_dense()
        det_err = max(_det_identity_err(XYd, [Xd, Yd], [1, 1]), _det_identity_err(Xid, [Xd], [-1]))
        worst["det"] = max(worst["det"], det_err)
    return worst


def _stack_blocks(A: torch.Tensor, C: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """The dense block matrix [[A, C], [0, B]]."""
    return torch.cat([torch.cat([A, C], 1), torch.cat([torch.zeros(B.shape[0], A.shape[1]), B], 1)])


def _block_triangular(inverse, gen) -> tuple[float, float]:
    """[[A, C], [0, B]]⁻¹ = [[A⁻¹, −A⁻¹CB⁻¹], [0, B⁻¹]] with A triangular, B dense (inverses from
    `inverse`), against the dense inverse; and the off-pattern mass of a product of two such matrices."""
    (A, C, B), (A2, C2, B2) = [
        (triu_kind(3).draw(gen), torch.randn(3, 2, generator=gen), dense_kind(2).draw(gen)) for _ in range(2)
    ]
    Ai, Bi = dense_of(inverse(A)), dense_of(inverse(B))
    formula = _stack_blocks(Ai, -Ai @ C @ Bi, Bi)
    T = _stack_blocks(A.to_dense(), C, B.to_dense())
    pattern = _stack_blocks(torch.ones(3, 3), torch.ones(3, 2), torch.ones(2, 2)).bool()
    product = T @ _stack_blocks(A2.to_dense(), C2, B2.to_dense())
    return rel_err(formula, torch.linalg.inv(T)), off_pattern(product, pattern)


def _kronecker_inverse(inverse, gen) -> float:
    """(A⊗B)⁻¹ = A⁻¹⊗B⁻¹ with pa.inverse of a Kronecker(Dense, Triangular) against torch.kron."""
    A, B = dense_kind(3).draw(gen), triu_kind(2).draw(gen)
    expected = torch.kron(torch.linalg.inv(A.to_dense()), torch.linalg.inv(B.to_dense()))
    return rel_err(dense_of(inverse(pa.Kronecker(A, B))), expected)


def _eq25(eq25, compose, inverse, gen) -> tuple[float, float, float]:
    """Eq. 25 on features: |mean| (relative to the scale m/σ), |var − 1|, and the last-row deviation of
    products and inverses of Eq. 25 matrices from [0, …, 0, 1]."""
    d, samples = 4, 50
    loc, spread = 5 * torch.randn(d, generator=gen), log_uniform((d,), -1, 1, gen)
    batches = [loc + spread * torch.randn(samples, d, generator=gen) for _ in range(2)]
    Qs = [eq25(F.mean(0), F.std(0, correction=0)) for F in batches]
    Z = Qs[0] @ torch.cat([batches[0].mT, torch.ones(1, samples)])
    scale = max(1.0, float((loc.abs() / spread).max()))
    mean_err = float(Z[:d].mean(1).abs().max()) / scale
    var_err = float((Z[:d].var(1, correction=0) - 1).abs().max())
    e_last = torch.eye(d + 1)[-1]
    deviations = [dense_of(S)[-1] - e_last for S in (compose(*Qs), inverse(Qs[0]))] + [Z[-1] - 1]
    last_row_err = max(float(r.abs().max()) for r in deviations)
    return mean_err, var_err, last_row_err


@check(
    id="PSGD-11",
    paper="PSGD §5, Eqs. 21, 25 (Li 2019)",
    statement=(
        "Closure identities on a random pair X, Y of each group (diag, triu, dense, Kronecker, SCAN, SCAW, "
        "direct sum): compose(X, Y) and inverse(X) keep the structure type and the pattern, equal the "
        "dense product and inverse, and det(X·Y) = det X·det Y, det X⁻¹ = 1/det X (invertible); the "
        "block-triangular and Kronecker inverse formulas; Eq. 25 gives features of mean 0 and variance 1 "
        "and keeps the last row [0,…,0,1]."
    ),
    tolerance=f"{E_TOL}; off-pattern <= 1e-12; exact: type mismatches == 0",
    provenance="PAPER",
    mutants={
        "tridiagonal pseudo-group": {"kinds": {"tridiag": tridiagonal_kind(5)}},
        "Eq. 25 set with a non-constant last row": {"eq25": _eq25_free_last_row},
        "Kronecker inverse with swapped factor order": {"inverse": _inverse_swapped_kronecker},
        "lazy compose (structure not preserved)": {"compose": pa.Product},
    },
)
def psgd_11(
    kinds: dict[str, GroupKind] = GROUP_KINDS,
    compose: Callable[[pa.Structure, pa.Structure], pa.Structure] = pa.compose,
    inverse: Callable[[pa.Structure], pa.Structure] = pa.inverse,
    eq25: Callable[[torch.Tensor, torch.Tensor], pa.Structure] = eq25_matrix,
    seed: int = 11,
) -> Outcome:
    """PSGD-11 (Li 2019, §5, Eqs. 21 and 25): Lie-group closure rules, with the structures' compose and
    inverse."""
    gen, out = generator(seed), Measures()
    worst = _closure(kinds, compose, inverse, gen)
    blocktri_err, blocktri_pattern = _block_triangular(inverse, gen)
    kron_err = _kronecker_inverse(inverse, gen)
    mean_err, var_err, last_row_err = _eq25(eq25, compose, inverse, gen)
    out.at_most("max off-pattern |entry| of X·Y and X⁻¹ (relative)", worst["pattern"], E_ATOL)
    out.equal("structure-type mismatches of X·Y and X⁻¹", worst["types"], 0)
    out.at_most("max rel. error, compose(X, Y) vs dense X·Y", worst["product"], E_RTOL)
    out.at_most("max rel. error, inverse(X) vs dense inverse", worst["inverse"], E_RTOL)
    out.at_most("max |det(X·Y)/(det X·det Y) − 1| and |det(X⁻¹)·det X − 1|", worst["det"], E_RTOL)
    out.at_most("rel. error, block-triangular inverse formula", blocktri_err, E_RTOL)
    out.at_most("off-pattern of a product of block-triangular matrices", blocktri_pattern, E_ATOL)
    out.at_most("rel. error, (A⊗B)⁻¹ vs A⁻¹⊗B⁻¹", kron_err, E_RTOL)
    out.at_most("Eq. 25: max |feature mean| (relative to m/σ)", mean_err, E_ATOL)
    out.at_most("Eq. 25: max |feature variance − 1|", var_err, E_RTOL)
    out.at_most("Eq. 25: last row of products/inverses − [0,…,0,1]", last_row_err, E_ATOL)
    out.details["group kinds"] = sorted(kinds)
    return out.outcome()


MU0 = 0.9
"""PSGD-8's normalised step μ₀: inside (0, 1) and close to 1, so that the floor 1 − μ₀ = 0.1 is reached."""
PSGD8_N = 5
"""The size of Q in PSGD-8."""
PSGD8_STEPS = {"Triangular": 4000, "Diagonal": 3000, "Normalization": 3000}
"""Updates per group for PSGD-8: 10⁴ in all."""


def _psgd8_start(name: str, n: int) -> tuple[pa.Structure, torch.Tensor]:
    """Q₀ = I in the named group, and that group's sparsity pattern (all three are upper triangular)."""
    starts = {
        "Triangular": (lambda: pa.Triangular(torch.eye(n)), triu_kind(n)),
        "Diagonal": (lambda: pa.Diagonal(torch.ones(n)), diag_kind(n)),
        "Normalization": (lambda: pa.Normalization(torch.ones(n), torch.zeros(n - 1)), normalization_kind(n)),
    }
    make, kind = starts[name]
    return make(), kind.pattern


def _lie_group_with_step(mu: float) -> LieGroup:
    """Mutant fitter: precondalg's `LieGroup` (max-abs normaliser) stepping with μ = `mu`, set past the
    constructor, which rejects a step outside [0, 1)."""
    fitter = LieGroup(lr=0.0)
    object.__setattr__(fitter, "lr", mu)
    return fitter


def _psgd8_run(Q0: pa.Structure, V: torch.Tensor, H: torch.Tensor, fitter: Fitter) -> torch.Tensor:
    """PSGD's fitting loop on one block, as `Preconditioned` runs it: at each step the Newton criterion's
    gradient ∂c/∂Q for the pair (v, h) (`Newton().meta_grad`, P = QᵀQ), then the fitter's step on Q's
    leaves.  Returns the dense Q₀, Q₁, … (stacked); the run stops after the first step that leaves a
    diagonal entry of Q zero, of the other sign, or not finite (the next step would divide by it)."""
    leaves, spec = pytree.tree_flatten(Q0)
    leaves = [leaf.clone() for leaf in leaves]
    fit, criterion = fitter.build(leaves, spec), Newton()
    Qs = [Q0.to_dense()]
    for v, h in zip(V, H):
        ctx = BlockContext(
            phi=pytree.tree_unflatten(leaves, spec),
            form=pa.gram,
            grad=h[:, None],
            cache={},
            extras={"h": h[:, None], "v": v[:, None]},
        )
        fit.step(pytree.tree_leaves(criterion.meta_grad(ctx)))
        Qs.append(pytree.tree_unflatten(leaves, spec).to_dense())
        if not bool((Qs[-1].diagonal() / Qs[-2].diagonal()).min() > 0):
            break
    return torch.stack(Qs)


def _eq20_reference(Qd: torch.Tensor, V: torch.Tensor, H: torch.Tensor, pattern: torch.Tensor, mu0: float):
    """Eq. 20 written out densely for each step taken, independently of the fitter: with a = Qh and
    b = Q⁻ᵀv, R = the pattern part of aaᵀ − bbᵀ (the relative gradient up to the factor 2), E = R/max|R|,
    and Q′ = (I − μ₀E)Q.  Q is upper triangular in every group checked (so Q⁻ᵀv is a forward solve)."""
    steps = Qd.shape[0] - 1
    Q = Qd[:-1]
    a = Q @ H[:steps, :, None]
    b = torch.linalg.solve_triangular(Q.mT, V[:steps, :, None], upper=False)
    R = (a @ a.mT - b @ b.mT) * pattern
    E = R / R.abs().amax((1, 2), keepdim=True)
    return (torch.eye(Qd.shape[1]) - mu0 * E) @ Q


@check(
    id="PSGD-8",
    paper="PSGD Eq. 20 (Li 2019)",
    statement=(
        "Invariant and per-step bounds of Eq. 20: PSGD's Lie-group fitter (max-abs normaliser, μ₀ = 0.9), "
        "fed the Newton criterion's gradient for 10⁴ adversarial (v, h), keeps triangular, diagonal and "
        "SCAN Q (n = 5) bit-exactly in their pattern; each step multiplies every diagonal entry by a "
        "factor in [1 − μ₀, 1 + μ₀] and |det Q| by at least (1 − μ₀)ⁿ, so Q stays invertible with its "
        "diagonal signs; each step equals the dense (I − μ₀R/‖R‖_max)Q."
    ),
    tolerance=(
        "exact: off-pattern == 0 (bit-exact); E: diagonal factors in [1 − μ₀, 1 + μ₀] and |det| factor "
        ">= (1 − μ₀)ⁿ up to rel. 1e-10, step rel. error <= 1e-10"
    ),
    provenance="DERIVED",
    mutants={
        "step μ = 1.5 (outside (0, 1))": {"fitter": _lie_group_with_step(1.5)},
        "step μ = 1 (I − μE singular when E_ii = 1)": {"fitter": _lie_group_with_step(1.0)},
    },
)
def psgd_8(
    fitter: Fitter | None = None,
    mu0: float = MU0,
    steps: dict[str, int] = PSGD8_STEPS,
    seed: int = 8,
) -> Outcome:
    """PSGD-8 (Li 2019, Eq. 20): the normalised multiplicative step Q ← (I − μ₀E)Q, E = R/‖R‖_max.

    Proof of the bounds: E is in the group's Lie algebra (upper triangular, diagonal, or the SCAN
    pattern: all upper triangular) and |E_ij| ≤ 1, so I − μ₀E is upper triangular with diagonal entries
    1 − μ₀E_ii ∈ [1 − μ₀, 1 + μ₀].  Q is upper triangular too, so the new diagonal entry is exactly
    (1 − μ₀E_ii)q_ii and det Q′ = det Q · Π(1 − μ₀E_ii), with |Π(1 − μ₀E_ii)| ≥ (1 − μ₀)ⁿ > 0.

    `fitter` is the fitter under test (None: precondalg's ``LieGroup(lr=mu0)``); the bounds are those
    for `mu0`.  Per group, Q₀ = I, n = 5, and the coordinates of v and h have magnitudes 10^U(−6, 6) and
    random signs, drawn independently, so that the steps mix huge and tiny scales.  The ratios are
    measured on the fitter's Q (dense), the determinants by `torch.linalg.slogdet`.
    """
    fitter = LieGroup(lr=mu0) if fitter is None else fitter
    gen, out, n = generator(seed), Measures(), PSGD8_N
    ratio_lo, ratio_hi, det_lo, off, step_err, taken = math.inf, -math.inf, math.inf, 0.0, 0.0, 0
    per_group = {}
    for name, count in steps.items():
        Q0, pattern = _psgd8_start(name, n)
        V = torch.randn(count, n, generator=gen) * log_uniform((count, n), -6, 6, gen)
        H = torch.randn(count, n, generator=gen) * log_uniform((count, n), -6, 6, gen)
        Qd = _psgd8_run(Q0, V, H, fitter)
        expected = _eq20_reference(Qd, V, H, pattern, mu0)
        diag = Qd.diagonal(dim1=1, dim2=2)
        ratios = diag[1:] / diag[:-1]
        logdet = torch.linalg.slogdet(Qd).logabsdet
        det_ratio = float(torch.exp(logdet[1:] - logdet[:-1]).min())
        errors = (Qd[1:] - expected).abs().amax((1, 2)) / expected.abs().amax((1, 2))
        group = {
            "steps": Qd.shape[0] - 1,
            "min diagonal factor": float(ratios.min()),
            "max diagonal factor": float(ratios.max()),
            "min |det| factor": det_ratio,
            "max step rel. error": float(errors.max()),
            "min |q_ii| at the end": float(diag[-1].abs().min()),
        }
        per_group[name] = group
        taken += group["steps"]
        ratio_lo = min(ratio_lo, group["min diagonal factor"])
        ratio_hi = max(ratio_hi, group["max diagonal factor"])
        det_lo, step_err = min(det_lo, det_ratio), max(step_err, group["max step rel. error"])
        off = max(off, float(Qd[:, ~pattern].abs().max()), float(expected[:, ~pattern].abs().max()))
    out.at_least(f"min q_ii′/q_ii over {taken} updates (bound 1 − μ₀)", ratio_lo, (1 - mu0) * (1 - E_RTOL))
    out.at_most(f"max q_ii′/q_ii over {taken} updates (bound 1 + μ₀)", ratio_hi, (1 + mu0) * (1 + E_RTOL))
    out.at_least("min |det Q′|/|det Q| (bound (1 − μ₀)ⁿ)", det_lo, (1 - mu0) ** n * (1 - E_RTOL))
    out.equal("max off-pattern |entry| of Q and of dense (I − μ₀E)Q", off, 0)
    out.at_most("max rel. error, fitter's Q′ vs dense (I − μ₀E)Q", step_err, E_RTOL)
    out.details["per group"] = per_group
    out.details["mu0"] = mu0
    out.details["updates requested"] = sum(steps.values())
    return out.outcome()


PSGD15_CASES = 120
"""Random (P, ĝ, Ω) cases of PSGD-15."""


def _psgd_clipped_step(
    theta: torch.Tensor, Q: torch.Tensor, g: torch.Tensor, mu: float, omega: float
) -> None:
    """One step of the `PSGD` preset on the parameter `theta` (gradient `g`), its triangular Q set to `Q`
    and held there (lr_precond = 0), with clipping Ω."""
    opt = PSGD([theta], mu, preconditioner="triangular", criterion="fisher", lr_precond=0.0, init_scale=1.0,
               clip=omega)
    (leaf,) = opt.state[theta]["preconditioner"]["phi"]
    leaf.copy_(Q)
    theta.grad = g
    opt.step()


def _clip_gradient_first(
    theta: torch.Tensor, Q: torch.Tensor, g: torch.Tensor, mu: float, omega: float
) -> None:
    """Mutant: clip ĝ to norm Ω BEFORE applying P (then PSGD without clipping)."""
    _psgd_clipped_step(theta, Q, g / max(1.0, float(torch.linalg.vector_norm(g)) / omega), mu, math.inf)


@check(
    id="PSGD-15",
    paper="PSGD §4.4 (Li 2019)",
    statement=(
        "Preconditioned-gradient clipping: one step of the PSGD preset with clip=Ω moves θ by exactly "
        "μPĝ/max(1, ‖Pĝ‖/Ω), so ‖θ′ − θ‖ ≤ μΩ, for random triangular Q (P = QᵀQ) and ĝ spanning 12 orders "
        "of magnitude."
    ),
    tolerance="E: rel. error <= 1e-10; bound ‖Δθ‖/(μΩ) <= 1 + 1e-10",
    provenance="PAPER",
    mutants={"clip ĝ before applying P": {"step": _clip_gradient_first}},
)
def psgd_15(
    step: Callable[..., None] = _psgd_clipped_step, cases: int = PSGD15_CASES, seed: int = 15
) -> Outcome:
    """PSGD-15 (Li 2019, §4.4): θ_new = θ − μ·Pĝ/max(1, ‖Pĝ‖/Ω).

    Proof of the bound: ‖μPĝ/max(1, ‖Pĝ‖/Ω)‖ = μ·min(‖Pĝ‖, Ω) ≤ μΩ.  `step` makes the step (default:
    the `PSGD` preset with ``clip=Ω``, its Q fixed at a random triangular matrix whose scale is
    10^U(−3, 3), so P spans 12 orders of magnitude; ĝ has magnitudes 10^U(−6, 6); Ω ∈ 10^U(−3, 3),
    μ = 0.5).  The expected step is computed densely from Q.
    """
    gen, out, n, mu = generator(seed), Measures(), 5, 0.5
    worst_ratio = worst_err = 0.0
    clipped = 0
    for _ in range(cases):
        Q = torch.triu(torch.randn(n, n, generator=gen)) + 3 * torch.eye(n)
        Q = Q * log_uniform((), -1.5, 1.5, gen)
        g = torch.randn(n, generator=gen) * log_uniform((n,), -6, 6, gen)
        omega = float(log_uniform((), -3, 3, gen))
        theta = torch.zeros(n, requires_grad=True)
        step(theta, Q, g, mu, omega)
        moved = -theta.detach()
        pg = Q.T @ (Q @ g)
        expected = mu * pg / max(1.0, float(torch.linalg.vector_norm(pg)) / omega)
        clipped += float(torch.linalg.vector_norm(pg)) > omega
        worst_ratio = max(worst_ratio, float(torch.linalg.vector_norm(moved)) / (mu * omega))
        worst_err = max(worst_err, rel_err(moved, expected))
    out.at_most("max ‖θ′ − θ‖/(μΩ)", worst_ratio, 1 + E_RTOL)
    out.at_most("max rel. error of θ′ − θ vs μPĝ/max(1, ‖Pĝ‖/Ω)", worst_err, E_RTOL)
    out.details["cases (clipped)"] = f"{cases} ({clipped})"
    return out.outcome()
