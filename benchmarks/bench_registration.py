"""Rigid CT-to-CT registration benchmark: `register_ct` on the demo CT grid (130x256x256).

The reference is a virtual patient's CT (`make_phantom`, 1.96x1.96x3 mm; `--grid full`: 512x512x130
at 0.98x0.98x3 mm); the moving CT is the
same CT moved by a known rigid transform (3, -2, 4 degrees; 15, -20, 25 mm) onto a 2.5 mm grid.
Prints the time of `register_ct` alone (imports and image making excluded) and the error against
the known transform (rotation, largest point error in a 30 cm box).

    python benchmarks/bench_registration.py [--repeats 1] [--threads 2] [--mode rigid] [--grid demo|full]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = {
    "demo": ((130, 256, 256), (1.96, 1.96, 3.0)),  # dblurdose demo's CT grid
    "full": ((130, 512, 512), (0.98, 0.98, 3.0)),  # the paper's CT grid
}
ANGLES_DEG = (3.0, -2.0, 4.0)
SHIFT_MM = (15.0, -20.0, 25.0)


def moved_ct(reference, truth):
    """The reference CT as the moving time point sees it (linear interpolation, air outside)."""
    import SimpleITK as sitk

    from DblurDoseLib.io.volume import Volume

    extent = np.asarray(reference.shape[::-1]) * np.asarray(reference.spacing)
    spacing = (2.5, 2.5, 2.5)
    shape = tuple(int(n) for n in (extent / 2.5).astype(int)[::-1])
    centre = np.asarray(reference.origin) + (np.asarray(reference.shape[::-1]) - 1) / 2 * np.asarray(reference.spacing)
    origin = tuple(centre - (np.asarray(shape[::-1]) - 1) / 2 * 2.5)
    grid = Volume(np.zeros(shape, dtype=np.uint8), spacing, origin).to_sitk()
    # moving(q) = reference(T^-1 q): resample the reference with the inverse of the truth
    out = sitk.Resample(reference.to_sitk(), grid, truth.GetInverse(), sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    return Volume.from_sitk(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", default="rigid", choices=("rigid", "deformable"))
    parser.add_argument("--grid", default="demo", choices=tuple(SIZES))
    args = parser.parse_args()

    import SimpleITK as sitk

    from DblurDoseLib.geometry.registration import register_ct
    from DblurDoseLib.simulation.phantom import make_phantom

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    reference = make_phantom(0, *SIZES[args.grid]).hu
    centre = np.asarray(reference.origin) + (np.asarray(reference.shape[::-1]) - 1) / 2 * np.asarray(reference.spacing)
    truth = sitk.Euler3DTransform(tuple(centre), *np.radians(ANGLES_DEG), SHIFT_MM)
    moving = moved_ct(reference, truth)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        result = register_ct(moving, reference, args.mode, threads=args.threads)
        times.append(time.perf_counter() - t0)
    box = [tuple(centre + np.array([x, y, z])) for x in (-150, 150) for y in (-100, 100) for z in (-150, 150)]
    error = max(np.linalg.norm(np.subtract(result.rigid.TransformPoint(p), truth.TransformPoint(p))) for p in box)
    print(json.dumps({
        "reference": list(reference.shape), "moving": list(moving.shape), "mode": args.mode,
        "threads": args.threads, "time_s": [round(t, 2) for t in times], "median_s": round(statistics.median(times), 2),
        "rotation_deg": [round(a, 3) for a in result.rotation_deg], "max_point_error_mm": round(float(error), 3),
        "body_dice": round(result.body_dice, 4), "hu_correlation": round(result.hu_correlation, 4),
        "stop": result.stop_condition,
    }))


if __name__ == "__main__":
    main()
