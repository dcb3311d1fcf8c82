"""A headless Slicer MRML scene for tests (slicer-core, no Qt), and small demo-like cases.

Import only after ``pytest.importorskip("slicer")``. What Slicer's application does at start-up
is done here by hand: scene, application logic, the module logics DblurDose touches (subject
hierarchy, volumes, segmentations, markups, tables, plots) and the I/O managers for .mrb files.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import slicer
import vtk
import vtk.util.numpy_support as vtk_np

from DblurDoseLib.io.volume import Volume
from DblurDoseLib.mrml import ijkToRASFromVolume


class SlicerScene:
    """A MRML scene with the logics and I/O Slicer would set up (kept alive with the scene)."""

    def __init__(self) -> None:
        from vtkmodules.vtkCommonCore import vtkCollection

        self.scene = slicer.vtkMRMLScene()
        # the subject hierarchy exists from the start in Slicer
        slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        self.app = slicer.vtkSlicerApplicationLogic()
        self.app.SetMRMLScene(self.scene)
        self.app.GetColorLogic().SetMRMLScene(self.scene)
        self.app.GetColorLogic().AddDefaultColorNodes()
        self.app.SetSliceLogics(vtkCollection())
        self.app.SetViewLogics(vtkCollection())
        self.logics = {}
        for name, cls in (("SubjectHierarchy", slicer.vtkSlicerSubjectHierarchyModuleLogic),
                          ("Volumes", slicer.vtkSlicerVolumesLogic),
                          ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                          ("Markups", slicer.vtkSlicerMarkupsLogic),
                          ("Tables", slicer.vtkSlicerTablesLogic),
                          ("Plots", slicer.vtkSlicerPlotsLogic)):
            logic = cls()
            logic.SetMRMLApplicationLogic(self.app)
            logic.SetMRMLScene(self.scene)
            self.app.SetModuleLogic(name, logic)
            self.logics[name] = logic
        # remote I/O and data I/O managers: needed to read .mrb bundles
        self._cache = tempfile.TemporaryDirectory(prefix="dblurdose-slicer-cache-")
        self.remote_io = slicer.vtkMRMLRemoteIOLogic()
        self.remote_io.SetMRMLScene(self.scene)
        self.remote_io.SetMRMLApplicationLogic(self.app)
        self.remote_io.GetCacheManager().SetRemoteCacheDirectory(self._cache.name)
        self.data_io = slicer.vtkDataIOManagerLogic()
        self.data_io.SetMRMLScene(self.scene)
        self.data_io.SetMRMLApplicationLogic(self.app)
        self.data_io.SetAndObserveDataIOManager(self.remote_io.GetDataIOManager())
        self.remote_io.AddDataIOToScene()

    @property
    def sh(self):
        return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)

    # -- nodes from library objects ----------------------------------------------------------
    def add_volume(self, volume: Volume, name: str, node_class: str = "vtkMRMLScalarVolumeNode", parent_item=None):
        node = self.scene.AddNewNodeByClass(node_class, name)
        m = vtk.vtkMatrix4x4()
        for i, row in enumerate(ijkToRASFromVolume(volume)):
            for j, v in enumerate(row):
                m.SetElement(i, j, float(v))
        node.SetIJKToRASMatrix(m)
        array = np.ascontiguousarray(volume.array)
        image = vtk.vtkImageData()
        image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
        image.AllocateScalars(vtk_np.get_vtk_array_type(array.dtype), 1)
        vtk_np.vtk_to_numpy(image.GetPointData().GetScalars())[:] = array.ravel()
        node.SetAndObserveImageData(image)
        node.CreateDefaultDisplayNodes()
        if parent_item is not None:
            self.sh.CreateItem(parent_item, node)
        return node

    def add_segmentation(self, labels: Volume, names: dict[int, str], reference_node, name: str = "Segmentation"):
        """A segmentation with one segment per label value (named), from a labelmap volume."""
        labelmap = self.add_volume(labels.with_array(np.asarray(labels.array, dtype=np.uint8)), "labels-tmp",
                                   "vtkMRMLLabelMapVolumeNode")
        seg = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        seg.SetReferenceImageGeometryParameterFromVolumeNode(reference_node)
        assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, seg)
        segmentation = seg.GetSegmentation()
        values = [int(v) for v in np.unique(labels.array) if v != 0]
        for i, value in enumerate(values):
            segmentation.GetNthSegment(i).SetName(names.get(value, f"label_{value}"))
        self.scene.RemoveNode(labelmap)
        return seg

    def add_segment_from_mask(self, seg, mask: Volume, name: str) -> str:
        """Add one more segment (its own layer, so it may overlap the others)."""
        labelmap = self.add_volume(mask.with_array(np.asarray(mask.array, dtype=np.uint8)), "mask-tmp",
                                   "vtkMRMLLabelMapVolumeNode")
        segment_id = seg.GetSegmentation().AddEmptySegment(name, name)
        image = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(labelmap)
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            image, seg, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
        self.scene.RemoveNode(labelmap)
        return segment_id

    def add_line(self, p0_lps, p1_lps, name: str = "Line"):
        line = self.scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", name)
        for p in (p0_lps, p1_lps):
            x, y, z = (float(c) for c in p)
            line.AddControlPoint(vtk.vtkVector3d(-x, -y, z))
        return line

    def study(self, patient: str = "Patient", study: str = "Study") -> int:
        patient_item = self.sh.CreateSubjectItem(self.sh.GetSceneItemID(), patient)
        return self.sh.CreateStudyItem(patient_item, study)

    # -- bundles ------------------------------------------------------------------------------
    def save_mrb(self, path: str | Path) -> Path:
        path = Path(path).resolve()
        self.scene.SetRootDirectory(str(path.parent))
        assert self.scene.WriteToMRB(str(path)), "writing the .mrb failed"
        return path

    @classmethod
    def load_mrb(cls, path: str | Path) -> SlicerScene:
        loaded = cls()
        messages = slicer.vtkMRMLMessageCollection()
        assert loaded.scene.ReadFromMRB(str(path), False, messages), messages.GetAllMessagesAsString()
        return loaded


@dataclass
class SmallCase:
    """A demo-like SPECT/CT with organs, a lesion, a coarser SPECT grid and known labels."""

    ct: Volume
    spect: Volume
    labels: Volume
    names: dict[int, str]


def small_case(shape=(30, 40, 40), spacing=(4.0, 4.0, 5.0), direction=None, seed: int = 0) -> SmallCase:
    """Body of soft tissue in air with two 'kidneys', a 'lesion' and a lung-like region.

    The SPECT is a blurred activity map on a coarser grid (5 mm voxels in x/y) over the same
    field, in Bq/mL. ``direction`` (3x3, LPS) makes an oblique case.
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    nz, ny, nx = shape
    centre_index = (np.array([nx, ny, nz]) - 1) / 2
    origin = -direction @ (centre_index * np.asarray(spacing))
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    body = ((x - nx / 2) / (0.42 * nx)) ** 2 + ((y - ny / 2) / (0.35 * ny)) ** 2 <= 1
    body &= (z > 1) & (z < nz - 2)
    hu = np.where(body, 40.0, -1000.0).astype(np.float32)
    lung = body & (((x - nx * 0.3) / 4) ** 2 + ((y - ny * 0.5) / 5) ** 2 <= 1) & (z > nz * 0.6)
    hu[lung] = -800.0
    hu += rng.normal(0.0, 5.0, hu.shape).astype(np.float32) * body
    labels = np.zeros(shape, dtype=np.uint8)
    labels[body] = 1
    kidney_l = ((x - nx * 0.65) / 3) ** 2 + ((y - ny * 0.55) / 4) ** 2 + ((z - nz * 0.45) / 4) ** 2 <= 1
    kidney_r = ((x - nx * 0.35) / 3) ** 2 + ((y - ny * 0.55) / 4) ** 2 + ((z - nz * 0.45) / 4) ** 2 <= 1
    lesion = ((x - nx * 0.5) / 2.5) ** 2 + ((y - ny * 0.35) / 2.5) ** 2 + ((z - nz * 0.3) / 2) ** 2 <= 1
    labels[kidney_l] = 2
    labels[kidney_r] = 3
    labels[lesion] = 4
    labels[lung] = 5
    activity = np.where(body, 2e4, 0.0)
    activity[kidney_l | kidney_r] = 3e5
    activity[lesion] = 6e5
    activity = gaussian_filter(activity.astype(np.float32), 1.2)
    ct = Volume(hu, spacing, tuple(origin), direction)
    labels_volume = ct.with_array(labels)
    # SPECT: the activity, on a coarser grid covering the same field
    spect_spacing = (5.0, 5.0, spacing[2])
    extent = np.asarray(spacing) * np.array([nx, ny, nz])
    n = np.maximum(np.round(extent / np.asarray(spect_spacing)).astype(int), 1)
    spect_origin = -direction @ ((n - 1) / 2 * np.asarray(spect_spacing))
    grid = Volume(np.zeros(tuple(n[::-1]), np.float32), spect_spacing, tuple(spect_origin), direction)
    from DblurDoseLib.geometry.resample import resample_activity

    spect = resample_activity(ct.with_array(activity.astype(np.float32)), grid)
    names = {1: "body", 2: "left kidney", 3: "right kidney", 4: "lesion", 5: "lung"}
    return SmallCase(ct, spect, labels_volume, names)


def rotation(axis: str, degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    c, s = np.cos(t), np.sin(t)
    if axis == "z":
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    if axis == "x":
        return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


# ------------------------------------------------------------------------------------------------
# DblurDose/DblurDose.py without the Slicer application
class _Base:
    def __init__(self, parent=None):
        self.parent = parent


class _Logic:
    def __init__(self):
        pass


class _Validator:
    def __init__(self, *args, **kwargs):
        self.args = args


MODULE_FILE = Path(__file__).resolve().parents[1] / "DblurDose" / "DblurDose.py"


def module_stand_ins() -> dict:
    """sys.modules entries for the Qt-side Slicer modules DblurDose.py imports: minimal stand-ins
    (the parameter-node wrapper leaves the class as written, so its defaults are class attributes)."""
    import types

    return {
        "slicer.ScriptedLoadableModule": types.SimpleNamespace(
            ScriptedLoadableModule=_Base, ScriptedLoadableModuleWidget=_Base,
            ScriptedLoadableModuleLogic=_Logic, ScriptedLoadableModuleTest=object),
        "slicer.parameterNodeWrapper": types.SimpleNamespace(
            parameterNodeWrapper=lambda cls: cls, Choice=_Validator, WithinRange=_Validator),
    }


def import_module_file(stand_ins: dict | None = None):
    """Execute DblurDose.py as a fresh module with ``stand_ins`` (default :func:`module_stand_ins`) in
    sys.modules, which is restored afterwards."""
    import importlib.util
    import sys

    stand_ins = module_stand_ins() if stand_ins is None else stand_ins
    saved = {name: sys.modules.get(name) for name in stand_ins}
    sys.modules.update(stand_ins)
    try:
        spec = importlib.util.spec_from_file_location("DblurDose", MODULE_FILE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return module
