"""Structured matrices and their algebra (layer 1: no knowledge of optimizers).

Every class is an immutable torch pytree; every operation is a free function with a dispatch table
of structure-preserving rules and a lazy composite as fallback (never silent densification).
"""

from precondalg.structures._base import Cost, NotInvertibleError, Structure
from precondalg.structures.add import add
from precondalg.structures.block_diag import block_diag
from precondalg.structures.block_diagonal import BlockDiagonal
from precondalg.structures.compose import compose, scale
from precondalg.structures.dense import Dense
from precondalg.structures.diagonal import Diagonal
from precondalg.structures.eigenbasis import Eigenbasis
from precondalg.structures.gram import gram
from precondalg.structures.inverse import inverse
from precondalg.structures.kron import kron
from precondalg.structures.kronecker import Kronecker, KroneckerSum
from precondalg.structures.lazy import Gram, Inverse, Product, Sum, Transposed
from precondalg.structures.lie import (
    is_lie_group,
    lie_project,
    lie_project_gram,
    lie_step,
    max_abs,
    relative_gradient,
    scale_group,
    simple_parts,
)
from precondalg.structures.low_rank import IdentityPlusLowRank
from precondalg.structures.normalization import Normalization
from precondalg.structures.permutation import PermutationNetwork, lodo_width, permutation_network
from precondalg.structures.residual import ResidualNetwork, residual_network
from precondalg.structures.scalar import Scalar
from precondalg.structures.transpose import transpose
from precondalg.structures.triangular import Triangular

__all__ = [
    "BlockDiagonal",
    "Cost",
    "Dense",
    "Diagonal",
    "Eigenbasis",
    "Gram",
    "IdentityPlusLowRank",
    "Inverse",
    "Kronecker",
    "KroneckerSum",
    "Normalization",
    "NotInvertibleError",
    "PermutationNetwork",
    "Product",
    "ResidualNetwork",
    "Scalar",
    "Structure",
    "Sum",
    "Transposed",
    "Triangular",
    "add",
    "block_diag",
    "compose",
    "gram",
    "inverse",
    "is_lie_group",
    "kron",
    "lie_project",
    "lie_project_gram",
    "lie_step",
    "lodo_width",
    "max_abs",
    "permutation_network",
    "relative_gradient",
    "residual_network",
    "scale_group",
    "scale",
    "simple_parts",
    "transpose",
]
