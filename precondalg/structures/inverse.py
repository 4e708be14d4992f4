"""`inverse(A)`: A⁻¹, structure-preserving where the inverse has the same structure.

Rules: Scalar, Diagonal, Dense, Triangular, Normalization (closed forms); IdentityPlusLowRank
(Woodbury: (I + UVᵀ)⁻¹ = I − U(I + VᵀU)⁻¹Vᵀ); Kronecker (factor-wise); BlockDiagonal (block-wise);
Product (reversed factor-wise); Transposed; Inverse; Gram ((QᵀQ)⁻¹ = gram(Q⁻ᵀ)); Eigenbasis
((K D² Kᵀ)⁻¹ = K⁻ᵀ D⁻² K⁻¹: B⁻ᵀ, A⁻ᵀ, 1/S).  Otherwise a lazy `Inverse` that applies A's solve.
"""

from __future__ import annotations

import torch

from precondalg.structures._base import NotInvertibleError, Structure
from precondalg.structures._dispatch import Rules
from precondalg.structures.block_diagonal import BlockDiagonal
from precondalg.structures.dense import Dense
from precondalg.structures.diagonal import Diagonal
from precondalg.structures.eigenbasis import Eigenbasis
from precondalg.structures.kronecker import Kronecker
from precondalg.structures.lazy import Gram, Inverse, Product, Transposed
from precondalg.structures.low_rank import IdentityPlusLowRank
from precondalg.structures.normalization import Normalization
from precondalg.structures.scalar import Scalar
from precondalg.structures.transpose import transpose
from precondalg.structures.triangular import Triangular

rules = Rules("inverse")


def inverse(A: Structure) -> Structure:
    """A⁻¹ as a structure.

    Raises:
        NotInvertibleError: if A (or one of its factors or blocks) is not square.
    """
    m, n = A.shape
    if m != n:
        raise NotInvertibleError(f"inverse: {type(A).__name__} of shape {A.shape} is not square")
    rule = rules.lookup(A)
    return rule(A) if rule is not None else Inverse(A)


@rules.register(Scalar)
def _scalar(A: Scalar) -> Scalar:
    return Scalar(1 / A.alpha, A.n)


@rules.register(Diagonal)
def _diagonal(A: Diagonal) -> Diagonal:
    return Diagonal(1 / A.d)


@rules.register(Dense)
def _dense(A: Dense) -> Dense:
    return Dense(torch.linalg.inv(A.A))


@rules.register(Triangular)
def _triangular(A: Triangular) -> Triangular:
    eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    return Triangular(torch.linalg.solve_triangular(A.R, eye, upper=True))


@rules.register(Normalization)
def _normalization(A: Normalization) -> Normalization:
    # (D + c eₙᵀ)⁻¹ = D⁻¹ − D⁻¹c eₙᵀ / dₙ.
    return Normalization(1 / A.d, -A.c / (A.d[:-1] * A.d[-1]))


@rules.register(IdentityPlusLowRank)
def _low_rank(A: IdentityPlusLowRank) -> IdentityPlusLowRank:
    return IdentityPlusLowRank(-torch.linalg.solve(A._capacitance().mT, A.U.mT).mT, A.V)


@rules.register(Kronecker)
def _kronecker(A: Kronecker) -> Kronecker:
    return Kronecker(*[inverse(f) for f in A.factors])


@rules.register(BlockDiagonal)
def _block_diagonal(A: BlockDiagonal) -> BlockDiagonal:
    return BlockDiagonal(*[inverse(b) for b in A.blocks])


@rules.register(Product)
def _product(A: Product) -> Product:
    return Product(*[inverse(f) for f in reversed(A.factors)])


@rules.register(Transposed)
def _transposed(A: Transposed) -> Structure:
    return transpose(inverse(A.A))


@rules.register(Inverse)
def _inverse(A: Inverse) -> Structure:
    return A.A


@rules.register(Eigenbasis)
def _eigenbasis(A: Eigenbasis) -> Eigenbasis:
    # (K D² Kᵀ)⁻¹ = K⁻ᵀ D⁻² K⁻¹ with K⁻ᵀ = B⁻ᵀ ⊗ A⁻ᵀ.
    return Eigenbasis(torch.linalg.inv(A.B).mT, torch.linalg.inv(A.A).mT, 1 / A.S)


@rules.register(Gram)
def _gram(A: Gram) -> Gram:
    return Gram(transpose(inverse(A.Q)))
