"""DblurDoseNet inference over whole volumes: the CNN dose rate (mGy/h) on the CT grid.

:func:`cnn_dose_rate` is the entry point used by :mod:`DblurDoseLib.dose`:

1. The inputs (activity Bq/mL, density g/cm3, DVK mGy/h, all on the CT grid) move to the
   model's working grid, the voxel size it was trained on (activity conserved:
   :func:`~DblurDoseLib.geometry.resample.resample_activity`; density and DVK trilinear). When the CT
   voxel size is within 2% of the working one on every axis the CT grid is used as it is.
2. Scaling (:class:`~DblurDoseLib.learning.network.ModelConfig`): with ``A`` the total activity in the
   field (Bq), SPECT x ``spect_scale_ml / A``, DVK x ``dose_scale / A``; the output is scaled
   back by ``A / dose_scale``. So the result is proportional to the activity (10x the SPECT
   gives exactly 10x the dose rate) and an all-zero SPECT gives an all-zero map.
3. The 11-slice window slides along z with the first and last slices replicated at the ends
   (also for volumes of fewer than 11 slices). The depth extractor's work is shared between
   overlapping packs (:meth:`~DblurDoseLib.learning.network.DblurDoseNet.forward_slab`), on an eval
   copy with batch norms folded into the convolutions, in z-chunks sized to the memory
   budget; the U-Net runs batched over the slices of a chunk. The result equals the naive
   per-pack evaluation (``naive=True``) to float rounding.
4. Test-time step (paper): clamp at 0 and zero where the centre-slice density < 0.1 g/cm3; and
   a safeguard of ours: in tissue the map is at least ``TISSUE_FLOOR`` (5%) of the DVK, so that
   an overshooting negative correction never zeroes a tissue voxel (models with the "floored" or
   "ratio" correction, :meth:`~DblurDoseLib.learning.network.DblurDoseNet.correct`, stay above it by construction).
   When the working grid is not the CT grid, what moves back is the network's correction
   (output minus the working-grid DVK, trilinear), added to the CT-grid DVK, so that the map
   keeps the CT grid's detail (the no-residual ablation moves its whole output); then the
   test-time step is applied again with the CT grid's density.

Precision: float32 by default. ``precision="bf16"`` or ``"fp16"`` runs the network under
CUDA autocast; it is an option for GPUs only (refused on the CPU and MPS) and has not been
validated against the 0.5% criterion on a GPU in this version, so it is never the default.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from .. import DATA_DIR
from ..errors import DblurDoseError
from ..geometry.resample import GRID_TOLERANCE, working_grid, working_shape  # noqa: F401  (re-exported: the CNN's working grid)
from ..io.volume import Volume

if TYPE_CHECKING:  # torch is imported when a network runs, not with this module
    import torch

    from .network import DblurDoseNet

DEFAULT_MODEL_PATH = DATA_DIR / "models" / "dblurdosenet.pt"
PRECISIONS = ("float32", "bf16", "fp16")
#: working memory per output slice and in-plane voxel of the shared extractor (bytes, float32):
#: second-conv taps 48 + per-pack taps 32 + outputs 48, first-layer maps ~40, features 16, inputs
_BYTES_PER_VOXEL_SLICE = 4 * 190
#: the CNN's map in tissue is at least this fraction of the DVK's (see cnn_dose_rate; the DVK is 0 in air)
TISSUE_FLOOR = 0.05
#: output slices per chunk at most (more gains nothing measurable and costs memory)
MAX_CHUNK = 16


def chunk_slices(budget_bytes: float, shape: tuple[int, int, int]) -> int:
    """Output slices per chunk of the shared-extractor path for a working grid ``shape`` (z, y, x).

    As many as ``budget_bytes`` (bytes) holds at ``_BYTES_PER_VOXEL_SLICE`` per in-plane voxel and
    slice, between 1 and ``MAX_CHUNK`` (and at most the grid's slices).
    """
    nz, ny, nx = shape
    return int(max(1, min(nz, MAX_CHUNK, budget_bytes // (_BYTES_PER_VOXEL_SLICE * ny * nx))))


def chunk_bytes(chunk: int, shape: tuple[int, int, int]) -> float:
    """Working memory (bytes) of one chunk of ``chunk`` output slices on a working grid ``shape``."""
    return float(_BYTES_PER_VOXEL_SLICE) * chunk * shape[1] * shape[2]


def weights_installed() -> bool:
    """True when trained weights ship with this installation (``DEFAULT_MODEL_PATH``)."""
    return DEFAULT_MODEL_PATH.is_file()


def load_model(path: str | os.PathLike | None = None, device: str | torch.device = "auto") -> DblurDoseNet:
    """The DblurDoseNet in a model file, checksum verified, in eval mode.

    Parameters
    ----------
    path : str or path, optional
        The model file (default: the shipped weights, ``DEFAULT_MODEL_PATH``).
    device : str or torch.device
        "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "mps" or a device.

    Returns
    -------
    DblurDoseNet
        On ``device``, in eval mode.

    Raises
    ------
    DblurDoseError
        When no weights are installed (``path`` None) or the file is not a valid model file.
    """
    from ..devices import resolve_device
    from .network import load_model_file

    if path is None:
        if not weights_installed():
            raise DblurDoseError(
                "no trained DblurDoseNet weights are installed (expected "
                f"{DEFAULT_MODEL_PATH}); use the DVK method, give a model file you trained (`dblurdose train`), "
                "or install a release that ships the weights", settings=("method", "model"),
            )
        path = DEFAULT_MODEL_PATH
    dev = resolve_device(device)
    return load_model_file(path, device=dev)


def _postprocess(dose: np.ndarray, density: np.ndarray) -> np.ndarray:
    from ..physics.density import AIR_DENSITY_THRESHOLD

    return np.where(density < AIR_DENSITY_THRESHOLD, np.float32(0), np.maximum(dose, np.float32(0)))


def _fast_copy(model, dev):
    """The eval copy for the fast path: batch norms folded; on the CPU, weights laid out channels-last."""
    import torch

    from .network import fuse_for_inference

    net = fuse_for_inference(model).to(dev)
    if dev.type == "cpu":  # oneDNN's preferred layout; saves a reorder of every weight at every call
        net.unet.to(memory_format=torch.channels_last)
        if net.extractor is not None:
            net.extractor.to(memory_format=torch.channels_last_3d)
    return net


def predict_scaled(
    model: DblurDoseNet,
    spect: np.ndarray,
    density: np.ndarray,
    dvk: np.ndarray,
    device: str | torch.device = "cpu",
    *,
    naive: bool = False,
    precision: str = "float32",
    max_bytes: float | None = None,
    progress: Callable[[float], object] | None = None,
    fwhm_mm: float | None = None,
) -> np.ndarray:
    """The network on scaled arrays; the scaled output, post-processed (:func:`~.network.postprocess`).

    Parameters
    ----------
    model : DblurDoseNet
        The network.
    spect, density, dvk : ndarray, [z, y, x]
        Scaled SPECT (Bq/mL x ``spect_scale_ml`` / total Bq), density (g/cm3) and scaled DVK
        (mGy/h x ``dose_scale`` / total Bq), on the model's working grid.
    device : str or torch.device
        Where the network runs.
    naive : bool
        Run every pack through the module's ``forward`` one at a time (the reference the fast,
        shared-extractor path is tested against).
    precision : str
        "float32", or "bf16"/"fp16" (CUDA autocast; CUDA only).
    max_bytes : float, optional
        Working memory for a chunk of slices, bytes (default: :func:`~DblurDoseLib.devices.memory_budget_bytes`).
    progress : callable, optional
        Called with the fraction of slices done.
    fwhm_mm : float, optional
        The SPECT's Gaussian-equivalent FWHM (mm): needed by a model with the resolution input
        (``ModelConfig.fwhm_input``), ignored by others.

    Returns
    -------
    ndarray, [z, y, x], float32
        The scaled dose rate (x total Bq / ``dose_scale`` gives mGy/h).
    """
    import torch

    from ..devices import full_float32, memory_budget_bytes, resolve_device
    from .network import HALF, postprocess

    dev = resolve_device(device)
    if precision not in PRECISIONS:
        raise DblurDoseError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision != "float32" and dev.type != "cuda":
        raise DblurDoseError(f"the {precision} precision is for CUDA GPUs only; use float32 on {dev.type}",
                             settings=("device",))
    nz, ny, nx = spect.shape
    model.require_fwhm(fwhm_mm)
    if not (spect.shape == density.shape == dvk.shape):
        raise ValueError(f"shapes differ: SPECT {spect.shape}, density {density.shape}, DVK {dvk.shape}")
    spect_all = torch.from_numpy(np.ascontiguousarray(spect, dtype=np.float32))  # no whole-volume stack: chunks
    dvk_all = torch.from_numpy(np.ascontiguousarray(dvk, dtype=np.float32))
    rho_all = torch.from_numpy(np.ascontiguousarray(density, dtype=np.float32))
    out = np.empty((nz, ny, nx), dtype=np.float32)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
                if precision != "float32" else full_float32(dev))

    def rows(start: int, stop: int) -> torch.Tensor:  # input slices for outputs start..stop-1, ends replicated
        return torch.arange(start - HALF, stop + HALF).clamp_(0, nz - 1)

    net = model.to(dev).eval() if naive else _fast_copy(model, dev)
    chunk = 1 if naive else chunk_slices(memory_budget_bytes(dev, max_bytes), (nz, ny, nx))
    unet_batch = 1 if dev.type == "cpu" else min(chunk, 16)  # on the CPU one slice at a time stays in cache
    with torch.inference_mode(), autocast:
        for start in range(0, nz, chunk):
            stop = min(start + chunk, nz)
            index = rows(start, stop)
            x = torch.stack([spect_all.index_select(0, index), rho_all.index_select(0, index)])
            x = x.unsqueeze(0).to(dev)  # [1, 2, s + 10, y, x]
            dv = dvk_all[start:stop].to(dev)
            if naive:
                result = net(x, dv[None], fwhm_mm)[0]  # [1, y, x]
            else:
                if net.extractor is not None and dev.type == "cpu":
                    x = x.contiguous(memory_format=torch.channels_last_3d)
                feats = net.slab_features(x)[0].transpose(0, 1)  # [s, C, y, x]
                del x
                parts = []
                for b in range(0, stop - start, unet_batch):
                    f = feats[b: b + unet_batch]
                    if dev.type == "cpu":
                        f = f.contiguous(memory_format=torch.channels_last)
                    parts.append(net.unet(net.condition(f, fwhm_mm)).float()[:, 0])
                result = net.correct(torch.cat(parts), dv)
            rho = rho_all[start:stop].to(dev)
            out[start:stop] = postprocess(result.float(), rho).cpu().numpy()
            if progress is not None:
                progress(stop / nz)
    return out


def cnn_dose_rate(
    activity: Volume,
    ct: Volume,
    density: np.ndarray,
    dvk: np.ndarray,
    device: str | torch.device = "auto",
    model: DblurDoseNet | None = None,
    *,
    precision: str = "float32",
    max_bytes: float | None = None,
    progress: Callable[[float], object] | None = None,
    fwhm_mm: float | None = None,
) -> Volume:
    """The DblurDoseNet dose rate on the CT grid (the module docstring gives the steps).

    Parameters
    ----------
    activity : Volume
        Activity concentration, Bq/mL, on the CT grid.
    ct : Volume
        The CT (its grid; the voxel values are not used).
    density, dvk : ndarray, [z, y, x]
        Density (g/cm3) and DVK dose rate (mGy/h) on the CT grid.
    device : str or torch.device
        "auto" (CUDA, then MPS, then CPU), "cpu", "cuda", "mps" or a device.
    model : DblurDoseNet, optional
        The network (its ``config`` gives the working grid and scaling); None loads the shipped weights.
    precision : str
        "float32", or "bf16"/"fp16" on CUDA (see the module docstring).
    max_bytes : float, optional
        Working memory for the network's chunks, bytes (default: :func:`~DblurDoseLib.devices.memory_budget_bytes`).
    progress : callable, optional
        Called with the fraction done.
    fwhm_mm : float, optional
        The SPECT's Gaussian-equivalent FWHM (mm): needed by a model with the resolution input
        (``ModelConfig.fwhm_input``), ignored by others.

    Returns
    -------
    Volume
        The CNN dose rate, mGy/h, float32, on the CT grid (``metadata["units"]``).
    """
    from ..devices import resolve_device
    from ..geometry.resample import resample_activity, resample_linear

    dev = resolve_device(device)
    if model is None:
        model = load_model(device=dev)
    model.require_fwhm(fwhm_mm)  # before any work
    density = np.asarray(density, dtype=np.float32)
    dvk = np.asarray(dvk, dtype=np.float32)
    if not (activity.shape == ct.shape == density.shape == dvk.shape):
        raise DblurDoseError(
            f"the CNN needs activity, density and DVK on the CT grid {ct.shape}; got {activity.shape}, "
            f"{density.shape} and {dvk.shape}. Resample them onto the CT grid first"
        )
    cfg = model.config
    work = working_grid(ct, cfg.spacing)
    if work is None:
        act, rho, dv, voxel_ml = np.asarray(activity.array, dtype=np.float32), density, dvk, ct.voxel_volume_ml
    else:
        act = resample_activity(activity, work).array
        rho = resample_linear(ct.with_array(density), work).array
        dv = resample_linear(ct.with_array(dvk), work).array
        voxel_ml = work.voxel_volume_ml
    total_bq = float(np.sum(act, dtype=np.float64)) * voxel_ml
    if not math.isfinite(total_bq):
        raise DblurDoseError("the activity holds NaN or infinite values; check the SPECT")
    if total_bq <= 0:  # no activity: no dose (the scaling below would divide by zero)
        if progress is not None:
            progress(1.0)
        return ct.with_array(np.zeros(ct.shape, dtype=np.float32))
    spect_s = act * np.float32(cfg.spect_scale_ml / total_bq)
    dvk_s = dv * np.float32(cfg.dose_scale / total_bq)
    out = predict_scaled(model, spect_s, rho, dvk_s, dev, precision=precision, max_bytes=max_bytes,
                         progress=progress, fwhm_mm=fwhm_mm)
    del spect_s, dvk_s  # whole-volume copies: freed before the steps below (see DblurDoseLib.memory)
    out *= np.float32(total_bq / cfg.dose_scale)
    if work is not None:
        if model.residual:  # move only the correction: the CT-grid DVK keeps its own detail
            out = dvk + resample_linear(work.with_array(out - dv), ct).array
        else:
            out = resample_linear(work.with_array(out), ct).array
        out = _postprocess(out, density)
    # Safeguard: the correction may lower a tissue voxel's DVK dose rate by at most 1 - TISSUE_FLOOR.
    # Tissue near activity always receives dose (photons reach everywhere), so a zero there is an
    # overshoot of the network, never physics (v0.2: 0.6% of the demo's soft tissue, truth ~1 mGy/h;
    # v0.3, trained with the floored correction, nearly never meets it: model card).
    floor = np.maximum(dvk, np.float32(0))
    floor *= np.float32(TISSUE_FLOOR)
    out = np.maximum(out, floor, out=out if out.dtype == np.float32 else None)
    del floor
    result = ct.with_array(out.astype(np.float32, copy=False))
    result.metadata["units"] = "mGy/h"
    return result
