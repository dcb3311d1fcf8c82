"""``dblurdose demo --timepoints N``: absorbed dose of a virtual patient from N SPECT/CT time points.

One virtual patient (:func:`phantom.make_time_series`) is imaged at 4, 24, 96 and 168 h after a
7.4 GBq injection (the first N), each SPECT simulated as in ``dblurdose demo`` (or its blurred
stand-in without pytomography), each later time point moved by a few millimetres so that the rigid
registration has work to do. :func:`dosimetry.absorbed_dose` turns them into absorbed dose with
the DVK and, where its weights are installed, the CNN; the truth is the Monte Carlo absorbed dose
of the exact time-integrated activity (:func:`montecarlo.monte_carlo_absorbed_dose`; without the
``mc`` extra, the DVK applied to it, said so in the report). The report shows truth, DVK and CNN
per VOI with their errors.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .io.volume import Volume

if TYPE_CHECKING:
    from .dosimetry import DosimetryResult, TimePoint
    from .io.volume import Segment
    from .simulation.phantom import Phantom

#: Acquisition times (h after injection) of the time-point demo, the first N are used.
DEMO_TIMES_H = (4.0, 24.0, 96.0, 168.0)
#: Patient motion between time points (mm, x y z), recovered by the rigid registration.
DEMO_SHIFTS_MM = ((0.0, 0.0, 0.0), (4.0, -3.0, 5.0), (-5.0, 2.0, -4.0), (3.0, 4.0, 3.0))
#: VOIs of the report: kidneys, liver, spleen and every lesion.
REPORT_VOIS = ("kidney_left", "kidney_right", "liver", "spleen")


def _moved(volume: Volume, shift_mm) -> Volume:
    """The same image with the patient displaced by ``shift_mm`` (x, y, z) in patient coordinates."""
    return Volume(volume.array, volume.spacing, tuple(np.add(volume.origin, shift_mm)), volume.direction.copy())


def run_timepoints_demo(
    out: str | os.PathLike = "dblurdose-demo-timepoints",
    n_timepoints: int = 4,
    overwrite: bool = False,
    device: str = "auto",
    seed: int = 3,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    decays: int | None = None,
    progress: Callable[[float, str], object] | None = None,
) -> Path:
    """Run the time-point demo into ``out``; returns the path of the HTML report.

    Parameters
    ----------
    out : path
        Output folder (all or nothing; never over earlier results without ``overwrite``).
    n_timepoints : int
        1 to 4 (:data:`DEMO_TIMES_H`); one time point uses Hänscheid's approximation.
    device : str
        Where the dose engines run (:func:`devices.resolve_device`).
    seed, shape, spacing, decays
        The patient, its CT grid (default: ``dblurdose demo``'s) and the Monte Carlo decays of the truth.
    progress : callable, optional
        ``progress(fraction, message)``.
    """
    from .demo import DEMO_DECAYS, DEMO_SHAPE, DEMO_SPACING, _has, grid_text, write_demo_files
    from .dose import available_methods
    from .io.outputs import OutputFolder, write_csv
    from .simulation.phantom import make_time_series

    times = _checked_times(n_timepoints)
    shape, spacing = shape or DEMO_SHAPE, spacing or DEMO_SPACING
    decays = int(decays or DEMO_DECAYS)
    say = progress or (lambda f, m: None)
    methods = tuple(m for m in ("dvk", "cnn") if m in available_methods())
    simulate, monte_carlo = _has("pytomography"), _has("ompmc")
    folder = OutputFolder(out, _output_names(times, methods), overwrite=overwrite)

    say(0.0, f"making a virtual patient at {len(times)} time points")
    phantoms, integral = make_time_series(seed, times, shape=shape, spacing=spacing)
    reference = phantoms[0]
    points = _time_points(phantoms, times, seed, simulate, say)
    segments = _report_segments(reference.labels, reference.label_names)
    results = _absorbed_doses(points, segments, methods, device, say)
    say(0.8, "true absorbed dose")
    truth, truth_unc, truth_name = _true_absorbed_dose(integral, reference.hu, reference.density, decays, seed,
                                                       device, monte_carlo, say)
    rows = _comparison_rows(results, segments, np.asarray(truth.array), truth_unc)
    notes = [f"Virtual patient seed {seed}, {', '.join(f'{t:g}' for t in times)} h after 7.4 GBq, "
             f"{grid_text(shape, spacing)}; every organ and "
             "lesion clears with its own effective half-life; the patient moves a few mm between scans.",
             "SPECT simulated with pytomography as in `dblurdose demo` (fixed scan duration: fewer counts at "
             "later times)." if simulate else "pytomography is not installed: each SPECT is the true activity "
             "blurred (the `dblurdose demo` stand-in).",
             f"Truth: {truth_name}."]

    say(0.95, "writing volumes and report")
    with folder as stage:
        volumes = {name: volume for t, point in zip(times, points)
                   for name, volume in ((f"ct_{t:g}h.nrrd", point.ct), (f"spect_{t:g}h.nrrd", point.spect))}
        volumes.update({f"absorbed_dose_{method}.nrrd": result.dose for method, result in results.items()})
        volumes["true_absorbed_dose.nrrd"] = truth
        write_demo_files(stage, reference.labels, reference.label_names, volumes)
        write_csv(rows, stage / "doses.csv", header=[f"truth: {truth_name}"])
        _write_report(stage, notes, results, rows)
    return Path(out) / "report.html"


def _checked_times(n_timepoints: int) -> tuple[float, ...]:
    """The first ``n_timepoints`` of :data:`DEMO_TIMES_H` (h); any other count than 1 to 4 is refused."""
    from .errors import DblurDoseError

    if not 1 <= int(n_timepoints) <= len(DEMO_TIMES_H):
        raise DblurDoseError(f"the demo's number of time points must be 1 to {len(DEMO_TIMES_H)}, got {n_timepoints}")
    return DEMO_TIMES_H[: int(n_timepoints)]


def _output_names(times: tuple[float, ...], methods: tuple[str, ...]) -> list[str]:
    """The files the demo writes: segments, table, figure, report, the truth, a map per method, each time point."""
    names = ["segments.seg.nrrd", "doses.csv", "tac.png", "report.html", "true_absorbed_dose.nrrd"]
    names += [f"absorbed_dose_{m}.nrrd" for m in methods]
    return names + [f"{kind}_{t:g}h.nrrd" for t in times for kind in ("ct", "spect")]


def _time_points(phantoms: list[Phantom], times: tuple[float, ...], seed: int, simulate: bool,
                 say: Callable[[float, str], object]) -> list[TimePoint]:
    """Each time point's SPECT (Bq/mL) and CT, the patient moved by :data:`DEMO_SHIFTS_MM`; progress 5 to 50 %."""
    from .demo import demo_spect, progress_part, simulation_announcement
    from .dosimetry import TimePoint

    points = []
    for i, (t, phantom, shift) in enumerate(zip(times, phantoms, DEMO_SHIFTS_MM)):
        lo, hi = 0.05 + 0.45 * i / len(times), 0.05 + 0.45 * (i + 1) / len(times)
        if simulate:
            say(lo, f"{t:g} h: {simulation_announcement()}")
        spect = demo_spect(phantom.activity, phantom.density, seed + i, simulate,
                           progress_part(say, lo, hi - lo, prefix=f"{t:g} h: "))
        points.append(TimePoint(spect=_moved(spect, shift), ct=_moved(phantom.hu, shift), time_h=t,
                                label=f"time point {i + 1} ({t:g} h)"))
    return points


def _report_segments(labels: Volume, label_names: dict[int, str]) -> list[Segment]:
    """The VOIs of the report (:data:`REPORT_VOIS` and every lesion) present in the labelmap."""
    from .io.volume import Segment

    values = np.asarray(labels.array)
    return [Segment(name, values == value) for value, name in label_names.items()
            if (name in REPORT_VOIS or name.startswith("lesion_")) and (values == value).any()]


def _absorbed_doses(points: list[TimePoint], segments: list[Segment], methods: tuple[str, ...], device: str,
                    say: Callable[[float, str], object]) -> dict[str, DosimetryResult]:
    """Absorbed dose of the time points with each method (rigid registration; one point: Hänscheid); 50 to 80 %."""
    from .demo import progress_part
    from .dosimetry import absorbed_dose

    results = {}
    for k, method in enumerate(methods):
        lo = 0.5 + 0.3 * k / len(methods)
        say(lo, f"absorbed dose with the {method.upper()} (registration, dose rates, time integration)")
        earlier = next(iter(results.values()), None)  # the second method reuses the first's registrations
        results[method] = absorbed_dose(
            points, segments, method=method, register="rigid" if len(points) > 1 else "none",
            single_time_point="haenscheid" if len(points) == 1 else None, dose_options={"device": device},
            registrations=None if earlier is None else earlier.registrations,
            progress=progress_part(say, lo, 0.3 / len(methods), prefix=f"{method.upper()}: "))
    return results


def _true_absorbed_dose(integral: Volume, hu: Volume, density: Volume, decays: int, seed: int, device: str,
                        monte_carlo: bool, say: Callable[[float, str], object]) -> tuple[Volume, Volume | None, str]:
    """The truth: absorbed dose (Gy) of the exact time-integrated activity (Bq h/mL), its uncertainty and name.

    By Monte Carlo with the ``mc`` extra (relative 1-sigma uncertainty per voxel; progress 80 to 95 %),
    else by the DVK (no uncertainty).
    """
    from .demo import progress_part

    if monte_carlo:
        from .physics.montecarlo import monte_carlo_absorbed_dose

        truth, truth_unc = monte_carlo_absorbed_dose(integral, density, decays, seed,
                                                     progress=progress_part(say, 0.8, 0.15, message="Monte Carlo"))
        return truth, truth_unc, f"Monte Carlo (ompmc, {decays:.2g} decays) of the exact time-integrated activity"
    from .dose import compute_dose_rate_maps

    rate = compute_dose_rate_maps(integral, hu, ("dvk",), device=device, activity_range_mbq=None)["dvk"]
    truth = rate.with_array(np.asarray(rate.array, np.float32) / np.float32(1000.0))
    truth.metadata.update({"units": "Gy"})
    return truth, None, "the DVK of the exact time-integrated activity (ompmc is not installed: no Monte Carlo)"


def _write_report(stage: Path, notes: list[str], results: dict[str, DosimetryResult], rows: list[dict]) -> None:
    """tac.png (the first method's VOI dose rates and fits) and report.html: notes, doses, fits, warnings."""
    from .demo import paragraphs
    from .dosimetry import dose_rows, save_time_activity_plot
    from .evaluation.report import html_table, write_html

    first = next(iter(results))
    save_time_activity_plot(results[first], stage / "tac.png", f"VOI dose rates ({first.upper()}) and fitted curves")
    fits = [{"segment": r["segment"], "method": m, "fit": r["fit"], "effective_half_life_h": r["effective_half_life_h"],
             "reason": r["reason"]} for m, res in results.items() for r in dose_rows(res)]
    write_html(stage / "report.html", "DblurDose demo: absorbed dose of a virtual Lu-177 patient", [
        ("Patient and method", paragraphs(notes)),
        ("Absorbed dose per VOI: truth, DVK and CNN (Gy, error %)", html_table(rows)),
        ("Time-activity curves", "<img src='tac.png'>"),
        ("Fits", html_table(fits)),
        ("Warnings", paragraphs([w for res in results.values() for w in res.warnings]) or "<p>none</p>"),
    ])


def _comparison_rows(results: dict, segments, truth_gy: np.ndarray, truth_unc: Volume | None) -> list[dict]:
    """Per VOI: the true mean absorbed dose (Gy) and its statistical uncertainty, each method's dose and error."""
    from .evaluation.metrics import reference_noise_percent

    vois = {method: {v.name: v for v in result.vois} for method, result in results.items()}
    rows = []
    for s in segments:
        true_mean = float(truth_gy[s.mask].mean(dtype=np.float64))
        row = {"segment": s.name, "volume_ml": next(iter(vois.values()))[s.name].volume_ml, "truth_gy": true_mean}
        if truth_unc is not None:  # voxels taken as independent: a lower bound, %
            row["truth_uncertainty_pct"] = reference_noise_percent(truth_gy, np.asarray(truth_unc.array), s.mask)["mean"]
        for method, by_name in vois.items():
            dose = by_name[s.name].integral.dose_gy
            row[f"{method}_gy"] = dose
            row[f"{method}_error_pct"] = 100.0 * (dose / true_mean - 1.0) if true_mean > 0 else float("nan")
        rows.append(row)
    return rows
