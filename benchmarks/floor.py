"""The arithmetic floor of a training step: its multiply-adds, and the time they take at the machine's
measured matmul rate (benchmarks/suite.py reports each measured step beside it).

floor flops = forward + backward of the model (`flops_of`: ``torch.utils.flop_counter.FlopCounterMode``)
+ the preconditioner's application (`apply_flops`) + its fit (`fit_flops`), all counted as 2 flops per
multiply-add of a matrix product; elementwise work (the base rule, a meta-optimizer's moments, finiteness
checks) is left out, as FlopCounterMode leaves it out of the model's count.  floor time = floor flops /
the rate of one float32 512×512 @ 512×512 product on this machine (`matmul_rate`).

Application: Σ over the preconditioned blocks of 2 × ``P.cost().matvec`` (multiply-adds of P @ x for one
vector) × the number of columns of the placed gradient (the block's entries over P's size: the output
units of a weight under ``InputSide``, the channel pairs of a conv kernel under ``Spatial``, 1 for a
flattened, two-sided or concatenated gradient).

Fit, per objective (`FIT_RULES`):

- ``Hypergradient`` (FOP, S-HD, PP-HD, LODO): the vector-Jacobian product of P's application with respect
  to φ, counted as 2 × the application (the reverse pass of a product needs one product per input), on
  the steps that fit.
- ``GradientStatistics`` (Shampoo): every step the statistic of each Kronecker factor, the mode-i Gram
  GᵢGᵢᵀ of the gradient (nᵢ·N multiply-adds for a factor of size nᵢ of a block of N entries); every
  ``update_every`` steps a root per factor: ``torch.linalg.eigh`` with eigenvectors, 9nᵢ³ flops (Golub &
  Van Loan's count for the symmetric QR algorithm), and V diag(λᵉ) Vᵀ, 2nᵢ³ flops, amortised.
- ``LayerStatistics`` (K-FAC): every step Ā = E[aaᵀ] and Ḡ = E[ssᵀ] over the r rows of the layer's input
  and output gradient (r·nᵢ² multiply-adds per factor; r = batch, batch × positions for a token model,
  batch × output pixels for a conv; 0 for a layer whose forward hook does not run, as
  ``nn.MultiheadAttention``'s ``out_proj``), and the damped inverse of each factor every ``update_every``
  steps by the same eigh count as Shampoo's roots.
- ``Fisher`` with the ``LieGroup`` fitter (PSGD): for Q = Q₁ ⊗ … ⊗ Q_K, a = Q h and b = Q⁻ᵀ v (one
  matvec and one triangular solve of every factor along its axis), the factor terms AᵢAᵢᵀ and BᵢBᵢᵀ (two
  more matvec-sized products per factor), and the group step Qᵢ ← Qᵢ − μ RᵢQᵢ (nᵢ columns of Qᵢ's matvec),
  times the probability of a fit per step.
- ``Proximal`` (APO): the meta-update's three forward passes and its backward pass through the
  one-step lookahead have no closed form in the structure's cost: they are counted by FlopCounterMode
  (the flops of a training step that meta-updates minus those of one that does not), amortised over
  ``meta_every``.

Tests never assert on timings; tests/test_benchmarks_floor.py checks the counts.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from precondalg.structures import Gram, Kronecker, Structure

EIGH_FLOPS = 9
"""× n³: a symmetric eigendecomposition with eigenvectors (Golub & Van Loan, the symmetric QR algorithm)."""
ROOT_FLOPS = EIGH_FLOPS + 2
"""× n³: a matrix function by eigh (Shampoo's roots, K-FAC's inverses): the eigh and V diag(f(λ)) Vᵀ."""
RATE_SIZE = 512


# ------------------------------------------------------------------------------------------- counting
def flops_of(fn: Callable[[], Any]) -> int:
    """The flops FlopCounterMode counts while fn runs (matrix products, convolutions, attention; 2 per
    multiply-add; elementwise operations, eigh and triangular solves count 0)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def forward_backward_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """The counted flops of cross_entropy(model(x), y).backward() (the gradients it leaves are cleared)."""
    flops = flops_of(lambda: nn.functional.cross_entropy(model(x), y).backward())
    for p in model.parameters():
        p.grad = None
    return flops


def matmul_rate(
    device: torch.device, n: int = RATE_SIZE, repeats: int = 30, sync: Callable[[], None] = lambda: None
) -> dict[str, float]:
    """The machine's float32 matmul rate: the median time of an (n, n) @ (n, n) product (after 5 untimed
    ones) and 2n³ / that time; the best time and its rate beside them."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device)
    b = torch.randn(n, n, generator=g).to(device)
    for _ in range(5):
        a @ b
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t0)
    flops = 2 * n**3
    median, best = statistics.median(times), min(times)
    return {"n": n, "median_s": median, "flops_per_s": flops / median, "best_flops_per_s": flops / best}


# ---------------------------------------------------------------------------------------- application
def columns(params: Sequence[torch.Tensor], P: Structure) -> int:
    """The columns of the placed gradient that P multiplies: the block's entries over P's size."""
    entries = sum(p.numel() for p in params)
    n = P.shape[1]
    if entries % n:
        raise ValueError(f"a block of {entries} entries does not fill columns of P's size {n}")
    return entries // n


def apply_flops(preconditioners: Iterable[tuple[Sequence[torch.Tensor], Structure]]) -> int:
    """2 × Σ P.cost().matvec × columns over the blocks (`Preconditioned.preconditioners()`)."""
    return sum(2 * P.cost().matvec * columns(params, P) for params, P in preconditioners)


def factors(P: Structure) -> list[Structure]:
    """P's Kronecker factors (P itself where it is not a Kronecker product)."""
    return list(P.factors) if isinstance(P, Kronecker) else [P]


def factor_sizes(P: Structure) -> list[int]:
    return [f.shape[0] for f in factors(P)]


# ------------------------------------------------------------------------------------------------ fit
def hypergradient_fit(preconditioners: Sequence[tuple[Sequence[torch.Tensor], Structure]], **_: Any) -> int:
    """The VJP of P's application with respect to φ: 2 × the application."""
    return 2 * apply_flops(preconditioners)


def gradient_statistics_fit(
    preconditioners: Sequence[tuple[Sequence[torch.Tensor], Structure]], *, root_every: int = 1, **_: Any
) -> float:
    """Shampoo: the mode-i Grams every step (2·nᵢ·N flops per factor) and a root per factor every
    `root_every` steps (ROOT_FLOPS·nᵢ³), amortised."""
    total = 0.0
    for params, P in preconditioners:
        N = sum(p.numel() for p in params)
        sizes = factor_sizes(P)
        total += sum(2 * n * N for n in sizes) + sum(ROOT_FLOPS * n**3 for n in sizes) / root_every
    return total


def layer_statistics_fit(
    preconditioners: Sequence[tuple[Sequence[torch.Tensor], Structure]],
    *,
    rows: Sequence[int],
    root_every: int = 1,
    **_: Any,
) -> float:
    """K-FAC: Ā and Ḡ over each layer's `rows` every step (2·r·nᵢ² flops per factor) and a damped
    inverse per factor every `root_every` steps (ROOT_FLOPS·nᵢ³), amortised; a layer with 0 rows (its
    hooks did not run) fits nothing."""
    if len(rows) != len(preconditioners):
        raise ValueError(f"{len(rows)} row counts for {len(preconditioners)} blocks")
    total = 0.0
    for (_, P), r in zip(preconditioners, rows):
        if r:
            sizes = factor_sizes(P)
            total += sum(2 * r * n * n for n in sizes) + sum(ROOT_FLOPS * n**3 for n in sizes) / root_every
    return total


def lie_group_fit(
    preconditioners: Sequence[tuple[Sequence[torch.Tensor], Structure]], *, probability: float = 1.0, **_: Any
) -> float:
    """PSGD's fit of Q (P = QᵀQ, Q = Q₁ ⊗ … ⊗ Q_K): per factor of size nᵢ with matvec mᵢ and solve sᵢ
    multiply-adds, (N/nᵢ)·(mᵢ + sᵢ) for a = Qh and b = Q⁻ᵀv, 2·(N/nᵢ)·mᵢ for AᵢAᵢᵀ and BᵢBᵢᵀ, and nᵢ·mᵢ
    for RᵢQᵢ; 2 flops each, times the probability of a fit."""
    total = 0.0
    for params, P in preconditioners:
        N = sum(p.numel() for p in params)
        for f in factors(P):
            Q = f.Q if isinstance(f, Gram) else f
            n, cost = Q.shape[0], Q.cost()
            solve = cost.solve if cost.solve is not None else cost.matvec
            total += 2 * ((N // n) * (3 * cost.matvec + solve) + n * cost.matvec)
    return probability * total


def counted_fit(*_: Any, counted: float | None = None, **__: Any) -> float:
    """A fit without a closed form in the structures' costs (APO's meta-update): FlopCounterMode's count,
    amortised by the caller."""
    if counted is None:
        raise ValueError("this objective's fit is counted by FlopCounterMode: pass counted=")
    return counted


FIT_RULES: dict[str, Callable[..., float]] = {
    "Hypergradient": hypergradient_fit,
    "GradientStatistics": gradient_statistics_fit,
    "LayerStatistics": layer_statistics_fit,
    "Fisher": lie_group_fit,
    "Proximal": counted_fit,
}
"""objective class name (``Preconditioned.configuration()["objective"]``) → its fit's flops per step."""


def fit_flops(
    objective: str,
    preconditioners: Sequence[tuple[Sequence[torch.Tensor], Structure]],
    *,
    probability: float = 1.0,
    root_every: int = 1,
    rows: Sequence[int] | None = None,
    counted: float | None = None,
) -> float:
    """The flops of the fit per step, by `FIT_RULES[objective]`: `probability` is the share of steps that
    fit (0: fitting disabled; PSGD's update_probability; APO's 1/meta_every), `root_every` the steps
    between roots (Shampoo, K-FAC; their statistics join every step), `rows` the rows of each K-FAC
    layer's statistics, `counted` a counted fit (APO's meta-update, per meta-update)."""
    if objective not in FIT_RULES:
        raise ValueError(f"no floor rule for the objective {objective!r}; known: {sorted(FIT_RULES)}")
    if probability == 0:
        return 0.0
    rule = FIT_RULES[objective]
    if rule is lie_group_fit:
        return lie_group_fit(preconditioners, probability=probability)
    flops = rule(preconditioners, root_every=root_every, rows=rows or [], counted=counted)
    if rule in (hypergradient_fit, counted_fit):
        flops *= probability
    return flops


def layer_rows(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """The rows of each nn.Linear's and nn.Conv2d's statistics (K-FAC's Ā and Ḡ) in a forward pass on x,
    by the name of the layer's weight: batch × positions for a Linear, batch × output pixels for a Conv2d.
    A layer that its parent calls without its forward (nn.MultiheadAttention's out_proj) is absent."""
    rows: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):

            def hook(m: nn.Module, inputs: Any, output: Any, name: str = name) -> None:
                rows[f"{name}.weight" if name else "weight"] = inputs[0].numel() // m.in_features

        elif isinstance(module, nn.Conv2d):

            def hook(m: nn.Module, inputs: Any, output: Any, name: str = name) -> None:
                rows[f"{name}.weight" if name else "weight"] = output.numel() // m.out_channels

        else:
            continue
        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return rows


# --------------------------------------------------------------------------------------------- memory
def peak_step_memory(
    step: Callable[[], Any], device: torch.device, held: Callable[[], int], steps: int = 1
) -> dict[str, float]:
    """Peak memory of a training step: `held` bytes live when it starts (parameters, gradients,
    optimizer state) plus the highest excess over the bytes live at a step's start during that step,
    the largest over `steps` consecutive steps (a method's period, so that a step doing its periodic
    work is among them).  CUDA: max_memory_allocated minus memory_allocated at each step's start.  CPU:
    torch.profiler(profile_memory=True) records every allocation and free of torch's allocator; one
    step runs under it before the measured ones, and a measured step's excess is the largest running
    sum of its allocations minus frees (the frees of the earlier steps' tensors are then known to the
    profiler)."""
    if device.type == "cuda":
        excess = 0
        for _ in range(steps):
            torch.cuda.synchronize(device)
            start = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            step()
            torch.cuda.synchronize(device)
            excess = max(excess, torch.cuda.max_memory_allocated(device) - start)
        return {
            "held_bytes": held(),
            "excess_bytes": excess,
            "steps": steps,
            "method": "cuda max_memory_allocated",
        }
    from torch.profiler import ProfilerActivity, profile, record_function

    step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
        for _ in range(steps):
            with record_function("benchmark::measured_step"):
                step()
    events = prof.profiler.kineto_results.events()
    windows = sorted((e.start_ns(), e.end_ns()) for e in events if e.name() == "benchmark::measured_step")
    if len(windows) != steps:
        raise RuntimeError(f"the profiler recorded {len(windows)} measured steps; expected {steps}")
    memory = sorted((e for e in events if e.name() == "[memory]"), key=lambda e: e.start_ns())
    excess, level, i = 0, 0, 0
    for lo, hi in windows:
        while i < len(memory) and memory[i].start_ns() < lo:
            level += memory[i].nbytes()
            i += 1
        base = peak = level
        while i < len(memory) and memory[i].start_ns() <= hi:
            level += memory[i].nbytes()
            peak = max(peak, level)
            i += 1
        excess = max(excess, peak - base)
    return {
        "held_bytes": held(),
        "excess_bytes": excess,
        "steps": steps,
        "method": "torch.profiler profile_memory (CPU allocator events)",
    }


def tensor_bytes(tensors: Iterable[torch.Tensor | None], seen: set | None = None) -> int:
    """Bytes of the tensors, each storage once (None entries skipped)."""
    from precondalg.experiments.memory import storage_bytes

    return storage_bytes([t for t in tensors if t is not None], set() if seen is None else seen)


def floor_seconds(flops: float, rate: float) -> float:
    """flops at `rate` flops per second (NaN where there is no rate)."""
    return flops / rate if rate and math.isfinite(rate) else math.nan
