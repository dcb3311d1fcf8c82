"""Virtual-patient generation benchmark: `make_phantom` at the paper's CT grid and at demo sizes.

Each run is a fresh Python process (so peak memory is per size); the time is measured inside it
around `make_phantom` alone (imports excluded). Prints the median of --repeats runs per size.

    python benchmarks/bench_phantom.py [--repeats 3] [--seed 0] [--sizes full,demo,small]
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

SIZES = {
    "full": ((130, 512, 512), (0.98, 0.98, 3.0)),  # the paper's CT grid
    "demo": ((130, 256, 256), (1.96, 1.96, 3.0)),  # dblurdose demo's CT grid
    "small": ((65, 128, 128), (3.92, 3.92, 6.0)),  # a quick-look grid over the same field
}


def child(name: str, seed: int) -> None:
    import resource

    from DblurDoseLib.simulation.phantom import make_phantom

    shape, spacing = SIZES[name]
    t0 = time.perf_counter()
    p = make_phantom(seed, shape=shape, spacing=spacing)
    dt = time.perf_counter() - t0
    print(json.dumps({"time_s": dt, "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                      "total_MBq": p.info["total_activity_MBq"], "lesions": len(p.info["lesions"])}))


def run(name: str, seed: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", name, str(seed)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 3 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes", default="full,demo,small", help=f"comma-separated, of {', '.join(SIZES)}")
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}, seed {args.seed}, median of {args.repeats} fresh processes")
    for name in args.sizes.split(","):
        shape, spacing = SIZES[name]
        runs = [run(name, args.seed) for _ in range(args.repeats)]
        med = statistics.median(r["time_s"] for r in runs)
        peak = max(r["peak_rss_gb"] for r in runs)
        each = ", ".join(f"{r['time_s']:.2f}" for r in runs)
        print(f"{name:5s} {shape[2]}x{shape[1]}x{shape[0]} at {spacing[0]}x{spacing[1]}x{spacing[2]} mm: "
              f"make_phantom {med:.2f} s (runs {each}), "
              f"peak memory {peak:.2f} GB, {runs[0]['lesions']} lesions, {runs[0]['total_MBq']:.0f} MBq in the field")


if __name__ == "__main__":
    main()
