"""PSGD (Li 2019) theory checks: PSGD-8 (Eq. 20's normalised step keeps Q in its group, with per-step
bounds), PSGD-11 (Lie-group closure rules, §5, Eqs. 21 and 25) and PSGD-15 (the clipping bound, §4.4,
through the `PSGD` preset).

Group elements are precondalg structures (`precondalg.structures.lie`).  PSGD-11 uses `compose`,
`inverse`, `lie_project` and `lie_step`; PSGD-8 runs PSGD's fitting as `Preconditioned` runs it (the
`Newton` criterion's closed-form relative gradient and the `LieGroup` fitter's step) and the `PSGD`
preset itself.  Both compare with dense matrices (torch.linalg), sparsity patterns and Lie-algebra
spans written down independently of the structures.  Mutants that replace a library projection swap
it in precondalg's `lie_project` dispatch table for the run (`lie_rules`); the mutant library pieces
(`UnitNormalizerLieGroup`, `InverseNotTransposed`, `NewtonWithGradient`, `FisherWithoutDamping`) are
shared with the fitting checks (`theory_checks.psgd_fitting`).  PSGD-15's mutants are the preset with a
wrong clipping factor in its optimizer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Mapping
from functools import reduce
from types import MappingProxyType
from typing import Any

import torch
import torch.utils._pytree as pytree

import precondalg as pa
from precondalg.fitters import Fit, Fitter, LieGroup
from precondalg.objectives import BlockContext, Fisher, Newton, RelativeGradient
from precondalg.objectives.base import Objective
from precondalg.optim import PSGD, Preconditioned
from precondalg.structures import lie
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
NEWTON = Newton()
"""precondalg's Newton criterion (h = Hv), as PSGD-8 feeds it the pair (v, h)."""


@dataclasses.dataclass(frozen=True)
class GroupKind:
    """A matrix group to check: how to draw a random element, its sparsity pattern (bool, n×n), and a
    spanning set of its Lie algebra, (m, n, n) (None: the unit matrices on the pattern)."""

    draw: Draw
    pattern: torch.Tensor
    span: torch.Tensor | None = None

    def algebra(self) -> torch.Tensor:
        """A spanning set of the Lie algebra, (m, n, n), in the default dtype (its entries are 0 and 1, so
        a span built at import, in float32, converts exactly)."""
        if self.span is not None:
            return self.span.to(torch.get_default_dtype())
        rows, cols = self.pattern.nonzero(as_tuple=True)
        units = torch.zeros(len(rows), *self.pattern.shape)
        units[torch.arange(len(rows)), rows, cols] = 1.0
        return units


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
    """The Kronecker product of groups (row-major, `pa.Kronecker`): pattern kron of the patterns; Lie
    algebra spanned by I⊗…⊗Eᵢ⊗…⊗I, Eᵢ in factor i's algebra."""
    pattern = reduce(lambda a, b: torch.kron(a.int(), b.int()).bool(), [k.pattern for k in kinds])
    eyes = [torch.eye(k.pattern.shape[0]) for k in kinds]
    span = [
        reduce(torch.kron, eyes[:i] + [E] + eyes[i + 1 :]) for i, k in enumerate(kinds) for E in k.algebra()
    ]
    return GroupKind(lambda g: pa.Kronecker(*[k.draw(g) for k in kinds]), pattern, torch.stack(span))


def direct_sum_kind(*kinds: GroupKind) -> GroupKind:
    """The direct sum of groups (`pa.BlockDiagonal`): block-diagonal pattern, whose unit matrices span
    its Lie algebra when every block's algebra is its pattern (no Kronecker blocks)."""
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
"""The groups of PSGD-11 as structures (the block-triangular group, Eq. 21, is checked on Triangular and
SCAN elements split into blocks, `_block_triangular`)."""


Rule = Callable[[pa.Structure, torch.Tensor], pa.Structure]
NO_RULES: Mapping[type, Rule] = MappingProxyType({})


@contextlib.contextmanager
def lie_rules(rules: Mapping[type, Rule]) -> Iterator[None]:
    """Install `rules` (structure type → projection onto its Lie algebra) in precondalg's `lie_project`
    dispatch table for the duration, then restore the library's own rules: the hook by which a mutant
    replaces the library's projection everywhere it is used (the criteria's closed-form relative
    gradient, `relative_gradient`, `lie_step`)."""
    table = lie.project_rules
    originals = {t: table.lookup(object.__new__(t)) for t in rules}
    for t, rule in rules.items():
        table.register(t)(rule)
    try:
        yield
    finally:
        for t, rule in originals.items():
            table.register(t)(rule)


def _tril_projection(Q: pa.Triangular, E: torch.Tensor) -> pa.Triangular:
    """Mutant rule: the triangular group's Lie projection as tril(E) (the constructor then keeps only
    its diagonal) instead of triu(E)."""
    return pa.Triangular(torch.tril(E))


TRIL_RULES: Mapping[type, Rule] = MappingProxyType({pa.Triangular: _tril_projection})
"""Mutant rules: the triangular group's Lie projection replaced by `_tril_projection`."""


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


def _inverse_normalization_without_b(A: pa.Structure) -> pa.Structure:
    """Mutant: a `Normalization` [[D, c], [0, dₙ]] inverted with last column −D⁻¹c, dropping the
    B⁻¹ = 1/dₙ of the block-triangular formula."""
    if isinstance(A, pa.Normalization):
        return pa.Normalization(1 / A.d, -A.c / A.d[:-1])
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


def _blocks(X: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The blocks A (k×k), C (k×(n−k)), lower-left L ((n−k)×k) and B ((n−k)×(n−k)) of X."""
    return X[:k, :k], X[:k, k:], X[k:, :k], X[k:, k:]


def _block_triangular_elements(gen: torch.Generator) -> list[tuple[pa.Structure, pa.Structure, int]]:
    """Pairs X, Y of library group elements of the block-triangular form [[A, C], [0, B]] at a drawn
    split k, n ∈ [3, 6]: two Triangular pairs (A, B triangular, C any) and two Normalization pairs (A
    diagonal, B triangular)."""
    out = []
    for kind in (triu_kind, normalization_kind):
        for _ in range(2):
            n = int(torch.randint(3, 7, (), generator=gen))
            k = int(torch.randint(1, n, (), generator=gen))
            out.append((kind(n).draw(gen), kind(n).draw(gen), k))
    return out


def _blocks_err(M: torch.Tensor, k: int, A: torch.Tensor, C: torch.Tensor, B: torch.Tensor) -> float:
    """The largest rel. error of M's blocks A, C and B against the given ones."""
    got = _blocks(M, k)
    return max(rel_err(got[0], A), rel_err(got[1], C), rel_err(got[3], B))


def _block_triangular(compose, inverse, rules, gen) -> dict[str, float]:
    """Eq. 21's block-triangular group on library elements: the blocks of `inverse(X)` against
    [[A⁻¹, −A⁻¹CB⁻¹], [0, B⁻¹]] and of `compose(X, Y)` against [[A₁A₂, A₁C₂ + C₁B₂], [0, B₁B₂]], with
    A⁻¹, B⁻¹ the dense inverses of X's diagonal blocks (`torch.linalg.inv`); and the lower-left block of
    the inverse, the product, `lie_project(X, E)` for a dense E and `lie_step(X, ·, 0.5)` (relative to
    the matrix)."""
    worst = {"inverse": 0.0, "product": 0.0, "lower-left": 0.0}
    with lie_rules(rules):
        for X, Y, k in _block_triangular_elements(gen):
            A, C, _, B = _blocks(X.to_dense(), k)
            A2, C2, _, B2 = _blocks(Y.to_dense(), k)
            Ai, Bi = torch.linalg.inv(A), torch.linalg.inv(B)
            Xi, XY = dense_of(inverse(X)), dense_of(compose(X, Y))
            worst["inverse"] = max(worst["inverse"], _blocks_err(Xi, k, Ai, -Ai @ C @ Bi, Bi))
            worst["product"] = max(worst["product"], _blocks_err(XY, k, A @ A2, A @ C2 + C @ B2, B @ B2))
            P = pa.lie_project(X, torch.randn(X.shape, generator=gen))
            for M in (Xi, XY, dense_of(P), dense_of(pa.lie_step(X, P, 0.5))):
                lower = float(_blocks(M, k)[2].abs().max() / M.abs().max())
                worst["lower-left"] = max(worst["lower-left"], lower)
    return worst


def _projection(kinds, rules, gen) -> dict[str, float]:
    """Over all kinds: `lie_project(X, E)` for a dense E against the orthogonal projection of E onto the
    span of the kind's Lie algebra (least squares, `torch.linalg.pinv`), and `lie_step(X, that, μ)`:
    type mismatches, off-pattern mass, and for the kinds without Kronecker factors its error against
    the dense (I − μE)X."""
    worst = {"project": 0.0, "types": 0.0, "pattern": 0.0, "step": 0.0}
    with lie_rules(rules):
        for kind in kinds.values():
            X = kind.draw(gen)
            E = torch.randn(X.shape, generator=gen)
            span = kind.algebra().flatten(1).mT
            expected = (span @ (torch.linalg.pinv(span) @ E.reshape(-1))).reshape(X.shape)
            P = pa.lie_project(X, E)
            worst["project"] = max(worst["project"], rel_err(dense_of(P), expected))
            mu = 0.1 + 0.8 * float(torch.rand((), generator=gen))
            stepped = pa.lie_step(X, P, mu)
            worst["types"] += signature(stepped) != signature(X)
            worst["pattern"] = max(worst["pattern"], off_pattern(dense_of(stepped), kind.pattern))
            if "Kronecker" not in str(signature(X)):
                dense_step = (torch.eye(X.shape[0]) - mu * expected) @ X.to_dense()
                worst["step"] = max(worst["step"], rel_err(dense_of(stepped), dense_step))
    return worst


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
        "Closure identities on 4 random pairs X, Y of each group (diag, triu, dense, Kronecker, SCAN, SCAW, "
        "direct sum): compose(X, Y) and inverse(X) keep the structure type and the pattern, equal the "
        "dense product and inverse, and det(X·Y) = det X·det Y, det X⁻¹ = 1/det X (invertible); "
        "lie_project(X, E) is the orthogonal projection of E onto the group's Lie algebra and lie_step "
        "keeps the type and pattern and equals (I − μE)X; the block-triangular group [[A, C], [0, B]] "
        "(Eq. 21) on triangular and SCAN elements at drawn splits: the blocks of inverse and compose equal "
        "[[A⁻¹, −A⁻¹CB⁻¹], [0, B⁻¹]] and [[A₁A₂, A₁C₂ + C₁B₂], [0, B₁B₂]], and inverse, compose, "
        "lie_project and lie_step keep the lower-left block 0; (A⊗B)⁻¹ = A⁻¹⊗B⁻¹; Eq. 25 gives features "
        "of mean 0 and variance 1 and keeps the last row [0,…,0,1]."
    ),
    tolerance=f"{E_TOL}; off-pattern <= 1e-12; exact: type mismatches == 0",
    provenance="PAPER",
    mutants={
        "tridiagonal pseudo-group": {"kinds": {"tridiag": tridiagonal_kind(5)}},
        "Eq. 25 set with a non-constant last row": {"eq25": _eq25_free_last_row},
        "Kronecker inverse with swapped factor order": {"inverse": _inverse_swapped_kronecker},
        "lazy compose (structure not preserved)": {"compose": pa.Product},
        "SCAN inverse's last column without 1/dₙ": {"inverse": _inverse_normalization_without_b},
        "triangular Lie projection tril(E), not triu(E)": {"rules": TRIL_RULES},
    },
)
def psgd_11(
    kinds: dict[str, GroupKind] = GROUP_KINDS,
    compose: Callable[[pa.Structure, pa.Structure], pa.Structure] = pa.compose,
    inverse: Callable[[pa.Structure], pa.Structure] = pa.inverse,
    rules: Mapping[type, Rule] = NO_RULES,
    eq25: Callable[[torch.Tensor, torch.Tensor], pa.Structure] = eq25_matrix,
    rounds: int = 4,
    seed: int = 11,
) -> Outcome:
    """PSGD-11 (Li 2019, §5, Eqs. 21 and 25): Lie-group closure rules, with the structures' compose,
    inverse, `lie_project` and `lie_step` (`rules` replace Lie projections of the library for the run:
    none), on `rounds` random pairs per group kind."""
    gen, out = generator(seed), Measures()
    rows = [_closure(kinds, compose, inverse, gen) for _ in range(rounds)]
    worst = {key: max(r[key] for r in rows) for key in rows[0]}
    worst["types"] = sum(r["types"] for r in rows)
    lie_rows = [_projection(kinds, rules, gen) for _ in range(rounds)]
    lie_worst = {key: max(r[key] for r in lie_rows) for key in lie_rows[0]}
    blocktri = _block_triangular(compose, inverse, rules, gen)
    kron_err = _kronecker_inverse(inverse, gen)
    mean_err, var_err, last_row_err = _eq25(eq25, compose, inverse, gen)
    out.at_most("max off-pattern |entry| of X·Y and X⁻¹ (relative)", worst["pattern"], E_ATOL)
    out.equal("structure-type mismatches of X·Y and X⁻¹", worst["types"], 0)
    out.at_most("max rel. error, compose(X, Y) vs dense X·Y", worst["product"], E_RTOL)
    out.at_most("max rel. error, inverse(X) vs dense inverse", worst["inverse"], E_RTOL)
    out.at_most("max |det(X·Y)/(det X·det Y) − 1| and |det(X⁻¹)·det X − 1|", worst["det"], E_RTOL)
    out.at_most("max rel. error, lie_project(X, E) vs orthogonal projection onto the algebra",
                lie_worst["project"], E_RTOL)
    out.equal("structure-type mismatches of lie_step(X, ·, μ)", lie_worst["types"], 0)
    out.at_most("max off-pattern |entry| of lie_step(X, ·, μ) (relative)", lie_worst["pattern"], E_ATOL)
    out.at_most("max rel. error, lie_step(X, E, μ) vs dense (I − μE)X", lie_worst["step"], E_RTOL)
    out.at_most("block-triangular: max rel. error of the blocks of inverse(X)", blocktri["inverse"], E_RTOL)
    out.at_most("block-triangular: max rel. error of the blocks of X·Y", blocktri["product"], E_RTOL)
    out.at_most("block-triangular: max lower-left |entry| (relative)", blocktri["lower-left"], E_ATOL)
    out.at_most("rel. error, (A⊗B)⁻¹ vs A⁻¹⊗B⁻¹", kron_err, E_RTOL)
    out.at_most("Eq. 25: max |feature mean| (relative to m/σ)", mean_err, E_ATOL)
    out.at_most("Eq. 25: max |feature variance − 1|", var_err, E_RTOL)
    out.at_most("Eq. 25: last row of products/inverses − [0,…,0,1]", last_row_err, E_ATOL)
    out.details["group kinds"] = sorted(kinds)
    return out.outcome()


MU0 = 0.9
"""PSGD-8's normalised step μ₀: inside (0, 1) and close to 1, so that the floor 1 − μ₀ = 0.1 is reached."""
PSGD8_N = 5
"""The size of Q in PSGD-8's long runs."""
PSGD8_STEPS = {"Triangular": 4000, "Diagonal": 3000, "Normalization": 3000}
"""Updates per group for PSGD-8's long runs at μ₀ = `MU0`, n = `PSGD8_N`: 10⁴ in all."""
PSGD8_DRAWS = 12
"""PSGD-8's drawn instances (group, n ∈ [2, 6], μ₀ ∈ U(0.01, 0.99)), `PSGD8_DRAW_STEPS` updates each."""
PSGD8_DRAW_STEPS = 100
PSGD8_MUTANT_STEPS = {"Triangular": 150, "Diagonal": 150, "Normalization": 150}
"""The mutants' shorter long runs: every part is a min or max over the updates, so a mutant failing on
a prefix of the run fails on the whole run."""
_SHORT = {"steps": PSGD8_MUTANT_STEPS, "draws": 4}
PSGD8_GROUPS: dict[str, Callable[[int], GroupKind]] = {
    "Triangular": triu_kind,
    "Diagonal": diag_kind,
    "Normalization": normalization_kind,
}
"""PSGD-8's groups: all upper triangular, so the diagonal of (I − μ₀E)Q is (1 − μ₀E_ii)q_ii."""

def _lie_group_with_step(mu: float) -> LieGroup:
    """Mutant fitter: precondalg's `LieGroup` (max-abs normaliser) stepping with μ = `mu`, set past the
    constructor, which rejects a step outside [0, 1)."""
    fitter = LieGroup(lr=0.0)
    object.__setattr__(fitter, "lr", mu)
    return fitter


def _stepping_at(mu: float) -> Callable[[float], Fitter]:
    """Mutant fitter factory: whatever μ₀ is asked for, the `LieGroup` fitter steps with `mu`."""
    return lambda _mu0: _lie_group_with_step(mu)


@dataclasses.dataclass(frozen=True)
class UnitNormalizerLieGroup(LieGroup):
    """Mutant fitter: precondalg's `LieGroup` with the normaliser ‖R‖ of Eq. 20 replaced by 1
    (Q ← (I − μR)Q)."""

    def build(self, leaves: list[torch.Tensor], spec: pytree.TreeSpec | None = None) -> Fit:
        fit = super().build(leaves, spec)
        fit._norms = lambda parts: torch.ones(len(parts), dtype=leaves[0].dtype)
        return fit


@dataclasses.dataclass(frozen=True, eq=False)
class InverseNotTransposed(Newton):
    """Mutant criterion: precondalg's `Newton` whose relative gradient uses b = Q⁻¹v in place of
    b = Q⁻ᵀv (Eq. 18): fed v′ = QᵀQ⁻¹v, so that its b = Q⁻ᵀv′ is Q⁻¹v (any group the closed form covers,
    Kronecker products included)."""

    def meta_grad(self, ctx: BlockContext):
        Q, v = ctx.phi, ctx.extras["v"]
        return super().meta_grad(dataclasses.replace(ctx, extras={**ctx.extras, "v": Q.T @ Q.solve(v)}))


def _psgd8_run(
    Q0: pa.Structure, V: torch.Tensor, H: torch.Tensor, fitter: Fitter, objective: Objective
) -> torch.Tensor:
    """PSGD's fitting loop on one block, as `Preconditioned` runs it: at each step the criterion's
    meta-gradient for the pair (v, h) in a context that says whether the fitter steps on the group
    (``LieGroup.takes_relative``: then the closed-form relative gradient of Eq. 18, P = QᵀQ), then the
    fitter's step on Q's leaves (`step_relative` with the criterion's scale, or `step`).  Returns the
    dense Q₀, Q₁, … (stacked); the run stops after the first step that leaves a diagonal entry of Q zero
    or an entry not finite (the next step would divide by it)."""
    leaves, spec = pytree.tree_flatten(Q0)
    leaves = [leaf.clone() for leaf in leaves]
    fit, relative = fitter.build(leaves, spec), fitter.takes_relative
    Qs = [Q0.to_dense()]
    for v, h in zip(V, H):
        ctx = BlockContext(
            phi=pytree.tree_unflatten(leaves, spec),
            form=pa.gram,
            grad=h[:, None],
            cache={},
            extras={"h": h[:, None], "v": v[:, None]},
            relative=relative,
        )
        meta = objective.meta_grad(ctx)
        if isinstance(meta, RelativeGradient):
            fit.step_relative(meta.R, meta.scale)
        else:
            fit.step(pytree.tree_leaves(meta))
        Qs.append(pytree.tree_unflatten(leaves, spec).to_dense())
        if not bool(torch.isfinite(Qs[-1]).all() and (Qs[-1].diagonal() != 0).all()):
            break
    return torch.stack(Qs)


def _eq20_reference(
    Qd: torch.Tensor, V: torch.Tensor, H: torch.Tensor, pattern: torch.Tensor, mu0: float, upper: bool = True
):
    """Eq. 20 written out densely for each step taken, independently of the library: with a = Qh and
    b = Q⁻ᵀv (`torch.linalg.solve_triangular` for an upper-triangular Q, else `torch.linalg.solve`),
    R = the pattern part of aaᵀ − bbᵀ (the relative gradient of Eq. 18 up to the factor 2),
    E = R/max|R|, and Q′ = (I − μ₀E)Q."""
    steps = Qd.shape[0] - 1
    Q = Qd[:-1]
    a = Q @ H[:steps, :, None]
    if upper:
        b = torch.linalg.solve_triangular(Q.mT, V[:steps, :, None], upper=False)
    else:
        b = torch.linalg.solve(Q.mT, V[:steps, :, None])
    R = (a @ a.mT - b @ b.mT) * pattern
    E = R / R.abs().amax((1, 2), keepdim=True)
    return (torch.eye(Qd.shape[1]) - mu0 * E) @ Q


def _psgd8_instance(
    kind: GroupKind,
    n: int,
    mu0: float,
    count: int,
    fitter: Fitter,
    objective: Objective,
    gen: torch.Generator,
) -> dict[str, float]:
    """One run of PSGD-8 from a drawn Q₀ of the group, with adversarial (v, h): per-step diagonal and
    |det| factors (against their bounds 1 ∓ μ₀ and (1 − μ₀)ⁿ, as ratios), the off-pattern mass and the
    step's error against the dense Eq. 20."""
    V = torch.randn(count, n, generator=gen) * log_uniform((count, n), -6, 6, gen)
    H = torch.randn(count, n, generator=gen) * log_uniform((count, n), -6, 6, gen)
    Qd = _psgd8_run(kind.draw(gen), V, H, fitter, objective)
    expected = _eq20_reference(Qd, V, H, kind.pattern, mu0)
    diag = Qd.diagonal(dim1=1, dim2=2)
    ratios = diag[1:] / diag[:-1]
    logdet = torch.linalg.slogdet(Qd).logabsdet
    errors = (Qd[1:] - expected).abs().amax((1, 2)) / expected.abs().amax((1, 2))
    return {
        "steps": Qd.shape[0] - 1,
        "min diagonal factor": float(ratios.min()),
        "max diagonal factor": float(ratios.max()),
        "min |det| factor": float(torch.exp(logdet[1:] - logdet[:-1]).min()),
        "max step rel. error": float(errors.max()),
        "off-pattern": max(float(X[:, ~kind.pattern].abs().max()) for X in (Qd, expected)),
        "min |q_ii| at the end": float(diag[-1].abs().min()),
    }


def _psgd8_draws(
    draws: int, fitter: Callable[[float], Fitter], objective: Objective, gen: torch.Generator
) -> list[dict[str, float]]:
    """The drawn family: group, n ∈ [2, 6] and μ₀ ∈ U(0.01, 0.99) per instance, each with its factors
    divided by its bounds (1 − μ₀, 1 + μ₀, (1 − μ₀)ⁿ)."""
    names, rows = list(PSGD8_GROUPS), []
    for _ in range(draws):
        name = names[int(torch.randint(len(names), (), generator=gen))]
        n = int(torch.randint(2, 7, (), generator=gen))
        mu0 = 0.01 + 0.98 * float(torch.rand((), generator=gen))
        row = _psgd8_instance(PSGD8_GROUPS[name](n), n, mu0, PSGD8_DRAW_STEPS, fitter(mu0), objective, gen)
        row["low / (1 − μ₀)"] = row["min diagonal factor"] / (1 - mu0)
        row["high / (1 + μ₀)"] = row["max diagonal factor"] / (1 + mu0)
        row["det / (1 − μ₀)ⁿ"] = row["min |det| factor"] / (1 - mu0) ** n
        rows.append({"group": f"{name} n={n} μ₀={mu0:.3f}", **row})
    return rows


PRESET_CASES = (("triangular", "newton"), ("triangular", "fisher"), ("dense", "newton"), ("dense", "fisher"))
"""PSGD-8's runs of the `PSGD` preset: (preconditioner, criterion)."""
PRESET_STEPS = 25
Preset = Callable[..., Preconditioned]


@dataclasses.dataclass(frozen=True)
class NewtonWithGradient(Newton):
    """Mutant criterion: precondalg's `Newton` fitting with the gradient g where Hv belongs."""

    def meta_grad(self, ctx: BlockContext):
        return super().meta_grad(dataclasses.replace(ctx, extras={**ctx.extras, "h": ctx.grad}))


@dataclasses.dataclass(frozen=True, eq=False)
class FisherWithoutDamping(Fisher):
    """Mutant criterion: precondalg's `Fisher` fitting as if λ = 0, h = g (h = g + λv, Eq. 11): both its
    meta-gradient (the relative gradient) and its statistics (the closed form, without λ²I)."""

    def meta_grad(self, ctx: BlockContext):
        g = ctx.extras["h"] - self.damping * ctx.extras["v"]
        return Fisher().meta_grad(dataclasses.replace(ctx, extras={**ctx.extras, "h": g}))


def _preset_with(criterion: str, objective: Callable[[float], Objective]) -> Preset:
    """Mutant preset: the `PSGD` preset, its `criterion` replaced by ``objective(damping)``."""

    def make(params, lr, **kwargs) -> Preconditioned:
        opt = PSGD(params, lr, **kwargs)
        if kwargs["criterion"] == criterion:
            opt._objective = objective(kwargs["damping"])
        return opt

    return make


def _preset_run(
    preset: Preset, preconditioner: str, criterion: str, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """`PRESET_STEPS` steps of ``preset([θ], …)`` (the `PSGD` preset) from Q₀ = I on a drawn instance:
    n ∈ [2, 6], μ₀ ∈ U(0.01, 0.99), the quadratic loss ½θᵀAθ (A symmetric indefinite) for Newton (its
    closure; h = Av) or gradients g of magnitudes 10^U(−3, 3) and λ ∈ 10^U(−3, 1) for Fisher
    (h = g + λv).  The optimizer's v is redrawn from its generator's state before the step
    (the state dict's ``param_groups[0]["precondalg"]["generator"]``, v ~ N(0, I) its first draw).
    Returns the dense Q₀, Q₁, … (stacked), the v and h of each step, and μ₀."""
    n = int(torch.randint(2, 7, (), generator=gen))
    mu0 = 0.01 + 0.98 * float(torch.rand((), generator=gen))
    A = torch.randn(n, n, generator=gen)
    A = A + A.mT
    damping = float(log_uniform((), -3, 1, gen)) if criterion == "fisher" else 0.0
    theta = torch.randn(n, generator=gen).requires_grad_()
    opt = preset([theta], 1e-3, preconditioner=preconditioner, criterion=criterion, lr_precond=mu0,
                  init_scale=1.0, damping=damping, seed=int(torch.randint(2**31, (), generator=gen)))
    (leaf,) = opt.state[theta]["preconditioner"]["phi"]
    read = torch.triu if preconditioner == "triangular" else torch.clone
    Qs, V, H = [read(leaf.detach())], [], []
    for _ in range(PRESET_STEPS):
        own = opt.state_dict()["param_groups"][0]["precondalg"]
        v = torch.randn(n, generator=torch.Generator().set_state(own["generator"]))
        if criterion == "newton":
            opt.step(lambda: 0.5 * theta @ (A @ theta))
            h = A @ v
        else:
            theta.grad = torch.randn(n, generator=gen) * log_uniform((n,), -3, 3, gen)
            h = theta.grad + damping * v
            opt.step()
        Qs.append(read(leaf.detach()))
        V.append(v)
        H.append(h)
    return torch.stack(Qs), torch.stack(V), torch.stack(H), mu0


def _preset_errors(preset: Preset, gen: torch.Generator) -> list[dict[str, Any]]:
    """Per `PRESET_CASES` run: the max rel. error of each step of the preset's Q against Eq. 20."""
    rows = []
    for preconditioner, criterion in PRESET_CASES:
        Qd, V, H, mu0 = _preset_run(preset, preconditioner, criterion, gen)
        n = Qd.shape[1]
        upper = preconditioner == "triangular"
        pattern = torch.ones(n, n, dtype=torch.bool)
        expected = _eq20_reference(Qd, V, H, pattern.triu() if upper else pattern, mu0, upper)
        errors = (Qd[1:] - expected).abs().amax((1, 2)) / expected.abs().amax((1, 2))
        case = f"{preconditioner}/{criterion} n={n} μ₀={mu0:.3f}"
        rows.append({"case": case, "error": float(errors.max())})
    return rows


@check(
    id="PSGD-8",
    paper="PSGD Eq. 20 (Li 2019)",
    statement=(
        "Invariant and per-step bounds of Eq. 20: PSGD's fitting as the Preconditioned optimizer runs it "
        "(the Newton criterion's closed-form relative gradient, the LieGroup fitter's max-abs normalised "
        "step), fed adversarial (v, h) with 12 orders of magnitude, from drawn Q₀: 10⁴ updates of "
        "triangular, diagonal and SCAN Q (n = 5, μ₀ = 0.9) and 12 drawn (group, n ∈ [2, 6], μ₀) runs keep "
        "Q bit-exactly in its pattern; each step multiplies every diagonal entry by a factor in "
        "[1 − μ₀, 1 + μ₀] and |det Q| by at least (1 − μ₀)ⁿ, so Q stays invertible with its diagonal "
        "signs; each step equals the dense (I − μ₀R/‖R‖_max)Q with R = pattern part of aaᵀ − bbᵀ, a = Qh, "
        "b = Q⁻ᵀv; so does each of 25 steps of 4 drawn runs of the PSGD preset (triangular and dense Q; "
        "Newton with h = Av on ½θᵀAθ, Fisher with h = g + λv; v redrawn from the optimizer's generator)."
    ),
    tolerance=(
        "exact: off-pattern == 0 (bit-exact); E: diagonal factors in [1 − μ₀, 1 + μ₀] and |det| factor "
        ">= (1 − μ₀)ⁿ up to rel. 1e-10, step rel. error <= 1e-10"
    ),
    provenance="DERIVED",
    mutants={
        "step μ = 1.5 (outside (0, 1))": {"fitter": _stepping_at(1.5), **_SHORT},
        "step μ = 1 (I − μE singular when E_ii = 1)": {"fitter": _stepping_at(1.0), **_SHORT},
        "triangular Lie projection tril(E), not triu(E)": {"rules": TRIL_RULES, **_SHORT},
        "Lie step's normaliser ‖R‖ replaced by 1": {"fitter": UnitNormalizerLieGroup, **_SHORT},
        "relative gradient with b = Q⁻¹v (not Q⁻ᵀv)": {"objective": InverseNotTransposed(), **_SHORT},
        "PSGD preset: Newton fits with g where Hv belongs": {
            "preset": _preset_with("newton", lambda _: NewtonWithGradient()),
            **_SHORT,
        },
        "PSGD preset: Fisher ignores λ": {"preset": _preset_with("fisher", FisherWithoutDamping), **_SHORT},
    },
)
def psgd_8(
    fitter: Callable[[float], Fitter] = LieGroup,
    objective: Objective = NEWTON,
    rules: Mapping[type, Rule] = NO_RULES,
    preset: Preset = PSGD,
    mu0: float = MU0,
    steps: dict[str, int] = PSGD8_STEPS,
    draws: int = PSGD8_DRAWS,
    seed: int = 8,
) -> Outcome:
    """PSGD-8 (Li 2019, Eq. 20): the normalised multiplicative step Q ← (I − μ₀E)Q, E = R/‖R‖_max.

    Proof of the bounds: E is in the group's Lie algebra (upper triangular, diagonal, or the SCAN
    pattern: all upper triangular) and |E_ij| ≤ 1, so I − μ₀E is upper triangular with diagonal entries
    1 − μ₀E_ii ∈ [1 − μ₀, 1 + μ₀].  Q is upper triangular too, so the new diagonal entry is exactly
    (1 − μ₀E_ii)q_ii and det Q′ = det Q · Π(1 − μ₀E_ii), with |Π(1 − μ₀E_ii)| ≥ (1 − μ₀)ⁿ > 0.

    `fitter` makes the fitter for a μ₀ (precondalg's ``LieGroup(μ₀)``), `objective` is the criterion
    (precondalg's `Newton`), and `rules` replace Lie projections of the library for the run (none).
    Long runs: per group of `steps`, Q₀ drawn from the group (n = 5, μ₀ = `mu0`).  Drawn runs: `draws`
    instances of `_psgd8_draws`.  The coordinates of v and h have magnitudes 10^U(−6, 6) and random
    signs, drawn independently, so that the steps mix huge and tiny scales.  The ratios are measured on
    the fitter's Q (dense), the determinants by `torch.linalg.slogdet`.
    """
    gen, out, n = generator(seed), Measures(), PSGD8_N
    with lie_rules(rules):
        per_group = {
            name: _psgd8_instance(PSGD8_GROUPS[name](n), n, mu0, count, fitter(mu0), objective, gen)
            for name, count in steps.items()
        }
        drawn = _psgd8_draws(draws, fitter, objective, gen)
        preset_rows = _preset_errors(preset, gen)
    runs = list(per_group.values())
    taken = sum(r["steps"] for r in runs)
    worst = {key: [r[key] for r in runs + drawn] for key in ("off-pattern", "max step rel. error", "steps")}
    out.at_least(
        f"min q_ii′/q_ii over {taken} updates (bound 1 − μ₀)",
        min(r["min diagonal factor"] for r in runs),
        (1 - mu0) * (1 - E_RTOL),
    )
    out.at_most(
        f"max q_ii′/q_ii over {taken} updates (bound 1 + μ₀)",
        max(r["max diagonal factor"] for r in runs),
        (1 + mu0) * (1 + E_RTOL),
    )
    out.at_least("min |det Q′|/|det Q| (bound (1 − μ₀)ⁿ)", min(r["min |det| factor"] for r in runs),
                 (1 - mu0) ** n * (1 - E_RTOL))
    keys = ("low / (1 − μ₀)", "high / (1 + μ₀)", "det / (1 − μ₀)ⁿ")
    low, high, det = ([r[key] for r in drawn] for key in keys)
    out.at_least("drawn runs: min (q_ii′/q_ii)/(1 − μ₀)", min(low), 1 - E_RTOL)
    out.at_most("drawn runs: max (q_ii′/q_ii)/(1 + μ₀)", max(high), 1 + E_RTOL)
    out.at_least("drawn runs: min |det| factor/(1 − μ₀)ⁿ", min(det), 1 - E_RTOL)
    out.equal("max off-pattern |entry| of Q and of dense (I − μ₀E)Q", max(worst["off-pattern"]), 0)
    out.at_most("max rel. error, fitter's Q′ vs dense (I − μ₀E)Q", max(worst["max step rel. error"]), E_RTOL)
    out.at_most("PSGD preset: max rel. error of Q′ vs dense (I − μ₀E)Q", max(r["error"] for r in preset_rows),
                E_RTOL)
    out.equal("updates stopped early (a zero or non-finite entry)",
              sum(steps.values()) + draws * PSGD8_DRAW_STEPS - sum(worst["steps"]), 0)
    out.details["per group"] = per_group
    out.details["drawn runs"] = drawn
    out.details["PSGD preset runs"] = preset_rows
    out.details["mu0"] = mu0
    out.details["updates requested"] = sum(steps.values())
    return out.outcome()


PSGD15_CASES = 120
"""Random (P, ĝ, Ω) cases of PSGD-15."""


def _psgd_clipped_step(
    preset: Preset, theta: torch.Tensor, Q: torch.Tensor, g: torch.Tensor, mu: float, omega: float
) -> None:
    """One step of ``preset`` (the `PSGD` preset) on the parameter `theta` (gradient `g`), its
    triangular Q set to `Q` and held there (lr_precond = 0), with clipping Ω."""
    opt = preset([theta], mu, preconditioner="triangular", criterion="fisher", lr_precond=0.0, init_scale=1.0,
                 clip=omega)
    (leaf,) = opt.state[theta]["preconditioner"]["phi"]
    leaf.copy_(Q)
    theta.grad = g
    opt.step()


def _clipping_with(factor: Callable[[Preconditioned, list[list[torch.Tensor]]], torch.Tensor]) -> Preset:
    """Mutant preset: the `PSGD` preset whose optimizer computes its clipping factor by ``factor(opt,
    steps)`` in place of the library's min(1, Ω/‖s‖₂)."""

    def make(params, lr, **kwargs) -> Preconditioned:
        opt = PSGD(params, lr, **kwargs)
        opt._clip_factor = functools.partial(factor, opt)
        return opt

    return make


def _max_abs_clip_factor(opt: Preconditioned, steps: list[list[torch.Tensor]]) -> torch.Tensor:
    """Mutant clipping factor: min(1, Ω/‖s‖_max), the largest entry in place of the 2-norm."""
    norm = torch.stack([s.abs().max() for block in steps for s in block]).max()
    return torch.clamp(opt._clip / norm, max=1.0)


def _uncapped_clip_factor(opt: Preconditioned, steps: list[list[torch.Tensor]]) -> torch.Tensor:
    """Mutant clipping factor: Ω/‖s‖₂ without the cap at 1 (every step rescaled to the norm Ω)."""
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s) for b in steps for s in b]))
    return opt._clip / norm


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
    mutants={
        "clipping factor from ‖Pĝ‖_max, not the 2-norm": {"preset": _clipping_with(_max_abs_clip_factor)},
        "clipping factor not capped at 1": {"preset": _clipping_with(_uncapped_clip_factor)},
    },
)
def psgd_15(preset: Preset = PSGD, cases: int = PSGD15_CASES, seed: int = 15) -> Outcome:
    """PSGD-15 (Li 2019, §4.4): θ_new = θ − μ·Pĝ/max(1, ‖Pĝ‖/Ω).

    Proof of the bound: ‖μPĝ/max(1, ‖Pĝ‖/Ω)‖ = μ·min(‖Pĝ‖, Ω) ≤ μΩ.  One step of `preset` (the `PSGD`
    preset) with ``clip=Ω`` (`_psgd_clipped_step`), its Q fixed at a random triangular matrix whose scale is
    10^U(−3, 3), so P spans 12 orders of magnitude; ĝ has magnitudes 10^U(−6, 6); Ω ∈ 10^U(−3, 3),
    μ = 0.5.  The expected step is computed densely from Q.  The mutants are the preset with a wrong
    clipping factor in its optimizer (the largest entry for the 2-norm; no cap at 1).
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
        _psgd_clipped_step(preset, theta, Q, g, mu, omega)
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
