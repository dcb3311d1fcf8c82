"""``dblurdose demo``: a virtual patient, its simulated SPECT, dose-rate maps and an HTML report.

With the ``sim`` extra (pytomography) the SPECT is simulated and reconstructed as in the paper,
at reduced settings for speed (DEMO_ACQUISITION); without it a blurred stand-in is used. With the
``mc`` extra (ompmc) the Monte Carlo dose rate of the true activity is the reference shown beside
the DVK (and the CNN, when its weights are installed).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .io.volume import Volume

#: Demo CT grid: the paper's axial field (130 slices x 3 mm) at half its in-plane resolution.
DEMO_SHAPE = (130, 256, 256)
DEMO_SPACING = (1.96, 1.96, 3.0)
#: Stand-in SPECT blur when pytomography is missing: ME collimator resolution at ~15 cm, mm FWHM.
DEMO_SPECT_FWHM_MM = 12.0
DEMO_SPECT_VOXEL_MM = 4.8
#: The simulated demo chain (:func:`demo_acquisition`) as ``dblurdose resolution --chain`` takes it, and its
#: Gaussian-equivalent FWHM (mm) measured so (session 15): the demo knows its camera, so its CNN map is kept
#: consistent with the SPECT at that resolution, as ``dose --spect-fwhm`` keeps a user's.
DEMO_CHAIN = {"camera": "siemens-intevo-me", "n_views": 64, "voxel_mm": 4.8, "iterations": 4, "subsets": 8,
              "postfilter_fwhm_mm": 0.0}
DEMO_CHAIN_FWHM_MM = 14.0
#: Monte Carlo decays for the demo's reference dose rate, sized to the demo's time budget of about
#: a minute on 2 CPU cores (data sets use 3e7 to 1e8).
DEMO_DECAYS = 1_500_000


def demo_acquisition():
    """The paper's acquisition at reduced cost, within the training mix (data.TRAINING_MIX).

    64 views (paper: 128), OSEM 4 iterations x 8 subsets (32 subset updates, as 8 x 4 would give,
    at half the cost: an iteration projects every view once; 4 x 8 lies in the shipped v0.3 weights'
    training mix, and the v0.2 weights, which saw 8 x 4 and 16 x 4 only, gave close errors with it on the
    demo patient), a 96 x 96 x 81 matrix of
    4.8 mm (461 mm across, wider than the virtual patient; paper: 128 x 128) and projections of the
    phantom on the reconstruction grid (no 2x finer projection grid).
    """
    from .simulation.spect import SpectAcquisition

    return SpectAcquisition(n_views=64, iterations=4, subsets=8, matrix=(96, 96, 81), projection_oversampling=1)


def spect_like(activity: Volume, fwhm_mm: float = DEMO_SPECT_FWHM_MM, voxel_mm: float = DEMO_SPECT_VOXEL_MM) -> Volume:
    """A blurred, coarse-grid stand-in for a reconstructed SPECT (Bq/mL), activity conserved."""
    from scipy.ndimage import gaussian_filter

    from .geometry.resample import grid_over, resample_activity

    sigma = [fwhm_mm / 2.3548 / s for s in activity.spacing[::-1]]
    blurred = gaussian_filter(np.asarray(activity.array, dtype=np.float32), sigma, mode="constant")
    grid = grid_over(activity, (voxel_mm,) * 3, centred=True)  # the same field, centred
    return resample_activity(activity.with_array(blurred), grid)


def demo_resolution(simulate: bool) -> float:
    """The demo SPECT's Gaussian-equivalent FWHM (mm): the simulated chain's (:data:`DEMO_CHAIN_FWHM_MM`), or the
    stand-in's own Gaussian."""
    return DEMO_CHAIN_FWHM_MM if simulate else DEMO_SPECT_FWHM_MM


def _has(module: str) -> bool:
    from importlib.util import find_spec

    return find_spec(module) is not None


#: Organs the reports single out (kidneys, lesions, liver, spleen): parts of segment names.
KEY_ORGANS = ("kidney", "lesion", "liver", "spleen")


def progress_part(progress: Callable[[float, str], object], start: float, width: float, prefix: str = "",
                  message: str | None = None) -> Callable[..., object]:
    """The ``progress(fraction, message)`` of one step of a run, passed on to the run's ``progress``.

    Parameters
    ----------
    progress : callable
        The run's ``progress(fraction, message)``, fraction 0 to 1 of the whole run.
    start, width : float
        The step's part of the run: its fraction f (0 to 1) is reported as ``start + width * f``.
    prefix : str
        Put before each of the step's messages (say the time point, "24 h: ").
    message : str, optional
        Reported instead of the step's own messages.

    Returns
    -------
    callable
        ``part(fraction, stage="")``, returning what ``progress`` returns (False cancels a Monte Carlo run).
    """
    def part(fraction: float, stage: str = "") -> object:
        return progress(start + width * fraction, message if message is not None else prefix + stage)

    return part


def demo_spect(activity: Volume, density: Volume, seed: int, simulate: bool,
               progress: Callable[[float, str], object]) -> Volume:
    """The demo's SPECT of a true activity: simulated and reconstructed, or its blurred stand-in.

    Parameters
    ----------
    activity, density : Volume
        True activity (Bq/mL) and density (g/cm3) on the CT grid.
    seed : int
        Seed of the simulation's Poisson noise.
    simulate : bool
        True: pytomography's simulation at :func:`demo_acquisition`; False: :func:`spect_like`.
    progress : callable
        ``progress(fraction, stage)`` of the simulation, fraction 0 to 1.

    Returns
    -------
    Volume
        The SPECT (Bq/mL) on its own, coarser grid.
    """
    if not simulate:
        return spect_like(activity)
    from .simulation.spect import simulate_spect

    return simulate_spect(activity, density, None, seed, demo_acquisition(), progress=progress)[0]


def simulation_announcement(suffix: str = "") -> str:
    """The progress message as a SPECT simulation starts: views and OSEM iterations x subsets, then ``suffix``."""
    acq = demo_acquisition()
    return f"simulating SPECT ({acq.n_views} views, OSEM {acq.iterations}x{acq.subsets}{suffix})"


def grid_text(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> str:
    """The CT grid in the reports' words: voxels x y z (``shape`` is z, y, x) at ``spacing`` (mm, x y z)."""
    return f"CT grid {shape[2]}x{shape[1]}x{shape[0]} at {spacing[0]}x{spacing[1]}x{spacing[2]} mm"


def paragraphs(notes: list[str]) -> str:
    """HTML paragraphs, one per note."""
    return "".join(f"<p>{n}</p>" for n in notes)


def write_demo_files(stage: Path, labels: Volume, label_names: dict[int, str], volumes: dict[str, Volume]) -> None:
    """A demo's segments and volumes, into the staging folder ``stage``.

    Parameters
    ----------
    labels, label_names : Volume, dict
        The patient's labelmap and its names: written as segments.seg.nrrd, named, for ``--seg``.
    volumes : dict
        File name (.nrrd) to volume, each written as it is (units in its metadata).
    """
    from .io.slicer_files import write_seg_nrrd
    from .io.volume import write_volume

    write_seg_nrrd(labels, dict(label_names), stage / "segments.seg.nrrd")
    for name, volume in volumes.items():
        write_volume(volume, stage / name)


def run_demo(
    out: str | os.PathLike = "dblurdose-demo",
    overwrite: bool = False,
    device: str = "auto",
    seed: int = 3,
    shape: tuple[int, int, int] = DEMO_SHAPE,
    spacing: tuple[float, float, float] = DEMO_SPACING,
    decays: int = DEMO_DECAYS,
    progress: Callable[[float, str], object] | None = None,
) -> Path:
    """Run the demo into ``out``; returns the path of the HTML report.

    Parameters
    ----------
    out : path
        Output folder (all or nothing; never over earlier results without ``overwrite``).
    device : str
        Where the dose engines run (:func:`devices.resolve_device`).
    seed : int
        The virtual patient, and the SPECT's and the Monte Carlo's noise.
    shape, spacing : tuple
        CT grid: voxels (z, y, x) and voxel size (mm, x y z).
    decays : int
        Monte Carlo decays of the reference dose rate (with the ``mc`` extra).
    progress : callable, optional
        ``progress(fraction, message)``.
    """
    from .dose import available_methods, compute_dose_rate_maps
    from .evaluation.metrics import statistics_table
    from .geometry.segments import segments_from_labelmap
    from .io.outputs import OutputFolder
    from .simulation.phantom import make_phantom

    say = progress or (lambda f, m: None)
    methods = available_methods()
    simulate, monte_carlo = _has("pytomography"), _has("ompmc")
    folder = OutputFolder(out, _output_names(methods, monte_carlo), overwrite=overwrite)

    say(0.0, "making a virtual patient")
    phantom = make_phantom(seed, shape=shape, spacing=spacing, time_days=1.0)
    if simulate:
        say(0.05, simulation_announcement("; pytomography"))
    spect = demo_spect(phantom.activity, phantom.density, seed, simulate, progress_part(say, 0.05, 0.45))
    fwhm = demo_resolution(simulate) if "cnn" in methods else None
    maps = compute_dose_rate_maps(spect, phantom.hu, methods, device=device, progress=progress_part(say, 0.5, 0.15),
                                  spect_fwhm_mm=fwhm)
    dose = {m: np.asarray(v.array) for m, v in maps.items()}
    truth = truth_unc = None
    if monte_carlo:
        say(0.65, f"Monte Carlo reference from the true activity ({decays:.2g} decays; ompmc)")
        truth, truth_unc = _monte_carlo_reference(phantom.activity, phantom.density, decays, seed,
                                                  progress_part(say, 0.65, 0.2, message="Monte Carlo"))
        dose = {"truth (MC)": np.asarray(truth.array), **dose}
    segments = [s for s in segments_from_labelmap(phantom.labels, phantom.hu, phantom.label_names) if s.mask.any()]
    stats = statistics_table(dose, segments, phantom.hu.voxel_volume_ml)
    errors = _errors_against_truth(dose, segments, phantom.hu.voxel_volume_ml, truth_unc.array) if monte_carlo else []

    say(0.9, "writing volumes and report")
    with folder as stage:
        volumes = {"ct.nrrd": phantom.hu, "spect.nrrd": spect, "true_activity.nrrd": phantom.activity,
                   **{f"dose_rate_{m}.nrrd": v for m, v in maps.items()},
                   **({"dose_rate_truth_mc.nrrd": truth} if monte_carlo else {})}
        write_demo_files(stage, phantom.labels, phantom.label_names, volumes)
        _write_tables_and_figures(stage, phantom, spect, dose, segments, stats)
        notes = [_spect_note(simulate), _reference_note(monte_carlo, decays)] + ([
            f"The CNN's map is kept consistent with the SPECT at its Gaussian-equivalent FWHM, {fwhm:g} mm "
            "(dblurdose dose --spect-fwhm; measure your camera's with dblurdose resolution)."] if fwhm else [])
        _write_report(stage, f"Virtual patient seed {seed}, day 1 after 7.4 GBq, {grid_text(shape, spacing)}.",
                      notes, stats, errors)
    return Path(out) / "report.html"


def _output_names(methods: tuple[str, ...], monte_carlo: bool) -> list[str]:
    """The files the demo writes: inputs, segments, tables, report, figures, a map per method (and the MC's)."""
    names = ["ct.nrrd", "spect.nrrd", "true_activity.nrrd", "segments.seg.nrrd", "stats.csv", "drvh.csv", "report.html",
             "slices.png", "drvh.png", "profile.png", "profile_lesion.png"] + [f"dose_rate_{m}.nrrd" for m in methods]
    return names + (["dose_rate_truth_mc.nrrd"] if monte_carlo else [])


def _spect_note(simulate: bool) -> str:
    """The report's note on how the SPECT was made (:func:`demo_spect`)."""
    if not simulate:
        return ("pytomography is not installed (pip install 'dblurdose[sim]'): the SPECT is a stand-in, the "
                f"true activity blurred {DEMO_SPECT_FWHM_MM} mm FWHM on a {DEMO_SPECT_VOXEL_MM} mm grid.")
    acq = demo_acquisition()
    return (f"SPECT simulated with pytomography: Siemens Intevo ME collimator, 208 keV 20% window, "
            f"{acq.n_views} views (paper: 128), OSEM {acq.iterations} iterations x {acq.subsets} subsets "
            f"(paper: 16 x 4), {acq.matrix[0]}x{acq.matrix[1]}x{acq.matrix[2]} at {acq.voxel_mm} mm (paper: "
            f"128x128x81), projected on the reconstruction grid, {acq.duration_s / 60:.0f} min scan, "
            "Poisson noise, scatter added and corrected.")


def _reference_note(monte_carlo: bool, decays: int) -> str:
    """The report's note on the reference the maps are compared with."""
    if monte_carlo:
        return f"Reference: Monte Carlo (ompmc) dose rate of the true activity, {decays:.2g} decays."
    return "ompmc is not installed (pip install 'dblurdose[mc]'): no Monte Carlo reference is shown."


def _monte_carlo_reference(activity: Volume, density: Volume, decays: int, seed: int,
                           progress: Callable[..., object]) -> tuple[Volume, Volume]:
    """Monte Carlo dose rate (mGy/h) of the true activity (Bq/mL) and its relative 1-sigma uncertainty."""
    from .physics.montecarlo import monte_carlo_dose_rate

    bq = activity.with_array(activity.array * np.float32(activity.voxel_volume_ml))
    return monte_carlo_dose_rate(bq, density, decays, seed, progress=progress)


def _write_tables_and_figures(stage: Path, phantom, spect: Volume, dose: dict[str, np.ndarray], segments,
                              stats: list[dict]) -> None:
    """stats.csv, drvh.csv and the figures (slices, profiles, DRVHs) of the dose-rate maps (mGy/h)."""
    from .evaluation.metrics import drvh_table
    from .geometry.resample import resample_activity
    from .io.outputs import write_csv

    write_csv(stats, stage / "stats.csv")
    write_csv(drvh_table(dose, segments), stage / "drvh.csv")
    spect_ct = np.asarray(resample_activity(spect, phantom.hu).array)
    _figures(stage, phantom, spect_ct, dose, segments)


def _write_report(stage: Path, patient: str, notes: list[str], stats: list[dict], errors: list[dict]) -> None:
    """report.html: the patient and notes, the figures, the key organs' and all segments' tables, the glossary."""
    from .evaluation.report import glossary_html, html_table, write_html

    key_rows = [r for r in stats if any(k in str(r["segment"]) for k in KEY_ORGANS)]
    write_html(stage / "report.html", "DblurDose demo: dose rate of a virtual Lu-177 patient", [
        ("Patient", paragraphs([patient, *notes])),
        ("Slices through the kidneys", "<img src='slices.png'>"),
        ("Line profile through the kidneys", "<img src='profile.png'>"),
        ("Line profile through a lesion", "<img src='profile_lesion.png'>"),
        ("Dose-rate-volume histograms", "<img src='drvh.png'>"),
        ("Kidneys, lesions, liver and spleen (mGy/h)", html_table(key_rows)),
        *([("Errors against the Monte Carlo truth (%)", html_table(errors))] if errors else []),
        ("All segments (mGy/h)", html_table(stats)),
        ("Glossary", glossary_html()),
    ])


def _errors_against_truth(dose: dict[str, np.ndarray], segments, voxel_ml: float,
                          truth_uncertainty: np.ndarray) -> list[dict]:
    """Per key segment and method: mean dose-rate error and NRMSE (%) against the Monte Carlo truth,
    and the truth's own noise (:func:`metrics.reference_noise_percent`; relative 1-sigma per voxel)."""
    from .evaluation.evaluate import voi_errors
    from .evaluation.metrics import reference_noise_percent

    truth = dose["truth (MC)"]
    rows = []
    for segment in segments:
        if not any(k in segment.name.lower() for k in KEY_ORGANS):
            continue
        noise = reference_noise_percent(truth, truth_uncertainty, segment.mask)
        row: dict = {"segment": segment.name, "reference mean +-%": round(noise["mean"], 1),
                     "reference noise NRMSE %": round(noise["nrmse"], 1)}
        for name, d in dose.items():
            if name != "truth (MC)":
                e = voi_errors(d, truth, segment.mask, voxel_ml)
                row[f"{name} mean error %"] = round(e["mean_error"], 1)
                row[f"{name} NRMSE %"] = round(100 * e["nrmse"], 1)
        rows.append(row)
    return rows


def _kidney(phantom) -> tuple[int, int | None]:
    label = next((v for v, n in phantom.label_names.items() if "kidney" in n.lower()), None)
    labels = np.asarray(phantom.labels.array)
    mask = labels == label if label is not None else labels > 0
    return int(np.argmax(mask.sum(axis=(1, 2)))), label


def _figures(stage: Path, phantom, spect_ct: np.ndarray, dose: dict[str, np.ndarray], segments) -> None:
    from .evaluation.metrics import drvh, drvh_bin_edges, line_profile, line_through
    from .evaluation.report import Panel, save_curves, save_panels

    z, kidney = _kidney(phantom)
    truth = np.asarray(phantom.activity.array)
    top_a = float(np.percentile(truth[truth > 0], 99.9)) if (truth > 0).any() else 1.0
    top_d = max(float(np.percentile(d[d > 0], 99.9)) if (d > 0).any() else 1.0 for d in dose.values())
    panels = [Panel("CT", phantom.hu.array[z], "gray", "HU", -200, 300),
              Panel("true activity", truth[z], "hot", "Bq/mL", 0, top_a),
              Panel("SPECT", spect_ct[z], "hot", "Bq/mL", 0, top_a)]
    panels += [Panel(f"{name} dose rate", d[z], "inferno", "mGy/h", 0, top_d) for name, d in dose.items()]
    save_panels(panels, stage / "slices.png")
    labels = np.asarray(phantom.labels.array)
    rows = np.nonzero(labels[z] == kidney)[0] if kidney is not None else np.array([])
    row = int(np.median(rows)) if rows.size else labels.shape[1] // 2
    vol = phantom.hu
    p0 = np.asarray(vol.origin) + vol.direction @ (np.array([0, row, z]) * np.asarray(vol.spacing))
    p1 = np.asarray(vol.origin) + vol.direction @ (np.array([vol.shape[2] - 1, row, z]) * np.asarray(vol.spacing))
    styles = {"truth (MC)": "k-", "dvk": "b--", "cnn": "r-"}
    profiles = {name: line_profile(vol.with_array(d), p0, p1) for name, d in dose.items()}
    save_curves(profiles, stage / "profile.png", "distance along the line (mm)", "mGy/h",
                "left-right profile through the kidneys", styles)
    lesion = next((s for s in segments if s.name.lower().startswith("lesion")), None)
    if lesion is not None:  # the lesion: where SPECT blur costs the DVK most, and the CNN should gain
        q0, q1 = line_through(vol, lesion.mask, 60.0)
        profiles = {name: line_profile(vol.with_array(d), q0, q1) for name, d in dose.items()}
        save_curves(profiles, stage / "profile_lesion.png", "distance along the line (mm)", "mGy/h",
                    f"left-right profile through {lesion.name}", styles)
    curves = {}
    for segment in segments:
        if any(key in segment.name.lower() for key in ("kidney_left", "lesion_1")):
            edges = drvh_bin_edges(max(float(d[segment.mask].max()) for d in dose.values()))
            for name, d in dose.items():
                e, _diff, cum = drvh(d, segment.mask, edges)
                curves[f"{segment.name} {name}"] = (e[:-1], cum * 100.0)
    save_curves(curves, stage / "drvh.png", "dose rate (mGy/h)", "volume receiving at least (%)",
                "cumulative DRVHs")
