"""dtypes, devices and determinism (QUALITY.md §2): the step keeps each parameter's dtype; the
preconditioner is float32 for bfloat16/float16 parameters and the parameter's dtype otherwise (the
`precondalg.optim.preconditioned` module docstring); CUDA repeats the reductions when a GPU is present;
a seed fixes every random draw."""

from __future__ import annotations

import pytest
import torch
import torch.utils._pytree as pytree
from optim_helpers import (
    CONFIGS,
    FROZEN,
    assert_close,
    assert_equal,
    assert_trees_equal,
    clone_params,
    make_model,
    preconditioner_leaves,
    run,
    snapshot,
)

from precondalg import families
from precondalg.optim import FOP, HD, PSGD, Preconditioned

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
EXPECTED_PRECONDITIONER = {
    torch.float32: torch.float32,
    torch.float64: torch.float64,
    torch.bfloat16: torch.float32,
    torch.float16: torch.float32,
}
DTYPE_CONFIGS = [
    "generic-adam-wd",
    "generic-lowrank-concatenated",
    "fop-full",
    "fop-conv",
    "fop-lowrank",
    "hd-parameter-adam",
    "hd-global-momentum",
    "psgd-kron",
    "psgd-scan-cnn",
    "psgd-lra",
    "lodo-full",
    "lodo-residual",
    "lodo-diagonal",
    "shampoo",
    "shampoo-ema-adam-graft-cnn",
    "kfac-momentum-cnn",
    "apo-lr",
    "apo-precond-cnn",
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", DTYPE_CONFIGS)
def test_dtypes_are_kept(name, dtype):
    kind, build = CONFIGS[name]
    model = make_model(kind, dtype)
    opt = build(model.parameters(), 0)
    run(model, opt, kind, 4)
    assert all(p.dtype == dtype for p in model.parameters())
    want = EXPECTED_PRECONDITIONER[dtype]
    blocks = opt.preconditioners()
    assert blocks
    for _, P in blocks:
        for leaf in pytree.tree_leaves(P):
            assert leaf.dtype == want, f"{type(P).__name__} leaf is {leaf.dtype}, expected {want}"
    for p in model.parameters():
        pre = opt.state[p].get("preconditioner")
        if pre is not None:
            assert all(leaf.dtype == want for leaf in pre["phi"])
            if opt._objective.reads_cache:  # the hypergradient's u; the PSGD criteria keep no cache
                assert pre["cache"]["u"].dtype == want
            else:
                assert pre["cache"] == {}
            assert opt.state[p]["skipped"].dtype == torch.int64
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_float32_identity_is_torch_sgd():
    ours, theirs = make_model("cnn", torch.float32), make_model("cnn", torch.float32)
    run(
        ours,
        Preconditioned(
            ours.parameters(),
            0.05,
            structure=families.dense_gram(),
            fitter=FROZEN,
            base="momentum",
            momentum=0.9,
        ),
        "cnn",
        20,
    )
    run(theirs, torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9), "cnn", 20)
    assert_close(clone_params(theirs.parameters()), clone_params(ours.parameters()), 1e-5)


def test_bfloat16_step_matches_torch_sgd_to_one_rounding():
    """One bfloat16 step at the identity: torch rounds θ − lr·g once, we round lr·g and then θ − lr·g;
    the two differ by at most one bfloat16 unit in the last place of θ."""
    ours, theirs = make_model("mlp", torch.bfloat16), make_model("mlp", torch.bfloat16)
    run(
        ours,
        Preconditioned(ours.parameters(), 0.05, structure=families.dense_gram(), fitter=FROZEN),
        "mlp",
        1,
    )
    run(theirs, torch.optim.SGD(theirs.parameters(), lr=0.05), "mlp", 1)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        ulp = torch.finfo(torch.bfloat16).eps * b.detach().float().abs().clamp(min=2**-126)
        assert ((a.detach().float() - b.detach().float()).abs() <= ulp).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available: no GPU on this machine")
@pytest.mark.parametrize("which", ["generic-adam", "fop-conv", "hd-global-adam"])
def test_cuda_reduction_and_devices(which):
    device = torch.device("cuda")
    build, reference = {
        "generic-adam": (
            lambda ps: Preconditioned(ps, 0.05, structure=families.dense_gram(), fitter=FROZEN, base="adam"),
            lambda ps: torch.optim.Adam(ps, lr=0.05),
        ),
        "fop-conv": (
            lambda ps: FOP(ps, 0.05, hyper_lr=0.0),
            lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
        ),
        "hd-global-adam": (
            lambda ps: HD(ps, 0.05, 0.0, "global", "adam"),
            lambda ps: torch.optim.Adam(ps, lr=0.05),
        ),
    }[which]
    kind = "cnn" if which == "fop-conv" else "mlp"
    ours, theirs = make_model(kind).to(device), make_model(kind).to(device)
    opt = build(ours.parameters())
    _run_on(ours, opt, kind, device)
    _run_on(theirs, reference(theirs.parameters()), kind, device)
    assert_close(clone_params(theirs.parameters()), clone_params(ours.parameters()))
    assert all(leaf.device.type == "cuda" for leaf in preconditioner_leaves(opt))


def _run_on(model: torch.nn.Module, opt: torch.optim.Optimizer, kind: str, device: torch.device) -> None:
    from optim_helpers import batch

    for t in range(20):
        opt.zero_grad()
        x, y = batch(kind, t)
        ((model(x.to(device)) - y.to(device)) ** 2).mean().backward()
        opt.step()


# ----- determinism -----
SEEDED = {
    "fop-lowrank": lambda seed, ps: FOP(ps, 0.05, hyper_lr=1e-2, rank=2, low_rank_std=0.1, seed=seed),
    "generic-lowrank": lambda seed, ps: Preconditioned(
        ps, 0.05, structure=families.low_rank_gram(3, 0.5), base="adam", seed=seed
    ),
    # v, the update draws and LRA's random U, V all come from the optimizer's generator
    "psgd-lra": lambda seed, ps: PSGD(
        ps, 0.05, preconditioner="lra", rank=2, criterion="fisher", update_probability=0.5, seed=seed
    ),
}


@pytest.mark.parametrize("name", sorted(SEEDED))
def test_same_seed_same_run(name):
    outcomes = []
    for global_seed in (1, 2):  # the global RNG must not matter: φ draws from the optimizer's generator
        model = make_model()
        torch.manual_seed(global_seed)
        opt = SEEDED[name](7, model.parameters())
        init = preconditioner_leaves(opt)
        run(model, opt, "mlp", 5)
        outcomes.append((init, clone_params(model.parameters()), snapshot(opt)))
    (init_a, params_a, state_a), (init_b, params_b, state_b) = outcomes
    assert_equal(init_a, init_b)
    assert_equal(params_a, params_b)
    assert_trees_equal(state_a, state_b)


@pytest.mark.parametrize("name", sorted(SEEDED))
def test_different_seeds_differ_for_low_rank(name):
    a = preconditioner_leaves(SEEDED[name](7, make_model().parameters()))
    b = preconditioner_leaves(SEEDED[name](8, make_model().parameters()))
    random = [(x, y) for x, y in zip(a, b) if x.ndim == 2]  # the low-rank factors (LRA's d starts at 1)
    assert len(a) == len(b) and random and all(not torch.equal(x, y) for x, y in random)
