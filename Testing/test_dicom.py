"""DICOM input (issue 12 part 1, and its bad input): series search and choice, quantitation from the
tags, geometry, refusals naming the series. Files are built with pydicom from realistic headers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import uniform_spect_like, water_phantom_ct
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from DblurDoseLib.cli import main
from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.io.volume import Volume, read_volume, write_volume

NM_STORAGE = "1.2.840.10008.5.1.4.1.1.20"
ENHANCED_PET_STORAGE = "1.2.840.10008.5.1.4.1.1.130"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY, FRAME_OF_REFERENCE = generate_uid(), generate_uid()


def _rotation(angle_deg: float, axis: int = 2) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _dataset(sop_class: str, modality: str, series_uid: str, description: str, stored: np.ndarray) -> Dataset:
    """An image object's common modules around stored pixels [frame, row, column] (16 bit)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = "Phantom^Lu177", "DBD0001"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, series_uid
    ds.FrameOfReferenceUID = FRAME_OF_REFERENCE
    ds.Modality, ds.SeriesDescription = modality, description
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    return ds


def _save(ds: Dataset, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def nm_file(path, frames: np.ndarray, position, direction=None, spacing=(4.8, 4.8, 4.8), step=None,
            quant: str = "bqml", series_uid: str | None = None, description: str = "Lu177 SPECT OSEM") -> Path:
    """A multi-frame NM RECON TOMO object of ``frames`` [frame, row, column] (Bq/mL or counts).

    ``position``: first frame's first voxel (mm); ``step``: Spacing Between Slices (mm, may be negative);
    ``quant``: "bqml" (Units BQML + Rescale Slope), "rwvm" (Real World Value Mapping only) or "cnts".
    """
    direction = np.eye(3) if direction is None else direction
    slope = float(frames.max()) / 60000 if quant != "cnts" else 1.0
    stored = np.round(frames / slope).astype(np.uint16)
    ds = _dataset(NM_STORAGE, "NM", series_uid or generate_uid(), description, stored)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    ds.NumberOfFrames = len(frames)
    ds.FrameIncrementPointer = Tag(0x0054, 0x0080)
    ds.SliceVector = list(range(1, len(frames) + 1))
    ds.NumberOfSlices = len(frames)
    ds.PixelSpacing = [spacing[1], spacing[0]]
    ds.SliceThickness = abs(spacing[2])
    ds.SpacingBetweenSlices = spacing[2] if step is None else step
    detector = Dataset()
    detector.ImagePositionPatient = [float(v) for v in position]
    detector.ImageOrientationPatient = [float(v) for v in np.concatenate([direction[:, 0], direction[:, 1]])]
    ds.DetectorInformationSequence = Sequence([detector])
    rotation = Dataset()
    rotation.ActualFrameDuration, rotation.NumberOfFramesInRotation = 20000, 60
    ds.RotationInformationSequence = Sequence([rotation])
    if quant == "bqml":
        ds.Units, ds.RescaleSlope, ds.RescaleIntercept = "BQML", f"{slope:.10g}", 0
    elif quant == "cnts":
        ds.Units = "CNTS"
    else:  # PMOD/Hermes style: the calibration is only in the mapping (an SUV item first, to be passed over)
        items = []
        for code, factor in (("g/ml", 1e-5), ("Bq/ml", 1.0)):
            unit = Dataset()
            unit.CodeValue, unit.CodingSchemeDesignator, unit.CodeMeaning = code, "UCUM", code
            item = Dataset()
            item.MeasurementUnitsCodeSequence = Sequence([unit])
            item.RealWorldValueSlope, item.RealWorldValueIntercept = slope * factor, 0.0
            item.RealWorldValueFirstValueMapped, item.RealWorldValueLastValueMapped = 0, 65535
            items.append(item)
        ds.RealWorldValueMappingSequence = Sequence(items)
    _save(ds, path)
    return path


def nm_from_volume(path, spect: Volume, **kwargs) -> Path:
    """``spect`` as an NM object (frames along its third axis)."""
    return nm_file(path, spect.array, spect.origin, spect.direction, spect.spacing, **kwargs)


def ct_series(folder, ct: Volume, series_uid: str | None = None, description: str = "CT 5mm", gaps=None,
              orientations=None, seed: int = 0) -> str:
    """``ct`` (HU) as single-frame CT files in shuffled order, named without a suffix; the series UID.

    ``gaps``: slice distances (mm) instead of the regular ones; ``orientations``: per-slice direction.
    """
    uid = series_uid or generate_uid()
    nz = ct.shape[0]
    distances = np.arange(nz) * ct.spacing[2] if gaps is None else np.asarray(gaps)
    for k in np.random.default_rng(seed).permutation(nz):
        direction = ct.direction if orientations is None else orientations[k]
        ds = _dataset(CT_STORAGE, "CT", uid, description, (ct.array[k] + 1024).astype(np.uint16)[None])
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(ct.origin) + distances[k] * ct.direction[:, 2]]
        ds.ImageOrientationPatient = [float(v) for v in np.concatenate([direction[:, 0], direction[:, 1]])]
        ds.PixelSpacing = [ct.spacing[1], ct.spacing[0]]
        ds.SliceThickness = ct.spacing[2]
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, -1024, "HU"
        ds.InstanceNumber = int(k) + 1
        _save(ds, folder / f"IM{k * 7919 % 10007:05d}")
    return uid


def localizers(folder) -> None:
    """Two localizers of different orientation (coronal, sagittal) in one series."""
    uid = generate_uid()
    for n, orientation in enumerate(([1, 0, 0, 0, 0, -1], [0, 1, 0, 0, 0, -1])):
        ds = _dataset(CT_STORAGE, "CT", uid, "Topogram 0.6 T20f", np.zeros((1, 32, 32), np.uint16))
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [-250, 0, 100 + n], orientation
        ds.PixelSpacing = [1.5, 1.5]
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        _save(ds, folder / f"TOPO{n}")


@pytest.fixture
def pair():
    """A water-block CT (int16 HU) and a SPECT on its grid (Bq/mL, hot cube)."""
    ct = water_phantom_ct((24, 24, 24), (4.8, 4.8, 4.8))
    ct = ct.with_array(ct.array.astype(np.int16))
    spect = uniform_spect_like(ct, 2e5)
    spect.array[10:14, 10:14, 10:14] = 8e5
    return ct, spect


def projections(path) -> None:
    """The raw NM TOMO projections (not a reconstruction): 60 views of 24x24."""
    import pydicom

    nm_file(path, np.full((60, 24, 24), 50.0), (0, 0, 0), quant="cnts", description="Lu177 SPECT raw")
    ds = pydicom.dcmread(path)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "TOMO", "EMISSION"]
    ds.save_as(path)


@pytest.fixture
def study(tmp_path, pair):
    """A study folder: a CT series (shuffled files), two localizers, the NM projections and the NM file."""
    ct, spect = pair
    folder = tmp_path / "study"
    ct_uid = ct_series(folder / "CT", ct)
    localizers(folder / "CT")
    projections(folder / "NM" / "raw.dcm")
    nm = nm_from_volume(folder / "NM" / "spect.dcm", spect)
    return folder, nm, ct_uid


@pytest.mark.parametrize("quant, units_from", [("bqml", "Units=BQML"),
                                               ("rwvm", "RealWorldValueMappingSequence (UCUM Bq/ml)")])
def test_nm_quantitation_from_tags(tmp_path, pair, quant, units_from):
    spect = pair[1]
    back = read_volume(nm_from_volume(tmp_path / "nm.dcm", spect, quant=quant), what="SPECT")
    np.testing.assert_allclose(back.array, spect.array, rtol=1e-3, atol=1e-3 * spect.array.max())
    assert back.metadata["spect_units"] == "bqml"
    assert back.metadata["units_from"] == units_from
    assert back.metadata["modality"] == "NM" and back.metadata["series_description"] == "Lu177 SPECT OSEM"


def test_nm_counts_need_calibration_and_take_the_duration_from_the_tags(tmp_path, pair, capsys):
    ct, spect = pair
    counts = np.round(spect.array / 100)  # counts per voxel
    nm = nm_file(tmp_path / "nm.dcm", counts, spect.origin, spacing=spect.spacing, quant="cnts")
    back = read_volume(nm, what="SPECT")
    assert back.metadata["spect_units"] == "counts" and back.metadata["units_from"] == "Units=CNTS"
    assert float(back.metadata["acquisition_duration_s"]) == pytest.approx(1200.0)  # 20 s x 60 views
    ct_path = write_volume(ct, tmp_path / "ct.nrrd")
    args = ["dose", "--spect", str(nm), "--ct", str(ct_path), "--any-activity"]
    assert main([*args, "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert f"the SPECT series {back.metadata['series_uid']} is in counts (Units=CNTS): pass --calibration" in err
    assert "--duration" not in err and not (tmp_path / "none").exists()
    assert main([*args, "--out", str(tmp_path / "tags"), "--calibration", "9"]) == 0
    assert "acquisition duration 1200 s taken from the DICOM" in capsys.readouterr().err
    nrrd = write_volume(spect.with_array(counts.astype(np.float32)), tmp_path / "counts.nrrd")
    assert main(["dose", "--spect", str(nrrd), "--ct", str(ct_path), "--any-activity", "--out", str(tmp_path / "ref"),
                 "--spect-units", "counts", "--calibration", "9", "--duration", "1200", "--quiet"]) == 0
    tags = read_volume(tmp_path / "tags" / "dose_rate_dvk.nrrd")
    np.testing.assert_allclose(tags.array, read_volume(tmp_path / "ref" / "dose_rate_dvk.nrrd").array, rtol=1e-5)
    assert tags.metadata["duration_from"].startswith("ActualFrameDuration")
    assert tags.metadata["spect_units_from"] == "Units=CNTS"


def test_study_folder_picks_spect_and_ct_by_modality(study, pair):
    folder, _, ct_uid = study
    ct, spect = pair
    read_ct = read_volume(folder, dtype=None, what="CT")
    assert read_ct.metadata["series_uid"] == ct_uid and read_ct.array.dtype == np.int16
    np.testing.assert_array_equal(read_ct.array, ct.array)  # shuffled files sorted by position
    assert read_ct.same_grid(ct)
    read_spect = read_volume(folder, what="SPECT")  # the projections are left out
    assert read_spect.metadata["series_description"] == "Lu177 SPECT OSEM" and read_spect.same_grid(spect)


def test_nm_file_named_inside_the_study_folder(study, pair):
    _, nm, _ = study
    back = read_volume(nm, what="SPECT")
    assert back.same_grid(pair[1])


def test_several_ct_series_are_listed_then_chosen(study, pair, tmp_path, capsys):
    folder, nm, ct_uid = study
    ct, _ = pair
    other = ct_series(folder / "CT2", ct.with_array(ct.array // 2), description="CT 1mm lung")
    with pytest.raises(DblurDoseError) as info:
        read_volume(folder, what="CT")
    message = str(info.value)
    assert "\n" not in message and ct_uid in message and other in message and "CT 1mm lung" in message
    assert "24x24x24" in message and "Choose one by its series UID" in message and info.value.settings == ("ct_series",)
    assert read_volume(folder, what="CT", series_uid=other).metadata["series_description"] == "CT 1mm lung"
    args = ["dose", "--spect", str(nm), "--ct", str(folder), "--out", str(tmp_path / "out"), "--quiet"]
    assert main(args) == 2 and not (tmp_path / "out").exists()
    assert "--ct-series" in capsys.readouterr().err
    assert main([*args, "--ct-series", ct_uid]) == 0


def test_missing_slice_is_refused_naming_the_series(tmp_path, pair):
    ct = pair[0]
    gaps = np.arange(ct.shape[0]) * ct.spacing[2]
    gaps[12:] += ct.spacing[2]  # one slice missing
    uid = ct_series(tmp_path / "ct", ct, gaps=gaps, description="CT gap")
    with pytest.raises(DblurDoseError, match=f"series {uid} \\('CT gap'\\) has irregular slice gaps"):
        read_volume(tmp_path / "ct", what="CT")


def test_slice_gaps_within_one_percent_are_resampled(tmp_path, pair):
    ct = pair[0]
    gaps = np.arange(ct.shape[0]) * ct.spacing[2]
    gaps[1::2] += 0.01  # 0.4% jitter
    ct_series(tmp_path / "ct", ct, gaps=gaps)
    back = read_volume(tmp_path / "ct", what="CT")
    assert back.metadata["slice_grid"].startswith("resampled onto a regular")
    assert back.spacing[2] == pytest.approx(ct.spacing[2], rel=1e-3)


def test_mixed_orientations_are_refused_naming_the_series(tmp_path, pair):
    ct = pair[0]
    orientations = [np.eye(3)] * ct.shape[0]
    orientations[5] = _rotation(90, axis=0)
    uid = ct_series(tmp_path / "ct", ct, orientations=orientations)
    with pytest.raises(DblurDoseError, match=f"series {uid} .* mixes slice orientations"):
        read_volume(tmp_path / "ct", what="CT")


def test_oblique_ct_keeps_its_direction(tmp_path, pair):
    ct = pair[0]
    oblique = Volume(ct.array, (0.9, 0.9, 2.5), (-40.0, 12.0, 300.0), _rotation(25, axis=0) @ _rotation(10))
    ct_series(tmp_path / "ct", oblique)
    back = read_volume(tmp_path / "ct", dtype=None, what="CT")
    np.testing.assert_allclose(back.direction, oblique.direction, atol=1e-6)
    np.testing.assert_allclose(back.origin, oblique.origin, atol=1e-4)
    np.testing.assert_array_equal(back.array, oblique.array)


@pytest.mark.parametrize("step", [5.0, -5.0])
def test_hot_sphere_lands_at_its_physical_position(tmp_path, step):
    frames_index = np.indices((16, 20, 18)).astype(float)  # frame, row, column
    centre = np.array([4.0, 11.0, 6.0])
    r2 = sum((frames_index[i] - centre[i]) ** 2 for i in range(3))
    frames = 1e4 + 1e6 * np.exp(-r2 / (2 * 1.2**2))
    direction = _rotation(15, axis=1) @ _rotation(-30)
    position = np.array([-31.0, 17.5, -120.0])
    nm = nm_file(tmp_path / "nm.dcm", frames, position, direction, spacing=(4.0, 4.5, abs(step)), step=step)
    expected = position + centre[2] * 4.0 * direction[:, 0] + centre[1] * 4.5 * direction[:, 1] \
        + centre[0] * step * direction[:, 2]
    back = read_volume(nm, what="SPECT")
    hot = np.array(np.unravel_index(np.argmax(back.array), back.shape))[::-1]  # x, y, z
    found = np.asarray(back.origin) + back.direction @ (hot * np.asarray(back.spacing))
    assert np.linalg.norm(found - expected) < 0.5 * min(back.spacing)
    assert back.spacing[2] == pytest.approx(5.0)


def test_dose_on_the_study_folder_equals_the_nrrd_inputs(study, pair, tmp_path, capsys):
    folder, _, _ = study
    ct, spect = pair
    assert main(["dose", "--spect", str(folder), "--ct", str(folder), "--out", str(tmp_path / "dicom")]) == 0
    log = capsys.readouterr().err
    assert "SPECT: DICOM NM series" in log and "units bqml from Units=BQML" in log
    nrrd = {"spect": write_volume(spect, tmp_path / "spect.nrrd"), "ct": write_volume(ct, tmp_path / "ct.nrrd")}
    assert main(["dose", "--spect", str(nrrd["spect"]), "--ct", str(nrrd["ct"]), "--out", str(tmp_path / "nrrd"),
                 "--quiet", "--ct-series", "1.2.3"]) == 0
    assert "--ct-series is ignored: " in capsys.readouterr().err
    dicom = read_volume(tmp_path / "dicom" / "dose_rate_dvk.nrrd")
    reference = read_volume(tmp_path / "nrrd" / "dose_rate_dvk.nrrd")
    assert dicom.same_grid(reference)
    np.testing.assert_allclose(dicom.array, reference.array, rtol=1e-3, atol=1e-4 * reference.array.max())
    assert dicom.metadata["spect_units_from"] == "Units=BQML" and "spect_series_uid" in dicom.metadata
    assert dicom.metadata["spect_scaling_from"] == "RescaleSlope/RescaleIntercept"


def test_explicit_units_that_disagree_with_the_tags_warn(study, tmp_path, capsys):
    folder, nm, _ = study
    assert main(["dose", "--spect", str(nm), "--ct", str(folder), "--out", str(tmp_path / "out"),
                 "--spect-units", "kbqml", "--any-activity", "--quiet"]) == 0
    assert "the SPECT units given (kbqml) override the SPECT's Units=BQML (bqml)" in capsys.readouterr().err
    assert read_volume(tmp_path / "out" / "dose_rate_dvk.nrrd").metadata["spect_units_from"] == "given by the user"


def test_non_activity_units_are_refused_with_nothing_written(tmp_path, pair, capsys):
    import pydicom

    ct, spect = pair
    nm = nm_from_volume(tmp_path / "nm.dcm", spect)
    ds = pydicom.dcmread(nm)
    ds.Units = "GML"
    ds.save_as(nm)
    code = main(["dose", "--spect", str(nm), "--ct", str(write_volume(ct, tmp_path / "ct.nrrd")),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Units=GML" in err and "--spect-units" in err and not (tmp_path / "out").exists()


def test_a_folder_without_the_wanted_modality_is_a_clear_error(tmp_path, pair):
    ct_series(tmp_path / "ct", pair[0], description="CT only")
    with pytest.raises(DblurDoseError, match="no NM/PT series for the SPECT .*'CT only'.*choose a series by its UID"):
        read_volume(tmp_path / "ct", what="SPECT")


def _item(**tags) -> Dataset:
    item = Dataset()
    for name, value in tags.items():
        setattr(item, name, value)
    return item


def test_enhanced_object_with_per_frame_positions_and_scaling(tmp_path, pair):
    """An enhanced PET object: frames in shuffled order, each with its own position and rescale slope."""
    spect = pair[1]
    direction = _rotation(20, axis=0)
    spect = Volume(spect.array, (4.0, 4.0, 3.0), (-50.0, 30.0, -200.0), direction)
    order = np.random.default_rng(3).permutation(spect.shape[0])
    slopes = 20.0 + 2.0 * order
    stored = np.round(spect.array[order] / slopes[:, None, None]).astype(np.uint16)
    ds = _dataset(ENHANCED_PET_STORAGE, "PT", generate_uid(), "PET AC enhanced", stored)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.NumberOfFrames, ds.Units = len(order), "BQML"
    orientation = [float(v) for v in np.concatenate([direction[:, 0], direction[:, 1]])]
    ds.SharedFunctionalGroupsSequence = Sequence([_item(
        PlaneOrientationSequence=Sequence([_item(ImageOrientationPatient=orientation)]),
        PixelMeasuresSequence=Sequence([_item(PixelSpacing=[4.0, 4.0], SliceThickness=3.0)]))])
    ds.PerFrameFunctionalGroupsSequence = Sequence([_item(
        PlanePositionSequence=Sequence([_item(ImagePositionPatient=[
            float(v) for v in np.asarray(spect.origin) + 3.0 * k * direction[:, 2]])]),
        PixelValueTransformationSequence=Sequence([_item(RescaleSlope=float(slope), RescaleIntercept=0.0,
                                                         RescaleType="BQML")]))
        for k, slope in zip(order, slopes)])
    _save(ds, tmp_path / "pet.dcm")
    back = read_volume(tmp_path / "pet.dcm", what="SPECT")
    assert back.same_grid(spect)
    np.testing.assert_allclose(back.array, spect.array, rtol=1e-3, atol=0.5 * slopes.max())
    assert back.metadata["scaling_from"] == "per-frame PixelValueTransformationSequence"
    assert back.metadata["spect_units"] == "bqml"


def test_a_file_of_another_modality_or_a_damaged_file_is_refused(study, tmp_path):
    _, nm, _ = study
    with pytest.raises(DblurDoseError, match="no CT series for the CT in .*spect.dcm.*Lu177 SPECT OSEM"):
        read_volume(nm, what="CT")
    with pytest.raises(DblurDoseError, match="no NM/PT series for the SPECT .*NM TOMO, not a reconstruction"):
        read_volume(nm.parent / "raw.dcm", what="SPECT")
    damaged = tmp_path / "damaged.dcm"
    damaged.write_bytes(nm.read_bytes()[:2000])
    with pytest.raises(DblurDoseError, match="damaged.dcm|no DICOM series"):
        read_volume(damaged, what="SPECT")


def test_compressed_pixels_without_a_pydicom_decoder_are_read_by_simpleitk(tmp_path, pair, monkeypatch):
    import pydicom
    from pydicom.uid import RLELossless

    ct = pair[0]
    ct_series(tmp_path / "ct", ct)
    for file in (tmp_path / "ct").iterdir():
        ds = pydicom.dcmread(file)
        ds.compress(RLELossless)
        ds.save_as(file)

    def no_decoder(self):
        raise NotImplementedError("no decoder for this transfer syntax")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(no_decoder))
    back = read_volume(tmp_path / "ct", dtype=None, what="CT")
    np.testing.assert_array_equal(back.array, ct.array)  # GDCM's rescale is not applied twice
    assert back.same_grid(ct)


def _gap(folder, ct):
    gaps = np.arange(ct.shape[0]) * ct.spacing[2]
    gaps[12:] += ct.spacing[2]
    return ct_series(folder, ct, gaps=gaps, description="CT gap")


def _mixed(folder, ct):
    orientations = [np.eye(3)] * ct.shape[0]
    orientations[5] = _rotation(90, axis=0)
    return ct_series(folder, ct, orientations=orientations, description="CT mixed")


def _two(folder, ct):
    ct_series(folder / "a", ct, description="CT A")
    return ct_series(folder / "b", ct, description="CT B")


@pytest.mark.parametrize("maker, fix", [(_gap, "regular spacing"), (_mixed, "one orientation"),
                                        (_two, "--ct-series")])
def test_unreadable_ct_series_end_in_one_line_naming_it_with_nothing_written(tmp_path, pair, capsys, maker, fix):
    ct, spect = pair
    uid = maker(tmp_path / "ct", ct)
    nm = nm_from_volume(tmp_path / "nm.dcm", spect)
    code = main(["dose", "--spect", str(nm), "--ct", str(tmp_path / "ct"), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and uid in err and fix in err
    assert not (tmp_path / "out").exists()
