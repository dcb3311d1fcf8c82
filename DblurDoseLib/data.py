"""Training/test data sets: virtual patients, their simulated SPECT, DVK and Monte Carlo dose rates.

The folder's layout (file names, the manifest) is :mod:`DblurDoseLib.io.dataset`'s. All volumes are
gzip-compressed NRRD, float32 (labels int16); nothing is stored at reduced precision. The manifest holds
the settings, seeds, software versions, timings, the train/val/test split, and each phantom's family:
"anatomical" (phantom.py), "shapes" (phantom_shapes.py: the ``held_out`` indices, always test phantoms,
and the ``shapes`` indices, always training ones) or "water" (phantom_water.py, always training). Test
phantoms also hold the "SPECT + MC" method (``mc_spect_r*``) and, with ``out_of_mix``,
the same patient and count level acquired and reconstructed outside the training mix (OUT_OF_MIX; the
``_ood`` files). A part whose files all exist is skipped on resume (``done.json`` keeps the timings).

Each phantom is an independent job, run on a Dask distributed cluster (a local one by default,
or an existing scheduler's address), so a site with a cluster can generate hundreds.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from .errors import DblurDoseError
from .io import dataset as layout
from .io.dataset import MANIFEST, parse_range, truth_file
from .simulation.camera import OUT_OF_MIX, TRAINING_MIX  # noqa: F401 (the data set's mix; tests and callers use data.*)
from .simulation.spect import DEFAULT_CAMERA

#: What a data job makes first (DataSettings.generation_order): the training phantoms, or the ones that judge a network.
GENERATION_FIRST = ("train", "test")


@dataclass
class DataSettings:
    """What a data set is made of. Defaults follow the paper (14 phantoms, 9 train / 5 test)."""

    phantoms: list[int] = field(default_factory=lambda: list(range(14)))
    realisations: int = 3
    decays: float = 3e7  # Monte Carlo decays for the ground truth of a phantom
    test_decays: float = 1e8  # test truth needs less noise than training labels
    spect_mc_decays: float = 1e7  # "SPECT + MC" method on test phantoms (paper: 1e9 histories)
    counts: tuple[float, float] = (3e6, 3e7)  # total counts range, drawn per phantom
    shape: tuple[int, int, int] = (130, 512, 512)
    spacing: tuple[float, float, float] = (0.98, 0.98, 3.0)
    spect_matrix: tuple[int, int, int] = (128, 128, 81)
    spect_voxel_mm: float = 4.8
    n_views: int = 128
    iterations: int = 16
    subsets: int = 4
    projection_oversampling: int = 2  # see SpectAcquisition.projection_oversampling
    time_days: tuple[float, float] = (1.0, 7.0)
    n_test: int = 5
    seed: int = 2022
    threads: int | None = None  # CPU threads per phantom job (None: all cores; set when jobs share a machine)
    mix: bool = False  # training phantoms: acquisition and reconstruction drawn from TRAINING_MIX
    out_of_mix: bool = False  # test phantoms: also reconstructed with OUT_OF_MIX (spect_ood_r*)
    camera: str = DEFAULT_CAMERA  # spect.CAMERAS key of phantoms whose camera is not drawn from the mix
    held_out: list[int] = field(default_factory=list)  # made by the "shapes" family; always test, not in n_test
    #: made by the "water" family (simulation.phantom_water): always training, truth the DVK of the true activity
    water: list[int] = field(default_factory=list)
    #: made by the "shapes" family, but always training (acquired like the other training phantoms): a more
    #: varied training set; in a data set of their own (``--extra-data``), the held-out family of another
    #: stays a measure of generalisation for networks trained without them
    shapes: list[int] = field(default_factory=list)
    #: validation phantoms ("val" split): acquired from the training mix like training phantoms, but with a
    #: truth of ``test_decays`` so that label-noise and training choices are judged against a clean truth
    n_val: int = 0

    def phantom_seed(self, index: int) -> int:
        return int(np.random.SeedSequence([self.seed, index]).generate_state(1)[0])

    def indices(self) -> list[int]:
        """Every phantom of the data set: ``phantoms``, ``held_out``, ``water`` and ``shapes``."""
        return sorted(set(int(i) for i in (*self.phantoms, *self.held_out, *self.water, *self.shapes)))

    def family(self, index: int) -> str:
        """The virtual-patient family of phantom ``index``: "shapes" if held out or a shapes training
        phantom, "water" if a water phantom, else "anatomical"."""
        if int(index) in set(int(i) for i in self.water):
            return "water"
        return "shapes" if int(index) in set(int(i) for i in (*self.held_out, *self.shapes)) else "anatomical"

    def split(self) -> dict[int, str]:
        """Train/val/test by whole phantom (never by slice), chosen by the data-set seed; held-out
        (shapes-family) phantoms are always "test", water-family and shapes training ones always "train";
        none counts in ``n_test``. The "val" phantoms follow the test ones in the same permutation (at least one
        phantom stays "train")."""
        held, water, shapes = (set(int(i) for i in v) for v in (self.held_out, self.water, self.shapes))
        groups = {"anatomical": set(int(i) for i in self.phantoms), "held-out": held, "water": water,
                  "shapes training": shapes}
        for first, second in itertools.combinations(groups, 2):
            both = groups[first] & groups[second]
            if both and (first, second) != ("anatomical", "held-out"):  # held out of the anatomical indices: allowed
                raise DblurDoseError(f"phantoms {sorted(both)} are both {first} and {second} phantoms; give each "
                                     "index one family")
        rng = np.random.default_rng(self.seed)
        order = [int(i) for i in rng.permutation(sorted(i for i in self.phantoms
                                                          if int(i) not in held | water | shapes))]
        n_test = min(self.n_test, max(len(order) - 1, 0))
        n_val = min(self.n_val, max(len(order) - n_test - 1, 0))
        test = set(order[:n_test]) | held
        val = set(order[n_test:n_test + n_val])
        return {i: ("test" if i in test else "val" if i in val else "train") for i in self.indices()}

    def plan(self) -> dict[str, dict]:
        """Every phantom the data set will hold, as its manifest's ``plan`` records it from the start: phantom
        key -> ``{"seed", "split", "family"}`` (the same seed and family make the same virtual patient in any
        data set; :func:`~DblurDoseLib.io.dataset.virtual_patients`)."""
        return {layout.phantom_key(i): {"seed": self.phantom_seed(i), "split": split, "family": self.family(i)}
                for i, split in self.split().items()}

    def generation_order(self, first: str = "train") -> list[int]:
        """Every phantom in the order a data job makes them (index order within each group).

        ``first="train"``: training phantoms, then validation, test and held-out ones, so that a job stopped
        part way leaves phantoms to train on. ``first="test"``: validation, test and held-out phantoms, then
        training ones, so that a data set part made already holds the phantoms that judge a network. The order
        changes nothing that is drawn or made (each phantom has its own seed): a job may resume in either."""
        if first not in GENERATION_FIRST:
            raise DblurDoseError(f"unknown generation order {first!r}; use one of {', '.join(GENERATION_FIRST)}")
        split, held = self.split(), set(int(i) for i in self.held_out)
        groups = ("train", "val", "test", "held out") if first == "train" else ("val", "test", "held out", "train")
        return sorted(self.indices(), key=lambda i: (groups.index("held out" if i in held else split[i]), i))


# TRAINING_MIX and OUT_OF_MIX (the acquisitions of training phantoms, and the one outside them) live with the
# cameras, in simulation.camera, so that the evaluation's sphere phantom reaches them too; imported above.


def osem_choices(n_views: int, mix: dict | None = None) -> list[tuple[int, int]]:
    """The OSEM settings of the mix for one view count.

    Parameters
    ----------
    n_views : int
        Views over 360 degrees.
    mix : dict, optional
        The mix (default: TRAINING_MIX).

    Returns
    -------
    list of (int, int)
        Sorted (iterations, subsets) pairs whose subsets divide the views and whose product (subset
        updates) lies within ``mix["osem_updates"]``; sorted, so that draws are reproducible.
    """
    mix = TRAINING_MIX if mix is None else mix
    low, high = mix["osem_updates"]
    pairs = [(int(i), int(s)) for i in mix["iterations"] for s in mix["subsets"]
             if n_views % s == 0 and low <= i * s <= high]
    if not pairs:
        raise DblurDoseError(f"the mix has no OSEM setting for {n_views} views; add subsets that divide it to "
                             "TRAINING_MIX['subsets']")
    return sorted(pairs)


def acquisition_plan(settings: DataSettings, split: str, rng: np.random.Generator) -> dict:
    """The SPECT settings of one phantom.

    Returns
    -------
    dict
        ``{"camera", "n_views", "voxel_mm", "reconstructions": [{"iterations", "subsets",
        "postfilter_fwhm_mm"}, ..]}`` (voxel and filter in mm), one reconstruction per realisation.

    Draws from ``rng`` (the one place that draws from TRAINING_MIX) only for training and
    validation phantoms of a ``mix`` data set, so that the phantoms of a data set without it stay what they were."""
    plan = {"camera": settings.camera, "n_views": settings.n_views, "voxel_mm": settings.spect_voxel_mm}
    recon = {"iterations": settings.iterations, "subsets": settings.subsets, "postfilter_fwhm_mm": 0.0}
    recons = [dict(recon) for _ in range(settings.realisations)]
    if settings.mix and split in ("train", "val"):
        mix = TRAINING_MIX
        plan = {"camera": str(rng.choice(mix["camera"])), "n_views": int(rng.choice(mix["n_views"])),
                "voxel_mm": round(float(rng.uniform(*mix["voxel_mm"])), 4)}
        pairs = osem_choices(plan["n_views"], mix)
        for r in recons:
            r["iterations"], r["subsets"] = pairs[int(rng.integers(len(pairs)))]
            r["postfilter_fwhm_mm"] = float(rng.choice(mix["postfilter_fwhm_mm"]))
    plan["reconstructions"] = recons
    return plan


def read_plan(info: dict, settings: DataSettings | None = None, key: str = "spect") -> dict:
    """The acquisition plan of a phantom's manifest entry, with defaults for keys that older data sets lack.

    Parameters
    ----------
    info : dict
        A phantom of ``manifest["phantoms"]``.
    settings : DataSettings, optional
        The data set's settings (defaults: DataSettings()) for a plan missing altogether.
    key : str
        "spect" (the plan) or "spect_ood" (the out-of-mix setting of a test phantom).

    Returns
    -------
    dict
        As :func:`acquisition_plan` returns (for "spect_ood": as OUT_OF_MIX); ``camera`` is the paper's
        (spect.DEFAULT_CAMERA) where unrecorded, as every camera was before the camera mix.
    """
    if key == "spect_ood":
        if key not in info:
            raise DblurDoseError("this phantom has no out-of-mix SPECT; generate the test phantoms with the out-of-mix "
                                 "reconstruction too")
        return {"camera": DEFAULT_CAMERA, **info[key]}
    settings = DataSettings() if settings is None else settings
    default = acquisition_plan(replace(settings, mix=False, camera=DEFAULT_CAMERA),
                               str(info.get("split", "train")), np.random.default_rng(0))
    plan = {**default, **info.get("spect", {})}
    plan["reconstructions"] = [{**default["reconstructions"][0], **r} for r in plan["reconstructions"]]
    return plan


def _acquisition(settings: DataSettings, n_views: int, voxel_mm: float, camera: str | None = None, **_):
    """The SpectAcquisition of a plan: its camera (default: the settings'), views and voxel size (mm); the
    matrix keeps the preset's field of view at another voxel size."""
    from .simulation.spect import SpectAcquisition

    field_mm = np.asarray(settings.spect_matrix, dtype=np.float64) * settings.spect_voxel_mm
    matrix = tuple(int(round(v)) for v in field_mm / voxel_mm)
    return SpectAcquisition.for_camera(camera or settings.camera, matrix=matrix, voxel_mm=float(voxel_mm),
                                       n_views=int(n_views), iterations=settings.iterations,
                                       subsets=settings.subsets,
                                       projection_oversampling=settings.projection_oversampling)


def _software_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("dblurdose", "numpy", "scipy", "SimpleITK", "torch", "pytomography", "ompmc", "dask", "distributed"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def _write(volume, path: Path) -> None:
    from .io.outputs import atomic_file
    from .io.volume import write_volume

    with atomic_file(path, ".part.nrrd") as tmp:  # a part exists only once complete: safe to resume
        write_volume(volume, tmp, overwrite=True)


def phantom_draws(settings: DataSettings, index: int, split: str) -> dict:
    """Everything drawn for phantom ``index`` from its own seed, as its manifest entry records it.

    Returns
    -------
    dict
        ``seed``, ``split``, ``family``, ``time_days`` (days after injection), ``total_counts``, ``spect`` (the
        :func:`acquisition_plan`) and, for test phantoms with ``out_of_mix``, ``spect_ood`` (OUT_OF_MIX).
        The same settings, index and split give the same values (a resumed job redraws them).
    """
    seed = settings.phantom_seed(index)
    rng = np.random.default_rng(seed)
    time_days = float(rng.uniform(*settings.time_days))
    counts = float(np.exp(rng.uniform(np.log(settings.counts[0]), np.log(settings.counts[1]))))
    info = {"seed": seed, "split": split, "family": settings.family(index), "time_days": time_days,
            "total_counts": counts, "spect": acquisition_plan(settings, split, rng)}
    if settings.out_of_mix and split == "test":
        info["spect_ood"] = dict(OUT_OF_MIX)
    return info


@dataclass
class _PhantomJob:
    """The parts of one phantom's folder, each made once: a part whose files all exist is skipped (resume),
    one that is made gets its time (s) in ``done.json``. See :func:`generate_phantom`."""

    folder: Path
    settings: DataSettings
    split: str
    info: dict  # phantom_draws
    log: Callable[[str], None]
    done: dict = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.info["seed"]

    def files(self, stem: str, tag: str) -> list[str]:
        return layout.realisation_files(stem, self.settings.realisations, tag)

    def path(self, stem: str, r: int, tag: str) -> Path:
        return self.folder / layout.realisation_file(stem, r, tag)

    def part(self, name: str, files: list[str], make: Callable[[], None]) -> None:
        """Run ``make`` unless every one of ``files`` exists; record its time."""
        if all((self.folder / f).exists() for f in files):
            return
        t0 = time.perf_counter()
        make()
        self.done[name] = round(time.perf_counter() - t0, 2)
        (self.folder / layout.DONE).write_text(json.dumps(self.done, indent=1))
        self.log(f"{self.folder.name}: {name} {self.done[name]:.1f} s")

    def make_anatomy(self) -> None:
        """The virtual patient: HU, density, activity, labelmap and its names (``labels.json``)."""
        from .simulation.phantom import make_phantom
        from .simulation.phantom_shapes import make_shapes_phantom
        from .simulation.phantom_water import make_water_phantom

        s, time_days = self.settings, self.info["time_days"]
        if self.info["family"] == "water":
            ph = make_water_phantom(self.seed, shape=s.shape, spacing=s.spacing, time_days=time_days)
        elif self.info["family"] == "shapes":
            ph = make_shapes_phantom(self.seed, shape=s.shape, spacing=s.spacing, time_days=time_days)
        else:  # test phantoms hold two lesions or more in each size class (1-5, 5-20, > 20 mL)
            ph = make_phantom(self.seed, shape=s.shape, spacing=s.spacing, time_days=time_days,
                              lesion_classes=self.split == "test")
        for name in layout.ANATOMY:
            _write(getattr(ph, name), self.folder / layout.volume_file(name))
        meta = {"label_names": {str(k): v for k, v in ph.label_names.items()}, "info": ph.info}
        (self.folder / layout.LABEL_NAMES).write_text(json.dumps(meta, indent=1, default=str))

    def make_spect(self, tag: str, hu, density, activity) -> None:
        """The reconstructed SPECT of every realisation (``tag`` "_ood": outside the training mix), on its
        own grid and moved onto the CT grid (activity conserved)."""
        from .geometry.resample import resample_activity
        from .simulation.spect import simulate_spect

        n_real = self.settings.realisations
        if tag:
            ood_plan = self.info["spect_ood"]
            acq = _acquisition(self.settings, **ood_plan)
            recons = [{k: ood_plan[k] for k in ("iterations", "subsets", "postfilter_fwhm_mm")}] * n_real
        else:
            plan = self.info["spect"]
            acq, recons = _acquisition(self.settings, **plan), plan["reconstructions"]
        images = simulate_spect(activity, density, self.info["total_counts"], self.seed, acq, realisations=n_real,
                                reconstructions=recons)
        for r, recon in enumerate(images):
            _write(recon, self.path("spect_native", r, tag))
            _write(resample_activity(recon, hu), self.path("spect", r, tag))

    def make_dvk(self, tag: str, hu) -> None:
        """The DVK dose rate (mGy/h) of every realisation's SPECT."""
        from .dose import compute_dose_rate_maps
        from .io.volume import read_volume

        for r in range(self.settings.realisations):
            spect = read_volume(self.path("spect", r, tag))
            _write(compute_dose_rate_maps(spect, hu, ("dvk",))["dvk"], self.path("dvk", r, tag))

    def make_spect_mc(self, tag: str, density) -> None:
        """Test phantoms: the "SPECT + MC" method, Monte Carlo dose rate (mGy/h) of every realisation's SPECT."""
        from .io.volume import read_volume
        from .physics.montecarlo import monte_carlo_dose_rate

        for r in range(self.settings.realisations):
            spect = read_volume(self.path("spect", r, tag))
            bq = spect.with_array(spect.array * np.float32(spect.voxel_volume_ml))
            dose, _ = monte_carlo_dose_rate(bq, density, int(self.settings.spect_mc_decays), self.seed + 1000 + r,
                                            threads=self.settings.threads)
            _write(dose, self.path("mc_spect", r, tag))

    def make_exact_truth(self, hu, activity) -> None:
        """Water family: the label is the DVK of the true activity (exact in water; no Monte Carlo), with a
        zero uncertainty, computed as the data set's DVK maps are."""
        from .dose import compute_dose_rate_maps

        dose = compute_dose_rate_maps(activity, hu, ("dvk",))["dvk"]
        _write(dose.with_array(np.zeros(dose.shape, np.float32)), self.folder / truth_file(uncertainty=True))
        _write(dose, self.folder / truth_file())

    def make_truth(self, decays: int, density, activity) -> None:
        """The label, in LABEL_BATCHES nested batches (:func:`nested_monte_carlo_dose_rate`): the means over
        the first 1/8, 1/4 and 1/2 of the decays as ``mc_truth_d{N}.nrrd`` (N decays, mGy/h) with
        ``mc_truth_d{N}_unc.nrrd``, then the mean of all as ``mc_truth.nrrd``/``mc_truth_unc.nrrd``,
        written last: the part is done once it exists."""
        from .physics.montecarlo import nested_monte_carlo_dose_rate

        bq = activity.with_array(activity.array * np.float32(activity.voxel_volume_ml))
        levels = nested_monte_carlo_dose_rate(bq, density, decays, self.seed, threads=self.settings.threads)
        for n in sorted(levels):  # the full label (most decays) last
            dose, unc = levels[n]
            full = n == max(levels)
            _write(dose, self.folder / truth_file(None if full else n))
            _write(unc, self.folder / truth_file(None if full else n, uncertainty=True))


def generate_phantom(out: str | os.PathLike, index: int, settings: DataSettings, split: str,
                     log: Callable[[str], None] = print) -> dict:
    """Make (or finish) every part of phantom ``index`` in ``out/pNN``.

    Parameters
    ----------
    out : str or path
        The data-set folder.
    index : int
        The phantom.
    settings : DataSettings
        The data set's settings.
    split : str
        "train", "val" or "test" (:meth:`DataSettings.split`).
    log : callable
        Gets a line per part made.

    Returns
    -------
    dict
        Its manifest entry: ``index``, the draws (:func:`phantom_draws`) and ``timings_s`` (per part, s).
    """
    from .io.volume import read_volume
    from .physics.montecarlo import nested_levels

    folder = Path(out) / layout.phantom_key(index)
    folder.mkdir(parents=True, exist_ok=True)
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    done_path = folder / layout.DONE
    job = _PhantomJob(folder, settings, split, phantom_draws(settings, index, split), log,
                      json.loads(done_path.read_text()) if done_path.exists() else {})
    tags = [layout.recon_tag(""), layout.recon_tag("ood")] if "spect_ood" in job.info else [layout.recon_tag("")]
    job.part("phantom", [layout.volume_file(name) for name in layout.ANATOMY] + [layout.LABEL_NAMES],
             job.make_anatomy)
    hu, density, activity = (read_volume(folder / layout.volume_file(name)) for name in ("hu", "density", "activity"))
    for tag in tags:
        job.part(f"spect{tag}", job.files("spect_native", tag) + job.files("spect", tag),
                 partial(job.make_spect, tag, hu, density, activity))
        job.part(f"dvk{tag}", job.files("dvk", tag), partial(job.make_dvk, tag, hu))
    if job.info["family"] == "water":
        job.part("exact_truth", [truth_file(), truth_file(uncertainty=True)], partial(job.make_exact_truth, hu, activity))
        return {"index": index, **job.info, "timings_s": job.done}
    truth_decays = int(settings.test_decays if split in ("test", "val") else settings.decays)
    labels = [truth_file(n, u) for n in nested_levels(truth_decays)[:-1] for u in (False, True)]
    job.part("mc_truth", labels + [truth_file(), truth_file(uncertainty=True)],
             partial(job.make_truth, truth_decays, density, activity))
    if split == "test":
        for tag in tags:
            job.part(f"spect_mc{tag}", job.files("mc_spect", tag), partial(job.make_spect_mc, tag, density))
    return {"index": index, **job.info, "timings_s": job.done}


#: settings a resumed data set may change: they do not change what is drawn or made
_RESUMABLE = ("threads",)


def generate(out: str | os.PathLike, settings: DataSettings, workers: int = 1, scheduler: str | None = None,
             log: Callable[[str], None] = print, first: str = "train") -> Path:
    """Generate (or resume) a data set; phantoms run as Dask tasks. Returns the manifest path.

    ``scheduler``: address of an existing Dask scheduler; otherwise a local cluster of ``workers``
    processes is started (and closed at the end). ``first``: which phantoms are made first
    (:meth:`DataSettings.generation_order`); not a setting of the data set, so a job may resume in either order.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    split, order = settings.split(), settings.generation_order(first)  # order: submitted in order, first made first
    if manifest_path.exists():
        old = json.loads(manifest_path.read_text()).get("settings", {})
        new = json.loads(json.dumps(asdict(settings)))  # as the manifest stores it (tuples as lists)
        default = json.loads(json.dumps(asdict(DataSettings())))  # a key an older manifest lacks had its default
        changed = sorted(k for k in set(old) | set(new)
                         if k not in _RESUMABLE and old.get(k, default.get(k)) != new.get(k))
        if changed:
            raise DblurDoseError(
                f"{out} holds a data set made with other settings ({', '.join(changed)} differ): resuming would mix "
                "two data sets. Use another output folder, or the same settings to resume", settings=("out",)
            )
    manifest = {
        "format": 1,
        "settings": asdict(settings),
        "spacing": list(settings.spacing),
        "software": _software_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": " ".join(sys.argv),
        "plan": settings.plan(),  # every phantom's patient from the start, made or not (io.dataset.virtual_patients)
        "phantoms": {},
    }
    if manifest_path.exists():
        manifest["phantoms"] = json.loads(manifest_path.read_text()).get("phantoms", {})
    manifest_path.write_text(json.dumps(manifest, indent=1))

    def record(result: dict) -> None:
        key = layout.phantom_key(result["index"])
        manifest["phantoms"][key] = {**result, "realisations": settings.realisations}
        manifest_path.write_text(json.dumps(manifest, indent=1))

    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise DblurDoseError("data generation runs its phantoms on Dask: pip install 'dblurdose[data]'") from None
    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        import dask

        # A phantom's SPECT or Monte Carlo holds a worker for many minutes; on a machine busy with
        # other work (the job runs at low priority) its heartbeats can stall for longer than Dask's
        # default 5 minutes, and the scheduler would restart the worker and lose the phantom's
        # unfinished part. Workers here are local processes: never time them out.
        with dask.config.set({"distributed.scheduler.worker-ttl": None}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        futures = [client.submit(generate_phantom, str(out), i, settings, split[i], print, pure=False,
                                 priority=len(order) - n) for n, i in enumerate(order)]  # falling priority
        for n, future in enumerate(as_completed(futures), 1):
            result = future.result()
            record(result)
            log(f"[{n}/{len(futures)}] phantom {layout.phantom_key(result['index'])} done")
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return manifest_path


def deconvolve_data_set(data_dir: str | os.PathLike, iterations: int, recon: str = "",
                        progress: Callable[[float, str], object] | None = None) -> Path:
    """The inputs of a network that deconvolves (``train`` with ``deconvolve``): for each realisation of every
    finished phantom, its SPECT after ``iterations`` Richardson-Lucy iterations at its chain's resolution (on
    the CT grid) and that SPECT's DVK, written beside the data set's own files
    (:func:`~DblurDoseLib.io.dataset.deconvolved_file`); nothing existing is changed.

    Each distinct chain's Gaussian-equivalent FWHM (mm; minutes each) is measured once and kept in the data
    set's ``resolution.json``; finished files are skipped, so a stopped run resumes where it stopped.

    Parameters
    ----------
    data_dir : str or os.PathLike
        The data set (``data generate``).
    iterations : int
        Richardson-Lucy iterations, at least 1.
    recon : str
        "" (the data set's own reconstructions) or "ood" (the out-of-mix ones, where made).
    progress : callable, optional
        ``progress(fraction, message)``.

    Returns
    -------
    Path
        The data set folder.
    """
    from .evaluation.evaluate import deconvolved_inputs
    from .io.outputs import atomic_file
    from .io.volume import read_volume
    from .physics.deconvolution import check_iterations

    check_iterations([iterations])
    data_dir, tag = Path(data_dir), layout.recon_tag(recon)
    manifest = layout.read_manifest(data_dir, complete=False)
    table_path = data_dir / layout.RESOLUTION
    table = layout.read_resolutions(data_dir)

    def save_table() -> None:
        with atomic_file(table_path, ".part.json") as tmp:
            Path(tmp).write_text(json.dumps(table, indent=1))

    keys = sorted(manifest["phantoms"])
    for i, key in enumerate(keys):
        entry, folder = manifest["phantoms"][key], data_dir / key
        n_real = layout.realisations_of(entry)
        if not (folder / layout.realisation_file("spect_native", 0, tag)).is_file():
            continue  # this reconstruction was not made for this phantom
        hu = None
        for r, chain in enumerate(layout.recorded_chains(entry, key, n_real, recon)):
            spect_file, dvk_file = (folder / layout.deconvolved_file(s, iterations, r, tag) for s in ("spect", "dvk"))
            if spect_file.is_file() and dvk_file.is_file():
                continue
            hu = read_volume(folder / layout.volume_file("hu")) if hu is None else hu
            sharp, dvk = deconvolved_inputs(folder, r, tag, int(iterations), chain, table, hu, "cpu", save_table)
            _write(sharp, spect_file)
            _write(hu.with_array(dvk), dvk_file)
        if progress is not None:
            progress((i + 1) / len(keys), f"{key}: deconvolved ({i + 1}/{len(keys)})")
    return data_dir


def add_data_arguments(sub) -> None:
    """`dblurdose data generate ...`"""
    p = sub.add_parser("data", help="generate training/test data (virtual patients, SPECT, DVK, Monte Carlo)")
    dsub = p.add_subparsers(dest="data_command", required=True, help="data step (generate, deconvolve)")
    g = dsub.add_parser("generate", help="generate or resume a data set")
    g.add_argument("--out", required=True, help="data folder (outside git)")
    g.add_argument("--phantoms", help="phantom indices, e.g. 0-13 (default 0-13, or none with --water or --shapes)")
    g.add_argument("--realisations", type=int, default=3, help="Poisson realisations per phantom")
    g.add_argument("--decays", type=float, default=3e7, help="Monte Carlo decays for training truth")
    g.add_argument("--test-decays", type=float, default=1e8, help="Monte Carlo decays for test truth")
    g.add_argument("--spect-mc-decays", type=float, default=1e7, help="decays for the SPECT+MC method")
    g.add_argument("--counts", default="3e6:3e7", help="range of total SPECT counts, LOW:HIGH")
    g.add_argument("--preset", choices=sorted(PRESETS), default="paper",
                   help="grid and SPECT settings: paper (512x512x130 CT at 0.98x0.98x3 mm, 128 views, OSEM 16x4, "
                        "2x oversampled projection); cpu (256x256x130 at 1.96x1.96x3 mm, 64 views, OSEM 8x4, no "
                        "oversampling: a data set that 2 CPU cores make in under an hour); small (48x96x96 CT at "
                        "5.2x5.2x8.1 mm, 32^3 SPECT at 15.6 mm, 32 views, 4x4 OSEM: a quick look); water (the cpu "
                        "preset on a 192x160x80 CT and 80x80x52 SPECT: for water-family data sets)")
    g.add_argument("--small", action="store_const", const="small", dest="preset", help="the same as --preset small")
    g.add_argument("--views", type=int, help="SPECT views over 360 degrees (overrides the preset)")
    g.add_argument("--iterations", type=int, help="OSEM iterations (overrides the preset)")
    g.add_argument("--subsets", type=int, help="OSEM subsets (overrides the preset)")
    g.add_argument("--mix", action="store_true",
                   help="training phantoms: camera, views, voxel size, OSEM and post-filter drawn from a mix "
                        "(DblurDoseLib.data.TRAINING_MIX) instead of the preset's one setting")
    g.add_argument("--out-of-mix", action="store_true",
                   help="test phantoms: also reconstruct the same data with settings outside the mix (OUT_OF_MIX), "
                        "for `dblurdose evaluate --recon ood`")
    g.add_argument("--water", default="",
                   help="indices of water-family phantoms (objects in water, truth the DVK of the true activity: exact, "
                        "no Monte Carlo; always training), e.g. 100-159; use --preset water for a data set of them alone")
    g.add_argument("--held-out", default="",
                   help="extra phantom indices, e.g. 14-17, made by the differently built 'shapes' family "
                        "(DblurDoseLib.simulation.phantom_shapes): always test phantoms, for `dblurdose evaluate --family shapes`")
    g.add_argument("--shapes", default="",
                   help="indices of 'shapes'-family TRAINING phantoms, e.g. 40-59 (acquired like the other training "
                        "phantoms): a more varied training set, best in a data set of its own (`dblurdose train "
                        "--extra-data`) so that the held-out family of another data set stays unseen by networks "
                        "trained without it; with the same --seed, use indices no other data set uses")
    g.add_argument("--validation", type=int, default=0, metavar="N",
                   help="N validation phantoms: SPECT from the training mix, truth of --test-decays (a clean "
                        "validation loss for `dblurdose train`)")
    g.add_argument("--workers", type=int, default=1, help="local Dask workers (phantoms in parallel)")
    g.add_argument("--scheduler", help="address of an existing Dask scheduler (e.g. tcp://host:8786)")
    g.add_argument("--first", choices=GENERATION_FIRST, default="train",
                   help="which phantoms to make first: train (default; a job stopped part way leaves phantoms to train "
                        "on) or test (validation, test and held-out first: a fixed test set early); changes nothing "
                        "that is made, and a job may resume in either order")
    g.add_argument("--seed", type=int, default=2022, help="base random seed of the phantoms, SPECT noise and Monte Carlo (default 2022)")
    g.set_defaults(func=cmd_data)
    d = dsub.add_parser("deconvolve", help="add Richardson-Lucy deconvolved SPECTs and their DVKs to a data set "
                                           "(the inputs of `dblurdose train --deconvolve N`); resumable")
    d.add_argument("--data", required=True, help="data set folder")
    d.add_argument("--iterations", type=int, required=True, metavar="N", help="Richardson-Lucy iterations")
    d.add_argument("--recon", choices=("standard", "ood"), default="standard",
                   help="the data set's own reconstructions (default) or the out-of-mix ones")
    d.set_defaults(func=cmd_data_deconvolve)


def cmd_data_deconvolve(args) -> int:
    """``dblurdose data deconvolve``: :func:`deconvolve_data_set`; prints the data set folder."""
    print(deconvolve_data_set(args.data, args.iterations, "" if args.recon == "standard" else args.recon,
                              progress=lambda f, m: print(f"[{100 * f:3.0f}%] {m}", file=sys.stderr, flush=True)))
    return 0


SMALL = dict(shape=(48, 96, 96), spacing=(5.2, 5.2, 8.125), spect_matrix=(32, 32, 26), spect_voxel_mm=15.6,
             n_views=32, iterations=4, subsets=4)
#: the paper's geometry at half the in-plane resolution, with a lighter acquisition model
CPU = dict(shape=(130, 256, 256), spacing=(1.96, 1.96, 3.0), n_views=64, iterations=8, subsets=4,
           projection_oversampling=1)
#: the cpu preset on a smaller field (376 x 314 x 240 mm CT, 384 x 384 x 250 mm SPECT) for water-family
#: data sets, whose bodies it holds: the SPECT costs a quarter of the cpu preset's
WATER = dict(CPU, shape=(80, 160, 192), spect_matrix=(80, 80, 52))
PRESETS = {"paper": {}, "cpu": CPU, "small": SMALL, "water": WATER}


def cmd_data(args) -> int:
    try:
        low, high = (float(v) for v in args.counts.split(":"))
    except ValueError:
        raise DblurDoseError(f"cannot read the range of total SPECT counts {args.counts!r}; write LOW:HIGH, "
                             "e.g. 3e6:3e7") from None
    if not 0 < low <= high:
        raise DblurDoseError("the range of total SPECT counts needs 0 < LOW <= HIGH")
    if args.realisations < 1:
        raise DblurDoseError("the number of Poisson realisations must be at least 1")
    if args.workers < 1:
        raise DblurDoseError("the number of Dask workers must be at least 1")
    if args.validation < 0:
        raise DblurDoseError("the number of validation phantoms must be 0 or more")
    threads = max(1, (os.cpu_count() or 1) // args.workers) if args.workers > 1 and not args.scheduler else None
    phantoms = args.phantoms if args.phantoms is not None else ("" if args.water or args.shapes else "0-13")
    settings = DataSettings(phantoms=parse_range(phantoms) if phantoms else [], realisations=args.realisations,
                            decays=args.decays, water=parse_range(args.water) if args.water else [],
                            test_decays=args.test_decays, spect_mc_decays=args.spect_mc_decays, counts=(low, high),
                            seed=args.seed, threads=threads, mix=args.mix, out_of_mix=args.out_of_mix,
                            held_out=parse_range(args.held_out) if args.held_out else [], n_val=args.validation,
                            shapes=parse_range(args.shapes) if args.shapes else [],
                            **PRESETS[args.preset])
    for name, value, what in (("n_views", args.views, "SPECT views"), ("iterations", args.iterations, "OSEM iterations"),
                              ("subsets", args.subsets, "OSEM subsets")):
        if value is not None:
            if value < 1:
                raise DblurDoseError(f"the number of {what} must be at least 1")
            setattr(settings, name, value)
    path = generate(args.out, settings, workers=args.workers, scheduler=args.scheduler, first=args.first)
    print(path)
    return 0
