"""``precond_dtype=torch.bfloat16`` against the preconditioner in the compute dtype: memory, step time, and
the papers' problems.

Run from the repository root:

    OMP_NUM_THREADS=1 python benchmarks/precond_dtype.py            # about 10 minutes
    OMP_NUM_THREADS=1 python benchmarks/precond_dtype.py --quick    # smoke run (about a minute)

Three settings of the preconditioner's storage: the compute dtype (float32 for the MLP, float64 for the
two papers' problems), bfloat16 with stochastic rounding (the default of ``precond_dtype``) and bfloat16
rounded to nearest.

1. **Memory**: the optimizer state's bytes per parameter (every tensor of ``state_dict()``, each storage
   once; `precondalg.experiments.memory.state_bytes`) of each preset on the MLP 3×256, and its split into
   φ, the meta-optimizer's state and the statistics.
2. **Step time**: on the MLP 3×256, the training step with bfloat16 storage over the same step in
   float32, interleaved rounds, median of the same-round ratios [IQR] (`compile.compare`: the widening
   before the step and the rounding after it are the cost).
3. **PSGD on Rosenbrock** (Li 2019, Fig. 1): the Newton-type PSGD with a triangular Q in the paper's
   setting (`psgd_rosenbrock.precondalg_psgd`), per seed the first iteration with f < 1e-10.
4. **LODO on the noisy bowl** (Liao et al. 2023, §5.1): LODO with the tuned values
   (`lodo_bowl.lodo_factory`) on the n = 100 bowl; per seed the mean loss of the last 10% of the steps
   over the Newton oracle's stationary loss (the paper's ratio) and the inverse-Hessian error
   ‖I − GH‖_F/√n at the end.

Outputs: benchmarks/results/precond_dtype_cpu.json (precond_dtype_quick_cpu.json) and the tables on stdout
(copied into docs/performance.md by hand, with the machine, the commit and the date).  Tests never
assert on these numbers.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

try:  # run as a script, benchmarks/ is on sys.path; as `python -m benchmarks.precond_dtype`, the root
    import compile as compiled
    import lodo_bowl
    import models
    import optimizers as common
    import psgd_rosenbrock
except ImportError:  # pragma: no cover
    from benchmarks import compile as compiled
    from benchmarks import lodo_bowl, models, psgd_rosenbrock
    from benchmarks import optimizers as common

from precondalg.experiments.memory import state_bytes

SETTINGS: dict[str, dict[str, Any]] = {
    "compute dtype": {},
    "bfloat16, stochastic": {"precond_dtype": torch.bfloat16},
    "bfloat16, nearest": {"precond_dtype": torch.bfloat16, "precond_rounding": "nearest"},
}
MEMORY_PRESETS = tuple(name for name in compiled.PRESETS if name != "FOP (spatial only)")  # conv taps only
TIMED = ("FOP", "HD (layer)", "PSGD kron", "Shampoo (every 10)", "K-FAC (every 10)", "APO-Precond (every 10)")
"""Timed on the MLP 3×256: LODO's step there takes over a second (its φ holds ~128 numbers per
parameter); its time per step is the bowl's instead."""


def memory(kind: str, steps: int) -> list[dict[str, Any]]:
    """Per preset and setting: state bytes per parameter after `steps` training steps on `kind`."""
    rows = []
    for name in MEMORY_PRESETS:
        for setting, options in list(SETTINGS.items())[:2]:
            model, batches = models.model_and_batches(kind, torch.device("cpu"), steps + 1, 0)
            trainer = compiled.Trainer(name, model, compiled.PRESETS[name](model, **options), batches)
            for _ in range(steps):
                trainer.step()
            n = sum(p.numel() for p in model.parameters())
            parts = state_bytes(trainer.opt)
            rows.append({
                "preset": name, "setting": setting, "bytes_per_param": parts["total"] / n,
                "parts_per_param": {k: v / n for k, v in parts.items() if v and k != "total"},
            })
    return rows


def rosenbrock(seeds: int, iterations: int) -> list[dict[str, Any]]:
    """Per setting: PSGD Newton (triangular Q) on Rosenbrock, iterations to f < 1e-10 per seed."""
    rows = []
    for setting, options in SETTINGS.items():
        runs = [psgd_rosenbrock.precondalg_psgd(s, iterations, "newton", **options) for s in range(seeds)]
        rows.append({"setting": setting, "iterations": [c for c, _ in runs], "f_end": [f for _, f in runs]})
    return rows


def bowl(seeds: int, steps: int) -> list[dict[str, Any]]:
    """Per setting and seed: LODO on the n = 100 noisy bowl (float64)."""
    torch.set_default_dtype(torch.float64)
    args = argparse.Namespace(
        n=100, lam_min=1e-3, sigma2=1.0, steps=steps, hessian_every=max(1, steps // 4), probes=0,
        curve_block=max(1, steps // 20), warmup=0.1, paper_bowl=True,
    )
    args.ref = lodo_bowl.references(args.n, args.lam_min, args.sigma2)
    rows = []
    try:
        for setting, options in SETTINGS.items():
            factory = lodo_bowl.lodo_factory(**lodo_bowl.TUNED["LODO"], **options)
            for seed in range(seeds):
                rec, _ = lodo_bowl.run_one("LODO", factory, seed, args, lambda _: None)
                rows.append({
                    "setting": setting, "seed": seed, "ratio_to_newton": rec["ratio_to_newton"],
                    "hessian_error_end": rec.get("hessian", {}).get("last"),
                    "us_per_step": rec["us_per_step"],
                })
                print(f"  bowl {setting} seed {seed}: ratio {rec['ratio_to_newton']:.3f}", flush=True)
    finally:
        torch.set_default_dtype(torch.float32)
    return rows


def _mean(xs: list[float]) -> str:
    finite = [x for x in xs if x is not None and math.isfinite(x)]
    return f"{statistics.fmean(finite):.3f}" if len(finite) == len(xs) else "diverged"


def tables(out: dict[str, Any]) -> str:
    """The markdown tables of a run."""
    lines = [
        "| preset (MLP 3×256) | bytes/param, compute dtype | bytes/param, bfloat16 | step time bf16 / f32 |",
        "| --- | ---: | ---: | ---: |",
    ]
    by = {(r["preset"], r["setting"]): r["bytes_per_param"] for r in out["memory"]}
    timing = {r["preset"]: r["compiled_over_eager"] for r in out["timing"]}
    for name in MEMORY_PRESETS:
        lo, mid, hi = timing.get(name, (math.nan,) * 3)
        time_cell = f"{mid:.2f} [{lo:.2f}–{hi:.2f}]" if name in timing else "–"
        lines.append(f"| {name} | {by[name, 'compute dtype']:.1f} | {by[name, 'bfloat16, stochastic']:.1f} | "
                     f"{time_cell} |")
    lines += ["", "| storage | PSGD Newton on Rosenbrock: iterations to f < 1e-10 per seed | "
              "LODO on the noisy bowl: loss / Newton per seed | ‖I − GH‖_F/√n at the end |",
              "| --- | --- | --- | --- |"]
    for row in out["rosenbrock"]:
        setting = row["setting"]
        its = ", ".join("—" if c is None else str(c) for c in row["iterations"])
        runs = [r for r in out["bowl"] if r["setting"] == setting]
        ratios = ", ".join(f"{r['ratio_to_newton']:.3f}" for r in runs)
        errors = ", ".join(
            "–" if r["hessian_error_end"] is None else f"{r['hessian_error_end']:.3f}" for r in runs
        )
        lines.append(f"| {setting} | {its} | {ratios} (mean {_mean([r['ratio_to_newton'] for r in runs])}) | "
                     f"{errors} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, short runs")
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round and optimizer")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the two papers' problems")
    parser.add_argument("--bowl-steps", type=int, default=20_000)
    parser.add_argument("--rosenbrock-iterations", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        args.rounds, args.steps, args.seeds, args.bowl_steps = 3, 2, 1, 1000
    info = common.machine_info(torch.device("cpu"), git=True)
    print("machine:", common.describe_machine(info), flush=True)
    t0 = time.perf_counter()
    out: dict[str, Any] = {"machine": info, "args": {**vars(args), "json": str(args.json)}}
    out["memory"] = memory("mlp3x256", steps=2)
    print(f"[{time.perf_counter() - t0:5.0f}s] memory done", flush=True)
    out["timing"] = [
        compiled.compare("mlp3x256", name, "Adam", copy.copy(args), SETTINGS["bfloat16, stochastic"])
        for name in (TIMED[:2] if args.quick else TIMED)
    ]
    print(f"[{time.perf_counter() - t0:5.0f}s] timing done", flush=True)
    out["rosenbrock"] = rosenbrock(args.seeds, args.rosenbrock_iterations)
    print(f"[{time.perf_counter() - t0:5.0f}s] Rosenbrock done", flush=True)
    out["bowl"] = bowl(args.seeds, args.bowl_steps)
    print(tables(out))
    name = "precond_dtype_quick_cpu.json" if args.quick else "precond_dtype_cpu.json"
    path = args.json or Path(__file__).parent / "results" / name
    path.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {path}; total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
