"""The library's mutation score (issue #11, deliverable 6): which realistic bugs the theory report and the
fast tests catch.

The repository (its tracked files and the untracked ones git does not ignore; no `.venv`) is copied once
to a snapshot, so that files edited meanwhile change no run.  Then for each bug of the fixed list
`scripts/library_mutants.py`, one at a time: copy the snapshot to a temporary folder, apply the bug there
(its snippet must occur exactly once), and run in that copy, with this environment's python, cwd the copy
and ``PYTHONPATH=<copy>`` (the editable install's finder comes after sys.path, so the copy's `precondalg`
is imported; the report's run checks ``precondalg.__file__``):

1. the theory report's real runs: every check of tier "fast", its real run only (the checks' own mutants
   are not run), inside `theory_checks.runner.check_environment()`; the ids that FAIL or raise caught it;
2. the fast tests, ``python -m pytest -x -q -m "not slow" -p no:cacheprovider``, first the test files
   most related to the mutated file (`RELATED`), then (``--tests all``) the rest of ``tests/``, stopping
   at the first failure, which caught it.  This script's own test (which checks the list against the
   source, so fails on any mutated copy by design) is not run.

A run past its time limit counts as a catch ("timeout"; the limit is twice the control's time plus a
margin).  The unmutated copy runs first as a control and must pass both (for ``--tests related``: the
union of the mutants' related files), else the run aborts (the baseline is broken).  One progress line per
mutant, a table at the end (id, caught by the report, caught by the tests, killed), and the results in
``benchmarks/results/mutation_score.json``, written after every mutant (``--resume`` keeps the results
there and runs the mutants it lacks, or those named by ``--only`` again; its command and seconds add up).

Usage::

    nice -n 15 python scripts/mutation_score.py            # every mutant, related tests then all tests
    nice -n 15 python scripts/mutation_score.py --tests related --jobs 2   # faster: related tests only
    python scripts/mutation_score.py --list                # the mutants
    python scripts/mutation_score.py --only gram-QQt --tests related --out /tmp/m.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from library_mutants import AREAS, MUTANTS, Mutant  # the script's folder is sys.path[0]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "mutation_score.json"

RELATED: dict[str, tuple[str, ...]] = {
    "precondalg/structures/lie.py": (
        "tests/test_structures_lie.py", "tests/test_objectives.py", "tests/test_psgd.py",
    ),
    "precondalg/structures/triangular.py": (
        "tests/test_structures_matvec.py", "tests/test_structures_algebra.py",
    ),
    "precondalg/structures/lazy.py": ("tests/test_structures_matvec.py", "tests/test_families.py"),
    "precondalg/structures/permutation.py": ("tests/test_permutation_network.py", "tests/test_lodo.py"),
    "precondalg/families.py": ("tests/test_families.py", "tests/test_optim_reference.py"),
    "precondalg/placement.py": ("tests/test_placement.py", "tests/test_kfac.py"),
    "precondalg/objectives/criteria.py": ("tests/test_objectives.py", "tests/test_psgd.py"),
    "precondalg/objectives/hypergradient.py": ("tests/test_objectives.py", "tests/test_optim_reference.py"),
    "precondalg/objectives/proximal.py": ("tests/test_apo.py", "tests/test_theory_apo_proximal.py"),
    "precondalg/objectives/statistics.py": (
        "tests/test_shampoo.py", "tests/test_kfac.py", "tests/test_objectives.py",
    ),
    "precondalg/fitters.py": (
        "tests/test_objectives.py", "tests/test_psgd.py", "tests/test_psgd_reference.py",
        "tests/test_shampoo.py", "tests/test_kfac.py",
    ),
    "precondalg/optim/base_rules.py": (
        "tests/test_optim_reference.py", "tests/test_lodo.py", "tests/test_apo.py",
    ),
    "precondalg/optim/preconditioned.py": ("tests/test_optim_reference.py", "tests/test_apo.py"),
    "precondalg/optim/choices.py": ("tests/test_apo.py",),
    "precondalg/optim/hd.py": ("tests/test_optim_reference.py",),
    "precondalg/optim/fop.py": ("tests/test_optim_reference.py", "tests/test_optim_conventions.py"),
    "precondalg/optim/psgd.py": ("tests/test_psgd.py", "tests/test_psgd_reference.py"),
    "precondalg/optim/lodo.py": ("tests/test_lodo.py",),
    "precondalg/optim/apo.py": ("tests/test_apo.py",),
}
"""The test files most related to a library file, run first (a mutant caught there costs little)."""

REPORT_CODE = r"""
import json, sys
from pathlib import Path
import precondalg
if not Path(precondalg.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve()):
    sys.exit(f"imported {precondalg.__file__}, not the copy's precondalg under {sys.argv[1]}")
from theory_checks import REGISTRY
from theory_checks.registry import Check
from theory_checks.runner import check_environment
caught = []
for entry in REGISTRY:
    if not isinstance(entry, Check) or entry.tier != "fast":
        continue
    try:
        with check_environment():
            passed = entry.fn().passed
    except Exception:
        passed = False
    if not passed:
        caught.append(entry.id)
print("CAUGHT " + json.dumps(caught))
"""
"""The theory report's fast real runs, in the copy: prints the ids that fail or raise."""


def repository_files(root: Path = ROOT) -> list[str]:
    """The repository's files to copy: tracked and untracked-but-not-ignored, that exist (read-only git).

    Args:
        root: the repository.

    Returns:
        Their paths relative to `root`, sorted.
    """
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, check=True, capture_output=True,
    ).stdout.decode()
    return sorted(p for p in set(out.split("\0")) if p and (root / p).is_file())


def make_copy(dest: Path, root: Path = ROOT, files: Sequence[str] | None = None) -> Path:
    """Copy the repository's files (`repository_files`) into `dest`.

    Args:
        dest: the folder to fill (created if absent).
        root: the repository.
        files: the paths to copy, relative to `root`; None: `repository_files(root)`.

    Returns:
        `dest`.
    """
    for rel in repository_files(root) if files is None else files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
    return dest


def occurrences(mutant: Mutant, root: Path = ROOT) -> int:
    """How many times the mutant's snippet occurs in its file under `root` (0 if the file is missing)."""
    path = root / mutant.file
    return path.read_text(encoding="utf-8").count(mutant.find) if path.is_file() else 0


def apply_mutant(mutant: Mutant, root: Path) -> None:
    """Apply the mutant to the tree at `root` (a copy, never the repository itself).

    Raises:
        ValueError: the snippet does not occur exactly once, or `root` is the repository.
    """
    if root.resolve() == ROOT.resolve():
        raise ValueError("apply_mutant: refusing to mutate the repository itself; give it a copy")
    found = occurrences(mutant, root)
    if found != 1:
        raise ValueError(f"mutant {mutant.id}: its snippet occurs {found} times in {mutant.file}, not once")
    path = root / mutant.file
    path.write_text(path.read_text(encoding="utf-8").replace(mutant.find, mutant.replace), encoding="utf-8")


def check_mutants(mutants: Sequence[Mutant] = MUTANTS, root: Path = ROOT) -> list[str]:
    """The problems of the list: duplicate ids, unknown areas, snippets missing or ambiguous, no-ops."""
    problems = []
    ids = [m.id for m in mutants]
    problems += [f"duplicate id {i}" for i in sorted({i for i in ids if ids.count(i) > 1})]
    for m in mutants:
        if m.area not in AREAS:
            problems.append(f"{m.id}: unknown area {m.area!r}")
        if m.find == m.replace:
            problems.append(f"{m.id}: replace equals find")
        found = occurrences(m, root)
        if found != 1:
            problems.append(f"{m.id}: snippet occurs {found} times in {m.file}")
    return problems


def _environment(copy: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONPATH=str(copy), OMP_NUM_THREADS="1", CI="1", PYTHONDONTWRITEBYTECODE="1")
    return env


def _run(command: list[str], copy: Path, timeout: float) -> tuple[int | None, str]:
    """Run `command` in `copy`; (exit status, output), status None after `timeout` seconds (the process
    group it started is killed)."""
    proc = subprocess.Popen(
        command, cwd=copy, env=_environment(copy), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, text=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out


def run_report(copy: Path, timeout: float) -> list[str]:
    """The fast checks whose real run fails in `copy` (["timeout"] past the limit).

    Raises:
        RuntimeError: the run crashed (the copy's package not imported, an import error, …).
    """
    code, out = _run([sys.executable, "-c", REPORT_CODE, str(copy)], copy, timeout)
    if code is None:
        return ["timeout"]
    lines = [line for line in out.splitlines() if line.startswith("CAUGHT ")]
    if code != 0 or not lines:
        if "imported " in out and "not the copy's" in out:
            raise RuntimeError(out.strip().splitlines()[-1])
        return [f"crash: {(out.strip().splitlines() or ['no output'])[-1][:200]}"]
    return json.loads(lines[-1][len("CAUGHT "):])


_SUMMARY = re.compile(r"^(FAILED|ERROR) (\S+)")
SELF_TEST = "tests/test_mutation_score.py"
"""This script's own test, never run on a copy: in a mutated copy its snippet check fails by design."""


def run_tests(
    copy: Path, files: Sequence[str], ignore: Sequence[str], timeout: float, deselect: Sequence[str] = ()
) -> list[str]:
    """Run the fast tests in `copy` (`files`, minus `ignore` and the node ids `deselect`), stopping at the
    first failure.

    Returns:
        [] when they pass (or none is collected); else the first failing test's node id, or "timeout".
    """
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-m", "not slow", "-p", "no:cacheprovider",
               *[f"--ignore={f}" for f in (*ignore, SELF_TEST)], *[f"--deselect={d}" for d in deselect],
               *files]
    code, out = _run(command, copy, timeout)
    if code is None:
        return ["timeout"]
    if code in (0, 5):  # 5: nothing collected
        return []
    failed = [m.group(2) for m in map(_SUMMARY.match, out.splitlines()) if m]
    return failed[:1] or [f"pytest exit {code}: {(out.strip().splitlines() or ['no output'])[-1][:200]}"]


def related_tests(mutant: Mutant | None, root: Path = ROOT) -> list[str]:
    """The test files most related to the mutant's file that exist (for the control: none)."""
    if mutant is None:
        return []
    return [f for f in RELATED.get(mutant.file, ()) if (root / f).is_file()]


def evaluate(
    mutant: Mutant | None, snapshot: Path, scope: str, timeouts: dict[str, float],
    control_tests: Sequence[str] = (), deselect: Sequence[str] = (),
) -> dict:
    """Copy `snapshot` (the repository as the run found it), mutate the copy (None: the control), run
    the report and the tests in it; the mutant's result record."""
    with tempfile.TemporaryDirectory(prefix="mutation_") as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(snapshot, copy)
        if mutant is not None:
            apply_mutant(mutant, copy)
        start = time.perf_counter()
        report = run_report(copy, timeouts["report"])
        report_seconds = time.perf_counter() - start
        first = related_tests(mutant, copy) if mutant is not None else list(control_tests)
        tests = run_tests(copy, first, (), timeouts["tests"], deselect) if first else []
        if not tests and scope == "all":
            tests = run_tests(copy, ["tests"], first, timeouts["tests"], deselect)
        seconds = time.perf_counter() - start
    return {
        "id": "control" if mutant is None else mutant.id,
        "area": None if mutant is None else mutant.area,
        "file": None if mutant is None else mutant.file,
        "description": None if mutant is None else mutant.description,
        "report": report,
        "tests": tests,
        "killed": bool(report or tests),
        "explanation": None if mutant is None else mutant.explanation,
        "seconds": round(seconds, 1),
        "report_seconds": round(report_seconds, 1),
    }


def _machine() -> str:
    model = "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        lines = out.splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores"


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "HEAD") + ("+uncommitted changes" if git("status", "--porcelain") else "")


def summary(results: Sequence[dict], meta: dict) -> dict:
    """The JSON document: `meta` plus the kill rate over `results`."""
    killed = sum(r["killed"] for r in results)
    return {
        **meta,
        "kill_rate": round(killed / len(results), 4) if results else None,
        "killed": killed,
        "total": len(results),
        "mutants": [{k: r[k] for k in ("id", "area", "file", "description", "report", "tests", "killed",
                                       "explanation", "seconds")} for r in results],
    }


def table(results: Sequence[dict]) -> str:
    """The final table: id, caught by the report, caught by the tests, killed."""
    rows = [("id", "report", "tests (first failing)", "killed")]
    rows += [(r["id"], ", ".join(r["report"]) or "-", ", ".join(r["tests"]) or "-",
              "yes" if r["killed"] else "NO") for r in results]
    widths = [min(max(len(row[i]) for row in rows), cap) for i, cap in enumerate((34, 40, 70, 6))]
    return "\n".join(" | ".join(c[:w].ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="ID", help="run only these mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON file (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1)")
    parser.add_argument(
        "--tests", choices=("all", "related"), default="all",
        help="all (default): the related test files, then the rest of tests/; related: those files only",
    )
    parser.add_argument("--report-timeout", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--tests-timeout", type=float, default=3600.0, help="seconds per pytest run")
    parser.add_argument("--no-control", action="store_true", help="skip the unmutated control run")
    parser.add_argument(
        "--deselect", action="append", default=[], metavar="NODEID",
        help="a test not to run, in the control and for every mutant (repeatable; pytest's --deselect)",
    )
    parser.add_argument(
        "--resume", action="store_true",
        help="keep the results already in --out; run the mutants they lack (with --only: those, again)",
    )
    return parser


def measure(
    args: argparse.Namespace, chosen: Sequence[Mutant], snapshot: Path, meta: dict, start: float
) -> list[dict] | None:
    """The control, then every chosen mutant (results in the list's order, written to ``args.out`` after
    each); None when the control fails."""
    timeouts = {"report": args.report_timeout, "tests": args.tests_timeout}
    results: list[dict] = []
    seconds = 0.0
    if args.resume and args.out.is_file():
        before = json.loads(args.out.read_text())
        again = {m.id for m in chosen} if args.only else set()
        results = [r for r in before["mutants"] if r["id"] in {m.id for m in MUTANTS} - again]
        chosen = [m for m in chosen if m.id not in {r["id"] for r in results}]
        meta["command"] = f"{before['command']} ; {meta['command']}"
        seconds = before["seconds"] or 0.0
    if not args.no_control:
        union = sorted({f for m in chosen for f in related_tests(m)})
        control = evaluate(None, snapshot, args.tests, timeouts, union, args.deselect)
        print(f"control: report {control['report'] or 'pass'}, tests {control['tests'] or 'pass'} "
              f"({control['seconds']} s)", flush=True)
        if control["killed"]:
            print("the unmutated copy fails: the baseline is broken; nothing was measured", file=sys.stderr)
            return None
        # A mutant that runs far longer than the control hangs: twice the control's time, plus a margin.
        timeouts["report"] = min(timeouts["report"], 2 * control["report_seconds"] + 120)
        timeouts["tests"] = min(timeouts["tests"], 2 * (control["seconds"] - control["report_seconds"]) + 300)
    order = {m.id: i for i, m in enumerate(MUTANTS)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [
            pool.submit(evaluate, m, snapshot, args.tests, timeouts, (), args.deselect) for m in chosen
        ]
        for k, future in enumerate(concurrent.futures.as_completed(futures), 1):
            r = future.result()
            results.append(r)
            verdict = "killed" if r["killed"] else "SURVIVED"
            print(f"[{k}/{len(chosen)}] {r['id']}: {verdict} (report: {', '.join(r['report']) or '-'}; "
                  f"tests: {', '.join(r['tests']) or '-'}; {r['seconds']} s)", flush=True)
            results.sort(key=lambda x: order[x["id"]])
            meta["seconds"] = round(seconds + time.perf_counter() - start, 1)
            args.out.write_text(json.dumps(summary(results, meta), indent=2, ensure_ascii=False) + "\n")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Run the mutants (see the module docstring); 0 when done, 2 for a bad list or option, 3 for a
    broken baseline."""
    args = _parser().parse_args(argv)
    problems = check_mutants()
    if problems:
        print("the mutant list is out of date:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    if args.list:
        for m in MUTANTS:
            print(f"{m.id:34} {m.area:11} {m.file:40} {m.description}")
        return 0
    known = {m.id for m in MUTANTS}
    unknown = sorted(set(args.only or ()) - known)
    if unknown:
        print(f"unknown mutant id(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    chosen = [m for m in MUTANTS if args.only is None or m.id in args.only]
    start = time.perf_counter()
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "commit": _commit(),
        "command": "python scripts/mutation_score.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "seconds": None,
    }
    # One snapshot for the whole run: files edited in the repository meanwhile change no mutant's run.
    with tempfile.TemporaryDirectory(prefix="mutation_snapshot_") as holder:
        results = measure(args, chosen, make_copy(Path(holder) / "repo"), meta, start)
    if results is None:
        return 3
    print(table(results))
    doc = summary(results, meta)
    print(f"kill rate {doc['killed']}/{doc['total']} = {doc['kill_rate']:.1%} in {meta['seconds']} s; "
          f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
