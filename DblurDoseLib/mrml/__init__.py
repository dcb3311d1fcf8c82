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

Coordinates: Slicer works in RAS, the library (ITK) in LPS; the conversion flips x and y.
Linear parent transforms of the inputs are honoured; non-linear ones must be hardened first.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import slicer
import vtk
import vtk.util.numpy_support as vtk_np

from ..errors import DblurDoseError
from ..io.volume import Volume

#: RAS <-> LPS: flip the first two axes.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])

#: Units of the dose-rate outputs (UCUM). The quantity uses a private coding scheme (DICOM allows
#: "99" prefixes): DCM has no code for an absorbed dose *rate*.
DOSE_RATE_UNITS = ("mGy/h", "UCUM", "milligray per hour")
DOSE_RATE_QUANTITY = ("DoseRate", "99DBLURDOSE", "Absorbed dose rate")
DOSE_RATE_DIFFERENCE_QUANTITY = ("DoseRateDifference", "99DBLURDOSE", "Absorbed dose rate difference")
#: SlicerRT recognises dose volumes by this attribute.
DOSE_VOLUME_ATTRIBUTE = "DicomRtImport.DoseVolume"

#: SPECT unit names: the library's keyword -> label shown to users.
SPECT_UNIT_LABELS = {"bqml": "Bq/mL", "kbqml": "kBq/mL", "mbqml": "MBq/mL", "counts": "counts"}
_UNIT_CODES = {"bq/ml": "bqml", "bqml": "bqml", "kbq/ml": "kbqml", "mbq/ml": "mbqml",
               "{counts}": "counts", "counts": "counts", "cnts": "counts", "{cnts}": "counts"}

DOSE_COLOR_NODES = ("vtkMRMLColorTableNodeRainbow", "vtkMRMLPETProceduralColorNodePET-Rainbow2")
DIFFERENCE_COLOR_NODES = ("vtkMRMLColorTableNodeFileDivergingBlueRed.txt", "vtkMRMLColorTableNodeFullRainbow")

#: Options of computeDoseRateMaps that are not handed to the library.
_OWN_OPTIONS = {"drvhBins": 200, "differenceMap": True, "show": True, "observeLine": True}

Progress = Callable[[float, str], object]


# --------------------------------------------------------------------------------------------
# Geometry and voxels
# --------------------------------------------------------------------------------------------
def _matrix(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(i, j) for j in range(4)] for i in range(4)])


def worldIJKToRAS(node) -> np.ndarray:
    """4x4 IJK -> world RAS of a volume node, its linear parent transforms included."""
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
    """(spacing, origin LPS, direction LPS) of a 4x4 IJK -> RAS matrix, in the library's ITK order."""
    a = np.asarray(ijk_to_ras, dtype=np.float64)[:3, :3]
    spacing = np.linalg.norm(a, axis=0)
    direction = RAS_TO_LPS @ (a / spacing)
    origin = RAS_TO_LPS @ np.asarray(ijk_to_ras, dtype=np.float64)[:3, 3]
    return tuple(spacing), tuple(origin), direction


def ijkToRASFromVolume(volume: Volume) -> np.ndarray:
    """4x4 IJK -> RAS matrix of a library volume (inverse of :func:`geometryFromIJKToRAS`)."""
    m = np.eye(4)
    m[:3, :3] = RAS_TO_LPS @ volume.direction @ np.diag(volume.spacing)
    m[:3, 3] = RAS_TO_LPS @ np.asarray(volume.origin)
    return m


def _image_array(image) -> np.ndarray:
    dims = image.GetDimensions()
    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        return np.zeros(dims[::-1], dtype=np.float32)
    return vtk_np.vtk_to_numpy(scalars).reshape(dims[::-1])


def volumeFromNode(node, what: str = "image", dtype=np.float32, copy: bool = True) -> Volume:
    """The volume node's voxels and world geometry as a library :class:`Volume` (LPS).

    ``copy=False`` (with ``dtype=None``, or the node's own type) gives a view of the node's voxels:
    cheap, for reading only.
    """
    if node is None:
        raise DblurDoseError(f"no {what} volume was given; select one")
    image = node.GetImageData() if hasattr(node, "GetImageData") else None
    if image is None or image.GetNumberOfPoints() == 0:
        raise DblurDoseError(f"the {what} '{node.GetName()}' holds no voxels; load the image again")
    if image.GetNumberOfScalarComponents() != 1:
        raise DblurDoseError(
            f"the {what} '{node.GetName()}' has {image.GetNumberOfScalarComponents()} components per voxel; "
            "give a scalar (single-component) volume"
        )
    spacing, origin, direction = geometryFromIJKToRAS(worldIJKToRAS(node))
    array = _image_array(image)
    array = array.astype(dtype if dtype is not None else array.dtype, copy=copy)
    return Volume(array, spacing, origin, direction)


def _new_volume_node(scene, name: str, array: np.ndarray, like_node):
    """A scalar volume on ``like_node``'s grid (same IJK->RAS and parent transform) holding ``array``."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", scene.GenerateUniqueName(name))
    node.CopyOrientation(like_node)
    node.SetAndObserveTransformNodeID(like_node.GetTransformNodeID())
    array = np.ascontiguousarray(array, dtype=np.float32)
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    image.AllocateScalars(vtk.VTK_FLOAT, 1)
    _image_array(image)[:] = array
    node.SetAndObserveImageData(image)
    return node


def _coded_entry(value_scheme_meaning: tuple[str, str, str]):
    entry = slicer.vtkCodedEntry()
    entry.SetValueSchemeMeaning(*value_scheme_meaning)
    return entry


def spectUnitsFromNode(node) -> str | None:
    """The SPECT's activity units from its ``VoxelValueUnits`` coded entry ('bqml', 'counts', ...).

    None when the image does not say (then the user has to).
    """
    if node is None or not hasattr(node, "GetVoxelValueUnits"):
        return None
    units = node.GetVoxelValueUnits()
    if units is None:
        return None
    code = (units.GetCodeValue() or "").strip().lower().replace(" ", "")
    return _UNIT_CODES.get(code)


def setSpectUnits(node, units: str) -> None:
    """Record the SPECT's activity units on its node (UCUM coded entry), e.g. after loading a NRRD."""
    ucum = {"bqml": ("Bq/mL", "becquerels per milliliter"), "kbqml": ("kBq/mL", "kilobecquerels per milliliter"),
            "mbqml": ("MBq/mL", "megabecquerels per milliliter"), "counts": ("{counts}", "counts")}
    if units not in ucum:
        raise DblurDoseError(f"unknown SPECT units {units!r}; choose one of {', '.join(ucum)}")
    value, meaning = ucum[units]
    node.SetVoxelValueUnits(_coded_entry((value, "UCUM", meaning)))


# --------------------------------------------------------------------------------------------
# Segmentations
# --------------------------------------------------------------------------------------------
@dataclass
class SegmentMask:
    """One segment of a Slicer segmentation on the CT grid (its own mask: overlaps are kept)."""

    segmentId: str
    name: str
    mask: np.ndarray
    color: tuple[float, float, float] = (0.5, 0.5, 0.5)


def _reference_image(ijk_to_ras: np.ndarray, shape_zyx: Sequence[int]):
    image = slicer.vtkOrientedImageData()
    m = vtk.vtkMatrix4x4()
    for i in range(4):
        for j in range(4):
            m.SetElement(i, j, float(ijk_to_ras[i, j]))
    image.SetImageToWorldMatrix(m)
    nz, ny, nx = shape_zyx
    image.SetExtent(0, nx - 1, 0, ny - 1, 0, nz - 1)
    return image


def segmentIdsOf(segmentationNode, segmentIds: Sequence[str] | None = None) -> list[str]:
    """Segment IDs to use: all segments, or the given IDs (segment names are accepted too)."""
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
            raise DblurDoseError(f"the segmentation '{segmentationNode.GetName()}' has no segment {key!r}")
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
            "create its 'Binary labelmap' representation and try again"
        )


def segmentMasks(segmentationNode, referenceVolumeNode, segmentIds: Sequence[str] | None = None,
                 progress: Callable[[float], None] | None = None) -> list[SegmentMask]:
    """Each segment's own binary mask on the reference volume's grid (nearest neighbour)."""
    ensureBinaryLabelmap(segmentationNode, referenceVolumeNode)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    ijk_to_ras = worldIJKToRAS(referenceVolumeNode)
    dims = referenceVolumeNode.GetImageData().GetDimensions()
    shape = (dims[2], dims[1], dims[0])
    segmentation = segmentationNode.GetSegmentation()
    ids = segmentIdsOf(segmentationNode, segmentIds)
    masks = []
    used_names: set[str] = set()
    for k, segment_id in enumerate(ids):
        segment = segmentation.GetSegment(segment_id)
        labelmap = slicer.vtkOrientedImageData()
        mask = np.zeros(shape, dtype=bool)
        if logic.GetSegmentBinaryLabelmapRepresentation(segmentationNode, segment_id, labelmap, True):
            ext = labelmap.GetExtent()
            if ext[1] >= ext[0] and ext[3] >= ext[2] and ext[5] >= ext[4]:
                resampled = slicer.vtkOrientedImageData()
                reference = _reference_image(ijk_to_ras, shape)
                if slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
                    labelmap, reference, resampled, False, False
                ):
                    values = _image_array(resampled)
                    if values.shape == shape:
                        mask = values == segment.GetLabelValue()
        name = segment.GetName()
        if name in used_names:  # statistics rows are keyed by name: keep them apart
            name = f"{name} ({segment_id})"
        used_names.add(name)
        masks.append(SegmentMask(segment_id, name, mask, tuple(segment.GetColor())))
        if progress is not None:
            progress((k + 1) / max(len(ids), 1))
    return masks


# --------------------------------------------------------------------------------------------
# Tables, plots, display, subject hierarchy
# --------------------------------------------------------------------------------------------
def _fill_table(table_node, columns: Sequence[tuple[str, Sequence, str, str]]) -> None:
    """Replace the table's columns: (name, values, unit label, description) each."""
    table = table_node.GetTable()
    while table.GetNumberOfColumns():
        table.RemoveColumn(0)
    for name, values, _unit, _description in columns:
        values = list(values) if not isinstance(values, np.ndarray) else values
        if len(values) and isinstance(values[0], str):
            array = vtk.vtkStringArray()
            for v in values:
                array.InsertNextValue(v)
        else:
            array = vtk_np.numpy_to_vtk(np.asarray(values, dtype=np.float64), deep=True, array_type=vtk.VTK_DOUBLE)
        array.SetName(name)
        table.AddColumn(array)
    table_node.Modified()
    for name, _values, unit, description in columns:
        table_node.SetColumnUnitLabel(name, unit)
        table_node.SetColumnDescription(name, description)


def _plot_series(scene, name: str, table_node, x: str, y: str, color, dashed: bool = False):
    series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", scene.GenerateUniqueName(name))
    series.SetAndObserveTableNodeID(table_node.GetID())
    series.SetXColumnName(x)
    series.SetYColumnName(y)
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
    series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleDash if dashed
                        else slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)
    series.SetColor(*color)
    return series


def _plot_chart(scene, name: str, title: str, x_title: str, y_title: str):
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", scene.GenerateUniqueName(name))
    chart.SetTitle(title)
    chart.SetXAxisTitle(x_title)
    chart.SetYAxisTitle(y_title)
    chart.SetLegendVisibility(True)
    return chart


#: One colour per method where segments do not give one (profiles).
_METHOD_COLORS = {"dvk": (0.0, 0.45, 0.85), "cnn": (0.85, 0.2, 0.1)}


def _first_color_node(scene, ids: Sequence[str]) -> str | None:
    for node_id in ids:
        if scene.GetNodeByID(node_id) is not None:
            return node_id
    return None


def setDoseDisplay(node, array: np.ndarray, difference: bool = False) -> None:
    """Colour map and window for a dose-rate (or difference) volume; voxels near zero transparent."""
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    scene = node.GetScene()
    color = _first_color_node(scene, DIFFERENCE_COLOR_NODES if difference else DOSE_COLOR_NODES)
    if color:
        display.SetAndObserveColorNodeID(color)
    values = np.asarray(array)
    display.AutoWindowLevelOff()
    if difference:
        nonzero = np.abs(values[values != 0])
        top = float(np.percentile(nonzero, 99.5)) if nonzero.size else 1.0
        top = top if top > 0 else 1.0
        display.SetWindowLevelMinMax(-top, top)
        display.SetApplyThreshold(False)
    else:
        positive = values[values > 0]
        top = float(np.percentile(positive, 99.9)) if positive.size else 1.0
        top = top if top > 0 else 1.0
        display.SetWindowLevelMinMax(0.0, top)
        display.SetThreshold(0.02 * top, float(np.finfo(np.float32).max))
        display.SetApplyThreshold(True)
    display.SetInterpolate(False)


def showInSliceViews(background_node, foreground_node, opacity: float = 0.5) -> None:
    """CT as background and a dose map as foreground in every slice view of the scene."""
    scene = foreground_node.GetScene()
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        composite.SetBackgroundVolumeID(background_node.GetID())
        composite.SetForegroundVolumeID(foreground_node.GetID())
        composite.SetForegroundOpacity(opacity)


def _place_in_hierarchy(scene, node, parent_item: int) -> int:
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, parent_item)
    else:
        item = sh.CreateItem(parent_item, node)
    return item


def outputParentItem(ctNode) -> int:
    """Subject-hierarchy item the outputs go under: the CT's study (its parent), else the scene."""
    scene = ctNode.GetScene()
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = sh.GetItemByDataNode(ctNode)
    parent = sh.GetItemParent(item) if item else 0
    return parent if parent else sh.GetSceneItemID()


# --------------------------------------------------------------------------------------------
# Line profile
# --------------------------------------------------------------------------------------------
def lineEndpointsLPS(lineNode) -> tuple[np.ndarray, np.ndarray] | None:
    """World positions (LPS, mm) of the line's two control points; None while it has fewer."""
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
    """:func:`DblurDoseLib.evaluation.metrics.line_profile` on the part of the volume the line crosses."""
    from ..evaluation.metrics import line_profile

    p0, p1 = np.asarray(p0, dtype=np.float64), np.asarray(p1, dtype=np.float64)
    if n_points is None:
        n_points = max(int(np.ceil(float(np.linalg.norm(p1 - p0)) / min(volume.spacing))) + 1, 2)
    return line_profile(_crop_around(volume, p0, p1), p0, p1, n_points)


# --------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------
@dataclass
class DoseRateResult:
    """What :func:`computeDoseRateMaps` created (all nodes are in the inputs' scene)."""

    spectNode: object
    ctNode: object
    doseNodes: dict = field(default_factory=dict)
    differenceNode: object | None = None
    statisticsTable: object | None = None
    drvhTables: dict = field(default_factory=dict)
    drvhChart: object | None = None
    drvhDifferentialChart: object | None = None
    profileTable: object | None = None
    profileChart: object | None = None
    lineNode: object | None = None
    segments: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    report: dict = field(default_factory=dict)
    units: str = DOSE_RATE_UNITS[0]
    spectUnits: str = "bqml"
    _observations: list = field(default_factory=list, repr=False)

    def mainDoseNode(self):
        """The dose map to show first: the CNN's when it ran, else the DVK's."""
        for method in ("cnn", "dvk", *self.doseNodes):
            if self.doseNodes.get(method) is not None:
                return self.doseNodes[method]
        return None

    def mainChart(self):
        """The chart to show first: the line profile when there is one, else the cumulative DRVH."""
        return self.profileChart if self.profileChart is not None else self.drvhChart

    # -- line profile ------------------------------------------------------------------------
    def setLine(self, lineNode, observe: bool = True) -> None:
        """Profile along ``lineNode`` (None: stop); with ``observe`` it follows the line as it moves."""
        self.stopObservingLine()
        self.lineNode = lineNode
        if lineNode is None:
            return
        scene = self.ctNode.GetScene()
        if self.profileTable is None or self.profileTable.GetScene() is None:
            base = self.spectNode.GetName()
            self.profileTable = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{base} dose-rate profile"))
            self.profileChart = _plot_chart(scene, f"{base} dose-rate profile chart", f"Dose rate along {lineNode.GetName()}",
                                            "Distance along the line (mm)", f"Dose rate ({self.units})")
            self.updateProfile()
            parent = outputParentItem(self.ctNode)
            _place_in_hierarchy(scene, self.profileTable, parent)
            chart_item = _place_in_hierarchy(scene, self.profileChart, parent)
            for method, node in self.doseNodes.items():
                series = _plot_series(scene, node.GetName(), self.profileTable, "Distance", node.GetName(),
                                      _METHOD_COLORS.get(method, (0.3, 0.3, 0.3)), dashed=(method == "cnn"))
                self.profileChart.AddAndObservePlotSeriesNodeID(series.GetID())
                _place_in_hierarchy(scene, series, chart_item)
        else:
            self.profileChart.SetTitle(f"Dose rate along {lineNode.GetName()}")
            self.updateProfile()
        if observe:
            events = (slicer.vtkMRMLMarkupsNode.PointModifiedEvent, slicer.vtkMRMLMarkupsNode.PointRemovedEvent,
                      slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, slicer.vtkMRMLTransformableNode.TransformModifiedEvent)
            self._observations = [(lineNode, lineNode.AddObserver(e, self._onLineModified)) for e in events]

    def stopObservingLine(self) -> None:
        for node, tag in self._observations:
            node.RemoveObserver(tag)
        self._observations = []

    def _onLineModified(self, caller=None, event=None) -> None:
        if self.profileTable is None or self.profileTable.GetScene() is None or self.ctNode.GetScene() is None:
            self.stopObservingLine()  # the outputs were deleted
            return
        try:
            self.updateProfile()
        except DblurDoseError as exc:  # e.g. a dose node was removed meanwhile
            logging.warning("DblurDose: line profile not updated: %s", exc)

    def updateProfile(self) -> None:
        """Sample every dose map (and the SPECT and CT) along the line into the profile table."""
        if self.profileTable is None:
            return
        ends = lineEndpointsLPS(self.lineNode)
        dose_nodes = [(m, n) for m, n in self.doseNodes.items() if n is not None and n.GetScene() is not None]
        if ends is None or not dose_nodes:
            _fill_table(self.profileTable, [("Distance", np.zeros(0), "mm", "distance from the line's first point")]
                        + [(n.GetName(), np.zeros(0), self.units, "") for _m, n in dose_nodes])
            return
        p0, p1 = ends
        columns = []
        distance = None
        for method, node in dose_nodes:
            volume = volumeFromNode(node, f"{method} dose rate", dtype=None, copy=False)
            distance, values = sampleAlongLine(volume, p0, p1)
            columns.append((node.GetName(), values, self.units, f"{method.upper()} dose rate along the line"))
        n_points = len(distance)
        for node, label, what in ((self.spectNode, SPECT_UNIT_LABELS.get(self.spectUnits, ""), "SPECT"),
                                  (self.ctNode, "HU", "CT")):
            if node is not None and node.GetScene() is not None:
                _d, values = sampleAlongLine(volumeFromNode(node, what, dtype=None, copy=False), p0, p1, n_points)
                columns.append((node.GetName(), values, label, f"{what} along the line"))
        _fill_table(self.profileTable, [("Distance", distance, "mm", "distance from the line's first point")] + columns)


# --------------------------------------------------------------------------------------------
# The workflow
# --------------------------------------------------------------------------------------------
def resolveDevice(device: str | None) -> str:
    """The device name for a user choice ('Auto', 'CPU', 'GPU', 'cuda', ...), resolved by the library's
    :func:`DblurDoseLib.devices.resolve_device` ('auto' stays 'auto' so that each step picks its device)."""
    from ..devices import resolve_device

    name = (device or "auto").strip().lower()
    return name if name == "auto" else str(resolve_device(name))


def _library_options(options: dict) -> dict:
    from ..dose import compute_dose_rate_maps

    accepted = set(inspect.signature(compute_dose_rate_maps).parameters) - {"spect", "ct", "methods", "device", "progress"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise DblurDoseError(
            f"unknown option(s) {', '.join(unknown)}; accepted: {', '.join(sorted(accepted | set(_OWN_OPTIONS)))}"
        )
    return options


def _check_methods(methods: Sequence[str], warnings: list[str]) -> tuple[str, ...]:
    from ..dose import METHODS, available_methods

    if isinstance(methods, str):
        methods = (methods,)
    wanted = tuple(dict.fromkeys(m.strip().lower() for m in methods))
    if "all" in wanted:
        wanted = METHODS
    unknown = [m for m in wanted if m not in METHODS]
    if unknown or not wanted:
        raise DblurDoseError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    available = available_methods()
    missing = [m for m in wanted if m not in available]
    kept = tuple(m for m in wanted if m in available)
    if missing:
        if not kept:
            raise DblurDoseError(
                f"{', '.join(m.upper() for m in missing)} is not available in this installation "
                f"(available: {', '.join(m.upper() for m in available)}); choose DVK"
            )
        warnings.append(f"{', '.join(m.upper() for m in missing)} is not available (no trained weights installed); "
                        f"computed {', '.join(m.upper() for m in kept)} only")
    return kept


def _check_input_nodes(spectNode, ctNode, segmentationNode=None, where: str = "") -> None:
    """Refuse missing or wrong node types before any work (``where``: e.g. "time point 2: ")."""
    if spectNode is None or ctNode is None:
        raise DblurDoseError(f"{where}select both a SPECT and a CT volume")
    if spectNode is ctNode:
        raise DblurDoseError(f"{where}the SPECT and the CT are the same volume; select the SPECT and its CT")
    for node, what in ((spectNode, "SPECT"), (ctNode, "CT")):
        if not node.IsA("vtkMRMLScalarVolumeNode"):
            raise DblurDoseError(f"{where}the {what} '{node.GetName()}' is a {node.GetClassName()}, not a scalar "
                                 f"volume; select the {what} volume")
    if segmentationNode is not None and not segmentationNode.IsA("vtkMRMLSegmentationNode"):
        raise DblurDoseError(
            f"'{segmentationNode.GetName()}' is a {segmentationNode.GetClassName()}, not a segmentation; give a "
            "segmentation node (a labelmap volume can be imported into one with the Segmentations module)"
        )


def computeDoseRateMaps(spectNode, ctNode, segmentationNode=None, lineNode=None, methods=("dvk", "cnn"),
                        device="auto", segmentIds=None, progress: Progress | None = None, **options) -> DoseRateResult:
    """Dose-rate maps (mGy/h, CT grid) and their statistics for a SPECT/CT in a MRML scene.

    :param spectNode: SPECT scalar volume (Bq/mL unless ``spect_units`` or its VoxelValueUnits say otherwise).
    :param ctNode: CT scalar volume in HU; the dose maps share its grid.
    :param segmentationNode: optional segmentation; statistics and DRVHs per segment.
    :param lineNode: optional markups line; dose-rate profile along it (updated as it moves).
    :param methods: 'dvk', 'cnn' or both. A method this installation lacks (the CNN until its
        weights ship) is skipped with a warning in ``result.warnings``; if none is left, DblurDoseError.
    :param device: 'auto', 'cpu', 'gpu' (CUDA, else Apple MPS), or a torch device name.
    :param segmentIds: segment IDs (or names) to use; all segments when None.
    :param progress: ``progress(fraction, message)``; returning False cancels (DblurDoseError,
        nothing is added to the scene).
    :param options: ``drvhBins`` (200), ``differenceMap`` (True: CNN minus DVK when both ran),
        ``show`` (True: dose map over the CT in the slice views), ``observeLine`` (True), and any
        keyword of :func:`DblurDoseLib.dose.compute_dose_rate_maps` (``spect_units``,
        ``calibration_cps_per_mbq``, ``duration_s``, ``scale_electron_only``, ``hu_calibration``, ...).
    :returns: a :class:`DoseRateResult`. Empty segments are listed in ``warnings`` and in the
        statistics table's Note column, not fatal.
    """
    from ..dose import compute_dose_rate_maps
    from ..evaluation.metrics import drvh_table, statistics_table
    from ..geometry.segments import Segment

    own = {k: options.pop(k, v) for k, v in _OWN_OPTIONS.items()}
    library_options = _library_options(options)
    warnings: list[str] = []

    def step(fraction: float, message: str) -> None:
        if progress is not None and progress(float(fraction), message) is False:
            raise DblurDoseError("cancelled by the user; nothing was added to the scene")

    step(0.0, "reading the inputs")
    _check_input_nodes(spectNode, ctNode, segmentationNode)
    scene = ctNode.GetScene()
    if scene is None:
        raise DblurDoseError("the CT volume is not in a scene")
    kept_methods = _check_methods(methods, warnings)
    if "spect_units" not in library_options:
        detected = spectUnitsFromNode(spectNode)
        if detected is None:
            warnings.append(f"the SPECT '{spectNode.GetName()}' does not record its units; assumed Bq/mL")
        library_options["spect_units"] = detected or "bqml"
    spect_units = str(library_options["spect_units"]).lower().replace("/", "")
    spect = volumeFromNode(spectNode, "SPECT")
    ct = volumeFromNode(ctNode, "CT")
    device_name = resolveDevice(device)
    library_options.setdefault("report", {})

    step(0.05, "computing dose rates")
    maps = compute_dose_rate_maps(
        spect, ct, kept_methods, device=device_name,
        progress=lambda f, m: step(0.05 + 0.75 * float(f), m), **library_options,
    )
    warnings.extend(library_options["report"].get("warnings", []))
    units = next(iter(maps.values())).metadata.get("units", DOSE_RATE_UNITS[0]) if maps else DOSE_RATE_UNITS[0]
    arrays = {m: np.asarray(v.array, dtype=np.float32) for m, v in maps.items()}

    segments: list[SegmentMask] = []
    stats_rows: list[dict] = []
    drvh_rows: list[dict] = []
    if segmentationNode is not None:
        step(0.8, "reading the segments")
        segments = segmentMasks(segmentationNode, ctNode, segmentIds,
                                progress=lambda f: step(0.8 + 0.1 * f, "reading the segments"))
        for s in segments:
            if not s.mask.any():
                warnings.append(f"segment '{s.name}' is empty on the CT grid (outside the CT field or "
                                "smaller than a voxel); no statistics for it")
        filled = [Segment(s.name, s.mask) for s in segments if s.mask.any()]
        step(0.9, "statistics and dose-rate-volume histograms")
        if filled:
            stats_rows = statistics_table(arrays, filled, ct.voxel_volume_ml, units)
            drvh_rows = drvh_table(arrays, filled, int(own["drvhBins"]), units)

    step(0.95, "adding the results to the scene")
    result = DoseRateResult(spectNode, ctNode, segments=segments, warnings=warnings,
                            report=dict(library_options.get("report") or {}), units=units, spectUnits=spect_units)
    parent = outputParentItem(ctNode)
    base = spectNode.GetName()
    for method, array in arrays.items():
        node = _new_volume_node(scene, f"{base} dose rate {method.upper()}", array, ctNode)
        node.SetVoxelValueQuantity(_coded_entry(DOSE_RATE_QUANTITY))
        node.SetVoxelValueUnits(_coded_entry(DOSE_RATE_UNITS if units == DOSE_RATE_UNITS[0] else (units, "UCUM", units)))
        node.SetAttribute(DOSE_VOLUME_ATTRIBUTE, "1")
        node.SetAttribute("DblurDose.Method", method)
        node.SetAttribute("DblurDose.SpectVolume", spectNode.GetID())
        node.SetAttribute("DblurDose.CTVolume", ctNode.GetID())
        setDoseDisplay(node, array)
        _place_in_hierarchy(scene, node, parent)
        result.doseNodes[method] = node
    if own["differenceMap"] and {"dvk", "cnn"} <= set(arrays):
        difference = arrays["cnn"] - arrays["dvk"]
        node = _new_volume_node(scene, f"{base} dose rate CNN-DVK", difference, ctNode)
        node.SetVoxelValueQuantity(_coded_entry(DOSE_RATE_DIFFERENCE_QUANTITY))
        node.SetVoxelValueUnits(_coded_entry(DOSE_RATE_UNITS if units == DOSE_RATE_UNITS[0] else (units, "UCUM", units)))
        node.SetAttribute("DblurDose.Method", "cnn-dvk")
        setDoseDisplay(node, difference, difference=True)
        _place_in_hierarchy(scene, node, parent)
        result.differenceNode = node

    if segmentationNode is not None:
        _add_statistics(result, scene, parent, base, stats_rows)
        _add_drvh(result, scene, parent, base, drvh_rows)

    if own["show"] and result.doseNodes:
        showInSliceViews(ctNode, result.mainDoseNode())
    if lineNode is not None:
        result.setLine(lineNode, observe=bool(own["observeLine"]))
    for message in warnings:
        logging.warning("DblurDose: %s", message)
    step(1.0, "done")
    return result


_STAT_COLUMNS = (("volume_ml", "Volume", "mL", "segment volume on the CT grid"),
                 ("mean", "Mean", None, "mean dose rate"),
                 ("DR10", "DR10", None, "minimum dose rate of the hottest 10% of the segment"),
                 ("DR30", "DR30", None, "minimum dose rate of the hottest 30% of the segment"),
                 ("DR70", "DR70", None, "minimum dose rate of the hottest 70% of the segment"),
                 ("DR90", "DR90", None, "minimum dose rate of the hottest 90% of the segment"))


def _add_statistics(result: DoseRateResult, scene, parent: int, base: str, rows: list[dict]) -> None:
    from ..evaluation.metrics import statistics_columns

    column_of = statistics_columns(result.units)  # the rows' column names carry the unit
    methods = list(result.doseNodes)
    by_key = {(r["segment"], r["method"]): r for r in rows}
    names, method_col, notes = [], [], []
    values = {key: [] for key, *_ in _STAT_COLUMNS}
    for segment in result.segments:
        for method in methods:
            row = by_key.get((segment.name, method))
            names.append(segment.name)
            method_col.append(method.upper())
            notes.append("" if row else "empty on the CT grid")
            for key, *_ in _STAT_COLUMNS:
                values[key].append(float(row[column_of[key]]) if row else (0.0 if key == "volume_ml" else math.nan))
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{base} dose-rate statistics"))
    columns = [("Segment", names, "", "segment name"), ("Method", method_col, "", "dose-rate method")]
    columns += [(title, values[key], unit or result.units, description) for key, title, unit, description in _STAT_COLUMNS]
    columns.append(("Note", notes, "", "why a row has no statistics"))
    _fill_table(table, columns)
    _place_in_hierarchy(scene, table, parent)
    result.statisticsTable = table


def _add_drvh(result: DoseRateResult, scene, parent: int, base: str, rows: list[dict]) -> None:
    from ..evaluation.metrics import unit_suffix

    if not rows:
        return
    colors = {s.name: s.color for s in result.segments}
    cumulative = _plot_chart(scene, f"{base} DRVH cumulative", "Cumulative dose-rate-volume histogram",
                             f"Dose rate ({result.units})", "Volume receiving at least (%)")
    differential = _plot_chart(scene, f"{base} DRVH differential", "Differential dose-rate-volume histogram",
                               f"Dose rate ({result.units})", "Volume per bin (%)")
    items = {chart: _place_in_hierarchy(scene, chart, parent) for chart in (cumulative, differential)}
    segment_names = list(dict.fromkeys(r["segment"] for r in rows))
    for name in segment_names:
        seg_rows = [r for r in rows if r["segment"] == name]
        methods = list(dict.fromkeys(r["method"] for r in seg_rows))
        first = [r for r in seg_rows if r["method"] == methods[0]]
        suffix = unit_suffix(result.units)
        low = np.array([r[f"dose_rate_low_{suffix}"] for r in first])
        high = np.array([r[f"dose_rate_high_{suffix}"] for r in first])
        columns = [("Dose rate", low, result.units, "lower edge of the bin"),
                   ("Dose rate upper", high, result.units, "upper edge of the bin"),
                   ("Bin centre", (low + high) / 2, result.units, "centre of the bin")]
        for method in methods:
            m_rows = [r for r in seg_rows if r["method"] == method]
            columns.append((f"{method.upper()} cumulative", [100.0 * r["cumulative_fraction"] for r in m_rows], "%",
                            "percentage of the segment receiving at least the bin's lower edge"))
            columns.append((f"{method.upper()} differential", [100.0 * r["differential_fraction"] for r in m_rows], "%",
                            "percentage of the segment in the bin"))
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{base} DRVH {name}"))
        _fill_table(table, columns)
        _place_in_hierarchy(scene, table, parent)
        result.drvhTables[name] = table
        for method in methods:
            for chart, x, kind in ((cumulative, "Dose rate", "cumulative"), (differential, "Bin centre", "differential")):
                series = _plot_series(scene, f"{name} {method.upper()} {kind}", table, x, f"{method.upper()} {kind}",
                                      colors.get(name, (0.5, 0.5, 0.5)), dashed=(method == "cnn"))
                chart.AddAndObservePlotSeriesNodeID(series.GetID())
                _place_in_hierarchy(scene, series, items[chart])
    result.drvhChart = cumulative
    result.drvhDifferentialChart = differential


# --------------------------------------------------------------------------------------------
# Absorbed dose from several time points
# --------------------------------------------------------------------------------------------
#: Units and quantity of the absorbed-dose output (private scheme, as the dose rate's).
ABSORBED_DOSE_UNITS = ("Gy", "UCUM", "gray")
ABSORBED_DOSE_QUANTITY = ("AbsorbedDose", "99DBLURDOSE", "Absorbed dose")


@dataclass
class AbsorbedDoseResult:
    """What :func:`computeAbsorbedDose` created (nodes in the reference CT's scene) and the library's result."""

    doseNode: object
    doseTable: object | None = None
    tacTable: object | None = None
    tacFitTable: object | None = None
    tacChart: object | None = None
    dvhTable: object | None = None
    dvhChart: object | None = None
    warnings: list = field(default_factory=list)
    dosimetry: object | None = None  # DblurDoseLib.dosimetry.DosimetryResult


def computeAbsorbedDose(timePoints: Sequence[tuple], segmentationNode=None, method: str = "dvk", fit: str = "auto",
                        singleTimePoint: str | None = None, register: str = "rigid",
                        administeredMBq: float | None = None, device: str = "auto", segmentIds=None,
                        progress: Progress | None = None, **options) -> AbsorbedDoseResult:
    """Absorbed dose (Gy) from SPECT/CT time points in a MRML scene: the Slicer side of ``dblurdose dosimetry``.

    :param timePoints: ``(spectNode, ctNode, hours after administration)`` per acquisition, in any
        order (sorted here); the earliest is the reference whose CT grid the results are on and on
        whose CT the segments are drawn.
    :param segmentationNode: segments (VOIs) on the reference CT; per-VOI doses, curves and DVHs.
    :param method: 'dvk' or 'cnn' (the dose-rate engine at each time point).
    :param fit: 'auto' (AICc among mono-, bi-, tri-exponentials), 'mono', 'bi', 'tri' or 'trapezoid'.
    :param singleTimePoint: 'haenscheid' or 'madsen', required with one time point.
    :param register: 'rigid', 'deformable' or 'none' (each later CT onto the reference CT).
    :param administeredMBq: administered activity (MBq), recorded and checked against each time point.
    :param device: 'auto', 'cpu', 'gpu' or a torch device name.
    :param segmentIds: segment IDs (or names) to use; all when None.
    :param progress: ``progress(fraction, message)``; returning False cancels (nothing is added).
    :param options: keywords of :func:`DblurDoseLib.dose.compute_dose_rate_maps` (``spect_units`` for
        every SPECT that does not record its units, ``hu_calibration``, ``scale_electron_only``, ...)
        and ``dvhBins`` (200).
    :returns: an :class:`AbsorbedDoseResult`: the dose volume (Gy, tagged as a dose volume for
        SlicerRT), the per-VOI dose table, the time-activity table and chart (measured points and
        the fitted curve per VOI) and the DVH table and chart.
    """
    from .. import dosimetry
    from ..geometry.segments import Segment

    dvh_bins = int(options.pop("dvhBins", 200))
    library_options = _library_options(options)

    def step(fraction: float, message: str) -> None:
        if progress is not None and progress(float(fraction), message) is False:
            raise DblurDoseError("cancelled by the user; nothing was added to the scene")

    step(0.0, "reading the time points")
    points = list(timePoints or [])
    if not points:
        raise DblurDoseError("add at least one time point (a SPECT, its CT and the hours after administration)")
    try:
        points = sorted(((s, c, float(h)) for s, c, h in points), key=lambda p: p[2])
    except (TypeError, ValueError):
        raise DblurDoseError("each time point needs a SPECT, a CT and its time in hours after administration") from None
    for i, (spectNode, ctNode, _) in enumerate(points, start=1):
        _check_input_nodes(spectNode, ctNode, segmentationNode if i == 1 else None, where=f"time point {i}: ")
    reference_ct_node = points[0][1]
    scene = reference_ct_node.GetScene()
    if scene is None:
        raise DblurDoseError("the reference CT volume is not in a scene")
    # per time point (the same for all): units, and the camera calibration for counts
    explicit_units = library_options.pop("spect_units", None)
    calibration = library_options.pop("calibration_cps_per_mbq", None)
    duration = library_options.pop("duration_s", None)
    activity_range = library_options.pop("activity_range_mbq", dosimetry.ACTIVITY_RANGE_MBQ)
    warnings: list[str] = []
    timepoints = []
    for i, (spectNode, ctNode, hours) in enumerate(points, start=1):
        units = explicit_units or spectUnitsFromNode(spectNode)
        if units is None:
            warnings.append(f"the SPECT '{spectNode.GetName()}' does not record its units; assumed Bq/mL")
        timepoints.append(dosimetry.TimePoint(
            spect=volumeFromNode(spectNode, "SPECT"), ct=volumeFromNode(ctNode, "CT"), time_h=hours,
            label=f"time point {i} ({hours:g} h, {spectNode.GetName()})", spect_units=units or "bqml",
            calibration_cps_per_mbq=calibration, duration_s=duration))
    segments: list[Segment] = []
    colors: dict[str, tuple] = {}
    if segmentationNode is not None:
        step(0.05, "reading the segments")
        for s in segmentMasks(segmentationNode, reference_ct_node, segmentIds):
            if s.mask.any():
                segments.append(Segment(s.name, s.mask))
                colors[s.name] = tuple(s.color)
            else:
                warnings.append(f"segment '{s.name}' is empty on the reference CT grid; no dose for it")
    library_options["device"] = resolveDevice(device)
    result = dosimetry.absorbed_dose(
        timepoints, segments, method=method, fit=fit, single_time_point=singleTimePoint, register=register,
        administered_mbq=administeredMBq, dose_options=library_options, activity_range_mbq=activity_range,
        progress=lambda f, m: step(0.1 + 0.8 * float(f), m))
    warnings += result.warnings

    step(0.95, "adding the results to the scene")
    parent = outputParentItem(reference_ct_node)
    base = points[0][0].GetName()
    dose = np.asarray(result.dose.array, dtype=np.float32)
    node = _new_volume_node(scene, f"{base} absorbed dose {method.upper()}", dose, reference_ct_node)
    node.SetVoxelValueQuantity(_coded_entry(ABSORBED_DOSE_QUANTITY))
    node.SetVoxelValueUnits(_coded_entry(ABSORBED_DOSE_UNITS))
    node.SetAttribute(DOSE_VOLUME_ATTRIBUTE, "1")
    node.SetAttribute("DblurDose.Method", method)
    node.SetAttribute("DblurDose.TimePoints", ",".join(f"{h:g}" for *_, h in points))
    setDoseDisplay(node, dose)
    _place_in_hierarchy(scene, node, parent)
    out = AbsorbedDoseResult(doseNode=node, warnings=warnings, dosimetry=result)
    if segments:
        _add_absorbed_dose_tables(out, scene, parent, base, result, segments, colors, dvh_bins)
    for message in warnings:
        logging.warning("DblurDose: %s", message)
    step(1.0, "done")
    return out


def _add_absorbed_dose_tables(out: AbsorbedDoseResult, scene, parent: int, base: str, result, segments,
                              colors: dict[str, tuple], dvh_bins: int) -> None:
    from ..dosimetry import dose_rows, dvh_rows, fitted_curves

    rows = dose_rows(result)
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{base} absorbed doses"))
    _fill_table(table, [
        ("Segment", [r["segment"] for r in rows], "", "segment name"),
        ("Volume", [r["volume_ml"] for r in rows], "mL", "segment volume on the reference CT grid"),
        ("Mean dose", [r["mean_dose_gy"] for r in rows], "Gy", "from the fitted mean dose-rate curve"),
        ("Uncertainty", [r["mean_dose_uncertainty_gy"] for r in rows], "Gy", "standard uncertainty of the mean dose"),
        ("Map mean", [r["map_mean_dose_gy"] for r in rows], "Gy", "mean of the voxel absorbed-dose map"),
        *[(f"D{level}", [r[f"D{level}_gy"] for r in rows], "Gy", f"minimum dose of the hottest {level}%")
          for level in (2, 50, 98)],
        ("BED", [r["bed_gy"] for r in rows], "Gy", "biologically effective dose, where parameters exist"),
        ("Fit", [r["fit"] for r in rows], "", "time-integration model"),
        ("Effective half-life", [r["effective_half_life_h"] for r in rows], "h", "terminal phase of the fit"),
        ("Note", [r["reason"] for r in rows], "", "why this model; fallbacks are named"),
    ])
    _place_in_hierarchy(scene, table, parent)
    out.doseTable = table

    times = np.asarray(result.times_h, dtype=np.float64)
    tac = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{base} time-activity"))
    _fill_table(tac, [("Time", times, "h", "hours after administration")]
                + [(v.name, v.dose_rates_mgy_h, "mGy/h", "VOI mean dose rate") for v in result.vois])
    dense, fits = fitted_curves(result)
    fitted = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{base} time-activity fit"))
    _fill_table(fitted, [("Time", dense, "h", "hours after administration")]
                + [(v.name, fits[v.name], "mGy/h", f"fitted curve ({v.integral.model})") for v in result.vois])
    chart = _plot_chart(scene, f"{base} time-activity", "VOI dose rates and fitted curves",
                        "Time after administration (h)", "Mean dose rate (mGy/h)")
    item = _place_in_hierarchy(scene, chart, parent)
    for t in (tac, fitted):
        _place_in_hierarchy(scene, t, parent)
    for v in result.vois:
        color = colors.get(v.name, (0.5, 0.5, 0.5))
        points = _plot_series(scene, f"{v.name} measured", tac, "Time", v.name, color)
        points.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        points.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleNone)
        curve = _plot_series(scene, f"{v.name} fit", fitted, "Time", v.name, color)
        for series in (points, curve):
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
            _place_in_hierarchy(scene, series, item)
    out.tacTable, out.tacFitTable, out.tacChart = tac, fitted, chart

    dvh = dvh_rows(result, segments, dvh_bins)
    names = list(dict.fromkeys(r["segment"] for r in dvh))
    first = [r for r in dvh if r["segment"] == names[0]]
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{base} DVH"))
    _fill_table(table, [("Dose", [r["dose_gy_low"] for r in first], "Gy", "lower edge of the bin")]
                + [(name, [100.0 * r["cumulative_fraction"] for r in dvh if r["segment"] == name], "%",
                    "percentage of the segment receiving at least the dose") for name in names])
    chart = _plot_chart(scene, f"{base} DVH", "Cumulative dose-volume histogram", "Absorbed dose (Gy)",
                        "Volume receiving at least (%)")
    _place_in_hierarchy(scene, table, parent)
    item = _place_in_hierarchy(scene, chart, parent)
    for name in names:
        series = _plot_series(scene, f"{name} DVH", table, "Dose", name, colors.get(name, (0.5, 0.5, 0.5)))
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
        _place_in_hierarchy(scene, series, item)
    out.dvhTable, out.dvhChart = table, chart

