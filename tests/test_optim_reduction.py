"""Reduction to torch.optim (QUALITY.md §2): at the identity initialisation, with a meta learning rate of
0, every method is its base optimizer step for step, to float64 round-off, over 20 steps."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from optim_helpers import FROZEN, assert_close, clone_params, ema_sgd, make_model, run

from precondalg import families
from precondalg.fitters import TorchOptimizer
from precondalg.optim import FOP, HD, Preconditioned

STEPS = 20
LR = 0.05


# base name -> (Preconditioned's base-rule kwargs, the torch.optim reference)
BASES: dict[str, tuple[dict[str, Any], Callable[[Any], torch.optim.Optimizer]]] = {
    "sgd": ({"base": "sgd"}, lambda ps: torch.optim.SGD(ps, lr=LR)),
    "sgd-wd": ({"base": "sgd", "weight_decay": 0.1}, lambda ps: torch.optim.SGD(ps, lr=LR, weight_decay=0.1)),
    "momentum-dampening": (
        {"base": "momentum", "momentum": 0.9, "dampening": 0.3},
        lambda ps: torch.optim.SGD(ps, lr=LR, momentum=0.9, dampening=0.3),
    ),
    "momentum-nesterov-wd": (
        {"base": "momentum", "momentum": 0.8, "nesterov": True, "weight_decay": 0.05},
        lambda ps: torch.optim.SGD(ps, lr=LR, momentum=0.8, nesterov=True, weight_decay=0.05),
    ),
    "ema": ({"base": "ema", "momentum": 0.7}, lambda ps: ema_sgd(ps, LR, 0.7)),
    "adam-wd": (
        {"base": "adam", "betas": (0.8, 0.95), "eps": 1e-6, "weight_decay": 0.02},
        lambda ps: torch.optim.Adam(ps, lr=LR, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.02),
    ),
    "rmsprop": (
        {"base": "rmsprop", "alpha": 0.9, "eps": 1e-6},
        lambda ps: torch.optim.RMSprop(ps, lr=LR, alpha=0.9, eps=1e-6),
    ),
}


def compare(
    kind: str, build: Callable[[Any], torch.optim.Optimizer], reference: Callable[[Any], Any]
) -> None:
    """Run `build` and `reference` on the same model and data for STEPS steps; assert round-off equality."""
    ours, theirs = make_model(kind), make_model(kind)
    run(ours, build(ours.parameters()), kind, STEPS)
    run(theirs, reference(theirs.parameters()), kind, STEPS)
    moved = max(
        (a - b).abs().max().item() for a, b in zip(theirs.parameters(), make_model(kind).parameters())
    )
    assert moved > 1e-3, "the reference did not move: the comparison would be vacuous"
    assert_close(clone_params(theirs.parameters()), clone_params(ours.parameters()))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("position", ["gradient", "direction"])
@pytest.mark.parametrize("base", sorted(BASES))
def test_generic_at_identity_is_torch(kind, position, base):
    kwargs, reference = BASES[base]
    compare(
        kind,
        lambda ps: Preconditioned(
            ps, LR, structure=families.dense_gram(), fitter=FROZEN, position=position, **kwargs
        ),
        reference,
    )


def test_generic_with_a_zero_lr_adam_fitter_is_torch():
    """The default fitter type (Adam) with lr 0 never moves φ either."""
    compare(
        "cnn",
        lambda ps: Preconditioned(
            ps, LR, structure=families.dense_gram(), fitter=TorchOptimizer(torch.optim.Adam, lr=0.0)
        ),
        lambda ps: torch.optim.SGD(ps, lr=LR),
    )


FOP_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "full": ("mlp", {}),
    "low-rank": ("mlp", {"rank": 2, "low_rank_std": 0.0}),
    "normalized": ("mlp", {"normalized": True}),
    "spatial-conv": ("cnn", {}),
    "spatial-conv-low-rank": ("cnn", {"rank": 3, "low_rank_std": 0.0}),
}


@pytest.mark.parametrize("variant", sorted(FOP_VARIANTS))
def test_fop_at_identity_is_sgd_momentum(variant):
    kind, kwargs = FOP_VARIANTS[variant]
    compare(
        kind,
        lambda ps: FOP(ps, LR, hyper_lr=0.0, **kwargs),
        lambda ps: torch.optim.SGD(ps, lr=LR, momentum=0.9),
    )


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_fop_without_momentum_is_sgd(kind):
    compare(kind, lambda ps: FOP(ps, LR, momentum=0.0, hyper_lr=0.0), lambda ps: torch.optim.SGD(ps, lr=LR))


def test_fop_nesterov_weight_decay_is_torch():
    compare(
        "cnn",
        lambda ps: FOP(ps, LR, momentum=0.5, hyper_lr=0.0, nesterov=True, weight_decay=0.1),
        lambda ps: torch.optim.SGD(ps, lr=LR, momentum=0.5, nesterov=True, weight_decay=0.1),
    )


HD_BASES: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=LR),
    "momentum": lambda ps: torch.optim.SGD(ps, lr=LR, momentum=0.9),
    "adam": lambda ps: torch.optim.Adam(ps, lr=LR),
}


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("base", sorted(HD_BASES))
@pytest.mark.parametrize("granularity", ["global", "layer", "parameter"])
def test_hd_with_zero_hyper_lr_is_torch(kind, granularity, base):
    compare(kind, lambda ps: HD(ps, LR, 0.0, granularity, base), HD_BASES[base])
