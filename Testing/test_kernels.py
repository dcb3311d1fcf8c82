"""The shipped Lu-177 dose-voxel kernels, kernels derived for other grids, and kernel files.

Expected figures (ICRP-107, notes/reference.md section 3): electrons 147.9 keV and photons 35.1 keV
per decay. An electron kernel holds all the electron energy but the bremsstrahlung that leaves it
(~0.1%). A photon kernel holds the part of the 35.1 keV absorbed within its extent in an infinite
tissue medium (mu_en/rho of tissue ~0.03 cm2/g at 100-200 keV, attenuation length ~7 cm): measured
by the Monte Carlo build, 9.95 keV (28%) in the 97x97x297 mm box of the 0.98x0.98x3 mm grid
(half-widths 4.9 and 14.9 cm) and 19.3 keV (55%) in the 245 mm cube of the 4.8 mm grids; the
independent pytheranostics kernel (51^3 at 4.7952 mm) holds 165.2 keV in all, i.e. ~17.3 keV of
photons (notes/reference.md).
"""

import sys
from pathlib import Path

import numpy as np
import pytest

from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.io.volume import read_volume
from DblurDoseLib.physics import kernel_building as KB
from DblurDoseLib.physics import kernels as K

SHIPPED = [(0.98, 0.98, 3.0), (4.7952, 4.7952, 4.7952), (4.8, 4.8, 4.8)]
#: plausible photon absorbed fraction of 35.1 keV within each shipped kernel (see docstring)
PHOTON_FRACTION = {(0.98, 0.98, 3.0): (0.22, 0.34), (4.7952, 4.7952, 4.7952): (0.45, 0.62),
                   (4.8, 4.8, 4.8): (0.45, 0.62)}
SIZES = {(0.98, 0.98, 3.0): (9, 99), (4.7952, 4.7952, 4.7952): (5, 51), (4.8, 4.8, 4.8): (5, 51)}


@pytest.fixture(autouse=True)
def no_user_cache(tmp_path, monkeypatch):
    """Kernels the user built elsewhere, or earlier tests derived, must not change what these tests see."""
    monkeypatch.setenv("DBLURDOSE_CACHE", str(tmp_path / "cache"))
    K._derive_cached.cache_clear()


@pytest.mark.parametrize("spacing", SHIPPED)
def test_shipped_kernels_load_without_ompmc(spacing, monkeypatch):
    monkeypatch.setitem(sys.modules, "ompmc", None)  # importing ompmc would now fail
    k = K.get_kernel("Lu-177", spacing)
    assert k.source == "shipped"
    assert k.electron.shape == (SIZES[spacing][0],) * 3 and k.photon.shape == (SIZES[spacing][1],) * 3
    assert k.electron.dtype == np.float32 and k.photon.dtype == np.float32
    assert k.medium_density == pytest.approx(1.04)
    np.testing.assert_allclose(k.spacing, spacing)


@pytest.mark.parametrize("spacing", SHIPPED)
def test_kernel_energies(spacing):
    k = K.get_kernel("Lu-177", spacing)
    assert k.energy_kev("electron") == pytest.approx(147.9, rel=0.02)
    assert k.energy_kev("photon") == pytest.approx(k.photon_absorbed_kev, rel=0.01)
    lo, hi = PHOTON_FRACTION[spacing]
    assert lo * 35.1 < k.photon_absorbed_kev < hi * 35.1
    assert k.energy_kev("all") == pytest.approx(k.energy_kev("electron") + k.energy_kev("photon"), rel=1e-5)


@pytest.mark.parametrize("spacing", SHIPPED)
def test_kernels_centred_and_symmetric(spacing):
    k = K.get_kernel("Lu-177", spacing)
    for a in (k.electron, k.photon, k.total()):
        c = a.shape[0] // 2
        assert np.unravel_index(np.argmax(a), a.shape) == (c, c, c)
        for axis in range(3):
            np.testing.assert_allclose(a, np.flip(a, axis), rtol=1e-5, atol=0)
        assert np.all(a >= 0)
    np.testing.assert_allclose(k.photon, np.transpose(k.photon, (0, 2, 1)), rtol=1e-5)  # x <-> y
    # the photon far field is smooth (a fitted model), not noise: monotone along the axes
    c = k.photon.shape[0] // 2
    for line in (k.photon[c, c, c:], k.photon[c:, c, c], k.photon[c, c:, c]):
        assert np.all(np.diff(line) < 0)
    # total: electron added into the photon kernel's centre
    t = k.total()
    e = k.electron.shape[0] // 2
    np.testing.assert_allclose(t[c - e:c + e + 1, c - e:c + e + 1, c - e:c + e + 1], k.electron +
                               k.photon[c - e:c + e + 1, c - e:c + e + 1, c - e:c + e + 1], rtol=1e-6)


def test_shipped_grids():
    assert sorted(K.shipped_spacings("lu177")) == sorted(SHIPPED)


def test_spacing_tolerance_and_derived_kernel():
    assert K.get_kernel("Lu-177", (0.9805, 0.9795, 3.0004)).source == "shipped"  # within 1e-3 mm
    k = K.get_kernel("lu177", (0.977, 0.977, 3.0))  # a typical CT grid: derived
    assert k.source == "derived"
    assert k.electron.shape == (9, 9, 9) and k.photon.shape == (99, 99, 99)


@pytest.mark.parametrize("spacing", [(0.98, 0.98, 3.0), (4.8, 4.8, 4.8)])
def test_derived_kernel_matches_the_monte_carlo_one(spacing):
    """The radial dose-point-kernel derivation on a shipped grid against the MC-built kernel."""
    ship = K.get_kernel("Lu-177", spacing)
    der = K.derive_kernel("Lu-177", spacing)
    assert der.electron.shape == ship.electron.shape and der.photon.shape == ship.photon.shape
    assert der.energy_kev("electron") == pytest.approx(ship.energy_kev("electron"), rel=0.01)
    assert der.energy_kev("photon") == pytest.approx(ship.energy_kev("photon"), rel=0.03)
    c = ship.electron.shape[0] // 2
    assert der.electron[c, c, c] == pytest.approx(ship.electron[c, c, c], rel=0.01)
    c = ship.photon.shape[0] // 2
    t_der, t_ship = der.total(), ship.total()
    assert t_der[c, c, c] == pytest.approx(t_ship[c, c, c], rel=0.01)
    # the photon kernels agree shell by shell, near (MC voxels) and far (fitted model)
    r = KB._voxel_radii(ship.photon.shape[0], spacing)
    for lo, hi in ((3.0, 10.0), (10.0, 20.0), (20.0, 50.0), (50.0, 100.0), (100.0, 300.0)):
        shell = (r >= lo) & (r < hi)
        assert der.photon[shell].sum() == pytest.approx(ship.photon[shell].sum(), rel=0.03), (lo, hi)
    # and voxel by voxel along the axes beyond the fitted model's start
    ix, iz = int(np.ceil(25.0 / spacing[0])), int(np.ceil(25.0 / spacing[2]))
    for line in (np.s_[c, c, c + ix:], np.s_[c + iz:, c, c]):
        assert der.photon[line].size >= 5
        np.testing.assert_allclose(der.photon[line], ship.photon[line], rtol=0.03)


def test_derived_kernel_for_another_grid_conserves_energy():
    k = K.get_kernel("Lu-177", (2.0, 2.0, 2.0))
    assert k.source == "derived"
    assert k.electron.shape == (5, 5, 5) and k.photon.shape == (99, 99, 99)
    assert k.energy_kev("electron") == pytest.approx(K.get_kernel("Lu-177", (4.8,) * 3).energy_kev("electron"),
                                                     rel=0.01)
    # same physical extent as the shipped 4.8 mm kernel (245 mm): same absorbed photon energy
    k = K.get_kernel("Lu-177", (2.4, 2.4, 2.4), size=101)
    assert k.energy_kev("photon") == pytest.approx(K.get_kernel("Lu-177", (4.8,) * 3).photon_absorbed_kev, rel=0.03)


def test_size_argument():
    k = K.get_kernel("Lu-177", (4.8, 4.8, 4.8), size=11)
    assert k.source == "shipped" and k.photon.shape == (11, 11, 11) and k.electron.shape == (5, 5, 5)
    assert k.photon_absorbed_kev == pytest.approx(k.energy_kev("photon"))
    k = K.get_kernel("Lu-177", (4.8, 4.8, 4.8), size=3)
    assert k.electron.shape == (3, 3, 3)
    with pytest.raises(DblurDoseError):
        K.get_kernel("Lu-177", (4.8, 4.8, 4.8), size=10)


@pytest.mark.parametrize("nuclide", ["Tc-99m", "Y-90", "nonsense"])
def test_unsupported_nuclide(nuclide):
    with pytest.raises(DblurDoseError, match="Lu-177"):
        K.get_kernel(nuclide)


@pytest.mark.parametrize("spacing", [(0, 1, 1), (1, 1), ("a", 1, 1), (-4.8, 4.8, 4.8), (1e3, 1, 1)])
def test_bad_spacing(spacing):
    with pytest.raises(DblurDoseError, match="spacing"):
        K.get_kernel("Lu-177", spacing)


def test_write_kernel_nrrd(tmp_path):
    k = K.get_kernel("Lu-177", (4.8, 4.8, 4.8))
    path = tmp_path / "k.nrrd"
    K.write_kernel_nrrd(k, path, part="all", size=7)
    v = read_volume(path)
    assert v.shape == (7, 7, 7)
    np.testing.assert_allclose(v.spacing, (4.8, 4.8, 4.8))
    np.testing.assert_allclose(v.origin, (-14.4, -14.4, -14.4))  # centre voxel at the origin
    np.testing.assert_allclose(v.array, K.resize_centred(k.total(), 7), rtol=1e-6)
    assert v.metadata.get("units") == "mGy/decay"
    with pytest.raises(DblurDoseError, match="exists"):
        K.write_kernel_nrrd(k, path)
    K.write_kernel_nrrd(k, path, part="electron", size=9, overwrite=True)
    v = read_volume(path)
    assert v.shape == (9, 9, 9) and v.array[4, 4, 4] == pytest.approx(k.electron[2, 2, 2])
    assert v.array[0].sum() == 0  # zero-padded
    with pytest.raises(DblurDoseError):
        K.write_kernel_nrrd(k, tmp_path / "x.nrrd", part="beta")


def test_save_load_roundtrip(tmp_path):
    k = K.get_kernel("Lu-177", (4.8, 4.8, 4.8))
    K.save_kernel(k, tmp_path / "k.npz")
    back = K.load_kernel(tmp_path / "k.npz", source="cached")
    np.testing.assert_array_equal(back.electron, k.electron)
    np.testing.assert_array_equal(back.photon, k.photon)
    assert back.photon_absorbed_kev == k.photon_absorbed_kev and back.spacing == k.spacing


def test_default_sizes():
    assert K.default_sizes((0.98, 0.98, 3.0)) == (9, 99)
    assert K.default_sizes((4.7952,) * 3) == (5, 51)
    assert K.default_sizes((4.8,) * 3) == (5, 51)


def test_dose_rate_unit_check():
    """1 MBq/mL everywhere in tissue of 1.04 g/cm3: the electron kernel alone gives
    147.9 keV/decay -> 85.3 mGy/h at unit density, i.e. 85.3 / 1.04 mGy/h in the kernel's medium."""
    k = K.get_kernel("Lu-177", (4.8, 4.8, 4.8))
    bq_per_voxel = 1e6 * float(np.prod(k.spacing)) / 1000.0
    rate = float(k.electron.sum()) * bq_per_voxel * 3600.0
    assert rate * 1.04 == pytest.approx(85.3 * k.energy_kev("electron") / 147.9, rel=2e-3)


# --- derived kernels cached on disk ----------------------------------------------------------------

CT_GRID = (4.4, 4.4, 5.0)  # not shipped: derived (a coarse grid, to keep the tests short)


def _derive_again() -> K.Kernel:
    """``get_kernel`` as a new process sees it: nothing in memory, only the disk cache."""
    K._derive_cached.cache_clear()
    return K.get_kernel("Lu-177", CT_GRID)


def test_derived_kernel_is_cached_on_disk_and_read_back_by_a_later_run():
    first = K.get_kernel("Lu-177", CT_GRID)
    assert first.source == "derived"
    path = K.derived_cache_path("Lu-177", CT_GRID, *K.default_sizes(CT_GRID))
    assert path.is_file() and first.info["cache_path"] == str(path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial file left behind
    again = _derive_again()
    assert again.source == "cached" and again.info["method"] == first.info["method"]
    np.testing.assert_array_equal(again.electron, first.electron)
    np.testing.assert_array_equal(again.photon, first.photon)
    assert again.photon_absorbed_kev == first.photon_absorbed_kev
    assert K.derived_cache_path("Lu-177", CT_GRID, 7, 31) != path  # other sizes: another file


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _change_a_value(path):
    """A readable file whose photon part no longer matches its checksum."""
    with np.load(path) as f:
        arrays = {k: np.array(f[k]) for k in f.files}
    arrays["photon_octant"][0, 0, 0] *= 1.01
    np.savez_compressed(path, **arrays)


@pytest.mark.parametrize("damage", [_truncate, _change_a_value])
def test_damaged_cached_kernel_is_derived_and_written_again(damage):
    first = K.get_kernel("Lu-177", CT_GRID)
    path = K.derived_cache_path("Lu-177", CT_GRID, *K.default_sizes(CT_GRID))
    damage(path)
    with pytest.raises(DblurDoseError):
        K.load_kernel(path, "cached")
    rebuilt = _derive_again()
    assert rebuilt.source == "derived"  # not read from the damaged file
    np.testing.assert_array_equal(rebuilt.photon, first.photon)
    assert K.load_kernel(path, "cached").source == "cached"  # rewritten whole: passes its checksum
    assert _derive_again().source == "cached"


def test_save_kernel_is_atomic(tmp_path, monkeypatch):
    k = K.get_kernel("Lu-177", (4.8, 4.8, 4.8))
    path = K.save_kernel(k, tmp_path / "k.npz")
    before = path.read_bytes()

    def fail_half_way(file, **arrays):
        Path(file).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(K.np, "savez_compressed", fail_half_way)
    with pytest.raises(OSError):
        K.save_kernel(k, path)
    assert path.read_bytes() == before  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["k.npz"]


def test_unwritable_cache_costs_time_only(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DBLURDOSE_CACHE", str(blocker))  # kernels/derived cannot be made under a file
    kernel = K.get_kernel("Lu-177", CT_GRID)
    assert kernel.source == "derived" and "cache_path" not in kernel.info


def test_dose_report_names_the_cached_kernel(tmp_path):
    from conftest import uniform_spect_like, water_phantom_ct

    from DblurDoseLib.dose import compute_dose_rate_maps

    ct = water_phantom_ct((20, 20, 20), CT_GRID)
    spect = uniform_spect_like(ct, 1e6)
    sources = []
    for _ in range(2):
        K._derive_cached.cache_clear()  # each run as a new process
        report: dict = {}
        compute_dose_rate_maps(spect, ct, ("dvk",), device="cpu", activity_range_mbq=None, report=report)
        sources.append(report["kernel_source"])
    assert sources == ["derived", "cached"]
