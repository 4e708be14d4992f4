"""Data-parallel scaling: every preset on the transformer block under DDP and FSDP2 on 1, 2 and 4 CPU
processes (gloo): step time, optimizer memory per rank, and the communication the optimizer adds.

Run from the repository root:

    OMP_NUM_THREADS=1 python benchmarks/distributed.py            # about 10 minutes on 2 cores
    OMP_NUM_THREADS=1 python benchmarks/distributed.py --quick    # smoke run (about a minute)

The model is `models.TokenBlock` (148,928 float32 parameters), the global batch 32 sequences of 32 tokens
split evenly across the ranks (strong scaling: the same work in all, divided).  Per layout (DDP; FSDP2 with
the encoder layer and the root under ``fully_shard``), world size and preset, each rank takes `--warmup`
steps, then `--steps` timed steps; reported:

- **step time**: the median over the timed steps of rank 0's training step (forward, backward with the
  layout's own gradient communication, optimizer step), milliseconds;
- **state per rank**: the bytes of the optimizer's state on one rank (`precondalg.experiments.memory.
  state_bytes`, a sharded tensor's local shard), and its ratio to the same preset's total in one process;
- **added bytes**: what the optimizer itself exchanges per step on top of the layout's own gradient
  communication, counted as it happens (the payload of its ``all_reduce`` calls, and for FSDP2 the bytes
  each rank receives when it gathers the sharded gradients to fit and apply the preconditioner on the
  whole tensors: the other W − 1 ranks' chunks, each padded to ⌈n/W⌉ rows, all of a step's gradients in
  one ``all_gather``), averaged over the timed steps.  For reference, the layout's own
  communication per step: DDP all-reduces the gradients (595,712 bytes of payload), FSDP2 gathers the
  parameters and reduce-scatters the gradients.

A machine with fewer cores than processes time-shares them: on this project's 2-core CI machine the
4-process rows measure contention, not scaling.  Outputs: benchmarks/results/distributed_cpu.json and the
tables on stdout (copied into docs/distributed.md by hand, with the machine, the commit and the date).
Tests never assert on these numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).parent))

from models import SEQUENCES, TokenBlock, token_batches  # noqa: E402
from optimizers import APO_LR, HYPER_LR, KFAC_DAMPING, KFAC_LR, LR_SGD, SHAMPOO_EPS, SHAMPOO_LR  # noqa: E402

from precondalg.experiments.machine import describe_machine, machine_info  # noqa: E402
from precondalg.experiments.memory import state_bytes  # noqa: E402
from precondalg.optim import APO, FOP, HD, KFAC, LODO, PSGD, Shampoo  # noqa: E402


def _cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(outputs, targets)


PRESETS = {
    "FOP": lambda net: FOP(net.parameters(), LR_SGD, momentum=0.9, hyper_lr=HYPER_LR),
    "HD": lambda net: HD(net.parameters(), LR_SGD, HYPER_LR, base="momentum", hyper_optimizer="adam"),
    "PSGD": lambda net: PSGD(net.parameters(), 0.01, hvp="finite_difference"),
    "LODO": lambda net: LODO(net.parameters(), 1.0),
    "Shampoo (every 10)": lambda net: Shampoo(
        net.parameters(), SHAMPOO_LR, momentum=0.9, epsilon=SHAMPOO_EPS, update_every=10
    ),
    "K-FAC (every 10)": lambda net: KFAC(
        net.parameters(), KFAC_LR, model=net, damping=KFAC_DAMPING, momentum=0.9, update_every=10
    ),
    "APO (every 10)": lambda net: APO(net.parameters(), APO_LR, model=net, loss_fn=_cross_entropy),
}
CLOSURE = {"PSGD"}
"""The presets whose step takes a closure (finite-difference Hessian-vector products)."""


class Counter:
    """The bytes the optimizer exchanges: wraps `torch.distributed.all_reduce` as its distributed module
    sees it, the batched gather of the step's sharded tensors (`precondalg._tensors.full_many`: the
    chunks a rank receives from the others, padding included) and the engine's other gathers
    (`precondalg._tensors.full`)."""

    def __init__(self, world: int) -> None:
        import precondalg._tensors as tensors
        import precondalg.optim._distributed as averaging
        import precondalg.optim.preconditioned as engine

        self.bytes = 0
        self.world = world
        reduce, gather, gather_many = averaging.dist.all_reduce, engine.full, tensors.dist.all_gather

        def counted_reduce(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self.bytes += tensor.numel() * tensor.element_size()
            return reduce(tensor, *args, **kwargs)

        def counted_gather_many(received: list[torch.Tensor], tensor: torch.Tensor, **kwargs: Any) -> Any:
            self.bytes += tensor.numel() * tensor.element_size() * (len(received) - 1)
            return gather_many(received, tensor, **kwargs)

        def counted_gather(t: torch.Tensor) -> torch.Tensor:
            whole = gather(t)
            if whole is not t:
                self.bytes += whole.numel() * whole.element_size() * (self.world - 1) // self.world
            return whole

        averaging.dist = _Patched(averaging.dist, all_reduce=counted_reduce)
        tensors.dist = _Patched(tensors.dist, all_gather=counted_gather_many)
        engine.full = counted_gather


class _Patched:
    """A module with some attributes replaced."""

    def __init__(self, module: Any, **replaced: Any) -> None:
        self._module, self._replaced = module, replaced

    def __getattr__(self, name: str) -> Any:
        return self._replaced.get(name, getattr(self._module, name))


def _model(layout: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The block (what the optimizer sees) and its forward under the layout."""
    torch.manual_seed(0)
    net = TokenBlock()
    if layout == "FSDP2":
        fully_shard(net.block)
        return fully_shard(net), net
    if layout == "DDP":
        return net, DistributedDataParallel(net)
    return net, net


def _step(name: str, opt: Any, forward: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    if name in CLOSURE:

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = _cross_entropy(forward(x), y)
            loss.backward()
            return loss

        opt.step(closure)
        return
    opt.zero_grad()
    _cross_entropy(forward(x), y).backward()
    if name.startswith("APO"):
        opt.step(batch=(x, y), fsd_batch=x)
    else:
        opt.step()


def _worker(
    rank: int, world: int, folder: str, layout: str, names: list[str], warmup: int, steps: int
) -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    if world > 1:
        rendezvous = f"file://{folder}/rendezvous"
        dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world)
    counter = Counter(world)
    batches = token_batches(torch.device("cpu"), warmup + steps, seed=0)
    n = SEQUENCES // world
    rows = {}
    for name in names:
        net, forward = _model(layout if world > 1 else "one process")
        opt = PRESETS[name](net)
        times, sent = [], []
        for i, (x, y) in enumerate(batches):
            x, y = x[rank * n : (rank + 1) * n], y.view(SEQUENCES, -1)[rank * n : (rank + 1) * n].reshape(-1)
            before, start = counter.bytes, time.perf_counter()
            _step(name, opt, forward, x, y)
            if i >= warmup:
                times.append(time.perf_counter() - start)
                sent.append(counter.bytes - before)
        rows[name] = {
            "step_ms": 1e3 * statistics.median(times),
            "state_bytes": state_bytes(opt)["total"],
            "added_bytes_per_step": statistics.mean(sent),
        }
    if rank == 0:
        Path(folder, "rows.json").write_text(json.dumps(rows))
    if world > 1:
        dist.destroy_process_group()


def measure(layout: str, world: int, names: list[str], warmup: int, steps: int) -> dict[str, Any]:
    """Every preset's row for one layout and world size (spawned processes; rank 0's figures)."""
    with tempfile.TemporaryDirectory() as folder:
        args = (world, folder, layout, names, warmup, steps)
        mp.start_processes(_worker, args=args, nprocs=world, start_method="spawn")
        return json.loads(Path(folder, "rows.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 warm-up and 5 timed steps, worlds 1 and 2")
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.worlds, args.warmup, args.steps = [1, 2], 2, 5
    torch.set_num_threads(1)
    name = "distributed_quick_cpu.json" if args.quick else "distributed_cpu.json"
    path = args.json or Path(__file__).parent / "results" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    info = machine_info(torch.device("cpu"), git=True)
    print("machine:", describe_machine(info), flush=True)
    started = time.perf_counter()
    results: dict[str, Any] = {"machine": info, "worlds": args.worlds, "steps": args.steps, "rows": {}}
    single = measure("one process", 1, list(PRESETS), args.warmup, args.steps)
    for layout in ("DDP", "FSDP2"):
        for world in args.worlds:
            rows = single if world == 1 else measure(layout, world, list(PRESETS), args.warmup, args.steps)
            for name in PRESETS:
                row = dict(rows[name])
                row["state_vs_one_process"] = row["state_bytes"] / single[name]["state_bytes"]
                results["rows"][f"{layout} | {world} | {name}"] = row
            print(f"[{time.perf_counter() - started:6.0f}s] {layout} on {world} process(es) done", flush=True)
    path.write_text(json.dumps(results, indent=1))
    print("\n| layout | ranks | preset | step (ms) | state per rank (KB) | vs one process | added B/step |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for key, row in results["rows"].items():
        layout, world, name = key.split(" | ")
        print(
            f"| {layout} | {world} | {name} | {row['step_ms']:.1f} | {row['state_bytes'] / 1024:.0f} | "
            f"{row['state_vs_one_process']:.2f} | {row['added_bytes_per_step']:,.0f} |"
        )
    print(f"\nwrote {path}; total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
