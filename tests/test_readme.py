"""The README's quick start is what CI runs: two commands, the second called verbatim by `.ci/run`.

Each command starts from a fresh clone: it creates and activates the virtual environment `.venv`,
installs torch first, then precondalg, then runs the report (the first) or the test suite (the second).
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = "python -m venv .venv && . .venv/bin/activate && "
TORCH = "python -m pip install torch==2.13.0 && "


def _commands(text: str, heading: str) -> list[str]:
    section = text.split(heading, 1)[1]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", section, re.S)
    assert block is not None, f"no code block after {heading!r}"
    return [line for line in block.group(1).splitlines() if line.strip()]


def _quick_start_commands() -> list[str]:
    return _commands((ROOT / "README.md").read_text(), "## Quick start")


def test_quick_start_has_exactly_two_commands() -> None:
    commands = _quick_start_commands()
    assert len(commands) == 2, commands
    assert commands[0].endswith("python -m theory_checks"), commands[0]
    assert commands[1].endswith("python -m pytest"), commands[1]


def test_quick_start_commands_create_and_activate_a_venv_then_install_torch_first() -> None:
    first, second = _quick_start_commands()
    assert first == VENV + TORCH + 'python -m pip install -e ".[theory]" && python -m theory_checks', first
    dev = 'python -m pip install -e ".[dev]" && '
    references = "python -m pip install --no-deps -r requirements-references.txt && "
    assert second == VENV + TORCH + dev + references + "python -m pytest", second


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _quick_start_commands()[1] in ci_lines


def test_ci_runs_everything_after_the_test_command_in_its_venv() -> None:
    """The activation in the test command persists (it runs in the script's own shell, with `set -e`):
    the lines after it (slow tests, linter, docs build, report, the experiments' quick run, the browser
    check) run in `.venv`, and the script checks that."""
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and line[0] != "#"]
    assert "set -euo pipefail" in lines
    after = lines[lines.index(_quick_start_commands()[1]) + 1 :]
    assert after and after[0].startswith('test "$VIRTUAL_ENV" -ef .venv'), after
    for command in ("python -m pytest -m slow > build/slow-tests.log 2>&1 &", "ruff check .",
                    "mkdocs build --strict",
                    "python -m theory_checks",
                    "python -m precondalg.experiments run all --quick --strict --out build/experiments "
                    "--no-progress",
                    "PRECONDALG_BROWSER=required python -m pytest -m browser"):
        assert command in after, command
    assert not any(line.startswith(("(", "bash ", "sh ", "deactivate")) for line in after), after


def test_installation_page_shows_the_quick_start() -> None:
    page = (ROOT / "docs" / "installation.md").read_text()
    assert _commands(page, "## The quick start") == _quick_start_commands()
    assert "https://download.pytorch.org/whl/cpu" in page
    assert "https://download.pytorch.org/whl/cu" in page


def test_readme_example_runs() -> None:
    text = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", text, re.S)
    assert example is not None
    namespace: dict = {}
    exec(compile(example.group(1), "README example", "exec"), namespace)  # noqa: S102
    pa = namespace["pa"]
    assert isinstance(namespace["P"], pa.Kronecker)
    assert [type(f) for f in namespace["Q"].factors] == [pa.Triangular, pa.Diagonal]
    assert isinstance(namespace["dP"], pa.Kronecker)
    Q1, Q2, G = (namespace[k] for k in ("Q1", "Q2", "G"))
    expected = Q1.to_dense().T @ Q1.to_dense() @ G @ Q2.to_dense().T @ Q2.to_dense()
    assert (namespace["step"] - expected).abs().max() <= 1e-5 * expected.abs().max()
