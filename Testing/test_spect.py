"""Simulated Lu-177 SPECT (DblurDoseLib.simulation.spect): geometry, calibration, noise, orientation, errors.

Everything runs on tiny problems (32 x 32 x 20 SPECT grid of 8 mm, 32 views, few iterations) in a
few seconds; the paper-size run is marked slow.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("pytomography")

from DblurDoseLib.errors import DblurDoseError  # noqa: E402
from DblurDoseLib.geometry.resample import resample_box  # noqa: E402
from DblurDoseLib.io.volume import Volume  # noqa: E402
from DblurDoseLib.simulation import projector  # noqa: E402
from DblurDoseLib.simulation import spect as S  # noqa: E402

SMALL = S.SpectAcquisition(n_views=32, matrix=(32, 32, 20), voxel_mm=8.0, iterations=6, subsets=4)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny problems: one thread is as fast, and far faster when other jobs share the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


ROT_XY_FLIP_Z = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


def ct_grid(shape=(40, 64, 64), spacing=(4.0, 4.0, 4.0), direction=None) -> Volume:
    """An empty CT-like grid [z, y, x] centred on the origin (physical (0, 0, 0) mm)."""
    d = np.eye(3) if direction is None else np.asarray(direction, float)
    size = np.array(shape[::-1])
    origin = -d @ ((size - 1) / 2.0 * np.asarray(spacing))
    return Volume(np.zeros(shape, np.float32), spacing, tuple(origin), d)


def points(vol: Volume) -> np.ndarray:
    """Physical coordinates (mm) of every voxel centre, [z, y, x, 3] (x, y, z order)."""
    z, y, x = np.indices(vol.shape)
    idx = np.stack([x, y, z], -1).reshape(-1, 3)
    return (np.asarray(vol.origin) + (idx * np.asarray(vol.spacing)) @ vol.direction.T).reshape(*vol.shape, 3)


def phantom(direction=None, activity_fn=None, semi_axes=(100.0, 80.0)):
    """Water elliptic cylinder in air; activity from ``activity_fn(P)`` (P: physical points)."""
    grid = ct_grid(direction=direction)
    p = points(grid)
    body = (p[..., 0] / semi_axes[0]) ** 2 + (p[..., 1] / semi_axes[1]) ** 2 < 1.0
    density = np.where(body, 1.0, 0.0012).astype(np.float32)
    activity = activity_fn(p, body).astype(np.float32)
    return grid.with_array(activity), grid.with_array(density)


def sphere(centre, radius, value):
    def fn(p, body):
        return np.where(((p - np.asarray(centre)) ** 2).sum(-1) < radius**2, value, 0.0)

    return fn


def total_bq(vol: Volume) -> float:
    return float(vol.array.sum(dtype=np.float64)) * vol.voxel_volume_ml


def centroid_mm(vol: Volume, threshold: float = 0.3) -> np.ndarray:
    a = vol.array * (vol.array > threshold * vol.array.max())
    w = a / a.sum()
    return (points(vol) * w[..., None]).sum(axis=(0, 1, 2))


# ---------------------------------------------------------------------------------------------
# grid, resampling, physics tables
# ---------------------------------------------------------------------------------------------
def test_grid_is_centred_on_the_ct_field_and_keeps_axial_directions():
    for direction in (None, np.diag([-1.0, -1.0, 1.0]), ROT_XY_FLIP_Z):
        ct = ct_grid(shape=(30, 50, 70), spacing=(3.0, 2.0, 5.0), direction=direction)
        g = S.spect_grid(ct, SMALL)
        assert g.shape == (20, 32, 32) and g.spacing == (8.0, 8.0, 8.0)
        np.testing.assert_allclose(g.physical_corners().mean(0), ct.physical_corners().mean(0), atol=1e-6)
        np.testing.assert_allclose(g.direction, ct.direction)
    sagittal = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    g = S.spect_grid(ct_grid(direction=sagittal), SMALL)
    np.testing.assert_allclose(g.direction, np.eye(3))  # the camera turns about the body axis
    full = S.spect_grid(ct_grid(shape=(130, 64, 64), spacing=(0.98, 0.98, 3.0)))
    assert full.shape == (81, 128, 128) and full.spacing == (4.8, 4.8, 4.8)


def test_resampling_conserves_activity_and_averages_density():
    rng = np.random.default_rng(1)
    ct = ct_grid(shape=(30, 50, 50), spacing=(2.3, 2.3, 3.1))
    act = np.zeros(ct.shape, np.float32)
    act[5:25, 10:40, 8:42] = rng.random((20, 30, 34)) * 1000
    activity = ct.with_array(act)
    target = S.spect_grid(ct, SMALL)
    out = resample_box(activity, target, "concentration")
    assert total_bq(out) == pytest.approx(total_bq(activity), rel=1e-6)
    back = resample_box(out, ct, "concentration")  # and back onto the CT grid (SPECT field inside the CT's)
    assert back.same_grid(ct) and total_bq(back) == pytest.approx(total_bq(activity), rel=1e-5)
    dens = resample_box(ct.with_array(np.ones(ct.shape, np.float32)), target, "mean")
    inner = dens.array[6:14, 10:22, 10:22]
    np.testing.assert_allclose(inner, 1.0, rtol=1e-6)  # inside the CT field
    assert dens.array[0, 0, 0] == 0.0  # outside the CT field: air
    # a target rotated against the source goes through SimpleITK; activity still conserved
    c, s = np.cos(0.5), np.sin(0.5)
    rotated = Volume(
        np.zeros((20, 32, 32), np.float32), (6.0, 6.0, 6.0), (0, 0, 0), [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    )
    rotated.origin = tuple(
        ct.physical_corners().mean(0) - rotated.direction @ (np.array([31, 31, 19]) / 2 * 6.0)
    )
    out = resample_box(activity, rotated, "concentration")
    assert total_bq(out) == pytest.approx(total_bq(activity), rel=1e-4)


def test_attenuation_from_density_at_208_kev():
    mu = S.density_to_mu(np.array([0.0, 0.0012, 0.3, 1.0, 1.92]), 208.0)
    assert mu[0] == 0.0 and mu[1] < 2e-4
    assert mu[3] == pytest.approx(0.1351, abs=0.001)  # water, NIST, 1/cm
    assert mu[2] == pytest.approx(0.3 * mu[3], rel=1e-5)  # lung: water-like per gram
    assert mu[4] == pytest.approx(1.92 * 0.1289, rel=0.01)  # cortical bone
    assert np.all(np.diff(mu) > 0)


def test_collimator_response_widens_with_distance():
    fwhm = [S.system_resolution_fwhm_mm(S.SpectAcquisition(), d) for d in (0.0, 100.0, 200.0)]
    assert fwhm[0] < fwhm[1] < fwhm[2]
    assert 9.0 < fwhm[1] < 13.0  # medium-energy collimator at 10 cm, 208 keV
    assert 5.0 < S.system_sensitivity_cps_per_mbq() < 30.0
    with pytest.raises(DblurDoseError, match="collimator"):
        S.SpectAcquisition(collimator="XX-NOPE").validate()


def test_cameras_of_other_vendors_differ_in_resolution_and_sensitivity():
    """Each named camera is a consistent set from the SIMIND table; GE MEGP (longer holes, 5.8 cm) resolves
    better at depth than Siemens ME (4.06 cm) at the same distance, and a 3/8" crystal absorbs less."""
    assert S.SpectAcquisition() == S.SpectAcquisition.for_camera(S.DEFAULT_CAMERA)  # the paper's defaults
    for name, cam in S.CAMERAS.items():
        acq = S.SpectAcquisition.for_camera(name, n_views=64)
        acq.validate()
        assert (acq.collimator, acq.crystal_thickness_cm, acq.n_views) == (cam.collimator, cam.crystal_thickness_cm, 64)
    siemens = S.SpectAcquisition.for_camera("siemens-intevo-me")
    ge = S.SpectAcquisition.for_camera("ge-discovery-670-megp")
    assert (siemens.collimator, ge.collimator) == ("SY-ME", "GI-MEGP")
    fwhm_siemens, fwhm_ge = (S.system_resolution_fwhm_mm(a, 100.0) for a in (siemens, ge))
    assert fwhm_siemens - fwhm_ge > 1.5  # mm at 10 cm: about 11.2 vs 8.9
    assert 7.0 < fwhm_ge < 11.0
    assert S.collimator_resolution_params(ge)[0] < S.collimator_resolution_params(siemens)[0]  # slope with depth
    assert S.system_sensitivity_cps_per_mbq(ge) < 0.6 * S.system_sensitivity_cps_per_mbq(siemens)
    with pytest.raises(DblurDoseError, match="unknown camera 'nope'; use one of"):
        S.SpectAcquisition.for_camera("nope")


# ---------------------------------------------------------------------------------------------
# the camera model
# ---------------------------------------------------------------------------------------------
def test_calibration_is_the_forward_models_counts_per_bq():
    """A source in air gives sensitivity x activity x view time counts in every view."""
    activity, density = phantom(activity_fn=sphere((20.0, -10.0, 5.0), 10.0, 2e5))
    density = density.with_array(np.zeros(density.shape, np.float32))
    system, act = S.prepare_system(activity, density, SMALL)
    proj = S.forward_project(system, act)
    expected = S.system_sensitivity_cps_per_mbq(SMALL) * 1e-6 * total_bq(act) * SMALL.view_time_s
    per_view = proj.sum(axis=(1, 2))
    np.testing.assert_allclose(per_view[:: SMALL.n_views // 4], expected, rtol=1e-4)  # 0, 90, 180, 270 deg
    assert per_view.mean() == pytest.approx(expected, rel=0.01)  # other views: rotation interpolation
    np.testing.assert_allclose(per_view, expected, rtol=0.05)
    image = S.reconstruct(
        system, np.random.default_rng(0).poisson(proj * 50).astype(float), duration_s=SMALL.duration_s * 50
    )
    assert total_bq(image) == pytest.approx(total_bq(act), rel=0.05)
    assert image.metadata["units"] == "Bq/mL"


def test_fast_psf_and_cached_attenuation_match_pytomography():
    rng = np.random.default_rng(3)
    activity, density = phantom(activity_fn=lambda p, body: body * rng.random(body.shape) * 1000)
    projections = {}
    for fast in (True, False):
        for cache in (True, False):
            acq = dataclasses.replace(SMALL, fast_psf=fast, cache_attenuation=cache)
            system, act = S.prepare_system(activity, density, acq)
            projections[fast, cache] = S.forward_project(system, act)
    reference = projections[False, False]
    for p in projections.values():
        np.testing.assert_allclose(p, reference, rtol=0, atol=1e-5 * reference.max())


def test_oversampled_projection_agrees_with_the_recon_grid_model():
    """Data are projected on a 2x finer grid and binned; totals and shape agree with the coarse model."""
    activity, density = phantom(activity_fn=lambda p, body: np.where(body, 1000.0 + 10 * p[..., 0], 0.0))
    system, act = S.prepare_system(activity, density, SMALL)
    fine = S._project_phantom(activity, density, system, act)
    coarse = S.forward_project(system, act)
    assert fine.shape == coarse.shape == system.projection_shape
    assert fine.sum() == pytest.approx(coarse.sum(), rel=0.02)
    np.testing.assert_allclose(
        fine.sum(axis=(0, 2)), coarse.sum(axis=(0, 2)), rtol=0.1, atol=0.02 * coarse.sum(axis=(0, 2)).max()
    )


def test_contour_and_circular_orbits_clear_the_body():
    activity, density = phantom(activity_fn=sphere((0, 0, 0), 20.0, 1e4), semi_axes=(110.0, 70.0))
    contour, _ = S.prepare_system(activity, density, SMALL)
    r = contour.radii_mm
    assert r.min() >= 70.0 + SMALL.clearance_mm and r.max() >= 110.0 + SMALL.clearance_mm
    assert r.max() - r.min() > 30.0  # follows the ellipse
    assert r.max() < 110.0 + SMALL.clearance_mm + 2 * SMALL.voxel_mm
    circular, _ = S.prepare_system(activity, density, dataclasses.replace(SMALL, orbit="circular"))
    np.testing.assert_allclose(circular.radii_mm, r.max())
    fixed, _ = S.prepare_system(
        activity, density, dataclasses.replace(SMALL, orbit="circular", radius_mm=250.0)
    )
    np.testing.assert_allclose(fixed.radii_mm, 250.0)


# ---------------------------------------------------------------------------------------------
# simulate + reconstruct
# ---------------------------------------------------------------------------------------------
def test_uniform_cylinder_recovers_its_concentration():
    conc = 5000.0

    def fn(p, body):
        return np.where(
            ((p[..., 0] / 90) ** 2 + (p[..., 1] / 70) ** 2 < 1) & (np.abs(p[..., 2]) < 60), conc, 0.0
        )

    activity, density = phantom(activity_fn=fn)
    acq = dataclasses.replace(SMALL, iterations=8)
    image = S.simulate_spect(activity, density, 5e6, seed=11, acq=acq)[0]
    p = points(image)
    centre = (p[..., 0] ** 2 + p[..., 1] ** 2 < 40**2) & (np.abs(p[..., 2]) < 25)
    assert float(image.array[centre].mean()) == pytest.approx(conc, rel=0.10)
    assert total_bq(image) == pytest.approx(total_bq(activity), rel=0.10)
    assert float(image.metadata["effective_duration_s"]) > 0
    assert float(image.metadata["calibration_cps_per_mbq"]) == pytest.approx(
        S.system_sensitivity_cps_per_mbq(acq)
    )


def test_hot_sphere_total_activity_is_recovered():
    activity, density = phantom(activity_fn=sphere((30.0, 20.0, -15.0), 20.0, 1e5))
    image = S.simulate_spect(activity, density, 2e6, seed=5, acq=SMALL)[0]
    assert total_bq(image) == pytest.approx(total_bq(activity), rel=0.10)


@pytest.mark.parametrize(
    "direction",
    [None, np.diag([-1.0, -1.0, 1.0]), ROT_XY_FLIP_Z],
    ids=["identity", "flip-xy", "swap-xy-flip-z"],
)
def test_orientation_is_kept(direction):
    """An off-centre point-like source ends up where it was, in physical coordinates."""
    source = np.array([45.0, -30.0, 25.0])
    activity, density = phantom(direction=direction, activity_fn=sphere(source, 6.0, 1e6))
    image = S.simulate_spect(activity, density, 2e6, seed=3, acq=SMALL)[0]
    assert np.linalg.norm(centroid_mm(image) - source) < SMALL.voxel_mm
    peak = np.unravel_index(np.argmax(image.array), image.shape)
    assert np.linalg.norm(points(image)[peak] - source) < 1.5 * SMALL.voxel_mm


def test_counts_match_the_requested_total():
    activity, density = phantom(activity_fn=sphere((0, 0, 0), 40.0, 1e4))
    total = 3e5
    sim = S.simulate_projections(activity, density, total, SMALL)
    assert float(sim.primary.sum() + sim.scatter.sum()) == pytest.approx(total, rel=1e-9)
    assert float(sim.scatter.sum()) / total == pytest.approx(SMALL.scatter_fraction, rel=1e-6)
    counts, tew = sim.draw(np.random.default_rng(0))
    assert abs(counts.sum() - total) < 5 * np.sqrt(total)
    assert abs(tew.sum() - sim.scatter.sum()) < 5 * np.sqrt(sim.scatter.sum())
    image = S.simulate_spect(activity, density, total, seed=2, acq=dataclasses.replace(SMALL, iterations=1))[
        0
    ]
    assert abs(float(image.metadata["total_counts"]) - total) < 5 * np.sqrt(total)
    # doubling the counts halves the scan time a count level stands for, not the activity
    sim2 = S.simulate_projections(activity, density, 2 * total, SMALL)
    assert sim2.duration_s == pytest.approx(2 * sim.duration_s)


def test_seeds_are_deterministic_and_independent():
    activity, density = phantom(activity_fn=sphere((10.0, 0, 0), 30.0, 1e4))
    acq = dataclasses.replace(SMALL, iterations=2)
    a = S.simulate_spect(activity, density, 1e5, seed=7, acq=acq, realisations=2)
    b = S.simulate_spect(activity, density, 1e5, seed=7, acq=acq)
    c = S.simulate_spect(activity, density, 1e5, seed=8, acq=acq)
    np.testing.assert_array_equal(a[0].array, b[0].array)  # realisation 0 whatever the number asked
    assert not np.array_equal(a[0].array, a[1].array)
    assert not np.array_equal(a[0].array, c[0].array)
    assert [im.metadata["realisation"] for im in a] == ["0", "1"]


def test_per_realisation_reconstructions_and_post_filter():
    """``reconstructions`` changes OSEM and the post-filter per realisation, not the Poisson data; the
    post-filter smooths (lower peak) and keeps the activity (its mass folded back at the field edge)."""
    activity, density = phantom(activity_fn=sphere((10.0, 0, 0), 20.0, 1e5))
    acq = dataclasses.replace(SMALL, iterations=2)
    plain, filtered, more = S.simulate_spect(
        activity, density, 1e6, seed=7, acq=acq, realisations=3,
        reconstructions=[{}, {"postfilter_fwhm_mm": 16.0}, {"iterations": 4, "subsets": 2}])
    assert [im.metadata["osem"] for im in (plain, filtered, more)] == ["2x4", "2x4", "4x2"]
    assert filtered.metadata["postfilter_fwhm_mm"] == "16" and plain.metadata["postfilter_fwhm_mm"] == "0"
    assert total_bq(filtered) == pytest.approx(total_bq(plain), rel=0.03)
    assert filtered.array.max() < 0.9 * plain.array.max()
    # realisation 1 unfiltered is exactly what a plain run draws for it: the filter acts after OSEM
    again = S.simulate_spect(activity, density, 1e6, seed=7, acq=acq, realisations=2)[1]
    from scipy.ndimage import gaussian_filter

    sigma = 16.0 / 2.3548 / SMALL.voxel_mm
    expected = gaussian_filter(again.array.astype(np.float64), sigma, mode="nearest")
    np.testing.assert_allclose(filtered.array, expected, rtol=1e-4, atol=1e-6 * float(expected.max()))
    with pytest.raises(DblurDoseError, match="one dict"):
        S.simulate_spect(activity, density, 1e6, seed=7, acq=acq, realisations=2, reconstructions=[{}])
    with pytest.raises(DblurDoseError, match="voxel"):
        S.simulate_spect(activity, density, 1e6, seed=7, acq=acq, reconstructions=[{"voxel_mm": 3.0}])
    with pytest.raises(DblurDoseError, match="post-filter"):
        S.simulate_spect(activity, density, 1e6, seed=7, acq=acq, reconstructions=[{"postfilter_fwhm_mm": -1.0}])


def test_realisations_share_the_noise_free_mean():
    activity, density = phantom(activity_fn=sphere((0, 10.0, 0), 45.0, 1e4))
    acq = dataclasses.replace(SMALL, iterations=3)
    sim = S.simulate_projections(activity, density, 1e6, acq)
    noise_free = sim.reconstruct(sim.primary + sim.scatter, sim.scatter).array
    region = sim.activity.array > 0.5 * sim.activity.array.max()  # the true activity on the SPECT grid

    def rel_rms(total):
        images = S.simulate_spect(activity, density, total, seed=1, acq=acq, realisations=2)
        return [
            np.sqrt(np.mean((im.array[region] - noise_free[region]) ** 2)) / noise_free[region].mean()
            for im in images
        ]

    high, low = rel_rms(1e6 * 1e3), rel_rms(1e5)
    assert max(high) < 0.01  # noise-free limit: every realisation converges to the same image
    assert min(low) > 3 * max(high)
    stack = np.stack(
        [im.array for im in S.simulate_spect(activity, density, 1e5, seed=4, acq=acq, realisations=4)]
    )
    bias = abs(stack.mean(0)[region].mean() / noise_free[region].mean() - 1)
    assert bias < 0.03  # the realisations scatter about the noise-free image


def test_progress_is_reported():
    activity, density = phantom(activity_fn=sphere((0, 0, 0), 30.0, 1e4))
    calls = []
    S.simulate_spect(
        activity,
        density,
        1e5,
        seed=0,
        acq=dataclasses.replace(SMALL, iterations=1),
        realisations=2,
        progress=lambda f, s: calls.append((s, f)),
    )
    fractions = [f for _, f in calls]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert any("OSEM" in s for s, _ in calls)


def test_osem_reports_every_iteration():
    """OSEM reports before every subset update, one message per iteration ("OSEM iteration k/n"), so
    that a progress line moves during the reconstruction; simulate_spect passes the messages on."""
    activity, density = phantom(activity_fn=sphere((0, 0, 0), 30.0, 1e4))
    system, act = S.prepare_system(activity, density, SMALL)
    proj = S.forward_project(system, act)
    calls = []
    S.reconstruct(system, proj, iterations=3, subsets=4, progress=lambda f, s: calls.append((s, f)))
    assert [s for s, _ in calls] == [f"OSEM iteration {k}/3" for k in (1, 2, 3) for _ in range(4)]
    assert [f for _, f in calls] == pytest.approx(np.arange(12) / 12)
    calls = []
    S.simulate_spect(activity, density, 1e5, seed=0, acq=dataclasses.replace(SMALL, iterations=2, subsets=2),
                     progress=lambda f, s: calls.append((s, f)))
    osem = [s for s, _ in calls if "OSEM" in s]
    assert list(dict.fromkeys(osem)) == ["SPECT: OSEM iteration 1/2", "SPECT: OSEM iteration 2/2"]
    assert len(osem) == 4


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
def _bad_cases():
    activity, density = phantom(activity_fn=sphere((0, 0, 0), 30.0, 1e4))
    neg = activity.array.copy()
    neg[20, 30, 30] = -1.0
    nan = activity.array.copy()
    nan[20, 30, 30] = np.nan
    other = Volume(density.array, (4.0, 4.0, 4.5), density.origin)
    hu = density.with_array(density.array * 1000 - 1000)
    zero = activity.with_array(np.zeros(activity.shape, np.float32))
    return {
        "negative activity": (activity.with_array(neg), density, 1e5, SMALL),
        "NaN activity": (activity.with_array(nan), density, 1e5, SMALL),
        "mismatched grids": (activity, other, 1e5, SMALL),
        "NaN density": (activity, density.with_array(nan), 1e5, SMALL),
        "HU instead of density": (activity, hu, 1e5, SMALL),
        "zero counts": (activity, density, 0.0, SMALL),
        "NaN counts": (activity, density, float("nan"), SMALL),
        "no activity": (zero, density, 1e5, SMALL),
        "non-square matrix": (activity, density, 1e5, dataclasses.replace(SMALL, matrix=(32, 30, 20))),
        "too many subsets": (activity, density, 1e5, dataclasses.replace(SMALL, subsets=64)),
        "unknown collimator": (activity, density, 1e5, dataclasses.replace(SMALL, collimator="nope")),
        "scatter fraction 1": (activity, density, 1e5, dataclasses.replace(SMALL, scatter_fraction=1.0)),
    }


@pytest.mark.parametrize("case", list(_bad_cases()))
def test_bad_input_raises_dblurdose_error(case):
    activity, density, counts, acq = _bad_cases()[case]
    with pytest.raises(DblurDoseError):
        S.simulate_spect(activity, density, counts, seed=0, acq=acq)


def test_realisations_must_be_positive():
    activity, density = phantom(activity_fn=sphere((0, 0, 0), 30.0, 1e4))
    with pytest.raises(DblurDoseError, match="realisations"):
        S.simulate_spect(activity, density, 1e5, seed=0, acq=SMALL, realisations=0)


def test_importing_pytomography_leaves_warnings_and_numpy_errors_alone():
    code = (
        "import warnings, numpy as np\n"
        "warnings.simplefilter('default')\n"
        "before, err = list(warnings.filters), np.geterr()\n"
        "from DblurDoseLib.simulation import projector\n"
        "projector.pytomography()\n"
        "assert warnings.filters == before, warnings.filters[:3]\n"
        "assert np.geterr() == err, np.geterr()\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.warn('still shown', UserWarning)\n"
        "assert len(w) == 1\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == ""  # nothing printed on import
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        projector.pytomography()  # importing again here changes nothing either


# ---------------------------------------------------------------------------------------------
# paper size
# ---------------------------------------------------------------------------------------------
@pytest.mark.paper
def test_paper_size_simulation_recovers_a_large_uniform_region():
    """128 views, 128 x 128 x 81 at 4.8 mm, OSEM 4 x 16: a few minutes on 2 CPU cores."""
    ct = ct_grid(shape=(130, 256, 256), spacing=(1.96, 1.96, 3.0))
    p = points(ct)
    body = (p[..., 0] / 170) ** 2 + (p[..., 1] / 110) ** 2 < 1
    liver = ((p[..., 0] + 60) / 80) ** 2 + ((p[..., 1] - 10) / 60) ** 2 + (p[..., 2] / 70) ** 2 < 1
    activity = ct.with_array(np.where(liver, 20000.0, np.where(body, 2000.0, 0.0)).astype(np.float32))
    density = ct.with_array(np.where(body, 1.0, 0.0012).astype(np.float32))
    image = S.simulate_spect(activity, density, 1e7, seed=0)[0]
    assert image.shape == (81, 128, 128)
    q = points(image)
    core = ((q[..., 0] + 60) / 40) ** 2 + ((q[..., 1] - 10) / 30) ** 2 + (q[..., 2] / 35) ** 2 < 1
    assert float(image.array[core].mean()) == pytest.approx(20000.0, rel=0.10)
    assert total_bq(image) == pytest.approx(total_bq(activity), rel=0.10)


def test_the_demo_chains_measured_resolution_is_the_demo_acquisitions():
    """demo.DEMO_CHAIN_FWHM_MM was measured (dblurdose resolution --chain) on demo.DEMO_CHAIN: that chain must
    still be the demo's acquisition, or the FWHM must be measured again."""
    from DblurDoseLib.demo import DEMO_CHAIN, demo_acquisition

    acq, camera = demo_acquisition(), S.CAMERAS[DEMO_CHAIN["camera"]]
    assert (acq.collimator, acq.n_views, acq.voxel_mm, acq.iterations, acq.subsets) == (
        camera.collimator, DEMO_CHAIN["n_views"], DEMO_CHAIN["voxel_mm"], DEMO_CHAIN["iterations"],
        DEMO_CHAIN["subsets"])
    assert DEMO_CHAIN["postfilter_fwhm_mm"] == acq.postfilter_fwhm_mm == 0.0


def test_demo_acquisition_is_in_the_training_mix_and_holds_the_patient():
    """The demo's reduced SPECT stays within the training mix (views, OSEM, voxel size), and
    its smaller matrix still holds the demo's virtual patient with room for the scatter tails."""
    from DblurDoseLib import data
    from DblurDoseLib.demo import DEMO_SHAPE, DEMO_SPACING, demo_acquisition
    from DblurDoseLib.simulation.phantom import make_phantom

    acq = demo_acquisition()
    acq.validate()
    mix = data.TRAINING_MIX
    assert acq.n_views in mix["n_views"]
    assert (acq.iterations, acq.subsets) in data.osem_choices(acq.n_views)
    assert mix["voxel_mm"][0] <= acq.voxel_mm <= mix["voxel_mm"][1]
    # the same patient on a 4x coarser grid over the demo's field (anatomy in physical millimetres)
    coarse = tuple(-(-n // 4) for n in DEMO_SHAPE)
    spacing = tuple(s * n / c for s, n, c in zip(DEMO_SPACING, DEMO_SHAPE[::-1], coarse[::-1]))
    ph = make_phantom(3, shape=coarse, spacing=spacing)
    grid = S.spect_grid(ph.density, acq)
    tissue = points(ph.density)[(ph.density.array > 0.5) | (ph.activity.array > 0)]
    local = (tissue - np.asarray(grid.origin)) @ grid.direction  # mm along the SPECT grid's axes
    size = np.asarray(grid.spacing) * np.asarray(grid.shape[::-1])
    low, high = local.min(axis=0) + grid.spacing[0] / 2, size - grid.spacing[0] / 2 - local.max(axis=0)
    assert min(low[:2].min(), high[:2].min()) > 40.0  # mm of air around the body in x and y
    assert min(low[2], high[2]) > -10.0  # the axial field is the CT's (within a SPECT voxel)
