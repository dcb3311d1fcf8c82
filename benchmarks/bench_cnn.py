"""CNN dose-rate benchmark: whole-volume DblurDoseNet inference against the naive per-pack loop.

Case: a 512x512x130 CT grid (0.98x0.98x3 mm, the paper's), a body of ellipses with lungs, an
activity map with organs; a DblurDoseNet with random weights (timing does not depend on the
weights) whose working grid is the CT grid. Timed in one process:

* DVK: the density-scaled DVK convolution (the CNN's input), ``dvk_dose_rate``;
* CNN: ``cnn_dose_rate`` (scaling, shared-extractor slabs, U-Net, clamp/mask), whole volume;
* consistency: the step ``dose --spect-fwhm`` adds after the CNN (``consistent_dose_rate``, two 3D
  Gaussian blurs on the CT grid, numpy on the CPU whatever the device), FWHM 12 mm;
* naive: the same model, every 11-slice pack through the module's ``forward`` one at a time
  (``predict_scaled(naive=True)``), timed on ``--naive-slices`` central output slices plus
  their 10 context slices and extrapolated linearly to all slices (every pack costs the same);
  the fast path is checked against it on the central slices.

CNN and naive runs alternate (``--repeats`` each), so both see the same machine: on a shared
machine compare the ratio, and the process CPU times, rather than the absolute wall times.
Medians; on CUDA also peak GPU memory.

    python benchmarks/bench_cnn.py [--repeats 3] [--naive-slices 6] [--small]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_case(small: bool):
    from DblurDoseLib.io.volume import Volume

    shape, spacing = ((65, 256, 256), (1.96, 1.96, 6.0)) if small else ((130, 512, 512), (0.98, 0.98, 3.0))
    origin = tuple(-(n - 1) / 2 * s for n, s in zip(shape[::-1], spacing))
    z, y, x = (np.arange(n) * s + o for n, s, o in zip(shape, spacing[::-1], origin[::-1]))
    z, y, x = np.meshgrid(z, y, x, indexing="ij", sparse=True)
    body = (x / 170) ** 2 + (y / 120) ** 2 <= 1
    lungs = body & ((((np.abs(x) - 70) / 45) ** 2 + (y / 70) ** 2 + ((z - 120) / 90) ** 2) <= 1)
    density = np.broadcast_to(np.where(lungs, 0.26, np.where(body, 1.04, 0.0012)), shape).astype(np.float32)
    kidneys = (((np.abs(x) - 70) / 30) ** 2 + ((y - 40) / 25) ** 2 + (z / 50) ** 2) <= 1
    liver = (((x + 60) / 90) ** 2 + (y / 80) ** 2 + ((z - 40) / 70) ** 2) <= 1
    act = np.broadcast_to(2e3 * body + 1.5e5 * kidneys + 4e4 * liver, shape).astype(np.float32)
    ct = Volume(np.zeros(shape, np.float32), spacing, origin)
    return ct, ct.with_array(act), density


def timed(fn, sync=lambda: None) -> tuple[float, float, object]:
    """(wall seconds, process CPU seconds, result) of one call."""
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    sync()
    return time.perf_counter() - t0, time.process_time() - c0, result


def bench_device(dev: str, model, ct, activity, density, kernel, args) -> None:
    import torch

    from DblurDoseLib.learning.inference import cnn_dose_rate, predict_scaled
    from DblurDoseLib.physics.dvk import dvk_dose_rate

    nz = ct.shape[0]
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    bq = activity.array * np.float32(ct.voxel_volume_ml)
    if dev == "cuda":
        cnn_dose_rate(activity, ct, density, np.zeros(ct.shape, np.float32), dev, model=model)  # warm-up
        torch.cuda.reset_peak_memory_stats()
    dvk_runs = [timed(lambda: dvk_dose_rate(bq, density, kernel.electron, kernel.photon, device=dev), sync)
                for _ in range(args.repeats)]
    t_dvk, dvk = statistics.median(r[0] for r in dvk_runs), dvk_runs[-1][2]

    # the naive per-pack loop on a few central output slices, each with its real 11-slice context
    n = min(args.naive_slices, nz)
    z0 = nz // 2 - n // 2
    rows = slice(max(z0 - 5, 0), min(z0 + n + 5, nz))
    total = float(activity.array.sum(dtype=np.float64)) * ct.voxel_volume_ml
    sp = activity.array[rows] * np.float32(model.config.spect_scale_ml / total)
    dv = dvk[rows] * np.float32(model.config.dose_scale / total)
    cnn_runs, naive_runs = [], []
    for _ in range(args.repeats):  # interleaved, so that both see the same machine
        cnn_runs.append(timed(lambda: cnn_dose_rate(activity, ct, density, dvk, dev, model=model), sync))
        naive_runs.append(timed(lambda: predict_scaled(model, sp, density[rows], dv, dev, naive=True), sync))
    t_cnn = statistics.median(r[0] for r in cnn_runs)
    c_cnn = statistics.median(r[1] for r in cnn_runs)
    k = nz / (rows.stop - rows.start)  # naive: extrapolated from the timed slices to the whole volume
    t_naive = statistics.median(r[0] for r in naive_runs) * k
    c_naive = statistics.median(r[1] for r in naive_runs) * k
    ratios = [nr[0] * k / cr[0] for cr, nr in zip(cnn_runs, naive_runs)]
    print(f"[{dev}] DVK {t_dvk:.1f} s + CNN {t_cnn:.1f} s = {t_dvk + t_cnn:.1f} s wall (median of {args.repeats}); "
          f"CNN {t_cnn / nz * 1000:.0f} ms per slice, {c_cnn:.0f} s CPU", flush=True)
    print(f"[{dev}] naive per-pack {t_naive:.0f} s wall, {c_naive:.0f} s CPU (timed on {rows.stop - rows.start} "
          f"slices, extrapolated to {nz}); CNN faster by {statistics.median(ratios):.2f}x wall "
          f"(runs: {', '.join(f'{r:.2f}' for r in ratios)}), {c_naive / c_cnn:.2f}x CPU", flush=True)
    fast = cnn_runs[-1][2].array[z0: z0 + n] * np.float32(model.config.dose_scale / total)
    naive = naive_runs[-1][2][z0 - rows.start: z0 - rows.start + n]
    err = float(np.abs(naive - fast).max() / max(np.abs(fast).max(), 1e-30))
    print(f"[{dev}] largest difference fast vs naive: {err:.1e} of the maximum", flush=True)
    if dev == "cpu":
        from DblurDoseLib.physics.consistency import consistent_dose_rate

        cnn = cnn_runs[-1][2].array
        steps = [timed(lambda: consistent_dose_rate(cnn, dvk, density, 12.0, ct.spacing)) for _ in range(args.repeats)]
        t_step = statistics.median(r[0] for r in steps)
        print(f"[cpu] consistency step (FWHM 12 mm) {t_step:.1f} s wall (median of {args.repeats}): "
              f"{100 * t_step / (t_dvk + t_cnn):.0f}% of DVK + CNN", flush=True)
    if dev == "cuda":
        print(f"[cuda] peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive-slices", type=int, default=6, help="output slices timed for the naive loop")
    parser.add_argument("--small", action="store_true", help="a quarter-size case for a quick check")
    args = parser.parse_args()

    import torch

    from DblurDoseLib.learning.network import DblurDoseNet, ModelConfig
    from DblurDoseLib.physics.kernels import get_kernel

    print(f"cores: {os.cpu_count()}, torch {torch.__version__}, threads: {torch.get_num_threads()}, "
          f"cuda: {torch.cuda.is_available()}", flush=True)
    ct, activity, density = make_case(args.small)
    print(f"grid {ct.shape[::-1]} (x, y, z) at {ct.spacing} mm", flush=True)
    torch.manual_seed(0)
    model = DblurDoseNet(ModelConfig(spacing=ct.spacing)).eval()
    kernel = get_kernel("Lu-177", ct.spacing)

    for dev in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        bench_device(dev, model, ct, activity, density, kernel, args)
    print(f"peak resident memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


if __name__ == "__main__":
    main()
