"""`BlockDiagonal(*blocks)`: A₁ ⊕ A₂ ⊕ …."""

from __future__ import annotations

from collections.abc import Callable

import torch

from precondalg.structures._base import (
    Cost,
    Structure,
    check_structures,
    not_invertible,
    register_structure,
)


@register_structure
class BlockDiagonal(Structure):
    """A₁ ⊕ A₂ ⊕ …: structures on the diagonal, zeros elsewhere.

    One preconditioner per layer (FOP, APO's per-layer blocks) and LODO's block-diagonal layers are of
    this shape; a direct sum of groups is a group (Li 2019, §5).  Blocks may be rectangular.

    Args:
        *blocks: one or more structures A_i of shape (m_i, n_i).

    Examples:
        >>> BlockDiagonal(Scalar(torch.tensor(2.0), 1), Diagonal(torch.ones(2))).to_dense().diag()
        tensor([2., 1., 1.])
    """

    blocks: tuple[Structure, ...]

    def __init__(self, *blocks: Structure) -> None:
        check_structures("BlockDiagonal", "block", blocks)
        object.__setattr__(self, "blocks", tuple(blocks))

    @property
    def shape(self) -> tuple[int, int]:
        return (sum(b.shape[0] for b in self.blocks), sum(b.shape[1] for b in self.blocks))

    def _split_apply(
        self, kernels: list[Callable[[torch.Tensor], torch.Tensor]], sizes: list[int], X: torch.Tensor
    ) -> torch.Tensor:
        return torch.cat([k(x) for k, x in zip(kernels, torch.split(X, sizes))])

    def _mv(self, X: torch.Tensor) -> torch.Tensor:
        return self._split_apply([b._mv for b in self.blocks], [b.shape[1] for b in self.blocks], X)

    def _rmv(self, X: torch.Tensor) -> torch.Tensor:
        return self._split_apply([b._rmv for b in self.blocks], [b.shape[0] for b in self.blocks], X)

    def _solve(self, X: torch.Tensor) -> torch.Tensor:
        self._require_square()
        return self._split_apply([b._solve for b in self.blocks], [b.shape[0] for b in self.blocks], X)

    def _rsolve(self, X: torch.Tensor) -> torch.Tensor:
        self._require_square()
        return self._split_apply([b._rsolve for b in self.blocks], [b.shape[0] for b in self.blocks], X)

    def _require_square(self) -> None:
        for i, b in enumerate(self.blocks):
            if b.shape[0] != b.shape[1]:
                raise not_invertible(self, f"block {i} is {b.shape[0]}×{b.shape[1]}, not square")

    def to_dense(self) -> torch.Tensor:
        return torch.block_diag(*[b.to_dense() for b in self.blocks])

    def cost(self) -> Cost:
        costs = [b.cost() for b in self.blocks]
        square = all(b.shape[0] == b.shape[1] for b in self.blocks)
        solves = [c.solve for c in costs]
        return Cost(
            stored=sum(c.stored for c in costs),
            matvec=sum(c.matvec for c in costs),
            solve=sum(solves) if square and None not in solves else None,
        )
