"""Matrix Lie groups: membership, projection onto the Lie algebra, and the multiplicative step.

PSGD (Li 2019, Eqs. 17–20) fits Q on a matrix Lie group: a perturbation δQ = E Q with
E in the group's Lie algebra 𝔤, and the step Q ← (I − μE) Q, which stays in the group.  The group
structures and their Lie algebras:

| structure | group | Lie algebra (projection of a dense E) |
| --- | --- | --- |
| `Scalar` | αI, α ≠ 0 | span(I): (tr E / n) I |
| `Diagonal` | non-singular diagonal | diagonal: diag(E) |
| `Dense` (square) | GL(n) | all matrices: E |
| `Triangular` | invertible upper-triangular | upper-triangular: triu(E) |
| `Normalization` | diag + last column, d ≠ 0 | same pattern |
| `BlockDiagonal` of groups | direct sum | the blocks' algebras on the diagonal blocks |
| `Kronecker` of groups | Kronecker product | `KroneckerSum` Σᵢ I⊗Eᵢ⊗I, Eᵢ ∈ 𝔤ᵢ |

Every projection is the orthogonal (Frobenius) projection onto the algebra, hence idempotent.  For a
Kronecker product of groups the step is taken factor-wise, Qᵢ ← (I − μEᵢ)Qᵢ: it stays exactly in the
group and equals (I − μE)Q to first order in μ (PSGD's Kronecker update, Li 2019, Eq. 23).
"""

from __future__ import annotations

import math
import string

import opt_einsum
import torch
import torch.utils._pytree as pytree

from precondalg.structures._base import Structure
from precondalg.structures._dispatch import Rules
from precondalg.structures.add import add
from precondalg.structures.block_diagonal import BlockDiagonal
from precondalg.structures.compose import compose, scale
from precondalg.structures.dense import Dense
from precondalg.structures.diagonal import Diagonal
from precondalg.structures.kronecker import Kronecker, KroneckerSum
from precondalg.structures.lazy import Product
from precondalg.structures.normalization import Normalization
from precondalg.structures.scalar import Scalar
from precondalg.structures.triangular import Triangular, upper_triangular

project_rules = Rules("lie_project")
relative_rules = Rules("relative_gradient")
_SIMPLE_GROUPS = (Scalar, Diagonal, Dense, Triangular, Normalization)


def simple_parts(A: Structure) -> list[Structure]:
    """The simple factors of A (or the terms of a `KroneckerSum`) through Kronecker products and
    block-diagonal sums, depth first: the order in which pytree flattening meets their leaves.

    Examples:
        >>> B = BlockDiagonal(Diagonal(torch.ones(2)), Scalar(torch.tensor(1.0), 1))
        >>> Q = Kronecker(Dense(torch.eye(2)), B)
        >>> " ".join(type(p).__name__ for p in simple_parts(Q))
        'Dense Diagonal Scalar'
    """
    if isinstance(A, (Kronecker, KroneckerSum)):
        return [p for f in (A.factors if isinstance(A, Kronecker) else A.terms) for p in simple_parts(f)]
    if isinstance(A, BlockDiagonal):
        return [p for b in A.blocks for p in simple_parts(b)]
    return [A]


def is_lie_group(A: Structure) -> bool:
    """Whether A's structure is a matrix Lie group (values aside: entries must make it invertible)."""
    if isinstance(A, Dense):
        return A.shape[0] == A.shape[1]
    if isinstance(A, Kronecker):
        return all(is_lie_group(f) for f in A.factors)
    if isinstance(A, BlockDiagonal):
        return all(is_lie_group(b) for b in A.blocks)
    return isinstance(A, _SIMPLE_GROUPS)


def _require_group(Q: Structure, op: str) -> None:
    if not is_lie_group(Q):
        raise TypeError(
            f"{op}: {type(Q).__name__} of shape {Q.shape} is not a matrix Lie group structure; the "
            "group structures are Scalar, Diagonal, square Dense, Triangular, Normalization, and "
            "Kronecker/BlockDiagonal of these"
        )


def lie_project(Q: Structure, E: torch.Tensor) -> Structure:
    """Project a dense matrix onto the Lie algebra of Q's group.

    Args:
        Q: a group structure of shape (n, n).
        E: (n, n) dense tensor.

    Returns:
        The orthogonal projection of E onto 𝔤, as a structure: same type as Q for the simple groups
        and BlockDiagonal, a `KroneckerSum` for a Kronecker.

    Raises:
        TypeError: Q is not a group structure, or E is not a tensor of Q's dtype.
        ValueError: E's shape is not Q's.
    """
    _require_group(Q, "lie_project")
    if not isinstance(E, torch.Tensor) or E.dtype != Q.dtype:
        raise TypeError(
            f"lie_project: E must be a tensor of dtype {Q.dtype}; got {getattr(E, 'dtype', type(E).__name__)}"
        )
    if tuple(E.shape) != Q.shape:
        raise ValueError(f"lie_project: E must have Q's shape {Q.shape}; got {tuple(E.shape)}")
    return project_rules.lookup(Q)(Q, E)


@project_rules.register(Scalar)
def _scalar(Q: Scalar, E: torch.Tensor) -> Scalar:
    return Scalar(torch.trace(E) / Q.n, Q.n)


@project_rules.register(Diagonal)
def _diagonal(Q: Diagonal, E: torch.Tensor) -> Diagonal:
    return Diagonal(torch.diagonal(E))


@project_rules.register(Dense)
def _dense(Q: Dense, E: torch.Tensor) -> Dense:
    return Dense(E)


@project_rules.register(Triangular)
def _triangular(Q: Triangular, E: torch.Tensor) -> Triangular:
    return Triangular(E)


@project_rules.register(Normalization)
def _normalization(Q: Normalization, E: torch.Tensor) -> Normalization:
    return Normalization(torch.diagonal(E), E[:-1, -1])


@project_rules.register(BlockDiagonal)
def _block_diagonal(Q: BlockDiagonal, E: torch.Tensor) -> BlockDiagonal:
    parts, start = [], 0
    for b in Q.blocks:
        stop = start + b.shape[0]
        parts.append(lie_project(b, E[start:stop, start:stop]))
        start = stop
    return BlockDiagonal(*parts)


@project_rules.register(Kronecker)
def _kronecker(Q: Kronecker, E: torch.Tensor) -> KroneckerSum:
    # The algebra is {Σᵢ I⊗Eᵢ⊗I : Eᵢ ∈ 𝔤ᵢ}; the subspaces share only span(I).  With N = Πnᵢ,
    # Xᵢ = (nᵢ/N)·Tr_{≠i}(E) and t = tr(E)/N, the orthogonal projection has terms
    # E₀ = Π₀(X₀) and Eᵢ = Πᵢ(Xᵢ − tI) for i > 0 (traceless), since each Πᵢ keeps traces and fixes I.
    dims = [f.shape[0] for f in Q.factors]
    N = math.prod(dims)
    blocks = E.reshape(*dims, *dims)
    rows = string.ascii_letters[: len(dims)]
    t = torch.trace(E) / N
    terms = []
    for i, (f, n_i) in enumerate(zip(Q.factors, dims)):
        cols = rows[:i] + string.ascii_letters[len(dims)] + rows[i + 1 :]
        X = opt_einsum.contract(f"{rows}{cols}->{rows[i]}{cols[i]}", blocks, backend="torch") * (n_i / N)
        if i > 0:
            X = X - t * torch.eye(n_i, dtype=E.dtype, device=E.device)
        terms.append(lie_project(f, X))
    return KroneckerSum(*terms)


gram_rules = Rules("lie_project_gram")


def lie_project_gram(Q: Structure, A: torch.Tensor, B: torch.Tensor) -> Structure:
    """Π_𝔤(A Aᵀ − B Bᵀ), the projection of a difference of Grams onto the Lie algebra of Q's group,
    without forming the n×n matrix where the algebra is sparse: the row sums of A² − B² for a diagonal,
    their total over n for a scalar, those plus the last column's inner products for `Normalization`.
    (PSGD's relative gradient, Eq. 18, has this form: A = Qh, B = Q⁻ᵀv.)

    Args:
        Q: a simple group structure (not Kronecker or BlockDiagonal) of shape (n, n).
        A: (n, m) tensor.
        B: (n, m) tensor.

    Returns:
        The same structure as ``lie_project(Q, A @ A.mT - B @ B.mT)``.
    """
    rule = gram_rules.lookup(Q)
    if rule is not None:
        return rule(Q, A, B)
    return lie_project(Q, torch.addmm(A @ A.mT, B, B.mT, alpha=-1))  # the difference inside the matmul


@gram_rules.register(Scalar)
def _gram_scalar(Q: Scalar, A: torch.Tensor, B: torch.Tensor) -> Scalar:
    return Scalar(((A * A).sum() - (B * B).sum()) / Q.n, Q.n)


@gram_rules.register(Diagonal)
def _gram_diagonal(Q: Diagonal, A: torch.Tensor, B: torch.Tensor) -> Diagonal:
    return Diagonal((A * A).sum(-1) - (B * B).sum(-1))


@gram_rules.register(Normalization)
def _gram_normalization(Q: Normalization, A: torch.Tensor, B: torch.Tensor) -> Normalization:
    return Normalization((A * A).sum(-1) - (B * B).sum(-1), A[:-1] @ A[-1] - B[:-1] @ B[-1])


def lie_step(Q: Structure, E: Structure | torch.Tensor, mu: float | torch.Tensor) -> Structure:
    """The multiplicative step Q ← (I − μE) Q on Q's group (PSGD Eq. 19/20).

    Args:
        Q: a group structure.
        E: an element of Q's Lie algebra (as returned by `lie_project`), or a dense (n, n) tensor,
            which is projected first.
        mu: the step size μ.  PSGD's normalised step uses E = R / max_abs(R) and 0 < μ < 1, which keeps
            triangular and diagonal Q invertible (theory check PSGD-8).

    Returns:
        The new Q, of the same type.  Kronecker and BlockDiagonal steps are factor- and block-wise.

    Raises:
        TypeError: Q is not a group structure, or E is not in its Lie algebra.
    """
    _require_group(Q, "lie_step")
    if isinstance(E, torch.Tensor):
        E = lie_project(Q, E)
    if isinstance(Q, Kronecker):
        if not isinstance(E, KroneckerSum) or len(E.terms) != len(Q.factors):
            raise TypeError(
                f"lie_step: E must be a KroneckerSum with {len(Q.factors)} terms for a "
                f"Kronecker Q; got {type(E).__name__}"
            )
        return Kronecker(*[lie_step(f, e, mu) for f, e in zip(Q.factors, E.terms)])
    if isinstance(Q, BlockDiagonal):
        if not isinstance(E, BlockDiagonal) or len(E.blocks) != len(Q.blocks):
            raise TypeError(
                f"lie_step: E must be a BlockDiagonal with {len(Q.blocks)} blocks for a "
                f"BlockDiagonal Q; got {type(E).__name__}"
            )
        return BlockDiagonal(*[lie_step(b, e, mu) for b, e in zip(Q.blocks, E.blocks)])
    if isinstance(Q, Dense) and not isinstance(E, Dense):
        E = Dense(E.to_dense())  # 𝔤𝔩(n) holds every n×n matrix, whatever structure E came in
    if type(E) is type(Q) and isinstance(Q, Dense):
        return Dense(Q.A - mu * (E.A @ Q.A))  # (I − μE)Q = Q − μ(EQ): one matmul
    if type(E) is type(Q) and isinstance(Q, Triangular):
        new = Q.R - mu * (E.R @ Q.R)  # a product of upper-triangular matrices is exactly one
        return upper_triangular(new) if Q.upper and E.upper else Triangular(new)
    if type(E) is type(Q) and isinstance(Q, Diagonal):
        return Diagonal(Q.d - mu * E.d * Q.d)
    identity = Scalar(torch.ones((), dtype=Q.dtype, device=Q.device), Q.shape[0])
    out = compose(add(identity, scale(E, -mu)), Q)
    if type(out) is not type(Q):
        raise TypeError(
            f"lie_step: E of type {type(E).__name__} is not in the Lie algebra of "
            f"{type(Q).__name__}; the step would leave the group"
        )
    return out


def scale_group(Q: Structure, s: float | torch.Tensor) -> Structure:
    """s·Q, of Q's type: every leaf times s for a simple group, a Kronecker's K factors each times
    s^(1/K) (psgd_torch's split of a scale over the factors), a BlockDiagonal's blocks each times s, and
    the last factor of a `Product` ending in a group (psgd_torch's LRA Q = (I + UVᵀ)·diag(d) scales d).

    Args:
        Q: a group structure, or a Product whose last factor is one.
        s: a positive number or 0-d tensor.

    Raises:
        TypeError: Q is neither.
    """
    if isinstance(Q, Product) and is_lie_group(Q.factors[-1]):
        return Product(*Q.factors[:-1], scale_group(Q.factors[-1], s))
    _require_group(Q, "scale_group")
    if isinstance(Q, Kronecker):
        return Kronecker(*[scale_group(f, s ** (1 / len(Q.factors))) for f in Q.factors])
    if isinstance(Q, BlockDiagonal):
        return BlockDiagonal(*[scale_group(b, s) for b in Q.blocks])
    return pytree.tree_map(lambda leaf: leaf * s, Q)


def max_abs(A: Structure) -> torch.Tensor:
    """The largest absolute stored value of A: PSGD's max-abs norm ‖R‖ for a pattern structure (Eq. 20)."""
    # Empty leaves (a 1×1 Normalization's c) hold no value and have no max.
    leaves = [leaf for leaf in pytree.tree_leaves(A) if leaf.numel()]
    if len(leaves) == 1:
        return leaves[0].abs().max()
    return torch.stack([leaf.abs().max() for leaf in leaves]).max()


def relative_gradient(Q: Structure, G: Structure) -> Structure:
    """The relative (natural) gradient on Q's group from the Euclidean gradient G = ∂c/∂Q.

    For the perturbation Q ← (I + E)Q with E in the Lie algebra 𝔤, this is the R ∈ 𝔤 with
    ⟨R, E⟩_F = dc[E] for every E: R = Π_𝔤(∂c/∂Q · Qᵀ) (PSGD Eq. 17; for c = hᵀPh + vᵀP⁻¹v and P = QᵀQ
    it is 2·Π_𝔤(Qhhᵀ Qᵀ − Q⁻ᵀvvᵀQ⁻¹), Eq. 18).  Kronecker: factor-wise, a `KroneckerSum` whose term i
    is factor i's relative gradient (the partial traces of PSGD's Kronecker update); BlockDiagonal:
    block-wise.

    Args:
        Q: a group structure.
        G: the gradient of a scalar c with respect to Q's leaves, a structure of Q's type (as
            `torch.func.grad` returns it).

    Returns:
        R, an element of 𝔤 (the type `lie_project` returns).

    Raises:
        TypeError: Q is not a group structure, or G is not of Q's type.
    """
    _require_group(Q, "relative_gradient")
    if type(G) is not type(Q):
        raise TypeError(f"relative_gradient: G must be a {type(Q).__name__} like Q; got {type(G).__name__}")
    return relative_rules.lookup(Q)(Q, G)


@relative_rules.register(Scalar)
def _relative_scalar(Q: Scalar, G: Scalar) -> Scalar:
    # E = eI: dc = (∂c/∂α)·α·e, and ⟨rI, eI⟩_F = r·e·n.
    return Scalar(G.alpha * Q.alpha / Q.n, Q.n)


@relative_rules.register(Diagonal)
def _relative_diagonal(Q: Diagonal, G: Diagonal) -> Diagonal:
    return Diagonal(G.d * Q.d)


@relative_rules.register(Dense)
@relative_rules.register(Triangular)
@relative_rules.register(Normalization)
def _relative_pattern(Q: Structure, G: Structure) -> Structure:
    # The leaves hold the matrix entries on the pattern, so G.to_dense() is ∂c/∂Q on the pattern.
    return lie_project(Q, G.to_dense() @ Q.to_dense().mT)


@relative_rules.register(Kronecker)
def _relative_kronecker(Q: Kronecker, G: Kronecker) -> KroneckerSum:
    return KroneckerSum(*[relative_gradient(q, g) for q, g in zip(Q.factors, G.factors)])


@relative_rules.register(BlockDiagonal)
def _relative_block_diagonal(Q: BlockDiagonal, G: BlockDiagonal) -> BlockDiagonal:
    return BlockDiagonal(*[relative_gradient(q, g) for q, g in zip(Q.blocks, G.blocks)])
