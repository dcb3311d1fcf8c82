"""The water phantom family (simulation/phantom_water.py) and its place in a data set: objects in water whose
label is the DVK of the true activity, no Monte Carlo."""

import dataclasses
import json

import numpy as np
import pytest

from DblurDoseLib import data
from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.simulation.anatomy import LESION_LABEL_BASE
from DblurDoseLib.simulation.phantom_water import HOT_CONTRAST, OBJECT_ML, WATER_LABEL, make_water_phantom

SHAPE, SPACING = (48, 96, 96), (3.0, 3.0, 4.0)


@pytest.fixture(scope="module")
def phantoms():
    return [make_water_phantom(seed, SHAPE, SPACING) for seed in range(4)]


def test_same_seed_same_phantom_and_seeds_differ(phantoms):
    again = make_water_phantom(0, SHAPE, SPACING)
    np.testing.assert_array_equal(again.activity.array, phantoms[0].activity.array)
    assert again.info == phantoms[0].info
    assert not np.array_equal(phantoms[1].activity.array, phantoms[0].activity.array)


def test_objects_lie_in_water_with_their_drawn_volumes_and_contrasts(phantoms):
    for ph in phantoms:
        labels, act, lesions = ph.labels.array, ph.activity.array, ph.info["lesions"]
        assert 1 <= len(lesions) <= 12 and ph.info["family"] == "water"
        water = labels == WATER_LABEL
        for les in lesions:
            mask = labels == les["label"]
            assert les["label"] > LESION_LABEL_BASE and ph.label_names[les["label"]] == les["name"]
            assert mask.sum() * ph.hu.voxel_volume_ml == pytest.approx(les["volume_ml"])
            assert 0.3 * OBJECT_ML[0] < les["volume_ml"] < 1.5 * OBJECT_ML[1]
            assert les["cold"] or HOT_CONTRAST[0] <= les["contrast"] <= HOT_CONTRAST[1]
        assert act.min() >= 0 and not act[labels == 0].any()  # no activity in air (nor in a wall)
        hot = [les for les in lesions if not les["cold"] and les["volume_ml"] > 5 and not les["necrotic"]]
        for les in hot:  # the object's mean is well above the water's, even with PET-like edges
            assert act[labels == les["label"]].mean() > 1.5 * np.median(act[water])


def test_the_medium_is_water_so_the_dvk_of_the_activity_is_the_truth(phantoms):
    """The premise of the family: one density everywhere the activity is (water, within the CT noise)."""
    for ph in phantoms:
        inside = ph.labels.array >= WATER_LABEL
        water = ph.labels.array == WATER_LABEL
        assert abs(float(np.median(ph.density.array[water])) - 1.0) < 0.03
        assert float(np.std(ph.density.array[water])) < 0.03
        assert (ph.activity.array[~inside] == 0).all()


def test_too_small_a_grid_is_refused():
    with pytest.raises(DblurDoseError, match="at least 40 x 64 x 64"):
        make_water_phantom(0, (20, 64, 64), SPACING)


def test_water_phantoms_are_training_phantoms_and_leave_the_other_split_alone():
    base = data.DataSettings(phantoms=list(range(10)), n_test=2, n_val=1)
    with_water = data.DataSettings(phantoms=list(range(10)), n_test=2, n_val=1, water=[20, 21, 22])
    split = with_water.split()
    assert {i: s for i, s in split.items() if i < 20} == base.split()
    assert all(split[i] == "train" and with_water.family(i) == "water" for i in (20, 21, 22))
    assert with_water.family(0) == "anatomical"
    with pytest.raises(DblurDoseError, match="one family"):
        data.DataSettings(phantoms=[0, 1], held_out=[5], water=[5]).split()
    with pytest.raises(DblurDoseError, match="anatomical and water"):  # never a silent change of family
        data.DataSettings(phantoms=[0, 1, 2], water=[2, 3]).split()


def test_a_data_set_made_before_the_water_family_still_resumes(tmp_path, monkeypatch):
    settings = data.DataSettings(phantoms=[0, 1], realisations=2)
    stored = json.loads(json.dumps(dataclasses.asdict(settings)))
    del stored["water"]  # a manifest written before the field existed
    (tmp_path / data.MANIFEST).write_text(json.dumps({"settings": stored, "phantoms": {}}))
    pytest.importorskip("distributed")

    class Stop(Exception):
        pass

    def no_cluster(*a, **k):
        raise Stop  # past the settings check: generation would start here

    import distributed

    monkeypatch.setattr(distributed, "LocalCluster", no_cluster)
    with pytest.raises(Stop):
        data.generate(tmp_path, settings)
    with pytest.raises(DblurDoseError, match="water"):
        data.generate(tmp_path, data.DataSettings(phantoms=[0, 1], realisations=2, water=[3]))


@pytest.mark.slow
def test_water_phantom_generation_writes_the_exact_truth_without_monte_carlo(tmp_path, monkeypatch):
    pytest.importorskip("pytomography")
    from DblurDoseLib.dose import compute_dose_rate_maps
    from DblurDoseLib.io import dataset as layout
    from DblurDoseLib.io.volume import read_volume
    from DblurDoseLib.physics import montecarlo

    def no_monte_carlo(*a, **k):
        raise AssertionError("a water phantom ran Monte Carlo")

    monkeypatch.setattr(montecarlo, "nested_monte_carlo_dose_rate", no_monte_carlo)
    monkeypatch.setattr(montecarlo, "monte_carlo_dose_rate", no_monte_carlo)
    settings = data.DataSettings(phantoms=[], water=[4], realisations=1, **data.SMALL)
    info = data.generate_phantom(tmp_path, 4, settings, settings.split()[4], log=lambda m: None)
    folder = tmp_path / "p04"
    assert info["family"] == "water" and info["split"] == "train" and "exact_truth" in info["timings_s"]
    hu, activity = read_volume(folder / layout.volume_file("hu")), read_volume(folder / layout.volume_file("activity"))
    truth = read_volume(folder / layout.truth_file())
    np.testing.assert_allclose(truth.array, compute_dose_rate_maps(activity, hu, ("dvk",))["dvk"].array, rtol=1e-5,
                               atol=1e-6 * float(truth.array.max()))
    assert not read_volume(folder / layout.truth_file(uncertainty=True)).array.any()
    assert truth.same_grid(read_volume(folder / layout.realisation_file("spect", 0)))
    assert not layout.label_decays_available(folder)  # no nested Monte Carlo labels
