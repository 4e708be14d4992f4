"""Families: initial φ, the preconditioner they form, and their closed-form hypergradient VJPs."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import vjp

import precondalg as pa
from precondalg import families

F64 = torch.float64
WITH_VJP = {
    "dense_gram": families.dense_gram(),
    "normalized_dense_gram": families.normalized_dense_gram(),
    "low_rank_gram": families.low_rank_gram(2, std=0.5),
    "scalar": families.scalar(0.3),
    "diagonal": families.diagonal(0.3),
}


@settings(max_examples=20, deadline=None)
@given(
    name=st.sampled_from(sorted(WITH_VJP)),
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(2, 6),
    k=st.integers(1, 3),
)
def test_closed_form_vjp_equals_the_generic_vjp(name, seed, n, k):
    family = WITH_VJP[name]
    gen = torch.Generator().manual_seed(seed)
    phi = family.init((n,), torch.empty((), dtype=F64), gen)
    phi = torch.utils._pytree.tree_map(
        lambda x: x + 0.3 * torch.randn(x.shape, generator=gen, dtype=F64), phi
    )
    u, c = torch.randn(n, k, generator=gen, dtype=F64), torch.randn(n, k, generator=gen, dtype=F64)
    form = family.hyper_form or family.form
    _, pullback = vjp(lambda p: form(p) @ u, phi)
    (generic,) = pullback(c)
    closed = family.hyper_vjp(phi, u, c)
    assert type(closed) is type(generic)
    for a, b in zip(torch.utils._pytree.tree_leaves(closed), torch.utils._pytree.tree_leaves(generic)):
        assert (a - b).abs().max() <= 1e-13 * b.abs().max().clamp_min(1e-300)


def test_initial_preconditioners():
    like = torch.empty((), dtype=F64)
    eye = torch.eye(4, dtype=F64)
    assert torch.equal(
        families.dense_gram().form(families.dense_gram().init((4,), like, None)).to_dense(), eye
    )
    norm = families.normalized_dense_gram()
    assert torch.allclose(norm.form(norm.init((4,), like, None)).to_dense(), eye, rtol=0, atol=1e-15)
    kron = families.kronecker_gram()
    P = kron.form(kron.init((2, 3), like, None))
    assert isinstance(P, pa.Kronecker) and torch.equal(P.to_dense(), torch.eye(6, dtype=F64))
    low = families.low_rank_gram(2, std=0.0)
    assert torch.equal(low.form(low.init((4,), like, torch.Generator())).to_dense(), eye)
    assert families.scalar(0.5).init((3, 2), like, None).n == 6
    assert torch.equal(families.diagonal(0.5).init((4,), like, None).d, torch.full((4,), 0.5, dtype=F64))


def test_low_rank_init_draws_from_the_generator_and_checks_rank():
    like = torch.empty((), dtype=F64)
    family = families.low_rank_gram(3, std=1e-3)
    a = family.init((5,), like, torch.Generator().manual_seed(0)).A
    b = family.init((5,), like, torch.Generator().manual_seed(0)).A
    assert a.shape == (3, 5) and torch.equal(a, b) and 0 < a.abs().max() < 1e-2
    with pytest.raises(ValueError, match="'rank' must be at most the dimension n = 2; got 3"):
        family.init((2,), like, None)
    with pytest.raises(ValueError, match="low_rank_gram: 'rank' must be an int >= 1; got 0"):
        families.low_rank_gram(0)
    with pytest.raises(ValueError, match="low_rank_gram: 'std' must be a real number >= 0"):
        families.low_rank_gram(2, std=-1.0)
