"""APO-E1, the Rosenbrock function (Bae et al. 2022, App. C.1; `precondalg.problems.Rosenbrock`): the
function, its gradient and Hessian against closed forms and automatic differentiation, the model that
holds the point (θ = c·w, the gradient c∇f), the input scale as APO-Precond's initial preconditioner
c²·I, the loop `minimize` (APO's batch, the recorded path, divergence), APO-LR's first meta-step against
the sign of ∂Q/∂η written out, and the benchmark script benchmarks/apo_rosenbrock.py: its grids (equal
budgets), its quick configuration's measured values with stated margins, and a 30-step run of the whole
script (files, selection, criteria).

Everything here is float64 and deterministic (no data, no sampling).
"""

from __future__ import annotations

import csv
import doctest
import importlib
import json
import math

import pytest
import torch
from optim_helpers import benchmark_module

from precondalg.optim import APO
from precondalg.problems import Rosenbrock, RosenbrockRun, minimize, rosenbrock

F64 = torch.float64
MODULE = importlib.import_module("precondalg.problems.rosenbrock")


@pytest.fixture(scope="module")
def script():
    """benchmarks/apo_rosenbrock.py as a module (benchmarks/ on sys.path, as when it runs)."""
    with benchmark_module("apo_rosenbrock") as module:
        yield module


def _points(n: int, seed: int = 0) -> torch.Tensor:
    return 3 * torch.rand(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64) - 1.5


# -------------------------------------------------------------------------------------- the function
def test_module_doctests():
    assert doctest.testmod(MODULE).failed == 0


def test_values_at_known_points():
    p = Rosenbrock()
    for point, value in (((-1.0, 1.0), 4.0), ((1.0, 1.0), 0.0), ((-1.5, 2.5), 12.5), ((0.0, 0.0), 1.0)):
        assert p.value(torch.tensor(point, dtype=F64)).item() == value
    q = Rosenbrock(a=2.0, b=10.0)
    assert q.value(q.minimum).item() == 0.0 and q.minimum.tolist() == [2.0, 4.0]
    assert rosenbrock(torch.tensor([0.0, 1.0]), a=2.0, b=10.0).item() == 4.0 + 10.0


@pytest.mark.parametrize("a, b", [(1.0, 100.0), (2.0, 10.0)])
def test_gradient_and_hessian_against_autograd(a, b):
    """The closed forms equal torch.func's gradient and Hessian of f at 20 random points (to round-off)."""
    p = Rosenbrock(a=a, b=b)
    for point in _points(20):
        grad = torch.func.grad(p.value)(point)
        hess = torch.func.hessian(p.value)(point)
        assert torch.allclose(p.gradient(point), grad, rtol=1e-13, atol=1e-12)
        assert torch.allclose(p.hessian(point), hess, rtol=1e-13, atol=1e-12)


def test_minimum_is_stationary_and_ill_conditioned():
    """∇f(1, 1) = 0; ∇²f(1, 1) = [[802, −400], [−400, 200]], eigenvalues 501 ± √(501² − 400): the
    curvature across the valley is 2508 times that along it."""
    p = Rosenbrock()
    assert p.gradient(p.minimum).abs().max().item() == 0.0
    H = p.hessian(p.minimum)
    assert H.tolist() == [[802.0, -400.0], [-400.0, 200.0]]
    expected = [501 - math.sqrt(501**2 - 400), 501 + math.sqrt(501**2 - 400)]
    assert torch.allclose(torch.linalg.eigvalsh(H), torch.tensor(expected, dtype=F64), rtol=1e-13)


@pytest.mark.parametrize("c", [1.0, 0.03])
@pytest.mark.parametrize("start", [(-1.0, 1.0), (-1.5, 2.5)])
def test_model_holds_the_point_and_gives_c_times_the_gradient(c, start):
    """θ = c·w: the model's output on the input c is the start, and ∂f/∂w = c·∇f(θ) (shape (2, 1))."""
    p = Rosenbrock(start=start, input_scale=c)
    model = p.make_model()
    assert model.weight.shape == (2, 1) and model.bias is None and model.weight.dtype == F64
    assert torch.allclose(p.point(model), torch.tensor(start, dtype=F64), rtol=1e-15)
    p.loss_fn(model(p.inputs)).backward()
    theta = torch.tensor(start, dtype=F64)
    assert torch.allclose(model.weight.grad[:, 0], c * p.gradient(theta), rtol=1e-13)
    assert p.loss_fn(model(p.inputs)).item() == pytest.approx(p.value(theta).item(), rel=1e-14)


def test_refusals():
    for bad in ({"input_scale": 0.0}, {"input_scale": -1.0}, {"input_scale": math.inf}, {"start": (1.0,)}):
        with pytest.raises(ValueError):
            Rosenbrock(**bad)
    p = Rosenbrock()
    model = p.make_model()
    sgd = torch.optim.SGD(model.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="steps"):
        minimize(p, model, sgd, -1)
    with pytest.raises(ValueError, match="diverge_factor"):
        minimize(p, model, sgd, 1, diverge_factor=1.0)


# ------------------------------------------------------------------------------------ the input scale
@pytest.mark.parametrize("eta0", [1e-3, 3e-4])
def test_input_scale_is_the_initial_preconditioner(eta0):
    """With meta_lr = 0 (P̂ stays I), APO-Precond on the input c = √η₀ with lr 1 takes the θ-steps of
    SGD at 0.9·η₀ on c = 1 (a w-step −0.9∇_w = −0.9c∇f is the θ-step −0.9c²∇f), and the preset's own
    route (c = 1, lr = η₀) does too: the two ways of starting at SGD differ only in the lookahead."""
    steps = 100
    ref = Rosenbrock()
    model = ref.make_model()
    sgd = minimize(ref, model, torch.optim.SGD(model.parameters(), lr=0.9 * eta0), steps, record_points=True)
    for c, lr in ((math.sqrt(eta0), 1.0), (1.0, eta0)):
        p = Rosenbrock(input_scale=c)
        model = p.make_model()
        opt = APO(
            model.parameters(), lr, model=model, loss_fn=p.loss_fn, base="sgd", meta_lr=0.0, lam_fsd=0.0
        )
        run = minimize(p, model, opt, steps, record_points=True)
        assert torch.allclose(torch.tensor(run.points), torch.tensor(sgd.points), rtol=1e-12, atol=1e-14)


# -------------------------------------------------------------------------------------------- the loop
def test_minimize_records_the_path():
    p = Rosenbrock(start=(-1.5, 2.5))
    model = p.make_model()
    run = minimize(p, model, torch.optim.SGD(model.parameters(), lr=1e-4), 25, record_points=True)
    assert isinstance(run, RosenbrockRun) and run.diverged_at is None and run.skipped == 0
    assert len(run.losses) == 25 and len(run.points) == 26
    assert run.points[0] == (-1.5, 2.5) and run.losses[0] == 12.5
    assert run.points[-1] == tuple(p.point(model).tolist()) and run.final == p.value(p.point(model)).item()
    for value, point in zip(run.losses, run.points):
        assert value == pytest.approx(p.value(torch.tensor(point, dtype=F64)).item(), rel=1e-14)
    assert minimize(p, p.make_model(), torch.optim.SGD(model.parameters(), lr=1e-4), 3).points == []


def test_minimize_stops_at_divergence():
    """SGD at lr 0.1 from (−1, 1) overshoots the valley and the quartic term takes over within a few
    steps (measured: f > 1e6·f₀ at step 5)."""
    p = Rosenbrock()
    model = p.make_model()
    run = minimize(p, model, torch.optim.SGD(model.parameters(), lr=0.1), 100)
    assert run.final == math.inf and run.diverged_at is not None and run.diverged_at <= 10
    assert len(run.losses) == run.diverged_at


@pytest.mark.parametrize("eta0", [1e-2, 1e-4])
def test_apo_lr_first_meta_step_has_the_sign_of_minus_dQ_deta(eta0):
    """minimize steps APO with its batch.  With λ_FSD = λ_WSD = 0, Q(η) = f(θ − ηg) and
    ∂Q/∂log η = −η∇f(θ − ηg)·g (closed form); the first meta-step (step 0) of RMSprop (lr 0.1) on log η
    has size 1 (first step of RMSprop: 0.1·g/(√((1 − α)g²) + ε), α = 0.99; ε = 1e-8 shortens it by
    6e-5 relative at η₀ = 1e-4, where |g| ≈ 1.6e-3), so η₁ = η₀·exp(−sign ∂Q/∂log η); then
    the meta-updates are at steps 10 and 20 only."""
    p = Rosenbrock()
    theta = torch.tensor(p.start, dtype=F64)
    g = p.gradient(theta)
    slope = -eta0 * torch.dot(p.gradient(theta - eta0 * g), g).item()
    model = p.make_model()
    opt = APO(
        model.parameters(),
        eta0,
        model=model,
        loss_fn=p.loss_fn,
        mode="lr",
        base="sgd",
        lam_fsd=0.0,
        lam_wsd=0.0,
        meta_every=10,
    )
    etas = []
    for _ in range(21):
        minimize(p, model, opt, 1)
        etas.append(float(opt.preconditioners()[0][1].alpha))
    assert etas[0] == pytest.approx(eta0 * math.exp(-math.copysign(1.0, slope)), rel=1e-3)
    changes = [t for t in range(1, 21) if etas[t] != etas[t - 1]]
    assert changes == [10, 20]


# ------------------------------------------------------------------------------------- the benchmark
def test_grids_give_equal_budgets(script):
    """30 configurations for every method; the baselines' learning rates are 10^(−5 + k/5)."""
    assert {m: len(spec["grid"]) for m, spec in script.METHODS.items()} == dict.fromkeys(script.METHODS, 30)
    lrs = [hp["lr"] for hp in script.METHODS["SGD"]["grid"]]
    assert lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(10**0.8)
    assert all(b / a == pytest.approx(10**0.2) for a, b in zip(lrs, lrs[1:]))
    assert script.STEPS == 2000 and script.META_EVERY == 10
    assert set(script.QUICK_GRIDS) == set(script.METHODS)
    assert script.STARTS == {"(-1, 1)": (-1.0, 1.0), "(-1.5, 2.5)": (-1.5, 2.5)}


def test_scaled_rows_run_on_the_input_sqrt_eta0(script):
    """The "P0=eta0*I" rows put c = √η₀ in the problem, lr 1 (SGD) or 0.1 (momentum), λ_WSD·c² in the
    preset (its weight-space equivalent); the other rows c = 1."""
    hp = {"eta0": 4e-4, "meta_lr": 0.01, "lam_wsd": 10.0}
    for row, lr in ((script.PRECOND_ROWS[1], 1.0), (script.PRECOND_ROWS[2], 0.1)):
        problem, model, opt, _ = script.run_one(row, hp, (-1.0, 1.0), 0)
        assert problem.input_scale == pytest.approx(0.02)
        assert opt.param_groups[0]["lr"] == lr
        assert opt.objective.lam_wsd == pytest.approx(10.0 * 4e-4) and opt.objective.lam_fsd == 0.0
    problem, *_ = script.run_one(
        script.PRECOND_ROWS[0], {"lr": 1e-3, "meta_lr": 1e-3, "lam_wsd": 0.0}, (-1, 1), 0
    )
    assert problem.input_scale == 1.0


def test_quick_configuration_values(script):
    """The quick configuration's winners after 300 steps from (−1, 1), run here, equal the values the
    script measured (benchmarks/apo_rosenbrock.py --quick, copied from its JSON) to 1e-6 relative (float64
    on two numbers: the margin covers another CPU's rounding, e.g. fused multiply-adds), and show the
    ordering at this budget: APO-LR more than 4× below SGD (measured 4.4×), SGD-momentum more than 1000×
    below APO-Precond on the momentum base (measured 4900×)."""
    start = (-1.0, 1.0)
    measured = {
        "SGD": ({"lr": 3e-3}, 0.24623439001823075),
        "SGDm": ({"lr": 3e-3}, 1.832433198428269e-05),
        script.APO_LR: ({"eta0": 1e-2, "meta_lr": 0.1, "lam_wsd": 0.0}, 0.05567228968176999),
        script.PRECOND_ROWS[2]: ({"eta0": 1e-3, "meta_lr": 0.03, "lam_wsd": 0.0}, 0.08946359301303118),
    }
    finals = {}
    for name, (hp, value) in measured.items():
        assert hp in script.QUICK_GRIDS[name]
        finals[name] = script.run_one(name, hp, start, script.QUICK_STEPS)[-1].final
        assert finals[name] == pytest.approx(value, rel=1e-6)
    assert finals[script.APO_LR] < finals["SGD"] / 4
    assert finals["SGDm"] < 1e-3 * finals[script.PRECOND_ROWS[2]]


def test_script_runs_end_to_end(script, tmp_path):
    """A 30-step quick run writes the four files; each winner is the lowest of its tuning rows; the
    criteria are the App. C.1 lines for each APO-Precond row; the CSV holds each winner's path."""
    out = tmp_path / "rosen.json"
    assert script.main(["--quick", "--steps", "30", "--no-git", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["config"]["steps"] == 30 and data["machine"]["commit_line"] == "git not consulted"
    (res,) = data["starts"].values()
    for name, s in res["summary"].items():
        rows = res["tuning"][name]["rows"]
        assert s["final"] == min(r["final"] for r in rows) and len(rows) == len(script.QUICK_GRIDS[name])
    names = [c["criterion"] for c in res["criteria"]]
    assert len(names) == 1 + 2 * len(script.PRECOND_ROWS)
    with out.with_suffix(".csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(script.METHODS) * 31
    assert {(r["method"], r["step"]) for r in rows if r["step"] == "0"} == {(m, "0") for m in script.METHODS}
    assert out.with_suffix(".png").stat().st_size > 0 and out.with_suffix(".log").stat().st_size > 0
