"""The objective interface: what an objective sees of a step and of each block."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from precondalg.structures import Structure

__all__ = ["BlockContext", "Objective"]


@dataclasses.dataclass(frozen=True)
class BlockContext:
    """What an objective sees of one block at one step.

    Attributes:
        phi: the current learned structure φ.
        form: the map φ ↦ P_φ the objective differentiates.
        grad: (n, k) the block's current gradient g_t in the placement's space.
        cache: what the previous step left (``u``: (n, k) the vector P was applied to; ``lr``: the
            learning rate α it was applied with); empty on the first step.
        extras: per-step quantities the objective's `evaluate` produced, placed like `grad` (e.g.
            ``v`` and ``h`` for the PSGD criteria).
    """

    phi: Structure
    form: Callable[[Structure], Structure]
    grad: torch.Tensor
    cache: dict[str, Any]
    extras: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


class Objective(abc.ABC):
    """Abstract base of meta-objectives.

    Once per step the optimizer calls `evaluate` (which may run the closure and must leave every
    parameter's ``.grad`` set), then `meta_grad` for every block.
    """

    @abc.abstractmethod
    def evaluate(
        self,
        params: list[torch.Tensor],
        closure: Callable[[], Any] | None,
        generator: torch.Generator,
    ) -> tuple[Any, dict[str, list[torch.Tensor]]]:
        """Run what the step needs before the blocks.

        Args:
            params: every parameter of the optimizer, in order.
            closure: the closure given to ``step`` (or None).
            generator: the optimizer's own random generator (its state is checkpointed).

        Returns:
            The loss (or None) and extras: name → one tensor per parameter (same shapes).
        """

    @abc.abstractmethod
    def meta_grad(self, ctx: BlockContext) -> Structure | None:
        """The gradient of the meta-loss with respect to φ (same pytree type), or None."""


def run_closure(closure: Callable[[], Any] | None) -> Any:
    """The torch.optim convention: the closure re-evaluates the model, calls backward, returns the loss."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()
