"""Data consistency: a dose-rate estimate kept to what the SPECT measured, at the scales the camera resolves.

A SPECT measures the activity blurred by the camera and reconstruction, a blur close to a Gaussian of the
chain's Gaussian-equivalent FWHM, G (:mod:`DblurDoseLib.evaluation.resolution`; ``dblurdose resolution``).
Where the medium is near uniform the dose-voxel kernel and G commute, so the DVK of the SPECT is, in energy
deposited per volume (E = dose rate x density), G applied to the true dose: the DVK is exact at every scale
the camera resolves, and wrong only below them. A sharper estimate (the CNN's) should change only what lies
below them. One step of

    E_x = E_y + G * (E_dvk - G * E_y)

(a Landweber step on the blur, with its update itself low-passed by G; the residual taken in matter only,
as no dose is reported in air) replaces the estimate's content at the scales G passes by the data's and
keeps what lies below them: the true dose is a fixed point, a bias smooth on the scale of G (a warm organ
raised by 10%) is removed, and away from the skin the estimate's energy becomes the DVK's. Measured on v03
phantoms with Monte Carlo truth (model card, session 15): it takes away the networks' warm-tissue excess and
keeps their lesion recovery.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .deconvolution import check_fwhm, gaussian_blur
from .density import AIR_DENSITY_THRESHOLD


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
        Mass density on the same grid (g/cm3); voxels under
        :data:`~DblurDoseLib.physics.density.AIR_DENSITY_THRESHOLD` are air and keep ``estimate``.
    fwhm_mm : float
        The SPECT's Gaussian-equivalent FWHM (mm), 1-40 mm.
    spacing_xyz : sequence of float
        The grid's voxel spacing (mm), x, y, z.

    Returns
    -------
    np.ndarray
        Float32 dose rate, same unit: ``E_y + G * (E_dvk - G * E_y)`` in energy per volume (E = dose rate x
        density; the residual in matter only), divided by the density; never negative.
    """
    fwhm = check_fwhm(fwhm_mm, "the SPECT's resolution")
    body = np.asarray(density) >= AIR_DENSITY_THRESHOLD
    rho = np.where(body, density, 0.0).astype(np.float32)
    energy = np.asarray(estimate, dtype=np.float32) * rho
    update = np.asarray(dvk, dtype=np.float32) * rho
    update -= gaussian_blur(energy, fwhm, spacing_xyz, np.float32)
    update[~body] = 0.0  # the data say nothing in air (no dose is reported there): no residual either
    energy += gaussian_blur(update, fwhm, spacing_xyz, np.float32)
    del update
    np.maximum(energy, 0.0, out=energy)
    energy /= np.maximum(rho, np.float32(AIR_DENSITY_THRESHOLD))
    return np.where(body, energy, np.asarray(estimate, dtype=np.float32))
