"""Step time and state memory of PSGD-Kron (whitening criterion): precondalg against its peers, side by side.

Run from the repository root:

    python benchmarks/psgd.py                  # CPU, default rounds (minutes); writes benchmarks/results/
    python benchmarks/psgd.py --quick          # smoke run (seconds)
    python benchmarks/psgd.py --profile        # also: where precondalg's step spends its time (MLP 3x256)
    python benchmarks/psgd.py --heavyball-compile default   # add heavyball under torch.compile (slow start)

The methods, in one process, on one model copy each (same initial weights, same batches):

- precondalg PSGD-Kron: ``precondalg.optim.PSGD(lr=1e-3, preconditioner="kron", criterion="fisher",
  init_scale=1, lr_precond=0.1)``: a triangular factor on every axis longer than 1 of every tensor,
  vectors included (psgd_torch's rule with max_skew inf; a diagonal one on axes of size 1), Fisher
  criterion without damping, Q fitted every step, no momentum.
- psgd_torch Kron: ``psgd_torch.psgd.Kron(preconditioner_type="whitening", lr_params=1e-3,
  preconditioner_update_probability=1, preconditioner_init_scale=1, lr_preconditioner=0.1)``.
- heavyball PSGDKron: ``heavyball.PSGDKron(lr=1e-3, preconditioner_update_probability=1.0,
  precond_init_scale=1, precond_lr=0.1)``, otherwise heavyball's defaults (momentum 0.9 fed to the
  preconditioner, trust-region update clipping); eager (``heavyball.utils.compile_mode = None`` around
  its steps) unless ``--heavyball-compile MODE`` adds the compiled variant too.

  With ``--structure match`` (default) the peers' Q factors are shaped as precondalg's: psgd_torch with
  ``preconditioner_max_skew=inf`` (triangular factors on every axis longer than 1) and heavyball with
  ``min_ndim_triangular=1`` (triangular Qs on vectors too); conv kernels get one factor per axis from
  all three (heavyball none on an axis of size 1, the others a diagonal one).  ``--structure
  defaults`` keeps each library's defaults (psgd_torch max_skew 10, heavyball min_ndim_triangular 2).
  The factors used are printed.
- Adam: ``torch.optim.Adam(lr=1e-3, foreach=True)``, the baseline.

Step conventions: precondalg and psgd_torch take ``opt.step(closure)`` with a closure that returns the
loss without calling backward (they differentiate it themselves); Adam and heavyball (whose closure must
call backward) take zero_grad + loss.backward() + opt.step().

Protocol (as benchmarks/optimizers.py, docs/benchmarks.md): one torch thread, untimed warm-up, then
interleaved rounds; in round k the methods run in the order rotated by k, each ``--steps`` consecutive
training steps timed with ``time.perf_counter``.  A round's figure is the median over its steps; a
method's ratio to Adam is the median over rounds of (method / Adam in the same round), with the IQR.

- train step: forward + backward + optimizer, as above (for the closure methods: ``opt.step(closure)``).
  Besides the wall-clock ratio, the ratio of process CPU time (``time.process_time``) is reported: on a
  shared machine preemption inflates wall time, not CPU time.
- optimizer step alone: measured directly (around ``opt.step()``) for Adam and heavyball; for the
  closure methods, whose backward runs inside ``step``, estimated as the train step minus the round's
  median of a forward + ``torch.autograd.grad`` probe (the same work their ``step`` does before
  optimizing), run on its own model copy inside the rotation.  The same estimate is also recorded for
  Adam and heavyball (``opt_est_*``), as a check of the subtraction.
- state: bytes of the optimizer's state per model parameter (each storage once): precondalg: its
  ``state_dict()`` (φ = the preconditioner leaves, the fitter's state, the cache, counters, the
  generator), psgd_torch: the Q tensors of ``_Qs_exprs`` and the momentum buffers, heavyball: every
  tensor in ``opt.state``; Adam: 8 B/param.  "precond" is the preconditioner's share (φ or Q).

Tests never assert on these numbers; this script only measures and reports.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import io
import json
import math
import pstats
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

try:  # run as a script, benchmarks/ is on sys.path; as `python -m benchmarks.psgd`, the repository root
    import models
    import optimizers as common
except ImportError:  # pragma: no cover
    from benchmarks import models
    from benchmarks import optimizers as common

from precondalg.optim import PSGD

LR_PSGD = 1e-3  # parameter step for the whitening (Fisher) criterion: psgd_torch's default for it
LR_PRECOND = 0.1
INIT_SCALE = 1.0
LR_ADAM = common.LR_ADAM
ADAM = "Adam"
PROBE = "(forward+backward probe)"
MODELS = ("mlp3x256", "digits-mlp", "digits-cnn")
"""The models of this script (`models.MODELS`)."""


# --------------------------------------------------------------------------------------- optimizers
def make_precondalg(params, probability: float = 1.0) -> tuple[torch.optim.Optimizer, str]:
    """precondalg's PSGD-Kron, the preset (see the module docstring), Q fitted with `probability` at
    each step, and its description."""
    opt = PSGD(
        params,
        LR_PSGD,
        preconditioner="kron",
        criterion="fisher",
        init_scale=INIT_SCALE,
        lr_precond=LR_PRECOND,
        update_probability=probability,
    )
    return opt, (
        f"precondalg.optim.PSGD(preconditioner='kron', criterion='fisher', update_probability={probability})"
    )


def make_psgd_torch(params, structure: str, probability: float = 1.0) -> tuple[Any, str]:
    from psgd_torch.psgd import Kron

    skew = math.inf if structure == "match" else 10.0  # precondalg's max_skew default is inf
    opt = Kron(
        params,
        preconditioner_max_skew=skew,
        preconditioner_type="whitening",
        preconditioner_update_probability=probability,
        preconditioner_init_scale=INIT_SCALE,
        lr_params=LR_PSGD,
        lr_preconditioner=LR_PRECOND,
    )
    return opt, f"psgd_torch.psgd.Kron (whitening; structure {structure!r}; update probability {probability})"


def make_heavyball(params, structure: str, probability: float = 1.0) -> tuple[torch.optim.Optimizer, str]:
    import heavyball

    # heavyball gives tensors of fewer than min_ndim_triangular dims (default 2: vectors) diagonal Qs;
    # precondalg's preset gives vectors a triangular one.
    ndim = 1 if structure == "match" else 2
    opt = heavyball.PSGDKron(
        params,
        lr=LR_PSGD,
        preconditioner_update_probability=probability,
        precond_init_scale=INIT_SCALE,
        precond_lr=LR_PRECOND,
        min_ndim_triangular=ndim,
    )
    return opt, (
        f"heavyball.PSGDKron (preconditioner_update_probability={probability}, min_ndim_triangular={ndim})"
    )


@contextlib.contextmanager
def heavyball_compile(mode: str | None) -> Iterator[None]:
    """heavyball's compile switch is a module global read at every call: set it around its own steps."""
    import heavyball.utils as hbu

    saved = hbu.compile_mode
    hbu.compile_mode = mode
    try:
        yield
    finally:
        hbu.compile_mode = saved


@dataclass
class Method:
    name: str
    make: Callable[[Any], tuple[Any, str]]
    convention: str  # "closure": opt.step(closure) without backward; "backward": torch.optim's
    library: str
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


def methods(args: argparse.Namespace) -> tuple[list[Method], list[str]]:
    """The methods available here, and a note for each peer that is not installed."""
    out = [
        Method(
            ADAM,
            lambda p: (torch.optim.Adam(p, lr=LR_ADAM, foreach=True), "torch.optim.Adam(foreach=True)"),
            "backward",
            "torch",
        ),
        Method("precondalg PSGD-Kron", make_precondalg, "closure", "precondalg"),
    ]
    missing = []
    try:
        import psgd_torch  # noqa: F401

        out.append(
            Method(
                "psgd_torch Kron",
                lambda p: make_psgd_torch(p, args.structure),
                "closure",
                "psgd_torch",
            )
        )
    except ImportError:
        missing.append("psgd_torch is not installed: pip install psgd-torch")
    try:
        import heavyball  # noqa: F401

        out.append(
            Method(
                "heavyball PSGDKron (eager)",
                lambda p: make_heavyball(p, args.structure),
                "backward",
                "heavyball",
                lambda: heavyball_compile(None),
            )
        )
        if args.heavyball_compile:
            mode = args.heavyball_compile
            out.append(
                Method(
                    f"heavyball PSGDKron (compiled, {mode})",
                    lambda p: make_heavyball(p, args.structure),
                    "backward",
                    "heavyball",
                    lambda: heavyball_compile(mode),
                )
            )
    except ImportError:
        missing.append("heavyball is not installed: pip install heavyball")
    return out, missing


# --------------------------------------------------------------------------------------------- memory
def state_memory(opt: Any, library: str) -> dict[str, int]:
    """Bytes of the optimizer's state: 'total' and the preconditioner's share 'precond' (storages once):
    psgd_torch's and heavyball's from their own attributes, any other optimizer's from its
    ``state_dict()`` (`state_bytes`: precondalg, torch.optim, pytorch_optimizer)."""
    seen: set = set()
    if library not in ("psgd_torch", "heavyball"):
        parts = common.state_bytes(opt)
        return {**parts, "precond": parts["phi"]}
    if library == "psgd_torch":
        qs = [Q for Q, _ in (opt._Qs_exprs or [])]
        precond = common.storage_bytes(common.tensors_in(qs), seen)
        rest = common.storage_bytes(common.tensors_in(list(opt._ms or [])), seen)
        return {"precond": precond, "momentum": rest, "total": precond + rest}
    # heavyball: nested per-parameter dicts; its Q factors (and their caches) sit under keys "..._Q_...".
    precond = rest = 0
    for st in opt.state.values():
        for inner in st.values() if isinstance(st, dict) else [st]:
            items = inner.items() if isinstance(inner, dict) else [("", inner)]
            for key, value in items:
                n = common.storage_bytes(common.tensors_in(value), seen)
                if "_Q_" in str(key) or str(key).endswith("_Q"):
                    precond += n
                else:
                    rest += n
    return {"precond": precond, "other": rest, "total": precond + rest}


def structure_summary(opt: Any, library: str) -> str:
    """The preconditioner's factors, counted: e.g. "tri 256 x6, tri 10 x1, diag 256 x3"."""
    sizes: Counter = Counter()
    try:
        if library == "precondalg":
            for st in opt.state.values():
                for leaf in st.get("preconditioner", {}).get("phi", []):
                    if leaf.ndim == 2:
                        sizes["tri" if torch.equal(leaf, leaf.triu()) else "dense", leaf.shape[0]] += 1
                    elif leaf.ndim == 1:
                        sizes["diag", leaf.shape[0]] += 1
                    else:
                        sizes["scalar", 1] += 1
        elif library == "psgd_torch":
            for Q, _ in opt._Qs_exprs:
                for q in Q:
                    sizes["tri" if q.ndim == 2 else "diag", q.shape[0] if q.ndim else 1] += 1
        elif library == "heavyball":
            for st in opt.state.values():
                for inner in st.values():
                    for key, value in inner.items():
                        if "_Q_" in key and "cache" not in key and isinstance(value, list):
                            for meta, t in value:  # (None, diagonal) or (shape, triangle as a line)
                                key = ("diag", t.shape[-1]) if meta is None else ("tri", meta[-1])
                                sizes[key] += 1
        else:
            return "-"
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        return f"? ({type(err).__name__})"
    ordered = sorted(sizes.items(), key=lambda kv: (kv[0][0], -kv[0][1]))
    return ", ".join(f"{kind} {n} x{count}" for (kind, n), count in ordered)


# --------------------------------------------------------------------------------------------- timing
@dataclass
class PSGDRunner(common.Runner):
    """benchmarks/optimizers.py's Runner, with PSGD's closure convention and a per-method context."""

    convention: str = "backward"
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    library: str = "torch"
    implementation: str = ""

    def train_step(self, device: torch.device) -> tuple[float, float]:
        """One training step: (whole step seconds, optimizer step seconds, NaN where not separable)."""
        with self.context():
            if self.convention == "backward":
                return super().train_step(device)
            x, y = self.batches[self.step_index % len(self.batches)]
            self.step_index += 1

            def closure() -> torch.Tensor:
                return nn.functional.cross_entropy(self.model(x), y)

            common.sync(device)
            t0 = time.perf_counter()
            loss = self.opt.step(closure)
            common.sync(device)
            t1 = time.perf_counter()
            self.last_loss = float(loss.detach())
            return t1 - t0, math.nan


@dataclass
class ProbeRunner(PSGDRunner):
    """forward + torch.autograd.grad on its own model copy: what a closure method's step does before it
    optimizes (no parameter changes)."""

    def train_step(self, device: torch.device) -> tuple[float, float]:
        x, y = self.batches[self.step_index % len(self.batches)]
        self.step_index += 1
        params = [p for p in self.model.parameters() if p.requires_grad]
        common.sync(device)
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(self.model(x), y)
        torch.autograd.grad(loss, params)
        common.sync(device)
        t1 = time.perf_counter()
        self.last_loss = float(loss.detach())
        return t1 - t0, math.nan


def build_runners(
    kind: str, device: torch.device, batches: list, reference: nn.Module, chosen: list[Method]
) -> list[PSGDRunner]:
    runners: list[PSGDRunner] = []
    for m in chosen:
        model = copy.deepcopy(reference)
        opt, implementation = m.make(model.parameters())
        runners.append(
            PSGDRunner(
                m.name,
                model,
                opt,
                batches,
                convention=m.convention,
                context=m.context,
                library=m.library,
                implementation=implementation,
            )
        )
    probe = copy.deepcopy(reference)
    runners.append(ProbeRunner(PROBE, probe, torch.optim.SGD(probe.parameters(), lr=0.0), batches))
    return runners


def bench_model(
    kind: str,
    device: torch.device,
    chosen: list[Method],
    args: argparse.Namespace,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    n_batches = max(64, args.warmup + args.repeats * args.steps + 1)
    reference, batches = models.model_and_batches(kind, device, n_batches, args.seed)
    n_params = sum(p.numel() for p in reference.parameters())
    runners = build_runners(kind, device, batches, reference, chosen)
    log(f"[{kind}] {n_params} parameters; warm-up {args.warmup} steps per method")
    for r in runners:
        log(f"[{kind}]   warm-up {r.name}: {r.warm_up(device, args.warmup):.1f} s")
    common.run_rounds(runners, device, args.repeats, args.steps, log, kind, order="rotate")

    adam = next(r for r in runners if r.name == ADAM)
    probe = next(r for r in runners if r.name == PROBE).rounds["train"]
    probe_cpu = next(r for r in runners if r.name == PROBE).rounds["cpu"]
    records = []
    for r in runners:
        if r.name == PROBE:
            continue
        train, direct = r.rounds["train"], r.rounds["opt"]
        estimated = [t - f for t, f in zip(train, probe)]
        opt = estimated if r.convention == "closure" else direct
        mem = state_memory(r.opt, r.library)
        rec = {
            "model": kind,
            "method": r.name,
            "library": r.library,
            "implementation": r.implementation,
            "convention": r.convention,
            "n_params": n_params,
            "train_step_ms": 1e3 * statistics.median(train),
            "opt_step_ms": 1e3 * statistics.median(opt),
            "opt_step_how": "train - probe" if r.convention == "closure" else "direct",
            "train_vs_adam": common.iqr([a / b for a, b in zip(train, adam.rounds["train"])]),
            "opt_vs_adam": common.iqr([a / b for a, b in zip(opt, adam.rounds["opt"])]),
            "train_cpu_ms": 1e3 * statistics.median(r.rounds["cpu"]),
            "train_cpu_vs_adam": common.iqr([a / b for a, b in zip(r.rounds["cpu"], adam.rounds["cpu"])]),
            "opt_cpu_est_ms": 1e3 * statistics.median([t - f for t, f in zip(r.rounds["cpu"], probe_cpu)]),
            "opt_est_ms": 1e3 * statistics.median(estimated),
            "opt_est_vs_adam": common.iqr([a / b for a, b in zip(estimated, adam.rounds["opt"])]),
            "probe_fwd_bwd_ms": 1e3 * statistics.median(probe),
            "state_bytes": mem,
            "state_bytes_per_param": mem["total"] / n_params,
            "precond_bytes_per_param": mem["precond"] / n_params,
            "structure": structure_summary(r.opt, r.library),
            "final_loss": r.last_loss,
            "steps_taken": r.step_index,
        }
        if hasattr(r.opt, "skip_counts"):
            counts = r.opt.skip_counts()
            rec["skipped_steps"] = sum(c["skipped"] for c in counts)
            rec["meta_skipped"] = sum(c["meta_skipped"] for c in counts)
        records.append(rec)
    adam_bytes = next(rec for rec in records if rec["method"] == ADAM)["state_bytes_per_param"]
    for rec in records:
        rec["state_vs_adam"] = rec["state_bytes_per_param"] / adam_bytes
    return records


# -------------------------------------------------------------------------------------------- profile
def _aten_counts(prof: Any, steps: int) -> dict[str, float]:
    """aten ops per step: every aten event, and the top-level ones (no aten op above them)."""
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    top = 0
    for e in events:
        parent = e.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        top += parent is None
    return {"aten_ops_per_step": len(events) / steps, "top_level_aten_ops_per_step": top / steps}


def step_phases(prof: cProfile.Profile, steps: int) -> str:
    """The cumulative time of each function that `Preconditioned.step` calls (list comprehensions
    expanded to what they call), per step, from cProfile's caller records."""
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tt, ct, {caller: (cc, nc, tt, ct)})}
    roots = [k for k in stats if k[0].endswith("preconditioned.py") and k[2] == "step"]
    if not roots:
        return "(Preconditioned.step not found in the profile)\n"
    total = sum(stats[k][3] for k in roots)

    def callees(parents: list) -> list[tuple[tuple, float, int]]:
        out = []
        for key, (_, _, _, _, callers) in stats.items():
            ct = sum(callers[c][3] for c in parents if c in callers)
            nc = sum(callers[c][1] for c in parents if c in callers)
            if ct > 0 or nc > 0:
                out.append((key, ct, nc))
        return sorted(out, key=lambda kv: -kv[1])

    lines = ["== phases of Preconditioned.step: cumulative ms per step (share of step; calls per step)"]
    lines.append(f"{'Preconditioned.step':<72} {1e3 * total / steps:8.2f} ms  100.0%")

    def label(key: tuple) -> str:
        return f"{Path(key[0]).name}:{key[1]}({key[2]})"

    def walk(parents: list, depth: int, indent: str, bound: float = math.inf) -> None:
        for key, ct, nc in callees(parents):
            if ct / total < (0.005 if depth == 0 else 0.02) or ct > bound * 1.001:  # > parent: recursion
                continue
            if key[2].startswith("<"):  # a comprehension: show what it calls, at this level
                walk([key], depth, indent, ct)
                continue
            name = f"{indent}{label(key)}"
            lines.append(
                f"{name:<72} {1e3 * ct / steps:8.2f} ms  {100 * ct / total:5.1f}%  ({nc / steps:g} calls)"
            )
            if depth < 2 and ct / total >= 0.05:
                walk([key], depth + 1, indent + "    ", ct)

    walk(roots, 0, "  ")
    return "\n".join(lines) + "\n\n"


def profile(
    device: torch.device, chosen: list[Method], args: argparse.Namespace, log: Callable[[str], None]
) -> dict:
    """On the MLP 3x256: cProfile of precondalg's step (top 25 by cumulative and by own time), and with
    torch.profiler the aten ops per step of every method and of the forward+backward probe, and the
    aten ops with the largest self time in precondalg's and psgd_torch's steps."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    steps, warm = args.profile_steps, 10
    reference, batches = models.model_and_batches("mlp3x256", device, 64, args.seed)
    runners = build_runners("mlp3x256", device, batches, reference, chosen)
    for r in runners:
        for _ in range(warm):
            r.train_step(device)
    text = io.StringIO()
    out: dict[str, Any] = {"model": "mlp3x256", "steps": steps}

    pre = next(r for r in runners if r.library == "precondalg")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        pre.train_step(device)
    common.sync(device)
    prof.disable()
    text.write(step_phases(prof, steps))
    for order in ("cumulative", "tottime"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(order).print_stats(25)
        text.write(
            f"== cProfile, {pre.name} ({pre.implementation}), {steps} training steps "
            f"(opt.step(closure)), top 25 by {order}\n{buf.getvalue()}\n"
        )
    out["cprofile_cumulative_top25"] = text.getvalue()

    counts = {}
    for r in runners:
        with torch_profile(activities=[ProfilerActivity.CPU]) as tp:
            for _ in range(steps):
                r.train_step(device)
        counts[r.name] = _aten_counts(tp, steps)
        if r.library in ("precondalg", "psgd_torch"):
            for order, what in (("self_cpu_time_total", "self CPU time"), ("count", "number of calls")):
                table = tp.key_averages().table(sort_by=order, row_limit=20)
                text.write(f"== torch.profiler, {r.name}, {steps} training steps, top 20 ops by {what}\n")
                text.write(table + "\n")
    probe = counts[PROBE]
    text.write("== aten ops per training step (torch.profiler; optimizer = step minus the fwd+bwd probe)\n")
    text.write(f"{'method':<34} {'all aten/step':>14} {'top-level/step':>15} {'optimizer top-level':>20}\n")
    for name, c in counts.items():
        opt_top = c["top_level_aten_ops_per_step"] - probe["top_level_aten_ops_per_step"]
        c["optimizer_top_level_aten_ops_per_step"] = opt_top if name != PROBE else 0.0
        text.write(
            f"{name:<34} {c['aten_ops_per_step']:14.0f} {c['top_level_aten_ops_per_step']:15.0f} "
            f"{c['optimizer_top_level_aten_ops_per_step']:20.0f}\n"
        )
    out["aten_counts"] = counts
    out["text"] = text.getvalue()
    log("[profile] done")
    return out


# ---------------------------------------------------------------------------------------------- output
def table(records: list[dict[str, Any]]) -> str:
    head = (
        f"{'model':<10} {'method':<27} {'train ms':>8} {'train/Adam [IQR]':>19} {'CPU-time':>8} "
        f"{'opt ms':>7} {'opt/Adam [IQR]':>22} {'how':>6} {'B/param':>7} {'precond':>7} {'vs Adam':>7} "
        f"{'loss':>6}"
    )
    lines = [head, "-" * len(head)]
    for r in records:
        lines.append(
            f"{r['model']:<10} {r['method'][:27]:<27} {r['train_step_ms']:8.2f} "
            f"{common.fmt_ratio(r['train_vs_adam']):>19} {r['train_cpu_vs_adam']['median']:8.2f} "
            f"{r['opt_step_ms']:7.2f} {common.fmt_ratio(r['opt_vs_adam']):>22} "
            f"{'est' if r['opt_step_how'] != 'direct' else 'direct':>6} {r['state_bytes_per_param']:7.2f} "
            f"{r['precond_bytes_per_param']:7.2f} {r['state_vs_adam']:7.2f} {r['final_loss']:6.3f}"
        )
    return "\n".join(lines)


def versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in ("torch", "precondalg", "psgd_torch", "heavyball", "opt_einsum", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    ap.add_argument("--repeats", type=int, default=60, help="interleaved timed rounds per model (default 60)")
    ap.add_argument("--steps", type=int, default=5, help="timed training steps per method per round (5)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps per method before timing (10)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 rounds of 2 steps, warm-up 2")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1; 0 = torch's)")
    ap.add_argument(
        "--structure",
        default="match",
        choices=["match", "defaults"],
        help="the peers' Q factors: 'match' precondalg's (default; see the module docstring) or each "
        "library's defaults (psgd_torch max_skew 10, heavyball min_ndim_triangular 2)",
    )
    ap.add_argument(
        "--heavyball-compile",
        default=None,
        metavar="MODE",
        help="also time heavyball under torch.compile with this mode ('default', "
        "'max-autotune-no-cudagraphs', ...); compiling takes about a minute per model on a CPU",
    )
    ap.add_argument("--profile", action="store_true", help="profile the steps on the MLP 3x256 (profile())")
    ap.add_argument("--profile-steps", type=int, default=None, help="steps profiled (20; 3 with --quick)")
    ap.add_argument("--no-git", action="store_true", help="do not run git to record the commit")
    ap.add_argument("--json", type=Path, default=None, help="default benchmarks/results/psgd_<device>.json")
    ap.add_argument("--csv", type=Path, default=None, help="default: the JSON path with .csv")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.repeats, args.steps, args.warmup = 3, 2, 2
    if args.profile_steps is None:
        args.profile_steps = 3 if args.quick else 20

    run = common.start_run(args, "psgd", git=not args.no_git)
    if run is None:
        return 2
    device, log, info = run.device, run.log, run.info
    chosen, missing = methods(args)
    for note in missing:
        log("skipped: " + note)
    kinds = [k for k in args.models.split(",") if k]
    unknown = [k for k in kinds if k not in MODELS]
    if unknown:
        print(f"--models: unknown {unknown}; choose from {list(MODELS)}", file=sys.stderr)
        return 2
    records = []
    for kind in kinds:
        records += bench_model(kind, device, chosen, args, log)
    implementation = next(r["implementation"] for r in records if r["library"] == "precondalg")
    prof = profile(device, chosen, args, log) if args.profile else None
    wall = run.elapsed()

    print()
    print("Machine: " + common.describe_machine(info))
    print("Versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    print(f"precondalg: {implementation}")
    print(
        f"Ratios to Adam: median over {args.repeats} interleaved rounds (order rotated) of (method / Adam "
        f"in the same round) [IQR]; each round = median of {args.steps} steps; warm-up {args.warmup} steps "
        "excluded. opt ms: 'direct' = around opt.step(); 'est' = train step minus the round's "
        "forward+autograd.grad probe (the closure methods' backward runs inside step). B/param: optimizer "
        "state bytes per model parameter ('precond': Q/phi only). CPU-time: the train/Adam ratio of process "
        "CPU time (median over rounds), which preemption on a shared machine does not inflate."
    )
    print()
    print(table(records))
    print()
    print("Preconditioner factors (kind size xcount):")
    for r in records:
        if r["library"] != "torch":
            print(f"  {r['model']:<10} {r['method']:<30} {r['structure']}")
    if prof is not None:
        print()
        print(prof["text"])
    print(f"Total time {wall:.1f} s")

    out = {
        "machine": info,
        "versions": versions(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "threads": torch.get_num_threads(),
        "hyperparameters": {
            "lr_psgd": LR_PSGD,
            "lr_precond": LR_PRECOND,
            "init_scale": INIT_SCALE,
            "lr_adam": LR_ADAM,
            "batch": models.BATCH,
        },
        "models": {k: models.MODELS[k].description for k in kinds},
        "precondalg_implementation": implementation,
        "records": records,
        "profile": prof,
        "wall_s": wall,
    }
    run.json_path.write_text(json.dumps(out, indent=2))
    common.write_csv(run.csv_path, records)
    written = [run.json_path, run.csv_path]
    if prof is not None:
        text_path = run.json_path.with_name(run.json_path.stem + "_profile.txt")
        text_path.write_text(prof["text"])
        written.append(text_path)
    print("Wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
