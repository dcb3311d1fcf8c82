"""Dose-rate statistics: per-VOI mean and DRx, dose-rate-volume histograms, errors, profiles.

All functions take plain arrays (any dose-rate unit; results come back in the same unit).
DRx is the minimum dose rate received by the hottest x% of the VOI (paper: DR10..DR90).
The tables written to CSV (:func:`statistics_table`, :func:`drvh_table`) carry the unit in each
column name (:func:`unit_suffix`), e.g. ``mean_mGy_per_h`` or ``mean_nGy_per_MBq_s``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DblurDoseError
from ..io.volume import Volume
from ..learning.inference import TISSUE_FLOOR
from ..physics.consistency import soft_tissue
from ..physics.density import AIR_DENSITY_THRESHOLD, BONE_DENSITY_MIN, LUNG_DENSITY_MAX

if TYPE_CHECKING:
    from ..geometry.segments import Segment

DR_LEVELS: tuple[int, ...] = (10, 30, 70, 90)


def unit_suffix(unit: str) -> str:
    """A unit as a column-name suffix: 'mGy/h' -> 'mGy_per_h', 'nGy/(MBq s)' -> 'nGy_per_MBq_s', 'Gy' -> 'Gy'.

    Parameters
    ----------
    unit : str
        A unit as written.

    Returns
    -------
    str
    """
    text = unit.replace("/", " per ").replace("(", " ").replace(")", " ").replace(".", " ")
    return "_".join(text.split())


def statistics_columns(unit: str = "mGy/h") -> dict[str, str]:
    """Keys of :func:`segment_statistics` -> the column names of :func:`statistics_table` for ``unit``.

    Parameters
    ----------
    unit : str
        The dose maps' unit (e.g. 'mGy/h').

    Returns
    -------
    dict of str to str
        ``volume_ml`` -> ``volume_mL``, ``mean`` -> ``mean_<unit>``, ``DRx`` -> ``DRx_<unit>``.
    """
    return {"volume_ml": "volume_mL", "mean": f"mean_{unit_suffix(unit)}",
            **{f"DR{level}": f"DR{level}_{unit_suffix(unit)}" for level in DR_LEVELS}}


def _values(dose_rate: np.ndarray, mask: np.ndarray, name: str = "segment") -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != np.shape(dose_rate):
        raise DblurDoseError(f"{name}: mask shape {mask.shape} differs from the dose map's {np.shape(dose_rate)}")
    if not mask.any():
        raise DblurDoseError(f"{name} is empty on the dose grid; check the segmentation covers the CT field")
    return np.asarray(dose_rate)[mask].astype(np.float64)


def dr_x(values: np.ndarray, x: float) -> float:
    """Minimum value received by the top ``x`` percent of ``values`` (hottest voxels first).

    Parameters
    ----------
    values : np.ndarray
        Dose rates (any unit), any shape.
    x : float
        Percent of the voxels, 0-100 (at least one voxel is taken).

    Returns
    -------
    float
        In the values' unit.
    """
    ordered = np.sort(np.asarray(values, dtype=np.float64).ravel())[::-1]
    k = max(int(np.ceil(x / 100.0 * ordered.size)), 1)
    return float(ordered[k - 1])


def segment_statistics(
    dose_rate: np.ndarray, mask: np.ndarray, voxel_volume_ml: float, name: str = "segment"
) -> dict[str, float]:
    """Volume (mL), mean and DR10/30/70/90 of the dose rate inside ``mask``.

    Parameters
    ----------
    dose_rate : np.ndarray
        Dose-rate map (any unit).
    mask : np.ndarray
        The VOI, boolean, the map's shape.
    voxel_volume_ml : float
        Volume of one voxel, mL.
    name : str
        The VOI's name in messages.

    Returns
    -------
    dict of str to float
        ``volume_ml`` (mL), ``mean`` and ``DR10`` .. ``DR90`` (the map's unit).

    Raises
    ------
    DblurDoseError
        When the mask's shape differs from the map's, or the mask is empty.
    """
    values = _values(dose_rate, mask, name)
    stats = {"volume_ml": float(values.size * voxel_volume_ml), "mean": float(values.mean())}
    stats.update({f"DR{level}": dr_x(values, level) for level in DR_LEVELS})
    return stats


def drvh_bin_edges(max_dose_rate: float, n_bins: int = 200) -> np.ndarray:
    """Bin edges from 0 to a rounded ceiling above ``max_dose_rate`` (1, 2 or 5 x 10^k).

    Parameters
    ----------
    max_dose_rate : float
        The highest value to cover (any unit).
    n_bins : int
        Number of bins.

    Returns
    -------
    np.ndarray
        ``n_bins + 1`` edges, in the same unit.
    """
    top = max(float(max_dose_rate), 1e-12)
    exponent = np.floor(np.log10(top))
    for mult in (1.0, 2.0, 5.0, 10.0):
        ceiling = mult * 10.0**exponent
        if ceiling >= top:
            break
    return np.linspace(0.0, ceiling, int(n_bins) + 1)


def drvh(
    dose_rate: np.ndarray, mask: np.ndarray, bin_edges: np.ndarray | None = None, name: str = "segment"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dose-rate-volume histogram of the VOI.

    Parameters
    ----------
    dose_rate : np.ndarray
        Dose-rate map (any unit).
    mask : np.ndarray
        The VOI, boolean, the map's shape.
    bin_edges : np.ndarray, optional
        Edges (the map's unit); None: :func:`drvh_bin_edges` of the VOI's maximum. Values outside
        are counted in the end bins.
    name : str
        The VOI's name in messages.

    Returns
    -------
    bin_edges : np.ndarray
        The edges used (the map's unit).
    differential : np.ndarray
        Volume fraction per bin (0-1).
    cumulative : np.ndarray
        Fraction of the VOI receiving at least each bin's lower edge (0-1).

    Raises
    ------
    DblurDoseError
        When the mask's shape differs from the map's, or the mask is empty.
    """
    values = _values(dose_rate, mask, name)
    edges = drvh_bin_edges(values.max()) if bin_edges is None else np.asarray(bin_edges, dtype=np.float64)
    counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges)
    differential = counts / values.size
    cumulative = 1.0 - np.concatenate([[0.0], np.cumsum(differential)[:-1]])
    return edges, differential, cumulative


def mean_error_percent(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Absolute error of the VOI mean relative to the true mean, in percent.

    Parameters
    ----------
    estimate, truth : np.ndarray
        Dose-rate maps of one shape and unit.
    mask : np.ndarray
        The VOI, boolean.

    Returns
    -------
    float
        ``|mean(estimate) - mean(truth)| / |mean(truth)|``, percent.
    """
    est, tru = _values(estimate, mask), _values(truth, mask)
    return float(abs(est.mean() - tru.mean()) / abs(tru.mean()) * 100.0)


def nrmse(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Normalised RMS error inside the VOI (paper's definition: RMS error / RMS truth).

    Parameters
    ----------
    estimate, truth : np.ndarray
        Dose-rate maps of one shape and unit.
    mask : np.ndarray
        The VOI, boolean.

    Returns
    -------
    float
        A fraction (not percent).
    """
    est, tru = _values(estimate, mask), _values(truth, mask)
    return float(np.sqrt(np.mean((est - tru) ** 2)) / np.sqrt(np.mean(tru**2)))


def reference_noise_percent(reference: np.ndarray, relative_uncertainty: np.ndarray,
                            mask: np.ndarray) -> dict[str, float]:
    """Statistical noise of a Monte Carlo reference inside a VOI, from its voxels' 1-sigma uncertainties.

    Parameters
    ----------
    reference : np.ndarray
        Dose rate of the Monte Carlo reference (any unit).
    relative_uncertainty : np.ndarray
        Its relative 1-sigma uncertainty per voxel (fraction, e.g. ompmc's batch estimate).
    mask : np.ndarray
        The VOI, boolean.

    Returns
    -------
    dict of str to float
        ``mean``: 1-sigma uncertainty of the VOI's mean dose rate, percent of it, with the voxels
        taken as independent (sqrt(sum (u t)^2) / sum t; correlations between neighbouring voxels,
        which share decays, make the real figure somewhat larger). ``nrmse``: the NRMSE, percent,
        that an exact, noise-free estimate would show against this reference,
        sqrt(sum (u t)^2 / sum t^2) (the expected floor of any method's NRMSE against it).
    """
    t = _values(reference, mask)
    sigma = _values(relative_uncertainty, mask) * t
    variance = float(np.sum(sigma**2))
    return {"mean": 100.0 * np.sqrt(variance) / abs(float(t.sum())),
            "nrmse": 100.0 * np.sqrt(variance / float(np.sum(t**2)))}


def ensemble_noise_percent(realisations: Sequence[np.ndarray], mask: np.ndarray) -> float:
    """Ensemble noise over M noise realisations inside the VOI (paper's Table 1 formula), percent.

    Parameters
    ----------
    realisations : sequence of np.ndarray
        At least two dose-rate maps of one shape and unit.
    mask : np.ndarray
        The VOI, boolean.

    Returns
    -------
    float
        sqrt(mean voxel variance) / mean value, percent.

    Raises
    ------
    DblurDoseError
        For fewer than two realisations.
    """
    if len(realisations) < 2:
        raise DblurDoseError("ensemble noise needs at least two noise realisations")
    stack = np.stack([_values(r, mask) for r in realisations])
    mu = stack.mean(axis=0)
    var = stack.var(axis=0, ddof=1)
    return float(np.sqrt(var.mean()) / mu.mean() * 100.0)


def line_profile(
    volume: Volume, start_lps_mm: Sequence[float], end_lps_mm: Sequence[float], n_points: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Values sampled trilinearly along a line between two LPS points (mm).

    Parameters
    ----------
    volume : Volume
        The image sampled (any unit).
    start_lps_mm, end_lps_mm : sequence of float
        The line's ends, LPS, mm.
    n_points : int, optional
        Samples; default one per smallest voxel spacing along the line.

    Returns
    -------
    distance_mm : np.ndarray
        Distance from the start, mm.
    values : np.ndarray
        The image's values there (0 outside the field).
    """
    from scipy.ndimage import map_coordinates

    p0, p1 = np.asarray(start_lps_mm, dtype=np.float64), np.asarray(end_lps_mm, dtype=np.float64)
    length = float(np.linalg.norm(p1 - p0))
    if n_points is None:
        n_points = max(int(np.ceil(length / min(volume.spacing))) + 1, 2)
    t = np.linspace(0.0, 1.0, n_points)
    points = p0[None, :] + t[:, None] * (p1 - p0)[None, :]
    ijk = ((points - np.asarray(volume.origin)) @ volume.direction) / np.asarray(volume.spacing)
    coords = ijk[:, ::-1].T  # to [z, y, x]
    values = map_coordinates(np.asarray(volume.array, dtype=np.float64), coords, order=1, mode="constant", cval=0.0)
    return t * length, values


def line_through(volume: Volume, mask: np.ndarray, half_length_mm: float = 80.0) -> tuple[np.ndarray, np.ndarray]:
    """End points of a line along the grid's x axis through the centroid of ``mask``.

    ``half_length_mm`` either side and clipped to the field: where a profile through a VOI is drawn.

    Parameters
    ----------
    volume : Volume
        The grid (geometry in mm).
    mask : np.ndarray
        The VOI, boolean, the volume's shape.
    half_length_mm : float
        Half the line's length, mm.

    Returns
    -------
    start, end : np.ndarray
        (x, y, z) LPS points, mm.
    """
    z, y, x = np.argwhere(mask).mean(axis=0)
    half = half_length_mm / float(volume.spacing[0])
    ends = []
    for xi in (max(x - half, 0.0), min(x + half, volume.shape[2] - 1.0)):
        ijk = np.array([xi, round(y), round(z)], dtype=np.float64)
        ends.append(np.asarray(volume.origin) + volume.direction @ (ijk * np.asarray(volume.spacing)))
    return ends[0], ends[1]


def statistics_table(
    dose_maps: dict[str, np.ndarray], segments: Sequence[Segment], voxel_volume_ml: float, unit: str = "mGy/h"
) -> list[dict[str, float | str]]:
    """Rows (segment, method, volume_mL, mean, DR10..DR90) for each segment and dose map.

    Parameters
    ----------
    dose_maps : dict of str to np.ndarray
        Dose-rate map per method, one grid and unit.
    segments : sequence of Segment
        The VOIs on that grid.
    voxel_volume_ml : float
        Volume of one voxel, mL.
    unit : str
        The dose maps' unit, written into the column names (``mean_mGy_per_h``, ...;
        :func:`statistics_columns`).

    Returns
    -------
    list of dict
        One row per segment and method.

    Raises
    ------
    DblurDoseError
        For an empty segment or a mask of another shape.
    """
    columns = statistics_columns(unit)
    rows: list[dict[str, float | str]] = []
    for segment in segments:
        for method, dose in dose_maps.items():
            stats = segment_statistics(dose, segment.mask, voxel_volume_ml, segment.name)
            rows.append({"segment": segment.name, "method": method, **{columns[k]: v for k, v in stats.items()}})
    return rows


def drvh_table(dose_maps: dict[str, np.ndarray], segments: Sequence[Segment], n_bins: int = 200,
               unit: str = "mGy/h") -> list[dict[str, float | str]]:
    """Long-format DRVH rows; bins shared by all methods of a segment (0 to a rounded maximum).

    Parameters
    ----------
    dose_maps : dict of str to np.ndarray
        Dose-rate map per method, one grid and unit.
    segments : sequence of Segment
        The VOIs on that grid.
    n_bins : int
        Bins per segment.
    unit : str
        The dose maps' unit, written into the column names.

    Returns
    -------
    list of dict
        Columns: segment, method, ``dose_rate_low_<unit>``, ``dose_rate_high_<unit>`` (bin edges in
        ``unit``, :func:`unit_suffix`), differential_fraction and cumulative_fraction (of the VOI, 0-1).
    """
    low, high = f"dose_rate_low_{unit_suffix(unit)}", f"dose_rate_high_{unit_suffix(unit)}"
    rows: list[dict[str, float | str]] = []
    for segment in segments:
        top = max(float(np.asarray(d)[segment.mask].max()) for d in dose_maps.values())
        edges = drvh_bin_edges(top, n_bins)
        for method, dose in dose_maps.items():
            _, diff, cum = drvh(dose, segment.mask, edges, segment.name)
            for lo, hi, d, c in zip(edges[:-1], edges[1:], diff, cum):
                rows.append(
                    {"segment": segment.name, "method": method, low: float(lo),
                     high: float(hi), "differential_fraction": float(d), "cumulative_fraction": float(c)}
                )
    return rows


def absorbed_power_ratio(estimate: np.ndarray, truth: np.ndarray, density: np.ndarray,
                         region: np.ndarray | None = None) -> float:
    """Whole-body absorbed power of ``estimate`` over that of ``truth`` (dimensionless): the energy check.

    Parameters
    ----------
    estimate, truth : np.ndarray
        Dose-rate maps of one shape and unit (e.g. mGy/h).
    density : np.ndarray
        Mass density, g/cm3, same shape; voxels under the air threshold are left out.
    region : np.ndarray of bool, optional
        Only these voxels (of the body); default the whole body.

    Returns
    -------
    float
        ``sum(estimate x density) / sum(truth x density)`` over the body: dose rate x mass is the
        power deposited, so 1 means the map deposits the energy the truth does; below 1 it removes
        energy. NaN where the truth deposits none.
    """
    body = np.asarray(density) >= AIR_DENSITY_THRESHOLD
    if region is not None:
        body &= np.asarray(region, dtype=bool)
    rho = np.asarray(density, dtype=np.float64)[body]
    est = float(np.dot(np.asarray(estimate, dtype=np.float64)[body], rho))
    tru = float(np.dot(np.asarray(truth, dtype=np.float64)[body], rho))
    return est / tru if tru > 0 else float("nan")


#: the media of :func:`power_media`, in density order
POWER_MEDIA = ("lung", "soft tissue", "bone")


def power_media(density: np.ndarray) -> dict[str, np.ndarray]:
    """The body's voxels by medium, as boolean masks, on the density bounds of :mod:`DblurDoseLib.physics.density`
    (those of the Monte Carlo's lung, soft-tissue and bone media): "lung" (from the air threshold to
    :data:`~DblurDoseLib.physics.density.LUNG_DENSITY_MAX` g/cm3), "soft tissue" (adipose and soft tissue: where the
    consistency step acts, :func:`~DblurDoseLib.physics.consistency.soft_tissue`) and "bone" (above
    :data:`~DblurDoseLib.physics.density.BONE_DENSITY_MIN`)."""
    density = np.asarray(density)
    masks = ((density >= AIR_DENSITY_THRESHOLD) & (density < LUNG_DENSITY_MAX), soft_tissue(density),
             density > BONE_DENSITY_MIN)
    return dict(zip(POWER_MEDIA, masks))


def absorbed_power_by_medium(estimate: np.ndarray, truth: np.ndarray, density: np.ndarray,
                             media: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Where a map's energy differs from the truth's: :func:`absorbed_power_ratio` in each medium of
    :func:`power_media` (dimensionless; media where the truth deposits nothing are left out).

    Parameters
    ----------
    estimate, truth : np.ndarray
        Dose-rate maps of one shape and unit (e.g. mGy/h).
    density : np.ndarray
        Mass density, g/cm3, same shape.
    media : dict, optional
        ``power_media(density)``, when the caller already has it (several maps on one density).

    Returns
    -------
    dict
        Medium -> the estimate's absorbed power there over the truth's there.
    """
    out = {}
    for medium, mask in (power_media(density) if media is None else media).items():
        ratio = absorbed_power_ratio(estimate, truth, density, region=mask)
        if np.isfinite(ratio):
            out[medium] = ratio
    return out


#: a CNN voxel within this factor of the tissue floor counts as at the floor (the floored and ratio
#: corrections approach the floor without reaching it)
AT_FLOOR_TOLERANCE = 1.01
#: corrections equal to this fraction of their largest magnitude count as one value
CONSTANT_RESOLUTION = 1e-5


def correction_diagnostics(cnn: np.ndarray, dvk: np.ndarray, density: np.ndarray, correction: str = "floored",
                           floor: float | None = None, truth: np.ndarray | None = None) -> dict[str, float]:
    """How a CNN map corrects the DVK in tissue: the share held at the tissue floor, and the share where
    the correction is one constant (a dead network region, whose output is the bias whatever the input).

    Parameters
    ----------
    cnn, dvk : np.ndarray
        The CNN's and the DVK's dose-rate maps, one shape and unit.
    density : np.ndarray
        Mass density, g/cm3; tissue is at or above the air threshold, where the DVK is positive.
    correction : {"ratio", "additive", "floored"}
        How the model corrects (its ``ModelConfig.correction``): the correction is ``log(cnn / dvk)``
        ("ratio") or ``cnn - dvk``.
    floor : float, optional
        The inference floor as a fraction of the DVK (default :data:`~DblurDoseLib.learning.inference.TISSUE_FLOOR`).
    truth : np.ndarray, optional
        The true dose-rate map (same unit): whether the floor is right where it acts (the truth is as low
        as the floor) or an overshoot (the truth is well above it).

    Returns
    -------
    dict
        ``tissue_voxels``; ``floor_share``: fraction of tissue voxels within :data:`AT_FLOOR_TOLERANCE`
        of the floor; ``constant_share``: the largest fraction of tissue voxels (not at the floor) whose
        corrections agree to :data:`CONSTANT_RESOLUTION` of the largest correction magnitude (or to a few
        float32 rounding steps, if wider): two neighbouring bins of that width;
        ``constant_value``: that correction (dimensionless log-ratio, or the map's unit for "additive").
        With ``truth``: ``floor_truth_ratio``, the median of truth / DVK over the voxels at the floor (at
        or below ``floor``: the floor is right there; NaN without such voxels), and ``floor_truth_share``,
        their share of the tissue's true dose rate.
    """
    from ..learning.network import CORRECTIONS  # torch: only where a CNN has run

    if correction not in CORRECTIONS:
        raise DblurDoseError(f"unknown correction {correction!r}; choose {', '.join(CORRECTIONS)}")
    floor = TISSUE_FLOOR if floor is None else floor
    cnn, dvk = np.asarray(cnn, dtype=np.float64), np.asarray(dvk, dtype=np.float64)
    tissue = (np.asarray(density) >= AIR_DENSITY_THRESHOLD) & (dvk > 0)
    n = int(tissue.sum())
    if n == 0:
        raise DblurDoseError("no tissue voxel with a positive DVK dose rate: nothing to diagnose")
    c_map, d_map = cnn[tissue], dvk[tissue]
    at_floor = c_map <= floor * AT_FLOOR_TOLERANCE * d_map
    live_c, live_d = c_map[~at_floor], d_map[~at_floor]
    result = {"tissue_voxels": n, "floor_share": float(at_floor.sum()) / n, "constant_share": 0.0,
              "constant_value": float("nan")}
    if truth is not None:
        t_map = np.asarray(truth, dtype=np.float64)[tissue]
        result["floor_truth_ratio"] = float(np.median(t_map[at_floor] / d_map[at_floor])) if at_floor.any() \
            else float("nan")
        total = float(t_map.sum())
        result["floor_truth_share"] = float(t_map[at_floor].sum()) / total if total > 0 else float("nan")
    if live_c.size:
        corr = np.log(live_c / live_d) if correction == "ratio" else live_c - live_d
        # float32 maps: a constant correction comes back to within a few units in the last place of the
        # DVK (additive) or of 1 (ratio); the bins are wider than that, and two neighbours are counted together
        ulp = float(np.finfo(np.float32).eps) * (float(live_d.max()) if correction != "ratio" else 1.0)
        step = max(CONSTANT_RESOLUTION * float(np.abs(corr).max()), 4 * ulp, 1e-30)
        values, counts = np.unique(np.round(corr / step).astype(np.int64), return_counts=True)
        pairs = counts.copy()
        pairs[:-1] += np.where(np.diff(values) == 1, counts[1:], 0)
        top = int(np.argmax(pairs))
        result.update(constant_share=float(pairs[top]) / n, constant_value=float(values[top] * step))
    return result
