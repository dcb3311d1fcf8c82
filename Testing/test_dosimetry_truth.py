"""Truth for multi-time-point dosimetry: a virtual patient at 4 time points and its true absorbed dose.

:func:`phantom.make_time_series` gives the patient's true activity at each time and its exact time
integral (every compartment clears mono-exponentially with its own effective half-life). Dose is
linear in activity, so the dose engine applied to the integral is the true absorbed dose for that
engine: the DVK here (fast, deterministic), Monte Carlo in :func:`montecarlo.monte_carlo_absorbed_dose`.
"""

from __future__ import annotations

import numpy as np
import pytest

from DblurDoseLib import dosimetry
from DblurDoseLib.dose import compute_dose_rate_maps
from DblurDoseLib.io.volume import Segment
from DblurDoseLib.simulation.phantom import make_time_series

TIMES_H = (4.0, 24.0, 96.0, 168.0)
SHAPE = (48, 80, 80)  # the standard 50 x 50 x 39 cm field at 6.3 x 6.3 x 8.1 mm
SEED = 3


@pytest.fixture(scope="module")
def series():
    return make_time_series(SEED, TIMES_H, shape=SHAPE, spacing=None)


def _vois(phantom, min_ml: float = 5.0) -> list[Segment]:
    labels = np.asarray(phantom.labels.array)
    voxel_ml = float(np.prod(phantom.labels.spacing)) / 1000.0
    wanted = {"kidney_left", "kidney_right", "liver", "spleen"} | {les["name"] for les in phantom.info["lesions"]}
    segments = []
    for value, name in phantom.label_names.items():
        mask = labels == value
        if name in wanted and mask.sum() * voxel_ml >= min_ml:
            segments.append(Segment(name, mask))
    return segments


def test_time_integral_equals_the_integral_of_the_activity_over_time(series):
    phantoms, integral = series
    assert integral.metadata["units"] == "Bq h/mL" and integral.same_grid(phantoms[0].activity)
    times = np.concatenate([[0.05, 1.0, 4.0, 12.0], np.geomspace(24.0, 24.0 * 60, 160)])
    dense, _ = make_time_series(SEED, times, shape=(24, 40, 40), spacing=None)
    _, coarse_integral = make_time_series(SEED, [24.0], shape=(24, 40, 40), spacing=None)
    labels = np.asarray(dense[0].labels.array)
    for name in ("kidney_left", "liver", "lesion_1"):
        value = next(v for v, n in dense[0].label_names.items() if n == name)
        curve = np.array([p.activity.array[labels == value].sum(dtype=np.float64) for p in dense])
        tail = curve[-1] * 24 * 60 / np.log(2) * 1e-3  # beyond 60 days: negligible at this tolerance
        expected = np.trapezoid(curve, times) + tail
        got = coarse_integral.array[labels == value].sum(dtype=np.float64)
        assert got == pytest.approx(expected, rel=0.01), name
    # every compartment decays no slower than physically: the integral is below activity(24 h) x T_phys / ln 2
    assert integral.array.sum() < phantoms[1].activity.array.sum() * 2 ** (24 / 159.5) * 159.5 / np.log(2)


def test_four_time_points_give_voi_doses_within_10_percent_of_truth_with_the_dvk(series):
    phantoms, integral = series
    ct = phantoms[0].hu
    truth_mgy = compute_dose_rate_maps(integral, ct, activity_range_mbq=None)["dvk"].array  # mGy: DVK of Bq h/mL
    segments = _vois(phantoms[0])
    names = {s.name for s in segments}
    assert {"kidney_left", "kidney_right", "liver", "spleen"} <= names and any(n.startswith("lesion") for n in names)
    points = [dosimetry.TimePoint(spect=p.activity, ct=ct, time_h=t, label=f"{t:g} h") for p, t in zip(phantoms, TIMES_H)]
    result = dosimetry.absorbed_dose(points, segments, register="none", activity_range_mbq=None)
    for voi, segment in zip(result.vois, segments):
        truth_gy = float(truth_mgy[segment.mask].mean()) / 1000.0
        assert voi.integral.time_integral / 1000.0 == pytest.approx(truth_gy, rel=0.10), voi.name
        assert voi.map_mean_gy == pytest.approx(truth_gy, rel=0.10), voi.name
    assert result.dose.array.max() > 1.0  # a therapy cycle: Gy, not mGy


def test_monte_carlo_truth_agrees_with_the_dvk_truth_in_soft_tissue(series):
    pytest.importorskip("ompmc")
    from DblurDoseLib.physics.density import hu_to_density
    from DblurDoseLib.physics.montecarlo import monte_carlo_absorbed_dose

    phantoms, integral = series
    ct = phantoms[0].hu
    density = ct.with_array(hu_to_density(np.asarray(ct.array)))
    dose, uncertainty = monte_carlo_absorbed_dose(integral, density, n_decays=400_000, seed=2)
    assert dose.metadata["units"] == "Gy" and dose.same_grid(ct)
    dvk_gy = compute_dose_rate_maps(integral, ct, activity_range_mbq=None)["dvk"].array / 1000.0
    for segment in _vois(phantoms[0], min_ml=100.0):  # large organs: the VOI mean's noise is well under 5 %
        mc, dvk = float(dose.array[segment.mask].mean()), float(dvk_gy[segment.mask].mean())
        assert mc == pytest.approx(dvk, rel=0.10), segment.name
