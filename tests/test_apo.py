"""APO (Bae et al. 2022) as a preset: the two modes as rows of the engine, the reductions (meta_lr = 0 at
the identity is the base rule), the meta-update interval through the engine's schedule, the warm-up and
the 0.9 on the applied step only, the lookahead's meta-gradient against central differences of the
proximal objective written out, the DataLoader helper and the refusals (QUALITY.md §2; the checkpoint,
dtype and NaN matrices run the configurations "apo-lr" and "apo-precond" of optim_helpers)."""

from __future__ import annotations

import math

import pytest
import torch
from optim_helpers import assert_close, batch, clone_params, make_model

from precondalg.optim import APO, SkippedStepWarning, every, fsd_batches

F64 = torch.float64


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return ((outputs - targets) ** 2).mean()


def _train(model, opt, steps: int, start: int = 0) -> None:
    for t in range(start, start + steps):
        x, y = batch("mlp", t)
        model.zero_grad()
        _mse(model(x), y).backward()
        opt.step(batch=(x, y), fsd_batch=batch("mlp", 500 + t)[0])


def _torch_train(model, opt, steps: int, start: int = 0) -> None:
    for t in range(start, start + steps):
        x, y = batch("mlp", t)
        opt.zero_grad()
        _mse(model(x), y).backward()
        opt.step()


BASES = {
    "sgd": lambda ps, lr: torch.optim.SGD(ps, lr=lr),
    "momentum": lambda ps, lr: torch.optim.SGD(ps, lr=lr, momentum=0.9),
    "rmsprop": lambda ps, lr: torch.optim.RMSprop(ps, lr=lr),
    "adam": lambda ps, lr: torch.optim.Adam(ps, lr=lr),
}


@pytest.mark.parametrize("base", sorted(BASES))
def test_lr_mode_with_meta_lr_zero_is_the_base_rule(base):
    """η = exp(log η₀) stays η₀ (to round-off) and the step is torch.optim's."""
    ours, theirs = make_model("mlp"), make_model("mlp")
    opt = APO(ours.parameters(), 0.05, model=ours, loss_fn=_mse, mode="lr", base=base, meta_lr=0.0,
              fsd="squared")
    _train(ours, opt, 6)
    _torch_train(theirs, BASES[base](theirs.parameters(), 0.05), 6)
    assert_close(clone_params(ours.parameters()), clone_params(theirs.parameters()), 1e-13)


@pytest.mark.parametrize("base", ["sgd", "momentum", "adam"])
def test_precond_mode_at_identity_with_scale_one_is_the_base_rule(base):
    """P̂ = I (A = I, B = I, S = 1) kept by meta_lr = 0, scale 1: the base rule (to round-off: torch's
    fused θ + (−lr)·s against θ − lr·s)."""
    ours, theirs = make_model("mlp"), make_model("mlp")
    opt = APO(ours.parameters(), 0.05, model=ours, loss_fn=_mse, base=base, meta_lr=0.0, scale=1.0,
              fsd="squared")
    _train(ours, opt, 6)
    _torch_train(theirs, BASES[base](theirs.parameters(), 0.05), 6)
    assert_close(clone_params(ours.parameters()), clone_params(theirs.parameters()))


def test_scale_acts_on_the_applied_step_only():
    """scale s with meta_lr = 0: the step is s·lr·g (SGD) — a run with scale 0.9 equals SGD at lr
    0.9·0.05; and the lookahead (the meta-gradient) does not see s: the fitted P̂ is the same for 0.9
    and 1."""
    ours, theirs = make_model("mlp"), make_model("mlp")
    opt = APO(ours.parameters(), 0.05, model=ours, loss_fn=_mse, base="sgd", meta_lr=0.0, fsd="squared")
    _train(ours, opt, 4)
    _torch_train(theirs, torch.optim.SGD(theirs.parameters(), lr=0.9 * 0.05), 4)
    assert_close(clone_params(ours.parameters()), clone_params(theirs.parameters()), 1e-14)
    fitted = []  # the lookahead θ − P̂g has no scale in it: the first meta-step is the same for any scale
    for scale in (0.9, 1.0):
        model = make_model("mlp")
        opt = APO(model.parameters(), 0.05, model=model, loss_fn=_mse, base="sgd", meta_lr=1e-2,
                  scale=scale, fsd="squared")
        _train(model, opt, 1)
        fitted.append(_phi(opt))
    assert_close(*fitted, 0.0)


def _phi(opt):
    return [leaf.clone() for p in opt.state if "preconditioner" in opt.state[p]
            for leaf in opt.state[p]["preconditioner"]["phi"]]


def _moves(model, opt, steps):
    """Per training step: whether φ moved."""
    moved = []
    for t in range(steps):
        before = _phi(opt)
        _train(model, opt, 1, start=t)
        moved.append(any(not torch.equal(a, b) for a, b in zip(before, _phi(opt))))
    return moved


@pytest.mark.parametrize("mode", ["lr", "precond"])
def test_meta_updates_every_k_steps(mode):
    """φ moves on the steps 0, K, 2K, … only (the engine's `every(K)` schedule, its step count)."""
    model = make_model("mlp")
    opt = APO(model.parameters(), 0.05, model=model, loss_fn=_mse, mode=mode, meta_every=3,
              meta_lr=1e-2, fsd="squared")
    assert _moves(model, opt, 7) == [True, False, False, True, False, False, True]


@pytest.mark.parametrize(
    ("schedule", "expected"), [(0.0, [False] * 4), (every(2), [True, False, True, False])]
)
def test_update_probability_replaces_meta_every(schedule, expected):
    """``update_probability`` sets the meta-update schedule instead of `meta_every`: 0 never fits (φ stays
    at its start), every(2) fits on the steps 0, 2."""
    model = make_model("mlp")
    opt = APO(model.parameters(), 0.05, model=model, loss_fn=_mse, update_probability=schedule,
              meta_lr=1e-2, fsd="squared")
    assert _moves(model, opt, 4) == expected


def test_warmup_applies_the_base_rule_while_fitting():
    ours, theirs = make_model("mlp"), make_model("mlp")
    opt = APO(ours.parameters(), 0.05, model=ours, loss_fn=_mse, base="sgd", meta_every=1, meta_lr=1e-2,
              warmup=3, fsd="squared")
    start = _phi(opt)
    _train(ours, opt, 3)
    _torch_train(theirs, torch.optim.SGD(theirs.parameters(), lr=0.05), 3)
    assert_close(clone_params(ours.parameters()), clone_params(theirs.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(start, _phi(opt)))  # P̂ was fitted meanwhile
    sgd = torch.optim.SGD(theirs.parameters(), lr=0.05)
    _train(ours, opt, 1, start=3)
    _torch_train(theirs, sgd, 1, start=3)  # after the warm-up, P̂ (fitted, times 0.9) acts
    assert not torch.allclose(ours.fc1.weight, theirs.fc1.weight, rtol=0, atol=1e-6)


def _q_of_log_lr(model, log_lr: float, g: list[torch.Tensor], x, y, x2, lam_fsd, lam_wsd) -> float:
    """Eq. 8 written out for SGD: θ′ = θ − exp(log η)·g, squared-error FSD on x2."""
    params = dict(model.named_parameters())
    moved = {n: p.detach() - math.exp(log_lr) * gi for (n, p), gi in zip(params.items(), g)}
    with torch.no_grad():
        new = torch.func.functional_call(model, moved, (x,))
        fsd = 0.5 * (torch.func.functional_call(model, moved, (x2,)) - model(x2)).square().sum() / len(x2)
        wsd = sum(((moved[n] - p) ** 2).sum() for n, p in params.items())
    return float(_mse(new, y) + lam_fsd * fsd + 0.5 * lam_wsd * wsd)


def test_lr_mode_meta_step_follows_the_proximal_objective():
    """The first meta-step of log η (RMSprop, lr ρ) is −ρ·sign(∂Q/∂log η)/√(1 − α) up to ε, and RMSprop's
    square average holds (1 − α)(∂Q/∂log η)²: the sign and the size of the meta-gradient against the
    derivative of Q (Eq. 8, written out here) by central differences."""
    model = make_model("mlp")
    opt = APO(model.parameters(), 0.05, model=model, loss_fn=_mse, mode="lr", base="sgd", meta_lr=1e-3,
              fsd="squared", lam_fsd=0.5, lam_wsd=0.2)
    x, y = batch("mlp", 0)
    x2 = batch("mlp", 500)[0]
    model.zero_grad()
    _mse(model(x), y).backward()
    g = [p.grad.clone() for p in model.parameters()]
    h = 1e-6
    dq = (_q_of_log_lr(model, math.log(0.05) + h, g, x, y, x2, 0.5, 0.2)
          - _q_of_log_lr(model, math.log(0.05) - h, g, x, y, x2, 0.5, 0.2)) / (2 * h)
    (before,) = _phi(opt)
    opt.step(batch=(x, y), fsd_batch=x2)
    (after,) = _phi(opt)
    expected = -1e-3 * math.copysign(1.0, dq) / math.sqrt(1 - 0.99)
    assert math.isclose(float(after - before), expected, rel_tol=1e-6)
    (fitter,) = [st["preconditioner"]["fitter"]["state"][0] for st in opt.state_dict()["state"].values()
                 if "preconditioner" in st]  # RMSprop's first square_avg is (1 − α)·(∂Q/∂log η)²
    assert math.isclose(math.sqrt(float(fitter["square_avg"]) / (1 - 0.99)), abs(dq), rel_tol=1e-6)


@pytest.mark.parametrize("mode", ["lr", "precond"])
def test_nonfinite_numbers_leave_everything_as_it_was(mode):
    """A NaN gradient skips the step (parameters, φ, the meta-optimizer unchanged); a NaN in the FSD
    batch makes the meta-gradient non-finite: the meta-step is rolled back (counted) and the parameters
    move with the kept φ."""
    model = make_model("mlp")
    opt = APO(model.parameters(), 0.05, model=model, loss_fn=_mse, mode=mode, meta_every=1, meta_lr=1e-2,
              fsd="squared")
    _train(model, opt, 2)
    x, y = batch("mlp", 2)
    params, phi = clone_params(model.parameters()), _phi(opt)
    model.zero_grad()
    _mse(model(x), y).backward()
    model.fc1.weight.grad[0, 0] = math.nan
    with pytest.warns(SkippedStepWarning):
        opt.step(batch=(x, y), fsd_batch=batch("mlp", 502)[0])
    assert_close(clone_params(model.parameters()), params, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(phi, _phi(opt)))
    assert sum(c["skipped"] for c in opt.skip_counts()) >= 1
    model.zero_grad()
    _mse(model(x), y).backward()
    bad = batch("mlp", 503)[0].clone()
    bad[0, 0] = math.nan
    opt.step(batch=(x, y), fsd_batch=bad)
    assert all(torch.equal(a, b) for a, b in zip(phi, _phi(opt)))
    assert sum(c["meta_skipped"] for c in opt.skip_counts()) >= 1
    assert not torch.equal(model.fc2.weight, params[2])


def test_missing_batches_are_refused_on_meta_steps():
    model = make_model("mlp")
    opt = APO(model.parameters(), 0.05, model=model, loss_fn=_mse, meta_every=2, fsd="squared")
    x, y = batch("mlp", 0)
    _mse(model(x), y).backward()
    with pytest.raises(ValueError, match="needs step\\(batch="):
        opt.step()
    with pytest.raises(ValueError, match="fsd_batch"):
        opt.step(batch=(x, y))
    opt.step(batch=(x, y), fsd_batch=x)  # step 0 fits; step 1 does not and needs nothing
    with pytest.raises(TypeError, match="takes 'batch' and 'fsd_batch'; got \\['fsd_bach'\\]"):
        opt.step(batch=(x, y), fsd_bach=x)  # a misspelt input is refused on a step that does not fit too
    opt.step()


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        (lambda x, y: dict(batch=x, fsd_batch=x), "the pair \\(inputs, targets\\) of B; got a Tensor"),
        (lambda x, y: dict(batch=(x, y, y), fsd_batch=x), "got a tuple of length 3"),
        (lambda x, y: dict(batch=(x, y), fsd_batch=(x, y)), "'fsd_batch' is the inputs x̃ of B′"),
    ],
)
def test_misshapen_batches_are_refused_before_anything_moves(inputs, words):
    model = make_model("mlp")
    opt = APO(model.parameters(), 0.05, model=model, loss_fn=_mse, fsd="squared")
    before = clone_params(model.parameters())
    x, y = batch("mlp", 0)
    _mse(model(x), y).backward()
    with pytest.raises(TypeError, match=words):
        opt.step(**inputs(x, y))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        ("precond", "placement Layer.* covers none of the 4 parameters"),  # Layer(model) places none
        ("lr", "Proximal: the optimizer holds parameters the model does not own"),  # Proximal.check_block
    ],
)
def test_parameters_of_another_module_are_refused_at_construction(mode, words):
    model = make_model("mlp")
    with pytest.raises(ValueError, match=words):
        APO(make_model("mlp").parameters(), 0.05, model=model, loss_fn=_mse, mode=mode)


def test_precond_mode_without_linear_or_conv_layers_is_refused():
    model = torch.nn.Sequential(torch.nn.LayerNorm(3))
    with pytest.raises(ValueError, match="covers none of the 2 parameters, so nothing would be"):
        APO(model.parameters(), 0.05, model=model, loss_fn=_mse)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        (dict(mode="adaptive"), ValueError, "mode"),
        (dict(base="lion"), ValueError, "base"),
        (dict(mode="lr", warmup=10), ValueError, "'warmup' belongs to the other mode"),
        (dict(mode="lr", scale=0.5), ValueError, "'scale' belongs to the other mode"),
        (dict(lr_param="softplus"), ValueError, "'lr_param' belongs to the other mode"),
        (dict(base="adam", momentum=0.5), ValueError, "'momentum' is read by base 'momentum'"),
        (dict(meta_every=0), ValueError, "meta_every"),
        (dict(meta_every=10, update_probability=0.5), ValueError, "'meta_every' and 'update_probability'"),
        (dict(lam_fsd=-1.0), ValueError, "lam_fsd"),
        (dict(scale=0.0), ValueError, "scale"),
        (dict(warmup=-1), ValueError, "warmup"),
        (dict(warmup=2.5), TypeError, "'warmup' must be an int"),
        (dict(mode="lr", lr_param="cube"), ValueError, "lr_param|parameterisation"),
        (dict(fsd="wasserstein"), ValueError, "fsd"),
        (dict(base="adam", momentum=0.9), ValueError, "'momentum' is read by base 'momentum'"),
        (dict(weight_decay=-1.0), ValueError, "weight_decay"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, words):
    model = make_model("mlp")
    with pytest.raises(error, match=words):
        APO(model.parameters(), 0.05, model=model, loss_fn=_mse, **kwargs)


def test_lr_mode_refuses_a_group_learning_rate():
    model = make_model("mlp")
    with pytest.raises(ValueError, match="would multiply the learned η"):
        APO([{"params": model.fc1.parameters(), "lr": 0.5}, {"params": model.fc2.parameters()}], 0.1,
            model=model, loss_fn=_mse, mode="lr")


def test_a_param_group_cannot_choose_apo_arguments():
    model = make_model("mlp")
    with pytest.raises(ValueError, match="cannot choose 'lam_fsd'"):
        APO([{"params": model.parameters(), "lam_fsd": 2.0}], 0.05, model=model, loss_fn=_mse)


def test_fsd_batches_cycles_through_the_loader():
    data = torch.utils.data.TensorDataset(torch.arange(5.0)[:, None], torch.zeros(5))
    fsd = fsd_batches(torch.utils.data.DataLoader(data, batch_size=2))
    got = [next(fsd).flatten().tolist() for _ in range(4)]
    assert got == [[0.0, 1.0], [2.0, 3.0], [4.0], [0.0, 1.0]]
    bare = fsd_batches([torch.ones(2)])
    assert torch.equal(next(bare), torch.ones(2))
    with pytest.raises(ValueError, match="yields no batch"):
        next(fsd_batches([]))
