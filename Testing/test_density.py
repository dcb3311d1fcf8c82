"""HU to density calibration and the HU sanity check."""

import numpy as np
import pytest

from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.physics.density import DEFAULT_CALIBRATION, check_ct_is_hu, hu_to_density, load_calibration


def test_default_curve_points():
    rho = hu_to_density(np.array([-1000.0, 0.0, 60.0, 1500.0, -2000.0, 5000.0]))
    np.testing.assert_allclose(rho[:4], [0.0012, 1.0, 1.06, 1.92], rtol=1e-5)
    assert rho[4] == pytest.approx(0.0012) and rho[5] == pytest.approx(2.8)  # clamped
    assert rho.dtype == np.float32


def test_user_csv_replaces_the_curve(tmp_path):
    csv = tmp_path / "cal.csv"
    csv.write_text("hu,density\n-1000,0\n0,1\n1000,2\n")
    table = load_calibration(csv)
    assert hu_to_density(np.array([500.0]), table)[0] == pytest.approx(1.5)


@pytest.mark.parametrize("text,match", [
    ("hu,density\n0,1\n", "at least two"),
    ("hu,density\n0,1\n-10,0.9\n", "ascending"),
    ("hu,density\n0,1\nx,y\n", "cannot read"),
])
def test_bad_csv_is_refused(tmp_path, text, match):
    csv = tmp_path / "cal.csv"
    csv.write_text(text)
    with pytest.raises(DblurDoseError, match=match):
        load_calibration(csv)


def test_ct_not_in_hu_is_refused():
    with pytest.raises(DblurDoseError, match="subtract 1024"):
        check_ct_is_hu(np.array([0.0, 1024.0, 2000.0]))
    with pytest.raises(DblurDoseError, match="density map"):
        check_ct_is_hu(np.array([0.0, 1.0, 1.9]))
    with pytest.raises(DblurDoseError, match="NaN"):
        check_ct_is_hu(np.array([-1000.0, np.nan]))
    check_ct_is_hu(np.array([-1024.0, 40.0, 1200.0]))


@pytest.mark.parametrize("dtype", [np.int16, np.uint16])
def test_integer_ct_table_equals_interpolation(dtype, tmp_path):
    """The 16-bit lookup table gives exactly the interpolated curve, for every value the type holds."""
    info = np.iinfo(dtype)
    hu = np.arange(info.min, info.max + 1, dtype=np.int64).astype(dtype).reshape(256, 256)
    csv = tmp_path / "cal.csv"
    csv.write_text("hu,density\n-1024,0\n0,1\n2000,2\n")
    for calibration in (None, load_calibration(csv)):
        fast = hu_to_density(hu, calibration)
        slow = hu_to_density(hu.astype(np.float64), calibration)
        assert fast.dtype == np.float32 and fast.shape == hu.shape
        np.testing.assert_array_equal(fast, slow)


@pytest.mark.parametrize("table_csv", [None, "hu,density\n-1024,0\n0,1\n2000,2\n", "hu,density\n-999.7,0.01\n12.3,1.02\n"])
def test_float_ct_table_is_within_its_stated_tolerance_of_interpolation(table_csv, tmp_path):
    """float32 CTs go through a table: within float_table_tolerance of per-voxel np.interp, whole
    HU exactly as a 16-bit CT, clamped outside the curve, and ``exact`` is np.interp itself."""
    from DblurDoseLib.physics.density import float_table_tolerance

    calibration = None
    if table_csv:
        (tmp_path / "cal.csv").write_text(table_csv)
        calibration = load_calibration(tmp_path / "cal.csv")
    table = np.asarray(DEFAULT_CALIBRATION if calibration is None else calibration)
    rng = np.random.default_rng(5)
    hu = np.concatenate([rng.uniform(-1500, 3500, 400_000), table[:, 0] + 1e-3, table[:, 0] - 1e-3,
                         np.arange(-1100, 3100, 0.37)]).astype(np.float32)
    reference = np.interp(hu.astype(np.float64), table[:, 0], table[:, 1])
    fast = hu_to_density(hu, calibration)
    assert fast.dtype == np.float32 and fast.shape == hu.shape
    tolerance = float_table_tolerance(calibration)
    if calibration is None:
        assert tolerance < 5e-5  # the figure the docstring states
    error = np.abs(fast.astype(np.float64) - reference)
    assert error.max() <= tolerance, (error.max(), tolerance)
    assert error.max() > 0  # it is a table, not the interpolation again
    np.testing.assert_array_equal(hu_to_density(hu, calibration, exact=True), reference.astype(np.float32))
    whole = np.arange(-1024, 3072, dtype=np.int16)
    np.testing.assert_array_equal(hu_to_density(whole.astype(np.float32), calibration), hu_to_density(whole, calibration))
