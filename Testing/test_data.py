"""The data-set generator: split by phantom, resumable parts, Dask scheduling, end to end small."""

import json

import numpy as np
import pytest

from DblurDoseLib import data
from DblurDoseLib.errors import DblurDoseError


def test_split_is_by_phantom_and_seeded():
    settings = data.DataSettings()
    split = settings.split()
    assert sorted(split) == list(range(14))
    assert sum(v == "test" for v in split.values()) == 5
    assert split == data.DataSettings().split()
    assert split != data.DataSettings(seed=7).split()


def test_parse_range():
    assert data.parse_range("0-3,7") == [0, 1, 2, 3, 7]
    with pytest.raises(DblurDoseError, match="phantom range"):
        data.parse_range("a-b")


@pytest.mark.parametrize("argv, expect", [
    ([], dict(shape=(130, 512, 512), n_views=128, iterations=16, projection_oversampling=2)),
    (["--preset", "cpu"], dict(shape=(130, 256, 256), spacing=(1.96, 1.96, 3.0), n_views=64, iterations=8,
                               projection_oversampling=1)),
    (["--small", "--views", "16", "--iterations", "2"], dict(shape=(48, 96, 96), n_views=16, iterations=2)),
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
    assert "--views must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_dask_runs_each_phantom_once_and_writes_manifest(tmp_path, monkeypatch):
    distributed = pytest.importorskip("distributed")
    def fake(out, index, settings, split, log=print):
        (tmp_path / f"ran_{index}").touch()  # tasks are serialised to the workers: leave a trace on disk
        return {"index": index, "split": split, "timings_s": {}}

    monkeypatch.setattr(data, "generate_phantom", fake)
    settings = data.DataSettings(phantoms=[0, 1, 2, 3], n_test=1)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        path = data.generate(tmp_path, settings, scheduler=cluster.scheduler_address, log=lambda m: None)
    manifest = json.loads(path.read_text())
    assert sorted(p.name for p in tmp_path.glob("ran_*")) == ["ran_0", "ran_1", "ran_2", "ran_3"]
    assert sorted(manifest["phantoms"]) == ["p00", "p01", "p02", "p03"]
    assert [p["split"] for p in manifest["phantoms"].values()].count("test") == 1
    assert manifest["settings"]["seed"] == settings.seed and "numpy" in manifest["software"]


@pytest.mark.slow
def test_small_end_to_end_and_resume(tmp_path):
    pytest.importorskip("pytomography")
    pytest.importorskip("ompmc")
    from DblurDoseLib.volume import read_volume

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


def test_mix_draws_acquisitions_for_training_phantoms_only():
    """--mix: training phantoms get views and voxel size per phantom and OSEM/post-filter per realisation
    from TRAINING_MIX; test phantoms (and data sets without --mix) keep the preset's one setting."""
    mixed = data.DataSettings(realisations=3, mix=True, **data.CPU)
    plain = data.DataSettings(realisations=3, **data.CPU)
    standard = {"n_views": 64, "voxel_mm": 4.8,
                "reconstructions": [{"iterations": 8, "subsets": 4, "postfilter_fwhm_mm": 0.0}] * 3}
    assert data.acquisition_plan(plain, "train", np.random.default_rng(0)) == standard
    assert data.acquisition_plan(mixed, "test", np.random.default_rng(0)) == standard
    plans = [data.acquisition_plan(mixed, "train", np.random.default_rng(i)) for i in range(40)]
    seen = {k: {p[k] for p in plans} for k in ("n_views", "voxel_mm")}
    assert seen == {"n_views": {64, 128}, "voxel_mm": {4.7952, 4.8}}
    recons = [r for p in plans for r in p["reconstructions"]]
    assert {(r["iterations"], r["subsets"]) for r in recons} == {(8, 4), (16, 4)}
    assert {r["postfilter_fwhm_mm"] for r in recons} == {0.0, 6.0}
    # the out-of-mix reconstruction differs from the mix in every setting
    ood = data.OUT_OF_MIX
    assert ood["n_views"] not in data.TRAINING_MIX["n_views"]
    assert ood["voxel_mm"] not in data.TRAINING_MIX["voxel_mm"]
    assert (ood["iterations"], ood["subsets"]) not in data.TRAINING_MIX["osem"]
    assert ood["postfilter_fwhm_mm"] not in data.TRAINING_MIX["postfilter_fwhm_mm"]
    # the field of view is kept at another voxel size
    acq = data._acquisition(plain, **ood)
    np.testing.assert_allclose(np.asarray(acq.matrix) * acq.voxel_mm, np.asarray(plain.spect_matrix) * 4.8, atol=4.5)


@pytest.mark.slow
def test_mix_and_out_of_mix_end_to_end(tmp_path):
    """A training phantom reconstructed per its plan, and a test phantom with its out-of-mix twin."""
    pytest.importorskip("pytomography")
    pytest.importorskip("ompmc")
    from DblurDoseLib.volume import read_volume

    small = {**data.SMALL, "spect_matrix": (16, 16, 13), "spect_voxel_mm": 31.2}
    settings = data.DataSettings(phantoms=[0, 1], realisations=2, decays=1e5, test_decays=1e5, spect_mc_decays=1e5,
                                 mix=True, out_of_mix=True, **small)
    monkey = {"n_views": 16, "voxel_mm": 26.0, "iterations": 2, "subsets": 4, "postfilter_fwhm_mm": 20.0}
    old = data.OUT_OF_MIX
    data.OUT_OF_MIX = monkey  # a coarse stand-in, to stay quick
    try:
        train = data.generate_phantom(tmp_path, 1, settings, "train", log=lambda m: None)
        test = data.generate_phantom(tmp_path, 0, settings, "test", log=lambda m: None)
    finally:
        data.OUT_OF_MIX = old
    plan = train["spect"]
    native = read_volume(tmp_path / "p01" / "spect_native_r0.nrrd")
    assert native.spacing == pytest.approx((plan["voxel_mm"],) * 3)
    assert native.metadata["osem"] == "{iterations}x{subsets}".format(**plan["reconstructions"][0])
    assert not (tmp_path / "p01" / "spect_ood_r0.nrrd").exists()
    ood = read_volume(tmp_path / "p00" / "spect_ood_native_r0.nrrd")
    assert ood.spacing == pytest.approx((26.0,) * 3) and ood.metadata["osem"] == "2x4"
    assert ood.metadata["postfilter_fwhm_mm"] == "20"
    for name in ("spect_ood_r1", "dvk_ood_r1", "mc_spect_ood_r1"):
        assert read_volume(tmp_path / "p00" / f"{name}.nrrd").same_grid(read_volume(tmp_path / "p00" / "hu.nrrd"))
    assert {"spect_ood", "dvk_ood", "spect_mc_ood"} <= set(test["timings_s"])
    assert test["spect_ood"] == monkey


def test_truth_is_written_as_nested_labels(tmp_path, monkeypatch):
    """make_truth: partial means mc_truth_d{N} over the first 1/8, 1/4 and 1/2 of the decays beside the full
    label (same names as before); stand-in SPECT/DVK and a seeded stand-in Monte Carlo, to stay quick."""
    from DblurDoseLib import dose, montecarlo, resample, spect
    from DblurDoseLib.volume import read_volume

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
    assert data.label_decays_available(folder) == [1000, 2000, 4000]
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
