"""A second, differently made family of virtual patients ("shapes"), held out to test generalisation.

:func:`make_shapes_phantom` returns the same :class:`~DblurDoseLib.simulation.phantom.Phantom` as
:func:`DblurDoseLib.simulation.phantom.make_phantom`, with the same labels (:data:`~DblurDoseLib.simulation.phantom.LABELS`,
vertebrae and lesions), tissue classes (:data:`~DblurDoseLib.simulation.phantom.TISSUES`), uptake tables
(:data:`~DblurDoseLib.simulation.phantom.UPTAKE_DAY1`, :data:`~DblurDoseLib.simulation.phantom.EFFECTIVE_HALF_LIFE_H`)
and grid conventions (arrays ``[z, y, x]``, spacing ``(x, y, z)`` mm, LPS, grid centred on the
body), so :func:`~DblurDoseLib.simulation.phantom.voi_masks` and :mod:`DblurDoseLib.evaluation.evaluate` read it
unchanged. The way it is made shares nothing else with the anatomical family:

* **Shapes**: every organ and lesion is a *star-shaped implicit surface*: an ellipsoid whose
  radius in each direction ``u`` is multiplied by ``exp(sum_k w_k exp(kappa_k (u.d_k - 1)))``, a
  sum of random Gaussian bumps on the sphere. Its volume is known in closed form up to a
  quadrature over directions, so a shape is scaled to an exact volume (lesions are exact on a
  fine grid). Organs are then bent by one smooth random displacement field (Gaussian radial-basis
  functions with random weights on a fixed physical lattice) shared by the whole patient.
* **Layout**: a simpler one: the body is a stack of superellipses whose half-width, depths and
  exponent vary smoothly along z; a subcutaneous fat and a muscle layer; a diaphragm level below
  which liver, spleen, stomach, pancreas, a bowel region (small bowel centrally, colon around it)
  and the kidneys sit, and above which two lungs and the heart; a straight vertebral column of
  elliptic vertebral bodies (cortical shell, trabecular core), discs, canal and posterior arches;
  aorta and inferior vena cava as tilted cylinders.
* **Kidneys**: cortex, medulla and pelvis in ratios drawn per kidney (cortex thickness and pelvis
  size vary), the pelvis reaching the medial hilum.
* **Lesions**: 7-17 drawn per patient (one that finds no room is dropped), 1-40 mL (several of 1-10 mL), contrast to their background tissue
  drawn log-uniformly in 3:1-100:1 (kept inside the uptake table's lesion range), some with a
  necrotic core, in the liver, beside a kidney, in a vertebral body, at the lung base and in
  para-aortic nodes.
* **Uptake**: organ concentrations from the shared day-1 tables with mono-exponential clearance,
  times a smooth multiplicative field bounded to +-20 % (``1 + 0.2 tanh(f)``).
* **CT**: HU drawn per patient and tissue from physical ranges (:data:`HU_RANGES`), smooth texture
  and white noise; density from :func:`DblurDoseLib.physics.density.hu_to_density`, so density and HU are
  consistent by construction.

Everything depends on the seed only (in physical millimetres), so grids of different resolution
over the same field give the same patient. A 130x256x256 grid takes a few seconds on one core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from ..errors import DblurDoseError
from ..io.volume import Volume
from ..physics.density import hu_to_density
from .anatomy import (
    EFFECTIVE_HALF_LIFE_H,
    INJECTED_ACTIVITY_MBQ,
    LABELS,
    LESION_LABEL_BASE,
    LU177_HALF_LIFE_H,
    STANDARD_FIELD_MM,
    STANDARD_SHAPE,
    STANDARD_SPACING,
    TISSUES,
    UPTAKE_DAY1,
    VERTEBRA_LABEL_BASE,
    VERTEBRA_LEVELS,
)
from .phantom import Phantom, standard_spacing

F32 = np.float32
#: The family name recorded in ``Phantom.info["family"]`` and in data-set manifests.
FAMILY = "shapes"

#: CT numbers (HU) per tissue class, drawn uniformly per patient from these ranges.
HU_RANGES: dict[str, tuple[float, float]] = {
    "air": (-1000.0, -1000.0), "fat": (-120.0, -85.0), "muscle": (40.0, 60.0), "lung": (-880.0, -780.0),
    "blood": (35.0, 50.0), "liver": (45.0, 70.0), "spleen": (40.0, 55.0), "kidney_cortex": (30.0, 42.0),
    "kidney_medulla": (20.0, 32.0), "kidney_pelvis": (0.0, 15.0), "pancreas": (30.0, 50.0),
    "adrenal": (25.0, 40.0), "gi_wall": (35.0, 50.0), "gi_content": (0.0, 30.0), "gas": (-990.0, -950.0),
    "stool": (-60.0, 0.0), "bile": (0.0, 15.0), "csf": (5.0, 15.0), "disc": (70.0, 100.0),
    "trabecular_bone": (150.0, 350.0), "cortical_bone": (900.0, 1400.0), "bone_mixed": (400.0, 700.0),
    "lesion": (25.0, 55.0), "necrosis": (5.0, 25.0), "breast": (-60.0, -30.0),
}
#: Amplitude (HU, 1 sd) of the smooth CT texture per tissue; 2 HU elsewhere.
HU_TEXTURE: dict[str, float] = {"fat": 12.0, "lung": 35.0, "muscle": 5.0, "liver": 5.0, "gi_content": 10.0,
                                "trabecular_bone": 30.0, "bone_mixed": 50.0}
#: Lesion volumes, mL: small (drawn log-uniformly) and large.
LESION_SMALL_ML: tuple[float, float] = (1.0, 10.0)
LESION_LARGE_ML: tuple[float, float] = (10.0, 40.0)
#: Lesion-to-background concentration ratio, drawn log-uniformly.
LESION_CONTRAST: tuple[float, float] = (3.0, 100.0)
#: Bound of the multiplicative uptake heterogeneity (fraction).
HETEROGENEITY = 0.20

_LATTICE_LO = np.array([-320.0, -320.0, -300.0])  # x, y, z mm: every field is defined on this box
_LATTICE_HI = -_LATTICE_LO


# --------------------------------------------------------------------------------------------
# Random smooth fields and star-shaped implicit surfaces
# --------------------------------------------------------------------------------------------

class _RbfField:
    """A smooth random scalar field, unit standard deviation: Gaussian bumps of width ``sigma_mm``
    on a fixed physical lattice of pitch ``step_mm`` with N(0, 1) weights (separable, so it is
    evaluated on a box by three matrix products)."""

    def __init__(self, rng: np.random.Generator, step_mm: float, sigma_mm: float):
        self.nodes = [np.arange(lo, hi + step_mm, step_mm) for lo, hi in zip(_LATTICE_LO, _LATTICE_HI)]
        self.sigma = float(sigma_mm)
        self.weights = rng.standard_normal((self.nodes[2].size, self.nodes[1].size, self.nodes[0].size))
        self.norm = (math.sqrt(math.pi) * sigma_mm / step_mm) ** 1.5  # sd of the sum

    def _kernel(self, coords: np.ndarray, axis: int) -> tuple[np.ndarray, slice]:
        """(n_coords, n_nodes) Gaussian weights of the nodes within 4 sigma of ``coords``."""
        nodes = self.nodes[axis]
        c = np.asarray(coords, np.float64).ravel()
        keep = np.flatnonzero((nodes > c.min() - 4 * self.sigma) & (nodes < c.max() + 4 * self.sigma))
        sl = slice(int(keep[0]), int(keep[-1]) + 1) if keep.size else slice(0, 1)
        g = np.exp(-0.5 * ((c[:, None] - nodes[None, sl]) / self.sigma) ** 2)
        return g.astype(F32), sl

    def on_box(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The field on the grid spanned by 1-D coordinates (mm), shape (z, y, x), float32."""
        gx, sx = self._kernel(x, 0)
        gy, sy = self._kernel(y, 1)
        gz, sz = self._kernel(z, 2)
        w = self.weights[sz, sy, sx].astype(F32) / F32(self.norm)
        f = w @ gx.T  # (Nz, Ny, nx)
        f = np.matmul(gy, f)  # (Nz, ny, nx)
        return np.tensordot(gz, f, axes=(1, 0))

    def at_points(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """The field at points given by 1-D coordinate arrays of equal length (mm)."""
        gx, sx = self._kernel(x, 0)
        gy, sy = self._kernel(y, 1)
        gz, sz = self._kernel(z, 2)
        w = self.weights[sz, sy, sx] / self.norm
        t = np.einsum("ijk,nk->nij", w, gx)
        t = np.einsum("nij,nj->ni", t, gy)
        return np.einsum("ni,ni->n", t, gz)


class _Warp:
    """A smooth random displacement field (mm): one :class:`_RbfField` per axis times an amplitude."""

    def __init__(self, rng: np.random.Generator, amplitude_mm: float, length_mm: float):
        self.amplitude = float(amplitude_mm)
        self.fields = [_RbfField(rng, length_mm, length_mm) for _ in range(3)]

    def on_box(self, z, y, x) -> list[np.ndarray]:
        """Warped coordinates (X, Y, Z) of the grid spanned by 1-D ``z, y, x``, each (z, y, x)."""
        Z, Y, X = np.meshgrid(z, y, x, indexing="ij", sparse=True)
        a = F32(self.amplitude)
        return [c + a * f.on_box(z, y, x) for c, f in zip((X, Y, Z), self.fields)]

    def at_points(self, p: np.ndarray) -> np.ndarray:
        """Warped positions of points ``p`` (n, 3) x, y, z mm."""
        d = np.stack([f.at_points(p[:, 2], p[:, 1], p[:, 0]) for f in self.fields], axis=1)
        return p + self.amplitude * d


def _fibonacci_sphere(n: int = 1500) -> np.ndarray:
    """(n, 3) nearly uniform unit directions."""
    i = np.arange(n) + 0.5
    polar = np.arccos(1 - 2 * i / n)
    azim = math.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(azim) * np.sin(polar), np.sin(azim) * np.sin(polar), np.cos(polar)], axis=1)


_SPHERE = _fibonacci_sphere()


def _rotation(rng: np.random.Generator, max_deg: float, axis=None) -> np.ndarray:
    """A random rotation (3x3) by up to ``max_deg`` about a random (or the given) axis (Rodrigues)."""
    k = rng.standard_normal(3) if axis is None else np.asarray(axis, float)
    k = k / np.linalg.norm(k)
    t = math.radians(rng.uniform(-max_deg, max_deg))
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(t) * K + (1 - math.cos(t)) * K @ K


@dataclass(frozen=True)
class _Star:
    """A star-shaped body: inside where ``|q| < rho(q/|q|)``, ``q = R^T (p - centre) / axes``.

    ``rho(u) = exp(sum_k amp_k exp(kappa_k (u . d_k - 1)))``: Gaussian bumps on the unit sphere."""

    centre: np.ndarray  # (3,) x, y, z mm
    axes: np.ndarray  # (3,) semi-axes mm
    rot: np.ndarray  # (3, 3), columns: the local axes in patient coordinates
    dirs: np.ndarray  # (K, 3) bump directions
    amps: np.ndarray  # (K,) log-radius amplitudes
    kappas: np.ndarray  # (K,) bump concentrations

    def rho(self, u: list[np.ndarray]) -> np.ndarray:
        """Radius factor in the directions ``u`` = (ux, uy, uz) (unit, local frame)."""
        log_r = 0.0
        for d, a, k in zip(self.dirs, self.amps, self.kappas):
            log_r = log_r + F32(a) * np.exp(F32(k) * (u[0] * F32(d[0]) + u[1] * F32(d[1]) + u[2] * F32(d[2]) - F32(1)))
        return np.exp(log_r)

    def s(self, X, Y, Z) -> np.ndarray:
        """Normalised radius (broadcast arrays, mm): < 1 inside, 0 at the centre."""
        dx, dy, dz = X - F32(self.centre[0]), Y - F32(self.centre[1]), Z - F32(self.centre[2])
        q = [(dx * F32(self.rot[0, i]) + dy * F32(self.rot[1, i]) + dz * F32(self.rot[2, i])) / F32(self.axes[i])
             for i in range(3)]
        r = np.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2]) + F32(1e-6)
        return r / self.rho([q[0] / r, q[1] / r, q[2] / r])

    def s_points(self, p: np.ndarray) -> np.ndarray:
        """Normalised radius at points ``p`` (n, 3) x, y, z mm."""
        return self.s(p[:, 0].astype(F32), p[:, 1].astype(F32), p[:, 2].astype(F32))

    def volume_ml(self) -> float:
        """Volume (mL): (4 pi / 3) a b c mean(rho^3) over directions."""
        rho = self.rho([_SPHERE[:, 0], _SPHERE[:, 1], _SPHERE[:, 2]])
        return float(4 * math.pi / 3 * np.prod(self.axes) * np.mean(rho.astype(np.float64) ** 3) / 1000.0)

    def scaled_to(self, volume_ml: float) -> _Star:
        """The same shape scaled (about its centre) to ``volume_ml``."""
        return replace(self, axes=self.axes * (volume_ml / self.volume_ml()) ** (1 / 3))

    def radius_mm(self) -> float:
        """An upper bound of the distance from the centre to the surface (mm)."""
        return float(self.axes.max() * math.exp(np.clip(self.amps, 0, None).sum()))

    def bbox(self, margin_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        r = self.radius_mm() + margin_mm
        return self.centre - r, self.centre + r


def _star(rng: np.random.Generator, centre, axes, rot=None, n_bumps: int = 6, amp: float = 0.2,
          volume_ml: float | None = None) -> _Star:
    """A random star shape around ``centre`` (mm) with semi-axes ``axes`` (mm), optionally scaled to
    ``volume_ml``; ``amp`` bounds the log-radius of each bump."""
    dirs = rng.standard_normal((n_bumps, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    shape = _Star(np.asarray(centre, float), np.asarray(axes, float), np.eye(3) if rot is None else rot, dirs,
                  rng.uniform(-amp, amp, n_bumps), rng.uniform(1.5, 6.0, n_bumps))
    return shape if volume_ml is None else shape.scaled_to(volume_ml)


# --------------------------------------------------------------------------------------------
# The grid and painting
# --------------------------------------------------------------------------------------------

class _Canvas:
    """Labels and tissue classes on the grid; later paint wins. Coordinates are voxel centres (mm)."""

    def __init__(self, shape: tuple[int, int, int], spacing: tuple[float, float, float], warp: _Warp):
        nz, ny, nx = shape
        sx, sy, sz = spacing
        self.shape, self.spacing = shape, spacing
        self.origin = (-(nx - 1) / 2 * sx, -(ny - 1) / 2 * sy, -(nz - 1) / 2 * sz)
        self.x = (self.origin[0] + np.arange(nx) * sx).astype(F32)
        self.y = (self.origin[1] + np.arange(ny) * sy).astype(F32)
        self.z = (self.origin[2] + np.arange(nz) * sz).astype(F32)
        self.labels = np.zeros(shape, np.int16)
        self.tissue = np.zeros(shape, np.uint8)
        self.warp = warp

    def box(self, lo, hi):
        """Slices (z, y, x) of the voxels inside [lo, hi] (x, y, z mm), or None if none."""
        out = []
        for c, a, b in zip((self.z, self.y, self.x), lo[::-1], hi[::-1]):
            i0, i1 = np.searchsorted(c, a), np.searchsorted(c, b, side="right")
            if i1 <= i0:
                return None
            out.append(slice(int(i0), int(i1)))
        return tuple(out)

    def coords(self, sl, warped: bool = False) -> list[np.ndarray]:
        """(X, Y, Z) of a box, broadcastable, or densely warped by the patient's displacement field."""
        z, y, x = self.z[sl[0]], self.y[sl[1]], self.x[sl[2]]
        if warped:
            return self.warp.on_box(z, y, x)
        return [x[None, None, :], y[None, :, None], z[:, None, None]]

    def paint(self, sl, mask: np.ndarray, label, tissue) -> None:
        """Set ``label`` and ``tissue`` (scalars or arrays of the box) where ``mask`` is true."""
        if sl is None or not mask.any():
            return
        mask = np.broadcast_to(mask, self.labels[sl].shape)
        lab, tis = self.labels[sl], self.tissue[sl]
        lab[mask] = np.broadcast_to(np.asarray(label, np.int16), mask.shape)[mask]
        tis[mask] = np.broadcast_to(np.asarray(tissue, np.uint8), mask.shape)[mask]

    def paint_star(self, shape: _Star, label: int, tissue: int, clip=None) -> None:
        """Paint a warped star shape with one label and tissue; ``clip(X, Y, Z)`` limits it."""
        sl = self.box(*shape.bbox(self.warp.amplitude * 4))
        if sl is None:
            return
        X, Y, Z = self.coords(sl, warped=True)
        mask = shape.s(X, Y, Z) < 1
        if clip is not None:
            mask &= clip(*self.coords(sl))
        self.paint(sl, mask, label, tissue)


# --------------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------------

@dataclass
class _Body:
    """The superellipse stack of the body outline and the layers under the skin (mm)."""

    z_knots: np.ndarray
    half_width: np.ndarray  # per knot
    depth_ant: np.ndarray
    depth_post: np.ndarray
    exponent: np.ndarray
    fat_mm: float
    muscle_mm: float

    def profile(self, z: np.ndarray) -> tuple[np.ndarray, ...]:
        """(half width, anterior depth, posterior depth, exponent) at heights ``z`` (smooth in z)."""
        w = np.exp(-0.5 * ((np.asarray(z, np.float64)[:, None] - self.z_knots[None, :]) / 90.0) ** 2)
        w /= w.sum(axis=1, keepdims=True)
        return tuple(w @ v for v in (self.half_width, self.depth_ant, self.depth_post, self.exponent))

    def level(self, X, Y, Z, inset_mm: float = 0.0) -> np.ndarray:
        """Superellipse level (< 1 inside) of the outline moved inward by ``inset_mm``; X, Y, Z as
        broadcastable (1, 1, nx), (1, ny, 1), (nz, 1, 1) arrays."""
        a, b_ant, b_post, n = (v.astype(F32)[:, None, None] for v in self.profile(Z.ravel()))
        b = np.where(Y < 0, b_ant - F32(inset_mm), b_post - F32(inset_mm))
        return np.abs(X / (a - F32(inset_mm))) ** n + np.abs(Y / b) ** n

    def inner(self, z: float) -> tuple[float, float, float]:
        """(half width, anterior depth, posterior depth) of the visceral cavity at height ``z``."""
        a, b_ant, b_post, _ = (float(v[0]) for v in self.profile(np.array([z])))
        t = self.fat_mm + self.muscle_mm
        return a - t, b_ant - t, b_post - t

    def in_cavity(self, p: np.ndarray) -> np.ndarray:
        """Whether points ``p`` (n, 3) lie inside the visceral cavity."""
        a, b_ant, b_post, n = self.profile(p[:, 2])
        t = self.fat_mm + self.muscle_mm
        b = np.where(p[:, 1] < 0, b_ant, b_post) - t
        return np.abs(p[:, 0] / (a - t)) ** n + np.abs(p[:, 1] / b) ** n < 1


def _draw_body(rng: np.random.Generator) -> _Body:
    """A body outline: half width 140-185 mm, anterior-posterior depth 1.2-1.56 half widths (52-60 %
    in front of y = 0), superellipse exponent 2.2-3.4, each varying by +-7 % along z; fat 8-35 mm
    and muscle 9-16 mm under the skin."""
    z_knots = np.linspace(-300.0, 300.0, 6)
    width = rng.uniform(140.0, 185.0)  # half width
    depth = 2.0 * width * rng.uniform(0.6, 0.78)  # anterior-posterior
    front = rng.uniform(0.52, 0.6)
    k = z_knots.size
    jitter = lambda: rng.uniform(0.93, 1.07, k)  # noqa: E731
    return _Body(z_knots, width * jitter(), depth * front * jitter(), depth * (1 - front) * jitter(),
                 rng.uniform(2.2, 3.4, k), rng.uniform(8.0, 35.0), rng.uniform(9.0, 16.0))


@dataclass
class _Spine:
    """A straight vertebral column at x = 0 (mm): level centres, heights and vertebral-body radii."""

    z: np.ndarray  # centre of each of VERTEBRA_LEVELS, mm
    pitch: np.ndarray  # distance to the next level, mm
    rx: np.ndarray  # body half width, mm
    ry: np.ndarray  # body half depth, mm
    y_body: float  # y of the vertebral-body centre, mm
    canal_r: float
    cortex_mm: float
    body_fraction: float  # vertebral-body height / pitch (the rest is disc)

    def level_index(self, z: np.ndarray) -> np.ndarray:
        """Index of the nearest level to each height (clipped to the column)."""
        return np.abs(np.asarray(z)[:, None] - self.z[None, :]).argmin(axis=1)


def _draw_spine(rng: np.random.Generator, z_l1: float, y_body: float) -> _Spine:
    """T1-L5 with L1 centred at ``z_l1`` (mm): pitch 23-28 mm (thoracic) and 30-35 mm (lumbar),
    vertebral bodies growing downwards (half width 15-25 mm, half depth 11-19 mm)."""
    n = len(VERTEBRA_LEVELS)
    i_l1 = VERTEBRA_LEVELS.index("L1")
    pitch = np.where(np.arange(n) < i_l1, rng.uniform(23.0, 28.0), rng.uniform(30.0, 35.0)) * rng.uniform(0.96, 1.04, n)
    z = np.empty(n)
    z[i_l1] = z_l1
    for i in range(i_l1 - 1, -1, -1):
        z[i] = z[i + 1] + pitch[i]
    for i in range(i_l1 + 1, n):
        z[i] = z[i - 1] - pitch[i - 1]
    grow = np.linspace(0.0, 1.0, n)
    return _Spine(z, pitch, rng.uniform(15.0, 18.0) + 7.0 * grow, rng.uniform(11.0, 14.0) + 5.0 * grow, y_body,
                  rng.uniform(7.0, 9.5), rng.uniform(1.5, 2.5), rng.uniform(0.72, 0.8))


@dataclass
class _Anatomy:
    """Everything a patient is made of, in patient millimetres."""

    body: _Body
    spine: _Spine
    z_diaphragm: float
    organs: dict[str, _Star]
    kidney_inner: dict[str, tuple[float, _Star]]  # side -> (cortex inner radius, pelvis shape)
    vessels: dict[str, tuple[float, float, float]]  # name -> (x, y, radius) mm


def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    """The body, spine, organ shapes and vessels of one patient."""
    body = _draw_body(rng)
    zd = rng.uniform(30.0, 90.0)  # dome of the diaphragm
    a, b_ant, b_post = body.inner(zd - 80.0)
    y_body = b_post - rng.uniform(28.0, 36.0)
    spine = _draw_spine(rng, zd - rng.uniform(95.0, 120.0), y_body)
    ry_mid = float(spine.ry[VERTEBRA_LEVELS.index("L1")])
    organs: dict[str, _Star] = {}
    la, lb, lu = body.inner(zd + 100.0)
    for sgn, label in ((1, "lung_left"), (-1, "lung_right")):
        rz = rng.uniform(170.0, 210.0)
        organs[label] = _star(rng, (sgn * 0.5 * la, 0.15 * lu, zd + rz * rng.uniform(0.97, 1.03)),
                              (0.42 * la, 0.5 * (lb + lu), rz), _rotation(rng, 6), amp=0.12)
    organs["heart"] = _star(rng, (rng.uniform(10, 40), -0.4 * lb, zd + rng.uniform(50, 70)), (60, 48, 55),
                            _rotation(rng, 20), volume_ml=rng.uniform(500, 800), amp=0.12)
    organs["liver"] = _star(rng, (-0.4 * a, -0.1 * b_ant, zd - rng.uniform(55, 75)),
                            (0.55 * a, 0.5 * (b_ant + b_post) * 0.8, rng.uniform(70, 95)), _rotation(rng, 15),
                            volume_ml=rng.uniform(1300, 2100), amp=0.25, n_bumps=8)
    organs["spleen"] = _star(rng, (0.62 * a, 0.5 * b_post, zd - rng.uniform(40, 65)), (30, 45, 60),
                             _rotation(rng, 25), volume_ml=rng.uniform(120, 350), amp=0.2)
    organs["stomach"] = _star(rng, (0.3 * a, -0.45 * b_ant, zd - rng.uniform(35, 55)), (50, 40, 65),
                              _rotation(rng, 30), volume_ml=rng.uniform(250, 600), amp=0.25)
    organs["pancreas"] = _star(rng, (0.05 * a, y_body - ry_mid - 45, zd - rng.uniform(90, 105)), (70, 14, 14),
                               _rotation(rng, 15, axis=(0, 1, 0)), volume_ml=rng.uniform(55, 100), amp=0.15)
    organs["bowel"] = _star(rng, (0.0, -0.2 * b_ant, zd - rng.uniform(240, 270)), (0.85 * a, 0.8 * b_ant, 150),
                            amp=0.15)
    kidney_inner = {}
    z_kid = zd - rng.uniform(95.0, 120.0)
    for side, sgn in (("left", 1), ("right", -1)):
        zc = z_kid - (rng.uniform(5.0, 25.0) if side == "right" else 0.0)
        x = sgn * (float(spine.rx.max()) + rng.uniform(35.0, 55.0))
        spin = _rotation(rng, 30, axis=(0, 0, 1)) @ _rotation(rng, 12)
        kid = _star(rng, (x, y_body - rng.uniform(0, 15), zc), (27, 22, 52), spin,
                    volume_ml=rng.uniform(130, 210), amp=0.1)
        organs[f"kidney_{side}"] = kid
        medial = -sgn * np.array([1.0, 0.0, 0.0])
        pelvis = _star(rng, kid.centre + medial * kid.axes[0] * rng.uniform(0.3, 0.5),
                       kid.axes * rng.uniform(0.25, 0.4) * np.array([1.0, 0.8, 0.7]), spin, amp=0.1)
        kidney_inner[side] = (rng.uniform(0.55, 0.78), pelvis)
        organs[f"adrenal_{side}"] = _star(rng, kid.centre + np.array([-sgn * 8.0, -8.0, kid.axes[2] + 12.0]),
                                          (9, 5, 14), _rotation(rng, 20), volume_ml=rng.uniform(3, 7), amp=0.1)
    y_front = y_body - float(spine.ry.max())
    vessels = {"aorta": (rng.uniform(10, 25), y_front - rng.uniform(12, 18), rng.uniform(10, 13)),
               "inferior_vena_cava": (-rng.uniform(20, 30), y_front - rng.uniform(16, 24), rng.uniform(10, 13))}
    return _Anatomy(body, spine, zd, organs, kidney_inner, vessels)


def _paint_body(an: _Anatomy, cv: _Canvas) -> None:
    """Subcutaneous fat, the muscle wall and visceral fat (the whole cavity, organs come later)."""
    X, Y, Z = cv.coords((slice(None),) * 3)
    full = (slice(None),) * 3
    T = TISSUES
    cv.paint(full, an.body.level(X, Y, Z) < 1, LABELS["fat"], T["fat"])
    cv.paint(full, an.body.level(X, Y, Z, an.body.fat_mm) < 1, LABELS["muscle"], T["muscle"])
    cv.paint(full, an.body.level(X, Y, Z, an.body.fat_mm + an.body.muscle_mm) < 1, LABELS["fat"], T["fat"])


def _paint_bowel(an: _Anatomy, cv: _Canvas, rng: np.random.Generator) -> None:
    """The bowel region: loops of wall and content (a thresholded random field), gas pockets; colon
    where the region's normalised radius exceeds 0.7, small bowel inside."""
    shape = an.organs["bowel"]
    loop_field, gas_field = _RbfField(rng, 12.0, 9.0), _RbfField(rng, 20.0, 12.0)  # drawn on any grid
    sl = cv.box(*shape.bbox())
    if sl is None:
        return
    X, Y, Z = cv.coords(sl, warped=True)
    s = shape.s(X, Y, Z)
    inside = (s < 1) & (Z < F32(an.z_diaphragm - 110.0)) & (an.body.level(*cv.coords(sl), an.body.fat_mm + an.body.muscle_mm) < 1)
    z, y, x = cv.z[sl[0]], cv.y[sl[1]], cv.x[sl[2]]
    loops, gas = loop_field.on_box(z, y, x), gas_field.on_box(z, y, x)
    T = TISSUES
    tissue = np.where(loops > 0.3, T["gi_content"], T["gi_wall"]).astype(np.uint8)
    tissue[gas > 1.9] = T["gas"]
    label = np.where(s > 0.7, LABELS["colon"], LABELS["small_bowel"]).astype(np.int16)
    tissue[(s > 0.7) & (loops > 0.3) & (gas < 1.9)] = T["stool"]
    cv.paint(sl, inside, label, tissue)


def _paint_stomach(an: _Anatomy, cv: _Canvas) -> None:
    """Stomach: a wall shell of about 5 mm around content, gas in its upper part."""
    shape = an.organs["stomach"]
    sl = cv.box(*shape.bbox(4 * cv.warp.amplitude))
    if sl is None:
        return
    X, Y, Z = cv.coords(sl, warped=True)
    s = shape.s(X, Y, Z)
    T = TISSUES
    wall = 1.0 - 5.0 / float(shape.axes.min())
    tissue = np.where(s > wall, T["gi_wall"], T["gi_content"]).astype(np.uint8)
    tissue[(s <= wall) & (Z > F32(shape.centre[2] + 0.45 * shape.axes[2]))] = T["gas"]
    cv.paint(sl, s < 1, LABELS["stomach"], tissue)


def _paint_organs(an: _Anatomy, cv: _Canvas) -> None:
    """Liver, spleen, pancreas below the diaphragm; lungs and heart above; the great vessels."""
    T, L = TISSUES, LABELS
    zd = F32(an.z_diaphragm)
    cavity = lambda X, Y, Z: an.body.level(X, Y, Z, an.body.fat_mm + an.body.muscle_mm) < 1  # noqa: E731
    below = lambda X, Y, Z: cavity(X, Y, Z) & (Z < zd + F32(25.0))  # noqa: E731
    above = lambda X, Y, Z: cavity(X, Y, Z) & (Z > zd - F32(40.0))  # noqa: E731
    for name, tissue in (("liver", "liver"), ("spleen", "spleen"), ("pancreas", "pancreas")):
        cv.paint_star(an.organs[name], L[name], T[tissue], clip=below)
    for name in ("lung_left", "lung_right"):
        cv.paint_star(an.organs[name], L[name], T["lung"], clip=above)
    cv.paint_star(an.organs["heart"], L["heart"], T["blood"], clip=lambda X, Y, Z: cavity(X, Y, Z) & (Z > zd))
    for name, (x0, y0, r) in an.vessels.items():
        top = an.z_diaphragm + (200.0 if name == "aorta" else 30.0)
        sl = cv.box((x0 - r - 30, y0 - r - 30, -400.0), (x0 + r + 30, y0 + r + 30, top))
        if sl is None:
            continue
        X, Y, Z = cv.coords(sl)
        lean = F32(0.06) * Z  # the vessels lean a little forward going up
        cv.paint(sl, (X - F32(x0)) ** 2 + (Y - F32(y0) + lean) ** 2 < F32(r * r), L[name], T["blood"])


def _paint_kidneys(an: _Anatomy, cv: _Canvas) -> None:
    """Kidneys (cortex outside ``s_cortex``, medulla inside, pelvis at the hilum) and adrenals."""
    T, L = TISSUES, LABELS
    for side in ("left", "right"):
        shape = an.organs[f"kidney_{side}"]
        s_cortex, pelvis = an.kidney_inner[side]
        sl = cv.box(*shape.bbox(4 * cv.warp.amplitude))
        if sl is None:
            continue
        X, Y, Z = cv.coords(sl, warped=True)
        s = shape.s(X, Y, Z)
        tissue = np.where(s > F32(s_cortex), T["kidney_cortex"], T["kidney_medulla"]).astype(np.uint8)
        tissue[pelvis.s(X, Y, Z) < 1] = T["kidney_pelvis"]
        cv.paint(sl, s < 1, L[f"kidney_{side}"], tissue)
        cv.paint_star(an.organs[f"adrenal_{side}"], L[f"adrenal_{side}"], T["adrenal"])


def _paint_spine(an: _Anatomy, cv: _Canvas) -> None:
    """Vertebral bodies (cortical shell, trabecular core), discs, the canal and posterior arches."""
    T, L = TISSUES, LABELS
    sp = an.spine
    y0 = sp.y_body
    sl = cv.box((-70.0, y0 - 40.0, -1e4), (70.0, y0 + 90.0, 1e4))
    if sl is None:
        return
    X, Y, Z = cv.coords(sl)
    z = cv.z[sl[0]].astype(np.float64)
    i = sp.level_index(z)
    top = sp.z[i] + sp.body_fraction * sp.pitch[np.maximum(i - 1, 0)] / 2  # the level above is i - 1
    bottom = sp.z[i] - sp.body_fraction * sp.pitch[i] / 2
    in_body = ((z <= top) & (z >= bottom))[:, None, None]
    col = lambda v: v[i].astype(F32)[:, None, None]  # noqa: E731
    rx, ry = col(sp.rx), col(sp.ry)
    r = np.sqrt((X / rx) ** 2 + ((Y - F32(y0)) / ry) ** 2)
    level_label = (VERTEBRA_LABEL_BASE + 1 + i).astype(np.int16)[:, None, None]
    shell = F32(1) - F32(sp.cortex_mm) / ry
    cv.paint(sl, (r < 1) & ~in_body, L["intervertebral_discs"], T["disc"])
    cv.paint(sl, (r < 1) & in_body, level_label, np.where(r > shell, T["cortical_bone"], T["trabecular_bone"]))
    yc = y0 + ry + F32(sp.canal_r + 3.0)
    rc = np.sqrt(X * X + (Y - yc) ** 2)
    arch = (rc < F32(sp.canal_r + 6.0)) | ((np.abs(X) < 4) & (Y > yc) & (Y < yc + F32(sp.canal_r + 35.0)))
    arch |= (np.abs(Y - yc) < 5) & (np.abs(X) < F32(sp.canal_r + 30.0))
    in_patient = cv.labels[sl] > 0  # the arch stops at the skin of a thin patient
    cv.paint(sl, arch & in_body & (rc >= F32(sp.canal_r)) & in_patient, level_label, T["bone_mixed"])
    cv.paint(sl, rc < F32(sp.canal_r), L["spinal_canal"], T["csf"])


# --------------------------------------------------------------------------------------------
# Lesions
# --------------------------------------------------------------------------------------------

_SITES_BACKGROUND = {"liver": "liver", "kidney": "muscle", "bone": "marrow", "lung": "lung", "node": "muscle"}
_SITE_ORGAN = {"liver": "liver", "kidney": "soft_tissue", "bone": "bone", "lung": "lung", "node": "soft_tissue"}


def _draw_volume(rng: np.random.Generator, small: bool) -> float:
    """A lesion volume (mL), log-uniform in :data:`LESION_SMALL_ML` or :data:`LESION_LARGE_ML`."""
    lo, hi = LESION_SMALL_ML if small else LESION_LARGE_ML
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _lesion_plan(rng: np.random.Generator) -> list[tuple[str, float]]:
    """(site, volume mL) of each lesion: 2-6 in the liver (the first small), 1-2 beside a kidney,
    1-3 in vertebral bodies (small), 1-2 at a lung base, 1-3 para-aortic nodes; of the others
    40-70 % small."""
    plan = [("liver", _draw_volume(rng, True))]
    plan += [("liver", _draw_volume(rng, rng.random() < 0.4)) for _ in range(rng.integers(1, 6))]
    plan += [("kidney", _draw_volume(rng, rng.random() < 0.5)) for _ in range(rng.integers(1, 3))]
    plan += [("bone", _draw_volume(rng, True)) for _ in range(rng.integers(1, 4))]
    plan += [("lung", _draw_volume(rng, rng.random() < 0.7)) for _ in range(rng.integers(1, 3))]
    plan += [("node", _draw_volume(rng, rng.random() < 0.6)) for _ in range(rng.integers(1, 4))]
    return plan


def _inside(shape: _Star, warp: _Warp, p: np.ndarray) -> np.ndarray:
    """Whether points ``p`` (n, 3) lie inside a warped organ shape."""
    return shape.s_points(warp.at_points(p)) < 1


def _candidates(rng: np.random.Generator, an: _Anatomy, warp: _Warp, site: str, radius: float,
                n: int = 192) -> np.ndarray:
    """Candidate lesion centres (m, 3) for ``site`` whose sphere of ``radius`` (mm) fits there."""
    probe = np.concatenate([np.zeros((1, 3)), _SPHERE[::60]]) * radius
    if site in ("liver", "lung"):
        organ = an.organs["liver"] if site == "liver" else an.organs[rng.choice(["lung_left", "lung_right"])]
        lo, hi = organ.bbox()
        if site == "lung":
            lo[2], hi[2] = an.z_diaphragm, an.z_diaphragm + 80.0
        c = rng.uniform(lo, hi, (n, 3))
        pts = (c[:, None, :] + probe[None]).reshape(-1, 3)
        ok = _inside(organ, warp, pts) & an.body.in_cavity(pts)
        if site == "liver":  # where the painted liver and lungs are (their clips in _paint_organs)
            ok &= pts[:, 2] < an.z_diaphragm + 25.0
        else:
            ok &= pts[:, 2] > an.z_diaphragm - 40.0
        return c[ok.reshape(n, -1).all(axis=1)]
    if site == "kidney":
        kid = an.organs[f"kidney_{rng.choice(['left', 'right'])}"]
        sgn = np.sign(kid.centre[0])
        angle = rng.uniform(-1.3, 1.3, n)  # lateral half plane, some towards the poles
        d = np.stack([sgn * np.cos(angle), rng.uniform(-0.4, 0.6, n), np.sin(angle)], axis=1)
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        steps = np.arange(0.0, 140.0, 2.0)
        pts = kid.centre[None, None, :] + d[:, None, :] * steps[None, :, None]
        inside = _inside(kid, warp, pts.reshape(-1, 3)).reshape(n, -1)
        surface = steps[np.argmin(inside, axis=1)]
        c = kid.centre + d * (surface + radius + 3.0)[:, None]
        return c[an.body.in_cavity(c)]
    if site == "bone":
        sp = an.spine
        half = STANDARD_FIELD_MM[2] / 2 - 25.0
        levels = np.flatnonzero((np.abs(sp.z) < half) & (sp.z < an.z_diaphragm - 40.0))
        i = rng.choice(levels, n)
        return np.stack([rng.uniform(-4, 4, n), sp.y_body + rng.uniform(-3, 3, n), sp.z[i]], axis=1)
    # para-aortic node
    x0, y0, r0 = an.vessels["aorta"]
    angle = rng.uniform(0.3 * math.pi, 1.2 * math.pi, n)
    dist = r0 + radius + 4.0
    z = rng.uniform(an.z_diaphragm - 220.0, an.z_diaphragm - 80.0, n)
    c = np.stack([x0 + dist * np.cos(angle), y0 - 0.06 * z - dist * np.sin(angle), z], axis=1)
    return c[an.body.in_cavity(c)]


def _place_lesions(rng: np.random.Generator, an: _Anatomy, warp: _Warp) -> list[dict]:
    """Lesion shapes, placed without touching each other; each gets its uptake draw later."""
    lesions: list[dict] = []
    for site, volume in _lesion_plan(rng):
        for _ in range(4):  # shrink a lesion that does not fit, down to 1 mL
            shape = _star(rng, (0, 0, 0), rng.uniform(0.8, 1.2, 3), _rotation(rng, 180), amp=0.15,
                          volume_ml=volume)
            radius = shape.radius_mm()
            cands = _candidates(rng, an, warp, site, radius)
            clear = [c for c in cands
                     if all(np.linalg.norm(c - les["shape"].centre) > radius + les["shape"].radius_mm() + 3.0
                            for les in lesions)]
            if clear:
                lesions.append({"site": site, "shape": replace(shape, centre=np.asarray(clear[0], float))})
                break
            volume = max(LESION_SMALL_ML[0], volume * 0.6)
    return lesions


def _draw_lesion_uptake(rng: np.random.Generator, lesions: list[dict], c1: dict[str, float]) -> None:
    """Day-1 concentration (contrast to the background tissue), clearance, necrosis and CT number."""
    for les in lesions:  # as in the main family: the contrast alone sets the uptake (no table range)
        bg = c1[_SITES_BACKGROUND[les["site"]]]
        les["contrast"] = math.exp(rng.uniform(*np.log(LESION_CONTRAST)))
        les["c1"] = float(les["contrast"] * bg)
        les["teff"] = float(rng.uniform(*EFFECTIVE_HALF_LIFE_H["lesion"]))
        les["necrotic"] = bool(les["shape"].volume_ml() > 6.0 and rng.random() < 0.4)
        les["core"] = float(rng.uniform(0.4, 0.65)) if les["necrotic"] else 0.0
        les["necrosis_fraction"] = float(rng.uniform(0.05, 0.2))
        les["hu"] = float(rng.uniform(150, 600) if les["site"] == "bone" else rng.uniform(*HU_RANGES["lesion"]))


def _paint_lesions(lesions: list[dict], cv: _Canvas) -> None:
    """Lesions last (unwarped: their volume is exact), with their necrotic cores."""
    T = TISSUES
    for n, les in enumerate(lesions, start=1):
        shape = les["shape"]
        sl = cv.box(*shape.bbox())
        if sl is None:
            continue
        s = shape.s(*cv.coords(sl))
        tissue = np.where(s < F32(les["core"]), T["necrosis"], T["lesion"]).astype(np.uint8)
        cv.paint(sl, s < 1, LESION_LABEL_BASE + n, tissue)


# --------------------------------------------------------------------------------------------
# Uptake, CT, assembly
# --------------------------------------------------------------------------------------------

#: The uptake-table entry (and clearance) of every label's concentration.
_LABEL_UPTAKE = {
    "fat": "fat", "muscle": "muscle", "lung_left": "lung", "lung_right": "lung", "heart": "blood", "aorta": "blood",
    "inferior_vena_cava": "blood", "liver": "liver", "spleen": "spleen", "stomach": "stomach",
    "pancreas": "pancreas", "adrenal_left": "adrenal", "adrenal_right": "adrenal", "small_bowel": "bowel",
    "colon": "bowel", "kidney_left": "kidney_cortex", "kidney_right": "kidney_cortex", "spinal_canal": "csf",
    "intervertebral_discs": "disc",
}
_CLEARANCE = {"kidney_cortex": "kidney", "fat": "muscle", "csf": "blood", "disc": "marrow"}


def _draw_uptake(rng: np.random.Generator) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """Day-1 concentrations (MBq/mL), effective half-lives (h) and sub-compartment fractions."""
    c1 = {k: float(rng.uniform(*UPTAKE_DAY1[k])) for k in (
        "kidney_cortex", "liver", "spleen", "adrenal", "pancreas", "stomach", "bowel", "blood", "muscle", "lung",
        "marrow")}
    c1["fat"] = c1["muscle"] * float(rng.uniform(*UPTAKE_DAY1["fat_fraction_of_muscle"]))
    c1["csf"] = 0.3 * c1["blood"]
    c1["disc"] = 0.3 * c1["marrow"]
    teff = {k: float(rng.uniform(*v)) for k, v in EFFECTIVE_HALF_LIFE_H.items() if k != "lesion"}
    fractions = {"kidney_medulla": float(rng.uniform(*UPTAKE_DAY1["kidney_medulla_fraction"])),
                 "kidney_pelvis": float(rng.uniform(*UPTAKE_DAY1["kidney_pelvis_fraction"]))}
    return c1, teff, fractions


def _activity(cv: _Canvas, lesions: list[dict], c1: dict, teff: dict, fractions: dict, time_days: float,
              het: np.ndarray, pet_fwhm_mm: float) -> tuple[np.ndarray, dict[str, float], list[float]]:
    """True activity (Bq/mL, float32) at ``time_days``; the organ and lesion concentrations (MBq/mL)."""
    dt_h = (time_days - 1.0) * 24.0
    conc = {k: v * 2.0 ** (-dt_h / teff[_CLEARANCE.get(k, k)]) for k, v in c1.items()}
    lut = np.zeros(LESION_LABEL_BASE + len(lesions) + 1, np.float64)
    for name, key in _LABEL_UPTAKE.items():
        lut[LABELS[name]] = conc[key]
    lut[VERTEBRA_LABEL_BASE + 1:VERTEBRA_LABEL_BASE + 1 + len(VERTEBRA_LEVELS)] = conc["marrow"]
    lesion_c = [les["c1"] * 2.0 ** (-dt_h / les["teff"]) for les in lesions]
    lut[LESION_LABEL_BASE + 1:] = lesion_c
    factor = np.ones(len(TISSUES), np.float64)
    T = TISSUES
    for name, f in (("air", 0.0), ("gas", 0.0), ("gi_content", 0.3), ("stool", 0.2), ("cortical_bone", 0.15),
                    ("bone_mixed", 0.5), ("kidney_medulla", fractions["kidney_medulla"]),
                    ("kidney_pelvis", fractions["kidney_pelvis"])):
        factor[T[name]] = f
    act = (lut * 1e6).astype(F32)[cv.labels] * factor.astype(F32)[cv.tissue]
    for n, les in enumerate(lesions, start=1):  # each lesion's own necrotic activity
        if les["necrotic"]:
            core = (cv.labels == LESION_LABEL_BASE + n) & (cv.tissue == T["necrosis"])
            act[core] *= F32(les["necrosis_fraction"])
    act *= het
    if pet_fwhm_mm > 0:
        sigma = [pet_fwhm_mm / 2.3548 / s for s in cv.spacing[::-1]]
        act = ndimage.gaussian_filter(act, sigma, mode="nearest")
    act[cv.labels == 0] = 0.0
    np.maximum(act, 0, out=act)
    return act, conc, lesion_c


def _ct(cv: _Canvas, rng: np.random.Generator, lesions: list[dict], texture: np.ndarray,
        ct_noise_hu: float) -> np.ndarray:
    """CT (HU, float32): per-patient tissue values, partial-volume cortical bone, texture and noise."""
    T = TISSUES
    hu_lut = np.array([rng.uniform(*HU_RANGES[name]) for name in TISSUES], np.float32)
    mean_mm = float(np.prod(cv.spacing)) ** (1 / 3)
    trab, cort = hu_lut[T["trabecular_bone"]], hu_lut[T["cortical_bone"]]
    hu_lut[T["cortical_bone"]] = trab + (cort - trab) * min(1.0, 2.0 / mean_mm)  # a thin shell in a big voxel
    tex = np.full(len(TISSUES), 2.0, np.float32)
    tex[T["air"]] = 0.0
    for name, v in HU_TEXTURE.items():
        tex[T[name]] = v
    hu = hu_lut[cv.tissue] + tex[cv.tissue] * texture
    for n, les in enumerate(lesions, start=1):
        m = (cv.labels == LESION_LABEL_BASE + n) & (cv.tissue == T["lesion"])
        hu[m] += F32(les["hu"] - hu_lut[T["lesion"]])
    hu += np.random.default_rng(rng.integers(2**63)).standard_normal(cv.shape, dtype=F32) * F32(ct_noise_hu)
    np.clip(hu, -1024.0, 3071.0, out=hu)
    return hu


def _label_names(an: _Anatomy, n_lesions: int) -> dict[int, str]:
    """Every structure of the family present in the standard field (the same on any grid over it)."""
    names = {LABELS[k]: k for k in (*_LABEL_UPTAKE, "fat", "muscle")}
    half = STANDARD_FIELD_MM[2] / 2
    for i, lev in enumerate(VERTEBRA_LEVELS):
        if abs(an.spine.z[i]) - an.spine.pitch[i] / 2 < half:
            names[VERTEBRA_LABEL_BASE + 1 + i] = f"vertebra_{lev}"
    for n in range(1, n_lesions + 1):
        names[LESION_LABEL_BASE + n] = f"lesion_{n}"
    return dict(sorted(names.items()))


def _check_arguments(seed, shape, spacing, time_days) -> tuple[int, tuple[int, int, int], tuple[float, float, float], float]:
    """Validated (seed, shape, spacing, time_days); ``spacing=None`` covers the standard field."""
    try:
        seed, shape = int(seed), tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise DblurDoseError(f"make_shapes_phantom needs an integer seed and 3 grid sizes, got {seed!r}, {shape!r}") from None
    if len(shape) != 3 or min(shape) < 2:
        raise DblurDoseError(f"the phantom grid shape must be 3 sizes (z, y, x) of at least 2, got {shape}")
    spacing = standard_spacing(shape) if spacing is None else tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise DblurDoseError(f"the phantom spacing must be 3 positive values (x, y, z) in mm, got {spacing}")
    if not 0.0 < float(time_days) <= 60.0:
        raise DblurDoseError(f"time_days must be in (0, 60] days after injection, got {time_days}")
    return seed, shape, spacing, float(time_days)


def make_shapes_phantom(seed: int, shape=STANDARD_SHAPE, spacing=STANDARD_SPACING, time_days: float = 1.0,
                        *, pet_fwhm_mm: float = 5.0, ct_noise_hu: float = 12.0) -> Phantom:
    """A seeded virtual patient of the "shapes" family on a CT grid.

    Parameters
    ----------
    seed : int
        The patient; the same seed gives the same patient on any grid.
    shape : tuple of int
        Grid size (z, y, x) in voxels.
    spacing : tuple of float or None
        Voxel size (x, y, z) in mm; ``None``: the spacing that makes ``shape`` cover the standard
        50.2 x 50.2 x 39 cm field.
    time_days : float
        Days after a 7.4 GBq Lu-177 injection, in (0, 60].
    pet_fwhm_mm : float
        FWHM (mm) of the Gaussian that gives the true activity PET-like edges (0: none).
    ct_noise_hu : float
        Standard deviation (HU) of the CT's white noise.

    Returns
    -------
    Phantom
        CT (HU), density (g/cm3), activity (Bq/mL), int16 labels with their names, tissue classes
        and ``info`` (``family="shapes"``, lesions with volume (mL), site, contrast, ...).
    """
    seed, shape, spacing, time_days = _check_arguments(seed, shape, spacing, time_days)
    rng_anatomy, rng_lesions, rng_fields, rng_uptake, rng_ct = (np.random.default_rng([seed, 0x5EA9E, k])
                                                                for k in range(5))
    warp = _Warp(rng_fields, rng_fields.uniform(3.0, 8.0), 45.0)
    an = _draw_anatomy(rng_anatomy)
    lesions = _place_lesions(rng_lesions, an, warp)
    c1, teff, fractions = _draw_uptake(rng_uptake)
    _draw_lesion_uptake(rng_uptake, lesions, c1)

    cv = _Canvas(shape, spacing, warp)
    _paint_body(an, cv)
    _paint_bowel(an, cv, rng_fields)
    _paint_stomach(an, cv)
    _paint_organs(an, cv)
    _paint_kidneys(an, cv)
    _paint_spine(an, cv)
    _paint_lesions(lesions, cv)

    het = _RbfField(rng_fields, 20.0, 18.0).on_box(cv.z, cv.y, cv.x)
    np.tanh(het, out=het)
    het = F32(1) + F32(HETEROGENEITY) * het
    act, conc, lesion_c = _activity(cv, lesions, c1, teff, fractions, time_days, het, pet_fwhm_mm)
    del het
    hu = _ct(cv, rng_ct, lesions, _RbfField(rng_fields, 10.0, 7.0).on_box(cv.z, cv.y, cv.x), ct_noise_hu)
    density = hu_to_density(hu, exact=True)  # the truth: interpolated per voxel

    vox_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    total_mbq = float(act.sum(dtype=np.float64) * vox_ml / 1e6)
    label_names = _label_names(an, len(lesions))
    counts = np.bincount(cv.labels.ravel(), minlength=max(label_names) + 1)
    info = {
        "family": FAMILY, "generator": "DblurDoseLib.simulation.phantom_shapes.make_shapes_phantom", "seed": seed,
        "time_days": time_days, "injected_activity_MBq": INJECTED_ACTIVITY_MBQ, "total_activity_MBq": total_mbq,
        "fraction_of_injected_in_field": total_mbq / INJECTED_ACTIVITY_MBQ * 2.0 ** (time_days * 24 / LU177_HALF_LIFE_H),
        "body_width_mm": round(2 * float(an.body.half_width.mean()), 1), "z_diaphragm_mm": round(an.z_diaphragm, 1),
        "concentrations_MBq_per_mL": {k: float(v) for k, v in conc.items()},
        "kidney_medulla_fraction": fractions["kidney_medulla"], "kidney_pelvis_fraction": fractions["kidney_pelvis"],
        "kidney_cortex_inner_radius": {s: round(v[0], 3) for s, v in an.kidney_inner.items()},
        "effective_half_lives_h": teff,
        "lesions": [{
            "label": LESION_LABEL_BASE + n, "name": f"lesion_{n}", "site": les["site"],
            "organ": _SITE_ORGAN[les["site"]], "volume_ml": round(les["shape"].volume_ml(), 3),
            "centre_mm": [round(float(v), 2) for v in les["shape"].centre], "uptake_MBq_per_mL": lesion_c[n - 1],
            "uptake_day1_MBq_per_mL": les["c1"], "contrast_to_background": round(les["contrast"], 2),
            "effective_half_life_h": les["teff"], "necrotic": les["necrotic"],
            "necrotic_fraction": round(les["core"] ** 3, 3), "hu": les["hu"],
        } for n, les in enumerate(lesions, start=1)],
        "volumes_ml": {name: float(counts[v] * vox_ml) for v, name in label_names.items()},
        "vertebra_z_mm": {lev: round(float(z), 1) for lev, z in zip(VERTEBRA_LEVELS, an.spine.z)},
        "pet_fwhm_mm": pet_fwhm_mm, "ct_noise_hu": ct_noise_hu,
    }
    geo = dict(spacing=spacing, origin=cv.origin)
    hu_v = Volume(hu, **geo)
    hu_v.metadata = {"seed": str(seed), "time_days": str(time_days), "family": FAMILY, "quantity": "CT", "units": "HU"}
    return Phantom(hu=hu_v, density=Volume(density, **geo), activity=Volume(act.astype(F32, copy=False), **geo),
                   labels=Volume(cv.labels, **geo), label_names=label_names, info=info,
                   tissue=Volume(cv.tissue, **geo), tissue_names={v: k for k, v in TISSUES.items()})
