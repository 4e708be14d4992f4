"""Speed and memory of precondalg's optimizers against torch.optim, measured side by side (QUALITY.md §4).

Run from the repository root:

    python benchmarks/optimizers.py                       # CPU, default repeats, writes benchmarks/results/
    python benchmarks/optimizers.py --device cuda         # the same on a GPU
    python benchmarks/optimizers.py --repeats 40 --json out.json

What it measures (docs/benchmarks.md describes the protocol in full):

1. Step time.  On (a) an MLP 64-100-100-10 and (b) a small CNN, both on scikit-learn's ``load_digits``
   (batch 128, cross-entropy), every method trains its own copy of the *same* initial model on the
   *same* sequence of batches.  The methods: torch.optim's SGD-momentum and Adam (the baselines); FOP
   (full, low rank, spatial), S-HD and PP-HD; Shampoo (roots every step, every 10 steps, and with Adam
   grafting), beside the peer ``pytorch_optimizer.Shampoo`` at the same cadences where it is installed;
   K-FAC (inverses every step and every 10 steps); APO-Precond and APO-lr (base momentum 0.9) with a
   meta-update every 1, 10 and 100 steps.  After a warm-up, the methods are run in
   interleaved rounds (the order is shuffled every round); in each round each method runs ``--steps``
   consecutive training steps, each timed twice with ``time.perf_counter`` (``torch.cuda.synchronize``
   before every clock read on CUDA): the whole training step (zero_grad + forward + backward +
   ``opt.step()``) and ``opt.step()`` alone.  A method whose step takes the data (APO, marked by
   `WithBatches`) is called ``opt.step(batch=(x, y), fsd_batch=x2)`` with (x, y) the step's batch and
   x2 the inputs of the next batch of the same sequence; both are picked before the clock starts.
   A round's figure is the median over its steps; a method's ratio to a baseline is the median over
   rounds of (method / baseline in the same round), so that slow drift of a shared machine cancels.
   The median of a round hides work done once every k steps (Shampoo's roots, K-FAC's inverses with
   update_every = 10, APO's meta-update with meta_every = 10: one step in ten); the same figures with
   each round's *mean* instead of its median, which spread that work over the steps, are reported
   beside them ("amortised").  Work done less often than once a round (APO's meta_every = 100: 3 of
   the 300 timed steps) falls in few rounds, which the median over rounds passes over; the "whole run"
   figures are therefore the mean over all timed steps, and their ratio that of the totals
   (sum over every round's steps of the method / the same for the baseline); being means, they carry
   every preemption of a shared machine.  "By parts", for APO: the medians over all timed steps of the
   steps that did the meta-update and of the others, and the mean step (meta + (k − 1)·other) / k they
   imply, over the median SGD-momentum step: robust to outliers, but not a same-round ratio.
2. Optimizer-state memory: the bytes of every tensor in ``opt.state_dict()`` (for precondalg's
   optimizers that includes φ, the cache, the skip counter and each block's fitter state: a
   meta-optimizer's moments, or the ClosedForm fitter's running statistics), each storage counted once,
   divided by the number of model parameters, and split by component; Adam keeps 2 floats = 8 B.
3. Growth: the time of one preconditioner application P @ G (G the placed gradient of a Linear(n, 100)
   layer, shape (n, 100)) and of one optimizer step on that layer, as n grows, for full FOP
   (P = MᵀM, O(n²) per column) and low-rank FOP (P = I + MᵀM, M r×n, O(nr) per column).
4. With ``--profile``: cProfile of full FOP's ``opt.step()`` on the MLP and on one Linear(1024, 100)
   layer, and of Shampoo's (every 1, every 10) on the MLP, by phase of ``Preconditioned.step``.

Tests never assert on these numbers; this script only measures and reports.
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import csv
import json
import math
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from precondalg.experiments.machine import describe_machine, machine_info  # noqa: F401 (used by scripts)
from precondalg.experiments.memory import state_bytes, storage_bytes, tensors_in  # noqa: F401
from precondalg.families import dense_gram, low_rank_gram
from precondalg.fitters import TorchOptimizer
from precondalg.objectives import Hypergradient
from precondalg.optim import APO, FOP, HD, KFAC, Preconditioned, Shampoo
from precondalg.placement import InputSide, Spatial

try:  # run as a script, benchmarks/ is on sys.path; as `python -m benchmarks.…`, the repository root
    from models import BATCH, digits_batches, make_cnn, make_mlp
except ImportError:  # pragma: no cover
    from benchmarks.models import BATCH, digits_batches, make_cnn, make_mlp

# Targets from the FOP paper (Moskovitz et al. 2019): training-step time relative to momentum SGD.
TARGETS = {
    ("mlp", "FOP (full)"): 1.30,
    ("cnn", "FOP (spatial)"): 1.05,
}

LR_SGD = 0.05
LR_ADAM = 1e-3
HYPER_LR = 1e-4
RANK = 8
# Shampoo without grafting: with ε = 1e-12 the roots of the first step's rank-deficient statistics
# (L = G₁G₁ᵀ: eigenvalues ε, root ε^(-1/4) = 1e3 on each side) blow up later gradients when they are
# reused for 10 steps: the loss went non-finite at every lr tried down to 1e-3 (at ε = 1e-4, with lr
# 0.05 too).  ε = 1e-4 and lr 0.01 train on both models at update_every 1 and 10; the peer gets the
# same lr and ε (its matrix_eps).
SHAMPOO_LR = 0.01
SHAMPOO_EPS = 1e-4
GRAFT_LR = 0.002  # Shampoo with Adam grafting (ε 1e-12, Distributed Shampoo's default); 0.05 stays
# finite but the CNN's loss ends near 2.4 after 320 steps
KFAC_LR = 0.002  # update_every 10 diverged at lr 0.05, 0.01 and 0.005 (damping 1e-3) on both models
KFAC_DAMPING = 1e-3
# APO (Bae et al. 2022) on the base "momentum" 0.9 with fsd "kl", λ_FSD 1, λ_WSD 0.1 and the default
# meta-optimizers (precond: Adam 1e-4 on (A, B, S); lr: RMSprop 0.1 on log η): lr 0.05 (η₀ in "lr"
# mode) trained finitely on both models at meta_every 1, 10 and 100 (320 steps).
APO_LR = 0.05
APO_EVERY = (1, 10, 100)


@dataclass
class BenchRun:
    """What a benchmark script's main sets up before it measures (see `start_run`)."""

    device: torch.device
    json_path: Path
    csv_path: Path
    info: dict[str, Any]  # machine_info, taken after the threads were set
    start: float  # time.perf_counter() when the run started
    lines: list[str] = field(default_factory=list)  # what `log` printed, and lines a script adds

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.start

    def log(self, msg: str) -> None:
        """Print msg at once, prefixed with the seconds since the run started, and keep the line."""
        line = f"[{self.elapsed():6.1f}s] {msg}"
        print(line, flush=True)
        self.lines.append(line)

    @property
    def log_path(self) -> Path:
        """The log file beside the JSON: <json>.log."""
        return self.json_path.with_suffix(".log")

    def finish(self, report: list[str], *written: Path | None) -> None:
        """Print and keep the report's lines, log the files written (None: not written) and the total
        time, and write the log."""
        for line in report:
            print(line)
            self.lines.append(line)
        files = ", ".join(str(p) for p in (*written, self.log_path) if p is not None)
        self.log(f"wrote {files}; total {self.elapsed():.0f} s")
        self.write_log()

    def write_log(self) -> None:
        """Write every kept line to `log_path` (a script calls it as it goes, so a stopped run keeps
        its log)."""
        self.log_path.write_text("\n".join(self.lines) + "\n")


def start_run(args: argparse.Namespace, name: str, *, git: bool = True) -> BenchRun | None:
    """The common start of a benchmark script, from its arguments --device, --threads, --json, --csv.

    Sets torch's intra-op threads to args.threads (None: 1 on the CPU, torch's default on CUDA; 0:
    torch's default); the JSON path is args.json or benchmarks/results/<name>_<device>.json, the CSV
    path args.csv or the JSON path with .csv, and their folders are made; then the clock starts and
    the machine (`machine_info`, with git or without) is taken and logged.  None, with a message on
    stderr, where --device cuda is asked for and CUDA is not available.
    """
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available here", file=sys.stderr)
        return None
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else 0)
    if threads > 0:
        torch.set_num_threads(threads)
    json_path = args.json or Path(__file__).parent / "results" / f"{name}_{device.type}.json"
    csv_path = args.csv or json_path.with_suffix(".csv")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    run = BenchRun(device, json_path, csv_path, machine_info(device, git=git), start)
    run.log("machine: " + describe_machine(run.info))
    return run


# --------------------------------------------------------------------------------------- optimizers
def _spatial_only(shape: tuple[int, ...]) -> Spatial | None:
    """Spatial FOP on conv kernels only; linear layers and biases get the base rule alone."""
    return Spatial() if len(shape) == 4 else None


def fop_spatial_only(params, lr: float, **options: Any) -> Preconditioned:
    """FOP's configuration (dense_gram, hypergradient, Adam 1e-4 on M, momentum 0.9) on conv taps only;
    `options` go to `Preconditioned` (e.g. ``compile=True``)."""
    return Preconditioned(
        params,
        lr,
        structure=dense_gram(),
        placement=_spatial_only,
        objective=Hypergradient(),
        fitter=TorchOptimizer(torch.optim.Adam, lr=HYPER_LR),
        base="momentum",
        position="gradient",
        momentum=0.9,
        **options,
    )


Maker = Callable[[nn.Module], torch.optim.Optimizer]
"""Builds a method's optimizer for a model (its own copy): most use model.parameters(); K-FAC the model."""

BASELINES: dict[str, Maker] = {
    "SGD momentum": lambda m: torch.optim.SGD(m.parameters(), lr=LR_SGD, momentum=0.9, foreach=True),
    "Adam": lambda m: torch.optim.Adam(m.parameters(), lr=LR_ADAM, foreach=True),
}
"""torch.optim's multi-tensor ("foreach") implementations, its fastest on the CPU for many small tensors
(torch's default there is the per-tensor loop)."""

HD_ARGS = dict(base="momentum", momentum=0.9, hyper_optimizer="adam")


@dataclass(frozen=True)
class WithBatches:
    """A maker whose optimizer's step takes the data: the timing loop calls
    ``opt.step(batch=(x, y), fsd_batch=x2)`` with (x, y) the step's batch and x2 the next batch's inputs.
    `every`: the optimizer does its periodic work (APO's meta-update) on its steps 0, every, 2·every, …
    (counted from its first step, warm-up included); the timing splits those steps from the others."""

    make: Maker
    every: int | None = None

    def __call__(self, m: nn.Module) -> torch.optim.Optimizer:
        return self.make(m)


def _apo(mode: str, every: int) -> WithBatches:
    """APO in `mode` ("precond" or "lr") on momentum 0.9, a meta-update every `every` steps."""

    def make(m: nn.Module) -> torch.optim.Optimizer:
        return APO(
            m.parameters(),
            APO_LR,
            model=m,
            loss_fn=nn.functional.cross_entropy,
            mode=mode,
            base="momentum",
            momentum=0.9,
            fsd="kl",
            meta_every=every,
        )

    return WithBatches(make, every)


APO_METHODS: dict[str, Maker] = {
    f"APO-{label} (every {k})": _apo(mode, k)
    for mode, label in (("precond", "Precond"), ("lr", "lr"))
    for k in APO_EVERY
}


def _peer_shampoo(every: int) -> Maker:
    """pytorch_optimizer's Shampoo with roots every `every` steps (its first at step `every`), lr and ε
    as ours.  Without momentum: its momentum lerps the raw gradient towards the previous *preconditioned*
    step and preconditions the mix again, which with roots reused for 10 steps grew geometrically and
    went non-finite (linalg.svd failed) at lr 0.05 and 0.01 on both models and at 0.001 on the MLP; it is
    not heavy-ball either."""

    def make(m: nn.Module) -> torch.optim.Optimizer:
        import pytorch_optimizer

        return pytorch_optimizer.Shampoo(
            m.parameters(),
            lr=SHAMPOO_LR,
            momentum=0.0,
            preconditioning_compute_steps=every,
            matrix_eps=SHAMPOO_EPS,
        )

    return make


def _peer_version() -> str | None:
    """The installed pytorch-optimizer's version (None where it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pytorch_optimizer")
    except PackageNotFoundError:
        return None


PEER = "pytorch_optimizer Shampoo"

SECOND_ORDER: dict[str, Maker] = {
    "Shampoo (every 1)": lambda m: Shampoo(
        m.parameters(), SHAMPOO_LR, momentum=0.9, epsilon=SHAMPOO_EPS, update_every=1
    ),
    "Shampoo (every 10)": lambda m: Shampoo(
        m.parameters(), SHAMPOO_LR, momentum=0.9, epsilon=SHAMPOO_EPS, update_every=10
    ),
    "Shampoo + Adam graft (every 10)": lambda m: Shampoo(
        m.parameters(), GRAFT_LR, momentum=0.9, grafting="adam", update_every=10
    ),
    f"{PEER} (every 1)": _peer_shampoo(1),
    f"{PEER} (every 10)": _peer_shampoo(10),
    "K-FAC (every 1)": lambda m: KFAC(
        m.parameters(), KFAC_LR, model=m, damping=KFAC_DAMPING, momentum=0.9, update_every=1
    ),
    "K-FAC (every 10)": lambda m: KFAC(
        m.parameters(), KFAC_LR, model=m, damping=KFAC_DAMPING, momentum=0.9, update_every=10
    ),
}

METHODS: dict[str, dict[str, Maker]] = {
    "mlp": {
        **BASELINES,
        "FOP (full)": lambda m: FOP(m.parameters(), LR_SGD, momentum=0.9, hyper_lr=HYPER_LR),
        f"FOP (low rank r={RANK})": lambda m: FOP(
            m.parameters(), LR_SGD, momentum=0.9, hyper_lr=HYPER_LR, rank=RANK
        ),
        "S-HD": lambda m: HD(m.parameters(), LR_SGD, HYPER_LR, granularity="layer", **HD_ARGS),
        "PP-HD": lambda m: HD(m.parameters(), LR_SGD, HYPER_LR, granularity="parameter", **HD_ARGS),
        **SECOND_ORDER,
        **APO_METHODS,
    },
    "cnn": {
        **BASELINES,
        "FOP (spatial)": lambda m: fop_spatial_only(m.parameters(), LR_SGD),
        "FOP (spatial + full head)": lambda m: FOP(m.parameters(), LR_SGD, momentum=0.9, hyper_lr=HYPER_LR),
        f"FOP (spatial + r={RANK} head)": lambda m: FOP(
            m.parameters(), LR_SGD, momentum=0.9, hyper_lr=HYPER_LR, rank=RANK
        ),
        "S-HD": lambda m: HD(m.parameters(), LR_SGD, HYPER_LR, granularity="layer", **HD_ARGS),
        "PP-HD": lambda m: HD(m.parameters(), LR_SGD, HYPER_LR, granularity="parameter", **HD_ARGS),
        **SECOND_ORDER,
        **APO_METHODS,
    },
}


# --------------------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    """Wait for the device's queued work (torch.cuda.synchronize on CUDA; nothing on the CPU), so that
    a clock read after it sees the work done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Runner:
    """One method: its own model copy, optimizer and position in the shared batch sequence, and what
    its timed steps measured (`timed_step`, `run_rounds`)."""

    name: str
    model: nn.Module
    opt: Any
    batches: list
    step_index: int = 0
    last_loss: float = math.nan
    with_batches: bool = False  # opt.step(batch=(x, y), fsd_batch=x2) (APO; `WithBatches`)
    every: int | None = None  # periodic work on the steps 0, every, 2·every, … (`WithBatches.every`)
    nonfinite: int = 0  # steps (warm-up included) whose loss was NaN or Inf
    # Per round: the median and the mean of its steps' whole training step ("train"), optimizer step
    # ("opt", NaN where a method's step holds its backward) and process CPU time ("cpu").
    rounds: dict[str, list[float]] = field(
        default_factory=lambda: {k: [] for k in ("train", "opt", "cpu", "train_mean", "opt_mean", "cpu_mean")}
    )
    # Every timed step: (train, opt, cpu) seconds and whether it did the periodic work (`every`).
    samples: list[tuple[float, float, float, bool]] = field(default_factory=list)

    def train_step(self, device: torch.device) -> tuple[float, float]:
        """One training step; returns (whole step seconds, optimizer step seconds).  With
        `with_batches`, the step's inputs (its batch, and the next batch's inputs as x2) are picked
        before the clock starts."""
        i = self.step_index % len(self.batches)
        x, y = self.batches[i]
        inputs = {}
        if self.with_batches:
            inputs = {"batch": (x, y), "fsd_batch": self.batches[(i + 1) % len(self.batches)][0]}
        self.step_index += 1
        sync(device)
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(self.model(x), y)
        loss.backward()
        sync(device)
        t1 = time.perf_counter()
        self.opt.step(**inputs)
        sync(device)
        t2 = time.perf_counter()
        self.last_loss = float(loss.detach())
        return t2 - t0, t2 - t1

    def timed_step(self, device: torch.device) -> tuple[float, float, float]:
        """`train_step`'s (wall, optimizer wall) and the process CPU time of the whole step, which a
        shared machine's preemption does not inflate; counts a non-finite loss."""
        c0 = time.process_time()
        wall, opt = self.train_step(device)
        cpu = time.process_time() - c0
        self.nonfinite += not math.isfinite(self.last_loss)
        return wall, opt, cpu

    def warm_up(self, device: torch.device, steps: int) -> float:
        """`steps` untimed steps; returns their seconds."""
        t0 = time.perf_counter()
        for _ in range(steps):
            self.timed_step(device)
        return time.perf_counter() - t0

    def run_round(self, device: torch.device, steps: int) -> None:
        """`steps` consecutive timed steps: keeps each and the round's median and mean."""
        measured = []
        for _ in range(steps):
            periodic = self.every is not None and self.step_index % self.every == 0
            measured.append(self.timed_step(device))
            self.samples.append((*measured[-1], periodic))
        for j, what in enumerate(("train", "opt", "cpu")):
            values = [m[j] for m in measured]
            self.rounds[what].append(statistics.median(values))
            self.rounds[f"{what}_mean"].append(statistics.fmean(values))


def run_rounds(
    runners: list[Runner],
    device: torch.device,
    repeats: int,
    steps: int,
    log: Callable[[str], None],
    label: str,
    *,
    order: str = "shuffle",
    seed: int = 0,
) -> None:
    """The interleaved rounds of the protocol: in each of `repeats` rounds every runner runs `steps`
    consecutive timed steps (`Runner.run_round`), in an order shuffled anew every round ("shuffle",
    from `seed`) or rotated by one every round ("rotate"), so that slow drift of a shared machine
    falls on every method alike."""
    rng = random.Random(seed)
    t_start = time.perf_counter()
    for k in range(repeats):
        if order == "shuffle":
            sequence = runners[:]
            rng.shuffle(sequence)
        else:
            sequence = runners[k % len(runners) :] + runners[: k % len(runners)]
        for r in sequence:
            r.run_round(device, steps)
        if (k + 1) % max(1, repeats // 5) == 0 or k + 1 == repeats:
            log(f"[{label}] round {k + 1}/{repeats} ({time.perf_counter() - t_start:.1f} s)")


def iqr(values: list[float]) -> dict[str, float]:
    """Median and quartiles of values (all three the value itself for one value)."""
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {"median": statistics.median(values), "q1": q[0], "q3": q[2]}


def same_round_ratio(a: Runner, b: Runner, what: str) -> dict[str, float]:
    """Median and IQR over the rounds of a's figure over b's in the same round (`Runner.rounds[what]`)."""
    return iqr([x / y for x, y in zip(a.rounds[what], b.rounds[what], strict=True)])


def bench_model(
    kind: str,
    device: torch.device,
    batches: list,
    repeats: int,
    steps: int,
    warmup: int,
    seed: int,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Time every method on one model, interleaved; returns one record per method."""
    torch.manual_seed(seed)
    reference = (make_mlp if kind == "mlp" else make_cnn)().to(device)
    n_params = sum(p.numel() for p in reference.parameters())
    runners = []
    for name, maker in METHODS[kind].items():
        model = copy.deepcopy(reference)
        try:
            opt = maker(model)
        except ImportError as err:  # the peer's package is optional
            log(f"[{kind}] {name}: left out ({err})")
            continue
        feeds = isinstance(maker, WithBatches)
        runners.append(
            Runner(name, model, opt, batches, with_batches=feeds, every=maker.every if feeds else None)
        )
    log(f"[{kind}] {n_params} parameters; warm-up {warmup} steps per method")
    for r in runners:
        r.warm_up(device, warmup)
    run_rounds(runners, device, repeats, steps, log, kind, seed=seed)
    by_name = {r.name: r for r in runners}

    def ratio(name: str, base: str, what: str) -> dict[str, float]:
        return same_round_ratio(by_name[name], by_name[base], what)

    def run_ratio(name: str, base: str, what: str) -> float:
        """Ratio of the totals over all timed steps (every round has `steps` steps)."""
        return sum(by_name[name].rounds[what]) / sum(by_name[base].rounds[what])

    def by_parts(r: Runner) -> dict[str, Any] | None:
        """For a method with periodic work every k steps: the medians over all timed steps of the steps
        that did it and of the others, and the mean step they imply, (periodic + (k − 1)·other) / k,
        over the median of all SGD momentum's timed steps: a robust amortised estimate."""
        if r.every is None:
            return None
        k = r.every
        periodic = [s for s in r.samples if s[3]]
        other = [s for s in r.samples if not s[3]]
        sgdm = by_name["SGD momentum"].samples
        out: dict[str, Any] = {"every": k, "periodic_steps": len(periodic)}
        for j, what in enumerate(("train", "opt")):
            base = statistics.median(t[j] for t in sgdm)
            per = statistics.median(t[j] for t in periodic) if periodic else math.nan
            oth = statistics.median(t[j] for t in other) if other else per
            mean = per if k == 1 else (per + (k - 1) * oth) / k
            out[f"periodic_{what}_ms"] = 1e3 * per
            out[f"other_{what}_ms"] = 1e3 * oth
            out[f"{what}_step_ms"] = 1e3 * mean
            out[f"{what}_vs_sgdm"] = mean / base
            out[f"other_{what}_vs_sgdm"] = oth / base
        return out

    records = []
    for r in runners:
        mem = state_bytes(r.opt)
        rec = {
            "model": kind,
            "method": r.name,
            "n_params": n_params,
            "train_step_ms": 1e3 * statistics.median(r.rounds["train"]),
            "opt_step_ms": 1e3 * statistics.median(r.rounds["opt"]),
            "train_vs_sgdm": ratio(r.name, "SGD momentum", "train"),
            "train_vs_adam": ratio(r.name, "Adam", "train"),
            "opt_vs_sgdm": ratio(r.name, "SGD momentum", "opt"),
            "opt_vs_adam": ratio(r.name, "Adam", "opt"),
            "amortised": {
                "train_step_ms": 1e3 * statistics.median(r.rounds["train_mean"]),
                "opt_step_ms": 1e3 * statistics.median(r.rounds["opt_mean"]),
                "train_vs_sgdm": ratio(r.name, "SGD momentum", "train_mean")["median"],
                "train_vs_adam": ratio(r.name, "Adam", "train_mean")["median"],
                "opt_vs_sgdm": ratio(r.name, "SGD momentum", "opt_mean")["median"],
                "opt_vs_adam": ratio(r.name, "Adam", "opt_mean")["median"],
                "run_train_step_ms": 1e3 * statistics.fmean(r.rounds["train_mean"]),
                "run_opt_step_ms": 1e3 * statistics.fmean(r.rounds["opt_mean"]),
                "run_train_vs_sgdm": run_ratio(r.name, "SGD momentum", "train_mean"),
                "run_train_vs_adam": run_ratio(r.name, "Adam", "train_mean"),
                "run_opt_vs_sgdm": run_ratio(r.name, "SGD momentum", "opt_mean"),
                "run_opt_vs_adam": run_ratio(r.name, "Adam", "opt_mean"),
            },
            "by_parts": by_parts(r),
            "state_bytes": mem,
            "state_bytes_per_param": mem["total"] / n_params,
            "state_vs_adam": None,
            "target_train_vs_sgdm": TARGETS.get((kind, r.name)),
            "final_loss": r.last_loss,
            "nonfinite_losses": r.nonfinite,
            "steps_taken": r.step_index,
            **skipped_steps(r.opt),
        }
        records.append(rec)
    log(
        f"[{kind}] final loss (step {warmup + repeats * steps}): "
        + "; ".join(f"{r['method']} {r['final_loss']:.3g}" for r in records)
    )
    bad = {r.name: r.nonfinite for r in runners if r.nonfinite}
    if bad:
        log(f"[{kind}] NON-FINITE losses (steps out of {warmup + repeats * steps}): {bad}")
    skipped = {
        rec["method"]: (rec["skipped_updates"], rec["skipped_meta_steps"])
        for rec in records
        if rec["skipped_updates"] or rec["skipped_meta_steps"]
    }
    log(f"[{kind}] skipped (updates, meta-steps) of precondalg's optimizers: {skipped or 'none'}")
    adam = next(rec for rec in records if rec["method"] == "Adam")["state_bytes_per_param"]
    for rec in records:
        rec["state_vs_adam"] = rec["state_bytes_per_param"] / adam
        t = rec["target_train_vs_sgdm"]
        rec["target_met"] = None if t is None else rec["train_vs_sgdm"]["median"] <= t
    return records


def skipped_steps(opt: Any) -> dict[str, int | None]:
    """precondalg's sync-free skips of non-finite steps, counted: skipped updates and rolled-back fits
    (None for another library's optimizer)."""
    if not isinstance(opt, Preconditioned):
        return {"skipped_updates": None, "skipped_meta_steps": None}
    counts = opt.skip_counts()
    return {
        "skipped_updates": sum(c["skipped"] for c in counts),
        "skipped_meta_steps": sum(c["meta_skipped"] for c in counts),
    }


# --------------------------------------------------------------------------------------------- growth
def _median_time(fn: Callable[[], Any], device: torch.device, repeats: int, inner: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync(device)
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def growth(
    device: torch.device, sizes: list[int], out_features: int, repeats: int, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """P @ G and the optimizer step on one Linear(n, out) layer, as n grows."""
    rows = []
    for n in sizes:
        torch.manual_seed(0)
        G = InputSide().view([torch.randn(out_features, n, device=device)])  # (n, out)
        like = torch.empty((), device=device)
        gen = torch.Generator().manual_seed(0)
        forms = {
            "full": dense_gram().form(dense_gram().init((n,), like, gen)),
            f"low rank r={RANK}": low_rank_gram(RANK).form(low_rank_gram(RANK).init((n,), like, gen)),
        }
        row: dict[str, Any] = {"n": n, "k": out_features}
        for label, P in forms.items():
            row[f"apply_us[{label}]"] = 1e6 * _median_time(lambda P=P, G=G: P @ G, device, repeats, 10)
        makers = {
            "SGD momentum": BASELINES["SGD momentum"],
            "full": lambda m: FOP(m.parameters(), LR_SGD, hyper_lr=HYPER_LR),
            f"low rank r={RANK}": lambda m: FOP(m.parameters(), LR_SGD, hyper_lr=HYPER_LR, rank=RANK),
        }
        for label, maker in makers.items():
            layer = nn.Linear(n, out_features, bias=False).to(device)
            opt = maker(layer)
            layer.weight.grad = 1e-3 * torch.randn_like(layer.weight)
            row[f"step_us[{label}]"] = 1e6 * _median_time(opt.step, device, repeats, 5)
        rows.append(row)
        log(
            f"[growth] n={n:5d}: P@G full {row['apply_us[full]']:9.1f} us, "
            f"r={RANK} {row[f'apply_us[low rank r={RANK}]']:7.1f} us; "
            f"step full {row['step_us[full]']:9.1f} us, "
            f"r={RANK} {row[f'step_us[low rank r={RANK}]']:8.1f} us, "
            f"SGD-m {row['step_us[SGD momentum]']:7.1f} us"
        )
    return rows


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


# -------------------------------------------------------------------------------------------- profile
PHASES: list[tuple[str, tuple[str, ...], str]] = [
    # (label, files (path suffixes), function): the cumulative time of that function in those files.
    ("Preconditioned.step (total)", ("preconditioned.py",), "step"),
    ("  _grads_finite (isfinite of all grads)", ("preconditioned.py",), "_grads_finite"),
    ("  _plan (per block: gradients, placed view, context)", ("preconditioned.py",), "_plan"),
    (
        "  objective.meta_grads (all blocks)",
        ("hypergradient.py", "statistics.py", "objectives/base.py"),
        "meta_grads",
    ),
    ("  _fit (fitter step on φ + skip guard)", ("preconditioned.py",), "_fit"),
    ("    TorchOptimizer: Adam.step on φ", ("fitters.py",), "step"),
    ("    ClosedForm: statistics + roots", ("fitters.py",), "propose_statistics"),
    ("      psd_power (roots by torch.linalg.eigh)", ("matrix_functions.py",), "psd_power"),
    ("  _directions (P @ X, base rule)", ("preconditioned.py",), "_directions"),
    ("    structure matmuls P @ X (all)", ("_base.py",), "__matmul__"),
    ("    _base_steps (base rule)", ("preconditioned.py",), "_base_steps"),
    ("  _propose (θ − lr·s, isfinite)", ("preconditioned.py",), "_propose"),
    ("  _commit (copy or where(ok, new, θ))", ("preconditioned.py",), "_commit"),
]


def profile_fop(
    device: torch.device,
    model: nn.Module,
    batches: list,
    steps: int,
    label: str,
    log: Callable[[str], None],
    make: Maker | None = None,
    title: str = "full FOP",
) -> list[dict]:
    """cProfile of an optimizer's step alone (gradient fixed; full FOP unless `make` is given, `title`
    naming it): cumulative time per phase of `Preconditioned.step` and per step."""
    opt = make(model) if make is not None else FOP(model.parameters(), LR_SGD, hyper_lr=HYPER_LR)
    for i in range(20):
        x, y = batches[i % len(batches)]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    x, y = batches[20 % len(batches)]
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        opt.step()
    sync(device)
    prof.disable()
    stats = pstats.Stats(prof).stats  # {(file, line, func): (cc, nc, tt, ct, callers)}
    rows = []
    total = None
    for phase, fnames, func in PHASES:
        hits = [v for k, v in stats.items() if k[0].endswith(fnames) and k[2] == func]
        ct, nc = sum(v[3] for v in hits), sum(v[1] for v in hits)
        if total is None:
            total = ct
        rows.append(
            {
                "optimizer": title,
                "model": label,
                "phase": phase,
                "ms_per_step": 1e3 * ct / steps,
                "share": ct / total,
                "calls_per_step": nc / steps,
            }
        )
    top = sorted(stats.items(), key=lambda kv: -kv[1][2])[:8]
    log(f"[profile] {title}, {label}, opt.step() only, cProfile cumulative time per step ({steps} steps):")
    for r in rows:
        log(
            f"  {r['phase']:<52s} {r['ms_per_step']:8.3f} ms  {100 * r['share']:5.1f}%  "
            f"({r['calls_per_step']:.0f} calls)"
        )
    log(f"[profile] {label}: top self-time functions:")
    for (file, line, func), v in top:
        log(f"  {Path(file).name}:{line}({func}) {1e3 * v[2] / steps:8.3f} ms/step")
        rows.append(
            {
                "optimizer": title,
                "model": label,
                "phase": f"self: {Path(file).name}:{line}({func})",
                "ms_per_step": 1e3 * v[2] / steps,
                "share": v[2] / total,
                "calls_per_step": v[1] / steps,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------- output
def fmt_ratio(r: dict[str, float]) -> str:
    return f"{r['median']:.2f} [{r['q1']:.2f}-{r['q3']:.2f}]"


def table(records: list[dict[str, Any]]) -> str:
    w = max(27, *(len(r["method"]) for r in records))
    head = (
        f"{'model':<5} {'method':<{w}} {'train ms':>9} {'train/SGDm [IQR]':>19} {'train/Adam':>10} "
        f"{'opt ms':>8} {'opt/SGDm':>9} {'opt/Adam':>9} {'state B/param':>13} {'vs Adam':>8} {'target':>14}"
    )
    lines = [head, "-" * len(head)]
    for r in records:
        t = r["target_train_vs_sgdm"]
        target = "" if t is None else f"<= {t:.2f}x {'met' if r['target_met'] else 'MISSED'}"
        lines.append(
            f"{r['model']:<5} {r['method']:<{w}} {r['train_step_ms']:9.3f} "
            f"{fmt_ratio(r['train_vs_sgdm']):>19} {r['train_vs_adam']['median']:10.2f} "
            f"{r['opt_step_ms']:8.3f} {r['opt_vs_sgdm']['median']:9.2f} {r['opt_vs_adam']['median']:9.2f} "
            f"{r['state_bytes_per_param']:13.2f} {r['state_vs_adam']:8.2f} {target:>14}"
        )
    return "\n".join(lines)


def by_parts_table(records: list[dict[str, Any]]) -> str:
    """The methods with periodic work every k steps (`WithBatches.every`): the steps that do it and the
    others, and the amortised estimate they imply."""
    rows = [r for r in records if r.get("by_parts")]
    if not rows:
        return "(none)"
    w = max(27, *(len(r["method"]) for r in rows))
    head = (
        f"{'model':<5} {'method':<{w}} {'k':>4} {'n':>4} {'periodic train ms':>17} {'other train ms':>14} "
        f"{'other/SGDm':>10} {'mean train ms':>13} {'mean/SGDm':>9} {'periodic opt ms':>15} "
        f"{'other opt ms':>12}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        b = r["by_parts"]
        lines.append(
            f"{r['model']:<5} {r['method']:<{w}} {b['every']:4d} {b['periodic_steps']:4d} "
            f"{b['periodic_train_ms']:17.3f} {b['other_train_ms']:14.3f} {b['other_train_vs_sgdm']:10.2f} "
            f"{b['train_step_ms']:13.3f} {b['train_vs_sgdm']:9.2f} {b['periodic_opt_ms']:15.3f} "
            f"{b['other_opt_ms']:12.3f}"
        )
    return "\n".join(lines)


def amortised_table(records: list[dict[str, Any]]) -> str:
    """The step times with each round's mean instead of its median (work done every k steps spread),
    and over the whole run (mean over all timed steps; ratios of the totals)."""
    w = max(27, *(len(r["method"]) for r in records))
    head = (
        f"{'model':<5} {'method':<{w}} {'train ms':>9} {'train/SGDm':>10} {'train/Adam':>10} "
        f"{'opt ms':>8} {'opt/SGDm':>9} {'opt/Adam':>9} | {'run train ms':>12} {'run train/SGDm':>14} "
        f"{'run train/Adam':>14} {'run opt ms':>10} {'run opt/SGDm':>12}"
    )
    lines = [head, "-" * len(head)]
    for r in records:
        a = r["amortised"]
        lines.append(
            f"{r['model']:<5} {r['method']:<{w}} {a['train_step_ms']:9.3f} {a['train_vs_sgdm']:10.2f} "
            f"{a['train_vs_adam']:10.2f} {a['opt_step_ms']:8.3f} {a['opt_vs_sgdm']:9.2f} "
            f"{a['opt_vs_adam']:9.2f} | {a['run_train_step_ms']:12.3f} {a['run_train_vs_sgdm']:14.2f} "
            f"{a['run_train_vs_adam']:14.2f} {a['run_opt_step_ms']:10.3f} {a['run_opt_vs_sgdm']:12.2f}"
        )
    return "\n".join(lines)


BREAKDOWN = ["base", "graft", "phi", "statistics", "meta_optimizer", "cache", "other", "top_level", "total"]


def breakdown_table(records: list[dict[str, Any]]) -> str:
    """Optimizer-state bytes per parameter, by component (`state_bytes`)."""
    w = max(27, *(len(r["method"]) for r in records))
    head = f"{'model':<5} {'method':<{w}} " + " ".join(f"{k:>14}" for k in BREAKDOWN)
    lines = [head, "-" * len(head)]
    for r in records:
        n = r["n_params"]
        lines.append(
            f"{r['model']:<5} {r['method']:<{w}} "
            + " ".join(f"{r['state_bytes'][k] / n:14.2f}" for k in BREAKDOWN)
        )
    return "\n".join(lines)


def growth_table(rows: list[dict[str, Any]]) -> str:
    keys = [k for k in rows[0] if k not in ("n", "k")]
    head = f"{'n':>6} " + " ".join(f"{k:>26}" for k in keys)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['n']:>6} " + " ".join(f"{r[k]:26.1f}" for k in keys))
    ns = [r["n"] for r in rows]
    lines.append(
        "log-log slope vs n: " + ", ".join(f"{k} {loglog_slope(ns, [r[k] for r in rows]):.2f}" for k in keys)
    )
    return "\n".join(lines)


def write_csv(path: Path, records: list[dict[str, Any]]) -> None:
    flat = []
    for r in records:
        row = {}
        for k, v in r.items():
            if isinstance(v, dict):
                for kk, vv in v.items():
                    row[f"{k}.{kk}"] = vv
            else:
                row[k] = v
        flat.append(row)
    fields = list(dict.fromkeys(k for row in flat for k in row))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(flat)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=30, help="interleaved timed rounds per model (default 30)")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per method per round")
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps per method before timing")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: 1 on cpu, torch's default on cuda; 0 = torch's default)",
    )
    ap.add_argument("--growth-sizes", default="64,128,256,512,1024")
    ap.add_argument("--growth-repeats", type=int, default=15)
    ap.add_argument(
        "--profile",
        action="store_true",
        help="also cProfile full FOP's step (MLP; Linear(1024, 100)) and Shampoo's (MLP)",
    )
    ap.add_argument(
        "--json",
        type=Path,
        default=None,
        help="JSON path (default benchmarks/results/optimizers_<device>.json)",
    )
    ap.add_argument("--csv", type=Path, default=None, help="CSV path (default: the JSON path with .csv)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    run = start_run(args, "optimizers")
    if run is None:
        return 2
    device, log, info = run.device, run.log, run.info
    n_batches = args.warmup + args.repeats * args.steps + 1
    flat, image = digits_batches(device, max(n_batches, 64), args.seed)
    records = []
    for kind, batches in (("mlp", flat), ("cnn", image)):
        records += bench_model(kind, device, batches, args.repeats, args.steps, args.warmup, args.seed, log)
    sizes = [int(s) for s in args.growth_sizes.split(",") if s]
    grow = growth(device, sizes, 100, args.growth_repeats, log)
    prof = None
    if args.profile:
        torch.manual_seed(0)
        prof = profile_fop(device, make_mlp().to(device), flat, 200, "MLP 64-100-100-10", log)
        torch.manual_seed(0)
        wide = [(torch.randn(BATCH, 1024, device=device), y) for _, y in flat[:32]]
        prof += profile_fop(device, nn.Linear(1024, 100).to(device), wide, 20, "Linear(1024, 100)", log)
        # Not K-FAC: its statistics come from hooks in forward and backward, which a repeated
        # opt.step() on a fixed gradient does not run.
        for name in ("Shampoo (every 1)", "Shampoo (every 10)"):
            torch.manual_seed(0)
            prof += profile_fop(
                device, make_mlp().to(device), flat, 200, "MLP 64-100-100-10", log, SECOND_ORDER[name], name
            )

    print()
    print("Machine: " + describe_machine(info))
    print(f"Date: {info['date']}")
    print(
        f"Ratios: median over {args.repeats} interleaved rounds of (method / baseline in the same round), "
        f"[IQR]; each round = median of {args.steps} steps; warm-up {args.warmup} steps excluded."
    )
    print(
        "Targets (FOP paper): spatial FOP <= 1.05x and full FOP on the MLP <= 1.30x "
        "the momentum-SGD training step."
    )
    print()
    print(table(records))
    print()
    print(
        "Amortised: the same with each round's MEAN of its steps instead of its median, so that work done "
        "once every k steps (roots, inverses, APO's meta-update) is spread over them; medians over "
        "rounds. 'run': the mean over all timed steps, and the ratio of the totals (work done less "
        "often than once a round, e.g. APO every 100, is in these only)."
    )
    print(amortised_table(records))
    print()
    print(
        "By parts: the methods with periodic work every k steps (APO's meta-update): medians over all "
        "timed steps of the n steps that did it ('periodic') and of the others, and the mean step they "
        "imply, (periodic + (k-1) other) / k, against the median of all SGD momentum's timed steps."
    )
    print(by_parts_table(records))
    print()
    print(
        "Optimizer state, bytes per parameter by component (base: base rule; graft: grafting method; "
        "phi: M, rates, roots or inverses; statistics: the closed-form fitter's running statistics; "
        "other: skip counters, param groups; top_level: the generator state)."
    )
    print(breakdown_table(records))
    print()
    print(
        "Growth: one Linear(n, 100) layer; P @ G with G (n, 100), and one opt.step(); "
        f"microseconds (median of {args.growth_repeats})."
    )
    print(growth_table(grow))
    print()
    print(f"Total time {run.elapsed():.1f} s")

    out = {
        "machine": info,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "threads": torch.get_num_threads(),
        "hyperparameters": {
            "lr_sgd": LR_SGD,
            "lr_adam": LR_ADAM,
            "hyper_lr": HYPER_LR,
            "rank": RANK,
            "batch": BATCH,
            "shampoo_lr": SHAMPOO_LR,
            "shampoo_epsilon": SHAMPOO_EPS,
            "graft_lr": GRAFT_LR,
            "kfac_lr": KFAC_LR,
            "kfac_damping": KFAC_DAMPING,
            "apo_lr": APO_LR,
            "apo_meta_every": list(APO_EVERY),
            "apo": "base momentum 0.9, fsd kl, lam_fsd 1, lam_wsd 0.1, meta_lr default",
            "momentum": 0.9,
            "peer_momentum": 0.0,
            "pytorch_optimizer": _peer_version(),
        },
        "records": records,
        "growth": grow,
        "growth_slopes": {
            k: loglog_slope([r["n"] for r in grow], [r[k] for r in grow])
            for k in grow[0]
            if k not in ("n", "k")
        },
        "profile": prof,
    }
    growth_csv = run.csv_path.with_name(run.csv_path.stem + "_growth.csv")
    run.json_path.write_text(json.dumps(out, indent=2))
    write_csv(run.csv_path, records)
    write_csv(growth_csv, grow)
    print(f"Wrote {run.json_path}, {run.csv_path} and {growth_csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
