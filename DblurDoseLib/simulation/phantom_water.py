"""A third phantom family ("water"): hot and cold objects in a water body, whose true dose rate needs no Monte Carlo.

In a uniform water-equivalent medium the dose-voxel kernel (a Monte Carlo kernel of water) gives the
true dose rate of any activity, so the label of a water phantom is the DVK of its true activity:
seconds instead of the half hour of Monte Carlo a patient-like phantom costs on 2 CPU cores, and no
label noise. The family teaches what SPECT's resolution takes from small hot objects and spills around
them, on many objects, sizes, contrasts and SPECT chains for little compute; the anatomical family
(Monte Carlo truth) teaches lung, bone and patient anatomy. It is a training family only: the
evaluation's sphere phantom (:mod:`DblurDoseLib.evaluation.spheres`) and the held-out "shapes" family
stay out of it.

A phantom: an elliptic-cylinder water body of random size, with or without a 3 mm acrylic wall (no
activity), a warm background with a smooth +-20% heterogeneity, and 4-12 objects: ellipsoids of
0.3-40 mL (log-uniform; axis ratios up to 2, any orientation), hot 3:1-100:1 (log-uniform) or, one in
six, cold (0-0.5 of the background), a third of the hot ones with a necrotic core. It returns the
same :class:`~DblurDoseLib.simulation.phantom.Phantom` as the other families (the objects as lesions
``lesion_N`` with label ``LESION_LABEL_BASE + N``), PET-like edges and CT noise as theirs.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import DblurDoseError
from ..io.volume import Volume
from .anatomy import LESION_LABEL_BASE
from .phantom import Phantom

#: label values of the water and of the wall
WATER_LABEL, WALL_LABEL = 1, 2
#: the wall: thickness (mm) and CT number (HU, acrylic)
WALL_MM, WALL_HU = 3.0, 120.0
#: object volumes (mL, log-uniform), hot contrasts (log-uniform), the share of cold objects
OBJECT_ML, HOT_CONTRAST, COLD_SHARE = (0.3, 40.0), (3.0, 100.0), 1 / 6


def make_water_phantom(seed: int, shape: tuple[int, int, int], spacing: tuple[float, float, float],
                       time_days: float = 1.0, *, pet_fwhm_mm: float = 5.0, ct_noise_hu: float = 12.0) -> Phantom:
    """A seeded phantom of the water family (module docstring) on a CT grid.

    Parameters
    ----------
    seed : int
        The phantom; the same seed gives the same phantom.
    shape : (int, int, int)
        Grid size (z, y, x); the body is drawn to fit it (at least 40 x 64 x 64 voxels).
    spacing : (float, float, float)
        Voxel size (x, y, z), mm.
    time_days : float
        Recorded in ``info`` (the activities are drawn directly, not from uptake curves).
    pet_fwhm_mm : float
        FWHM (mm) of the Gaussian that gives the true activity PET-like edges (0: none).
    ct_noise_hu : float
        Standard deviation (HU) of the CT's white noise.

    Returns
    -------
    Phantom
        HU, density (g/cm3), activity (Bq/mL), labels (water, wall, lesions) and ``info`` (``family="water"``,
        ``lesions`` with volume_ml, contrast, cold, necrotic).
    """
    from scipy.ndimage import gaussian_filter

    from ..physics.density import hu_to_density

    shape, spacing = tuple(int(n) for n in shape), tuple(float(s) for s in spacing)
    if len(shape) != 3 or min(np.array(shape) - (40, 64, 64)) < 0 or len(spacing) != 3 or min(spacing) <= 0:
        raise DblurDoseError(f"a water phantom needs a grid of at least 40 x 64 x 64 voxels (z, y, x) and 3 positive "
                             f"spacings, got {shape} and {spacing}")
    rng = np.random.default_rng([int(seed), 0x3A7E5])
    origin = tuple(-(n - 1) / 2 * s for n, s in zip(shape[::-1], spacing))
    z, y, x = np.meshgrid(*(np.arange(n) * s + o for n, s, o in zip(shape, spacing[::-1], origin[::-1])),
                          indexing="ij", sparse=True)
    half = [n * s / 2 - 12.0 for n, s in zip(shape[::-1], spacing)]  # keep 12 mm of air around the body
    ax, ay = rng.uniform(0.6, 1.0) * half[0], rng.uniform(0.6, 1.0) * half[1]
    az = rng.uniform(0.7, 1.0) * half[2]
    wall = WALL_MM if rng.random() < 0.5 else 0.0
    water = ((x / (ax - wall)) ** 2 + (y / (ay - wall)) ** 2 <= 1) & (np.abs(z) <= az - wall)
    body = ((x / ax) ** 2 + (y / ay) ** 2 <= 1) & (np.abs(z) <= az)
    water, body = np.broadcast_to(water, shape), np.broadcast_to(body, shape)
    background = 10 ** rng.uniform(math.log10(5e3), math.log10(5e4))  # Bq/mL
    field = gaussian_filter(rng.standard_normal(shape), [25.0 / s for s in spacing[::-1]])
    activity = np.where(water, background * (1 + 0.2 * np.tanh(field / (field.std() + 1e-12))), 0.0)
    labels = np.where(water, WATER_LABEL, np.where(body, WALL_LABEL, 0)).astype(np.int16)
    lesions = _paint_objects(rng, activity, labels, water, (z, y, x), (ax - wall, ay - wall, az - wall), background,
                             float(np.prod(spacing)) / 1000.0)
    if pet_fwhm_mm > 0:
        sigma = [pet_fwhm_mm / (2 * math.sqrt(2 * math.log(2))) / s for s in spacing[::-1]]
        activity = gaussian_filter(activity, sigma) * water
    hu = np.where(water, 0.0, np.where(body, WALL_HU, -1000.0)) + rng.normal(0.0, ct_noise_hu, shape) * body
    grid = Volume(np.zeros(shape, np.float32), spacing, origin)
    names = {WATER_LABEL: "water", WALL_LABEL: "wall", **{les["label"]: les["name"] for les in lesions}}
    info = {"family": "water", "seed": int(seed), "time_days": float(time_days), "wall_mm": wall,
            "background_Bq_per_mL": background, "lesions": lesions,
            "total_MBq": float(activity.sum(dtype=np.float64)) * grid.voxel_volume_ml / 1e6}
    return Phantom(hu=grid.with_array(hu.astype(np.float32)),
                   density=grid.with_array(hu_to_density(hu.astype(np.float32)).astype(np.float32)),
                   activity=grid.with_array(activity.astype(np.float32)), labels=grid.with_array(labels),
                   label_names=names, info=info)


def _paint_objects(rng: np.random.Generator, activity: np.ndarray, labels: np.ndarray, water: np.ndarray,
                   zyx, semi_axes, background: float, voxel_ml: float) -> list[dict]:
    """Draw 4-12 ellipsoids inside the water (none overlapping, one that finds no room is dropped), paint
    their activity and labels in place; returns their ``info["lesions"]`` entries."""
    z, y, x = zyx
    lesions: list[dict] = []
    taken = np.zeros(water.shape, bool)
    for _ in range(int(rng.integers(4, 13))):
        ml = 10 ** rng.uniform(*np.log10(OBJECT_ML))
        ratios = rng.uniform(0.7, 1.4, 3)
        radii = (ml * 1000.0 * 3 / (4 * math.pi) / np.prod(ratios)) ** (1 / 3) * ratios  # mm, volume kept
        q = np.linalg.qr(rng.standard_normal((3, 3)))[0]  # a random orientation
        for _try in range(20):
            c = [rng.uniform(-1, 1) * max(a - radii.max() - 5.0, 0.0) for a in semi_axes]  # x, y, z, mm
            d = np.stack(np.broadcast_arrays(x - c[0], y - c[1], z - c[2]), -1) @ q
            inside = ((d / radii) ** 2).sum(-1) <= 1
            if inside.any() and not (inside & taken).any() and not (inside & ~water).any():
                break
        else:
            continue
        cold = rng.random() < COLD_SHARE
        contrast = rng.uniform(0.0, 0.5) if cold else 10 ** rng.uniform(*np.log10(HOT_CONTRAST))
        activity[inside] = contrast * background
        necrotic = not cold and rng.random() < 1 / 3
        if necrotic:
            core = inside & (((d / (radii * rng.uniform(0.3, 0.6))) ** 2).sum(-1) <= 1)
            activity[core] = rng.uniform(0.0, 0.5) * background
        n = len(lesions) + 1
        labels[inside] = LESION_LABEL_BASE + n
        taken |= inside
        lesions.append({"label": LESION_LABEL_BASE + n, "name": f"lesion_{n}", "site": "water", "organ": "water",
                        "volume_ml": float(inside.sum()) * voxel_ml, "contrast": float(contrast), "cold": bool(cold),
                        "necrotic": bool(necrotic)})
    return lesions
