"""APO-E8 (substitute): learning-rate adaptation on an MLP (Bae et al. 2022, §6.3, Fig. 5) — SGDm-APO and
RMSprop-APO against SGD-momentum and RMSprop at their best fixed learning rates, on scikit-learn's
``load_digits`` instead of MNIST.

Run from the repository root:

    python benchmarks/apo_lr_schedule.py          # 100 epochs, tune on seed 100, report seeds 0-2 (minutes)
    python benchmarks/apo_lr_schedule.py --quick  # smoke run (a minute): 15 epochs, 2 configurations each

The task is `precondalg.problems.digits_classification`: the 1797 digits (pixels / 16), an MLP
64-256-256-10 with ReLU (the paper: MNIST, two hidden layers of 1000), cross-entropy, batch 100 (the
paper's), shuffled every epoch by a generator seeded by the run's seed; APO's function-space batch B′
from a second shuffled loader (`precondalg.optim.fsd_batches`), one per step.  100 epochs (the paper's
count; 1800 steps here).  A seed fixes the initialisation and the order of the batches, the same for
every method.  The criterion is the training loss (cross-entropy on all 1797 examples after the last
epoch), as in Fig. 5.

Methods:

- SGDm: torch.optim.SGD, μ = 0.9; lr ∈ {1, 0.3, 0.1, 0.03, 0.01, 0.003}.
- RMSprop: torch.optim.RMSprop (α = 0.99, ε = 1e-8, torch's defaults); lr ∈ {1e-2, 3e-3, 1e-3, 3e-4,
  1e-4, 3e-5}.
- SGDm-APO: ``APO(mode="lr", base="momentum")``, η₀ = 0.1 (the paper's), meta-optimizer RMSprop with
  lr 0.1 on log η (the paper's), a meta-update every K = 10 steps (the paper's), ``fsd="kl"``;
  (λ_FSD, λ_WSD) ∈ {0.1, 1} × {0.01, 0.1, 1} (the paper searched both λ's; its values are lost from the
  text; (1, 0.1) is the preset's default).
- RMSprop-APO: the same with ``base="rmsprop"`` and η₀ = 3e-4 (the paper does not give it; the
  project's default).

Every method gets 6 configurations.  Protocol: each configuration trains on the held-out tuning seed
(``--tune-seed``, default 100, not reported); the lowest final training loss wins (a run whose loss or
parameters become non-finite scores inf; ties: the first in the grid), and a winner on the edge of its
grid is flagged.  The four winners then train on the evaluation seeds 0, 1, 2; the table reports the
mean ± standard deviation (and the values) of the final training loss, and for the APO rows the learned
η over the run.

Post hoc, not part of the protocol (added after a first full run in which both APO rows ended far above
their bases): each APO row is also run on the evaluation seeds with its tuned λ's and η₀ = the tuned
fixed learning rate of its base, to see whether the gap comes from η₀ alone; these rows are named
"… [post hoc: eta0 = best fixed lr]", drawn dashed, and their criteria are reported apart.

The criterion (the paper: "for both base optimizers, APO improved convergence speed and obtained
substantially lower loss than the baselines"), for SGDm and for RMSprop: the mean final training loss of
Base-APO is at least 2× below the best fixed learning rate's, or, where both means are below 1e-3, below
it by at least one standard deviation (the larger of the two rows').

Writes benchmarks/results/apo_lr_schedule_cpu.{json,csv,log,png}: the JSON holds the machine (with the
commit and whether the tree was dirty), the command, the configuration, every tuning run, every
evaluation run (losses per epoch, η per step) and the criteria; the CSV the curves (kind "loss": the
training loss after x epochs; kind "eta": APO's η after step x, x = 0 the initial η₀); the PNG the
training losses and the learned η_t (log scale) beside the best fixed learning rates.
tests/test_apo_lr_schedule.py checks the task and the quick configuration.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

try:  # run as a script, benchmarks/ is on sys.path; as `python -m benchmarks.apo_lr_schedule`, the root
    import apo_regression as e2
    import optimizers as common
except ImportError:  # pragma: no cover
    from benchmarks import apo_regression as e2
    from benchmarks import optimizers as common

from precondalg.optim import APO
from precondalg.problems import (
    DigitsClassification,
    digits_classification,
    learned_learning_rate,
    train_classifier,
)

EXPERIMENT = "APO-E8 substitute: learning-rate adaptation on a digits MLP (Bae et al. 2022, §6.3, Fig. 5)"
EPOCHS = 100
QUICK_EPOCHS = 15
SEEDS = (0, 1, 2)
TUNE_SEED = 100
META_EVERY = 10
NEAR_ZERO = 1e-3
Maker = Callable[[torch.nn.Module, dict[str, Any]], torch.optim.Optimizer]

grid = common.grid


def _apo(base: str, eta0: float) -> Maker:
    def make(model: torch.nn.Module, hp: dict[str, Any]) -> torch.optim.Optimizer:
        return APO(
            model.parameters(),
            eta0,
            model=model,
            loss_fn=F.cross_entropy,
            mode="lr",
            base=base,
            meta_every=META_EVERY,
            lam_fsd=hp["lam_fsd"],
            lam_wsd=hp["lam_wsd"],
        )

    return make


LAMBDAS = grid(lam_fsd=[0.1, 1.0], lam_wsd=[0.01, 0.1, 1.0])
METHODS: dict[str, dict[str, Any]] = {
    "SGDm": {
        "make": lambda model, hp: torch.optim.SGD(model.parameters(), lr=hp["lr"], momentum=0.9),
        "grid": grid(lr=[1.0, 0.3, 0.1, 0.03, 0.01, 0.003]),
        "fixed": {"momentum": 0.9},
    },
    "SGDm-APO": {
        "make": _apo("momentum", 0.1),
        "grid": LAMBDAS,
        "fixed": {
            "mode": "lr",
            "base": "momentum",
            "momentum": 0.9,
            "eta0": 0.1,
            "lr_param": "log",
            "meta_optimizer": "RMSprop",
            "meta_lr": 0.1,
            "meta_every": META_EVERY,
            "fsd": "kl",
        },
    },
    "RMSprop": {
        "make": lambda model, hp: torch.optim.RMSprop(model.parameters(), lr=hp["lr"]),
        "grid": grid(lr=[1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5]),
        "fixed": {"alpha": 0.99, "eps": 1e-8},
    },
    "RMSprop-APO": {
        "make": _apo("rmsprop", 3e-4),
        "grid": LAMBDAS,
        "fixed": {
            "mode": "lr",
            "base": "rmsprop",
            "alpha": 0.99,
            "eps": 1e-8,
            "eta0": 3e-4,
            "lr_param": "log",
            "meta_optimizer": "RMSprop",
            "meta_lr": 0.1,
            "meta_every": META_EVERY,
            "fsd": "kl",
        },
    },
}
PAIRS = {"SGDm": "SGDm-APO", "RMSprop": "RMSprop-APO"}
POST_HOC = " [post hoc: eta0 = best fixed lr]"
QUICK_GRIDS = {
    "SGDm": grid(lr=[0.3, 0.1]),
    "SGDm-APO": grid(lam_fsd=[1.0], lam_wsd=[0.1, 0.01]),
    "RMSprop": grid(lr=[3e-3, 1e-3]),
    "RMSprop-APO": grid(lam_fsd=[1.0], lam_wsd=[0.1, 0.01]),
}


def run_one(
    task: DigitsClassification,
    name: str,
    hp: dict[str, Any],
    seed: int,
    epochs: int,
    eta0: float | None = None,
) -> dict[str, Any]:
    """`name` with `hp` on `seed` (initialisation and batch order) for `epochs` epochs; `eta0`: an APO
    row's initial η in place of its own (the post hoc rows, named name + POST_HOC)."""
    model = task.make_model(seed)
    make = METHODS[name]["make"] if eta0 is None else _apo(METHODS[name]["fixed"]["base"], eta0)
    opt = make(model, hp)
    watch = learned_learning_rate if name.endswith("-APO") else None
    initial = [watch(opt)] if watch else []
    r = train_classifier(task, model, opt, epochs, seed=seed, watch=watch)
    return {
        "method": name if eta0 is None else name + POST_HOC,
        "seed": seed,
        "hp": hp if eta0 is None else hp | {"eta0": eta0},
        "final": r.final,
        "epoch_losses": r.epoch_losses,
        "eta": initial + r.watched,
        "diverged_at": r.diverged_at,
        "steps": r.steps,
        "skipped_warnings": r.skipped,
        "seconds": r.seconds,
        "train_accuracy": task.accuracy(model) if r.diverged_at is None else math.nan,
    }


def tune(task: DigitsClassification, name: str, args: argparse.Namespace, log: Callable[[str], None]):
    g = QUICK_GRIDS[name] if args.quick else METHODS[name]["grid"]
    rows = []
    for hp in g:
        r = run_one(task, name, hp, args.tune_seed, args.epochs)
        rows.append(
            {k: r[k] for k in ("hp", "final", "diverged_at", "seconds", "skipped_warnings")}
            | ({"eta_first_last": [r["eta"][0], r["eta"][-1]]} if r["eta"] else {})
        )
        log(
            f"  tune {name} {e2.fmt_hp(hp)}: final {e2.fmt_loss(r['final'])} ({r['seconds']:.1f} s)"
            + (f", diverged at step {r['diverged_at']}" if r["diverged_at"] else "")
        )
    best = min(range(len(rows)), key=lambda i: (rows[i]["final"], i))
    edge = common.grid_edges(g, rows[best]["hp"])
    log(
        f"{name}: best {e2.fmt_hp(rows[best]['hp'])}, tuning loss {e2.fmt_loss(rows[best]['final'])}"
        + (f"; AT GRID EDGE: {', '.join(edge)}" if edge else "")
    )
    return {
        "best": rows[best]["hp"],
        "score": rows[best]["final"],
        "budget": len(g),
        "at_edge": edge,
        "rows": rows,
    }


def mean_std(xs: list[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (0 for one value; inf/nan where a run diverged)."""
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarize(runs: list[dict[str, Any]], choices: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method (in the order of `runs`): the chosen configuration (`choices`: name → best, at_edge,
    budget), the final losses over the seeds, their mean ± std and median, and APO's η range."""
    out = {}
    for name in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == name]
        finals = [r["final"] for r in mine]
        mean, std = mean_std(finals)
        out[name] = {
            "hp": mine[0]["hp"],
            "at_edge": choices[name]["at_edge"],
            "budget": choices[name]["budget"],
            "finals": finals,
            "mean": mean,
            "std": std,
            "median": statistics.median(finals),
            "train_accuracy": [r["train_accuracy"] for r in mine],
            "diverged_seeds": [r["seed"] for r in mine if r["diverged_at"] is not None],
            "skipped_warnings": sum(r["skipped_warnings"] for r in mine),
            "seconds_per_run": statistics.fmean(r["seconds"] for r in mine),
        }
        etas = [r["eta"] for r in mine if r["eta"]]
        if etas:
            out[name]["eta_range"] = [min(min(e) for e in etas), max(max(e) for e in etas)]
            out[name]["eta_final"] = [e[-1] for e in etas]
            out[name]["eta_max_over_min"] = [max(e) / min(e) for e in etas]
    return out


def criteria(summary: dict[str, dict[str, Any]], suffix: str = "") -> list[dict[str, Any]]:
    """The 'faithful if' line for each base: mean(APO) ≤ mean(fixed)/2, or, with both means below
    NEAR_ZERO, mean(fixed) − mean(APO) ≥ the larger standard deviation; APO's row is name + suffix."""
    out = []
    for fixed, apo in PAIRS.items():
        apo += suffix
        f, a = summary[fixed], summary[apo]
        ratio = f["mean"] / a["mean"] if a["mean"] > 0 else math.inf
        near_zero = f["mean"] < NEAR_ZERO and a["mean"] < NEAR_ZERO
        if near_zero:
            margin = max(f["std"], a["std"])
            passed = f["mean"] - a["mean"] >= margin
            detail = (
                f"both means < {NEAR_ZERO:g}: {apo} {a['mean']:.3e} vs {fixed} {f['mean']:.3e}, "
                f"difference {f['mean'] - a['mean']:.3e} vs one std {margin:.3e}"
            )
        else:
            passed = ratio >= 2
            detail = (
                f"{apo} {e2.fmt_loss(a['mean'])} vs {fixed} {e2.fmt_loss(f['mean'])}: ratio {ratio:.3g} (≥ 2)"
            )
        out.append(e2.criterion(f"E8: {apo} below the best fixed lr of {fixed}", passed, detail))
    return out


# ---------------------------------------------------------------------------------------- reporting
def fmt_row(s: dict[str, Any]) -> str:
    values = ", ".join(e2.fmt_loss(v) for v in s["finals"])
    return f"{e2.fmt_loss(s['mean'])} ± {s['std']:.1e} [{values}]"


def report(out: dict[str, Any]) -> list[str]:
    cfg, summary = out["config"], out["summary"]
    lines = [
        f"\n{EXPERIMENT}",
        f"Machine: {common.describe_machine(out['machine'])}",
        f"lscpu Model name: {out['machine'].get('lscpu_model_name')}",
        f"Commit: {out['machine'].get('commit_line')}",
        f"Command: {out['command']}",
        f"{cfg['epochs']} epochs of batch {cfg['task']['batch_size']} ({cfg['steps']} steps); tuned on seed "
        f"{cfg['tune_seed']} (held out), reported over seeds {cfg['seeds']}",
        "",
        "| method | tuned (grid size) | final training loss: mean ± std [seeds] | learned η: range "
        "(final per seed) | s/run |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m, s in summary.items():
        edge = f"; at edge: {', '.join(s['at_edge'])}" if s["at_edge"] else ""
        eta = (
            (
                f"{s['eta_range'][0]:.3g} – {s['eta_range'][1]:.3g} ("
                + ", ".join(f"{v:.3g}" for v in s["eta_final"])
                + ")"
            )
            if "eta_range" in s
            else "–"
        )
        div = f" ({len(s['diverged_seeds'])} diverged)" if s["diverged_seeds"] else ""
        lines.append(
            f"| {m} | {e2.fmt_hp(s['hp'])} ({s['budget']}{edge}) | {fmt_row(s)}{div} | {eta} "
            f"| {s['seconds_per_run']:.1f} |"
        )
    lines.append("\nCriteria (Fig. 5 'faithful if'):")
    for c in out["criteria"]:
        lines.append(f"  [{'PASS' if c['passed'] else 'FAIL'}] {c['criterion']}: {c['detail']}")
    lines.append("Post hoc, not the protocol's result (APO started at the best fixed lr of its base):")
    for c in out["criteria_post_hoc"]:
        lines.append(f"  [{'PASS' if c['passed'] else 'FAIL'}] {c['criterion']}: {c['detail']}")
    return lines


def write_csv(path: Path, runs: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["kind", "method", "seed", "x", "value"])
        for r in runs:
            for epoch, loss in enumerate(r["epoch_losses"]):
                w.writerow(["loss", r["method"], r["seed"], epoch, repr(loss)])
            for step, eta in enumerate(r["eta"]):
                w.writerow(["eta", r["method"], r["seed"], step, repr(eta)])


def plot(
    path: Path, runs: list[dict[str, Any]], summary: dict[str, Any], steps_per_epoch: int, title: str
) -> Path:
    """Top: the training loss per epoch (mean over seeds, band min–max) of each base's best fixed lr
    and its APO variant.  Bottom: APO's η_t per seed (log scale) and the best fixed lr (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(PAIRS), figsize=(6.5 * len(PAIRS), 9), squeeze=False)
    for j, (fixed, apo) in enumerate(PAIRS.items()):
        top, bottom = axes[0][j], axes[1][j]
        for name in (fixed, apo, apo + POST_HOC):
            curves = [r["epoch_losses"] for r in runs if r["method"] == name]
            n = min(len(c) for c in curves)
            mean = [statistics.fmean(c[e] for c in curves) for e in range(n)]
            style = "--" if name.endswith(POST_HOC) else "-"
            (line,) = top.plot(
                range(n), mean, lw=1.4, ls=style, label=f"{name} ({e2.fmt_hp(summary[name]['hp'])})"
            )
            top.fill_between(
                range(n),
                [min(c[e] for c in curves) for e in range(n)],
                [max(c[e] for c in curves) for e in range(n)],
                color=line.get_color(),
                alpha=0.15,
                lw=0,
            )
        top.set_yscale("log")
        top.set_xlabel("epoch")
        top.set_ylabel("training loss (mean over seeds; band: min–max)")
        top.set_title(f"{fixed}: best fixed lr vs {apo}", fontsize=10)
        top.legend(fontsize=7)
        top.grid(alpha=0.3, which="both", lw=0.4)
        for r in (r for r in runs if r["method"] in (apo, apo + POST_HOC)):
            epochs = [s / steps_per_epoch for s in range(len(r["eta"]))]
            post = r["method"].endswith(POST_HOC)
            label = f"{apo} η_t, seed {r['seed']}" + (", η₀ = best fixed lr (post hoc)" if post else "")
            bottom.plot(epochs, r["eta"], lw=1.0, ls="--" if post else "-", label=label)
        bottom.axhline(
            summary[fixed]["hp"]["lr"],
            color="k",
            ls="--",
            lw=1.0,
            label=f"best fixed lr of {fixed}: {summary[fixed]['hp']['lr']:g}",
        )
        bottom.set_yscale("log")
        bottom.set_xlabel("epoch")
        bottom.set_ylabel("learning rate")
        bottom.set_title(f"{apo}: learned learning rate η_t", fontsize=10)
        bottom.legend(fontsize=6.5)
        bottom.grid(alpha=0.3, which="both", lw=0.4)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--epochs", type=int, default=None, help=f"default {EPOCHS} ({QUICK_EPOCHS} with --quick)"
    )
    ap.add_argument("--seeds", type=int, default=len(SEEDS), help="evaluation seeds 0 … seeds − 1")
    ap.add_argument("--tune-seed", type=int, default=TUNE_SEED, help="the held-out tuning seed")
    ap.add_argument(
        "--quick", action="store_true", help=f"smoke run: {QUICK_EPOCHS} epochs, 2 configurations each"
    )
    common.add_cpu_run_arguments(ap, "a small MLP")
    args = ap.parse_args(argv)
    if args.epochs is None:
        args.epochs = QUICK_EPOCHS if args.quick else EPOCHS
    seeds = list(range(args.seeds))
    if args.tune_seed in seeds:
        raise SystemExit("the tuning seed must be held out: not among the evaluation seeds")
    name = "apo_lr_schedule_quick" if args.quick else "apo_lr_schedule"
    started = common.start_experiment(args, name, argv)
    if started is None:
        return 2
    bench, command = started
    log = bench.log
    task = digits_classification()
    steps = args.epochs * task.steps_per_epoch()
    log(f"{EXPERIMENT}: {args.epochs} epochs ({steps} steps), tuning seed {args.tune_seed}, seeds {seeds}")
    tuning = {}
    for m in METHODS:
        tuning[m] = tune(task, m, args, log)
        bench.write_log()
    runs = []
    post_hoc = {apo: tuning[fixed]["best"]["lr"] for fixed, apo in PAIRS.items()}
    arms = [(m, None) for m in METHODS] + list(post_hoc.items())
    for m, eta0 in arms:
        for seed in seeds:
            r = run_one(task, m, tuning[m]["best"], seed, args.epochs, eta0)
            m_label = r["method"]
            runs.append(r)
            eta = f", η {r['eta'][0]:.3g} → {r['eta'][-1]:.3g}" if r["eta"] else ""
            log(
                f"{m_label} seed {seed}: final {e2.fmt_loss(r['final'])}{eta} ({r['seconds']:.1f} s)"
                + (f", diverged at step {r['diverged_at']}" if r["diverged_at"] else "")
                + (f", {r['skipped_warnings']} SkippedStepWarning(s)" if r["skipped_warnings"] else "")
            )
    choices = tuning | {apo + POST_HOC: {"at_edge": [], "budget": "post hoc"} for apo in post_hoc}
    summary = summarize(runs, choices)
    out = {
        "experiment": EXPERIMENT,
        "command": command,
        "machine": bench.info,
        "config": {
            "epochs": args.epochs,
            "steps": steps,
            "seeds": seeds,
            "tune_seed": args.tune_seed,
            "task": task.config,
            "selection": "per method, the configuration with the lowest final training loss on the tuning "
            "seed (ties: the first in the grid); diverged = inf",
            "final_loss": "cross-entropy on all training examples after the last epoch",
            "criterion": f"mean(APO) <= mean(fixed) / 2, or with both means < {NEAR_ZERO:g}: "
            "mean(fixed) - mean(APO) >= max(std(fixed), std(APO))",
            "methods": common.methods_record(METHODS, QUICK_GRIDS, args.quick, METHODS),
        },
        "tuning": tuning,
        "runs": runs,
        "summary": summary,
        "criteria": criteria(summary),
        "post_hoc_rule": "not part of the protocol: each APO row rerun on the evaluation seeds with its "
        "tuned lambdas and eta0 = the tuned fixed lr of its base",
        "criteria_post_hoc": criteria(summary, POST_HOC),
        "elapsed_s": bench.elapsed(),
    }
    bench.json_path.write_text(json.dumps(out, indent=1, default=str))
    write_csv(bench.csv_path, runs)
    png = plot(
        bench.json_path.with_suffix(".png"),
        runs,
        summary,
        task.steps_per_epoch(),
        f"APO-E8 (digits MLP 64-256-256-10, batch 100, {args.epochs} epochs, seeds {seeds})",
    )
    bench.finish(report(out), bench.json_path, bench.csv_path, png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
