"""``dblurdose demo --timepoints N``: absorbed dose of a virtual patient from N time points against its truth.

Run small (the SPECT stand-in, the DVK only, few Monte Carlo decays) so that it takes seconds;
the full demo adds pytomography's SPECT and the CNN, which do not change what is checked here.
"""

import csv

import numpy as np
import pytest

from DblurDoseLib import demo
from DblurDoseLib.cli import main
from DblurDoseLib.demo_timepoints import DEMO_TIMES_H, run_timepoints_demo
from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.io.volume import read_volume

SMALL = (33, 64, 64)
SMALL_SPACING = (7.84, 7.84, 11.8)


def _rows(path):
    return list(csv.DictReader(line for line in path.read_text().splitlines() if not line.startswith("#")))


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    pytest.importorskip("ompmc", reason="needs the mc extra (the Monte Carlo truth)")
    out = tmp_path_factory.mktemp("demo") / "timepoints"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "_has", lambda module: module == "ompmc")  # the stand-in SPECT: seconds, not minutes
        mp.setattr("DblurDoseLib.dose.available_methods", lambda: ("dvk",))
        report = run_timepoints_demo(out, n_timepoints=4, device="cpu", shape=SMALL, spacing=SMALL_SPACING,
                                     decays=200_000)
    return out, report


def test_writes_every_time_point_the_dose_and_the_truth(small_demo):
    out, report = small_demo
    assert report == out / "report.html" and report.is_file()
    for t in DEMO_TIMES_H:
        assert (out / f"ct_{t:g}h.nrrd").is_file() and (out / f"spect_{t:g}h.nrrd").is_file()
    dose, truth = read_volume(out / "absorbed_dose_dvk.nrrd"), read_volume(out / "true_absorbed_dose.nrrd")
    assert dose.metadata["units"] == "Gy" == truth.metadata["units"] and dose.same_grid(truth)
    assert float(np.asarray(truth.array).max()) > 1.0  # a therapy cycle, in Gy


def test_voi_table_compares_the_dvk_with_the_truth(small_demo):
    out, _ = small_demo
    rows = {r["segment"]: r for r in _rows(out / "doses.csv")}
    assert {"kidney_left", "kidney_right", "liver", "spleen"} <= set(rows)
    assert any(name.startswith("lesion_") for name in rows)
    for name in ("kidney_left", "kidney_right", "liver", "spleen"):
        r = rows[name]
        truth, dvk = float(r["truth_gy"]), float(r["dvk_gy"])
        assert truth > 0 and float(r["dvk_error_pct"]) == pytest.approx(100 * (dvk / truth - 1), abs=1e-3)
        assert 0 < float(r["truth_uncertainty_pct"]) < 10
    # what the CNN is for: the SPECT's blur (12 mm stand-in on 8 mm voxels) spills activity out of small hot
    # VOIs, so the DVK falls short of the truth in the kidneys, the spleen and every lesion (the liver gains
    # what its lesions lose)
    for name, r in rows.items():
        if name.startswith(("kidney", "spleen", "lesion")):
            assert -60 < float(r["dvk_error_pct"]) < -5, name
    report = (out / "report.html").read_text()
    assert "Monte Carlo (ompmc" in report and "tac.png" in report


def test_the_command_line_runs_it_and_refuses_a_bad_count(tmp_path, capsys):
    assert main(["demo", "--timepoints", "7", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "number of time points must be 1 to 4" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(DblurDoseError, match="1 to 4"):
        run_timepoints_demo(tmp_path / "y", n_timepoints=0)
