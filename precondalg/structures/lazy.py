"""Lazy composites: what an algebra operation returns when no structure-preserving rule applies.

They never densify: each applies its operands one after another.  `Product`, `Sum`, `Transposed`,
`Inverse` and `Gram` are built by the free functions `compose`, `add`, `transpose`, `inverse` and
`gram`; constructing them directly is allowed but skips the structure-preserving rules.
"""

from __future__ import annotations

from functools import reduce

import torch

from precondalg.structures._base import (
    Cost,
    Structure,
    check_structures,
    not_invertible,
    register_structure,
)


@register_structure
class Product(Structure):
    """A₁ A₂ ⋯ A_k, applied right to left.

    Args:
        *factors: structures with conforming shapes (A_i.shape[1] == A_{i+1}.shape[0]).
    """

    factors: tuple[Structure, ...]

    def __init__(self, *factors: Structure) -> None:
        check_structures("Product", "factor", factors)
        for i, (a, b) in enumerate(zip(factors, factors[1:])):
            if a.shape[1] != b.shape[0]:
                raise ValueError(
                    f"Product: factor {i} of shape {a.shape} cannot multiply factor {i + 1} of shape "
                    f"{b.shape}"
                )
        object.__setattr__(self, "factors", tuple(factors))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.factors[0].shape[0], self.factors[-1].shape[1])

    def _mv(self, X: torch.Tensor) -> torch.Tensor:
        return reduce(lambda Y, f: f._mv(Y), reversed(self.factors), X)

    def _rmv(self, X: torch.Tensor) -> torch.Tensor:
        return reduce(lambda Y, f: f._rmv(Y), self.factors, X)

    def _solve(self, X: torch.Tensor) -> torch.Tensor:
        # (A₁⋯A_k)⁻¹ = A_k⁻¹⋯A₁⁻¹: A₁⁻¹ acts first.
        return reduce(lambda Y, f: f._solve(Y), self.factors, X)

    def _rsolve(self, X: torch.Tensor) -> torch.Tensor:
        # (A₁⋯A_k)⁻ᵀ = A₁⁻ᵀ⋯A_k⁻ᵀ: A_k⁻ᵀ acts first.
        return reduce(lambda Y, f: f._rsolve(Y), reversed(self.factors), X)

    def to_dense(self) -> torch.Tensor:
        return reduce(torch.matmul, [f.to_dense() for f in self.factors])

    def cost(self) -> Cost:
        costs = [f.cost() for f in self.factors]
        solves = [c.solve for c in costs]
        return Cost(
            stored=sum(c.stored for c in costs),
            matvec=sum(c.matvec for c in costs),
            solve=sum(solves) if None not in solves else None,
        )


@register_structure
class Sum(Structure):
    """A₁ + A₂ + ⋯ + A_k.  Has no solve (use `Dense(A.to_dense())` explicitly if one is needed).

    Args:
        *terms: structures of one shape.
    """

    terms: tuple[Structure, ...]

    def __init__(self, *terms: Structure) -> None:
        check_structures("Sum", "term", terms)
        for i, t in enumerate(terms[1:], start=1):
            if t.shape != terms[0].shape:
                raise ValueError(f"Sum: term {i} has shape {t.shape} but term 0 has shape {terms[0].shape}")
        object.__setattr__(self, "terms", tuple(terms))

    @property
    def shape(self) -> tuple[int, int]:
        return self.terms[0].shape

    def _mv(self, X: torch.Tensor) -> torch.Tensor:
        return sum(t._mv(X) for t in self.terms)

    def _rmv(self, X: torch.Tensor) -> torch.Tensor:
        return sum(t._rmv(X) for t in self.terms)

    def _solve(self, X: torch.Tensor) -> torch.Tensor:
        raise not_invertible(self, "a sum of structures has no structured solve; densify it explicitly")

    def _rsolve(self, X: torch.Tensor) -> torch.Tensor:
        raise not_invertible(self, "a sum of structures has no structured solve; densify it explicitly")

    def to_dense(self) -> torch.Tensor:
        return sum(t.to_dense() for t in self.terms)

    def cost(self) -> Cost:
        costs = [t.cost() for t in self.terms]
        m = self.shape[0]
        return Cost(
            stored=sum(c.stored for c in costs),
            matvec=sum(c.matvec for c in costs) + m * (len(costs) - 1),
            solve=None,
        )


@register_structure
class Transposed(Structure):
    """Aᵀ for a structure whose transpose has no structure of its own (e.g. `Triangular`).

    Args:
        A: the structure to transpose.
    """

    A: Structure

    def __post_init__(self) -> None:
        check_structures("Transposed", "operand", (self.A,))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.A.shape[1], self.A.shape[0])

    def _mv(self, X: torch.Tensor) -> torch.Tensor:
        return self.A._rmv(X)

    def _rmv(self, X: torch.Tensor) -> torch.Tensor:
        return self.A._mv(X)

    def _solve(self, X: torch.Tensor) -> torch.Tensor:
        return self.A._rsolve(X)

    def _rsolve(self, X: torch.Tensor) -> torch.Tensor:
        return self.A._solve(X)

    def to_dense(self) -> torch.Tensor:
        return self.A.to_dense().mT

    def cost(self) -> Cost:
        return self.A.cost()


@register_structure
class Inverse(Structure):
    """A⁻¹ for a square structure with a solve but no structured inverse; applying it solves.

    Args:
        A: a square structure.
    """

    A: Structure

    def __post_init__(self) -> None:
        check_structures("Inverse", "operand", (self.A,))
        m, n = self.A.shape
        if m != n:
            raise not_invertible(self.A, f"it is {m}×{n}, not square")
        if self.A.cost().solve is None:
            raise not_invertible(self.A, "its inverse could never be applied")

    @property
    def shape(self) -> tuple[int, int]:
        return self.A.shape

    def _mv(self, X: torch.Tensor) -> torch.Tensor:
        return self.A._solve(X)

    def _rmv(self, X: torch.Tensor) -> torch.Tensor:
        return self.A._rsolve(X)

    def _solve(self, X: torch.Tensor) -> torch.Tensor:
        return self.A._mv(X)

    def _rsolve(self, X: torch.Tensor) -> torch.Tensor:
        return self.A._rmv(X)

    def to_dense(self) -> torch.Tensor:
        n = self.A.shape[0]
        return self.A._solve(torch.eye(n, dtype=self.dtype, device=self.device))

    def cost(self) -> Cost:
        c = self.A.cost()  # the constructor refused an A without a solve
        return Cost(stored=c.stored, matvec=c.solve, solve=c.matvec)


@register_structure
class Gram(Structure):
    """QᵀQ for an m×n structure Q: an n×n symmetric PSD matrix, by construction.

    FOP's P = MᵀM (Moskovitz et al. 2019, Eq. 2), PSGD's P = QᵀQ (Li 2019) and LODO's EᵀAᵀAE
    (Liao et al. 2023, Eq. 2) are grams.

    Args:
        Q: the factor.
    """

    Q: Structure

    def __post_init__(self) -> None:
        check_structures("Gram", "factor", (self.Q,))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.Q.shape[1], self.Q.shape[1])

    def _mv(self, X: torch.Tensor) -> torch.Tensor:
        return self.Q._rmv(self.Q._mv(X))

    def _rmv(self, X: torch.Tensor) -> torch.Tensor:
        return self.Q._rmv(self.Q._mv(X))

    def _solve(self, X: torch.Tensor) -> torch.Tensor:
        # (QᵀQ)⁻¹ = Q⁻¹Q⁻ᵀ.
        return self.Q._solve(self.Q._rsolve(X))

    def _rsolve(self, X: torch.Tensor) -> torch.Tensor:
        return self.Q._solve(self.Q._rsolve(X))

    def to_dense(self) -> torch.Tensor:
        Q = self.Q.to_dense()
        return Q.mT @ Q

    def cost(self) -> Cost:
        c = self.Q.cost()
        return Cost(stored=c.stored, matvec=2 * c.matvec, solve=None if c.solve is None else 2 * c.solve)
