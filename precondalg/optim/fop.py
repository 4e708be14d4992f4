"""`FOP`: first-order preconditioning (Moskovitz et al. 2019) as a preset of `Preconditioned`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from precondalg._checks import check_number, given, unset
from precondalg.families import dense_gram, low_rank_gram, normalized_dense_gram
from precondalg.fitters import TorchOptimizer
from precondalg.objectives import Hypergradient
from precondalg.optim.base_rules import BASE_RULES
from precondalg.optim.choices import by_ndim
from precondalg.optim.preconditioned import Preconditioned
from precondalg.placement import InputSide, Spatial

__all__ = ["FOP"]


def FOP(
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    lr: float,
    momentum: float = unset(0.9),
    hyper_lr: float = 1e-4,
    rank: int | None = None,
    normalized: bool = False,
    *,
    base: str | None = None,
    nesterov: bool = False,
    betas: tuple[float, float] | None = None,
    eps: float | None = None,
    weight_decay: float = 0.0,
    low_rank_std: float = 1e-3,
    nonfinite: str = "skip",
    seed: int = 0,
    update_probability: float | Callable[[int], float] = 1.0,
    compile: bool | dict[str, Any] = False,
    precond_dtype: torch.dtype | None = None,
    precond_rounding: str = unset("stochastic"),
    process_group: Any = "auto",
) -> Preconditioned:
    """FOP: P = MᵀM per layer, learned online by its hypergradient with Adam (Moskovitz et al. 2019).

    The choices: structure `dense_gram` (M₀ = I; `low_rank_gram(rank)` for weight matrices when `rank`
    is given: P = I + MᵀM, M (rank×in) ~ N(0, low_rank_std²); `normalized_dense_gram` when
    `normalized`); placement: the input side of weight matrices (G ↦ G·MᵀM) and the spatial taps of
    conv kernels, biases unpreconditioned; objective `Hypergradient` (Eq. 4; with momentum the raw
    previous gradient, Eqs. 6–8); fitter Adam with lr `hyper_lr` (1e-4 in the paper); base heavy-ball
    momentum (torch.optim.SGD's) when momentum > 0, else SGD.  P acts before the momentum rule:
    b ← μb + G·MᵀM, W ← W − α b (Eqs. 6–8).  Each step first fits M on ∂J(θ_t)/∂M, then preconditions
    g_t with the new M.  At M₀ = I and hyper_lr = 0 it is torch.optim.SGD exactly.

    Args:
        params: parameters or param groups.
        lr: base learning rate α.
        momentum: heavy-ball momentum μ (0.9 in the paper's experiments; 0 for plain SGD).  With an
            explicit `base` that reads no momentum (e.g. "adam"), a nonzero momentum is refused.
        hyper_lr: Adam's learning rate on M.
        rank: None for full M; r for low-rank M on weight matrices (conv taps stay full).
        normalized: FOP-norm (App. A.1): √n·MᵀM/‖MᵀM‖_F, with the plain MᵀM hypergradient (the
            normalisation is applied, not differentiated).
        base: override the base rule ("sgd", "momentum", "ema", "adam", "rmsprop"; the paper uses
            momentum; an Adam base is our extension).
        nesterov: Nesterov momentum (needs heavy-ball momentum).
        betas: Adam's (β₁, β₂), with ``base="adam"`` only (default (0.9, 0.999)).
        eps: Adam's or RMSprop's ε, with those bases only (default 1e-8).
        weight_decay: L2 penalty added to the gradient.
        low_rank_std: std of the initial low-rank M (the paper does not give it).
        nonfinite: "skip" or "raise" (see `Preconditioned`).
        seed: seed for the low-rank initialisation.
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
        A `Preconditioned` optimizer configured as FOP.

    Raises:
        TypeError: a hyperparameter that is not a number.
        ValueError: hyper_lr < 0, low_rank_std < 0, rank < 1 or larger than a layer's input size, rank
            with normalized, momentum or nesterov with a base that does not read them, or any
            `Preconditioned` hyperparameter out of range.
    """
    check_number("FOP", "hyper_lr", hyper_lr, 0.0)
    check_number("FOP", "low_rank_std", low_rank_std, 0.0)
    check_number("FOP", "momentum", momentum, 0.0, 1.0, hi_open=True)
    if rank is not None and normalized:
        raise ValueError(
            "FOP: 'normalized' is defined for full-rank M only (App. A.1); got rank "
            f"{rank!r} with normalized=True"
        )
    full = normalized_dense_gram() if normalized else dense_gram()
    matrix = low_rank_gram(rank, low_rank_std) if rank is not None else full
    if base is None:
        base = "momentum" if momentum > 0 else "sgd"
    uses_momentum = base in BASE_RULES and "momentum" in BASE_RULES[base].hyperparameters
    rule: dict[str, Any] = {"momentum": float(momentum)} if uses_momentum else {}
    if not rule and given(momentum) and momentum != 0:
        raise ValueError(
            f"FOP: 'momentum' is not used by base {base!r}; got momentum={momentum!r}. Use base='momentum' "
            "(heavy ball) or 'ema', or leave momentum out"
        )
    if nesterov:
        if not uses_momentum:
            raise ValueError(
                f"FOP: 'nesterov' needs heavy-ball momentum (momentum > 0, or base='momentum'); got "
                f"momentum={float(momentum)!r} and base {base!r}"
            )
        rule["nesterov"] = nesterov
    rule |= {name: value for name, value in (("betas", betas), ("eps", eps)) if value is not None}
    return Preconditioned(
        params,
        lr,
        structure=by_ndim({2: matrix}, default=full),
        placement=by_ndim({2: InputSide(), 4: Spatial()}),
        objective=Hypergradient(),
        fitter=TorchOptimizer(torch.optim.Adam, lr=hyper_lr),
        base=base,
        position="gradient",
        weight_decay=weight_decay,
        nonfinite=nonfinite,
        seed=seed,
        update_probability=update_probability,
        compile=compile,
        precond_dtype=precond_dtype,
        precond_rounding=precond_rounding,
        process_group=process_group,
        name="FOP",
        preset_arguments=("hyper_lr", "rank", "normalized", "low_rank_std"),
        **rule,
    )
