"""Matrix Lie groups: membership, projection onto the Lie algebra, and the multiplicative step.

QUALITY.md §1, third row, for every group structure (Scalar, Diagonal, square Dense, Triangular,
Normalization, and Kronecker and BlockDiagonal of these):

- `lie_project` is the orthogonal Frobenius projection onto the Lie algebra: it lands in the algebra
  (pattern checked entry by entry), fixes algebra elements, is idempotent, and ⟨E − Π(E), Z⟩ = 0 for
  random algebra elements Z.
- `lie_step` keeps the type and the sparsity pattern bit-exactly, equals (I − μE)Q for the simple groups
  (and factor/block-wise), is within the O(μ²) bound of (I − μE)Q for Kronecker products, and keeps Q
  invertible.
- `is_lie_group` is false for every other structure, and the Lie functions reject them.
"""

import math

import pytest
import torch
import torch.utils._pytree as pytree
from hypothesis import strategies as st
from strategies import (
    ALL_KINDS,
    DTYPES,
    GROUP_KINDS,
    KINDS,
    NON_GROUP_KINDS,
    TOL_EPS,
    Draw,
    assert_close,
    cond,
    dense64,
    dims,
    kind_cases,
    make,
    matvec_scale,
    random_tensor,
)

import precondalg as pa

EXAMPLES = 15


def children(A):
    """The sub-structures of a Kronecker, KroneckerSum or BlockDiagonal (None for a simple structure)."""
    for attr in ("factors", "terms", "blocks"):
        if hasattr(A, attr):
            return getattr(A, attr)
    return None


def simple_parts(Q, *others):
    """Walk Q and structures of matching shape in parallel, yielding tuples of simple-group parts.

    A Kronecker Q is matched with Kronecker factors or KroneckerSum terms, a BlockDiagonal with blocks;
    the walk asserts that the other structures have the same nesting.
    """
    inner = children(Q)
    if inner is None:
        yield (Q, *others)
        return
    expected = (pa.Kronecker, pa.KroneckerSum) if isinstance(Q, pa.Kronecker) else (pa.BlockDiagonal,)
    for o in others:
        assert isinstance(o, expected), f"{type(o).__name__} does not mirror {type(Q).__name__}"
        assert len(children(o)) == len(inner)
    for group in zip(inner, *[children(o) for o in others]):
        yield from simple_parts(*group)


def pattern_mask(Q):
    """The entries a member of Q's (simple) group or Lie algebra may hold non-zero."""
    n = Q.shape[0]
    ones = torch.ones(n, n, dtype=torch.bool)
    if isinstance(Q, (pa.Scalar, pa.Diagonal)):
        return torch.eye(n, dtype=torch.bool)
    if isinstance(Q, pa.Triangular):
        return torch.triu(ones)
    if isinstance(Q, pa.Normalization):
        mask = torch.eye(n, dtype=torch.bool)
        mask[:, -1] = True
        return mask
    return ones


def assert_in_pattern(q, x):
    """Assert that the simple structure x has exactly Q's pattern: zeros outside it, bit for bit."""
    assert type(x) is type(q), f"{type(x).__name__} is not a {type(q).__name__}"
    X = x.to_dense()
    assert torch.all(X[~pattern_mask(q)] == 0), f"{type(x).__name__} leaves its pattern"
    if isinstance(x, pa.Scalar):
        assert torch.equal(X, x.alpha * torch.eye(x.n, dtype=X.dtype))
    if isinstance(x, pa.Triangular):
        assert torch.all(x.R.tril(-1) == 0), "the stored lower triangle must stay exactly zero"


def algebra_element(Q, draw):
    """A random element of the Lie algebra of Q's group, as a structure."""
    n = Q.shape[0]
    if isinstance(Q, pa.Kronecker):
        return pa.KroneckerSum(*[algebra_element(f, draw) for f in Q.factors])
    if isinstance(Q, pa.BlockDiagonal):
        return pa.BlockDiagonal(*[algebra_element(b, draw) for b in Q.blocks])
    if isinstance(Q, pa.Scalar):
        return pa.Scalar(draw.normal(), n)
    if isinstance(Q, pa.Diagonal):
        return pa.Diagonal(draw.normal(n))
    if isinstance(Q, pa.Triangular):
        return pa.Triangular(draw.normal(n, n))
    if isinstance(Q, pa.Normalization):
        return pa.Normalization(draw.normal(n), draw.normal(n - 1))
    return pa.Dense(draw.normal(n, n))


def spectral_norm(M):
    """‖M‖₂ in float64."""
    return float(torch.linalg.matrix_norm(M.double(), ord=2))


def first_order_bound(Q, R, mu):
    """A bound on ‖step(Q) − (I − μR)Q‖₂ for the factor-wise step.

    Simple groups step exactly (bound 0); a Kronecker product steps factor-wise,
    ⊗(I − μRᵢ)Qᵢ − (I − μΣ I⊗Rᵢ⊗I)⊗Qᵢ, whose norm is at most (Π(1 + aᵢ) − 1 − Σaᵢ)·‖Q‖₂ with
    aᵢ = μ‖Rᵢ‖₂ (the sum of all products of two or more of the μRᵢ): O(μ²).  A block-diagonal Q
    takes the largest bound of its blocks.
    """
    if isinstance(Q, pa.BlockDiagonal):
        return max(first_order_bound(q, r, mu) for q, r in zip(Q.blocks, R.blocks))
    if isinstance(Q, pa.Kronecker):
        a = [mu * spectral_norm(dense64(t)) for t in R.terms]
        return (math.prod(1 + x for x in a) - 1 - sum(a)) * spectral_norm(dense64(Q))
    return 0.0


@kind_cases(ALL_KINDS, 3, n=dims(1, 6))
def test_is_lie_group(kind, dtype, seed, n):
    assert pa.is_lie_group(make(kind, seed, n, dtype)) is KINDS[kind].group


@kind_cases(GROUP_KINDS, EXAMPLES, n=dims(1, 7))
def test_lie_project_is_the_orthogonal_projection(kind, dtype, seed, n):
    Q = make(kind, seed, n, dtype, positive=True)
    draw = Draw(seed + 1, dtype)
    E = draw.normal(n, n)
    P = pa.lie_project(Q, E)
    assert P.shape == Q.shape and P.dtype == dtype
    for q, p in simple_parts(Q, P):
        assert_in_pattern(q, p)
    PE = P.to_dense()
    # Idempotent.
    assert_close(pa.lie_project(Q, PE).to_dense(), dense64(P), what="projection is idempotent")
    eps = torch.finfo(dtype).eps
    for _ in range(3):
        Z = algebra_element(Q, draw)
        ZD = dense64(Z)
        # Fixes the algebra.
        assert_close(pa.lie_project(Q, Z.to_dense()).to_dense(), ZD, what="projection fixes the algebra")
        # Orthogonal: the residual is orthogonal to every algebra element.
        inner = float(((E.double() - PE.double()) * ZD).sum())
        bound = TOL_EPS * eps * float(E.double().norm()) * float(ZD.norm())
        assert abs(inner) <= bound, f"<E - P(E), Z> = {inner:.3g} > {bound:.3g}"


@kind_cases(GROUP_KINDS, EXAMPLES, n=dims(1, 7), m=st.integers(1, 4))
def test_lie_project_gram_is_the_projection_of_the_grams(kind, dtype, seed, n, m):
    """Π_𝔤(AAᵀ − BBᵀ) for each simple factor, against `lie_project` of the dense difference of Grams."""
    Q = make(kind, seed, n, dtype, positive=True)
    draw = Draw(seed + 2, dtype)
    for (q,) in simple_parts(Q):
        k = q.shape[0]
        A, B = draw.normal(k, m), draw.normal(k, m)
        got = pa.lie_project_gram(q, A, B)
        q64, A64, B64 = pytree.tree_map(lambda t: t.double(), q), A.double(), B.double()
        want = pa.lie_project(q64, A64 @ A64.mT - B64 @ B64.mT)
        assert type(got) is type(want)
        scale = float((A64.abs() @ A64.abs().mT + B64.abs() @ B64.abs().mT).max())
        assert_close(got.to_dense(), want.to_dense(), scale=scale, what="lie_project_gram vs lie_project")


@pytest.mark.parametrize("group", ["scalar", "diagonal", "normalization"])
def test_lie_project_gram_never_forms_the_n_by_n_matrix_of_a_sparse_algebra(group, monkeypatch):
    """A diagonal PSGD preconditioner on a large tensor must not cost n² memory: the sparse algebras'
    rules read A and B directly (the n×n difference of Grams would be refused here)."""
    n = 7
    Q = {
        "scalar": pa.Scalar(torch.tensor(2.0), n),
        "diagonal": pa.Diagonal(torch.ones(n)),
        "normalization": pa.Normalization(torch.ones(n), torch.zeros(n - 1)),
    }[group]

    def no_dense(Q, E):
        raise AssertionError(f"lie_project_gram formed the {tuple(E.shape)} matrix")

    monkeypatch.setattr(pa.structures.lie, "lie_project", no_dense)
    A, B = torch.randn(n, 3), torch.randn(n, 3)
    assert type(pa.lie_project_gram(Q, A, B)) is type(Q)


@kind_cases(GROUP_KINDS, EXAMPLES, n=dims(1, 7), mu=st.floats(0.01, 0.99))
def test_lie_step_keeps_structure_and_invertibility(kind, dtype, seed, n, mu):
    Q = make(kind, seed, n, dtype, positive=True)
    E = random_tensor(seed, n, n, dtype=dtype)
    R = pa.lie_project(Q, E)
    # PSGD's normalised step μ/max_abs(R) with μ in (0, 1) keeps a positive diagonal positive.  For a
    # GL(n) part it does not bound ‖R‖₂ (≤ n·max_abs), so μ is also divided by the largest Dense
    # part's size: then μ‖R‖₂ < 1 there and (I − μR) is invertible as well.
    dense_size = max([q.shape[0] for (q,) in simple_parts(Q) if isinstance(q, pa.Dense)], default=1)
    step = mu / float(pa.max_abs(R)) / dense_size
    Qn = pa.lie_step(Q, R, step)
    assert type(Qn) is type(Q) and Qn.shape == Q.shape and Qn.dtype == dtype
    # A dense E is projected first: the same step.
    assert_close(pa.lie_step(Q, E, step).to_dense(), dense64(Qn), what="lie_step with a dense E")
    for q, r, qn in simple_parts(Q, R, Qn):
        assert_in_pattern(q, qn)
        I = torch.eye(q.shape[0], dtype=torch.float64)
        expected = (I - step * dense64(r)) @ dense64(q)
        assert_close(
            qn.to_dense(),
            expected,
            scale=matvec_scale(I - step * dense64(r), dense64(q)),
            what=f"{type(q).__name__} step = (I - mu E) Q",
        )
        if isinstance(q, pa.Dense):
            s_new = float(torch.linalg.svdvals(dense64(qn)).min())
            s_old = float(torch.linalg.svdvals(dense64(q)).min())
            assert s_new >= (1 - step * spectral_norm(dense64(r))) * s_old * (1 - 1e-3)
        else:
            assert torch.all(qn.to_dense().diagonal() > 0), "the diagonal must stay positive"
    # The whole step: (I − μE)Q to first order (exactly for the simple groups).
    M, RD = dense64(Q), dense64(R)
    target = (torch.eye(n, dtype=torch.float64) - step * RD) @ M
    err = spectral_norm(dense64(Qn) - target)
    tol = TOL_EPS * torch.finfo(dtype).eps * matvec_scale(torch.eye(n) + step * RD.abs(), M) * n
    assert err <= first_order_bound(Q, R, step) + tol
    X = random_tensor(seed + 1, n, 2, dtype=dtype)
    assert_close(Qn.solve(Qn @ X), X, cond=cond(dense64(Qn)), what="the stepped Q is invertible")


@kind_cases(["kronecker", "block_diagonal"], EXAMPLES, n=dims(4, 7))
def test_kronecker_step_error_is_second_order(kind, dtype, seed, n):
    """Halving μ divides the deviation from (I − μE)Q by about four (where it is above rounding)."""
    Q = make(kind, seed, n, dtype, positive=True)
    R = pa.lie_project(Q, random_tensor(seed, n, n, dtype=dtype))
    M, RD = dense64(Q), dense64(R)
    mu = 0.1 / float(pa.max_abs(R))
    errs = []
    for step in (mu, mu / 2):
        target = (torch.eye(n, dtype=torch.float64) - step * RD) @ M
        errs.append(spectral_norm(dense64(pa.lie_step(Q, R, step)) - target))
        assert errs[-1] <= first_order_bound(Q, R, step) + TOL_EPS * torch.finfo(dtype).eps * n
    if errs[0] > 1e4 * torch.finfo(dtype).eps:
        assert 2.5 <= errs[0] / errs[1] <= 5.0, f"error ratio {errs[0] / errs[1]:.3g} is not ~4"


@kind_cases(GROUP_KINDS, 5, n=dims(1, 6))
def test_repeated_steps_stay_in_the_group(kind, dtype, seed, n):
    Q = make(kind, seed, n, dtype, positive=True)
    Q0 = Q
    for i in range(5):
        R = pa.lie_project(Q, random_tensor(seed + i, n, n, dtype=dtype))
        dense_size = max([q.shape[0] for (q,) in simple_parts(Q) if isinstance(q, pa.Dense)], default=1)
        Q = pa.lie_step(Q, R, 0.5 / float(pa.max_abs(R)) / dense_size)
    for q0, q in simple_parts(Q0, Q):
        assert_in_pattern(q0, q)
    assert torch.isfinite(Q.to_dense()).all()
    assert cond(Q.to_dense()) < 1e6


@kind_cases(NON_GROUP_KINDS, 3, n=dims(1, 6))
def test_lie_functions_reject_non_groups(kind, dtype, seed, n):
    A = make(kind, seed, n, dtype)
    E = random_tensor(seed, *A.shape, dtype=dtype)
    name, shape = type(A).__name__, rf"\({A.shape[0]}, {A.shape[1]}\)"
    with pytest.raises(TypeError, match=rf"lie_project: {name} of shape {shape} is not a matrix Lie group"):
        pa.lie_project(A, E)
    with pytest.raises(TypeError, match=rf"lie_step: {name} of shape {shape} is not a matrix Lie group"):
        pa.lie_step(A, E, 0.1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_lie_step_rejects_e_outside_the_algebra(dtype):
    draw = Draw(0, dtype, positive=True)
    tri = pa.Triangular(draw.magnitudes(3, 3))
    with pytest.raises(TypeError, match="not in the Lie algebra of Triangular"):
        pa.lie_step(tri, pa.Dense(draw.normal(3, 3)), 0.1)
    kron = pa.Kronecker(tri, pa.Diagonal(draw.magnitudes(2)))
    with pytest.raises(TypeError, match="KroneckerSum with 2 terms for a Kronecker Q; got Dense"):
        pa.lie_step(kron, pa.Dense(draw.normal(6, 6)), 0.1)
    blocks = pa.BlockDiagonal(tri, pa.Diagonal(draw.magnitudes(2)))
    with pytest.raises(TypeError, match="BlockDiagonal with 2 blocks for a BlockDiagonal Q; got Diagonal"):
        pa.lie_step(blocks, pa.Diagonal(draw.normal(5)), 0.1)
    with pytest.raises(ValueError, match=r"lie_project: E must have Q's shape \(3, 3\); got \(3, 4\)"):
        pa.lie_project(tri, draw.normal(3, 4))
    other = torch.float32 if dtype == torch.float64 else torch.float64
    with pytest.raises(TypeError, match=f"lie_project: E must be a tensor of dtype {dtype}; got {other}"):
        pa.lie_project(tri, draw.normal(3, 3).to(other))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_max_abs_is_the_largest_stored_value(dtype):
    draw = Draw(1, dtype)
    d, c = draw.normal(4), draw.normal(3)
    assert pa.max_abs(pa.Normalization(d, c)) == torch.cat([d, c]).abs().max()
    K = pa.Kronecker(pa.Diagonal(d), pa.Scalar(torch.tensor(-7.0, dtype=dtype), 2))
    assert pa.max_abs(K) == 7.0
