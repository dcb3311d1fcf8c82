"""Time integration of dose rates: fits, AICc, trapezoid, single time point, voxel maps, checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import quad

from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.physics import time_integration as ti

LN2 = math.log(2.0)
LAM_PHYS = ti.physical_decay_constant_per_h("Lu-177")
TIMES = np.array([4.0, 24.0, 48.0, 96.0, 168.0])


def mono(t, amplitude=2.0, half_life_h=60.0):
    return amplitude * np.exp(-LN2 / half_life_h * np.asarray(t, dtype=np.float64))


def test_physical_decay_constant_is_lu177_from_icrp107():
    assert LN2 / LAM_PHYS == pytest.approx(6.647 * 24, rel=1e-3)


def test_analytic_integral_of_exponentials_equals_quadrature():
    # A exp(-l t) integrates to A / l; an uptake curve (negative term) to the sum of c_j / l_j
    assert ti.prior_half_life_integral(10.0, float(mono(10.0)), effective_half_life_h=60.0).time_integral == \
        pytest.approx(2.0 / (LN2 / 60.0), rel=1e-12)
    t = np.array([1.0, 3, 6, 12, 24, 48, 96, 168])
    curve = 5.0 * (np.exp(-LN2 / 70 * t) - np.exp(-LN2 / 3 * t))
    result = ti.fit_time_curve(t, curve, models=("bi-uptake",))
    numeric, _ = quad(lambda s: float(result.evaluate([s])[0]), 0, np.inf, limit=200)
    assert result.time_integral == pytest.approx(numeric, rel=1e-8)


def test_mono_exponential_recovered_exactly():
    result = ti.fit_time_curve(TIMES, mono(TIMES))
    assert result.model == "mono"
    np.testing.assert_allclose(result.parameters, [2.0, LN2 / 60.0], rtol=1e-6)
    assert result.effective_half_life_h == pytest.approx(60.0, rel=1e-6)
    assert result.time_integral == pytest.approx(2.0 * 60.0 / LN2, rel=1e-6)
    assert result.dose_gy == pytest.approx(result.time_integral / 1000.0)
    assert not result.fit_failed


def test_bi_exponential_recovered_and_chosen_over_mono():
    t = np.array([1.0, 3, 6, 12, 24, 48, 96, 168])
    truth = (3.0, LN2 / 8.0, 1.0, LN2 / 80.0)
    y = truth[0] * np.exp(-truth[1] * t) + truth[2] * np.exp(-truth[3] * t)
    result = ti.fit_time_curve(t, y)
    assert result.model == "bi"
    fast_first = np.argsort(-result.rates_per_h)
    np.testing.assert_allclose(result.amplitudes[fast_first], truth[::2], rtol=0.01)
    np.testing.assert_allclose(result.rates_per_h[fast_first], truth[1::2], rtol=0.01)
    assert result.time_integral == pytest.approx(truth[0] / truth[1] + truth[2] / truth[3], rel=0.01)
    assert result.effective_half_life_h == pytest.approx(80.0, rel=0.01)  # the terminal phase


def test_uptake_curve_recovered_with_uptake_model():
    t = np.array([1.0, 3, 6, 12, 24, 48, 96, 168])
    y = 5.0 * (np.exp(-LN2 / 70 * t) - np.exp(-LN2 / 3 * t))
    result = ti.fit_time_curve(t, y)
    assert result.model == "bi-uptake"
    np.testing.assert_allclose(result.parameters, [5.0, LN2 / 70, LN2 / 3], rtol=0.01)
    assert result.time_integral == pytest.approx(5.0 * (70 - 3) / LN2, rel=0.01)


def test_aicc_picks_mono_for_noisy_mono_data_and_bi_for_noisy_bi_data():
    t = np.array([1.0, 3, 6, 12, 24, 48, 96, 168])
    bi = 3.0 * np.exp(-LN2 / 8 * t) + 1.0 * np.exp(-LN2 / 80 * t)
    picks_mono, picks_bi = [], []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        picks_mono.append(ti.fit_time_curve(t, mono(t) * (1 + 0.03 * rng.standard_normal(t.size))).model)
        picks_bi.append(ti.fit_time_curve(t, bi * (1 + 0.01 * rng.standard_normal(t.size))).model)
    assert picks_mono.count("mono") >= 9
    assert picks_bi.count("bi") >= 8 and "mono" not in picks_bi


def test_no_clearance_faster_than_physical_decay_is_impossible():
    # pure physical decay plus noise: half the fits would go below lambda_phys without the bound
    t = np.array([4.0, 24, 48, 96, 168, 240])
    hit_bound = 0
    for seed in range(12):
        y = np.exp(-LAM_PHYS * t) * (1 + 0.05 * np.random.default_rng(seed).standard_normal(t.size))
        result = ti.fit_time_curve(t, y)
        assert np.all(result.rates_per_h >= LAM_PHYS * (1 - 1e-12))
        assert result.effective_half_life_h <= LN2 / LAM_PHYS * (1 + 1e-9)
        hit_bound += bool(np.isclose(result.rates_per_h.min(), LAM_PHYS, rtol=1e-6))
    assert hit_bound >= 3
    rising = ti.fit_time_curve(TIMES, [1.0, 1.2, 1.3, 1.4, 1.5], models=("mono",))
    assert rising.rates_per_h[0] == pytest.approx(LAM_PHYS, rel=1e-9)


def test_trapezoid_with_physical_tail_matches_analytic_for_dense_sampling():
    t = np.arange(1.0, 601.0, 2.0)
    exact = 2.0 * 60.0 / LN2
    linear = ti.trapezoid_integral(t, mono(t))
    constant = ti.trapezoid_integral(t, mono(t), before_first="constant")
    assert linear.time_integral == pytest.approx(exact, rel=0.01)
    assert constant.time_integral - linear.time_integral == pytest.approx(mono(1.0) * 1.0 / 2)
    # the tail is physical decay only: an upper bound for the truth after the last point
    short = ti.trapezoid_integral(TIMES, mono(TIMES))
    assert short.time_integral > exact - (2.0 * 60 / LN2 - quad(lambda s: float(mono(s)), 4.0, 168.0)[0]) - 1e-9


def test_hanscheid_exact_at_t_equal_teff_and_twice_teff():
    # D = Ddot(t) exp(x)/lambda, x = lambda t; exp(x)/x = 2/ln2 at x = ln2 and x = 2 ln2
    exact = 2.0 * 60.0 / LN2
    for t in (60.0, 120.0):
        assert ti.hanscheid_integral(t, float(mono(t))).time_integral == pytest.approx(exact, rel=1e-12)
    worst = ti.hanscheid_integral(60.0 / LN2, float(mono(60.0 / LN2))).time_integral / exact
    assert worst == pytest.approx(2 / (math.e * LN2), rel=1e-12)  # 6.1 % high at t = 1.44 T_eff
    assert ti.hanscheid_integral(30.0, float(mono(30.0))).time_integral < 0.75 * exact  # outside: low
    same = ti.prior_half_life_integral(96.0, 1.0, effective_half_life_h=96.0)
    assert ti.hanscheid_integral(96.0, 1.0).time_integral == pytest.approx(same.time_integral, rel=1e-12)


def test_prior_half_life_exact_with_the_right_half_life_and_population_table():
    for t in (4.0, 24.0, 96.0, 300.0):
        result = ti.prior_half_life_integral(t, float(mono(t)), effective_half_life_h=60.0)
        assert result.time_integral == pytest.approx(2.0 * 60.0 / LN2, rel=1e-12)
    kidneys = ti.population_half_life("Kidney")
    assert 40.0 <= kidneys <= 60.0
    via_table = ti.prior_half_life_integral(96.0, 1.0, voi="kidneys")
    assert via_table.effective_half_life_h == kidneys
    assert ti.population_half_life("left kidney", "Lu-177-PSMA-617") == pytest.approx(35.5)
    # T_eff uncertainty matters least at t = T_eff / ln 2
    at_optimum = ti.prior_half_life_integral(60.0 / LN2, 1.0, effective_half_life_h=60.0, half_life_sd_h=10.0)
    early = ti.prior_half_life_integral(4.0, 1.0, effective_half_life_h=60.0, half_life_sd_h=10.0)
    assert at_optimum.time_integral_uncertainty == pytest.approx(0.0, abs=1e-9)
    assert early.time_integral_uncertainty / early.time_integral == pytest.approx((1 - LN2 * 4 / 60) * 10 / 60)


def test_every_population_and_radiobiology_entry_has_a_source_and_status():
    half_lives, radiobiology = ti.load_table("population_half_lives"), ti.load_table("radiobiology")
    for table, groups in ((half_lives, half_lives["radiopharmaceuticals"].values()),
                          (radiobiology, [radiobiology["tissues"]])):
        names = set()
        for group in groups:
            names |= set(group)
            for entry in group.values():
                assert entry["source"] and entry["status"] in table["status_meaning"]
        assert set(table["aliases"].values()) <= names


def test_delta_method_uncertainty_matches_monte_carlo_of_refits():
    t = np.array([4.0, 24, 48, 96, 144, 168])
    sigma = 0.03
    truth = mono(t, amplitude=1.0)
    predicted = ti.fit_time_curve(t, truth, sigma=sigma, models=("mono",)).time_integral_uncertainty
    rng = np.random.default_rng(1)
    refits = [ti.fit_time_curve(t, truth + sigma * rng.standard_normal(t.size), sigma=sigma,
                                models=("mono",)).time_integral for _ in range(300)]
    assert predicted == pytest.approx(np.std(refits), rel=0.2)
    with_calibration = ti.fit_time_curve(t, truth, sigma=sigma, models=("mono",), calibration_rel_uncertainty=0.1)
    assert with_calibration.time_integral_uncertainty == pytest.approx(
        math.hypot(predicted, 0.1 * with_calibration.time_integral), rel=1e-6)


def test_unweighted_fit_covariance_from_residuals():
    rng = np.random.default_rng(3)
    y = mono(TIMES) * (1 + 0.05 * rng.standard_normal(TIMES.size))
    result = ti.fit_time_curve(TIMES, y, models=("mono",))
    assert result.covariance.shape == (2, 2) and np.all(np.isfinite(result.covariance))
    assert 0 < result.time_integral_uncertainty < 0.5 * result.time_integral


def test_few_points_rule_and_fit_failure_fallback():
    three = ti.fit_time_curve(TIMES[:3], mono(TIMES[:3]))
    assert three.model == "mono" and "too few" in three.reason and math.isnan(three.aicc)
    two = ti.fit_time_curve(TIMES[:2], mono(TIMES[:2]))
    assert two.time_integral == pytest.approx(2.0 * 60 / LN2, rel=1e-6)
    assert math.isnan(two.time_integral_uncertainty)
    failed = ti.fit_time_curve(TIMES, np.zeros(TIMES.size))
    assert failed.fit_failed and failed.model == "trapezoid" and "fit failed" in failed.reason
    assert failed.time_integral == 0.0


def test_integrate_time_curve_dispatches_by_method():
    assert ti.integrate_time_curve(TIMES, mono(TIMES)).model == "mono"
    assert ti.integrate_time_curve(TIMES, mono(TIMES), method="trapezoid").model == "trapezoid"
    assert ti.integrate_time_curve([96.0], [1.0], method="hanscheid").model == "hanscheid"
    result = ti.integrate_time_curve([96.0], 1.0, method="prior-half-life", voi="liver")
    assert result.effective_half_life_h == ti.population_half_life("liver")


@pytest.mark.parametrize("call, words", [
    (lambda: ti.fit_time_curve([24.0, 4.0, 48.0], [1, 2, 3]), "sort"),
    (lambda: ti.fit_time_curve([4.0, 24.0, 24.0], [1, 2, 3]), "duplicate"),
    (lambda: ti.fit_time_curve([0.0, 24.0, 48.0], [1, 2, 3]), "after administration"),
    (lambda: ti.fit_time_curve([-2.0, 24.0, 48.0], [1, 2, 3]), "after administration"),
    (lambda: ti.fit_time_curve(TIMES, [1, 2, np.nan, 3, 4]), "not finite"),
    (lambda: ti.fit_time_curve(TIMES, [1, 2, -1, 3, 4]), "negative"),
    (lambda: ti.fit_time_curve(TIMES, [1, 2, 3]), "one value"),
    (lambda: ti.fit_time_curve(TIMES, mono(TIMES), models=("quad",)), "choose from"),
    (lambda: ti.integrate_time_curve([96.0], [1.0]), "method="),
    (lambda: ti.fit_time_curve([96.0], [1.0]), "method="),
    (lambda: ti.prior_half_life_integral(96.0, 1.0, voi="pancreas"), "unknown VOI"),
    (lambda: ti.prior_half_life_integral(96.0, 1.0), "voi="),
    (lambda: ti.prior_half_life_integral(96.0, 1.0, effective_half_life_h=400.0), "physical half-life"),
    (lambda: ti.voxel_dose_map(TIMES[:2], np.ones((3, 2, 2))), "one value"),
    (lambda: ti.voxel_dose_map(TIMES[:2], np.ones((2, 2, 2)), mask=np.ones((3, 3), bool)), "mask"),
    (lambda: ti.voxel_dose_map(TIMES[:2], np.ones((2, 2, 2)), method="voi-shape"), "voi_fit"),
    (lambda: ti.trapezoid_integral(TIMES, mono(TIMES), before_first="zero"), "before_first"),
])
def test_bad_input_one_line_message_naming_the_fix(call, words):
    with pytest.raises(DblurDoseError) as info:
        call()
    assert words in str(info.value) and "\n" not in str(info.value)


def voxel_stack(times, shape=(3, 4, 5), half_life_h=60.0):
    """Maps whose every voxel is the same mono-exponential curve times its own factor."""
    scale = np.linspace(0.5, 2.0, int(np.prod(shape))).reshape(shape).astype(np.float32)
    return (mono(times, 1.0, half_life_h)[:, None, None, None] * scale).astype(np.float32), scale


def test_voxel_map_equals_voi_fit_where_voxel_curves_equal_the_voi_curve():
    maps, scale = voxel_stack(TIMES[:4])
    voi = ti.fit_time_curve(TIMES[:4], mono(TIMES[:4], 1.0))
    result = ti.voxel_dose_map(TIMES[:4], maps, voi_fit=voi)
    np.testing.assert_allclose(result.dose_gy, scale * voi.dose_gy, rtol=1e-5)
    np.testing.assert_allclose(result.effective_half_life_h, 60.0, rtol=1e-5)
    assert result.n_fallback == 0 and result.dose_gy.dtype == np.float32
    shaped = ti.voxel_dose_map(TIMES[:4], maps, method="voi-shape", voi_fit=voi)
    np.testing.assert_allclose(shaped.dose_gy, scale * voi.dose_gy, rtol=1e-5)


def test_voxel_fallback_for_a_zero_and_zero_voxels_and_mask():
    t = TIMES[:4]
    maps, scale = voxel_stack(t)
    maps[2, 1, 1, 1] = 0.0  # a zero among positive values: no log-linear fit
    maps[:, 0, 0, 0] = 0.0  # no activity at all: 0 Gy, not a fallback
    voi = ti.fit_time_curve(t, mono(t, 1.0))
    result = ti.voxel_dose_map(t, maps, voi_fit=voi)
    assert result.n_fallback == 1 and result.fallback[1, 1, 1] and result.fallback_method == "voi-shape"
    g = voi.evaluate(t)
    expected = float(maps[:, 1, 1, 1] @ g / (g @ g)) * voi.dose_gy
    assert result.dose_gy[1, 1, 1] == pytest.approx(expected, rel=1e-5)
    assert result.dose_gy[0, 0, 0] == 0.0 and np.isnan(result.effective_half_life_h[1, 1, 1])
    no_voi = ti.voxel_dose_map(t, maps)
    assert no_voi.fallback_method == "trapezoid" and no_voi.n_fallback == 1
    weights = ti.trapezoid_weights(t)
    assert no_voi.dose_gy[1, 1, 1] == pytest.approx(float(weights @ maps[:, 1, 1, 1]) / 1000, rel=1e-5)
    mask = np.zeros(scale.shape, bool)
    mask[2] = True
    masked = ti.voxel_dose_map(t, maps, mask=mask, chunk_voxels=7)
    assert np.all(masked.dose_gy[:2] == 0) and masked.n_fallback == 0
    np.testing.assert_allclose(masked.dose_gy[2], result.dose_gy[2], rtol=1e-6)


def test_voxel_mono_fit_bounded_by_physical_decay():
    maps = np.stack([np.full((2, 2), v, np.float32) for v in (1.0, 1.2, 1.3, 1.4)])
    result = ti.voxel_dose_map(TIMES[:4], maps)
    np.testing.assert_allclose(result.effective_half_life_h, LN2 / LAM_PHYS, rtol=1e-5)
    trapezoid = ti.voxel_dose_map(TIMES[:4], maps, method="trapezoid")
    expected = ti.trapezoid_integral(TIMES[:4], [1.0, 1.2, 1.3, 1.4]).dose_gy
    np.testing.assert_allclose(trapezoid.dose_gy, expected, rtol=1e-6)
