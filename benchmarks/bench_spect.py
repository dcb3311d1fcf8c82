"""Benchmark: simulated Lu-177 SPECT at the paper's size, per phase.

A synthetic abdomen on the paper's CT grid (512 x 512 x 130 at 0.98 x 0.98 x 3 mm: body, lungs,
spine, liver, kidneys, spleen, two tumours) is resampled to the SPECT grid (128 x 128 x 81 at
4.8 mm), projected over 128 views (SY-ME, 208 keV, contour orbit, attenuation, depth-dependent
collimator response, 25 % scatter), scaled to a count level with Poisson noise and reconstructed
with OSEM (4 subsets x 16 iterations by default). Prints the time of every phase, the peak memory
and the recovery of the organs (mean reconstructed / mean true concentration on the SPECT grid).

    nice python benchmarks/bench_spect.py                    # full run (~2-3 min on 2 cores)
    python benchmarks/bench_spect.py --iterations 2          # quicker; OSEM time extrapolated
    python benchmarks/bench_spect.py --compare               # also time pytomography's own
                                                              # attenuation and PSF per iteration
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import resource
import time

import numpy as np

from DblurDoseLib.geometry.resample import resample_box
from DblurDoseLib.io.volume import Volume
from DblurDoseLib.simulation import projector
from DblurDoseLib.simulation import spect as S

#: name: (centre x, y, z mm; semi-axes mm; Bq/mL), roughly a day after 7.4 GBq Lu-177 DOTATATE
ORGANS = {
    "liver": ((-70.0, 10.0, 20.0), (90.0, 75.0, 70.0), 60e3),
    "spleen": ((95.0, 40.0, 40.0), (35.0, 35.0, 50.0), 100e3),
    "kidney_left": ((75.0, 55.0, -40.0), (28.0, 30.0, 50.0), 400e3),
    "kidney_right": ((-75.0, 55.0, -50.0), (28.0, 30.0, 50.0), 400e3),
    "tumour_4ml": ((-40.0, -10.0, 40.0), (9.85, 9.85, 9.85), 1.0e6),
    "tumour_65ml": ((30.0, -40.0, -20.0), (24.9, 24.9, 24.9), 0.6e6),
}
BACKGROUND_BQ_ML = 10e3


def abdomen(shape=(130, 512, 512), spacing=(0.98, 0.98, 3.0)) -> tuple[Volume, Volume, dict]:
    """A synthetic abdomen (activity Bq/mL, density g/cm3, organ masks) on a CT-like grid."""
    nz, ny, nx = shape
    origin = -(np.array([nx, ny, nz]) - 1) / 2.0 * np.asarray(spacing)
    x = (origin[0] + np.arange(nx) * spacing[0])[None, None, :]
    y = (origin[1] + np.arange(ny) * spacing[1])[None, :, None]
    z = (origin[2] + np.arange(nz) * spacing[2])[:, None, None]

    def ellipsoid(c, r):
        return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 < 1.0

    body = np.broadcast_to(((x / 170.0) ** 2 + (y / 115.0) ** 2) < 1.0, shape)
    density = np.where(body, 1.03, 0.0012).astype(np.float32)
    lungs = (ellipsoid((-80, -10, 200), (65, 75, 80)) | ellipsoid((80, -10, 200), (65, 75, 80))) & body
    density[lungs] = 0.3
    spine = np.broadcast_to(((x / 18.0) ** 2 + ((y - 75.0) / 18.0) ** 2) < 1.0, shape)
    density[spine] = 1.4
    activity = np.where(body, BACKGROUND_BQ_ML, 0.0).astype(np.float32)
    masks = {}
    for name, (c, r, conc) in ORGANS.items():
        m = ellipsoid(c, r) & body
        activity[m] = conc
        density[m] = 1.05
        masks[name] = m
    grid = Volume(np.zeros(shape, np.float32), spacing, tuple(origin))
    return grid.with_array(activity), grid.with_array(density), masks


def unit_timings(n, acq, system, act_spect, activity, density, counts, tew, timings) -> None:
    """Best-of-n wall times of the unit operations, scaled to whole phases."""
    import torch

    def best(fn) -> float:
        out = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return min(out)

    h = system.matrix
    obj = projector._to_tensor(act_spect.array)
    h.set_n_subsets(acq.subsets)
    g = torch.as_tensor(counts, dtype=torch.float32)
    with torch.no_grad():
        fp = best(lambda: h.forward(obj))
        sub = best(lambda: h.backward(h.get_projection_subset(g, 0) / (h.forward(obj, 0) + 1.0), 0))
    timings[f"[best of {n}] forward projection, recon grid"] = (fp, float("nan"))
    timings[f"[best of {n}] OSEM 4x16 = 64 x one sub-iteration"] = (64 * sub, float("nan"))
    # the 2x finer data projection: time 1/16 of the views
    k = acq.projection_oversampling
    if k > 1:
        nx, ny, nz = acq.matrix
        fine_acq = dataclasses.replace(
            acq, matrix=(nx * k, ny * k, nz * k), voxel_mm=acq.voxel_mm / k, cache_attenuation=False
        )
        fine_grid = S.spect_grid(activity, fine_acq)
        fine_act = resample_box(activity, fine_grid, "concentration")
        mu_ct = density.with_array(S.density_to_mu(density.array, acq.photopeak_kev))
        fine_sys = S.build_system(resample_box(mu_ct, fine_grid, "mean"), fine_acq, radii_mm=system.radii_mm)
        fine_sys.matrix.set_n_subsets(16)
        fine_obj = projector._to_tensor(fine_act.array)
        with torch.no_grad():
            part = best(lambda: fine_sys.matrix.forward(fine_obj, 0))
        timings[f"[best of {n}] data projection, {k}x finer grid = 16 x 8 views"] = (16 * part, float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=16)
    ap.add_argument("--subsets", type=int, default=4)
    ap.add_argument("--counts", type=float, default=1e7, help="total photopeak counts (paper: 3e6 to 2e7)")
    ap.add_argument(
        "--compare",
        action="store_true",
        help="also time one OSEM iteration with pytomography's own transforms",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument(
        "--unit-timings",
        type=int,
        default=0,
        metavar="N",
        help="also time the unit operations best-of-N (robust when other jobs share the cores) "
        "and extrapolate the per-phantom and per-realisation costs from them",
    )
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    acq = S.SpectAcquisition(iterations=args.iterations, subsets=args.subsets)
    device = projector.pytomography().device
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; load {os.getloadavg()}"
    )
    print(
        f"SPECT: {acq.n_views} views, {acq.matrix} at {acq.voxel_mm} mm, {acq.collimator}, {acq.photopeak_kev} keV, "
        f"OSEM {acq.subsets} subsets x {acq.iterations} iterations, {args.counts:.3g} counts"
    )
    timings: dict[str, tuple[float, float]] = {}  # phase: (wall s, process CPU s)

    @contextlib.contextmanager
    def phase(name: str, scale: float = 1.0):
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        timings[name] = ((time.perf_counter() - wall) * scale, (time.process_time() - cpu) * scale)

    with phase("phantom (CT grid 512x512x130)"):
        activity, density, masks = abdomen()
    with phase("resample CT -> SPECT (activity, mu, density)"):
        grid = S.spect_grid(activity, acq)
        act_spect = resample_box(activity, grid, "concentration")
        mu_ct = density.with_array(S.density_to_mu(density.array, acq.photopeak_kev))
        mu_spect = resample_box(mu_ct, grid, "mean")
        dens_spect = resample_box(density, grid, "mean")
    with phase("contour orbit"):
        body = (dens_spect.array > 0.1) | (act_spect.array > 0)
        radii = S.orbit_radii_mm(grid, body, acq)
    with phase("attenuation cache + collimator response setup"):
        system = S.build_system(mu_spect, acq, radii_mm=radii)
    print(
        f"orbit radius {radii.min():.0f}-{radii.max():.0f} mm; "
        f"sensitivity {system.sensitivity_cps_per_mbq:.2f} cps/MBq/head"
    )
    with phase("forward projection on the recon grid (cached attenuation)"):
        S.forward_project(system, act_spect)
    with phase(
        f"data projection on a {acq.projection_oversampling}x finer grid + binning (once per phantom)"
    ):
        primary = S._project_phantom(activity, density, system, act_spect)
    with phase("scatter + Poisson noise + TEW estimate"):
        scatter = S.scatter_projections(primary, acq)
        scale = args.counts / float(primary.sum() + scatter.sum())
        duration = acq.duration_s * scale
        rng = np.random.default_rng(0)
        counts = rng.poisson((primary + scatter) * scale).astype(np.float64)
        tew = S.tew_estimate(scatter * scale, rng, acq)
    with phase("OSEM normalisation H^T 1 (once per phantom)"):
        system.normalisation(acq.subsets)
    with phase(f"OSEM {acq.subsets}x{acq.iterations} (per realisation)"):
        image = S.reconstruct(system, counts, tew, duration_s=duration)
    if acq.iterations != 16:
        wall, cpu = timings[f"OSEM {acq.subsets}x{acq.iterations} (per realisation)"]
        f = 16 / acq.iterations
        timings["OSEM 4x16 (extrapolated)"] = (wall * f, cpu * f)

    if args.compare:
        for fast, cache in ((False, True), (True, False), (False, False)):
            a2 = dataclasses.replace(acq, fast_psf=fast, cache_attenuation=cache, iterations=1)
            label = (
                f"{'banded' if fast else 'pytomography'} PSF, {'cached' if cache else 'per-view'} attenuation"
            )
            with phase(f"[compare] {label}: setup"):
                s2 = S.build_system(mu_spect, a2, radii_mm=radii)
            s2.normalisation(a2.subsets)
            with phase(f"[compare] {label}: OSEM 4x16 (1 iteration x 16)", scale=16.0):
                S.reconstruct(s2, counts, tew, duration_s=duration, iterations=1)

    if args.unit_timings:
        unit_timings(args.unit_timings, acq, system, act_spect, activity, density, counts, tew, timings)

    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"\n  {'phase':<72s} {'wall s':>8s} {'CPU s':>8s}")
    for k, (wall, cpu) in timings.items():
        print(f"  {k:<72s} {wall:8.1f} {cpu:8.1f}")
    print(f"  {'peak resident memory (GB)':<72s} {peak_gb:8.2f}")
    print(f"  {'photopeak counts':<72s} {counts.sum():8.3g}")
    print(f"  {'effective scan time for this count level (s)':<72s} {duration:8.0f}")

    print(
        "\nrecovery on the SPECT grid (mean recon / mean truth over voxels at least half inside; core: voxels wholly inside)"
    )
    true_total = float(act_spect.array.sum()) * act_spect.voxel_volume_ml
    print(
        f"  {'total activity in field':<16s} {float(image.array.sum()) * image.voxel_volume_ml / true_total:6.3f}"
    )
    for name, m in masks.items():
        frac = resample_box(activity.with_array(m.astype(np.float32)), grid, "mean").array
        whole = frac > 0.5
        core = frac > 0.999
        rc = float(image.array[whole].mean() / act_spect.array[whole].mean())
        rcore = float(image.array[core].mean() / act_spect.array[core].mean()) if core.any() else float("nan")
        print(f"  {name:<16s} {rc:6.3f} (core {rcore:5.3f}, {whole.sum()} voxels)")


if __name__ == "__main__":
    main()
