"""`Diagonal(d)`: the matrix diag(d)."""

from __future__ import annotations

import torch

from precondalg.structures._base import Cost, Structure, check_tensor, register_structure


@register_structure
class Diagonal(Structure):
    """diag(d): a diagonal n×n matrix.

    Per-parameter learning rates (PP-HD, Moskovitz et al. 2019), LODO-Diagonal, PSGD's diagonal group
    (Li 2019; Adam/RMSprop and equilibrated SGD as its closed forms).  With non-zero entries it is a
    matrix Lie group whose Lie algebra is the diagonal matrices.

    Args:
        d: (n,) floating tensor of diagonal entries.

    Examples:
        >>> Diagonal(torch.tensor([1.0, 2.0])) @ torch.ones(2)
        tensor([1., 2.])
    """

    d: torch.Tensor

    def __post_init__(self) -> None:
        check_tensor("Diagonal", "d", self.d, "(n,)", 1)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.d.shape[0], self.d.shape[0])

    def _mv(self, X: torch.Tensor) -> torch.Tensor:
        return self.d.unsqueeze(-1) * X

    def _rmv(self, X: torch.Tensor) -> torch.Tensor:
        return self.d.unsqueeze(-1) * X

    def _solve(self, X: torch.Tensor) -> torch.Tensor:
        return X / self.d.unsqueeze(-1)

    def _rsolve(self, X: torch.Tensor) -> torch.Tensor:
        return X / self.d.unsqueeze(-1)

    def to_dense(self) -> torch.Tensor:
        return torch.diag(self.d)

    def cost(self) -> Cost:
        n = self.d.shape[0]
        return Cost(stored=n, matvec=n, solve=n)
