"""Work-arounds for torch behaviours the engine must not inherit (not part of the public API)."""

from __future__ import annotations

import torch

__all__ = ["writable"]


def writable(t: torch.Tensor) -> torch.Tensor:
    """`t`, or for a 0-d `t` a 1-element view of it: the tensor to update `t` in place through.

    torch.compile (torch 2.13, CPU) drops in-place updates of a 0-d float64 tensor that the compiled
    function reads from outside and that is not a parameter (optimizer state: HD's learned rate) — the
    value silently stays as it was — while updates through a 1-d view of it are kept
    (tests/test_compile.py pins it: the HD presets compiled against eager).
    """
    return t.view(1) if t.ndim == 0 else t
