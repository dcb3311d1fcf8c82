"""Slicer segmentations as boolean masks on a volume's grid (each segment its own mask: overlaps are kept)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import slicer

from ..errors import DblurDoseError
from .coordinates import imageArray, vtkMatrix, worldIJKToRAS


@dataclass
class SegmentMask:
    """One segment of a Slicer segmentation on the CT grid.

    Attributes
    ----------
    segmentId, name : str
        The segment's ID and (unique within one call) name.
    mask : numpy.ndarray
        bool ``[z, y, x]`` on the reference volume's grid.
    color : tuple of float
        The segment's RGB colour, 0-1.
    """

    segmentId: str
    name: str
    mask: np.ndarray
    color: tuple[float, float, float] = (0.5, 0.5, 0.5)


def _reference_image(ijk_to_ras: np.ndarray, shape_zyx: Sequence[int]):
    image = slicer.vtkOrientedImageData()
    image.SetImageToWorldMatrix(vtkMatrix(ijk_to_ras))
    nz, ny, nx = shape_zyx
    image.SetExtent(0, nx - 1, 0, ny - 1, 0, nz - 1)
    return image


def segmentIdsOf(segmentationNode, segmentIds: Sequence[str] | None = None) -> list[str]:
    """Segment IDs to use: all segments, or the given IDs (segment names are accepted too).

    Raises
    ------
    DblurDoseError
        A given ID or name is not in the segmentation.
    """
    segmentation = segmentationNode.GetSegmentation()
    all_ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    if segmentIds is None:
        return all_ids
    chosen = []
    for key in segmentIds:
        if key in all_ids:
            chosen.append(key)
            continue
        by_name = segmentation.GetSegmentIdBySegmentName(key)
        if not by_name:
            raise DblurDoseError(f"the segmentation '{segmentationNode.GetName()}' has no segment {key!r}",
                                 settings=("segments",))
        chosen.append(by_name)
    return list(dict.fromkeys(chosen))


def ensureBinaryLabelmap(segmentationNode, referenceVolumeNode) -> None:
    """Make sure the binary labelmap representation exists (RTSTRUCT imports come as contours or
    surfaces); converted on the reference volume's grid when the segmentation has no geometry yet."""
    converter = slicer.vtkSegmentationConverter
    segmentation = segmentationNode.GetSegmentation()
    name = converter.GetSegmentationBinaryLabelmapRepresentationName()
    if segmentation.ContainsRepresentation(name):
        return
    geometry_key = converter.GetReferenceImageGeometryParameterName()
    if not segmentation.GetConversionParameter(geometry_key):
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
    if not segmentationNode.CreateBinaryLabelmapRepresentation():
        raise DblurDoseError(
            f"could not make a labelmap of the segmentation '{segmentationNode.GetName()}' "
            f"(it is stored as {segmentation.GetSourceRepresentationName()}); in the Segmentations module, "
            "create its 'Binary labelmap' representation and try again", settings=("segments",)
        )


def _segment_mask(segmentationNode, segment, segment_id: str, ijk_to_ras: np.ndarray, shape) -> np.ndarray:
    """One segment's labelmap resampled (nearest neighbour) onto the reference grid; all False when empty."""
    labelmap = slicer.vtkOrientedImageData()
    mask = np.zeros(shape, dtype=bool)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.GetSegmentBinaryLabelmapRepresentation(segmentationNode, segment_id, labelmap, True):
        return mask
    ext = labelmap.GetExtent()
    if ext[1] < ext[0] or ext[3] < ext[2] or ext[5] < ext[4]:
        return mask
    resampled = slicer.vtkOrientedImageData()
    reference = _reference_image(ijk_to_ras, shape)
    if slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
        labelmap, reference, resampled, False, False
    ):
        values = imageArray(resampled)
        if values.shape == shape:
            mask = values == segment.GetLabelValue()
    return mask


def segmentMasks(segmentationNode, referenceVolumeNode, segmentIds: Sequence[str] | None = None,
                 progress: Callable[[float], None] | None = None) -> list[SegmentMask]:
    """Each segment's own binary mask on the reference volume's grid (nearest neighbour).

    Parameters
    ----------
    segmentationNode : vtkMRMLSegmentationNode
        The segments (any representation; a labelmap is made when missing).
    referenceVolumeNode : vtkMRMLScalarVolumeNode
        The grid of the masks (the CT).
    segmentIds : sequence of str, optional
        Segment IDs or names; all segments when None.
    progress : callable, optional
        ``progress(fraction)`` after each segment.

    Returns
    -------
    list of SegmentMask
        In the order asked; names made unique (``"name (id)"``) since tables are keyed by name.
    """
    ensureBinaryLabelmap(segmentationNode, referenceVolumeNode)
    ijk_to_ras = worldIJKToRAS(referenceVolumeNode)
    dims = referenceVolumeNode.GetImageData().GetDimensions()
    shape = (dims[2], dims[1], dims[0])
    segmentation = segmentationNode.GetSegmentation()
    ids = segmentIdsOf(segmentationNode, segmentIds)
    masks = []
    used_names: set[str] = set()
    for k, segment_id in enumerate(ids):
        segment = segmentation.GetSegment(segment_id)
        mask = _segment_mask(segmentationNode, segment, segment_id, ijk_to_ras, shape)
        name = segment.GetName()
        if name in used_names:  # statistics rows are keyed by name: keep them apart
            name = f"{name} ({segment_id})"
        used_names.add(name)
        masks.append(SegmentMask(segment_id, name, mask, tuple(segment.GetColor())))
        if progress is not None:
            progress((k + 1) / max(len(ids), 1))
    return masks
