"""``python -m precondalg.experiments compare``: place methods — ours, the baselines, a user's own row — on a
task, with the protocol of `precondalg.experiments.harness` (equal tuning budgets, same seeds, same data
order), and write the table, ``results.json``, the loss curves (CSV, PNG) and ``summary.md``.

Examples:
    >>> from pathlib import Path
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp())
    >>> rows = compare("rosenbrock", ["SGD", "Adam"], budget=2, seeds=3, steps=20, out=out,
    ...                show_progress=False, echo=False)
    >>> [r["method"] for r in rows]
    ['SGD', 'Adam']
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from precondalg.experiments.harness import (
    TUNE_SEED,
    WARMUP,
    MethodResult,
    choose_points,
    summarise,
    train,
    tune_and_evaluate,
)
from precondalg.experiments.machine import describe_machine, machine_info
from precondalg.experiments.methods import METHODS, apply_lr_grids, resolve_methods
from precondalg.experiments.output import (
    fmt,
    markdown_table,
    plot_curve,
    progress,
    write_curve_csv,
    write_json,
)
from precondalg.experiments.tasks import TASKS

__all__ = ["compare", "resolve_task"]

TIMING_STEPS = 50
"""Steps of the Adam timing reference when Adam is not among the compared methods."""


def resolve_task(name: str) -> tuple[str, Callable[[int], Any]]:
    """A built-in task by name, or a user's ``task(seed)`` callable by import path "module:attribute".

    Raises:
        ValueError: an unknown name, or a path that does not import.
    """
    if name in TASKS:
        return name, TASKS[name]
    module_name, sep, attribute = name.partition(":")
    if not sep:
        raise ValueError(f"unknown task {name!r}; built-in: {', '.join(TASKS)}, or 'module:attribute'")
    try:
        fn = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load task {name!r}: {e}") from e
    if not callable(fn):
        raise ValueError(f"task {name!r} must be a callable task(seed); got {type(fn).__name__}")
    return name, fn


def _first_clause(message: str, limit: int = 160) -> str:
    """A table cell's share of an error message (the whole message is in results.json): up to its first
    "; " and at most `limit` characters."""
    message = message.split("; ")[0]
    return message if len(message) <= limit else message[: limit - 1] + "…"


def _final(row: dict[str, Any]) -> str:
    """The final-loss cell: mean ± std, and how many runs diverged (their loss is ∞, so the mean is)."""
    runs = row["reached_target"].split("/")[1]
    cell = fmt(row["final_loss"])
    return cell + (f" ({row['diverged_runs']}/{runs} runs diverged)" if row["diverged_runs"] else "")


def _table(rows: list[dict[str, Any]]) -> str:
    header = [
        "method",
        "chosen",
        "final loss",
        "accuracy",
        "reached target",
        "steps to target",
        "seconds to target",
        "step time / Adam",
        "state bytes / param",
    ]
    body = []
    for r in rows:
        if r.get("error"):
            body.append([r["method"], "—", f"not run: {_first_clause(r['error'])}", *["—"] * 6])
            continue
        acc = r["accuracy"]
        body.append(
            [
                r["method"],
                fmt(r["chosen"]),
                _final(r),
                None if acc is None else (100 * acc[0], 100 * acc[1]),
                r["reached_target"],
                r["steps_to_target"],
                r["seconds_to_target"],
                r["step_time_vs_adam"],
                r["state_bytes_per_param"],
            ]
        )
    return markdown_table(header, body)


def compare(
    task: str,
    methods: list[str],
    *,
    budget: int = 5,
    seeds: int = 3,
    steps: int = 300,
    out: Path,
    target: float | None = None,
    grids: dict[str, list[float]] | None = None,
    show_progress: bool = True,
    echo: bool = True,
) -> list[dict[str, Any]]:
    """Compare `methods` on `task` (see the module docstring); returns the table's rows.

    Args:
        task: a built-in task name (`precondalg.experiments.tasks.TASKS`) or "module:attribute".
        methods: built-in method names (`precondalg.experiments.methods.METHODS`) or "module:attribute".
        budget: tuning trials per method.
        seeds: evaluation seeds (≥ 3).
        steps: training steps per run.
        out: the output folder (created).
        target: the loss at which "steps to target" is counted (default: the task's).
        grids: user learning-rate grids, method name (or "all") → learning rates; the methods' other
            settings stay as documented (`precondalg.experiments.methods.with_lr_grid`).
        show_progress: draw a progress bar.
        echo: print the table.

    Raises:
        ValueError: seeds < 3, steps < 1, an unknown task or method, a grid smaller than the budget.
    """
    if seeds < 3:
        raise ValueError(f"compare: at least 3 seeds (mean ± std needs a spread); got {seeds}")
    if steps < 1:
        raise ValueError(f"compare: steps must be ≥ 1; got {steps}")
    task_name, task_fn = resolve_task(task)
    rows_methods = apply_lr_grids(resolve_methods(methods), grids or {})
    for m in rows_methods:  # refuse unequal budgets before any run
        choose_points(m, budget)
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info(torch.device("cpu"))
    start = time.perf_counter()
    results: list[MethodResult] = []
    bar = progress(len(rows_methods) * (budget + seeds), f"compare on {task_name}", show_progress)
    for m in rows_methods:
        bar.set_postfix_str(m.name)
        results.append(
            tune_and_evaluate(
                m,
                task_fn,
                budget=budget,
                seeds=range(seeds),
                steps=steps,
                target=target,
                tick=lambda: bar.update(1),
            )
        )
    bar.close()
    adam = next((r for r in results if r.name == "Adam" and r.runs), None)
    if adam is not None:
        adam_step = sorted(run.step_seconds for run in adam.runs)[len(adam.runs) // 2]
        adam_how = "the compared Adam's median step"
    else:
        adam_step = train(
            METHODS["Adam"], {"lr": 1e-3}, task_fn, 0, min(steps, TIMING_STEPS), target
        ).step_seconds
        adam_how = f"Adam at lr 1e-3, {min(steps, TIMING_STEPS)} steps on seed 0, timed after the runs"
    rows = [summarise(r, adam_step) for r in results]
    wall = time.perf_counter() - start
    curve = {r.name: [run.curve for run in r.runs] for r in results if r.runs}
    write_curve_csv(out / "loss.csv", curve, "step")
    plot_curve(
        out / "loss.png",
        curve,
        title=f"{task_name}: loss (mean, min–max over {seeds} seeds)",
        x_label="step",
        y_label="loss",
    )
    legend = [f"- {m.name}: {m.note}" for m in rows_methods if m.note]
    legend += [
        f"- {r['method']}: the chosen {fmt(r['chosen'])} is at an end of the points tried; a wider grid "
        "might do better." for r in rows if r.get("at_grid_edge")
    ]
    legend += [f"- {r['method']}: {r['skipped_steps']} optimizer steps skipped (NaN/Inf guarded)."
               for r in rows if r.get("skipped_steps")]
    legend += [f"- {r['method']}: a run stopped on an error: {_first_clause(e)}"
               for r in rows for e in r.get("run_errors", [])[:1]]
    text = (
        f"## compare on {task_name}\n\n{_table(rows)}\n\n"
        f"Budget {budget} trials per method on tuning seed {TUNE_SEED}, then seeds 0–{seeds - 1}; "
        f"{steps} steps per run; "
        f"target loss {'the task default' if target is None else target} ('reached target' counts runs that "
        "reached it, also if they diverged later); step time / Adam: the median over the steps after the "
        f"first {WARMUP}, {adam_how}; APO's B′ is the next batch's inputs; "
        f"accuracy in %. Wall time {wall:.1f} s.\n\n"
        + "\n".join(legend)
        + f"\n\nMachine: {describe_machine(info)}.\n"
    )
    (out / "summary.md").write_text(text)
    write_json(
        out / "results.json",
        {
            "task": task_name,
            "methods": [m.name for m in rows_methods],
            "config": {
                "user_lr_grids": grids or {},
                "budget": budget,
                "seeds": list(range(seeds)),
                "steps": steps,
                "target": target,
                "tune_seed": TUNE_SEED,
            },
            "rows": rows,
            "tuning": {r.name: {"trials": r.trials, "chosen": r.chosen, "error": r.error} for r in results},
            "grids": {m.name: list(m.grid) for m in rows_methods},
            "notes": {m.name: m.note for m in rows_methods},
            "adam_step_seconds": adam_step,
            "machine": info,
            "wall_seconds": wall,
        },
    )
    if echo:
        print(text)
    return rows
