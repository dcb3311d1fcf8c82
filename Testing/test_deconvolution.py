"""Richardson-Lucy deconvolution (physics/deconvolution.py) and the sphere evaluation's reference ``dvk_rlN``."""

import numpy as np
import pytest

from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.evaluation import resolution as res
from DblurDoseLib.evaluation import spheres as sp
from DblurDoseLib.physics.deconvolution import richardson_lucy


@pytest.fixture(scope="module")
def phantom():
    return sp.sphere_phantom(contrast=8.0)


@pytest.fixture(scope="module")
def blurred(phantom):
    return sp.sphere_spect(phantom, "fwhm=12")[0]


def test_no_iterations_is_the_image_and_iterations_keep_the_activity(blurred):
    assert np.array_equal(richardson_lucy(blurred, 12.0, 0).array, blurred.array)
    total = blurred.array.sum(dtype=np.float64)
    assert richardson_lucy(blurred, 12.0, 20).array.sum(dtype=np.float64) == pytest.approx(total, rel=1e-4)


def test_knowing_the_blur_recovers_every_sphere_more_with_more_iterations(phantom, blurred):
    """On the noise-free Gaussian image, the iterations bring each sphere's recovery coefficient toward 1
    without passing it."""
    rcs = [list(res.recovery_coefficients(richardson_lucy(blurred, 12.0, n).array, phantom).values())
           for n in (0, 10, 40)]
    assert (np.diff(rcs, axis=0) > 0).all(), rcs
    assert max(rcs[-1]) < 1.02 and min(rcs[-1]) > min(rcs[0]) + 0.1, rcs


@pytest.mark.parametrize("fwhm, iterations", [(0.0, 5), (float("nan"), 5), (10.0, -1), (10.0, 2.5)])
def test_bad_settings_are_refused(blurred, fwhm, iterations):
    with pytest.raises(DblurDoseError, match="Richardson-Lucy needs"):
        richardson_lucy(blurred, fwhm, iterations)


def test_negative_activity_is_refused(blurred):
    with pytest.raises(DblurDoseError, match="non-negative"):
        richardson_lucy(blurred.with_array(blurred.array - 1.0), 10.0, 3)


def test_the_sphere_evaluation_reports_the_deconvolution_at_the_chains_fwhm(tmp_path):
    results = sp.evaluate_spheres({}, ["fwhm=12"], realisations=1, deconvolution=[15], log=lambda m: None)
    vois = results["chains"]["fwhm=12"]["vois"]
    for name in ("sphere_22mm", "sphere_28mm", "sphere_37mm"):
        assert abs(vois[name]["dvk_rl15"]["signed_error"]) < 0.6 * abs(vois[name]["dvk"]["signed_error"]), vois[name]
    assert "dvk_rl15" in sp.write_sphere_report(results, tmp_path).read_text()
    with pytest.raises(DblurDoseError, match="whole numbers"):
        sp.evaluate_spheres({}, ["fwhm=12"], deconvolution=[0], log=lambda m: None)


def test_a_chain_outside_the_measured_range_is_refused_in_one_line(phantom, blurred):
    from DblurDoseLib.physics.deconvolution import deconvolved_on_grid

    for fwhm in (float("nan"), 0.5, 41.0):
        with pytest.raises(DblurDoseError, match="1-40 mm"):
            deconvolved_on_grid(blurred, phantom.hu, fwhm, 5)
    with pytest.raises(DblurDoseError, match="outside 1-40 mm.*without deconvolution"):
        sp.evaluate_spheres({}, ["fwhm=60"], realisations=1, deconvolution=[5], log=lambda m: None)
