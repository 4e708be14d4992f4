"""`APO` (Bae, Vicol, HaoChen & Grosse 2022): amortized proximal optimization as a preset of
`Preconditioned` — a learning rate or APO-Precond's eigenbasis structure fitted to the proximal
objective (`precondalg.objectives.Proximal`) every ``meta_every`` steps."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from precondalg._checks import check_choice, check_number, given, unset
from precondalg.families import eigenbasis, positive_scalar
from precondalg.fitters import TorchOptimizer
from precondalg.objectives import Proximal
from precondalg.optim.choices import every
from precondalg.optim.preconditioned import Preconditioned
from precondalg.placement import Concatenated, Layer

__all__ = ["APO", "fsd_batches"]

_MODES = ("lr", "precond")
_LR_BASES = ("sgd", "momentum", "rmsprop", "adam")
_PRECOND_BASES = ("sgd", "momentum", "adam")
_META_LR = {"lr": 0.1, "precond": 1e-4}
_ARGUMENTS = (
    "model", "loss_fn", "mode", "meta_lr", "meta_every", "lam_fsd", "lam_wsd", "fsd", "scale", "lr_param",
)
"""APO's own construction arguments: one value for the whole optimizer, never a param group's."""


def APO(
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    lr: float,
    *,
    model: torch.nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    mode: str = "precond",
    base: str = "momentum",
    momentum: float = unset(0.9),
    meta_lr: float | None = None,
    meta_every: int = unset(10),
    lam_fsd: float = 1.0,
    lam_wsd: float = 0.1,
    fsd: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "kl",
    warmup: int = unset(0),
    scale: float = unset(0.9),
    lr_param: str = unset("log"),
    seed: int = 0,
    update_probability: float | Callable[[int], float] | None = None,
    compile: bool | dict[str, Any] = False,
    precond_dtype: torch.dtype | None = None,
    precond_rounding: str = unset("stochastic"),
    process_group: Any = "auto",
    nonfinite: str = "skip",
    weight_decay: float = 0.0,
) -> Preconditioned:
    """APO (Bae et al. 2022, Algorithm 1): every `meta_every` steps φ takes one meta-step on the proximal
    objective of the one-step lookahead θ′(φ) (Eq. 8),

        Q(φ) = J_B(θ′) + λ_FSD·(1/|B′|)Σ ρ(f(x̃, θ′), f(x̃, θ)) + (λ_WSD/2)‖θ′ − θ‖²,

    with J_B on the batch B of the gradient and the function-space discrepancy ρ on another batch B′;
    every step moves θ with the current φ.

    - ``mode="lr"`` (§4, Eq. 6): φ is the learning rate η, one per param group, parameterised by
      `lr_param` ("log": η = exp φ, the default reconstruction; "softplus"; "linear"); θ′ = θ − η·d
      with d the base rule's direction and its state held fixed in the lookahead (footnote 1); bases
      "sgd", "momentum", "rmsprop", "adam"; meta-optimizer RMSprop (lr 0.1).  `lr` is η₀.
    - ``mode="precond"`` (§4.5, Eqs. 9–10): per `nn.Linear`/`nn.Conv2d` layer of `model` the eigenbasis
      structure P̂ = (A ⊗ B) diag(vec S)² (A ⊗ B)ᵀ on [W | b] (bias a homogeneous column, convolutions
      matrixised as K-FAC does), identity at the start; θ′ = θ − P̂g (Eq. 7: no lr and no 0.9 inside)
      and the applied step θ ← θ − lr·base(scale·P̂g) (the 0.9 on the applied step only); the first
      `warmup` steps apply the base rule alone while P̂ is already fitted; meta-optimizer Adam.  Other
      parameters take the base rule alone.

    In a training loop, after ``loss_fn(model(x), y).backward()`` on batch B::

        opt.step(batch=(x, y), fsd_batch=x2)

    with x2 the inputs of another batch (`fsd_batches` draws them from a DataLoader); on the steps
    between meta-updates both are accepted and unused.  The meta-update interval is the optimizer's own
    ``update_probability`` schedule (`precondalg.optim.every`): it counts the optimizer's steps and
    resumes from a checkpoint.

    Args:
        params: parameters or param groups (owned by `model`).
        lr: "lr" mode: the initial learning rate η₀ (the paper: 0.1 for SGD and SGDm); "precond" mode:
            the learning rate of the applied step.
        model: the module (the lookahead evaluates it by `torch.func.functional_call`).
        loss_fn: ``loss_fn(outputs, targets) -> scalar``, the training loss J_B (a mean over B).
        mode: "lr" or "precond".
        base: the base rule ("lr": "sgd", "momentum", "rmsprop", "adam"; "precond": "sgd", "momentum",
            "adam"; the paper's APO-Precond uses SGDm).
        momentum: μ of the "momentum" base (default 0.9); refused with another base when given.
        meta_lr: the meta-optimizer's learning rate; None: 0.1 for "lr" (RMSprop, the paper's), 1e-4
            for "precond" (Adam; the paper's grid is lost, the project's default).
        meta_every: K, the meta-update interval (the paper's 10).
        update_probability: instead of `meta_every`, the probability that a step takes a meta-update,
            or a schedule ``steps -> probability`` (see `Preconditioned`; 0: φ stays at its start,
            the step is the base rule with the initial P̂ — the "no fit" cost of the benchmarks).
        lam_fsd: λ_FSD ≥ 0 (no paper values survive: project default 1).
        lam_wsd: λ_WSD ≥ 0 (project default 0.1).
        fsd: "kl" (classification), "squared" (regression) or ``ρ(new_outputs, old_outputs)``.
        warmup: "precond" only: the number of first steps with the base rule alone (the paper: 3000).
        scale: "precond" only: the factor of the applied step (the paper's 0.9).
        lr_param: "lr" only: "log", "softplus" or "linear".
        seed: seed of the optimizer's generators: the draws of an `update_probability` strictly between 0
            and 1, and the stochastic rounding of `precond_dtype` (`meta_every` draws nothing).
        nonfinite: "skip" or "raise" (see `Preconditioned`).
        weight_decay: L2 penalty added to the gradient (torch.optim's convention) before the base rule
            and P; the meta-objective's loss term is `loss_fn` alone (the penalty is not in Q).
        compile: compile the step's tensor work with torch.compile (see `Preconditioned`).
        precond_dtype: torch.bfloat16 to store φ and its fitter's state in bfloat16 between steps
            (float32 arithmetic; see `Preconditioned`).
        precond_rounding: "stochastic" or "nearest": how a fit's new values are rounded to
            `precond_dtype` (see `Preconditioned`).
        process_group: "auto" (torch.distributed's default group, when initialised with more than
            one process), a process group or None: the data-parallel ranks across which what the
            fit reads from the local batch is averaged (see `Preconditioned`).

    Returns:
        A `Preconditioned` optimizer configured as APO.

    Raises:
        TypeError: a hyperparameter that is not a number; model not an nn.Module.
        ValueError: an unknown mode, base, fsd or parameterisation; a hyperparameter out of range; an
            argument the mode does not use (warmup/scale with "lr", lr_param with "precond", momentum
            without the "momentum" base); a param group holding "lr" in "lr" mode (it would multiply
            the learned η, not set η₀); parameters that `model` does not own; in "precond" mode, no
            parameter in an nn.Linear or nn.Conv2d layer of `model`; at step time, a meta-update step
            without ``batch``, or without ``fsd_batch`` when λ_FSD > 0.
    """
    check_choice("APO", "mode", mode, _MODES)
    check_choice("APO", "base", base, _LR_BASES if mode == "lr" else _PRECOND_BASES)
    check_number("APO", "lr", lr, 0.0)
    check_number("APO", "meta_every", meta_every, 1, integer=True)
    if update_probability is not None and given(meta_every):
        raise ValueError(
            f"APO: 'meta_every' and 'update_probability' both set the meta-update schedule; got "
            f"meta_every={meta_every!r} and update_probability={update_probability!r}. Give one of them"
        )
    schedule = every(int(meta_every)) if update_probability is None else update_probability
    if meta_lr is not None:
        check_number("APO", "meta_lr", meta_lr, 0.0)
    if base != "momentum" and given(momentum):
        raise ValueError(
            f"APO: 'momentum' is read by base 'momentum'; got momentum={momentum!r} with base={base!r}"
        )
    unused = {"lr": ("warmup", "scale"), "precond": ("lr_param",)}[mode]
    for name, value in (("warmup", warmup), ("scale", scale), ("lr_param", lr_param)):
        if name in unused and given(value):
            raise ValueError(
                f"APO: '{name}' belongs to the other mode; got {name}={value!r} with mode={mode!r}"
            )
    objective = Proximal(model, loss_fn, fsd=fsd, lam_fsd=lam_fsd, lam_wsd=lam_wsd)
    rule = {"momentum": float(momentum)} if base == "momentum" else {}
    meta_lr = _META_LR[mode] if meta_lr is None else float(meta_lr)
    if mode == "lr":
        check_number("APO", "lr", lr, 0.0, lo_open=True)
        params = list(params)
        per_group = [i for i, group in enumerate(params) if isinstance(group, dict) and "lr" in group]
        if per_group:
            raise ValueError(
                f"APO: param group(s) {per_group} set 'lr'; in mode 'lr' a group's lr would multiply the "
                "learned η (started at the `lr` argument), not set η₀. Use one APO per initial rate"
            )
        return Preconditioned(
            params,
            1.0,  # a multiplier on the learned η (schedulers scale it)
            structure=positive_scalar(lr, str(lr_param)),
            placement=Concatenated(),
            objective=objective,
            fitter=TorchOptimizer(torch.optim.RMSprop, lr=meta_lr),
            base=base,
            position="direction",
            update_probability=schedule,
            weight_decay=weight_decay,
            nonfinite=nonfinite,
            seed=seed,
            compile=compile,
            precond_dtype=precond_dtype,
            precond_rounding=precond_rounding,
            process_group=process_group,
            name="APO",
            preset_arguments=_ARGUMENTS,
            **rule,
        )
    check_number("APO", "scale", scale, 0.0, math.inf, lo_open=True, hi_open=True)
    check_number("APO", "warmup", warmup, 0, integer=True)
    return Preconditioned(
        params,
        lr,
        structure=eigenbasis(float(scale)),
        placement=Layer(model),
        objective=objective,
        fitter=TorchOptimizer(torch.optim.Adam, lr=meta_lr),
        base=base,
        position="gradient",
        update_probability=schedule,
        warmup=int(warmup),
        weight_decay=weight_decay,
        nonfinite=nonfinite,
        seed=seed,
        compile=compile,
        precond_dtype=precond_dtype,
        precond_rounding=precond_rounding,
        process_group=process_group,
        name="APO",
        preset_arguments=_ARGUMENTS,
        **rule,
    )


def fsd_batches(loader: Iterable[Any]) -> Iterator[Any]:
    """The inputs x̃ of batch after batch of `loader` (e.g. a `torch.utils.data.DataLoader` over the
    training set), endlessly — a new pass (a new shuffle) after each epoch — for APO's B′, so that a
    training loop need not manage a second iterator: ``fsd = fsd_batches(loader)`` then
    ``opt.step(batch=(x, y), fsd_batch=next(fsd))``.  A batch that is a tuple or list gives its first
    element, anything else is given as is.  B′ must be another batch than B (the same batch biases the
    FSD, App. D): give it a loader that shuffles (``shuffle=True``), or a second loader — the training
    loader itself without shuffling walks in step with the training loop and gives B′ = B.

    Raises:
        ValueError: the loader yields nothing.

    Examples:
        >>> data = torch.utils.data.TensorDataset(torch.arange(6.0)[:, None], torch.zeros(6))
        >>> fsd = fsd_batches(torch.utils.data.DataLoader(data, batch_size=4))
        >>> tuple(next(fsd).shape[0] for _ in range(3))
        (4, 2, 4)
    """
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch[0] if isinstance(batch, (tuple, list)) else batch
        if empty:
            raise ValueError("fsd_batches: the loader yields no batch")
