"""Data-parallel training (issue 14, first part): every preset under `DistributedDataParallel` on 2 CPU
processes (gloo), against a single process on the concatenated batch.

Two spawned processes (a file rendezvous in the test's temporary folder: no port, so parallel runs never
collide) each train a copy of a float64 MLP 4-3-2 on their half of a batch of 8 for 3 steps; the
parameters must be bit-identical on both ranks and equal the single-process run on the whole batch to
1e-12 (float64 round-off of the averaged gradients: up to 1.3e-15 measured; a preset that fits on the
local batch is off by 1e-4 to 1).

Pinned as they are today: the presets whose fit reads only the (DDP-averaged) gradients — FOP, HD, PSGD
with the Fisher criterion, LODO, Shampoo — already match; PSGD's Newton criterion (Hessian-vector
products of the local batch), K-FAC (activation statistics of the local batch) and APO (its lookahead
on the local batch) do not yet: strict xfails, to be turned into passes by averaging the objective's
products across the process group.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from precondalg.optim import APO, FOP, HD, KFAC, LODO, PSGD, Shampoo

F64 = torch.float64
WORLD = 2
STEPS = 3


def mse(out, y):
    return ((out - y) ** 2).mean()


PRESETS = {
    "FOP": lambda net: FOP(net.parameters(), 0.1, hyper_lr=1e-2),
    "HD": lambda net: HD(net.parameters(), 0.05, 1e-3),
    "PSGD (Fisher)": lambda net: PSGD(net.parameters(), 0.05, criterion="fisher"),
    "PSGD (Newton)": lambda net: PSGD(net.parameters(), 0.05),
    "LODO": lambda net: LODO(net.parameters(), 0.05),
    "Shampoo": lambda net: Shampoo(net.parameters(), 0.05, epsilon=1e-4),
    "KFAC": lambda net: KFAC(net.parameters(), 0.05, model=net, damping=1e-2),
    "APO": lambda net: APO(net.parameters(), 0.05, model=net, loss_fn=mse, meta_every=1),
}
LOCAL = {
    "PSGD (Newton)": "Hessian-vector products of the local batch",
    "KFAC": "activation statistics of the local batch",
    "APO": "the lookahead's meta-gradient on the local batch",
}
"""The presets whose fit reads more than the averaged gradients (not yet averaged across ranks)."""


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 4, generator=g, dtype=F64), torch.randn(8, 2, generator=g, dtype=F64)


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).to(F64)


def train(name, net, forward, X, Y):
    """`STEPS` steps of a preset; `forward` is the model (or its DDP wrapper) the loss goes through."""
    opt = PRESETS[name](net)
    for _ in range(STEPS):
        if name == "PSGD (Newton)":  # the criterion differentiates the closure's loss itself
            opt.step(lambda: mse(forward(X), Y))
            continue
        opt.zero_grad()
        mse(forward(X), Y).backward()
        opt.step(batch=(X, Y), fsd_batch=X) if name == "APO" else opt.step()
    return torch.cat([p.detach().flatten() for p in net.parameters()])


def _worker(rank, folder):
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=WORLD
    )
    X, Y = data()
    n = X.shape[0] // WORLD
    part = slice(rank * n, (rank + 1) * n)
    results = {}
    for name in PRESETS:
        net = model()
        results[name] = train(name, net, DistributedDataParallel(net), X[part], Y[part])
    torch.save(results, os.path.join(folder, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Each rank's parameters after training, per preset."""
    folder = tmp_path_factory.mktemp("ddp")
    mp.start_processes(_worker, args=(str(folder),), nprocs=WORLD, start_method="spawn", join=True)
    return [torch.load(folder / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=f"not yet averaged: {LOCAL[name]}"))
        if name in LOCAL
        else name
        for name in PRESETS
    ],
)
def test_ddp_equals_one_process_on_the_whole_batch(ranks, name):
    X, Y = data()
    net = model()
    single = train(name, net, net, X, Y)
    first, second = (r[name] for r in ranks)
    assert torch.equal(first, second), f"ranks differ by {float((first - second).abs().max()):.2e}"
    assert float((first - single).abs().max()) <= 1e-12
