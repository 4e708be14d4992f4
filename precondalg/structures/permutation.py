"""`PermutationNetwork(blocks, perms, n)`: LODO's sparse network of permutations and k×k blocks."""

from __future__ import annotations

import functools
from array import array

import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
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


class _Same:
    """A cache key that is its object's identity: hashing it is O(1), where hashing a tuple of ñ ints
    is O(ñ) (tuples do not keep their hash), which a matvec paid once per layer and direction.

    The key holds its object, so the id cannot be reused by another object while the key is cached.
    """

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj


def _as_tensor(perm: tuple[int, ...]) -> torch.Tensor:
    """The ints of `perm` as a (ñ,) int64 CPU tensor, through an ``array("q")`` buffer (a tenth of the
    time of ``torch.tensor`` on a tuple of Python ints: 0.1 s instead of 0.6 s at ñ = 2·10⁶).

    Raises:
        TypeError, OverflowError: an entry that is not an int, or one outside int64.
    """
    return torch.frombuffer(array("q", perm), dtype=torch.long) if perm else torch.empty(0, dtype=torch.long)


@functools.lru_cache(maxsize=1024)
def _cached_index(perm: _Same, device: torch.device) -> torch.Tensor:
    """The gather index of ``perm.obj`` (a tuple of ñ ints) on `device`: (ñ,) int64."""
    return _as_tensor(perm.obj).to(device)


@functools.lru_cache(maxsize=1024)
def _cached_inverse_index(perm: _Same, device: torch.device) -> torch.Tensor:
    """The gather index of the inverse of ``perm.obj``: (ñ,) int64, ``inv[perm[j]] = j``."""
    return _inverse_of(_cached_index(perm, device))


def _inverse_of(index: torch.Tensor) -> torch.Tensor:
    """π⁻¹ from the (ñ,) gather index of π: gathering by it undoes the gather by π (Π⁻¹ = Πᵀ)."""
    return torch.empty_like(index).scatter_(0, index, torch.arange(index.numel(), device=index.device))


def _tracing() -> bool:
    """Whether tensors made now belong to a trace (torch.compile, or any dispatch mode such as
    FakeTensorMode or FlopCounterMode), so must not be cached: a cached FakeTensor would break every
    later call."""
    return torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None


def _index(perm: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The (ñ,) gather index of a static permutation, made once per (permutation object, device).

    Cached by the tuple's identity (the same tuple objects travel through a structure's pytree
    context, so `torch.func` and the optimizer's rebuilt structures hit the cache); not cached while
    tracing (see `_tracing`).
    """
    if _tracing():
        return torch.tensor(perm, dtype=torch.long, device=device)
    return _cached_index(_Same(perm), device)


def _inverse_index(perm: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The (ñ,) gather index of the inverse permutation, cached as `_index` is."""
    if _tracing():
        return _inverse_of(torch.tensor(perm, dtype=torch.long, device=device))
    return _cached_inverse_index(_Same(perm), device)


def _is_permutation(p: tuple[int, ...], width: int) -> bool:
    """Whether the tuple of ints `p` is a permutation of range(`width`): ñ distinct ints in [0, ñ).

    O(ñ) in C (``bincount``), where sorting the Python ints took seconds at ñ = 2·10⁶; in pure Python
    (a set) while tracing, where a tensor made here would belong to the trace.
    """
    if len(p) != width:
        return False
    if not p:
        return True
    if _tracing():
        return min(p) >= 0 and max(p) < width and len(set(p)) == width
    try:
        index = _as_tensor(p)
    except OverflowError:
        return False
    return bool(index.min() >= 0) and bool(index.max() < width) and bool(index.bincount().max() == 1)


def _as_permutation(p: object) -> tuple[int, ...]:
    """`p` as a tuple of ints: `p` itself where it already is one (keeping its identity, the cache
    key of `_index`), else a new tuple."""
    if type(p) is tuple and all(type(j) is int for j in p):
        return p
    return tuple(int(j) for j in p)  # type: ignore[attr-defined]


def checked_permutations(
    owner: str, perms: object, depth: int, width: int, *, layers: str = "", width_note: str = ""
) -> tuple[tuple[int, ...], ...]:
    """`perms` as a tuple of tuples of ints, after checking it holds `depth` permutations of range(`width`)
    (the static part of the permutation structures).

    Args:
        owner: the structure's name, for the messages.
        perms: a sequence of `depth` sequences of ints.
        depth: N, the number of layers.
        width: ñ.
        layers: detail appended to the message on the count of permutations.
        width_note: detail appended to the message on a sequence that is not a permutation.

    Raises:
        ValueError: another count of permutations, or one that is not a permutation of range(width).
    """
    out = tuple(_as_permutation(p) for p in perms)  # type: ignore[attr-defined]
    if len(out) != depth:
        raise ValueError(
            f"{owner}: argument 'perms' must hold N = {depth} permutations (one per layer{layers}); "
            f"got {len(out)}"
        )
    for i, p in enumerate(out):
        if not _is_permutation(p, width):
            raise ValueError(
                f"{owner}: perms[{i}] must be a permutation of range({width}){width_note}; got a sequence "
                f"of length {len(p)} that is not"
            )
    return out


@register_structure
class PermutationNetwork(Structure):
    """A = B_N Π_N ⋯ B_1 Π_1 E: LODO's operator (Liao et al. 2023, Eq. 2), an ñ×n matrix.

    E = [Iₙ; 0] embeds Rⁿ into R^ñ by zero padding.  Layer i first permutes, ``(Π_i x)_j = x_{perms[i][j]}``
    (a gather), then applies the block-diagonal B_i whose ñ/k blocks are ``blocks[i, b]`` (each block
    multiplies its k coordinates: y_b = blocks[i, b] @ x_b).  LODO's preconditioner is
    ``α₀ · gram(A)`` = α₀ EᵀAᵀAE (n×n, symmetric PSD by construction), which is α₀I when every block
    is orthogonal.  A matvec costs N·ñ·k multiply-adds (theory check LODO-2).

    Each layer is one row gather (``index_select``) and one batched ``torch.bmm`` of the ñ/k blocks;
    Aᵀ gathers by the inverse permutations.  The int64 gather indices (forward and inverse, 16 bytes
    per entry and layer) are made once per permutation tuple and device and cached by the tuple's
    identity, so rebuild a network from the same tuples (``A.perms``, as unflattening does): an equal
    tuple in another object gets entries of its own.  The permutations themselves are Python tuples
    of ints, about 36 bytes per entry and layer.

    Args:
        blocks: (N, ñ/k, k, k) floating tensor of learned blocks.
        perms: N permutations of range(ñ), as sequences of ints (static: stored as tuples).
        n: the input dimension, 1 ≤ n ≤ ñ.

    Examples:
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
        perms = checked_permutations(
            "PermutationNetwork", self.perms, N, width,
            layers=f" of 'blocks' {tuple(self.blocks.shape)}", width_note=f" (ñ = {nb}·{k})",
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
        """A X = B_N Π_N ⋯ B_1 Π_1 E X (Liao 2023, Eq. 2), layer by layer.

        Args:
            X: (n, m).

        Returns:
            (ñ, m): per layer a row gather by π_i, then one batched (ñ/k, k, k) @ (ñ/k, k, m) product.
        """
        k, m = self.blocks.shape[-1], X.shape[-1]
        Y = F.pad(X, (0, 0, 0, self.width - self.n))
        # unbind, not indexing: its backward stacks the N block gradients once, where blocks[i]'s
        # backward would materialise a zero (N, ñ/k, k, k) tensor per layer.
        for B, perm in zip(self.blocks.unbind(0), self.perms):
            Y = torch.bmm(B, Y.index_select(0, _index(perm, Y.device)).reshape(-1, k, m)).reshape(-1, m)
        return Y

    def _rmv(self, X: torch.Tensor) -> torch.Tensor:
        """Aᵀ X = Eᵀ Π_1ᵀ B_1ᵀ ⋯ Π_Nᵀ B_Nᵀ X (Liao 2023, Eq. 2), layer by layer in reverse.

        Args:
            X: (ñ, m).

        Returns:
            (n, m): per layer one batched B_iᵀ product, then a row gather by π_i⁻¹ (Π_iᵀ = Π_i⁻¹); the
            last gather takes only the n rows that Eᵀ keeps.
        """
        k, m, N = self.blocks.shape[-1], X.shape[-1], self.blocks.shape[0]
        # The tuple of unbound layers is reversed, not the tensor (reversed(tensor) is a flip: a copy
        # of all N·ñ·k values, and another in the backward).
        layers = self.blocks.unbind(0)
        Y = X
        for i in range(N - 1, -1, -1):
            Y = torch.bmm(layers[i].mT, Y.reshape(-1, k, m)).reshape(-1, m)
            index = _inverse_index(self.perms[i], Y.device)
            Y = Y.index_select(0, index if i else index[: self.n])
        return Y if N else Y[: self.n]

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


def permutation_network_gram_vjp(
    A: PermutationNetwork, u: torch.Tensor, c: torch.Tensor
) -> PermutationNetwork:
    """⟨c, d(AᵀA u)⟩ = ⟨Ac, dA u⟩ + ⟨Au, dA c⟩ as blocks: the hypergradient of LODO's G = AᵀA (Liao
    2023, Eq. 2) by backpropagation through A's layers.

    One forward pass of A on [u, c] keeps each layer's permuted input Z_i = Π_i Y_{i−1}; the output's
    cotangent is [Ac, Au] (the forward outputs, swapped); going back, block b of layer i gets
    Σ_columns δ_i[b] Z_i[b]ᵀ and δ_{i−1} = Π_iᵀ B_iᵀ δ_i.  Equal to `torch.func.vjp` of φ ↦ gram(φ) @ u
    (tests), in one pass each way instead of two.

    Args:
        A: the network (ñ×n).
        u: (n, m), the vector G was applied to.
        c: (n, m), the cotangent of G u.

    Returns:
        A `PermutationNetwork` with A's permutations whose blocks are the gradient, (N, ñ/k, k, k).
    """
    k, m = A.blocks.shape[-1], u.shape[-1]
    Y = F.pad(torch.cat([u, c], dim=-1), (0, 0, 0, A.width - A.n))
    layers = A.blocks.unbind(0)
    inputs = []
    for B, perm in zip(layers, A.perms):
        Z = Y.index_select(0, _index(perm, Y.device)).reshape(-1, k, 2 * m)
        inputs.append(Z)
        Y = torch.bmm(B, Z).reshape(-1, 2 * m)
    delta = torch.cat([Y[:, m:], Y[:, :m]], dim=-1)
    grads = [None] * len(layers)
    for i in range(len(layers) - 1, -1, -1):
        D = delta.reshape(-1, k, 2 * m)
        grads[i] = torch.bmm(D, inputs[i].mT)
        delta = torch.bmm(layers[i].mT, D).reshape(-1, 2 * m)
        delta = delta.index_select(0, _inverse_index(A.perms[i], delta.device))
    # Unflattening keeps A's permutation tuples (the index cache's keys) and skips re-validating them.
    blocks = torch.stack(grads) if grads else torch.zeros_like(A.blocks)
    return pytree.tree_unflatten([blocks], pytree.tree_structure(A))


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
