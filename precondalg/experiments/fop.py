"""FOP's toy experiments (Moskovitz et al. 2019, Fig. 1): iterations to converge on Booth's and
Himmelblau's functions, FOP against SGD and Adam, with the paths over the contours.

FOP here is the engine row the paper describes for a parameter vector: ``Preconditioned([θ], lr,
structure=dense_gram() (M₀ = I), placement=Flatten(), objective=Hypergradient(), fitter=SGD(ρ),
base="sgd")`` — θ ← θ − lr·MᵀM∇f, M moved by plain SGD on the hypergradient (the `FOP` preset
preconditions weight matrices and conv kernels only, and fits M with Adam; a 2-vector needs this row).

The paper gives neither start points, learning rates, ρ nor the stopping rule.  Calibrated (with the
stopping rule f < 1e-6): Booth from (−4, 4) with SGD and FOP at lr 0.005, ρ = 0.0095, Adam at 0.003;
Himmelblau from (0, −1) with lr 0.001 for all three and ρ = 0.01.  "Seeds" are start points: seed k is
the k-th of n points on a ring (Booth: radius 5 around the minimum (1, 3); Himmelblau: radius 1 around
(0, −1)).  Besides the paper's rows, every method — SGD, momentum, Adam, RMSprop, L-BFGS and FOP — is
also tuned with the same budget (5 learning rates each, fewest iterations from the paper's start).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

import torch

from precondalg.experiments.core import Claim, Context, CurveSpec, Result, experiment
from precondalg.experiments.toy import (
    Descent,
    booth,
    descend,
    edge_notes,
    himmelblau,
    plot_paths,
    ring,
    tune_iterations,
)
from precondalg.families import dense_gram
from precondalg.fitters import TorchOptimizer
from precondalg.objectives import Hypergradient
from precondalg.optim import Preconditioned
from precondalg.placement import Flatten

__all__ = ["TUNED_GRIDS", "fop_row"]

TOL = 1e-6
HIMMELBLAU_MINIMA = ((3.0, 2.0), (-2.805118, 3.131312), (-3.779310, -3.283186), (3.584428, -1.848126))


def fop_row(lr: float, rho: float) -> Callable[[torch.nn.Module], torch.optim.Optimizer]:
    """FOP on a parameter vector (module docstring): P = MᵀM, M₀ = I, M fitted by SGD at rate ρ."""

    def make(model: torch.nn.Module) -> torch.optim.Optimizer:
        return Preconditioned(
            model.parameters(),
            lr,
            structure=dense_gram(),
            placement=Flatten(),
            objective=Hypergradient(),
            fitter=TorchOptimizer(torch.optim.SGD, lr=rho),
            base="sgd",
            name="FOP",
        )

    return make


def _sgd(m: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(m.parameters(), lr=lr)


def _momentum(m: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9)


def _adam(m: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(m.parameters(), lr=lr)


def _rmsprop(m: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.RMSprop(m.parameters(), lr=lr)


def _lbfgs(m: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    return torch.optim.LBFGS(m.parameters(), lr=lr, max_iter=1, history_size=10)


def _grid(*lrs: float) -> list[dict[str, Any]]:
    return [{"lr": v} for v in lrs]


TUNED_GRIDS: dict[str, dict[str, list[dict[str, Any]]]] = {
    "booth": {
        "SGD": _grid(0.05, 0.02, 0.01, 0.005, 0.002),
        "Momentum": _grid(0.02, 0.01, 0.005, 0.002, 0.001),
        "Adam": _grid(1.0, 0.3, 0.1, 0.03, 0.01),
        "RMSprop": _grid(0.3, 0.1, 0.03, 0.01, 0.003),
        "LBFGS": _grid(1.0, 0.5, 0.2, 0.1, 0.05),
        "FOP": _grid(0.05, 0.02, 0.01, 0.005, 0.002),
    },
    "himmelblau": {
        "SGD": _grid(0.03, 0.01, 0.003, 0.001, 0.0003),
        "Momentum": _grid(0.01, 0.003, 0.001, 0.0003, 0.0001),
        "Adam": _grid(0.3, 0.1, 0.03, 0.01, 0.003),
        "RMSprop": _grid(0.3, 0.1, 0.03, 0.01, 0.003),
        "LBFGS": _grid(1.0, 0.5, 0.2, 0.1, 0.05),
        "FOP": _grid(0.03, 0.01, 0.003, 0.001, 0.0003),
    },
}
"""The equal-budget learning-rate grids of the tuned rows (5 points each); FOP keeps the paper row's ρ."""


def _iterations(d: Descent) -> float:
    return math.inf if d.iterations is None else float(d.iterations)


def _curve(d: Descent, points: int = 200) -> list[tuple[float, float]]:
    every = max(1, len(d.values) // points)
    return [(float(t), v) for t, v in enumerate(d.values) if t % every == 0 or t == len(d.values) - 1]


def _toy(
    ctx: Context,
    f: Callable[[torch.Tensor], torch.Tensor],
    name: str,
    start: tuple[float, float],
    starts: list[tuple[float, float]],
    paper_rows: dict[str, Callable[[torch.nn.Module], torch.optim.Optimizer]],
    rho: float,
) -> tuple[dict[str, list[Descent]], dict[str, Descent], dict[str, Any]]:
    """Paper rows and tuned rows from every start; the runs from the paper's start; the tuning record."""
    makers: dict[str, Callable[..., torch.optim.Optimizer]] = {
        "SGD": _sgd,
        "Momentum": _momentum,
        "Adam": _adam,
        "RMSprop": _rmsprop,
        "LBFGS": _lbfgs,
        "FOP": lambda m, lr: fop_row(lr, rho)(m),
    }
    grids = TUNED_GRIDS[name]
    total = sum(len(g) for g in grids.values()) + (len(paper_rows) + len(makers)) * (len(starts) + 1)
    with ctx.progress(total, name) as tick:
        tuning = tune_iterations(f, start, makers, grids, ctx.steps, TOL, tick)
        rows = dict(paper_rows)
        for method, rec in tuning.items():
            rows[f"{method} (tuned)"] = lambda m, method=method, hp=rec["chosen"]: makers[method](m, **hp)
        runs: dict[str, list[Descent]] = {}
        at_start: dict[str, Descent] = {}
        for label, make in rows.items():
            at_start[label] = descend(f, start, make, ctx.steps, TOL)
            tick()
            runs[label] = []
            for s in starts:
                runs[label].append(descend(f, s, make, ctx.steps, TOL))
                tick()
    return runs, at_start, tuning


def _metrics(runs: dict[str, list[Descent]]) -> dict:
    return {
        label: {
            "iterations": [_iterations(d) for d in ds],
            "final f": [d.values[-1] for d in ds],
            "path length": [d.path_length for d in ds],
        }
        for label, ds in runs.items()
    }


def _result(
    ctx: Context,
    function: str,
    start: tuple[float, float],
    ring_: tuple[tuple[float, float], float, list[tuple[float, float]]],
    paper_hp: dict[str, dict[str, float]],
    runs: dict[str, list[Descent]],
    at_start: dict[str, Descent],
    tuning: dict[str, Any],
    claims: list[Claim],
    notes: list[str],
) -> Result:
    """A toy experiment's result: metrics per start, the config, the curve from the paper's start, notes."""
    centre, radius, starts = ring_
    return Result(
        metrics=_metrics(runs),
        claims=claims,
        config={
            "function": function,
            "start": start,
            "ring": {"centre": centre, "radius": radius, "starts": starts},
            "stop": f"f < {TOL:g}",
            "paper rows": paper_hp,
            "max iterations": ctx.steps,
        },
        curves={
            "loss_from_paper_start": CurveSpec(
                {k: [_curve(at_start[k])] for k in at_start},
                f"{function} from {start}: f per iteration",
                "iteration",
                "f",
            )
        },
        tuning=tuning,
        notes=[
            "Seeds are start points on the ring; ∞ = f < 1e-6 not reached within the iteration budget.",
            *notes,
            f"Tuned rows: 5 learning rates each, fewest iterations from {start}.",
            *edge_notes(tuning),
        ],
        figures=["trajectories.png"],
    )


def _count_claim(method: str, start: str, measured: int | None, paper: int, rel: float) -> Claim:
    """The paper's iteration count of `method` from `start`, reproduced within `rel` (relative)."""
    return Claim(
        f"{method} from {start}: {paper} iterations (paper {paper}), within {rel:.0%}",
        str(measured),
        measured is not None and abs(measured - paper) <= rel * paper,
    )


def _median_ratio(a: list[Descent], b: list[Descent]) -> float:
    """Median over starts of iterations(a)/iterations(b); a start where neither converged has no ratio
    and is left out (inf when only a failed; NaN when no start is left)."""
    ratios = [_iterations(x) / _iterations(y) for x, y in zip(a, b) if x.iterations or y.iterations]
    return statistics.median(ratios) if ratios else math.nan


@experiment(
    "FOP-E1",
    paper="FOP (Moskovitz et al. 2019)",
    figure="Fig. 1 left",
    reproduces="Booth's function: iterations to converge, FOP 543 < SGD 832 < Adam 6221",
    minutes=1.0,
    quick_minutes=0.3,
    seeds=10,
    steps=10_000,
    quick_steps=8_000,
)
def booth_experiment(ctx: Context) -> Result:
    """FOP-E1 (module docstring)."""
    start = (-4.0, 4.0)
    starts = ring((1.0, 3.0), 5.0, len(ctx.seeds))
    paper = {
        "SGD": lambda m: _sgd(m, 0.005),
        "FOP": fop_row(0.005, 0.0095),
        "Adam": lambda m: _adam(m, 0.003),
    }
    runs, at_start, tuning = _toy(ctx, booth, "booth", start, starts, paper, 0.0095)
    plot_paths(
        ctx.out / "trajectories.png",
        booth,
        {k: at_start[k] for k in paper},
        (-5.0, 4.0, -1.0, 6.0),
        f"Booth from {start}: paths to f < {TOL:g}",
        [(1.0, 3.0)],
    )
    fop_sgd, adam_sgd = _median_ratio(runs["FOP"], runs["SGD"]), _median_ratio(runs["Adam"], runs["SGD"])
    reached = all(math.dist(d.end, (1.0, 3.0)) < 1e-2 for k in paper for d in runs[k])
    n = {k: at_start[k].iterations for k in paper}
    claims = [
        _count_claim("SGD", "(−4, 4)", n["SGD"], 832, 0.01),
        _count_claim("FOP", "(−4, 4)", n["FOP"], 543, 0.05),
        _count_claim("Adam", "(−4, 4)", n["Adam"], 6221, 0.1),
        Claim(
            f"median over {len(starts)} ring starts of FOP/SGD iterations ∈ [0.5, 0.9] (paper 0.65)",
            f"{fop_sgd:.3f}",
            0.5 <= fop_sgd <= 0.9,
        ),
        Claim("median Adam/SGD iterations ≥ 3 (paper 7.5)", f"{adam_sgd:.2f}", adam_sgd >= 3),
        Claim("every paper row reaches (1, 3) from every start", str(reached), reached),
    ]
    jagged = statistics.median(a.path_length / b.path_length for a, b in zip(runs["FOP"], runs["SGD"]))
    notes = [
        f"FOP's path is {jagged:.3f}× as long as SGD's (median over starts; the paper calls it 'jagged').",
        "Tuned rows: a tuned Adam is not slow "
        f"({tuning['Adam']['chosen']}), so the paper's Adam ordering holds at its learning rate, not at "
        "a tuned one.",
    ]
    paper_hp = {"SGD": {"lr": 0.005}, "FOP": {"lr": 0.005, "rho": 0.0095}, "Adam": {"lr": 0.003}}
    return _result(ctx, "Booth", start, ((1, 3), 5, starts), paper_hp, runs, at_start, tuning, claims, notes)


@experiment(
    "FOP-E2",
    paper="FOP (Moskovitz et al. 2019)",
    figure="Fig. 1 right",
    reproduces="Himmelblau's function: FOP 289 < SGD 386 < Adam 5398, Adam in another basin",
    minutes=1.0,
    quick_minutes=0.3,
    seeds=10,
    steps=10_000,
    quick_steps=8_000,
)
def himmelblau_experiment(ctx: Context) -> Result:
    """FOP-E2 (module docstring)."""
    start = (0.0, -1.0)
    starts = ring((0.0, -1.0), 1.0, len(ctx.seeds))
    paper = {"SGD": lambda m: _sgd(m, 0.001), "FOP": fop_row(0.001, 0.01), "Adam": lambda m: _adam(m, 0.001)}
    runs, at_start, tuning = _toy(ctx, himmelblau, "himmelblau", start, starts, paper, 0.01)
    plot_paths(
        ctx.out / "trajectories.png",
        himmelblau,
        {k: at_start[k] for k in paper},
        (-5.0, 5.0, -5.0, 5.0),
        f"Himmelblau from {start}: paths to f < {TOL:g}",
        HIMMELBLAU_MINIMA,
    )

    def basin(d: Descent) -> int:
        return min(range(4), key=lambda i: math.dist(d.end, HIMMELBLAU_MINIMA[i]))

    other = sum(
        basin(a) != basin(s) and basin(a) != basin(f_)
        for a, s, f_ in zip(runs["Adam"], runs["SGD"], runs["FOP"])
    )
    fop_sgd, adam_sgd = _median_ratio(runs["FOP"], runs["SGD"]), _median_ratio(runs["Adam"], runs["SGD"])
    n = {k: at_start[k].iterations for k in paper}
    claims = [
        _count_claim("SGD", "(0, −1)", n["SGD"], 386, 0.03),
        _count_claim("FOP", "(0, −1)", n["FOP"], 289, 0.05),
        _count_claim("Adam", "(0, −1)", n["Adam"], 5398, 0.1),
        Claim(
            f"median over {len(starts)} starts of FOP/SGD ∈ [0.5, 0.9] (paper 0.75)",
            f"{fop_sgd:.3f}",
            0.5 <= fop_sgd <= 0.9,
        ),
        Claim("median Adam/SGD ≥ 3 (paper 14)", f"{adam_sgd:.2f}", adam_sgd >= 3),
        Claim(
            "Adam ends in another minimum than SGD and FOP from (0, −1) (paper: yes)",
            f"Adam {at_start['Adam'].end[0]:.3f}, {at_start['Adam'].end[1]:.3f}; SGD "
            f"{at_start['SGD'].end[0]:.3f}, {at_start['SGD'].end[1]:.3f}",
            basin(at_start["Adam"]) != basin(at_start["SGD"])
            and basin(at_start["Adam"]) != basin(at_start["FOP"]),
        ),
    ]
    notes = [
        f"Adam ends in another basin than both SGD and FOP from {other} of {len(starts)} ring starts.",
        f"Tuned rows: the tuned Adam takes {tuning['Adam']['chosen']}.",
    ]
    paper_hp = {"SGD": {"lr": 0.001}, "FOP": {"lr": 0.001, "rho": 0.01}, "Adam": {"lr": 0.001}}
    return _result(
        ctx, "Himmelblau", start, ((0, -1), 1, starts), paper_hp, runs, at_start, tuning, claims, notes
    )
