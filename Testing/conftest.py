"""Shared fixtures: small synthetic SPECT/CT pairs with explicit geometry."""

from __future__ import annotations

import os

import numpy as np
import pytest

from DblurDoseLib.io.volume import Volume


@pytest.fixture(autouse=True, scope="session")
def private_kernel_cache(tmp_path_factory):
    """Kernels derived or built by the tests go to a folder of the session's, not the user's cache."""
    before = os.environ.get("DBLURDOSE_CACHE")
    os.environ["DBLURDOSE_CACHE"] = str(tmp_path_factory.mktemp("dblurdose_cache"))
    yield
    if before is None:
        os.environ.pop("DBLURDOSE_CACHE", None)
    else:
        os.environ["DBLURDOSE_CACHE"] = before


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if not has_gpu:
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
    if os.environ.get("DBLURDOSE_PAPER_TESTS") != "1":
        skip = pytest.mark.skip(reason="paper-size run (minutes): set DBLURDOSE_PAPER_TESTS=1")
        for item in items:
            if "paper" in item.keywords:
                item.add_marker(skip)


def water_phantom_ct(shape=(40, 40, 40), spacing=(4.8, 4.8, 4.8), hu_inside=0.0, margin=3) -> Volume:
    """A CT (HU) of a water block filling the field but for an air margin of ``margin`` voxels."""
    hu = np.full(shape, -1000.0, dtype=np.float32)
    m = margin
    hu[m:-m, m:-m, m:-m] = hu_inside
    origin = tuple(-(n - 1) / 2 * s for n, s in zip(shape[::-1], spacing))
    return Volume(hu, spacing, origin)


def uniform_spect_like(ct: Volume, bqml: float = 1e6, margin=3) -> Volume:
    """A SPECT on the CT's own grid with uniform concentration inside the water block."""
    a = np.zeros(ct.shape, dtype=np.float32)
    m = margin
    a[m:-m, m:-m, m:-m] = bqml
    return ct.with_array(a)


@pytest.fixture
def water_ct() -> Volume:
    return water_phantom_ct()


@pytest.fixture
def uniform_spect(water_ct) -> Volume:
    return uniform_spect_like(water_ct)


def run_dose(paths: dict, out, *extra) -> int:
    """``dblurdose dose`` on ``paths['spect']`` and ``paths['ct']`` into ``out``; the exit code."""
    from DblurDoseLib.cli import main

    return main(["dose", "--spect", str(paths["spect"]), "--ct", str(paths["ct"]), "--out", str(out), "--quiet",
                 *extra])


@pytest.fixture
def case(tmp_path):
    """Files of a small SPECT/CT (129 MBq in a water block, a hot cube) and a two-label labelmap."""
    from DblurDoseLib.io.volume import write_volume

    ct = water_phantom_ct((24, 24, 24), (4.8, 4.8, 4.8))
    spect = uniform_spect_like(ct, 2e5)
    spect.array[10:14, 10:14, 10:14] = 8e5
    labels = ct.with_array(np.zeros(ct.shape, np.int16))
    labels.array[10:14, 10:14, 10:14] = 1
    labels.array[5:8, 5:8, 5:8] = 2
    paths = {
        "ct": write_volume(ct, tmp_path / "ct.nrrd"),
        "spect": write_volume(spect, tmp_path / "spect.nii.gz"),
        "seg": write_volume(labels, tmp_path / "labels.nrrd"),
    }
    return tmp_path, paths, ct, spect
