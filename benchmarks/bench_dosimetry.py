"""Multi-time-point dosimetry benchmark: `dblurdose dosimetry` on 4 time points, whole process.

A virtual patient (`phantom.make_time_series`) at 4, 24, 96 and 168 h after injection on the
paper's CT grid (512x512x130 at 0.98x0.98x3 mm; `--grid small`: 128x128x130 for a quick check),
each SPECT a blurred 4.8 mm stand-in (`demo.spect_like`), the later time points shifted by a few
millimetres (the rigid registration has to find them), kidneys, liver, spleen and lesions as VOIs.
Times the `dblurdose dosimetry --method dvk --register rigid` process from start to exit, and, as
the baseline in the same run, one `dblurdose dose --method dvk` process on the reference time
point (what a single dose-rate map costs). Also reports each VOI's absorbed dose against the truth
(the DVK applied to the exact time-integrated activity). Goal: under 60 s on 2 cores.

    python benchmarks/bench_dosimetry.py [--repeats 3] [--grid full|small]
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GRIDS = {"full": ((130, 512, 512), None), "small": ((130, 128, 128), None)}  # spacing None: the standard field
TIMES_H = (4.0, 24.0, 96.0, 168.0)
SHIFTS_MM = ((0.0, 0.0, 0.0), (4.0, -3.0, 6.0), (-5.0, 2.0, -4.0), (3.0, 5.0, 3.0))
VOIS = ("kidney_left", "kidney_right", "liver", "spleen")


def make_inputs(folder: Path, grid: str) -> dict:
    from DblurDoseLib.demo import spect_like
    from DblurDoseLib.dose import compute_dose_rate_maps
    from DblurDoseLib.io.volume import Volume, write_volume
    from DblurDoseLib.simulation.phantom import make_time_series

    shape, spacing = GRIDS[grid]
    phantoms, integral = make_time_series(7, TIMES_H, shape=shape, spacing=spacing)
    reference = phantoms[0]
    labels = np.asarray(reference.labels.array)
    wanted = {v: n for v, n in reference.label_names.items() if n in VOIS or n.startswith("lesion_")}
    seg = np.zeros(labels.shape, np.int16)
    for i, value in enumerate(sorted(wanted), start=1):
        seg[labels == value] = i
    names = {i: wanted[v] for i, v in enumerate(sorted(wanted), start=1)}
    write_volume(reference.hu.with_array(seg), folder / "labels.nrrd")
    points = []
    for t, ph, shift in zip(TIMES_H, phantoms, SHIFTS_MM):
        origin = tuple(np.add(ph.hu.origin, shift))
        ct = Volume(np.round(ph.hu.array).astype(np.int16), ph.hu.spacing, origin)
        spect = spect_like(Volume(ph.activity.array, ph.activity.spacing, origin))
        points.append((write_volume(spect, folder / f"spect_{t:g}h.nrrd"), write_volume(ct, folder / f"ct_{t:g}h.nrrd"), t))
    truth_mgy = compute_dose_rate_maps(integral, reference.hu, activity_range_mbq=None)["dvk"].array
    truth = {names[i]: float(truth_mgy[seg == i].mean()) / 1000.0 for i in sorted(names)}
    return {"points": points, "seg": folder / "labels.nrrd", "truth_gy": truth}


def child(argv: list[str]) -> None:
    from DblurDoseLib.cli import main

    code = main(argv)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(json.dumps({"code": code, "peak_rss_gb": peak}))


def run(argv: list[str]) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", *argv], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    info = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.stdout.strip() else {"code": proc.returncode}
    if info.get("code") != 0:
        raise RuntimeError(f"{argv[0]} failed:\n{proc.stderr[-3000:]}")
    return {"wall_s": wall, "peak_rss_gb": info["peak_rss_gb"]}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--grid", default="full", choices=tuple(GRIDS))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-dosimetry-") as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        inputs = make_inputs(folder, args.grid)
        print(f"inputs made in {time.perf_counter() - t0:.1f} s ({args.grid} grid)", flush=True)
        timepoints = [a for s, c, t in inputs["points"] for a in ("--timepoint", str(s), str(c), f"{t:g}")]
        dosimetry = ["dosimetry", *timepoints, "--seg", str(inputs["seg"]), "--out", str(folder / "out"),
                     "--method", "dvk", "--register", "rigid", "--overwrite", "--quiet"]
        spect0, ct0, _ = inputs["points"][0]
        dose = ["dose", "--spect", str(spect0), "--ct", str(ct0), "--out", str(folder / "dose"), "--method", "dvk",
                "--device", "cpu", "--overwrite", "--quiet"]
        runs = {"dosimetry": [], "dose": []}
        for i in range(args.repeats):
            for name, argv in (("dose", dose), ("dosimetry", dosimetry)):
                runs[name].append(run(argv))
                print(f"run {i + 1}: {name} {runs[name][-1]['wall_s']:.1f} s, "
                      f"peak {runs[name][-1]['peak_rss_gb']:.2f} GB", flush=True)
        with (folder / "out" / "doses.csv").open() as f:
            rows = [r for r in csv.DictReader(line for line in f if not line.startswith("#"))]
    med = {k: statistics.median(r["wall_s"] for r in v) for k, v in runs.items()}
    result = {"grid": args.grid, "repeats": args.repeats,
              "dosimetry_wall_s": [round(r["wall_s"], 2) for r in runs["dosimetry"]],
              "dose_wall_s": [round(r["wall_s"], 2) for r in runs["dose"]],
              "dosimetry_median_s": round(med["dosimetry"], 2), "dose_median_s": round(med["dose"], 2),
              "ratio_dosimetry_to_one_dose": round(med["dosimetry"] / med["dose"], 2),
              "dosimetry_peak_rss_gb": round(max(r["peak_rss_gb"] for r in runs["dosimetry"]), 2),
              "goal_s": 60.0}
    truth = inputs["truth_gy"]  # by VOI name; a plain labelmap's segments are named label_<value>
    by_label = {f"label_{i}": name for i, name in enumerate(truth, start=1)}
    result["voi_dose_vs_truth"] = {by_label.get(r["segment"], r["segment"]): round(
        float(r["mean_dose_gy"]) / truth[by_label.get(r["segment"], r["segment"])] - 1, 3) for r in rows}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
