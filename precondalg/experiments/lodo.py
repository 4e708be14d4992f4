"""LODO's small experiments (Liao et al. 2023): the noisy quadratic bowl (§5.1, Fig. 2, Table 1) at the
scale-down EXPERIMENTS of this project runs on a CPU, and the rescaled Rosenbrock function (§5.2, Fig. 3,
App. G, Table 8).

LODO is `precondalg.optim.LODO` with the paper's tuned values (Table 6); the baselines are torch.optim's
at the paper's tuned values where Table 6 kept them, and every baseline is also tuned with an equal
budget (5 learning rates each, the other settings torch's defaults): on the bowl on a tuning seed apart
from the evaluation seeds; on the deterministic Rosenbrock function on the one run also reported.  The
seed draws LODO's permutations and, on the bowl, the walk of the centre.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable
from typing import Any

import torch

from precondalg.experiments.core import Claim, Context, CurveSpec, Result, experiment
from precondalg.experiments.noisy_bowl import NoisyBowl, best_sgd, bowl_eigenvalues, run
from precondalg.experiments.toy import Descent, descend, edge_notes
from precondalg.optim import LODO

__all__ = ["BOWL_GRIDS", "ROSENBROCK_GRIDS", "rescaled_rosenbrock"]

TUNE_SEED = 1000
Make = Callable[[Any], torch.optim.Optimizer]

BASELINES: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "SGD": lambda p, lr: torch.optim.SGD(p, lr=lr),
    "Momentum": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9),
    "Adam": lambda p, lr: torch.optim.Adam(p, lr=lr),
    "RMSprop": lambda p, lr: torch.optim.RMSprop(p, lr=lr),
    "LBFGS": lambda p, lr: torch.optim.LBFGS(p, lr=lr, max_iter=1, history_size=10),
}
BOWL_GRIDS = {
    "SGD": (3.0, 1.7, 1.0, 0.5, 0.25),
    "Momentum": (1.0, 0.5, 0.3, 0.17, 0.1),
    "Adam": (3.0, 2.0, 1.2, 0.7, 0.4),
    "RMSprop": (3.0, 2.0, 1.2, 0.7, 0.4),
}
"""Equal-budget learning-rate grids on the bowl (Momentum at μ = 0.9; the paper-tuned rows beside)."""
ROSENBROCK_GRIDS = {
    "SGD": (1.0, 0.5, 0.2, 0.1, 0.05),
    "Momentum": (0.2, 0.1, 0.05, 0.02, 0.01),
    "Adam": (1.0, 0.5, 0.2, 0.1, 0.05),
    "RMSprop": (0.3, 0.1, 0.03, 0.01, 0.003),
    "LBFGS": (1.0, 0.5, 0.2, 0.1, 0.05),
}


def _tune(
    score: Callable[[Make], float], grids: dict[str, tuple[float, ...]], tick: Callable[[], None]
) -> dict:
    """Each baseline over its grid; the lowest score (a non-finite one counts as +inf) wins."""
    out = {}
    for name, lrs in grids.items():
        trials = []
        for lr in lrs:
            value = score(lambda p, name=name, lr=lr: BASELINES[name](p, lr))
            trials.append([{"lr": lr}, value if math.isfinite(value) else math.inf])
            tick()
        best = min(trials, key=lambda t: t[1])
        out[name] = {
            "grid": [{"lr": v} for v in lrs],
            "chosen": best[0],
            "trials": trials,
            "at_grid_edge": best[0]["lr"] in (lrs[0], lrs[-1]),
        }
    return out


# ------------------------------------------------------------------------------------- LODO-E1
BOWL_N, BOWL_LAM_MIN = 32, 1e-2
LODO_BOWL = {"lr": 0.270, "beta": 0.195, "meta_lr": 9.6e-4}
"""Table 6's noisy-bowl LODO values (the meta-lr cell is ambiguous: 9.6e-4 is its first surviving number)."""
PAPER_BOWL: dict[str, Make] = {
    "Adam (paper-tuned)": lambda p: torch.optim.Adam(p, lr=1.164, betas=(0.465, 0.9884), eps=1e-7),
    "Momentum (paper-tuned)": lambda p: torch.optim.SGD(p, lr=1.394, momentum=0.529),
}


@experiment(
    "LODO-E1",
    paper="LODO (Liao et al. 2023)",
    figure="Fig. 2, Table 1",
    reproduces="noisy quadratic bowl: LODO's late loss between Newton's and the best SGD's, below others'",
    minutes=3.0,
    quick_minutes=1.0,
    seeds=3,
    steps=20_000,
    quick_steps=5_000,
)
def bowl_experiment(ctx: Context) -> Result:
    """LODO-E1 at the CI scale-down: n = 32, λ from 1e-2 to 1, σ = 1 (module docstring)."""
    lam = bowl_eigenvalues(BOWL_N, BOWL_LAM_MIN)
    newton = NoisyBowl(BOWL_N, lam_min=BOWL_LAM_MIN).newton_loss()
    eta_star, sgd_star = best_sgd(lam)
    every = max(1, ctx.steps // 40)

    def late(make: Make, seed: int, **kw: Any):
        return run(make, ctx.steps, n=BOWL_N, lam_min=BOWL_LAM_MIN, seed=seed, **kw)

    total = sum(len(g) for g in BOWL_GRIDS.values()) + len(ctx.seeds) * (
        2 + len(PAPER_BOWL) + len(BOWL_GRIDS)
    )
    runs: dict[str, list] = {}
    with ctx.progress(total, "LODO-E1") as tick:
        tuning = _tune(lambda make: late(make, TUNE_SEED).late_mean(), BOWL_GRIDS, tick)
        runs["LODO"] = []
        for seed in ctx.seeds:
            make = functools.partial(LODO, **LODO_BOWL, seed=seed)
            runs["LODO"].append(late(make, seed, hessian_every=every))
            tick()
        rows: dict[str, Make] = {
            f"SGD η* = {eta_star:.3f} (derived)": lambda p: torch.optim.SGD(p, lr=eta_star),
            **PAPER_BOWL,
            **{f"{k} (tuned)": (lambda p, k=k: BASELINES[k](p, **tuning[k]["chosen"])) for k in BOWL_GRIDS},
        }
        for label, make in rows.items():
            runs[label] = []
            for seed in ctx.seeds:
                runs[label].append(late(make, seed))
                tick()
    metrics = {
        label: {
            "late loss (last 10%)": [r.late_mean() for r in rs],
            "late loss / Newton's": [r.late_mean() / newton for r in rs],
        }
        for label, rs in runs.items()
    }
    metrics["LODO"]["final ‖I − GH‖_F/√n"] = [r.hessian_error[-1] for r in runs["LODO"]]
    lodo = [r.late_mean() for r in runs["LODO"]]
    lodo_mean, lodo_std = statistics.fmean(lodo), statistics.stdev(lodo)
    base = {k: [r.late_mean() for r in rs] for k, rs in runs.items() if k != "LODO"}
    separated = all(
        lodo_mean + lodo_std < statistics.fmean(v) - statistics.stdev(v)
        for v in base.values()
        if all(map(math.isfinite, v))
    )
    errors = [
        statistics.fmean(r.hessian_error[i] for r in runs["LODO"])
        for i in range(len(runs["LODO"][0].hessian_error))
    ]
    half = len(errors) // 2
    decreasing = statistics.fmean(errors[half:]) < statistics.fmean(errors[1:half]) if half > 1 else False
    closest = min(
        base,
        key=lambda k: (
            abs(statistics.fmean(base[k]) - newton) if all(map(math.isfinite, base[k])) else math.inf
        ),
    )
    claims = [
        Claim(
            f"LODO's late loss is below every baseline's, mean ± std separated ({len(ctx.seeds)} seeds)",
            f"LODO {lodo_mean:.3f} ± {lodo_std:.2g}; the baseline closest to Newton's, {closest}, "
            f"{statistics.fmean(base[closest]):.3f}",
            separated,
        ),
        Claim(
            f"LODO's late loss lies between Newton's {newton:.3f} and the best fixed-lr SGD's {sgd_star:.3f}",
            f"{lodo_mean:.3f}",
            newton < lodo_mean < sgd_star,
        ),
        Claim(
            "LODO's inverse-Hessian error decreases (mean of the second half < the first's, after warm-up)",
            f"first half {statistics.fmean(errors[1:half]):.3f}, second half "
            f"{statistics.fmean(errors[half:]):.3f} (from {errors[1]:.3f} to {errors[-1]:.3f})",
            decreasing,
        ),
    ]
    loss_curve = {
        label: [
            [
                (float(t), float(r.losses[max(0, t - every) : t].mean()))
                for t in range(every, ctx.steps + 1, every)
            ]
            for r in rs
        ]
        for label, rs in runs.items()
    }
    hess = {"LODO": [list(zip(map(float, r.hessian_steps), r.hessian_error)) for r in runs["LODO"]]}
    return Result(
        metrics=metrics,
        claims=claims,
        config={
            "n": BOWL_N,
            "λ": f"geomspace({BOWL_LAM_MIN}, 1, {BOWL_N})",
            "σ²": 1.0,
            "steps": ctx.steps,
            "LODO": LODO_BOWL,
            "Newton's loss ½tr(H)": newton,
            "best SGD (η*, loss)": (eta_star, sgd_star),
            "paper-tuned": {
                "Adam": {"lr": 1.164, "betas": (0.465, 0.9884), "eps": 1e-7},
                "Momentum": {"lr": 1.394, "momentum": 0.529},
            },
        },
        curves={
            "loss": CurveSpec(
                loss_curve, f"noisy bowl n = {BOWL_N}: loss (window means)", "step", "loss", newton
            ),
            "hessian_error": CurveSpec(hess, "LODO: ‖I − GH‖_F/√n", "step", "error"),
        },
        tuning=tuning,
        notes=[
            f"Scale-down of the paper's n = 100 bowl (the full version is `benchmarks/lodo_bowl.py`); "
            f"the paper's Newton 7.41 is {newton:.3f} here (½tr(H)), its best SGD {sgd_star:.3f} (derived, "
            f"η* = {eta_star:.3f}).",
            "Yogi, BFGS and the paper's L-BFGS variants are not in torch.optim; `benchmarks/lodo_bowl.py` "
            "runs the authors' Yogi and BFGS. torch's L-BFGS is not run on the bowl: it re-evaluates the "
            "loss inside a step, and the bowl's centre moves at every evaluation.",
            *edge_notes(tuning),
        ],
    )


# ------------------------------------------------------------------------------------- LODO-E2
def rescaled_rosenbrock(p: torch.Tensor) -> torch.Tensor:
    """0.01(1 − x)² + (y − x²)² (the authors' code), minimum 0 at (1, 1)."""
    x, y = p[..., 0], p[..., 1]
    return 0.01 * (1 - x) ** 2 + (y - x**2) ** 2


ROSENBROCK_START = (-0.5, 2.0)
WINDOW = (180, 200)
PAPER_TABLE8 = {"Adam": 5.342e-5, "RMSprop": 8.967e-4, "Momentum": 1.397e-2, "LODO": 1.040e-3}
LODO_ROSENBROCK = {"lr": 0.2946, "beta": 0.897}
META_LRS = (1.394e-4, 9.6e-4)
"""The two candidate meta-lr cells of Table 6 (column alignment unknown): both are run."""
PAPER_ROSENBROCK: dict[str, Make] = {
    "Adam (paper-tuned)": lambda p: torch.optim.Adam(p, lr=0.9704, betas=(0.864, 0.99804)),
    "Momentum (paper-tuned)": lambda p: torch.optim.SGD(p, lr=0.09870, momentum=0.9359),
    "RMSprop (paper-tuned, lr 0.449)": lambda p: torch.optim.RMSprop(p, lr=0.449),
    "RMSprop (paper-tuned, lr 0.004318)": lambda p: torch.optim.RMSprop(p, lr=0.004318),
}


def _window(d: Descent) -> float:
    values = d.values[WINDOW[0] : WINDOW[1] + 1]
    return statistics.fmean(values) if len(values) == WINDOW[1] - WINDOW[0] + 1 else math.inf


@experiment(
    "LODO-E2",
    paper="LODO (Liao et al. 2023)",
    figure="Fig. 3, App. G, Table 8",
    reproduces="rescaled Rosenbrock: mean loss over steps 180–200, Adam best, LODO 1.04e-3",
    known_failures=(  # Table 6's surviving momentum and RMSprop cells do not give Table 8's losses
        "Momentum (paper-tuned) within ×3",
        "RMSprop (paper-tuned, the better lr cell)",
        "ordering Adam < {RMSprop, LODO} < Momentum",
    ),
    minutes=0.5,
    quick_minutes=0.3,
    seeds=8,
    steps=200,
)
def rosenbrock_experiment(ctx: Context) -> Result:
    """LODO-E2 (module docstring): 200 steps from (−0.5, 2)."""
    if ctx.steps < WINDOW[1]:
        raise ValueError(f"LODO-E2 measures steps {WINDOW[0]}–{WINDOW[1]}: --steps must be ≥ {WINDOW[1]}")
    steps = ctx.steps
    f, start = rescaled_rosenbrock, ROSENBROCK_START

    def lodo(meta_lr: float, seed: int) -> Make:
        return lambda m: LODO(
            m.parameters(), lr=LODO_ROSENBROCK["lr"], beta=LODO_ROSENBROCK["beta"], meta_lr=meta_lr, seed=seed
        )

    total = (
        sum(len(g) for g in ROSENBROCK_GRIDS.values())
        + len(ctx.seeds) * len(META_LRS)
        + len(PAPER_ROSENBROCK)
        + len(ROSENBROCK_GRIDS)
    )
    runs: dict[str, list[Descent]] = {}
    with ctx.progress(total, "LODO-E2") as tick:
        tuning = _tune(
            lambda make: _window(descend(f, start, lambda m: make(m.parameters()), steps, None)),
            ROSENBROCK_GRIDS,
            tick,
        )
        for meta_lr in META_LRS:
            label = f"LODO (meta_lr {meta_lr:g})"
            runs[label] = []
            for seed in ctx.seeds:
                runs[label].append(descend(f, start, lodo(meta_lr, seed), steps, None))
                tick()
        rows = dict(PAPER_ROSENBROCK) | {
            f"{k} (tuned)": (lambda p, k=k: BASELINES[k](p, **tuning[k]["chosen"])) for k in ROSENBROCK_GRIDS
        }
        for label, make in rows.items():
            d = descend(f, start, lambda m, make=make: make(m.parameters()), steps, None)  # deterministic
            runs[label] = [d] * len(ctx.seeds)
            tick()
    metrics = {label: {"mean loss, steps 180–200": [_window(d) for d in ds]} for label, ds in runs.items()}
    med = {label: statistics.median(v["mean loss, steps 180–200"]) for label, v in metrics.items()}
    lodo_label = min(
        (f"LODO (meta_lr {m:g})" for m in META_LRS),
        key=lambda k: abs(math.log(med[k] / PAPER_TABLE8["LODO"])),
    )

    def within3(measured: float, paper: float) -> bool:
        return math.isfinite(measured) and paper / 3 <= measured <= 3 * paper

    adam, mom = med["Adam (paper-tuned)"], med["Momentum (paper-tuned)"]
    rms = min(med["RMSprop (paper-tuned, lr 0.449)"], med["RMSprop (paper-tuned, lr 0.004318)"])
    claims = [
        Claim(
            f"LODO within ×3 of 1.04e-3 (Table 8), median of {len(ctx.seeds)} seeds, at the closer "
            "meta-lr cell",
            f"{lodo_label}: {med[lodo_label]:.3g}",
            within3(med[lodo_label], PAPER_TABLE8["LODO"]),
        ),
        Claim("Adam (paper-tuned) within ×3 of 5.342e-5", f"{adam:.3g}", within3(adam, PAPER_TABLE8["Adam"])),
        Claim(
            "Momentum (paper-tuned) within ×3 of 1.397e-2",
            f"{mom:.3g}",
            within3(mom, PAPER_TABLE8["Momentum"]),
        ),
        Claim(
            "RMSprop (paper-tuned, the better lr cell) within ×3 of 8.967e-4",
            f"{rms:.3g}",
            within3(rms, PAPER_TABLE8["RMSprop"]),
        ),
        Claim(
            "ordering Adam < {RMSprop, LODO} < Momentum (Yogi not run)",
            f"Adam {adam:.3g}, RMSprop {rms:.3g}, LODO {med[lodo_label]:.3g}, Momentum {mom:.3g}",
            adam < min(rms, med[lodo_label]) and max(rms, med[lodo_label]) < mom,
        ),
    ]
    curves = {
        label: [
            [(float(t), v) for t, v in enumerate(d.values)]
            for d in (ds if label.startswith("LODO") else ds[:1])
        ]
        for label, ds in runs.items()
    }
    return Result(
        metrics=metrics,
        claims=claims,
        config={
            "function": "0.01(1 − x)² + (y − x²)²",
            "start": start,
            "steps": steps,
            "window": WINDOW,
            "LODO": LODO_ROSENBROCK | {"meta_lr": list(META_LRS)},
        },
        curves={"loss": CurveSpec(curves, "rescaled Rosenbrock: loss per step", "step", "loss")},
        tuning=tuning,
        notes=[
            f"Of the two candidate meta-lr cells, {lodo_label} is closer to the paper's LODO value.",
            "Deterministic rows (all but LODO) are run once; their spread over seeds is 0.",
            *edge_notes(tuning),
        ],
    )
