"""torch.optim conventions (QUALITY.md §2): param groups, `.grad = None`, `zero_grad`, closures,
lr schedulers, `add_param_group` — each compared exactly against torch.optim doing the same thing
(at the identity preconditioner with a frozen fitter, where the two must agree to round-off).
Deepcopy and pickling are in test_optim_checkpoint.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from optim_helpers import (
    CONFIGS,
    FROZEN,
    assert_close,
    assert_equal,
    assert_trees_equal,
    backward_at,
    clone_params,
    loss_at,
    make_model,
    run,
    snapshot,
)

from precondalg import families
from precondalg.optim import FOP, HD, PSGD, Preconditioned
from precondalg.placement import Concatenated

LR = 0.05


def _identity(params, **kwargs) -> Preconditioned:
    kwargs.setdefault("structure", families.dense_gram())
    return Preconditioned(params, LR, fitter=FROZEN, **kwargs)


def _groups(model: torch.nn.Module) -> list[dict]:
    return [
        {"params": list(model.fc1.parameters()), "lr": 0.1, "momentum": 0.9},
        {"params": list(model.fc2.parameters()), "momentum": 0.5, "dampening": 0.2},
    ]


@pytest.mark.parametrize("placement", ["default", "concatenated"])
def test_param_groups_behave_as_torch_groups(placement):
    extra = {} if placement == "default" else {"placement": Concatenated()}
    ours, theirs = make_model(), make_model()
    opt = _identity(_groups(ours), base="momentum", momentum=0.7, **extra)
    run(ours, opt, "mlp", 12)
    run(theirs, torch.optim.SGD(_groups(theirs), lr=LR, momentum=0.7), "mlp", 12)
    assert_close(clone_params(theirs.parameters()), clone_params(ours.parameters()))
    assert [g["lr"] for g in opt.param_groups] == [0.1, LR]
    assert [g["momentum"] for g in opt.param_groups] == [0.9, 0.5]
    # a concatenated block never spans two groups
    expected_blocks = 2 if placement == "concatenated" else 4
    assert len(opt.preconditioners()) == expected_blocks
    assert all(
        set(ps) <= set(ours.fc1.parameters()) or set(ps) <= set(ours.fc2.parameters())
        for ps, _ in opt.preconditioners()
    )


def test_fop_param_groups_follow_torch_sgd():
    ours, theirs = make_model(), make_model()
    run(ours, FOP(_groups(ours), LR, momentum=0.7, hyper_lr=0.0), "mlp", 12)
    run(theirs, torch.optim.SGD(_groups(theirs), lr=LR, momentum=0.7), "mlp", 12)
    assert_close(clone_params(theirs.parameters()), clone_params(ours.parameters()))


# ----- .grad = None -----
NONE_AT = {1: ["fc2.bias"], 2: ["fc1.weight", "fc2.bias"], 4: ["fc1.bias"]}


def _run_with_missing_grads(model: torch.nn.Module, opt: torch.optim.Optimizer, check: bool) -> None:
    names = dict(model.named_parameters())
    for t in range(6):
        backward_at(model, "mlp", t)
        for name in NONE_AT.get(t, []):
            names[name].grad = None
        if check:
            missing = [names[n] for n in NONE_AT.get(t, [])]
            before_p = clone_params(missing)
            before_s = [snapshot_of(opt, p) for p in missing]
        opt.step()
        if check:
            assert_equal(before_p, clone_params(missing))
            for p, s in zip(missing, before_s):
                assert_trees_equal(s, snapshot_of(opt, p))


def snapshot_of(opt: torch.optim.Optimizer, p: torch.Tensor) -> dict:
    """A copy of the base-rule state of one parameter (its preconditioner's entry excluded)."""
    return {k: v.clone() for k, v in opt.state[p].items() if k != "preconditioner"}


@pytest.mark.parametrize("placement", ["default", "concatenated"])
@pytest.mark.parametrize("base", ["momentum", "adam"])
def test_params_without_grad_are_skipped(placement, base):
    extra = {} if placement == "default" else {"placement": Concatenated()}
    ours, theirs = make_model(), make_model()
    rule = {"momentum": 0.9} if base == "momentum" else {}
    opt = _identity(ours.parameters(), base=base, **rule, **extra)
    _run_with_missing_grads(ours, opt, check=True)
    ref = (
        torch.optim.SGD(theirs.parameters(), lr=LR, momentum=0.9)
        if base == "momentum"
        else torch.optim.Adam(theirs.parameters(), lr=LR)
    )
    _run_with_missing_grads(theirs, ref, check=False)
    assert_close(clone_params(theirs.parameters()), clone_params(ours.parameters()))


@pytest.mark.parametrize(
    "name",
    ["generic-adam-wd", "generic-lowrank-concatenated", "fop-conv", "hd-global-momentum", "shampoo", "kfac"],
)
def test_zero_grad_then_step_changes_nothing(name):
    kind, build = CONFIGS[name]
    model = make_model(kind)
    opt = build(model.parameters(), 0)
    run(model, opt, kind, 3)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    before_p, before_s = clone_params(model.parameters()), snapshot(opt)
    with pytest.warns(UserWarning, match=r"none of the optimizer's \d+ parameters has a gradient"):
        opt.step()
    assert_equal(before_p, clone_params(model.parameters()))
    assert_trees_equal(before_s, snapshot(opt))


def test_zero_grad_keep_tensors_gives_zero_gradients():
    ours, theirs = make_model(), make_model()
    opt = _identity(ours.parameters(), base="momentum", momentum=0.9)
    ref = torch.optim.SGD(theirs.parameters(), lr=LR, momentum=0.9)
    for model, o in ((ours, opt), (theirs, ref)):
        run(model, o, "mlp", 3)
        o.zero_grad(set_to_none=False)
        assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in model.parameters())
        o.step()  # a real step on a zero gradient: momentum carries on
    assert_close(clone_params(theirs.parameters()), clone_params(ours.parameters()))


# ----- closures -----
@pytest.mark.parametrize("name", ["generic-momentum-nesterov", "fop-conv", "hd-parameter-adam"])
def test_closure_returns_the_loss_and_matches_the_plain_step(name):
    kind, build = CONFIGS[name]
    plain = make_model(kind)
    run(plain, build(plain.parameters(), 0), kind, 5)
    model = make_model(kind)
    opt = build(model.parameters(), 0)
    for t in range(5):

        def closure(t=t):
            opt.zero_grad()
            loss = loss_at(model, kind, t)
            loss.backward()
            return loss

        expected = loss_at(model, kind, t).detach()
        returned = opt.step(closure)
        assert isinstance(returned, torch.Tensor) and torch.equal(returned.detach(), expected)
    assert_equal(clone_params(plain.parameters()), clone_params(model.parameters()))


# ----- schedulers -----
SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]] = {
    "StepLR": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
    "LambdaLR": lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: 1.0 / (1.0 + t)),
}
SCHEDULED: dict[str, tuple[Callable, Callable]] = {
    "generic-sgd": (lambda ps: _identity(ps), lambda ps: torch.optim.SGD(ps, lr=LR)),
    "fop": (lambda ps: FOP(ps, LR, hyper_lr=0.0), lambda ps: torch.optim.SGD(ps, lr=LR, momentum=0.9)),
    "hd-adam": (lambda ps: HD(ps, LR, 0.0, "layer", "adam"), lambda ps: torch.optim.Adam(ps, lr=LR)),
    "psgd": (
        lambda ps: PSGD(ps, LR, criterion="fisher", lr_precond=0.0, init_scale=1.0),
        lambda ps: torch.optim.SGD(ps, lr=LR),
    ),
}


@pytest.mark.parametrize("method", sorted(SCHEDULED))
@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_lr_scheduler_changes_the_base_lr(method, scheduler):
    build, reference = SCHEDULED[method]
    ours, theirs = make_model(), make_model()
    opt, ref = build(ours.parameters()), reference(theirs.parameters())
    lr0 = opt.param_groups[0]["lr"]
    sched, ref_sched = SCHEDULERS[scheduler](opt), SCHEDULERS[scheduler](ref)
    seen = []
    run(ours, opt, "mlp", 10, after_step=lambda t: (sched.step(), seen.append(opt.param_groups[0]["lr"])))
    run(theirs, ref, "mlp", 10, after_step=lambda t: ref_sched.step())
    assert_close(clone_params(theirs.parameters()), clone_params(ours.parameters()))
    factors = [lr / lr0 for lr in seen]
    expected = [0.5 ** ((t + 1) // 3) if scheduler == "StepLR" else 1.0 / (2.0 + t) for t in range(10)]
    assert factors == pytest.approx(expected, rel=1e-15)


# ----- add_param_group -----
@pytest.mark.parametrize("which", ["generic", "fop", "hd"])
def test_add_param_group(which):
    ours, theirs = make_model(), make_model()
    build = {
        "generic": lambda ps: _identity(ps, base="momentum", momentum=0.9),
        "fop": lambda ps: FOP(ps, LR, hyper_lr=0.0),
        "hd": lambda ps: HD(ps, LR, 0.0, "layer", "momentum"),
    }[which]
    opt = build(list(ours.fc1.parameters()))
    blocks = len(opt.preconditioners())
    new_lr = 0.2 if which != "hd" else 0.2 / LR  # HD's group "lr" multiplies the learned α = LR
    opt.add_param_group({"params": list(ours.fc2.parameters()), "lr": new_lr, "momentum": 0.5})
    assert len(opt.preconditioners()) > blocks
    ref = torch.optim.SGD(list(theirs.fc1.parameters()), lr=LR, momentum=0.9)
    ref.add_param_group({"params": list(theirs.fc2.parameters()), "lr": 0.2, "momentum": 0.5})
    run(ours, opt, "mlp", 8)
    run(theirs, ref, "mlp", 8)
    assert_close(clone_params(theirs.parameters()), clone_params(ours.parameters()))


def test_add_param_group_validates():
    model = make_model()
    opt = _identity(list(model.fc1.parameters()))
    with pytest.raises(ValueError, match="'lr'"):
        opt.add_param_group({"params": list(model.fc2.parameters()), "lr": -1.0})


@pytest.mark.parametrize("preset", ["FOP", "HD", "LODO"])
def test_presets_fit_on_the_schedule_they_are_given(preset):
    """``update_probability=every(2)``: φ moves on the even steps only (from step 2: the hypergradient
    needs the previous step's cached u), and with 0 never, while the parameters move at every step."""
    from precondalg.optim import LODO, every

    make = {
        "FOP": lambda ps, p: FOP(ps, 0.1, hyper_lr=1e-2, update_probability=p),
        "HD": lambda ps, p: HD(ps, 0.1, 1e-2, update_probability=p),
        "LODO": lambda ps, p: LODO(ps, 0.1, update_probability=p),
    }[preset]
    g = torch.Generator().manual_seed(0)
    for probability, expected in ((every(2), [False, False, True, False, True, False]), (0.0, [False] * 6)):
        w = torch.nn.Parameter(torch.randn(3, 4, generator=g, dtype=torch.float64))
        opt = make([w], probability)
        moved = []
        for _ in range(6):
            phi = [P.to_dense().clone() for _, P in opt.preconditioners()]
            before = w.detach().clone()
            w.grad = torch.randn(3, 4, generator=g, dtype=torch.float64)
            opt.step()
            now = [P.to_dense() for _, P in opt.preconditioners()]
            moved.append(any(not torch.equal(a, b) for a, b in zip(phi, now)))
            assert not torch.equal(before, w)
        assert moved == expected, (probability, moved)
