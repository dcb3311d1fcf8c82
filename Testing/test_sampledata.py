"""The demo case as Slicer sample data: files written locally, readable by Slicer and the CLI."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.geometry.segments import read_segments
from DblurDoseLib.io import slicer_files
from DblurDoseLib.io.volume import Volume, read_volume
from DblurDoseLib.mrml import sampledata

SMALL = (33, 64, 64)


def labels_case() -> tuple[Volume, dict[int, str]]:
    labels = np.zeros((6, 8, 10), dtype=np.int16)
    labels[1:4, 2:5, 1:4] = 3
    labels[2:5, 3:7, 5:9] = 17
    return Volume(labels, (2.0, 3.0, 4.0), (-10.0, 5.0, 20.0)), {3: "liver", 17: "kidney_left"}


def test_seg_nrrd_holds_named_segments_the_library_reads_back(tmp_path):
    labels, names = labels_case()
    path = slicer_files.write_seg_nrrd(labels, names, tmp_path / "organs.seg.nrrd")
    segments = {s.name: s.mask for s in read_segments(path, labels)}
    assert set(segments) == {"liver", "kidney_left"}
    np.testing.assert_array_equal(segments["kidney_left"], labels.array == 17)
    np.testing.assert_array_equal(segments["liver"], labels.array == 3)
    with pytest.raises(DblurDoseError, match="no labelled voxels"):
        slicer_files.write_seg_nrrd(labels.with_array(np.zeros_like(labels.array)), names, tmp_path / "x.seg.nrrd")


def test_line_json_and_kidney_line(tmp_path):
    labels, names = labels_case()
    p0, p1 = sampledata.kidney_line(labels, names)
    assert p0[1] == p1[1] and p0[2] == p1[2]  # left-right across the field
    assert p0[0] == labels.origin[0] and p1[0] == pytest.approx(labels.origin[0] + 9 * 2.0)
    doc = json.loads(slicer_files.write_line_json(p0, p1, tmp_path / "line.mrk.json").read_text())
    markup = doc["markups"][0]
    assert markup["type"] == "Line" and markup["coordinateSystem"] == "LPS"
    assert [cp["position"] for cp in markup["controlPoints"]] == [list(p0), list(p1)]


def test_demo_files_are_written_once_and_never_half(tmp_path, monkeypatch):
    paths = sampledata.write_demo_case(tmp_path, shape=SMALL)
    assert set(paths) == {"ct", "spect", "segmentation", "line"} and all(p.is_file() for p in paths.values())
    stamp = {role: p.stat().st_mtime_ns for role, p in paths.items()}
    assert sampledata.write_demo_case(tmp_path, shape=SMALL) == paths  # reused
    assert {role: p.stat().st_mtime_ns for role, p in paths.items()} == stamp
    ct, spect = read_volume(paths["ct"]), read_volume(paths["spect"])
    assert ct.shape == SMALL and float(ct.array.min()) < -900
    assert float(spect.array.max()) > 0 and spect.spacing == pytest.approx((4.8, 4.8, 4.8))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    import DblurDoseLib.simulation.phantom

    labels, names = labels_case()  # a tiny stand-in patient: only the file handling is under test
    tiny = SimpleNamespace(hu=labels.with_array(np.where(labels.array > 0, 40.0, -1000.0).astype(np.float32)),
                           activity=labels.with_array((labels.array > 0).astype(np.float32) * 1e5),
                           labels=labels, label_names=names)
    monkeypatch.setattr(DblurDoseLib.simulation.phantom, "make_phantom", lambda *a, **k: tiny)
    monkeypatch.setattr(sampledata, "write_line_json", broken)
    with pytest.raises(OSError):
        sampledata.write_demo_case(tmp_path / "again", shape=SMALL)
    assert not any((tmp_path / "again").iterdir())


@pytest.mark.slicer
def test_demo_case_runs_in_a_slicer_scene(tmp_path):
    """What the module's Test does in Slicer, on slicer-core: load the demo files, compute, check."""
    pytest.importorskip("slicer")
    import slicer
    from slicer_helpers import SlicerScene

    from DblurDoseLib import mrml

    paths = sampledata.write_demo_case(tmp_path, shape=SMALL)
    s = SlicerScene()
    nodes = {}
    for role, node_class, storage_class in (
        ("ct", "vtkMRMLScalarVolumeNode", "vtkMRMLVolumeArchetypeStorageNode"),
        ("spect", "vtkMRMLScalarVolumeNode", "vtkMRMLVolumeArchetypeStorageNode"),
        ("segmentation", "vtkMRMLSegmentationNode", "vtkMRMLSegmentationStorageNode"),
        ("line", "vtkMRMLMarkupsLineNode", "vtkMRMLMarkupsJsonStorageNode"),
    ):
        node = s.scene.AddNewNodeByClass(node_class, f"demo {role}")
        storage = s.scene.AddNewNodeByClass(storage_class)
        storage.SetFileName(str(paths[role]))
        assert storage.ReadData(node), f"Slicer could not read {paths[role].name}"
        node.SetAndObserveStorageNodeID(storage.GetID())
        nodes[role] = node
    mrml.setSpectUnits(nodes["spect"], "bqml")
    names = [nodes["segmentation"].GetSegmentation().GetNthSegment(i).GetName()
             for i in range(nodes["segmentation"].GetSegmentation().GetNumberOfSegments())]
    assert "kidney_left" in names and "liver" in names
    result = mrml.computeDoseRateMaps(nodes["spect"], nodes["ct"], nodes["segmentation"], nodes["line"],
                                      methods=("dvk",), device="cpu",
                                      segmentIds=["kidney_left", "kidney_right", "liver", "muscle"])
    assert result.warnings == []
    rows = {result.statisticsTable.GetCellText(r, 0): float(result.statisticsTable.GetCellText(r, 3))
            for r in range(result.statisticsTable.GetNumberOfRows())}
    assert rows["kidney_left"] > rows["muscle"] and rows["kidney_right"] > rows["muscle"]
    profile = slicer.util.arrayFromTableColumn(result.profileTable, result.doseNodes["dvk"].GetName())
    assert profile.max() > rows["muscle"]  # the line crosses the kidneys
