"""`Normalization(d, c)`: PSGD's scaling-and-normalization group, diag(d) plus a last column."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from precondalg.structures._base import (
    Cost,
    Structure,
    check_same_kind,
    check_tensor,
    register_structure,
)


@register_structure
class Normalization(Structure):
    """diag(d) plus the column c above the diagonal in the last column.

    The matrix is ``Q[i, i] = d[i]`` and ``Q[i, n-1] = c[i]`` for i < n-1, zero elsewhere: PSGD's SCAN
    Q₂ (Li 2019, §5) acting on an input augmented with a trailing 1, whose Eq. 25 instance
    ``d = (1/σ, 1)``, ``c = -m/σ`` normalises features to mean 0 and variance 1.  With non-zero d it is
    a matrix Lie group (closed under products and inverses); its Lie algebra has the same pattern.

    Args:
        d: (n,) floating tensor, the diagonal.
        c: (n-1,) floating tensor, the last column above the diagonal.

    Examples:
        >>> Normalization(torch.tensor([2.0, 1.0]), torch.tensor([-3.0])) @ torch.tensor([1.0, 1.0])
        tensor([-1.,  1.])
    """

    d: torch.Tensor
    c: torch.Tensor

    def __post_init__(self) -> None:
        check_tensor("Normalization", "d", self.d, "(n,)", 1)
        check_tensor("Normalization", "c", self.c, "(n-1,)", 1)
        if self.c.shape[0] != self.d.shape[0] - 1:
            raise ValueError(
                f"Normalization: argument 'c' must have shape (n-1,) = ({self.d.shape[0] - 1},) for "
                f"d of shape {tuple(self.d.shape)}; got {tuple(self.c.shape)}"
            )
        check_same_kind("Normalization", d=self.d, c=self.c)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.d.shape[0], self.d.shape[0])

    def _column(self) -> torch.Tensor:
        """The full last column without its diagonal entry: c padded with a trailing 0, shape (n,)."""
        return F.pad(self.c, (0, 1))

    def _mv(self, X: torch.Tensor) -> torch.Tensor:
        return self.d.unsqueeze(-1) * X + self._column().unsqueeze(-1) * X[-1:]

    def _rmv(self, X: torch.Tensor) -> torch.Tensor:
        last = (self._column().unsqueeze(-1) * X).sum(0, keepdim=True)
        return self.d.unsqueeze(-1) * X + F.pad(last, (0, 0, self.d.shape[0] - 1, 0))

    def _solve(self, X: torch.Tensor) -> torch.Tensor:
        x_last = X[-1:] / self.d[-1]
        return (X - self._column().unsqueeze(-1) * x_last) / self.d.unsqueeze(-1)

    def _rsolve(self, X: torch.Tensor) -> torch.Tensor:
        head = X[:-1] / self.d[:-1].unsqueeze(-1)
        last = (X[-1:] - (self.c.unsqueeze(-1) * head).sum(0, keepdim=True)) / self.d[-1]
        return torch.cat([head, last])

    def to_dense(self) -> torch.Tensor:
        n = self.d.shape[0]
        last = F.one_hot(torch.tensor(n - 1, device=self.d.device), n).to(self.d.dtype)
        return torch.diag(self.d) + torch.outer(self._column(), last)

    def cost(self) -> Cost:
        n = self.d.shape[0]
        return Cost(stored=2 * n - 1, matvec=2 * n - 1, solve=2 * n - 1)
