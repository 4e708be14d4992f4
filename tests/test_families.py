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


# ----------------------------------------------------------------------------------------------
# eigenbasis(): APO-Precond's Eigenbasis (Bae 2022, Eqs. 9–10)
# ----------------------------------------------------------------------------------------------
def test_eigenbasis_init_is_the_identity():
    like = torch.empty((), dtype=F64)
    phi = families.eigenbasis().init((3, 5), like, None)
    assert type(phi) is pa.Eigenbasis and phi.dims == (3, 5) and phi.shape == (15, 15)
    assert torch.equal(phi.B, torch.eye(3, dtype=F64)) and torch.equal(phi.A, torch.eye(5, dtype=F64))
    assert torch.equal(phi.S, torch.ones(3, 5, dtype=F64))
    assert torch.equal(phi.to_dense(), torch.eye(15, dtype=F64))
    assert phi.dtype == F64
    assert families.eigenbasis().init((2, 2), torch.empty(()), None).dtype == torch.float32


def test_eigenbasis_form_scales_and_hyper_form_is_phi():
    gen = torch.Generator().manual_seed(0)
    phi = pa.Eigenbasis(*(torch.randn(*s, generator=gen, dtype=F64) for s in [(2, 2), (3, 3), (2, 3)]))
    one, scaled = families.eigenbasis(), families.eigenbasis(scale=0.9)
    assert one.form(phi) is phi and one.hyper_form(phi) is phi
    assert scaled.hyper_form(phi) is phi  # the meta-objective differentiates P̂, not 0.9·P̂
    P = scaled.form(phi)
    assert type(P) is pa.Product  # scale(): Eigenbasis has no scale rule, so a lazy Scalar·Eigenbasis
    torch.testing.assert_close(P.to_dense(), 0.9 * phi.to_dense(), rtol=1e-15, atol=0)
    assert (repr(one), repr(scaled), scaled.kind) == ("eigenbasis()", "eigenbasis(scale=0.9)", "eigenbasis")
    assert one.power == 1 and one.hyper_vjp is None  # set in closed form from K-FAC's factors (EKFAC)


def test_eigenbasis_refuses_bad_scale_and_one_sided_dims():
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="eigenbasis: 'scale'"):
            families.eigenbasis(bad)
    with pytest.raises(ValueError, match=r"eigenbasis: needs the two dims \(out, in\) .*got dims \(6,\)"):
        families.eigenbasis().init((6,), torch.empty(()), None)


def test_eigenbasis_dims_from_two_sided_and_layer():
    from precondalg.placement import Layer, TwoSided

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Conv2d(3, 2, 3))
    lin, conv = model[0], model[1]
    like = torch.empty(())
    two = TwoSided()
    assert families.eigenbasis().init(two.dims([tuple(lin.weight.shape)]), like, None).dims == (3, 4)
    assert families.eigenbasis().init(two.dims([tuple(conv.weight.shape)]), like, None).dims == (2, 27)
    layer = Layer(model)
    dims = layer.dims([tuple(lin.weight.shape), tuple(lin.bias.shape)])
    assert dims == (3, 5) and families.eigenbasis().init(dims, like, None).dims == (3, 5)


def _eigenbasis_run(placement_of, bias: bool, scale: float):
    """Three Hypergradient steps of Preconditioned with eigenbasis(scale) on a Linear(4, 3); each step
    is recomputed from the reported preconditioner P = scale·P̂."""
    from precondalg.fitters import TorchOptimizer
    from precondalg.objectives import Hypergradient
    from precondalg.optim import Preconditioned

    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(4, 3, bias=bias).to(F64)
    x, y = torch.randn(16, 4, generator=gen, dtype=F64), torch.randn(16, 3, generator=gen, dtype=F64)
    placement = placement_of(model)
    opt = Preconditioned(
        model.parameters(),
        0.05,
        structure=families.eigenbasis(scale),
        placement=placement,
        objective=Hypergradient(),
        fitter=TorchOptimizer(torch.optim.Adam, lr=1e-2),
    )
    params = list(model.parameters())
    state = opt.state[model.weight]["preconditioner"]
    phi0 = [leaf.clone() for leaf in state["phi"]]
    for _ in range(3):
        before = [p.detach().clone() for p in params]

        def closure():
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            return loss

        opt.step(closure)
        ((block, P),) = opt.preconditioners()
        grads = [p.grad for p in params]
        steps = placement.unview(P @ placement.view(grads), [tuple(p.shape) for p in params])
        for p, b, s in zip(params, before, steps):
            torch.testing.assert_close(p.detach(), b - 0.05 * s, rtol=0, atol=1e-14)
    phi = state["phi"]
    assert all(torch.isfinite(leaf).all() for leaf in phi)
    assert any(not torch.equal(a, b) for a, b in zip(phi, phi0)), "φ never moved"
    assert [leaf.shape for leaf in phi] == [leaf.shape for leaf in phi0]
    return P


@pytest.mark.parametrize("scale", [1.0, 0.9])
def test_eigenbasis_in_preconditioned_two_sided(scale):
    from precondalg.placement import TwoSided

    P = _eigenbasis_run(lambda model: TwoSided(), bias=False, scale=scale)
    inner = P if scale == 1.0 else P.factors[1]
    assert type(inner) is pa.Eigenbasis and inner.dims == (3, 4)


def test_eigenbasis_in_preconditioned_layer_with_bias():
    from precondalg.placement import Layer

    P = _eigenbasis_run(Layer, bias=True, scale=0.9)
    assert type(P.factors[1]) is pa.Eigenbasis and P.factors[1].dims == (3, 5)
