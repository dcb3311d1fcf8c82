"""CT Hounsfield units to mass density (g/cm3) by a piecewise-linear calibration.

The default curve is a bilinear-style calibration typical of clinical SPECT/CT dosimetry
(air, lung, fat, water, soft tissue, cortical bone). It can be replaced by a user CSV with two
columns ``hu,density`` (a header line is allowed), ascending in HU; values outside the table
are clamped to its end points.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DblurDoseError

#: Default calibration points (HU, g/cm3). Air -1000 HU -> 0.0012 g/cm3, water 0 HU -> 1.0,
#: soft tissue 40-60 HU -> 1.04-1.06, cortical bone ~1500 HU -> 1.92 (ICRU 44 / Schneider-like).
DEFAULT_CALIBRATION: tuple[tuple[float, float], ...] = (
    (-1000.0, 0.0012),
    (-800.0, 0.20),
    (-100.0, 0.93),
    (0.0, 1.00),
    (60.0, 1.06),
    (1500.0, 1.92),
    (3000.0, 2.80),
)

#: Voxels below this density are treated as air: no dose is reported there (paper: 0.1 g/cm3).
AIR_DENSITY_THRESHOLD = 0.1
#: The Monte Carlo's media by density (g/cm3; :data:`DblurDoseLib.physics.montecarlo.MEDIA`): lung below
#: LUNG_DENSITY_MAX, bone above BONE_DENSITY_MIN, adipose and soft tissue between.
LUNG_DENSITY_MAX = 0.80
BONE_DENSITY_MIN = 1.12


def load_calibration(path: str | os.PathLike) -> np.ndarray:
    """Read a ``hu,density`` CSV into an (n, 2) array, checking it is usable.

    Parameters
    ----------
    path : str or os.PathLike
        CSV (``,`` or ``;``) of HU and density (g/cm3) per line, strictly ascending in HU; ``#``
        comments and one header line are allowed.

    Returns
    -------
    np.ndarray
        (n, 2) float64: HU, density (g/cm3); n >= 2.

    Raises
    ------
    DblurDoseError
        For a missing file, an unreadable line, fewer than two rows, HU not strictly ascending,
        values not finite, or a negative density.
    """
    path = Path(path)
    if not path.exists():
        raise DblurDoseError(f"HU-to-density calibration file not found: {path}")
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.replace(";", ",").split(",")]
        try:
            rows.append((float(parts[0]), float(parts[1])))
        except (ValueError, IndexError):
            if rows:  # only the first line may be a header
                raise DblurDoseError(f"{path}: cannot read the line {line!r}; expected 'hu,density'") from None
    table = np.asarray(rows, dtype=np.float64)
    if table.shape[0] < 2:
        raise DblurDoseError(f"{path}: a calibration needs at least two 'hu,density' rows")
    if np.any(np.diff(table[:, 0]) <= 0):
        raise DblurDoseError(f"{path}: HU values must be strictly ascending")
    if not np.all(np.isfinite(table)):
        raise DblurDoseError(f"{path}: HU values and densities must be finite numbers (found NaN or inf); fix the table")
    if np.any(table[:, 1] < 0):
        raise DblurDoseError(f"{path}: densities must not be negative")
    return table


#: step (HU) of the table that converts float32 CTs: each voxel takes the nearest entry, so its density
#: differs from interpolating that voxel by at most half a step times the curve's steepest slope
#: (:func:`float_table_tolerance`; default curve: 1/32 HU x 0.00104 g/cm3 per HU = 3.3e-5 g/cm3, in
#: lung). Whole HU values fall on entries: they get exactly what a 16-bit CT gets.
FLOAT_TABLE_STEP_HU = 1.0 / 16.0
#: longest float table (entries, 4 bytes each); a calibration spanning more HU is interpolated per voxel
MAX_FLOAT_TABLE = 1 << 22


def _table(calibration: np.ndarray | None) -> np.ndarray:
    return np.asarray(DEFAULT_CALIBRATION if calibration is None else calibration, dtype=np.float64)


def _float_table_span(table: np.ndarray) -> tuple[float, int]:
    """Lowest HU and number of entries of the float-CT table of a curve."""
    lo, hi = np.floor(table[0, 0]), np.ceil(table[-1, 0])
    return float(lo), int(round((hi - lo) / FLOAT_TABLE_STEP_HU)) + 1


def float_table_tolerance(calibration: np.ndarray | None = None) -> float:
    """Largest difference (g/cm3) between the float-CT table and per-voxel interpolation of a curve.

    Half a table step times the steepest slope of the curve, plus the float32 rounding of the
    entry index (two ulps) and of the density.

    Parameters
    ----------
    calibration : np.ndarray, optional
        (n, 2) table of HU, density (g/cm3); None for :data:`DEFAULT_CALIBRATION`.

    Returns
    -------
    float
        The bound, g/cm3.
    """
    table = _table(calibration)
    slope = np.abs(np.diff(table[:, 1]) / np.diff(table[:, 0])).max()
    steps = 0.5 + 2 * _float_table_span(table)[1] * float(np.finfo(np.float32).eps)
    return float(slope * FLOAT_TABLE_STEP_HU * steps + np.spacing(np.float32(table[:, 1].max())))


def hu_to_density(hu: np.ndarray, calibration: np.ndarray | None = None, exact: bool = False) -> np.ndarray:
    """Mass density (g/cm3, float32) from CT numbers (HU) by piecewise-linear interpolation.

    16-bit integer CTs (the DICOM norm) go through a 65,536-entry table of the same curve: the
    same numbers as interpolating every voxel, several times faster. float32 CTs go through a
    table every :data:`FLOAT_TABLE_STEP_HU` (nearest entry), within :func:`float_table_tolerance`
    of interpolation (3.3e-5 g/cm3 for the default curve) and about twice as fast; ``exact``
    interpolates every voxel instead (phantoms, whose density defines the truth, use it). HU
    must be finite (:func:`check_ct_is_hu` refuses others): the float table gives air for NaN.
    Other types (float64) are interpolated per voxel.

    Parameters
    ----------
    hu : np.ndarray
        CT numbers (HU), any shape.
    calibration : np.ndarray, optional
        (n, 2) table of HU, density (g/cm3), ascending in HU; None for :data:`DEFAULT_CALIBRATION`.
        Values outside the table take its end points.
    exact : bool
        Interpolate every float32 voxel instead of using the table.

    Returns
    -------
    np.ndarray
        Density (g/cm3, float32), the shape of ``hu``.
    """
    table = _table(calibration)
    hu = np.asarray(hu)
    if hu.dtype in (np.int16, np.uint16):
        codes = np.arange(65536, dtype=np.uint16).view(hu.dtype)  # every value the type can hold
        lut = np.interp(codes, table[:, 0], table[:, 1]).astype(np.float32)
        return lut[hu.view(np.uint16)]
    lo, entries = _float_table_span(table)
    if exact or hu.dtype != np.float32 or entries > MAX_FLOAT_TABLE:
        return np.interp(hu, table[:, 0], table[:, 1]).astype(np.float32)
    lut = np.interp(lo + np.arange(entries) * FLOAT_TABLE_STEP_HU, table[:, 0], table[:, 1]).astype(np.float32)
    index = np.multiply(hu, np.float32(1.0 / FLOAT_TABLE_STEP_HU))  # float32, one pass per step below
    index += np.float32(0.5 - lo / FLOAT_TABLE_STEP_HU)  # + 0.5: truncation below rounds to nearest
    np.fmax(index, np.float32(0), out=index)  # fmax/fmin, not clip: NaN becomes entry 0 (air)
    np.fmin(index, np.float32(entries - 1), out=index)
    return lut[index.astype(np.int32)]  # in range: plain indexing (take's clip mode is ~8x slower)


def check_ct_is_hu(hu: np.ndarray) -> None:
    """Refuse CTs that are evidently not in Hounsfield units (raw stored values, density maps).

    Parameters
    ----------
    hu : np.ndarray
        The CT's values.

    Raises
    ------
    DblurDoseError
        For NaN or infinite values, values that look like a density map or raw stored values
        (nothing below -100), or values outside any HU range (below -3100 or above 40000).
    """
    hu = np.asarray(hu)
    if hu.dtype.kind == "f" and not np.all(np.isfinite(hu)):
        raise DblurDoseError("the CT holds NaN or infinite values; fix or crop the CT before computing dose")
    lo, hi = float(np.min(hu)), float(np.max(hu))
    if lo >= -100.0 and hi <= 5.0:
        raise DblurDoseError(
            f"the CT values run from {lo:g} to {hi:g}: this looks like a density map, not HU. "
            "Give the CT in Hounsfield units."
        )
    if lo >= -100.0:
        raise DblurDoseError(
            f"the CT has no air (lowest value {lo:g}): it does not look like Hounsfield units. "
            "If it holds raw stored values, apply the DICOM RescaleSlope/RescaleIntercept "
            "(usually subtract 1024) and try again."
        )
    if lo < -3100.0 or hi > 40000.0:
        raise DblurDoseError(f"the CT values run from {lo:g} to {hi:g}, outside any HU range; check the CT")
