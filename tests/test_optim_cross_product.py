"""The cross product (ARCHITECTURE.md, "the idea in one line"): every family × placement × base rule ×
position that makes sense, built through `Preconditioned` with the `Hypergradient` objective and a
nonzero meta learning rate, on the CNN of optim_helpers (conv 3×3 and 1×1 kernels, a weight matrix,
biases; a placement that does not suit a parameter's shape leaves it unpreconditioned).

Each combination takes STEPS steps and must equal, at every step and to float64 round-off, an
independent recomputation from the preconditioners the optimizer reports (`opt.preconditioners()`,
which after a step are the P that step applied):

- position "gradient": θ follows torch.optim's base rule fed with unview(P_t @ view(g_t));
- position "direction": θ_t = θ_{t−1} − lr·unview(P_t @ view(b_t)), with b_t the step torch.optim's base
  rule takes on the raw gradients (lr 1);

and φ must have moved (meta-learning happened) and stay finite.

`COMBINATIONS` (module level) is the table the docs show.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
import torch
import torch.utils._pytree as pytree
from optim_helpers import backward_at, clone_params, ema_sgd, make_model, rel_diff

from precondalg import families
from precondalg.fitters import TorchOptimizer
from precondalg.optim import Preconditioned
from precondalg.placement import (
    Concatenated,
    Flatten,
    InputSide,
    OutputSide,
    Placement,
    Spatial,
    TwoSided,
)

STEPS = 5
LR = 0.05
KIND = "cnn"

FAMILIES: dict[str, Callable[[], families.Family]] = {
    "dense_gram": families.dense_gram,
    "normalized_dense_gram": families.normalized_dense_gram,
    "low_rank_gram": lambda: families.low_rank_gram(1, 0.1),
    "scalar": families.scalar,
    "diagonal": families.diagonal,
    "kronecker_gram": families.kronecker_gram,
}
# placement -> (the placement, the parameter ranks it suits)
PLACEMENTS: dict[str, tuple[Placement, Callable[[int], bool]]] = {
    "Flatten": (Flatten(), lambda ndim: True),
    "InputSide": (InputSide(), lambda ndim: ndim >= 2),
    "OutputSide": (OutputSide(), lambda ndim: ndim >= 2),
    "TwoSided": (TwoSided(), lambda ndim: ndim >= 2),
    "Spatial": (Spatial(), lambda ndim: ndim == 4),
    "Concatenated": (Concatenated(), lambda ndim: True),
}
# the bases and the torch.optim rule each must reproduce
BASES: dict[str, Callable[[list[torch.Tensor], float], torch.optim.Optimizer]] = {
    "sgd": lambda ps, lr: torch.optim.SGD(ps, lr=lr),
    "momentum": lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9),
    "ema": lambda ps, lr: ema_sgd(ps, lr, 0.9),
    "adam": lambda ps, lr: torch.optim.Adam(ps, lr=lr),
    "rmsprop": lambda ps, lr: torch.optim.RMSprop(ps, lr=lr),
    "adagrad": lambda ps, lr: torch.optim.Adagrad(ps, lr=lr),
}
POSITIONS = ("gradient", "direction")


def _makes_sense(family: str, placement: str) -> bool:
    """Kronecker factors need the two sides of `TwoSided`; `TwoSided` exists for them (any other family
    on it would be `Flatten` again)."""
    return (family == "kronecker_gram") == (placement == "TwoSided")


COMBINATIONS: list[tuple[str, str, str, str]] = [
    (family, placement, base, position)
    for family in FAMILIES
    for placement in PLACEMENTS
    if _makes_sense(family, placement)
    for base in BASES
    for position in POSITIONS
]


@dataclasses.dataclass(frozen=True)
class WhereSuitable:
    """The placement for parameters whose rank it suits, None (unpreconditioned) for the others."""

    placement: Placement
    suits: Callable[[int], bool]

    def __call__(self, shape: tuple[int, ...]) -> Placement | None:
        """The placement for a parameter of this shape, or None."""
        return self.placement if self.suits(len(shape)) else None


def _apply(placement: Placement, P, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    shapes = [tuple(t.shape) for t in tensors]
    return placement.unview(P @ placement.view(tensors), shapes)


def _reference_directions(opt: Preconditioned, placement: Placement, grads: dict, vectors: dict) -> dict:
    """unview(P @ view(v)) per parameter for the blocks, v unchanged for unpreconditioned parameters."""
    out = dict(vectors)
    for params, P in opt.preconditioners():
        for p, d in zip(params, _apply(placement, P, [vectors[p] for p in params])):
            out[p] = d
    return out


def _phi(opt: Preconditioned) -> list[torch.Tensor]:
    return [
        leaf.clone()
        for st in opt.state.values()
        if "preconditioner" in st
        for leaf in st["preconditioner"]["phi"]
    ]


@pytest.mark.parametrize(("family", "placement", "base", "position"), COMBINATIONS)
def test_combination(family, placement, base, position):
    model = make_model(KIND)
    params = list(model.parameters())
    pl, suits = PLACEMENTS[placement]
    opt = Preconditioned(
        params,
        LR,
        structure=FAMILIES[family](),
        placement=WhereSuitable(pl, suits),
        fitter=TorchOptimizer(torch.optim.Adam, lr=1e-2),
        base=base,
        position=position,
        **({"momentum": 0.9} if base in ("momentum", "ema") else {}),
    )
    assert opt.preconditioners(), "no parameter suits this placement: the combination tests nothing"
    phi0 = _phi(opt)
    # the reference: torch.optim's base rule on shadow parameters
    shadow = [p.detach().clone() if position == "gradient" else torch.zeros_like(p) for p in params]
    ref = BASES[base](shadow, LR if position == "gradient" else 1.0)
    expected = clone_params(params)
    for t in range(STEPS):
        backward_at(model, KIND, t)
        grads = {p: p.grad.detach().clone() for p in params}
        opt.step()
        if position == "gradient":
            directions = _reference_directions(opt, pl, grads, grads)
            for s, p in zip(shadow, params):
                s.grad = directions[p]
            ref.step()
            expected = [s.detach().clone() for s in shadow]
        else:
            before = [s.detach().clone() for s in shadow]
            for s, p in zip(shadow, params):
                s.grad = grads[p]
            ref.step()
            base_steps = {p: b - s.detach() for p, b, s in zip(params, before, shadow)}
            steps = _reference_directions(opt, pl, grads, base_steps)
            expected = [e - LR * steps[p] for e, p in zip(expected, params)]
        err = rel_diff(expected, clone_params(params))
        assert err <= 1e-12, f"step {t}: θ differs from the recomputation by {err:.2e} (relative)"
    phi = _phi(opt)
    assert all(torch.isfinite(leaf).all() for leaf in phi)
    assert all(not torch.equal(a, b) for a, b in zip(phi0, phi)), "φ did not move: no meta-learning"
    assert all(torch.isfinite(leaf).all() for _, P in opt.preconditioners() for leaf in pytree.tree_leaves(P))


def test_the_table_covers_every_family_placement_base_and_position():
    assert {c[0] for c in COMBINATIONS} == set(FAMILIES)
    assert {c[1] for c in COMBINATIONS} == set(PLACEMENTS)
    assert {c[2] for c in COMBINATIONS} == set(BASES)
    assert {c[3] for c in COMBINATIONS} == set(POSITIONS)
    assert len(COMBINATIONS) == (5 * 5 + 1) * len(BASES) * len(POSITIONS)
