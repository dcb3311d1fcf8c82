"""The sphere phantom with an exact truth (evaluation/spheres.py): its geometry, its truth's physics, and
what a SPECT chain and the shipped CNN do to its spheres."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.evaluation import spheres as sp
from DblurDoseLib.evaluation.targets import LESION_GAIN_PERCENT
from DblurDoseLib.physics.density import hu_to_density

#: Lu-177, all electrons: 147.9 keV per decay, i.e. 85.3 mGy/h per MBq/mL in unit-density tissue (ICRP-107);
#: with all photons (183.0 keV per decay) 105.5 mGy/h
ELECTRON_MGY_H_PER_MBQ_ML, ALL_MGY_H_PER_MBQ_ML = 85.3, 105.5


@pytest.fixture(scope="module")
def phantom():
    return sp.sphere_phantom(contrast=8.0, background_bq_ml=2e4)


@pytest.fixture(scope="module")
def truth(phantom):
    return sp.sphere_truth(phantom)


def test_spheres_have_the_iec_volumes_and_the_phantom_its_activity(phantom):
    vox = phantom.hu.voxel_volume_ml
    for name, mask in phantom.spheres.items():
        d = float(name[len("sphere_"):-len("mm")])
        nominal = math.pi / 6 * (d / 10) ** 3
        assert abs(mask.sum() * vox / nominal - 1) < (0.05 if d > 10 else 0.1), (name, mask.sum() * vox, nominal)
        assert not (mask & ~phantom.body).any()
    union = np.sum([m.astype(int) for m in phantom.spheres.values()], axis=0)
    assert union.max() == 1, "spheres overlap"
    expected = 2e4 * (phantom.body.sum() + 7 * (union > 0).sum()) * vox  # 8:1 on a 2e4 Bq/mL background
    assert phantom.activity.array.sum(dtype=np.float64) * vox == pytest.approx(expected, rel=1e-5)
    assert phantom.background.sum() * vox > 1000 and not (phantom.background & (union > 0)).any()


def test_truth_is_the_equilibrium_dose_rate_in_the_background(phantom, truth):
    """Far from the spheres and the surface the truth lies between the electrons' equilibrium dose rate
    (all electron energy absorbed locally) and the one with every photon absorbed too."""
    rho = float(hu_to_density(np.zeros(1, np.float32))[0])
    background = float(truth[phantom.background].mean())
    electrons = 2e4 / 1e6 * ELECTRON_MGY_H_PER_MBQ_ML / rho
    assert electrons < background < 2e4 / 1e6 * ALL_MGY_H_PER_MBQ_ML / rho, (background, electrons)
    assert float(truth[phantom.background].std()) < 0.03 * background  # uniform: no noise in this truth
    inside = [float(truth[m].mean()) for m in phantom.spheres.values()]
    assert all(6 * background < v < 8 * background for v in inside), inside  # 8:1, less the spheres' edges


def test_dvk_of_a_blurred_image_loses_more_in_smaller_spheres_and_with_more_blur(phantom, truth):
    errors = {}
    for fwhm in (6.0, 14.0):
        spect = sp.sphere_spect(phantom, f"fwhm={fwhm}")[0]
        assert spect.array.sum(dtype=np.float64) == pytest.approx(phantom.activity.array.sum(dtype=np.float64), rel=1e-4)
        dvk = sp.dvk_map(spect, phantom.hu)
        errors[fwhm] = [float(dvk[m].mean() / truth[m].mean() - 1) for m in phantom.spheres.values()]
    for fwhm, errs in errors.items():
        assert all(e < 0 for e in errs) and errs == sorted(errs), (fwhm, errs)  # partial volume: small spheres worst
    assert all(a > b for a, b in zip(errors[6.0], errors[14.0])), errors


def test_the_evaluations_dvk_is_the_dose_pipelines(phantom):
    """The sphere evaluation computes the DVK below the dose workflow's layer; it must be the same map."""
    from DblurDoseLib.dose import compute_dose_rate_maps

    spect = sp.sphere_spect(phantom, "fwhm=10")[0]
    ours = sp.dvk_map(spect, phantom.hu)
    theirs = compute_dose_rate_maps(spect, phantom.hu, ("dvk",), device="cpu")["dvk"].array
    assert np.abs(ours - theirs).max() <= 1e-4 * theirs.max()


def test_unknown_chains_and_bad_settings_are_refused():
    assert sp.chain_settings("fwhm=9.5") == {"fwhm_mm": 9.5}
    assert sp.chain_settings("out-of-mix")["camera"] == "philips-brightview-megp"
    for bad in ("fwhm=0", "fwhm=x", "ge"):
        with pytest.raises(DblurDoseError, match="SPECT chain"):
            sp.chain_settings(bad)
    with pytest.raises(DblurDoseError, match="positive contrast"):
        sp.sphere_phantom(contrast=0)
    with pytest.raises(DblurDoseError, match="realisation"):
        sp.evaluate_spheres({}, ["fwhm=10"], realisations=0)


@pytest.mark.parametrize("argv", [
    ["evaluate"],  # neither a data set nor the sphere phantom
    ["evaluate", "--spheres", "--data", "somewhere"],  # both: one would be ignored
    ["evaluate", "--spheres", "--split", "val"],
    ["evaluate", "--spheres", "--phantoms", "1,9"],
    ["evaluate", "--data", "somewhere", "--counts", "3e6"],  # a sphere setting without the sphere phantom
    ["evaluate", "--data", "somewhere", "--chain", "in-mix"],
])
def test_evaluate_refuses_what_it_would_ignore_in_one_line(argv, capsys, tmp_path, monkeypatch):
    from DblurDoseLib import cli

    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sphere phantom" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_a_noise_free_chain_is_imaged_once(phantom):
    """fwhm=F has no noise: one image (and so one CNN run) whatever the realisations asked for, and no
    ensemble noise."""
    assert len(sp.sphere_spect(phantom, "fwhm=12", realisations=3)) == 1
    results = sp.evaluate_spheres({}, ["fwhm=12"], realisations=3, log=lambda m: None)
    assert results["chains"]["fwhm=12"]["noise"] == {}
    assert results["chains"]["fwhm=12"]["resolution"]["fwhm_mm"] == pytest.approx(12, abs=0.02)


def test_the_consistency_step_on_the_spheres(monkeypatch):
    """``consistent``: each model's maps made consistent with the SPECT at the chain's FWHM; on a network that
    adds nothing (its map is the DVK) one step puts back part of what the blur took from the large spheres,
    and the energy the blur took to the air."""
    from DblurDoseLib.learning import inference

    plain = SimpleNamespace(residual=False, config=SimpleNamespace(deconvolution_iterations=0, fwhm_input=False))
    monkeypatch.setattr(inference, "cnn_dose_rate", lambda spect, hu, density, dvk, device, model, **kw: hu.with_array(dvk))
    chain = sp.evaluate_spheres({"cnn": plain}, ["fwhm=12"], realisations=1, log=lambda m: None,
                                consistent=True)["chains"]["fwhm=12"]
    for name in ("sphere_28mm", "sphere_37mm"):
        row = chain["vois"][name]
        assert row["dvk"]["signed_error"] + 2 < row["consistent_cnn"]["signed_error"] < 0, row
        assert row["cnn"]["signed_error"] == pytest.approx(row["dvk"]["signed_error"], abs=1e-3)
    # the energy the DVK loses to the air at the water's surface (the blurred SPECT's spill-out) comes back
    assert abs(chain["power"]["consistent_cnn"] - 1.0) < 0.01 < abs(chain["power"]["dvk"] - 1.0)


@pytest.fixture(scope="module")
def shipped_in_mix():
    """The shipped CNN (also kept consistent with the SPECT) and the DVK on the sphere phantom through the data
    set's test chain (Siemens ME, 64 views, OSEM 8x4), one realisation of 1e7 counts."""
    pytest.importorskip("pytomography")
    from DblurDoseLib.learning.inference import load_model

    model = load_model(device="cpu")
    results = sp.evaluate_spheres({"cnn": model}, ["in-mix"], realisations=1, device="cpu", log=lambda m: None,
                                  consistent=True)
    return model, results


@pytest.mark.slow
def test_shipped_cnn_on_the_in_mix_spect_chain(shipped_in_mix, tmp_path):
    """The DVK under-estimates every sphere, the smaller the worse, and the shipped CNN recovers part of it in
    the two largest (v0.2: 37 mm -25% -> -18%, 28 mm -35% -> -27%); the report has a row per sphere."""
    _, results = shipped_in_mix
    vois = results["chains"]["in-mix"]["vois"]
    dvk = [vois[name]["dvk"]["signed_error"] for name in sorted(vois) if name.startswith("sphere_")]
    assert all(e < -10 for e in dvk) and dvk == sorted(dvk), dvk  # names sort by diameter here
    for name in ("sphere_28mm", "sphere_37mm"):
        assert vois[name]["cnn"]["signed_error"] > vois[name]["dvk"]["signed_error"] + 3, vois[name]
    assert 10 < results["chains"]["in-mix"]["resolution"]["fwhm_mm"] < 20  # the chain's Gaussian-equivalent FWHM
    path = sp.write_sphere_report(results, tmp_path)
    assert path.read_text().count("| sphere_") == 6 and "Gaussian-equivalent FWHM 1" in path.read_text()
    assert json.loads((tmp_path / "spheres.json").read_text())["settings"]["realisations"] == 1


@pytest.mark.slow
def test_the_consistency_step_helps_the_shipped_cnn_on_the_spheres(shipped_in_mix):
    """Kept consistent with the SPECT at the chain's FWHM (dose --spect-fwhm), the shipped CNN recovers more of
    the blur's loss in the spheres of 11 and 26 mL (session 15, 2 realisations: -26 -> -18% and -19 -> -11%),
    and its background excess goes (+3.4 -> +1.0%), energy within 2% of the truth's."""
    _, results = shipped_in_mix
    chain = results["chains"]["in-mix"]
    vois = chain["vois"]
    for name in ("sphere_28mm", "sphere_37mm"):
        assert vois[name]["consistent_cnn"]["signed_error"] > vois[name]["cnn"]["signed_error"] + 4, vois[name]
        assert vois[name]["consistent_cnn"]["signed_error"] < 0, vois[name]  # no overshoot
    background = vois["background"]
    assert abs(background["consistent_cnn"]["signed_error"]) < min(2.0, abs(background["cnn"]["signed_error"]))
    assert abs(chain["power"]["consistent_cnn"] - 1.0) < 0.02


#: issue 21's lesion target, on the spheres of 5 mL and more: the CNN's error of the mean at most this share of
#: the DVK's (the paper: lesions' mean error 55% lower than the DVK's)
SPHERE_TARGET = (100 - LESION_GAIN_PERCENT) / 100
#: shipped weights recorded (model card) as missing that target, by the SHA-256 the card names: strict, each
#: must still miss it as recorded; weights not listed here must meet it
MISSES_SPHERE_TARGET = {
    "0b12195642eeb4172a8299d706489345dcfc960a084bb8e81d0283308fdee399": "v0.2: 0.95, 0.76, 0.74 of the DVK's error",
    "02d5cc25668ef2020888de7bb4d67e18130d6b841d4aed0de2a682803514ecce": "v0.3: 0.94, 0.79, 0.73 of the DVK's error",
}


@pytest.mark.slow
def test_shipped_cnn_meets_the_lesion_target_on_spheres_of_5_ml_and_more(shipped_in_mix):
    """Issue 21: on the spheres of 5.6, 11 and 26 mL the CNN's error of the mean is at most 0.45 of the DVK's
    (v0.2: 0.95, 0.76 and 0.74 of it: it recovers a quarter at most; under 2.6 mL nothing; v0.3: 0.94, 0.79, 0.73)."""
    model, results = shipped_in_mix
    vois = results["chains"]["in-mix"]["vois"]
    shares = {name: abs(vois[name]["cnn"]["signed_error"]) / abs(vois[name]["dvk"]["signed_error"])
              for name in ("sphere_22mm", "sphere_28mm", "sphere_37mm")}
    if model.sha256 in MISSES_SPHERE_TARGET:  # strict: these weights must still miss it, as recorded
        assert max(shares.values()) > SPHERE_TARGET, shares
        pytest.xfail(f"the shipped weights ({MISSES_SPHERE_TARGET[model.sha256]}) miss it: {shares}")
    assert max(shares.values()) <= SPHERE_TARGET, shares
