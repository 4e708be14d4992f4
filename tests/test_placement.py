"""Placements (precondalg.placement): view/unview round trips, dims, what S acts as, defaults, errors."""

from __future__ import annotations

import math

import pytest
import torch
from einops import rearrange

from precondalg.placement import (
    Concatenated,
    Flatten,
    InputSide,
    Layer,
    OutputSide,
    Spatial,
    TwoSided,
    default_placement,
)
from precondalg.structures import Dense, Eigenbasis, Kronecker

SHAPES_ANY = [
    (),
    (1,),
    (7,),
    (1, 1),
    (3, 5),
    (5, 1),
    (1, 4),
    (2, 3, 5),
    (4, 3, 3, 3),
    (3, 2, 1, 1),
    (2, 1, 1, 5),
]
SHAPES_2D_PLUS = [s for s in SHAPES_ANY if len(s) >= 2]
SHAPES_CONV = [s for s in SHAPES_ANY if len(s) == 4]

CASES = (
    [(Flatten(), s) for s in SHAPES_ANY]
    + [(pl, s) for pl in (InputSide(), OutputSide(), TwoSided()) for s in SHAPES_2D_PLUS]
    + [(Spatial(), s) for s in SHAPES_CONV]
)


def _tensor(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _matrix(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _apply(placement, S: torch.Tensor | Kronecker, G: torch.Tensor) -> torch.Tensor:
    """unview(S @ view(G)) for one parameter."""
    (out,) = placement.unview(S @ placement.view([G]), [tuple(G.shape)])
    return out


@pytest.mark.parametrize(("placement", "shape"), CASES, ids=lambda v: str(v))
def test_round_trip_and_dims(placement, shape):
    G = _tensor(shape)
    dims = placement.dims([shape])
    X = placement.view([G])
    assert X.ndim == 2 and X.shape[0] == math.prod(dims)
    assert X.numel() == G.numel()
    (back,) = placement.unview(X, [shape])
    assert back.shape == G.shape and torch.equal(back, G)


@pytest.mark.parametrize(
    ("placement", "shape", "dims"),
    [
        (Flatten(), (), (1,)),
        (Flatten(), (3, 4, 5), (60,)),
        (InputSide(), (3, 5), (5,)),
        (InputSide(), (4, 3, 3, 3), (27,)),
        (OutputSide(), (4, 3, 3, 3), (4,)),
        (TwoSided(), (3, 5), (3, 5)),
        (TwoSided(), (2, 3, 5), (2, 15)),
        (Spatial(), (4, 3, 3, 2), (6,)),
        (Spatial(), (3, 2, 1, 1), (1,)),
    ],
)
def test_dims(placement, shape, dims):
    assert placement.dims([shape]) == dims


@pytest.mark.parametrize("shape", [(3, 5), (4, 1), (2, 3, 4), (4, 3, 3, 3)])
def test_input_side_is_right_multiplication(shape):
    G = _tensor(shape, 1)
    n = math.prod(shape[1:])
    S = _matrix(n, 2)
    P = S @ S.T  # symmetric, as FOP's MᵀM
    G2 = G.reshape(shape[0], n)
    torch.testing.assert_close(_apply(InputSide(), P, G).reshape(shape[0], n), G2 @ P, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(
        _apply(InputSide(), S, G).reshape(shape[0], n), G2 @ S.T, rtol=1e-14, atol=1e-14
    )


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4)])
def test_output_side_is_left_multiplication(shape):
    G = _tensor(shape, 3)
    S = _matrix(shape[0], 4)
    G2 = G.reshape(shape[0], -1)
    torch.testing.assert_close(
        _apply(OutputSide(), S, G).reshape(shape[0], -1), S @ G2, rtol=1e-14, atol=1e-14
    )


@pytest.mark.parametrize("shape", [(3, 5), (1, 4), (4, 1), (2, 3, 4)])
def test_two_sided_kronecker_is_A_G_Bt(shape):
    G = _tensor(shape, 5)
    m, n = TwoSided().dims([shape])
    A, B = _matrix(m, 6), _matrix(n, 7)
    got = _apply(TwoSided(), Kronecker(Dense(A), Dense(B)), G)
    want = (A @ G.reshape(m, n) @ B.T).reshape(shape)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("shape", [(4, 3, 3, 3), (3, 2, 1, 1), (2, 1, 2, 3)])
def test_spatial_is_fop_right_multiplication(shape):
    """FOP §1.5: reshape 'o i h w -> (o i) (h w)', right-multiply by P (symmetric), reshape back."""
    o, i, h, w = shape
    G = _tensor(shape, 8)
    S = _matrix(h * w, 9)
    P = S @ S.T
    for M, right in ((P, P), (S, S.T)):
        want = rearrange(rearrange(G, "o i h w -> (o i) (h w)") @ right, "(o i) (h w) -> o i h w", o=o, h=h)
        torch.testing.assert_close(_apply(Spatial(), M, G), want, rtol=1e-14, atol=1e-14)


def test_spatial_one_by_one_is_a_scalar():
    G = _tensor((3, 2, 1, 1), 10)
    assert Spatial().dims([G.shape]) == (1,)
    torch.testing.assert_close(_apply(Spatial(), torch.tensor([[2.5]], dtype=torch.float64), G), 2.5 * G)


def test_concatenated_round_trip_several_params():
    shapes = [(3, 5), (5,), (), (2, 1, 3, 3), (1,)]
    grads = [_tensor(s, k) for k, s in enumerate(shapes)]
    pl = Concatenated()
    p = torch.zeros(2)
    assert pl.block_key(p) == pl.block_key(torch.zeros(3)) and Flatten().block_key(p) is None
    assert pl.dims(shapes) == (sum(math.prod(s) for s in shapes),)
    X = pl.view(grads)
    assert X.shape == (pl.dims(shapes)[0], 1)
    torch.testing.assert_close(X[:, 0], torch.cat([g.reshape(-1) for g in grads]), rtol=0, atol=0)
    back = pl.unview(X, shapes)
    assert len(back) == len(grads)
    for b, g in zip(back, grads):
        assert b.shape == g.shape and torch.equal(b, g)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((), Flatten),
        ((7,), Flatten),
        ((3, 5), InputSide),
        ((2, 3, 4), InputSide),
        ((4, 3, 3, 3), Spatial),
        ((4, 3, 1, 1), Spatial),
        ((2, 2, 2, 2, 2), InputSide),
    ],
)
def test_default_placement(shape, expected):
    assert type(default_placement(shape)) is expected
    default_placement(shape).dims([shape])  # the default suits the shape


@pytest.mark.parametrize(
    ("placement", "shapes", "words"),
    [
        (InputSide(), [(5,)], ("InputSide", "(5,)")),
        (InputSide(), [()], ("InputSide", "()")),
        (OutputSide(), [(5,)], ("OutputSide", "(5,)")),
        (TwoSided(), [(5,)], ("TwoSided", "(5,)")),
        (Spatial(), [(3, 5)], ("Spatial", "(3, 5)")),
        (Spatial(), [(2, 3, 5)], ("Spatial", "(2, 3, 5)")),
        (Spatial(), [(1, 2, 3, 5, 1)], ("Spatial", "(1, 2, 3, 5, 1)")),
        (Flatten(), [(3,), (4,)], ("Flatten", "2")),
        (InputSide(), [], ("InputSide", "0")),
        (Concatenated(), [], ("Concatenated",)),
    ],
)
def test_unsuitable_shapes_raise(placement, shapes, words):
    with pytest.raises(ValueError) as info:
        placement.dims(shapes)
    for word in words:
        assert word in str(info.value)


def test_unsuitable_placement_in_an_optimizer_raises():
    from precondalg import families
    from precondalg.optim import Preconditioned

    lin = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="InputSide.*\\(2,\\)"):
        Preconditioned(lin.parameters(), 0.1, structure=families.dense_gram(), placement=InputSide())


@pytest.mark.parametrize("shape", [(3, 5), (1, 4), (4, 1), (2, 3, 4)])
def test_two_sided_eigenbasis_is_apo_eq_10(shape):
    """TwoSided with APO's Eigenbasis(B, A, S): G ↦ B[(BᵀGA) ⊙ S ⊙ S]Aᵀ on G reshaped to (out, in·…)."""
    G = _tensor(shape, 9)
    m, n = TwoSided().dims([shape])
    B, A, S = _matrix(m, 10), _matrix(n, 11), _tensor((m, n), 12)
    P = Eigenbasis(B, A, S)
    TwoSided().check(P, (m, n))
    G2 = G.reshape(m, n)
    want = (B @ ((B.T @ G2 @ A) * S * S) @ A.T).reshape(shape)
    torch.testing.assert_close(_apply(TwoSided(), P, G), want, rtol=1e-13, atol=1e-13)


def test_two_sided_and_layer_check_eigenbasis_dims():
    """`_kronecker_sizes` reads an Eigenbasis (also inside a lazy composite) as factor sizes (m, n);
    swapped sizes are refused, as for a Kronecker."""
    P = Eigenbasis(torch.eye(2), torch.eye(3), torch.ones(2, 3))
    layer = Layer(torch.nn.Linear(2, 2))  # dims (2, 3): the weight and the bias column
    for placement in (TwoSided(), layer):
        placement.check(P, (2, 3))
        placement.check(0.9 * P, (2, 3))  # a lazy Product(Scalar, Eigenbasis)
        with pytest.raises(ValueError, match=r"Kronecker factors of sizes \[\(2, 3\)\]"):
            placement.check(P, (3, 2))
    Flatten().check(P, (6,))  # a one-sided placement sees only the 6×6 size
