"""The hypergradient objective: the next-step loss as a function of the structure that made the step.

FOP (Moskovitz et al. 2019, Eq. 4), hypergradient descent (Baydin et al. 2018) and LODO (Liao et al.
2023).  A step moves the
parameters by θ_t = θ_{t−1} − α P_φ u_{t−1} + (terms free of φ), where u_{t−1} is the vector P was
applied to (the placed gradient, or the base rule's direction).  Then

    ∂L(θ_t)/∂φ = VJP of φ ↦ P_φ u_{t−1}, with cotangent −α g_t,

computed with `torch.func.vjp` from the cached u_{t−1} and the new gradient g_t: no extra forward or
backward pass (the online, one-step-delayed form of Almeida et al. and Baydin et al.).  For FOP with
P = MᵀM this is −α M(g_{t−1}g_tᵀ + g_t g_{t−1}ᵀ) (theory check FOP-3); for a scalar learning rate it is
−α⟨g_t, u_{t−1}⟩ (Baydin's h).

With ``mode="unroll"`` the meta-gradient is instead the exact derivative of the current batch's loss
after this step's update, d/dφ L_B(θ − α P_φ u_t): the optimizer's parameters are moved to the
lookahead, the closure (torch.optim's convention) is evaluated there once more, and the VJP takes the
lookahead gradient as cotangent.  It is exact for the base rule "sgd"; with momentum or Adam it
differentiates the P-dependent part of the step (the base rule's own transformation is not unrolled).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from precondalg._checks import check_choice
from precondalg.objectives.base import (
    BlockContext,
    Evaluation,
    Objective,
    closure_evaluation,
    form_vjp,
    lookahead_gradients,
)
from precondalg.structures import Structure

__all__ = ["Hypergradient"]


_MODES = ("online", "unroll")


@dataclasses.dataclass(frozen=True)
class Hypergradient(Objective):
    """One-step hypergradient (FOP Eqs. 3–4, HD, LODO).

    Attributes:
        mode: "online" (default: the cached u_{t−1} and g_t, no extra pass; a closure is optional) or
            "unroll" (the exact one-step unroll on the current batch; needs a closure, evaluated once
            more at the lookahead).  A closure may call ``backward`` and return the loss (torch.optim's
            convention) or only return the loss (PSGD's); the optimizer then sets the gradients.

    Raises:
        ValueError: unknown mode; at step time, "unroll" without a closure.
    """

    mode: str = "online"

    def __post_init__(self) -> None:
        check_choice("Hypergradient", "mode", self.mode, _MODES)

    def evaluate(
        self,
        params: list[torch.Tensor],
        closure: Callable[[], Any] | None,
        generator: torch.Generator,
        **inputs: Any,
    ) -> Evaluation:
        self.check_inputs(inputs)
        if self.mode == "unroll" and closure is None:
            raise ValueError(
                "Hypergradient(mode='unroll'): step() needs a closure (it is evaluated again at "
                "the lookahead θ − αP_φu); got none"
            )
        return closure_evaluation(closure, params, "Hypergradient", data={"closure": closure})

    def local_answers(self) -> bool:
        """"unroll" evaluates the closure at the lookahead (its gradients are this rank's unless its
        backward is synchronised): a data-parallel optimizer averages the hypergradients; "online" reads
        the synchronised gradients only."""
        return self.mode == "unroll"

    def meta_grads(self, blocks: list[BlockContext], evaluation: Evaluation) -> list[Structure | None]:
        if self.mode == "online":
            return [self.meta_grad(ctx) for ctx in blocks]
        closure, rates = evaluation.data["closure"], [ctx.lr for ctx in blocks]
        cotangents = lookahead_gradients(blocks, closure, "Hypergradient(mode='unroll')", rates)
        return [form_vjp(ctx, ctx.lookahead, -ctx.lr * ct) for ctx, ct in zip(blocks, cotangents)]

    def meta_grad(self, ctx: BlockContext) -> Structure | None:
        """The online hypergradient of one block (None on its first step, before a cached u exists)."""
        if "u" not in ctx.cache:
            return None
        return form_vjp(ctx, ctx.cache["u"], -ctx.cache["lr"] * ctx.grad)
