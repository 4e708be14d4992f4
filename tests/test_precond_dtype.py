"""``precond_dtype=torch.bfloat16``: φ (and a torch meta-optimizer's moments) stored in bfloat16 between
steps, every step's arithmetic in float32.

Pinned here:
(a) the rounding: stochastic rounding gives one of the two bfloat16 neighbours, the upper one with
    probability (x − lower)/spacing (a binomial count, 6σ), and never a non-finite value from a finite
    one; rounding to nearest is torch's;
(b) what is stored narrow, for every preset: φ's leaves with at least one dimension, a torch
    meta-optimizer's moments on them, never `ClosedForm`'s statistics, PSGD's normalisers, 0-d state or
    step counts;
(c) the arithmetic is float32's: a step of the bfloat16 optimizer moves the parameters bit for bit as the
    float32 optimizer holding the same (bfloat16-valued) φ and state, and its new φ is one of the two
    bfloat16 neighbours of the float32 optimizer's new φ;
(d) a step that does not fit leaves the stored bits untouched; under "nearest" a meta-step below half
    the bfloat16 spacing is lost, under "stochastic" it is not;
(e) a run resumes bit for bit (the rounding's seeds come from the checkpointed generator), compiled steps
    equal eager ones, and the arguments are checked.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from precondalg.optim import APO, FOP, HD, KFAC, LODO, PSGD, Shampoo, every
from precondalg.optim._storage import round_to

bf16, f32 = torch.bfloat16, torch.float32
_g = torch.Generator().manual_seed(5)
X, Y, X_NEXT = (torch.randn(16, k, generator=_g) for k in (5, 3, 5))


def squared_error(out, y):
    return ((out - y) ** 2).mean()


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))


PRESETS = {
    "FOP": lambda net, **k: FOP(net.parameters(), 0.1, hyper_lr=1e-2, **k),
    "HD": lambda net, **k: HD(net.parameters(), 0.05, 1e-3, **k),
    "PSGD": lambda net, **k: PSGD(net.parameters(), 0.05, **k),
    "LODO": lambda net, **k: LODO(net.parameters(), 0.05, **k),
    "Shampoo": lambda net, **k: Shampoo(net.parameters(), 0.05, epsilon=1e-4, **k),
    "KFAC": lambda net, **k: KFAC(net.parameters(), 0.05, model=net, damping=1e-2, **k),
    "APO": lambda net, **k: APO(net.parameters(), 0.05, model=net, loss_fn=squared_error, **k),
}


def take_step(preset, net, opt):
    if preset == "PSGD":
        return opt.step(lambda: squared_error(net(X), Y))
    opt.zero_grad()
    squared_error(net(X), Y).backward()
    return opt.step(batch=(X, Y), fsd_batch=X_NEXT) if preset == "APO" else opt.step()


def trained_and_loaded(preset, options):
    """A model and its bfloat16 optimizer after two steps, and a copy of the model with an optimizer
    made with `options` into which the first one's state dict was loaded."""
    net = model()
    opt = PRESETS[preset](net, precond_dtype=bf16)
    for _ in range(2):
        take_step(preset, net, opt)
    twin = copy.deepcopy(net)
    loaded = PRESETS[preset](twin, **options)
    loaded.load_state_dict(copy.deepcopy(opt.state_dict()))
    return net, opt, twin, loaded


def stored(opt):
    """Per block: φ's leaves and the fitter's state tensors."""
    return [
        (opt.state[block.params[0]]["preconditioner"]["phi"], block.fitter.tensors())
        for block in opt._all_blocks()
    ]


# ----- (a) the rounding -----
def test_stochastic_rounding_is_unbiased_between_the_two_neighbours():
    lower = torch.tensor(1.0, dtype=bf16)
    spacing = 2.0**-7  # bfloat16's spacing in [1, 2)
    generator = torch.Generator().manual_seed(0)
    n = 20000
    for frac in (0.1, 0.5, 0.9):
        x = torch.full((n,), 1.0 + frac * spacing, dtype=f32)
        rounded = round_to(x, bf16, generator)
        assert rounded.dtype == bf16
        up = rounded.float() == 1.0 + spacing
        assert bool((up | (rounded == lower)).all()), "a value other than the two neighbours"
        sigma = math.sqrt(n * frac * (1 - frac))
        assert abs(int(up.sum()) - n * frac) < 6 * sigma, (frac, int(up.sum()))
    negative = round_to(torch.full((n,), -(1.0 + 0.25 * spacing)), bf16, generator).float()
    assert abs(float((negative == -(1.0 + spacing)).float().mean()) - 0.25) < 0.02


def test_rounding_keeps_finite_values_finite_and_passes_nan_and_inf():
    big = torch.finfo(bf16).max
    x = torch.tensor([big, -big, float("inf"), float("-inf"), float("nan"), 0.0, -0.0, 3.0])
    out = round_to(x, bf16, torch.Generator().manual_seed(1)).float()
    assert torch.isfinite(out[:2]).all() and torch.equal(out[:2], x[:2])
    assert out[2] == math.inf and out[3] == -math.inf and out[4].isnan()
    assert torch.equal(out[5:], x[5:])
    values = torch.randn(1000, generator=torch.Generator().manual_seed(2))
    assert torch.equal(round_to(values, bf16), values.to(bf16))


# ----- (b) what is stored narrow -----
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_stores_phi_narrow_and_statistics_wide(preset):
    net = model()
    opt = PRESETS[preset](net, precond_dtype=bf16)
    for _ in range(3):
        take_step(preset, net, opt)
    torch_optimizer = preset in ("FOP", "HD", "LODO", "APO")  # Adam/SGD/RMSprop on φ: their moments
    for leaves, state in stored(opt):
        assert all(leaf.dtype == (bf16 if leaf.ndim else f32) for leaf in leaves), [l.dtype for l in leaves]
        for t in state:
            if not t.is_floating_point() or t.ndim == 0 or not torch_optimizer:
                assert t.dtype in (f32, torch.int64), (preset, t.shape, t.dtype)
            else:
                assert t.dtype == bf16, (preset, t.shape, t.dtype)
    assert all(p.dtype == f32 for p in net.parameters())
    assert all(t.dtype == f32 for p in net.parameters() for t in opt.state[p].values() if torch.is_tensor(t)
               and t.is_floating_point())


def test_a_zero_dimensional_leaf_keeps_its_moments_wide():
    """HD's one rate per layer is a 0-d leaf: it and its meta-optimizer's moments stay in float32."""
    net = model()
    opt = HD(net.parameters(), 0.05, 1e-3, granularity="layer", hyper_optimizer="adam", precond_dtype=bf16)
    for _ in range(2):
        take_step("HD", net, opt)
    for leaves, state in stored(opt):
        assert [leaf.ndim for leaf in leaves] == [0] and leaves[0].dtype == f32
        assert state and all(t.dtype == f32 for t in state if t.is_floating_point())


# ----- (c) the arithmetic is float32's -----
@pytest.mark.parametrize("preset", ["FOP", "PSGD", "Shampoo", "LODO"])
def test_a_narrow_step_is_the_float32_step_from_the_same_values(preset):
    net, narrow, twin, wide = trained_and_loaded(preset, {})  # the bfloat16 values, widened exactly
    take_step(preset, net, narrow)
    take_step(preset, twin, wide)
    for p, q in zip(net.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q), (preset, (p - q).abs().max())
    for (narrow_leaves, _), (wide_leaves, _) in zip(stored(narrow), stored(wide), strict=True):
        for n, w in zip(narrow_leaves, wide_leaves, strict=True):
            if n.ndim == 0:
                assert torch.equal(n, w)
                continue
            bits = w.contiguous().view(torch.int32) & -(1 << 16)  # w's magnitude truncated to bfloat16
            truncated, above = bits.view(f32), (bits + (1 << 16)).view(f32)
            assert bool(((n.float() == truncated) | (n.float() == above)).all()), preset


# ----- (d) untouched when not fitting; nearest loses small meta-steps -----
def test_a_step_that_does_not_fit_leaves_the_stored_bits():
    net = model()
    opt = FOP(net.parameters(), 0.1, hyper_lr=1e-2, precond_dtype=bf16, update_probability=every(2))
    take_step("FOP", net, opt)  # fits
    before = [[t.clone() for t in leaves] for leaves, _ in stored(opt)]
    draws = opt._rounding.get_state()
    moments = [[t.clone() for t in state] for _, state in stored(opt)]
    take_step("FOP", net, opt)  # does not fit
    for (leaves, state), old, old_state in zip(stored(opt), before, moments, strict=True):
        assert all(torch.equal(a, b) and a.dtype == bf16 for a, b in zip(leaves, old, strict=True))
        assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(state, old_state, strict=True))
    assert torch.equal(draws, opt._rounding.get_state())  # converted back exactly, nothing drawn


def test_closed_form_roots_are_rounded_to_nearest():
    """Shampoo's roots are set anew at each refit (no small steps to keep): rounded to nearest, they
    stay symmetric and match the float32 run's roots rounded; between refits they stay as stored."""
    runs = {}
    for options in ({}, {"precond_dtype": bf16}):
        net = model()
        opt = Shampoo(net.parameters(), 0.05, epsilon=1e-4, update_every=3, **options)
        history = []
        for _ in range(4):
            take_step("Shampoo", net, opt)
            history.append([t.clone() for leaves, _ in stored(opt) for t in leaves if t.ndim])
        runs[bool(options)] = history
    narrow = runs[True]
    assert [all(map(torch.equal, narrow[i], narrow[i + 1])) for i in range(3)] == [True, True, False]
    for root in narrow[0]:
        assert torch.equal(root, root.mT)
    for root, wide in zip(narrow[0], runs[False][0], strict=True):  # the first step: the same statistics
        assert torch.equal(root, wide.to(bf16))


def test_stochastic_rounding_changes_no_other_draw():
    """The rounding has a generator of its own: the fit schedule (update_probability's draws) and
    PSGD's v are those of the run without the option, and its state is in the checkpoint."""
    def fits(**options):
        net = model()
        opt = FOP(net.parameters(), 0.1, hyper_lr=1e-2, update_probability=0.5, **options)
        counts = []
        for _ in range(12):
            take_step("FOP", net, opt)
            state = opt.state_dict()["state"][0]["preconditioner"]["fitter"]["state"]
            counts.append(int(state[0]["step"]) if state else 0)
        return counts, opt

    plain, _ = fits()
    narrow, opt = fits(precond_dtype=bf16)
    assert narrow == plain and plain[-1] not in (0, 12)
    def own(opt):
        return opt.state_dict()["param_groups"][0]["precondalg"]

    assert "rounding_generator" in own(opt) and "rounding_generator" not in own(fits()[1])
    draws = []
    for options in ({}, {"precond_dtype": bf16}):
        net = model()
        opt = PSGD(net.parameters(), 0.05, **options)
        take_step("PSGD", net, opt)
        take_step("PSGD", net, opt)
        draws.append(opt._generator.get_state())
    assert torch.equal(*draws)


def test_nearest_loses_meta_steps_below_half_the_spacing_stochastic_keeps_them():
    moved = {}
    for rounding in ("nearest", "stochastic"):
        net = model()
        opt = FOP(net.parameters(), 0.1, hyper_lr=1e-4, precond_dtype=bf16, precond_rounding=rounding)
        start = [leaves[0].clone() for leaves, _ in stored(opt)]  # M₀ = I
        for _ in range(40):  # each entry rounds away from 1 with probability about 1e-4/2⁻⁸ per step
            take_step("FOP", net, opt)
        moved[rounding] = sum(  # M's unit diagonal: Adam's steps of 1e-4 < 2⁻⁹, half the spacing below 1
            int(((leaves[0] != s) & (s == 1)).sum())
            for (leaves, _), s in zip(stored(opt), start, strict=True)
        )
    assert moved["nearest"] == 0
    assert moved["stochastic"] > 0


# ----- (e) resume, compile, arguments -----
@pytest.mark.parametrize("preset", ["FOP", "PSGD", "KFAC"])
def test_resume_is_bit_exact(preset):
    net, opt, twin, resumed = trained_and_loaded(preset, {"precond_dtype": bf16})
    for _ in range(3):
        take_step(preset, net, opt)
        take_step(preset, twin, resumed)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), twin.parameters(), strict=True))
    for (a, _), (b, _) in zip(stored(opt), stored(resumed), strict=True):
        assert all(torch.equal(x, y) and x.dtype == y.dtype for x, y in zip(a, b, strict=True))


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("preset", [pytest.param("FOP", marks=pytest.mark.slow), "PSGD"])  # 10 s each
def test_compiled_narrow_step_equals_eager(preset):
    runs = []
    for compile in (False, {"backend": "aot_eager"}):
        net = model()
        opt = PRESETS[preset](net, precond_dtype=bf16, compile=compile)
        for _ in range(3):
            take_step(preset, net, opt)
        runs.append(([p.detach().clone() for p in net.parameters()], stored(opt)))
    (eager, eager_phi), (compiled, compiled_phi) = runs
    for c, e in zip(compiled, eager, strict=True):
        assert (c - e).abs().max() <= 1e-5, (preset, (c - e).abs().max())
    for (a, _), (b, _) in zip(compiled_phi, eager_phi, strict=True):
        assert all(x.dtype == y.dtype for x, y in zip(a, b, strict=True))


def test_arguments_are_checked():
    net = model()
    with pytest.raises(ValueError, match="'precond_dtype' must be None"):
        FOP(net.parameters(), 0.1, precond_dtype=torch.float16)
    with pytest.raises(ValueError, match="'precond_rounding' must be one of"):
        FOP(net.parameters(), 0.1, precond_dtype=bf16, precond_rounding="down")
    with pytest.raises(ValueError, match="precond_rounding='nearest' rounds the narrow storage"):
        FOP(net.parameters(), 0.1, precond_rounding="nearest")
    with pytest.raises(ValueError, match="precond_rounding='stochastic' rounds the narrow storage"):
        LODO(net.parameters(), 0.1, precond_rounding="stochastic")
    with pytest.raises(TypeError, match="'precond_dtype' must be None or a torch.dtype"):
        PSGD(net.parameters(), 0.1, precond_dtype="bfloat16")
    with pytest.raises(ValueError, match="cannot choose 'precond_dtype'"):
        FOP([{"params": list(net.parameters()), "precond_dtype": bf16}], 0.1)
