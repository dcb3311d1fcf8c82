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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..errors import DblurDoseError
from ..io.volume import Volume
from ..physics.density import hu_to_density

# --------------------------------------------------------------------------------------------
# Public constants
# --------------------------------------------------------------------------------------------

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
    """Boolean masks of the evaluation VOIs: the organ labels, each lesion, the liver with its
    lesions, kidney sub-compartments, ``lumbar_L2_L5``, ``lungs`` and ``body``."""
    labels = np.asarray(phantom.labels.array)
    out = {name: labels == value for value, name in phantom.label_names.items()}
    out["healthy_liver"] = out.get("liver", labels == LABELS["liver"])
    liver_lesions = [les["label"] for les in phantom.info.get("lesions", []) if les["organ"] == "liver"]
    out["liver_with_lesions"] = np.isin(labels, [LABELS["liver"], *liver_lesions])
    out["lumbar_L2_L5"] = np.isin(labels, LUMBAR_L2_L5)
    out["lungs"] = np.isin(labels, [LABELS["lung_left"], LABELS["lung_right"]])
    out["body"] = labels > 0
    if phantom.tissue is not None:
        tissue = np.asarray(phantom.tissue.array)
        for side in ("left", "right"):
            kid = labels == LABELS[f"kidney_{side}"]
            for part in ("cortex", "medulla", "pelvis"):
                out[f"kidney_{side}_{part}"] = kid & (tissue == TISSUES[f"kidney_{part}"])
    return out


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------

F32 = np.float32


class _Grid:
    """Voxel-centre coordinates (mm) of a grid centred on (0, 0, 0)."""

    def __init__(self, shape, spacing):
        self.shape = tuple(int(n) for n in shape)
        self.spacing = tuple(float(s) for s in spacing)
        nz, ny, nx = self.shape
        sx, sy, sz = self.spacing
        self.origin = (-(nx - 1) / 2 * sx, -(ny - 1) / 2 * sy, -(nz - 1) / 2 * sz)
        self.x = (self.origin[0] + np.arange(nx) * sx).astype(F32)
        self.y = (self.origin[1] + np.arange(ny) * sy).astype(F32)
        self.z = (self.origin[2] + np.arange(nz) * sz).astype(F32)

    def box(self, lo, hi):
        """Slices and broadcastable coordinates (Z, Y, X) of the voxels inside [lo, hi] (x, y, z mm)."""
        sl = []
        for axis, (coords, s, o) in enumerate(zip((self.x, self.y, self.z), self.spacing, self.origin)):
            n = coords.size
            i0 = max(int(math.ceil((lo[axis] - o) / s - 1e-6)), 0)
            i1 = min(int(math.floor((hi[axis] - o) / s + 1e-6)) + 1, n)
            if i1 <= i0:
                return None
            sl.append(slice(i0, i1))
        sx, sy, sz = sl
        return ((sz, sy, sx), self.z[sz][:, None, None], self.y[sy][None, :, None], self.x[sx][None, None, :])


class _Modes:
    """A smooth random scalar field: a few random plane waves, zero mean, unit variance."""

    def __init__(self, rng, n=6, lam=(40.0, 120.0)):
        d = rng.normal(size=(n, 3))
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        self.k = d * (2 * np.pi / rng.uniform(lam[0], lam[1], n))[:, None]
        self.phase = rng.uniform(0, 2 * np.pi, n)
        self.amp = rng.normal(size=n) * math.sqrt(2.0 / n)

    def __call__(self, X, Y, Z):
        out = None
        for (kx, ky, kz), ph, a in zip(self.k, self.phase, self.amp):
            term = np.cos(F32(kx) * X + F32(ky) * Y + F32(kz) * Z + F32(ph)) * F32(a)
            out = term if out is None else out + term
        return out


def _frame(e1, e2=None):
    """Orthonormal frame (columns) with first axis along e1 (and second near e2)."""
    e1 = np.asarray(e1, float)
    e1 = e1 / np.linalg.norm(e1)
    if e2 is None:
        e2 = np.array([1.0, 0, 0]) if abs(e1[0]) < 0.9 else np.array([0, 1.0, 0])
    e2 = np.asarray(e2, float) - np.dot(e2, e1) * e1
    e2 /= np.linalg.norm(e2)
    e3 = np.cross(e1, e2)
    return np.stack([e1, e2, e3], axis=1)


def _random_rotation(rng):
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
    ])


class _Blob:
    """Deformed superellipsoid: level < 1 inside. ``rot`` columns are the local axes in LPS."""

    def __init__(self, centre, axes, rot=None, p=2.0, eps=0.0, modes=None):
        self.c = np.asarray(centre, float)
        self.axes = np.asarray(axes, float)
        self.rot = None if rot is None else np.asarray(rot, float)
        self.p = float(p)
        self.eps = float(eps) if modes is not None else 0.0
        self.modes = modes

    def local(self, X, Y, Z):
        dx, dy, dz = X - F32(self.c[0]), Y - F32(self.c[1]), Z - F32(self.c[2])
        if self.rot is None:
            return dx, dy, dz
        r = self.rot.astype(F32)
        return (r[0, 0] * dx + r[1, 0] * dy + r[2, 0] * dz,
                r[0, 1] * dx + r[1, 1] * dy + r[2, 1] * dz,
                r[0, 2] * dx + r[1, 2] * dy + r[2, 2] * dz)

    def level(self, X, Y, Z):
        u, v, w = self.local(X, Y, Z)
        a, b, c = (F32(t) for t in self.axes)
        if self.p == 2.0:
            q = np.sqrt((u / a) ** 2 + (v / b) ** 2 + (w / c) ** 2)
        else:
            p = F32(self.p)
            q = (np.abs(u / a) ** p + np.abs(v / b) ** p + np.abs(w / c) ** p) ** F32(1 / self.p)
        if self.eps:
            q = q / (F32(1) + F32(self.eps) * self.modes(X, Y, Z))
        return q

    def half_extent(self):
        r = np.eye(3) if self.rot is None else self.rot
        if self.p == 2.0:
            ext = np.sqrt(((r * self.axes[None, :]) ** 2).sum(axis=1))
        else:
            ext = (np.abs(r) * self.axes[None, :]).sum(axis=1)
        return ext * (1 + 3 * self.eps) + 1.0

    def bbox(self, scale=1.0):
        e = self.half_extent() * scale
        return self.c - e, self.c + e


class _Tube:
    """Chain of cone-capsules through ``points`` (n, 3) with ``radii`` (n,): level < 1 inside."""

    def __init__(self, points, radii, eps=0.0, modes=None):
        self.p = np.asarray(points, float)
        self.r = np.asarray(radii, float)
        self.eps = float(eps) if modes is not None else 0.0
        self.modes = modes

    def bbox(self, scale=1.0):
        m = self.r.max() * scale * (1 + 3 * self.eps) + 1.0
        return self.p.min(axis=0) - m, self.p.max(axis=0) + m

    def _segment(self, i, X, Y, Z):
        a, b = self.p[i], self.p[i + 1]
        ra, rb = self.r[i], self.r[i + 1]
        d = b - a
        L2 = float(d @ d) or 1e-9
        dx, dy, dz = X - F32(a[0]), Y - F32(a[1]), Z - F32(a[2])
        t = np.clip((dx * F32(d[0]) + dy * F32(d[1]) + dz * F32(d[2])) / F32(L2), 0, 1)
        ex, ey, ez = dx - t * F32(d[0]), dy - t * F32(d[1]), dz - t * F32(d[2])
        return np.sqrt(ex * ex + ey * ey + ez * ez) / (F32(ra) + t * F32(rb - ra))

    def level(self, X, Y, Z):
        shape = np.broadcast_shapes(np.shape(X), np.shape(Y), np.shape(Z))
        best = np.full(shape, np.inf, dtype=F32)
        grid = (np.ndim(X) == 3 and np.shape(X)[:2] == (1, 1) and np.shape(Y)[0] == 1 and np.shape(Y)[2] == 1
                and np.shape(Z)[1:] == (1, 1))
        for i in range(len(self.p) - 1):
            if not grid:
                np.minimum(best, self._segment(i, X, Y, Z), out=best)
                continue
            m = max(self.r[i], self.r[i + 1]) * 1.6 + 2.0
            lo = np.minimum(self.p[i], self.p[i + 1]) - m
            hi = np.maximum(self.p[i], self.p[i + 1]) + m
            sl = []
            for c, l_, h_ in ((Z.ravel(), lo[2], hi[2]), (Y.ravel(), lo[1], hi[1]), (X.ravel(), lo[0], hi[0])):
                sl.append(slice(int(np.searchsorted(c, l_)), int(np.searchsorted(c, h_, side="right"))))
            if any(s_.stop <= s_.start for s_ in sl):
                continue
            sz, sy, sx = sl
            sub = best[sz, sy, sx]
            np.minimum(sub, self._segment(i, X[:, :, sx], Y[:, sy, :], Z[sz]), out=sub)
        if self.eps:
            near = best < F32(1 + 3 * self.eps)
            if grid:
                iz, iy, ix = np.nonzero(near)
                pts = (X.ravel()[ix], Y.ravel()[iy], Z.ravel()[iz])
            else:
                Xb, Yb, Zb = np.broadcast_arrays(X, Y, Z)
                pts = (Xb[near], Yb[near], Zb[near])
            best[near] = best[near] / (F32(1) + F32(self.eps) * self.modes(*pts))
        return best


class _Field:
    """A smooth Gaussian random field on a fixed physical lattice, sampled by linear interpolation."""

    def __init__(self, rng, lo, hi, step, sigma_mm):
        self.lo = np.asarray(lo, float)  # x, y, z
        self.step = float(step)
        n = (np.ceil((np.asarray(hi, float) - self.lo) / step).astype(int) + 2)
        white = rng.standard_normal((n[2], n[1], n[0]), dtype=F32)
        f = ndimage.gaussian_filter(white, sigma_mm / step, mode="wrap")
        f /= F32(f.std() + 1e-12)
        self.f = f

    def _axis(self, coords, axis):
        n = self.f.shape[2 - axis]
        t = np.clip((np.asarray(coords, float) - self.lo[axis]) / self.step, 0, n - 1.000001)
        i0 = np.floor(t).astype(np.intp)
        return i0, (t - i0).astype(F32)

    def sample_grid(self, Z, Y, X):
        """Field on the box spanned by 1-D (or broadcastable) coordinate arrays Z, Y, X."""
        iz, wz = self._axis(np.ravel(Z), 2)
        iy, wy = self._axis(np.ravel(Y), 1)
        ix, wx = self._axis(np.ravel(X), 0)
        z0, z1 = iz.min(), iz.max() + 2
        y0, y1 = iy.min(), iy.max() + 2
        f = self.f[z0:z1, y0:y1]
        iz, iy = iz - z0, iy - y0
        a = f[:, :, ix] * (1 - wx) + f[:, :, ix + 1] * wx
        a = a[:, iy, :] * (1 - wy)[:, None] + a[:, iy + 1, :] * wy[:, None]
        out = a[iz]
        out *= (1 - wz)[:, None, None]
        out += a[iz + 1] * wz[:, None, None]
        return out

    def sample_points(self, z, y, x):
        t = [np.clip((np.asarray(c, float) - self.lo[ax]) / self.step, 0, self.f.shape[2 - ax] - 1)
             for c, ax in ((z, 2), (y, 1), (x, 0))]
        return ndimage.map_coordinates(self.f, t, order=1, mode="nearest")


def _smin(a, b, k):
    """Polynomial smooth minimum (k in level units)."""
    h = np.clip(F32(0.5) + F32(0.5 / k) * (b - a), 0, 1)
    return b + (a - b) * h - F32(k) * h * (1 - h)


def _sphere_dirs():
    d = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) != (0, 0, 0)], float)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


_DIRS = _sphere_dirs()


# --------------------------------------------------------------------------------------------
# The patient
# --------------------------------------------------------------------------------------------

_VERT_PITCH = np.array([18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 30, 34, 35, 36, 36, 35], float)
_VERT_AX = np.interp(np.arange(17), [0, 11, 12, 16], [14, 20, 21, 25])  # half width (x)
_VERT_AY = np.interp(np.arange(17), [0, 11, 12, 16], [9.5, 14.5, 15, 17])  # half depth (y)
_VERT_HEIGHT_FRAC = np.where(np.arange(17) < 12, 0.78, 0.75)


class _Patient:
    """All random draws for one seed, and the anatomy as functions of physical position."""

    NTH = 2048
    ZT0, DZT, NZT = -330.0, 2.0, 331

    def __init__(self, seed: int, lesion_classes: bool = False):
        self.seed = int(seed)
        self.lesion_classes = bool(lesion_classes)
        rng = np.random.default_rng([self.seed, 20220117])
        self.rng = rng
        self._draw_demographics(rng)
        self._draw_spine(rng)
        self._draw_body(rng)
        self._build_tables()
        self._draw_organs(rng)
        self._draw_uptake(rng)
        self._draw_lesions(rng)

    # -- demographics ---------------------------------------------------------------------
    def _draw_demographics(self, rng):
        self.sex = "M" if rng.random() < 9 / 14 else "F"
        self.age = int(rng.integers(35, 89))
        if self.sex == "M":
            self.height = float(np.clip(rng.normal(176, 7), 160, 195))
        else:
            self.height = float(np.clip(rng.normal(163, 6), 150, 180))
        bmi = float(np.clip(rng.normal(25.5, 4.0), 18.0, 35.0))
        self.weight = float(np.clip(bmi * (self.height / 100) ** 2, 48.0, 102.0))
        self.bmi = self.weight / (self.height / 100) ** 2
        self.hf = self.height / 175.0  # skeletal / organ length scale

    # -- spine ----------------------------------------------------------------------------
    def _draw_spine(self, rng):
        hf = self.hf
        pitch = _VERT_PITCH * hf * rng.uniform(0.95, 1.05)
        z0 = rng.normal(0.0, 10.0)  # T12/L1 disc: the field is centred on liver and kidneys
        zc = np.zeros(17)
        zc[12] = z0 - pitch[12] / 2  # L1
        for i in range(13, 17):
            zc[i] = zc[i - 1] - (pitch[i - 1] + pitch[i]) / 2
        zc[11] = z0 + pitch[11] / 2  # T12
        for i in range(10, -1, -1):
            zc[i] = zc[i + 1] + (pitch[i + 1] + pitch[i]) / 2
        self.vz = zc
        self.vpitch = pitch
        self.vheight = pitch * _VERT_HEIGHT_FRAC
        bone = rng.uniform(0.93, 1.08) * (1.05 if self.sex == "M" else 0.95)
        self.vax = _VERT_AX * hf * bone
        self.vay = _VERT_AY * hf * bone
        self.lordosis = rng.uniform(6, 14)
        self.kyphosis = rng.uniform(4, 12)

    def level_z(self, name):
        return float(self.vz[VERTEBRA_LEVELS.index(name)])

    def ax_of(self, z):
        """Vertebral-body half-width (mm) at height z, interpolated between levels."""
        return np.interp(np.asarray(z, float), self.vz[::-1], self.vax[::-1])

    def ay_of(self, z):
        """Vertebral-body half-depth (mm) at height z."""
        return np.interp(np.asarray(z, float), self.vz[::-1], self.vay[::-1])

    # -- body outline ---------------------------------------------------------------------
    def _draw_body(self, rng):
        area = 56300.0 * (self.weight / self.height) / 0.4
        ratio = 1.45 - 0.2 * np.clip((self.bmi - 20) / 14, 0, 1) + (0.06 if self.sex == "F" else 0.0)
        ratio += rng.normal(0, 0.04)
        a0 = math.sqrt(area * ratio / math.pi)
        b0 = a0 / ratio
        belly = float(np.clip((self.bmi - 24) / 10, 0, 1)) * (1.0 if self.sex == "M" else 0.5)
        self.a0, self.b0 = a0, b0
        self.b_ant0 = b0 * (1.02 + 0.08 * belly)
        self.b_post0 = b0 * (0.98 - 0.08 * belly)
        zL5, zL3, zL1 = self.level_z("L5"), self.level_z("L3"), self.level_z("L1")
        zT11, zT8 = self.level_z("T11"), self.level_z("T8")
        self.kz = np.array([zL5 - 80, zL5, zL3, zL1, zT11, zT8, zT8 + 140])
        if self.sex == "M":
            ka = [1.05, 1.02, 1.0, 1.0, 1.02, 1.05, 1.07]
        else:
            ka = [1.16, 1.09, 1.0, 0.98, 0.99, 1.02, 1.04]
        kb_ant = [0.93, 0.97, 1.0, 0.98, 0.93, 0.94, 0.98]
        kb_post = [1.02, 1.01, 1.0, 1.0, 1.01, 1.03, 1.05]
        jitter = lambda k: np.asarray(k) * (1 + rng.normal(0, 0.012, len(k)))  # noqa: E731
        self.ka, self.kb_ant, self.kb_post = jitter(ka), jitter(kb_ant), jitter(kb_post)
        self.p_ant = rng.uniform(2.0, 2.4)
        self.p_post = rng.uniform(2.6, 3.4)
        # angular harmonics of the outline, slowly varying with z
        self.harm = [(m, rng.normal(0, 0.010), rng.normal(0, 0.008), rng.uniform(0, 2 * np.pi),
                      rng.uniform(200, 400), rng.uniform(0, 2 * np.pi)) for m in (2, 3, 4, 5)]
        # fat and muscle layers
        tf = np.clip(3.0 + 1.5 * (self.bmi - 18.0), 3.0, 40.0)
        self.fat0 = tf * (1.2 if self.sex == "F" else 0.9) * rng.uniform(0.85, 1.15)
        self.belly = belly
        self.mus0 = (1.1 if self.sex == "M" else 0.9) * self.hf * rng.uniform(0.9, 1.1)
        self.d_back_t = 62.0 * self.hf * rng.uniform(0.95, 1.05)
        self.d_back_l = 72.0 * self.hf * rng.uniform(0.95, 1.05)
        want_arms = rng.random() < 0.3
        self.arm_r = 40.0 + 1.5 * (self.bmi - 20.0)
        self.arm_y = rng.uniform(-10, 20)
        self.arm_gap = rng.uniform(5, 20)
        zs = np.linspace(-STANDARD_FIELD_MM[2] / 2, STANDARD_FIELD_MM[2] / 2, 41)
        self.arm_x_out = float(self.a_of(zs).max()) + self.arm_gap + 2 * self.arm_r + 3
        self.arm_x_in = float(self.a_of(zs).min()) + self.arm_gap - 3
        # arms at the sides only when they fit in the field (arms up otherwise, as usual in SPECT/CT)
        self.arms_down = bool(want_arms and self.arm_x_out < STANDARD_FIELD_MM[0] / 2 - 5)

    def a_of(self, z):
        return self.a0 * np.interp(z, self.kz, self.ka)

    def b_ant_of(self, z):
        return self.b_ant0 * np.interp(z, self.kz, self.kb_ant)

    def b_post_of(self, z):
        return self.b_post0 * np.interp(z, self.kz, self.kb_post)

    def thorax_of(self, z):
        """0 in the abdomen, 1 in the chest (smooth, around the xiphoid/T10)."""
        zT10 = self.level_z("T10")
        return np.clip((np.asarray(z, float) - (zT10 - 20)) / 40.0, 0, 1)

    def fat_of(self, z, c, s):
        hips = np.clip((self.level_z("L4") - np.asarray(z, float)) / 60.0, 0, 1)
        zf = 1.0 - 0.3 * self.thorax_of(z) + hips * (0.5 if self.sex == "F" else 0.15)
        ang = 1.0 + (0.25 + 0.5 * self.belly) * np.maximum(-s, 0) - 0.45 * np.maximum(s, 0)
        return self.fat0 * zf * ang

    def mus_of(self, z, c, s):
        t = 10.0 + 12.0 * np.maximum(s, 0) ** 2 + 4.0 * self.thorax_of(z)
        return t * self.mus0

    def y_vb_of(self, z):
        """y (mm) of the vertebral-body centre line at z (posterior body surface minus fat and back depth)."""
        z = np.asarray(z, float)
        th = self.thorax_of(z)
        d_back = self.d_back_t * th + self.d_back_l * (1 - th)
        zL4 = self.level_z("L4")
        curve = -self.lordosis * np.exp(-(((z - zL4) / 70.0) ** 2)) + self.kyphosis * np.clip((z - self.level_z("T11")) / 100, 0, 1)
        return self.b_post_of(z) - self.fat_of(z, 0.0, 1.0) - d_back + curve

    def _outline(self, z, c, s):
        a = self.a_of(z)
        w = 0.5 * (1 + np.tanh(s / 0.2))
        b = self.b_ant_of(z) * (1 - w) + self.b_post_of(z) * w
        p = self.p_ant * (1 - w) + self.p_post * w
        r = 1.0 / ((np.abs(c) / a) ** p + (np.abs(s) / b) ** p) ** (1.0 / p)
        th = np.arctan2(s, c)
        h = 1.0
        for m, c0, c1, ph, lam, psi in self.harm:
            h = h + (c0 + c1 * np.cos(2 * np.pi * z / lam + psi)) * np.cos(m * th + ph)
        return r * h

    def _build_tables(self):
        z = (self.ZT0 + np.arange(self.NZT) * self.DZT)[:, None]
        th = ((np.arange(self.NTH) + 0.5) / self.NTH * 2 * np.pi - np.pi)[None, :]
        c, s = np.cos(th), np.sin(th)
        rb = self._outline(z, c, s)
        rm = rb - self.fat_of(z, c, s)
        rc = rm - self.mus_of(z, c, s)
        # posterior notch: the spine and paraspinal muscles lie outside the body cavity
        iy = np.argmin(np.abs(th[0] - np.pi / 2))
        y_front = self.y_vb_of(z[:, 0]) - self.ay_of(z[:, 0]) - 2.0
        depth = np.maximum(rc[:, iy] - y_front, 0.0)
        width = (self.ax_of(z[:, 0]) + 16.0) / np.maximum(y_front + 20.0, 40.0)
        notch = depth[:, None] * np.exp(-(((th - np.pi / 2) / width[:, None]) ** 4))
        rc = rc - notch
        self.R = {"body": rb.astype(F32), "muscle": rm.astype(F32), "cavity": rc.astype(F32)}

    # polar helpers (valid for grid boxes and for point arrays)
    def polar(self, X, Y):
        r = np.hypot(X, Y)
        th = np.arctan2(Y, X)
        ib = ((th + np.pi) * (self.NTH / (2 * np.pi))).astype(np.intp) % self.NTH
        return r, ib

    def zindex(self, Z):
        return np.clip(np.rint((np.asarray(Z, float) - self.ZT0) / self.DZT), 0, self.NZT - 1).astype(np.intp)

    def radius(self, layer, Z, ib):
        return self.R[layer][self.zindex(Z), ib]

    def inside(self, layer, X, Y, Z, margin=0.0):
        r, ib = self.polar(X, Y)
        return r < self.radius(layer, Z, ib) - F32(margin)

    # -- organs -----------------------------------------------------------------------------
    def cav_axes(self, z):
        """Cavity half-extents (lateral, anterior, posterior) in mm at height z."""
        R = self.R["cavity"][int(self.zindex(z))].astype(float)
        th = (np.arange(self.NTH) + 0.5) / self.NTH * 2 * np.pi - np.pi
        return (float((R * np.abs(np.cos(th))).max()), float((R * np.maximum(-np.sin(th), 0)).max()),
                float((R * np.maximum(np.sin(th), 0)).max()))

    def z_diaphragm(self, X, Y):
        ac, bca, bcp = self.dia_ac, self.dia_bca, self.dia_bcp
        dy = Y - F32(self.dia_yd)
        ypart = F32(-self.dia_hpost) * (np.maximum(dy, 0) / F32(bcp)) ** 2 - F32(self.dia_hant) * (np.minimum(dy, 0) / F32(bca)) ** 2
        r = F32(self.dia_zR) - F32(self.dia_hx) * ((X - F32(self.dia_xR)) / F32(0.55 * ac)) ** 2
        l_ = F32(self.dia_zL) - F32(self.dia_hx) * ((X - F32(self.dia_xL)) / F32(0.55 * ac)) ** 2
        c = F32(self.dia_zC) - F32(40.0) * ((X - F32(0.1 * ac)) / F32(0.4 * ac)) ** 2
        return np.maximum(np.maximum(r, l_), c) + ypart

    def _draw_organs(self, rng):
        hf = self.hf
        male = self.sex == "M"
        zT11, zT12, zL1, zL2 = (self.level_z(n) for n in ("T11", "T12", "L1", "L2"))
        zL3, zL4, zL5 = (self.level_z(n) for n in ("L3", "L4", "L5"))
        ac, bca, bcp = self.cav_axes(zT11)
        self.dia_ac, self.dia_bca, self.dia_bcp = ac, bca, bcp
        z910 = (self.level_z("T9") + self.level_z("T10")) / 2
        self.dia_zR = z910 + rng.normal(0, 8)
        self.dia_zL = self.dia_zR - rng.uniform(8, 20)
        self.dia_zC = self.dia_zR - rng.uniform(15, 25)
        self.dia_xR, self.dia_xL = -0.45 * ac, 0.45 * ac
        self.dia_yd = -0.15 * bca
        self.dia_hx = rng.uniform(45, 65)
        self.dia_hpost = rng.uniform(60, 80)
        self.dia_hant = rng.uniform(35, 55)

        yv = lambda z: float(self.y_vb_of(z) - self.ay_of(z))  # noqa: E731  vertebral anterior surface
        # ---- kidneys ----
        self.kidneys = {}
        k_target = (rng.uniform(140, 210) if male else rng.uniform(115, 180))
        zk_left = zL1 + rng.normal(0, 8)
        for side, sgn, zk in (("left", 1.0, zk_left), ("right", -1.0, zk_left - rng.uniform(8, 25))):
            target = k_target * rng.uniform(0.92, 1.08) * (1.03 if side == "left" else 0.97)
            axis = [-sgn * rng.uniform(0.15, 0.3), rng.uniform(0.1, 0.3), 1.0]  # upper pole medial, posterior
            hil = math.radians(rng.uniform(20, 40))
            width_dir = [sgn * math.cos(hil), -math.sin(hil), 0.0]  # lateral-anterior; hilum opposite
            rot = _frame(axis, width_dir)
            modes = _Modes(rng, 5, (50, 120))
            yk = float(self.y_vb_of(zk)) + rng.uniform(8, 20)
            xk = sgn * (float(self.ax_of(zk)) + 48.0 * hf + rng.normal(0, 4))

            def make(s, rot=rot, modes=modes, xk=xk, yk=yk, zk=zk):
                lh = 55.0 * s
                return {"body": _Blob([xk, yk, zk], [lh, 0.5 * lh, 0.38 * lh], rot, 2.0, 0.04, modes),
                        "hilum": _Blob(np.array([xk, yk, zk]) - rot[:, 1] * 0.5 * lh, [0.38 * lh, 0.28 * lh, 0.22 * lh], rot),
                        "pelvis": _Blob(np.array([xk, yk, zk]) - rot[:, 1] * 0.3 * lh, [0.32 * lh, 0.16 * lh, 0.16 * lh], rot),
                        "lh": lh, "rot": rot, "c": np.array([xk, yk, zk])}

            holder = {}
            self._calibrate(lambda s, holder=holder, make=make: holder.__setitem__("k", make(s)),
                            lambda X, Y, Z, holder=holder: self._kidney_inside(holder["k"], X, Y, Z),
                            lambda holder=holder: holder["k"]["body"].bbox(), target)
            self.kidneys[side] = holder["k"]

        # ---- adrenals ----
        self.adrenals = {}
        for side, sgn in (("left", 1.0), ("right", -1.0)):
            k = self.kidneys[side]
            top = k["c"] + k["rot"][:, 0] * k["lh"]
            c = [sgn * (float(self.ax_of(top[2])) + 14), top[1] - 12, top[2] + 6]
            self.adrenals[side] = _Blob(c, [4.0, 16.0, 13.0] * np.array([1, hf, hf]),
                                        _frame([sgn * 0.3, 1.0, 0.4], [1, 0, 0]), 2.0, 0.05, _Modes(rng, 3, (20, 40)))

        r_ao = (10.0 + 0.05 * (self.age - 35)) * hf
        self.r_ao = r_ao
        ao = []
        for z in (230.0, self.level_z("T10"), zT12, zL2, zL4):
            if z > zT11:
                ao.append([float(self.ax_of(z)) + 0.5 * r_ao, float(self.y_vb_of(z)) - 0.3 * float(self.ay_of(z)), z])
            else:
                ao.append([0.35 * float(self.ax_of(z)), yv(z) - r_ao - 2, z])
        self.aorta = _Tube(ao, [r_ao * 1.12, r_ao * 1.05, r_ao, r_ao * 0.92, r_ao * 0.85])
        self.iliac_a = [_Tube([ao[-1], [sg * 35 * hf, yv(zL5) - 8, zL5 - 5], [sg * 50 * hf, yv(zL5) - 25, zL5 - 80]],
                              [r_ao * 0.7, r_ao * 0.62, r_ao * 0.58]) for sg in (1, -1)]
        r_ivc = rng.uniform(10, 13) * hf
        ivc = [[-0.9 * float(self.ax_of(zL5)), yv(zL5) - 6, zL5 + 5], [-0.95 * float(self.ax_of(zL4)), yv(zL4) - 8, zL4],
               [-1.0 * float(self.ax_of(zL1)), yv(zL1) - 12, zL1], [-1.1 * float(self.ax_of(zT11)), yv(zT11) - 22, zT11],
               [-25.0, -0.1 * bca, self.dia_zC + 15]]
        self.ivc = _Tube(ivc, [r_ivc] * 4 + [r_ivc * 1.3], 0.04, _Modes(rng, 3, (40, 80)))
        self.iliac_v = [_Tube([ivc[0], [sg * 30 * hf, yv(zL5) + 2, zL5 - 15], [sg * 45 * hf, yv(zL5) - 12, zL5 - 80]],
                              [r_ivc * 0.8, r_ivc * 0.7, r_ivc * 0.65]) for sg in (1, -1)]

        # ---- liver ----
        ac_l, bca_l, bcp_l = self.cav_axes(zT12)
        self.liver_target = (rng.uniform(1.4, 2.2) if male else rng.uniform(1.15, 1.85)) * 1000 * (self.weight / 75) ** 0.2
        m_liver = _Modes(rng, 6, (60, 160))
        tilt = _frame([1, rng.normal(0, 0.1), rng.uniform(0.25, 0.5)], [0, 1, 0])  # right lobe tip lowest
        rl_axes = np.array([78.0, 82.0, 85.0]) * rng.uniform(0.93, 1.07, 3)
        ll_axes = np.array([68.0, 40.0, 42.0]) * rng.uniform(0.9, 1.1, 3)
        rl_x, ll_x = -0.42 * ac_l, 0.06 * ac_l + rng.normal(0, 6)
        ll_y = -0.5 * bca_l

        def make_liver(s):
            right = _Blob([rl_x, 0.02 * bca_l, self.dia_zR - 72 * s], rl_axes * s, tilt, 2.0, 0.05, m_liver)
            left = _Blob([ll_x, ll_y, self.dia_zR - 38 * s], ll_axes * s,
                         _frame([math.cos(0.25), -math.sin(0.25), 0.15], [0, 0, 1]), 2.0, 0.05, m_liver)
            return right, left

        self.liver_parts = make_liver(1.0)
        def healthy(X, Y, Z):  # what remains of the liver once kidneys, their fat and the IVC are painted
            m = self.liver_inside(X, Y, Z) & (self.ivc.level(X, Y, Z) > 1)
            for k in self.kidneys.values():
                m &= k["body"].level(X, Y, Z) > 1.22
            return m

        s = self._calibrate(lambda s: setattr(self, "liver_parts", make_liver(s)), healthy,
                            lambda: self._bbox_union(self.liver_parts), self.liver_target)
        self.liver_scale = s

        # ---- gallbladder (absent after cholecystectomy) ----
        lo, hi = self._bbox_union(self.liver_parts)
        self.has_gb = rng.random() < 0.75
        gb_c = [-0.28 * ac_l + rng.normal(0, 6), -0.55 * bca_l, lo[2] + 35 + rng.normal(0, 5)]
        self.gb = _Blob(gb_c, np.array([14.0, 15.0, 34.0]) * rng.uniform(0.8, 1.2),
                        _frame([0.2, -0.5, 1.0]), 2.0, 0.05, _Modes(rng, 4, (30, 60)))

        # ---- spleen ----
        sp_target = (rng.uniform(150, 380) if male else rng.uniform(130, 300))
        sp_modes = _Modes(rng, 5, (50, 120))
        sp_c = np.array([0.72 * ac, 0.4 * bcp, self.dia_zL - 62 + rng.normal(0, 6)])
        sp_rot = _frame([0.25, -0.5, -0.85], [0.8, 0.55, 0.0])  # long axis along the 10th rib

        def make_spleen(s):
            body = _Blob(sp_c, np.array([62.0, 22.0, 40.0]) * s, sp_rot, 2.0, 0.06, sp_modes)
            cut = _Blob(sp_c - sp_rot[:, 1] * 42 * s, np.array([48.0, 26.0, 30.0]) * s, sp_rot)
            return body, cut

        self.spleen = make_spleen(1.0)
        def spleen_left(X, Y, Z):  # what remains once the left kidney and its fat are painted
            return self.spleen_inside(X, Y, Z) & (self.kidneys["left"]["body"].level(X, Y, Z) > 1.22)

        self._calibrate(lambda s: setattr(self, "spleen", make_spleen(s)), spleen_left,
                        lambda: self.spleen[0].bbox(), sp_target)

        # ---- stomach, pancreas, vessels, heart, bowel ----
        fill = rng.uniform(0.75, 1.15)
        zLd = self.dia_zL
        yb = lambda f: f * bca  # noqa: E731
        st_pts = [[0.34 * ac, 0.15 * bcp, zLd - 28], [0.36 * ac, -yb(0.25), zLd - 62], [0.24 * ac, -yb(0.55), zLd - 98],
                  [0.02 * ac, -yb(0.62), zLd - 112], [-0.18 * ac, -yb(0.5), zLd - 106]]
        st_r = np.array([32.0, 31.0, 27.0, 20.0, 12.0]) * fill * hf
        self.stomach = _Tube(st_pts, st_r, 0.06, _Modes(rng, 5, (40, 90)))
        self.stomach_gas = rng.uniform(0, 22)
        pz = zL1 + rng.normal(0, 6)
        self.pancreas = _Tube([[-0.3 * ac, yv(pz) - 38, pz - 25], [-0.1 * ac, yv(pz) - 42, pz - 8], [0.12 * ac, yv(pz) - 38, pz],
                               [0.35 * ac, yv(pz) - 18, pz + 10], [0.55 * ac, yv(pz) + 5, pz + 22]],
                              np.array([17.0, 12.0, 11.0, 10.0, 9.0]) * hf, 0.08, _Modes(rng, 4, (30, 60)))
        self.duodenum = _Tube([[-0.18 * ac, -yb(0.5), zLd - 106], [-0.32 * ac, yv(pz) - 38, pz - 10],
                               [-0.34 * ac, yv(pz) - 30, pz - 60], [0.0, yv(pz - 70) - 28, pz - 75],
                               [0.15 * ac, yv(pz) - 30, pz - 50]], np.array([13.0, 12.0, 12.0, 11.0, 11.0]) * hf)

        self.heart = _Blob([0.12 * ac + 10, -0.3 * bca - 5, self.dia_zC + 62 * hf],
                           np.array([72.0, 52.0, 50.0]) * hf * rng.uniform(0.92, 1.08),
                           _frame([0.6, -0.5, -0.6], [0.5, 0.8, 0.0]), 2.0, 0.04, _Modes(rng, 4, (60, 120)))
        self.x_med = 8.0 + rng.normal(0, 3)

        # psoas
        self.psoas = [_Tube([[sg * (float(self.ax_of(zT12)) + 4), float(self.y_vb_of(zT12)) + 2, zT12],
                             [sg * (float(self.ax_of(zL3)) + 14), float(self.y_vb_of(zL3)), zL3],
                             [sg * (float(self.ax_of(zL5)) + 24), float(self.y_vb_of(zL5)) - 14, zL5 - 40]],
                            np.array([7.0, 19.0, 25.0]) * hf * (1.1 if male else 0.85)) for sg in (1, -1)]

        # colon frame (ascending, transverse, descending) and small-bowel zone
        ac_b, bca_b, bcp_b = self.cav_axes(zL3)
        sag = rng.uniform(0, 40)
        col = [[-0.62 * ac_b, -0.25 * bca_b, -260.0], [-0.7 * ac_b, -0.02 * bca_b, zL3],
               [-0.62 * ac_b, -0.25 * bca_b, zL1 - 5], [-0.1 * ac_b, -0.72 * bca_b, zL2 - sag],
               [0.35 * ac_b, -0.6 * bca_b, zL2 - sag * 0.5],
               [0.66 * ac, -0.1 * bca, zT12 + 10], [0.74 * ac_b, 0.12 * bcp_b, zL2], [0.62 * ac_b, -0.1 * bca_b, -260.0]]
        self.colon = _Tube(col, np.array([26.0, 24.0, 22.0, 21.0, 21.0, 22.0, 20.0, 19.0]) * hf * rng.uniform(0.85, 1.15),
                           0.08, _Modes(rng, 6, (40, 100)))
        self.sb_top = zL2 + rng.uniform(-10, 25)
        self.sb_top_modes = _Modes(rng, 4, (80, 200))
        self.f_bowel = _Field(rng, [-0.9 * ac_b - 20, -bca_b - 20, -280.0], [0.9 * ac_b + 20, bcp_b + 20, self.sb_top + 60],
                              2.5, 5.5)
        self.f_gas = _Field(rng, [-0.95 * ac_b - 30, -bca_b - 30, -280.0], [0.95 * ac_b + 30, bcp_b + 30, zT11 + 40], 4.0, 7.0)
        self.bowel_thr = rng.uniform(-0.5, -0.1)

        # breasts
        self.breasts = []
        if self.sex == "F":
            size = np.clip(0.7 + (self.bmi - 20) * 0.05, 0.6, 1.5) * rng.uniform(0.85, 1.15)
            zb = self.level_z("T6") + rng.uniform(-15, 15)
            for sg in (1, -1):
                x = sg * 0.42 * float(self.a_of(zb))
                y = -float(self.b_ant_of(zb)) * (1 - 0.42 ** self.p_ant) ** (1 / self.p_ant) + 12.0
                self.breasts.append(_Blob([x, y, zb], np.array([58.0, 30.0, 52.0]) * size,
                                          _frame([sg, 0.35, 0.0], [0, -1, 0]), 2.0, 0.05, _Modes(rng, 3, (50, 100))))

        # iliac wings: curved plates (arcs of an elliptic cylinder that narrows downward)
        self.z_crest = zL4 + rng.uniform(-5, 15)
        wide = 1.0 if male else 1.1
        self.ilium = [dict(sg=sg, cx=sg * 40.0 * hf, cy=float(self.y_vb_of(zL5)) - 22 * hf,
                           rx=80.0 * hf * wide * rng.uniform(0.95, 1.05), ry=60.0 * hf * rng.uniform(0.95, 1.05))
                      for sg in (1, -1)]
        self.sacrum = _Blob([0.0, float(self.y_vb_of(zL5)) + 12, zL5 - self.vpitch[16] / 2 - 45 * hf],
                            np.array([40.0, 45.0, 17.0]) * hf, _frame([0, 0.55, 1.0], [1, 0, 0]), 3.0)

    def _bbox_union(self, blobs):
        los, his = zip(*(b.bbox() for b in blobs))
        return np.min(los, axis=0), np.max(his, axis=0)

    def _volume_ml(self, inside, bbox, step=2.5):
        lo, hi = bbox
        axes = [np.arange(lo[i] + step / 2, hi[i], step, dtype=F32) for i in range(3)]
        X, Y, Z = axes[0][None, None, :], axes[1][None, :, None], axes[2][:, None, None]
        return float(np.count_nonzero(inside(X, Y, Z))) * step**3 / 1000.0

    def _calibrate(self, set_scale, inside, bbox, target):
        s = 1.0
        set_scale(s)
        for _ in range(3):
            v = self._volume_ml(inside, bbox())
            if v <= 0:
                s *= 1.3
            else:
                s *= (target / v) ** (1 / 3)
            set_scale(s)
        return s

    # organ membership functions (physical coordinates; grids or point arrays)
    def liver_inside(self, X, Y, Z):
        right, left = self.liver_parts
        q = _smin(right.level(X, Y, Z), left.level(X, Y, Z), 0.25)
        m = q < 1
        m &= Z < self.z_diaphragm(X, Y) - F32(6.0)
        m &= self.inside("cavity", X, Y, Z, 2.0)
        return m

    def spleen_inside(self, X, Y, Z):
        body, cut = self.spleen
        m = (body.level(X, Y, Z) < 1) & (cut.level(X, Y, Z) > 1)
        m &= Z < self.z_diaphragm(X, Y) - F32(6.0)
        m &= self.inside("cavity", X, Y, Z, 2.0)
        return m

    def _kidney_inside(self, k, X, Y, Z):
        return (k["body"].level(X, Y, Z) < 1) & (k["hilum"].level(X, Y, Z) > 1)

    def lung_inside(self, X, Y, Z, margin=0.0):
        m = Z > self.z_diaphragm(X, Y) + F32(margin)
        m &= self.inside("cavity", X, Y, Z, margin)
        return m

    # -- uptake -----------------------------------------------------------------------------
    def _draw_uptake(self, rng):
        u = lambda k: float(rng.uniform(*UPTAKE_DAY1[k]))  # noqa: E731
        t = lambda k: float(rng.uniform(*EFFECTIVE_HALF_LIFE_H[k]))  # noqa: E731
        self.c1 = {name: u(name) for name in ("kidney_cortex", "liver", "spleen", "adrenal", "pancreas", "stomach",
                                              "bowel", "blood", "muscle", "lung", "marrow")}
        self.medulla_frac = u("kidney_medulla_fraction")
        self.pelvis_frac = u("kidney_pelvis_fraction")
        self.fat_frac = u("fat_fraction_of_muscle")
        self.necrosis_frac = float(rng.uniform(0.05, 0.15))
        self.teff = {name: t(name) for name in ("kidney", "liver", "spleen", "adrenal", "pancreas", "stomach", "bowel",
                                                "blood", "muscle", "lung", "marrow")}
        # CT numbers
        self.hu_liver = float(np.clip(rng.normal(58, 4) - 1.5 * max(self.bmi - 28, 0), 35, 68))
        self.hu_trab = float(np.clip(310 - 2.2 * (self.age - 35) + rng.normal(0, 20), 170, 330))

    # -- lesions ----------------------------------------------------------------------------
    _SITE_POOL = ("liver", "liver", "liver", "node", "node", "pancreas", "mesentery", "lung", "lung_base", "kidney",
                  "bone")

    def _draw_lesions(self, rng):
        n = int(rng.integers(*LESION_COUNT))
        sites = []
        if rng.random() < 0.85:
            sites.append("liver")
        if rng.random() < 0.4:
            sites.append("lung")
        while len(sites) < n:
            sites.append(self._SITE_POOL[int(rng.integers(len(self._SITE_POOL)))])
        self.lesions = []
        for site in sites:
            les = self._new_lesion(rng, site, self._draw_volume(rng, site))
            if les is not None:
                self.lesions.append(les)
        if self.lesion_classes:  # its own stream: the patient and its other lesions stay as they are
            self._fill_size_classes(np.random.default_rng([self.seed, 20220117, 2]))

    def _draw_volume(self, rng, site: str) -> float:
        """A lesion volume (mL) for ``site``: small (log-uniform 1-10 mL) or log-normal around the site median."""
        _, median, cap = LESION_SITES[site]
        if rng.random() < SMALL_LESION_SHARE:
            vol = math.exp(rng.uniform(*np.log(SMALL_LESION_ML)))
        else:
            vol = math.exp(rng.normal(math.log(median), 1.0))
        return float(np.clip(vol, 1.0, cap))

    def _fill_size_classes(self, rng, max_tries: int = 60):
        """Add lesions until every :data:`LESION_SIZE_CLASSES_ML` class holds :data:`LESIONS_PER_CLASS`."""
        for (lo, hi), target in zip(LESION_SIZE_CLASSES_ML, _LESION_CLASS_TARGETS_ML):
            for tries in range(max_tries + 1):
                if sum(lo <= les["volume_ml"] < hi for les in self.lesions) >= LESIONS_PER_CLASS:
                    break
                if tries == max_tries:
                    raise DblurDoseError(f"seed {self.seed}: no room for {LESIONS_PER_CLASS} lesions of {lo:g}-{hi:g} mL; "
                                         "use another seed or lesion_classes=False")
                vol = math.exp(rng.uniform(*np.log(target)))
                sites = [site for site in self._SITE_POOL if LESION_SITES[site][2] >= vol]
                site = "liver" if rng.random() < 0.5 else sites[int(rng.integers(len(sites)))]
                les = self._new_lesion(rng, site, vol, shrink=False)
                if les is not None and lo <= les["volume_ml"] < hi:
                    self.lesions.append(les)

    def _reference_c1(self, tissue: str) -> float:
        """Day-1 concentration (MBq/mL) of the tissue a lesion's contrast refers to."""
        return self.c1["muscle"] * self.fat_frac if tissue == "fat" else self.c1[tissue]

    def _new_lesion(self, rng, site: str, vol: float, shrink: bool = True) -> dict | None:
        """Place one lesion of about ``vol`` mL at ``site`` and draw its contrast, clearance and CT numbers.

        With ``shrink`` a lesion that does not fit is tried smaller, then (outside the liver) as a
        liver lesion; None when it fits nowhere.
        """
        contrast = float(math.exp(rng.uniform(*np.log(LESION_CONTRAST))))
        teff = float(rng.uniform(*EFFECTIVE_HALF_LIFE_H["lesion"]))
        placed = self._place(rng, site, vol)
        for _attempt in range(3 if shrink else 0):
            if placed is not None:
                break
            vol = max(vol * 0.6, 1.0)
            placed = self._place(rng, site, vol)
        if placed is None and shrink and site != "liver":  # no room there: a liver lesion instead
            site = "liver"
            placed = self._place(rng, site, min(vol, 30.0))
        if placed is None:
            return None
        blob, vol_ml = placed
        necrotic = vol_ml >= 10.0 and rng.random() < 0.5
        nu = float(rng.uniform(0.4, 0.65)) if necrotic else 0.0
        if site == "bone":
            hu = float(rng.uniform(*BONE_LESION_HU))
        else:
            hu = float(rng.uniform(32, 46)) if site == "liver" else float(rng.uniform(35, 48))
        reference = LESION_SITES[site][0]
        return {"site": site, "blob": blob, "volume_ml": vol_ml, "contrast": contrast, "reference": reference,
                "c1": contrast * self._reference_c1(reference), "teff": teff, "necrotic": necrotic, "nu": nu,
                "hu": hu, "hu_nec": float(rng.uniform(12, 25))}

    def _lesion_blob(self, rng, c, vol):
        r = (3 * vol * 1000 / (4 * math.pi)) ** (1 / 3)
        e = np.exp(rng.normal(0, 0.12, 3))
        e /= np.prod(e) ** (1 / 3)
        return _Blob(c, r * e, _random_rotation(rng), 2.0, 0.06, _Modes(rng, 5, (1.5 * r, 4 * r)))

    def _surface_points(self, blob, scale=1.1):
        pts = blob.c + (blob.rot @ (_DIRS * blob.axes[None, :] * scale).T).T
        return np.vstack([blob.c[None, :], pts])

    def _inside_organ(self, name, P):
        X, Y, Z = (P[:, i].astype(F32) for i in range(3))
        if name == "liver":
            return self.liver_inside(X, Y, Z)
        if name == "lung":
            return self.lung_inside(X, Y, Z, 5.0) & (self.heart.level(X, Y, Z) > 1.25) & (np.abs(X - F32(self.x_med)) > 22) \
                & (self.aorta.level(X, Y, Z) > 1.6) & ~self._near_spine(X, Y, Z, 12.0)
        if name == "cavity":
            return self.inside("cavity", X, Y, Z, 4.0)
        raise KeyError(name)

    def _near_spine(self, X, Y, Z, margin):
        yv = self.y_vb_of(Z).astype(F32)
        ax = self.ax_of(Z).astype(F32)
        ay = self.ay_of(Z).astype(F32)
        return (np.abs(X) < ax + F32(margin)) & (Y > yv - ay - F32(margin))

    def _clear_of(self, P, strict=True):
        """True when no point of P is inside a major organ/vessel/bone (level checks)."""
        X, Y, Z = (P[:, i].astype(F32) for i in range(3))
        bad = self.liver_inside(X, Y, Z) | self.spleen_inside(X, Y, Z)
        for k in self.kidneys.values():
            bad |= k["body"].level(X, Y, Z) < (1.15 if strict else 1.05)
        if strict:
            for tube in (self.aorta, self.ivc, self.stomach, *self.iliac_a, *self.iliac_v, *self.psoas):
                bad |= tube.level(X, Y, Z) < 1.1
        else:
            for tube in (self.aorta, self.ivc):
                bad |= tube.level(X, Y, Z) < 1.0
            bad |= self.stomach.level(X, Y, Z) < 0.7
        bad |= self.heart.level(X, Y, Z) < 1.1
        bad |= self._near_spine(X, Y, Z, 6.0)
        bad |= Z > self.z_diaphragm(X, Y) - 8
        return not bad.any()

    def _place(self, rng, site, vol):
        r = (3 * vol * 1000 / (4 * math.pi)) ** (1 / 3)
        zlim = STANDARD_FIELD_MM[2] / 2 - r - 6
        ac, bca, bcp = self.cav_axes(self.level_z("L1"))
        for _ in range(200 if site in ("liver", "lung") else 120):
            if site == "liver":
                lo, hi = self._bbox_union(self.liver_parts)
                c = rng.uniform(lo, hi)
            elif site == "lung":
                acl, bcal, bcpl = self.cav_axes(self.level_z("T8"))
                c = np.array([rng.uniform(-acl, acl), rng.uniform(-bcal, bcpl), rng.uniform(self.dia_zC - 20, zlim)])
            elif site == "node":
                kind = rng.integers(3)
                if kind == 0:  # para-aortic / aortocaval
                    z = rng.uniform(self.level_z("L3"), self.level_z("T12"))
                    c = np.array([rng.uniform(-35, 45) * self.hf, float(self.y_vb_of(z) - self.ay_of(z)) - rng.uniform(5, 35), z])
                elif kind == 1:  # mesenteric root
                    c = np.array([rng.uniform(-0.3, 0.35) * ac, rng.uniform(-0.6, -0.15) * bca,
                                  rng.uniform(self.level_z("L4"), self.level_z("L1"))])
                else:  # porta hepatis / peripancreatic
                    c = np.array([rng.uniform(-0.35, 0.1) * ac, rng.uniform(-0.45, -0.1) * bca,
                                  rng.uniform(self.level_z("L2"), self.level_z("T12"))])
            elif site == "lung_base":  # just above the diaphragm, mostly in the posterior recesses
                acl, bcal, bcpl = self.cav_axes(self.dia_zR + 20)
                x, y = rng.uniform(-0.85 * acl, 0.85 * acl), rng.uniform(-0.5 * bcal, 0.9 * bcpl)
                zd = float(self.z_diaphragm(np.array([x], F32), np.array([y], F32))[0])
                c = np.array([x, y, zd + 1.1 * r + rng.uniform(6.0, 16.0)])
            elif site == "kidney":
                c = self._beside_kidney(rng, r)
                if c is None:
                    continue
            elif site == "bone":
                i = self._vertebra_for_lesion(rng, r)
                if i is None:
                    return None
                zc, h, ax, ay = self.vz[i], self.vheight[i], self.vax[i], self.vay[i]
                z = zc + rng.uniform(-1, 1) * max(h / 2 - r - 2, 0.0)
                c = np.array([rng.uniform(-1, 1) * max(ax - r - 2, 0.0) * 0.7,
                              float(self.y_vb_of(z)) + rng.uniform(-1, 1) * max(ay - r - 2, 0.0) * 0.7, z])
            elif site == "pancreas":
                t = rng.uniform(0.2, 0.9)
                i = min(int(t * (len(self.pancreas.p) - 1)), len(self.pancreas.p) - 2)
                f = t * (len(self.pancreas.p) - 1) - i
                c = self.pancreas.p[i] * (1 - f) + self.pancreas.p[i + 1] * f + rng.normal(0, 4, 3)
            else:  # mesentery / peritoneal
                c = np.array([rng.uniform(-0.6, 0.6) * ac, rng.uniform(-0.8, -0.1) * bca,
                              rng.uniform(-STANDARD_FIELD_MM[2] / 2 + r + 10, self.level_z("L2"))])
            if abs(c[2]) > zlim:
                continue
            blob = self._lesion_blob(rng, c, vol)
            vertebra = i if site == "bone" else None
            if not self._fits(site, blob, vertebra):
                continue
            blob.axes = blob.axes * (vol / self._measure(blob)) ** (1 / 3)  # the volume drawn, whatever the deformation
            if self._fits(site, blob, vertebra):
                return blob, self._measure(blob)
        return None

    def _fits(self, site: str, blob: _Blob, vertebra: int | None = None) -> bool:
        """True when a lesion ``blob`` at ``site`` (in vertebral body ``vertebra`` for bone) stays where
        it belongs and clear of the other lesions."""
        P = self._surface_points(blob)
        if any(np.linalg.norm(P[0] - other["blob"].c) < (blob.axes.max() + other["blob"].axes.max()) * 1.15 + 4
               for other in self.lesions):
            return False
        if site == "bone":
            return bool(self._inside_vertebral_body(vertebra, P).all())
        if site == "kidney":  # the points, then the deformed shape on a 0.75 mm lattice: outside both kidneys
            return self._beside_kidney_clear(P) and self._volume_ml(
                lambda X, Y, Z: (blob.level(X, Y, Z) < 1) & self._in_kidney_body(X, Y, Z), blob.bbox(), 0.75) == 0
        if site not in ("liver", "lung", "lung_base"):
            return bool(self._inside_organ("cavity", P).all()) and self._clear_of(P, site != "pancreas")
        if not self._inside_organ("lung" if site == "lung_base" else site, P).all():
            return False
        if site == "liver":
            X, Y, Z = (P[:, k].astype(F32) for k in range(3))
            if (self.ivc.level(X, Y, Z) < 1.2).any() or (self.has_gb and (self.gb.level(X, Y, Z) < 1.2).any()):
                return False
            if any((k["body"].level(X, Y, Z) < 1.1).any() for k in self.kidneys.values()):
                return False
        return True

    def _vertebra_for_lesion(self, rng, r: float) -> int | None:
        """Index of a random vertebra (T9-L5, inside the field) whose body can hold a lesion of radius r (mm)."""
        half_field = STANDARD_FIELD_MM[2] / 2
        fits = [i for i in range(VERTEBRA_LEVELS.index("T9"), len(VERTEBRA_LEVELS))
                if abs(self.vz[i]) + self.vheight[i] / 2 < half_field and min(self.vheight[i] / 2, self.vay[i]) > 1.1 * r + 2]
        return fits[int(rng.integers(len(fits)))] if fits else None

    def _inside_vertebral_body(self, i: int, P: np.ndarray) -> np.ndarray:
        """True for points (n, 3 mm) inside the trabecular bone of vertebral body ``i`` (2 mm off its cortex)."""
        X, Y, Z = (P[:, k] for k in range(3))
        ax, ay = self.vax[i], self.vay[i]
        rr = np.sqrt((X / ax) ** 2 + ((Y - self.y_vb_of(Z)) / ay) ** 2)
        return (rr < 1 - 2.0 / ay) & (np.abs(Z - self.vz[i]) < self.vheight[i] / 2 - 2.0)

    def _beside_kidney(self, rng, r: float) -> np.ndarray | None:
        """Centre (mm) of a lesion of radius r just outside a random kidney's surface (0-2 mm gap
        beyond 1.1 r), on its lateral, polar or dorsal/ventral side (not at the hilum)."""
        k = self.kidneys["left" if rng.random() < 0.5 else "right"]
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        if np.dot(d, -k["rot"][:, 1]) > 0.3:  # the hilum faces -rot[:, 1]
            return None
        s = np.linspace(0.0, 1.6 * k["lh"], 321)
        pts = (k["c"][None, :] + s[:, None] * d[None, :]).astype(F32)
        outside = k["body"].level(pts[:, 0], pts[:, 1], pts[:, 2]) >= 1
        if not outside.any():
            return None
        return k["c"] + d * (s[int(np.argmax(outside))] + 1.1 * r + rng.uniform(0.0, 2.0))

    def _in_kidney_body(self, X, Y, Z):
        """True inside either kidney's outline (hilum included), for points or grid boxes in mm."""
        return (self.kidneys["left"]["body"].level(X, Y, Z) < 1) | (self.kidneys["right"]["body"].level(X, Y, Z) < 1)

    def _beside_kidney_clear(self, P: np.ndarray) -> bool:
        """True when the lesion points P (n, 3 mm) are outside both kidneys and clear of the other organs."""
        X, Y, Z = (P[:, i].astype(F32) for i in range(3))
        bad = self.liver_inside(X, Y, Z) | self.spleen_inside(X, Y, Z) | ~self.inside("cavity", X, Y, Z, 2.0)
        bad |= self._in_kidney_body(X, Y, Z)
        for tube in (self.aorta, self.ivc, *self.psoas):
            bad |= tube.level(X, Y, Z) < 1.0
        bad |= self._near_spine(X, Y, Z, 4.0)
        bad |= Z > self.z_diaphragm(X, Y) - 8
        return not bad.any()

    def _measure(self, blob):
        lo, hi = blob.bbox()
        step = max(float((hi - lo).max()) / 48.0, 0.25)
        return self._volume_ml(lambda X, Y, Z: blob.level(X, Y, Z) < 1, (lo, hi), step)


# --------------------------------------------------------------------------------------------
# Painting onto a grid
# --------------------------------------------------------------------------------------------


class _Canvas:
    def __init__(self, grid: _Grid):
        self.g = grid
        self.labels = np.zeros(grid.shape, np.int16)
        self.tissue = np.zeros(grid.shape, np.uint8)

    def paint(self, bbox, fn, label, relabel=None):
        """``fn(X, Y, Z)`` -> uint8 tissue codes on the box (0: leave the voxel as it is).

        Voxels get ``label``, or ``relabel[tissue]`` for the tissues listed there."""
        b = self.g.box(*bbox)
        if b is None:
            return
        sl, Z, Y, X = b
        t = fn(X, Y, Z)
        if t is None:
            return
        t = np.broadcast_to(t, (Z.shape[0], Y.shape[1], X.shape[2]))
        m = t > 0
        if not m.any():
            return
        tm = t[m]
        if relabel:
            lab = np.full(tm.shape, label, np.int16)
            for tis, other in relabel.items():
                lab[tm == tis] = other
            self.labels[sl][m] = lab
        else:
            self.labels[sl][m] = label
        self.tissue[sl][m] = tm


def _const(mask, tissue):
    return mask.astype(np.uint8) * np.uint8(tissue)


def _shell(level, inner, t_out, t_in):
    """Two-tissue fill: ``t_out`` where ``level`` >= inner (a shell), ``t_in`` inside it."""
    out = np.where(level < inner, np.uint8(t_in), np.uint8(t_out))
    out[level >= 1] = 0
    return out


def _paint_anatomy(P: _Patient, cv: _Canvas):
    g = cv.g
    T = TISSUES
    L = LABELS
    sx, sy, sz = g.spacing
    full_lo = np.array([g.x[0], g.y[0], g.z[0]], float) - 1
    full_hi = np.array([g.x[-1], g.y[-1], g.z[-1]], float) + 1

    # --- body layers (polar tables: one gather per layer) ---
    r2, ib2 = P.polar(g.x[None, :], g.y[:, None])  # (ny, nx)
    iz = P.zindex(g.z)
    for layer, lab, tis in (("body", L["fat"], T["fat"]), ("muscle", L["muscle"], T["muscle"]),
                            ("cavity", L["fat"], T["fat"])):
        R = P.R[layer][iz[:, None, None], ib2[None]]
        m = r2[None] < R
        cv.labels[m] = lab
        cv.tissue[m] = tis
        del R, m

    # --- arms (optional, arms down) ---
    if P.arms_down:
        for sg in (1, -1):
            def arm(X, Y, Z, sg=sg):
                cx = F32(sg) * (P.a_of(Z).astype(F32) + F32(P.arm_gap + P.arm_r))
                d2 = (X - cx) ** 2 + ((Y - F32(P.arm_y)) * F32(1.15)) ** 2
                out = np.zeros(d2.shape, np.uint8)
                out[d2 < F32(P.arm_r**2)] = T["fat"]
                out[d2 < F32((P.arm_r - 8) ** 2)] = T["muscle"]
                dd = (X - cx) ** 2 + (Y - F32(P.arm_y)) ** 2
                q = np.sqrt(dd) / F32(11.0)
                bone = _shell(q, F32(1 - max(2.0, sx) / 11.0), T["cortical_bone"], T["trabecular_bone"])
                out[bone > 0] = bone[bone > 0]
                return out
            x0, x1 = sorted((sg * P.arm_x_in, sg * P.arm_x_out))
            lo = [x0, P.arm_y - 1.1 * P.arm_r, full_lo[2]]
            hi = [x1, P.arm_y + 1.1 * P.arm_r, full_hi[2]]
            cv.paint((lo, hi), arm, L["muscle"], {T["fat"]: L["fat"], T["cortical_bone"]: L["arm_bones"],
                                                   T["trabecular_bone"]: L["arm_bones"]})

    # --- breasts ---
    for b in P.breasts:
        def breast(X, Y, Z, b=b):
            m = (b.level(X, Y, Z) < 1) & ~P.inside("muscle", X, Y, Z)
            return _const(m, T["breast"])
        cv.paint(b.bbox(), breast, L["fat"])

    # --- lungs ---
    ac_t, bca_t, bcp_t = P.cav_axes(P.dia_zR)
    xs = np.linspace(-ac_t, ac_t, 41, dtype=F32)[None, :]
    ys = np.linspace(-bca_t, bcp_t, 41, dtype=F32)[:, None]
    zd_min = float(P.z_diaphragm(xs, ys).min()) - 10
    thorax_lo = [full_lo[0], full_lo[1], max(full_lo[2], zd_min)]

    def lungs(X, Y, Z):
        return _const(P.lung_inside(X, Y, Z), T["lung"])

    cv.paint((thorax_lo, full_hi), lungs, L["lung_right"])
    b = g.box(thorax_lo, full_hi)
    if b is not None:
        sub = cv.labels[b[0]]
        sub[(sub == L["lung_right"]) & (b[3] >= F32(P.x_med))] = L["lung_left"]

    # diaphragm sheet (muscle) and mediastinal fat
    def diaphragm(X, Y, Z):
        zd = P.z_diaphragm(X, Y)
        m = (Z <= zd + F32(1.0)) & (Z > zd - F32(5.0)) & P.inside("cavity", X, Y, Z)
        return _const(m, T["muscle"])

    cv.paint((thorax_lo, full_hi), diaphragm, L["muscle"])

    def mediastinum(X, Y, Z):
        yv = (P.y_vb_of(Z) - P.ay_of(Z)).astype(F32)
        w = F32(7.0) + F32(20.0) * np.clip((Y + F32(bca_t)) / (yv + F32(bca_t)), 0, 1) ** 2
        m = np.abs(X - F32(P.x_med) - F32(0.3) * (w - F32(7))) < w
        m &= P.lung_inside(X, Y, Z)
        return _const(m, T["fat"])

    cv.paint(([P.x_med - 50, full_lo[1], thorax_lo[2]], [P.x_med + 50, full_hi[1], full_hi[2]]), mediastinum, L["fat"])

    def pericardial(X, Y, Z):
        return _const((P.heart.level(X, Y, Z) < 1.13) & P.lung_inside(X, Y, Z), T["fat"])

    cv.paint(P.heart.bbox(1.15), pericardial, L["fat"])

    # --- bowel: small-bowel loops in the lower abdomen, then the colon frame ---
    fb = P.f_bowel

    def small_bowel(X, Y, Z):
        ztop = F32(P.sb_top) + F32(18.0) * P.sb_top_modes(X, Y, F32(0))
        m = P.inside("cavity", X, Y, Z, 3.0) & (Z < ztop)
        yv = (P.y_vb_of(Z) - P.ay_of(Z)).astype(F32)
        m &= Y < yv - F32(6.0) + F32(0.35) * np.abs(X)
        f = fb.sample_grid(Z, Y, X)
        out = np.zeros(m.shape, np.uint8)
        loop = m & (f > F32(P.bowel_thr))
        out[loop] = T["gi_content"]
        out[loop & (f < F32(P.bowel_thr + 0.35))] = T["gi_wall"]
        return out

    lo = [fb.lo[0], fb.lo[1], full_lo[2]]
    hi = [-fb.lo[0], P.cav_axes(P.level_z("L3"))[2] + 20, P.sb_top + 40]
    cv.paint((lo, hi), small_bowel, L["small_bowel"])

    def colon(X, Y, Z):
        q = P.colon.level(X, Y, Z)
        m = q < 1
        if not m.any():
            return None
        r_in = F32(0.85)
        out = np.zeros(q.shape, np.uint8)
        out[m] = T["gi_wall"]
        lumen = q < r_in
        gas = P.f_gas.sample_grid(Z, Y, X)
        out[lumen] = T["stool"]
        out[lumen & (gas > F32(0.3))] = T["gas"]
        return out

    cv.paint(P.colon.bbox(), colon, L["colon"])

    def duo(X, Y, Z):
        q = P.duodenum.level(X, Y, Z)
        return _shell(q, F32(0.75), T["gi_wall"], T["gi_content"])

    cv.paint(P.duodenum.bbox(), duo, L["small_bowel"])

    # --- psoas ---
    for ps in P.psoas:
        cv.paint(ps.bbox(), lambda X, Y, Z, ps=ps: _const(ps.level(X, Y, Z) < 1, T["muscle"]), L["muscle"])

    # --- stomach ---
    y_gas = float(min(P.stomach.p[:, 1] - P.stomach.r * 0.8)) + P.stomach_gas

    def stomach(X, Y, Z):
        q = P.stomach.level(X, Y, Z)
        m = (q < 1) & (Z < P.z_diaphragm(X, Y) - F32(6.0)) & P.inside("cavity", X, Y, Z, 2.0)
        if not m.any():
            return None
        out = np.zeros(q.shape, np.uint8)
        out[m] = T["gi_wall"]
        lumen = m & (q < F32(0.86))
        out[lumen] = T["gi_content"]
        out[lumen & (Y < F32(y_gas))] = T["gas"]
        return out

    cv.paint(P.stomach.bbox(), stomach, L["stomach"])

    # --- liver, gallbladder, spleen, pancreas ---
    cv.paint(P._bbox_union(P.liver_parts), lambda X, Y, Z: _const(P.liver_inside(X, Y, Z), T["liver"]), L["liver"])
    if P.has_gb:
        cv.paint(P.gb.bbox(), lambda X, Y, Z: _const((P.gb.level(X, Y, Z) < 1) & P.inside("cavity", X, Y, Z, 2.0),
                                                      T["bile"]), L["gallbladder"])
    cv.paint(P.spleen[0].bbox(), lambda X, Y, Z: _const(P.spleen_inside(X, Y, Z), T["spleen"]), L["spleen"])
    cv.paint(P.pancreas.bbox(), lambda X, Y, Z: _const(P.pancreas.level(X, Y, Z) < 1, T["pancreas"]), L["pancreas"])

    # --- heart and vessels ---
    def heart(X, Y, Z):
        return _const((P.heart.level(X, Y, Z) < 1) & (Z > P.z_diaphragm(X, Y) + F32(3.0)), T["blood"])

    cv.paint(P.heart.bbox(), heart, L["heart"])
    for tube, lab in ((P.aorta, L["aorta"]), (P.iliac_a[0], L["aorta"]), (P.iliac_a[1], L["aorta"]),
                      (P.ivc, L["inferior_vena_cava"]), (P.iliac_v[0], L["inferior_vena_cava"]),
                      (P.iliac_v[1], L["inferior_vena_cava"])):
        cv.paint(tube.bbox(), lambda X, Y, Z, tube=tube: _const(tube.level(X, Y, Z) < 1, T["blood"]), lab)

    # --- kidneys (perirenal fat first), adrenals ---
    for side in ("left", "right"):
        k = P.kidneys[side]
        body = k["body"]
        cv.paint(body.bbox(1.3), lambda X, Y, Z, body=body: _const(body.level(X, Y, Z) < 1.22, T["fat"]), L["fat"])

    def kidney_fn(k):
        def fn(X, Y, Z):
            body, hilum, pelvis = k["body"], k["hilum"], k["pelvis"]
            q = body.level(X, Y, Z)
            m = (q < 1) & (hilum.level(X, Y, Z) > 1)
            if not m.any():
                return None
            u, v, w = body.local(X, Y, Z)
            lh = F32(k["lh"])
            out = np.zeros(m.shape, np.uint8)
            out[m] = T["kidney_cortex"]
            # medullary pyramids: a shell between sinus and cortex, split into cells whose
            # separating columns (of Bertin) narrow outward
            rin, rout = F32(0.42), F32(0.8)
            fu = np.mod((u / lh + F32(1)) * F32(2.0), F32(1))  # 4 rows along the long axis
            psi = np.arctan2(w / F32(0.38), v / F32(0.5))
            fp = np.mod((psi + F32(np.pi)) * F32(3 / (2 * np.pi)) + F32(0.25), F32(1))  # 3 columns around
            gap = F32(0.3) - F32(0.24) * np.clip((q - rin) / (rout - rin), 0, 1)
            med = m & (q > rin) & (q < rout) & (np.minimum(fu, 1 - fu) > gap) & (np.minimum(fp, 1 - fp) > gap)
            out[med] = T["kidney_medulla"]
            out[m & (pelvis.level(X, Y, Z) < 1)] = T["kidney_pelvis"]
            return out
        return fn

    for side in ("left", "right"):
        k = P.kidneys[side]
        cv.paint(k["body"].bbox(), kidney_fn(k), L[f"kidney_{side}"])
    for side in ("left", "right"):
        a = P.adrenals[side]
        cv.paint(a.bbox(), lambda X, Y, Z, a=a: _const(a.level(X, Y, Z) < 1, T["adrenal"]), L[f"adrenal_{side}"])

    # --- spine ---
    _paint_spine(P, cv)
    _paint_ribs(P, cv, r2, ib2)

    # --- sternum ---
    zx = P.level_z("T10")

    def sternum(X, Y, Z):
        ib_ant = np.full(Z.shape, P.NTH // 4, np.intp)
        yc = -(P.radius("cavity", Z, ib_ant) + F32(7.0))  # in the anterior chest wall
        wx = F32(13.0) * np.clip((Z - F32(zx)) / F32(30.0), F32(0.45), F32(1.0))
        q = np.sqrt((X / wx) ** 2 + ((Y - yc) / F32(6.0)) ** 2)
        m = (q < 1) & (Z > F32(zx))
        return _shell(np.where(m, q, F32(2)), F32(1 - max(1.5, sx) / 6.0), T["cortical_bone"], T["trabecular_bone"])

    bca_top = P.cav_axes(200.0)[1]
    cv.paint(([-20, -bca_top - 60, zx], [20, -bca_top + 10, full_hi[2]]), sternum, L["sternum"])

    # --- sacrum and iliac wings ---
    t_cort = max(1.5, (sx * sy * sz) ** (1 / 3))

    def sacrum(X, Y, Z):
        q = P.sacrum.level(X, Y, Z)
        return _shell(q, F32(1 - t_cort / 17.0), T["cortical_bone"], T["trabecular_bone"])

    cv.paint(P.sacrum.bbox(), sacrum, L["sacrum"])
    for il in P.ilium:
        sg, cx, cy, rx0, ry = il["sg"], il["cx"], il["cy"], il["rx"], il["ry"]
        zc = P.z_crest

        def ilium_coords(X, Y, Z, rx0=rx0, ry=ry, cx=cx, cy=cy, sg=sg, zc=zc):
            rx = F32(rx0) * (F32(1) - F32(0.3) * np.clip((F32(zc) - Z) / F32(120.0), 0, 1))
            u = F32(sg) * (X - F32(cx))
            v = Y - F32(cy)
            rho = np.sqrt((u / rx) ** 2 + (v / F32(ry)) ** 2)
            arc = (u > F32(-0.1) * rx) & (v > F32(-0.85 * ry))
            ztop = F32(zc) - F32(25.0) * (v / F32(ry)) ** 2
            return rho, arc, ztop, rx

        def ilium(X, Y, Z, ilium_coords=ilium_coords):
            rho, arc, ztop, rx = ilium_coords(X, Y, Z)
            d = np.abs(rho - F32(1)) * rx  # ~ distance (mm) from the mid-surface of the plate
            half = F32(4.5 * P.hf)
            m = arc & (Z < ztop) & (d < half)
            out = np.zeros(m.shape, np.uint8)
            out[m] = T["trabecular_bone"]
            out[m & (d > half - F32(t_cort))] = T["cortical_bone"]
            return out

        def pelvic_muscles(X, Y, Z, ilium_coords=ilium_coords, sg=sg, cx=cx):
            rho, arc, ztop, rx = ilium_coords(X, Y, Z)
            u = F32(sg) * (X - F32(cx))
            iliacus = (rho > F32(0.72)) & (rho < 1) & (u > F32(0.25) * rx)
            gluteal = (rho >= 1) & (rho < F32(1) + F32(45.0) / rx) & (u > F32(0.3) * rx)
            m = arc & (Z < ztop - F32(8.0)) & (iliacus | gluteal) & P.inside("muscle", X, Y, Z)
            return _const(m, T["muscle"])

        bb = ([min(sg * (cx - 0.2 * rx0), sg * (cx + rx0 + 50)), cy - ry - 50, full_lo[2]],
              [max(sg * (cx - 0.2 * rx0), sg * (cx + rx0 + 50)), cy + ry + 50, zc + 5])
        cv.paint(bb, pelvic_muscles, L["muscle"])
        cv.paint(bb, ilium, L["pelvis"])


def _paint_spine(P: _Patient, cv: _Canvas):
    g = cv.g
    T, L = TISSUES, LABELS
    sx, sy, sz = g.spacing
    t_xy = max(1.5, sx)
    t_z = max(1.5, sz)
    zlo, zhi = float(g.z[0]) - sz, float(g.z[-1]) + sz
    # spinal canal along the whole field
    rc_of = lambda z: (8.0 + 2.0 * (1 - P.thorax_of(z))) * P.hf  # noqa: E731

    def canal(X, Y, Z):
        yc = (P.y_vb_of(Z) + P.ay_of(Z) + rc_of(Z) + 2.0).astype(F32)
        rc = rc_of(Z).astype(F32)
        return _const(X**2 + ((Y - yc) * F32(1.1)) ** 2 < rc**2, T["csf"])

    yall = P.y_vb_of(np.linspace(zlo, zhi, 50))
    cv.paint(([-20, yall.min() - 5, zlo], [20, yall.max() + 60, zhi]), canal, L["spinal_canal"])

    for i in range(len(VERTEBRA_LEVELS)):
        zc, h, ax, ay = P.vz[i], P.vheight[i], P.vax[i], P.vay[i]
        if zc + P.vpitch[i] < zlo or zc - P.vpitch[i] > zhi:
            continue
        label = VERTEBRA_LABEL_BASE + 1 + i
        yvb = float(P.y_vb_of(zc))
        lumbar = i >= 12

        def body(X, Y, Z, zc=zc, h=h, ax=ax, ay=ay):
            yv = P.y_vb_of(Z).astype(F32)
            rr = np.sqrt((X / F32(ax)) ** 2 + ((Y - yv) / F32(ay)) ** 2)
            dz = np.abs(Z - F32(zc))
            m = (rr < 1) & (dz < F32(h / 2))
            out = np.zeros(m.shape, np.uint8)
            out[m] = T["trabecular_bone"]
            shell = m & ((rr > F32(1 - t_xy / ay)) | (dz > F32(h / 2 - t_z)))
            out[shell] = T["cortical_bone"]
            return out

        cv.paint(([-ax - 2, yvb - ay - 15, zc - h / 2 - 1], [ax + 2, yvb + ay + 15, zc + h / 2 + 1]), body, label)
        # posterior elements: pedicles, lamina ring, spinous and transverse processes
        rc = float(rc_of(zc))
        ycan = yvb + ay + rc + 2.0
        parts = [
            _Blob([0.62 * ax, yvb + ay + 5, zc + 2], [4.5, 8.0, 0.32 * h]),
            _Blob([-0.62 * ax, yvb + ay + 5, zc + 2], [4.5, 8.0, 0.32 * h]),
            _Blob([0.0, ycan + rc + 15, zc - (5 if lumbar else 12)], [4.0, 17.0 * P.hf, 0.35 * h * (1.0 if lumbar else 1.2)],
                  _frame([0, 1, -0.15 if lumbar else -0.5], [1, 0, 0])),
        ]
        tp_len = (15.0 if lumbar else 11.0) * P.hf
        for sg in (1, -1):
            tp_dir = [sg, 0.15 if lumbar else 0.6, 0.0]
            parts.append(_Blob([sg * (ax * 0.7 + tp_len * 0.9), ycan - (4 if lumbar else -3), zc + 1],
                               [tp_len, 4.0, 5.0], _frame(tp_dir, [0, 0, 1])))

        def posterior(X, Y, Z, parts=parts, zc=zc, h=h, ycan=ycan, rc=rc):
            m = np.zeros(np.broadcast_shapes(X.shape, Y.shape, Z.shape), bool)
            for p in parts:
                m |= p.level(X, Y, Z) < 1
            d = np.sqrt(X**2 + (Y - F32(ycan)) ** 2)
            m |= (d > F32(rc)) & (d < F32(rc + 6.0)) & (Y > F32(ycan - 3)) & (np.abs(Z - F32(zc - 2)) < F32(0.42 * h))
            return _const(m, T["bone_mixed"])

        reach = ax * 0.7 + 2 * tp_len + 6
        cv.paint(([-reach, yvb, zc - h], [reach, ycan + rc + 40 * P.hf, zc + h / 2 + 2]), posterior, label)

        # disc below this vertebra
        if i + 1 < len(VERTEBRA_LEVELS):
            z_top = P.vz[i + 1] + P.vheight[i + 1] / 2
            z_bot = zc - h / 2
            axd, ayd = (ax + P.vax[i + 1]) / 2, (ay + P.vay[i + 1]) / 2

            def disc(X, Y, Z, z_top=z_top, z_bot=z_bot, axd=axd, ayd=ayd):
                yv = P.y_vb_of(Z).astype(F32)
                rr = (X / F32(axd)) ** 2 + ((Y - yv) / F32(ayd)) ** 2
                return _const((rr < 1) & (Z >= F32(z_top)) & (Z <= F32(z_bot)), T["disc"])

            cv.paint(([-axd - 1, yvb - ayd - 15, z_top - 1], [axd + 1, yvb + ayd + 15, z_bot + 1]), disc,
                     L["intervertebral_discs"])


def _paint_ribs(P: _Patient, cv: _Canvas, r2, ib2):
    """Ribs 3-12 on both sides: tubes running in the body wall just outside the cavity."""
    g = cv.g
    T, L = TISSUES, LABELS
    sx, sy, sz = g.spacing
    th_bins = (np.arange(P.NTH) + 0.5) / P.NTH * 2 * np.pi - np.pi
    phi_bins = np.abs(np.angle(np.exp(1j * (th_bins - np.pi / 2))))  # 0 at the posterior midline, pi anterior
    idx = np.arange(2, 12)  # ribs 3..12 attach at T3..T12
    z_att = P.vz[idx] + 4.0
    phi0 = 0.42
    drop = 70.0 * P.hf
    phi_end = np.array([2.6, 2.6, 2.6, 2.5, 2.4, 2.25, 2.1, 1.95, 1.55, 1.05])
    gamma = 1.3
    g_phi = np.clip((phi_bins - phi0) / (np.pi - phi0), 0, None) ** gamma  # 0..1
    half_r, half_z = 4.0 * P.hf, 6.0 * P.hf
    zmin_needed = z_att.min() - drop - 10
    kz = np.nonzero(g.z > zmin_needed)[0]
    if kz.size == 0:
        return
    cav = P.R["cavity"][P.zindex(g.z[kz])[:, None, None], ib2[None]]  # (nk, ny, nx)
    dr = r2[None] - (cav + F32(5.0))
    near = np.abs(dr) < F32(half_r + 0.5)
    near &= (phi_bins[ib2] > phi0)[None]
    iz, iy, ix = np.nonzero(near)
    if iz.size == 0:
        return
    zz = g.z[kz][iz].astype(float)
    gp = g_phi[ib2[iy, ix]]
    zeq = zz + drop * gp  # height the point would have at the rib's posterior attachment
    order = np.argsort(z_att)
    za = z_att[order]
    j = np.clip(np.searchsorted(za, zeq), 1, len(za) - 1)
    pick = np.where(np.abs(zeq - za[j - 1]) < np.abs(zeq - za[j]), j - 1, j)
    k = order[pick]
    dz = zeq - z_att[k]
    drr = dr[iz, iy, ix].astype(float)
    q = np.sqrt((drr / half_r) ** 2 + (dz / half_z) ** 2)
    ok = (q < 1) & (phi_bins[ib2[iy, ix]] < phi_end[k])
    t_c = max(1.2, (sx * sy * sz) ** (1 / 3)) / half_r
    tissue = np.where(q > 1 - t_c, T["cortical_bone"], T["trabecular_bone"]).astype(np.uint8)
    zi, yi, xi = kz[iz[ok]], iy[ok], ix[ok]
    cv.labels[zi, yi, xi] = L["ribs"]
    cv.tissue[zi, yi, xi] = tissue[ok]


def _paint_lesions(P: _Patient, cv: _Canvas):
    T = TISSUES
    for n, les in enumerate(P.lesions, start=1):
        blob = les["blob"]

        def fn(X, Y, Z, blob=blob, nu=les["nu"]):
            q = blob.level(X, Y, Z)
            out = _const(q < 1, T["lesion"])
            if nu > 0:
                out[q < F32(nu)] = T["necrosis"]
            return out

        cv.paint(blob.bbox(), fn, LESION_LABEL_BASE + n)


# --------------------------------------------------------------------------------------------
# CT and activity
# --------------------------------------------------------------------------------------------

_HU = {
    "air": -1000.0, "fat": -100.0, "muscle": 52.0, "lung": -855.0, "blood": 40.0, "liver": 58.0, "spleen": 47.0,
    "kidney_cortex": 36.0, "kidney_medulla": 28.0, "kidney_pelvis": 8.0, "pancreas": 40.0, "adrenal": 32.0,
    "gi_wall": 42.0, "gi_content": 18.0, "gas": -980.0, "stool": -40.0, "bile": 8.0, "csf": 15.0, "disc": 85.0,
    "trabecular_bone": 250.0, "cortical_bone": 1250.0, "bone_mixed": 550.0, "lesion": 40.0, "necrosis": 18.0,
    "breast": -45.0,
}
_HU_TEXTURE = {"fat": 10.0, "lung": 30.0, "muscle": 4.0, "liver": 4.0, "spleen": 3.0, "stool": 60.0,
               "gi_content": 8.0, "trabecular_bone": 25.0, "bone_mixed": 60.0, "breast": 30.0}


def _concentrations(P: _Patient, t_days: float | None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Per-label concentration (MBq/mL at ``t_days``) and per-tissue factor lookup tables.

    Every compartment clears mono-exponentially from its day-1 value ``c1``:
    ``c(t) = c1 2^(-(t - 24 h) / T_eff)``. ``t_days=None`` gives the time integral from the
    injection to infinity instead, ``c1 2^(24 h / T_eff) T_eff / ln 2`` (MBq h/mL).
    """
    if t_days is None:
        decay = lambda c1, teff: c1 * 2.0 ** (24.0 / teff) * teff / math.log(2.0)  # noqa: E731
    else:
        dt_h = (t_days - 1.0) * 24.0
        decay = lambda c1, teff: c1 * 2.0 ** (-dt_h / teff)  # noqa: E731
    c = {k: decay(P.c1[k], P.teff[t]) for k, t in (
        ("kidney_cortex", "kidney"), ("liver", "liver"), ("spleen", "spleen"), ("adrenal", "adrenal"),
        ("pancreas", "pancreas"), ("stomach", "stomach"), ("bowel", "bowel"), ("blood", "blood"),
        ("muscle", "muscle"), ("lung", "lung"), ("marrow", "marrow"))}
    c["fat"] = c["muscle"] * P.fat_frac
    c["gallbladder"] = 0.1 * c["liver"]
    c["csf"] = 0.3 * c["blood"]
    n_max = LESION_LABEL_BASE + len(P.lesions) + 1
    lut = np.zeros(max(n_max, 64), np.float64)
    L = LABELS
    per_label = {
        "fat": c["fat"], "muscle": c["muscle"], "lung_left": c["lung"], "lung_right": c["lung"], "heart": c["blood"],
        "aorta": c["blood"], "inferior_vena_cava": c["blood"], "liver": c["liver"], "gallbladder": c["gallbladder"],
        "spleen": c["spleen"], "stomach": c["stomach"], "pancreas": c["pancreas"], "adrenal_left": c["adrenal"],
        "adrenal_right": c["adrenal"], "small_bowel": c["bowel"], "colon": c["bowel"], "kidney_left": c["kidney_cortex"],
        "kidney_right": c["kidney_cortex"], "spinal_canal": c["csf"], "intervertebral_discs": 0.3 * c["marrow"],
        "ribs": c["marrow"], "sternum": c["marrow"], "pelvis": c["marrow"], "sacrum": c["marrow"],
        "arm_bones": c["marrow"],
    }
    for name, v in per_label.items():
        lut[L[name]] = v
    for i in range(len(VERTEBRA_LEVELS)):
        lut[VERTEBRA_LABEL_BASE + 1 + i] = c["marrow"]
    lesion_c = []
    for n, les in enumerate(P.lesions, start=1):
        v = decay(les["c1"], les["teff"])
        lut[LESION_LABEL_BASE + n] = v
        lesion_c.append(v)
    tf = np.ones(len(TISSUES), np.float64)
    T = TISSUES
    tf[T["air"]] = 0.0
    tf[T["gas"]] = 0.0
    tf[T["kidney_medulla"]] = P.medulla_frac
    tf[T["kidney_pelvis"]] = P.pelvis_frac
    tf[T["gi_content"]] = 0.3
    tf[T["stool"]] = 0.2
    tf[T["cortical_bone"]] = 0.15
    tf[T["bone_mixed"]] = 0.5
    tf[T["necrosis"]] = P.necrosis_frac
    tf[T["breast"]] = 1.5
    return lut, tf, {"organs": c, "lesions": lesion_c}


def _heterogeneity_sigma(n_labels: int) -> np.ndarray:
    s = np.full(n_labels, 0.10, np.float32)
    L = LABELS
    for name, v in (("fat", 0.15), ("muscle", 0.15), ("liver", 0.12), ("spleen", 0.10), ("small_bowel", 0.3),
                    ("colon", 0.3), ("stomach", 0.2), ("kidney_left", 0.10), ("kidney_right", 0.10)):
        s[L[name]] = v
    s[LESION_LABEL_BASE + 1:] = 0.25
    return s


#: The organ each lesion site counts towards in :attr:`Phantom.info` (others: ``soft_tissue``).
_LESION_ORGAN = {"liver": "liver", "lung": "lung", "lung_base": "lung", "pancreas": "pancreas", "bone": "bone"}


def _heterogeneity(f_act: np.ndarray, labels: np.ndarray, n_labels: int) -> np.ndarray:
    """Log-normal uptake heterogeneity (mean 1) from a smooth unit field, per label's sigma; consumes ``f_act``."""
    sl = _heterogeneity_sigma(n_labels)[labels]
    f_act *= sl
    f_act -= F32(0.5) * sl * sl
    np.exp(f_act, out=f_act)
    return f_act


def _paint_activity(lut: np.ndarray, tf: np.ndarray, labels: np.ndarray, tissue: np.ndarray,
                    heterogeneity: np.ndarray, spacing: tuple[float, float, float], pet_fwhm_mm: float) -> np.ndarray:
    """Activity per voxel (float32): ``lut`` per label (MBq/mL, or MBq h/mL for a time integral) x 1e6,
    times the tissue factor and the heterogeneity, blurred by ``pet_fwhm_mm`` (mm), zero outside the body.

    Linear in ``lut``: the time integral of the activity is this of the time-integrated ``lut``.
    """
    act = (lut.astype(F32) * F32(1e6))[labels]
    act *= tf.astype(F32)[tissue]
    act *= heterogeneity
    sigma_vox = [pet_fwhm_mm / 2.3548 / s for s in (spacing[2], spacing[1], spacing[0])]
    if pet_fwhm_mm > 0:
        act = ndimage.gaussian_filter(act, sigma_vox, mode="nearest")
    act[labels <= 0] = 0.0
    np.maximum(act, 0, out=act)
    return act


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


def _make_phantoms(seed: int, shape, spacing, times_days: Sequence[float], *, pet_fwhm_mm: float,
                   ct_noise_hu: float, lesion_classes: bool,
                   integrate: bool = False) -> tuple[list[Phantom], Volume | None]:
    """The patient at each of ``times_days`` (and the time-integrated activity when ``integrate``)."""
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

    P = _Patient(seed, lesion_classes)
    grid = _Grid(shape, spacing)
    cv = _Canvas(grid)
    _paint_anatomy(P, cv)
    _paint_lesions(P, cv)
    labels, tissue = cv.labels, cv.tissue

    # smooth fields on fixed physical lattices (grid-independent)
    frng = np.random.default_rng([seed, 7])
    box_lo, box_hi = [-300.0, -300.0, -280.0], [300.0, 300.0, 280.0]
    f_act = _Field(frng, box_lo, box_hi, 4.0, 10.0).sample_grid(grid.z, grid.y, grid.x)
    f_ct = _Field(frng, box_lo, box_hi, 4.0, 6.0).sample_grid(grid.z, grid.y, grid.x)

    # ---- CT ----
    hu_lut = np.array([_HU[name] for name in TISSUES], np.float32)
    hu_lut[TISSUES["liver"]] = P.hu_liver
    hu_lut[TISSUES["trabecular_bone"]] = P.hu_trab
    t_mean = (spacing[0] * spacing[1] * spacing[2]) ** (1 / 3)
    hu_lut[TISSUES["cortical_bone"]] = P.hu_trab + (1250.0 - P.hu_trab) * min(1.0, 1.5 / t_mean)
    tex_lut = np.full(len(TISSUES), 2.0, np.float32)
    tex_lut[TISSUES["air"]] = 0.0
    for name, v in _HU_TEXTURE.items():
        tex_lut[TISSUES[name]] = v
    hu = hu_lut[tissue]
    hu += tex_lut[tissue] * f_ct
    # lesions: their own CT numbers
    for n, les in enumerate(P.lesions, start=1):
        b = grid.box(*les["blob"].bbox())
        if b is None:
            continue
        sl = b[0]
        sub_l, sub_t, sub_h = labels[sl], tissue[sl], hu[sl]
        m = sub_l == LESION_LABEL_BASE + n
        sub_h[m & (sub_t == TISSUES["lesion"])] += F32(les["hu"] - _HU["lesion"])
        sub_h[m & (sub_t == TISSUES["necrosis"])] += F32(les["hu_nec"] - _HU["necrosis"])
    # lungs: denser posteriorly (dependent lung)
    lung = tissue == TISSUES["lung"]
    if lung.any():
        grad = np.clip((grid.y[None, :, None] + 100.0) / 200.0, 0, 1).astype(F32) * F32(70.0)
        hu += np.where(lung, grad, F32(0))
    nrng = np.random.default_rng([seed, 11])
    hu += nrng.standard_normal(shape, dtype=F32) * F32(ct_noise_hu)
    np.clip(hu, -1024.0, 3071.0, out=hu)
    density = hu_to_density(hu, exact=True)  # the truth: interpolated per voxel

    # ---- activity ----
    heterogeneity = _heterogeneity(f_act, labels, _concentrations(P, 1.0)[0].size)
    del f_act
    phantoms = []
    for time_days in times_days:
        time_days = float(time_days)
        lut, tf, conc = _concentrations(P, time_days)
        act = _paint_activity(lut, tf, labels, tissue, heterogeneity, spacing, pet_fwhm_mm)

        vox_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
        total_mbq = float(act.sum(dtype=np.float64) * vox_ml / 1e6)

        label_names = _label_names(P, grid)
        counts = np.bincount(labels.ravel().astype(np.intp, copy=False) if labels.min() >= 0 else np.zeros(1, np.intp))
        vols = {name: float((counts[v] if v < counts.size else 0) * vox_ml) for v, name in label_names.items()}
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
        info = {
            "seed": seed, "sex": P.sex, "age": P.age, "height_cm": round(P.height, 1), "weight_kg": round(P.weight, 1),
            "bmi": round(P.bmi, 1), "body_width_mm": round(2 * P.a0, 1), "body_depth_mm": round(P.b_ant0 + P.b_post0, 1),
            "arms_down": P.arms_down, "gallbladder": P.has_gb,
            "time_days": time_days, "injected_activity_MBq": INJECTED_ACTIVITY_MBQ,
            "total_activity_MBq": total_mbq, "fraction_of_injected_in_field": total_mbq / INJECTED_ACTIVITY_MBQ
            * 2.0 ** (time_days * 24 / LU177_HALF_LIFE_H),
            "concentrations_MBq_per_mL": {k: float(v) for k, v in conc["organs"].items()},
            "kidney_medulla_fraction": P.medulla_frac, "kidney_pelvis_fraction": P.pelvis_frac,
            "effective_half_lives_h": dict(P.teff),
            "lesions": lesions,
            "volumes_ml": vols,
            "vertebra_z_mm": {name: round(float(z), 1) for name, z in zip(VERTEBRA_LEVELS, P.vz)},
            "pet_fwhm_mm": pet_fwhm_mm, "ct_noise_hu": ct_noise_hu,
            "paint_priority": list(PAINT_PRIORITY),
        }
        geo = dict(spacing=spacing, origin=grid.origin)
        meta = {"seed": str(seed), "time_days": str(time_days)}
        hu_v = Volume(hu, **geo)
        hu_v.metadata = {**meta, "quantity": "CT", "units": "HU"}
        phantoms.append(Phantom(
            hu=hu_v,
            density=Volume(density, **geo),
            activity=Volume(act.astype(F32, copy=False), **geo),
            labels=Volume(labels, **geo),
            label_names=label_names,
            info=info,
            tissue=Volume(tissue, **geo),
            tissue_names={v: k for k, v in TISSUES.items()},
        ))
    integral = None
    if integrate:
        lut, tf, _ = _concentrations(P, None)
        integral = Volume(_paint_activity(lut, tf, labels, tissue, heterogeneity, spacing, pet_fwhm_mm),
                          spacing=spacing, origin=grid.origin)
        integral.metadata = {"seed": str(seed), "quantity": "time-integrated activity", "units": "Bq h/mL"}
    return phantoms, integral


def _label_names(P: _Patient, grid: _Grid) -> dict[int, str]:
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
