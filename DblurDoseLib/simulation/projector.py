"""The pytomography side of the simulated SPECT: the lazy import (:func:`pytomography`), two faster
transforms (cached attenuation, banded Gaussian collimator response), the camera model of one phantom
(:class:`SpectSystem`, :func:`build_system`, the body-contouring orbit) and the forward projection.

pytomography objects are [x, y, z] tensors (the transpose of a Volume's [z, y, x] array),
projections [view, r, z]. Importing pytomography switches off Python warnings and numpy
floating-point errors globally; :func:`pytomography` undoes that.
"""

from __future__ import annotations

import contextlib
import functools
import io
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from ..errors import DblurDoseError
from ..io.volume import Volume
from ..physics.density import AIR_DENSITY_THRESHOLD
from .camera import (
    SpectAcquisition,
    attenuation_coefficients,
    collimator_resolution_params,
    system_sensitivity_cps_per_mbq,
)


@dataclass(frozen=True)
class Pytomography:
    """The parts of pytomography used here (see :func:`pytomography`)."""

    module: ModuleType  #: pytomography itself (its ``device`` is read at each use)
    torch: ModuleType
    object_meta: type  #: SPECTObjectMeta
    proj_meta: type  #: SPECTProjMeta
    psf_meta: type  #: SPECTPSFMeta
    system_matrix: type  #: SPECTSystemMatrix
    attenuation: type  #: SPECTAttenuationTransform
    cached_attenuation: type  #: the same operator with per-view factors computed once
    psf: type  #: SPECTPSFTransform
    banded_psf: type  #: the same operator as banded matrix products
    pad_object: Callable
    rotate_detector_z: Callable

    @property
    def device(self):
        """The torch device pytomography works on."""
        return self.module.device


@contextlib.contextmanager
def _global_state_kept():
    """Keep the warning filters and numpy error state (and stdout quiet) across pytomography's import;
    a missing pytomography becomes a DblurDoseError that says how to install it."""
    saved_filters = list(warnings.filters)
    saved_np = np.geterr()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    except ImportError as exc:
        raise DblurDoseError(
            f"SPECT simulation needs pytomography ({exc}); install the extra: pip install 'dblurdose[sim]'"
        ) from None
    finally:
        warnings.filters[:] = saved_filters
        if hasattr(warnings, "_filters_mutated"):
            warnings._filters_mutated()
        np.seterr(**saved_np)


@functools.cache
def pytomography() -> Pytomography:
    """Import the pieces of pytomography used here, once, undoing its global side effects."""
    with _global_state_kept():
        import pytomography as module
        from pytomography.metadata.SPECT import SPECTObjectMeta, SPECTProjMeta, SPECTPSFMeta
        from pytomography.projectors.SPECT import SPECTSystemMatrix
        from pytomography.transforms import Transform
        from pytomography.transforms.SPECT import SPECTAttenuationTransform, SPECTPSFTransform
        from pytomography.transforms.SPECT.attenuation import get_prob_of_detection_matrix
        from pytomography.utils import pad_object, rotate_detector_z
    import torch

    return Pytomography(
        module=module, torch=torch, object_meta=SPECTObjectMeta, proj_meta=SPECTProjMeta, psf_meta=SPECTPSFMeta,
        system_matrix=SPECTSystemMatrix, attenuation=SPECTAttenuationTransform,
        cached_attenuation=_cached_attenuation_transform(SPECTAttenuationTransform, get_prob_of_detection_matrix,
                                                         pad_object, rotate_detector_z, torch),
        psf=SPECTPSFTransform, banded_psf=_banded_psf_transform(Transform, torch),
        pad_object=pad_object, rotate_detector_z=rotate_detector_z,
    )


def _cached_attenuation_transform(base: type, get_prob_of_detection_matrix, pad_object, rotate_detector_z, torch) -> type:
    """The class below on pytomography's ``SPECTAttenuationTransform`` (``base``), imported lazily."""

    class CachedAttenuationTransform(base):
        """SPECTAttenuationTransform with the per-view detection probabilities computed once.

        pytomography recomputes rotate + cumulative sum + exp of the attenuation map for every view
        of every forward and back projection; this keeps them (views x padded object, float32).
        """

        def configure(self, object_meta, proj_meta) -> None:
            super().configure(object_meta, proj_meta)
            amap = pad_object(self.attenuation_map)
            angles = proj_meta.angles
            self.cache = torch.empty((len(angles), *amap.shape), dtype=amap.dtype, device=amap.device)
            with torch.no_grad():
                for i in range(len(angles)):
                    self.cache[i] = get_prob_of_detection_matrix(
                        rotate_detector_z(amap, angles[i]), object_meta.dx
                    )

        @torch.no_grad()
        def forward(self, object_i, ang_idx):
            return object_i * self.cache[ang_idx]

        @torch.no_grad()
        def backward(self, object_i, ang_idx):
            return object_i * self.cache[ang_idx]

    return CachedAttenuationTransform


def _banded_psf_transform(transform: type, torch) -> type:
    """The class below on pytomography's ``Transform`` (``transform``), imported lazily."""

    class BandedGaussianPSFTransform(transform):
        """pytomography's depth-dependent Gaussian collimator-detector response, applied faster.

        Same operator as ``SPECTPSFTransform`` with a ``SPECTPSFMeta``: every plane parallel to
        the detector is blurred along r and z by a normalised Gaussian of
        ``sigma = psf_meta.sigma_fit(d, *sigma_fit_params)`` (``d``: plane-to-detector distance as
        ``pytomography.utils.get_distance`` gives it, clipped at 0), zero outside the object. The
        per-plane 1D convolutions are done as batched matrix products with banded Gaussian
        matrices (about 4x faster on CPU than the grouped conv1d). Planes of all views share one
        bank of matrices indexed by distance, so views whose radii differ by whole voxels share
        memory; kernels are truncated at ``min_sigmas`` times the largest sigma of the bank.
        """

        def __init__(self, psf_meta) -> None:
            super().__init__()
            self.psf_meta = psf_meta

        def configure(self, object_meta, proj_meta) -> None:
            super().configure(object_meta, proj_meta)
            dx, dy, dz = (float(v) for v in object_meta.dr)
            lx, ly, lz = (int(v) for v in object_meta.padded_shape)
            q = np.asarray(proj_meta.radii, dtype=np.float64) / dx + (lx - 1) / 2.0
            n = np.floor(q + 1e-6)
            frac = np.round(q - n, 4)
            self.banks = {}
            self.index = []
            for key in np.unique(frac):
                sel = frac == key
                n_min, n_max = int(n[sel].min()), int(n[sel].max())
                m = n_max - np.arange(n_max - n_min + lx)  # bank entry j holds distance (m_j + frac) dx
                d = np.clip((m + key) * dx, 0.0, None)
                sigma = np.asarray(
                    self.psf_meta.sigma_fit(d, *self.psf_meta.sigma_fit_params), dtype=np.float64
                )
                self.banks[float(key)] = (self._bank(sigma / dy, ly), self._bank(sigma / dz, lz), n_max)
            for na, fa in zip(n, frac):
                self.index.append((float(fa), int(self.banks[float(fa)][2] - na)))
            self.lx = lx

        def _bank(self, sigma_px: np.ndarray, size: int):
            half = int(np.ceil(float(sigma_px.max()) * float(self.psf_meta.min_sigmas)))
            taps = np.arange(-half, half + 1, dtype=np.float64)
            offsets = np.arange(size)[None, :] - np.arange(size)[:, None]
            bank = np.exp(-(offsets[None] ** 2) / (2.0 * sigma_px[:, None, None] ** 2))
            bank[:, np.abs(offsets) > half] = 0.0
            norm = np.exp(-(taps[None] ** 2) / (2.0 * sigma_px[:, None] ** 2)).sum(axis=1)
            bank /= norm[:, None, None]
            return torch.as_tensor(bank, dtype=torch.float32, device=self.device)

        def _matrices(self, ang_idx):
            key, start = self.index[int(ang_idx)]
            by, bz, _ = self.banks[key]
            return by[start : start + self.lx], bz[start : start + self.lx]

        @torch.no_grad()
        def forward(self, object_i, ang_idx):
            by, bz = self._matrices(ang_idx)
            return torch.bmm(torch.bmm(by, object_i), bz)

        @torch.no_grad()
        def backward(self, object_i, ang_idx):
            by, bz = self._matrices(ang_idx)  # symmetric matrices: the operator is self-adjoint
            return torch.bmm(torch.bmm(by, object_i), bz)

    return BandedGaussianPSFTransform


@dataclass
class SpectSystem:
    """The simulated camera for one phantom: grid, attenuation map, orbit and pytomography's system
    matrix (attenuation + depth-dependent Gaussian collimator response, unit gain per view)."""

    grid: Volume  #: the SPECT grid (array unused)
    mu: Volume  #: attenuation map (1/cm) on the grid
    acq: SpectAcquisition
    radii_mm: np.ndarray  #: detector distance from the rotation axis per view (mm)
    angles_deg: np.ndarray
    matrix: object = field(repr=False)  #: pytomography SPECTSystemMatrix
    timings: dict[str, float] = field(default_factory=dict)
    _norms: dict[int, list] = field(default_factory=dict, repr=False)

    @property
    def sensitivity_cps_per_mbq(self) -> float:
        return system_sensitivity_cps_per_mbq(self.acq)

    def counts_per_bq(self, duration_s: float | None = None) -> float:
        """Counts per view per Bq in air for a scan of ``duration_s`` (default: acq.duration_s)."""
        duration = self.acq.duration_s if duration_s is None else duration_s
        return self.sensitivity_cps_per_mbq * 1e-6 * duration * self.acq.heads / self.acq.n_views

    @property
    def projection_shape(self) -> tuple[int, int, int]:
        nx, ny, nz = self.acq.matrix
        return (self.acq.n_views, int(ny), int(nz))

    def normalisation(self, subsets: int) -> list:
        """H_m^T 1 for each subset (computed once, shared by all reconstructions)."""
        if subsets not in self._norms:
            self.matrix.set_n_subsets(subsets)
            self._norms[subsets] = [self.matrix.compute_normalization_factor(m) for m in range(subsets)]
        return self._norms[subsets]


def _to_tensor(array_zyx: np.ndarray):
    pt = pytomography()
    torch = pt.torch
    return torch.from_numpy(np.ascontiguousarray(np.asarray(array_zyx, np.float32).transpose(2, 1, 0))).to(
        pt.device
    )


def _to_array(tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().cpu().numpy().transpose(2, 1, 0))


def orbit_radii_mm(grid: Volume, body: np.ndarray, acq: SpectAcquisition) -> np.ndarray:
    """Detector radius (mm, rotation axis to collimator face) at each view.

    ``body`` is a boolean [z, y, x] mask on the grid (tissue or activity). The body is rotated with
    pytomography's own rotation for each view and the radius set so that its outermost voxel edge
    stays ``clearance_mm`` from the collimator ("contour"), or the largest of those for every view
    ("circular"), unless ``acq.radius_mm`` fixes the circular radius.
    """
    angles = np.arange(acq.n_views) * 360.0 / acq.n_views
    if acq.orbit == "circular" and acq.radius_mm is not None:
        return np.full(acq.n_views, float(acq.radius_mm))
    pt = pytomography()
    torch = pt.torch
    dx = acq.voxel_mm
    # the body's outline in the transaxial plane (any slice), as an [x, y, 2] object
    outline = np.asarray(body, dtype=bool).any(axis=0).T.astype(np.float32)
    mask = pt.pad_object(torch.from_numpy(np.repeat(outline[:, :, None], 2, axis=2)))
    centre = (mask.shape[0] - 1) / 2.0
    radii = np.empty(acq.n_views)
    with torch.no_grad():
        for i, a in enumerate(angles):
            rot = pt.rotate_detector_z(mask, torch.tensor(float(a)))
            hits = np.nonzero((rot.amax(dim=(1, 2)) > 0.5).numpy())[0]
            extent = (hits.max() + 0.5 - centre) * dx if hits.size else 0.0
            radii[i] = max(extent, 0.0) + acq.clearance_mm
    if acq.orbit == "circular":
        radii[:] = radii.max()
    # whole voxels, so that all views share one bank of collimator-response kernels
    return np.ceil(radii / dx - 1e-6) * dx


def build_system(
    mu: Volume,
    acq: SpectAcquisition | None = None,
    body: np.ndarray | None = None,
    radii_mm: np.ndarray | None = None,
) -> SpectSystem:
    """The camera model for an attenuation map ``mu`` (1/cm) already on the SPECT grid.

    ``body`` ([z, y, x] bool, default: mu above that of 0.1 g/cm3 water) sets the orbit, unless
    ``radii_mm`` (one per view, from :func:`orbit_radii_mm`) gives it.
    """
    acq = SpectAcquisition() if acq is None else acq
    acq.validate()
    nx, ny, nz = (int(v) for v in acq.matrix)
    if mu.shape != (nz, ny, nx):
        raise DblurDoseError(
            f"attenuation map shape {mu.shape} does not match the SPECT matrix {acq.matrix} (x, y, z)"
        )
    pt = pytomography()
    timings: dict[str, float] = {}
    if body is None:
        body = mu.array > AIR_DENSITY_THRESHOLD * attenuation_coefficients(acq.photopeak_kev)["water"]
    t0 = time.perf_counter()
    if radii_mm is None:
        radii = orbit_radii_mm(mu, body, acq)
    else:
        radii = np.asarray(radii_mm, dtype=np.float64).reshape(-1)
        if radii.shape != (acq.n_views,) or np.any(radii <= 0):
            raise DblurDoseError(f"radii_mm must hold {acq.n_views} positive radii")
    timings["orbit_s"] = time.perf_counter() - t0
    angles = np.arange(acq.n_views) * 360.0 / acq.n_views
    dr_cm = acq.voxel_mm / 10.0
    object_meta = pt.object_meta(dr=[dr_cm, dr_cm, dr_cm], shape=[nx, ny, nz])
    proj_meta = pt.proj_meta(
        projection_shape=(ny, nz), dr=[dr_cm, dr_cm], angles=angles, radii=radii / 10.0
    )
    slope, intercept, intrinsic = collimator_resolution_params(acq)
    psf_meta = pt.psf_meta(
        sigma_fit_params=[slope, intercept, intrinsic],
        sigma_fit=_sigma_fit,
        min_sigmas=acq.psf_min_sigmas,
    )
    t0 = time.perf_counter()
    mu_tensor = _to_tensor(mu.array)
    att_cls = pt.cached_attenuation if acq.cache_attenuation else pt.attenuation
    att = att_cls(attenuation_map=mu_tensor)
    psf = pt.banded_psf(psf_meta) if acq.fast_psf else pt.psf(psf_meta)
    matrix = pt.system_matrix(
        obj2obj_transforms=[att, psf], proj2proj_transforms=[], object_meta=object_meta, proj_meta=proj_meta
    )
    timings["system_setup_s"] = time.perf_counter() - t0
    return SpectSystem(mu.with_array(np.zeros(mu.shape, np.float32)), mu, acq, radii, angles, matrix, timings)


def _sigma_fit(r, a, b, c):
    return np.sqrt((a * r + b) ** 2 + c**2)


def forward_project(system: SpectSystem, activity: Volume, duration_s: float | None = None) -> np.ndarray:
    """Expected primary photopeak counts, [view, r, z] float64, for ``activity`` (Bq/mL on the
    system's grid) scanned for ``duration_s`` (default acq.duration_s); noise-free, no scatter."""
    if activity.shape != system.mu.shape:
        raise DblurDoseError(
            f"activity shape {activity.shape} does not match the SPECT grid {system.mu.shape}"
        )
    pt = pytomography()
    torch = pt.torch
    bq_per_voxel = np.asarray(activity.array, np.float64) * system.grid.voxel_volume_ml
    t0 = time.perf_counter()
    with torch.no_grad():
        proj = system.matrix.forward(_to_tensor(bq_per_voxel))
    system.timings["forward_projection_s"] = time.perf_counter() - t0
    return proj.cpu().numpy().astype(np.float64) * system.counts_per_bq(duration_s)
