"""APO's proximal meta-objective (Bae et al. 2022, Eq. 8).

With the one-step lookahead θ′(φ) = θ − P_φ u (Eq. 7: no learning rate and no 0.9 inside;
u is the block's placed gradient, or the base rule's direction with the optimizer state held fixed,
footnote 1), the meta-loss of all preconditioned blocks together is

    Q(φ) = J_B(θ′) + λ_FSD · (1/|B′|) Σ_{x̃∈B′} ρ(f(x̃, θ′), f(x̃, θ)) + (λ_WSD/2) ‖θ′ − θ‖²,

the loss term on the SAME batch B as the gradient (a different batch makes the learning rate collapse,
App. D), the function-space discrepancy (FSD) on a separate batch B′, f(x̃, θ) a constant target.
ρ is KL(softmax f(x̃,θ) ‖ softmax f(x̃,θ′)) for classifiers, ½‖f(x̃,θ′) − f(x̃,θ)‖² for
regression, or a user function.  ∇_φ Q is taken by `torch.func.grad` through
`torch.func.functional_call` on the user's module: one forward on B and two on B′ plus one backward.
Parameters outside the optimizer's preconditioned blocks stay at θ in the lookahead.

FSDP2's sharded modules put the parameters they gather in place of a functional call's, so for sharded
parameters the lookahead is taken in place instead: θ ← θ′, one backward of the loss and the FSD term
(FSDP2 gathers and reduce-scatters as in training), θ and its gradients restored, and ∇_φ Q by the chain
rule, the VJP of φ ↦ P_φ u with the cotangent −∇_θ(J_B + λ_FSD ρ)(θ′) + λ_WSD P_φ u — the same gradient.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.func import grad

from precondalg._checks import check_number
from precondalg._tensors import is_sharded
from precondalg.objectives.base import (
    BlockContext,
    Evaluation,
    Objective,
    closure_evaluation,
    form_vjp,
    functional_outputs,
    kept_buffers,
    lookahead_gradients,
    parameter_names,
)
from precondalg.structures import Structure

__all__ = ["Proximal", "kl_divergence", "squared_error"]

Divergence = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def kl_divergence(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """(1/|B′|) Σ KL(softmax(old) ‖ softmax(new)) over the batch (rows) of logits."""
    return F.kl_div(
        F.log_softmax(new, dim=-1), F.log_softmax(old, dim=-1), log_target=True, reduction="batchmean"
    )


def squared_error(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """(1/|B′|) Σ ½‖new − old‖² over the batch (rows) of outputs."""
    return 0.5 * (new - old).square().sum() / new.shape[0]


_DIVERGENCES: dict[str, Divergence] = {"kl": kl_divergence, "squared": squared_error}


def _check_inputs(inputs: dict[str, Any]) -> None:
    unknown = set(inputs) - {"batch", "fsd_batch"}
    if unknown:
        raise TypeError(f"Proximal: step() takes 'batch' and 'fsd_batch'; got {sorted(unknown)}")
    batch, fsd_batch = inputs.get("batch"), inputs.get("fsd_batch")
    if batch is not None and not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        length = f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""
        got = f"a {type(batch).__name__}{length}"
        raise TypeError(f"Proximal: 'batch' must be the pair (inputs, targets) of B; got {got}")
    if isinstance(fsd_batch, (tuple, list)):
        raise TypeError(
            f"Proximal: 'fsd_batch' is the inputs x̃ of B′ (the model is called as model(fsd_batch)); got a "
            f"{type(fsd_batch).__name__} of length {len(fsd_batch)}: pass its inputs, e.g. "
            "next(fsd_batches(loader))"
        )


@dataclasses.dataclass(frozen=True, eq=False)
class Proximal(Objective):
    """APO's proximal meta-objective (Eq. 8).

    Per step, ``optimizer.step(batch=(inputs, targets), fsd_batch=inputs′)`` after the usual backward
    on the same batch: a step that fits φ needs ``batch`` (a ValueError otherwise); to meta-update every
    K steps (Algorithm 1) give the optimizer ``update_probability=every(K)``, whose steps in between
    need neither.  The closure is optional; it may call ``backward`` and return the loss
    (torch.optim's convention) or only return the loss (PSGD's): the optimizer then sets the gradients.

    Attributes:
        model: the module whose parameters the optimizer updates.
        loss_fn: ``loss_fn(outputs, targets) -> scalar`` (the training loss J_B).
        fsd: "kl", "squared" or a function ``ρ(new_outputs, old_outputs) -> scalar`` (batch mean).
        lam_fsd: λ_FSD ≥ 0.
        lam_wsd: λ_WSD ≥ 0.

    Raises:
        ValueError: an unknown fsd name or a negative λ; at construction, parameters the model does not
            own; at a step that fits, a missing ``batch``, or a missing ``fsd_batch`` when λ_FSD > 0.
    """

    reads_cache: ClassVar[bool] = False
    """Q is evaluated at this step's lookahead alone: the optimizer keeps no copy of the last u."""

    model: torch.nn.Module
    loss_fn: Callable[[Any, Any], torch.Tensor]
    fsd: str | Divergence = "kl"
    lam_fsd: float = 0.0
    lam_wsd: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.fsd, str) and self.fsd not in _DIVERGENCES:
            raise ValueError(
                f"Proximal: 'fsd' must be one of {tuple(_DIVERGENCES)} or a callable; got {self.fsd!r}"
            )
        for name in ("lam_fsd", "lam_wsd"):
            check_number("Proximal", name, getattr(self, name), 0.0)

    def evaluate(
        self,
        params: list[torch.Tensor],
        closure: Callable[[], Any] | None,
        generator: torch.Generator,
        **inputs: Any,
    ) -> Evaluation:
        self.check_inputs(inputs)
        if inputs.get("batch") is None:
            raise ValueError(
                "Proximal: this step fits the preconditioner, which needs step(batch=(inputs, targets), "
                "fsd_batch=inputs′) with B the batch of the gradient"
            )
        if self.lam_fsd > 0 and inputs.get("fsd_batch") is None:
            raise ValueError("Proximal: λ_FSD > 0 needs step(..., fsd_batch=inputs′), a batch other than B")
        return closure_evaluation(closure, params, "Proximal", data=inputs)

    def check_inputs(self, inputs: dict[str, Any]) -> None:
        """``batch`` (the pair (inputs, targets) of B) and ``fsd_batch`` (the inputs of B′), on every
        step; anything else, a misshapen batch, or a (inputs, targets) pair as ``fsd_batch`` is refused."""
        _check_inputs(inputs)

    def check_block(self, params: Sequence[torch.Tensor], placement: Any) -> None:
        """Refuse, at construction, parameters `model` does not own: the lookahead evaluates `model`."""
        parameter_names(self.model, list(params), "Proximal")

    def local_answers(self) -> bool:
        """The lookahead's loss is this rank's batch's: a data-parallel optimizer averages the
        meta-gradients (the loss and the divergence are batch means)."""
        return True

    def meta_grads(self, blocks: list[BlockContext], evaluation: Evaluation) -> list[Structure | None]:
        if any(is_sharded(p) for ctx in blocks for p in ctx.params):
            return self._meta_grads_in_place(blocks, evaluation)
        names = parameter_names(self.model, [p for b in blocks for p in b.params], "Proximal")
        theta = {name: p.detach() for p, name in names.items()}
        fsd_inputs = evaluation.data.get("fsd_batch")
        old = functional_outputs(self.model, theta, fsd_inputs).detach() if self.lam_fsd > 0 else None

        def meta_loss(phis: list[Structure]) -> torch.Tensor:
            moved = dict(theta)
            wsd = 0.0
            for ctx, phi in zip(blocks, phis):
                for p, step in zip(ctx.params, ctx.unview(ctx.form(phi) @ ctx.lookahead)):
                    moved[names[p]] = theta[names[p]] - step.to(p.dtype)
                    wsd = wsd + step.square().sum()
            loss = self._lookahead_loss(lambda x: functional_outputs(self.model, moved, x), evaluation, old)
            return loss + 0.5 * self.lam_wsd * wsd

        return grad(meta_loss)([ctx.phi for ctx in blocks])

    def _lookahead_loss(
        self, outputs: Callable[[Any], torch.Tensor], evaluation: Evaluation, old: torch.Tensor | None
    ) -> torch.Tensor:
        """J_B(θ′) + λ_FSD ρ(f(B′, θ′), f(B′, θ)), with `outputs` the model's outputs at θ′ and `old`
        f(B′, θ) (None when λ_FSD = 0)."""
        (inputs, targets), fsd_inputs = evaluation.data["batch"], evaluation.data.get("fsd_batch")
        rho = _DIVERGENCES[self.fsd] if isinstance(self.fsd, str) else self.fsd
        loss = self.loss_fn(outputs(inputs), targets)
        if self.lam_fsd > 0:
            loss = loss + self.lam_fsd * rho(outputs(fsd_inputs), old)
        return loss

    def _meta_grads_in_place(self, blocks: list[BlockContext], evaluation: Evaluation) -> list[Structure]:
        """∇_φ Q with the lookahead taken in place on the model (FSDP2's sharded parameters; see the
        module docstring); θ, its gradients and the model's buffers come back exactly."""
        fsd_inputs = evaluation.data.get("fsd_batch")
        with kept_buffers(self.model), torch.no_grad():
            old = self.model(fsd_inputs).detach() if self.lam_fsd > 0 else None

        def closure() -> torch.Tensor:
            loss = self._lookahead_loss(self.model, evaluation, old)
            loss.backward()
            return loss

        slopes = lookahead_gradients(blocks, closure, "Proximal", [1.0] * len(blocks), self.model)
        return [
            form_vjp(ctx, ctx.lookahead, self.lam_wsd * (ctx.form(ctx.phi) @ ctx.lookahead) - slope)
            for ctx, slope in zip(blocks, slopes)
        ]
