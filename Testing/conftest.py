"""Shared fixtures: small synthetic SPECT/CT pairs with explicit geometry."""

from __future__ import annotations

import os

import numpy as np
import pytest

from DblurDoseLib.volume import Volume


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
