"""Seeded anthropomorphic virtual patients for Lu-177 DOTATATE dose-rate studies.

The paper built its 14 virtual patients from Ga-68 DOTATATE PET/CT of real patients (9 men and
5 women, 49-100 kg, lesions of 4-181 mL in and outside the liver), on the CT grid of
512x512x130 voxels at 0.98x0.98x3 mm with the liver and kidneys centred in the 39 cm axial field.
Those images are not ours to ship, so :func:`make_phantom` draws a comparable patient from a seed:

* anatomy from smooth analytic shapes (superquadric body outline with angular harmonics,
  ellipsoids, tubes, shells), each deformed by low-frequency random Fourier modes, all defined in
  physical millimetres (LPS: +x patient left, +y posterior, +z superior; arrays ``[z, y, x]``
  with identity direction and the grid centred on the body), so any grid gives the same patient;
* a CT in HU with realistic tissue values, smooth texture and white noise, and its density via
  :func:`DblurDoseLib.physics.density.hu_to_density`;
* the true activity (Bq/mL) of a 7.4 GBq Lu-177 DOTATATE cycle at ``time_days`` after
  injection: per-tissue concentrations at day 1 drawn from the ranges in :data:`UPTAKE_DAY1`,
  mono-exponential effective clearance (:data:`EFFECTIVE_HALF_LIFE_H`), low-frequency
  multiplicative heterogeneity inside organs, and PET-like edges (a Gaussian of ``pet_fwhm_mm``
  in millimetres, like the paper's PET-based truth); zero outside the body;
* 4-12 lesions (:data:`LESION_SITES`: liver, lung, lung base, nodes, pancreas, mesentery, beside a
  kidney, in a vertebral body), a share of them small (1-10 mL), each at a day-1 contrast of
  3:1-100:1 (log-uniform) to the tissue around it, clearing with its own effective half-life; bone
  lesions are sclerotic (:data:`BONE_LESION_HU`), so their density is bone-like;
* an int16 labelmap of organs and lesions (the paper's VOIs: healthy liver, each lesion, left
  and right kidney, spleen, lumbar vertebrae L2-L5, ...) and a tissue map that resolves
  sub-compartments (kidney cortex / medulla / pelvis, cortical / trabecular bone, necrosis).

Overlaps are resolved by painting order, later wins (:data:`PAINT_PRIORITY` lists it):
body fat < wall muscle < visceral fat < lungs < mediastinal fat < bowel < psoas < stomach <
liver < gallbladder < spleen < pancreas < heart < vessels < perirenal fat < kidneys < adrenals <
bones < lesions. Organ sizes are calibrated (by scaling each shape) so that what remains after
the overlaps hits a volume drawn per patient.

Layout: this module holds the public API (:class:`Phantom`, :func:`make_phantom`,
:func:`make_time_series`, :func:`voi_masks`); the tables (labels, tissues, uptake, lesion sites) are
in :mod:`.anatomy` and re-exported here, the shapes in :mod:`.primitives`, the seeded patient (every
random draw) in :mod:`.patient`, and painting it onto a grid (labels, CT, activity) in :mod:`.painting`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import DblurDoseError
from ..io.volume import Volume
from ..physics.density import hu_to_density
from .anatomy import (  # noqa: F401  the tables are part of this module's public API
    _LESION_CLASS_TARGETS_ML,
    BONE_LESION_HU,
    EFFECTIVE_HALF_LIFE_H,
    INJECTED_ACTIVITY_MBQ,
    LABELS,
    LESION_CONTRAST,
    LESION_COUNT,
    LESION_LABEL_BASE,
    LESION_SITES,
    LESION_SIZE_CLASSES_ML,
    LESIONS_PER_CLASS,
    LU177_HALF_LIFE_H,
    LUMBAR_L2_L5,
    PAINT_PRIORITY,
    SMALL_LESION_ML,
    SMALL_LESION_SHARE,
    STANDARD_FIELD_MM,
    STANDARD_SHAPE,
    STANDARD_SPACING,
    TISSUES,
    UPTAKE_DAY1,
    VERTEBRA_LABEL_BASE,
    VERTEBRA_LEVELS,
)
from .painting import (
    Canvas,
    concentrations,
    paint_activity,
    paint_anatomy,
    paint_ct,
    paint_lesions,
    uptake_heterogeneity,
)
from .patient import Patient
from .primitives import F32, Field, Grid


@dataclass
class Phantom:
    """A virtual patient on one CT grid."""

    hu: Volume  # HU, float32
    density: Volume  # g/cm3, float32
    activity: Volume  # Bq/mL, float32 (true activity, PET-like edges)
    labels: Volume  # int16 labelmap
    label_names: dict[int, str]
    info: dict  # seed, sex, height/weight, lesion list, time_days, total activity MBq, ...
    tissue: Volume | None = None  # uint8 tissue classes (TISSUES), sub-organ compartments
    tissue_names: dict[int, str] = field(default_factory=dict)


def standard_spacing(shape: tuple[int, int, int]) -> tuple[float, float, float]:
    """(x, y, z) spacing in mm that makes a grid of ``shape`` (z, y, x) cover the standard field."""
    nz, ny, nx = (int(n) for n in shape)
    return (STANDARD_FIELD_MM[0] / nx, STANDARD_FIELD_MM[1] / ny, STANDARD_FIELD_MM[2] / nz)


def voi_masks(phantom: Phantom) -> dict[str, np.ndarray]:
    """Boolean masks of the VOIs: each label by its name, then the evaluation's VOIs
    (:func:`~DblurDoseLib.simulation.vois.evaluation_vois`: ``liver`` is the whole organ with its
    lesions, ``healthy_liver`` the liver label, ``lesion:NAME``, ``lumbar_L2_L5``), kidney
    sub-compartments, ``lungs`` and ``body``."""
    from .vois import evaluation_vois

    labels = np.asarray(phantom.labels.array)
    out = {name: labels == value for value, name in phantom.label_names.items()}
    out.update(evaluation_vois(labels, phantom.label_names, phantom.info.get("lesions", []), min_lesion_voxels=1))
    out["lungs"] = np.isin(labels, [LABELS["lung_left"], LABELS["lung_right"]])
    out["body"] = labels > 0
    if phantom.tissue is not None:
        tissue = np.asarray(phantom.tissue.array)
        for side in ("left", "right"):
            kid = labels == LABELS[f"kidney_{side}"]
            for part in ("cortex", "medulla", "pelvis"):
                out[f"kidney_{side}_{part}"] = kid & (tissue == TISSUES[f"kidney_{part}"])
    return out


#: The organ each lesion site counts towards in :attr:`Phantom.info` (others: ``soft_tissue``).
_LESION_ORGAN = {"liver": "liver", "lung": "lung", "lung_base": "lung", "pancreas": "pancreas", "bone": "bone"}


def make_phantom(seed: int, shape=STANDARD_SHAPE, spacing=STANDARD_SPACING, time_days: float = 1.0,
                 *, pet_fwhm_mm: float = 5.0, ct_noise_hu: float = 12.0, lesion_classes: bool = False) -> Phantom:
    """A seeded virtual patient on a CT grid of ``shape`` (z, y, x) voxels at ``spacing`` (x, y, z) mm.

    The anatomy and uptake depend on ``seed`` only (physical millimetres), so grids of different
    resolution over the same field give the same patient. ``spacing=None`` picks the spacing that
    makes ``shape`` cover the standard 50.2 x 50.2 x 39 cm field. ``time_days`` (days after a
    7.4 GBq injection) scales every tissue by its effective clearance from day 1.

    Lesions (4-12, :data:`LESION_SITES`) have volumes of 1 mL up (:data:`SMALL_LESION_SHARE` of
    them 1-10 mL) and a day-1 contrast of 3:1 to 100:1 to the tissue around them; each is listed
    in ``info["lesions"]`` (site, volume_ml, contrast, necrotic, ...). ``lesion_classes=True``
    (test phantoms) adds lesions until each class of :data:`LESION_SIZE_CLASSES_ML` (1-5, 5-20,
    >20 mL, by the analytic volume) holds at least :data:`LESIONS_PER_CLASS`; the same seed gives
    the same patient with or without it, plus those lesions.
    """
    return _make_phantoms(seed, shape, spacing, [time_days], pet_fwhm_mm=pet_fwhm_mm, ct_noise_hu=ct_noise_hu,
                          lesion_classes=lesion_classes)[0][0]


def make_time_series(seed: int, times_h: Sequence[float], shape=STANDARD_SHAPE, spacing=STANDARD_SPACING, *,
                     pet_fwhm_mm: float = 5.0, ct_noise_hu: float = 12.0,
                     lesion_classes: bool = False) -> tuple[list[Phantom], Volume]:
    """One virtual patient at several times, and the time integral of its true activity.

    Each tissue and lesion clears mono-exponentially with its own effective half-life
    (``info["effective_half_lives_h"]``, each lesion's ``effective_half_life_h``) from its day-1
    uptake, the kinetics :func:`make_phantom` uses; the anatomy, CT and uptake heterogeneity are
    the same at every time (a perfectly still patient: registration has nothing to correct).

    Parameters
    ----------
    seed : int
        The patient (as :func:`make_phantom`).
    times_h : sequence of float
        Acquisition times, hours after the injection of 7.4 GBq, each in (0, 1440].
    shape, spacing, pet_fwhm_mm, ct_noise_hu, lesion_classes
        As :func:`make_phantom`.

    Returns
    -------
    phantoms : list of Phantom
        One per time, sharing the ``hu``, ``density``, ``labels`` and ``tissue`` arrays.
    time_integrated_activity : Volume
        The true activity integrated from the injection to infinity, Bq h/mL (float32, on the
        phantoms' grid): the exact source of the true absorbed dose (dose is linear in activity,
        so the dose rate per Bq/mL of any engine, times this, gives mGy).
    """
    phantoms, integral = _make_phantoms(seed, shape, spacing, [float(t) / 24.0 for t in times_h],
                                        pet_fwhm_mm=pet_fwhm_mm, ct_noise_hu=ct_noise_hu,
                                        lesion_classes=lesion_classes, integrate=True)
    return phantoms, integral


def _checked_grid(seed, shape, spacing, times_days: Sequence[float]) -> tuple[int, tuple, tuple]:
    """``seed``, ``shape`` and ``spacing`` as int and tuples of int/float (``spacing=None``: the standard
    field's), after checking them and the times (days after injection)."""
    try:
        seed = int(seed)
        shape = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise DblurDoseError(f"make_phantom needs an integer seed and a 3-integer shape, got {seed!r}, {shape!r}") from None
    if len(shape) != 3 or min(shape) < 2:
        raise DblurDoseError(f"the phantom grid shape must be 3 positive sizes (z, y, x), got {shape}")
    if spacing is None:
        spacing = standard_spacing(shape)
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise DblurDoseError(f"the phantom spacing must be 3 positive values (x, y, z) in mm, got {spacing}")
    for time_days in times_days:
        if not (0.0 < float(time_days) <= 60.0):
            raise DblurDoseError(f"time_days must be in (0, 60] days after injection, got {time_days}")
    return seed, shape, spacing


def _make_phantoms(seed: int, shape, spacing, times_days: Sequence[float], *, pet_fwhm_mm: float,
                   ct_noise_hu: float, lesion_classes: bool,
                   integrate: bool = False) -> tuple[list[Phantom], Volume | None]:
    """The patient at each of ``times_days`` (and the time-integrated activity when ``integrate``)."""
    seed, shape, spacing = _checked_grid(seed, shape, spacing, times_days)
    P = Patient(seed, lesion_classes)
    grid = Grid(shape, spacing)
    cv = Canvas(grid)
    paint_anatomy(P, cv)
    paint_lesions(P, cv)
    labels, tissue = cv.labels, cv.tissue

    # smooth fields on fixed physical lattices (grid-independent)
    frng = np.random.default_rng([seed, 7])
    box_lo, box_hi = [-300.0, -300.0, -280.0], [300.0, 300.0, 280.0]
    f_act = Field(frng, box_lo, box_hi, 4.0, 10.0).sample_grid(grid.z, grid.y, grid.x)
    f_ct = Field(frng, box_lo, box_hi, 4.0, 6.0).sample_grid(grid.z, grid.y, grid.x)
    hu = paint_ct(P, grid, labels, tissue, f_ct, np.random.default_rng([seed, 11]), ct_noise_hu)
    density = hu_to_density(hu, exact=True)  # the truth: interpolated per voxel

    heterogeneity = uptake_heterogeneity(f_act, labels, concentrations(P, 1.0)[0].size)
    del f_act
    geo = dict(spacing=spacing, origin=grid.origin)
    label_names = _label_names(P, grid)
    phantoms = []
    for time_days in times_days:
        time_days = float(time_days)
        lut, tf, conc = concentrations(P, time_days)
        act = paint_activity(lut, tf, labels, tissue, heterogeneity, spacing, pet_fwhm_mm)
        info = _phantom_info(P, labels, label_names, act, conc, spacing, time_days)
        info.update({"pet_fwhm_mm": pet_fwhm_mm, "ct_noise_hu": ct_noise_hu, "paint_priority": list(PAINT_PRIORITY)})
        hu_v = Volume(hu, **geo)
        hu_v.metadata = {"seed": str(seed), "time_days": str(time_days), "quantity": "CT", "units": "HU"}
        phantoms.append(Phantom(
            hu=hu_v,
            density=Volume(density, **geo),
            activity=Volume(act.astype(F32, copy=False), **geo),
            labels=Volume(labels, **geo),
            label_names=dict(label_names),
            info=info,
            tissue=Volume(tissue, **geo),
            tissue_names={v: k for k, v in TISSUES.items()},
        ))
    integral = None
    if integrate:
        lut, tf, _ = concentrations(P, None)
        integral = Volume(paint_activity(lut, tf, labels, tissue, heterogeneity, spacing, pet_fwhm_mm), **geo)
        integral.metadata = {"seed": str(seed), "quantity": "time-integrated activity", "units": "Bq h/mL"}
    return phantoms, integral


def _phantom_info(P: Patient, labels: np.ndarray, label_names: dict[int, str], act: np.ndarray, conc: dict,
                  spacing: tuple[float, float, float], time_days: float) -> dict:
    """:attr:`Phantom.info` of the patient at ``time_days``: demographics, kinetics, lesions, VOI volumes (mL)."""
    vox_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    total_mbq = float(act.sum(dtype=np.float64) * vox_ml / 1e6)
    counts = np.bincount(labels.ravel().astype(np.intp, copy=False) if labels.min() >= 0 else np.zeros(1, np.intp))
    vols = {name: float((counts[v] if v < counts.size else 0) * vox_ml) for v, name in label_names.items()}
    return {
        "seed": P.seed, "sex": P.sex, "age": P.age, "height_cm": round(P.height, 1), "weight_kg": round(P.weight, 1),
        "bmi": round(P.bmi, 1), "body_width_mm": round(2 * P.a0, 1), "body_depth_mm": round(P.b_ant0 + P.b_post0, 1),
        "arms_down": P.arms_down, "gallbladder": P.has_gb,
        "time_days": time_days, "injected_activity_MBq": INJECTED_ACTIVITY_MBQ,
        "total_activity_MBq": total_mbq, "fraction_of_injected_in_field": total_mbq / INJECTED_ACTIVITY_MBQ
        * 2.0 ** (time_days * 24 / LU177_HALF_LIFE_H),
        "concentrations_MBq_per_mL": {k: float(v) for k, v in conc["organs"].items()},
        "kidney_medulla_fraction": P.medulla_frac, "kidney_pelvis_fraction": P.pelvis_frac,
        "effective_half_lives_h": dict(P.teff),
        "lesions": _lesion_info(P, conc),
        "volumes_ml": vols,
        "vertebra_z_mm": {name: round(float(z), 1) for name, z in zip(VERTEBRA_LEVELS, P.vz)},
    }


def _lesion_info(P: Patient, conc: dict) -> list[dict]:
    """One dict per lesion (label, site, organ, volume, uptake now and at day 1, contrast, ...) for ``info["lesions"]``."""
    lesions = []
    for n, les in enumerate(P.lesions, start=1):
        site = les["site"]
        lesions.append({
            "label": LESION_LABEL_BASE + n, "name": f"lesion_{n}", "site": site,
            "organ": _LESION_ORGAN.get(site, "soft_tissue"),
            "volume_ml": round(les["volume_ml"], 3), "centre_mm": [round(float(v), 2) for v in les["blob"].c],
            "uptake_MBq_per_mL": conc["lesions"][n - 1], "uptake_day1_MBq_per_mL": les["c1"],
            "effective_half_life_h": les["teff"], "contrast": les["contrast"], "contrast_reference": les["reference"],
            "contrast_at_time": conc["lesions"][n - 1] / conc["organs"][les["reference"]], "necrotic": bool(les["necrotic"]),
            "necrotic_fraction": round(les["nu"] ** 3, 3), "hu": les["hu"],
        })
    return lesions


def _label_names(P: Patient, grid: Grid) -> dict[int, str]:
    """Names of every structure this patient has in the standard field (grid-independent)."""
    names = {v: k for k, v in LABELS.items()}
    if not P.has_gb:
        names.pop(LABELS["gallbladder"])
    if not P.arms_down:
        names.pop(LABELS["arm_bones"])
    # vertebrae that reach the standard field (or this grid, if it is larger): the same names on any grid
    # over the standard field
    sz = grid.spacing[2]
    zlo = min(-STANDARD_FIELD_MM[2] / 2, float(grid.z[0]) - sz)
    zhi = max(STANDARD_FIELD_MM[2] / 2, float(grid.z[-1]) + sz)
    for i, lev in enumerate(VERTEBRA_LEVELS):
        if not (P.vz[i] + P.vpitch[i] < zlo or P.vz[i] - P.vpitch[i] > zhi):
            names[VERTEBRA_LABEL_BASE + 1 + i] = f"vertebra_{lev}"
    for n in range(1, len(P.lesions) + 1):
        names[LESION_LABEL_BASE + n] = f"lesion_{n}"
    return dict(sorted(names.items()))
