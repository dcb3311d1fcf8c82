"""The absorbed-dose workflow in a MRML scene: :func:`computeAbsorbedDose` (the Slicer side of ``dblurdose dosimetry``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np
import slicer

from ..errors import DblurDoseError
from .coordinates import volumeFromNode
from .doserate import Progress, checkInputNodes, libraryOptions, progressSteps, resolveDevice
from .nodes import (
    ABSORBED_DOSE_QUANTITY,
    ABSORBED_DOSE_UNITS,
    DOSE_VOLUME_ATTRIBUTE,
    OutputNodes,
    doseVolume,
    fillTable,
    outputParentItem,
    placeInHierarchy,
    plotChart,
    plotSeries,
    setDoseDisplay,
    spectUnitsFromNode,
)
from .results import AbsorbedDoseResult
from .segments import segmentMasks


def computeAbsorbedDose(timePoints: Sequence[tuple], segmentationNode=None, method: str = "dvk", fit: str = "auto",
                        singleTimePoint: str | None = None, register: str = "rigid",
                        administeredMBq: float | None = None, device: str = "auto",
                        segmentIds: Sequence[str] | None = None, progress: Progress | None = None,
                        reuse: Iterable = (), **options) -> AbsorbedDoseResult:
    """Absorbed dose (Gy) from SPECT/CT time points in a MRML scene: the Slicer side of ``dblurdose dosimetry``.

    Parameters
    ----------
    timePoints : sequence of tuple
        ``(spectNode, ctNode, hours after administration)`` per acquisition, in any order (sorted
        here); the earliest is the reference whose CT grid the results are on and on whose CT the
        segments are drawn.
    segmentationNode : vtkMRMLSegmentationNode, optional
        Segments (VOIs) on the reference CT; per-VOI doses, curves and DVHs.
    method : str
        'dvk' or 'cnn' (the dose-rate engine at each time point).
    fit : str
        'auto' (AICc among mono-, bi-, tri-exponentials), 'mono', 'bi', 'tri' or 'trapezoid'.
    singleTimePoint : str, optional
        'haenscheid' or 'madsen', required with one time point.
    register : str
        'rigid', 'deformable' or 'none' (each later CT onto the reference CT).
    administeredMBq : float, optional
        Administered activity (MBq), recorded and checked against each time point.
    device : str
        'auto', 'cpu', 'gpu' or a torch device name.
    segmentIds : sequence of str, optional
        Segment IDs (or names) to use; all when None.
    progress : callable, optional
        ``progress(fraction, message)``; returning False cancels (nothing is added).
    reuse : iterable of vtkMRMLNode
        A previous run's outputs (``result.nodes()``), refilled in place instead of new nodes added.
    **options
        Keywords of :func:`DblurDoseLib.dose.compute_dose_rate_maps` (``spect_units`` for every SPECT
        that does not record its units, ``hu_calibration``, ``scale_electron_only``, ...) and
        ``dvhBins`` (200).

    Returns
    -------
    AbsorbedDoseResult
        The dose volume (Gy, tagged as a dose volume for SlicerRT), the per-VOI dose table, the
        time-activity table and chart (measured points and the fitted curve per VOI) and the DVH
        table and chart.
    """
    from .. import dosimetry

    dvh_bins = int(options.pop("dvhBins", 200))
    library_options = libraryOptions(options)
    step = progressSteps(progress)
    step(0.0, "reading the time points")
    points = _sorted_time_points(timePoints, segmentationNode)
    reference_ct_node = points[0][1]
    scene = reference_ct_node.GetScene()
    if scene is None:
        raise DblurDoseError("the reference CT volume is not in a scene", settings=("timepoints",))
    warnings: list[str] = []
    activity_range = library_options.pop("activity_range_mbq", dosimetry.ACTIVITY_RANGE_MBQ)
    timepoints = _library_time_points(points, library_options, warnings)
    segments, colors = [], {}
    if segmentationNode is not None:
        step(0.05, "reading the segments")
        segments, colors = _reference_segments(segmentationNode, reference_ct_node, segmentIds, warnings)
    library_options["device"] = resolveDevice(device)
    result = dosimetry.absorbed_dose(
        timepoints, segments, method=method, fit=fit, single_time_point=singleTimePoint, register=register,
        administered_mbq=administeredMBq, dose_options=library_options, activity_range_mbq=activity_range,
        progress=lambda f, m: step(0.1 + 0.8 * float(f), m))
    warnings += result.warnings

    step(0.95, "adding the results to the scene")
    outputs = OutputNodes(scene, reuse)
    parent = outputParentItem(reference_ct_node)
    base = points[0][0].GetName()
    node = _add_dose_volume(outputs, parent, f"{base} absorbed dose {method.upper()}", result, points, method)
    out = AbsorbedDoseResult(doseNode=node, warnings=warnings, dosimetry=result, outputs=outputs)
    if segments:
        _add_dose_table(out, parent, base, result)
        _add_time_activity(out, parent, base, result, colors)
        _add_dvh(out, parent, base, result, segments, colors, dvh_bins)
    outputs.finish()
    for message in warnings:
        logging.warning("DblurDose: %s", message)
    step(1.0, "done")
    return out


def _sorted_time_points(timePoints, segmentationNode) -> list[tuple]:
    """(SPECT, CT, hours) sorted by time, each checked (the segmentation with the first)."""
    points = list(timePoints or [])
    if not points:
        raise DblurDoseError("add at least one time point (a SPECT, its CT and the hours after administration)",
                             settings=("timepoints",))
    try:
        points = sorted(((s, c, float(h)) for s, c, h in points), key=lambda p: p[2])
    except (TypeError, ValueError):
        raise DblurDoseError("each time point needs a SPECT, a CT and its time in hours after administration",
                             settings=("timepoints",)) from None
    for i, (spectNode, ctNode, _) in enumerate(points, start=1):
        checkInputNodes(spectNode, ctNode, segmentationNode if i == 1 else None, where=f"time point {i}: ")
    return points


def _library_time_points(points: list[tuple], library_options: dict, warnings: list[str]) -> list:
    """The library's time points; the units (when the node does not say) and camera calibration are
    taken out of ``library_options`` (the same for every time point)."""
    from .. import dosimetry

    explicit_units = library_options.pop("spect_units", None)
    calibration = library_options.pop("calibration_cps_per_mbq", None)
    duration = library_options.pop("duration_s", None)
    timepoints = []
    for i, (spectNode, ctNode, hours) in enumerate(points, start=1):
        units = explicit_units or spectUnitsFromNode(spectNode)
        if units is None:
            warnings.append(f"the SPECT '{spectNode.GetName()}' does not record its units; assumed Bq/mL")
        timepoints.append(dosimetry.TimePoint(
            spect=volumeFromNode(spectNode, "SPECT"), ct=volumeFromNode(ctNode, "CT"), time_h=hours,
            label=f"time point {i} ({hours:g} h, {spectNode.GetName()})", spect_units=units or "bqml",
            calibration_cps_per_mbq=calibration, duration_s=duration))
    return timepoints


def _reference_segments(segmentationNode, reference_ct_node, segmentIds, warnings: list[str]):
    """The library's segments (non-empty ones on the reference CT grid) and their colours by name."""
    from ..io.volume import Segment

    segments, colors = [], {}
    for s in segmentMasks(segmentationNode, reference_ct_node, segmentIds):
        if s.mask.any():
            segments.append(Segment(s.name, s.mask))
            colors[s.name] = tuple(s.color)
        else:
            warnings.append(f"segment '{s.name}' is empty on the reference CT grid; no dose for it")
    return segments, colors


def _add_dose_volume(outputs: OutputNodes, parent: int, name: str, result, points: list[tuple], method: str):
    """The absorbed-dose map (Gy) on the reference CT's grid, tagged as a dose volume for SlicerRT."""
    dose = np.asarray(result.dose.array, dtype=np.float32)
    node = doseVolume(outputs, "absorbed-dose", name, dose, points[0][1], ABSORBED_DOSE_QUANTITY, ABSORBED_DOSE_UNITS)
    node.SetAttribute(DOSE_VOLUME_ATTRIBUTE, "1")
    node.SetAttribute("DblurDose.Method", method)
    node.SetAttribute("DblurDose.TimePoints", ",".join(f"{h:g}" for *_, h in points))
    setDoseDisplay(node, dose)
    placeInHierarchy(node, parent)
    return node


def _add_dose_table(out: AbsorbedDoseResult, parent: int, base: str, result) -> None:
    from ..dosimetry import dose_rows

    rows = dose_rows(result)
    table = out.outputs.node("vtkMRMLTableNode", "absorbed-dose-table", f"{base} absorbed doses")
    fillTable(table, [
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
    placeInHierarchy(table, parent)
    out.doseTable = table


def _add_time_activity(out: AbsorbedDoseResult, parent: int, base: str, result, colors: dict[str, tuple]) -> None:
    """The VOI mean dose rates at each time point and the fitted curves: two tables and one chart."""
    from ..dosimetry import fitted_curves

    outputs = out.outputs
    times = np.asarray(result.times_h, dtype=np.float64)
    tac = outputs.node("vtkMRMLTableNode", "tac-table", f"{base} time-activity")
    fillTable(tac, [("Time", times, "h", "hours after administration")]
              + [(v.name, v.dose_rates_mgy_h, "mGy/h", "VOI mean dose rate") for v in result.vois])
    dense, fits = fitted_curves(result)
    fitted = outputs.node("vtkMRMLTableNode", "tac-fit-table", f"{base} time-activity fit")
    fillTable(fitted, [("Time", dense, "h", "hours after administration")]
              + [(v.name, fits[v.name], "mGy/h", f"fitted curve ({v.integral.model})") for v in result.vois])
    chart = plotChart(outputs, "tac-chart", f"{base} time-activity", "VOI dose rates and fitted curves",
                      "Time after administration (h)", "Mean dose rate (mGy/h)")
    item = placeInHierarchy(chart, parent)
    for t in (tac, fitted):
        placeInHierarchy(t, parent)
    for v in result.vois:
        color = colors.get(v.name, (0.5, 0.5, 0.5))
        points = plotSeries(outputs, chart, "tac-chart", item, f"{v.name} measured", tac, "Time", v.name, color)
        points.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        points.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleNone)
        plotSeries(outputs, chart, "tac-chart", item, f"{v.name} fit", fitted, "Time", v.name, color)
    out.tacTable, out.tacFitTable, out.tacChart = tac, fitted, chart


def _add_dvh(out: AbsorbedDoseResult, parent: int, base: str, result, segments, colors: dict[str, tuple],
             dvh_bins: int) -> None:
    """The cumulative DVH of every VOI: one table (a column per VOI) and one chart."""
    from ..dosimetry import dvh_rows

    dvh = dvh_rows(result, segments, dvh_bins)
    names = list(dict.fromkeys(r["segment"] for r in dvh))
    first = [r for r in dvh if r["segment"] == names[0]]
    table = out.outputs.node("vtkMRMLTableNode", "dvh-table", f"{base} DVH")
    fillTable(table, [("Dose", [r["dose_gy_low"] for r in first], "Gy", "lower edge of the bin")]
              + [(name, [100.0 * r["cumulative_fraction"] for r in dvh if r["segment"] == name], "%",
                  "percentage of the segment receiving at least the dose") for name in names])
    chart = plotChart(out.outputs, "dvh-chart", f"{base} DVH", "Cumulative dose-volume histogram",
                      "Absorbed dose (Gy)", "Volume receiving at least (%)")
    placeInHierarchy(table, parent)
    item = placeInHierarchy(chart, parent)
    for name in names:
        plotSeries(out.outputs, chart, "dvh-chart", item, f"{name} DVH", table, "Dose", name,
                   colors.get(name, (0.5, 0.5, 0.5)))
    out.dvhTable, out.dvhChart = table, chart
