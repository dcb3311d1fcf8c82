"""Bad input that used to end in a wrong map, a traceback or lost data (issue 14).

Each case asserts what a user sees: a non-zero exit with one line that names the problem and its
fix, no traceback, no result written, and every file that was there before left byte-identical.
Cases accepted on purpose assert their warning and a correct result instead.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import run_dose

from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.io import outputs
from DblurDoseLib.io.outputs import LOCK_NAME, OutputFolder, write_csv
from DblurDoseLib.io.volume import Volume, check_orthogonal, read_volume, write_volume


def _snapshot(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def refused(capsys, paths, out, *extra, code: int = 2, match: str) -> str:
    """Run ``dose``; assert a clean refusal (one line naming ``match``) that changed no file."""
    folder = Path(paths["ct"]).parent
    before = _snapshot(folder)
    out_existed = Path(out).exists()
    assert run_dose(paths, out, *extra) == code
    err = capsys.readouterr().err
    assert match in err, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    after = _snapshot(folder)
    for path, data in before.items():
        assert after.get(path) == data, f"{path} changed"
    new = [p for p in after if p not in before]
    assert not new, f"files written: {new}"
    if not out_existed:
        assert not Path(out).exists()
    return err


def _sheared(volume: Volume) -> Volume:
    shear = np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    return Volume(volume.array, volume.spacing, volume.origin, shear)


# --- (1) geometry that the kernels cannot honour ---------------------------------------------

@pytest.mark.parametrize("which", ["ct", "spect"])
def test_sheared_direction_matrix_is_refused(case, capsys, which):
    tmp, paths, ct, spect = case
    volume = ct if which == "ct" else spect
    path = write_volume(_sheared(volume), tmp / f"sheared_{which}.nrrd")
    assert not np.allclose(read_volume(path).direction, np.eye(3))  # the file really is sheared
    refused(capsys, dict(paths, **{which: path}), tmp / "out", match="not orthogonal")


def test_degenerate_direction_matrix_is_refused(case):
    _, _, ct, _ = case
    flat = np.eye(3)
    flat[:, 2] = flat[:, 1]  # two axes along the same line
    with pytest.raises(DblurDoseError, match="not orthogonal"):
        check_orthogonal(Volume(ct.array, ct.spacing, ct.origin, flat), "CT")
    check_orthogonal(Volume(ct.array, ct.spacing, ct.origin, np.diag([1.0, -1.0, -1.0])), "CT")  # a flip is fine


# --- (2) units: a total activity no patient scan has, a CT with no tissue under the SPECT -----

#: issue 22's two cases: a SPECT in kBq/mL read as Bq/mL (the image divided by 1000) and
#: ``--spect-units mbqml`` on Bq/mL data (1e6 too high): (SPECT factor, options, dose factor, hint)
WRONG_UNITS = {
    "kbqml_read_as_bqml": (1e-3, (), 1e-3, "if the image is in kBq/mL or MBq/mL, give those SPECT units"),
    "bqml_given_as_mbqml": (1.0, ("--spect-units", "mbqml"), 1e6, "give the SPECT units as Bq/mL"),
}


@pytest.mark.parametrize("name", WRONG_UNITS)
def test_implausible_total_activity_is_refused(case, capsys, name):
    tmp, paths, ct, spect = case
    factor, options, _, hint = WRONG_UNITS[name]
    path = write_volume(spect.with_array(spect.array * np.float32(factor)), tmp / "scaled.nrrd")
    err = refused(capsys, dict(paths, spect=path), tmp / "out", *options, match=hint)
    assert "Lu-177 patient scan" in err and "--any-activity" in err


@pytest.mark.parametrize("name", WRONG_UNITS)
def test_any_activity_accepts_it_and_keeps_linearity(case, name):
    tmp, paths, ct, spect = case
    factor, options, dose_factor, _ = WRONG_UNITS[name]
    path = write_volume(spect.with_array(spect.array * np.float32(factor)), tmp / "scaled.nrrd")
    assert run_dose(dict(paths, spect=path), tmp / "scaled", *options, "--any-activity") == 0
    assert run_dose(paths, tmp / "ref") == 0
    scaled = read_volume(tmp / "scaled" / "dose_rate_dvk.nrrd").array
    ref = read_volume(tmp / "ref" / "dose_rate_dvk.nrrd").array
    np.testing.assert_allclose(scaled / dose_factor, ref, rtol=1e-4, atol=1e-6 * ref.max())


def test_every_supported_nuclide_has_a_patient_activity_range():
    from DblurDoseLib import dose
    from DblurDoseLib.physics import nuclides

    for name in nuclides.SUPPORTED:
        lo, hi = nuclides.patient_activity_mbq(name)
        assert 0 < lo < hi
        dose.check_total_activity(np.sqrt(lo * hi), "bqml", "nuclide", name)  # inside: accepted
        for outside in (lo / 2, hi * 2):
            with pytest.raises(DblurDoseError, match=f"{lo:g}-{hi:g} MBq of a {name} patient scan"):
                dose.check_total_activity(outside, "bqml", "nuclide", name)
    dose.check_total_activity(1e9, "bqml", None)  # --any-activity


def test_all_air_ct_is_refused(case, capsys):
    tmp, paths, ct, _ = case
    path = write_volume(ct.with_array(np.full_like(ct.array, -1000.0)), tmp / "air.nrrd")
    refused(capsys, dict(paths, ct=path), tmp / "out", match="all air")


def test_activity_over_air_is_refused_as_misaligned(case, capsys):
    tmp, paths, ct, spect = case
    hu = ct.array.copy()
    hu[12:] = -1000.0  # tissue only in the lower half of the CT ...
    activity = np.zeros_like(spect.array)
    activity[14:20, 8:16, 8:16] = 2e6  # ... activity only in the upper half
    paths = dict(paths, ct=write_volume(ct.with_array(hu), tmp / "half.nrrd"),
                 spect=write_volume(spect.with_array(activity), tmp / "upper.nrrd"))
    refused(capsys, paths, tmp / "out", match="misaligned")


# --- (3) settings: bad numbers blame the setting, unused settings are reported ----------------

@pytest.mark.parametrize("calibration,duration,match", [
    ("nan", "600", "--calibration"), ("0", "600", "--calibration"), ("-3", "600", "--calibration"),
    ("12", "inf", "--duration"), ("12", "0", "--duration"),
])
def test_bad_calibration_or_duration_names_the_setting(case, capsys, calibration, duration, match):
    tmp, paths, ct, spect = case
    counts = write_volume(spect.with_array(spect.array * np.float32(0.01)), tmp / "counts.nrrd")
    err = refused(capsys, dict(paths, spect=counts), tmp / "out", "--spect-units", "counts",
                  "--calibration", calibration, "--duration", duration, match=match)
    assert "SPECT holds" not in err  # the SPECT is not to blame


def test_options_that_do_not_apply_are_warned_about(case, capsys):
    tmp, paths, *_ = case
    assert run_dose(paths, tmp / "out", "--calibration", "12", "--model", str(tmp / "mine.pt")) == 0
    err = capsys.readouterr().err
    assert "the camera calibration is ignored" in err and "the model file is ignored" in err
    assert (tmp / "out" / "dose_rate_dvk.nrrd").exists()


# --- (4) the output folder: checked first, locked, never mixed -------------------------------

def test_output_under_a_file_is_refused_before_any_work(case, capsys):
    tmp, paths, *_ = case
    (tmp / "afile").write_text("mine")
    refused(capsys, paths, tmp / "afile" / "out", match="is a file")


def test_unwritable_output_is_refused_before_any_work(case, capsys, monkeypatch):
    tmp, paths, *_ = case

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(outputs.tempfile, "TemporaryFile", denied)  # root ignores chmod: fail the probe itself
    monkeypatch.setattr("DblurDoseLib.dose.compute_dose_rate_maps", _must_not_run)
    refused(capsys, paths, tmp / "out", match="Permission denied")


def _must_not_run(*args, **kwargs):
    raise AssertionError("the dose was computed although the output was known to fail")


def test_too_little_disk_space_is_refused_before_any_work(case, capsys, monkeypatch):
    tmp, paths, *_ = case
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda p: SimpleNamespace(total=10**9, used=10**9, free=1000))
    monkeypatch.setattr("DblurDoseLib.dose.compute_dose_rate_maps", _must_not_run)
    refused(capsys, paths, tmp / "out", match="not enough free disk space")


def test_disk_full_while_writing_leaves_nothing(case, capsys, monkeypatch):
    tmp, paths, *_ = case
    import DblurDoseLib.io.volume as volume

    def full(*args, **kwargs):
        Path(args[1]).write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(volume, "write_volume", full)
    refused(capsys, paths, tmp / "out", match="No space left on device")


def test_live_lock_refuses_a_second_run(case, capsys):
    tmp, paths, *_ = case
    out = tmp / "out"
    out.mkdir()
    import socket

    (out / LOCK_NAME).write_text(f"{os.getpid()} {socket.gethostname()}\n")
    refused(capsys, paths, out, match="another dblurdose run")
    assert (out / LOCK_NAME).exists()  # not ours to remove


def test_stale_lock_of_a_dead_run_is_taken_over(case):
    tmp, paths, *_ = case
    out = tmp / "out"
    out.mkdir()
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(f"{dead.pid} {socket.gethostname()}\n")
    assert run_dose(paths, out) == 0
    assert (out / "dose_rate_dvk.nrrd").exists() and not (out / LOCK_NAME).exists()


def test_result_that_appears_during_a_run_is_not_replaced(tmp_path):
    folder = tmp_path / "out"
    with pytest.raises(DblurDoseError, match="already holds"):
        with OutputFolder(folder, ["a.txt"]) as stage:
            (stage / "a.txt").write_text("this run")
            (folder / "a.txt").write_text("the other run")  # another run finished first
    assert (folder / "a.txt").read_text() == "the other run"
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt"]  # no staging, no lock


def test_overwrite_removes_an_earlier_runs_tables(case, capsys):
    tmp, paths, *_ = case
    out = tmp / "out"
    assert run_dose(paths, out, "--seg", str(paths["seg"])) == 0
    assert (out / "stats.csv").exists()
    capsys.readouterr()
    assert run_dose(paths, out, "--overwrite") == 0
    assert not (out / "stats.csv").exists() and not (out / "drvh.csv").exists()
    assert "removed" in capsys.readouterr().err


# --- (5) failures in the middle: memory, SIGTERM ---------------------------------------------

@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB"),
                                   MemoryError()])
def test_allocation_failure_is_an_out_of_memory_message(case, capsys, monkeypatch, error):
    tmp, paths, *_ = case

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr("DblurDoseLib.physics.dvk.dvk_dose_rate", fail)
    refused(capsys, paths, tmp / "out", code=3, match="out of memory during the DVK convolution")


def test_other_runtime_errors_are_not_disguised(case, monkeypatch):
    tmp, paths, *_ = case

    def bug(*args, **kwargs):
        raise RuntimeError("shape mismatch in the kernel")

    monkeypatch.setattr("DblurDoseLib.physics.dvk.dvk_dose_rate", bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_dose(paths, tmp / "out")
    assert not (tmp / "out").exists()


def test_sigterm_while_writing_leaves_no_staging(case, capsys, monkeypatch):
    tmp, paths, *_ = case
    import DblurDoseLib.io.volume as volume

    real = volume.write_volume

    def write_then_terminated(*args, **kwargs):
        path = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return path

    monkeypatch.setattr(volume, "write_volume", write_then_terminated)
    previous = signal.getsignal(signal.SIGTERM)
    refused(capsys, paths, tmp / "out", code=143, match="terminated")
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is put back


# --- segmentations, kernels, CSV -------------------------------------------------------------

def test_labelmap_with_too_many_labels_is_refused(case, capsys):
    tmp, paths, ct, _ = case
    labels = np.arange(np.prod(ct.shape), dtype=np.int32).reshape(ct.shape)  # an image, not a labelmap
    path = write_volume(ct.with_array(labels), tmp / "image_as_labels.nrrd")
    refused(capsys, paths, tmp / "out", "--seg", str(path), match="label values")


def test_damaged_cached_kernel_is_refused(tmp_path, monkeypatch):
    import json

    from DblurDoseLib.physics import kernels

    monkeypatch.setenv("DBLURDOSE_CACHE", str(tmp_path / "cache"))
    kernel = kernels.get_kernel("Lu-177", (4.8, 4.8, 4.8))
    path = kernels.save_kernel(kernel, tmp_path / "k.npz")
    assert kernels.load_kernel(path, "cached").electron.sum() == pytest.approx(kernel.electron.sum(), rel=1e-6)
    with np.load(path) as f:
        parts = {k: f[k] for k in f.files}
    parts["photon_octant"] = parts["photon_octant"].copy()
    parts["photon_octant"][0, 0, 0] *= 2  # one voxel changed, checksum kept
    np.savez_compressed(path, **parts)
    with pytest.raises(DblurDoseError, match="fails its checksum"):
        kernels.load_kernel(path, "cached")
    path.write_bytes(path.read_bytes()[:200])  # truncated
    with pytest.raises(DblurDoseError, match="damaged"):
        kernels.load_kernel(path, "cached")
    meta = json.loads(str(parts["meta"]))
    del meta["sha256"]
    np.savez_compressed(path, **dict(parts, meta=np.array(json.dumps(meta))))
    with pytest.raises(DblurDoseError, match="no checksum"):
        kernels.load_kernel(path, "cached")


def test_every_shipped_kernel_passes_its_checksum():
    from DblurDoseLib.physics import kernels

    files = sorted(kernels.KERNEL_DIR.glob("*mm.npz"))  # the kernels (Lu-177_dpk.npz is the point kernel)
    assert files
    for path in files:
        assert kernels.load_kernel(path).electron.sum() > 0


def test_formula_like_segment_names_are_neutralised_in_csv(tmp_path):
    import csv

    names = ['=HYPERLINK("http://x")', "-kidney", "+1", "@SUM(A1)", "liver", "kidney-left"]
    path = write_csv([{"segment": n, "mean": 1.5} for n in names], tmp_path / "t.csv", header=["made by a test"])
    lines = path.read_text().splitlines()
    assert lines[0] == "# made by a test"
    cells = [row["segment"] for row in csv.DictReader(lines[1:])]
    assert cells == ["'" + n for n in names[:4]] + names[4:]


def test_volume_node_given_as_segmentation_is_refused_in_slicer():
    pytest.importorskip("slicer")
    from slicer_helpers import SlicerScene, small_case

    from DblurDoseLib import mrml

    scene = SlicerScene()
    data = small_case()
    spect = scene.add_volume(data.spect, "SPECT")
    mrml.setSpectUnits(spect, "bqml")
    ct = scene.add_volume(data.ct, "CT")
    labels = scene.add_volume(data.labels, "labels")
    nodes = scene.scene.GetNumberOfNodes()
    with pytest.raises(DblurDoseError, match="not a segmentation"):
        mrml.computeDoseRateMaps(spect, ct, labels, methods=("dvk",))
    assert scene.scene.GetNumberOfNodes() == nodes  # nothing added to the scene


# --- the matrix: one row per kind of bad file or setting (issue 13) -------------------------
# Each maker gets (tmp, ct, spect) and returns ({input: path}, [extra CLI arguments]).

def _file(tmp, name, data: bytes):
    path = tmp / name
    path.write_bytes(data)
    return path


def _sitk_file(tmp, name, image):
    path = tmp / name
    sitk.WriteImage(image, str(path))
    return path


def _with(volume, tmp, name, array=None, spacing=None, origin=None):
    array = volume.array if array is None else array
    return write_volume(Volume(array, spacing or volume.spacing, origin or volume.origin, volume.direction), tmp / name)


def _raw_spacing(tmp, name, volume, spacing: str):
    """An NRRD whose header states a spacing Volume itself would refuse (zero, negative)."""
    path = write_volume(volume, tmp / name, compress=False)
    text = path.read_bytes()
    head, _, body = text.partition(b"\n\n")
    lines = [line for line in head.split(b"\n") if not line.startswith(b"space directions")]
    lines.append(b"space directions: (" + spacing.encode() + b",0,0) (0,4.8,0) (0,0,4.8)")
    path.write_bytes(b"\n".join(lines) + b"\n\n" + body)
    return path


def _png(tmp):
    png = _sitk_file(tmp, "picture.png", sitk.Image(16, 16, sitk.sitkUInt8))
    return _file(tmp, "picture.nrrd", png.read_bytes())


def _truncated(tmp, spect):
    path = write_volume(spect, tmp / "whole.nrrd", compress=False)
    return _file(tmp, "truncated.nrrd", path.read_bytes()[: len(path.read_bytes()) // 2])


def _image(pixel, size=(24, 24, 24), components=1):
    image = sitk.Image(list(size), pixel, components) if components > 1 else sitk.Image(list(size), pixel)
    image.SetSpacing([4.8] * len(size))
    return image


def _shifted_spect(tmp, spect, fraction_out: float):
    """The SPECT moved along x so that about ``fraction_out`` of its activity leaves the CT field."""
    lo = spect.physical_corners().min(0)[0]
    width = spect.physical_corners().max(0)[0] - lo
    origin = (spect.origin[0] + width * fraction_out * 1.15, spect.origin[1], spect.origin[2])
    return _with(spect, tmp, f"shifted_{fraction_out}.nrrd", origin=origin)


MATRIX = {
    # kind: (maker, match)
    "missing file": (lambda tmp, ct, spect: ({"spect": tmp / "nope.nrrd"}, []), "file not found"),
    "directory for a file": (lambda tmp, ct, spect: ({"spect": _mkdir(tmp / "a folder")}, []), "no DICOM series"),
    "empty file": (lambda tmp, ct, spect: ({"spect": _file(tmp, "empty.nrrd", b"")}, []), "could not read"),
    "truncated NRRD": (lambda tmp, ct, spect: ({"spect": _truncated(tmp, spect)}, []), "could not read"),
    "PNG renamed .nrrd": (lambda tmp, ct, spect: ({"spect": _png(tmp)}, []), "3D"),
    "2D image": (lambda tmp, ct, spect: ({"ct": _sitk_file(tmp, "flat.nrrd", _image(sitk.sitkInt16, (24, 24)))},
                                         []), "3D"),
    "4D image": (lambda tmp, ct, spect: ({"spect": _sitk_file(tmp, "time.nrrd",
                                                              _image(sitk.sitkFloat32, (8, 8, 8, 3)))}, []),
                 "3D"),
    "RGB image": (lambda tmp, ct, spect: ({"spect": _sitk_file(tmp, "rgb.nrrd",
                                                               _image(sitk.sitkVectorUInt8, components=3))}, []),
                  "scalar"),
    "complex pixels": (lambda tmp, ct, spect: ({"spect": _sitk_file(tmp, "complex.nrrd",
                                                                    _image(sitk.sitkComplexFloat32))}, []),
                       "complex"),
    "NaN in SPECT": (lambda tmp, ct, spect: ({"spect": _with(spect, tmp, "nan.nrrd", _poke(spect.array, np.nan))}, []),
                     "NaN"),
    "Inf in SPECT": (lambda tmp, ct, spect: ({"spect": _with(spect, tmp, "inf.nrrd", _poke(spect.array, np.inf))}, []),
                     "NaN or infinite"),
    "NaN in CT": (lambda tmp, ct, spect: ({"ct": _with(ct, tmp, "nan_ct.nrrd", _poke(ct.array, np.nan))}, []), "NaN"),
    "Inf in CT": (lambda tmp, ct, spect: ({"ct": _with(ct, tmp, "inf_ct.nrrd", _poke(ct.array, -np.inf))}, []),
                  "infinite"),
    "negative activity": (lambda tmp, ct, spect: ({"spect": _with(spect, tmp, "neg.nrrd", _poke(spect.array, -5e5))},
                                                  []), "--clip-negative"),
    "all-zero SPECT": (lambda tmp, ct, spect: ({"spect": _with(spect, tmp, "zero.nrrd", spect.array * 0)}, []),
                       "no activity"),
    "no overlap": (lambda tmp, ct, spect: ({"spect": _with(spect, tmp, "far.nrrd", origin=(900.0, 0.0, 0.0))}, []),
                   "do not overlap"),
    "partial overlap below half": (lambda tmp, ct, spect: ({"spect": _shifted_spect(tmp, spect, 0.7)}, []),
                                   "inside the CT field"),
    "zero spacing": (lambda tmp, ct, spect: ({"spect": _raw_spacing(tmp, "zero_sp.nrrd", spect, "0")}, []), "spacing"),
    "huge spacing": (lambda tmp, ct, spect: ({"ct": _with(ct, tmp, "huge_sp.nrrd", spacing=(4.8e4, 4.8, 4.8))}, []),
                     "spacing"),
    "CT of raw stored values": (lambda tmp, ct, spect: ({"ct": _with(ct, tmp, "raw.nrrd", ct.array + 1024)}, []),
                                "Hounsfield"),
    "SPECT and CT swapped": (lambda tmp, ct, spect: ({"spect": _with(ct, tmp, "ct_as_spect.nrrd"),
                                                      "ct": _with(spect, tmp, "spect_as_ct.nrrd")}, []),
                             "the SPECT and CT look swapped: exchange the two inputs"),
    "CT as a density map": (lambda tmp, ct, spect: ({"ct": _with(ct, tmp, "dens.nrrd", (ct.array + 1000) / 1000)}, []),
                            "density map"),
    "segmentation outside the CT": (lambda tmp, ct, spect: ({}, ["--seg", str(write_volume(
        Volume(np.ones((3, 3, 3), np.int16), (4.8,) * 3, (800.0, 0.0, 0.0)), tmp / "far_seg.nrrd"))]), "empty"),
    "labels with fractions": (lambda tmp, ct, spect: ({}, ["--seg", str(_with(ct, tmp, "float_labels.nrrd",
                                                                           _float_labels(ct.shape)))]), "non-integer"),
    "counts without calibration": (lambda tmp, ct, spect: ({}, ["--spect-units", "counts"]), "--calibration"),
    "output path is a file": (lambda tmp, ct, spect: ({"out": _file(tmp, "results", b"mine")}, []), "is a file"),
    "corrupted model": (lambda tmp, ct, spect: ({}, ["--method", "cnn", "--model", str(_file(tmp, "m.pt", b"not a torch file"))]),
                        "corrupted"),
    "model of another architecture": (lambda tmp, ct, spect: ({}, ["--method", "cnn", "--model", str(_foreign_model(tmp))]),
                                      "model"),
    "CUDA without a GPU": (lambda tmp, ct, spect: ({}, ["--device", "cuda"]), "CUDA"),
}


def _mkdir(path):
    path.mkdir()
    return path


def _poke(array, value):
    out = array.copy()
    out[12, 12, 12] = value
    return out


def _float_labels(shape):
    labels = np.zeros(shape, np.float32)
    labels[10:14, 10:14, 10:14] = 1.5
    return labels


def _foreign_model(tmp):
    import torch

    path = tmp / "foreign.pt"
    torch.save({"state_dict": {"layer.weight": torch.zeros(3, 3)}, "config": {"kind": "resnet"}}, path)
    return path


@pytest.mark.parametrize("kind", list(MATRIX))
def test_bad_input_matrix(case, capsys, kind):
    tmp, paths, ct, spect = case
    if kind == "CUDA without a GPU":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    maker, match = MATRIX[kind]
    files, extra = maker(tmp, ct, spect)
    out = files.pop("out", tmp / "out")
    refused(capsys, dict(paths, **files), out, *extra, match=match)


# --- accepted on purpose: the warning, and the right result ----------------------------------

def _dose(out) -> np.ndarray:
    return read_volume(Path(out) / "dose_rate_dvk.nrrd").array


def test_negative_spacing_in_the_header_is_a_flip_and_gives_the_same_dose(case):
    """NRRD 'space directions' with a negative step is a mirrored axis, not an error: same patient, same dose."""
    tmp, paths, ct, spect = case
    far_x = spect.origin[0] + (spect.shape[2] - 1) * spect.spacing[0]
    flipped = Volume(spect.array[:, :, ::-1].copy(), spect.spacing, (far_x, *spect.origin[1:]),
                     np.diag([-1.0, 1.0, 1.0]))
    path = _raw_spacing(tmp, "flipped.nrrd", flipped, "-4.8")
    assert np.allclose(read_volume(path).direction, np.diag([-1.0, 1.0, 1.0]))
    assert run_dose(dict(paths, spect=path), tmp / "flipped") == 0
    assert run_dose(paths, tmp / "ref") == 0
    np.testing.assert_allclose(_dose(tmp / "flipped"), _dose(tmp / "ref"), rtol=1e-4, atol=1e-6 * _dose(tmp / "ref").max())


def test_int64_and_odd_paths_are_accepted(case):
    """64-bit integer pixels and paths with spaces and non-ASCII characters read like any other."""
    tmp, paths, ct, spect = case
    folder = tmp / "Patient Ä Ørsted 患者"
    folder.mkdir()
    ct64 = write_volume(ct.with_array(ct.array.astype(np.int64)), folder / "CT scan é.nrrd")
    assert run_dose(dict(paths, ct=ct64), folder / "résultats dose") == 0
    assert run_dose(paths, tmp / "ref") == 0
    np.testing.assert_array_equal(_dose(folder / "résultats dose"), _dose(tmp / "ref"))


def test_partial_overlap_above_half_is_accepted_with_a_warning(case, capsys):
    tmp, paths, ct, spect = case
    shifted = _shifted_spect(tmp, spect, 0.2)
    assert run_dose(dict(paths, spect=shifted), tmp / "out") == 0
    err = capsys.readouterr().err
    assert "lies outside the CT field and is not counted" in err
    share = int(err.split("% of the SPECT activity")[0].split()[-1])
    assert 10 <= share <= 35
    assert _dose(tmp / "out").max() > 0


# --- the same refusals through the Slicer bridge: a DblurDoseError, nothing added to the scene --

SLICER_MATRIX = {
    "NaN in SPECT": (lambda ct, spect: (ct, spect.with_array(_poke(spect.array, np.nan))), {}, "NaN"),
    "Inf in CT": (lambda ct, spect: (ct.with_array(_poke(ct.array, np.inf)), spect), {}, "infinite"),
    "negative activity": (lambda ct, spect: (ct, spect.with_array(_poke(spect.array, -5e5))), {}, "negative"),
    "all-zero SPECT": (lambda ct, spect: (ct, spect.with_array(spect.array * 0)), {}, "no activity"),
    "no overlap": (lambda ct, spect: (ct, Volume(spect.array, spect.spacing, (900.0, 0, 0))), {}, "do not overlap"),
    "sheared CT": (lambda ct, spect: (_sheared(ct), spect), {}, "not orthogonal"),
    "CT of raw stored values": (lambda ct, spect: (ct.with_array(ct.array + 1024), spect), {}, "Hounsfield"),
    "all-air CT": (lambda ct, spect: (ct.with_array(ct.array * 0 - 1000), spect), {}, "all air"),
    "SPECT and CT swapped": (lambda ct, spect: (spect, ct), {}, "look swapped"),
    "kBq/mL read as Bq/mL": (lambda ct, spect: (ct, spect.with_array(spect.array / 1000)), {}, "units"),
    "counts without calibration": (lambda ct, spect: (ct, spect), {"spect_units": "counts"}, "calibration"),
}


@pytest.mark.parametrize("kind", list(SLICER_MATRIX))
def test_bad_input_matrix_in_slicer(case, kind):
    pytest.importorskip("slicer")
    from slicer_helpers import SlicerScene

    from DblurDoseLib import mrml

    _, _, ct, spect = case
    make, options, match = SLICER_MATRIX[kind]
    ct, spect = make(ct, spect)
    scene = SlicerScene()
    spect_node = scene.add_volume(spect, "SPECT")
    mrml.setSpectUnits(spect_node, "bqml")
    ct_node = scene.add_volume(ct, "CT")
    nodes = scene.scene.GetNumberOfNodes()
    with pytest.raises(DblurDoseError, match=match) as error:
        mrml.computeDoseRateMaps(spect_node, ct_node, methods=("dvk",), device="cpu", **options)
    assert "\n" not in str(error.value)
    assert scene.scene.GetNumberOfNodes() == nodes


def _unshare_available() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux" or not _unshare_available(),
                    reason="needs Linux user and mount namespaces (unshare -rm) to mount a small tmpfs")
@pytest.mark.parametrize("options, match", [
    ("size=16k", "not enough free disk space"),  # refused before any work
    ("size=64m,nr_inodes=4", "No space left on device"),  # the staging folder, then its first file fails
    ("size=64m,nr_inodes=5", "No space left on device"),  # the map written, the statistics table fails
    ("size=64m,nr_inodes=6", "No space left on device"),  # the last table fails
])
def test_real_full_disk_gives_one_line_and_leaves_nothing(case, options, match):
    """A real full file system (a tmpfs of a few kB, or with too few inodes so that the run fails half-way
    through writing): exit 2, one line naming the problem, and nothing left on it."""
    tmp, paths, _, _ = case
    mount = tmp / "small-disk"
    mount.mkdir()
    root = Path(__file__).resolve().parents[1]
    command = " ".join([
        f"mount -t tmpfs -o {options} tmpfs '{mount}' &&",
        f"'{sys.executable}' -m DblurDoseLib.cli dose --spect '{paths['spect']}' --ct '{paths['ct']}'",
        f"--seg '{paths['seg']}' --out '{mount}/out' --quiet; echo rc=$?; find '{mount}' -mindepth 1",
    ])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(["unshare", "-rm", "sh", "-c", command], capture_output=True, text=True, timeout=300,
                          env=env)
    lines = done.stdout.strip().splitlines()
    assert lines and lines[0] == "rc=2", done.stdout + done.stderr
    assert lines[1:] == [], f"left on the full disk: {lines[1:]}"
    err = done.stderr.strip()
    assert match in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
