"""The hypergradient objective: the next-step loss as a function of the structure that made the step.

FOP (METHODS.md §1.2, Eq. 4), hypergradient descent (§1.9) and LODO (§3.3).  A step moves the
parameters by θ_t = θ_{t−1} − α P_φ u_{t−1} + (terms free of φ), where u_{t−1} is the vector P was
applied to (the placed gradient, or the base rule's direction).  Then

    ∂L(θ_t)/∂φ = VJP of φ ↦ P_φ u_{t−1}, with cotangent −α g_t,

computed with `torch.func.vjp` from the cached u_{t−1} and the new gradient g_t: no extra forward or
backward pass (the online, one-step-delayed form of Almeida et al. and Baydin et al.).  For FOP with
P = MᵀM this is −α M(g_{t−1}g_tᵀ + g_t g_{t−1}ᵀ) (THEORY.md FOP-3); for a scalar learning rate it is
−α⟨g_t, u_{t−1}⟩ (Baydin's h).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch.func import vjp

from precondalg.structures import Structure

__all__ = ["BlockContext", "Hypergradient", "Objective"]


@dataclasses.dataclass(frozen=True)
class BlockContext:
    """What an objective sees of one block at one step.

    Attributes:
        phi: the current learned structure φ.
        form: φ ↦ P_φ.
        grad: (n, k) the block's current gradient g_t in the placement's space.
        cache: what the previous step left (``u``: (n, k) the vector P was applied to; ``lr``: the
            learning rate α it was applied with); empty on the first step.
    """

    phi: Structure
    form: Callable[[Structure], Structure]
    grad: torch.Tensor
    cache: dict[str, Any]


class Objective(abc.ABC):
    """Abstract base of meta-objectives."""

    @abc.abstractmethod
    def meta_grad(self, ctx: BlockContext) -> Structure | None:
        """The gradient of the meta-loss with respect to φ (same pytree type), or None."""


@dataclasses.dataclass(frozen=True)
class Hypergradient(Objective):
    """Online one-step hypergradient (FOP Eqs. 3–4, HD, LODO): needs only the cached u_{t−1} and g_t."""

    def meta_grad(self, ctx: BlockContext) -> Structure | None:
        if "u" not in ctx.cache:
            return None
        u, lr = ctx.cache["u"], ctx.cache["lr"]
        _, pullback = vjp(lambda phi: ctx.form(phi) @ u, ctx.phi)
        (grad,) = pullback(-lr * ctx.grad)
        return grad
