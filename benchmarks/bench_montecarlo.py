"""Monte Carlo (ompmc) speed: decays per second for a body-like phantom, and kernel build times.

Case: an elliptical water body with lungs and a spine-like bone rod, activity in kidneys, liver and
a little everywhere in the body; ``--grid spect`` is 128x128x81 at 4.8 mm, ``--grid ct`` the
paper's 512x512x130 at 0.98x0.98x3 mm. Reports wall time (child start-up and file I/O included),
decays/s, transported particles/s, the energy balance and the peak memory of the run.

    python benchmarks/bench_montecarlo.py [--grid spect|ct] [--decays 2000000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def phantom(grid: str):
    from DblurDoseLib.io.volume import Volume

    shape, spacing = ((81, 128, 128), (4.8, 4.8, 4.8)) if grid == "spect" else ((130, 512, 512), (0.98, 0.98, 3.0))
    z, y, x = (((np.arange(n) - (n - 1) / 2) * s) for n, s in zip(shape, spacing[::-1]))
    z, y, x = np.meshgrid(z, y, x, indexing="ij", sparse=True)
    body = (x / 170) ** 2 + (y / 120) ** 2 <= 1
    lungs = (((np.abs(x) - 70) / 45) ** 2 + (y / 70) ** 2 + ((z - 120) / 90) ** 2) <= 1
    spine = ((x / 15) ** 2 + ((y - 70) / 15) ** 2) <= 1
    rho = np.where(body, 1.04, 0.0012) * np.ones(shape)
    rho = np.where(lungs & body, 0.26, rho)
    rho = np.where(spine & body, 1.4, rho)
    kidneys = (((np.abs(x) - 70) / 30) ** 2 + ((y - 40) / 25) ** 2 + (z / 50) ** 2) <= 1
    liver = (((x + 60) / 90) ** 2 + (y / 80) ** 2 + ((z - 40) / 70) ** 2) <= 1
    bqml = (2e3 * body + 1.5e5 * kidneys + 4e4 * liver) * np.ones(shape)
    vox_ml = float(np.prod(spacing)) / 1000
    return (Volume((bqml * vox_ml).astype(np.float32), spacing), Volume(rho.astype(np.float32), spacing))


def main(argv=None) -> int:
    from DblurDoseLib.physics.montecarlo import monte_carlo_dose_rate, ompmc_version

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", choices=("spect", "ct"), default="spect")
    p.add_argument("--decays", type=int, default=2_000_000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    activity, density = phantom(args.grid)
    t0 = time.perf_counter()
    res = monte_carlo_dose_rate(activity, density, args.decays, seed=args.seed, threads=args.threads)
    wall = time.perf_counter() - t0
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {
        "grid": args.grid, "shape": list(activity.shape), "spacing_mm": list(activity.spacing),
        "decays": res.n_decays, "particles": res.info["particles"], "threads": args.threads,
        "wall_s": round(wall, 2), "transport_s": round(res.info["transport_seconds"], 2),
        "decays_per_s": round(res.n_decays / wall), "particles_per_s": round(res.info["particles"] / wall),
        "energy_kev_per_decay": {k: round(v, 3) for k, v in res.per_decay_kev().items()},
        "balance": (res.deposited_mev + res.escaped_mev) / res.emitted_mev - 1,
        "peak_rss_mb": {"parent": round(own), "ompmc_child": round(child)},
        "ompmc": ompmc_version(),
    }
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
