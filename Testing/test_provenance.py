"""What made a result is written into it, and the same inputs give the same result (issue 13, part 3)."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from conftest import run_dose

from DblurDoseLib import __version__
from DblurDoseLib.io.outputs import input_checksum
from DblurDoseLib.io.volume import read_volume


def _zero_model(tmp, ct):
    from DblurDoseLib.learning.network import DblurDoseNet, ModelConfig, save_model, zero_correction

    return save_model(zero_correction(DblurDoseNet(ModelConfig(spacing=ct.spacing))), tmp / "zero.pt")


def test_every_output_records_what_made_it(case):
    tmp, paths, ct, _ = case
    model = _zero_model(tmp, ct)
    out = tmp / "out"
    assert run_dose(paths, out, "--seg", str(paths["seg"]), "--method", "all", "--model", str(model),
                    "--device", "cpu") == 0
    for method in ("dvk", "cnn"):
        meta = read_volume(out / f"dose_rate_{method}.nrrd").metadata
        assert meta["dblurdose_version"] == __version__
        assert meta["method"] == method
        assert meta["units"] == "mGy/h" and meta["nuclide"] == "Lu-177"
        assert meta["spect_units"] == "bqml" and meta["spect_units_from"].startswith("assumed")
        assert meta["kernel"].startswith("shipped Lu-177 4.8x4.8x4.8")
        assert meta["input_spect_sha256"] == input_checksum(paths["spect"])
        assert meta["input_ct_sha256"] == input_checksum(paths["ct"])
        assert meta["input_seg_sha256"] == input_checksum(paths["seg"])
    import torch

    digest = torch.load(model, weights_only=True)["sha256"]
    assert read_volume(out / "dose_rate_cnn.nrrd").metadata["model_sha256"] == digest
    assert "model_sha256" not in read_volume(out / "dose_rate_dvk.nrrd").metadata
    header = [line for line in (out / "stats.csv").read_text().splitlines() if line.startswith("# ")]
    assert f"# dblurdose_version: {__version__}" in header
    assert f"# model_sha256 (cnn): {digest}" in header
    assert f"# input_ct_sha256: {input_checksum(paths['ct'])}" in header


def test_units_given_on_the_command_line_are_recorded_as_given(case):
    tmp, paths, *_ = case
    assert run_dose(paths, tmp / "out", "--spect-units", "bqml") == 0
    meta = read_volume(tmp / "out" / "dose_rate_dvk.nrrd").metadata
    assert meta["spect_units_from"] == "given by the user"


def test_checksum_of_a_folder_changes_with_any_file(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    (folder / "1.dcm").write_bytes(b"a")
    (folder / "2.dcm").write_bytes(b"b")
    before = input_checksum(folder)
    (folder / "2.dcm").write_bytes(b"c")
    assert input_checksum(folder) != before


def test_same_inputs_give_bit_identical_maps_on_the_cpu(case):
    """DVK and CNN, twice: the maps and the files are the same to the last bit."""
    from DblurDoseLib.learning.network import DblurDoseNet, ModelConfig, save_model

    tmp, paths, ct, _ = case
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    model = save_model(DblurDoseNet(ModelConfig(spacing=ct.spacing)), tmp / "random.pt")  # a correction that is not zero
    for run in ("a", "b"):
        assert run_dose(paths, tmp / run, "--method", "all", "--model", str(model), "--device", "cpu") == 0
    for method in ("dvk", "cnn"):
        a, b = (tmp / run / f"dose_rate_{method}.nrrd" for run in ("a", "b"))
        assert np.array_equal(read_volume(a).array, read_volume(b).array)
        assert a.read_bytes() == b.read_bytes()
    cnn, dvk = (read_volume(tmp / "a" / f"dose_rate_{m}.nrrd").array for m in ("cnn", "dvk"))
    assert not np.array_equal(cnn, dvk)  # the CNN really ran


#: Stated GPU tolerances (README, "Reproducibility"): the largest difference from the CPU map, as a
#: fraction of the CPU map's maximum. float32 FFTs (cuFFT vs pocketfft) and convolution algorithms
#: (cuDNN vs oneDNN) sum in other orders; the CNN runs in float32 on the GPU too (no TF32).
GPU_TOLERANCE = {"dvk": 1e-5, "cnn": 1e-4}


@pytest.mark.gpu
def test_gpu_maps_agree_with_the_cpu_within_the_stated_tolerances(case):
    """On a CUDA machine: the DVK and CNN maps equal the CPU's within GPU_TOLERANCE, and two GPU runs are
    the same to the last bit (deterministic algorithms)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from DblurDoseLib.learning.network import DblurDoseNet, ModelConfig, save_model

    tmp, paths, ct, _ = case
    torch.manual_seed(1)
    model = save_model(DblurDoseNet(ModelConfig(spacing=ct.spacing)), tmp / "random.pt")
    for run, device in (("cpu", "cpu"), ("gpu1", "cuda"), ("gpu2", "cuda")):
        assert run_dose(paths, tmp / run, "--method", "all", "--model", str(model), "--device", device) == 0
    for method, tolerance in GPU_TOLERANCE.items():
        cpu, gpu1, gpu2 = (read_volume(tmp / run / f"dose_rate_{method}.nrrd").array for run in ("cpu", "gpu1", "gpu2"))
        assert float(np.abs(gpu1 - cpu).max()) <= tolerance * float(cpu.max()), method
        assert np.array_equal(gpu1, gpu2), method


def test_no_network_access_at_run_time(case, monkeypatch):
    """The dose runs with every socket connection refused (nothing is downloaded)."""
    tmp, paths, ct, _ = case

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    model = _zero_model(tmp, ct)
    assert run_dose(paths, tmp / "out", "--method", "all", "--model", str(model), "--device", "cpu",
                    "--seg", str(paths["seg"])) == 0
