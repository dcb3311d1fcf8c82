"""Partial-volume correction by deconvolution: Richardson-Lucy with a Gaussian of the SPECT's resolution.

A SPECT blurs: a small hot lesion's activity spreads into its surroundings and its dose rate, computed
from the image, falls short. Richardson-Lucy deconvolution (maximum likelihood for Poisson data under a
known, shift-invariant blur) with a Gaussian point-spread function of the chain's Gaussian-equivalent
FWHM (measured on the IEC spheres: :mod:`DblurDoseLib.evaluation.resolution`) puts back much of what the
blur took, at the price of noise that grows with the iterations. It serves two purposes: the evaluation's
reference method ``dvk_rlN`` (``evaluate --deconvolve N``), and the input of a
DblurDoseNet whose config deconvolves (``ModelConfig.deconvolution_iterations``): the network then
removes the noise and the residual error of a sharpened image instead of deblurring a blurred one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import DblurDoseError
from ..io.volume import Volume

#: FWHM to standard deviation of a Gaussian: sigma = FWHM x FWHM_TO_SIGMA
FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))

#: the resolutions (Gaussian-equivalent FWHM, mm) the library accepts (deconvolution, consistency): those the
#: sphere measure resolves
FWHM_RANGE_MM = (1.0, 40.0)

#: smallest blurred estimate divided by (Bq/mL), so that empty voxels divide safely
_TINY = 1e-12


def gaussian_blur(array: np.ndarray, fwhm_mm: float, spacing_xyz: Sequence[float],
                  dtype: type = np.float64) -> np.ndarray:
    """The ideal Gaussian imaging system: ``array`` [z, y, x] blurred by an isotropic Gaussian of FWHM
    ``fwhm_mm`` (mm) on a grid of spacing ``spacing_xyz`` (mm), as ``dtype`` (float64, or float32 where
    memory counts), reflected at the grid's edges (so its sum is kept)."""
    from scipy.ndimage import gaussian_filter

    sigma = [fwhm_mm * FWHM_TO_SIGMA / s for s in spacing_xyz[::-1]]
    return gaussian_filter(np.asarray(array, dtype=dtype), sigma, mode="reflect")


#: the fix :func:`check_fwhm` names by default: where a user's SPECT resolution comes from
MEASURE_FWHM = "measure it on the IEC sphere phantom (recovery coefficients) for this camera and reconstruction"


def check_fwhm(fwhm_mm: float | None, what: str = "the SPECT's resolution", fix: str = MEASURE_FWHM,
               settings: tuple[str, ...] = ()) -> float:
    """``fwhm_mm`` as a float if it is a Gaussian-equivalent FWHM the library accepts (:data:`FWHM_RANGE_MM`,
    mm); else a one-line :class:`DblurDoseError` naming the range and ``fix`` (and ``settings``, the user's
    settings that gave it)."""
    low, high = FWHM_RANGE_MM
    try:
        value = float(fwhm_mm)
    except (TypeError, ValueError):
        value = float("nan")
    if not (math.isfinite(value) and low <= value <= high):
        raise DblurDoseError(f"{what} ({fwhm_mm} mm) lies outside {low:g}-{high:g} mm, the Gaussian-equivalent "
                             f"FWHMs the sphere measure resolves; {fix}", settings=settings)
    return value


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
    if any(isinstance(n, bool) or int(n) != n or n < 1 for n in iterations):
        raise DblurDoseError(f"Richardson-Lucy iterations must be whole numbers of at least 1, got {list(iterations)}")


def deconvolved_on_grid(spect: Volume, target: Volume, fwhm_mm: float, iterations: int) -> Volume:
    """The SPECT deconvolved on its own grid (:func:`richardson_lucy`), then moved onto ``target``'s grid
    with its activity kept: the one way the library deconvolves a SPECT for a dose calculation.

    Parameters
    ----------
    spect : Volume
        Activity concentration (Bq/mL), non-negative, on its own grid.
    target : Volume
        The grid of the result (the CT's); its values are not used.
    fwhm_mm : float
        The SPECT's Gaussian-equivalent FWHM, mm (checked: :func:`check_fwhm`).
    iterations : int
        Richardson-Lucy iterations.

    Returns
    -------
    Volume
        Activity concentration (Bq/mL, float32) on ``target``'s grid.
    """
    from ..geometry.resample import resample_activity

    sharp = richardson_lucy(spect, check_fwhm(fwhm_mm), iterations)
    return resample_activity(sharp, target)


__all__ = ["FWHM_RANGE_MM", "FWHM_TO_SIGMA", "MEASURE_FWHM", "check_fwhm", "check_iterations", "deconvolved_on_grid", "gaussian_blur", "richardson_lucy"]
