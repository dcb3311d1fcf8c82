"""A DblurDoseNet whose config deconvolves its input: Richardson-Lucy at the SPECT's resolution, then the network
on the sharpened SPECT and its DVK. The dose command feeds it the deconvolved activity and that activity's DVK,
refuses it without the SPECT's resolution, and training reads the data set's deconvolved inputs."""

import json

import numpy as np
import pytest
from conftest import run_dose, water_phantom_ct

from DblurDoseLib.dose import compute_dose_rate_maps
from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.io import dataset as layout
from DblurDoseLib.io.volume import Volume, read_volume, write_volume
from DblurDoseLib.learning.network import (
    DblurDoseNet,
    ModelConfig,
    load_model_file,
    save_model,
    zero_correction,
)
from DblurDoseLib.physics.consistency import consistent_dose_rate
from DblurDoseLib.physics.deconvolution import deconvolved_on_grid, gaussian_blur
from DblurDoseLib.physics.density import hu_to_density

FWHM = 12.0


def blurred_hot_sphere(ct: Volume, radius_mm: float = 12.0) -> tuple[Volume, np.ndarray]:
    """A hot sphere (10:1 over a warm water block) imaged by an ideal Gaussian system of FWHM mm; and its mask."""
    z, y, x = np.indices(ct.shape)
    c = (np.array(ct.shape) - 1) / 2
    r = np.sqrt((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) * ct.spacing[0]
    body = ct.array > -500
    true = np.where(body, 1e5, 0.0) + np.where(r <= radius_mm, 9e5, 0.0)
    return ct.with_array(gaussian_blur(true, FWHM, ct.spacing).astype(np.float32)), r <= radius_mm


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deconvolving")
    ct = water_phantom_ct((28, 28, 28), (4.8, 4.8, 4.8))
    spect, sphere = blurred_hot_sphere(ct)
    model = zero_correction(DblurDoseNet(ModelConfig(spacing=ct.spacing, deconvolution_iterations=8)))
    return tmp, ct, spect, sphere, save_model(model, tmp / "deconvolving.pt")


def test_the_network_sees_the_deconvolved_spect_and_corrects_its_dvk(scene):
    """With a zero correction the CNN map is the DVK of the deconvolved SPECT, kept consistent with the SPECT
    (physics.consistency): sharper in the hot sphere than the DVK method's, the same energy."""
    _, ct, spect, sphere, model = scene
    maps = compute_dose_rate_maps(spect, ct, ("dvk", "cnn"), model=model, spect_fwhm_mm=FWHM, device="cpu",
                                  activity_range_mbq=None)
    sharp = deconvolved_on_grid(spect, ct, FWHM, 8)
    base = compute_dose_rate_maps(sharp, ct, ("dvk",), device="cpu", activity_range_mbq=None)["dvk"].array
    dvk, cnn = maps["dvk"].array, maps["cnn"].array
    density = hu_to_density(ct.array)
    expected = consistent_dose_rate(base, dvk, density, FWHM, ct.spacing)
    np.testing.assert_allclose(cnn, expected, rtol=1e-5, atol=1e-6 * base.max())
    assert not np.allclose(cnn, base, rtol=1e-3, atol=1e-3 * base.max())
    assert cnn[sphere].mean() > 1.1 * dvk[sphere].mean()  # the blur's loss in the sphere partly put back

    # activity kept: the deconvolution moves activity back from the air margin into the body, not more
    assert sharp.array.sum(dtype=np.float64) == pytest.approx(spect.array.sum(dtype=np.float64), rel=1e-4)
    assert maps["cnn"].metadata["spect_fwhm_mm"] == "12"
    assert "8 iterations" in maps["cnn"].metadata["deconvolution"]
    assert "FWHM" in maps["cnn"].metadata["consistency"]


def test_with_the_resolution_any_cnn_map_is_kept_consistent_with_the_spect(scene):
    """A model that does not deconvolve, given the SPECT's resolution: its map is made consistent with the SPECT
    (no warning that the resolution goes unused); without it the map is the network's own."""
    _, ct, spect, sphere, _ = scene
    plain = save_model(zero_correction(DblurDoseNet(ModelConfig(spacing=ct.spacing))), scene[0] / "plain.pt")
    report: dict = {}
    maps = compute_dose_rate_maps(spect, ct, ("dvk", "cnn"), model=plain, spect_fwhm_mm=FWHM, device="cpu",
                                  activity_range_mbq=None, report=report)
    raw = compute_dose_rate_maps(spect, ct, ("dvk", "cnn"), model=plain, device="cpu", activity_range_mbq=None)
    dvk = maps["dvk"].array
    np.testing.assert_allclose(raw["cnn"].array, dvk, rtol=1e-5, atol=1e-6 * dvk.max())  # zero correction
    np.testing.assert_allclose(maps["cnn"].array, consistent_dose_rate(dvk, dvk, hu_to_density(ct.array), FWHM,
                                                                       ct.spacing), rtol=1e-5, atol=1e-6 * dvk.max())
    assert maps["cnn"].array[sphere].mean() > 1.03 * dvk[sphere].mean()  # one step toward the sharp truth
    assert not any("resolution" in w for w in report["warnings"])
    assert maps["cnn"].metadata["spect_fwhm_mm"] == "12" and "consistency" not in raw["cnn"].metadata
    assert "deconvolution" not in maps["cnn"].metadata


def test_a_deconvolving_model_needs_the_spect_resolution(scene, capsys):
    tmp, ct, spect, _, model = scene
    with pytest.raises(DblurDoseError, match="needs its resolution") as err:
        compute_dose_rate_maps(spect, ct, ("cnn",), model=model, device="cpu", activity_range_mbq=None)
    assert err.value.settings == ("spect_fwhm",)
    for bad in (0.2, 80.0, float("nan")):
        with pytest.raises(DblurDoseError, match="1-40 mm") as err:
            compute_dose_rate_maps(spect, ct, ("cnn",), model=model, device="cpu", activity_range_mbq=None,
                                   spect_fwhm_mm=bad)
        assert err.value.settings == ("spect_fwhm",)  # the CLI names --spect-fwhm, the Slicer panel its field
    paths = {"spect": write_volume(spect, tmp / "spect.nrrd", overwrite=True),
             "ct": write_volume(ct, tmp / "ct.nrrd", overwrite=True)}
    assert run_dose(paths, tmp / "out", "--method", "cnn", "--model", str(model), "--device", "cpu",
                    "--any-activity") == 2
    assert capsys.readouterr().err.strip().endswith("[--spect-fwhm]")
    assert not (tmp / "out").exists()
    assert run_dose(paths, tmp / "out", "--method", "cnn", "--model", str(model), "--device", "cpu",
                    "--any-activity", "--spect-fwhm", "12") == 0
    assert (tmp / "out" / "dose_rate_cnn.nrrd").is_file()


def test_a_resolution_without_a_deconvolving_model_is_warned_of(scene):
    _, ct, spect, _, _ = scene
    report: dict = {}
    compute_dose_rate_maps(spect, ct, ("dvk",), device="cpu", activity_range_mbq=None, spect_fwhm_mm=FWHM,
                           report=report)
    assert any("resolution" in w and "ignored" in w for w in report["warnings"])


def test_model_files_keep_their_deconvolution_and_older_ones_have_none(scene, tmp_path):
    _, _, _, _, model = scene
    assert load_model_file(model).config.deconvolution_iterations == 8
    assert ModelConfig.from_dict({"variant": "dblurdose"}).deconvolution_iterations == 0
    for bad in (-1, 2.5, "3", True):
        with pytest.raises(DblurDoseError, match="whole number"):
            ModelConfig(deconvolution_iterations=bad)


def test_training_reads_the_deconvolved_inputs_or_names_the_missing_step(tmp_path):
    from DblurDoseLib.learning.training import load_cases

    ct = water_phantom_ct((12, 16, 16), (4.8, 4.8, 4.8))
    folder = tmp_path / "p00"
    folder.mkdir()
    density = ct.with_array(np.where(ct.array > -500, 1.0, 0.001).astype(np.float32))
    write_volume(density, folder / layout.volume_file("density"))
    write_volume(ct.with_array(np.ones(ct.shape, np.float32)), folder / layout.truth_file())
    for stem, value in (("spect", 1.0), ("dvk", 2.0)):
        write_volume(ct.with_array(np.full(ct.shape, value, np.float32)), folder / layout.realisation_file(stem, 0))
        write_volume(ct.with_array(np.full(ct.shape, 3 * value, np.float32)),
                     folder / layout.deconvolved_file(stem, 4, 0))
    manifest = {"spacing": list(ct.spacing), "phantoms": {"p00": {"split": "train", "realisations": 1}}}
    (tmp_path / layout.MANIFEST).write_text(json.dumps(manifest))
    plain = load_cases(tmp_path, ["p00"], manifest, ModelConfig(spacing=ct.spacing), tmp_path / "c1")
    sharp = load_cases(tmp_path, ["p00"], manifest, ModelConfig(spacing=ct.spacing, deconvolution_iterations=4),
                       tmp_path / "c2")
    assert float(plain[0].dvk.max()) == 2.0 and float(sharp[0].dvk.max()) == 6.0
    # the consistency step's reference is the DVK of the SPECT as reconstructed, whatever the network reads
    assert plain[0].reference is plain[0].dvk and float(sharp[0].reference.max()) == 2.0
    assert float(sharp[0].spect.max()) == 3.0
    with pytest.raises(DblurDoseError, match="no SPECT deconvolved with 9 Richardson-Lucy iterations"):
        load_cases(tmp_path, ["p00"], manifest, ModelConfig(spacing=ct.spacing, deconvolution_iterations=9),
                   tmp_path / "c3")
    assert read_volume(folder / layout.deconvolved_file("spect", 4, 0)).shape == ct.shape


def test_dosimetry_refuses_a_deconvolving_model_without_the_resolution_before_any_work(scene, monkeypatch):
    from DblurDoseLib import dosimetry
    from DblurDoseLib.io.volume import Segment

    _, ct, spect, sphere, model = scene
    points = [dosimetry.TimePoint(spect, ct, t, f"time point {i + 1}") for i, t in enumerate((24.0, 96.0))]
    monkeypatch.setattr(dosimetry, "_rates_at_time_points", lambda *a, **k: pytest.fail("work before the check"))
    with pytest.raises(DblurDoseError, match="needs its resolution"):
        dosimetry.absorbed_dose(points, [Segment("sphere", sphere)], method="cnn", register="none",
                                dose_options={"model": model, "device": "cpu"}, activity_range_mbq=None)
