"""Peak memory of `dblurdose dose --method cnn` (shipped weights, CPU) against the estimate and the budget.

Case: the DVK benchmark's body (benchmarks/bench_dvk.py make_case) on a 512x512xN CT grid
(0.98x0.98x3 mm, 16-bit HU) with a 128x128x81 SPECT (4.8 mm). The run is a fresh process; its
peak resident size (ru_maxrss) is compared with DblurDoseLib.memory.plan_memory's estimate for
the same shapes and budget (the process's own size, measured in it before the run, as the base).

    python benchmarks/bench_memory.py [--slices 130] [--memory-gb 8]

``--slices 600`` is the size of issue 13 (a 512x512x600 CT within 8 GB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def child(ct: Path, spect: Path, out: Path, memory_gb: float) -> None:
    """Run the CLI as a user would; print the resident size before it (base) and the peak (bytes)."""
    import resource

    import torch  # noqa: F401  (the CLI imports it too: part of the base)

    from DblurDoseLib.cli import main
    from DblurDoseLib.learning.inference import load_model
    from DblurDoseLib.memory import resident_bytes

    load_model(device="cpu")  # the model, as in the run (part of the base)
    base = resident_bytes()
    code = main(["dose", "--spect", str(spect), "--ct", str(ct), "--out", str(out), "--method", "cnn",
                 "--device", "cpu", "--memory-gb", str(memory_gb), "--overwrite", "--quiet"])
    assert code == 0, code
    print(json.dumps({"base": base, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0}))


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), float(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=130, help="CT slices (3 mm); 600 for the issue's size")
    parser.add_argument("--memory-gb", type=float, default=8.0, help="budget passed to --memory-gb (GB)")
    args = parser.parse_args()

    from bench_dvk import make_case

    from DblurDoseLib.learning.inference import load_model, working_shape
    from DblurDoseLib.memory import plan_memory
    from DblurDoseLib.physics.kernels import get_kernel

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ct, spect = make_case(folder, small=False, slices=args.slices)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", str(ct), str(spect), str(folder / "out"),
                               str(args.memory_gb)], capture_output=True, text=True)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"the run failed:\n{proc.stderr[-3000:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    shape, spacing = (args.slices, 512, 512), (0.98, 0.98, 3.0)
    kernel = get_kernel("Lu-177", spacing)
    total = tuple(max(a, b) for a, b in zip(kernel.electron.shape, kernel.photon.shape))
    work = working_shape(shape, spacing, load_model(device="cpu").config.spacing)
    plan = plan_memory(shape, (81, 128, 128), ("dvk", "cnn"), [total], work_shape=work, ct_itemsize=2,
                       memory_gb=args.memory_gb, base_bytes=info["base"])
    print(f"512x512x{args.slices} CT, --method cnn, --memory-gb {args.memory_gb:g}: {wall:.1f} s")
    print(f"peak RSS {info['peak'] / 1e9:.2f} GB (process before the run {info['base'] / 1e9:.2f} GB); "
          f"estimate {plan.estimate / 1e9:.2f} GB (ratio {plan.estimate / info['peak']:.2f}); "
          f"budget {plan.budget / 1e9:.1f} GB; CNN chunk {plan.chunk} slices")


if __name__ == "__main__":
    main()
