"""Simulated Lu-177 SPECT (Siemens Intevo, medium-energy collimator) with pytomography.

What is simulated (the paper's SIMIND + in-house OSEM pipeline, replaced by an analytic model):

* Geometry: a dual-head camera, ``n_views`` (128) views over 360 degrees, parallel-hole collimator
  from pytomography's SIMIND collimator table (``SY-ME``: Siemens medium energy; other vendors'
  cameras in :data:`CAMERAS`, e.g. GE ``GI-MEGP``, Philips ``PB-MEGP``), 208 keV 20 % photopeak window. The rotation axis is the image z axis through the centre of the SPECT grid,
  which is centred on the CT field. The orbit follows the body contour (``orbit="contour"``,
  ``clearance_mm`` from the body at every view) or is circular (``orbit="circular"``).
* Collimator-detector response: depth-dependent Gaussian, as pytomography models it:
  ``sigma(d) = sqrt((D (d + L_eff) / L_eff)^2 + sigma_int^2)`` with hole diameter ``D``, effective
  hole length ``L_eff = L - 2 / mu_lead(E)`` and the intrinsic resolution of the crystal.
  No septal penetration or collimator scatter.
* Attenuation: narrow-beam, from the density map at the photopeak energy. The mass attenuation
  coefficient is water's (NIST, shipped with pytomography) for densities up to 1 g/cm3 and moves
  linearly to cortical bone's (NIST) between 1.0 and 1.92 g/cm3 (0.1351 and 0.1289 cm2/g at 208 keV).
* Scatter (stands in for the SIMIND scatter and triple-energy-window correction): the expected
  scatter in the photopeak window is a Gaussian blur (``scatter_fwhm_mm``) of the expected primary
  projections, scaled so that scatter is ``scatter_fraction`` of all photopeak counts. The TEW
  estimate passed to OSEM is an independent Poisson draw of that expected scatter (the counts of the
  two adjacent 10 % windows, C_lower + C_upper, whose TEW sum is unbiased here), optionally smoothed
  (``tew_smoothing_fwhm_mm``).
* Data: the phantom (CT grid) is resampled, conserving activity, onto a grid
  ``projection_oversampling`` (2) times finer than the reconstruction grid, projected there and the
  projections binned to the reconstruction's pixels, so that the data do not come from the very
  model that reconstructs them.
* Counts: the expected photopeak counts (primary + scatter) of all views are scaled to
  ``total_counts``, then Poisson noise is drawn. Scaling the counts is the same as scaling the scan
  time: the effective duration is kept and used for the calibration.
* Reconstruction: OSEM (``subsets`` x ``iterations``, default 4 x 16) with the same attenuation and
  collimator model on the reconstruction grid (attenuation map: the volume mean of the CT-grid mu),
  the TEW estimate as additive term, no post filter. It starts from a uniform image holding the
  measured primary counts, which makes it equivariant to the count level.
* Speed: pytomography's rotate-and-sum projector is used as is, with the per-view attenuation
  factors computed once (``cache_attenuation``: 1.4 GB at the paper's size) and the Gaussian
  collimator response applied as banded matrix products (``fast_psf``), the same operator as
  pytomography's grouped convolutions (agreement ~1e-7) at a quarter of the cost on CPU.
* Calibration: the system sensitivity ``S`` (cps/MBq per head, planar, in air) follows from the
  same model (collimator geometric efficiency, 208 keV yield, crystal absorption); the forward
  model produces ``S * A * t_view`` counts per view for activity ``A`` in air, so the reconstruction
  divided by ``S * t_view`` (and the voxel volume) is in Bq/mL.

Conventions: :class:`~DblurDoseLib.io.volume.Volume` arrays are [z, y, x]; pytomography objects are
[x, y, z] tensors (the transpose), projections are [view, r, z]. In grid index axes the detector
faces the object from -y at view 0 (``r`` then runs along +x), from -x at 90 degrees, +y at 180 and
+x at 270. Simulation and reconstruction use the same mapping, so the orientation of the input is
kept (tested: an off-centre source comes back where it was, in physical coordinates). pytomography is imported lazily (it is the optional ``sim`` extra); importing it
switches off Python warnings and numpy floating-point errors globally, which is undone here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import io
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DblurDoseError
from ..geometry.resample import resample_box
from ..io.volume import Volume
from ..physics.density import AIR_DENSITY_THRESHOLD

Progress = Callable[[float, str], object]  # progress(fraction in [0, 1], message), as elsewhere in the library

#: Lu-177 208 keV gamma yield per decay (ICRP-107); used when icrp107-database is unavailable.
LU177_208KEV_YIELD = 0.11
#: Cortical bone density of the NIST table (g/cm3): mass attenuation moves from water's at 1 g/cm3 to
#: bone's at this density.
_BONE_DENSITY = 1.92
#: NaI(Tl) density (g/cm3) and an approximate mass attenuation coefficient at 208 keV (cm2/g,
#: NIST XCOM total ~0.27-0.29); it only sets the absolute sensitivity (see system_sensitivity).
_NAI_DENSITY = 3.667
_NAI_MU_RHO_208KEV = 0.28
#: Packing constant of hexagonal holes in the geometric-efficiency formula (Cherry, Sorenson & Phelps).
_HEX_HOLE_K = 0.26
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
_DELTA = 1e-11


@dataclass(frozen=True)
class Camera:
    """One vendor's gamma camera with its medium-energy collimator, as :class:`SpectAcquisition` takes it.

    Attributes
    ----------
    vendor : str
        Manufacturer ("Siemens", "GE", "Philips").
    collimator : str
        Code of the parallel-hole collimator in pytomography's SIMIND table (``collim.col``).
    crystal_thickness_cm : float
        NaI(Tl) crystal thickness, cm (sets the absorbed fraction, i.e. the sensitivity).
    intrinsic_fwhm_mm : float
        Intrinsic resolution (FWHM, mm) at 208 keV: the vendor's 140 keV figure scaled by
        sqrt(140/208) (assumption; it adds in quadrature to the ~10 mm collimator blur).
    """

    vendor: str
    collimator: str
    crystal_thickness_cm: float
    intrinsic_fwhm_mm: float

    def settings(self) -> dict[str, str | float]:
        """The :class:`SpectAcquisition` fields this camera sets."""
        return {"collimator": self.collimator, "crystal_thickness_cm": self.crystal_thickness_cm,
                "intrinsic_fwhm_mm": self.intrinsic_fwhm_mm}


#: Named camera models (the one table of them). Hole diameter / septa / length (cm) from the SIMIND table:
#: SY-ME 0.294/0.114/4.064, GI-MEGP 0.300/0.105/5.800 (GE Infinia/Discovery 670 MEGP),
#: PB-MEGP 0.340/0.086/5.840 (Philips BrightView MEGP). Intrinsic resolution at 140 keV: 4.5 mm (5/8"),
#: 3.9 mm (GE 3/8"), 3.6 mm (Philips 3/8").
CAMERAS: dict[str, Camera] = {
    "siemens-intevo-me": Camera("Siemens", "SY-ME", 1.5875, 3.7),  # 5/8" crystal
    "ge-discovery-670-megp": Camera("GE", "GI-MEGP", 0.9525, 3.2),  # 3/8" crystal
    "philips-brightview-megp": Camera("Philips", "PB-MEGP", 0.9525, 3.0),  # 3/8" crystal
}
#: The paper's camera: the defaults of SpectAcquisition.
DEFAULT_CAMERA = "siemens-intevo-me"


def camera(name: str) -> Camera:
    """The camera model ``name`` of :data:`CAMERAS`; DblurDoseError for an unknown name."""
    try:
        return CAMERAS[name]
    except KeyError:
        raise DblurDoseError(f"unknown camera {name!r}; use one of {', '.join(sorted(CAMERAS))}") from None


@dataclass
class SpectAcquisition:
    """Acquisition and reconstruction settings; the defaults follow the paper (Siemens Intevo).

    The camera fields (collimator, crystal, intrinsic resolution) default to ``CAMERAS[DEFAULT_CAMERA]``;
    :meth:`for_camera` takes them from another camera of :data:`CAMERAS`.
    """

    n_views: int = 128  #: views over 360 degrees (both heads together)
    collimator: str = CAMERAS[DEFAULT_CAMERA].collimator  #: code in pytomography's SIMIND collimator table
    photopeak_kev: float = 208.0
    window: float = 0.20  #: photopeak window width as a fraction of the photopeak energy
    crystal_thickness_cm: float = CAMERAS[DEFAULT_CAMERA].crystal_thickness_cm  #: NaI(Tl), cm (5/8 inch)
    #: intrinsic resolution (FWHM, mm) at the photopeak energy (see Camera)
    intrinsic_fwhm_mm: float = CAMERAS[DEFAULT_CAMERA].intrinsic_fwhm_mm
    #: circular-orbit radius (mm, rotation axis to collimator face); None = the smallest radius that
    #: clears the body by ``clearance_mm``. Ignored for the contour orbit.
    radius_mm: float | None = None
    orbit: str = "contour"  #: "contour" (body-contouring, per-view radius) or "circular"
    clearance_mm: float = 20.0  #: gap between the body outline and the collimator face
    matrix: tuple[int, int, int] = (128, 128, 81)  #: x, y, z voxels of the reconstruction grid
    voxel_mm: float = 4.8
    iterations: int = 16
    subsets: int = 4
    postfilter_fwhm_mm: float = 0.0  #: 3D Gaussian post-filter of the reconstruction (0: none, the default)
    duration_s: float = 1500.0  #: acquisition time (25 min, the paper's patient protocol)
    heads: int = 2
    scatter_fraction: float = 0.25  #: scatter / (primary + scatter) in the photopeak window
    scatter_fwhm_mm: float = 50.0  #: width of the Gaussian that turns primaries into scatter
    tew_smoothing_fwhm_mm: float = 0.0  #: smoothing of the noisy TEW estimate (0: none)
    #: planar sensitivity per head (cps/MBq); None = derived from the model (system_sensitivity_cps_per_mbq)
    sensitivity_cps_per_mbq: float | None = None
    cache_attenuation: bool = True  #: precompute the per-view attenuation factors (memory for speed)
    psf_min_sigmas: float = 3.0  #: PSF kernel half-width in sigmas (pytomography's min_sigmas)
    #: apply the collimator response with banded matrix products (same model, ~4x faster on CPU)
    #: instead of pytomography's grouped convolutions
    fast_psf: bool = True
    #: project the phantom on a grid this many times finer (in x, y, z) and bin the projections, so
    #: that the data do not come from the very model that reconstructs them (no "inverse crime")
    projection_oversampling: int = 2

    def validate(self) -> None:
        """Raise DblurDoseError for settings that cannot work."""
        nx, ny, nz = (int(v) for v in self.matrix)
        if len(self.matrix) != 3 or min(nx, ny, nz) < 4:
            raise DblurDoseError(f"SPECT matrix must be 3 sizes of at least 4 voxels, got {self.matrix}")
        if nx != ny:
            raise DblurDoseError(
                f"the SPECT matrix must be square in x and y (pytomography rotates it), got {self.matrix}"
            )
        checks = {
            "n_views": self.n_views >= 4,
            "voxel_mm": self.voxel_mm > 0,
            "iterations": self.iterations >= 1,
            "subsets": 1 <= self.subsets <= self.n_views,
            "postfilter_fwhm_mm": 0 <= self.postfilter_fwhm_mm < 100,
            "duration_s": self.duration_s > 0,
            "heads": self.heads >= 1,
            "photopeak_kev": 30 <= self.photopeak_kev <= 600,
            "window": 0 < self.window < 1,
            "crystal_thickness_cm": self.crystal_thickness_cm > 0,
            "intrinsic_fwhm_mm": self.intrinsic_fwhm_mm >= 0,
            "scatter_fraction": 0 <= self.scatter_fraction < 1,
            "scatter_fwhm_mm": self.scatter_fwhm_mm >= 0,
            "tew_smoothing_fwhm_mm": self.tew_smoothing_fwhm_mm >= 0,
            "clearance_mm": self.clearance_mm >= 0,
            "orbit": self.orbit in ("contour", "circular"),
            "projection_oversampling": int(self.projection_oversampling) == self.projection_oversampling
            and 1 <= self.projection_oversampling <= 4,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if self.radius_mm is not None and self.radius_mm <= 0:
            bad.append("radius_mm")
        if self.sensitivity_cps_per_mbq is not None and self.sensitivity_cps_per_mbq <= 0:
            bad.append("sensitivity_cps_per_mbq")
        if bad:
            raise DblurDoseError(f"invalid SPECT acquisition setting(s): {', '.join(bad)} ({self})")
        _collimator_row(self.collimator)  # raises for an unknown collimator

    @classmethod
    def for_camera(cls, name: str, **settings) -> SpectAcquisition:
        """The acquisition with camera ``name`` of :data:`CAMERAS` and the other ``settings`` given.

        Parameters
        ----------
        name : str
            Key of :data:`CAMERAS`, e.g. "ge-discovery-670-megp".
        **settings
            Any other field (n_views, matrix, voxel_mm in mm, ...).
        """
        return cls(**camera(name).settings(), **settings)

    @property
    def view_time_s(self) -> float:
        """Time one head spends at one view: duration x heads / views."""
        return self.duration_s * self.heads / self.n_views


# --------------------------------------------------------------------------------------
# pytomography: lazy import that leaves the warning filters and numpy error state alone
# --------------------------------------------------------------------------------------
_PT: dict | None = None


def _pytomography() -> dict:
    """Import the pieces of pytomography used here, undoing its global side effects."""
    global _PT
    if _PT is not None:
        return _PT
    saved_filters = list(warnings.filters)
    saved_np = np.geterr()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import pytomography
            from pytomography.metadata.SPECT import SPECTObjectMeta, SPECTProjMeta, SPECTPSFMeta
            from pytomography.projectors.SPECT import SPECTSystemMatrix
            from pytomography.transforms import Transform
            from pytomography.transforms.SPECT import SPECTAttenuationTransform, SPECTPSFTransform
            from pytomography.transforms.SPECT.attenuation import get_prob_of_detection_matrix
            from pytomography.utils import pad_object, rotate_detector_z
    except ImportError as exc:
        raise DblurDoseError(
            f"SPECT simulation needs pytomography ({exc}); install the extra: pip install 'dblurdose[sim]'"
        ) from None
    finally:
        warnings.filters[:] = saved_filters
        if hasattr(warnings, "_filters_mutated"):
            warnings._filters_mutated()
        np.seterr(**saved_np)

    import torch

    class CachedAttenuationTransform(SPECTAttenuationTransform):
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

    class BandedGaussianPSFTransform(Transform):
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

    _PT = {
        "pytomography": pytomography,
        "torch": torch,
        "SPECTObjectMeta": SPECTObjectMeta,
        "SPECTProjMeta": SPECTProjMeta,
        "SPECTPSFMeta": SPECTPSFMeta,
        "SPECTSystemMatrix": SPECTSystemMatrix,
        "SPECTAttenuationTransform": SPECTAttenuationTransform,
        "CachedAttenuationTransform": CachedAttenuationTransform,
        "SPECTPSFTransform": SPECTPSFTransform,
        "BandedGaussianPSFTransform": BandedGaussianPSFTransform,
        "pad_object": pad_object,
    }
    return _PT


def _pytomography_data_dir() -> Path:
    """pytomography's shipped data folder, found without importing the package."""
    spec = importlib.util.find_spec("pytomography")
    if spec is None or not spec.submodule_search_locations:
        raise DblurDoseError(
            "SPECT simulation needs pytomography; install the extra: pip install 'dblurdose[sim]'"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data"


# --------------------------------------------------------------------------------------
# physics tables
# --------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def _nist_mu_rho(material: str, energy_kev: float) -> float:
    """Mass attenuation coefficient (cm2/g, with coherent scattering) of a NIST table shipped with
    pytomography, log-log interpolated at ``energy_kev``."""
    path = _pytomography_data_dir() / "NIST_attenuation_data" / f"{material}.csv"
    rows = [line.split() for line in path.read_text().splitlines()[1:] if line.strip()]
    table = np.array([[float(r[-3]), float(r[-2])] for r in rows])
    e_mev, mu_rho = table[:, 0], table[:, 1]
    # tables repeat the energy at absorption edges; interpolate above the last edge below E
    e = energy_kev / 1000.0
    idx = np.searchsorted(e_mev, e)
    if idx <= 0 or idx >= len(e_mev):
        raise DblurDoseError(f"photopeak {energy_kev} keV is outside the NIST table for {material}")
    e0, e1, m0, m1 = e_mev[idx - 1], e_mev[idx], mu_rho[idx - 1], mu_rho[idx]
    return float(
        np.exp(np.log(m0) + (np.log(m1) - np.log(m0)) * (np.log(e) - np.log(e0)) / (np.log(e1) - np.log(e0)))
    )


def attenuation_coefficients(energy_kev: float = 208.0) -> dict[str, float]:
    """Mass attenuation coefficients (cm2/g) used for the attenuation map and the collimator."""
    return {
        "water": _nist_mu_rho("water", energy_kev),
        "bone": _nist_mu_rho("bonecortical", energy_kev),
        "lead": _nist_mu_rho("lead", energy_kev),
    }


def density_to_mu(density: np.ndarray, energy_kev: float = 208.0) -> np.ndarray:
    """Linear attenuation coefficient (1/cm, float32) from mass density (g/cm3) at ``energy_kev``.

    Water's mass attenuation coefficient up to 1 g/cm3 (air, lung, fat, water), moving linearly to
    cortical bone's between 1 and 1.92 g/cm3 (kept above).
    """
    coeff = attenuation_coefficients(energy_kev)
    rho = np.clip(np.asarray(density, dtype=np.float64), 0.0, None)
    w = np.clip((rho - 1.0) / (_BONE_DENSITY - 1.0), 0.0, 1.0)
    return (rho * ((1.0 - w) * coeff["water"] + w * coeff["bone"])).astype(np.float32)


def _collimator_row(code: str) -> tuple[float, float, float]:
    """(hole diameter, septal thickness, hole length) in cm of a collimator in pytomography's table."""
    path = _pytomography_data_dir() / "collim.col"
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == f"*{code}":
            return float(parts[1]), float(parts[2]), float(parts[3])
    raise DblurDoseError(
        f"unknown collimator {code!r}; use a code of pytomography's collimator table, e.g. 'SY-ME' "
        "(Siemens medium energy) or 'SY-LEHR'"
    )


def collimator_resolution_params(acq: SpectAcquisition) -> tuple[float, float, float]:
    """(slope, intercept, intrinsic) of the Gaussian sigma(d) = sqrt((slope d + intercept)^2 + intrinsic^2),
    all in cm (d: distance to the collimator face, cm), as pytomography builds it from its tables."""
    diameter, _septa, length = _collimator_row(acq.collimator)
    mu_lead = attenuation_coefficients(acq.photopeak_kev)["lead"] * 11.35
    l_eff = length - 2.0 / mu_lead
    slope = diameter / l_eff * _FWHM_TO_SIGMA
    intercept = diameter * _FWHM_TO_SIGMA
    intrinsic = acq.intrinsic_fwhm_mm / 10.0 * _FWHM_TO_SIGMA
    return slope, intercept, intrinsic


def system_resolution_fwhm_mm(acq: SpectAcquisition, distance_mm: float) -> float:
    """Planar system resolution (FWHM, mm) at ``distance_mm`` from the collimator face."""
    a, b, c = collimator_resolution_params(acq)
    return math.sqrt((a * distance_mm / 10.0 + b) ** 2 + c**2) / _FWHM_TO_SIGMA * 10.0


def _gamma_yield(energy_kev: float) -> float:
    """Lu-177 gamma yield per decay in the photopeak window (ICRP-107)."""
    try:
        from icrp107_database import get_icrp107_spectrum

        spectrum = get_icrp107_spectrum("Lu-177", "gamma")
        energies = np.asarray(spectrum["energies"], dtype=float) * 1000.0
        weights = np.asarray(spectrum["weights"], dtype=float)
        near = np.abs(energies - energy_kev) < 0.02 * energy_kev
        if near.any():
            return float(weights[near].sum())
    except Exception:  # noqa: BLE001 - optional data; fall back to the tabulated value
        pass
    return LU177_208KEV_YIELD


def system_sensitivity_cps_per_mbq(acq: SpectAcquisition | None = None) -> float:
    """Planar sensitivity of one head (photopeak-window counts per second per MBq, source in air).

    Unless ``acq.sensitivity_cps_per_mbq`` is set, it is derived from the same model used to
    simulate: geometric efficiency of the hexagonal-hole collimator
    ``g = K^2 (D / L_eff)^2 D^2 / (D + t)^2`` (K = 0.26, L_eff = L - 2/mu_lead), times the Lu-177
    photon yield at the photopeak (ICRP-107, 11 % at 208 keV), times the crystal's absorption
    ``1 - exp(-mu_NaI * thickness)`` (every absorbed photon counted in the window). For SY-ME and a
    5/8" crystal this gives about 18 cps/MBq; published Lu-177 medium-energy values are of order
    10 cps/MBq (photopeak fraction and septal losses are not modelled). The difference only changes
    the scan time that a given count level stands for, not the images. The forward model
    yields exactly ``sensitivity * A * t_view`` counts per view for activity ``A`` in air, so this
    is also the calibration factor of the reconstruction.
    """
    acq = SpectAcquisition() if acq is None else acq
    if acq.sensitivity_cps_per_mbq is not None:
        return float(acq.sensitivity_cps_per_mbq)
    diameter, septa, length = _collimator_row(acq.collimator)
    mu_lead = attenuation_coefficients(acq.photopeak_kev)["lead"] * 11.35
    l_eff = length - 2.0 / mu_lead
    geometric = _HEX_HOLE_K**2 * (diameter / l_eff) ** 2 * diameter**2 / (diameter + septa) ** 2
    mu_nai = _NAI_MU_RHO_208KEV * (208.0 / acq.photopeak_kev) ** 1.5 * _NAI_DENSITY
    absorbed = 1.0 - math.exp(-mu_nai * acq.crystal_thickness_cm)
    return geometric * _gamma_yield(acq.photopeak_kev) * absorbed * 1e6


# --------------------------------------------------------------------------------------
# grids and resampling
# --------------------------------------------------------------------------------------
def spect_grid(ct: Volume, acq: SpectAcquisition | None = None) -> Volume:
    """An empty (zero, float32) Volume describing the reconstruction grid, centred on the CT field.

    ``acq.matrix`` is (x, y, z) voxels of ``acq.voxel_mm``. The grid shares the CT's direction when
    the CT's slice axis is the body axis (axial CT, any in-plane orientation or flips), so that the
    camera rotates about the body axis; otherwise it is axis-aligned (identity direction).
    """
    acq = SpectAcquisition() if acq is None else acq
    acq.validate()
    nx, ny, nz = (int(v) for v in acq.matrix)
    centre = ct.physical_corners().mean(axis=0)
    direction = ct.direction.copy() if abs(ct.direction[2, 2]) > 0.99 else np.eye(3)
    spacing = np.full(3, float(acq.voxel_mm))
    half = (np.array([nx, ny, nz]) - 1) / 2.0 * spacing
    origin = centre - direction @ half
    return Volume(np.zeros((nz, ny, nx), np.float32), tuple(spacing), tuple(origin), direction)


# --------------------------------------------------------------------------------------
# the system model
# --------------------------------------------------------------------------------------
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
    pt = _pytomography()
    torch = pt["torch"]
    return torch.from_numpy(np.ascontiguousarray(np.asarray(array_zyx, np.float32).transpose(2, 1, 0))).to(
        pt["pytomography"].device
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
    pt = _pytomography()
    torch = pt["torch"]
    from pytomography.utils import rotate_detector_z

    dx = acq.voxel_mm
    # the body's outline in the transaxial plane (any slice), as an [x, y, 2] object
    outline = np.asarray(body, dtype=bool).any(axis=0).T.astype(np.float32)
    mask = pt["pad_object"](torch.from_numpy(np.repeat(outline[:, :, None], 2, axis=2)))
    centre = (mask.shape[0] - 1) / 2.0
    radii = np.empty(acq.n_views)
    with torch.no_grad():
        for i, a in enumerate(angles):
            rot = rotate_detector_z(mask, torch.tensor(float(a)))
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
    pt = _pytomography()
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
    object_meta = pt["SPECTObjectMeta"](dr=[dr_cm, dr_cm, dr_cm], shape=[nx, ny, nz])
    proj_meta = pt["SPECTProjMeta"](
        projection_shape=(ny, nz), dr=[dr_cm, dr_cm], angles=angles, radii=radii / 10.0
    )
    slope, intercept, intrinsic = collimator_resolution_params(acq)
    psf_meta = pt["SPECTPSFMeta"](
        sigma_fit_params=[slope, intercept, intrinsic],
        sigma_fit=_sigma_fit,
        min_sigmas=acq.psf_min_sigmas,
    )
    t0 = time.perf_counter()
    mu_tensor = _to_tensor(mu.array)
    att_cls = pt["CachedAttenuationTransform"] if acq.cache_attenuation else pt["SPECTAttenuationTransform"]
    att = att_cls(attenuation_map=mu_tensor)
    psf = pt["BandedGaussianPSFTransform"](psf_meta) if acq.fast_psf else pt["SPECTPSFTransform"](psf_meta)
    matrix = pt["SPECTSystemMatrix"](
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
    pt = _pytomography()
    torch = pt["torch"]
    bq_per_voxel = np.asarray(activity.array, np.float64) * system.grid.voxel_volume_ml
    t0 = time.perf_counter()
    with torch.no_grad():
        proj = system.matrix.forward(_to_tensor(bq_per_voxel))
    system.timings["forward_projection_s"] = time.perf_counter() - t0
    return proj.cpu().numpy().astype(np.float64) * system.counts_per_bq(duration_s)


def _gaussian_rz(proj: np.ndarray, fwhm_mm: float, voxel_mm: float) -> np.ndarray:
    """Gaussian blur of projections [view, r, z] within each view (zero outside the detector)."""
    if fwhm_mm <= 0:
        return proj
    from scipy.ndimage import gaussian_filter

    sigma = fwhm_mm * _FWHM_TO_SIGMA / voxel_mm
    return gaussian_filter(proj, sigma=(0.0, sigma, sigma), mode="constant", truncate=4.0)


def scatter_projections(primary: np.ndarray, acq: SpectAcquisition) -> np.ndarray:
    """Expected photopeak-window scatter: the primaries blurred by ``scatter_fwhm_mm``, scaled so that
    scatter / (primary + scatter) = ``scatter_fraction`` over all views."""
    total = float(primary.sum())
    if acq.scatter_fraction <= 0 or total <= 0:
        return np.zeros_like(primary)
    blurred = _gaussian_rz(primary, acq.scatter_fwhm_mm, acq.voxel_mm)
    scale = acq.scatter_fraction / (1.0 - acq.scatter_fraction) * total / max(float(blurred.sum()), 1e-300)
    return blurred * scale


def tew_estimate(expected_scatter: np.ndarray, rng: np.random.Generator, acq: SpectAcquisition) -> np.ndarray:
    """A noisy triple-energy-window scatter estimate: counts of the two adjacent 10 % windows whose TEW
    combination (w_peak / (2 w_side) = 1 each) has the expected scatter as mean; optionally smoothed."""
    estimate = rng.poisson(expected_scatter).astype(np.float64)
    return _gaussian_rz(estimate, acq.tew_smoothing_fwhm_mm, acq.voxel_mm)


def reconstruct(
    system: SpectSystem,
    projections: np.ndarray,
    additive: np.ndarray | None = None,
    duration_s: float | None = None,
    iterations: int | None = None,
    subsets: int | None = None,
    progress: Progress | None = None,
    postfilter_fwhm_mm: float | None = None,
) -> Volume:
    """OSEM with attenuation and collimator modelling; returns Bq/mL on the system's grid.

    ``projections`` and ``additive`` (scatter estimate) are [view, r, z] counts of a scan of
    ``duration_s`` (default acq.duration_s), which with the system sensitivity calibrates the image.
    ``iterations``, ``subsets`` and ``postfilter_fwhm_mm`` default to the acquisition's.
    ``progress(fraction, message)`` is called before every subset update, with the message
    "OSEM iteration k/n" (one message per iteration) and the fraction of the updates done.
    """
    acq = system.acq
    iterations = acq.iterations if iterations is None else int(iterations)
    subsets = acq.subsets if subsets is None else int(subsets)
    fwhm = acq.postfilter_fwhm_mm if postfilter_fwhm_mm is None else float(postfilter_fwhm_mm)
    if not 0 <= fwhm < 100:
        raise DblurDoseError(f"the post-filter FWHM must be between 0 and 100 mm, got {fwhm}")
    if projections.shape != system.projection_shape:
        raise DblurDoseError(f"projections of shape {projections.shape}, expected {system.projection_shape}")
    if not np.all(np.isfinite(projections)) or np.any(projections < 0):
        raise DblurDoseError("projections must be finite and non-negative counts")
    if iterations < 1 or not 1 <= subsets <= acq.n_views:
        raise DblurDoseError(f"invalid OSEM settings: {iterations} iterations, {subsets} subsets")
    pt = _pytomography()
    torch = pt["torch"]
    device = pt["pytomography"].device
    h = system.matrix
    g = torch.as_tensor(np.asarray(projections, np.float32), device=device)
    s = (
        torch.zeros_like(g)
        if additive is None
        else torch.as_tensor(np.asarray(additive, np.float32), device=device)
    )
    t0 = time.perf_counter()
    with torch.no_grad():
        norms = system.normalisation(subsets)
        h.set_n_subsets(subsets)
        t1 = time.perf_counter()
        # uniform start whose projections hold the measured primary counts: OSEM is then
        # equivariant to the count level (with an additive term it otherwise is not)
        sensitivity = sum(norms)
        primary = max(float(g.sum() - s.sum()), 0.1 * float(g.sum()), _DELTA)
        f = torch.full(
            tuple(int(v) for v in acq.matrix), primary / max(float(sensitivity.sum()), _DELTA), device=device
        )
        f = torch.where(sensitivity > 0, f, torch.zeros_like(f))
        for it in range(iterations):
            for m in range(subsets):
                if progress is not None:  # one message per iteration, the fraction per subset
                    progress((it * subsets + m) / (iterations * subsets), f"OSEM iteration {it + 1}/{iterations}")
                g_m = h.get_projection_subset(g, m)
                s_m = h.get_projection_subset(s, m)
                ratio = g_m / (h.forward(f, m) + s_m + _DELTA)
                f = f * h.backward(ratio, m) / (norms[m] + _DELTA)
    system.timings["osem_normalisation_s"] = t1 - t0
    system.timings["osem_s"] = time.perf_counter() - t1
    bq_per_voxel = _to_array(f).astype(np.float64) / system.counts_per_bq(duration_s)
    if fwhm > 0:  # counts are kept: the filter's mass outside the field is folded back ("nearest")
        from scipy.ndimage import gaussian_filter

        sigma_vox = fwhm * _FWHM_TO_SIGMA / np.asarray(system.grid.spacing[::-1], dtype=np.float64)
        bq_per_voxel = gaussian_filter(bq_per_voxel, sigma_vox, mode="nearest")
    out = system.grid.with_array((bq_per_voxel / system.grid.voxel_volume_ml).astype(np.float32))
    out.metadata = {"units": "Bq/mL", "calibration_cps_per_mbq": f"{system.sensitivity_cps_per_mbq:.10g}",
                    "osem": f"{iterations}x{subsets}", "postfilter_fwhm_mm": f"{fwhm:g}"}
    return out


# --------------------------------------------------------------------------------------
# the whole simulation
# --------------------------------------------------------------------------------------
def _check_inputs(activity: Volume, density: Volume, total_counts: float | None) -> None:
    if not activity.same_grid(density):
        raise DblurDoseError(
            "the activity and density maps must share one grid (shape, spacing, origin, direction); "
            f"got {activity.shape} at {activity.spacing} mm and {density.shape} at {density.spacing} mm. "
            "Resample one onto the other first."
        )
    a = np.asarray(activity.array)
    d = np.asarray(density.array)
    if not np.all(np.isfinite(a)):
        raise DblurDoseError("the activity map holds NaN or infinite values; fix the phantom")
    if np.any(a < 0):
        raise DblurDoseError(
            f"the activity map has negative values (down to {float(a.min()):g} Bq/mL); clamp it at 0"
        )
    if not np.all(np.isfinite(d)):
        raise DblurDoseError("the density map holds NaN or infinite values")
    if np.any(d < 0):
        raise DblurDoseError("the density map has negative values; density is in g/cm3, not HU")
    if float(d.max(initial=0.0)) > 30.0:
        raise DblurDoseError(f"density up to {float(d.max()):g} g/cm3: this looks like HU, not g/cm3")
    if total_counts is not None and not (np.isfinite(total_counts) and total_counts > 0):
        raise DblurDoseError(f"total_counts must be a positive number, got {total_counts}")


def prepare_system(
    activity: Volume, density: Volume, acq: SpectAcquisition | None = None
) -> tuple[SpectSystem, Volume]:
    """Resample a CT-grid phantom to the SPECT grid and build its camera model.

    Returns the system and the true activity (Bq/mL) on the SPECT grid. The activity is resampled
    conserving activity, the density to a volume-weighted mean, the attenuation map is the mean of
    the CT-grid mu map.
    """
    acq = SpectAcquisition() if acq is None else acq
    _check_inputs(activity, density, None)
    acq.validate()
    grid = spect_grid(activity, acq)
    t0 = time.perf_counter()
    act_spect = resample_box(activity, grid, "concentration")
    mu_ct = density.with_array(density_to_mu(density.array, acq.photopeak_kev))
    mu_spect = resample_box(mu_ct, grid, "mean")
    density_spect = resample_box(density, grid, "mean")
    t_resample = time.perf_counter() - t0
    body = (density_spect.array > AIR_DENSITY_THRESHOLD) | (act_spect.array > 0)
    system = build_system(mu_spect, acq, body=body)
    system.timings["resample_s"] = t_resample
    return system, act_spect


@dataclass
class SimulatedProjections:
    """Noise-free projections of a phantom and what is needed to draw and reconstruct noisy ones."""

    system: SpectSystem
    activity: Volume  #: true activity on the SPECT grid (Bq/mL)
    primary: np.ndarray  #: expected primary photopeak counts [view, r, z] for ``duration_s``
    scatter: np.ndarray  #: expected scatter counts in the photopeak window
    duration_s: float  #: the scan time these counts stand for (calibration)

    def draw(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A Poisson realisation: (photopeak counts, noisy TEW scatter estimate)."""
        counts = rng.poisson(self.primary + self.scatter).astype(np.float64)
        return counts, tew_estimate(self.scatter, rng, self.system.acq)

    def reconstruct(
        self, counts: np.ndarray, additive: np.ndarray | None, progress: Progress | None = None, **settings
    ) -> Volume:
        """OSEM of drawn data, calibrated to Bq/mL with this simulation's scan time.

        ``settings``: ``iterations``, ``subsets``, ``postfilter_fwhm_mm`` other than the acquisition's."""
        return reconstruct(self.system, counts, additive, duration_s=self.duration_s, progress=progress, **settings)


def _project_phantom(activity: Volume, density: Volume, system: SpectSystem, act_spect: Volume) -> np.ndarray:
    """Expected primary counts of the CT-grid phantom, projected on a grid ``projection_oversampling``
    times finer than the reconstruction's (same centre, orbit and camera), binned to its pixels."""
    acq = system.acq
    k = int(acq.projection_oversampling)
    if k == 1:
        return forward_project(system, act_spect)
    t0 = time.perf_counter()
    nx, ny, nz = (int(v) for v in acq.matrix)
    fine_acq = dataclasses.replace(
        acq,
        matrix=(nx * k, ny * k, nz * k),
        voxel_mm=acq.voxel_mm / k,
        cache_attenuation=False,  # one projection only
        projection_oversampling=1,
    )
    fine_grid = spect_grid(activity, fine_acq)
    fine_activity = resample_box(activity, fine_grid, "concentration")
    fine_mu = resample_box(
        density.with_array(density_to_mu(density.array, acq.photopeak_kev)), fine_grid, "mean"
    )
    fine_system = build_system(fine_mu, fine_acq, radii_mm=system.radii_mm)
    fine = forward_project(fine_system, fine_activity)
    system.timings["oversampled_projection_s"] = time.perf_counter() - t0
    return fine.reshape(acq.n_views, ny, k, nz, k).sum(axis=(2, 4))


def simulate_projections(
    activity: Volume, density: Volume, total_counts: float | None, acq: SpectAcquisition | None = None
) -> SimulatedProjections:
    """The noise-free part of :func:`simulate_spect`: camera model, expected primary and scatter
    counts scaled to ``total_counts`` (None: the counts of ``acq.duration_s``)."""
    acq = SpectAcquisition() if acq is None else acq
    acq.validate()
    _check_inputs(activity, density, total_counts)
    system, act_spect = prepare_system(activity, density, acq)
    if total_counts is not None and not np.any(act_spect.array > 0):
        raise DblurDoseError("the phantom has no activity inside the SPECT field; nothing to simulate")
    primary = _project_phantom(activity, density, system, act_spect)
    scatter = scatter_projections(primary, acq)
    scale = 1.0 if total_counts is None else float(total_counts) / float(primary.sum() + scatter.sum())
    return SimulatedProjections(system, act_spect, primary * scale, scatter * scale, acq.duration_s * scale)


def simulate_spect(
    activity: Volume,
    density: Volume,
    total_counts: float | None,
    seed: int,
    acq: SpectAcquisition | None = None,
    realisations: int = 1,
    progress: Progress | None = None,
    reconstructions: Sequence[dict] | None = None,
) -> list[Volume]:
    """Simulate and reconstruct Lu-177 SPECT of a phantom; one Bq/mL Volume per Poisson realisation.

    ``activity`` (Bq/mL) and ``density`` (g/cm3) share the CT grid. The expected photopeak counts
    (primary + scatter, all views) are scaled to ``total_counts`` (None: the counts that the true
    activity gives in ``acq.duration_s``); each realisation draws independent Poisson noise for the
    photopeak and the scatter windows from ``numpy.random.SeedSequence(seed).spawn``, so realisation
    ``i`` is the same whatever the number asked for. The noise-free projections and the system
    matrix (with OSEM's normalisation) are shared. Results lie on ``spect_grid(activity, acq)``;
    their metadata give the calibration, counts and effective scan time. ``progress(fraction, message)``
    is called along the way. ``reconstructions`` (one dict per realisation) sets that realisation's
    ``iterations``, ``subsets`` or ``postfilter_fwhm_mm`` where they differ from ``acq``'s.
    """
    acq = SpectAcquisition() if acq is None else acq
    acq.validate()
    _check_inputs(activity, density, total_counts)
    if int(realisations) < 1:
        raise DblurDoseError(f"realisations must be at least 1, got {realisations}")
    reconstructions = [{}] * int(realisations) if reconstructions is None else list(reconstructions)
    unknown = {k for r in reconstructions for k in r} - {"iterations", "subsets", "postfilter_fwhm_mm"}
    if len(reconstructions) != int(realisations) or unknown:
        raise DblurDoseError(f"reconstructions: one dict of iterations/subsets/postfilter_fwhm_mm per realisation "
                             f"({realisations}), got {len(reconstructions)}" + (f" with {sorted(unknown)}" if unknown else ""))

    def report(stage: str, fraction: float) -> None:
        if progress is not None:
            progress(fraction, stage)

    report("SPECT: attenuation map and projections", 0.0)
    sim = simulate_projections(activity, density, total_counts, acq)
    true_total_bq = float(sim.activity.array.sum(dtype=np.float64)) * sim.activity.voxel_volume_ml
    expected = float(sim.primary.sum() + sim.scatter.sum())
    out: list[Volume] = []
    for i, child in enumerate(np.random.SeedSequence(int(seed)).spawn(int(realisations))):
        counts, tew = sim.draw(np.random.default_rng(child))

        def osem_progress(fraction: float, stage: str, i=i) -> None:
            which = f", realisation {i + 1}/{realisations}" if realisations > 1 else ""
            report(f"SPECT: {stage}{which}", 0.1 + 0.9 * (i + fraction) / realisations)

        image = sim.reconstruct(counts, tew, progress=osem_progress, **reconstructions[i])
        image.metadata.update(
            {
                "realisation": str(i),
                "seed": str(int(seed)),
                "total_counts": f"{float(counts.sum()):.0f}",
                "expected_total_counts": f"{expected:.6g}",
                "scatter_fraction": f"{acq.scatter_fraction:g}",
                "effective_duration_s": f"{sim.duration_s:.6g}",
                "true_activity_in_field_mbq": f"{true_total_bq / 1e6:.6g}",
            }
        )
        out.append(image)
    report("SPECT: done", 1.0)
    return out


__all__ = [
    "CAMERAS",
    "Camera",
    "SpectAcquisition",
    "SpectSystem",
    "SimulatedProjections",
    "attenuation_coefficients",
    "build_system",
    "camera",
    "collimator_resolution_params",
    "density_to_mu",
    "forward_project",
    "orbit_radii_mm",
    "prepare_system",
    "reconstruct",
    "scatter_projections",
    "simulate_projections",
    "simulate_spect",
    "spect_grid",
    "system_resolution_fwhm_mm",
    "system_sensitivity_cps_per_mbq",
    "tew_estimate",
]
