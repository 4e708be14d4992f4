"""`LODO`: learning to optimize quasi-Newton methods (Liao et al. 2023) as a preset of `Preconditioned`.

LODO learns an inverse-Hessian estimate G(θ) = α₀·EᵀAᵀAE, A = B_N Π_N ⋯ B_1 Π_1 a sparse network of
random permutations and k×k blocks (Eq. 2), over all parameters of a param group concatenated, fitted by
the one-step hypergradient (the loss after a step, differentiated through that step's G only):

    m_t = β m_{t−1} + (1−β) g_t                          (the base rule "ema", no bias correction)
    θ   ← θ − Adam(∂ℓ_t(x_t)/∂θ),  ∂ℓ_t/∂θ = −α₀ (∂(G(θ) m_{t−1})/∂θ)ᵀ g_t     (the hypergradient)
    x_{t+1} = x_t − α₀ G(θ) m_t                            (position "direction": G after the rule)

One gradient per step serves both the meta-gradient and the momentum (the authors' code).

| variant | G / α₀ | `Preconditioned` structure |
| --- | --- | --- |
| "full" | EᵀAᵀAE, orthogonal blocks at the start (G₀ = α₀I) | `permutation_network_gram` |
| "diagonal" | diag(θ), θ₀ = 1 | `diagonal(1.0)` |
| "global" | θ·I, θ₀ = 1 | `scalar(1.0)` |
| "residual" | EᵀRᵀ diag(d) R E, R = ∏(I + diag(w_i)Π_i), N = 64, ñ = 2n | `residual_network_gram` |
| "no_momentum" | "full" with β = 0 | `permutation_network_gram` |

``variant_mapping="code"`` reproduces the authors' hyperparameter script instead (their Table 3):
"global" runs the Diagonal variant and "no_momentum" the Residuals one with β = 0 and N = 64.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from precondalg._checks import check_choice, check_number, given, unset
from precondalg.families import Family, diagonal, permutation_network_gram, residual_network_gram, scalar
from precondalg.fitters import TorchOptimizer
from precondalg.objectives import Hypergradient
from precondalg.optim.preconditioned import Preconditioned
from precondalg.placement import Concatenated

__all__ = ["LODO", "VARIANTS"]

VARIANTS = ("full", "diagonal", "global", "residual", "no_momentum")
"""The variants `LODO` offers (Liao et al. 2023, §5.3)."""
_MAPPINGS = ("paper", "code")
_META_OPTIMIZERS = ("adam", "sgd")
_KERAS_ADAM_EPS = 1e-7
"""The authors' meta-optimizer is tf.keras' Adam, whose default ε is 1e-7."""
_ARGUMENTS = (
    "meta_lr", "beta", "depth", "block_size", "variant", "meta_optimizer", "width", "variant_mapping",
)
"""LODO's own construction arguments: one value for the whole optimizer, never a param group's."""


def _resolve(variant: str, mapping: str) -> tuple[str, float | None, int | None]:
    """The variant actually built, the β it forces (None: the argument's) and its default depth."""
    if mapping == "code" and variant == "global":
        return "diagonal", None, None
    if mapping == "code" and variant == "no_momentum":
        return "residual", 0.0, 64
    if variant == "no_momentum":
        return "full", 0.0, 16
    return variant, None, {"full": 16, "residual": 64}.get(variant)


def _structure(variant: str, depth: int, block_size: int, width: int | None) -> Family:
    if variant == "full":
        return permutation_network_gram(depth, block_size, width)
    if variant == "residual":
        return residual_network_gram(depth, width)
    return diagonal(1.0) if variant == "diagonal" else scalar(1.0)


def LODO(
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    lr: float = 1.0,
    meta_lr: float = 1e-3,
    beta: float = unset(0.9),
    depth: int = unset(16),
    block_size: int = unset(4),
    variant: str = "full",
    meta_optimizer: str = "adam",
    width: int | None = None,
    seed: int = 0,
    nonfinite: str = "skip",
    *,
    variant_mapping: str = "paper",
    weight_decay: float = 0.0,
    update_probability: float | Callable[[int], float] = 1.0,
    compile: bool | dict[str, Any] = False,
    precond_dtype: torch.dtype | None = None,
    precond_rounding: str = unset("stochastic"),
    process_group: Any = "auto",
) -> Preconditioned:
    """LODO (Liao, Dangovski, Foerster, Soljačić 2023): a quasi-Newton inverse Hessian learned as a
    permutation network by the one-step hypergradient.

    Over the parameters of each param group concatenated (n entries), G = lr·gram(A), A the ñ×n
    `PermutationNetwork` of `depth` layers of k×k blocks; the step is θ ← θ − G m with m the
    gradient's EMA, and A's blocks move by Adam (ε = 1e-7, tf.keras' default, as the authors' code) or
    SGD on the hypergradient.  The blocks start random orthogonal, so G = lr·I at the start and LODO
    begins as momentum SGD; the permutations are drawn from the optimizer's generator (`seed`) and
    saved in checkpoints.  The group's lr is α₀ (a scheduler scales G).

    Differences from the authors' code, by construction: their first step is a no-op (m₀ = 0) that
    still takes a zero meta-gradient step; here the first call of `step` already moves θ along the EMA
    of its gradient.  tf.keras' Adam adds ε to √v before the bias correction, torch's after it (a
    difference of order ε).

    Args:
        params: parameters or param groups (each group gets its own network; a group may set "lr" and
            "momentum", the EMA's β).
        lr: α₀, the initial scale of G (code default 1.0; tuned 0.270 on the noisy bowl).
        meta_lr: the meta-optimizer's learning rate (code default 1e-3).  0 keeps G at its start.
        beta: β of the gradient's EMA (default 0.9; 0 for "no_momentum", which refuses another).
        depth: N, the network's layers (default 16; 64 for "residual").  "full" and "residual" only.
        block_size: k (default 4).  "full" only.
        variant: "full", "diagonal", "global", "residual" or "no_momentum" (module docstring).
        meta_optimizer: "adam" (the paper's) or "sgd" (the LODO-SGD ablation).
        width: ñ (default: the code's rule, the smallest multiple of k above 2n; 2n for "residual").
        seed: seed of the optimizer's generator (permutations, initial blocks).
        nonfinite: "skip" or "raise" (see `Preconditioned`).
        variant_mapping: "paper" (the paper's definitions, default) or "code" (the authors' script:
            "global" → the diagonal variant, "no_momentum" → residual with β = 0 and N = 64).
        weight_decay: L2 penalty added to the gradient.
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
        A `Preconditioned` optimizer configured as LODO.

    Raises:
        TypeError: a hyperparameter of the wrong type.
        ValueError: a hyperparameter out of range; an unknown variant, mapping or meta-optimizer; an
            argument the variant does not read (depth/block_size/width for "diagonal" and "global",
            block_size for "residual", beta other than 0 for "no_momentum").
    """
    check_number("LODO", "lr", lr, 0.0)
    check_number("LODO", "meta_lr", meta_lr, 0.0)
    check_choice("LODO", "variant", variant, VARIANTS)
    check_choice("LODO", "variant_mapping", variant_mapping, _MAPPINGS)
    check_choice("LODO", "meta_optimizer", meta_optimizer, _META_OPTIMIZERS)
    built, forced_beta, default_depth = _resolve(variant, variant_mapping)
    reads = {"full": ("depth", "block_size", "width"), "residual": ("depth", "width")}.get(built, ())
    chosen = {"depth": given(depth), "block_size": given(block_size), "width": width is not None}
    for name in ("depth", "block_size", "width"):
        if chosen[name] and name not in reads:
            raise ValueError(
                f"LODO: '{name}' is not read by variant {variant!r}"
                + (f" (built as {built!r} by variant_mapping='code')" if built != variant else "")
                + f", which reads {list(reads) or 'none of depth, block_size, width'}; got {name}="
                + repr({"depth": depth, "block_size": block_size, "width": width}[name])
            )
    if forced_beta is not None and given(beta) and beta != forced_beta:
        raise ValueError(f"LODO: variant 'no_momentum' has β = 0 (no momentum); got beta={beta!r}")
    beta = forced_beta if forced_beta is not None else (beta if given(beta) else 0.9)
    check_number("LODO", "beta", beta, 0.0, 1.0, hi_open=True)
    depth = depth if given(depth) else (default_depth or 16)
    block_size = block_size if given(block_size) else 4
    fitter = (
        TorchOptimizer(torch.optim.Adam, lr=meta_lr, eps=_KERAS_ADAM_EPS)
        if meta_optimizer == "adam"
        else TorchOptimizer(torch.optim.SGD, lr=meta_lr)
    )
    return Preconditioned(
        params,
        lr,
        structure=_structure(built, depth, block_size, width),
        placement=Concatenated(),
        objective=Hypergradient(),
        fitter=fitter,
        base="ema",
        momentum=beta,
        position="direction",
        weight_decay=weight_decay,
        nonfinite=nonfinite,
        seed=seed,
        update_probability=update_probability,
        compile=compile,
        precond_dtype=precond_dtype,
        precond_rounding=precond_rounding,
        process_group=process_group,
        name="LODO",
        preset_arguments=_ARGUMENTS,
    )
