"""Matrix-vector products, transposes and solves of every structure against its dense matrix.

QUALITY.md §1, first row: ``A @ X`` equals ``A.to_dense() @ X`` for X of shape (n,) and (n, k),
``X @ A`` for 2-D X, ``A.T.to_dense()`` equals the dense transpose, ``A.solve(A @ X)`` recovers X where
A is invertible, and `NotInvertibleError` is raised where it is not.  References are computed in float64
from the instance's own leaves (`dense64`), so float32 instances are compared with an exact reference.
"""

import pytest
import torch
from hypothesis import given, settings
from strategies import (
    ALL_KINDS,
    SOLVABLE_KINDS,
    UNSOLVABLE_KINDS,
    assert_close,
    cond,
    dense64,
    dims,
    kind_cases,
    make,
    matvec_scale,
    random_tensor,
    spd,
)

import precondalg as pa

EXAMPLES = 8


@kind_cases(ALL_KINDS, EXAMPLES, n=dims(1, 7), k=dims(1, 4))
def test_matvec_matches_dense(kind, dtype, seed, n, k):
    A = make(kind, seed, n, dtype)
    M = dense64(A)
    m, n_cols = A.shape
    assert M.shape == A.shape
    assert A.dtype == dtype and A.to_dense().dtype == dtype
    assert_close(A.to_dense(), M, what="to_dense")
    for X in (random_tensor(seed, n_cols, dtype=dtype), random_tensor(seed, n_cols, k, dtype=dtype)):
        Y = A @ X
        assert Y.dtype == dtype
        assert_close(Y, M @ X.double(), scale=matvec_scale(M, X), what=f"A @ X, X {tuple(X.shape)}")
    W = random_tensor(seed + 1, k, m, dtype=dtype)
    assert_close(W @ A, W.double() @ M, scale=matvec_scale(W, M), what="X @ A")
    w = random_tensor(seed + 2, m, dtype=dtype)
    assert_close(w @ A, w.double() @ M, scale=matvec_scale(w[None], M), what="x @ A")


@kind_cases(ALL_KINDS, EXAMPLES, n=dims(1, 7))
def test_transpose_matches_dense(kind, dtype, seed, n):
    A = make(kind, seed, n, dtype)
    M = dense64(A)
    At = A.T
    assert At.shape == (A.shape[1], A.shape[0])
    assert_close(At.to_dense(), M.mT, what="A.T.to_dense()")
    X = random_tensor(seed, A.shape[0], 3, dtype=dtype)
    assert_close(At @ X, M.mT @ X.double(), scale=matvec_scale(M.mT, X), what="A.T @ X")
    assert_close(dense64(At.T), M, what="A.T.T")


@kind_cases(SOLVABLE_KINDS, EXAMPLES, n=dims(1, 7), k=dims(1, 4))
def test_solve_recovers_x(kind, dtype, seed, n, k):
    A = make(kind, seed, n, dtype)
    M = dense64(A)
    c = cond(M)
    for X in (random_tensor(seed, n, dtype=dtype), random_tensor(seed, n, k, dtype=dtype)):
        B = A @ X
        assert_close(A.solve(B), X, cond=c, what=f"solve(A @ X), X {tuple(X.shape)}")
        # The transposed solve goes through _rsolve: Aᵀ⁻¹ (Aᵀ X) = X.
        assert_close(A.T.solve(A.T @ X), X, cond=c, what="A.T.solve(A.T @ X)")
        assert_close(A.solve_transpose(A.T @ X), X, cond=c, what="A.solve_transpose(A.T @ X)")
        assert torch.equal(A.solve_transpose(X), A.T.solve(X))  # the same kernel, without building A.T
        Minv = torch.linalg.inv(M)
        assert_close(
            A.solve(X), Minv @ X.double(), cond=c, scale=matvec_scale(Minv, X), what="solve vs dense"
        )


@kind_cases(UNSOLVABLE_KINDS, 4, n=dims(1, 7))
def test_solve_raises_where_not_invertible(kind, dtype, seed, n):
    A = make(kind, seed, n, dtype)
    X = random_tensor(seed, A.shape[0], dtype=dtype)
    # A Gram solves through its factor Q, so the error names Q (a PermutationNetwork or a rectangular Dense).
    owner = type(A.Q).__name__ if isinstance(A, pa.Gram) else type(A).__name__
    with pytest.raises(pa.NotInvertibleError, match=owner):
        A.solve(X)
    with pytest.raises(pa.NotInvertibleError, match=owner):
        A.solve_transpose(X)
    assert issubclass(pa.NotInvertibleError, ValueError)


@settings(max_examples=30, deadline=None)
@given(data=spd(5, -3.0, 3.0))
def test_solve_tolerance_scales_with_conditioning(data):
    """A Dense SPD matrix and its gram with condition numbers up to 10⁶: errors stay within cond·eps."""
    M = torch.as_tensor(data)
    A = pa.Dense(M)
    X = random_tensor(0, 5, 2, dtype=torch.float64)
    assert_close(A.solve(A @ X), X, cond=cond(M), what="Dense SPD solve")
    G = pa.Gram(A)
    assert_close(G.solve(G @ X), X, cond=cond(M) ** 2, what="Gram solve")
