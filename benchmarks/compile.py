"""``compile=True`` against the eager step, per preset: compile time, step time, and the same numbers.

Run from the repository root:

    OMP_NUM_THREADS=1 python benchmarks/compile.py            # the digits CNN and the MLP 3×256 (minutes)
    OMP_NUM_THREADS=1 python benchmarks/compile.py --quick    # smoke run: the digits CNN, two presets

For each model (`models.MODELS`) and preset, two copies of the same initial model train on the same
batches, one with the preset's eager step and one with ``compile=True`` (Inductor, the default options
of `Preconditioned`):

1. **Compile time.** The compiled optimizer's first ``--warmup`` training steps are timed one by one (the
   step variants compile there: without and with the hypergradient's cached step, a fitted and an
   unfitted step); the compile time is their sum minus as many of the eager optimizer's median steps.
2. **Step time.** Then interleaved rounds: in each, both run ``--steps`` consecutive training steps
   (forward + backward + ``opt.step``), in an order alternating by round; a round's figure is the median
   of its steps, and the ratio compiled / eager is the median over the rounds of the same-round ratios
   (with their interquartile range).  The baseline (torch.optim's momentum SGD on the CNN, Adam on the
   MLP) runs in the same rounds, for the ratios to it.
3. **Same numbers.** Both copies took the same steps on the same batches: the largest difference of
   their parameters, relative to how far the eager copy moved.

Inductor's on-disk caches start empty: the script points ``TORCHINDUCTOR_CACHE_DIR`` at a fresh
temporary folder (unless it is set), so the first compile of each kernel is in the figures; presets later
in the run reuse the kernels earlier ones compiled, as they would in one user process.

Outputs: benchmarks/results/compile_<device>.json and the table on stdout (copied into
docs/concepts/compile.md by hand, with the machine, the commit and the date).  Tests never assert on
these numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

try:  # run as a script, benchmarks/ is on sys.path; as `python -m benchmarks.compile`, the repository root
    import models
    import optimizers as common
except ImportError:  # pragma: no cover
    from benchmarks import models
    from benchmarks import optimizers as common

from precondalg.optim import APO, FOP, HD, KFAC, LODO, PSGD, Shampoo

CE = nn.functional.cross_entropy

PRESETS: dict[str, Callable[..., Any]] = {
    "FOP": lambda m, **k: FOP(m.parameters(), common.LR_SGD, momentum=0.9, hyper_lr=common.HYPER_LR, **k),
    "FOP (spatial only)": lambda m, **k: common.fop_spatial_only(m.parameters(), common.LR_SGD, **k),
    "HD (layer)": lambda m, **k: HD(
        m.parameters(), common.LR_SGD, common.HYPER_LR, granularity="layer", base="momentum", **k
    ),
    "PSGD kron": lambda m, **k: PSGD(m.parameters(), 1e-3, criterion="fisher", init_scale=1.0, **k),
    "LODO": lambda m, **k: LODO(m.parameters(), 0.1, **k),
    "Shampoo (every 10)": lambda m, **k: Shampoo(
        m.parameters(), common.SHAMPOO_LR, epsilon=common.SHAMPOO_EPS, update_every=10, **k
    ),
    "K-FAC (every 10)": lambda m, **k: KFAC(
        m.parameters(), common.KFAC_LR, model=m, damping=common.KFAC_DAMPING, momentum=0.9, **k
    ),
    "APO-Precond (every 10)": lambda m, **k: APO(
        m.parameters(), common.APO_LR, model=m, loss_fn=CE, base="momentum", momentum=0.9, **k
    ),
}
CLOSURE = ("PSGD kron",)
WITH_BATCHES = ("APO-Precond (every 10)",)
RUNS = {
    "digits-cnn": ("SGD momentum", ("FOP (spatial only)", "FOP")),
    "mlp3x256": ("Adam", tuple(name for name in PRESETS if name not in ("FOP (spatial only)", "LODO"))),
}
"""Per model: the torch.optim baseline (`optimizers.BASELINES`) and the presets.  LODO is left out of
the default run (``--lodo`` adds it on the digits MLP): on the MLP 3×256 its eager step takes 1.6 s (its
φ holds about 128 numbers per parameter) and its run there did not end within 25 minutes; on the digits
MLP its compile alone took more than 5 minutes."""
QUICK = {"digits-cnn": ("FOP (spatial only)", "HD (layer)")}


class Trainer:
    """One optimizer training its own copy of the model on the fixed batches."""

    def __init__(self, name: str, model: nn.Module, opt: Any, batches: list) -> None:
        self.name, self.model, self.opt, self.batches, self.i = name, model, opt, batches, 0

    def step(self) -> float:
        """One training step; returns its seconds."""
        x, y = self.batches[self.i % len(self.batches)]
        x_next = self.batches[(self.i + 1) % len(self.batches)][0]
        self.i += 1
        t0 = time.perf_counter()
        if self.name in CLOSURE:
            self.opt.step(lambda: CE(self.model(x), y))
        else:
            self.opt.zero_grad(set_to_none=True)
            CE(self.model(x), y).backward()
            if self.name in WITH_BATCHES:
                self.opt.step(batch=(x, y), fsd_batch=x_next)
            else:
                self.opt.step()
        return time.perf_counter() - t0

    def steps(self, n: int) -> float:
        """The median of n consecutive steps."""
        return statistics.median(self.step() for _ in range(n))


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return q[0], statistics.median(xs), q[2]


def compare(
    kind: str, name: str, baseline: str, args: argparse.Namespace, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Compile time, step-time ratios and the difference of the two runs for one preset on one model:
    the eager step against the step with `options` (default ``compile=True``; the "compiled" figures
    are those of that variant)."""
    torch._dynamo.reset()
    model, batches = models.model_and_batches(kind, torch.device("cpu"), 50, args.seed)
    start = [p.detach().clone() for p in model.parameters()]
    copies = [copy.deepcopy(model) for _ in range(3)]
    eager = Trainer(name, copies[0], PRESETS[name](copies[0]), batches)
    compiled = Trainer(name, copies[1], PRESETS[name](copies[1], **(options or {"compile": True})), batches)
    base = Trainer(baseline, copies[2], common.BASELINES[baseline](copies[2]), batches)
    eager_first = [eager.step() for _ in range(args.warmup)]
    compiled_first = [compiled.step() for _ in range(args.warmup)]
    for _ in range(args.warmup):
        base.step()
    eager_ms = statistics.median(eager_first[1:]) if args.warmup > 1 else eager_first[0]
    compile_s = sum(compiled_first) - args.warmup * eager_ms
    rounds: list[tuple[float, float, float]] = []
    for r in range(args.rounds):
        order = [eager, compiled, base] if r % 2 == 0 else [base, compiled, eager]
        medians = {t.name if t is base else ("compiled" if t is compiled else "eager"): t.steps(args.steps)
                   for t in order}
        rounds.append((medians["eager"], medians["compiled"], medians[baseline]))
    moved = max((p.detach() - s).abs().max().item() for p, s in zip(copies[0].parameters(), start))
    diff = max((a.detach() - b.detach()).abs().max().item()
               for a, b in zip(copies[0].parameters(), copies[1].parameters()))
    return {
        "model": kind,
        "preset": name,
        "baseline": baseline,
        "first_steps_s": compiled_first,
        "compile_s": compile_s,
        "eager_ms": statistics.median(e for e, _, _ in rounds) * 1e3,
        "compiled_ms": statistics.median(c for _, c, _ in rounds) * 1e3,
        "baseline_ms": statistics.median(b for _, _, b in rounds) * 1e3,
        "compiled_over_eager": quartiles([c / e for e, c, _ in rounds]),
        "eager_over_baseline": quartiles([e / b for e, _, b in rounds]),
        "compiled_over_baseline": quartiles([c / b for _, c, b in rounds]),
        "relative_difference": diff / moved if moved else float("nan"),
        "steps_each": compiled.i,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | preset | compile s | eager ms | compiled ms | compiled / eager [IQR] | eager / baseline "
        "| compiled / baseline | max difference / movement |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lo, mid, hi = r["compiled_over_eager"]
        lines.append(
            f"| {r['model']} | {r['preset']} | {r['compile_s']:.1f} | {r['eager_ms']:.2f} | "
            f"{r['compiled_ms']:.2f} | {mid:.2f} [{lo:.2f}–{hi:.2f}] | "
            f"{r['eager_over_baseline'][1]:.2f} ({r['baseline']}) | {r['compiled_over_baseline'][1]:.2f} | "
            f"{r['relative_difference']:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the digits CNN, two presets, few rounds")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round and optimizer")
    parser.add_argument("--warmup", type=int, default=6, help="first steps, in which the step compiles")
    parser.add_argument("--lodo", action="store_true", help="add LODO on the digits MLP (slow to compile)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-cache-"))
    torch.set_num_threads(1)
    if args.quick:
        args.rounds, args.steps = 3, 3
    runs = {k: (RUNS[k][0], QUICK[k]) for k in QUICK} if args.quick else dict(RUNS)
    if args.lodo:
        runs["digits-mlp"] = ("Adam", ("LODO",))
    info = common.machine_info(torch.device("cpu"), git=True)
    print("machine:", common.describe_machine(info), flush=True)
    rows = []
    t0 = time.perf_counter()
    for kind, (baseline, names) in runs.items():
        for name in names:
            rows.append(compare(kind, name, baseline, args))
            r = rows[-1]
            print(f"[{time.perf_counter() - t0:6.0f}s] {kind} {name}: compile {r['compile_s']:.1f} s, "
                  f"compiled/eager {r['compiled_over_eager'][1]:.2f}", flush=True)
    print(table(rows))
    name = "compile_quick_cpu.json" if args.quick else "compile_cpu.json"
    out = args.json or Path(__file__).parent / "results" / name
    saved = {"machine": info, "args": {**vars(args), "json": str(out)}, "rows": rows}
    out.write_text(json.dumps(saved, indent=1))
    print(f"wrote {out}; total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
