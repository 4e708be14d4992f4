"""Batching work across blocks of equal shape: does it pay on this machine?

Run from the repository root:

    OMP_NUM_THREADS=1 python benchmarks/batching.py            # about a minute
    OMP_NUM_THREADS=1 python benchmarks/batching.py --quick

Two kinds of per-block work the engine runs in a Python loop over a param group's blocks, each timed in
three forms on the layer shapes of the benchmark models (B blocks of φ n×n applied to gradients n×k):

1. **Applying P** (a dense φ per block, P·G): a loop of B matrix products; one `torch.bmm` over φ's and
   G's stacked for the call (what batching the engine's blocks costs when φ is stored per block); one
   `torch.bmm` over φ's kept stacked (the best case: φ stored batched), G's stacked for the call.
2. **The meta-optimizer** (Adam on φ's leaves, FOP's and LODO's fitter): one `torch.optim.Adam` per
   block, stepped in a loop (what the engine does: each block is fitted, and rolled back, on its own);
   one Adam (foreach) over every block's φ.

Each figure is the median over interleaved rounds of the mean time of a call (µs), and the ratio to the
loop form in the same round.  Outputs: benchmarks/results/batching_cpu.json and the table on stdout
(copied into docs/performance.md by hand, with the machine, the commit and the date).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

try:  # run as a script, benchmarks/ is on sys.path; as `python -m benchmarks.batching`, the repository root
    import optimizers as common
except ImportError:  # pragma: no cover
    from benchmarks import optimizers as common

SHAPES = {
    "9×9, like the digits CNN's spatial taps": (9, 512, 2),
    "256×256, like the MLP 3×256's input sides": (256, 256, 3),
    "128×128, like the transformer block's input sides": (128, 128, 4),
    "1024×1024, like the MLP 4×1024's input sides": (1024, 1024, 4),
}
"""Per case: B blocks of φ n×n applied to placed gradients n×k, as (n, k, B), shaped like FOP's blocks on
the benchmark models (whose gradients' k differ between layers: a batched product would also need
them padded to one k, which is not timed here)."""


def apply_forms(n: int, k: int, blocks: int) -> dict[str, Callable[[], Any]]:
    """The three forms of applying P to each block's gradient."""
    g = torch.Generator().manual_seed(0)
    phis = [torch.randn(n, n, generator=g) for _ in range(blocks)]
    grads = [torch.randn(n, k, generator=g) for _ in range(blocks)]
    stacked = torch.stack(phis)
    return {
        "loop": lambda: [phi @ x for phi, x in zip(phis, grads)],
        "bmm, stacked per call": lambda: torch.bmm(torch.stack(phis), torch.stack(grads)).unbind(0),
        "bmm, φ kept stacked": lambda: torch.bmm(stacked, torch.stack(grads)).unbind(0),
    }


def adam_forms(n: int, blocks: int) -> dict[str, Callable[[], Any]]:
    """Adam on every block's φ: one optimizer per block, or one for all."""
    g = torch.Generator().manual_seed(1)
    phis = [torch.randn(n, n, generator=g) for _ in range(blocks)]
    for phi in phis:
        phi.grad = torch.randn(n, n, generator=g)
    per_block = [torch.optim.Adam([phi], lr=1e-4, foreach=True) for phi in phis]
    together = torch.optim.Adam([phi.detach().clone() for phi in phis], lr=1e-4, foreach=True)
    for phi, twin in zip(phis, together.param_groups[0]["params"]):
        twin.grad = phi.grad.clone()

    def loop() -> None:
        for opt in per_block:
            opt.step()

    return {"loop": loop, "one Adam (foreach) over all": together.step}


def measure(forms: dict[str, Callable[[], Any]], rounds: int, calls: int) -> dict[str, Any]:
    """Interleaved rounds: per form the median µs per call, and the median same-round ratio to "loop"."""
    for f in forms.values():
        f()
    per_round: dict[str, list[float]] = {name: [] for name in forms}
    for r in range(rounds):
        names = list(forms) if r % 2 == 0 else list(reversed(forms))
        for name in names:
            t0 = time.perf_counter()
            for _ in range(calls):
                forms[name]()
            per_round[name].append((time.perf_counter() - t0) / calls * 1e6)
    loop = per_round["loop"]
    return {
        name: {
            "us": statistics.median(times),
            "over_loop": statistics.median(t / base for t, base in zip(times, loop)),
        }
        for name, times in per_round.items()
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| work | layers (n, k, B) | form | µs per call | / loop |", "| --- | --- | --- | ---: | ---: |"]
    for row in rows:
        for form, r in row["forms"].items():
            lines.append(
                f"| {row['work']} | {row['case']} {tuple(row['shape'])} | {form} | {r['us']:.0f} | "
                f"{r['over_loop']:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two cases, few rounds")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    cases = dict(list(SHAPES.items())[:2]) if args.quick else SHAPES
    rounds = 3 if args.quick else args.rounds
    info = common.machine_info(torch.device("cpu"), git=True)
    print("machine:", common.describe_machine(info), flush=True)
    rows = []
    for case, (n, k, blocks) in cases.items():
        calls = max(2, int(2e6 // (n * n * k * blocks) + 1))
        rows.append({"work": "apply P", "case": case, "shape": (n, k, blocks),
                     "forms": measure(apply_forms(n, k, blocks), rounds, calls)})
        rows.append({"work": "Adam on φ", "case": case, "shape": (n, k, blocks),
                     "forms": measure(adam_forms(n, blocks), rounds, max(2, calls))})
    print(table(rows))
    name = "batching_quick_cpu.json" if args.quick else "batching_cpu.json"
    out = args.json or Path(__file__).parent / "results" / name
    out.write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
