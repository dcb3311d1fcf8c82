"""Training on a tiny synthetic data set: the loss falls, resume continues, validation is held out."""

import argparse
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.io.volume import Volume, read_volume, write_volume
from DblurDoseLib.learning import training, validation
from DblurDoseLib.learning.inference import cnn_dose_rate, load_model

SPACING = (10.0, 10.0, 15.0)  # coarse voxels: a patient-sized body in a tiny grid
FAST = dict(epochs=2, batch_size=8, patch=32, slab=4, steps_per_epoch=10, lr=2e-3, seed=3, device="cpu")


def make_dataset(root, n_phantoms=5, n_test=1, shape=(14, 32, 32), realisations=2, seed=0):
    """The data generator's layout with stand-in physics: blurred SPECT, DVK from it, a sharper label."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n) - (n - 1) / 2 for n in shape), indexing="ij")
    phantoms = {}
    for i in range(n_phantoms):
        name = f"p{i:02d}"
        folder = root / name
        folder.mkdir(parents=True)
        body = (y / (shape[1] * 0.42)) ** 2 + (x / (shape[2] * 0.45)) ** 2 <= 1
        density = np.where(body, 1.0, 0.0012).astype(np.float32)
        density[body & (((x - shape[2] * 0.2) / 5) ** 2 + (y / 6) ** 2 <= 1)] = 0.3
        act = np.where(body, 1e4, 0.0)
        for _ in range(3):
            c = rng.uniform(-0.3, 0.3, 3) * np.array(shape)
            act += 2e5 * body * (((z - c[0]) / 1.5) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= rng.uniform(4, 16))
        tissue = density >= 0.1
        truth = 1.5 * gaussian_filter(act, 0.7) * 1e-4 / np.maximum(density, 0.1) * tissue
        vol = lambda a: Volume(np.asarray(a, np.float32), SPACING)  # noqa: E731
        write_volume(vol(density), folder / "density.nrrd")
        write_volume(vol(tissue), folder / "labels.nrrd")
        write_volume(vol(truth), folder / "mc_truth.nrrd")
        for r in range(realisations):
            spect = rng.poisson(gaussian_filter(act, 1.5) / 1e3) * 1e3
            write_volume(vol(spect), folder / f"spect_r{r}.nrrd")
            write_volume(vol(gaussian_filter(spect, 1.0) * 1e-4 / np.maximum(density, 0.1) * tissue),
                         folder / f"dvk_r{r}.nrrd")
        phantoms[name] = {"index": i, "split": "test" if i < n_test else "train", "realisations": realisations}
    (root / "manifest.json").write_text(json.dumps({"format": 1, "phantoms": phantoms, "spacing": list(SPACING)}))
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """Two epochs without interruption; returns (model path, messages)."""
    out = tmp_path_factory.mktemp("run") / "model.pt"
    messages = []
    training.train(dataset, out, progress=lambda f, m: messages.append((f, m)), **FAST)
    return out, messages


def _checkpoint(out):
    return torch.load(training.checkpoint_path(out), weights_only=True)


def test_training_lowers_the_loss_and_writes_its_files(trained, dataset):
    out, messages = trained
    history = _checkpoint(out)["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[2]["train_loss"] < 0.8 * history[1]["train_loss"]
    assert min(h["val_loss"] for h in history[1:]) < history[0]["val_loss"]  # held-out phantoms improve too
    assert out.is_file() and out.with_name("model.loss.png").stat().st_size > 1000
    # the weighted MSE alone is logged beside the loss: runs of different relative weights compare on it,
    # and it is what validation_loss reports for the saved model
    assert all(h["val_mse"] < h["val_loss"] for h in history)  # the relative term adds to the MSE
    from DblurDoseLib.learning.network import load_model_file

    info = load_model_file(out).config.info
    again = validation.validation_loss(out, dataset, seed=FAST["seed"], batch_size=FAST["batch_size"],
                                     slab=FAST["slab"], patch=FAST["patch"])
    assert info["val_mse"] == pytest.approx(again, rel=1e-4)
    assert messages[-1][0] == 1.0 and any("epoch 2/2" in m for _, m in messages)
    # beside the best epoch's model: the last epoch's, the checkpoint's weights exactly
    last = load_model_file(training.last_model_path(out))
    assert training.last_model_path(out).name == "model.last.pt" and last.config.info["epoch"] == 2
    weights = _checkpoint(out)["model"]
    assert all(torch.equal(v, weights[k]) for k, v in last.state_dict().items())


def test_saved_model_runs_through_cnn_dose_rate(trained, dataset):
    out, _ = trained
    model = load_model(out, device="cpu")
    assert model.config.spacing == SPACING and model.config.variant == "dblurdose"
    assert model.config.info["val_phantoms"] and model.config.info["epoch"] >= 1
    ct = read_volume(dataset / "p00" / "density.nrrd")  # a test phantom, never trained on
    density = ct.array
    spect = read_volume(dataset / "p00" / "spect_r0.nrrd")
    dvk = read_volume(dataset / "p00" / "dvk_r0.nrrd").array
    dose = cnn_dose_rate(spect, ct, density, dvk, "cpu", model=model)
    assert dose.same_grid(ct) and np.isfinite(dose.array).all()
    assert dose.array.min() >= 0 and not dose.array[density < 0.1].any()
    assert dose.array.max() > 0


def test_batch_norm_statistics_are_the_average_of_each_epochs_second_half(trained):
    """What validation and the saved model use: every batch norm's running statistics averaged over the
    last epoch's second half of batches (not PyTorch's momentum, ruled by the last ten batches); the
    momentum is back to PyTorch's after the epoch."""
    from torch import nn

    state = _checkpoint(trained[0])["model"]
    counts = {k: int(v) for k, v in state.items() if k.endswith("num_batches_tracked")}
    steps = FAST["steps_per_epoch"]
    assert len(counts) >= 10 and set(counts.values()) == {steps - steps // 2}
    net = torch.nn.Module()
    net.bn = nn.BatchNorm2d(3)
    net.bn(torch.randn(4, 3, 5, 5))
    training._average_batch_norm_from_here(net)
    batches = [torch.randn(4, 3, 5, 5) * (i + 1) + i for i in range(3)]
    for b in batches:
        net.bn(b)
    torch.testing.assert_close(net.bn.running_mean, torch.stack([b.mean((0, 2, 3)) for b in batches]).mean(0))
    training._average_batch_norm_from_here(net, training.BN_MOMENTUM)
    assert net.bn.momentum == nn.BatchNorm2d(3).momentum and int(net.bn.num_batches_tracked) == 3


def test_resume_continues_where_it_stopped(trained, dataset, tmp_path):
    out = tmp_path / "model.pt"

    def stop_after_epoch_1(fraction, message):  # an interruption: the checkpoint of epoch 1 is written
        return not message.startswith("epoch 1/2: training loss")

    with pytest.raises(DblurDoseError, match="cancelled"):
        training.train(dataset, out, **FAST, progress=stop_after_epoch_1)
    assert _checkpoint(out)["epoch"] == 1
    messages = []
    training.train(dataset, out, **FAST, progress=lambda f, m: messages.append(m))
    assert any("resuming after epoch 1" in m for m in messages)
    assert not any("epoch 1/2" in m for m in messages)  # epoch 1 is not trained again
    ckpt = _checkpoint(out)
    assert ckpt["epoch"] == 2 and [h["epoch"] for h in ckpt["history"]] == [0, 1, 2]
    steps = {int(s["step"]) for s in ckpt["optimizer"]["state"].values()}
    assert steps == {2 * FAST["steps_per_epoch"]}  # Adam's state carried over, not restarted
    # interrupted + resumed is the same run as the uninterrupted one
    reference = _checkpoint(trained[0])
    for name, value in reference["model"].items():
        torch.testing.assert_close(ckpt["model"][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_resume_refuses_other_settings(trained, dataset, tmp_path):
    out = tmp_path / "model.pt"
    training.train(dataset, out, **{**FAST, "epochs": 1, "steps_per_epoch": 1}, progress=lambda f, m: None)
    with pytest.raises(DblurDoseError, match="other settings.*variant.*without resuming"):
        training.train(dataset, out, **{**FAST, "steps_per_epoch": 1, "variant": "2d"}, progress=lambda f, m: None)


def test_validation_is_held_out_by_phantom(dataset):
    manifest = training.read_manifest(dataset)
    train_names, val_names = training.split_phantoms(manifest, seed=3)
    assert set(train_names).isdisjoint(val_names) and val_names
    assert "p00" not in train_names + val_names  # the 'test' split is never read
    assert sorted(train_names + val_names) == ["p01", "p02", "p03", "p04"]
    assert training.split_phantoms(manifest, seed=3) == (train_names, val_names)  # fixed by the seed
    nine = {"phantoms": {f"p{i:02d}": {"split": "train"} for i in range(9)}, "spacing": [1, 1, 1]}
    splits = {tuple(training.split_phantoms(nine, seed)[1]) for seed in range(10)}
    assert all(len(v) == 2 for v in splits) and len(splits) > 1  # 2 of 9, chosen by the seed


def test_batches_come_from_training_phantoms_only(dataset, tmp_path):
    from DblurDoseLib.learning.network import ModelConfig

    manifest = training.read_manifest(dataset)
    train_names, val_names = training.split_phantoms(manifest, seed=3)
    cases = training.load_cases(dataset, train_names, manifest, ModelConfig(spacing=SPACING), tmp_path)
    assert {c.phantom for c in cases} == set(train_names) and len(cases) == 2 * len(train_names)
    x, dvk, truth, w, reference, fwhm = training.sample_batch(cases, np.random.default_rng(0), 2, 4, 32)
    assert x.shape == (2, 2, 14, 32, 32) and dvk.shape == truth.shape == w.shape == (2, 1, 4, 32, 32)
    assert np.isin(w, np.float32([training.BODY_WEIGHT, training.OUTSIDE_WEIGHT])).all()
    # without deconvolved inputs the consistency step's reference is the input DVK; no resolution was measured
    assert np.array_equal(reference, dvk) and fwhm.shape == (2,) and np.isnan(fwhm).all()


def test_bad_data_folders_are_refused(tmp_path):
    with pytest.raises(DblurDoseError, match="no manifest.json.*dblurdose data generate"):
        training.train(tmp_path, tmp_path / "m.pt", device="cpu")
    root = make_dataset(tmp_path / "data", n_phantoms=2, shape=(12, 16, 16))
    (root / "p01" / "dvk_r1.nrrd").unlink()
    with pytest.raises(DblurDoseError, match="dvk_r1.nrrd is missing"):
        training.train(root, tmp_path / "m.pt", device="cpu", epochs=1)


def test_command_line_options(tmp_path):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    training.add_train_arguments(sub)
    args = parser.parse_args(["train", "--data", "D", "--out", "M.pt", "--epochs", "3", "--variant", "2d",
                              "--no-resume"])
    assert args.func is training.cmd_train
    assert (args.epochs, args.batch_size, args.variant, args.resume, args.amp) == (3, 32, "2d", False, True)
    # unset: train takes an --init model's options, else leaky and floored (checked on a trained model below)
    assert (args.relative_weight, args.decoder_activation, args.correction) == (1.0, None, None)
    v02 = parser.parse_args(["train", "--data", "D", "--out", "M.pt", "--relative-weight", "0",
                             "--decoder-activation", "relu", "--correction", "additive"])
    assert (v02.relative_weight, v02.decoder_activation, v02.correction) == (0.0, "relu", "additive")


def test_trained_model_has_the_new_architecture(trained):
    """`dblurdose train` makes LeakyReLU-decoder, floored-correction models by default (the fixture's loss falls)."""
    model = load_model(trained[0], device="cpu")
    assert (model.config.decoder_activation, model.config.correction) == ("leaky", "floored")
    assert _checkpoint(trained[0])["settings"]["relative_weight"] == training.RELATIVE_WEIGHT


def test_relative_term_counts_low_dose_tissue():
    """The weighted MSE hardly sees a 50% error in low-dose tissue next to a hot voxel; the relative
    term (relative to the DVK) counts it as much as the hot voxel's 50%. Weight 0: the MSE alone."""
    truth = torch.full((1, 1, 1, 10, 10), 0.1)  # low-dose tissue with one hot voxel, air in the last row
    truth[..., 0, 0] = 10.0
    truth[..., 9, :] = 0.0
    dvk = truth.clone()
    w = torch.where(truth > 0, training.BODY_WEIGHT, training.OUTSIDE_WEIGHT)
    hot, cold = truth.clone(), truth.clone()
    hot[..., 0, 0] = 15.0  # 50% too high in the hot voxel
    cold[..., 5, 5] = 0.15  # 50% too high in one low-dose tissue voxel
    mse = [float(training.training_loss(p, truth, w, dvk, relative_weight=0)) for p in (hot, cold)]
    assert mse[1] < 1e-3 * mse[0]
    assert mse[0] == pytest.approx(float((w * (hot - truth) ** 2).mean()))
    rel = [float(training.training_loss(p, truth, w, dvk, relative_weight=1)) - m for p, m in zip((hot, cold), mse)]
    assert rel[1] > 0.5 * rel[0] > 0
    with pytest.raises(DblurDoseError, match="relative-error weight"):
        training.train(Path("nowhere"), Path("m.pt"), relative_weight=-1)


def test_normalised_slabs_weigh_a_hot_slab_as_much_as_a_cold_one(dataset, tmp_path):
    """normalise_slabs: each slab's squared error over its DVK energy, averaged over slabs. The same 20% error
    costs the same in a slab through a 100:1 lesion as in one of plain tissue (the plain MSE: 1e4 times
    more); it is the per-slab ratio written out by hand; a run with it records it and resumes only with it."""
    rng = np.random.default_rng(0)
    cold = torch.from_numpy(rng.uniform(0.05, 0.2, (1, 1, 4, 8, 8)).astype(np.float32))
    truth = torch.cat([cold, 100 * cold])  # slab 0 plain tissue, slab 1 the same pattern 100x hotter
    dvk = 0.9 * truth
    w = torch.full_like(truth, training.BODY_WEIGHT)
    w[..., 0, :] = training.OUTSIDE_WEIGHT
    err_cold, err_hot = truth.clone(), truth.clone()
    err_cold[0] *= 1.2
    err_hot[1] *= 1.2
    plain = [float(training.training_loss(p, truth, w, dvk, 0.0)) for p in (err_cold, err_hot)]
    assert plain[1] == pytest.approx(1e4 * plain[0], rel=1e-3)
    norm = [float(training.training_loss(p, truth, w, dvk, 0.0, normalise_slabs=True)) for p in (err_cold, err_hot)]
    assert norm[1] == pytest.approx(norm[0], rel=1e-4)
    by_hand = float((w[0] * (0.2 * truth[0]) ** 2).sum() / (w[0] * dvk[0] ** 2).sum()) / 2
    assert norm[0] == pytest.approx(by_hand, rel=1e-5)
    air = torch.zeros_like(cold)  # a slab of air: its DVK energy is floored, not zero
    air_loss = float(training.training_loss(air + 0.01, air, torch.full_like(air, 0.3), air, 0.0, normalise_slabs=True))
    assert air_loss == pytest.approx(0.01 ** 2 / training.SLAB_FLOOR ** 2, rel=1e-4)
    out = tmp_path / "norm.pt"
    fast = {**FAST, "epochs": 1, "steps_per_epoch": 2}
    training.train(dataset, out, progress=lambda f, m: None, normalise_slabs=True, **fast)
    assert _checkpoint(out)["settings"]["normalise_slabs"] is True
    with pytest.raises(DblurDoseError, match="other settings.*normalise_slabs"):
        training.train(dataset, out, progress=lambda f, m: None, **fast)


def test_floor_leak_is_set_in_training_recorded_and_refused_where_it_means_nothing(dataset, tmp_path, monkeypatch):
    """train(floor_leak=g): the network trains with the leak (the value its correction sees), the run records
    it and resumes only with it; refused for the additive correction and outside 0-1, before reading data."""
    from DblurDoseLib.learning.network import DblurDoseNet

    seen = []
    plain_correct = DblurDoseNet.correct

    def correct(self, out, dvk):
        seen.append((self.training, self.floor_leak))
        return plain_correct(self, out, dvk)

    monkeypatch.setattr(DblurDoseNet, "correct", correct)
    out = tmp_path / "leak.pt"
    fast = {**FAST, "epochs": 1, "steps_per_epoch": 2}
    training.train(dataset, out, progress=lambda f, m: None, floor_leak=0.3, **fast)
    assert {leak for train_mode, leak in seen if train_mode} == {0.3}
    assert _checkpoint(out)["settings"]["floor_leak"] == 0.3
    with pytest.raises(DblurDoseError, match="other settings.*floor_leak"):
        training.train(dataset, out, progress=lambda f, m: None, **fast)
    with pytest.raises(DblurDoseError, match="needs the 'floored' correction, not 'additive'"):
        training.train(dataset, tmp_path / "a.pt", progress=lambda f, m: None, correction="additive",
                       floor_leak=0.3, **fast)
    with pytest.raises(DblurDoseError, match="not the 'no_residual' ablation"):
        training.train(dataset, tmp_path / "n.pt", progress=lambda f, m: None, variant="no_residual",
                       floor_leak=0.3, **fast)
    with pytest.raises(DblurDoseError, match="gradient leak must be between 0 and 1, got 1.5"):
        training.train(Path("nowhere"), Path("m.pt"), floor_leak=1.5)


def test_gradient_noise_of_a_hot_lesion_falls_with_normalised_slabs(trained, tmp_path):
    """gradient_noise on a data set where one phantom's lesions are 100x hotter: under the plain MSE the
    batches through them rule the gradient (its largest norm many times the median, a large share of
    the squared norms in a tenth of the batches, a larger noise scale); normalised slabs even it out."""
    data = make_dataset(tmp_path / "data")
    folder = data / "p01"
    hot = read_volume(folder / "mc_truth.nrrd").array
    hot = hot > 0.5 * hot.max()
    for name in ("mc_truth", "spect_r0", "spect_r1", "dvk_r0", "dvk_r1"):
        vol = read_volume(folder / f"{name}.nrrd")
        a = vol.array.copy()
        a[hot] *= 100
        write_volume(Volume(a, vol.spacing), folder / f"{name}.nrrd", overwrite=True)
    opts = dict(batches=16, batch_size=8, slab=4, patch=32)
    plain = validation.gradient_noise(trained[0], data, [1, 2, 3, 4], **opts)
    norm = validation.gradient_noise(trained[0], data, [1, 2, 3, 4], normalise_slabs=True, **opts)
    for r in (plain, norm):
        assert 0.1 <= r["top_decile_share"] <= 1 and r["grad_max"] >= r["grad_median"] > 0 and r["loss_max"] > 0
    assert plain["grad_max"] / plain["grad_median"] > 2 * norm["grad_max"] / norm["grad_median"]
    assert plain["top_decile_share"] > 1.5 * norm["top_decile_share"]
    assert plain["noise_scale"] > 3 * norm["noise_scale"]
    with pytest.raises(DblurDoseError, match="cannot measure on p42: not a complete phantom"):
        validation.gradient_noise(trained[0], data, [1, 42], **opts)
    with pytest.raises(DblurDoseError, match="at least 2 batches, got 1"):
        validation.gradient_noise(trained[0], data, [1], **{**opts, "batches": 1})


@pytest.mark.slow
def test_distributed_data_parallel_on_two_cpu_processes(dataset, tmp_path):
    """torchrun with 2 processes (gloo on the CPU): trains, and only rank 0 writes files and prints."""
    import os
    import subprocess
    import sys

    script = tmp_path / "run.py"
    out = tmp_path / "ddp" / "model.pt"
    script.write_text(
        "from DblurDoseLib.learning.training import train\n"
        f"train({str(dataset)!r}, {str(out)!r}, epochs=1, batch_size=8, patch=32, slab=4, steps_per_epoch=2, "
        "device='cpu')\n"
    )
    root = str(Path(training.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("epoch 1/1:") == 1  # rank 0 reports, rank 1 is silent
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.last.pt", "model.loss.png", "model.pt",
                                                            "model.pt.ckpt"]
    assert load_model(out, device="cpu").config.info["epoch"] == 1


def test_one_cycle_schedule_warms_up_and_decays_and_its_length_is_fixed(trained, dataset, tmp_path):
    history = _checkpoint(trained[0])["history"]
    lrs = [h["lr"] for h in history[1:]]
    assert lrs[-1] < lrs[0] < FAST.get("lr", 1e-3)  # after the warm-up, decaying towards the end
    out = tmp_path / "model.pt"
    training.train(dataset, out, **{**FAST, "epochs": 1}, progress=lambda f, m: None)
    with pytest.raises(DblurDoseError, match="other settings.*epochs"):  # a one-cycle run cannot be stretched
        training.train(dataset, out, **FAST, progress=lambda f, m: None)
    plateau = tmp_path / "plateau.pt"
    training.train(dataset, plateau, **{**FAST, "schedule": "plateau"}, progress=lambda f, m: None)
    assert {h["lr"] for h in _checkpoint(plateau)["history"]} == {FAST.get("lr", 1e-3)}
    with pytest.raises(DblurDoseError, match="schedule"):
        training.train(dataset, out, **{**FAST, "schedule": "cosine"}, progress=lambda f, m: None)


def test_hot_patches_centre_on_the_hottest_voxels(dataset, tmp_path):
    """--hot-fraction 0.9: 9 patches in 10 centred on the top 2% of the body's true dose rate."""
    from DblurDoseLib.learning.network import ModelConfig

    manifest = training.read_manifest(dataset)
    train_names, _ = training.split_phantoms(manifest, seed=3)
    cases = training.load_cases(dataset, train_names, manifest, ModelConfig(spacing=SPACING), tmp_path)
    c = cases[0]
    body_truth = np.asarray(c.truth).reshape(-1)[c.tissue]
    assert c.hot.size and np.asarray(c.truth).reshape(-1)[c.hot].min() >= np.quantile(body_truth, 0.97)
    patch, slab = 8, 2

    def centre_dose(fraction):
        truth = training.sample_batch(cases[:1], np.random.default_rng(1), 200, slab, patch, fraction).truth
        return float(np.mean(truth[:, 0, slab // 2, patch // 2, patch // 2]))

    assert centre_dose(0.9) > 2 * centre_dose(0.0)
    with pytest.raises(DblurDoseError, match="hot voxels"):
        training.train(dataset, tmp_path / "m.pt", **{**FAST, "hot_fraction": 0.95}, progress=lambda f, m: None)


def test_label_decays_picks_the_partial_label_or_refuses_a_missing_one(tmp_path):
    root = make_dataset(tmp_path / "data", n_phantoms=3, shape=(12, 32, 32))
    for folder in root.glob("p0*"):
        truth = read_volume(folder / "mc_truth.nrrd")
        write_volume(truth.with_array(truth.array * np.float32(0.5)), folder / "mc_truth_d1000.nrrd")
    (root / "p00" / "mc_truth_d2000.nrrd").write_bytes((root / "p00" / "mc_truth_d1000.nrrd").read_bytes())  # test split
    manifest = training.read_manifest(root)
    names, _ = training.split_phantoms(manifest, seed=3)
    assert training.label_file(root, names) == "mc_truth.nrrd"
    assert training.label_file(root, names, 1000) == "mc_truth_d1000.nrrd"
    out = tmp_path / "m.pt"
    run = {**FAST, "epochs": 1, "steps_per_epoch": 1}
    training.train(root, out, **run, label_decays=1000, progress=lambda f, m: None)
    assert _checkpoint(out)["settings"]["label_decays"] == 1000
    cached = {p.name for p in (root / ".cache").rglob("*.npy")}
    assert "mc_truth_d1000.npy" in cached  # trained on the partial label, validated on the full one
    with pytest.raises(DblurDoseError, match=r"no label of 2000 decays \(available: 1000\)"):  # training phantoms lack it
        training.train(root, tmp_path / "n.pt", **run, label_decays=2000, progress=lambda f, m: None)
    parser = argparse.ArgumentParser()
    training.add_train_arguments(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--data", "D", "--out", "M.pt", "--label-decays", "1000"])
    assert args.label_decays == 1000
    assert parser.parse_args(["train", "--data", "D", "--out", "M.pt"]).label_decays is None


def test_sigterm_stops_training_within_seconds_and_it_resumes(dataset, tmp_path):
    """SIGTERM during `dblurdose train`: exit 143 within seconds, nothing half-written next to the model,
    the last checkpoint whole, and the same command resumes after it and finishes."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run" / "model.pt"
    command = [sys.executable, "-m", "DblurDoseLib.cli", "train", "--data", str(dataset), "--out", str(out),
               "--epochs", "3", "--batch-size", "8", "--patch", "32", "--slab", "4", "--steps-per-epoch", "6",
               "--seed", "3", "--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = training.checkpoint_path(out)
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    assert ckpt.exists(), process.communicate()
    process.send_signal(signal.SIGTERM)  # during epoch 2 (or while epoch 1's files are written)
    t0 = time.time()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143 and time.time() - t0 < 30, err
    assert "run the same command to resume" in err and "Traceback" not in err
    assert not [p.name for p in out.parent.iterdir() if ".part" in p.name]  # no half-written file
    stopped_at = _checkpoint(out)["epoch"]  # readable, whole
    assert 1 <= stopped_at <= 3
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    finished = _checkpoint(out)
    assert finished["epoch"] == 3 and [h["epoch"] for h in finished["history"]] == [0, 1, 2, 3]
    if stopped_at < 3:
        assert f"resuming after epoch {stopped_at}" in done.stdout + done.stderr
    load_model(out, device="cpu")  # the model file is whole and its checksum verifies


def test_atomic_file_leaves_the_old_file_and_no_part_when_interrupted(tmp_path):
    from DblurDoseLib.io.outputs import atomic_file

    path = tmp_path / "model.pt"
    path.write_text("old")
    for interruption in (KeyboardInterrupt, DblurDoseError):
        with pytest.raises(interruption), atomic_file(path) as tmp:
            tmp.write_text("half")
            raise interruption("stop")
        assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    with atomic_file(path) as tmp:
        tmp.write_text("new")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_chosen_phantoms_train_and_validate_and_wrong_ones_are_refused():
    """A run on chosen phantoms (learning curves against data size; a run that keeps resuming while the data
    set grows): only those are read, the validation phantoms exclude them, and a phantom outside the
    training split is refused with the ones there are."""
    manifest = {"phantoms": {f"p0{i}": {"split": s} for i, s in enumerate(["test", "train", "train", "train", "val"])}}
    train, val = training.split_phantoms(manifest, seed=0)
    assert (train, val) == (["p01", "p02", "p03"], ["p04"])
    assert training.choose_phantoms(manifest, train, val, [1, 3], None) == (["p01", "p03"], ["p04"])
    assert training.choose_phantoms(manifest, train, val, [1], [2]) == (["p01"], ["p02"])
    with pytest.raises(DblurDoseError, match="p00 as training phantoms.*are p01, p02, p03; choose among them"):
        training.choose_phantoms(manifest, train, val, [0, 1], None)
    with pytest.raises(DblurDoseError, match="p01 as validation phantoms"):
        training.choose_phantoms(manifest, train, val, [1], [1])
    with pytest.raises(DblurDoseError, match="p07 as validation"):
        training.choose_phantoms(manifest, train, val, None, [7])
    # without a "val" split the seed draws validation phantoms from "train": named ones may still train
    no_val = {"phantoms": {k: {"split": "train" if v["split"] == "val" else v["split"]}
                           for k, v in manifest["phantoms"].items()}}
    train, val = training.split_phantoms(no_val, seed=0)
    drawn = int(val[0][1:])
    everything = [i for i in range(1, 5) if i != drawn]
    assert training.choose_phantoms(no_val, train, val, [drawn, everything[0]], [everything[1]]) == (
        sorted([f"p0{drawn}", f"p0{everything[0]}"]), [f"p0{everything[1]}"])
    with pytest.raises(DblurDoseError, match="p00 as training phantoms"):
        training.choose_phantoms(no_val, train, val, [0, drawn], None)


def test_training_on_chosen_phantoms_records_them(dataset, tmp_path):
    from DblurDoseLib.learning.network import load_model_file

    out = tmp_path / "two.pt"
    training.train(dataset, out, progress=lambda f, m: None, phantoms=[1, 2], **{**FAST, "epochs": 1})
    info = load_model_file(out).config.info
    assert info["train_phantoms"] == ["p01", "p02"] and "p01" not in info["val_phantoms"]


def test_extra_data_sets_join_the_training_and_are_recorded_or_refused(dataset, tmp_path, monkeypatch):
    """--extra-data: every training phantom of another data set joins the training volumes (validation stays on
    the main set); a set of other voxels, or without training phantoms, is refused."""
    from DblurDoseLib.learning.network import load_model_file

    extra = make_dataset(tmp_path / "extra", n_phantoms=3, n_test=1, seed=5)
    seen = []
    real = training.load_cases
    monkeypatch.setattr(training, "load_cases", lambda d, names, *a, **k: seen.append((Path(d), names)) or real(d, names, *a, **k))
    out = tmp_path / "with_extra.pt"
    training.train(dataset, out, progress=lambda f, m: None, extra_data=[extra], **{**FAST, "epochs": 1})
    info = load_model_file(out).config.info
    assert info["extra_data"] == [{"data": str(extra.resolve()), "phantoms": ["p01", "p02"]}]
    assert (extra, ["p01", "p02"]) in seen and not any(d == extra and "p00" in n for d, n in seen)
    with pytest.raises(DblurDoseError, match="other settings.*extra_data"):  # it resumes only with its extra data
        training.train(dataset, out, progress=lambda f, m: None, **{**FAST, "epochs": 1})
    for twice in ([dataset], [extra, extra]):
        with pytest.raises(DblurDoseError, match="name each extra data set once"):
            training.train(dataset, tmp_path / "z.pt", progress=lambda f, m: None, extra_data=twice, **FAST)
    manifest = json.loads((extra / "manifest.json").read_text())
    (extra / "manifest.json").write_text(json.dumps({**manifest, "spacing": [2.0, 2.0, 3.0]}))
    with pytest.raises(DblurDoseError, match="same preset"):
        training.train(dataset, tmp_path / "x.pt", progress=lambda f, m: None, extra_data=[extra], **FAST)
    only_test = {k: {**v, "split": "test"} for k, v in manifest["phantoms"].items()}
    (extra / "manifest.json").write_text(json.dumps({**manifest, "phantoms": only_test}))
    with pytest.raises(DblurDoseError, match="no training phantom"):
        training.train(dataset, tmp_path / "y.pt", progress=lambda f, m: None, extra_data=[extra], **FAST)


def test_fine_tuning_starts_from_the_given_weights_and_refuses_another_network(trained, dataset, tmp_path):
    """--init: the run starts where the model file ends (its validation loss before the first step is the
    file's), takes the file's architecture options, records the file's checksum; a model of another
    network is refused before any work."""
    from DblurDoseLib.learning.network import load_model_file

    start, _ = trained
    base = load_model_file(start)
    assert (base.config.decoder_activation, base.config.correction) == ("leaky", "floored")  # the defaults
    out = tmp_path / "tuned.pt"
    training.train(dataset, out, progress=lambda f, m: None, init=start, **{**FAST, "epochs": 1})
    history = _checkpoint(out)["history"]
    before = validation.validation_loss(start, dataset, seed=FAST["seed"], batch_size=FAST["batch_size"],
                                      slab=FAST["slab"], patch=FAST["patch"])
    assert history[0]["val_mse"] == pytest.approx(before, rel=1e-4)  # not a fresh random network
    tuned = load_model_file(out)
    assert tuned.config.info["init_sha256"] == base.sha256
    assert (tuned.config.decoder_activation, tuned.config.correction) == (base.config.decoder_activation,
                                                                          base.config.correction)
    with pytest.raises(DblurDoseError, match="cannot start training from .*correction 'floored' \\(asked: 'ratio'; "
                                             "only 'additive' and 'floored' share"):
        training.train(dataset, tmp_path / "no.pt", init=start, correction="ratio", **FAST)
    assert not (tmp_path / "no.pt").exists()
    (tmp_path / "junk.pt").write_text("not a model")
    for bad, why in ((tmp_path / "none.pt", "no such file"), (tmp_path / "junk.pt", "unreadable or corrupted")):
        with pytest.raises(DblurDoseError, match=f"cannot start training from .*: .*{why}.*; name a model file") as exc:
            training.train(dataset, tmp_path / "no.pt", init=bad, **FAST)
        assert exc.value.settings == ()  # no pointer to the dose commands' model setting


def test_fine_tuning_moves_weights_to_another_decoder_and_between_additive_and_floored(dataset, tmp_path):
    """--init with --decoder-activation leaky --correction floored on an additive ReLU model (v0.2's network):
    the run starts from exactly that model's weights read through the new options (its first validation
    loss is that of those weights in the new network, written by hand here)."""
    from DblurDoseLib.learning.network import DblurDoseNet, load_model_file, save_model

    fast = {**FAST, "epochs": 1}
    additive = tmp_path / "additive.pt"
    training.train(dataset, additive, progress=lambda f, m: None, decoder_activation="relu", correction="additive",
                   **fast)
    base = load_model_file(additive)
    moved = DblurDoseNet(replace(base.config, decoder_activation="leaky", correction="floored", info={}))
    moved.load_state_dict(base.state_dict())
    by_hand = save_model(moved, tmp_path / "by_hand.pt")
    expected = validation.validation_loss(by_hand, dataset, seed=FAST["seed"], batch_size=FAST["batch_size"],
                                        slab=FAST["slab"], patch=FAST["patch"])
    assert expected != pytest.approx(validation.validation_loss(additive, dataset, seed=FAST["seed"],
                                                              batch_size=FAST["batch_size"], slab=FAST["slab"],
                                                              patch=FAST["patch"]), rel=1e-6)  # the options act
    out = tmp_path / "floored.pt"
    training.train(dataset, out, progress=lambda f, m: None, init=additive, decoder_activation="leaky",
                   correction="floored", **fast)
    assert _checkpoint(out)["history"][0]["val_mse"] == pytest.approx(expected, rel=1e-4)
    tuned = load_model_file(out)
    assert (tuned.config.decoder_activation, tuned.config.correction) == ("leaky", "floored")
    assert tuned.config.info["init_sha256"] == base.sha256


def test_frozen_batch_norms_keep_their_statistics_while_the_weights_train(trained, dataset, tmp_path):
    """--freeze-batch-norm-from 1 with --init: every batch norm keeps the start model's running statistics
    (training normalises with them, as inference does) while the convolutions and the norms' own scale
    and shift still learn; the setting is part of resuming; 0 is refused."""
    from DblurDoseLib.learning.network import load_model_file

    start, _ = trained
    out = tmp_path / "frozen.pt"
    training.train(dataset, out, progress=lambda f, m: None, init=start, freeze_batch_norm_from=1,
                   **{**FAST, "epochs": 1})
    before, after = load_model_file(start).state_dict(), _checkpoint(out)["model"]
    stats = [k for k in before if k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")]
    assert len(stats) >= 30
    for k in stats:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0, msg=k)
    learned = [k for k in before if k not in stats and not torch.equal(after[k], before[k])]
    assert any(k.endswith("conv.weight") or ".0.weight" in k for k in learned)
    assert any(k.endswith(".1.weight") for k in learned)  # a batch norm's scale (DoubleConv: conv, BN, act)
    with pytest.raises(DblurDoseError, match="other settings.*freeze_batch_norm_from"):
        training.train(dataset, out, progress=lambda f, m: None, init=start, **{**FAST, "epochs": 1})
    with pytest.raises(DblurDoseError, match="first epoch with frozen batch norms must be at least 1, got 0"):
        training.train(dataset, tmp_path / "no.pt", freeze_batch_norm_from=0, **FAST)
    with pytest.raises(DblurDoseError, match=r"frozen batch norms \(3\) is after the last \(2\); choose an epoch"):
        training.train(dataset, tmp_path / "no.pt", freeze_batch_norm_from=3, **FAST)


def test_validation_loss_on_chosen_phantoms_and_with_batch_statistics(trained, dataset):
    """validation_loss measures a model on any complete phantom (here one it trained on) and, asked, with
    each batch's own statistics as in training: a different number from the running statistics' for a
    trained network (the gap that frozen batch norms close), the same for the DVK (no batch norm acts)."""
    model, _ = trained
    opts = dict(seed=FAST["seed"], batch_size=FAST["batch_size"], slab=FAST["slab"], patch=FAST["patch"])
    manifest = training.read_manifest(dataset)
    trained_on = int(training.split_phantoms(manifest, FAST["seed"])[0][0][1:])
    on_val = validation.validation_loss(model, dataset, **opts)
    on_train = validation.validation_loss(model, dataset, **opts, phantoms=[trained_on])
    batch_stats = validation.validation_loss(model, dataset, **opts, phantoms=[trained_on], batch_statistics=True)
    assert np.isfinite([on_val, on_train, batch_stats]).all()
    assert on_train != pytest.approx(on_val, rel=1e-4) and batch_stats != pytest.approx(on_train, rel=1e-4)
    assert validation.validation_loss("dvk", dataset, **opts, phantoms=[trained_on], batch_statistics=True) == \
        pytest.approx(validation.validation_loss("dvk", dataset, **opts, phantoms=[trained_on]), rel=1e-6)
    with pytest.raises(DblurDoseError, match="cannot measure on p42: not a complete phantom of .*; choose among p00"):
        validation.validation_loss(model, dataset, **opts, phantoms=[42])


def test_validate_command_compares_models_over_seeds_and_phantom_sets(trained, dataset, capsys):
    """`dblurdose validate` prints, per model and phantom set, the mean of validation_loss over the seeds
    and its standard error, one column per phantom set: the trained model beats the DVK on its own training
    phantoms; bad options get one line."""
    from DblurDoseLib.cli import main

    out, _ = trained
    last = training.last_model_path(out)
    opts = dict(batch_size=FAST["batch_size"], slab=FAST["slab"], patch=FAST["patch"])
    trained_on = [int(p[1:]) for p in load_model(out, device="cpu").config.info["train_phantoms"]][:2]
    pool = ",".join(str(i) for i in trained_on)
    argv = ["validate", "--data", str(dataset), "--model", "dvk", str(last), "--phantoms", pool, "--phantoms",
            str(trained_on[0]), "--seeds", "2", "--batch-size", "8", "--slab", "4", "--patch", "32"]
    assert main(argv) == 0
    rows = {}
    for line in capsys.readouterr().out.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] in ("dvk", str(last)):
            rows[cells[0]] = [tuple(float(v) for v in c.replace("(x", "+-").rstrip(")").split("+-"))
                              for c in cells[1:]]
    assert set(rows) == {"dvk", str(last)}
    dvk_seeds = [validation.validation_loss("dvk", dataset, seed=s, phantoms=trained_on, **opts) for s in (0, 1)]
    for model, ((pooled, se, *ratio), (single, *_)) in rows.items():
        seeds = [validation.validation_loss(model, dataset, seed=s, phantoms=trained_on, **opts) for s in (0, 1)]
        assert pooled == pytest.approx(np.mean(seeds), abs=6e-5)
        assert se == pytest.approx(np.std(seeds, ddof=1) / np.sqrt(2), abs=6e-5) and se > 0
        if model != "dvk":  # the paired ratio to the first model (the DVK) on the same batches
            r = np.divide(seeds, dvk_seeds)
            assert ratio == pytest.approx([r.mean(), r.std(ddof=1) / np.sqrt(2)], abs=6e-4)
        assert single == pytest.approx(np.mean([validation.validation_loss(model, dataset, seed=s,
                                                                           phantoms=trained_on[:1], **opts)
                                                for s in (0, 1)]), abs=6e-5)
    assert rows[str(last)][0][0] < 0.9 * rows["dvk"][0][0]
    for bad, message in ((["--seeds", "0"], "number of seeds must be at least 1"),
                         (["--patch", "40"], "patch must be a multiple of 16"),
                         (["--phantoms", "42"], "cannot measure on p42")):
        assert main(argv[:5] + bad) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    assert main(["validate", "--data", str(dataset), "--model", str(out.with_name("none.pt"))]) == 2
    assert "weights not found" in capsys.readouterr().err
    assert main(["validate", "--data", str(dataset), "--model", str(training.checkpoint_path(out))]) == 2
    assert "is a training checkpoint, not a model file; use" in capsys.readouterr().err


def test_cpu_bf16_trains_in_bfloat16_and_validates_and_saves_in_float32(dataset, tmp_path):
    """`train --cpu-bf16`: the training forward pass convolves in bfloat16 (autocast), validation in float32
    (so that validation losses compare with float32 runs), and the model file holds float32 weights; recorded."""
    from torch import nn

    from DblurDoseLib.learning.network import load_model_file

    seen = []

    def hook(module, inputs, output):
        if isinstance(module, (nn.Conv2d, nn.Conv3d)):
            seen.append((torch.is_grad_enabled(), output.dtype))

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        out = tmp_path / "bf16.pt"
        training.train(dataset, out, **{**FAST, "epochs": 1}, cpu_bf16=True, progress=lambda f, m: None)
    finally:
        handle.remove()
    assert {dtype for grad, dtype in seen if grad} == {torch.bfloat16}
    assert {dtype for grad, dtype in seen if not grad} == {torch.float32}
    history = _checkpoint(out)["history"]
    assert np.isfinite(history[-1]["train_loss"]) and np.isfinite(history[-1]["val_mse"])
    model = load_model_file(out)
    assert model.config.info["cpu_bf16"] is True
    assert all(t.dtype == torch.float32 for t in model.state_dict().values() if t.is_floating_point())


@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")), reason="torch.compile on the CPU "
                    "needs a C++ compiler")
def test_compiled_training_step_trains_as_the_eager_one(dataset, tmp_path):
    """`train --compile`: the step that torch.compile builds is used (graphs compiled) and trains as the eager
    step does: the same losses, epoch by epoch, to float32 rounding (the same batches, seed and updates)."""
    import torch._dynamo

    from DblurDoseLib.learning.network import load_model_file

    opts = {**FAST, "epochs": 1, "patch": 16, "slab": 2, "steps_per_epoch": 4}
    eager = training.train(dataset, tmp_path / "eager.pt", **opts, progress=lambda f, m: None)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = training.train(dataset, tmp_path / "compiled.pt", **opts, compile_step=True,
                              progress=lambda f, m: None)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1
    torch._dynamo.reset()
    h_eager, h_comp = _checkpoint(eager)["history"], _checkpoint(compiled)["history"]
    for a, b in zip(h_eager[1:], h_comp[1:], strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3)
        assert b["val_mse"] == pytest.approx(a["val_mse"], rel=1e-3)
    assert load_model_file(compiled).config.info["compile_step"] is True
    assert load_model_file(eager).config.info["compile_step"] is False


def test_a_deconvolving_network_trains_and_validates_on_the_deconvolved_inputs(dataset, tmp_path):
    """train(deconvolve=N) reads the data set's spect_rlN / dvk_rlN files and records N in the model; validate
    measures the "dvk_rlN" base and such a model on those files, not on the plain ones of a "dvk" beside them
    (stand-in files here: a base equal to the label, so its loss is zero where the DVK's is not)."""
    from DblurDoseLib.io import dataset as layout

    data = tmp_path / "data"
    shutil.copytree(dataset, data, ignore=shutil.ignore_patterns(".cache"))
    manifest = training.read_manifest(data)
    for key, entry in manifest["phantoms"].items():
        truth = read_volume(data / key / "mc_truth.nrrd")
        for r in range(entry["realisations"]):
            shutil.copy(data / key / f"spect_r{r}.nrrd", data / key / layout.deconvolved_file("spect", 3, r))
            write_volume(truth, data / key / layout.deconvolved_file("dvk", 3, r))
    out = training.train(data, tmp_path / "sharp.pt", progress=lambda f, m: None, deconvolve=3,
                         **{**FAST, "epochs": 1})
    assert load_model(out, device="cpu").config.deconvolution_iterations == 3
    opts = dict(batch_size=FAST["batch_size"], slab=FAST["slab"], patch=FAST["patch"], seeds=1)
    losses = validation.compare_models(["dvk", "dvk_rl3", str(out)], data, **opts)
    dvk, base, model = (losses[k][0][0] for k in ("dvk", "dvk_rl3", str(out)))
    assert base == pytest.approx(0.0, abs=1e-9) and dvk > 1e-3
    assert model == pytest.approx(validation.validation_loss(out, data, seed=0, **{k: v for k, v in opts.items()
                                                                                  if k != "seeds"}), rel=1e-5)


def test_an_extra_data_set_never_trains_on_a_patient_that_judges_the_network(tmp_path, monkeypatch):
    """A training phantom of an extra data set that is the same virtual patient (seed and family) as a
    validation or test phantom of the training data set, made or only planned, is refused; one of another
    index, or of another family with the same seed, joins."""
    from DblurDoseLib import data
    from DblurDoseLib.io import dataset as layout

    settings = data.DataSettings(phantoms=[0, 1, 2, 3], n_test=1, n_val=1, held_out=[5])
    main = {"plan": settings.plan(), "phantoms": {}, "spacing": list(SPACING)}
    split = settings.split()
    judged = layout.virtual_patients(main)
    assert sorted(judged.values()) == sorted(f"p{i:02d}" for i, s in split.items() if s in ("val", "test"))
    assert (settings.phantom_seed(5), "shapes") in judged  # planned, not made yet
    old = {"phantoms": {"p03": {"seed": 7, "split": "test"}, "p04": {"seed": 8}}}  # a manifest without a plan
    assert layout.virtual_patients(old) == {(7, "anatomical"): "p03"}
    test = next(i for i, s in split.items() if s == "test" and i != 5)

    def extra_set(name, families):  # index -> family of its training phantoms, drawn with the main set's seed
        extra = tmp_path / name
        extra.mkdir()
        kw = {"phantoms": [i for i, f in families.items() if f == "anatomical"],
              "shapes": [i for i, f in families.items() if f == "shapes"]}
        other = data.DataSettings(n_test=0, **kw)
        entries = {f"p{i:02d}": {**data.phantom_draws(other, i, "train"), "index": i} for i in families}
        (extra / "manifest.json").write_text(json.dumps({"phantoms": entries, "spacing": list(SPACING)}))
        return extra

    monkeypatch.setattr(training, "load_cases", lambda *a, **k: [])
    for families, leaked in (({5: "shapes", 6: "shapes"}, "p05"), ({test: "anatomical"}, f"p{test:02d}")):
        with pytest.raises(DblurDoseError, match=f"training phantom {leaked} is the same virtual patient.*{leaked}"):
            training._extra_cases([extra_set(f"leak{leaked}", families)], tmp_path / "main", main, None,
                                  tmp_path / "m.pt")
    fine = extra_set("fine", {6: "shapes", test: "shapes"})  # the test patient's seed, another family's generator
    (_, names, _), = training._extra_cases([fine], tmp_path / "main", main, None, tmp_path / "m.pt")
    assert names == sorted(["p06", f"p{test:02d}"])
