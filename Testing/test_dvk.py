"""The FFT DVK engine: equals direct convolution, scales with density, zero where it must be."""

import numpy as np
import pytest
from scipy.ndimage import convolve

from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.physics.dvk import dvk_dose_rate, fft_convolve, total_kernel


def _direct(volume, kernel):
    # scipy.ndimage.convolve flips the kernel like a true convolution; zero outside the field
    return convolve(volume.astype(np.float64), kernel.astype(np.float64), mode="constant", cval=0.0)


@pytest.mark.parametrize("max_bytes", [None, 100_000])  # whole grid, and forced z-slabs
def test_fft_equals_direct_convolution(max_bytes):
    rng = np.random.default_rng(0)
    volume = rng.random((17, 12, 14)).astype(np.float32)
    kernels = [rng.random((5, 3, 7)).astype(np.float32), rng.random((9, 9, 9)).astype(np.float32)]
    calls = []
    outs = fft_convolve(volume, kernels, "cpu", max_bytes=max_bytes, progress=calls.append)
    assert (len(calls) > 1) == (max_bytes is not None)  # the small budget really forces z-slabs
    for out, k in zip(outs, kernels):
        ref = _direct(volume, k)
        np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-5 * ref.max())


def test_asymmetric_kernel_is_not_flipped_wrongly():
    volume = np.zeros((9, 9, 9), np.float32)
    volume[4, 4, 4] = 1.0
    kernel = np.zeros((3, 3, 3), np.float32)
    kernel[1, 1, 2] = 1.0  # deposits one voxel towards +x
    (out,) = fft_convolve(volume, [kernel], "cpu")
    assert out[4, 4, 5] == pytest.approx(1.0, abs=1e-6)
    assert out[4, 4, 3] == pytest.approx(0.0, abs=1e-6)


def test_kernel_larger_than_grid():
    rng = np.random.default_rng(2)
    volume = rng.random((6, 7, 8)).astype(np.float32)
    kernel = rng.random((21, 21, 21)).astype(np.float32)
    (out,) = fft_convolve(volume, [kernel], "cpu")
    ref = _direct(volume, kernel)
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=2e-5 * ref.max())


def _toy_kernels():
    electron = np.zeros((3, 3, 3), np.float32)
    electron[1, 1, 1] = 1e-6
    photon = np.full((5, 5, 5), 1e-9, np.float32)
    return electron, photon


def test_zero_activity_gives_zero_dose():
    e, p = _toy_kernels()
    dose = dvk_dose_rate(np.zeros((8, 8, 8)), np.ones((8, 8, 8)), e, p, device="cpu")
    assert not dose.any()


def test_density_scaling_and_air():
    e, p = _toy_kernels()
    activity = np.full((8, 8, 8), 1000.0, np.float32)
    density = np.full((8, 8, 8), 1.04, np.float32)
    density[:, :, :2] = 0.52  # half density: twice the dose
    density[:, :, -1] = 0.05  # air: nothing
    ref = dvk_dose_rate(activity, np.full_like(density, 1.04), e, p, device="cpu")
    dose = dvk_dose_rate(activity, density, e, p, device="cpu")
    np.testing.assert_allclose(dose[:, :, :2], 2 * ref[:, :, :2], rtol=1e-5)
    assert not dose[:, :, -1].any()
    # only the electron part scaled: in between
    electron_only = dvk_dose_rate(activity, density, e, p, scaling="electron", device="cpu")
    assert np.all(electron_only[:, :, :2] < dose[:, :, :2])
    assert np.all(electron_only[:, :, :2] > ref[:, :, :2])


def test_units_one_decay_per_second_per_voxel():
    """1 Bq in every voxel with a delta kernel of K mGy/decay gives K * 3600 mGy/h."""
    e = np.zeros((1, 1, 1), np.float32)
    e[0, 0, 0] = 2e-6
    dose = dvk_dose_rate(np.ones((4, 4, 4)), np.full((4, 4, 4), 1.04), e, np.zeros((1, 1, 1), np.float32), device="cpu")
    np.testing.assert_allclose(dose, 2e-6 * 3600, rtol=1e-6)


def test_unknown_scaling_is_refused():
    e, p = _toy_kernels()
    with pytest.raises(DblurDoseError, match="density scaling"):
        dvk_dose_rate(np.ones((4, 4, 4)), np.ones((4, 4, 4)), e, p, scaling="lung")


def test_total_kernel_aligns_centres():
    e, p = _toy_kernels()
    total = total_kernel(e, p)
    assert total.shape == (5, 5, 5)
    assert total[2, 2, 2] == pytest.approx(1e-6 + 1e-9)
    assert total.sum() == pytest.approx(e.sum() + p.sum(), rel=1e-6)


@pytest.mark.gpu
def test_cuda_equals_cpu():
    rng = np.random.default_rng(3)
    volume = rng.random((30, 40, 40)).astype(np.float32)
    kernel = rng.random((9, 9, 9)).astype(np.float32)
    (cpu,) = fft_convolve(volume, [kernel], "cpu")
    (gpu,) = fft_convolve(volume, [kernel], "cuda")
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-4 * cpu.max())


@pytest.mark.parametrize("symmetric", [True, False])
def test_kernel_spectrum_equals_padded_rfftn(symmetric):
    """The kernel spectrum (cosine sums when symmetric) equals the rFFT of the kernel wrapped into the grid."""
    import torch

    from DblurDoseLib.physics.dvk import _kernel_spectrum

    rng = np.random.default_rng(3)
    k = rng.random((5, 7, 3)).astype(np.float32)
    if symmetric:
        k = k + k[::-1]
        k = k + k[:, ::-1]
        k = k + k[:, :, ::-1]
    shape = (9, 12, 10)
    padded = np.zeros(shape, np.float32)
    for (i, j, m), v in np.ndenumerate(k):
        padded[(i - 2) % 9, (j - 3) % 12, (m - 1) % 10] = v
    expected = np.fft.rfftn(padded)
    got = _kernel_spectrum(k, shape, torch.device("cpu")).numpy()
    assert got.dtype == (np.float32 if symmetric else np.complex64)
    np.testing.assert_allclose(got, expected.real if symmetric else expected, atol=2e-6 * np.abs(expected).max())
    if symmetric:
        assert np.abs(expected.imag).max() < 1e-5 * np.abs(expected).max()


def test_one_device_resolution_for_every_front_end():
    """devices.resolve_device is the one place a device is chosen: names in any case, 'gpu', torch.device."""
    import torch

    from DblurDoseLib.devices import resolve_device
    from DblurDoseLib.errors import DblurDoseError

    assert resolve_device("CPU") == torch.device("cpu") and resolve_device(" cpu ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device(None).type in ("cuda", "mps", "cpu")
    with pytest.raises(DblurDoseError, match="unknown device 'tpu'; choose one of auto, cpu, gpu, cuda, mps"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DblurDoseError, match="no CUDA GPU is available; choose the device auto or cpu"):
            resolve_device("cuda:0")


def test_full_float32_switches_tf32_off_on_cuda_only_and_restores_it():
    import torch

    from DblurDoseLib.devices import full_float32

    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cudnn.allow_tf32 = True
    with full_float32(torch.device("cpu")):
        assert torch.backends.cudnn.allow_tf32  # nothing changes for the CPU
    with pytest.raises(RuntimeError), full_float32(torch.device("cuda")):  # only flags: no GPU needed
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        raise RuntimeError("restored even on an error")
    assert torch.backends.cudnn.allow_tf32
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
     torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) = before
