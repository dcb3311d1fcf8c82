"""Choosing the torch device: CUDA, then Apple MPS, then CPU, unless the user says otherwise; how CPU
threads wait."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .errors import DblurDoseError

if TYPE_CHECKING:
    import torch

#: Device names the library accepts ('cuda:N' too): auto = CUDA, then Apple MPS, then the CPU;
#: gpu = CUDA, else Apple MPS (refused when neither exists).
DEVICE_CHOICES = ("auto", "cpu", "gpu", "cuda", "mps")


#: the OpenMP wait policy :func:`prefer_passive_openmp` sets when the environment names none
OPENMP_WAIT_POLICY = "PASSIVE"


def prefer_passive_openmp() -> bool:
    """Let idle CPU threads sleep instead of spin (``OMP_WAIT_POLICY=PASSIVE``) unless the user chose.

    PyTorch's CPU kernels run on OpenMP threads that, by default, spin for a while at the end of
    each parallel region. On a machine where other processes want the cores (a data-set job, a
    second run, a busy workstation) the spinning threads take CPU from the one thread the others
    wait for. Measured on 2 cores, 2 threads (``benchmarks/bench_threads.py``, medians): beside 2
    busy processes the CNN on a 65 x 256 x 256 volume took 11.5 s instead of 22.4 s and a training
    step 1.18 s instead of 1.53 s; beside the data-set job a training step took 1.2 s instead of
    5.5 s; on a quiet machine sleeping costs about 6%. The policy is read once, when OpenMP loads
    with torch, so call this before the first ``import torch``; the ``dblurdose`` command does.

    Returns
    -------
    bool
        True when the policy in the environment is now PASSIVE and takes effect (torch not yet
        imported); False when the user set another policy or torch was already imported (the
        environment is then left as it was).
    """
    if "torch" in sys.modules:
        return False
    return os.environ.setdefault("OMP_WAIT_POLICY", OPENMP_WAIT_POLICY).upper() == OPENMP_WAIT_POLICY


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def resolve_device(device: torch.device | str = "auto") -> torch.device:
    """The ``torch.device`` for a user's choice: the one place a device is chosen.

    Parameters
    ----------
    device : str or torch.device
        'auto' (CUDA, then Apple MPS, then CPU), 'cpu', 'gpu' (CUDA, else Apple MPS), 'cuda',
        'cuda:N' or 'mps', in any letter case; a ``torch.device`` is returned as it is.

    Returns
    -------
    torch.device
        The device chosen.

    Raises
    ------
    DblurDoseError
        An unknown name, or a GPU asked for that this machine does not have (the message names
        the choices that work, in words that fit the command line and the Slicer module alike).
    """
    import torch

    if isinstance(device, torch.device):
        return device
    name = str(device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name == "gpu":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        raise DblurDoseError("a GPU was asked for but PyTorch sees no CUDA or Apple MPS device; choose the device "
                             "auto or cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DblurDoseError("the device cuda was asked for but no CUDA GPU is available; choose the device "
                                 "auto or cpu")
        return torch.device(name)
    if name == "mps":
        if not _mps_available():
            raise DblurDoseError("the device mps was asked for but Apple MPS is not available; choose the device "
                                 "auto or cpu")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise DblurDoseError(f"unknown device {device!r}; choose one of {', '.join(DEVICE_CHOICES)}")


@contextlib.contextmanager
def full_float32(device: torch.device | str) -> Iterator[None]:
    """Context manager: CUDA convolutions and matrix products in full float32 within the block.

    Within the block, CUDA convolutions and matrix products run in full float32 with deterministic
    cuDNN algorithms (TF32, PyTorch's default on Ampere and newer GPUs, keeps 10 mantissa bits: ~1e-3
    relative error), so that a GPU map agrees with the CPU's to float32 rounding and repeats to the
    last bit. The previous settings are restored afterwards; nothing changes on other devices.

    Parameters
    ----------
    device : torch.device or str
        The device the block computes on; only ``cuda`` devices are affected.

    Yields
    ------
    None
    """
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        yield
        return
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) = saved


def memory_budget_bytes(device: torch.device, requested: float | None = None) -> float:
    """Working-memory budget for one computation on ``device`` (bytes).

    Parameters
    ----------
    device : torch.device
        The device (from :func:`resolve_device`).
    requested : float, optional
        A budget (bytes) to use as it is.

    Returns
    -------
    float
        ``requested`` when given; else on CUDA 70% of the GPU's free memory, elsewhere 3e9 bytes
        (keeps a 512x512x130 CT grid well inside 4 GB of process memory).
    """
    if requested is not None:
        return float(requested)
    if device.type == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return 0.7 * free
    return 3.0e9  # keeps a 512x512x130 CT grid well inside 4 GB of process memory
