"""Lu-177 dose-voxel kernels (DVK): mGy per decay in soft tissue (1.04 g/cm3), electron and photon
parts apart, arrays [z, y, x], odd-sized and centred on the source voxel.

A kernel value is the mean dose in a voxel per decay distributed uniformly in the centre voxel,
in an infinite homogeneous medium. Where kernels come from, in the order :func:`get_kernel` tries:

``shipped``
    Built by Monte Carlo (:func:`build_kernel`, ompmc) for the paper's 0.98x0.98x3 mm grid and
    the 4.7952 and 4.8 mm SPECT grids; stored in ``data/kernels`` (one octant: they are
    symmetric). See ``data/kernels/README.md`` for how each was made.
``cached``
    Built by :func:`build_kernel` on request for another grid, or derived earlier (below), kept
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

import datetime
import hashlib
import json
import math
import os
from dataclasses import dataclass, field, replace
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

from .. import DATA_DIR
from ..errors import DblurDoseError
from .nuclides import canonical_name, get_nuclide, sample_decay_particles

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
        return self.medium_density * float(np.prod(self.spacing)) / 1000.0

    def total(self) -> np.ndarray:
        """Electron added into the centre of photon, on the larger of the two supports."""
        from .dvk import total_kernel

        return total_kernel(self.electron, self.photon)

    def part(self, part: str = "all") -> np.ndarray:
        if part not in PARTS:
            raise DblurDoseError(f"unknown kernel part {part!r}; choose from {', '.join(PARTS)}")
        return {"all": self.total, "electron": lambda: self.electron, "photon": lambda: self.photon}[part]()

    def energy_kev(self, part: str = "all") -> float:
        """Energy absorbed within the kernel per decay, keV: sum(kernel) x voxel mass."""
        return float(np.sum(self.part(part), dtype=np.float64)) * self.voxel_mass_g / MGY_PER_KEV_PER_G


def _centred_slices(outer, inner) -> tuple[slice, ...]:
    return tuple(slice((o - i) // 2, (o - i) // 2 + i) for o, i in zip(outer, inner))


def resize_centred(array: np.ndarray, size: int) -> np.ndarray:
    """Crop or zero-pad a centred odd-sized kernel to ``size``^3."""
    if size < 1 or size % 2 == 0:
        raise DblurDoseError(f"the kernel size must be a positive odd number, got {size}")
    out = np.zeros((size,) * 3, dtype=np.float32)
    common = tuple(min(size, n) for n in array.shape)
    out[_centred_slices(out.shape, common)] = array[_centred_slices(array.shape, common)]
    return out


def default_sizes(spacing) -> tuple[int, int]:
    """Default (electron, photon) edge lengths for a grid: 9/99 at 0.98x0.98x3 mm, 5/51 at 4.8 mm.

    Electron: odd, covering ELECTRON_REACH_MM beyond the source voxel along the finest axis.
    Photon: odd, about PHOTON_HALF_EXTENT_MM half-width along the finest axis, at most 99.
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
    """Read a kernel written by :func:`save_kernel`, verifying its checksum (a damaged file is refused)."""
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
    name = canonical_name(nuclide)
    return [sp for _, nuc, sp in _catalogue(str(KERNEL_DIR), KERNEL_DIR.stat().st_mtime) if nuc == name]


# --- public entry points ---------------------------------------------------------------------------


def get_kernel(nuclide: str = "Lu-177", spacing=(0.98, 0.98, 3.0), size: int | None = None) -> Kernel:
    """The kernel pair for a grid: shipped, cached (built earlier), or derived (never needs ompmc).

    ``size``: edge length (odd) of the photon part; the electron part is cropped to it if larger.
    A size larger than a shipped kernel's gives a derived kernel of that size.
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


def write_kernel_nrrd(kernel: Kernel, path, part: str = "all", size: int | None = None, overwrite: bool = False):
    """Write one part ('all', 'electron', 'photon') as a centred NRRD (N^3 if ``size`` is given).

    The centre voxel sits at the origin; spacing in the header; units mGy/decay in the metadata.
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


# --- building with ompmc -----------------------------------------------------------------------------


def symmetrise(array: np.ndarray, spacing) -> np.ndarray:
    """Average over the mirror (and, for equal spacings, axis-swap) symmetries of a centred kernel."""
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


def _padded_bounds(n: int, h_cm: float, world_cm: float) -> np.ndarray:
    """Voxel bounds (cm) centred on 0: n voxels of h, then cells growing by 1.5x out to world_cm."""
    inner = (np.arange(n + 1) - n / 2.0) * h_cm
    outer, edge, width = [], inner[-1], h_cm
    while edge < world_cm - 1e-9:
        width *= 1.5
        edge += width
        if world_cm - edge < 0.5 * width:  # no sliver at the end
            edge = world_cm
        outer.append(edge)
    outer = np.array(outer)
    return np.concatenate([-outer[::-1], inner, outer])


def _point_source_run(bounds, medium_density, source_box_cm, nuclide, parts, n_decays, seed, threads, progress,
                      max_particles=20_000_000):
    """Energy (MeV, totals) per cell from ``n_decays`` decays uniform in a box, and the energy
    below the cut-off (MeV, deposited in the source box)."""
    from .montecarlo import (
        SOFT_TISSUE_MEDIUM,
        ParticleBatch,
        TransportGeometry,
        isotropic_directions,
        transport,
    )

    xb, yb, zb = bounds
    shape = (zb.size - 1, yb.size - 1, xb.size - 1)
    geometry = TransportGeometry(xb, yb, zb, np.full(shape, float(medium_density)), np.ones(shape, np.int32),
                                 [SOFT_TISSUE_MEDIUM])
    lo, hi = (np.asarray(b, dtype=np.float64) for b in source_box_cm)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, {"electron": 1, "photon": 2}[parts]]))
    local = [0.0]
    per_line = {"electron": 1.16, "photon": 0.22}[parts]  # transported particles per decay
    per_chunk = max(1, min(int(max_particles / per_line), 30_000_000))  # per-decay arrays stay < 1 GB
    n_chunks = max(1, -(-int(n_decays) // per_chunk))

    def batches():
        for start in range(0, int(n_decays), per_chunk):
            n = min(per_chunk, int(n_decays) - start)
            p = sample_decay_particles(nuclide, n, rng, parts=parts)
            local[0] += float(p.local_mev.sum())
            # a start point per particle: for a kernel the particles of one decay need not share one
            pos = (lo + rng.random((p.decay.size, 3)) * (hi - lo)).astype(np.float32)
            yield ParticleBatch(p.kind, p.energy_mev.astype(np.float32), pos, isotropic_directions(p.decay.size, rng),
                                np.ones(p.decay.size, bool))

    result = transport(geometry, batches(), seed=seed + (0 if parts == "electron" else 7919), n_chunks=n_chunks,
                       threads=threads, progress=progress)
    return result.energy_mev, local[0], result


def _radial_fit(values: np.ndarray, r: np.ndarray, r_min: float, degree: int = 5):
    """Smooth model of a photon kernel's far field: log(K r^2) as a polynomial in r, fitted to
    shell means (1 mm shells) of the voxels beyond r_min. Returns a callable K(r)."""
    sel = r > r_min
    r_s, v_s = r[sel], values[sel]
    idx = np.floor(r_s - r_min).astype(np.int64)  # 1 mm shells
    n = np.bincount(idx)
    v_sum = np.bincount(idx, weights=v_s)
    ok = (n > 0) & (v_sum > 0)
    r_mean = np.bincount(idx, weights=r_s)[ok] / n[ok]
    v_mean = v_sum[ok] / n[ok]
    y = np.log(v_mean * r_mean**2)
    weight = np.sqrt(n[ok] * v_mean / v_mean.max())  # ~1/sigma of log for counting noise
    scale = (r_min, float(r_mean.max()))
    t = (r_mean - scale[0]) / (scale[1] - scale[0])
    coef = np.polynomial.polynomial.polyfit(t, y, degree, w=weight)

    def model(rr):
        tt = (np.asarray(rr, dtype=np.float64) - scale[0]) / (scale[1] - scale[0])
        return np.exp(np.polynomial.polynomial.polyval(tt, coef)) / np.asarray(rr, dtype=np.float64) ** 2

    return model


def _voxel_radii(size: int, spacing) -> np.ndarray:
    c = size // 2
    ax = [(np.arange(size) - c) * s for s in spacing]  # x, y, z offsets in mm
    z, y, x = np.meshgrid(ax[2], ax[1], ax[0], indexing="ij")
    return np.sqrt(x * x + y * y + z * z)


def build_kernel(
    nuclide: str = "Lu-177",
    spacing_mm=(0.98, 0.98, 3.0),
    electron_size: int | None = None,
    photon_size: int | None = None,
    n_decays: int = 2_000_000,
    seed: int = 1,
    progress=None,
    *,
    photon_decays: int | None = None,
    threads: int | None = None,
    save: bool = True,
) -> Kernel:
    """Build a kernel pair by Monte Carlo (ompmc) for a grid; cached for :func:`get_kernel`.

    Electron part: ``n_decays`` decays' electrons from the centre voxel of a tissue block of
    ``electron_size``^3 voxels (+1 margin). Photon part: ``photon_decays`` decays' photons
    (default 25 x ``n_decays``: a decay has 0.21 photons above 10 keV) in ``photon_size``^3 voxels
    inside a tissue block reaching 30 cm from the source (backscatter of an infinite medium).
    Both are symmetrised; the photon part beyond 20 mm is replaced by a radial model fitted to
    the same run (log(K r^2) polynomial in r), so the far field is not raw noise.
    ``photon_absorbed_kev`` is the MC's photon energy absorbed within the photon kernel's extent.
    """
    from .montecarlo import ompmc_version, require_ompmc

    require_ompmc()
    name = canonical_name(nuclide)
    nuc = get_nuclide(name)
    sp = _check_spacing(spacing_mm)
    de, dp = default_sizes(sp)
    electron_size, photon_size = int(electron_size or de), int(photon_size or dp)
    for n in (electron_size, photon_size):
        if n < 1 or n % 2 == 0:
            raise DblurDoseError(f"kernel sizes must be positive odd numbers, got {n}")
    n_decays = int(n_decays)
    photon_decays = int(photon_decays or 25 * n_decays)
    if n_decays < 1000:
        raise DblurDoseError("build a kernel from at least 1000 decays")
    h_cm = np.array(sp) / 10.0
    centre_box = (-h_cm / 2, h_cm / 2)
    mass_g = MEDIUM_DENSITY * float(np.prod(h_cm))

    def stage(lo, hi, label):
        if progress is None:
            return None
        return lambda f, m: progress(lo + (hi - lo) * f, f"{label}: {m}")

    # electrons
    m = electron_size + 2
    bounds = [(np.arange(m + 1) - m / 2.0) * h for h in h_cm]
    energy, local, res_e = _point_source_run(bounds, MEDIUM_DENSITY, centre_box, nuc, "electron", n_decays, seed,
                                             threads, stage(0.0, 0.5, "electron kernel"))
    energy = energy[1:-1, 1:-1, 1:-1].copy()
    energy[(electron_size // 2,) * 3] += local
    electron = symmetrise(energy, sp) * 1000.0 / n_decays / mass_g * MGY_PER_KEV_PER_G

    # photons
    bounds = [_padded_bounds(photon_size, h, max(WORLD_HALF_CM, photon_size * h / 2 + 10.0)) for h in h_cm]
    energy, local, res_p = _point_source_run(bounds, MEDIUM_DENSITY, centre_box, nuc, "photon", photon_decays, seed,
                                             threads, stage(0.5, 1.0, "photon kernel"))
    cut = [int(np.searchsorted(b, -photon_size * h / 2 - 1e-9)) for b, h in zip(bounds[::-1], h_cm[::-1])]
    energy = energy[cut[0]:cut[0] + photon_size, cut[1]:cut[1] + photon_size, cut[2]:cut[2] + photon_size].copy()
    energy[(photon_size // 2,) * 3] += local
    photon_absorbed_kev = float(energy.sum()) * 1000.0 / photon_decays
    raw = symmetrise(energy, sp) * 1000.0 / photon_decays / mass_g * MGY_PER_KEV_PER_G
    r = _voxel_radii(photon_size, sp)
    r0 = max(FAR_FIELD_MM, 4.0 * max(sp))
    photon = raw
    if r.max() > r0 + 10.0:
        model = _radial_fit(raw, r, r0)
        blend = np.clip((r - r0) / 5.0, 0.0, 1.0)  # 5 mm ramp from MC to model
        with np.errstate(divide="ignore", invalid="ignore"):
            photon = np.where(r > r0, (1 - blend) * raw + blend * model(np.maximum(r, 1e-9)), raw)

    kernel = Kernel(
        nuclide=name, spacing=sp, electron=electron.astype(np.float32), photon=photon.astype(np.float32),
        medium_density=MEDIUM_DENSITY, photon_absorbed_kev=photon_absorbed_kev, source="built",
        info={
            "method": "ompmc Monte Carlo, centre-voxel source in ICRU tissue; symmetrised; photon far field "
                      f"(r > {r0:g} mm) from a fitted radial model",
            "electron_decays": n_decays, "photon_decays": photon_decays, "seed": int(seed),
            "ompmc_version": ompmc_version(), "date": datetime.date.today().isoformat(),
            "electron_size": electron_size, "photon_size": photon_size,
            "electron_absorbed_kev_mc": float(electron.sum()) * mass_g / MGY_PER_KEV_PER_G,
            "photon_absorbed_kev_mc": photon_absorbed_kev,
            "seconds": round(res_e.seconds + res_p.seconds, 1),
        },
    )
    if save:
        path = cache_dir() / f"{name}_{_spacing_tag(sp)}.npz"
        save_kernel(kernel, path)
        kernel.info["cache_path"] = str(path)
    return kernel


# --- radial dose-point kernels and kernels derived from them ---------------------------------------

def _dpk_edges() -> np.ndarray:
    """Shell edges (mm) of the dose-point kernels: 5 um to 0.1 mm, 25 um to 5 mm, then 2% wider
    each out to 350 mm."""
    finest = np.arange(0.0, 0.1, 0.005)
    fine = np.arange(0.1, 5.0 + 1e-9, 0.025)
    coarse = 5.0 * 1.02 ** np.arange(1, int(np.ceil(np.log(350.0 / 5.0) / np.log(1.02))) + 1)
    return np.concatenate([finest, fine, coarse])


def _radial_histogram(energy: np.ndarray, bounds, edges_mm: np.ndarray, sub: int = 2) -> np.ndarray:
    """Energy per spherical shell around 0 from energy per cell ([z,y,x]; bounds x,y,z in cm),
    each cell's energy spread evenly over sub^3 points inside it."""
    out = np.zeros(edges_mm.size - 1)
    frac = (np.arange(sub) + 0.5) / sub

    def points(b):
        b = np.asarray(b) * 10.0
        return (b[:-1, None] + np.diff(b)[:, None] * frac[None, :]).ravel()

    px, py, pz = (points(b) for b in bounds)
    r_xy2 = py[:, None] ** 2 + px[None, :] ** 2
    for k, z in enumerate(pz):
        e = np.repeat(np.repeat(energy[k // sub], sub, axis=0), sub, axis=1) / sub**3
        r = np.sqrt(r_xy2 + z * z)
        idx = np.searchsorted(edges_mm, r.ravel(), side="right") - 1
        ok = (idx >= 0) & (idx < out.size)
        out += np.bincount(idx[ok], weights=e.ravel()[ok], minlength=out.size)
    return out


def _growing_bounds(h0_cm: float, growth: float, max_width_cm: float, world_cm: float) -> np.ndarray:
    """Bounds centred on 0 (0 at the centre of a cell h0 wide): each further cell is (growth - 1)
    times its distance from 0 wide, at least h0 and at most max_width, out to world."""
    edges, edge = [], h0_cm / 2.0
    while edge < world_cm - 1e-12:
        width = min(max(h0_cm, edge * (growth - 1.0)), max_width_cm)
        edge = min(edge + width, world_cm)
        edges.append(edge)
    half = np.concatenate([[h0_cm / 2.0], edges])
    return np.concatenate([-half[::-1], half])


def build_point_kernels(
    nuclide: str = "Lu-177",
    electron_decays: int = 2_000_000,
    photon_decays: int = 100_000_000,
    seed: int = 1,
    threads: int | None = None,
    progress=None,
) -> dict:
    """Radial dose-point kernels by Monte Carlo (ompmc): energy per decay (keV) absorbed in each
    spherical shell around a point source in ICRU tissue of 1.04 g/cm3, electron and photon parts.

    Cells grow with the distance from the source, so that the steep near field is resolved: for
    electrons 5 um at the source, 8% of the distance, at most 50 um, over +-2.5 mm (all Lu-177
    electrons stop within 1.8 mm); for photons 50 um, 8% of the distance, out to +-40 cm (an
    infinite medium for the 350 mm the table covers). Cell energies go to the shells of 2x2x2
    points in each cell. Source: uniform in the centre cell (5 or 50 um across).

    Why fine cells: a third of the electron energy is deposited within 75 um of the source; with
    50 um cells, spreading it evenly over the cells made the centre voxel of a 1x1x3 mm kernel 1%
    low against direct voxel Monte Carlo.
    """
    from .montecarlo import ompmc_version, require_ompmc

    require_ompmc()
    name = canonical_name(nuclide)
    nuc = get_nuclide(name)
    edges = _dpk_edges()
    result = {"r_edges_mm": edges}

    def stage(lo, hi):
        return None if progress is None else (lambda f, m: progress(lo + (hi - lo) * f, m))

    for part, decays, h, max_width, world, span in (
        ("electron", electron_decays, 0.0005, 0.005, 0.25, (0.0, 0.5)),
        ("photon", photon_decays, 0.005, 100.0, 40.0, (0.5, 1.0)),
    ):
        b = _growing_bounds(h, 1.08, max_width, world)
        bounds = [b, b, b]
        energy, local, res = _point_source_run(bounds, MEDIUM_DENSITY, (np.full(3, -h / 2), np.full(3, h / 2)), nuc,
                                               part, int(decays), seed, threads, stage(*span))
        shells = _radial_histogram(energy, bounds, edges)
        shells[0] += local
        result[f"{part}_kev"] = shells * 1000.0 / int(decays)
        result[f"{part}_decays"] = int(decays)
        result[f"{part}_seconds"] = round(res.seconds, 1)
    result.update(nuclide=name, medium_density=MEDIUM_DENSITY, seed=int(seed), ompmc_version=ompmc_version(),
                  date=datetime.date.today().isoformat())
    return result


def save_point_kernels(dpk: dict, path: str | os.PathLike) -> Path:
    meta = {k: v for k, v in dpk.items() if not isinstance(v, np.ndarray)}
    np.savez_compressed(path, r_edges_mm=dpk["r_edges_mm"], electron_kev=dpk["electron_kev"],
                        photon_kev=dpk["photon_kev"], meta=np.array(json.dumps(meta)))
    return Path(path)


@cache
def load_point_kernels(nuclide: str = "Lu-177") -> dict:
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


def derive_kernel(nuclide: str = "Lu-177", spacing=(0.98, 0.98, 3.0), electron_size: int | None = None,
                  photon_size: int | None = None) -> Kernel:
    """A kernel for any grid from the shipped dose-point kernels, without ompmc (a few seconds)."""
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


def derived_cache_path(name: str, spacing, electron_size: int, photon_size: int) -> Path:
    """Where the derived kernel of a grid is cached: named by a key of everything it depends on.

    The key hashes the nuclide, spacing (mm), part sizes, the shipped dose-point kernel file's
    bytes and the package version, so a new dose-point kernel or release never reads an old file.
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
