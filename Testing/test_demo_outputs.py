"""What ``dblurdose demo`` writes says what it holds: named segments, units, a glossary and the truth's noise.

Run on a small virtual patient with the SPECT stand-in and the DVK only (the pieces a full demo
adds, pytomography's SPECT and the CNN, do not change these outputs).
"""

import csv

import pytest

from DblurDoseLib import demo
from DblurDoseLib.cli import main

SMALL = (33, 64, 64)
SMALL_SPACING = (7.84, 7.84, 11.8)


def _rows(path):
    return list(csv.DictReader(line for line in path.read_text().splitlines() if not line.startswith("#")))


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    pytest.importorskip("ompmc", reason="needs the mc extra (the Monte Carlo reference)")
    out = tmp_path_factory.mktemp("demo") / "dblurdose-demo"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(demo, "_has", lambda module: module == "ompmc")  # the stand-in SPECT: seconds, not minutes
        mp.setattr("DblurDoseLib.dose.available_methods", lambda: ("dvk",))
        demo.run_demo(out, device="cpu", shape=SMALL, spacing=SMALL_SPACING, decays=200_000)
    return out


def test_demo_segments_carry_organ_names_through_the_cli(demo_out):
    stats = _rows(demo_out / "stats.csv")
    names = {r["segment"] for r in stats}
    assert {"kidney_left", "kidney_right", "liver", "spleen"} <= names
    assert not any(n.startswith("label_") for n in names)
    assert {"volume_mL", "mean_mGy_per_h", "DR10_mGy_per_h"} <= set(stats[0])
    out = demo_out.parent / "cli"
    assert main(["dose", "--spect", str(demo_out / "spect.nrrd"), "--ct", str(demo_out / "ct.nrrd"), "--seg",
                 str(demo_out / "segments.seg.nrrd"), "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    cli = {r["segment"]: r for r in _rows(out / "stats.csv")}
    demo_dvk = {r["segment"]: r for r in stats if r["method"] == "dvk"}
    assert set(cli) == set(demo_dvk)
    for name in ("kidney_left", "liver"):
        assert float(cli[name]["volume_mL"]) == pytest.approx(float(demo_dvk[name]["volume_mL"]))
        assert float(cli[name]["mean_mGy_per_h"]) == pytest.approx(float(demo_dvk[name]["mean_mGy_per_h"]), rel=1e-4)


def test_report_defines_its_terms_and_gives_the_truths_noise(demo_out):
    report = (demo_out / "report.html").read_text()
    for term in ("DR", "NRMSE", "mean error", "DVK", "CNN", "Glossary", "reference noise NRMSE %",
                 "reference mean +-%"):
        assert term in report
    errors = report[report.index("Errors against the Monte Carlo truth"):report.index("All segments")]
    liver = errors[errors.index("<td>liver</td>"):].split("</tr>")[0]
    cells = [float(c.split("</td>")[0]) for c in liver.split("<td>")[2:]]
    mean_unc, floor, nrmse = cells[0], cells[1], cells[3]  # reference mean +-%, noise NRMSE %, dvk mean error, NRMSE
    assert 0 < mean_unc < floor  # the VOI mean is far better known than a voxel
    assert floor <= nrmse * 1.05  # no method beats the truth's own noise (on average)


def test_a_steps_progress_lands_in_its_part_of_the_run():
    seen = []

    def run_progress(fraction, message):
        seen.append((fraction, message))
        return fraction < 0.6  # False: the run asks to stop (a Monte Carlo step cancels)

    step = demo.progress_part(run_progress, 0.5, 0.2, prefix="24 h: ")
    assert step(0.0, "projecting") is True
    assert step(1.0, "reconstructing") is False
    assert seen == [(0.5, "24 h: projecting"), (0.7, "24 h: reconstructing")]
    fixed = demo.progress_part(run_progress, 0.8, 0.1, message="Monte Carlo")
    fixed(0.5)
    assert seen[-1] == (pytest.approx(0.85), "Monte Carlo")


def test_the_demo_keeps_its_cnn_consistent_at_its_known_resolution(tmp_path, monkeypatch):
    """The demo knows its camera: its CNN map is made with the SPECT's Gaussian-equivalent FWHM (the stand-in's
    own Gaussian here), and the report says so; the DVK-only demo passes none."""
    from DblurDoseLib import dose

    seen, real = [], dose.compute_dose_rate_maps

    def recorded(spect, ct, methods, **options):  # the CNN's map stood in by the DVK's: only the call is tested
        seen.append((tuple(methods), options.get("spect_fwhm_mm")))
        maps = real(spect, ct, ("dvk",), **{**options, "spect_fwhm_mm": None})
        return {**maps, "cnn": maps["dvk"]} if "cnn" in methods else maps

    monkeypatch.setattr(demo, "_has", lambda module: False)  # the stand-in SPECT, no Monte Carlo: seconds
    monkeypatch.setattr(dose, "compute_dose_rate_maps", recorded)
    for methods in (("dvk", "cnn"), ("dvk",)):
        monkeypatch.setattr(dose, "available_methods", lambda methods=methods: methods)
        report = demo.run_demo(tmp_path / "-".join(methods), device="cpu", shape=SMALL, spacing=SMALL_SPACING)
        consistent = "kept consistent with the SPECT at its Gaussian-equivalent FWHM, 12 mm" in report.read_text()
        assert consistent == ("cnn" in methods)
    assert seen == [(("dvk", "cnn"), demo.DEMO_SPECT_FWHM_MM), (("dvk",), None)]
