"""The algebra: compose, add, scale, kron, block_diag, inverse, gram, transpose.

QUALITY.md §1, second row: every rule equals the same operation on dense matrices and returns the
promised type.  The promised types are written out below as tables, independently of the library,
and the tables are checked against each module's registered `rules`: a new rule must be added here.
Where no rule applies the result must be the lazy composite (Product, Sum, Inverse, Gram, Transposed),
never a silently densified Dense.  Pairwise operations loop over every partner kind inside one
example (the left operand's kind is a test parameter), so every pair of kinds is exercised.
"""

import importlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import (
    ALL_KINDS,
    DTYPES,
    SOLVABLE_KINDS,
    SQUARE_KINDS,
    UNSOLVABLE_KINDS,
    Draw,
    assert_close,
    cond,
    dense64,
    dims,
    jitter,
    kind_cases,
    make,
    matvec_scale,
    random_tensor,
    seeds,
)

import precondalg as pa

S, D, De, T, N, L = pa.Scalar, pa.Diagonal, pa.Dense, pa.Triangular, pa.Normalization, pa.IdentityPlusLowRank
K, KS, B = pa.Kronecker, pa.KroneckerSum, pa.BlockDiagonal


def closed_with_diagonal(*types):
    """Rule-table entries {(X, X): X, (Diagonal, X): X, (X, Diagonal): X} for each X in `types`."""
    return {pair: X for X in types for pair in ((X, X), (D, X), (X, D))}


COMPOSE_TABLE = {(D, D): D, **closed_with_diagonal(De, T, N), (K, K): K, (B, B): B, (L, L): L}
SCALABLE = {S, D, De, T, N, K, KS, B, pa.Product, pa.Sum}
ADD_TABLE = {(D, D): D, **closed_with_diagonal(De, T, N), (B, B): B}
INVERSE_KEEPS = {S, D, De, T, N, L, K, B, pa.Product, pa.Gram, pa.Eigenbasis}
GRAM_KEEPS = {S, D, K, B}
TRANSPOSE_SELF = {S, D, pa.Gram, pa.Eigenbasis}
TRANSPOSE_KEEPS = {De, L, K, KS, B, pa.Product, pa.Sum, pa.Inverse}

PAIR_EXAMPLES = 3
EXAMPLES = 8


def module(name):
    """The algebra module `precondalg.structures.<name>` (the package attribute is the function)."""
    return importlib.import_module(f"precondalg.structures.{name}")


@pytest.mark.parametrize(
    ("name", "table", "expected"),
    [
        ("compose", "rules", set(COMPOSE_TABLE)),
        ("compose", "scale_rules", {(t,) for t in SCALABLE}),
        ("add", "rules", set(ADD_TABLE)),
        ("inverse", "rules", {(t,) for t in INVERSE_KEEPS | {pa.Transposed, pa.Inverse}}),
        ("gram", "rules", {(t,) for t in GRAM_KEEPS}),
        ("transpose", "rules", {(t,) for t in TRANSPOSE_SELF | TRANSPOSE_KEEPS | {pa.Transposed}}),
    ],
)
def test_rule_tables_are_the_documented_ones(name, table, expected):
    assert set(getattr(module(name), table).types()) == expected


def conforming(xs, ys, pair):
    """Whether two factor/block lists have equal length and every pair satisfies `pair`."""
    return len(xs) == len(ys) and all(pair(x, y) for x, y in zip(xs, ys))


def parts(A, cls, attr):
    """The operands a flattening composite of class `cls` keeps for A (A itself unless A is a cls)."""
    return getattr(A, attr) if isinstance(A, cls) else (A,)


def check_compose_type(out, A, Bm):
    """Assert that compose(A, Bm) returned `out` of the promised type, recursively for factors."""
    if isinstance(A, S) and type(Bm) in SCALABLE:
        assert type(out) is type(Bm)
        return
    if isinstance(Bm, S) and type(A) in SCALABLE:
        assert type(out) is type(A)
        return
    expected = COMPOSE_TABLE.get((type(A), type(Bm)), pa.Product)
    if expected is K and not conforming(A.factors, Bm.factors, lambda a, b: a.shape[1] == b.shape[0]):
        expected = pa.Product
    if expected is B and not conforming(A.blocks, Bm.blocks, lambda a, b: a.shape[1] == b.shape[0]):
        expected = pa.Product
    assert type(out) is expected, f"compose({type(A).__name__}, {type(Bm).__name__}) -> {type(out).__name__}"
    if expected is pa.Product:
        flat = (*parts(A, pa.Product, "factors"), *parts(Bm, pa.Product, "factors"))
        assert len(out.factors) == len(flat) and all(o is f for o, f in zip(out.factors, flat))
    for attr in ("factors", "blocks"):
        if expected in (K, B) and hasattr(out, attr):
            for o, a, b in zip(getattr(out, attr), getattr(A, attr), getattr(Bm, attr)):
                check_compose_type(o, a, b)


def check_add_type(out, A, Bm):
    """Assert that add(A, Bm) returned `out` of the promised type, recursively for blocks."""
    if isinstance(A, S) and isinstance(Bm, S):
        assert type(out) is S
        return
    promoted = tuple(D if isinstance(x, S) else type(x) for x in (A, Bm))
    expected = ADD_TABLE.get(promoted, pa.Sum)
    if expected is B and not conforming(A.blocks, Bm.blocks, lambda a, b: a.shape == b.shape):
        expected = pa.Sum
    assert type(out) is expected, f"add({type(A).__name__}, {type(Bm).__name__}) -> {type(out).__name__}"
    if expected is pa.Sum:
        flat = (*parts(A, pa.Sum, "terms"), *parts(Bm, pa.Sum, "terms"))
        assert len(out.terms) == len(flat) and all(o is t for o, t in zip(out.terms, flat))
    if expected is B:
        for o, a, b in zip(out.blocks, A.blocks, Bm.blocks):
            check_add_type(o, a, b)


def check_transpose_type(out, A):
    """Assert that transpose(A) returned `out` of the promised type, recursively for factors."""
    if type(A) in TRANSPOSE_SELF:
        assert out is A
    elif isinstance(A, pa.Transposed):
        assert out is A.A
    elif type(A) in TRANSPOSE_KEEPS:
        assert type(out) is type(A)
        for attr in ("factors", "blocks", "terms"):
            inner = getattr(A, attr, None)
            if inner is not None:
                inner = inner[::-1] if isinstance(A, pa.Product) else inner
                for o, a in zip(getattr(out, attr), inner):
                    check_transpose_type(o, a)
    else:
        assert type(out) is pa.Transposed and out.A is A


def expected_inverse_type(A):
    """The promised type of inverse(A) for an invertible A."""
    if type(A) in INVERSE_KEEPS:
        return type(A)
    if isinstance(A, pa.Inverse):
        return type(A.A)
    if isinstance(A, pa.Transposed):  # inverse(Xᵀ) = transpose(inverse(X))
        inner = expected_inverse_type(A.A)
        return inner if inner in TRANSPOSE_SELF | TRANSPOSE_KEEPS else pa.Transposed
    return pa.Inverse


def check_gram_type(out, Q):
    """Assert that gram(Q) returned `out` of the promised type, recursively for factors and blocks."""
    if type(Q) not in GRAM_KEEPS:
        assert type(out) is pa.Gram and out.Q is Q
        return
    assert type(out) is type(Q)
    for attr in ("factors", "blocks"):
        for o, q in zip(getattr(out, attr, ()), getattr(Q, attr, ())):
            check_gram_type(o, q)


def partners(kinds, seed, n, dtype):
    """One instance of each kind in `kinds`, of size hint n, each from its own seed: (name, structure)."""
    return [(other, make(other, seed + j + 1, n, dtype)) for j, other in enumerate(kinds)]


# ----------------------------------------------------------------------------------------------
# compose and add: every pair of kinds
# ----------------------------------------------------------------------------------------------
@kind_cases(ALL_KINDS, PAIR_EXAMPLES, n=dims(1, 6))
def test_compose_every_pair(kind, dtype, seed, n):
    A = make(kind, seed, n, dtype)
    m = A.shape[0]
    right_partners = partners(SQUARE_KINDS, seed, n, dtype)
    left_partners = partners(SQUARE_KINDS, seed, m, dtype)
    for (_, Bm), (_, C) in zip(right_partners, left_partners):
        for left, right in ((A, Bm), (C, A)):
            out = pa.compose(left, right)
            ML, MR = dense64(left), dense64(right)
            what = f"compose({type(left).__name__}, {type(right).__name__})"
            assert out.shape == (left.shape[0], right.shape[1]) and out.dtype == dtype
            check_compose_type(out, left, right)
            assert_close(out.to_dense(), ML @ MR, scale=matvec_scale(ML, MR), what=what)
            via_operator = left @ right
            assert type(via_operator) is type(out)
            assert_close(via_operator.to_dense(), ML @ MR, scale=matvec_scale(ML, MR), what=what + " via @")


@kind_cases(SQUARE_KINDS, PAIR_EXAMPLES, n=dims(1, 6))
def test_add_every_pair(kind, dtype, seed, n):
    A = make(kind, seed, n, dtype)
    MA = dense64(A)
    for _, Bm in partners(SQUARE_KINDS, seed, n, dtype):
        MB = dense64(Bm)
        for left, right, ML, MR in ((A, Bm, MA, MB), (Bm, A, MB, MA)):
            out = pa.add(left, right)
            what = f"add({type(left).__name__}, {type(right).__name__})"
            check_add_type(out, left, right)
            assert out.dtype == dtype
            assert_close(out.to_dense(), ML + MR, scale=float((ML.abs() + MR.abs()).max()), what=what)
            assert_close(
                (left + right).to_dense(), ML + MR, scale=float((ML.abs() + MR.abs()).max()), what=what
            )


@kind_cases(ALL_KINDS, EXAMPLES, n=dims(1, 6))
def test_add_same_kind_and_shape(kind, dtype, seed, n):
    """A + A' for a perturbed copy A' (same shape, rectangular kinds included)."""
    A = make(kind, seed, n, dtype)
    A2 = jitter(A, seed)
    out = pa.add(A, A2)
    check_add_type(out, A, A2)
    MA, MB = dense64(A), dense64(A2)
    assert_close(out.to_dense(), MA + MB, scale=float((MA.abs() + MB.abs()).max()), what="add same kind")


def _dense_pair(draw, shapes):
    return [pa.Dense(draw.normal(*s)) for s in shapes]


CONFORMING_CASES = {
    # name: (build(draw) -> (A, B), expected type of A @ B)
    "dense_rect@dense_rect": (lambda d: _dense_pair(d, [(3, 5), (5, 2)]), De),
    "kron_rect@kron_rect": (
        lambda d: (K(*_dense_pair(d, [(3, 5), (2, 4)])), K(*_dense_pair(d, [(5, 2), (4, 3)]))),
        K,
    ),
    "kron_mixed@kron_mixed": (
        lambda d: (K(D(d.magnitudes(3)), T(d.normal(5, 5))), K(De(d.normal(3, 2)), D(d.magnitudes(5)))),
        K,
    ),
    "kron_factor_shapes_disagree": (
        lambda d: (K(*_dense_pair(d, [(2, 2), (3, 3)])), K(*_dense_pair(d, [(3, 3), (2, 2)]))),
        pa.Product,
    ),
    "kron_factor_counts_disagree": (
        lambda d: (K(*_dense_pair(d, [(2, 2), (3, 3)])), K(De(d.normal(6, 6)))),
        pa.Product,
    ),
    "blocks_rect@blocks_rect": (
        lambda d: (B(*_dense_pair(d, [(3, 5), (1, 2)])), B(*_dense_pair(d, [(5, 1), (2, 2)]))),
        B,
    ),
    "block_shapes_disagree": (
        lambda d: (B(*_dense_pair(d, [(1, 1), (2, 2)])), B(*_dense_pair(d, [(2, 2), (1, 1)]))),
        pa.Product,
    ),
    "dense_rect@permutation_network": (
        lambda d: (
            De(d.normal(2, 8)),
            pa.permutation_network(3, 2, 2, generator=d.generator(), dtype=d.dtype),
        ),
        pa.Product,
    ),
    "transposed_network@network": (
        lambda d: (lambda net: (net.T, net))(
            pa.permutation_network(3, 2, 2, generator=d.generator(), dtype=d.dtype)
        ),
        pa.Product,
    ),
}


@kind_cases(list(CONFORMING_CASES), EXAMPLES, argnames="case")
def test_compose_rectangular_and_nonconforming(case, dtype, seed):
    build, expected = CONFORMING_CASES[case]
    A, Bm = build(Draw(seed, dtype))
    out = A @ Bm
    assert type(out) is expected
    check_compose_type(out, A, Bm)
    MA, MB = dense64(A), dense64(Bm)
    assert_close(out.to_dense(), MA @ MB, scale=matvec_scale(MA, MB), what=case)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=EXAMPLES, deadline=None)
@given(seed=seeds(), n=dims(3, 7))
def test_add_blocks_with_different_partitions_is_lazy(dtype, seed, n):
    draw = Draw(seed, dtype)
    A = B(D(draw.magnitudes(1)), De(draw.normal(n - 1, n - 1)))
    Bm = B(De(draw.normal(n - 1, n - 1)), D(draw.magnitudes(1)))
    out = A + Bm
    assert type(out) is pa.Sum
    assert_close(out.to_dense(), dense64(A) + dense64(Bm), what="add blocks")


# ----------------------------------------------------------------------------------------------
# scale, kron, block_diag: every kind (and every pair for kron and block_diag)
# ----------------------------------------------------------------------------------------------
@kind_cases(ALL_KINDS, EXAMPLES, n=dims(1, 6), alpha=st.floats(-2.0, 2.0))
def test_scale(kind, dtype, seed, n, alpha):
    A = make(kind, seed, n, dtype)
    M = dense64(A)
    alpha_t = torch.tensor(alpha, dtype=dtype)
    for out in (
        pa.scale(A, alpha),
        pa.scale(A, alpha_t),
        alpha * A,
        A * alpha_t,
        -(-alpha * A),
        (4 * alpha * A) / 4,
    ):
        if type(A) in SCALABLE:
            assert type(out) is type(A)
        else:
            assert type(out) is pa.Product and out.factors[1] is A and type(out.factors[0]) is S
        assert out.dtype == dtype and out.shape == A.shape
        assert_close(out.to_dense(), float(alpha_t) * M, what="scale")


@kind_cases(ALL_KINDS, PAIR_EXAMPLES, n=dims(1, 4))
def test_kron_every_pair(kind, dtype, seed, n):
    A = make(kind, seed, n, dtype)
    MA = dense64(A).numpy()
    for other, Bm in partners(ALL_KINDS, seed, max(1, n - 1), dtype):
        out = pa.kron(A, Bm)
        assert type(out) is K
        flat = (*parts(A, K, "factors"), *parts(Bm, K, "factors"))
        assert len(out.factors) == len(flat) and all(o is f for o, f in zip(out.factors, flat))
        expected = torch.from_numpy(np.kron(MA, dense64(Bm).numpy()))
        assert_close(out.to_dense(), expected, what=f"kron({kind}, {other})")
        X = random_tensor(seed, out.shape[1], 2, dtype=dtype)
        assert_close(
            out @ X, expected @ X.double(), scale=matvec_scale(expected, X), what=f"kron({kind}, {other}) @ X"
        )


@kind_cases(ALL_KINDS, PAIR_EXAMPLES, n=dims(1, 5))
def test_block_diag_every_pair(kind, dtype, seed, n):
    A = make(kind, seed, n, dtype)
    MA = dense64(A)
    for other, Bm in partners(ALL_KINDS, seed, n, dtype):
        out = pa.block_diag(A, Bm)
        if isinstance(A, D) and isinstance(Bm, D):
            assert type(out) is D
        else:
            assert type(out) is B
            flat = (*parts(A, B, "blocks"), *parts(Bm, B, "blocks"))
            assert len(out.blocks) == len(flat) and all(o is f for o, f in zip(out.blocks, flat))
        assert_close(out.to_dense(), torch.block_diag(MA, dense64(Bm)), what=f"block_diag({kind}, {other})")


# ----------------------------------------------------------------------------------------------
# inverse, gram, transpose: every kind
# ----------------------------------------------------------------------------------------------
@kind_cases(SOLVABLE_KINDS, EXAMPLES, n=dims(1, 7))
def test_inverse(kind, dtype, seed, n):
    A = make(kind, seed, n, dtype)
    M = dense64(A)
    Minv = torch.linalg.inv(M)
    out = pa.inverse(A)
    assert type(out) is expected_inverse_type(A), f"inverse({type(A).__name__}) -> {type(out).__name__}"
    if isinstance(A, (K, B)):
        inner = A.factors if isinstance(A, K) else A.blocks
        outer = out.factors if isinstance(A, K) else out.blocks
        assert [type(o) for o in outer] == [expected_inverse_type(a) for a in inner]
    assert_close(out.to_dense(), Minv, cond=cond(M), what="inverse")
    X = random_tensor(seed, n, 2, dtype=dtype)
    assert_close(out @ X, Minv @ X.double(), cond=cond(M), scale=matvec_scale(Minv, X), what="inverse @ X")
    assert_close(pa.inverse(out).to_dense(), M, cond=cond(M), what="inverse(inverse)")


@kind_cases(UNSOLVABLE_KINDS, 4, n=dims(1, 7))
def test_inverse_of_non_invertible_raises(kind, dtype, seed, n):
    """Non-square: inverse raises at once; square without a solve: applying the lazy inverse raises."""
    A = make(kind, seed, n, dtype)
    X = random_tensor(seed, A.shape[0], dtype=dtype)
    with pytest.raises(pa.NotInvertibleError):
        pa.inverse(A) @ X
    if A.shape[0] != A.shape[1]:
        with pytest.raises(
            pa.NotInvertibleError, match=rf"{type(A).__name__} of shape \({A.shape[0]}, {A.shape[1]}\)"
        ):
            pa.inverse(A)


@kind_cases(ALL_KINDS, EXAMPLES, n=dims(1, 7))
def test_gram(kind, dtype, seed, n):
    A = make(kind, seed, n, dtype)
    M = dense64(A)
    out = pa.gram(A)
    check_gram_type(out, A)
    assert out.shape == (A.shape[1], A.shape[1])
    assert_close(out.to_dense(), M.mT @ M, scale=matvec_scale(M.mT, M), what="gram")
    G = out.to_dense()
    assert_close(G, G.mT.double(), scale=matvec_scale(M.mT, M), what="gram is symmetric")


@kind_cases(ALL_KINDS, EXAMPLES, n=dims(1, 7))
def test_transpose(kind, dtype, seed, n):
    A = make(kind, seed, n, dtype)
    out = pa.transpose(A)
    check_transpose_type(out, A)
    assert_close(out.to_dense(), dense64(A).mT, what="transpose")
    assert type(A.T) is type(out)
