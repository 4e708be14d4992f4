"""Command line: ``python -m theory_checks [--only ID ...] [--tier fast|all] [--json PATH]
[--markdown PATH] [--list] [--quiet]``.

Prints one row per check (id, paper reference, statement, measured value, bound, margin, tolerance class,
result, mutants failed, seconds), notes on failures and on the claims not tested, and a summary line;
while it runs, one progress line per check on stderr (``--quiet``: none).  ``--markdown`` also writes
the report grouped by paper, every part with its measured value, bound and margin; ``--json`` writes the
run (date, machine, commit, torch) and every record.

The margin (`MARGIN_HELP`) is the room a measurement leaves before it would fail, as a fraction of its
bound: 1 uses none of the bound, 0.01 is within 1% of it, a negative margin breaks it.
Exit status: 0 when every check passes and every mutant fails, 1 otherwise, 2 for a usage error such as
an unknown id.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from theory_checks.registry import REGISTRY, Registry
from theory_checks.runner import Record, run

COLUMNS = ("id", "paper ref", "statement", "measured", "bound", "margin", "tol", "result", "mutants failed",
           "s")
WIDTHS = (13, 36, 44, 10, 11, 8, 7, 10, 14, 5)
MARGIN_HELP = (
    "Margin: the room a measurement leaves before it would fail, as a fraction of its bound: "
    "(bound - measured)/|bound| for an upper bound, (measured - bound)/|bound| for a lower bound "
    "(the absolute difference where the bound is 0); 1 uses none of the bound, 0.01 is within 1% of it, "
    "negative breaks it; 'exact' for an equality (counts, bit-exact zeros)"
)
"""The margin column, as the help explains it (`theory_checks.runner.margin` computes it)."""
TOLERANCE_CLASSES = ("E", "S", "MC", "D", "exact")
"""The tolerance classes: E (exact identity, rel. 1e-10), S (solved by an optimizer, rel. 1e-6), MC (Monte
Carlo, within 5 standard errors), D (stochastic dynamics), plus "exact" for counts and bit-exact zeros."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m theory_checks",
        description=(
            "Run precondalg's theory checks (numerical checks of identities, invariants, closed forms, "
            "bounds and cost counts from the FOP, PSGD, LODO and APO papers) with their mutation self-tests."
        ),
        epilog=MARGIN_HELP + ".",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="ID",
        help="run only this check id (repeatable; comma-separated lists accepted)",
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="write the run to PATH as JSON: {'run': date, machine, commit, torch, command, summary; "
        "'records': every record, each part with its margin}",
    )
    parser.add_argument(
        "--markdown", metavar="PATH", help="write the report to PATH as Markdown, grouped by paper"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--tier",
        choices=("fast", "all"),
        default="all",
        help="fast: the checks of tier 'fast' and the claims not tested; all (default): every check",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the ids --only and --tier select (all by default) and exit"
    )
    return parser


def _selected(parser: argparse.ArgumentParser, only: list[str], registry: Registry) -> list[str] | None:
    """The ids asked for with --only (in the order given, without repeats), or None for all."""
    ids = list(dict.fromkeys(i.strip() for arg in only for i in arg.split(",") if i.strip()))
    unknown = [i for i in ids if i not in registry.ids()]
    if unknown:
        parser.error(f"unknown check id(s): {', '.join(unknown)}. Known ids: {', '.join(registry.ids())}")
    return ids or None


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_margin(margin: float | None, relation: str | None, passed: bool | None) -> str:
    """A margin as printed: 3 significant digits, "exact" for a passing equality, "-" where there is none.

    Examples:
        >>> format_margin(0.99, "<=", True), format_margin(None, "==", True)
        ('0.99', 'exact')
    """
    if relation == "==":
        return "exact" if passed else "unequal"
    return _fmt(margin)


def _row(r: Record) -> tuple[str, ...]:
    if r.status == "NOT TESTED":
        return (r.id, r.paper, r.statement, "-", "-", "-", "-", r.status, "-", "-")
    bound = "-" if r.bound is None else f"{r.relation} {_fmt(r.bound)}"
    mutants = f"{r.mutants_failed}/{len(r.mutants)}"
    margin = format_margin(r.margin, r.relation, r.passed)  # the headline passes iff every part does
    return (r.id, r.paper, r.statement, _fmt(r.measured), bound, margin, tolerance_classes(r.tolerance),
            r.status, mutants, f"{r.seconds:.2f}")


def tolerance_classes(tolerance: str) -> str:
    """The classes named in a tolerance string ("E: ...; exact: ..." gives "E+exact")."""
    found = re.findall(r"(?:^|;)\s*([A-Za-z]+):", tolerance)
    return "+".join(dict.fromkeys(c for c in found if c in TOLERANCE_CLASSES)) or "-"


def _line(cells: Sequence[str]) -> str:
    return " | ".join(_cut(c, w).ljust(w) for c, w in zip(cells, WIDTHS)).rstrip()


def format_report(records: list[Record]) -> str:
    """The report: a table, notes on failures and on untested claims, and a summary line."""
    lines = [_line(COLUMNS), "-+-".join("-" * w for w in WIDTHS)]
    lines += [_line(_row(r)) for r in records]
    lines += _notes(records)
    lines.append(summary(records))
    return "\n".join(lines)


def _notes(records: list[Record]) -> list[str]:
    notes = []
    for r in records:
        if r.error:
            notes.append(f"{r.id}: raised {r.error}")
        for p in r.parts:
            if not p["passed"]:
                notes.append(f"{r.id}: FAILED {p['name']}: {_fmt(p['measured'])} (needs {p['relation']} "
                             f"{_fmt(p['bound'])})")
        for m in r.mutants:
            if not m.failed:
                why = f"raised {m.error}" if m.error else "passed: the check is non-discriminating"
                notes.append(f"{r.id}: mutant '{m.name}' {why}")
        if r.status == "NOT TESTED":
            notes.append(f"{r.id} {r.provenance} not tested: {r.reason}")
    return ["", *notes] if notes else []


def summary(records: list[Record]) -> str:
    """One line: checks passed/failed, mutants failed as required, claims not tested, seconds."""
    checks = [r for r in records if r.status != "NOT TESTED"]
    passed = sum(r.status == "PASS" for r in checks)
    mutants = sum(len(r.mutants) for r in checks)
    caught = sum(r.mutants_failed for r in checks)
    seconds = sum(r.seconds for r in checks)
    return (f"{len(checks)} checks: {passed} PASS, {len(checks) - passed} FAIL; {caught}/{mutants} mutants "
            f"failed as required; {len(records) - len(checks)} claims not tested; {seconds:.1f} s")


def _progress(k: int, n: int, record: Record) -> None:
    """One line on stderr per record as the run goes: [k/n] id status (seconds)."""
    seconds = "" if record.status == "NOT TESTED" else f" ({record.seconds:.1f} s)"
    print(f"[{k:>{len(str(n))}}/{n}] {record.id} {record.status}{seconds}", file=sys.stderr, flush=True)


def _cell(text: str) -> str:
    """Text for a Markdown table cell: its pipes escaped."""
    return text.replace("|", "\\|")


def format_markdown(records: list[Record]) -> str:
    """The report as Markdown: per paper, each check's statement, result, mutants caught, seconds and a
    table of every measured part against its bound; then the claims not tested and the summary line."""
    lines = ["# Theory-check report", "", MARGIN_HELP + ".", ""]
    for paper in dict.fromkeys(r.id.split("-")[0] for r in records):
        lines += [f"## {paper}", ""]
        for r in (r for r in records if r.id.split("-")[0] == paper and r.status != "NOT TESTED"):
            lines += [
                f"### {r.id}: {r.status}",
                "",
                f"{r.paper} {r.provenance}. {r.statement}",
                "",
                f"Tolerance: {r.tolerance}. Mutants failed as required: {r.mutants_failed}/{len(r.mutants)}. "
                f"{r.seconds:.2f} s.",
                "",
                "| part | measured | bound | margin | passed |",
                "| --- | ---: | --- | ---: | --- |",
                *(
                    f"| {_cell(p['name'])} | {_fmt(p['measured'])} | {p['relation']} "
                    f"{_fmt(p['bound'])} | {format_margin(p['margin'], p['relation'], p['passed'])} | "
                    f"{'yes' if p['passed'] else '**no**'} |"
                    for p in r.parts
                ),
                "",
            ]
    untested = [r for r in records if r.status == "NOT TESTED"]
    if untested:
        lines += ["## Not tested", ""] + [f"- **{r.id}** ({r.paper}): {r.reason}" for r in untested] + [""]
    lines.append(summary(records))
    return "\n".join(lines) + "\n"


def environment(command: str) -> dict[str, Any]:
    """Where and when the report ran: UTC date, machine (lscpu's model name, logical cores), the
    checkout's commit ("with uncommitted changes" where git lists any), torch, Python and the command.

    Git is only read (``rev-parse``, ``status``); without git the commit is "unknown".
    """
    root = Path(__file__).resolve().parent.parent

    def output(*command: str) -> str | None:
        try:
            done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    lscpu = output("lscpu") or ""
    models = [line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")]
    cpu = models[0] if models else platform.processor() or "unknown"
    head = output("git", "rev-parse", "--short", "HEAD")
    dirty = output("git", "status", "--porcelain")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{cpu}, {os.cpu_count()} logical cores",
        "commit": "unknown" if head is None else head + (" with uncommitted changes" if dirty else ""),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": command,
    }


def report_json(records: list[Record], command: str) -> dict[str, Any]:
    """What ``--json`` writes: ``{"run": environment(command) and the summary line, "records": [...]}``."""
    run_info = environment(command) | {"summary": summary(records)}
    return {"run": run_info, "records": [r.to_json() for r in records]}


def _list(registry: Registry, ids: list[str] | None) -> str:
    """The registered ids (those in `ids`, None: all) with provenance, paper and tier."""
    return "\n".join(
        f"{e.id:<14} {e.tag:<16} {e.paper}"
        + ("  (not tested)" if not hasattr(e, "fn") else "  (dynamics)" if e.tier == "dynamics" else "")
        for e in registry
        if ids is None or e.id in ids
    )


def main(argv: Sequence[str] | None = None, registry: Registry = REGISTRY) -> int:
    """Run the CLI; returns the exit status (argparse exits with 2 on usage errors)."""
    parser = _parser()
    args = parser.parse_args(argv)
    ids = _selected(parser, args.only, registry)
    if args.tier == "fast":  # "not tested" claims have no tier and stay
        fast = [e.id for e in registry if getattr(e, "tier", "fast") == "fast"]
        excluded = [i for i in ids or () if i not in fast]
        if excluded:
            parser.error(f"--only {', '.join(excluded)}: of tier 'dynamics', which --tier fast leaves out")
        ids = fast if ids is None else ids
    if args.list:
        print(_list(registry, ids))
        return 0
    records = run(registry, ids, None if args.quiet else _progress)
    print(format_report(records))
    # The checkout's state is read before any output file is written (a report written over a tracked
    # file would otherwise record its own write as an uncommitted change).
    command = " ".join(["python -m theory_checks", *(sys.argv[1:] if argv is None else argv)])
    payload = report_json(records, command) if args.json else None
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(format_markdown(records))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2, ensure_ascii=False, allow_nan=False)
            f.write("\n")
    return 1 if any(r.counts_as_failure for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
