"""The dose-rate workflow: SPECT + CT in, dose-rate maps (mGy/h) on the CT grid out.

Steps: check inputs -> SPECT to Bq/mL -> activity-conserving resample to the CT grid ->
HU to density -> DVK convolution with density scaling (-> CNN correction, when available).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .errors import DblurDoseError, memory_errors_as_dblurdose
from .geometry.resample import ResampleReport, resample_activity
from .io.volume import Volume, check_orthogonal
from .memory import DEFAULT_MEMORY_GB, check_memory, plan_memory, resident_bytes
from .physics.density import AIR_DENSITY_THRESHOLD, check_ct_is_hu, hu_to_density
from .units import SPECT_UNITS, spect_unit_key, spect_unit_label

if TYPE_CHECKING:
    import torch

    from .learning.network import DblurDoseNet
    from .memory import MemoryPlan
    from .physics.kernels import Kernel

#: default plausible total activity: the nuclide's patient range (:data:`~DblurDoseLib.physics.nuclides.PATIENT_ACTIVITY_MBQ`);
#: a (lowest, highest) tuple in MBq sets one, ``None`` disables the check (setting ``any_activity``).
ACTIVITY_RANGE_MBQ = "nuclide"
#: least share of the SPECT activity that must fall on CT tissue (else: misaligned, or a CT of air)
MIN_ACTIVITY_IN_TISSUE = 0.5
METHODS = ("dvk", "cnn")
#: nGy/(MBq s) per (mGy/h per MBq): the paper's normalisation for 1 MBq in the field.
NGY_PER_MBQ_S = 1e6 / 3600.0

Progress = Callable[[float, str], object]


def available_methods() -> tuple[str, ...]:
    """Dose methods usable in this installation (the CNN needs its shipped weights).

    Returns
    -------
    tuple of str
        ``("dvk", "cnn")`` when the shipped DblurDoseNet weights are installed, else ``("dvk",)``.
    """
    from .learning.inference import weights_installed

    return METHODS if weights_installed() else ("dvk",)


def check_positive(value: float, name: str, setting: str | None = None) -> float:
    """Refuse a setting that is not a finite positive number.

    Parameters
    ----------
    value : float
        The setting as given (anything ``float()`` accepts).
    name : str
        Which setting, in words, with its unit ("the memory budget (GB)").
    setting : str, optional
        Its key in :data:`~DblurDoseLib.errors.SETTINGS`, for the front end to name.

    Returns
    -------
    float
        ``value`` as a float, in the setting's own unit.

    Raises
    ------
    DblurDoseError
        When ``value`` is not a number, not finite, or not above zero.
    """
    settings = (setting,) if setting else ()
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DblurDoseError(f"{name} must be a number, got {value!r}", settings=settings) from None
    if not np.isfinite(number) or number <= 0:
        raise DblurDoseError(f"{name} must be a finite positive number, got {value!r}", settings=settings)
    return number


def spect_to_bqml(
    spect: Volume, units: str = "bqml", calibration_cps_per_mbq: float | None = None, duration_s: float | None = None
) -> Volume:
    """The SPECT as activity concentration (Bq/mL), from Bq/mL, kBq/mL, MBq/mL or counts per voxel.

    Parameters
    ----------
    spect : Volume
        The SPECT in ``units``.
    units : str
        Its units: any name :func:`~DblurDoseLib.units.spect_unit_key` accepts (default Bq/mL).
    calibration_cps_per_mbq : float, optional
        Camera sensitivity (cps/MBq); needed for counts.
    duration_s : float, optional
        Acquisition duration (s); needed for counts.

    Returns
    -------
    Volume
        Float32 activity concentration (Bq/mL) on the SPECT grid.

    Raises
    ------
    DblurDoseError
        For unknown units, or counts without a positive calibration and duration.
    """
    key = spect_unit_key(units or "bqml")
    if key is None:
        raise DblurDoseError(f"unknown SPECT units {units!r}; choose one of "
                             f"{', '.join(u.label for u in SPECT_UNITS.values())}", settings=("spect_units",))
    units = key
    values = np.asarray(spect.array, dtype=np.float32)
    if units == "counts":
        if calibration_cps_per_mbq is None or duration_s is None:
            raise DblurDoseError(
                "SPECT in counts needs the camera calibration and the acquisition duration: "
                "give the camera sensitivity (cps/MBq) and the acquisition duration (s)",
                settings=("calibration", "duration"),
            )
        check_positive(calibration_cps_per_mbq, "the camera calibration (sensitivity, cps/MBq)", "calibration")
        check_positive(duration_s, "the acquisition duration (s)", "duration")
        bq = values / np.float32(calibration_cps_per_mbq * duration_s) * np.float32(1e6)
        return spect.with_array((bq / np.float32(spect.voxel_volume_ml)).astype(np.float32))
    return spect.with_array(values * np.float32(SPECT_UNITS[units].bq_per_ml))


def spect_units_of(spect: Volume, given: str | None) -> tuple[str, str, list[str]]:
    """The SPECT's units, where they came from, and warnings, from the user's choice or the file's tags.

    Parameters
    ----------
    spect : Volume
        The SPECT as read; ``spect.metadata`` holds ``spect_units`` and ``units_from`` when the
        file records its units (DICOM).
    given : str or None
        The units the user chose; overrides the file's, with a warning when they disagree.

    Returns
    -------
    units : str
        The units key (e.g. ``"bqml"``, ``"counts"``); ``"bqml"`` when neither user nor file says.
    source : str
        Where they came from, in words.
    warnings : list of str
        A warning when the user's choice overrides different units in the file.

    Raises
    ------
    DblurDoseError
        When the file records units that are neither activity nor counts and none are given.
    """
    source = spect.metadata.get("units_from")
    tagged = spect.metadata.get("spect_units") if source else None
    if given:
        disagree = tagged and tagged != given
        return given, "given by the user", [f"the SPECT units given ({given}) override the SPECT's {source} ({tagged})"] \
            if disagree else []
    if tagged:
        return tagged, source, []
    if source:
        raise DblurDoseError(f"the SPECT series {spect.metadata.get('series_uid', '')} gives {source}, not activity "
                             "(Bq/mL) or counts: export it in Bq/mL, or give its units", settings=("spect_units",))
    return "bqml", "assumed (the default; the file records no units)", []


def check_total_activity(total_mbq: float, units: str, activity_range_mbq: tuple[float, float] | str | None,
                         nuclide: str = "Lu-177") -> None:
    """Refuse a total activity (MBq) outside the range of a patient scan (the usual sign of wrong units).

    Parameters
    ----------
    total_mbq : float
        The SPECT's total activity (MBq), as read with ``units``.
    units : str
        The SPECT units key it was read with (names the likely fix).
    activity_range_mbq : tuple of float, str or None
        (lowest, highest) MBq, ``"nuclide"`` for the nuclide's patient range
        (:func:`~DblurDoseLib.physics.nuclides.patient_activity_mbq`), or ``None`` to accept any total.
    nuclide : str
        The nuclide (default Lu-177).

    Raises
    ------
    DblurDoseError
        When ``total_mbq`` lies outside the range.
    """
    from .physics.nuclides import canonical_name, patient_activity_mbq

    if activity_range_mbq is None:
        return
    lo, hi = patient_activity_mbq(nuclide) if activity_range_mbq == "nuclide" else activity_range_mbq
    if lo <= total_mbq <= hi:
        return
    side = "below" if total_mbq < lo else "above"
    if units == "counts":
        hint = "check the camera calibration (cps/MBq) and the acquisition duration (s), or give the SPECT's units"
        settings = ("calibration", "duration", "spect_units", "any_activity")
    elif total_mbq < lo:
        hint = "if the image is in kBq/mL or MBq/mL, give those SPECT units"
        settings = ("spect_units", "any_activity")
    else:
        hint = "if the image is in Bq/mL but was given as kBq/mL or MBq/mL, give the SPECT units as Bq/mL"
        settings = ("spect_units", "any_activity")
    raise DblurDoseError(
        f"the SPECT holds {total_mbq:.4g} MBq in total read as {spect_unit_label(units)}, {side} the {lo:g}-{hi:g} MBq "
        f"of a {canonical_name(nuclide)} patient scan: the units are probably wrong; {hint}. For phantoms or "
        "pre-clinical scans outside that range, accept any total activity",
        settings=settings,
    )


def check_spect(bqml: np.ndarray, clip_negative: bool = False) -> np.ndarray:
    """Refuse NaN, negative or empty activity (clip small negatives only when asked).

    Parameters
    ----------
    bqml : np.ndarray
        Activity concentration (Bq/mL).
    clip_negative : bool
        Set negative voxels to zero instead of refusing them.

    Returns
    -------
    np.ndarray
        ``bqml``, with negative voxels set to zero when ``clip_negative``.

    Raises
    ------
    DblurDoseError
        For NaN or infinite values, or negative values without ``clip_negative``.
    """
    if not np.all(np.isfinite(bqml)):
        raise DblurDoseError("the SPECT holds NaN or infinite values; reconstruct or export it again")
    negative = bqml < 0
    if negative.any():
        if not clip_negative:
            share = float(-bqml[negative].sum() / max(np.abs(bqml).sum(), 1e-30) * 100)
            raise DblurDoseError(
                f"the SPECT holds negative activity ({int(negative.sum())} voxels, down to {float(bqml.min()):.3g}; "
                f"{share:.2f}% of the total magnitude). Negative activity is unphysical: choose to clip negative "
                "values to zero, or check the reconstruction (scatter subtraction)",
                settings=("clip_negative",),
            )
        bqml = np.where(negative, np.float32(0), bqml)
    return bqml


#: HU at or below which a voxel is air in a CT; no activity image holds such values in bulk
AIR_HU = -900.0
#: share of a SPECT's voxels at or below :data:`AIR_HU` that marks it as a CT (given the wrong way round)
SWAPPED_AIR_SHARE = 0.01


def check_not_swapped(spect_values: np.ndarray, hu: np.ndarray) -> None:
    """Refuse a SPECT and CT given the wrong way round, before the checks that would misread them.

    The sign: the "SPECT" holds air as a CT does (at least :data:`SWAPPED_AIR_SHARE` of its voxels
    at or below :data:`AIR_HU`) while the "CT" holds nothing below -100 (no air, as activity has
    none). A CT of raw stored values (HU + 1024) beside a real SPECT keeps its own advice.

    Parameters
    ----------
    spect_values : np.ndarray
        The image given as the SPECT (any units).
    hu : np.ndarray
        The image given as the CT (HU).

    Raises
    ------
    DblurDoseError
        When the two look swapped.
    """
    hu_min = float(np.min(hu))
    if hu_min < -100.0:
        return
    air = np.count_nonzero(np.asarray(spect_values) <= AIR_HU) / max(np.asarray(spect_values).size, 1)
    if air >= SWAPPED_AIR_SHARE:
        raise DblurDoseError(
            f"the SPECT and CT look swapped: exchange the two inputs (the image given as the "
            f"SPECT has {air:.0%} of its voxels at {AIR_HU:g} or below, like a CT's air; the image given as the CT "
            f"has no value below {hu_min:.3g}, like activity)",
            settings=("spect", "ct"),
        )


def check_geometry(spect: Volume, ct: Volume) -> None:
    """Refuse sheared grids and SPECT/CT pairs whose fields do not overlap.

    Parameters
    ----------
    spect, ct : Volume
        The two images, with their physical geometry (mm).

    Raises
    ------
    DblurDoseError
        For a non-orthogonal direction matrix, or fields that do not overlap in space.
    """
    check_orthogonal(spect, "SPECT")
    check_orthogonal(ct, "CT")
    lo_s, hi_s = spect.physical_corners().min(0), spect.physical_corners().max(0)
    lo_c, hi_c = ct.physical_corners().min(0), ct.physical_corners().max(0)
    overlap = np.clip(np.minimum(hi_s, hi_c) - np.maximum(lo_s, lo_c), 0, None)
    if np.any(overlap <= 0):
        raise DblurDoseError(
            "the SPECT and CT fields do not overlap in space "
            f"(SPECT spans {np.round(lo_s, 1).tolist()} to {np.round(hi_s, 1).tolist()} mm, "
            f"CT {np.round(lo_c, 1).tolist()} to {np.round(hi_c, 1).tolist()} mm). "
            "Use a SPECT and CT of the same study with their original positions, or register them first."
        )


def unused_option_warnings(methods: Sequence[str], spect_units: str, calibration_cps_per_mbq: float | None,
                           duration_s: float | None, model: str | os.PathLike | None) -> list[str]:
    """Options given that this run does not use (so the user knows they had no effect).

    Parameters
    ----------
    methods : sequence of str
        The dose methods of the run.
    spect_units : str
        The SPECT units (the calibration and duration apply only to counts).
    calibration_cps_per_mbq : float or None
        Camera sensitivity (cps/MBq), if given.
    duration_s : float or None
        Acquisition duration (s), if given.
    model : str, os.PathLike or None
        A model file, if given (applies only to the CNN method).

    Returns
    -------
    list of str
        One warning per option that has no effect.
    """
    warnings = []
    counts = (spect_units or "").lower() == "counts"
    for value, name in ((calibration_cps_per_mbq, "the camera calibration"), (duration_s, "the acquisition duration")):
        if value is not None and not counts:
            warnings.append(f"{name} is ignored: it applies only to a SPECT in counts (the SPECT is read as "
                            f"{spect_unit_label(spect_units)})")
    if model is not None and "cnn" not in methods:
        warnings.append("the model file is ignored: it applies only with the CNN method")
    return warnings


def memory_plan(spect: Volume, ct: Volume, methods: Sequence[str], kernel: Kernel, ct_itemsize: int,
                scale_electron_only: bool, network: DblurDoseNet | None, device: torch.device | str,
                memory_gb: float, consistent: bool = False) -> MemoryPlan:
    """The :class:`~DblurDoseLib.memory.MemoryPlan` of a run from its inputs' shapes (nothing computed).

    Parameters
    ----------
    spect, ct : Volume
        The inputs (their shapes, spacings and array sizes).
    methods : sequence of str
        The dose methods of the run.
    kernel : Kernel
        The dose-voxel kernel (its electron and photon shapes).
    ct_itemsize : int
        Bytes per CT voxel as held during the run.
    scale_electron_only : bool
        Density scaling of the electron part only (two FFT kernels instead of one).
    network : DblurDoseNet or None
        The CNN, when the CNN method runs (its working spacing).
    device : torch.device or str
        Where the convolution runs (``"auto"``, ``"cpu"``, ``"cuda"``, ...).
    memory_gb : float
        The memory budget (GB, 1e9 bytes).
    consistent : bool
        The CNN's map is made consistent with the SPECT (a resolution was given).

    Returns
    -------
    MemoryPlan
        The estimate and the working memory (bytes) of each stage.
    """
    from .devices import resolve_device
    from .learning.inference import working_shape

    e, p = kernel.electron.shape, kernel.photon.shape
    kernel_shapes = [e, p] if scale_electron_only else [tuple(max(a, b) for a, b in zip(e, p))]
    work = working_shape(ct.shape, ct.spacing, network.config.spacing) if network is not None else None
    dev = resolve_device(device)
    resident = resident_bytes()  # the process now, less the inputs (counted in the estimate)
    base = None if resident is None else max(resident - np.asarray(ct.array).nbytes - np.asarray(spect.array).nbytes,
                                             0.0)
    return plan_memory(ct.shape, spect.shape, methods, kernel_shapes, work_shape=work, ct_itemsize=ct_itemsize,
                       memory_gb=memory_gb, base_bytes=base, device_type=dev.type,
                       deconvolve=bool(network is not None and network.config.deconvolution_iterations),
                       consistent=consistent)


def compute_dose_rate_maps(
    spect: Volume,
    ct: Volume,
    methods: tuple[str, ...] | list[str] = ("dvk",),
    *,
    spect_units: str = "bqml",
    calibration_cps_per_mbq: float | None = None,
    duration_s: float | None = None,
    device: torch.device | str = "auto",
    scale_electron_only: bool = False,
    per_mbq: bool = False,
    hu_calibration: np.ndarray | None = None,
    clip_negative: bool = False,
    nuclide: str = "Lu-177",
    model: str | os.PathLike | None = None,
    activity_range_mbq: tuple[float, float] | str | None = ACTIVITY_RANGE_MBQ,
    memory_gb: float = DEFAULT_MEMORY_GB,
    progress: Progress | None = None,
    report: dict | None = None,
    spect_fwhm_mm: float | None = None,
) -> dict[str, Volume]:
    """Dose-rate maps on the CT grid, one per method: mGy/h, or nGy/(MBq s) with ``per_mbq``.

    Parameters
    ----------
    spect : Volume
        The SPECT, in ``spect_units``.
    ct : Volume
        The CT (HU); its grid is the output grid.
    methods : sequence of str
        ``"dvk"`` and/or ``"cnn"``.
    spect_units : str
        The SPECT's units (Bq/mL, kBq/mL, MBq/mL or counts; see :func:`spect_to_bqml`).
    calibration_cps_per_mbq : float, optional
        Camera sensitivity (cps/MBq), for a SPECT in counts.
    duration_s : float, optional
        Acquisition duration (s), for a SPECT in counts.
    device : torch.device or str
        Where to compute (``"auto"``, ``"cpu"``, ``"cuda"``, ...).
    scale_electron_only : bool
        Scale only the electron part of the kernel by density.
    per_mbq : bool
        Normalise to 1 MBq in the field: nGy/(MBq s) instead of mGy/h.
    hu_calibration : np.ndarray, optional
        HU-to-density table (HU, g/cm3) instead of the default.
    clip_negative : bool
        Clip negative activity to zero instead of refusing it.
    nuclide : str
        The nuclide (default Lu-177).
    model : str, os.PathLike or None
        A DblurDoseNet model file (e.g. one made by ``dblurdose train``) for the CNN method
        instead of the shipped weights; it is read and verified before any work is done.
    activity_range_mbq : tuple of float, str or None
        Plausible total SPECT activity (MBq), refused outside; ``"nuclide"`` (default) for the
        nuclide's patient range (:data:`~DblurDoseLib.physics.nuclides.PATIENT_ACTIVITY_MBQ`),
        ``None`` for phantoms and pre-clinical scans.
    memory_gb : float
        Budget for the process's peak memory (GB, 1e9 bytes); the DVK's FFT and the CNN's chunks
        are sized to it (:func:`~DblurDoseLib.memory.plan_memory`), and a run whose estimate exceeds
        it, or the machine's available memory, is refused before the convolution.
    progress : callable, optional
        ``progress(fraction, message)`` is called along the way; returning False cancels.
    report : dict, optional
        Receives what was done: activity totals (MBq), resampling factor, kernel source, the memory
        plan (``report["memory"]``, GB), units, and warnings (``report["warnings"]``: options that
        do not apply).
    spect_fwhm_mm : float, optional
        The SPECT's Gaussian-equivalent FWHM (mm; :mod:`DblurDoseLib.evaluation.resolution`). With it the
        CNN's map is kept consistent with the SPECT at the scales the camera resolves
        (:mod:`DblurDoseLib.physics.consistency`: its energy becomes the DVK's, a smooth excess goes), and a
        CNN model that deconvolves its input (``ModelConfig.deconvolution_iterations``), refused without it,
        deconvolves at it. Runs without the CNN ignore it (with a warning).

    Returns
    -------
    dict of str to Volume
        Float32 dose-rate map (mGy/h, or nGy/(MBq s)) on the CT grid per method.

    Raises
    ------
    DblurDoseError
        For any refused input (see :func:`checked_activity`, :func:`activity_on_ct`), a run over
        the memory budget, or a cancel.
    """
    from .physics.kernels import get_kernel

    methods = checked_methods(methods)
    warnings = unused_option_warnings(methods, spect_units, calibration_cps_per_mbq, duration_s, model)
    memory_gb = check_positive(memory_gb, "the memory budget (GB)", "memory_gb")
    network = None
    if "cnn" in methods:  # read and verified before any work; None: the shipped weights
        from .learning.inference import load_model

        network = load_model(model, device=device)
    fwhm = spect_resolution_of(network, spect_fwhm_mm, warnings)  # given wherever the model deconvolves
    iterations = network.config.deconvolution_iterations if network is not None else 0

    def step(fraction: float, message: str) -> None:
        if progress is not None and progress(fraction, message) is False:
            raise DblurDoseError("cancelled by the user; nothing was written")

    step(0.0, "checking inputs")
    hu = np.asarray(ct.array)
    if hu.dtype.kind not in "iuf":
        hu = hu.astype(np.float32)
    bqml = checked_activity(spect, ct, hu, spect_units, calibration_cps_per_mbq, duration_s, clip_negative,
                            activity_range_mbq, nuclide)
    kernel = get_kernel(nuclide, ct.spacing)
    plan = memory_plan(spect, ct, methods, kernel, hu.dtype.itemsize, scale_electron_only, network, device, memory_gb,
                       consistent=fwhm is not None)
    check_memory(plan)  # before any large array is made

    step(0.1, "resampling the SPECT onto the CT grid")
    activity, resampled, density = activity_on_ct(bqml, ct, hu, hu_calibration, warnings)
    total_mbq = resampled.inside_target_bq / 1e6

    cnn_activity = _deconvolved_activity(bqml, activity, fwhm, iterations, step)
    step(0.2, "DVK convolution")
    results = _dose_rates(activity, ct, density, methods, kernel, network, plan, scale_electron_only, device, step,
                          cnn_activity, fwhm)
    if per_mbq:
        factor = np.float32(NGY_PER_MBQ_S / total_mbq)
        results = {m: v.with_array(v.array * factor) for m, v in results.items()}
    results = {m: v for m, v in results.items() if m in methods}
    _check_finite(results)
    _record_provenance(results, per_mbq, nuclide, spect_units, kernel, scale_electron_only, hu_calibration, network,
                       fwhm, iterations)
    if report is not None:
        report.update(
            total_activity_mbq=total_mbq,
            spect_total_mbq=resampled.source_total_bq / 1e6,
            fraction_inside_ct=resampled.fraction_inside,
            resample_factor=resampled.rescale_factor,
            kernel_source=kernel.source,
            memory={"estimate_gb": plan.estimate / 1e9, "base_gb": plan.base / 1e9, "budget_gb": plan.budget / 1e9,
                    "cnn_chunk": plan.chunk},
            units="nGy/(MBq s)" if per_mbq else "mGy/h",
            warnings=warnings,
        )
    step(1.0, "done")
    return results


def checked_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """The methods asked for, lower case, each once; refuses unknown ones and an empty choice.

    Parameters
    ----------
    methods : sequence of str
        Method names, any case (``"dvk"``, ``"cnn"``).

    Returns
    -------
    tuple of str
        The methods, lower case, in their first order, without repeats.

    Raises
    ------
    DblurDoseError
        For an unknown method or none at all.
    """
    methods = tuple(dict.fromkeys(m.lower() for m in methods))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise DblurDoseError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)} (or 'all')",
                             settings=("method",))
    return methods


def checked_activity(spect: Volume, ct: Volume, hu: np.ndarray, spect_units: str,
                     calibration_cps_per_mbq: float | None, duration_s: float | None, clip_negative: bool,
                     activity_range_mbq: tuple[float, float] | str | None, nuclide: str) -> Volume:
    """The SPECT as activity concentration (Bq/mL) on its own grid, after every input check.

    Refuses swapped inputs, a CT not in HU, grids that do not overlap, NaN/negative/empty activity,
    concentrations and totals that betray wrong units (see :func:`check_total_activity`).

    Parameters
    ----------
    spect, ct : Volume
        The inputs.
    hu : np.ndarray
        The CT's values (HU).
    spect_units : str
        The SPECT's units.
    calibration_cps_per_mbq : float or None
        Camera sensitivity (cps/MBq), for counts.
    duration_s : float or None
        Acquisition duration (s), for counts.
    clip_negative : bool
        Clip negative activity to zero instead of refusing it.
    activity_range_mbq : tuple of float, str or None
        Plausible total activity (MBq); see :func:`check_total_activity`.
    nuclide : str
        The nuclide.

    Returns
    -------
    Volume
        Activity concentration (Bq/mL, float32) on the SPECT grid.

    Raises
    ------
    DblurDoseError
        For any of the refused inputs above.
    """
    check_not_swapped(np.asarray(spect.array), hu)
    check_ct_is_hu(hu)
    check_geometry(spect, ct)
    bqml = spect_to_bqml(spect, spect_units, calibration_cps_per_mbq, duration_s)
    bqml = bqml.with_array(check_spect(np.asarray(bqml.array), clip_negative))
    peak = float(bqml.array.max())
    if peak <= 0:
        raise DblurDoseError("the SPECT holds no activity (all zero); check the input file")
    if peak < 1.0:
        raise DblurDoseError(
            f"the SPECT's highest concentration is {peak:.3g} Bq/mL, far below any Lu-177 scan: the image is "
            "probably in kBq/mL or MBq/mL: give those SPECT units", settings=("spect_units",)
        )
    check_total_activity(float(bqml.array.sum(dtype=np.float64)) * bqml.voxel_volume_ml / 1e6, spect_units,
                         activity_range_mbq, nuclide)
    return bqml


def activity_on_ct(bqml: Volume, ct: Volume, hu: np.ndarray, hu_calibration: np.ndarray | None,
                   warnings: list[str]) -> tuple[Volume, ResampleReport, np.ndarray]:
    """Activity concentration (Bq/mL) resampled onto the CT grid, its resampling report, and density (g/cm3).

    Refuses activity mostly outside the CT field or off tissue (misaligned images, a CT of another
    patient or of air); warns (appended to ``warnings``) when more than 1% lies outside the field.

    Parameters
    ----------
    bqml : Volume
        Activity concentration (Bq/mL) on the SPECT grid.
    ct : Volume
        The CT (its grid).
    hu : np.ndarray
        The CT's values (HU).
    hu_calibration : np.ndarray or None
        HU-to-density table (HU, g/cm3), or ``None`` for the default.
    warnings : list of str
        Appended to in place.

    Returns
    -------
    activity : Volume
        Activity concentration (Bq/mL) on the CT grid.
    report : ResampleReport
        Totals (Bq) and the share inside the CT field.
    density : np.ndarray
        Mass density (g/cm3) on the CT grid.

    Raises
    ------
    DblurDoseError
        When under half the activity lies inside the CT field, or under
        :data:`MIN_ACTIVITY_IN_TISSUE` of it on tissue.
    """
    resampling: list[ResampleReport] = []
    activity = resample_activity(bqml, ct, resampling)
    resampled = resampling[0]
    if resampled.fraction_inside < 0.5:
        raise DblurDoseError(
            f"only {resampled.fraction_inside:.0%} of the SPECT activity lies inside the CT field; "
            "the images look misaligned. Check the SPECT and CT positions or register them first."
        )
    if resampled.fraction_inside < 0.99:
        warnings.append(f"{1 - resampled.fraction_inside:.0%} of the SPECT activity lies outside the CT field and "
                        "is not counted; extend the CT if that activity matters")
    concentration = np.asarray(activity.array)  # a share of the total: the voxel volume cancels
    density = hu_to_density(hu, hu_calibration)
    tissue = density >= AIR_DENSITY_THRESHOLD
    in_tissue = float(concentration[tissue].sum(dtype=np.float64)) / max(float(concentration.sum(dtype=np.float64)),
                                                                         1e-30)
    if in_tissue < MIN_ACTIVITY_IN_TISSUE:
        raise DblurDoseError(
            f"only {in_tissue:.0%} of the SPECT activity lies on tissue in the CT (density >= {AIR_DENSITY_THRESHOLD} g/cm3); "
            + ("the CT holds no tissue at all (all air): give the CT of the patient"
               if not tissue.any() else
               "the SPECT and CT look misaligned, or the CT is of another patient: check their positions or register "
               "them first")
        )
    return activity, resampled, density


def spect_resolution_of(network, spect_fwhm_mm: float | None, warnings: list[str]) -> float | None:
    """The SPECT's Gaussian-equivalent FWHM (mm, checked) where the CNN runs and it is given, else None.

    With it the CNN's map is made consistent with the SPECT (:mod:`DblurDoseLib.physics.consistency`), and a
    model that deconvolves its input (``ModelConfig.deconvolution_iterations``) deconvolves at it and one with
    the resolution input (``ModelConfig.fwhm_input``) takes it; such models are refused without it; a model trained through that step (``train --consistent``) is warned of
    without it, and a resolution given to a run without the CNN too."""
    from .physics.deconvolution import check_fwhm

    if network is None:
        if spect_fwhm_mm is not None:
            warnings.append("the SPECT's resolution (FWHM) is ignored: only the CNN method uses it")
        return None
    if spect_fwhm_mm is None:
        if network.config.deconvolution_iterations or network.config.fwhm_input:
            how = "deconvolves the SPECT before the network" if network.config.deconvolution_iterations else \
                "takes the SPECT's resolution as an input"
            raise DblurDoseError(f"this CNN model {how} and needs its resolution: give the SPECT's "
                                 "Gaussian-equivalent FWHM (mm), measured for this camera and reconstruction on the "
                                 "IEC sphere phantom", settings=("spect_fwhm",))
        share = float((network.config.info or {}).get("consistent") or 0.0)
        if share:
            warnings.append(f"this CNN model was trained to be kept consistent with the SPECT ({share:.0%} of its "
                            "loss on that map); without the SPECT's resolution (FWHM) it gives its own map, not "
                            "the one it was trained for")
        return None
    return check_fwhm(spect_fwhm_mm, "the SPECT's resolution", settings=("spect_fwhm",))


def _deconvolved_activity(bqml: Volume, activity: Volume, fwhm: float | None, iterations: int,
                          step: Callable[[float, str], None]) -> Volume | None:
    """The CNN's input activity (Bq/mL, on ``activity``'s CT grid) where its model deconvolves (``iterations``
    above 0): ``bqml`` (the SPECT's grid) after that many Richardson-Lucy iterations at ``fwhm`` (mm); else None."""
    if not iterations:
        return None
    from .physics.deconvolution import deconvolved_on_grid

    step(0.15, "deconvolving the SPECT for the CNN")
    return deconvolved_on_grid(bqml, activity, fwhm, iterations)


def _dose_rates(activity: Volume, ct: Volume, density: np.ndarray, methods: tuple[str, ...], kernel, network,
                plan, scale_electron_only: bool, device: str, step: Callable[[float, str], None],
                cnn_activity: Volume | None = None, fwhm: float | None = None) -> dict[str, Volume]:
    """The DVK map (mGy/h), and the CNN's when asked, on the CT grid; allocation failures become user errors.
    ``cnn_activity``: the network's input activity (Bq/mL, CT grid) where it is not ``activity`` (a model that
    deconvolves: then its residual base is that activity's DVK, convolved as the DVK method's). ``fwhm``: the
    SPECT's resolution (mm), with which the CNN's map is made consistent with the SPECT's DVK."""
    from .physics.dvk import dvk_dose_rate

    fix = ("run on the CPU (more memory than a GPU), close other programs, or crop the CT to the SPECT field"
           if device != "cpu" else "close other programs or crop the CT to the SPECT field")
    settings = ("device",) if device != "cpu" else ()

    def convolve(source: Volume, start: float, share: float) -> np.ndarray:
        activity_bq = np.asarray(source.array) * np.float32(ct.voxel_volume_ml)
        with memory_errors_as_dblurdose("the DVK convolution", fix, settings=settings):
            return dvk_dose_rate(activity_bq, density, kernel.electron, kernel.photon, kernel.medium_density,
                                 scaling="electron" if scale_electron_only else "all", device=device,
                                 max_bytes=plan.dvk_bytes if plan.on_host else None,
                                 progress=lambda f: step(start + share * f, "DVK convolution"))

    dvk = convolve(activity, 0.2, 0.6 if cnn_activity is None else 0.3)
    results: dict[str, Volume] = {"dvk": ct.with_array(dvk)}
    if "cnn" in methods:
        from .learning.inference import cnn_dose_rate

        source, base = (activity, dvk) if cnn_activity is None else (cnn_activity, convolve(cnn_activity, 0.5, 0.3))
        step(0.8, "CNN correction")
        with memory_errors_as_dblurdose("the CNN correction", fix, settings=settings):
            results["cnn"] = cnn_dose_rate(source, ct, density, base, device=device, model=network,
                                           max_bytes=plan.cnn_bytes if plan.on_host else None, fwhm_mm=fwhm)
        if fwhm is not None:
            from .physics.consistency import consistent_dose_rate

            step(0.95, "keeping the CNN's map consistent with the SPECT")
            with memory_errors_as_dblurdose("the consistency step", fix, settings=settings):
                results["cnn"] = results["cnn"].with_array(
                    consistent_dose_rate(results["cnn"].array, dvk, density, fwhm, ct.spacing))
    return results


def _check_finite(results: dict[str, Volume]) -> None:
    """A NaN or infinite map is never handed out as a result."""
    for method, volume in results.items():
        if not np.all(np.isfinite(volume.array)):
            raise DblurDoseError(
                f"the {method.upper()} dose-rate map holds NaN or infinite values (the SPECT values may be far too "
                "large for their units, or the HU calibration or model file is damaged); check the SPECT units "
                "and values, the HU calibration and the model, nothing was written")


def _record_provenance(results: dict[str, Volume], per_mbq: bool, nuclide: str, spect_units: str, kernel,
                       scale_electron_only: bool, hu_calibration: np.ndarray | None, network,
                       fwhm: float | None = None, iterations: int = 0) -> None:
    """What made each map, in its metadata (written into the output files' headers)."""
    from . import __version__

    made_by = {
        "dblurdose_version": __version__,
        "units": "nGy/(MBq s)" if per_mbq else "mGy/h",
        "nuclide": nuclide,
        "spect_units": spect_units,
        "kernel": f"{kernel.source} {nuclide} " + "x".join(f"{s:g}" for s in kernel.spacing) + " mm",
        "dvk_density_scaling": "electron only" if scale_electron_only else "electron and photon",
        "hu_calibration": "user table" if hu_calibration is not None else "built-in",
    }
    for method, volume in results.items():
        volume.metadata.update({**made_by, "method": method})
        if method == "cnn":
            volume.metadata["model_sha256"] = getattr(network, "sha256", "unknown")
            if fwhm is not None:
                volume.metadata["spect_fwhm_mm"] = f"{fwhm:g}"
                volume.metadata["consistency"] = "with the SPECT's DVK at its FWHM (physics.consistency)"
            if iterations:
                volume.metadata["deconvolution"] = f"Richardson-Lucy, {iterations} iterations"
