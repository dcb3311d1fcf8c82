"""The layout of a data-set folder (``dblurdose data generate``): its file names, in one place.

:mod:`DblurDoseLib.data` writes this layout; :mod:`DblurDoseLib.learning.training` and
:mod:`DblurDoseLib.evaluation.evaluate` read it. All volumes are gzip-compressed NRRD::

    DIR/manifest.json              settings, seeds, versions, timings; per phantom its split and family
    DIR/pNN/hu.nrrd                CT in HU                                (CT grid)
    DIR/pNN/density.nrrd           g/cm3                                   (CT grid)
    DIR/pNN/activity.nrrd          true activity, Bq/mL                    (CT grid)
    DIR/pNN/labels.nrrd            VOI labelmap (int16); names in labels.json
    DIR/pNN/labels.json            {"label_names": {value: name}, "info": the phantom's info}
    DIR/pNN/spect{T}_native_r{R}.nrrd  reconstructed SPECT, Bq/mL          (SPECT grid)
    DIR/pNN/spect{T}_r{R}.nrrd     the same on the CT grid (activity conserved)
    DIR/pNN/dvk{T}_r{R}.nrrd       DVK dose rate of spect{T}_r{R}, mGy/h
    DIR/pNN/mc_spect{T}_r{R}.nrrd  test phantoms: Monte Carlo dose rate of spect{T}_r{R}, mGy/h
    DIR/pNN/mc_truth.nrrd          Monte Carlo dose rate of the true activity, mGy/h (the label)
    DIR/pNN/mc_truth_unc.nrrd      its relative uncertainty (1 sigma)
    DIR/pNN/mc_truth_d{N}.nrrd     the nested partial label: mean over the first N decays (+ ``_unc``)
    DIR/pNN/done.json              per-part timings (s)
    DIR/pNN/spect{T}_rl{N}_r{R}.nrrd  ``data deconvolve``: spect{T}_native_r{R} after N Richardson-Lucy
                                   iterations at its chain's resolution, on the CT grid (activity conserved)
    DIR/pNN/dvk{T}_rl{N}_r{R}.nrrd    its DVK dose rate, mGy/h
    DIR/resolution.json            ``data deconvolve``: each reconstruction's Gaussian-equivalent FWHM (mm)
    DIR/.cache/pNN/NAME.npy        training's memory-mapped copies of the volumes

``NN`` is the phantom index (two digits at least), ``R`` the Poisson realisation, ``T`` the
reconstruction's tag: "" for the data set's own, ``_ood`` for the one outside the training mix.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..errors import DblurDoseError

MANIFEST = "manifest.json"
#: per-phantom timings of the finished parts, in seconds
DONE = "done.json"
#: label names and the phantom's info beside ``labels.nrrd``
LABEL_NAMES = "labels.json"
#: the anatomy of a phantom, one volume each on the CT grid: HU, g/cm3, Bq/mL, labelmap
ANATOMY = ("hu", "density", "activity", "labels")
#: the virtual-patient families ("anatomical" where unrecorded: manifests from before families)
FAMILIES = ("anatomical", "shapes")
#: the reconstructions of a phantom by name: the data set's own and the one outside the training mix
RECON_TAGS = {"": "", "standard": "", "ood": "_ood"}
#: per-realisation volumes: reconstructed SPECT on its own grid and on the CT grid, DVK, SPECT + Monte Carlo
REALISATION_STEMS = ("spect_native", "spect", "dvk", "mc_spect")
#: stem of the Monte Carlo label files
TRUTH_STEM = "mc_truth"
#: each reconstruction's chain and Gaussian-equivalent FWHM (mm), by chain: see :func:`resolution_key`
RESOLUTION = "resolution.json"
#: training's memory-mappable copies of the volumes (``.npy``), one sub-folder per phantom
CACHE = ".cache"


def phantom_key(index: int) -> str:
    """The folder name (and manifest key) of phantom ``index``: ``p00``, ``p01``, ..."""
    return f"p{int(index):02d}"


def parse_range(text: str) -> list[int]:
    """Phantom indices from a range: '0-13' or '0,2,5-7' -> sorted unique indices.

    Raises
    ------
    DblurDoseError
        For text that is not a range, or an empty or negative one.
    """
    out: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                a, b = part.split("-")
                out.extend(range(int(a), int(b) + 1))
            elif part.strip():
                out.append(int(part))
    except ValueError:
        raise DblurDoseError(f"cannot read the phantom range {text!r}; write e.g. 0-13 or 0,2,5-7") from None
    if not out or min(out) < 0:
        raise DblurDoseError(f"the phantom range {text!r} is empty or negative")
    return sorted(set(out))


def volume_file(name: str) -> str:
    """The file of a phantom's volume ``name`` (one of :data:`ANATOMY`)."""
    return f"{name}.nrrd"


def recon_tag(recon: str) -> str:
    """The file tag of a reconstruction: "" (or "standard") -> "", "ood" -> "_ood"."""
    try:
        return RECON_TAGS[recon]
    except KeyError:
        raise DblurDoseError(f"unknown reconstruction {recon!r}; choose the standard one or 'ood'") from None


def realisation_file(stem: str, realisation: int, tag: str = "") -> str:
    """The file of realisation ``realisation`` of a per-realisation volume.

    Parameters
    ----------
    stem : str
        One of :data:`REALISATION_STEMS`.
    realisation : int
        The Poisson realisation, from 0.
    tag : str
        The reconstruction's tag (:func:`recon_tag`): "" or "_ood".

    Returns
    -------
    str
        e.g. ``spect_r0.nrrd``, ``spect_ood_native_r1.nrrd``, ``dvk_ood_r2.nrrd``, ``mc_spect_r0.nrrd``.
    """
    if stem not in REALISATION_STEMS:
        raise ValueError(f"unknown per-realisation volume {stem!r}; one of {REALISATION_STEMS}")
    if stem == "spect_native":  # the tag names the reconstruction: spect_ood_native_r0
        return f"spect{tag}_native_r{int(realisation)}.nrrd"
    return f"{stem}{tag}_r{int(realisation)}.nrrd"


def deconvolved_file(stem: str, iterations: int, realisation: int, tag: str = "") -> str:
    """The file of a realisation's deconvolved SPECT (``stem`` "spect", Bq/mL, CT grid) or of its DVK
    (``stem`` "dvk", mGy/h), after ``iterations`` Richardson-Lucy iterations: e.g. ``spect_rl10_r0.nrrd``,
    ``dvk_ood_rl10_r2.nrrd``."""
    if stem not in ("spect", "dvk"):
        raise ValueError(f"unknown deconvolved volume {stem!r}; 'spect' or 'dvk'")
    return f"{stem}{tag}_rl{int(iterations)}_r{int(realisation)}.nrrd"


def resolution_key(chain: dict) -> str:
    """The key of a SPECT chain (camera, views, voxel size, OSEM, post-filter) in :data:`RESOLUTION`: its
    settings as sorted JSON, so that realisations sharing a chain share one measurement."""
    return json.dumps(chain, sort_keys=True)


def realisation_files(stem: str, realisations: int, tag: str = "") -> list[str]:
    """:func:`realisation_file` for realisations 0 .. ``realisations`` - 1."""
    return [realisation_file(stem, r, tag) for r in range(int(realisations))]


def truth_file(decays: int | None = None, uncertainty: bool = False) -> str:
    """Name of a phantom's Monte Carlo label: the full one (``decays=None``) or the mean over its first
    ``decays`` decays; with ``uncertainty``, that label's relative uncertainty."""
    stem = TRUTH_STEM if decays is None else f"{TRUTH_STEM}_d{int(decays)}"
    return f"{stem}_unc.nrrd" if uncertainty else f"{stem}.nrrd"


def label_decays_available(folder: str | os.PathLike) -> list[int]:
    """Decay counts of the partial labels (``mc_truth_d{N}.nrrd``) in a phantom folder, ascending."""
    prefix, suffix = f"{TRUTH_STEM}_d", ".nrrd"
    names = (p.name[len(prefix):-len(suffix)] for p in Path(folder).glob(f"{prefix}*{suffix}"))
    return sorted(int(n) for n in names if n.isdigit())


def read_manifest(data_dir: str | os.PathLike, complete: bool = True) -> dict:
    """The manifest of the data set in ``data_dir``.

    Parameters
    ----------
    data_dir : str or path
        The data-set folder.
    complete : bool
        Also check that it lists phantoms and a voxel spacing (mm, x y z), as training needs.

    Raises
    ------
    DblurDoseError
        When the folder holds no manifest, an unreadable one, or (``complete``) one without phantoms or spacing.
    """
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DblurDoseError(f"{data_dir} is not a DblurDose data set (no {MANIFEST}); "
                             "make one with `dblurdose data generate`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DblurDoseError(f"{path} is not valid JSON ({exc}); regenerate or repair the data set") from None
    if complete and (not manifest.get("phantoms") or len(manifest.get("spacing", [])) != 3):
        raise DblurDoseError(f"{path} lists no phantoms or no voxel spacing; finish `dblurdose data generate` first")
    return manifest


def split_of(entry: dict) -> str:
    """The split of a manifest's phantom entry ("train" where unrecorded)."""
    return entry.get("split", "train")


def family_of(entry: dict) -> str:
    """The virtual-patient family of a manifest's phantom entry (manifests before families: "anatomical")."""
    return entry.get("family", "anatomical")


def virtual_patients(manifest: dict, splits: tuple[str, ...] = ("val", "test")) -> dict[tuple[int, str], str]:
    """The virtual patients of a data set's phantoms in ``splits``: those its ``plan`` lists (every phantom,
    made or not) and those made (all that older manifests, without a plan, tell).

    A phantom is drawn from its seed (the data set's base seed and its index) by its family's generator:
    the same seed and family make the same patient, whatever the data set.

    Returns
    -------
    dict
        ``(seed, family)`` -> phantom key (``"p27"``).
    """
    entries = [*manifest.get("plan", {}).items(), *manifest.get("phantoms", {}).items()]
    return {(int(entry["seed"]), family_of(entry)): key for key, entry in entries
            if split_of(entry) in splits and "seed" in entry}


def realisations_of(entry: dict) -> int:
    """The number of SPECT realisations of a manifest's phantom entry (1 where unrecorded)."""
    return int(entry.get("realisations", 1))


def phantoms_in(manifest: dict, split: str, family: str | None = None) -> list[str]:
    """The sorted keys of the manifest's phantoms in ``split`` (and ``family``, unless None)."""
    return sorted(key for key, entry in manifest["phantoms"].items()
                  if split_of(entry) == split and family in (None, family_of(entry)))


def read_label_names(folder: str | os.PathLike) -> dict:
    """A phantom folder's ``labels.json``: ``{"label_names": {"value": name}, "info": {...}}``."""
    return json.loads((Path(folder) / LABEL_NAMES).read_text())


def recorded_chains(entry: dict, key: str, n_real: int, recon: str = "") -> list[dict]:
    """The SPECT chain of each realisation of a phantom, as its manifest entry records it: camera, views,
    voxel size (mm) and the realisation's OSEM and post-filter; ``recon`` "ood": the out-of-mix chain."""
    plan = entry.get("spect_ood" if recon == "ood" else "spect")
    wanted = ("camera", "n_views", "voxel_mm")
    if not isinstance(plan, dict) or any(k not in plan for k in wanted):
        raise DblurDoseError(f"the manifest records no SPECT chain (camera, views, voxel size) for {key}; "
                             "deconvolution and the consistency step need each chain: regenerate the data set with a newer "
                             "dblurdose")
    if recon == "ood":
        return [{k: plan[k] for k in (*wanted, "iterations", "subsets", "postfilter_fwhm_mm") if k in plan}] * n_real
    recons = plan.get("reconstructions", [])
    if len(recons) < n_real:
        raise DblurDoseError(f"the manifest records {len(recons)} reconstructions for {key}'s {n_real} realisations")
    return [{**{k: plan[k] for k in wanted}, **recons[r]} for r in range(n_real)]


def read_resolutions(data_dir: str | os.PathLike) -> dict:
    """The data set's :data:`RESOLUTION` table (:func:`resolution_key` -> the chain and its Gaussian-equivalent
    FWHM, mm); empty where none was measured yet."""
    path = Path(data_dir) / RESOLUTION
    return json.loads(path.read_text()) if path.is_file() else {}


def recorded_fwhm(table: dict, chain: dict) -> float:
    """A chain's Gaussian-equivalent FWHM (mm) as ``table`` (:func:`read_resolutions`) records it; NaN where it
    holds no measurement of the chain, or one that no Gaussian matched."""
    value = table.get(resolution_key(chain), {}).get("fwhm_mm")
    return math.nan if value is None else float(value)


def recorded_fwhms(table: dict, entry: dict, n_real: int, recon: str = "") -> list[float]:
    """:func:`recorded_fwhm` of each realisation's chain (:func:`recorded_chains`); NaN throughout where the
    manifest records no chain."""
    try:
        chains = recorded_chains(entry, "", n_real, recon)
    except DblurDoseError:
        return [math.nan] * n_real
    return [recorded_fwhm(table, chain) for chain in chains]
