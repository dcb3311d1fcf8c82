"""DICOM input on files nobody here wrote (issue 12 part 3 and 4): the CT series, CT and RT Dose in pydicom's
wheel, the enhanced CT of pydicom-data and the PMOD-written NM dose kernel in the PyTheranostics wheel
(both installed by the ``test`` extra). Each is read through the public reader and checked against an
independent reading (GDCM through SimpleITK, the kernel's Interfile twin) voxel by voxel: geometry and
values. Nothing is downloaded: the files are found on disk, and sockets are closed while these tests run."""

from __future__ import annotations

import importlib.util
import shutil
import socket
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from DblurDoseLib.cli import main
from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.io.volume import Volume, read_volume, write_volume

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to fetch a file (pydicom's get_testdata_file downloads what it lacks) fails loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to reach the network; use files installed by the test extra")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def pydicom_file(name: str) -> Path:
    path = PYDICOM_FILES / name
    if not path.exists():
        pytest.skip(f"{name} is not in this pydicom's wheel")
    return path


def package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing it (skip when not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"{package} is not installed (pip install -e '.[test]')")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        pytest.skip(f"{relative} is not in the installed {package}")
    return path


def assert_same_as_gdcm(volume: Volume, image: sitk.Image, scale: float = 1.0) -> None:
    """Every voxel of ``volume`` sits on a voxel of GDCM's ``image`` (1e-3 mm) and holds its value x ``scale``."""
    k, j, i = np.indices(volume.shape, dtype=np.float64)
    points = np.asarray(volume.origin) + (np.stack([i, j, k], -1) * volume.spacing) @ np.asarray(volume.direction).T
    direction = np.array(image.GetDirection()).reshape(3, 3)
    index = (points - image.GetOrigin()) @ direction / np.array(image.GetSpacing())  # direction is orthonormal
    nearest = np.rint(index).astype(int)
    np.testing.assert_allclose(index, nearest, atol=1e-3 / min(image.GetSpacing()))
    assert nearest.min() >= 0 and (nearest.max(axis=(0, 1, 2)) < image.GetSize()).all()
    reference = sitk.GetArrayFromImage(image)[nearest[..., 2], nearest[..., 1], nearest[..., 0]]
    np.testing.assert_allclose(volume.array, reference * scale, rtol=1e-6, atol=1e-9)


# --- pydicom's own files ------------------------------------------------------------------------------
def test_ct_series_from_a_dicomdir_reads_as_gdcm_does():
    folder = pydicom_file("dicomdirtests/98892001/CT5N")  # five files named against their slice order
    back = read_volume(folder, dtype=None, what="CT")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    assert back.shape == (5, 16, 16) and back.spacing[2] == pytest.approx(2.5)
    assert back.metadata["series_uid"] == str(pydicom.dcmread(next(folder.iterdir())).SeriesInstanceUID)
    assert_same_as_gdcm(back, reader.Execute())


def test_single_ct_file_reads_as_gdcm_does():
    path = pydicom_file("CT_small.dcm")
    back = read_volume(path, dtype=None, what="CT")
    assert back.shape == (1, 128, 128) and back.metadata["scaling_from"] == "RescaleSlope/RescaleIntercept"
    assert_same_as_gdcm(back, sitk.ReadImage(str(path)))


def test_rt_dose_reads_on_its_grid_frame_offsets_with_its_scaling():
    """pydicom's RT Dose: 15 frames 5 mm apart by the Grid Frame Offset Vector, Dose Grid Scaling 1e-6 Gy."""
    path = pydicom_file("rtdose.dcm")
    back = read_volume(path, what="image")
    assert back.shape == (15, 10, 10) and back.spacing == pytest.approx((10.0, 10.0, 5.0))
    assert back.metadata["scaling_from"] == "DoseGridScaling"
    assert_same_as_gdcm(back, sitk.ReadImage(str(path)), scale=1e-6)  # GDCM leaves the scaling out


def test_our_rt_dose_reads_back_where_it_was_written(tmp_path):
    """dblurdose's own RT Dose (oblique, a hot spot off centre) read back: same grid, values within the step."""
    from DblurDoseLib.io import dicom_export

    a = np.deg2rad(20.0)
    direction = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    values = np.zeros((9, 10, 11), np.float32)
    values[2, 7, 3] = 4.0
    values[values == 0] = 0.25
    dose = Volume(values, (2.5, 3.0, 4.0), (-12.0, 40.0, -310.0), direction)
    path = dicom_export.write_rt_dose(dose, tmp_path / "rd.dcm", dicom_export.study_link(dose, "dose.nrrd"))
    back = read_volume(path, what="image")
    assert back.same_grid(dose)
    np.testing.assert_allclose(back.array, values, atol=4.0 / 2**32 + 1e-7)


def test_irregular_ct_series_of_a_dicomdir_ends_in_one_line():
    folder = pydicom_file("dicomdirtests/77654033/CT2")  # slices at -99.5, 103.0, 104.3, 105.5 mm
    uid = str(pydicom.dcmread(next(folder.iterdir())).SeriesInstanceUID)
    with pytest.raises(DblurDoseError) as info:
        read_volume(folder, what="CT")
    message = str(info.value)
    assert "\n" not in message and uid in message and "irregular slice gaps" in message
    assert "export the complete series with regular spacing" in message


@pytest.mark.parametrize("name, what, expected", [
    ("rtdose.dcm", "SPECT", "no NM/PT series for the SPECT"),
    ("MR_small.dcm", "CT", "no CT series for the CT"),
    ("CT_small.dcm", "SPECT", "no NM/PT series for the SPECT"),
])
def test_a_third_party_file_of_another_modality_ends_in_one_line(name, what, expected):
    path = pydicom_file(name)
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
    with pytest.raises(DblurDoseError) as info:
        read_volume(path, what=what)
    message = str(info.value)
    assert "\n" not in message and expected in message and uid in message
    assert "choose a series by its UID" in message and info.value.settings == (f"{what.lower()}_series",)


# --- pydicom-data: an enhanced CT ------------------------------------------------------------------------
def test_enhanced_ct_of_pydicom_data_reads_as_gdcm_does():
    """Enhanced CT Image Storage, two frames 10 mm apart, rows running to patient right (-x), shared
    Pixel Value Transformation (intercept -1024) and a Real World Value Mapping in ml/100ml/s."""
    path = package_file("data_store", "data/eCT_Supplemental.dcm")
    back = read_volume(path, dtype=None, what="CT")
    assert back.shape == (2, 512, 512) and back.spacing[2] == pytest.approx(10.0)
    np.testing.assert_allclose(back.direction[:, 0], [-1, 0, 0], atol=1e-9)
    assert back.metadata["scaling_from"] == "per-frame PixelValueTransformationSequence"
    assert back.array.min() == -1024  # stored 0 is air
    assert_same_as_gdcm(back, sitk.ReadImage(str(path)))  # GDCM applies the shared transformation too


# --- PyTheranostics: a PMOD-written NM object -------------------------------------------------------
KERNEL, TWIN = "kernels/DKsofttissueICRPmGyperMBqs.dcm", "kernels/DK_softtissueICRP_mGyperMBqs.img"


def _kernel(tmp_path, orientation=None) -> Path:
    """The PyTheranostics Lu-177 soft-tissue dose kernel (51^3 of 4.7952 mm, PMOD 4.0 from (X)MedCon), copied;
    with ``orientation`` written into its empty Image Orientation (Patient)."""
    path = shutil.copy(package_file("doodle", KERNEL), tmp_path / "kernel.dcm")
    if orientation is not None:
        ds = pydicom.dcmread(path)
        ds.DetectorInformationSequence[0].ImageOrientationPatient = orientation
        ds.save_as(path)
    return Path(path)


def test_pmod_nm_object_without_orientation_ends_in_one_line(tmp_path, capsys):
    path = _kernel(tmp_path)
    uid = str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)
    with pytest.raises(DblurDoseError) as info:
        read_volume(path, what="SPECT")
    message = str(info.value)
    assert "\n" not in message and uid in message
    assert "has no valid Image Orientation (Patient); export it again with its geometry tags" in message
    ct = write_volume(Volume(np.zeros((4, 4, 4), np.int16) - 1000, (4.0, 4.0, 4.0)), tmp_path / "ct.nrrd")
    assert main(["dose", "--spect", str(path), "--ct", str(ct), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and uid in err and not (tmp_path / "out").exists()


def test_pmod_nm_object_values_come_from_its_real_world_value_mapping(tmp_path, capsys):
    """PMOD keeps the calibration only in a Real World Value Mapping in "no units" (stored x 6.3e-6): the
    values read equal the kernel's float Interfile twin to 0.1 % and its peak lands on the centre voxel."""
    path = _kernel(tmp_path, orientation=[1, 0, 0, 0, 1, 0])
    back = read_volume(path, what="image")
    assert back.shape == (51, 51, 51) and back.spacing == pytest.approx((4.7952,) * 3)
    assert back.metadata["scaling_from"] == "RealWorldValueMappingSequence (UCUM 1, not an activity unit)"
    assert "spect_units" not in back.metadata
    peak = np.array(np.unravel_index(np.argmax(back.array), back.shape))[::-1]
    np.testing.assert_allclose(np.asarray(back.origin) + back.direction @ (peak * back.spacing), [25 * 4.7952] * 3,
                               atol=0.5 * 4.7952)
    twin = np.fromfile(package_file("doodle", TWIN), dtype="<f4").reshape(back.shape)
    slope = float(pydicom.dcmread(path, stop_before_pixels=True).RealWorldValueMappingSequence[0].RealWorldValueSlope)
    assert back.array[25, 25, 25] == pytest.approx(twin[25, 25, 25], rel=1e-3)  # 0.21 mGy/MBq/s
    # elsewhere the 16-bit file holds the kernel to within one step of its mapping (PMOD truncates; the
    # centre's neighbours are 357 steps): the values are the twin's, not the stored integers
    assert np.abs(back.array - twin).max() < slope
    # as a SPECT its Units MGY_MBQS are no activity: refused in one line naming the tag and the fix
    ct = write_volume(Volume(np.zeros((4, 4, 4), np.int16) - 1000, (4.0, 4.0, 4.0)), tmp_path / "ct.nrrd")
    assert main(["dose", "--spect", str(path), "--ct", str(ct), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Units=MGY_MBQS" in err and "--spect-units" in err
