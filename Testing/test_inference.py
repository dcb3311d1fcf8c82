"""CNN inference over whole volumes: equals the naive per-pack evaluation, scales with activity, grids."""

import numpy as np
import pytest
import torch
from test_network import random_model

from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.io.volume import Volume
from DblurDoseLib.learning import inference
from DblurDoseLib.learning.inference import cnn_dose_rate, load_model, predict_scaled, working_grid
from DblurDoseLib.learning.network import VARIANTS, ModelConfig


def scaled_inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    spect = (rng.random(shape, dtype=np.float32) * 3).astype(np.float32)
    density = (rng.random(shape, dtype=np.float32) * 1.4).astype(np.float32)  # some voxels below 0.1 (air)
    dvk = (rng.random(shape, dtype=np.float32) * 2).astype(np.float32)
    return spect, density, dvk


def positive_model(variant):
    """A random model whose outputs are mostly positive, so the clamp at 0 hides little."""
    model = random_model(variant, seed=1)
    model.unet.out.bias.data.fill_(3.0)
    return model


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", [(13, 40, 36), (4, 40, 36), (1, 17, 20)])  # odd sizes, fewer than 11 slices
def test_fast_path_equals_naive_per_pack(variant, shape):
    model = positive_model(variant)
    spect, density, dvk = scaled_inputs(shape)
    naive = predict_scaled(model, spect, density, dvk, "cpu", naive=True)
    fast = predict_scaled(model, spect, density, dvk, "cpu")
    chunked = predict_scaled(model, spect, density, dvk, "cpu", max_bytes=1)  # one slice per chunk
    assert (naive > 0).mean() > 0.5  # most voxels survive the clamp and the air mask
    np.testing.assert_allclose(fast, naive, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(chunked, naive, rtol=1e-5, atol=1e-5)


def test_naive_path_replicates_end_slices():
    """The naive reference itself: pack k reads slices k-5..k+5 clamped to the volume."""
    model = positive_model("dblurdose")
    spect, density, dvk = scaled_inputs((3, 16, 16))
    out = predict_scaled(model, spect, density, dvk, "cpu", naive=True)
    rows = np.clip(np.arange(-5, 6), 0, 2)  # output slice 0
    x = torch.from_numpy(np.stack([spect[rows], density[rows]]))[None]
    with torch.no_grad():
        ref = model(x, torch.from_numpy(dvk[0])[None, None])[0, 0].clamp_min(0).numpy()
    ref[density[0] < 0.1] = 0
    np.testing.assert_allclose(out[0], ref, rtol=1e-6, atol=1e-6)


def ct_case(shape=(12, 24, 28), spacing=(4.0, 4.0, 6.0), seed=0):
    rng = np.random.default_rng(seed)
    ct = Volume(np.zeros(shape, np.float32), spacing, (-40.0, -50.0, 10.0))
    density = np.full(shape, 1.0, np.float32)
    density[:, :3] = 0.001  # air rows
    density[:, 10:14, 5:9] = 0.3  # lung
    act = rng.gamma(2.0, 5e3, shape).astype(np.float32)
    act[:, :3] = 0
    dvk = (act * 1e-4 / np.maximum(density, 0.1) * (density >= 0.1)).astype(np.float32)
    return ct, ct.with_array(act), density, dvk


def test_output_scales_exactly_with_activity():
    model = positive_model("dblurdose")
    model.config = ModelConfig(spacing=(4.0, 4.0, 6.0))
    ct, act, density, dvk = ct_case()
    one = cnn_dose_rate(act, ct, density, dvk, "cpu", model=model)
    ten = cnn_dose_rate(act.with_array(act.array * 10), ct, density, dvk * 10, "cpu", model=model)
    assert one.same_grid(ct) and one.metadata["units"] == "mGy/h"
    assert float(one.array.max()) > 0
    np.testing.assert_allclose(ten.array, 10 * one.array, rtol=2e-5, atol=1e-6 * float(one.array.max()))


def test_zero_spect_gives_zero_dose():
    model = positive_model("dblurdose")
    model.config = ModelConfig(spacing=(4.0, 4.0, 6.0))
    ct, act, density, dvk = ct_case()
    out = cnn_dose_rate(act.with_array(np.zeros(ct.shape, np.float32)), ct, density, np.zeros_like(dvk), "cpu",
                        model=model)
    assert out.shape == ct.shape and not out.array.any()


def test_air_is_zero_and_nothing_negative():
    model = random_model("dblurdose")  # unshifted: many negative raw outputs
    model.config = ModelConfig(spacing=(4.0, 4.0, 6.0))
    ct, act, density, dvk = ct_case()
    out = cnn_dose_rate(act, ct, density, dvk, "cpu", model=model).array
    assert out.min() >= 0 and not out[density < 0.1].any()


def test_same_grid_needs_no_resampling(monkeypatch):
    from DblurDoseLib.geometry import resample

    def refuse(*args, **kwargs):
        raise AssertionError("resampled although the CT grid is the working grid")

    monkeypatch.setattr(resample, "resample_activity", refuse)
    monkeypatch.setattr(resample, "resample_linear", refuse)
    model = positive_model("dblurdose")
    model.config = ModelConfig(spacing=(4.05, 4.0, 5.95))  # within 2%: the CT grid is used as it is
    ct, act, density, dvk = ct_case()
    assert cnn_dose_rate(act, ct, density, dvk, "cpu", model=model).shape == ct.shape


def test_other_voxel_size_goes_through_the_working_grid(monkeypatch):
    model = positive_model("dblurdose")
    model.config = ModelConfig(spacing=(8.0, 8.0, 12.0))
    ct, act, density, dvk = ct_case()
    work = working_grid(ct, model.config.spacing)
    assert work.shape == (6, 12, 14) and work.spacing == (8.0, 8.0, 12.0)
    # the working grid covers the CT field edge to edge
    np.testing.assert_allclose(work.physical_corners().min(0), ct.physical_corners().min(0), atol=1e-9)
    np.testing.assert_allclose(work.physical_corners().max(0), ct.physical_corners().max(0), atol=1e-9)
    seen = []
    real = inference.predict_scaled
    monkeypatch.setattr(inference, "predict_scaled", lambda m, s, *a, **k: seen.append(s.shape) or real(m, s, *a, **k))
    one = cnn_dose_rate(act, ct, density, dvk, "cpu", model=model)
    ten = cnn_dose_rate(act.with_array(act.array * 10), ct, density, dvk * 10, "cpu", model=model)
    assert seen[0] == work.shape  # the network ran on the working grid
    assert one.same_grid(ct) and np.isfinite(one.array).all()
    assert one.array.min() >= 0 and not one.array[density < 0.1].any() and one.array.max() > 0
    np.testing.assert_allclose(ten.array, 10 * one.array, rtol=2e-5, atol=1e-6 * float(one.array.max()))


def test_working_grid_moves_only_the_correction():
    """A residual network that corrects nothing returns the CT-grid DVK itself, detail kept."""
    from DblurDoseLib.learning.network import DblurDoseNet, zero_correction

    model = zero_correction(DblurDoseNet(ModelConfig(spacing=(8.0, 8.0, 12.0)))).eval()
    ct, act, density, dvk = ct_case()
    out = cnn_dose_rate(act, ct, density, dvk, "cpu", model=model).array
    expected = np.where(density < 0.1, 0, np.maximum(dvk, 0))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6 * float(np.abs(dvk).max()))


def test_missing_weights_name_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(inference, "DEFAULT_MODEL_PATH", tmp_path / "none.pt")
    assert not inference.weights_installed()
    with pytest.raises(DblurDoseError, match="no trained DblurDoseNet weights are installed.*DVK method"):
        load_model()
    ct, act, density, dvk = ct_case()
    with pytest.raises(DblurDoseError, match="no trained DblurDoseNet weights"):
        cnn_dose_rate(act, ct, density, dvk, "cpu")


def test_bad_inputs_are_refused():
    model = positive_model("dblurdose")
    ct, act, density, dvk = ct_case()
    with pytest.raises(DblurDoseError, match="on the CT grid"):
        cnn_dose_rate(act, ct, density[:-1], dvk, "cpu", model=model)
    spect, rho, dv = scaled_inputs((3, 16, 16))
    with pytest.raises(DblurDoseError, match="GPUs only"):
        predict_scaled(model, spect, rho, dv, "cpu", precision="bf16")
    with pytest.raises(DblurDoseError, match="unknown precision"):
        predict_scaled(model, spect, rho, dv, "cpu", precision="int8")


def test_device_auto_and_progress():
    model = positive_model("dblurdose")
    spect, density, dvk = scaled_inputs((5, 16, 16))
    calls = []
    out = predict_scaled(model, spect, density, dvk, "auto", progress=calls.append, max_bytes=4 * 190 * 256 * 2)
    assert out.shape == (5, 16, 16) and calls[-1] == 1.0 and len(calls) == 3  # chunks of 2 slices


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["float32", "bf16"])
def test_cuda_matches_cpu(precision):
    model = positive_model("dblurdose")
    spect, density, dvk = scaled_inputs((13, 64, 64))
    cpu = predict_scaled(model, spect, density, dvk, "cpu")
    gpu = predict_scaled(model, spect, density, dvk, "cuda", precision=precision)
    tol = 1e-4 if precision == "float32" else 5e-3
    assert np.abs(gpu - cpu).max() <= tol * np.abs(cpu).max()
