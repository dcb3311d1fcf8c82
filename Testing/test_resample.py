"""Activity is conserved when the SPECT moves onto the CT grid; labels keep their values."""

import numpy as np
import pytest

from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.geometry.resample import (
    grid_over,
    resample_activity,
    resample_box,
    resample_labels,
    working_grid,
)
from DblurDoseLib.io.volume import Volume


def _grid(shape, spacing, direction=None, centre=(0.0, 0.0, 0.0)):
    direction = np.eye(3) if direction is None else direction
    half = (np.asarray(shape[::-1]) - 1) / 2 * np.asarray(spacing)
    origin = np.asarray(centre) - direction @ half
    return Volume(np.zeros(shape, np.float32), spacing, tuple(origin), direction)


def _blob_spect(direction=None):
    spect = _grid((24, 24, 24), (4.8, 4.8, 4.8), direction)
    z, y, x = np.indices(spect.shape)
    r2 = (x - 11.3) ** 2 + (y - 12.6) ** 2 + (z - 12.1) ** 2
    arr = np.where(r2 < 16, 5e5, 0).astype(np.float32)  # a 4-voxel-radius sphere, sharp edge
    arr[12, 12, 14] = 3e6  # one hot voxel
    return spect.with_array(arr)


@pytest.mark.parametrize("oblique", [False, True])
def test_source_well_inside_keeps_total_within_half_percent(oblique):
    a = np.deg2rad(15)
    direction = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]) if oblique else None
    spect = _blob_spect(direction)
    ct = _grid((40, 120, 120), (0.98, 0.98, 3.0))
    before = spect.array.sum(dtype=np.float64) * spect.voxel_volume_ml
    report = []
    moved = resample_activity(spect, ct, report)
    after = moved.array.sum(dtype=np.float64) * ct.voxel_volume_ml
    assert abs(after / before - 1) < 0.005
    # interpolation alone is nearly conservative: the rescale factor stays close to 1
    assert abs(report[0].rescale_factor - 1) < 0.05
    # the activity stays where it was: centres of mass agree within a CT voxel
    def com(v):
        idx = np.argwhere(v.array > 0)
        w = v.array[v.array > 0]
        pts = np.asarray(v.origin) + (idx[:, ::-1] * np.asarray(v.spacing)) @ v.direction.T
        return (pts * w[:, None]).sum(0) / w.sum()
    np.testing.assert_allclose(com(moved), com(spect), atol=1.0)


def test_non_overlapping_fields_are_refused():
    spect = _blob_spect()
    ct = _grid((10, 20, 20), (2.0, 2.0, 2.0), centre=(500.0, 0.0, 0.0))
    with pytest.raises(DblurDoseError, match="do not overlap"):
        resample_activity(spect, ct)


def test_partial_overlap_conserves_what_is_inside():
    spect = _grid((10, 10, 10), (4.0, 4.0, 4.0)).with_array(np.ones((10, 10, 10), np.float32))
    ct = _grid((10, 10, 10), (4.0, 4.0, 4.0), centre=(20.0, 0.0, 0.0))  # half the SPECT field
    report = []
    moved = resample_activity(spect, ct, report)
    assert report[0].fraction_inside == pytest.approx(0.5)
    assert moved.array.sum() * ct.voxel_volume_ml == pytest.approx(report[0].inside_target_bq, rel=1e-5)


def test_labels_keep_values():
    labels = _grid((8, 8, 8), (4.0, 4.0, 4.0)).with_array(np.zeros((8, 8, 8), np.int16))
    labels.array[2:6, 2:6, 2:4] = 7
    labels.array[2:6, 2:6, 4:6] = 300
    moved = resample_labels(labels, _grid((16, 16, 16), (2.0, 2.0, 2.0)))
    assert set(np.unique(moved.array)) == {0, 7, 300}
    assert (moved.array == 7).sum() == pytest.approx((labels.array == 7).sum() * 8, rel=0.01)


def test_centres_inside_shortcut_equals_point_by_point():
    from DblurDoseLib.geometry.resample import _centres_inside_any, centres_inside

    source = Volume(np.zeros((9, 11, 13), np.float32), (4.8, 4.8, 4.8), (-30.0, -20.0, -25.0))
    for origin, spacing in [((-12.0, -9.5, -7.0), (0.98, 0.98, 3.0)), ((0.0, 2.4, -40.0), (4.0, 3.0, 5.0))]:
        target = Volume(np.zeros((10, 30, 40), np.float32), spacing, origin)
        inside = centres_inside(source, target)
        assert inside.any() and not inside.all()
        np.testing.assert_array_equal(inside, _centres_inside_any(source, target))


def test_grid_over_keeps_the_field_edge_aligned_or_centred():
    ct = Volume(np.zeros((13, 20, 30), np.float32), (1.5, 2.0, 3.0), (10.0, -5.0, 7.0))
    edge = grid_over(ct, (4.0, 4.0, 4.0))
    assert edge.shape == (10, 10, 12)  # ceil(39/4), ceil(40/4), ceil(45/4): covers the field
    lo = np.asarray(ct.origin) - np.asarray(ct.spacing) / 2
    np.testing.assert_allclose(np.asarray(edge.origin) - 2.0, lo)  # the same first voxel edge
    assert working_grid(ct, (4.0, 4.0, 4.0)).same_grid(edge)
    centred = grid_over(ct, (4.0, 4.0, 4.0), centred=True)
    assert centred.shape == (10, 10, 11)  # round(39/4), round(40/4), round(45/4)
    np.testing.assert_allclose(centred.physical_corners().mean(0), ct.physical_corners().mean(0))


def test_box_resampling_is_exact_for_whole_blocks():
    rng = np.random.default_rng(3)
    fine = Volume(rng.random((8, 12, 12)).astype(np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    coarse = grid_over(fine, (2.0, 3.0, 4.0))
    out = resample_box(fine, coarse, "concentration")
    expected = fine.array.astype(np.float64).reshape(2, 4, 4, 3, 6, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(out.array, expected, rtol=1e-6)
    assert float(out.array.sum()) * coarse.voxel_volume_ml == pytest.approx(float(fine.array.sum()) * fine.voxel_volume_ml,
                                                                           rel=1e-6)
    outside = Volume(np.zeros((2, 2, 2), np.float32), (4.0, 4.0, 4.0), (100.0, 0.0, 0.0))
    assert not resample_box(fine, outside, "mean").array.any()  # zero outside the source field
