"""The experiments CLI and the fair-comparison harness (issue 12): what `run` writes, the papers' numbers of
the deterministic toy experiments (exact iteration counts), the harness's equal budgets, its stepping
conventions against each optimizer's own, user rows and tasks by import path, and the errors."""

from __future__ import annotations

import json
import math
import statistics
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from precondalg.experiments import registered
from precondalg.experiments.cli import main
from precondalg.experiments.compare import compare
from precondalg.experiments.core import experiment
from precondalg.experiments.harness import (
    MethodResult,
    RunRecord,
    choose_points,
    optimizer_step,
    summarise,
)
from precondalg.experiments.methods import GRID_SIZE, METHODS, Method, load_method, resolve_methods
from precondalg.experiments.tasks import TASKS, as_instance
from precondalg.optim import APO, PSGD

EXPERIMENTS = registered()
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "experiments" / "results"
QUIET = dict(show_progress=False, echo=False)


def test_list_shows_every_experiment_with_its_paper_figure_and_minutes(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for exp in EXPERIMENTS.values():
        line = next(ln for ln in out.splitlines() if ln.startswith(f"| {exp.name} |"))
        assert exp.paper in line and exp.figure in line
        assert f"{exp.minutes:g} (quick {exp.quick_minutes:g})" in line
    assert {"FOP-E1", "FOP-E2", "PSGD-E1", "LODO-E1", "LODO-E2"} <= set(EXPERIMENTS)


@pytest.fixture(scope="module")
def booth_run(tmp_path_factory):
    """FOP-E1 --quick: 3 ring starts, 8000 iterations (Adam needs 5889 from the paper's start)."""
    out = tmp_path_factory.mktemp("FOP-E1")
    assert main(["run", "FOP-E1", "--quick", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.mark.slow  # the FOP-E1 quick run they share: 24 s
def test_run_writes_results_json_curves_and_plots(booth_run):
    r = json.loads((booth_run / "results.json").read_text())
    assert r["experiment"]["name"] == "FOP-E1" and r["config"]["seeds"] == [0, 1, 2]
    assert r["config"]["steps"] == 8000 and r["wall_seconds"] > 0
    assert {"torch", "python", "cpu_model", "git_commit", "date"} <= set(r["machine"])
    sgd = r["metrics"]["SGD"]["iterations"]
    assert len(sgd["per_seed"]) == 3
    assert sgd["mean_std"][0] == pytest.approx(statistics.fmean(sgd["per_seed"]))
    assert sgd["mean_std"][1] == pytest.approx(statistics.stdev(sgd["per_seed"]))
    for name in ("loss_from_paper_start.csv", "loss_from_paper_start.png", "trajectories.png", "summary.md"):
        assert (booth_run / name).stat().st_size > 0, name
    assert (booth_run / "trajectories.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header = (booth_run / "loss_from_paper_start.csv").read_text().splitlines()[0]
    assert header == "method,seed,iteration,value"
    tuned = [k for k in r["metrics"] if k.endswith("(tuned)")]
    assert len(tuned) == 6 and all(len(r["tuning"][k]["trials"]) == 5 for k in r["tuning"])  # equal budgets


@pytest.mark.slow
def test_booth_reproduces_the_calibrated_iteration_counts_exactly(booth_run):
    """SGD at 0.005 from (−4, 4) takes exactly 832 iterations to f < 1e-6 (the paper's count), FOP with
    ρ = 0.0095 544 and Adam at 0.003 5889 (the numpy calibration of the design notes)."""
    claims = json.loads((booth_run / "results.json").read_text())["claims"]
    measured = {c["claim"].split(" from")[0]: c["measured"] for c in claims if "from (−4, 4)" in c["claim"]}
    assert measured == {"SGD": "832", "FOP": "544", "Adam": "5889"}
    assert all(c["holds"] for c in claims), claims


def test_run_refuses_fewer_than_three_seeds_and_unknown_names(capsys, tmp_path):
    assert main(["run", "FOP-E1", "--seeds", "2", "--out", str(tmp_path)]) == 2
    assert "at least 3 seeds" in capsys.readouterr().err
    assert main(["run", "FOP-E9"]) == 2
    assert "unknown experiment 'FOP-E9'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- harness
def test_every_built_in_method_has_a_grid_of_the_same_size():
    assert GRID_SIZE == 5 and {len(m.grid) for m in METHODS.values()} == {GRID_SIZE}
    assert [p["lr"] for p in choose_points(METHODS["Adam"], 3)] == [1e-2, 1e-3, 1e-4]
    small = Method("tiny", METHODS["SGD"].make, ({"lr": 0.1},))
    with pytest.raises(ValueError, match="'tiny' has 1 grid points, fewer than the budget 2"):
        choose_points(small, 2)
    with pytest.raises(ValueError, match="unknown method 'Adamm'"):
        resolve_methods(["Adamm"])


def test_the_same_seed_gives_every_method_the_same_weights_and_batches():
    for name, task in TASKS.items():
        a, b = as_instance(task(3), name), as_instance(task(3), name)
        for p, q in zip(a.model.parameters(), b.model.parameters()):
            assert torch.equal(p, q), name
        for (x1, y1), (x2, y2) in zip(a.batches[:5], b.batches[:5]):
            assert (x1 is None or torch.equal(x1, x2)) and (y1 is None or torch.equal(y1, y2)), name
    other = as_instance(TASKS["digits_mlp"](4), "digits_mlp")
    same = as_instance(TASKS["digits_mlp"](3), "digits_mlp")
    assert not torch.equal(next(other.model.parameters()), next(same.model.parameters()))


def test_the_seed_reaches_the_methods_own_draws_and_the_callers_generator_is_left_alone():
    """On the deterministic Rosenbrock task only PSGD's probe vectors are random: seed 1 moves another
    way than seed 0, seed 0 twice the same way; torch's global generator is as it was."""
    from precondalg.experiments.harness import train

    psgd = METHODS["PSGD"]
    before = torch.get_rng_state()
    a, b, c = (train(psgd, {"lr": 0.01}, TASKS["rosenbrock"], seed, 5).curve for seed in (0, 0, 1))
    assert torch.equal(torch.get_rng_state(), before)
    assert a == b and a != c


def _twins(task: str, seed: int = 0):
    return as_instance(TASKS[task](seed), task), as_instance(TASKS[task](seed), task)


def _plain(opt, model, loss_fn, batch, nxt):
    opt.zero_grad()
    value = loss_fn(model(batch[0]), batch[1])
    value.backward()
    opt.step()
    return float(value.detach())


def _psgd(opt, model, loss_fn, batch, nxt):  # psgd_torch's convention: the closure does not call backward
    return float(opt.step(lambda: loss_fn(model(batch[0]), batch[1])))


def _apo(opt, model, loss_fn, batch, nxt):  # APO's proximal objective takes B and the inputs of B′
    opt.zero_grad()
    value = loss_fn(model(batch[0]), batch[1])
    value.backward()
    opt.step(batch=batch, fsd_batch=nxt[0])
    return float(value.detach())


def _lbfgs(opt, model, loss_fn, batch, nxt):
    def closure():
        opt.zero_grad()
        value = loss_fn(model(batch[0]), batch[1])
        value.backward()
        return value

    return float(opt.step(closure).detach())


@pytest.mark.parametrize(
    "make, own_step",
    [
        (lambda m, t: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9), _plain),
        (lambda m, t: PSGD(m.parameters(), 0.05, preconditioner="kron", criterion="newton", seed=1), _psgd),
        (lambda m, t: APO(m.parameters(), 0.05, model=m, loss_fn=t.loss_fn, meta_every=1, seed=1), _apo),
        (lambda m, t: torch.optim.LBFGS(m.parameters(), lr=0.5, max_iter=1), _lbfgs),
    ],
    ids=["torch.optim", "PSGD closure without backward", "APO batch", "LBFGS closure"],
)
def test_optimizer_step_is_each_optimizers_own_convention(make, own_step):
    """Three steps of `optimizer_step` equal three steps written in the optimizer's own convention."""
    a, b = _twins("digits_mlp")
    opt_a, opt_b = make(a.model, a), make(b.model, b)
    for t in range(3):
        batch, nxt = a.batches[t], a.batches[t + 1]
        ours = optimizer_step(opt_a, a.model, a.loss_fn, batch, nxt)
        assert ours == own_step(opt_b, b.model, b.loss_fn, batch, nxt)
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)


def test_summarise_reports_means_stds_counts_and_ratios():
    def record(final, reached, step):
        seconds = None if reached is None else 0.5 * reached
        return RunRecord([(0, 2.0)], final, 0.9, reached, seconds, step, 8.0, None, 0, 1.0)

    runs = [record(0.1, 10, 0.002), record(0.3, None, 0.004), record(0.2, 30, 0.003)]
    row = summarise(MethodResult("X", [], {"lr": 0.1}, runs), adam_step_seconds=0.001)
    assert row["final_loss"] == pytest.approx((0.2, statistics.stdev([0.1, 0.3, 0.2])))
    assert row["reached_target"] == "2/3"
    assert row["steps_to_target"] == pytest.approx((20.0, statistics.stdev([10, 30])))
    assert row["step_time_vs_adam"] == pytest.approx(3.0) and row["state_bytes_per_param"] == 8.0
    diverged = summarise(MethodResult("Y", [], {}, [record(math.inf, None, 0.001)] * 3), 0.001)
    assert math.isinf(diverged["final_loss"][0]) and diverged["diverged_runs"] == 0  # inf, but no diverged_at
    runs[1].diverged_at = 40
    from precondalg.experiments.compare import _table

    line = next(ln for ln in _table([summarise(MethodResult("X", [], {"lr": 0.1}, runs), 0.001)]).splitlines()
                if ln.startswith("| X |"))
    assert "| 0.2 ± 0.1 (1/3 runs diverged) |" in line, line


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rows.py").write_text(textwrap.dedent('''
        import torch
        from precondalg.families import diagonal_gram
        from precondalg.fitters import TorchOptimizer
        from precondalg.objectives import Hypergradient
        from precondalg.optim import Preconditioned
        from precondalg.placement import Flatten
        from precondalg.experiments.tasks import Point

        def diag_fop(params, lr):
            """A user's row: a diagonal FOP-like preconditioner from the engine's parts."""
            return Preconditioned(params, lr, structure=diagonal_gram(), placement=Flatten(),
                                  objective=Hypergradient(), fitter=TorchOptimizer(torch.optim.SGD, lr=1e-3),
                                  base="sgd")
        diag_fop.grid = [{"lr": 1e-3}, {"lr": 5e-4}]

        def quadratic(seed):
            g = torch.Generator().manual_seed(seed)
            model = Point(torch.randn(3, generator=g, dtype=torch.float64))
            return model, lambda theta, _: (theta ** 2).sum(), [(None, None)]
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_rows"
    sys.modules.pop("my_rows", None)


def test_compare_takes_a_users_row_and_task_by_import_path(user_module, tmp_path):
    row = f"{user_module}:diag_fop"
    task = f"{user_module}:quadratic"
    rows = compare(task, [row, "SGD"], budget=2, seeds=3, steps=30, out=tmp_path, **QUIET)
    assert [r["method"] for r in rows] == [row, "SGD"]
    assert rows[0]["error"] is None and rows[0]["chosen"] in ({"lr": 1e-3}, {"lr": 5e-4})
    starts = [as_instance(sys.modules[user_module].quadratic(s), task).model.theta for s in range(3)]
    start = statistics.fmean(float((theta.detach() ** 2).sum()) for theta in starts)
    assert rows[0]["final_loss"][0] < start  # the mean final loss over the 3 seeds, below the mean start
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["grids"][f"{user_module}:diag_fop"] == [{"lr": 1e-3}, {"lr": 5e-4}]
    assert r["config"]["seeds"] == [0, 1, 2] and len(r["tuning"]["SGD"]["trials"]) == 2
    for name in ("loss.csv", "loss.png", "summary.md"):
        assert (tmp_path / name).stat().st_size > 0


def test_bad_user_paths_and_rows_that_cannot_run_are_reported(user_module, tmp_path):
    with pytest.raises(ValueError, match="'module:attribute'"):
        load_method("no_colon")
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        load_method(f"{user_module}:nope")
    with pytest.raises(ValueError, match="at least 3 seeds"):
        compare("rosenbrock", ["SGD"], budget=1, seeds=2, steps=5, out=tmp_path, **QUIET)
    rows = compare("noisy_bowl", ["KFAC", "SGD"], budget=1, seeds=3, steps=5, out=tmp_path, **QUIET)
    assert "has no nn.Linear or nn.Conv2d layer" in rows[0]["error"] and rows[1]["error"] is None
    assert "not run: ValueError" in (tmp_path / "summary.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
def test_compare_runs_every_default_method_on_every_built_in_task(task, tmp_path):
    """The issue's default method list on each built-in task (1 trial, 5 steps): every row is measured or
    says why it could not run (K-FAC and APO need layers; FOP's placement covers no vector)."""
    names = ["FOP", "PSGD", "LODO", "APO", "Shampoo", "KFAC", "Adam", "SGD"]
    rows = compare(task, names, budget=1, seeds=3, steps=5, out=tmp_path, **QUIET)
    assert [r["method"] for r in rows] == names
    cannot = {"noisy_bowl": {"FOP", "APO", "KFAC"}}.get(task, set())  # the point model has no layer
    not_run = {r["method"] for r in rows if r["error"] and r["error"] != "every tuning trial diverged"}
    assert not_run == cannot, [(r["method"], r["error"]) for r in rows]  # (one trial may diverge: budget 1)
    for r in rows:
        assert r["error"] is not None or (len(r["final_loss"]) == 2 and r["state_bytes_per_param"] >= 0), r
    assert rows[-2]["step_time_vs_adam"] == 1.0


def test_the_comparison_pages_own_method_and_task_run_through_compare(tmp_path, monkeypatch):
    """docs/comparison.md's two examples, saved as the modules they name, run through `compare`."""
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "comparison.md").read_text()
    for block in page.split("```python\n")[1:]:
        code = block.split("```")[0]
        name = code.splitlines()[0].removeprefix("# ").strip()
        (tmp_path / name).write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = compare("my_tasks:regression", ["my_methods:diagonal_fop", "SGD"], budget=2, seeds=3, steps=10,
                   out=tmp_path / "out", **QUIET)
    assert [r["error"] for r in rows] == [None, None]
    # the diagonal of P per weight matrix and Adam's moments on it, against SGD's nothing
    assert rows[0]["state_bytes_per_param"] > rows[1]["state_bytes_per_param"]
    for module in ("my_methods", "my_tasks"):
        sys.modules.pop(module, None)


def test_a_user_grid_replaces_the_learning_rates_and_keeps_the_budgets_equal(tmp_path, capsys):
    from precondalg.experiments.methods import apply_lr_grids

    grids = {"all": [1e-3, 2e-3], "adam": [0.1, 0.2, 0.3]}
    sgd, adam = apply_lr_grids(resolve_methods(["SGD", "Adam"]), grids)
    assert sgd.grid == ({"lr": 1e-3}, {"lr": 2e-3}) and adam.grid == ({"lr": 0.1}, {"lr": 0.2}, {"lr": 0.3})
    with pytest.raises(ValueError, match="--grid names \\['KFAC'\\], which are not compared"):
        apply_lr_grids([sgd], {"KFAC": [0.1]})
    assert main(["compare", "--task", "rosenbrock", "--methods", "SGD,Adam", "--grid", "all=0.002,0.001",
                 "--budget", "2", "--steps", "10", "--out", str(tmp_path), "--no-progress"]) == 0
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["grids"]["SGD"] == [{"lr": 0.002}, {"lr": 0.001}]
    assert r["config"]["user_lr_grids"]["all"] == [0.002, 0.001]
    assert all(row["error"] is None for row in r["rows"])  # SGD's own grid (≥ 0.01) diverges on Rosenbrock
    bad = ["compare", "--task", "rosenbrock", "--methods", "SGD", "--grid", "SGD:0.1", "--out", str(tmp_path)]
    assert main(bad) == 2
    assert "--grid takes METHOD=LR,LR" in capsys.readouterr().err


def test_a_task_that_does_not_cycle_refuses_a_longer_run():
    from precondalg.experiments.harness import train
    from precondalg.experiments.tasks import noisy_bowl

    with pytest.raises(ValueError, match="has 10 batches and does not cycle them; got 11 steps"):
        train(METHODS["SGD"], {"lr": 0.1}, lambda seed: noisy_bowl(seed, steps=10), 0, 11)


class _Breaks(torch.optim.SGD):
    """SGD whose third step raises (a stand-in for a linalg failure at a large learning rate)."""

    def step(self, closure=None):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == 3:
            raise RuntimeError("linalg.eigh: the algorithm failed to converge")
        return super().step(closure)


def test_an_error_during_training_ends_that_run_as_diverged_and_is_reported():
    from precondalg.experiments.harness import train, tune_and_evaluate

    breaks = Method("Breaks", lambda model, task, lr: _Breaks(model.parameters(), lr=lr), ({"lr": 1e-3},))
    record = train(breaks, {"lr": 1e-3}, TASKS["diabetes"], 0, 5)
    assert record.diverged_at == 3 and record.error.startswith("step 3: RuntimeError: linalg.eigh")
    assert math.isinf(record.final_loss) and [t for t, _ in record.curve] == [0, 1, 2]  # up to the error
    result = tune_and_evaluate(breaks, TASKS["diabetes"], budget=1, seeds=range(3), steps=5)
    assert result.trials == [({"lr": 1e-3}, math.inf)] and result.error == "every tuning trial diverged"


def test_strict_fails_on_unknown_failures_and_on_known_failures_that_hold(tmp_path, capsys):
    from precondalg.experiments.cli import _unexpected
    from precondalg.experiments.core import Claim

    exp = EXPERIMENTS["LODO-E2"]
    known = exp.known_failures[0] + " of something"
    assert _unexpected(exp, [Claim(known, "1", False), Claim("LODO within", "1", True)]) == []
    (message,) = _unexpected(exp, [Claim("LODO within", "9", False)])
    assert "fails, not a known failure: LODO within" in message
    assert "a known failure now holds" in _unexpected(exp, [Claim(known, "1", True)])[0]
    with pytest.raises(ValueError, match=r"unsettled claims are not known failures; both: \['LODO within'\]"):
        experiment("X", paper="", figure="", reproduces="", minutes=1, quick_minutes=1, steps=1,
                   known_failures=("LODO within",), unsettled=("LODO within",))(lambda ctx: None)
    assert "X" not in EXPERIMENTS
    # LODO-E2's three known failures fail as expected, the rest hold: --strict passes
    assert main(["run", "LODO-E2", "--quick", "--strict", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "--strict:" not in out and f"results under {tmp_path}\n" in out  # one experiment: its own folder



@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_the_committed_full_run_fails_exactly_the_known_failures(name):
    """The docs' full run of every experiment fails exactly its known failures; CI's ``run all --quick
    --strict`` asserts the same of the quick run, so quick and full agree claim by claim."""
    from precondalg.experiments.cli import _unexpected
    from precondalg.experiments.core import Claim

    recorded = json.loads((RESULTS / name / "results.json").read_text())
    claims = [Claim(c["claim"], c["measured"], c["holds"]) for c in recorded["claims"]]
    assert claims, f"{name}: the committed run checked no claim"
    assert _unexpected(EXPERIMENTS[name], claims) == []
    named = EXPERIMENTS[name].known_failures + EXPERIMENTS[name].unsettled
    unmatched = [k for k in named if not any(c.claim.startswith(k) for c in claims)]
    assert not unmatched, f"{name}: known failures or unsettled claims that name no claim: {unmatched}"
