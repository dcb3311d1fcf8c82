"""DICOM input from vendor-shaped headers (issue 12 part 3): objects built with pydicom after the header
structures that Siemens, GE, Hermes/PMOD and CT scanners write, each holding a hot sphere at a known
patient position. Each case asserts the geometry (the sphere's centroid within half a voxel of where it
was put) and the values (every voxel, Bq/mL or counts, to 0.1 %) through the public reader; one runs
``dblurdose dose`` on a study folder. Unreadable variants end in one line naming the series and the fix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import generate_uid
from test_dicom import CT_STORAGE, NM_STORAGE, _dataset, _item, _rotation, _save

from DblurDoseLib.cli import main
from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.io.volume import Volume, read_volume

#: the sphere: centre (mm, LPS), radius (mm), concentration inside and around (Bq/mL)
CENTRE, RADIUS, HOT, BACKGROUND = np.array([23.0, -41.5, -612.0]), 13.0, 1.0e6, 5.0e4


@dataclass
class Grid:
    """Where an object's voxels are: frame k, row r, column c at origin + c dx row + r dy column + k dz normal."""

    shape: tuple[int, int, int]  # frames, rows, columns
    spacing: tuple[float, float, float]  # column (x), row (y), frame step (mm; negative: frames run backwards)
    origin: np.ndarray  # first frame's first voxel (mm)
    direction: np.ndarray  # columns: row direction, column direction, normal

    def points(self) -> np.ndarray:
        """[frame, row, column, 3] voxel centres (mm)."""
        k, r, c = np.indices(self.shape, dtype=np.float64)
        dx, dy, dz = self.spacing
        d = self.direction
        return (self.origin + c[..., None] * dx * d[:, 0] + r[..., None] * dy * d[:, 1]
                + k[..., None] * dz * d[:, 2])


def sphere(points: np.ndarray, hot: float = HOT, background: float = BACKGROUND) -> np.ndarray:
    """The phantom at ``points`` (mm): a sphere with a 2 mm soft edge (no partial-volume bias of the centroid)."""
    distance = np.linalg.norm(points - CENTRE, axis=-1)
    return background + (hot - background) * np.clip((RADIUS - distance) / 2.0 + 0.5, 0.0, 1.0)


def grid_around(shape=(22, 20, 24), spacing=(4.7952, 4.7952, 4.7952), direction=None) -> Grid:
    """A grid of ``shape`` whose middle is a few mm off the sphere's centre (not a voxel centre)."""
    direction = np.eye(3) if direction is None else direction
    half = (np.array(shape[::-1]) - 1) / 2 * np.abs(spacing)
    origin = CENTRE + np.array([3.1, -2.2, 1.7]) - direction @ (half * np.sign(spacing))
    return Grid(shape, spacing, origin, direction)


def voxel_points(volume: Volume) -> np.ndarray:
    """[z, y, x, 3] voxel centres (mm) of a Volume read back."""
    k, j, i = np.indices(volume.shape, dtype=np.float64)
    ijk = np.stack([i, j, k], axis=-1) * np.asarray(volume.spacing)
    return np.asarray(volume.origin) + ijk @ np.asarray(volume.direction).T


def assert_sphere(volume: Volume, truth, background: float = BACKGROUND) -> None:
    """The sphere's centroid within half a voxel of CENTRE; every value equals ``truth`` at its voxel to 0.1 %."""
    points = voxel_points(volume)
    excess = np.clip(volume.array.astype(np.float64) - background, 0, None)
    centroid = (points * excess[..., None]).sum(axis=(0, 1, 2)) / excess.sum()
    assert np.linalg.norm(centroid - CENTRE) < 0.5 * min(np.abs(volume.spacing)), centroid
    np.testing.assert_allclose(volume.array, truth(points), rtol=1e-3)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    return _item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def _stored(values: np.ndarray, signed: bool = False) -> tuple[np.ndarray, float]:
    """16-bit stored values and the slope that maps them back (full range used)."""
    top = 32000 if signed else 64000
    slope = float(values.max()) / top
    return np.round(values / slope).astype(np.int16 if signed else np.uint16), slope


def _nm_common(ds: Dataset, manufacturer: str, model: str, frames: int) -> None:
    """The NM Image, Multi-frame and isotope modules as scanners fill them for a Lu-177 reconstruction."""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "RECON TOMO", "EMISSION"]
    ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = manufacturer, model, "1.0"
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = Tag(0x0054, 0x0080)
    ds.SliceVector, ds.NumberOfSlices = list(range(1, frames + 1)), frames
    ds.NumberOfEnergyWindows = 1
    window = _item(EnergyWindowRangeSequence=Sequence([_item(EnergyWindowLowerLimit=187.2,
                                                             EnergyWindowUpperLimit=228.8)]),
                   EnergyWindowName="Lu177_208")
    ds.EnergyWindowInformationSequence = Sequence([window])
    ds.RadiopharmaceuticalInformationSequence = Sequence([_item(
        RadionuclideCodeSequence=Sequence([_code("C-145A8", "SRT", "^177^Lutetium")]),
        RadiopharmaceuticalStartDateTime="20240101093000", RadionuclideTotalDose=7.4e9)])
    ds.PatientOrientationCodeSequence = Sequence([_code("F-10450", "SRT", "recumbent")])
    ds.CorrectedImage = ["UNIF", "COR", "ATTN", "SCAT", "DECY"]


def _orientation(direction: np.ndarray) -> list[float]:
    return [float(v) for v in np.concatenate([direction[:, 0], direction[:, 1]])]


def siemens(path, grid: Grid) -> None:
    """Symbia Intevo xSPECT Quant: Units BQML, Rescale Slope (DS), geometry at the top and in the detector item."""
    stored, slope = _stored(sphere(grid.points()))
    ds = _dataset(NM_STORAGE, "NM", generate_uid(), "xSPECT QUANT Lu177", stored)
    _nm_common(ds, "SIEMENS NM", "Symbia Intevo Bold", grid.shape[0])
    ds.PixelSpacing = [grid.spacing[1], grid.spacing[0]]
    ds.SliceThickness, ds.SpacingBetweenSlices = abs(grid.spacing[2]), grid.spacing[2]
    ds.ImagePositionPatient = [float(v) for v in grid.origin]
    ds.ImageOrientationPatient = _orientation(grid.direction)
    ds.DetectorInformationSequence = Sequence([_item(ImagePositionPatient=ds.ImagePositionPatient,
                                                     ImageOrientationPatient=ds.ImageOrientationPatient,
                                                     CollimatorGridName="MELP", CollimatorType="PARA")])
    ds.RotationInformationSequence = Sequence([_item(ActualFrameDuration=15000, NumberOfFramesInRotation=32,
                                                     StartAngle=0, AngularStep=5.625, ScanArc=180)])
    ds.Units, ds.RescaleSlope, ds.RescaleIntercept = "BQML", f"{slope:.10g}", "0"
    ds.DecayCorrection = "START"
    _save(ds, path)


def ge(path, grid: Grid) -> None:
    """Xeleris/Q.Metrix: position and orientation only in the Detector Information Sequence, GE private tags."""
    stored, slope = _stored(sphere(grid.points()))
    ds = _dataset(NM_STORAGE, "NM", generate_uid(), "Lu177 SPECT Q.Metrix", stored)
    _nm_common(ds, "GE MEDICAL SYSTEMS", "Tandem_Discovery_670_Pro", grid.shape[0])
    ds.PixelSpacing = [grid.spacing[1], grid.spacing[0]]
    ds.SliceThickness, ds.SpacingBetweenSlices = abs(grid.spacing[2]), grid.spacing[2]
    ds.DetectorInformationSequence = Sequence([_item(ImagePositionPatient=[float(v) for v in grid.origin],
                                                     ImageOrientationPatient=_orientation(grid.direction),
                                                     FocalDistance=0, ZoomFactor=[1.0, 1.0])])
    ds.add_new(0x00090010, "LO", "GEMS_GENIE_1")
    ds.add_new(0x00091001, "LO", "Lu177 SPECT")
    ds.add_new(0x00091010, "SL", 1)
    ds.Units, ds.RescaleSlope, ds.RescaleIntercept = "BQML", slope, 0
    _save(ds, path)


def hermes(path, grid: Grid) -> None:
    """Hermes/PMOD: signed pixels, no Units, the calibration only in the Real World Value Mapping (an SUV item
    first), top-level Image Position/Orientation with Spacing Between Slices, no Detector Information."""
    truth = sphere(grid.points())
    stored, slope = _stored(truth - 2.0e4, signed=True)  # an intercept: stored 0 is 20 kBq/mL
    ds = _dataset(NM_STORAGE, "NM", generate_uid(), "HERMES HybridRecon Lu177", stored)
    _nm_common(ds, "Hermes Medical Solutions", "HybridRecon", grid.shape[0])
    ds.PixelSpacing = [grid.spacing[1], grid.spacing[0]]
    ds.SliceThickness, ds.SpacingBetweenSlices = abs(grid.spacing[2]), grid.spacing[2]
    ds.ImagePositionPatient = [float(v) for v in grid.origin]
    ds.ImageOrientationPatient = _orientation(grid.direction)
    items = []
    for code, factor in (("g/ml", 1.0 / 7.4e9 * 70000), ("Bq/ml", 1.0)):
        items.append(_item(MeasurementUnitsCodeSequence=Sequence([_code(code, "UCUM", code)]), LUTLabel=code,
                           LUTExplanation=code, RealWorldValueFirstValueMapped=-32768,
                           RealWorldValueLastValueMapped=32767, RealWorldValueSlope=slope * factor,
                           RealWorldValueIntercept=2.0e4 * factor))
    ds.RealWorldValueMappingSequence = Sequence(items)
    _save(ds, path)


def counts(path, grid: Grid) -> None:
    """Counts (Units CNTS), no rescale, two rotations in the Rotation Information Sequence."""
    ds = _dataset(NM_STORAGE, "NM", generate_uid(), "Lu177 SPECT counts",
                  np.round(sphere(grid.points(), 6.0e4, 5.0e3)).astype(np.uint16))
    _nm_common(ds, "SIEMENS NM", "Symbia T2", grid.shape[0])
    ds.PixelSpacing = [grid.spacing[1], grid.spacing[0]]
    ds.SliceThickness, ds.SpacingBetweenSlices = abs(grid.spacing[2]), grid.spacing[2]
    ds.DetectorInformationSequence = Sequence([_item(ImagePositionPatient=[float(v) for v in grid.origin],
                                                     ImageOrientationPatient=_orientation(grid.direction))])
    ds.RotationInformationSequence = Sequence([
        _item(ActualFrameDuration=25000, NumberOfFramesInRotation=30, RotationDirection="CW"),
        _item(ActualFrameDuration=15000, NumberOfFramesInRotation=30, RotationDirection="CC")])
    ds.Units = "CNTS"
    _save(ds, path)


def single_frames(folder, grid: Grid) -> None:
    """One file per slice (PET-style export of a SPECT), each its own Rescale Slope, files in shuffled order."""
    truth, uid = sphere(grid.points()), generate_uid()
    for k in np.random.default_rng(7).permutation(grid.shape[0]):
        stored, slope = _stored(truth[k:k + 1])
        ds = _dataset(NM_STORAGE, "NM", uid, "Lu177 SPECT slices", stored)
        ds.ImageType = ["DERIVED", "SECONDARY", "RECON TOMO", "EMISSION"]
        ds.ImagePositionPatient = [float(v) for v in grid.origin + k * grid.spacing[2] * grid.direction[:, 2]]
        ds.ImageOrientationPatient = _orientation(grid.direction)
        ds.PixelSpacing = [grid.spacing[1], grid.spacing[0]]
        ds.SliceThickness = abs(grid.spacing[2])
        ds.InstanceNumber = int(k) + 1
        ds.Units, ds.RescaleSlope, ds.RescaleIntercept = "BQML", slope, 0
        _save(ds, folder / f"{(int(k) * 7919) % 10007:05d}.dcm")


OBLIQUE = _rotation(18, axis=0) @ _rotation(-25, axis=2) @ _rotation(7, axis=1)

CASES = {  # name: (writer, grid, units read, where the units come from)
    "siemens": (siemens, grid_around(), "bqml", "Units=BQML"),
    "ge_detector_only_reversed": (ge, grid_around(spacing=(4.418, 4.418, -4.418)), "bqml", "Units=BQML"),
    "hermes_rwvm_only": (hermes, grid_around(spacing=(3.9, 3.9, 3.9)), "bqml",
                         "RealWorldValueMappingSequence (UCUM Bq/ml)"),
    "siemens_oblique": (siemens, grid_around(direction=OBLIQUE), "bqml", "Units=BQML"),
    "single_frames_shuffled": (single_frames, grid_around(spacing=(4.0, 4.0, 3.27), direction=_rotation(12, 1)),
                               "bqml", "Units=BQML"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_vendor_nm_sphere_lands_where_it_was_put_with_its_bqml(tmp_path, name):
    writer, grid, units, units_from = CASES[name]
    target = tmp_path / "nm" if writer is single_frames else tmp_path / "nm.dcm"
    writer(target, grid)
    back = read_volume(target, what="SPECT")
    assert back.metadata["spect_units"] == units and back.metadata["units_from"] == units_from
    assert back.shape == grid.shape and np.allclose(back.spacing, np.abs(grid.spacing))
    assert_sphere(back, sphere)


def test_counts_with_two_rotations(tmp_path):
    grid = grid_around(direction=_rotation(-9, axis=0))
    counts(tmp_path / "nm.dcm", grid)
    back = read_volume(tmp_path / "nm.dcm", what="SPECT")
    assert back.metadata["spect_units"] == "counts" and back.metadata["units_from"] == "Units=CNTS"
    assert float(back.metadata["acquisition_duration_s"]) == pytest.approx(30 * 25.0 + 30 * 15.0)
    assert_sphere(back, lambda p: np.round(sphere(p, 6.0e4, 5.0e3)), background=5.0e3)


def ct_hu(points: np.ndarray) -> np.ndarray:
    """The CT phantom (HU): a bone-dense sphere in a block of water (40 mm each side of the centre) in air."""
    inside = (np.abs(points - CENTRE) < 40.0).all(axis=-1)
    return np.where(inside, np.round(sphere(points, 1000.0, 0.0)), -1000.0)


def ct_sphere_series(folder, grid: Grid, description: str = "CT 3mm Br38") -> str:
    """Single-frame CT files (:func:`ct_hu`) in shuffled order, named without a suffix; the series UID."""
    hu = ct_hu(grid.points()).astype(np.int16)
    uid = generate_uid()
    for k in np.random.default_rng(11).permutation(grid.shape[0]):
        ds = _dataset(CT_STORAGE, "CT", uid, description, (hu[k:k + 1] + 1024).astype(np.uint16))
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "CT_SOM5 SPI"]
        ds.Manufacturer, ds.ManufacturerModelName = "SIEMENS", "Symbia Intevo Bold"
        ds.ImagePositionPatient = [float(v) for v in grid.origin + k * grid.spacing[2] * grid.direction[:, 2]]
        ds.ImageOrientationPatient = _orientation(grid.direction)
        ds.PixelSpacing = [grid.spacing[1], grid.spacing[0]]
        ds.SliceThickness, ds.KVP = abs(grid.spacing[2]), 130
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "1", "-1024", "HU"
        ds.InstanceNumber = int(k) + 1
        _save(ds, folder / f"IM{(int(k) * 104729) % 10007:05d}")
    return uid


def test_ct_slices_in_shuffled_order(tmp_path):
    grid = grid_around((30, 28, 32), (3.0, 3.0, 3.0))
    uid = ct_sphere_series(tmp_path / "ct", grid)
    back = read_volume(tmp_path / "ct", dtype=None, what="CT")
    assert back.metadata["series_uid"] == uid and back.array.dtype == np.int16
    assert_sphere(back, ct_hu, background=0.0)


def test_dose_on_a_vendor_study_folder_puts_the_dose_on_the_sphere(tmp_path, capsys):
    folder = tmp_path / "study"
    ct_grid = grid_around((30, 28, 32), (3.0, 3.0, 3.0))
    ct_sphere_series(folder / "CT", ct_grid)
    siemens(folder / "NM" / "xspect.dcm", grid_around())
    assert main(["dose", "--spect", str(folder), "--ct", str(folder), "--out", str(tmp_path / "out")]) == 0
    assert "units bqml from Units=BQML" in capsys.readouterr().err
    dose = read_volume(tmp_path / "out" / "dose_rate_dvk.nrrd")
    assert dose.shape == ct_grid.shape
    points = voxel_points(dose)
    hot = np.clip(dose.array - 0.5 * dose.array.max(), 0, None)
    centroid = (points * hot[..., None]).sum(axis=(0, 1, 2)) / hot.sum()
    assert np.linalg.norm(centroid - CENTRE) < 0.5 * min(dose.spacing), centroid


# --- unreadable variants: one line naming the series and the fix ------------------------------------
def _no_spacing(ds):
    del ds.SpacingBetweenSlices, ds.SliceThickness


def _empty_orientation(ds):
    ds.DetectorInformationSequence[0].ImageOrientationPatient = None
    del ds.ImageOrientationPatient


def _no_position(ds):
    del ds.DetectorInformationSequence, ds.ImagePositionPatient


@pytest.mark.parametrize("damage, fix", [
    (_no_spacing, "export it again with it"),
    (_empty_orientation, "no valid Image Orientation (Patient); export it again with its geometry tags"),
    (_no_position, "export it as an enhanced or single-frame series"),
])
def test_vendor_nm_without_geometry_ends_in_one_line(tmp_path, capsys, damage, fix):
    import pydicom

    nm = tmp_path / "nm.dcm"
    siemens(nm, grid_around((6, 8, 8)))
    ds = pydicom.dcmread(nm)
    damage(ds)
    ds.save_as(nm)
    with pytest.raises(DblurDoseError) as info:
        read_volume(nm, what="SPECT")
    message = str(info.value)
    assert "\n" not in message and ds.SeriesInstanceUID in message and "xSPECT QUANT Lu177" in message
    assert fix in message
    ct = tmp_path / "ct"
    ct_sphere_series(ct, grid_around((4, 8, 8), (3.0, 3.0, 3.0)))
    assert main(["dose", "--spect", str(nm), "--ct", str(ct), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and ds.SeriesInstanceUID in err and fix in err
    assert not (tmp_path / "out").exists()
