"""`Kronecker(*factors)`: A₁ ⊗ … ⊗ A_k, and `KroneckerSum(*terms)`: its Lie algebra."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import reduce

import torch
from einops import rearrange

from precondalg.structures._base import (
    Cost,
    Structure,
    check_structures,
    not_invertible,
    register_structure,
)


def along_axis(fn: Callable[[torch.Tensor], torch.Tensor], Y: torch.Tensor, axis: int) -> torch.Tensor:
    """Apply a matrix kernel to one axis of a tensor.

    Args:
        fn: maps a (d, j) matrix to an (e, j) matrix (a structure's `_mv`, `_rmv`, `_solve`, ...).
        Y: (d_0, …, d_{K-1}, k) tensor.
        axis: which of the first K axes `fn` acts on.

    Returns:
        (d_0, …, e, …, d_{K-1}, k): axis `axis` transformed, all others untouched.
    """
    moved = torch.movedim(Y, axis, 0)  # a view; for axis 0 the reshape below is a view too
    Z = fn(moved.reshape(moved.shape[0], -1))
    return torch.movedim(Z.reshape(Z.shape[0], *moved.shape[1:]), 0, axis)


def _kron(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch.kron of two matrices of any strides (torch.kron raises on some transposed non-square ones)."""
    return rearrange(a[:, None, :, None] * b[None, :, None, :], "i k j l -> (i k) (j l)")


def _apply_factors(
    kernels: list[Callable[[torch.Tensor], torch.Tensor]], dims: list[int], X: torch.Tensor, square: bool
) -> torch.Tensor:
    """Apply kernel i along axis i of X (N, k) viewed row-major as (dims[0], …, dims[K-1], k).

    Axis i is the middle axis of the (pre, dᵢ, post) view, pre = Π dims before it (already mapped to
    the kernels' output sizes) and post = k·Π dims after it.  The kernel takes it as a (dᵢ, post) matrix
    when pre = 1 (the first axis), as the transposed (pre, dᵢ) matrix when post = 1 (the last axis of a
    single column), and otherwise after moving the axis to the front: the first two need no copy and
    the fewest operations (this runs for every P @ X of a Kronecker preconditioner).  Two `square`
    kernels (each keeps its axis's size, so the order costs the same flops) on a single column (a matrix
    parameter) take the last axis first (see `_apply_two`)."""
    if len(kernels) == 1:
        return kernels[0](X)
    k, sizes, Y = X.shape[-1], list(dims), X
    if len(kernels) == 2 and k == 1 and square:
        return _apply_two(kernels, dims, X)
    for axis, kernel in enumerate(kernels):
        pre, post = math.prod(sizes[:axis]), math.prod(sizes[axis + 1 :]) * k
        if pre == 1:
            Y = kernel(Y.reshape(sizes[axis], post))
            sizes[axis] = Y.shape[0]
        elif post == 1:
            Y = kernel(Y.reshape(pre, sizes[axis]).mT).mT
            sizes[axis] = Y.shape[1]
        else:
            Z = kernel(Y.reshape(pre, sizes[axis], post).movedim(1, 0).reshape(sizes[axis], -1))
            Y = Z.reshape(-1, pre, post).movedim(0, 1)
            sizes[axis] = Z.shape[0]
    return Y.reshape(-1, k)


def _apply_two(
    kernels: list[Callable[[torch.Tensor], torch.Tensor]], dims: list[int], X: torch.Tensor
) -> torch.Tensor:
    """A X Bᵀ for kernels (A, B) and one column X viewed as the (d₀, d₁) matrix X: B on the transposed
    (d₁, d₀) view first, then A on the transpose of that result.  Each kernel reads a transposed view,
    which a matmul or a triangular solve takes without a copy, and a product's result comes out row-major,
    so that no copy is left for the end (the first axis first would end in a transposed result)."""
    Z = kernels[1](X.reshape(dims[0], dims[1]).mT)
    return kernels[0](Z.mT).reshape(-1, 1)


@register_structure
class Kronecker(Structure):
    """A₁ ⊗ A₂ ⊗ … ⊗ A_k of structures, in torch's row-major convention.

    It acts on a tensor of shape (n₁, …, n_k) flattened row-major, factor i acting on axis i, so
    ``Kronecker(A, B) @ X.flatten() == (A X Bᵀ).flatten()`` and ``Kronecker(A, B).to_dense() ==
    torch.kron(A, B)``.  PSGD's Kronecker preconditioner for a matrix G is ``Kronecker(Q₁, Q₂)`` with
    P = gram of it giving Q₁ᵀQ₁ G Q₂ᵀQ₂ (Li 2019, Eq. 23); APO's Eq. 9 uses ``Kronecker(B, A)``.
    Factors may be rectangular.  A Kronecker product of groups is a group; its Lie algebra is
    `KroneckerSum`.

    Args:
        *factors: one or more structures A_i of shape (m_i, n_i).  Nested Kroneckers are kept as given
            (use `kron` to flatten them).

    Examples:
        >>> A, B = Dense(torch.eye(2)), Diagonal(torch.tensor([1.0, 2.0, 3.0]))
        >>> Kronecker(A, B).shape
        (6, 6)
    """

    factors: tuple[Structure, ...]

    def __init__(self, *factors: Structure) -> None:
        check_structures("Kronecker", "factor", factors)
        object.__setattr__(self, "factors", tuple(factors))

    @property
    def shape(self) -> tuple[int, int]:
        # Lists, not generators: torch.compile (Dynamo) cannot trace math.prod of a generator, and the
        # constructors of Product, Sum and Inverse read their parts' shapes.
        return (
            math.prod([f.shape[0] for f in self.factors]),
            math.prod([f.shape[1] for f in self.factors]),
        )

    def _mv(self, X: torch.Tensor) -> torch.Tensor:
        kernels, dims = [f._mv for f in self.factors], [f.shape[1] for f in self.factors]
        return _apply_factors(kernels, dims, X, self._square())

    def _rmv(self, X: torch.Tensor) -> torch.Tensor:
        kernels, dims = [f._rmv for f in self.factors], [f.shape[0] for f in self.factors]
        return _apply_factors(kernels, dims, X, self._square())

    def _solve(self, X: torch.Tensor) -> torch.Tensor:
        self._require_square()
        return _apply_factors([f._solve for f in self.factors], [f.shape[0] for f in self.factors], X, True)

    def _rsolve(self, X: torch.Tensor) -> torch.Tensor:
        self._require_square()
        return _apply_factors([f._rsolve for f in self.factors], [f.shape[0] for f in self.factors], X, True)

    def _square(self) -> bool:
        return all(f.shape[0] == f.shape[1] for f in self.factors)

    def _require_square(self) -> None:
        for i, f in enumerate(self.factors):
            if f.shape[0] != f.shape[1]:
                raise not_invertible(self, f"factor {i} is {f.shape[0]}×{f.shape[1]}, not square")

    def to_dense(self) -> torch.Tensor:
        return reduce(_kron, [f.to_dense() for f in self.factors])

    def cost(self) -> Cost:
        costs = [f.cost() for f in self.factors]
        out_dims = [f.shape[0] for f in self.factors]
        in_dims = [f.shape[1] for f in self.factors]
        # Factor i is applied after factors < i have mapped their axes to the output sizes.
        repeats = [math.prod(out_dims[:i]) * math.prod(in_dims[i + 1 :]) for i in range(len(costs))]
        solves = [c.solve for c in costs]
        square = all(m == n for m, n in zip(out_dims, in_dims))
        return Cost(
            stored=sum(c.stored for c in costs),
            matvec=sum(c.matvec * r for c, r in zip(costs, repeats)),
            solve=sum(s * r for s, r in zip(solves, repeats)) if square and None not in solves else None,
        )


@register_structure
class KroneckerSum(Structure):
    """Σᵢ I ⊗ … ⊗ Tᵢ ⊗ … ⊗ I: the Kronecker sum of square terms, the Lie algebra of `Kronecker`.

    ``lie_project(Kronecker(Q₁, …, Q_k), E)`` returns a KroneckerSum whose term i lies in the Lie
    algebra of Q_i, and ``lie_step`` applies term i to factor i.  Same row-major convention as
    `Kronecker`: term i acts on axis i.

    Args:
        *terms: square structures T_i of shape (n_i, n_i).

    Examples:
        >>> KroneckerSum(Scalar(torch.tensor(1.0), 2), Scalar(torch.tensor(2.0), 3)).to_dense().diag()
        tensor([3., 3., 3., 3., 3., 3.])
    """

    terms: tuple[Structure, ...]

    def __init__(self, *terms: Structure) -> None:
        check_structures("KroneckerSum", "term", terms)
        for i, t in enumerate(terms):
            if t.shape[0] != t.shape[1]:
                raise ValueError(f"KroneckerSum: term {i} must be square; got shape {t.shape}")
        object.__setattr__(self, "terms", tuple(terms))

    @property
    def shape(self) -> tuple[int, int]:
        n = math.prod([t.shape[0] for t in self.terms])  # a list, for Dynamo (see Kronecker.shape)
        return (n, n)

    def _sum_along_axes(
        self, kernels: list[Callable[[torch.Tensor], torch.Tensor]], X: torch.Tensor
    ) -> torch.Tensor:
        dims = [t.shape[0] for t in self.terms]
        Y = X.reshape(*dims, X.shape[-1])
        return sum(along_axis(k, Y, axis) for axis, k in enumerate(kernels)).reshape(X.shape)

    def _mv(self, X: torch.Tensor) -> torch.Tensor:
        return self._sum_along_axes([t._mv for t in self.terms], X)

    def _rmv(self, X: torch.Tensor) -> torch.Tensor:
        return self._sum_along_axes([t._rmv for t in self.terms], X)

    def _solve(self, X: torch.Tensor) -> torch.Tensor:
        raise not_invertible(self, "a Kronecker sum has no structured solve; densify it explicitly")

    def _rsolve(self, X: torch.Tensor) -> torch.Tensor:
        raise not_invertible(self, "a Kronecker sum has no structured solve; densify it explicitly")

    def to_dense(self) -> torch.Tensor:
        dims = [t.shape[0] for t in self.terms]
        kw = {"dtype": self.dtype, "device": self.device}
        total = 0
        for i, t in enumerate(self.terms):
            parts = (
                [torch.eye(d, **kw) for d in dims[:i]]
                + [t.to_dense()]
                + [torch.eye(d, **kw) for d in dims[i + 1 :]]
            )
            total = total + reduce(_kron, parts)
        return total

    def cost(self) -> Cost:
        n = self.shape[0]
        return Cost(
            stored=sum(t.cost().stored for t in self.terms),
            matvec=sum(t.cost().matvec * (n // t.shape[0]) for t in self.terms) + n * (len(self.terms) - 1),
            solve=None,
        )
