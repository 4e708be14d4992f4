"""K-FAC (Martens & Grosse 2015; KFC for Conv2d, Grosse & Martens 2016) as a row of the engine: its
Kronecker factors against curvlinops' `KFACLinearOperator` (empirical Fisher, "expand", weight and bias
together), its step against curvlinops' `KFACInverseLinearOperator` with the heuristic (factored
Tikhonov) damping and against the formula written out, the batch-size convention against per-example
gradients, the running average, and the hooks' life cycle (QUALITY.md §2)."""

from __future__ import annotations

import copy
import gc
import math
import pickle
import warnings

import pytest
import torch
from curvlinops import KFACInverseLinearOperator, KFACLinearOperator
from optim_helpers import assert_close, clone_params

from precondalg.families import eigenbasis
from precondalg.fitters import ClosedForm
from precondalg.objectives import LayerStatistics
from precondalg.optim import KFAC, Preconditioned, SkippedStepWarning
from precondalg.placement import Layer

F64 = torch.float64


def _net(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "mlp":
        net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    elif kind == "no_bias":
        net = torch.nn.Sequential(torch.nn.Linear(4, 5, bias=False), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    else:
        net = torch.nn.Sequential(
            torch.nn.Conv2d(2, 3, 3, padding=1, stride=2), torch.nn.Tanh(), torch.nn.Conv2d(3, 2, 1),
            torch.nn.Flatten(), torch.nn.Linear(2 * 3 * 3, 3),
        )
    return net.to(F64)


def _data(kind: str, seed: int = 0, n: int = 7):
    gen = torch.Generator().manual_seed(seed)
    shape = (n, 2, 6, 6) if kind == "cnn" else (n, 4)
    x = torch.randn(shape, generator=gen, dtype=F64)
    return x, torch.randint(0, 3, (n,), generator=gen), torch.randn(n, 3, generator=gen, dtype=F64)


def _loss(name: str):
    return torch.nn.CrossEntropyLoss() if name == "ce" else torch.nn.MSELoss()


def _reference(net, loss_fn, x, y) -> KFACLinearOperator:
    """curvlinops' K-FAC of `net` on one batch in our conventions: the empirical Fisher, weight and bias
    as one block (the homogeneous coordinate)."""
    return KFACLinearOperator(
        net, loss_fn, list(net.parameters()), [(x, y)], fisher_type="empirical",
        check_deterministic=False, separate_weight_and_bias=False,
    )


def _fitted_factors(opt) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's averaged (Ḡ, Ā) as the closed-form fit holds them (S/w)."""
    out = {}
    for block in opt._all_blocks():
        name = opt.objective.layer_of(block.params)
        fit = block.fitter
        out[name] = tuple(S / fit.weight for S in fit.statistics)
    return out


@pytest.mark.parametrize(("kind", "loss"), [("mlp", "mse"), ("mlp", "ce"), ("no_bias", "ce"), ("cnn", "ce")])
def test_factors_equal_curvlinops(kind, loss):
    net = _net(kind)
    x, labels, targets = _data(kind)
    y = labels if loss == "ce" else targets
    loss_fn = _loss(loss)
    reference = _reference(net, loss_fn, x, y)
    reference.compute_kronecker_factors()
    opt = KFAC(net.parameters(), lr=0.1, model=net)
    loss_fn(net(x), y).backward()
    opt.step()
    ours = _fitted_factors(opt)
    assert sorted(ours) == sorted(reference._input_covariances)
    # torch's MSELoss also averages over the C = 3 outputs: per example (1/C)‖f − y‖², whose Ḡ is C times
    # smaller than curvlinops' (which rescales that loss by √C).
    per_example = 3.0 if loss == "mse" else 1.0
    for name, (G, A) in ours.items():
        assert_close([A], [reference._input_covariances[name]], 1e-13)
        assert_close([G * per_example], [reference._gradient_covariances[name]], 1e-13)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_step_equals_curvlinops_damped_inverse(kind):
    """θ₀ − θ₁ = lr·(Ḡ + γ_G I)⁻¹ [G_W | g_b] (Ā + γ_A I)⁻¹ with γ_A = π√λ, γ_G = √λ/π: curvlinops'
    ``KFACInverseLinearOperator(use_heuristic_damping=True)`` applied to the gradient."""
    net = _net(kind)
    x, y, _ = _data(kind)
    loss_fn = torch.nn.CrossEntropyLoss()
    reference = _reference(net, loss_fn, x, y)
    inverse = KFACInverseLinearOperator(reference, damping=1e-2, use_heuristic_damping=True, min_damping=0.0)
    opt = KFAC(net.parameters(), lr=1.0, model=net, damping=1e-2)
    before = clone_params(net.parameters())
    loss_fn(net(x), y).backward()
    expected = inverse @ [p.grad.clone() for p in net.parameters()]
    opt.step()
    steps = [b - p.detach() for b, p in zip(before, net.parameters())]
    assert_close(steps, expected, 1e-12)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_eigenbasis_closed_form_is_the_exact_damped_inverse(kind):
    """APO's Eigenbasis structure set in closed form from K-FAC's statistics (EKFAC's form; APO's
    Corollary 2): P = (Ḡ ⊗ Ā + λI)⁻¹ exactly — the step equals curvlinops'
    ``KFACInverseLinearOperator(use_exact_damping=True)`` applied to the gradient, and P the dense inverse."""
    net = _net(kind)
    x, y, _ = _data(kind)
    loss_fn = torch.nn.CrossEntropyLoss()
    reference = _reference(net, loss_fn, x, y)
    inverse = KFACInverseLinearOperator(reference, damping=1e-2, use_exact_damping=True)
    opt = Preconditioned(
        net.parameters(), 1.0, structure=eigenbasis(), placement=Layer(net),
        objective=LayerStatistics(net, damping=1e-2), fitter=ClosedForm(),
    )
    before = clone_params(net.parameters())
    loss_fn(net(x), y).backward()
    expected = inverse @ [p.grad.clone() for p in net.parameters()]
    opt.step()
    steps = [b - p.detach() for b, p in zip(before, net.parameters())]
    assert_close(steps, expected, 1e-11)
    for (_, P), (G, A) in zip(opt.preconditioners(), _fitted_factors(opt).values()):
        dense = torch.linalg.inv(torch.kron(G, A) + 1e-2 * torch.eye(G.shape[0] * A.shape[0], dtype=F64))
        assert_close([P.to_dense()], [dense], 1e-11)


def test_step_equals_the_formula_written_out():
    """The same step from the factors, written out: π from the traces, the damped inverses by
    torch.linalg.inv, the bias as the last column of [G_W | g_b]."""
    net = _net("mlp")
    x, y, _ = _data("mlp")
    lam = 3e-2
    opt = KFAC(net.parameters(), lr=1.0, model=net, damping=lam)
    before = clone_params(net.parameters())
    torch.nn.functional.cross_entropy(net(x), y).backward()
    grads = [p.grad.clone() for p in net.parameters()]
    opt.step()
    factors = _fitted_factors(opt)
    for layer, (W, b), (gW, gb) in zip(("0", "2"), (before[0:2], before[2:4]), (grads[0:2], grads[2:4])):
        G, A = factors[layer]
        pi = math.sqrt((A.trace() / A.shape[0]) / (G.trace() / G.shape[0]))
        gamma_A, gamma_G = pi * math.sqrt(lam), math.sqrt(lam) / pi
        full = torch.cat([gW, gb[:, None]], 1)
        D = torch.linalg.inv(G + gamma_G * torch.eye(G.shape[0], dtype=F64)) @ full @ torch.linalg.inv(
            A + gamma_A * torch.eye(A.shape[0], dtype=F64)
        )
        module = net[int(layer)]
        assert_close([module.weight.detach(), module.bias.detach()], [W - D[:, :-1], b - D[:, -1]], 1e-12)


def test_batch_size_convention_against_per_example_gradients():
    """For a loss that is the mean over N examples, Ḡ = (1/N) Σₙ ĝₙĝₙᵀ with ĝₙ the gradient of the
    n-th example's own loss with respect to the layer's output, and Ā = (1/N) Σₙ āₙāₙᵀ."""
    net = _net("mlp")
    x, y, _ = _data("mlp")
    opt = KFAC(net.parameters(), lr=0.1, model=net)
    hidden = torch.tanh(net[0](x)).detach()
    outer_G = torch.zeros(3, 3, dtype=F64)
    for n in range(x.shape[0]):
        z = net[2](hidden[n : n + 1]).detach().requires_grad_()
        (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(z, y[n : n + 1]), z)
        outer_G += g.mT @ g
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    G, A = _fitted_factors(opt)["2"]
    a = torch.cat([hidden, torch.ones(x.shape[0], 1, dtype=F64)], 1)
    assert_close([G], [outer_G / x.shape[0]], 1e-13)
    assert_close([A], [a.mT @ a / x.shape[0]], 1e-13)


def test_running_average_and_refits():
    """The factors are the bias-corrected EMA of the per-step factors (β = ema); P is refitted on the first
    step and every update_every steps, and stays the same in between."""
    net = _net("mlp")
    opt = KFAC(net.parameters(), lr=0.05, model=net, ema=0.8, update_every=3)
    per_step, Ps = [], []
    for t in range(5):
        x, y, _ = _data("mlp", seed=t)
        probe = copy.deepcopy(net)
        ref = _reference(probe, torch.nn.CrossEntropyLoss(), x, y)
        ref.compute_kronecker_factors()
        per_step.append(ref._gradient_covariances["2"])
        net.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        Ps.append(opt.preconditioners()[1][1].to_dense().clone())
    weights = [0.2 * 0.8 ** (4 - j) for j in range(5)]
    expected = sum(w * s for w, s in zip(weights, per_step)) / (1 - 0.8**5)
    assert_close([_fitted_factors(opt)["2"][0]], [expected], 1e-12)
    assert torch.equal(Ps[0], Ps[1]) and torch.equal(Ps[1], Ps[2]) and not torch.equal(Ps[2], Ps[3])
    assert torch.equal(Ps[3], Ps[4])


def test_param_groups_given_as_generators():
    """Groups whose "params" are generators (model.parameters()) are read once, not exhausted."""
    net = _net("mlp")
    opt = KFAC([{"params": net[0].parameters(), "lr": 0.0}, {"params": net[2].parameters()}], 0.1, model=net)
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2] and len(opt.preconditioners()) == 2
    start = clone_params(net[0].parameters())
    x, y, _ = _data("mlp")
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    assert_close(clone_params(net[0].parameters()), start, 0.0)


def test_other_layers_take_the_base_rule_alone():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3)).to(F64)
    opt = KFAC(net.parameters(), lr=0.1, model=net, momentum=0.9)
    buffers = None
    for t in range(3):
        x, y, _ = _data("mlp", seed=t)
        net.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        before, grads = clone_params(net[1].parameters()), [p.grad.clone() for p in net[1].parameters()]
        buffers = grads if buffers is None else [0.9 * b + g for b, g in zip(buffers, grads)]
        opt.step()
        assert_close(clone_params(net[1].parameters()), [p - 0.1 * b for p, b in zip(before, buffers)], 1e-15)
    assert len(opt.preconditioners()) == 2


def test_hooks_count_only_forward_passes_with_a_backward():
    net = _net("mlp")
    x, y, _ = _data("mlp")
    opt = KFAC(net.parameters(), lr=0.1, model=net)
    with torch.no_grad():
        net(torch.full((3, 4), 100.0, dtype=F64))  # an evaluation pass: not counted
    net(torch.full((3, 4), 100.0, dtype=F64))  # a forward pass with gradients but no backward: not counted
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    alone = _fitted_factors(opt)
    fresh = _net("mlp")
    fresh_opt = KFAC(fresh.parameters(), lr=0.1, model=fresh)
    torch.nn.functional.cross_entropy(fresh(x), y).backward()
    fresh_opt.step()
    for name, (G, A) in _fitted_factors(fresh_opt).items():
        assert torch.equal(G, alone[name][0]) and torch.equal(A, alone[name][1])


def test_two_backward_passes_add_up():
    """Ā over all the rows of both passes; Ḡ the mean of the passes' Ḡ."""
    net = _net("mlp")
    opt = KFAC(net.parameters(), lr=0.1, model=net)
    (x1, y1, _), (x2, y2, _) = _data("mlp", 1, n=5), _data("mlp", 2, n=9)
    for x, y in ((x1, y1), (x2, y2)):
        torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    G, A = _fitted_factors(opt)["0"]
    parts = []
    for x, y in ((x1, y1), (x2, y2)):
        probe = _net("mlp")
        ref = _reference(probe, torch.nn.CrossEntropyLoss(), x, y)
        ref.compute_kronecker_factors()
        parts.append((ref._gradient_covariances["0"], ref._input_covariances["0"], x.shape[0]))
    assert_close([G], [(parts[0][0] + parts[1][0]) / 2], 1e-13)
    assert_close([A], [(parts[0][1] * 5 + parts[1][1] * 9) / 14], 1e-13)


def test_removed_hooks_warn_and_keep_the_preconditioner():
    net = _net("mlp")
    x, y, _ = _data("mlp")
    opt = KFAC(net.parameters(), lr=0.1, model=net, update_every=1)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    P = [P.to_dense().clone() for _, P in opt.preconditioners()]
    opt.objective.remove_hooks()
    assert not any(m._forward_hooks for m in net.modules())
    net.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    with pytest.warns(UserWarning, match=r"2 of 2 layers .* had no statistics"):
        opt.step()
    assert all(torch.equal(a, b.to_dense()) for a, (_, b) in zip(P, opt.preconditioners()))


def test_hooks_go_with_the_optimizer():
    net = _net("mlp")
    opt = KFAC(net.parameters(), lr=0.1, model=net)
    assert sum(len(m._forward_hooks) for m in net.modules()) == 2
    del opt
    gc.collect()
    assert sum(len(m._forward_hooks) for m in net.modules()) == 0


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_hooks_its_own_model(how):
    """A deepcopy or pickle of model and optimizer together: the copy's hooks are on the copied model,
    and both continue to the same parameters."""
    net = _net("mlp")
    opt = KFAC(net.parameters(), lr=0.1, model=net, update_every=2)
    for t in range(3):
        x, y, _ = _data("mlp", seed=t)
        net.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    pair = copy.deepcopy((net, opt)) if how == "deepcopy" else pickle.loads(pickle.dumps((net, opt)))
    net2, opt2 = pair
    assert opt2.objective.model is net2
    assert sum(len(m._forward_hooks) for m in net2.modules()) == 2
    for t in range(3, 6):
        x, y, _ = _data("mlp", seed=t)
        for model, o in ((net, opt), (net2, opt2)):
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            o.step()
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)


def test_nonfinite_statistics_are_rolled_back():
    """A NaN in a layer's statistics with finite gradients: the fit is rolled back (statistics and P kept),
    counted and warned about; the parameters still move with the kept P."""
    net = _net("mlp")
    x, y, _ = _data("mlp")
    opt = KFAC(net.parameters(), lr=0.1, model=net, update_every=1)
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    kept = _fitted_factors(opt)
    P = [P.to_dense().clone() for _, P in opt.preconditioners()]
    net.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.objective._sums["0"].xx[0, 0] = math.nan
    before = clone_params(net.parameters())
    with pytest.warns(SkippedStepWarning):
        opt.step()
    assert [c["meta_skipped"] for c in opt.skip_counts()] == [1, 0]
    for name, (G, A) in _fitted_factors(opt).items():
        if name == "0":
            assert torch.equal(G, kept[name][0]) and torch.equal(A, kept[name][1])
    assert torch.equal(P[0], opt.preconditioners()[0][1].to_dense())
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_a_nan_input_does_not_poison_the_statistics():
    net, twin = _net("mlp"), _net("mlp")
    opt, ref = KFAC(net.parameters(), lr=0.1, model=net), KFAC(twin.parameters(), lr=0.1, model=twin)
    for t in range(4):
        x, y, _ = _data("mlp", seed=t)
        if t == 1:
            x = x.clone()
            x[2, 1] = math.nan
        net.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SkippedStepWarning)
            opt.step()
        if t != 1:
            twin.zero_grad()
            torch.nn.functional.cross_entropy(twin(x), y).backward()
            ref.step()
    assert [c["skipped"] for c in opt.skip_counts()] == [1, 1]
    for a, b in zip(net.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_layer_placement_round_trip():
    conv = torch.nn.Conv2d(2, 3, 3).to(F64)
    placement = Layer(conv)
    shapes = [tuple(conv.weight.shape), tuple(conv.bias.shape)]
    assert placement.dims(shapes) == (3, 19)
    grads = [torch.randn(s, dtype=F64) for s in shapes]
    X = placement.view(grads)
    matrix = X.reshape(3, 19)
    assert torch.equal(matrix[:, :18], grads[0].reshape(3, 18)) and torch.equal(matrix[:, 18], grads[1])
    back = placement.unview(X, shapes)
    assert all(torch.equal(a, b) for a, b in zip(back, grads))
    assert placement.dims([(3,)]) == (3, 1)
    with pytest.raises(ValueError, match="one layer's weight"):
        placement.dims([(3, 2), (3, 4)])


@pytest.mark.parametrize(
    ("build", "error", "words"),
    [
        (lambda net: KFAC(net.parameters(), 0.1, model=net, damping=-1.0), ValueError, "damping"),
        (lambda net: KFAC(net.parameters(), 0.1, model=net, ema=1.0), ValueError, "ema"),
        (lambda net: KFAC(net.parameters(), 0.1, model=net, ema=0.0), ValueError, "ema"),
        (lambda net: KFAC(net.parameters(), 0.1, model=net, update_every=0), ValueError, "update_every"),
        (lambda net: KFAC(net.parameters(), 0.1, model="net"), TypeError, "nn.Module"),
        (lambda net: KFAC(torch.nn.Linear(2, 2).parameters(), 0.1, model=net), ValueError, "none of the"),
        (lambda net: KFAC([{"params": net.parameters(), "damping": 0.1}], 0.1, model=net), ValueError,
         "cannot choose 'damping'"),
        (lambda net: KFAC(torch.nn.Conv2d(4, 4, 3, groups=2).parameters(), 0.1,
                          model=torch.nn.Conv2d(4, 4, 3, groups=2)), ValueError, "groups=2"),
        (lambda net: LayerStatistics(torch.nn.Tanh()), ValueError, "no nn.Linear"),
    ],
)
def test_bad_arguments_are_refused(build, error, words):
    with pytest.raises(error, match=words):
        build(_net("mlp"))
