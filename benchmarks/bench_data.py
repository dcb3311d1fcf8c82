"""Per-phantom cost of the data set, stage by stage, and the noise of the Monte Carlo truth per organ.

One virtual patient at the paper's size (512x512x130 CT at 0.98x0.98x3 mm; SPECT 128 views,
128x128x81 at 4.8 mm, OSEM 16x4): phantom, SPECT projection, OSEM (one realisation), DVK, and
Monte Carlo per --decays (default 1e7), with the voxel noise of the truth per organ (median relative
uncertainty of the voxels, 1 sigma; it scales as 1/sqrt(decays)). Uses all cores (torch threads).

    python benchmarks/bench_data.py [--decays 1e7] [--small]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decays", type=float, default=1e7)
    parser.add_argument("--small", action="store_true", help="the data generator's --small sizes (a quick check)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    import torch

    from DblurDoseLib.data import SMALL
    from DblurDoseLib.dose import compute_dose_rate_maps
    from DblurDoseLib.geometry.resample import resample_activity
    from DblurDoseLib.physics.montecarlo import monte_carlo_dose_rate
    from DblurDoseLib.simulation.phantom import make_phantom
    from DblurDoseLib.simulation.spect import SpectAcquisition, simulate_spect

    print(f"torch threads {torch.get_num_threads()}, {'small' if args.small else 'paper'} size")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if args.small:
        ph = make_phantom(args.seed, shape=SMALL["shape"], spacing=SMALL["spacing"])
        acq = SpectAcquisition(matrix=SMALL["spect_matrix"], voxel_mm=SMALL["spect_voxel_mm"], n_views=SMALL["n_views"],
                               iterations=SMALL["iterations"], subsets=SMALL["subsets"])
    else:
        ph = make_phantom(args.seed)
        acq = SpectAcquisition()
    timings["phantom"] = time.perf_counter() - t0

    marks: dict[str, float] = {}

    def progress(fraction: float, stage: str) -> None:
        marks.setdefault("osem" if "OSEM" in stage else stage, time.perf_counter())

    t0 = time.perf_counter()
    spect = simulate_spect(ph.activity, ph.density, 1e7, args.seed, acq, progress=progress)[0]
    end = time.perf_counter()
    timings["SPECT projection (attenuation, PSF, data)"] = marks.get("osem", end) - t0
    timings[f"OSEM {acq.iterations}x{acq.subsets}, one realisation"] = end - marks.get("osem", t0)

    t0 = time.perf_counter()
    spect_ct = resample_activity(spect, ph.hu)
    compute_dose_rate_maps(spect_ct, ph.hu, ("dvk",), device="cpu")
    timings["DVK (resample + convolution)"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    bq = ph.activity.with_array(ph.activity.array * np.float32(ph.activity.voxel_volume_ml))
    _dose, unc = monte_carlo_dose_rate(bq, ph.density, int(args.decays), args.seed)
    timings[f"Monte Carlo, {args.decays:.0e} decays"] = time.perf_counter() - t0

    print("\nstage | seconds")
    for name, value in timings.items():
        print(f"{name} | {value:.1f}")
    print(f"total | {sum(timings.values()):.1f}")
    print(f"\nMonte Carlo truth, {args.decays:.0e} decays: median voxel relative uncertainty (1 sigma) per organ")
    u = np.asarray(unc.array)
    labels = np.asarray(ph.labels.array)
    for value, name in sorted(ph.label_names.items()):
        if name in ("liver", "spleen", "kidney_left", "kidney_right", "muscle") or name.startswith(
                "lesion_") or name in ("vertebra_L3",):
            mask = labels == value
            if mask.any():
                print(f"{name} | {100 * float(np.median(u[mask])):.1f}% | {int(mask.sum())} voxels")


if __name__ == "__main__":
    main()
