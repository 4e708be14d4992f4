"""Every preset beside its peers and its arithmetic floor, on five models, in one run: step time, state
memory and peak memory, and the tables of docs/benchmarks.md.

Run from the repository root:

    python benchmarks/suite.py              # the full run; rewrites the tables of docs/benchmarks.md
    python benchmarks/suite.py --quick      # smoke run (about 3 minutes); leaves the docs alone
    python benchmarks/suite.py --from-json benchmarks/results/suite_cpu.json   # the page from a saved run

Outputs: benchmarks/results/suite_<device>.json (everything), .csv (one row per model and method) and
.log (the progress and the printed tables); with --quick, suite_quick_<device>.*.

Per model (`models.MODELS`: the digits MLP and CNN, the MLP 3×256, a transformer block, the MLP
4×1024), in one process:

1. Step time, by the protocol of benchmarks/optimizers.py: every method trains its own copy of the same
   initial model on the same batches; untimed warm-up; then interleaved rounds in an order shuffled
   every round, each method running ``steps`` consecutive training steps per round, each timed whole
   (zero_grad + forward + backward + step; for the closure methods ``opt.step(closure)``) and for the
   optimizer step alone (directly, or for the closure methods the step minus the round's forward +
   backward probe).  Ratios are medians over the rounds of same-round ratios; "amortised" uses each
   round's mean instead of its median, so that work done once every 10 steps (roots, inverses, APO's
   meta-update: exactly once in a round of 10 steps) is spread over the steps.
2. The arithmetic floor of each method's step (benchmarks/floor.py): forward + backward counted by
   FlopCounterMode, plus the preconditioner's application and fit from the structures' ``cost()``, at the
   matmul rate measured in the same run; the measured amortised step over it.  As a cross-check,
   FlopCounterMode's own count of the optimizer's part of a step (it leaves out eigh and triangular
   solves, and counts what the implementation does rather than what the arithmetic needs).
3. State memory: optimizer-state bytes per parameter (as benchmarks/optimizers.py; the peers' by
   benchmarks/psgd.py's `state_memory`); on the transformer block the peak memory of one training step
   (`floor.peak_step_memory`).
4. The targets: each preset within 1.5× its floor where the floor exceeds 10 ms; spatial FOP's step
   within 1.1× momentum SGD's on the digits CNN; PSGD-Kron at or below psgd_torch's Kron and heavyball's
   PSGDKron, Shampoo at or below pytorch_optimizer's (same settings); each Adam-based preset with its
   fitting disabled within 1.2× torch.optim.Adam (foreach).

A method that cannot be built or fails in its warm-up gets a row that says why; a method left out on a
model (`Entry.skip`: it cannot run there; `Entry.optional`: left out to keep the run short, run with
--everything) gets a row that says why.  Tests never assert on these numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

try:  # run as a script, benchmarks/ is on sys.path; as `python -m benchmarks.suite`, the repository root
    import floor
    import models
    import optimizers as common
    import psgd
except ImportError:  # pragma: no cover
    from benchmarks import floor, models, psgd
    from benchmarks import optimizers as common

from precondalg.optim import APO, FOP, HD, LODO, Shampoo

ROOT = Path(__file__).resolve().parent.parent
DOCS_PAGE = ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- begin suite-tables: written by benchmarks/suite.py; edit the script, not this block -->"
END = "<!-- end suite-tables -->"
COMMAND = "OMP_NUM_THREADS=1 python benchmarks/suite.py"

ADAM, SGDM, PROBE = "Adam", "SGD momentum", psgd.PROBE
LODO_LR = 0.1  # LODO's documented example rate for a network (its preset default 1.0 is the paper's bowl's)
SCHEDULE_P = 0.03
"""A fit on 3% of the steps: heavyball's default schedule once annealed (from 1.0 for 1000 steps to 0.03
at about 4500), here for all three PSGD implementations (psgd_torch's default and ours is 1.0)."""
FLOOR_TARGET, FLOOR_MIN_MS = 1.5, 10.0
NO_FIT_TARGET, SPATIAL_TARGET = 1.2, 1.1

ROUNDS = {"digits-mlp": 15, "digits-cnn": 15, "mlp3x256": 6, "transformer": 5, "mlp4x1024": 3}
WARMUP = {"digits-mlp": 10, "digits-cnn": 10, "mlp3x256": 10, "transformer": 5, "mlp4x1024": 2}
STEPS = 10
PEAK_MODELS = ("transformer",)
BIG = "mlp4x1024"


# ------------------------------------------------------------------------------------------------ methods
@dataclass(frozen=True)
class Entry:
    """One method of the suite.

    group: "baseline", "preset", "no fit" (an Adam-based preset with its fitting disabled) or "peer".
    make: the optimizer for a model (its own copy).  convention: "backward" (torch.optim's) or
    "closure" (``opt.step(closure)``, the closure returning the loss without backward).  period: the
    steps between its periodic work (roots, inverses, meta-updates; flops are counted over one period).
    probability: the share of steps that fit.  root_every: the steps between Shampoo's roots or K-FAC's
    inverses.  floor_of: a peer's floor is that of our method with the same arithmetic.  only: the
    models it runs on (None: all); skip: model → why it cannot run there; optional: model → why it is
    left out there unless --everything is given (the run's length).
    """

    name: str
    group: str
    construction: str
    make: Callable[[nn.Module], Any]
    library: str = "precondalg"
    convention: str = "backward"
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    with_batches: bool = False
    period: int = 1
    probability: float = 1.0
    root_every: int = 1
    floor_of: str | None = None
    only: tuple[str, ...] | None = None
    skip: dict[str, str] = field(default_factory=dict)
    optional: dict[str, str] = field(default_factory=dict)


def _params(make: Callable[[Any], tuple[Any, str]]) -> Callable[[nn.Module], Any]:
    """A benchmarks/psgd.py maker (parameters → (optimizer, description)) as a model → optimizer one."""
    return lambda m: make(m.parameters())[0]


EVERY_STEP_ROOTS = (
    "left out (--everything runs it): roots of every 1024×1024 factor at every step, 2 to 5 s per step "
    "here; the every-1 rows of the smaller models and the every-10 row stand for it"
)
PEERS_ON_BIG = (
    "left out (--everything runs it): the peers are compared on the four smaller models; here they "
    "would add about 5 s per step set (PSGD at p = 1: about 2 s per step each)"
)


def _apo_without_fitting(mode: str) -> Callable[[nn.Module], Any]:
    """APO with an Adam base in `mode`, never meta-updated (update_probability=0): P̂ applied as it starts."""
    return lambda m: APO(
        m.parameters(),
        common.LR_ADAM,
        model=m,
        loss_fn=nn.functional.cross_entropy,
        mode=mode,
        base="adam",
        update_probability=0.0,
    )


def entries() -> list[Entry]:
    """Every method of the suite, in the order of the tables."""
    lr, hyper = common.LR_SGD, common.HYPER_LR
    hd = dict(base="momentum", momentum=0.9, hyper_optimizer="adam")
    lodo_skip = {
        BIG: "cannot run here: its permutation network keeps about 128 numbers per parameter with its Adam "
        "moments (1 544 B per parameter on the digits MLP; about 6.5 GB for 4.2 M parameters), and a probe "
        "of it on this model was killed by the kernel for memory (24 GB resident; the machine has 23 GB)",
    }
    out = [
        Entry(
            SGDM,
            "baseline",
            "torch.optim.SGD(lr=0.05, momentum=0.9, foreach=True)",
            common.BASELINES[SGDM],
            library="torch",
        ),
        Entry(
            ADAM,
            "baseline",
            "torch.optim.Adam(lr=1e-3, foreach=True)",
            common.BASELINES[ADAM],
            library="torch",
        ),
        # ---- presets
        Entry(
            "FOP",
            "preset",
            "FOP(lr=0.05, momentum=0.9, hyper_lr=1e-4): full M on the input side of every weight matrix, "
            "spatial M on conv kernels",
            lambda m: FOP(m.parameters(), lr, momentum=0.9, hyper_lr=hyper),
        ),
        Entry(
            "FOP (r=8)",
            "preset",
            "the same with rank=8 (P = I + MᵀM, M 8×n) on weight matrices",
            lambda m: FOP(m.parameters(), lr, momentum=0.9, hyper_lr=hyper, rank=common.RANK),
        ),
        Entry(
            "FOP (spatial only)",
            "preset",
            "FOP's configuration on the conv kernels only (Preconditioned with a placement that returns "
            "Spatial() for 4-d tensors, None otherwise); the head and biases get momentum SGD alone",
            lambda m: common.fop_spatial_only(m.parameters(), lr),
            only=("digits-cnn",),
        ),
        Entry(
            "S-HD",
            "preset",
            "HD(lr=0.05, hyper_lr=1e-4, granularity='layer', base='momentum', "
            "momentum=0.9, hyper_optimizer='adam')",
            lambda m: HD(m.parameters(), lr, hyper, granularity="layer", **hd),
        ),
        Entry(
            "PP-HD",
            "preset",
            "the same with granularity='parameter'",
            lambda m: HD(m.parameters(), lr, hyper, granularity="parameter", **hd),
        ),
        Entry(
            "PSGD kron",
            "preset",
            "PSGD(lr=1e-3, preconditioner='kron', criterion='fisher', init_scale=1, lr_precond=0.1): Q "
            "fitted every step (the preset's default)",
            _params(psgd.make_precondalg),
            convention="closure",
        ),
        Entry(
            f"PSGD kron (p={SCHEDULE_P})",
            "preset",
            f"the same with update_probability={SCHEDULE_P}",
            _params(lambda p: psgd.make_precondalg(p, SCHEDULE_P)),
            convention="closure",
            probability=SCHEDULE_P,
            period=10,
        ),
        Entry(
            "LODO",
            "preset",
            f"LODO(lr={LODO_LR}) (meta_lr 1e-3, β 0.9, depth 16, block 4: the defaults)",
            lambda m: LODO(m.parameters(), lr=LODO_LR),
            skip=lodo_skip,
        ),
        Entry(
            "Shampoo (every 1)",
            "preset",
            f"Shampoo(lr={common.SHAMPOO_LR}, epsilon={common.SHAMPOO_EPS}, update_every=1) (β₂ = 1, "
            "momentum 0: the defaults, as the peer)",
            lambda m: Shampoo(m.parameters(), common.SHAMPOO_LR, epsilon=common.SHAMPOO_EPS),
            optional={BIG: EVERY_STEP_ROOTS},
        ),
        Entry(
            "Shampoo (every 10)",
            "preset",
            "the same with update_every=10",
            lambda m: Shampoo(m.parameters(), common.SHAMPOO_LR, epsilon=common.SHAMPOO_EPS, update_every=10),
            period=10,
            root_every=10,
        ),
        Entry(
            "Shampoo + Adam graft (every 10)",
            "preset",
            f"Shampoo(lr={common.GRAFT_LR}, momentum=0.9, grafting='adam', update_every=10)",
            common.SECOND_ORDER["Shampoo + Adam graft (every 10)"],
            period=10,
            root_every=10,
        ),
        Entry(
            "K-FAC (every 1)",
            "preset",
            f"KFAC(lr={common.KFAC_LR}, model, damping={common.KFAC_DAMPING}, momentum=0.9, update_every=1)",
            common.SECOND_ORDER["K-FAC (every 1)"],
            optional={BIG: EVERY_STEP_ROOTS},
        ),
        Entry(
            "K-FAC (every 10)",
            "preset",
            "the same with update_every=10 (the preset's default)",
            common.SECOND_ORDER["K-FAC (every 10)"],
            period=10,
            root_every=10,
        ),
        Entry(
            "APO-Precond (every 10)",
            "preset",
            "APO(lr=0.05, model, cross_entropy, mode='precond', base='momentum', momentum=0.9, fsd='kl', "
            "meta_every=10), step(batch=(x, y), fsd_batch=next batch's x)",
            common.APO_METHODS["APO-Precond (every 10)"],
            with_batches=True,
            period=10,
            probability=0.1,
        ),
        Entry(
            "APO-lr (every 10)",
            "preset",
            "the same with mode='lr' (η₀ = 0.05)",
            common.APO_METHODS["APO-lr (every 10)"],
            with_batches=True,
            period=10,
            probability=0.1,
        ),
        # ---- Adam-based presets with the fitting disabled
        Entry(
            "FOP-Adam, no fit",
            "no fit",
            "FOP(lr=1e-3, base='adam', hyper_lr=1e-4, update_probability=0)",
            lambda m: FOP(
                m.parameters(), common.LR_ADAM, base="adam", hyper_lr=hyper, update_probability=0.0
            ),
            probability=0.0,
        ),
        Entry(
            "S-HD-Adam, no fit",
            "no fit",
            "HD(lr=1e-3, hyper_lr=1e-4, granularity='layer', base='adam', hyper_optimizer='adam', "
            "update_probability=0)",
            lambda m: HD(
                m.parameters(),
                common.LR_ADAM,
                hyper,
                granularity="layer",
                base="adam",
                hyper_optimizer="adam",
                update_probability=0.0,
            ),
            probability=0.0,
        ),
        Entry(
            "PP-HD-Adam, no fit",
            "no fit",
            "the same with granularity='parameter'",
            lambda m: HD(
                m.parameters(),
                common.LR_ADAM,
                hyper,
                granularity="parameter",
                base="adam",
                hyper_optimizer="adam",
                update_probability=0.0,
            ),
            probability=0.0,
        ),
        Entry(
            "APO-Precond-Adam, no fit",
            "no fit",
            "APO(lr=1e-3, model, cross_entropy, mode='precond', base='adam', update_probability=0)",
            _apo_without_fitting("precond"),
            with_batches=True,
            probability=0.0,
        ),
        Entry(
            "APO-lr-Adam, no fit",
            "no fit",
            "the same with mode='lr'",
            _apo_without_fitting("lr"),
            with_batches=True,
            probability=0.0,
        ),
        # ---- peers
        Entry(
            "psgd_torch Kron",
            "peer",
            "psgd_torch.psgd.Kron(preconditioner_type='whitening', lr_params=1e-3, lr_preconditioner=0.1, "
            "preconditioner_init_scale=1, preconditioner_max_skew=inf, preconditioner_update_probability=1)",
            _params(lambda p: psgd.make_psgd_torch(p, "match")),
            library="psgd_torch",
            convention="closure",
            floor_of="PSGD kron",
        ),
        Entry(
            "heavyball PSGDKron",
            "peer",
            "heavyball.PSGDKron(lr=1e-3, precond_lr=0.1, precond_init_scale=1, min_ndim_triangular=1, "
            "preconditioner_update_probability=1.0), eager",
            _params(lambda p: psgd.make_heavyball(p, "match")),
            library="heavyball",
            context=lambda: psgd.heavyball_compile(None),
            floor_of="PSGD kron",
        ),
        Entry(
            f"psgd_torch Kron (p={SCHEDULE_P})",
            "peer",
            f"the same with preconditioner_update_probability={SCHEDULE_P}",
            _params(lambda p: psgd.make_psgd_torch(p, "match", SCHEDULE_P)),
            library="psgd_torch",
            convention="closure",
            floor_of=f"PSGD kron (p={SCHEDULE_P})",
            probability=SCHEDULE_P,
            period=10,
        ),
        Entry(
            f"heavyball PSGDKron (p={SCHEDULE_P})",
            "peer",
            f"the same with preconditioner_update_probability={SCHEDULE_P} (its default schedule's floor)",
            _params(lambda p: psgd.make_heavyball(p, "match", SCHEDULE_P)),
            library="heavyball",
            context=lambda: psgd.heavyball_compile(None),
            floor_of=f"PSGD kron (p={SCHEDULE_P})",
            probability=SCHEDULE_P,
            period=10,
        ),
        Entry(
            "pytorch_optimizer Shampoo (every 1)",
            "peer",
            f"pytorch_optimizer.Shampoo(lr={common.SHAMPOO_LR}, momentum=0, preconditioning_compute_steps=1, "
            f"matrix_eps={common.SHAMPOO_EPS})",
            common.SECOND_ORDER[f"{common.PEER} (every 1)"],
            library="pytorch_optimizer",
            floor_of="Shampoo (every 1)",
            optional={BIG: EVERY_STEP_ROOTS},
        ),
        Entry(
            "pytorch_optimizer Shampoo (every 10)",
            "peer",
            "the same with preconditioning_compute_steps=10",
            common.SECOND_ORDER[f"{common.PEER} (every 10)"],
            library="pytorch_optimizer",
            floor_of="Shampoo (every 10)",
            period=10,
            root_every=10,
        ),
    ]
    return [
        dataclasses.replace(e, optional={BIG: PEERS_ON_BIG, **e.optional}) if e.group == "peer" else e
        for e in out
    ]


COMPARISONS: list[tuple[str, str, float]] = [
    ("PSGD kron", "psgd_torch Kron", 1.0),
    ("PSGD kron", "heavyball PSGDKron", 1.0),
    (f"PSGD kron (p={SCHEDULE_P})", f"psgd_torch Kron (p={SCHEDULE_P})", 1.0),
    (f"PSGD kron (p={SCHEDULE_P})", f"heavyball PSGDKron (p={SCHEDULE_P})", 1.0),
    ("Shampoo (every 1)", "pytorch_optimizer Shampoo (every 1)", 1.0),
    ("Shampoo (every 10)", "pytorch_optimizer Shampoo (every 10)", 1.0),
    ("FOP-Adam, no fit", ADAM, NO_FIT_TARGET),
    ("S-HD-Adam, no fit", ADAM, NO_FIT_TARGET),
    ("PP-HD-Adam, no fit", ADAM, NO_FIT_TARGET),
    ("APO-Precond-Adam, no fit", ADAM, NO_FIT_TARGET),
    ("APO-lr-Adam, no fit", ADAM, NO_FIT_TARGET),
    ("FOP (spatial only)", SGDM, SPATIAL_TARGET),
]
"""(method, against, bound): the training step's same-round ratio, amortised, is to be ≤ bound."""


# --------------------------------------------------------------------------------------------- measuring
@dataclass
class Row:
    """A method on a model: its runner, or why it has none."""

    entry: Entry
    runner: psgd.PSGDRunner | None = None
    status: str = "measured"
    phi: list[torch.Tensor] | None = None  # φ when built, for a "no fit" method


def _phi(opt: Any) -> list[torch.Tensor]:
    """Copies of every φ leaf of a precondalg optimizer (its state dict's preconditioner "phi")."""
    state = opt.state_dict()["state"]
    return [
        t.detach().clone()
        for st in state.values()
        if "preconditioner" in st
        for t in common.tensors_in(st["preconditioner"].get("phi", []))
    ]


def _state(opt: Any, library: str) -> dict[str, int]:
    return psgd.state_memory(opt, library)


def build_rows(
    kind: str,
    reference: nn.Module,
    batches: list,
    log: Callable[[str], None],
    everything: bool = False,
    names: Collection[str] | None = None,
) -> list[Row]:
    """The `Row` of every method of `entries` that runs on the model `kind` (only those in `names` where
    it is given), each with its own copy of `reference`."""
    rows = []
    for e in entries():
        if (e.only is not None and kind not in e.only) or (names is not None and e.name not in names):
            continue
        if kind in e.skip or (kind in e.optional and not everything):
            rows.append(Row(e, status=e.skip.get(kind) or e.optional[kind]))
            continue
        model = copy.deepcopy(reference)
        try:
            opt = e.make(model)
        except Exception as err:  # a peer missing or a construction refused: a row that says why
            rows.append(Row(e, status=f"failed to build: {type(err).__name__}: {err}"))
            log(f"[{kind}] {e.name}: {rows[-1].status}")
            continue
        runner = psgd.PSGDRunner(
            e.name,
            model,
            opt,
            batches,
            with_batches=e.with_batches,
            convention=e.convention,
            context=e.context,
            library=e.library,
            implementation=e.construction,
        )
        rows.append(Row(e, runner, phi=_phi(opt) if e.group == "no fit" else None))
    return rows


def count_flops(runner: psgd.PSGDRunner, device: torch.device, steps: int) -> list[int]:
    """FlopCounterMode's flops of each of `steps` consecutive training steps of the runner."""
    return [floor.flops_of(lambda: runner.train_step(device)) for _ in range(steps)]


def block_rows(runner: psgd.PSGDRunner, rows_by_name: dict[str, int]) -> list[int]:
    """The statistics' rows of each preconditioned block (its first parameter's layer)."""
    names = {id(p): n for n, p in runner.model.named_parameters()}
    return [rows_by_name.get(names.get(id(params[0]), ""), 0) for params, _ in runner.opt.preconditioners()]


def bench_model(
    kind: str, device: torch.device, args: argparse.Namespace, rate: float, log: Callable[[str], None]
) -> dict[str, Any]:
    """Every method on one model: the records of `Row`s, the model's facts, and the comparisons."""
    repeats, steps, warmup = args.rounds[kind], args.steps[kind], args.warmup[kind]
    n_batches = max(64, warmup + repeats * steps + 32)
    reference, batches = models.model_and_batches(kind, device, n_batches, args.seed)
    n_params = sum(p.numel() for p in reference.parameters())
    x0, y0 = batches[0]
    fwd_bwd = floor.forward_backward_flops(copy.deepcopy(reference), x0, y0)
    rows_by_name = floor.layer_rows(copy.deepcopy(reference), x0)
    rows = build_rows(kind, reference, batches, log, args.everything)
    probe_model = copy.deepcopy(reference)
    probe = psgd.ProbeRunner(PROBE, probe_model, torch.optim.SGD(probe_model.parameters(), lr=0.0), batches)
    log(
        f"[{kind}] {n_params} parameters, forward+backward {fwd_bwd / 1e6:.1f} MFLOP; warm-up {warmup}, "
        f"{repeats} rounds of {steps} steps"
    )
    for row in rows:
        if row.runner is None:
            continue
        try:
            seconds = row.runner.warm_up(device, warmup)
        except Exception as err:  # fails at its first steps: a row that says why, out of the rounds
            row.status = f"failed in its warm-up: {type(err).__name__}: {err}"
            row.runner = None
            log(f"[{kind}] {row.entry.name}: {row.status}")
            continue
        log(f"[{kind}]   warm-up {row.entry.name}: {seconds:.1f} s ({seconds / max(warmup, 1):.3f} s/step)")
    probe.warm_up(device, warmup)
    runners = [row.runner for row in rows if row.runner is not None] + [probe]
    common.run_rounds(runners, device, repeats, steps, log, kind, seed=args.seed)

    by_name = {row.entry.name: row for row in rows}
    adam, sgdm = by_name[ADAM].runner, by_name[SGDM].runner
    probe_rounds = probe.rounds
    records: dict[str, dict[str, Any]] = {}
    for row in rows:
        e, r = row.entry, row.runner
        rec: dict[str, Any] = {
            "model": kind,
            "method": e.name,
            "group": e.group,
            "library": e.library,
            "construction": e.construction,
            "n_params": n_params,
            "status": row.status,
        }
        records[e.name] = rec
        if r is None:
            continue
        opt_rounds = {
            what: (
                [t - f for t, f in zip(r.rounds[src], probe_rounds[src], strict=True)]
                if e.convention == "closure"
                else r.rounds[what]
            )
            for what, src in (("opt", "train"), ("opt_mean", "train_mean"))
        }
        mem = _state(r.opt, e.library)
        rec.update(
            {
                "train_ms": 1e3 * statistics.median(r.rounds["train"]),
                "train_amortised_ms": 1e3 * statistics.median(r.rounds["train_mean"]),
                "opt_ms": 1e3 * statistics.median(opt_rounds["opt"]),
                "opt_amortised_ms": 1e3 * statistics.median(opt_rounds["opt_mean"]),
                "opt_how": "train - probe" if e.convention == "closure" else "direct",
                "train_vs_adam": common.same_round_ratio(r, adam, "train"),
                "train_vs_adam_amortised": common.same_round_ratio(r, adam, "train_mean"),
                "train_vs_sgdm": common.same_round_ratio(r, sgdm, "train"),
                "train_vs_sgdm_amortised": common.same_round_ratio(r, sgdm, "train_mean"),
                "cpu_vs_adam": common.same_round_ratio(r, adam, "cpu_mean"),
                "opt_vs_adam": common.iqr(
                    [a / b for a, b in zip(opt_rounds["opt_mean"], adam.rounds["opt_mean"], strict=True)]
                ),
                "state_bytes": mem,
                "state_bytes_per_param": mem["total"] / n_params,
                "precond_bytes_per_param": mem.get("precond", mem.get("phi", 0)) / n_params,
                "final_loss": r.last_loss,
                "nonfinite_losses": r.nonfinite,
                "steps_taken": r.step_index,
                **common.skipped_steps(r.opt),
            }
        )
        if row.phi is not None:
            now = _phi(r.opt)
            same = len(now) == len(row.phi) and all(torch.equal(a, b) for a, b in zip(now, row.phi))
            rec["fit_disabled_verified"] = same
            if not same:
                rec["status"] = "measured, but φ moved: the fitting was NOT disabled"
    # Flops counted by FlopCounterMode over one period of each method (after the timing: the counting
    # mode slows the steps).
    for row in rows:
        if row.runner is None:
            continue
        counts = count_flops(row.runner, device, row.entry.period)
        rec = records[row.entry.name]
        rec["counted_step_flops"] = counts
        rec["counted_opt_flops"] = statistics.fmean(counts) - fwd_bwd
    # Peak memory of a training step (after the counting).
    if kind in args.peak_models:
        for row in rows:
            if row.runner is None:
                continue
            r = row.runner

            def held(r: psgd.PSGDRunner = r, library: str = row.entry.library) -> int:
                params = list(r.model.parameters())
                return (
                    floor.tensor_bytes([*params, *(p.grad for p in params)]) + _state(r.opt, library)["total"]
                )

            records[row.entry.name]["peak"] = floor.peak_step_memory(
                lambda r=r: r.train_step(device), device, held, row.entry.period
            )
    # Floors.
    for row in rows:
        rec, e = records[row.entry.name], row.entry
        if row.runner is None:
            continue
        rec["floor"] = step_floor(row, rec, fwd_bwd, rows_by_name, rate)
    for row in rows:  # peers: the floor of our method with the same arithmetic
        rec, e = records[row.entry.name], row.entry
        if row.runner is None or e.floor_of is None:
            continue
        ours = records.get(e.floor_of, {}).get("floor")
        if ours is not None:
            rec["floor"] = {**ours, "rule": f"as {e.floor_of}", "counted_opt_flops": rec["counted_opt_flops"]}
    for rec in records.values():
        fl = rec.get("floor")
        if fl is not None and "train_amortised_ms" in rec:
            rec["step_vs_floor"] = rec["train_amortised_ms"] / fl["floor_ms"]
    adam_bytes = records[ADAM]["state_bytes_per_param"]
    for rec in records.values():
        if "state_bytes_per_param" in rec:
            rec["state_vs_adam"] = rec["state_bytes_per_param"] / adam_bytes
    bad = {name: rec["nonfinite_losses"] for name, rec in records.items() if rec.get("nonfinite_losses")}
    if bad:
        log(f"[{kind}] NON-FINITE losses (steps): {bad}")
    comparisons = []
    for method, against, bound in COMPARISONS:
        a, b = by_name.get(method), by_name.get(against)
        if a is None or b is None:
            continue
        comp: dict[str, Any] = {"model": kind, "method": method, "against": against, "bound": bound}
        if a.runner is None or b.runner is None:
            comp["status"] = f"not measured: {a.status if a.runner is None else b.status}"
        else:
            comp["status"] = "measured"
            comp["median"] = common.same_round_ratio(a.runner, b.runner, "train")
            comp["amortised"] = common.same_round_ratio(a.runner, b.runner, "train_mean")
            comp["cpu_amortised"] = common.same_round_ratio(a.runner, b.runner, "cpu_mean")
            comp["met"] = comp["amortised"]["median"] <= bound
        comparisons.append(comp)
    facts = {
        "model": kind,
        "description": models.MODELS[kind].description,
        "n_params": n_params,
        "forward_backward_flops": fwd_bwd,
        "probe_ms": 1e3 * statistics.median(probe_rounds["train"]),
        "probe_flops_per_s": fwd_bwd / statistics.median(probe_rounds["train"]),
        "rounds": repeats,
        "steps": steps,
        "warmup": warmup,
    }
    log(
        f"[{kind}] final losses: "
        + "; ".join(f"{n} {rec['final_loss']:.3g}" for n, rec in records.items() if "final_loss" in rec)
    )
    return {"facts": facts, "records": list(records.values()), "comparisons": comparisons}


def step_floor(
    row: Row, rec: dict[str, Any], fwd_bwd: int, rows_by_name: dict[str, int], rate: float
) -> dict:
    """The arithmetic floor of a method's step (benchmarks/floor.py); baselines and peers: the model's
    forward and backward (a peer's own is replaced by its counterpart's after this)."""
    e, r = row.entry, row.runner
    out: dict[str, Any] = {"forward_backward_flops": fwd_bwd, "apply_flops": 0, "fit_flops": 0.0, "rule": "-"}
    if e.library == "precondalg":
        objective = r.opt.configuration()["objective"]
        blocks = r.opt.preconditioners()
        counted = None
        if objective == "Proximal" and e.probability > 0:
            counts = rec["counted_step_flops"]
            counted = max(counts) - min(counts)  # one meta-update in the period
        out["apply_flops"] = floor.apply_flops(blocks)
        out["fit_flops"] = floor.fit_flops(
            objective,
            blocks,
            probability=e.probability,
            root_every=e.root_every,
            rows=block_rows(r, rows_by_name) if objective == "LayerStatistics" else None,
            counted=counted,
        )
        out["rule"] = objective if e.probability > 0 else f"{objective} (no fit)"
    total = out["forward_backward_flops"] + out["apply_flops"] + out["fit_flops"]
    out["total_flops"] = total
    out["floor_ms"] = 1e3 * floor.floor_seconds(total, rate)
    out["counted_opt_flops"] = rec["counted_opt_flops"]
    return out


# ------------------------------------------------------------------------------------------------ report
def _git(*a: str) -> str:
    """git's output, without its trailing newline only (`git status --porcelain` lines start with a
    status column that may be a space: stripping both ends had cut the first path's first letter)."""
    try:
        return subprocess.run(
            ["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.rstrip("\n")
    except (OSError, subprocess.SubprocessError):
        return ""


UNTRACKED_OUTPUTS = ("build/", "benchmarks/results/")
"""Untracked paths under these folders (builds, benchmark outputs) do not make the tree dirty."""


def tree_state(outputs: Iterable[Path] = ()) -> dict[str, Any]:
    """The checkout's commit and uncommitted changes (`git status --porcelain`), leaving out untracked
    paths under `UNTRACKED_OUTPUTS` and the files the run writes itself (`outputs`), with a fingerprint
    of the changes' contents (SHA-256 of `git diff HEAD` and of the untracked files counted), so that
    an edit to a file that was already changed shows as a change of state."""
    own = set()
    for o in outputs:
        with contextlib.suppress(ValueError):  # a file outside the checkout is no change of it
            own.add(Path(o).resolve().relative_to(ROOT).as_posix())
    changed = []
    for line in _git("status", "--porcelain", "--untracked-files=all").splitlines():
        status, path = line[:2], line[3:].split(" -> ")[-1].strip('"')
        if path in own or (status == "??" and path.startswith(UNTRACKED_OUTPUTS)):
            continue
        if status == "??" and not (ROOT / path).is_file():  # a temporary file, gone by now
            continue
        changed.append((status, path))
    digest = hashlib.sha256(_git("diff", "HEAD", "--", *(f":!{o}" for o in sorted(own))).encode())
    for status, path in changed:
        if status == "??" and (ROOT / path).is_file():
            digest.update(path.encode() + (ROOT / path).read_bytes())
    return {
        "commit": _git("rev-parse", "--short", "HEAD") or None,
        "tree_dirty": bool(changed),
        "changed_paths": len(changed),
        "changed": [f"{status.strip()} {path}" for status, path in changed[:10]],  # the first ten
        "fingerprint": digest.hexdigest()[:12] if changed else None,
    }


def describe_tree(state: dict[str, Any]) -> str:
    """A tree state (`tree_state`) in words: its commit, and its uncommitted changes or a clean tree."""
    if not state["tree_dirty"]:
        return f"`{state['commit']}` (clean tree)"
    changes = f"{state['changed_paths']} paths" + (
        f", contents {state['fingerprint']}" if state.get("fingerprint") else ""
    )
    return f"`{state['commit']}` with uncommitted changes ({changes})"


def run_info(info: dict[str, Any], start: dict[str, Any], outputs: Iterable[Path] = ()) -> dict[str, Any]:
    """What the page states about the run beside `machine_info`: the tree's state at the start of the
    run (`tree_state`: the code that was timed) and whether it changed by now (the end), lscpu's model
    name and the versions of the peers."""
    lscpu = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        lscpu = next((line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line), "")
    end = tree_state(outputs)
    changed = None
    if (end["commit"], end["fingerprint"]) != (start["commit"], start["fingerprint"]):
        changed = f"the tree changed during the run: started at {describe_tree(start)}, "
        changed += f"ended at {describe_tree(end)}"
    return {
        **start,
        "tree_at_end": end,
        "tree_changed": changed,
        "lscpu_model_name": lscpu or info["cpu_model"],
        "versions": psgd.versions() | {"pytorch_optimizer": common._peer_version()},
    }


def _cell(text: str) -> str:
    """Text for a Markdown table cell: pipes, underscores and asterisks escaped."""
    return str(text).replace("|", "\\|").replace("_", "\\_").replace("*", "\\*")


def _status(text: str) -> str:
    """A row's status for a table: a method left out for the run's length in a few words (the protocol
    gives the reasons), anything else as it is."""
    for prefix in ("left out", "not measured: left out"):
        if text.startswith(prefix):
            return prefix + " on this model to keep the run short (`--everything` runs it)"
    return _cell(text)


def _r(x: float | None, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _ms(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}" if x < 1000 else f"{x:,.0f}"


def _ratio(r: dict[str, float] | None) -> str:
    return "–" if r is None else f"{r['median']:.2f} [{r['q1']:.2f}–{r['q3']:.2f}]"


def _mflop(x: float | None) -> str:
    return "–" if x is None else f"{x / 1e6:,.1f}"


MODEL_TITLES = {
    "digits-mlp": "digits MLP",
    "digits-cnn": "digits CNN",
    "mlp3x256": "MLP 3×256",
    "transformer": "transformer block",
    "mlp4x1024": "MLP 4×1024",
}


def targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target of the issue, measured: the comparisons (a method's training step over another's,
    same-round, amortised) and each preset's (and no-fit variant's) step over its floor where the floor
    exceeds 10 ms."""
    rows = []
    for m in out["models"]:
        for c in m["comparisons"]:
            rows.append(
                {
                    "target": f"{c['method']} / {c['against']}",
                    "model": c["model"],
                    "measured": c.get("amortised", {}).get("median"),
                    "amortised": c.get("amortised"),
                    "median": c.get("median"),
                    "cpu": c.get("cpu_amortised"),
                    "bound": c["bound"],
                    "met": c.get("met"),
                    "status": c["status"],
                }
            )
        for rec in m["records"]:
            fl = rec.get("floor")
            if rec["group"] in ("preset", "no fit") and fl is not None and fl["floor_ms"] > FLOOR_MIN_MS:
                rows.append(
                    {
                        "target": f"{rec['method']}: step / floor ({fl['floor_ms']:,.0f} ms)",
                        "model": rec["model"],
                        "measured": rec["step_vs_floor"],
                        "bound": FLOOR_TARGET,
                        "met": rec["step_vs_floor"] <= FLOOR_TARGET,
                        "status": rec["status"],
                    }
                )
    return rows


def page(out: dict[str, Any]) -> str:
    """The generated part of docs/benchmarks.md (between `BEGIN` and `END`)."""
    info, run = out["machine"], out["run"]
    rate = out["matmul_rate"]
    load0, load1 = info.get("load_average"), out.get("load_average_end")
    on_cpu = info["device"].startswith("cpu")
    where = "CPU; not measured on GPU" if on_cpu else f"GPU: {info['gpu']}"
    L: list[str] = []
    add = L.append
    add("## Suite results: CPU" if on_cpu else "## Suite results: GPU")
    add("")
    add(
        f"Measured {info['date']} by `{out['command']}` ({out['wall_s'] / 60:.1f} min"
        + (", **a quick run: a few steps, not for reading**" if out["quick"] else "")
        + ")."
    )
    add("")
    add(
        f"- **Machine**: {run['lscpu_model_name']} (`lscpu`; family {info['cpu_family']}, model "
        f"{info['cpu_model_number']}), {info['cores_available']} of {info['logical_cores']} logical cores; "
        f"load average {', '.join(f'{x:.2f}' for x in load0) if load0 else '?'} (1 / 5 / 15 min) at the "
        f"start and {', '.join(f'{x:.2f}' for x in load1) if load1 else '?'} at the end."
    )
    versions = run["versions"]
    add(
        f"- **Software**: torch {info['torch']} with **{info['torch_threads']} intra-op thread**, Python "
        f"{info['python']}, psgd_torch {versions.get('psgd_torch')}, heavyball {versions.get('heavyball')}, "
        f"pytorch-optimizer {versions.get('pytorch_optimizer')}."
    )
    changed = f" **Note: {run['tree_changed']}.**" if run.get("tree_changed") else ""
    add(f"- **Code**: commit {describe_tree(run)} at the start of the run.{changed}")
    add(
        f"- **Matmul rate**: {rate['start']['flops_per_s'] / 1e9:.1f} GFLOP/s (median of 30 float32 "
        f"{rate['start']['n']}×{rate['start']['n']} products at the start; "
        f"{rate['end']['flops_per_s'] / 1e9:.1f} at the end); the floors below use the rate at the start."
    )
    add(
        "- **GPU**: not measured on GPU (no GPU was available for this run)."
        if on_cpu
        else f"- **GPU**: {info['gpu']}."
    )
    add("")
    add(
        "Per model: the rounds (of 10 steps per method; 1 or 2 in a quick run) and the warm-up steps, the "
        "forward and backward pass's flops (FlopCounterMode), and the rate it reached (those flops over "
        "the median time of the forward-and-backward probe timed in the same rounds):"
    )
    add("")
    add("| model | parameters | rounds | warm-up | forward + backward GFLOP | probe ms | probe GFLOP/s |")
    add("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for m in out["models"]:
        f = m["facts"]
        add(
            f"| {MODEL_TITLES[f['model']]} | {f['n_params']:,} | {f['rounds']} | {f['warmup']} | "
            f"{f['forward_backward_flops'] / 1e9:.3f} | {_ms(f['probe_ms'])} | "
            f"{f['probe_flops_per_s'] / 1e9:.1f} |"
        )
    add("")
    rows = targets(out)
    measured = [t for t in rows if t["met"] is not None]
    add(f"### Targets ({where})")
    add("")
    add(
        f"{sum(t['met'] for t in measured)} of the {len(measured)} measured targets met. A comparison is the "
        "training step's same-round ratio, method over the other, median over the rounds [IQR]: amortised "
        "(each round's mean of its 10 steps, so that work done once in 10 steps is in it; the figure "
        "held against the bound), of the rounds' medians, and of their process CPU times (amortised; "
        "preemption of a shared machine does not inflate these). A floor target is the amortised training "
        "step over the floor, for every preset whose floor exceeds 10 ms."
    )
    add("")
    add("| target | model | amortised [IQR] | median [IQR] | CPU time | bound | result |")
    add("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for t in rows:
        if t["met"] is None:
            result = _status(t["status"])
        else:
            over = 100 * (t["measured"] / t["bound"] - 1)
            result = (
                "met"
                if t["met"]
                else f"**missed** by {over:.1f} %"
                if over < 1
                else f"**missed** by {over:.0f} %"
            )
        first = _ratio(t["amortised"]) if "amortised" in t else _r(t["measured"])
        add(
            f"| {_cell(t['target'])} | {MODEL_TITLES[t['model']]} | {first} | {_ratio(t.get('median'))} | "
            f"{_r((t.get('cpu') or {}).get('median'))} | ≤ {t['bound']:.2f} | {result} |"
        )
    add("")
    add(f"### Step time, floor and state memory ({where})")
    add("")
    add(
        "Per model: the training step (median over the rounds of each round's median, and amortised: of "
        "each round's mean), its same-round ratio to Adam (median [IQR]; amortised), the optimizer step "
        "alone (amortised; for the closure methods the step minus the probe), the floor (forward + "
        "backward + the preconditioner's application and fit at the matmul rate) and the amortised step "
        "over it, the optimizer state in bytes per parameter, and the loss at the last timed step."
    )
    for m in out["models"]:
        add("")
        add(f"#### {MODEL_TITLES[m['facts']['model']]}")
        add("")
        add(
            "| method | train ms | amortised ms | / Adam [IQR] | / Adam amortised | opt ms amortised | "
            "floor ms | step / floor | state B/param | loss |"
        )
        add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for rec in m["records"]:
            if "train_ms" not in rec:
                add(f"| {_cell(rec['method'])} | {_status(rec['status'])} |  |  |  |  |  |  |  |  |")
                continue
            note = "" if rec["status"] == "measured" else f" ({_cell(rec['status'])})"
            add(
                f"| {_cell(rec['method'])}{note} | {_ms(rec['train_ms'])} | "
                f"{_ms(rec['train_amortised_ms'])} | {_ratio(rec['train_vs_adam'])} | "
                f"{_r(rec['train_vs_adam_amortised']['median'])} | {_ms(rec['opt_amortised_ms'])} | "
                f"{_ms(rec['floor']['floor_ms'])} | {_r(rec.get('step_vs_floor'), 1)} | "
                f"{_r(rec['state_bytes_per_param'])} | {_r(rec['final_loss'], 3)} |"
            )
    add("")
    add(f"### The floors, and FlopCounterMode's count beside them ({where})")
    add("")
    add(
        "MFLOP per step: the preconditioner's application and fit by the rules of the protocol; the floor "
        "in ms at the 512² matmul rate and at the rate the model's own forward and backward pass reached "
        "(the probe's, in the table of models above), the amortised step over each; and FlopCounterMode's "
        "count of the optimizer's part of a step (the training step's count over one period, minus the "
        "forward and backward: it holds K-FAC's statistics, recorded by hooks during the pass, and leaves "
        "out eigh and triangular solves). A peer's floor is its counterpart's."
    )
    for m in out["models"]:
        probe_rate = m["facts"]["probe_flops_per_s"]
        add("")
        add(f"#### {MODEL_TITLES[m['facts']['model']]}: floors")
        add("")
        add(
            "| method | fit rule | apply MFLOP | fit MFLOP | floor MFLOP | floor ms | step / floor | "
            "floor ms, probe rate | step / that | counted opt MFLOP |"
        )
        add("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for rec in m["records"]:
            fl = rec.get("floor")
            if fl is None:
                continue
            at_probe = 1e3 * fl["total_flops"] / probe_rate
            add(
                f"| {_cell(rec['method'])} | {_cell(fl['rule'])} | {_mflop(fl['apply_flops'])} | "
                f"{_mflop(fl['fit_flops'])} | {_mflop(fl['total_flops'])} | {_ms(fl['floor_ms'])} | "
                f"{_r(rec.get('step_vs_floor'), 1)} | {_ms(at_probe)} | "
                f"{_r(rec['train_amortised_ms'] / at_probe, 1)} | {_mflop(fl['counted_opt_flops'])} |"
            )
    add("")
    add(f"### Memory ({where})")
    add("")
    add("Optimizer state, bytes per parameter (Adam: 8):")
    add("")
    kinds = [m["facts"]["model"] for m in out["models"]]
    add("| method | " + " | ".join(MODEL_TITLES[k] for k in kinds) + " |")
    add("| --- | " + " | ".join("---:" for _ in kinds) + " |")
    names = list(dict.fromkeys(rec["method"] for m in out["models"] for rec in m["records"]))
    for name in names:
        cells = []
        for m in out["models"]:
            rec = next((r for r in m["records"] if r["method"] == name), None)
            cells.append(
                "" if rec is None else _r(rec.get("state_bytes_per_param")) if "train_ms" in rec else "–"
            )
        add(f"| {_cell(name)} | " + " | ".join(cells) + " |")
    for m in out["models"]:
        peaks = [rec for rec in m["records"] if "peak" in rec]
        if not peaks:
            continue
        adam_peak = next((r for r in peaks if r["method"] == ADAM), None)
        ref = (
            None if adam_peak is None else adam_peak["peak"]["held_bytes"] + adam_peak["peak"]["excess_bytes"]
        )
        add("")
        add(
            f"Peak memory of one training step on the {MODEL_TITLES[m['facts']['model']]} "
            f"({m['facts']['n_params']:,} parameters, {m['facts']['n_params'] * 4 / 2**20:.2f} MiB in "
            "float32): "
            "the bytes held when the step starts (parameters, gradients, optimizer state) and the highest "
            f"excess over them during the step ({peaks[0]['peak']['method']}; see the protocol)."
        )
        add("")
        add("| method | held MiB | step excess MiB | peak MiB | peak / Adam's |")
        add("| --- | ---: | ---: | ---: | ---: |")
        for rec in peaks:
            p = rec["peak"]
            total = p["held_bytes"] + p["excess_bytes"]
            add(
                f"| {_cell(rec['method'])} | {p['held_bytes'] / 2**20:.2f} | "
                f"{p['excess_bytes'] / 2**20:.2f} | {total / 2**20:.2f} | "
                f"{_r(total / ref if ref else None)} |"
            )
    add("")
    add("### Constructions")
    add("")
    add("| method | group | construction |")
    add("| --- | --- | --- |")
    built = {}
    for m in out["models"]:
        for rec in m["records"]:
            built.setdefault(rec["method"], (rec["group"], rec["construction"]))
    for name, (group, construction) in built.items():
        add(f"| {_cell(name)} | {group} | {_cell(construction)} |")
    if on_cpu:
        add("")
        add("## Suite results: GPU")
        add("")
        add(
            "Not measured on GPU: no GPU was available for this run (every table above is a CPU figure). "
            "The suite runs there with `python benchmarks/suite.py --device cuda` (peak memory by "
            "`torch.cuda.max_memory_allocated`)."
        )
    return "\n".join(L)


def write_page(path: Path, section: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the text between the markers `begin` and `end` (the suite's: `BEGIN`, `END`) in path with
    section."""
    text = path.read_text()
    if text.count(begin) != 1 or text.count(end) != 1:
        raise ValueError(f"{path}: expected exactly one {begin!r} and one {end!r}")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    path.write_text(f"{head}{begin}\n{section}\n{end}{tail}")


def csv_rows(out: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for m in out["models"]:
        for rec in m["records"]:
            flat = {k: v for k, v in rec.items() if k not in ("counted_step_flops", "construction")}
            rows.append(flat)
    return rows


# -------------------------------------------------------------------------------------------------- main
def add_page_options(ap: argparse.ArgumentParser) -> None:
    """A benchmark's options for its part of `DOCS_PAGE` and its JSON: --docs, --no-docs, --from-json,
    --json (with `page_to_write`)."""
    ap.add_argument(
        "--docs",
        type=Path,
        default=None,
        help=f"the page to rewrite (default {DOCS_PAGE}; not with --quick unless given)",
    )
    ap.add_argument("--no-docs", action="store_true", help="leave the docs page alone")
    ap.add_argument("--from-json", type=Path, default=None, help="rewrite the page from a saved run's JSON")
    ap.add_argument("--json", type=Path, default=None)


def page_to_write(args: argparse.Namespace) -> Path | None:
    """The page a run rewrites (`add_page_options`): --docs, else `DOCS_PAGE` unless --quick; none with
    --no-docs."""
    return None if args.no_docs else args.docs if args.docs is not None else None if args.quick else DOCS_PAGE


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--models", default=",".join(models.MODELS), help="comma-separated, from models.MODELS")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of 2 steps (1 on mlp4x1024)")
    ap.add_argument(
        "--everything",
        action="store_true",
        help="also the methods left out on a model for time (Entry.optional)",
    )
    ap.add_argument("--rounds", type=int, default=None, help="rounds on every model (default: ROUNDS)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default 1 on cpu)")
    ap.add_argument(
        "--peak-models", default=",".join(PEAK_MODELS), help="models whose peak memory is measured"
    )
    add_page_options(ap)
    ap.add_argument("--csv", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    docs = page_to_write(args)

    if args.from_json is not None:
        out = json.loads(args.from_json.read_text())
        write_page(docs or DOCS_PAGE, page(out))
        print(f"wrote {docs or DOCS_PAGE} from {args.from_json}")
        return 0

    kinds = [k for k in args.models.split(",") if k]
    unknown = [k for k in kinds if k not in models.MODELS]
    if unknown:
        print(f"--models: unknown {unknown}; choose from {list(models.MODELS)}", file=sys.stderr)
        return 2
    args.peak_models = [k for k in args.peak_models.split(",") if k]
    args.rounds = {k: args.rounds or ROUNDS[k] for k in kinds}
    args.steps = dict.fromkeys(kinds, STEPS)
    args.warmup = {k: WARMUP[k] for k in kinds}
    if args.quick:
        args.rounds = {k: 1 if k == BIG else 2 for k in kinds}
        args.steps = {k: 1 if k == BIG else 2 for k in kinds}
        args.warmup = {k: 1 if k == BIG else 2 for k in kinds}
    run = common.start_run(args, "suite_quick" if args.quick else "suite")
    if run is None:
        return 2
    outputs = (run.json_path, run.csv_path, run.log_path)
    tree = tree_state(outputs)  # the code timed: the tree may change while the run goes on
    device, log = run.device, run.log
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    rate_start = floor.matmul_rate(device, sync=sync)
    log(
        f"matmul rate {rate_start['flops_per_s'] / 1e9:.1f} GFLOP/s "
        f"({rate_start['n']}² float32, median of 30)"
    )
    results = []
    for kind in kinds:
        results.append(bench_model(kind, device, args, rate_start["flops_per_s"], log))
        run.write_log()
    rate_end = floor.matmul_rate(device, sync=sync)
    command = (
        COMMAND
        + (" --quick" if args.quick else "")
        + (" --everything" if args.everything else "")
        + (f" --models {args.models}" if kinds != list(models.MODELS) else "")
    )
    out = {
        "command": command,
        "quick": args.quick,
        "machine": run.info,
        "run": run_info(run.info, tree, outputs),
        "load_average_end": os.getloadavg(),
        "matmul_rate": {"start": rate_start, "end": rate_end},
        "floor_rules": {"eigh_flops_n3": floor.EIGH_FLOPS, "root_flops_n3": floor.ROOT_FLOPS},
        "targets": {
            "floor": FLOOR_TARGET,
            "floor_min_ms": FLOOR_MIN_MS,
            "no_fit": NO_FIT_TARGET,
            "spatial": SPATIAL_TARGET,
        },
        "models": results,
        "wall_s": run.elapsed(),
    }
    out["target_rows"] = targets(out)
    run.json_path.write_text(json.dumps(out, indent=2, default=str))
    common.write_csv(run.csv_path, csv_rows(out))
    section = page(out)
    if docs is not None:
        write_page(docs, section)
        log(f"wrote {docs}")
    run.finish(["", *section.splitlines()], run.json_path, run.csv_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
