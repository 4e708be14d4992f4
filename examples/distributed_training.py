"""Data-parallel training with a precondalg optimizer: DDP or FSDP2, and a distributed checkpoint.

    torchrun --standalone --nproc-per-node 2 examples/distributed_training.py
    torchrun --standalone --nproc-per-node 2 examples/distributed_training.py --fsdp --preset Shampoo \
        --checkpoint /tmp/precondalg-shampoo
    torchrun --standalone --nproc-per-node 3 examples/distributed_training.py \
        --resume /tmp/precondalg-checkpoint --steps 60

Each step draws a batch of 64 examples per rank from scikit-learn's digits (shipped with scikit-learn: no
download; `pip install scikit-learn`, or the package's "experiments" extra), and each rank trains on its
64; every `--save-every` steps the model and the optimizer are saved with torch.distributed.checkpoint
into `--checkpoint`, which a later run (any number of processes, the same `--preset`) resumes with
`--resume` up to `--steps` in all.  CPU with gloo, or one GPU per process with NCCL where CUDA is
available.  FSDP2's `fully_shard` needs torch ≥ 2.6.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from precondalg.optim import PSGD, Shampoo, dcp_load, dcp_save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["PSGD", "Shampoo"], default="PSGD")
    parser.add_argument("--fsdp", action="store_true", help="shard with FSDP2 instead of DDP")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--save-every", type=int, default=20)
    parser.add_argument("--checkpoint", default="/tmp/precondalg-checkpoint")
    parser.add_argument("--resume", default=None, help="a checkpoint folder to continue from")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    torch.set_num_threads(1)

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32, device=device)
    y = torch.tensor(y, device=device)
    batch = 64 * world  # 64 examples per rank and step; every rank the same number
    torch.manual_seed(0)  # the same initial model on every rank (DDP also broadcasts rank 0's)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10)).to(device)
    if args.fsdp:
        for layer in net:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        model = fully_shard(net)
    else:
        model = DistributedDataParallel(net)

    if args.preset == "PSGD":  # Newton criterion, Hv by finite differences of two synchronised backwards
        opt = PSGD(net.parameters(), 0.05, hvp="finite_difference", update_probability=0.5, seed=0)
    else:
        opt = Shampoo(net.parameters(), 0.05, epsilon=1e-4, update_every=5)
    start = 0
    if args.resume:
        dcp_load(args.resume, net, opt)
        start = opt.steps
        if start >= args.steps:
            parser.error(f"--resume: the checkpoint is at step {start}; --steps {args.steps} adds none")

    for step in range(start, args.steps):
        picked = torch.randperm(len(X), generator=torch.Generator().manual_seed(step))[:batch]
        mine = picked[rank::world]  # this rank's share of the step's batch

        def closure(mine: torch.Tensor = mine) -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(X[mine]), y[mine])
            loss.backward()  # DDP / FSDP2 average the gradients across the ranks
            return loss

        loss = opt.step(closure)
        if rank == 0 and step % 10 == 0:
            print(f"step {step:3d}  loss on rank 0's share {loss.item():.4f}", flush=True)
        if (step + 1) % args.save_every == 0:
            dcp_save(args.checkpoint, net, opt)
    if rank == 0:
        print(f"done: {opt.steps} steps on {world} processes; checkpoint in {args.checkpoint}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
