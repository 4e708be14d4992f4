"""Time and memory of LODO's preconditioner G = gram(A) and of its hypergradient VJP as n grows.

Run from the repository root:

    python benchmarks/lodo_scaling.py              # CPU, n = 1e3 … 1e6 (5 to 10 minutes on 2 cores)
    python benchmarks/lodo_scaling.py --quick      # smoke run (seconds); writes lodo_scaling_quick_*
    python benchmarks/lodo_scaling.py --sizes 1e3,1e4,1e5 --rounds 5
    python benchmarks/lodo_scaling.py --device cuda

The structure (Liao et al. 2023, "Learning to Optimize Quasi-Newton Methods", Eq. 2): A = B_N Π_N ⋯ B_1 Π_1 E,
an ñ×n `PermutationNetwork`, and LODO's preconditioner G = lr·gram(A) = lr·EᵀAᵀAE (the lr, one more
scaling, is left out here).  Per n:

- block size k = 4 (the code's default);
- width ñ = ``lodo_width(n, k)``, the official code's rule (the smallest multiple of k above 2n);
- depth N = 2⌈log₂ ñ⌉.  The paper wants the depth "not much larger than log n" (an output's receptive
  field grows exponentially with depth, so about log ñ layers let every input reach every output; its
  representation theorem asks for a depth proportional to log ñ); the factor 2 makes the rule give the
  code's default N = 16 at the paper's n = 100 (ñ = 204, ⌈log₂ 204⌉ = 8).  N = 22 at n = 1e3, 30 at
  1e4, 36 at 1e5, 42 at 1e6.  One G x then costs 2·N·ñ·k ≈ 16·n·log₂(2n) multiply-adds: O(n log n);
- blocks with N(0, 1/k) entries (the values do not change the cost; `permutation_network`'s SVD init
  costs ~14 µs per 4×4 block, minutes at n = 1e6) and the permutations `permutation_network` draws
  (``tuple(torch.randperm(ñ).tolist())`` per layer).

What is timed (one call each; x, u, g of shape (n,), float32 unless --dtype):

- ``apply``: ``gram(A) @ x``: A._mv then A._rmv, what LODO does once per step;
- ``vjp``: ``torch.func.vjp(lambda A: gram(A) @ u, A)`` and its pullback at the cotangent g: the
  generic hypergradient (`precondalg.objectives.Hypergradient` without a closed form), whose leaves
  are the blocks (N, ñ/k, k, k);
- ``vjp_closed``: the closed-form ``hyper_vjp`` of ``precondalg.families.permutation_network_gram``
  (what the optimizer runs), where that family exists, for n ≤ --closed-max (3e5: beyond, its caches
  of Python tuples take gigabytes);
- ``dense``: an n×n dense matvec D @ x, for n ≤ --dense-max (1e4), for contrast.

Protocol (as benchmarks/optimizers.py, docs/benchmarks.md): one torch thread (--threads).  The sizes
are measured one after the other, each freed before the next (so that the largest sets the peak
memory); for each n: the first ``apply`` (which also builds and caches the gather indices) is timed
on its own (``first_apply_s``); then two untimed calls per operation (the first for ``rss_peak``,
the second profiled for ``peak``, see below); then interleaved rounds over the operations, in a
shuffled order per round; in a round each operation runs ``inner`` consecutive calls (``inner``
chosen so that they take about --target seconds), timed together with ``time.perf_counter`` (and
``time.process_time``, which preemption on a shared machine does not inflate).  The rounds are
--rounds, fewer (at least 3) where they would take longer than --size-seconds.  Reported: the median
and IQR over rounds of the time per call, the time per n·log₂n and per multiply-add (2Nñk), and the
log-log slopes of the median times against n (least squares over all n, and between neighbours).
O(n log n) with N ∝ log ñ means the slope of n·log₂n (1.12 over 1e3…1e6), printed with the slope of
the multiply-add count, and a flat time per n·log₂n (slope 0).

Memory: ``peak`` is the most memory torch allocated during one call beyond what it held before (on
the CPU from `torch.profiler` with ``profile_memory=True``: the running sum of its allocation and free
events; on CUDA ``torch.cuda.max_memory_allocated``); for ``vjp`` it holds the saved activations and
the gradient.  What the structure keeps between calls: the N·ñ·k block values (``blocks``, in bytes
and bytes per parameter), the cached int64 gather indices of every permutation and of its inverse
(``index``, 2·N·ñ·8 bytes), and the permutations as Python tuples of ints (``perms``, by
``sys.getsizeof``: 8 bytes a reference and 28 an int above 256, per entry).  ``rss_build`` is the
growth of the process's resident memory from before the permutations were drawn to after the first
apply (all three, and what the C allocator keeps); ``rss_peak`` (Linux) the growth of the resident
high-water mark during one call (reset through /proc/self/clear_refs), a cross-check of ``peak``.

Tests never assert on these numbers; this script only measures and reports.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.func import vjp
from torch.profiler import ProfilerActivity, profile

try:  # run as a script, benchmarks/ is on sys.path; as `python -m benchmarks.lodo_scaling`, the root
    import optimizers as common
except ImportError:  # pragma: no cover
    from benchmarks import optimizers as common

import precondalg as pa
from precondalg import families
from precondalg.structures.permutation import lodo_width

BLOCK = 4
FULL_SIZES = "1e3,3e3,1e4,3e4,1e5,3e5,1e6"
QUICK_SIZES = "1e3,3e3,1e4"
OPS = ("apply", "vjp", "vjp_closed", "dense")


def depth_for(width: int) -> int:
    """N = 2⌈log₂ ñ⌉: 16 at ñ = 204 (n = 100, the code's default), 42 at ñ = 2·10⁶."""
    return 2 * math.ceil(math.log2(width))


# -------------------------------------------------------------------------------------------- memory
def _proc_status(key: str) -> int | None:
    """A ``kB`` line of /proc/self/status (VmRSS, VmHWM) in bytes; None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def rss_bytes() -> int | None:
    return _proc_status("VmRSS")


_HWM_BEFORE_RESETS = [0]
"""The largest resident high-water mark read before `rss_peak_delta` reset it."""


def max_rss_bytes() -> int | None:
    """The process's resident high-water mark since it started (VmHWM, and what it was before each
    reset through clear_refs)."""
    now = _proc_status("VmHWM")
    return None if now is None else max(now, _HWM_BEFORE_RESETS[0])


def release_memory() -> None:
    """Forget the permutation index caches, collect garbage and hand the C allocator's free memory back
    to the system (glibc malloc_trim), so that a size's memory does not outlive it.

    The caches are the `functools.lru_cache`s of the permutation modules: they keep the index tensors
    and the permutation tuples (their keys) of a network alive after the network is gone.
    """
    for name in ("precondalg.structures.permutation", "precondalg.structures._permutations"):
        module = sys.modules.get(name)
        for value in vars(module).values() if module else ():
            if callable(getattr(value, "cache_clear", None)) and hasattr(value, "cache_info"):
                value.cache_clear()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_peak_delta(fn: Callable[[], Any]) -> tuple[int | None, float]:
    """Growth of the resident high-water mark during fn() (Linux: VmHWM, reset by clear_refs 5), and
    fn's wall time."""
    try:
        _HWM_BEFORE_RESETS[0] = max_rss_bytes() or 0
        Path("/proc/self/clear_refs").write_text("5")
        before = rss_bytes()
    except OSError:
        before = None
    t0 = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t0
    after = _proc_status("VmHWM")
    return (None if before is None or after is None else max(0, after - before)), elapsed


def torch_peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """The most memory torch held during fn() beyond what it held before (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
    )
    peak = running = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def perms_bytes(perms: tuple[tuple[int, ...], ...]) -> int:
    """Python bytes of the permutations: the tuples, and one int object per entry above 256 (CPython
    shares the ints up to 256; ``tolist`` makes a new int for every other entry)."""
    width = len(perms[0]) if perms else 0
    return sum(sys.getsizeof(p) for p in perms) + len(perms) * sum(
        sys.getsizeof(j) for j in range(257, width)
    )


# -------------------------------------------------------------------------------------------- cases
@dataclass
class Case:
    """One n: the network, the operations timed, and what was measured."""

    n: int
    width: int
    depth: int
    A: pa.PermutationNetwork
    ops: dict[str, Callable[[], Any]]
    info: dict[str, Any] = field(default_factory=dict)
    inner: dict[str, int] = field(default_factory=dict)
    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    memory: dict[str, dict[str, int | None]] = field(default_factory=dict)


def closed_form_vjp() -> Callable | None:
    """The optimizer's closed-form VJP of φ ↦ gram(A_φ) @ u (``hyper_vjp(A, u, c)``, u and c of shape
    (n, 1)), or None where `precondalg.families` has no ``permutation_network_gram``."""
    family = getattr(families, "permutation_network_gram", None)
    return None if family is None else family().hyper_vjp


def random_network(
    n: int, device: torch.device, dtype: torch.dtype, gen: torch.Generator
) -> tuple[pa.PermutationNetwork, dict[str, float]]:
    """A network of the rule's shape (module docstring), and the seconds its parts took."""
    width = lodo_width(n, BLOCK)
    depth = depth_for(width)
    t0 = time.perf_counter()
    perms = tuple(tuple(torch.randperm(width, generator=gen).tolist()) for _ in range(depth))
    t1 = time.perf_counter()
    blocks = torch.randn(depth, width // BLOCK, BLOCK, BLOCK, generator=gen, dtype=dtype).div_(BLOCK**0.5)
    blocks = blocks.to(device)
    t2 = time.perf_counter()
    A = pa.PermutationNetwork(blocks, perms, n)
    return A, {"draw_perms_s": t1 - t0, "constructor_s": time.perf_counter() - t2}


def build_case(
    n: int, device: torch.device, dtype: torch.dtype, args: argparse.Namespace, log: Callable[[str], None]
) -> Case:
    release_memory()
    rss0 = rss_bytes()
    gen = torch.Generator().manual_seed(args.seed + n)
    A, times = random_network(n, device, dtype, gen)
    width, depth = A.width, A.blocks.shape[0]
    x, u, g = (torch.randn(n, generator=gen, dtype=dtype).to(device) for _ in range(3))
    G = pa.gram(A)
    common.sync(device)
    t0 = time.perf_counter()
    G @ x
    common.sync(device)
    times["first_apply_s"] = time.perf_counter() - t0
    rss1 = rss_bytes()

    ops: dict[str, Callable[[], Any]] = {
        "apply": lambda: G @ x,
        "vjp": lambda: vjp(lambda phi: pa.gram(phi) @ u, A)[1](g),
    }
    closed = closed_form_vjp()
    if closed is not None and n <= args.closed_max:
        U, C = u.unsqueeze(-1), g.unsqueeze(-1)
        ops["vjp_closed"] = lambda: closed(A, U, C)
    if n <= args.dense_max:
        D = torch.randn(n, n, generator=gen, dtype=dtype).div_(n**0.5).to(device)
        ops["dense"] = lambda: D @ x
    state = A.blocks.numel() * A.blocks.element_size()
    index = 2 * depth * width * 8
    pbytes = perms_bytes(A.perms)
    info = {
        "n": n,
        "width": width,
        "depth": depth,
        "k": BLOCK,
        "multiply_adds_apply": G.cost().matvec,  # 2·N·ñ·k
        "state_values": A.blocks.numel(),
        "state_bytes": state,
        "state_bytes_per_param": state / n,
        "index_cache_bytes": index,
        "index_cache_bytes_per_param": index / n,
        "perms_python_bytes": pbytes,
        "perms_python_bytes_per_param": pbytes / n,
        "rss_build_bytes": None if rss0 is None or rss1 is None else rss1 - rss0,
        **times,
    }
    log(
        f"n={n:>8}: ñ={width}, N={depth}; perms drawn in {times['draw_perms_s']:.2f} s, constructor "
        f"{times['constructor_s']:.2f} s, first apply {times['first_apply_s']:.3f} s; blocks "
        f"{state / 2**20:.1f} MiB ({state / n:.0f} B/param)"
    )
    return Case(n, width, depth, A, ops, info)


# -------------------------------------------------------------------------------------------- checks
def sanity_checks(device: torch.device, dtype: torch.dtype, n: int = 300) -> dict[str, float]:
    """Relative errors at one small n (the rule's N): G x against the dense EᵀAᵀAE, and the closed-form
    VJP against torch.func's."""
    A, _ = random_network(n, device, dtype, torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    x, g = (torch.randn(n, generator=gen, dtype=dtype).to(device) for _ in range(2))
    M = A.to_dense()
    ref = M.mT @ (M @ x)
    out = {"n": n, "apply_vs_dense_gram": float((pa.gram(A) @ x - ref).norm() / ref.norm())}
    closed = closed_form_vjp()
    if closed is not None:
        (auto,) = vjp(lambda phi: pa.gram(phi) @ x, A)[1](g)
        mine = closed(A, x.unsqueeze(-1), g.unsqueeze(-1))
        out["vjp_closed_vs_torch_func"] = float((mine.blocks - auto.blocks).norm() / auto.blocks.norm())
    return out


# -------------------------------------------------------------------------------------------- timing
def warm_up(case: Case, device: torch.device, target: float) -> float:
    """Two untimed calls per operation, which measure its memory; sets ``inner``; returns the seconds
    one round will take."""
    round_s = 0.0
    for op, fn in case.ops.items():
        common.sync(device)
        rss_peak, once = rss_peak_delta(lambda fn=fn: (fn(), common.sync(device)))
        peak = torch_peak_bytes(fn, device)
        case.memory[op] = {
            "peak_bytes": peak,
            "rss_peak_delta_bytes": rss_peak if device.type == "cpu" else None,
        }
        case.inner[op] = max(1, min(10_000, round(target / max(once, 1e-9))))
        case.wall[op], case.cpu[op] = [], []
        round_s += case.inner[op] * once
    return round_s


def run_rounds(case: Case, device: torch.device, rounds: int, seed: int) -> None:
    ops = list(case.ops)
    rng = random.Random(seed + case.n)
    for _ in range(rounds):
        rng.shuffle(ops)
        for op in ops:
            fn, inner = case.ops[op], case.inner[op]
            common.sync(device)
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(inner):
                fn()
            common.sync(device)
            case.wall[op].append((time.perf_counter() - w0) / inner)
            case.cpu[op].append((time.process_time() - c0) / inner)


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def summarise(case: Case) -> dict[str, Any]:
    row = dict(case.info)
    nlogn = case.n * math.log2(case.n)
    for op in OPS:
        if op not in case.ops:
            continue
        q1, med, q3 = quartiles(case.wall[op])
        peak = case.memory[op]["peak_bytes"]
        row |= {
            f"{op}_median_s": med,
            f"{op}_q1_s": q1,
            f"{op}_q3_s": q3,
            f"{op}_iqr_s": q3 - q1,
            f"{op}_cpu_median_s": statistics.median(case.cpu[op]),
            f"{op}_ns_per_nlog2n": 1e9 * med / nlogn,
            f"{op}_ns_per_multiply_add": 1e9 * med / case.info["multiply_adds_apply"],
            f"{op}_inner": case.inner[op],
            f"{op}_rounds": len(case.wall[op]),
            f"{op}_peak_bytes": peak,
            f"{op}_peak_bytes_per_param": peak / case.n,
            f"{op}_rss_peak_delta_bytes": case.memory[op]["rss_peak_delta_bytes"],
        }
    return row


def slopes(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Least-squares log-log slopes against n (all n where the series is measured, and neighbours)."""
    series: dict[str, tuple[list[int], list[float]]] = {
        "work (2Nñk)": ([r["n"] for r in rows], [r["multiply_adds_apply"] for r in rows]),
        "n·log2(n)": ([r["n"] for r in rows], [r["n"] * math.log2(r["n"]) for r in rows]),
    }
    for op in OPS:
        for key, name in (
            (f"{op}_median_s", op),
            (f"{op}_cpu_median_s", f"{op} (cpu time)"),
            (f"{op}_ns_per_nlog2n", f"{op} / (n·log2 n)"),
        ):
            have = [r for r in rows if key in r]
            if len(have) >= 2:
                series[name] = ([r["n"] for r in have], [r[key] for r in have])
    out = {}
    for name, (ns, ys) in series.items():
        if len(ns) >= 2:
            out[name] = {
                "n": ns,
                "slope": common.loglog_slope(ns, ys),
                "local": [common.loglog_slope(ns[i : i + 2], ys[i : i + 2]) for i in range(len(ns) - 1)],
            }
    return out


# -------------------------------------------------------------------------------------------- output
def table(rows: list[dict[str, Any]]) -> str:
    ops = [op for op in OPS if any(f"{op}_median_s" in r for r in rows)]
    head = f"{'n':>8} {'ñ':>8} {'N':>3} {'2Nñk':>10} {'R':>2} " + " ".join(
        f"{op + ' ms [IQR]':>25} {'ns/nlog2n':>9}" for op in ops
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        line = (
            f"{r['n']:>8} {r['width']:>8} {r['depth']:>3} {r['multiply_adds_apply']:>10.3g} "
            f"{r['apply_rounds']:>2} "
        )
        cells = []
        for op in ops:
            if f"{op}_median_s" not in r:
                cells.append(f"{'—':>25} {'':>9}")
                continue
            med, iqr = r[f"{op}_median_s"], r[f"{op}_iqr_s"]
            cells.append(f"{1e3 * med:>14.3f} [{1e3 * iqr:>8.3f}] {r[f'{op}_ns_per_nlog2n']:>9.2f}")
        lines.append(line + " ".join(cells))
    return "\n".join(lines)


def cpu_table(rows: list[dict[str, Any]]) -> str:
    """Median process CPU time per call (``time.process_time``), which preemption does not inflate."""
    ops = [op for op in OPS if any(f"{op}_cpu_median_s" in r for r in rows)]
    head = f"{'n':>8} " + " ".join(f"{op + ' cpu ms':>16} {'ns/nlog2n':>9}" for op in ops)
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = []
        for op in ops:
            if f"{op}_cpu_median_s" not in r:
                cells.append(f"{'—':>16} {'':>9}")
                continue
            cpu = r[f"{op}_cpu_median_s"]
            cells.append(f"{1e3 * cpu:>16.3f} {1e9 * cpu / (r['n'] * math.log2(r['n'])):>9.2f}")
        lines.append(f"{r['n']:>8} " + " ".join(cells))
    return "\n".join(lines)


def memory_table(rows: list[dict[str, Any]]) -> str:
    ops = [op for op in OPS if any(f"{op}_peak_bytes" in r for r in rows)]
    mib = 2**20
    head = (
        f"{'n':>8} {'blocks MiB':>10} {'B/param':>7} {'index MiB':>9} {'perms MiB':>9} {'B/param':>7} "
        f"{'RSS build MiB':>13} " + " ".join(f"{'peak ' + op + ' MiB':>19} {'B/param':>7}" for op in ops)
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        rss = r["rss_build_bytes"]
        line = (
            f"{r['n']:>8} {r['state_bytes'] / mib:>10.2f} {r['state_bytes_per_param']:>7.0f} "
            f"{r['index_cache_bytes'] / mib:>9.2f} {r['perms_python_bytes'] / mib:>9.2f} "
            f"{r['perms_python_bytes_per_param']:>7.0f} {'—' if rss is None else f'{rss / mib:.1f}':>13} "
        )
        cells = []
        for op in ops:
            if f"{op}_peak_bytes" not in r:
                cells.append(f"{'—':>19} {'':>7}")
                continue
            cells.append(f"{r[f'{op}_peak_bytes'] / mib:>19.2f} {r[f'{op}_peak_bytes_per_param']:>7.0f}")
        lines.append(line + " ".join(cells))
    return "\n".join(lines)


def slope_lines(fit: dict[str, Any]) -> str:
    lines = []
    for name, s in fit.items():
        local = ", ".join(f"{v:.2f}" for v in s["local"])
        span = f"n {s['n'][0]:g}…{s['n'][-1]:g}"
        lines.append(f"  {name:>26}: {s['slope']:6.3f}  ({span}; between neighbours: {local})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument(
        "--sizes", default=None, help=f"comma-separated n (default {FULL_SIZES}; --quick {QUICK_SIZES})"
    )
    ap.add_argument(
        "--rounds", type=int, default=None, help="interleaved timed rounds per n (default 7; --quick 3)"
    )
    ap.add_argument(
        "--size-seconds",
        type=float,
        default=100.0,
        help="fewer rounds (at least 3) where they would take longer",
    )
    ap.add_argument(
        "--target", type=float, default=None, help="seconds per timed batch of calls (0.05; --quick 0.01)"
    )
    ap.add_argument("--dense-max", type=float, default=1e4, help="largest n of the dense n×n reference (1e4)")
    ap.add_argument("--closed-max", type=float, default=3e5, help="largest n of the closed-form VJP (3e5)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--quick", action="store_true", help=f"smoke run: n = {QUICK_SIZES}, 3 rounds")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: 1 on cpu; 0 = torch's default)",
    )
    ap.add_argument("--no-git", action="store_true", help="do not run git to record the commit")
    ap.add_argument(
        "--json", type=Path, default=None, help="default benchmarks/results/lodo_scaling_<device>.json"
    )
    ap.add_argument("--csv", type=Path, default=None, help="default: the JSON path with .csv")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    args.sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)
    args.rounds = args.rounds or (3 if args.quick else 7)
    args.target = args.target or (0.01 if args.quick else 0.05)
    sizes = sorted({int(float(s)) for s in args.sizes.split(",") if s})
    dtype = getattr(torch, args.dtype)

    run = common.start_run(args, "lodo_scaling_quick" if args.quick else "lodo_scaling", git=not args.no_git)
    if run is None:
        return 2
    device, log, info = run.device, run.log, run.info
    log(
        f"k = {BLOCK}, ñ = lodo_width(n, k), N = 2⌈log₂ ñ⌉; sizes {sizes}; up to {args.rounds} rounds; "
        f"dtype {args.dtype}; closed-form VJP {'found' if closed_form_vjp() else 'absent'}"
    )
    checks = sanity_checks(device, dtype)
    log(
        "sanity checks (relative errors): " + ", ".join(f"{k} {v:.2e}" for k, v in checks.items() if k != "n")
    )
    rows = []
    for n in sizes:
        case = build_case(n, device, dtype, args, log)
        round_s = warm_up(case, device, args.target)
        rounds = (
            args.rounds
            if round_s * args.rounds <= args.size_seconds
            else max(3, int(args.size_seconds / round_s))
        )
        run_rounds(case, device, rounds, args.seed)
        rows.append(summarise(case))
        r = rows[-1]
        log(
            f"n={n:>8}: {rounds} rounds of ~{round_s:.2f} s; "
            + ", ".join(f"{op} {1e3 * r[f'{op}_median_s']:.3f} ms" for op in OPS if f"{op}_median_s" in r)
        )
        del case
    release_memory()
    fit = slopes(rows)

    print()
    print("Machine: " + common.describe_machine(info))
    print(f"Date: {info['date']}")
    print(
        f"LODO's G = gram(A), A = B_N Π_N ⋯ B_1 Π_1 E: k = {BLOCK}, ñ = lodo_width(n, k), N = 2⌈log₂ ñ⌉; "
        f"{args.dtype}.  Time per call: median [IQR] over R rounds, operations interleaved."
    )
    print()
    print(table(rows))
    print()
    print(
        "CPU time per call (median over the rounds; preemption on a shared machine inflates wall time only):"
    )
    print(cpu_table(rows))
    print()
    print("Log-log slopes against n (O(n log n) with N ∝ log ñ: the slope of n·log2(n); 0 per n·log₂n):")
    print(slope_lines(fit))
    print()
    print(
        "Memory: blocks = N·ñ·k values (the learned state); index = cached int64 gather indices (forward "
        "+ inverse);\nperms = the Python tuples; peak = torch's allocations during one call, beyond those "
        "before it."
    )
    print(memory_table(rows))
    print()
    peak = max_rss_bytes()
    print(
        f"Total time {run.elapsed():.1f} s" + (f"; process peak RSS {peak / 2**30:.2f} GiB" if peak else "")
    )

    out = {
        "machine": info,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "threads": torch.get_num_threads(),
        "depth_rule": "N = 2*ceil(log2(width)); width = lodo_width(n, 4); k = 4",
        "sanity_checks": checks,
        "rows": rows,
        "slopes": fit,
        "total_s": run.elapsed(),
        "max_rss_bytes": max_rss_bytes(),
    }
    run.json_path.write_text(json.dumps(out, indent=2))
    common.write_csv(run.csv_path, rows)
    print(f"Wrote {run.json_path} and {run.csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
