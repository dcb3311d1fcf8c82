"""The dose-rate workflow in a MRML scene: :func:`computeDoseRateMaps` (the Slicer side of ``dblurdose dose``)."""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from ..errors import DblurDoseError
from .coordinates import volumeFromNode
from .nodes import (
    DOSE_RATE_DIFFERENCE_QUANTITY,
    DOSE_RATE_QUANTITY,
    DOSE_RATE_UNITS,
    DOSE_VOLUME_ATTRIBUTE,
    OutputNodes,
    doseVolume,
    fillTable,
    outputParentItem,
    placeInHierarchy,
    plotChart,
    plotSeries,
    setDoseDisplay,
    showInSliceViews,
    spectUnitsFromNode,
)
from .results import CT_REFERENCE, SPECT_REFERENCE, SPECT_UNITS_ATTRIBUTE, DoseRateResult
from .segments import SegmentMask, segmentMasks

#: Options of computeDoseRateMaps that are not handed to the library.
_OWN_OPTIONS = {"drvhBins": 200, "differenceMap": True, "show": True, "observeLine": True}

#: ``progress(fraction, message)``; returning False cancels.
Progress = Callable[[float, str], object]


def resolveDevice(device: str | None) -> str:
    """The device name for a user choice ('Auto', 'CPU', 'GPU', 'cuda', ...).

    Resolved by :func:`DblurDoseLib.devices.resolve_device`, the one place a device is chosen;
    'auto' stays 'auto' so that each step picks its device.

    Raises
    ------
    DblurDoseError
        An unknown name, or a GPU this machine does not have.
    """
    from ..devices import resolve_device

    name = (device or "auto").strip().lower()
    return name if name == "auto" else str(resolve_device(name))


def progressSteps(progress: Progress | None) -> Callable[[float, str], None]:
    """``step(fraction, message)`` reporting to ``progress``; raises DblurDoseError once it returns False."""

    def step(fraction: float, message: str) -> None:
        if progress is not None and progress(float(fraction), message) is False:
            raise DblurDoseError("cancelled by the user; nothing was added to the scene")

    return step


def libraryOptions(options: dict) -> dict:
    """``options`` when all are keywords of :func:`DblurDoseLib.dose.compute_dose_rate_maps`, else DblurDoseError."""
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
        raise DblurDoseError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}", settings=("method",))
    available = available_methods()
    missing = [m for m in wanted if m not in available]
    kept = tuple(m for m in wanted if m in available)
    if missing:
        if not kept:
            raise DblurDoseError(
                f"{', '.join(m.upper() for m in missing)} is not available in this installation "
                f"(available: {', '.join(m.upper() for m in available)}); choose DVK", settings=("method",)
            )
        warnings.append(f"{', '.join(m.upper() for m in missing)} is not available (no trained weights installed); "
                        f"computed {', '.join(m.upper() for m in kept)} only")
    return kept


def checkInputNodes(spectNode, ctNode, segmentationNode=None, where: str = "") -> None:
    """Refuse missing or wrong node types before any work (``where``: e.g. "time point 2: ")."""
    if spectNode is None or ctNode is None:
        raise DblurDoseError(f"{where}select both a SPECT and a CT volume", settings=("spect", "ct"))
    if spectNode is ctNode:
        raise DblurDoseError(f"{where}the SPECT and the CT are the same volume; select the SPECT and its CT",
                             settings=("spect", "ct"))
    for node, what, setting in ((spectNode, "SPECT", "spect"), (ctNode, "CT", "ct")):
        if not node.IsA("vtkMRMLScalarVolumeNode"):
            raise DblurDoseError(f"{where}the {what} '{node.GetName()}' is a {node.GetClassName()}, not a scalar "
                                 f"volume; select the {what} volume", settings=(setting,))
    if segmentationNode is not None and not segmentationNode.IsA("vtkMRMLSegmentationNode"):
        raise DblurDoseError(
            f"'{segmentationNode.GetName()}' is a {segmentationNode.GetClassName()}, not a segmentation; give a "
            "segmentation node (a labelmap volume can be imported into one with the Segmentations module)",
            settings=("segments",)
        )


def computeDoseRateMaps(spectNode, ctNode, segmentationNode=None, lineNode=None,
                        methods: Sequence[str] = ("dvk", "cnn"), device: str = "auto",
                        segmentIds: Sequence[str] | None = None, progress: Progress | None = None,
                        reuse: Iterable = (), **options) -> DoseRateResult:
    """Dose-rate maps (mGy/h, CT grid) and their statistics for a SPECT/CT in a MRML scene.

    Parameters
    ----------
    spectNode : vtkMRMLScalarVolumeNode
        The SPECT (Bq/mL unless ``spect_units`` or its VoxelValueUnits say otherwise).
    ctNode : vtkMRMLScalarVolumeNode
        The CT in HU; the dose maps share its grid.
    segmentationNode : vtkMRMLSegmentationNode, optional
        Statistics and DRVHs per segment.
    lineNode : vtkMRMLMarkupsLineNode, optional
        Dose-rate profile along it (updated as it moves).
    methods : sequence of str
        'dvk', 'cnn' or both. A method this installation lacks is skipped with a warning in
        ``result.warnings``; if none is left, DblurDoseError.
    device : str
        'auto', 'cpu', 'gpu' (CUDA, else Apple MPS), or a torch device name.
    segmentIds : sequence of str, optional
        Segment IDs (or names) to use; all segments when None.
    progress : callable, optional
        ``progress(fraction, message)``; returning False cancels (DblurDoseError, nothing is added
        to the scene).
    reuse : iterable of vtkMRMLNode
        A previous run's outputs (``result.nodes()``): refilled in place (same node IDs) instead of
        new nodes being added (:class:`~DblurDoseLib.mrml.nodes.OutputNodes`).
    **options
        ``drvhBins`` (200), ``differenceMap`` (True: CNN minus DVK when both ran), ``show`` (True:
        dose map over the CT in the slice views), ``observeLine`` (True), and any keyword of
        :func:`DblurDoseLib.dose.compute_dose_rate_maps` (``spect_units``, ``calibration_cps_per_mbq``,
        ``duration_s``, ``scale_electron_only``, ``hu_calibration``, ...).

    Returns
    -------
    DoseRateResult
        Empty segments are listed in ``warnings`` and in the statistics table's Note column, not fatal.

    Raises
    ------
    DblurDoseError
        A problem with the inputs (the message says what to change), or cancelled.
    """
    own = {k: options.pop(k, v) for k, v in _OWN_OPTIONS.items()}
    library_options = libraryOptions(options)
    step = progressSteps(progress)
    step(0.0, "reading the inputs")
    checkInputNodes(spectNode, ctNode, segmentationNode)
    scene = ctNode.GetScene()
    if scene is None:
        raise DblurDoseError("the CT volume is not in a scene", settings=("ct",))
    warnings: list[str] = []
    kept_methods = _check_methods(methods, warnings)
    arrays, units, voxel_ml = _dose_rate_arrays(spectNode, ctNode, kept_methods, device, library_options, warnings,
                                                step)
    segments, stats_rows, drvh_rows = _segment_statistics(segmentationNode, ctNode, segmentIds, arrays, voxel_ml,
                                                          units, int(own["drvhBins"]), warnings, step)
    step(0.95, "adding the results to the scene")
    result = DoseRateResult(spectNode, ctNode, segments=segments, warnings=warnings,
                            report=dict(library_options.get("report") or {}), units=units,
                            spectUnits=str(library_options["spect_units"]).lower().replace("/", ""),
                            outputs=OutputNodes(scene, reuse))
    parent = outputParentItem(ctNode)
    _add_dose_volumes(result, arrays, parent, bool(own["differenceMap"]))
    if segmentationNode is not None:
        _add_statistics(result, parent, stats_rows)
        _add_drvh(result, parent, drvh_rows)
    if own["show"] and result.doseNodes:
        showInSliceViews(ctNode, result.mainDoseNode())
    if lineNode is not None:
        result.setLine(lineNode, observe=bool(own["observeLine"]))
    result.outputs.finish()
    for message in warnings:
        logging.warning("DblurDose: %s", message)
    step(1.0, "done")
    return result


def _dose_rate_arrays(spectNode, ctNode, methods: tuple[str, ...], device: str, library_options: dict,
                      warnings: list[str], step) -> tuple[dict[str, np.ndarray], str, float]:
    """The library's maps (float32 ``[z, y, x]`` on the CT grid) by method, their units and the CT voxel volume (mL).

    Fills in ``library_options["spect_units"]`` from the node when not given (Bq/mL with a warning
    when the node does not say) and ``library_options["report"]``.
    """
    from ..dose import compute_dose_rate_maps

    if "spect_units" not in library_options:
        detected = spectUnitsFromNode(spectNode)
        if detected is None:
            warnings.append(f"the SPECT '{spectNode.GetName()}' does not record its units; assumed Bq/mL")
        library_options["spect_units"] = detected or "bqml"
    spect = volumeFromNode(spectNode, "SPECT")
    ct = volumeFromNode(ctNode, "CT")
    device_name = resolveDevice(device)
    library_options.setdefault("report", {})
    step(0.05, "computing dose rates")
    maps = compute_dose_rate_maps(spect, ct, methods, device=device_name,
                                  progress=lambda f, m: step(0.05 + 0.75 * float(f), m), **library_options)
    warnings.extend(library_options["report"].get("warnings", []))
    units = next(iter(maps.values())).metadata.get("units", DOSE_RATE_UNITS[0]) if maps else DOSE_RATE_UNITS[0]
    return {m: np.asarray(v.array, dtype=np.float32) for m, v in maps.items()}, units, ct.voxel_volume_ml


def _segment_statistics(segmentationNode, ctNode, segmentIds, arrays: dict[str, np.ndarray], voxel_ml: float,
                        units: str, bins: int, warnings: list[str], step) -> tuple[list[SegmentMask], list, list]:
    """The segments' masks on the CT grid, and the library's statistics and DRVH rows of the filled ones."""
    from ..evaluation.metrics import drvh_table, statistics_table
    from ..io.volume import Segment

    if segmentationNode is None:
        return [], [], []
    step(0.8, "reading the segments")
    segments = segmentMasks(segmentationNode, ctNode, segmentIds,
                            progress=lambda f: step(0.8 + 0.1 * f, "reading the segments"))
    for s in segments:
        if not s.mask.any():
            warnings.append(f"segment '{s.name}' is empty on the CT grid (outside the CT field or "
                            "smaller than a voxel); no statistics for it")
    filled = [Segment(s.name, s.mask) for s in segments if s.mask.any()]
    step(0.9, "statistics and dose-rate-volume histograms")
    if not filled:
        return segments, [], []
    return segments, statistics_table(arrays, filled, voxel_ml, units), drvh_table(arrays, filled, bins, units)


def _add_dose_volumes(result: DoseRateResult, arrays: dict[str, np.ndarray], parent: int, difference: bool) -> None:
    """One dose-rate volume per method (tagged for SlicerRT), and CNN minus DVK when asked and both ran."""
    spectNode, ctNode, outputs = result.spectNode, result.ctNode, result.outputs
    base = spectNode.GetName()
    units = DOSE_RATE_UNITS if result.units == DOSE_RATE_UNITS[0] else (result.units, "UCUM", result.units)
    for method, array in arrays.items():
        node = doseVolume(outputs, f"dose-{method}", f"{base} dose rate {method.upper()}", array, ctNode,
                          DOSE_RATE_QUANTITY, units)
        node.SetAttribute(DOSE_VOLUME_ATTRIBUTE, "1")
        node.SetAttribute("DblurDose.Method", method)
        node.SetAttribute(SPECT_UNITS_ATTRIBUTE, result.spectUnits)
        node.SetNodeReferenceID(SPECT_REFERENCE, spectNode.GetID())
        node.SetNodeReferenceID(CT_REFERENCE, ctNode.GetID())
        setDoseDisplay(node, array)
        placeInHierarchy(node, parent)
        result.doseNodes[method] = node
    if difference and {"dvk", "cnn"} <= set(arrays):
        array = arrays["cnn"] - arrays["dvk"]
        node = doseVolume(outputs, "difference", f"{base} dose rate CNN-DVK", array, ctNode,
                          DOSE_RATE_DIFFERENCE_QUANTITY, units)
        node.SetAttribute("DblurDose.Method", "cnn-dvk")
        setDoseDisplay(node, array, difference=True)
        placeInHierarchy(node, parent)
        result.differenceNode = node


_STAT_COLUMNS = (("volume_ml", "Volume", "mL", "segment volume on the CT grid"),
                 ("mean", "Mean", None, "mean dose rate"),
                 ("DR10", "DR10", None, "minimum dose rate of the hottest 10% of the segment"),
                 ("DR30", "DR30", None, "minimum dose rate of the hottest 30% of the segment"),
                 ("DR70", "DR70", None, "minimum dose rate of the hottest 70% of the segment"),
                 ("DR90", "DR90", None, "minimum dose rate of the hottest 90% of the segment"))


def _add_statistics(result: DoseRateResult, parent: int, rows: list[dict]) -> None:
    """The statistics table: one row per segment and method (empty segments noted, not dropped)."""
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
    table = result.outputs.node("vtkMRMLTableNode", "statistics", f"{result.spectNode.GetName()} dose-rate statistics")
    columns = [("Segment", names, "", "segment name"), ("Method", method_col, "", "dose-rate method")]
    columns += [(title, values[key], unit or result.units, description) for key, title, unit, description in _STAT_COLUMNS]
    columns.append(("Note", notes, "", "why a row has no statistics"))
    fillTable(table, columns)
    placeInHierarchy(table, parent)
    result.statisticsTable = table


def _drvh_columns(seg_rows: list[dict], methods: list[str], units: str) -> list[tuple]:
    """A segment's DRVH table columns: bin edges and centre, then per method cumulative and differential (%)."""
    from ..evaluation.metrics import unit_suffix

    first = [r for r in seg_rows if r["method"] == methods[0]]
    suffix = unit_suffix(units)
    low = np.array([r[f"dose_rate_low_{suffix}"] for r in first])
    high = np.array([r[f"dose_rate_high_{suffix}"] for r in first])
    columns = [("Dose rate", low, units, "lower edge of the bin"),
               ("Dose rate upper", high, units, "upper edge of the bin"),
               ("Bin centre", (low + high) / 2, units, "centre of the bin")]
    for method in methods:
        m_rows = [r for r in seg_rows if r["method"] == method]
        columns.append((f"{method.upper()} cumulative", [100.0 * r["cumulative_fraction"] for r in m_rows], "%",
                        "percentage of the segment receiving at least the bin's lower edge"))
        columns.append((f"{method.upper()} differential", [100.0 * r["differential_fraction"] for r in m_rows], "%",
                        "percentage of the segment in the bin"))
    return columns


def _add_drvh(result: DoseRateResult, parent: int, rows: list[dict]) -> None:
    """One DRVH table per segment and the cumulative and differential charts (a series per segment and method)."""
    if not rows:
        return
    outputs, base = result.outputs, result.spectNode.GetName()
    colors = {s.name: s.color for s in result.segments}
    charts = {
        "drvh-chart": plotChart(outputs, "drvh-chart", f"{base} DRVH cumulative",
                                "Cumulative dose-rate-volume histogram", f"Dose rate ({result.units})",
                                "Volume receiving at least (%)"),
        "drvh-differential-chart": plotChart(outputs, "drvh-differential-chart", f"{base} DRVH differential",
                                             "Differential dose-rate-volume histogram", f"Dose rate ({result.units})",
                                             "Volume per bin (%)"),
    }
    items = {role: placeInHierarchy(chart, parent) for role, chart in charts.items()}
    for name in dict.fromkeys(r["segment"] for r in rows):
        seg_rows = [r for r in rows if r["segment"] == name]
        methods = list(dict.fromkeys(r["method"] for r in seg_rows))
        table = outputs.node("vtkMRMLTableNode", f"drvh-chart|table|{name}", f"{base} DRVH {name}")
        fillTable(table, _drvh_columns(seg_rows, methods, result.units))
        placeInHierarchy(table, parent)
        result.drvhTables[name] = table
        for method in methods:
            for role, x, kind in (("drvh-chart", "Dose rate", "cumulative"),
                                  ("drvh-differential-chart", "Bin centre", "differential")):
                plotSeries(outputs, charts[role], role, items[role], f"{name} {method.upper()} {kind}", table, x,
                           f"{method.upper()} {kind}", colors.get(name, (0.5, 0.5, 0.5)), dashed=(method == "cnn"))
    result.drvhChart = charts["drvh-chart"]
    result.drvhDifferentialChart = charts["drvh-differential-chart"]
