"""Coordinates and voxels between Slicer's nodes and the library's :class:`~DblurDoseLib.io.volume.Volume`.

Slicer works in RAS, the library (ITK) in LPS: the conversion flips x and y. Linear parent
transforms of a node are honoured; non-linear ones must be hardened first. Arrays are ``[z, y, x]``
as everywhere in the library.
"""

from __future__ import annotations

import numpy as np
import vtk
import vtk.util.numpy_support as vtk_np

from ..errors import DblurDoseError
from ..io.volume import Volume

#: RAS <-> LPS: flip the first two axes.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _matrix(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(i, j) for j in range(4)] for i in range(4)])


def vtkMatrix(matrix: np.ndarray) -> vtk.vtkMatrix4x4:
    """A ``vtkMatrix4x4`` holding the 4x4 numpy ``matrix``."""
    m = vtk.vtkMatrix4x4()
    for i in range(4):
        for j in range(4):
            m.SetElement(i, j, float(matrix[i][j]))
    return m


def worldIJKToRAS(node) -> np.ndarray:
    """The 4x4 IJK -> world RAS matrix of a volume node, its linear parent transforms included.

    Parameters
    ----------
    node : vtkMRMLVolumeNode
        The volume; its parent transform, if any, must be linear.

    Returns
    -------
    numpy.ndarray
        4x4 matrix, mm.

    Raises
    ------
    DblurDoseError
        The node is under a non-linear transform (it has to be hardened first).
    """
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    ijk_to_ras = _matrix(m)
    transform = node.GetParentTransformNode()
    if transform is not None:
        if not transform.IsTransformToWorldLinear():
            raise DblurDoseError(
                f"'{node.GetName()}' is under a non-linear transform ('{transform.GetName()}'); harden the "
                "transform first (Data module: right-click the volume > Harden transform)"
            )
        to_world = vtk.vtkMatrix4x4()
        transform.GetMatrixTransformToWorld(to_world)
        ijk_to_ras = _matrix(to_world) @ ijk_to_ras
    return ijk_to_ras


def geometryFromIJKToRAS(ijk_to_ras: np.ndarray) -> tuple[tuple, tuple, np.ndarray]:
    """The library's geometry of a 4x4 IJK -> RAS matrix.

    Returns
    -------
    spacing : tuple of float
        (x, y, z) voxel size, mm.
    origin : tuple of float
        (x, y, z) position of voxel (0, 0, 0), mm, LPS.
    direction : numpy.ndarray
        3x3 row-major matrix of unit column vectors, LPS.
    """
    a = np.asarray(ijk_to_ras, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(a, axis=0)
    direction = RAS_TO_LPS @ (a / spacing)
    origin = RAS_TO_LPS @ np.asarray(ijk_to_ras, dtype=np.float64)[:3, 3]
    return tuple(spacing), tuple(origin), direction


def ijkToRASFromVolume(volume: Volume) -> np.ndarray:
    """The 4x4 IJK -> RAS matrix (mm) of a library volume (inverse of :func:`geometryFromIJKToRAS`)."""
    m = np.eye(4)
    m[:3, :3] = RAS_TO_LPS @ volume.direction @ np.diag(volume.spacing)
    m[:3, 3] = RAS_TO_LPS @ np.asarray(volume.origin)
    return m


def imageArray(image) -> np.ndarray:
    """A ``[z, y, x]`` view of a single-component ``vtkImageData``'s scalars (zeros when it has none)."""
    dims = image.GetDimensions()
    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        return np.zeros(dims[::-1], dtype=np.float32)
    return vtk_np.vtk_to_numpy(scalars).reshape(dims[::-1])


def volumeFromNode(node, what: str = "image", dtype=np.float32, copy: bool = True) -> Volume:
    """The volume node's voxels and world geometry as a library :class:`Volume` (LPS, mm).

    Parameters
    ----------
    node : vtkMRMLScalarVolumeNode
        A single-component volume.
    what : str
        What the volume is ("SPECT", "CT"), for messages.
    dtype : numpy dtype or None
        Type of the returned array; None keeps the node's.
    copy : bool
        False (with ``dtype=None`` or the node's own type) gives a view of the node's voxels:
        cheap, for reading only.

    Raises
    ------
    DblurDoseError
        No node, no voxels, several components per voxel, or a non-linear parent transform.
    """
    if node is None:
        raise DblurDoseError(f"no {what} volume was given; select one", settings=_setting_of(what))
    image = node.GetImageData() if hasattr(node, "GetImageData") else None
    if image is None or image.GetNumberOfPoints() == 0:
        raise DblurDoseError(f"the {what} '{node.GetName()}' holds no voxels; load the image again",
                             settings=_setting_of(what))
    if image.GetNumberOfScalarComponents() != 1:
        raise DblurDoseError(
            f"the {what} '{node.GetName()}' has {image.GetNumberOfScalarComponents()} components per voxel; "
            "give a scalar (single-component) volume", settings=_setting_of(what)
        )
    spacing, origin, direction = geometryFromIJKToRAS(worldIJKToRAS(node))
    array = imageArray(image)
    array = array.astype(dtype if dtype is not None else array.dtype, copy=copy)
    return Volume(array, spacing, origin, direction)


def _setting_of(what: str) -> tuple[str, ...]:
    return {"SPECT": ("spect",), "CT": ("ct",)}.get(what, ())


def setVolumeArray(node, array: np.ndarray, like_node) -> None:
    """Give ``node`` ``like_node``'s grid (IJK -> RAS and parent transform) and ``array``'s voxels (float32)."""
    node.CopyOrientation(like_node)
    node.SetAndObserveTransformNodeID(like_node.GetTransformNodeID())
    array = np.ascontiguousarray(array, dtype=np.float32)
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.AllocateScalars(vtk.VTK_FLOAT, 1)
    imageArray(image)[:] = array
    node.SetAndObserveImageData(image)


def lineEndpointsLPS(lineNode) -> tuple[np.ndarray, np.ndarray] | None:
    """World positions (LPS, mm) of a markups line's two control points; None while it has fewer."""
    if lineNode is None or lineNode.GetNumberOfDefinedControlPoints() < 2:
        return None
    points = []
    for i in (0, 1):
        p = [0.0, 0.0, 0.0]
        lineNode.GetNthControlPointPositionWorld(i, p)
        points.append(RAS_TO_LPS @ np.asarray(p, dtype=np.float64))
    return points[0], points[1]


def _crop_around(volume: Volume, p0: np.ndarray, p1: np.ndarray, margin: int = 2) -> Volume:
    """The part of ``volume`` around the segment p0-p1 (same sampling, much less to copy)."""
    ijk = [((p - np.asarray(volume.origin)) @ volume.direction) / np.asarray(volume.spacing) for p in (p0, p1)]
    lo = np.floor(np.minimum(*ijk)).astype(int) - margin
    hi = np.ceil(np.maximum(*ijk)).astype(int) + margin
    size = np.array(volume.shape[::-1])
    lo = np.clip(lo, 0, size - 1)
    hi = np.clip(hi, 0, size - 1)
    if np.any(hi < lo):
        return volume
    sub = volume.array[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1]
    origin = np.asarray(volume.origin) + volume.direction @ (lo * np.asarray(volume.spacing))
    return Volume(sub, volume.spacing, tuple(origin), volume.direction)


def sampleAlongLine(volume: Volume, p0, p1, n_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`DblurDoseLib.evaluation.metrics.line_profile` on the part of the volume the line crosses.

    Parameters
    ----------
    volume : Volume
        What to sample.
    p0, p1 : array-like
        The line's ends, LPS, mm.
    n_points : int, optional
        Number of samples; by default one per smallest voxel size along the line (at least 2).

    Returns
    -------
    distance : numpy.ndarray
        Distance of each sample from ``p0``, mm.
    values : numpy.ndarray
        The volume's values there (trilinear).
    """
    from ..evaluation.metrics import line_profile

    p0, p1 = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
    if n_points is None:
        n_points = max(int(np.ceil(float(np.linalg.norm(p1 - p0)) / min(volume.spacing))) + 1, 2)
    return line_profile(_crop_around(volume, p0, p1), p0, p1, n_points)
