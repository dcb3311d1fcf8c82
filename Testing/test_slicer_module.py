"""DblurDose/DblurDose.py outside the Slicer application: its Logic on a real MRML scene.

slicer-core has MRML but not Slicer's Qt layer; the few Qt-side names the module file imports
(``ScriptedLoadableModule``, ``parameterNodeWrapper``) and the Sample Data module are replaced by
minimal stand-ins, so that the Logic, the demo loader and the dependency helpers run for real.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer")
pytestmark = pytest.mark.slicer

import slicer  # noqa: E402
from slicer_helpers import SlicerScene, import_module_file, module_stand_ins  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMALL = (33, 64, 64)


class _SampleDataSource:
    def __init__(self, sampleName=None, uris=None, fileNames=None, nodeNames=None, loadFileTypes=None, **kwargs):
        self.sampleName, self.uris, self.fileNames = sampleName, uris, fileNames
        self.nodeNames, self.loadFileTypes = nodeNames, loadFileTypes


class _SampleDataLogic:
    """Reads file:// sources into ``slicer.mrmlScene`` with MRML storage nodes (as Slicer's readers do)."""

    registered: list = []

    @staticmethod
    def registerCustomSampleDataCategory(category, title):
        pass

    @staticmethod
    def registerCustomSampleDataSource(**kwargs):
        _SampleDataLogic.registered.append(kwargs)

    def downloadFromSource(self, source):
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        readers = {"VolumeFile": ("vtkMRMLScalarVolumeNode", "vtkMRMLVolumeArchetypeStorageNode"),
                   "SegmentationFile": ("vtkMRMLSegmentationNode", "vtkMRMLSegmentationStorageNode"),
                   "MarkupsFile": ("vtkMRMLMarkupsLineNode", "vtkMRMLMarkupsJsonStorageNode")}
        nodes = []
        for uri, name, kind in zip(source.uris, source.nodeNames, source.loadFileTypes):
            assert uri.startswith("file:"), uri
            node_class, storage_class = readers[kind]
            node = slicer.mrmlScene.AddNewNodeByClass(node_class, name)
            storage = slicer.mrmlScene.AddNewNodeByClass(storage_class)
            storage.SetFileName(url2pathname(urlparse(uri).path))
            assert storage.ReadData(node)
            node.SetName(name)  # Slicer's readers name the node as asked (a markups file holds its own name)
            nodes.append(node)
        return nodes


@pytest.fixture
def module(monkeypatch, tmp_path):
    """DblurDose.py imported with stand-ins for Slicer's Qt-side modules; slicer.mrmlScene is a test scene."""
    scene = SlicerScene()
    stubs = {**module_stand_ins(),
             "SampleData": types.SimpleNamespace(SampleDataLogic=_SampleDataLogic, SampleDataSource=_SampleDataSource)}
    for name, stub in stubs.items():
        monkeypatch.setitem(sys.modules, name, stub)
    monkeypatch.setattr(slicer, "mrmlScene", scene.scene, raising=False)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(cachePath=str(tmp_path / "cache")), raising=False)
    monkeypatch.setattr(slicer.util, "setSliceViewerLayers", lambda **kwargs: None)
    mod = import_module_file(stubs)
    mod.test_scene = scene
    return mod


def test_module_imports_without_heavy_packages(module):
    assert "torch" not in module.__dict__ and "numpy" not in module.__dict__
    assert module.SPECT_UNIT_CHOICES["counts"] == "counts" and module.DEVICE_CHOICES["GPU"] == "gpu"


def test_library_found_from_a_clone(module, monkeypatch):
    root = str(ROOT)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != ROOT])
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "DblurDoseLib" and root not in sys.path else real_find_spec(name, *a))
    module.ensureLibraryImportable()
    assert sys.path[0] == root
    assert importlib.util.find_spec("DblurDoseModuleLib") is not None  # the module's helpers, beside it


def test_requirements_are_readable_and_unpinned(module):
    from DblurDoseModuleLib.dependencies import distributionInstalled, readRequirements

    requirements = readRequirements(str(ROOT / "DblurDose" / "Resources" / "requirements.txt"))
    assert "scipy>=1.10" in requirements
    assert not any("==" in r for r in requirements)
    assert distributionInstalled("scipy>=1.10") and not distributionInstalled("no-such-package-x>=1")


def test_missing_packages_are_installed_after_asking_and_a_failure_is_reported(module, monkeypatch):
    """The helper package sits in a folder beside DblurDose.py (not a module candidate for Slicer)."""
    from DblurDoseModuleLib import dependencies

    assert Path(dependencies.__file__).parent == ROOT / "DblurDose" / "DblurDoseModuleLib"
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)  # Slicer before 5.11: slicer.util.pip_install
    asked, installed, shown = [], [], []
    monkeypatch.setattr(dependencies, "distributionInstalled", lambda requirement: requirement.startswith("scipy"))
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, **kw: asked.append(text) or True,
                        raising=False)
    monkeypatch.setattr(slicer.util, "pip_install", lambda packages: installed.append(packages), raising=False)
    assert module.ensureDependencies()  # torch is there: only the missing requirement is installed
    assert installed == [["icrp107-database>=0.0.3"]] and "icrp107-database" in asked[0]
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, **kw: False, raising=False)
    assert not module.ensureDependencies()  # declined: nothing installed
    assert len(installed) == 1

    def offline(packages):
        raise RuntimeError("pip: no network")

    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, **kw: True, raising=False)
    monkeypatch.setattr(slicer.util, "pip_install", offline, raising=False)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: shown.append(text), raising=False)
    assert not module.ensureDependencies()
    assert shown and "no network" in shown[0]


def test_demo_case_loads_and_the_logic_computes_it(module, monkeypatch):
    from DblurDoseLib.mrml import sampledata

    monkeypatch.setattr(sampledata, "TEST_SHAPE", SMALL)
    nodes = module.loadDemoCase(small=True)
    assert set(nodes) == {"ct", "spect", "segmentation", "line"}
    assert module.DblurDoseLogic.detectSpectUnits(nodes["spect"]) == "bqml"
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    study = sh.GetItemParent(sh.GetItemByDataNode(nodes["ct"]))
    assert sh.GetItemLevel(study) == "Study"

    logic = module.DblurDoseLogic()
    fractions = []
    result = logic.process(nodes["spect"], nodes["ct"], nodes["segmentation"], ["kidney_left", "liver"], nodes["line"],
                           methods=("dvk",), device="cpu", progress=lambda f, m: fractions.append(f))
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [result.statisticsTable.GetCellText(r, 0) for r in range(2)] == ["kidney_left", "liver"]
    assert sh.GetItemParent(sh.GetItemByDataNode(result.doseNodes["dvk"])) == study
    rows = result.profileTable.GetNumberOfRows()
    p = [0.0, 0.0, 0.0]
    nodes["line"].GetNthControlPointPositionWorld(1, p)
    nodes["line"].SetNthControlPointPositionWorld(1, p[0] / 2, p[1], p[2])
    assert result.profileTable.GetNumberOfRows() < rows
    # counts need calibration and duration: the options reach the library
    dose = slicer.util.arrayFromVolume(result.doseNodes["dvk"])
    counts = logic.process(nodes["spect"], nodes["ct"], spectUnits="counts", calibrationCpsPerMBq=40.0,
                           acquisitionDurationS=25000.0, methods=("dvk",), device="cpu", differenceMap=False)
    voxel_ml = np.prod(nodes["spect"].GetSpacing()) / 1000.0
    # counts per voxel -> Bq/mL = counts / (cps/MBq * s) * 1e6 / voxel mL; same image read as Bq/mL
    factor = 1e6 / (40.0 * 25000.0) / voxel_ml
    np.testing.assert_allclose(slicer.util.arrayFromVolume(counts.doseNodes["dvk"]), dose * factor,
                               rtol=2e-3, atol=1e-6 * float(dose.max()) * factor)
    logic.stopObservingLine()


def test_readme_console_example_gives_the_numbers_it_states(module, monkeypatch, tmp_path):
    """The README's Python block, run as in Slicer's console on the demo case loaded as *Load demo case*
    does, prints the numbers its comments state; the library call in it and ``dblurdose dose`` on the
    demo's files give the same map."""
    from DblurDoseLib.cli import main
    from DblurDoseLib.io.volume import read_volume

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    (block,) = blocks  # the README's only Python example (one added later needs its own test here)
    stated = [[float(v) for v in re.findall(r"about ([\d.]+)", line)] for line in block.splitlines()
              if line.startswith("print(")]
    nodes = module.loadDemoCase()  # the full demo case
    logic = module.DblurDoseLogic()
    monkeypatch.setattr(slicer.util, "getModuleLogic", lambda name: logic if name == "DblurDose" else None)
    printed = []
    namespace = {"slicer": slicer, "getNode": slicer.util.getNode, "print": lambda value: printed.append(value)}
    exec(compile(block, "README.md", "exec"), namespace)
    warnings, activity, top, table = printed
    assert warnings == [] and stated[0] == []
    spect = slicer.util.arrayFromVolume(nodes["spect"]).astype(np.float64)
    spect_mbq = spect.sum() * np.prod(nodes["spect"].GetSpacing()) / 1e3 / 1e6
    assert activity == pytest.approx(spect_mbq, rel=1e-3)  # all of the demo's SPECT activity, in MBq
    assert activity == pytest.approx(stated[1][0], rel=0.02)
    assert top == pytest.approx(stated[2][0], rel=0.05)
    means = dict(zip(table["Segment"], table["Mean"].astype(float)))
    kidneys, liver = stated[3]
    assert means["kidney_left"] == pytest.approx(kidneys, rel=0.1)
    assert means["kidney_right"] == pytest.approx(kidneys, rel=0.1)
    assert means["liver"] == pytest.approx(liver, rel=0.1)
    dose = slicer.util.arrayFromVolume(logic.result.doseNodes["dvk"])
    library = namespace["result"]  # the block's second call, straight to the library
    assert library is not logic.result and library.report["total_activity_mbq"] == pytest.approx(activity)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(library.doseNodes["dvk"]), dose, rtol=1e-6)
    # the command line on the files the demo case was loaded from
    files = {role: Path(module.demoFolder()) / name for role, name in module._demoFileNames().items()}
    out = tmp_path / "cli"
    assert main(["dose", "--spect", str(files["spect"]), "--ct", str(files["ct"]), "--seg", str(files["segmentation"]),
                 "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    np.testing.assert_allclose(read_volume(out / "dose_rate_dvk.nrrd").array, dose, rtol=1e-5,
                               atol=1e-6 * float(dose.max()))
    rows = [line.split(",") for line in (out / "stats.csv").read_text().splitlines() if not line.startswith("#")]
    cli = {r[0]: float(r[rows[0].index("mean_mGy_per_h")]) for r in rows[1:]}
    assert cli["kidney_left"] == pytest.approx(means["kidney_left"], rel=1e-4)
    logic.stopObservingLine()


def test_sample_data_registration_uses_local_files_only(module):
    _SampleDataLogic.registered.clear()
    module.registerSampleData()
    (source,) = _SampleDataLogic.registered
    assert source["sampleName"] == module.DEMO_SAMPLE_NAME
    assert all(uri.startswith("file:") for uri in source["uris"])
    assert source["loadFileTypes"] == ["VolumeFile", "VolumeFile", "SegmentationFile", "MarkupsFile"]
    assert callable(source["customDownloader"])


def test_units_from_dicom_are_optional(module):
    node = module.test_scene.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "spect")
    assert module.DblurDoseLogic.detectSpectUnits(node) is None  # no units, no DICOM: no crash
    node.SetAttribute("DICOM.instanceUIDs", "1.2.3")
    assert module.DblurDoseLogic.detectSpectUnits(node) is None  # no DICOM database: no crash


def test_cnn_is_offered_only_with_its_code_and_weights(module, tmp_path, monkeypatch):
    library = tmp_path / "DblurDoseLib"
    (library / "data" / "models").mkdir(parents=True)
    (library / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "DblurDoseLib" or m.startswith("DblurDoseLib.")]:
        monkeypatch.delitem(sys.modules, name)
    assert not module.cnnShipped()
    (library / "inference.py").write_text("")
    assert not module.cnnShipped()  # no weights yet
    (library / "data" / "models" / "dblurdosenet.pt").write_bytes(b"x")
    assert module.cnnShipped()


def test_cnn_is_ticked_by_default_only_where_its_weights_are(module, tmp_path, monkeypatch):
    """With the shipped weights the CNN is ticked and its cost shown; without them it is unticked
    and the panel says why."""
    offered, hint = module.cnnChoice()
    assert offered and module.DblurDoseParameterNode.methodCnn is True
    assert "about a minute on a CPU" in hint
    library = tmp_path / "DblurDoseLib"
    (library / "data" / "models").mkdir(parents=True)
    (library / "__init__.py").write_text("")
    (library / "inference.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "DblurDoseLib" or m.startswith("DblurDoseLib.")]:
        monkeypatch.delitem(sys.modules, name)
    without = import_module_file()  # the module as Slicer loads it with this weightless library
    offered, hint = without.cnnChoice()
    assert not offered and without.DblurDoseParameterNode.methodCnn is False
    assert "no trained DblurDoseNet weights" in hint


def _absorbed_dose_parameters(module, nodes, times, **changes):
    """The parameter node's fields the absorbed-dose panel uses (the wrapper is a stand-in here)."""
    defaults = dict(timePoints=[(n, nodes["ct"], h) for n, h in times], segmentation=nodes["segmentation"],
                    segmentIds=["kidney_left", "liver"], fitModel="Auto (AICc)", singleTimePoint="Hänscheid",
                    registration="None", administeredMBq=0.0, methodDvk=True, methodCnn=False, device="CPU",
                    spectUnits="Bq/mL", calibrationCpsPerMBq=0.0, acquisitionDurationS=0.0,
                    electronOnlyScaling=False, huCalibrationFile="", drvhBins=50, absorbedDoseOutputs=[],
                    spectFwhmMm=0.0)
    return types.SimpleNamespace(**{**defaults, **changes})


def test_absorbed_dose_panel_logic_sorts_checks_and_computes(module, monkeypatch):
    from DblurDoseLib.mrml import sampledata

    monkeypatch.setattr(sampledata, "TEST_SHAPE", SMALL)
    nodes = module.loadDemoCase(small=True)
    later = module.test_scene.logics["Volumes"].CloneVolume(slicer.mrmlScene, nodes["spect"], "SPECT 72 h")
    slicer.util.updateVolumeFromArray(later, slicer.util.arrayFromVolume(nodes["spect"]) * np.float32(0.5))
    times = [(later, 72.0), (nodes["spect"], 24.0)]  # added out of order
    pn = _absorbed_dose_parameters(module, nodes, times)
    assert [h for h, _s, _c in module.timePointRows(pn)] == [24.0, 72.0]
    assert module.timePointsProblem(pn) is None
    assert "same time" in module.timePointsProblem(_absorbed_dose_parameters(module, nodes, [(later, 24.0), (nodes["spect"], 24.0)]))
    assert "at least one" in module.timePointsProblem(_absorbed_dose_parameters(module, nodes, []))
    assert "segments" in module.timePointsProblem(_absorbed_dose_parameters(module, nodes, times, segmentation=None))

    result = module.DblurDoseLogic().processAbsorbedDose(pn)
    dose = slicer.util.arrayFromVolume(result.doseNode)
    assert result.doseNode.GetVoxelValueUnits().GetCodeValue() == "Gy" and dose.max() > 0
    # halving in 48 h: an effective half-life of 48 h for every voxel and VOI
    assert [v.name for v in result.dosimetry.vois] == ["kidney_left", "liver"]
    for voi in result.dosimetry.vois:
        assert voi.integral.effective_half_life_h == pytest.approx(48.0, rel=1e-3)
    assert result.tacChart.GetNumberOfPlotSeriesNodes() == 4


def _dose_rate_parameters(nodes, **changes):
    """The parameter node's fields Apply uses (the wrapper is a stand-in here)."""
    defaults = dict(spectVolume=nodes["spect"], ctVolume=nodes["ct"], segmentation=nodes["segmentation"],
                    segmentIds=["kidney_left", "liver"], profileLine=nodes["line"], methodDvk=True, methodCnn=False,
                    device="CPU", spectUnits="Bq/mL", calibrationCpsPerMBq=0.0, acquisitionDurationS=0.0,
                    electronOnlyScaling=False, huCalibrationFile="", drvhBins=50, differenceMap=True,
                    doseRateOutputs=[], spectFwhmMm=0.0)
    return types.SimpleNamespace(**{**defaults, **changes})


def test_the_spect_resolution_reaches_the_cnn_and_only_the_cnn(module, monkeypatch):
    """"SPECT resolution (FWHM)": given (above 0) with the CNN ticked, Apply and the absorbed dose hand it to the
    library (the CNN's map is then kept consistent with the SPECT); 0 or the DVK alone hand nothing."""
    from DblurDoseLib import mrml

    calls = []
    result = types.SimpleNamespace(nodes=lambda: [], stopObservingLine=lambda: None)
    monkeypatch.setattr(mrml, "computeDoseRateMaps", lambda *a, **k: calls.append(k) or result)
    monkeypatch.setattr(mrml, "computeAbsorbedDose", lambda *a, **k: calls.append(k) or result)
    nodes = {"spect": None, "ct": None, "segmentation": None, "line": None}
    logic = module.DblurDoseLogic()
    for cnn, fwhm, expected in ((True, 12.5, 12.5), (True, 0.0, None), (False, 12.5, None)):
        logic.processParameterNode(_dose_rate_parameters(nodes, methodCnn=cnn, methodDvk=True, spectFwhmMm=fwhm))
        logic.processAbsorbedDose(_absorbed_dose_parameters(module, {"ct": None, "segmentation": None}, [],
                                                            methodCnn=cnn, spectFwhmMm=fwhm))
        assert [k.get("spect_fwhm_mm") for k in calls[-2:]] == [expected, expected]


def _ids(scene) -> list:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def test_apply_twice_refills_the_outputs_and_a_loaded_scene_follows_the_line_again(module, monkeypatch, tmp_path):
    """Apply twice adds no node (the outputs are kept in the parameter node, as LineProfile's); after
    the scene is saved and loaded, setting the parameter node again makes the profile follow its line."""
    from DblurDoseLib.mrml import sampledata

    monkeypatch.setattr(sampledata, "TEST_SHAPE", SMALL)
    nodes = module.loadDemoCase(small=True)
    pn = _dose_rate_parameters(nodes)
    logic = module.DblurDoseLogic()
    first = logic.processParameterNode(pn)
    outputs = [n.GetID() for n in pn.doseRateOutputs]
    ids = _ids(slicer.mrmlScene)
    assert first.doseNodes["dvk"].GetID() in outputs and first.profileTable.GetID() in outputs
    second = logic.processParameterNode(pn)
    assert _ids(slicer.mrmlScene) == ids and [n.GetID() for n in pn.doseRateOutputs] == outputs
    assert second.doseNodes["dvk"] is first.doseNodes["dvk"] and not first.observingLine and second.observingLine
    logic.stopObservingLine()

    loaded = module.test_scene.save_mrb(tmp_path / "saved.mrb")
    scene = type(module.test_scene).load_mrb(loaded).scene
    monkeypatch.setattr(slicer, "mrmlScene", scene)
    back = {role: scene.GetNodeByID(node.GetID()) for role, node in nodes.items()}
    line = back["line"]
    saved = _dose_rate_parameters(back, doseRateOutputs=[scene.GetNodeByID(i) for i in outputs])
    fresh = module.DblurDoseLogic()  # as after Slicer restarts
    fresh.restoreResult(saved)
    assert fresh.result is not None and fresh.result.observingLine
    assert fresh.result.doseNodes["dvk"].GetScene() is scene and fresh.result.profileTable.GetScene() is scene
    rows = fresh.result.profileTable.GetNumberOfRows()
    p = [0.0, 0.0, 0.0]
    line.GetNthControlPointPositionWorld(1, p)
    line.SetNthControlPointPositionWorld(1, p[0] / 2, p[1], p[2])
    assert fresh.result.profileTable.GetNumberOfRows() < rows
    fresh.restoreResult(saved)  # the parameter node set again: one observation, not two
    assert fresh.result.observingLine and len(fresh.result._observations) == 4
    fresh.restoreResult(_dose_rate_parameters(back))  # nothing computed yet: nothing restored
    assert fresh.result is None
    again = fresh.processParameterNode(saved)  # Apply in the loaded scene refills its outputs
    assert [n.GetID() for n in saved.doseRateOutputs] == outputs and again.profileTable.GetScene() is scene
    fresh.stopObservingLine()


def test_errors_name_the_panel_setting_to_change(module, monkeypatch):
    """reportError shows a DblurDoseError's message followed by the widget labels of its settings."""
    from DblurDoseLib.errors import SETTINGS, DblurDoseError

    assert set(module.SETTING_LABELS) == set(SETTINGS) and all(module.SETTING_LABELS.values())
    shown = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: shown.append(text), raising=False)
    status = module.reportError(DblurDoseError("give the SPECT's units", settings=("spect_units", "spect")), "x")
    assert shown == ["give the SPECT's units [\"Voxel values\" selector (SPECT units), \"SPECT\" selector (Inputs)]"]
    assert shown[0] in status
    assert module.reportError(DblurDoseError("cancelled by the user"), "x").startswith("Cancelled")
    assert len(shown) == 1
    # a library error reaching the panel: missing inputs name both selectors
    logic = module.DblurDoseLogic()
    with pytest.raises(DblurDoseError) as raised:
        logic.process(None, None)
    assert raised.value.describe(module.SETTING_LABELS).endswith('["SPECT" selector (Inputs), "CT" selector (Inputs)]')


def test_a_line_chosen_after_apply_joins_the_outputs(module, monkeypatch):
    """Apply without a line, then choose one (the panel calls setProfileLine): its profile table and
    chart are kept in the parameter node, so the next Apply refills them instead of adding others."""
    from DblurDoseLib.mrml import sampledata

    monkeypatch.setattr(sampledata, "TEST_SHAPE", SMALL)
    nodes = module.loadDemoCase(small=True)
    pn = _dose_rate_parameters(nodes, profileLine=None, segmentIds=["liver"])
    logic = module.DblurDoseLogic()
    assert logic.processParameterNode(pn).profileTable is None
    pn.profileLine = nodes["line"]
    logic.setProfileLine(pn.profileLine, pn)
    table = logic.result.profileTable
    assert table is not None and table in pn.doseRateOutputs
    ids = _ids(slicer.mrmlScene)
    again = logic.processParameterNode(pn)
    assert again.profileTable is table and _ids(slicer.mrmlScene) == ids
    logic.stopObservingLine()
