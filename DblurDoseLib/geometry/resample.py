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

:func:`resample_box` is the exact alternative for moving a fine grid onto a coarser one (a CT-grid
phantom onto a SPECT grid): volume-weighted means over box overlaps, which conserve activity by
construction. :func:`grid_over` and :func:`working_grid` build grids of another voxel size over a field.
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


def _overlap_matrix(n_src: int, s_src: float, n_dst: int, s_dst: float, offset: float) -> np.ndarray:
    """Overlap length (mm) of source voxel i and target voxel j along one axis; ``offset`` is the
    target's first voxel centre minus the source's, in mm along that axis."""
    src_lo = (np.arange(n_src) - 0.5) * s_src
    dst_lo = offset + (np.arange(n_dst) - 0.5) * s_dst
    lo = np.maximum(src_lo[:, None], dst_lo[None, :])
    hi = np.minimum(src_lo[:, None] + s_src, dst_lo[None, :] + s_dst)
    return np.clip(hi - lo, 0.0, None)


def resample_box(volume: Volume, target: Volume, quantity: str = "mean") -> Volume:
    """``volume`` moved onto ``target``'s grid as volume-weighted means of box overlaps (float32).

    Parameters
    ----------
    volume, target : Volume
        Source image and the grid to move it onto (``target``'s array is not used).
    quantity : {"concentration", "mean"}
        "concentration" (Bq/mL): activity-conserving, the activity (value x voxel volume) of the part
        of the source inside the target field is kept; "mean" (density g/cm3, mu 1/cm, ...): the
        volume-weighted mean, zero outside the source field.

    Grids sharing a direction use exact box overlaps (separable, float64); others fall back to
    SimpleITK: linear interpolation onto a 3x finer grid over the target's field, block means, then
    (concentration) one factor that conserves the activity of the source voxels whose centres lie
    inside the target field.
    """
    if quantity not in ("concentration", "mean"):
        raise ValueError(quantity)
    src = np.asarray(volume.array, dtype=np.float64)
    if not np.allclose(volume.direction, target.direction, atol=1e-6):
        return _resample_box_sitk(volume, target, quantity)
    offset = volume.direction.T @ (np.asarray(target.origin) - np.asarray(volume.origin))
    out = src
    # axes of the array are z, y, x; ITK axes x, y, z
    for array_axis, itk_axis in ((2, 0), (1, 1), (0, 2)):
        o = _overlap_matrix(volume.shape[array_axis], volume.spacing[itk_axis], target.shape[array_axis],
                            target.spacing[itk_axis], float(offset[itk_axis]))
        o = o / target.spacing[itk_axis]  # fraction of the target voxel covered, per source voxel
        out = np.moveaxis(np.tensordot(np.moveaxis(out, array_axis, -1), o, axes=([-1], [0])), -1, array_axis)
    # for concentrations the volume-weighted mean is exactly what conserves activity
    return target.with_array(out.astype(np.float32))


def _resample_box_sitk(volume: Volume, target: Volume, quantity: str, factor: int = 3) -> Volume:
    """:func:`resample_box` between grids of different directions (see there)."""
    import SimpleITK as sitk

    fine_grid = grid_over(target, np.asarray(target.spacing, dtype=np.float64) / factor)
    image = Volume(volume.array.astype(np.float32), volume.spacing, volume.origin, volume.direction).to_sitk()
    ref = sitk.Image([int(n) for n in fine_grid.shape[::-1]], sitk.sitkFloat32)
    ref.SetSpacing([float(v) for v in fine_grid.spacing])
    ref.SetOrigin(tuple(float(v) for v in fine_grid.origin))
    ref.SetDirection(tuple(target.direction.ravel()))
    fine = sitk.GetArrayFromImage(sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, 0.0))
    nz, ny, nx = target.shape
    out = fine.reshape(nz, factor, ny, factor, nx, factor).mean(axis=(1, 3, 5)).astype(np.float64)
    if quantity == "concentration":
        # conserve the activity of the source voxels whose centres fall inside the target field
        src_total = 0.0
        yx = np.stack(np.meshgrid(np.arange(volume.shape[2]), np.arange(volume.shape[1]), indexing="xy"), -1)
        yx = yx.reshape(-1, 2).astype(np.float64)
        upper = np.asarray(target.shape[::-1]) - 0.5
        for k in range(volume.shape[0]):  # slice by slice: a CT has tens of millions of voxels
            idx = np.column_stack([yx, np.full(len(yx), float(k))])
            pts = np.asarray(volume.origin) + (idx * np.asarray(volume.spacing)) @ volume.direction.T
            rel = (pts - np.asarray(target.origin)) @ target.direction / np.asarray(target.spacing)
            inside = np.all((rel > -0.5) & (rel < upper), axis=1)
            src_total += float(volume.array[k].reshape(-1)[inside].sum(dtype=np.float64))
        src_total *= volume.voxel_volume_ml
        dst_total = float(out.sum()) * target.voxel_volume_ml
        if dst_total > 0:
            out *= src_total / dst_total
    return target.with_array(out.astype(np.float32))


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
    return _covering_shape(ct_shape, cs, spacing)


def _covering_shape(ct_shape, ct_spacing: np.ndarray, spacing: np.ndarray) -> tuple[int, int, int]:
    """Voxels (z, y, x) of ``spacing`` that cover the field of a ``ct_shape`` grid at ``ct_spacing`` (mm)."""
    extent = ct_spacing * np.asarray(ct_shape[::-1])  # x, y, z, edge to edge
    size = np.maximum(np.ceil(extent / spacing - 1e-6), 1).astype(int)
    return tuple(int(n) for n in size[::-1])


def grid_over(ct: Volume, spacing: Sequence[float], *, centred: bool = False) -> Volume:
    """An empty (uint8) grid over ``ct``'s field with voxels of ``spacing`` (x, y, z mm) and ``ct``'s direction.

    ``centred=False``: the same first voxel edge as ``ct`` and enough voxels to cover its field;
    ``centred=True``: the same centre and the nearest whole number of voxels (at least 1) per axis,
    so the field is matched to within half a voxel at each end.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    cs = np.asarray(ct.spacing, dtype=np.float64)
    if centred:
        size = np.asarray(ct.shape[::-1])
        n = np.maximum(np.round(cs * size / spacing).astype(int), 1)
        centre = np.asarray(ct.origin) + ct.direction @ ((size - 1) / 2 * cs)
        origin = centre - ct.direction @ ((n - 1) / 2 * spacing)
        shape = tuple(int(v) for v in n[::-1])
    else:
        origin = np.asarray(ct.origin) + ct.direction @ ((spacing - cs) / 2)  # same first voxel edge
        shape = _covering_shape(ct.shape, cs, spacing)
    return Volume(np.zeros(shape, dtype=np.uint8), tuple(spacing), tuple(origin), ct.direction.copy())


def working_grid(ct: Volume, spacing: Sequence[float]) -> Volume | None:
    """A grid over the CT's field with voxels of ``spacing``, the same first voxel edge.

    Built by :func:`grid_over`; the CNN's and registration's working grid.

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
    return grid_over(ct, spacing)
