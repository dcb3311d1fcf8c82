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


#: The library's layers (ARCHITECTURE.md): a module imports only modules of lower layers, or of its own package.
LAYERS = {
    "": 0, "__version__": 0, "DATA_DIR": 0, "errors": 0, "devices": 0, "units": 0,
    "io": 1, "geometry": 2, "physics": 3, "simulation": 4, "learning": 4, "evaluation": 5,
    "memory": 6, "dose": 7, "dosimetry": 8, "data": 8, "demo": 9, "demo_timepoints": 10, "mrml": 11, "cli": 12,
}


def _layer_of(module: str) -> tuple[int, str]:
    """(layer, package) of a dotted DblurDoseLib module name such as 'DblurDoseLib.physics.dvk'."""
    parts = module.split(".")[1:]
    key = parts[0] if parts else ""
    assert key in LAYERS, f"{module}: add its package to LAYERS (and to ARCHITECTURE.md)"
    return LAYERS[key], key


def _library_imports():
    """(importing module, imported module, line) for every import of the library by the library."""
    import ast

    lib = ROOT / "DblurDoseLib"
    for path in sorted(lib.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        package = parts if rel.name == "__init__" else parts[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name == "DblurDoseLib" or name.startswith("DblurDoseLib."):
                    yield ".".join(parts), name, node.lineno


def test_the_library_imports_only_lower_layers():
    """The layering of ARCHITECTURE.md holds for every import, at file scope or inside functions."""
    wrong = []
    for importer, imported, line in _library_imports():
        (mine, my_package), (theirs, their_package) = _layer_of(importer), _layer_of(imported)
        if theirs > mine or (theirs == mine and my_package != their_package and mine != 0):
            wrong.append(f"{importer}:{line} imports {imported} (layer {theirs} > {mine})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_layer_check_sees_each_kind_of_import():
    found = {(a, b) for a, b, _ in _library_imports()}
    assert ("DblurDoseLib.dose", "DblurDoseLib.physics.dvk") in found  # relative, inside a function
    assert any(a == "DblurDoseLib.physics.kernels" and b == "DblurDoseLib.DATA_DIR" for a, b in found)


def test_packaging_finds_every_library_package():
    """pyproject.toml's package search ships every folder of DblurDoseLib that holds Python files."""
    import tomllib
    from setuptools import find_packages

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    found = set(find_packages(where=str(ROOT), include=include))
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "DblurDoseLib").rglob("*.py")}
    assert folders <= found, f"not packaged: {sorted(folders - found)} (add an __init__.py)"
