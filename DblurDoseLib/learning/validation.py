"""Measuring models on a data set: which of several runs (and the DVK alone) fits and generalises best.

:func:`validation_loss` is the weighted MSE of a model on the fixed validation batches that
:func:`~DblurDoseLib.learning.training.train` draws (on the validation phantoms, or on any complete phantoms,
training phantoms included: how well a run fits its own data); :func:`compare_models` averages it over several
draws for several models at once and is the ``dblurdose validate`` command, the one the model card's
comparisons name. :func:`gradient_noise` measures how noisy the training gradient is at a model's weights.

Each model is a model file (``dblurdose train`` writes ``OUT``, the best validation loss, and ``OUT.last.pt``
(``.last`` before the suffix), the last epoch), "dvk": the DVK itself, a network with a zero correction, or
"dvk_rlN": the DVK of the SPECT after N Richardson-Lucy iterations (the data set's ``data deconvolve`` files).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DblurDoseError
from ..io import dataset as layout
from ..io.dataset import read_manifest
from .training import (
    HOT_FRACTION,
    _cache_dir,
    _check_cases,
    _freeze_batch_norm,
    load_cases,
    sample_batch,
    split_phantoms,
    training_loss,
    validation_batches,
)

if TYPE_CHECKING:  # torch is imported when a model is measured, not with this module (the command line imports it)
    import torch


def validation_loss(model_path: str | os.PathLike, data_dir: str | os.PathLike, seed: int = 0, batch_size: int = 32,
                    slab: int = 8, patch: int = 64, device: str | torch.device = "cpu", *,
                    phantoms: list[int] | None = None, batch_statistics: bool = False) -> float:
    """The weighted MSE of a model file on the validation batches that
    :func:`~DblurDoseLib.learning.training.train` with these settings uses: compares models, the DVK alone
    included, on equal terms.

    Parameters
    ----------
    model_path : str or path
        A model file, or "dvk" (the DVK itself: a network with a zero correction).
    data_dir : str or path
        The data set.
    seed, batch_size, slab, patch : int
        As given to :func:`~DblurDoseLib.learning.training.train` (patch in voxels).
    device : str or torch.device
        Where the network runs.
    phantoms : list of int, optional
        Measure on these phantoms (indices; any split, training phantoms included: how well a run fits
        its own data) instead of the validation phantoms; the batches are drawn alike.
    batch_statistics : bool
        Normalise with each batch's own statistics, as in training, instead of the batch norms'
        running statistics, as at inference (the default): the gap between the two is what
        ``train``'s ``freeze_batch_norm_from`` closes.

    Returns
    -------
    float
        The mean weighted MSE of the scaled dose rate (dimensionless).
    """
    net, cases = _model_and_cases(model_path, data_dir, phantoms, seed, device)
    return _mean_loss(net, cases, seed, batch_size, slab, patch, batch_statistics)


def _mean_loss(net, cases: list, seed: int, batch_size: int, slab: int, patch: int, batch_statistics: bool) -> float:
    """The mean weighted MSE of ``net`` (on its device) over the validation batches of ``cases`` drawn by ``seed``."""
    import torch

    device = next(net.parameters()).device
    net.train(batch_statistics)  # no gradient and no optimiser: the weights stay; running statistics are not used
    losses = []
    with torch.no_grad():
        for batch in validation_batches(cases, seed, max(1, batch_size // slab), slab, patch):
            x, dvk, truth, w = (torch.from_numpy(a).to(device) for a in batch[:4])
            pred = net.forward_slab(x, dvk if net.residual else None, torch.from_numpy(batch.fwhm_mm).to(device))
            losses.append(float(training_loss(pred, truth, w, dvk, relative_weight=0)))
    net.eval()
    return float(np.mean(losses))


def _model_and_cases(model_path: str | os.PathLike, data_dir: str | os.PathLike, phantoms: list[int] | None,
                     seed: int = 0, device: str | torch.device = "cpu"):
    """A model file ("dvk": the DVK alone) on ``device`` and the volumes of ``phantoms`` (see
    :func:`_phantom_names`) to measure it on."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    net = _load_net(model_path, manifest, device)
    names = _phantom_names(manifest, data_dir, phantoms, seed)
    cases = load_cases(data_dir, names, manifest, net.config, _cache_dir(data_dir, Path(str(model_path))))
    _check_cases(cases, [], net.config.fwhm_input)  # a model with the resolution input needs each volume's
    return net, cases


def _phantom_names(manifest: dict, data_dir: Path, phantoms: list[int] | None, seed: int) -> list[str]:
    """The keys of ``phantoms`` (indices of complete phantoms; None: the validation phantoms of
    :func:`~DblurDoseLib.learning.training.split_phantoms` with ``seed``), refused when missing."""
    names = split_phantoms(manifest, seed)[1] if phantoms is None else [layout.phantom_key(i) for i in phantoms]
    if not names:
        raise DblurDoseError(f"{data_dir} has no validation phantoms; name the phantoms to measure on "
                             "(the phantoms setting, e.g. 10,11)")
    missing = [k for k in names if k not in manifest["phantoms"]]
    if missing:
        raise DblurDoseError(f"cannot measure on {', '.join(missing)}: not a complete phantom of {data_dir}; "
                             f"choose among {', '.join(sorted(manifest['phantoms']))}")
    return names


def _load_net(model_path: str | os.PathLike, manifest: dict, device: str | torch.device):
    """A model file, "dvk" (a network with a zero correction on the data set's grid: the DVK alone) or
    "dvk_rlN" (the same on the SPECT deconvolved with N Richardson-Lucy iterations: the DVK of the
    deconvolved SPECT), on ``device`` ("auto", "cpu", "cuda", "mps")."""
    from ..devices import resolve_device
    from .network import DblurDoseNet, ModelConfig, load_model_file, zero_correction

    name = str(model_path)
    if name == "dvk" or (name.startswith("dvk_rl") and name[6:].isdigit()):
        config = ModelConfig(spacing=tuple(manifest["spacing"]), deconvolution_iterations=int(name[6:] or 0))
        net = zero_correction(DblurDoseNet(config))
    else:
        net = load_model_file(model_path)
    return net.eval().to(resolve_device(device))


def gradient_noise(model_path: str | os.PathLike, data_dir: str | os.PathLike, phantoms: list[int], batches: int = 48,
                   seed: int = 123, batch_size: int = 32, slab: int = 8, patch: int = 64,
                   hot_fraction: float = HOT_FRACTION, relative_weight: float = 0.0,
                   normalise_slabs: bool = False) -> dict:
    """How noisy the training gradient is at a model's weights: ``batches`` training batches of ``phantoms``
    (drawn as in training, batch norms frozen), one gradient each.

    Parameters
    ----------
    model_path : str or path
        A model file.
    data_dir : str or path
        The data set.
    phantoms : list of int
        Phantom indices to draw from (any complete phantoms).
    batches, seed : int
        Number of batches and their draw.
    batch_size, slab, patch, hot_fraction :
        As given to :func:`~DblurDoseLib.learning.training.train`.
    relative_weight, normalise_slabs :
        The loss (:func:`~DblurDoseLib.learning.training.training_loss`).

    Returns
    -------
    dict
        ``loss_median``, ``loss_max``; ``grad_median``, ``grad_max`` (gradient norms); ``top_decile_share``:
        the share of the sum of squared gradient norms in the tenth of the batches with the largest;
        ``noise_scale``: tr(Sigma) / |E g|^2, with E g's squared norm corrected for the noise of its
        estimate, the number of batches whose mean gradient would be as large as its noise (inf when
        the mean is not resolved).
    """
    import torch

    from .network import SlabForward

    if int(batches) < 2:
        raise DblurDoseError(f"the gradient noise needs at least 2 batches, got {batches}")
    net, cases = _model_and_cases(model_path, data_dir, phantoms)
    net.train()
    _freeze_batch_norm(net)
    model = SlabForward(net)
    rng = np.random.default_rng(seed)
    grads, losses = [], []
    for _ in range(batches):
        batch = sample_batch(cases, rng, max(1, batch_size // slab), slab, patch, hot_fraction)
        x, dvk, truth, w = (torch.from_numpy(a) for a in batch[:4])
        loss = training_loss(model(x, dvk if net.residual else None, torch.from_numpy(batch.fwhm_mm)), truth, w, dvk,
                             relative_weight, normalise_slabs)
        net.zero_grad()
        loss.backward()
        grads.append(torch.cat([q.grad.flatten() for q in net.parameters() if q.grad is not None]).double())
        losses.append(float(loss.detach()))
    g = torch.stack(grads)
    mean = g.mean(0)
    trace = float(((g - mean) ** 2).sum(1).mean()) * batches / (batches - 1)
    signal = float((mean ** 2).sum()) - trace / batches
    sq = np.sort((g.norm(dim=1) ** 2).numpy())[::-1]
    norms = np.sqrt(sq)
    return {"loss_median": float(np.median(losses)), "loss_max": float(np.max(losses)),
            "grad_median": float(np.median(norms)), "grad_max": float(norms[0]),
            "top_decile_share": float(sq[:max(1, batches // 10)].sum() / sq.sum()),
            "noise_scale": trace / signal if signal > 0 else math.inf}


def compare_models(models: list[str], data_dir: str | os.PathLike, phantom_sets: list[list[int] | None] | None = None,
                   seeds: int = 4, batch_size: int = 32, slab: int = 8, patch: int = 64,
                   device: str | torch.device = "cpu", batch_statistics: bool = False) -> dict[str, list[list[float]]]:
    """:func:`validation_loss` of several models on several sets of phantoms, each over ``seeds`` draws of
    the validation batches (seeds 0 .. ``seeds`` - 1): the model comparison of the model card.

    Parameters
    ----------
    models : list of str
        Model files, "dvk" or "dvk_rlN".
    data_dir : str or path
        The data set.
    phantom_sets : list of (list of int or None), optional
        Each set is measured as one pool (its batches drawn across its phantoms); None: the validation
        phantoms (of the data set's split with seed 0). Default: [None].
    seeds : int
        Independent draws of the 8 validation batches per model and set (the spread says whether two
        models differ).
    batch_size, slab, patch, device, batch_statistics :
        As :func:`validation_loss`.

    Returns
    -------
    dict
        model -> one list per phantom set of the ``seeds`` losses (weighted MSE of the scaled dose rate).
    """
    for name, value in (("number of seeds", seeds), ("slab", slab), ("batch size", batch_size)):
        if int(value) < 1:
            raise DblurDoseError(f"the {name} must be at least 1, got {value}")
    if patch < 16 or patch % 16:
        raise DblurDoseError(f"the patch must be a multiple of 16 voxels (the U-Net halves it 4 times), got {patch}")
    if not models:
        raise DblurDoseError("name at least one model to measure (a model file, or dvk)")
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    sets = [_phantom_names(manifest, data_dir, phantoms, 0) for phantoms in phantom_sets or [None]]
    nets = {model: _load_net(model, manifest, device) for model in models}
    cache = _cache_dir(data_dir, Path(str(models[0])))
    out: dict[str, list[list[float]]] = {model: [] for model in nets}
    for names in sets:
        cases: dict = {}  # read once per phantom set, input/label scaling and input deconvolution
        for model, net in nets.items():
            scaling = (net.config.spect_scale_ml, net.config.dose_scale, net.config.deconvolution_iterations)
            if scaling not in cases:
                cases[scaling] = load_cases(data_dir, names, manifest, net.config, cache)
            out[model].append([_mean_loss(net, cases[scaling], s, batch_size, slab, patch, batch_statistics)
                               for s in range(seeds)])
    return out


def comparison_table(losses: dict[str, list[list[float]]], set_names: list[str]) -> str:
    """A markdown table of :func:`compare_models`' result: per model and phantom set, the mean loss and its
    standard error over the seeds, and for every model after the first its ratio to the first model's loss on
    the same batches ("x R +- SE", the mean and standard error of the per-seed ratios: paired, so much more
    precise than the two losses' own errors, which the spread of the batches' difficulty rules). Errors are
    left out with one seed."""

    def mean_se(values) -> str:
        v = np.asarray(values, dtype=float)
        return f"{v.mean():.4f}" + (f" +- {v.std(ddof=1) / math.sqrt(v.size):.4f}" if v.size > 1 else "")

    lines = ["| model | " + " | ".join(set_names) + " |", "|---|" + "---|" * len(set_names)]
    first = next(iter(losses.values()))
    for i, (model, rows) in enumerate(losses.items()):
        cells = [mean_se(values) + (f" (x {mean_se(np.divide(values, base))})" if i else "")
                 for values, base in zip(rows, first)]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- command line ---------------------------------------------------------------------------


def add_validate_arguments(subparser) -> None:
    """The ``dblurdose validate`` parser."""
    p = subparser.add_parser(
        "validate", help="compare models (and the DVK) by the validation MSE on chosen phantoms of a data set")
    p.add_argument("--data", required=True, help="data set folder written by `dblurdose data generate`")
    p.add_argument("--model", nargs="+", required=True, metavar="MODEL",
                   help="model files (e.g. a run's OUT and OUT.last.pt), dvk for the DVK alone, or dvk_rlN for the "
                        "DVK of the SPECT after N Richardson-Lucy iterations (`data deconvolve` files)")
    p.add_argument("--phantoms", action="append", metavar="RANGE",
                   help="phantoms measured as one pool, e.g. 10,11 (repeatable: one column each; any complete "
                        "phantom, training phantoms included; default: the validation phantoms)")
    p.add_argument("--seeds", type=int, default=4, help="draws of the 8 validation batches (default 4)")
    p.add_argument("--batch-size", type=int, default=32, help="output slices per batch, as in training (default 32)")
    p.add_argument("--slab", type=int, default=8, help="output slices per slab, as in training (default 8)")
    p.add_argument("--patch", type=int, default=64, help="in-plane patch size, as in training (default 64)")
    p.add_argument("--batch-statistics", action="store_true",
                   help="normalise with each batch's statistics, as in training, not the running ones")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or mps")
    p.set_defaults(func=cmd_validate)


def cmd_validate(args) -> int:
    """``dblurdose validate``: prints :func:`comparison_table` of :func:`compare_models`."""
    sets = [layout.parse_range(r) for r in args.phantoms] if args.phantoms else [None]
    names = ["+".join(layout.phantom_key(i) for i in s) if s else "validation phantoms" for s in sets]
    losses = compare_models(args.model, args.data, sets, args.seeds, args.batch_size, args.slab, args.patch,
                            args.device, args.batch_statistics)
    print(f"weighted MSE of the scaled dose rate, mean +- standard error over {args.seeds} draws of 8 batches; "
          f"(x R): the ratio to {args.model[0]} on the same batches")
    print(comparison_table(losses, names))
    return 0
