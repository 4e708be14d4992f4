"""Distributed checkpoints: every row of `test_distributed` saved with `torch.distributed.checkpoint`
(DCP: ``get_optimizer_state_dict`` / ``set_optimizer_state_dict``) in the middle of a data-parallel run,
loaded into fresh processes and continued, against the uninterrupted run.

Spawned gloo process groups (file rendezvous in the test's temporary folder: no ports).  A run of
`STEPS` = 4 steps is interrupted after 2: under DDP and under FSDP2 on 2 processes, continued on 2
processes (the same layout: bit-identical to the uninterrupted run) and on 3 (another world size: the
batch is split in three, so the averaged gradients differ by round-off; within the tolerances of
`test_distributed`).

Every row goes through `precondalg.optim.dcp_save`/`dcp_load` (DCP's ``get_optimizer_state_dict``,
``dcp.save``, ``dcp.load``, ``set_optimizer_state_dict``, with each preconditioner entry as one object).
Refused: a checkpoint made and loaded with DCP's own calls alone (its in-place load drops the entries a
fresh optimizer lacks: the optimizer's layout check says so), and a checkpoint of another configuration
(`dcp_load` compares the configuration before loading anything: nothing changes).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from test_distributed import (
    PRESETS,
    SHARDED_REFUSED,
    TOLERANCE,
    flat_parameters,
    model,
    run,
    sharded_model,
    share,
    start,
    state_tensors,
)
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.nn.parallel import DistributedDataParallel

from precondalg.optim import dcp_load, dcp_save

pytestmark = pytest.mark.slow  # about 70 s of spawned processes: run by .ci/run's `pytest -m slow`

STEPS, SAVED_AT = 4, 2
LAYOUTS = {"DDP": list(PRESETS), "FSDP2": [name for name in PRESETS if name not in SHARDED_REFUSED]}


def fresh(layout, name):
    """A fresh model as the layout wraps it and the row's optimizer: (the module the optimizer and DCP
    see, its forward, the optimizer)."""
    net = model() if layout == "DDP" else sharded_model()
    forward = DistributedDataParallel(net) if layout == "DDP" else net
    return net, forward, PRESETS[name](net, forward)


def _save_worker(rank, world, folder, layout):
    """The uninterrupted run's result, and a checkpoint after `SAVED_AT` steps, per row (FOP's also
    with torch.distributed.checkpoint's own calls)."""
    start(rank, world, folder)
    X, Y = share(rank, world)
    results = {}
    for name in LAYOUTS[layout]:
        net, forward, opt = fresh(layout, name)
        run(name, opt, forward, X, Y, STEPS)
        results[name] = flat_parameters(net), state_tensors(opt)
        net, forward, opt = fresh(layout, name)
        run(name, opt, forward, X, Y, SAVED_AT)
        dcp_save(os.path.join(folder, "checkpoints", name), net, opt)
        if name == "FOP":
            state = {"model": get_model_state_dict(net), "optim": get_optimizer_state_dict(net, opt)}
            dcp.save(state, checkpoint_id=os.path.join(folder, "checkpoints", "FOP by DCP"))
    torch.save(results, os.path.join(folder, f"uninterrupted{rank}.pt"))
    dist.destroy_process_group()


def _resume_worker(rank, world, folder, saved, layout):
    """Fresh processes: load each row's checkpoint, continue to `STEPS`, report; also what the refused
    loads say (`_refusal`)."""
    start(rank, world, folder)
    X, Y = share(rank, world)
    results = {}
    for name in LAYOUTS[layout]:
        net, forward, opt = fresh(layout, name)
        dcp_load(os.path.join(saved, "checkpoints", name), net, opt)
        devices = {t.device for t in opt.state_dict()["state"][0].values() if isinstance(t, torch.Tensor)}
        assert devices == {torch.device("cpu")}, devices
        run(name, opt, forward, X, Y, STEPS - SAVED_AT)
        results[name] = flat_parameters(net), state_tensors(opt)
    checkpoints = os.path.join(saved, "checkpoints")
    results["refusals"] = {
        "DCP's own calls": _refusal(layout, "FOP", _raw_load, os.path.join(checkpoints, "FOP by DCP")),
        "another configuration": _refusal(layout, "HD", dcp_load, os.path.join(checkpoints, "FOP")),
    }
    torch.save(results, os.path.join(folder, f"resumed{rank}.pt"))
    dist.destroy_process_group()


def _raw_load(checkpoint_id, net, opt):
    """torch.distributed.checkpoint's own calls."""
    state = {"model": get_model_state_dict(net), "optim": get_optimizer_state_dict(net, opt)}
    dcp.load(state, checkpoint_id=checkpoint_id)
    set_model_state_dict(net, state["model"])
    set_optimizer_state_dict(net, opt, state["optim"])


def _refusal(layout, name, load, checkpoint_id):
    """What loading the checkpoint into a fresh `name` row's optimizer with `load` says, and whether the
    optimizer's state stayed as it was."""
    net, _, opt = fresh(layout, name)
    before = state_tensors(opt)
    try:
        load(checkpoint_id, net, opt)
        said = "nothing"
    except ValueError as err:
        said = str(err)
    return said, all(map(torch.equal, before, state_tensors(opt)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``runs(layout)``: the uninterrupted results (2 processes), and the resumed ones on 2 and 3
    processes (made once per layout)."""
    made = {}

    def of(layout):
        if layout not in made:
            saved = tmp_path_factory.mktemp(f"saved-{layout}")
            mp.start_processes(_save_worker, args=(2, str(saved), layout), nprocs=2, start_method="spawn")
            resumed = {}
            for world in (2, 3):
                folder = tmp_path_factory.mktemp(f"resumed-{layout}-{world}")
                args = (world, str(folder), str(saved), layout)
                mp.start_processes(_resume_worker, args=args, nprocs=world, start_method="spawn")
                resumed[world] = [torch.load(folder / f"resumed{r}.pt") for r in range(world)]
            made[layout] = torch.load(saved / "uninterrupted0.pt"), resumed
        return made[layout]

    return of


@pytest.mark.parametrize("layout, name", [(layout, name) for layout in LAYOUTS for name in LAYOUTS[layout]])
def test_a_run_resumed_from_dcp_equals_the_uninterrupted_run(runs, layout, name):
    uninterrupted, resumed = runs(layout)
    params, (floats, others) = uninterrupted[name]
    for world, ranks in resumed.items():
        got_params, (got_floats, got_others) = ranks[0][name]
        for other in ranks[1:]:
            assert torch.equal(got_params, other[name][0])
        assert torch.equal(got_others, others)  # generators and counters continue exactly
        if world == 2:  # the same layout: bit for bit
            assert torch.equal(got_params, params) and torch.equal(got_floats, floats)
            continue
        tolerance = TOLERANCE.get(name, 1e-12)
        assert float((got_params - params).abs().max()) <= tolerance
        assert float(((got_floats - floats).abs() / (1 + floats.abs())).max()) <= tolerance


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_refused_checkpoints_change_nothing(runs, layout):
    """DCP's own calls load into a fresh optimizer's state dict, which lacks what steps made (the cache,
    the meta-optimizer's moments): refused by the layout check (after dcp.load has written into the
    optimizer's own tensors, as it does for any torch optimizer: the message says to rebuild it); a
    checkpoint of FOP loaded into HD by `dcp_load`: refused by the configuration check, before anything
    is read, so nothing changes."""
    _, resumed = runs(layout)
    for ranks in resumed.values():
        for rank in ranks:
            said, _ = rank["refusals"]["DCP's own calls"]  # dcp.load wrote into the live state first
            assert said.startswith("Preconditioned.load_state_dict: the state dict lacks entries")
            assert "precondalg.optim.dcp_save / dcp_load" in said
            said, unchanged_too = rank["refusals"]["another configuration"]
            assert said.startswith("dcp_load: the checkpoint was made with a different configuration")
            assert "optimizer 'FOP' → 'HD'" in said
            assert unchanged_too
