"""User errors: one vocabulary of settings, named by each front end; library messages free of CLI flags."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from DblurDoseLib import cli
from DblurDoseLib.errors import SETTINGS, DblurDoseError

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "DblurDoseLib"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]+")


def test_the_command_line_names_every_setting_with_a_real_flag():
    assert set(cli.FLAGS) == set(SETTINGS)
    parser_flags = {opt for action in _all_actions(cli.build_parser()) for opt in action.option_strings}
    missing = sorted(flag for flag in cli.FLAGS.values() if flag not in parser_flags)
    assert not missing, f"cli.FLAGS names options the parser does not have: {missing}"


def _all_actions(parser):
    import argparse

    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_actions(sub)


def test_describe_appends_the_front_ends_names_and_unknown_keys_are_refused():
    exc = DblurDoseError("give the SPECT's units", settings=("spect_units",))
    assert exc.describe(cli.FLAGS) == "give the SPECT's units [--spect-units]"
    assert exc.describe({}) == "give the SPECT's units"
    assert str(exc) == "give the SPECT's units"
    with pytest.raises(ValueError, match="unknown setting"):
        DblurDoseError("x", settings=("no_such_setting",))


def test_the_cli_prints_the_flag_beside_a_library_message(tmp_path, capsys):
    from DblurDoseLib import dose

    def refuse(*args, **kwargs):
        raise DblurDoseError("the SPECT's units are unknown; give them", settings=("spect_units",))

    import unittest.mock as mock

    with mock.patch.object(dose, "compute_dose_rate_maps", refuse):
        spect = tmp_path / "s.nrrd"
        ct = tmp_path / "c.nrrd"
        import numpy as np

        from DblurDoseLib.io.volume import Volume, write_volume

        vol = Volume(np.ones((4, 4, 4), np.float32), (4.0, 4.0, 4.0), (0.0, 0.0, 0.0))
        write_volume(vol, spect)
        write_volume(Volume(np.zeros((4, 4, 4), np.float32), (4.0, 4.0, 4.0), (0.0, 0.0, 0.0)), ct)
        code = cli.main(["dose", "--spect", str(spect), "--ct", str(ct), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().endswith("[--spect-units]"), err


def test_the_slicer_module_labels_every_setting():
    tree = ast.parse((ROOT / "DblurDose" / "DblurDose.py").read_text())
    labels = [node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
              and any(isinstance(t, ast.Name) and t.id == "SETTING_LABELS" for t in node.targets)]
    assert labels, "DblurDose.py defines no SETTING_LABELS (its names for errors.SETTINGS)"
    keys = {k.value for k in labels[0].keys}
    assert keys == set(SETTINGS)


def _raised_messages(path: Path):
    """String pieces of the messages given to DblurDoseError (and its subclasses) in one file."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")).endswith("Error"):
            for arg in node.args[:1]:
                for piece in ast.walk(arg):
                    if isinstance(piece, ast.Constant) and isinstance(piece.value, str):
                        yield node.lineno, piece.value


def test_library_messages_name_no_command_line_flag():
    """The library serves the command line and Slicer alike: a message says what to change in words,
    and the settings key lets each front end add its own name (cli.py itself may name flags)."""
    offenders = []
    for path in sorted(LIBRARY.rglob("*.py")):
        if path.name == "cli.py":
            continue
        for line, text in _raised_messages(path):
            if FLAG.search(text):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {text.strip()[:80]}")
    assert not offenders, "library messages naming CLI flags:\n" + "\n".join(offenders)


def test_the_slicer_modules_unit_choices_are_the_librarys_vocabulary():
    """The module writes its SPECT-unit choices out (it is parsed before the library is importable):
    they must be units.SPECT_UNITS' labels and keywords, in the same order."""
    from DblurDoseLib.units import SPECT_UNITS

    tree = ast.parse((ROOT / "DblurDose" / "DblurDose.py").read_text())
    node = next(n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "SPECT_UNIT_CHOICES" for t in n.targets))
    assert list(ast.literal_eval(node).items()) == [(unit.label, key) for key, unit in SPECT_UNITS.items()]
