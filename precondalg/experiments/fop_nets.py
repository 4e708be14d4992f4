"""FOP's network experiments on digits (Moskovitz et al. 2019, Figs. 2, 4 and 5), scaled to a 2-core CPU.

Every FOP row is the `FOP` preset (P = MᵀM per layer on the input side of weight matrices, one 9×9 M per
3×3 conv kernel shared across channels, M fitted by Adam on the hypergradient, heavy-ball base); the
baselines are torch.optim's SGD with momentum and Adam.  A seed fixes the initial weights, the batch
order and FOP's low-rank draw (`harness.train`); a diverged run scores the chance accuracy 0.1.

- FOP-E3, rank sweep (Fig. 2).  `digits_mlp4`: ``load_digits`` (pixels / 16, the harness's stratified
  1297 / 500 split), MLP 64-100-100-100-10 (ReLU; the paper's 4 × 100 units on MNIST), batch 32, 20
  epochs (800 steps; paper: MNIST, 5 runs).  SGDm (μ = 0.9) and full-rank FOP (hyper-lr 1e-4) are each
  tuned over the 5 learning rates of `LR_GRID` on `TUNE_SEED` (lowest final training loss), then run on
  5 seeds.  The sweep runs FOP at every rank of `RANKS` at SGDm's tuned learning rate (FOP added to the
  tuned baseline, the rank the only change): low rank is P = I + MᵀM with M (r × in) ~ N(0, 1e-2²) (the
  preset's ``rank``: one r for every layer, so r = 64 is full rank for the first layer only); "full" is
  the dense M₀ = I.  Measured: the mean training loss over the first 20% of steps (area under the
  whole-training-set loss curve / steps), the final test accuracy, and every `ANGLE_EVERY` steps the
  angle between g and Pg per layer (Fig. A.1).  ``--quick``: 3 seeds, 200 steps, `QUICK_RANKS`.
- FOP-E6, hyperparameter robustness (Fig. 4).  `digits_cnn` (conv 3×3 16 → pool → conv 3×3 32 → pool
  → linear), batch 64, 10 epochs (200 steps; paper: a 9-layer CNN on CIFAR-10, 3 runs).  (a) the grid
  `LRS` × `MOMENTA` of SGDm with and without FOP (hyper-lr 1e-4), every cell on 3 seeds, no tuning (the
  experiment is the grid); (b) Adam with and without FOP (an Adam base) over the 5 learning rates of
  `ADAPTIVE_GRID`.  Measured: the final test accuracy.  ``--quick``: `QUICK_LRS` × `QUICK_MOMENTA` and
  `QUICK_ADAM_LRS`, cells of the full run.
- FOP-E7, learned spatial matrices (Fig. 5).  The spatial FOP on `digits_cnn` at lr 0.1, μ 0.9 (the
  best SGDm cell of FOP-E6), hyper-lr 1e-4, 30 epochs (600 steps), 5 seeds; per conv layer the final
  P = MᵀM (9 × 9, taps in row-major order of the 3 × 3 kernel): its correlation with minus the
  neighbour adjacency (off-diagonal), its diagonal and its eigenvalues.  ``--quick``: 3 seeds, 100 steps.

The runs are far shorter than the paper's (CIFAR-10: 150 epochs, ~58k steps), so at hyper-lr 1e-4 Adam
moves each entry of M by at most 0.02–0.08; the docs page discusses what this does to each claim.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from precondalg.experiments.core import Claim, Context, CurveSpec, Result, experiment
from precondalg.experiments.harness import (
    RunRecord,
    train,
    tune_and_evaluate,
    tuning_record,
)
from precondalg.experiments.methods import ADAPTIVE_GRID, LR_GRID, METHODS, Method
from precondalg.experiments.output import mean_std
from precondalg.experiments.tasks import TaskInstance, digits_cnn, digits_split, seeded, shuffled_batches
from precondalg.experiments.toy import edge_notes
from precondalg.optim import FOP
from precondalg.placement import default_placement

__all__ = [
    "ANGLE_EVERY",
    "RANKS",
    "adjacency",
    "angle_degrees",
    "cell_name",
    "cell_table",
    "digits_mlp4",
    "early_loss",
    "improved_cells",
    "learned_spatial",
    "preconditioned_angles",
    "rank_order_rho",
    "recording",
    "whitening_corr",
]

PAPER = "FOP (Moskovitz et al. 2019)"
CHANCE = 0.1
"""The accuracy a diverged run scores (ten balanced classes)."""
HYPER_LR = 1e-4
"""Adam's learning rate on M: the paper's CIFAR-10 value (Fig. 4's is stripped from the text)."""
LOW_RANK_STD = 1e-2
"""The std of the initial low-rank M (variance 1e-4, our choice; the paper's ε is not given)."""
RANKS: tuple[int | None, ...] = (1, 4, 16, 64, None)
"""FOP-E3's ranks (None: full, dense M₀ = I); the paper's Fig. 2 sweeps r up to 784."""
QUICK_RANKS: tuple[int | None, ...] = (1, 16, None)
ANGLE_EVERY = 100
EARLY = 0.2
"""The early-training window of FOP-E3: the first 20% of steps."""
SPEEDUP = 0.01
"""The smallest relative drop of the early loss that counts as acceleration (below it, a rank's P is
indistinguishable from I within the window)."""
LRS = (0.01, 0.03, 0.1, 0.3, 1.0)
MOMENTA = (0.0, 0.5, 0.9, 0.95, 0.99)
QUICK_LRS = (0.03, 0.3)
QUICK_MOMENTA = (0.0, 0.9)
QUICK_ADAM_LRS = (1e-2, 1e-3)
"""FOP-E6 ``--quick``: cells of the full grid at the same steps and seeds, so their numbers are the full
run's: one cell per quadrant of the claim and two others; the Adam learning rates include the best ones."""
FAILS, TRAINS = 0.2, 0.5
"""FOP-E6: a cell "fails" at mean accuracy ≤ 0.2 (chance 0.1) and "trains" at ≥ 0.5."""
E7_LR, E7_MOMENTUM = 0.1, 0.9


# ----- shared pieces -----


def digits_mlp4(seed: int, epochs: int = 20) -> TaskInstance:
    """FOP-E3's task (module docstring): the harness's digits split, MLP 64-100-100-100-10, batch 32."""
    X, y, Xt, yt = digits_split(image=False)
    model = seeded(
        seed,
        lambda: nn.Sequential(
            nn.Linear(64, 100),
            nn.ReLU(),
            nn.Linear(100, 100),
            nn.ReLU(),
            nn.Linear(100, 100),
            nn.ReLU(),
            nn.Linear(100, 10),
        ),
    )
    return TaskInstance(
        model,
        F.cross_entropy,
        shuffled_batches(X, y, 32, epochs, seed),
        (X, y),
        (Xt, yt),
        0.1,
        classification=True,
    )


def _cnn_without_curve(seed: int) -> TaskInstance:
    """`digits_cnn` without the whole-training-set evaluations of the loss curve (the final loss is the
    mean batch loss of the last 10% of steps): FOP-E6 and FOP-E7 read only accuracies and P."""
    return dataclasses.replace(digits_cnn(seed), eval_batch=None)


def _accuracy(run: RunRecord) -> float:
    """The run's test accuracy; a diverged run scores `CHANCE`."""
    return CHANCE if run.accuracy is None else run.accuracy


def angle_degrees(a: torch.Tensor, b: torch.Tensor) -> float:
    """The angle between two tensors of one shape, seen as vectors, in degrees (NaN if one is zero);
    computed in float64 (acos near 1 turns float32 rounding into hundredths of a degree)."""
    a, b = a.double(), b.double()
    cos = float((a * b).sum() / (a.norm() * b.norm()))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos)))) if math.isfinite(cos) else math.nan


def preconditioned_angles(opt: torch.optim.Optimizer) -> list[float]:
    """Per preconditioned block of a `Preconditioned` optimizer: the angle (degrees) between the gradient
    g held in ``.grad`` and Pg, both in the placement's view (FOP's: G ↦ G·P for weight matrices, the
    (h·w, o·i) view of conv kernels).

    Raises:
        ValueError: a preconditioned parameter without a gradient.
    """
    out = []
    for params, P in opt.preconditioners():
        g = params[0].grad
        if g is None:
            shape = tuple(params[0].shape)
            raise ValueError(f"the preconditioned parameter of shape {shape} has no gradient")
        X = default_placement(tuple(g.shape)).view([g])
        out.append(angle_degrees(X, P @ X))
    return out


@dataclasses.dataclass
class Recorded:
    """What a recording row keeps of one run: the optimizer (its final P), and the per-layer angles of
    `preconditioned_angles` as (step, angles) every ``every`` steps."""

    optimizer: torch.optim.Optimizer
    angles: list[tuple[int, list[float]]]


def recording(
    name: str, make: Callable[..., torch.optim.Optimizer], every: int | None = None
) -> tuple[Method, list[Recorded]]:
    """A harness row that keeps each run's optimizer (in the returned list, in run order), and
    with `every` the angles between g and Pg after every `every`-th step.  Its grid is a placeholder:
    callers pass the hyperparameters to `train` themselves."""
    runs: list[Recorded] = []

    def build(model: nn.Module, task: TaskInstance, **hp: Any) -> torch.optim.Optimizer:
        opt = make(model, task, **hp)
        rec = Recorded(opt, [])
        runs.append(rec)
        if every is not None:
            count = [0]

            def log(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
                count[0] += 1
                if count[0] % every == 0:
                    rec.angles.append((count[0], preconditioned_angles(optimizer)))

            opt.register_step_post_hook(log)
        return opt

    return Method(name, build, ({},)), runs


# ----- FOP-E3 -----


def early_loss(curve: Sequence[tuple[float, float]], until: float) -> float:
    """The mean of a loss curve over steps [0, until]: the trapezoid area under its points with step ≤
    `until`, divided by the last such step (+inf when a value there is not finite).

    Raises:
        ValueError: fewer than two points up to `until`.
    """
    pts = [(x, v) for x, v in curve if x <= until]
    if len(pts) < 2:
        raise ValueError(f"the early window [0, {until}] holds {len(pts)} curve points; need at least 2")
    area = sum((x1 - x0) * (v0 + v1) / 2 for (x0, v0), (x1, v1) in zip(pts, pts[1:]))
    return area / pts[-1][0] if math.isfinite(area) else math.inf


def rank_order_rho(values: Sequence[float]) -> float:
    """Spearman's ρ between the position (the rank r, increasing) and `values` (NaN when constant)."""
    if len(set(values)) < 2:
        return math.nan
    return float(stats.spearmanr(range(len(values)), values).statistic)


def _rank_label(r: int | None) -> str:
    return "FOP full" if r is None else f"FOP r={r}"


def _fop_rank(model: nn.Module, task: TaskInstance, lr: float, rank: int | None) -> torch.optim.Optimizer:
    return FOP(
        model.parameters(),
        lr,
        momentum=0.9,
        hyper_lr=HYPER_LR,
        rank=rank,
        low_rank_std=LOW_RANK_STD,
        seed=task.seed,
    )


def _row_metrics(runs: list[RunRecord], steps: int) -> dict[str, list[float]]:
    return {
        "early loss (first 20%)": [
            math.inf
            if r.diverged_at is not None and r.diverged_at <= EARLY * steps
            else early_loss(r.curve, EARLY * steps)
            for r in runs
        ],
        "final train loss": [r.final_loss for r in runs],
        "test accuracy": [_accuracy(r) for r in runs],
    }


def _rank_claims(
    metrics: dict[str, dict[str, list[float]]],
    labels: list[str],
    tuned: tuple[str, str],
    angles: list[float],
) -> list[Claim]:
    """FOP-E3's claims from its metrics: `labels` are the sweep rows in increasing rank, `tuned` the
    (FOP, SGDm) rows tuned with equal budgets, `angles` every logged angle (degrees)."""
    mean = {k: {m: statistics.fmean(v) for m, v in per.items()} for k, per in metrics.items()}
    early = {k: mean[k]["early loss (first 20%)"] for k in labels}
    sgd_early = mean["SGDm"]["early loss (first 20%)"]
    accs = [mean[k]["test accuracy"] for k in labels]
    rho = rank_order_rho(accs)
    fop, sgd = (metrics[k]["test accuracy"] for k in tuned)
    diff = statistics.fmean(fop) - statistics.fmean(sgd)
    p = float(stats.ttest_rel(fop, sgd).pvalue) if any(a != b for a, b in zip(fop, sgd)) else math.nan
    return [
        Claim(
            f"every rank lowers the mean training loss of the first 20% of steps by ≥ {SPEEDUP:.0%} below "
            "SGDm's (paper Fig. 2: all ranks accelerate early training)",
            ", ".join(f"{k} {v / sgd_early - 1:+.2%}" for k, v in early.items())
            + f" vs SGDm {sgd_early:.4f}",
            all(v <= (1 - SPEEDUP) * sgd_early for v in early.values()),
        ),
        Claim(
            "final test accuracy is non-decreasing in the rank: Spearman ρ > 0.6 (paper: larger r is "
            "better in final accuracy)",
            f"ρ = {rho:.2f}; " + ", ".join(f"{k} {a:.4f}" for k, a in zip(labels, accs)),
            rho > 0.6,
        ),
        Claim(
            "tuned full-rank FOP beats tuned SGDm in test accuracy, paired t-test p < 0.05 (paper: "
            "+0.6%, p = 1e-4, on MNIST; direction only)",
            f"{diff:+.4f} (p = {p:.3g})",
            diff >= 0 and p < 0.05,
        ),
        Claim(
            "the angle between g and Pg is below 90° in every layer at every logged step (Fig. A.1; "
            "P = MᵀM ⪰ 0)",
            f"max {max(angles, default=math.nan):.1f}° over {len(angles)} (layer, step) pairs",
            bool(angles) and max(angles) < 90,
        ),
    ]


@experiment(
    "FOP-E3",
    paper=PAPER,
    figure="Fig. 2",
    reproduces="rank sweep on an MLP: every rank speeds up early training, larger r is better",
    minutes=2.7,
    quick_minutes=0.35,
    seeds=5,
    steps=800,
    quick_steps=200,
    known_failures=(
        "every rank lowers the mean training loss",
        "final test accuracy is non-decreasing",
        "tuned full-rank FOP beats",
    ),
)
def rank_sweep(ctx: Context) -> Result:
    """FOP-E3 (module docstring)."""
    ranks = QUICK_RANKS if ctx.quick else RANKS
    labels = [_rank_label(r) for r in ranks]
    full_row, full_kept = recording("FOP", lambda m, t, lr: _fop_rank(m, t, lr, None), ANGLE_EVERY)
    methods = (METHODS["Momentum"], dataclasses.replace(METHODS["FOP"], make=full_row.make))
    total = 2 * (len(LR_GRID) + len(ctx.seeds)) + len(ranks) * len(ctx.seeds)
    with ctx.progress(total, "FOP-E3") as tick:
        tuned = {
            m.name: tune_and_evaluate(
                m, digits_mlp4, budget=len(LR_GRID), seeds=ctx.seeds, steps=ctx.steps, tick=tick
            )
            for m in methods
        }
        lr = tuned["Momentum"].chosen["lr"]
        runs: dict[str, list[RunRecord]] = {}
        kept: dict[str, list[Recorded]] = {}
        for r, label in zip(ranks, labels):
            if r is None and tuned["FOP"].chosen == {"lr": lr}:  # the tuned row's runs are this row's
                runs[label], kept[label] = tuned["FOP"].runs, full_kept[-len(ctx.seeds) :]
                continue
            row, kept[label] = recording(label, lambda m, t, lr, r=r: _fop_rank(m, t, lr, r), ANGLE_EVERY)
            runs[label] = []
            for seed in ctx.seeds:
                runs[label].append(train(row, {"lr": lr}, digits_mlp4, seed, ctx.steps))
                tick()
    rows = {"SGDm": tuned["Momentum"].runs, "FOP full (tuned)": tuned["FOP"].runs, **runs}
    metrics = {k: _row_metrics(v, ctx.steps) for k, v in rows.items()}
    for k, recs in kept.items():
        metrics[k]["max angle g, Pg (°)"] = [
            max((a for _, per in rec.angles for a in per), default=math.nan) for rec in recs
        ]
    angles = [a for recs in kept.values() for rec in recs for _, per in rec.angles for a in per]
    claims = _rank_claims(metrics, labels, ("FOP full (tuned)", "SGDm"), angles)
    tuning = {"SGDm": tuning_record(tuned["Momentum"]), "FOP full": tuning_record(tuned["FOP"])}
    return Result(
        metrics=metrics,
        claims=claims,
        config={
            "task": "digits, MLP 64-100-100-100-10 (ReLU), batch 32, 1297/500 split",
            "ranks": [r if r is not None else "full" for r in ranks],
            "sweep lr (SGDm's tuned)": lr,
            "momentum": 0.9,
            "hyper_lr": HYPER_LR,
            "low_rank_std": LOW_RANK_STD,
            "early window": f"first {EARLY:.0%} of steps",
            "angle every": ANGLE_EVERY,
        },
        curves={
            "train_loss": CurveSpec(
                {k: [list(r.curve) for r in v] for k, v in rows.items()},
                "digits MLP: training loss (whole training set)",
                "step",
                "loss",
            ),
            "angles": CurveSpec(
                {k: [[(s, max(per)) for s, per in rec.angles] for rec in v] for k, v in kept.items()},
                "largest per-layer angle between g and Pg",
                "step",
                "degrees",
            ),
        },
        tuning=tuning,
        notes=[
            f"The sweep rows run at SGDm's tuned lr {lr:g}; 'FOP full (tuned)' is FOP tuned over the same "
            f"{len(LR_GRID)} learning rates {list(LR_GRID)} (chosen {tuned['FOP'].chosen}).",
            "Ranks are one r for every layer (the preset's `rank`): r = 64 is full rank for the first layer "
            "only; 'full' is the dense M₀ = I of P = MᵀM.",
            "A diverged run scores the chance accuracy 0.1.",
            *edge_notes(tuning),
        ],
    )


# ----- FOP-E6 -----


def _sgdm(model: nn.Module, task: TaskInstance, lr: float, momentum: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)


def _sgdm_fop(model: nn.Module, task: TaskInstance, lr: float, momentum: float) -> torch.optim.Optimizer:
    return FOP(model.parameters(), lr, momentum=momentum, hyper_lr=HYPER_LR, seed=task.seed)


def _adam(model: nn.Module, task: TaskInstance, lr: float) -> torch.optim.Optimizer:
    return METHODS["Adam"].make(model, task, lr=lr)


def _adam_fop(model: nn.Module, task: TaskInstance, lr: float) -> torch.optim.Optimizer:
    return FOP(model.parameters(), lr, base="adam", hyper_lr=HYPER_LR, seed=task.seed)


def cell_name(method: str, lr: float, momentum: float) -> str:
    """The metrics row of one grid cell."""
    return f"{method} lr={lr:g} μ={momentum:g}"


def cell_table(
    metrics: dict[str, dict[str, list[float]]], method: str, lrs: Sequence[float], momenta: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """The mean and the std over seeds of the test accuracy of `method`'s cells, as (len(momenta),
    len(lrs)) arrays: row i is momenta[i], column j is lrs[j] (the heatmap's layout)."""
    values = [[metrics[cell_name(method, lr, mu)]["test accuracy"] for lr in lrs] for mu in momenta]
    arr = np.array(values, dtype=float)
    return arr.mean(-1), arr.std(-1, ddof=1)


def improved_cells(fop: tuple[np.ndarray, np.ndarray], sgd: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Cells where FOP's mean accuracy beats SGDm's by at least one std (the larger of the two) and by
    more than zero (Fig. 4a's blue cells); inputs and output are (momenta, lrs) arrays."""
    diff = fop[0] - sgd[0]
    return (diff > 0) & (diff >= np.maximum(fop[1], sgd[1]))


def _quadrants(lrs: Sequence[float], momenta: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Masks (momenta, lrs) of the top-right quadrant (lr ≥ 0.3, μ ≥ 0.9) and the bottom-left one
    (lr ≤ 0.03, μ ≤ 0.5)."""
    lr, mu = np.meshgrid(np.array(lrs), np.array(momenta))
    return (lr >= 0.3) & (mu >= 0.9), (lr <= 0.03) & (mu <= 0.5)


def _grid_claims(
    fop: tuple[np.ndarray, np.ndarray],
    sgd: tuple[np.ndarray, np.ndarray],
    lrs: Sequence[float],
    momenta: Sequence[float],
    adam_best: tuple[float, float],
) -> list[Claim]:
    """FOP-E6's claims from the cells' (mean, std) arrays and the best-over-lr accuracies (Adam, Adam+FOP)."""
    better = improved_cells(fop, sgd)
    top, bottom = _quadrants(lrs, momenta)
    n_top, n_bottom = int(better[top].sum()), int(better[bottom].sum())
    rescued = (sgd[0] <= FAILS) & (fop[0] >= TRAINS)
    where = [f"(lr {lrs[j]:g}, μ {momenta[i]:g})" for i, j in zip(*np.nonzero(rescued))]
    return [
        Claim(
            "FOP improves by ≥ 1 std in more cells of the top-right quadrant (lr ≥ 0.3, μ ≥ 0.9) than of the "
            "bottom-left (lr ≤ 0.03, μ ≤ 0.5) (paper Fig. 4a: FOP helps most at high lr and momentum)",
            f"{n_top} of {int(top.sum())} vs {n_bottom} of {int(bottom.sum())}; improved in "
            f"{int(better.sum())} of {better.size} cells",
            n_top > n_bottom,
        ),
        Claim(
            f"≥ 1 cell where SGDm fails (accuracy ≤ {FAILS}) and SGDm + FOP trains (≥ {TRAINS}) (paper: "
            "'in several instances FOP is able to train successfully where pure SGD with momentum fails')",
            ", ".join(where) or "none",
            bool(where),
        ),
        Claim(
            "the best Adam + FOP over learning rates is ≥ the best Adam (paper Fig. 4b: the top-performing "
            "models are improved by FOP)",
            f"Adam + FOP {adam_best[1]:.4f}, Adam {adam_best[0]:.4f}",
            adam_best[1] >= adam_best[0],
        ),
    ]


def _run_cells(
    ctx: Context,
    rows: dict[str, Method],
    points: list[dict[str, float]],
    name: Callable[..., str],
    tick: Callable[[], None],
) -> dict[str, dict[str, list[float]]]:
    """Every row at every point on every seed: {name(row, **point): {"test accuracy", "final loss"}}."""
    out = {}
    for label, method in rows.items():
        for hp in points:
            runs = []
            for seed in ctx.seeds:
                runs.append(train(method, hp, _cnn_without_curve, seed, ctx.steps))
                tick()
            out[name(label, **hp)] = {
                "test accuracy": [_accuracy(r) for r in runs],
                "final loss": [r.final_loss for r in runs],
            }
    return out


def plot_robustness(
    path: Path,
    tables: dict[str, tuple[np.ndarray, np.ndarray]],
    lrs: Sequence[float],
    momenta: Sequence[float],
    adam: dict[str, list[tuple[float, float, float]]],
) -> None:
    """Fig. 4's analogue: heatmaps of the mean test accuracy of SGDm and SGDm + FOP over (lr, μ), FOP's
    ≥ 1 std improvements outlined, and the accuracy of Adam ± FOP per learning rate (mean ± std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), dpi=100)
    better = improved_cells(tables["SGDm + FOP"], tables["SGDm"])
    for ax, (label, (mean, _)) in zip(axes, tables.items()):
        im = ax.imshow(mean, origin="lower", vmin=0.0, vmax=1.0, cmap="viridis")
        for i, j in np.ndindex(mean.shape):
            ax.text(
                j,
                i,
                f"{mean[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="w" if mean[i, j] < 0.6 else "k",
            )
            if label == "SGDm + FOP" and better[i, j]:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="tab:blue", lw=2.5))
        ax.set_xticks(range(len(lrs)), [f"{v:g}" for v in lrs])
        ax.set_yticks(range(len(momenta)), [f"{v:g}" for v in momenta])
        ax.set_xlabel("learning rate")
        ax.set_ylabel("momentum μ")
        ax.set_title(
            f"{label}: test accuracy" + (" (blue: ≥ 1 std better)" if "FOP" in label else ""), fontsize=10
        )
        fig.colorbar(im, ax=ax, fraction=0.046)
    ax = axes[2]
    for label, points in adam.items():
        xs, ms, ss = zip(*points)
        ax.errorbar(xs, ms, yerr=ss, marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("test accuracy")
    ax.set_title("Adam with and without FOP", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@experiment(
    "FOP-E6",
    paper=PAPER,
    figure="Fig. 4",
    reproduces="robustness: SGDm ± FOP over lr × momentum, Adam ± FOP over lr, on a digits CNN",
    minutes=3.3,
    quick_minutes=0.6,
    seeds=3,
    steps=200,
    quick_steps=200,
    known_failures=("≥ 1 cell where SGDm fails", "the best Adam + FOP"),
    # lr 0.3, μ 0.9 is chaotic: a relative 1e-7 change of the initial weights moves SGDm + FOP's accuracy
    # there by up to 0.3 (tests/test_experiments_fop_nets.py), so the quadrant claim's verdict is round-off's
    unsettled=("FOP improves by ≥ 1 std in more cells",),
)
def robustness(ctx: Context) -> Result:
    """FOP-E6 (module docstring)."""
    lrs, momenta = (QUICK_LRS, QUICK_MOMENTA) if ctx.quick else (LRS, MOMENTA)
    adam_lrs = QUICK_ADAM_LRS if ctx.quick else ADAPTIVE_GRID
    grid_rows = {"SGDm": Method("SGDm", _sgdm, ({},)), "SGDm + FOP": Method("SGDm + FOP", _sgdm_fop, ({},))}
    adam_rows = {"Adam": Method("Adam", _adam, ({},)), "Adam + FOP": Method("Adam + FOP", _adam_fop, ({},))}
    points = [{"lr": lr, "momentum": mu} for mu in momenta for lr in lrs]
    total = len(ctx.seeds) * 2 * (len(points) + len(adam_lrs))
    with ctx.progress(total, "FOP-E6") as tick:
        metrics = _run_cells(ctx, grid_rows, points, cell_name, tick)
        metrics |= _run_cells(
            ctx, adam_rows, [{"lr": v} for v in adam_lrs], lambda m, lr: f"{m} lr={lr:g}", tick
        )
    tables = {k: cell_table(metrics, k, lrs, momenta) for k in grid_rows}
    adam = {
        k: [(lr, *mean_std(metrics[f"{k} lr={lr:g}"]["test accuracy"])) for lr in adam_lrs] for k in adam_rows
    }
    best = (max(m for _, m, _ in adam["Adam"]), max(m for _, m, _ in adam["Adam + FOP"]))
    plot_robustness(ctx.out / "robustness.png", tables, lrs, momenta, adam)
    return Result(
        metrics=metrics,
        claims=_grid_claims(tables["SGDm + FOP"], tables["SGDm"], lrs, momenta, best),
        config={
            "task": "digits_cnn (conv 3×3 16 → pool → conv 3×3 32 → pool → linear 10), batch 64",
            "learning rates": list(lrs),
            "momenta": list(momenta),
            "Adam learning rates": list(adam_lrs),
            "hyper_lr": HYPER_LR,
            "mean accuracy (rows μ, columns lr)": {k: v[0].tolist() for k, v in tables.items()},
            "std accuracy (rows μ, columns lr)": {k: v[1].tolist() for k, v in tables.items()},
            "fails ≤, trains ≥": [FAILS, TRAINS],
        },
        notes=[
            "No tuning: the experiment is the grid; every cell runs on every seed.",
            "Improved = FOP's mean accuracy above SGDm's by > 0 and ≥ the larger of the two stds.",
            "A diverged run scores the chance accuracy 0.1.",
        ],
        figures=["robustness.png"],
    )


# ----- FOP-E7 -----


def adjacency(k: int = 3) -> torch.Tensor:
    """The (k², k²) adjacency of the taps of a k × k kernel (row-major): 1 where two distinct taps are
    immediate neighbours, diagonals included (|Δrow| ≤ 1 and |Δcol| ≤ 1), without wrap-around."""
    idx = torch.arange(k * k)
    r, c = idx // k, idx % k
    near = ((r[:, None] - r[None]).abs() <= 1) & ((c[:, None] - c[None]).abs() <= 1)
    return (near & ~torch.eye(k * k, dtype=torch.bool)).to(torch.float64)


def whitening_corr(P: torch.Tensor) -> float:
    """Pearson's correlation over the off-diagonal entries of a (k², k²) P with minus the tap adjacency:
    > 0 when neighbouring taps get the more negative weights (Fig. 5a's whitening pattern)."""
    n = P.shape[0]
    k = math.isqrt(n)
    if k * k != n or P.shape != (n, n):
        raise ValueError(f"expected a square P over the taps of a square kernel; got shape {tuple(P.shape)}")
    off = ~torch.eye(n, dtype=torch.bool)
    pair = torch.stack([P.to(torch.float64)[off], -adjacency(k)[off]])
    return float(torch.corrcoef(pair)[0, 1])


def learned_spatial(opt: torch.optim.Optimizer) -> list[tuple[tuple[int, ...], torch.Tensor]]:
    """(kernel shape, dense P) of every conv kernel a `Preconditioned` optimizer preconditions, in order."""
    return [(tuple(ps[0].shape), P.to_dense().detach()) for ps, P in opt.preconditioners() if ps[0].ndim == 4]


def _layer_stats(Ps: list[torch.Tensor]) -> dict[str, float]:
    """Per layer (one P per seed): mean correlation, mean diagonal, smallest eigenvalue, eigenvalue
    max/min ratio (means over seeds; the smallest eigenvalue over seeds)."""
    eig = [torch.linalg.eigvalsh(P.to(torch.float64)) for P in Ps]
    return {
        "whitening corr": statistics.fmean(whitening_corr(P) for P in Ps),
        "mean diag": statistics.fmean(float(P.diagonal().mean()) for P in Ps),
        "min eigenvalue": min(float(e.min()) for e in eig),
        "eigenvalue spread": statistics.fmean(float(e.max() / e.min()) for e in eig),
    }


def _structure_claims(layers: dict[str, dict[str, float]]) -> list[Claim]:
    """FOP-E7's claims from the per-layer statistics of `_layer_stats`."""
    corr = statistics.fmean(s["whitening corr"] for s in layers.values())
    diags = {k: s["mean diag"] for k, s in layers.items()}
    low = min(s["min eigenvalue"] for s in layers.values())
    return [
        Claim(
            "the mean over conv layers of corr(P_ij, −adjacent_ij) is > 0: positive self-weight, negative "
            "weights to the 3×3 neighbours (paper Fig. 5a: a whitening pattern)",
            f"{corr:+.3f}",
            corr > 0,
        ),
        Claim(
            "the diagonal of P shrinks from 1 in every conv layer (paper §5: 'the diagonal elements, "
            "initialized to ones, shrink in value')",
            ", ".join(f"{k} {v:.4f}" for k, v in diags.items()),
            all(v < 1 for v in diags.values()),
        ),
        Claim(
            "every eigenvalue of every learned P is > 0 (paper Fig. 5c: positive definite)",
            f"smallest {low:.4g}",
            low > 0,
        ),
    ]


def plot_spatial(path: Path, layers: list[tuple[str, torch.Tensor, list[torch.Tensor]]]) -> None:
    """Fig. 5's analogue, one column per conv layer: seed 0's P as an image, the same with its diagonal
    masked (the off-diagonal pattern), and the sorted eigenvalues of every seed's P."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, len(layers), figsize=(4.2 * len(layers), 11), dpi=100, squeeze=False)
    for col, (name, P, Ps) in enumerate(layers):
        top = axes[0, col].imshow(P.numpy(), cmap="RdBu_r")
        axes[0, col].set_title(f"{name}: P = MᵀM (seed 0)", fontsize=10)
        fig.colorbar(top, ax=axes[0, col], fraction=0.046)
        off = P.clone().numpy()
        np.fill_diagonal(off, np.nan)
        lim = float(np.nanmax(np.abs(off)))
        mid = axes[1, col].imshow(off, cmap="RdBu_r", vmin=-lim, vmax=lim)
        axes[1, col].set_title("off-diagonal (diagonal masked)", fontsize=10)
        fig.colorbar(mid, ax=axes[1, col], fraction=0.046)
        for ax in axes[:2, col]:
            ax.set_xticks(range(9))
            ax.set_yticks(range(9))
        for s, Q in enumerate(Ps):
            eig = sorted(torch.linalg.eigvalsh(Q).tolist(), reverse=True)
            axes[2, col].plot(eig, marker=".", label=f"seed {s}")
        axes[2, col].set_title("eigenvalues, sorted", fontsize=10)
        axes[2, col].set_xlabel("index")
        axes[2, col].grid(alpha=0.3)
        axes[2, col].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@experiment(
    "FOP-E7",
    paper=PAPER,
    figure="Fig. 5",
    reproduces="the learned spatial P = MᵀM of a digits CNN: whitening pattern, shrinking diagonal",
    minutes=0.4,
    quick_minutes=0.15,
    seeds=5,
    steps=600,
    quick_steps=100,
    known_failures=("the mean over conv layers of corr", "the diagonal of P shrinks"),
)
def learned_matrices(ctx: Context) -> Result:
    """FOP-E7 (module docstring)."""
    row, kept = recording("FOP", lambda m, t, lr: _sgdm_fop(m, t, lr, E7_MOMENTUM))
    runs = []
    with ctx.progress(len(ctx.seeds), "FOP-E7") as tick:
        for seed in ctx.seeds:
            runs.append(train(row, {"lr": E7_LR}, _cnn_without_curve, seed, ctx.steps))
            tick()
    per_seed = [learned_spatial(rec.optimizer) for rec in kept]
    names = [f"conv {i + 1} {shape}" for i, (shape, _) in enumerate(per_seed[0])]
    Ps = {name: [seed[i][1] for seed in per_seed] for i, name in enumerate(names)}
    layers = {name: _layer_stats(v) for name, v in Ps.items()}
    plot_spatial(ctx.out / "learned_P.png", [(n, v[0], v) for n, v in Ps.items()])
    metrics = {"FOP": {"test accuracy": [_accuracy(r) for r in runs]}}
    for name, v in Ps.items():
        metrics[name] = {
            "whitening corr": [whitening_corr(P) for P in v],
            "mean diag": [float(P.diagonal().mean()) for P in v],
            "min eigenvalue": [float(torch.linalg.eigvalsh(P).min()) for P in v],
            "max eigenvalue": [float(torch.linalg.eigvalsh(P).max()) for P in v],
        }
    trend = "; ".join(
        f"{n}: corr {s['whitening corr']:+.3f}, mean diag {s['mean diag']:.4f}, eigenvalue max/min "
        f"{s['eigenvalue spread']:.3f}"
        for n, s in layers.items()
    )
    return Result(
        metrics=metrics,
        claims=_structure_claims(layers),
        config={
            "task": "digits_cnn, batch 64",
            "lr": E7_LR,
            "momentum": E7_MOMENTUM,
            "hyper_lr": HYPER_LR,
            "P of seed 0 per layer": {n: v[0].tolist() for n, v in Ps.items()},
        },
        notes=[
            f"Trend across layers (informational; paper: more decorrelation, smaller and more uniform "
            f"eigenvalues in higher layers): {trend}.",
            "Taps are numbered row-major over the 3×3 kernel (0 1 2 / 3 4 5 / 6 7 8).",
        ],
        figures=["learned_P.png"],
    )
