"""DblurDoseLib.mrml.computeAbsorbedDose on a headless Slicer scene: the same Gy as the library, and its nodes.

Needs slicer-core (the ``slicer`` extra); skipped without it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("slicer")
pytestmark = pytest.mark.slicer

from slicer_helpers import SlicerScene, small_case  # noqa: E402

from DblurDoseLib import dosimetry, mrml  # noqa: E402
from DblurDoseLib.errors import DblurDoseError  # noqa: E402
from DblurDoseLib.geometry.segments import segments_from_labelmap  # noqa: E402

T_EFF_H = 50.0
TIMES_H = (96.0, 4.0, 24.0, 168.0)  # given out of order on purpose: the function sorts them


def _decayed(case, hours: float):
    return case.spect.with_array(np.asarray(case.spect.array) * np.float32(math.exp(-math.log(2) * hours / T_EFF_H)))


@pytest.fixture(scope="module")
def scene():
    s = SlicerScene()
    case = small_case()
    ct = s.add_volume(case.ct, "CT", parent_item=s.study())
    points = []
    for hours in TIMES_H:
        spect = s.add_volume(_decayed(case, hours), f"SPECT {hours:g} h")
        mrml.setSpectUnits(spect, "bqml")
        points.append((spect, ct, hours))
    seg = s.add_segmentation(case.labels, case.names, ct)
    result = mrml.computeAbsorbedDose(points, seg, register="none", activity_range_mbq=None)
    return s, case, points, seg, result


def test_same_absorbed_dose_as_the_library(scene):
    _, case, _, _, result = scene
    timepoints = [dosimetry.TimePoint(spect=_decayed(case, h), ct=case.ct, time_h=h) for h in sorted(TIMES_H)]
    segments = segments_from_labelmap(case.labels, case.ct, case.names)
    expected = dosimetry.absorbed_dose(timepoints, segments, register="none", activity_range_mbq=None)
    got = mrml.volumeFromNode(result.doseNode, "dose")
    assert got.same_grid(case.ct)  # the reference CT's geometry is kept through the node
    np.testing.assert_allclose(got.array, expected.dose.array, rtol=1e-6, atol=1e-9)
    assert float(np.asarray(got.array).max()) > 0


def test_dose_node_is_a_gray_dose_volume(scene):
    _, _, points, _, result = scene
    node = result.doseNode
    assert node.GetAttribute(mrml.DOSE_VOLUME_ATTRIBUTE) == "1"
    assert node.GetVoxelValueUnits().GetCodeValue() == "Gy"
    assert node.GetName() == "SPECT 4 h absorbed dose DVK"  # named after the earliest (reference) time point
    assert node.GetAttribute("DblurDose.TimePoints") == "4,24,96,168"


def test_tables_and_charts_hold_every_voi(scene):
    _, case, _, _, result = scene
    names = set(case.names.values())
    vtk_table = result.doseTable.GetTable()
    got = {vtk_table.GetValueByName(r, "Segment").ToString() for r in range(vtk_table.GetNumberOfRows())}
    assert got == names
    means = {vtk_table.GetValueByName(r, "Segment").ToString(): vtk_table.GetValueByName(r, "Mean dose").ToDouble()
             for r in range(vtk_table.GetNumberOfRows())}
    for voi in result.dosimetry.vois:
        assert means[voi.name] == pytest.approx(voi.integral.dose_gy, rel=1e-9)
        # mono-exponential data: the fitted half-life is the one put in
        assert voi.integral.effective_half_life_h == pytest.approx(T_EFF_H, rel=1e-3)
    tac = result.tacTable.GetTable()
    assert tac.GetNumberOfRows() == len(TIMES_H)
    assert [tac.GetValueByName(r, "Time").ToDouble() for r in range(4)] == sorted(TIMES_H)
    assert result.tacChart.GetNumberOfPlotSeriesNodes() == 2 * len(names)  # points + fitted curve per VOI
    assert result.dvhChart.GetNumberOfPlotSeriesNodes() == len(names)
    dvh = result.dvhTable.GetTable()
    for name in names:  # cumulative DVH: 100 % at zero dose, never rising
        values = np.array([dvh.GetValueByName(r, name).ToDouble() for r in range(dvh.GetNumberOfRows())])
        assert values[0] == pytest.approx(100.0) and np.all(np.diff(values) <= 1e-9)


def test_bad_time_points_are_refused_before_anything_is_added(scene):
    s, _, points, seg, _ = scene
    n_nodes = s.scene.GetNumberOfNodes()
    with pytest.raises(DblurDoseError, match="add at least one time point"):
        mrml.computeAbsorbedDose([], seg)
    with pytest.raises(DblurDoseError, match="time point 2: .*not a scalar volume"):
        mrml.computeAbsorbedDose([points[1], (seg, points[0][1], 30.0)], seg)
    with pytest.raises(DblurDoseError, match="single-time-point|single time point"):
        mrml.computeAbsorbedDose(points[:1], seg, register="none", activity_range_mbq=None)
    with pytest.raises(DblurDoseError):  # duplicate times
        mrml.computeAbsorbedDose([points[0], (points[1][0], points[1][1], 96.0)], seg, register="none")
    assert s.scene.GetNumberOfNodes() == n_nodes


def test_a_rerun_given_the_previous_nodes_refills_them(scene):
    """As the module's absorbed-dose button run twice: the same nodes, nothing added, same numbers."""
    s, _, points, seg, result = scene
    before = s.scene.GetNumberOfNodes()
    again = mrml.computeAbsorbedDose(points, seg, register="none", activity_range_mbq=None, reuse=result.nodes())
    assert s.scene.GetNumberOfNodes() == before
    assert [n.GetID() for n in again.nodes()] == [n.GetID() for n in result.nodes()]
    assert again.doseNode is result.doseNode and again.tacChart is result.tacChart
    assert again.tacChart.GetNumberOfPlotSeriesNodes() == 2 * len(again.dosimetry.vois)
