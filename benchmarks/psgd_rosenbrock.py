"""PSGD on the paper's Rosenbrock problem (Li 2019, Fig. 1), beside psgd_torch and first-order baselines.

Run from the repository root:

    python benchmarks/psgd_rosenbrock.py            # 5 seeds, writes benchmarks/results/psgd_rosenbrock.*
    python benchmarks/psgd_rosenbrock.py --seeds 10

f(θ) = 100(θ₂ − θ₁²)² + (1 − θ₁)² from θ = (−1, 1), float64.  For each method and seed: the first
iteration at which f < 1e-10 (None: not within the budget) and f at the end.

- precondalg `PSGD` Newton type: triangular Q₀ = 0.1·I, lr 0.5, lr_precond 0.2, Hv by autograd with
  v ~ N(0, I) (the paper's setting and its 2019 demo `hello_psgd.py`).
- psgd_torch (the reference package, pinned as a test dependency) on the same problem with the same
  steps: its functional `update_precond_dense` / `precond_grad_dense` in the demo's loop (its step
  normaliser is a spectral-norm lower bound where the paper's is max|R|), and its class `Newton`
  (dense GL(n) Q) with `preconditioner_init_scale=0.1`.  Seeds set torch's global generator, which
  psgd_torch draws v from.
- precondalg `PSGD` Fisher type: λ = 0.1, lr 0.001, lr_precond 0.01 (the paper's setting; it "performs
  poorly", as in the paper).
- GD (0.002), heavy ball (0.9, 0.002) and Nesterov (0.9, 0.001): torch.optim.SGD, the paper's best steps.

Tests assert the Newton bound on the same problem (tests/test_psgd.py); this script measures and reports.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from precondalg.optim import PSGD

RESULTS = Path(__file__).resolve().parent / "results"
F64 = torch.float64


def rosenbrock(x: torch.Tensor) -> torch.Tensor:
    """f = 100(x₂ − x₁²)² + (1 − x₁)²."""
    return 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2


def _start() -> torch.Tensor:
    return torch.tensor([-1.0, 1.0], dtype=F64, requires_grad=True)


def _count(step: Callable[[], float], iterations: int) -> tuple[int | None, float]:
    """Run `step` (which returns f before its update) until f < 1e-10; the iteration and the last f."""
    f = float("nan")
    for i in range(iterations):
        f = step()
        if f < 1e-10:
            return i, f
    return None, f


def precondalg_psgd(seed: int, iterations: int, criterion: str, **options: Any) -> tuple[int | None, float]:
    """precondalg's PSGD with the paper's setting; `options` go to `PSGD` (e.g. ``precond_dtype``)."""
    x = _start()
    if criterion == "newton":
        kwargs = dict(lr=0.5, lr_precond=0.2)
    else:
        kwargs = dict(lr=1e-3, lr_precond=0.01, damping=0.1)
    opt = PSGD(
        [x], preconditioner="triangular", criterion=criterion, init_scale=0.1, seed=seed, **kwargs, **options
    )
    return _count(lambda: float(opt.step(lambda: rosenbrock(x)).detach()), iterations)


def psgd_torch_functional(seed: int, iterations: int) -> tuple[int | None, float]:
    """The 2019 demo's loop with psgd_torch's `update_precond_dense` (Q upper triangular)."""
    from psgd_torch import psgd

    torch.manual_seed(seed)
    x, Q = _start(), 0.1 * torch.eye(2, dtype=F64)

    def step() -> float:
        nonlocal Q
        f = rosenbrock(x)
        (g,) = torch.autograd.grad(f, x, create_graph=True)
        v = torch.randn(2, dtype=F64)
        (hv,) = torch.autograd.grad(g, x, v)
        with torch.no_grad():
            Q = psgd.update_precond_dense(Q, [v], [hv], 0.2)
            (pg,) = psgd.precond_grad_dense(Q, [g.detach()])
            x.sub_(0.5 * pg)
        return float(f.detach())

    return _count(step, iterations)


def psgd_torch_newton_class(seed: int, iterations: int) -> tuple[int | None, float]:
    """psgd_torch's class `Newton` (dense Q, its default '2nd' step normaliser)."""
    from psgd_torch import psgd

    torch.manual_seed(seed)
    x = _start()
    opt = psgd.Newton([x], preconditioner_init_scale=0.1, lr_params=0.5, lr_preconditioner=0.2)
    return _count(lambda: float(opt.step(lambda: rosenbrock(x)).detach()), iterations)


def first_order(lr: float, momentum: float, nesterov: bool, iterations: int) -> tuple[int | None, float]:
    x = _start()
    opt = torch.optim.SGD([x], lr=lr, momentum=momentum, nesterov=nesterov)

    def step() -> float:
        opt.zero_grad()
        f = rosenbrock(x)
        f.backward()
        opt.step()
        return float(f)

    return _count(step, iterations)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=RESULTS / "psgd_rosenbrock")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = range(args.seeds)
    runs: dict[str, list[tuple[int | None, float]]] = {
        "precondalg PSGD Newton (triangular)": [precondalg_psgd(s, args.iterations, "newton") for s in seeds],
        "psgd_torch update_precond_dense (2019 loop)": [
            psgd_torch_functional(s, args.iterations) for s in seeds
        ],
        "psgd_torch Newton class (dense)": [psgd_torch_newton_class(s, args.iterations) for s in seeds],
        "precondalg PSGD Fisher (λ = 0.1)": [precondalg_psgd(s, args.iterations, "fisher") for s in seeds],
        "GD 0.002": [first_order(0.002, 0.0, False, args.iterations)],
        "momentum 0.9, 0.002": [first_order(0.002, 0.9, False, args.iterations)],
        "Nesterov 0.9, 0.001": [first_order(0.001, 0.9, True, args.iterations)],
    }
    rows = []
    print(f"Rosenbrock from (−1, 1), float64, {args.iterations} iterations at most, f < 1e-10 counts")
    print(f"torch {torch.__version__}, {args.seeds} seeds (first-order methods: deterministic, one run)\n")
    print("| method | iterations to f < 1e-10 per seed | median | f at the end (seed 0) |")
    print("| --- | --- | --- | --- |")
    for name, results in runs.items():
        counts = [c for c, _ in results]
        reached = [c for c in counts if c is not None]
        median = statistics.median(reached) if len(reached) == len(counts) else None
        rows.append({"method": name, "iterations": counts, "median": median, "f_end_seed0": results[0][1]})
        shown = ", ".join("—" if c is None else str(c) for c in counts)
        print(f"| {name} | {shown} | {'—' if median is None else median} | {results[0][1]:.3g} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
