"""Reading and writing images keeps geometry; bad paths give clear errors."""

import numpy as np
import pytest

from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.io.volume import Volume, read_volume, write_volume


def _oblique_direction(angle_deg: float = 20.0) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz", ".mha"])
def test_round_trip_keeps_geometry(tmp_path, suffix):
    rng = np.random.default_rng(1)
    vol = Volume(rng.random((5, 6, 7)).astype(np.float32), (0.98, 1.5, 3.0), (-10.0, 20.5, 7.0), _oblique_direction())
    path = write_volume(vol, tmp_path / f"img{suffix}")
    back = read_volume(path)
    assert back.shape == vol.shape
    np.testing.assert_allclose(back.array, vol.array, rtol=1e-6)
    np.testing.assert_allclose(back.spacing, vol.spacing, rtol=1e-5)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-5)


def test_dicom_series_round_trip(tmp_path):
    import SimpleITK as sitk

    hu = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) - 1000
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((0.8, 0.8, 2.5))
    image.SetOrigin((-3.0, 4.0, 10.0))
    folder = tmp_path / "ct"
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(hu.shape[0]):
        sl = image[:, :, k]
        sl.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.1")
        sl.SetMetaData("0020|0032", "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))))
        sl.SetMetaData("0020|0037", "1\\0\\0\\0\\1\\0")
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0008|0060", "CT")
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(sl)
    back = read_volume(folder, what="CT")
    np.testing.assert_allclose(back.array, hu)
    np.testing.assert_allclose(back.spacing, (0.8, 0.8, 2.5), rtol=1e-5)
    np.testing.assert_allclose(back.origin, (-3.0, 4.0, 10.0), atol=1e-4)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DblurDoseError, match="SPECT file not found"):
        read_volume(tmp_path / "nope.nrrd", what="SPECT")


def test_unreadable_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.nrrd"
    bad.write_text("not an image")
    with pytest.raises(DblurDoseError, match="could not read the CT"):
        read_volume(bad, what="CT")


def test_write_refuses_to_overwrite(tmp_path):
    vol = Volume(np.zeros((2, 2, 2), np.float32))
    path = write_volume(vol, tmp_path / "a.nrrd")
    with pytest.raises(DblurDoseError, match="allow overwriting"):
        write_volume(vol, path)
    write_volume(vol.with_array(np.ones((2, 2, 2), np.float32)), path, overwrite=True)
    assert read_volume(path).array.max() == 1
