"""Biologically effective dose (BED) of a decreasing dose rate: linear-quadratic model with repair.

For an absorbed dose ``D`` (Gy) delivered by a dose rate ``Ddot(t)`` with mono-exponential repair
of sublethal damage at rate ``mu = ln 2 / T_repair`` (1/h)::

    BED = D (1 + G D / (alpha/beta)),
    G = (2 / D^2) int_0^inf Ddot(t) int_0^t Ddot(w) exp(-mu (t - w)) dw dt   (Lea-Catcheside factor).

For ``Ddot(t) = Ddot0 exp(-lambda t)`` this is ``G = lambda / (mu + lambda)``, Dale's formula
(Dale 1985, Br J Radiol 58:515) ``BED = D (1 + D lambda / ((mu + lambda) alpha/beta))``. For a
fitted sum of exponentials ``sum_j c_j exp(-l_j t)`` (uptake phases included),
``G D^2 / 2 = sum_jk c_j c_k / ((l_j + l_k)(l_j + mu))``, exactly. Treatment cycles weeks apart
are independent (repair is complete in between, no repopulation is modelled): their BEDs add.

Parameters per tissue (``alpha_beta_gy``, ``repair_half_time_h``) come from
``data/radiobiology.json`` with their sources, or are given directly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DblurDoseError
from .time_integration import TimeIntegral, load_table, table_entry

if TYPE_CHECKING:
    from numpy.typing import ArrayLike


def radiobiology_parameters(tissue: str) -> tuple[float, float]:
    """``(alpha/beta in Gy, repair half-time in h)`` of ``tissue`` from ``data/radiobiology.json``.

    Parameters
    ----------
    tissue : str
        A tissue of the table ('kidneys', 'lesions'; aliases accepted).

    Returns
    -------
    alpha_beta_gy : float
        alpha/beta, Gy.
    repair_half_time_h : float
        Repair half-time, h.

    Raises
    ------
    DblurDoseError
        For an unknown tissue.
    """
    table = load_table("radiobiology")
    entry = table_entry(table, table["tissues"], tissue, "tissue for radiobiology parameters")
    return float(entry["alpha_beta_gy"]), float(entry["repair_half_time_h"])


def _parameters(tissue: str | None, alpha_beta_gy: float | None,
                repair_half_time_h: float | None) -> tuple[float, float]:
    """alpha/beta (Gy) and the repair rate mu (1/h): the given values override the tissue's."""
    if tissue is None and (alpha_beta_gy is None or repair_half_time_h is None):
        raise DblurDoseError("BED needs tissue=... (e.g. 'kidneys') or both alpha_beta_gy and repair_half_time_h")
    ab, t_rep = radiobiology_parameters(tissue) if tissue is not None else (math.nan, math.nan)
    ab = ab if alpha_beta_gy is None else float(alpha_beta_gy)
    t_rep = t_rep if repair_half_time_h is None else float(repair_half_time_h)
    if not (ab > 0 and t_rep > 0):  # also catches NaN; inf alpha/beta is allowed (BED = D)
        raise DblurDoseError(f"alpha/beta ({ab} Gy) and repair half-time ({t_rep} h) must be positive")
    return ab, math.log(2.0) / t_rep


def _check_nonnegative(value, name: str) -> np.ndarray:
    a = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise DblurDoseError(f"{name} must be finite and >= 0; mask NaN voxels and check the input")
    return a


def lea_catcheside_factor(amplitudes: ArrayLike, rates_per_h: ArrayLike, repair_half_time_h: float) -> float:
    """``G`` (dimensionless, 0-1) of the dose-rate curve ``sum_j amplitudes_j exp(-rates_j t)``.

    Parameters
    ----------
    amplitudes : array_like
        Term amplitudes (any dose-rate unit; negative for uptake terms).
    rates_per_h : array_like
        Rate constants, 1/h, > 0.
    repair_half_time_h : float
        Repair half-time, h.

    Returns
    -------
    float
        The Lea-Catcheside factor ``G``.

    Raises
    ------
    DblurDoseError
        Without a curve (no amplitudes, lengths that differ, a rate not above 0).
    """
    c = np.asarray(amplitudes, dtype=np.float64)
    lam = np.asarray(rates_per_h, dtype=np.float64)
    if c.size == 0 or c.shape != lam.shape or not np.all(lam > 0):
        raise DblurDoseError("the Lea-Catcheside factor needs an exponential curve (amplitudes and positive rates "
                             "of the same length); fit a model first")
    mu = math.log(2.0) / float(repair_half_time_h)
    dose = float(np.sum(c / lam))
    pairs = np.outer(c, c) / ((lam[:, None] + lam[None, :]) * (lam[:, None] + mu))
    return float(2.0 * pairs.sum() / dose**2)


def bed_from_factor(dose_gy: ArrayLike, g_factor: ArrayLike, alpha_beta_gy: float) -> np.ndarray | float:
    """``BED = D (1 + G D / (alpha/beta))``, Gy; arrays broadcast.

    Parameters
    ----------
    dose_gy : array_like
        Absorbed dose, Gy (>= 0, finite).
    g_factor : array_like
        Lea-Catcheside factor(s), dimensionless.
    alpha_beta_gy : float
        alpha/beta, Gy.

    Returns
    -------
    np.ndarray or float
        BED, Gy.

    Raises
    ------
    DblurDoseError
        For a negative or non-finite dose.
    """
    dose = _check_nonnegative(dose_gy, "absorbed dose")
    return dose * (1.0 + np.asarray(g_factor) * dose / alpha_beta_gy)


def bed(dose_gy: ArrayLike, effective_half_life_h: ArrayLike, *, tissue: str | None = None,
        alpha_beta_gy: float | None = None, repair_half_time_h: float | None = None) -> np.ndarray | float:
    """BED (Gy) for a mono-exponentially decreasing dose rate (Dale's formula).

    Parameters
    ----------
    dose_gy : float or ndarray
        Absorbed dose, Gy (a voxel map works).
    effective_half_life_h : float or ndarray
        Effective half-life of the dose rate, h.
    tissue : str, optional
        Name in ``data/radiobiology.json`` ('kidneys', 'lesions').
    alpha_beta_gy, repair_half_time_h : float, optional
        Override the tissue's alpha/beta (Gy) and repair half-time (h).

    Returns
    -------
    float or ndarray
        BED, Gy (>= D).

    Raises
    ------
    DblurDoseError
        Without a tissue or both parameters, for parameters not above 0, a half-life not above
        0 h, or a negative or non-finite dose.
    """
    ab, mu = _parameters(tissue, alpha_beta_gy, repair_half_time_h)
    t_eff = np.asarray(effective_half_life_h, dtype=np.float64)
    if not np.all(t_eff > 0):
        raise DblurDoseError("effective half-lives must be > 0 h; mask the voxels without a fitted half-life")
    lam = math.log(2.0) / t_eff
    return bed_from_factor(dose_gy, lam / (mu + lam), ab)


def bed_of_curve(result: TimeIntegral, *, tissue: str | None = None, alpha_beta_gy: float | None = None,
                 repair_half_time_h: float | None = None) -> float:
    """BED (Gy) of a fitted dose-rate curve (mGy/h), any exponential model, uptake included.

    Parameters
    ----------
    result : TimeIntegral
        A fitted curve (mGy/h) from :func:`~DblurDoseLib.physics.time_integration.fit_time_curve`.
    tissue : str, optional
        Name in ``data/radiobiology.json`` ('kidneys', 'lesions').
    alpha_beta_gy, repair_half_time_h : float, optional
        Override the tissue's alpha/beta (Gy) and repair half-time (h).

    Returns
    -------
    float
        BED, Gy.

    Raises
    ------
    DblurDoseError
        For a result without a curve (trapezoid), or missing or invalid parameters.
    """
    ab, mu = _parameters(tissue, alpha_beta_gy, repair_half_time_h)
    if result.amplitudes.size == 0:
        raise DblurDoseError(f"BED needs an exponential dose-rate curve, not '{result.model}'; fit one "
                             "(method='fit') or use bed() with an effective half-life")
    g = lea_catcheside_factor(result.amplitudes, result.rates_per_h, math.log(2.0) / mu)
    return float(bed_from_factor(result.dose_gy, g, ab))


def dose_from_bed(bed_gy: ArrayLike, effective_half_life_h: ArrayLike, *, tissue: str | None = None,
                  alpha_beta_gy: float | None = None, repair_half_time_h: float | None = None,
                  ) -> np.ndarray | float:
    """The absorbed dose (Gy) whose BED (mono-exponential dose rate) is ``bed_gy``: the inverse of :func:`bed`.

    Parameters
    ----------
    bed_gy : array_like
        BED, Gy (>= 0, finite).
    effective_half_life_h : array_like
        Effective half-life of the dose rate, h.
    tissue : str, optional
        Name in ``data/radiobiology.json``.
    alpha_beta_gy, repair_half_time_h : float, optional
        Override the tissue's alpha/beta (Gy) and repair half-time (h).

    Returns
    -------
    np.ndarray or float
        Absorbed dose, Gy.

    Raises
    ------
    DblurDoseError
        For a negative or non-finite BED, or missing or invalid parameters.
    """
    ab, mu = _parameters(tissue, alpha_beta_gy, repair_half_time_h)
    target = _check_nonnegative(bed_gy, "BED")
    lam = math.log(2.0) / np.asarray(effective_half_life_h, dtype=np.float64)
    q = (lam / (mu + lam)) / ab  # BED = D + q D^2
    with np.errstate(divide="ignore", invalid="ignore"):
        root = 2.0 * target / (1.0 + np.sqrt(1.0 + 4.0 * q * target))  # stable form of the positive root
    return root


def total_bed(bed_gy: ArrayLike, earlier_beds_gy: Iterable[ArrayLike] = ()) -> np.ndarray | float:
    """BED over treatment cycles, Gy: this cycle's plus the earlier cycles' (arrays add voxel by voxel).

    Cycles weeks apart are independent (repair complete in between), so their BEDs add; their
    absorbed doses added first and then converted would overstate the BED.

    Parameters
    ----------
    bed_gy : array_like
        This cycle's BED, Gy.
    earlier_beds_gy : iterable of array_like
        Each earlier cycle's BED, Gy.

    Returns
    -------
    np.ndarray or float
        Total BED, Gy.

    Raises
    ------
    DblurDoseError
        For a negative or non-finite BED.
    """
    total = _check_nonnegative(bed_gy, "BED")
    for earlier in earlier_beds_gy:
        total = total + _check_nonnegative(earlier, "an earlier cycle's BED")
    return total
