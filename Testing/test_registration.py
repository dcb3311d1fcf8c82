"""Registration of a time point's CT to the reference CT, and moving its SPECT with it.

Synthetic patient: a body ellipsoid (fat shell, soft tissue) with a spine, liver, kidneys and
lungs, evaluated analytically (2x2x2 sub-samples per voxel) in patient coordinates, and a couch
that stays fixed to the scanner. The moving time point is the same patient moved by a known
rigid transform (a few degrees, a few cm), imaged on another grid.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.geometry.registration import (
    MIN_BODY_DICE,
    apply_to_activity,
    apply_to_volume,
    body_mask,
    dice,
    register_ct,
)
from DblurDoseLib.io.volume import Volume

sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)

ANGLES_DEG = (3.0, -2.0, 4.0)  # about x, y, z
SHIFT_MM = (15.0, -20.0, 25.0)
HOT_CENTRE_MM = np.array([-50.0, -10.0, 10.0])  # in the liver, reference (patient) coordinates
HOT_RADIUS_MM = 15.0

# (centre, semi-axes) mm, HU; later entries overwrite earlier ones
ORGANS = (
    ((0.0, 0.0, 0.0), (120.0, 85.0, 70.0), -100.0),  # fat shell
    ((0.0, 0.0, 0.0), (110.0, 75.0, 62.0), 40.0),  # soft tissue
    ((-50.0, -10.0, 10.0), (45.0, 40.0, 35.0), 60.0),  # liver
    ((45.0, 35.0, -15.0), (15.0, 20.0, 25.0), 30.0),  # left kidney
    ((-45.0, 35.0, -25.0), (15.0, 20.0, 25.0), 35.0),  # right kidney
    ((55.0, 0.0, 45.0), (35.0, 45.0, 20.0), -800.0),  # left lung
    ((-55.0, 0.0, 45.0), (30.0, 40.0, 20.0), -800.0),  # right lung
    ((0.0, 55.0, 0.0), (15.0, 15.0, 70.0), 700.0),  # spine (an elongated ellipsoid)
)


def grid(shape, spacing, centre=(0.0, 0.0, 0.0)) -> Volume:
    """An empty grid of ``shape`` [z,y,x] and ``spacing`` (x,y,z) mm centred on ``centre`` mm."""
    origin = tuple(c - (n - 1) / 2 * s for c, n, s in zip(centre, shape[::-1], spacing))
    return Volume(np.zeros(shape, dtype=np.float32), spacing, origin)


def subsample_points(volume: Volume) -> np.ndarray:
    """Physical points (mm) of 2x2x2 sub-samples of every voxel, shape (8, nz, ny, nx, 3)."""
    nz, ny, nx = volume.shape
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    index = np.stack([i, j, k], axis=-1).astype(np.float64)
    offsets = [np.array([a, b, c]) for a in (-0.25, 0.25) for b in (-0.25, 0.25) for c in (-0.25, 0.25)]
    spacing = np.asarray(volume.spacing)
    return np.stack([np.asarray(volume.origin) + ((index + o) * spacing) @ volume.direction.T for o in offsets])


def patient_hu(points: np.ndarray) -> np.ndarray:
    hu = np.full(points.shape[:-1], -1000.0)
    for centre, axes, value in ORGANS:
        inside = (((points - np.asarray(centre)) / np.asarray(axes)) ** 2).sum(axis=-1) <= 1.0
        hu[inside] = value
    return hu


def couch_hu(points: np.ndarray) -> np.ndarray:
    """The couch, fixed to the scanner: 300 HU, 10 mm thick below the back (y 100-110 mm)."""
    y = points[..., 1]
    return np.where((y >= 100.0) & (y <= 110.0) & (np.abs(points[..., 0]) < 140.0), 300.0, -1000.0)


def true_transform(angles_deg=ANGLES_DEG, shift_mm=SHIFT_MM) -> sitk.Euler3DTransform:
    """Reference (patient) points -> the moving time point's scanner points."""
    return sitk.Euler3DTransform((0.0, 0.0, 0.0), *np.radians(angles_deg), shift_mm)


def image(empty: Volume, to_patient=None, scene=patient_hu, couch=True) -> Volume:
    """``scene`` sampled on ``empty``'s grid; ``to_patient`` maps scanner points to patient points."""
    points = subsample_points(empty)
    patient = points if to_patient is None else to_patient(points)
    values = scene(patient)
    if couch:
        values = np.maximum(values, couch_hu(points))
    return empty.with_array(values.mean(axis=0).astype(np.float32))


def inverse_map(transform):
    inverse = transform.GetInverse()
    matrix = np.asarray(inverse.GetMatrix()).reshape(3, 3)
    offset = np.asarray(inverse.TransformPoint((0.0, 0.0, 0.0)))
    return lambda points: points @ matrix.T + offset


def hot_sphere(points: np.ndarray) -> np.ndarray:
    """1 MBq/mL in a 15 mm sphere at HOT_CENTRE_MM, 1 kBq/mL elsewhere in the body."""
    inside = ((points - HOT_CENTRE_MM) ** 2).sum(axis=-1) <= HOT_RADIUS_MM ** 2
    return np.where(inside, 1e6, np.where(patient_hu(points) > -1000.0, 1e3, 0.0))


@pytest.fixture(scope="module")
def reference_ct() -> Volume:
    return image(grid((40, 64, 64), (5.0, 5.0, 5.0)))


@pytest.fixture(scope="module")
def moving_ct() -> Volume:
    """The patient moved by the true transform, on a coarser grid (6 mm) with another centre."""
    return image(grid((36, 56, 56), (6.0, 6.0, 6.0), centre=(10.0, -5.0, 15.0)), inverse_map(true_transform()))


@pytest.fixture(scope="module")
def rigid(moving_ct, reference_ct):
    return register_ct(moving_ct, reference_ct, "rigid", label="day 3")


def test_rigid_recovers_known_motion(rigid, reference_ct):
    truth = true_transform()
    assert rigid.mode == "rigid"
    assert np.allclose(rigid.rotation_deg, ANGLES_DEG, atol=1.0), rigid.rotation_deg
    true_angle = np.degrees(np.arccos((np.trace(np.reshape(truth.GetMatrix(), (3, 3))) - 1) / 2))
    assert rigid.rotation_angle_deg == pytest.approx(true_angle, abs=1.0)
    # translation: where the two transforms send points of the body (centre and a box around it)
    box = [(x, y, z) for x in (-100.0, 100.0) for y in (-70.0, 70.0) for z in (-60.0, 60.0)] + [(0.0, 0.0, 0.0)]
    errors = [np.linalg.norm(np.subtract(rigid.transform.TransformPoint(p), truth.TransformPoint(p))) for p in box]
    assert max(errors) < 2.0, errors
    assert np.linalg.norm(np.subtract(rigid.transform.TransformPoint(rigid.centre_mm),
                                      truth.TransformPoint(rigid.centre_mm))) < 1.5
    assert rigid.body_dice > 0.95 and rigid.hu_correlation > 0.8 and rigid.body_overlap > 0.99
    assert rigid.metric_value < 0 and np.isfinite(rigid.metric_value)


def test_moved_ct_matches_reference(rigid, moving_ct, reference_ct):
    moved = apply_to_volume(moving_ct, rigid, reference_ct)
    assert moved.same_grid(reference_ct)
    assert dice(body_mask(moved), body_mask(reference_ct)) > 0.95
    labels = moving_ct.with_array((np.asarray(moving_ct.array) > 500).astype(np.int16))  # the spine
    moved_labels = apply_to_volume(labels, rigid, reference_ct, kind="nearest")
    assert moved_labels.array.dtype == np.int16 and set(np.unique(moved_labels.array)) <= {0, 1}
    assert dice(moved_labels.array == 1, np.asarray(reference_ct.array) > 500) > 0.8


def hot_centroid(volume: Volume) -> np.ndarray:
    """Centre (mm) of the voxels above half the maximum, weighted by activity."""
    arr = np.asarray(volume.array, dtype=np.float64)
    weights = np.where(arr > 0.5 * arr.max(), arr, 0.0)
    k, j, i = np.nonzero(weights)
    index = np.stack([i, j, k], axis=-1) * np.asarray(volume.spacing)
    points = np.asarray(volume.origin) + index @ volume.direction.T
    return (points * weights[k, j, i, None]).sum(axis=0) / weights.sum()


def test_spect_follows_its_ct_and_keeps_its_activity(rigid, reference_ct):
    # the SPECT of the moving time point: its own grid (7.2 mm), in the moving scanner's space
    spect = image(grid((30, 46, 46), (7.2, 7.2, 7.2), centre=(5.0, 0.0, 10.0)), inverse_map(true_transform()),
                  hot_sphere, couch=False)
    reference_grid = grid((40, 64, 64), (5.0, 5.0, 5.0))
    report = []
    moved = apply_to_activity(spect, rigid, reference_grid, report)
    assert moved.same_grid(reference_grid)
    total = float(np.asarray(spect.array, dtype=np.float64).sum()) * spect.voxel_volume_ml
    moved_total = float(np.asarray(moved.array, dtype=np.float64).sum()) * moved.voxel_volume_ml
    assert abs(moved_total / total - 1.0) < 1e-3
    assert report[0].fraction_inside > 0.999
    error = np.linalg.norm(hot_centroid(moved) - HOT_CENTRE_MM)
    assert error < 0.5 * 5.0, error  # half a reference voxel


def test_none_is_the_identity(reference_ct):
    result = register_ct(reference_ct, reference_ct, "none")
    assert result.mode == "none" and result.deformation is None
    assert result.transform.GetParameters() == (0.0,) * 6
    assert result.body_dice == 1.0 and result.hu_correlation == pytest.approx(1.0)
    spect = reference_ct.with_array(np.where(np.asarray(reference_ct.array) > -500, 1e4, 0.0).astype(np.float32))
    moved = apply_to_activity(spect, result, reference_ct)
    assert np.array_equal(moved.array, spect.array)


def test_none_refuses_a_moved_patient(moving_ct, reference_ct):
    with pytest.raises(DblurDoseError, match="register it"):
        register_ct(moving_ct, reference_ct, "none", label="day 3")


def test_unrelated_or_empty_ct_is_refused(reference_ct):
    empty = reference_ct.with_array(np.full(reference_ct.shape, -1000.0, dtype=np.float32))
    with pytest.raises(DblurDoseError, match="day 7 CT shows no body") as info:
        register_ct(empty, reference_ct, label="day 7")
    assert "\n" not in str(info.value)

    def ball(points):  # a 30 mm water ball: not this patient
        return np.where((points ** 2).sum(axis=-1) <= 30.0 ** 2, 0.0, -1000.0)

    unrelated = image(grid((30, 40, 40), (6.0, 6.0, 6.0)), scene=ball, couch=False)
    with pytest.raises(DblurDoseError, match=r"registration of the day 7 CT .* failed.*body Dice") as info:
        register_ct(unrelated, reference_ct, label="day 7")
    assert "\n" not in str(info.value) and str(MIN_BODY_DICE) in str(info.value)


def test_ct_of_another_body_region_is_refused(reference_ct):
    """A moving CT whose field holds only the top slab of the body (neck-only scan, say)."""
    head = grid((6, 64, 64), (5.0, 5.0, 5.0), centre=(0.0, 0.0, 70.0))
    with pytest.raises(DblurDoseError, match=r"day 2 CT .* failed .*of the reference body lies in its field"):
        register_ct(image(head), reference_ct, "none", label="day 2")


def test_unknown_mode_is_refused(reference_ct):
    with pytest.raises(DblurDoseError, match="choose one of rigid, deformable, none"):
        register_ct(reference_ct, reference_ct, "affine")


def test_deterministic(rigid, moving_ct, reference_ct):
    """Fixed sampling seed: one thread gives the same bits; two threads agree to rounding."""
    again = register_ct(moving_ct, reference_ct, "rigid", label="day 3")
    assert np.allclose(again.transform.GetParameters(), rigid.transform.GetParameters(), rtol=0, atol=1e-9)
    single = [register_ct(moving_ct, reference_ct, "rigid", threads=1) for _ in range(2)]
    assert single[0].transform.GetParameters() == single[1].transform.GetParameters()
    assert single[0].metric_value == single[1].metric_value
    assert np.allclose(single[0].transform.GetParameters(), rigid.transform.GetParameters(), rtol=0, atol=1e-6)


def test_deformable_improves_a_smoothly_deformed_ct(reference_ct):
    """The patient 8% wider and 6% flatter (a smooth deformation no rigid transform undoes)."""
    scale = np.array([1.0 / 1.08, 1.0 / 0.94, 1.0])
    moving = image(grid((40, 64, 64), (5.0, 5.0, 5.0)), lambda points: points * scale)
    rigid = register_ct(moving, reference_ct, "rigid", label="day 1")
    deformable = register_ct(moving, reference_ct, "deformable", label="day 1")
    assert deformable.mode == "deformable" and deformable.deformation is not None
    point = (80.0, -40.0, 20.0)  # the B-spline acts first, then the rigid part
    assert np.allclose(deformable.transform.TransformPoint(point),
                       deformable.rigid.TransformPoint(deformable.deformation.TransformPoint(point)))
    assert deformable.body_dice > rigid.body_dice + 0.01, (rigid.body_dice, deformable.body_dice)
    assert deformable.body_dice > 0.95
    spect = moving.with_array(np.where(body_mask(moving), 1e4, 0.0).astype(np.float32))
    moved = apply_to_activity(spect, deformable, reference_ct)
    total = float(np.asarray(spect.array, dtype=np.float64).sum()) * spect.voxel_volume_ml
    moved_total = float(np.asarray(moved.array, dtype=np.float64).sum()) * moved.voxel_volume_ml
    assert abs(moved_total / total - 1.0) < 1e-2
