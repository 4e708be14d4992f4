"""The README's quick start is what CI runs: two commands, the second called verbatim by `.ci/run`."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", section, re.S)
    assert block is not None, "README's Quick start section has no code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quick_start_has_exactly_two_commands() -> None:
    commands = _quick_start_commands()
    assert len(commands) == 2, commands
    assert commands[0].endswith("python -m theory_checks"), commands[0]
    assert commands[1].endswith("python -m pytest"), commands[1]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _quick_start_commands()[1] in ci_lines


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
