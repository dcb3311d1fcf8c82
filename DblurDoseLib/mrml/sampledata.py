"""The demo case as files Slicer's Sample Data module can load: CT, SPECT, organs, a profile line.

Everything is generated locally (a virtual patient from :mod:`DblurDoseLib.simulation.phantom` and a
SPECT-like blurred image of its activity, :func:`DblurDoseLib.demo.spect_like`); nothing is
downloaded. Files:

* ``<name>-CT.nrrd`` - CT in HU;
* ``<name>-SPECT.nrrd`` - activity concentration in Bq/mL on a 4.8 mm grid;
* ``<name>-organs.seg.nrrd`` - the phantom's labels as a Slicer segmentation (one segment per
  label, named and coloured);
* ``<name>-line.mrk.json`` - a Slicer markups line, left to right through the kidneys.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import DblurDoseError
from ..io.slicer_files import write_line_json, write_seg_nrrd
from ..io.volume import Volume

#: Bump when the generated data change, so that stale cached files are not reused.
DEMO_DATA_VERSION = 1
#: Smaller variant for automated tests inside Slicer (quarter the voxels of the demo).
TEST_SHAPE = (65, 128, 128)

def demo_file_names(name: str = f"DblurDoseDemo-v{DEMO_DATA_VERSION}") -> dict[str, str]:
    """File names of the demo case, by role."""
    return {"ct": f"{name}-CT.nrrd", "spect": f"{name}-SPECT.nrrd",
            "segmentation": f"{name}-organs.seg.nrrd", "line": f"{name}-line.mrk.json"}


def kidney_line(labels: Volume, names: dict[int, str]) -> tuple[np.ndarray, np.ndarray]:
    """A left-right line across the field through the kidneys' centroid (the labels' when none is named kidney).

    Returns
    -------
    start, end : numpy.ndarray
        The line's ends, LPS, mm, at the first and last column of the grid.
    """
    array = np.asarray(labels.array)
    kidney = [v for v, n in names.items() if "kidney" in n.lower()]
    mask = np.isin(array, kidney) if kidney else array > 0
    if not mask.any():
        mask = np.ones(array.shape, bool)
    z, y, _x = (int(round(c)) for c in np.argwhere(mask).mean(axis=0))
    ends = []
    for i in (0, array.shape[2] - 1):
        ends.append(np.asarray(labels.origin) + labels.direction @ (np.array([i, y, z]) * np.asarray(labels.spacing)))
    return ends[0], ends[1]


def write_demo_case(
    folder: str | os.PathLike,
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    seed: int = 3,
    name: str = f"DblurDoseDemo-v{DEMO_DATA_VERSION}",
    overwrite: bool = False,
    progress: Callable[[float, str], object] | None = None,
) -> dict[str, Path]:
    """Write (or reuse) the demo files in ``folder``.

    Existing complete sets are reused unless ``overwrite``. Files appear only when all are
    written (temporary names first), so an interrupted run never leaves a half set behind.

    Parameters
    ----------
    folder : path-like
        Where the files go (made when missing).
    shape : tuple of int, optional
        (z, y, x) voxels; the command-line demo's grid by default.
    spacing : tuple of float, optional
        (x, y, z) mm; the demo's, or for another ``shape`` the spacing that covers the standard field.
    seed : int
        The virtual patient's seed.
    name : str
        File-name stem (:func:`demo_file_names`).
    overwrite : bool
        Write again even when a complete set exists.
    progress : callable, optional
        ``progress(fraction, message)``; returning False cancels (DblurDoseError, nothing written).

    Returns
    -------
    dict of str to pathlib.Path
        The files by role: 'ct' (HU), 'spect' (Bq/mL), 'segmentation' (.seg.nrrd), 'line' (.mrk.json).
    """
    from ..demo import DEMO_SHAPE, DEMO_SPACING, spect_like
    from ..io.volume import write_volume
    from ..simulation.phantom import make_phantom

    folder = Path(folder)
    paths = {role: folder / file_name for role, file_name in demo_file_names(name).items()}
    if not overwrite and all(p.exists() and p.stat().st_size > 0 for p in paths.values()):
        return paths
    def say(fraction: float, message: str) -> None:
        if progress is not None and progress(fraction, message) is False:
            raise DblurDoseError("cancelled by the user; no demo files were written")

    folder.mkdir(parents=True, exist_ok=True)
    say(0.0, "making a virtual patient")
    if shape is None:
        shape, spacing = DEMO_SHAPE, spacing or DEMO_SPACING
    phantom = make_phantom(seed, shape=shape, spacing=spacing, time_days=1.0)
    say(0.5, "simulating a SPECT-like image")
    spect = spect_like(phantom.activity)
    say(0.8, "writing the demo files")
    staged = {role: p.with_name(f".part-{p.name}") for role, p in paths.items()}
    try:
        write_volume(phantom.hu, staged["ct"], overwrite=True)
        write_volume(spect, staged["spect"], overwrite=True)
        write_seg_nrrd(phantom.labels, dict(phantom.label_names), staged["segmentation"])
        write_line_json(*kidney_line(phantom.labels, dict(phantom.label_names)), staged["line"])
        for role, p in paths.items():
            os.replace(staged[role], p)
    finally:
        for p in staged.values():
            p.unlink(missing_ok=True)
    say(1.0, "demo files ready")
    return paths
