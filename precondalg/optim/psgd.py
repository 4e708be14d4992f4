"""`PSGD`: preconditioned SGD with Q fitted on a matrix Lie group (Li 2019) as a preset of `Preconditioned`.

| preconditioner | Q (P = QᵀQ) | placement | group |
| --- | --- | --- | --- |
| "dense" | one dense Q over all parameters of a group | `Concatenated` | GL(n) |
| "triangular" | one upper-triangular Q over all parameters of a group | `Concatenated` | triangular, Eq. 18 |
| "diag" | q per entry | `Flatten` | diagonal, each entry normalised alone |
| "kron" | Q₁ ⊗ ⋯ ⊗ Q_K, one triangular (or diagonal) factor per axis | `EveryAxis` | Kronecker (Eq. 23) |
| "scan" | diag(q₁) ⊗ Normalization on a weight (out, in…) | `TwoSided` | SCAN (§5, Eq. 25) |
| "scaw" | diag(q₁) ⊗ triangular on a weight (out, in…) | `TwoSided` | SCAW (§5, App. A) |
| "lra" | (I + UVᵀ)·diag(d), U, V n×rank, over all parameters of a group | `Concatenated` | none: `UVd` fit |

"scan" and "scaw" give 1-d (and 0-d) tensors a diagonal Q normalised as a whole (max over its entries,
psgd_torch's rule for a diagonal Kronecker factor), where "diag" normalises each entry on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from precondalg._checks import check_choice, check_number, given, unset
from precondalg.families import (
    Family,
    dense_gram,
    diagonal_gram,
    kronecker_gram,
    lra_gram,
    scan_gram,
    scaw_gram,
    triangular_gram,
)
from precondalg.fitters import Fitter, LieGroup, UVd
from precondalg.objectives import Fisher, Newton
from precondalg.optim.choices import by_ndim
from precondalg.optim.preconditioned import Preconditioned
from precondalg.placement import Concatenated, EveryAxis, Flatten, Placement, TwoSided

__all__ = ["PSGD", "PRECONDITIONERS"]

PRECONDITIONERS = ("dense", "triangular", "diag", "kron", "scan", "scaw", "lra")
"""The preconditioners `PSGD` offers."""
_CRITERIA = ("newton", "fisher")
_DEFAULT_LR = {"newton": 1e-2, "fisher": 1e-3}
_MATRIX_NDIMS = (2, 3, 4, 5)
_ARGUMENTS = (
    "preconditioner", "criterion", "lr_precond", "init_scale", "damping", "normalizer", "max_size",
    "max_skew", "hvp", "model", "loss_fn", "rank",
)
"""PSGD's own construction arguments: one value for the whole optimizer, never a param group's."""


def _choices(
    preconditioner: str, scale: float, max_size: float, max_skew: float, rank: int
) -> tuple[Any, Any]:
    """The structure and placement choices of a preconditioner (see the module docstring)."""
    if preconditioner == "lra":
        return lra_gram(rank, scale), Concatenated()
    if preconditioner == "dense":
        return dense_gram(scale), Concatenated()
    if preconditioner == "triangular":
        return triangular_gram(scale), Concatenated()
    if preconditioner == "diag":
        return diagonal_gram(scale), Flatten()
    if preconditioner == "kron":
        return kronecker_gram("triangular", scale, max_size, max_skew), EveryAxis()
    family: Family = scan_gram(scale) if preconditioner == "scan" else scaw_gram(scale)
    placement: Placement = TwoSided()
    return (
        by_ndim(dict.fromkeys(_MATRIX_NDIMS, family), default=diagonal_gram(scale)),
        by_ndim(dict.fromkeys(_MATRIX_NDIMS, placement), default=Flatten()),
    )


def PSGD(
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    lr: float | None = None,
    *,
    preconditioner: str = "kron",
    criterion: str = "newton",
    lr_precond: float = 0.1,
    init_scale: float | None = None,
    momentum: float = 0.0,
    damping: float = 0.0,
    clip: float | None = None,
    normalizer: str = "max_abs",
    max_size: float = unset(math.inf),
    max_skew: float = unset(math.inf),
    update_probability: float | Callable[[int], float] = 1.0,
    hvp: str = "autograd",
    weight_decay: float = 0.0,
    nonfinite: str = "skip",
    seed: int = 0,
    compile: bool | dict[str, Any] = False,
    precond_dtype: torch.dtype | None = None,
    precond_rounding: str = unset("stochastic"),
    process_group: Any = "auto",
    model: torch.nn.Module | None = None,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    rank: int | None = None,
) -> Preconditioned:
    """PSGD (Li 2019): θ ← θ − lr·P ĝ with P = QᵀQ, Q fitted on a matrix Lie group to the Newton or the
    Fisher (whitening) criterion by the normalised multiplicative step Q ← (I − μ R/‖R‖)Q (Eq. 20).

    The choices: objective `Newton` (h = Hv, Eq. 9–10) or `Fisher` (h = g + λv, Eqs. 11–13), with
    v ~ N(0, I) from the optimizer's generator; fitter `LieGroup` (μ = lr_precond; the relative gradient
    2·Π(aaᵀ − bbᵀ), a = Qh, b = Q⁻ᵀv, Eq. 18, in closed form); structure and placement by
    `preconditioner` (table in `precondalg.optim.psgd`); base SGD, or with momentum β an EMA
    m ← βm + (1 − β)g to which P is applied (psgd_torch's decoupled momentum; Q is fitted on ĝ).
    Each step fits Q first (with probability `update_probability`), then moves θ with the new P.
    "lra" (psgd_torch's low-rank approximation) is not a group: it is fitted by `UVd`, psgd_torch's own
    update with its first-order step normaliser (``normalizer`` must stay "max_abs").

    ``step(closure)``: ``closure()`` returns the loss WITHOUT calling backward; the optimizer
    differentiates it (psgd_torch's convention) and `step` returns the loss.  The closure is required
    for "newton" (Hessian-vector products; with ``hvp="finite_difference"`` it may also call backward),
    optional for "fisher" (without one, ``.grad`` is used, torch.optim style).  With
    ``hvp="torch.func"`` pass ``model`` and ``loss_fn`` here and ``step(batch=(x, y))``.

    At Q₀ = I (``init_scale=1``) with ``lr_precond=0`` it is torch.optim.SGD exactly (every
    preconditioner but "lra", whose U and V start small and random).

    Args:
        params: parameters or param groups ("dense"/"triangular" fit one Q per group).
        lr: the parameters' step μ; None: 1e-2 for "newton", 1e-3 for "fisher" (psgd_torch's defaults;
            the Newton step is normalised, so 0 < μ < 1 converges near a minimum, Eqs. 15–16).
        preconditioner: "dense", "triangular", "diag", "kron", "scan", "scaw" or "lra".
        criterion: "newton" or "fisher".
        lr_precond: μ₀ of the Lie-group step, in [0, 1) (Eq. 20; the paper's typical value 0.01,
            psgd_torch's 0.1).
        init_scale: Q₀ = init_scale·I (a Kronecker Q: init_scale^(1/K) per factor); None: set on
            the first step from (v, h), Q₀ = (mean v²)^(1/4)(mean h⁴)^(−1/8)·I per block (psgd_torch
            2026's heuristic); a block whose first h is all zero or non-finite waits for a usable one.
        momentum: β of the EMA momentum, in [0, 1); 0: none.
        damping: λ of the Fisher criterion, h = g + λv ("fisher" only).
        clip: Ω: θ ← θ − lr·Pĝ/max(1, ‖Pĝ‖/Ω), the 2-norm over all parameters (§4.4); None: none.
        normalizer: "max_abs" (‖R‖ = max|Rᵢⱼ|, the paper's Eq. 20 and 2019 code) or "lipschitz"
            (psgd_torch 2026: a running estimate of ‖R‖₂, see `LieGroup`).
        max_size: "kron" only: an axis longer than this gets a diagonal factor.
        max_skew: "kron" only: an axis longer than max_skew × the second-largest axis gets a
            diagonal factor (psgd_torch v0.6's rule).
        update_probability: probability of fitting Q at a step, or a callable ``steps_taken ->
            probability`` (e.g. an anneal from 1 to 0.03); P is applied at every step.
        hvp: "newton" only: "autograd", "finite_difference" or "torch.func" (see `Newton`).
        weight_decay: L2 penalty wd added to the gradient (torch.optim convention, before P); P is fitted
            to the loss plus (wd/2)‖θ‖² (Newton: h = (H + wd·I)v; Fisher: h = ĝ + wd·θ + λv).
        nonfinite: "skip" or "raise" (see `Preconditioned`).
        seed: seed of the optimizer's generator (v, the update draws).
        model: the module, for ``hvp="torch.func"`` only.
        loss_fn: ``loss_fn(outputs, targets)``, for ``hvp="torch.func"`` only.
        rank: "lra" only: the rank r of U and V (None: 10, psgd_torch's default).
        compile: compile the step's tensor work with torch.compile (see `Preconditioned`).
        precond_dtype: torch.bfloat16 to store φ and its fitter's state in bfloat16 between steps
            (float32 arithmetic; see `Preconditioned`).
        precond_rounding: "stochastic" or "nearest": how a fit's new values are rounded to
            `precond_dtype` (see `Preconditioned`).
        process_group: "auto" (torch.distributed's default group, when initialised with more than
            one process), a process group or None: the data-parallel ranks across which what the
            fit reads from the local batch is averaged (see `Preconditioned`).

    Returns:
        A `Preconditioned` optimizer configured as PSGD.

    Raises:
        TypeError: a hyperparameter that is not a number.
        ValueError: an unknown preconditioner, criterion or normalizer; a hyperparameter out of range;
            an argument that the chosen criterion or preconditioner does not use (damping with
            "newton", hvp/model/loss_fn with "fisher", max_size/max_skew without "kron", rank without
            "lra", normalizer "lipschitz" with "lra").
    """
    check_choice("PSGD", "preconditioner", preconditioner, PRECONDITIONERS)
    check_choice("PSGD", "criterion", criterion, _CRITERIA)
    check_number("PSGD", "lr_precond", lr_precond, 0.0, 1.0, hi_open=True)
    check_number("PSGD", "momentum", momentum, 0.0, 1.0, hi_open=True)
    check_number("PSGD", "damping", damping, 0.0)
    check_number("PSGD", "max_size", max_size, 0.0)
    check_number("PSGD", "max_skew", max_skew, 0.0)
    if init_scale is not None:
        check_number("PSGD", "init_scale", init_scale, 0.0, math.inf, lo_open=True, hi_open=True)
    if lr is not None:
        check_number("PSGD", "lr", lr, 0.0)
    if preconditioner != "kron" and (given(max_size) or given(max_skew)):
        raise ValueError(
            f"PSGD: 'max_size' and 'max_skew' choose diagonal factors of the 'kron' preconditioner; got "
            f"max_size={max_size!r}, max_skew={max_skew!r} with preconditioner={preconditioner!r}"
        )
    if preconditioner != "lra" and rank is not None:
        raise ValueError(
            f"PSGD: 'rank' is the rank of the 'lra' preconditioner; got rank={rank!r} with "
            f"preconditioner={preconditioner!r}"
        )
    check_choice("PSGD", "normalizer", normalizer, ("max_abs", "lipschitz"))
    if preconditioner == "lra" and normalizer != "max_abs":
        raise ValueError(
            "PSGD: the 'lra' preconditioner is fitted by UVd, psgd_torch's update with its own first-order "
            f"normaliser; 'normalizer' applies to the Lie-group preconditioners only, got {normalizer!r}"
        )
    if criterion == "newton":
        if damping != 0:
            raise ValueError(
                "PSGD: 'damping' (λ in h = g + λv) belongs to criterion='fisher'; got damping="
                f"{damping!r} with criterion='newton'"
            )
        objective: Newton | Fisher = Newton(hvp=hvp, model=model, loss_fn=loss_fn)
    else:
        if hvp != "autograd" or model is not None or loss_fn is not None:
            raise ValueError(
                "PSGD: 'hvp', 'model' and 'loss_fn' make Hessian-vector products for criterion='newton'; "
                f"got hvp={hvp!r}, model={type(model).__name__}, loss_fn={type(loss_fn).__name__} with "
                "criterion='fisher'"
            )
        objective = Fisher(damping=damping)
    scale = 1.0 if init_scale is None else init_scale
    structure, placement = _choices(preconditioner, scale, max_size, max_skew, 10 if rank is None else rank)
    diagonal = "per_entry" if preconditioner == "diag" else "whole"
    fitter: Fitter = (
        UVd(lr=lr_precond)
        if preconditioner == "lra"
        else LieGroup(lr=lr_precond, normalizer=normalizer, diagonal=diagonal)
    )
    rule = {"momentum": float(momentum)} if momentum > 0 else {}
    return Preconditioned(
        params,
        _DEFAULT_LR[criterion] if lr is None else lr,
        structure=structure,
        placement=placement,
        objective=objective,
        fitter=fitter,
        base="ema" if momentum > 0 else "sgd",
        position="direction",
        weight_decay=weight_decay,
        update_probability=update_probability,
        clip=clip,
        auto_scale=init_scale is None,
        nonfinite=nonfinite,
        seed=seed,
        compile=compile,
        precond_dtype=precond_dtype,
        precond_rounding=precond_rounding,
        process_group=process_group,
        name="PSGD",
        preset_arguments=_ARGUMENTS,
        **rule,
    )
