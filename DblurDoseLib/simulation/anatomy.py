"""The tables that define the anatomical virtual patients (:mod:`.phantom`): labels, tissue classes,
day-1 uptake and effective half-lives, lesion sites, sizes and contrasts, and the painting order."""

from __future__ import annotations

import math

#: The paper's CT grid, (z, y, x) voxels and (x, y, z) mm.
STANDARD_SHAPE: tuple[int, int, int] = (130, 512, 512)
STANDARD_SPACING: tuple[float, float, float] = (0.98, 0.98, 3.0)
#: The physical field every phantom is designed for, (x, y, z) mm: 50.2 x 50.2 x 39 cm.
STANDARD_FIELD_MM: tuple[float, float, float] = (512 * 0.98, 512 * 0.98, 130 * 3.0)
#: One standard cycle of Lu-177 DOTATATE.
INJECTED_ACTIVITY_MBQ = 7400.0
LU177_HALF_LIFE_H = 6.647 * 24.0

#: Organ labels of :attr:`Phantom.labels` (lesions are ``LESION_LABEL_BASE + k``, vertebrae
#: ``VERTEBRA_LABEL_BASE + level index``).
LABELS: dict[str, int] = {
    "fat": 1,
    "muscle": 2,
    "lung_left": 3,
    "lung_right": 4,
    "heart": 5,
    "aorta": 6,
    "inferior_vena_cava": 7,
    "liver": 8,  # healthy liver: the liver minus its lesions
    "gallbladder": 9,
    "spleen": 10,
    "stomach": 11,
    "pancreas": 12,
    "adrenal_left": 13,
    "adrenal_right": 14,
    "small_bowel": 15,
    "colon": 16,
    "kidney_left": 17,  # whole kidney; cortex/medulla/pelvis in Phantom.tissue
    "kidney_right": 18,
    "spinal_canal": 19,
    "intervertebral_discs": 20,
    "ribs": 21,
    "sternum": 22,
    "pelvis": 23,  # iliac wings
    "sacrum": 24,
    "arm_bones": 25,
}
VERTEBRA_LEVELS: tuple[str, ...] = tuple([f"T{i}" for i in range(1, 13)] + [f"L{i}" for i in range(1, 6)])
VERTEBRA_LABEL_BASE = 40  # vertebra_T1 = 41 ... vertebra_L5 = 57
LESION_LABEL_BASE = 100  # lesion_1 = 101, ...
LUMBAR_L2_L5: tuple[int, ...] = tuple(VERTEBRA_LABEL_BASE + 1 + VERTEBRA_LEVELS.index(v) for v in ("L2", "L3", "L4", "L5"))

#: Tissue classes of :attr:`Phantom.tissue` (what the HU and the sub-organ uptake follow).
TISSUES: dict[str, int] = {
    "air": 0, "fat": 1, "muscle": 2, "lung": 3, "blood": 4, "liver": 5, "spleen": 6,
    "kidney_cortex": 7, "kidney_medulla": 8, "kidney_pelvis": 9, "pancreas": 10, "adrenal": 11,
    "gi_wall": 12, "gi_content": 13, "gas": 14, "stool": 15, "bile": 16, "csf": 17, "disc": 18,
    "trabecular_bone": 19, "cortical_bone": 20, "bone_mixed": 21, "lesion": 22, "necrosis": 23,
    "breast": 24,
}

#: Day-1 concentration ranges drawn per patient, MBq/mL, for 7.4 GBq injected (uniform draws).
#: Kidney values are for the cortex; medulla and pelvis are fractions of it. Lesions are set by
#: their contrast to the tissue around them (:data:`LESION_CONTRAST`, :data:`LESION_SITES`).
UPTAKE_DAY1: dict[str, tuple[float, float]] = {
    "kidney_cortex": (0.15, 0.35),
    "kidney_medulla_fraction": (0.35, 0.55),
    "kidney_pelvis_fraction": (0.10, 0.20),
    "liver": (0.04, 0.10),
    "spleen": (0.10, 0.30),
    "adrenal": (0.08, 0.18),
    "pancreas": (0.02, 0.05),
    "stomach": (0.015, 0.035),
    "bowel": (0.008, 0.02),
    "blood": (0.006, 0.012),
    "muscle": (0.008, 0.018),
    "fat_fraction_of_muscle": (0.25, 0.4),
    "lung": (0.002, 0.004),
    "marrow": (0.008, 0.016),
}
#: Effective half-lives (h), drawn per patient (lesions per lesion) from these ranges.
EFFECTIVE_HALF_LIFE_H: dict[str, tuple[float, float]] = {
    "kidney": (45.0, 60.0),
    "liver": (60.0, 90.0),
    "spleen": (60.0, 90.0),
    "adrenal": (60.0, 80.0),
    "pancreas": (45.0, 60.0),
    "stomach": (40.0, 55.0),
    "bowel": (30.0, 45.0),
    "blood": (30.0, 40.0),
    "muscle": (35.0, 45.0),
    "lung": (30.0, 40.0),
    "marrow": (45.0, 60.0),
    "lesion": (70.0, 130.0),
}

#: Day-1 lesion-to-surroundings concentration ratio, drawn log-uniformly per lesion.
LESION_CONTRAST: tuple[float, float] = (3.0, 100.0)
#: Lesion sites: (tissue whose day-1 concentration the contrast refers to, median volume mL,
#: largest volume mL). ``kidney``: beside a kidney, touching it or a few mm from its surface;
#: ``bone``: in a vertebral body (T9-L5), replacing trabecular bone; ``lung_base``: in the lung
#: just above the diaphragm. ``fat`` is the soft-tissue background around nodes.
LESION_SITES: dict[str, tuple[str, float, float]] = {
    "liver": ("liver", 16.0, 180.0),
    "lung": ("lung", 5.0, 30.0),
    "lung_base": ("lung", 5.0, 30.0),
    "node": ("fat", 6.0, 40.0),
    "pancreas": ("pancreas", 8.0, 60.0),
    "mesentery": ("fat", 12.0, 80.0),
    "kidney": ("fat", 8.0, 40.0),
    "bone": ("marrow", 1.8, 3.0),
}
#: Number of lesions drawn per patient, [low, high) (a lesion with no room anywhere is dropped).
LESION_COUNT: tuple[int, int] = (4, 13)
#: Share of lesions whose volume is drawn log-uniformly in :data:`SMALL_LESION_ML` (the others:
#: log-normal around the site median, one e-fold wide).
SMALL_LESION_SHARE = 0.35
SMALL_LESION_ML: tuple[float, float] = (1.0, 10.0)
#: Size classes (mL, [low, high)) that ``make_phantom(..., lesion_classes=True)`` fills with at
#: least :data:`LESIONS_PER_CLASS` lesions each, and the volumes it aims at to fill them.
LESION_SIZE_CLASSES_ML: tuple[tuple[float, float], ...] = ((1.0, 5.0), (5.0, 20.0), (20.0, math.inf))
_LESION_CLASS_TARGETS_ML: tuple[tuple[float, float], ...] = ((1.5, 4.0), (7.0, 15.0), (23.0, 40.0))
LESIONS_PER_CLASS = 2
#: Bone lesions are sclerotic (osteoblastic, the usual NET bone metastasis): CT numbers (HU)
#: drawn uniformly here, above trabecular bone, so their density (from the HU) is bone-like.
BONE_LESION_HU: tuple[float, float] = (450.0, 900.0)

PAINT_PRIORITY: tuple[str, ...] = (
    "fat (subcutaneous)", "muscle (body wall)", "fat (visceral)", "arms", "breasts", "lungs", "diaphragm (muscle)",
    "mediastinal/pericardial fat", "small bowel", "colon", "psoas", "stomach", "liver", "gallbladder",
    "spleen", "pancreas", "heart", "aorta", "inferior vena cava", "perirenal fat", "kidneys", "adrenals",
    "spinal canal", "vertebrae and intervertebral discs", "ribs", "sternum", "sacrum", "iliacus/gluteal muscle",
    "pelvis (iliac wings)", "lesions",
)
