"""`HD`: hypergradient descent (Baydin et al. 2018; S-HD and PP-HD of FOP) as a preset."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

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
    momentum: float = 0.9,
    nesterov: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    hyper_optimizer: str = "sgd",
    nonfinite: str = "skip",
    seed: int = 0,
) -> Preconditioned:
    """Hypergradient descent on the learning rate (METHODS.md §1.8–1.9).

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
        momentum: μ for base "momentum".
        nesterov: Nesterov momentum.
        betas: Adam's betas.
        eps: Adam's ε.
        weight_decay: L2 penalty added to the gradient.
        hyper_optimizer: "sgd" (Baydin) or "adam" (FOP's S-HD/PP-HD).
        nonfinite: "skip" or "raise" (see `Preconditioned`).
        seed: unused by HD's deterministic initialisation; kept for a uniform signature.

    Returns:
        A `Preconditioned` optimizer configured as HD.

    Raises:
        ValueError: lr or hyper_lr < 0, an unknown granularity, base or hyper_optimizer.
    """
    if not lr >= 0:
        raise ValueError(f"HD: 'lr' must be >= 0; got {lr!r}")
    if not hyper_lr >= 0:
        raise ValueError(f"HD: 'hyper_lr' must be >= 0; got {hyper_lr!r}")
    if granularity not in _GRANULARITIES:
        raise ValueError(f"HD: 'granularity' must be one of {_GRANULARITIES}; got {granularity!r}")
    if base not in _BASES:
        raise ValueError(f"HD: 'base' must be one of {_BASES}; got {base!r}")
    if hyper_optimizer not in _HYPER_OPTIMIZERS:
        raise ValueError(
            f"HD: 'hyper_optimizer' must be one of {tuple(_HYPER_OPTIMIZERS)}; got {hyper_optimizer!r}"
        )
    return Preconditioned(
        params,
        1.0,
        structure=diagonal(lr) if granularity == "parameter" else scalar(lr),
        placement=Concatenated() if granularity == "global" else Flatten(),
        objective=Hypergradient(),
        fitter=TorchOptimizer(_HYPER_OPTIMIZERS[hyper_optimizer], lr=hyper_lr),
        base=base,
        position="direction",
        momentum=momentum if base == "momentum" else 0.0,
        nesterov=nesterov,
        betas=betas,
        eps=eps,
        weight_decay=weight_decay,
        nonfinite=nonfinite,
        seed=seed,
    )
