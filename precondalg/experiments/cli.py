"""The command line of the experiments and the comparison harness.

    python -m precondalg.experiments list
    python -m precondalg.experiments run NAME [--seeds N] [--steps N] [--out DIR] [--quick] [--no-progress]
    python -m precondalg.experiments run all --quick [--strict]
    python -m precondalg.experiments compare --task TASK --methods FOP,PSGD,LODO,APO,Shampoo,KFAC,Adam,SGD
        [--budget N] [--seeds N] [--steps N] [--target LOSS] [--grid METHOD=LR,...] [--out DIR] [--quick]

``run`` writes into ``--out`` (default ``experiments_out/NAME``; ``run all`` writes one folder per
experiment under it); ``compare`` into ``--out`` (default ``experiments_out/compare_TASK``).  Torch runs
on one thread (tiny-op loops are slower with more, see the docs' performance guide) unless
``--threads`` says otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from precondalg.experiments import registered
from precondalg.experiments.compare import compare
from precondalg.experiments.core import EXPERIMENTS, Claim, Experiment, run_experiment
from precondalg.experiments.methods import METHODS
from precondalg.experiments.output import markdown_table
from precondalg.experiments.tasks import TASKS

__all__ = ["main"]

DEFAULT_OUT = Path("experiments_out")
QUICK_COMPARE_STEPS = 100


def _list() -> int:
    rows = [
        [e.name, e.paper, e.figure, e.reproduces, f"{e.minutes:g} (quick {e.quick_minutes:g})"]
        for e in EXPERIMENTS.values()
    ]
    print(markdown_table(["name", "paper", "figure / table", "reproduces", "minutes (2-core CPU)"], rows))
    print(f"\nTasks of `compare --task`: {', '.join(TASKS)} (or module:attribute).")
    print(f"Methods of `compare --methods`: {', '.join(METHODS)} (or module:attribute).")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.name == "all":
        chosen = list(EXPERIMENTS.values())
        base = args.out or DEFAULT_OUT
        outs = [base / e.name for e in chosen]
    elif args.name in EXPERIMENTS:
        chosen = [EXPERIMENTS[args.name]]
        outs = [args.out or DEFAULT_OUT / args.name]
    else:
        print(
            f"unknown experiment {args.name!r}; `list` shows them: {', '.join(EXPERIMENTS)}", file=sys.stderr
        )
        return 2
    start = time.perf_counter()
    failed, unsettled, unexpected = [], [], []
    for i, (exp, out) in enumerate(zip(chosen, outs), 1):
        if len(chosen) > 1:
            print(f"[{i}/{len(chosen)}] {exp.name} → {out}", file=sys.stderr)
        result = run_experiment(
            exp, out, seeds=args.seeds, steps=args.steps, quick=args.quick, show_progress=not args.no_progress
        )
        failed += [f"{exp.name}: {c.claim}" for c in result.claims if not c.holds]
        unsettled += [f"{exp.name}: {c.claim}" for c in result.claims if exp.is_unsettled(c)]
        unexpected += _unexpected(exp, result.claims)
    print(
        f"{len(chosen)} experiment(s) in {time.perf_counter() - start:.1f} s; results under "
        f"{outs[0] if len(outs) == 1 else outs[0].parent}"
    )
    if failed:
        print(f"{len(failed)} claim(s) of the papers not reproduced (see each summary.md):")
        print("\n".join(f"  - {f}" for f in failed))
    if unsettled:
        print(f"{len(unsettled)} claim(s) whose outcome round-off flips (reported, not checked by --strict):")
        print("\n".join(f"  - {u}" for u in unsettled))
    if args.strict and unexpected:
        print(f"--strict: {len(unexpected)} claim(s) differ from the experiments' known failures:")
        print("\n".join(f"  - {u}" for u in unexpected))
        return 1
    return 0


def _unexpected(exp: Experiment, claims: list[Claim]) -> list[str]:
    """Claims that fail without being a known failure of `exp`, and known failures that now hold; the
    unsettled claims (`Experiment.unsettled`) are neither."""
    out = []
    for c in claims:
        if exp.is_unsettled(c):
            continue
        known = c.claim.startswith(exp.known_failures) if exp.known_failures else False
        if not c.holds and not known:
            out.append(f"{exp.name}: fails, not a known failure: {c.claim} (measured {c.measured})")
        elif c.holds and known:
            out.append(f"{exp.name}: a known failure now holds (update the docs): {c.claim}")
    return out


def _grids(specs: list[str]) -> dict[str, list[float]]:
    """``--grid METHOD=LR,LR,...`` options as a dict.

    Raises:
        ValueError: a spec without "=" or with a value that is not a number.
    """
    grids = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        if not sep or not name:
            raise ValueError(f"--grid takes METHOD=LR,LR,... (e.g. SGD=0.01,0.003); got {spec!r}")
        try:
            grids[name] = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--grid {spec!r}: the learning rates must be numbers") from None
    return grids


def _compare(args: argparse.Namespace) -> int:
    steps = args.steps if args.steps is not None else (QUICK_COMPARE_STEPS if args.quick else 300)
    budget = args.budget if args.budget is not None else (3 if args.quick else 5)
    out = args.out or DEFAULT_OUT / f"compare_{args.task.replace(':', '_').replace('.', '_')}"
    compare(
        args.task,
        [m.strip() for m in args.methods.split(",") if m.strip()],
        budget=budget,
        seeds=args.seeds if args.seeds is not None else 3,
        steps=steps,
        out=out,
        target=args.target,
        grids=_grids(args.grid),
        show_progress=not args.no_progress,
    )
    print(f"results in {out}")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m precondalg.experiments", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every experiment: name, paper, figure, what it reproduces, minutes")
    run = sub.add_parser("run", help="run one experiment (or all) and write results.json, CSVs and PNGs")
    run.add_argument("name", help="an experiment name from `list`, or 'all'")
    run.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when a claim fails that is not a known failure of its experiment, or a known one holds "
        "(claims whose outcome round-off flips are reported, not checked)",
    )
    cmp_ = sub.add_parser("compare", help="tune and compare methods on a task with equal budgets")
    cmp_.add_argument("--task", required=True, help=f"one of {', '.join(TASKS)}, or module:attribute")
    cmp_.add_argument(
        "--methods",
        default="FOP,PSGD,LODO,APO,Shampoo,KFAC,Adam,SGD",
        help="comma-separated built-in names or module:attribute",
    )
    cmp_.add_argument("--budget", type=int, help="tuning trials per method (default 5; 3 with --quick)")
    cmp_.add_argument("--target", type=float, help="the loss of 'steps to target' (default: the task's)")
    cmp_.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="METHOD=LR,LR,...",
        help="a user learning-rate grid for METHOD (or 'all'); repeatable",
    )
    for p in (run, cmp_):
        p.add_argument("--seeds", type=int, help="number of seeds (≥ 3)")
        p.add_argument("--steps", type=int, help="steps per run (default: the experiment's)")
        p.add_argument("--out", type=Path, help="output folder")
        quick = "short settings: fewer steps, at most 3 seeds (compare: budget 3)"
        p.add_argument("--quick", action="store_true", help=quick)
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    registered()
    if args.command == "list":
        return _list()
    torch.set_num_threads(args.threads)
    try:
        return _run(args) if args.command == "run" else _compare(args)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
