"""DblurDose: voxel-level Lu-177 dose-rate maps (mGy/h) from SPECT/CT in 3D Slicer.

Module, parameter node, Widget (thin), Logic (usable without the GUI) and Test, after Slicer's
scripted-module template and its LineProfile module. The computation and everything that
touches MRML lives in the ``DblurDoseLib`` package (``DblurDoseLib.mrml`` is Qt-free); this file
only wires the panel, reports progress and errors, and has missing Python packages installed on
first use (``DblurDoseModuleLib/dependencies.py``, in a folder beside this file). As in LineProfile,
the outputs are kept in the parameter node and refilled by the next run.

Nothing heavy is imported at file scope (no numpy-based library code, no torch): the module
loads in a fresh Slicer with no extra package installed.
"""

import importlib.util
import logging
import os
import sys
import traceback
from typing import Annotated

import slicer
import vtk
from slicer import vtkMRMLMarkupsLineNode, vtkMRMLNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

try:
    from slicer.i18n import tr as _
    from slicer.i18n import translate
except ImportError:  # Slicer before 5.4

    def _(text):
        return text

    def translate(context, text):
        return text


MODULE_DIR = os.path.dirname(os.path.abspath(__file__))
#: What the panel shows -> the library's keywords. The SPECT units are DblurDoseLib.units.SPECT_UNITS' labels,
#: written out because the panel is built before the library is importable (test_errors checks they agree).
SPECT_UNIT_CHOICES = {"Bq/mL": "bqml", "kBq/mL": "kbqml", "MBq/mL": "mbqml", "counts": "counts"}
DEVICE_CHOICES = {"Auto": "auto", "CPU": "cpu", "GPU": "gpu"}
FIT_CHOICES = {"Auto (AICc)": "auto", "Mono-exponential": "mono", "Bi-exponential": "bi",
               "Tri-exponential": "tri", "Trapezoid": "trapezoid"}
SINGLE_TIME_POINT_CHOICES = {"Hänscheid": "haenscheid", "Prior half-life (Madsen)": "madsen"}
REGISTRATION_CHOICES = {"Rigid": "rigid", "Deformable": "deformable", "None": "none"}
DEMO_SAMPLE_NAME = "DblurDoseDemo"
#: Where a user of this panel changes each setting an error names (``DblurDoseLib.errors.SETTINGS``;
#: the command line names its flags instead, ``DblurDoseLib.cli.FLAGS``). Settings without a widget
#: say what to do in Slicer. reportError appends them to the message.
SETTING_LABELS = {
    "spect": '"SPECT" selector (Inputs)',
    "ct": '"CT" selector (Inputs)',
    "spect_units": '"Voxel values" selector (SPECT units)',
    "calibration": '"Calibration (cps/MBq)" (SPECT units, counts)',
    "duration": '"Acquisition duration (s)" (SPECT units, counts)',
    "any_activity": "no panel setting: check the SPECT's units and calibration; from the Python console, "
                    "DblurDoseLib.mrml.computeDoseRateMaps(..., activity_range_mbq=None) accepts any activity",
    "clip_negative": "no panel setting: negative SPECT voxels are kept; from the Python console, "
                     "computeDoseRateMaps(..., clip_negative=True) sets them to zero",
    "method": '"Methods" checkboxes (Computation)',
    "model": "no panel setting: the module uses the installed DblurDoseNet weights; another model file goes "
             "through the Python console, computeDoseRateMaps(..., model=path)",
    "device": '"Device" selector (Computation)',
    "spect_fwhm": '"SPECT resolution (FWHM)" (Computation)',
    "memory_gb": "no panel setting: close other programs or crop the CT to the SPECT's field (Crop Volume "
                 "module); from the Python console, computeDoseRateMaps(..., memory_gb=...)",
    "out": "the output nodes: the module adds them to the scene (File > Save to keep them)",
    "overwrite": "the output nodes: Apply again refills the last run's outputs",
    "timepoints": '"Add time point" / "Remove" and the time-point table (Absorbed dose)',
    "administration_time": '"Time after administration" (Absorbed dose): enter hours after administration',
    "administered_mbq": '"Administered activity" (Absorbed dose)',
    "single_time_point": '"One time point" selector (Absorbed dose)',
    "fit": '"Time integration" selector (Absorbed dose)',
    "calibration_uncertainty": "no panel setting: the calibration's uncertainty is added by the command "
                               "line's dosimetry",
    "earlier_cycles": "no panel setting: earlier cycles are summed by the command line's dosimetry",
    "segments": '"Segments" selector (Inputs)',
    "nuclide": "no panel setting: the module computes Lu-177 only",
    "hu_calibration": '"HU to density table" (Advanced)',
    "register": '"Registration" selector (Absorbed dose)',
    "spect_series": "the SPECT selector: load the series you want from the DICOM module (one volume per series)",
    "ct_series": "the CT selector: load the series you want from the DICOM module (one volume per series)",
    "dicom_out": "DICOM export: right-click the output in the Data module > Export to DICOM",
}


def ensureLibraryImportable() -> None:
    """Make ``DblurDoseLib`` importable (a built extension installs it beside this module; a clone keeps
    it one folder up) and the module's helpers, ``DblurDoseModuleLib`` beside this file."""
    for package, candidates in (("DblurDoseModuleLib", (MODULE_DIR,)),
                                ("DblurDoseLib", (MODULE_DIR, os.path.dirname(MODULE_DIR)))):
        if importlib.util.find_spec(package) is not None:
            continue
        folder = next((c for c in candidates if os.path.isdir(os.path.join(c, package))), None)
        if folder is not None and folder not in sys.path:
            sys.path.insert(0, folder)


ensureLibraryImportable()


def preferPassiveOpenMP() -> None:
    """Idle CPU threads of torch sleep instead of spinning (the library's ``devices.prefer_passive_openmp``):
    effective only while torch is not yet loaded, so this runs when the module loads."""
    try:
        from DblurDoseLib.devices import prefer_passive_openmp
    except ImportError:  # the library's own dependencies are installed later (ensureDependencies)
        return
    prefer_passive_openmp()


preferPassiveOpenMP()


#
# DblurDose
#


class DblurDose(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("DblurDose")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Nuclear Medicine")]
        self.parent.dependencies = []
        self.parent.contributors = ["DblurDose developers"]
        self.parent.helpText = _("""
Voxel-level Lu-177 dose-rate maps (mGy/h) from a SPECT/CT: dose-voxel-kernel (DVK) convolution with
density scaling, and the DblurDoseNet CNN correction when its weights are installed.
Outputs: one dose-rate volume per method on the CT grid, segment statistics (volume, mean, DR10-DR90),
dose-rate-volume histograms and a profile along a markups line.
Research software: not for clinical use. Lu-177 only; the CNN was trained on virtual patients.
""")
        self.parent.acknowledgementText = _("""
Method: Li, Fessler, Mikell, Wilderman, Dewaraja, "DblurDoseNet", Med. Phys. 49(2) 2022,
doi:10.1002/mp.15397. Module layout after Slicer's scripted-module template and LineProfile module.
""")
        slicer.app.connect("startupCompleted()", registerSampleData)


#
# Sample data: the demo case, generated locally (never downloaded)
#


def demoFolder(tag: str = "demo") -> str:
    return os.path.join(slicer.app.cachePath, "DblurDose", tag)


def _demoFileNames() -> dict:
    ensureLibraryImportable()
    from DblurDoseLib.mrml.sampledata import demo_file_names

    return demo_file_names()


DEMO_ROLES = ("ct", "spect", "segmentation", "line")
DEMO_NODE_NAMES = ("DblurDose demo CT", "DblurDose demo SPECT", "DblurDose demo organs", "DblurDose demo line")
DEMO_FILE_TYPES = ("VolumeFile", "VolumeFile", "SegmentationFile", "MarkupsFile")


def registerSampleData():
    """Register the demo case in the Sample Data module: file:// sources, written on first use."""
    try:
        import SampleData
    except ImportError:
        return
    try:
        names = _demoFileNames()
    except Exception:  # a broken install must not break Slicer's start-up
        logging.exception("DblurDose: the demo case could not be registered")
        return
    if hasattr(SampleData.SampleDataLogic, "registerCustomSampleDataCategory"):
        SampleData.SampleDataLogic.registerCustomSampleDataCategory("DblurDose", title=_("DblurDose"))
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="DblurDose",
        sampleName=DEMO_SAMPLE_NAME,
        thumbnailFileName=os.path.join(MODULE_DIR, "Resources", "Icons", "DblurDose.png"),
        uris=[_fileUri(os.path.join(demoFolder(), names[r])) for r in DEMO_ROLES],
        fileNames=[names[r] for r in DEMO_ROLES],
        nodeNames=list(DEMO_NODE_NAMES),
        loadFileTypes=list(DEMO_FILE_TYPES),
        checksums=None,
        # the Sample Data button calls this instead of downloading: the files are made here
        customDownloader=lambda source: loadDemoCaseWithProgress(),
    )


def _fileUri(path: str) -> str:
    import pathlib

    return pathlib.Path(path).as_uri()


def loadDemoCase(small: bool = False, progress=None) -> dict:
    """Write the demo files locally (first time only) and load them; returns the nodes by role.

    ``small`` makes a smaller case (for tests). The files are read through the Sample Data
    module from file:// addresses: nothing is downloaded.
    """
    import SampleData

    ensureLibraryImportable()
    from DblurDoseLib import mrml
    from DblurDoseLib.mrml.sampledata import TEST_SHAPE, demo_file_names, write_demo_case

    name = f"DblurDoseDemo{'Small' if small else ''}-v{_demoVersion()}"
    folder = demoFolder("test" if small else "demo")
    paths = write_demo_case(folder, shape=TEST_SHAPE if small else None, name=name, progress=progress)
    names = demo_file_names(name)
    source = SampleData.SampleDataSource(
        sampleName=name, uris=[_fileUri(str(paths[r])) for r in DEMO_ROLES], fileNames=[names[r] for r in DEMO_ROLES],
        nodeNames=list(DEMO_NODE_NAMES), loadFileTypes=list(DEMO_FILE_TYPES))
    loaded = SampleData.SampleDataLogic().downloadFromSource(source)
    nodes = dict(zip(DEMO_ROLES, loaded))
    if len(nodes) != len(DEMO_ROLES) or not all(hasattr(n, "GetID") for n in nodes.values()):
        raise RuntimeError(f"the demo files in {folder} could not be loaded; delete the folder and try again")
    mrml.setSpectUnits(nodes["spect"], "bqml")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "DblurDose virtual patient")
    study = sh.CreateStudyItem(patient, "Lu-177 SPECT/CT, day 1")
    for node in nodes.values():
        item = sh.GetItemByDataNode(node) or sh.CreateItem(study, node)
        sh.SetItemParent(item, study)
    slicer.util.setSliceViewerLayers(background=nodes["ct"], foreground=nodes["spect"], foregroundOpacity=0.4, fit=True)
    return nodes


def loadDemoCaseWithProgress():
    """loadDemoCase for the GUI: installs what is missing, shows progress, reports errors; None on failure."""
    if not ensureDependencies():
        return None
    dialog, progress = progressDialog(_("Making the DblurDose demo case"))
    try:
        return loadDemoCase(progress=progress)
    except Exception as exc:
        reportError(exc, _("Failed to make the DblurDose demo case"))
    finally:
        dialog.close()
    return None


def reportError(exc: Exception, context: str) -> str:
    """Tell the user what went wrong (DblurDoseError messages say how to fix it); returns the status text."""
    from DblurDoseLib.errors import DblurDoseError

    if isinstance(exc, DblurDoseError):
        if str(exc).startswith("cancelled"):
            return _("Cancelled: nothing was added to the scene.")
        message = exc.describe(SETTING_LABELS)  # the message, then where to change what it names
        slicer.util.errorDisplay(message, windowTitle=_("DblurDose"))
        return _("Failed: {message}").format(message=message)
    logging.error("DblurDose: %s\n%s", context, traceback.format_exc())
    slicer.util.errorDisplay(f"{context}: {exc}", windowTitle=_("DblurDose"), detailedText=traceback.format_exc())
    return _("Failed: {message}").format(message=exc)


def progressDialog(title: str):
    """A modal progress dialog and the ``progress(fraction, message)`` callback that drives it
    (keeps the window responsive; returns False once the user clicked Cancel)."""
    dialog = slicer.util.createProgressDialog(parent=slicer.util.mainWindow(), windowTitle=title,
                                              labelText=_("Starting..."), maximum=100)

    def progress(fraction, message):
        dialog.labelText = message
        dialog.value = int(round(100 * fraction))
        slicer.app.processEvents()
        return not dialog.wasCanceled

    return dialog, progress


def demoSegmentIds(segmentationNode) -> list:
    """The demo's organs worth a first look (kidneys, liver, spleen, lesions), out of its ~40 labels."""
    segmentation = segmentationNode.GetSegmentation()
    keys = ("kidney", "liver", "spleen", "lesion")
    return [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())
            if any(k in segmentation.GetNthSegment(i).GetName().lower() for k in keys)]


def _demoVersion() -> int:
    from DblurDoseLib.mrml.sampledata import DEMO_DATA_VERSION

    return DEMO_DATA_VERSION


#
# Dependencies (installed on first Apply, never at start-up): DblurDoseModuleLib/dependencies.py
#


def ensureDependencies() -> bool:
    """Install the Python packages DblurDose needs (asking first); False when the user declines or
    installing fails (then the failure was reported)."""
    from DblurDoseModuleLib.dependencies import ensureDependencies as ensure

    try:
        return ensure(os.path.join(MODULE_DIR, "Resources", "requirements.txt"), requester="DblurDose")
    except Exception as exc:  # pip failed (offline, no permission...): say so, do not leave a traceback
        reportError(exc, _("Installing the Python packages DblurDose needs failed"))
        return False


def cnnShipped() -> bool:
    """Whether this installation has the CNN: its code and its weights (checked without importing torch)."""
    spec = importlib.util.find_spec("DblurDoseLib")
    if spec is None or not spec.submodule_search_locations:
        return False
    library = list(spec.submodule_search_locations)[0]
    models = os.path.join(library, "data", "models")
    return importlib.util.find_spec("DblurDoseLib.learning.inference") is not None and os.path.isdir(models) and any(
        name.endswith(".pt") for name in os.listdir(models))


def cnnChoice() -> tuple:
    """(offered, text beside the CNN checkbox): its cost when its weights are installed (it is then
    ticked by default, see ``DblurDoseParameterNode.methodCnn``), else why it is not offered."""
    if cnnShipped():
        return True, _("about a minute on a CPU, seconds on a GPU")
    return False, _("not available: no trained DblurDoseNet weights are installed (DVK only)")


#
# DblurDoseParameterNode
#


@parameterNodeWrapper
class DblurDoseParameterNode:
    """What the user chose (saved with the scene).

    spectVolume / ctVolume - the SPECT (activity) and CT (HU) volumes.
    segmentation, segmentIds - segments for statistics and DRVHs (all when the list is empty);
        wired to the segment selector by hand (there is no connector for it).
    profileLine - optional markups line for the dose-rate profile.
    spectUnits - units of the SPECT voxels; for counts, calibrationCpsPerMBq and acquisitionDurationS.
    methodDvk / methodCnn / differenceMap - what to compute (the CNN ticked by default where its
        weights are installed).
    device - Auto (CUDA, then Apple MPS, then CPU), CPU or GPU.
    spectFwhmMm - the SPECT's Gaussian-equivalent FWHM (mm; 0: not given): the CNN's map is then kept
        consistent with the SPECT (DblurDoseLib.physics.consistency).
    electronOnlyScaling - density-scale only the electron part of the kernel.
    huCalibrationFile - optional HU-to-density table (CSV 'hu,density'); wired by hand.
    drvhBins - number of dose-rate bins of the histograms.
    timePoints - the absorbed-dose time points, (SPECT, its CT, hours after administration) each,
        filled by "Add time point"; shown in a table.
    newTimePointHours - the time of the next pair to add (h).
    fitModel, singleTimePoint, registration - time integration, the method for one time point,
        how each CT is registered to the earliest (reference) one.
    administeredMBq - administered activity (MBq; 0: not given).
    doseRateOutputs / absorbedDoseOutputs - the nodes the last Apply / absorbed-dose run made (each
        tagged with its role): the next run fills them again instead of adding new ones, and after a
        saved scene is loaded the profile follows its line again (``DblurDoseLogic.restoreResult``).
    """

    spectVolume: vtkMRMLScalarVolumeNode
    ctVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    segmentIds: list[str]
    profileLine: vtkMRMLMarkupsLineNode
    spectUnits: Annotated[str, Choice(list(SPECT_UNIT_CHOICES))] = "Bq/mL"
    calibrationCpsPerMBq: Annotated[float, WithinRange(0.0, 1e6)] = 0.0
    acquisitionDurationS: Annotated[float, WithinRange(0.0, 1e6)] = 0.0
    methodDvk: bool = True
    methodCnn: bool = cnnShipped()
    differenceMap: bool = True
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "Auto"
    spectFwhmMm: Annotated[float, WithinRange(0.0, 40.0)] = 0.0
    electronOnlyScaling: bool = False
    huCalibrationFile: str = ""
    drvhBins: Annotated[int, WithinRange(10, 5000)] = 200
    timePoints: list[tuple[vtkMRMLScalarVolumeNode, vtkMRMLScalarVolumeNode, float]]
    newTimePointHours: Annotated[float, WithinRange(0.0, 10000.0)] = 24.0
    fitModel: Annotated[str, Choice(list(FIT_CHOICES))] = "Auto (AICc)"
    singleTimePoint: Annotated[str, Choice(list(SINGLE_TIME_POINT_CHOICES))] = "Hänscheid"
    registration: Annotated[str, Choice(list(REGISTRATION_CHOICES))] = "Rigid"
    administeredMBq: Annotated[float, WithinRange(0.0, 1e6)] = 0.0
    doseRateOutputs: list[vtkMRMLNode]
    absorbedDoseOutputs: list[vtkMRMLNode]


#
# DblurDoseWidget
#


class DblurDoseWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGui = False
        self._lastSpect = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/DblurDose.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = DblurDoseLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneEndImport)

        # Widgets without a parameter-node connector, wired by hand
        self.ui.segmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onSegmentationChanged)
        self.ui.segmentSelector.connect("segmentSelectionChanged(QStringList)", self.onSegmentSelectionChanged)
        self.ui.huCalibrationPathLineEdit.connect("currentPathChanged(QString)", self.onHuCalibrationChanged)
        self.ui.resultChartSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onShowChart)
        self.ui.resultTableSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onShowTable)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.addTimePointButton.connect("clicked(bool)", self.onAddTimePoint)
        self.ui.removeTimePointButton.connect("clicked(bool)", self.onRemoveTimePoint)
        self.ui.absorbedDoseButton.connect("clicked(bool)", self.onAbsorbedDoseButton)
        self.ui.loadDemoButton.connect("clicked(bool)", self.onLoadDemoButton)

        shipped, hint = cnnChoice()
        self.ui.cnnCheckBox.enabled = shipped
        self.ui.cnnInfoLabel.text = hint
        if not shipped:
            self.ui.cnnCheckBox.toolTip = _("No trained DblurDoseNet weights are installed; only the DVK is available.")

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if self.logic:
            self.logic.stopObservingLine()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        if self.logic:
            self.logic.stopObservingLine()
            self.logic.result = None

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onSceneEndImport(self, caller, event) -> None:
        """A saved scene was loaded: its parameter node's outputs are the last result (profile followed again)."""
        if self._parameterNode:
            self.logic.restoreResult(self._parameterNode)
            self.onParameterNodeModified()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode == inputParameterNode:
            return
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # .ui widgets with a "SlicerParameterName" property are connected here
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.logic.restoreResult(self._parameterNode)
            self.onParameterNodeModified()

    # -- parameter node -> hand-wired widgets ---------------------------------------------------
    def onParameterNodeModified(self, caller=None, event=None) -> None:
        pn = self._parameterNode
        if pn is None or self._updatingGui:
            return
        self._updatingGui = True
        try:
            selector = self.ui.segmentSelector
            wasBlocked = selector.blockSignals(True)
            if selector.currentNode() != pn.segmentation:
                selector.setCurrentNode(pn.segmentation)
            if list(selector.selectedSegmentIDs()) != list(pn.segmentIds):
                selector.setSelectedSegmentIDs(list(pn.segmentIds))
            selector.blockSignals(wasBlocked)
            pathEdit = self.ui.huCalibrationPathLineEdit
            if pathEdit.currentPath != pn.huCalibrationFile:
                wasBlocked = pathEdit.blockSignals(True)
                pathEdit.currentPath = pn.huCalibrationFile
                pathEdit.blockSignals(wasBlocked)
            if pn.spectVolume is not self._lastSpect:
                self._lastSpect = pn.spectVolume
                self._updateSpectUnitsFromImage()
            result = self.logic.result
            if result is not None and pn.profileLine is not None and pn.profileLine is not result.lineNode:
                self.logic.setProfileLine(pn.profileLine, pn)  # a line chosen after Apply: profile it too
            counts = pn.spectUnits == "counts"
            for widget in (self.ui.calibrationLabel, self.ui.calibrationSpinBox,
                           self.ui.durationLabel, self.ui.durationSpinBox):
                widget.visible = counts
            self.ui.differenceCheckBox.enabled = pn.methodDvk and pn.methodCnn
            self._checkCanApply()
            self._updateTimePoints()
        finally:
            self._updatingGui = False

    def _updateSpectUnitsFromImage(self) -> None:
        pn = self._parameterNode
        node = pn.spectVolume
        if node is None:
            self.ui.unitsInfoLabel.text = _("Select the SPECT volume.")
            return
        units = self.logic.detectSpectUnits(node)
        if units:
            label = {v: k for k, v in SPECT_UNIT_CHOICES.items()}[units]
            pn.spectUnits = label
            self.ui.unitsInfoLabel.text = _("Units read from the image: {units}.").format(units=label)
        else:
            self.ui.unitsInfoLabel.text = _(
                "The image does not record its units. Choose them below; for counts, enter the camera "
                "calibration (cps/MBq) and the acquisition duration (s).")

    def _checkCanApply(self) -> None:
        pn = self._parameterNode
        problem = None
        if not pn.spectVolume or not pn.ctVolume:
            problem = _("Select the SPECT and CT volumes.")
        elif pn.spectVolume == pn.ctVolume:
            problem = _("The SPECT and CT must be different volumes.")
        elif not (pn.methodDvk or pn.methodCnn):
            problem = _("Choose at least one method.")
        elif pn.spectUnits == "counts" and (pn.calibrationCpsPerMBq <= 0 or pn.acquisitionDurationS <= 0):
            problem = _("SPECT in counts: enter the calibration (cps/MBq) and the acquisition duration (s).")
        self.ui.applyButton.enabled = problem is None
        self.ui.applyButton.toolTip = problem or _("Compute the dose-rate maps and their statistics.")

    def _updateTimePoints(self) -> None:
        """The time-point table (sorted by time, as they will be used) and the absorbed-dose button."""
        import qt

        pn = self._parameterNode
        rows = timePointRows(pn)
        table = self.ui.timePointsTableWidget
        table.setRowCount(len(rows))
        for r, (hours, spect, ct) in enumerate(rows):
            for c, text in enumerate((f"{hours:g}", spect.GetName() if spect else "?", ct.GetName() if ct else "?")):
                table.setItem(r, c, qt.QTableWidgetItem(text))
        problem = timePointsProblem(pn)
        self.ui.absorbedDoseButton.enabled = problem is None
        self.ui.absorbedDoseButton.toolTip = problem or _(
            "Register the time points, compute their dose rates (with the CNN when it is ticked, else the DVK) "
            "and integrate them over time (Gy).")
        self.ui.singleTimePointComboBox.enabled = len(rows) == 1

    # -- hand-wired widgets -> parameter node ---------------------------------------------------
    def onAddTimePoint(self) -> None:
        pn = self._parameterNode
        if not pn.spectVolume or not pn.ctVolume:
            self.ui.statusLabel.text = _("Select the SPECT and its CT above, then add them as a time point.")
            return
        pn.timePoints = [*pn.timePoints, (pn.spectVolume, pn.ctVolume, float(pn.newTimePointHours))]

    def onRemoveTimePoint(self) -> None:
        pn = self._parameterNode
        row = self.ui.timePointsTableWidget.currentRow()  # the table lists them sorted by time
        rows = timePointRows(pn)
        if 0 <= row < len(rows):
            pn.timePoints = [p for p in pn.timePoints if (p[2], p[0], p[1]) != rows[row]]

    def onSegmentationChanged(self, node) -> None:
        if self._parameterNode and not self._updatingGui:
            self._parameterNode.segmentation = node
            self._parameterNode.segmentIds = list(self.ui.segmentSelector.selectedSegmentIDs())

    def onSegmentSelectionChanged(self, segmentIds) -> None:
        if self._parameterNode and not self._updatingGui:
            self._parameterNode.segmentIds = list(segmentIds)

    def onHuCalibrationChanged(self, path) -> None:
        if self._parameterNode and not self._updatingGui:
            self._parameterNode.huCalibrationFile = path

    def onShowChart(self, chartNode) -> None:
        if chartNode:
            self.logic.showInLayout(chart=chartNode)

    def onShowTable(self, tableNode) -> None:
        if tableNode:
            self.logic.showInLayout(table=tableNode)

    # -- actions --------------------------------------------------------------------------------
    def onLoadDemoButton(self) -> None:
        nodes = loadDemoCaseWithProgress()
        if not nodes:
            return
        pn = self._parameterNode
        pn.spectVolume, pn.ctVolume = nodes["spect"], nodes["ct"]
        pn.segmentation, pn.profileLine = nodes["segmentation"], nodes["line"]
        pn.segmentIds = demoSegmentIds(nodes["segmentation"])
        self.ui.statusLabel.text = _("Demo case loaded (kidneys, liver, spleen and lesions selected): click Apply.")

    def _compute(self, title: str, button, busyText: str, compute, restore):
        """Install what is missing, run ``compute(progress)`` with a progress dialog (Cancel works) while
        ``button`` is disabled; the error goes to the status line (None returned); ``restore()`` afterwards."""
        if not ensureDependencies():
            self.ui.statusLabel.text = _("Not computed: the Python packages DblurDose needs are not installed.")
            return None
        dialog, progress = progressDialog(title)
        button.enabled = False
        self.ui.statusLabel.text = busyText
        try:
            return compute(progress)
        except Exception as exc:
            dialog.close()  # before the error dialog, not over it
            self.ui.statusLabel.text = reportError(exc, _("DblurDose failed unexpectedly"))
            return None
        finally:
            dialog.close()
            restore()

    def onApplyButton(self) -> None:
        """Compute the dose-rate maps with a progress dialog (Cancel works), show the results."""
        result = self._compute(_("DblurDose"), self.ui.applyButton, _("Computing..."),
                               lambda progress: self.logic.processParameterNode(self._parameterNode, progress=progress),
                               self._checkCanApply)
        if result is None:
            return
        self.logic.showResult(result)
        self.ui.resultChartSelector.setCurrentNode(result.mainChart())
        self.ui.resultTableSelector.setCurrentNode(result.statisticsTable)
        lines = [_("Done: {names}.").format(names=", ".join(n.GetName() for n in result.doseNodes.values()))]
        lines += [_("Warning: {message}").format(message=w) for w in result.warnings]
        self.ui.statusLabel.text = "\n".join(lines)

    def onAbsorbedDoseButton(self) -> None:
        """Absorbed dose from the time points, with a progress dialog; the dose table and time-activity chart shown."""
        result = self._compute(_("DblurDose absorbed dose"), self.ui.absorbedDoseButton,
                               _("Computing the absorbed dose..."),
                               lambda progress: self.logic.processAbsorbedDose(self._parameterNode, progress=progress),
                               self._updateTimePoints)
        if result is None:
            return
        slicer.util.setSliceViewerLayers(foreground=result.doseNode, foregroundOpacity=0.5, fit=True)
        self.logic.showInLayout(table=result.doseTable, chart=result.tacChart)
        self.ui.resultChartSelector.setCurrentNode(result.tacChart)
        self.ui.resultTableSelector.setCurrentNode(result.doseTable)
        lines = [_("Done: {name} (Gy).").format(name=result.doseNode.GetName())]
        lines += [_("Warning: {message}").format(message=w) for w in result.warnings]
        self.ui.statusLabel.text = "\n".join(lines)


def timePointRows(pn) -> list:
    """(hours, SPECT node, CT node) of the parameter node's time points, sorted by time."""
    return sorted(((float(hours), spect, ct) for spect, ct, hours in pn.timePoints), key=lambda row: row[0])


def timePointsProblem(pn):
    """Why the absorbed dose cannot be computed yet (a message for the user), or None."""
    rows = timePointRows(pn)
    hours = [h for h, _s, _c in rows]
    if not rows:
        return _("Add at least one time point: select a SPECT and its CT above, enter its time and click Add.")
    if any(s is None or c is None for _h, s, c in rows):
        return _("A time point's SPECT or CT was deleted from the scene; remove that time point.")
    if len(set(hours)) != len(hours):
        return _("Two time points have the same time; each acquisition needs its own time.")
    if any(h <= 0 for h in hours):
        return _("Times are hours after administration and must be positive.")
    if not pn.segmentation:
        return _("Select the segments (drawn on the earliest time point's CT) above.")
    return None


#
# DblurDoseLogic
#


class DblurDoseLogic(ScriptedLoadableModuleLogic):
    """Computation without GUI: wraps ``DblurDoseLib.mrml.computeDoseRateMaps`` and keeps the
    line-profile observation of the last result (as LineProfile's logic does). The outputs are kept
    in the parameter node and refilled by the next run (as LineProfile's output table and chart)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.result = None

    def getParameterNode(self):
        return DblurDoseParameterNode(super().getParameterNode())

    @staticmethod
    def detectSpectUnits(spectNode):
        """'bqml', 'kbqml', 'mbqml' or 'counts' when the image says, else None (never raises)."""
        try:
            from DblurDoseLib.mrml import spectUnitsFromNode

            units = spectUnitsFromNode(spectNode)
            if units:
                return units
        except Exception:
            logging.debug("DblurDose: units not readable from the node", exc_info=True)
        return DblurDoseLogic._dicomUnits(spectNode)

    @staticmethod
    def _dicomUnits(node):
        """Units (0054,1001) of the DICOM series the node came from; None when unknown or absent."""
        try:
            uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split()
            database = getattr(slicer, "dicomDatabase", None)
            if not uids or database is None:
                return None
            value = database.fileValue(database.fileForInstance(uids[0]), "0054,1001")
            return {"BQML": "bqml", "CNTS": "counts"}.get((value or "").strip().upper())
        except Exception:
            return None

    def process(self, spectNode, ctNode, segmentationNode=None, segmentIds=None, lineNode=None,
                methods=("dvk",), device="auto", spectUnits=None, calibrationCpsPerMBq=None,
                acquisitionDurationS=None, electronOnlyScaling=False, huCalibrationFile=None,
                drvhBins=200, differenceMap=True, show=True, progress=None, reuse=(), spectFwhmMm=0.0):
        """Compute and add the outputs to the scene; returns ``DblurDoseLib.mrml.DoseRateResult``.

        ``reuse``: a previous result's ``nodes()``, refilled instead of new nodes being added.
        ``spectFwhmMm``: the SPECT's Gaussian-equivalent FWHM (mm), given to the CNN when above 0.

        ``spectUnits``: 'bqml', 'kbqml', 'mbqml' or 'counts' (then calibration and duration are
        needed); None reads them from the image (assumes Bq/mL with a warning when it cannot).
        Raises ``DblurDoseLib.errors.DblurDoseError`` with a message for the user.
        """
        ensureLibraryImportable()
        from DblurDoseLib import mrml

        options = {"drvhBins": int(drvhBins), "differenceMap": bool(differenceMap), "show": bool(show),
                   "scale_electron_only": bool(electronOnlyScaling)}
        if spectUnits:
            options["spect_units"] = spectUnits
        if spectUnits == "counts":
            options.update(calibration_cps_per_mbq=calibrationCpsPerMBq, duration_s=acquisitionDurationS)
        if huCalibrationFile:
            from DblurDoseLib.physics.density import load_calibration

            options["hu_calibration"] = load_calibration(huCalibrationFile)
        if spectFwhmMm and "cnn" in methods:
            options["spect_fwhm_mm"] = float(spectFwhmMm)
        self.stopObservingLine()
        self.result = mrml.computeDoseRateMaps(
            spectNode, ctNode, segmentationNode, lineNode, methods=tuple(methods), device=device,
            segmentIds=list(segmentIds) if segmentIds else None, progress=progress, reuse=reuse or (), **options)
        return self.result

    def processParameterNode(self, pn, progress=None):
        """Apply: :meth:`process` with the parameter node's choices, refilling its outputs (kept there)."""
        methods = [m for m, on in (("dvk", pn.methodDvk), ("cnn", pn.methodCnn)) if on]
        result = self.process(
            pn.spectVolume, pn.ctVolume, pn.segmentation, list(pn.segmentIds) or None, pn.profileLine,
            methods=methods, device=DEVICE_CHOICES[pn.device], spectUnits=SPECT_UNIT_CHOICES[pn.spectUnits],
            calibrationCpsPerMBq=pn.calibrationCpsPerMBq, acquisitionDurationS=pn.acquisitionDurationS,
            electronOnlyScaling=pn.electronOnlyScaling, huCalibrationFile=pn.huCalibrationFile or None,
            drvhBins=pn.drvhBins, differenceMap=pn.differenceMap, progress=progress, reuse=list(pn.doseRateOutputs),
            spectFwhmMm=pn.spectFwhmMm)
        pn.doseRateOutputs = result.nodes()
        return result

    def restoreResult(self, pn) -> None:
        """Make the parameter node's outputs the last result again and follow its profile line (after a
        saved scene is loaded, or when the parameter node is set again); never raises."""
        self.stopObservingLine()
        self.result = None
        outputs = list(pn.doseRateOutputs) if pn is not None else []
        if not outputs:  # nothing computed yet: nothing to import either
            return
        try:
            ensureLibraryImportable()
            from DblurDoseLib.mrml import DoseRateResult

            self.result = DoseRateResult.fromNodes(outputs)
            if self.result is not None and self.result.profileTable is not None and pn.profileLine is not None:
                self.result.setLine(pn.profileLine)
        except Exception:  # a panel that cannot restore the profile must still open
            logging.exception("DblurDose: the last result's line profile could not be restored")
            self.result = None

    def processAbsorbedDose(self, pn, progress=None):
        """Absorbed dose from the parameter node's time points; returns ``DblurDoseLib.mrml.AbsorbedDoseResult``.

        Raises ``DblurDoseLib.errors.DblurDoseError`` with a message for the user.
        """
        ensureLibraryImportable()
        from DblurDoseLib import mrml

        options = {"scale_electron_only": bool(pn.electronOnlyScaling), "dvhBins": int(pn.drvhBins)}
        units = SPECT_UNIT_CHOICES[pn.spectUnits]
        if units == "counts":
            options.update(spect_units=units, calibration_cps_per_mbq=pn.calibrationCpsPerMBq,
                           duration_s=pn.acquisitionDurationS)
        if pn.huCalibrationFile:
            from DblurDoseLib.physics.density import load_calibration

            options["hu_calibration"] = load_calibration(pn.huCalibrationFile)
        if pn.spectFwhmMm and pn.methodCnn:
            options["spect_fwhm_mm"] = float(pn.spectFwhmMm)
        rows = timePointRows(pn)
        result = mrml.computeAbsorbedDose(
            [(spect, ct, hours) for hours, spect, ct in rows], pn.segmentation,
            method="cnn" if pn.methodCnn else "dvk", fit=FIT_CHOICES[pn.fitModel],
            singleTimePoint=SINGLE_TIME_POINT_CHOICES[pn.singleTimePoint] if len(rows) == 1 else None,
            register=REGISTRATION_CHOICES[pn.registration], administeredMBq=pn.administeredMBq or None,
            device=DEVICE_CHOICES[pn.device], segmentIds=list(pn.segmentIds) or None, progress=progress,
            reuse=list(pn.absorbedDoseOutputs), **options)
        pn.absorbedDoseOutputs = result.nodes()
        return result

    def setProfileLine(self, lineNode, pn=None) -> None:
        """Profile of the last result along another line (followed while it moves); a profile table and
        chart made for it join the parameter node's outputs (refilled by the next Apply)."""
        if self.result is None:
            return
        self.result.setLine(lineNode)
        if pn is not None and [n.GetID() for n in self.result.nodes()] != [n.GetID() for n in pn.doseRateOutputs if n]:
            pn.doseRateOutputs = self.result.nodes()

    def stopObservingLine(self) -> None:
        if self.result is not None:
            self.result.stopObservingLine()

    def showResult(self, result) -> None:
        """Dose over the CT in the slice views, statistics table and a chart in the layout."""
        dose = result.mainDoseNode()
        if dose is not None:
            slicer.util.setSliceViewerLayers(background=result.ctNode, foreground=dose, foregroundOpacity=0.5,
                                             fit=True)
        self.showInLayout(table=result.statisticsTable, chart=result.mainChart())

    @staticmethod
    def showInLayout(table=None, chart=None) -> None:
        if table is None and chart is None:
            return
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
        appLogic = slicer.app.applicationLogic()
        selection = appLogic.GetSelectionNode()
        if table is not None:
            selection.SetActiveTableID(table.GetID())
            appLogic.PropagateTableSelection()
        if chart is not None:
            selection.SetActivePlotChartID(chart.GetID())
            appLogic.PropagatePlotChartSelection()


#
# DblurDoseTest
#


class DblurDoseTest(ScriptedLoadableModuleTest):
    """Runs the (small) demo case through the logic and checks the outputs."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_DblurDose_demo()

    def test_DblurDose_demo(self):
        missing = [name for name in ("scipy", "torch") if importlib.util.find_spec(name) is None]
        if missing:
            self.skipTest(f"needs {', '.join(missing)} in Slicer's Python (installed on the first Apply)")
        self.delayDisplay("Making and loading the small demo case")
        nodes = loadDemoCase(small=True)
        logic = DblurDoseLogic()
        self.delayDisplay("Computing the DVK dose rate")
        fractions = []
        result = logic.process(nodes["spect"], nodes["ct"], nodes["segmentation"], lineNode=nodes["line"],
                               methods=("dvk",), device="cpu", progress=lambda f, m: fractions.append(f))
        dose = result.doseNodes["dvk"]
        self.assertEqual(dose.GetVoxelValueUnits().GetCodeValue(), "mGy/h")
        self.assertEqual(dose.GetAttribute("DicomRtImport.DoseVolume"), "1")
        self.assertEqual(dose.GetImageData().GetDimensions(), nodes["ct"].GetImageData().GetDimensions())
        self.assertGreater(dose.GetImageData().GetScalarRange()[1], 0.0)
        self.assertGreater(result.statisticsTable.GetNumberOfRows(), 0)
        self.assertGreater(result.profileTable.GetNumberOfRows(), 1)
        self.assertEqual(fractions, sorted(fractions))
        # moving the line refreshes the profile
        rows = result.profileTable.GetNumberOfRows()
        p = [0.0, 0.0, 0.0]
        nodes["line"].GetNthControlPointPositionWorld(1, p)
        nodes["line"].SetNthControlPointPositionWorld(1, p[0] / 2, p[1], p[2])
        self.assertLess(result.profileTable.GetNumberOfRows(), rows)
        logic.stopObservingLine()
        self.delayDisplay("Test passed")
