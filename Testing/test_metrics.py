"""VOI statistics, DRVHs, errors and profiles on cases with known answers."""

import numpy as np
import pytest

from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.evaluation.metrics import (
    dr_x,
    drvh,
    drvh_bin_edges,
    ensemble_noise_percent,
    line_profile,
    mean_error_percent,
    nrmse,
    reference_noise_percent,
    segment_statistics,
    statistics_table,
    unit_suffix,
)
from DblurDoseLib.io.volume import Volume


def test_dr_levels_on_a_ramp():
    dose = np.arange(1, 101, dtype=np.float32).reshape(1, 10, 10)  # values 1..100
    stats = segment_statistics(dose, np.ones_like(dose, bool), voxel_volume_ml=0.5)
    assert stats["volume_ml"] == pytest.approx(50.0)
    assert stats["mean"] == pytest.approx(50.5)
    # the hottest 10% (91..100) all receive at least 91
    assert stats["DR10"] == 91 and stats["DR30"] == 71 and stats["DR70"] == 31 and stats["DR90"] == 11
    assert dr_x(np.array([5.0]), 90) == 5.0


def test_table_columns_carry_the_unit():
    from DblurDoseLib.io.volume import Segment

    assert unit_suffix("mGy/h") == "mGy_per_h" and unit_suffix("nGy/(MBq s)") == "nGy_per_MBq_s"
    dose = np.arange(1, 101, dtype=np.float32).reshape(1, 10, 10)
    segments = [Segment("all", np.ones(dose.shape, bool))]
    row = statistics_table({"dvk": dose}, segments, 0.5, unit="nGy/(MBq s)")[0]
    assert list(row) == ["segment", "method", "volume_mL", "mean_nGy_per_MBq_s", "DR10_nGy_per_MBq_s",
                         "DR30_nGy_per_MBq_s", "DR70_nGy_per_MBq_s", "DR90_nGy_per_MBq_s"]
    assert row["mean_nGy_per_MBq_s"] == pytest.approx(50.5) and row["volume_mL"] == pytest.approx(50.0)


def test_reference_noise_predicts_the_error_of_an_exact_estimate():
    """A noisy reference (known 1-sigma per voxel): the NRMSE of the exact map against it is the floor
    reference_noise_percent predicts, and the spread of its VOI mean over realisations its mean uncertainty."""
    rng = np.random.default_rng(1)
    exact = rng.uniform(1.0, 3.0, size=(8, 20, 20))
    rel = rng.uniform(0.2, 0.6, size=exact.shape)
    mask = np.ones(exact.shape, bool)
    floors, stated, means = [], [], []
    for _ in range(200):
        reference = exact + rng.normal(size=exact.shape) * rel * exact
        noise = reference_noise_percent(reference, rel * exact / reference, mask)
        floors.append(100 * nrmse(exact, reference, mask))
        stated.append(noise)
        means.append(reference.mean())
    assert np.mean(floors) == pytest.approx(np.mean([n["nrmse"] for n in stated]), rel=0.03)
    assert 100 * np.std(means) / exact.mean() == pytest.approx(np.mean([n["mean"] for n in stated]), rel=0.15)


def test_empty_segment_is_a_clear_error():
    with pytest.raises(DblurDoseError, match="liver is empty"):
        segment_statistics(np.ones((2, 2, 2)), np.zeros((2, 2, 2), bool), 1.0, name="liver")


def test_drvh_is_a_proper_histogram():
    rng = np.random.default_rng(0)
    dose = rng.gamma(2.0, 3.0, size=(20, 20, 20))
    mask = np.ones(dose.shape, bool)
    edges, diff, cum = drvh(dose, mask)
    assert diff.sum() == pytest.approx(1.0)
    assert cum[0] == pytest.approx(1.0)
    assert np.all(np.diff(cum) <= 1e-12)
    # the cumulative curve at a bin edge is the fraction at or above it
    i = 40
    assert cum[i] == pytest.approx((dose >= edges[i]).mean(), abs=1e-9)
    assert edges[-1] >= dose.max()


def test_bin_edges_round_up():
    assert drvh_bin_edges(37.0, 10)[-1] == 50.0
    assert drvh_bin_edges(0.012, 10)[-1] == pytest.approx(0.02)


def test_errors():
    truth = np.full((4, 4, 4), 10.0)
    mask = np.ones(truth.shape, bool)
    assert nrmse(truth, truth, mask) == 0
    assert mean_error_percent(truth * 1.1, truth, mask) == pytest.approx(10.0)
    assert nrmse(truth * 1.1, truth, mask) == pytest.approx(0.1)


def test_ensemble_noise_matches_formula():
    rng = np.random.default_rng(1)
    reals = [10 + rng.normal(0, 1, (6, 6, 6)) for _ in range(3)]
    mask = np.ones((6, 6, 6), bool)
    stack = np.stack(reals).reshape(3, -1)
    mu = stack.mean(0)
    expected = np.sqrt(np.mean(((stack - mu) ** 2).sum(0) / 2)) / mu.mean() * 100
    assert ensemble_noise_percent(reals, mask) == pytest.approx(expected)


def test_line_profile_samples_the_right_voxels():
    arr = np.zeros((5, 5, 20), np.float32)
    arr[:, :, :] = np.arange(20, dtype=np.float32)  # value = x index
    vol = Volume(arr, spacing=(2.0, 1.0, 1.0), origin=(10.0, 0.0, 0.0))
    dist, values = line_profile(vol, (10.0, 2.0, 2.0), (48.0, 2.0, 2.0), n_points=20)
    np.testing.assert_allclose(dist, np.linspace(0, 38, 20))
    np.testing.assert_allclose(values, np.arange(20), atol=1e-5)


def test_absorbed_power_by_medium_finds_where_the_energy_differs():
    """A map that doubles the truth in lung only: twice the truth's power in lung, the truth's in soft tissue and
    bone; the whole-body ratio is 1 plus the lung's share of the truth's power; the media cover the body."""
    from DblurDoseLib.evaluation.metrics import absorbed_power_by_medium, absorbed_power_ratio, power_media

    rng = np.random.default_rng(1)
    density = rng.choice([0.001, 0.3, 1.0, 1.04, 1.5], size=(6, 12, 12)).astype(np.float32)
    truth = rng.uniform(0.5, 5.0, density.shape)
    media = power_media(density)
    body = density >= 0.1
    assert not (media["lung"] & media["soft tissue"]).any() and not (media["soft tissue"] & media["bone"]).any()
    np.testing.assert_array_equal(media["lung"] | media["soft tissue"] | media["bone"], body)
    estimate = np.where(media["lung"], 2 * truth, truth)
    ratios = absorbed_power_by_medium(estimate, truth, density)
    assert ratios == pytest.approx({"lung": 2.0, "soft tissue": 1.0, "bone": 1.0}, rel=1e-12)
    lung_share = (truth * density)[media["lung"]].sum() / (truth * density)[body].sum()
    assert absorbed_power_ratio(estimate, truth, density) == pytest.approx(1 + lung_share, rel=1e-12)
    assert set(absorbed_power_by_medium(truth, truth, np.ones_like(density))) == {"soft tissue"}  # no lung, no bone


def test_absorbed_power_ratio_weighs_by_mass_and_leaves_out_air():
    from DblurDoseLib.evaluation.metrics import absorbed_power_ratio

    rng = np.random.default_rng(0)
    density = np.where(rng.random((8, 16, 16)) < 0.2, 0.001, rng.uniform(0.3, 1.9, (8, 16, 16)))
    truth = rng.uniform(0.5, 5.0, density.shape)
    estimate = 0.9 * truth
    estimate[density < 0.1] = 1e6  # whatever lies in air does not count
    assert absorbed_power_ratio(estimate, truth, density) == pytest.approx(0.9, rel=1e-12)
    # mass matters: halving the dose rate in the densest half of the body lowers the power by their share
    dense = density > np.median(density[density >= 0.1])
    estimate = truth.copy()
    estimate[dense] *= 0.5
    body = density >= 0.1
    expected = 1 - 0.5 * (truth * density)[dense & body].sum() / (truth * density)[body].sum()
    assert absorbed_power_ratio(estimate, truth, density) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("correction", ["ratio", "additive", "floored"])
def test_correction_diagnostics_find_a_dead_region_and_the_floor(correction):
    """A live correction varies from voxel to voxel; a dead network region gives its bias, one value,
    whatever the input. Built maps: 6% of tissue under one constant correction, 1% at the 5% floor."""
    from DblurDoseLib.evaluation.metrics import correction_diagnostics

    rng = np.random.default_rng(1)
    shape = (20, 50, 50)
    density = np.full(shape, 1.04)
    density[:, :, :5] = 0.0012  # air: never counted
    dvk = rng.uniform(2.0, 50.0, shape)  # additive: c never reaches the floor by itself
    live_c = rng.normal(0.0, 0.2, shape)  # a live correction
    u = rng.random(shape)
    dead, floored = u < 0.06, (u >= 0.06) & (u < 0.07)

    def cnn_map(c):
        cnn = dvk * np.exp(c) if correction == "ratio" else dvk + c
        cnn[floored] = 0.05 * dvk[floored]
        return cnn.astype(np.float32)

    tissue = density >= 0.1
    got = correction_diagnostics(cnn_map(np.where(dead, -0.085, live_c)), dvk.astype(np.float32), density,
                                 correction)
    assert got["tissue_voxels"] == tissue.sum()
    assert got["floor_share"] == pytest.approx((floored & tissue).sum() / tissue.sum(), rel=1e-9)
    # live voxels whose correction happens to fall in the same bins add a few voxels in 10,000
    assert got["constant_share"] == pytest.approx((dead & tissue).sum() / tissue.sum(), abs=5e-4)
    assert got["constant_value"] == pytest.approx(-0.085, abs=1e-4)
    live = correction_diagnostics(cnn_map(live_c), dvk.astype(np.float32), density, correction)
    assert live["constant_share"] < 1e-3  # without the dead region no value repeats much
    assert live["floor_share"] == got["floor_share"] and "floor_truth_ratio" not in live
    # with the truth: at the floor it is 0.4 x the DVK (an overshoot: the CNN gives 0.05 x), elsewhere the DVK
    truth = np.where(floored, 0.4 * dvk, dvk)
    judged = correction_diagnostics(cnn_map(live_c), dvk.astype(np.float32), density, correction, truth=truth)
    at = floored & tissue
    assert judged["floor_truth_ratio"] == pytest.approx(0.4, rel=1e-6)
    assert judged["floor_truth_share"] == pytest.approx(truth[at].sum() / truth[tissue].sum(), rel=1e-9)
    right = correction_diagnostics(cnn_map(live_c), dvk.astype(np.float32), density, correction,
                                   truth=np.where(floored, 0.01 * dvk, dvk))
    assert right["floor_truth_ratio"] == pytest.approx(0.01, rel=1e-6)  # the floor is right there
    assert np.isnan(correction_diagnostics(dvk, dvk, density, correction, truth=truth)["floor_truth_ratio"])
