"""`Dense(A)`: an unstructured matrix."""

from __future__ import annotations

import torch

from precondalg.structures._base import (
    Cost,
    Structure,
    check_tensor,
    matmul_in_layout,
    not_invertible,
    register_structure,
)


@register_structure
class Dense(Structure):
    """A dense matrix A, usually n×n; m×n is allowed (e.g. FOP's low-rank M of shape r×n).

    Full FOP's M (P = MᵀM, Moskovitz et al. 2019), dense PSGD's Q (GL(n), Li 2019).  Square dense matrices
    form the Lie group GL(n), whose Lie algebra is all n×n matrices.

    Args:
        A: (m, n) floating tensor.

    Examples:
        >>> Dense(torch.eye(2)) @ torch.tensor([1.0, 2.0])
        tensor([1., 2.])
    """

    A: torch.Tensor

    def __post_init__(self) -> None:
        check_tensor("Dense", "A", self.A, "(m, n)", 2)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.A.shape[0], self.A.shape[1])

    def _mv(self, X: torch.Tensor) -> torch.Tensor:
        return matmul_in_layout(self.A, X)

    def _rmv(self, X: torch.Tensor) -> torch.Tensor:
        return matmul_in_layout(self.A.mT, X)

    def _solve(self, X: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve(self._square(), X)

    def _rsolve(self, X: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve(self._square().mT, X)

    def _square(self) -> torch.Tensor:
        m, n = self.shape
        if m != n:
            raise not_invertible(self, f"A is {m}×{n}, not square")
        return self.A

    def to_dense(self) -> torch.Tensor:
        return self.A

    def cost(self) -> Cost:
        m, n = self.shape
        # LU factorisation (n³/3 multiply-adds) plus two triangular solves (n² in all).
        return Cost(stored=m * n, matvec=m * n, solve=n**3 // 3 + n * n if m == n else None)
