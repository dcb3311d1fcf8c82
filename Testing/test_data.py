"""The data-set generator: split by phantom, resumable parts, Dask scheduling, end to end small."""

import dataclasses
import json

import numpy as np
import pytest

from DblurDoseLib import data
from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.io import dataset


def test_split_is_by_phantom_and_seeded():
    settings = data.DataSettings()
    split = settings.split()
    assert sorted(split) == list(range(14))
    assert sum(v == "test" for v in split.values()) == 5
    assert split == data.DataSettings().split()
    assert split != data.DataSettings(seed=7).split()


def test_generation_order_makes_training_phantoms_first():
    settings = data.DataSettings(phantoms=list(range(12)), held_out=[10, 11], n_test=3, n_val=2)
    split = settings.split()
    order = settings.generation_order()
    assert sorted(order) == settings.indices()
    ranks = [("train", "val", "test").index(split[i]) if i not in (10, 11) else 3 for i in order]
    assert ranks == sorted(ranks) and ranks[0] == 0 and ranks[-1] == 3  # train, val, test, held-out
    assert [i for i in order if split[i] == "train"] == sorted(i for i in split if split[i] == "train")
    first = settings.generation_order("test")  # the phantoms that judge a network first, then the training ones
    assert sorted(first) == sorted(order)
    ranks = [("val", "test").index(split[i]) if split[i] != "train" and i not in (10, 11) else 2 if i in (10, 11)
             else 3 for i in first]
    assert ranks == sorted(ranks) and ranks[0] == 0 and ranks[-1] == 3  # val, test, held-out, train
    assert {i for i in first[:7]} == {i for i in split if split[i] != "train"}
    with pytest.raises(DblurDoseError, match="unknown generation order 'val'; use one of train, test"):
        settings.generation_order("val")


def test_parse_range():
    assert dataset.parse_range("0-3,7") == [0, 1, 2, 3, 7]
    with pytest.raises(DblurDoseError, match="phantom range"):
        dataset.parse_range("a-b")


@pytest.mark.parametrize("argv, expect", [
    ([], dict(shape=(130, 512, 512), n_views=128, iterations=16, projection_oversampling=2, counts=(3e6, 3e7))),
    (["--preset", "cpu"], dict(shape=(130, 256, 256), spacing=(1.96, 1.96, 3.0), n_views=64, iterations=8,
                               projection_oversampling=1)),
    (["--small", "--views", "16", "--iterations", "2"], dict(shape=(48, 96, 96), n_views=16, iterations=2)),
    (["--preset", "water", "--water", "0-2"], dict(shape=(80, 160, 192), spacing=(1.96, 1.96, 3.0), phantoms=[],
                                                   water=[0, 1, 2], spect_matrix=(80, 80, 52))),
    (["--water", "20-21"], dict(phantoms=[], water=[20, 21])),
])
def test_presets_and_overrides_reach_the_settings(argv, expect, monkeypatch, tmp_path):
    from DblurDoseLib.cli import main

    seen = {}
    monkeypatch.setattr(data, "generate", lambda out, settings, **kw: seen.setdefault("s", settings) and out)
    assert main(["data", "generate", "--out", str(tmp_path), *argv]) == 0
    for key, value in expect.items():
        assert getattr(seen["s"], key) == value, key


def test_bad_override_is_refused(tmp_path, capsys):
    from DblurDoseLib.cli import main

    assert main(["data", "generate", "--out", str(tmp_path / "d"), "--views", "0"]) == 2
    assert "SPECT views must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_dask_runs_each_phantom_once_and_writes_manifest(tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    def fake(out, index, settings, split, log=print):
        (tmp_path / f"ran_{index}").touch()  # tasks are serialised to the workers: leave a trace on disk
        with open(tmp_path / "order.txt", "a") as f:
            f.write(f"{index}\n")
        return {"index": index, "split": split, "timings_s": {}}

    monkeypatch.setattr(data, "generate_phantom", fake)
    settings = data.DataSettings(phantoms=[0, 1, 2, 3], n_test=1)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        path = data.generate(tmp_path, settings, scheduler=cluster.scheduler_address, log=lambda m: None)
    manifest = json.loads(path.read_text())
    ran = [int(line) for line in (tmp_path / "order.txt").read_text().split()]
    assert ran == settings.generation_order() and settings.split()[ran[-1]] == "test"  # the test phantom last
    assert sorted(p.name for p in tmp_path.glob("ran_*")) == ["ran_0", "ran_1", "ran_2", "ran_3"]
    assert sorted(manifest["phantoms"]) == ["p00", "p01", "p02", "p03"]
    assert [p["split"] for p in manifest["phantoms"].values()].count("test") == 1
    assert manifest["settings"]["seed"] == settings.seed and "numpy" in manifest["software"]
    (tmp_path / "order.txt").unlink()  # the same data set resumed with the test phantom first: not refused
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        data.generate(tmp_path, settings, scheduler=cluster.scheduler_address, log=lambda m: None, first="test")
    ran = [int(line) for line in (tmp_path / "order.txt").read_text().split()]
    assert ran == settings.generation_order("test") != settings.generation_order() and settings.split()[ran[0]] == "test"


@pytest.mark.slow
def test_small_end_to_end_and_resume(tmp_path):
    pytest.importorskip("pytomography")
    pytest.importorskip("ompmc")
    from DblurDoseLib.io.volume import read_volume

    settings = data.DataSettings(phantoms=[0], realisations=2, decays=1e5, test_decays=1e5, spect_mc_decays=1e5,
                                 **data.SMALL)
    result = data.generate_phantom(tmp_path, 0, settings, "test", log=lambda m: None)
    folder = tmp_path / "p00"
    expected = ["hu", "density", "activity", "labels", "spect_native_r0", "spect_r0", "spect_r1", "dvk_r0", "dvk_r1",
                "mc_truth", "mc_truth_unc", "mc_spect_r0", "mc_spect_r1", "mc_truth_d12500", "mc_truth_d25000",
                "mc_truth_d50000", "mc_truth_d50000_unc"]
    for name in expected:
        assert (folder / f"{name}.nrrd").exists(), name
    hu = read_volume(folder / "hu.nrrd")
    assert hu.shape == settings.shape
    for name in ("spect_r0", "dvk_r0", "mc_truth"):
        vol = read_volume(folder / f"{name}.nrrd")
        assert vol.same_grid(hu), name  # everything on the CT grid, geometry carried through
    truth = read_volume(folder / "activity.nrrd")
    spect = read_volume(folder / "spect_r0.nrrd")
    total_true = truth.array.sum() * truth.voxel_volume_ml
    assert spect.array.sum() * spect.voxel_volume_ml == pytest.approx(total_true, rel=0.2)  # quantitative SPECT
    r0, r1 = (read_volume(folder / f"spect_r{r}.nrrd").array for r in (0, 1))
    assert not np.array_equal(r0, r1)  # independent Poisson realisations
    mc, dvk = read_volume(folder / "mc_truth.nrrd").array, read_volume(folder / "dvk_r0.nrrd").array
    assert mc.mean() == pytest.approx(dvk.mean(), rel=0.3)  # same patient, same units (mGy/h)
    assert set(result["timings_s"]) == {"phantom", "spect", "dvk", "mc_truth", "spect_mc"}
    # resume: nothing is recomputed, files untouched
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.nrrd")}
    data.generate_phantom(tmp_path, 0, settings, "test", log=lambda m: None)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in folder.glob("*.nrrd")}


def test_deterministic_phantom_seed():
    s = data.DataSettings()
    assert s.phantom_seed(3) == data.DataSettings().phantom_seed(3) != s.phantom_seed(4)


def _has_pytomography() -> bool:
    from importlib.util import find_spec

    return find_spec("pytomography") is not None


def _train_plans(n: int, **settings) -> list[dict]:
    mixed = data.DataSettings(realisations=3, mix=True, **{**data.CPU, **settings})
    return [data.acquisition_plan(mixed, "train", np.random.default_rng(i)) for i in range(n)]


def test_mix_draws_acquisitions_for_training_phantoms_only():
    """--mix: training phantoms get camera, views and voxel size per phantom and OSEM/post-filter per
    realisation from TRAINING_MIX; test phantoms (and data sets without --mix) keep the preset's one setting."""
    mixed = data.DataSettings(realisations=3, mix=True, **data.CPU)
    plain = data.DataSettings(realisations=3, **data.CPU)
    standard = {"camera": "siemens-intevo-me", "n_views": 64, "voxel_mm": 4.8,
                "reconstructions": [{"iterations": 8, "subsets": 4, "postfilter_fwhm_mm": 0.0}] * 3}
    assert data.acquisition_plan(plain, "train", np.random.default_rng(0)) == standard
    assert data.acquisition_plan(mixed, "test", np.random.default_rng(0)) == standard
    plans = _train_plans(200)
    mix = data.TRAINING_MIX
    assert {p["camera"] for p in plans} == set(mix["camera"])
    assert {p["n_views"] for p in plans} == set(mix["n_views"])
    voxels = [p["voxel_mm"] for p in plans]
    assert mix["voxel_mm"][0] <= min(voxels) < 4.45 and 4.75 < max(voxels) <= mix["voxel_mm"][1]
    recons = [r for p in plans for r in p["reconstructions"]]
    assert {(r["iterations"], r["subsets"]) for r in recons} >= {(4, 8), (16, 8)}  # 4x8 to 16x8
    filters = [r["postfilter_fwhm_mm"] for r in recons]
    assert set(filters) == {0.0, 4.0, 6.0, 8.0}
    assert max(set(filters), key=filters.count) == 0.0  # no filter most often
    assert data.DataSettings().counts == (3e6, 3e7)


def test_mix_draws_only_valid_acquisitions():
    """Subsets divide the views, OSEM stays within 4x8..16x8 updates, every drawn acquisition validates."""
    if not _has_pytomography():
        pytest.skip("the collimator table ships with pytomography")
    from DblurDoseLib.simulation import spect

    settings = data.DataSettings(mix=True, **data.CPU)
    for name, cam in spect.CAMERAS.items():
        spect.SpectAcquisition.for_camera(name).validate()  # the collimator code is in the table
        assert spect.collimator_geometry_cm(cam.collimator)
    for views in data.TRAINING_MIX["n_views"]:
        assert data.osem_choices(views)  # every view count has OSEM settings
    for plan in _train_plans(150):
        assert 60 <= plan["n_views"] <= 128
        for recon in plan["reconstructions"]:
            assert plan["n_views"] % recon["subsets"] == 0
            assert 32 <= recon["iterations"] * recon["subsets"] <= 128
            acq = data._acquisition(settings, **plan)
            acq = dataclasses.replace(acq, **recon)
            acq.validate()
            assert acq.collimator == spect.CAMERAS[plan["camera"]].collimator
            # the field of view of the preset is kept at the drawn voxel size
            np.testing.assert_allclose(np.asarray(acq.matrix) * acq.voxel_mm,
                                       np.asarray(settings.spect_matrix) * settings.spect_voxel_mm,
                                       atol=plan["voxel_mm"] / 2 + 1e-6)
    with pytest.raises(DblurDoseError, match="no OSEM setting for 7 views.*subsets that divide"):
        data.osem_choices(7)


def test_held_out_vendor_never_in_training_draws():
    from DblurDoseLib.simulation import spect

    held_out = spect.CAMERAS[data.OUT_OF_MIX["camera"]]
    training = [spect.CAMERAS[name] for name in data.TRAINING_MIX["camera"]]
    assert {c.vendor for c in training} == {"Siemens", "GE"} and held_out.vendor == "Philips"
    assert held_out.collimator not in {c.collimator for c in training}
    drawn = {p["camera"] for p in _train_plans(500)}
    assert data.OUT_OF_MIX["camera"] not in drawn
    assert held_out.vendor not in {spect.CAMERAS[name].vendor for name in drawn}


def test_out_of_mix_is_outside_the_mix():
    """The out-of-mix reconstruction of test phantoms: another vendor, and views/voxel/OSEM/filter outside the
    mix or at its edge."""
    ood, mix = data.OUT_OF_MIX, data.TRAINING_MIX
    assert ood["camera"] not in mix["camera"]
    assert ood["n_views"] in (min(mix["n_views"]), max(mix["n_views"])) or ood["n_views"] not in mix["n_views"]
    assert not mix["voxel_mm"][0] <= ood["voxel_mm"] <= mix["voxel_mm"][1]
    assert (ood["iterations"], ood["subsets"]) not in data.osem_choices(ood["n_views"])
    assert ood["iterations"] not in mix["iterations"] and ood["subsets"] not in mix["subsets"]
    assert ood["n_views"] % ood["subsets"] == 0
    assert ood["postfilter_fwhm_mm"] not in mix["postfilter_fwhm_mm"]
    plain = data.DataSettings(**data.CPU)
    acq = data._acquisition(plain, **ood)  # the field of view is kept at another voxel size
    np.testing.assert_allclose(np.asarray(acq.matrix) * acq.voxel_mm, np.asarray(plain.spect_matrix) * 4.8, atol=4.5)
    assert acq.collimator == "PB-MEGP" and acq.crystal_thickness_cm == pytest.approx(0.9525)
    if _has_pytomography():
        acq.validate()


def test_phantom_draws_are_deterministic_per_seed():
    """A resumed job redraws the same camera, views, voxel, OSEM, filter and counts; the manifest records them."""
    settings = data.DataSettings(mix=True, out_of_mix=True, **data.CPU)
    first = data.phantom_draws(settings, 3, "train")
    assert first == data.phantom_draws(data.DataSettings(mix=True, out_of_mix=True, **data.CPU), 3, "train")
    assert json.loads(json.dumps(first)) == first  # what the manifest stores, as it loads back
    assert {"camera", "n_views", "voxel_mm", "reconstructions"} <= set(first["spect"])
    assert first["spect"] != data.phantom_draws(settings, 4, "train")["spect"]
    assert first["spect"] != data.phantom_draws(data.DataSettings(mix=True, seed=5, **data.CPU), 3, "train")["spect"]
    assert 3e6 <= first["total_counts"] <= 3e7
    test = data.phantom_draws(settings, 3, "test")
    assert test["spect"]["camera"] == settings.camera and test["spect_ood"] == data.OUT_OF_MIX
    assert "spect_ood" not in first


def test_older_manifest_entries_get_defaults():
    """Manifests written before the camera mix (no camera, no post-filter, or no plan at all) still load."""
    old = {"split": "train", "spect": {"n_views": 64, "voxel_mm": 4.8,
                                       "reconstructions": [{"iterations": 8, "subsets": 4}] * 2}}
    plan = data.read_plan(old)
    assert plan["camera"] == "siemens-intevo-me" and plan["n_views"] == 64
    assert plan["reconstructions"] == [{"iterations": 8, "subsets": 4, "postfilter_fwhm_mm": 0.0}] * 2
    bare = data.read_plan({"split": "test"}, data.DataSettings(**data.CPU))
    assert bare["camera"] == "siemens-intevo-me" and bare["n_views"] == 64 and bare["voxel_mm"] == 4.8
    new = data.phantom_draws(data.DataSettings(mix=True, **data.CPU), 1, "train")
    assert data.read_plan(new) == new["spect"]
    old_ood = {"n_views": 96, "voxel_mm": 4.42, "iterations": 4, "subsets": 16, "postfilter_fwhm_mm": 4.0}
    assert data.read_plan({"split": "test", "spect_ood": old_ood}, key="spect_ood") == {
        "camera": "siemens-intevo-me", **old_ood}
    ood = data.phantom_draws(data.DataSettings(out_of_mix=True), 1, "test")
    assert data.read_plan(ood, key="spect_ood") == data.OUT_OF_MIX
    with pytest.raises(DblurDoseError, match="no out-of-mix SPECT.*out-of-mix reconstruction"):
        data.read_plan(old, key="spect_ood")


@pytest.mark.slow
def test_mix_and_out_of_mix_end_to_end(tmp_path, monkeypatch):
    """A training phantom reconstructed per its plan, and a test phantom with its out-of-mix twin."""
    pytest.importorskip("pytomography")
    pytest.importorskip("ompmc")
    from DblurDoseLib.io.volume import read_volume

    small = {**data.SMALL, "spect_matrix": (16, 16, 13), "spect_voxel_mm": 31.2}
    settings = data.DataSettings(phantoms=[0, 1], realisations=2, decays=1e5, test_decays=1e5, spect_mc_decays=1e5,
                                 mix=True, out_of_mix=True, **small)
    monkey = {"camera": "philips-brightview-megp", "n_views": 16, "voxel_mm": 26.0, "iterations": 2, "subsets": 4,
              "postfilter_fwhm_mm": 20.0}
    coarse_mix = {**data.TRAINING_MIX, "camera": ("ge-discovery-670-megp",), "n_views": (16,),
                  "voxel_mm": (28.0, 32.0), "iterations": (2,), "subsets": (4,), "osem_updates": (8, 8)}
    monkeypatch.setattr(data, "OUT_OF_MIX", monkey)  # coarse stand-ins, to stay quick
    monkeypatch.setattr(data, "TRAINING_MIX", coarse_mix)
    train = data.generate_phantom(tmp_path, 1, settings, "train", log=lambda m: None)
    test = data.generate_phantom(tmp_path, 0, settings, "test", log=lambda m: None)
    plan = train["spect"]
    native = read_volume(tmp_path / "p01" / "spect_native_r0.nrrd")
    assert native.spacing == pytest.approx((plan["voxel_mm"],) * 3)
    assert native.metadata["osem"] == "{iterations}x{subsets}".format(**plan["reconstructions"][0])
    assert plan["camera"] == "ge-discovery-670-megp"
    assert not (tmp_path / "p01" / "spect_ood_r0.nrrd").exists()
    ood = read_volume(tmp_path / "p00" / "spect_ood_native_r0.nrrd")
    assert ood.spacing == pytest.approx((26.0,) * 3) and ood.metadata["osem"] == "2x4"
    assert ood.metadata["postfilter_fwhm_mm"] == "20"
    for name in ("spect_ood_r1", "dvk_ood_r1", "mc_spect_ood_r1"):
        assert read_volume(tmp_path / "p00" / f"{name}.nrrd").same_grid(read_volume(tmp_path / "p00" / "hu.nrrd"))
    assert {"spect_ood", "dvk_ood", "spect_mc_ood"} <= set(test["timings_s"])
    assert test["spect_ood"] == monkey


def test_resume_with_other_settings_is_refused(tmp_path):
    """A data set grows across sessions by resuming: other settings would mix two data sets."""
    from DblurDoseLib.data import MANIFEST, DataSettings, generate

    settings = DataSettings(phantoms=[0, 1], realisations=2, mix=True)
    (tmp_path / MANIFEST).write_text(json.dumps({"settings": json.loads(json.dumps(dataclasses.asdict(settings))),
                                                 "phantoms": {}}))
    for other in (DataSettings(phantoms=[0, 1], realisations=3, mix=True),
                  DataSettings(phantoms=[0, 1, 2], realisations=2, mix=True),
                  DataSettings(phantoms=[0, 1], realisations=2, mix=False)):
        with pytest.raises(DblurDoseError, match="other settings"):
            generate(tmp_path, other)
    assert json.loads((tmp_path / MANIFEST).read_text())["phantoms"] == {}  # left as it was


def test_truth_is_written_as_nested_labels(tmp_path, monkeypatch):
    """make_truth: partial means mc_truth_d{N} over the first 1/8, 1/4 and 1/2 of the decays beside the full
    label (same names as before); stand-in SPECT/DVK and a seeded stand-in Monte Carlo, to stay quick."""
    from DblurDoseLib import dose
    from DblurDoseLib.geometry import resample
    from DblurDoseLib.io.volume import read_volume
    from DblurDoseLib.physics import montecarlo
    from DblurDoseLib.simulation import spect

    def fake_mc(activity_bq, density, n_decays, seed=1, **_):  # unbiased, noise ~ 1/sqrt(decays), one stream per seed
        rel = np.float32(1 / np.sqrt(n_decays))
        noise = np.random.default_rng(seed).normal(0, 1, activity_bq.shape).astype(np.float32)
        return montecarlo.MonteCarloResult(activity_bq.with_array(activity_bq.array * (1 + rel * noise)),
                                           activity_bq.with_array(np.full(activity_bq.shape, rel)), n_decays,
                                           0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    monkeypatch.setattr(montecarlo, "monte_carlo_dose_rate", fake_mc)
    monkeypatch.setattr(spect, "simulate_spect", lambda activity, *a, realisations=1, **k: [activity] * realisations)
    monkeypatch.setattr(resample, "resample_activity", lambda recon, hu: recon)
    monkeypatch.setattr(dose, "compute_dose_rate_maps", lambda s, hu, methods: {"dvk": s})
    settings = data.DataSettings(phantoms=[0], realisations=1, decays=8000, shape=(8, 16, 16),
                                 spacing=(31.36, 31.36, 48.75))
    data.generate_phantom(tmp_path, 0, settings, "train", log=lambda m: None)
    folder = tmp_path / "p00"
    assert dataset.label_decays_available(folder) == [1000, 2000, 4000]
    label = {n: read_volume(folder / data.truth_file(n)).array for n in (1000, 2000, 4000, None)}
    unc = {n: read_volume(folder / data.truth_file(n, uncertainty=True)).array for n in (1000, 2000, 4000, None)}
    activity = read_volume(folder / "activity.nrrd")
    bq = activity.with_array(activity.array * np.float32(activity.voxel_volume_ml))
    seed = settings.phantom_seed(0)
    batches = [fake_mc(bq, None, 1000, montecarlo.batch_seed(seed, k)).dose_rate.array for k in range(8)]
    np.testing.assert_allclose(label[1000], batches[0], rtol=1e-6)
    np.testing.assert_allclose(label[2000], (batches[0] + batches[1]) / 2, rtol=1e-5)
    full = label[None]  # the decay-weighted mean of the half label and the batches after it
    np.testing.assert_allclose(full, (label[4000] * 4000 + np.sum(batches[4:], axis=0) * 1000) / 8000, rtol=1e-5,
                               atol=1e-6 * float(full.max()))
    hot = full > 0
    assert np.median(unc[1000][hot]) > np.median(unc[2000][hot]) > np.median(unc[4000][hot]) > np.median(unc[None][hot])
    assert read_volume(folder / "mc_truth.nrrd").metadata["batches"] == "8/8"
    (folder / data.truth_file(2000)).unlink()  # a run stopped while writing the labels: redone on resume
    data.generate_phantom(tmp_path, 0, settings, "train", log=lambda m: None)
    np.testing.assert_allclose(read_volume(folder / data.truth_file(2000)).array, label[2000], rtol=1e-6)


def test_resume_skips_every_finished_part_of_a_test_phantom(tmp_path, monkeypatch):
    """A finished test phantom with its out-of-mix twin: every part's files are the io.dataset names that
    the part writes, so a resume makes nothing again (stand-in physics, to stay quick)."""
    from DblurDoseLib import dose
    from DblurDoseLib.geometry import resample
    from DblurDoseLib.physics import montecarlo
    from DblurDoseLib.simulation import spect

    def fake_mc(activity_bq, density, n_decays, seed=1, **_):
        dose_rate = activity_bq.with_array(activity_bq.array * np.float32(1e-3))
        return montecarlo.MonteCarloResult(dose_rate, dose_rate.with_array(np.zeros(dose_rate.shape, np.float32)),
                                           n_decays, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    monkeypatch.setattr(montecarlo, "monte_carlo_dose_rate", fake_mc)
    monkeypatch.setattr(spect, "simulate_spect", lambda activity, *a, realisations=1, **k: [activity] * realisations)
    monkeypatch.setattr(resample, "resample_activity", lambda recon, hu: recon)
    monkeypatch.setattr(dose, "compute_dose_rate_maps", lambda s, hu, methods: {"dvk": s})
    settings = data.DataSettings(phantoms=[0], realisations=2, decays=8000, test_decays=8000, out_of_mix=True,
                                 shape=(8, 16, 16), spacing=(31.36, 31.36, 48.75))
    first = []
    data.generate_phantom(tmp_path, 0, settings, "test", log=first.append)
    assert [m.split()[1] for m in first] == ["phantom", "spect", "dvk", "spect_ood", "dvk_ood", "mc_truth",
                                             "spect_mc", "spect_mc_ood"]
    folder = tmp_path / dataset.phantom_key(0)
    names = {p.name for p in folder.iterdir()}
    for tag in ("", "_ood"):
        for stem in dataset.REALISATION_STEMS:
            assert set(dataset.realisation_files(stem, 2, tag)) <= names, (stem, tag)
    assert "spect_ood_native_r1.nrrd" in names and "dvk_ood_r0.nrrd" in names
    again = []
    data.generate_phantom(tmp_path, 0, settings, "test", log=again.append)
    assert again == []


def test_dataset_layout_names():
    assert dataset.phantom_key(3) == "p03" and dataset.phantom_key(123) == "p123"
    assert dataset.realisation_file("spect", 2) == "spect_r2.nrrd"
    assert dataset.realisation_file("spect_native", 0, dataset.recon_tag("ood")) == "spect_ood_native_r0.nrrd"
    assert dataset.realisation_file("mc_spect", 1, "_ood") == "mc_spect_ood_r1.nrrd"
    assert dataset.truth_file() == "mc_truth.nrrd" and dataset.truth_file(500, uncertainty=True) == "mc_truth_d500_unc.nrrd"
    assert dataset.recon_tag("standard") == dataset.recon_tag("") == ""
    with pytest.raises(DblurDoseError, match="reconstruction"):
        dataset.recon_tag("filtered")
    manifest = {"phantoms": {"p00": {"split": "test", "family": "shapes"}, "p01": {}, "p02": {"split": "test"}}}
    assert dataset.phantoms_in(manifest, "test") == ["p00", "p02"]
    assert dataset.phantoms_in(manifest, "test", "anatomical") == ["p02"]
    assert dataset.phantoms_in(manifest, "train") == ["p01"] and dataset.realisations_of({}) == 1


def test_validation_phantoms_get_the_mix_and_a_test_grade_truth():
    from DblurDoseLib.learning.training import split_phantoms

    settings = data.DataSettings(phantoms=list(range(10)), n_test=3, n_val=2, mix=True, held_out=[10])
    split = settings.split()
    assert sorted(split.values()).count("val") == 2 and sorted(split.values()).count("test") == 4
    plain = data.DataSettings(phantoms=list(range(10)), n_test=3, mix=True, held_out=[10]).split()
    assert {i for i, s in split.items() if s == "test"} == {i for i, s in plain.items() if s == "test"}  # unchanged
    val = [i for i, s in split.items() if s == "val"]
    for i in val:  # drawn from the training mix, like training phantoms
        assert data.phantom_draws(settings, i, "val")["spect"] == data.phantom_draws(settings, i, "train")["spect"]
    manifest = {"phantoms": {f"p{i:02d}": {"split": s} for i, s in split.items()}}
    train, validation = split_phantoms(manifest, seed=0)
    assert validation == sorted(f"p{i:02d}" for i in val)
    assert not set(train) & set(validation) and len(train) == 5


@pytest.mark.slow
def test_sigterm_stops_generation_within_seconds_and_it_resumes(tmp_path):
    """SIGTERM during `data generate`: exit 143 within seconds, no half-written part, finished parts kept,
    and the same command finishes the data set."""
    import signal
    import subprocess
    import sys
    import time

    pytest.importorskip("pytomography")
    pytest.importorskip("ompmc")
    out = tmp_path / "set"
    command = [sys.executable, "-m", "DblurDoseLib.cli", "data", "generate", "--out", str(out), "--small",
               "--phantoms", "0", "--realisations", "1", "--decays", "8e4", "--test-decays", "8e4",
               "--spect-mc-decays", "1e4", "--workers", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "p00" / "hu.nrrd").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert (out / "p00" / "hu.nrrd").exists(), process.communicate()
    process.send_signal(signal.SIGTERM)
    t0 = time.time()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143 and time.time() - t0 < 30
    assert "run the same command to resume" in err
    from DblurDoseLib.io.volume import read_volume

    assert (out / "p00" / "activity.nrrd").exists()  # the finished phantom part is kept
    for path in out.rglob("*.nrrd"):  # a file under its final name is whole (parts are written, then renamed)
        if not path.name.endswith(".part.nrrd"):
            read_volume(path)
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (out / "p00" / "mc_truth.nrrd").exists()
    assert not list(out.rglob("*.part.nrrd"))  # nothing half-written is left once the set is finished
