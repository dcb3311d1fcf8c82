"""Virtual patients: seeded, anthropomorphic, the same patient on any grid, plausible CT and uptake."""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pytest
from scipy import ndimage

from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.simulation.phantom import (
    BONE_LESION_HU,
    LABELS,
    LESION_CONTRAST,
    LESION_LABEL_BASE,
    LESION_SIZE_CLASSES_ML,
    LESIONS_PER_CLASS,
    LUMBAR_L2_L5,
    TISSUES,
    VERTEBRA_LABEL_BASE,
    Phantom,
    make_phantom,
    standard_spacing,
    voi_masks,
)

SMALL = (48, 96, 96)  # the standard 50 x 50 x 39 cm field at about 5.2 x 5.2 x 8.1 mm


@cache
def _phantom(seed: int, shape=SMALL, time_days: float = 1.0) -> Phantom:
    return make_phantom(seed, shape=shape, spacing=standard_spacing(shape), time_days=time_days)


def _mean(vol, mask) -> float:
    return float(np.asarray(vol.array)[mask].mean())


def test_grid_geometry_and_types():
    p = _phantom(3)
    assert p.hu.shape == p.activity.shape == p.labels.shape == p.density.shape == SMALL
    assert p.hu.array.dtype == np.float32 and p.activity.array.dtype == np.float32
    assert p.density.array.dtype == np.float32 and p.labels.array.dtype == np.int16
    for vol in (p.hu, p.density, p.activity, p.labels, p.tissue):
        assert vol.same_grid(p.hu)
        np.testing.assert_allclose(vol.direction, np.eye(3))
    # the grid is centred on (0, 0, 0) and covers the standard field
    corners = p.hu.physical_corners()
    np.testing.assert_allclose(corners.min(axis=0), -corners.max(axis=0), atol=1e-3)
    np.testing.assert_allclose(corners.max(axis=0) * 2, (501.76, 501.76, 390.0), atol=1e-3)
    # the default grid is the paper's CT grid
    assert standard_spacing((130, 512, 512)) == pytest.approx((0.98, 0.98, 3.0))


def test_deterministic_for_a_seed_and_different_between_seeds():
    shape = (24, 48, 48)
    a = make_phantom(5, shape=shape, spacing=None)
    b = make_phantom(5, shape=shape, spacing=None)
    c = make_phantom(6, shape=shape, spacing=None)
    for name in ("hu", "density", "activity", "labels"):
        np.testing.assert_array_equal(getattr(a, name).array, getattr(b, name).array)
    assert a.info == b.info and a.label_names == b.label_names
    assert not np.array_equal(a.labels.array, c.labels.array)
    assert not np.allclose(a.activity.array, c.activity.array)


def test_patients_vary_like_the_papers():
    infos = [_phantom(s, (24, 48, 48)).info for s in range(6)]
    assert {i["sex"] for i in infos} == {"M", "F"}
    weights = [i["weight_kg"] for i in infos]
    assert all(45 <= w <= 105 for w in weights) and max(weights) - min(weights) > 15
    sites = {les["site"] for i in infos for les in i["lesions"]}
    assert {"liver", "lung"} <= sites and sites - {"liver", "lung"}
    assert any(les["necrotic"] for i in infos for les in i["lesions"])
    assert all(4 <= len(i["lesions"]) <= 12 for i in infos)


def test_every_organ_is_labelled_with_names():
    p = _phantom(3)
    labels = np.asarray(p.labels.array)
    present = set(np.unique(labels).tolist()) - {0}
    assert present <= set(p.label_names)
    optional = {LABELS["gallbladder"], LABELS["arm_bones"]}
    for name, value in LABELS.items():
        if value in optional:
            continue
        assert value in present, f"{name} missing"
        assert p.label_names[value] == name
    assert set(LUMBAR_L2_L5) <= present
    assert [p.label_names[v] for v in LUMBAR_L2_L5] == ["vertebra_L2", "vertebra_L3", "vertebra_L4", "vertebra_L5"]
    lesions = p.info["lesions"]
    assert lesions and [les["label"] for les in lesions] == list(range(LESION_LABEL_BASE + 1, LESION_LABEL_BASE + 1 + len(lesions)))
    for les in lesions:
        assert p.label_names[les["label"]] == les["name"]
    masks = voi_masks(p)
    for key in ("healthy_liver", "kidney_left", "kidney_right", "spleen", "lumbar_L2_L5", "lungs", "body",
                "kidney_left_cortex", "kidney_left_medulla", "kidney_left_pelvis", "lesion_1"):
        assert masks[key].any(), key


@pytest.mark.parametrize("seed", [0, 3, 8])
def test_lesion_volumes_match_the_labels(seed):
    p = _phantom(seed)
    labels = np.asarray(p.labels.array)
    vox = p.labels.voxel_volume_ml
    for les in p.info["lesions"]:
        assert 0.9 <= les["volume_ml"] <= 190.0
        n = int((labels == les["label"]).sum())
        assert n > 0, les
        if les["volume_ml"] >= 30 * vox:  # well resolved at this grid
            assert n * vox == pytest.approx(les["volume_ml"], rel=0.2), les


def test_organ_volumes_are_plausible():
    for seed in range(6):
        p = _phantom(seed)
        m = voi_masks(p)
        ml = {k: float(v.sum()) * p.labels.voxel_volume_ml for k, v in m.items()}
        assert 1000 <= ml["liver"] <= 2500, (seed, ml["liver"])
        assert 100 <= ml["kidney_left"] <= 300 and 100 <= ml["kidney_right"] <= 300, seed
        assert 100 <= ml["spleen"] <= 500, (seed, ml["spleen"])
        for v in LUMBAR_L2_L5:
            assert 15 <= ml[p.label_names[v]] <= 90, (seed, p.label_names[v], ml[p.label_names[v]])
        assert 1500 <= ml["lungs"] <= 9000, seed
        # kidney: mostly cortex, with medulla and a small pelvis
        for side in ("left", "right"):
            k = ml[f"kidney_{side}"]
            assert 0.55 < ml[f"kidney_{side}_cortex"] / k < 0.9
            assert 0.08 < ml[f"kidney_{side}_medulla"] / k < 0.35


def test_ct_numbers_per_tissue():
    p = _phantom(3)
    hu, tissue = p.hu.array, p.tissue.array
    expected = {"lung": (-900, -750), "fat": (-130, -70), "muscle": (35, 70), "liver": (35, 70), "spleen": (35, 60),
                "kidney_cortex": (25, 50), "kidney_medulla": (15, 40), "blood": (30, 50), "gi_content": (0, 35),
                "trabecular_bone": (150, 350)}
    for name, (lo, hi) in expected.items():
        med = float(np.median(hu[tissue == TISSUES[name]]))
        assert lo <= med <= hi, (name, med)
    outside = tissue == TISSUES["air"]
    assert float(np.median(hu[outside])) == pytest.approx(-1000, abs=5)
    assert 8 <= float(hu[outside].std()) <= 20  # mild CT noise
    assert hu.min() >= -1024 and hu.max() <= 3071
    # lesions in the liver are hypodense on this non-contrast CT
    m = voi_masks(p)
    for les in p.info["lesions"]:
        if les["organ"] == "liver" and les["volume_ml"] > 5:
            assert _mean(p.hu, m[les["name"]]) < _mean(p.hu, m["healthy_liver"])


def test_cortical_bone_at_full_resolution_in_a_cropped_field():
    # the paper's voxel size over a central 98 x 98 x 60 mm crop: same patient, finer sampling
    p = make_phantom(3, shape=(20, 100, 100), spacing=(0.98, 0.98, 3.0))
    cortical = p.tissue.array == TISSUES["cortical_bone"]
    assert cortical.any()
    assert float(np.median(p.hu.array[cortical])) > 1000
    assert float(p.density.array[cortical].mean()) > 1.6


def test_density_from_hu():
    p = _phantom(3)
    d = p.density.array
    m = voi_masks(p)
    assert float(d[m["lungs"]].mean()) < 0.5
    assert float(d[m["lumbar_L2_L5"]].mean()) > 1.1
    assert 1.0 < float(d[m["healthy_liver"]].mean()) < 1.1
    assert float(d[~m["body"]].max()) < 0.1


def test_activity_pattern():
    p = _phantom(3)
    a = np.asarray(p.activity.array)
    m = voi_masks(p)
    assert np.all(a >= 0) and np.all(a[~m["body"]] == 0)
    background = _mean(p.activity, np.asarray(p.labels.array) == LABELS["muscle"])
    assert 1e3 < background < 5e4  # Bq/mL, day 1
    for side in ("left", "right"):
        cortex = _mean(p.activity, m[f"kidney_{side}_cortex"])
        assert cortex > _mean(p.activity, m[f"kidney_{side}_medulla"])
        assert 5e4 < cortex < 5e5  # 0.05-0.5 MBq/mL at day 1 after 7.4 GBq
        assert _mean(p.activity, m[f"kidney_{side}"]) > 5 * background
    for organ in ("healthy_liver", "spleen"):
        assert _mean(p.activity, m[organ]) > 3 * background
    for les in p.info["lesions"]:
        assert _mean(p.activity, m[les["name"]]) > 3 * background, les
    assert _mean(p.activity, m["lungs"]) < background
    vox = p.activity.voxel_volume_ml
    total = float(a.sum(dtype=np.float64)) * vox / 1e6
    assert total == pytest.approx(p.info["total_activity_MBq"], rel=1e-4)
    assert 100 < total < 2500
    # PET-like edges: no step at the kidney border, some spill into the perirenal fat
    assert a[m["kidney_left"]].max() > a[m["kidney_left"]].min() * 2


def test_same_patient_at_two_resolutions():
    coarse = _phantom(4, (40, 80, 80))
    fine = _phantom(4, (65, 128, 128))
    assert coarse.info["lesions"] == fine.info["lesions"]
    assert coarse.info["total_activity_MBq"] == pytest.approx(fine.info["total_activity_MBq"], rel=0.03)
    vc, vf = coarse.info["volumes_ml"], fine.info["volumes_ml"]
    assert vc["liver"] == pytest.approx(vf["liver"], rel=0.03)
    for organ in ("kidney_left", "kidney_right", "spleen"):
        assert vc[organ] == pytest.approx(vf[organ], rel=0.08), organ


def test_time_points_follow_effective_clearance():
    day1, day4 = _phantom(2, (24, 48, 48), 1.0), _phantom(2, (24, 48, 48), 4.0)
    np.testing.assert_array_equal(day1.labels.array, day4.labels.array)
    np.testing.assert_array_equal(day1.hu.array, day4.hu.array)
    assert day4.info["total_activity_MBq"] < day1.info["total_activity_MBq"]
    c1, c4 = day1.info["concentrations_MBq_per_mL"], day4.info["concentrations_MBq_per_mL"]
    teff = day1.info["effective_half_lives_h"]["kidney"]
    assert c4["kidney_cortex"] == pytest.approx(c1["kidney_cortex"] * 2 ** (-72 / teff), rel=1e-6)
    # lesions clear more slowly than kidneys: tumour-to-kidney ratios rise with time
    for l1, l4 in zip(day1.info["lesions"], day4.info["lesions"]):
        assert l4["uptake_MBq_per_mL"] / c4["kidney_cortex"] > l1["uptake_MBq_per_mL"] / c1["kidney_cortex"]


def test_info_is_json_ready():
    p = _phantom(3)
    info = json.loads(json.dumps(p.info))
    for key in ("seed", "sex", "height_cm", "weight_kg", "time_days", "total_activity_MBq", "lesions"):
        assert key in info
    les = info["lesions"][0]
    assert set(les) >= {"label", "organ", "volume_ml", "uptake_MBq_per_mL", "necrotic"}


@pytest.mark.parametrize("kwargs", [{"time_days": 0}, {"time_days": -1}, {"shape": (10, 10)},
                                    {"spacing": (1.0, 0.0, 1.0)}])
def test_bad_arguments_raise_a_clear_error(kwargs):
    args = {"seed": 1, "shape": (16, 32, 32), "spacing": None} | kwargs
    with pytest.raises(DblurDoseError):
        make_phantom(**args)


def _class_counts(lesions) -> list[int]:
    return [sum(lo <= les["volume_ml"] < hi for les in lesions) for lo, hi in LESION_SIZE_CLASSES_ML]


def _around(mask: np.ndarray, inner: int, outer: int) -> np.ndarray:
    """Voxels between ``inner`` and ``outer`` dilations of ``mask`` (a shell around it)."""
    grow = lambda n: ndimage.binary_dilation(mask, iterations=n) if n else mask  # noqa: E731
    return grow(outer) & ~grow(inner)


def test_many_lesions_with_a_large_share_of_small_ones():
    lesions = [les for s in range(8) for les in _phantom(s, (24, 48, 48)).info["lesions"]]
    counts = [len(_phantom(s, (24, 48, 48)).info["lesions"]) for s in range(8)]
    assert all(4 <= n <= 12 for n in counts) and np.mean(counts) >= 6, counts
    vols = np.array([les["volume_ml"] for les in lesions])
    assert vols.min() >= 0.95
    assert np.mean(vols <= 10) >= 0.4 and np.mean(vols < 5) >= 0.2, vols
    assert vols.max() > 20
    for les in lesions:
        assert {"site", "volume_ml", "contrast", "necrotic"} <= set(les)
        assert LESION_CONTRAST[0] <= les["contrast"] <= LESION_CONTRAST[1]
        assert les["necrotic"] is False or les["volume_ml"] >= 10
    sites = {les["site"] for les in lesions}
    assert {"liver", "kidney", "bone", "lung_base"} <= sites, sites


def test_lesion_contrast_measured_on_the_activity_map():
    checked = 0
    for seed in (0, 3, 9):
        p = make_phantom(seed, shape=SMALL, spacing=None, pet_fwhm_mm=0.0)
        act, labels, tissue = p.activity.array, p.labels.array, p.tissue.array
        for les in p.info["lesions"]:
            if les["organ"] != "liver":
                continue
            m = labels == les["label"]
            shell = _around(m, 1, 2) & (labels == LABELS["liver"])
            core = m & (tissue == TISSUES["lesion"])
            if shell.sum() < 20 or core.sum() < 3:
                continue
            measured = float(act[core].mean() / act[shell].mean())
            assert 0.5 * LESION_CONTRAST[0] <= measured <= 1.5 * LESION_CONTRAST[1], les
            assert 0.5 < measured / les["contrast"] < 2.0, (measured, les)
            checked += 1
    assert checked >= 3


def test_bone_lesions_are_sclerotic_inside_a_vertebral_body():
    p = _phantom(4)  # this patient has a vertebral lesion
    bone = [les for les in p.info["lesions"] if les["site"] == "bone"]
    assert bone
    labels, hu, rho = p.labels.array, p.hu.array, p.density.array
    vertebrae = (labels > VERTEBRA_LABEL_BASE) & (labels <= VERTEBRA_LABEL_BASE + 17)
    trabecular = float(rho[p.tissue.array == TISSUES["trabecular_bone"]].mean())
    for les in bone:
        assert les["organ"] == "bone" and les["contrast_reference"] == "marrow"
        assert BONE_LESION_HU[0] <= les["hu"] <= BONE_LESION_HU[1]
        m = labels == les["label"]
        assert m.any()
        assert BONE_LESION_HU[0] - 30 <= float(hu[m].mean()) <= BONE_LESION_HU[1] + 30
        assert float(rho[m].mean()) > max(1.25, trabecular)  # the dose engine sees bone, denser than marrow
        assert vertebrae[_around(m, 0, 1)].mean() > 0.3  # set in a vertebral body


def test_kidney_and_lung_base_lesions():
    p = _phantom(2)
    labels = p.labels.array
    kidneys = np.isin(labels, [LABELS["kidney_left"], LABELS["kidney_right"]])
    lungs = np.isin(labels, [LABELS["lung_left"], LABELS["lung_right"]])
    sites = {les["site"] for les in p.info["lesions"]}
    assert {"kidney", "lung_base"} <= sites
    for les in p.info["lesions"]:
        m = labels == les["label"]
        if les["site"] == "kidney":  # outside the kidney, within about a voxel of it
            assert kidneys[_around(m, 0, 2)].any(), les
        elif les["site"] == "lung_base":  # in the lung with the diaphragm just below
            assert les["organ"] == "lung" and lungs[_around(m, 0, 1)].any()
            below = np.zeros_like(m)
            for k in range(1, 5):  # up to ~32 mm below
                below[:-k] |= m[k:]
            assert (~lungs[below & ~m] & (labels[below & ~m] > 0)).any()


def test_lesion_classes_fill_every_size_class_deterministically():
    shape = (24, 48, 48)
    for seed in (0, 7):
        plain = make_phantom(seed, shape=shape, spacing=None)
        a = make_phantom(seed, shape=shape, spacing=None, lesion_classes=True)
        b = make_phantom(seed, shape=shape, spacing=None, lesion_classes=True)
        assert a.info == b.info
        np.testing.assert_array_equal(a.labels.array, b.labels.array)
        assert all(n >= LESIONS_PER_CLASS for n in _class_counts(a.info["lesions"])), a.info["lesions"]
        # the same patient: its own lesions first, then the ones added to fill the classes
        n = len(plain.info["lesions"])
        assert a.info["lesions"][:n] == plain.info["lesions"]
        assert a.info["weight_kg"] == plain.info["weight_kg"]
