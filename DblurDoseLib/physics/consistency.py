"""Data consistency: a dose-rate estimate kept to what the SPECT measured, at the scales the camera resolves.

A SPECT measures the activity blurred by the camera and reconstruction, a blur close to a Gaussian of the
chain's Gaussian-equivalent FWHM, G (:mod:`DblurDoseLib.evaluation.resolution`; ``dblurdose resolution``).
Where the medium is near uniform the dose-voxel kernel and G commute, so the DVK of the SPECT is, in energy
deposited per volume (E = dose rate x density), G applied to the true dose: the DVK is exact at every scale
the camera resolves, and wrong only below them. A sharper estimate (the CNN's) should change only what lies
below them. One step of

    E_x = E_y + G * (E_dvk - G * E_y)

(a Landweber step on the blur, with its update itself low-passed by G) replaces the estimate's content at
the scales G passes by the data's and keeps what lies below them: the true dose is a fixed point, a bias
smooth on the scale of G (a warm organ raised by 10%) is removed, and in soft tissue the estimate's energy
becomes the DVK's. Measured on v03 phantoms with Monte Carlo truth (model card, session 15): it takes away
the networks' warm-tissue excess and keeps their lesion recovery.

The residual is taken, and the update applied, in soft tissue only (:data:`~.density.LUNG_DENSITY_MAX` to
:data:`~.density.BONE_DENSITY_MIN`, the Monte Carlo's adipose and soft-tissue media); air, lung and bone keep
the estimate. No dose is reported in air; in lung and bone the DVK's energy is not the blurred truth's
(measured on v03's p10, the DVK's energy over G x the truth's: lumbar vertebrae 0.79, sacrum 0.82, ribs
0.86, lung 1.24; muscle, fat, liver, kidney 0.95-1.0; ``../data/eval16/bone_energy.py``), and a step taken
there pulled a network's lumbar error from 8% back to the DVK's 21% (p10, p11; model card, session 16).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .deconvolution import check_fwhm, gaussian_blur
from .density import AIR_DENSITY_THRESHOLD, BONE_DENSITY_MIN, LUNG_DENSITY_MAX


def consistent_dose_rate(estimate: np.ndarray, dvk: np.ndarray, density: np.ndarray, fwhm_mm: float,
                         spacing_xyz: Sequence[float]) -> np.ndarray:
    """``estimate`` made consistent with the DVK of the SPECT at the scales the camera resolves.

    Parameters
    ----------
    estimate : np.ndarray
        The dose-rate estimate [z, y, x] (mGy/h, or any unit shared with ``dvk``), e.g. the CNN's map.
    dvk : np.ndarray
        The DVK dose rate of the measured SPECT on the same grid and in the same unit.
    density : np.ndarray
        Mass density on the same grid (g/cm3); outside soft tissue (:func:`soft_tissue`) ``estimate`` is kept.
    fwhm_mm : float
        The SPECT's Gaussian-equivalent FWHM (mm), 1-40 mm.
    spacing_xyz : sequence of float
        The grid's voxel spacing (mm), x, y, z.

    Returns
    -------
    np.ndarray
        Float32 dose rate, same unit: ``E_y + G * (E_dvk - G * E_y)`` in energy per volume (E = dose rate x
        density; the residual and the update in soft tissue only), divided by the density; never negative.
    """
    fwhm = check_fwhm(fwhm_mm, "the SPECT's resolution")
    tissue = soft_tissue(np.asarray(density))
    body = np.asarray(density) >= AIR_DENSITY_THRESHOLD
    rho = np.where(body, density, 0.0).astype(np.float32)
    energy = np.asarray(estimate, dtype=np.float32) * rho
    update = np.asarray(dvk, dtype=np.float32) * rho
    update -= gaussian_blur(energy, fwhm, spacing_xyz, np.float32)
    update[~tissue] = 0.0  # the DVK's energy is the blurred truth's in soft tissue only (module docstring)
    energy += gaussian_blur(update, fwhm, spacing_xyz, np.float32)  # outside soft tissue replaced by the estimate below
    del update
    np.maximum(energy, 0.0, out=energy)
    energy /= np.maximum(rho, np.float32(AIR_DENSITY_THRESHOLD))
    return np.where(tissue, energy, np.asarray(estimate, dtype=np.float32))


def soft_tissue(density):
    """Where the consistency step acts: densities (g/cm3; a numpy array or a torch tensor) from
    :data:`~.density.LUNG_DENSITY_MAX` to :data:`~.density.BONE_DENSITY_MIN` (adipose and soft tissue), as a
    boolean array of the same kind."""
    return (density >= LUNG_DENSITY_MAX) & (density <= BONE_DENSITY_MIN)
