"""DblurDoseLib.mrml on a real (headless) Slicer MRML scene: geometry, outputs, numbers, .mrb.

Needs slicer-core (the ``slicer`` extra); skipped without it.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer")
pytestmark = pytest.mark.slicer

import slicer  # noqa: E402
from slicer_helpers import SlicerScene, rotation, small_case  # noqa: E402

import DblurDoseLib.dose as dose  # noqa: E402
from DblurDoseLib import mrml  # noqa: E402
from DblurDoseLib.errors import DblurDoseError  # noqa: E402
from DblurDoseLib.evaluation.metrics import drvh_table, line_profile, statistics_table  # noqa: E402
from DblurDoseLib.geometry.segments import segments_from_labelmap  # noqa: E402

OBLIQUE = rotation("z", 20.0) @ rotation("x", 10.0)


@pytest.fixture
def with_cnn(monkeypatch):
    """Pretend the CNN exists: it returns the DVK map x 1.1 (only the plumbing is under test)."""
    real = dose.compute_dose_rate_maps

    def both(spect, ct, methods=("dvk",), **kwargs):
        maps = real(spect, ct, ("dvk",), **kwargs)
        if "cnn" in methods:
            maps["cnn"] = maps["dvk"].with_array(np.asarray(maps["dvk"].array) * np.float32(1.1))
            maps["cnn"].metadata.update(maps["dvk"].metadata)
        return {m: maps[m] for m in methods}

    monkeypatch.setattr(dose, "compute_dose_rate_maps", both)
    monkeypatch.setattr(dose, "available_methods", lambda: ("dvk", "cnn"))


def build(direction=None, line=True, study=True):
    """Scene with the small case: SPECT and CT under a study, a segmentation and a line."""
    s = SlicerScene()
    case = small_case(direction=direction)
    parent = s.study() if study else None
    spect = s.add_volume(case.spect, "SPECT", parent_item=parent)
    mrml.setSpectUnits(spect, "bqml")
    ct = s.add_volume(case.ct, "CT", parent_item=parent)
    seg = s.add_segmentation(case.labels, case.names, ct)
    line_node = None
    if line:
        p0 = np.asarray(case.ct.origin) + case.ct.direction @ (np.array([2, 22, 13]) * np.asarray(case.ct.spacing))
        p1 = np.asarray(case.ct.origin) + case.ct.direction @ (np.array([37, 22, 13]) * np.asarray(case.ct.spacing))
        line_node = s.add_line(p0, p1)
    return s, case, spect, ct, seg, line_node


def ijk_to_ras(node) -> np.ndarray:
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(i, j) for j in range(4)] for i in range(4)])


def table_rows(table_node) -> list[dict[str, str]]:
    names = [table_node.GetColumnName(c) for c in range(table_node.GetNumberOfColumns())]
    return [{n: table_node.GetCellText(r, c) for c, n in enumerate(names)} for r in range(table_node.GetNumberOfRows())]


def column(table_node, name) -> np.ndarray:
    array = table_node.GetTable().GetColumnByName(name)
    assert array is not None, f"no column {name!r}"
    return np.array([array.GetValue(i) for i in range(array.GetNumberOfValues())], dtype=np.float64)


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("direction", [None, OBLIQUE], ids=["axial", "oblique"])
def test_volume_round_trip_keeps_geometry(direction):
    s = SlicerScene()
    case = small_case(direction=direction)
    node = s.add_volume(case.ct, "CT")
    back = mrml.volumeFromNode(node)
    assert back.shape == case.ct.shape
    np.testing.assert_allclose(back.spacing, case.ct.spacing, atol=1e-9)
    np.testing.assert_allclose(back.origin, case.ct.origin, atol=1e-9)
    np.testing.assert_allclose(back.direction, case.ct.direction, atol=1e-12)
    np.testing.assert_array_equal(back.array, case.ct.array)
    # RAS in Slicer: the origin's x and y flip sign
    np.testing.assert_allclose(ijk_to_ras(node)[:3, 3], np.asarray(case.ct.origin) * [-1, -1, 1], atol=1e-9)


def test_linear_parent_transform_is_honoured_and_nonlinear_refused():
    import vtk

    s = SlicerScene()
    case = small_case()
    node = s.add_volume(case.ct, "CT")
    transform = s.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    m = vtk.vtkMatrix4x4()
    m.SetElement(0, 3, 12.0)  # RAS +x = LPS -x
    m.SetElement(2, 3, 3.0)
    transform.SetMatrixTransformToParent(m)
    node.SetAndObserveTransformNodeID(transform.GetID())
    moved = mrml.volumeFromNode(node)
    np.testing.assert_allclose(moved.origin, np.asarray(case.ct.origin) + [-12.0, 0.0, 3.0], atol=1e-9)
    grid = s.scene.AddNewNodeByClass("vtkMRMLGridTransformNode")
    node.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(DblurDoseError, match="harden"):
        mrml.volumeFromNode(node)


@pytest.mark.parametrize("direction", [None, OBLIQUE], ids=["axial", "oblique"])
def test_outputs_have_the_ct_grid_units_attributes_and_place(direction, with_cnn):
    s, case, spect, ct, seg, line = build(direction)
    result = mrml.computeDoseRateMaps(spect, ct, seg, line, methods=("dvk", "cnn"))
    assert set(result.doseNodes) == {"dvk", "cnn"}
    study = s.sh.GetItemParent(s.sh.GetItemByDataNode(ct))
    for method, node in result.doseNodes.items():
        assert node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode")
        assert node.GetName() == f"SPECT dose rate {method.upper()}"
        assert node.GetImageData().GetDimensions() == ct.GetImageData().GetDimensions()
        np.testing.assert_allclose(ijk_to_ras(node), ijk_to_ras(ct), atol=1e-9)
        assert node.GetAttribute("DicomRtImport.DoseVolume") == "1"
        units, quantity = node.GetVoxelValueUnits(), node.GetVoxelValueQuantity()
        assert (units.GetCodeValue(), units.GetCodingSchemeDesignator()) == ("mGy/h", "UCUM")
        assert quantity.GetCodeMeaning() == "Absorbed dose rate"
        display = node.GetDisplayNode()
        assert display.GetColorNodeID() in mrml.DOSE_COLOR_NODES
        assert not display.GetAutoWindowLevel() and display.GetWindowLevelMin() == 0.0
        assert display.GetWindowLevelMax() > 0
        assert s.sh.GetItemParent(s.sh.GetItemByDataNode(node)) == study
    diff = result.differenceNode
    assert diff is not None and diff.GetName() == "SPECT dose rate CNN-DVK"
    np.testing.assert_allclose(
        slicer.util.arrayFromVolume(diff),
        slicer.util.arrayFromVolume(result.doseNodes["cnn"]) - slicer.util.arrayFromVolume(result.doseNodes["dvk"]),
        rtol=1e-6, atol=1e-6,
    )
    for node in (result.statisticsTable, *result.drvhTables.values(), result.profileTable):
        assert node.IsA("vtkMRMLTableNode")
        assert s.sh.GetItemParent(s.sh.GetItemByDataNode(node)) == study
    for chart in (result.drvhChart, result.drvhDifferentialChart, result.profileChart):
        assert chart.IsA("vtkMRMLPlotChartNode")
    # one series per segment and method, in both DRVH charts; one per method in the profile chart
    n_segments = len(case.names)
    assert result.drvhChart.GetNumberOfPlotSeriesNodes() == 2 * n_segments
    assert result.drvhDifferentialChart.GetNumberOfPlotSeriesNodes() == 2 * n_segments
    assert result.profileChart.GetNumberOfPlotSeriesNodes() == 2
    assert result.warnings == []


@pytest.mark.parametrize("direction", [None, OBLIQUE], ids=["axial", "oblique"])
def test_tables_equal_the_library_numbers(direction):
    s, case, spect, ct, seg, line = build(direction)
    result = mrml.computeDoseRateMaps(spect, ct, seg, None, methods=("dvk",), drvhBins=50)
    # the library on the same inputs
    maps = dose.compute_dose_rate_maps(case.spect, case.ct, ("dvk",))
    np.testing.assert_allclose(slicer.util.arrayFromVolume(result.doseNodes["dvk"]), maps["dvk"].array, rtol=1e-6)
    arrays = {"dvk": np.asarray(maps["dvk"].array)}
    segments = segments_from_labelmap(case.labels, case.ct, case.names)
    stats = statistics_table(arrays, segments, case.ct.voxel_volume_ml)
    rows = table_rows(result.statisticsTable)
    assert [(r["Segment"], r["Method"]) for r in rows] == [(r["segment"], r["method"].upper()) for r in stats]
    table = result.statisticsTable
    for key, title in (("volume_mL", "Volume"), ("mean_mGy_per_h", "Mean"), ("DR10_mGy_per_h", "DR10"),
                       ("DR30_mGy_per_h", "DR30"), ("DR70_mGy_per_h", "DR70"), ("DR90_mGy_per_h", "DR90")):
        np.testing.assert_allclose(column(table, title), [r[key] for r in stats], rtol=1e-6)
    assert table.GetColumnUnitLabel("Mean") == "mGy/h" and table.GetColumnUnitLabel("Volume") == "mL"
    drvh = drvh_table(arrays, segments, 50)
    for segment in segments:
        expected = [r for r in drvh if r["segment"] == segment.name]
        t = result.drvhTables[segment.name]
        np.testing.assert_allclose(column(t, "Dose rate"), [r["dose_rate_low_mGy_per_h"] for r in expected], rtol=1e-12)
        np.testing.assert_allclose(column(t, "DVK cumulative"), [100 * r["cumulative_fraction"] for r in expected],
                                   rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(column(t, "DVK differential"),
                                   [100 * r["differential_fraction"] for r in expected], rtol=1e-9, atol=1e-12)


def test_overlapping_and_empty_segments_are_kept_apart():
    s, case, spect, ct, seg, line = build()
    both = case.labels.with_array(np.isin(np.asarray(case.labels.array), (2, 3)).astype(np.uint8))
    s.add_segment_from_mask(seg, both, "both kidneys")  # overlaps the two kidney segments
    seg.GetSegmentation().AddEmptySegment("nothing", "nothing")
    result = mrml.computeDoseRateMaps(spect, ct, seg, None, methods=("dvk",))
    rows = {r["Segment"]: r for r in table_rows(result.statisticsTable)}
    voxel_ml = case.ct.voxel_volume_ml
    labels = np.asarray(case.labels.array)
    assert float(rows["both kidneys"]["Volume"]) == pytest.approx(np.isin(labels, (2, 3)).sum() * voxel_ml)
    assert float(rows["left kidney"]["Volume"]) == pytest.approx((labels == 2).sum() * voxel_ml)
    assert rows["nothing"]["Note"] == "empty on the CT grid" and rows["nothing"]["Mean"] == "nan"
    assert any("'nothing' is empty" in w for w in result.warnings)
    assert "nothing" not in result.drvhTables


def test_segment_selection_by_id_or_name():
    s, case, spect, ct, seg, line = build(line=False)
    kidney_id = seg.GetSegmentation().GetSegmentIdBySegmentName("left kidney")
    result = mrml.computeDoseRateMaps(spect, ct, seg, segmentIds=[kidney_id, "lesion"], methods=("dvk",))
    assert [r["Segment"] for r in table_rows(result.statisticsTable)] == ["left kidney", "lesion"]
    with pytest.raises(DblurDoseError, match="no segment 'liver'"):
        mrml.computeDoseRateMaps(spect, ct, seg, segmentIds=["liver"], methods=("dvk",))


def test_closed_surface_segments_are_converted_to_labelmaps():
    import vtk

    s, case, spect, ct, seg, line = build(line=False)
    surface_seg = s.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "contours")
    closed = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
    surface_seg.GetSegmentation().SetSourceRepresentationName(closed)
    sphere = vtk.vtkSphereSource()
    sphere.SetRadius(20.0)
    sphere.SetThetaResolution(40)
    sphere.SetPhiResolution(40)
    sphere.Update()
    segment = slicer.vtkSegment()
    segment.SetName("ball")
    segment.AddRepresentation(closed, sphere.GetOutput())
    surface_seg.GetSegmentation().AddSegment(segment)
    result = mrml.computeDoseRateMaps(spect, ct, surface_seg, methods=("dvk",))
    volume = float(table_rows(result.statisticsTable)[0]["Volume"])
    assert volume == pytest.approx(4 / 3 * np.pi * 20.0**3 / 1000, rel=0.1)


def test_profile_is_the_dose_sampled_along_the_line_and_follows_it():
    s, case, spect, ct, seg, line = build(OBLIQUE)
    result = mrml.computeDoseRateMaps(spect, ct, seg, line, methods=("dvk",))
    dose_node = result.doseNodes["dvk"]

    def expected():
        p0, p1 = mrml.lineEndpointsLPS(line)
        return line_profile(mrml.volumeFromNode(dose_node), p0, p1)

    distance, values = expected()
    np.testing.assert_allclose(column(result.profileTable, "Distance"), distance, atol=1e-9)
    np.testing.assert_allclose(column(result.profileTable, dose_node.GetName()), values, rtol=1e-6, atol=1e-9)
    assert values.max() > 0
    assert result.profileTable.GetColumnUnitLabel(dose_node.GetName()) == "mGy/h"
    assert result.profileTable.GetColumnUnitLabel("CT") == "HU"
    assert result.profileTable.GetColumnUnitLabel("SPECT") == "Bq/mL"
    # move the line: the observer refreshes the table
    line.SetNthControlPointPositionWorld(1, 0.0, 0.0, 0.0)
    distance, values = expected()
    assert result.profileTable.GetNumberOfRows() == len(distance)
    np.testing.assert_allclose(column(result.profileTable, dose_node.GetName()), values, rtol=1e-6, atol=1e-9)
    # a line chosen afterwards works too; the first one is no longer followed
    other = s.add_line(case.ct.origin, np.zeros(3), "Other")
    result.setLine(other)
    rows = result.profileTable.GetNumberOfRows()
    line.SetNthControlPointPositionWorld(1, 30.0, 30.0, 10.0)
    assert result.profileTable.GetNumberOfRows() == rows
    result.stopObservingLine()


def test_scene_saved_as_mrb_reloads_the_same_data(tmp_path, with_cnn):
    s, case, spect, ct, seg, line = build(OBLIQUE)
    result = mrml.computeDoseRateMaps(spect, ct, seg, line, methods=("dvk", "cnn"))
    result.stopObservingLine()
    path = s.save_mrb(tmp_path / "dblurdose.mrb")
    loaded = SlicerScene.load_mrb(path)
    scene = loaded.scene
    for node in (*result.doseNodes.values(), result.differenceNode):
        back = scene.GetFirstNodeByName(node.GetName())
        assert back is not None, node.GetName()
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(back), slicer.util.arrayFromVolume(node))
        np.testing.assert_allclose(ijk_to_ras(back), ijk_to_ras(node), atol=1e-6)
        assert back.GetAttribute("DblurDose.Method") == node.GetAttribute("DblurDose.Method")
        assert back.GetVoxelValueUnits().GetCodeValue() == "mGy/h"
    assert scene.GetFirstNodeByName(result.doseNodes["dvk"].GetName()).GetAttribute("DicomRtImport.DoseVolume") == "1"
    for table in (result.statisticsTable, result.profileTable, *result.drvhTables.values()):
        back = scene.GetFirstNodeByName(table.GetName())
        assert table_rows(back) == table_rows(table)
    chart = scene.GetFirstNodeByName(result.drvhChart.GetName())
    assert chart.GetNumberOfPlotSeriesNodes() == result.drvhChart.GetNumberOfPlotSeriesNodes()
    back_line = scene.GetFirstNodeByName(line.GetName())
    np.testing.assert_allclose(mrml.lineEndpointsLPS(back_line), mrml.lineEndpointsLPS(line), atol=1e-6)
    # a reloaded line works with the reloaded dose map
    back_dose = mrml.volumeFromNode(scene.GetFirstNodeByName(result.doseNodes["dvk"].GetName()))
    back_profile = scene.GetFirstNodeByName(result.profileTable.GetName())
    _d, values = line_profile(back_dose, *mrml.lineEndpointsLPS(back_line), n_points=back_profile.GetNumberOfRows())
    np.testing.assert_allclose(column(back_profile, result.doseNodes["dvk"].GetName()), values, rtol=1e-5, atol=1e-6)


def node_ids(scene) -> list[str]:
    return [scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())]


def test_a_rerun_given_the_previous_nodes_refills_them(with_cnn):
    """Apply twice (as the module does, handing over the previous result's nodes): no node is added,
    every output keeps its ID, and the profile still follows the line; a segment left out the next
    time loses its DRVH table and series, a method left out keeps its map."""
    s, case, spect, ct, seg, line = build()
    first = mrml.computeDoseRateMaps(spect, ct, seg, line, methods=("dvk", "cnn"))
    ids = node_ids(s.scene)
    dose = slicer.util.arrayFromVolume(first.doseNodes["dvk"]).copy()
    second = mrml.computeDoseRateMaps(spect, ct, seg, line, methods=("dvk", "cnn"), reuse=first.nodes())
    first.stopObservingLine()
    assert node_ids(s.scene) == ids
    assert [n.GetID() for n in second.nodes()] == [n.GetID() for n in first.nodes()]
    for a, b in ((first.doseNodes["cnn"], second.doseNodes["cnn"]), (first.differenceNode, second.differenceNode),
                 (first.statisticsTable, second.statisticsTable), (first.profileChart, second.profileChart)):
        assert a is b
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(second.doseNodes["dvk"]), dose)
    assert second.drvhChart.GetNumberOfPlotSeriesNodes() == 2 * len(case.names)
    assert second.profileChart.GetNumberOfPlotSeriesNodes() == 2
    rows = second.profileTable.GetNumberOfRows()
    line.SetNthControlPointPositionWorld(1, 0.0, 0.0, 0.0)
    assert second.profileTable.GetNumberOfRows() != rows
    # fewer segments and the DVK alone: the lesion's DRVH table and every CNN series go, the CNN map stays
    third = mrml.computeDoseRateMaps(spect, ct, seg, line, methods=("dvk",), segmentIds=["left kidney"],
                                     reuse=second.nodes())
    second.stopObservingLine()
    assert s.scene.GetNodeByID(second.drvhTables["lesion"].GetID()) is None
    assert third.drvhTables["left kidney"] is second.drvhTables["left kidney"]
    assert third.drvhChart.GetNumberOfPlotSeriesNodes() == 1 and third.profileChart.GetNumberOfPlotSeriesNodes() == 1
    assert second.doseNodes["cnn"].GetScene() is s.scene and second.doseNodes["cnn"] in third.nodes()
    assert [r["Segment"] for r in table_rows(third.statisticsTable)] == ["left kidney"]
    third.stopObservingLine()


def test_a_result_rebuilt_from_a_saved_scenes_nodes_follows_the_line_again(tmp_path):
    s, case, spect, ct, seg, line = build(OBLIQUE)
    result = mrml.computeDoseRateMaps(spect, ct, seg, line, methods=("dvk",))
    result.stopObservingLine()
    ids = [n.GetID() for n in result.nodes()]
    loaded = SlicerScene.load_mrb(s.save_mrb(tmp_path / "scene.mrb")).scene
    back = mrml.DoseRateResult.fromNodes([loaded.GetNodeByID(i) for i in ids])
    assert back.spectNode.GetName() == "SPECT" and back.ctNode.GetScene() is loaded
    assert back.doseNodes["dvk"].GetID() == result.doseNodes["dvk"].GetID() and back.units == "mGy/h"
    back_line = loaded.GetFirstNodeByName(line.GetName())
    before = node_ids(loaded)
    back.setLine(back_line)
    assert back.observingLine and node_ids(loaded) == before  # the saved profile table and chart are refilled
    back_line.SetNthControlPointPositionWorld(1, 0.0, 0.0, 0.0)
    p0, p1 = mrml.lineEndpointsLPS(back_line)
    _d, values = line_profile(mrml.volumeFromNode(back.doseNodes["dvk"]), p0, p1)
    np.testing.assert_allclose(column(back.profileTable, back.doseNodes["dvk"].GetName()), values, rtol=1e-6, atol=1e-9)
    assert column(back.profileTable, "SPECT").size == values.size
    back.stopObservingLine()
    assert mrml.DoseRateResult.fromNodes([loaded.GetFirstNodeByName("CT")]) is None


def test_cnn_not_available_is_skipped_with_a_warning_or_refused_alone(monkeypatch):
    monkeypatch.setattr(dose, "available_methods", lambda: ("dvk",))
    s, case, spect, ct, seg, line = build(line=False)
    result = mrml.computeDoseRateMaps(spect, ct, None, methods=("dvk", "cnn"))
    assert set(result.doseNodes) == {"dvk"} and result.differenceNode is None
    assert any("CNN is not available" in w for w in result.warnings)
    with pytest.raises(DblurDoseError, match="CNN is not available"):
        mrml.computeDoseRateMaps(spect, ct, None, methods=("cnn",))


def test_cancelling_adds_nothing_to_the_scene():
    s, case, spect, ct, seg, line = build()
    before = s.scene.GetNumberOfNodes()
    calls = []

    def cancel_midway(fraction, message):
        calls.append(fraction)
        return fraction < 0.5

    with pytest.raises(DblurDoseError, match="cancelled"):
        mrml.computeDoseRateMaps(spect, ct, seg, line, methods=("dvk",), progress=cancel_midway)
    assert s.scene.GetNumberOfNodes() == before
    assert calls == sorted(calls)


def test_bad_inputs_give_clear_errors():
    s, case, spect, ct, seg, line = build(line=False)
    with pytest.raises(DblurDoseError, match="select both"):
        mrml.computeDoseRateMaps(spect, None)
    with pytest.raises(DblurDoseError, match="same volume"):
        mrml.computeDoseRateMaps(ct, ct)
    with pytest.raises(DblurDoseError, match="unknown option"):
        mrml.computeDoseRateMaps(spect, ct, methods=("dvk",), colour="red")
    with pytest.raises(DblurDoseError, match="unknown method"):
        mrml.computeDoseRateMaps(spect, ct, methods=("monte-carlo",))
    empty = s.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(DblurDoseError, match="holds no voxels"):
        mrml.computeDoseRateMaps(empty, ct, methods=("dvk",))
    # counts without calibration: the library's message comes through
    with pytest.raises(DblurDoseError, match="calibration"):
        mrml.computeDoseRateMaps(spect, ct, methods=("dvk",), spect_units="counts")


def test_spect_units_are_read_from_the_node_or_assumed_with_a_warning():
    s, case, spect, ct, seg, line = build(line=False)
    assert mrml.spectUnitsFromNode(spect) == "bqml"
    mrml.setSpectUnits(spect, "kbqml")
    assert mrml.spectUnitsFromNode(spect) == "kbqml"
    scaled = mrml.computeDoseRateMaps(spect, ct, methods=("dvk",))
    mrml.setSpectUnits(spect, "bqml")
    plain = mrml.computeDoseRateMaps(spect, ct, methods=("dvk",))
    np.testing.assert_allclose(slicer.util.arrayFromVolume(scaled.doseNodes["dvk"]),
                               1000 * slicer.util.arrayFromVolume(plain.doseNodes["dvk"]), rtol=1e-4, atol=1e-6)
    bare = s.add_volume(case.spect, "bare SPECT")
    result = mrml.computeDoseRateMaps(bare, ct, methods=("dvk",))
    assert any("does not record its units" in w for w in result.warnings)
    assert mrml.spectUnitsFromNode(bare) is None


def test_device_names():
    """The module's device names go through devices.resolve_device, the one place a device is chosen."""
    from DblurDoseLib.devices import resolve_device

    assert mrml.resolveDevice("Auto") == "auto" and mrml.resolveDevice("CPU") == "cpu"
    try:
        expected = str(resolve_device("gpu"))
    except DblurDoseError as exc:
        with pytest.raises(DblurDoseError, match="no CUDA or Apple MPS device; choose the device auto or cpu"):
            mrml.resolveDevice("GPU")
        assert "auto or cpu" in str(exc)
    else:
        assert mrml.resolveDevice("GPU") == expected
