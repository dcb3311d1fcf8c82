"""DICOM output (issue 12 part 2, ``--dicom-out``): the Parametric Map of `dose` and the RT Dose of
`dosimetry` read back with pydicom, against the NRRD maps: geometry (oblique), values, the CT study."""

from __future__ import annotations

import csv
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import uniform_spect_like, water_phantom_ct
from test_dicom import FRAME_OF_REFERENCE, STUDY, _rotation, ct_series

from DblurDoseLib.cli import main
from DblurDoseLib.io import dicom_export
from DblurDoseLib.io.volume import Volume, read_volume, write_volume

UNLINKED = "not linked to a study"


@pytest.fixture
def oblique():
    """A tiny oblique water-block CT (int16 HU, anisotropic voxels, two inserts) and a SPECT on its grid (hot cube)."""
    ct = water_phantom_ct((12, 14, 16), (4.0, 4.5, 5.0), margin=2)
    ct.array[3:5, 3:6, 4:10], ct.array[7:9, 8:11, 3:6] = 700.0, -350.0  # structure for the registration check
    ct = Volume(ct.array.astype(np.int16), ct.spacing, (-41.0, 12.5, 303.0), _rotation(25, axis=0) @ _rotation(10))
    spect = uniform_spect_like(ct, 2e5, margin=2)
    spect.array[5:8, 6:9, 7:10] = 8e5
    return ct, spect


def _frames(ds) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame Image Position (Patient) (n, 3), the row and column directions (2, 3) and Pixel Spacing (2,)."""
    if "PerFrameFunctionalGroupsSequence" in ds:  # enhanced (Parametric Map)
        shared = ds.SharedFunctionalGroupsSequence[0]
        orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
        spacing = shared.PixelMeasuresSequence[0].PixelSpacing
        positions = [f.PlanePositionSequence[0].ImagePositionPatient for f in ds.PerFrameFunctionalGroupsSequence]
        return np.array(positions, float), np.array(orientation, float).reshape(2, 3), np.array(spacing, float)
    orientation = np.array(ds.ImageOrientationPatient, float).reshape(2, 3)
    normal = np.cross(orientation[0], orientation[1])
    offsets = np.array(ds.GridFrameOffsetVector, float)
    positions = np.array(ds.ImagePositionPatient, float) + offsets[:, None] * normal
    return positions, orientation, np.array(ds.PixelSpacing, float)


def _on_grid(ds, values: np.ndarray, reference: Volume) -> np.ndarray:
    """The object's frames rearranged onto ``reference``'s grid, checking its geometry to 1e-4 mm."""
    positions, orientation, spacing = _frames(ds)
    d = reference.direction
    np.testing.assert_allclose(orientation, [d[:, 0], d[:, 1]], atol=1e-9)
    np.testing.assert_allclose(spacing, [reference.spacing[1], reference.spacing[0]], rtol=1e-9)
    k = np.rint((positions - reference.origin) @ d[:, 2] / reference.spacing[2]).astype(int)
    assert sorted(k) == list(range(reference.shape[0]))
    expected = np.asarray(reference.origin) + k[:, None] * reference.spacing[2] * d[:, 2]
    np.testing.assert_allclose(positions, expected, atol=1e-4)
    out = np.empty(reference.shape, values.dtype)
    out[k] = values
    return out


def _dose(ct_path, spect_path, out: Path, *extra) -> int:
    return main(["dose", "--spect", str(spect_path), "--ct", str(ct_path), "--out", str(out), "--quiet", *extra])


def test_parametric_map_matches_the_nrrd_and_is_unlinked_without_a_dicom_ct(oblique, tmp_path, capsys):
    ct, spect = oblique
    ct_path, spect_path = write_volume(ct, tmp_path / "ct.nrrd"), write_volume(spect, tmp_path / "spect.nrrd")
    assert _dose(ct_path, spect_path, tmp_path / "out", "--dicom-out") == 0
    assert UNLINKED in capsys.readouterr().err
    nrrd = read_volume(tmp_path / "out" / "dose_rate_dvk.nrrd")
    ds = pydicom.dcmread(tmp_path / "out" / "dicom" / "dose_rate_dvk.dcm")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "mGy/h"
    assert mapping.MeasurementUnitsCodeSequence[0].CodingSchemeDesignator == "UCUM"
    assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeMeaning == "Absorbed dose rate"
    values = _on_grid(ds, ds.pixel_array.astype(np.float64) * mapping.RealWorldValueSlope
                      + mapping.RealWorldValueIntercept, nrrd)
    np.testing.assert_allclose(values, nrrd.array, rtol=1e-6, atol=1e-6 * nrrd.array.max())
    assert ds.StudyInstanceUID != STUDY and "ReferencedSeriesSequence" not in ds

    assert _dose(ct_path, spect_path, tmp_path / "plain") == 0  # without --dicom-out: nothing DICOM
    assert not (tmp_path / "plain" / "dicom").exists() and not list((tmp_path / "plain").rglob("*.dcm"))
    assert UNLINKED not in capsys.readouterr().err
    assert _dose(ct_path, spect_path, tmp_path / "out", "--overwrite") == 0  # an earlier run's DICOM goes too
    assert not (tmp_path / "out" / "dicom").exists()
    assert "dicom/dose_rate_dvk.dcm" in capsys.readouterr().err


def test_dose_rate_map_joins_the_dicom_ct_study(oblique, tmp_path, capsys):
    ct, spect = oblique
    ct_uid = ct_series(tmp_path / "ct", ct)
    spect_path = write_volume(spect, tmp_path / "spect.nrrd")
    assert _dose(tmp_path / "ct", spect_path, tmp_path / "out", "--dicom-out", "--per-mbq") == 0
    assert UNLINKED not in capsys.readouterr().err
    ds = pydicom.dcmread(tmp_path / "out" / "dicom" / "dose_rate_dvk.dcm")
    assert (ds.StudyInstanceUID, ds.FrameOfReferenceUID) == (STUDY, FRAME_OF_REFERENCE)
    assert (str(ds.PatientName), ds.PatientID) == ("Phantom^Lu177", "DBD0001")
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == ct_uid
    assert len(ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == ct.shape[0]
    unit = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0].MeasurementUnitsCodeSequence[0]
    assert unit.CodeValue == "nGy/(MBq.s)"
    nrrd = read_volume(tmp_path / "out" / "dose_rate_dvk.nrrd")
    np.testing.assert_allclose(_on_grid(ds, ds.pixel_array, nrrd), nrrd.array, rtol=1e-6)


def test_rt_dose_of_dosimetry_matches_the_nrrd_map_and_its_dvh(oblique, tmp_path, capsys):
    ct, spect = oblique
    ct_series(tmp_path / "ct", ct)
    labels = ct.with_array((spect.array > 5e5).astype(np.int16))
    args = ["dosimetry", "--seg", str(write_volume(labels, tmp_path / "labels.nrrd")), "--out", str(tmp_path / "out"),
            "--quiet", "--any-activity", "--register", "none", "--dicom-out"]
    for i, t in enumerate((24.0, 96.0)):
        decayed = spect.with_array(spect.array * np.float32(math.exp(-math.log(2) * t / 60.0)))
        ct_path = tmp_path / "ct" if i == 0 else write_volume(ct, tmp_path / f"ct{i}.nrrd")
        args += ["--timepoint", str(write_volume(decayed, tmp_path / f"spect{i}.nrrd")), str(ct_path), str(t)]
    assert main(args) == 0
    ds = pydicom.dcmread(tmp_path / "out" / "dicom" / "absorbed_dose_dvk.dcm")
    assert (ds.Modality, ds.DoseUnits, ds.DoseType, ds.DoseSummationType) == ("RTDOSE", "GY", "PHYSICAL",
                                                                               "PLAN_OVERVIEW")
    assert "ReferencedRTPlanSequence" not in ds and "ReferencedTreatmentRecordSequence" not in ds
    assert (ds.StudyInstanceUID, ds.FrameOfReferenceUID) == (STUDY, FRAME_OF_REFERENCE)
    assert ds.BitsAllocated == 32 and ds.pixel_array.max() == 2**32 - 1
    nrrd = read_volume(tmp_path / "out" / "absorbed_dose_dvk.nrrd")
    scaling = float(ds.DoseGridScaling)
    gy = _on_grid(ds, ds.pixel_array * scaling, nrrd)
    np.testing.assert_allclose(gy, np.clip(nrrd.array, 0, None), rtol=0, atol=scaling)
    # the DVH from the RT Dose read back equals ours (dvh.csv) within 1 %
    mask = labels.array.astype(bool)
    with (tmp_path / "out" / "dvh.csv").open() as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    for row in rows:
        ours = float(row["cumulative_fraction"])
        assert np.mean(gy[mask] >= float(row["dose_gy_low"])) == pytest.approx(ours, abs=0.01)


def test_headers_highdicom_refuses_end_in_one_line_with_nothing_written(oblique, tmp_path, monkeypatch, capsys):
    import highdicom

    ct, spect = oblique
    ct_series(tmp_path / "ct", ct)

    def refuse(*args, **kwargs):
        raise ValueError("Source images have no Frame Of Reference UID, but it is required by the IOD.")

    monkeypatch.setattr(highdicom.pm, "ParametricMap", refuse)
    assert _dose(tmp_path / "ct", write_volume(spect, tmp_path / "spect.nrrd"), tmp_path / "out", "--dicom-out") == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "dblurdose: error: could not write the DICOM output (Source images have no Frame Of Reference UID, but it is "
        "required by the IOD.); run without DICOM output. Nothing was written [--dicom-out]")
    assert not (tmp_path / "out").exists()


def test_a_failed_export_leaves_nothing(oblique, tmp_path, monkeypatch, capsys):
    ct, spect = oblique
    ct_path, spect_path = write_volume(ct, tmp_path / "ct.nrrd"), write_volume(spect, tmp_path / "spect.nrrd")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dicom_export, "write_parametric_map", fail)
    assert main(["dose", "--spect", str(spect_path), "--ct", str(ct_path), "--out", str(tmp_path / "out"),
                 "--quiet", "--dicom-out"]) != 0
    assert "Nothing was written" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_bug_in_the_export_is_not_disguised_as_a_header_problem(oblique, tmp_path, monkeypatch):
    ct, spect = oblique
    ct_path, spect_path = write_volume(ct, tmp_path / "ct.nrrd"), write_volume(spect, tmp_path / "spect.nrrd")

    def bug(*args, **kwargs):
        raise AttributeError("'Volume' object has no attribute 'spacings'")

    monkeypatch.setattr(dicom_export, "frame_geometry", bug)
    with pytest.raises(AttributeError, match="spacings"):
        _dose(ct_path, spect_path, tmp_path / "out", "--dicom-out")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed")
def test_rt_dose_needs_no_plan_reference_for_dciodvfy(tmp_path):
    """dciodvfy (dicom3tools) checks the type 1C conditions of the RT Dose module: PLAN without a
    Referenced RT Plan Sequence is an error, the Dose Summation Type written is not."""
    dose = Volume(np.random.default_rng(1).random((3, 4, 5)), (2.0, 2.5, 3.0), (-10.0, 4.0, 30.0), np.eye(3))
    path = dicom_export.write_rt_dose(dose, tmp_path / "dose.dcm", dicom_export.study_link(dose, "ct.nrrd"))
    errors = {}
    for value in (dicom_export.DOSE_SUMMATION_TYPE, "PLAN"):
        ds = pydicom.dcmread(path)
        ds.DoseSummationType = value
        # dciodvfy (2022) asserts on 32-bit OW pixel data: check the headers without pixels
        del ds.PixelData
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.save_as(tmp_path / f"{value}.dcm")
        out = subprocess.run(["dciodvfy", str(tmp_path / f"{value}.dcm")], capture_output=True, text=True)
        errors[value] = [line for line in (out.stdout + out.stderr).splitlines()
                         if line.startswith("Error - Missing attribute Type 1C") and "Module=<RTDose>" in line]
    assert errors["PLAN"] == ["Error - Missing attribute Type 1C Conditional Element=<ReferencedRTPlanSequence> "
                              "Module=<RTDose>"]
    assert errors[dicom_export.DOSE_SUMMATION_TYPE] == []


def _contour_masks(ds, reference: Volume) -> dict[str, np.ndarray]:
    """Each ROI's contours rasterised on ``reference``'s grid (voxel centres inside, even-odd), checking
    that every contour lies in a slice plane to 1e-3 mm."""
    from matplotlib.path import Path as Polygon

    d, origin, spacing = reference.direction, np.asarray(reference.origin), np.asarray(reference.spacing)
    yy, xx = np.mgrid[0:reference.shape[1], 0:reference.shape[2]]
    centres = np.c_[xx.ravel(), yy.ravel()]
    names = {roi.ROINumber: roi.ROIName for roi in ds.StructureSetROISequence}
    masks = {}
    for item in ds.ROIContourSequence:
        mask = np.zeros(reference.shape, bool)
        for contour in item.get("ContourSequence", []):
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            points = np.array(contour.ContourData, float).reshape(-1, 3)
            assert len(points) == contour.NumberOfContourPoints
            index = (points - origin) @ d / spacing  # (x, y, z) voxel indices
            k = np.rint(index[:, 2])
            assert np.ptp(k) == 0 and np.allclose(index[:, 2], k, atol=1e-3 / spacing[2])
            inside = Polygon(index[:, :2]).contains_points(centres).reshape(reference.shape[1:])
            mask[int(k[0])] ^= inside
        masks[names[item.ReferencedROINumber]] = mask
    return masks


def test_mask_outlines_give_the_mask_back(tmp_path):
    from matplotlib.path import Path as Polygon

    rng = np.random.default_rng(3)
    masks = [rng.random((9, 11)) < p for p in (0.2, 0.5, 0.8)] + [np.ones((4, 5), bool), np.eye(6, dtype=bool)]
    for mask in masks:  # holes, islands, diagonal neighbours, voxels at the border
        yy, xx = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
        back = np.zeros(mask.size, bool)
        for outline in dicom_export.mask_contours(mask):
            assert not np.array_equal(outline[0], outline[-1])  # closed implicitly, as CLOSED_PLANAR wants
            back ^= Polygon(outline).contains_points(np.c_[xx.ravel(), yy.ravel()])
        np.testing.assert_array_equal(back.reshape(mask.shape), mask)
    assert dicom_export.mask_contours(np.zeros((3, 3), bool)) == []


def test_rt_struct_of_the_segments_joins_the_ct_study(oblique, tmp_path, capsys):
    ct, spect = oblique
    ct_uid = ct_series(tmp_path / "ct", ct)
    labels = np.zeros(ct.shape, np.int16)
    labels[5:8, 6:9, 7:10] = 1  # the hot cube
    labels[2:10, 2:12, 2:14] += 2 * (labels[2:10, 2:12, 2:14] == 0)  # a body around it, with the cube as a hole
    seg = write_volume(ct.with_array(labels), tmp_path / "labels.nrrd")
    spect_path = write_volume(spect, tmp_path / "spect.nrrd")
    assert _dose(tmp_path / "ct", spect_path, tmp_path / "out", "--dicom-out", "--seg", str(seg)) == 0
    ds = pydicom.dcmread(tmp_path / "out" / "dicom" / "segments.dcm")
    pm = pydicom.dcmread(tmp_path / "out" / "dicom" / "dose_rate_dvk.dcm")
    assert (ds.Modality, ds.SOPClassUID) == ("RTSTRUCT", "1.2.840.10008.5.1.4.1.1.481.3")
    assert (ds.StudyInstanceUID, ds.FrameOfReferenceUID) == (STUDY, FRAME_OF_REFERENCE) == (
        pm.StudyInstanceUID, pm.FrameOfReferenceUID)
    assert [r.ReferencedFrameOfReferenceUID for r in ds.StructureSetROISequence] == [FRAME_OF_REFERENCE] * 2
    series = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == ct_uid and len(series.ContourImageSequence) == ct.shape[0]
    ct_images = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f).ImagePositionPatient
                 for f in (tmp_path / "ct").iterdir()}
    for contour in ds.ROIContourSequence[0].ContourSequence:  # each contour references the CT slice it lies on
        position = ct_images[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
        normal = np.cross(*np.asarray(ct.direction)[:, :2].T)
        assert np.dot(np.array(contour.ContourData[:3], float) - np.array(position, float), normal) == (
            pytest.approx(0, abs=1e-3))
    masks = _contour_masks(ds, ct)
    assert list(masks) == ["label_1", "label_2"]
    np.testing.assert_array_equal(masks["label_1"], labels == 1)
    np.testing.assert_array_equal(masks["label_2"], labels == 2)


def test_rt_struct_without_a_dicom_ct_shares_the_new_frame_of_reference(oblique, tmp_path):
    ct, spect = oblique
    labels = ct.with_array((spect.array > 5e5).astype(np.int16))
    ct_path, spect_path = write_volume(ct, tmp_path / "ct.nrrd"), write_volume(spect, tmp_path / "spect.nrrd")
    seg = write_volume(labels, tmp_path / "labels.nrrd")
    assert _dose(ct_path, spect_path, tmp_path / "out", "--dicom-out", "--seg", str(seg)) == 0
    ds = pydicom.dcmread(tmp_path / "out" / "dicom" / "segments.dcm")
    pm = pydicom.dcmread(tmp_path / "out" / "dicom" / "dose_rate_dvk.dcm")
    assert (ds.StudyInstanceUID, ds.FrameOfReferenceUID) == (pm.StudyInstanceUID, pm.FrameOfReferenceUID)
    assert ds.StudyInstanceUID != STUDY
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == pm.FrameOfReferenceUID and "RTReferencedStudySequence" not in frame
    np.testing.assert_array_equal(_contour_masks(ds, ct)["label_1"], labels.array == 1)
    assert _dose(ct_path, spect_path, tmp_path / "noseg", "--dicom-out") == 0  # without --seg: no structure set
    assert not (tmp_path / "noseg" / "dicom" / "segments.dcm").exists()


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed")
def test_rt_struct_is_a_valid_rt_structure_set_for_dciodvfy(oblique, tmp_path):
    from DblurDoseLib.io.volume import Segment

    ct, spect = oblique
    cube = spect.array > 5e5
    segments = [Segment("tumour", cube), Segment("body", ~cube & (np.asarray(ct.array) > -500)),
                Segment("empty", np.zeros(ct.shape, bool))]
    path = dicom_export.write_rt_struct(segments, ct, tmp_path / "segments.dcm", dicom_export.study_link(ct, "ct.nrrd"))
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    report = (out.stdout + out.stderr).splitlines()
    assert "RTStructureSet" in report  # the IOD dciodvfy recognised
    assert [line for line in report if line.startswith("Error")] == []
    assert [roi.ROIName for roi in pydicom.dcmread(path).StructureSetROISequence] == ["tumour", "body", "empty"]


def _dicompyler(monkeypatch):
    """dicompyler-core's DVH calculation; 0.5.6 (the last release) imports pydicom's ``read_file``, which
    pydicom 3 removed (fixed upstream, dicompyler-core#380, unreleased): give it ``dcmread`` under that name."""
    pytest.importorskip("dicompylercore")
    import pydicom.dicomio

    if not hasattr(pydicom.dicomio, "read_file"):
        monkeypatch.setattr(pydicom.dicomio, "read_file", pydicom.dcmread, raising=False)
    from dicompylercore import dicomparser, dvhcalc

    return dicomparser, dvhcalc


def test_dicompyler_reads_the_rt_dose_and_structure_set_and_finds_our_doses(tmp_path, monkeypatch):
    """An independent RT reader: dicompyler-core's DVH of each ROI (its own rasterisation of our contours
    on the RT Dose grid, 1 cGy bins) against doses.csv: mean, D50, D98 and volume within 1 %."""
    dicomparser, dvhcalc = _dicompyler(monkeypatch)
    ct = water_phantom_ct((36, 44, 48), (4.0, 4.0, 5.0), margin=3)
    ct.array[5:9, 8:14, 30:40], ct.array[25:30, 28:36, 8:16] = 700.0, -350.0  # for the registration check
    ct = Volume(ct.array.astype(np.int16), ct.spacing, (-90.0, -70.0, 40.0))
    z, y, x = np.indices(ct.shape)
    tumour = ((x - 20) * 4.0) ** 2 + ((y - 22) * 4.0) ** 2 + ((z - 17) * 5.0) ** 2 < 24.0**2
    kidney = ((x - 33) / 5.0) ** 2 + ((y - 18) / 7.0) ** 2 + ((z - 19) / 4.0) ** 2 < 1.0
    body = (np.asarray(ct.array) > -500) & ~tumour & ~kidney
    labels = ct.with_array((1 * tumour + 2 * kidney + 3 * body).astype(np.int16))
    spect = uniform_spect_like(ct, 6e5, margin=3)
    spect.array[tumour], spect.array[kidney] = 1.2e7, 4.5e6
    args = ["dosimetry", "--seg", str(write_volume(labels, tmp_path / "labels.nrrd")), "--out", str(tmp_path / "out"),
            "--quiet", "--any-activity", "--register", "none", "--dicom-out"]
    ct_path = write_volume(ct, tmp_path / "ct.nrrd")
    for i, t in enumerate((24.0, 72.0, 144.0)):
        decayed = spect.with_array(spect.array * np.float32(math.exp(-math.log(2) * t / 100.0)))
        args += ["--timepoint", str(write_volume(decayed, tmp_path / f"spect{i}.nrrd")), str(ct_path), str(t)]
    assert main(args) == 0
    with (tmp_path / "out" / "doses.csv").open() as f:
        ours = {row["segment"]: row for row in csv.DictReader(line for line in f if not line.startswith("#"))}
    structure = dicomparser.DicomParser(str(tmp_path / "out" / "dicom" / "segments.dcm"))
    rois = {s["name"]: number for number, s in structure.GetStructures().items()}
    assert sorted(rois) == sorted(ours) == ["label_1", "label_2", "label_3"]
    for name, number in rois.items():
        dvh = dvhcalc.get_dvh(str(tmp_path / "out" / "dicom" / "segments.dcm"),
                              str(tmp_path / "out" / "dicom" / "absorbed_dose_dvk.dcm"), number)
        row = ours[name]
        assert float(row["D98_gy"]) > 3.0  # 1 cGy bins are well below 1 %
        # its rasterisation of the contours is our mask, voxel for voxel: the same volume
        assert dvh.volume == pytest.approx(float(row["volume_ml"]), rel=1e-5), name
        assert dvh.mean == pytest.approx(float(row["map_mean_dose_gy"]), rel=0.01), name
        assert dvh.D50.value == pytest.approx(float(row["D50_gy"]), rel=0.01), name
        assert dvh.D98.value == pytest.approx(float(row["D98_gy"]), rel=0.01), name
