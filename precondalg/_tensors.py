"""Tensor checks shared by the engine and the fitters (not part of the public API)."""

from __future__ import annotations

import torch

__all__ = ["all_finite", "finite_each"]


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
