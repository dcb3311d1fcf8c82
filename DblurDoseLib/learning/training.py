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
reward under-estimates). The validation loss is the same sum; :func:`validation_loss` (model
comparisons, the model card) is the weighted MSE alone. Adam; learning rate by a one-cycle
schedule (warm-up to the peak over the first 5% of steps, then cosine decay; the default), or the
paper's ReduceLROnPlateau (factor 0.2, patience 10 epochs) on the validation loss.

Every epoch: a checkpoint ``OUT.ckpt`` (model, optimiser, scheduler, history; ``resume``
continues from it), the loss curve ``OUT.loss.png``, and the model file ``OUT`` rewritten
whenever the validation loss is the best so far. Volumes are cached as ``.npy`` files
(memory-mapped) in ``DIR/.cache`` (or beside ``OUT`` when ``DIR`` is read-only).

Devices: CUDA with mixed precision (bf16 where supported, else fp16 with loss scaling), then
MPS, then CPU (float32). Under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains with
DistributedDataParallel on its own GPU (``LOCAL_RANK``) or on the CPU (gloo); only rank 0
writes files and prints.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DblurDoseError
from ..io.outputs import atomic_file

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
#: the relative error's denominator is the DVK + RELATIVE_EPS x the batch's mean body DVK (no blow-up near 0)
RELATIVE_EPS = 0.1


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


# --- the data set ---------------------------------------------------------------------------


def read_manifest(data_dir: Path) -> dict:
    path = data_dir / "manifest.json"
    if not path.is_file():
        raise DblurDoseError(f"{data_dir} is not a DblurDose data set (no manifest.json); "
                             "make one with `dblurdose data generate --out DIR`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DblurDoseError(f"{path} is not valid JSON ({exc}); regenerate or repair the data set") from None
    if not manifest.get("phantoms") or len(manifest.get("spacing", [])) != 3:
        raise DblurDoseError(f"{path} lists no phantoms or no voxel spacing; finish `dblurdose data generate` first")
    return manifest


def split_phantoms(manifest: dict, seed: int, val_fraction: float = VAL_FRACTION) -> tuple[list[str], list[str]]:
    """(training, validation) phantom names: the data set's 'val' phantoms when it has some (their truth
    has the test phantoms' decays); otherwise whole phantoms of the 'train' split, chosen by seed."""
    splits = {name: info.get("split", "train") for name, info in manifest["phantoms"].items()}
    train = sorted(name for name, split in splits.items() if split == "train")
    if not train:
        raise DblurDoseError("the data set has no phantoms in the 'train' split; generate more phantoms")
    given = sorted(name for name, split in splits.items() if split == "val")
    if given:
        return train, given
    n_val = 0 if len(train) < 2 else min(max(1, round(val_fraction * len(train))), len(train) - 1)
    rng = np.random.default_rng([seed, 7])
    val = sorted(str(v) for v in rng.choice(train, size=n_val, replace=False)) if n_val else []
    return [p for p in train if p not in val], val


def _cache_dir(data_dir: Path, out_path: Path) -> Path:
    for folder in (data_dir / ".cache", out_path.parent / (out_path.name + ".cache")):
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
    """The label file to read: ``mc_truth.nrrd``, or with ``label_decays`` the nested partial label
    ``mc_truth_d{N}.nrrd`` of that many decays, which every phantom in ``phantoms`` must hold."""
    from ..data import label_decays_available, truth_file

    if label_decays is None:
        return truth_file()
    held = [set(label_decays_available(data_dir / name)) for name in phantoms]
    available = sorted(set.intersection(*held)) if held else []
    if int(label_decays) not in available:
        raise DblurDoseError(f"the data set has no label of {label_decays} decays (available: "
                             f"{', '.join(map(str, available)) or 'none'}); pass one of those to --label-decays, "
                             "or leave it out for the full label")
    return truth_file(int(label_decays))


def load_cases(data_dir: Path, phantoms: list[str], manifest: dict, config, cache: Path,
               label: str = "mc_truth.nrrd") -> list[_Case]:
    """The (phantom, realisation) volumes of ``phantoms``, trained towards the label file ``label``."""
    voxel_ml = float(np.prod(manifest["spacing"])) / 1000.0
    cases = []
    for name in phantoms:
        folder = data_dir / name
        density = _array(folder / "density.nrrd", cache)
        truth = _array(folder / label, cache)
        body = np.flatnonzero(density.reshape(-1) >= 0.1)
        flat_truth = truth.reshape(-1)
        hot = body[flat_truth[body] >= np.quantile(flat_truth[body], HOT_QUANTILE)] if body.size else body
        body, hot = (np.sort(np.random.default_rng(0).choice(v, 200_000, replace=False)) if v.size > 200_000 else v
                     for v in (body, hot))
        for r in range(int(manifest["phantoms"][name].get("realisations", 1))):
            spect = _array(folder / f"spect_r{r}.nrrd", cache)
            dvk = _array(folder / f"dvk_r{r}.nrrd", cache)
            if not (spect.shape == dvk.shape == density.shape == truth.shape):
                raise DblurDoseError(f"{folder}: volumes of realisation {r} are not on one grid; regenerate the phantom")
            total = float(np.sum(spect, dtype=np.float64)) * voxel_ml
            if not total > 0:
                continue  # no activity: nothing to learn from this realisation
            cases.append(_Case(name, spect, dvk, density, truth, config.spect_scale_ml / total,
                               config.dose_scale / total, body, hot))
    return cases


def sample_batch(cases: list[_Case], rng: np.random.Generator, n_slabs: int, slab: int, patch: int,
                 hot_fraction: float = HOT_FRACTION):
    """``n_slabs`` random slabs: inputs [n, 2, slab + 10, P, P], DVK, label and weights [n, 1, slab, P, P]."""
    from .network import HALF

    xs, dvks, truths, weights = [], [], [], []
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
        w = np.where(c.density[out, ys, xs_] >= 0.1, BODY_WEIGHT, OUTSIDE_WEIGHT).astype(np.float32)
        # augmentation: the dose physics is unchanged by in-plane flips/transposition and a z flip
        views = [x, dvk[None], truth[None], w[None]]
        if rng.random() < 0.5:
            views = [v[:, ::-1] for v in views]
        for axis in (2, 3):
            if rng.random() < 0.5:
                views = [np.flip(v, axis) for v in views]
        if rng.random() < 0.5:
            views = [v.swapaxes(2, 3) for v in views]
        for store, v in zip((xs, dvks, truths, weights), views):
            store.append(np.ascontiguousarray(v, dtype=np.float32))
    return tuple(np.stack(s) for s in (xs, dvks, truths, weights))


def validation_batches(val_cases: list[_Case], seed: int, n_slabs: int, slab: int, patch: int) -> list:
    """The fixed validation batches of a run (by seed); a fixed composition (HOT_FRACTION), so that runs
    with another --hot-fraction compare."""
    rng = np.random.default_rng([seed, 99])
    return [sample_batch(val_cases, rng, n_slabs, slab, patch) for _ in range(VAL_BATCHES)] if val_cases else []


def validation_loss(model_path: str | os.PathLike, data_dir: str | os.PathLike, seed: int = 0, batch_size: int = 32,
                    slab: int = 8, patch: int = 64, device: str = "cpu") -> float:
    """Weighted MSE (scaled) of a model file on the validation batches that ``train`` with these
    settings uses: compares models, the DVK alone included (``model_path="dvk"``), on equal terms."""
    import torch

    from .network import DblurDoseNet, ModelConfig, load_model_file, zero_correction

    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    _, val_names = split_phantoms(manifest, seed)
    if model_path == "dvk":
        net = zero_correction(DblurDoseNet(ModelConfig(spacing=tuple(manifest["spacing"])))).eval()
    else:
        net = load_model_file(model_path)
    cases = load_cases(data_dir, val_names, manifest, net.config, _cache_dir(data_dir, Path(str(model_path))))
    losses = []
    with torch.no_grad():
        for x, dvk, truth, w in validation_batches(cases, seed, max(1, batch_size // slab), slab, patch):
            x, dvk, truth, w = (torch.from_numpy(a).to(device) for a in (x, dvk, truth, w))
            pred = net.forward_slab(x, dvk if net.residual else None)
            losses.append(float(training_loss(pred, truth, w, dvk, relative_weight=0)))
    return float(np.mean(losses))


def training_loss(pred, truth, weight, dvk, relative_weight: float = RELATIVE_WEIGHT):
    """The training loss of a batch (all ``[n, 1, slab, P, P]``, scaled dose rates): the weighted MSE
    plus ``relative_weight`` x the mean over body voxels of ``((pred - truth) / (dvk + eps))^2``,
    ``eps`` = :data:`RELATIVE_EPS` x the batch's mean body DVK (dimensionless; see the module docstring).
    ``weight``: the voxel weights of :func:`sample_batch` (body voxels have BODY_WEIGHT)."""
    err = pred.float() - truth
    loss = (weight * err ** 2).mean()
    if relative_weight:
        body = weight == BODY_WEIGHT
        if bool(body.any()):
            ref = dvk.clamp_min(0)
            denom = ref + RELATIVE_EPS * ref[body].mean().clamp_min(1e-12)
            loss = loss + relative_weight * (err[body] / denom[body]).square().mean()
    return loss


# --- training -------------------------------------------------------------------------------


def _print_progress(fraction: float, message: str) -> None:
    print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)


def _save_curve(history: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for key, style, label in (("train_loss", "o-", "training"), ("val_loss", "s-", "validation (held-out phantoms)")):
        points = [(h["epoch"], h[key]) for h in history if h.get(key) is not None]
        if points:
            ax.semilogy(*zip(*points), style, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("weighted MSE (scaled dose rate)")
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
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".ckpt")


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
    decoder_activation: str = "leaky",
    correction: str = "ratio",
) -> Path:
    """Train a DblurDoseNet on ``data_dir``; writes the model file ``out_path`` and returns its path.

    ``steps_per_epoch`` defaults to one pass over the training slices in patches
    (slices x in-plane area / patch area / batch size). ``schedule``: "onecycle" (linear warm-up
    over the first ``warmup`` of all steps to ``lr``, then cosine annealing to lr/1e4, stepped
    every step) or "plateau" (``lr`` divided by 5 after ``patience`` epochs without a better
    validation loss). ``label_decays``: train on the nested partial label of that many decays
    (``mc_truth_d{N}.nrrd``, noisier) instead of the full one; validation stays on the full label.
    ``relative_weight``: the loss's relative-error term (:func:`training_loss`; 0 for the MSE alone).
    ``decoder_activation``, ``correction``: the architecture options of
    :class:`~DblurDoseLib.learning.network.ModelConfig` ("relu", "additive": v0.2's network).
    See the module docstring.
    """
    import torch
    import torch.distributed as dist
    from torch import nn

    from ..devices import resolve_device
    from .network import DblurDoseNet, ModelConfig, save_model

    data_dir, out_path = Path(data_dir), Path(out_path)
    progress = progress or _print_progress
    for name, value in (("epochs", epochs), ("batch size", batch_size), ("patch", patch), ("slab", slab)):
        if int(value) < 1:
            raise DblurDoseError(f"the {name} must be at least 1, got {value}")
    if not lr > 0:
        raise DblurDoseError(f"the learning rate must be positive, got {lr}")
    if schedule not in SCHEDULES:
        raise DblurDoseError(f"unknown learning-rate schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if not 0 <= hot_fraction <= TISSUE_FRACTION:
        raise DblurDoseError(f"the share of patches on hot voxels must be between 0 and {TISSUE_FRACTION}, "
                             f"got {hot_fraction}")
    if not relative_weight >= 0:
        raise DblurDoseError(f"the relative-error weight must be 0 or more, got {relative_weight}")
    if not 0 < warmup < 1:
        raise DblurDoseError(f"the warm-up fraction must be between 0 and 1, got {warmup}")

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    distributed = world > 1
    if distributed:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
            dev = torch.device("cuda", local)
        else:
            dev = torch.device("cpu")
        own_group = not dist.is_initialized()
        if own_group:
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    else:
        dev = resolve_device(device)
    main = rank == 0

    def say(fraction: float, message: str) -> None:
        if main and progress(fraction, message) is False:
            raise DblurDoseError("training cancelled; resume later from the checkpoint")

    manifest = read_manifest(data_dir)
    train_names, val_names = split_phantoms(manifest, seed, val_fraction)
    config = ModelConfig(variant=variant, spacing=tuple(manifest["spacing"]), decoder_activation=decoder_activation,
                         correction=correction)
    cache = _cache_dir(data_dir, out_path)
    say(0.0, f"reading {len(train_names)} training and {len(val_names)} validation phantoms "
             f"(held out: {', '.join(val_names) or 'none'})")
    label = label_file(data_dir, train_names, label_decays)
    cases = load_cases(data_dir, train_names, manifest, config, cache, label)
    val_cases = load_cases(data_dir, val_names, manifest, config, cache)
    if not cases:
        raise DblurDoseError("no training volume holds any activity; check the data set")
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
    local_steps = max(1, math.ceil(steps_per_epoch / world))

    torch.manual_seed(seed)
    net = DblurDoseNet(config).to(dev)
    channels_last = dev.type == "cpu" and patch >= 64
    if channels_last:  # oneDNN's preferred layouts (their one-time kernel setup costs more than tiny patches gain)
        net.unet.to(memory_format=torch.channels_last)
        if net.extractor is not None:
            net.extractor.to(memory_format=torch.channels_last_3d)

    class SlabModel(nn.Module):  # DistributedDataParallel hooks into forward()
        def __init__(self, inner: DblurDoseNet) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x, dvk):
            return self.inner.forward_slab(x, dvk)

    model: nn.Module = SlabModel(net)
    if distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    if schedule == "onecycle" and epochs * local_steps < 4:  # too short to warm up and decay: constant lr
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    elif schedule == "onecycle":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=epochs * local_steps, anneal_strategy="cos",
            pct_start=min(max(warmup, 2.0 / (epochs * local_steps)), 0.5),  # 2 warm-up steps at least
            div_factor=25.0, final_div_factor=400.0)
    else:
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.2, patience=patience)
    use_amp = amp and dev.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)

    settings = {"data": str(data_dir.resolve()), "variant": variant, "spacing": list(config.spacing),
                "batch_size": batch_size, "patch": patch, "slab": slab, "seed": seed,
                "steps_per_epoch": steps_per_epoch, "train_phantoms": train_names, "val_phantoms": val_names,
                "lr": lr, "schedule": schedule, "epochs": epochs, "hot_fraction": hot_fraction,
                "label_decays": label_decays, "relative_weight": relative_weight,
                "decoder_activation": decoder_activation, "correction": correction}
    ckpt_path = checkpoint_path(out_path)
    start, history, best = 0, [], math.inf
    if resume and ckpt_path.is_file():
        try:
            ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DblurDoseError(f"the checkpoint {ckpt_path} is unreadable ({type(exc).__name__}); delete it or "
                                 "pass --no-resume to start over") from None
        keys = ["variant", "spacing", "patch", "slab", "seed", "train_phantoms", "val_phantoms", "schedule", "label_decays",
                "relative_weight", "decoder_activation", "correction"]
        if schedule == "onecycle":  # the schedule's length is part of its state
            keys += ["epochs", "steps_per_epoch", "lr"]
        changed = [k for k in keys if ckpt["settings"].get(k, "plateau" if k == "schedule" else None) != settings[k]]
        if changed:
            raise DblurDoseError(f"the checkpoint {ckpt_path} was made with other settings ({', '.join(changed)}); "
                                 "use the same settings, another --out, or --no-resume to start over")
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        start, history, best = int(ckpt["epoch"]), list(ckpt["history"]), float(ckpt["best"])
        say(start / epochs, f"resuming after epoch {start} from {ckpt_path}")

    def to_device(arrays):
        x, dvk, truth, w = (torch.from_numpy(a).to(dev, non_blocking=True) for a in arrays)
        if channels_last and net.extractor is not None:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x, dvk, truth, w

    val_batches = validation_batches(val_cases, seed, n_slabs, slab, patch)

    def mean_over_ranks(value: float) -> float:
        if not distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=dev)
        dist.all_reduce(t)
        return float(t) / world

    def validate() -> float | None:
        if not val_batches:
            return None
        net.eval()
        with torch.no_grad(), torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
            losses = []
            for arrays in val_batches:
                x, dvk, truth, w = to_device(arrays)
                pred = net.forward_slab(x, dvk if net.residual else None)
                losses.append(float(training_loss(pred, truth, w, dvk, relative_weight)))
        return mean_over_ranks(float(np.mean(losses)))

    t_start = time.perf_counter()
    if start == 0 and val_batches:  # the starting point of the validation curve
        history = [{"epoch": 0, "train_loss": None, "val_loss": validate(), "lr": lr, "seconds": 0.0}]
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        net.train()
        rng = np.random.default_rng([seed, epoch, rank])
        total, last_report = 0.0, time.perf_counter()
        for step in range(local_steps):
            x, dvk, truth, w = to_device(sample_batch(cases, rng, n_slabs, slab, patch, hot_fraction))
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
                pred = model(x, dvk if net.residual else None)
            loss = training_loss(pred, truth, w, dvk, relative_weight)
            if not torch.isfinite(loss):
                raise DblurDoseError(f"the training loss became {float(loss)} at epoch {epoch + 1}; lower --lr "
                                     "or check the data set for NaN values")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if schedule == "onecycle":
                scheduler.step()
            total += loss.item()
            if time.perf_counter() - last_report > 60:
                last_report = time.perf_counter()
                say((epoch + (step + 1) / local_steps) / epochs,
                    f"epoch {epoch + 1}/{epochs}: step {step + 1}/{local_steps}, loss {total / (step + 1):.4g}")
        train_loss = mean_over_ranks(total / local_steps)
        val_loss = validate()
        monitor = val_loss if val_loss is not None else train_loss
        if schedule == "plateau":
            scheduler.step(monitor)
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
                        "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - t0, 2)})
        improved = monitor < best
        best = min(best, monitor)
        if main:
            if improved:
                net.config.info = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, **settings}
                save_model(net, out_path)
            _atomic_torch_save({"epoch": epoch + 1, "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                                "history": history, "best": best, "settings": settings}, ckpt_path)
            _save_curve(history, out_path.with_name(out_path.stem + ".loss.png"))
        if distributed:
            dist.barrier()
        val_text = f", validation {val_loss:.4g}" if val_loss is not None else ""
        say((epoch + 1) / epochs, f"epoch {epoch + 1}/{epochs}: training loss {train_loss:.4g}{val_text}, "
                                  f"lr {optimizer.param_groups[0]['lr']:.2g}, {time.perf_counter() - t0:.1f} s"
                                  + (" (best so far, saved)" if improved else ""))
    if main and not out_path.exists():  # e.g. resumed after the last epoch of an interrupted save
        save_model(net, out_path)
    say(1.0, f"done in {time.perf_counter() - t_start:.0f} s: {out_path}")
    if distributed and own_group:
        dist.destroy_process_group()
    return out_path


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
    p.add_argument("--decoder-activation", default="leaky",
                   help="U-Net decoder activation: leaky or relu (the paper's and v0.2's, with dead features)")
    p.add_argument("--correction", default="ratio",
                   help="ratio: DVK x a factor in (1/20, 20); additive: DVK + the output (v0.2)")
    p.add_argument("--seed", type=int, default=0, help="random seed of initialisation and sampling (default 0)")
    p.add_argument("--label-decays", type=int, metavar="N",
                   help="train on the nested partial label of N decays (mc_truth_dN.nrrd; noisier) instead of the "
                        "full mc_truth.nrrd")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start over, ignoring a checkpoint")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="float32 on CUDA too (no mixed precision)")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    path = train(args.data, args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patch=args.patch,
                 seed=args.seed, device=args.device, resume=args.resume, variant=args.variant,
                 slab=args.slab, steps_per_epoch=args.steps_per_epoch, amp=args.amp, schedule=args.schedule,
                 warmup=args.warmup, hot_fraction=args.hot_fraction, label_decays=args.label_decays,
                 relative_weight=args.relative_weight, decoder_activation=args.decoder_activation,
                 correction=args.correction)
    if int(os.environ.get("RANK", "0")) == 0:
        print(path)
    return 0
