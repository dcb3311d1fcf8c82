"""Repository hygiene: the README's two commands, CI running the second, ruff clean."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)]


def test_readme_opens_with_two_commands_and_ci_runs_the_second():
    commands = _quick_start_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    assert "dblurdose demo" in commands[0]
    assert "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci
    assert "torch==2.13.0" in commands[1]


def test_ruff_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff not installed")
    result = subprocess.run([ruff, "check", "--output-format", "concise", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


#: functions longer than this (lines of code: the docstring not counted) must say why in their docstring
MAX_FUNCTION_LINES = 80
LONG_REASON = "Long because"


def _functions(paths):
    """(path, function node, lines of code) of every function: its lines less its docstring's."""
    import ast

    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                        and isinstance(first.value.value, str):
                    lines -= first.end_lineno - first.lineno + 1
                yield path, node, lines


def test_functions_are_short_or_say_why_they_are_long():
    """Layout rule: a function over MAX_FUNCTION_LINES lines is cut into named steps, or its docstring
    says why not ("Long because ...": e.g. a declarative table that reads best in one piece)."""
    import ast

    paths = sorted((ROOT / "DblurDoseLib").rglob("*.py")) + sorted((ROOT / "DblurDose").rglob("*.py"))
    long = [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines of code)"
            for path, node, lines in _functions(paths)
            if lines > MAX_FUNCTION_LINES and LONG_REASON not in (ast.get_docstring(node) or "")]
    assert not long, "functions over 80 lines without a reason in their docstring:\n" + "\n".join(long)


def test_the_rule_finds_a_long_function(tmp_path):
    """The check above sees a long function, and accepts one whose docstring gives the reason."""
    import ast

    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "a.py").write_text(f"def long():\n{body}\n\n\ndef ok():\n    \"\"\"{LONG_REASON} it is a table.\"\"\"\n{body}\n")
    found = {node.name: (lines, ast.get_docstring(node) or "") for _, node, lines in _functions([tmp_path / "a.py"])}
    assert found["long"][0] > MAX_FUNCTION_LINES and LONG_REASON not in found["long"][1]
    assert found["ok"][0] == MAX_FUNCTION_LINES + 1 and LONG_REASON in found["ok"][1]
