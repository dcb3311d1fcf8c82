"""The held-out "shapes" family of virtual patients, and its place in data sets and evaluation."""

import json
from dataclasses import replace

import numpy as np
import pytest

from DblurDoseLib import data
from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.evaluation import evaluate
from DblurDoseLib.physics.density import hu_to_density
from DblurDoseLib.simulation.phantom import LABELS, LUMBAR_L2_L5, TISSUES, voi_masks
from DblurDoseLib.simulation.phantom_shapes import LESION_LARGE_ML, LESION_SMALL_ML, make_shapes_phantom

SMALL = (40, 64, 64)  # standard field at 7.8 x 7.8 x 9.75 mm
FINE = (78, 100, 100)  # standard field at 5 x 5 x 5 mm, for volumes of 1-mL lesions


@pytest.fixture(scope="module")
def small():
    return make_shapes_phantom(3, shape=SMALL, spacing=None)


@pytest.fixture(scope="module")
def fine():
    return make_shapes_phantom(4, shape=FINE, spacing=None)


def test_grid_types_and_family(small):
    for vol in (small.hu, small.density, small.activity, small.labels, small.tissue):
        assert vol.shape == SMALL and vol.same_grid(small.hu)
    assert small.hu.array.dtype == small.activity.array.dtype == small.density.array.dtype == np.float32
    assert small.labels.array.dtype == np.int16 and small.tissue.array.dtype == np.uint8
    corners = small.hu.physical_corners()
    np.testing.assert_allclose(corners.min(axis=0), -corners.max(axis=0), atol=1e-3)
    assert small.info["family"] == "shapes"
    json.dumps(small.info)  # goes into labels.json as it is


def test_deterministic_per_seed_and_different_between_seeds(small):
    again = make_shapes_phantom(3, shape=SMALL, spacing=None)
    other = make_shapes_phantom(8, shape=SMALL, spacing=None)
    for name in ("hu", "density", "activity", "labels", "tissue"):
        np.testing.assert_array_equal(getattr(small, name).array, getattr(again, name).array)
    assert small.info == again.info and small.label_names == again.label_names
    assert np.mean(small.labels.array != other.labels.array) > 0.05
    assert small.info["lesions"] != other.info["lesions"]


def test_the_vois_of_evaluation_and_voi_masks_exist(small):
    masks = voi_masks(small)
    for name in ("liver", "healthy_liver", "kidney_left", "kidney_right", "spleen", "lungs", "body",
                 "lumbar_L2_L5", "lesion_1"):
        assert masks[name].any(), name
    meta = json.loads(json.dumps({"label_names": {str(k): v for k, v in small.label_names.items()},
                                  "info": small.info}))
    found = evaluate.vois(small.labels.array, meta)
    for name in ("kidney_left", "kidney_right", "liver", "healthy_liver", "spleen", "lumbar_L2_L5"):
        assert found[name].any(), name
    assert any(k.startswith("lesion:") for k in found)
    # every label on the grid has a name, and the names mean the shared label values
    assert set(np.unique(small.labels.array)) - {0} <= set(small.label_names)
    assert small.label_names[LABELS["liver"]] == "liver" and set(LUMBAR_L2_L5) <= set(small.label_names)


def test_lesions_sizes_sites_and_contrast(fine):
    lesions = fine.info["lesions"]
    labels = fine.labels.array
    vox_ml = fine.labels.voxel_volume_ml
    assert len(lesions) >= 6
    sites = {les["site"] for les in lesions}
    assert {"liver", "kidney", "bone"} <= sites
    for les in lesions:
        assert LESION_SMALL_ML[0] - 1e-6 <= les["volume_ml"] <= LESION_LARGE_ML[1] + 1e-6
        measured = float((labels == les["label"]).sum() * vox_ml)
        assert measured == pytest.approx(les["volume_ml"], rel=0.35, abs=0.3), les["name"]
        assert 3.0 - 1e-6 <= les["contrast_to_background"] <= 100.0 + 1e-6
        assert np.isfinite(les["uptake_day1_MBq_per_mL"]) and les["uptake_day1_MBq_per_mL"] > 0
    small_ones = [les for les in lesions if (labels == les["label"]).sum() * vox_ml < 10.0]
    assert len(small_ones) >= 2


def test_some_lesions_are_necrotic_over_seeds():
    counts = [sum(les["necrotic"] for les in make_shapes_phantom(s, shape=(20, 32, 32), spacing=None).info["lesions"])
              for s in range(4)]
    assert sum(counts) > 0


def test_activity_and_ct(small):
    act, hu = small.activity.array, small.hu.array
    body = small.labels.array > 0
    assert np.isfinite(act).all() and act.min() >= 0 and not act[~body].any()
    assert -1024 <= hu.min() and hu.max() <= 3071
    assert np.median(hu[~body]) < -950 and np.median(hu[body]) > -300
    np.testing.assert_array_equal(small.density.array, hu_to_density(hu, exact=True))  # density follows HU exactly
    tissue = small.tissue.array
    for name, lo, hi in (("fat", -160, -40), ("liver", 20, 100), ("lung", -950, -650), ("trabecular_bone", 100, 700)):
        m = tissue == TISSUES[name]
        assert m.any() and lo < np.median(hu[m]) < hi, name
    total = small.info["total_activity_MBq"]
    assert 100.0 < total < 2000.0  # a 7.4 GBq cycle at day 1, a 39 cm field of the trunk
    assert total == pytest.approx(act.sum(dtype=np.float64) * small.activity.voxel_volume_ml / 1e6, rel=1e-6)


def test_kidney_compartments_and_uptake(fine):
    masks = voi_masks(fine)
    act = fine.activity.array
    for side in ("left", "right"):
        parts = {p: masks[f"kidney_{side}_{p}"] for p in ("cortex", "medulla", "pelvis")}
        assert all(m.any() for m in parts.values()), side
        assert parts["cortex"].sum() > parts["pelvis"].sum()
        assert act[parts["cortex"]].mean() > act[parts["medulla"]].mean() > act[parts["pelvis"]].mean()


def test_organ_uptake_is_heterogeneous_within_20_percent():
    sharp = make_shapes_phantom(5, shape=SMALL, spacing=None, pet_fwhm_mm=0.0)
    conc = sharp.info["concentrations_MBq_per_mL"]
    labels, tissue, act = sharp.labels.array, sharp.tissue.array, sharp.activity.array
    for name, key in (("liver", "liver"), ("spleen", "spleen"), ("muscle", "muscle")):
        ratio = act[labels == LABELS[name]] / (conc[key] * 1e6)
        assert 0.8 - 1e-4 <= ratio.min() and ratio.max() <= 1.2 + 1e-4, name
        assert ratio.std() > 0.02, name
    cortex = (labels == LABELS["kidney_left"]) & (tissue == TISSUES["kidney_cortex"])
    assert act[cortex].mean() == pytest.approx(conc["kidney_cortex"] * 1e6, rel=0.1)


def test_same_patient_on_two_grids(small):
    coarse = make_shapes_phantom(3, shape=(20, 32, 32), spacing=None)
    assert coarse.info["lesions"] == small.info["lesions"] and coarse.label_names == small.label_names
    crop = make_shapes_phantom(3, shape=(10, 64, 64), spacing=small.hu.spacing)  # the middle 10 slices
    np.testing.assert_array_equal(crop.labels.array, small.labels.array[15:25])
    np.testing.assert_allclose(crop.activity.array, small.activity.array[15:25], rtol=1e-3, atol=50.0)


def test_bad_arguments_raise_a_clear_error():
    with pytest.raises(DblurDoseError, match="time_days"):
        make_shapes_phantom(1, shape=SMALL, spacing=None, time_days=0)
    with pytest.raises(DblurDoseError, match="shape"):
        make_shapes_phantom(1, shape=(4, 4), spacing=None)


# --------------------------------------------------------------------------------------------
# data sets and evaluation
# --------------------------------------------------------------------------------------------

def test_held_out_phantoms_are_test_and_not_counted():
    plain = data.DataSettings(phantoms=list(range(6)), n_test=2)
    held = data.DataSettings(phantoms=list(range(6)), n_test=2, held_out=[6, 7])
    split = held.split()
    assert split[6] == split[7] == "test"
    assert {i: split[i] for i in range(6)} == plain.split()  # the anatomical split does not move
    assert sum(v == "test" for v in split.values()) == 4
    assert held.family(6) == "shapes" and held.family(0) == "anatomical" and held.indices() == list(range(8))


def test_shapes_training_phantoms_are_train_and_one_family_per_index():
    plain = data.DataSettings(phantoms=list(range(6)), n_test=2, held_out=[6])
    more = data.DataSettings(phantoms=list(range(6)), n_test=2, held_out=[6], shapes=[7, 8])
    split = more.split()
    assert split[7] == split[8] == "train" and more.family(7) == more.family(6) == "shapes"
    assert {i: split[i] for i in range(7)} == plain.split()  # the other phantoms' split does not move
    assert more.indices() == list(range(9)) and more.generation_order("test")[-2:] == [7, 8]
    alone = data.DataSettings(phantoms=[], shapes=[40, 41])
    assert alone.split() == {40: "train", 41: "train"}
    for clash in ({"held_out": [7]}, {"water": [8]}, {"phantoms": [7]}):
        with pytest.raises(DblurDoseError, match="one family"):
            data.DataSettings(**{"phantoms": [0], "shapes": [7, 8], **clash}).split()


def test_cli_held_out_and_shapes_reach_the_settings(monkeypatch, tmp_path):
    from DblurDoseLib.cli import main

    seen = []
    monkeypatch.setattr(data, "generate", lambda out, settings, **kw: seen.append(settings) or out)
    assert main(["data", "generate", "--out", str(tmp_path), "--small", "--held-out", "14-15"]) == 0
    assert seen[-1].held_out == [14, 15] and seen[-1].shapes == []
    assert main(["data", "generate", "--out", str(tmp_path), "--small", "--shapes", "40-42"]) == 0
    assert seen[-1].shapes == [40, 41, 42] and seen[-1].phantoms == []  # no anatomical phantoms unless asked


def _fake_physics(monkeypatch):
    """SPECT, DVK and Monte Carlo stand-ins: the phantom part of a data set alone, in seconds."""
    import DblurDoseLib.dose  # noqa: F401  imported before patching, so that it keeps the real resample_activity
    monkeypatch.setattr("DblurDoseLib.simulation.spect.simulate_spect",
                        lambda activity, *a, realisations=1, **k: [activity] * realisations)
    monkeypatch.setattr("DblurDoseLib.geometry.resample.resample_activity", lambda recon, hu: recon)
    monkeypatch.setattr("DblurDoseLib.dose.compute_dose_rate_maps", lambda spect, hu, methods: {"dvk": spect})
    from DblurDoseLib.physics.montecarlo import MonteCarloResult

    monkeypatch.setattr("DblurDoseLib.physics.montecarlo.monte_carlo_dose_rate",
                        lambda bq, density, n, *a, **k: MonteCarloResult(bq, bq.with_array(bq.array * 0 + 0.1), n,
                                                                         0.0, 0.0, 0.0, 0.0, 0.0, 0.0))


def test_data_set_makes_held_out_phantoms_with_the_shapes_family(tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    _fake_physics(monkeypatch)
    small = {**data.SMALL, "shape": (24, 48, 48), "spacing": (10.4, 10.4, 16.25)}
    settings = data.DataSettings(phantoms=[0], held_out=[1], shapes=[2], n_test=0, realisations=1, mix=True,
                                 **small)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as c:
        path = data.generate(tmp_path, settings, scheduler=c.scheduler_address, log=lambda m: None)
    manifest = json.loads(path.read_text())
    phantoms = manifest["phantoms"]
    assert phantoms["p01"]["family"] == "shapes" and phantoms["p01"]["split"] == "test"
    assert phantoms["p00"]["family"] == "anatomical" and phantoms["p00"]["split"] == "train"
    assert phantoms["p02"]["family"] == "shapes" and phantoms["p02"]["split"] == "train"
    assert manifest["settings"]["held_out"] == [1] and manifest["settings"]["shapes"] == [2]
    assert manifest["plan"] == settings.plan() and manifest["plan"]["p02"]["family"] == "shapes"
    # a shapes training phantom is acquired from the training mix and labelled as the other training phantoms
    assert phantoms["p02"]["spect"] == data.phantom_draws(settings, 2, "train")["spect"]
    assert phantoms["p02"]["spect"] != data.phantom_draws(replace(settings, mix=False), 2, "train")["spect"]
    assert "spect_ood" not in phantoms["p02"] and not list((tmp_path / "p02").glob("mc_spect*"))
    assert json.loads((tmp_path / "p02" / "labels.json").read_text())["info"]["family"] == "shapes"
    meta = json.loads((tmp_path / "p01" / "labels.json").read_text())
    assert meta["info"]["family"] == "shapes"
    assert meta["info"]["seed"] == settings.phantom_seed(1)
    assert "family" not in json.loads((tmp_path / "p00" / "labels.json").read_text())["info"]


def test_evaluate_family_filter_and_old_manifests(tmp_path):
    assert evaluate.family_of({"split": "test"}) == "anatomical"  # manifests from before families
    (tmp_path / "manifest.json").write_text(json.dumps({"phantoms": {"p00": {"split": "test"}}}))
    with pytest.raises(DblurDoseError, match="'shapes' family"):
        evaluate.evaluate(tmp_path, family="shapes", log=lambda m: None)
    row = {"mean_error": 10.0, "nrmse": 0.1, **{f"DR{lv}_error": 1.0 for lv in evaluate.DR_LEVELS}}
    results = {"phantoms": {"p00": {"vois": {"kidney_left": {"dvk": row}}, "noise": {}},
                            "p01": {"vois": {"kidney_left": {"dvk": {**row, "mean_error": 30.0}}}, "noise": {}}},
               "families": {"p00": "anatomical", "p01": "shapes"}}
    by_family = evaluate.summarise_by_family(results)
    assert by_family["anatomical"]["table"]["kidney_left"]["dvk"]["mean_error"] == 10.0
    assert by_family["shapes"]["table"]["kidney_left"]["dvk"]["mean_error"] == 30.0
    results.update(data="d", model="m", summary=evaluate.summarise(results), summary_by_family=by_family)
    report = evaluate.write_report(results, tmp_path / "report").read_text()
    assert "per virtual-patient family" in report and "| shapes | kidney_left | 30.0 |" in report
    assert "(anatomical: p00) (shapes: p01)" in report


def test_evaluate_cli_has_family(tmp_path, capsys):
    from DblurDoseLib.cli import main

    (tmp_path / "manifest.json").write_text(json.dumps({"phantoms": {"p00": {"split": "test"}}}))
    assert main(["evaluate", "--data", str(tmp_path), "--family", "shapes", "--out", str(tmp_path / "r")]) == 2
    assert "'shapes' family" in capsys.readouterr().err
