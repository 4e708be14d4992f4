"""`block_diag(*structures)`: A₁ ⊕ A₂ ⊕ …."""

from __future__ import annotations

import torch

from precondalg.structures._base import Structure, check_structures
from precondalg.structures.block_diagonal import BlockDiagonal
from precondalg.structures.diagonal import Diagonal


def block_diag(*structures: Structure) -> Structure:
    """The direct sum A₁ ⊕ A₂ ⊕ ….

    Diagonal ⊕ Diagonal ⊕ … is a `Diagonal` (same storage); nested BlockDiagonals are flattened;
    otherwise a `BlockDiagonal`.
    """
    check_structures("block_diag", "structure", structures)
    if all(isinstance(s, Diagonal) for s in structures):
        return Diagonal(torch.cat([s.d for s in structures]))
    blocks: list[Structure] = []
    for s in structures:
        blocks.extend(s.blocks if isinstance(s, BlockDiagonal) else (s,))
    return BlockDiagonal(*blocks)
