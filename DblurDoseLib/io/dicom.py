"""DICOM input: find the series under a path, choose the SPECT or the CT, read it into a Volume.

A path is a file (that object alone), a series folder or a study folder (searched recursively).
The SPECT is chosen by modality (NM or PT), the CT by modality CT; localizers and NM objects that
are not reconstructions (projections, planar and whole-body images) are left out.
Tags are read with pydicom; pixels with pydicom (SimpleITK when pydicom has no decoder for a
compressed transfer syntax).

Quantitation, first found: Real World Value Mapping Sequence with an activity or counts unit,
Rescale Slope/Intercept, per-frame Pixel Value Transformation, Dose Grid Scaling (RT Dose), a Real
World Value Mapping in another unit (PMOD writes its calibration only there, "no units"); the
meaning of rescaled values comes from Units (0054,1001): BQML is Bq/mL, CNTS (or no Units) counts.
Geometry: Image Position/Orientation (Patient) per file, the Detector Information Sequence of NM
objects (with Spacing Between Slices, negative included), the per-frame functional groups of
enhanced objects, or the Grid Frame Offset Vector of RT Dose. Irregular slice gaps, missing slices and mixed orientations are refused; gaps
that differ by less than :data:`GAP_TOLERANCE` are resampled onto a regular grid.

The volume's metadata records what was read: ``modality``, ``series_uid``,
``series_description``, ``spect_units`` (bqml, kbqml, mbqml or counts; absent when the tags give
no activity unit), ``units_from``, ``scaling_from``, ``acquisition_duration_s`` and
``duration_from`` (when derivable) and ``slice_grid``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DblurDoseError
from ..units import spect_unit_key
from .volume import READABLE_SUFFIXES, Volume

if TYPE_CHECKING:
    import datetime

    import pydicom
    from numpy.typing import DTypeLike

#: modalities each input is chosen by; other names (``what``) take any image series
MODALITIES = {"SPECT": ("NM", "PT"), "CT": ("CT",)}
#: command-line option choosing each input's series
SERIES_SETTINGS = {"SPECT": "spect_series", "CT": "ct_series"}
#: slice gaps that differ by less than this share of their mean are resampled onto a regular grid
GAP_TOLERANCE = 0.01


@dataclass
class Series:
    """One DICOM series under a path: its image files and what identifies it.

    ``excluded`` says why it is never a volume to read ("localizer", "NM STATIC, not a reconstruction"),
    empty otherwise; a series' localizers form a series of their own.
    """

    uid: str
    modality: str
    description: str
    files: list[Path]
    excluded: str
    rows: int
    columns: int
    frames: int

    def label(self) -> str:
        """One line naming the series: UID, modality, description and size.

        Returns
        -------
        str
            E.g. "1.2.3 (NM, 'SPECT recon', 128x128x120)", with the reason when excluded.
        """
        return (f"{self.uid} ({self.modality}, '{self.description}', {self.columns}x{self.rows}x{self.frames}"
                f"{', ' + self.excluded if self.excluded else ''})")


@dataclass
class _Frame:
    """One 2D frame: stored pixels, position of its first voxel (mm, LPS), row/column directions."""

    pixels: np.ndarray
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float


def is_dicom_path(path: Path) -> bool:
    """True for a folder, a ``.dcm`` file, or a file with the DICOM preamble ('DICM' at byte 128).

    Parameters
    ----------
    path : Path
        A file or folder (a file with a suffix of another readable format is not DICOM).

    Returns
    -------
    bool
    """
    if path.is_dir() or path.suffix.lower() == ".dcm":
        return True
    if path.name.lower().endswith(READABLE_SUFFIXES):
        return False
    try:
        with path.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _header(file: Path):
    """The file's tags (no pixels), or None when it is not a DICOM image."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(file, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None
    return ds if "Rows" in ds and "SeriesInstanceUID" in ds else None


#: NM Image Type (value 3) of reconstructed volumes
NM_RECONSTRUCTIONS = ("RECON TOMO", "RECON GATED TOMO")


def _excluded(ds) -> str:
    """Why this object is not a volume to read (a localizer, NM projections or planar images), else ''."""
    image_type = ds.get("ImageType") or []
    image_type = [str(v).upper() for v in ([image_type] if isinstance(image_type, str) else image_type)]
    if "LOCALIZER" in image_type:
        return "localizer"
    if str(ds.get("Modality", "")) == "NM" and len(image_type) > 2 and image_type[2] not in NM_RECONSTRUCTIONS:
        return f"NM {image_type[2]}, not a reconstruction"
    return ""


def find_series(path: Path) -> list[Series]:
    """The image series under ``path``: that file alone, or every file of a folder, recursively.

    Parameters
    ----------
    path : Path
        A DICOM file, series folder or study folder.

    Returns
    -------
    list of Series
        One per Series Instance UID (localizers and other excluded objects apart); files that are
        not DICOM images are skipped.
    """
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    groups: dict[tuple[str, str], Series] = {}
    for file in files:
        ds = _header(file)
        if ds is None:
            continue
        key = (str(ds.SeriesInstanceUID), _excluded(ds))
        frames = int(ds.get("NumberOfFrames") or 1)
        if key not in groups:
            groups[key] = Series(key[0], str(ds.get("Modality", "")), str(ds.get("SeriesDescription", "")), [],
                                 key[1], int(ds.Rows), int(ds.Columns), 0)
        groups[key].files.append(file)
        groups[key].frames += frames
    return list(groups.values())


def choose_series(series: list[Series], what: str, where: Path, uid: str | None = None) -> Series:
    """The ``what`` ("SPECT", "CT", ...) series: by ``uid``, else the only one of its modalities.

    Parameters
    ----------
    series : list of Series
        From :func:`find_series`.
    what : str
        The input: "SPECT" (NM or PT), "CT", or another name (any image series).
    where : Path
        The path searched (for messages).
    uid : str, optional
        The Series Instance UID to take.

    Returns
    -------
    Series

    Raises
    ------
    DblurDoseError
        When no series, no series of that UID or modality, or several candidates are found.
    """
    settings = (SERIES_SETTINGS[what],) if what in SERIES_SETTINGS else ()
    listing = "; ".join(s.label() for s in series)
    if not series:
        raise DblurDoseError(f"no DICOM series found in {where} for the {what}; give the folder or file of the "
                             f"{what} series")
    if uid:
        chosen = [s for s in series if s.uid == uid and not s.excluded]
        if not chosen:
            raise DblurDoseError(f"no image series {uid} in {where} for the {what}; it holds: {listing}. "
                                 "Give one of those series UIDs", settings=settings)
        return chosen[0]
    modalities = MODALITIES.get(what)
    candidates = [s for s in series if not s.excluded and (modalities is None or s.modality in modalities)]
    if not candidates:
        wanted = "/".join(modalities) if modalities else "image"
        raise DblurDoseError(f"no {wanted} series for the {what} in {where}; it holds: {listing}. Give the folder "
                             f"or file of the {what} series, or choose a series by its UID", settings=settings)
    if len(candidates) > 1:
        raise DblurDoseError(f"{where} holds {len(candidates)} series for the {what}: "
                             f"{'; '.join(s.label() for s in candidates)}. Choose one by its series UID", settings=settings)
    return candidates[0]


# --- quantitation ---------------------------------------------------------------------------------
def _activity_mapping(holders) -> tuple[float, float, str, str] | None:
    """(slope, intercept, units, source) from the first Real World Value Mapping in an activity unit."""
    for holder in holders:
        for item in holder.get("RealWorldValueMappingSequence") or []:
            codes = item.get("MeasurementUnitsCodeSequence") or []
            code = str(codes[0].get("CodeValue", "")) if codes else ""
            units = spect_unit_key(code)  # UCUM Bq/mL, kBq/mL, MBq/mL, {counts}...
            if units is not None and "RealWorldValueSlope" in item:
                return (float(item.RealWorldValueSlope), float(item.get("RealWorldValueIntercept") or 0.0),
                        units, f"RealWorldValueMappingSequence (UCUM {code})")
    return None


def _frame_scaling(ds, groups) -> tuple[float, float, str | None, str]:
    """(slope, intercept, units from the mapping or None, source) of one frame; ``groups``: its functional groups."""
    mapping = _activity_mapping([ds, *groups])
    if mapping is not None:
        return mapping
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return float(ds.get("RescaleSlope") or 1.0), float(ds.get("RescaleIntercept") or 0.0), None, \
            "RescaleSlope/RescaleIntercept"
    for group in groups:
        for item in group.get("PixelValueTransformationSequence") or []:
            return float(item.get("RescaleSlope") or 1.0), float(item.get("RescaleIntercept") or 0.0), None, \
                "per-frame PixelValueTransformationSequence"
    if "DoseGridScaling" in ds:  # RT Dose
        return float(ds.DoseGridScaling), 0.0, None, "DoseGridScaling"
    for holder in (ds, *groups):  # a mapping in another unit (PMOD: "no units") is the only calibration given
        for item in holder.get("RealWorldValueMappingSequence") or []:
            if "RealWorldValueSlope" in item:
                codes = item.get("MeasurementUnitsCodeSequence") or []
                code = str(codes[0].get("CodeValue", "")) if codes else ""
                return float(item.RealWorldValueSlope), float(item.get("RealWorldValueIntercept") or 0.0), None, \
                    f"RealWorldValueMappingSequence (UCUM {code}, not an activity unit)"
    return 1.0, 0.0, None, "stored values (no scaling tags)"


def _units_tag(ds) -> tuple[str | None, str]:
    """SPECT units from Units (0054,1001): BQML Bq/mL, CNTS or none counts, others None."""
    units = str(ds.get("Units") or "").strip().upper()
    if not units:
        return "counts", "no Units tag (read as counts)"
    return spect_unit_key(units), f"Units={units}"  # BQML, CNTS


def acquisition_duration(ds: pydicom.Dataset) -> tuple[float | None, str]:
    """Acquisition duration (s) from Actual Frame Duration (ms) x views per rotation, summed over rotations.

    Parameters
    ----------
    ds : pydicom.Dataset
        An NM object (its Rotation Information Sequence, or the tags at top level).

    Returns
    -------
    duration_s : float or None
        Seconds; None where the tags are missing or give no positive duration.
    source : str
        The tags and values used; empty when None.
    """
    rotations = list(ds.get("RotationInformationSequence") or [])
    if not rotations and "ActualFrameDuration" in ds and "NumberOfFramesInRotation" in ds:
        rotations = [ds]
    total, parts = 0.0, []
    for item in rotations:
        if "ActualFrameDuration" not in item or "NumberOfFramesInRotation" not in item:
            return None, ""
        ms, views = float(item.ActualFrameDuration), int(item.NumberOfFramesInRotation)
        total += ms / 1000.0 * views
        parts.append(f"{ms:g} ms x {views} views")
    if total <= 0:
        return None, ""
    return total, "ActualFrameDuration x NumberOfFramesInRotation (" + " + ".join(parts) + ")"


# --- geometry -------------------------------------------------------------------------------------
def _floats(value, n: int, what: str, label: str) -> np.ndarray:
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.zeros(0)
    if out.size != n:
        raise DblurDoseError(f"series {label} has no valid {what}; export it again with its geometry tags")
    return out


def _stored_pixels(ds, file: Path, frames: int, label: str) -> tuple[np.ndarray, bool]:
    """Stored values [frame, row, column] and whether Rescale Slope/Intercept is already applied."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        return np.asarray(ds.pixel_array).reshape(frames, int(ds.Rows), int(ds.Columns)), False
    except Exception as exc:  # damaged, or no pydicom decoder for a compressed syntax: SimpleITK (GDCM) then
        if not (syntax is not None and syntax.is_compressed):
            raise DblurDoseError(f"could not read the pixels of {file} in series {label} ({exc}); the file looks "
                                 "damaged or truncated: export the series again") from None
    import SimpleITK as sitk

    try:
        pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(file)))  # GDCM applies the rescale itself
    except RuntimeError:
        raise DblurDoseError(f"cannot decode the pixels of {file} in series {label} (transfer syntax {syntax}); "
                             "export it uncompressed") from None
    return pixels.reshape(frames, int(ds.Rows), int(ds.Columns)), True


def _frames_of(ds, file: Path, label: str) -> tuple[list[_Frame], str | None, str, str]:
    """The frames of one object, with its units (or None), units source and scaling source."""
    frames = int(ds.get("NumberOfFrames") or 1)
    pixels, rescaled = _stored_pixels(ds, file, frames, label)
    shared = list(ds.get("SharedFunctionalGroupsSequence") or [])
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    out: list[_Frame] = []
    scaling_sources: set[str] = set()
    mapped_units = mapped_from = None
    for k in range(frames):
        groups = ([per_frame[k]] if per_frame else []) + shared
        slope, intercept, units, source = _frame_scaling(ds, groups)
        if rescaled and source.startswith("Rescale"):
            slope, intercept = 1.0, 0.0
        elif rescaled and not source.startswith("stored"):
            raise DblurDoseError(f"cannot decode the pixels of series {label} with pydicom, and its {source} needs "
                                 "the stored values; export it uncompressed")
        if units and not mapped_units:
            mapped_units, mapped_from = units, source
        scaling_sources.add(source)
        position, orientation, spacing = _frame_geometry(ds, groups, k, label)
        out.append(_Frame(pixels[k], position, orientation, spacing, slope, intercept))
    if mapped_units:
        return out, mapped_units, mapped_from, ", ".join(sorted(scaling_sources))
    units, units_from = _units_tag(ds)
    return out, units, units_from, ", ".join(sorted(scaling_sources))


def _detector_position(ds):
    """The first Detector Information Sequence item holding Image Position (Patient), or None."""
    for item in ds.get("DetectorInformationSequence") or []:
        if "ImagePositionPatient" in item:
            return item
    return None


def _frame_geometry(ds, groups, k: int, label: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Position (mm), orientation (row then column direction) and pixel spacing (row, column; mm) of frame k."""

    def first(name: str, item: str):
        for group in groups:
            for entry in group.get(name) or []:
                if item in entry:
                    return entry.get(item)
        return None

    if groups and first("PlanePositionSequence", "ImagePositionPatient") is not None:  # enhanced object
        position = first("PlanePositionSequence", "ImagePositionPatient")
        orientation = first("PlaneOrientationSequence", "ImageOrientationPatient")
        spacing = first("PixelMeasuresSequence", "PixelSpacing")
        step = None
    elif _detector_position(ds) is not None or ("ImagePositionPatient" in ds and "SpacingBetweenSlices" in ds
                                                 and int(ds.get("NumberOfFrames") or 1) > 1):
        detector = _detector_position(ds)
        detector = ds if detector is None else detector  # NM: first frame's geometry, then Spacing Between Slices
        position, orientation = detector.ImagePositionPatient, detector.get("ImageOrientationPatient") or \
            ds.get("ImageOrientationPatient")
        spacing = ds.get("PixelSpacing")
        step = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 0.0)
        if int(ds.get("NumberOfFrames") or 1) > 1 and step == 0.0:
            raise DblurDoseError(f"series {label} gives no Spacing Between Slices; export it again with it")
    else:
        position, orientation, spacing = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient"), \
            ds.get("PixelSpacing")
        step = None
        offsets = ds.get("GridFrameOffsetVector")  # RT Dose: frame distances along the normal (mm)
        if offsets and len(offsets) == int(ds.get("NumberOfFrames") or 1):
            orientation = _floats(orientation, 6, "Image Orientation (Patient)", label)
            shift = (float(offsets[k]) - float(offsets[0])) * np.cross(orientation[:3], orientation[3:])
            position = _floats(position, 3, "Image Position (Patient)", label) + shift
        elif int(ds.get("NumberOfFrames") or 1) > 1:
            raise DblurDoseError(f"series {label} is a multi-frame object without per-frame geometry tags; "
                                 "export it as an enhanced or single-frame series")
    position = _floats(position, 3, "Image Position (Patient)", label)
    orientation = _floats(orientation, 6, "Image Orientation (Patient)", label)
    row_spacing, column_spacing = _floats(spacing, 2, "Pixel Spacing", label)
    if step is not None:
        position = position + k * step * np.cross(orientation[:3], orientation[3:])
    return position, orientation, (float(row_spacing), float(column_spacing))


def _stack(frames: list[_Frame], label: str) -> tuple[np.ndarray, tuple, np.ndarray, np.ndarray, str]:
    """Frames sorted along their normal into [z, y, x] stored values, spacing, origin, direction, grid note."""
    orientations = np.array([f.orientation for f in frames])
    if np.abs(orientations - orientations[0]).max() > 1e-4:
        raise DblurDoseError(f"series {label} mixes slice orientations; give a series of one orientation "
                             "(choose the series by its UID, or give its own folder)")
    if len({f.pixels.shape for f in frames}) > 1 or len({f.pixel_spacing for f in frames}) > 1:
        raise DblurDoseError(f"series {label} mixes image sizes or pixel spacings; give a series of one grid")
    row, column = frames[0].orientation[:3], frames[0].orientation[3:]
    normal = np.cross(row, column)
    positions = np.array([f.position for f in frames])
    distance = positions @ normal
    order = np.argsort(distance, kind="stable")
    frames, positions, distance = [frames[i] for i in order], positions[order], distance[order]
    values = _rescaled(frames)
    dy, dx = frames[0].pixel_spacing
    direction = np.column_stack([row, column, normal])
    note = "one slice" if len(frames) == 1 else "regular"
    dz = 1.0
    if len(frames) > 1:
        gaps = np.diff(distance)
        if gaps.min() < 1e-3:
            raise DblurDoseError(f"series {label} holds two slices at the same position; give a series without "
                                 "duplicates (or choose one of its series)")
        lateral = (positions - positions[0]) - np.outer(distance - distance[0], normal)
        if np.linalg.norm(lateral, axis=1).max() > 0.1 * min(dx, dy):
            raise DblurDoseError(f"series {label} has slices that are not stacked along their normal (gantry tilt?); "
                                 "resample it to an orthogonal grid before use")
        dz = float((distance[-1] - distance[0]) / (len(frames) - 1))
        spread = float((gaps.max() - gaps.min()) / gaps.mean())
        if spread >= GAP_TOLERANCE:
            raise DblurDoseError(
                f"series {label} has irregular slice gaps ({gaps.min():.3g} to {gaps.max():.3g} mm: missing or "
                f"unevenly spaced slices); export the complete series with regular spacing")
        if spread > 1e-4:
            values = _regular_grid(values.astype(np.float32), distance, dz)
            note = f"resampled onto a regular {dz:.4g} mm grid (slice gaps differed by {spread:.2%})"
    else:
        dz = float(frames[0].pixel_spacing[0])
    return values, (float(dx), float(dy), dz), positions[0], direction, note


def _rescaled(frames: list[_Frame]) -> np.ndarray:
    """The frames' values (slope x stored + intercept) as [z, y, x]: 16-bit integers when exact, else float32."""
    exact = frames[0].pixels.dtype.kind in "iu" and all(f.slope == 1 and f.intercept == round(f.intercept)
                                                          for f in frames)
    dtype = np.float32
    if exact:
        lo = min(int(f.pixels.min()) + int(f.intercept) for f in frames)
        hi = max(int(f.pixels.max()) + int(f.intercept) for f in frames)
        dtype = np.int16 if -32768 <= lo and hi <= 32767 else np.int32
    values = np.empty((len(frames), *frames[0].pixels.shape), dtype=dtype)
    for k, f in enumerate(frames):  # frame by frame: no stack of 64-bit copies
        values[k] = f.pixels.astype(np.int32) + int(f.intercept) if exact else \
            f.pixels.astype(np.float64) * f.slope + f.intercept
    return values


def _regular_grid(values: np.ndarray, distance: np.ndarray, dz: float) -> np.ndarray:
    """Slices at ``distance`` (mm, ascending) linearly interpolated onto a grid of step ``dz`` from the first."""
    target = distance[0] + dz * np.arange(len(distance))
    below = np.clip(np.searchsorted(distance, target, side="right") - 1, 0, len(distance) - 2)
    weight = ((target - distance[below]) / (distance[below + 1] - distance[below])).astype(np.float32)[:, None, None]
    return (1 - weight) * values[below] + weight * values[below + 1]


def read_series(series: Series, dtype: DTypeLike | None = np.float32) -> Volume:
    """The series as a Volume [z, y, x] in LPS mm, its values rescaled, what was read in its metadata.

    Parameters
    ----------
    series : Series
        From :func:`choose_series`.
    dtype : numpy dtype, optional
        Type of the values returned (float32 by default; None keeps the type of the rescaled values).

    Returns
    -------
    Volume
        Rescaled values (HU for CT; Bq/mL, kBq/mL, MBq/mL or counts for SPECT, as recorded in the
        metadata's ``spect_units``), spacing and origin in mm; metadata as described in the module.

    Raises
    ------
    DblurDoseError
        For several multi-frame objects in one series, or a geometry that cannot be stacked.
    """
    import pydicom

    label = f"{series.uid} ('{series.description}')"
    frames: list[_Frame] = []
    if len(series.files) > 1 and series.frames > len(series.files):
        raise DblurDoseError(f"series {label} holds several multi-frame objects; name the one file to read")
    units = units_from = scaling_from = None
    first = None
    for file in series.files:
        ds = pydicom.dcmread(file)
        first = first or ds
        more, units, units_from, scaling_from = _frames_of(ds, file, label)
        frames.extend(more)
    values, spacing, origin, direction, note = _stack(frames, label)
    if dtype is not None:
        values = values.astype(dtype, copy=False)
    metadata = {"modality": series.modality, "series_uid": series.uid, "series_description": series.description,
                "scaling_from": scaling_from, "slice_grid": note}
    if series.modality in MODALITIES["SPECT"]:
        metadata["units_from"] = units_from
        if units:
            metadata["spect_units"] = units
    duration, duration_from = acquisition_duration(first)
    if duration:
        metadata.update(acquisition_duration_s=f"{duration:g}", duration_from=duration_from)
    when, when_from = acquisition_datetime(first)
    if when is not None:
        metadata.update(acquisition_datetime=when.isoformat(), acquisition_datetime_from=when_from)
    return Volume(values, spacing, tuple(origin), direction, metadata)


def acquisition_datetime(ds: pydicom.Dataset) -> tuple[datetime.datetime | None, str]:
    """When the object was acquired (naive local ``datetime``) and the tags it came from.

    Acquisition DateTime (0008,002A), else Acquisition Date and Time (0008,0022/0032), else Series
    Date and Time (0008,0021/0031): the clock of the scanner, as the administration time is written.

    Parameters
    ----------
    ds : pydicom.Dataset
        Any DICOM object.

    Returns
    -------
    when : datetime.datetime or None
        Naive local time; None if unknown.
    source : str
        The tags it came from; empty if unknown.
    """
    import datetime

    def parse(date: str, time: str = "") -> datetime.datetime | None:
        text = (date + time).split("+")[0].split("-")[0] if len(date) == 8 else ""
        digits, _, fraction = text.partition(".")
        formats = {8: "%Y%m%d", 10: "%Y%m%d%H", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
        if len(digits) not in formats:
            return None
        try:
            value = datetime.datetime.strptime(digits, formats[len(digits)])
        except ValueError:
            return None
        return value + datetime.timedelta(seconds=float("0." + fraction)) if fraction.isdigit() else value

    value = str(getattr(ds, "AcquisitionDateTime", "") or "").strip()
    if value and (when := parse(value[:8], value[8:])) is not None and len(value) > 8:
        return when, "AcquisitionDateTime"
    for date_tag, time_tag in (("AcquisitionDate", "AcquisitionTime"), ("SeriesDate", "SeriesTime")):
        date, time = (str(getattr(ds, tag, "") or "").strip() for tag in (date_tag, time_tag))
        if date and time and (when := parse(date, time)) is not None:
            return when, f"{date_tag}/{time_tag}"
    return None, ""


def read_dicom(path: str | Path, what: str = "image", dtype: DTypeLike | None = np.float32,
               series_uid: str | None = None) -> Volume:
    """The ``what`` series under ``path`` (a file, a series folder or a study folder) as a Volume.

    Parameters
    ----------
    path : str or Path
        A DICOM file, series folder or study folder.
    what : str
        "SPECT", "CT", or another name (picks the series by modality; names it in messages).
    dtype : numpy dtype, optional
        Type of the values returned (float32 by default).
    series_uid : str, optional
        The Series Instance UID to take.

    Returns
    -------
    Volume
        See :func:`read_series`.

    Raises
    ------
    DblurDoseError
        When the series cannot be chosen or read.
    """
    path = Path(path)
    series = choose_series(find_series(path), what, path, series_uid)
    try:
        return read_series(series, dtype)
    except (ValueError, TypeError, AttributeError, KeyError, IndexError, OSError) as exc:
        raise DblurDoseError(f"could not read the {what} DICOM series {series.label()}: "
                             f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}; "
                             "export it again (uncompressed, complete)") from None


def describe(volume: Volume, what: str) -> str:
    """One log line: which series was read, its units and where they came from, its slice grid.

    Parameters
    ----------
    volume : Volume
        As read by :func:`read_dicom` (its metadata).
    what : str
        The input's name ("SPECT", "CT").

    Returns
    -------
    str
        The line; empty for a volume not read from DICOM.
    """
    m = volume.metadata
    if "series_uid" not in m:
        return ""
    units = (f"units {m['spect_units']} from {m['units_from']}, " if "spect_units" in m else
             f"{m['units_from']} (no activity unit), " if "units_from" in m else "")
    duration = f"; duration {m['acquisition_duration_s']} s from {m['duration_from']}" \
        if "acquisition_duration_s" in m else ""
    return (f"{what}: DICOM {m['modality']} series {m['series_uid']} ('{m['series_description']}'), "
            f"{units}scaling {m['scaling_from']}{duration}; slices {m['slice_grid']}")
