"""DICOM output (``--dicom-out``): absorbed dose as RT Dose, dose rate as a Parametric Map, the
segments used as an RT Structure Set.

RT Dose (Gy) holds 32-bit unsigned integers times Dose Grid Scaling; RT Dose units cannot
express a dose rate, so dose-rate maps (mGy/h) are written as a Parametric Map (float pixels,
Real World Value Mapping in UCUM ``mGy/h``) with highdicom.

Both lie on the CT's grid: Image Position (Patient) per frame, Image Orientation (Patient) and
Pixel Spacing come from the :class:`~DblurDoseLib.io.volume.Volume` (LPS mm, direction columns are
the x, y, z axes, array [z, y, x]). When the CT was read from DICOM the objects join its study:
Study Instance UID, Frame of Reference UID and the patient module are the CT's and the CT series
is referenced; otherwise new UIDs are made and :attr:`StudyLink.linked` is False.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import __version__
from ..errors import DblurDoseError
from .volume import Volume

if TYPE_CHECKING:
    from .volume import Segment

#: RT Dose SOP Class UID
RT_DOSE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.2"
#: RT Structure Set SOP Class UID
RT_STRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
#: file stem of the RT Structure Set of the segments
STRUCTURE_SET_STEM = "segments"
#: CT Image Storage SOP Class UID (the stand-in source of an unlinked object)
CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"
#: attributes copied from the CT: patient, study and frame of reference
STUDY_ATTRIBUTES = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName", "FrameOfReferenceUID",
                    "PositionReferenceIndicator")
#: largest stored RT Dose value (32-bit unsigned)
UINT32_MAX = 2**32 - 1
#: dose-rate units of the maps (their ``units`` metadata) -> UCUM code
UCUM_RATE_UNITS = {"mGy/h": "mGy/h", "nGy/(MBq s)": "nGy/(MBq.s)"}
#: Dose Summation Type of the RT Dose. PS3.3 C.8.8.3 makes Referenced RT Plan Sequence (300C,0002) type 1C,
#: required for PLAN, MULTI_PLAN, FRACTION, BEAM, BRACHY, the *_SESSION values and CONTROL_POINT, and
#: Referenced Treatment Record Sequence (3008,0030) required for RECORD; a radiopharmaceutical therapy has
#: neither an RT Plan nor a treatment record, so PLAN_OVERVIEW, the one value that needs no such reference,
#: is what is written (dciodvfy of dicom3tools 2022 reports PLAN without a plan and RECORD without a record
#: as errors; it predates PLAN_OVERVIEW and warns of it as an unknown term)
DOSE_SUMMATION_TYPE = "PLAN_OVERVIEW"
#: sub-folder of the output folder holding the DICOM objects
FOLDER = "dicom"
#: warned when the CT is not DICOM
UNLINKED_WARNING = ("the DICOM output is not linked to a study (the CT is not DICOM): new Study and Frame of "
                    "Reference UIDs were made")
MANUFACTURER = "DblurDose"


@dataclass
class StudyLink:
    """The CT headers the DICOM objects join, or one stand-in header carrying new UIDs.

    Attributes
    ----------
    headers : list of pydicom.Dataset
        The CT series' headers (no pixels) when ``linked``, else one stand-in holding new Study and
        Frame of Reference UIDs and an empty patient module.
    linked : bool
        True when the CT came from DICOM and the objects share its study and frame of reference.
    """

    headers: list
    linked: bool


def study_link(ct: Volume, ct_path: str | Path) -> StudyLink:
    """The CT series' headers when the CT was read from DICOM, else a stand-in with new UIDs.

    Parameters
    ----------
    ct : Volume
        The CT as read (its metadata holds ``series_uid`` when it came from DICOM).
    ct_path : str or Path
        The CT file or folder it was read from.

    Returns
    -------
    StudyLink
        The headers the DICOM objects take their patient, study and frame of reference from.
    """
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    from .dicom import choose_series, find_series

    if "series_uid" in ct.metadata:
        series = choose_series(find_series(Path(ct_path)), "CT", Path(ct_path), ct.metadata["series_uid"])
        headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in series.files]
        for header in headers:  # type 2 attributes a scanner may leave out: present, empty (in memory only)
            for name in STUDY_ATTRIBUTES:
                if name not in header:
                    setattr(header, name, "")
            if not header.get("SliceThickness"):
                header.SliceThickness = _exact_ds(ct.spacing[2])
        return StudyLink(headers, True)
    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "", "", "", ""
    ds.StudyInstanceUID, ds.FrameOfReferenceUID = generate_uid(), generate_uid()
    ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID = generate_uid(), generate_uid(), CT_SOP_CLASS
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "", "", "", "", ""
    ds.Modality, ds.PositionReferenceIndicator = "CT", ""
    ds.Rows, ds.Columns = ct.shape[1], ct.shape[2]
    positions, ds.ImageOrientationPatient, ds.PixelSpacing = frame_geometry(ct)  # a patient coordinate system
    ds.ImagePositionPatient, ds.SliceThickness = list(positions[0]), _exact_ds(ct.spacing[2])
    return StudyLink([ds], False)


def frame_geometry(volume: Volume) -> tuple[np.ndarray, list[float], list[float]]:
    """Each frame's Image Position (Patient), the Image Orientation (Patient) and the Pixel Spacing.

    Parameters
    ----------
    volume : Volume
        Array [z, y, x], spacing/origin in mm (LPS), direction columns the x, y, z axes.

    Returns
    -------
    positions : ndarray, shape (nz, 3)
        The first voxel's centre of each frame, mm (LPS).
    orientation : list of 6 float
        Row direction (along x) then column direction (along y), unit vectors.
    pixel_spacing : list of 2 float
        Row spacing (y) then column spacing (x), mm.
    """
    d = np.asarray(volume.direction, dtype=np.float64)
    k = np.arange(volume.shape[0])[:, None]
    positions = np.asarray(volume.origin) + k * volume.spacing[2] * d[:, 2]
    positions = np.vectorize(_exact_ds)(positions)
    return (positions, [_exact_ds(v) for v in (*d[:, 0], *d[:, 1])],
            [_exact_ds(volume.spacing[1]), _exact_ds(volume.spacing[0])])


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters."""
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def _exact_ds(value: float) -> float:
    """The float a Decimal String stores for ``value`` (so that what is written is what is meant)."""
    return float(_ds(value))


def _new_dataset(sop_class: str, link, modality: str, description: str):
    """An empty object of ``sop_class`` (explicit VR little endian) with the patient, study and series of ``link``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    _common(ds, link, modality, generate_uid(), description)
    return ds


def _common(ds, link: StudyLink, modality: str, series_uid: str, description: str) -> None:
    """Patient, study, series, frame of reference, equipment and SOP common attributes."""
    import datetime

    source = link.headers[0]
    for name in STUDY_ATTRIBUTES:
        setattr(ds, name, source.get(name, ""))
    now = datetime.datetime.now()
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = modality, series_uid, 1, 1
    ds.SeriesDescription = description
    ds.Manufacturer, ds.SoftwareVersions = MANUFACTURER, __version__


def write_rt_dose(dose: Volume, path: str | Path, link: StudyLink, description: str = "absorbed dose") -> Path:
    """Write an absorbed-dose map (Gy) as a multi-frame RT Dose.

    Parameters
    ----------
    dose : Volume
        Absorbed dose, Gy; negative values (numerical noise) are stored as 0.
    path : str or Path
        The file to write.
    link : StudyLink
        The study and frame of reference to join (see :func:`study_link`).
    description : str
        Series Description.

    Returns
    -------
    Path
        The written file. Dose Grid Scaling (Gy) maps the largest dose to 2**32 - 1, so each voxel
        is within half of it of ``dose``.
    """
    from pydicom.sequence import Sequence

    values = np.asarray(dose.array, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise DblurDoseError("the absorbed-dose map holds non-finite values; it cannot be written as RT Dose")
    values = np.clip(values, 0.0, None)
    peak = float(values.max())
    scaling = peak / UINT32_MAX if peak > 0 else 1.0
    stored = np.clip(np.rint(values / scaling), 0, UINT32_MAX).astype("<u4")
    positions, orientation, pixel_spacing = frame_geometry(dose)
    normal = np.cross(orientation[:3], orientation[3:])

    ds = _new_dataset(RT_DOSE_SOP_CLASS, link, "RTDOSE", description)
    ds.ImagePositionPatient = [_ds(v) for v in positions[0]]
    ds.ImageOrientationPatient = [_ds(v) for v in orientation]
    ds.PixelSpacing = [_ds(v) for v in pixel_spacing]
    ds.SliceThickness = _ds(dose.spacing[2])
    ds.NumberOfFrames, ds.Rows, ds.Columns = dose.shape
    ds.FrameIncrementPointer = 0x3004000C
    ds.GridFrameOffsetVector = [_ds(v) for v in (positions - positions[0]) @ normal]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 32, 32, 31, 0
    ds.DoseUnits, ds.DoseType, ds.DoseSummationType = "GY", "PHYSICAL", DOSE_SUMMATION_TYPE
    ds.TissueHeterogeneityCorrection = "IMAGE"  # the kernels are scaled by the CT's densities
    ds.OperatorsName = ""  # RT Series module, type 2
    ds.DoseGridScaling = _ds(scaling)
    if link.linked:
        ds.ReferencedImageSequence = Sequence(_image_reference(h) for h in link.headers)
    ds.PixelData = stored.tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _image_reference(header):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = header.SOPClassUID, header.SOPInstanceUID
    return item


def write_parametric_map(rate: Volume, path: str | Path, link: StudyLink, description: str = "dose rate") -> Path:
    """Write a dose-rate map (mGy/h) as a float Parametric Map (highdicom).

    Parameters
    ----------
    rate : Volume
        Dose rate in its ``units`` metadata: mGy/h (the default) or nGy/(MBq s).
    path : str or Path
        The file to write.
    link : StudyLink
        The study and frame of reference to join (see :func:`study_link`).
    description : str
        Series Description and Content Label source.

    Returns
    -------
    Path
        The written file; the Real World Value Mapping (slope 1, intercept 0, UCUM ``mGy/h`` or
        ``nGy/(MBq.s)``) gives the stored float values unchanged.
    """
    import highdicom as hd
    from pydicom.uid import generate_uid

    values = np.asarray(rate.array, dtype=np.float32)
    if not np.all(np.isfinite(values)):
        raise DblurDoseError("the dose-rate map holds non-finite values; it cannot be written as a Parametric Map")
    positions, orientation, pixel_spacing = frame_geometry(rate)
    units = rate.metadata.get("units", "mGy/h")
    if units not in UCUM_RATE_UNITS:
        raise DblurDoseError(f"the dose-rate map is in {units}, which the DICOM output does not know")
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="dose rate", lut_explanation=f"absorbed dose rate, {units}",
        unit=hd.sr.CodedConcept(UCUM_RATE_UNITS[units], "UCUM", UCUM_RATE_UNITS[units]),
        value_range=(float(values.min()), float(values.max())), slope=1.0, intercept=0.0,
        quantity_definition=hd.sr.CodedConcept("DOSERATE", "99DBLURDOSE", "Absorbed dose rate"),
    )
    pmap = hd.pm.ParametricMap(
        source_images=link.headers, pixel_array=values, series_instance_uid=generate_uid(), series_number=1,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name="dblurdose", software_versions=__version__, device_serial_number="none",
        contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
        pixel_measures=hd.PixelMeasuresSequence(pixel_spacing=pixel_spacing, slice_thickness=rate.spacing[2]),
        plane_orientation=hd.PlaneOrientationSequence(coordinate_system="PATIENT", image_orientation=orientation),
        plane_positions=[hd.PlanePositionSequence(coordinate_system="PATIENT", image_position=p) for p in positions],
        content_label="DOSERATE", content_description=description[:64],
        voi_lut_transformations=[hd.VOILUTTransformation(
            window_center=float(values.max() + values.min()) / 2,
            window_width=max(float(values.max() - values.min()), 1e-6))],
    )
    pmap.SeriesDescription = description
    if not link.linked:  # the stand-in CT does not exist: reference nothing
        for name in ("ReferencedSeriesSequence", "SourceImageSequence", "ReferencedImageSequence"):
            if name in pmap:
                delattr(pmap, name)
        for item in pmap.SharedFunctionalGroupsSequence:
            if "DerivationImageSequence" in item:
                del item.DerivationImageSequence
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pmap.save_as(path, enforce_file_format=True)
    return path

def mask_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed outlines of a 2D mask, in (column, row) voxel indices.

    Marching squares (contourpy, which matplotlib installs) at level 0.5 of the mask padded by a row
    and column of zeros: every outline is closed and runs half-way between a voxel inside and its
    neighbour outside, so a reader that takes the voxels whose centres lie inside a polygon
    (even-odd: holes and islands are separate outlines) gets the mask back exactly. rt-utils is not
    used: it needs the CT as a DICOM series, and the CT may be NRRD.

    Parameters
    ----------
    mask : ndarray of bool, shape (rows, columns)

    Returns
    -------
    list of ndarray, shape (n, 2)
        Each outline's vertices (column, row), the first not repeated at the end.
    """
    import contourpy

    padded = np.pad(np.asarray(mask, dtype=np.float64), 1)
    lines = contourpy.contour_generator(z=padded, name="serial", line_type="Separate").lines(0.5)
    return [line[:-1] - 1.0 for line in lines if len(line) > 3]


def _slice_references(link: StudyLink, grid: Volume) -> dict[int, object]:
    """Frame index -> the CT slice header at that position (linked CT only)."""
    if not link.linked:
        return {}
    d = np.asarray(grid.direction, dtype=np.float64)
    refs = {}
    for header in link.headers:
        if "ImagePositionPatient" in header:
            k = (np.asarray(header.ImagePositionPatient, float) - grid.origin) @ d[:, 2] / grid.spacing[2]
            if abs(k - round(k)) < 0.01 and 0 <= round(k) < grid.shape[0]:
                refs[int(round(k))] = header
    return refs


def write_rt_struct(segments: list[Segment], grid: Volume, path: str | Path, link: StudyLink,
                    description: str = "segments") -> Path:
    """Write the segments as an RT Structure Set: one ROI per segment, its outlines on each CT slice.

    Parameters
    ----------
    segments : list of Segment
        Masks [z, y, x] on ``grid``; ROI Name is the segment name.
    grid : Volume
        The (reference) CT grid the masks and the RT Dose lie on (LPS mm).
    path : str or Path
        The file to write.
    link : StudyLink
        The study and frame of reference to join (see :func:`study_link`); with a DICOM CT every
        contour references its CT slice and the structure set the CT series.
    description : str
        Series Description and Structure Set Label.

    Returns
    -------
    Path
        The written file. Contours are CLOSED_PLANAR polygons in patient coordinates (mm) through
        the slice centres, from :func:`mask_contours`.
    """
    import datetime

    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = _new_dataset(RT_STRUCT_SOP_CLASS, link, "RTSTRUCT", description)
    del ds.ContentDate, ds.ContentTime  # not in the RT Structure Set IOD: Structure Set Date/Time instead
    now = datetime.datetime.now()
    ds.StructureSetLabel, ds.StructureSetName = description[:16], description[:64]
    ds.StructureSetDate, ds.StructureSetTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.OperatorsName = ""  # RT Series module, type 2
    ds.ReferencedFrameOfReferenceSequence = Sequence([_referenced_frame(ds, link)])
    refs = _slice_references(link, grid)
    rois, contours, observations = [], [], []
    for number, segment in enumerate(segments, start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, ds.FrameOfReferenceUID
        roi.ROIName, roi.ROIGenerationAlgorithm = segment.name[:64], ""
        rois.append(roi)
        contours.append(_roi_contours(number, segment, grid, refs))
        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.RTROIInterpretedType, observation.ROIInterpreter = "", ""
        observations.append(observation)
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(contours)
    ds.RTROIObservationsSequence = Sequence(observations)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path



def _referenced_frame(ds, link: StudyLink):
    """The structure set's Referenced Frame of Reference item; with a DICOM CT, its study and series too."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    frame = Dataset()
    frame.FrameOfReferenceUID = ds.FrameOfReferenceUID
    if link.linked:  # the stand-in CT does not exist: reference only the frame of reference
        series = Dataset()
        series.SeriesInstanceUID = link.headers[0].SeriesInstanceUID
        series.ContourImageSequence = Sequence(_image_reference(h) for h in link.headers)
        study = Dataset()
        study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # the (retired) Detached Study Management, as usual
        study.ReferencedSOPInstanceUID = ds.StudyInstanceUID
        study.RTReferencedSeriesSequence = Sequence([series])
        frame.RTReferencedStudySequence = Sequence([study])
    return frame


def _roi_contours(number: int, segment: Segment, grid: Volume, refs: dict):
    """One ROI Contour item: the segment's outlines on each slice of ``grid`` as CLOSED_PLANAR
    polygons in patient coordinates (mm), each referencing its CT slice where there is one."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    positions, orientation, pixel_spacing = frame_geometry(grid)
    row_dir, col_dir = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    item = Dataset()
    item.ReferencedROINumber = number
    planes = []
    for k in np.flatnonzero(np.asarray(segment.mask).any(axis=(1, 2))):
        for outline in mask_contours(segment.mask[k]):
            points = (positions[k] + outline[:, :1] * pixel_spacing[1] * row_dir
                      + outline[:, 1:] * pixel_spacing[0] * col_dir)
            contour = Dataset()
            if k in refs:
                contour.ContourImageSequence = Sequence([_image_reference(refs[k])])
            contour.ContourGeometricType, contour.NumberOfContourPoints = "CLOSED_PLANAR", len(points)
            contour.ContourData = [_ds(v) for v in points.ravel()]
            planes.append(contour)
    if planes:
        item.ContourSequence = Sequence(planes)
    return item


def write_dicom(folder: str | Path, link: StudyLink, rates: dict[str, Volume] | None = None,
                doses: dict[str, Volume] | None = None, segments: list[Segment] | None = None,
                grid: Volume | None = None) -> list[Path]:
    """Write dose-rate maps as Parametric Maps, absorbed-dose maps as RT Dose and the segments as an
    RT Structure Set into ``folder``.

    Parameters
    ----------
    folder : str or Path
        Where the files go (``<stem>.dcm`` each), normally ``stage / FOLDER`` of an
        :class:`~DblurDoseLib.io.outputs.OutputFolder`, so that they appear with the NRRD files or not at all.
    link : StudyLink
        The study and frame of reference the objects join (see :func:`study_link`).
    rates : dict of str to Volume, optional
        File stem -> dose-rate map (mGy/h or nGy/(MBq s)).
    doses : dict of str to Volume, optional
        File stem -> absorbed-dose map (Gy).
    segments : list of Segment, optional
        The segments used, written as ``STRUCTURE_SET_STEM.dcm`` (see :func:`write_rt_struct`).
    grid : Volume, optional
        The CT grid the segments' masks lie on; needed with ``segments``.

    Returns
    -------
    list of Path
        The written files.
    """
    folder = Path(folder)
    try:
        written = [write_parametric_map(v, folder / f"{stem}.dcm", link, stem.replace("_", " "))
                   for stem, v in (rates or {}).items()]
        written += [write_rt_dose(v, folder / f"{stem}.dcm", link, stem.replace("_", " "))
                    for stem, v in (doses or {}).items()]
        if segments:
            written.append(write_rt_struct(segments, grid, folder / f"{STRUCTURE_SET_STEM}.dcm", link))
        return written
    except ValueError as exc:
        # what highdicom and pydicom raise for header values they refuse (a CT without Frame of Reference
        # UID, a Decimal String too long, a file meta they cannot write); AttributeError, KeyError and
        # TypeError are bugs of ours and propagate with their traceback
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DblurDoseError(f"could not write the DICOM output ({reason}); run without DICOM output. "
                             "Nothing was written", settings=("dicom_out",)) from None
