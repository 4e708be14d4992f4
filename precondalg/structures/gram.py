"""`gram(Q)`: QᵀQ, symmetric PSD by construction."""

from __future__ import annotations

from precondalg.structures._base import Structure
from precondalg.structures._dispatch import Rules
from precondalg.structures.block_diagonal import BlockDiagonal
from precondalg.structures.diagonal import Diagonal
from precondalg.structures.kronecker import Kronecker
from precondalg.structures.lazy import Gram
from precondalg.structures.scalar import Scalar

rules = Rules("gram")


def gram(Q: Structure) -> Structure:
    """QᵀQ for an m×n structure Q: an n×n symmetric PSD structure.

    Rules: Scalar → Scalar(α²); Diagonal → Diagonal(d²); Kronecker → Kronecker of the factors' grams
    ((A⊗B)ᵀ(A⊗B) = AᵀA ⊗ BᵀB); BlockDiagonal → BlockDiagonal of the blocks' grams.  Otherwise a lazy
    `Gram` that keeps Q and applies Qᵀ(Q x).
    """
    rule = rules.lookup(Q)
    return rule(Q) if rule is not None else Gram(Q)


@rules.register(Scalar)
def _scalar(Q: Scalar) -> Scalar:
    return Scalar(Q.alpha * Q.alpha, Q.n)


@rules.register(Diagonal)
def _diagonal(Q: Diagonal) -> Diagonal:
    return Diagonal(Q.d * Q.d)


@rules.register(Kronecker)
def _kronecker(Q: Kronecker) -> Kronecker:
    return Kronecker(*[gram(f) for f in Q.factors])


@rules.register(BlockDiagonal)
def _block_diagonal(Q: BlockDiagonal) -> BlockDiagonal:
    return BlockDiagonal(*[gram(b) for b in Q.blocks])
