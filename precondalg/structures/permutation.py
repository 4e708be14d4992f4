"""`PermutationNetwork(blocks, perms, n)`: LODO's sparse network of permutations and k×k blocks."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import _get_current_dispatch_mode

from precondalg.structures._base import (
    INTEGERS,
    Cost,
    Structure,
    check_tensor,
    not_invertible,
    register_structure,
    static_field,
)


@functools.lru_cache(maxsize=1024)
def _cached_index(perm: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(perm, dtype=torch.long, device=device)


def _index(perm: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The gather index of a static permutation, made once per (permutation, device).

    Not cached while tracing (torch.compile, or any dispatch mode such as FakeTensorMode): the tensor
    made there belongs to that trace (a FakeTensor), and a cached one would break every later call.
    """
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return torch.tensor(perm, dtype=torch.long, device=device)
    return _cached_index(perm, device)


@functools.lru_cache(maxsize=1024)
def _inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(perm)
    for j, p in enumerate(perm):
        inv[p] = j
    return tuple(inv)


@register_structure
class PermutationNetwork(Structure):
    """A = B_N Π_N ⋯ B_1 Π_1 E: LODO's operator (Liao et al. 2023, Eq. 2), an ñ×n matrix.

    E = [Iₙ; 0] embeds Rⁿ into R^ñ by zero padding.  Layer i first permutes, ``(Π_i x)_j = x_{perms[i][j]}``
    (a gather), then applies the block-diagonal B_i whose ñ/k blocks are ``blocks[i, b]`` (each block
    multiplies its k coordinates: y_b = blocks[i, b] @ x_b).  LODO's preconditioner is
    ``α₀ · gram(A)`` = α₀ EᵀAᵀAE (n×n, symmetric PSD by construction), which is α₀I when every block
    is orthogonal.  A matvec costs N·ñ·k multiply-adds (theory check LODO-2).

    Args:
        blocks: (N, ñ/k, k, k) floating tensor of learned blocks.
        perms: N permutations of range(ñ), as sequences of ints (static: stored as tuples).
        n: the input dimension, 1 ≤ n ≤ ñ.

    Example:
        >>> A = permutation_network(3, depth=2, block_size=2, generator=torch.Generator().manual_seed(0))
        >>> A.shape
        (8, 3)
    """

    blocks: torch.Tensor
    perms: tuple[tuple[int, ...], ...] = static_field()
    n: int = static_field()

    def __post_init__(self) -> None:
        check_tensor("PermutationNetwork", "blocks", self.blocks, "(N, ñ/k, k, k)", 4)
        N, nb, k, k2 = self.blocks.shape
        if k != k2 or k < 1:
            raise ValueError(
                f"PermutationNetwork: argument 'blocks' must have shape (N, ñ/k, k, k) with square k×k "
                f"blocks; got {tuple(self.blocks.shape)}"
            )
        width = nb * k
        perms = tuple(tuple(int(j) for j in p) for p in self.perms)
        if len(perms) != N:
            raise ValueError(
                f"PermutationNetwork: argument 'perms' must hold N = {N} permutations (one per layer of "
                f"'blocks' {tuple(self.blocks.shape)}); got {len(perms)}"
            )
        for i, p in enumerate(perms):
            if sorted(p) != list(range(width)):
                raise ValueError(
                    f"PermutationNetwork: perms[{i}] must be a permutation of range({width}) (ñ = "
                    f"{nb}·{k}); got a sequence of length {len(p)} that is not"
                )
        if not isinstance(self.n, INTEGERS) or not 1 <= self.n <= width:
            raise ValueError(
                f"PermutationNetwork: argument 'n' must be an int in [1, {width}]; got {self.n!r}"
            )
        object.__setattr__(self, "perms", perms)

    @property
    def width(self) -> int:
        """ñ, the hidden width."""
        return self.blocks.shape[1] * self.blocks.shape[2]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.width, self.n)

    def _mv(self, X: torch.Tensor) -> torch.Tensor:
        k = self.blocks.shape[-1]
        Y = F.pad(X, (0, 0, 0, self.width - self.n))
        for B, perm in zip(self.blocks, self.perms):
            Y = Y[_index(perm, Y.device)]
            Y = (B @ Y.reshape(-1, k, Y.shape[-1])).reshape(Y.shape)
        return Y

    def _rmv(self, X: torch.Tensor) -> torch.Tensor:
        k = self.blocks.shape[-1]
        Y = X
        for B, perm in zip(reversed(self.blocks), reversed(self.perms)):
            Y = (B.mT @ Y.reshape(-1, k, Y.shape[-1])).reshape(Y.shape)
            Y = Y[_index(_inverse(perm), Y.device)]
        return Y[: self.n]

    def _solve(self, X: torch.Tensor) -> torch.Tensor:
        raise not_invertible(self, f"it is {self.width}×{self.n}; use gram(A) for LODO's n×n operator")

    def _rsolve(self, X: torch.Tensor) -> torch.Tensor:
        raise not_invertible(self, f"it is {self.width}×{self.n}; use gram(A) for LODO's n×n operator")

    def to_dense(self) -> torch.Tensor:
        eye = torch.eye(self.n, dtype=self.blocks.dtype, device=self.blocks.device)
        return self._mv(eye)

    def cost(self) -> Cost:
        N, _, k, _ = self.blocks.shape
        return Cost(stored=self.blocks.numel(), matvec=N * self.width * k, solve=None)


def lodo_width(n: int, block_size: int) -> int:
    """ñ = 2n + k − (2n mod k): the smallest multiple of k strictly greater than 2n (LODO's code rule).

    The paper says ñ = 2n; the authors' official code adds a whole block
    when 2n is already a multiple of k (n = 100, k = 4 gives 204).
    """
    return 2 * n + block_size - (2 * n) % block_size


def permutation_network(
    n: int,
    depth: int = 16,
    block_size: int = 4,
    *,
    width: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> PermutationNetwork:
    """LODO's initialisation: random permutations and random orthogonal k×k blocks.

    Blocks are the Vᵀ factor of the SVD of a standard Gaussian matrix, as in the official code
    (as in the authors' code), so ``gram(A)`` is the n×n identity at initialisation.

    Args:
        n: input dimension.
        depth: N, the number of layers (LODO default 16).
        block_size: k (LODO default 4).
        width: ñ; defaults to `lodo_width(n, block_size)`.  Must be a multiple of k, at least n.
        generator: the random generator for the permutations and blocks.
        dtype: dtype of the blocks (default: torch's default dtype).
        device: device of the blocks.

    Returns:
        A `PermutationNetwork` of shape (ñ, n).
    """
    width = lodo_width(n, block_size) if width is None else width
    if width % block_size or width < n:
        raise ValueError(
            f"permutation_network: 'width' must be a multiple of block_size = {block_size} and at least "
            f"n = {n}; got {width}"
        )
    perms = tuple(tuple(torch.randperm(width, generator=generator).tolist()) for _ in range(depth))
    gauss = torch.randn(
        depth, width // block_size, block_size, block_size, generator=generator, dtype=torch.float64
    )
    blocks = torch.linalg.svd(gauss).Vh.to(dtype=dtype or torch.get_default_dtype(), device=device)
    return PermutationNetwork(blocks, perms, n)
