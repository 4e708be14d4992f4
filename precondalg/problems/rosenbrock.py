"""The two-dimensional Rosenbrock function as a model for `torch.optim` optimizers, APO included (Bae et
al. 2022, App. C.1, Fig. 7; also Li 2019, Fig. 1).

    f(x, y) = (a − x)² + b (y − x²)²,   a = 1, b = 100 (the standard constants),

minimum f = 0 at (a, a²); from the default start (−1, 1) (the PSGD paper's; (−1.5, 2.5) is the usual
other one) a descent method has to follow the curved valley y ≈ x², along which the curvature is
about 0.4 while across it it is about 1000 (the Hessian at the minimum has eigenvalues 1001.6 and 0.40).
Everything is float64.

The point θ = (x, y) is held as the weight w (2 × 1) of ``nn.Linear(1, 2, bias=False)`` applied to the
constant input c (`Rosenbrock.input_scale`, default 1): θ = c·w, the loss is f(model(c)).  This is
what lets `precondalg.optim.APO` run on a problem without data — its proximal objective evaluates the
model at the lookahead weights through ``torch.func.functional_call`` — and it gives APO-Precond a full
2 × 2 preconditioner: the per-layer eigenbasis structure on a 2 × 1 weight is
P̂ = a_φ² B diag(s)² Bᵀ, B 2 × 2 and s ∈ R², any positive semi-definite 2 × 2 matrix.  The input scale
fixes what the identity means: a step −P̂∇_w in w is −c²P̂∇f in θ, so P̂ = I (APO's identity
initialisation) is the θ-space preconditioner c²·I, and a weight-space discrepancy λ‖w′ − w‖²/2 is
(λ/c²)‖θ′ − θ‖²/2.

`minimize` is the full-batch loop (there is no data: every step is the exact gradient); an APO optimizer
is stepped with ``step(batch=(inputs, None))`` (λ_FSD = 0: there is no function space to compare, no B′).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import torch
from torch import nn

from precondalg.problems._loop import TrainResult, counting_skips, is_proximal

__all__ = ["Rosenbrock", "RosenbrockRun", "minimize", "rosenbrock"]

F64 = torch.float64


def rosenbrock(point: torch.Tensor, a: float = 1.0, b: float = 100.0) -> torch.Tensor:
    """f(x, y) = (a − x)² + b(y − x²)² of ``point[..., 0] = x``, ``point[..., 1] = y``.

    Examples:
        >>> rosenbrock(torch.tensor([-1.0, 1.0])).item(), rosenbrock(torch.tensor([1.0, 1.0])).item()
        (4.0, 0.0)
    """
    x, y = point[..., 0], point[..., 1]
    return (a - x) ** 2 + b * (y - x**2) ** 2


@dataclasses.dataclass(frozen=True)
class Rosenbrock:
    """The problem: f with constants `a`, `b`, started at `start`, the point held as c·w (see the
    module docstring).

    Attributes:
        start: (x₀, y₀).
        a: the constant a (the minimum is at (a, a²)).
        b: the constant b (the valley's steepness).
        input_scale: c > 0, the constant input of the linear model (θ = c·w).

    Raises:
        ValueError: c not a positive finite number, a start that is not two finite numbers.
    """

    start: tuple[float, float] = (-1.0, 1.0)
    a: float = 1.0
    b: float = 100.0
    input_scale: float = 1.0

    def __post_init__(self) -> None:
        c = self.input_scale
        if not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
            raise ValueError(f"Rosenbrock: input_scale must be a positive finite number; got {c!r}")
        if len(self.start) != 2 or not all(math.isfinite(float(v)) for v in self.start):
            raise ValueError(f"Rosenbrock: start must be two finite numbers; got {self.start!r}")

    @property
    def inputs(self) -> torch.Tensor:
        """The constant input [[c]] (a batch of one)."""
        return torch.full((1, 1), float(self.input_scale), dtype=F64)

    @property
    def minimum(self) -> torch.Tensor:
        """The minimiser (a, a²)."""
        return torch.tensor([self.a, self.a**2], dtype=F64)

    def make_model(self) -> nn.Linear:
        """``nn.Linear(1, 2, bias=False)`` in float64 with weight start / c, so that model(c) = start."""
        model = nn.Linear(1, 2, bias=False, dtype=F64)
        with torch.no_grad():
            model.weight.copy_(torch.tensor(self.start, dtype=F64)[:, None] / self.input_scale)
        return model

    def point(self, model: nn.Module) -> torch.Tensor:
        """θ = (x, y) held by `model`: its output on the input c, shape (2,), detached."""
        with torch.no_grad():
            return model(self.inputs)[0]

    def loss_fn(self, outputs: torch.Tensor, targets: Any = None) -> torch.Tensor:
        """f of the model's output (shape (1, 2)), the `loss_fn(outputs, targets)` that `APO` expects
        (there are no targets: `targets` is ignored)."""
        return rosenbrock(outputs, self.a, self.b).sum()

    def value(self, point: torch.Tensor) -> torch.Tensor:
        """f(point)."""
        return rosenbrock(point, self.a, self.b)

    def gradient(self, point: torch.Tensor) -> torch.Tensor:
        """∇f = (−2(a − x) − 4bx(y − x²), 2b(y − x²)) in closed form."""
        x, y = point[0], point[1]
        return torch.stack([-2 * (self.a - x) - 4 * self.b * x * (y - x**2), 2 * self.b * (y - x**2)])

    def hessian(self, point: torch.Tensor) -> torch.Tensor:
        """∇²f = [[2 − 4b(y − 3x²), −4bx], [−4bx, 2b]] in closed form."""
        x, y = point[0], point[1]
        off = -4 * self.b * x
        return torch.stack(
            [
                torch.stack([2 - 4 * self.b * (y - 3 * x**2), off]),
                torch.stack([off, off.new_tensor(2 * self.b)]),
            ]
        )

    def config(self) -> dict[str, Any]:
        """The construction, as plain numbers and strings (for a results file)."""
        return {
            "problem": "f(x, y) = (a - x)^2 + b (y - x^2)^2 (Rosenbrock), float64",
            "a": self.a,
            "b": self.b,
            "start": list(self.start),
            "input_scale": self.input_scale,
            "model": "nn.Linear(1, 2, bias=False) on the constant input c: (x, y) = c * weight",
        }


@dataclasses.dataclass
class RosenbrockRun(TrainResult):
    """What `minimize` returns: `TrainResult`'s fields (``losses[t]`` is f before step t + 1) and the
    path.

    Attributes:
        points: θ before each step and, unless the run diverged, after the last one (``len(losses)``
            or ``len(losses) + 1`` rows of (x, y)); empty unless ``minimize(record_points=True)``.
    """

    points: list[tuple[float, float]] = dataclasses.field(default_factory=list)


def minimize(
    problem: Rosenbrock,
    model: nn.Linear,
    opt: torch.optim.Optimizer,
    steps: int,
    *,
    diverge_factor: float = 1e6,
    record_points: bool = False,
) -> RosenbrockRun:
    """`steps` steps of `opt` on f: each computes f(model(c)), backpropagates it and steps; an APO
    optimizer (objective `precondalg.objectives.Proximal`) is stepped with
    ``opt.step(batch=(inputs, None))``.  The run stops where f is non-finite or above
    ``diverge_factor`` × its starting value (``final`` is then inf and ``diverged_at`` the step).

    Raises:
        ValueError: steps < 0, diverge_factor ≤ 1.

    Examples:
        >>> p = Rosenbrock()
        >>> model = p.make_model()
        >>> run = minimize(p, model, torch.optim.SGD(model.parameters(), lr=1e-3), 3)
        >>> run.losses[0], len(run.losses), run.final < run.losses[0]
        (4.0, 3, True)
    """
    if steps < 0:
        raise ValueError(f"minimize: steps must be ≥ 0; got {steps}")
    if not diverge_factor > 1:
        raise ValueError(f"minimize: diverge_factor must be > 1; got {diverge_factor!r}")
    proximal = is_proximal(opt)
    inputs = problem.inputs
    losses: list[float] = []
    points: list[tuple[float, float]] = []
    diverged_at = None
    with counting_skips() as skipped:
        start = time.perf_counter()
        for t in range(1, steps + 1):
            opt.zero_grad(set_to_none=True)
            out = model(inputs)
            loss = problem.loss_fn(out)
            value = loss.item()
            losses.append(value)
            if record_points:
                points.append(tuple(out[0].tolist()))
            if not math.isfinite(value) or value > diverge_factor * losses[0]:
                diverged_at = t
                break
            loss.backward()
            if proximal:
                opt.step(batch=(inputs, None))
            else:
                opt.step()
        seconds = time.perf_counter() - start
    final = math.inf
    if diverged_at is None:
        end = problem.point(model)
        final = problem.value(end).item()
        if record_points:
            points.append(tuple(end.tolist()))
        if not math.isfinite(final) or (losses and final > diverge_factor * losses[0]):
            final, diverged_at = math.inf, steps + 1
    return RosenbrockRun(
        losses=losses,
        final=final,
        diverged_at=diverged_at,
        seconds=seconds,
        skipped=skipped.value,
        points=points,
    )
