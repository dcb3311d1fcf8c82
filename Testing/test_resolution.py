"""A SPECT chain's Gaussian-equivalent FWHM on the IEC spheres (evaluation/resolution.py)."""

import math

import numpy as np
import pytest

from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.evaluation import resolution as res
from DblurDoseLib.evaluation import spheres as sp


@pytest.fixture(scope="module")
def phantom():
    return sp.sphere_phantom(contrast=8.0)


@pytest.fixture(scope="module")
def table(phantom):
    return res.gaussian_recovery_table(phantom)


def test_recovery_coefficients_of_the_truth_and_of_the_background_alone(phantom):
    assert all(v == pytest.approx(1.0, abs=1e-6) for v in res.recovery_coefficients(phantom.activity.array,
                                                                                     phantom).values())
    flat = np.where(phantom.body, 2e4, 0.0)  # the background's concentration everywhere: 1/8 of the spheres'
    assert all(v == pytest.approx(1 / 8, rel=1e-6) for v in res.recovery_coefficients(flat, phantom).values())


def test_gaussian_table_falls_with_blur_and_with_smaller_spheres(table):
    assert table.shape == (len(res.FWHM_GRID_MM), 6)
    assert (np.diff(table, axis=0) < 0).all(), "more blur must lose more of every sphere"
    assert (np.diff(table, axis=1) > 0).all(), "a smaller sphere must lose more at every blur"


@pytest.mark.parametrize("fwhm", [6.5, 12.3, 21.0])
def test_an_ideal_gaussian_chain_measures_its_own_fwhm(phantom, table, fwhm):
    out = res.gaussian_equivalent_fwhm(f"fwhm={fwhm}", phantom, table)
    assert out["fwhm_mm"] == pytest.approx(fwhm, abs=0.02)
    assert all(v == pytest.approx(fwhm, abs=0.02) for v in out["per_sphere_mm"].values()), out
    assert out["rms_recovery_misfit"] < 1e-3


def test_outside_the_grid_is_nan_not_its_edge(phantom, table):
    out = res.gaussian_equivalent_fwhm("fwhm=60", phantom, table)
    assert math.isnan(out["fwhm_mm"]) and all(math.isnan(v) for v in out["per_sphere_mm"].values())


def test_a_table_of_another_phantom_is_refused(phantom, table):
    with pytest.raises(DblurDoseError, match="does not belong"):
        res.gaussian_equivalent_fwhm("fwhm=10", phantom, table[:, :5])


@pytest.mark.slow
def test_a_post_filter_adds_its_width_in_quadrature(phantom, table):
    """The test chain (Siemens ME, 64 views, OSEM 8x4) measures 10-20 mm; a Gaussian post-filter of 10 mm
    after the reconstruction (a linear operation) widens it as Gaussian widths add: in quadrature, within
    what a Gaussian fails to describe of the chain. Its recovery coefficients fall with the spheres' size."""
    pytest.importorskip("pytomography")
    plain = res.gaussian_equivalent_fwhm("in-mix", phantom, table)
    filtered = res.gaussian_equivalent_fwhm({**sp.SPHERE_CHAINS["in-mix"], "postfilter_fwhm_mm": 10.0}, phantom,
                                            table)
    assert 10 < plain["fwhm_mm"] < 20, plain
    assert filtered["fwhm_mm"] == pytest.approx(math.hypot(plain["fwhm_mm"], 10.0), abs=0.8), (plain, filtered)
    recovery = list(plain["recovery"].values())
    assert recovery == sorted(recovery) and recovery[-1] < 0.9, recovery
