"""Building dose-voxel kernels and radial dose-point kernels by Monte Carlo (ompmc, optional extra).

Offline: the kernels shipped in ``data/kernels`` were made with these functions (see
``data/kernels/README.md`` for the commands); at run time :mod:`~DblurDoseLib.physics.kernels`
reads them, or derives kernels for other grids from the dose-point kernels without ompmc.
``dblurdose kernel --build`` calls :func:`build_kernel` for a grid of the user's choosing.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import DblurDoseError
from .kernels import (
    FAR_FIELD_MM,
    MEDIUM_DENSITY,
    MGY_PER_KEV_PER_G,
    WORLD_HALF_CM,
    Kernel,
    _check_spacing,
    _spacing_tag,
    cache_dir,
    default_sizes,
    save_kernel,
    symmetrise,
)
from .nuclides import canonical_name, get_nuclide, sample_decay_particles


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
    spacing_mm: Sequence[float] = (0.98, 0.98, 3.0),
    electron_size: int | None = None,
    photon_size: int | None = None,
    n_decays: int = 2_000_000,
    seed: int = 1,
    progress: Callable[[float, str], object] | None = None,
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

    Parameters
    ----------
    nuclide : str
        A supported nuclide, any spelling.
    spacing_mm : sequence of float
        (x, y, z) voxel size, mm.
    electron_size, photon_size : int, optional
        Edge lengths (odd, voxels); :func:`~DblurDoseLib.physics.kernels.default_sizes` where None.
    n_decays : int
        Decays simulated for the electron part (at least 1000).
    seed : int
        Random seed (the same seed and settings give the same kernel).
    progress : callable, optional
        ``progress(fraction, message)`` along the way.
    photon_decays : int, optional
        Decays simulated for the photon part; default 25 x ``n_decays``.
    threads : int, optional
        Transport threads; None for ompmc's default.
    save : bool
        Write the kernel to :func:`~DblurDoseLib.physics.kernels.cache_dir` (its path goes to
        ``kernel.info["cache_path"]``).

    Returns
    -------
    Kernel
        Source 'built', mGy per decay in soft tissue (1.04 g/cm3).

    Raises
    ------
    DblurDoseError
        Without ompmc, for an unsupported nuclide, a bad spacing, even or non-positive sizes, or
        fewer than 1000 decays.
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
    mass_g = MEDIUM_DENSITY * float(np.prod(np.array(sp) / 10.0))

    def stage(lo, hi, label):
        if progress is None:
            return None
        return lambda f, m: progress(lo + (hi - lo) * f, f"{label}: {m}")

    electron, res_e = _electron_part(nuc, sp, electron_size, n_decays, seed, threads, stage(0.0, 0.5, "electron kernel"))
    photon, photon_absorbed_kev, r0, res_p = _photon_part(nuc, sp, photon_size, photon_decays, seed, threads,
                                                          stage(0.5, 1.0, "photon kernel"))
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


def _electron_part(nuc, sp: tuple[float, float, float], size: int, n_decays: int, seed: int, threads: int | None,
                   progress) -> tuple[np.ndarray, object]:
    """Electron kernel (mGy per decay, ``size``^3, symmetrised) from a centre-voxel source in a tissue
    block one voxel wider on each side; returns it and the transport result."""
    h_cm = np.array(sp) / 10.0
    mass_g = MEDIUM_DENSITY * float(np.prod(h_cm))
    m = size + 2
    bounds = [(np.arange(m + 1) - m / 2.0) * h for h in h_cm]
    energy, local, res = _point_source_run(bounds, MEDIUM_DENSITY, (-h_cm / 2, h_cm / 2), nuc, "electron", n_decays,
                                           seed, threads, progress)
    energy = energy[1:-1, 1:-1, 1:-1].copy()
    energy[(size // 2,) * 3] += local
    return symmetrise(energy, sp) * 1000.0 / n_decays / mass_g * MGY_PER_KEV_PER_G, res


def _photon_part(nuc, sp: tuple[float, float, float], size: int, n_decays: int, seed: int, threads: int | None,
                 progress) -> tuple[np.ndarray, float, float, object]:
    """Photon kernel (mGy per decay, ``size``^3) in a tissue block reaching 30 cm from the source.

    Symmetrised; beyond ``r0`` (mm) blended over 5 mm into a radial model fitted to the same run.
    Returns the kernel, the photon energy absorbed within it (keV per decay), ``r0`` and the
    transport result.
    """
    h_cm = np.array(sp) / 10.0
    mass_g = MEDIUM_DENSITY * float(np.prod(h_cm))
    bounds = [_padded_bounds(size, h, max(WORLD_HALF_CM, size * h / 2 + 10.0)) for h in h_cm]
    energy, local, res = _point_source_run(bounds, MEDIUM_DENSITY, (-h_cm / 2, h_cm / 2), nuc, "photon", n_decays,
                                           seed, threads, progress)
    cut = [int(np.searchsorted(b, -size * h / 2 - 1e-9)) for b, h in zip(bounds[::-1], h_cm[::-1])]
    energy = energy[cut[0]:cut[0] + size, cut[1]:cut[1] + size, cut[2]:cut[2] + size].copy()
    energy[(size // 2,) * 3] += local
    absorbed_kev = float(energy.sum()) * 1000.0 / n_decays
    raw = symmetrise(energy, sp) * 1000.0 / n_decays / mass_g * MGY_PER_KEV_PER_G
    r = _voxel_radii(size, sp)
    r0 = max(FAR_FIELD_MM, 4.0 * max(sp))
    photon = raw
    if r.max() > r0 + 10.0:
        model = _radial_fit(raw, r, r0)
        blend = np.clip((r - r0) / 5.0, 0.0, 1.0)  # 5 mm ramp from MC to model
        with np.errstate(divide="ignore", invalid="ignore"):
            photon = np.where(r > r0, (1 - blend) * raw + blend * model(np.maximum(r, 1e-9)), raw)
    return photon, absorbed_kev, r0, res


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
    progress: Callable[[float, str], object] | None = None,
) -> dict:
    """Radial dose-point kernels by Monte Carlo (ompmc), electron and photon parts.

    Energy per decay (keV) absorbed in each spherical shell around a point source in ICRU tissue
    of 1.04 g/cm3.

    Cells grow with the distance from the source, so that the steep near field is resolved: for
    electrons 5 um at the source, 8% of the distance, at most 50 um, over +-2.5 mm (all Lu-177
    electrons stop within 1.8 mm); for photons 50 um, 8% of the distance, out to +-40 cm (an
    infinite medium for the 350 mm the table covers). Cell energies go to the shells of 2x2x2
    points in each cell. Source: uniform in the centre cell (5 or 50 um across).

    Why fine cells: a third of the electron energy is deposited within 75 um of the source; with
    50 um cells, spreading it evenly over the cells made the centre voxel of a 1x1x3 mm kernel 1%
    low against direct voxel Monte Carlo.

    Parameters
    ----------
    nuclide : str
        A supported nuclide, any spelling.
    electron_decays, photon_decays : int
        Decays simulated for each part.
    seed : int
        Random seed.
    threads : int, optional
        Transport threads; None for ompmc's default.
    progress : callable, optional
        ``progress(fraction, message)`` along the way.

    Returns
    -------
    dict
        ``r_edges_mm`` (shell edges, mm), ``electron_kev`` and ``photon_kev`` (keV per decay per
        shell), the decays and seconds of each part, ``nuclide``, ``medium_density`` (g/cm3),
        ``seed``, ``ompmc_version``, ``date``.

    Raises
    ------
    DblurDoseError
        Without ompmc, or for an unsupported nuclide.
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
    """Write dose-point kernels from :func:`build_point_kernels` as a compressed ``.npz``.

    The file :func:`~DblurDoseLib.physics.kernels.load_point_kernels` reads (``data/kernels``).

    Parameters
    ----------
    dpk : dict
        ``r_edges_mm`` (mm), ``electron_kev`` and ``photon_kev`` (keV per decay per shell) arrays;
        every entry that is not an array is stored as JSON metadata.
    path : str or os.PathLike
        The ``.npz`` file (replaced if it exists).

    Returns
    -------
    Path
        ``path``.
    """
    meta = {k: v for k, v in dpk.items() if not isinstance(v, np.ndarray)}
    np.savez_compressed(path, r_edges_mm=dpk["r_edges_mm"], electron_kev=dpk["electron_kev"],
                        photon_kev=dpk["photon_kev"], meta=np.array(json.dumps(meta)))
    return Path(path)


