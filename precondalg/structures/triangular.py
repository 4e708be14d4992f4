"""`Triangular(R)`: an upper-triangular matrix, the invertible-triangular Lie group."""

from __future__ import annotations

import torch

from precondalg.structures._base import Cost, Structure, check_tensor, register_structure


@register_structure
class Triangular(Structure):
    """The upper-triangular part of R.

    PSGD's default group for dense and Kronecker factors (Li 2019, Eq. 18).  With a
    non-zero diagonal it is a matrix Lie group whose Lie algebra is the upper-triangular matrices.
    The constructor zeroes the strictly lower part, and every operation reads only the upper part.

    Args:
        R: (n, n) floating tensor; only its upper triangle (diagonal included) is kept.

    Example:
        >>> Triangular(torch.ones(2, 2)).to_dense()
        tensor([[1., 1.],
                [0., 1.]])
    """

    R: torch.Tensor

    def __post_init__(self) -> None:
        check_tensor("Triangular", "R", self.R, "(n, n)", 2)
        if self.R.shape[0] != self.R.shape[1]:
            raise ValueError(f"Triangular: argument 'R' must have shape (n, n); got {tuple(self.R.shape)}")
        object.__setattr__(self, "R", torch.triu(self.R))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.R.shape[0], self.R.shape[0])

    # The products read triu(R): a Triangular unflattened by a torch.func transform holds the raw leaf,
    # whose gradient must vanish below the diagonal.  The solves (which read only the upper triangle)
    # are written as right-hand solves of the transposed system (Yᵀ Rᵀ = Xᵀ, Yᵀ R = Xᵀ): the same
    # back-substitution, 1.5–3× faster on CPU.
    def _mv(self, X: torch.Tensor) -> torch.Tensor:
        return torch.triu(self.R) @ X

    def _rmv(self, X: torch.Tensor) -> torch.Tensor:
        return torch.triu(self.R).mT @ X

    def _solve(self, X: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve_triangular(self.R.mT, X.mT, upper=False, left=False).mT

    def _rsolve(self, X: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve_triangular(self.R, X.mT, upper=True, left=False).mT

    def to_dense(self) -> torch.Tensor:
        return torch.triu(self.R)

    def cost(self) -> Cost:
        n = self.R.shape[0]
        # The product is a dense matmul with triu(R) (no triangular-multiply kernel); the solve is a
        # back-substitution that reads only the upper triangle.
        return Cost(stored=n * n, matvec=n * n, solve=n * (n + 1) // 2)
