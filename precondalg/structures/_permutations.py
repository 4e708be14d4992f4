"""Static permutations of the permutation structures (`PermutationNetwork`, `ResidualNetwork`)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode


@functools.lru_cache(maxsize=1024)
def _cached_index(perm: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(perm, dtype=torch.long, device=device)


def gather_index(perm: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The gather index of a static permutation, made once per (permutation, device).

    Not cached while tracing (torch.compile, or any dispatch mode such as FakeTensorMode): the tensor
    made there belongs to that trace (a FakeTensor), and a cached one would break every later call.
    """
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return torch.tensor(perm, dtype=torch.long, device=device)
    return _cached_index(perm, device)


@functools.lru_cache(maxsize=1024)
def inverse_permutation(perm: tuple[int, ...]) -> tuple[int, ...]:
    """π⁻¹: gathering by it undoes the gather by π (the transpose of the permutation matrix)."""
    inv = [0] * len(perm)
    for j, p in enumerate(perm):
        inv[p] = j
    return tuple(inv)


def check_permutations(
    owner: str, perms: Sequence[Sequence[int]], depth: int, width: int
) -> tuple[tuple[int, ...], ...]:
    """`perms` as a tuple of tuples after checking it holds `depth` permutations of range(`width`).

    Raises:
        ValueError: another count of permutations, or one that is not a permutation of range(width).
    """
    out = tuple(tuple(int(j) for j in p) for p in perms)
    if len(out) != depth:
        raise ValueError(
            f"{owner}: argument 'perms' must hold N = {depth} permutations (one per layer); got {len(out)}"
        )
    for i, p in enumerate(out):
        if sorted(p) != list(range(width)):
            raise ValueError(
                f"{owner}: perms[{i}] must be a permutation of range({width}); got a sequence of length "
                f"{len(p)} that is not"
            )
    return out
