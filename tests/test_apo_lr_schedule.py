"""APO-E8 (substitute), learning-rate adaptation on a digits MLP (Bae et al. 2022, §6.3, Fig. 5;
`precondalg.problems.digits_classification`): the task's construction (data, model, seeded batches, the
separate B′ stream), the loop `train_classifier` (APO's batches, the same batches for every optimizer —
checked through APO with a frozen η against torch's SGD-momentum —, divergence), `learned_learning_rate`
and the first meta-steps of the learned η, and the benchmark script benchmarks/apo_lr_schedule.py: its
grids (equal budgets, the paper's η₀ and K), its criteria lines, and a one-epoch run of the whole script
(files, selection, η series, criteria, the post hoc rows).
"""

from __future__ import annotations

import csv
import doctest
import importlib
import json
import math

import pytest
import torch
import torch.nn.functional as F
from optim_helpers import benchmark_module

from precondalg.optim import APO
from precondalg.problems import digits_classification, learned_learning_rate, train_classifier

MODULE = importlib.import_module("precondalg.problems.digits_mlp")


@pytest.fixture(scope="module")
def task():
    return digits_classification()


@pytest.fixture(scope="module")
def script():
    """benchmarks/apo_lr_schedule.py as a module (benchmarks/ on sys.path, as when it runs)."""
    with benchmark_module("apo_lr_schedule") as module:
        yield module


def _apo_lr(model, eta0, base="momentum", **kw):
    return APO(model.parameters(), eta0, model=model, loss_fn=F.cross_entropy, mode="lr", base=base, **kw)


# -------------------------------------------------------------------------------------------- the task
def test_module_doctests():
    assert doctest.testmod(MODULE).failed == 0


def test_data(task):
    """load_digits: 1797 images, 64 pixels / 16 in [0, 1], 10 classes of 174–183 images each."""
    assert task.X.shape == (1797, 64) and task.X.dtype == torch.float32 and task.y.dtype == torch.int64
    assert task.X.min().item() == 0.0 and task.X.max().item() == 1.0
    assert torch.equal(task.X * 16, (task.X * 16).round())
    counts = torch.bincount(task.y)
    assert counts.numel() == 10 and counts.min().item() == 174 and counts.max().item() == 183
    assert task.steps_per_epoch() == 18 and task.config["batch_size"] == 100


def test_batches_are_seeded_and_cover_the_data_once_per_epoch(task):
    """The same seed gives the same batches; each epoch is a permutation (17 batches of 100, one of 97);
    the next epoch reshuffles; the B′ loader's order differs from the training loader's."""
    first = [(x.clone(), y.clone()) for x, y in task.loader(3)]
    again = [(x, y) for x, y in task.loader(3)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert [len(y) for _, y in first] == [100] * 17 + [97]
    rows, expected = (
        torch.unique(torch.cat([x for x, _ in first]), dim=0, return_counts=True),
        torch.unique(task.X, dim=0, return_counts=True),
    )
    assert all(torch.equal(a, b) for a, b in zip(rows, expected))  # the same rows, with multiplicities
    loader = task.loader(3)
    epoch1, epoch2 = [y for _, y in loader], [y for _, y in loader]
    assert not torch.equal(torch.cat(epoch1), torch.cat(epoch2))
    fsd = [y for _, y in task.fsd_loader(3)]
    assert not torch.equal(torch.cat(fsd), torch.cat([y for _, y in first]))


def test_model_is_seeded_and_leaves_the_global_generator(task):
    state = torch.random.get_rng_state()
    a, b, c = task.make_model(0), task.make_model(0), task.make_model(1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert [tuple(p.shape) for p in a.parameters()] == [
        (256, 64),
        (256,),
        (256, 256),
        (256,),
        (10, 256),
        (10,),
    ]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a[0].weight, c[0].weight)
    assert [type(m).__name__ for m in digits_classification(hidden=(8,)).make_model(0)] == [
        "Linear",
        "ReLU",
        "Linear",
    ]


def test_refusals(task):
    for bad in ({"hidden": ()}, {"hidden": (0,)}, {"batch_size": 0}, {"batch_size": 1.5}):
        with pytest.raises(ValueError):
            digits_classification(**bad)
    model = task.make_model(0)
    with pytest.raises(ValueError, match="epochs"):
        train_classifier(task, model, torch.optim.SGD(model.parameters(), lr=0.1), -1, seed=0)
    with pytest.raises(ValueError, match="one scalar preconditioner"):
        learned_learning_rate(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="one scalar preconditioner"):
        learned_learning_rate(APO(model.parameters(), 0.1, model=model, loss_fn=F.cross_entropy))


# -------------------------------------------------------------------------------------------- the loop
def test_same_batches_for_every_optimizer(task):
    """APO in mode "lr" with meta_lr = 0 keeps η = η₀ and is SGD-momentum (test_apo's reduction), so
    through train_classifier it must follow torch's SGD(lr=η₀, momentum=0.9) on the same seed: the same
    batches in the same order (and B′ drawn from its own stream changes nothing).  Float32: equal to
    1e-4 relative after 2 epochs (measured: identical)."""
    runs = {}
    for name in ("torch", "apo"):
        model = task.make_model(5)
        if name == "torch":
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        else:
            opt = _apo_lr(model, 0.1, meta_lr=0.0)
        watch = learned_learning_rate if name == "apo" else None
        runs[name] = train_classifier(task, model, opt, 2, seed=5, watch=watch)
    assert runs["apo"].steps == runs["torch"].steps == 36 and runs["apo"].skipped == 0
    assert runs["apo"].epoch_losses == pytest.approx(runs["torch"].epoch_losses, rel=1e-4)
    assert runs["apo"].watched == pytest.approx([0.1] * 36, rel=1e-6) and runs["torch"].watched == []
    assert runs["torch"].final == runs["torch"].epoch_losses[-1] < 0.5 * runs["torch"].epoch_losses[0]


def test_divergence_stops_the_run(task):
    """SGD-momentum at lr 1e4: the batch loss is non-finite within a few steps; final is inf."""
    model = task.make_model(0)
    r = train_classifier(task, model, torch.optim.SGD(model.parameters(), lr=1e4, momentum=0.9), 3, seed=0)
    assert r.final == math.inf and r.diverged_at is not None and r.steps == r.diverged_at <= 18
    assert len(r.epoch_losses) == 1


@pytest.mark.parametrize("base, eta0", [("momentum", 0.1), ("rmsprop", 3e-4)])
def test_learned_eta_moves_by_e_at_the_first_meta_step_only_every_k(task, base, eta0):
    """η = exp φ, RMSprop (lr 0.1) on φ: its first step has size 1 in φ (× e or ÷ e; RMSprop's ε = 1e-8
    shortens it by < 1e-4 relative here), and η changes at steps 0, 10, 20, … only (K = 10)."""
    model = task.make_model(0)
    opt = _apo_lr(model, eta0, base=base)
    assert learned_learning_rate(opt) == pytest.approx(eta0, rel=1e-6)
    r = train_classifier(task, model, opt, 2, seed=0, watch=learned_learning_rate)
    assert min(abs(r.watched[0] / eta0 - math.e), abs(r.watched[0] / eta0 - 1 / math.e)) < 1e-4 * math.e
    changes = [t for t in range(1, len(r.watched)) if r.watched[t] != r.watched[t - 1]]
    assert set(changes) <= set(range(10, 36, 10)) and changes  # watched[t] is η after step t + 1


# ------------------------------------------------------------------------------------- the benchmark
def test_grids_and_fixed_choices(script):
    """Six configurations per method; APO: the paper's η₀ = 0.1 for SGDm, the project's 3e-4 for
    RMSprop, K = 10, meta lr 0.1 (preset default), the λ grid including the preset's (1, 0.1)."""
    assert {m: len(spec["grid"]) for m, spec in script.METHODS.items()} == dict.fromkeys(script.METHODS, 6)
    assert script.METHODS["SGDm-APO"]["fixed"]["eta0"] == 0.1
    assert script.METHODS["RMSprop-APO"]["fixed"]["eta0"] == 3e-4
    assert {"lam_fsd": 1.0, "lam_wsd": 0.1} in script.LAMBDAS
    assert script.EPOCHS == 100 and script.META_EVERY == 10 and script.SEEDS == (0, 1, 2)
    assert script.TUNE_SEED not in script.SEEDS
    model = torch.nn.Linear(2, 2)
    opt = script.METHODS["RMSprop-APO"]["make"](model, {"lam_fsd": 1.0, "lam_wsd": 0.1})
    assert opt.objective.lam_fsd == 1.0 and opt.objective.fsd == "kl"
    assert learned_learning_rate(opt) == pytest.approx(3e-4, rel=1e-6)


def test_criteria_lines(script):
    """≥ 2× below passes, less fails; with both means below 1e-3, one standard deviation decides."""
    s = {
        "SGDm": {"mean": 0.2, "std": 0.0},
        "SGDm-APO": {"mean": 0.1, "std": 0.0},
        "RMSprop": {"mean": 0.2, "std": 0.0},
        "RMSprop-APO": {"mean": 0.11, "std": 0.0},
    }
    assert [c["passed"] for c in script.criteria(s)] == [True, False]
    s = {
        "SGDm": {"mean": 5e-4, "std": 1e-4},
        "SGDm-APO": {"mean": 3.5e-4, "std": 5e-5},
        "RMSprop": {"mean": 5e-4, "std": 2e-4},
        "RMSprop-APO": {"mean": 3.5e-4, "std": 5e-5},
    }
    assert [c["passed"] for c in script.criteria(s)] == [True, False]


def test_script_runs_end_to_end(script, task, tmp_path):
    """One epoch of the quick configuration on two seeds writes the four files; each winner is the lowest
    of its tuning rows; the APO rows carry η from η₀ (x = 0) to after the last step (18 steps); the post
    hoc rows start APO at the tuned fixed lr of its base, with the tuned λ's, and are judged apart."""
    out = tmp_path / "lr.json"
    argv = ["--quick", "--epochs", "1", "--seeds", "2", "--no-git", "--json", str(out)]
    assert script.main(argv) == 0
    data = json.loads(out.read_text())
    assert data["config"]["steps"] == 18 and data["config"]["seeds"] == [0, 1]
    for name, t in data["tuning"].items():
        assert data["summary"][name]["hp"] == min(t["rows"], key=lambda r: r["final"])["hp"]
    for fixed, apo in script.PAIRS.items():
        post = data["summary"][apo + script.POST_HOC]
        assert post["hp"] == data["summary"][apo]["hp"] | {"eta0": data["summary"][fixed]["hp"]["lr"]}
    assert len(data["runs"]) == 6 * 2
    for r in data["runs"]:
        assert len(r["epoch_losses"]) == 2
        if "-APO" in r["method"]:
            eta0 = r["hp"].get(
                "eta0", script.METHODS[r["method"].removesuffix(script.POST_HOC)]["fixed"]["eta0"]
            )
            assert len(r["eta"]) == 19 and r["eta"][0] == pytest.approx(eta0, rel=1e-6)
        else:
            assert r["eta"] == []
    assert [c["criterion"] for c in data["criteria"]] == [
        "E8: SGDm-APO below the best fixed lr of SGDm",
        "E8: RMSprop-APO below the best fixed lr of RMSprop",
    ]
    assert len(data["criteria_post_hoc"]) == 2
    assert all(script.POST_HOC in c["criterion"] for c in data["criteria_post_hoc"])
    with out.with_suffix(".csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sum(r["kind"] == "loss" for r in rows) == 6 * 2 * 2
    assert sum(r["kind"] == "eta" for r in rows) == 4 * 2 * 19
    assert out.with_suffix(".png").stat().st_size > 0 and out.with_suffix(".log").stat().st_size > 0
