"""The documentation site stands on its own and agrees with the code.

- The built site (``mkdocs build --strict``, once per session, into a temporary directory): no warning,
  no reference to the project's internal design files, no builtin docstrings in the API reference, each
  class and function rendered once, every exported class and function rendered, ``*args``/``**kwargs``
  never called "required", every generated block filled in.
- The pages' lists that mirror the code and are not generated (docs/hooks/generated.py generates the
  others) are compared with the code: the structures, the algebra's rule tables, the Lie groups, the
  base rules, the placements, objectives and fitters, the families of the supported-combinations table,
  the theory-check ids the pages cite, and the tolerance classes.
- The theory pages: every registered id has its claim in notation (converted to MathML, rendered, no
  script and no CDN) and an anchor on its paper's page, with the last measured values; a report that no
  longer matches the registry fails the build; method pages link to their checks and back.
"""

from __future__ import annotations

import html
import importlib
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import precondalg as pa
import theory_checks
from precondalg.optim.base_rules import BASE_RULES
from theory_checks import Check
from theory_checks.cli import TOLERANCE_CLASSES
from theory_checks.notation import CLAIMS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DESIGN_FILES = re.compile(r"\b(ARCHITECTURE|METHODS|THEORY|QUALITY|EXPERIMENTS)\b(\.md)?")
BUILTIN_TYPES = (float, int, str, bool, bytes, dict, list, tuple, set, frozenset, complex, object, type)
BUILTIN_DOCSTRINGS = sorted(
    {inspect.getdoc(t).splitlines()[0] for t in BUILTIN_TYPES}
    | {
        "Initialize self.  See help(type(self)) for accurate signature.",
        "Return repr(self).",
        "Create and return a new object.",
        "Return a new",
    }
)
CHECK_ID = re.compile(r"(?<![\w-])(?:FOP|PSGD|LODO|APO)-\d+(?![\w.])")


# ------------------------------------------------------------------------------------------ the build


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built strictly into a temporary directory (about 5 s)."""
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "WARNING" not in log, log
    return out


def _pages(site: Path) -> dict[str, str]:
    return {str(p.relative_to(site)): p.read_text() for p in sorted(site.rglob("*.html"))}


def _text(page_html: str) -> str:
    """The visible text of a page's article (tags removed, entities decoded)."""
    body = page_html[page_html.find("<article") : page_html.find("</article>")]
    body = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", body, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", body))


def test_no_reference_to_the_design_files(site: Path) -> None:
    """The design documents (ARCHITECTURE.md, METHODS.md, ...) are not published: the site must not cite them.

    A hit in the API reference comes from a package docstring; fix it there.
    """
    found = []
    for path in [*site.rglob("*.html"), *site.rglob("*.json"), *site.rglob("*.xml")]:
        text = html.unescape(path.read_text(errors="replace"))
        for match in DESIGN_FILES.finditer(text):
            context = " ".join(text[max(0, match.start() - 60) : match.end() + 30].split())
            found.append(f"{path.relative_to(site)}: …{context}…")
    assert not found, f"{len(found)} references to design files:\n" + "\n".join(found[:40])


def test_sources_do_not_cite_design_files() -> None:
    """The same for the Markdown sources and the README (no build needed)."""
    sources = [ROOT / "README.md", ROOT / "mkdocs.yml", *DOCS.rglob("*.md"), *DOCS.rglob("*.py")]
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sources
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if DESIGN_FILES.search(line)
    ]
    assert not found, found


def test_no_builtin_docstrings(site: Path) -> None:
    found = [
        f"{name}: {phrase!r}"
        for name, page in _pages(site).items()
        for phrase in BUILTIN_DOCSTRINGS
        if phrase in _text(page)
    ]
    assert not found, found


def _api_headings(site: Path, kind: str) -> list[str]:
    """Names of the API reference's headings for objects of one kind (class, function, method, ...)."""
    names = []
    for path in sorted((site / "api").rglob("*.html")):
        for heading in re.findall(r"<h[1-6][^>]*doc-heading[^>]*>(.*?)</h[1-6]>", path.read_text(), re.S):
            if f"doc-symbol-{kind}" in heading:
                names.append(html.unescape(re.sub(r"<[^>]+>|¶", "", heading)).split()[0])
    return names


@pytest.mark.parametrize("kind", ["class", "function"])
def test_each_api_object_is_rendered_once(site: Path, kind: str) -> None:
    names = _api_headings(site, kind)
    assert names, f"no {kind} headings found: has the API reference's markup changed?"
    repeated = sorted({n for n in names if names.count(n) > 1})
    assert not repeated, f"rendered more than once: {repeated}"


EXPORTING_MODULES = [
    "precondalg.structures",
    "precondalg.families",
    "precondalg.placement",
    "precondalg.objectives",
    "precondalg.fitters",
    "precondalg.optim",
]


@pytest.mark.parametrize("module", EXPORTING_MODULES)
def test_every_exported_class_and_function_is_in_the_api_reference(site: Path, module: str) -> None:
    rendered = set(_api_headings(site, "class")) | set(_api_headings(site, "function"))
    mod = importlib.import_module(module)
    exported = [n for n in mod.__all__ if inspect.isclass(obj := getattr(mod, n)) or inspect.isfunction(obj)]
    missing = sorted(set(exported) - rendered)
    assert not missing, f"{module}: not in docs/api/*.md: {missing}"


def test_var_arguments_are_not_required(site: Path) -> None:
    rows = [
        row
        for path in sorted((site / "api").rglob("*.html"))
        for row in re.findall(r'<tr class="doc-section-item">(.*?)</tr>', path.read_text(), re.S)
    ]
    var_rows = [r for r in rows if re.search(r"<code>\*", r)]
    assert var_rows, "no *args/**kwargs parameter rows found: has the API reference's markup changed?"
    required = [" ".join(_text(f"<article>{r}</article>").split()) for r in var_rows if "required" in r]
    assert not required, required


def test_generated_blocks_are_filled_in(site: Path) -> None:
    leftover = [name for name, page in _pages(site).items() if "generated:" in page]
    assert not leftover, leftover
    text = _text((site / "theory_checks" / "index.html").read_text())
    missing = [entry.id for entry in theory_checks.REGISTRY if entry.id not in text]
    assert not missing, missing


def test_theory_checks_page_generates_its_lists() -> None:
    page = (DOCS / "theory_checks.md").read_text()
    for marker in ("theory-checks", "theory-not-tested"):
        assert f"<!-- generated: {marker} -->" in page


# ------------------------------------------------------------------------- pages against the code


def _table_after(page: str, heading: str) -> list[list[str]]:
    """The rows (cells stripped, header and separator dropped) of the first table after `heading`."""
    text = (DOCS / page).read_text()
    lines = text[text.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return rows


def _code_names(cell: str) -> list[str]:
    """The identifiers in a cell's `code` spans, call parentheses and quotes dropped."""
    return [m.strip('"') for m in re.findall(r"`\"?([\w.]+)\"?(?:\([^`]*\))?`", cell)]


def _public_subclasses(module: str, base: type) -> set[str]:
    mod = importlib.import_module(module)
    return {
        name
        for name in mod.__all__
        if inspect.isclass(c := getattr(mod, name)) and issubclass(c, base) and not inspect.isabstract(c)
    }


def test_structures_overview_lists_every_structure() -> None:
    structures = _public_subclasses("precondalg.structures", pa.Structure) - {"Structure"}
    listed = [_code_names(row[0])[0] for row in _table_after("structures.md", "## Overview and cost")]
    assert sorted(listed) == sorted(structures)
    text = (DOCS / "structures.md").read_text()
    composites = {_code_names(row[0])[0] for row in _table_after("structures.md", "### Lazy composites")}
    for name in structures - composites:
        assert f"\n### {name}\n" in text, f"structures.md has no section for {name}"


RULE_TABLES = {
    "compose": ("compose", "rules"),
    "scale": ("compose", "scale_rules"),
    "add": ("add", "rules"),
    "inverse": ("inverse", "rules"),
    "gram": ("gram", "rules"),
    "transpose": ("transpose", "rules"),
}


def _documented_rules() -> dict[str, set[tuple[type, ...]]]:
    """operation -> the operand types the rules table of structures.md lists (fallback rows skipped)."""
    documented: dict[str, set[tuple[type, ...]]] = {op: set() for op in RULE_TABLES}
    for op_cell, operands, _ in _table_after("structures.md", "### Structure-preserving rules"):
        op = op_cell.strip("`")
        if op not in RULE_TABLES or operands.startswith(("otherwise", "anything else", "a `")):
            continue
        if "scalable" in operands:  # Scalar @ X for X with a scale rule: the scale table's business
            continue
        for part in re.split(r",\s*(?=(?:[^`]*`[^`]*`)*[^`]*$)", operands):  # commas outside `code`
            names = _code_names(part)
            if names:
                documented[op].add(tuple(getattr(pa, n) for n in names))
    return documented


@pytest.mark.parametrize("operation", sorted(RULE_TABLES))
def test_rules_table_lists_the_registered_rules(operation: str) -> None:
    module, table = RULE_TABLES[operation]
    registered = set(getattr(importlib.import_module(f"precondalg.structures.{module}"), table).types())
    documented = _documented_rules()[operation]
    if operation == "add":  # Scalar + Scalar is decided in add() itself, before the table
        documented.discard((pa.Scalar, pa.Scalar))

    def names(types: set[tuple[type, ...]]) -> list[str]:
        return sorted(" · ".join(t.__name__ for t in sig) for sig in types)

    assert names(documented) == names(registered)


def test_lie_group_table_lists_the_groups() -> None:
    from precondalg.structures import lie

    listed = {_code_names(row[0])[0] for row in _table_after("structures.md", "## Lie groups")}
    assert listed == {sig[0].__name__ for sig in lie.project_rules.types()}


def test_base_rules_table_matches_the_rules() -> None:
    rows = {_code_names(row[0])[0]: row for row in _table_after("concepts/base_rules.md", "# Base rules")}
    assert sorted(rows) == sorted(BASE_RULES)
    for name, rule in BASE_RULES.items():
        _, keys, state, _ = rows[name]
        assert set(_code_names(state)) == set(rule.init(torch.zeros(2))), name
        if hasattr(rule, "hyperparameters"):
            assert set(_code_names(keys)) == set(rule.hyperparameters), name


@pytest.mark.parametrize(
    ("page", "heading", "module", "base"),
    [
        ("concepts/placement.md", "## The placements", "precondalg.placement", "Placement"),
        ("concepts/objectives.md", "# Objectives", "precondalg.objectives", "Objective"),
        ("concepts/fitters.md", "# Fitters", "precondalg.fitters", "Fitter"),
    ],
)
def test_part_tables_list_every_class(page: str, heading: str, module: str, base: str) -> None:
    listed = {_code_names(row[0])[0] for row in _table_after(page, heading)}
    assert listed == _public_subclasses(module, getattr(importlib.import_module(module), base))


def test_supported_combinations_cover_every_family() -> None:
    families = importlib.import_module("precondalg.families")
    factories = {n for n in families.__all__ if inspect.isfunction(getattr(families, n))}
    rows = _table_after("concepts/index.md", "## Supported combinations")
    listed = {name for row in rows for name in _code_names(row[0])}
    assert not factories - listed, f"families without a row in the table: {sorted(factories - listed)}"


def test_cited_theory_checks_exist() -> None:
    """Check ids written on the pages (not the generated tables) name registered checks."""
    registered = set(theory_checks.REGISTRY.ids())
    cited = {
        f"{page.relative_to(DOCS)}: {match}"
        for page in DOCS.rglob("*.md")
        for match in CHECK_ID.findall(page.read_text())
        if match not in registered
    }
    assert not cited, sorted(cited)


def test_tolerance_classes_are_explained() -> None:
    rows = _table_after("theory_checks.md", "## Tolerance classes")
    listed = {row[0].strip("*").split("*")[0] for row in rows}
    assert listed == set(TOLERANCE_CLASSES)


# ------------------------------------------------------------------------------------ theory pages


def _hook():
    """docs/hooks/generated.py, imported as mkdocs imports it."""
    spec = importlib.util.spec_from_file_location("docs_generated_hook", DOCS / "hooks" / "generated.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_registered_claim_has_its_notation_and_no_other():
    assert sorted(CLAIMS) == sorted(theory_checks.REGISTRY.ids())
    assert all(1 <= len(formulas) <= 2 for formulas in CLAIMS.values())


@pytest.mark.parametrize("id", sorted(CLAIMS))
def test_every_formula_converts_to_mathml(id: str) -> None:
    """latex2mathml keeps an unknown command as text (<mi>\\foo</mi>) and an alignment & as an <mi>: both
    would render as garbage, so neither may appear."""
    from latex2mathml.converter import convert

    for latex in CLAIMS[id]:
        mathml = convert(latex, display="block")
        assert mathml.startswith("<math") and "<mrow>" in mathml, latex
        assert "\\" not in mathml and "<mi>&amp;</mi>" not in mathml and "<mi>&</mi>" not in mathml, latex


def _stale_report(tmp_path: Path, change) -> Path:
    data = json.loads((DOCS / "theory" / "report.json").read_text(encoding="utf-8"))
    change(data["records"])
    path = tmp_path / "report.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _rename_first_mutant(records: list[dict]) -> None:
    records[0]["mutants"][0]["name"] += " (renamed)"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda records: records.pop(), "missing: ['APO-ROBUST']"),
        (lambda records: records.append(dict(records[0], id="FOP-99")), "not registered: ['FOP-99']"),
        (lambda records: records[0].update(statement="an older statement"), "FOP-1 (statement)"),
        (lambda records: records[1].update(tolerance="E: 1e-3"), "FOP-2 (tolerance)"),
        (_rename_first_mutant, "FOP-1 (mutants)"),
    ],
)
def test_a_stale_report_fails_the_build(tmp_path: Path, change, message: str) -> None:
    """The committed report matches the registry; one that does not (an id missing or extra, a statement,
    tolerance or mutant changed since it ran) stops the build with the command that regenerates it."""
    hook = _hook()
    run, records = hook.load_report()
    assert list(records) == theory_checks.REGISTRY.ids() and run["summary"]
    with pytest.raises(RuntimeError) as error:
        hook.load_report(_stale_report(tmp_path, change))
    assert message in str(error.value) and hook.REPORT_COMMAND in str(error.value)
    with pytest.raises(RuntimeError, match="is missing: regenerate it with `python -m theory_checks --json"):
        hook.load_report(tmp_path / "absent.json")


def test_mutation_score_generator(tmp_path: Path) -> None:
    """The table of library mutants, their catchers and the survivors' explanations; a missing file fails
    the build with the command that writes it."""
    hook = _hook()
    mutants = [
        {"id": "lie-project-tril", "area": "structures", "file": "precondalg/structures/lie.py",
         "description": "tril for triu", "report": ["PSGD-8"], "tests": ["tests/test_x.py::test_y[a]"],
         "killed": True, "explanation": None},
        {"id": "no-op", "area": "engine", "file": "precondalg/optim/engine.py", "description": "a | b",
         "report": [], "tests": [], "killed": False, "explanation": "equivalent: nothing observable"},
    ]
    path = tmp_path / "mutation_score.json"
    path.write_text(json.dumps({"date": "2026-12-02", "machine": "a CPU", "commit": "abc1234",
                                "command": "python scripts/mutation_score.py", "seconds": 12.0,
                                "kill_rate": 0.5, "killed": 1, "total": 2, "mutants": mutants}))
    text = hook.mutation_score(path)
    assert "Kill rate **50.0%** (1 of 2 library mutants caught)" in text and "`abc1234`" in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == 2 and "[`PSGD-8`](theory/psgd.md#psgd-8)" in rows[0]
    assert "`tests/test_x.py::test_y[a]`" in rows[0] and "a \\| b" in rows[1] and rows[1].endswith("**no** |")
    assert "- `no-op`: equivalent: nothing observable" in text
    with pytest.raises(RuntimeError, match="run `python scripts/mutation_score.py`"):
        hook.mutation_score(tmp_path / "absent.json")


def test_overview_page_has_the_generated_sections() -> None:
    page = (DOCS / "theory_checks.md").read_text()
    for marker in ("theory-run", "theory-certified", "mutation-score"):
        assert f"<!-- generated: {marker} -->" in page
    for paper in ("fop", "psgd", "lodo", "apo"):
        assert f"(theory/{paper}.md)" in page
        assert f"<!-- generated: theory-{paper} -->" in (DOCS / "theory" / f"{paper}.md").read_text()


METHOD_PAGES = {"FOP": "presets", "PSGD": "psgd", "LODO": "lodo", "APO": "apo"}


@pytest.mark.parametrize("paper", sorted(METHOD_PAGES))
def test_theory_page_renders_each_claim_with_its_values(site: Path, paper: str) -> None:
    """Each claim of the paper: its anchor, its formulas as MathML, and for a check its last measured
    parts with margins; no script loaded from anywhere but the site itself."""
    page = (site / "theory" / paper.lower() / "index.html").read_text()
    ids = [i for i in theory_checks.REGISTRY.ids() if i.split("-")[0] == paper]
    for id in ids:
        start = page.index(f'id="{id.lower()}"')
        end = min([page.index(f'id="{j.lower()}"') for j in ids if page.index(f'id="{j.lower()}"') > start]
                  or [len(page)])
        section = page[start:end]
        assert section.count('<math xmlns="http://www.w3.org/1998/Math/MathML" display="block">') == len(
            CLAIMS[id]), id
        if isinstance(theory_checks.REGISTRY[id], Check):
            assert "Last measured:" in section and "<th>margin</th>" in section, id
    assert not re.findall(r'<script[^>]+src="(?:https?:)?//', page)
    assert "mathjax" not in page.lower() and "katex" not in page.lower()


@pytest.mark.parametrize("paper", sorted(METHOD_PAGES))
def test_method_pages_and_theory_pages_link_both_ways(site: Path, paper: str) -> None:
    method = _text_links(site / METHOD_PAGES[paper] / "index.html")
    theory = _text_links(site / "theory" / paper.lower() / "index.html")
    checks = [i for i in theory_checks.REGISTRY.ids()
              if i.split("-")[0] == paper and isinstance(theory_checks.REGISTRY[i], Check)]
    missing = [i for i in checks if f"../theory/{paper.lower()}/#{i.lower()}" not in method]
    assert not missing, f"{METHOD_PAGES[paper]}.md does not link to {missing}"
    assert any(link.startswith(f"../../{METHOD_PAGES[paper]}/") for link in theory)
    classical = _text_links(site / "classical" / "index.html")
    hook = _hook()
    for id in hook.CLASSICAL:
        assert f"../theory/{id.split('-')[0].lower()}/#{id.lower()}" in classical


def _text_links(path: Path) -> set[str]:
    """The href of every link in a page's article."""
    page = path.read_text()
    return set(re.findall(r'href="([^"]+)"', page[page.find("<article") : page.find("</article>")]))
