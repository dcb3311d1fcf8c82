"""Training DblurDoseNet on a data set written by ``dblurdose data generate``.

Data: ``DIR/manifest.json`` lists the phantoms with their split ("train"/"val"/"test") and number of
SPECT realisations; ``DIR/pNN/`` holds ``density.nrrd`` (g/cm3), ``spect_r*.nrrd`` (Bq/mL),
``dvk_r*.nrrd`` and ``mc_truth.nrrd`` (mGy/h; or with ``--label-decays N`` the nested partial
label ``mc_truth_dN.nrrd``), all on the CT grid. Each (phantom,
realisation) is one training volume; "test" phantoms are never read. Validation uses the data
set's "val" phantoms (``data generate --validation N``: truth of the test phantoms' decays) or,
without them, holds out whole phantoms of the "train" split (20%, at least one when there are
two or more; chosen by the seed), so no slice of a validation phantom is ever trained on.

A training sample is a *slab*: ``slab`` consecutive output slices of a ``patch`` x ``patch``
in-plane patch, read as ``slab + 10`` input slices (volume ends replicated, as at inference)
and evaluated with the shared-extractor forward
(:meth:`~DblurDoseLib.learning.network.DblurDoseNet.forward_slab`, same result and the same batch-norm
statistics as the per-pack forward). A batch is ``batch_size`` output slices
(``batch_size // slab`` slabs). Patch centres are drawn from the hottest body voxels (top 2% of
the true dose rate: kidneys, lesions, spleen) 3 times in 10, from other tissue (density
>= 0.1 g/cm3) 6 times in 10, anywhere otherwise; random in-plane flips/transposition and z flips.
Inputs and label are scaled per volume as in :mod:`DblurDoseLib.learning.network`.

Loss (:func:`training_loss`): mean squared error with voxel weights 0.7 inside the body
(centre-slice density >= 0.1 g/cm3) and 0.3 outside, as the public reference code, plus
``relative_weight`` (default 1) times the mean squared *relative* error in the body, relative to
the DVK. The scaled MSE is ruled by the hottest voxels; the large low-dose tissue, where most of
the body's energy is, hardly counts, and v0.2, trained on the MSE alone, lost 8% of the
whole-body dose and drove some tissue to its floor. The relative term weighs every body voxel
alike (the DVK, smooth and noise-free, is the denominator; the truth's Monte Carlo noise would
reward under-estimates). With ``normalise_slabs`` the MSE term is
taken per slab relative to the slab's DVK energy: under the plain MSE, measured at the v0.2
weights on v03's training phantoms, a tenth of the batches (those through hot lesions) carried
84% of the squared gradient norm and about 13 batches had to be averaged for the mean gradient to
stand out of the noise; normalised, about 3. The validation loss is the same sum; :func:`validation_loss` (model
comparisons, the model card) is the weighted MSE alone. Adam; learning rate by a one-cycle
schedule (warm-up to the peak over the first 5% of steps, then cosine decay; the default), or the
paper's ReduceLROnPlateau (factor 0.2, patience 10 epochs) on the validation loss.

Through the consistency step (``consistent`` = a share s > 0; :func:`batch_loss`): the loss is (1 - s) x the
above on the network's map plus s x the same on that map kept consistent with the SPECT, as ``dose
--spect-fwhm`` keeps it (:mod:`DblurDoseLib.learning.consistency`: each slab with the DVK of its SPECT as
reconstructed, its density and its realisation's resolution from the data set's ``resolution.json``); the
validation then also logs the kept map's weighted MSE (``val_mse_consistent``).

Batch norm: the running statistics that validation and inference use are, at the end of every
epoch, the plain average over its second half of batches (not PyTorch's momentum of 0.1, under
which the last ten batches ruled them and the validation loss swung by 20% with the weights fixed).
With ``freeze_batch_norm_from`` = E the batch norms are frozen from epoch E on: they normalise
with those running statistics and keep them, in training as at inference, so that the network
trained is the network used (with batch statistics, a batch of hot patches normalises every
patch in it differently from how inference will).

Every epoch: a checkpoint ``OUT.ckpt`` (model, optimiser, scheduler, history; ``resume``
continues from it), the loss curve ``OUT.loss.png``, the last epoch's model file ``NAME.last.pt``
(for ``OUT`` = ``NAME.pt``), and the model file ``OUT`` rewritten whenever the validation loss is
the best so far. :mod:`~DblurDoseLib.learning.validation` compares such files (``dblurdose
validate``). Volumes are cached as ``.npy`` files
(memory-mapped) in ``DIR/.cache`` (or beside ``OUT`` when ``DIR`` is read-only).

Devices: CUDA with mixed precision (bf16 where supported, else fp16 with loss scaling), then
MPS, then CPU (float32; with ``cpu_bf16`` the forward pass in bf16). Under ``torchrun``
(``WORLD_SIZE`` > 1) every process trains with
DistributedDataParallel on its own GPU (``LOCAL_RANK``) or on the CPU (gloo); only rank 0
writes files and prints.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ..errors import DblurDoseError
from ..io import dataset as layout
from ..io.dataset import read_manifest
from ..io.outputs import atomic_file
from ..physics.density import AIR_DENSITY_THRESHOLD

if TYPE_CHECKING:  # torch is imported when training runs, not with this module (the command line imports it)
    import torch

    from .network import ModelConfig

Progress = Callable[[float, str], object]
BODY_WEIGHT, OUTSIDE_WEIGHT = 0.7, 0.3
TISSUE_FRACTION = 0.9  # share of patches centred on tissue (hot voxels included)
HOT_FRACTION = 0.3  # share of patches centred on a hot voxel (top HOT_QUANTILE of the body's true dose rate)
HOT_QUANTILE = 0.98  # kidneys, lesions, spleen: where the DVK's blur error is largest and the VOIs are small
SCHEDULES = ("onecycle", "plateau")
VAL_FRACTION = 0.2
VAL_BATCHES = 8
#: weight of the relative-error term of the loss (see training_loss); 0: the weighted MSE alone (v0.2)
RELATIVE_WEIGHT = 1.0
BN_MOMENTUM = 0.1  # PyTorch's batch-norm momentum, restored after each epoch's averaging
#: the relative error's denominator is the DVK + RELATIVE_EPS x the batch's mean body DVK (no blow-up near 0)
RELATIVE_EPS = 0.1
#: normalise_slabs: a slab's weighted mean DVK^2 is floored at SLAB_FLOOR^2 (scaled dose rate: about a tenth of
#: soft tissue's, whose median is 0.07-0.25 in data set v03), so that slabs of air do not blow up
SLAB_FLOOR = 0.02


@dataclass
class _Case:
    """One training volume: a (phantom, SPECT realisation) pair, arrays memory-mapped."""

    phantom: str
    spect: np.ndarray
    dvk: np.ndarray
    density: np.ndarray
    truth: np.ndarray
    spect_factor: float  # spect_scale_ml / total activity
    dose_factor: float  # dose_scale / total activity
    tissue: np.ndarray  # flat indices of (a sample of) tissue voxels
    hot: np.ndarray  # flat indices of (a sample of) the hottest body voxels (true dose rate)
    reference: np.ndarray  # the DVK of the SPECT as reconstructed (``dvk`` itself unless the inputs are deconvolved)
    fwhm_mm: float  # the realisation's SPECT resolution as the data set records it (mm); NaN: not measured


class Batch(NamedTuple):
    """A training or validation batch of :func:`sample_batch`, float32 arrays."""

    x: np.ndarray  # inputs [n, 2, slab + 10, P, P]: scaled SPECT, density (g/cm3)
    dvk: np.ndarray  # the input DVK [n, 1, slab, P, P], scaled dose rate
    truth: np.ndarray  # the label [n, 1, slab, P, P], scaled dose rate
    weight: np.ndarray  # voxel weights [n, 1, slab, P, P]: BODY_WEIGHT or OUTSIDE_WEIGHT
    reference: np.ndarray  # the DVK of the SPECT as reconstructed [n, 1, slab, P, P], scaled dose rate
    fwhm_mm: np.ndarray  # [n] each slab's SPECT resolution (mm; NaN: not measured)


# --- the data set ---------------------------------------------------------------------------


def split_phantoms(manifest: dict, seed: int, val_fraction: float = VAL_FRACTION) -> tuple[list[str], list[str]]:
    """The training and validation phantoms of a data set, whole phantoms only.

    Parameters
    ----------
    manifest : dict
        The data set's manifest (:func:`~DblurDoseLib.io.dataset.read_manifest`).
    seed : int
        Chooses the validation phantoms when the data set has no "val" split.
    val_fraction : float
        Share of the "train" phantoms held out then (at least one of two or more, never all).

    Returns
    -------
    (list of str, list of str)
        Sorted training and validation phantom keys: the data set's "val" phantoms when it has some
        (their truth has the test phantoms' decays), otherwise "train" phantoms chosen by ``seed``.
        "test" phantoms are never among them.
    """
    train = layout.phantoms_in(manifest, "train")
    if not train:
        raise DblurDoseError("the data set has no phantoms in the 'train' split; generate more phantoms")
    given = layout.phantoms_in(manifest, "val")
    if given:
        return train, given
    n_val = 0 if len(train) < 2 else min(max(1, round(val_fraction * len(train))), len(train) - 1)
    rng = np.random.default_rng([seed, 7])
    val = sorted(str(v) for v in rng.choice(train, size=n_val, replace=False)) if n_val else []
    return [p for p in train if p not in val], val


def choose_phantoms(manifest: dict, train_names: list[str], val_names: list[str], phantoms: list[int] | None,
                    val_phantoms: list[int] | None) -> tuple[list[str], list[str]]:
    """The training and validation phantoms a run uses: :func:`split_phantoms`'s, or those the user names.

    Parameters
    ----------
    manifest : dict
        The data set's manifest (complete phantoms only).
    train_names, val_names : list of str
        The split's training and validation phantoms.
    phantoms, val_phantoms : list of int, optional
        Phantom indices to train and validate on instead: a smaller training set (learning curves
        against data size), or a run that keeps its phantoms while the data set grows (so that it
        resumes). Training phantoms must be in the data set's "train" split (those the seed drew for
        validation, where it has no "val" split, included); validation phantoms in the validation
        split, or training phantoms not trained on.

    Returns
    -------
    (list of str, list of str)
        Sorted phantom keys.
    """
    train = train_names if phantoms is None else [layout.phantom_key(i) for i in phantoms]
    val = val_names if val_phantoms is None else [layout.phantom_key(i) for i in val_phantoms]
    if phantoms is not None and val_phantoms is None:
        val = [v for v in val if v not in train]
    trainable = set(train_names) | (set(val_names) & set(layout.phantoms_in(manifest, "train")))
    for chosen, allowed, what in ((train, trainable, "training"),
                                  (val, (set(val_names) | trainable) - set(train), "validation")):
        wrong = [k for k in chosen if k not in allowed]
        if wrong:
            have = ", ".join(sorted(allowed)) or "none"
            raise DblurDoseError(f"cannot train with {', '.join(wrong)} as {what} phantoms: the data set's complete "
                                 f"{what} phantoms here are {have}; choose among them")
    if not train:
        raise DblurDoseError("no training phantoms chosen; choose at least one")
    return sorted(train), sorted(val)


def _cache_dir(data_dir: Path, out_path: Path) -> Path:
    for folder in (data_dir / layout.CACHE, out_path.parent / (out_path.name + ".cache")):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
            return folder
        except OSError:
            continue
    raise DblurDoseError(f"cannot write a cache next to {data_dir} or {out_path}; check the permissions")


def _array(path: Path, cache: Path) -> np.ndarray:
    """The volume in ``path`` (NRRD) as a read-only memory map of a cached .npy copy."""
    from ..io.volume import read_volume

    if not path.is_file():
        raise DblurDoseError(f"the data set is incomplete: {path} is missing; resume `dblurdose data generate`")
    npy = cache / path.parent.name / (path.name.split(".")[0] + ".npy")
    if not npy.is_file() or npy.stat().st_mtime < path.stat().st_mtime:
        npy.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(npy, f".{os.getpid()}.part") as tmp, open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(read_volume(path).array, dtype=np.float32))
    return np.load(npy, mmap_mode="r")


def label_file(data_dir: Path, phantoms: list[str], label_decays: int | None = None) -> str:
    """The label file to train on.

    Parameters
    ----------
    data_dir : Path
        The data set.
    phantoms : list of str
        The phantoms that must all hold the label.
    label_decays : int, optional
        Decays of the nested partial label; None: the full label.

    Returns
    -------
    str
        ``mc_truth.nrrd``, or ``mc_truth_d{N}.nrrd`` (:func:`~DblurDoseLib.io.dataset.truth_file`).
    """
    if label_decays is None:
        return layout.truth_file()
    held = [set(layout.label_decays_available(data_dir / name)) for name in phantoms]
    available = sorted(set.intersection(*held)) if held else []
    if int(label_decays) not in available:
        raise DblurDoseError(f"the data set has no label of {label_decays} decays (available: "
                             f"{', '.join(map(str, available)) or 'none'}); train on one of those, or on the full label")
    return layout.truth_file(int(label_decays))


def load_cases(data_dir: Path, phantoms: list[str], manifest: dict, config: ModelConfig, cache: Path,
               label: str = layout.truth_file()) -> list[_Case]:
    """The training volumes of ``phantoms``: one per (phantom, SPECT realisation) holding activity.

    Parameters
    ----------
    data_dir : Path
        The data set.
    phantoms : list of str
        Phantom keys (``p00``, ...).
    manifest : dict
        The data set's manifest (voxel spacing, mm; realisations per phantom).
    config : ModelConfig
        Gives the input and label scaling (``spect_scale_ml``, ``dose_scale``).
    cache : Path
        Folder of the memory-mapped ``.npy`` copies.
    label : str
        The label file (:func:`label_file`).

    Returns
    -------
    list of _Case
        Arrays memory-mapped; realisations without activity are left out.
    """
    voxel_ml = float(np.prod(manifest["spacing"])) / 1000.0
    resolutions = layout.read_resolutions(data_dir)
    cases = []
    for name in phantoms:
        folder = data_dir / name
        density = _array(folder / layout.volume_file("density"), cache)
        truth = _array(folder / label, cache)
        body = np.flatnonzero(density.reshape(-1) >= AIR_DENSITY_THRESHOLD)
        flat_truth = truth.reshape(-1)
        hot = body[flat_truth[body] >= np.quantile(flat_truth[body], HOT_QUANTILE)] if body.size else body
        body, hot = (np.sort(np.random.default_rng(0).choice(v, 200_000, replace=False)) if v.size > 200_000 else v
                     for v in (body, hot))
        entry = manifest["phantoms"][name]
        fwhms = layout.recorded_fwhms(resolutions, entry, layout.realisations_of(entry))
        for r, fwhm in enumerate(fwhms):
            spect, dvk = (_array(folder / path, cache) for path in _input_files(folder, r, config))
            reference = _array(folder / layout.realisation_file("dvk", r), cache) if config.deconvolution_iterations \
                else dvk
            if not (spect.shape == dvk.shape == density.shape == truth.shape):
                raise DblurDoseError(f"{folder}: volumes of realisation {r} are not on one grid; regenerate the phantom")
            total = float(np.sum(spect, dtype=np.float64)) * voxel_ml
            if not total > 0:
                continue  # no activity: nothing to learn from this realisation
            cases.append(_Case(name, spect, dvk, density, truth, config.spect_scale_ml / total,
                               config.dose_scale / total, body, hot, reference, fwhm))
    return cases


def _input_files(folder: Path, realisation: int, config: ModelConfig) -> tuple[str, str]:
    """The SPECT and DVK files a realisation gives the network: the data set's own, or those deconvolved
    with the config's Richardson-Lucy iterations (refused in one line where the data set lacks them)."""
    n = config.deconvolution_iterations
    if not n:
        return layout.realisation_file("spect", realisation), layout.realisation_file("dvk", realisation)
    names = layout.deconvolved_file("spect", n, realisation), layout.deconvolved_file("dvk", n, realisation)
    if not all((folder / f).is_file() for f in names):
        raise DblurDoseError(f"{folder} has no SPECT deconvolved with {n} Richardson-Lucy iterations for realisation "
                             f"{realisation} ({names[0]}); derive the deconvolved inputs of the data set first (data "
                             "deconvolve), or train without deconvolution")
    return names


def sample_batch(cases: list[_Case], rng: np.random.Generator, n_slabs: int, slab: int, patch: int,
                 hot_fraction: float = HOT_FRACTION) -> Batch:
    """A batch of random slabs (see the module docstring for centres and augmentation).

    Parameters
    ----------
    cases : list of _Case
        The volumes to draw from (uniformly).
    rng : numpy.random.Generator
        The draws.
    n_slabs, slab, patch : int
        Slabs per batch, output slices per slab, in-plane patch size (voxels).
    hot_fraction : float
        Share of slabs centred on the hottest body voxels.

    Returns
    -------
    Batch
        Inputs ``[n, 2, slab + 10, P, P]`` (scaled SPECT, density g/cm3); scaled DVK, scaled label, voxel
        weights (BODY_WEIGHT or OUTSIDE_WEIGHT) and scaled reference DVK, each ``[n, 1, slab, P, P]``; each
        slab's SPECT resolution (mm).
    """
    from .network import HALF

    xs, dvks, truths, weights, references, fwhms = [], [], [], [], [], []
    for _ in range(n_slabs):
        c = cases[rng.integers(len(cases))]
        nz, ny, nx = c.density.shape
        u = rng.random()
        pool = c.hot if u < hot_fraction and c.hot.size else c.tissue if u < TISSUE_FRACTION else None
        if pool is not None and pool.size:
            zc, yc, xc = np.unravel_index(pool[rng.integers(pool.size)], c.density.shape)
        else:
            zc, yc, xc = rng.integers(nz), rng.integers(ny), rng.integers(nx)
        z0 = int(np.clip(zc - slab // 2, 0, nz - slab))
        y0 = int(np.clip(yc - patch // 2, 0, ny - patch))
        x0 = int(np.clip(xc - patch // 2, 0, nx - patch))
        rows = np.clip(np.arange(z0 - HALF, z0 + slab + HALF), 0, nz - 1)
        ys, xs_ = slice(y0, y0 + patch), slice(x0, x0 + patch)
        out = slice(z0, z0 + slab)
        x = np.stack([c.spect[rows, ys, xs_] * np.float32(c.spect_factor), c.density[rows, ys, xs_]])
        dvk = c.dvk[out, ys, xs_] * np.float32(c.dose_factor)
        truth = c.truth[out, ys, xs_] * np.float32(c.dose_factor)
        w = np.where(c.density[out, ys, xs_] >= AIR_DENSITY_THRESHOLD, BODY_WEIGHT, OUTSIDE_WEIGHT).astype(np.float32)
        reference = dvk if c.reference is c.dvk else c.reference[out, ys, xs_] * np.float32(c.dose_factor)
        fwhms.append(c.fwhm_mm)
        # augmentation: the dose physics is unchanged by in-plane flips/transposition and a z flip
        views = [x, dvk[None], truth[None], w[None], reference[None]]
        if rng.random() < 0.5:
            views = [v[:, ::-1] for v in views]
        for axis in (2, 3):
            if rng.random() < 0.5:
                views = [np.flip(v, axis) for v in views]
        if rng.random() < 0.5:
            views = [v.swapaxes(2, 3) for v in views]
        for store, v in zip((xs, dvks, truths, weights, references), views):
            store.append(np.ascontiguousarray(v, dtype=np.float32))
    return Batch(*(np.stack(s) for s in (xs, dvks, truths, weights, references)), np.asarray(fwhms, np.float32))


def validation_batches(val_cases: list[_Case], seed: int, n_slabs: int, slab: int, patch: int) -> list:
    """The fixed validation batches of a run (:data:`VAL_BATCHES` of :func:`sample_batch`, drawn by ``seed``);
    of a fixed composition (HOT_FRACTION), so that runs with another share of hot patches compare.
    Empty without validation volumes."""
    rng = np.random.default_rng([seed, 99])
    return [sample_batch(val_cases, rng, n_slabs, slab, patch) for _ in range(VAL_BATCHES)] if val_cases else []


def training_loss(pred: torch.Tensor, truth: torch.Tensor, weight: torch.Tensor, dvk: torch.Tensor,
                  relative_weight: float = RELATIVE_WEIGHT, normalise_slabs: bool = False) -> torch.Tensor:
    """The training loss of a batch (see the module docstring).

    Parameters
    ----------
    pred, truth, dvk : Tensor, [n, 1, slab, P, P]
        Network output, label and DVK, scaled dose rates.
    weight : Tensor, [n, 1, slab, P, P]
        The voxel weights of :func:`sample_batch` (body voxels have BODY_WEIGHT).
    relative_weight : float
        Weight of the relative term; 0: the weighted MSE alone.
    normalise_slabs : bool
        Divide each slab's weighted mean squared error by its weighted mean DVK^2 (at least
        :data:`SLAB_FLOOR` squared) and average over slabs, instead of the plain weighted MSE:
        a slab through a 100:1 lesion then counts as much as one of plain tissue. The divisor is an
        input, not the label, so the best prediction of each voxel is still the mean of its label.

    Returns
    -------
    Tensor
        The weighted MSE (or its per-slab normalised form) plus ``relative_weight`` x the mean over body
        voxels of ``((pred - truth) / (dvk + eps))^2``, ``eps`` = :data:`RELATIVE_EPS` x the batch's mean
        body DVK (a scalar, dimensionless).
    """
    err = pred.float() - truth
    if normalise_slabs:
        energy = (weight * dvk.float() ** 2).flatten(1).sum(1).clamp_min(SLAB_FLOOR ** 2 * weight.flatten(1).sum(1))
        loss = ((weight * err ** 2).flatten(1).sum(1) / energy).mean()
    else:
        loss = (weight * err ** 2).mean()
    if relative_weight:
        body = weight == BODY_WEIGHT
        if bool(body.any()):
            ref = dvk.clamp_min(0)
            denom = ref + RELATIVE_EPS * ref[body].mean().clamp_min(1e-12)
            loss = loss + relative_weight * (err[body] / denom[body]).square().mean()
    return loss


def batch_loss(pred: torch.Tensor, batch: Batch, spacing_xyz: Sequence[float], relative_weight: float = RELATIVE_WEIGHT,
               normalise_slabs: bool = False, consistent: float = 0.0) -> torch.Tensor:
    """The loss of a batch of tensors: :func:`training_loss` of the network's map ``pred``, and with
    ``consistent`` > 0 that share of it taken on the map kept consistent with the SPECT instead
    (:func:`~DblurDoseLib.learning.consistency.consistent_slabs` with each slab's reference DVK, density and
    resolution; ``spacing_xyz`` in mm), inside the slabs' :func:`~DblurDoseLib.learning.consistency.interior`
    (near a slab's faces the slab's step is not the whole volume's): ``(1 - consistent) x raw + consistent x kept``."""
    from .network import HALF

    raw = training_loss(pred, batch.truth, batch.weight, batch.dvk, relative_weight, normalise_slabs)
    if not consistent:
        return raw
    from .consistency import consistent_slabs, interior

    density = batch.x[:, 1:2, HALF:HALF + pred.shape[2]]
    kept = consistent_slabs(pred, batch.reference, density, batch.fwhm_mm, spacing_xyz)
    inside = (slice(None), slice(None), *interior(pred.shape[2:], float(batch.fwhm_mm.max()), spacing_xyz))
    return (1.0 - consistent) * raw + consistent * training_loss(
        kept[inside], batch.truth[inside], batch.weight[inside], batch.dvk[inside], relative_weight, normalise_slabs)


# --- training -------------------------------------------------------------------------------


def _print_progress(fraction: float, message: str) -> None:
    print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)


def _save_curve(history: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for key, style, label in (("train_loss", "o-", "training"), ("val_loss", "s-", "validation (held-out phantoms)"),
                              ("val_mse", "^--", "validation, weighted MSE alone")):
        points = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
        if points:
            ax.semilogy(*zip(*points), style, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (scaled dose rate)")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_file(path, ".part.png") as tmp:
        fig.savefig(tmp, dpi=100)


def _atomic_torch_save(obj, path: Path) -> None:
    import torch

    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


def checkpoint_path(out_path: str | os.PathLike) -> Path:
    """The checkpoint file of a run writing the model file ``out_path``: ``OUT.ckpt`` beside it."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".ckpt")


def last_model_path(out_path: str | os.PathLike) -> Path:
    """The model file of a run's last finished epoch, beside its best one ``out_path``: ``NAME.last.pt`` for
    ``NAME.pt`` (a fine-tune's one-cycle schedule ends on the weights it was planned for; the validation
    loss of a few batches may favour an earlier epoch by chance)."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}.last{out_path.suffix}")


def _check_options(*, epochs: int, batch_size: int, patch: int, slab: int, lr: float, schedule: str,
                   hot_fraction: float, relative_weight: float, warmup: float,
                   freeze_batch_norm_from: int | None = None, floor_leak: float = 0.0, consistent: float = 0.0) -> None:
    """Refuse option values that :func:`train` cannot use (before anything is read)."""
    named = (("epochs", epochs), ("batch size", batch_size), ("patch", patch), ("slab", slab))
    if freeze_batch_norm_from is not None:
        named += (("first epoch with frozen batch norms", freeze_batch_norm_from),)
    for name, value in named:
        if int(value) < 1:
            raise DblurDoseError(f"the {name} must be at least 1, got {value}")
    if freeze_batch_norm_from is not None and freeze_batch_norm_from > epochs:
        raise DblurDoseError(f"the first epoch with frozen batch norms ({freeze_batch_norm_from}) is after the last "
                             f"({epochs}); choose an epoch from 1 to {epochs}, or leave the batch norms unfrozen")
    if not lr > 0:
        raise DblurDoseError(f"the learning rate must be positive, got {lr}")
    if schedule not in SCHEDULES:
        raise DblurDoseError(f"unknown learning-rate schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if not 0 <= hot_fraction <= TISSUE_FRACTION:
        raise DblurDoseError(f"the share of patches on hot voxels must be between 0 and {TISSUE_FRACTION}, "
                             f"got {hot_fraction}")
    if not relative_weight >= 0:
        raise DblurDoseError(f"the relative-error weight must be 0 or more, got {relative_weight}")
    if not 0 <= floor_leak <= 1:
        raise DblurDoseError(f"the floor's gradient leak must be between 0 and 1, got {floor_leak}")
    if not 0 <= consistent <= 1:
        raise DblurDoseError(f"the share of the loss on the map kept consistent must be between 0 and 1, got "
                             f"{consistent}")
    if not 0 < warmup < 1:
        raise DblurDoseError(f"the warm-up fraction must be between 0 and 1, got {warmup}")


@dataclass
class _Ranks:
    """The processes of a run: one, or torchrun's ``WORLD_SIZE`` with DistributedDataParallel (each
    process on its own GPU, ``LOCAL_RANK``, or on the CPU with gloo). Rank 0 writes and reports."""

    world: int
    rank: int
    device: Any  # torch.device
    own_group: bool = False  # the process group was started here (and is closed here)

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, device: str) -> _Ranks:
        """The processes of this run from torchrun's environment; ``device`` when there is one process."""
        import torch
        import torch.distributed as dist

        from ..devices import resolve_device

        world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
        if world <= 1:
            return cls(world, rank, resolve_device(device))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
            dev = torch.device("cuda", local)
        else:
            dev = torch.device("cpu")
        own_group = not dist.is_initialized()
        if own_group:
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        return cls(world, rank, dev, own_group)

    def mean(self, value: float) -> float:
        """``value`` averaged over the processes."""
        if not self.distributed:
            return value
        import torch
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t) / self.world

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.distributed and self.own_group:
            import torch.distributed as dist

            dist.destroy_process_group()


@dataclass(frozen=True)
class _Sizes:
    """A run's sample sizes: output slices per slab, in-plane patch (voxels), slabs per batch, steps."""

    slab: int
    patch: int
    n_slabs: int
    steps_per_epoch: int
    local_steps: int  # steps of one process per epoch


def _sizes(cases: list[_Case], val_cases: list[_Case], batch_size: int, slab: int, patch: int,
           steps_per_epoch: int | None, world: int) -> _Sizes:
    """The slab and patch (voxels) that fit the smallest training or validation volume, and the steps of
    an epoch (default: one pass over the training slices in patches) and of one of ``world`` processes."""
    nz_min = min(c.density.shape[0] for c in cases + val_cases)
    ny_min = min(min(c.density.shape[1:]) for c in cases + val_cases)
    slab = max(1, min(slab, batch_size, nz_min))
    patch = min(patch, ny_min) // 16 * 16
    if patch < 16:
        raise DblurDoseError(f"volumes of {ny_min} voxels in-plane are too small for the U-Net (16 at least)")
    n_slabs = max(1, batch_size // slab)
    if steps_per_epoch is None:
        area = sum(c.density.shape[0] * c.density.shape[1] * c.density.shape[2] for c in cases)
        steps_per_epoch = max(1, math.ceil(area / (patch * patch * n_slabs * slab)))
    return _Sizes(slab, patch, n_slabs, steps_per_epoch, max(1, math.ceil(steps_per_epoch / world)))


@dataclass(frozen=True)
class _Options:
    """The optimisation options of :func:`train` (see there)."""

    epochs: int
    lr: float
    seed: int
    schedule: str
    warmup: float
    patience: int
    hot_fraction: float
    relative_weight: float
    amp: bool
    freeze_batch_norm_from: int | None = None
    normalise_slabs: bool = False
    cpu_bf16: bool = False
    compile_step: bool = False
    floor_leak: float = 0.0
    consistent: float = 0.0


def _optimiser(net, options: _Options, local_steps: int):
    """Adam and its learning-rate schedule (the module docstring): one-cycle (constant when a run is too
    short to warm up and decay) or ReduceLROnPlateau."""
    import torch

    optimizer = torch.optim.Adam(net.parameters(), lr=options.lr)
    total = options.epochs * local_steps
    if options.schedule == "onecycle" and total < 4:  # too short to warm up and decay: constant lr
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    elif options.schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=options.lr, total_steps=total, anneal_strategy="cos",
            pct_start=min(max(options.warmup, 2.0 / total), 0.5),  # 2 warm-up steps at least
            div_factor=25.0, final_div_factor=400.0)
    else:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.2, patience=options.patience)
    return optimizer, scheduler


#: run settings a checkpoint must share with the run that resumes it (one-cycle: also RESUME_ONECYCLE_KEYS)
RESUME_KEYS = ("variant", "spacing", "patch", "slab", "seed", "train_phantoms", "val_phantoms", "schedule",
               "label_decays", "relative_weight", "decoder_activation", "correction", "init_sha256",
               "freeze_batch_norm_from", "normalise_slabs", "floor_leak", "extra_data", "consistent", "fwhm_input")
#: what a checkpoint that lacks a resume key (an older version's) was made with; others: None
RESUME_DEFAULTS = {"schedule": "plateau", "normalise_slabs": False, "floor_leak": 0.0, "extra_data": [],
                   "consistent": 0.0, "fwhm_input": False}
#: a one-cycle schedule's length is part of its state
RESUME_ONECYCLE_KEYS = ("epochs", "steps_per_epoch", "lr")


class Trainer:
    """One training run: the network, its optimiser and schedule, the training volumes, the fixed
    validation batches and the loss history; :meth:`fit` trains, checkpointing every epoch.

    Parameters
    ----------
    config : ModelConfig
        The network to train.
    cases, val_cases : list of _Case
        Training and validation volumes (:func:`load_cases`).
    sizes : _Sizes
        Slab, patch and steps (:func:`_sizes`).
    options : _Options
        Epochs, learning rate and schedule, seed, sampling and loss options.
    ranks : _Ranks
        The processes of the run and their device.
    settings : dict
        The run's settings, kept in the checkpoint and the model file's ``info``.
    say : callable
        ``say(fraction, message)``: progress of rank 0 (raises to cancel).
    initial : dict, optional
        A state dict to start from (fine-tuning) instead of the random initialisation.
    """

    def __init__(self, config: ModelConfig, cases: list[_Case], val_cases: list[_Case], sizes: _Sizes, options: _Options,
                 ranks: _Ranks, settings: dict, say: Callable[[float, str], None], initial: dict | None = None) -> None:
        import torch
        from torch import nn

        from .network import DblurDoseNet, SlabForward

        self.cases, self.sizes, self.options, self.ranks, self.settings, self.say = (
            cases, sizes, options, ranks, settings, say)
        dev = ranks.device
        torch.manual_seed(options.seed)
        self.net = DblurDoseNet(config)
        if initial is not None:  # fine-tuning: start from trained weights (train's init)
            if self.net.blur is not None and "blur.weight" not in initial:
                # a start without the resolution input: the input stays at zero, so the run begins as the start
                initial = {**initial, **{k: v for k, v in self.net.state_dict().items() if k.startswith("blur.")}}
            self.net.load_state_dict(initial)
        self.net = self.net.to(dev)
        self.net.floor_leak = options.floor_leak
        self.channels_last = dev.type == "cpu" and sizes.patch >= 64
        if self.channels_last:  # oneDNN's preferred layouts (their one-time kernel setup costs more than tiny patches gain)
            self.net.unet.to(memory_format=torch.channels_last)
            if self.net.extractor is not None:
                self.net.extractor.to(memory_format=torch.channels_last_3d)
        self.model: nn.Module = SlabForward(self.net)
        if ranks.distributed:
            self.model = nn.parallel.DistributedDataParallel(self.model,
                                                             device_ids=[dev.index] if dev.type == "cuda" else None)
        if options.compile_step:  # built at the first step (and once more if the batch norms change mode)
            self.model = torch.compile(self.model)
        self.optimizer, self.scheduler = _optimiser(self.net, options, sizes.local_steps)
        # mixed precision: on CUDA unless amp is off; on the CPU when asked (bf16, float32 weights and optimiser)
        self.use_amp = (options.amp and dev.type == "cuda") or (options.cpu_bf16 and dev.type == "cpu")
        self.amp_dtype = torch.bfloat16 if dev.type == "cpu" or (self.use_amp and torch.cuda.is_bf16_supported()) \
            else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.start, self.history, self.best = 0, [], math.inf
        self.val_batches = validation_batches(val_cases, options.seed, sizes.n_slabs, sizes.slab, sizes.patch)

    def resume(self, ckpt_path: Path) -> None:
        """Continue from the checkpoint ``ckpt_path`` (if there is one) of a run with the same settings."""
        import torch

        if not ckpt_path.is_file():
            return
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DblurDoseError(f"the checkpoint {ckpt_path} is unreadable ({type(exc).__name__}); start over "
                                 "without resuming (delete the checkpoint)") from None
        keys = RESUME_KEYS + (RESUME_ONECYCLE_KEYS if self.options.schedule == "onecycle" else ())
        old = ckpt["settings"]
        changed = [k for k in keys if old.get(k, RESUME_DEFAULTS.get(k)) != self.settings[k]]
        if changed:
            raise DblurDoseError(f"the checkpoint {ckpt_path} was made with other settings ({', '.join(changed)}); "
                                 "use the same settings, another output file, or start over without resuming "
                                 "(delete the checkpoint)")
        self.net.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.start, self.history, self.best = int(ckpt["epoch"]), list(ckpt["history"]), float(ckpt["best"])
        self.say(self.start / self.options.epochs, f"resuming after epoch {self.start} from {ckpt_path}")

    def _to_device(self, batch: Batch) -> Batch:
        import torch

        batch = Batch(*(torch.from_numpy(a).to(self.ranks.device, non_blocking=True) for a in batch))
        if self.channels_last and self.net.extractor is not None:
            batch = batch._replace(x=batch.x.contiguous(memory_format=torch.channels_last_3d))
        return batch

    def _loss(self, pred, batch: Batch, mse_only: bool = False, consistent: float | None = None):
        """:func:`batch_loss` with the run's options; ``mse_only``: the weighted MSE alone (no relative term, no
        slab normalisation); ``consistent``: this share on the kept map instead of the run's."""
        opts = self.options
        share = opts.consistent if consistent is None else consistent
        if mse_only:
            return batch_loss(pred, batch, self.net.config.spacing, 0.0, False, share)
        return batch_loss(pred, batch, self.net.config.spacing, opts.relative_weight, opts.normalise_slabs, share)

    def _autocast(self, training: bool = True):
        """Mixed precision where it is on; validation on the CPU stays float32, so that validation losses
        compare between runs with and without ``cpu_bf16``."""
        import torch

        on = self.use_amp and (training or self.ranks.device.type == "cuda")
        return torch.autocast(self.ranks.device.type, dtype=self.amp_dtype, enabled=on)

    def validate(self) -> tuple[float | None, float | None, float | None]:
        """On the fixed validation batches, averaged over them and the processes: the loss
        (:func:`batch_loss`), its weighted MSE alone (what :func:`validation_loss` reports, comparable between
        runs whatever their loss options) and, in a run trained through the consistency step, the weighted MSE
        of the map kept consistent (else None); (None, None, None) without validation phantoms."""
        import torch

        if not self.val_batches:
            return None, None, None
        net = self.net.eval()
        with torch.no_grad(), self._autocast(training=False):
            losses, mses, kept = [], [], []
            for arrays in self.val_batches:
                batch = self._to_device(arrays)
                pred = net.forward_slab(batch.x, batch.dvk if net.residual else None, batch.fwhm_mm)
                mses.append(float(self._loss(pred, batch, mse_only=True, consistent=0.0)))
                losses.append(float(self._loss(pred, batch)))
                if self.options.consistent:
                    kept.append(float(self._loss(pred, batch, mse_only=True, consistent=1.0)))
        mean = [self.ranks.mean(float(np.mean(v))) if v else None for v in (losses, mses, kept)]
        return mean[0], mean[1], mean[2]

    def _forward_train(self, x, dvk, fwhm):
        """The training forward pass; a step that ``torch.compile`` cannot build is refused with its fix."""
        try:
            return self.model(x, dvk, fwhm)  # the FWHMs go unused by a network without the resolution input
        except Exception as exc:
            if not self.options.compile_step or not type(exc).__module__.startswith("torch._"):
                raise
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise DblurDoseError(f"torch.compile could not build the training step ({type(exc).__name__}: {first}); "
                                 "train without compiling, or install the C++ compiler it needs on the CPU") from None

    def train_epoch(self, epoch: int) -> float:
        """Epoch ``epoch`` (from 0): ``local_steps`` steps on batches drawn by (seed, epoch, rank); returns
        the mean training loss over the steps and processes. Reports every minute. The batch norms'
        running statistics (what validation and inference use) end as the plain average over the
        epoch's second half of batches (:func:`_average_batch_norm_from_here`), or, from epoch
        ``freeze_batch_norm_from`` on, are used and kept as they are (:func:`_freeze_batch_norm`)."""
        import torch

        opts, sizes, net = self.options, self.sizes, self.net
        net.train()
        frozen = opts.freeze_batch_norm_from is not None and epoch + 1 >= opts.freeze_batch_norm_from
        if frozen:
            _freeze_batch_norm(net)
        rng = np.random.default_rng([opts.seed, epoch, self.ranks.rank])
        total, last_report = 0.0, time.perf_counter()
        for step in range(sizes.local_steps):
            if step == sizes.local_steps // 2 and not frozen:
                _average_batch_norm_from_here(net)
            batch = self._to_device(sample_batch(self.cases, rng, sizes.n_slabs, sizes.slab, sizes.patch,
                                                 opts.hot_fraction))
            with self._autocast():
                pred = self._forward_train(batch.x, batch.dvk if net.residual else None, batch.fwhm_mm)
            loss = self._loss(pred, batch)
            if not torch.isfinite(loss):
                raise DblurDoseError(f"the training loss became {float(loss)} at epoch {epoch + 1}; lower the "
                                     "learning rate or check the data set for NaN values")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if opts.schedule == "onecycle":
                self.scheduler.step()
            total += loss.item()
            if time.perf_counter() - last_report > 60:
                last_report = time.perf_counter()
                self.say((epoch + (step + 1) / sizes.local_steps) / opts.epochs,
                         f"epoch {epoch + 1}/{opts.epochs}: step {step + 1}/{sizes.local_steps}, "
                         f"loss {total / (step + 1):.4g}")
        if not frozen:
            _average_batch_norm_from_here(net, BN_MOMENTUM)
        return self.ranks.mean(total / sizes.local_steps)

    def save(self, epoch: int, out_path: Path, model_info: dict, best: bool) -> None:
        """Rank 0: the checkpoint, loss curve and last-epoch model file (:func:`last_model_path`) of ``epoch``
        (from 1), and the model file ``out_path`` when ``best`` (the best validation loss so far)."""
        from .network import save_model

        if not self.ranks.main:
            return
        self.net.config.info = {**model_info, **self.settings}
        save_model(self.net, last_model_path(out_path))
        if best:
            save_model(self.net, out_path)
        _atomic_torch_save({"epoch": epoch, "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                            "history": self.history, "best": self.best, "settings": self.settings},
                           checkpoint_path(out_path))
        _save_curve(self.history, out_path.with_name(out_path.stem + ".loss.png"))

    def fit(self, out_path: Path) -> None:
        """Train from the first unfinished epoch to the last; the model file ``out_path`` holds the
        weights of the best validation loss (training loss without validation phantoms)."""
        from .network import save_model

        opts = self.options
        t_start = time.perf_counter()
        if self.start == 0 and self.val_batches:  # the starting point of the validation curve
            val_loss, val_mse, val_kept = self.validate()
            self.history = [{"epoch": 0, "train_loss": None, "val_loss": val_loss, "val_mse": val_mse,
                             **({"val_mse_consistent": val_kept} if opts.consistent else {}),
                             "lr": opts.lr, "seconds": 0.0}]
        for epoch in range(self.start, opts.epochs):
            t0 = time.perf_counter()
            train_loss = self.train_epoch(epoch)
            val_loss, val_mse, val_kept = self.validate()
            monitor = val_loss if val_loss is not None else train_loss
            if opts.schedule == "plateau":
                self.scheduler.step(monitor)
            lr = self.optimizer.param_groups[0]["lr"]
            self.history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
                                 "val_mse": val_mse, **({"val_mse_consistent": val_kept} if opts.consistent else {}),
                                 "lr": lr, "seconds": round(time.perf_counter() - t0, 2)})
            improved = monitor < self.best
            self.best = min(self.best, monitor)
            info = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "val_mse": val_mse}
            self.save(epoch + 1, out_path, info, improved)
            self.ranks.barrier()
            val_text = f", validation {val_loss:.4g} (MSE {val_mse:.4g}" + (
                f", kept consistent {val_kept:.4g})" if val_kept is not None else ")") if val_loss is not None else ""
            self.say((epoch + 1) / opts.epochs, f"epoch {epoch + 1}/{opts.epochs}: training loss {train_loss:.4g}"
                                                f"{val_text}, lr {lr:.2g}, {time.perf_counter() - t0:.1f} s"
                                                + (" (best so far, saved)" if improved else ""))
        if self.ranks.main and not out_path.exists():  # e.g. resumed after the last epoch of an interrupted save
            save_model(self.net, out_path)
        self.say(1.0, f"done in {time.perf_counter() - t_start:.0f} s: {out_path} (best validation loss), "
                      f"{last_model_path(out_path)} (last epoch)")


def _average_batch_norm_from_here(net, momentum: float | None = None) -> None:
    """Restart the running statistics of every batch norm of ``net`` as the plain average of the batches
    it sees from now on (``momentum`` None); with a ``momentum``, leave the statistics and set it back.

    Why: with PyTorch's momentum of 0.1 the statistics are ruled by the last ten or so batches, and
    batches of hot and cold patches differ a lot. Measured on a fine-tuning run at a learning rate of
    nearly zero (weights fixed, epochs 13-16 of pilot G, data set v03): the validation MSE moved
    between 0.137 and 0.165 from epoch to epoch on the statistics alone, so that picking the best
    epoch picked a lucky draw of them; re-estimated as the plain average of 25 batches it held within
    0.144 +- 0.004 (3 draws of batches), of 100 batches 0.150 +- 0.002."""
    from torch import nn

    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            if momentum is None:
                m.reset_running_stats()
            m.momentum = momentum


def _freeze_batch_norm(net) -> None:
    """Every batch norm of ``net`` normalises with its running statistics and keeps them (eval mode) while
    the rest trains; its scale and shift still learn.

    Why: a training batch mixes patches centred on hot lesions with patches of plain tissue, whose
    features differ by orders of magnitude, so batch statistics normalise each patch by what else
    the batch holds; inference normalises by fixed statistics. The weights are fitted to the first
    and used with the second. Measured on data set v03: fine-tuning the v0.2 weights on 8 phantoms
    (pilot F, the MSE alone) lowered their loss with batch statistics (p00: 0.42 -> 0.39) and raised
    it with the running ones that inference uses (0.28 -> 0.45). Frozen from the start of that fine-tune
    (pilot I) the fit was no better, though: the mismatch is real, but it was not what held those runs
    back (see the model card)."""
    from torch import nn

    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _say(progress: Progress, main: bool, fraction: float, message: str) -> None:
    """Report on rank 0; a ``progress`` that returns False cancels the run."""
    if main and progress(fraction, message) is False:
        raise DblurDoseError("training cancelled; resume later from the checkpoint")


def train(
    data_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    epochs: int = 200,
    batch_size: int = 32,
    lr: float = 1e-3,
    patch: int = 128,
    seed: int = 0,
    device: str = "auto",
    resume: bool = True,
    variant: str = "dblurdose",
    progress: Progress | None = None,
    *,
    slab: int = 4,
    steps_per_epoch: int | None = None,
    val_fraction: float = VAL_FRACTION,
    patience: int = 10,
    amp: bool = True,
    schedule: str = "onecycle",
    warmup: float = 0.05,
    hot_fraction: float = HOT_FRACTION,
    label_decays: int | None = None,
    relative_weight: float = RELATIVE_WEIGHT,
    decoder_activation: str | None = None,
    correction: str | None = None,
    phantoms: list[int] | None = None,
    val_phantoms: list[int] | None = None,
    init: str | os.PathLike | None = None,
    freeze_batch_norm_from: int | None = None,
    normalise_slabs: bool = False,
    cpu_bf16: bool = False,
    compile_step: bool = False,
    floor_leak: float = 0.0,
    extra_data: Sequence[str | os.PathLike] = (),
    deconvolve: int = 0,
    consistent: float = 0.0,
    fwhm_input: bool | None = None,
) -> Path:
    """Train a DblurDoseNet on ``data_dir``; writes the model file ``out_path`` and returns its path.

    ``steps_per_epoch`` defaults to one pass over the training slices in patches
    (slices x in-plane area / patch area / batch size). ``schedule``: "onecycle" (linear warm-up
    over the first ``warmup`` of all steps to ``lr``, then cosine annealing to lr/1e4, stepped
    every step) or "plateau" (``lr`` divided by 5 after ``patience`` epochs without a better
    validation loss). ``label_decays``: train on the nested partial label of that many decays
    (``mc_truth_d{N}.nrrd``, noisier) instead of the full one; validation stays on the full label.
    ``relative_weight``: the loss's relative-error term (:func:`training_loss`; 0 for the MSE alone).
    ``normalise_slabs``: each slab's squared error relative to its DVK energy (:func:`training_loss`).
    ``decoder_activation``, ``correction``: the architecture options of
    :class:`~DblurDoseLib.learning.network.ModelConfig` ("relu", "additive": v0.2's network; default:
    those of ``init``, else ModelConfig's: "leaky" and "floored"). ``init``: a model file to start from (fine-tuning),
    of the same variant and working grid. Its weights also serve another decoder activation (the
    parameters are the same) and may move between the "additive" and "floored" corrections (both read
    the output as a dose-rate term; they differ only near the floor); "ratio" reads it as a log factor,
    so it neither takes nor gives weights of the other two.
    ``patch`` and ``slab`` are in voxels and output slices; ``device``: "auto", "cpu", "cuda" or "mps".
    ``phantoms``, ``val_phantoms``: indices of the phantoms to train and validate on (default: the
    data set's split; see :func:`choose_phantoms`).
    ``freeze_batch_norm_from``: the first epoch (from 1) whose batch norms keep and use their running
    statistics in training (:func:`_freeze_batch_norm`; 1 suits fine-tuning with ``init``); default never.
    ``cpu_bf16``: on the CPU, the forward pass in bfloat16 (autocast; weights, optimiser and validation stay
    float32): about half the step time on CPUs with native bf16 (AMX, AVX512-BF16), slower on others
    (``benchmarks/bench_training.py``).
    ``compile_step``: the training forward (and so backward) pass built by ``torch.compile`` (Inductor; on the
    CPU it needs a C++ compiler): its first step takes a minute or two to compile, every later one a tenth to a
    sixth less time here (``benchmarks/bench_training.py``); the weights are the same network's, validation runs
    uncompiled.
    ``floor_leak``: the "floored" correction's training gradient below the floor, at least this share of the
    additive one (:meth:`~DblurDoseLib.learning.network.DblurDoseNet.correct`; values unchanged), so that a
    fine-tune can lift tissue its start weights put deep below the floor; 0: the plain gradient.
    ``extra_data``: more data sets (of the same voxel spacing) whose training phantoms all join the training
    volumes, on their full labels (e.g. a water-family data set, ``data generate --water``); validation stays
    on ``data_dir``'s phantoms. Batches draw volumes uniformly, so each set weighs by its number of volumes.
    ``deconvolve``: train a network whose inputs are the SPECT after this many Richardson-Lucy iterations at its
    chain's resolution and that SPECT's DVK (``ModelConfig.deconvolution_iterations``; the files written by
    ``data deconvolve``, in every data set used); 0: the SPECT as reconstructed.
    ``consistent``: the share (0-1) of the loss taken on the network's map kept consistent with the SPECT, as
    ``dose --spect-fwhm`` keeps it (:func:`batch_loss`), at each realisation's resolution as the data set records
    it (``resolution.json``, written by ``data deconvolve``; every training and validation volume needs one); the
    rest on the network's own map, so that its content at the scales the step replaces stays anchored. 0: none.
    ``fwhm_input``: a network that takes each realisation's SPECT resolution as an input
    (``ModelConfig.fwhm_input``; recorded as for ``consistent``); fine-tuned from a model without it, the input
    starts at zero (the run begins as that model). Default: the ``init`` model's, else without.
    See the module docstring; the run itself is a :class:`Trainer`. Long because its signature and its
    recorded settings name every training option, one per line.
    """
    data_dir, out_path = Path(data_dir), Path(out_path)
    _check_options(epochs=epochs, batch_size=batch_size, patch=patch, slab=slab, lr=lr, schedule=schedule,
                   hot_fraction=hot_fraction, relative_weight=relative_weight, warmup=warmup,
                   freeze_batch_norm_from=freeze_batch_norm_from, floor_leak=floor_leak, consistent=consistent)
    ranks = _Ranks.start(device)
    say = partial(_say, progress or _print_progress, ranks.main)
    manifest = read_manifest(data_dir)
    train_names, val_names = choose_phantoms(manifest, *split_phantoms(manifest, seed, val_fraction), phantoms,
                                             val_phantoms)
    start = _initial_model(init, variant, tuple(manifest["spacing"]), decoder_activation, correction)
    config = _run_config(start, variant, tuple(manifest["spacing"]), decoder_activation, correction, floor_leak,
                         deconvolve, fwhm_input)
    decoder_activation, correction = config.decoder_activation, config.correction
    cache = _cache_dir(data_dir, out_path)
    say(0.0, f"reading {len(train_names)} training and {len(val_names)} validation phantoms "
             f"(held out: {', '.join(val_names) or 'none'})")
    label = label_file(data_dir, train_names, label_decays)
    cases = load_cases(data_dir, train_names, manifest, config, cache, label)
    extra = _extra_cases(extra_data, data_dir, manifest, config, out_path)
    cases += [case for _, _, set_cases in extra for case in set_cases]
    val_cases = load_cases(data_dir, val_names, manifest, config, cache)
    _check_cases(cases, val_cases, bool(consistent) or config.fwhm_input)
    sizes = _sizes(cases, val_cases, batch_size, slab, patch, steps_per_epoch, ranks.world)
    options = _Options(epochs, lr, seed, schedule, warmup, patience, hot_fraction, relative_weight, amp,
                       freeze_batch_norm_from, normalise_slabs, cpu_bf16, compile_step, floor_leak, consistent)
    settings = {"data": str(data_dir.resolve()), "variant": variant, "spacing": list(config.spacing),
                "batch_size": batch_size, "patch": sizes.patch, "slab": sizes.slab, "seed": seed,
                "steps_per_epoch": sizes.steps_per_epoch, "train_phantoms": train_names, "val_phantoms": val_names,
                "lr": lr, "schedule": schedule, "epochs": epochs, "hot_fraction": hot_fraction,
                "label_decays": label_decays, "relative_weight": relative_weight,
                "decoder_activation": decoder_activation, "correction": correction,
                "init": str(init) if init else None, "init_sha256": start.sha256 if start is not None else None,
                "freeze_batch_norm_from": freeze_batch_norm_from, "normalise_slabs": normalise_slabs,
                "cpu_bf16": cpu_bf16, "compile_step": compile_step, "floor_leak": floor_leak,
                "extra_data": [{"data": path, "phantoms": names} for path, names, _ in extra], "deconvolve": deconvolve,
                "consistent": consistent, "fwhm_input": config.fwhm_input}
    trainer = Trainer(config, cases, val_cases, sizes, options, ranks, settings, say,
                      start.state_dict() if start is not None else None)
    if resume:
        trainer.resume(checkpoint_path(out_path))
    trainer.fit(out_path)
    ranks.close()
    return out_path


def _check_cases(cases: list[_Case], val_cases: list[_Case], needs_fwhm: bool) -> None:
    """Refuse a run without training volumes, or one that needs the SPECT's resolution (``needs_fwhm``: the
    consistency step, or the resolution input) where a volume's is not recorded."""
    if not cases:
        raise DblurDoseError("no training volume holds any activity; check the data set")
    missing = sorted({c.phantom for c in cases + val_cases if not np.isfinite(c.fwhm_mm)}) if needs_fwhm else []
    if missing:
        raise DblurDoseError(f"the data set records no SPECT resolution for {', '.join(missing[:5])}"
                             f"{' ...' if len(missing) > 5 else ''} (resolution.json); measure each chain's resolution "
                             "first (data deconvolve records them), or do without the consistency step "
                             "and the resolution input")


def _extra_cases(extra_data: Sequence[str | os.PathLike], data_dir: Path, manifest: dict, config: ModelConfig,
                 out_path: Path) -> list[tuple[str, list[str], list]]:
    """(resolved path, training phantom keys, training volumes) of each extra data set (:func:`train`);
    refused where it is the training data set itself or given twice, its voxel spacing is not the training
    data set's, it has no training phantom, or one of them is a validation or test patient of the training
    data set (:func:`~DblurDoseLib.io.dataset.virtual_patients`)."""
    out, judged = [], layout.virtual_patients(manifest)
    for path in extra_data:
        path = Path(path)
        if path.resolve() in [data_dir.resolve(), *(Path(p) for p, _, _ in out)]:
            raise DblurDoseError(f"{path} is the training data set or given twice; name each extra data set once")
        extra = read_manifest(path)
        if [float(v) for v in extra["spacing"]] != [float(v) for v in manifest["spacing"]]:
            raise DblurDoseError(f"{path} has voxels of {extra['spacing']} mm, the training data set "
                                 f"{manifest['spacing']} mm; generate it with the same preset")
        names = layout.phantoms_in(extra, "train")
        if not names:
            raise DblurDoseError(f"{path} holds no training phantom; give a data set with training phantoms")
        for name in names:  # a patient that judges the network must never be trained on
            entry = extra["phantoms"][name]
            judge = judged.get((int(entry.get("seed", -1)), layout.family_of(entry)))
            if judge is not None:
                raise DblurDoseError(f"{path}'s training phantom {name} is the same virtual patient (seed and family) "
                                     f"as {judge}, a validation or test phantom of {data_dir}; generate it with "
                                     "indices that data set does not use, or another base seed")
        out.append((str(path.resolve()), names,
                    load_cases(path, names, extra, config, _cache_dir(path, out_path), layout.truth_file())))
    return out


def _run_config(start, variant: str, spacing: tuple[float, ...], decoder_activation: str | None,
                correction: str | None, floor_leak: float, deconvolve: int = 0, fwhm_input: bool | None = None):
    """The network to train: the asked options, else those of the model ``start`` (fine-tuning), else
    ModelConfig's defaults; a floor leak is refused where there is no floor (another correction, or none).
    ``deconvolve``: the Richardson-Lucy iterations of its inputs, whatever ``start`` used (same weights).
    ``fwhm_input``: the resolution input (None: ``start``'s, else without); a start with it cannot drop it."""
    from .network import ModelConfig

    options = {"decoder_activation": decoder_activation, "correction": correction}
    if start is not None:  # unset options: the init model's
        options = {k: v or getattr(start.config, k) for k, v in options.items()}
    had = bool(start is not None and start.config.fwhm_input)
    if had and fwhm_input is False:
        raise DblurDoseError("the model to start from takes the SPECT's resolution as an input; fine-tune it with that "
                             "input, or start from a model without it")
    config = ModelConfig(variant=variant, spacing=spacing, deconvolution_iterations=deconvolve,
                         fwhm_input=had if fwhm_input is None else bool(fwhm_input),
                         **{k: v for k, v in options.items() if v})
    if floor_leak and variant == "no_residual":
        raise DblurDoseError("a gradient leak through the floor needs a network that corrects the DVK, not the "
                             "'no_residual' ablation (it has no floor); leave the leak at 0")
    if floor_leak and config.correction != "floored":
        raise DblurDoseError(f"a gradient leak through the floor needs the 'floored' correction, not "
                             f"{config.correction!r}; train the floored correction, or leave the leak at 0")
    return config


def _initial_model(init, variant: str, spacing: tuple[float, ...], decoder_activation: str | None,
                   correction: str | None):
    """The model file to fine-tune from (None without one), refused when it cannot continue this run."""
    from .network import load_model_file

    if init is None:
        return None
    fix = "name a model file written by `dblurdose train` (the shipped weights included), or train from scratch"
    if not Path(init).is_file():
        raise DblurDoseError(f"cannot start training from {init}: no such file; {fix}")
    try:
        start = load_model_file(init)
    except DblurDoseError as exc:  # its own fix is about the shipped weights: say what is wrong, and this fix
        raise DblurDoseError(f"cannot start training from {init}: {str(exc).split(';')[0]}; {fix}") from None
    cfg = start.config
    differ = [f"variant {cfg.variant!r} (asked: {variant!r})"] if cfg.variant != variant else []
    if correction and correction != cfg.correction and "ratio" in (correction, cfg.correction):
        differ.append(f"correction {cfg.correction!r} (asked: {correction!r}; only 'additive' and 'floored' "
                      "share their weights)")
    if tuple(cfg.spacing) != tuple(spacing):
        differ.append(f"working grid {cfg.spacing} mm (the data set's: {tuple(spacing)} mm)")
    if differ:
        raise DblurDoseError(f"cannot start training from {init}: its network has {', '.join(differ)}; start from a "
                             "model of the same network and grid, or train from scratch")
    return start


# --- command line ---------------------------------------------------------------------------


def add_train_arguments(subparser) -> None:
    """Adds the ``train`` options to a parser (or creates the ``train`` command on a subparsers object)."""
    p = subparser.add_parser("train", help="train DblurDoseNet on a data set") \
        if hasattr(subparser, "add_parser") else subparser
    p.add_argument("--data", required=True, help="data set folder written by `dblurdose data generate`")
    p.add_argument("--out", required=True, help="model file to write (e.g. dblurdosenet.pt)")
    p.add_argument("--epochs", type=int, default=200, help="epochs (paper: 200)")
    p.add_argument("--batch-size", type=int, default=32, help="output slices per batch (paper: 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak (onecycle) or initial (plateau) learning rate "
                                                          "(paper: 1e-3, plateau)")
    p.add_argument("--schedule", choices=SCHEDULES, default="onecycle",
                   help="onecycle: warm-up then cosine decay over all epochs; plateau: the paper's ReduceLROnPlateau")
    p.add_argument("--hot-fraction", type=float, default=HOT_FRACTION,
                   help="share of patches centred on the hottest 2%% of body voxels (kidneys, lesions, spleen)")
    p.add_argument("--warmup", type=float, default=0.05, help="onecycle: share of all steps spent warming up")
    p.add_argument("--patch", type=int, default=128, help="in-plane patch size, a multiple of 16")
    p.add_argument("--slab", type=int, default=4, help="consecutive output slices per training sample")
    p.add_argument("--steps-per-epoch", type=int, help="default: one pass over the training slices in patches")
    p.add_argument("--variant", choices=("dblurdose", "no_residual", "2d"), default="dblurdose",
                   help="the paper's network, or an ablation (no DVK residual; 2D U-Net only)")
    p.add_argument("--relative-weight", type=float, default=RELATIVE_WEIGHT,
                   help="weight of the loss's relative-error term in the body (0: the weighted MSE alone, as v0.2)")
    p.add_argument("--decoder-activation", choices=("leaky", "relu"),
                   help="U-Net decoder activation: leaky (default) or relu (the paper's and v0.2's, with dead "
                        "features); with --init, that model's")
    p.add_argument("--correction", choices=("ratio", "additive", "floored"),
                   help="floored (default): DVK + the output, bent smoothly onto 1/20 of the DVK; additive: DVK + "
                        "the output (v0.2); ratio: DVK x a factor in (1/20, 20) (learns poorly); with --init, that "
                        "model's")
    p.add_argument("--init", metavar="MODEL",
                   help="fine-tune: start from this model file (same network and working grid) instead of random "
                        "weights, e.g. the shipped weights; --decoder-activation may differ, and --correction may "
                        "move between additive and floored")
    p.add_argument("--freeze-batch-norm-from", type=int, metavar="EPOCH",
                   help="from this epoch on (1 = all; suits --init) the batch norms normalise with their running "
                        "statistics and keep them, as at inference (default: batch statistics in every epoch)")
    p.add_argument("--normalise-slabs", action="store_true",
                   help="each slab's squared error relative to its DVK energy, so that slabs through hot lesions do "
                        "not rule the loss and the gradients (default: the plain weighted MSE)")
    p.add_argument("--floor-leak", type=float, default=0.0, metavar="G",
                   help="floored correction: in training, at least this share (0-1) of the gradient still reaches "
                        "output below the floor, so that tissue the --init weights put deep below it can be lifted "
                        "(default 0)")
    p.add_argument("--seed", type=int, default=0, help="random seed of initialisation and sampling (default 0)")
    p.add_argument("--label-decays", type=int, metavar="N",
                   help="train on the nested partial label of N decays (mc_truth_dN.nrrd; noisier) instead of the "
                        "full mc_truth.nrrd")
    p.add_argument("--phantoms", metavar="RANGE",
                   help="train on these training phantoms only, by index (e.g. 0,2-8): learning curves against data "
                        "size, or a run that resumes while the data set grows (default: every training phantom)")
    p.add_argument("--val-phantoms", metavar="RANGE",
                   help="validate on these phantoms (default: the data set's validation phantoms)")
    p.add_argument("--extra-data", action="append", default=[], metavar="DIR",
                   help="another data set whose training phantoms all join the training (same preset's voxels; e.g. "
                        "a water-family set from `data generate --water`); repeatable; validation stays on --data")
    p.add_argument("--deconvolve", type=int, default=0, metavar="N",
                   help="a network on the SPECT deconvolved with N Richardson-Lucy iterations at its chain's "
                        "resolution, and on that SPECT's DVK (files of `dblurdose data deconvolve --iterations N`); "
                        "using it then needs the SPECT's resolution (dose --spect-fwhm). Default 0: the SPECT as "
                        "reconstructed")
    p.add_argument("--consistent", type=float, default=0.0, metavar="SHARE",
                   help="train through the consistency step: this share (0-1) of the loss on the map kept consistent "
                        "with the SPECT (as dose --spect-fwhm gives it) at each realisation's resolution recorded in "
                        "the data set (data deconvolve measures them), the rest on the network's own map. Default 0")
    p.add_argument("--fwhm-input", action="store_true", default=None,
                   help="a network that takes each SPECT's resolution (its chain's FWHM, recorded in the data set by "
                        "data deconvolve) as an input, so that it deblurs each chain by its own blur; using it needs "
                        "dose --spect-fwhm. Fine-tuned from a model without it (--init), it starts as that model")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start over, ignoring a checkpoint")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="float32 on CUDA too (no mixed precision)")
    p.add_argument("--cpu-bf16", action="store_true",
                   help="on the CPU, the forward pass in bfloat16 (weights and validation float32): about 2x faster "
                        "steps on CPUs with AMX or AVX512-BF16, slower on others")
    p.add_argument("--compile", dest="compile_step", action="store_true",
                   help="build the training step with torch.compile: a minute or two at the start, then a tenth to "
                        "a sixth less time per step (on the CPU it needs a C++ compiler)")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    """``dblurdose train``: :func:`train` with the parsed options; prints the model file (rank 0)."""
    path = train(args.data, args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patch=args.patch,
                 seed=args.seed, device=args.device, resume=args.resume, variant=args.variant,
                 slab=args.slab, steps_per_epoch=args.steps_per_epoch, amp=args.amp, schedule=args.schedule,
                 warmup=args.warmup, hot_fraction=args.hot_fraction, label_decays=args.label_decays,
                 relative_weight=args.relative_weight, decoder_activation=args.decoder_activation,
                 correction=args.correction,
                 phantoms=layout.parse_range(args.phantoms) if args.phantoms else None,
                 val_phantoms=layout.parse_range(args.val_phantoms) if args.val_phantoms else None,
                 extra_data=args.extra_data,
                 init=args.init, freeze_batch_norm_from=args.freeze_batch_norm_from,
                 normalise_slabs=args.normalise_slabs, cpu_bf16=args.cpu_bf16, compile_step=args.compile_step,
                 floor_leak=args.floor_leak, deconvolve=args.deconvolve, consistent=args.consistent,
                 fwhm_input=args.fwhm_input)
    if int(os.environ.get("RANK", "0")) == 0:
        print(path)
    return 0
