"""Skipped steps are never silent: the optimizer's skip counters, read back from the device, and the
warning they raise (used by `precondalg.optim.Preconditioned`)."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import torch

__all__ = ["WARN_EVERY", "SkipWatch", "SkippedStepWarning", "blocks_text", "callers_level"]

WARN_EVERY = 100
"""Steps between two `SkippedStepWarning`s while skips continue (the first skip warns at once)."""


class SkippedStepWarning(RuntimeWarning):
    """Steps were skipped because of NaN or Inf (``nonfinite="skip"``); the message gives the counts."""


_LIBRARIES = (os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(torch.__file__))


def callers_level() -> int:
    """The `warnings.warn` stacklevel of the first frame outside precondalg and torch (the user's call
    of ``step``), seen from the function that calls this one."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename.startswith(_LIBRARIES):
        frame, level = frame.f_back, level + 1
    return level


def blocks_text(blocks: list[list[tuple[int, ...]]], at_most: int = 4) -> str:
    """Blocks named by their parameters' shapes, e.g. "(4, 5); (3,)" ("(4, 5), (3,)" for one block of
    two parameters), the first `at_most` of them."""
    names = [", ".join(str(s) for s in shapes) for shapes in blocks]
    names = [f"({name})" if len(shapes) > 1 else name for name, shapes in zip(names, blocks)]
    return "; ".join(names[:at_most]) + (f"; … ({len(names)} blocks)" if len(names) > at_most else "")


class SkipWatch:
    """Reads the blocks' skip counters back from the device after each step and warns with the counts:
    after the first skip, then at most every `WARN_EVERY` steps while skips continue.  The counters are
    read at once on the CPU; on a GPU through a non-blocking copy read one step later (no host
    synchronisation in the step)."""

    def __init__(self, name: str = "Preconditioned") -> None:
        self.name = name  # the optimizer's (a preset's) name, for the warning
        self.steps = 0
        self.warned_at: tuple[int, int, int] | None = None  # (step, skipped, meta-skipped) at the warning
        self.pending: tuple[torch.Tensor, Any, int] | None = None

    def reset(self, counters: torch.Tensor, blocks: int) -> None:
        """After loading a checkpoint: its counts are old news."""
        values = counters.tolist()
        self.warned_at = (self.steps, sum(values[:blocks]), sum(values[blocks:]))
        self.pending = None

    def record(
        self,
        counters: torch.Tensor,
        blocks: list[list[tuple[int, ...]]],
        learned: list[list[tuple[int, ...]]],
    ) -> None:
        """Counters: every block's ``skipped``, then every preconditioned block's ``meta_skipped``;
        `blocks` and `learned`: those blocks' parameter shapes."""
        self.steps += 1
        if counters.device.type == "cpu":
            self._check(counters.tolist(), self.steps, blocks, learned)
            return
        if self.pending is not None and self.pending[1].query():
            host, _, step = self.pending
            self._check(host.tolist(), step, blocks, learned)
            self.pending = None
        if self.pending is None:
            host = torch.empty(counters.shape, dtype=counters.dtype, pin_memory=True)
            host.copy_(counters, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self.pending = (host, event, self.steps)

    def _check(
        self,
        values: list[int],
        step: int,
        blocks: list[list[tuple[int, ...]]],
        learned: list[list[tuple[int, ...]]],
    ) -> None:
        skips, metas = values[: len(blocks)], values[len(blocks) :]
        skipped, meta = sum(skips), sum(metas)
        last_step, last_skipped, last_meta = self.warned_at or (0, 0, 0)
        new = (skipped - last_skipped) + (meta - last_meta)
        if new <= 0 or (self.warned_at is not None and step - last_step < WARN_EVERY):
            return
        parts = []
        if skipped:
            hit = [shapes for shapes, k in zip(blocks, skips) if k > 0]
            parts.append(
                f"{skipped} block updates were skipped on {len(hit)} of {len(blocks)} blocks (parameters of "
                f"shapes {blocks_text(hit)})"
            )
        if meta:
            hit = [shapes for shapes, k in zip(learned, metas) if k > 0]
            parts.append(f"{meta} preconditioner fits were rolled back (blocks of shapes {blocks_text(hit)})")
        since = "" if self.warned_at is None else f" ({new} since step {last_step})"
        warnings.warn(
            f"{self.name}: after {step} steps, {' and '.join(parts)}{since}, because a gradient, a new "
            "parameter or the preconditioner held NaN or Inf; a skipped update changes nothing. Pass "
            "nonfinite='raise' to stop at the first one. This warning repeats at most every "
            f"{WARN_EVERY} steps while skips continue.",
            SkippedStepWarning,
            stacklevel=callers_level(),
        )
        self.warned_at = (step, skipped, meta)
