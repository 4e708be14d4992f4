"""`KFAC` (Martens & Grosse 2015; Grosse & Martens 2016 for convolutions) as a preset of
`Preconditioned`: a per-layer Kronecker structure set in closed form from module-hook statistics."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from precondalg._checks import check_number, unset
from precondalg.families import kronecker
from precondalg.fitters import ClosedForm
from precondalg.objectives import LayerStatistics
from precondalg.optim.preconditioned import Preconditioned
from precondalg.placement import Layer

__all__ = ["KFAC"]

_ARGUMENTS = ("model", "damping", "ema", "update_every")
"""K-FAC's own construction arguments: one value for the whole optimizer, never a param group's."""


def KFAC(
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    lr: float,
    *,
    model: torch.nn.Module,
    damping: float = 1e-3,
    ema: float = 0.95,
    update_every: int = 10,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    nonfinite: str = "skip",
    seed: int = 0,
    compile: bool | dict[str, Any] = False,
    precond_dtype: torch.dtype | None = None,
    precond_rounding: str = unset("stochastic"),
    process_group: Any = "auto",
) -> Preconditioned:
    """K-FAC (Martens & Grosse 2015) for the `nn.Linear` and `nn.Conv2d` layers of `model` (KFC's
    matrixisation of convolutions, Grosse & Martens 2016): each layer's [W | b] (bias as a homogeneous
    input column) moves along

        θ ← θ − lr·(Ḡ + γ_G I)⁻¹ [G_W | g_b] (Ā + γ_A I)⁻¹,

    with Ā = E[āāᵀ] (ā = [a; 1], a the layer's input or patches) and Ḡ = E[ssᵀ] (s the per-example
    gradient of the loss with respect to the layer's output) averaged over steps with weight `ema`
    (bias-corrected), and the factored Tikhonov damping γ_A = π√λ, γ_G = √λ/π,
    π = √((tr Ā/d_A)/(tr Ḡ/d_G)) (§6.3), λ = `damping`.  The inverses are recomputed on the first step
    and every `update_every` steps; the statistics join every step.  Parameters of other modules
    (normalisation layers, embeddings, …) take the base rule alone.

    Use it like any torch optimizer: ``loss = loss_fn(model(x), y)`` with the loss the MEAN over the
    batch, ``loss.backward()``, ``opt.step()`` — forward hooks on the layers record the statistics
    during the forward and backward passes (see `precondalg.objectives.LayerStatistics`: the empirical
    Fisher of the loss that is backpropagated, with curvlinops' batch-size convention).  The hooks stay
    on the model while the optimizer lives; ``opt.objective.remove_hooks()`` takes them off.

    The choices: placement `Layer(model)`, structure `kronecker()` (P = φ = A ⊗ B), objective
    `LayerStatistics(model, damping)`, fitter `ClosedForm(beta=ema, update_every=update_every)`, base
    "sgd" (or heavy-ball "momentum" after P), position "gradient".  Martens & Grosse's adaptive damping
    and their quadratic-model step size and momentum are not part of it (a fixed λ and lr, as most
    K-FAC implementations use).

    Args:
        params: parameters or param groups (those of model's Linear and Conv2d layers are
            preconditioned).
        lr: the learning rate.
        model: the module whose layers' statistics are recorded.
        damping: λ ≥ 0.
        ema: the averaging weight β of the statistics, in (0, 1): S ← βS + (1 − β)s.
        update_every: recompute the inverses every this many steps.
        momentum: μ of heavy-ball momentum on the preconditioned step (torch.optim.SGD's); 0: none.
        weight_decay: L2 penalty added to the gradient (torch.optim's convention) before P.
        nonfinite: "skip" or "raise" (see `Preconditioned`): a non-finite gradient, activation or
            statistic leaves the parameters and the statistics as they were.
        seed: seed of the optimizer's generators (only the stochastic rounding of `precond_dtype` draws,
            and K-FAC's inverses are rounded to nearest: nothing is drawn).
        compile: compile the step's tensor work with torch.compile (see `Preconditioned`).
        precond_dtype: torch.bfloat16 to store φ and its fitter's state in bfloat16 between steps
            (float32 arithmetic; see `Preconditioned`).
        precond_rounding: "stochastic" or "nearest": how a fit's new values are rounded to
            `precond_dtype` (see `Preconditioned`).
        process_group: "auto" (torch.distributed's default group, when initialised with more than
            one process), a process group or None: the data-parallel ranks across which what the
            fit reads from the local batch is averaged (see `Preconditioned`).

    Returns:
        A `Preconditioned` optimizer configured as K-FAC.

    Raises:
        TypeError: model not an nn.Module; a hyperparameter that is not a number.
        ValueError: a hyperparameter out of range; none of the parameters belongs to a Linear or
            Conv2d layer of model; an unsupported Conv2d (groups ≠ 1, non-zero padding mode).

    Examples:
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
        >>> opt = KFAC(net.parameters(), lr=0.1, model=net)
        >>> sizes = [tuple(A.shape[0] for A in P.factors) for _, P in opt.preconditioners()]
        >>> sizes == [(8, 5), (2, 9)]  # (Ḡ 8×8, Ā 5×5 with the bias's 1), (Ḡ 2×2, Ā 9×9)
        True
    """
    check_number("KFAC", "lr", lr, 0.0)
    check_number("KFAC", "momentum", momentum, 0.0, 1.0, hi_open=True)
    check_number("KFAC", "ema", ema, 0.0, 1.0, lo_open=True, hi_open=True)
    objective = LayerStatistics(model, damping)
    placement = Layer(model)
    rule = {"momentum": float(momentum)} if momentum > 0 else {}
    return Preconditioned(
        params,
        lr,
        structure=kronecker(),
        placement=placement,
        objective=objective,
        fitter=ClosedForm(beta=ema, update_every=update_every),
        base="momentum" if momentum > 0 else "sgd",
        position="gradient",
        weight_decay=weight_decay,
        nonfinite=nonfinite,
        seed=seed,
        compile=compile,
        precond_dtype=precond_dtype,
        precond_rounding=precond_rounding,
        process_group=process_group,
        name="KFAC",
        preset_arguments=_ARGUMENTS,
        **rule,
    )
