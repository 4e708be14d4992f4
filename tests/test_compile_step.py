"""``compile=True``: every preset's compiled step equals its eager step.

`Preconditioned(compile=...)` (and every preset's ``compile`` argument) compiles the step's tensor work —
everything after the objective's evaluation — with `torch.compile`, sync-free.  Pinned here:

(a) every preset, compiled, gives the eager run's parameters and preconditioners after four steps (the
    first steps compile: a step without and with a cached u, a refit and an amortised one), with the
    Dynamo-only backend "aot_eager" (the same aten kernels as eager: fast to compile; three presets in
    the default run, all in the slow run), and with Inductor, what ``compile=True`` means, in the slow
    run;
(b) a skipped step (NaN gradient) is skipped and counted, compiled as in eager;
(c) the argument is checked, and a compiled optimizer can be copied and pickled.

Float64 throughout, so that round-off stays far below a wrong step.  Each tensor is compared relative to
how far it moved in the eager run (1e-4 of it): Inductor fuses operations (rounding differently), and a
compiled torch.optim.Adam (the meta-optimizer of FOP, LODO and APO) computes its bias corrections
1 − βᵗ from its float32 step counter (eager: Python floats), ~1e-5 relative in each meta-step; a wrong
step is off by O(1) of the movement.  Inductor's pattern matcher dropped the alpha of
``x.add(A @ y, alpha=-lr)`` (pytorch/pytorch#167313): with it on, the Kronecker presets' first step was
off by O(1) here, which is why ``compile=True`` switches it off (see `Preconditioned`).
"""

from __future__ import annotations

import copy
import io
import math
import warnings

import pytest
import torch

import precondalg as pa
from precondalg.optim import APO, FOP, HD, KFAC, LODO, PSGD, Preconditioned, Shampoo

f64 = torch.float64
_g = torch.Generator().manual_seed(3)
X, Y, X_NEXT = (torch.randn(8, k, generator=_g, dtype=f64) for k in (4, 2, 4))


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def squared_error(out, y):
    return ((out - y) ** 2).mean()


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).to(f64)


PRESETS = {
    "FOP": lambda net, c: FOP(net.parameters(), 0.1, momentum=0.9, hyper_lr=1e-2, compile=c),
    "HD": lambda net, c: HD(net.parameters(), 0.1, 1e-3, compile=c),
    "PSGD": lambda net, c: PSGD(net.parameters(), 0.05, compile=c),
    "LODO": lambda net, c: LODO(net.parameters(), 0.05, compile=c),
    # ε = 1e-4: with the default 1e-12 the first step's roots of rank-one statistics are ~1e6 on their
    # null space, where round-off (eager against compiled kernels) decides the entries.
    "Shampoo": lambda net, c: Shampoo(net.parameters(), 0.05, epsilon=1e-4, compile=c),
    "KFAC": lambda net, c: KFAC(net.parameters(), 0.05, model=net, damping=1e-2, compile=c),
    # amortised refits: a compiled step once read the refit counter on the host and then mixed two blocks'
    # tensors at the first refit after the first (every=2: step 2)
    "Shampoo (every 2)": lambda net, c: Shampoo(
        net.parameters(), 0.05, epsilon=1e-4, update_every=2, compile=c
    ),
    "APO": lambda net, c: APO(net.parameters(), 0.05, model=net, loss_fn=squared_error, compile=c),
    "Preconditioned (Fisher, LieGroup, clip)": lambda net, c: Preconditioned(
        net.parameters(),
        0.05,
        structure=pa.families.dense_gram(),
        objective=pa.objectives.Fisher(),
        fitter=pa.fitters.LieGroup(),
        clip=0.5,
        compile=c,
    ),
}


def run(preset, compile, steps=4):
    """`steps` steps of a preset on a small MLP; the parameters and preconditioners (dense) before and
    after."""
    net = model()
    opt = PRESETS[preset](net, compile)

    def state():
        params = [p.detach().clone() for p in net.parameters()]
        return params + [P.to_dense().clone() for _, P in opt.preconditioners()]

    start = state()
    for _ in range(steps):
        if preset == "PSGD":  # PSGD's Newton criterion differentiates the closure's loss itself
            opt.step(lambda: squared_error(net(X), Y))
            continue
        opt.zero_grad()
        squared_error(net(X), Y).backward()
        opt.step(batch=(X, Y), fsd_batch=X_NEXT) if preset == "APO" else opt.step()
    return start, state(), opt


def assert_compiled_equals_eager(preset, compile):
    start, eager, _ = run(preset, False)
    _, compiled, _ = run(preset, compile)
    for c, e, s in zip(compiled, eager, start, strict=True):
        moved = (e - s).abs().max()
        assert moved > 1e-8, "the eager run did not move this tensor"
        assert (c - e).abs().max() <= 1e-4 * moved, (preset, (c - e).abs().max(), moved)


DEFAULT_RUN = ("KFAC", "Shampoo (every 2)", "Preconditioned (Fisher, LieGroup, clip)")
"""The presets whose aot_eager comparison the default run keeps (a hook-based fit, the amortised refit's
regression, the generic engine); the others take 9 to 15 s each and run with the slow tests."""


@pytest.mark.parametrize(
    "preset", [p if p in DEFAULT_RUN else pytest.param(p, marks=pytest.mark.slow) for p in PRESETS]
)
def test_compiled_step_equals_eager_dynamo(preset):
    assert_compiled_equals_eager(preset, {"backend": "aot_eager"})


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_compiled_step_equals_eager_inductor(preset):
    """``compile=True`` as a user writes it: Inductor, its C++ kernels (a C++ compiler is needed)."""
    assert_compiled_equals_eager(preset, True)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_step_skips_a_nan_gradient_like_eager(backend):
    """A NaN gradient: the compiled step leaves parameters, preconditioner and the base rule's state
    as they were and counts the skip, as the eager step does (decided on the device in both)."""
    results = []
    for compile in (False, {"backend": backend}):
        torch._dynamo.reset()
        net = model()
        opt = FOP(net.parameters(), 0.1, momentum=0.9, hyper_lr=1e-2, compile=compile)
        for step in range(3):
            opt.zero_grad()
            squared_error(net(X), Y).backward()
            if step == 1:
                net[0].weight.grad[0, 0] = math.nan
            before = [p.detach().clone() for p in net.parameters()]
            with pytest.warns(pa.optim.SkippedStepWarning) if step == 1 else warnings.catch_warnings():
                if step != 1:
                    warnings.simplefilter("error", pa.optim.SkippedStepWarning)
                opt.step()
            if step == 1:
                assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
        results.append(([p.detach().clone() for p in net.parameters()], opt.skip_counts()))
    (eager, eager_counts), (compiled, compiled_counts) = results
    assert compiled_counts == eager_counts and eager_counts[0]["skipped"] == 1
    for c, e in zip(compiled, eager):  # FOP's Adam on M: its compiled bias corrections (module docstring)
        torch.testing.assert_close(c, e, rtol=1e-4, atol=0)


def test_compile_argument_is_checked():
    net = model()
    with pytest.raises(TypeError, match="'compile' must be True, False or a dict"):
        FOP(net.parameters(), 0.1, compile="yes")
    with pytest.raises(ValueError, match="nonfinite='raise' decides on the host"):
        FOP(net.parameters(), 0.1, compile=True, nonfinite="raise")
    with pytest.raises(ValueError, match="cannot choose 'compile'"):
        FOP([{"params": list(net.parameters()), "compile": True}], 0.1)


def test_compile_options_switch_inductors_pattern_matcher_off():
    """The options handed to torch.compile: Inductor's pattern matcher off (the alpha bug above), a
    `mode` spelled out as its options (torch.compile takes one or the other); other backends as given."""
    from precondalg.optim.preconditioned import _compile_options

    assert _compile_options(True, "skip") == {"options": {"pattern_matcher": False}}
    assert _compile_options({"mode": "max-autotune"}, "skip")["options"]["max_autotune"] is True
    assert _compile_options({"options": {"pattern_matcher": True}}, "skip") == {
        "options": {"pattern_matcher": True}
    }
    assert _compile_options({"backend": "aot_eager"}, "skip") == {"backend": "aot_eager"}
    assert _compile_options(False, "raise") is None


@pytest.mark.slow  # 17 s
def test_a_compiled_optimizer_is_copied_and_pickled_and_resumes():
    """deepcopy and pickling leave the compiled function behind (it is built again on the copy's first
    step); the copy continues exactly as the original."""
    net = model()
    opt = FOP(net.parameters(), 0.1, momentum=0.9, hyper_lr=1e-2, compile={"backend": "aot_eager"})
    for _ in range(2):
        opt.zero_grad()
        squared_error(net(X), Y).backward()
        opt.step()
    assert opt._compiled is not None
    twin_net = copy.deepcopy(net)
    twin = FOP(twin_net.parameters(), 0.1, momentum=0.9, hyper_lr=1e-2, compile={"backend": "aot_eager"})
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    twin.load_state_dict(torch.load(buffer, weights_only=False))
    clone = copy.deepcopy(opt)
    assert clone._compiled is None
    for o, n in ((opt, net), (twin, twin_net)):
        o.zero_grad()
        squared_error(n(X), Y).backward()
        o.step()
    for a, b in zip(net.parameters(), twin_net.parameters()):
        assert torch.equal(a, b)
