"""Every example shown to users runs and prints what it shows: docs pages and package docstrings."""

import doctest
import importlib
import pkgutil
import re
from pathlib import Path

import pytest
import torch

import precondalg
import precondalg.structures

ROOT = Path(__file__).resolve().parents[1]
GLOBS = {"torch": torch, **{name: getattr(precondalg, name) for name in precondalg.__all__}}


def _page_blocks(page: Path) -> list[str]:
    return re.findall(r"```pycon\n(.*?)```", page.read_text(), re.S)


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


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module: str) -> None:
    """Docstring examples, run with torch and every public name of precondalg in scope."""
    for test in _module_tests(module):
        _run(test)


def test_examples_were_collected() -> None:
    """Guard against the parametrisations silently going empty."""
    assert len(PAGES) >= 2 and len(MODULES) >= 8, (PAGES, MODULES)
