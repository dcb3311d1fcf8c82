"""The module's panel (.ui) without Slicer: it loads with Qt's QUiLoader, holds every widget the
module code uses, binds each SlicerParameterName to a parameter of the right type, and renders.

Slicer's own widget classes (qMRML*, ctk*) are not available here; they are replaced by the Qt
classes they stand for (a node combo box by a QComboBox, a collapsible button by a group box).

``python Testing/test_slicer_ui.py`` writes the panel picture used by the README to
``Resources/Screenshots/panel.png``.
"""

from __future__ import annotations

import ast
import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "DblurDose" / "DblurDose.py"
UI = ROOT / "DblurDose" / "Resources" / "UI" / "DblurDose.ui"
SCREENSHOT = ROOT / "Resources" / "Screenshots" / "panel.png"

#: Slicer class -> (Qt stand-in, properties the stand-in does not have).
STAND_INS = {
    "qMRMLWidget": "QWidget",
    "ctkCollapsibleButton": "QGroupBox",
    "qMRMLNodeComboBox": "QComboBox",
    "qMRMLSegmentSelectorWidget": "QComboBox",
    "ctkPathLineEdit": "QLineEdit",
}
#: Widget classes a parameter type can bind to (after Slicer's parameterNodeWrapper connectors).
BINDABLE = {
    "bool": {"QCheckBox", "QPushButton", "ctkCheckablePushButton"},
    "int": {"QSpinBox", "QSlider", "QComboBox"},
    "float": {"QDoubleSpinBox", "ctkDoubleSpinBox", "ctkSliderWidget", "qMRMLSpinBox", "QComboBox"},
    "str": {"QComboBox", "QLineEdit", "QLabel", "QTextEdit"},
    "node": {"qMRMLNodeComboBox"},
}
#: What the picture shows in the stand-in combo boxes.
SAMPLE_TEXT = {
    "spectSelector": "DblurDose demo SPECT",
    "ctSelector": "DblurDose demo CT",
    "segmentSelector": "DblurDose demo organs: all segments",
    "lineSelector": "DblurDose demo line",
    "resultChartSelector": "DblurDose demo SPECT dose-rate profile chart",
    "resultTableSelector": "DblurDose demo SPECT dose-rate statistics",
}


def module_source() -> str:
    return MODULE.read_text()


def used_widget_names() -> set[str]:
    return set(re.findall(r"self\.ui\.(\w+)", module_source()))


def parameter_types() -> dict[str, str]:
    """Name -> 'bool' | 'int' | 'float' | 'str' | 'node' | 'list' of the parameter-node class."""
    tree = ast.parse(module_source())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DblurDoseParameterNode")
    kinds = {}
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign):
            text = ast.unparse(stmt.annotation)
            if text.startswith("Annotated["):
                text = text[len("Annotated["):].split(",")[0]
            kinds[stmt.target.id] = "node" if text.startswith("vtkMRML") else ("list" if text.startswith("list") else text)
    return kinds


def module_choices(name: str) -> list[str]:
    tree = ast.parse(module_source())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
            return list(ast.literal_eval(node.value))
    raise KeyError(name)


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}


def slicer_parameter_name(widget: ET.Element) -> str | None:
    for prop in widget.findall("property"):
        if prop.get("name") == "SlicerParameterName":
            return prop.findtext("string")
    return None


def stand_in_xml() -> bytes:
    """The .ui with Slicer classes replaced by Qt ones (and their Slicer-only properties dropped)."""
    tree = ET.parse(UI)
    root = tree.getroot()
    for widget in root.iter("widget"):
        original = widget.get("class")
        if original not in STAND_INS:
            continue
        widget.set("class", STAND_INS[original])
        collapsed = False
        for prop in list(widget.findall("property")):
            name = prop.get("name")
            if original == "ctkCollapsibleButton" and name == "text":
                prop.set("name", "title")
            elif name == "collapsed":
                collapsed = prop.findtext("bool") == "true"
                widget.remove(prop)
            elif name not in ("toolTip", "title", "text", "geometry", "windowTitle") and prop.get("stdset") != "0":
                widget.remove(prop)
        if original == "ctkCollapsibleButton":
            title = widget.find("property[@name='title']/string")
            title.text = ("\u25b8 " if collapsed else "\u25be ") + title.text
            if collapsed:
                ET.SubElement(ET.SubElement(widget, "property", name="collapsedStandIn", stdset="0"), "bool").text = "true"
    for tag in ("customwidgets", "connections"):
        for element in root.findall(tag):
            root.remove(element)
    return ET.tostring(root, encoding="utf-8")


@pytest.fixture(scope="module")
def app():
    pytest.importorskip("PySide6.QtUiTools", reason="needs PySide6-Essentials (the 'test' extra)")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    return QApplication.instance() or QApplication(["test"])


def load_panel(app):
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice
    from PySide6.QtUiTools import QUiLoader

    buffer = QBuffer()
    buffer.setData(QByteArray(stand_in_xml()))
    buffer.open(QIODevice.ReadOnly)
    panel = QUiLoader().load(buffer)
    assert panel is not None, "QUiLoader could not read DblurDose.ui"
    return panel


# ------------------------------------------------------------------------------------------------
def test_ui_loads_and_holds_every_widget_the_module_uses(app):
    from PySide6.QtCore import QObject

    panel = load_panel(app)
    assert panel.objectName() == "DblurDose"
    missing = sorted(n for n in used_widget_names() if panel.findChild(QObject, n) is None)
    assert not missing, f"the module uses widgets the .ui lacks: {missing}"
    assert used_widget_names() >= {"applyButton", "segmentSelector", "statusLabel"}


def test_every_parameter_binding_names_a_parameter_of_a_bindable_type():
    kinds = parameter_types()
    bound = {}
    for name, widget in ui_widgets().items():
        parameter = slicer_parameter_name(widget)
        if parameter is None:
            continue
        assert parameter in kinds, f"{name} binds to unknown parameter {parameter!r}"
        assert widget.get("class") in BINDABLE[kinds[parameter]], \
            f"{name} ({widget.get('class')}) cannot represent a {kinds[parameter]} parameter"
        bound[parameter] = name
    # the segment selector and the HU-table path are wired by hand: no connector exists for them; the
    # time points (lists) are shown in a table filled by the widget and added/removed by its buttons;
    # the outputs of the last runs are kept for the next run, not shown
    hand_wired = {"segmentation", "segmentIds", "huCalibrationFile", "timePoints"}
    kept_outputs = {"doseRateOutputs", "absorbedDoseOutputs"}
    assert {kinds[name] for name in kept_outputs} == {"list"}
    kinds = {name: kind for name, kind in kinds.items() if name not in kept_outputs}
    assert set(kinds) - set(bound) == hand_wired
    for name in ("segmentSelector", "huCalibrationPathLineEdit"):
        assert slicer_parameter_name(ui_widgets()[name]) is None
    assert "setSelectedSegmentIDs" in module_source() and "segmentSelectionChanged" in module_source()


def test_scene_reaches_every_mrml_widget():
    root = ET.parse(UI).getroot()
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    mrml_widgets = {n for n, w in ui_widgets().items() if w.get("class", "").startswith("qMRML") and n != "DblurDose"}
    assert mrml_widgets == receivers


def test_module_file_imports_nothing_heavy_at_file_scope():
    tree = ast.parse(module_source())
    top_level = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            top_level.add((node.module or "").split(".")[0])
    assert top_level <= {"importlib", "logging", "os", "sys", "traceback", "typing", "vtk", "slicer"}, top_level


def module_state() -> dict:
    """The module's real initial state: its parameter-node defaults and whether the CNN is offered,
    with the text beside it (DblurDose.py executed on slicer-core, stand-ins for Slicer's Qt side)."""
    pytest.importorskip("slicer", reason="needs slicer-core (the 'slicer' extra) to load the module file")
    from slicer_helpers import import_module_file

    module = import_module_file()
    defaults = {name: getattr(module.DblurDoseParameterNode, name) for name in parameter_types()
                if hasattr(module.DblurDoseParameterNode, name)}
    offered, hint = module.cnnChoice()
    return {"defaults": defaults, "cnnOffered": offered, "cnnHint": hint}


def panel_in_module_state(app):
    """The panel as the module shows it on entry: widgets bound to parameters hold their defaults,
    the CNN checkbox and its hint as ``cnnChoice`` sets them; combo boxes show the demo's nodes."""
    from PySide6.QtWidgets import QCheckBox, QComboBox, QGroupBox, QLabel, QLineEdit, QSpinBox, QWidget

    state = module_state()
    panel = load_panel(app)
    for name, text in SAMPLE_TEXT.items():
        panel.findChild(QComboBox, name).addItem(text)
    for name, choices in (("spectUnitsComboBox", "SPECT_UNIT_CHOICES"), ("deviceComboBox", "DEVICE_CHOICES")):
        panel.findChild(QComboBox, name).addItems(module_choices(choices))
    for name, widget in ui_widgets().items():
        value = state["defaults"].get(slicer_parameter_name(widget))
        if value is None:
            continue
        if widget.get("class") == "QCheckBox":
            panel.findChild(QCheckBox, name).setChecked(bool(value))
        elif widget.get("class") == "QSpinBox":
            panel.findChild(QSpinBox, name).setMaximum(max(int(value), 99))
            panel.findChild(QSpinBox, name).setValue(int(value))
        elif widget.get("class") == "QComboBox" and isinstance(value, str):
            panel.findChild(QComboBox, name).setCurrentText(value)
    defaults = state["defaults"]
    panel.findChild(QWidget, "cnnCheckBox").setEnabled(state["cnnOffered"])
    panel.findChild(QLabel, "cnnInfoLabel").setText(state["cnnHint"])
    # as onParameterNodeModified: the difference map needs both methods
    panel.findChild(QWidget, "differenceCheckBox").setEnabled(bool(defaults["methodDvk"] and defaults["methodCnn"]))
    panel.findChild(QLineEdit, "huCalibrationPathLineEdit").setPlaceholderText("(built-in table)")
    panel.findChild(QLabel, "unitsInfoLabel").setText("Units read from the image: Bq/mL.")
    for name in ("calibrationLabel", "calibrationSpinBox", "durationLabel", "durationSpinBox"):
        panel.findChild(QWidget, name).setVisible(False)  # shown only for SPECTs in counts
    for box in panel.findChildren(QGroupBox):
        if box.property("collapsedStandIn"):
            for child in box.findChildren(QWidget):
                child.setVisible(False)
            box.setMaximumHeight(24)
    panel.findChild(QWidget, "applyButton").setEnabled(True)  # the demo's SPECT and CT are selected
    panel.findChild(QLabel, "statusLabel").setText(
        "Done: " + ", ".join(f"DblurDose demo SPECT dose rate {m}" for m, key in (("DVK", "methodDvk"),
                                                                                   ("CNN", "methodCnn"))
                             if defaults[key]) + ".")
    return panel


def render(app, path: Path) -> Path:
    panel = panel_in_module_state(app)
    panel.resize(440, 10)
    panel.adjustSize()
    panel.resize(440, panel.sizeHint().height())
    path.parent.mkdir(parents=True, exist_ok=True)
    assert panel.grab().save(str(path)), f"could not write {path}"
    return path


def test_panel_shows_the_modules_real_cnn_state(app):
    from PySide6.QtWidgets import QCheckBox, QLabel

    state = module_state()
    panel = panel_in_module_state(app)
    cnn = panel.findChild(QCheckBox, "cnnCheckBox")
    assert cnn.isChecked() == state["defaults"]["methodCnn"] == state["cnnOffered"]
    assert cnn.isEnabled() == state["cnnOffered"]
    assert panel.findChild(QLabel, "cnnInfoLabel").text() == state["cnnHint"]
    assert panel.findChild(QCheckBox, "differenceCheckBox").isEnabled() == state["cnnOffered"]


def test_panel_renders(app, tmp_path):
    from PySide6.QtGui import QImage

    image = QImage(str(render(app, tmp_path / "panel.png")))
    assert image.width() >= 400 and image.height() >= 300
    colors = {image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}
    assert len(colors) > 5, "the rendered panel is blank"


if __name__ == "__main__":  # write the README's picture of the panel
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    print(render(QApplication.instance() or QApplication(sys.argv), SCREENSHOT))
