"""`transpose(A)`: Aᵀ, structure-preserving where the transposed matrix has a structure."""

from __future__ import annotations

from precondalg.structures._base import Structure
from precondalg.structures._dispatch import Rules
from precondalg.structures.block_diagonal import BlockDiagonal
from precondalg.structures.dense import Dense
from precondalg.structures.diagonal import Diagonal
from precondalg.structures.eigenbasis import Eigenbasis
from precondalg.structures.kronecker import Kronecker, KroneckerSum
from precondalg.structures.lazy import Gram, Inverse, Product, Sum, Transposed
from precondalg.structures.low_rank import IdentityPlusLowRank
from precondalg.structures.scalar import Scalar

rules = Rules("transpose")


def transpose(A: Structure) -> Structure:
    """Aᵀ.  Symmetric structures (Scalar, Diagonal, Gram, Eigenbasis) return themselves; Triangular,
    Normalization, PermutationNetwork and ResidualNetwork (whose transposes have no class of their own)
    return a lazy `Transposed`.
    """
    rule = rules.lookup(A)
    return rule(A) if rule is not None else Transposed(A)


@rules.register(Scalar)
@rules.register(Diagonal)
@rules.register(Gram)
@rules.register(Eigenbasis)
def _symmetric(A: Structure) -> Structure:
    return A


@rules.register(Dense)
def _dense(A: Dense) -> Dense:
    return Dense(A.A.mT)


@rules.register(IdentityPlusLowRank)
def _low_rank(A: IdentityPlusLowRank) -> IdentityPlusLowRank:
    return IdentityPlusLowRank(A.V, A.U)


@rules.register(Kronecker)
def _kronecker(A: Kronecker) -> Kronecker:
    return Kronecker(*[transpose(f) for f in A.factors])


@rules.register(KroneckerSum)
def _kronecker_sum(A: KroneckerSum) -> KroneckerSum:
    return KroneckerSum(*[transpose(t) for t in A.terms])


@rules.register(BlockDiagonal)
def _block_diagonal(A: BlockDiagonal) -> BlockDiagonal:
    return BlockDiagonal(*[transpose(b) for b in A.blocks])


@rules.register(Product)
def _product(A: Product) -> Product:
    return Product(*[transpose(f) for f in reversed(A.factors)])


@rules.register(Sum)
def _sum(A: Sum) -> Sum:
    return Sum(*[transpose(t) for t in A.terms])


@rules.register(Transposed)
def _transposed(A: Transposed) -> Structure:
    return A.A


@rules.register(Inverse)
def _inverse(A: Inverse) -> Inverse:
    return Inverse(transpose(A.A))
