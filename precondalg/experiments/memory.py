"""Optimizer-state bytes, split by role (base rule, φ, running statistics, meta-optimizer…), each storage
counted once: the "state bytes per parameter" of the experiments and benchmarks."""

from __future__ import annotations

from typing import Any

import torch

from precondalg._tensors import is_sharded

__all__ = ["STATISTICS_KEYS", "state_bytes", "storage_bytes", "tensors_in"]


def tensors_in(obj: Any) -> list[torch.Tensor]:
    """Every tensor in obj, a tensor or dicts, lists and tuples nested to any depth (other values are
    passed over), in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in tensors_in(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors_in(v)]
    return []


def storage_bytes(tensors: list[torch.Tensor], seen: set) -> int:
    """Bytes of the tensors (numel × element size) not yet in seen, which it updates: a tensor that
    views the same storage at the same offset, size and dtype as one counted before (in this call or an
    earlier one with the same seen) is counted once."""
    total = 0
    for t in tensors:
        t = t.to_local() if is_sharded(t) else t  # an FSDP2-sharded tensor: this rank's shard
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel(), t.dtype)
        if key in seen and t.numel() > 0:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


STATISTICS_KEYS = ("statistics", "weight")
"""Keys of a fitter's state that hold running statistics (the ClosedForm fitter of Shampoo and K-FAC:
the statistics S and the weight of their bias correction), not a meta-optimizer's state; its counter
"fits" goes to "other"."""


def state_bytes(opt: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of every tensor in opt.state_dict(), split into base-rule state ("base": momentum buffer,
    Adam's moments), the grafting method's state ("graft", keys graft_*), φ ("phi": M, rates, or
    Shampoo's roots and K-FAC's inverses), the fitter's running statistics ("statistics"), the
    meta-optimizer's state ("meta_optimizer"), the cache and the rest (skip counters); each storage
    counted once.  pytorch_optimizer's Shampoo keeps its statistics as pre_cond_i and its roots as
    inv_pre_cond_i: those go to "statistics" and "phi"."""
    sd = opt.state_dict()
    seen: set = set()
    parts = dict.fromkeys(
        ("base", "graft", "phi", "statistics", "meta_optimizer", "cache", "other", "top_level"), 0
    )
    for st in sd["state"].values():
        for key, value in st.items():
            if key == "preconditioner":
                parts["phi"] += storage_bytes(tensors_in(value.get("phi", [])), seen)
                fitter = value.get("fitter", {})
                fitter = fitter if isinstance(fitter, dict) else {"state": fitter}
                stats = {k: v for k, v in fitter.items() if k in STATISTICS_KEYS}
                meta = {k: v for k, v in fitter.items() if k not in (*STATISTICS_KEYS, "fits")}
                parts["statistics"] += storage_bytes(tensors_in(stats), seen)
                parts["meta_optimizer"] += storage_bytes(tensors_in(meta), seen)
                parts["other"] += storage_bytes(tensors_in(fitter.get("fits")), seen)
                parts["cache"] += storage_bytes(tensors_in(value.get("cache", {})), seen)
                rest = {k: v for k, v in value.items() if k not in ("phi", "fitter", "cache")}
                parts["other"] += storage_bytes(tensors_in(rest), seen)
            elif isinstance(key, str) and key.startswith("graft_"):
                parts["graft"] += storage_bytes(tensors_in(value), seen)
            elif isinstance(key, str) and key.startswith("inv_pre_cond_"):
                parts["phi"] += storage_bytes(tensors_in(value), seen)
            elif isinstance(key, str) and key.startswith("pre_cond_"):
                parts["statistics"] += storage_bytes(tensors_in(value), seen)
            else:
                parts["base"] += storage_bytes(tensors_in(value), seen)
    parts["other"] += storage_bytes(tensors_in(sd["param_groups"]), seen)
    # Keys beside "state" and "param_groups" (other optimizers'; Preconditioned keeps its own entries,
    # the generators' states, a fixed ~5 KB per optimizer, in its first param group: "other").
    parts["top_level"] += storage_bytes(
        tensors_in({k: v for k, v in sd.items() if k not in ("state", "param_groups")}), seen
    )
    parts["total"] = sum(parts.values())
    return parts
