"""What a new user hit, pinned: every silent no-op, silent skip, wrong pairing accepted at construction,
foreign checkpoint and torch.optim convention that went wrong now either works (compared exactly with
the right computation) or fails at once with an error naming the argument, what was expected and what
came.  Each test failed before the fix it guards."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
from optim_helpers import (
    assert_equal,
    assert_trees_equal,
    backward_at,
    clone_params,
    loss_at,
    make_model,
    run,
    snapshot,
)

import precondalg as pa
from precondalg import families
from precondalg.families import Family
from precondalg.fitters import LieGroup, TorchOptimizer
from precondalg.objectives import Fisher, Hypergradient, Newton, Proximal, squared_error
from precondalg.optim import FOP, HD, BaseRule, Preconditioned, SkippedStepWarning, _watch, by_ndim
from precondalg.placement import Flatten, InputSide, Spatial, TwoSided

F64 = torch.float64


# ----------------------------------------------------------------------------------------------
# 1. Closures: both conventions, or a clear refusal
# ----------------------------------------------------------------------------------------------
def _objective_run(objective_of, closure_calls_backward: bool, steps: int = 4, inputs: bool = False):
    """A few steps of a Linear model with a closure in one convention or the other."""
    model = make_model("mlp")
    opt = Preconditioned(
        model.parameters(),
        0.05,
        structure=families.dense_gram(),
        placement=by_ndim({2: InputSide()}),
        objective=objective_of(model),
        fitter=TorchOptimizer(torch.optim.Adam, lr=1e-2),
    )
    losses = []
    for t in range(steps):

        def closure(t=t):
            loss = loss_at(model, "mlp", t)
            if closure_calls_backward:
                opt.zero_grad()
                loss.backward()
            return loss

        kwargs = {"batch": _batch(t), "fsd_batch": _batch(t + 100)[0]} if inputs else {}
        losses.append(float(opt.step(closure, **kwargs).detach()))
    return clone_params(model.parameters()), snapshot(opt), losses


def _batch(t):
    from optim_helpers import batch

    return batch("mlp", t)


CLOSURE_OBJECTIVES = {
    "hypergradient": (lambda model: Hypergradient(), False),
    "hypergradient-unroll": (lambda model: Hypergradient(mode="unroll"), False),
    "fisher": (lambda model: Fisher(damping=0.1), False),
    "proximal": (lambda model: Proximal(model, squared_error, fsd="squared", lam_fsd=0.5), True),
    "newton-finite-difference": (lambda model: Newton(hvp="finite_difference"), False),
}


@pytest.mark.parametrize("name", sorted(CLOSURE_OBJECTIVES))
def test_a_closure_without_backward_gives_the_same_run_as_one_with_backward(name):
    """PSGD's convention (the closure only returns the loss) and torch.optim's (it calls backward) give
    the same parameters and optimizer state bit for bit, and the parameters move (before: Fisher with a
    loss-only closure left .grad None and changed nothing, silently)."""
    objective_of, inputs = CLOSURE_OBJECTIVES[name]
    start = clone_params(make_model("mlp").parameters())
    p_torch, s_torch, l_torch = _objective_run(objective_of, True, inputs=inputs)
    p_psgd, s_psgd, l_psgd = _objective_run(objective_of, False, inputs=inputs)
    assert all(not torch.equal(a, b) for a, b in zip(start, p_psgd)), "a parameter did not move"
    assert_equal(p_torch, p_psgd)
    assert_trees_equal(s_torch, s_psgd)
    assert l_torch == l_psgd


def test_newton_autograd_refuses_a_closure_that_calls_backward_and_changes_nothing():
    model = make_model("mlp")
    opt = Preconditioned(
        model.parameters(), 0.05, structure=families.dense_gram(), placement=Flatten(), objective=Newton()
    )
    before_p, before_s = clone_params(model.parameters()), snapshot(opt)

    def closure():
        opt.zero_grad()
        loss = loss_at(model, "mlp", 0)
        loss.backward()
        return loss

    with pytest.raises(ValueError) as info:
        opt.step(closure)
    message = str(info.value)
    for words in (
        "Newton(hvp='autograd')",
        "called backward()",
        "without calling backward",
        "hvp='finite_difference'",
    ):
        assert words in message, f"the message does not say {words!r}: {message}"
    assert_equal(before_p, clone_params(model.parameters()))
    assert_trees_equal(before_s, snapshot(opt))


def test_a_closure_that_returns_no_differentiable_loss_and_sets_no_gradient_is_refused():
    w = torch.nn.Parameter(torch.ones(2, 2))
    opt = Preconditioned([w], 0.1, structure=families.dense_gram(), placement=Flatten(), objective=Fisher())
    with pytest.raises(ValueError, match="Fisher: the closure called no backward.*returned float"):
        opt.step(lambda: 1.0)
    assert torch.equal(w.detach(), torch.ones(2, 2))


def test_a_step_without_any_gradient_warns_at_the_callers_line():
    model = make_model("mlp")
    opt = FOP(model.parameters(), 0.1)
    with pytest.warns(
        UserWarning, match="FOP.step: none of the optimizer's 4 parameters has a gradient"
    ) as got:
        opt.step()
    assert got[0].filename == __file__, f"the warning points at {got[0].filename}, not at the caller"


# ----------------------------------------------------------------------------------------------
# 1. float16 parameters, and skips that keep happening
# ----------------------------------------------------------------------------------------------
def _digits_mlp(dtype):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_adam_steps_in_float32_and_rounds_once(dtype):
    """Each step of a float16/bfloat16 model equals the float32 computation on the same values, rounded
    once to the parameter's dtype; the base rule's state is float32 (before: float16 Adam state
    underflowed, every step divided by zero and was skipped)."""
    half, single = _digits_mlp(dtype), _digits_mlp(dtype)
    single = single.float()
    kwargs = dict(
        structure=families.dense_gram(), base="adam", fitter=TorchOptimizer(torch.optim.Adam, lr=1e-2)
    )
    ours, ref = (
        Preconditioned(half.parameters(), 1e-3, **kwargs),
        Preconditioned(single.parameters(), 1e-3, **kwargs),
    )
    gen = torch.Generator().manual_seed(0)
    for _ in range(6):
        x, y = torch.rand(32, 64, generator=gen), torch.randint(0, 10, (32,), generator=gen)
        ours.zero_grad()
        torch.nn.functional.cross_entropy(half(x.to(dtype)).float(), y).backward()
        with torch.no_grad():  # the reference sees the same parameter values and gradients, in float32
            for p, q in zip(half.parameters(), single.parameters()):
                q.copy_(p.float())
                q.grad = p.grad.float()
        ours.step()
        ref.step()
        for p, q in zip(half.parameters(), single.parameters()):
            assert p.dtype == dtype
            assert torch.equal(p.detach(), q.detach().to(dtype))
    for p in half.parameters():
        assert all(
            v.dtype in (torch.float32, torch.float64)
            for v in ours.state[p].values()
            if isinstance(v, torch.Tensor) and v.is_floating_point()
        )
    assert all(c["skipped"] == 0 for c in ours.skip_counts())


def _digits_losses(dtype, steps):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = torch.tensor(X / 16.0, dtype=dtype), torch.tensor(y)
    model = _digits_mlp(dtype)
    opt = Preconditioned(model.parameters(), 1e-2, structure=families.dense_gram(), base="adam")
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkippedStepWarning)
        for _ in range(steps):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(X).float(), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert [c["skipped"] for c in opt.skip_counts()] == [0, 0, 0, 0]
    return losses


def test_float16_adam_on_digits_follows_the_float32_run():
    """The user's report: float16 with base "adam" skipped every step, loss flat at 2.306.  Now no step is
    skipped and the float16 run follows the float32 one (to float16's resolution of the loss)."""
    half, single = _digits_losses(torch.float16, 40), _digits_losses(torch.float32, 40)
    assert single[-1] < 0.5 * single[0]
    assert max(abs(a - b) for a, b in zip(half, single)) < 0.05, (half[-1], single[-1])


def test_skips_warn_at_once_then_periodically_with_the_counts(monkeypatch):
    monkeypatch.setattr(_watch, "WARN_EVERY", 5)
    model = make_model("mlp")
    opt = FOP(model.parameters(), 0.05)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for t in range(12):
            backward_at(model, "mlp", t)
            if t != 3:  # every step but one has a NaN gradient in the last bias
                model.fc2.bias.grad[0] = float("nan")
            opt.step()
    messages = [str(w.message) for w in caught if issubclass(w.category, SkippedStepWarning)]
    assert all(w.filename == __file__ for w in caught if issubclass(w.category, SkippedStepWarning))
    assert len(messages) == 3, messages  # steps 1, 6, 11
    assert messages[0].startswith(
        "FOP: after 1 steps, 4 block updates were skipped on 4 of 4 blocks"
    )
    assert "after 6 steps, 20 block updates were skipped on 4 of 4 blocks" in messages[1]
    assert "(16 since step 1)" in messages[1]
    assert "after 11 steps, 40 block updates" in messages[2]
    assert [c["skipped"] for c in opt.skip_counts()] == [11, 11, 11, 11]


# ----------------------------------------------------------------------------------------------
# 1, 4. Hyperparameters the base rule does not read
# ----------------------------------------------------------------------------------------------
def _w():
    return [torch.nn.Parameter(torch.ones(3, 4))]


UNUSED = {
    "momentum with sgd": (
        lambda: Preconditioned(_w(), structure=families.dense_gram(), base="sgd", momentum=0.9),
        "'momentum' is not used by base 'sgd'",
    ),
    "betas with momentum": (
        lambda: Preconditioned(_w(), structure=families.dense_gram(), base="momentum", betas=(0.9, 0.99)),
        "'betas' is not used by base 'momentum'",
    ),
    "nesterov with adam": (
        lambda: Preconditioned(_w(), structure=families.dense_gram(), base="adam", nesterov=True),
        "'nesterov' is not used by base 'adam'",
    ),
    "alpha with adam": (
        lambda: Preconditioned(_w(), structure=families.dense_gram(), base="adam", alpha=0.9),
        "'alpha' is not used by base 'adam'",
    ),
    "FOP momentum with adam": (lambda: FOP(_w(), 0.1, momentum=0.5, base="adam"), "'momentum' is not used"),
    "FOP nesterov without momentum": (lambda: FOP(_w(), 0.1, momentum=0.0, nesterov=True), "'nesterov'"),
    "HD momentum with sgd": (lambda: HD(_w(), 0.1, 1e-3, base="sgd", momentum=0.5), "'momentum' is not used"),
    "HD betas with momentum": (lambda: HD(_w(), 0.1, 1e-3, base="momentum", betas=(0.8, 0.9)), "'betas'"),
}


@pytest.mark.parametrize("case", sorted(UNUSED))
def test_a_hyperparameter_the_base_rule_does_not_read_is_refused(case):
    build, words = UNUSED[case]
    with pytest.raises(ValueError) as info:
        build()
    assert words in str(info.value), str(info.value)


def test_a_param_group_with_a_key_the_base_rule_does_not_read_is_refused():
    opt = Preconditioned(_w(), structure=families.dense_gram(), base="sgd")
    with pytest.raises(ValueError, match="'momentum' is not used by base 'sgd'"):
        opt.add_param_group({"params": _w(), "momentum": 0.9})
    assert len(opt.param_groups) == 1


def test_defaults_hold_exactly_the_base_rules_hyperparameters():
    def keys(base):
        return set(Preconditioned(_w(), structure=families.dense_gram(), base=base).defaults)

    common = {"lr", "weight_decay"}
    assert keys("sgd") == common
    assert keys("momentum") == common | {"momentum", "dampening", "nesterov"}
    assert keys("ema") == common | {"momentum"}
    assert keys("adam") == common | {"betas", "eps"}
    assert keys("rmsprop") == common | {"alpha", "eps"}
    assert FOP(_w(), 0.1).defaults["momentum"] == 0.9 and "betas" not in FOP(_w(), 0.1).defaults


@pytest.mark.parametrize("base", ["momentum", "adam"])
def test_one_cycle_lr_schedules_the_hyperparameters_of_the_torch_optimizer_the_base_mirrors(base):
    """OneCycleLR cycles momentum for torch.optim.SGD and β₁ for torch.optim.Adam; so it must here (before:
    FOP's param groups held betas, so OneCycleLR cycled betas and momentum stayed 0.9)."""
    ours_model, ref_model = make_model(), make_model()
    if base == "momentum":
        ours = FOP(ours_model.parameters(), 0.05, hyper_lr=0.0)
        ref = torch.optim.SGD(ref_model.parameters(), lr=0.05, momentum=0.9)
        key = "momentum"
    else:
        ours = Preconditioned(
            ours_model.parameters(),
            0.05,
            structure=families.dense_gram(),
            base="adam",
            fitter=TorchOptimizer(torch.optim.SGD, lr=0.0),
        )
        ref = torch.optim.Adam(ref_model.parameters(), lr=0.05)
        key = "betas"
    sched = torch.optim.lr_scheduler.OneCycleLR(ours, max_lr=0.1, total_steps=20)
    ref_sched = torch.optim.lr_scheduler.OneCycleLR(ref, max_lr=0.1, total_steps=20)
    for t in range(5):
        run(ours_model, ours, "mlp", 1, start=t)
        run(ref_model, ref, "mlp", 1, start=t)
        sched.step()
        ref_sched.step()
    assert [g[key] for g in ours.param_groups] == [g[key] for g in ref.param_groups]
    assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in ref.param_groups]
    assert ours.param_groups[0][key] != (0.9 if base == "momentum" else (0.9, 0.999)), "nothing was cycled"


# ----------------------------------------------------------------------------------------------
# 2. Wrong pairings refused at construction
# ----------------------------------------------------------------------------------------------
WRONG_KINDS = {
    "objective class": (dict(objective=Fisher), "'objective'", "write objective=Fisher(...)"),
    "objective class Newton": (dict(objective=Newton), "'objective'", "got the class Newton itself"),
    "fitter class": (dict(fitter=LieGroup), "'fitter'", "write fitter=LieGroup(...)"),
    "torch optimizer class": (
        dict(fitter=torch.optim.Adam),
        "'fitter'",
        "fitter=TorchOptimizer(torch.optim.Adam, lr=...)",
    ),
    "torch optimizer instance": (
        dict(fitter=torch.optim.Adam([torch.zeros(1)])),
        "'fitter'",
        "TorchOptimizer(torch.optim.Adam",
    ),
    "objective string": (dict(objective="fisher"), "'objective'", "Fisher(damping=1e-3)"),
    "placement class": (dict(placement=InputSide), "'placement'", "write placement=InputSide(...)"),
    "placement list": (dict(placement=[InputSide()]), "'placement'", "a callable shape -> Placement"),
    "structure factory": (
        dict(structure=families.dense_gram),
        "'structure'",
        "call it, structure=dense_gram(...)",
    ),
    "structure factory kronecker": (
        dict(structure=families.kronecker_gram),
        "'structure'",
        "call it, structure=kronecker_gram(...)",
    ),
    "structure class": (dict(structure=Family), "'structure'", "the class Family itself"),
    "base not a str": (dict(base=torch.optim.SGD), "'base'", "one of"),
}


@pytest.mark.parametrize("case", sorted(WRONG_KINDS))
def test_a_choice_of_the_wrong_kind_is_refused_at_construction(case):
    kwargs, argument, fix = WRONG_KINDS[case]
    kwargs = {"structure": families.dense_gram(), "placement": InputSide(), **kwargs}
    with pytest.raises(TypeError) as info:
        Preconditioned(_w(), 0.1, **kwargs)
    assert argument in str(info.value) and fix in str(info.value), str(info.value)


def _swapped_kronecker(dims, like, gen):
    return pa.Kronecker(
        pa.Dense(torch.eye(dims[1], dtype=like.dtype)), pa.Dense(torch.eye(dims[0], dtype=like.dtype))
    )


def _too_small(dims, like, gen):
    return pa.Dense(torch.eye(dims[0] - 1, dtype=like.dtype))


MISFITS = {
    "swapped Kronecker factors": (
        Family(init=_swapped_kronecker, form=pa.gram),
        TwoSided(),
        [
            "(3, 6)",
            "TwoSided()",
            "_swapped_kronecker",
            "Kronecker factors of sizes [(6, 3)]",
            "A 3×3",
            "B 6×6",
        ],
    ),
    "dense_gram with TwoSided": (
        families.dense_gram(),
        TwoSided(),
        ["(3, 6)", "TwoSided()", "dense_gram()", "no Kronecker product"],
    ),
    "init of the wrong size": (
        Family(init=_too_small, form=pa.gram),
        InputSide(),
        ["(3, 6)", "InputSide()", "_too_small", "needs a preconditioner of size 6×6", "got 5×5"],
    ),
}


@pytest.mark.parametrize("case", sorted(MISFITS))
def test_a_structure_that_does_not_fit_the_placement_is_refused_at_construction(case):
    family, placement, words = MISFITS[case]
    w = torch.nn.Parameter(torch.ones(3, 6))
    with pytest.raises(ValueError) as info:
        Preconditioned([w], 0.1, structure=family, placement=placement)
    for word in words:
        assert word in str(info.value), f"the message does not say {word!r}: {info.value}"


def test_the_right_kronecker_order_is_accepted_and_acts_as_a_g_b_transposed():
    """TwoSided with kronecker_gram: factor 0 acts on the output side (3×3), factor 1 on the input side
    (6×6), P vec(G) = vec(A G Bᵀ)."""
    gen = torch.Generator().manual_seed(3)
    w = torch.nn.Parameter(torch.ones(3, 6, dtype=F64))
    opt = Preconditioned([w], 0.1, structure=families.kronecker_gram("triangular", 2.0), placement=TwoSided())
    for leaf in opt.state[w]["preconditioner"]["phi"]:  # factors away from multiples of I
        leaf.add_(torch.randn(leaf.shape, generator=gen, dtype=F64).triu())
    ((_, P),) = opt.preconditioners()
    assert [f.shape for f in P.factors] == [(3, 3), (6, 6)]
    A, B = (f.to_dense() for f in P.factors)
    G = torch.randn(3, 6, generator=gen, dtype=F64)
    (placed,) = TwoSided().unview(P @ TwoSided().view([G]), [(3, 6)])
    torch.testing.assert_close(placed, A @ G @ B.T, rtol=1e-14, atol=0)


BAD_TYPES = {
    "Fisher damping": (
        lambda: Fisher("1e-3"),
        "Fisher: 'damping' must be a real number >= 0; got '1e-3' (str)",
    ),
    "Preconditioned lr": (lambda: Preconditioned(_w(), "0.1", structure=families.dense_gram()), "'lr'"),
    "Preconditioned momentum": (
        lambda: Preconditioned(_w(), structure=families.dense_gram(), base="momentum", momentum="0.9"),
        "'momentum'",
    ),
    "Preconditioned betas": (
        lambda: Preconditioned(_w(), structure=families.dense_gram(), base="adam", betas=0.9),
        "'betas'",
    ),
    "Preconditioned weight_decay": (
        lambda: Preconditioned(_w(), structure=families.dense_gram(), weight_decay=None),
        "'weight_decay'",
    ),
    "Preconditioned nesterov": (
        lambda: Preconditioned(_w(), structure=families.dense_gram(), base="momentum", nesterov="yes"),
        "'nesterov'",
    ),
    "Preconditioned seed": (
        lambda: Preconditioned(_w(), structure=families.dense_gram(), seed=1.5),
        "'seed'",
    ),
    "FOP hyper_lr": (lambda: FOP(_w(), 0.1, hyper_lr="1e-4"), "FOP: 'hyper_lr'"),
    "FOP momentum": (lambda: FOP(_w(), 0.1, momentum="0.9"), "FOP: 'momentum'"),
    "HD hyper_lr": (lambda: HD(_w(), 0.1, "1e-3"), "HD: 'hyper_lr'"),
    "HD lr": (lambda: HD(_w(), None, 1e-3), "HD: 'lr'"),
    "LieGroup lr": (lambda: LieGroup(lr="0.1"), "'lr'"),
    "LieGroup beta": (lambda: LieGroup(beta_lipschitz="0.9"), "'beta_lipschitz'"),
    "Proximal lam_fsd": (lambda: Proximal(torch.nn.Linear(1, 1), squared_error, lam_fsd="1"), "'lam_fsd'"),
    "low_rank_gram rank": (lambda: families.low_rank_gram("2"), "'rank'"),
    "low_rank_gram std": (lambda: families.low_rank_gram(2, "0.1"), "'std'"),
    "triangular_gram scale": (lambda: families.triangular_gram("1"), "'scale'"),
    "scalar value": (lambda: families.scalar("0.1"), "'value'"),
    "TorchOptimizer lr": (
        lambda: TorchOptimizer(torch.optim.Adam, lr="1e-3"),
        "TorchOptimizer: Adam refused",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_TYPES))
def test_a_hyperparameter_that_is_not_a_number_is_refused_clearly(case):
    build, words = BAD_TYPES[case]
    with pytest.raises(TypeError) as info:
        build()
    assert words in str(info.value), str(info.value)


# ----------------------------------------------------------------------------------------------
# 3. Checkpoints from another optimizer
# ----------------------------------------------------------------------------------------------
def _trained(build, steps=3):
    model = make_model("mlp")
    opt = build(model.parameters())
    run(model, opt, "mlp", steps)
    return model, opt


FOREIGN = {
    "another structure": (
        lambda ps: FOP(ps, 0.05, rank=2),
        [
            "block of the parameters of shapes [(4, 5)]: "
            "structure 'low_rank_gram' → 'dense_gram', phi 'Dense 2×5' → 'Dense 5×5'"
        ],
    ),
    "another preset": (lambda ps: HD(ps, 0.05, 1e-3, base="momentum"), ["optimizer 'HD' → 'FOP'"]),
    "another placement": (
        lambda ps: Preconditioned(
            ps,
            0.05,
            structure=families.dense_gram(),
            placement=by_ndim({2: pa.placement.OutputSide()}),
            base="momentum",
            name="FOP",
        ),
        ["placement 'OutputSide()' → 'InputSide()'"],
    ),
    "torch.optim.SGD": (
        lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
        ["not made by a precondalg optimizer", "'param_groups', 'state'"],
    ),
}


@pytest.mark.parametrize("case", sorted(FOREIGN))
def test_a_checkpoint_from_another_configuration_is_refused_and_changes_nothing(case):
    build, words = FOREIGN[case]
    _, other = _trained(build)
    model, opt = _trained(lambda ps: FOP(ps, 0.05, hyper_lr=1e-2))
    before_p, before_s = clone_params(model.parameters()), snapshot(opt)
    with pytest.raises(ValueError) as info:
        opt.load_state_dict(other.state_dict())
    message = str(info.value)
    if case != "torch.optim.SGD":
        assert "the checkpoint was made with a different configuration" in message
    for word in words:
        assert word in message, f"the message does not say {word!r}: {message}"
    assert "Nothing was changed" in message or "nothing was changed" in message
    assert_equal(before_p, clone_params(model.parameters()))
    assert_trees_equal(before_s, snapshot(opt))
    # and the run continues as if nothing had happened
    twin, twin_opt = _trained(lambda ps: FOP(ps, 0.05, hyper_lr=1e-2))
    run(model, opt, "mlp", 2, start=3)
    run(twin, twin_opt, "mlp", 2, start=3)
    assert_equal(clone_params(twin.parameters()), clone_params(model.parameters()))


# ----------------------------------------------------------------------------------------------
# 4. A picklable way to choose placements and structures per shape
# ----------------------------------------------------------------------------------------------
def test_by_ndim_choices_pickle_and_continue_bit_exactly():
    model = make_model("cnn")
    opt = Preconditioned(
        model.parameters(),
        0.05,
        structure=by_ndim({2: families.dense_gram()}, default=families.dense_gram(0.5)),
        placement=by_ndim({2: InputSide(), 4: Spatial()}),
        fitter=TorchOptimizer(torch.optim.Adam, lr=1e-2),
        base="momentum",
    )
    run(model, opt, "cnn", 2)
    twin_model = copy.deepcopy(model)
    twin = pickle.loads(pickle.dumps(opt))
    twin_params = list(twin.param_groups[0]["params"])
    run(model, opt, "cnn", 3, start=2)
    for t in range(2, 5):
        twin.zero_grad()
        with torch.no_grad():
            for p, q in zip(twin_model.parameters(), twin_params):
                p.copy_(q)
        loss = loss_at(twin_model, "cnn", t)
        grads = torch.autograd.grad(loss, list(twin_model.parameters()))
        for q, g in zip(twin_params, grads):
            q.grad = g
        twin.step()
    assert_equal(clone_params(model.parameters()), [q.detach().clone() for q in twin_params])
    assert len(opt.preconditioners()) == 3  # conv 3×3 and 1×1 taps, the linear head; biases not


def test_by_ndim_refuses_what_is_not_a_dict_of_ndims():
    with pytest.raises(TypeError, match="by_ndim: 'choices' must be a dict from ndim"):
        by_ndim([InputSide()])
    with pytest.raises(
        TypeError, match=r"by_ndim: the choice for ndim 2 is the class InputSide itself: write"
    ):
        by_ndim({2: InputSide})
    with pytest.raises(TypeError, match=r"the choice for ndim 2 is the factory dense_gram itself: call it"):
        by_ndim({2: families.dense_gram})
    with pytest.raises(
        TypeError, match="the choice for default must be a Placement, a Family or None; got str"
    ):
        by_ndim({2: InputSide()}, default="flatten")


# ----------------------------------------------------------------------------------------------
# 9. The families PSGD-style rows use
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("family", "kind", "factor_kinds"),
    [
        (families.triangular_gram(0.1), pa.Triangular, None),
        (families.diagonal_gram(0.1), pa.Diagonal, None),
        (families.dense_gram(0.1), pa.Dense, None),
        (families.kronecker_gram("triangular", 0.1), pa.Kronecker, pa.Triangular),
        (families.kronecker_gram("diagonal", 0.1), pa.Kronecker, pa.Diagonal),
    ],
)
def test_psgd_families_start_at_scale_squared_identity(family, kind, factor_kinds):
    dims = (3, 4) if kind is pa.Kronecker else (12,)
    phi = family.init(dims, torch.zeros((), dtype=F64), None)
    assert isinstance(phi, kind)
    if factor_kinds is not None:
        assert all(isinstance(f, factor_kinds) for f in phi.factors)
        for f, n in zip(phi.factors, dims):  # scale^(1/K) on each factor, as psgd_torch
            torch.testing.assert_close(f.to_dense(), 0.1**0.5 * torch.eye(n, dtype=F64), rtol=1e-15, atol=0)
    P = family.form(phi)
    torch.testing.assert_close(P.to_dense(), 0.01 * torch.eye(12, dtype=F64), rtol=1e-14, atol=0)
    assert pa.is_lie_group(phi)


def test_triangular_gram_with_newton_solves_rosenbrock_as_in_the_paper():
    """Li 2019, §4 (Rosenbrock from (−1, 1), Q₀ = 0.1·I triangular, μ₀ = 0.2, step 0.5): the preset-free
    row reaches (1, 1) within 300 steps."""
    x = torch.nn.Parameter(torch.tensor([-1.0, 1.0], dtype=F64))
    opt = Preconditioned(
        [x],
        0.5,
        structure=families.triangular_gram(0.1),
        placement=Flatten(),
        objective=Newton(),
        fitter=LieGroup(lr=0.2),
    )
    for _ in range(300):
        opt.step(lambda: (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2)
    torch.testing.assert_close(x.detach(), torch.ones(2, dtype=F64), rtol=0, atol=1e-8)


def test_family_names_show_in_messages():
    assert repr(families.triangular_gram(0.1)) == "triangular_gram(scale=0.1)"
    assert repr(families.kronecker_gram()) == "kronecker_gram()"
    assert repr(families.kronecker_gram("diagonal")) == "kronecker_gram(factor='diagonal', scale=1.0)"
    assert repr(Family(init=_too_small)) == "Family(init=_too_small)"
    with pytest.raises(ValueError, match="kronecker_gram: 'factor' must be one of"):
        families.kronecker_gram("lower")
    for bad in (0, float("inf")):
        expected = f"triangular_gram: 'scale' must be a real number > 0 and < inf; got {bad}"
        with pytest.raises(ValueError, match=expected):
            families.triangular_gram(bad)


# ----------------------------------------------------------------------------------------------
# 10. FOP's defining step order, against the paper's equations with a P that has moved away from I
# ----------------------------------------------------------------------------------------------
def test_fop_preset_with_momentum_follows_the_papers_equations():
    """FOP (Moskovitz et al. 2019, Alg. 1 and Eqs. 4, 6–8), written out here on plain tensors: for each
    weight W (out×in) with M (in×in), M₀ = I, and the biases unpreconditioned,

        ∇_M = −α M(G_{t−1}ᵀG_t + G_tᵀG_{t−1})   (the raw previous gradient, also under momentum)
        M ← Adam step on ∇_M (lr ρ)
        b ← μb + G_t MᵀM  (b₁ = G₁MᵀM)          P BEFORE the momentum rule
        W ← W − α b.

    A P applied after the momentum rule (W ← W − α MᵀM-applied b of raw gradients) differs as soon as M
    moves, which it does here by more than 0.1."""
    alpha, mu, rho, steps = 0.05, 0.9, 0.05, 8
    model, twin = make_model("mlp"), make_model("mlp")
    opt = FOP(model.parameters(), alpha, momentum=mu, hyper_lr=rho)
    params = list(twin.parameters())
    weights = [p for p in params if p.ndim == 2]
    Ms = {p: torch.eye(p.shape[1], dtype=F64, requires_grad=True) for p in weights}
    meta = torch.optim.Adam(list(Ms.values()), lr=rho)
    buffers, previous = {}, {}
    for t in range(steps):
        backward_at(model, "mlp", t)
        opt.step()
        loss = loss_at(twin, "mlp", t)
        grads = dict(zip(params, torch.autograd.grad(loss, params)))
        if previous:
            for W in weights:
                G, Gp, M = grads[W], previous[W], Ms[W]
                M.grad = -alpha * M.detach() @ (Gp.T @ G + G.T @ Gp)
            meta.step()
        with torch.no_grad():
            for p in params:
                d = grads[p] @ (Ms[p].T @ Ms[p]) if p in Ms else grads[p]
                buffers[p] = mu * buffers[p] + d if p in buffers else d.clone()
                p.sub_(alpha * buffers[p])
        previous = grads
    moved = max((M.detach() - torch.eye(M.shape[0], dtype=F64)).abs().max().item() for M in Ms.values())
    assert moved > 0.1, f"M moved by {moved}: the test cannot tell P-before from P-after momentum"
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-14)


def test_a_base_rule_of_ones_own_is_used_and_its_hyperparameters_are_checked_by_name():
    """`base=` takes a `BaseRule` too (the docs' "custom rule"): here sign descent with a scale."""

    def init(p):
        return {}

    def update(d, state, group):
        return state, group["scale"] * torch.sign(d)

    sign = BaseRule("sign", init, update, {"scale": 0.5})
    w = torch.nn.Parameter(torch.zeros(2, 3, dtype=F64))
    opt = Preconditioned(
        [w],
        0.1,
        structure=families.dense_gram(),
        placement=InputSide(),
        base=sign,
        fitter=TorchOptimizer(torch.optim.SGD, lr=0.0),
    )
    assert opt.defaults == {"lr": 0.1, "scale": 0.5, "weight_decay": 0.0}
    w.grad = torch.tensor([[1.0, -2.0, 0.0], [3.0, 0.5, -1.0]], dtype=F64)
    opt.step()
    torch.testing.assert_close(w.detach(), -0.1 * 0.5 * torch.sign(w.grad), rtol=0, atol=0)
    with pytest.raises(ValueError, match="'momentum' is not used by base 'sign'"):
        Preconditioned([w], 0.1, structure=families.dense_gram(), base=sign, momentum=0.9)


def test_raise_mode_raises_when_new_parameters_would_overflow_and_changes_nothing():
    """nonfinite="raise": finite gradients whose step overflows one block raise, and every block — the
    preconditioners already fitted this step included — is left as it was (before: the step was skipped
    silently, with no exception and no warning)."""
    model = make_model("mlp", dtype=torch.float32)
    opt = FOP(model.parameters(), 0.05, hyper_lr=1e-2, nonfinite="raise")
    run(model, opt, "mlp", 3)
    before_p, before_s = clone_params(model.parameters()), snapshot(opt)
    backward_at(model, "mlp", 3)
    model.fc2.bias.grad[0] = 3e38  # finite, but θ − lr·s overflows after momentum
    opt.param_groups[0]["lr"] = 10.0
    with pytest.raises(
        FloatingPointError, match=r"the new parameters of the blocks of shapes \(3,\) would hold"
    ):
        opt.step()
    opt.param_groups[0]["lr"] = 0.05
    assert_equal(before_p, clone_params(model.parameters()))
    assert_trees_equal(before_s, snapshot(opt))


# ----------------------------------------------------------------------------------------------
# Found by a second new-user review
# ----------------------------------------------------------------------------------------------
def test_hd_refuses_a_per_group_lr_that_would_silently_multiply_the_learned_rate():
    w, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(
        ValueError, match=r"HD: param group\(s\) \[0\] set 'lr'; in HD a group's lr would multiply"
    ):
        HD([{"params": [w], "lr": 0.5}, {"params": [b]}], 0.01, 0.0)


def test_a_checkpoint_keeps_the_fitters_hyperparameters_of_the_constructor():
    """The fitter's and objective's hyperparameters are the constructor's (a resumed run may change them
    on purpose, as LieGroup's lr always could); the checkpoint gives their state (before: the wrapped
    torch optimizer's lr silently came from the checkpoint)."""
    model = make_model("mlp")
    saved = FOP(model.parameters(), 0.1, hyper_lr=1e-4)
    run(model, saved, "mlp", 2)
    opt = FOP(model.parameters(), 0.1, hyper_lr=1e-2)
    opt.load_state_dict(saved.state_dict())
    inner = opt.state_dict()["state"][0]["preconditioner"]["fitter"]
    assert inner["param_groups"][0]["lr"] == 1e-2
    assert inner["state"][0]["step"] == 1  # the moments and step count are the checkpoint's


def test_an_hd_checkpoint_loads_into_hd_with_another_initial_rate():
    """α₀ only initialises φ, which the checkpoint replaces: the configuration compares the family's
    kind ("scalar"), not its initial value (before: refused, naming 'scalar(0.1)' → 'scalar(0.05)')."""
    model = make_model("mlp")
    saved = HD(model.parameters(), 0.1, 1e-3)
    run(model, saved, "mlp", 2)
    opt = HD(model.parameters(), 0.05, 1e-3)
    opt.load_state_dict(saved.state_dict())
    assert [P.alpha for _, P in opt.preconditioners()] == [P.alpha for _, P in saved.preconditioners()]


@pytest.mark.parametrize(
    ("group", "words"),
    [
        ({"momentun": 0.5}, "unknown param-group key 'momentun'; did you mean 'momentum'?"),
        ({"weight_decy": 0.1}, "did you mean 'weight_decay'?"),
        ({"structure": families.diagonal()}, "a param group cannot choose 'structure'"),
        ({"placement": Flatten()}, "a param group cannot choose 'placement'"),
    ],
)
def test_a_param_group_key_that_would_be_ignored_is_refused(group, words):
    with pytest.raises(ValueError) as info:
        Preconditioned([{"params": _w(), **group}], 0.1, structure=families.dense_gram(), base="momentum")
    assert words in str(info.value), str(info.value)
    named = Preconditioned([{"params": _w(), "name": "encoder"}], 0.1, structure=families.dense_gram())
    assert named.param_groups[0]["name"] == "encoder"  # a key unlike any hyperparameter is the user's own


@pytest.mark.parametrize(
    ("build", "key"),
    [
        (lambda groups: FOP(groups, 0.1), "hyper_lr"),
        (lambda groups: HD(groups, 0.1, 1e-3), "granularity"),
        (lambda groups: Preconditioned(groups, 0.1, structure=families.dense_gram(), name="Mine",
                                       preset_arguments=("depth",)), "depth"),
    ],
)
def test_a_presets_own_argument_in_a_param_group_is_refused(build, key):
    with pytest.raises(ValueError, match=f"a param group cannot choose '{key}'"):
        build([{"params": _w(), key: 1}])


@pytest.mark.parametrize(
    ("init", "words"),
    [
        (lambda dims, like, gen: pa.Dense(torch.eye(4, dtype=torch.float64)), "φ₀ in torch.float64 on cpu"),
        (lambda dims, like, gen: torch.eye(4), "made φ₀ of type Tensor"),
    ],
    ids=["wrong dtype", "not a structure"],
)
def test_a_family_init_of_the_wrong_kind_is_refused_at_construction(init, words):
    W = torch.nn.Parameter(torch.randn(3, 4))
    with pytest.raises(TypeError) as info:
        Preconditioned([W], 0.1, structure=Family(init, pa.gram), placement=InputSide())
    assert words in str(info.value) and "(3, 4)" in str(info.value), str(info.value)


def test_newton_refuses_arguments_its_mode_does_not_use_and_explains_a_bad_batch():
    net = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="'model' and 'loss_fn' are used only by hvp='torch.func'"):
        Newton(model=net, loss_fn=squared_error)
    opt = Preconditioned(
        net.parameters(),
        0.1,
        structure=families.dense_gram(),
        placement=Flatten(),
        objective=Newton(hvp="torch.func", model=net, loss_fn=squared_error),
    )
    with pytest.raises(TypeError, match=r"'batch' must be a pair \(inputs, targets\).*got Tensor"):
        opt.step(batch=torch.randn(4, 3))
    with pytest.raises(
        TypeError, match=r"step\(\) needs batch=\(inputs, targets\) and no closure; got nothing"
    ):
        opt.step()
    with pytest.raises(RuntimeError, match="torch's F.mse_loss is one such: write it out"):
        Preconditioned(
            net.parameters(),
            0.1,
            structure=families.dense_gram(),
            placement=Flatten(),
            objective=Newton(hvp="torch.func", model=net, loss_fn=torch.nn.functional.mse_loss),
        ).step(batch=(torch.randn(4, 3), torch.randn(4, 2)))


def test_fop_takes_adams_hyperparameters_with_an_adam_base():
    opt = FOP(_w(), 0.1, base="adam", betas=(0.8, 0.99), eps=1e-6)
    assert opt.defaults["betas"] == (0.8, 0.99) and opt.defaults["eps"] == 1e-6
    with pytest.raises(ValueError, match="'betas' is not used by base 'momentum'"):
        FOP(_w(), 0.1, betas=(0.8, 0.99))
    with pytest.raises(
        ValueError, match=r"FOP: 'nesterov' needs heavy-ball momentum.*momentum=0.0 and base 'sgd'"
    ):
        FOP(_w(), 0.1, momentum=0.0, nesterov=True)


def test_a_misspelt_step_input_is_refused_on_steps_that_do_not_fit_too():
    """Every objective checks its inputs on a step between fits as on a fitting step (`check_inputs`):
    Hypergradient takes none, so `bogus` is refused on step 1 of every(2), which fits nothing."""
    model = torch.nn.Linear(3, 2)
    opt = Preconditioned(model.parameters(), 0.1, structure=families.dense_gram(), placement=Flatten(),
                         objective=Hypergradient(), update_probability=pa.optim.every(2))
    for t in range(2):
        opt.zero_grad()
        model(torch.ones(4, 3)).square().sum().backward()
        if t == 0:
            opt.step()
    with pytest.raises(TypeError, match=r"Hypergradient: step\(\) takes no keyword inputs .* \['bogus'\]"):
        opt.step(bogus=1)


def test_a_placement_that_covers_no_parameter_is_refused():
    """Layer(model) of another module, or placements for convolutions only on a linear layer, would
    precondition nothing: the optimizer refuses it at construction instead of running the base rule alone."""
    model, other = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"Preconditioned: placement .* covers none of the 2 parameters"):
        Preconditioned(model.parameters(), 0.1, structure=families.kronecker_gram(),
                       placement=pa.placement.Layer(other))
    with pytest.raises(ValueError, match="covers none of the 2 parameters"):
        Preconditioned(model.parameters(), 0.1, structure=families.dense_gram(),
                       placement=by_ndim({4: Spatial()}))


def test_a_warmup_with_the_hypergradient_is_refused():
    """During a warm-up P is not applied, so θ_t does not depend on P_{t−1}: the hypergradient, which
    goes through the last applied step, would fit P to a step that never happened."""
    model = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match="warmup=2 with objective Hypergradient"):
        Preconditioned(model.parameters(), 0.1, structure=families.dense_gram(), placement=Flatten(),
                       warmup=2)
