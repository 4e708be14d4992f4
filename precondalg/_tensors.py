"""Tensor checks and FSDP2 shard helpers shared by the engine, the objectives and the fitters (not part
of the public API)."""

from __future__ import annotations

import math

import torch

try:  # public from torch 2.5
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor
except ImportError:  # pragma: no cover - torch 2.4, or a build without torch.distributed
    dist, DTensor, Shard, distribute_tensor = None, None, None, None

__all__ = ["all_finite", "finite_each", "full", "full_many", "is_sharded", "shard_like"]


def is_sharded(t: torch.Tensor) -> bool:
    """Whether `t` is a `DTensor` (FSDP2's parameters and their gradients)."""
    return DTensor is not None and isinstance(t, DTensor)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a `DTensor` (FSDP2's sharded parameters and gradients: gathered from every
    rank of its mesh), or `t` itself.  The preconditioner couples a sharded tensor's entries, so it is
    fitted and applied on the whole tensor, identically on every rank."""
    return t.full_tensor() if is_sharded(t) else t


def full_many(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """`full` of each tensor, with one ``all_gather`` for all the DTensors that share a 1-D mesh, a
    dtype and a device and are sharded on dim 0 (FSDP2's layout) rather than one per tensor; other
    DTensors are gathered one by one. Data movement only: the result is `full`'s bit for bit.

    Each rank sends its shards, each padded to the chunk of ``torch.chunk`` (⌈n/W⌉ rows of n on W ranks,
    the split DTensor's ``Shard(0)`` makes), one after the other in one buffer; the whole tensor is
    rank 0's chunk, then rank 1's, …, trimmed to n rows.
    """
    out = list(tensors)
    batches: dict[tuple[object, torch.dtype, torch.device], list[int]] = {}
    for i, t in enumerate(tensors):
        if not is_sharded(t):
            continue
        if t.device_mesh.ndim == 1 and tuple(t.placements) == (Shard(0),) and not t.is_complex():
            batches.setdefault((t.device_mesh, t.dtype, t.device), []).append(i)
        else:
            out[i] = t.full_tensor()
    for (mesh, _, _), where in batches.items():
        for i, whole in zip(where, _gather_rows([tensors[i] for i in where], mesh)):
            out[i] = whole
    return out


def _gather_rows(tensors: list[DTensor], mesh: object) -> list[torch.Tensor]:
    """The whole tensors of DTensors sharded on dim 0 of the 1-D `mesh` (same dtype and device), with
    one ``all_gather`` (`full_many`)."""
    world = mesh.size()
    rows = [-(-t.shape[0] // world) for t in tensors]  # torch.chunk's rows per rank
    chunks = [r * math.prod(t.shape[1:]) for r, t in zip(rows, tensors)]  # entries per rank
    local = [t.to_local() for t in tensors]
    buffer = local[0].new_zeros(sum(chunks))
    start = 0
    for part, size in zip(local, chunks):
        buffer[start : start + part.numel()] = part.reshape(-1)
        start += size
    received = [torch.empty_like(buffer) for _ in range(world)]
    dist.all_gather(received, buffer, group=mesh.get_group())
    out, start = [], 0
    for t, n, size in zip(tensors, rows, chunks):
        out.append(torch.cat([r[start : start + size].view(n, *t.shape[1:]) for r in received])[: t.shape[0]])
        start += size
    return out


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
