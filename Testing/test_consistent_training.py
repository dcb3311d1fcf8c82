"""Training through the consistency step: the torch step is the numpy one, and train(consistent=) uses it."""

import json
import shutil

import numpy as np
import pytest
import torch
from test_training import FAST, make_dataset

from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.io import dataset as layout
from DblurDoseLib.learning import training
from DblurDoseLib.learning.consistency import consistent_slabs, gaussian_blur_slabs
from DblurDoseLib.physics.consistency import consistent_dose_rate
from DblurDoseLib.physics.deconvolution import FWHM_TO_SIGMA, gaussian_blur

SPACING_XYZ = (1.96, 1.96, 3.0)  # the data sets' grid: anisotropic, as the blur must handle


def _volumes(shape=(8, 30, 26), seed=0):
    rng = np.random.default_rng(seed)
    density = np.where(rng.random(shape) < 0.1, 0.0012, 0.3 + 1.5 * rng.random(shape)).astype(np.float32)
    return density, rng.random(shape).astype(np.float32), rng.random(shape).astype(np.float32)


def test_torch_step_is_the_numpy_step_slab_by_slab():
    """Each slab at its own FWHM in one grouped pass equals consistent_dose_rate on that slab as a volume,
    with scipy's mirrored edges; 15.4 mm reaches further in z than the 8 slices (the mirror repeats)."""
    fwhms = (4.0, 11.5, 15.4)
    slabs = [_volumes(seed=s) for s in range(len(fwhms))]
    stack = [torch.from_numpy(np.stack([v[i] for v in slabs]))[:, None] for i in range(3)]
    got = consistent_slabs(stack[1], stack[2], stack[0], torch.tensor(fwhms), SPACING_XYZ)
    for k, ((density, estimate, dvk), fwhm) in enumerate(zip(slabs, fwhms)):
        want = consistent_dose_rate(estimate, dvk, density, fwhm, SPACING_XYZ)
        assert np.abs(got[k, 0].numpy() - want).max() < 1e-5 * want.max()
        assert np.array_equal(got[k, 0].numpy()[density < 0.1], estimate[density < 0.1])  # air keeps the estimate
    sigma = torch.tensor([[15.4 * FWHM_TO_SIGMA / s for s in SPACING_XYZ[::-1]]])
    blurred = gaussian_blur_slabs(stack[1][2:], sigma)[0, 0].numpy()
    assert np.abs(blurred - gaussian_blur(slabs[2][1], 15.4, SPACING_XYZ, np.float32)).max() < 1e-6


def test_loss_on_the_kept_map_is_blind_to_a_smooth_excess_and_not_to_a_lost_lesion():
    """With the exact data (DVK = G x truth in energy), the step undoes a smooth excess (warm tissue raised by
    a fifth), so the loss taken on the kept map hardly sees it; a lesion the estimate lost stays a loss: what is finer than the
    camera is the network's to get right."""
    shape, fwhm = (24, 40, 40), 10.0
    density = np.ones(shape, np.float32)
    truth = np.full(shape, 1.0, np.float32)
    z, y, x = np.indices(shape)
    lesion = (z - 12) ** 2 * 9 + ((y - 20) ** 2 + (x - 20) ** 2) * 1.96 ** 2 <= 8.0 ** 2
    truth[lesion] = 20.0
    dvk = gaussian_blur(truth, fwhm, SPACING_XYZ, np.float32)
    t = lambda a: torch.from_numpy(a)[None, None]  # noqa: E731
    weight = t(np.full(shape, training.BODY_WEIGHT, np.float32))
    batch = training.Batch(torch.stack([t(density)[0, 0]] * 2)[None].expand(1, 2, *shape), t(dvk), t(truth), weight,
                           t(dvk), torch.tensor([fwhm]))
    from DblurDoseLib.learning.network import HALF

    batch = batch._replace(x=torch.nn.functional.pad(batch.x, (0, 0, 0, 0, HALF, HALF), mode="replicate"))

    def losses(estimate):
        pred = t(estimate.astype(np.float32))
        return [float(training.batch_loss(pred, batch, SPACING_XYZ, 0.0, consistent=c)) for c in (0.0, 1.0)]

    raw, kept = losses(truth + 0.2)
    assert kept < 1e-3 * raw
    raw, kept = losses(np.where(lesion, dvk, truth))  # the lesion as blurred as the DVK's
    assert kept > 0.3 * raw > 0


def _dataset_with_resolutions(dataset, tmp_path, record=True):
    """A copy of the training tests' data set with SPECT chains in its manifest and, with ``record``, their
    measured resolutions (two chains: 9 and 14 mm) in resolution.json."""
    data = tmp_path / "data"
    shutil.copytree(dataset, data, ignore=shutil.ignore_patterns(".cache"))
    manifest = json.loads((data / layout.MANIFEST).read_text())
    table = {}
    for entry in manifest["phantoms"].values():
        recons = [{"iterations": 4, "subsets": 8, "postfilter_fwhm_mm": p} for p in (0.0, 8.0)]
        entry["spect"] = {"camera": "siemens-intevo-me", "n_views": 64, "voxel_mm": 4.8, "reconstructions": recons}
        for chain, fwhm in zip(layout.recorded_chains(entry, "p", 2), (9.0, 14.0)):
            table[layout.resolution_key(chain)] = {"chain": chain, "fwhm_mm": fwhm}
    (data / layout.MANIFEST).write_text(json.dumps(manifest))
    if record:
        (data / layout.RESOLUTION).write_text(json.dumps(table))
    return data


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def test_training_through_the_step_records_it_and_validates_the_kept_map(dataset, tmp_path):
    data = _dataset_with_resolutions(dataset, tmp_path)
    manifest = training.read_manifest(data)
    from DblurDoseLib.learning.network import ModelConfig

    cases = training.load_cases(data, ["p01"], manifest, ModelConfig(spacing=(10.0, 10.0, 15.0)), tmp_path / "c")
    assert [c.fwhm_mm for c in cases] == [9.0, 14.0]  # each realisation its own chain's
    out = training.train(data, tmp_path / "kept.pt", progress=lambda f, m: None, consistent=0.8,
                         **{**FAST, "epochs": 1})
    history = torch.load(training.checkpoint_path(out), weights_only=True)["history"]
    assert all(np.isfinite(h["val_mse_consistent"]) and h["val_mse_consistent"] != h["val_mse"] for h in history)
    assert np.isfinite(history[-1]["train_loss"])
    from DblurDoseLib.learning.network import load_model_file

    assert load_model_file(out).config.info["consistent"] == 0.8
    with pytest.raises(DblurDoseError, match="other settings.*consistent"):
        training.train(data, out, progress=lambda f, m: None, consistent=0.5, **{**FAST, "epochs": 1})


def test_training_through_the_step_refuses_unmeasured_chains_and_a_bad_share(dataset, tmp_path):
    data = _dataset_with_resolutions(dataset, tmp_path, record=False)
    with pytest.raises(DblurDoseError, match=r"records no SPECT resolution for p01.*\(data deconvolve"):
        training.train(data, tmp_path / "m.pt", progress=lambda f, m: None, consistent=0.5, **FAST)
    with pytest.raises(DblurDoseError, match="between 0 and 1, got 1.5"):
        training.train(data, tmp_path / "m.pt", progress=lambda f, m: None, consistent=1.5, **FAST)
    assert not (tmp_path / "m.pt").exists()


def test_a_model_trained_through_the_step_is_warned_of_without_the_resolution():
    from types import SimpleNamespace

    from DblurDoseLib.dose import spect_resolution_of

    def network(info):
        return SimpleNamespace(config=SimpleNamespace(deconvolution_iterations=0, fwhm_input=False, info=info))

    warnings = []
    assert spect_resolution_of(network({"consistent": 0.8}), None, warnings) is None
    assert len(warnings) == 1 and "kept consistent" in warnings[0] and "80%" in warnings[0]
    assert spect_resolution_of(network({"consistent": 0.8}), 12.0, warnings) == 12.0
    assert spect_resolution_of(network({"consistent": 0.0}), None, warnings) is None
    assert spect_resolution_of(network({}), None, warnings) is None and len(warnings) == 1


def test_the_kept_loss_is_taken_where_the_slab_step_is_the_volume_step():
    """Near a slab's faces the mirror stands in for the slices beyond: the slab's kept map departs from the
    whole volume's there (hot spheres cut by the faces), and inside interior() it is about twice as close."""
    from DblurDoseLib.learning.consistency import interior

    assert interior((8, 64, 64), 8.84, SPACING_XYZ) == (slice(2, 6), slice(3, 61), slice(3, 61))
    assert interior((8, 64, 64), 40.0, SPACING_XYZ)[0] == slice(3, 5)  # two slices at least stay
    assert interior((1, 16, 16), 12.0, SPACING_XYZ)[0] == slice(0, 1)
    rng = np.random.default_rng(1)
    shape, fwhm = (32, 64, 64), 10.0
    z, y, x = np.indices(shape)
    truth = np.full(shape, 1.0, np.float32)
    for _ in range(12):
        c, r = rng.uniform((0, 10, 10), (32, 54, 54)), rng.uniform(4, 12)
        truth[((z - c[0]) * 3) ** 2 + ((y - c[1]) * 1.96) ** 2 + ((x - c[2]) * 1.96) ** 2 <= r ** 2] = 30.0
    density = np.ones(shape, np.float32)
    dvk = gaussian_blur(truth, fwhm, SPACING_XYZ, np.float32) * rng.normal(1, 0.05, shape).astype(np.float32)
    volume = consistent_dose_rate(truth, dvk, density, fwhm, SPACING_XYZ)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a[12:20]))[None, None]  # noqa: E731
    slab = consistent_slabs(t(truth), t(dvk), t(density), torch.tensor([fwhm]), SPACING_XYZ)[0, 0].numpy()
    inside = interior(slab.shape, fwhm, SPACING_XYZ)

    def rms(a):
        return float(np.sqrt(np.mean(a ** 2)))

    whole = rms(slab - volume[12:20]) / rms(truth[12:20])
    inner = rms(slab[inside] - volume[12:20][inside]) / rms(truth[12:20][inside])
    assert inner < 0.6 * whole and whole > 0.01  # 0.024 against 0.052 here; on v03's p04 0.009 against 0.028


def test_a_network_with_the_resolution_input_fine_tunes_from_one_without_it(dataset, tmp_path):
    """train(fwhm_input=True) from a model without the input starts as that model (its validation loss before
    the first step is the start's), learns an input that depends on each realisation's recorded FWHM (9 and
    14 mm here), keeps it in the model file, resumes only with it, and needs every chain's resolution."""
    from DblurDoseLib.learning import validation
    from DblurDoseLib.learning.network import load_model_file

    data = _dataset_with_resolutions(dataset, tmp_path)
    quiet = {"progress": lambda f, m: None}
    start = training.train(data, tmp_path / "plain.pt", **quiet, **{**FAST, "epochs": 1})
    out = training.train(data, tmp_path / "fwhm.pt", init=start, fwhm_input=True, **quiet, **{**FAST, "epochs": 1})
    history = torch.load(training.checkpoint_path(out), weights_only=True)["history"]
    before = validation.validation_loss(start, data, seed=FAST["seed"], batch_size=FAST["batch_size"],
                                        slab=FAST["slab"], patch=FAST["patch"])
    assert history[0]["val_mse"] == pytest.approx(before, rel=1e-4)
    model = load_model_file(out)
    assert model.config.fwhm_input and model.blur.weight.abs().max() > 0
    after = validation.validation_loss(out, data, seed=FAST["seed"], batch_size=FAST["batch_size"],
                                       slab=FAST["slab"], patch=FAST["patch"])
    assert after == pytest.approx(history[-1]["val_mse"], rel=1e-4)  # validate gives it each volume's FWHM
    with pytest.raises(DblurDoseError, match="other settings.*fwhm_input"):
        training.train(data, out, init=start, **quiet, **{**FAST, "epochs": 1})
    with pytest.raises(DblurDoseError, match="takes the SPECT's resolution as an input; fine-tune it with"):
        training.train(data, tmp_path / "no.pt", init=out, fwhm_input=False, **quiet, **FAST)
    unmeasured = _dataset_with_resolutions(dataset, tmp_path / "u", record=False)
    with pytest.raises(DblurDoseError, match=r"records no SPECT resolution for p01.*the resolution input"):
        training.train(unmeasured, tmp_path / "no.pt", fwhm_input=True, **quiet, **FAST)
    assert not (tmp_path / "no.pt").exists()
