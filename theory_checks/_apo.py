"""Pieces shared by the APO checks (`apo_proximal`, `apo_optimum`, `apo_kfac`, `apo_horizon`): the losses
their test models use, the `Proximal` objective as they build it, the mutant objectives that several of
them plant (realistic bugs of the library's APO meta-objective, Bae 2022 Eq. 8), and a NaN-keeping max.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch

from precondalg.objectives import BlockContext, Evaluation, Objective, Proximal

__all__ = [
    "LossFn",
    "Recorder",
    "ObjectiveOf",
    "fsd_on_training_batch",
    "loss_at_theta",
    "proximal",
    "squared_loss",
    "squared_without_half",
    "worst",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ObjectiveOf = Callable[[torch.nn.Module, LossFn, float, float], Objective]
"""(model, loss_fn, λ_F, λ_W) ↦ the meta-objective (`Proximal` with the squared-error FSD)."""


def squared_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """½‖f − y‖² summed over the output entries, averaged over the batch rows (MSE up to ½; the
    negative log-likelihood of N(f, I) up to a constant)."""
    return 0.5 * (outputs - targets).square().sum() / outputs.shape[0]


def squared_without_half(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Mutant FSD: (1/|B′|) Σ ‖new − old‖², the library's squared error without its ½."""
    return (new - old).square().sum() / new.shape[0]


def worst(values: Sequence[float]) -> float:
    """The largest value, NaN if any is NaN (Python's max would pass over it)."""
    return float(torch.tensor(values, dtype=torch.float64).max())


def proximal(model: torch.nn.Module, loss_fn: LossFn, lam_fsd: float, lam_wsd: float) -> Objective:
    """precondalg's `Proximal` (Eq. 8) with the squared-error FSD ½‖Δf‖²/|B′|."""
    return Proximal(model, loss_fn, fsd="squared", lam_fsd=lam_fsd, lam_wsd=lam_wsd)


@dataclasses.dataclass(frozen=True, eq=False)
class WsdWithoutHalf(Proximal):
    """Mutant library objective: the WSD term λ_W‖θ′ − θ‖² without its ½ (the library's Q with λ_W
    doubled in the WSD term only)."""

    def meta_grads(self, blocks: list[BlockContext], evaluation: Evaluation) -> list[Any]:
        return Proximal.meta_grads(dataclasses.replace(self, lam_wsd=2 * self.lam_wsd), blocks, evaluation)


@dataclasses.dataclass(frozen=True, eq=False)
class _LossAtTheta(Proximal):
    """Mutant library objective: the loss term J_B evaluated at θ, a constant of φ, instead of at the
    lookahead u (only the FSD and WSD terms move φ)."""

    def meta_grads(self, blocks: list[BlockContext], evaluation: Evaluation) -> list[Any]:
        inputs, targets = evaluation.data["batch"]
        at_theta = self.loss_fn(self.model(inputs), targets).detach()
        frozen = dataclasses.replace(self, loss_fn=lambda outputs, targets: at_theta)
        return Proximal.meta_grads(frozen, blocks, evaluation)


def loss_at_theta(model: torch.nn.Module, loss_fn: LossFn, lam_fsd: float, lam_wsd: float) -> Objective:
    """Mutant: `proximal` with the loss term at θ instead of the lookahead."""
    return _LossAtTheta(model, loss_fn, fsd="squared", lam_fsd=lam_fsd, lam_wsd=lam_wsd)


@dataclasses.dataclass(frozen=True, eq=False)
class _FsdOnTrainingBatch(Proximal):
    """Mutant library objective: ``fsd_batch`` ignored, the FSD term on the training batch B's inputs."""

    def meta_grads(self, blocks: list[BlockContext], evaluation: Evaluation) -> list[Any]:
        data = {**evaluation.data, "fsd_batch": evaluation.data["batch"][0]}
        return super().meta_grads(blocks, dataclasses.replace(evaluation, data=data))


def fsd_on_training_batch(
    model: torch.nn.Module, loss_fn: LossFn, lam_fsd: float, lam_wsd: float
) -> Objective:
    """Mutant: `proximal` with the FSD term on B instead of B′."""
    return _FsdOnTrainingBatch(model, loss_fn, fsd="squared", lam_fsd=lam_fsd, lam_wsd=lam_wsd)


@dataclasses.dataclass(frozen=True, eq=False)
class Recorder(Objective):
    """Passes every call to `inner` (a `Proximal`) and keeps the last (blocks, evaluation) that the
    optimizer handed to ``meta_grads``: the block contexts hold φ, the placed gradient and the lookahead
    vector P was applied to.  The optimizer sees the wrapper exactly as `inner`: its class flags
    (`Objective.reads_cache`, `requires`, …) are `inner`'s."""

    inner: Objective
    seen: list = dataclasses.field(default_factory=list)

    def __getattribute__(self, name: str) -> Any:
        if name in _FLAGS:
            return getattr(object.__getattribute__(self, "inner"), name)
        return object.__getattribute__(self, name)

    def evaluate(self, params, closure, generator, **inputs) -> Evaluation:
        return self.inner.evaluate(params, closure, generator, **inputs)

    def evaluate_gradients(self, params, closure, generator, **inputs) -> Evaluation:
        return self.inner.evaluate_gradients(params, closure, generator, **inputs)

    def meta_grads(self, blocks: list[BlockContext], evaluation: Evaluation) -> list:
        self.seen[:] = [(blocks, evaluation)]
        return self.inner.meta_grads(blocks, evaluation)


_FLAGS = frozenset(vars(Objective)["__annotations__"])
"""`Objective`'s class flags (`requires`, `reads_cache`, `gives_statistics`, …), read from `inner`."""
