"""benchmarks/profiles.py without timing: its attribution of a profile's time to categories (on small
synthetic cProfile records), its reading of a suite run's missed targets, and its section of the docs
page between its own markers."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
IMPORTED = ("profiles", "floor", "suite", "models", "optimizers", "psgd")
PRE = "/repo/precondalg/optim/preconditioned.py"


@pytest.fixture(scope="module")
def profiles() -> ModuleType:
    """benchmarks/profiles.py as it runs (benchmarks/ first on sys.path); sys.path and the modules of
    benchmarks/ as they were afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCHMARKS))
        for name in IMPORTED:
            mp.delitem(sys.modules, name, raising=False)
        yield importlib.import_module("profiles")
        for name in IMPORTED:
            sys.modules.pop(name, None)


def _stats(calls: dict[tuple, tuple[float, dict[tuple, float]]]) -> dict:
    """cProfile's records from {function: (own seconds, {caller: cumulative seconds of its calls})} (a
    function's own cumulative time, which `attribute` does not read, left at 0)."""
    return {
        key: (1, 1, own, 0.0, {caller: (1, 1, 0.0, ct) for caller, ct in callers.items()})
        for key, (own, callers) in calls.items()
    }


TRAIN = ("/repo/benchmarks/optimizers.py", 1, "train_step")
WRAPPER = ("/venv/torch/optim/optimizer.py", 2, "wrapper")


def test_each_function_goes_to_the_nearest_category_above_it(profiles):
    step, before, proposals, cast = (
        (PRE, 3, "step"),
        (PRE, 4, "_before_base"),
        (PRE, 5, "_proposals"),
        (PRE, 6, "_cast"),
    )
    matmul, aminmax = ("~", 0, "<built-in method torch.matmul>"), ("~", 0, "<built-in method torch.aminmax>")
    module, container = (
        ("/venv/torch/nn/modules/module.py", 7, "_wrapped_call_impl"),
        ("/venv/c.py", 8, "forward"),
    )
    stats = _stats(
        {
            TRAIN: (1.0, {}),
            WRAPPER: (0.5, {TRAIN: 6.0}),
            step: (1.0, {WRAPPER: 5.5}),
            before: (0.5, {step: 2.8}),
            matmul: (2.0, {before: 2.0}),
            proposals: (0.25, {step: 1.35}),
            aminmax: (1.0, {proposals: 1.0}),
            cast: (0.4, {before: 0.3, proposals: 0.1}),  # shared: split as its callers' times are
            module: (0.2, {TRAIN: 0.5, container: 0.2}),  # a cycle, entered from the training step
            container: (0.3, {module: 0.3}),
        }
    )
    times = profiles.attribute(stats, "precondalg")
    total = {c: t["total"] for c, t in times.items() if t["total"]}
    assert total == pytest.approx(
        {
            profiles.HARNESS: 1.0,
            profiles.ENGINE: 1.5,
            profiles.APPLY: 2.8,
            profiles.GUARD: 1.35,
            profiles.FWD: 0.5,
        }
    )
    assert times[profiles.APPLY]["precondalg"] == pytest.approx(0.8)  # _before_base and its share of _cast
    assert times[profiles.APPLY]["torch_c"] == pytest.approx(2.0)
    assert times[profiles.APPLY]["top"][0] == ("C:matmul", pytest.approx(2.0))


def test_a_torch_optimizer_is_the_base_rule_of_torch_and_the_fitter_of_precondalg(profiles):
    adam = "/venv/torch/optim/adam.py"
    step, foreach = (adam, 9, "step"), (adam, 10, "_multi_tensor_adam")
    calls = {TRAIN: (0.0, {}), WRAPPER: (0.0, {TRAIN: 3.0}), step: (1.0, {WRAPPER: 3.0})}
    stats = _stats({**calls, foreach: (2.0, {step: 2.0})})
    as_torch = profiles.attribute(stats, "torch")
    assert (as_torch[profiles.ENGINE]["total"], as_torch[profiles.BASE]["total"]) == pytest.approx((1.0, 2.0))
    assert profiles.attribute(stats, "precondalg")[profiles.FIT]["total"] == pytest.approx(3.0)


def _comparison(method: str, against: str, ratio: float, bound: float) -> dict:
    spread = {"median": ratio, "q1": ratio - 0.1, "q3": ratio + 0.1}
    return {
        "model": "m",
        "method": method,
        "against": against,
        "bound": bound,
        "status": "measured",
        "median": spread,
        "amortised": spread,
        "cpu_amortised": spread,
        "met": ratio <= bound,
    }


def test_the_missed_targets_are_read_from_a_suite_run(profiles):
    floor = {"floor_ms": 20.0, "forward_backward_flops": 1, "apply_flops": 2, "fit_flops": 3}
    records = [
        {
            "model": "m",
            "method": "A",
            "group": "preset",
            "status": "measured",
            "floor": floor,
            "step_vs_floor": 2.0,
        },
        {
            "model": "m",
            "method": "A (p=0.1)",
            "group": "preset",
            "status": "measured",
            "floor": floor,
            "step_vs_floor": 1.0,
        },
        {"model": "m", "method": "Adam", "group": "baseline", "status": "measured"},
    ]
    run = {
        "models": [
            {
                "facts": {"model": "m"},
                "records": records,
                "comparisons": [
                    _comparison("A", "Adam", 1.5, 1.2),
                    _comparison("A (p=0.1)", "Adam", 1.1, 1.2),
                ],
            }
        ]
    }
    missed = profiles.missed_targets(run)
    assert [(t["kind"], t["method"], t["against"]) for t in missed] == [
        ("comparison", "A", "Adam"),
        ("floor", "A", None),
    ]
    assert missed[0]["missed_by"] == pytest.approx(0.25)
    assert missed[0]["iqr"] == pytest.approx([1.4, 1.6])
    assert missed[1]["floor"] is floor


def test_the_section_goes_after_the_suite_tables_and_is_replaced_between_its_markers(profiles, tmp_path):
    suite = profiles.suite
    page = tmp_path / "page.md"
    page.write_text(f"# Title\n\n{suite.BEGIN}\ntables\n{suite.END}\n\n## Reading\n")
    profiles.write_section(page, "first")
    head = f"# Title\n\n{suite.BEGIN}\ntables\n{suite.END}\n\n{profiles.BEGIN}\n"
    assert page.read_text() == f"{head}first\n{profiles.END}\n\n## Reading\n"
    profiles.write_section(page, "second")
    assert page.read_text() == f"{head}second\n{profiles.END}\n\n## Reading\n"
    page.write_text("no markers")
    with pytest.raises(ValueError, match="expected exactly one"):
        profiles.write_section(page, "x")
