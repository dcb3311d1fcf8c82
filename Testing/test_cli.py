"""The `dblurdose dose` and `kernel` commands: results, and a clear error for every bad input."""

import numpy as np
import pytest
from conftest import run_dose

from DblurDoseLib.cli import main
from DblurDoseLib.io.volume import read_volume, write_volume


def test_dose_writes_map_and_tables(case):
    tmp, paths, ct, _ = case
    out = tmp / "out"
    assert run_dose(paths, out, "--seg", str(paths["seg"]), "--device", "cpu") == 0
    dose = read_volume(out / "dose_rate_dvk.nrrd")
    assert dose.same_grid(ct)
    assert dose.array.max() > 0 and dose.array[0].max() == 0  # air slab gets nothing
    stats = [line for line in (out / "stats.csv").read_text().splitlines() if not line.startswith("#")]
    assert stats[0].split(",") == ["segment", "method", "volume_mL", "mean_mGy_per_h", "DR10_mGy_per_h",
                                   "DR30_mGy_per_h", "DR70_mGy_per_h", "DR90_mGy_per_h"]
    assert len(stats) == 3  # two labels, one method
    hot = dict(zip(stats[0].split(","), stats[1].split(",")))
    assert float(hot["DR90_mGy_per_h"]) <= float(hot["mean_mGy_per_h"]) <= float(hot["DR10_mGy_per_h"])
    drvh = [line for line in (out / "drvh.csv").read_text().splitlines() if not line.startswith("#")]
    assert drvh[0].split(",")[2:4] == ["dose_rate_low_mGy_per_h", "dose_rate_high_mGy_per_h"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left


def test_existing_output_is_not_overwritten(case):
    tmp, paths, *_ = case
    out = tmp / "out"
    assert run_dose(paths, out) == 0
    before = (out / "dose_rate_dvk.nrrd").read_bytes()
    assert run_dose(paths, out) == 2
    assert (out / "dose_rate_dvk.nrrd").read_bytes() == before
    assert run_dose(paths, out, "--overwrite") == 0


def test_per_mbq_normalisation(case):
    tmp, paths, ct, spect = case
    assert run_dose(paths, tmp / "a") == 0
    assert run_dose(paths, tmp / "b", "--per-mbq") == 0
    a = read_volume(tmp / "a" / "dose_rate_dvk.nrrd").array
    b = read_volume(tmp / "b" / "dose_rate_dvk.nrrd").array
    total_mbq = spect.array.sum(dtype=np.float64) * spect.voxel_volume_ml / 1e6
    i = np.unravel_index(np.argmax(a), a.shape)
    assert b[i] == pytest.approx(a[i] / total_mbq * 1e6 / 3600, rel=1e-4)


def test_stats_columns_name_their_units(case):
    """stats.csv and drvh.csv say what they hold: mGy/h by default, nGy/(MBq s) with --per-mbq."""
    import csv

    tmp, paths, ct, spect = case
    rows = {}
    for name, extra in (("rate", ()), ("per_mbq", ("--per-mbq",))):
        assert run_dose(paths, tmp / name, "--seg", str(paths["seg"]), *extra) == 0
        for table in ("stats", "drvh"):
            text = [line for line in (tmp / name / f"{table}.csv").read_text().splitlines() if not line.startswith("#")]
            rows[name, table] = list(csv.DictReader(text))
    assert "mean_mGy_per_h" in rows["rate", "stats"][0] and "DR10_nGy_per_MBq_s" in rows["per_mbq", "stats"][0]
    assert not any("mGy" in key for key in rows["per_mbq", "stats"][0])
    assert "dose_rate_high_nGy_per_MBq_s" in rows["per_mbq", "drvh"][0]
    total_mbq = spect.array.sum(dtype=np.float64) * spect.voxel_volume_ml / 1e6
    for rate, per_mbq in zip(rows["rate", "stats"], rows["per_mbq", "stats"]):
        assert float(per_mbq["volume_mL"]) == float(rate["volume_mL"])
        assert float(per_mbq["mean_nGy_per_MBq_s"]) == pytest.approx(
            float(rate["mean_mGy_per_h"]) / total_mbq * 1e6 / 3600, rel=1e-4)


def test_counts_with_calibration_equals_bqml(case):
    tmp, paths, ct, spect = case
    cal, dur = 12.5, 1200.0  # cps/MBq, s
    counts = spect.array * spect.voxel_volume_ml / 1e6 * cal * dur
    write_volume(spect.with_array(counts.astype(np.float32)), tmp / "counts.nrrd")
    assert run_dose(paths, tmp / "a") == 0
    p2 = dict(paths, spect=tmp / "counts.nrrd")
    assert run_dose(p2, tmp / "c", "--spect-units", "counts") == 2  # calibration missing
    assert not (tmp / "c").exists()
    assert run_dose(p2, tmp / "c", "--spect-units", "counts", "--calibration", str(cal), "--duration", str(dur)) == 0
    np.testing.assert_allclose(read_volume(tmp / "c" / "dose_rate_dvk.nrrd").array,
                               read_volume(tmp / "a" / "dose_rate_dvk.nrrd").array, rtol=1e-4, atol=1e-6)


def test_huge_finite_spect_is_refused_not_written_as_nan(case, capsys):
    """1e37 Bq/mL is finite, but the dose overflows float32: refused, nothing written (issue 14)."""
    tmp, paths, ct, spect = case
    write_volume(spect.with_array(np.where(spect.array > 0, np.float32(1e37), np.float32(0))), tmp / "huge.nrrd")
    out = tmp / "out"
    assert run_dose(dict(paths, spect=tmp / "huge.nrrd"), out) == 2  # first: far above any patient's activity
    assert "above" in capsys.readouterr().err
    assert run_dose(dict(paths, spect=tmp / "huge.nrrd"), out, "--any-activity") == 2
    assert "NaN or infinite" in capsys.readouterr().err
    assert not out.exists()


def test_hu_calibration_with_nan_density_is_refused(case, capsys):
    tmp, paths, *_ = case
    table = tmp / "hu.csv"
    table.write_text("hu,density\n-1000,0.001\n0,nan\n3000,2.8\n")
    out = tmp / "out"
    assert run_dose(paths, out, "--hu-calibration", str(table)) == 2
    assert "finite" in capsys.readouterr().err
    assert not out.exists()


def test_spect_in_mbqml_given_as_bqml_is_refused(case, capsys):
    tmp, paths, ct, spect = case
    write_volume(spect.with_array(spect.array / 1e6), tmp / "mbqml.nrrd")
    p2 = dict(paths, spect=tmp / "mbqml.nrrd")
    assert run_dose(p2, tmp / "out") == 2
    assert "--spect-units" in capsys.readouterr().err
    assert not (tmp / "out").exists()
    assert run_dose(p2, tmp / "ok", "--spect-units", "mbqml") == 0
    assert run_dose(paths, tmp / "ref") == 0
    np.testing.assert_allclose(read_volume(tmp / "ok" / "dose_rate_dvk.nrrd").array,
                               read_volume(tmp / "ref" / "dose_rate_dvk.nrrd").array, rtol=1e-4, atol=1e-6)


def test_negative_activity_clipped_on_request(case):
    tmp, paths, ct, spect = case
    arr = spect.array.copy()
    arr[12, 12, 12] = -5e5
    write_volume(spect.with_array(arr), tmp / "bad.nrrd")
    assert run_dose(dict(paths, spect=tmp / "bad.nrrd"), tmp / "out", "--clip-negative") == 0


def test_unknown_nuclide(tmp_path, capsys):
    code = main(["kernel", "--nuclide", "Tc-99m", "--spacing", "4.8", "4.8", "4.8", "--out", str(tmp_path / "k.nrrd")])
    assert code == 2
    assert "Tc-99m" in capsys.readouterr().err
    assert not (tmp_path / "k.nrrd").exists()


def test_kernel_command_writes_centred_kernel(tmp_path):
    out = tmp_path / "k.nrrd"
    assert main(["kernel", "--nuclide", "Lu-177", "--spacing", "4.8", "4.8", "4.8", "--size", "11",
                 "--part", "electron", "--out", str(out)]) == 0
    k = read_volume(out)
    assert k.shape == (11, 11, 11)
    assert np.unravel_index(np.argmax(k.array), k.shape) == (5, 5, 5)
    np.testing.assert_allclose(k.spacing, (4.8, 4.8, 4.8))


def test_cnn_with_a_model_file(case):
    """--model replaces the shipped weights: a network with a zero output layer gives back the DVK."""
    from DblurDoseLib.learning.network import DblurDoseNet, ModelConfig, save_model, zero_correction

    tmp, paths, ct, _ = case
    model = save_model(zero_correction(DblurDoseNet(ModelConfig(spacing=ct.spacing))), tmp / "fresh.pt")
    out = tmp / "out"
    assert run_dose(paths, out, "--method", "all", "--model", str(model), "--device", "cpu") == 0
    dvk, cnn = (read_volume(out / f"dose_rate_{m}.nrrd").array for m in ("dvk", "cnn"))
    assert dvk.max() > 0
    np.testing.assert_allclose(cnn, dvk, rtol=1e-5, atol=1e-6 * dvk.max())


def test_missing_model_file_is_refused_before_any_work(case, capsys):
    tmp, paths, _, _ = case
    out = tmp / "out"
    assert run_dose(paths, out, "--method", "cnn", "--model", str(tmp / "nope.pt")) == 2
    err = capsys.readouterr().err
    assert "weights not found" in err and "dblurdose train" in err
    assert not out.exists() or not any(out.iterdir())


def _parsers(parser):
    """``parser`` and every sub-command's parser below it, with their command names."""
    import argparse

    yield "dblurdose", parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                for path, found in _parsers(sub):
                    yield f"{name} {path}".replace(" dblurdose", ""), found


def test_every_option_of_every_command_has_help():
    from DblurDoseLib.cli import build_parser

    parsers = dict(_parsers(build_parser()))
    assert {"dose", "dosimetry", "kernel", "demo", "data generate", "train", "evaluate"} <= set(parsers)
    missing = [f"{name}: {action.option_strings or action.dest}" for name, parser in parsers.items()
               for action in parser._actions if not (action.help or "").strip()]
    assert not missing, missing


def test_version_is_written_once_and_matches_the_shipped_weights(capsys):
    import re
    from pathlib import Path

    from DblurDoseLib import __version__
    from DblurDoseLib.cli import main

    root = Path(__file__).resolve().parents[1]
    pyproject = (root / "pyproject.toml").read_text()
    assert not re.search(r'^version\s*=\s*"', pyproject, re.M)  # no second copy of the version
    assert 'version = { attr = "DblurDoseLib.__version__" }' in pyproject
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"dblurdose {__version__}"
    card = (root / "DblurDoseLib" / "data" / "models" / "MODEL_CARD.md").read_text().splitlines()[0]
    weights = re.search(r"\(v(\d+\.\d+)\)", card).group(1)
    assert __version__.startswith(weights + ".")


def test_dose_lists_what_it_wrote_unless_quiet(case, capsys):
    tmp, paths, *_ = case
    out = tmp / "out"
    assert main(["dose", "--spect", str(paths["spect"]), "--ct", str(paths["ct"]), "--out", str(out),
                 "--seg", str(paths["seg"]), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [str(out / name) for name in ("dose_rate_dvk.nrrd", "stats.csv", "drvh.csv")]
    assert "activity in the CT field" in captured.err and "[100%] done" in captured.err
    provenance = read_volume(out / "dose_rate_dvk.nrrd").metadata
    assert provenance["spect_units_from"] and len(provenance["input_seg_sha256"]) == 64


def test_dose_and_dosimetry_take_the_same_unit_and_output_options():
    from DblurDoseLib.cli import build_parser

    parsers = dict(_parsers(build_parser()))
    options = {name: {o: a for a in parsers[name]._actions for o in a.option_strings} for name in ("dose", "dosimetry")}
    for flag in ("--spect-units", "--calibration", "--duration", "--overwrite", "--dicom-out", "--quiet", "--device"):
        dose, dosimetry = options["dose"][flag], options["dosimetry"][flag]
        assert (dose.choices, dose.type, dose.default) == (dosimetry.choices, dosimetry.type, dosimetry.default), flag
    assert "SPECT's" in options["dose"]["--spect-units"].help
    assert "SPECTs'" in options["dosimetry"]["--spect-units"].help
    assert "Parametric Map" in options["dose"]["--dicom-out"].help
    assert "RT Dose" in options["dosimetry"]["--dicom-out"].help


_POLICY_AT_TORCH_IMPORT = """
import os, sys
class Hook:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":  # report the policy OpenMP would read now, and stop before any work
            with open(sys.argv[2], "w") as f:
                f.write(str(os.environ.get("OMP_WAIT_POLICY")))
            os._exit(0)
        return None
sys.meta_path.insert(0, Hook())
from DblurDoseLib.cli import main
main(["demo", "--out", sys.argv[1]])
"""


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE"), ("passive", "passive")])
def test_cli_lets_idle_threads_sleep_unless_the_user_chose(tmp_path, given, expected):
    """OpenMP reads its wait policy when torch loads it: `dblurdose` must set PASSIVE before the first
    torch import (spinning threads made the CNN 2x slower on a shared 2-core machine), and keep a
    policy the user set."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    seen = tmp_path / "policy.txt"
    out = subprocess.run([sys.executable, "-c", _POLICY_AT_TORCH_IMPORT, str(tmp_path / "demo"), str(seen)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert seen.exists(), "the demo never imported torch:\n" + out.stdout + out.stderr
    assert seen.read_text() == expected


def test_passive_policy_is_not_claimed_once_torch_is_loaded():
    import os
    import subprocess
    import sys

    code = ("import os, torch\nfrom DblurDoseLib.devices import prefer_passive_openmp\n"
            "print(prefer_passive_openmp(), os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "None"], out.stdout + out.stderr
