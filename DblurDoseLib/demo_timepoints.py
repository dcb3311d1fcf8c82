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

import numpy as np

from .io.volume import Volume

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
    from .demo import DEMO_DECAYS, DEMO_SHAPE, DEMO_SPACING, _has, demo_acquisition, spect_like
    from .dose import available_methods, compute_dose_rate_maps
    from .dosimetry import TimePoint, absorbed_dose, dose_rows, save_time_activity_plot
    from .errors import DblurDoseError
    from .evaluation.report import html_table, write_html
    from .geometry.segments import Segment
    from .io.outputs import OutputFolder, write_csv
    from .io.volume import write_volume
    from .mrml.sampledata import write_seg_nrrd
    from .simulation.phantom import make_time_series

    if not 1 <= int(n_timepoints) <= len(DEMO_TIMES_H):
        raise DblurDoseError(f"the demo's number of time points must be 1 to {len(DEMO_TIMES_H)}, got {n_timepoints}")
    times = DEMO_TIMES_H[: int(n_timepoints)]
    shape, spacing = shape or DEMO_SHAPE, spacing or DEMO_SPACING
    decays = int(decays or DEMO_DECAYS)
    say = progress or (lambda f, m: None)
    methods = tuple(m for m in ("dvk", "cnn") if m in available_methods())
    simulate, monte_carlo = _has("pytomography"), _has("ompmc")
    names = ["segments.seg.nrrd", "doses.csv", "tac.png", "report.html", "true_absorbed_dose.nrrd"]
    names += [f"absorbed_dose_{m}.nrrd" for m in methods]
    names += [f"{kind}_{t:g}h.nrrd" for t in times for kind in ("ct", "spect")]
    folder = OutputFolder(out, names, overwrite=overwrite)

    say(0.0, f"making a virtual patient at {len(times)} time points")
    phantoms, integral = make_time_series(seed, times, shape=shape, spacing=spacing)
    reference = phantoms[0]
    notes = [f"Virtual patient seed {seed}, {', '.join(f'{t:g}' for t in times)} h after 7.4 GBq, CT grid "
             f"{shape[2]}x{shape[1]}x{shape[0]} at {spacing[0]}x{spacing[1]}x{spacing[2]} mm; every organ and "
             "lesion clears with its own effective half-life; the patient moves a few mm between scans."]
    points = []
    for i, (t, phantom, shift) in enumerate(zip(times, phantoms, DEMO_SHIFTS_MM)):
        lo, hi = 0.05 + 0.45 * i / len(times), 0.05 + 0.45 * (i + 1) / len(times)
        if simulate:
            from .simulation.spect import simulate_spect

            acq = demo_acquisition()
            say(lo, f"{t:g} h: simulating SPECT ({acq.n_views} views, OSEM {acq.iterations}x{acq.subsets})")
            spect = simulate_spect(phantom.activity, phantom.density, None, seed + i, acq,
                                   progress=lambda f, stage, lo=lo, hi=hi, t=t: say(lo + (hi - lo) * f, f"{t:g} h: {stage}"))[0]
        else:
            spect = spect_like(phantom.activity)
        points.append(TimePoint(spect=_moved(spect, shift), ct=_moved(phantom.hu, shift), time_h=t,
                                label=f"time point {i + 1} ({t:g} h)"))
    notes.append("SPECT simulated with pytomography as in `dblurdose demo` (fixed scan duration: fewer counts at "
                 "later times)." if simulate else "pytomography is not installed: each SPECT is the true activity "
                 "blurred (the `dblurdose demo` stand-in).")
    labels = np.asarray(reference.labels.array)
    segments = [Segment(name, labels == value) for value, name in reference.label_names.items()
                if (name in REPORT_VOIS or name.startswith("lesion_")) and (labels == value).any()]
    results = {}
    for k, method in enumerate(methods):
        lo = 0.5 + 0.3 * k / len(methods)
        say(lo, f"absorbed dose with the {method.upper()} (registration, dose rates, time integration)")
        earlier = next(iter(results.values()), None)  # the second method reuses the first's registrations
        results[method] = absorbed_dose(
            points, segments, method=method, register="rigid" if len(points) > 1 else "none",
            single_time_point="haenscheid" if len(points) == 1 else None, dose_options={"device": device},
            registrations=None if earlier is None else earlier.registrations,
            progress=lambda f, m, lo=lo, name=method: say(lo + 0.3 / len(methods) * f, f"{name.upper()}: {m}"))
    say(0.8, "true absorbed dose")
    if monte_carlo:
        from .physics.montecarlo import monte_carlo_absorbed_dose

        truth, truth_unc = monte_carlo_absorbed_dose(integral, reference.density, decays, seed,
                                                     progress=lambda f, m="": say(0.8 + 0.15 * f, "Monte Carlo"))
        truth_name = f"Monte Carlo (ompmc, {decays:.2g} decays) of the exact time-integrated activity"
    else:
        rate = compute_dose_rate_maps(integral, reference.hu, ("dvk",), device=device, activity_range_mbq=None)["dvk"]
        truth = rate.with_array(np.asarray(rate.array, np.float32) / np.float32(1000.0))
        truth.metadata.update({"units": "Gy"})
        truth_unc = None
        truth_name = "the DVK of the exact time-integrated activity (ompmc is not installed: no Monte Carlo)"
    notes.append(f"Truth: {truth_name}.")
    rows = _comparison_rows(results, segments, np.asarray(truth.array), truth_unc)

    say(0.95, "writing volumes and report")
    with folder as stage:
        write_seg_nrrd(reference.labels, dict(reference.label_names), stage / "segments.seg.nrrd")
        for t, point in zip(times, points):
            write_volume(point.ct, stage / f"ct_{t:g}h.nrrd")
            write_volume(point.spect, stage / f"spect_{t:g}h.nrrd")
        for method, result in results.items():
            write_volume(result.dose, stage / f"absorbed_dose_{method}.nrrd")
        write_volume(truth, stage / "true_absorbed_dose.nrrd")
        write_csv(rows, stage / "doses.csv", header=[f"truth: {truth_name}"])
        first = next(iter(results))
        save_time_activity_plot(results[first], stage / "tac.png",
                                f"VOI dose rates ({first.upper()}) and fitted curves")
        fits = [{"segment": r["segment"], "method": m, "fit": r["fit"], "effective_half_life_h": r["effective_half_life_h"],
                 "reason": r["reason"]} for m, res in results.items() for r in dose_rows(res)]
        write_html(stage / "report.html", "DblurDose demo: absorbed dose of a virtual Lu-177 patient", [
            ("Patient and method", "".join(f"<p>{n}</p>" for n in notes)),
            ("Absorbed dose per VOI: truth, DVK and CNN (Gy, error %)", html_table(rows)),
            ("Time-activity curves", "<img src='tac.png'>"),
            ("Fits", html_table(fits)),
            ("Warnings", "".join(f"<p>{w}</p>" for res in results.values() for w in res.warnings) or "<p>none</p>"),
        ])
    return Path(out) / "report.html"


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
