"""Lu-177 dose-voxel kernels (DVK): mGy per decay in soft tissue (1.04 g/cm3), electron and photon
parts apart, arrays [z, y, x], odd-sized and centred on the source voxel.

A kernel value is the mean dose in a voxel per decay distributed uniformly in the centre voxel,
in an infinite homogeneous medium. Where kernels come from, in the order :func:`get_kernel` tries:

``shipped``
    Built by Monte Carlo (:func:`~DblurDoseLib.physics.kernel_building.build_kernel`, ompmc) for the paper's 0.98x0.98x3 mm grid and
    the 4.7952 and 4.8 mm SPECT grids; stored in ``data/kernels`` (one octant: they are
    symmetric). See ``data/kernels/README.md`` for how each was made.
``cached``
    Built by :func:`~DblurDoseLib.physics.kernel_building.build_kernel` on request for another grid, or derived earlier (below), kept
    in ``$DBLURDOSE_CACHE`` or ``~/.cache/dblurdose`` (derived ones in ``kernels/derived``, named
    by a key of the nuclide, grid, sizes, dose-point kernel file and package version).
``derived``
    Any other grid, without ompmc: the shipped radial dose-point kernels (energy deposited in
    spherical shells around a point source, per decay, from ompmc) averaged over the pairs of
    points of the source and target voxels (:func:`derive_kernel`); a second or so on a clinical
    CT grid, so the result is written to the cache (atomically, with its checksums) and later runs
    read it (``cached``); a cached file that fails its checksum is derived and written again.

Electron part: beta + conversion + Auger electrons (and their bremsstrahlung); photon part:
gamma + x-rays. Energy below 10 keV is deposited in the source voxel.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

from .. import DATA_DIR
from ..errors import DblurDoseError
from .nuclides import canonical_name

KERNEL_DIR = DATA_DIR / "kernels"
MEDIUM_DENSITY = 1.04  # g/cm3, ICRU soft tissue as in the paper
SPACING_TOL_MM = 1e-3
#: dose (mGy) from 1 keV absorbed in 1 g
MGY_PER_KEV_PER_G = 1.602176634e-16 * 1e3 * 1e3
#: electron kernels reach this far from the source voxel's edge (Lu-177 beta CSDA range 1.8 mm)
ELECTRON_REACH_MM = 3.0
#: photon kernels: about this half-width, at most MAX_PHOTON_SIZE voxels per edge
PHOTON_HALF_EXTENT_MM = 122.0
MAX_PHOTON_SIZE = 99
#: Monte Carlo phantom for kernels: homogeneous tissue at least this far (cm) from the source
WORLD_HALF_CM = 30.0
#: photon kernels: beyond this distance (mm) the MC values are replaced by a fitted radial model
FAR_FIELD_MM = 20.0
PARTS = ("all", "electron", "photon")


@dataclass
class Kernel:
    """A dose-voxel kernel pair, mGy per decay in the medium of ``medium_density`` g/cm3."""

    nuclide: str
    spacing: tuple[float, float, float]  # mm, x,y,z
    electron: np.ndarray  # [z,y,x] float32, mGy per decay
    photon: np.ndarray  # [z,y,x] float32, mGy per decay
    medium_density: float = MEDIUM_DENSITY
    photon_absorbed_kev: float = 0.0  # photon energy absorbed within the photon kernel's extent
    source: str = "shipped"  # 'shipped' | 'derived' | 'built' | 'cached'
    info: dict = field(default_factory=dict)

    @property
    def voxel_mass_g(self) -> float:
        """Mass of one kernel voxel of the medium, g (density g/cm3 x voxel volume)."""
        return self.medium_density * float(np.prod(self.spacing)) / 1000.0

    def total(self) -> np.ndarray:
        """Electron added into the centre of photon, on the larger of the two supports.

        Returns
        -------
        np.ndarray
            Float32 [z, y, x] kernel, mGy per decay.
        """
        from .dvk import total_kernel

        return total_kernel(self.electron, self.photon)

    def part(self, part: str = "all") -> np.ndarray:
        """One part of the kernel.

        Parameters
        ----------
        part : str
            'all' (:meth:`total`), 'electron' or 'photon'.

        Returns
        -------
        np.ndarray
            Float32 [z, y, x], mGy per decay (the stored array for 'electron' and 'photon').

        Raises
        ------
        DblurDoseError
            For an unknown part.
        """
        if part not in PARTS:
            raise DblurDoseError(f"unknown kernel part {part!r}; choose from {', '.join(PARTS)}")
        return {"all": self.total, "electron": lambda: self.electron, "photon": lambda: self.photon}[part]()

    def energy_kev(self, part: str = "all") -> float:
        """Energy absorbed within the kernel per decay, keV: sum(kernel) x voxel mass.

        Parameters
        ----------
        part : str
            'all', 'electron' or 'photon'.

        Returns
        -------
        float
            keV per decay.
        """
        return float(np.sum(self.part(part), dtype=np.float64)) * self.voxel_mass_g / MGY_PER_KEV_PER_G


def _centred_slices(outer, inner) -> tuple[slice, ...]:
    return tuple(slice((o - i) // 2, (o - i) // 2 + i) for o, i in zip(outer, inner))


def resize_centred(array: np.ndarray, size: int) -> np.ndarray:
    """Crop or zero-pad a centred odd-sized kernel to ``size``^3.

    Parameters
    ----------
    array : np.ndarray
        A centred [z, y, x] kernel of odd edges (any units).
    size : int
        The new edge length (voxels), odd.

    Returns
    -------
    np.ndarray
        Float32 ``size``^3 array, same centre.

    Raises
    ------
    DblurDoseError
        When ``size`` is not a positive odd number.
    """
    if size < 1 or size % 2 == 0:
        raise DblurDoseError(f"the kernel size must be a positive odd number, got {size}")
    out = np.zeros((size,) * 3, dtype=np.float32)
    common = tuple(min(size, n) for n in array.shape)
    out[_centred_slices(out.shape, common)] = array[_centred_slices(array.shape, common)]
    return out


def default_sizes(spacing: Sequence[float]) -> tuple[int, int]:
    """Default (electron, photon) edge lengths for a grid: 9/99 at 0.98x0.98x3 mm, 5/51 at 4.8 mm.

    Electron: odd, covering :data:`ELECTRON_REACH_MM` beyond the source voxel along the finest axis.
    Photon: odd, about :data:`PHOTON_HALF_EXTENT_MM` half-width along the finest axis, at most
    :data:`MAX_PHOTON_SIZE` (and never less than the electron size).

    Parameters
    ----------
    spacing : sequence of float
        (x, y, z) voxel size, mm.

    Returns
    -------
    tuple of int
        (electron, photon) edge lengths, voxels.
    """
    h = min(spacing)
    electron = 2 * math.ceil((ELECTRON_REACH_MM + h / 2) / h) + 1
    photon = min(MAX_PHOTON_SIZE, 2 * round(PHOTON_HALF_EXTENT_MM / h) + 1)
    return max(electron, 3), max(photon, electron)


def _check_spacing(spacing) -> tuple[float, float, float]:
    try:
        sp = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise DblurDoseError(f"kernel spacing must be three numbers (mm), got {spacing!r}") from None
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise DblurDoseError(f"kernel spacing must be three positive numbers (mm, x y z), got {spacing!r}")
    if max(sp) > 50.0 or min(sp) < 0.05:
        raise DblurDoseError(f"kernel spacing {sp} mm is outside 0.05-50 mm; check the units (mm)")
    return sp  # type: ignore[return-value]


def _spacing_tag(spacing) -> str:
    return "x".join(f"{s:g}" for s in spacing) + "mm"


# --- files -------------------------------------------------------------------------------------------


def save_kernel(kernel: Kernel, path: str | os.PathLike) -> Path:
    """Write a kernel as compressed .npz, one octant of each part (kernels are mirror-symmetric).

    Atomic: written to a temporary file beside ``path`` and renamed, so a reader (another run
    using the same cache) sees the old file or the whole new one, never a partial one.

    Parameters
    ----------
    kernel : Kernel
        The kernel (mGy per decay); its ``info`` goes into the metadata with the octants' SHA-256.
    path : str or os.PathLike
        The ``.npz`` file; missing folders are made.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    octant = {}
    for name in ("electron", "photon"):
        a = getattr(kernel, name)
        c = a.shape[0] // 2
        octant[name] = np.ascontiguousarray(a[c:, c:, c:], dtype=np.float32)
    meta = {
        "nuclide": kernel.nuclide,
        "spacing_mm": list(kernel.spacing),
        "medium_density": kernel.medium_density,
        "photon_absorbed_kev": kernel.photon_absorbed_kev,
        "units": "mGy per decay",
        "layout": "octant [z>=c, y>=c, x>=c] of a mirror-symmetric [z,y,x] kernel",
        **{k: v for k, v in kernel.info.items() if k != "sha256"},
        "sha256": {name: _checksum(a) for name, a in octant.items()},
    }
    from ..io.outputs import atomic_file

    with atomic_file(path, f".{os.getpid()}.partial.npz") as partial:  # ends in .npz: savez adds none
        np.savez_compressed(partial, electron_octant=octant["electron"], photon_octant=octant["photon"],
                            meta=np.array(json.dumps(meta)))
    return path


def _checksum(octant: np.ndarray) -> str:
    """SHA-256 of a float32 octant's shape and bytes (verifies a kernel file before it is used)."""
    a = np.ascontiguousarray(octant, dtype=np.float32)
    return hashlib.sha256(repr(a.shape).encode() + a.tobytes()).hexdigest()


def _unfold(octant: np.ndarray) -> np.ndarray:
    a = octant
    for axis in range(3):
        a = np.concatenate([np.flip(a, axis)[tuple(slice(None, -1) if i == axis else slice(None)
                                                    for i in range(3))], a], axis=axis)
    return np.ascontiguousarray(a, dtype=np.float32)


def load_kernel(path: str | os.PathLike, source: str = "shipped") -> Kernel:
    """Read a kernel written by :func:`save_kernel`, verifying its checksum (a damaged file is refused).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file.
    source : str
        Recorded as the kernel's source ('shipped', 'cached', ...); picks the advice in messages.

    Returns
    -------
    Kernel
        Both parts unfolded to full [z, y, x] arrays, mGy per decay.

    Raises
    ------
    DblurDoseError
        For a damaged file, one without checksums, or one whose checksum fails.
    """
    fix = (f"delete {path} (it is rebuilt or derived again when needed)" if source != "shipped"
           else "reinstall DblurDose")
    try:
        with np.load(path) as f:
            meta = json.loads(str(f["meta"]))
            octants = {name: np.asarray(f[f"{name}_octant"]) for name in ("electron", "photon")}
    except Exception as exc:  # truncated zip, missing arrays, bad JSON: all mean a damaged file
        raise DblurDoseError(f"the kernel file {path} is damaged ({type(exc).__name__}: {exc}); {fix}") from None
    expected = meta.get("sha256")
    if not isinstance(expected, dict):
        raise DblurDoseError(f"the kernel file {path} carries no checksum (an older or foreign file); {fix}")
    bad = [name for name, a in octants.items() if expected.get(name) != _checksum(a)]
    if bad:
        raise DblurDoseError(
            f"the kernel file {path} fails its checksum ({' and '.join(bad)} part changed since it was written); {fix}"
        )
    electron, photon = _unfold(octants["electron"]), _unfold(octants["photon"])
    info = {k: v for k, v in meta.items() if k not in ("nuclide", "spacing_mm", "medium_density",
                                                        "photon_absorbed_kev", "units", "layout", "sha256")}
    return Kernel(meta["nuclide"], tuple(meta["spacing_mm"]), electron, photon, float(meta["medium_density"]),
                  float(meta["photon_absorbed_kev"]), source, info)


def cache_dir() -> Path:
    """Folder of built and derived kernels: ``$DBLURDOSE_CACHE/kernels``, else ``~/.cache/dblurdose/kernels``.

    Returns
    -------
    Path
        The folder (not created here).
    """
    return Path(os.environ.get("DBLURDOSE_CACHE") or Path.home() / ".cache" / "dblurdose") / "kernels"


@cache
def _catalogue(folder: str, mtime: float = 0.0) -> tuple[tuple[str, str, tuple[float, float, float]], ...]:
    """(path, nuclide, spacing) of every kernel file in a folder (``mtime`` renews the listing)."""
    out = []
    for path in sorted(Path(folder).glob("*.npz")):
        try:
            with np.load(path) as f:
                if "meta" not in f:
                    continue
                meta = json.loads(str(f["meta"]))
            out.append((str(path), meta["nuclide"], tuple(float(s) for s in meta["spacing_mm"])))
        except Exception:  # a broken cache file is skipped, not fatal
            continue
    return tuple(out)


def _find(folder: Path, nuclide: str, spacing) -> str | None:
    if not folder.is_dir():
        return None
    for path, nuc, sp in _catalogue(str(folder), folder.stat().st_mtime):
        if nuc == nuclide and np.allclose(sp, spacing, rtol=0, atol=SPACING_TOL_MM):
            return path
    return None


def _copy(kernel: Kernel) -> Kernel:
    """A copy to hand out: the caches below keep theirs unchanged whatever a caller does."""
    return replace(kernel, electron=kernel.electron.copy(), photon=kernel.photon.copy(), info=dict(kernel.info))


@lru_cache(maxsize=16)
def _load_cached(path: str, source: str, mtime: float) -> Kernel:
    return load_kernel(path, source)


def shipped_spacings(nuclide: str = "Lu-177") -> list[tuple[float, float, float]]:
    """Grids of the kernels shipped for a nuclide.

    Parameters
    ----------
    nuclide : str
        A supported nuclide, any spelling.

    Returns
    -------
    list of tuple of float
        (x, y, z) voxel size of each shipped kernel, mm.

    Raises
    ------
    DblurDoseError
        For an unsupported nuclide.
    """
    name = canonical_name(nuclide)
    return [sp for _, nuc, sp in _catalogue(str(KERNEL_DIR), KERNEL_DIR.stat().st_mtime) if nuc == name]


# --- public entry points ---------------------------------------------------------------------------


def get_kernel(nuclide: str = "Lu-177", spacing: Sequence[float] = (0.98, 0.98, 3.0), size: int | None = None,
               ) -> Kernel:
    """The kernel pair for a grid: shipped, cached (built earlier), or derived (never needs ompmc).

    Parameters
    ----------
    nuclide : str
        A supported nuclide, any spelling.
    spacing : sequence of float
        (x, y, z) voxel size, mm (0.05-50 mm).
    size : int, optional
        Edge length (odd, voxels) of the photon part; the electron part is cropped to it if larger.
        A size larger than a shipped kernel's gives a derived kernel of that size.

    Returns
    -------
    Kernel
        A copy (the caller may change it), mGy per decay in soft tissue (1.04 g/cm3).

    Raises
    ------
    DblurDoseError
        For an unsupported nuclide, a spacing that is not three positive numbers in 0.05-50 mm, or a
        size that is not a positive odd number.
    """
    name = canonical_name(nuclide)
    sp = _check_spacing(spacing)
    if size is not None and (int(size) != size or size < 1 or size % 2 == 0):
        raise DblurDoseError(f"the kernel size must be a positive odd number, got {size}")
    kernel = None
    for folder, source in ((KERNEL_DIR, "shipped"), (cache_dir(), "cached")):
        path = _find(folder, name, sp)
        if path is not None:
            kernel = _copy(_load_cached(path, source, os.path.getmtime(path)))
            break
    if kernel is None or (size is not None and size > kernel.photon.shape[0]):
        electron_size, photon_size = default_sizes(sp)
        if size is not None:
            photon_size, electron_size = int(size), min(electron_size, int(size))
        return _derived(name, sp, electron_size, photon_size)
    if size is not None and size < kernel.photon.shape[0]:
        kernel.photon = resize_centred(kernel.photon, size)
        if kernel.electron.shape[0] > size:
            kernel.electron = resize_centred(kernel.electron, size)
        kernel.photon_absorbed_kev = kernel.energy_kev("photon")
    return kernel


def write_kernel_nrrd(kernel: Kernel, path: str | os.PathLike, part: str = "all", size: int | None = None,
                      overwrite: bool = False) -> Path:
    """Write one part ('all', 'electron', 'photon') as a centred NRRD (N^3 if ``size`` is given).

    The centre voxel sits at the origin; spacing in the header; units mGy/decay in the metadata.

    Parameters
    ----------
    kernel : Kernel
        The kernel (mGy per decay).
    path : str or os.PathLike
        The file written.
    part : str
        'all', 'electron' or 'photon'.
    size : int, optional
        Edge length (odd, voxels) to crop or pad to.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    DblurDoseError
        For an unknown part, a bad size, or an existing file without ``overwrite``.
    """
    from ..io.volume import Volume, write_volume

    array = kernel.part(part)
    if size is not None:
        array = resize_centred(array, int(size))
    origin = tuple(-(n // 2) * s for n, s in zip(array.shape[::-1], kernel.spacing))
    volume = Volume(array.astype(np.float32), kernel.spacing, origin)
    volume.metadata.update({
        "units": "mGy/decay", "nuclide": kernel.nuclide, "part": part, "source": kernel.source,
        "medium_density_g_cm3": f"{kernel.medium_density:g}",
    })
    return write_volume(volume, path, overwrite=overwrite)


# --- symmetry (used by derivation here and by building in kernel_building) ----------------------------


def symmetrise(array: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Average over the mirror (and, for equal spacings, axis-swap) symmetries of a centred kernel.

    Parameters
    ----------
    array : np.ndarray
        A centred [z, y, x] kernel (any units).
    spacing : sequence of float
        (x, y, z) voxel size, mm; axes of equal spacing (within :data:`SPACING_TOL_MM`) are swapped too.

    Returns
    -------
    np.ndarray
        Float64, the same shape.
    """
    a = np.asarray(array, dtype=np.float64)
    for axis in range(3):
        a = 0.5 * (a + np.flip(a, axis))
    sx, sy, sz = spacing
    eq = lambda p, q: abs(p - q) <= SPACING_TOL_MM  # noqa: E731
    if eq(sx, sy) and eq(sy, sz):
        perms = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
        a = sum(np.transpose(a, p) for p in perms) / 6.0
    elif eq(sx, sy):
        a = 0.5 * (a + np.transpose(a, (0, 2, 1)))
    elif eq(sx, sz):
        a = 0.5 * (a + np.transpose(a, (2, 1, 0)))
    elif eq(sy, sz):
        a = 0.5 * (a + np.transpose(a, (1, 0, 2)))
    return a


@cache
def load_point_kernels(nuclide: str = "Lu-177") -> dict:
    """The shipped radial dose-point kernels of a nuclide (energy per spherical shell per decay, from ompmc).

    Parameters
    ----------
    nuclide : str
        A supported nuclide, any spelling.

    Returns
    -------
    dict
        ``r_edges_mm`` (shell edges, mm), ``electron_kev`` and ``photon_kev`` (keV per decay absorbed
        in each shell), and the file's metadata (``medium_density`` in g/cm3, ``date``,
        ``ompmc_version``, ...). Cached: do not change it.

    Raises
    ------
    DblurDoseError
        For an unsupported nuclide or a missing data file.
    """
    name = canonical_name(nuclide)
    path = KERNEL_DIR / f"{name}_dpk.npz"
    if not path.exists():
        raise DblurDoseError(f"no dose-point kernel data for {name} ({path} is missing); reinstall dblurdose")
    with np.load(path) as f:
        out = {k: f[k] for k in ("r_edges_mm", "electron_kev", "photon_kev")}
        out.update(json.loads(str(f["meta"])))
    return out


def _triangle_rule(nodes_per_half: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Nodes/weights on [-1, 1] for the density 1 - |t| (difference of two uniform variables)."""
    x, w = np.polynomial.legendre.leggauss(nodes_per_half)
    x, w = 0.5 * (x + 1.0), 0.5 * w * (1.0 - 0.5 * (x + 1.0))
    nodes = np.concatenate([-x[::-1], x])
    weights = np.concatenate([w[::-1], w])
    return nodes, weights / weights.sum()


def _voxelise(edges, shell_kev, spacing, size, density, seed=0, samples=4_000_000) -> np.ndarray:
    """Kernel (mGy/decay) on ``size``^3 voxels of ``spacing`` from energy per shell (keV/decay):
    the mean over source points uniform in the centre voxel and target points uniform in each
    voxel. Near the source (smooth split at r1..2 r1, r1 = max(3 mm, 1.5 voxel)) by sampling
    (shell, direction, source point): exact energy conservation where the dose is steep. Beyond,
    the dose-point kernel is smooth on the voxel scale: a 6x6x6-point product rule over the
    difference of source and target points (a triangular distribution per axis)."""
    h = np.asarray(spacing, dtype=np.float64)  # x, y, z
    c = size // 2
    r_lo, r_hi = edges[:-1], edges[1:]
    r_mid = 0.5 * (r_lo + r_hi)
    r1 = max(3.0, 1.5 * float(h.max()))
    r2 = 2.0 * r1
    split = np.clip((r_mid - r1) / (r2 - r1), 0.0, 1.0)
    near_share = 0.5 * (1.0 + np.cos(np.pi * split))
    mass_g = density * float(np.prod(h)) / 1000.0
    kernel = np.zeros((size,) * 3, dtype=np.float64)

    near = shell_kev * near_share
    if near.sum() > 0:
        rng = np.random.default_rng(seed)
        per = near.sum() / samples
        for start in range(0, samples, 1_000_000):
            n = min(1_000_000, samples - start)
            shell = np.searchsorted(np.cumsum(near) / near.sum(), rng.random(n), side="right")
            shell = np.minimum(shell, near.size - 1)
            r = np.cbrt(r_lo[shell] ** 3 + rng.random(n) * (r_hi[shell] ** 3 - r_lo[shell] ** 3))
            w = rng.uniform(-1.0, 1.0, n)
            phi = rng.uniform(0.0, 2.0 * np.pi, n)
            sxy = np.sqrt(1.0 - w * w)
            d = np.column_stack([sxy * np.cos(phi), sxy * np.sin(phi), w]) * r[:, None]
            p = (rng.random((n, 3)) - 0.5) * h + d
            idx = np.rint(p / h).astype(np.int64) + c  # x, y, z
            ok = np.all((idx >= 0) & (idx < size), axis=1)
            flat = (idx[ok, 2] * size + idx[ok, 1]) * size + idx[ok, 0]
            kernel += np.bincount(flat, minlength=size**3).reshape(kernel.shape) * per
        kernel *= MGY_PER_KEV_PER_G / mass_g
        kernel = symmetrise(kernel, spacing)

    far = shell_kev * (1.0 - near_share)
    if far.sum() > 0:
        shell_mass_g = density * 4.0 / 3.0 * np.pi * (r_hi**3 - r_lo**3) / 1000.0
        dpk = far / shell_mass_g * MGY_PER_KEV_PER_G  # mGy per decay at r_mid
        keep = dpk > 0
        log_r2 = np.log(dpk[keep] * r_mid[keep] ** 2)
        rk = r_mid[keep]

        def f(r):
            out = np.exp(np.interp(r, rk, log_r2)) / np.maximum(r, 1e-12) ** 2
            out[(r > rk[-1]) | (r < r1)] = 0.0
            return out

        t, wt = _triangle_rule()
        tz, ty, tx = np.meshgrid(t, t, t, indexing="ij")
        wq = (wt[:, None, None] * wt[None, :, None] * wt[None, None, :]).ravel()
        dq = np.column_stack([tx.ravel() * h[0], ty.ravel() * h[1], tz.ravel() * h[2]])  # (q, 3) x,y,z mm
        off = np.arange(c + 1)
        octant = np.zeros((c + 1,) * 3)
        ox, oy = np.meshgrid(off * h[0], off * h[1], indexing="xy")  # [y, x]
        for k in range(c + 1):
            x = ox[..., None] + dq[None, None, :, 0]
            y = oy[..., None] + dq[None, None, :, 1]
            z = k * h[2] + dq[None, None, :, 2]
            octant[k] = f(np.sqrt(x * x + y * y + z * z)) @ wq
        kernel += _unfold(octant)
    return kernel.astype(np.float32)


def derive_kernel(nuclide: str = "Lu-177", spacing: Sequence[float] = (0.98, 0.98, 3.0), electron_size: int | None = None,
                  photon_size: int | None = None) -> Kernel:
    """A kernel for any grid from the shipped dose-point kernels, without ompmc (a few seconds).

    Parameters
    ----------
    nuclide : str
        A supported nuclide, any spelling.
    spacing : sequence of float
        (x, y, z) voxel size, mm.
    electron_size, photon_size : int, optional
        Edge lengths (odd, voxels); :func:`default_sizes` where None.

    Returns
    -------
    Kernel
        Source 'derived', mGy per decay in the dose-point kernels' medium.

    Raises
    ------
    DblurDoseError
        For an unsupported nuclide, a bad spacing, or missing dose-point kernel data.
    """
    name = canonical_name(nuclide)
    sp = _check_spacing(spacing)
    de, dp = default_sizes(sp)
    electron_size, photon_size = int(electron_size or de), int(photon_size or dp)
    dpk = load_point_kernels(name)
    rho = float(dpk["medium_density"])
    electron = _voxelise(dpk["r_edges_mm"], dpk["electron_kev"], sp, electron_size, rho, seed=1)
    photon = _voxelise(dpk["r_edges_mm"], dpk["photon_kev"], sp, photon_size, rho, seed=2)
    kernel = Kernel(name, sp, electron, photon, rho, 0.0, "derived",
                    {"method": "radial dose-point kernels (ompmc) averaged over source/target voxel pairs",
                     "electron_size": electron_size, "photon_size": photon_size,
                     "dpk_date": dpk.get("date"), "ompmc_version": dpk.get("ompmc_version")})
    kernel.photon_absorbed_kev = kernel.energy_kev("photon")
    return kernel


def _derived(name: str, spacing, electron_size: int, photon_size: int) -> Kernel:
    return _copy(_derive_cached(name, tuple(round(s, 6) for s in spacing), electron_size, photon_size))


def derived_cache_path(name: str, spacing: Sequence[float], electron_size: int, photon_size: int) -> Path:
    """Where the derived kernel of a grid is cached: named by a key of everything it depends on.

    The key hashes the nuclide, spacing (mm), part sizes, the shipped dose-point kernel file's
    bytes and the package version, so a new dose-point kernel or release never reads an old file.

    Parameters
    ----------
    name : str
        The nuclide, ICRP-107 spelling.
    spacing : sequence of float
        (x, y, z) voxel size, mm.
    electron_size, photon_size : int
        Edge lengths, voxels.

    Returns
    -------
    Path
        A ``.npz`` path under ``cache_dir() / "derived"``.
    """
    from .. import __version__

    dpk_file = KERNEL_DIR / f"{name}_dpk.npz"  # missing: derive_kernel says so
    dpk = hashlib.sha256(dpk_file.read_bytes() if dpk_file.exists() else b"").hexdigest()
    key = json.dumps([name, [round(float(s), 6) for s in spacing], int(electron_size), int(photon_size), dpk,
                      __version__])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / "derived" / f"{name}_{_spacing_tag(spacing)}_e{electron_size}_p{photon_size}_{digest}.npz"


@lru_cache(maxsize=8)
def _derive_cached(name: str, spacing, electron_size: int, photon_size: int) -> Kernel:
    """A derived kernel: read from the disk cache (checksums verified), else derived and cached."""
    path = derived_cache_path(name, spacing, electron_size, photon_size)
    if path.is_file():
        try:
            kernel = load_kernel(path, "cached")
            kernel.info["cache_path"] = str(path)
            return kernel
        except DblurDoseError:
            pass  # damaged (checksum, truncation): derived and written again below
    kernel = derive_kernel(name, spacing, electron_size, photon_size)
    try:
        save_kernel(kernel, path)
        kernel.info["cache_path"] = str(path)
    except OSError:  # a read-only or full cache costs time only
        pass
    return kernel
