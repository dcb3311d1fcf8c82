"""The shipped DblurDoseNet weights: present, verified, documented, and physically sane."""

import re

import numpy as np
import torch

from DblurDoseLib.dvk import dvk_dose_rate
from DblurDoseLib.inference import DEFAULT_MODEL_PATH, cnn_dose_rate, load_model, weights_installed
from DblurDoseLib.kernels import get_kernel
from DblurDoseLib.volume import Volume

CARD = DEFAULT_MODEL_PATH.parent / "MODEL_CARD.md"


def test_weights_ship_with_a_model_card_that_names_their_checksum():
    assert weights_installed(), f"the shipped weights are missing: {DEFAULT_MODEL_PATH}"
    assert DEFAULT_MODEL_PATH.stat().st_size < 20e6
    payload = torch.load(DEFAULT_MODEL_PATH, map_location="cpu", weights_only=True)
    text = CARD.read_text()
    assert payload["sha256"] in text, "the model card must name the SHA-256 of the weights it describes"
    for heading in ("Data", "Training", "Evaluation"):
        assert re.search(rf"^## {heading}", text, re.M), heading


def test_shipped_model_loads_with_its_working_grid_and_provenance():
    model = load_model()
    cfg = model.config
    assert cfg.variant == "dblurdose" and model.residual
    assert cfg.spacing == (1.96, 1.96, 3.0)
    assert cfg.info.get("epoch", 0) >= 1 and cfg.info.get("train_phantoms")
    assert not set(cfg.info["train_phantoms"]) & set(cfg.info["val_phantoms"])
    assert len(cfg.info["train_phantoms"]) >= 9


def test_shipped_model_on_a_water_cylinder_stays_close_to_the_dvk():
    """A hot sphere in a water cylinder: the trained correction is finite, non-negative, zero in air,
    and keeps the absorbed power (dose rate x mass) within 25% of the DVK's; the CNN is sharper
    only where the activity changes, not a rescaling of the whole map."""
    shape, spacing = (32, 64, 64), (1.96, 1.96, 3.0)
    origin = tuple(-(n - 1) / 2 * s for n, s in zip(shape[::-1], spacing))
    ct = Volume(np.zeros(shape, np.float32), spacing, origin)
    z, y, x = np.meshgrid(*(np.arange(n) * s + o for n, s, o in zip(shape, spacing[::-1], origin[::-1])),
                          indexing="ij", sparse=True)
    body = x**2 + y**2 <= 55.0**2
    density = np.broadcast_to(np.where(body, 1.04, 0.0012), shape).astype(np.float32)
    sphere = x**2 + y**2 + z**2 <= 15.0**2
    # a blurred hot sphere on a warm background, as a SPECT shows it (Bq/mL)
    from scipy.ndimage import gaussian_filter

    act = np.broadcast_to(np.where(sphere, 2e5, 0.0) + np.where(body, 5e3, 0.0), shape).astype(np.float32)
    act = gaussian_filter(act, (1.5, 2.5, 2.5)).astype(np.float32) * body
    kernel = get_kernel("Lu-177", spacing)
    dvk = dvk_dose_rate(act * np.float32(ct.voxel_volume_ml), density, kernel.electron, kernel.photon, device="cpu")
    cnn = cnn_dose_rate(ct.with_array(act), ct, density, dvk, "cpu").array
    assert np.isfinite(cnn).all() and cnn.min() >= 0 and not cnn[density < 0.1].any()
    power_ratio = float((cnn * density).sum() / (dvk * density).sum())
    assert 0.75 < power_ratio < 1.25, power_ratio
    assert not np.allclose(cnn, dvk, rtol=1e-3), "the trained network corrects nothing"
