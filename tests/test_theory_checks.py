"""Tests of the `theory_checks` package: every check passes, every mutant fails, the CLI works.

THEORY.md §1.3 (mutation self-test, report row) and QUALITY.md §3.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from theory_checks import REGISTRY, Check, Measures, Registry, run, run_check
from theory_checks.cli import main
from theory_checks.runner import json_safe

SIX = ("PSGD-11", "PSGD-8", "LODO-1", "LODO-2", "FOP-4", "APO-7")
FOP = ("FOP-3", "FOP-4", "FOP-5", "FOP-6", "FOP-7", "FOP-8")
CHECKS = tuple(dict.fromkeys(SIX + FOP))
NOT_TESTED = ("FOP-THM1", "LODO-THM4.2", "PSGD-SCALEINV", "APO-ROBUST")
REPORT_FIELDS = ("id", "paper", "statement", "measured", "bound", "tolerance", "status", "mutants", "seconds",
                 "provenance")


@pytest.fixture(scope="module")
def records():
    """Every registered check, run once through the runner API."""
    return {r.id: r for r in run(REGISTRY)}


def _threshold_check(reg: Registry, id: str, default: float, mutant: float) -> None:
    """Register a check "x <= 0.5" with the given default x and one mutant x."""

    def fn(x: float = default):
        out = Measures()
        out.at_most("x", x, 0.5)
        return out.outcome()

    reg.check(id=id, paper="test", statement="x <= 0.5", tolerance="E: x", provenance="DERIVED",
              mutants={"mutant": {"x": mutant}})(fn)


def _failing_registry() -> Registry:
    """X-1 fails, X-2 passes but its mutant passes too (non-discriminating), X-3 passes."""
    reg = Registry()
    _threshold_check(reg, "X-1", default=1.0, mutant=2.0)
    _threshold_check(reg, "X-2", default=0.0, mutant=0.1)
    _threshold_check(reg, "X-3", default=0.0, mutant=1.0)
    return reg


# ----- the real checks -----


def test_the_checks_and_the_untested_claims_are_registered():
    assert set(CHECKS) | set(NOT_TESTED) <= set(REGISTRY.ids())


def test_fop_checks_are_in_theory_order():
    fop_ids = [id for id in REGISTRY.ids() if id in FOP]
    assert fop_ids == list(FOP)


@pytest.mark.parametrize("id", CHECKS)
def test_check_passes(records, id):
    r = records[id]
    assert r.status == "PASS", (r.error, [p for p in r.parts if not p["passed"]])
    assert r.passed and all(p["passed"] for p in r.parts)
    assert isinstance(r.measured, float) and not math.isnan(r.measured)
    assert r.tolerance and r.provenance.startswith("[")


@pytest.mark.parametrize("id", CHECKS)
def test_every_mutant_fails(records, id):
    r = records[id]
    assert r.mutants, f"{id} has no mutants"
    for m in r.mutants:
        assert m.error is None, f"{id}: mutant {m.name!r} raised {m.error}"
        assert m.failed and m.caught_by, f"{id}: mutant {m.name!r} passed (non-discriminating)"


@pytest.mark.parametrize("id", NOT_TESTED)
def test_untested_claims_are_listed_not_failed(records, id):
    r = records[id]
    assert r.status == "NOT TESTED" and r.reason
    assert not r.counts_as_failure


def test_checks_restore_dtype_and_threads():
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    run_check(REGISTRY["APO-7"])
    assert torch.get_default_dtype() == dtype
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("id", ["APO-7", "PSGD-11", "LODO-1", "FOP-5", "FOP-7"])
def test_checks_are_deterministic(id):
    first, second = run_check(REGISTRY[id]), run_check(REGISTRY[id])
    assert first.parts == second.parts


# ----- the runner on injected checks -----


def test_runner_reports_failures_and_non_discriminating_checks():
    records = {r.id: r for r in run(_failing_registry())}
    assert records["X-1"].status == "FAIL" and not records["X-1"].passed
    assert records["X-2"].status == "FAIL" and records["X-2"].passed
    assert records["X-2"].mutants_failed == 0
    assert records["X-3"].status == "PASS" and records["X-3"].mutants_failed == 1


def test_raising_check_is_a_fail_and_raising_mutant_is_not_caught():
    reg = Registry()

    @reg.check(id="R-1", paper="t", statement="s", tolerance="E: x", provenance="DERIVED",
               mutants={"boom": {"boom": True}})
    def raising(boom: bool = False):
        if boom:
            raise RuntimeError("mutant crashed")
        out = Measures()
        out.equal("zero", 0, 0)
        return out.outcome()

    (r,) = run(reg)
    assert r.status == "FAIL" and r.passed
    assert "mutant crashed" in r.mutants[0].error and not r.mutants[0].failed


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mutants": {}}, "at least one mutant"),
        ({"mutants": {"m": {"nope": 1}}}, "must override"),
        ({"mutants": {"m": {"x": 1}}, "provenance": "GUESS"}, "provenance"),
    ],
)
def test_registry_rejects_bad_declarations(kwargs, message):
    args = {"id": "B-1", "paper": "p", "statement": "s", "tolerance": "E: x", "provenance": "PAPER"} | kwargs
    with pytest.raises(ValueError, match=message):
        Registry().check(**args)(lambda x=0.0: None)


def test_registry_rejects_arguments_without_defaults_and_duplicate_ids():
    reg = Registry()
    decl = {"id": "B-1", "paper": "p", "statement": "s", "tolerance": "E", "provenance": "PAPER",
            "mutants": {"m": {"x": 1}}}
    with pytest.raises(ValueError, match="default"):
        reg.check(**decl)(lambda x: None)
    reg.check(**decl)(lambda x=0: None)
    with pytest.raises(ValueError, match="already registered"):
        reg.check(**decl)(lambda x=0: None)


def test_json_safe_converts_non_finite_floats_and_tensors():
    data = json_safe({"a": (float("nan"), float("inf")), "t": torch.tensor([1.0, -math.inf])})
    assert data == {"a": ["nan", "inf"], "t": [1.0, "-inf"]}
    json.dumps(data, allow_nan=False)


# ----- the command line -----


def test_module_entry_point_writes_json(tmp_path):
    path = tmp_path / "records.json"
    command = [sys.executable, "-m", "theory_checks", "--json", str(path)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    n = sum(isinstance(entry, Check) for entry in REGISTRY)
    assert f"{n} checks: {n} PASS, 0 FAIL" in proc.stdout
    records = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    by_id = {r["id"]: r for r in records}
    assert set(CHECKS) <= set(by_id)
    for id in CHECKS:
        r = by_id[id]
        assert r["status"] == "PASS"
        assert set(REPORT_FIELDS) <= set(r)
        assert all(m["failed"] for m in r["mutants"])
    assert all(by_id[i]["status"] == "NOT TESTED" and by_id[i]["reason"] for i in NOT_TESTED)


def test_only_accepts_repeated_and_comma_separated_ids(capsys):
    assert main(["--only", "APO-7,PSGD-11", "--only", "LODO-2"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[0].strip() for line in out.splitlines() if "|" in line][1:]
    assert rows == ["PSGD-11", "LODO-2", "APO-7"]
    assert "3 checks: 3 PASS, 0 FAIL; 7/7 mutants failed as required" in out


def test_unknown_only_id_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--only", "APO-7,NOPE-1"])
    assert exc.value.code == 2
    assert "unknown check id(s): NOPE-1" in capsys.readouterr().err


def test_list_prints_every_id(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(id in out for id in CHECKS + NOT_TESTED)


def test_exit_status_is_nonzero_when_a_check_fails(capsys, tmp_path):
    reg = _failing_registry()
    path = tmp_path / "r.json"
    assert main(["--json", str(path)], registry=reg) == 1
    out = capsys.readouterr().out
    assert "X-1: FAILED x" in out and "non-discriminating" in out
    assert main(["--only", "X-3"], registry=reg) == 0
    assert main(["--only", "X-2"], registry=reg) == 1
    assert [r["status"] for r in json.loads(path.read_text())] == ["FAIL", "FAIL", "PASS"]
