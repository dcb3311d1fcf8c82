"""A reference for the CNN: the DVK of a SPECT deconvolved with a Gaussian that knows the chain's blur.

Richardson-Lucy deconvolution (maximum-likelihood for Poisson data under a known, shift-invariant blur)
with a Gaussian point-spread function of the chain's Gaussian-equivalent FWHM
(:mod:`.resolution`), then the DVK. It is the classic partial-volume correction by deconvolution,
given what a user rarely has, the chain's resolution, and it says how much of what the DVK loses in small
hot objects is still in the SPECT: a network that recovers less leaves information unused. It is an
evaluation reference, not a dose method of the tool: its noise grows with the iterations, it ignores
the collimator's depth dependence, and it needs the resolution as an input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import DblurDoseError
from ..io.volume import Volume
from .resolution import gaussian_blur

#: smallest blurred estimate divided by (Bq/mL), so that empty voxels divide safely
_TINY = 1e-12


def richardson_lucy(image: Volume, fwhm_mm: float, iterations: int) -> Volume:
    """Richardson-Lucy deconvolution of an activity image with an isotropic Gaussian point-spread function.

    Parameters
    ----------
    image : Volume
        Activity concentration (Bq/mL), non-negative; its grid is kept.
    fwhm_mm : float
        FWHM of the Gaussian point-spread function, mm (the chain's Gaussian-equivalent FWHM).
    iterations : int
        Richardson-Lucy iterations (0 returns the image); more sharpen more and raise the noise.

    Returns
    -------
    Volume
        The deconvolved activity concentration (Bq/mL, float32) on the image's grid. Its total activity is
        the image's: the Gaussian is normalised and reflected at the grid's edges, and each update keeps the
        total.
    """
    if not (math.isfinite(fwhm_mm) and fwhm_mm > 0) or int(iterations) != iterations or iterations < 0:
        raise DblurDoseError(f"Richardson-Lucy needs a positive FWHM and a whole number of iterations >= 0, got "
                             f"{fwhm_mm} mm and {iterations}")
    data = np.asarray(image.array, dtype=np.float64)
    if not np.all(np.isfinite(data)) or np.any(data < 0):
        raise DblurDoseError("Richardson-Lucy needs a finite, non-negative activity image; clamp it at 0 first")
    estimate = data.copy()
    for _ in range(int(iterations)):
        blurred = gaussian_blur(estimate, fwhm_mm, image.spacing)
        estimate *= gaussian_blur(np.where(blurred > _TINY, data / np.maximum(blurred, _TINY), 0.0), fwhm_mm,
                                  image.spacing)
    return image.with_array(estimate.astype(np.float32))


def check_iterations(iterations: Sequence[int]) -> None:
    """Refuse reference iteration counts that are not whole numbers of at least 1 (one line, DblurDoseError)."""
    if any(int(n) != n or n < 1 for n in iterations):
        raise DblurDoseError(f"Richardson-Lucy iterations must be whole numbers of at least 1, got {list(iterations)}")


def deconvolved_dvk(spect: Volume, hu: Volume, fwhm_mm: float, iterations: int, device: str = "cpu") -> np.ndarray:
    """The reference method ``dvk_rlN``: the DVK dose rate (mGy/h, on ``hu``'s grid) of ``spect`` (Bq/mL, any
    grid) after ``iterations`` Richardson-Lucy iterations with a Gaussian of ``fwhm_mm`` (the chain's
    Gaussian-equivalent FWHM), moved onto the CT grid with its activity kept."""
    from ..geometry.resample import resample_activity
    from .spheres import dvk_map

    if not math.isfinite(fwhm_mm):
        raise DblurDoseError("this SPECT chain's Gaussian-equivalent FWHM lies outside 1-40 mm, so the deconvolution "
                             "reference has no Gaussian for it; evaluate this chain without the reference")
    return dvk_map(resample_activity(richardson_lucy(spect, fwhm_mm, int(iterations)), hu), hu, device)


__all__ = ["check_iterations", "deconvolved_dvk", "richardson_lucy"]
