"""Writing results safely: all-or-nothing into an output folder, never overwriting unless asked."""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import DblurDoseError


class OutputFolder:
    """Collects files in a hidden staging folder and moves them into place only on success.

    Usage::

        with OutputFolder(out_dir, ["dose_rate_dvk.nrrd"], overwrite=False) as stage:
            write_volume(dose, stage / "dose_rate_dvk.nrrd")
    """

    def __init__(self, folder: str | os.PathLike, names: Sequence[str], overwrite: bool = False):
        self.folder = Path(folder)
        self.names = list(names)
        existing = [n for n in self.names if (self.folder / n).exists()]
        if existing and not overwrite:
            raise DblurDoseError(
                f"{self.folder} already holds {', '.join(existing)}; choose another --out folder or pass --overwrite"
            )
        if self.folder.exists() and not self.folder.is_dir():
            raise DblurDoseError(f"--out {self.folder} is a file, not a folder; choose a folder path")
        self._created = not self.folder.exists()
        self.stage: Path | None = None

    def __enter__(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stage = Path(tempfile.mkdtemp(prefix=".dblurdose-", dir=self.folder))
        return self.stage

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self.stage is not None
        try:
            if exc_type is None:
                for path in sorted(self.stage.rglob("*")):
                    if path.is_file():
                        target = self.folder / path.relative_to(self.stage)
                        target.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(path, target)
        finally:
            shutil.rmtree(self.stage, ignore_errors=True)
            if exc_type is not None and self._created:
                shutil.rmtree(self.folder, ignore_errors=True)
        return False


def write_csv(rows: Iterable[dict], path: str | os.PathLike, float_format: str = "{:.6g}") -> Path:
    """Write dict rows as CSV (columns from the first row), floats formatted compactly."""
    rows = list(rows)
    path = Path(path)
    with path.open("w", newline="") as f:
        if not rows:
            return path
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: float_format.format(v) if isinstance(v, float) else v for k, v in row.items()})
    return path
