"""Peak-memory estimate of :func:`DblurDoseLib.dose.compute_dose_rate_maps`, and the up-front refusal.

The estimate adds up the arrays the workflow holds at its two peaks (bytes):

* held throughout: the CT as read (``ct_itemsize`` bytes per voxel: 2 for 16-bit HU), the SPECT
  (float32, ~3 copies: as read, in Bq/mL, checked), and on the CT grid (float32, ``n`` voxels)
  the activity (Bq/mL), the activity per voxel (Bq) and the density: ``12 n`` (the activity per
  voxel is freed after the DVK, whose map takes its place);
* the DVK stage: the FFT working set at the padded grid of :func:`DblurDoseLib.physics.dvk.padded_shape`
  (:func:`~DblurDoseLib.physics.dvk.fft_bytes_per_padded_voxel`: input grid, half spectrum, kernel
  spectrum, output), bounded by the budget left (the convolution then runs in z-slabs, whose
  outputs are added into ``4 n`` per kernel), then the dose and the air mask: ``5 n``;
* the CNN stage: on the working grid (``w`` voxels) the scaled SPECT and DVK and the output
  (``12 w``; plus the resampled activity, density and DVK, ``12 w``, when the working grid is
  not the CT grid), one chunk of slices (:func:`~DblurDoseLib.learning.inference.chunk_bytes`), then the
  output and the tissue floor on the CT grid (``8 n``).

The process itself (Python, numpy, torch, the model: ``base_bytes``, by default the resident
size now, less the inputs) and ``FIXED_BYTES`` come on top; the arrays are multiplied by
``SAFETY_FACTOR`` (1.1) for allocator slack and temporaries not counted. On a GPU the FFT and chunk working sets live in GPU memory and are
bounded by :func:`~DblurDoseLib.devices.memory_budget_bytes` there; the estimate is of host memory.

Calibration (CPU, 2 threads, a loaded 2-core machine; 16-bit HU CT at 0.98x0.98x3 mm, 99^3
Lu-177 kernel, shipped CNN on its 1.96x1.96x3 mm working grid, 8 GB budget; fresh subprocess,
peak RSS ``VmHWM`` reset just before the call, see ``Testing/test_memory.py`` ``measure``).
"arrays" is the peak above the process without its inputs, against the estimate less its base:

===========  ======  ===================  ===================  ==========================  =====
CT (z,y,x)   method  estimate (process)   measured peak RSS    arrays: estimate / measured ratio
===========  ======  ===================  ===================  ==========================  =====
64x128x128   dvk     0.43 GB              0.43 GB              0.19 / 0.20 GB              0.96
130x256x256  dvk     0.93 GB              0.77 GB              0.68 / 0.54 GB              1.27
64x128x128   cnn     0.45 GB              0.46 GB              0.19 / 0.22 GB              0.88
130x256x256  cnn     0.94 GB              0.78 GB              0.68 / 0.53 GB              1.29
===========  ======  ===================  ===================  ==========================  =====

So the estimate is within -12% / +29% of the measured arrays (tests allow +-35%), erring high
for larger grids, where the FFT working set (``fft_bytes_per_padded_voxel``) dominates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import OutOfMemoryError

#: default budget for the whole process (GB, 1e9 bytes): setting ``memory_gb``
DEFAULT_MEMORY_GB = 8.0
#: multiplies the counted arrays (allocator slack, small temporaries); see the module's calibration
SAFETY_FACTOR = 1.1
#: working memory not in the counted arrays: FFT library and thread workspaces, the kernels (bytes;
#: the 64x128x128 calibration run's peak exceeds its counted arrays by about 0.1 GB)
FIXED_BYTES = 0.08e9
#: the process without the arrays (Python, numpy, torch, a model) where its resident size is unknown (bytes)
DEFAULT_BASE_BYTES = 0.6e9
_F32 = 4


def _status_bytes(field: str, path: str = "/proc/self/status") -> float | None:
    """A ``kB`` field of a /proc file (``VmRSS``, ``VmHWM``, ``MemAvailable``) in bytes; None where absent."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1]) * 1024.0
    except OSError:
        return None
    return None


def resident_bytes() -> float | None:
    """This process's resident size now (bytes, /proc/self/status VmRSS).

    Returns
    -------
    float or None
        Bytes; None where unknown (no /proc).
    """
    return _status_bytes("VmRSS")


def peak_resident_bytes() -> float | None:
    """This process's peak resident size so far (bytes, /proc/self/status VmHWM).

    Returns
    -------
    float or None
        Bytes; None where unknown (no /proc).
    """
    return _status_bytes("VmHWM")


def available_bytes() -> float | None:
    """Memory the system can give without swapping (bytes, /proc/meminfo MemAvailable).

    Returns
    -------
    float or None
        Bytes; None where unknown (no /proc).
    """
    return _status_bytes("MemAvailable", "/proc/meminfo")


@dataclass
class MemoryPlan:
    """The estimate for one run (all in bytes) and the working memory each stage may use.

    ``estimate``: peak of the whole process; ``base``: the process without the arrays;
    ``dvk_bytes`` / ``cnn_bytes``: the budgets handed to the FFT and to the network's chunks;
    ``chunk``: output slices per CNN chunk (0 without the CNN); ``budget``: the budget asked for;
    ``on_host``: the working sets are host memory (CPU), else device memory (sized by the device).
    """

    estimate: float
    base: float
    budget: float
    dvk_bytes: float
    cnn_bytes: float
    chunk: int
    on_host: bool = True

    def describe(self) -> str:
        """One phrase: the estimate against the budget (GB).

        Returns
        -------
        str
            E.g. "an estimated 1.2 GB peak against a 8.0 GB budget".
        """
        return f"an estimated {self.estimate / 1e9:.1f} GB peak against a {self.budget / 1e9:.1f} GB budget"


def plan_memory(
    ct_shape: Sequence[int],
    spect_shape: Sequence[int],
    methods: Sequence[str],
    kernel_shapes: Sequence[Sequence[int]],
    *,
    work_shape: Sequence[int] | None = None,
    ct_itemsize: int = 2,
    memory_gb: float = DEFAULT_MEMORY_GB,
    base_bytes: float | None = None,
    device_type: str = "cpu",
    deconvolve: bool = False,
    consistent: bool = False,
) -> MemoryPlan:
    """Estimate the peak memory of :func:`~DblurDoseLib.dose.compute_dose_rate_maps` and split the budget.

    Parameters
    ----------
    ct_shape, spect_shape : sequence of int
        (z, y, x) voxels of the CT and SPECT grids.
    methods : sequence of str
        The methods run ('dvk', 'cnn'); the DVK always runs.
    kernel_shapes : sequence of sequence of int
        Shapes (z, y, x voxels) of the kernels convolved (one: the total kernel; two with
        electron-only scaling).
    work_shape : sequence of int, optional
        The CNN's working grid (z, y, x voxels), :func:`~DblurDoseLib.learning.inference.working_shape`;
        None: the CT grid.
    ct_itemsize : int
        Bytes per CT voxel as read (2 for 16-bit HU, 4 for float32).
    memory_gb : float
        Budget for the whole process (GB, 1e9 bytes).
    base_bytes : float, optional
        The process without the arrays (bytes); None: its resident size now
        (``DEFAULT_BASE_BYTES`` where unknown).
    device_type : str
        'cpu', or 'cuda'/'mps' (then the FFT and chunks are not host memory).
    deconvolve : bool
        The CNN's model deconvolves the SPECT (Richardson-Lucy on the SPECT grid in float64, then its
        activity and DVK held on the CT grid beside the DVK method's).
    consistent : bool
        The CNN's map is made consistent with the SPECT (:mod:`DblurDoseLib.physics.consistency`: five
        float32 volumes and two masks beside the two maps).

    Returns
    -------
    MemoryPlan
        The estimate (bytes); the DVK's FFT gets what the budget leaves after the arrays held
        (it runs in z-slabs when that is less than the whole padded grid), the CNN's chunk the
        same after its stage's arrays, each at least the smallest working set that works (so an
        estimate over the budget means no chunking fits). Checked by :func:`check_memory`.
    """
    from .learning.inference import chunk_bytes, chunk_slices
    from .physics.dvk import fft_bytes_per_padded_voxel, padded_shape

    if base_bytes is None:
        base_bytes = resident_bytes() or DEFAULT_BASE_BYTES
    budget = float(memory_gb) * 1e9
    nz, ny, nx = (int(n) for n in ct_shape)
    n = float(nz * ny * nx)
    ns = float(spect_shape[0] * spect_shape[1] * spect_shape[2])
    on_host = device_type == "cpu"
    ct_grid = 3 * _F32 * n  # activity (Bq/mL), activity per voxel (Bq), density (g/cm3)
    held = ct_itemsize * n + 3 * _F32 * ns + ct_grid
    if deconvolve and "cnn" in methods:  # the deconvolved activity and its DVK; Richardson-Lucy's float64 arrays
        held += 2 * _F32 * n + 4 * 8 * ns
    # DVK: the FFT gets what is left of the budget, at most the whole padded grid, at least one z-slab
    lz, ly, lx = padded_shape((nz, ny, nx), kernel_shapes)
    per_voxel = fft_bytes_per_padded_voxel(len(kernel_shapes))
    hz = max(min(k[0] // 2, nz - 1) for k in kernel_shapes)
    smallest = per_voxel * (min(2 * hz + 1, nz + hz) + 0.5) * ly * lx  # one slab: fft_convolve refuses less
    whole = per_voxel * lz * ly * lx
    left = (budget - base_bytes - FIXED_BYTES) / SAFETY_FACTOR - held - (_F32 + 1) * n
    slabbed = whole > left  # then the slabs' outputs are overlap-added into whole-volume arrays
    outputs = len(kernel_shapes) * _F32 * n if slabbed else 0.0
    dvk_bytes = whole if not slabbed else max(left - outputs, smallest)
    dvk_peak = held + (dvk_bytes if on_host else 0.0) + outputs + (_F32 + 1) * n  # + dose, air mask
    cnn_bytes, chunk, cnn_peak = 0.0, 0, 0.0
    if "cnn" in methods:
        work = tuple(int(v) for v in (work_shape or (nz, ny, nx)))
        w = float(work[0] * work[1] * work[2])
        resampled = work != (nz, ny, nx)
        # activity per voxel freed, DVK map added; scaled SPECT and DVK, output (+ resampled inputs)
        cnn_held = held + (6 if resampled else 3) * _F32 * w
        chunk = chunk_slices((budget - base_bytes - FIXED_BYTES) / SAFETY_FACTOR - cnn_held, work)  # at least 1
        cnn_bytes = chunk_bytes(chunk, work)
        after = held + 2 * _F32 * n + ((3 * _F32 * w + 2 * _F32 * n) if resampled else 0.0)  # output, floor
        cnn_peak = max(cnn_held + (cnn_bytes if on_host else 0.0), after)
    consistency_peak = held + (7 * _F32 + 2) * n if consistent and "cnn" in methods else 0.0  # 2 maps, 5 + 2 masks
    estimate = base_bytes + FIXED_BYTES + SAFETY_FACTOR * max(dvk_peak, cnn_peak, consistency_peak)
    return MemoryPlan(estimate, base_bytes, budget, dvk_bytes, cnn_bytes, chunk, on_host)


def check_memory(plan: MemoryPlan) -> None:
    """Refuse, before any work, a run whose estimate exceeds its budget or this machine's available memory.

    The plan's working sets are already the smallest that work (one FFT z-slab of the kernel's
    depth, one CNN slice), so an estimate over the budget cannot be chunked into it.

    Parameters
    ----------
    plan : MemoryPlan
        From :func:`plan_memory` (bytes).

    Raises
    ------
    OutOfMemoryError
        (:class:`~DblurDoseLib.errors.OutOfMemoryError`, exit code 3) with a one-line message, when the
        estimate exceeds the budget, or the arrays' share of it exceeds the available memory.
    """
    if plan.estimate > plan.budget:
        raise OutOfMemoryError(f"not enough memory for this run: {plan.describe()} (the memory budget), even in "
                               "the smallest chunks; raise the memory budget, crop the CT to the SPECT field, or "
                               "resample the CT to a coarser grid. Nothing was computed", settings=("memory_gb",))
    available = available_bytes()
    if available is not None and plan.estimate - plan.base > available:
        raise OutOfMemoryError(
            f"not enough memory on this machine: the run needs {(plan.estimate - plan.base) / 1e9:.1f} GB more "
            f"({plan.describe()}) but {available / 1e9:.1f} GB is available; close other programs, lower the memory "
            "budget, crop the CT to the SPECT field, or resample the CT to a coarser grid. Nothing was computed",
            settings=("memory_gb",))
