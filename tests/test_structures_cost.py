"""`cost()`: stored values, multiply-adds of a matvec and of a solve.

`stored` must equal the number of values in the leaves, for every kind.  For the structures whose
matvec is matrix products, `matvec` is measured with `torch.utils.flop_counter.FlopCounterMode`, which
counts 2 flops per multiply-add of mm/bmm/matmul, on a matvec with one vector.  For the elementwise and
composite structures the documented formulas are asserted, computed here from the parts' shapes.
"""

import math

import pytest
import torch
from strategies import (
    ALL_KINDS,
    KINDS,
    Draw,
    dims,
    kind_cases,
    leaf_count,
    make,
    random_tensor,
)
from torch.utils.flop_counter import FlopCounterMode

import precondalg as pa


def _kron_of_dense(draw, n):
    shapes = [(draw.integer(1, 5), draw.integer(1, 5)) for _ in range(draw.integer(2, 3))]
    return pa.Kronecker(*[pa.Dense(draw.normal(*s)) for s in shapes])


MATMUL_BUILDERS = {
    "dense": lambda draw, n: pa.Dense(draw.normal(n, n)),
    "dense_rect": lambda draw, n: pa.Dense(draw.normal(n + 2, n)),
    "triangular": lambda draw, n: pa.Triangular(draw.normal(n, n)),
    "low_rank": lambda draw, n: pa.IdentityPlusLowRank(draw.normal(n, 2), draw.normal(n, 2)),
    "permutation_network": lambda draw, n: make(
        "permutation_network", int(draw.rng.integers(2**31)), n, draw.dtype
    ),
    "kronecker_of_dense": _kron_of_dense,
    "gram_of_dense": lambda draw, n: pa.Gram(pa.Dense(draw.normal(n + 1, n))),
    "product_of_dense": lambda draw, n: pa.Product(
        pa.Dense(draw.normal(2, n + 1)), pa.Dense(draw.normal(n + 1, n))
    ),
}


@kind_cases(list(MATMUL_BUILDERS), 10, argnames="name", n=dims(1, 7))
def test_matvec_cost_matches_flop_counter(name, dtype, seed, n):
    A = MATMUL_BUILDERS[name](Draw(seed, dtype), n)
    x = random_tensor(seed, A.shape[1], dtype=dtype)
    with FlopCounterMode(display=False) as counter:
        A @ x
    assert counter.get_total_flops() == 2 * A.cost().matvec


def expected_cost(A):
    """The documented cost of A, from its parts' shapes (see each class's `cost`)."""
    if isinstance(A, pa.Scalar):
        return (1, A.n, A.n)
    if isinstance(A, pa.Diagonal):
        n = A.shape[0]
        return (n, n, n)
    if isinstance(A, pa.Triangular):
        n = A.shape[0]
        return (n * n, n * n, n * (n + 1) // 2)
    if isinstance(A, pa.Normalization):
        n = A.shape[0]
        return (2 * n - 1, 2 * n - 1, 2 * n - 1)
    if isinstance(A, pa.Dense):
        m, n = A.shape
        return (m * n, m * n, n**3 // 3 + n * n if m == n else None)
    if isinstance(A, pa.IdentityPlusLowRank):
        n, r = A.U.shape
        return (2 * n * r, 2 * n * r, 2 * n * r + n * r * r + r**3 // 3 + r * r)
    if isinstance(A, pa.PermutationNetwork):
        N, nb, k, _ = A.blocks.shape
        return (N * nb * k * k, N * nb * k * k, None)
    if isinstance(A, pa.ResidualNetwork):
        return (A.weights.numel(), A.weights.numel(), None)
    if isinstance(A, pa.Eigenbasis):
        # Eq. 10: four matmuls (m²n + mn² per side) and the product with S ⊙ S; the solve adds an LU of
        # B and of A and applies triangular solves instead of the matmuls.
        m, n = A.dims
        apply = 2 * (m * m * n + m * n * n) + m * n
        return (m * m + n * n + m * n, apply, m**3 // 3 + n**3 // 3 + apply)
    parts = [expected_cost(p) for p in _parts(A)]
    stored = sum(p[0] for p in parts)
    solves = [p[2] for p in parts]
    any_missing = None in solves
    if isinstance(A, pa.Kronecker):
        # Factor i runs once per combination of the other axes: outputs of factors < i, inputs of > i.
        rows, cols = [f.shape[0] for f in A.factors], [f.shape[1] for f in A.factors]
        reps = [math.prod(rows[:i]) * math.prod(cols[i + 1 :]) for i in range(len(parts))]
        square = rows == cols
        return (
            stored,
            sum(p[1] * r for p, r in zip(parts, reps)),
            None if any_missing or not square else sum(s * r for s, r in zip(solves, reps)),
        )
    if isinstance(A, pa.KroneckerSum):
        n = A.shape[0]
        return (
            stored,
            sum(p[1] * (n // t.shape[0]) for p, t in zip(parts, A.terms)) + n * (len(parts) - 1),
            None,
        )
    if isinstance(A, pa.BlockDiagonal):
        square = all(b.shape[0] == b.shape[1] for b in A.blocks)
        return (stored, sum(p[1] for p in parts), None if any_missing or not square else sum(solves))
    if isinstance(A, pa.Product):
        return (stored, sum(p[1] for p in parts), None if any_missing else sum(solves))
    if isinstance(A, pa.Sum):
        return (stored, sum(p[1] for p in parts) + A.shape[0] * (len(parts) - 1), None)
    (inner,) = parts
    if isinstance(A, pa.Transposed):
        return inner
    if isinstance(A, pa.Inverse):
        return (inner[0], inner[2], inner[1])
    assert isinstance(A, pa.Gram), type(A)
    return (inner[0], 2 * inner[1], None if inner[2] is None else 2 * inner[2])


def _parts(A):
    for attr in ("factors", "terms", "blocks"):
        if hasattr(A, attr):
            return getattr(A, attr)
    return (A.Q,) if isinstance(A, pa.Gram) else (A.A,)


@kind_cases(ALL_KINDS, 10, n=dims(1, 7))
def test_cost_stored_and_formulas(kind, dtype, seed, n):
    A = make(kind, seed, n, dtype)
    c = A.cost()
    assert isinstance(c, pa.Cost)
    assert c.stored == leaf_count(A)
    assert (c.stored, c.matvec, c.solve) == expected_cost(A)
    assert (c.solve is not None) == KINDS[kind].solvable
    assert all(isinstance(v, int) and v >= 0 for v in (c.stored, c.matvec, c.solve or 0))


def test_inverse_of_a_structure_without_solve_is_refused_at_construction():
    with pytest.raises(pa.NotInvertibleError, match="Sum has no solve: its inverse could never be applied"):
        pa.Inverse(pa.Sum(pa.Diagonal(torch.ones(2)), pa.Dense(torch.eye(2))))
