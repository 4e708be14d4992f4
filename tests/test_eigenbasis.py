"""`Eigenbasis`: APO's Eq. 9 against the paper's column-major dense form, PSD, identity at init, cost.

The generic structure tests (matvec, transpose, solve, cost, transforms, errors, algebra) run on it
through `tests/strategies.py` (kind "eigenbasis"); this file checks what is particular to APO's
structure (Bae et al. 2022, Eqs. 9–10; theory check APO-7).
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import seeds
from torch.utils.flop_counter import FlopCounterMode

import precondalg as pa

F64 = torch.float64


def _draw(seed: int, m: int, n: int, dtype=F64):
    """Random B (m×m), A (n×n), S (m×n) with mixed signs, and G (m×n)."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*s, generator=gen, dtype=dtype) for s in [(m, m), (n, n), (m, n), (m, n)])


def _column_major_dense(B: torch.Tensor, A: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """The paper's Eq. 9 literally: (A ⊗ B) diag(vec S)² (A ⊗ B)ᵀ with column-stacking vec."""
    K = torch.kron(A, B)
    return K @ torch.diag(S.mT.reshape(-1) ** 2) @ K.mT


def _vec(G: torch.Tensor) -> torch.Tensor:
    """Column-stacking vec, the paper's."""
    return G.mT.reshape(-1)


def _unvec(v: torch.Tensor, m: int, n: int) -> torch.Tensor:
    return v.reshape(n, m).mT


SIZES = st.integers(1, 5)


@settings(max_examples=40, deadline=None)
@given(seed=seeds(), m=SIZES, n=SIZES, k=st.integers(1, 3))
def test_eq10_equals_the_papers_column_major_eq9(seed, m, n, k):
    B, A, S, G = _draw(seed, m, n)
    P = pa.Eigenbasis(B, A, S)
    paper = _column_major_dense(B, A, S)
    fast = B @ ((B.T @ G @ A) * S * S) @ A.T  # Eq. 10
    scale = float((B.abs() @ (B.abs().T @ G.abs() @ A.abs() * S * S) @ A.abs().T).max())
    tol = 64 * torch.finfo(F64).eps * max(scale, 1.0)
    assert (_unvec(paper @ _vec(G), m, n) - fast).abs().max() <= tol
    assert ((P @ G.flatten()).reshape(m, n) - fast).abs().max() <= tol
    # k columns at once: each column is one matrix G_j.
    Gs = torch.stack([G * (j + 1) for j in range(k)])
    out = P @ Gs.reshape(k, -1).mT
    assert (out.mT.reshape(k, m, n) - torch.stack([fast * (j + 1) for j in range(k)])).abs().max() <= k * tol
    # The dense matrices are the same operator in the two vec conventions: P_row[r(i,j), r(k,l)] =
    # P_col[c(i,j), c(k,l)] with r(i, j) = i·n + j and c(i, j) = j·m + i.
    perm = torch.arange(m * n).reshape(m, n).mT.reshape(-1)  # perm[c(i,j)] = r(i,j)
    row = torch.empty_like(paper)
    row[perm[:, None], perm[None, :]] = paper
    assert (P.to_dense() - row).abs().max() <= tol * m * n
    # Kronecker(B, A) diag(vec_r S)² Kronecker(B, A)ᵀ as a gram of library structures: the same.
    K = pa.Kronecker(pa.Dense(B), pa.Dense(A))
    assert (pa.gram(pa.Diagonal(S.flatten()) @ K.T).to_dense() - P.to_dense()).abs().max() <= tol * m * n


@settings(max_examples=30, deadline=None)
@given(seed=seeds(), m=SIZES, n=SIZES)
def test_psd_and_symmetric_for_any_b_a_s(seed, m, n):
    B, A, S, _ = _draw(seed, m, n)
    P = pa.Eigenbasis(B, A, S)
    M = P.to_dense()
    assert torch.equal(M, M.mT) or (M - M.mT).abs().max() <= 64 * torch.finfo(F64).eps * M.abs().max()
    eig = torch.linalg.eigvalsh(M)
    assert eig[0] >= -1e-12 * eig.abs().max()
    assert P.T is P and pa.transpose(P) is P


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
@pytest.mark.parametrize(("m", "n"), [(1, 1), (1, 4), (3, 1), (2, 3), (4, 4)])
def test_identity_init_is_the_identity(m, n, dtype):
    P = pa.Eigenbasis(torch.eye(m, dtype=dtype), torch.eye(n, dtype=dtype), torch.ones(m, n, dtype=dtype))
    assert P.shape == (m * n, m * n) and P.dims == (m, n) and P.dtype == dtype
    assert torch.equal(P.to_dense(), torch.eye(m * n, dtype=dtype))
    X = torch.randn(m * n, 2, dtype=dtype)
    assert torch.equal(P @ X, X) and torch.equal(P.solve(X), X)


@pytest.mark.parametrize(("m", "n"), [(1, 1), (1, 4), (3, 1), (2, 3), (5, 4)])
def test_cost_counts_four_matmuls_and_one_elementwise_product(m, n):
    B, A, S, G = _draw(0, m, n)
    P = pa.Eigenbasis(B, A, S)
    c = P.cost()
    assert c.stored == m * m + n * n + m * n == sum(x.numel() for x in (B, A, S))
    with FlopCounterMode(display=False) as counter:
        P @ G.flatten()
    # The counter sees the four matmuls (2 flops per multiply-add), not the product with S ⊙ S (mn).
    assert counter.get_total_flops() == 2 * (c.matvec - m * n) == 4 * (m * m * n + m * n * n)


def test_solve_with_a_zero_scale_or_a_singular_factor_is_not_checked():
    """As `Diagonal` with a zero entry: no value check (it would synchronise), the result is not finite."""
    eye, ones = torch.eye(2, dtype=F64), torch.ones(2, 2, dtype=F64)
    S = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=F64)
    for P in (pa.Eigenbasis(eye, eye, S), pa.Eigenbasis(ones, eye, ones), pa.Eigenbasis(eye, 0 * eye, ones)):
        assert not torch.isfinite(P.solve(torch.ones(4, dtype=F64))).all()


def test_inverse_is_an_eigenbasis():
    B, A, S, G = _draw(3, 2, 3)
    P = pa.Eigenbasis(B, A, S)
    Pinv = pa.inverse(P)
    assert type(Pinv) is pa.Eigenbasis and Pinv.dims == (2, 3)
    torch.testing.assert_close(Pinv @ (P @ G.flatten()), G.flatten(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(Pinv @ G.flatten(), P.solve(G.flatten()), rtol=1e-9, atol=1e-9)


def test_a_statistics_scale_multiplies_an_eigenbasis_part_by_exactly_c():
    """ClosedForm's scale c of a part P = φ^power: for an Eigenbasis (linear in S²) only S moves, by
    c^(1/2·power), so P becomes c·P (scaling B, A and S alike would give c⁶·P)."""
    from precondalg.fitters import _scaled

    gen = torch.Generator().manual_seed(3)
    B = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))[0]
    A = torch.linalg.qr(torch.randn(2, 2, generator=gen, dtype=torch.float64))[0]
    S = torch.randn(3, 2, generator=gen, dtype=torch.float64)
    part = pa.Eigenbasis(B, A, S)
    for c, power in ((2.5, 1), (torch.tensor(0.3, dtype=torch.float64), 2)):
        scaled = pa.Eigenbasis(*_scaled(part, [B, A, S], c, power))
        torch.testing.assert_close((scaled @ scaled).to_dense() if power == 2 else scaled.to_dense(),
                                   c * ((part @ part).to_dense() if power == 2 else part.to_dense()),
                                   rtol=1e-12, atol=1e-12)
