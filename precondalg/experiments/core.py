"""The experiment registry and the run that writes an experiment's files.

An experiment is a function ``run(ctx: Context) -> Result`` registered with `experiment(...)`: its name
(the paper's experiment id, e.g. "FOP-E1"), the paper and figure it reproduces, and its expected minutes.
`run_experiment` gives it the seeds, steps and output folder, times it, and writes

- ``results.json``: the experiment's metadata, the config, the seeds, per-method metrics (mean ± std over
  seeds, and every seed's value), the claims checked against the paper with their outcome, the tuning
  grids and choices, the machine, the versions and the wall time;
- ``<curve>.csv`` and ``<curve>.png`` per curve (`precondalg.experiments.output`), and any figure the
  experiment draws itself;
- the summary tables (Markdown) in ``summary.md``, also printed at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from precondalg.experiments.machine import describe_machine, machine_info
from precondalg.experiments.output import (
    Curve,
    fmt,
    markdown_table,
    mean_std,
    plot_curve,
    progress,
    write_curve_csv,
    write_json,
)

__all__ = [
    "EXPERIMENTS",
    "Claim",
    "Context",
    "CurveSpec",
    "Experiment",
    "Result",
    "experiment",
    "run_experiment",
]


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A registered experiment (see the module docstring).

    Attributes:
        name: the id, e.g. "FOP-E1".
        paper: the paper, e.g. "FOP (Moskovitz et al. 2019)".
        figure: the figure or table reproduced.
        reproduces: what it reproduces, in one line.
        minutes: expected minutes of the full run on a 2-core CPU.
        quick_minutes: expected minutes with ``--quick``.
        seeds: the default number of seeds (≥ 3); ``--quick`` runs `QUICK_SEEDS` of them at most.
        steps: the default number of steps (iterations) of a run.
        quick_steps: the steps with ``--quick``.
        run: the experiment.
        known_failures: the beginnings of the claims that are known not to reproduce (each page says why);
            ``run --strict`` fails on any other claim that fails, and on a known failure that holds.
        unsettled: the beginnings of the claims whose outcome a round-off-level change of the run flips
            (a chaotic training regime: perturbing the initial weights by a relative 1e-7, or another
            CPU's floating-point kernels, changes the verdict). Their outcome is reported, marked, and
            not checked by ``run --strict``; each page shows the evidence. None is also a known failure.
    """

    name: str
    paper: str
    figure: str
    reproduces: str
    minutes: float
    quick_minutes: float
    seeds: int
    steps: int
    quick_steps: int
    run: Callable[[Context], Result]
    known_failures: tuple[str, ...] = ()
    unsettled: tuple[str, ...] = ()

    def is_unsettled(self, claim: Claim) -> bool:
        """Whether `claim`'s outcome is one that round-off flips (see `unsettled`)."""
        return claim.claim.startswith(self.unsettled) if self.unsettled else False


QUICK_SEEDS = 3
"""The most seeds a ``--quick`` run takes (unless ``--seeds`` says otherwise)."""

EXPERIMENTS: dict[str, Experiment] = {}
"""Every registered experiment by name, in registration order (the papers' order)."""


def experiment(
    name: str,
    *,
    paper: str,
    figure: str,
    reproduces: str,
    minutes: float,
    quick_minutes: float,
    seeds: int = 3,
    steps: int,
    quick_steps: int | None = None,
    known_failures: tuple[str, ...] = (),
    unsettled: tuple[str, ...] = (),
) -> Callable[[Callable[[Context], Result]], Callable[[Context], Result]]:
    """Register ``run(ctx) -> Result`` as the experiment `name` (metadata as in `Experiment`).

    Raises:
        ValueError: a duplicate name, fewer than 3 seeds, or a claim both unsettled and a known failure.
    """

    def register(run: Callable[[Context], Result]) -> Callable[[Context], Result]:
        if name in EXPERIMENTS:
            raise ValueError(f"experiment {name!r} is registered twice")
        if seeds < 3:
            raise ValueError(f"experiment {name!r}: at least 3 seeds; got {seeds}")
        both = [u for u in unsettled for k in known_failures if u.startswith(k) or k.startswith(u)]
        if both:
            raise ValueError(f"experiment {name!r}: unsettled claims are not known failures; both: {both}")
        EXPERIMENTS[name] = Experiment(
            name, paper, figure, reproduces, minutes, quick_minutes, seeds, steps, quick_steps or steps, run,
            tuple(known_failures), tuple(unsettled),
        )
        return run

    return register


@dataclasses.dataclass
class Context:
    """What an experiment is run with.

    Attributes:
        seeds: the seeds (0 … n − 1).
        steps: the steps of a run.
        quick: whether ``--quick`` was asked (experiments may also shrink their grids; they say how).
        out: the output folder (exists).
        show_progress: whether to draw progress bars.
    """

    seeds: list[int]
    steps: int
    quick: bool
    out: Path
    show_progress: bool = True

    @contextlib.contextmanager
    def progress(self, total: int, desc: str) -> Iterator[Callable[[], None]]:
        """A progress bar of `total` units; yields the function that advances it by one."""
        bar = progress(total, desc, self.show_progress)
        try:
            yield lambda: bar.update(1)
        finally:
            bar.close()


@dataclasses.dataclass(frozen=True)
class Claim:
    """A claim of the paper, checked: what is claimed (with the paper's number), what was measured, and
    whether it holds."""

    claim: str
    measured: str
    holds: bool


@dataclasses.dataclass(frozen=True)
class CurveSpec:
    """A curve to write (CSV) and plot (PNG): per method, one list of (x, value) per seed."""

    data: Curve
    title: str
    x_label: str
    y_label: str
    hline: float | None = None


@dataclasses.dataclass
class Result:
    """What an experiment returns.

    Attributes:
        metrics: method → metric → one value per seed.
        claims: the paper's claims, checked.
        config: every setting of the run (learning rates, starts, stopping rule, …).
        curves: curve name → `CurveSpec`.
        tuning: method → {"grid": …, "chosen": …, "trials": …} where the experiment tuned.
        notes: remarks for the summary (e.g. where the setup departs from the paper and why).
        figures: file names of figures the experiment wrote into ``ctx.out`` itself.
    """

    metrics: dict[str, dict[str, list[float]]]
    claims: list[Claim]
    config: dict[str, Any]
    curves: dict[str, CurveSpec] = dataclasses.field(default_factory=dict)
    tuning: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    figures: list[str] = dataclasses.field(default_factory=list)


def _cell(values: list[float]) -> str:
    """mean ± std, or "∞" with how many seeds were finite when some were not."""
    finite = sum(math.isfinite(v) for v in values)
    if 0 < finite < len(values):
        return f"∞ ({finite}/{len(values)} finite)"
    return fmt(mean_std(values))


def _verdict(exp: Experiment, claim: Claim) -> str:
    """The claims table's "holds" cell: yes or **no**, marked where round-off flips the outcome."""
    verdict = "yes" if claim.holds else "**no**"
    return f"{verdict} (unsettled: round-off flips it)" if exp.is_unsettled(claim) else verdict


def summary_tables(exp: Experiment, result: Result) -> str:
    """The metrics table (mean ± std over seeds) and the claims table, as Markdown."""
    names = list(dict.fromkeys(k for per in result.metrics.values() for k in per))
    rows = [
        [m, *(_cell(per[k]) if k in per else None for k in names)] for m, per in result.metrics.items()
    ]
    out = [f"### {exp.name}: {exp.reproduces}", "", markdown_table(["method", *names], rows), ""]
    if result.claims:
        out += [
            markdown_table(
                ["claim (paper)", "measured", "holds"],
                [[c.claim, c.measured, _verdict(exp, c)] for c in result.claims],
            ),
            "",
        ]
    out += [f"- {n}" for n in result.notes]
    return "\n".join(out).rstrip() + "\n"


def run_experiment(
    exp: Experiment,
    out: Path,
    *,
    seeds: int | None = None,
    steps: int | None = None,
    quick: bool = False,
    show_progress: bool = True,
) -> Result:
    """Run `exp` and write its files into `out` (created); returns its result.

    Raises:
        ValueError: seeds < 3 or steps < 1.
    """
    n_seeds = (min(exp.seeds, QUICK_SEEDS) if quick else exp.seeds) if seeds is None else seeds
    n_steps = (exp.quick_steps if quick else exp.steps) if steps is None else steps
    if n_seeds < 3:
        raise ValueError(
            f"{exp.name}: at least 3 seeds (the comparison needs a spread); got --seeds {n_seeds}"
        )
    if n_steps < 1:
        raise ValueError(f"{exp.name}: --steps must be ≥ 1; got {n_steps}")
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info(torch.device("cpu"))
    ctx = Context(list(range(n_seeds)), n_steps, quick, out, show_progress)
    start = time.perf_counter()
    result = exp.run(ctx)
    wall = time.perf_counter() - start
    for name, spec in result.curves.items():
        write_curve_csv(out / f"{name}.csv", spec.data, spec.x_label)
        plot_curve(
            out / f"{name}.png",
            spec.data,
            title=spec.title,
            x_label=spec.x_label,
            y_label=spec.y_label,
            hline=spec.hline,
        )
    summary = summary_tables(exp, result)
    footer = (
        f"\nSeeds {ctx.seeds}, {n_steps} steps{' (--quick)' if quick else ''}; wall time {wall:.1f} s.\n"
        f"Machine: {describe_machine(info)}.\n"
    )
    (out / "summary.md").write_text(summary + footer)
    write_json(
        out / "results.json",
        {
            "experiment": dataclasses.asdict(exp) | {"run": exp.run.__module__ + "." + exp.run.__qualname__},
            "config": result.config | {"seeds": ctx.seeds, "steps": n_steps, "quick": quick},
            "metrics": {
                m: {k: {"mean_std": mean_std(v), "per_seed": v} for k, v in per.items()}
                for m, per in result.metrics.items()
            },
            "claims": [dataclasses.asdict(c) for c in result.claims],
            "tuning": result.tuning,
            "notes": result.notes,
            "files": sorted(p.name for p in out.iterdir() if p.name != "results.json") + ["results.json"],
            "machine": info,
            "wall_seconds": wall,
        },
    )
    print(summary + footer)
    return result
