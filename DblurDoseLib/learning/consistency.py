"""The consistency step in torch: differentiable, on a batch of training slabs, each at its own resolution.

:func:`~DblurDoseLib.physics.consistency.consistent_dose_rate` keeps a CNN's map to the SPECT at the scales
the camera resolves (``dose --spect-fwhm``). Training through it (``train --consistent``) takes the loss on
the map a user will get, so that the network spends itself on what the step keeps, the content finer than
the camera's resolution, and is not pulled by what the step replaces anyway. This module is the same
step, ``E_x = E_y + G * (E_dvk - G * E_y)`` in energy per volume in soft tissue only, as
torch operations: the Gaussian G separable, truncated and mirrored at the edges as
:func:`~DblurDoseLib.physics.deconvolution.gaussian_blur` (scipy's ``reflect``) does, so that on a whole
volume the two agree (tested). On a slab, the mirror stands in for the slices beyond it, and near the slab's
faces the step is not the one a user's whole volume gets: measured on v03's p04 (the truth as the estimate,
8.8 mm, hot patches of 8 x 64 x 64 voxels of 1.96 x 1.96 x 3 mm; ``../data/eval16/edge2.py``), the slab's
kept map differs from the volume's by 2.8% (RMS over the truth's RMS; 2.0% for slabs of 16), as much as half
of what the step itself changes; inside a margin of half a FWHM (:func:`interior`) by 0.9% (0.45%), and by
0.1% inside one FWHM in z on slabs of 16. The loss on the kept map is therefore taken inside :func:`interior`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..physics.consistency import soft_tissue
from ..physics.deconvolution import FWHM_TO_SIGMA
from ..physics.density import AIR_DENSITY_THRESHOLD

if TYPE_CHECKING:
    import torch

#: the Gaussian's truncation, in standard deviations (scipy.ndimage.gaussian_filter's default)
TRUNCATE = 4.0
#: the margin :func:`interior` leaves at a slab's faces, in FWHMs
MARGIN_FWHM = 0.5


def _mirror_index(size: int, radius: int, device) -> torch.Tensor:
    """Indices of an axis of ``size`` padded by ``radius`` on each side, mirrored with the edge repeated
    (``c b a | a b c | c b a``; scipy's ``reflect``), however many times the radius spans the axis."""
    import torch

    idx = torch.arange(-radius, size + radius, device=device) % (2 * size)
    return torch.where(idx >= size, 2 * size - 1 - idx, idx)


def gaussian_blur_slabs(volume: torch.Tensor, sigma_voxels: torch.Tensor) -> torch.Tensor:
    """Each slab of ``volume`` [n, 1, z, y, x] blurred by its own separable Gaussian.

    Parameters
    ----------
    volume : Tensor, [n, 1, z, y, x]
        Float32 values (any unit).
    sigma_voxels : Tensor, [n, 3]
        Each slab's standard deviation along z, y, x (voxels), above 0.

    Returns
    -------
    Tensor, [n, 1, z, y, x]
        Each 1D kernel truncated at :data:`TRUNCATE` standard deviations of its own and normalised, the
        edges mirrored: per slab, what scipy's ``gaussian_filter(mode="reflect")`` gives.
    """
    import torch
    import torch.nn.functional as F

    n = volume.shape[0]
    out = volume.reshape(1, n, *volume.shape[2:])  # one channel per slab: a grouped convolution
    for axis in range(3):
        sigma = sigma_voxels[:, axis].to(out)
        radii = (TRUNCATE * sigma + 0.5).floor()
        radius = int(radii.max())
        if radius == 0:
            continue
        offsets = torch.arange(-radius, radius + 1, device=out.device, dtype=out.dtype)
        weights = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2) * (offsets.abs()[None] <= radii[:, None])
        weights = weights / weights.sum(1, keepdim=True)
        dim = 2 + axis
        out = out.index_select(dim, _mirror_index(out.shape[dim], radius, out.device))
        shape = [n, 1, 1, 1, 1]
        shape[dim] = 2 * radius + 1
        out = F.conv3d(out, weights.reshape(shape), groups=n)
    return out.reshape(volume.shape)


def consistent_slabs(estimate: torch.Tensor, dvk: torch.Tensor, density: torch.Tensor, fwhm_mm: torch.Tensor,
                     spacing_xyz: Sequence[float]) -> torch.Tensor:
    """:func:`~DblurDoseLib.physics.consistency.consistent_dose_rate` of each slab, differentiable.

    Parameters
    ----------
    estimate : Tensor, [n, 1, z, y, x]
        The network's dose rate (any unit shared with ``dvk``; e.g. the scaled dose rate of training).
    dvk : Tensor, [n, 1, z, y, x]
        The DVK dose rate of the measured SPECT (not of a deconvolved one) on the same slabs.
    density : Tensor, [n, 1, z, y, x]
        Mass density (g/cm3); outside soft tissue (air, lung, bone) ``estimate`` is kept.
    fwhm_mm : Tensor, [n]
        Each slab's SPECT resolution, its chain's Gaussian-equivalent FWHM (mm).
    spacing_xyz : sequence of float
        Voxel spacing (mm), x, y, z.

    Returns
    -------
    Tensor, [n, 1, z, y, x]
        Float32, ``E_y + G * (E_dvk - G * E_y)`` in energy per volume (the residual and the update in soft
        tissue only) over the density, never negative; ``estimate`` outside soft tissue.
    """
    import torch

    with torch.autocast(estimate.device.type, enabled=False):  # the blur in float32 whatever the forward pass
        estimate = estimate.float()
        spacing_zyx = torch.tensor([float(s) for s in spacing_xyz[::-1]], device=estimate.device)
        sigma = fwhm_mm.to(estimate)[:, None] * FWHM_TO_SIGMA / spacing_zyx[None]
        body = density >= AIR_DENSITY_THRESHOLD
        tissue = soft_tissue(density)
        rho = torch.where(body, density.float(), torch.zeros_like(estimate))
        energy = estimate * rho
        residual = torch.where(tissue, dvk.float() * rho - gaussian_blur_slabs(energy, sigma), 0.0)
        energy = (energy + gaussian_blur_slabs(residual, sigma)).clamp_min(0.0)  # kept in soft tissue only, below
        return torch.where(tissue, energy / rho.clamp_min(AIR_DENSITY_THRESHOLD), estimate)


def interior(shape_zyx: Sequence[int], fwhm_mm: float, spacing_xyz: Sequence[float]) -> tuple[slice, slice, slice]:
    """The part of a slab of ``shape_zyx`` voxels whose kept map is close to the whole volume's: a margin of
    :data:`MARGIN_FWHM` x ``fwhm_mm`` (the batch's largest, mm) left at each face, rounded up to voxels of
    ``spacing_xyz`` (mm), and at most what leaves two voxels along each axis (or one, where there are fewer)."""
    out = []
    for n, step in zip(shape_zyx, spacing_xyz[::-1]):
        margin = min(math.ceil(MARGIN_FWHM * float(fwhm_mm) / float(step)), max(0, (int(n) - 2) // 2))
        out.append(slice(margin, int(n) - margin))
    return tuple(out)
