"""`compose(A, B)` (``A @ B``) and `scale(A, alpha)`: products of structures.

Structure-preserving rules: Scalar·X → `scale(X, α)` for X with a scale rule (Scalar, Diagonal, Dense,
Triangular, Normalization, Kronecker, KroneckerSum, BlockDiagonal, Sum, Product);
Diagonal·Diagonal → Diagonal; Dense·{Dense, Diagonal} → Dense; Triangular·{Triangular, Diagonal} → Triangular;
Normalization·{Normalization, Diagonal} → Normalization; Kronecker·Kronecker → Kronecker when the
factor shapes conform; BlockDiagonal·BlockDiagonal → BlockDiagonal when the block shapes conform;
(I + U₁V₁ᵀ)(I + U₂V₂ᵀ) → IdentityPlusLowRank of rank r₁ + r₂.  Otherwise a lazy `Product`.
"""

from __future__ import annotations

import math

import torch

from precondalg.structures._base import Structure, check_same_kind
from precondalg.structures._dispatch import Rules
from precondalg.structures.block_diagonal import BlockDiagonal
from precondalg.structures.dense import Dense
from precondalg.structures.diagonal import Diagonal
from precondalg.structures.kronecker import Kronecker, KroneckerSum
from precondalg.structures.lazy import Product, Sum
from precondalg.structures.low_rank import IdentityPlusLowRank
from precondalg.structures.normalization import Normalization
from precondalg.structures.scalar import Scalar
from precondalg.structures.triangular import Triangular, upper_triangular

rules = Rules("compose")
scale_rules = Rules("scale")


def compose(A: Structure, B: Structure) -> Structure:
    """The product A B (also written ``A @ B``).

    Raises:
        ValueError: if A.shape[1] != B.shape[0].
        TypeError: if A and B have different dtypes.
    """
    if A.shape[1] != B.shape[0]:
        raise ValueError(
            f"compose: cannot multiply {type(A).__name__} of shape {A.shape} by "
            f"{type(B).__name__} of shape {B.shape}"
        )
    check_same_kind("compose", A=A, B=B)
    if isinstance(A, Scalar) and scale_rules.lookup(B) is not None:
        return scale(B, A.alpha)
    if isinstance(B, Scalar) and scale_rules.lookup(A) is not None:
        return scale(A, B.alpha)
    rule = rules.lookup(A, B)
    out = rule(A, B) if rule is not None else None
    if out is not None:
        return out
    return Product(*_factors(A), *_factors(B))


def _factors(A: Structure) -> tuple[Structure, ...]:
    return A.factors if isinstance(A, Product) else (A,)


def scale(A: Structure, alpha: torch.Tensor | float) -> Structure:
    """αA, in A's own structure where it has a rule, else the lazy product Scalar(α)·A."""
    rule = scale_rules.lookup(A)
    if rule is not None:
        return rule(A, alpha)
    alpha = torch.as_tensor(alpha, dtype=A.dtype, device=A.device)
    return Product(Scalar(alpha, A.shape[0]), A)


@scale_rules.register(Scalar)
def _scale_scalar(A: Scalar, alpha: torch.Tensor | float) -> Scalar:
    return Scalar(alpha * A.alpha, A.n)


@scale_rules.register(Diagonal)
def _scale_diagonal(A: Diagonal, alpha: torch.Tensor | float) -> Diagonal:
    return Diagonal(alpha * A.d)


@scale_rules.register(Dense)
def _scale_dense(A: Dense, alpha: torch.Tensor | float) -> Dense:
    return Dense(alpha * A.A)


@scale_rules.register(Triangular)
def _scale_triangular(A: Triangular, alpha: torch.Tensor | float) -> Triangular:
    if A.upper and isinstance(alpha, (int, float)) and math.isfinite(alpha):
        return upper_triangular(alpha * A.R)  # α·0 = 0: no triu needed
    return Triangular(alpha * A.R)


@scale_rules.register(Normalization)
def _scale_normalization(A: Normalization, alpha: torch.Tensor | float) -> Normalization:
    return Normalization(alpha * A.d, alpha * A.c)


@scale_rules.register(Kronecker)
def _scale_kronecker(A: Kronecker, alpha: torch.Tensor | float) -> Kronecker:
    return Kronecker(scale(A.factors[0], alpha), *A.factors[1:])


@scale_rules.register(BlockDiagonal)
def _scale_block_diagonal(A: BlockDiagonal, alpha: torch.Tensor | float) -> BlockDiagonal:
    return BlockDiagonal(*[scale(b, alpha) for b in A.blocks])


@scale_rules.register(KroneckerSum)
def _scale_kronecker_sum(A: KroneckerSum, alpha: torch.Tensor | float) -> KroneckerSum:
    return KroneckerSum(*[scale(t, alpha) for t in A.terms])


@scale_rules.register(Sum)
def _scale_sum(A: Sum, alpha: torch.Tensor | float) -> Sum:
    return Sum(*[scale(t, alpha) for t in A.terms])


@scale_rules.register(Product)
def _scale_product(A: Product, alpha: torch.Tensor | float) -> Product:
    return Product(scale(A.factors[0], alpha), *A.factors[1:])


@rules.register(Diagonal, Diagonal)
def _diag_diag(A: Diagonal, B: Diagonal) -> Diagonal:
    return Diagonal(A.d * B.d)


@rules.register(Dense, Dense)
def _dense_dense(A: Dense, B: Dense) -> Dense:
    return Dense(A.A @ B.A)


@rules.register(Diagonal, Dense)
def _diag_dense(A: Diagonal, B: Dense) -> Dense:
    return Dense(A.d.unsqueeze(-1) * B.A)


@rules.register(Dense, Diagonal)
def _dense_diag(A: Dense, B: Diagonal) -> Dense:
    return Dense(A.A * B.d)


@rules.register(Triangular, Triangular)
def _tri_tri(A: Triangular, B: Triangular) -> Triangular:
    return Triangular(A.upper_part() @ B.upper_part())  # an unflattened R may hold a lower part


@rules.register(Diagonal, Triangular)
def _diag_tri(A: Diagonal, B: Triangular) -> Triangular:
    return Triangular(A.d.unsqueeze(-1) * B.upper_part())


@rules.register(Triangular, Diagonal)
def _tri_diag(A: Triangular, B: Diagonal) -> Triangular:
    return Triangular(A.upper_part() * B.d)


@rules.register(Normalization, Normalization)
def _norm_norm(A: Normalization, B: Normalization) -> Normalization:
    # (D₁ + c₁eₙᵀ)(D₂ + c₂eₙᵀ) = D₁D₂ + (D₁c₂ + d₂[n] c₁) eₙᵀ, since eₙᵀc₂ = 0.
    return Normalization(A.d * B.d, A.d[:-1] * B.c + B.d[-1] * A.c)


@rules.register(Diagonal, Normalization)
def _diag_norm(A: Diagonal, B: Normalization) -> Normalization:
    return Normalization(A.d * B.d, A.d[:-1] * B.c)


@rules.register(Normalization, Diagonal)
def _norm_diag(A: Normalization, B: Diagonal) -> Normalization:
    return Normalization(A.d * B.d, A.c * B.d[-1])


@rules.register(Kronecker, Kronecker)
def _kron_kron(A: Kronecker, B: Kronecker) -> Kronecker | None:
    # (A₁ ⊗ A₂)(B₁ ⊗ B₂) = A₁B₁ ⊗ A₂B₂ when every pair conforms.
    if len(A.factors) != len(B.factors):
        return None
    if any(a.shape[1] != b.shape[0] for a, b in zip(A.factors, B.factors)):
        return None
    return Kronecker(*[compose(a, b) for a, b in zip(A.factors, B.factors)])


@rules.register(BlockDiagonal, BlockDiagonal)
def _block_block(A: BlockDiagonal, B: BlockDiagonal) -> BlockDiagonal | None:
    if len(A.blocks) != len(B.blocks):
        return None
    if any(a.shape[1] != b.shape[0] for a, b in zip(A.blocks, B.blocks)):
        return None
    return BlockDiagonal(*[compose(a, b) for a, b in zip(A.blocks, B.blocks)])


@rules.register(IdentityPlusLowRank, IdentityPlusLowRank)
def _low_rank_low_rank(A: IdentityPlusLowRank, B: IdentityPlusLowRank) -> IdentityPlusLowRank:
    # (I + U₁V₁ᵀ)(I + U₂V₂ᵀ) = I + [U₁, U₂ + U₁(V₁ᵀU₂)] [V₁, V₂]ᵀ.
    U = torch.cat([A.U, B.U + A.U @ (A.V.mT @ B.U)], dim=1)
    return IdentityPlusLowRank(U, torch.cat([A.V, B.V], dim=1))


__all__ = ["compose", "scale"]
