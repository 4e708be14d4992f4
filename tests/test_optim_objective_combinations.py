"""Every structure family × objective × fitter, through `Preconditioned`: each combination either runs,
with its steps recomputed exactly from the reported preconditioner, or is refused at construction with
an error naming what is missing (QUALITY.md §2; issue 3's cross-product; docs/concepts/index.md)."""

import functools

import pytest
import torch

from precondalg import families
from precondalg.fitters import ClosedForm, LieGroup, TorchOptimizer
from precondalg.objectives import (
    Fisher,
    GradientStatistics,
    Hypergradient,
    LayerStatistics,
    Newton,
    Proximal,
    squared_error,
)
from precondalg.optim import Preconditioned
from precondalg.placement import Concatenated, EveryAxis, Flatten, InputSide, Layer, TwoSided

F64 = torch.float64
LR = 0.05


FAMILIES = {
    "dense_gram": (families.dense_gram(), InputSide()),
    "normalized_dense_gram": (families.normalized_dense_gram(), InputSide()),
    "low_rank_gram": (families.low_rank_gram(2, std=0.1), InputSide()),
    "scalar": (families.scalar(1.0), Flatten()),
    "diagonal": (families.diagonal(1.0), Flatten()),
    "kronecker_gram": (families.kronecker_gram(), TwoSided()),
    "kronecker_gram_triangular": (families.kronecker_gram("triangular", 0.5), TwoSided()),
    "kronecker_gram_every_axis": (families.kronecker_gram("triangular", 0.5, max_size=3), EveryAxis()),
    "scan_gram": (families.scan_gram(0.5), TwoSided()),
    "scaw_gram": (families.scaw_gram(0.5), TwoSided()),
    "lra_gram": (families.lra_gram(2), Flatten()),
    "triangular_gram": (families.triangular_gram(), Flatten()),
    "diagonal_gram": (families.diagonal_gram(0.5), Flatten()),
    "dense": (families.dense(1.0), Flatten()),
    "permutation_network_gram": (families.permutation_network_gram(2, 2), Concatenated()),
    "residual_network_gram": (families.residual_network_gram(3), Concatenated()),
    "kronecker": (families.kronecker(), TwoSided()),
    "kronecker_diagonal_every_axis": (families.kronecker("diagonal"), EveryAxis()),
    "kronecker_layer": (families.kronecker(), "layer"),  # Layer(model): made with the model
    "eigenbasis": (families.eigenbasis(0.9), TwoSided()),
    "eigenbasis_layer": (families.eigenbasis(), "layer"),  # EKFAC's form with LayerStatistics
}
OBJECTIVES = {
    "hypergradient": lambda model: Hypergradient(),
    "hypergradient_unroll": lambda model: Hypergradient(mode="unroll"),
    "newton": lambda model: Newton(),
    "newton_fd": lambda model: Newton(hvp="finite_difference"),
    "newton_torch_func": lambda model: Newton(hvp="torch.func", model=model, loss_fn=squared_error),
    "fisher": lambda model: Fisher(damping=0.1),
    "proximal": lambda model: Proximal(model, squared_error, fsd="squared", lam_fsd=0.5, lam_wsd=0.1),
    "gradient_statistics": lambda model: GradientStatistics(),
    "layer_statistics": lambda model: LayerStatistics(model, damping=0.1),
}
FITTERS = {
    "adam": functools.partial(TorchOptimizer, torch.optim.Adam, lr=1e-2),
    "lie_group": functools.partial(LieGroup, lr=0.1),
    "closed_form": functools.partial(ClosedForm, beta=0.9, epsilon=1e-3, update_every=2),
}
STATISTICS_ONLY = {"gradient_statistics", "layer_statistics"}
GIVES_STATISTICS = {*STATISTICS_ONLY, "newton", "newton_fd", "newton_torch_func", "fisher"}
# Families a closed form cannot set: no P = φ or P = φᵀφ of square parts (Family.power is None).
NO_CLOSED_FORM = {
    "normalized_dense_gram", "low_rank_gram", "scan_gram", "scaw_gram", "lra_gram",
    "permutation_network_gram", "residual_network_gram",
}
# Products of a rectangular ñ×n network: no inverse, so no PSGD criterion.
NO_SOLVE = {"permutation_network_gram", "residual_network_gram"}
# Not groups: a rectangular M, a network, K D² Kᵀ.
NOT_A_GROUP = {"low_rank_gram", "lra_gram", "eigenbasis", "eigenbasis_layer", *NO_SOLVE}
COMBINATIONS = [(f, o, t) for f in FAMILIES for o in OBJECTIVES for t in FITTERS]


def _problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Linear(4, 3, bias=False).to(F64)
    with torch.no_grad():
        model.weight.copy_(torch.randn(3, 4, generator=gen, dtype=F64))
    x, y = torch.randn(16, 4, generator=gen, dtype=F64), torch.randn(16, 3, generator=gen, dtype=F64)
    return model, x, y, torch.randn(6, 4, generator=gen, dtype=F64)


def _expected_refusal(family: str, objective: str, fitter: str) -> tuple[type[Exception], str] | None:
    """The error a combination is refused with at construction, and the words it must contain."""
    if fitter == "closed_form" and objective not in GIVES_STATISTICS:
        return ValueError, "does not give"
    if fitter != "closed_form" and objective in STATISTICS_ONLY:
        return ValueError, "gives statistics for a closed-form fit"
    if objective.startswith(("newton", "fisher")) and family in NO_SOLVE:
        return ValueError, "needs the preconditioner's 'solve'"
    if objective == "layer_statistics" and not family.endswith("_layer"):
        return ValueError, "the placement must be precondalg.placement.Layer"
    if fitter == "lie_group" and family in NOT_A_GROUP:
        return TypeError, "must be a matrix Lie group"
    if fitter == "closed_form" and family in NO_CLOSED_FORM:
        return ValueError, "sets φ in closed form"
    if fitter == "closed_form" and family.startswith("eigenbasis") and objective != "layer_statistics":
        return ValueError, "set an Eigenbasis in closed form"
    return None


@pytest.mark.parametrize(("family", "objective", "fitter"), COMBINATIONS)
def test_combination(family, objective, fitter):
    model, x, y, x_fsd = _problem()
    structure, placement = FAMILIES[family]
    if placement == "layer":
        placement = Layer(model)

    def build():
        return Preconditioned(
            model.parameters(),
            lr=LR,
            structure=structure,
            placement=placement,
            objective=OBJECTIVES[objective](model),
            fitter=FITTERS[fitter](),
            base="sgd",
        )

    refusal = _expected_refusal(family, objective, fitter)
    if refusal is not None:
        error, words = refusal
        with pytest.raises(error, match=words):
            build()
        return
    opt = build()
    phi0 = [leaf.clone() for leaf in opt.state[model.weight]["preconditioner"]["phi"]]

    def loss():
        return squared_error(model(x), y)

    def backward_closure():
        model.zero_grad()
        value = loss()
        value.backward()
        return value

    for _ in range(3):
        W = model.weight.detach().clone()
        if objective == "newton_torch_func":
            opt.step(batch=(x, y))
        elif objective.startswith("newton"):
            opt.step(loss)
        elif objective == "proximal":
            backward_closure()
            opt.step(batch=(x, y), fsd_batch=x_fsd)
        else:
            opt.step(backward_closure)
        ((_, P),) = opt.preconditioners()
        g = model.weight.grad
        step = placement.unview(P @ placement.view([g]), [tuple(g.shape)])[0]
        assert (model.weight.detach() - (W - LR * step)).abs().max() <= 1e-14 * W.abs().max()
    phi = opt.state[model.weight]["preconditioner"]["phi"]
    assert all(torch.isfinite(leaf).all() for leaf in phi)
    assert any(not torch.equal(a, b) for a, b in zip(phi, phi0)), "φ never moved: no meta-learning happened"
    assert int(opt.state[model.weight]["skipped"]) == 0
