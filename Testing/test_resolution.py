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


def _measured(contrast: float, fwhm: float) -> dict:
    """RC_mean of each IEC sphere (by diameter, mm) of an ideal Gaussian system, as a physicist would measure them."""
    ph = sp.sphere_phantom(contrast=contrast)
    rc = res.recovery_coefficients(sp.sphere_spect(ph, {"fwhm_mm": fwhm})[0].array, ph)
    return {float(name[len("sphere_"):-len("mm")]): v for name, v in rc.items()}


def test_measured_recovery_coefficients_give_the_systems_fwhm_at_their_contrast():
    """fwhm_from_recovery inverts the IEC recovery curve: all six spheres or any three give the system's FWHM, at
    the measurement's contrast; the background's spill-in makes a 4:1 measurement read wrong as an 8:1 one."""
    four = _measured(4.0, 12.0)
    assert res.fwhm_from_recovery(four, contrast=4.0)["fwhm_mm"] == pytest.approx(12.0, abs=0.05)
    three = {d: four[d] for d in (13.0, 22.0, 37.0)}
    assert res.fwhm_from_recovery(three, contrast=4.0)["fwhm_mm"] == pytest.approx(12.0, abs=0.05)
    assert abs(res.fwhm_from_recovery(four, contrast=8.0)["fwhm_mm"] - 12.0) > 0.3
    sharper = res.fwhm_from_recovery(_measured(8.0, 7.0))
    assert sharper["fwhm_mm"] == pytest.approx(7.0, abs=0.05) and sharper["rms_recovery_misfit"] < 1e-3


@pytest.mark.parametrize("recovery, message", [({10.0: 0.3}, "two or more"), ({11.0: 0.3, 13.0: 0.4}, "two or more"),
                                               ({10.0: 0.3, 13.0: 3.0}, "between 0 and 2")])
def test_bad_recovery_coefficients_are_refused_in_one_line(recovery, message):
    with pytest.raises(DblurDoseError, match=message):
        res.fwhm_from_recovery(recovery)


def test_the_resolution_command_prints_the_fwhm(capsys):
    from DblurDoseLib.cli import main

    rc = _measured(8.0, 10.0)
    assert main(["resolution", "--recovery", *(f"{d:g}={v:.4f}" for d, v in rc.items())]) == 0
    assert "Gaussian-equivalent FWHM 10.0 mm" in capsys.readouterr().out
    assert main(["resolution", "--recovery", "10=1.3", "37=1.2"]) == 2  # no Gaussian of 1-40 mm: RC_max values?
    assert "RC_mean" in capsys.readouterr().err
    assert main(["resolution", "--recovery", "10:0.2"]) == 2
    assert "DIAMETER=RC" in capsys.readouterr().err
