"""`HD`: hypergradient descent (Baydin et al. 2018; S-HD and PP-HD of FOP) as a preset."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from precondalg._checks import check_choice, check_number, given, unset
from precondalg.families import diagonal, scalar
from precondalg.fitters import TorchOptimizer
from precondalg.objectives import Hypergradient
from precondalg.optim.preconditioned import Preconditioned
from precondalg.placement import Concatenated, Flatten

__all__ = ["HD"]

_GRANULARITIES = ("global", "layer", "parameter")
_BASES = ("sgd", "momentum", "adam")
_HYPER_OPTIMIZERS = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


def HD(
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    lr: float,
    hyper_lr: float,
    granularity: str = "layer",
    base: str = "sgd",
    *,
    momentum: float = unset(0.9),
    nesterov: bool = False,
    betas: tuple[float, float] = unset((0.9, 0.999)),
    eps: float = unset(1e-8),
    weight_decay: float = 0.0,
    hyper_optimizer: str = "sgd",
    nonfinite: str = "skip",
    seed: int = 0,
    update_probability: float | Callable[[int], float] = 1.0,
    compile: bool | dict[str, Any] = False,
    precond_dtype: torch.dtype | None = None,
    precond_rounding: str = unset("stochastic"),
    process_group: Any = "auto",
) -> Preconditioned:
    """Hypergradient descent on the learning rate (Baydin et al. 2018; S-HD and PP-HD of Moskovitz et
    al. 2019).

    The learning rate is the learned structure, applied to the base rule's direction d:
    θ ← θ − α d, with α ← α − β·∂L(θ_t)/∂α = α + β⟨g_t, d_{t−1}⟩ before the step (Baydin's SGDHD and
    AdamHD order).  Granularity: "global" — one α per param group (Baydin's SGD-HD / Adam-HD);
    "layer" — one α per parameter tensor (FOP's S-HD; put a module's tensors in one param group with
    "global" for one α per module); "parameter" — one α per entry (PP-HD).  The hyper-step is plain SGD
    with lr `hyper_lr` (Baydin; 1e-3 for SGD, 1e-7/1e-8 for Adam) or Adam (FOP's experiments, 1e-4).

    The group's "lr" is a multiplier on the learned α, set to 1.0 (schedulers scale it); the learned
    rates are the preconditioners (`opt.preconditioners()`).  Adam's ε is torch.optim.Adam's (outside
    the bias-corrected root); Baydin's AdamHD code puts it inside, a difference of order ε.

    Args:
        params: parameters or param groups.
        lr: initial learning rate α₀.
        hyper_lr: the hyper-learning rate β.
        granularity: "global", "layer" or "parameter".
        base: "sgd", "momentum" (heavy ball, torch.optim.SGD's) or "adam".
        momentum: μ for base "momentum" (default 0.9; refused with another base).
        nesterov: Nesterov momentum (base "momentum" only).
        betas: Adam's betas (default (0.9, 0.999); base "adam" only).
        eps: Adam's ε (default 1e-8; base "adam" only).
        weight_decay: L2 penalty added to the gradient.
        hyper_optimizer: "sgd" (Baydin) or "adam" (FOP's S-HD/PP-HD).
        nonfinite: "skip" or "raise" (see `Preconditioned`).
        seed: seed of the optimizer's generators: the draws of an `update_probability` strictly between 0
            and 1, and the stochastic rounding of `precond_dtype` (the initialisation draws nothing).
        update_probability: the probability that a step fits P, or a schedule ``steps -> probability``
            (`every` (k) fits every k-th step); P is applied at every step (see `Preconditioned`).
        compile: compile the step's tensor work with torch.compile (see `Preconditioned`).
        precond_dtype: torch.bfloat16 to store φ and its fitter's state in bfloat16 between steps
            (float32 arithmetic; see `Preconditioned`).
        precond_rounding: "stochastic" or "nearest": how a fit's new values are rounded to
            `precond_dtype` (see `Preconditioned`).
        process_group: "auto" (torch.distributed's default group, when initialised with more than
            one process), a process group or None: the data-parallel ranks across which what the
            fit reads from the local batch is averaged (see `Preconditioned`).

    Returns:
        A `Preconditioned` optimizer configured as HD.

    Raises:
        TypeError: a hyperparameter that is not a number.
        ValueError: lr or hyper_lr < 0, an unknown granularity, base or hyper_optimizer, a base-rule
            hyperparameter given for a base that does not read it.
    """
    check_number("HD", "lr", lr, 0.0)
    params = list(params)
    per_group = [i for i, group in enumerate(params) if isinstance(group, dict) and "lr" in group]
    if per_group:
        raise ValueError(
            f"HD: param group(s) {per_group} set 'lr'; in HD a group's lr would multiply the learned rate "
            "α (started at the `lr` argument), not set α₀. Use one HD per initial rate, or add the group "
            "later with add_param_group({'params': ..., 'lr': factor}) where lr is that multiplier"
        )
    check_number("HD", "hyper_lr", hyper_lr, 0.0)
    check_choice("HD", "granularity", granularity, _GRANULARITIES)
    check_choice("HD", "base", base, _BASES)
    check_choice("HD", "hyper_optimizer", hyper_optimizer, tuple(_HYPER_OPTIMIZERS))
    chosen = {"momentum": momentum, "betas": betas, "eps": eps}
    rule: dict[str, Any] = {name: value for name, value in chosen.items() if given(value)}
    if nesterov:
        rule["nesterov"] = nesterov
    return Preconditioned(
        params,
        1.0,
        structure=diagonal(lr) if granularity == "parameter" else scalar(lr),
        placement=Concatenated() if granularity == "global" else Flatten(),
        objective=Hypergradient(),
        fitter=TorchOptimizer(_HYPER_OPTIMIZERS[hyper_optimizer], lr=hyper_lr),
        base=base,
        position="direction",
        weight_decay=weight_decay,
        nonfinite=nonfinite,
        seed=seed,
        update_probability=update_probability,
        compile=compile,
        precond_dtype=precond_dtype,
        precond_rounding=precond_rounding,
        process_group=process_group,
        name="HD",
        preset_arguments=("hyper_lr", "granularity", "hyper_optimizer"),
        **rule,
    )
