"""``dblurdose demo``: a virtual patient, a SPECT-like image of it, its dose-rate maps and a report."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .volume import Volume

#: Demo CT grid: the paper's axial field (130 slices x 3 mm) at half its in-plane resolution.
DEMO_SHAPE = (130, 256, 256)
DEMO_SPACING = (1.96, 1.96, 3.0)
#: SPECT-like blur: system resolution of a medium-energy collimator at ~15 cm, mm FWHM.
DEMO_SPECT_FWHM_MM = 12.0
DEMO_SPECT_VOXEL_MM = 4.8


def spect_like(activity: Volume, fwhm_mm: float = DEMO_SPECT_FWHM_MM, voxel_mm: float = DEMO_SPECT_VOXEL_MM) -> Volume:
    """A blurred, coarse-grid stand-in for a reconstructed SPECT (Bq/mL), activity conserved.

    Gaussian blur of ``fwhm_mm`` in physical units, then an activity-conserving move onto an
    isotropic ``voxel_mm`` grid covering the same field.
    """
    from scipy.ndimage import gaussian_filter

    from .resample import resample_activity

    sigma = [fwhm_mm / 2.3548 / s for s in activity.spacing[::-1]]
    blurred = gaussian_filter(np.asarray(activity.array, dtype=np.float32), sigma, mode="constant")
    extent = np.asarray(activity.spacing) * np.asarray(activity.shape[::-1])
    n = np.maximum(np.round(extent / voxel_mm).astype(int), 1)
    centre = np.asarray(activity.origin) + activity.direction @ ((np.asarray(activity.shape[::-1]) - 1) / 2 * np.asarray(activity.spacing))
    origin = centre - activity.direction @ ((n - 1) / 2 * voxel_mm)
    grid = Volume(np.zeros(tuple(n[::-1]), dtype=np.float32), (voxel_mm,) * 3, tuple(origin), activity.direction)
    return resample_activity(activity.with_array(blurred), grid)


def run_demo(
    out: str | os.PathLike = "dblurdose-demo",
    overwrite: bool = False,
    device: str = "auto",
    seed: int = 3,
    shape: tuple[int, int, int] = DEMO_SHAPE,
    spacing: tuple[float, float, float] = DEMO_SPACING,
    progress: Callable[[float, str], object] | None = None,
) -> Path:
    """Run the demo into ``out``; returns the path of the HTML report."""
    from .dose import compute_dose_rate_maps
    from .metrics import drvh_table, statistics_table
    from .outputs import OutputFolder, write_csv
    from .phantom import make_phantom
    from .report import html_table, write_html
    from .segments import segments_from_labelmap
    from .volume import write_volume

    say = progress or (lambda f, m: None)
    names = ["ct.nrrd", "spect.nrrd", "true_activity.nrrd", "labels.nrrd", "dose_rate_dvk.nrrd", "stats.csv",
             "drvh.csv", "report.html", "slices.png", "drvh.png", "profile.png"]
    folder = OutputFolder(out, names, overwrite=overwrite)
    say(0.0, "making a virtual patient")
    phantom = make_phantom(seed, shape=shape, spacing=spacing, time_days=1.0)
    say(0.2, "simulating a SPECT-like image")
    spect = spect_like(phantom.activity)
    maps = compute_dose_rate_maps(spect, phantom.hu, ("dvk",), device=device,
                                  progress=lambda f, m: say(0.3 + 0.4 * f, m))
    dose = np.asarray(maps["dvk"].array)
    segments = [s for s in segments_from_labelmap(phantom.labels, phantom.hu, phantom.label_names) if s.mask.any()]
    stats = statistics_table({"dvk": dose}, segments, phantom.hu.voxel_volume_ml)

    say(0.8, "writing volumes and report")
    with folder as stage:
        write_volume(phantom.hu, stage / "ct.nrrd")
        write_volume(spect, stage / "spect.nrrd")
        write_volume(phantom.activity, stage / "true_activity.nrrd")
        write_volume(phantom.labels, stage / "labels.nrrd")
        write_volume(maps["dvk"], stage / "dose_rate_dvk.nrrd")
        write_csv(stats, stage / "stats.csv")
        write_csv(drvh_table({"dvk": dose}, segments), stage / "drvh.csv")
        _figures(stage, phantom, spect, dose, segments)
        write_html(stage / "report.html", "DblurDose demo: DVK dose rate of a virtual patient", [
            ("Patient", f"<p>Virtual patient seed {seed}, CT grid {shape[2]}x{shape[1]}x{shape[0]} at "
                        f"{spacing[0]}x{spacing[1]}x{spacing[2]} mm; SPECT-like image: true activity blurred "
                        f"{DEMO_SPECT_FWHM_MM} mm FWHM on a {DEMO_SPECT_VOXEL_MM} mm grid.</p>"),
            ("Slices through the kidneys", "<img src='slices.png'>"),
            ("Line profile through a kidney", "<img src='profile.png'>"),
            ("Dose-rate-volume histograms", "<img src='drvh.png'>"),
            ("Segment statistics (mGy/h)", html_table(stats)),
        ])
    return Path(out) / "report.html"


def _kidney_slice(phantom) -> tuple[int, str]:
    names = {v: k for k, v in phantom.label_names.items()}
    label = next((names[n] for n in names if "kidney" in n.lower()), None)
    labels = np.asarray(phantom.labels.array)
    mask = labels == label if label is not None else labels > 0
    z = int(np.argmax(mask.sum(axis=(1, 2))))
    return z, (label if label is not None else "body")


def _figures(stage: Path, phantom, spect: Volume, dose: np.ndarray, segments) -> None:
    from .metrics import drvh, line_profile
    from .report import Panel, save_curves, save_panels
    from .resample import resample_linear

    z, kidney = _kidney_slice(phantom)
    spect_ct = np.asarray(resample_linear(spect, phantom.hu).array)
    truth = np.asarray(phantom.activity.array)
    top = float(np.percentile(dose[dose > 0], 99.9)) if (dose > 0).any() else 1.0
    top_a = float(np.percentile(truth[truth > 0], 99.9)) if (truth > 0).any() else 1.0
    save_panels([
        Panel("CT", phantom.hu.array[z], "gray", "HU", -200, 300),
        Panel("true activity", truth[z], "hot", "Bq/mL", 0, top_a),
        Panel("SPECT", spect_ct[z], "hot", "Bq/mL", 0, top_a),
        Panel("DVK dose rate", dose[z], "inferno", "mGy/h", 0, top),
    ], stage / "slices.png")
    # a left-right line through the kidneys at the slice's kidney centroid row
    labels = np.asarray(phantom.labels.array)
    rows = np.nonzero(labels[z] == kidney)[0] if isinstance(kidney, int) else np.array([labels.shape[1] // 2])
    row = int(np.median(rows)) if rows.size else labels.shape[1] // 2
    vol = phantom.hu
    p0 = np.asarray(vol.origin) + vol.direction @ (np.array([0, row, z]) * np.asarray(vol.spacing))
    p1 = np.asarray(vol.origin) + vol.direction @ (np.array([vol.shape[2] - 1, row, z]) * np.asarray(vol.spacing))
    dist, d_prof = line_profile(phantom.hu.with_array(dose), p0, p1)
    save_curves({"DVK dose rate": (dist, d_prof)}, stage / "profile.png", "distance along the line (mm)", "mGy/h",
                "left-right profile through the kidneys")
    curves = {}
    for segment in segments:
        if any(key in segment.name.lower() for key in ("kidney", "lesion", "liver", "spleen")):
            edges, _diff, cum = drvh(dose, segment.mask)
            curves[segment.name] = (edges[:-1], cum * 100.0)
    save_curves(curves, stage / "drvh.png", "dose rate (mGy/h)", "volume receiving at least (%)",
                "cumulative DRVH (DVK)")
