"""Two-dimensional test functions (Booth, Himmelblau, Rosenbrock and its LODO rescaling), a descent loop
that records the path, an equal-budget tuning of iterations-to-converge, and the contour plot of paths.

Every optimizer runs on a `Point` model (θ ∈ R², float64) through the harness's `optimizer_step`, so
torch.optim's optimizers, L-BFGS (closure), PSGD (closure without backward) and APO (batch) are stepped
each in its own convention.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from precondalg.experiments.harness import optimizer_step
from precondalg.experiments.tasks import Point

__all__ = [
    "Descent",
    "MakeOpt",
    "booth",
    "descend",
    "edge_notes",
    "himmelblau",
    "plot_paths",
    "ring",
    "tune_iterations",
]

F64 = torch.float64
MakeOpt = Callable[[torch.nn.Module], torch.optim.Optimizer]


def booth(p: torch.Tensor) -> torch.Tensor:
    """(x + 2y − 7)² + (2x + y − 5)², minimum 0 at (1, 3) (a quadratic, Hessian eigenvalues 18 and 2)."""
    x, y = p[..., 0], p[..., 1]
    return (x + 2 * y - 7) ** 2 + (2 * x + y - 5) ** 2


def himmelblau(p: torch.Tensor) -> torch.Tensor:
    """(x² + y − 11)² + (x + y² − 7)², four minima with value 0."""
    x, y = p[..., 0], p[..., 1]
    return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2


def ring(centre: tuple[float, float], radius: float, count: int) -> list[tuple[float, float]]:
    """`count` points on a circle around `centre`, at angles 2πk/count."""
    return [
        (
            centre[0] + radius * math.cos(2 * math.pi * k / count),
            centre[1] + radius * math.sin(2 * math.pi * k / count),
        )
        for k in range(count)
    ]


@dataclasses.dataclass
class Descent:
    """One run: the iterations until f < tol (None: not within the budget, or diverged), every point
    visited (start included), f at each point, and whether it diverged (non-finite or f > 1e12)."""

    iterations: int | None
    path: list[tuple[float, float]]
    values: list[float]
    diverged: bool

    @property
    def end(self) -> tuple[float, float]:
        return self.path[-1]

    def first_below(self, level: float) -> int | None:
        """The first iteration t with f(θ_t) < level (None: never)."""
        return next((t for t, v in enumerate(self.values) if v < level), None)

    @property
    def path_length(self) -> float:
        return sum(math.dist(a, b) for a, b in zip(self.path, self.path[1:]))


def descend(
    f: Callable[[torch.Tensor], torch.Tensor],
    start: Sequence[float],
    make: MakeOpt,
    steps: int,
    tol: float | None = 1e-6,
) -> Descent:
    """Run ``make(Point(start))`` on f for at most `steps` updates; stop once f(θ) < tol.

    ``iterations`` counts the updates made before f first falls below tol (0 if it starts there).
    """
    model = Point(torch.tensor(list(start), dtype=F64))
    opt = make(model)

    def loss_fn(theta: torch.Tensor, _: Any) -> torch.Tensor:
        return f(theta)

    batch = (None, None)
    path = [tuple(model.theta.detach().tolist())]
    values = [float(f(model.theta.detach()))]
    for t in range(steps):
        if tol is not None and values[-1] < tol:
            return Descent(t, path, values, False)
        optimizer_step(opt, model, loss_fn, batch, batch)
        theta = model.theta.detach()
        value = float(f(theta))
        path.append(tuple(theta.tolist()))
        values.append(value)
        if not math.isfinite(value) or value > 1e12:
            return Descent(None, path, values, True)
    reached = tol is not None and values[-1] < tol
    return Descent(steps if reached else None, path, values, False)


def tune_iterations(
    f: Callable[[torch.Tensor], torch.Tensor],
    start: Sequence[float],
    makers: dict[str, Callable[..., torch.optim.Optimizer]],
    grids: dict[str, list[dict[str, Any]]],
    steps: int,
    tol: float,
    tick: Callable[[], None] = lambda: None,
) -> dict[str, dict[str, Any]]:
    """For each method, every point of its grid from `start`; the point with the fewest iterations to
    f < tol wins (ties: the first; none converging: the lowest final f).  ``at_grid_edge`` flags a winner
    at either end of its grid (a wider grid might do better: the reports say so).

    Raises:
        ValueError: grids of different sizes (the budgets would differ).
    """
    sizes = {name: len(g) for name, g in grids.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"tuning grids must have equal sizes (equal budgets); got {sizes}")
    out = {}
    for name, grid in grids.items():
        trials = []
        make = makers[name]
        for hp in grid:
            d = descend(f, start, lambda m, hp=hp, make=make: make(m, **hp), steps, tol)
            trials.append((hp, d.iterations, d.values[-1]))
            tick()
        done = [t for t in trials if t[1] is not None]
        best = (
            min(done, key=lambda t: t[1])
            if done
            else min(trials, key=lambda t: t[2] if math.isfinite(t[2]) else math.inf)
        )
        edge = best[0] in (grid[0], grid[-1]) and len(grid) > 1
        out[name] = {
            "grid": grid,
            "chosen": best[0],
            "at_grid_edge": edge,
            "trials": [[hp, it, fv] for hp, it, fv in trials],
        }
    return out


def edge_notes(tuning: dict[str, dict[str, Any]]) -> list[str]:
    """A note per tuned method whose chosen point lies at an end of its grid."""
    return [
        f"{name} (tuned): the chosen {rec['chosen']} is at an end of its grid {rec['grid']}; a wider "
        "grid might do better."
        for name, rec in tuning.items()
        if rec.get("at_grid_edge")
    ]


def plot_paths(
    path: Path,
    f: Callable[[torch.Tensor], torch.Tensor],
    runs: dict[str, Descent],
    box: tuple[float, float, float, float],
    title: str,
    minima: Sequence[tuple[float, float]] = (),
) -> None:
    """The paths over log-spaced contours of f in ``box = (x0, x1, y0, y1)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    x0, x1, y0, y1 = box
    xs, ys = torch.linspace(x0, x1, 300, dtype=F64), torch.linspace(y0, y1, 300, dtype=F64)
    X, Y = torch.meshgrid(xs, ys, indexing="xy")
    Z = f(torch.stack([X, Y], -1)).numpy()
    fig, ax = plt.subplots(figsize=(6.0, 5.0), dpi=100)
    levels = np.logspace(np.log10(max(Z.min(), 1e-3)), np.log10(Z.max()), 25)
    ax.contour(X.numpy(), Y.numpy(), Z, levels=levels, cmap="viridis", linewidths=0.7, alpha=0.6)
    for name, d in runs.items():
        p = np.array(d.path)
        label = f"{name}: {d.iterations if d.iterations is not None else '—'} iterations"
        ax.plot(p[:, 0], p[:, 1], lw=1.2, label=label)
    if runs:
        s = next(iter(runs.values())).path[0]
        ax.plot(*s, "o", color="red", ms=6, label="start")
    for m in minima:
        ax.plot(*m, "*", color="k", ms=9)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
