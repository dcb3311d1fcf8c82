"""The one vocabulary of SPECT activity units: keyword, label, UCUM code and factor to Bq/mL.

Every front end and reader goes through :func:`spect_unit_key`, which accepts the spellings
users and files use (``bqml``, ``Bq/mL``, ``BQML`` from the DICOM Units tag, ``{counts}``
from a UCUM-coded Real World Value Mapping, ``CNTS``...), and shows :attr:`SpectUnit.label`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpectUnit:
    """One unit a SPECT image may be stored in.

    Attributes
    ----------
    key
        The library's keyword (``"bqml"``), used in options, files and provenance.
    label
        What users read (``"Bq/mL"``).
    ucum, meaning
        UCUM code and its words, for coded entries (DICOM, Slicer's voxel value units).
    bq_per_ml
        Factor from one stored unit to Bq/mL; ``None`` for counts (they need the camera
        calibration and the acquisition duration).
    """

    key: str
    label: str
    ucum: str
    meaning: str
    bq_per_ml: float | None


#: The units, by keyword, in the order front ends list them.
SPECT_UNITS: dict[str, SpectUnit] = {
    u.key: u
    for u in (
        SpectUnit("bqml", "Bq/mL", "Bq/mL", "becquerels per milliliter", 1.0),
        SpectUnit("kbqml", "kBq/mL", "kBq/mL", "kilobecquerels per milliliter", 1e3),
        SpectUnit("mbqml", "MBq/mL", "MBq/mL", "megabecquerels per milliliter", 1e6),
        SpectUnit("counts", "counts", "{counts}", "counts", None),
    )
}

#: other spellings (lower case, spaces removed) -> keyword: UCUM annotations and DICOM Units (0054,1001)
_ALIASES = {"cnts": "counts", "{cnts}": "counts", "count": "counts"}


def spect_unit_key(text: str | None) -> str | None:
    """The keyword of a unit spelled as a keyword, label, UCUM code or DICOM Units value.

    Case, spaces, ``/`` and ``_`` do not matter: ``"kBq/mL"``, ``"KBQML"`` and ``"kbq_ml"`` are
    all ``"kbqml"``.

    Parameters
    ----------
    text : str or None
        The unit as written (e.g. ``"Bq/mL"``, ``"BQML"``, ``"{counts}"``, ``"CNTS"``).

    Returns
    -------
    str or None
        A key of :data:`SPECT_UNITS` (``"bqml"``, ``"kbqml"``, ``"mbqml"``, ``"counts"``); None if unknown.
    """
    if not text:
        return None
    compact = str(text).strip().lower().replace(" ", "").replace("/", "").replace("_", "")
    for key, unit in SPECT_UNITS.items():
        if compact in (key, unit.label.lower().replace("/", ""), unit.ucum.lower().replace("/", "")):
            return key
    return _ALIASES.get(compact)


def spect_unit_label(key: str) -> str:
    """What users read for a keyword (``"kbqml"`` -> ``"kBq/mL"``).

    Parameters
    ----------
    key : str
        A key of :data:`SPECT_UNITS`.

    Returns
    -------
    str
        Its label; the keyword itself if unknown.
    """
    unit = SPECT_UNITS.get(key)
    return unit.label if unit else key
