"""`Scalar(alpha, n)`: the matrix αIₙ."""

from __future__ import annotations

import torch

from precondalg.structures._base import (
    INTEGERS,
    Cost,
    Structure,
    check_tensor,
    register_structure,
    static_field,
)


@register_structure
class Scalar(Structure):
    """αIₙ: a scalar multiple of the n×n identity.

    Used by LODO-Global (G = α₀θI) and as the identity in Lie-group steps.  A matrix Lie group
    (non-zero scalars) with Lie algebra span(I).

    Args:
        alpha: 0-d floating tensor α.
        n: the dimension, a positive int.

    Examples:
        >>> A = Scalar(torch.tensor(2.0), 3)
        >>> A @ torch.ones(3)
        tensor([2., 2., 2.])
    """

    alpha: torch.Tensor
    n: int = static_field()

    def __post_init__(self) -> None:
        check_tensor("Scalar", "alpha", self.alpha, "() (a 0-d tensor)", 0)
        if not isinstance(self.n, INTEGERS) or isinstance(self.n, bool) or self.n < 1:
            raise ValueError(f"Scalar: argument 'n' must be a positive int; got {self.n!r}")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.n)

    def _mv(self, X: torch.Tensor) -> torch.Tensor:
        return self.alpha * X

    def _rmv(self, X: torch.Tensor) -> torch.Tensor:
        return self.alpha * X

    def _solve(self, X: torch.Tensor) -> torch.Tensor:
        return X / self.alpha

    def _rsolve(self, X: torch.Tensor) -> torch.Tensor:
        return X / self.alpha

    def to_dense(self) -> torch.Tensor:
        return self.alpha * torch.eye(self.n, dtype=self.alpha.dtype, device=self.alpha.device)

    def cost(self) -> Cost:
        return Cost(stored=1, matvec=self.n, solve=self.n)
