"""Moving images between grids: activity-conserving SPECT -> CT, nearest-neighbour labels.

Activity method: the concentration (Bq/mL) is interpolated trilinearly onto the target grid
(SimpleITK, zero outside the source field); then one global factor makes the total activity
inside the target field equal the source activity whose voxel centres lie inside that field.
Trilinear interpolation alone is conservative to well under 1% for sources away from the
field edge; the factor removes the remaining sampling error and is reported.

All three functions take an optional SimpleITK ``transform`` (target points -> source points,
as ``sitk.Resample`` defines it), used for a deformable registration's residual field. With a
transform the activity is also multiplied by the transform's Jacobian determinant (local
conservation where tissue is compressed or stretched) before the global factor, and "inside the
target field" is judged on the untransformed source geometry (the deformation is small).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DblurDoseError
from ..io.volume import Volume

if TYPE_CHECKING:
    import SimpleITK


@dataclass
class ResampleReport:
    """What happened to the activity when it moved grids.

    Attributes
    ----------
    source_total_bq : float
        Total activity of the source (Bq).
    inside_target_bq : float
        Source activity whose voxel centres lie inside the target field (Bq).
    fraction_inside : float
        ``inside_target_bq / source_total_bq`` (1 for an empty source).
    rescale_factor : float
        The global factor applied after interpolation to conserve ``inside_target_bq``.
    """

    source_total_bq: float
    inside_target_bq: float
    fraction_inside: float
    rescale_factor: float


def _resample(source: Volume, target: Volume, interpolator: str, dtype, transform=None,
              default: float = 0.0) -> np.ndarray:
    import SimpleITK as sitk

    interp = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}[interpolator]
    image = source.to_sitk()
    reference = target.with_array(np.zeros(target.shape, dtype=np.uint8)).to_sitk()
    transform = sitk.Transform() if transform is None else transform
    out = sitk.Resample(image, reference, transform, interp, default, image.GetPixelID())
    return sitk.GetArrayFromImage(out).astype(dtype, copy=False)


def jacobian_determinant(transform: SimpleITK.Transform, target: Volume) -> np.ndarray:
    """det(dT/dx) of a transform (target points -> source points) at ``target``'s voxel centres.

    Parameters
    ----------
    transform : SimpleITK.Transform
        Maps target points to source points (mm), as ``sitk.Resample`` defines it.
    target : Volume
        The grid (its geometry only).

    Returns
    -------
    np.ndarray
        Float32 [z, y, x] determinants (dimensionless; > 1 where the source is stretched).
    """
    import SimpleITK as sitk

    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, target.shape[::-1],
                                              target.origin, target.spacing, tuple(target.direction.ravel()))
    det = sitk.DisplacementFieldJacobianDeterminant(field, True)
    return sitk.GetArrayFromImage(det).astype(np.float32)


def centres_inside(source: Volume, target: Volume) -> np.ndarray:
    """Boolean [z,y,x] mask of source voxels whose centres lie inside the target's field.

    Parameters
    ----------
    source, target : Volume
        The two grids (geometry in mm; the target's field extends to its voxel edges).

    Returns
    -------
    np.ndarray
        Bool, the source's shape.
    """
    if np.allclose(source.direction, target.direction, atol=1e-9):  # same axes: one test per axis
        offset = source.direction.T @ (np.asarray(source.origin) - np.asarray(target.origin))
        masks = []
        for axis in range(3):  # x, y, z
            n_src, n_tgt = source.shape[2 - axis], target.shape[2 - axis]
            cont = (offset[axis] + np.arange(n_src) * source.spacing[axis]) / target.spacing[axis]
            masks.append((cont >= -0.5) & (cont <= n_tgt - 0.5))
        return masks[2][:, None, None] & masks[1][None, :, None] & masks[0][None, None, :]
    return _centres_inside_any(source, target)


def _centres_inside_any(source: Volume, target: Volume) -> np.ndarray:
    """:func:`centres_inside` for any pair of orientations, point by point."""
    nz, ny, nx = source.shape
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    idx = np.stack([i, j, k], axis=-1).reshape(-1, 3).astype(np.float64)
    points = np.asarray(source.origin) + (idx * np.asarray(source.spacing)) @ source.direction.T
    # continuous index of each point in the target grid
    cont = ((points - np.asarray(target.origin)) @ target.direction) / np.asarray(target.spacing)
    tz, ty, tx = target.shape
    upper = np.array([tx, ty, tz]) - 0.5
    inside = np.all((cont >= -0.5) & (cont <= upper), axis=1)
    return inside.reshape(source.shape)


def resample_activity(spect: Volume, target: Volume, report: list[ResampleReport] | None = None,
                      transform: SimpleITK.Transform | None = None) -> Volume:
    """Activity concentration (Bq/mL) moved onto ``target``'s grid, total activity conserved.

    Parameters
    ----------
    spect : Volume
        Activity concentration (Bq/mL).
    target : Volume
        The grid moved onto (its geometry only).
    report : list of ResampleReport, optional
        A :class:`ResampleReport` (Bq) is appended when given.
    transform : SimpleITK.Transform, optional
        Target points -> source points (see the module docstring); the activity is also multiplied
        by its Jacobian determinant.

    Returns
    -------
    Volume
        Float32 activity concentration (Bq/mL) on ``target``'s grid.

    Raises
    ------
    DblurDoseError
        When the fields do not overlap (no activity inside the target field).
    """
    conc = np.asarray(spect.array, dtype=np.float32)
    source_total = float(conc.sum(dtype=np.float64)) * spect.voxel_volume_ml
    if transform is None and spect.same_grid(target):  # nothing to move (e.g. a SPECT already on the CT grid)
        if report is not None:
            report.append(ResampleReport(source_total, source_total, 1.0, 1.0))
        return target.with_array(conc.copy())
    inside_total = float(conc[centres_inside(spect, target)].sum(dtype=np.float64)) * spect.voxel_volume_ml
    out = _resample(spect.with_array(conc), target, "linear", np.float32, transform)
    if transform is not None:
        out *= jacobian_determinant(transform, target)
    out_total = float(out.sum(dtype=np.float64)) * target.voxel_volume_ml
    if source_total > 0 and inside_total <= 0:
        raise DblurDoseError(
            "the SPECT and CT fields do not overlap (no SPECT activity lies inside the CT field). "
            "Check that both images come from the same study and keep their DICOM position/orientation, "
            "or register the SPECT to the CT first."
        )
    factor = inside_total / out_total if out_total > 0 else 1.0
    if out_total > 0:
        out *= np.float32(factor)
    if report is not None:
        report.append(
            ResampleReport(source_total, inside_total, inside_total / source_total if source_total else 1.0, factor)
        )
    return target.with_array(out)


def resample_labels(labels: Volume, target: Volume, transform: SimpleITK.Transform | None = None) -> Volume:
    """A labelmap moved onto ``target``'s grid by nearest neighbour (label values kept).

    Parameters
    ----------
    labels : Volume
        Integer labels (other types are cast to int32).
    target : Volume
        The grid moved onto.
    transform : SimpleITK.Transform, optional
        Target points -> source points.

    Returns
    -------
    Volume
        The labels on ``target``'s grid (0 outside the source field).
    """
    if transform is None and labels.same_grid(target):
        return target.with_array(np.asarray(labels.array))
    arr = np.asarray(labels.array)
    dtype = arr.dtype if np.issubdtype(arr.dtype, np.integer) else np.int32
    return target.with_array(_resample(labels.with_array(arr.astype(dtype)), target, "nearest", dtype, transform))


def resample_linear(volume: Volume, target: Volume, default: float = 0.0,
                    transform: SimpleITK.Transform | None = None) -> Volume:
    """A scalar image (e.g. density) moved onto ``target``'s grid by trilinear interpolation.

    Parameters
    ----------
    volume : Volume
        Any scalar image (units kept).
    target : Volume
        The grid moved onto.
    default : float
        Value outside the source field (in the image's units).
    transform : SimpleITK.Transform, optional
        Target points -> source points.

    Returns
    -------
    Volume
        Float32 values on ``target``'s grid.
    """
    if transform is None and volume.same_grid(target):
        return target.with_array(np.asarray(volume.array, dtype=np.float32))
    source = volume.with_array(np.asarray(volume.array, dtype=np.float32))
    return target.with_array(_resample(source, target, "linear", np.float32, transform, default))


# --- grids -------------------------------------------------------------------------------------
#: two spacings within this fraction of each other count as the same grid
GRID_TOLERANCE = 0.02


def working_shape(ct_shape: Sequence[int], ct_spacing: Sequence[float], spacing: Sequence[float],
                  ) -> tuple[int, int, int]:
    """Shape (z, y, x) of the grid :func:`working_grid` lays over the field of a ``ct_shape`` grid at ``ct_spacing``.

    Parameters
    ----------
    ct_shape : sequence of int
        (z, y, x) voxels of the CT grid.
    ct_spacing : sequence of float
        (x, y, z) voxel size of the CT (mm).
    spacing : sequence of float
        (x, y, z) voxel size of the working grid (mm).

    Returns
    -------
    tuple of int
        (z, y, x) voxels: ``ct_shape`` when the spacings agree within :data:`GRID_TOLERANCE`, else
        enough voxels to cover the CT's field edge to edge.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    cs = np.asarray(ct_spacing, dtype=np.float64)
    if np.all(np.abs(cs - spacing) <= GRID_TOLERANCE * spacing):
        return tuple(int(n) for n in ct_shape)
    extent = cs * np.asarray(ct_shape[::-1])  # x, y, z, edge to edge
    size = np.maximum(np.ceil(extent / spacing - 1e-6), 1).astype(int)
    return tuple(int(n) for n in size[::-1])


def working_grid(ct: Volume, spacing: Sequence[float]) -> Volume | None:
    """A grid over the CT's field with voxels of ``spacing``, the same first voxel edge.

    The one builder of such grids (the CNN's working grid, registration's working grid).

    Parameters
    ----------
    ct : Volume
        The CT (its geometry only).
    spacing : sequence of float
        (x, y, z) voxel size (mm).

    Returns
    -------
    Volume or None
        A uint8 grid of zeros with the CT's direction; None when the CT grid already has that
        spacing (within :data:`GRID_TOLERANCE`).
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    cs = np.asarray(ct.spacing, dtype=np.float64)
    if np.all(np.abs(cs - spacing) <= GRID_TOLERANCE * spacing):
        return None
    shape = working_shape(ct.shape, ct.spacing, spacing)
    # same first voxel edge as the CT
    origin = np.asarray(ct.origin) + ct.direction @ ((spacing - cs) / 2)
    return Volume(np.zeros(shape, dtype=np.uint8), tuple(spacing), tuple(origin), ct.direction.copy())
