"""Registration of a SPECT/CT time point's CT to the reference time point's CT.

Why SimpleITK (``sitk.ImageRegistrationMethod``) rather than itk-elastix: SimpleITK is already a
dependency of DblurDose (every image is read through it), so registration adds no wheel and no
parameter-file format; rigid CT-to-CT registration of one patient is well within what it does.

Method (``mode="rigid"``):

* transform: ``Euler3DTransform`` (3 rotations, 3 translations), centred on the reference body's
  centre of mass and initialised by aligning the two body masks' centres of mass ("moments"),
  or the two fields' centres ("geometry");
* metric: Mattes mutual information (32 bins) on HU. Both images are CTs of one patient, so
  correlation would also do, but low-dose SPECT/CTs of different days differ in tube voltage,
  noise, beam hardening, iodine contrast and bladder/bowel filling; mutual information only asks
  that HU correspond, not that they match linearly. The HU Pearson correlation is reported as a
  quality figure instead;
* only samples inside the reference body mask (HU > ``BODY_HU_THRESHOLD``, largest connected part,
  so the couch and air are ignored), dilated by ``MASK_MARGIN_MM`` to keep the skin edge;
* multi-resolution: levels at about ``LEVEL_SPACINGS_MM`` (shrink factors from the CT's coarsest
  voxel axis) with Gaussian smoothing of half that spacing, each sampled at ``SAMPLING_FRACTION``
  of its voxels but at most ``MAX_SAMPLES`` points;
* optimizer: regular-step gradient descent, scales from the physical shift of the parameters
  (1 step unit ~ 1 mm of motion anywhere in the field);
* deterministic: random sampling with a fixed seed (``SAMPLING_SEED``) and a fixed thread count.

``mode="deformable"`` adds a B-spline transform on top of the rigid result: a coarse control-point
mesh (``BSPLINE_MESH_MM``), coefficients bounded to +-``BSPLINE_MAX_MM`` (the regularisation, with
the coarse mesh), L-BFGS-B on the same metric. ``mode="none"`` is the identity.

A result is refused (one-line :class:`DblurDoseError`) when, after registration, less than
``MIN_BODY_OVERLAP`` of the reference body lies in the moved CT's field, or inside the common field
the body masks overlap with a Dice below ``MIN_BODY_DICE`` or the HU correlation inside the
reference body is below ``MIN_HU_CORRELATION``; in every mode ("none" too: then register).

Moving images (:func:`apply_to_activity`, :func:`apply_to_volume`): the rigid part is composed into
the image geometry (new origin and direction, the same array: exact, no interpolation), and the
image is then resampled once onto the reference grid by :mod:`DblurDoseLib.geometry.resample`
(activity: conserving the total activity inside the field). A deformable residual is applied in
that one resampling; the activity is then multiplied by the deformation's Jacobian determinant
and renormalised to the total inside the field (see :func:`resample.resample_activity`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DblurDoseError
from ..io.volume import Volume
from .resample import ResampleReport, resample_activity, resample_labels, resample_linear

if TYPE_CHECKING:
    import SimpleITK

MODES = ("rigid", "deformable", "none")

#: HU above which a voxel belongs to the body (lungs excluded, the skin edge kept), HU
BODY_HU_THRESHOLD = -500.0
#: HU given to the moving CT outside its field when it is resampled (air)
AIR_HU = -1000.0
#: refuse a registration whose body masks (on the reference grid) overlap less than this (Dice)
MIN_BODY_DICE = 0.8
#: refuse a registration whose HU Pearson correlation inside the reference body is below this
MIN_HU_CORRELATION = 0.5
#: refuse a registration that leaves less than this fraction of the reference body inside the moved CT's field
MIN_BODY_OVERLAP = 0.3
#: the metric samples inside the reference body dilated by this much, mm
MASK_MARGIN_MM = 10.0
#: approximate voxel size of the multi-resolution levels, coarse to fine, mm
LEVEL_SPACINGS_MM = (16.0, 8.0, 4.0)
#: both CTs are registered on grids no finer than this (mm per axis), Gaussian-smoothed to it first: a
#: 0.98 mm CT would otherwise make the finest level work on every voxel (3x the time for a rigid
#: result that is the same to a fraction of a voxel); quality is judged on the same grids
WORKING_SPACING_MM = 2.0
#: Mattes mutual information histogram bins
HISTOGRAM_BINS = 32
#: fraction of the voxels the metric samples at each level (those outside the body mask are dropped) ...
SAMPLING_FRACTION = 0.25
#: ... but no more than this many per level
MAX_SAMPLES = 200_000
#: seed of the metric's random sampling: the same inputs give the same transform
SAMPLING_SEED = 20261206
#: rigid optimizer: first and smallest step (mm-equivalent), iterations per level
RIGID_STEP_MM = (4.0, 0.01)
RIGID_ITERATIONS = 200
#: B-spline control-point spacing and the bound on its coefficients, mm
BSPLINE_MESH_MM = 60.0
BSPLINE_MAX_MM = 20.0
BSPLINE_ITERATIONS = 100


@dataclass
class Registration:
    """A CT registered to the reference CT, and how well.

    ``transform`` maps points of the reference (fixed) space to the moving time point's space,
    as SimpleITK defines it: ``sitk.Resample(moving, reference, transform)`` puts the moving
    image on the reference grid. It is ``rigid`` (an ``Euler3DTransform``) followed, for
    ``mode="deformable"``, by ``deformation`` (a ``BSplineTransform``, applied first).
    """

    mode: str
    rigid: object  # sitk.Euler3DTransform
    deformation: object | None  # sitk.BSplineTransform, or None
    metric_value: float  # Mattes mutual information at the end (negative: lower is better); nan for "none"
    body_dice: float  # Dice of the body masks on the reference grid, after registration
    hu_correlation: float  # Pearson correlation of HU inside the reference body, after registration
    body_overlap: float  # fraction of the reference body inside the moved CT's field (Dice and correlation there)
    rotation_deg: tuple[float, float, float]  # Euler angles about x, y, z (ITK ZXY composition), degrees
    translation_mm: tuple[float, float, float]  # translation of the rigid part about ``centre_mm``, mm
    centre_mm: tuple[float, float, float]  # centre of rotation (reference body centre), mm
    label: str = "moving time point"
    stop_condition: str = ""

    @property
    def transform(self) -> SimpleITK.Transform:
        """The whole reference -> moving transform (a composite when deformable).

        Returns
        -------
        SimpleITK.Transform
            ``rigid``, or a ``CompositeTransform`` applying ``deformation`` first, then ``rigid`` (mm).
        """
        import SimpleITK as sitk

        if self.deformation is None:
            return self.rigid
        return sitk.CompositeTransform([self.rigid, self.deformation])  # the last added is applied first

    @property
    def rotation_angle_deg(self) -> float:
        """The rigid rotation as one angle about one axis, degrees."""
        matrix = np.asarray(self.rigid.GetMatrix()).reshape(3, 3)
        return float(np.degrees(np.arccos(np.clip((np.trace(matrix) - 1.0) / 2.0, -1.0, 1.0))))


# --- masks and quality ---------------------------------------------------------------------------
def body_mask(ct: Volume) -> np.ndarray:
    """Boolean [z,y,x] mask of the body: HU > BODY_HU_THRESHOLD, its largest connected part (no couch).

    Parameters
    ----------
    ct : Volume
        A CT (HU).

    Returns
    -------
    np.ndarray
        Bool, the CT's shape.
    """
    import SimpleITK as sitk

    above = ct.with_array((np.asarray(ct.array) > BODY_HU_THRESHOLD).astype(np.uint8)).to_sitk()
    parts = sitk.RelabelComponent(sitk.ConnectedComponent(above), sortByObjectSize=True)
    return sitk.GetArrayFromImage(parts) == 1


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (0 when both are empty).

    Parameters
    ----------
    a, b : np.ndarray
        Boolean masks of one shape.

    Returns
    -------
    float
        ``2 |a & b| / (|a| + |b|)``, in [0, 1].
    """
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int(np.logical_and(a, b).sum()) / total if total else 0.0


def _quality(moving_ct: Volume, reference_ct: Volume, rigid, deformation) -> tuple[float, float, float]:
    """Body Dice, HU correlation (both inside the common field) and the body overlap of the moved CT."""
    moved = apply_to_volume(moving_ct, _Parts(rigid, deformation), reference_ct, default=np.nan)
    hu = np.asarray(moved.array)
    inside = np.isfinite(hu)
    whole_body = body_mask(reference_ct)
    ref_body = whole_body & inside
    overlap = float(ref_body.sum()) / max(1, int(whole_body.sum()))
    moved_body = body_mask(moved.with_array(np.where(inside, hu, AIR_HU))) & inside
    score = dice(ref_body, moved_body)
    ref_hu = np.asarray(reference_ct.array, dtype=np.float64)[ref_body]
    if ref_hu.size < 2 or np.std(ref_hu) == 0 or np.std(hu[ref_body]) == 0:
        return score, 0.0, overlap
    return score, float(np.corrcoef(ref_hu, hu[ref_body].astype(np.float64))[0, 1]), overlap


def _check_quality(label: str, mode: str, body_dice: float, correlation: float, overlap: float) -> None:
    if overlap < MIN_BODY_OVERLAP:
        raise DblurDoseError(
            f"registration of the {label} CT to the reference CT failed (mode '{mode}'): only {overlap:.0%} of the "
            f"reference body lies in its field (needs >= {MIN_BODY_OVERLAP:.0%}); check that both CTs cover the same "
            "body region, or pre-align them (e.g. in Slicer) and retry"
        )
    if body_dice >= MIN_BODY_DICE and correlation >= MIN_HU_CORRELATION:
        return
    fix = ("register it (mode 'rigid')" if mode == "none" else
           "check that both CTs show the same patient and body region, or pre-align them (e.g. in Slicer) and retry")
    raise DblurDoseError(
        f"registration of the {label} CT to the reference CT failed (mode '{mode}'): body Dice {body_dice:.2f} "
        f"(needs >= {MIN_BODY_DICE}), HU correlation {correlation:.2f} (needs >= {MIN_HU_CORRELATION}); {fix}"
    )


# --- registration ---------------------------------------------------------------------------------
def working_ct(ct: Volume, spacing_mm: float = WORKING_SPACING_MM) -> Volume:
    """The CT on a grid over the same field with no axis finer than ``spacing_mm`` (mm), float32 HU.

    Axes finer than that are first smoothed by a Gaussian of FWHM ``sqrt(spacing_mm^2 - s^2)`` (so
    that the coarser grid does not alias), then the CT is trilinearly resampled; a CT that is
    already that coarse is returned as it is.

    Parameters
    ----------
    ct : Volume
        A CT (HU).
    spacing_mm : float
        The finest voxel size allowed per axis (mm).

    Returns
    -------
    Volume
        The CT (HU) on the working grid (air, :data:`AIR_HU`, outside the field), or ``ct`` itself.
    """
    from scipy.ndimage import gaussian_filter

    from .resample import resample_linear, working_grid

    target = tuple(max(float(s), spacing_mm) for s in ct.spacing)
    grid = working_grid(ct, target)
    if grid is None:
        return ct
    fwhm = [np.sqrt(max(t * t - s * s, 0.0)) for t, s in zip(target, ct.spacing)]
    sigma = [f / 2.3548 / s for f, s in zip(fwhm, ct.spacing)][::-1]  # voxels, z y x
    smoothed = gaussian_filter(np.asarray(ct.array, dtype=np.float32), sigma, mode="nearest")
    return resample_linear(ct.with_array(smoothed), grid, default=AIR_HU)


def _float_image(volume: Volume):
    return volume.with_array(np.asarray(volume.array, dtype=np.float32)).to_sitk()


def _mask_image(ct: Volume, mask: np.ndarray):
    return ct.with_array(mask.astype(np.uint8)).to_sitk()


def _initial_rigid(moving_ct: Volume, reference_ct: Volume, initialisation: str, label: str):
    """Euler3D centred on the reference body, translated to align body centres (or field centres)."""
    import SimpleITK as sitk

    masks = []
    for what, ct in (("reference", reference_ct), (label, moving_ct)):
        mask = body_mask(ct)
        if mask.sum() == 0:
            raise DblurDoseError(
                f"the {what} CT shows no body (no voxel above {BODY_HU_THRESHOLD:g} HU); "
                "give the CT of that time point in Hounsfield units"
            )
        masks.append(_mask_image(ct, mask))
    how = {"moments": sitk.CenteredTransformInitializerFilter.MOMENTS,
           "geometry": sitk.CenteredTransformInitializerFilter.GEOMETRY}[initialisation]
    if how == sitk.CenteredTransformInitializerFilter.MOMENTS:
        images = [sitk.Cast(m, sitk.sitkFloat32) for m in masks]
    else:
        images = [_float_image(reference_ct), _float_image(moving_ct)]
    return sitk.CenteredTransformInitializer(images[0], images[1], sitk.Euler3DTransform(), how)


def _levels(reference_ct: Volume) -> tuple[list[int], list[float], list[float]]:
    """Shrink factors, smoothing sigmas (mm) and sampling fractions of the LEVEL_SPACINGS_MM levels.

    One shrink factor serves all three axes (SimpleITK), so it is set by the coarsest axis (a
    0.98x0.98x3 mm CT is not shrunk to 12 mm slices); the sampling fraction keeps each level
    under MAX_SAMPLES points, so a fine CT costs no more per iteration than a coarse one.
    """
    coarsest_axis = max(reference_ct.spacing)
    shrink = [max(1, int(round(target / coarsest_axis))) for target in LEVEL_SPACINGS_MM]
    sigmas = [0.5 * target if factor > 1 else 0.0 for target, factor in zip(LEVEL_SPACINGS_MM, shrink)]
    voxels = float(np.prod(reference_ct.shape))
    fractions = [min(SAMPLING_FRACTION, MAX_SAMPLES * factor ** 3 / voxels) for factor in shrink]
    return shrink, sigmas, fractions


def _method(fixed_mask, threads: int, shrink: list[int], sigmas: list[float], fractions: list[float]):
    """An ImageRegistrationMethod with the metric, sampling, masks and levels set (no optimizer)."""
    import SimpleITK as sitk

    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentagePerLevel(fractions, SAMPLING_SEED)
    method.SetMetricFixedMask(fixed_mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel(sigmas)
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetNumberOfThreads(threads)
    return method


@contextlib.contextmanager
def _threads(count: int):
    """Every SimpleITK filter (the pyramid's smoothing too, not only the metric) on ``count`` threads."""
    import SimpleITK as sitk

    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(count)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _execute(method, fixed, moving, label: str):
    try:
        with _threads(method.GetNumberOfThreads()):
            return method.Execute(fixed, moving)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1].strip()[:160]
        raise DblurDoseError(
            f"registration of the {label} CT to the reference CT failed ({reason}); check that both CTs show "
            "the same patient and overlap, or pre-align them (e.g. in Slicer) and retry"
        ) from None


def _register_rigid(fixed, moving, method, initial, label: str):
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=RIGID_STEP_MM[0], minStep=RIGID_STEP_MM[1], numberOfIterations=RIGID_ITERATIONS,
        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(initial, inPlace=True)
    _execute(method, fixed, moving, label)
    return initial


def _register_bspline(fixed, moving, method, rigid, label: str):
    import SimpleITK as sitk

    size = fixed.GetSize()
    spacing = fixed.GetSpacing()
    mesh = [max(1, int(round(n * s / BSPLINE_MESH_MM))) for n, s in zip(size, spacing)]
    bspline = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
    method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=BSPLINE_ITERATIONS,
                                maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=4 * BSPLINE_ITERATIONS,
                                costFunctionConvergenceFactor=1e7, lowerBound=-BSPLINE_MAX_MM,
                                upperBound=BSPLINE_MAX_MM)
    method.SetMovingInitialTransform(rigid)
    method.SetInitialTransform(bspline, inPlace=True)
    _execute(method, fixed, moving, label)
    return bspline


def register_ct(moving_ct: Volume, reference_ct: Volume, mode: str = "rigid", *, label: str = "moving time point",
                initialisation: str = "moments", threads: int = 2) -> Registration:
    """Register one time point's CT (HU) to the reference time point's CT (HU).

    Parameters
    ----------
    moving_ct, reference_ct : Volume
        CTs in HU, any grids (spacing in mm, LPS). The result maps reference points to moving points.
    mode : {"rigid", "deformable", "none"}
        Euler3D; Euler3D then a coarse regularised B-spline; or the identity (already aligned).
    label : str
        The time point's name, used in error messages (e.g. "day 3").
    initialisation : {"moments", "geometry"}
        Align the body masks' centres of mass, or the fields' centres, before optimising.
    threads : int
        Threads of the registration (the result depends on it only through rounding).

    Returns
    -------
    Registration
        Transform, metric value, body Dice, HU correlation and rigid parameters (degrees, mm).

    Raises
    ------
    DblurDoseError
        Unknown mode, a CT without a body, no overlap, or a result below MIN_BODY_DICE /
        MIN_HU_CORRELATION / MIN_BODY_OVERLAP, or an optimizer error (e.g. no overlap left).
    """
    import SimpleITK as sitk

    if mode not in MODES:
        raise DblurDoseError(f"unknown registration mode {mode!r}; choose one of {', '.join(MODES)}")
    if initialisation not in ("moments", "geometry"):
        raise DblurDoseError(f"unknown initialisation {initialisation!r}; choose 'moments' or 'geometry'")
    deformation, metric, stop = None, float("nan"), "identity"
    moving_ct, reference_ct = working_ct(moving_ct), working_ct(reference_ct)
    if mode == "none":
        rigid = sitk.Euler3DTransform()
    else:
        rigid = _initial_rigid(moving_ct, reference_ct, initialisation, label)
        fixed, moving = _float_image(reference_ct), _float_image(moving_ct)
        mask = sitk.BinaryDilate(_mask_image(reference_ct, body_mask(reference_ct)),
                                 [max(1, int(round(MASK_MARGIN_MM / s))) for s in reference_ct.spacing])
        shrink, sigmas, fractions = _levels(reference_ct)
        method = _method(mask, threads, shrink, sigmas, fractions)
        rigid = _register_rigid(fixed, moving, method, rigid, label)
        metric, stop = method.GetMetricValue(), method.GetOptimizerStopConditionDescription()
        if mode == "deformable":
            method = _method(mask, threads, shrink[-2:], sigmas[-2:], fractions[-2:])
            deformation = _register_bspline(fixed, moving, method, rigid, label)
            metric, stop = method.GetMetricValue(), method.GetOptimizerStopConditionDescription()
    body_dice, correlation, overlap = _quality(moving_ct, reference_ct, rigid, deformation)
    _check_quality(label, mode, body_dice, correlation, overlap)
    params = rigid.GetParameters()
    return Registration(
        mode=mode, rigid=rigid, deformation=deformation, metric_value=float(metric), body_dice=body_dice,
        hu_correlation=correlation, body_overlap=overlap, rotation_deg=tuple(float(np.degrees(a)) for a in params[:3]),
        translation_mm=tuple(float(t) for t in params[3:]), centre_mm=tuple(float(c) for c in rigid.GetCenter()),
        label=label, stop_condition=stop,
    )


# --- moving images with a registration -----------------------------------------------------------
@dataclass
class _Parts:
    """The two parts of a registration (what :func:`apply_to_volume` needs), before quality is known."""

    rigid: object
    deformation: object | None


def moved_geometry(volume: Volume, rigid: SimpleITK.Euler3DTransform) -> Volume:
    """The same array with origin and direction carried into reference space (exact, no interpolation).

    ``rigid`` maps reference points to moving points (p_moving = R (p - c) + c + t); the image's
    voxels move by its inverse: origin -> T^-1(origin), direction -> R^T direction.

    Parameters
    ----------
    volume : Volume
        An image of the moving time point (geometry in mm).
    rigid : SimpleITK.Euler3DTransform
        The registration's rigid part (reference -> moving, mm).

    Returns
    -------
    Volume
        The same array and spacing, with the new origin (mm) and direction; metadata copied.
    """
    inverse = rigid.GetInverse()
    rotation = np.asarray(rigid.GetMatrix()).reshape(3, 3)
    origin = inverse.TransformPoint(tuple(float(o) for o in volume.origin))
    return Volume(volume.array, volume.spacing, origin, rotation.T @ volume.direction, dict(volume.metadata))


def apply_to_activity(spect: Volume, registration: Registration, reference_grid: Volume,
                      report: list[ResampleReport] | None = None) -> Volume:
    """A time point's SPECT (Bq/mL) moved onto the reference CT grid, total activity conserved.

    Rigid: the SPECT's geometry is carried into reference space exactly, then
    :func:`resample.resample_activity` moves it onto ``reference_grid`` (the total inside the field is
    conserved). Deformable: the B-spline residual is applied in that same resampling, the
    concentration is multiplied by its Jacobian determinant and renormalised to the total inside
    the field.

    Parameters
    ----------
    spect : Volume
        Activity concentration (Bq/mL) of the time point.
    registration : Registration
        Its CT's registration to the reference CT.
    reference_grid : Volume
        The reference CT (its geometry only).
    report : list of ResampleReport, optional
        Receives the :class:`resample.ResampleReport` (Bq) when given a list.

    Returns
    -------
    Volume
        Activity concentration (Bq/mL, float32) on the reference grid.
    """
    moved = moved_geometry(spect, registration.rigid)
    return resample_activity(moved, reference_grid, report, transform=registration.deformation)


def apply_to_volume(volume: Volume, registration: Registration | _Parts, reference_grid: Volume,
                    kind: str = "linear", default: float = AIR_HU) -> Volume:
    """A time point's CT or labelmap moved onto the reference grid with its registration.

    Parameters
    ----------
    volume : Volume
        A CT (HU) or other scalar image (``kind="linear"``), or a labelmap (``kind="nearest"``).
    registration : Registration
        Its CT's registration to the reference CT.
    reference_grid : Volume
        The reference CT (its geometry only).
    kind : str
        ``"linear"`` (trilinear) or ``"nearest"`` (labels; 0 outside the field).
    default : float
        Value outside the field for ``"linear"`` (in the image's units; HU of air by default).

    Returns
    -------
    Volume
        The image on the reference grid.

    Raises
    ------
    DblurDoseError
        For an unknown ``kind``.
    """
    moved = moved_geometry(volume, registration.rigid)
    if kind == "nearest":
        return resample_labels(moved, reference_grid, transform=registration.deformation)
    if kind != "linear":
        raise DblurDoseError(f"unknown interpolation {kind!r}; choose 'linear' (CT, images) or 'nearest' (labels)")
    return resample_linear(moved, reference_grid, default=default, transform=registration.deformation)
