"""The `PSGD` preset (Li 2019): its choices, its conventions and the paper's Rosenbrock problem.

Reference equivalence of the Q updates is in test_psgd_reference.py; checkpoints, pickling and dtypes
of PSGD run in the shared optimizer matrices (optim_helpers.CONFIGS).
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from optim_helpers import assert_close, clone_params, ema_sgd, loss_at, make_model

import precondalg as pa
from precondalg.fitters import LieGroup
from precondalg.objectives import Fisher, Newton
from precondalg.optim import PSGD, SkippedStepWarning, optimizer_generator
from precondalg.optim.psgd import PRECONDITIONERS
from precondalg.placement import Concatenated, EveryAxis, Flatten, TwoSided

F64 = torch.float64
LR = 0.05


def _closure(model, kind, t):
    return lambda: loss_at(model, kind, t)


def _train(model, opt, kind, steps, closure=True):
    for t in range(steps):
        if closure:
            opt.step(_closure(model, kind, t))
        else:
            opt.zero_grad()
            loss_at(model, kind, t).backward()
            opt.step()


# ----- the choices -----


@pytest.mark.parametrize("preconditioner", PRECONDITIONERS)
def test_each_preconditioner_is_its_row_of_choices(preconditioner):
    model = make_model("cnn")
    opt = PSGD(model.parameters(), preconditioner=preconditioner, criterion="fisher", init_scale=0.5)
    Q = {tuple(tuple(p.shape) for p in b.params): opt._phi(b) for b in opt._all_blocks()}
    conv = ((3, 2, 3, 3),)
    if preconditioner in ("dense", "triangular"):
        assert len(Q) == 1  # one Q over the group's parameters concatenated
        (q,) = Q.values()
        assert type(q) is (pa.Dense if preconditioner == "dense" else pa.Triangular)
        assert q.shape[0] == sum(p.numel() for p in model.parameters())
    elif preconditioner == "lra":
        (q,) = Q.values()
        n = sum(p.numel() for p in model.parameters())
        U, V = q.factors[0].U, q.factors[0].V
        assert U.shape == V.shape == (n, 10) and torch.equal(q.factors[1].d, torch.full((n,), 0.5, dtype=F64))
        assert float(torch.linalg.matrix_norm(U @ V.mT, 2)) < 0.1  # Q₀ ≈ init_scale·I
        return
    elif preconditioner == "diag":
        assert all(type(q) is pa.Diagonal for q in Q.values())
    elif preconditioner == "kron":
        assert [type(f) for f in Q[conv].factors] == [pa.Triangular] * 4  # one factor per axis
        assert [f.shape[0] for f in Q[conv].factors] == [3, 2, 3, 3]
    else:
        right = pa.Normalization if preconditioner == "scan" else pa.Triangular
        assert [type(f) for f in Q[conv].factors] == [pa.Diagonal, right]
        assert [f.shape[0] for f in Q[conv].factors] == [3, 18]  # (out, in·h·w)
        assert type(Q[((3,),)]) is pa.Diagonal  # biases element-wise
    # Q₀ = init_scale·I: P₀ = init_scale²·I
    for _, P in opt.preconditioners():
        assert torch.allclose(P.to_dense(), 0.25 * torch.eye(P.shape[0], dtype=F64), atol=1e-15)
    covered = sum(p.numel() for params, _ in opt.preconditioners() for p in params)
    assert covered == sum(p.numel() for p in model.parameters())  # every parameter is preconditioned


def test_defaults_follow_the_criterion():
    w = torch.nn.Parameter(torch.ones(3, 2, dtype=F64))
    newton, fisher = PSGD([w]), PSGD([w], criterion="fisher")
    assert newton.param_groups[0]["lr"] == 1e-2 and fisher.param_groups[0]["lr"] == 1e-3
    assert isinstance(newton._objective, Newton) and isinstance(fisher._objective, Fisher)
    assert newton._fitter == LieGroup(lr=0.1, normalizer="max_abs")
    assert isinstance(newton._placement, EveryAxis) and newton._auto_scale
    assert newton._name == "PSGD" and "PSGD" in repr(newton)


def test_the_placements():
    w = torch.nn.Parameter(torch.ones(3, 2, dtype=F64))
    assert isinstance(PSGD([w], preconditioner="dense")._placement, Concatenated)
    assert isinstance(PSGD([w], preconditioner="diag")._placement, Flatten)
    assert isinstance(PSGD([w], preconditioner="scan")._placement((3, 2)), TwoSided)
    assert PSGD([w], preconditioner="diag")._fitter.diagonal == "per_entry"


W = torch.nn.Parameter(torch.ones(3, 2, dtype=F64))
BAD = {
    "preconditioner": (dict(preconditioner="lower"), ValueError, "'preconditioner'"),
    "criterion": (dict(criterion="gauss-newton"), ValueError, "'criterion'"),
    "lr": (dict(lr=-1.0), ValueError, "'lr'"),
    "lr_precond ≥ 1": (dict(lr_precond=1.0), ValueError, "'lr_precond'"),
    "lr_precond < 0": (dict(lr_precond=-0.1), ValueError, "'lr_precond'"),
    "init_scale": (dict(init_scale=0.0), ValueError, "'init_scale'"),
    "init_scale inf": (dict(init_scale=math.inf), ValueError, "'init_scale' must be .* > 0 and < inf"),
    "damping in a group": (dict(params=[{"params": [W], "damping": 0.1}], criterion="fisher"), ValueError,
                           "PSGD: a param group cannot choose 'damping'"),
    "lr_precond in a group": (dict(params=[{"params": [W], "lr_precond": 0.2}]), ValueError,
                              "a param group cannot choose 'lr_precond'"),
    "momentum": (dict(momentum=1.0), ValueError, "'momentum'"),
    "damping < 0": (dict(criterion="fisher", damping=-1.0), ValueError, "'damping'"),
    "damping with newton": (dict(damping=0.1), ValueError, "'damping'"),
    "hvp with fisher": (dict(criterion="fisher", hvp="finite_difference"), ValueError, "'hvp'"),
    "unknown hvp": (dict(hvp="exact"), ValueError, "'hvp'"),
    "clip": (dict(clip=0.0), ValueError, "'clip'"),
    "normalizer": (dict(normalizer="frobenius"), ValueError, "'normalizer'"),
    "max_size without kron": (dict(preconditioner="diag", max_size=10), ValueError, "'max_size'"),
    "max_skew < 0": (dict(max_skew=-1.0), ValueError, "'max_skew'"),
    "update_probability": (dict(update_probability=1.5), ValueError, "'update_probability'"),
    "weight_decay": (dict(weight_decay=-1.0), ValueError, "'weight_decay'"),
    "nonfinite": (dict(nonfinite="zero"), ValueError, "'nonfinite'"),
    "lr type": (dict(lr="0.1"), TypeError, "'lr'"),
    "torch.func without model": (dict(hvp="torch.func"), ValueError, "'model'"),
    "rank without lra": (dict(rank=4), ValueError, "'rank'"),
    "lra rank ≥ n": (dict(preconditioner="lra", rank=6), ValueError, "'rank'"),
    "lra with lipschitz": (dict(preconditioner="lra", normalizer="lipschitz"), ValueError, "'normalizer'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_hyperparameters_are_refused_naming_the_argument(case):
    kwargs, error, name = dict(BAD[case][0]), *BAD[case][1:]
    params = kwargs.pop("params", [torch.nn.Parameter(torch.ones(3, 2, dtype=F64))])
    with pytest.raises(error, match=name):
        PSGD(params, **kwargs)


# ----- reductions: Q fixed at I -----


GROUPS = tuple(p for p in PRECONDITIONERS if p != "lra")


@pytest.mark.parametrize("criterion", ["newton", "fisher"])
@pytest.mark.parametrize("preconditioner", GROUPS)
def test_q_fixed_at_identity_is_sgd(preconditioner, criterion):
    """Q₀ = I with lr_precond = 0: the fit leaves Q at I, so every step is torch.optim.SGD's."""
    kind = "cnn"
    ours, ref = make_model(kind), make_model(kind)
    opt = PSGD(ours.parameters(), LR, preconditioner=preconditioner, criterion=criterion, lr_precond=0.0,
               init_scale=1.0)
    sgd = torch.optim.SGD(ref.parameters(), lr=LR)
    _train(ours, opt, kind, 5)
    _train(ref, sgd, kind, 5, closure=False)
    assert_close(clone_params(ours.parameters()), clone_params(ref.parameters()))


@pytest.mark.parametrize("criterion", ["newton", "fisher"])
def test_lra_with_lr_precond_zero_keeps_its_initial_p(criterion):
    """LRA's Q₀ = (I + UVᵀ)·s is random (psgd_torch's init), so the reduction is to SGD preconditioned by
    that fixed P₀ = Q₀ᵀQ₀, computed densely."""
    kind = "mlp"
    ours, ref = make_model(kind), make_model(kind)
    opt = PSGD(ours.parameters(), LR, preconditioner="lra", rank=3, criterion=criterion, lr_precond=0.0,
               init_scale=0.8)
    ((_, P),) = opt.preconditioners()
    P0 = P.to_dense()
    _train(ours, opt, kind, 4)
    params = list(ref.parameters())
    for t in range(4):
        ref.zero_grad()
        loss_at(ref, kind, t).backward()
        with torch.no_grad():
            step = P0 @ torch.cat([p.grad.reshape(-1) for p in params])
            for p, s in zip(params, step.split([p.numel() for p in params])):
                p -= LR * s.reshape(p.shape)
    assert_close(clone_params(ours.parameters()), clone_params(params), tol=1e-14)


def test_momentum_is_the_ema_of_the_gradient_with_p_applied_to_it():
    """psgd_torch's momentum: m ← βm + (1 − β)g (m₀ = 0), θ ← θ − lr·P m; at Q = I an EMA SGD."""
    ours, ref = make_model("mlp"), make_model("mlp")
    opt = PSGD(ours.parameters(), LR, criterion="fisher", lr_precond=0.0, init_scale=1.0, momentum=0.8)
    _train(ours, opt, "mlp", 6)
    _train(ref, ema_sgd(ref.parameters(), LR, 0.8), "mlp", 6, closure=False)
    assert_close(clone_params(ours.parameters()), clone_params(ref.parameters()))


# ----- the step's conventions -----


def test_step_differentiates_a_closure_that_only_returns_the_loss_and_returns_it():
    model = make_model("mlp")
    opt = PSGD(model.parameters(), preconditioner="kron")
    loss = opt.step(_closure(model, "mlp", 0))
    assert torch.equal(loss, loss_at(make_model("mlp"), "mlp", 0).detach())
    assert all(p.grad is not None for p in model.parameters())


def test_newton_needs_a_closure():
    model = make_model("mlp")
    opt = PSGD(model.parameters())
    loss_at(model, "mlp", 0).backward()
    with pytest.raises(ValueError, match="needs a closure that returns the loss"):
        opt.step()


def test_fisher_uses_grad_without_a_closure():
    a, b = make_model("mlp"), make_model("mlp")
    opt_a = PSGD(a.parameters(), criterion="fisher", damping=0.1)
    opt_b = PSGD(b.parameters(), criterion="fisher", damping=0.1)
    _train(a, opt_a, "mlp", 3, closure=False)
    _train(b, opt_b, "mlp", 3, closure=True)
    assert_close(clone_params(a.parameters()), clone_params(b.parameters()), tol=0.0)


def test_torch_func_hvp_equals_autograd():
    def mse(out, y):
        return ((out - y) ** 2).mean()

    a, b = make_model("mlp"), make_model("mlp")
    from optim_helpers import batch

    opt_a = PSGD(a.parameters(), 0.1, preconditioner="triangular")
    opt_b = PSGD(b.parameters(), 0.1, preconditioner="triangular", hvp="torch.func", model=b, loss_fn=mse)
    for t in range(4):
        opt_a.step(_closure(a, "mlp", t))
        opt_b.step(batch=batch("mlp", t))
    assert_close(clone_params(a.parameters()), clone_params(b.parameters()), tol=1e-12)


# ----- init_scale=None -----


def _first_v(seed: int, params) -> list[torch.Tensor]:
    gen = optimizer_generator(seed)
    return [torch.randn(p.shape, generator=gen, dtype=F64) for p in params]


def test_on_the_fly_init_scale_is_psgd_torchs_heuristic():
    """Q₀ = s·I with s = (mean v²)^(1/4)(mean h⁴)^(−1/8) of the first (v, h) pair, per block (with
    lr_precond = 0 the fit then keeps it)."""
    model = make_model("mlp")
    params = list(model.parameters())
    opt = PSGD(params, criterion="fisher", damping=0.3, lr_precond=0.0, preconditioner="diag", seed=4)
    loss_at(model, "mlp", 0).backward()
    grads = [p.grad.clone() for p in params]
    opt.step()
    for p, g, v in zip(params, grads, _first_v(4, params)):
        h = g + 0.3 * v
        s = (v * v).mean() ** 0.25 * (h**4).mean() ** -0.125
        q = opt.state[p]["preconditioner"]["phi"][0]
        assert torch.allclose(q, torch.full_like(q, float(s)), rtol=1e-14, atol=0)
        assert not bool(opt.state[p]["preconditioner"]["scale_pending"])


@pytest.mark.parametrize("bad", [0.0, math.nan])
def test_a_zero_or_nonfinite_first_gradient_never_makes_a_nan_preconditioner(bad):
    """psgd_torch-style scales from 1/mean(g⁴) blow up on an all-zero gradient; here the block keeps
    Q₀ = I and waits for the first usable gradient."""
    w = torch.nn.Parameter(torch.ones(3, 2, dtype=F64))
    opt = PSGD([w], criterion="fisher", lr_precond=0.0)
    w.grad = torch.full_like(w, bad)
    with pytest.warns(SkippedStepWarning, match="PSGD: after 1 steps") if math.isnan(bad) else _nothing():
        opt.step()
    pre = opt.state[w]["preconditioner"]
    assert all(torch.isfinite(leaf).all() for leaf in pre["phi"])
    assert bool(pre["scale_pending"])
    assert torch.equal(opt.preconditioners()[0][1].to_dense(), torch.eye(6, dtype=F64))
    w.grad = torch.full_like(w, 2.0)
    opt.step()
    assert not bool(pre["scale_pending"])
    assert not torch.equal(opt.preconditioners()[0][1].to_dense(), torch.eye(6, dtype=F64))


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ----- update_probability -----


def test_update_probability_zero_never_fits_and_one_always_does():
    w = torch.nn.Parameter(torch.ones(3, 2, dtype=F64))
    never = PSGD([w], criterion="fisher", init_scale=1.0, update_probability=0.0)
    for _ in range(3):
        w.grad = torch.randn(3, 2, dtype=F64)
        never.step()
    assert torch.equal(never.preconditioners()[0][1].to_dense(), torch.eye(6, dtype=F64))


def test_update_probability_draws_from_the_checkpointed_generator():
    """With p = 0.5 the fits happen on the steps where the generator's uniform draw is < 0.5."""
    w = torch.nn.Parameter(torch.ones(3, 2, dtype=F64))
    opt = PSGD([w], criterion="fisher", init_scale=1.0, update_probability=0.5, seed=3)
    fitted = []
    for t in range(40):
        before = opt.preconditioners()[0][1].to_dense()
        w.grad = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(t))
        opt.step()
        fitted.append(not torch.equal(before, opt.preconditioners()[0][1].to_dense()))
    assert 10 <= sum(fitted) <= 30
    # the draw decides first, then (if fitting) v is drawn
    gen, expected = optimizer_generator(3), []
    for _ in range(40):
        fit = float(torch.rand((), generator=gen, dtype=F64)) < 0.5
        expected.append(fit)
        if fit:
            torch.randn(3, 2, generator=gen, dtype=F64)
    assert fitted == expected


def test_update_probability_schedule_reads_the_steps_taken():
    seen = []

    def schedule(t):
        seen.append(t)
        return 1.0 if t < 2 else 0.0

    w = torch.nn.Parameter(torch.ones(3, 2, dtype=F64))
    opt = PSGD([w], criterion="fisher", init_scale=1.0, update_probability=schedule)
    for _ in range(4):
        w.grad = torch.ones(3, 2, dtype=F64)
        opt.step()
    assert seen == [0, 1, 2, 3] and opt.steps == 4
    bad = PSGD([w], criterion="fisher", update_probability=lambda t: 2.0)
    with pytest.raises(ValueError, match=r"update_probability\(0\).*'update_probability' must be"):
        bad.step()


def test_newton_without_a_fit_makes_no_hessian_vector_product():
    """A step that does not fit evaluates the gradient only (no double backward): the closure's graph
    is differentiated once."""
    model = make_model("mlp")
    opt = PSGD(model.parameters(), init_scale=1.0, update_probability=0.0)
    calls = []

    def closure():
        loss = loss_at(model, "mlp", 0)
        loss.register_hook(lambda g: calls.append(1))
        return loss

    opt.step(closure)
    assert len(calls) == 1
    ref = make_model("mlp")
    loss_at(ref, "mlp", 0).backward()
    assert_close([p.grad for p in model.parameters()], [p.grad for p in ref.parameters()], tol=0.0)


# ----- clipping -----


@pytest.mark.parametrize("omega", [1e-3, 1e6])
def test_clip_bounds_the_step_by_lr_times_omega(omega):
    """‖θ′ − θ‖ = lr·‖Pĝ‖/max(1, ‖Pĝ‖/Ω) ≤ lr·Ω (§4.4): clipped to exactly lr·Ω when ‖Pĝ‖ > Ω."""
    a, b = make_model("mlp"), make_model("mlp")
    clipped = PSGD(a.parameters(), LR, criterion="fisher", init_scale=2.0, clip=omega, lr_precond=0.0)
    plain = PSGD(b.parameters(), LR, criterion="fisher", init_scale=2.0, lr_precond=0.0)
    before = clone_params(a.parameters())
    _train(a, clipped, "mlp", 1)
    _train(b, plain, "mlp", 1)
    moved = [x - y for x, y in zip(clone_params(a.parameters()), before)]
    full = [x - y for x, y in zip(clone_params(b.parameters()), before)]
    norm = torch.linalg.vector_norm(torch.cat([m.reshape(-1) for m in moved]))
    full_norm = torch.linalg.vector_norm(torch.cat([m.reshape(-1) for m in full]))
    if full_norm > LR * omega:
        assert math.isclose(norm, LR * omega, rel_tol=1e-12)
        assert_close(moved, [m * (LR * omega / full_norm) for m in full], tol=1e-14)
    else:
        assert_close(moved, full, tol=0.0)


# ----- the paper's problem -----


def rosenbrock_iterations(seed: int, criterion: str = "newton", steps: int = 400) -> tuple[int | None, float]:
    """Iterations of PSGD (triangular Q₀ = 0.1·I) on Rosenbrock from (−1, 1) until f < 1e-10, with the
    paper's steps (Newton: lr 0.5, lr_precond 0.2; Fisher: λ = 0.1, lr 0.001, lr_precond 0.01)."""
    x = torch.tensor([-1.0, 1.0], dtype=F64, requires_grad=True)
    kwargs = (
        dict(lr=0.5, lr_precond=0.2) if criterion == "newton" else dict(lr=1e-3, lr_precond=0.01, damping=0.1)
    )
    opt = PSGD([x], preconditioner="triangular", criterion=criterion, init_scale=0.1, seed=seed, **kwargs)

    def f():
        return 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2

    for i in range(steps):
        loss = float(opt.step(f))
        if loss < 1e-10:
            return i, loss
    return None, float(f())


def test_rosenbrock_newton_converges_in_about_200_iterations():
    """Li 2019, Fig. 1: Newton-type PSGD reaches f < 1e-10 in about 200 iterations (median of 5 seeds
    here at most 250)."""
    counts = [rosenbrock_iterations(seed)[0] for seed in range(5)]
    assert None not in counts, counts
    assert statistics.median(counts) <= 250, counts


def test_rosenbrock_fisher_does_poorly():
    """Fisher type 'does not fit into this problem, and performs poorly' (Li 2019, §7.1)."""
    count, f = rosenbrock_iterations(0, "fisher", steps=1000)
    assert count is None and f > 1.0


# ----- weight decay, finite differences, checkpoints -----


@pytest.mark.parametrize("criterion", ["newton", "fisher"])
def test_weight_decay_is_the_l2_term_of_the_fitted_loss(criterion):
    """weight_decay = wd fits P to the loss + (wd/2)‖θ‖² (h = (H + wd·I)v for Newton, the decayed
    gradient for Fisher): the same run as with the L2 term written into the closure."""
    a, b = make_model("mlp"), make_model("mlp")
    kwargs = dict(preconditioner="kron", criterion=criterion, init_scale=1.0, seed=2)
    opt_a = PSGD(a.parameters(), 0.05, weight_decay=0.3, **kwargs)
    opt_b = PSGD(b.parameters(), 0.05, **kwargs)
    for t in range(4):
        opt_a.step(_closure(a, "mlp", t))
        opt_b.step(lambda t=t: loss_at(b, "mlp", t) + 0.15 * sum((p**2).sum() for p in b.parameters()))
    assert_close(clone_params(a.parameters()), clone_params(b.parameters()), tol=1e-12)


def test_weight_decay_with_newton_keeps_the_step_normalised():
    """A quadratic with L2: P fitted to H + wd·I, so the normalised step converges (it diverged when h
    ignored the decay)."""
    H = torch.diag(torch.tensor([1e-2, 1e-1, 1.0, 3.0], dtype=F64))
    x = torch.nn.Parameter(torch.ones(4, dtype=F64))
    opt = PSGD([x], lr=0.5, preconditioner="dense", weight_decay=1.0, seed=1)
    for _ in range(300):
        opt.step(lambda: 0.5 * x @ H @ x)
    assert float(x.detach().abs().max()) < 1e-20


def test_finite_difference_replays_the_closures_random_draws():
    """With dropout in the closure, the shifted evaluation draws the same masks (h matches autograd's
    Hv to finite-difference accuracy), and the global random state ends where one evaluation leaves it."""
    from precondalg.objectives import Newton as NewtonCriterion

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Dropout(0.3),
                              torch.nn.Linear(6, 2)).to(F64)
    x, y = torch.randn(16, 4, dtype=F64), torch.randn(16, 2, dtype=F64)
    params = list(net.parameters())

    def closure():
        return ((net(x) - y) ** 2).mean()

    results = {}
    for hvp in ("autograd", "finite_difference"):
        torch.manual_seed(5)
        evaluation = NewtonCriterion(hvp=hvp).evaluate(params, closure, torch.Generator().manual_seed(1))
        results[hvp] = evaluation.of("h", params), torch.get_rng_state()
    (h_exact, state_exact), (h_fd, state_fd) = results["autograd"], results["finite_difference"]
    assert max(float((a - b).abs().max() / a.abs().max()) for a, b in zip(h_exact, h_fd)) < 1e-5
    assert torch.equal(state_exact, state_fd)


def test_a_checkpoint_of_another_lra_rank_is_refused():
    w = torch.nn.Parameter(torch.ones(4, 3, dtype=F64))
    saved = PSGD([w], preconditioner="lra", rank=3, criterion="fisher").state_dict()
    with pytest.raises(ValueError, match=r"IdentityPlusLowRank 12×12 \(leaves 12×3, 12×3\).*12×5"):
        PSGD([w], preconditioner="lra", rank=5, criterion="fisher").load_state_dict(saved)


def test_one_q_over_parameters_of_different_dtypes_is_refused_at_construction():
    a = torch.nn.Parameter(torch.ones(2, dtype=torch.float32))
    b = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"must share one dtype and device.*float32.*float64"):
        PSGD([a, b], preconditioner="dense")
    PSGD([{"params": [a]}, {"params": [b]}], preconditioner="dense")  # one group each: fine


def test_param_groups_and_add_param_group_keep_their_own_lr():
    """Two groups with their own lr (one added later), Q fixed at I: torch.optim.SGD with the same groups;
    the second group gets its own preconditioner blocks."""
    ours, theirs = make_model("mlp"), make_model("mlp")
    opt = PSGD(list(ours.fc1.parameters()), LR, criterion="fisher", lr_precond=0.0, init_scale=1.0)
    blocks = len(opt.preconditioners())
    opt.add_param_group({"params": list(ours.fc2.parameters()), "lr": 0.2})
    assert len(opt.preconditioners()) == blocks + 2
    ref = torch.optim.SGD(list(theirs.fc1.parameters()), lr=LR)
    ref.add_param_group({"params": list(theirs.fc2.parameters()), "lr": 0.2})
    _train(ours, opt, "mlp", 5)
    _train(theirs, ref, "mlp", 5, closure=False)
    assert_close(clone_params(ours.parameters()), clone_params(theirs.parameters()))


def test_raise_policy_changes_nothing():
    model = make_model("mlp")
    opt = PSGD(model.parameters(), criterion="fisher", nonfinite="raise", init_scale=1.0)
    _train(model, opt, "mlp", 2, closure=False)
    before, state = clone_params(model.parameters()), opt.state_dict()
    loss_at(model, "mlp", 2).backward()
    model.fc2.bias.grad[0] = math.nan
    with pytest.raises(FloatingPointError, match="a gradient holds NaN or Inf"):
        opt.step()
    assert_close(clone_params(model.parameters()), before, tol=0.0)
    after = opt.state_dict()
    assert all(torch.equal(a, b) for a, b in zip(after["state"][0]["preconditioner"]["phi"],
                                                 state["state"][0]["preconditioner"]["phi"]))


def test_the_default_seed_does_not_replay_torch_manual_seed():
    """v must not be the noise a closure draws from torch's global generator seeded with the same
    number (seed=0 and torch.manual_seed(0) are everyone's defaults): on a noisy linear loss
    x·ξ with ξ from the global generator, Fisher's h = ξ + 0·v and v would then coincide and the
    criterion's relative gradient vanish (P never fits)."""
    x = torch.nn.Parameter(torch.zeros(4, dtype=F64))
    opt = PSGD([x], criterion="fisher", preconditioner="diag", init_scale=1.0, seed=0)
    torch.manual_seed(0)
    for _ in range(50):
        opt.step(lambda: x @ torch.randn(4, dtype=F64))
    assert not torch.allclose(opt.preconditioners()[0][1].to_dense(), torch.eye(4, dtype=F64))
