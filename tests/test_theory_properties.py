"""Every registered theory check on drawn seeds: the real run PASSES and every mutant FAILS (issue #11,
deliverable 3; THEORY.md §1.3 mutation self-test, §1.4 shared strategies, §6 budgets).

The report runs each check once, at its default seed.  Here `hypothesis` draws the seed (`seeds()`) of
every check that takes one and runs the check and each of its mutants with it, the way the runner does
(`assert_discriminates`): a check that holds only on the instances of its default seed, or a mutant caught
only there, fails here.  The "fast" tier runs by default; the "dynamics" tier (training runs, their
medians) is marked slow.  Checks whose instances are a fixed specification are listed in `FIXED`, with
the reason, and a test keeps that list equal to the checks without a ``seed`` keyword, so that a new
check cannot escape the draws silently.

One seed per check and run (`EXAMPLES`), so the simplest example, which hypothesis always tries
first (seed 0), is set aside: it would otherwise be the only seed ever tested.  No shrinking: a seed has
no structure to shrink towards, and each re-run costs a whole check with its mutants; a failure reports
the drawn seed as it is (the ``ci`` profile derandomizes the draws).
"""

from __future__ import annotations

import inspect
import os

import pytest
from conftest import profile_name
from hypothesis import Phase, assume, given, settings
from strategies import seeds
from theory_helpers import assert_discriminates

from theory_checks import REGISTRY, Check

FIXED = {
    "LODO-11": "fixed specification (THEORY.md §6): the noisy-bowl reference values of the paper's §5.1 "
    "task (n = 100, H = U diag(geomspace(1e-3, 1, 100)) Uᵀ, σ of the authors' code) over two fixed runs of "
    "2·10⁴ steps, whose late means are compared with closed forms at 3%",
}
"""Checks run only at their fixed instances (the report's run, `tests/test_theory_checks.py`), and why."""
EXAMPLES = 1
"""Drawn seeds per check and run (besides the simplest example, set aside).  One drawn seed of every fast
check, with its mutants, costs about 75 s of one core (2 would cost 150 s); each run of the default
profile draws new ones, the ci profile fixed ones."""
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)


def _checks() -> list:
    """The registered checks that take a ``seed`` keyword, in report order, as pytest parameters named by
    id; those of the "dynamics" tier (training runs) are marked slow."""
    return [
        pytest.param(e.id, id=e.id, marks=[pytest.mark.slow] if e.tier == "dynamics" else [])
        for e in REGISTRY
        if isinstance(e, Check) and _takes_seed(e)
    ]


def _takes_seed(chk: Check) -> bool:
    return "seed" in inspect.signature(chk.fn).parameters


def test_the_fixed_checks_are_exactly_those_without_a_seed():
    without = {e.id for e in REGISTRY if isinstance(e, Check) and not _takes_seed(e)}
    assert without == set(FIXED), (
        f"checks without a seed keyword: {sorted(without)}; listed as fixed: {sorted(FIXED)}"
    )
    tiers = {e.tier for e in REGISTRY if isinstance(e, Check) and _takes_seed(e)}
    assert tiers == {"fast", "dynamics"}, tiers


def test_ci_selects_the_derandomized_profile():
    """`.ci/run` exports CI=1: the conftest then loads the "ci" profile, which derandomizes the draws."""
    assert profile_name({"CI": "1"}) == "ci" and profile_name({}) == "default"
    ci = settings.get_profile("ci")
    assert ci.derandomize and ci.deadline is None
    if os.environ.get("CI"):
        assert settings.default.derandomize


@pytest.mark.parametrize("id", _checks())
@settings(max_examples=EXAMPLES, deadline=None, phases=NO_SHRINK)
@given(seed=seeds())
def test_check_passes_and_its_mutants_fail_on_a_drawn_seed(id, seed):
    assume(seed != 0)
    assert_discriminates(REGISTRY[id], seed=seed)
