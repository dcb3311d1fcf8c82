"""DVK dose-rate benchmark: `dblurdose dose --method dvk` against a plain scipy process.

Cases: a 512x512x130 CT grid and a 128x128x81 SPECT (4.8 mm, float32 Bq/mL), a
virtual-patient-like body of ellipsoids, the CT either
``int16``: 0.98x0.98x3 mm, 16-bit integer HU as scanners write them (a shipped kernel grid), or
``float``: 0.9766x0.9766x3 mm (a 500 mm field, as clinical CTs have), float32 HU as many
    exported NRRD/NIfTI files hold: the kernel is derived for this grid, once, and read from the
    disk cache afterwards (a private ``DBLURDOSE_CACHE``, warmed by one untimed run, as every run
    after a user's first sees it); the density goes through the float-CT table.
Each run is a fresh Python process (imports and file I/O included);
the baseline does the same steps with SimpleITK + scipy.signal.fftconvolve (same total kernel,
same density scaling, same output format). Also times the convolution alone in-process
(CPU, and CUDA when present) and reports peak resident memory. Medians of --repeats runs.

    python benchmarks/bench_dvk.py [--repeats 3] [--small] [--case int16|float|both]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


#: CT pixel size (mm) and HU type of each case
CASES = {"int16": (0.98, np.int16), "float": (0.9766, np.float32)}


def make_case(folder: Path, small: bool, slices: int = 130, case: str = "int16") -> tuple[Path, Path]:
    """Write ct.nrrd (HU) and spect.nrrd (Bq/mL) for the benchmark into ``folder``.

    ``slices``: CT slices of the full-size case (3 mm each; the small case has half as many at 6 mm).
    ``case``: a key of :data:`CASES` (CT pixel size and HU type).
    """
    from DblurDoseLib.io.volume import Volume, write_volume

    pixel, hu_type = CASES[case]
    ct_shape, ct_sp = (((slices // 2, 256, 256), (2 * pixel, 2 * pixel, 6.0)) if small
                       else ((slices, 512, 512), (pixel, pixel, 3.0)))
    sp_shape, sp_sp = ((41, 64, 64), (9.6,) * 3) if small else ((81, 128, 128), (4.8,) * 3)

    def grid(shape, spacing):
        origin = tuple(-(n - 1) / 2 * s for n, s in zip(shape[::-1], spacing))
        z, y, x = (np.arange(n) * s + o for n, s, o in zip(shape, spacing[::-1], origin[::-1]))
        return origin, np.meshgrid(z, y, x, indexing="ij", sparse=True)

    origin, (z, y, x) = grid(ct_shape, ct_sp)
    body = (x / 170) ** 2 + (y / 120) ** 2 <= 1
    lungs = (((np.abs(x) - 70) / 45) ** 2 + (y / 70) ** 2 + ((z - 120) / 90) ** 2) <= 1
    hu = np.where(body, 40.0, -1000.0) + np.where(lungs & body, -890.0, 0.0)
    hu = np.broadcast_to(hu, ct_shape).astype(np.float32)
    if hu_type == np.float32:  # fractional HU, as a smoothed or resampled export holds
        hu = hu + np.random.default_rng(0).normal(0.0, 10.0, ct_shape).astype(np.float32)
    hu = hu.astype(hu_type)  # int16: as CT scanners store HU (DICOM: 16-bit integers)
    write_volume(Volume(hu, ct_sp, origin), folder / "ct.nrrd", overwrite=True)

    origin, (z, y, x) = grid(sp_shape, sp_sp)
    body = ((x / 170) ** 2 + (y / 120) ** 2 <= 1) & (np.abs(z) < 190)
    kidneys = (((np.abs(x) - 70) / 30) ** 2 + ((y - 40) / 25) ** 2 + (z / 50) ** 2) <= 1
    liver = (((x + 60) / 90) ** 2 + (y / 80) ** 2 + ((z - 40) / 70) ** 2) <= 1
    act = 2e3 * body + 1.5e5 * kidneys + 4e4 * liver
    write_volume(Volume(np.broadcast_to(act, sp_shape).astype(np.float32), sp_sp, origin), folder / "spect.nrrd",
                 overwrite=True)
    return folder / "ct.nrrd", folder / "spect.nrrd"


def child_ours(ct: Path, spect: Path, out: Path) -> None:
    from DblurDoseLib.cli import main

    code = main(["dose", "--spect", str(spect), "--ct", str(ct), "--out", str(out), "--method", "dvk",
                 "--device", "cpu", "--overwrite", "--quiet"])
    assert code == 0


def child_baseline(ct: Path, spect: Path, out: Path) -> None:
    """The same steps done plainly: SimpleITK resample, scipy fftconvolve, density scaling, write."""
    import SimpleITK as sitk
    from scipy.signal import fftconvolve

    from DblurDoseLib.physics.density import DEFAULT_CALIBRATION
    from DblurDoseLib.physics.dvk import total_kernel
    from DblurDoseLib.physics.kernels import get_kernel

    ct_img = sitk.ReadImage(str(ct))
    sp_img = sitk.ReadImage(str(spect), sitk.sitkFloat32)
    res = sitk.Resample(sp_img, ct_img, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    conc = sitk.GetArrayFromImage(res)
    voxel_ml = np.prod(ct_img.GetSpacing()) / 1000
    conc *= sitk.GetArrayFromImage(sp_img).sum() * np.prod(sp_img.GetSpacing()) / 1000 / (conc.sum() * voxel_ml)
    hu = sitk.GetArrayFromImage(ct_img).astype(np.float32)
    table = np.asarray(DEFAULT_CALIBRATION)
    rho = np.interp(hu, table[:, 0], table[:, 1]).astype(np.float32)
    kernel = get_kernel("Lu-177", ct_img.GetSpacing())
    k = total_kernel(kernel.electron, kernel.photon)
    dose = fftconvolve(conc * np.float32(voxel_ml), k, mode="same") * 3600.0
    dose = np.where(rho >= 0.1, dose * 1.04 / np.maximum(rho, 0.1), 0.0).astype(np.float32)
    img = sitk.GetImageFromArray(dose)
    img.CopyInformation(ct_img)
    out.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(out / "dose_rate_baseline.nrrd"), False)  # same format as dblurdose writes


def run_child(kind: str, ct: Path, spect: Path, out: Path, env: dict | None = None) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", kind, str(ct), str(spect), str(out)],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{proc.stderr}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, "peak_rss_gb": info["peak_rss_gb"]}


def compute_alone(ct: Path, spect: Path, repeats: int) -> dict[str, float]:
    """Median time of the convolution + scaling alone, on the CPU and (if present) CUDA."""
    import torch

    from DblurDoseLib.geometry.resample import resample_activity
    from DblurDoseLib.io.volume import read_volume
    from DblurDoseLib.physics.density import hu_to_density
    from DblurDoseLib.physics.dvk import dvk_dose_rate
    from DblurDoseLib.physics.kernels import get_kernel

    ct_v, sp_v = read_volume(ct), read_volume(spect)
    act = resample_activity(sp_v, ct_v).array * np.float32(ct_v.voxel_volume_ml)
    rho = hu_to_density(ct_v.array)
    kernel = get_kernel("Lu-177", ct_v.spacing)
    result = {}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        times = []
        for _ in range(repeats + 1):  # first run warms up (FFT plans, CUDA context)
            if dev == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            dvk_dose_rate(act, rho, kernel.electron, kernel.photon, device=dev)
            if dev == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        result[f"compute_{dev}_s"] = statistics.median(times[1:])
    return result


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        import resource

        kind, ct, spect, out = sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5])
        (child_ours if kind == "ours" else child_baseline)(ct, spect, out)
        print(json.dumps({"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="a quarter-size case for a quick check")
    parser.add_argument("--case", choices=(*CASES, "both"), default="both",
                        help="int16: 16-bit CT on a shipped kernel grid; float: float32 CT at 0.9766 mm "
                             "(derived kernel, disk cache warm); both (default)")
    args = parser.parse_args()
    import torch

    print(f"cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, cuda: {torch.cuda.is_available()}, "
          f"load: {os.getloadavg()[0]:.2f}")
    for case in CASES if args.case == "both" else (args.case,):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            env = dict(os.environ, DBLURDOSE_CACHE=str(tmp / "cache"))  # private, and warmed below
            os.environ["DBLURDOSE_CACHE"] = env["DBLURDOSE_CACHE"]  # compute_alone too
            ct, spect = make_case(tmp, args.small, case=case)
            t0 = time.perf_counter()
            run_child("ours", ct, spect, tmp / "out_warm", env)  # a first run: derives and caches a kernel
            first = time.perf_counter() - t0
            rows = {"ours": [], "baseline": []}
            for _ in range(args.repeats):
                for kind in rows:
                    rows[kind].append(run_child(kind, ct, spect, tmp / f"out_{kind}", env))
            med = {k: statistics.median(r["wall_s"] for r in v) for k, v in rows.items()}
            peak = {k: max(r["peak_rss_gb"] for r in v) for k, v in rows.items()}
            print(f"[{case}] first run (cache cold) {first:.2f} s; whole process, median of {args.repeats}: "
                  f"dblurdose {med['ours']:.2f} s, scipy baseline {med['baseline']:.2f} s, "
                  f"ratio {med['ours'] / med['baseline']:.2f}")
            print(f"[{case}] peak memory: dblurdose {peak['ours']:.2f} GB, baseline {peak['baseline']:.2f} GB")
            for key, value in compute_alone(ct, spect, args.repeats).items():
                print(f"[{case}] {key}: {value:.3f} (median of {args.repeats})")


if __name__ == "__main__":
    main()
