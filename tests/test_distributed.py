"""Data-parallel training: every preset and the generic optimizer under `DistributedDataParallel` on 2 and
3 CPU processes (gloo), against a single process on the concatenated batch.

Spawned processes (a file rendezvous in the test's temporary folder: no port, so parallel runs never
collide) each train a copy of a float64 MLP 4-3-2 on their part of a batch of 12 for 3 steps; the
parameters and every tensor of the optimizer's state must be bit-identical on every rank and equal the
single-process run on the whole batch to float64 round-off: parameters within 1e-12, the state's
floating entries within 1e-12·(1 + |x|), its integer entries (generator states, counters) equal.  The
ranks' means are summed in another order than one process sums the whole batch (about 1e-16 relative);
measured: parameters within 9e-16, state within 3e-13·(1 + |x|) (Shampoo, whose inverse roots of
statistics with eigenvalues near ε = 1e-4 amplify the round-off; the others within 2e-14).  A preset
that fitted on the local batch is off by 1e-4 to 1.

The presets whose fit reads only the DDP-averaged gradients (FOP, HD, PSGD with the Fisher criterion,
LODO, Shampoo) need nothing more; PSGD's Newton criterion (Hessian-vector products and gradients taken
from the closure's loss), K-FAC (activation statistics of the local batch), APO (its lookahead on the
local batch; given the DDP wrapper as its model) and the generic rows (PSGD's closure convention, the
hypergradient's unroll) rely on the optimizer averaging those across the process group.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.utils._pytree as pytree
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from precondalg import families
from precondalg._tensors import full
from precondalg.fitters import LieGroup, TorchOptimizer
from precondalg.objectives import Fisher, Hypergradient
from precondalg.optim import APO, FOP, HD, KFAC, LODO, PSGD, Preconditioned, Shampoo

ROOT = Path(__file__).resolve().parents[1]
F64 = torch.float64
STEPS = 3
BATCH = 12


def mse(out, y):
    return ((out - y) ** 2).mean()


PRESETS = {
    "FOP": lambda net, wrapper: FOP(net.parameters(), 0.1, hyper_lr=1e-2),
    "HD": lambda net, wrapper: HD(net.parameters(), 0.05, 1e-3),
    "PSGD (Fisher)": lambda net, wrapper: PSGD(net.parameters(), 0.05, criterion="fisher"),
    # weight decay: the decayed gradient g + wd·θ on each shard, and θ itself in the Fisher fit's h
    "PSGD (Fisher, weight decay)": lambda net, wrapper: PSGD(
        net.parameters(), 0.05, criterion="fisher", weight_decay=0.1
    ),
    "PSGD (Newton)": lambda net, wrapper: PSGD(net.parameters(), 0.05),
    "PSGD (Newton, finite differences)": lambda net, wrapper: PSGD(
        net.parameters(), 0.05, hvp="finite_difference"
    ),
    "LODO": lambda net, wrapper: LODO(net.parameters(), 0.05),
    "Shampoo": lambda net, wrapper: Shampoo(net.parameters(), 0.05, epsilon=1e-4),
    "KFAC": lambda net, wrapper: KFAC(net.parameters(), 0.05, model=wrapper, damping=1e-2),
    "APO": lambda net, wrapper: APO(net.parameters(), 0.05, model=wrapper, loss_fn=mse, meta_every=1),
    "Preconditioned (Fisher, closure returns the loss)": lambda net, wrapper: Preconditioned(
        net.parameters(), 0.05, structure=families.dense_gram(), objective=Fisher(), fitter=LieGroup(0.1)
    ),
    "Preconditioned (hypergradient unroll)": lambda net, wrapper: Preconditioned(
        net.parameters(), 0.05, structure=families.diagonal(), objective=Hypergradient("unroll"),
        fitter=TorchOptimizer(torch.optim.SGD, lr=1e-2), base="momentum",
    ),
}
RETURNS_LOSS = {"PSGD (Newton)", "Preconditioned (Fisher, closure returns the loss)"}
"""The rows whose closure returns the loss without calling backward (PSGD's convention: the optimizer
differentiates it, so DDP never sees a backward)."""
CLOSURE = {"Preconditioned (hypergradient unroll)", "PSGD (Newton, finite differences)"}
"""The rows whose closure calls backward and is evaluated again (at the lookahead, at θ + δv)."""
TOLERANCE = {"PSGD (Newton, finite differences)": 1e-8}
"""Looser than the 1e-12 of the others, and why: h = (∇L(θ + δv) − ∇L(θ))/δ divides the gradients'
round-off (the ranks' sum in another order, about 1e-16) by δ = √ε ≈ 1.5e-8."""


def data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(BATCH, 4, generator=g, dtype=F64), torch.randn(BATCH, 2, generator=g, dtype=F64)


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).to(F64)


def state_tensors(opt):
    """Every tensor of the optimizer's state dict, flattened and concatenated: the floating ones in
    float64, and the others (generator states, counters) as int64."""
    leaves = [full(t) for t in pytree.tree_leaves(opt.state_dict()) if isinstance(t, torch.Tensor)]
    floats = [t.detach().double().reshape(-1) for t in leaves if t.is_floating_point()]
    others = [t.detach().long().reshape(-1) for t in leaves if not t.is_floating_point()]
    return torch.cat(floats), torch.cat(others)


def train(name, net, forward, X, Y):
    """`STEPS` steps of a row; `forward` is the model (or its DDP wrapper) the loss goes through.
    Returns the parameters and the optimizer's state tensors."""
    forward = net if forward is None else forward
    opt = PRESETS[name](net, forward)
    run(name, opt, forward, X, Y, STEPS)
    return flat_parameters(net), state_tensors(opt)


def flat_parameters(net):
    """The model's whole parameters (gathered where sharded), concatenated."""
    return torch.cat([full(p).detach().flatten() for p in net.parameters()])


def run(name, opt, forward, X, Y, steps):
    """`steps` steps of a row's optimizer on the batch (X, Y), the loss through `forward`."""
    for _ in range(steps):
        if name in RETURNS_LOSS:
            opt.step(lambda: mse(forward(X), Y))
            continue
        if name in CLOSURE:

            def closure():
                opt.zero_grad()
                loss = mse(forward(X), Y)
                loss.backward()
                return loss

            opt.step(closure)
            continue
        opt.zero_grad()
        mse(forward(X), Y).backward()
        opt.step(batch=(X, Y), fsd_batch=X) if name == "APO" else opt.step()


def start(rank, world, folder):
    """A spawned rank's start: one thread, the gloo group by a file rendezvous in `folder` (no port)."""
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)


def share(rank, world):
    """This rank's part of the batch (`BATCH` / `world` examples)."""
    X, Y = data()
    n = BATCH // world
    return X[rank * n : (rank + 1) * n], Y[rank * n : (rank + 1) * n]


def _worker(rank, world, folder):
    start(rank, world, folder)
    X, Y = share(rank, world)
    results = {}
    for name in PRESETS:
        net = model()
        results[name] = train(name, net, DistributedDataParallel(net), X, Y)
    torch.save(results, os.path.join(folder, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module", params=[2, 3], ids=lambda w: f"{w} processes")
def ranks(request, tmp_path_factory):
    """Each rank's parameters and optimizer state after training, per row."""
    world = request.param
    folder = tmp_path_factory.mktemp(f"ddp{world}")
    mp.start_processes(_worker, args=(world, str(folder)), nprocs=world, start_method="spawn", join=True)
    return [torch.load(folder / f"rank{r}.pt") for r in range(world)]


def check_against_one_process(name, ranks):
    """Every rank's parameters and state bit-identical; equal to one process on the whole batch to the
    tolerances of the module docstring (`TOLERANCE` for the finite differences)."""
    X, Y = data()
    single_params, (single_floats, single_others) = train(name, model(), None, X, Y)
    first_params, first_state = ranks[0][name]
    for other_params, other_state in (r[name] for r in ranks[1:]):
        assert torch.equal(first_params, other_params), (
            f"ranks' parameters differ by {float((first_params - other_params).abs().max()):.2e}"
        )
        assert all(map(torch.equal, first_state, other_state)), "ranks' optimizer states differ"
    tolerance = TOLERANCE.get(name, 1e-12)
    assert float((first_params - single_params).abs().max()) <= tolerance
    floats, others = first_state
    assert torch.equal(others, single_others)  # generator states, counters: the same draws were made
    assert floats.shape == single_floats.shape
    assert float(((floats - single_floats).abs() / (1 + single_floats.abs())).max()) <= tolerance


@pytest.mark.parametrize("name", list(PRESETS))
def test_ddp_equals_one_process_on_the_whole_batch(ranks, name):
    check_against_one_process(name, ranks)


def _refusals_worker(rank, folder):
    """On 2 ranks: what a step says when the ranks are not replicas, and that process_group=None trains
    each rank alone."""
    start(rank, 2, folder)
    X, Y = data()
    said = {}
    for case in ("seed", "parameters"):
        net = model()
        if case == "parameters":
            with torch.no_grad():
                net[0].bias.add_(rank)  # not wrapped in DDP: nothing broadcast rank 0's parameters
        opt = PSGD(net.parameters(), 0.05, seed=rank if case == "seed" else 0)
        try:
            opt.step(lambda net=net: mse(net(X), Y))
        except ValueError as err:
            said[case] = str(err)
    net = model()
    opt = PSGD(net.parameters(), 0.05, process_group=None, seed=rank)
    opt.step(lambda: mse(net(X[rank:]), Y[rank:]))
    said["alone"] = torch.cat([p.detach().flatten() for p in net.parameters()])
    torch.save(said, os.path.join(folder, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_ranks_that_are_not_replicas_are_refused_and_none_trains_alone(tmp_path):
    mp.start_processes(_refusals_worker, args=(str(tmp_path),), nprocs=2, start_method="spawn", join=True)
    said = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r in said:
        assert "1 of the 5 parameters and generator states differ across the 2 ranks" in r["seed"]
        assert "same seed" in r["seed"] and "process_group=None" in r["seed"]
        assert "1 of the 5 parameters and generator states differ" in r["parameters"]
    assert not torch.equal(said[0]["alone"], said[1]["alone"])  # its own batch and draws, unaveraged
    net = model()
    single = PSGD(net.parameters(), 0.05, seed=1)
    X, Y = data()
    single.step(lambda: mse(net(X[1:]), Y[1:]))
    assert torch.equal(torch.cat([p.detach().flatten() for p in net.parameters()]), said[1]["alone"])


@pytest.mark.parametrize("bad", ["world", 0, dist.group])
def test_process_group_of_the_wrong_kind_is_refused(bad):
    with pytest.raises(TypeError, match="'process_group' must be \"auto\", None or a torch.distributed"):
        PSGD(model().parameters(), 0.05, process_group=bad)


SHARDED_REFUSED = {
    "PSGD (Newton)": "Newton(hvp='autograd'): the parameters of shapes",
    "Preconditioned (Fisher, closure returns the loss)": "Fisher: the closure returned the loss without",
}
"""The rows that cannot run on FSDP2's sharded parameters, and the start of what they say: the optimizer
cannot differentiate the loss itself (sharded parameters get gradients from backward() only)."""


def sharded_model():
    """`model()` with every Linear and the root under FSDP2's `fully_shard` (parameters sharded on dim 0,
    unevenly: 3 rows on 2 ranks)."""
    net = model()
    for layer in net:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    return fully_shard(net)


def _fsdp_worker(rank, world, folder):
    start(rank, world, folder)
    X, Y = share(rank, world)
    results = {}
    for name in PRESETS:
        net = sharded_model()
        try:
            results[name] = train(name, net, net, X, Y)
        except ValueError as err:
            results[name] = str(err)
    torch.save(results, os.path.join(folder, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def sharded_ranks(tmp_path_factory):
    """Each rank's (whole) parameters and optimizer state after training under FSDP2 on 2 processes."""
    folder = tmp_path_factory.mktemp("fsdp")
    mp.start_processes(_fsdp_worker, args=(2, str(folder)), nprocs=2, start_method="spawn", join=True)
    return [torch.load(folder / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("name", [name for name in PRESETS if name not in SHARDED_REFUSED])
def test_fsdp2_equals_one_process_on_the_whole_batch(sharded_ranks, name):
    """The preconditioner is fitted and applied on the whole gradient (gathered on every rank) and each
    rank keeps its shard of the step: the same numbers as one process, to the DDP test's tolerances."""
    check_against_one_process(name, sharded_ranks)


@pytest.mark.parametrize("name", list(SHARDED_REFUSED))
def test_fsdp2_refuses_what_sharded_parameters_cannot_serve(sharded_ranks, name):
    for rank in sharded_ranks:
        assert isinstance(rank[name], str) and rank[name].startswith(SHARDED_REFUSED[name])
        assert "FSDP2" in rank[name]


def _gather_worker(rank, world, folder):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    import precondalg._tensors as tensors

    start(rank, world, folder)
    mesh = init_device_mesh("cpu", (world,))
    g = torch.Generator().manual_seed(0)  # the same whole tensors on every rank
    wholes = [torch.randn(5, 2, generator=g), torch.randn(1, 3, generator=g, dtype=F64)]
    wholes += [torch.randn(7, generator=g), torch.randn(4, 2, 2, generator=g, dtype=F64)]
    wholes += [torch.randn(3, generator=g)]
    given = [distribute_tensor(w, mesh, [Shard(0)]) for w in wholes[:4]]
    given += [distribute_tensor(wholes[4], mesh, [Replicate()]), torch.ones(2)]  # one by one; not a DTensor
    calls = []
    real = tensors.dist

    class Counted:
        def __getattr__(self, name):
            return getattr(real, name)

        def all_gather(self, out, t, group=None):
            calls.append((t.dtype, t.numel()))
            return real.all_gather(out, t, group=group)

    tensors.dist = Counted()
    got = tensors.full_many(given)
    tensors.dist = real
    torch.save({"equal": [torch.equal(a, b) for a, b in zip(got, wholes + [torch.ones(2)])],
                "same": got[5] is given[5], "calls": calls}, os.path.join(folder, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_full_many_gathers_dim0_shards_with_one_all_gather_per_dtype(tmp_path):
    """`full_many`, the engine's batched gather under FSDP2: on 3 ranks, shards of unequal sizes (5 rows:
    2, 2, 1; 1 row: 1, 0, 0) of two dtypes come back whole bit for bit, with one ``all_gather`` per
    dtype of each rank's chunks (padded to ⌈n/3⌉ rows); a replicated DTensor is gathered on its own, a
    plain tensor is returned as it is."""
    mp.start_processes(_gather_worker, args=(3, str(tmp_path)), nprocs=3, start_method="spawn", join=True)
    for r in range(3):
        result = torch.load(tmp_path / f"rank{r}.pt")
        assert result["equal"] == [True] * 6 and result["same"]
        assert result["calls"] == [(torch.float32, 2 * 2 + 3), (F64, 1 * 3 + 2 * 4)]


@pytest.mark.slow  # about 20 s: two torchrun launches
def test_the_torchrun_example_trains_saves_and_resumes_on_another_world_size(tmp_path):
    """The docs' example, as a user runs it: torchrun --standalone (a free port of its own choosing) on 2
    processes under DDP, then resumed from its checkpoint on 3: the resumed run starts from the saved
    step and finishes."""
    example = ROOT / "examples" / "distributed_training.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

    def torchrun(world, *args):
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}"]
        done = subprocess.run(
            [*command, str(example), *args], capture_output=True, text=True, timeout=240, env=env, check=False
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        return done.stdout

    checkpoint = str(tmp_path / "checkpoint")
    first = torchrun(2, "--steps", "20", "--save-every", "10", "--checkpoint", checkpoint)
    assert "step   0  loss" in first and f"done: 20 steps on 2 processes; checkpoint in {checkpoint}" in first
    again = torchrun(3, "--steps", "30", "--resume", checkpoint, "--checkpoint", str(tmp_path / "next"))
    assert "step   0" not in again and "step  20  loss" in again and "done: 30 steps on 3 processes" in again
