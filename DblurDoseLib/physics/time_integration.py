"""Time integration: from dose rates (or activities) at a few time points to absorbed dose.

Pure numpy/scipy: no file input or output (but for the shipped population half-lives), no Slicer.
Times are hours after administration (h), dose rates mGy/h, rate constants 1/h; a time integral
of a dose rate is in mGy, and ``dose_gy`` is that divided by 1000. The same functions integrate
activities (MBq -> MBq h, the time-integrated activity); ``dose_gy`` then has no meaning.

Models (MIRD Pamphlets 23 and 26; EANM Lu-177 dosimetry guidance)
-----------------------------------------------------------------
Every curve is a sum of exponentials ``f(t) = sum_j c_j exp(-lambda_j t)``, integrated
analytically from 0 to infinity: ``sum_j c_j / lambda_j``. The fitted parameters are amplitudes
``A`` (>= 0) and rate constants; the amplitudes of the terms are linear in ``A``:

* ``mono``:       ``A exp(-l t)``
* ``bi``:         ``A1 exp(-l1 t) + A2 exp(-l2 t)``  (two clearance phases)
* ``bi-uptake``:  ``A (exp(-l1 t) - exp(-lu t))``, ``lu > l1``: uptake at rate ``lu``, clearance
  ``l1``; zero at administration
* ``tri``:        ``A1 exp(-l1 t) + A2 exp(-l2 t) + A3 exp(-l3 t)``
* ``tri-uptake``: ``A1 exp(-l1 t) + A2 exp(-l2 t) - (A1 + A2) exp(-lu t)``, ``lu > l1, l2``

Every rate constant is bounded below by the physical decay constant of the nuclide
(:mod:`DblurDoseLib.physics.nuclides`): biological clearance cannot be negative.

Model choice: the corrected Akaike information criterion,
``AICc = n ln(RSS/n) + 2k + 2k(k+1)/(n-k-1)`` (``k`` model parameters, ``RSS`` weighted by
``1/sigma^2`` when uncertainties are given), lowest wins, among the models with ``n > k + 1``
points (else AICc is undefined). RSS below ``n (1e-9 max|y|)^2`` counts as that floor, so that on
noise-free data the simplest exact model wins rather than rounding noise. When no requested model
has ``n > k + 1`` points (2 or 3 time points by default), the mono-exponential is used without a
choice; with 2 points it passes through both and its fit uncertainty is unknown (NaN) unless
``sigma`` is given. A fit fails when the optimiser fails, a parameter, the covariance or the
integral is not finite, or the integral is not positive; when every model fails, the trapezoid
method below is used and the result says so (``fit_failed``, ``reason``).

Trapezoid: straight lines between the points; after the last point physical decay only
(``f(t_n) / lambda_phys``, no biological clearance assumed: an upper bound for the tail); before
the first point either a straight line from zero at administration (``before_first="linear"``,
default: activity has to be taken up) or the first value held back to administration
(``"constant"``, right for tissues at their maximum at once, such as blood). The integral is
linear in the values, ``sum_i w_i y_i``, so its uncertainty follows from ``sigma`` exactly.

Uncertainty: delta method, ``u^2 = g C g^T`` with ``C`` the parameter covariance of the fit
(``sigma^2 (J^T J)^-1``, ``sigma^2 = RSS / (n - k)`` when no ``sigma`` is given) and ``g`` the
gradient of the integral; a relative calibration uncertainty is added in quadrature. Near a
bound (clearance at physical decay) the delta method is an approximation.

One time point
--------------
* Haenscheid et al. 2018 (J Nucl Med 59:75): ``D = Ddot(t) 2 t / ln 2``. For a mono-exponential
  ``D = Ddot(t) exp(x) / lambda`` with ``x = lambda t``, and ``exp(x)/x = 2/ln 2`` holds at
  ``x = ln 2`` and ``x = 2 ln 2``: exact when ``t = T_eff`` and when ``t = 2 T_eff``. The ratio
  to the truth is ``(2x / ln 2) exp(-x)``: at most 6.1 % high in between (at ``x = 1``,
  ``t = T_eff / ln 2 = 1.44 T_eff``), low outside (29 % low at ``t = T_eff / 2``).
* Prior effective half-life (Madsen et al. 2018, Med Phys 45:2318):
  ``D = Ddot(t) exp(lambda_eff t) / lambda_eff`` with a population ``T_eff``
  (``data/population_half_lives.json``); exact for a mono-exponential with that ``T_eff``, least
  sensitive to an error in ``T_eff`` at ``t = T_eff / ln 2``. Haenscheid's formula is this one
  with ``T_eff = t``.

Voxel by voxel
--------------
:func:`voxel_dose_map` fits every voxel at once (numpy, in chunks): ``mono`` by log-linear least
squares weighted by ``y^2`` (the first-order equivalent of least squares on ``y``; exact for
noise-free data) with the same physical-decay bound (at the bound, the amplitude is refitted with
``lambda = lambda_phys``), or ``trapezoid``, or ``voi-shape`` (the VOI's fitted curve scaled to the
voxel by least squares). Voxels with a zero among positive values cannot have a log-linear fit:
they get the VOI shape scaled (given a VOI fit) or the trapezoid, and are counted. Bi-exponential
fits voxel by voxel are not offered: with the usual 3-5 SPECT time points and voxel noise they
are not identifiable (AICc needs ``n > k + 1``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cache
from itertools import combinations, permutations
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.optimize import least_squares, nnls

from .. import DATA_DIR
from ..errors import DblurDoseError
from .nuclides import get_nuclide

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

LN2 = math.log(2.0)

#: models tried by :func:`fit_time_curve` unless told otherwise, simplest first
DEFAULT_MODELS: tuple[str, ...] = ("mono", "bi-uptake", "bi", "tri-uptake", "tri")

#: rules for the dose rate before the first time point (trapezoid method)
BEFORE_FIRST = ("linear", "constant")

#: residuals below this fraction of the largest value are rounding noise (AICc floor)
_RSS_FLOOR = 1e-9


# --------------------------------------------------------------------------------------------
# models: sums of exponentials with amplitudes linear in the fitted amplitudes


@dataclass(frozen=True)
class _Model:
    """``f(t) = sum_j (C @ a)_j exp(-rates_j t)``; parameters ``p = (a..., rates...)``."""

    name: str
    C: tuple[tuple[float, ...], ...]  # (terms, amplitudes)
    uptake: int | None = None  # index of the uptake rate, which must exceed the others

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.C, dtype=np.float64)

    @property
    def n_amplitudes(self) -> int:
        return len(self.C[0])

    @property
    def n_rates(self) -> int:
        return len(self.C)

    @property
    def k(self) -> int:
        return self.n_amplitudes + self.n_rates

    @property
    def parameter_names(self) -> tuple[str, ...]:
        amps = ("A",) if self.n_amplitudes == 1 else tuple(f"A{i + 1}" for i in range(self.n_amplitudes))
        rates = tuple("lambda_uptake" if j == self.uptake else f"lambda_{j + 1}" for j in range(self.n_rates))
        return amps + rates

    def split(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Term amplitudes ``c`` (units of the values) and rate constants (1/h)."""
        return self.matrix @ p[: self.n_amplitudes], p[self.n_amplitudes:]

    def valid_rates(self, rates: np.ndarray) -> bool:
        if self.uptake is None:
            return True
        others = np.delete(rates, self.uptake)
        return bool(np.all(rates[self.uptake] > others))


_MODELS: dict[str, _Model] = {m.name: m for m in (
    _Model("mono", ((1.0,),)),
    _Model("bi", ((1.0, 0.0), (0.0, 1.0))),
    _Model("bi-uptake", ((1.0,), (-1.0,)), uptake=1),
    _Model("tri", ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))),
    _Model("tri-uptake", ((1.0, 0.0), (0.0, 1.0), (-1.0, -1.0)), uptake=2),
)}


def exponential_sum(times_h: np.ndarray, amplitudes: np.ndarray, rates_per_h: np.ndarray) -> np.ndarray:
    """``sum_j amplitudes_j exp(-rates_j t)`` at ``times_h`` (h); units of the amplitudes.

    Parameters
    ----------
    times_h : np.ndarray
        Times, h.
    amplitudes : np.ndarray
        One per term (e.g. mGy/h).
    rates_per_h : np.ndarray
        Rate constants, 1/h, one per term.

    Returns
    -------
    np.ndarray
        Float64 values at ``times_h``, in the amplitudes' units.
    """
    t = np.asarray(times_h, dtype=np.float64)
    return np.exp(-np.multiply.outer(t, rates_per_h)) @ np.asarray(amplitudes, dtype=np.float64)


def _curve(model: _Model, p: np.ndarray, t: np.ndarray) -> np.ndarray:
    return exponential_sum(t, *model.split(p))


def _curve_jacobian(model: _Model, p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """d f(t_i) / d p, shape (n, k)."""
    c, rates = model.split(p)
    e = np.exp(-np.multiply.outer(t, rates))  # (n, terms)
    return np.hstack([e @ model.matrix, -(t[:, None] * e) * c])


def _integral(model: _Model, p: np.ndarray) -> float:
    c, rates = model.split(p)
    return float(np.sum(c / rates))


def _integral_gradient(model: _Model, p: np.ndarray) -> np.ndarray:
    """d (integral from 0 to infinity) / d p."""
    c, rates = model.split(p)
    return np.concatenate([(1.0 / rates) @ model.matrix, -c / rates**2])


# --------------------------------------------------------------------------------------------
# result


@dataclass(frozen=True, eq=False)
class TimeIntegral:
    """The time integral of one VOI's dose-rate (or activity) curve, and how it was obtained.

    Attributes
    ----------
    model : str
        ``mono``, ``bi``, ``bi-uptake``, ``tri``, ``tri-uptake``, ``trapezoid``, ``hanscheid`` or
        ``prior-half-life``.
    parameter_names, parameters : tuple of str, ndarray
        Fitted parameters: amplitudes in the values' units (mGy/h), rate constants in 1/h.
    covariance : ndarray or None
        Parameter covariance of the fit (None when not a fit).
    amplitudes, rates_per_h : ndarray
        The curve as ``sum_j amplitudes_j exp(-rates_per_h_j t)`` (mGy/h, 1/h); empty for the
        trapezoid.
    effective_half_life_h : float
        ``ln 2 / (smallest rate constant)``: the terminal (clearance) phase, h; NaN for the trapezoid.
    time_integral : float
        Integral from administration to infinity, in the values' units times h (mGy for mGy/h).
    time_integral_uncertainty : float
        Its standard uncertainty: the fit's (delta method) and the calibration's in quadrature;
        NaN when the fit's is unknown.
    aicc : float
        Corrected Akaike information criterion of the chosen model (NaN when no choice was made).
    fit_failed : bool
        True when no model could be fitted and the trapezoid was used instead.
    reason : str
        Why this model (choice, too few points, fallback), for the report.
    """

    model: str
    parameter_names: tuple[str, ...]
    parameters: np.ndarray
    covariance: np.ndarray | None
    amplitudes: np.ndarray
    rates_per_h: np.ndarray
    effective_half_life_h: float
    time_integral: float
    time_integral_uncertainty: float
    aicc: float = float("nan")
    fit_failed: bool = False
    reason: str = ""
    candidates: dict[str, float] = field(default_factory=dict)  # model -> AICc of those compared

    @property
    def dose_gy(self) -> float:
        """Absorbed dose, Gy, for a dose-rate curve in mGy/h."""
        return self.time_integral / 1000.0

    @property
    def dose_uncertainty_gy(self) -> float:
        """Standard uncertainty of :attr:`dose_gy`, Gy."""
        return self.time_integral_uncertainty / 1000.0

    def evaluate(self, times_h: ArrayLike) -> np.ndarray:
        """The fitted curve at ``times_h`` (h), in the values' units; not for the trapezoid.

        Parameters
        ----------
        times_h : array_like
            Times after administration, h.

        Returns
        -------
        np.ndarray
            Float64 values (mGy/h for a dose-rate curve).

        Raises
        ------
        DblurDoseError
            For a trapezoid result (it has no curve).
        """
        if self.amplitudes.size == 0:
            raise DblurDoseError("the trapezoid result has no curve to evaluate; fit a model (method='fit')")
        return exponential_sum(np.asarray(times_h, dtype=np.float64), self.amplitudes, self.rates_per_h)


# --------------------------------------------------------------------------------------------
# input checks


def physical_decay_constant_per_h(nuclide: str = "Lu-177") -> float:
    """Physical decay constant of ``nuclide`` (ICRP-107 half-life), 1/h.

    Parameters
    ----------
    nuclide : str
        A supported nuclide.

    Returns
    -------
    float
        ln 2 / half-life, 1/h.
    """
    return get_nuclide(nuclide).decay_constant_per_s * 3600.0


def _check_times(times_h) -> np.ndarray:
    t = np.atleast_1d(np.asarray(times_h, dtype=np.float64))
    if t.ndim != 1 or t.size == 0:
        raise DblurDoseError("times must be a 1-D list of hours after administration; give one time per point")
    if not np.all(np.isfinite(t)):
        raise DblurDoseError("a time is not finite (NaN or inf); give every time in hours after administration")
    if np.any(t <= 0):
        raise DblurDoseError(f"time {t[t <= 0][0]:g} h is not after administration; give times in hours "
                             "after administration (> 0)")
    if np.any(np.diff(t) <= 0):
        kind = "duplicate" if np.any(np.diff(t) == 0) else "unsorted"
        raise DblurDoseError(f"times {t.tolist()} are {kind}; sort the time points (with their values) and "
                             "merge or drop duplicates")
    return t


def _check_values(values, n_times: int, what: str = "dose rates") -> np.ndarray:
    y = np.asarray(values)
    if not np.issubdtype(y.dtype, np.floating):
        y = y.astype(np.float64)
    if y.ndim == 0 or y.shape[0] != n_times:
        got = "a single value" if y.ndim == 0 else f"{y.shape[0]}"
        raise DblurDoseError(f"{got} {what} for {n_times} times; give one value (or map) per time point, "
                             "time along the first axis")
    if not np.all(np.isfinite(y)):
        raise DblurDoseError(f"some {what} are not finite (NaN or inf); mask or fix those voxels before integrating")
    if np.any(y < 0):
        raise DblurDoseError(f"some {what} are negative; clip them to zero (noise) or check the calibration")
    return y


def _check_series(times_h, values, sigma=None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    t = _check_times(times_h)
    y = _check_values(values, t.size).astype(np.float64)
    if y.ndim != 1:
        raise DblurDoseError(f"one VOI's values must be 1-D, got shape {y.shape}; use voxel_dose_map for maps")
    if sigma is None:
        return t, y, None
    s = np.broadcast_to(np.asarray(sigma, dtype=np.float64), y.shape) if np.ndim(sigma) == 0 else \
        _check_values(sigma, t.size, "uncertainties")
    if not np.all(s > 0):
        raise DblurDoseError("uncertainties (sigma) must be positive; give one standard uncertainty per point")
    return t, y, np.asarray(s, dtype=np.float64)


def _check_fraction(value: float, name: str) -> float:
    if not (np.isfinite(value) and value >= 0):
        raise DblurDoseError(f"{name} must be a relative uncertainty >= 0 (e.g. 0.05 for 5 %), got {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------------
# trapezoid


def trapezoid_weights(times_h: ArrayLike, *, before_first: str = "linear", nuclide: str = "Lu-177") -> np.ndarray:
    """Weights ``w`` (h) with ``integral = sum_i w_i y_i`` for the trapezoid method.

    Parameters
    ----------
    times_h : array_like
        Increasing times after administration, h.
    before_first : {"linear", "constant"}
        Before the first point: a line from zero at administration, or the first value held.
    nuclide : str
        Its physical decay gives the tail after the last point, ``y_n / lambda_phys``.

    Returns
    -------
    np.ndarray
        Float64 weights, h, one per time.

    Raises
    ------
    DblurDoseError
        For invalid times or an unknown ``before_first``.
    """
    t = _check_times(times_h)
    if before_first not in BEFORE_FIRST:
        raise DblurDoseError(f"before_first={before_first!r} is unknown; use one of {', '.join(BEFORE_FIRST)}")
    w = np.zeros_like(t)
    dt = np.diff(t)
    w[:-1] += dt / 2
    w[1:] += dt / 2
    w[0] += t[0] / 2 if before_first == "linear" else t[0]
    w[-1] += 1.0 / physical_decay_constant_per_h(nuclide)
    return w


def trapezoid_integral(times_h: ArrayLike, values: ArrayLike, *, sigma: ArrayLike | None = None, before_first: str = "linear",
                       calibration_rel_uncertainty: float = 0.0, nuclide: str = "Lu-177",
                       reason: str = "trapezoid requested", fit_failed: bool = False) -> TimeIntegral:
    """Trapezoid rule with a physical-decay tail (see the module docstring).

    Parameters
    ----------
    times_h : array_like
        Times after administration, h, increasing.
    values : array_like
        Mean dose rates, mGy/h (or activities).
    sigma : array_like or float, optional
        Standard uncertainties of the values; without them the fit part of the uncertainty is NaN.
    before_first : {"linear", "constant"}
        Rule before the first point.
    calibration_rel_uncertainty : float
        Relative standard uncertainty of the calibration factor, added in quadrature.
    nuclide : str
        Its physical decay gives the tail after the last point.
    reason : str
        Recorded as the result's ``reason``.
    fit_failed : bool
        Recorded as the result's ``fit_failed`` (the trapezoid as a fallback).

    Returns
    -------
    TimeIntegral
        ``model="trapezoid"``; ``time_integral`` in mGy for mGy/h.

    Raises
    ------
    DblurDoseError
        For invalid times, values or uncertainties.
    """
    t, y, s = _check_series(times_h, values, sigma)
    w = trapezoid_weights(t, before_first=before_first, nuclide=nuclide)
    integral = float(w @ y)
    u_fit = float(np.sqrt(np.sum((w * s) ** 2))) if s is not None else float("nan")
    empty = np.zeros(0)
    return TimeIntegral(
        model="trapezoid", parameter_names=(), parameters=empty, covariance=None, amplitudes=empty,
        rates_per_h=empty, effective_half_life_h=float("nan"), time_integral=integral,
        time_integral_uncertainty=_combine(u_fit, integral, calibration_rel_uncertainty),
        fit_failed=fit_failed, reason=reason,
    )


def _combine(u_fit: float, integral: float, calibration_rel_uncertainty: float) -> float:
    """Fit and calibration uncertainties in quadrature."""
    rel = _check_fraction(calibration_rel_uncertainty, "calibration_rel_uncertainty")
    return float(math.hypot(u_fit, rel * integral))


# --------------------------------------------------------------------------------------------
# fits


@dataclass
class _Fit:
    model: _Model
    p: np.ndarray
    cov: np.ndarray
    rss: float
    aicc: float


def _aicc(rss: float, n: int, k: int) -> float:
    return n * math.log(rss / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1) if n > k + 1 else float("nan")


def _rate_grid(t: np.ndarray, lam_phys: float) -> np.ndarray:
    """Starting rate constants, 1/h: from physical decay to ~3 per shortest sampling time."""
    fastest = max(3.0 / max(t[0], 1e-3), 10.0 * lam_phys)
    return np.geomspace(lam_phys * 1.05, fastest, 10)


def _starts(model: _Model, t: np.ndarray, y: np.ndarray, wts: np.ndarray, lam_phys: float, keep: int = 4):
    """Starting points: rates on a grid, amplitudes by non-negative least squares; the best ``keep``."""
    grid = _rate_grid(t, lam_phys)
    combos = permutations(grid, model.n_rates) if model.uptake is not None else combinations(grid, model.n_rates)
    scored = []
    for rates in combos:
        rates = np.asarray(rates)
        if not model.valid_rates(rates):
            continue
        basis = np.exp(-np.multiply.outer(t, rates)) @ model.matrix  # (n, amplitudes)
        amps, res = nnls(basis * wts[:, None], y * wts)
        if np.any(amps > 0):
            scored.append((res, np.concatenate([amps, rates])))
    scored.sort(key=lambda item: item[0])
    return [p for _, p in scored[:keep]]


def _fit_model(model: _Model, t: np.ndarray, y: np.ndarray, s: np.ndarray | None, lam_phys: float) -> _Fit | None:
    """Least-squares fit with bounds; None when it fails (see the module docstring)."""
    n = t.size
    wts = 1.0 / s if s is not None else np.ones_like(y)
    lower = np.concatenate([np.zeros(model.n_amplitudes), np.full(model.n_rates, lam_phys)])
    best = None
    for p0 in _starts(model, t, y, wts, lam_phys):
        p0 = np.maximum(p0, lower * (1 + 1e-9))
        try:
            sol = least_squares(lambda p: (_curve(model, p, t) - y) * wts, p0,
                                jac=lambda p: _curve_jacobian(model, p, t) * wts[:, None],
                                bounds=(lower, np.inf), method="trf", x_scale="jac",
                                xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=100 * model.k)
        except (ValueError, np.linalg.LinAlgError):
            continue
        if sol.status > 0 and np.all(np.isfinite(sol.x)) and (best is None or sol.cost < best.cost):
            best = sol
    if best is None or not model.valid_rates(model.split(best.x)[1]):
        return None
    rss = float(2.0 * best.cost)
    cov = _covariance(best.jac, rss, n, model.k, absolute=s is not None)
    integral = _integral(model, best.x)
    if cov is None or not (np.isfinite(integral) and integral > 0):
        return None
    floor = n * (_RSS_FLOOR * float(np.max(y * wts))) ** 2
    return _Fit(model, best.x, cov, rss, _aicc(max(rss, floor), n, model.k))


def _covariance(jac: np.ndarray, rss: float, n: int, k: int, *, absolute: bool) -> np.ndarray | None:
    """``s^2 (J^T J)^-1``; ``s^2 = 1`` with given sigmas, else ``RSS/(n-k)`` (NaN when n == k)."""
    try:
        inv = np.linalg.inv(jac.T @ jac)
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(inv)):
        return None
    if absolute:
        return inv
    return inv * (rss / (n - k) if n > k else float("nan"))


def _result_from_fit(fit: _Fit, calibration_rel_uncertainty: float, reason: str, candidates: dict) -> TimeIntegral:
    c, rates = fit.model.split(fit.p)
    integral = _integral(fit.model, fit.p)
    g = _integral_gradient(fit.model, fit.p)
    variance = float(g @ fit.cov @ g)
    u_fit = math.sqrt(variance) if variance >= 0 else float("nan")
    return TimeIntegral(
        model=fit.model.name, parameter_names=fit.model.parameter_names, parameters=fit.p.copy(),
        covariance=fit.cov, amplitudes=c, rates_per_h=rates.copy(),
        effective_half_life_h=LN2 / float(np.min(rates)), time_integral=integral,
        time_integral_uncertainty=_combine(u_fit, integral, calibration_rel_uncertainty),
        aicc=fit.aicc, reason=reason, candidates=candidates,
    )


def fit_time_curve(times_h: ArrayLike, values: ArrayLike, *, models: tuple[str, ...] = DEFAULT_MODELS,
                   sigma: ArrayLike | None = None, calibration_rel_uncertainty: float = 0.0,
                   before_first: str = "linear", nuclide: str = "Lu-177") -> TimeIntegral:
    """Fit exponential models to one VOI's curve, pick one by AICc, integrate it to infinity.

    Parameters
    ----------
    times_h : array_like
        Times after administration, h (> 0, increasing, at least 2).
    values : array_like
        Mean dose rates in the VOI, mGy/h (or activities, MBq), >= 0.
    models : tuple of str
        Models to compare (see the module docstring), default all five.
    sigma : array_like or float, optional
        Standard uncertainties of the values (same units): weighted fit and covariance from them;
        without, an unweighted fit with the covariance scaled by the residual variance.
    calibration_rel_uncertainty : float
        Relative standard uncertainty of the calibration, added in quadrature.
    before_first : {"linear", "constant"}
        Rule before the first point if the trapezoid fallback is needed.
    nuclide : str
        Its physical decay constant bounds every rate constant from below.

    Returns
    -------
    TimeIntegral
        ``time_integral`` in mGy for mGy/h; ``dose_gy`` in Gy. When no model can be fitted: the
        trapezoid with ``fit_failed=True``.

    Raises
    ------
    DblurDoseError
        For invalid inputs, an unknown model, or a single time point.
    """
    t, y, s = _check_series(times_h, values, sigma)
    unknown = [m for m in models if m not in _MODELS]
    if unknown or not models:
        raise DblurDoseError(f"unknown model(s) {unknown}; choose from {', '.join(_MODELS)}")
    if t.size < 2:
        raise DblurDoseError("one time point cannot be fitted; choose method='hanscheid' or "
                             "method='prior-half-life' (with voi=... or effective_half_life_h=...)")
    lam_phys = physical_decay_constant_per_h(nuclide)
    n = t.size
    candidates = [_MODELS[m] for m in models if n > _MODELS[m].k + 1]
    if candidates:
        fits = [f for f in (_fit_model(m, t, y, s, lam_phys) for m in candidates) if f is not None]
        if fits:
            best = min(fits, key=lambda f: f.aicc)
            table = {f.model.name: f.aicc for f in fits}
            failed = [m.name for m in candidates if m.name not in table]
            why = f"lowest AICc among {', '.join(table)}" + (f" ({', '.join(failed)} failed)" if failed else "")
            return _result_from_fit(best, calibration_rel_uncertainty, why, table)
        tried = ", ".join(m.name for m in candidates)
    else:
        fit = _fit_model(_MODELS["mono"], t, y, s, lam_phys)
        if fit is not None:
            why = (f"{n} time points: too few to compare models by AICc (needs n > k + 1); "
                   "mono-exponential used" + ("; it passes through both points, fit uncertainty unknown"
                                              if n == 2 and s is None else ""))
            fit.aicc = float("nan")
            return _result_from_fit(fit, calibration_rel_uncertainty, why, {})
        tried = "mono"
    return trapezoid_integral(t, y, sigma=s, before_first=before_first, nuclide=nuclide,
                              calibration_rel_uncertainty=calibration_rel_uncertainty, fit_failed=True,
                              reason=f"fit failed ({tried}); trapezoid with physical-decay tail used")


# --------------------------------------------------------------------------------------------
# one time point


def _mono_from_point(model: str, time_h: float, value: float, effective_half_life_h: float,
                     rel_u_method: float, calibration_rel_uncertainty: float, reason: str) -> TimeIntegral:
    """The mono-exponential through ``(time_h, value)`` with the given half-life, integrated."""
    lam = LN2 / effective_half_life_h
    amplitude = value * math.exp(lam * time_h)
    integral = amplitude / lam
    return TimeIntegral(
        model=model, parameter_names=("A", "lambda_1"), parameters=np.array([amplitude, lam]), covariance=None,
        amplitudes=np.array([amplitude]), rates_per_h=np.array([lam]), effective_half_life_h=effective_half_life_h,
        time_integral=integral, time_integral_uncertainty=_combine(rel_u_method * integral, integral,
                                                                   calibration_rel_uncertainty),
        reason=reason,
    )


def _single_point(time_h: float, value: float) -> tuple[float, float]:
    t, y, _ = _check_series([time_h], [value])
    return float(t[0]), float(y[0])


def hanscheid_integral(time_h: float, value: float, *, calibration_rel_uncertainty: float = 0.0) -> TimeIntegral:
    """Haenscheid's single-time-point approximation ``D = Ddot(t) 2 t / ln 2``.

    Exact for a mono-exponential when ``t = T_eff`` or ``t = 2 T_eff`` (module docstring).

    Parameters
    ----------
    time_h : float
        Time after administration, h.
    value : float
        Dose rate then, mGy/h.
    calibration_rel_uncertainty : float
        Relative calibration uncertainty (the method's own error is not included).

    Returns
    -------
    TimeIntegral
        The mono-exponential with ``T_eff = t`` through the point: ``time_integral`` in mGy.
    """
    t, y = _single_point(time_h, value)
    return _mono_from_point("hanscheid", t, y, t, 0.0, calibration_rel_uncertainty,
                            "one time point: Haenscheid 2018, D = Ddot(t) 2t / ln 2")


def prior_half_life_integral(time_h: float, value: float, *, effective_half_life_h: float | None = None,
                             voi: str | None = None, radiopharmaceutical: str = "Lu-177-DOTATATE",
                             half_life_sd_h: float = 0.0, calibration_rel_uncertainty: float = 0.0,
                             nuclide: str = "Lu-177") -> TimeIntegral:
    """Single time point with a prior effective half-life (Madsen et al. 2018).

    ``D = Ddot(t) exp(lambda t) / lambda``, ``lambda = ln 2 / T_eff``.

    Parameters
    ----------
    time_h, value : float
        Time after administration (h) and the dose rate then (mGy/h).
    effective_half_life_h : float, optional
        ``T_eff`` (h), e.g. the patient's own from an earlier cycle; else the population value of ``voi``.
    voi, radiopharmaceutical : str
        Look-up in ``data/population_half_lives.json`` (:func:`population_half_life`).
    half_life_sd_h : float
        Standard uncertainty of ``T_eff`` (h): relative dose uncertainty ``|lambda t - 1| u_T / T``.
    calibration_rel_uncertainty : float
        Relative calibration uncertainty, in quadrature.
    nuclide : str
        ``T_eff`` cannot exceed its physical half-life.

    Returns
    -------
    TimeIntegral
        ``time_integral`` in mGy.
    """
    t, y = _single_point(time_h, value)
    if effective_half_life_h is None:
        if voi is None:
            raise DblurDoseError("the prior-half-life method needs effective_half_life_h=... or voi=... "
                                 "(a VOI in the population half-life table)")
        effective_half_life_h = population_half_life(voi, radiopharmaceutical)
    physical = LN2 / physical_decay_constant_per_h(nuclide)
    if not (np.isfinite(effective_half_life_h) and 0 < effective_half_life_h <= physical * (1 + 1e-12)):
        raise DblurDoseError(f"effective half-life {effective_half_life_h!r} h is impossible: it must be > 0 and "
                             f"<= the physical half-life {physical:.1f} h")
    sd = _check_fraction(half_life_sd_h, "half_life_sd_h")
    lam = LN2 / effective_half_life_h
    rel = abs(lam * t - 1.0) * sd / effective_half_life_h
    return _mono_from_point("prior-half-life", t, y, float(effective_half_life_h), rel,
                            calibration_rel_uncertainty,
                            f"one time point: prior effective half-life {effective_half_life_h:g} h (Madsen 2018)")


# --------------------------------------------------------------------------------------------
# data tables


@cache
def load_table(name: str) -> dict:
    """A JSON table shipped in ``DblurDoseLib/data`` (``population_half_lives``, ``radiobiology``).

    Parameters
    ----------
    name : str
        The file's name without ``.json``.

    Returns
    -------
    dict
        The parsed table (cached: do not change it).
    """
    return json.loads((DATA_DIR / f"{name}.json").read_text(encoding="utf-8"))


def table_entry(table: dict, entries: dict, name: str, what: str) -> dict:
    """``entries[name]`` with the table's aliases; a one-line error naming the known names.

    Parameters
    ----------
    table : dict
        A table from :func:`load_table` (its ``aliases``).
    entries : dict
        The part of the table searched.
    name : str
        The name asked for (case, spaces and ``-`` do not matter).
    what : str
        What the name is, for the message ("VOI for ... half-lives").

    Returns
    -------
    dict
        The entry.

    Raises
    ------
    DblurDoseError
        For an unknown name.
    """
    key = str(name).strip().lower().replace(" ", "_").replace("-", "_")
    key = table.get("aliases", {}).get(key, key)
    if key not in entries:
        raise DblurDoseError(f"unknown {what} {name!r}; use one of {', '.join(sorted(entries))} "
                             "or give the value yourself")
    return entries[key]


def population_half_life(voi: str, radiopharmaceutical: str = "Lu-177-DOTATATE") -> float:
    """Population effective half-life (h) of ``voi`` from ``data/population_half_lives.json``.

    Parameters
    ----------
    voi : str
        The VOI's name (e.g. kidney; aliases accepted).
    radiopharmaceutical : str
        A radiopharmaceutical of the table.

    Returns
    -------
    float
        Effective half-life, h.

    Raises
    ------
    DblurDoseError
        For an unknown radiopharmaceutical or VOI.
    """
    table = load_table("population_half_lives")
    drugs = table["radiopharmaceuticals"]
    if radiopharmaceutical not in drugs:
        raise DblurDoseError(f"no population half-lives for {radiopharmaceutical!r}; use one of "
                             f"{', '.join(drugs)} or give effective_half_life_h")
    entry = table_entry(table, drugs[radiopharmaceutical], voi, f"VOI for {radiopharmaceutical} half-lives")
    return float(entry["effective_half_life_h"])


# --------------------------------------------------------------------------------------------
# one entry point for a VOI

METHODS = ("fit", "trapezoid", "hanscheid", "prior-half-life")


def integrate_time_curve(times_h: ArrayLike, values: ArrayLike, *, method: str | None = None,
                         **options: Any) -> TimeIntegral:
    """Time integral of one VOI's curve by ``method`` (None: ``fit``, which needs >= 2 points).

    Parameters
    ----------
    times_h : array_like
        Times after administration, h.
    values : array_like
        Mean dose rates, mGy/h (or activities, MBq), one per time.
    method : str, optional
        'fit', 'trapezoid', 'hanscheid' or 'prior-half-life' (the last two take one time point).
    **options
        Go to :func:`fit_time_curve`, :func:`trapezoid_integral`, :func:`hanscheid_integral` or
        :func:`prior_half_life_integral`.

    Returns
    -------
    TimeIntegral
        ``time_integral`` in mGy for mGy/h.

    Raises
    ------
    DblurDoseError
        For invalid times, an unknown method, one time point without a single-point method, or a
        single-point method with several points.
    """
    t = _check_times(times_h)
    if method is None:
        if t.size == 1:
            raise DblurDoseError("one time point needs a method: method='hanscheid' or method='prior-half-life' "
                                 "(with voi=... or effective_half_life_h=...)")
        method = "fit"
    if method not in METHODS:
        raise DblurDoseError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if method in ("hanscheid", "prior-half-life"):
        if t.size != 1:
            raise DblurDoseError(f"method {method!r} takes one time point, got {t.size}; use method='fit'")
        y = _check_values(np.atleast_1d(values), 1)
        single = hanscheid_integral if method == "hanscheid" else prior_half_life_integral
        return single(float(t[0]), float(y[0]), **options)
    integrate = fit_time_curve if method == "fit" else trapezoid_integral
    return integrate(t, values, **options)


# --------------------------------------------------------------------------------------------
# voxel by voxel

VOXEL_METHODS = ("mono", "trapezoid", "voi-shape")


@dataclass(frozen=True, eq=False)
class VoxelDoseMap:
    """Voxel-wise absorbed dose.

    Attributes
    ----------
    dose_gy : ndarray, float32
        Absorbed dose, Gy (time integral / 1000 for mGy/h maps), the maps' spatial shape.
    effective_half_life_h : ndarray, float32
        Fitted ``T_eff`` (h) of the mono-exponential voxels; NaN elsewhere.
    fallback : ndarray, bool
        Voxels whose fit was impossible (a zero among the values) and got ``fallback_method``.
    n_fallback : int
        ``fallback.sum()``.
    method, fallback_method : str
        What the voxels got.
    """

    dose_gy: np.ndarray
    effective_half_life_h: np.ndarray
    fallback: np.ndarray
    n_fallback: int
    method: str
    fallback_method: str


def _mono_loglinear(t: np.ndarray, y: np.ndarray, lam_phys: float) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``y`` (n, m) > 0: integral (units x h) and rate (1/h) of the bounded mono fit."""
    log_y = np.log(y)
    w = (y / y.max(axis=0)) ** 2
    sw, st, stt = w.sum(0), t @ w, (t**2) @ w
    sl, stl = (w * log_y).sum(0), t @ (w * log_y)
    slope = (sw * stl - st * sl) / (sw * stt - st**2)
    lam = np.maximum(-slope, lam_phys)
    intercept = (sl + lam * st) / sw
    return np.exp(intercept) / lam, lam


def _voxel_chunk(t, y, method, weights, shape_values, voi_integral, lam_phys):
    """Integral, rate and fallback flag for the columns of ``y`` (n, m)."""
    fallback_integral = (weights @ y if shape_values is None
                         else (shape_values @ y) / float(shape_values @ shape_values) * voi_integral)
    if method == "trapezoid":
        return weights @ y, np.full(y.shape[1], np.nan), np.zeros(y.shape[1], bool)
    if method == "voi-shape":
        return fallback_integral, np.full(y.shape[1], np.nan), np.zeros(y.shape[1], bool)
    positive = np.all(y > 0, axis=0)
    integral, lam = fallback_integral.copy(), np.full(y.shape[1], np.nan)
    if positive.any():
        fit_integral, fit_lam = _mono_loglinear(t, y[:, positive], lam_phys)
        ok = np.isfinite(fit_integral)
        idx = np.flatnonzero(positive)[ok]
        integral[idx], lam[idx] = fit_integral[ok], fit_lam[ok]
        positive[np.flatnonzero(positive)[~ok]] = False
    fallback = ~positive & np.any(y > 0, axis=0)
    return integral, lam, fallback


def voxel_dose_map(times_h: ArrayLike, dose_rates_mgy_h: ArrayLike, *, method: str = "mono",
                   voi_fit: TimeIntegral | None = None, mask: ArrayLike | None = None,
                   before_first: str = "linear", nuclide: str = "Lu-177", chunk_voxels: int = 1 << 20,
                   ) -> VoxelDoseMap:
    """Absorbed-dose map (Gy) from dose-rate maps (mGy/h) at several time points, voxel by voxel.

    Parameters
    ----------
    times_h : array_like
        Times after administration, h (> 0, increasing).
    dose_rates_mgy_h : array_like
        Dose-rate maps, mGy/h, shape ``(n_times, *spatial)`` (registered to one grid), >= 0.
    method : {"mono", "trapezoid", "voi-shape"}
        Per-voxel bounded mono-exponential, trapezoid with physical tail, or ``voi_fit``'s curve scaled.
    voi_fit : TimeIntegral, optional
        A VOI fit (:func:`fit_time_curve`) whose curve shape replaces failed voxel fits (and is the
        shape for ``voi-shape``); without it, failed voxels get the trapezoid.
    mask : array_like of bool, optional
        Voxels to compute (spatial shape); the others get 0 Gy.
    before_first : {"linear", "constant"}
        Trapezoid rule before the first point.
    nuclide : str
        Physical decay bound and tail.
    chunk_voxels : int
        Voxels per vectorised chunk (memory: about 10 x 8 bytes x n_times per voxel).

    Returns
    -------
    VoxelDoseMap
        Voxels whose values are all zero get 0 Gy and are not counted as fallbacks.
    """
    t = _check_times(times_h)
    rates = _check_values(dose_rates_mgy_h, t.size, "dose-rate maps")
    if method not in VOXEL_METHODS:
        raise DblurDoseError(f"unknown voxel method {method!r}; use one of {', '.join(VOXEL_METHODS)}")
    if method == "voi-shape" and (voi_fit is None or voi_fit.amplitudes.size == 0):
        raise DblurDoseError("method='voi-shape' needs voi_fit=... from fit_time_curve (a fitted model)")
    if method == "mono" and t.size < 2:
        raise DblurDoseError("a voxel-wise fit needs at least 2 time points; for one, use hanscheid_integral or "
                             "prior_half_life_integral on the map")
    spatial = rates.shape[1:]
    selected = np.ones(spatial, bool) if mask is None else np.asarray(mask, dtype=bool)
    if selected.shape != spatial:
        raise DblurDoseError(f"mask shape {selected.shape} differs from the maps' {spatial}; resample the mask")
    lam_phys = physical_decay_constant_per_h(nuclide)
    weights = trapezoid_weights(t, before_first=before_first, nuclide=nuclide)
    use_shape = voi_fit is not None and voi_fit.amplitudes.size > 0
    shape_values = voi_fit.evaluate(t) if use_shape else None
    voi_integral = voi_fit.time_integral if use_shape else 0.0
    if shape_values is not None and not float(shape_values @ shape_values) > 0:
        raise DblurDoseError("the VOI fit's curve is zero at every time point; refit the VOI")

    index = np.flatnonzero(selected.ravel())
    flat = rates.reshape(t.size, -1)
    dose = np.zeros(selected.size, np.float32)
    t_eff = np.full(selected.size, np.nan, np.float32)
    fallback = np.zeros(selected.size, bool)
    for start in range(0, index.size, max(int(chunk_voxels), 1)):
        idx = index[start:start + chunk_voxels]
        integral, lam, failed = _voxel_chunk(t, flat[:, idx].astype(np.float64), method, weights, shape_values, voi_integral,
                                             lam_phys)
        dose[idx] = integral / 1000.0
        t_eff[idx] = LN2 / lam
        fallback[idx] = failed
    return VoxelDoseMap(
        dose_gy=dose.reshape(spatial), effective_half_life_h=t_eff.reshape(spatial),
        fallback=fallback.reshape(spatial), n_fallback=int(fallback.sum()), method=method,
        fallback_method="voi-shape" if use_shape else "trapezoid",
    )
