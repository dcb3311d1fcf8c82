"""The camera side of the simulated SPECT: named camera models (:data:`CAMERAS`), the acquisition and
reconstruction settings (:class:`SpectAcquisition`), and the physics tables they use (NIST attenuation
and SIMIND collimator tables shipped with pytomography, read without importing it): attenuation
coefficients, collimator resolution and sensitivity.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DblurDoseError
from ..physics.deconvolution import FWHM_TO_SIGMA

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
        collimator_geometry_cm(self.collimator)  # raises for an unknown collimator

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


def collimator_geometry_cm(code: str) -> tuple[float, float, float]:
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
    diameter, _septa, length = collimator_geometry_cm(acq.collimator)
    mu_lead = attenuation_coefficients(acq.photopeak_kev)["lead"] * 11.35
    l_eff = length - 2.0 / mu_lead
    slope = diameter / l_eff * FWHM_TO_SIGMA
    intercept = diameter * FWHM_TO_SIGMA
    intrinsic = acq.intrinsic_fwhm_mm / 10.0 * FWHM_TO_SIGMA
    return slope, intercept, intrinsic


def system_resolution_fwhm_mm(acq: SpectAcquisition, distance_mm: float) -> float:
    """Planar system resolution (FWHM, mm) at ``distance_mm`` from the collimator face."""
    a, b, c = collimator_resolution_params(acq)
    return math.sqrt((a * distance_mm / 10.0 + b) ** 2 + c**2) / FWHM_TO_SIGMA * 10.0


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
    diameter, septa, length = collimator_geometry_cm(acq.collimator)
    mu_lead = attenuation_coefficients(acq.photopeak_kev)["lead"] * 11.35
    l_eff = length - 2.0 / mu_lead
    geometric = _HEX_HOLE_K**2 * (diameter / l_eff) ** 2 * diameter**2 / (diameter + septa) ** 2
    mu_nai = _NAI_MU_RHO_208KEV * (208.0 / acq.photopeak_kev) ** 1.5 * _NAI_DENSITY
    absorbed = 1.0 - math.exp(-mu_nai * acq.crystal_thickness_cm)
    return geometric * _gamma_yield(acq.photopeak_kev) * absorbed * 1e6


#: Acquisitions and reconstructions of training phantoms with ``mix`` (so that the network sees what users
#: bring, not one camera and one reconstruction). Per phantom: the camera (a key of CAMERAS), the views
#: and the voxel size (mm, uniform in the range); per realisation: OSEM and the post-filter (FWHM, mm).
#: OSEM subsets are drawn among ``subsets`` that divide the views, iterations among ``iterations``, keeping
#: iterations x subsets (subset updates) within ``osem_updates`` (4x8 to 16x8). Test phantoms keep the
#: preset's own setting (DataSettings: its camera, views, voxel size and OSEM, no filter).
TRAINING_MIX = {
    "camera": ("siemens-intevo-me", "ge-discovery-670-megp"),
    "n_views": (60, 64, 90, 96, 120, 128),
    "voxel_mm": (4.4, 4.8),  # range: GE 4.418, Philips 4.664, Siemens 4.7952 (128 matrix, zoom 1), paper 4.8
    "iterations": (4, 6, 8, 10, 12, 16),
    "subsets": (4, 6, 8, 10),
    "osem_updates": (32, 128),  # iterations x subsets, inclusive
    "postfilter_fwhm_mm": (0.0, 0.0, 0.0, 4.0, 6.0, 8.0),  # no filter half the time, else 4-8 mm
}
#: A reconstruction of the test phantoms outside that mix: the held-out vendor (Philips MEGP, a collimator
#: and crystal never in training), voxel size below the mix (Siemens 128 matrix at zoom 1.23), OSEM 2x16
#: (iterations and subsets outside the mix, 32 updates: the edge), a heavier post-filter; 128 views (the edge).
OUT_OF_MIX = {"camera": "philips-brightview-megp", "n_views": 128, "voxel_mm": 3.9, "iterations": 2, "subsets": 16,
              "postfilter_fwhm_mm": 10.0}
