"""Every example shown to users runs and prints what it shows: docs pages and package docstrings.

- ```pycon blocks: one doctest per page (a page's blocks share a namespace).
- ```python blocks: each runs on its own.  A block in a ``??? note "The script that measured the
  table"`` must print, as Markdown, the table just above the note (footnote marks aside): the page's
  table is what the script measures now.
"""

import contextlib
import doctest
import importlib
import io
import pkgutil
import re
import textwrap
from pathlib import Path

import pytest
import torch

import precondalg
import precondalg.structures

ROOT = Path(__file__).resolve().parents[1]
GLOBS = {"torch": torch, **{name: getattr(precondalg, name) for name in precondalg.__all__}}


def _page_blocks(page: Path) -> list[str]:
    return re.findall(r"```pycon\n(.*?)```", page.read_text(), re.S)


MEASURING_NOTE = '??? note "The script that measured the table"'
FOOTNOTE_MARKS = " ¹²³⁴⁵⁶⁷⁸⁹⁰"


def _python_blocks(page: Path) -> list[tuple[int, str, bool]]:
    """(line number, code, whether it measures the table above it) of each ```python block."""
    lines = page.read_text().splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != "```python":
            continue
        indent = line[: len(line) - len(line.lstrip())]
        end = next(
            j for j in range(i + 1, len(lines)) if lines[j].strip() == "```" and lines[j].startswith(indent)
        )
        code = textwrap.dedent("\n".join(lines[i + 1 : end]))
        measures = i > 0 and lines[i - 1].strip() == MEASURING_NOTE
        blocks.append((i + 1, code, measures))
    return blocks


def _table_rows(lines: list[str]) -> list[list[str]]:
    """The cells of a Markdown table's rows (separator row dropped, footnote marks stripped)."""
    rows = [[c.strip().rstrip(FOOTNOTE_MARKS) for c in line.strip().split("|")[1:-1]] for line in lines]
    return [row for row in rows if not all(set(c) <= set("-: ") for c in row)]


def _table_above(page: Path, line_number: int) -> list[str]:
    """The lines of the last Markdown table before `line_number` (1-based)."""
    lines = page.read_text().splitlines()[: line_number - 1]
    end = max(i for i, line in enumerate(lines) if line.startswith("|"))
    start = end
    while start > 0 and lines[start - 1].startswith("|"):
        start -= 1
    return lines[start : end + 1]


def _module_tests(module: str) -> list[doctest.DocTest]:
    tests = doctest.DocTestFinder().find(importlib.import_module(module), globs=GLOBS)
    return [t for t in tests if t.examples]


PAGES = [p for p in sorted((ROOT / "docs").rglob("*.md")) if _page_blocks(p)]
MODULES = [
    m.name
    for m in pkgutil.iter_modules(precondalg.structures.__path__, "precondalg.structures.")
    if _module_tests(m.name)
]


def _run(test: doctest.DocTest) -> None:
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {test.name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_page_examples(page: Path) -> None:
    """The ```pycon blocks of one page run as one doctest (a page's blocks share a namespace)."""
    text = "\n".join(_page_blocks(page))
    _run(doctest.DocTestParser().get_doctest(text, {}, str(page), str(page), 0))


PYTHON_BLOCKS = [
    pytest.param(
        page,
        line,
        code,
        measures,
        id=f"{page.relative_to(ROOT)}:{line}",
        marks=[pytest.mark.slow] if measures else [],
    )
    for page in sorted((ROOT / "docs").rglob("*.md"))
    for line, code, measures in _python_blocks(page)
]


@pytest.mark.parametrize(("page", "line", "code", "measures"), PYTHON_BLOCKS)
def test_docs_python_blocks(page: Path, line: int, code: str, measures: bool) -> None:
    """Each ```python block runs; a measuring script prints the table shown above it."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"{page}:{line}", "exec"), {"__name__": "__docs__"})  # noqa: S102
    if measures:
        printed = [row for row in out.getvalue().splitlines() if row.startswith("|")]
        assert _table_rows(printed) == _table_rows(_table_above(page, line)), out.getvalue()


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module: str) -> None:
    """Docstring examples, run with torch and every public name of precondalg in scope."""
    for test in _module_tests(module):
        _run(test)


def test_examples_were_collected() -> None:
    """Guard against the parametrisations silently going empty."""
    assert len(PAGES) >= 2 and len(MODULES) >= 8, (PAGES, MODULES)
    assert any(measures for *_, measures in (p.values for p in PYTHON_BLOCKS)), PYTHON_BLOCKS
