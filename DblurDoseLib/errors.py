"""The one exception type that reaches users: a message naming the problem and its fix.

Also: turning allocation failures (numpy, torch on CPU or GPU) into that exception, and a
SIGTERM handler that unwinds like Ctrl-C so that staging folders are cleaned up.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Mapping, Sequence

#: The settings an error can point the user at, one key per idea. Messages name the fix in words
#: that fit every front end ("give the SPECT's units"); the front end adds its own name for the
#: setting: the command line its flag (``cli.FLAGS``), the Slicer module its widget label
#: (``DblurDose.SETTING_LABELS``). Testing/test_errors.py checks that both name every key.
SETTINGS = (
    "spect", "ct", "spect_units", "calibration", "duration", "any_activity", "clip_negative", "method",
    "model", "device", "memory_gb", "out", "overwrite", "timepoints", "administration_time",
    "administered_mbq", "single_time_point", "fit", "calibration_uncertainty", "earlier_cycles", "segments",
    "nuclide", "hu_calibration", "register", "dicom_out", "spect_series", "ct_series", "spect_fwhm",
)


class DblurDoseError(Exception):
    """A problem with the user's input or environment; the message says how to fix it.

    Parameters
    ----------
    message
        The problem and its fix, in words that fit the command line and Slicer alike.
    settings
        Keys of :data:`SETTINGS` the fix refers to; the front end appends its names for them
        (:meth:`describe`).
    """

    def __init__(self, message: str, *, settings: Sequence[str] = ()):
        unknown = [s for s in settings if s not in SETTINGS]
        if unknown:
            raise ValueError(f"unknown setting keys {unknown}: add them to errors.SETTINGS and both front ends")
        super().__init__(message)
        self.settings = tuple(settings)

    def describe(self, names: Mapping[str, str]) -> str:
        """The message followed by a front end's names of the settings it refers to, e.g. ``[--spect-units]``."""
        named = [names[s] for s in self.settings if s in names]
        return str(self) + (f" [{', '.join(named)}]" if named else "")


class OutOfMemoryError(DblurDoseError):
    """An allocation failed (host or device memory), or a run's memory estimate did not fit (refused up front)."""


class Terminated(BaseException):
    """The process received SIGTERM; raised in the main thread so ``finally`` blocks run."""


#: fragments of torch's allocation-failure messages (CUDA, MPS, the CPU allocator)
_ALLOCATION_FAILURES = ("out of memory", "can't allocate memory", "cannot allocate memory", "not enough memory")


def is_allocation_failure(exc: BaseException) -> bool:
    """True for MemoryError and for torch's out-of-memory RuntimeErrors."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(s in str(exc).lower() for s in _ALLOCATION_FAILURES)


@contextlib.contextmanager
def memory_errors_as_dblurdose(what: str, fix: str, settings: Sequence[str] = ()):
    """Re-raise allocation failures inside the block as :class:`OutOfMemoryError`.

    ``what`` names the step ("the DVK convolution"), ``fix`` what the user can do about it,
    ``settings`` the keys of :data:`SETTINGS` the fix refers to.
    """
    try:
        yield
    except DblurDoseError:
        raise
    except (MemoryError, RuntimeError) as exc:
        if not is_allocation_failure(exc):
            raise
        raise OutOfMemoryError(f"out of memory during {what}; {fix}. Nothing was written", settings=settings) from None


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def sigterm_unwinds():
    """Within the block, SIGTERM raises :class:`Terminated` (main thread only; a no-op elsewhere)."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
