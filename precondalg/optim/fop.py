"""`FOP`: first-order preconditioning (Moskovitz et al. 2019) as a preset of `Preconditioned`."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import torch

from precondalg.families import Family, dense_gram, low_rank_gram, normalized_dense_gram
from precondalg.fitters import TorchOptimizer
from precondalg.objectives import Hypergradient
from precondalg.optim.preconditioned import Preconditioned
from precondalg.placement import InputSide, Placement, Spatial

__all__ = ["FOP"]


def _fop_placement(shape: tuple[int, ...]) -> Placement | None:
    """Input side for matrices, spatial taps for conv kernels; biases and the rest unpreconditioned
    (METHODS.md §1.1, §1.5, O-FOP-3)."""
    if len(shape) == 2:
        return InputSide()
    if len(shape) == 4:
        return Spatial()
    return None


@dataclasses.dataclass(frozen=True)
class _ByShape:
    """`matrix` for 2-D weights, `other` for the rest (conv taps): a picklable structure choice."""

    matrix: Family
    other: Family

    def __call__(self, shape: tuple[int, ...]) -> Family:
        return self.matrix if len(shape) == 2 else self.other


def FOP(
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    lr: float,
    momentum: float = 0.9,
    hyper_lr: float = 1e-4,
    rank: int | None = None,
    normalized: bool = False,
    *,
    base: str | None = None,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    low_rank_std: float = 1e-3,
    nonfinite: str = "skip",
    seed: int = 0,
) -> Preconditioned:
    """FOP: P = MᵀM per layer, learned online by its hypergradient with Adam (METHODS.md §1).

    The choices: structure `dense_gram` (M₀ = I; `low_rank_gram(rank)` for weight matrices when `rank`
    is given: P = I + MᵀM, M (rank×in) ~ N(0, low_rank_std²); `normalized_dense_gram` when
    `normalized`); placement: the input side of weight matrices (G ↦ G·MᵀM) and the spatial taps of
    conv kernels, biases unpreconditioned; objective `Hypergradient` (Eq. 4; with momentum the raw
    previous gradient, Eqs. 6–8); fitter Adam with lr `hyper_lr` (1e-4 in the paper); base heavy-ball
    momentum (torch.optim.SGD's) when momentum > 0, else SGD.  At M₀ = I and hyper_lr = 0 it is
    torch.optim.SGD exactly.

    Args:
        params: parameters or param groups.
        lr: base learning rate α.
        momentum: heavy-ball momentum μ (0.9 in the paper's experiments).
        hyper_lr: Adam's learning rate on M.
        rank: None for full M; r for low-rank M on weight matrices (conv taps stay full).
        normalized: FOP-norm (App. A.1): √n·MᵀM/‖MᵀM‖_F, with the plain MᵀM hypergradient (O-FOP-2).
        base: override the base rule ("sgd", "momentum", "adam", ...; O-FOP-8 for Adam).
        nesterov: Nesterov momentum.
        weight_decay: L2 penalty added to the gradient.
        low_rank_std: std of the initial low-rank M (O-FOP-1).
        nonfinite: "skip" or "raise" (see `Preconditioned`).
        seed: seed for the low-rank initialisation.

    Returns:
        A `Preconditioned` optimizer configured as FOP.

    Raises:
        ValueError: hyper_lr < 0, low_rank_std < 0, rank < 1 or larger than a layer's input size, rank
            with normalized, or any `Preconditioned` hyperparameter out of range.
    """
    if not hyper_lr >= 0:
        raise ValueError(f"FOP: 'hyper_lr' must be >= 0; got {hyper_lr!r}")
    if low_rank_std < 0:
        raise ValueError(f"FOP: 'low_rank_std' must be >= 0; got {low_rank_std!r}")
    if rank is not None and normalized:
        raise ValueError(
            "FOP: 'normalized' is defined for full-rank M only (App. A.1); got rank "
            f"{rank!r} with normalized=True"
        )
    full = normalized_dense_gram() if normalized else dense_gram()
    matrix = low_rank_gram(rank, low_rank_std) if rank is not None else full
    return Preconditioned(
        params,
        lr,
        structure=_ByShape(matrix=matrix, other=full),
        placement=_fop_placement,
        objective=Hypergradient(),
        fitter=TorchOptimizer(torch.optim.Adam, lr=hyper_lr),
        base=base if base is not None else ("momentum" if momentum > 0 else "sgd"),
        position="gradient",
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        nonfinite=nonfinite,
        seed=seed,
    )
