"""`Shampoo` (Gupta, Koren & Singer 2018) as a preset of `Preconditioned`: a Kronecker structure set in
closed form from the gradient's second moments."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from precondalg._checks import check_number, unset
from precondalg.families import kronecker
from precondalg.fitters import ClosedForm
from precondalg.objectives import GradientStatistics
from precondalg.optim.base_rules import GRAFTS, Graft
from precondalg.optim.preconditioned import Preconditioned
from precondalg.placement import EveryAxis

__all__ = ["Shampoo"]

_ARGUMENTS = ("beta2", "epsilon", "update_every", "root", "grafting")
"""Shampoo's own construction arguments: one value for the whole optimizer, never a param group's."""


def Shampoo(
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    lr: float,
    *,
    beta2: float = 1.0,
    epsilon: float = 1e-12,
    update_every: int = 1,
    root: str = "eigh",
    grafting: str | Graft | None = None,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    nonfinite: str = "skip",
    seed: int = 0,
    compile: bool | dict[str, Any] = False,
    precond_dtype: torch.dtype | None = None,
    precond_rounding: str = unset("stochastic"),
    process_group: Any = "auto",
) -> Preconditioned:
    """Shampoo (Gupta, Koren & Singer 2018, Algorithms 1–2): for every parameter of order k (a matrix:
    k = 2), one statistic per axis, Lᵢ ← β₂Lᵢ + (1 − β₂)·Gᵢ Gᵢᵀ with Gᵢ the mode-i unfolding of the
    gradient (β₂ = 1: the paper's sum Lᵢ ← Lᵢ + GᵢGᵢᵀ), and the step

        θ ← θ − lr·(L₁ + εI)^(−1/2k) ⊗ ⋯ ⊗ (L_k + εI)^(−1/2k) vec(G),

    for a matrix L^(−1/4) G R^(−1/4) with L = Σ GGᵀ, R = Σ GᵀG.  A vector (a bias) gets
    (L + εI)^(−1/2), full-matrix AdaGrad; a 0-d tensor a scalar AdaGrad.  The roots are recomputed on
    the first step and every `update_every` steps (in between the last ones are applied to every new
    gradient), by a symmetric eigendecomposition ("eigh") or the coupled Newton iteration ("newton").

    The choices: structure `kronecker()` (P = φ = ⊗ Aᵢ) on the `EveryAxis` placement, objective
    `GradientStatistics`, fitter `ClosedForm(beta=beta2, epsilon=epsilon, update_every, root)`, base
    "sgd" (or heavy-ball "momentum" after P, as Distributed Shampoo's), position "gradient".  The
    statistics with β₂ < 1 are read bias-corrected, Lᵢ/(1 − β₂ᵗ), as Distributed Shampoo's.

    Args:
        params: parameters or param groups.
        lr: the learning rate.
        beta2: β₂ in (0, 1]: 1 sums the statistics (the paper's AdaGrad-style Shampoo), < 1 averages them.
        epsilon: ε ≥ 0 added to every statistic before its root (Distributed Shampoo's default 1e-12).
        update_every: recompute the roots every this many steps (the statistics join every step).
        root: "eigh" or "newton".
        grafting: None, "sgd", "adagrad", "rmsprop" or "adam" (Distributed Shampoo's defaults: β₂ 0.99
            for RMSprop, 0.999 for Adam, ε 1e-10), or a `Graft`: the step of every parameter takes its
            direction from Shampoo and its norm from that method (layer-wise grafting).
        momentum: μ of heavy-ball momentum on the preconditioned step (torch.optim.SGD's); 0: none.
        weight_decay: L2 penalty added to the gradient before the statistics (torch.optim's convention,
            the paper's; Distributed Shampoo decouples it by default).
        nonfinite: "skip" or "raise" (see `Preconditioned`): a non-finite gradient leaves the parameters
            and the statistics as they were.
        seed: seed of the optimizer's generators (only the stochastic rounding of `precond_dtype` draws,
            and Shampoo's roots are rounded to nearest: nothing is drawn).
        compile: compile the step's tensor work with torch.compile (see `Preconditioned`).
        precond_dtype: torch.bfloat16 to store φ and its fitter's state in bfloat16 between steps
            (float32 arithmetic; see `Preconditioned`).
        precond_rounding: "stochastic" or "nearest": how a fit's new values are rounded to
            `precond_dtype` (see `Preconditioned`).
        process_group: "auto" (torch.distributed's default group, when initialised with more than
            one process), a process group or None: the data-parallel ranks across which what the
            fit reads from the local batch is averaged (see `Preconditioned`).

    Returns:
        A `Preconditioned` optimizer configured as Shampoo.

    Raises:
        TypeError: a hyperparameter that is not a number; grafting of another type.
        ValueError: a hyperparameter out of range; an unknown root or grafting method.

    Examples:
        >>> net = torch.nn.Linear(4, 3)
        >>> opt = Shampoo(net.parameters(), lr=0.1, grafting="adam")
        >>> sizes = [tuple(A.shape[0] for A in P.factors) for _, P in opt.preconditioners()]
        >>> sizes == [(3, 4), (3,)]  # L (3×3) and R (4×4) for the weight, one 3×3 factor for the bias
        True
    """
    check_number("Shampoo", "lr", lr, 0.0)
    check_number("Shampoo", "momentum", momentum, 0.0, 1.0, hi_open=True)
    expected = f"Shampoo: 'grafting' must be None, one of {list(GRAFTS)} or a Graft; got {grafting!r}"
    if isinstance(grafting, str):
        if grafting not in GRAFTS:
            raise ValueError(expected)
        grafting = Graft(grafting)
    elif grafting is not None and not isinstance(grafting, Graft):
        raise TypeError(expected)
    fitter = ClosedForm(beta=beta2, epsilon=epsilon, update_every=update_every, root=root)
    rule = {"momentum": float(momentum)} if momentum > 0 else {}
    return Preconditioned(
        params,
        lr,
        structure=kronecker(),
        placement=EveryAxis(),
        objective=GradientStatistics(),
        fitter=fitter,
        base="momentum" if momentum > 0 else "sgd",
        position="gradient",
        weight_decay=weight_decay,
        graft=grafting,
        nonfinite=nonfinite,
        seed=seed,
        compile=compile,
        precond_dtype=precond_dtype,
        precond_rounding=precond_rounding,
        process_group=process_group,
        name="Shampoo",
        preset_arguments=_ARGUMENTS,
        **rule,
    )
