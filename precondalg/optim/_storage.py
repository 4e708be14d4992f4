"""Narrow storage of the preconditioner (``precond_dtype=torch.bfloat16``): φ's leaves and the fitter's
state are kept in bfloat16 between steps and widened to the compute dtype for a step's arithmetic.

A fit's new values are rounded back stochastically (Gupta et al. 2015, "Deep learning with limited
numerical precision", §3): x goes to one of its two bfloat16 neighbours with probabilities that make the
rounding unbiased, E[round(x)] = x, so that a meta-step smaller than bfloat16's spacing (2⁻⁸ relative)
moves φ in expectation instead of being lost, as it is under rounding to nearest.
"""

from __future__ import annotations

import torch

__all__ = ["PRECOND_DTYPES", "ROUNDINGS", "Widened", "round_to", "stored_tensors"]

PRECOND_DTYPES = (torch.bfloat16,)
ROUNDINGS = ("stochastic", "nearest")

_LOW_BITS = 1 << 16
"""float32's mantissa bits that bfloat16 drops: 2¹⁶ values."""
_HIGH_MASK = -_LOW_BITS
"""0xFFFF0000 as an int32: float32's sign, exponent and bfloat16's 7 mantissa bits."""
_SPREAD = 25173
"""An odd multiplier below 2¹⁵: i ↦ 25173·i mod 2¹⁶ permutes 0 … 2¹⁶ − 1 (and stays within int32)."""


def round_to(t: torch.Tensor, dtype: torch.dtype, generator: torch.Generator | None = None) -> torch.Tensor:
    """`t` rounded to `dtype` (bfloat16): to nearest, or stochastically with `generator`.

    Stochastic rounding adds an integer noise in [0, 2¹⁶) to float32's bit pattern and drops the low 16
    bits: the magnitude rounds up with probability (its distance to the lower neighbour) / spacing, for
    either sign, when the noise is uniform.  The noise of entry i is (25173·i + s) mod 2¹⁶ with one offset
    s drawn from `generator` (a CPU generator: no device draw, no synchronisation) per call: over the
    draws every entry's noise is exactly uniform, so every entry's rounding is unbiased; within one call
    the entries' noises are spread over [0, 2¹⁶) (a low-discrepancy dither) instead of independent, at a
    few integer passes instead of a random number per entry (on the CPU a random int32 per entry took
    about half of the rounding's time).  A float64 `t` is first rounded to nearest float32 (an error 2¹⁶
    times below bfloat16's spacing).  NaN and ±Inf are rounded to nearest (they stay what they are).

    Args:
        t: a floating tensor, any shape.
        dtype: torch.bfloat16.
        generator: a CPU generator for the offsets; None rounds to nearest.

    Returns:
        A new tensor of t's shape in `dtype`.
    """
    if generator is None:
        return t.to(dtype)
    x = t.to(torch.float32)
    offset = int(torch.randint(0, _LOW_BITS, (), generator=generator))
    noise = torch.arange(x.numel(), dtype=torch.int32, device=x.device).view(x.shape)
    noise = noise.bitwise_and_(_LOW_BITS - 1).mul_(_SPREAD).add_(offset).bitwise_and_(_LOW_BITS - 1)
    up = (x.view(torch.int32) + noise).bitwise_and_(_HIGH_MASK).view(torch.float32)
    return torch.where(torch.isfinite(x), up, x).to(dtype)


class Widened:
    """A block's stored tensors widened for one step, and narrowed back after it.

    The tensors keep their identity: their ``.data`` is swapped, so every structure and optimizer holding
    them follows; the narrow storage is let go for the step (its peak holds the wide copies only, as
    without ``precond_dtype``).  A tensor the step did not write (its version counter and storage are
    those of its widening) is rounded to nearest, which gives back its stored values exactly and draws
    nothing: φ on a step that does not fit, the roots between a closed form's refits.

    Args:
        tensors: the block's stored tensors (`stored_tensors`).
        compute: the dtype of the step's arithmetic.
    """

    def __init__(self, tensors: list[torch.Tensor], compute: torch.dtype) -> None:
        for t in tensors:
            t.data = t.data.to(compute)
        self.marks = {id(t): _mark(t) for t in tensors}

    def narrow(
        self, tensors: list[torch.Tensor], dtype: torch.dtype, generator: torch.Generator | None
    ) -> None:
        """Store `tensors` (the block's, after the step; a fit may have created some) in `dtype` again:
        those the step wrote rounded with `generator` (`round_to`), the others to nearest."""
        for t in tensors:
            written = self.marks.get(id(t)) != _mark(t)
            t.data = round_to(t.data, dtype, generator if written else None)


def _mark(t: torch.Tensor) -> tuple[int, int]:
    """What changes when a tensor is written: its version counter (every in-place operation, compiled
    ones included, counts) and its storage (`precondalg.fitters.replace` swaps it in)."""
    return t._version, t.data_ptr()


def stored_tensors(leaves: list[torch.Tensor], state: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors of a block that narrow storage keeps in the storage dtype: φ's leaves and the
    fitter's floating state, those with at least one dimension."""
    return [t for t in (*leaves, *state) if t.ndim > 0 and t.is_floating_point()]
