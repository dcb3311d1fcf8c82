"""The evaluation's VOIs are the phantoms' one definition, and it reads a data set by io.dataset's names."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.evaluation import evaluate
from DblurDoseLib.io import dataset
from DblurDoseLib.io.volume import Volume, write_volume
from DblurDoseLib.simulation.vois import MIN_LESION_VOXELS, evaluation_vois

NAMES = {1: "liver", 2: "kidney_left", 3: "spleen", 4: "vertebra_L3", 5: "vertebra_T12", 101: "lesion_1",
         102: "lesion_2", 103: "lesion_3"}
LESIONS = [{"label": 101, "name": "lesion_1", "organ": "liver"}, {"label": 102, "name": "lesion_2", "organ": "lung"},
           {"label": 103, "name": "lesion_3", "organ": "liver"}]


def labelmap() -> np.ndarray:
    labels = np.zeros((6, 10, 10), np.int16)
    labels[:, :5, :5] = 1  # liver
    labels[1:3, 1:3, 1:3] = 101  # a liver lesion of 8 voxels
    labels[4, 1, 1] = 103  # a liver lesion of one voxel: too small to evaluate, still part of the liver
    labels[:, 6:, 6:] = 2
    labels[:2, 6:, :3] = 3
    labels[3:, 6:, :3] = 4
    labels[0, 0, 8] = 5
    labels[2:4, 7:9, 4:6] = 102  # a lung lesion of 8 voxels
    return labels


def test_liver_is_the_whole_organ_and_healthy_liver_the_label():
    labels = labelmap()
    vois = evaluation_vois(labels, NAMES, LESIONS)
    assert list(vois) == ["lesion:lesion_1", "lesion:lesion_2", "kidney_left", "healthy_liver", "liver", "spleen",
                          "lumbar_L2_L5"]
    np.testing.assert_array_equal(vois["healthy_liver"], labels == 1)
    np.testing.assert_array_equal(vois["liver"], np.isin(labels, [1, 101, 103]))  # not the lung's lesion
    np.testing.assert_array_equal(vois["lumbar_L2_L5"], labels == 4)  # T12 is not lumbar
    assert int(vois["lesion:lesion_1"].sum()) == MIN_LESION_VOXELS
    assert "lesion:lesion_3" in evaluation_vois(labels, NAMES, LESIONS, min_lesion_voxels=1)


def test_evaluate_vois_read_labels_json_with_the_same_definition():
    labels = labelmap()
    meta = json.loads(json.dumps({"label_names": {str(k): v for k, v in NAMES.items()}, "info": {"lesions": LESIONS}}))
    found = evaluate.vois(labels, meta)
    expected = evaluation_vois(labels, NAMES, LESIONS)
    assert list(found) == list(expected)
    for name in expected:
        np.testing.assert_array_equal(found[name], expected[name])
    assert evaluate.group_of("lesion:lesion_1") == "lesion" and evaluate.group_of("liver") == "liver"
    assert not hasattr(evaluate, "PAPER")


def test_evaluate_reads_the_data_set_layout(tmp_path, monkeypatch):
    """One test phantom written with io.dataset's names: evaluate finds every file, with the DVK standing in
    for the CNN, and an "ood" evaluation asks for the reconstructions it lacks."""
    from DblurDoseLib.learning import inference

    labels = labelmap()
    spacing = (4.0, 4.0, 4.0)
    folder = tmp_path / dataset.phantom_key(0)
    folder.mkdir()
    truth = np.where(labels > 0, 2.0, 0.1).astype(np.float32)
    volumes = {"hu": np.zeros(labels.shape, np.float32), "density": np.ones(labels.shape, np.float32),
               "labels": labels}
    for name, array in volumes.items():
        write_volume(Volume(array, spacing), folder / dataset.volume_file(name))
    write_volume(Volume(truth, spacing), folder / dataset.truth_file())
    (folder / dataset.LABEL_NAMES).write_text(json.dumps({"label_names": {str(k): v for k, v in NAMES.items()},
                                                           "info": {"lesions": LESIONS}}))
    for r in range(2):
        write_volume(Volume(truth, spacing), folder / dataset.realisation_file("spect", r))
        write_volume(Volume(truth * np.float32(1.1 + 0.1 * r), spacing), folder / dataset.realisation_file("dvk", r))
    manifest = {"phantoms": {"p00": {"split": "test", "realisations": 2}}}
    (tmp_path / dataset.MANIFEST).write_text(json.dumps(manifest))
    from types import SimpleNamespace

    stand_in = SimpleNamespace(residual=True, config=SimpleNamespace(correction="ratio", deconvolution_iterations=0,
                                                                      fwhm_input=False))
    monkeypatch.setattr(inference, "load_model", lambda *a, **k: stand_in)
    def stand_in_cnn(spect, hu, density, dvk, device, model, **kw):  # the DVK, held at the floor on the first slice
        return hu.with_array(np.concatenate([0.05 * dvk[:1], dvk[1:]]).astype(np.float32))

    monkeypatch.setattr(inference, "cnn_dose_rate", stand_in_cnn)
    results = evaluate.evaluate(tmp_path, log=lambda m: None, device="cpu", out=tmp_path / "report")
    phantom = results["phantoms"]["p00"]
    kidney = phantom["vois"]["kidney_left"]
    assert kidney["dvk"]["mean_error"] == pytest.approx(15.0, rel=1e-4)  # the mean of 10% and 20%
    assert kidney["dvk"]["signed_error"] == pytest.approx(15.0, rel=1e-4)
    assert "mc" not in kidney and results["families"] == {"p00": "anatomical"}
    # energy: the DVK deposits 1.1 and 1.2 times the truth's power (density 1 everywhere)
    assert phantom["power"]["dvk"] == pytest.approx(1.15, rel=1e-5)
    assert phantom["power_by_medium"]["dvk"] == pytest.approx({"soft tissue": 1.15}, rel=1e-5)  # all soft tissue
    assert phantom["power_share"]["soft tissue"] == pytest.approx(1.0) and phantom["power_share"]["lung"] == 0
    assert results["summary"]["power_by_medium"]["dvk"]["soft tissue"] == pytest.approx(1.15, rel=1e-5)
    # a stand-in CNN that returns the DVK corrects by one constant (zero) everywhere but on its first slice, held
    # at the floor, where the truth is 1/1.1 and 1/1.2 of the DVK (an overshoot): flagged with the truth it misses
    tissue = truth > 0
    on_floor = tissue[0].sum() / tissue.sum()
    diag = phantom["correction"]["cnn"]
    assert diag["floor_share"] == pytest.approx(on_floor) and diag["constant_share"] == pytest.approx(1 - on_floor)
    assert diag["floor_truth_ratio"] == pytest.approx((1 / 1.1 + 1 / 1.2) / 2, rel=1e-5)
    assert diag["floor_truth_share"] == pytest.approx(truth[0].sum() / truth.sum(), rel=1e-5)
    sizes = results["summary"]["lesion_sizes"]  # lesions 1 and 2: 8 voxels of 64 mm3 each; lesion 3 too small
    assert list(sizes) == ["under 1 mL"] and sizes["under 1 mL"]["lesions"] == 2
    assert sizes["under 1 mL"]["dvk"]["signed_error"] == pytest.approx(15.0, rel=1e-4)
    report = (tmp_path / "report" / "report.md").read_text()
    for heading in ("## Lesions by size", "## Energy", "## CNN correction in tissue", "## Targets"):
        assert heading in report
    # the stand-in CNN is the DVK: no gain over it, and its first slice of tissue at the floor
    targets = {row["target"]: row for row in results["summary"]["targets"]["cnn"]}
    assert targets["lesions' mean error 55% below the DVK's"]["value"].startswith("0% lower")
    assert targets["lesions' mean error 55% below the DVK's"]["met"] is False
    assert targets["tissue at the floor under 0.1% on every phantom"]["met"] is False
    assert targets["mean error below SPECT + Monte Carlo's (lesions, kidneys, liver: the difference)"]["met"] is None
    assert "| soft tissue | 1.000 | 1.150 |" in report and "| lung |" not in report
    with pytest.raises(DblurDoseError, match="have no spect_ood_r0.nrrd.*out-of-mix"):
        evaluate.evaluate(tmp_path, recon="ood", log=lambda m: None, device="cpu")
    # training choices are compared on the validation phantoms, never on the test phantoms
    with pytest.raises(DblurDoseError, match="has no validation phantoms"):
        evaluate.evaluate(tmp_path, split="val", log=lambda m: None, device="cpu")
    manifest["phantoms"]["p00"]["split"] = "val"
    (tmp_path / dataset.MANIFEST).write_text(json.dumps(manifest))
    val = evaluate.evaluate(tmp_path, split="val", log=lambda m: None, device="cpu", out=tmp_path / "val")
    assert val["split"] == "val" and list(val["phantoms"]) == ["p00"]
    assert "validation phantoms: p00" in (tmp_path / "val" / "report.md").read_text()
    # the fit of a model on what it was trained on: the training phantoms, named as such
    manifest["phantoms"]["p00"]["split"] = "train"
    (tmp_path / dataset.MANIFEST).write_text(json.dumps(manifest))
    fit = evaluate.evaluate(tmp_path, split="train", log=lambda m: None, device="cpu", out=tmp_path / "fit")
    assert fit["phantoms"]["p00"]["vois"]["kidney_left"]["dvk"]["mean_error"] == pytest.approx(15.0, rel=1e-4)
    assert "training phantoms: p00" in (tmp_path / "fit" / "report.md").read_text()
    with pytest.raises(DblurDoseError, match="cannot evaluate the 'all' split; choose test, val or train"):
        evaluate.evaluate(tmp_path, split="all", log=lambda m: None, device="cpu")
    manifest["phantoms"]["p00"]["split"] = "val"
    (tmp_path / dataset.MANIFEST).write_text(json.dumps(manifest))
    # a phantom the data job has not finished (SPECT, no truth) is refused, unless left out by index
    unfinished = tmp_path / dataset.phantom_key(1)
    unfinished.mkdir()
    write_volume(Volume(truth, spacing), unfinished / dataset.realisation_file("spect", 0))
    manifest["phantoms"]["p01"] = {"split": "val", "realisations": 2}
    (tmp_path / dataset.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DblurDoseError, match="p01 are not finished"):
        evaluate.evaluate(tmp_path, split="val", log=lambda m: None, device="cpu")
    chosen = evaluate.evaluate(tmp_path, split="val", phantoms=[0], log=lambda m: None, device="cpu")
    assert list(chosen["phantoms"]) == ["p00"]
    assert chosen["phantoms"]["p00"]["vois"]["kidney_left"]["dvk"]["mean_error"] == pytest.approx(15.0, rel=1e-4)
    with pytest.raises(DblurDoseError, match="p03 is not among the validation phantoms .*p00, p01"):
        evaluate.evaluate(tmp_path, split="val", phantoms=[0, 3], log=lambda m: None, device="cpu")
    with pytest.raises(DblurDoseError, match="has no test phantoms"):
        evaluate.evaluate(tmp_path, log=lambda m: None, device="cpu")


def test_the_deconvolution_reference_uses_each_realisations_recorded_chain(tmp_path, monkeypatch):
    """``evaluate(..., deconvolution=[N])`` deconvolves the native SPECT with its chain's Gaussian-equivalent
    FWHM (the chain as the manifest records it) and takes the DVK: on a hot cube blurred by that Gaussian it
    recovers most of what the DVK loses; a manifest without the chain is refused in one line."""
    from scipy.ndimage import gaussian_filter

    from DblurDoseLib.evaluation import resolution
    from DblurDoseLib.evaluation.spheres import dvk_map
    from DblurDoseLib.learning import inference

    spacing, fwhm = (4.0, 4.0, 4.0), 10.0
    labels = np.zeros((24, 32, 32), np.int16)
    labels[2:22, 4:28, 4:28] = 2  # a kidney-sized block of tissue around...
    labels[9:15, 13:19, 13:19] = 101  # ...a 14 mL lesion
    hu = Volume(np.where(labels > 0, 0.0, -1000.0).astype(np.float32), spacing)  # tissue in air
    activity = hu.with_array(np.where(labels == 101, 8e4, np.where(labels > 0, 1e4, 0.0)).astype(np.float32))
    blurred = hu.with_array(gaussian_filter(activity.array, fwhm / 2.3548 / 4.0, mode="reflect"))
    folder = tmp_path / dataset.phantom_key(0)
    folder.mkdir()
    for name, array in {"hu": hu.array, "density": np.ones(labels.shape, np.float32), "labels": labels}.items():
        write_volume(Volume(array, spacing), folder / dataset.volume_file(name))
    write_volume(hu.with_array(dvk_map(activity, hu)), folder / dataset.truth_file())
    for stem in ("spect", "spect_native"):
        write_volume(blurred, folder / dataset.realisation_file(stem, 0))
    write_volume(hu.with_array(dvk_map(blurred, hu)), folder / dataset.realisation_file("dvk", 0))
    (folder / dataset.LABEL_NAMES).write_text(json.dumps({
        "label_names": {"2": "kidney_left", "101": "lesion_1"},
        "info": {"lesions": [{"label": 101, "name": "lesion_1", "organ": "kidney"}]}}))
    chain = {"camera": "siemens-intevo-me", "n_views": 64, "voxel_mm": 4.8}
    recon = {"iterations": 8, "subsets": 4, "postfilter_fwhm_mm": 0.0}
    manifest = {"phantoms": {"p00": {"split": "test", "realisations": 1, "spect": {**chain, "reconstructions": [recon]}}}}
    (tmp_path / dataset.MANIFEST).write_text(json.dumps(manifest))
    asked = []
    monkeypatch.setattr(resolution, "gaussian_equivalent_fwhm", lambda c: asked.append(c) or {"fwhm_mm": fwhm})
    plain = SimpleNamespace(residual=False, config=SimpleNamespace(deconvolution_iterations=0, fwhm_input=False))
    monkeypatch.setattr(inference, "load_model", lambda *a, **k: plain)
    monkeypatch.setattr(inference, "cnn_dose_rate", lambda spect, hu, density, dvk, device, model, **kw: hu.with_array(dvk))
    results = evaluate.evaluate(tmp_path, log=lambda m: None, device="cpu", out=tmp_path / "report", deconvolution=[20])
    assert asked == [{**chain, **recon}]
    lesion = results["phantoms"]["p00"]["vois"]["lesion:lesion_1"]
    assert lesion["dvk"]["signed_error"] < -15, lesion["dvk"]
    assert abs(lesion["dvk_rl20"]["signed_error"]) < 0.5 * abs(lesion["dvk"]["signed_error"]), lesion
    assert "dvk_rl20" in (tmp_path / "report" / "report.md").read_text()
    rl20 = lesion["dvk_rl20"]["signed_error"]
    # a model that deconvolves gets the deconvolved SPECT and its DVK (a stand-in returning its base: dvk_rl20)
    sharp = SimpleNamespace(residual=True, config=SimpleNamespace(correction="floored", deconvolution_iterations=20,
                                                                   fwhm_input=False))
    monkeypatch.setattr(inference, "load_model", lambda *a, **k: sharp)
    results = evaluate.evaluate(tmp_path, log=lambda m: None, device="cpu")
    lesion = results["phantoms"]["p00"]["vois"]["lesion:lesion_1"]
    assert lesion["cnn"]["signed_error"] == pytest.approx(rl20, rel=1e-5)
    # data deconvolve writes those inputs and keeps the chain's FWHM in the data set: measured once, then read
    from DblurDoseLib.data import deconvolve_data_set

    deconvolve_data_set(tmp_path, 20)
    assert len(asked) == 3  # two evaluations above, one data-set run; none after it
    assert json.loads((tmp_path / dataset.RESOLUTION).read_text())[dataset.resolution_key({**chain, **recon})][
        "fwhm_mm"] == fwhm
    files = [folder / dataset.deconvolved_file(stem, 20, 0) for stem in ("spect", "dvk")]
    stamps = [f.stat().st_mtime_ns for f in files]
    deconvolve_data_set(tmp_path, 20)  # resumed: nothing redone
    assert [f.stat().st_mtime_ns for f in files] == stamps and len(asked) == 3
    again = evaluate.evaluate(tmp_path, log=lambda m: None, device="cpu", deconvolution=[20])
    assert len(asked) == 3
    # the files hold what the evaluation computed before (one function makes both)
    assert again["phantoms"]["p00"]["vois"]["lesion:lesion_1"]["cnn"]["signed_error"] == pytest.approx(rl20, abs=0.5)
    # --consistent: the CNN's maps made consistent with the SPECT at the recorded chain's FWHM, as the dose
    # command makes them; on a network that adds nothing (cnn = DVK) one step puts back part of the lesion's loss
    monkeypatch.setattr(inference, "load_model", lambda *a, **k: plain)
    results = evaluate.evaluate(tmp_path, log=lambda m: None, device="cpu", consistent=True, out=tmp_path / "c")
    lesion = results["phantoms"]["p00"]["vois"]["lesion:lesion_1"]
    assert lesion["cnn"]["signed_error"] == pytest.approx(lesion["dvk"]["signed_error"], abs=1e-3)
    assert lesion["dvk"]["signed_error"] + 3 < lesion["consistent_cnn"]["signed_error"] < 0, lesion
    assert "mean_error_vs_dvk" in results["summary"]["improvement"]
    assert results["summary"]["improvement"]["consistent_cnn mean_error_vs_dvk"]["lesion"] > 10
    assert "consistent_cnn" in (tmp_path / "c" / "report.md").read_text() and len(asked) == 3
    # a model that takes the resolution as an input gets each realisation's recorded chain FWHM, none other does
    given = []
    conditioned = SimpleNamespace(residual=False, config=SimpleNamespace(deconvolution_iterations=0, fwhm_input=True))
    monkeypatch.setattr(inference, "load_model", lambda *a, **k: conditioned)
    monkeypatch.setattr(inference, "cnn_dose_rate",
                        lambda spect, hu, density, dvk, device, model, fwhm_mm=None: given.append(fwhm_mm)
                        or hu.with_array(dvk))
    evaluate.evaluate(tmp_path, log=lambda m: None, device="cpu")
    assert given == [fwhm] and len(asked) == 3
    del manifest["phantoms"]["p00"]["spect"]
    (tmp_path / dataset.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DblurDoseError, match="records no SPECT chain"):
        evaluate.evaluate(tmp_path, log=lambda m: None, device="cpu", deconvolution=[20])
    with pytest.raises(DblurDoseError, match="records no SPECT chain"):
        evaluate.evaluate(tmp_path, log=lambda m: None, device="cpu", consistent=True)


def _target_results(lesion_cnn: float = 15.0, kidney_cnn: float = 2.0, noise_cnn: float = 9.0,
                    floor_shares=(0.0002, 0.0009), mc: bool = True) -> dict:
    """An evaluation's results as :func:`evaluate.evaluate` gives them, with the figures the targets read."""
    def row(error: float, nrmse: float) -> dict:
        return {"mean_error": error, "nrmse": nrmse}

    table = {"lesion": {"dvk": row(40.0, 0.5), "cnn": row(lesion_cnn, 0.3)},
             "kidney_left": {"dvk": row(10.0, 0.3), "cnn": row(kidney_cnn, 0.2)},
             "kidney_right": {"dvk": row(10.0, 0.3), "cnn": row(3.0, 0.2)},
             "liver": {"dvk": row(5.0, 0.3), "cnn": row(1.0, 0.2)}}
    if mc:
        for group, error in (("lesion", 39.0), ("kidney_left", 9.0), ("kidney_right", 9.0), ("liver", 5.0)):
            table[group]["mc"] = row(error, 0.6)
    phantoms = {f"p0{i}": {"correction": {"cnn": {"floor_share": share}}} for i, share in enumerate(floor_shares)}
    return {"summary": {"table": table, "noise": {"dvk": 10.0, "cnn": noise_cnn}}, "phantoms": phantoms}


def test_targets_are_met_only_when_every_figure_passes():
    """The paper's gains and the project's bounds, each from the summary's figures: lesions 40 -> 15% is a 62.5%
    gain (target 55%) but above the 10% bound; kidneys 10 -> 2 and 3% (80%, 70%: the 66% gain; 3% is within the
    bound); a floor share of 0.09% passes, 0.11% on one phantom of two fails; without SPECT + Monte Carlo that
    target is not checked."""
    from DblurDoseLib.evaluation.targets import check_targets

    met = {row["target"]: row["met"] for row in check_targets(_target_results())}
    assert list(met.values()) == [True, True, False, True, True, True, True, True, True]
    assert met["lesion mean error 10% or less"] is False
    rows = check_targets(_target_results(lesion_cnn=20.0, kidney_cnn=3.5, noise_cnn=10.5,
                                         floor_shares=(0.0002, 0.0011), mc=False))
    assert [row["met"] for row in rows] == [False, False, False, False, True, None, True, False, False]
    assert rows[1]["value"] == "65% lower, 70% lower"  # (10 - 3.5) / 10 and (10 - 3) / 10
    assert rows[8]["value"] == "0.110% at most (2 phantoms)"
    # the map kept consistent is judged on its own errors but on its network's floor
    kept = _target_results()
    for group in kept["summary"]["table"].values():
        group["consistent_cnn"] = dict(group["cnn"])
    kept["summary"]["noise"]["consistent_cnn"] = 11.0
    rows = check_targets(kept, "consistent_cnn")
    assert rows[7]["met"] is False and rows[7]["value"] == "+10% against the DVK's"
    assert rows[8]["met"] is True
