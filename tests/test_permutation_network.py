"""PermutationNetwork's kernels: bit-identical to the plain layer loop, its index caches, its checks.

The kernels gather with cached index tensors (keyed by the permutation tuple's identity, with the
inverse made from the forward index), multiply with one `torch.bmm` per layer and take only the n
kept rows in the last gather of Aᵀ; these tests hold them equal, bit for bit, to the textbook loop
``Y = B_i @ Y[π_i]`` / ``Y = (B_iᵀ @ Y)[π_i⁻¹]`` (Liao et al. 2023, Eq. 2) and pin the cache's
behaviour.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import precondalg as pa
from precondalg.structures import permutation as pm

f64 = torch.float64


def plain_mv(A: pa.PermutationNetwork, X: torch.Tensor) -> torch.Tensor:
    """A X by the plain loop: pad, then per layer a gather and the k×k blocks (Eq. 2)."""
    k = A.blocks.shape[-1]
    Y = F.pad(X, (0, 0, 0, A.width - A.n))
    for B, perm in zip(A.blocks, A.perms):
        Y = (B @ Y[torch.tensor(perm)].reshape(-1, k, Y.shape[-1])).reshape(Y.shape)
    return Y


def plain_rmv(A: pa.PermutationNetwork, X: torch.Tensor) -> torch.Tensor:
    """Aᵀ X by the plain loop, in reverse, gathering by the inverse permutations (argsort)."""
    k = A.blocks.shape[-1]
    Y = X
    for B, perm in zip(reversed(A.blocks), reversed(A.perms)):
        Y = (B.mT @ Y.reshape(-1, k, Y.shape[-1])).reshape(Y.shape)
        Y = Y[torch.argsort(torch.tensor(perm))]
    return Y[: A.n]


def network(n: int, depth: int, k: int, seed: int, dtype=f64, width=None) -> pa.PermutationNetwork:
    gen = torch.Generator().manual_seed(seed)
    A = pa.permutation_network(n, depth, k, width=width, generator=gen, dtype=dtype)
    return pa.PermutationNetwork(torch.randn(A.blocks.shape, generator=gen, dtype=dtype), A.perms, n)


@pytest.mark.parametrize("dtype", [torch.float32, f64])
@pytest.mark.parametrize(
    ("n", "depth", "k", "width"),
    [(1, 1, 2, None), (7, 3, 2, None), (40, 16, 4, None), (8, 2, 4, 8), (5, 4, 1, None)],
)
@pytest.mark.parametrize("m", [1, 3])
def test_kernels_are_bit_identical_to_the_plain_loop(dtype, n, depth, k, width, m):
    A = network(n, depth, k, seed=n + depth, dtype=dtype, width=width)
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(n, m, generator=gen, dtype=dtype)
    Y = torch.randn(A.width, m, generator=gen, dtype=dtype)
    assert torch.equal(A @ X, plain_mv(A, X))
    assert torch.equal(A.T @ Y, plain_rmv(A, Y))
    assert torch.equal(Y.mT @ A, plain_rmv(A, Y).mT)  # the transposed-layout call of _rmv
    assert torch.equal(pa.gram(A) @ X, plain_rmv(A, plain_mv(A, X)))
    assert torch.equal(A.to_dense(), plain_mv(A, torch.eye(n, dtype=dtype)))


def test_vjp_is_bit_identical_to_the_plain_loop():
    A = network(30, 8, 4, seed=3)
    gen = torch.Generator().manual_seed(1)
    u, g = torch.randn(30, 1, generator=gen, dtype=f64), torch.randn(30, 1, generator=gen, dtype=f64)
    (got,) = torch.func.vjp(lambda phi: pa.gram(phi) @ u, A)[1](g)
    blocks = A.blocks.clone().requires_grad_(True)
    B = pa.PermutationNetwork(blocks, A.perms, A.n)
    (expected,) = torch.autograd.grad(plain_rmv(B, plain_mv(B, u)), blocks, g)
    assert torch.allclose(got.blocks, expected, rtol=1e-13, atol=1e-13)


def test_depth_zero_is_the_embedding():
    A = pa.PermutationNetwork(torch.ones(0, 3, 2, 2, dtype=f64), (), 4)
    x = torch.arange(4.0, dtype=f64)
    assert torch.equal(A @ x, torch.cat([x, torch.zeros(2, dtype=f64)]))
    assert torch.equal(A.T @ torch.arange(6.0, dtype=f64), torch.arange(4.0, dtype=f64))


def test_the_constructor_keeps_tuples_of_ints_and_converts_the_rest():
    perms = ((1, 0, 3, 2), (3, 2, 1, 0))
    A = pa.PermutationNetwork(torch.ones(2, 2, 2, 2), perms, 3)
    assert all(a is p for a, p in zip(A.perms, perms))  # the same objects: the index cache's keys
    B = pa.PermutationNetwork(torch.ones(2, 2, 2, 2), [[1, 0, 3, 2], torch.tensor([3, 2, 1, 0])], 3)
    assert B.perms == perms and all(type(p) is tuple and all(type(j) is int for j in p) for p in B.perms)
    assert torch.equal(A.to_dense(), B.to_dense())


@pytest.mark.parametrize(
    "perm", [(0, 1, 1, 3), (0, 1, 2), (0, 1, 2, 3, 4), (0, 1, 2, 4), (-1, 1, 2, 0), (0, 1, 2, 2**70)]
)
def test_the_constructor_refuses_what_is_not_a_permutation(perm):
    with pytest.raises(ValueError, match=r"perms\[0\] must be a permutation of range\(4\)"):
        pa.PermutationNetwork(torch.ones(1, 2, 2, 2), (perm,), 2)


def test_indices_are_cached_once_per_permutation_object_and_device():
    A = network(9, 3, 2, seed=5)
    pm._cached_index.cache_clear()
    pm._cached_inverse_index.cache_clear()
    x = torch.ones(9, dtype=f64)
    pa.gram(A) @ x
    assert pm._cached_index.cache_info().currsize == 3
    assert pm._cached_inverse_index.cache_info().currsize == 3
    hits = pm._cached_index.cache_info().hits
    # A structure rebuilt from the same permutation objects (unflattening, as torch.func and the
    # optimizer do, or the constructor) hits the cache; no tuple is hashed.
    (grad,) = torch.func.vjp(lambda phi: pa.gram(phi) @ x, A)[1](x)
    pa.PermutationNetwork(A.blocks, A.perms, A.n) @ x
    assert pm._cached_index.cache_info().currsize == 3
    assert pm._cached_index.cache_info().hits >= hits + 6
    # An equal permutation in another tuple object gets its own entry, and the same values.
    copies = tuple(tuple(list(p)) for p in A.perms)
    assert torch.equal(pa.PermutationNetwork(A.blocks, copies, A.n) @ x, A @ x)
    assert pm._cached_index.cache_info().currsize == 6


def test_inverse_index_undoes_the_gather():
    perm = tuple(torch.randperm(50, generator=torch.Generator().manual_seed(0)).tolist())
    index, inverse = pm._index(perm, torch.device("cpu")), pm._inverse_index(perm, torch.device("cpu"))
    assert torch.equal(index[inverse], torch.arange(50)) and torch.equal(inverse[index], torch.arange(50))
    assert torch.equal(inverse, torch.argsort(torch.tensor(perm)))


def test_nothing_is_cached_under_a_dispatch_mode_and_the_count_is_two_n_tilde_k_per_layer():
    A = network(12, 5, 4, seed=2)
    pm._cached_index.cache_clear()
    pm._cached_inverse_index.cache_clear()
    with FlopCounterMode(display=False) as counter:
        pa.gram(A) @ torch.ones(12, dtype=f64)
    assert pm._cached_index.cache_info().currsize == 0 and pm._cached_inverse_index.cache_info().currsize == 0
    assert counter.get_total_flops() // 2 == 2 * 5 * A.width * 4 == pa.gram(A).cost().matvec


def test_vmap_over_columns_and_over_blocks():
    A = network(10, 4, 2, seed=4)
    X = torch.randn(5, 10, dtype=f64, generator=torch.Generator().manual_seed(0))
    G = pa.gram(A)
    assert torch.allclose(torch.func.vmap(lambda x: G @ x)(X), (G @ X.mT).mT, rtol=1e-13, atol=1e-13)
    blocks = torch.stack([A.blocks, 2 * A.blocks])  # doubling every block: A × 2⁴, gram(A) × 2⁸
    got = torch.func.vmap(lambda b: pa.gram(pa.PermutationNetwork(b, A.perms, A.n)) @ X[0])(blocks)
    assert torch.allclose(got, torch.stack([G @ X[0], 2.0 ** (2 * 4) * (G @ X[0])]), rtol=1e-12, atol=1e-12)
