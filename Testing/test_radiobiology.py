"""BED of a decreasing dose rate (linear-quadratic model with repair) and its sum over cycles."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import quad

from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.physics import radiobiology as rb
from DblurDoseLib.physics import time_integration as ti

LN2 = math.log(2.0)


def test_kidney_bed_hand_computed():
    # alpha/beta 2.6 Gy, T_rep 2.8 h, T_eff 50 h: G = lambda/(lambda+mu) = T_rep/(T_rep+T_eff) = 2.8/52.8
    # BED = 20 (1 + 20 * 0.0530303 / 2.6) = 20 * 1.4079254 = 28.15851 Gy
    assert rb.radiobiology_parameters("kidneys") == (2.6, 2.8)
    assert rb.bed(20.0, 50.0, tissue="kidneys") == pytest.approx(28.15851, abs=1e-4)
    assert rb.bed(20.0, 50.0, tissue="Kidney") == rb.bed(20.0, 50.0, alpha_beta_gy=2.6, repair_half_time_h=2.8)


def test_bed_at_least_dose_tends_to_dose_and_inverts():
    dose = np.array([0.0, 1.0, 5.0, 25.0])
    bed = rb.bed(dose, 50.0, tissue="kidneys")
    assert np.all(bed >= dose) and np.all(np.diff(bed - dose) > 0)
    assert np.allclose(rb.bed(dose, 50.0, alpha_beta_gy=1e12, repair_half_time_h=2.8), dose, rtol=1e-9)
    assert np.allclose(rb.bed(dose, 50.0, alpha_beta_gy=2.6, repair_half_time_h=1e-9), dose, rtol=1e-6)
    back = rb.dose_from_bed(bed, 50.0, tissue="kidneys")
    np.testing.assert_allclose(back, dose, rtol=1e-12, atol=1e-12)
    lesion = rb.bed(dose, 90.0, tissue="lesions")
    assert np.all(lesion <= bed)  # higher alpha/beta, faster repair, slower decay: less extra effect


def test_lea_catcheside_factor_of_fitted_curves_matches_double_integral():
    t = np.array([1.0, 3, 6, 12, 24, 48, 96, 168])
    y = 5.0 * (np.exp(-LN2 / 70 * t) - np.exp(-LN2 / 3 * t))
    fit = ti.fit_time_curve(t, y, models=("bi-uptake",))
    mu = LN2 / 2.8

    def inner(s):
        return quad(lambda w: float(fit.evaluate([w])[0]) * math.exp(-mu * (s - w)), 0, s)[0]

    outer = quad(lambda s: float(fit.evaluate([s])[0]) * inner(s), 0, 2000, limit=200)[0]
    numeric = 2 * outer / fit.time_integral**2
    g = rb.lea_catcheside_factor(fit.amplitudes, fit.rates_per_h, 2.8)
    assert g == pytest.approx(numeric, rel=1e-5)
    mono = ti.fit_time_curve(t, 2.0 * np.exp(-LN2 / 50 * t), models=("mono",))
    assert rb.bed_of_curve(mono, tissue="kidneys") == pytest.approx(
        rb.bed(mono.dose_gy, 50.0, tissue="kidneys"), rel=1e-9)


def test_total_bed_over_cycles_adds_and_is_below_one_big_cycle():
    per_cycle = rb.bed(6.0, 50.0, tissue="kidneys")
    total = rb.total_bed(per_cycle, [per_cycle, per_cycle, per_cycle])
    assert total == pytest.approx(4 * per_cycle)
    assert total < rb.bed(24.0, 50.0, tissue="kidneys")
    maps = rb.total_bed(np.ones((2, 2)), [np.full((2, 2), 2.0)])
    np.testing.assert_allclose(maps, 3.0)


@pytest.mark.parametrize("call, words", [
    (lambda: rb.bed(1.0, 50.0, tissue="brain"), "unknown tissue"),
    (lambda: rb.bed(1.0, 50.0), "tissue="),
    (lambda: rb.bed(-1.0, 50.0, tissue="kidneys"), ">= 0"),
    (lambda: rb.bed(1.0, 0.0, tissue="kidneys"), "> 0 h"),
    (lambda: rb.total_bed(1.0, [np.nan]), "finite"),
    (lambda: rb.bed_of_curve(ti.trapezoid_integral([4.0, 24.0], [1.0, 0.5]), tissue="kidneys"), "fit one"),
])
def test_bad_input_one_line_message(call, words):
    with pytest.raises(DblurDoseError) as info:
        call()
    assert words in str(info.value) and "\n" not in str(info.value)
