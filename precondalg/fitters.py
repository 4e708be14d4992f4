"""Fitters (layer 4): how a learned structure's leaves move, given the objective's gradient.

`TorchOptimizer` wraps any `torch.optim` class over φ's leaves: Adam for FOP (lr 1e-4, METHODS.md
§1.2), LODO and APO; plain SGD for Baydin's hypergradient descent (§1.9).  The leaves live in the
optimizer's state, so a checkpoint holds them together with the wrapped optimizer's own state.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

__all__ = ["TorchOptimizer"]


@dataclasses.dataclass(frozen=True, init=False)
class TorchOptimizer:
    """Fit φ's leaves with a torch.optim optimizer.

    Args:
        cls: a `torch.optim.Optimizer` subclass, e.g. `torch.optim.Adam`.
        **kwargs: its hyperparameters, e.g. ``lr=1e-4``.

    Example:
        >>> TorchOptimizer(torch.optim.Adam, lr=1e-4).build([torch.zeros(2)]).defaults["lr"]
        0.0001
    """

    cls: type[torch.optim.Optimizer]
    kwargs: dict[str, Any]

    def __init__(self, cls: type[torch.optim.Optimizer], **kwargs: Any) -> None:
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            raise TypeError(f"TorchOptimizer: 'cls' must be a torch.optim.Optimizer class; got {cls!r}")
        object.__setattr__(self, "cls", cls)
        object.__setattr__(self, "kwargs", dict(kwargs))
        cls([torch.zeros(1)], **kwargs)  # validates the hyperparameters now, with the class's own errors

    def build(self, leaves: list[torch.Tensor]) -> torch.optim.Optimizer:
        """A fresh optimizer over these leaf tensors."""
        return self.cls(leaves, **self.kwargs)

    def step(
        self, optimizer: torch.optim.Optimizer, leaves: list[torch.Tensor], grads: list[torch.Tensor]
    ) -> None:
        """One step of `optimizer` (built on `leaves`) with these gradients; updates the leaves in place."""
        for leaf, g in zip(leaves, grads):
            leaf.grad = g
        optimizer.step()
        for leaf in leaves:
            leaf.grad = None
