"""`Triangular(R)`: an upper-triangular matrix, the invertible-triangular Lie group."""

from __future__ import annotations

from typing import ClassVar

import torch

from precondalg._torch_compat import writable
from precondalg.structures._base import Cost, Structure, check_tensor, register_structure


@register_structure
class Triangular(Structure):
    """The upper-triangular part of R.

    PSGD's default group for dense and Kronecker factors (Li 2019, Eq. 18).  With a
    non-zero diagonal it is a matrix Lie group whose Lie algebra is the upper-triangular matrices.
    The constructor zeroes the strictly lower part, and every operation reads only the upper part.

    Args:
        R: (n, n) floating tensor; only its upper triangle (diagonal included) is kept.

    Examples:
        >>> Triangular(torch.ones(2, 2)).to_dense()
        tensor([[1., 1.],
                [0., 1.]])
    """

    R: torch.Tensor

    upper: ClassVar[bool] = False
    """Whether R is known to be exactly upper triangular, so that the products read it as it is: set
    by the constructor (which zeroes the lower part) and by `upper_triangular`; not by unflattening,
    whose R may be the raw leaf of a torch.func transform (read through triu)."""

    def __post_init__(self) -> None:
        check_tensor("Triangular", "R", self.R, "(n, n)", 2)
        if self.R.shape[0] != self.R.shape[1]:
            raise ValueError(f"Triangular: argument 'R' must have shape (n, n); got {tuple(self.R.shape)}")
        object.__setattr__(self, "R", torch.triu(self.R))
        object.__setattr__(self, "upper", True)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.R.shape[0], self.R.shape[0])

    def upper_part(self) -> torch.Tensor:
        """triu(R): R itself where it is known to be upper triangular (see `upper`)."""
        return self.R if self.upper else torch.triu(self.R)

    # The products read triu(R): a Triangular unflattened by a torch.func transform holds the raw leaf,
    # whose gradient must vanish below the diagonal.  The solves (which read only the upper triangle)
    # are written as right-hand solves of the transposed system (Yᵀ Rᵀ = Xᵀ, Yᵀ R = Xᵀ): the same
    # back-substitution, 1.5–3× faster on CPU.
    def _mv(self, X: torch.Tensor) -> torch.Tensor:
        return self.upper_part() @ X

    def _rmv(self, X: torch.Tensor) -> torch.Tensor:
        return self.upper_part().mT @ X

    def _solve(self, X: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve_triangular(self.R.mT, X.mT, upper=False, left=False).mT

    def _rsolve(self, X: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve_triangular(self.R, X.mT, upper=True, left=False).mT

    def to_dense(self) -> torch.Tensor:
        return torch.triu(self.R)  # a copy: the caller may write to it

    def cost(self) -> Cost:
        n = self.R.shape[0]
        # The product is a dense matmul with triu(R) (no triangular-multiply kernel); the solve is a
        # back-substitution that reads only the upper triangle.
        return Cost(stored=n * n, matvec=n * n, solve=n * (n + 1) // 2)


def upper_triangular(R: torch.Tensor) -> Triangular:
    """The `Triangular` over R itself, without the constructor's triu (no copy) and without checks,
    for an R that the caller knows to be an exactly upper-triangular (n, n) tensor: a multiple of an
    upper one by a finite number, a product of upper ones, or a leaf that its owner keeps upper
    triangular (the `LieGroup` fitter)."""
    T = object.__new__(Triangular)
    object.__setattr__(T, "R", R)
    object.__setattr__(T, "upper", True)
    return T


def hold_upper(T: Triangular) -> None:
    """Zero T's R below the diagonal, in place, and mark it `upper`: for the owner of a leaf that keeps
    it upper triangular from then on (the `LieGroup` fitter, whose every step writes a group element)."""
    writable(T.R).copy_(torch.triu(T.R))
    object.__setattr__(T, "upper", True)
