"""The resolution of a SPECT chain as one number: its Gaussian-equivalent FWHM on the IEC spheres.

A SPECT chain (camera and collimator, views, voxel size, OSEM iterations and subsets, post-filter) blurs
in a way no single number describes: the collimator's response widens with depth, OSEM's resolution grows
with its updates and differs between hot and warm objects, the post-filter adds its own. What the dose
rate of a lesion suffers from is how much of its activity the chain loses. So the chain is measured as a
medical physicist measures recovery coefficients: the sphere phantom (:mod:`.spheres`) is imaged through
the chain without Poisson noise (the expected counts, reconstructed as the chain reconstructs them), each
sphere's recovery coefficient (mean reconstructed over true activity concentration) is read on the CT grid,
and the chain's resolution is the FWHM (mm) of the ideal Gaussian system whose recovery coefficients
match those best (least squares over the spheres). Per sphere, the FWHM that matches that sphere alone
says how far one Gaussian describes the chain.

The number places any chain, inside the training mix or not, on one axis: that of the ``fwhm=F`` chains
of the sphere evaluation, on which the CNN's recovery can be read against the input's resolution.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ..errors import DblurDoseError
from ..io.volume import Volume
from ..physics.deconvolution import FWHM_RANGE_MM
from .spheres import SpherePhantom, chain_acquisition, chain_settings, sphere_phantom, sphere_spect

#: the Gaussian FWHMs (mm) on which the recovery coefficients are tabulated and interpolated
FWHM_GRID_MM = tuple(float(f) for f in np.arange(FWHM_RANGE_MM[0], FWHM_RANGE_MM[1] + 0.5, 0.5))


def recovery_coefficients(image: np.ndarray, phantom: SpherePhantom) -> dict[str, float]:
    """Each sphere's recovery coefficient: mean activity concentration of ``image`` (Bq/mL, the phantom's
    CT grid) in the sphere over the true one (dimensionless; 1 is full recovery)."""
    true = phantom.activity.array
    return {name: float(image[mask].mean(dtype=np.float64) / true[mask].mean(dtype=np.float64))
            for name, mask in phantom.spheres.items()}


def noise_free_spect(phantom: SpherePhantom, chain: str | dict) -> Volume:
    """The chain's image (Bq/mL, CT grid) of the phantom's expected counts, without Poisson noise.

    The expected photopeak counts (primary and scatter) are reconstructed with the expected scatter as the
    additive term, as the chain reconstructs its data; the result does not depend on the count level (the
    reconstruction is equivariant to it). An ideal ``fwhm=F`` chain gives the Gaussian-blurred activity.
    """
    settings = chain_settings(chain)
    if "fwhm_mm" in settings:
        return sphere_spect(phantom, settings)[0]
    from ..geometry.resample import resample_activity
    from ..simulation.spect import simulate_projections

    acq, density = chain_acquisition(phantom, settings)
    sim = simulate_projections(phantom.activity, density, 1e7, acq)
    image = sim.reconstruct(sim.primary + sim.scatter, sim.scatter)
    return resample_activity(image, phantom.hu)


def gaussian_recovery_table(phantom: SpherePhantom, fwhm_mm: Sequence[float] = FWHM_GRID_MM) -> np.ndarray:
    """Recovery coefficients of the ideal Gaussian systems: array [FWHM, sphere] (spheres in the phantom's
    order) for the FWHMs ``fwhm_mm`` (mm, increasing)."""
    return np.array([list(recovery_coefficients(sphere_spect(phantom, {"fwhm_mm": float(f)})[0].array,
                                                phantom).values()) for f in fwhm_mm])


def _match(target: np.ndarray, table: np.ndarray, grid: np.ndarray) -> float:
    """The FWHM (mm) whose tabulated recovery coefficients are nearest ``target`` (least squares), found on
    a 0.01 mm grid by linear interpolation of the table; NaN at the grid's ends (outside what it covers)."""
    fine = np.arange(grid[0], grid[-1] + 1e-9, 0.01)
    curves = np.stack([np.interp(fine, grid, table[:, k]) for k in range(table.shape[1])], axis=1)
    best = int(np.argmin(((curves - target) ** 2).sum(axis=1)))
    return float("nan") if best in (0, len(fine) - 1) else float(fine[best])


def _fit(target: np.ndarray, table: np.ndarray, names: Sequence) -> dict:
    """Recovery coefficients ``target`` (one per column of ``table``, named ``names``) matched to the Gaussian
    table: the FWHM (mm; NaN outside the grid), per sphere the FWHM matching it alone, and the rms misfit."""
    grid = np.asarray(FWHM_GRID_MM)
    fwhm = _match(target, table, grid)
    # beyond the grid a small sphere's recovery stops falling (its neighbours spill in), so a sphere alone can
    # match a FWHM inside it: outside the grid no sphere is matched
    per_sphere = {name: _match(target[k:k + 1], table[:, k:k + 1], grid) if math.isfinite(fwhm) else float("nan")
                  for k, name in enumerate(names)}
    matched = (np.array([np.interp(fwhm, grid, table[:, k]) for k in range(len(target))])
               if math.isfinite(fwhm) else np.full(len(target), np.nan))
    return {"fwhm_mm": fwhm, "per_sphere_mm": per_sphere,
            "rms_recovery_misfit": float(np.sqrt(np.mean((target - matched) ** 2)))}


def gaussian_equivalent_fwhm(chain: str | dict, phantom: SpherePhantom | None = None,
                             table: np.ndarray | None = None) -> dict:
    """The chain's Gaussian-equivalent FWHM on the IEC spheres (module docstring).

    Parameters
    ----------
    chain : str or dict
        A SPECT chain (:func:`~DblurDoseLib.evaluation.spheres.chain_settings`).
    phantom : SpherePhantom, optional
        The sphere phantom (default: 8:1, :func:`~DblurDoseLib.evaluation.spheres.sphere_phantom`).
    table : np.ndarray, optional
        :func:`gaussian_recovery_table` of that phantom on :data:`FWHM_GRID_MM`, when already computed (it
        takes seconds; several chains can share it).

    Returns
    -------
    dict
        ``fwhm_mm``: the FWHM (mm) that matches all spheres' recovery coefficients best (NaN outside 1-40 mm);
        ``per_sphere_mm``: sphere -> the FWHM that matches that sphere alone (NaN where no Gaussian of 1-40 mm
        does, such as a sphere recovered above 1 by OSEM's edge overshoot, and for every sphere when the chain
        lies outside 1-40 mm); ``recovery``: sphere -> the
        chain's recovery coefficient; ``rms_recovery_misfit``: root mean square of the chain's recovery
        coefficients minus those of the matched Gaussian (how far one Gaussian describes the chain).
    """
    phantom = sphere_phantom() if phantom is None else phantom
    grid = np.asarray(FWHM_GRID_MM)
    table = gaussian_recovery_table(phantom) if table is None else np.asarray(table)
    if table.shape != (len(grid), len(phantom.spheres)):
        raise DblurDoseError(f"a recovery table of shape {table.shape} does not belong to this phantom "
                             f"({len(grid)} FWHMs x {len(phantom.spheres)} spheres)")
    recovery = recovery_coefficients(noise_free_spect(phantom, chain).array, phantom)
    return {**_fit(np.array(list(recovery.values())), table, list(recovery)), "recovery": recovery}


def chain_resolution(chain: dict, table: dict, saved: Callable[[], object] | None = None) -> float:
    """A data set's chain's Gaussian-equivalent FWHM (mm), looked up in ``table`` (a data set's
    ``resolution.json``: :func:`~DblurDoseLib.io.dataset.resolution_key` -> its record) or measured
    (:func:`gaussian_equivalent_fwhm`, minutes) and added to it; ``saved`` is then called, so that a long run
    keeps each measurement. NaN where the chain lies outside 1-40 mm."""
    from ..io.dataset import recorded_fwhm, resolution_key

    key = resolution_key(chain)
    if key not in table:
        measured = gaussian_equivalent_fwhm(chain)
        table[key] = {"chain": chain, **{k: v for k, v in measured.items() if k != "recovery"}}
        if saved is not None:
            saved()
    return recorded_fwhm(table, chain)


def fwhm_from_recovery(recovery: dict[float, float], contrast: float = 8.0) -> dict:
    """The Gaussian-equivalent FWHM of a camera and reconstruction from the recovery coefficients a medical
    physicist measured on the NEMA IEC body phantom: what ``dose --spect-fwhm`` asks for.

    Parameters
    ----------
    recovery : dict of float to float
        Sphere inner diameter (mm; among :data:`~.spheres.SPHERE_DIAMETERS_MM`) -> its recovery coefficient:
        mean reconstructed activity concentration in the sphere's true volume over the true one (RC_mean,
        dimensionless). Two spheres at least; all six give the best estimate.
    contrast : float
        Sphere to background activity concentration ratio of the measurement (the background's spill-in
        raises a sphere's RC more at low contrast).

    Returns
    -------
    dict
        ``fwhm_mm`` (NaN outside 1-40 mm), ``per_sphere_mm`` (diameter -> the FWHM matching that sphere alone),
        ``rms_recovery_misfit`` (how far one Gaussian describes the measurement).
    """
    from .spheres import SPHERE_DIAMETERS_MM

    known = {float(d) for d in SPHERE_DIAMETERS_MM}
    unknown = sorted(float(d) for d in recovery if float(d) not in known)
    if unknown or len(recovery) < 2:
        raise DblurDoseError(f"give the recovery coefficients of two or more IEC spheres by inner diameter, among "
                             f"{', '.join(f'{d:g}' for d in sorted(known))} mm (got {sorted(recovery) or 'none'})")
    if not all(math.isfinite(v) and 0 < v < 2 for v in recovery.values()):
        raise DblurDoseError("recovery coefficients are ratios of measured to true concentration, between 0 and 2; "
                             f"got {sorted(recovery.values())}")
    phantom = sphere_phantom(contrast=contrast)
    diameters = sorted(float(d) for d in recovery)
    names = list(phantom.spheres)
    table = gaussian_recovery_table(phantom)[:, [names.index(f"sphere_{d:g}mm") for d in diameters]]
    target = np.array([recovery[d] for d in diameters], dtype=np.float64)
    return _fit(target, table, diameters)


def _parse_recovery(items: Sequence[str]) -> dict[float, float]:
    """``["10=0.21", "13=0.33", ...]`` -> {10.0: 0.21, 13.0: 0.33, ...}; one-line refusal otherwise."""
    out = {}
    for item in items:
        try:
            d, rc = (float(v) for v in item.split("="))
        except ValueError:
            raise DblurDoseError(f"cannot read the recovery coefficient {item!r}; write DIAMETER=RC, e.g. 37=0.78") \
                from None
        out[d] = rc
    return out


def add_resolution_arguments(sub) -> None:
    """The ``resolution`` command: a SPECT's Gaussian-equivalent FWHM from IEC recovery coefficients or a chain."""
    p = sub.add_parser("resolution", help="a SPECT's Gaussian-equivalent FWHM (for dose --spect-fwhm), from measured "
                                          "IEC sphere recovery coefficients or by simulating a camera and "
                                          "reconstruction")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--recovery", nargs="+", metavar="D=RC",
                   help="measured RC_mean of the IEC spheres by inner diameter in mm, e.g. 10=0.21 13=0.33 17=0.47 "
                        "22=0.60 28=0.70 37=0.79 (two or more)")
    g.add_argument("--chain", metavar="NAME|JSON",
                   help="simulate a chain: in-mix, in-mix-sharp, out-of-mix, or JSON such as '{\"camera\": "
                        "\"siemens-intevo-me\", \"n_views\": 120, \"voxel_mm\": 4.8, \"iterations\": 8, "
                        "\"subsets\": 4, \"postfilter_fwhm_mm\": 0}' (minutes on a CPU)")
    p.add_argument("--contrast", type=float, default=8.0,
                   help="sphere to background ratio of the measurement (default 8; --recovery only)")
    p.set_defaults(func=cmd_resolution)


def cmd_resolution(args) -> int:
    """``dblurdose resolution``: prints the FWHM (mm) and, per sphere, the FWHM matching it alone."""
    import json

    if args.recovery:
        result = fwhm_from_recovery(_parse_recovery(args.recovery), args.contrast)
    else:
        try:
            chain = json.loads(args.chain) if args.chain.lstrip().startswith("{") else args.chain
        except json.JSONDecodeError as exc:
            raise DblurDoseError(f"cannot read the chain {args.chain!r} as JSON ({exc.msg})") from None
        result = gaussian_equivalent_fwhm(chain)
    if not math.isfinite(result["fwhm_mm"]):
        raise DblurDoseError("no Gaussian of 1-40 mm matches these recovery coefficients; check that they are "
                             "RC_mean values (mean over the sphere's true volume), not RC_max")
    per = ", ".join(f"{k}: {v:.1f}" for k, v in result["per_sphere_mm"].items() if math.isfinite(v))
    print(f"Gaussian-equivalent FWHM {result['fwhm_mm']:.1f} mm (per sphere: {per}; rms misfit of the recovery "
          f"coefficients {result['rms_recovery_misfit']:.3f})")
    return 0


__all__ = ["FWHM_GRID_MM", "add_resolution_arguments", "chain_resolution", "cmd_resolution", "fwhm_from_recovery", "gaussian_equivalent_fwhm", "gaussian_recovery_table", "noise_free_spect",
           "recovery_coefficients"]
