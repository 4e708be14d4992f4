"""MkDocs hook: lists on the site that mirror the code are generated from the code at build time.

A page writes a marker, ``<!-- generated: NAME -->``, on a line of its own (a table or a list) or inside
a line (a short inline list); the build replaces it with what `GENERATORS[NAME]` returns, read from the
code (the checkout's packages).  An unknown NAME, or a generator that fails, fails the build.  Markdown
outside markers is left alone.  Each row of the theory-check tables carries an anchor, the id in lower
case, so that pages can link to one check: ``theory_checks.md#psgd-8``; each claim of a paper's theory
page has the same anchor there: ``theory/psgd.md#psgd-8``.

The theory pages combine three sources, so that they cannot drift from the code: the registry (statement,
tolerance, mutants, tier), `theory_checks.notation.CLAIMS` (each claim in LaTeX, converted to MathML here
with latex2mathml: no script and no CDN, browsers render MathML), and the committed report
``docs/theory/report.json`` (the last measured values, with date, machine and commit).  The build fails
when the notation or the report does not match the registry: an id missing or extra, or a record whose
paper, statement, provenance, tolerance, reason or mutant names differ from the registry's (a stale
report); the message names the command that regenerates it (`REPORT_COMMAND`).

| NAME | what | read from |
| --- | --- | --- |
| ``theory-checks`` | table: id, paper, statement, tolerance, mutants, last result | registry, report |
| ``theory-not-tested`` | table: id, paper, claim, reason | ``theory_checks.REGISTRY`` |
| ``theory-counts`` | "N checks and M claims" | ``theory_checks.REGISTRY`` |
| ``theory-run`` | when, where and at which commit the report ran, its summary | the report |
| ``theory-certified`` | inline: the checks that certify a worst case with PEPit | registry, report |
| ``theory-fop``, ``-psgd``, ``-lodo``, ``-apo`` | a paper's claims | registry, notation, report |
| ``checked-by-fop``, ``-psgd``, ``-lodo``, ``-apo``, ``-classical`` | a method page's checks | registry |
| ``mutation-score`` | the library's mutation score | ``benchmarks/results/mutation_score.json`` |
| ``families`` | inline: the family constructors | ``precondalg.families.__all__`` |
| ``families-table`` | table: constructor, summary | ``precondalg.families.__all__`` |
| ``placements`` | inline: the placement classes | ``precondalg.placement.__all__`` |
| ``objectives`` | inline: the objective classes | ``precondalg.objectives.__all__`` |
| ``fitters`` | inline: the fitter classes | ``precondalg.fitters.__all__`` |
| ``base-rules`` | inline: the base-rule names | ``precondalg.optim.base_rules.BASE_RULES`` |
| ``structure-costs`` | table: worked costs of example instances | each instance's ``cost()`` |
| ``experiments-list`` | table: every experiment, its paper, figure, minutes | the experiments' registry |
| ``experiment-fop-e1``, … | an experiment's command, tables, figures, run | ``docs/experiments/results/`` |
| ``comparison-TASK`` | the harness's table and curves on a built-in task | ``docs/comparison/TASK`` |

The experiment and comparison blocks read the committed results of `RESULTS_COMMAND`; the build fails
when a registered experiment or a built-in task has none, or when they were made by a run whose
experiment settings differ from the registry's (name, paper, figure).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

MARKER = re.compile(r"<!--\s*generated:\s*([\w-]+)\s*-->")
ROOT = Path(__file__).resolve().parents[2]
"""The repository (this file is docs/hooks/generated.py)."""
REPORT = ROOT / "docs" / "theory" / "report.json"
REPORT_COMMAND = "python -m theory_checks --json docs/theory/report.json"
"""The command that writes `REPORT` (the whole registry, every check and its mutants: 2 min)."""
MUTATION_SCORE = Path(
    os.environ.get("PRECONDALG_MUTATION_SCORE", ROOT / "benchmarks" / "results" / "mutation_score.json")
)
"""The mutation score's results (the environment variable PRECONDALG_MUTATION_SCORE names another file)."""
MUTATION_SCORE_COMMAND = "python scripts/mutation_score.py"
EXPERIMENT_RESULTS = ROOT / "docs" / "experiments" / "results"
COMPARISON_RESULTS = ROOT / "docs" / "comparison"
RESULTS_COMMAND = "python scripts/docs_results.py"
"""The command that writes `EXPERIMENT_RESULTS` and `COMPARISON_RESULTS` (``--only experiments`` or
``--only comparison`` for one of them)."""
PAPERS = {
    "FOP": ("Moskovitz et al. 2019, First-Order Preconditioning via Hypergradient Descent", "presets.md#fop",
            "FOP in Presets"),
    "PSGD": ("Xi-Lin Li, Preconditioner on Matrix Lie Group for SGD, ICLR 2019", "psgd.md", "PSGD"),
    "LODO": ("Liao et al., Learning to Optimize Quasi-Newton Methods, TMLR 2023", "lodo.md", "LODO"),
    "APO": ("Bae et al. 2022, Amortized Proximal Optimization", "apo.md", "APO"),
}
"""paper prefix -> (paper, its method page, the link text of the method page)."""
CLASSICAL = ("PSGD-16", "APO-6")
"""Checks that also check the classical rows (K-FAC's Kronecker inverse and its factored damping)."""


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


def code(text: str) -> str:
    """Text as one inline code span (backticks inside become quotes; escapes would show literally)."""
    return "`" + " ".join(str(text).split()).replace("`", "'") + "`"


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


def _paper(id: str) -> str:
    return id.split("-")[0]


def _link(id: str) -> str:
    """A Markdown link, from a page in docs/ itself, to a claim on its paper's theory page."""
    return f"[`{id}`](theory/{_paper(id).lower()}.md#{id.lower()})"


def _entry(e: Any) -> list[str]:
    """The first cells of a registry row: the id (its anchor, linked to its paper's page), paper and
    provenance, statement."""
    anchor = f'<span id="{e.id.lower()}"></span>'
    return [anchor + _link(e.id), f"{cell(e.paper)} {cell(e.tag)}", cell(e.statement)]


def load_report(path: Path = REPORT) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The committed report: its run (date, machine, commit, torch, summary) and id -> record.

    Raises:
        RuntimeError: the report is missing or not in the ``--json`` format, or it does not match the
            registry (ids missing or extra, or a paper, statement, provenance, tolerance, reason or
            mutant names that differ: a stale report); the message names `REPORT_COMMAND`.
    """
    regenerate = f"regenerate it with `{REPORT_COMMAND}`"
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RuntimeError(f"{name} is missing: {regenerate}") from None
    if not isinstance(data, dict) or set(data) != {"run", "records"}:
        raise RuntimeError(f"{name} is not a `--json` report of this version: {regenerate}")
    from theory_checks import REGISTRY, Check

    records = {r["id"]: r for r in data["records"]}
    missing = [i for i in REGISTRY.ids() if i not in records]
    extra = [i for i in records if i not in REGISTRY.ids()]
    stale = []
    for e in REGISTRY:
        r = records.get(e.id)
        if r is None:
            continue
        fields = {"paper": e.paper, "statement": e.statement, "provenance": e.tag}
        if isinstance(e, Check):
            fields |= {"tolerance": e.tolerance, "mutants": list(e.mutants)}
        else:
            fields["reason"] = e.reason
        found = {k: [m["name"] for m in r["mutants"]] if k == "mutants" else r.get(k) for k in fields}
        stale += [f"{e.id} ({k})" for k in fields if found[k] != fields[k]]
    if missing or extra or stale:
        raise RuntimeError(
            f"{name} does not match the registry (missing: {missing or 'none'}; not "
            f"registered: {extra or 'none'}; changed since the report ran: {stale or 'none'}): {regenerate}"
        )
    return data["run"], records


def _number(x: Any) -> str:
    """A measured value as the report prints it (3 significant digits; JSON's "nan"/"inf" as is)."""
    return "-" if x is None else x if isinstance(x, str) else f"{x:.3g}"


def _margin(item: dict[str, Any]) -> str:
    """The margin of a part (or of a record's headline) as the report prints it."""
    from theory_checks.cli import format_margin

    if isinstance(item["margin"], str):  # JSON's "nan", "inf"
        return item["margin"]
    return format_margin(item["margin"], item["relation"], item["passed"])


def _result(r: dict[str, Any]) -> str:
    """A record's result, mutants caught and seconds, e.g. "**PASS**, mutants caught 3/3, 0.12 s"."""
    caught = sum(m["failed"] for m in r["mutants"])
    return f"**{r['status']}**, mutants caught {caught}/{len(r['mutants'])}, {r['seconds']:.2f} s"


def theory_checks() -> str:
    checks, _ = _registry()
    _, records = load_report()
    rows = []
    for c in checks:
        r = records[c.id]
        rows.append([*_entry(c), cell(c.tolerance), "; ".join(cell(name) for name in c.mutants),
                     f"{_result(r)}; margin {_margin(r)}"])
    header = ["id", "paper [provenance]", "statement", "tolerance", "mutants (each must FAIL)", "last run"]
    return table(header, rows)


def theory_not_tested() -> str:
    _, claims = _registry()
    rows = [[*_entry(c), cell(c.reason)] for c in claims]
    return table(["id", "paper [provenance]", "claim", "why it is not tested"], rows)


def theory_counts() -> str:
    checks, claims = _registry()
    return f"{len(checks)} checks and {len(claims)} claims listed as not tested"


def theory_run() -> str:
    run, _ = load_report()
    return (
        f"The values on these pages were measured on {run['date']} on {cell(run['machine'])}, at commit "
        f"`{run['commit']}`, torch {run['torch']}, Python {run['python']}, by `{run['command']}`: "
        f"{cell(run['summary'])}. The raw records are in [report.json](theory/report.json)."
    )


def certified(e: Any, record: dict[str, Any]) -> bool:
    """Whether a check certifies a worst case with PEPit (its tolerance or a measured part names it)."""
    return "PEPit" in e.tolerance or any("PEPit" in p["name"] for p in record["parts"])


def theory_certified() -> str:
    checks, _ = _registry()
    _, records = load_report()
    return ", ".join(_link(c.id) for c in checks if certified(c, records[c.id]))


def _math(latex: str) -> str:
    from latex2mathml.converter import convert

    return convert(latex, display="block")


def _claim(e: Any, record: dict[str, Any]) -> list[str]:
    """A claim's section on its paper's page: heading (anchor), reference, formulas, what is checked and
    how, and the last measured values."""
    from theory_checks import Check
    from theory_checks.cli import tolerance_classes
    from theory_checks.notation import CLAIMS

    _, method, method_name = PAPERS[_paper(e.id)]
    methods = f"[{method_name}](../{method})"
    if e.id in CLASSICAL:
        methods += ", [Classical](../classical.md)"
    lines = [
        f"## {e.id} {{ #{e.id.lower()} }}",
        "",
        f"{cell(e.paper)} · provenance `{e.tag}` · method: {methods}",
        "",
        '<div class="theory-claim">',
        *(_math(latex) for latex in CLAIMS[e.id]),
        "</div>",
        "",
    ]
    if not isinstance(e, Check):
        return [*lines, f"**Not tested.** {cell(e.statement)} {cell(e.reason)}", ""]
    seed = inspect.signature(e.fn).parameters.get("seed")
    draws = (
        f"seeded draws (keyword `seed`, default {seed.default}): the report is deterministic"
        if seed is not None
        else "fixed instances (no `seed` keyword)"
    )
    how = [
        ["family and draws", draws],
        ["tolerance", f"class {tolerance_classes(e.tolerance)}: {cell(e.tolerance)}"],
        ["mutants (each must FAIL)", "; ".join(cell(name) for name in e.mutants)],
        ["worst case", "certified by PEPit, and sampled" if certified(e, record) else "sampled"],
        ["tier", e.tier],
    ]
    parts = [
        [cell(p["name"]), _number(p["measured"]), f"{cell(p['relation'])} {_number(p['bound'])}", _margin(p),
         "yes" if p["passed"] else "**no**"]
        for p in record["parts"]
    ]
    return [
        *lines,
        f"**Checked:** {cell(e.statement)}",
        "",
        table(["how", ""], how),
        "",
        f"**Last measured:** {_result(record)}.",
        "",
        table(["part", "measured", "bound", "margin", "passed"], parts),
        "",
    ]


def theory_paper(paper: str) -> str:
    """The theory page of one paper: its claims (checks, then those not tested) in report order."""
    from theory_checks import REGISTRY
    from theory_checks.notation import CLAIMS

    missing = [i for i in REGISTRY.ids() if i not in CLAIMS]
    extra = [i for i in CLAIMS if i not in REGISTRY.ids()]
    if missing or extra:
        raise RuntimeError(
            f"theory_checks/notation.py does not match the registry: ids without a formula {missing}, "
            f"formulas of unregistered ids {extra}"
        )
    run, records = load_report()
    name, method, method_name = PAPERS[paper]
    lines = [
        f"Paper: *{cell(name)}*. Method page: [{method_name}](../{method}). Measured on {run['date']} on "
        f"{cell(run['machine'])} at commit `{run['commit']}` (torch {run['torch']}); margins as defined on "
        "the [overview](../theory_checks.md#margins).",
        "",
    ]
    for e in REGISTRY:
        if _paper(e.id) == paper:
            lines += _claim(e, records[e.id])
    return "\n".join(lines)


def checked_by(ids: list[str]) -> str:
    """A method page's list of checks, each linked to its paper's theory page."""
    from theory_checks import REGISTRY

    return "\n".join(f"- {_link(i)}: {cell(REGISTRY[i].paper)}" for i in ids)


def _checked_by_paper(paper: str) -> str:
    checks, _ = _registry()
    return checked_by([c.id for c in checks if _paper(c.id) == paper])


def mutation_score(path: Path = MUTATION_SCORE) -> str:
    """The library's mutation score: kill rate, run, every mutant and the survivors' explanations.

    Raises:
        RuntimeError: the file does not exist; the message names `MUTATION_SCORE_COMMAND`.
    """
    if not path.exists():
        name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        raise RuntimeError(f"{name} is missing: run `{MUTATION_SCORE_COMMAND}` to write it")
    from theory_checks import REGISTRY

    data = json.loads(path.read_text(encoding="utf-8"))
    rows = [
        [code(m["id"]), cell(m["area"]), code(m["file"]), cell(m["description"]),
         ", ".join(_link(i) if i in REGISTRY.ids() else code(i) for i in m["report"]) or "-",  # or "timeout"
         ", ".join(code(t) for t in m["tests"]) or "-", "yes" if m["killed"] else "**no**"]
        for m in data["mutants"]
    ]
    survivors = [f"- {code(m['id'])}: {cell(m['explanation'] or 'no explanation recorded')}"
                 for m in data["mutants"] if not m["killed"]]
    lines = [
        f"Kill rate **{data['kill_rate']:.1%}** ({data['killed']} of {data['total']} library mutants "
        "caught), "
        f"measured on {cell(data['date'])} on {cell(data['machine'])} at commit {code(data['commit'])} by "
        f"{code(data['command'])} in {data['seconds']:.0f} s.",
        "",
        table(["mutant", "area", "file", "the bug", "caught by the report", "first failing test", "killed"],
              rows),
        "",
        "Survivors:" if survivors else "No mutant survived.",
        "",
        *survivors,
    ]
    return "\n".join(lines).rstrip()


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


# ------------------------------------------------------------------------------ experiments, comparison


def _experiments() -> dict[str, Any]:
    from precondalg.experiments import registered

    return registered()


def experiments_list() -> str:
    """Every registered experiment: name (linked to its section), paper, figure, reproduces, minutes."""
    rows = []
    for e in _experiments().values():
        page = e.name.split("-")[0].lower()
        link = f"[{e.name}]({page}.md#{e.name.lower()})"
        minutes = f"{e.minutes:g} (quick {e.quick_minutes:g})"
        rows.append([link, cell(e.paper), cell(e.figure), cell(e.reproduces), minutes])
    return table(["experiment", "paper", "figure / table", "reproduces", "minutes, 2-core CPU"], rows)


def _results(folder: Path, what: str) -> dict[str, Any]:
    name = folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder
    try:
        return json.loads((folder / "results.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RuntimeError(
            f"{name}/results.json is missing ({what}): regenerate with `{RESULTS_COMMAND}`"
        ) from None


def _run_line(r: dict[str, Any], command: str) -> str:
    m = r["machine"]
    commit = m.get("git_commit") or "unknown"
    if m.get("git_dirty_precondalg"):
        commit += " (with uncommitted changes)"
    return (
        f"Command: `{command}`. Run on {m['date'][:10]}, CPU {cell(m['cpu_model'])}, torch {m['torch']} with "
        f"{m['torch_threads']} thread(s), precondalg at {commit}; wall time {r['wall_seconds']:.0f} s."
    )


def _summary_body(folder: Path) -> str:
    """summary.md without its heading and its closing run lines (the page prints its own)."""
    lines = (folder / "summary.md").read_text(encoding="utf-8").splitlines()
    body = [ln for ln in lines if not ln.startswith("### ")]
    ends = ("Seeds [", "Machine:")  # the run lines; a comparison's protocol line and legend stay
    cut = next((i for i, ln in enumerate(body) if ln.startswith(ends)), len(body))
    return "\n".join(body[:cut]).strip()


def experiment_section(name: str) -> str:
    """An experiment's block: command, tables and claims, figures, and the run (date, machine, commit)."""
    exp = _experiments()[name]
    folder = EXPERIMENT_RESULTS / name
    r = _results(folder, f"experiment {name}")
    recorded = r["experiment"]
    changed = [k for k in ("name", "paper", "figure") if recorded.get(k) != getattr(exp, k)]
    if changed:
        raise RuntimeError(f"docs/experiments/results/{name} was made with other settings ({changed}): "
                           f"regenerate with `{RESULTS_COMMAND} --only experiments`")
    cfg = r["config"]
    command = (
        f"python -m precondalg.experiments run {name} --seeds {len(cfg['seeds'])} --steps {cfg['steps']}"
    )
    figures = sorted(p.name for p in folder.glob("*.png"))
    images = "\n\n".join(f"![{name}: {Path(f).stem.replace('_', ' ')}](results/{name}/{f})" for f in figures)
    csvs = ", ".join(f"[{f.name}](results/{name}/{f.name})" for f in sorted(folder.glob("*.csv")))
    return "\n\n".join([
        f"*{cell(exp.reproduces)}* — {cell(exp.paper)}, {cell(exp.figure)}.",
        _summary_body(folder),
        images,
        f"Data: [results.json](results/{name}/results.json), {csvs}. " + _run_line(r, command),
    ])


def comparison_section(task: str) -> str:
    """The harness's table and loss curves on a built-in task, with the command and the run."""
    folder = COMPARISON_RESULTS / task
    r = _results(folder, f"comparison on {task}")
    cfg = r["config"]
    user = cfg.get("user_lr_grids", {})  # absent from runs that predate user grids: none
    grids = "".join(f" --grid {name}={','.join(f'{v:g}' for v in lrs)}" for name, lrs in user.items())
    command = (f"python -m precondalg.experiments compare --task {task} --methods {','.join(r['methods'])} "
               f"--budget {cfg['budget']} --seeds {len(cfg['seeds'])} --steps {cfg['steps']}{grids}")
    return "\n\n".join([
        _summary_body(folder),
        f"![{task}: loss per step](comparison/{task}/loss.png)",
        f"Data: [results.json](comparison/{task}/results.json), [loss.csv](comparison/{task}/loss.csv). "
        + _run_line(r, command),
    ])


def _comparison_tasks() -> list[str]:
    from precondalg.experiments.tasks import TASKS

    return list(TASKS)


GENERATORS: dict[str, Callable[[], str]] = {
    "theory-checks": theory_checks,
    "theory-not-tested": theory_not_tested,
    "theory-counts": theory_counts,
    "theory-run": theory_run,
    "theory-certified": theory_certified,
    **{f"theory-{paper.lower()}": functools.partial(theory_paper, paper) for paper in PAPERS},
    **{f"checked-by-{paper.lower()}": functools.partial(_checked_by_paper, paper) for paper in PAPERS},
    "checked-by-classical": functools.partial(checked_by, list(CLASSICAL)),
    "mutation-score": mutation_score,
    "families": families,
    "families-table": families_table,
    "placements": placements,
    "objectives": objectives,
    "fitters": fitters,
    "base-rules": base_rules,
    "structure-costs": structure_costs,
    "experiments-list": experiments_list,
    **{f"experiment-{name.lower()}": functools.partial(experiment_section, name) for name in _experiments()},
    **{f"comparison-{task}": functools.partial(comparison_section, task) for task in _comparison_tasks()},
}
