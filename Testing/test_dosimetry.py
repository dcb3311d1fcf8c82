"""`dblurdose dosimetry`: absorbed dose from SPECT/CT time points, against analytic integrals.

A uniform sphere of activity in a water block, the same geometry at every time point, its
activity ``A0 exp(-ln 2 t / T_eff)``: the dose rate (DVK, linear in the activity) decays the same
way, so the VOI's absorbed dose is ``Ddot(t) exp(lambda t) / lambda / 1000`` Gy exactly.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import water_phantom_ct

from DblurDoseLib import dosimetry
from DblurDoseLib.cli import main
from DblurDoseLib.dose import compute_dose_rate_maps
from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.io.volume import Segment, Volume, read_volume, write_volume

T_EFF_H = 60.0
TIMES_H = (4.0, 24.0, 72.0, 168.0)
SHAPE = (28, 28, 28)
SPACING = (4.8, 4.8, 4.8)
SPHERE_RADIUS_MM = 24.0
A0_BQML = 1e6


def _sphere_mask(ct: Volume, radius_mm: float = SPHERE_RADIUS_MM) -> np.ndarray:
    z, y, x = np.indices(ct.shape)
    centre = (np.asarray(ct.shape) - 1) / 2
    r2 = sum(((a - c) * s) ** 2 for a, c, s in zip((z, y, x), centre, SPACING[::-1]))
    return r2 <= radius_mm**2


def _spect(ct: Volume, time_h: float, mask: np.ndarray) -> Volume:
    a = np.zeros(ct.shape, np.float32)
    a[mask] = A0_BQML * math.exp(-math.log(2) * time_h / T_EFF_H)
    return ct.with_array(a)


def _rate_at_zero(ct: Volume, mask: np.ndarray) -> float:
    """VOI mean DVK dose rate (mGy/h) of the activity at administration."""
    rate = compute_dose_rate_maps(_spect(ct, 0.0, mask), ct, activity_range_mbq=None)["dvk"]
    return float(np.asarray(rate.array)[mask].mean())


def _phantom_ct() -> Volume:
    """A water block with a bone-like and a lung-like insert (registration needs structure inside the body)."""
    ct = water_phantom_ct(SHAPE, SPACING)
    ct.array[5:10, 5:12, 6:22] = 700.0
    ct.array[18:23, 15:23, 5:12] = -350.0
    return ct


@pytest.fixture(scope="module")
def phantom():
    ct = _phantom_ct()
    mask = _sphere_mask(ct)
    return ct, mask, _rate_at_zero(ct, mask)


def _files(folder: Path, ct: Volume, mask: np.ndarray, times=TIMES_H, shift_mm=None) -> dict:
    """Write the time points (and a labelmap: 1 = the sphere) under ``folder``; paths by name."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = ct.with_array(mask.astype(np.int16))
    paths = {"seg": write_volume(labels, folder / "labels.nrrd"), "timepoints": []}
    for i, t in enumerate(times):
        spect, this_ct = _spect(ct, t, mask), ct
        if shift_mm is not None and i == len(times) - 1:  # the last time point acquired elsewhere in space
            origin = tuple(np.add(ct.origin, shift_mm))
            this_ct = Volume(ct.array, ct.spacing, origin)
            spect = Volume(spect.array, ct.spacing, origin)
        paths["timepoints"].append((write_volume(spect, folder / f"spect_{i}.nrrd"),
                                    write_volume(this_ct, folder / f"ct_{i}.nrrd"), t))
    return paths


def _run(paths: dict, out: Path, *extra, times=None) -> int:
    args = ["dosimetry", "--seg", str(paths["seg"]), "--out", str(out), "--quiet", "--any-activity"]
    for (spect, ct, t), given in zip(paths["timepoints"], times or [None] * len(paths["timepoints"])):
        args += ["--timepoint", str(spect), str(ct), str(t if given is None else given)]
    return main(args + list(extra))


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(line for line in path.read_text().splitlines() if not line.startswith("#")))


@pytest.fixture(scope="module")
def four_points(phantom, tmp_path_factory):
    """One `dblurdose dosimetry` run on four time points (registration none); its folder and inputs."""
    ct, mask, _ = phantom
    tmp = tmp_path_factory.mktemp("four")
    paths = _files(tmp / "in", ct, mask)
    assert _run(paths, tmp / "out", "--register", "none") == 0
    return tmp / "out", paths


# --- (1), (2), (5): the analytic integral, the half-life, the outputs --------------------------

def test_voi_dose_equals_analytic_integral(four_points, phantom):
    out, _ = four_points
    _, _, rate0 = phantom
    expected = rate0 * T_EFF_H / math.log(2) / 1000.0
    row = _rows(out / "doses.csv")[0]
    assert float(row["mean_dose_gy"]) == pytest.approx(expected, rel=0.02)
    assert float(row["map_mean_dose_gy"]) == pytest.approx(expected, rel=0.02)  # voxel fits agree with the VOI's
    assert float(row["D98_gy"]) <= float(row["D50_gy"]) <= float(row["D2_gy"])


def test_mono_exponential_half_life_recovered(four_points):
    out, _ = four_points
    row = _rows(out / "doses.csv")[0]
    assert row["fit"] == "mono"
    assert float(row["effective_half_life_h"]) == pytest.approx(T_EFF_H, rel=0.01)
    assert row["fallback"] == "False"


def test_outputs_columns_and_provenance(four_points, phantom):
    out, paths = four_points
    ct, mask, _ = phantom
    dose = read_volume(out / "absorbed_dose_dvk.nrrd")
    assert dose.same_grid(ct)
    assert dose.metadata["units"] == "Gy" and dose.metadata["method"] == "dvk"
    assert "timepoint2_registration" in dose.metadata and "input_timepoint4_spect_sha256" in dose.metadata
    assert list(_rows(out / "doses.csv")[0])[:4] == ["segment", "volume_ml", "mean_dose_gy",
                                                     "mean_dose_uncertainty_gy"]
    for name in ("D2_gy", "D50_gy", "D98_gy", "bed_gy", "fit", "effective_half_life_h", "fallback", "reason"):
        assert name in _rows(out / "doses.csv")[0]
    tac = _rows(out / "tac.csv")
    assert [float(r["time_h"]) for r in tac] == list(TIMES_H)
    activity = A0_BQML * mask.sum() * ct.voxel_volume_ml / 1e6 * math.exp(-math.log(2) * 24.0 / T_EFF_H)
    assert float(tac[1]["activity_mbq"]) == pytest.approx(activity, rel=1e-4)
    dvh = _rows(out / "dvh.csv")
    assert float(dvh[0]["cumulative_fraction"]) == pytest.approx(1.0)
    for name in ("doses.csv", "tac.csv", "dvh.csv"):
        head = (out / name).read_text().splitlines()[:60]
        assert any(line.startswith("# dblurdose_version:") for line in head), name
        assert any(line.startswith("# voi_label_1_fit: mono") for line in head), name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    report = (out / "report.html").read_text()
    assert "VOI absorbed doses" in report and "input_timepoint1_spect_sha256" in report
    assert (out / "tac.png").stat().st_size > 0 and (out / "absorbed_dose.png").stat().st_size > 0


def test_existing_outputs_refused_without_overwrite(four_points, tmp_path, capsys):
    import shutil

    out = shutil.copytree(four_points[0], tmp_path / "out")
    paths = four_points[1]
    (out / "absorbed_dose_cnn.nrrd").write_bytes(b"an earlier run's map")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert _run(paths, out, "--register", "none") == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _run(paths, out, "--register", "none", "--overwrite") == 0
    assert not (out / "absorbed_dose_cnn.nrrd").exists()  # no mix of two runs' results
    assert "removed" in capsys.readouterr().err


# --- (3) a shifted time point, registered --------------------------------------------------------

def test_shifted_time_point_registered_rigidly(phantom, tmp_path):
    ct, mask, rate0 = phantom
    times = (24.0, 96.0)
    paths = _files(tmp_path / "in", ct, mask, times, shift_mm=(9.0, -6.0, 4.0))
    assert _run(paths, tmp_path / "out", "--register", "rigid", "--fit", "mono") == 0
    row = _rows(tmp_path / "out" / "doses.csv")[0]
    expected = rate0 * T_EFF_H / math.log(2) / 1000.0
    assert float(row["mean_dose_gy"]) == pytest.approx(expected, rel=0.03)
    tac = _rows(tmp_path / "out" / "tac.csv")
    total = A0_BQML * mask.sum() * ct.voxel_volume_ml / 1e6
    assert float(tac[1]["activity_mbq"]) == pytest.approx(total * 2 ** (-96.0 / T_EFF_H), rel=0.05)
    header = (tmp_path / "out" / "doses.csv").read_text()
    assert "# timepoint2_registration: rigid: body Dice" in header


# --- (4) one time point --------------------------------------------------------------------------

def test_single_time_point_haenscheid_at_t_eff(phantom, tmp_path):
    ct, mask, rate0 = phantom
    paths = _files(tmp_path / "in", ct, mask, (T_EFF_H,))
    assert _run(paths, tmp_path / "out", "--register", "none", "--single-time-point", "haenscheid") == 0
    row = _rows(tmp_path / "out" / "doses.csv")[0]
    expected = rate0 * T_EFF_H / math.log(2) / 1000.0
    assert row["fit"] == "hanscheid"
    assert float(row["mean_dose_gy"]) == pytest.approx(expected, rel=0.02)
    assert float(row["map_mean_dose_gy"]) == pytest.approx(expected, rel=0.02)


# --- library: BED for named VOIs, fit failure falls back ------------------------------------------

def _points(ct: Volume, mask: np.ndarray, times=(24.0, 96.0, 168.0)) -> list:
    return [dosimetry.TimePoint(_spect(ct, t, mask), ct, t, f"time point {i + 1}") for i, t in enumerate(times)]


def test_bed_for_kidney_names_and_fallback_when_fits_fail(phantom, monkeypatch):
    from DblurDoseLib.physics import time_integration
    from DblurDoseLib.physics.radiobiology import bed

    ct, mask, _ = phantom
    points = _points(ct, mask)
    result = dosimetry.absorbed_dose(points, [Segment("left kidney", mask)], register="none",
                                     activity_range_mbq=None)
    voi = result.vois[0]
    assert voi.bed_tissue == "kidneys"
    assert voi.bed_gy == pytest.approx(float(bed(voi.integral.dose_gy, T_EFF_H, tissue="kidneys")), rel=0.01)

    assert "voi_left_kidney_fit" in result.provenance
    low = dosimetry.absorbed_dose(points[:2], [Segment("kidney", mask)], register="none", activity_range_mbq=None,
                                  administered_mbq=1.0)
    assert any("more than the 1 MBq administered" in w for w in low.warnings)
    assert low.provenance["administered_mbq"] == "1"

    monkeypatch.setattr(time_integration, "_fit_model", lambda *a, **k: None)  # no model converges
    failed = dosimetry.absorbed_dose(points, [Segment("tumour", mask)], register="none", activity_range_mbq=None)
    row = dosimetry.dose_rows(failed)[0]
    assert row["fallback"] and row["fit"] == "trapezoid" and "fit failed" in row["reason"]
    assert math.isnan(row["bed_gy"])
    assert any("fit failed" in w for w in failed.warnings)


def test_madsen_uses_the_population_half_life_of_the_voi(phantom):
    from DblurDoseLib.physics.time_integration import population_half_life

    ct, mask, rate0 = phantom
    t_kidney = population_half_life("kidneys")
    spect = ct.with_array(np.where(mask, A0_BQML * 2 ** (-t_kidney / T_EFF_H), 0).astype(np.float32))
    point = dosimetry.TimePoint(spect, ct, t_kidney * 1.7, "time point 1")
    result = dosimetry.absorbed_dose([point], [Segment("kidneys", mask)], single_time_point="madsen",
                                     register="none", activity_range_mbq=None)
    voi = result.vois[0]
    rate = voi.dose_rates_mgy_h[0]
    assert voi.integral.model == "prior-half-life"
    expected = rate * 2 ** (1.7) * t_kidney / math.log(2) / 1000.0
    assert voi.integral.dose_gy == pytest.approx(expected, rel=1e-6)
    assert voi.map_mean_gy == pytest.approx(expected, rel=1e-4)
    assert rate == pytest.approx(rate0 * 2 ** (-t_kidney / T_EFF_H), rel=1e-4)

    other = dosimetry.absorbed_dose([point], [Segment("label_1", mask)], single_time_point="madsen",
                                    register="none", activity_range_mbq=None).vois[0]  # no population value
    assert other.integral.model == "hanscheid" and other.fallback and "no population half-life" in other.integral.reason


def test_trapezoid_fit_for_voi_and_voxels(four_points, tmp_path):
    _, paths = four_points
    assert _run(paths, tmp_path / "out", "--register", "none", "--fit", "trapezoid") == 0
    row = _rows(tmp_path / "out" / "doses.csv")[0]
    assert row["fit"] == "trapezoid" and row["fallback"] == "False"
    assert float(row["map_mean_dose_gy"]) == pytest.approx(float(row["mean_dose_gy"]), rel=1e-4)


def test_fit_failure_is_reported_and_written(phantom, tmp_path, monkeypatch, capsys):
    from DblurDoseLib.physics import time_integration

    ct, mask, _ = phantom
    paths = _files(tmp_path / "in", ct, mask, (24.0, 96.0, 168.0))
    monkeypatch.setattr(time_integration, "_fit_model", lambda *a, **k: None)
    assert _run(paths, tmp_path / "out", "--register", "none") == 0
    assert "warning: VOI label_1: fit failed" in capsys.readouterr().err
    row = _rows(tmp_path / "out" / "doses.csv")[0]
    assert row["fallback"] == "True" and row["fit"] == "trapezoid"


# --- (6) bad input: one line naming the fix, nothing written --------------------------------------

def _snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def refused(capsys, paths: dict, out: Path, *extra, match: str, times=None) -> str:
    """Run ``dosimetry``; assert a clean refusal (exit 2, one line naming ``match``) that wrote nothing."""
    folder = Path(paths["seg"]).parent
    before = _snapshot(folder)
    capsys.readouterr()
    assert _run(paths, out, *extra, times=times) == 2
    err = capsys.readouterr().err
    assert match in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert _snapshot(folder) == before
    assert not out.exists()
    return err


@pytest.fixture
def three_points(phantom, tmp_path):
    ct, mask, _ = phantom
    return _files(tmp_path / "in", ct, mask, (24.0, 96.0, 168.0))


@pytest.mark.parametrize("times,match", [
    ((96.0, 24.0, 168.0), "not in increasing order"),
    ((24.0, 24.0, 168.0), "duplicate"),
    ((0.0, 24.0, 168.0), "not after administration"),
    ((-3.0, 24.0, 168.0), "not after administration"),
    (("day1", 24.0, 168.0), "is not a number"),
])
def test_bad_times_refused(three_points, tmp_path, capsys, times, match):
    refused(capsys, three_points, tmp_path / "out", "--register", "none", times=times, match=match)


def test_single_time_point_needs_a_method(phantom, tmp_path, capsys):
    ct, mask, _ = phantom
    paths = _files(tmp_path / "in", ct, mask, (24.0,))
    refused(capsys, paths, tmp_path / "out", "--register", "none", match="choose a single-time-point method, haenscheid")


def test_time_point_outside_the_reference_refused(phantom, tmp_path, capsys):
    ct, mask, _ = phantom
    paths = _files(tmp_path / "in", ct, mask, (24.0, 96.0), shift_mm=(500.0, 0.0, 0.0))
    refused(capsys, paths, tmp_path / "out", "--register", "none", match="reference body lies in its field")


def test_time_point_covering_another_region_refused(phantom, tmp_path, capsys):
    ct, mask, _ = phantom
    paths = _files(tmp_path / "in", ct, mask, (24.0, 96.0))
    slab = Volume(ct.array[:6], ct.spacing, ct.origin)  # 6 of 28 slices: most of the reference body is outside
    spect = Volume(_spect(ct, 96.0, mask).array[:6], ct.spacing, ct.origin)
    spect.array[2:4, 10:14, 10:14] = A0_BQML
    paths["timepoints"][1] = (write_volume(spect, tmp_path / "in" / "slab_spect.nrrd"),
                              write_volume(slab, tmp_path / "in" / "slab_ct.nrrd"), 96.0)
    err = refused(capsys, paths, tmp_path / "out", "--register", "rigid", match="time point 2 (96 h)")
    assert "reference body lies in its field" in err


def test_failed_registration_refused(three_points, tmp_path, capsys, monkeypatch):
    def fail(moving, reference, mode, label=""):
        raise DblurDoseError(f"registration of the {label} CT to the reference CT failed (test); pre-align them")

    monkeypatch.setattr(dosimetry, "register_ct", fail)
    refused(capsys, three_points, tmp_path / "out", "--register", "rigid", match="time point 2 (96 h) CT")


def test_ct_without_body_refused_by_registration(three_points, tmp_path, capsys, phantom):
    ct, _, _ = phantom
    air = write_volume(ct.with_array(np.full(ct.shape, -1000.0, np.float32)), tmp_path / "in" / "air_ct.nrrd")
    spect, _, t = three_points["timepoints"][1]
    paths = dict(three_points, timepoints=[three_points["timepoints"][0], (spect, air, t),
                                           three_points["timepoints"][2]])
    refused(capsys, paths, tmp_path / "out", "--register", "rigid", match="shows no body")


# --- DICOM input, as for `dblurdose dose` --------------------------------------------------------

def test_dicom_time_point(phantom, tmp_path):
    from test_dicom import ct_series, nm_from_volume

    ct, mask, rate0 = phantom
    paths = _files(tmp_path / "in", ct, mask, (24.0, 96.0))
    (tmp_path / "ct_dicom").mkdir()
    ct_series(tmp_path / "ct_dicom", ct)
    nm = nm_from_volume(tmp_path / "nm.dcm", _spect(ct, 24.0, mask))
    paths["timepoints"][0] = (nm, tmp_path / "ct_dicom", 24.0)
    assert _run(paths, tmp_path / "out", "--register", "none") == 0
    row = _rows(tmp_path / "out" / "doses.csv")[0]
    assert float(row["mean_dose_gy"]) == pytest.approx(rate0 * T_EFF_H / math.log(2) / 1000.0, rel=0.02)
    assert "# input_timepoint1_ct_sha256:" in (tmp_path / "out" / "doses.csv").read_text()


def test_dicom_folder_with_several_ct_series_asks_for_one(phantom, tmp_path, capsys):
    from test_dicom import ct_series

    ct, mask, _ = phantom
    paths = _files(tmp_path / "in", ct, mask, (24.0, 96.0))
    folder = tmp_path / "in" / "study"
    for name in ("CT1", "CT2"):
        (folder / name).mkdir(parents=True)
        ct_series(folder / name, ct, description=name)
    paths["timepoints"][1] = (paths["timepoints"][1][0], folder, 96.0)
    err = refused(capsys, paths, tmp_path / "out", "--register", "none", match="holds 2 series for the CT")
    assert "give that time point's CT series folder or file in --timepoint" in err and "--ct-series" not in err


# --- times as date-times, the calibration's uncertainty, earlier cycles ---------------------------

def test_date_times_give_the_same_doses_as_hours(four_points, tmp_path):
    import datetime

    out, paths = four_points
    start = datetime.datetime(2026, 12, 1, 9, 30)
    when = [(start + datetime.timedelta(hours=t)).isoformat() for t in TIMES_H]
    assert _run(paths, tmp_path / "dt", "--register", "none", "--administration-time", start.isoformat(),
                times=when) == 0
    for a, b in zip(_rows(out / "doses.csv"), _rows(tmp_path / "dt" / "doses.csv")):
        assert float(a["mean_dose_gy"]) == pytest.approx(float(b["mean_dose_gy"]), rel=1e-9)


def test_date_times_need_the_administration_time(four_points, tmp_path, capsys):
    _, paths = four_points
    assert _run(paths, tmp_path / "x", times=["2026-12-01T13:30"] * 4) == 2
    assert "give --administration-time too" in capsys.readouterr().err
    assert _run(paths, tmp_path / "x", times=["dicom"] * 4) == 2  # NRRD files record no acquisition time
    assert "records no acquisition date-time" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_dicom_acquisition_time_read_from_the_tags():
    from types import SimpleNamespace

    from DblurDoseLib.io.dicom import acquisition_datetime

    when, source = acquisition_datetime(SimpleNamespace(AcquisitionDateTime="20261202093015.25"))
    assert when.isoformat() == "2026-12-02T09:30:15.250000" and source == "AcquisitionDateTime"
    when, source = acquisition_datetime(SimpleNamespace(SeriesDate="20261202", SeriesTime="0930"))
    assert when.isoformat() == "2026-12-02T09:30:00" and source == "SeriesDate/SeriesTime"
    assert acquisition_datetime(SimpleNamespace(AcquisitionDate="2026", AcquisitionTime="x")) == (None, "")


def test_calibration_uncertainty_adds_in_quadrature(four_points, tmp_path):
    out, paths = four_points
    assert _run(paths, tmp_path / "cal", "--register", "none", "--calibration-uncertainty", "5") == 0
    plain, with_cal = _rows(out / "doses.csv")[0], _rows(tmp_path / "cal" / "doses.csv")[0]
    dose, u_fit = float(plain["mean_dose_gy"]), float(plain["mean_dose_uncertainty_gy"])
    assert float(with_cal["mean_dose_gy"]) == pytest.approx(dose, rel=1e-12)
    assert float(with_cal["mean_dose_uncertainty_gy"]) == pytest.approx(math.hypot(u_fit, 0.05 * dose), rel=1e-6)


def test_earlier_cycles_sum_dose_and_bed(four_points, tmp_path, capsys):
    out, paths = four_points
    assert _run(paths, tmp_path / "cycle2", "--register", "none", "--earlier-cycles", str(out), str(out)) == 0
    this, earlier = _rows(tmp_path / "cycle2" / "doses.csv")[0], _rows(out / "doses.csv")[0]
    assert this["cycles"] == "3"
    assert float(this["cumulative_dose_gy"]) == pytest.approx(3 * float(earlier["mean_dose_gy"]), rel=1e-6)
    bed = this["cumulative_bed_gy"]  # BEDs add over cycles; a VOI without radiobiology parameters has none
    assert (bed == "nan" and earlier["bed_gy"] == "nan") or float(bed) == pytest.approx(3 * float(earlier["bed_gy"]))
    assert _run(paths, tmp_path / "y", "--earlier-cycles", str(tmp_path / "nowhere")) == 2
    assert "no doses.csv there" in capsys.readouterr().err and not (tmp_path / "y").exists()


def test_earlier_cycle_sums_bed_of_named_tissues():
    from DblurDoseLib.dosimetry import add_earlier_cycles

    rows = [{"segment": "kidney", "mean_dose_gy": 4.0, "bed_gy": 5.0}, {"segment": "new", "mean_dose_gy": 1.0,
                                                                         "bed_gy": math.nan}]
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "doses.csv").write_text("# dblurdose_version: x\nsegment,mean_dose_gy,bed_gy\nkidney,3.5,4.25\n")
        out, warnings = add_earlier_cycles(rows, [folder])
    assert out[0]["cumulative_dose_gy"] == pytest.approx(7.5) and out[0]["cumulative_bed_gy"] == pytest.approx(9.25)
    assert math.isnan(out[1]["cumulative_dose_gy"]) and "VOI new is not in the earlier cycle" in warnings[0]


@pytest.mark.parametrize("percent", ["-5", "nan", "100"])
def test_bad_calibration_uncertainty_refused_before_any_work(four_points, tmp_path, capsys, percent):
    _, paths = four_points
    assert _run(paths, tmp_path / "z", "--calibration-uncertainty", percent) == 2
    err = capsys.readouterr().err
    assert "give the calibration uncertainty in percent" in err and err.strip().endswith("[--calibration-uncertainty]") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "z").exists()


def test_registrations_of_an_earlier_result_are_reused(phantom, tmp_path, monkeypatch):
    ct, mask, _ = phantom
    points = [dosimetry.TimePoint(spect=_spect(ct, t, mask), ct=ct, time_h=t) for t in TIMES_H]
    segments = [Segment("sphere", mask)]
    first = dosimetry.absorbed_dose(points, segments, register="rigid", activity_range_mbq=None)
    assert first.registrations[0] is None and all(r is not None for r in first.registrations[1:])
    monkeypatch.setattr(dosimetry, "register_ct", lambda *a, **k: pytest.fail("registered again"))
    again = dosimetry.absorbed_dose(points, segments, registrations=first.registrations, activity_range_mbq=None)
    np.testing.assert_array_equal(again.dose.array, first.dose.array)
    with pytest.raises(DblurDoseError, match="2 registrations were given for 4 time points"):
        dosimetry.absorbed_dose(points, segments, registrations=first.registrations[:2], activity_range_mbq=None)
