"""What a checkpoint records of the optimizer that made it, and how two configurations differ (used by
`precondalg.optim.Preconditioned.load_state_dict`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch.utils._pytree as pytree

from precondalg.structures import Structure

__all__ = ["VERSION", "describe", "differences", "static_contexts", "with_contexts"]

VERSION = 3
"""The format of `Preconditioned.configuration`; a checkpoint of another version is refused.  Version 2
added each block's "static" entry (`static_contexts`); version 3 moved the optimizer's own entries
(generators, steps, configuration) from the state dict's top level into its first param group."""


def static_contexts(spec: pytree.TreeSpec) -> list[Any]:
    """The static data of every node of φ's tree spec, in pre-order (plain Python data).

    A structure's static fields are not leaves: the permutations of a `PermutationNetwork`, drawn from
    the optimizer's generator, are the example that cannot be rebuilt from the constructor's arguments.
    A checkpoint (and a pickled or deep-copied optimizer) carries them so that φ comes back exactly.
    """
    if spec.is_leaf():
        return []
    return [spec.context] + [c for child in spec.children() for c in static_contexts(child)]


def with_contexts(spec: pytree.TreeSpec, contexts: list[Any]) -> pytree.TreeSpec:
    """`spec` with its nodes' static data replaced by `contexts` (from `static_contexts`).

    Raises:
        ValueError: `contexts` does not hold one entry per node of `spec`.
    """
    remaining = iter(contexts)

    def rebuild(node: pytree.TreeSpec) -> pytree.TreeSpec:
        if node.is_leaf():
            return node
        context = next(remaining, _MISSING)
        if context is _MISSING:
            raise ValueError("with_contexts: fewer static entries than nodes of φ's tree")
        return pytree.TreeSpec(node.type, context, [rebuild(child) for child in node.children()])

    out = rebuild(spec)
    if next(remaining, _MISSING) is not _MISSING:
        raise ValueError("with_contexts: more static entries than nodes of φ's tree")
    return out


_MISSING = object()


def describe(S: Any) -> str:
    """A short description of a structure's type tree and shapes, e.g. "Kronecker(Triangular 3×3,
    Diagonal 6×6)" (used in error messages and checkpoints)."""
    if not isinstance(S, Structure):
        return type(S).__name__
    children = []
    for field in dataclasses.fields(S):
        value = getattr(S, field.name)
        items = value if isinstance(value, tuple) else (value,)
        children += [describe(c) for c in items if isinstance(c, Structure)]
    if children:
        return f"{type(S).__name__}({', '.join(children)})"
    m, n = S.shape
    # Matrix leaves of another shape than S's (the n×r factors of I + UVᵀ) carry a size of their own.
    others = [f"{leaf.shape[0]}×{leaf.shape[1]}" for leaf in pytree.tree_leaves(S) if leaf.ndim == 2]
    others = [o for o in others if o != f"{m}×{n}"]
    return f"{type(S).__name__} {m}×{n}" + (f" (leaves {', '.join(others)})" if others else "")


def differences(saved: Any, mine: dict[str, Any]) -> list[str]:
    """What differs between a checkpoint's configuration and this optimizer's, in words."""
    if not isinstance(saved, dict) or saved.get("version") != mine["version"]:
        version = saved.get("version") if isinstance(saved, dict) else saved
        return [f"checkpoint format {version!r} → {mine['version']}"]
    out = [
        f"{key} {saved.get(key)!r} → {mine[key]!r}"
        for key in ("optimizer", "base", "position", "objective", "fitter", "groups")
        if saved.get(key) != mine[key]
    ]
    if saved.get("groups") != mine["groups"]:
        return out  # other parameters: their blocks cannot be compared
    theirs, ours = saved.get("blocks", []), mine["blocks"]
    if len(theirs) != len(ours):
        out.append(f"{len(theirs)} preconditioned blocks → {len(ours)}")
    for a, b in zip(theirs, ours):
        changed = [
            f"{key} {a.get(key)!r} → {b[key]!r}"
            for key in ("params", "placement", "structure", "phi")
            if a.get(key) != b[key]
        ]
        if changed:
            shapes = [tuple(s) for s in b["shapes"]]
            out.append(f"block of the parameters of shapes {shapes}: {', '.join(changed)}")
    return out
