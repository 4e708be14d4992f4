"""Regressions found in review: state restored exactly around lookaheads, unused parameters, atomic
param groups, structures rebuilt by unflattening, modules with buffers, and argument checks."""

import pytest
import torch

import precondalg as pa
from precondalg.families import dense_gram
from precondalg.fitters import LieGroup
from precondalg.objectives import Hypergradient, Newton, Proximal, squared_error
from precondalg.optim import HD, Preconditioned
from precondalg.placement import Flatten, InputSide


def test_finite_difference_hvp_restores_the_parameters_exactly():
    w = torch.nn.Parameter(torch.randn(50, generator=torch.Generator().manual_seed(0)))
    before = w.detach().clone()
    Newton(hvp="finite_difference").evaluate([w], lambda: (w**3).sum(), torch.Generator().manual_seed(1))
    assert torch.equal(w.detach(), before)


def test_unroll_restores_parameters_and_gradients_when_the_closure_raises():
    w = torch.nn.Parameter(torch.ones(3, 2))
    opt = Preconditioned(
        [w], 0.1, structure=dense_gram(), placement=InputSide(), objective=Hypergradient(mode="unroll")
    )
    calls = []

    def closure():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom at the lookahead")
        w.grad = torch.full((3, 2), 0.5)
        return torch.tensor(0.0)

    with pytest.raises(RuntimeError, match="boom at the lookahead"):
        opt.step(closure)
    assert torch.equal(w.detach(), torch.ones(3, 2)) and torch.equal(w.grad, torch.full((3, 2), 0.5))


def test_newton_skips_parameters_the_loss_does_not_use():
    model, unused = torch.nn.Linear(3, 2), torch.nn.Parameter(torch.ones(2))
    x = torch.randn(4, 3)
    opt = Preconditioned(
        [*model.parameters(), unused], 0.1, structure=dense_gram(), placement=Flatten(), objective=Newton()
    )
    opt.step(lambda: model(x).square().sum())
    assert unused.grad is None and torch.equal(unused.detach(), torch.ones(2))
    assert all(p.grad is not None for p in model.parameters())


def test_a_refused_param_group_is_not_added():
    opt = Preconditioned([torch.nn.Parameter(torch.ones(2))], structure=dense_gram(), placement=Flatten())
    with pytest.raises(ValueError, match="'lr' must be a real number >= 0; got -1"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2))], "lr": -1})
    assert len(opt.param_groups) == 1


def test_triangular_rules_read_only_the_upper_triangle_of_an_unflattened_r():
    R = torch.randn(3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    spec = torch.utils._pytree.tree_structure(pa.Triangular(torch.eye(3, dtype=torch.float64)))
    T = torch.utils._pytree.tree_unflatten([R], spec)
    D = pa.Diagonal(torch.arange(1.0, 4.0, dtype=torch.float64))
    for got, expected in [
        (T @ T, torch.triu(R) @ torch.triu(R)),
        (D @ T, D.to_dense() @ torch.triu(R)),
        (T @ D, torch.triu(R) @ D.to_dense()),
    ]:
        assert isinstance(got, pa.Triangular) and torch.equal(got.to_dense(), expected)


def test_lookahead_objectives_work_with_batchnorm_in_training_and_leave_its_statistics_alone():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)).train()
    x, y = torch.randn(8, 3), torch.randn(8, 2)
    squared_error(model(x), y).backward()
    stats = {name: b.clone() for name, b in model.named_buffers()}
    proximal = Proximal(model, squared_error, fsd="squared", lam_fsd=1.0)
    Preconditioned(
        model.parameters(), 0.1, structure=dense_gram(), placement=Flatten(), objective=proximal
    ).step(batch=(x, y), fsd_batch=torch.randn(5, 3))
    newton = Newton(hvp="torch.func", model=model, loss_fn=squared_error)
    Preconditioned(
        model.parameters(), 0.1, structure=dense_gram(), placement=Flatten(), objective=newton
    ).step(batch=(x, y))
    assert stats.keys() == dict(model.named_buffers()).keys()
    assert all(torch.equal(stats[name], b) for name, b in model.named_buffers())


def test_state_dict_does_not_change_the_live_state():
    w = torch.nn.Parameter(torch.ones(2, 2))
    opt = Preconditioned([w], 0.1, structure=dense_gram(), placement=InputSide())
    w.grad = torch.ones(2, 2)
    opt.step()
    keys = set(opt.state[w]["preconditioner"])
    assert "fitter" in opt.state_dict()["state"][0]["preconditioner"]
    assert set(opt.state[w]["preconditioner"]) == keys


def test_loading_a_state_without_a_preconditioner_is_refused_clearly():
    w = torch.nn.Parameter(torch.ones(2, 2))
    plain = Preconditioned([w], 0.1, structure=dense_gram(), placement=None)
    learned = Preconditioned([w], 0.1, structure=dense_gram(), placement=InputSide())
    with pytest.raises(ValueError, match="made with a different configuration .*0 preconditioned blocks → 1"):
        learned.load_state_dict(plain.state_dict())


def test_argument_checks():
    for normalizer in ("max_abs", "lipschitz"):  # |Rᵢᵢ|/‖R‖ ≤ 1 for both: μ < 1 keeps Q invertible
        with pytest.raises(ValueError, match=r"LieGroup: 'lr' must be .* and < 1"):
            LieGroup(lr=1.5, normalizer=normalizer)
    with pytest.raises(ValueError, match="HD: 'lr' must be a real number >= 0; got nan"):
        HD([torch.nn.Parameter(torch.ones(1))], lr=float("nan"), hyper_lr=0.1)
    with pytest.raises(TypeError, match=r"'rank' must be an int >= 1; got True \(bool\)"):
        pa.families.low_rank_gram(True)
    hash(pa.fitters.TorchOptimizer(torch.optim.SGD, lr=0.1))


def test_inverse_of_a_structure_without_solve_is_refused_at_once():
    S = pa.Sum(pa.Dense(torch.eye(2)), pa.Dense(torch.eye(2)))
    with pytest.raises(pa.NotInvertibleError, match="Sum has no solve: its inverse could never be applied"):
        pa.inverse(S)


def test_functional_objectives_refuse_parameters_the_model_does_not_own():
    model, stranger = torch.nn.Linear(3, 2), torch.nn.Parameter(torch.ones(4, 5))
    x, y = torch.randn(6, 3), torch.randn(6, 2)
    params = [*model.parameters(), stranger]
    squared_error(model(x), y).backward()
    stranger.grad = torch.ones(4, 5)
    newton = Newton(hvp="torch.func", model=model, loss_fn=squared_error)
    with pytest.raises(
        ValueError, match=r"Newton\(hvp='torch.func'\): .* does not own \(shapes \[\(4, 5\)\]\)"
    ):
        newton.evaluate(params, None, torch.Generator(), batch=(x, y))
    with pytest.raises(ValueError, match=r"Proximal: .* does not own \(shapes \[\(4, 5\)\]\)"):
        Preconditioned(  # at construction (Proximal.check_block), not at the first step
            params, 0.1, structure=dense_gram(), placement=Flatten(), objective=Proximal(model, squared_error)
        )


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (
            lambda: pa.objectives.Fisher(damping=float("nan")),
            "Fisher: 'damping' must be a real number >= 0; got nan",
        ),
        (
            lambda: Proximal(torch.nn.Linear(1, 1), squared_error, lam_fsd=float("nan")),
            "'lam_fsd' must be a real number >= 0; got nan",
        ),
    ],
)
def test_nan_hyperparameters_of_objectives_are_refused(build, match):
    with pytest.raises(ValueError, match=match):
        build()
