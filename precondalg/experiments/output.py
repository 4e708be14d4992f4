"""What a run leaves behind: ``results.json``, CSVs of the curves, PNG plots and the summary tables, in one
folder — shared by the experiments and the comparison harness.

Curves are written long-form, one CSV per curve (``<curve>.csv``: method, seed, x, value), and plotted
as the mean over seeds with the min–max band (``<curve>.png``, log scale where every value is positive).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Curve",
    "fmt",
    "json_ready",
    "markdown_table",
    "mean_std",
    "plot_curve",
    "progress",
    "write_curve_csv",
]

Curve = dict[str, list[list[tuple[float, float]]]]
"""method → one list of (x, value) points per seed."""


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds: (nan, nan) for none, std 0 for one value, and
    (inf, nan) when any value is not finite (a run that diverged or never reached its goal)."""
    if not values:
        return math.nan, math.nan
    if not all(math.isfinite(v) for v in values):
        return math.inf, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: (mean, std) as "m ± s", floats to `digits` significant digits, None as "—", an
    infinite value (a run that diverged or never reached its goal; the tables' legends say which) as "∞"."""
    if value is None:
        return "—"
    if isinstance(value, tuple) and len(value) == 2:
        m, s = value
        if math.isinf(m):
            return "∞"
        return f"{m:.{digits}g} ± {s:.2g}" if s == s else f"{m:.{digits}g}"
    if isinstance(value, float):
        return "∞" if math.isinf(value) else f"{value:.{digits}g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt(v)}" for k, v in value.items())
    return str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table (cells through `fmt`)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def json_ready(obj: Any) -> Any:
    """`obj` with tuples as lists and non-finite floats as the strings "inf", "-inf", "nan" (strict JSON)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if obj != obj else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return json_ready(obj.item())
    return obj


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(json_ready(obj), indent=1, ensure_ascii=False) + "\n")


def write_curve_csv(path: Path, curve: Curve, x_label: str) -> None:
    """``method, seed, <x_label>, value`` rows of every point of every seed."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "seed", x_label, "value"])
        for method, per_seed in curve.items():
            for seed, points in enumerate(per_seed):
                for x, v in points:
                    w.writerow([method, seed, x, v])


def plot_curve(
    path: Path, curve: Curve, *, title: str, x_label: str, y_label: str, hline: float | None = None
) -> None:
    """Mean over seeds with the min–max band per method (points where a seed stopped are left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    positive = True
    for method, per_seed in curve.items():
        xs = sorted({x for points in per_seed for x, _ in points})
        if not xs:
            continue
        table = np.full((len(per_seed), len(xs)), np.nan)
        index = {x: i for i, x in enumerate(xs)}
        for s, points in enumerate(per_seed):
            for x, v in points:
                table[s, index[x]] = v if math.isfinite(v) else np.nan
        with warnings.catch_warnings():  # a column where every seed stopped is all-NaN: left out of the plot
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, lo, hi = np.nanmean(table, 0), np.nanmin(table, 0), np.nanmax(table, 0)
        positive &= bool(np.all(table[np.isfinite(table)] > 0))
        (line,) = ax.plot(xs, mean, label=method, lw=1.5)
        if len(per_seed) > 1:
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
    if hline is not None:
        ax.axhline(hline, color="k", ls="--", lw=1, label=f"reference {hline:g}")
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def progress(total: int, desc: str, enabled: bool = True):
    """A tqdm progress bar of `total` units on stderr (``enabled=False``: none, e.g. ``--no-progress``)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=not enabled, leave=False, dynamic_ncols=True)
