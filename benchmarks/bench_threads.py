"""OpenMP wait policy: the CPU work of training and inference on a quiet machine and on a shared one.

PyTorch's CPU kernels run on OpenMP threads (libgomp). By default a thread that reaches the end
of a parallel region spins for a while before it sleeps. On a quiet machine that saves a wake-up;
on a machine where other processes want the cores (a data-set job, a second training, a busy
workstation), the spinning threads take CPU from the thread the others wait for and every
parallel region waits for a descheduled thread. ``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads
sleep. The ``dblurdose`` command sets it unless the environment already does (``cli.main``).

Each row runs in a fresh process (libgomp reads the policy when it loads), with ``--threads``
PyTorch threads, as the default policy ("active": libgomp's spin-then-sleep) and as "passive":

* ``train``: one DblurDoseNet training step (3D, 4 slabs of 8 output slices, 64 x 64 patches, as
  ``dblurdose train`` runs it), median of ``--repeats`` steps after one warm-up step;
* ``cnn``: ``cnn_dose_rate`` on the quarter-size case of ``bench_cnn.py`` (65 x 256 x 256),
  median of ``--repeats`` runs after a warm-up run;
* ``dvk``: ``dvk_dose_rate`` on the same case.

"shared" runs the same with ``--busy`` single-threaded CPU burners of the same priority beside it
(other programs, or a data-set job's workers: a job started in its own session has its own
scheduler autogroup, so ``nice`` does not lower it against an interactive session). Pause other
jobs while this runs. Ratio = passive / active.

    python benchmarks/bench_threads.py [--threads 2] [--busy 2] [--repeats 5] [--tasks train cnn dvk]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _train_step():
    import torch

    from DblurDoseLib.learning.network import DblurDoseNet

    torch.manual_seed(0)
    net = DblurDoseNet("dblurdose")
    net.unet.to(memory_format=torch.channels_last)
    net.extractor.to(memory_format=torch.channels_last_3d)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x = torch.rand(4, 2, 18, 64, 64).contiguous(memory_format=torch.channels_last_3d)
    dvk, truth = torch.rand(4, 1, 8, 64, 64), torch.rand(4, 1, 8, 64, 64)

    def step() -> None:
        loss = (net.forward_slab(x, dvk) - truth).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _inference(task: str):
    import numpy as np
    import torch
    from bench_cnn import make_case

    from DblurDoseLib.learning.inference import cnn_dose_rate
    from DblurDoseLib.learning.network import DblurDoseNet, ModelConfig
    from DblurDoseLib.physics.dvk import dvk_dose_rate
    from DblurDoseLib.physics.kernels import get_kernel

    ct, activity, density = make_case(small=True)
    kernel = get_kernel("Lu-177", ct.spacing)
    bq = activity.array * np.float32(ct.voxel_volume_ml)
    dvk = dvk_dose_rate(bq, density, kernel.electron, kernel.photon, device="cpu")
    if task == "dvk":
        return lambda: dvk_dose_rate(bq, density, kernel.electron, kernel.photon, device="cpu")
    torch.manual_seed(0)
    model = DblurDoseNet(ModelConfig(spacing=ct.spacing)).eval()
    return lambda: cnn_dose_rate(activity, ct, density, dvk, "cpu", model=model)


def child(task: str, threads: int, repeats: int) -> None:
    """Runs ``task`` in this process; prints its median seconds as JSON."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch

    torch.set_num_threads(threads)
    run = _train_step() if task == "train" else _inference(task)
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        run()
        if i:  # the first run warms up
            times.append(time.perf_counter() - t0)
    print(json.dumps({"median_s": statistics.median(times), "runs": times}))


def measure(task: str, policy: str, args) -> float:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    out = subprocess.run([sys.executable, __file__, "--child", task, "--threads", str(args.threads),
                          "--repeats", str(args.repeats)], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["median_s"]


def burners(n: int) -> list[subprocess.Popen]:
    """``n`` single-threaded busy loops."""
    code = "while True:\n    pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="PyTorch threads (default 2)")
    ap.add_argument("--busy", type=int, default=2, help="CPU burners beside the 'shared' rows (default 2)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tasks", nargs="+", default=["train", "cnn", "dvk"], choices=("train", "cnn", "dvk"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.threads, args.repeats)
        return
    print(f"{os.cpu_count()} cores, {args.threads} threads, median of {args.repeats} (seconds per run)")
    print(f"{'task':6s} {'machine':18s} {'active':>8s} {'passive':>8s} {'passive/active':>15s}")
    for load in sorted({0, args.busy}):
        procs = burners(load)
        try:
            for task in args.tasks:
                active, passive = (measure(task, policy, args) for policy in ("active", "passive"))
                machine = "quiet" if not load else f"shared ({load} busy)"
                print(f"{task:6s} {machine:18s} {active:8.2f} {passive:8.2f} {passive / active:15.2f}", flush=True)
        finally:
            for p in procs:
                p.kill()


if __name__ == "__main__":
    main()
