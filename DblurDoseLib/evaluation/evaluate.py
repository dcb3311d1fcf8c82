"""The paper's evaluation on held-out test phantoms: DVK, SPECT+MC and CNN against Monte Carlo truth.

Per test phantom and Poisson realisation: mean dose-rate error (%) and NRMSE per VOI (lesions,
kidneys, liver, healthy liver, spleen, lumbar vertebrae L2-L5), errors of DR10/30/70/90 (%),
ensemble noise over the realisations in background spheres (paper's Table 1), DRVHs and line
profiles through a kidney and a lesion; optionally the ablation models (paper's Table 3).
Writes ``report.md`` with PNG figures and ``results.json`` with every number.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import DblurDoseError
from ..io import dataset as layout
from ..io.dataset import family_of
from ..simulation.anatomy import LESION_SIZE_CLASSES_ML
from ..simulation.vois import LESION_PREFIX, evaluation_vois
from .metrics import (
    DR_LEVELS,
    POWER_MEDIA,
    absorbed_power_by_medium,
    absorbed_power_ratio,
    correction_diagnostics,
    drvh,
    drvh_bin_edges,
    ensemble_noise_percent,
    line_profile,
    line_through,
    nrmse,
    power_media,
    segment_statistics,
)
from .targets import check_targets

#: VOI groups as in the paper's Fig. 7.
VOI_GROUPS = ("lesion", "kidney_left", "kidney_right", "liver", "healthy_liver", "spleen", "lumbar_L2_L5")
SPHERE_RADIUS_MM = 15.0
#: the data set's splits that can be evaluated, and their names in messages and reports
SPLIT_NAMES = {"test": "test", "val": "validation", "train": "training"}
#: lesion size classes of the evaluation (voxelised true volume, mL): (label, lower bound inclusive, upper
#: bound exclusive); the phantoms' classes (:data:`LESION_SIZE_CLASSES_ML`) and what falls under them
LESION_SIZE_CLASSES = ((f"under {LESION_SIZE_CLASSES_ML[0][0]:g} mL", 0.0, LESION_SIZE_CLASSES_ML[0][0]),
                       *((f"{lo:g}-{hi:g} mL" if math.isfinite(hi) else f"over {lo:g} mL", lo, hi)
                         for lo, hi in LESION_SIZE_CLASSES_ML))


def vois(labels: np.ndarray, label_meta: dict) -> dict[str, np.ndarray]:
    """Evaluation VOI masks (:func:`DblurDoseLib.simulation.vois.evaluation_vois`, the phantoms' own
    definition) from a data-set labelmap and its ``labels.json`` (``label_meta``)."""
    names = {int(k): v for k, v in label_meta["label_names"].items()}
    return evaluation_vois(labels, names, label_meta.get("info", {}).get("lesions", []))


def group_of(voi: str) -> str:
    """The VOI group (:data:`VOI_GROUPS`) of a VOI name: "lesion" for every lesion, else the name."""
    return "lesion" if voi.startswith(LESION_PREFIX) else voi


def background_sphere(mask: np.ndarray, spacing_xyz, radius_mm: float = SPHERE_RADIUS_MM) -> np.ndarray | None:
    """The largest sphere (up to ``radius_mm``) inside ``mask``, centred on its deepest voxel."""
    from scipy.ndimage import distance_transform_edt

    if not mask.any():
        return None
    depth = distance_transform_edt(mask, sampling=tuple(spacing_xyz)[::-1])
    centre = np.unravel_index(np.argmax(depth), mask.shape)
    radius = min(radius_mm, float(depth[centre]))
    zz, yy, xx = (np.arange(n) - c for n, c in zip(mask.shape, centre))
    sz, sy, sx = tuple(spacing_xyz)[::-1]
    sphere = (zz[:, None, None] * sz) ** 2 + (yy[None, :, None] * sy) ** 2 + (xx[None, None, :] * sx) ** 2
    sphere = (sphere <= radius**2) & mask
    return sphere if sphere.sum() >= 8 else None


def voi_errors(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray, voxel_ml: float) -> dict[str, float]:
    """Mean dose-rate error (%), NRMSE and DRx errors (%) of ``estimate`` against ``truth`` in ``mask``."""
    est = segment_statistics(estimate, mask, voxel_ml)
    tru = segment_statistics(truth, mask, voxel_ml)
    signed = (est["mean"] - tru["mean"]) / tru["mean"] * 100.0
    row = {"volume_ml": tru["volume_ml"], "true_mean": tru["mean"], "mean": est["mean"],
           "mean_error": abs(signed), "signed_error": signed,
           "nrmse": nrmse(estimate, truth, mask)}
    for level in DR_LEVELS:
        key = f"DR{level}"
        row[f"{key}_error"] = abs(est[key] - tru[key]) / max(tru[key], 1e-30) * 100.0
    return row


def _mean(values) -> float:
    values = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def evaluate(
    data_dir: str | os.PathLike,
    model_path: str | os.PathLike | None = None,
    ablations: dict[str, str] | None = None,
    out: str | os.PathLike | None = None,
    device: str = "auto",
    log: Callable[[str], None] = print,
    recon: str = "",
    family: str | None = None,
    split: str = "test",
    deconvolution: Sequence[int] = (),
    consistent: bool = False,
    phantoms: Sequence[int] | None = None,
) -> dict:
    """Evaluate every test phantom of a data set; returns (and writes) all numbers.

    ``recon``: which reconstructions of the test phantoms: "" (the data set's own, ``spect_r*``) or
    "ood" (those outside the training mix, ``spect_ood_r*``, from ``data generate --out-of-mix``).
    ``family``: only the test phantoms of this virtual-patient family ("anatomical", or "shapes":
    ``data generate --held-out``); ``None``: all, with the summary also given per family.
    ``split``: "test" (the held-out phantoms, for the final figures), "val" (the validation
    phantoms: compare training choices there, never on the test phantoms) or "train" (the training
    phantoms: how well a model fits what it was trained on, against which its error on unseen phantoms
    tells underfitting from a generalisation gap; their labels carry the training's Monte Carlo noise).
    ``deconvolution``: for each number N the reference method ``dvk_rlN``, the DVK of each realisation's
    SPECT (its native grid) after N Richardson-Lucy iterations with a Gaussian of its chain's
    Gaussian-equivalent FWHM (:mod:`.deconvolution`; the chain as the manifest records it).
    ``consistent``: for each CNN method M also ``consistent_M``, its maps made consistent with the SPECT at
    the chain's FWHM as ``dose --spect-fwhm`` makes them (:func:`add_consistent`).
    ``phantoms``: only these phantoms of ``split``, by index (e.g. those finished while the data set grows;
    the report names them); ``None``: all of them, each of which must be finished.
    """
    from ..io.volume import read_volume
    from ..learning.inference import load_model
    from .spheres import deconvolution_iterations

    data_dir = Path(data_dir)
    manifest = layout.read_manifest(data_dir, complete=False)
    families = {k: family_of(v) for k, v in manifest["phantoms"].items()}
    tests = _phantoms_to_evaluate(data_dir, manifest, family, recon, split, phantoms)
    tag = layout.recon_tag(recon)
    models = {"cnn": load_model(model_path, device=device)}
    for name, path in (ablations or {}).items():
        models[f"cnn_{name}"] = load_model(path, device=device)
    corrections = {name: m.config.correction for name, m in models.items() if m.residual}
    if deconvolution:
        from ..physics.deconvolution import check_iterations

        check_iterations(deconvolution)
    # each chain's Gaussian-equivalent FWHM: the data set's record (data deconvolve), else measured once per run
    fwhms = layout.read_resolutions(data_dir)
    sharpened = deconvolution_iterations(deconvolution, models)
    by_fwhm = any(m.config.fwhm_input for m in models.values())  # a model that takes the chain's FWHM as an input
    results: dict = {"data": str(data_dir), "recon": recon or "standard", "split": split, "phantoms": {},
                     "model": str(model_path or "shipped"), "family": family or "all",
                     "families": {k: families[k] for k in tests}}
    for key in tests:
        folder = data_dir / key
        log(f"evaluating {key}")
        hu = read_volume(folder / layout.volume_file("hu"))
        density = read_volume(folder / layout.volume_file("density")).array
        labels = read_volume(folder / layout.volume_file("labels"), dtype=None).array
        meta = layout.read_label_names(folder)
        truth = read_volume(folder / layout.truth_file()).array
        masks = vois(labels, meta)
        n_real = layout.realisations_of(manifest["phantoms"][key])
        chains = (layout.recorded_chains(manifest["phantoms"][key], key, n_real, recon)
                  if sharpened or consistent or by_fwhm else [])
        inputs = {(n, r): deconvolved_inputs(folder, r, tag, n, chain, fwhms, hu, device)
                  for n in sharpened for r, chain in enumerate(chains)}
        resolutions = [chain_fwhm(c, fwhms, f"{key}: the resolution of realisation {r}'s SPECT chain",
                                  "evaluate without the consistency step and models that take the resolution")
                       for r, c in enumerate(chains)] if consistent or by_fwhm else None
        estimates = _phantom_estimates(folder, n_real, tag, hu, density, models, device, inputs, resolutions)
        if consistent:
            add_consistent(estimates, models, resolutions, density, hu.spacing)
        for n in deconvolution:
            estimates[f"dvk_rl{n}"] = [inputs[n, r][1] for r in range(n_real)]
        if out is not None:
            _phantom_figures(Path(out), key, hu, truth, estimates, masks)
        results["phantoms"][key] = _phantom_results(estimates, truth, masks, hu, n_real, density, corrections)
    results["summary"] = summarise(results)
    results["summary_by_family"] = summarise_by_family(results)
    if out is not None:
        write_report(results, Path(out))
    return results


def _phantoms_to_evaluate(data_dir: Path, manifest: dict, family: str | None, recon: str, split: str = "test",
                          phantoms: Sequence[int] | None = None) -> list[str]:
    """The data set's phantoms of ``split`` (and ``family``; only ``phantoms``, by index, unless None), refused
    when there are none, one is not of the split, or one is unfinished or lacks the reconstructions asked for."""
    if split not in SPLIT_NAMES:
        raise DblurDoseError(f"cannot evaluate the {split!r} split; choose test, val or train")
    tests = layout.phantoms_in(manifest, split, family)
    name = SPLIT_NAMES[split]
    if not tests:
        which = f" of the {family!r} family" if family else ""
        raise DblurDoseError(f"{data_dir} has no {name} phantoms{which}; generate the data set with {name} phantoms"
                             + (" (its held-out phantoms are the shapes family)" if family else ""))
    if phantoms is not None:
        chosen = [layout.phantom_key(i) for i in phantoms]
        foreign = [k for k in chosen if k not in tests]
        if foreign:
            raise DblurDoseError(f"{', '.join(foreign)} {'is' if len(foreign) == 1 else 'are'} not among the {name} "
                                 f"phantoms of {data_dir} ({', '.join(tests)}); choose among those")
        tests = chosen
    unfinished = [k for k in tests if not (data_dir / k / layout.truth_file()).exists()]
    if unfinished:
        raise DblurDoseError(f"{data_dir}: phantoms {', '.join(unfinished)} are not finished (no Monte Carlo truth); "
                             "let the data job finish them, or evaluate only the finished ones")
    first = layout.realisation_file("spect", 0, layout.recon_tag(recon))
    missing = [k for k in tests if not (data_dir / k / first).exists()]
    if missing:
        hint = " (generate them with the out-of-mix reconstruction too)" if recon == "ood" else ""
        raise DblurDoseError(f"{data_dir}: phantoms {', '.join(missing)} have no {first}{hint}")
    return tests


def _phantom_estimates(folder: Path, n_real: int, tag: str, hu, density: np.ndarray, models: dict,
                       device: str, deconvolved: dict | None = None,
                       fwhms: Sequence[float] | None = None) -> dict[str, list[np.ndarray]]:
    """Dose-rate maps (mGy/h) of one test phantom per method and realisation: the DVK, SPECT + MC
    where the data set holds it, and each model's CNN correction (a model that deconvolves on its inputs in
    ``deconvolved``: (iterations, realisation) -> :func:`deconvolved_inputs`; one that takes the resolution
    given each realisation's chain FWHM in ``fwhms``, mm)."""
    from ..io.volume import read_volume
    from ..learning.inference import cnn_dose_rate

    estimates: dict[str, list[np.ndarray]] = {}
    for r in range(n_real):
        spect = read_volume(folder / layout.realisation_file("spect", r, tag))
        dvk = read_volume(folder / layout.realisation_file("dvk", r, tag)).array
        estimates.setdefault("dvk", []).append(dvk)
        mc_path = folder / layout.realisation_file("mc_spect", r, tag)
        if mc_path.exists():
            estimates.setdefault("mc", []).append(read_volume(mc_path).array)
        for name, model in models.items():
            n = model.config.deconvolution_iterations
            source, base = deconvolved[n, r] if n else (spect, dvk)
            fwhm = fwhms[r] if fwhms else None
            estimates.setdefault(name, []).append(cnn_dose_rate(source, hu, density, base, device, model,
                                                                fwhm_mm=fwhm).array)
    return estimates


def deconvolved_inputs(folder: Path, r: int, tag: str, iterations: int, chain: dict, fwhms: dict, hu,
                       device: str, saved: Callable[[], object] | None = None) -> tuple:
    """Realisation ``r``'s SPECT after ``iterations`` Richardson-Lucy iterations at its chain's
    Gaussian-equivalent FWHM (Volume, Bq/mL, CT grid) and its DVK (mGy/h): the data set's files where
    ``data deconvolve`` made them, else computed from its native SPECT, as ``data deconvolve`` computes them
    (``fwhms``: the chains' FWHMs, kept across phantoms; ``saved``: called after a new measurement)."""
    from ..io.volume import read_volume
    from ..physics.deconvolution import deconvolved_on_grid
    from .spheres import dvk_map

    files = [folder / layout.deconvolved_file(stem, iterations, r, tag) for stem in ("spect", "dvk")]
    if all(f.is_file() for f in files):
        return read_volume(files[0]), read_volume(files[1]).array
    fwhm = chain_fwhm(chain, fwhms, f"{folder.name}: the resolution of realisation {r}'s SPECT chain",
                      "leave this chain out of the deconvolution", saved)
    sharp = deconvolved_on_grid(read_volume(folder / layout.realisation_file("spect_native", r, tag)), hu, fwhm,
                                iterations)
    return sharp, dvk_map(sharp, hu, device)


def chain_fwhm(chain: dict, fwhms: dict, what: str, fix: str, saved: Callable[[], object] | None = None) -> float:
    """A recorded chain's Gaussian-equivalent FWHM (mm): ``fwhms``' record, else measured (minutes) and added to
    it (``saved`` called after); refused in one line naming ``what`` and ``fix`` where no Gaussian matches."""
    from ..physics.deconvolution import check_fwhm
    from .resolution import chain_resolution

    return check_fwhm(chain_resolution(chain, fwhms, saved), what, fix)


def add_consistent(maps: dict[str, list[np.ndarray]], models: dict, fwhms: Sequence[float], density: np.ndarray,
                   spacing_xyz: Sequence[float]) -> None:
    """For each CNN method M of ``models``, the method ``consistent_M``: its map of each realisation made
    consistent with that realisation's DVK (``maps["dvk"]``) at its chain's FWHM (``fwhms``, mm, one per
    realisation), as ``dose --spect-fwhm`` makes it (:func:`~DblurDoseLib.physics.consistency.consistent_dose_rate`)."""
    from ..physics.consistency import consistent_dose_rate

    for name in models:
        maps[f"consistent_{name}"] = [consistent_dose_rate(y, d, density, f, spacing_xyz)
                                      for y, d, f in zip(maps[name], maps["dvk"], fwhms)]


def _phantom_results(estimates: dict[str, list[np.ndarray]], truth: np.ndarray, masks: dict, hu,
                     n_real: int, density: np.ndarray, corrections: dict[str, str]) -> dict:
    """One phantom's numbers: per VOI and method the errors averaged over realisations; the ensemble
    noise in background spheres of the healthy liver and spleen (two realisations or more); each
    method's whole-body absorbed power over the truth's, and in each medium (lung, soft tissue, bone;
    mean over realisations), with the truth's share of its power in each medium; and for each
    residual CNN (``corrections``: method -> its correction kind) the share of tissue at the floor
    (mean), whether the truth there is as low (:func:`correction_diagnostics` with the truth), and the
    largest share under one constant correction (largest over realisations)."""
    phantom: dict = {"vois": {}, "noise": {}, "power": {}, "power_by_medium": {}, "correction": {}}
    for voi, mask in masks.items():
        phantom["vois"][voi] = {
            method: {k: _mean(voi_errors(e, truth, mask, hu.voxel_volume_ml)[k] for e in maps)
                     for k in ("volume_ml", "true_mean", "mean", "mean_error", "signed_error", "nrmse",
                               *(f"DR{lv}_error" for lv in DR_LEVELS))}
            for method, maps in estimates.items()
        }
    media = power_media(density)  # once per phantom: every map shares its density
    for method, maps in estimates.items():
        phantom["power"][method] = _mean(absorbed_power_ratio(e, truth, density) for e in maps)
        by_medium = [absorbed_power_by_medium(e, truth, density, media) for e in maps]
        phantom["power_by_medium"][method] = {m: _mean(r.get(m) for r in by_medium) for m in POWER_MEDIA
                                              if any(m in r for r in by_medium)}
    phantom["power_share"] = {m: absorbed_power_ratio(np.where(mask, truth, 0), truth, density)
                              for m, mask in media.items()}
    for method, kind in corrections.items():
        phantom["correction"][method] = _combine_diagnostics(
            correction_diagnostics(e, d, density, kind, truth=truth) for e, d in zip(estimates[method], estimates["dvk"]))
    for organ in ("healthy_liver", "spleen"):
        sphere = background_sphere(masks.get(organ, np.zeros(1, bool)), hu.spacing) if organ in masks else None
        if sphere is not None and n_real >= 2:
            phantom["noise"][organ] = {m: ensemble_noise_percent(maps, sphere) for m, maps in estimates.items()}
            phantom["noise"][organ]["voxels"] = int(sphere.sum())
    return phantom


def summarise_by_family(results: dict) -> dict:
    """:func:`summarise` over the test phantoms of each family, keyed by family."""
    families = results.get("families", {})
    out = {}
    for fam in sorted(set(families.values())):
        keys = [k for k in results["phantoms"] if families.get(k, layout.FAMILIES[0]) == fam]
        out[fam] = summarise({"phantoms": {k: results["phantoms"][k] for k in keys}})
    return out


def summarise(results: dict) -> dict:
    """Averages per VOI group and method, and the CNN's improvements over DVK and SPECT+MC (%)."""
    groups: dict[str, dict[str, dict[str, list[float]]]] = {}
    noise: dict[str, list[float]] = {}
    correction: dict[str, list[dict]] = {}
    for phantom in results["phantoms"].values():
        for method, diag in phantom.get("correction", {}).items():
            correction.setdefault(method, []).append(diag)
        for voi, methods in phantom["vois"].items():
            g = groups.setdefault(group_of(voi), {})
            for method, row in methods.items():
                for k, v in row.items():
                    g.setdefault(method, {}).setdefault(k, []).append(v)
        for organ_noise in phantom["noise"].values():
            for method, v in organ_noise.items():
                if method != "voxels":
                    noise.setdefault(method, []).append(v)
    table = {g: {m: {k: _mean(v) for k, v in rows.items()} for m, rows in ms.items()} for g, ms in groups.items()}
    summary: dict = {"table": table, "noise": {m: _mean(v) for m, v in noise.items()}, "improvement": {}}
    summary["improvement"] = _improvements(table, summary["noise"])
    if any("consistent_cnn" in ms for ms in table.values()):
        summary["improvement"].update({f"consistent_cnn {k}": v for k, v in
                                       _improvements(table, summary["noise"], "consistent_cnn").items()})
    summary["power"], summary["power_by_medium"] = _power_means(results["phantoms"].values())
    summary["correction"] = {m: _combine_diagnostics(diags) for m, diags in correction.items()}
    summary["lesion_sizes"] = lesion_size_table(results)
    checked = {"summary": summary, "phantoms": results["phantoms"]}
    summary["targets"] = {m: check_targets(checked, m) for m in ("cnn", "consistent_cnn")
                          if any(m in ms for ms in table.values())}
    return summary


def _power_means(phantoms) -> tuple[dict, dict]:
    """Each method's absorbed power over the truth's, whole-body and per medium, averaged over ``phantoms``
    (their ``power`` and ``power_by_medium``)."""
    power: dict[str, list[float]] = {}
    by_medium: dict[str, dict[str, list[float]]] = {}
    for phantom in phantoms:
        for method, value in phantom.get("power", {}).items():
            power.setdefault(method, []).append(value)
        for method, media in phantom.get("power_by_medium", {}).items():
            for medium, value in media.items():
                by_medium.setdefault(method, {}).setdefault(medium, []).append(value)
    return ({m: _mean(v) for m, v in power.items()},
            {m: {medium: _mean(v) for medium, v in media.items()} for m, media in by_medium.items()})


def _combine_diagnostics(diagnostics) -> dict:
    """Correction diagnostics of several maps (realisations, phantoms) as one: the mean share of tissue at
    the floor, and there the truth over the DVK and the share of the true dose rate (means over the maps
    that have floor voxels), and the largest share under one constant correction (a dead region shows in
    any map)."""
    diagnostics = list(diagnostics)
    out = {"floor_share": _mean(d["floor_share"] for d in diagnostics),
           "constant_share": max(d["constant_share"] for d in diagnostics)}
    for key in ("floor_truth_ratio", "floor_truth_share"):
        out[key] = _mean(d.get(key) for d in diagnostics if d["floor_share"] > 0)
    return out


def lesion_size_table(results: dict) -> dict:
    """Lesion errors per size class (:data:`LESION_SIZE_CLASSES`, by true volume) and method, over all
    lesions of all phantoms: ``{class: {"lesions": n, method: {"mean_error", "signed_error", "nrmse"}}}``
    (percent, percent, fraction; means over lesions)."""
    rows: dict = {}
    for phantom in results["phantoms"].values():
        for voi, methods in phantom["vois"].items():
            if group_of(voi) != "lesion":
                continue
            volume = next(iter(methods.values()))["volume_ml"]
            label = next(c for c, lo, hi in LESION_SIZE_CLASSES if lo <= volume < hi)
            row = rows.setdefault(label, {"lesions": 0})
            row["lesions"] += 1
            for method, errors in methods.items():
                for k in ("mean_error", "signed_error", "nrmse"):
                    row.setdefault(method, {}).setdefault(k, []).append(errors.get(k))
    return {label: {k: (v if k == "lesions" else {e: _mean(x) for e, x in v.items()}) for k, v in rows[label].items()}
            for label, _, _ in LESION_SIZE_CLASSES if label in rows}


def _improvements(table: dict, noise: dict, method: str = "cnn") -> dict:
    """The improvements (%) of ``method`` (the CNN) over the DVK and SPECT + MC: mean error and NRMSE per VOI
    group, noise."""
    improvement: dict = {}
    for base in ("dvk", "mc"):
        for metric in ("mean_error", "nrmse"):
            for g, ms in table.items():
                if method in ms and base in ms and ms[base][metric] > 0:
                    imp = (ms[base][metric] - ms[method][metric]) / ms[base][metric] * 100.0
                    improvement.setdefault(f"{metric}_vs_{base}", {})[g] = imp
        if base in noise and method in noise and noise[base] > 0:
            improvement[f"noise_vs_{base}"] = (noise[base] - noise[method]) / noise[base] * 100.0
    return improvement


def _phantom_figures(out: Path, key: str, hu, truth, estimates, masks) -> None:
    from .report import save_curves

    out.mkdir(parents=True, exist_ok=True)
    first = {m: maps[0] for m, maps in estimates.items()}
    styles = {"truth": "k-", "dvk": "b--", "mc": "g:", "cnn": "r-"}
    for target in ("kidney_left", next((v for v in masks if v.startswith(LESION_PREFIX)), None)):
        if target is None or target not in masks:
            continue
        mask = masks[target]
        p0, p1 = line_through(hu, mask, 40 * float(hu.spacing[0]))
        curves = {}
        for name, arr in {"truth": truth, **first}.items():
            d, v = line_profile(hu.with_array(arr), p0, p1)
            curves[name] = (d, v)
        tag = target.replace(":", "_")
        save_curves(curves, out / f"{key}_profile_{tag}.png", "distance (mm)", "dose rate (mGy/h)",
                    f"{key}: profile through {target}", styles)
        edges = drvh_bin_edges(max(float(a[mask].max()) for a in (truth, *first.values())))
        drvhs = {}
        for name, arr in {"truth": truth, **first}.items():
            e, _d, cum = drvh(arr, mask, edges)
            drvhs[name] = (e[:-1], cum * 100)
        save_curves(drvhs, out / f"{key}_drvh_{tag}.png", "dose rate (mGy/h)", "volume (%)",
                    f"{key}: cumulative DRVH of {target}", styles)


def _fmt(v: float, digits: int = 1) -> str:
    return "-" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def write_report(results: dict, out: Path) -> Path:
    """report.md (tables like the paper's Fig. 7, Table 1, Table 3) and results.json in ``out``.

    Parameters
    ----------
    results : dict
        What :func:`evaluate` returns (per phantom results and their summary).
    out : Path
        The report folder (made if missing); figures (*.png) already there are linked.

    Returns
    -------
    Path
        The written report.md.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float))
    s = results["summary"]
    order = ("dvk", "mc", "cnn", "consistent_cnn")
    methods = sorted({m for g in s["table"].values() for m in g}, key=lambda m: order.index(m) if m in order else 9)
    lines = [*_report_header(results), *_error_section(s, methods), *_targets_section(s),
             *_drvh_section(s, methods),
             *_noise_section(results, methods), *_improvement_section(s), *_lesion_size_section(s, methods),
             *_energy_section(results, methods), *_correction_section(results),
             *_family_section(results.get("summary_by_family", {}), methods), *_ablation_section(s, methods)]
    figures = sorted(p.name for p in out.glob("*.png"))
    if figures:
        lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _report_header(results: dict) -> list[str]:
    """The report's title and what was evaluated: data set, reconstructions, model, phantoms by family."""
    return ["# DblurDose evaluation", "", f"Data: `{results['data']}` ({results.get('recon', 'standard')} "
            f"reconstructions); model: `{results['model']}`; "
            f"{SPLIT_NAMES[results.get('split', 'test')]} phantoms: {', '.join(results['phantoms'])}"
            + "".join(f" ({fam}: {', '.join(k for k, f in results.get('families', {}).items() if f == fam)})"
                      for fam in sorted(set(results.get("families", {}).values()))) + "."]


def _error_section(s: dict, methods: list[str]) -> list[str]:
    """Mean dose-rate error (%) and NRMSE per VOI and method (the paper's Fig. 7)."""
    lines = ["", "## Mean dose-rate error and NRMSE per VOI (Fig. 7), averaged over phantoms and realisations", "",
             "| VOI | " + " | ".join(f"{m} mean err %" for m in methods) + " | "
             + " | ".join(f"{m} NRMSE" for m in methods) + " |",
             "|---|" + "---|" * (2 * len(methods))]
    for g in VOI_GROUPS:
        if g in s["table"]:
            row = s["table"][g]
            lines.append(f"| {g} | " + " | ".join(_fmt(row.get(m, {}).get("mean_error")) for m in methods) + " | "
                         + " | ".join(f"{row.get(m, {}).get('nrmse', float('nan')):.3f}" for m in methods) + " |")
    return lines


def _targets_section(s: dict) -> list[str]:
    """The targets (:mod:`~DblurDoseLib.evaluation.targets`) for the CNN and the CNN kept consistent, met or not."""
    checked = s.get("targets", {})
    if not checked:
        return []
    methods = list(checked)
    verdict = {True: "met", False: "not met", None: "not checked"}
    lines = ["", "## Targets: the paper's gains over the DVK and the bounds of a usable map", "",
             "| target | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for i, row in enumerate(checked[methods[0]]):
        lines.append(f"| {row['target']} | " + " | ".join(f"{checked[m][i]['value']}: {verdict[checked[m][i]['met']]}"
                                                            for m in methods) + " |")
    return lines


def _drvh_section(s: dict, methods: list[str]) -> list[str]:
    """Errors (%) of the DRVH statistics DR10..DR90 per VOI and method."""
    lines = ["", "## DRVH statistics errors (%)", "", "| VOI | method | DR10 | DR30 | DR70 | DR90 |",
             "|---|---|---|---|---|---|"]
    for g in VOI_GROUPS:
        for m in methods:
            row = s["table"].get(g, {}).get(m)
            if row:
                lines.append(f"| {g} | {m} | " + " | ".join(_fmt(row[f'DR{lv}_error']) for lv in DR_LEVELS) + " |")
    return lines


def _noise_section(results: dict, methods: list[str]) -> list[str]:
    """Ensemble noise (%) in background spheres per phantom (the paper's Table 1)."""
    lines = ["", "## Ensemble noise in background spheres (Table 1), %", "",
             "| phantom | region | voxels | " + " | ".join(methods) + " |", "|---|---|---|" + "---|" * len(methods)]
    for key, ph in results["phantoms"].items():
        for organ, row in ph["noise"].items():
            lines.append(f"| {key} | {organ} | {row['voxels']} | " + " | ".join(_fmt(row.get(m)) for m in methods) + " |")
    return lines


def _improvement_section(s: dict) -> list[str]:
    """The CNN's improvement (%) over the other methods per VOI group."""
    lines = ["", "## CNN improvement (%)", "", "| comparison | " + " | ".join(VOI_GROUPS) + " |",
             "|---|" + "---|" * len(VOI_GROUPS)]
    for key, row in s["improvement"].items():
        if isinstance(row, dict):
            lines.append(f"| {key} | " + " | ".join(_fmt(row.get(g)) for g in VOI_GROUPS) + " |")
        else:
            lines.append(f"| {key} | {_fmt(row)} |" + " |" * (len(VOI_GROUPS) - 1))
    return lines


def _lesion_size_section(s: dict, methods: list[str]) -> list[str]:
    """Lesion errors per size class, methods side by side."""
    sizes = s.get("lesion_sizes", {})
    if not sizes:
        return []
    lines = ["", "## Lesions by size: mean dose-rate error % (signed %) and NRMSE", "",
             "| size | lesions | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for label, row in sizes.items():
        cells = [f"{_fmt(row[m]['mean_error'])} ({row[m]['signed_error']:+.1f}), {row[m]['nrmse']:.3f}"
                 if m in row else "-" for m in methods]
        lines.append(f"| {label} | {row['lesions']} | " + " | ".join(cells) + " |")
    return lines


def _energy_section(results: dict, methods: list[str]) -> list[str]:
    """Whole-body absorbed power of each method over the truth's, per phantom and on average."""
    if not any(ph.get("power") for ph in results["phantoms"].values()):
        return []
    lines = ["", "## Energy: whole-body absorbed power / the truth's", "",
             "| phantom | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for key, ph in results["phantoms"].items():
        lines.append(f"| {key} | " + " | ".join(f"{ph['power'].get(m, float('nan')):.3f}" for m in methods) + " |")
    mean = results["summary"].get("power", {})
    lines.append("| mean | " + " | ".join(f"{mean.get(m, float('nan')):.3f}" for m in methods) + " |")
    by_medium = results["summary"].get("power_by_medium", {})
    media = [m for m in POWER_MEDIA if any(m in by_medium.get(x, {}) for x in methods)]
    if media:
        shares = {m: _mean(ph.get("power_share", {}).get(m) for ph in results["phantoms"].values()) for m in media}
        lines += ["", "Per medium (mean over phantoms): each method's absorbed power there over the truth's there; the "
                  "truth's share of its whole-body power. The consistency step acts in soft tissue only.", "",
                  "| medium | truth's share | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
        for m in media:
            lines.append(f"| {m} | {shares[m]:.3f} | "
                         + " | ".join(f"{by_medium.get(x, {}).get(m, float('nan')):.3f}" for x in methods) + " |")
    return lines


def _correction_section(results: dict) -> list[str]:
    """Per residual CNN and phantom: tissue at the inference floor, and the largest share under one
    constant correction (a dead region of the network)."""
    rows = [(key, m, d) for key, ph in results["phantoms"].items() for m, d in ph.get("correction", {}).items()]
    if not rows:
        return []
    lines = ["", "## CNN correction in tissue: at the 5% floor, and under one constant value",
             "", "At the floor: % of tissue voxels; there, the truth over the DVK (median; 0.05 or less: the floor is "
             "right, above it the correction overshoots) and % of the tissue's true dose rate. One constant: "
             "% of tissue voxels.", "",
             "| phantom | model | at the floor | truth / DVK there | true dose there | one constant |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {key} | {m} | {100 * d['floor_share']:.3f} | {_fmt(d.get('floor_truth_ratio'), 3)} | "
              f"{_fmt(100 * d.get('floor_truth_share', float('nan')), 3)} | {100 * d['constant_share']:.3f} |"
              for key, m, d in rows]
    return lines


def _family_section(by_family: dict, methods: list[str]) -> list[str]:
    """Mean dose-rate error (%) per virtual-patient family, when the test phantoms hold several."""
    if len(by_family) <= 1:
        return []
    lines = ["", "## Mean dose-rate error % per virtual-patient family", "",
             "| family | VOI | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for fam, summary in by_family.items():
        for g in VOI_GROUPS:
            if g in summary["table"]:
                row = summary["table"][g]
                lines.append(f"| {fam} | {g} | " + " | ".join(_fmt(row.get(m, {}).get("mean_error"))
                                                              for m in methods) + " |")
    return lines


def _ablation_section(s: dict, methods: list[str]) -> list[str]:
    """Mean dose-rate error (%) of the ablation models beside the CNN (the paper's Table 3)."""
    ablations = [m for m in methods if m.startswith("cnn_")]
    if not ablations:
        return []
    lines = ["", "## Ablations (Table 3): mean dose-rate error %", "",
             "| VOI | " + " | ".join(["cnn", *ablations]) + " |", "|---|" + "---|" * (1 + len(ablations))]
    for g in VOI_GROUPS:
        if g in s["table"]:
            lines.append(f"| {g} | " + " | ".join(_fmt(s["table"][g].get(m, {}).get("mean_error"))
                                                    for m in ["cnn", *ablations]) + " |")
    return lines


def add_evaluate_arguments(sub) -> None:
    p = sub.add_parser("evaluate", help="the paper's evaluation on a data set's test phantoms, or on the sphere "
                                        "phantom with an exact truth (--spheres)")
    p.add_argument("--data", help="data set folder (from `dblurdose data generate`)")
    p.add_argument("--model", help="model file (default: the shipped weights)")
    p.add_argument("--ablation", action="append", default=[], metavar="NAME=FILE",
                   help="an ablation model to compare, e.g. no_residual=nores.pt (repeatable)")
    p.add_argument("--out", default="dblurdose-evaluation", help="report folder")
    p.add_argument("--recon", choices=("standard", "ood"), default="standard",
                   help="the test phantoms' own reconstructions, or those outside the training mix "
                        "(`data generate --out-of-mix`)")
    p.add_argument("--family", choices=("anatomical", "shapes"),
                   help="only the test phantoms of this virtual-patient family (default: all, also summarised "
                        "per family); shapes-family phantoms come from `data generate --held-out`")
    p.add_argument("--split", choices=tuple(SPLIT_NAMES), default="test",
                   help="the test phantoms (final figures), the validation phantoms (to compare training choices) "
                        "or the training phantoms (how well a model fits its own data)")
    p.add_argument("--phantoms", metavar="RANGE",
                   help="only these phantoms of the split, by index (e.g. 1,9: those finished while the data set "
                        "grows; the report names them; default: all, each finished)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps")
    p.add_argument("--deconvolve", type=int, action="append", default=[], metavar="N",
                   help="also a reference that knows the blur: the DVK of the SPECT after N Richardson-Lucy iterations "
                        "with a Gaussian of its chain's Gaussian-equivalent FWHM; repeatable")
    p.add_argument("--consistent", action="store_true",
                   help="also each CNN's maps kept consistent with the SPECT at the chain's Gaussian-equivalent FWHM, "
                        "as `dose --spect-fwhm` makes them (methods consistent_cnn, consistent_cnn_NAME)")
    g = p.add_argument_group("sphere phantom (no data set: six IEC spheres in water, whose true dose rate is exact)")
    g.add_argument("--spheres", action="store_true", help="evaluate on the sphere phantom instead of a data set")
    g.add_argument("--chain", action="append", metavar="CHAIN",
                   help="SPECT chain: in-mix, in-mix-sharp, out-of-mix, or fwhm=F (an ideal Gaussian system of F mm); "
                        "repeatable (default: the three named)")
    g.add_argument("--contrast", type=float, help="sphere to background activity ratio (default 8)")
    g.add_argument("--counts", type=float, help="expected photopeak counts (default 1e7)")
    g.add_argument("--realisations", type=int, help="Poisson realisations (default 3)")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    ablations = {}
    for item in args.ablation:
        if "=" not in item:
            raise DblurDoseError(f"cannot read the ablation model {item!r}; write NAME=FILE, e.g. no_residual=nores.pt")
        name, path = item.split("=", 1)
        ablations[name] = path
    sphere_options = [args.chain, args.contrast, args.counts, args.realisations]
    if args.spheres:
        if args.data or args.recon != "standard" or args.family or args.split != "test" or args.phantoms is not None:
            raise DblurDoseError("the sphere phantom is evaluated without a data set: leave out the data set and the "
                                 "choice of its phantoms and reconstructions, or evaluate them apart")
        return _evaluate_spheres(args, ablations)
    if any(value is not None for value in sphere_options):
        raise DblurDoseError("the SPECT chain, contrast, counts and realisations are the sphere phantom's settings; "
                             "ask for the sphere phantom, or leave them out to evaluate a data set")
    if not args.data:
        raise DblurDoseError("name the data set to evaluate, or ask for the sphere phantom (which needs none)")
    evaluate(args.data, args.model, ablations, args.out, args.device, recon="" if args.recon == "standard" else args.recon,
             family=args.family, split=args.split, deconvolution=args.deconvolve, consistent=args.consistent,
             phantoms=None if args.phantoms is None else layout.parse_range(args.phantoms))
    print(Path(args.out) / "report.md")
    return 0


def _evaluate_spheres(args, ablations: dict[str, str]) -> int:
    """``dblurdose evaluate --spheres``: :func:`~DblurDoseLib.evaluation.spheres.evaluate_spheres` of the model
    and the ablations, report written to ``--out``."""
    from ..devices import resolve_device
    from ..learning.inference import load_model
    from .spheres import SPHERE_CHAINS, evaluate_spheres, write_sphere_report

    device = str(resolve_device(args.device))
    models = {"cnn": load_model(args.model, device=device)}
    models.update({f"cnn_{name}": load_model(path, device=device) for name, path in ablations.items()})
    given = {k: v for k, v in (("contrast", args.contrast), ("counts", args.counts),
                                ("realisations", args.realisations)) if v is not None}
    results = evaluate_spheres(models, args.chain or list(SPHERE_CHAINS), device=device,
                               deconvolution=args.deconvolve, consistent=args.consistent, **given)
    print(write_sphere_report(results, args.out))
    return 0
