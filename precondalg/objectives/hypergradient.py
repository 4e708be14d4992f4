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

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch.func import vjp

from precondalg.objectives.base import (
    BlockContext,
    BlockwiseObjective,
    Evaluation,
    reject_inputs,
    run_closure,
)
from precondalg.structures import Structure

__all__ = ["Hypergradient"]


@dataclasses.dataclass(frozen=True)
class Hypergradient(BlockwiseObjective):
    """Online one-step hypergradient (FOP Eqs. 3–4, HD, LODO): needs only the cached u_{t−1} and g_t.

    A closure is optional (the torch.optim convention: it calls backward and returns the loss).
    """

    def evaluate(
        self,
        params: list[torch.Tensor],
        closure: Callable[[], Any] | None,
        generator: torch.Generator,
        **inputs: Any,
    ) -> Evaluation:
        reject_inputs("Hypergradient", inputs)
        return Evaluation(run_closure(closure))

    def meta_grad(self, ctx: BlockContext) -> Structure | None:
        if "u" not in ctx.cache:
            return None
        u, lr = ctx.cache["u"], ctx.cache["lr"]
        _, pullback = vjp(lambda phi: ctx.form(phi) @ u, ctx.phi)
        (grad,) = pullback(-lr * ctx.grad)
        return grad
