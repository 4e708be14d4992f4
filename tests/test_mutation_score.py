"""The library's mutation-score script (scripts/mutation_score.py, issue #11 deliverable 6): its fixed list
of bugs (scripts/library_mutants.py) still matches the source — every snippet occurs exactly once, so the
list cannot silently rot —, covers every part of the library and every preset, and a mutant is applied
to a temporary copy only.  The mutation run itself (minutes per mutant) is not run here."""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


@contextlib.contextmanager
def _scripts_on_path() -> Iterator[ModuleType]:
    """scripts/mutation_score.py imported as when it runs (scripts/ first on sys.path); afterwards
    sys.path and the modules of scripts/ are as before."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        yield importlib.import_module("mutation_score")
    finally:
        sys.path.remove(str(SCRIPTS))
        for name in ("mutation_score", "library_mutants"):
            sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def script() -> Iterator[ModuleType]:
    with _scripts_on_path() as module:
        yield module


def test_every_snippet_occurs_exactly_once(script):
    assert script.check_mutants() == []
    for m in script.MUTANTS:
        assert script.occurrences(m) == 1, m.id


def test_the_list_is_large_unique_and_covers_every_area(script):
    ids = [m.id for m in script.MUTANTS]
    assert len(ids) >= 30
    assert len(set(ids)) == len(ids)
    assert {m.area for m in script.MUTANTS} == set(script.AREAS)
    presets = {"FOP", "HD", "PSGD", "LODO", "Shampoo", "K-FAC", "APO"}
    assert presets <= set(script.AREAS)
    for m in script.MUTANTS:
        assert (script.ROOT / m.file).is_file(), m.id
        assert m.description and m.find != m.replace, m.id


def test_the_audits_bugs_are_in_the_list(script):
    ids = {m.id for m in script.MUTANTS}
    audit = {
        "lie-project-tril", "fisher-ignores-damping", "newton-uses-gradient", "lie-normaliser-one",
        "relative-gradient-b-solve", "fop-p-after-momentum",
    }
    assert audit <= ids


def test_a_mutant_changes_the_copy_and_leaves_the_repository_untouched(script, tmp_path):
    mutant = next(m for m in script.MUTANTS if m.id == "fisher-ignores-damping")
    original = (script.ROOT / mutant.file).read_bytes()
    copy = script.make_copy(tmp_path / "repo", files=[mutant.file])
    script.apply_mutant(mutant, copy)
    mutated = (copy / mutant.file).read_text(encoding="utf-8")
    assert mutant.find not in mutated and mutant.replace in mutated
    assert mutated == original.decode("utf-8").replace(mutant.find, mutant.replace)
    assert (script.ROOT / mutant.file).read_bytes() == original
    with pytest.raises(ValueError, match="occurs 0 times"):  # applied twice: the snippet is gone
        script.apply_mutant(mutant, copy)
    with pytest.raises(ValueError, match="refusing to mutate the repository"):
        script.apply_mutant(mutant, script.ROOT)


def test_a_stale_snippet_is_reported(script, tmp_path):
    mutant = script.MUTANTS[0]
    copy = script.make_copy(tmp_path / "repo", files=[mutant.file])
    target = copy / mutant.file
    target.write_text(target.read_text(encoding="utf-8") + mutant.find, encoding="utf-8")  # now twice
    assert script.check_mutants([mutant], copy) == [f"{mutant.id}: snippet occurs 2 times in {mutant.file}"]


@pytest.mark.skipif(not (SCRIPTS.parent / ".git").exists(), reason="not a git checkout")
def test_the_copy_holds_the_repositorys_files_and_not_the_venv(script):
    files = script.repository_files()
    assert "precondalg/__init__.py" in files and "tests/conftest.py" in files
    assert not any(f.startswith(".venv/") or "__pycache__" in f for f in files)


def test_the_table_and_the_summary(script):
    results = [
        {"id": "a", "area": "FOP", "file": "f", "description": "d", "report": ["FOP-7"], "tests": [],
         "killed": True, "explanation": None, "seconds": 1.0},
        {"id": "b", "area": "HD", "file": "f", "description": "d", "report": [], "tests": [],
         "killed": False, "explanation": "equivalent", "seconds": 2.0},
    ]
    doc = script.summary(results, {"date": "now"})
    assert (doc["killed"], doc["total"], doc["kill_rate"]) == (1, 2, 0.5)
    assert set(doc["mutants"][0]) == {"id", "area", "file", "description", "report", "tests", "killed",
                                      "explanation"} | {"seconds"}
    lines = script.table(results).splitlines()
    assert len(lines) == 3 and "FOP-7" in lines[1] and lines[2].rstrip().endswith("NO")
