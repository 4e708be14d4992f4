"""APO's network experiments (`precondalg.experiments.apo_nets`: APO-E3, APO-E4, APO-E10): the
autoencoder's loss and FSD against their formulas by hand, its sparse initialisation, the two arms of
APO-E10 differing only in the batch the meta-loss sees, the claims computed on constructed inputs, the
harness records read at the right steps, and (slow) each experiment's ``--quick --strict`` run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from precondalg.experiments import apo_nets as an
from precondalg.experiments import registered
from precondalg.experiments.harness import MethodResult, RunRecord
from precondalg.experiments.tasks import TaskInstance

EXPERIMENTS = registered()


def test_autoencoder_loss_is_bce_summed_over_pixels_plus_l2_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.Sigmoid(), nn.Linear(2, 3))
    z, x = torch.randn(4, 3), torch.rand(4, 3)
    p = torch.sigmoid(z)
    bce = -(x * p.log() + (1 - x) * (1 - p).log()).sum() / 4
    l2 = sum(float((w.detach() ** 2).sum()) for w in model.parameters())
    assert an.AutoencoderLoss(model)(z, x).item() == pytest.approx(float(bce) + 1e-5 * l2, rel=1e-6)
    assert an.AutoencoderLoss(model, l2=0.5)(z, x).item() == pytest.approx(float(bce) + 0.5 * l2, rel=1e-6)


def test_bernoulli_kl_is_the_closed_form_per_image_and_zero_at_the_target():
    old, new = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    p, q = torch.sigmoid(old), torch.sigmoid(new)
    kl = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum() / 5
    assert float(an.bernoulli_kl(new, old)) == pytest.approx(float(kl), rel=1e-10)
    assert float(an.bernoulli_kl(old, old)) == pytest.approx(0.0, abs=1e-12)


def test_the_autoencoder_is_untied_sigmoid_with_martens_sparse_init():
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = an.autoencoder_model()
        torch.manual_seed(3)
        again = an.autoencoder_model()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == list(
        zip(an.AE_WIDTHS[:-1], an.AE_WIDTHS[1:])
    )
    assert [type(m) for m in model[1::2]] == [nn.Sigmoid] * (len(linears) - 1)  # none after the last
    for m in linears:
        assert ((m.weight != 0).sum(1) == min(15, m.in_features)).all() and (m.bias == 0).all()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    with pytest.raises(ValueError, match="at least an input and an output"):
        an.autoencoder_model((64,))


def test_the_autoencoder_task_is_the_digits_against_themselves():
    task = an.digits_autoencoder(0, epochs=1)
    x, y = task.eval_batch
    assert x.shape == (1797, 64) and torch.equal(x, y) and 0 <= x.min() and x.max() <= 1
    assert len(task.batches) == 1797 // 128 and all(torch.equal(a, b) for a, b in task.batches)


def _tiny_task(n_batches: int, distinct: bool = True) -> TaskInstance:
    """A 4-5-3 classifier on `n_batches` batches of 8 (all the same batch unless `distinct`)."""
    g = torch.Generator().manual_seed(7)
    data = [
        (torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n_batches)
    ]
    batches = data if distinct else [data[0]] * n_batches
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    return TaskInstance(model, F.cross_entropy, batches, (x, y))


def _recording(calls: list):
    """An E10 optimizer factory whose step records its keyword arguments, then steps."""

    def make(task, **hp):
        opt = an._sgdm_apo(task, **hp)
        step = opt.step

        def recorded(**kw):
            calls.append(kw)
            return step(**kw)

        opt.step = recorded
        return opt

    return make


@pytest.mark.parametrize("same", [True, False])
def test_e10_arms_differ_only_in_the_batch_the_meta_loss_sees(same):
    holder = {}

    def task_fn(seed):
        holder["task"] = _tiny_task(4)
        return holder["task"]

    calls: list = []
    run = an.lr_adaptation_run(task_fn, 0, 9, same, an.E10_LAMBDAS[0], _recording(calls))
    batches = holder["task"].batches
    assert len(calls) == 9 and len(run.etas) == 9
    for t, kw in enumerate(calls):
        b, fresh = batches[t % 4], batches[(t + 1) % 4]
        assert kw["batch"] is (b if same else fresh)
        assert kw["fsd_batch"] is fresh[0]
    assert run.etas[0] != an.ETA0  # the first step meta-updates (K = 10: steps 1, 11, …)


def test_e10_arms_coincide_when_every_batch_is_the_same_and_differ_otherwise():
    lam = an.E10_LAMBDAS[0]
    same = an.lr_adaptation_run(lambda s: _tiny_task(3, distinct=False), 0, 21, True, lam)
    fresh = an.lr_adaptation_run(lambda s: _tiny_task(3, distinct=False), 0, 21, False, lam)
    assert same.etas == fresh.etas and same.curve == fresh.curve
    same = an.lr_adaptation_run(lambda s: _tiny_task(3), 0, 21, True, lam)
    fresh = an.lr_adaptation_run(lambda s: _tiny_task(3), 0, 21, False, lam)
    assert same.etas[0] != fresh.etas[0]


def _lr_run(etas: list[float], final: float) -> an.LrRun:
    return an.LrRun(etas, [(0, 1.0), (len(etas), final)], final)


def test_e10_claims_on_constructed_runs():
    collapse = [0.1] * 2 + [0.005] + [0.01] * 7  # falls 20× by step 3 of 10 (30%)
    late = [0.1] * 3 + [0.005] + [0.01] * 6  # the same fall one step after 30%
    same = [0.1] * 10
    fall, loss = an.e10_claims(
        {
            "Eq. 12 (same batch)": [_lr_run(same, 0.1)] * 3,
            "Eq. 13 (fresh batch)": [_lr_run(collapse, 0.3)] * 3,
        }
    )
    assert fall.holds and "= 0.05" in fall.measured and "= 0.1" in fall.measured and loss.holds
    fall, _ = an.e10_claims(
        {"Eq. 12 (same batch)": [_lr_run(same, 0.1)] * 3, "Eq. 13 (fresh batch)": [_lr_run(late, 0.3)] * 3}
    )
    assert not fall.holds
    ends_high = [*collapse[:-1], 0.025]  # ratio 0.25 > 0.2
    fall, loss = an.e10_claims(
        {"Eq. 12 (same batch)": [_lr_run(same, 0.3)], "Eq. 13 (fresh batch)": [_lr_run(ends_high, 0.1)]}
    )
    assert not fall.holds and not loss.holds
    assert fall.claim.startswith(EXPERIMENTS["APO-E10"].known_failures)


def test_ordering_claims_are_strict_per_checkpoint_and_count_missing_rivals_as_infinite():
    metrics = {
        "APO-Precond": {"training loss at 25%": [1.0, 3.0], "training loss at end": [1.0, 1.0]},
        "Momentum": {"training loss at 25%": [2.0, 2.0], "training loss at end": [1.5, 1.5]},
        "Adam": {"training loss at 25%": [3.0, 3.0], "training loss at end": [0.5, 2.0]},
    }
    at25, end = an.ordering_claims(metrics, "APO-Precond", ("Momentum", "Adam"), "paper", ("25%", "end"))
    assert not at25.holds  # a tie with Momentum's mean 2.0 is not below it
    assert end.holds and end.measured == "APO-Precond 1; Momentum 1.5, Adam 1.25"
    assert at25.claim.startswith(EXPERIMENTS["APO-E4"].known_failures) and "(paper)" in at25.claim
    (alone,) = an.ordering_claims(
        {"APO-Precond": metrics["APO-Precond"]}, "APO-Precond", ("Adam",), "p", ["end"]
    )
    assert alone.holds
    (missing,) = an.ordering_claims({"Adam": metrics["Adam"]}, "APO-Precond", ("Adam",), "p", ["end"])
    assert not missing.holds


def test_the_autoencoders_gap_note_reports_the_final_means_and_a_missing_method_as_inf():
    end = "training loss at end"
    metrics = {"APO-Precond": {end: [1.0, 2.0]}, "KFAC": {end: [0.5, 1.0]}}
    note = an._gap_note(metrics, "APO-Precond", ("KFAC", "Shampoo"))
    assert note.endswith("final training loss APO-Precond 1.5; KFAC 0.75, Shampoo inf.")


def test_regression_claim_compares_with_the_best_baseline_inclusively():
    def m(v):
        return {"training loss at end": v}

    metrics = {"APO-Precond": m([0.25, 0.75]), "KFAC": m([0.5, 0.5]), "Adam": m([0.5, 0.75])}
    claim = an.regression_claim(metrics, ("Adam", "KFAC"))
    assert claim.holds and claim.measured == "APO-Precond 0.5; best baseline KFAC 0.5"  # ≤: a tie holds
    assert not an.regression_claim(metrics | {"KFAC": m([0.25, 0.5])}, ("Adam", "KFAC")).holds
    assert not an.regression_claim(metrics | {"APO-Precond": m([math.inf, 0.1])}, ("Adam", "KFAC")).holds


def _record(curve, final):
    return RunRecord(curve, final, None, None, None, 0.0, 0.0, None, 0, 0.0)


def test_metrics_read_the_harness_curve_at_or_before_each_checkpoint():
    curve = [(0, 9.0), (40, 8.0), (80, 7.0), (120, 6.0), (160, 5.0), (200, 4.0)]
    res = MethodResult(
        "APO-Precond", [], {"meta_lr": 1e-3}, [_record(curve, 3.5), _record(curve[:2], math.inf)]
    )
    metrics = an._metrics({"APO-Precond": res, "KFAC": MethodResult("KFAC", [], None, [], "error")}, 200)
    assert metrics == {
        "APO-Precond": {
            "training loss at 25%": [8.0, math.inf],  # steps 50, 100: the evaluations at 40, 80; stopped: inf
            "training loss at 50%": [7.0, math.inf],
            "training loss at end": [3.5, math.inf],
        }
    }


def test_apo_precond_row_tunes_the_meta_lr_over_five_points_at_lr_0_1():
    row = an.apo_precond("squared")
    assert row.grid == tuple({"meta_lr": v} for v in an.APO_META_LRS) and len(row.grid) == 5
    task = _tiny_task(2)
    opt = row.make(task.model, task, meta_lr=3e-3)
    assert opt.param_groups[0]["lr"] == an.APO_LR == 0.1


def test_the_three_experiments_are_registered_with_their_metadata():
    for name in ("APO-E3", "APO-E4", "APO-E10"):
        exp = EXPERIMENTS[name]
        assert exp.paper.startswith("APO") and exp.seeds >= 3 and exp.quick_minutes <= exp.minutes
    assert (
        list(EXPERIMENTS).index("APO-E3")
        < list(EXPERIMENTS).index("APO-E4")
        < list(EXPERIMENTS).index("APO-E10")
    )
