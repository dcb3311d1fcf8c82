"""What the workflows put in the scene: :class:`DoseRateResult` (with the line profile that follows
its markups line) and :class:`AbsorbedDoseResult`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import slicer

from ..errors import DblurDoseError
from .coordinates import lineEndpointsLPS, sampleAlongLine, volumeFromNode
from .nodes import (
    DOSE_RATE_UNITS,
    OUTPUT_ROLE_ATTRIBUTE,
    SPECT_UNIT_LABELS,
    OutputNodes,
    fillTable,
    outputParentItem,
    placeInHierarchy,
    plotChart,
    plotSeries,
)

#: One colour per method where segments do not give one (profiles).
METHOD_COLORS = {"dvk": (0.0, 0.45, 0.85), "cnn": (0.85, 0.2, 0.1)}
#: Node-reference roles from each dose-rate map to the SPECT and CT it was computed from (saved
#: with the scene and kept right when a scene is imported), and the attribute with the SPECT's units.
SPECT_REFERENCE, CT_REFERENCE, SPECT_UNITS_ATTRIBUTE = "dblurdoseSpect", "dblurdoseCT", "DblurDose.SpectUnits"
#: The markups events after which the profile is sampled again.
_LINE_EVENTS = ("PointModifiedEvent", "PointRemovedEvent", "PointPositionDefinedEvent")


@dataclass
class DoseRateResult:
    """What :func:`~DblurDoseLib.mrml.computeDoseRateMaps` created or refilled (nodes in the inputs' scene).

    ``outputs`` holds every output node by role: hand :meth:`nodes` to the next run (``reuse=``) and
    it fills the same nodes again. The profile along ``lineNode`` follows the line while observed
    (:meth:`setLine`); a result rebuilt from saved nodes (:meth:`fromNodes`) can observe it again.
    """

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
    outputs: OutputNodes | None = field(default=None, repr=False)
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

    def nodes(self) -> list:
        """Every output node (this run's and the kept ones of the run before): ``reuse=`` of the next run."""
        return self._outputs().nodes()

    def _outputs(self) -> OutputNodes:
        if self.outputs is None:
            self.outputs = OutputNodes(self.ctNode.GetScene())
        return self.outputs

    @classmethod
    def fromNodes(cls, nodes) -> DoseRateResult | None:
        """The result whose outputs ``nodes`` are (e.g. the module's parameter node's, after loading a
        saved scene); None when they hold no dose-rate map or its SPECT or CT is gone."""
        nodes = [n for n in (nodes or ()) if n is not None and n.GetScene() is not None]
        roles = {n.GetAttribute(OUTPUT_ROLE_ATTRIBUTE): n for n in nodes}
        doses = {r.split("-", 1)[1]: n for r, n in roles.items() if r and r.startswith("dose-") and "|" not in r}
        if not doses:
            return None
        first = next(iter(doses.values()))
        spect, ct = first.GetNodeReference(SPECT_REFERENCE), first.GetNodeReference(CT_REFERENCE)
        if spect is None or ct is None:
            return None
        drvh = {r.split("|", 2)[2]: n for r, n in roles.items() if r and r.startswith("drvh-chart|table|")}
        units = first.GetVoxelValueUnits()
        return cls(spect, ct, doseNodes=doses, differenceNode=roles.get("difference"),
                   statisticsTable=roles.get("statistics"), drvhTables=drvh, drvhChart=roles.get("drvh-chart"),
                   drvhDifferentialChart=roles.get("drvh-differential-chart"), profileTable=roles.get("profile"),
                   profileChart=roles.get("profile-chart"),
                   units=units.GetCodeValue() if units is not None else DOSE_RATE_UNITS[0],
                   spectUnits=first.GetAttribute(SPECT_UNITS_ATTRIBUTE) or "bqml",
                   outputs=OutputNodes(ct.GetScene(), nodes))

    # -- line profile ------------------------------------------------------------------------
    def setLine(self, lineNode, observe: bool = True) -> None:
        """Profile along ``lineNode`` (None: stop); with ``observe`` it follows the line as it moves.

        The profile table and chart are made (or the previous run's refilled) the first time.
        """
        self.stopObservingLine()
        self.lineNode = lineNode
        if lineNode is None:
            return
        if self.profileTable is None or self.profileTable.GetScene() is None:
            self._makeProfileNodes(lineNode)
        else:
            self.profileChart.SetTitle(f"Dose rate along {lineNode.GetName()}")
            self.updateProfile()
        if observe:
            events = [getattr(slicer.vtkMRMLMarkupsNode, e) for e in _LINE_EVENTS]
            events.append(slicer.vtkMRMLTransformableNode.TransformModifiedEvent)
            self._observations = [(lineNode, lineNode.AddObserver(e, self._onLineModified)) for e in events]

    def _makeProfileNodes(self, lineNode) -> None:
        outputs = self._outputs()
        base = self.spectNode.GetName()
        self.profileTable = outputs.node("vtkMRMLTableNode", "profile", f"{base} dose-rate profile")
        self.profileChart = plotChart(outputs, "profile-chart", f"{base} dose-rate profile chart",
                                      f"Dose rate along {lineNode.GetName()}", "Distance along the line (mm)",
                                      f"Dose rate ({self.units})")
        self.updateProfile()
        parent = outputParentItem(self.ctNode)
        placeInHierarchy(self.profileTable, parent)
        chart_item = placeInHierarchy(self.profileChart, parent)
        for method, node in self.doseNodes.items():
            plotSeries(outputs, self.profileChart, "profile-chart", chart_item, node.GetName(), self.profileTable,
                       "Distance", node.GetName(), METHOD_COLORS.get(method, (0.3, 0.3, 0.3)), dashed=(method == "cnn"))
        outputs.finish()

    def stopObservingLine(self) -> None:
        """Stop following the line (the profile keeps its last values)."""
        for node, tag in self._observations:
            node.RemoveObserver(tag)
        self._observations = []

    @property
    def observingLine(self) -> bool:
        """Whether the profile follows ``lineNode``."""
        return bool(self._observations)

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
            fillTable(self.profileTable, [("Distance", np.zeros(0), "mm", "distance from the line's first point")]
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
        fillTable(self.profileTable, [("Distance", distance, "mm", "distance from the line's first point")] + columns)


@dataclass
class AbsorbedDoseResult:
    """What :func:`~DblurDoseLib.mrml.computeAbsorbedDose` created or refilled (nodes in the reference
    CT's scene) and the library's result; :meth:`nodes` is ``reuse=`` of the next run."""

    doseNode: object
    doseTable: object | None = None
    tacTable: object | None = None
    tacFitTable: object | None = None
    tacChart: object | None = None
    dvhTable: object | None = None
    dvhChart: object | None = None
    warnings: list = field(default_factory=list)
    dosimetry: object | None = None  # DblurDoseLib.dosimetry.DosimetryResult
    outputs: OutputNodes | None = field(default=None, repr=False)

    def nodes(self) -> list:
        """Every output node (this run's and the kept ones of the run before)."""
        return self.outputs.nodes() if self.outputs is not None else [self.doseNode]
