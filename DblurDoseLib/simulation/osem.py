"""OSEM reconstruction of simulated SPECT projections with the camera model of :mod:`.projector`,
calibrated to Bq/mL."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from ..errors import DblurDoseError
from ..io.volume import Volume
from .camera import FWHM_TO_SIGMA
from .projector import SpectSystem, _to_array, pytomography

Progress = Callable[[float, str], object]  # progress(fraction in [0, 1], message), as elsewhere in the library
_DELTA = 1e-11


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
    pt = pytomography()
    torch = pt.torch
    device = pt.device
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

        sigma_vox = fwhm * FWHM_TO_SIGMA / np.asarray(system.grid.spacing[::-1], dtype=np.float64)
        bq_per_voxel = gaussian_filter(bq_per_voxel, sigma_vox, mode="nearest")
    out = system.grid.with_array((bq_per_voxel / system.grid.voxel_volume_ml).astype(np.float32))
    out.metadata = {"units": "Bq/mL", "calibration_cps_per_mbq": f"{system.sensitivity_cps_per_mbq:.10g}",
                    "osem": f"{iterations}x{subsets}", "postfilter_fwhm_mm": f"{fwhm:g}"}
    return out
