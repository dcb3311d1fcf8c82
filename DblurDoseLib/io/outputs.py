"""Writing results safely: all-or-nothing into an output folder, never overwriting unless asked.

:class:`OutputFolder` checks the folder before any work is done (not a file, writable, no
results already there unless ``overwrite``), takes a lock file while a run writes into it (two
runs into the same folder: the second is refused), stages every file in a hidden folder and
moves them into place only when all were written, checking once more that nothing appeared in
the meantime. On any failure (including SIGTERM, see :func:`~DblurDoseLib.errors.sigterm_unwinds`)
the staging folder, and the output folder if this run created it, are removed.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from ..errors import DblurDoseError

LOCK_NAME = ".dblurdose.lock"
#: first characters that make spreadsheet programs read a cell as a formula (CSV injection)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (another user's counts): the test by which a lock or a
    temporary folder left by a killed run is told from a live run's."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputFolder:
    """Collects files in a hidden staging folder and moves them into place only on success.

    Usage::

        with OutputFolder(out_dir, ["dose_rate_dvk.nrrd"], overwrite=False) as stage:
            write_volume(dose, stage / "dose_rate_dvk.nrrd")

    ``stale``: names of earlier results of the same kind that this run does not write (say
    ``stats.csv`` when no segmentation is given); with ``overwrite`` they are removed at the final
    move, so that the folder never mixes results of two runs. ``removed`` lists them afterwards.
    """

    def __init__(self, folder: str | os.PathLike, names: Sequence[str], overwrite: bool = False,
                 stale: Sequence[str] = ()):
        self.folder = Path(folder)
        self.names = list(names)
        self.overwrite = overwrite
        self.stale = [n for n in stale if n not in self.names]
        self.removed: list[str] = []
        if self.folder.exists() and not self.folder.is_dir():
            raise DblurDoseError(f"the output folder {self.folder} is a file, not a folder; choose a folder path",
                                 settings=("out",))
        self._refuse_existing()
        base = _nearest_existing(self.folder)
        if not base.is_dir():
            raise DblurDoseError(f"the output folder {self.folder} cannot be made: {base} is a file, not a folder; "
                                 "choose another path", settings=("out",))
        try:  # a real write, not os.access: read-only mounts and root
            with tempfile.TemporaryFile(dir=base, prefix=".dblurdose-probe-"):
                pass
        except OSError as exc:
            raise DblurDoseError(
                f"cannot write into {base} ({exc.strerror or exc}); choose an output folder you can write to", settings=("out",)
            ) from None
        self._refuse_live_lock()  # before any work; the lock is taken on entry
        self._created = not self.folder.exists()
        self.stage: Path | None = None
        self._lock: Path | None = None
        self._moved: list[Path] = []

    def _refuse_existing(self) -> None:
        existing = [n for n in self.names if (self.folder / n).exists()]
        if existing and not self.overwrite:
            raise DblurDoseError(
                f"{self.folder} already holds {', '.join(existing)}; choose another output folder or allow overwriting",
                settings=("out", "overwrite"),
            )

    def require_space(self, nbytes: float) -> None:
        """Refuse before computing when the output's file system has less than ``nbytes`` free.

        Parameters
        ----------
        nbytes : float
            Bytes the results will take (an estimate).

        Raises
        ------
        DblurDoseError
            When the file system of the folder (or its nearest existing parent) has less free.
        """
        free = shutil.disk_usage(_nearest_existing(self.folder)).free
        if free < nbytes:
            raise DblurDoseError(
                f"not enough free disk space for the results in {self.folder}: about {nbytes / 1e6:.0f} MB needed, "
                f"{free / 1e6:.0f} MB free; free some space or choose another output folder", settings=("out",)
            )

    def _refuse_live_lock(self) -> None:
        """Refuse when another run holds the folder's lock; remove a lock left by a run that died."""
        lock = self.folder / LOCK_NAME
        if not self.folder.is_dir():
            return
        try:
            pid_text, host = (lock.read_text().split() + ["", ""])[:2]
        except FileNotFoundError:
            return
        except OSError:
            pid_text, host = "", ""
        pid = int(pid_text) if pid_text.isdigit() else -1
        if host == socket.gethostname() and pid > 0 and not pid_alive(pid):
            lock.unlink(missing_ok=True)  # left by a run that was killed: take it over
            return
        raise DblurDoseError(
            f"another dblurdose run (process {pid} on {host or 'an unknown machine'}) is writing into "
            f"{self.folder}; wait for it to finish or choose another output folder (if no run is active, "
            f"delete {lock})", settings=("out",)
        )

    def _take_lock(self) -> None:
        lock = self.folder / LOCK_NAME
        text = f"{os.getpid()} {socket.gethostname()}\n"
        for _attempt in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._refuse_live_lock()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(text)
            self._lock = lock
            return
        raise DblurDoseError(f"could not take the lock {lock}; delete it if no dblurdose run is active")

    def __enter__(self) -> Path:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._take_lock()
            self.stage = Path(tempfile.mkdtemp(prefix=".dblurdose-", dir=self.folder))
        except OSError as exc:
            self._cleanup(failed=True)
            raise DblurDoseError(f"cannot write into {self.folder} ({exc.strerror or exc}); choose another output folder",
                                 settings=("out",)) from None
        except BaseException:
            self._cleanup(failed=True)
            raise
        return self.stage

    def _move_into_place(self) -> None:
        assert self.stage is not None
        self._refuse_existing()  # again: another run may have finished in the meantime
        files = sorted(p for p in self.stage.rglob("*") if p.is_file())
        for path in files:
            target = self.folder / path.relative_to(self.stage)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            self._moved.append(target)
        if self.overwrite:
            for name in self.stale:
                if (self.folder / name).is_file():
                    (self.folder / name).unlink()
                    self.removed.append(name)
                    if (self.folder / name).parent != self.folder:  # a sub-folder (dicom/) left empty goes too
                        with contextlib.suppress(OSError):
                            (self.folder / name).parent.rmdir()

    def _cleanup(self, failed: bool) -> None:
        if self.stage is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
            self.stage = None
        if self._lock is not None:
            self._lock.unlink(missing_ok=True)
            self._lock = None
        if failed:
            for path in self._moved:  # a move that failed half-way: no mix of two runs' results
                path.unlink(missing_ok=True)
            folders = {p.parent for p in self._moved if p.parent != self.folder}
            if self._created:
                folders.add(self.folder)
            for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):  # only if empty: another run may have written there
                    folder.rmdir()

    def __exit__(self, exc_type, exc, tb) -> bool:
        failed = exc_type is not None
        try:
            if not failed:
                self._move_into_place()
        except DblurDoseError:
            failed = True
            raise
        except OSError as e:
            failed = True
            raise DblurDoseError(
                f"could not write the results into {self.folder} ({e.strerror or e}); free disk space or choose "
                "another output folder. Nothing was written", settings=("out",)
            ) from None
        finally:
            self._cleanup(failed)
        if failed and isinstance(exc, (OSError, RuntimeError)) and _looks_like_write_failure(exc):
            raise DblurDoseError(
                f"could not write the results into {self.folder} ({_reason(exc)}); free disk space or choose another "
                "output folder. Nothing was written", settings=("out",)
            ) from None
        return False


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__


def _looks_like_write_failure(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return True
    text = str(exc).lower()  # SimpleITK reports failed writes as RuntimeError
    return any(s in text for s in ("no space", "write", "permission denied", "could not create"))


def input_checksum(path: str | os.PathLike) -> str:
    """SHA-256 of an input file, or of a folder's files (a DICOM series: names and contents, sorted).

    Parameters
    ----------
    path : str or os.PathLike
        A file or folder.

    Returns
    -------
    str
        The hex digest.
    """
    import hashlib

    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def neutralise_cell(value: object) -> object:
    """A text cell that a spreadsheet would run as a formula gets a leading apostrophe (OWASP).

    Parameters
    ----------
    value : object
        A CSV cell or column name.

    Returns
    -------
    object
        ``"'" + value`` for text starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return;
        ``value`` unchanged otherwise.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def write_csv(rows: Iterable[dict], path: str | os.PathLike, float_format: str = "{:.6g}",
              header: Sequence[str] = ()) -> Path:
    """Write dict rows as CSV (columns from the first row), floats formatted compactly.

    Text cells that a spreadsheet would read as a formula (segment names starting with ``=``, ``+``,
    ``-``, ``@``) are neutralised with a leading apostrophe (:func:`neutralise_cell`).

    Parameters
    ----------
    rows : iterable of dict
        One dict per row; the first row's keys are the columns. Values keep their units (the
        column names say which).
    path : str or os.PathLike
        The CSV file written (replaced if it exists).
    float_format : str
        Format of float cells.
    header : sequence of str
        Lines written first, each as ``# line`` (provenance).

    Returns
    -------
    Path
        ``path``.
    """
    rows = list(rows)
    path = Path(path)
    with path.open("w", newline="") as f:
        for line in header:
            f.write(f"# {line}\n")
        if not rows:
            return path
        writer = csv.DictWriter(f, fieldnames=[neutralise_cell(k) for k in rows[0].keys()])
        writer.writeheader()
        for row in rows:
            writer.writerow({neutralise_cell(k): float_format.format(v) if isinstance(v, float) else neutralise_cell(v)
                             for k, v in row.items()})
    return path


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, part_suffix: str = ".part") -> Iterator[Path]:
    """Context manager: write a file under a temporary name next to ``path``; it takes ``path``'s name only when whole.

    When the block ends normally the file replaces ``path`` atomically; when it raises, Ctrl-C and
    SIGTERM included, the temporary file is removed, so a file under its final name is always
    complete and nothing half-written is left (resumable jobs rely on this).

    Parameters
    ----------
    path : str or os.PathLike
        The final file.
    part_suffix : str
        Appended to ``path`` for the temporary name; give one that keeps the file type a writer
        needs, e.g. ``".part.nrrd"``.

    Yields
    ------
    Path
        The temporary path (``path`` + ``part_suffix``) to write.
    """
    path = Path(path)
    tmp = path.with_name(path.name + part_suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
