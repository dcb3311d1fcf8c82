"""DblurDoseNet: architecture, the shared-extractor slab forward, BN folding, saving and loading."""

from dataclasses import asdict

import numpy as np
import pytest
import torch
from torch import nn

from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.learning.network import (
    PACK,
    VARIANTS,
    DblurDoseNet,
    ModelConfig,
    correction_bound,
    count_parameters,
    fuse_for_inference,
    load_model_file,
    postprocess,
    save_model,
    zero_correction,
)

V02 = ModelConfig.from_dict({})  # a model file of v0.2 and before: no architecture keys


def random_model(variant="dblurdose", seed=0, dtype=torch.float32):
    """Random weights and non-trivial batch-norm statistics, in eval mode; ``variant`` may be a ModelConfig."""
    torch.manual_seed(seed)
    model = DblurDoseNet(variant).to(dtype)
    nn.init.normal_(model.unet.out.weight, std=0.5)  # the shipped init is zero (starts as the DVK): not a test
    nn.init.normal_(model.unet.out.bias, std=0.1)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


def test_zero_correction_returns_the_dvk():
    """With the output layer at zero a residual network returns exactly the DVK it is given."""
    torch.manual_seed(0)
    model = zero_correction(DblurDoseNet()).eval()
    x, dvk = torch.rand(2, 2, PACK, 32, 32), torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x, dvk), dvk)


def test_fresh_network_can_correct_both_ways_and_starts_near_the_dvk():
    """The output layer reads ReLU features (>= 0): weights of one sign would cap the correction at the
    bias (issue 15). A fresh network has weights of both signs and a small correction."""
    for config in (ModelConfig(), V02):
        torch.manual_seed(0)
        model = DblurDoseNet(config).eval()
        assert correction_bound(model) == (float("-inf"), float("inf"))
        x, dvk = torch.rand(2, 2, PACK, 32, 32), torch.rand(2, 1, 32, 32)
        with torch.no_grad():
            corr = model(x, dvk) - dvk
        assert 0 < float(corr.abs().max()) < 0.2
        with torch.no_grad():
            model.unet.out.weight.copy_(-model.unet.out.weight.abs())
        relu = config.decoder_activation == "relu"  # a LeakyReLU decoder's features have both signs: no cap
        assert correction_bound(model) == (float("-inf"), float(model.unet.out.bias.detach()) if relu else float("inf"))


def test_parameter_count_matches_the_reference():
    n = count_parameters(DblurDoseNet())
    assert n == 1_143_233
    assert abs(n - 1.14e6) / 1.14e6 < 0.01  # "about 1.14 M" (public reference code)
    assert count_parameters(DblurDoseNet("no_residual")) == n
    assert count_parameters(DblurDoseNet("2d")) == 1_083_665  # 22-channel input, no depth extractor


def test_depth_extractor_layers_as_the_paper():
    ex = DblurDoseNet().extractor
    assert ex.conv1.kernel_size == (5, 7, 7) and ex.conv1.padding == (1, 3, 3) and ex.conv1.bias is None
    assert (ex.conv1.in_channels, ex.conv1.out_channels) == (2, 8)
    assert ex.conv2.kernel_size == (3, 7, 7) and ex.conv2.padding == (0, 3, 3) and ex.conv2.bias is None
    assert ex.conv3.kernel_size == (3, 7, 7) and ex.conv3.bias is not None
    assert (ex.conv3.in_channels, ex.conv3.out_channels) == (16, 16)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", [(32, 32), (40, 36), (17, 23)])  # in-plane sizes not multiples of 16 too
def test_shapes(variant, size):
    model = random_model(variant)
    x = torch.randn(2, 2, PACK, *size)
    dvk = torch.randn(2, 1, *size)
    with torch.no_grad():
        assert model(x, dvk).shape == (2, 1, *size)


def test_residual_is_added_and_not_fed_in():
    model = random_model(V02)
    x = torch.randn(1, 2, PACK, 32, 32)
    dvk = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x, dvk) - model(x, torch.zeros_like(dvk)), dvk, atol=1e-5)
        ratio = random_model(ModelConfig(correction="ratio"))  # the DVK times a factor that does not depend on it
        torch.testing.assert_close(ratio(x, 2 * dvk), 2 * ratio(x, dvk))
        plain = random_model("no_residual")
        assert torch.equal(plain(x, dvk), plain(x))
    with pytest.raises(ValueError, match="pass dvk"):
        model(x)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("slab", [1, 2, 7])
def test_slab_forward_equals_per_pack_forward(variant, slab):
    model = random_model(variant)
    x = torch.randn(2, 2, slab + PACK - 1, 24, 20)
    dvk = torch.randn(2, 1, slab, 24, 20)
    with torch.no_grad():
        fast = model.forward_slab(x, dvk)
        naive = torch.stack([model(x[:, :, k: k + PACK], dvk[:, :, k]) for k in range(slab)], dim=2)
    assert fast.shape == naive.shape == (2, 1, slab, 24, 20)
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-5)


def test_slab_forward_channels_last_layout():
    model = random_model()
    model.extractor.to(memory_format=torch.channels_last_3d)
    model.unet.to(memory_format=torch.channels_last)
    x = torch.randn(1, 2, 15, 32, 32)
    dvk = torch.randn(1, 1, 5, 32, 32)
    with torch.no_grad():
        fast = model.forward_slab(x.contiguous(memory_format=torch.channels_last_3d), dvk)
        naive = torch.stack([model(x[:, :, k: k + PACK], dvk[:, :, k]) for k in range(5)], dim=2)
    torch.testing.assert_close(fast, naive, rtol=1e-5, atol=1e-5)


def test_slab_training_step_equals_per_pack_batch():
    """Train mode: same outputs, batch-norm running statistics and gradients as a batch of packs."""
    a = random_model(dtype=torch.float64).train()
    b = random_model(dtype=torch.float64).train()
    slab = 5
    x = torch.randn(2, 2, slab + PACK - 1, 16, 16, dtype=torch.float64)
    dvk = torch.randn(2, 1, slab, 16, 16, dtype=torch.float64)
    out_a = a.forward_slab(x, dvk)
    packs = torch.cat([x[:, :, k: k + PACK] for k in range(slab)])  # batch index = k * 2 + b
    out_b = b(packs, torch.cat([dvk[:, :, k] for k in range(slab)])).view(slab, 2, 1, 16, 16).permute(1, 2, 0, 3, 4)
    torch.testing.assert_close(out_a, out_b, rtol=1e-10, atol=1e-10)
    for name, buf in a.named_buffers():
        torch.testing.assert_close(buf, dict(b.named_buffers())[name], rtol=1e-10, atol=1e-12, msg=name)
    out_a.square().mean().backward()
    out_b.square().mean().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-8, atol=1e-12, msg=name)


def test_tap_sum_node_equals_autograd_of_slices(monkeypatch):
    """The training step's fast path (the extractor's tap sums as one autograd node) is the same
    function as plain autograd of the slices: outputs and every gradient, float64."""
    from DblurDoseLib.learning import network

    x = torch.randn(2, 2, 6 + PACK - 1, 16, 16, dtype=torch.float64)
    dvk = torch.randn(2, 1, 6, 16, 16, dtype=torch.float64)
    results = []
    for node in (True, False):
        monkeypatch.setattr(network, "TAP_SUM_NODE", node)
        model = random_model(dtype=torch.float64).train()
        out = model.forward_slab(x, dvk)
        (out ** 3).mean().backward()
        results.append((out.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (fast, fast_grads), (naive, naive_grads) = results
    for name, (a, b) in {"output": (fast, naive), **{n: (fast_grads[n], g) for n, g in naive_grads.items()}}.items():
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11 * float(b.abs().max()), msg=name)  # float64 rounding


def test_v02_config_maps_to_the_v02_network():
    """Model files without the architecture keys (v0.2) build v0.2's network (ReLU decoder, DVK added);
    new models get the LeakyReLU decoder and the floored correction."""
    assert (V02.decoder_activation, V02.correction) == ("relu", "additive")
    assert (ModelConfig().decoder_activation, ModelConfig().correction) == ("leaky", "floored")
    old, new = DblurDoseNet(V02), DblurDoseNet()
    assert {type(m) for m in old.unet.dec.modules()} >= {nn.ReLU} and not any(
        isinstance(m, nn.LeakyReLU) for m in old.unet.dec.modules())
    assert not any(isinstance(m, nn.ReLU) for m in new.unet.dec.modules())
    assert old.state_dict().keys() == new.state_dict().keys()  # same parameters: options, not new layers
    with pytest.raises(DblurDoseError, match="choose one of leaky, relu"):
        ModelConfig(decoder_activation="gelu")
    with pytest.raises(DblurDoseError, match="choose one of ratio, additive, floored"):
        ModelConfig(correction="log")


def assert_fast_equals_naive(model, fwhm_mm=None) -> None:
    """Inference's fast path (shared extractor, folded batch norms) gives the naive slice-by-slice result on a
    random 12 x 32 x 32 volume."""
    from DblurDoseLib.learning.inference import predict_scaled

    spect, rho, dv = torch.rand(12, 32, 32).numpy(), (0.5 + torch.rand(12, 32, 32)).numpy(), torch.rand(12, 32, 32).numpy()
    np.testing.assert_allclose(predict_scaled(model, spect, rho, dv, fwhm_mm=fwhm_mm),
                               predict_scaled(model, spect, rho, dv, naive=True, fwhm_mm=fwhm_mm), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["dblurdose", "2d"])
def test_the_resolution_input_starts_as_the_network_without_it_and_conditions_each_slab(variant, tmp_path):
    """A network with the resolution input (ModelConfig.fwhm_input) holding another's weights is that network
    for every FWHM until its input layer learns; then its output depends on the FWHM, each slab of a batch at its
    own (slab forward = per-pack forward with per-slab FWHMs), fast inference equals naive, the file keeps it,
    and a missing FWHM is refused."""
    from DblurDoseLib.learning.inference import predict_scaled

    plain = random_model(variant)
    with_fwhm = DblurDoseNet(ModelConfig(variant=variant, fwhm_input=True)).eval()
    missing, unexpected = with_fwhm.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["blur.bias", "blur.weight"] and not unexpected
    x, dvk = torch.rand(2, 2, PACK + 3, 32, 32), torch.rand(2, 1, 4, 32, 32)
    with torch.no_grad():
        want = plain.forward_slab(x, dvk)
        for fwhm in (8.0, 15.0, torch.tensor([9.0, 14.0])):
            assert torch.equal(with_fwhm.forward_slab(x, dvk, fwhm), want)
        nn.init.normal_(with_fwhm.blur.weight, std=0.3)
        nn.init.normal_(with_fwhm.blur.bias, std=0.1)
        sharp, blurry = with_fwhm.forward_slab(x, dvk, 8.0), with_fwhm.forward_slab(x, dvk, 15.0)
        assert (sharp - blurry).abs().max() > 1e-3 * blurry.abs().max()
        both = with_fwhm.forward_slab(x, dvk, torch.tensor([8.0, 15.0]))
        torch.testing.assert_close(both, torch.cat([sharp[:1], blurry[1:]]))
        for k in range(4):
            torch.testing.assert_close(with_fwhm(x[:, :, k:k + PACK], dvk[:, :, k], torch.tensor([8.0, 15.0])),
                                       both[:, :, k], rtol=1e-4, atol=1e-5)
    torch.manual_seed(0)
    assert_fast_equals_naive(with_fwhm, fwhm_mm=11.0)
    loaded = load_model_file(save_model(with_fwhm, tmp_path / "fwhm.pt"))
    assert loaded.config.fwhm_input and torch.equal(loaded.blur.weight, with_fwhm.blur.weight)
    rho = np.ones((12, 32, 32), np.float32)
    for fwhm in (None, float("nan")):
        with pytest.raises(DblurDoseError, match="takes the SPECT's resolution as an input: give the SPECT's"):
            predict_scaled(loaded, rho, rho, rho, fwhm_mm=fwhm)
    with pytest.raises(DblurDoseError, match=r"resolution \(0.0 mm\) lies outside 1-40 mm"):
        predict_scaled(loaded, rho, rho, rho, fwhm_mm=0.0)
    assert not DblurDoseNet(ModelConfig(variant=variant)).config.fwhm_input  # off unless asked
    for bad in ("yes", 1, None):
        with pytest.raises(DblurDoseError, match="fwhm_input must be true or false"):
            ModelConfig(fwhm_input=bad)


def test_a_v02_file_gives_the_v02_computation(tmp_path):
    """A model file of v0.2 and before (no architecture keys in its config) loads as v0.2's network and its
    output is, bit for bit, the U-Net's output on the extractor's features plus the DVK (v0.2's formula);
    inference takes the same path, fast as naive."""
    from DblurDoseLib.learning.network import FORMAT, LEGACY_CONFIG, _digest

    model = random_model(V02)
    cfg = {k: v for k, v in asdict(model.config).items() if k not in LEGACY_CONFIG}
    cfg["spacing"] = list(cfg["spacing"])
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"format": FORMAT, "config": cfg, "state_dict": state, "sha256": _digest(cfg, state)},
               tmp_path / "v02.pt")
    model = load_model_file(tmp_path / "v02.pt")
    assert (model.config.decoder_activation, model.config.correction) == ("relu", "additive")
    torch.manual_seed(0)
    x, dvk = torch.rand(1, 2, PACK, 32, 32), torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x, dvk), model.unet(model.extractor(x)) + dvk)
    assert_fast_equals_naive(model)


def test_shipped_file_takes_the_same_path_fast_as_naive():
    """The shipped weights through inference's fast path (shared extractor, folded batch norms) give the
    naive slice-by-slice result."""
    from DblurDoseLib.learning.inference import DEFAULT_MODEL_PATH

    if not DEFAULT_MODEL_PATH.is_file():
        pytest.skip("no shipped weights in this installation")
    model = load_model_file(DEFAULT_MODEL_PATH)
    torch.manual_seed(0)
    assert_fast_equals_naive(model)


def _decoder_features_and_correction(model, x):
    """The decoder's last features and the U-Net's output (the correction, before it meets the DVK)."""
    feats = []
    hook = model.unet.dec[-1][-1].register_forward_hook(lambda m, i, o: feats.append(o.detach()))
    with torch.no_grad():
        out = model.unet(model.extractor(x))
    hook.remove()
    return feats[0], out


def test_new_decoder_has_no_dead_features_and_corrects_both_ways():
    """v0.2's ReLU decoder left 63% of its last features at zero in soft tissue and 0.8% of the voxels
    with all 16 zero (one constant correction there, the output bias). The LeakyReLU decoder has no
    dead zone: on a smooth activity over uniform tissue (a large body region), no feature is zero,
    the correction takes a different value at (almost) every voxel and has both signs."""
    torch.manual_seed(0)
    model = DblurDoseNet().eval()
    z, y, x = torch.meshgrid(*(torch.linspace(-1, 1, n) for n in (PACK, 64, 64)), indexing="ij")
    spect = 1 + 0.8 * torch.sin(3 * x + 2 * y) * torch.cos(2 * z)
    inputs = torch.stack([spect, torch.ones_like(spect)])[None]  # density 1.0 g/cm3 everywhere
    feats, corr = _decoder_features_and_correction(model, inputs)
    assert float((feats == 0).float().mean()) < 0.001
    inner = corr[..., 8:-8, 8:-8].flatten()
    assert inner.unique().numel() > 0.9 * inner.numel()
    assert float(inner.min()) < 0 < float(inner.max())
    old_feats, _ = _decoder_features_and_correction(DblurDoseNet(V02).eval(), inputs)
    assert float((old_feats == 0).float().mean()) > 0.2  # the ReLU decoder, for contrast


def test_ratio_correction_stays_within_its_bounds_above_the_tissue_floor():
    """Whatever the U-Net outputs, the "ratio" correction keeps the dose within (1/20, 20) x the DVK,
    so tissue never falls to inference.TISSUE_FLOOR by construction; it is smooth and the identity at 0."""
    from DblurDoseLib.learning.inference import TISSUE_FLOOR
    from DblurDoseLib.learning.network import RATIO_LIMIT

    model = DblurDoseNet(ModelConfig(correction="ratio"))
    dvk = torch.rand(1, 1, 8, 8, dtype=torch.float64) + 0.1
    assert 1 / RATIO_LIMIT >= TISSUE_FLOOR
    for out, low, high in ((-1e6, 1 / RATIO_LIMIT, 1 / RATIO_LIMIT + 1e-9), (1e6, RATIO_LIMIT - 1e-6, RATIO_LIMIT),
                           (0.0, 1.0, 1.0)):
        ratio = model.correct(torch.full_like(dvk, out), dvk) / dvk
        assert float(ratio.min()) >= low - 1e-12 and float(ratio.max()) <= high + 1e-12
    c = torch.linspace(-50, 50, 1001, dtype=torch.float64, requires_grad=True)
    ratio = model.correct(c, torch.ones_like(c))
    ratio.sum().backward()
    assert bool((c.grad > 0).all())  # smooth and monotonic: never a flat floor with zero gradient at finite c
    assert abs(float(c.grad[500]) - 1.0) < 1e-12  # 1 + c near c = 0


def test_floored_correction_is_additive_above_the_floor_and_never_below_it():
    """"floored": the additive correction (learning as v0.2's did) bent smoothly onto 1/20 of the DVK instead
    of overshooting it: exactly the DVK at c = 0, additive to 1e-3 of the DVK wherever the dose is above
    0.15 of the DVK; never under the floor, however negative the output; gradient 1 near c = 0, positive
    everywhere."""
    from DblurDoseLib.learning.inference import TISSUE_FLOOR
    from DblurDoseLib.learning.network import RATIO_LIMIT

    model = DblurDoseNet(ModelConfig(correction="floored"))
    dvk = torch.rand(1, 1, 8, 8, dtype=torch.float64) * 100 + 0.01
    assert torch.equal(model.correct(torch.zeros_like(dvk), dvk), dvk)
    for frac, tol in ((-0.85, 1e-3), (-0.75, 1e-5), (-0.5, 1e-9), (0.3, 1e-12), (5.0, 1e-12)):  # dose (1 + frac) dvk
        torch.testing.assert_close(model.correct(frac * dvk, dvk), (1 + frac) * dvk, rtol=tol, atol=0)
    for out in (-1e6, -1e3 * float(dvk.max()), -float(dvk.max())):
        ratio = model.correct(torch.full_like(dvk, out), dvk) / dvk
        assert float(ratio.min()) >= (1 - 1e-6) / RATIO_LIMIT and 1 / RATIO_LIMIT >= TISSUE_FLOOR  # FLOOR_EPS
    assert float((model.correct(torch.full_like(dvk, -1e6), dvk) / dvk).max()) < 1 / RATIO_LIMIT + 1e-9
    c = torch.linspace(-1.2, 3, 421, dtype=torch.float64, requires_grad=True)  # the floor point is c = -0.95
    dose = model.correct(c, torch.ones_like(c))
    dose.sum().backward()
    assert bool((c.grad > 0).all()) and abs(float(c.grad[120]) - 1.0) < 1e-6  # c = 0: additive
    zero = model.correct(torch.tensor([0.5, -0.5], dtype=torch.float64), torch.zeros(2, dtype=torch.float64))
    assert abs(float(zero[0]) - 0.5) < 1e-6 and abs(float(zero[1])) < 1e-6  # no DVK: max(c, 0), to FLOOR_EPS


def test_floor_leak_keeps_the_values_and_lets_gradient_through_the_floor_in_training_only():
    """The floored correction's training leak (``floor_leak`` g): the same doses; below the floor, where the
    plain gradient is 0 to float precision, at least g reaches the output; above it, still 1 (additive);
    in eval mode (validation, inference) no leak."""
    model = DblurDoseNet(ModelConfig(correction="floored"))
    c = torch.linspace(-3.0, 1.0, 401, dtype=torch.float64)  # the floor point is c = -0.95 for a DVK of 1

    def dose_and_grad(leak, training):
        model.floor_leak = leak
        model.train(training)
        x = c.clone().requires_grad_(True)
        dose = model.correct(x, torch.ones_like(x))
        dose.sum().backward()
        return dose.detach(), x.grad

    plain, g_plain = dose_and_grad(0.0, True)
    leaky, g_leak = dose_and_grad(0.25, True)
    assert torch.equal(plain, leaky)
    deep = c < -1.5  # an overshoot of 0.55 x the DVK below the floor and more
    assert float(g_plain[deep].max()) < 1e-10 and float(g_leak[deep].min()) > 0.25 - 1e-9
    above = c > -0.5
    torch.testing.assert_close(g_leak[above], g_plain[above], rtol=0, atol=1e-9)
    assert abs(float(g_leak[300]) - 1.0) < 1e-9  # c = 0: additive
    assert bool((g_leak >= g_plain).all()) and float(g_leak.max()) <= 1.0 + 1e-9
    _, g_eval = dose_and_grad(0.25, False)
    torch.testing.assert_close(g_eval, g_plain, rtol=0, atol=0)


@pytest.mark.parametrize("config", [ModelConfig(), V02, ModelConfig(correction="floored")],
                         ids=["v0.3", "v0.2", "floored"])
def test_zero_correction_and_folding_work_for_both_architectures(config):
    model = random_model(config)
    x, dvk = torch.randn(1, 2, 13, 24, 24), torch.rand(1, 1, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(fuse_for_inference(model).forward_slab(x, dvk), model.forward_slab(x, dvk),
                                   rtol=1e-4, atol=1e-5)
        assert torch.equal(zero_correction(model).forward_slab(x, dvk), dvk)


@pytest.mark.parametrize("variant", VARIANTS)
def test_folded_batch_norm_equals_eval_model(variant):
    model = random_model(variant)
    fused = fuse_for_inference(model)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)) for m in fused.modules())
    x = torch.randn(1, 2, 13, 24, 24)
    dvk = torch.randn(1, 1, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(fused.forward_slab(x, dvk), model.forward_slab(x, dvk), rtol=1e-4, atol=1e-5)
    assert any(isinstance(m, nn.BatchNorm3d) for m in model.modules()) == (variant != "2d")  # original untouched


def test_postprocess_clamps_and_masks_air():
    dose = torch.tensor([-1.0, 2.0, 3.0, -0.5])
    density = torch.tensor([1.0, 1.0, 0.05, 0.1])
    assert postprocess(dose, density).tolist() == [0.0, 2.0, 0.0, 0.0]


def test_save_load_roundtrip_keeps_config_and_weights(tmp_path):
    config = ModelConfig(variant="2d", spacing=(1.5, 1.5, 4.0), info={"epochs": 3})
    model = random_model("2d")
    model.config = config
    path = save_model(model, tmp_path / "m.pt")
    loaded = load_model_file(path)
    assert loaded.config == config and loaded.variant == "2d" and not loaded.training
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_corrupted_file_is_refused_with_the_fix(tmp_path):
    path = save_model(random_model(), tmp_path / "m.pt")
    raw = bytearray(path.read_bytes())
    # flip bytes inside the stored weights (the zip's data region), not its directory
    raw[len(raw) // 2: len(raw) // 2 + 8] = bytes(b ^ 0xFF for b in raw[len(raw) // 2: len(raw) // 2 + 8])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(raw))
    with pytest.raises(DblurDoseError, match="corrupted.*dblurdose train"):
        load_model_file(bad)
    truncated = tmp_path / "short.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DblurDoseError, match="corrupted"):
        load_model_file(truncated)


def test_other_files_are_refused(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(DblurDoseError, match="not a DblurDoseNet model file"):
        load_model_file(other)
    with pytest.raises(DblurDoseError, match="not found"):
        load_model_file(tmp_path / "missing.pt")


def test_bad_config_is_refused():
    with pytest.raises(DblurDoseError, match="variant"):
        DblurDoseNet("3d-unet")
    with pytest.raises(DblurDoseError, match="voxel size"):
        ModelConfig(spacing=(1.0, 0.0, 3.0))


def test_nan_weights_are_refused_at_load(tmp_path):
    """A diverged training saves NaN weights with a valid checksum: refused with the fix (issue 14)."""
    model = DblurDoseNet()
    with torch.no_grad():
        model.unet.out.weight[0, 3] = float("nan")
    path = save_model(model, tmp_path / "nan.pt")
    with pytest.raises(DblurDoseError, match="NaN or infinite.*dblurdose train"):
        load_model_file(path)
