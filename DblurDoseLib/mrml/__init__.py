"""The Slicer side of DblurDose without Qt: MRML nodes in, MRML nodes out.

Works in the 3D Slicer application and in the ``slicer-core`` wheel alike (it only uses MRML,
VTK and numpy). :func:`computeDoseRateMaps` reads a SPECT, a CT, a segmentation and a markups
line from their nodes, runs :func:`DblurDoseLib.dose.compute_dose_rate_maps` and writes back:

* one dose-rate volume per method on the CT grid (mGy/h), with ``VoxelValueQuantity`` /
  ``VoxelValueUnits`` coded entries and the ``DicomRtImport.DoseVolume`` attribute (so SlicerRT's
  DVH, isodose and gamma tools accept it), shown over the CT with a colour map;
* optionally the difference CNN minus DVK;
* a statistics table (per segment and method: volume, mean, DR10/30/70/90);
* one DRVH table per segment (bins shared by the methods) and two plot charts (cumulative,
  differential);
* a line-profile table and chart along the markups line, kept up to date while the line moves
  (:meth:`DoseRateResult.setLine`).

:func:`computeAbsorbedDose` does the same for ``dblurdose dosimetry`` (several time points, Gy).
Given the previous run's nodes (``reuse=result.nodes()``) either fills them again instead of
adding new ones.

Modules, by job: ``coordinates`` (RAS/LPS, IJK matrices, voxels between nodes and library
volumes, sampling along a line), ``segments`` (segmentations as masks), ``nodes`` (building and
reusing output nodes: dose volumes, tables, plots, display, subject hierarchy), ``results`` (the
result classes and the profile-line observer), ``doserate`` and ``absorbed`` (the two workflows),
``sampledata`` (the module's demo case as files). This package re-exports their public names.
"""

from .absorbed import computeAbsorbedDose
from .coordinates import (
    RAS_TO_LPS,
    geometryFromIJKToRAS,
    ijkToRASFromVolume,
    lineEndpointsLPS,
    sampleAlongLine,
    volumeFromNode,
    worldIJKToRAS,
)
from .doserate import Progress, computeDoseRateMaps, resolveDevice
from .nodes import (
    ABSORBED_DOSE_QUANTITY,
    ABSORBED_DOSE_UNITS,
    DIFFERENCE_COLOR_NODES,
    DOSE_COLOR_NODES,
    DOSE_RATE_DIFFERENCE_QUANTITY,
    DOSE_RATE_QUANTITY,
    DOSE_RATE_UNITS,
    DOSE_VOLUME_ATTRIBUTE,
    OUTPUT_ROLE_ATTRIBUTE,
    SPECT_UNIT_LABELS,
    OutputNodes,
    outputParentItem,
    setDoseDisplay,
    setSpectUnits,
    showInSliceViews,
    spectUnitsFromNode,
)
from .results import AbsorbedDoseResult, DoseRateResult
from .segments import SegmentMask, ensureBinaryLabelmap, segmentIdsOf, segmentMasks

__all__ = [
    "ABSORBED_DOSE_QUANTITY", "ABSORBED_DOSE_UNITS", "DIFFERENCE_COLOR_NODES", "DOSE_COLOR_NODES",
    "DOSE_RATE_DIFFERENCE_QUANTITY", "DOSE_RATE_QUANTITY", "DOSE_RATE_UNITS", "DOSE_VOLUME_ATTRIBUTE",
    "OUTPUT_ROLE_ATTRIBUTE", "RAS_TO_LPS", "SPECT_UNIT_LABELS", "AbsorbedDoseResult", "DoseRateResult",
    "OutputNodes", "Progress", "SegmentMask", "computeAbsorbedDose", "computeDoseRateMaps", "ensureBinaryLabelmap",
    "geometryFromIJKToRAS", "ijkToRASFromVolume", "lineEndpointsLPS", "outputParentItem", "resolveDevice",
    "sampleAlongLine", "segmentIdsOf", "segmentMasks", "setDoseDisplay", "setSpectUnits", "showInSliceViews",
    "spectUnitsFromNode", "volumeFromNode", "worldIJKToRAS",
]
