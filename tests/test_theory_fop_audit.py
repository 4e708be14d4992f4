"""The FOP checks run the library: a bug injected into precondalg itself (not a mutant keyword of the
check) makes the check fail, and FOP-8 compares with torch.optim bit for bit.

Each bug is patched into the library object the check reaches through `Preconditioned` or the `FOP`
preset, so a check that tested a copy of the formula written inside it would still pass here.  FOP-3
also runs on one drawn layout at a time (THEORY.md §6; the sizes and ranks are drawn from the seed).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import seeds
from theory_helpers import assert_discriminates

import precondalg.families as families
import precondalg.optim.fop as fop_preset
from precondalg import Dense
from precondalg.optim import Preconditioned
from precondalg.optim import preconditioned as engine
from theory_checks import REGISTRY
from theory_checks.fop import LAYOUTS
from theory_checks.runner import _call


def _outcome(id: str):
    return _call(REGISTRY[id], {})


def _unsymmetrised_gram_vjp(phi, u, c):
    """dense_gram's VJP without its symmetrisation: 2M u cᵀ instead of M(u cᵀ + c uᵀ)."""
    return Dense(2 * phi.A @ u @ c.mT)


@pytest.mark.parametrize("id", ["FOP-3", "FOP-4"])
def test_an_unsymmetrised_library_vjp_fails_the_hypergradient_checks(monkeypatch, id):
    monkeypatch.setattr(families, "_gram_vjp", _unsymmetrised_gram_vjp)
    out = _outcome(id)
    assert not out.passed
    assert any("hypergradient" in p.name and not p.passed for p in out.parts)


def _preset_with(monkeypatch, **forced):
    """Make the FOP preset build its `Preconditioned` with these arguments forced."""

    def build(*args, **kwargs):
        return Preconditioned(*args, **{**kwargs, **forced})

    monkeypatch.setattr(fop_preset, "Preconditioned", build)


def test_p_after_the_momentum_rule_in_the_preset_fails_fop7(monkeypatch):
    _preset_with(monkeypatch, position="direction")
    assert not _outcome("FOP-7").passed


def test_an_sgd_fitter_in_the_preset_fails_fop7(monkeypatch):
    from precondalg.fitters import TorchOptimizer

    _preset_with(monkeypatch, fitter=TorchOptimizer(torch.optim.SGD, lr=1e-2))
    assert not _outcome("FOP-7").passed


_PROPOSALS = engine.Preconditioned._proposals


def _rounded_twice(self, plans, ok, directions, factor=None):
    """`Preconditioned._proposals` with θ − lr·s rounded twice (lr·s, then the difference), instead of
    once as torch.optim's ``p.add_(s, alpha=-lr)``."""
    out = _PROPOSALS(self, plans, ok, directions, factor)

    def twice(plan, steps):
        return [engine._cast(p, s.dtype) - plan.group["lr"] * s for p, s in zip(plan.block.params, steps)]

    return [
        (states, twice(plan, steps), fine)
        for plan, (states, _, fine), (_, steps) in zip(plans, out, directions)
    ]


def test_fop8_is_bit_for_bit_and_fails_when_the_step_is_rounded_twice(monkeypatch):
    """FOP-8 compares with torch.optim.SGD by torch.equal: it passes with the engine's θ − lr·s, rounded
    once as torch's fused p + (−lr)·s, and fails when it is rounded twice (the last bit differs)."""
    out = _outcome("FOP-8")
    assert out.passed, [(p.name, p.measured) for p in out.parts if not p.passed]
    monkeypatch.setattr(engine.Preconditioned, "_proposals", _rounded_twice)
    assert not _outcome("FOP-8").passed


@settings(max_examples=8, deadline=None)
@given(seed=seeds(), layout=st.sampled_from(LAYOUTS))
def test_fop3_passes_and_its_mutants_fail_on_one_drawn_layout(seed, layout):
    """Each mutant is caught on every layout alone (the Mᵀ(…) mutant on the square layouts it sets)."""
    assert_discriminates(REGISTRY["FOP-3"], seed=seed, layouts=(layout,))
