"""Regenerate the results the documentation shows: every experiment (full settings) into
docs/experiments/results/NAME/ and the comparison on every built-in task into docs/comparison/TASK/.

    python scripts/docs_results.py                  # both (23 + 10 minutes measured on a 2-core CPU)
    python scripts/docs_results.py --only experiments
    python scripts/docs_results.py --only experiments --names FOP-E3,APO-E1
    python scripts/docs_results.py --only comparison --tasks digits_mlp,diabetes

The pages (docs/experiments/*.md, docs/comparison.md) read these folders at build time, so a rerun is
all it takes to update them; commit the folders afterwards.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from precondalg.experiments.cli import main as cli
from precondalg.experiments.tasks import TASKS

DOCS = Path(__file__).resolve().parent.parent / "docs"
METHODS = "FOP,PSGD,LODO,APO,Shampoo,KFAC,Adam,SGD"
COMPARE = ["--methods", METHODS, "--budget", "5", "--seeds", "3"]
"""The comparison the docs show: the issue's method list, 5 trials each, 3 seeds."""
PER_TASK = {
    "rosenbrock": ["--steps", "2000", "--grid", "all=0.01,0.003,0.001,0.0003,0.0001"],
    "noisy_bowl": ["--steps", "2000", "--grid", "all=3,1,0.3,0.1,0.03"],
}
"""Steps and user learning-rate grids per task (default: 200 steps, each method's own grid).  The
methods' own grids (learning rates 1 to 1e-4) fit the networks; on Rosenbrock gradient descent needs
lr ≲ 2e-3 (every point of SGD's own grid diverges) and on the bowl the adaptive methods need lr ≈ 1 to
follow the moving centre; both need more than 200 steps to say anything."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=("experiments", "comparison"))
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated built-in tasks")
    ap.add_argument("--names", default="all", help="comma-separated experiments (default: all)")
    args = ap.parse_args(argv)
    status = 0
    if args.only in (None, "experiments"):
        for name in args.names.split(","):
            out = DOCS / "experiments" / "results"
            out = out if name == "all" else out / name
            status |= cli(["run", name, "--out", str(out), "--no-progress"])
    if args.only in (None, "comparison"):
        for task in args.tasks.split(","):
            out = DOCS / "comparison" / task
            extra = PER_TASK.get(task, ["--steps", "200"])
            status |= cli(["compare", "--task", task, *COMPARE, *extra, "--out", str(out), "--no-progress"])
    return status


if __name__ == "__main__":
    sys.exit(main())
