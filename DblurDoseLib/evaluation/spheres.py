"""A sphere phantom whose true dose rate is known exactly, imaged by any of our SPECT chains.

Six hot spheres of the NEMA IEC body phantom's diameters (10 to 37 mm: 0.5 to 26.5 mL) on a ring in a
water-filled elliptic cylinder (the body's 300 x 230 mm, 180 mm long) with a 3 mm acrylic wall, on a
warm background. In a uniform water-equivalent medium the dose-voxel kernel is the Monte Carlo answer
(it is a Monte Carlo kernel of water), so the DVK of the *true* activity is the true dose rate in the
water: no Monte Carlo run, no label noise (the wall, of another density and no activity, is the one
place where it is the DVK's approximation; no VOI lies within 20 mm of it). What it measures is what the CNN exists for: the dose rate that SPECT's limited
resolution takes out of small hot objects and spills into their surroundings, per sphere size, per
SPECT chain (camera, views, OSEM, post-filter), and whether the correction overshoots beside them.

It is made by none of the data set's phantom generators, and it reaches SPECT chains outside the
training mix (:data:`SPHERE_CHAINS`), so it is one check of generalisation that needs no data set.
It does not test density heterogeneity (lung, bone), which the data set's Monte Carlo truth does.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DblurDoseError
from ..io.volume import Volume
from ..simulation.camera import OUT_OF_MIX

#: sphere inner diameters of the NEMA NU 2 / IEC 61675-1 body phantom, mm
SPHERE_DIAMETERS_MM = (10.0, 13.0, 17.0, 22.0, 28.0, 37.0)
#: the spheres' centres lie on a ring of this radius (mm) in the central transverse plane, as in the IEC phantom
RING_RADIUS_MM = 57.2
#: the body: an elliptic cylinder of these semi-axes (x, y, mm; the IEC body's 300 x 230 mm) and this length (mm)
BODY_SEMI_AXES_MM = (150.0, 115.0)
BODY_LENGTH_MM = 180.0
#: the body's wall: thickness (mm) and CT number (HU) of acrylic (PMMA, about 1.18 g/cm3); it holds no activity
WALL_MM, WALL_HU = 3.0, 120.0
#: the grid: the network's working grid (x, y, z spacing, mm) and a shape (z, y, x) that holds the body
SPACING_MM = (1.96, 1.96, 3.0)
SHAPE = (72, 136, 168)
#: background VOI: water voxels at least this far (mm) from every sphere and from the wall
BACKGROUND_MARGIN_MM = (30.0, 20.0)
#: SPECT chains of the sphere phantom: acquisition and reconstruction per chain. "in-mix": the data set's test
#: phantoms' own chain (Siemens ME, 64 views, 4.8 mm, OSEM 8x4, no filter); "in-mix-sharp": the sharpest of the
#: training mix (GE MEGP, 120 views, 4.4 mm, OSEM 16x8, no filter); "out-of-mix": the data set's out-of-mix
#: reconstruction (Philips MEGP, a collimator never in training, 128 views, 3.9 mm, OSEM 2x16, 10 mm filter).
#: A chain may instead be ``{"fwhm_mm": F}``: an ideal, noise-free imaging system of Gaussian resolution F mm.
SPHERE_CHAINS = {
    "in-mix": {"camera": "siemens-intevo-me", "n_views": 64, "voxel_mm": 4.8, "iterations": 8, "subsets": 4,
               "postfilter_fwhm_mm": 0.0},
    "in-mix-sharp": {"camera": "ge-discovery-670-megp", "n_views": 120, "voxel_mm": 4.4, "iterations": 16,
                     "subsets": 8, "postfilter_fwhm_mm": 0.0},
    "out-of-mix": dict(OUT_OF_MIX),
}


@dataclass
class SpherePhantom:
    """The phantom on its CT grid.

    Attributes
    ----------
    hu : Volume
        CT numbers (water 0 HU, the wall :data:`WALL_HU`, air -1000 HU); its grid is every map's grid.
    activity : Volume
        True activity concentration, Bq/mL.
    spheres : dict of str to np.ndarray
        Sphere name (``sphere_10mm`` ...) -> boolean mask [z, y, x], smallest first.
    background : np.ndarray
        Boolean mask of the background VOI (:data:`BACKGROUND_MARGIN_MM` from spheres and surface).
    body : np.ndarray
        Boolean mask of the water (inside the wall).
    """

    hu: Volume
    activity: Volume
    spheres: dict[str, np.ndarray]
    background: np.ndarray
    body: np.ndarray


def sphere_phantom(contrast: float = 8.0, background_bq_ml: float = 2e4,
                   diameters_mm: Sequence[float] = SPHERE_DIAMETERS_MM, shape: tuple[int, int, int] = SHAPE,
                   spacing_mm: tuple[float, float, float] = SPACING_MM) -> SpherePhantom:
    """The IEC-like sphere phantom (module docstring).

    Parameters
    ----------
    contrast : float
        Sphere to background activity concentration ratio (the IEC protocol uses 4 or 8; our data set 3-100).
    background_bq_ml : float
        Background activity concentration, Bq/mL (2e4: a Lu-177 patient's soft tissue on day 1, roughly).
    diameters_mm : sequence of float
        Sphere diameters, mm, on the ring at equal angles.
    shape : (int, int, int)
        Grid size (z, y, x); the body is cut where the grid is smaller than it.
    spacing_mm : (float, float, float)
        Voxel size (x, y, z), mm.

    Returns
    -------
    SpherePhantom
    """
    from scipy.ndimage import distance_transform_edt

    if not (contrast > 0 and background_bq_ml > 0 and math.isfinite(contrast * background_bq_ml)):
        raise DblurDoseError(f"the sphere phantom needs a positive contrast and background activity, got "
                             f"{contrast} and {background_bq_ml} Bq/mL")
    origin = tuple(-(n - 1) / 2 * s for n, s in zip(shape[::-1], spacing_mm))
    z, y, x = np.meshgrid(*(np.arange(n) * s + o for n, s, o in zip(shape, spacing_mm[::-1], origin[::-1])),
                          indexing="ij", sparse=True)
    (ax, ay), half = BODY_SEMI_AXES_MM, BODY_LENGTH_MM / 2
    body = np.broadcast_to(((x / ax) ** 2 + (y / ay) ** 2 <= 1.0) & (np.abs(z) <= half), shape)
    w = WALL_MM
    outer = ((x / (ax + w)) ** 2 + (y / (ay + w)) ** 2 <= 1.0) & (np.abs(z) <= half + w)
    spheres: dict[str, np.ndarray] = {}
    for k, d in enumerate(sorted(diameters_mm)):
        angle = 2 * math.pi * k / len(diameters_mm)
        cx, cy = RING_RADIUS_MM * math.cos(angle), RING_RADIUS_MM * math.sin(angle)
        spheres[f"sphere_{d:g}mm"] = np.broadcast_to((x - cx) ** 2 + (y - cy) ** 2 + z ** 2 <= (d / 2) ** 2, shape) & body
    hot = np.logical_or.reduce(list(spheres.values()))
    activity = np.where(body, background_bq_ml, 0.0) + np.where(hot, (contrast - 1.0) * background_bq_ml, 0.0)
    sampling = spacing_mm[::-1]
    far_from_spheres = distance_transform_edt(~hot, sampling=sampling) >= BACKGROUND_MARGIN_MM[0]
    inside = distance_transform_edt(body, sampling=sampling) >= BACKGROUND_MARGIN_MM[1]
    hu = Volume(np.where(body, 0.0, np.where(outer, WALL_HU, -1000.0)).astype(np.float32), spacing_mm, origin)
    return SpherePhantom(hu=hu, activity=hu.with_array(activity.astype(np.float32)), spheres=spheres,
                         background=far_from_spheres & inside, body=np.array(body))


def sphere_truth(phantom: SpherePhantom, device: str = "cpu") -> np.ndarray:
    """The true dose rate (mGy/h) of the phantom: the DVK of its true activity, exact in uniform water."""
    return dvk_map(phantom.activity, phantom.hu, device)


def dvk_map(activity: Volume, hu: Volume, device: str = "cpu") -> np.ndarray:
    """The DVK dose rate (mGy/h) of an activity map (Bq/mL) on the CT grid ``hu``, with density scaling."""
    from ..physics.density import hu_to_density
    from ..physics.dvk import dvk_dose_rate
    from ..physics.kernels import get_kernel

    kernel = get_kernel("Lu-177", hu.spacing)
    bq = (activity.array * np.float32(hu.voxel_volume_ml)).astype(np.float32)
    return dvk_dose_rate(bq, hu_to_density(hu.array).astype(np.float32), kernel.electron, kernel.photon,
                         kernel.medium_density, device=device)


def deconvolution_iterations(references: Sequence[int], models: dict) -> list[int]:
    """The Richardson-Lucy iteration counts an evaluation needs: its ``dvk_rlN`` references' and those of the
    models that deconvolve their input (increasing, without 0)."""
    return sorted({*references, *(m.config.deconvolution_iterations for m in models.values())} - {0})


def chain_settings(chain: str | dict) -> dict:
    """A chain of :data:`SPHERE_CHAINS` by name, ``"fwhm=F"`` (an ideal Gaussian system of F mm), or a dict."""
    if isinstance(chain, dict):
        return dict(chain)
    if chain in SPHERE_CHAINS:
        return dict(SPHERE_CHAINS[chain])
    if chain.startswith("fwhm="):
        try:
            fwhm = float(chain[5:])
        except ValueError:
            fwhm = float("nan")
        if fwhm > 0 and math.isfinite(fwhm):
            return {"fwhm_mm": fwhm}
    raise DblurDoseError(f"unknown SPECT chain {chain!r}; choose {', '.join(SPHERE_CHAINS)}, or fwhm=F for an "
                         "ideal Gaussian system of F mm")


def sphere_spect(phantom: SpherePhantom, chain: str | dict, counts: float = 1e7, realisations: int = 1,
                 seed: int = 0) -> list[Volume]:
    """The phantom's SPECT (Bq/mL) on its CT grid, one Volume per Poisson realisation.

    A SPECT chain (:data:`SPHERE_CHAINS`) is simulated and reconstructed by
    :func:`~DblurDoseLib.simulation.spect.simulate_spect` with ``counts`` expected photopeak counts and
    moved onto the CT grid (activity conserved); ``{"fwhm_mm": F}`` blurs the true activity by a
    Gaussian of F mm FWHM: one image whatever ``realisations`` (no noise, so no two differ; what spills into
    the air stays there).
    """
    from ..geometry.resample import resample_activity

    settings = chain_settings(chain)
    if "fwhm_mm" in settings:
        from ..physics.deconvolution import gaussian_blur

        # as a camera images it: what spills out of the body stays in the image (reflected at the grid's
        # edges, far from the body, so the total activity is kept)
        blurred = gaussian_blur(phantom.activity.array, settings["fwhm_mm"], phantom.hu.spacing)
        return [phantom.activity.with_array(blurred.astype(np.float32))]
    from ..simulation.spect import simulate_spect

    acq, density = chain_acquisition(phantom, settings)
    images = simulate_spect(phantom.activity, density, counts, seed, acq, realisations=int(realisations))
    return [resample_activity(image, phantom.hu) for image in images]


def chain_acquisition(phantom: SpherePhantom, chain: str | dict):
    """A camera chain's acquisition over the phantom (a SPECT field that holds its body, square in x and y) and
    the phantom's density (g/cm3, a Volume on its CT grid): what :func:`sphere_spect` simulates."""
    from ..physics.density import hu_to_density
    from ..simulation.camera import SpectAcquisition

    settings = chain_settings(chain)
    if "fwhm_mm" in settings:
        raise DblurDoseError("an ideal Gaussian chain has no camera to simulate")
    camera, voxel = settings.pop("camera"), float(settings.pop("voxel_mm"))
    extent = np.asarray(phantom.hu.shape[::-1]) * np.asarray(phantom.hu.spacing)
    side = int(math.ceil(max(extent[:2]) / voxel)) + 2  # square in x and y: pytomography rotates it
    matrix = (side, side, int(math.ceil(extent[2] / voxel)) + 2)
    acq = SpectAcquisition.for_camera(camera, matrix=matrix, voxel_mm=voxel, **settings)
    return acq, phantom.hu.with_array(hu_to_density(phantom.hu.array).astype(np.float32))


def evaluate_spheres(models: dict | None = None, chains: Sequence[str | dict] = tuple(SPHERE_CHAINS),
                     contrast: float = 8.0, counts: float = 1e7, realisations: int = 3, seed: int = 0,
                     device: str = "cpu", log: Callable[[str], None] = print,
                     deconvolution: Sequence[int] = (), consistent: bool = False) -> dict:
    """The DVK and each model on the sphere phantom through each SPECT chain, against the exact truth.

    Parameters
    ----------
    models : dict, optional
        Method name -> a loaded :class:`~DblurDoseLib.learning.network.DblurDoseNet` (None: the shipped
        weights as "cnn"; an empty dict: the DVK alone).
    chains : sequence of str or dict
        SPECT chains (:func:`chain_settings`).
    contrast, counts, realisations, seed :
        Sphere to background ratio; expected photopeak counts; Poisson realisations; their seed.
    device : str
        Where the DVK and the CNN run.
    log : callable
        Gets a line per chain.
    deconvolution : sequence of int
        For each number N, the method ``dvk_rlN``: the DVK of the SPECT after N Richardson-Lucy iterations
        with a Gaussian of the chain's Gaussian-equivalent FWHM (:mod:`.deconvolution`: what a deconvolution
        that knows the blur recovers).
    consistent : bool
        For each model M also ``consistent_M``: its maps made consistent with the SPECT at the chain's
        Gaussian-equivalent FWHM, as ``dose --spect-fwhm`` makes them.

    Returns
    -------
    dict
        ``settings`` and, per chain name, ``vois`` (VOI -> method -> ``volume_ml``, ``true_mean`` (mGy/h),
        ``mean``, ``signed_error`` (%, mean over realisations) and ``nrmse``), ``power`` (method -> absorbed
        power over the truth's), ``noise`` (method -> ensemble noise (%) in the background, two realisations
        or more; none for a noise-free Gaussian chain), ``correction`` (model ->
        :func:`~DblurDoseLib.evaluation.metrics.correction_diagnostics`) and ``resolution`` (the chain's
        Gaussian-equivalent FWHM: :func:`~DblurDoseLib.evaluation.resolution.gaussian_equivalent_fwhm`).
    """
    from ..learning.inference import load_model
    from ..physics.deconvolution import check_iterations
    from .resolution import gaussian_equivalent_fwhm, gaussian_recovery_table

    if int(realisations) < 1 or not counts > 0:
        raise DblurDoseError(f"the sphere phantom needs at least one realisation and positive counts, got "
                             f"{realisations} and {counts:g}")
    check_iterations(deconvolution)
    models = {"cnn": load_model(device=device)} if models is None else dict(models)
    settings = {"contrast": contrast, "counts": counts, "realisations": int(realisations), "seed": seed,
                "chains": {_chain_name(c): chain_settings(c) for c in chains}}
    phantom = sphere_phantom(contrast)
    truth = sphere_truth(phantom, device)
    table = gaussian_recovery_table(phantom)
    results: dict = {"settings": settings, "chains": {}}
    for chain in chains:
        log(f"sphere phantom: SPECT chain {_chain_name(chain)}")
        resolution = gaussian_equivalent_fwhm(chain, phantom, table)
        spects = sphere_spect(phantom, chain, counts, realisations, seed)
        results["chains"][_chain_name(chain)] = {
            **_chain_results(phantom, truth, spects, models, device, deconvolution, resolution["fwhm_mm"],
                             consistent),
            "resolution": resolution}
    return results


def _chain_name(chain: str | dict) -> str:
    return chain if isinstance(chain, str) else json.dumps(chain, sort_keys=True)


def _chain_results(phantom: SpherePhantom, truth: np.ndarray, spects: list[Volume], models: dict,
                   device: str, deconvolution: Sequence[int] = (), fwhm_mm: float = float("nan"),
                   consistent: bool = False) -> dict:
    """One chain's numbers (:func:`evaluate_spheres`); ``deconvolution``: the Richardson-Lucy iterations of
    the ``dvk_rlN`` references, with a Gaussian of ``fwhm_mm`` (the chain's Gaussian-equivalent FWHM), which
    a model that deconvolves its input is given too, as is the consistency step (``consistent``)."""
    from ..learning.inference import cnn_dose_rate
    from ..physics.deconvolution import check_fwhm, deconvolved_on_grid
    from ..physics.density import hu_to_density
    from .evaluate import add_consistent, voi_errors
    from .metrics import absorbed_power_ratio, correction_diagnostics, ensemble_noise_percent

    density = hu_to_density(phantom.hu.array).astype(np.float32)
    maps: dict[str, list[np.ndarray]] = {"dvk": [], **{name: [] for name in models}}
    sharpened = deconvolution_iterations(deconvolution, models)
    if sharpened or consistent or any(m.config.fwhm_input for m in models.values()):
        check_fwhm(fwhm_mm, "this SPECT chain's resolution", "evaluate this chain without deconvolution, the "
                   "consistency step or models that take the resolution")
    for spect in spects:
        dvk = dvk_map(spect, phantom.hu, device)
        maps["dvk"].append(dvk)
        sharp = {n: deconvolved_on_grid(spect, phantom.hu, fwhm_mm, n) for n in sharpened}
        sharp = {n: (v, dvk_map(v, phantom.hu, device)) for n, v in sharp.items()}
        for n in deconvolution:
            maps.setdefault(f"dvk_rl{n}", []).append(sharp[n][1])
        for name, model in models.items():
            n = model.config.deconvolution_iterations
            source, base = sharp[n] if n else (spect, dvk)
            maps[name].append(cnn_dose_rate(source, phantom.hu, density, base, device, model,
                                            fwhm_mm=fwhm_mm if model.config.fwhm_input else None).array)
    if consistent:
        add_consistent(maps, models, [fwhm_mm] * len(spects), density, phantom.hu.spacing)
    vois = {**phantom.spheres, "background": phantom.background}
    voxel_ml = phantom.hu.voxel_volume_ml
    out: dict = {"vois": {}, "power": {}, "noise": {}, "correction": {}}
    for voi, mask in vois.items():
        out["vois"][voi] = {}
        for method, estimates in maps.items():
            rows = [voi_errors(e, truth, mask, voxel_ml) for e in estimates]
            out["vois"][voi][method] = {k: float(np.mean([r[k] for r in rows]))
                                        for k in ("volume_ml", "true_mean", "mean", "signed_error", "nrmse")}
    for method, estimates in maps.items():
        out["power"][method] = float(np.mean([absorbed_power_ratio(e, truth, density) for e in estimates]))
        if len(estimates) >= 2:
            out["noise"][method] = ensemble_noise_percent(estimates, phantom.background)
    for name, model in models.items():
        if model.residual:
            diags = [correction_diagnostics(c, d, density, model.config.correction, truth=truth)
                     for c, d in zip(maps[name], maps["dvk"])]
            out["correction"][name] = {"floor_share": float(np.mean([d["floor_share"] for d in diags])),
                                       "floor_truth_ratio": float(np.nanmedian([d["floor_truth_ratio"] for d in diags]))
                                       if any(d["floor_share"] for d in diags) else float("nan"),
                                       "constant_share": float(np.max([d["constant_share"] for d in diags]))}
    return out


def sphere_report(results: dict) -> str:
    """Markdown tables of :func:`evaluate_spheres`: per chain, its Gaussian-equivalent FWHM, the signed mean
    dose-rate error (%) of each method per sphere and in the background, then the absorbed power, the ensemble noise, the share of
    tissue at the CNN's floor (with the truth over the DVK there: near 0.05 the floor is right, above it the
    correction overshoots) and the largest share under one constant correction."""
    s = results["settings"]
    lines = [f"# Sphere phantom (exact truth): contrast {s['contrast']:g}:1, {s['counts']:.3g} counts, "
             f"{s['realisations']} realisation(s)", "",
             "Signed error of the mean dose rate against the truth (%); negative: under-estimated."]
    for chain, res in results["chains"].items():
        methods = list(next(iter(res["vois"].values())))
        lines += ["", f"## {chain}: {json.dumps(s['chains'][chain])}", *_resolution_lines(res.get("resolution")), "",
                  "| VOI | mL | truth (mGy/h) | " + " | ".join(methods) + " |", "|---|---|---|" + "---|" * len(methods)]
        for voi, row in res["vois"].items():
            first = row[methods[0]]
            lines.append(f"| {voi} | {first['volume_ml']:.2f} | {first['true_mean']:.3g} | "
                         + " | ".join(f"{row[m]['signed_error']:+.1f}" for m in methods) + " |")
        lines.append("| absorbed power / truth's | | | " + " | ".join(f"{res['power'][m]:.3f}" for m in methods) + " |")
        if res["noise"]:
            lines.append("| ensemble noise, background (%) | | | "
                         + " | ".join(f"{res['noise'].get(m, float('nan')):.2f}" for m in methods) + " |")
        if res["correction"]:
            lines.append("| tissue at the floor (%; truth / DVK there) | | | " + " | ".join(
                f"{100 * res['correction'][m]['floor_share']:.2f} ({res['correction'][m]['floor_truth_ratio']:.2f})"
                if m in res["correction"] else "-" for m in methods) + " |")
            lines.append("| largest tissue share under one constant correction (%) | | | " + " | ".join(
                f"{100 * res['correction'][m]['constant_share']:.2f}" if m in res["correction"] else "-"
                for m in methods) + " |")
    return "\n".join(lines) + "\n"


def _resolution_lines(resolution: dict | None) -> list[str]:
    """The chain's Gaussian-equivalent FWHM under its heading (none for results written before it existed)."""
    if not resolution:
        return []
    per = [v for v in resolution["per_sphere_mm"].values() if math.isfinite(v)]
    spread = f", sphere by sphere {min(per):.1f}-{max(per):.1f} mm" if per else ""
    return ["", f"Gaussian-equivalent FWHM {resolution['fwhm_mm']:.1f} mm (the ideal Gaussian system that recovers "
                f"the spheres' activity as this chain does without noise{spread})."]


def write_sphere_report(results: dict, out: str | os.PathLike) -> Path:
    """Write ``spheres.md`` (:func:`sphere_report`) and ``spheres.json`` into folder ``out``; returns the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "spheres.json").write_text(json.dumps(results, indent=1))
    path = out / "spheres.md"
    path.write_text(sphere_report(results))
    return path
