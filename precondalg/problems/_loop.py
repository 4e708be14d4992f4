"""Pieces the training loops of `precondalg.problems` share: what a run returns (`TrainResult`), whether an
optimizer is APO's proximal row (it then takes ``step(batch=…, fsd_batch=…)``), and the count of the
optimizer's skipped-step warnings."""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator

import torch

__all__ = ["SkipCount", "TrainResult", "counting_skips", "is_proximal"]


def is_proximal(opt: torch.optim.Optimizer) -> bool:
    """Whether `opt` fits its preconditioner to APO's proximal objective (Bae et al. 2022, Eq. 8):
    then a meta-update step needs ``opt.step(batch=(inputs, targets), fsd_batch=inputs′)``."""
    from precondalg.objectives import Proximal

    return isinstance(getattr(opt, "objective", None), Proximal)


class SkipCount:
    """The number of `precondalg.optim.SkippedStepWarning` warnings seen (`counting_skips`)."""

    def __init__(self) -> None:
        self.value = 0


@contextlib.contextmanager
def counting_skips() -> Iterator[SkipCount]:
    """Count the optimizer's `SkippedStepWarning` warnings inside the block (their ``value`` is set on
    exit) and pass every other warning on, so that a loop can report its skipped steps without hiding
    anything else."""
    from precondalg.optim import SkippedStepWarning

    count = SkipCount()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SkippedStepWarning)
        yield count
    count.value = sum(issubclass(w.category, SkippedStepWarning) for w in caught)
    for w in caught:
        if not issubclass(w.category, SkippedStepWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


@dataclasses.dataclass
class TrainResult:
    """What `train` returns.

    Attributes:
        losses: J on the whole sample before each step (losses[t] before step t + 1), as far as the run
            went; ``losses[-1]`` is the loss before the last step taken.
        final: J after the last step; inf where the run diverged.
        diverged_at: the step (1-based) whose loss was non-finite or above the divergence bound; None.
        seconds: wall time of the loop (model and optimizer construction excluded).
        skipped: the number of `precondalg.optim.SkippedStepWarning` warnings the optimizer issued.
    """

    losses: list[float]
    final: float
    diverged_at: int | None
    seconds: float
    skipped: int
