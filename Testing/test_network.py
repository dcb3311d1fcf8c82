"""DblurDoseNet: architecture, the shared-extractor slab forward, BN folding, saving and loading."""

import pytest
import torch
from torch import nn

from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.network import (
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


def random_model(variant="dblurdose", seed=0, dtype=torch.float32):
    """Random weights and non-trivial batch-norm statistics, in eval mode."""
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
    torch.manual_seed(0)
    model = DblurDoseNet().eval()
    assert correction_bound(model) == (float("-inf"), float("inf"))
    x, dvk = torch.rand(2, 2, PACK, 32, 32), torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        corr = model(x, dvk) - dvk
    assert 0 < float(corr.abs().max()) < 0.2
    with torch.no_grad():
        model.unet.out.weight.copy_(-model.unet.out.weight.abs())
    assert correction_bound(model) == (float("-inf"), float(model.unet.out.bias.detach()))


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
    model = random_model()
    x = torch.randn(1, 2, PACK, 32, 32)
    dvk = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x, dvk) - model(x, torch.zeros_like(dvk)), dvk, atol=1e-5)
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
    from DblurDoseLib import network

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
    torch.testing.assert_close(fast, naive, rtol=1e-12, atol=1e-12)
    for name, grad in naive_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-10, atol=1e-12, msg=name)


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
