"""MkDocs hook: lists on the site that mirror the code are generated from the code at build time.

A page writes a marker, ``<!-- generated: NAME -->``, on a line of its own (a table or a list) or inside
a line (a short inline list); the build replaces it with what `GENERATORS[NAME]` returns, read from the
code (the checkout's packages).  An unknown NAME, or a generator that fails, fails the build.  Markdown
outside markers is left alone.  Each row of the theory-check tables carries an anchor, the id in lower
case, so that pages can link to one check: ``theory_checks.md#psgd-8``.

| NAME | what | read from |
| --- | --- | --- |
| ``theory-checks`` | table: id, paper, statement, tolerance, mutants | ``theory_checks.REGISTRY`` |
| ``theory-not-tested`` | table: id, paper, claim, reason | ``theory_checks.REGISTRY`` |
| ``theory-counts`` | "N checks and M claims" | ``theory_checks.REGISTRY`` |
| ``families`` | inline: the family constructors | ``precondalg.families.__all__`` |
| ``families-table`` | table: constructor, summary | ``precondalg.families.__all__`` |
| ``placements`` | inline: the placement classes | ``precondalg.placement.__all__`` |
| ``objectives`` | inline: the objective classes | ``precondalg.objectives.__all__`` |
| ``fitters`` | inline: the fitter classes | ``precondalg.fitters.__all__`` |
| ``base-rules`` | inline: the base-rule names | ``precondalg.optim.base_rules.BASE_RULES`` |
| ``structure-costs`` | table: worked costs of example instances | each instance's ``cost()`` |
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

MARKER = re.compile(r"<!--\s*generated:\s*([\w-]+)\s*-->")


def on_config(config: Any, **kwargs: Any) -> Any:
    """Make the repository's packages importable (the checkout, not only an installed copy)."""
    root = str(Path(config.config_file_path).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    return config


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    """Replace every marker on the page with its generated text."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise KeyError(
                f"{page.file.src_path}: unknown generated block {name!r}; known: {sorted(GENERATORS)}"
            )
        return GENERATORS[name]()

    return MARKER.sub(replace, markdown)


# ---------------------------------------------------------------------------------------------- helpers


def cell(text: str) -> str:
    """Plain text made safe for one Markdown table cell (no pipes, emphasis, HTML or line breaks)."""
    text = " ".join(str(text).split())
    for char in "\\`*_|[]":
        text = text.replace(char, "\\" + char)
    return text.replace("<", "&lt;").replace(">", "&gt;")


def markdown_cell(text: str) -> str:
    """Markdown (a docstring's) made safe for one table cell: one line, no pipes."""
    return " ".join(str(text).split()).replace("|", "\\|")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def code_list(names: list[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)


def summary(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n", 1)[0]


def source_order(objects: list[Any]) -> list[Any]:
    def key(obj: Any) -> tuple[str, int]:
        try:
            return inspect.getsourcefile(obj) or "", inspect.getsourcelines(obj)[1]
        except (OSError, TypeError):
            return "", 0

    return sorted(objects, key=key)


def exported(module_name: str) -> list[Any]:
    module = importlib.import_module(module_name)
    return [getattr(module, name) for name in module.__all__]


def concrete_subclasses(module_name: str, base_name: str) -> list[type]:
    base = getattr(importlib.import_module(module_name), base_name)
    return source_order(
        [
            obj
            for obj in exported(module_name)
            if inspect.isclass(obj) and issubclass(obj, base) and not inspect.isabstract(obj)
        ]
    )


def call_signature(function: Callable[..., Any]) -> str:
    """`name(required, args)`: the arguments a call must give."""
    required = [
        p.name
        for p in inspect.signature(function).parameters.values()
        if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return f"{function.__name__}({', '.join(required)})"


# ------------------------------------------------------------------------------------------- generators


def _registry() -> tuple[list[Any], list[Any]]:
    from theory_checks import REGISTRY, Check

    entries = list(REGISTRY)
    return [e for e in entries if isinstance(e, Check)], [e for e in entries if not isinstance(e, Check)]


def _entry(e: Any) -> list[str]:
    """The first cells of a registry row: the id (with its anchor), paper and provenance, statement."""
    return [f'<span id="{e.id.lower()}"></span>`{e.id}`', f"{cell(e.paper)} {cell(e.tag)}", cell(e.statement)]


def theory_checks() -> str:
    checks, _ = _registry()
    rows = [[*_entry(c), cell(c.tolerance), "; ".join(cell(name) for name in c.mutants)] for c in checks]
    return table(["id", "paper [provenance]", "statement", "tolerance", "mutants (each must FAIL)"], rows)


def theory_not_tested() -> str:
    _, claims = _registry()
    rows = [[*_entry(c), cell(c.reason)] for c in claims]
    return table(["id", "paper [provenance]", "claim", "why it is not tested"], rows)


def theory_counts() -> str:
    checks, claims = _registry()
    return f"{len(checks)} checks and {len(claims)} claims listed as not tested"


def _families() -> list[Callable[..., Any]]:
    families = importlib.import_module("precondalg.families")
    return source_order(
        [
            obj
            for obj in exported("precondalg.families")
            if inspect.isfunction(obj) and obj is not families.Family
        ]
    )


def families() -> str:
    return code_list([call_signature(f) for f in _families()]) + ", any `Family(init, form)`"


def families_table() -> str:
    rows = [[f"`{call_signature(f)}`", markdown_cell(summary(f))] for f in _families()]
    return table(["family", "what it learns"], rows)


def placements() -> str:
    return code_list([c.__name__ for c in concrete_subclasses("precondalg.placement", "Placement")])


def objectives() -> str:
    return code_list([c.__name__ for c in concrete_subclasses("precondalg.objectives", "Objective")])


def fitters() -> str:
    return code_list([c.__name__ for c in concrete_subclasses("precondalg.fitters", "Fitter")])


def base_rules() -> str:
    from precondalg.optim.base_rules import BASE_RULES

    return code_list([f'"{name}"' for name in BASE_RULES])


def structure_costs() -> str:
    import torch

    import precondalg as pa

    def tri(n: int) -> Any:
        return pa.Triangular(torch.eye(n))

    network = pa.permutation_network(100, generator=torch.Generator().manual_seed(0))
    depth, _, _, k = network.blocks.shape
    instances = [
        ("`Scalar`, n = 1000", pa.Scalar(torch.tensor(1.0), 1000)),
        ("`Diagonal`, n = 1000", pa.Diagonal(torch.ones(1000))),
        ("`Dense`, n = 100", pa.Dense(torch.eye(100))),
        (
            "`IdentityPlusLowRank`, n = 1000, r = 10",
            pa.IdentityPlusLowRank(torch.zeros(1000, 10), torch.zeros(1000, 10)),
        ),
        ("`Triangular`, n = 100", tri(100)),
        ("`Normalization`, n = 101", pa.Normalization(torch.ones(101), torch.zeros(100))),
        ("`Kronecker(Triangular 100, Triangular 50)`", pa.Kronecker(tri(100), tri(50))),
        ("`KroneckerSum(Triangular 100, Triangular 50)`", pa.KroneckerSum(tri(100), tri(50))),
        (
            "`Eigenbasis`, m = 100, n = 50",
            pa.Eigenbasis(torch.eye(100), torch.eye(50), torch.ones(100, 50)),
        ),
        (f"`permutation_network(100)` (N = {depth}, k = {k}, ñ = {network.width})", network),
        ("`gram(permutation_network(100))`", pa.gram(network)),
        (
            "`BlockDiagonal(Dense 100, Diagonal 10)`",
            pa.BlockDiagonal(pa.Dense(torch.eye(100)), pa.Diagonal(torch.ones(10))),
        ),
    ]

    def number(value: int | None) -> str:
        return "—" if value is None else f"{value:,}"

    rows = []
    for label, A in instances:
        cost = A.cost()
        rows.append(
            [
                label,
                f"{A.shape[0]}×{A.shape[1]}",
                number(cost.stored),
                number(cost.matvec),
                number(cost.solve),
            ]
        )
    return table(["instance", "shape", "stored", "matvec", "solve"], rows)


GENERATORS: dict[str, Callable[[], str]] = {
    "theory-checks": theory_checks,
    "theory-not-tested": theory_not_tested,
    "theory-counts": theory_counts,
    "families": families,
    "families-table": families_table,
    "placements": placements,
    "objectives": objectives,
    "fitters": fitters,
    "base-rules": base_rules,
    "structure-costs": structure_costs,
}
