"""Tests of the `theory_checks` package: every check passes, every mutant fails, the CLI works, and
the report claims no more than is checked (ids it cites exist, no design files, proven bounds).

THEORY.md §1.3 (mutation self-test, report row) and QUALITY.md §3.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
import subprocess
import sys

import pytest
import torch

import theory_checks
from theory_checks import REGISTRY, Check, Measures, Registry, run, run_check
from theory_checks.cli import format_markdown, format_report, main
from theory_checks.psgd import MU0, PSGD8_N
from theory_checks.runner import json_safe, margin

SIX = ("PSGD-11", "PSGD-8", "LODO-1", "LODO-2", "FOP-4", "APO-7")
FOP = ("FOP-1", "FOP-2", "FOP-3", "FOP-4", "FOP-5", "FOP-6", "FOP-7", "FOP-8", "FOP-9")
CHECKS = tuple(id for id in REGISTRY.ids() if isinstance(REGISTRY[id], Check))
"""Every registered check: each must pass, with a complete report row, and each of its mutants fail."""
SECONDS = 60.0
"""Per check, real run plus all its mutants (PSGD-8, the slowest, takes ~10 s on a loaded 2-core machine)."""
NOT_TESTED = ("FOP-THM1", "LODO-THM4.2", "PSGD-SCALEINV", "APO-ROBUST")
REPORT_FIELDS = ("id", "paper", "statement", "measured", "bound", "tolerance", "status", "mutants", "seconds",
                 "provenance")
CITED_ID = re.compile(r"\b((?:FOP|PSGD|LODO|APO)-\d+)\b(?! \(planned\))")
"""A check id cited in a record's text, unless "(planned)" follows it."""
DESIGN_FILES = re.compile(r"THEORY\.md|METHODS\.md|ARCHITECTURE\.md|QUALITY\.md|EXPERIMENTS\.md|§7")
"""Design documents users do not have (and THEORY.md's §7, which the report used to cite)."""
E_RTOL = 1e-10


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
    assert set(SIX) | set(FOP) | set(NOT_TESTED) <= set(REGISTRY.ids())
    assert {f"PSGD-{i}" for i in range(1, 17)} <= set(CHECKS)


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
    assert set(REPORT_FIELDS) <= set(r.to_json())
    assert r.seconds < SECONDS, f"{id} took {r.seconds:.1f} s"
    for p in r.parts:  # tolerance or proven bounds only: finite, never a bare "> 0"
        assert math.isfinite(p["bound"]) and not (p["relation"] == ">" and p["bound"] == 0)


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
    """The module entry point on a few checks and a not-tested claim (the whole run is the `records`
    fixture's, and `.ci/run`'s last command)."""
    path, checks, untested = tmp_path / "records.json", ("APO-7", "PSGD-11", "LODO-2"), ("APO-ROBUST",)
    only = ",".join(checks + untested)
    command = [sys.executable, "-m", "theory_checks", "--only", only, "--json", str(path)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)  # a guard, not a timing
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 checks: 3 PASS, 0 FAIL" in proc.stdout
    report = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert set(report["run"]) == {"date", "machine", "commit", "torch", "python", "command", "summary"}
    assert report["run"]["command"] == f"python -m theory_checks --only {only} --json {path}"
    assert report["run"]["torch"] == torch.__version__ and report["run"]["summary"] in proc.stdout
    by_id = {r["id"]: r for r in report["records"]}
    assert set(by_id) == set(checks + untested)
    for id in checks:
        r = by_id[id]
        assert r["status"] == "PASS"
        assert set(REPORT_FIELDS) <= set(r)
        assert all(m["failed"] for m in r["mutants"])
        assert all("margin" in p for p in r["parts"]) and "margin" in r
    assert all(by_id[i]["status"] == "NOT TESTED" and by_id[i]["reason"] for i in untested)


def test_only_accepts_repeated_and_comma_separated_ids(capsys):
    assert main(["--only", "APO-7,PSGD-11", "--only", "LODO-2"]) == 0
    out = capsys.readouterr().out
    rows = [line.split("|")[0].strip() for line in out.splitlines() if "|" in line][1:]
    assert rows == ["PSGD-11", "LODO-2", "APO-7"]
    mutants = sum(len(REGISTRY[id].mutants) for id in ("APO-7", "PSGD-11", "LODO-2"))
    assert f"3 checks: 3 PASS, 0 FAIL; {mutants}/{mutants} mutants failed as required" in out


def test_markdown_report_and_progress(tmp_path, capsys):
    """--markdown writes every part of each check under its paper; progress lines go to stderr unless
    --quiet."""
    path = tmp_path / "report.md"
    assert main(["--only", "APO-7,FOP-5", "--markdown", str(path)]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["[1/2] FOP-5 PASS", "[2/2] APO-7 PASS"]
    text = path.read_text()
    order = [text.index(s) for s in ("## FOP", "### FOP-5: PASS", "## APO", "### APO-7: PASS")]
    assert order == sorted(order)
    for record in run(REGISTRY, ["FOP-5", "APO-7"]):
        assert all(f"| {p['name'].replace('|', chr(92) + '|')} |" in text for p in record.parts)
    assert text.rstrip().splitlines()[-1].startswith("2 checks: 2 PASS, 0 FAIL; 3/3 mutants")
    assert main(["--only", "APO-7", "--quiet"]) == 0 and capsys.readouterr().err == ""


def test_tier_fast_leaves_out_the_dynamics_checks(capsys, monkeypatch):
    """--tier fast runs the "fast" checks (and lists the claims not tested); --list marks the others."""
    dynamics = [id for id in REGISTRY.ids() if getattr(REGISTRY[id], "tier", "fast") == "dynamics"]
    assert set(dynamics) == {"FOP-2", "PSGD-9", "PSGD-10", "LODO-4", "LODO-7", "APO-9"}
    asked = []
    monkeypatch.setattr("theory_checks.cli.run", lambda registry, ids, progress: asked.append(ids) or [])
    assert main(["--tier", "fast"]) == 0 and main(["--tier", "fast", "--only", "FOP-3"]) == 0
    assert not set(dynamics) & set(asked[0]) and set(asked[0]) | set(dynamics) == set(REGISTRY.ids())
    assert asked[1] == ["FOP-3"]
    capsys.readouterr()
    main(["--list"])
    marked = {line.split()[0] for line in capsys.readouterr().out.splitlines() if line.endswith("(dynamics)")}
    assert marked == set(dynamics)
    main(["--list", "--tier", "fast"])
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == [id for id in REGISTRY.ids() if id not in dynamics]
    main(["--list", "--only", "APO-7,FOP-2"])
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["FOP-2", "APO-7"]
    with pytest.raises(SystemExit) as exit_:
        main(["--only", "APO-9", "--tier", "fast"])  # would run nothing: refused, not an empty pass
    assert exit_.value.code == 2 and "APO-9: of tier 'dynamics'" in capsys.readouterr().err


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
    assert [r["status"] for r in json.loads(path.read_text())["records"]] == ["FAIL", "FAIL", "PASS"]


# ----- margins -----


@pytest.mark.parametrize(
    "measured, relation, bound, expected",
    [
        (1e-12, "<=", 1e-10, 0.99),  # an error using 1% of its tolerance
        (0.99, "<=", 1.0, 0.01),  # a rate within 1% of its bound
        (1.5, "<=", 1.0, -0.5),  # broken by half the bound
        (-2.0, ">=", -5.0, 0.6),  # a z-score floor of −5
        (0.5, ">=", 1.0, -0.5),
        (1.0, ">=", 1 - 1e-10, 1e-10),  # a floor attained
        (3.0, "<=", 0.0, -3.0),  # bound 0: the absolute room
        (2.0, ">", 0.0, 2.0),
        (4.0, "==", 4.0, None),
    ],
)
def test_margin_is_the_room_left_as_a_fraction_of_the_bound(measured, relation, bound, expected):
    got = margin(measured, relation, bound)
    assert got == expected if expected is None else got == pytest.approx(expected, rel=1e-6, abs=1e-20)


def test_margin_nan_is_nan():
    assert math.isnan(margin(float("nan"), "<=", 1.0))


def _margin_registry() -> Registry:
    """M-1 passes with margins 0.8 (x = 0.1 <= 0.5), 0.5 (y = 1.5 >= 1) and an exact count; its mutant
    fails with x = 2 (margin −3)."""
    reg = Registry()

    def fn(x: float = 0.1):
        out = Measures()
        out.at_most("x", x, 0.5)
        out.at_least("y", 1.5, 1.0)
        out.equal("count", 3, 3)
        return out.outcome()

    reg.check(id="M-1", paper="test", statement="margins", tolerance="E: x; exact: count",
              provenance="DERIVED", mutants={"x = 2": {"x": 2.0}})(fn)
    reg.check(id="M-2", paper="test", statement="a failing check", tolerance="E: x", provenance="DERIVED",
              mutants={"x = 3": {"x": 3.0}})(lambda x=1.0: fn(x))
    return reg


def test_records_carry_margins_and_the_report_prints_them(tmp_path, capsys):
    """The margin is a column of the table, of --markdown's parts and of --json's records and parts; a
    failing part shows a negative margin."""
    reg = _margin_registry()
    ok, bad = run(reg)
    assert ok.margin == pytest.approx(0.8) and [p["margin"] for p in ok.parts] == [
        pytest.approx(0.8), pytest.approx(0.5), None]
    assert bad.status == "FAIL" and bad.margin == pytest.approx(-1.0)  # x = 1 against 0.5
    table = format_report([ok, bad]).splitlines()
    header = [c.strip() for c in table[0].split("|")]
    assert header[5] == "margin"
    assert [c.strip() for c in table[2].split("|")][5] == "0.8"
    assert [c.strip() for c in table[3].split("|")][5] == "-1"
    markdown = format_markdown([ok, bad])
    assert "| part | measured | bound | margin | passed |" in markdown
    assert "| x | 0.1 | <= 0.5 | 0.8 | yes |" in markdown and "| count | 3 | == 3 | exact | yes |" in markdown
    assert "| x | 1 | <= 0.5 | -1 | **no** |" in markdown
    assert "Margin: the room a measurement leaves" in markdown
    path = tmp_path / "r.json"
    assert main(["--json", str(path), "--quiet"], registry=reg) == 1
    records = json.loads(path.read_text())["records"]
    assert [r["margin"] for r in records] == [pytest.approx(0.8), pytest.approx(-1.0)]
    assert [p["margin"] for p in records[0]["parts"]] == [pytest.approx(0.8), pytest.approx(0.5), None]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "Margin: the room a measurement leaves" in capsys.readouterr().out


def test_every_real_part_has_its_margin(records):
    """Each part of the real runs carries the margin of its own measured value and bound."""
    for id in CHECKS:
        r = records[id]
        assert r.margin == margin(r.measured, r.relation, r.bound)
        for p in r.parts:
            expected = margin(p["measured"], p["relation"], p["bound"])
            assert p["margin"] == expected or math.isnan(expected)
            assert p["margin"] is None or (p["margin"] >= 0) == p["passed"] or p["relation"] in ("<", ">")


# ----- the report claims no more than is checked -----


def _strings(x) -> list[str]:
    """Every string in nested JSON data (dict keys included)."""
    if isinstance(x, dict):
        return [t for k, v in x.items() for t in [k, *_strings(v)]]
    if isinstance(x, list):
        return [t for v in x for t in _strings(v)]
    return [x] if isinstance(x, str) else []


def test_cited_id_pattern_skips_planned_checks_only():
    text = "will be checked by FOP-2 (planned); a sub-case of PSGD-1, see LODO-9 (planned) and APO-7."
    assert CITED_ID.findall(text) == ["PSGD-1", "APO-7"]


def test_every_check_id_cited_by_a_record_is_registered_or_planned(records):
    cited = {
        (r.id, m)
        for r in records.values()
        for text in _strings(r.to_json())
        for m in CITED_ID.findall(text)
    }
    assert cited, "the pattern should at least find each check's own id"
    unregistered = sorted((where, id) for where, id in cited if id not in REGISTRY.ids())
    assert unregistered == []


def test_not_tested_reasons_cite_no_unregistered_check():
    for entry in REGISTRY:
        if not isinstance(entry, Check):
            assert entry.reason
            assert all(id in REGISTRY.ids() for id in CITED_ID.findall(entry.reason)), entry.reason


def test_report_and_records_name_no_design_file(records, capsys, tmp_path):
    everything = list(records.values())
    text = format_report(everything)
    assert DESIGN_FILES.findall(text) == []
    assert "not tested: " in text
    assert DESIGN_FILES.findall(json.dumps([r.to_json() for r in everything], ensure_ascii=False)) == []
    path = tmp_path / "r.json"
    assert main(["--only", "FOP-5,APO-7", "--json", str(path)]) == 0
    assert DESIGN_FILES.findall(capsys.readouterr().out + path.read_text(encoding="utf-8")) == []
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    help_text = capsys.readouterr().out
    assert "mutation self-tests" in help_text and DESIGN_FILES.findall(help_text) == []


def test_package_sources_cite_no_design_file():
    """Docstrings and messages of theory_checks cite the papers, never the engineers' design files."""
    for path in sorted(pathlib.Path(theory_checks.__file__).parent.glob("*.py")):
        hits = DESIGN_FILES.findall(path.read_text(encoding="utf-8"))
        assert hits == [], f"{path.name} cites {hits}"


def test_registry_error_cites_no_design_file():
    with pytest.raises(ValueError) as exc:
        Registry().check(id="B-1", paper="p", statement="s", tolerance="E", provenance="PAPER", mutants={})(
            lambda x=0.0: None
        )
    assert str(exc.value) == "B-1: a check needs at least one mutant (the mutation self-test); got none"


def test_no_check_has_a_vacuous_bound(records):
    """No part compares with infinity, and none is a bare "> 0" (a positive quantity has a proven floor)."""
    for id in CHECKS:
        for p in records[id].parts:
            assert math.isfinite(p["bound"]), (id, p)
            assert not (p["relation"] == ">" and p["bound"] == 0), (id, p)


def test_psgd8_bounds_are_the_proven_floors(records):
    """Eq. 20 with |E_ij| ≤ 1 and E upper triangular: q_ii′/q_ii ∈ [1 − μ₀, 1 + μ₀] and
    |det Q′|/|det Q| ≥ (1 − μ₀)ⁿ, with 0 < μ₀ < 1."""
    assert 0 < MU0 < 1
    r = records["PSGD-8"]
    parts = {p["name"].split(" over ")[0].split(" (bound")[0]: p for p in r.parts}
    low, high, det = parts["min q_ii′/q_ii"], parts["max q_ii′/q_ii"], parts["min |det Q′|/|det Q|"]
    assert (low["relation"], low["bound"]) == (">=", pytest.approx((1 - MU0) * (1 - E_RTOL), rel=1e-15))
    assert (high["relation"], high["bound"]) == ("<=", pytest.approx((1 + MU0) * (1 + E_RTOL), rel=1e-15))
    det_floor = (1 - MU0) ** PSGD8_N * (1 - E_RTOL)
    assert (det["relation"], det["bound"]) == (">=", pytest.approx(det_floor, rel=1e-15))
    assert (r.quantity, r.relation, r.bound) == (low["name"], ">=", low["bound"])
    # the floor 1 − μ₀ is reached (a diagonal entry of E equal to 1) and 1 + μ₀ too: the bounds are sharp
    assert low["measured"] == pytest.approx(1 - MU0, rel=1e-12)
    assert high["measured"] == pytest.approx(1 + MU0, rel=1e-12)
    assert sum(g["steps"] for g in r.details["per group"].values()) == 10_000
    assert not any("cond" in p["name"] for p in r.parts)


def test_psgd8_mutants_fail_on_the_diagonal_floor(records):
    mutants = {m.name: m for m in records["PSGD-8"].mutants}
    over = mutants["step μ = 1.5 (outside (0, 1))"]
    edge = mutants["step μ = 1 (I − μE singular when E_ii = 1)"]
    assert over.quantity.startswith("min q_ii′/q_ii") and over.measured == pytest.approx(1 - 1.5, rel=1e-12)
    assert edge.quantity.startswith("min q_ii′/q_ii") and edge.measured == 0.0
    assert any(name.startswith("min |det Q′|/|det Q|") for name in edge.caught_by)


def test_strengthened_bounds_of_other_checks(records):
    """FOP-4(d): the per-step floor λ_min(P_t) ≥ (1 − ρε(b−a))²λ_min(P_{t−1}) instead of λ_min > 0; FOP-8: the
    exact first-step closed form and σ² scaling instead of ±10%; PSGD-11: det identities instead of 1/cond."""
    fop4 = {p["name"]: p for p in records["FOP-4"].parts}
    floor = fop4["(d) min_t λ_min(P_t) / [(1 − ρε(b−a))²·λ_min(P_{t−1})]"]
    assert (floor["relation"], floor["bound"]) == (">=", pytest.approx(1 - E_RTOL, rel=1e-15))
    assert floor["measured"] == pytest.approx(1.0, rel=1e-9)  # reached at the first step, from M₀ = I
    fop8 = [p for p in records["FOP-8"].parts if p["name"].startswith("low rank")]
    assert len(fop8) == 2 and all((p["relation"], p["bound"]) == ("<=", E_RTOL) for p in fop8)
    psgd11 = [p for p in records["PSGD-11"].parts if "det" in p["name"]]
    assert [(p["relation"], p["bound"]) for p in psgd11] == [("<=", E_RTOL)]
    assert not any("cond" in p["name"] for p in records["PSGD-11"].parts)


def test_the_checkout_is_read_before_any_output_is_written(tmp_path, monkeypatch):
    """`--json` reads the checkout's state (`environment`: its commit and whether it has changes) before
    it writes the report or the markdown: a report regenerated over its committed copy must not record
    its own write as an uncommitted change."""
    import theory_checks.cli as cli

    report, markdown = tmp_path / "report.json", tmp_path / "report.md"
    report.write_text("committed\n")
    markdown.write_text("committed\n")
    seen = []
    real = cli.environment
    monkeypatch.setattr(cli, "environment", lambda command: seen.append(
        (report.read_text(), markdown.read_text())) or real(command))
    assert main(["--only", "APO-7", "--quiet", "--json", str(report), "--markdown", str(markdown)]) == 0
    assert seen == [("committed\n", "committed\n")]
    assert json.loads(report.read_text())["records"][0]["id"] == "APO-7"
