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
#: Monte Carlo decays for the demo's reference dose rate, sized to the demo's time budget of about
#: a minute on 2 CPU cores (data sets use 3e7 to 1e8).
DEMO_DECAYS = 1_500_000


def demo_acquisition():
    """The paper's acquisition at reduced cost, within the training mix (data.TRAINING_MIX).

    64 views (paper: 128), OSEM 4 iterations x 8 subsets (32 subset updates, as 8 x 4 would give,
    at half the cost: an iteration projects every view once; the shipped v0.2 weights saw 8 x 4 and
    16 x 4, and on the demo patient their errors with 4 x 8 stay close), a 96 x 96 x 81 matrix of
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


def _has(module: str) -> bool:
    from importlib.util import find_spec

    return find_spec(module) is not None


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
    """Run the demo into ``out``; returns the path of the HTML report."""
    from .dose import available_methods, compute_dose_rate_maps
    from .evaluation.metrics import drvh_table, statistics_table
    from .evaluation.report import glossary_html, html_table, write_html
    from .geometry.resample import resample_activity
    from .geometry.segments import segments_from_labelmap
    from .io.outputs import OutputFolder, write_csv
    from .io.volume import write_volume
    from .mrml.sampledata import write_seg_nrrd
    from .simulation.phantom import make_phantom

    say = progress or (lambda f, m: None)
    methods = available_methods()
    simulate, monte_carlo = _has("pytomography"), _has("ompmc")
    names = ["ct.nrrd", "spect.nrrd", "true_activity.nrrd", "segments.seg.nrrd", "stats.csv", "drvh.csv", "report.html",
             "slices.png", "drvh.png", "profile.png", "profile_lesion.png"] + [f"dose_rate_{m}.nrrd" for m in methods]
    names += ["dose_rate_truth_mc.nrrd"] if monte_carlo else []
    folder = OutputFolder(out, names, overwrite=overwrite)
    notes = []

    say(0.0, "making a virtual patient")
    phantom = make_phantom(seed, shape=shape, spacing=spacing, time_days=1.0)
    if simulate:
        from .simulation.spect import simulate_spect

        acq = demo_acquisition()
        say(0.05, f"simulating SPECT ({acq.n_views} views, OSEM {acq.iterations}x{acq.subsets}; pytomography)")
        spect = simulate_spect(phantom.activity, phantom.density, None, seed, acq,
                               progress=lambda f, stage: say(0.05 + 0.45 * f, stage))[0]
        notes.append(f"SPECT simulated with pytomography: Siemens Intevo ME collimator, 208 keV 20% window, "
                     f"{acq.n_views} views (paper: 128), OSEM {acq.iterations} iterations x {acq.subsets} subsets "
                     f"(paper: 16 x 4), {acq.matrix[0]}x{acq.matrix[1]}x{acq.matrix[2]} at {acq.voxel_mm} mm (paper: "
                     f"128x128x81), projected on the reconstruction grid, {acq.duration_s / 60:.0f} min scan, "
                     "Poisson noise, scatter added and corrected.")
    else:
        spect = spect_like(phantom.activity)
        notes.append("pytomography is not installed (pip install 'dblurdose[sim]'): the SPECT is a stand-in, the "
                     f"true activity blurred {DEMO_SPECT_FWHM_MM} mm FWHM on a {DEMO_SPECT_VOXEL_MM} mm grid.")
    maps = compute_dose_rate_maps(spect, phantom.hu, methods, device=device,
                                  progress=lambda f, m: say(0.5 + 0.15 * f, m))
    dose = {m: np.asarray(v.array) for m, v in maps.items()}
    if monte_carlo:
        from .physics.montecarlo import monte_carlo_dose_rate

        say(0.65, f"Monte Carlo reference from the true activity ({decays:.2g} decays; ompmc)")
        bq = phantom.activity.with_array(phantom.activity.array * np.float32(phantom.activity.voxel_volume_ml))
        truth, truth_unc = monte_carlo_dose_rate(bq, phantom.density, decays, seed,
                                            progress=lambda f, m="": say(0.65 + 0.2 * f, "Monte Carlo"))
        dose = {"truth (MC)": np.asarray(truth.array), **dose}
        notes.append(f"Reference: Monte Carlo (ompmc) dose rate of the true activity, {decays:.2g} decays.")
    else:
        notes.append("ompmc is not installed (pip install 'dblurdose[mc]'): no Monte Carlo reference is shown.")
    segments = [s for s in segments_from_labelmap(phantom.labels, phantom.hu, phantom.label_names) if s.mask.any()]
    stats = statistics_table(dose, segments, phantom.hu.voxel_volume_ml)
    errors = _errors_against_truth(dose, segments, phantom.hu.voxel_volume_ml, truth_unc.array) if monte_carlo else []

    say(0.9, "writing volumes and report")
    with folder as stage:
        write_volume(phantom.hu, stage / "ct.nrrd")
        write_volume(spect, stage / "spect.nrrd")
        write_volume(phantom.activity, stage / "true_activity.nrrd")
        write_seg_nrrd(phantom.labels, dict(phantom.label_names), stage / "segments.seg.nrrd")  # named, for --seg
        for m, v in maps.items():
            write_volume(v, stage / f"dose_rate_{m}.nrrd")
        if monte_carlo:
            write_volume(truth, stage / "dose_rate_truth_mc.nrrd")
        write_csv(stats, stage / "stats.csv")
        write_csv(drvh_table(dose, segments), stage / "drvh.csv")
        spect_ct = np.asarray(resample_activity(spect, phantom.hu).array)
        _figures(stage, phantom, spect_ct, dose, segments)
        key_rows = [r for r in stats if any(k in str(r["segment"]) for k in ("kidney", "lesion", "liver", "spleen"))]
        write_html(stage / "report.html", "DblurDose demo: dose rate of a virtual Lu-177 patient", [
            ("Patient", f"<p>Virtual patient seed {seed}, day 1 after 7.4 GBq, CT grid {shape[2]}x{shape[1]}x"
                        f"{shape[0]} at {spacing[0]}x{spacing[1]}x{spacing[2]} mm.</p>"
                        + "".join(f"<p>{n}</p>" for n in notes)),
            ("Slices through the kidneys", "<img src='slices.png'>"),
            ("Line profile through the kidneys", "<img src='profile.png'>"),
            ("Line profile through a lesion", "<img src='profile_lesion.png'>"),
            ("Dose-rate-volume histograms", "<img src='drvh.png'>"),
            ("Kidneys, lesions, liver and spleen (mGy/h)", html_table(key_rows)),
            *([("Errors against the Monte Carlo truth (%)", html_table(errors))] if errors else []),
            ("All segments (mGy/h)", html_table(stats)),
            ("Glossary", glossary_html()),
        ])
    return Path(out) / "report.html"


def _errors_against_truth(dose: dict[str, np.ndarray], segments, voxel_ml: float,
                          truth_uncertainty: np.ndarray) -> list[dict]:
    """Per key segment and method: mean dose-rate error and NRMSE (%) against the Monte Carlo truth,
    and the truth's own noise (:func:`metrics.reference_noise_percent`; relative 1-sigma per voxel)."""
    from .evaluation.evaluate import voi_errors
    from .evaluation.metrics import reference_noise_percent

    truth = dose["truth (MC)"]
    rows = []
    for segment in segments:
        if not any(k in segment.name.lower() for k in ("kidney", "lesion", "liver", "spleen")):
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
