"""Building the output nodes: volumes tagged as doses, tables, plots, display, subject hierarchy,
and :class:`OutputNodes`, which reuses a previous run's nodes so that a re-run fills them in place."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import slicer
import vtk
import vtk.util.numpy_support as vtk_np

from ..errors import DblurDoseError
from ..units import SPECT_UNITS, spect_unit_key
from .coordinates import setVolumeArray

#: Units of the dose-rate outputs (UCUM). The quantity uses a private coding scheme (DICOM allows
#: "99" prefixes): DCM has no code for an absorbed dose *rate*.
DOSE_RATE_UNITS = ("mGy/h", "UCUM", "milligray per hour")
DOSE_RATE_QUANTITY = ("DoseRate", "99DBLURDOSE", "Absorbed dose rate")
DOSE_RATE_DIFFERENCE_QUANTITY = ("DoseRateDifference", "99DBLURDOSE", "Absorbed dose rate difference")
#: Units and quantity of the absorbed-dose output (private scheme, as the dose rate's).
ABSORBED_DOSE_UNITS = ("Gy", "UCUM", "gray")
ABSORBED_DOSE_QUANTITY = ("AbsorbedDose", "99DBLURDOSE", "Absorbed dose")
#: SlicerRT recognises dose volumes by this attribute.
DOSE_VOLUME_ATTRIBUTE = "DicomRtImport.DoseVolume"
#: The attribute naming an output node's role in its run ("dose-dvk", "statistics", ...); saved with the scene.
OUTPUT_ROLE_ATTRIBUTE = "DblurDose.Output"

#: SPECT unit names: the library's keyword -> label shown to users (from units.SPECT_UNITS).
SPECT_UNIT_LABELS = {key: unit.label for key, unit in SPECT_UNITS.items()}

DOSE_COLOR_NODES = ("vtkMRMLColorTableNodeRainbow", "vtkMRMLPETProceduralColorNodePET-Rainbow2")
DIFFERENCE_COLOR_NODES = ("vtkMRMLColorTableNodeFileDivergingBlueRed.txt", "vtkMRMLColorTableNodeFullRainbow")


def codedEntry(value_scheme_meaning: tuple[str, str, str]):
    """A ``vtkCodedEntry`` of (code value, coding scheme, code meaning)."""
    entry = slicer.vtkCodedEntry()
    entry.SetValueSchemeMeaning(*value_scheme_meaning)
    return entry


def spectUnitsFromNode(node) -> str | None:
    """The SPECT's activity units from its ``VoxelValueUnits`` coded entry.

    Returns
    -------
    str or None
        'bqml', 'kbqml', 'mbqml' or 'counts'; None when the image does not say (then the user has to).
    """
    if node is None or not hasattr(node, "GetVoxelValueUnits"):
        return None
    units = node.GetVoxelValueUnits()
    if units is None:
        return None
    return spect_unit_key(units.GetCodeValue())


def setSpectUnits(node, units: str) -> None:
    """Record the SPECT's activity units on its node (UCUM coded entry), e.g. after loading a NRRD.

    Parameters
    ----------
    node : vtkMRMLScalarVolumeNode
        The SPECT.
    units : str
        'bqml', 'kbqml', 'mbqml' or 'counts'.
    """
    if units not in SPECT_UNITS:
        raise DblurDoseError(f"unknown SPECT units {units!r}; choose one of {', '.join(SPECT_UNITS)}",
                             settings=("spect_units",))
    unit = SPECT_UNITS[units]
    node.SetVoxelValueUnits(codedEntry((unit.ucum, "UCUM", unit.meaning)))


class OutputNodes:
    """Where a run's output nodes come from: a previous run's node of the same role, else a new one.

    Reusing keeps node IDs, and so everything that refers to them (slice views, plots, the module's
    parameter node), across re-runs. A role with a ``|`` is a part of the output named before it
    (``"drvh-chart|series|liver DVK"``): :meth:`finish` removes the previous run's parts of outputs
    this run remade but no longer needs (a segment left out, a method not run); whole outputs this
    run did not make (the CNN map when only the DVK ran) are left as they were.

    Parameters
    ----------
    scene : vtkMRMLScene
        Where the outputs go.
    previous : iterable of vtkMRMLNode
        The previous run's outputs (:meth:`nodes` of its result); nodes of other scenes, deleted
        ones and nodes without a role are ignored.
    """

    def __init__(self, scene, previous: Iterable = ()) -> None:
        self.scene = scene
        self.previous = {}
        for node in previous or ():
            role = node.GetAttribute(OUTPUT_ROLE_ATTRIBUTE) if node is not None else None
            if role and node.GetScene() is scene:
                self.previous[role] = node
        self.used: dict[str, object] = {}

    def node(self, class_name: str, role: str, name: str):
        """The node for ``role``: the previous one (renamed ``name``) when it is of ``class_name``, else a new one."""
        node = self.previous.get(role)
        if node is not None and node.IsA(class_name) and node.GetScene() is self.scene:
            node.SetName(name)
        else:
            node = self.scene.AddNewNodeByClass(class_name, self.scene.GenerateUniqueName(name))
        node.SetAttribute(OUTPUT_ROLE_ATTRIBUTE, role)
        self.used[role] = node
        return node

    def finish(self) -> None:
        """Remove the previous run's parts (see the class) of outputs remade without them."""
        for role, node in list(self.previous.items()):
            owner = role.split("|", 1)[0]
            if "|" in role and role not in self.used and owner in self.used and node.GetScene() is self.scene:
                self.scene.RemoveNode(node)
                del self.previous[role]

    def nodes(self) -> list:
        """Every output node still in the scene: this run's, then the previous run's kept ones."""
        kept = [n for r, n in self.previous.items() if r not in self.used]
        return [n for n in [*self.used.values(), *kept] if n.GetScene() is self.scene]

    def byRole(self, role: str):
        """This run's node for ``role``, else the previous run's (None when neither)."""
        return self.used.get(role, self.previous.get(role))


def doseVolume(outputs: OutputNodes, role: str, name: str, array: np.ndarray, like_node,
               quantity: tuple[str, str, str], units: tuple[str, str, str]):
    """A scalar volume on ``like_node``'s grid holding ``array``, coded with ``quantity`` and ``units``."""
    node = outputs.node("vtkMRMLScalarVolumeNode", role, name)
    setVolumeArray(node, array, like_node)
    node.SetVoxelValueQuantity(codedEntry(quantity))
    node.SetVoxelValueUnits(codedEntry(units))
    return node


def fillTable(table_node, columns: Sequence[tuple[str, Sequence, str, str]]) -> None:
    """Replace the table's columns: (name, values, unit label, description) each; strings or numbers."""
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


def plotChart(outputs: OutputNodes, role: str, name: str, title: str, x_title: str, y_title: str):
    """A plot chart (titles set, legend on) emptied of series: the caller adds them (:func:`plotSeries`)."""
    chart = outputs.node("vtkMRMLPlotChartNode", role, name)
    chart.RemoveAllPlotSeriesNodeIDs()
    chart.SetTitle(title)
    chart.SetXAxisTitle(x_title)
    chart.SetYAxisTitle(y_title)
    chart.SetLegendVisibility(True)
    return chart


def plotSeries(outputs: OutputNodes, chart, chart_role: str, chart_item: int, name: str, table_node, x: str, y: str,
               color, dashed: bool = False):
    """A line series of ``table_node``'s columns ``x`` and ``y`` added to ``chart`` (placed under ``chart_item``)."""
    series = outputs.node("vtkMRMLPlotSeriesNode", f"{chart_role}|series|{name}", name)
    series.SetAndObserveTableNodeID(table_node.GetID())
    series.SetXColumnName(x)
    series.SetYColumnName(y)
    series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
    series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
    series.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleDash if dashed
                        else slicer.vtkMRMLPlotSeriesNode.LineStyleSolid)
    series.SetColor(*color)
    chart.AddAndObservePlotSeriesNodeID(series.GetID())
    placeInHierarchy(series, chart_item)
    return series


def _first_color_node(scene, ids: Sequence[str]) -> str | None:
    for node_id in ids:
        if scene.GetNodeByID(node_id) is not None:
            return node_id
    return None


def setDoseDisplay(node, array: np.ndarray, difference: bool = False) -> None:
    """Colour map and window for a dose-rate (or difference) volume; voxels near zero transparent.

    The window is 0 to the 99.9th percentile of the positive voxels (a difference: symmetric, the
    99.5th percentile of the absolute non-zero ones).
    """
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


def placeInHierarchy(node, parent_item: int) -> int:
    """Put ``node`` under the subject-hierarchy item ``parent_item``; returns the node's item."""
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(node.GetScene())
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
