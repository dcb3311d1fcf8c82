"""Memory: the peak estimate against measured peak RSS, the up-front refusal, chunking by the budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from DblurDoseLib.errors import OutOfMemoryError
from DblurDoseLib.learning.inference import weights_installed
from DblurDoseLib.memory import check_memory, plan_memory

ROOT = Path(__file__).resolve().parents[1]
#: the estimate's arrays are within this fraction of the measured ones (see DblurDoseLib.memory)
TOLERANCE = 0.35

_CHILD = r"""
import json, sys
import numpy as np
from DblurDoseLib.io.volume import Volume
from DblurDoseLib.dose import compute_dose_rate_maps
from DblurDoseLib.memory import peak_resident_bytes, resident_bytes

shape, method, memory_gb = tuple(json.loads(sys.argv[1])), sys.argv[2], float(sys.argv[3])
spacing = (0.98, 0.98, 3.0)
origin = tuple(-(n - 1) / 2 * s for n, s in zip(shape[::-1], spacing))
z, y, x = (np.arange(n) * s + o for n, s, o in zip(shape, spacing[::-1], origin[::-1]))
z, y, x = np.meshgrid(z, y, x, indexing="ij", sparse=True)
body = (x / (0.45 * shape[2] * 0.98)) ** 2 + (y / (0.35 * shape[1] * 0.98)) ** 2 <= 1
hu = np.broadcast_to(np.where(body, 40, -1000), shape).astype(np.int16)
ct = Volume(hu, spacing, origin)
sp_shape = tuple(max(int(n * s / 4.8), 4) for n, s in zip(shape, spacing[::-1]))
sp_origin = tuple(-(n - 1) / 2 * 4.8 for n in sp_shape[::-1])
act = np.zeros(sp_shape, np.float32)
c = [n // 2 for n in sp_shape]
act[c[0] - 2:c[0] + 2, c[1] - 3:c[1] + 3, c[2] - 3:c[2] + 3] = 2e5
spect = Volume(act, (4.8,) * 3, sp_origin)
import torch  # noqa: F401  (imported before the baseline is taken, as the CLI has)
if method == "cnn":
    from DblurDoseLib.learning.inference import load_model
    load_model(device="cpu")
with open("/proc/self/clear_refs", "w") as f:  # peak RSS (VmHWM) reset to the resident size now
    f.write("5")
before = resident_bytes()
report = {}
maps = compute_dose_rate_maps(spect, ct, (method,), device="cpu", memory_gb=memory_gb, activity_range_mbq=None,
                              report=report)
peak = peak_resident_bytes()
out = maps[method].array
np.save(sys.argv[4], out) if len(sys.argv) > 4 else None
inputs = ct.array.nbytes + spect.array.nbytes
print(json.dumps({"before": before, "peak": peak, "inputs": inputs, **report["memory"]}))
"""


def measure(shape, method: str, memory_gb: float = 8.0, save: str | None = None) -> dict:
    """Run compute_dose_rate_maps in a fresh process (CPU, 2 threads); its peak RSS and the estimate (bytes, GB)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    args = [sys.executable, "-c", _CHILD, json.dumps(list(shape)), method, str(memory_gb)] + ([save] if save else [])
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # the arrays: measured peak above the process without its inputs, against the estimate less its base
    result["measured_arrays"] = result["peak"] - result["before"] + result["inputs"]
    result["estimated_arrays"] = (result["estimate_gb"] - result["base_gb"]) * 1e9
    return result


needs_proc = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")


@needs_proc
@pytest.mark.parametrize("shape, method", [((64, 128, 128), "dvk"), ((64, 128, 128), "cnn")])
def test_estimate_matches_measured_peak(shape, method):
    if method == "cnn" and not weights_installed():
        pytest.skip("no shipped weights")
    r = measure(shape, method)
    ratio = r["estimated_arrays"] / r["measured_arrays"]
    assert 1 - TOLERANCE <= ratio <= 1 + TOLERANCE, r
    assert r["estimate_gb"] <= r["budget_gb"]


def test_issue_size_fits_8_gb_and_is_refused_at_half_a_gb():
    """512x512x600 CT (0.98x0.98x3 mm, 16-bit HU) with the CNN: planned from shapes only, nothing allocated."""
    from DblurDoseLib.learning.inference import working_shape

    ct_shape, spect_shape, kernel = (600, 512, 512), (81, 128, 128), [(99, 99, 99)]
    work = working_shape(ct_shape, (0.98, 0.98, 3.0), (1.96, 1.96, 3.0))
    fits = plan_memory(ct_shape, spect_shape, ("dvk", "cnn"), kernel, work_shape=work, memory_gb=8, base_bytes=0.4e9)
    assert fits.estimate <= 8e9 and fits.chunk >= 1
    small = plan_memory(ct_shape, spect_shape, ("dvk", "cnn"), kernel, work_shape=work, memory_gb=0.5,
                        base_bytes=0.4e9)
    with pytest.raises(OutOfMemoryError) as info:
        check_memory(small)
    message = str(info.value)
    assert "\n" not in message and f"{small.estimate / 1e9:.1f} GB" in message and info.value.settings == ("memory_gb",) and "memory budget" in message
    assert "crop the CT" in message


def test_refused_before_any_work(monkeypatch):
    """compute_dose_rate_maps refuses before the resampling when the budget is too small."""
    from DblurDoseLib import dose
    from DblurDoseLib.io.volume import Volume

    def no_resampling(*args, **kwargs):
        raise AssertionError("the run was not refused up front")

    monkeypatch.setattr(dose, "resample_activity", no_resampling)
    hu = np.full((20, 40, 40), -1000, np.int16)
    hu[2:-2, 5:-5, 5:-5] = 40
    ct = Volume(hu, (0.98, 0.98, 3.0), (0, 0, 0))
    spect = Volume(np.full((8, 8, 8), 1e5, np.float32), (4.8,) * 3, (0, 0, 0))
    with pytest.raises(OutOfMemoryError, match="not enough memory for this run"):
        dose.compute_dose_rate_maps(spect, ct, ("dvk",), device="cpu", memory_gb=0.01, activity_range_mbq=None)


def test_refused_beyond_available_memory(monkeypatch):
    from DblurDoseLib import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 1e6)
    plan = plan_memory((20, 64, 64), (8, 8, 8), ("dvk",), [(9, 9, 9)], memory_gb=8, base_bytes=0.0)
    with pytest.raises(OutOfMemoryError, match="available"):
        check_memory(plan)


def test_smaller_budget_smaller_chunk_same_map():
    """The CNN's chunk follows the budget, and chunking changes the map only by float rounding."""
    if not weights_installed():
        pytest.skip("no shipped weights")
    from DblurDoseLib.io.volume import Volume
    from DblurDoseLib.learning.inference import cnn_dose_rate, load_model, working_shape

    model = load_model(device="cpu")
    shape, spacing = (24, 64, 64), (0.98, 0.98, 3.0)
    work = working_shape(shape, spacing, model.config.spacing)
    plans = [plan_memory(shape, (8, 8, 8), ("cnn",), [(5, 5, 5)], work_shape=work, memory_gb=gb, base_bytes=0.0)
             for gb in (0.08 + 0.0035, 8.0)]
    assert 1 <= plans[0].chunk < plans[1].chunk
    rng = np.random.default_rng(0)
    ct = Volume(np.zeros(shape, np.int16), spacing, (0, 0, 0))
    density = np.ones(shape, np.float32)
    activity = ct.with_array(rng.uniform(0, 1e5, shape).astype(np.float32))
    dvk = rng.uniform(0, 1, shape).astype(np.float32)
    maps = [cnn_dose_rate(activity, ct, density, dvk, "cpu", model, max_bytes=p.cnn_bytes).array for p in plans]
    np.testing.assert_allclose(maps[0], maps[1], rtol=1e-5, atol=1e-6 * float(maps[1].max()))


def test_cli_memory_gb_refuses_with_exit_code_3(tmp_path, capsys):
    from DblurDoseLib.cli import main
    from DblurDoseLib.io.volume import Volume, write_volume

    hu = np.full((20, 40, 40), -1000, np.int16)
    hu[2:-2, 5:-5, 5:-5] = 40
    write_volume(Volume(hu, (0.98, 0.98, 3.0), (0, 0, 0)), tmp_path / "ct.nrrd")
    write_volume(Volume(np.full((8, 8, 8), 1e5, np.float32), (4.8,) * 3, (0, 0, 0)), tmp_path / "spect.nrrd")
    code = main(["dose", "--spect", str(tmp_path / "spect.nrrd"), "--ct", str(tmp_path / "ct.nrrd"),
                 "--out", str(tmp_path / "out"), "--any-activity", "--device", "cpu", "--memory-gb", "0.01"])
    err = capsys.readouterr().err
    assert code == 3 and "GB budget" in err and "--memory-gb" in err, err
    assert not list((tmp_path / "out").glob("*.nrrd"))


def test_the_consistency_step_is_counted_where_it_is_the_peak():
    """The CNN map made consistent with the SPECT holds five more float32 volumes beside the two maps: on a
    budget that slabs the DVK's FFT that step is the peak, on a large one the whole FFT stays the peak."""
    from DblurDoseLib.memory import plan_memory

    shape, n = (300, 512, 512), 300 * 512 * 512
    args = (shape, (128, 128, 128), ("dvk", "cnn"), [(31, 31, 31)])
    small = [plan_memory(*args, memory_gb=2, base_bytes=3e8, consistent=c).estimate for c in (False, True)]
    assert small[1] - small[0] > 3 * 4 * n  # at least three float32 volumes more than the plain run's peak
    large = [plan_memory(*args, memory_gb=64, base_bytes=3e8, consistent=c).estimate for c in (False, True)]
    assert large[0] == large[1]
    dvk_only = [plan_memory(*args[:2], ("dvk",), args[3], memory_gb=2, base_bytes=3e8, consistent=c).estimate
                for c in (False, True)]
    assert dvk_only[0] == dvk_only[1]  # no CNN map, nothing to keep consistent
