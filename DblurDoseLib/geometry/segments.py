"""Segments (VOIs) for statistics: read a labelmap or a Slicer .seg.nrrd, move it to the CT grid.

Each segment keeps its own mask, so overlapping segments (layers of a .seg.nrrd) are honoured.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import DblurDoseError
from ..io.volume import Segment, Volume
from .resample import resample_labels

#: most VOIs a labelmap may hold; each becomes a full-size mask (a label per voxel would take GBs)
MAX_LABELS = 500


def segments_from_labelmap(labels: Volume, target: Volume, names: dict[int, str] | None = None) -> list[Segment]:
    """One segment per non-zero label value, resampled (nearest) onto ``target``'s grid.

    Parameters
    ----------
    labels : Volume
        Integer labelmap (0 is background).
    target : Volume
        The dose grid (its geometry only).
    names : dict of int to str, optional
        Names per label value; others are named ``label_<value>``.

    Returns
    -------
    list of Segment
        In increasing label order.

    Raises
    ------
    DblurDoseError
        When no voxel is labelled, or more than :data:`MAX_LABELS` values are found (an image, not
        a labelmap).
    """
    values = [int(v) for v in np.unique(np.asarray(labels.array)) if v != 0]
    if not values:
        raise DblurDoseError("the segmentation holds no labelled voxels; give a labelmap with non-zero labels")
    if len(values) > MAX_LABELS:
        raise DblurDoseError(
            f"the segmentation holds {len(values)} different label values (at most {MAX_LABELS} are taken): it looks "
            "like an image rather than a labelmap (a SPECT or CT given as the segmentation?). Give a labelmap with "
            "one value per VOI", settings=("segments",)
        )
    on_grid = np.asarray(resample_labels(labels, target).array)
    names = names or {}
    return [Segment(names.get(v, f"label_{v}"), on_grid == v) for v in values]


def _seg_nrrd_segments(path: Path, target: Volume) -> list[Segment]:
    """Segments of a Slicer .seg.nrrd (one or several layers, metadata Segment<i>_*)."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    meta = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys()}
    n_layers = image.GetNumberOfComponentsPerPixel()
    layers = [sitk.VectorIndexSelectionCast(image, i) for i in range(n_layers)] if n_layers > 1 else [image]
    layers = [Volume.from_sitk(layer) for layer in layers]
    segments = []
    i = 0
    while f"Segment{i}_ID" in meta or f"Segment{i}_Name" in meta:
        name = meta.get(f"Segment{i}_Name", f"segment_{i}")
        value = int(meta.get(f"Segment{i}_LabelValue", i + 1))
        layer = int(meta.get(f"Segment{i}_Layer", 0))
        if layer >= len(layers):
            raise DblurDoseError(f"{path}: segment {name!r} refers to layer {layer}, which the file does not hold")
        moved = np.asarray(resample_labels(layers[layer], target).array)
        segments.append(Segment(name, moved == value))
        i += 1
    if not segments:  # a plain labelmap saved with a .seg.nrrd name
        return segments_from_labelmap(layers[0], target)
    return segments


def read_segments(path: str | os.PathLike, target: Volume) -> list[Segment]:
    """Segments from a labelmap file (NRRD/NIfTI/MHA) or a Slicer .seg.nrrd, on ``target``'s grid.

    Parameters
    ----------
    path : str or os.PathLike
        A labelmap file of whole numbers, or a ``.seg.nrrd`` (overlapping layers honoured).
    target : Volume
        The dose grid (its geometry only).

    Returns
    -------
    list of Segment
        Named from the ``.seg.nrrd`` metadata, else ``label_<value>``.

    Raises
    ------
    DblurDoseError
        When the file is missing, holds non-integer values, or a segment is empty on the grid.
    """
    from ..io.volume import read_volume

    path = Path(path)
    if not path.exists():
        raise DblurDoseError(f"segmentation file not found: {path}")
    if path.name.lower().endswith(".seg.nrrd"):
        segments = _seg_nrrd_segments(path, target)
    else:
        labels = read_volume(path, dtype=None, what="segmentation")
        if not np.issubdtype(labels.array.dtype, np.integer):
            rounded = np.rint(labels.array)
            if not np.allclose(rounded, labels.array):
                raise DblurDoseError(f"{path} holds non-integer values; a segmentation must be a labelmap of whole numbers "
                                     "(one value per VOI): export the segments as a labelmap")
            labels = labels.with_array(rounded.astype(np.int32))
        segments = segments_from_labelmap(labels, target)
    empty = [s.name for s in segments if not s.mask.any()]
    if empty:
        raise DblurDoseError(
            f"segment(s) {', '.join(empty)} are empty on the CT grid (outside the CT field or smaller than a voxel); "
            "remove them or check the segmentation's geometry"
        )
    return segments
