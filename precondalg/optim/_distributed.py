"""Data-parallel training: what the ranks of a process group must agree on.

Under `torch.nn.parallel.DistributedDataParallel` every rank holds the same parameters and, after each
``backward``, the same (averaged) gradients; the optimizer's own generators, seeded alike, make the same
draws.  What an objective computes from the closure's loss or the batch itself — Hessian-vector
products, gradients it differentiates out of a returned loss, layer statistics, a lookahead's
meta-gradient — is of this rank's batch alone: the optimizer averages it across the group before the
fit (`average`), so that every rank fits the same preconditioner, the one a single process fits on the
concatenated batch (for equal per-rank batches and losses that are batch means, as DDP assumes).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.utils._pytree as pytree

from precondalg._tensors import full

__all__ = [
    "answer_tensors",
    "average",
    "average_answers",
    "check_replicas",
    "dcp_load",
    "dcp_save",
    "group_of",
    "is_group",
]


def is_group(value: Any) -> bool:
    """Whether `value` is a torch.distributed process group."""
    return dist.is_available() and isinstance(value, dist.ProcessGroup)


def group_of(choice: Any) -> Any:
    """The process group the optimizer averages over, or None (one process: nothing to average).

    Args:
        choice: "auto" (torch.distributed's default group when it is initialised with more than one
            process), None (none), or a process group.
    """
    if choice == "auto":
        if not (dist.is_available() and dist.is_initialized()):
            return None
        choice = dist.group.WORLD
    if choice is None or dist.get_world_size(choice) == 1:
        return None
    return choice


def average(tensors: Sequence[torch.Tensor], group: Any) -> list[torch.Tensor]:
    """The mean of each tensor across the ranks of `group`: one ``all_reduce`` per dtype and device
    (the tensors flattened into one buffer), in the order they come, which every rank must share.

    Args:
        tensors: any shapes; floating dtypes.
        group: the process group.

    Returns:
        New tensors, each of its input's shape.
    """
    world = dist.get_world_size(group)
    out: list[torch.Tensor | None] = [None] * len(tensors)
    kinds: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, t in enumerate(tensors):
        kinds.setdefault((t.dtype, t.device), []).append(i)
    for indices in kinds.values():
        flat = torch.cat([tensors[i].reshape(-1) for i in indices])
        dist.all_reduce(flat, group=group)
        flat.div_(world)
        for i, piece in zip(indices, flat.split([tensors[i].numel() for i in indices])):
            out[i] = piece.view(tensors[i].shape)
    return out  # type: ignore[return-value]


def answer_tensors(answer: Any) -> tuple[list[torch.Tensor], Any]:
    """An objective's answer for one block (a Structure, a `RelativeGradient` or `Statistics`) as its
    tensors and a function that rebuilds it from new ones."""
    from precondalg.objectives import RelativeGradient, Statistics

    if isinstance(answer, Statistics):
        return list(answer.samples), lambda new: dataclasses.replace(answer, samples=tuple(new))
    if isinstance(answer, RelativeGradient):
        leaves, spec = pytree.tree_flatten(answer.R)
        return leaves, lambda new: dataclasses.replace(answer, R=pytree.tree_unflatten(new, spec))
    leaves, spec = pytree.tree_flatten(answer)
    return leaves, lambda new: pytree.tree_unflatten(new, spec)


def average_answers(answers: list[Any], shapes: list[list[tuple[int, ...]]], group: Any) -> list[Any]:
    """The objective's answers (one per fitting block, or None) averaged across the ranks.

    Every rank must have an answer for the same blocks (the ranks then fit the same blocks): a block
    answered on some ranks only is an error on every rank, before any data is exchanged.

    Args:
        answers: per block a Structure, `RelativeGradient`, `Statistics` or None.
        shapes: per block its parameters' shapes, for the message.
        group: the process group.

    Raises:
        RuntimeError: the ranks disagree on which blocks have an answer.
    """
    given = torch.tensor([a is not None for a in answers], dtype=torch.int64)
    dist.all_reduce(given, group=group)
    world = dist.get_world_size(group)
    split = [s for s, n in zip(shapes, given.tolist()) if 0 < n < world]
    if split:
        raise RuntimeError(
            f"Preconditioned.step: the blocks of shapes {split} have a meta-gradient or statistics on some "
            f"ranks of the {world} and not on the others (a layer the forward pass skipped on some ranks?); "
            "the ranks would fit different preconditioners"
        )
    parts = [answer_tensors(a) for a in answers if a is not None]
    flat = average([t for tensors, _ in parts for t in tensors], group)
    out, start = [], 0
    rebuilt = iter(parts)
    for a in answers:
        if a is None:
            out.append(None)
            continue
        tensors, rebuild = next(rebuilt)
        out.append(rebuild(flat[start : start + len(tensors)]))
        start += len(tensors)
    return out


def check_replicas(values: Sequence[torch.Tensor], group: Any, owner: str) -> None:
    """Refuse to train when the ranks do not hold the same `values` (parameters, generator states):
    data-parallel ranks train one model.  Two numbers per tensor (its sum and the sum of its squares,
    in float64) are compared across the group.

    Raises:
        ValueError: on every rank, naming how many tensors differ.
    """
    values = [full(t).double() for t in values]
    sums = torch.stack([torch.stack([t.sum(), t.square().sum()]).cpu() for t in values]).reshape(-1)
    both = torch.cat([sums, -sums])
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
    highest, lowest = both[: sums.numel()], -both[sums.numel() :]
    differ = int((highest != lowest).reshape(-1, 2).any(dim=1).sum())
    if differ:
        raise ValueError(
            f"{owner}: {differ} of the {len(values)} parameters and generator states differ across the "
            f"{dist.get_world_size(group)} ranks of the process group at this step; data-parallel ranks "
            "train one model (DDP broadcasts rank 0's parameters when it wraps the model; give every rank "
            "the same seed). If the ranks train separate models, pass process_group=None"
        )


def dcp_save(checkpoint_id: str | os.PathLike[str], model: torch.nn.Module, optimizer: Any) -> None:
    """Save the model's and the optimizer's state with `torch.distributed.checkpoint` (DCP), from every
    rank: ``dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model,
    optimizer)})``, with each block's preconditioner entry (φ, the last step's cache, the fitter's state:
    the same on every rank) as one object, on the CPU (`_packed`).  FSDP2's sharded tensors (parameters,
    the base rule's moments) are saved as shards.  Any world size can load it (`dcp_load`).

    Args:
        checkpoint_id: the checkpoint's folder (a checkpoint already there is replaced).
        model: the module the optimizer's parameters belong to (DDP's or FSDP2's, as trained).
        optimizer: a `precondalg.optim.Preconditioned` (any preset).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    _pack(state["optim"], on_cpu=True)
    dcp.save(state, storage_writer=dcp.FileSystemWriter(checkpoint_id, overwrite=True))


def _pack(optimizer_state: dict[str, Any], on_cpu: bool = False) -> None:
    """Each block's "preconditioner" entry as a 1-tuple: DCP saves and loads a tuple as one object,
    whatever it holds (it fills a dict or a list entry by entry, and only the entries its template
    has: a fresh optimizer's lacks the cache and the fitter's moments that steps make)."""
    for entry in optimizer_state["state"].values():
        if "preconditioner" in entry:
            pre = entry["preconditioner"]
            if on_cpu:
                pre = pytree.tree_map(lambda v: v.cpu() if isinstance(v, torch.Tensor) else v, pre)
            entry["preconditioner"] = (pre,)


def _unpack(optimizer_state: dict[str, Any]) -> None:
    """`_pack`'s inverse."""
    for entry in optimizer_state["state"].values():
        if "preconditioner" in entry:
            (entry["preconditioner"],) = entry["preconditioner"]


def dcp_load(checkpoint_id: str | os.PathLike[str], model: torch.nn.Module, optimizer: Any) -> None:
    """Load a `dcp_save` checkpoint into the model and the optimizer, on every rank (any world size).

    The checkpoint's optimizer configuration is read first and compared with `optimizer`'s: one from
    another configuration is refused with the optimizer's own message (what differs) before anything is
    loaded.  Then ``get_optimizer_state_dict`` gives the state to fill, ``dcp.load`` fills it in place
    (the sharded tensors on the devices of those they replace; the preconditioner's entries come as
    saved, on the CPU, and `Preconditioned.load_state_dict` copies them to their parameters' devices:
    never another device) and ``set_model_state_dict``/``set_optimizer_state_dict`` install it.

    Raises:
        ValueError: the checkpoint holds no precondalg optimizer, or one of another configuration
            (nothing is changed).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    probe = {"optim": {"param_groups": [{"precondalg": {"configuration": None}}]}}
    dcp.load(probe, checkpoint_id=checkpoint_id, planner=DefaultLoadPlanner(allow_partial_load=True))
    saved = probe["optim"]["param_groups"][0]["precondalg"]["configuration"]
    if not isinstance(saved, str):
        raise ValueError(
            f"dcp_load: the checkpoint {os.fspath(checkpoint_id)!r} holds no precondalg optimizer state (no "
            "optim.param_groups.0.precondalg.configuration entry; was it saved by dcp_save?); nothing was "
            "changed"
        )
    optimizer._check_configuration(saved, caller="dcp_load")
    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    _pack(state["optim"])
    dcp.load(state, checkpoint_id=checkpoint_id)
    _unpack(state["optim"])
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"])
