"""Absorbed dose from several SPECT/CT time points: the ``dblurdose dosimetry`` workflow.

Qt-free; no file input or output (the command line in :mod:`DblurDoseLib.cli` reads and writes).

Steps (:func:`absorbed_dose`):

1. the time points are checked (hours after administration, > 0, increasing, no duplicates; one
   time point needs a single-time-point method);
2. each time point's CT is registered to the reference (first) time point's CT
   (:func:`registration.register_ct`; the reference itself is not registered), its quality (body
   Dice, HU correlation) kept for the provenance;
3. each SPECT (converted to Bq/mL) is moved onto the reference CT grid with its CT's registration
   (:func:`registration.apply_to_activity`, total activity conserved inside the field), and its
   dose rate (mGy/h) is computed on the *reference* CT (:func:`dose.compute_dose_rate_maps`).
   Choice: moving the activity rather than the dose-rate map keeps the densities of every time
   point those of the reference anatomy, on which the VOIs are drawn, and resamples the SPECT
   once (a dose-rate map computed on the time point's own CT and then moved would be
   interpolated a second time and carry that day's densities into the reference anatomy);
4. per VOI (of the reference segmentation): the mean dose rate (mGy/h) and the activity (MBq) at
   each time point, the time integral of the mean dose-rate curve
   (:func:`time_integration.integrate_time_curve`: AICc model choice, a chosen model family, the
   trapezoid, or for one time point Haenscheid's formula or a prior population half-life), its
   effective half-life and the BED where the VOI's name has radiobiology parameters;
5. the voxel map (Gy): :func:`time_integration.voxel_dose_map` (bounded mono-exponential per voxel,
   or the trapezoid with ``fit="trapezoid"``); inside each VOI, voxels whose fit is impossible (a
   zero among the values) get that VOI's fitted curve scaled, elsewhere the trapezoid. One time
   point: the single-time-point formula applied to every voxel, with the half-life of the VOI
   that holds it (its prior with madsen), Haenscheid's (``T_eff = t``) outside every VOI.

Fallbacks, each flagged in the VOI's row (``fallback``, ``reason``) and warned of: a VOI whose
fits all fail gets the trapezoid with a physical-decay tail; with madsen, a VOI whose name has no
population half-life gets Haenscheid's formula. :func:`write_report` writes an HTML summary.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .dose import ACTIVITY_RANGE_MBQ, check_geometry, compute_dose_rate_maps, spect_to_bqml
from .errors import DblurDoseError
from .evaluation.metrics import dr_x, drvh_table
from .geometry.registration import Registration, apply_to_activity, register_ct, working_ct
from .geometry.resample import ResampleReport, resample_activity
from .io.volume import Segment, Volume
from .physics.radiobiology import bed_of_curve
from .physics.time_integration import (
    DEFAULT_MODELS,
    LN2,
    TimeIntegral,
    integrate_time_curve,
    load_table,
    physical_decay_constant_per_h,
    population_half_life,
    table_entry,
    voxel_dose_map,
)

#: ``--fit`` choices: the models compared by AICc, or the trapezoid
FITS: dict[str, tuple[str, ...]] = {
    "auto": DEFAULT_MODELS,
    "mono": ("mono",),
    "bi": ("bi-uptake", "bi"),
    "tri": ("tri-uptake", "tri"),
    "trapezoid": (),
}
#: ``--single-time-point`` choices -> time_integration method
SINGLE_TIME_POINT = {"haenscheid": "hanscheid", "madsen": "prior-half-life"}
#: least share of a time point's SPECT activity that must fall in the reference CT's field (as in ``dose``)
MIN_FRACTION_INSIDE = 0.5
#: dose levels reported per VOI: D2, D50, D98 (minimum dose to the hottest x %), Gy
DOSE_LEVELS = (2, 50, 98)

Progress = Callable[[float, str], object]


@dataclass
class TimePoint:
    """One SPECT/CT acquisition.

    Attributes
    ----------
    spect : Volume
        SPECT in ``spect_units`` (Bq/mL, kBq/mL, MBq/mL or counts per voxel).
    ct : Volume
        Its CT, HU.
    time_h : float
        Hours after administration.
    label : str
        Name in messages (e.g. "time point 2 (24 h)").
    spect_units : str
        Units of ``spect`` (see :func:`dose.spect_to_bqml`).
    calibration_cps_per_mbq, duration_s : float, optional
        Camera sensitivity (cps/MBq) and acquisition duration (s) for counts.
    """

    spect: Volume
    ct: Volume
    time_h: float
    label: str = ""
    spect_units: str = "bqml"
    calibration_cps_per_mbq: float | None = None
    duration_s: float | None = None


@dataclass
class VoiDose:
    """One VOI's absorbed dose and how it was obtained (doses in Gy, rates in mGy/h)."""

    name: str
    volume_ml: float
    integral: TimeIntegral  # of the VOI's mean dose-rate curve (mGy/h -> mGy)
    dose_rates_mgy_h: np.ndarray  # VOI mean dose rate per time point
    activities_mbq: np.ndarray  # VOI activity per time point
    map_mean_gy: float  # mean of the voxel map inside the VOI
    d_levels_gy: dict[int, float]  # D2, D50, D98 of the voxel map
    bed_gy: float = math.nan
    bed_tissue: str = ""

    @property
    def fallback(self) -> bool:
        """True when every fit failed and the trapezoid was used."""
        return self.integral.fit_failed


@dataclass
class DosimetryResult:
    """What :func:`absorbed_dose` found.

    Attributes
    ----------
    dose : Volume
        Absorbed-dose map, Gy, on the reference CT grid (metadata: provenance).
    dose_rates : list of Volume
        Dose-rate maps, mGy/h, of every time point on the reference CT grid.
    times_h : ndarray
        Hours after administration.
    registrations : list of Registration or None
        Per time point (None for the reference).
    vois : list of VoiDose
    n_voxel_fallback : int
        Voxels whose own fit was impossible (a zero among their values).
    warnings : list of str
    provenance : dict
        Version, method, registration quality and fits, as text (written into every output).
    """

    dose: Volume
    dose_rates: list[Volume]
    times_h: np.ndarray
    registrations: list[Registration | None]
    vois: list[VoiDose]
    n_voxel_fallback: int
    warnings: list[str] = field(default_factory=list)
    provenance: dict[str, str] = field(default_factory=dict)


# --- checks ---------------------------------------------------------------------------------------
def check_time_points(times_h: Sequence[float], single_time_point: str | None) -> np.ndarray:
    """Refuse times that are not hours after administration in increasing order.

    Parameters
    ----------
    times_h : sequence of float
        Each time point's time after administration (h).
    single_time_point : str or None
        The single-time-point method (a key of :data:`SINGLE_TIME_POINT`), or ``None``.

    Returns
    -------
    np.ndarray
        The times (h, float64).

    Raises
    ------
    DblurDoseError
        A time <= 0 or not finite, unsorted or duplicate times, one time point without a
        single-time-point method, an unknown method.
    """
    t = np.asarray(times_h, dtype=np.float64)
    if t.size == 0:
        raise DblurDoseError("no time point given; give at least one time point (SPECT, CT, hours)", settings=("timepoints",))
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        bad = t[~(np.isfinite(t) & (t > 0))][0]
        raise DblurDoseError(f"time point at {bad:g} h is not after administration; give every time point's time "
                             "in hours after administration (> 0)", settings=("timepoints",))
    if np.any(np.diff(t) == 0):
        raise DblurDoseError(f"time points {t.tolist()} h hold a duplicate time; give each acquisition once, "
                             "with its own time", settings=("timepoints",))
    if np.any(np.diff(t) < 0):
        raise DblurDoseError(f"time points {t.tolist()} h are not in increasing order; give the time points "
                             "in the order of acquisition (the first is the reference)", settings=("timepoints",))
    if single_time_point is not None and single_time_point not in SINGLE_TIME_POINT:
        raise DblurDoseError(f"unknown single-time-point method {single_time_point!r}; choose one of "
                             f"{', '.join(SINGLE_TIME_POINT)}", settings=("single_time_point",))
    if t.size == 1 and single_time_point is None:
        raise DblurDoseError("one time point cannot be fitted: choose a single-time-point method, haenscheid (or "
                             "madsen, with population half-lives), or give more time points",
                             settings=("single_time_point", "timepoints"))
    return t


def check_calibration_uncertainty(relative: float) -> float:
    """Refuse a calibration relative standard uncertainty outside [0, 1).

    Parameters
    ----------
    relative : float
        Relative standard uncertainty, a fraction (0.05 for 5%).

    Returns
    -------
    float
        ``relative`` as a float.

    Raises
    ------
    DblurDoseError
        When it is not finite or outside [0, 1).
    """
    relative = float(relative)
    if not (math.isfinite(relative) and 0.0 <= relative < 1.0):
        raise DblurDoseError(f"the calibration's relative uncertainty must be a fraction in [0, 1) (0.05 for 5%), got "
                             f"{relative:g}; give the calibration uncertainty in percent, from 0 to under 100",
                             settings=("calibration_uncertainty",))
    return relative


def check_fit(fit: str) -> tuple[str, ...]:
    """The models of a fit choice (empty for the trapezoid).

    Parameters
    ----------
    fit : str
        A key of :data:`FITS` (``"auto"``, ``"mono"``, ``"bi"``, ``"tri"``, ``"trapezoid"``).

    Returns
    -------
    tuple of str
        The time_integration model names compared by AICc; empty for the trapezoid.

    Raises
    ------
    DblurDoseError
        For an unknown choice.
    """
    if fit not in FITS:
        raise DblurDoseError(f"unknown fit {fit!r}; choose one of {', '.join(FITS)}")
    return FITS[fit]


# --- per time point -------------------------------------------------------------------------------
def _activity_on_reference(point: TimePoint, reference_ct: Volume, registration: Registration | None,
                           ) -> tuple[Volume, list[str]]:
    """The time point's SPECT (Bq/mL) on the reference CT grid through its CT's registration (None: the
    reference itself), and warnings."""
    check_geometry(point.spect, point.ct)
    bqml = spect_to_bqml(point.spect, point.spect_units, point.calibration_cps_per_mbq, point.duration_s)
    resampling: list[ResampleReport] = []
    if registration is None:
        moved = resample_activity(bqml, reference_ct, resampling)
    else:
        moved = apply_to_activity(bqml, registration, reference_ct, resampling)
    inside = resampling[0].fraction_inside
    if inside < MIN_FRACTION_INSIDE:
        raise DblurDoseError(f"{point.label}: only {inside:.0%} of its SPECT activity lies inside the reference CT's "
                             "field after registration; give time points that cover the same body region, or "
                             "choose as reference (first) the time point with the largest CT")
    return moved, ([] if inside >= 0.99 else [
        f"{point.label}: {1 - inside:.0%} of its SPECT activity lies outside the reference CT's field and is not "
        "counted"])


def _dose_rate(activity: Volume, reference_ct: Volume, method: str, options: dict, report: dict) -> Volume:
    """Dose rate (mGy/h) of ``activity`` (Bq/mL, on the reference grid) in the reference CT."""
    return compute_dose_rate_maps(activity, reference_ct, (method,), spect_units="bqml", report=report,
                                  **options)[method]


def _administered_warning(point: TimePoint, total_mbq: float, administered_mbq: float | None) -> list[str]:
    """A warning when the time point holds more activity (MBq) than was administered, decayed physically."""
    if administered_mbq is None:
        return []
    expected = administered_mbq * math.exp(-physical_decay_constant_per_h() * point.time_h)
    if total_mbq <= 1.1 * expected:
        return []
    return [f"{point.label}: {total_mbq:.4g} MBq in the field, more than the {administered_mbq:g} MBq administered "
            f"(decayed: {expected:.4g} MBq); check the SPECT units, the calibration and the administered activity"]


# --- per VOI --------------------------------------------------------------------------------------
def _integrate_voi(times_h: np.ndarray, rates: np.ndarray, models: tuple[str, ...], single: str | None,
                   name: str, radiopharmaceutical: str, calibration_rel_uncertainty: float = 0.0) -> TimeIntegral:
    """The VOI's mean dose-rate curve (mGy/h) integrated (mGy) by the chosen method, the calibration's
    relative uncertainty added in quadrature to the integral's.

    ``madsen`` for a VOI whose name has no population half-life: Haenscheid's formula, flagged as a fallback.
    """
    cal = {"calibration_rel_uncertainty": calibration_rel_uncertainty}
    if times_h.size == 1:
        if SINGLE_TIME_POINT[str(single)] == "hanscheid":  # checked: one time point has a method
            return integrate_time_curve(times_h, rates, method="hanscheid", **cal)
        try:
            population_half_life(name, radiopharmaceutical)
        except DblurDoseError:
            result = integrate_time_curve(times_h, rates, method="hanscheid", **cal)
            return replace(result, fit_failed=True, reason=f"no population half-life for {name!r} "
                           f"({radiopharmaceutical}); Haenscheid used instead of madsen")
        return integrate_time_curve(times_h, rates, method="prior-half-life", voi=name,
                                    radiopharmaceutical=radiopharmaceutical, **cal)
    if not models:
        return integrate_time_curve(times_h, rates, method="trapezoid", **cal)
    return integrate_time_curve(times_h, rates, method="fit", models=models, **cal)


def add_earlier_cycles(rows: list[dict], folders: Sequence[str | Path]) -> tuple[list[dict], list[str]]:
    """``doses.csv`` rows with the absorbed dose and BED summed over this and earlier cycles (Gy).

    Each folder is an earlier ``dblurdose dosimetry`` output of the same patient; VOIs are matched by
    name. BEDs add across cycles weeks apart (no repair between them; :func:`radiobiology.total_bed`).

    Parameters
    ----------
    rows : list of dict
        This cycle's rows (:func:`dose_rows`).
    folders : sequence of str or Path
        Output folders of earlier absorbed-dose runs (each holds a ``doses.csv``).

    Returns
    -------
    rows : list of dict
        The rows with columns ``cycles``, ``cumulative_dose_gy`` and ``cumulative_bed_gy`` (Gy) added.
    warnings : list of str
        One per VOI an earlier cycle lacks (its sums are NaN: not comparable).

    Raises
    ------
    DblurDoseError
        When a folder holds no ``doses.csv``, or one without ``mean_dose_gy`` and ``bed_gy``.
    """
    import csv

    from .physics.radiobiology import total_bed

    earlier = []
    for folder in folders:
        path = Path(folder) / "doses.csv"
        if not path.is_file():
            raise DblurDoseError(f"earlier cycle {folder}: no doses.csv there; give the output folder of an "
                                 "earlier absorbed-dose run of this patient", settings=("earlier_cycles",))
        with path.open(newline="") as f:
            table = {r["segment"]: r for r in csv.DictReader(line for line in f if not line.startswith("#"))}
        if table and not {"mean_dose_gy", "bed_gy"} <= set(next(iter(table.values()))):
            raise DblurDoseError(f"earlier cycle {folder}: its doses.csv lacks mean_dose_gy/bed_gy; give the output "
                                 "folder of an absorbed-dose run", settings=("earlier_cycles",))
        earlier.append((str(folder), table))
    warnings, out = [], []
    for row in rows:
        doses, beds = [row["mean_dose_gy"]], []
        missing = [folder for folder, table in earlier if row["segment"] not in table]
        for _folder, table in earlier:
            if row["segment"] in table:
                doses.append(float(table[row["segment"]]["mean_dose_gy"]))
                beds.append(float(table[row["segment"]]["bed_gy"] or "nan"))
        if missing:
            warnings.append(f"VOI {row['segment']} is not in the earlier cycle(s) {', '.join(missing)}: no sum over "
                            "cycles for it (name the VOIs alike in every cycle)")
        whole = not missing
        has_bed = whole and all(math.isfinite(b) for b in [float(row["bed_gy"]), *beds])  # NaN: no parameters
        out.append({**row, "cycles": 1 + len(earlier),
                    "cumulative_dose_gy": float(np.sum(doses)) if whole else math.nan,
                    "cumulative_bed_gy": float(total_bed(row["bed_gy"], beds)) if has_bed else math.nan})
    return out, warnings


def _bed(integral: TimeIntegral, name: str) -> tuple[float, str]:
    """BED (Gy) of the VOI's curve and the tissue whose parameters gave it; NaN and '' when none apply.

    The VOI's name picks the tissue in ``data/radiobiology.json`` (aliases: kidney, left_kidney, tumour, ...).
    """
    table = load_table("radiobiology")
    tissues = table["tissues"]
    try:
        entry = table_entry(table, tissues, name, "tissue")
    except DblurDoseError:
        return math.nan, ""
    if integral.amplitudes.size == 0:  # the trapezoid: no curve for the Lea-Catcheside factor
        return math.nan, ""
    tissue = next(key for key, value in tissues.items() if value is entry)
    return bed_of_curve(integral, tissue=tissue), tissue


def _voi_dose(segment: Segment, integral: TimeIntegral, rates: np.ndarray, activity_stack: np.ndarray,
              voxel_ml: float, dose_gy: np.ndarray) -> VoiDose:
    """The VOI's row: its integral, its curve (mGy/h), activities (MBq) and the voxel map's statistics (Gy)."""
    mask = segment.mask
    activities = activity_stack[:, mask].sum(axis=1, dtype=np.float64) * voxel_ml / 1e6
    values = dose_gy[mask].astype(np.float64)
    bed, tissue = _bed(integral, segment.name)
    return VoiDose(
        name=segment.name, volume_ml=float(mask.sum()) * voxel_ml, integral=integral, dose_rates_mgy_h=rates,
        activities_mbq=activities, map_mean_gy=float(values.mean()),
        d_levels_gy={level: dr_x(values, level) for level in DOSE_LEVELS}, bed_gy=bed, bed_tissue=tissue,
    )


# --- voxel map ------------------------------------------------------------------------------------
def _single_point_map(time_h: float, rate: np.ndarray, segments: Sequence[Segment],
                      integrals: Sequence[TimeIntegral]) -> np.ndarray:
    """Dose (Gy) of one dose-rate map (mGy/h): ``Ddot exp(lambda t) / lambda`` per voxel.

    ``lambda``: that of the VOI's single-time-point curve (its prior half-life with madsen; the
    first VOI listed where VOIs overlap), ``ln 2 / t`` (Haenscheid) outside every VOI.
    """
    factor = np.full(rate.shape, 2.0 * time_h / LN2 / 1000.0, np.float64)
    for segment, integral in reversed(list(zip(segments, integrals))):
        lam = LN2 / integral.effective_half_life_h
        factor[segment.mask] = math.exp(lam * time_h) / lam / 1000.0
    return (rate * factor).astype(np.float32)


def _voxel_map(times_h: np.ndarray, rate_stack: np.ndarray, segments: Sequence[Segment],
               fits: Sequence[TimeIntegral], trapezoid: bool) -> tuple[np.ndarray, int]:
    """Dose map (Gy) and the number of voxels whose own fit was impossible."""
    method = "trapezoid" if trapezoid else "mono"
    whole = voxel_dose_map(times_h, rate_stack, method=method)
    dose, fallback = whole.dose_gy, whole.fallback.copy()
    if trapezoid:
        return dose, 0
    for segment, fit in reversed(list(zip(segments, fits))):  # failed voxels of a VOI: its curve, scaled
        if fit.amplitudes.size == 0 or not fallback[segment.mask].any():
            continue
        local = voxel_dose_map(times_h, rate_stack, method="mono", voi_fit=fit, mask=segment.mask)
        dose[segment.mask] = local.dose_gy[segment.mask]
    return dose, int(fallback.sum())


# --- the workflow ---------------------------------------------------------------------------------
def absorbed_dose(
    timepoints: Sequence[TimePoint],
    segments: Sequence[Segment],
    *,
    method: str = "dvk",
    fit: str = "auto",
    single_time_point: str | None = None,
    register: str = "rigid",
    radiopharmaceutical: str = "Lu-177-DOTATATE",
    administered_mbq: float | None = None,
    calibration_rel_uncertainty: float = 0.0,
    registrations: Sequence[Registration | None] | None = None,
    dose_options: dict | None = None,
    activity_range_mbq: tuple[float, float] | str | None = ACTIVITY_RANGE_MBQ,
    progress: Progress | None = None,
) -> DosimetryResult:
    """Absorbed dose (Gy) per voxel and per VOI from SPECT/CT time points (module docstring).

    Parameters
    ----------
    timepoints : sequence of TimePoint
        Acquisitions, the reference (whose CT grid the results are on) first, times increasing (h).
    segments : sequence of Segment
        VOIs on the reference CT grid (:func:`segments.read_segments`); may be empty.
    method : {"dvk", "cnn"}
        Dose-rate method.
    fit : {"auto", "mono", "bi", "tri", "trapezoid"}
        VOI curve: models compared by AICc (with and without an uptake phase for bi/tri), or the
        trapezoid with a physical-decay tail (and the trapezoid per voxel).
    single_time_point : {"haenscheid", "madsen"}, optional
        Required for one time point: Haenscheid 2018, or the population half-life of the VOI's name (Madsen 2018).
    register : {"rigid", "deformable", "none"}
        How each CT is registered to the reference CT.
    radiopharmaceutical : str
        For the population half-lives (madsen).
    administered_mbq : float, optional
        Administered activity, MBq: recorded, and a time point holding more than it (decayed) is warned of.
    calibration_rel_uncertainty : float
        Relative standard uncertainty of the camera calibration (e.g. 0.05): added in quadrature to
        each VOI's fit uncertainty (the calibration scales every time point alike).
    registrations : sequence of Registration or None, optional
        The registrations of an earlier result on the same time points (``DosimetryResult.registrations``,
        None for the reference): used as they are, nothing is registered again (e.g. the CNN after the DVK).
    dose_options : dict, optional
        More keywords of :func:`dose.compute_dose_rate_maps` (device, hu_calibration, clip_negative, model, ...).
    activity_range_mbq : (float, float), "nuclide" or None
        Plausible total activity (MBq) of each time point; "nuclide": the nuclide's patient range; None accepts any.
    progress : callable, optional
        ``progress(fraction, message)``.

    Returns
    -------
    DosimetryResult

    Raises
    ------
    DblurDoseError
        Bad times, a registration that fails, a dose-rate input refused (one line, naming the fix).
    """
    times = check_time_points([p.time_h for p in timepoints], single_time_point)
    check_calibration_uncertainty(calibration_rel_uncertainty)
    models = check_fit(fit)
    options = {**(dose_options or {}), "activity_range_mbq": activity_range_mbq}
    if method == "cnn":  # the model is read and verified before any registration
        from .dose import spect_resolution_of
        from .learning.inference import load_model

        # a model that deconvolves its input is refused here, before any work, without the SPECT's resolution
        spect_resolution_of(load_model(options.get("model"), device=options.get("device", "auto")),
                            options.get("spect_fwhm_mm"), [])
    reference_ct = timepoints[0].ct
    warnings: list[str] = []
    if times.size > 1 and single_time_point is not None:
        warnings.append(f"the single-time-point method {single_time_point} is ignored: {times.size} time points are "
                        "fitted")
    rates, activities, registered = _rates_at_time_points(timepoints, registrations, register, method, options,
                                                          administered_mbq, warnings, progress)
    if progress is not None:
        progress(0.9, "time integration")
    dose_gy, vois, n_fallback = _integrate(times, rates, activities, segments, models, single_time_point,
                                           radiopharmaceutical, calibration_rel_uncertainty, reference_ct, warnings)
    dose = reference_ct.with_array(dose_gy)
    provenance = _provenance(rates[0].metadata, times, registered, vois, fit, single_time_point,
                             register, n_fallback)
    if administered_mbq is not None:
        provenance["administered_mbq"] = f"{administered_mbq:g}"
    dose.metadata.update(provenance)
    if progress is not None:
        progress(1.0, "done")
    return DosimetryResult(dose=dose, dose_rates=rates, times_h=times, registrations=registered, vois=vois,
                           n_voxel_fallback=n_fallback, warnings=warnings, provenance=provenance)


def _rates_at_time_points(timepoints: Sequence[TimePoint], registrations: Sequence[Registration | None] | None,
                          register: str, method: str, options: dict, administered_mbq: float | None,
                          warnings: list[str], progress: Progress | None,
                          ) -> tuple[list[Volume], list[np.ndarray], list[Registration | None]]:
    """Each time point registered to the reference CT and its dose rate (mGy/h) on the reference grid.

    Returns the dose-rate volumes, the activity arrays (Bq/mL, reference grid) and the registrations
    (None for the reference); warnings are appended to ``warnings``.
    """
    if registrations is not None and len(registrations) != len(timepoints):
        raise DblurDoseError(f"{len(registrations)} registrations were given for {len(timepoints)} time points; give "
                             "the registrations of a result on the same time points, or none")
    reference_ct = timepoints[0].ct
    registered = list(registrations) if registrations is not None else [None] * len(timepoints)
    target = working_ct(reference_ct) if registrations is None and len(timepoints) > 1 else reference_ct
    rates, activities = [], []
    for i, point in enumerate(timepoints):
        if progress is not None:
            progress(i / len(timepoints), f"{point.label}: registration and dose rate")
        if i > 0 and registrations is None:  # the reference's working grid is made once, not per time point
            registered[i] = register_ct(point.ct, target, register, label=point.label)
        activity, moved_warnings = _activity_on_reference(point, reference_ct, registered[i])
        warnings += moved_warnings
        report: dict = {}
        rates.append(_dose_rate(activity, reference_ct, method, options, report))
        activities.append(np.asarray(activity.array))
        warnings += [f"{point.label}: {w}" for w in report.get("warnings", [])]
        warnings += _administered_warning(point, report["total_activity_mbq"], administered_mbq)
    return rates, activities, registered


def _integrate(times: np.ndarray, rates: Sequence[Volume], activities: Sequence[np.ndarray],
               segments: Sequence[Segment], models: tuple[str, ...], single_time_point: str | None,
               radiopharmaceutical: str, calibration_rel_uncertainty: float, reference_ct: Volume,
               warnings: list[str]) -> tuple[np.ndarray, list[VoiDose], int]:
    """Absorbed dose (Gy) per voxel and per VOI from the dose rates (mGy/h) at ``times`` (h).

    Returns the voxel map, the VOI results and the number of voxels that fell back to their VOI's
    curve or the trapezoid; warnings are appended to ``warnings``.
    """
    rate_stack = np.stack([np.asarray(r.array, dtype=np.float32) for r in rates])
    activity_stack = np.stack(activities)
    voxel_ml = reference_ct.voxel_volume_ml
    curves = [rate_stack[:, s.mask].mean(axis=1, dtype=np.float64) for s in segments]
    integrals = [_integrate_voi(times, curve, models, single_time_point, s.name, radiopharmaceutical,
                                calibration_rel_uncertainty) for s, curve in zip(segments, curves)]
    if times.size == 1:
        dose_gy = _single_point_map(float(times[0]), rate_stack[0], segments, integrals)
        n_fallback = 0
    else:
        dose_gy, n_fallback = _voxel_map(times, rate_stack, segments, integrals, not models)
    vois = [_voi_dose(s, integral, curve, activity_stack, voxel_ml, dose_gy)
            for s, integral, curve in zip(segments, integrals, curves)]
    warnings += [f"VOI {v.name}: {v.integral.reason}" for v in vois if v.fallback]
    if n_fallback:
        warnings.append(f"{n_fallback} voxels could not be fitted (a zero among their dose rates) and got their "
                        "VOI's curve or the trapezoid")
    return dose_gy, vois, n_fallback


def _provenance(made_by: dict, times: np.ndarray, registrations: Sequence[Registration | None], vois: Sequence[VoiDose], fit: str,
                single: str | None, register: str, n_fallback: int) -> dict[str, str]:
    """Text provenance: the dose-rate maps' own, then the time points, registrations and fits."""
    out = {k: str(v) for k, v in made_by.items() if k != "units"}
    out.update({"units": "Gy", "quantity": "absorbed dose", "fit": fit if times.size > 1 else f"single time point: "
                f"{single}", "registration": register, "voxel_fallbacks": str(n_fallback),
                "times_h": " ".join(f"{t:g}" for t in times)})
    for i, registration in enumerate(registrations, start=1):
        if registration is None:
            out[f"timepoint{i}_registration"] = "reference"
            continue
        out[f"timepoint{i}_registration"] = (
            f"{registration.mode}: body Dice {registration.body_dice:.3f}, HU correlation "
            f"{registration.hu_correlation:.3f}, translation " + " ".join(f"{x:.2f}" for x in registration.translation_mm)
            + f" mm, rotation {registration.rotation_angle_deg:.2f} deg")
    for voi in vois:
        out[f"voi_{_key(voi.name)}_fit"] = (f"{voi.integral.model}, T_eff {voi.integral.effective_half_life_h:.4g} h"
                                      f" ({voi.integral.reason})")
    return out


def _key(name: str) -> str:
    """A VOI name usable in a provenance key (NRRD field, CSV header line): letters, digits, '_', '-', '.'."""
    return re.sub(r"[^\w.-]", "_", name)


# --- tables ---------------------------------------------------------------------------------------
def dose_rows(result: DosimetryResult) -> list[dict]:
    """``doses.csv``: one row per VOI (Gy, mL, h).

    Parameters
    ----------
    result : DosimetryResult
        What :func:`absorbed_dose` found.

    Returns
    -------
    list of dict
        Per VOI: volume (mL), mean dose and its uncertainty (Gy), the voxel map's mean and D2, D50,
        D98 (Gy), BED (Gy) and its tissue, the fit, the effective half-life (h), the fallback and reason.
    """
    rows = []
    for v in result.vois:
        rows.append({
            "segment": v.name, "volume_ml": v.volume_ml, "mean_dose_gy": v.integral.dose_gy,
            "mean_dose_uncertainty_gy": v.integral.dose_uncertainty_gy, "map_mean_dose_gy": v.map_mean_gy,
            **{f"D{level}_gy": v.d_levels_gy[level] for level in DOSE_LEVELS},
            "bed_gy": v.bed_gy, "bed_tissue": v.bed_tissue, "fit": v.integral.model,
            "effective_half_life_h": v.integral.effective_half_life_h, "fallback": v.fallback,
            "reason": v.integral.reason,
        })
    return rows


def tac_rows(result: DosimetryResult) -> list[dict]:
    """``tac.csv``: one row per VOI and time point (h, mGy/h, MBq).

    Parameters
    ----------
    result : DosimetryResult
        What :func:`absorbed_dose` found.

    Returns
    -------
    list of dict
        ``segment``, ``time_h`` (h), ``mean_dose_rate_mgy_h`` (mGy/h), ``activity_mbq`` (MBq).
    """
    return [{"segment": v.name, "time_h": float(t), "mean_dose_rate_mgy_h": float(r), "activity_mbq": float(a)}
            for v in result.vois for t, r, a in zip(result.times_h, v.dose_rates_mgy_h, v.activities_mbq)]


def dvh_rows(result: DosimetryResult, segments: Sequence[Segment], n_bins: int = 200) -> list[dict]:
    """``dvh.csv``: cumulative dose-volume histogram per VOI (Gy), from :func:`metrics.drvh_table`.

    Parameters
    ----------
    result : DosimetryResult
        What :func:`absorbed_dose` found (its dose map, Gy).
    segments : sequence of Segment
        The VOIs, on the dose map's grid.
    n_bins : int
        Histogram bins per VOI.

    Returns
    -------
    list of dict
        Per VOI and bin: the bin's dose range (Gy), the differential and cumulative volume fractions.
    """
    rows = drvh_table({"dose": np.asarray(result.dose.array)}, segments, n_bins, unit="Gy")
    return [{"segment": r["segment"], "dose_gy_low": r["dose_rate_low_Gy"], "dose_gy_high": r["dose_rate_high_Gy"],
             "differential_fraction": r["differential_fraction"], "cumulative_fraction": r["cumulative_fraction"]}
            for r in rows]


# --- report ---------------------------------------------------------------------------------------
#: files :func:`write_report` writes
REPORT_FILES = ("report.html", "tac.png", "absorbed_dose.png")


def fitted_curves(result: DosimetryResult, n_points: int = 200) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Each VOI's fitted dose-rate curve (mGy/h) from administration to 1.2x the last time point.

    Parameters
    ----------
    result : DosimetryResult
        What :func:`absorbed_dose` found.
    n_points : int
        Number of times sampled.

    Returns
    -------
    times_h : np.ndarray
        Evenly spaced times (h) from 0 to 1.2x the last time point.
    curves : dict of str to np.ndarray
        The fitted dose rate (mGy/h) per VOI name; NaN for a VOI without a fitted model (the trapezoid).
    """
    dense = np.linspace(0.0, float(result.times_h[-1]) * 1.2, n_points)
    return dense, {v.name: v.integral.evaluate(dense) if v.integral.amplitudes.size else np.full(dense.size, np.nan)
                   for v in result.vois}


def save_time_activity_plot(result: DosimetryResult, path: str | Path,
                            title: str = "VOI dose rates and fitted curves") -> None:
    """The VOIs' measured mean dose rates (points) and fitted curves (lines) against time, as a PNG.

    Parameters
    ----------
    result : DosimetryResult
        What :func:`absorbed_dose` found.
    path : str or Path
        The PNG file to write.
    title : str
        The plot's title.
    """
    from .evaluation.report import save_curves

    dense, fits = fitted_curves(result)
    curves, styles = {}, {}
    for v in result.vois:
        curves[f"{v.name} (measured)"], styles[f"{v.name} (measured)"] = (result.times_h, v.dose_rates_mgy_h), "o"
        if v.integral.amplitudes.size:
            curves[f"{v.name} ({v.integral.model})"], styles[f"{v.name} ({v.integral.model})"] = (dense, fits[v.name]), "-"
    save_curves(curves, path, "time after administration (h)", "mean dose rate (mGy/h)", title, styles)


def write_report(result: DosimetryResult, folder: str | Path) -> None:
    """``report.html`` in ``folder``: the VOI doses, the dose-rate curves and fits, a slice of the map, provenance.

    Also writes the figures it shows (:data:`REPORT_FILES`).

    Parameters
    ----------
    result : DosimetryResult
        What :func:`absorbed_dose` found.
    folder : str or Path
        An existing folder.
    """
    from .evaluation.report import Panel, html_table, save_panels, write_html

    folder = Path(folder)
    save_time_activity_plot(result, folder / "tac.png")
    dose = np.asarray(result.dose.array)
    z = int(np.argmax(dose.sum(axis=(1, 2))))
    save_panels([Panel(f"absorbed dose, slice {z}", dose[z], unit="Gy")], folder / "absorbed_dose.png")
    provenance = [{"field": k, "value": v} for k, v in result.provenance.items()]
    write_html(folder / "report.html", "DblurDose absorbed dose", [
        ("VOI absorbed doses", html_table(dose_rows(result))),
        ("Dose-rate curves", "<img src='tac.png'>" + html_table(tac_rows(result))),
        ("Absorbed-dose map", "<img src='absorbed_dose.png'>"),
        ("Warnings", "<br>".join(html.escape(w) for w in result.warnings) or "none"),
        ("Provenance", html_table(provenance)),
    ])
