"""Tensor checks and FSDP2 shard helpers shared by the engine, the objectives and the fitters (not part
of the public API)."""

from __future__ import annotations

import torch

try:  # public from torch 2.5
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # pragma: no cover - torch 2.4, or a build without torch.distributed
    DTensor, distribute_tensor = None, None

__all__ = ["all_finite", "finite_each", "full", "is_sharded", "shard_like"]


def is_sharded(t: torch.Tensor) -> bool:
    """Whether `t` is a `DTensor` (FSDP2's parameters and their gradients)."""
    return DTensor is not None and isinstance(t, DTensor)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a `DTensor` (FSDP2's sharded parameters and gradients: gathered from every
    rank of its mesh), or `t` itself.  The preconditioner couples a sharded tensor's entries, so it is
    fitted and applied on the whole tensor, identically on every rank."""
    return t.full_tensor() if is_sharded(t) else t


def shard_like(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`t` (the whole tensor, equal on every rank) as a `DTensor` placed like `like` (each rank keeps
    its own shard, no communication), or `t` itself where `like` is not a DTensor."""
    if not is_sharded(like):
        return t
    return distribute_tensor(t, like.device_mesh, like.placements, src_data_rank=None)


def finite_each(tensors: list[torch.Tensor]) -> torch.Tensor:
    """A device boolean per tensor: all its entries are finite (no host synchronisation).  The least
    and the largest entry propagate NaN, show ±Inf and cannot overflow; `torch.aminmax` takes both in
    one pass without a temporary (several times faster than isfinite(t).all() or the ∞-norm on CPU),
    and one stack checks every tensor's at once.  An empty tensor is finite."""
    real = [torch.view_as_real(t) if t.is_complex() else t for t in tensors]
    extremes = [m for t in real for m in (torch.aminmax(t) if t.numel() else (t.new_zeros(()),) * 2)]
    device = extremes[0].device  # parameters may live on several devices
    if any(m.device != device for m in extremes):
        extremes = [m.to(device) for m in extremes]
    return torch.isfinite(torch.stack(extremes)).view(-1, 2).all(1)


def all_finite(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One device boolean: every entry of every tensor is finite (`finite_each`, reduced).  Integer
    tensors (counters) are finite."""
    checked = [t for t in tensors if t.numel() and (t.is_floating_point() or t.is_complex())]
    return finite_each(checked).all() if checked else torch.tensor(True)
