"""`add(A, B)` (``A + B``): sums of structures.

Structure-preserving rules: Scalar + Scalar → Scalar; a Scalar is otherwise promoted to a Diagonal;
Diagonal + Diagonal → Diagonal; Dense + {Dense, Diagonal} → Dense; Triangular + {Triangular,
Diagonal} → Triangular; Normalization + {Normalization, Diagonal} → Normalization;
BlockDiagonal + BlockDiagonal → BlockDiagonal when the block shapes agree.  Otherwise a lazy `Sum`.
"""

from __future__ import annotations

from precondalg.structures._base import Structure, check_same_kind
from precondalg.structures._dispatch import Rules
from precondalg.structures.block_diagonal import BlockDiagonal
from precondalg.structures.dense import Dense
from precondalg.structures.diagonal import Diagonal
from precondalg.structures.lazy import Sum
from precondalg.structures.normalization import Normalization
from precondalg.structures.scalar import Scalar
from precondalg.structures.triangular import Triangular

rules = Rules("add")


def add(A: Structure, B: Structure) -> Structure:
    """The sum A + B.

    Raises:
        ValueError: if the shapes differ.
        TypeError: if A and B have different dtypes.
    """
    if A.shape != B.shape:
        raise ValueError(
            f"add: cannot add {type(A).__name__} of shape {A.shape} and {type(B).__name__} of shape {B.shape}"
        )
    check_same_kind("add", A=A, B=B)
    if isinstance(A, Scalar) and isinstance(B, Scalar):
        return Scalar(A.alpha + B.alpha, A.n)
    A2, B2 = _promote(A), _promote(B)
    rule = rules.lookup(A2, B2)
    out = rule(A2, B2) if rule is not None else None
    if out is not None:
        return out
    return Sum(*_terms(A), *_terms(B))


def _promote(A: Structure) -> Structure:
    """A Scalar as the Diagonal αI, so that Diagonal rules serve it."""
    return Diagonal(A.alpha.expand(A.n)) if isinstance(A, Scalar) else A


def _terms(A: Structure) -> tuple[Structure, ...]:
    return A.terms if isinstance(A, Sum) else (A,)


@rules.register(Diagonal, Diagonal)
def _diag_diag(A: Diagonal, B: Diagonal) -> Diagonal:
    return Diagonal(A.d + B.d)


@rules.register(Dense, Dense)
def _dense_dense(A: Dense, B: Dense) -> Dense:
    return Dense(A.A + B.A)


@rules.register(Dense, Diagonal)
def _dense_diag(A: Dense, B: Diagonal) -> Dense:
    return Dense(A.A + B.to_dense())


@rules.register(Diagonal, Dense)
def _diag_dense(A: Diagonal, B: Dense) -> Dense:
    return _dense_diag(B, A)


@rules.register(Triangular, Triangular)
def _tri_tri(A: Triangular, B: Triangular) -> Triangular:
    return Triangular(A.R + B.R)


@rules.register(Triangular, Diagonal)
def _tri_diag(A: Triangular, B: Diagonal) -> Triangular:
    return Triangular(A.R + B.to_dense())


@rules.register(Diagonal, Triangular)
def _diag_tri(A: Diagonal, B: Triangular) -> Triangular:
    return _tri_diag(B, A)


@rules.register(Normalization, Normalization)
def _norm_norm(A: Normalization, B: Normalization) -> Normalization:
    return Normalization(A.d + B.d, A.c + B.c)


@rules.register(Normalization, Diagonal)
def _norm_diag(A: Normalization, B: Diagonal) -> Normalization:
    return Normalization(A.d + B.d, A.c)


@rules.register(Diagonal, Normalization)
def _diag_norm(A: Diagonal, B: Normalization) -> Normalization:
    return _norm_diag(B, A)


@rules.register(BlockDiagonal, BlockDiagonal)
def _block_block(A: BlockDiagonal, B: BlockDiagonal) -> BlockDiagonal | None:
    if len(A.blocks) != len(B.blocks) or any(a.shape != b.shape for a, b in zip(A.blocks, B.blocks)):
        return None
    return BlockDiagonal(*[add(a, b) for a, b in zip(A.blocks, B.blocks)])
