"""Dose-voxel-kernel (DVK) convolution with density scaling, in torch (CPU or CUDA), float32.

dose_rate = (A * K) x 1.04 / rho   (paper), with A the activity per voxel (Bq), K the
soft-tissue kernel (mGy per decay), rho the local density (g/cm3); zero where rho < 0.1.
Optionally only the electron part is density-scaled (photons are not: their local energy
deposition does not grow in low-density tissue), which matched Monte Carlo better in lung.

The convolution is linear ("same"-size output, zero outside the field), done by FFT on a grid
padded by half a kernel per axis (enough to avoid wrap-around), in z-slabs when the whole grid
would not fit the memory budget (overlap-add).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..devices import memory_budget_bytes, resolve_device
from ..errors import DblurDoseError
from .density import AIR_DENSITY_THRESHOLD

if TYPE_CHECKING:
    import torch

SCALING_CHOICES = ("all", "electron", "none")
SECONDS_PER_HOUR = 3600.0


def _fast_len(n: int) -> int:
    """Smallest 5-smooth length >= n (2^a 3^b 5^c: fast for pocketfft, MKL and cuFFT alike)."""
    m = max(int(n), 1)
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def padded_shape(shape: Sequence[int], kernel_shapes: Sequence[Sequence[int]]) -> tuple[int, int, int]:
    """The FFT grid (z, y, x voxels) of a whole-volume convolution of ``shape`` with these kernels.

    Each axis is padded by the largest kernel's half-width (kernels cropped to the grid first, as
    :func:`fft_convolve` does) and rounded up to a 5-smooth length.

    Parameters
    ----------
    shape : sequence of int
        (z, y, x) voxels of the volume.
    kernel_shapes : sequence of sequence of int
        (z, y, x) voxels of each kernel (odd).

    Returns
    -------
    tuple of int
        (z, y, x) voxels of the padded grid.
    """
    halves = [max(min(k[a] // 2, shape[a] - 1) for k in kernel_shapes) for a in range(3)]
    return tuple(_fast_len(n + h) for n, h in zip(shape, halves))


def fft_bytes_per_padded_voxel(n_kernels: int) -> float:
    """Working memory of :func:`fft_convolve` per voxel of its padded grid (bytes).

    Input grid, its half spectrum (complex), one kernel spectrum and one output per kernel:
    about 4 bytes per padded voxel each, with the real-to-complex transform's temporaries.

    Parameters
    ----------
    n_kernels : int
        Kernels convolved with one volume.

    Returns
    -------
    float
        Bytes per padded voxel.
    """
    return 4.0 * (2 + 2.2 * n_kernels + 1)


def _crop_centred(kernel: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """The centred part of ``kernel`` with half-width at most grid - 1 per axis."""
    cuts = [max(k // 2 - (n - 1), 0) for k, n in zip(kernel.shape, grid)]
    return kernel[tuple(slice(c, k - c) for c, k in zip(cuts, kernel.shape))]


def _kernel_spectrum(kernel, shape: tuple[int, int, int], device):
    """rFFT of ``kernel`` placed with its centre at index 0 of a zero grid of ``shape`` (circular).

    A kernel symmetric in every axis (every DVK) has a real spectrum, a product of cosine sums
    over one octant: three small matrix products (BLAS/cuBLAS) instead of a transform of the
    whole padded grid, returned as a real tensor. Any other kernel: ``rfftn`` of the padded grid.
    """
    import torch

    k = np.ascontiguousarray(kernel, dtype=np.float32)
    half = [n // 2 for n in k.shape]
    fits = all(2 * h + 1 <= length for h, length in zip(half, shape))  # no offset wraps onto another
    if fits and all(np.array_equal(k, np.flip(k, axis)) for axis in range(3)):
        octant = torch.as_tensor(np.ascontiguousarray(k[half[0]:, half[1]:, half[2]:]), device=device)
        cos = []  # [offset j, frequency u]: cos(2 pi j u / L), offsets +-j counted together
        for axis, length in enumerate(shape):
            j = torch.arange(half[axis] + 1, dtype=torch.float64, device=device)
            u = torch.arange(length // 2 + 1 if axis == 2 else length, dtype=torch.float64, device=device)
            weight = torch.where(j == 0, 1.0, 2.0)[:, None]
            cos.append((weight * torch.cos(2 * torch.pi * j[:, None] * u[None, :] / length)).float())
        spec = octant @ cos[2]  # [jz, jy, ux]
        spec = (spec.transpose(1, 2) @ cos[1]).transpose(1, 2)  # [jz, uy, ux]
        return (cos[0].T @ spec.reshape(spec.shape[0], -1)).reshape(shape[0], shape[1], -1)
    kt = torch.as_tensor(k, device=device)
    # kernel offset j in [-h, h] goes to index j mod L (wrapped): no full-grid roll needed
    index = [torch.remainder(torch.arange(n, device=device) - n // 2, length) for n, length in zip(k.shape, shape)]
    padded = torch.zeros(shape, dtype=torch.float32, device=device)
    padded[index[0][:, None, None], index[1][None, :, None], index[2][None, None, :]] = kt
    return torch.fft.rfftn(padded)


def _times(spectrum, k_spec, in_place: bool):
    """``spectrum * k_spec``; a real ``k_spec`` multiplies the real and imaginary parts alike."""
    import torch

    if k_spec.is_complex():
        return spectrum.mul_(k_spec) if in_place else spectrum * k_spec
    pairs = torch.view_as_real(spectrum)
    if in_place:
        pairs.mul_(k_spec[..., None])
        return spectrum
    return torch.view_as_complex(pairs * k_spec[..., None])


def fft_convolve(
    volume: np.ndarray,
    kernels: Sequence[np.ndarray],
    device: torch.device | str = "auto",
    max_bytes: float | None = None,
    progress: Callable[[float], object] | None = None,
) -> list[np.ndarray]:
    """Same-size linear convolution of ``volume`` [z,y,x] with each centred odd-sized kernel.

    The volume's FFT is shared by all kernels; the grid is padded by half a kernel per axis (no
    wrap-around) and convolved in z-slabs (overlap-add) when it would not fit ``max_bytes``.

    Parameters
    ----------
    volume : np.ndarray
        [z, y, x] values (e.g. activity per voxel, Bq).
    kernels : sequence of np.ndarray
        Centred [z, y, x] kernels of odd sizes (e.g. mGy per decay).
    device : torch.device or str
        Where to compute (``"auto"``, ``"cpu"``, ``"cuda"``, ...).
    max_bytes : float, optional
        Working-memory budget (bytes); None: :func:`~DblurDoseLib.devices.memory_budget_bytes`.
    progress : callable, optional
        ``progress(fraction)`` after each slab.

    Returns
    -------
    list of np.ndarray
        Float32 [z, y, x] per kernel, in the product of the inputs' units (possibly views into a
        larger buffer: copy before keeping them long).

    Raises
    ------
    ValueError
        For a kernel with an even size.
    """
    import torch

    dev = resolve_device(device)
    vol = np.asarray(volume, dtype=np.float32)
    for k in kernels:
        if any(s % 2 == 0 for s in np.shape(k)):
            raise ValueError(f"kernels must have odd sizes, got {np.shape(k)}")
    nz, ny, nx = vol.shape
    # offsets of a voxel or more beyond the grid can never contribute: crop such kernels
    kernels = [_crop_centred(np.asarray(k, dtype=np.float32), (nz, ny, nx)) for k in kernels]
    hz = max(k.shape[0] for k in kernels) // 2
    _, ly, lx = padded_shape(vol.shape, [k.shape for k in kernels])
    budget = memory_budget_bytes(dev, max_bytes)
    per_voxel = fft_bytes_per_padded_voxel(len(kernels))
    max_lz = int(budget // (per_voxel * ly * lx))
    if max_lz < 2 * hz + 1 and max_lz < nz + hz:
        raise DblurDoseError(
            f"not enough memory for the DVK convolution ({budget / 1e9:.1f} GB budget for a "
            f"{nz}x{ny}x{nx} grid); free memory, run on the CPU, or crop the CT to the SPECT field",
            settings=("device",),
        )
    if nz + hz <= max_lz:
        slabs = [(0, nz)]
    else:
        depth = max(max_lz - 2 * hz, 1)
        while _fast_len(depth + 2 * hz) > max_lz and depth > 1:
            depth -= 1
        slabs = [(z0, min(z0 + depth, nz)) for z0 in range(0, nz, depth)]

    # one slab: each output is a view of its transform (no copy); several: overlap-added here
    outputs = [np.zeros(vol.shape, dtype=np.float32) for _ in kernels] if len(slabs) > 1 else [None] * len(kernels)
    spectra: dict[int, list] = {}
    with torch.no_grad():
        for count, (z0, z1) in enumerate(slabs):
            o0, o1 = max(z0 - hz, 0), min(z1 + hz, nz)
            p = z0 - o0
            lz = _fast_len(max(p + (z1 - z0), (o1 - o0) - p) + hz)
            if lz not in spectra:
                spectra = {lz: [_kernel_spectrum(k, (lz, ly, lx), dev) for k in kernels]}
            grid = torch.zeros((lz, ly, lx), dtype=torch.float32, device=dev)
            grid[p : p + (z1 - z0), :ny, :nx] = torch.as_tensor(vol[z0:z1], device=dev)
            spectrum = torch.fft.rfftn(grid)
            del grid
            for i, k_spec in enumerate(spectra[lz]):
                product = _times(spectrum, k_spec, in_place=i == len(outputs) - 1)
                result = torch.fft.irfftn(product, s=(lz, ly, lx))[: o1 - o0, :ny, :nx]
                del product
                if len(slabs) == 1:
                    outputs[i] = result.cpu().numpy()
                else:
                    outputs[i][o0:o1] += result.cpu().numpy()
                del result
            del spectrum
            if progress is not None:
                progress((count + 1) / len(slabs))
    return outputs


def dvk_dose_rate(
    activity_bq: np.ndarray,
    density: np.ndarray,
    electron_kernel: np.ndarray,
    photon_kernel: np.ndarray,
    medium_density: float = 1.04,
    scaling: str = "all",
    device: torch.device | str = "auto",
    max_bytes: float | None = None,
    progress: Callable[[float], object] | None = None,
) -> np.ndarray:
    """DVK dose rate (mGy/h) from activity per voxel (Bq) and density (g/cm3) on one grid.

    Parameters
    ----------
    activity_bq : np.ndarray
        Activity per voxel (Bq), [z, y, x].
    density : np.ndarray
        Mass density (g/cm3) on the same grid; no dose is reported below
        :data:`~DblurDoseLib.physics.density.AIR_DENSITY_THRESHOLD`.
    electron_kernel, photon_kernel : np.ndarray
        Kernel parts, mGy per decay in a medium of ``medium_density`` (odd sizes, same spacing as
        the grid).
    medium_density : float
        Density of the kernels' medium (g/cm3).
    scaling : str
        What is multiplied by ``medium_density / rho``: 'all' (paper), 'electron' only, or 'none'.
    device : torch.device or str
        Where to compute (``"auto"``, ``"cpu"``, ``"cuda"``, ...).
    max_bytes : float, optional
        Working-memory budget of the FFT (bytes).
    progress : callable, optional
        ``progress(fraction)`` along the convolution.

    Returns
    -------
    np.ndarray
        Float32 dose rate (mGy/h), >= 0, zero in air.

    Raises
    ------
    DblurDoseError
        For an unknown ``scaling``.
    ValueError
        When the activity and density grids differ.
    """
    if scaling not in SCALING_CHOICES:
        raise DblurDoseError(f"unknown density scaling {scaling!r}; choose one of {', '.join(SCALING_CHOICES)}")
    activity_bq = np.asarray(activity_bq, dtype=np.float32)
    density = np.asarray(density, dtype=np.float32)
    if activity_bq.shape != density.shape:
        raise ValueError(f"activity {activity_bq.shape} and density {density.shape} grids differ")
    import torch  # the scaling runs in torch too: multi-threaded, in place

    rho = torch.from_numpy(density if density.flags.writeable else density.copy())
    air = rho < AIR_DENSITY_THRESHOLD
    per_hour = SECONDS_PER_HOUR
    if scaling == "electron":
        electron, photon = fft_convolve(activity_bq, [electron_kernel, photon_kernel], device, max_bytes, progress)
        dose = torch.div(torch.from_numpy(electron), rho).mul_(medium_density * per_hour)
        dose.add_(torch.from_numpy(photon), alpha=per_hour)
    else:
        (conv,) = fft_convolve(activity_bq, [total_kernel(electron_kernel, photon_kernel)], device, max_bytes, progress)
        conv = torch.from_numpy(conv)
        # seconds per hour x medium density / local density (a new, contiguous tensor)
        dose = torch.div(conv, rho).mul_(medium_density * per_hour) if scaling == "all" else conv * per_hour
    dose.masked_fill_(air, 0.0)  # no dose reported in air (also clears 0/0 there)
    dose.clamp_min_(0.0)  # FFT round-off far from any activity
    return dose.numpy()


def total_kernel(electron: np.ndarray, photon: np.ndarray) -> np.ndarray:
    """Electron and photon kernels added, centres aligned, on the larger of the two supports.

    Parameters
    ----------
    electron, photon : np.ndarray
        Centred [z, y, x] kernels of odd sizes (mGy per decay).

    Returns
    -------
    np.ndarray
        Float32 kernel (mGy per decay), each axis the larger of the two.
    """
    shape = tuple(max(a, b) for a, b in zip(np.shape(electron), np.shape(photon)))
    total = np.zeros(shape, dtype=np.float32)
    for k in (electron, photon):
        offs = [(s - t) // 2 for s, t in zip(shape, np.shape(k))]
        total[offs[0] : offs[0] + k.shape[0], offs[1] : offs[1] + k.shape[1], offs[2] : offs[2] + k.shape[2]] += k
    return total
