"""The ``dblurdose`` command line: dose, dosimetry, kernel, demo."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from . import __version__
from .errors import DblurDoseError, OutOfMemoryError
from .memory import DEFAULT_MEMORY_GB

if TYPE_CHECKING:
    from .dosimetry import DosimetryResult, TimePoint
    from .io.dicom_export import StudyLink
    from .io.outputs import OutputFolder
    from .io.volume import Segment, Volume


def _progress_printer(quiet: bool) -> Callable[[float, str], None]:
    """A ``progress(fraction, message)`` that prints each new message to stderr (nothing with --quiet)."""
    last = {"message": None}

    def progress(fraction: float, message: str) -> None:
        if quiet:
            return
        if message != last["message"]:
            print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)
            last["message"] = message

    return progress


def _warn(warnings: list[str]) -> None:
    """Print each warning to stderr (also with --quiet)."""
    for warning in warnings:
        print(f"dblurdose: warning: {warning}", file=sys.stderr)


def _say_removed(out: OutputFolder, folder: str) -> None:
    """Name the earlier results that --overwrite removed from ``folder`` (those this run does not replace)."""
    for name in out.removed:
        print(f"dblurdose: removed {Path(folder) / name} (an earlier run's result that this run does not replace)",
              file=sys.stderr)


def _print_written(folder: str, names: list[str]) -> None:
    """List the files written into ``folder`` on stdout, one a line."""
    for name in names:
        print(Path(folder) / name)


class _SpectUnits(NamedTuple):
    """How ``dose`` reads the SPECT's voxel values, and where each part came from."""

    units: str  #: bqml, kbqml, mbqml or counts
    units_from: str  #: what said so: --spect-units, a DICOM tag or the default
    duration_s: float | None  #: acquisition duration, s (counts only)
    duration_from: str | None  #: "--duration", a DICOM tag, or None when not known
    warnings: list[str]


def _dose_output_folder(args: argparse.Namespace, methods: tuple[str, ...]) -> tuple[OutputFolder, list[str]]:
    """``dose``'s output folder, checked before any work is done, and the names of the files it will write.

    With --overwrite, earlier results this run does not write (another method's map, tables
    without --seg, DICOM without --dicom-out) are removed when the run's files move in.
    """
    from .dose import METHODS
    from .io.dicom_export import FOLDER as DICOM_FOLDER
    from .io.dicom_export import STRUCTURE_SET_STEM
    from .io.outputs import OutputFolder

    names = [f"dose_rate_{m}.nrrd" for m in methods] + (["stats.csv", "drvh.csv"] if args.seg else []) \
        + ([f"{DICOM_FOLDER}/dose_rate_{m}.dcm" for m in methods] if args.dicom_out else []) \
        + ([f"{DICOM_FOLDER}/{STRUCTURE_SET_STEM}.dcm"] if args.dicom_out and args.seg else [])
    every_result = [f"dose_rate_{m}.nrrd" for m in METHODS] + ["stats.csv", "drvh.csv"] \
        + [f"{DICOM_FOLDER}/dose_rate_{m}.dcm" for m in METHODS]
    return OutputFolder(args.out, names, overwrite=args.overwrite, stale=every_result), names


def _dose_spect_units(args: argparse.Namespace, spect: Volume, ct: Volume) -> _SpectUnits:
    """The SPECT's units and acquisition duration from the options and the DICOM tags.

    A DICOM SPECT in counts without --calibration is refused (it cannot become activity).
    """
    from .dose import spect_units_of

    spect_units, spect_units_from, unit_warnings = spect_units_of(spect, args.spect_units)
    unit_warnings += [f"{flag} is ignored: {name} is not a DICOM folder or file" for flag, name, v, given in
                      (("--spect-series", args.spect, spect, args.spect_series), ("--ct-series", args.ct, ct, args.ct_series))
                      if given and "series_uid" not in v.metadata]
    duration, duration_from = args.duration, "--duration" if args.duration is not None else None
    if duration is None and spect_units == "counts" and "acquisition_duration_s" in spect.metadata:
        duration, duration_from = float(spect.metadata["acquisition_duration_s"]), spect.metadata["duration_from"]
        if not args.quiet:
            print(f"dblurdose: acquisition duration {duration:g} s taken from the DICOM {duration_from}", file=sys.stderr)
    if spect_units == "counts" and args.calibration is None and "series_uid" in spect.metadata:
        raise DblurDoseError(f"the SPECT series {spect.metadata['series_uid']} is in counts ({spect_units_from}): pass "
                             "--calibration CPS_PER_MBQ" + (" and --duration SECONDS" if duration is None else "")
                             + ", or give its units with --spect-units")
    return _SpectUnits(spect_units, spect_units_from, duration, duration_from, unit_warnings)


def _dose_provenance(args: argparse.Namespace, spect: Volume, ct: Volume, units: _SpectUnits) -> dict[str, str]:
    """What each map records of its inputs: where units and duration came from, series, checksums."""
    from .io.outputs import input_checksum

    inputs = {"spect": args.spect, "ct": args.ct, "seg": args.seg, "hu_calibration": args.hu_calibration}
    return {
        "spect_units_from": units.units_from,
        **({"duration_from": units.duration_from} if units.duration_from else {}),
        **{f"{name}_{key}": v.metadata[key] for name, v in (("spect", spect), ("ct", ct))
           for key in ("series_uid", "scaling_from", "slice_grid") if key in v.metadata},
        **{f"input_{name}_sha256": input_checksum(path) for name, path in inputs.items() if path},
    }


def _write_dose_results(stage: Path, maps: dict[str, Volume], provenance: dict[str, str], link: StudyLink | None,
                        segments: list[Segment] | None, ct: Volume) -> None:
    """Write ``dose``'s maps into the staging folder; with a study link their DICOM, with segments the tables."""
    from .io.dicom_export import FOLDER as DICOM_FOLDER
    from .io.dicom_export import write_dicom
    from .io.volume import write_volume

    for method, volume in maps.items():
        volume.metadata.update(provenance)
        write_volume(volume, stage / f"dose_rate_{method}.nrrd", compress=False)  # gzip would double the run time
    if link:
        write_dicom(stage / DICOM_FOLDER, link, rates={f"dose_rate_{m}": v for m, v in maps.items()},
                    segments=segments, grid=ct)
    if segments:
        _write_dose_tables(stage, maps, segments, ct.voxel_volume_ml)


def _write_dose_tables(stage: Path, maps: dict[str, Volume], segments: list[Segment], voxel_ml: float) -> None:
    """stats.csv and drvh.csv of every map over the segments, headed by what made the maps."""
    import numpy as np

    from .evaluation.metrics import drvh_table, statistics_table
    from .io.outputs import write_csv

    arrays = {m: np.asarray(v.array) for m, v in maps.items()}
    made_by = {k: v for k, v in next(iter(maps.values())).metadata.items() if k not in ("method", "model_sha256")}
    made_by.update({f"model_sha256 ({m})": v.metadata["model_sha256"] for m, v in maps.items()
                    if "model_sha256" in v.metadata})
    header = [f"{key}: {value}" for key, value in made_by.items()]
    unit = made_by.get("units", "mGy/h")  # mGy/h, or nGy/(MBq s) with --per-mbq: in the column names
    write_csv(statistics_table(arrays, segments, voxel_ml, unit), stage / "stats.csv", header=header)
    write_csv(drvh_table(arrays, segments, unit=unit), stage / "drvh.csv", header=header)


def cmd_dose(args: argparse.Namespace) -> int:
    """``dblurdose dose``: dose-rate maps of one SPECT/CT (with --seg their tables) into --out; exit status 0."""
    from .dose import ACTIVITY_RANGE_MBQ, METHODS, compute_dose_rate_maps
    from .geometry.segments import read_segments
    from .io.dicom import describe
    from .io.volume import read_volume
    from .physics.density import load_calibration

    methods = METHODS if args.method == "all" else (args.method,)
    out, names = _dose_output_folder(args, methods)  # refuses before any work is done
    spect = read_volume(args.spect, what="SPECT", series_uid=args.spect_series)
    ct = read_volume(args.ct, dtype=None, what="CT", series_uid=args.ct_series)  # native type: 16-bit HU fast table
    units = _dose_spect_units(args, spect, ct)
    for line in (describe(spect, "SPECT"), describe(ct, "CT")):
        if line and not args.quiet:
            print(f"dblurdose: {line}", file=sys.stderr)
    # float32 maps (twice with --dicom-out), CSVs
    out.require_space((2 if args.dicom_out else 1) * len(methods) * ct.array.size * 4 * 1.05 + 1e6)
    link, dicom_warnings = _dicom_link(args.dicom_out, ct, args.ct)
    calibration = load_calibration(args.hu_calibration) if args.hu_calibration else None
    segments = read_segments(args.seg, ct) if args.seg else None
    t0 = time.perf_counter()
    report: dict = {}
    maps = compute_dose_rate_maps(
        spect, ct, methods,
        spect_units=units.units, calibration_cps_per_mbq=args.calibration, duration_s=units.duration_s,
        device=args.device, scale_electron_only=args.scale_electron_only, per_mbq=args.per_mbq,
        hu_calibration=calibration, clip_negative=args.clip_negative, model=args.model,
        activity_range_mbq=None if args.any_activity else ACTIVITY_RANGE_MBQ, memory_gb=args.memory_gb,
        progress=_progress_printer(args.quiet),
        report=report, spect_fwhm_mm=args.spect_fwhm,
    )
    _warn(units.warnings + report.get("warnings", []) + dicom_warnings)
    provenance = _dose_provenance(args, spect, ct, units)
    with out as stage:
        _write_dose_results(stage, maps, provenance, link, segments, ct)
    _say_removed(out, args.out)
    if not args.quiet:
        print(
            f"activity in the CT field {report['total_activity_mbq']:.4g} MBq "
            f"({report['fraction_inside_ct']:.1%} of the SPECT's); kernel: {report['kernel_source']}; "
            f"{time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
        _print_written(args.out, names)
    return 0


def _dicom_link(wanted: bool, ct: Volume, ct_path: str) -> tuple[StudyLink | None, list[str]]:
    """For ``--dicom-out``: the CT study the DICOM objects join (None without it), and warnings."""
    if not wanted:
        return None, []
    from .io.dicom_export import UNLINKED_WARNING, study_link

    link = study_link(ct, ct_path)
    return link, [] if link.linked else [UNLINKED_WARNING]


def _parse_datetime(text: str, what: str):
    import datetime

    try:
        return datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise DblurDoseError(f"{what} {text!r} is not a date-time; write it as YYYY-MM-DDTHH:MM (e.g. "
                             "2026-12-01T09:30), in the scanner's clock") from None


def _timepoint_hours(text: str, administration: str | None, spect=None) -> float | None:
    """Hours after administration from a --timepoint's HOURS: a number of hours, a date-time, or 'dicom'
    (the SPECT's acquisition date-time); date-times need --administration-time. None: 'dicom', SPECT not read yet."""
    try:
        return float(text)
    except ValueError:
        pass
    if text.strip().lower() == "dicom":
        if spect is None:
            return None
        when = spect.metadata.get("acquisition_datetime")
        if not when:
            raise DblurDoseError("--timepoint HOURS 'dicom': this SPECT records no acquisition date-time (not DICOM, "
                                 "or no Acquisition/Series Date and Time); give the hours or the date-time instead")
    else:
        when = text
        try:
            _parse_datetime(when, "--timepoint HOURS")
        except DblurDoseError:
            raise DblurDoseError(f"--timepoint HOURS {text!r} is not a number of hours nor a date-time; give hours "
                                 "after administration (e.g. --timepoint spect.nrrd ct.nrrd 24), a date-time "
                                 "(2026-12-01T09:30, with --administration-time) or 'dicom'") from None
    if administration is None:
        raise DblurDoseError(f"--timepoint HOURS {text!r} is a date-time: give --administration-time too "
                             "(e.g. --administration-time 2026-12-01T09:30), or give hours after administration")
    start = _parse_datetime(administration, "--administration-time")
    moment = _parse_datetime(when, "--timepoint HOURS")
    if (start.tzinfo is None) != (moment.tzinfo is None):
        start, moment = start.replace(tzinfo=None), moment.replace(tzinfo=None)
    return (moment - start).total_seconds() / 3600.0


def _read_timepoint_volume(path: str, what: str):
    """A time point's SPECT or CT; a DICOM folder holding several series asks for that series' own folder."""
    import numpy as np

    from .io.dicom import SERIES_SETTINGS
    from .io.volume import read_volume

    try:
        return read_volume(path, dtype=None if what == "CT" else np.float32, what=what)
    except DblurDoseError as exc:
        if SERIES_SETTINGS[what] not in exc.settings:
            raise
        message = str(exc).split(", or choose a series by its UID")[0].split(" Choose one by its series UID")[0]
        raise DblurDoseError(f"{message.rstrip('.')}; give that time point's {what} series folder or file "
                             "in --timepoint") from None


def _dosimetry_output_folder(args: argparse.Namespace) -> tuple[OutputFolder, list[str]]:
    """``dosimetry``'s output folder, checked before any work, and the names of the files it will write.

    The absorbed-dose map comes first. With --overwrite, the other method's map of an earlier run goes.
    """
    from .dose import METHODS
    from .dosimetry import REPORT_FILES
    from .io.dicom_export import FOLDER as DICOM_FOLDER
    from .io.dicom_export import STRUCTURE_SET_STEM
    from .io.outputs import OutputFolder

    names = [f"absorbed_dose_{args.method}.nrrd", "doses.csv", "tac.csv", "dvh.csv", *REPORT_FILES] \
        + ([f"{DICOM_FOLDER}/absorbed_dose_{args.method}.dcm", f"{DICOM_FOLDER}/{STRUCTURE_SET_STEM}.dcm"]
           if args.dicom_out else [])
    out = OutputFolder(args.out, names, overwrite=args.overwrite, stale=[
        f"{name}_{m}.{ext}" for m in METHODS for name, ext in (("absorbed_dose", "nrrd"),
                                                               (f"{DICOM_FOLDER}/absorbed_dose", "dcm"))])
    return out, names


def _checked_dosimetry_options(args: argparse.Namespace) -> list[float | None]:
    """Refuse bad options before any file is read; the time points' hours after administration.

    A time point given as 'dicom' has None: its hours are known once its SPECT is read.
    """
    from .dosimetry import add_earlier_cycles, check_calibration_uncertainty, check_fit, check_time_points

    times = [_timepoint_hours(hours, args.administration_time) for _, _, hours in args.timepoint]
    if None not in times:  # all given as hours or date-times: checked before any file is read
        check_time_points(times, args.single_time_point)
    check_fit(args.fit)
    check_calibration_uncertainty(args.calibration_uncertainty / 100.0)
    add_earlier_cycles([], args.earlier_cycles)  # unreadable earlier cycles are refused before any work
    return times


def _read_time_points(args: argparse.Namespace,
                      times: list[float | None]) -> tuple[list[TimePoint], list[str], dict[str, str]]:
    """Read every --timepoint's SPECT and CT.

    Returns
    -------
    points : list of TimePoint
        In the order given, times in h after administration, with their units, calibration and duration (s).
    warnings : list of str
        About the SPECTs' units, each naming its time point.
    units_from : dict
        Provenance: each time point's SPECT units and, for 'dicom' times, where the time came from.
    """
    from .dose import spect_units_of
    from .dosimetry import TimePoint

    points, warnings, units_from = [], [], {}
    for i, ((spect_path, ct_path, text), hours) in enumerate(zip(args.timepoint, times), start=1):
        spect = _read_timepoint_volume(spect_path, "SPECT")
        ct = _read_timepoint_volume(ct_path, "CT")
        if hours is None:
            hours = _timepoint_hours(text, args.administration_time, spect)
            units_from[f"timepoint{i}_time_from"] = f"DICOM {spect.metadata.get('acquisition_datetime_from')}"
        units, source, unit_warnings = spect_units_of(spect, args.spect_units)
        units_from[f"timepoint{i}_spect_units"] = f"{units} ({source})"
        label = f"time point {i} ({hours:g} h)"
        warnings += [f"{label}: {w}" for w in unit_warnings]
        duration = args.duration if args.duration is not None else spect.metadata.get("acquisition_duration_s")
        points.append(TimePoint(spect, ct, hours, label, units, args.calibration,
                                None if duration is None else float(duration)))
    return points, warnings, units_from


def _dosimetry_input_checksums(args: argparse.Namespace) -> dict[str, str]:
    """SHA-256 of every time point's SPECT and CT and of the segmentation, for the provenance."""
    from .io.outputs import input_checksum

    inputs = {f"input_timepoint{i}_{what}_sha256": input_checksum(path)
              for i, tp in enumerate(args.timepoint, start=1) for what, path in (("spect", tp[0]), ("ct", tp[1]))}
    inputs["input_seg_sha256"] = input_checksum(args.seg)
    return inputs


def _write_dosimetry_results(stage: Path, map_name: str, method: str, result: DosimetryResult, rows: list[dict],
                             link: StudyLink | None, segments: list[Segment], grid: Volume) -> None:
    """Write ``dosimetry``'s map (as ``map_name``), its DICOM with a study link, the tables and the report."""
    from .dosimetry import dvh_rows, tac_rows, write_report
    from .io.dicom_export import FOLDER as DICOM_FOLDER
    from .io.dicom_export import write_dicom
    from .io.outputs import write_csv
    from .io.volume import write_volume

    header = [f"{key}: {value}" for key, value in result.provenance.items()]
    result.dose.metadata.update(result.provenance)
    write_volume(result.dose, stage / map_name, compress=False)
    if link:
        write_dicom(stage / DICOM_FOLDER, link, doses={f"absorbed_dose_{method}": result.dose},
                    segments=segments, grid=grid)
    write_csv(rows, stage / "doses.csv", header=header)
    write_csv(tac_rows(result), stage / "tac.csv", header=header)
    write_csv(dvh_rows(result, segments), stage / "dvh.csv", header=header)
    write_report(result, stage)


def cmd_dosimetry(args: argparse.Namespace) -> int:
    """``dblurdose dosimetry``: absorbed dose of SPECT/CT time points, VOI doses and report into --out; status 0."""
    from .dose import ACTIVITY_RANGE_MBQ
    from .dosimetry import absorbed_dose, add_earlier_cycles, check_time_points, dose_rows
    from .geometry.segments import read_segments

    out, names = _dosimetry_output_folder(args)  # refuses before any work
    times = _checked_dosimetry_options(args)
    points, warnings, units_from = _read_time_points(args, times)
    check_time_points([p.time_h for p in points], args.single_time_point)
    out.require_space((2 if args.dicom_out else 1) * points[0].ct.array.size * 4 * 1.05 + 1e6)
    link, dicom_warnings = _dicom_link(args.dicom_out, points[0].ct, args.timepoint[0][1])
    segments = read_segments(args.seg, points[0].ct)
    result = absorbed_dose(
        points, segments, method=args.method, fit=args.fit, single_time_point=args.single_time_point,
        register=args.register, administered_mbq=args.administered_mbq,
        calibration_rel_uncertainty=args.calibration_uncertainty / 100.0,
        dose_options={"device": args.device, "model": args.model, "spect_fwhm_mm": args.spect_fwhm},
        activity_range_mbq=None if args.any_activity else ACTIVITY_RANGE_MBQ, progress=_progress_printer(args.quiet),
    )
    rows, cycle_warnings = add_earlier_cycles(dose_rows(result), args.earlier_cycles)
    if args.earlier_cycles:
        result.provenance["earlier_cycles"] = ", ".join(str(Path(f).resolve()) for f in args.earlier_cycles)
    _warn(warnings + result.warnings + dicom_warnings + cycle_warnings)
    result.provenance.update({**units_from, **_dosimetry_input_checksums(args)})  # the report shows them too
    with out as stage:
        _write_dosimetry_results(stage, names[0], args.method, result, rows, link, segments, points[0].ct)
    _say_removed(out, args.out)
    if not args.quiet:
        _print_written(args.out, names)
    return 0


def cmd_kernel(args: argparse.Namespace) -> int:
    """``dblurdose kernel``: write a dose-voxel kernel (looked up, or with --build made by Monte Carlo); status 0."""
    from .physics.kernel_building import build_kernel
    from .physics.kernels import get_kernel, write_kernel_nrrd

    spacing = tuple(args.spacing)
    if args.build:
        kernel = build_kernel(args.nuclide, spacing, n_decays=args.decays, seed=args.seed)
    else:
        kernel = get_kernel(args.nuclide, spacing)
    path = write_kernel_nrrd(kernel, args.out, part=args.part, size=args.size, overwrite=args.overwrite)
    print(path)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``dblurdose demo``: the dose-rate demo, or with --timepoints the absorbed-dose one; prints the report's path."""
    if args.timepoints:
        from .demo_timepoints import run_timepoints_demo

        out = args.out if args.out is not None else "dblurdose-demo-timepoints"
        report = run_timepoints_demo(out, n_timepoints=args.timepoints, overwrite=args.overwrite, device=args.device,
                                     progress=_progress_printer(args.quiet))
    else:
        from .demo import run_demo

        out = args.out if args.out is not None else "dblurdose-demo"
        report = run_demo(out, overwrite=args.overwrite, device=args.device, progress=_progress_printer(args.quiet))
    print(report)
    return 0


_DEVICE_HELP = "auto (CUDA, then MPS, then CPU), cpu, cuda or mps"
_QUIET_HELP = "no progress messages or list of written files; warnings and errors still print"


def _add_spect_unit_options(p: argparse.ArgumentParser, spects: str) -> None:
    """--spect-units, --calibration and --duration, shared by ``dose`` and ``dosimetry``.

    ``spects``: how the help names the SPECT(s) whose units these are ("SPECT's" or "SPECTs'").
    """
    p.add_argument("--spect-units", choices=("bqml", "kbqml", "mbqml", "counts"),
                   help=f"units of the {spects} voxel values (default: from the DICOM tags, else bqml, Bq/mL)")
    p.add_argument("--calibration", type=float, help="camera sensitivity in cps/MBq (with --spect-units counts)")
    p.add_argument("--duration", type=float,
                   help="acquisition duration in seconds (with --spect-units counts; default: from the DICOM tags)")


def _add_spect_fwhm_option(p: argparse.ArgumentParser) -> None:
    """--spect-fwhm, shared by ``dose`` and ``dosimetry``."""
    p.add_argument("--spect-fwhm", type=float, metavar="MM",
                   help="the SPECT's Gaussian-equivalent FWHM in mm (recovery coefficients of the IEC spheres for "
                        "this camera and reconstruction: `dblurdose resolution`): the CNN's map is then kept "
                        "consistent with the SPECT at the scales the camera resolves; needed by a CNN model that "
                        "deconvolves its input (`dblurdose train --deconvolve`)")


def _add_output_options(p: argparse.ArgumentParser, overwrite_help: str, dicom_out_help: str) -> None:
    """--overwrite, --dicom-out and --quiet, shared by ``dose`` and ``dosimetry`` (each with its own help)."""
    p.add_argument("--overwrite", action="store_true", help=overwrite_help)
    p.add_argument("--dicom-out", action="store_true", help=dicom_out_help)
    p.add_argument("--quiet", action="store_true", help=_QUIET_HELP)


def _add_dose_parser(sub: argparse._SubParsersAction) -> None:
    """The ``dose`` sub-command: dose-rate maps of one SPECT/CT."""
    p = sub.add_parser("dose", help="compute dose-rate maps (mGy/h) from a SPECT and a CT")
    p.add_argument("--spect", required=True, help="SPECT image (NRRD, NIfTI, MHA) or DICOM: a file, a series or a study folder")
    p.add_argument("--ct", required=True, help="CT image in HU (NRRD, NIfTI, MHA) or DICOM: a file, a series or a study folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--spect-series", metavar="UID", help="Series Instance UID of the SPECT when --spect holds several")
    p.add_argument("--ct-series", metavar="UID", help="Series Instance UID of the CT when --ct holds several")
    p.add_argument("--method", choices=("dvk", "cnn", "all"), default="dvk",
                   help="dvk: DVK convolution with density scaling (default); cnn: the DblurDoseNet correction of "
                        "the DVK; all: both")
    p.add_argument("--seg", help="labelmap or Slicer .seg.nrrd: writes stats.csv and drvh.csv")
    p.add_argument("--model", help="DblurDoseNet model file for --method cnn/all (default: the shipped weights), "
                                   "e.g. one made by `dblurdose train`")
    _add_spect_fwhm_option(p)
    p.add_argument("--device", default="auto", help=_DEVICE_HELP)
    p.add_argument("--memory-gb", type=float, default=DEFAULT_MEMORY_GB, metavar="GB",
                   help=f"peak memory budget of the run in GB (default {DEFAULT_MEMORY_GB:g}): the DVK's FFT and the "
                        "CNN's chunks are sized to it; a run that cannot fit is refused up front with the estimate")
    _add_spect_unit_options(p, "SPECT's")
    p.add_argument("--per-mbq", action="store_true", help="report nGy/(MBq s) for 1 MBq in the field (paper's unit)")
    p.add_argument("--scale-electron-only", action="store_true",
                   help="density-scale only the electron part of the DVK (closer to Monte Carlo in lung)")
    p.add_argument("--hu-calibration", help="CSV 'hu,density' replacing the built-in HU-to-density curve")
    p.add_argument("--clip-negative", action="store_true", help="set negative SPECT voxels to zero instead of failing")
    p.add_argument("--any-activity", action="store_true",
                   help="accept a total SPECT activity outside the nuclide's patient range (Lu-177: 5 MBq - 100 GBq) "
                        "for phantoms and pre-clinical scans; outside it the units are usually wrong")
    _add_output_options(
        p, overwrite_help="replace existing output files (and remove earlier results this run does not write)",
        dicom_out_help="also write each map as a DICOM Parametric Map (mGy/h), and with --seg the segments as an "
                       "RT Structure Set, in dicom/, in the CT's study when the CT is DICOM")
    p.set_defaults(func=cmd_dose)


def _add_dosimetry_parser(sub: argparse._SubParsersAction) -> None:
    """The ``dosimetry`` sub-command: absorbed dose from SPECT/CT time points."""
    p = sub.add_parser("dosimetry", help="absorbed dose (Gy) from SPECT/CT time points: map, VOI doses, BED")
    p.add_argument("--timepoint", nargs=3, action="append", required=True, metavar=("SPECT", "CT", "HOURS"),
                   help="one acquisition: SPECT and CT (as for `dose`, DICOM included) and when: hours after "
                        "administration, a date-time (YYYY-MM-DDTHH:MM, with --administration-time), or 'dicom' "
                        "(the SPECT's DICOM acquisition date-time); repeat in time order, the first is the "
                        "reference (its CT grid)")
    p.add_argument("--seg", required=True, help="labelmap or Slicer .seg.nrrd on the reference (first) CT")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--method", choices=("dvk", "cnn"), default="dvk",
                   help="dose-rate method of each time point: dvk (default) or cnn (DblurDoseNet)")
    p.add_argument("--fit", choices=("auto", "mono", "bi", "tri", "trapezoid"), default="auto",
                   help="VOI time-curve model: auto (AICc), a family, or the trapezoid (default auto)")
    p.add_argument("--single-time-point", choices=("haenscheid", "madsen"),
                   help="method for one time point: Haenscheid 2018 or a population half-life (Madsen 2018)")
    p.add_argument("--register", choices=("rigid", "deformable", "none"), default="rigid",
                   help="registration of each CT to the reference CT (default rigid)")
    p.add_argument("--administered-mbq", type=float,
                   help="administered activity, MBq (recorded; a time point holding more is warned of)")
    p.add_argument("--administration-time", metavar="YYYY-MM-DDTHH:MM",
                   help="date-time of the administration (the scanner's clock), for time points given as "
                        "date-times or 'dicom'")
    p.add_argument("--calibration-uncertainty", type=float, default=0.0, metavar="PERCENT",
                   help="relative standard uncertainty of the camera calibration, %% (added in quadrature to "
                        "each VOI dose's fit uncertainty; default 0)")
    p.add_argument("--earlier-cycles", nargs="+", default=[], metavar="DIR",
                   help="output folders of this patient's earlier `dblurdose dosimetry` cycles: doses.csv gains "
                        "the absorbed dose and BED summed over the cycles, per VOI of the same name")
    p.add_argument("--model", help="DblurDoseNet model file for --method cnn (default: the shipped weights)")
    _add_spect_fwhm_option(p)
    p.add_argument("--device", default="auto", help=_DEVICE_HELP)
    _add_spect_unit_options(p, "SPECTs'")
    p.add_argument("--any-activity", action="store_true",
                   help="accept total activities outside the nuclide's patient range (Lu-177: 5 MBq - 100 GBq; "
                        "phantoms, pre-clinical scans)")
    _add_output_options(
        p, overwrite_help="replace existing output files",
        dicom_out_help="also write the absorbed-dose map as DICOM RT Dose (Gy) and the segments as an RT Structure "
                       "Set in dicom/, in the reference CT's study when that CT is DICOM")
    p.set_defaults(func=cmd_dosimetry)


def _add_kernel_parser(sub: argparse._SubParsersAction) -> None:
    """The ``kernel`` sub-command: a dose-voxel kernel as NRRD."""
    p = sub.add_parser("kernel", help="write a centred dose-voxel kernel (mGy per decay) as NRRD")
    p.add_argument("--nuclide", default="Lu-177", help="radionuclide, ICRP-107 spelling (default Lu-177, the one supported)")
    p.add_argument("--spacing", type=float, nargs=3, required=True, metavar=("SX", "SY", "SZ"), help="voxel size, mm")
    p.add_argument("--size", type=int, help="odd edge length N of the N^3 kernel (default: the grid's own size)")
    p.add_argument("--part", choices=("all", "electron", "photon"), default="all",
                   help="kernel part written: all (default), the electron part or the photon part")
    p.add_argument("--out", required=True, help="output .nrrd file")
    p.add_argument("--build", action="store_true", help="build by Monte Carlo with ompmc (optional 'mc' extra)")
    p.add_argument("--decays", type=int, default=2_000_000, help="decays for --build")
    p.add_argument("--seed", type=int, default=1, help="random seed of --build (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_kernel)


def _add_demo_parser(sub: argparse._SubParsersAction) -> None:
    """The ``demo`` sub-command: a virtual patient's dose rate, or with --timepoints its absorbed dose."""
    p = sub.add_parser("demo", help="make a virtual patient, compute its dose rate and write an HTML report")
    p.add_argument("--out", help="output folder (default ./dblurdose-demo, with --timepoints ./dblurdose-demo-timepoints)")
    p.add_argument("--device", default="auto", help=_DEVICE_HELP)
    p.add_argument("--timepoints", type=int, metavar="N",
                   help="absorbed dose instead: the patient scanned at the first N of 4, 24, 96 and 168 h, each SPECT "
                        "simulated, registered, integrated over time with the DVK and the CNN, against the Monte "
                        "Carlo truth (a few minutes on 2 cores)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo's files in --out")
    p.add_argument("--quiet", action="store_true", help="no progress messages (the report path and errors still print)")
    p.set_defaults(func=cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    """The ``dblurdose`` parser: dose, dosimetry, kernel and demo here; data, train, validate and evaluate from
    their modules."""
    from .data import add_data_arguments
    from .evaluation.evaluate import add_evaluate_arguments
    from .evaluation.resolution import add_resolution_arguments
    from .learning.training import add_train_arguments
    from .learning.validation import add_validate_arguments

    parser = argparse.ArgumentParser(
        prog="dblurdose", description="Voxel-level Lu-177 dose-rate maps from SPECT/CT (DVK and DblurDoseNet)."
    )
    parser.add_argument("--version", action="version", version=f"dblurdose {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, help="what to do (dblurdose COMMAND --help)")
    for add_parser in (_add_dose_parser, _add_dosimetry_parser, _add_kernel_parser, _add_demo_parser,
                       add_data_arguments, add_train_arguments, add_validate_arguments, add_evaluate_arguments,
                       add_resolution_arguments):
        add_parser(sub)
    return parser


#: the command line's name for each setting an error can point at (errors.SETTINGS)
FLAGS = {
    "spect": "--spect", "ct": "--ct", "spect_units": "--spect-units", "calibration": "--calibration",
    "duration": "--duration", "any_activity": "--any-activity", "clip_negative": "--clip-negative",
    "method": "--method", "model": "--model", "device": "--device",
    "memory_gb": "--memory-gb", "out": "--out", "overwrite": "--overwrite", "timepoints": "--timepoint",
    "administration_time": "--administration-time", "administered_mbq": "--administered-mbq",
    "single_time_point": "--single-time-point", "fit": "--fit", "calibration_uncertainty": "--calibration-uncertainty",
    "earlier_cycles": "--earlier-cycles", "segments": "--seg", "nuclide": "--nuclide",
    "hu_calibration": "--hu-calibration", "register": "--register", "dicom_out": "--dicom-out",
    "spect_series": "--spect-series", "ct_series": "--ct-series", "spect_fwhm": "--spect-fwhm",
}

#: commands whose work is kept part by part and resumed by running them again
_RESUMABLE_COMMANDS = ("data", "train")


def main(argv: list[str] | None = None) -> int:
    from .devices import prefer_passive_openmp
    from .errors import Terminated, is_allocation_failure, sigterm_unwinds

    prefer_passive_openmp()  # before anything imports torch: idle threads sleep (see its docstring)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with sigterm_unwinds():  # SIGTERM unwinds like Ctrl-C: staging folders are removed
            return args.func(args)
    except DblurDoseError as exc:
        print(f"dblurdose: error: {exc.describe(FLAGS)}", file=sys.stderr)
        return 3 if isinstance(exc, OutOfMemoryError) else 2
    except (KeyboardInterrupt, Terminated) as exc:
        kept = ("finished parts (phantoms, checkpoints) are kept: run the same command to resume"
                if args.command in _RESUMABLE_COMMANDS else "nothing was written")
        stopped = "interrupted" if isinstance(exc, KeyboardInterrupt) else "terminated"
        print(f"dblurdose: {stopped}; {kept}", file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 143
    except (MemoryError, RuntimeError) as exc:  # torch reports allocation failures as RuntimeError
        if not is_allocation_failure(exc):
            raise
        print(
            "dblurdose: error: out of memory. Close other programs, use --device cpu (more memory than a GPU), "
            "or crop the CT to the SPECT field. Nothing was written",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
