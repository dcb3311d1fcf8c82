"""The one SPECT-unit vocabulary: every spelling users and files use maps to one keyword."""

import numpy as np
import pytest

from DblurDoseLib.dose import spect_to_bqml
from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.io.volume import Volume
from DblurDoseLib.units import SPECT_UNITS, spect_unit_key, spect_unit_label


@pytest.mark.parametrize("spelling, key", [
    ("bqml", "bqml"), ("Bq/mL", "bqml"), ("BQML", "bqml"),  # keyword, label, DICOM Units (0054,1001)
    ("kBq/mL", "kbqml"), ("kbq_ml", "kbqml"), ("MBq/mL", "mbqml"),
    ("{counts}", "counts"), ("CNTS", "counts"), ("{cnts}", "counts"), ("counts", "counts"),
    ("GML", None), ("Bq", None), ("", None), (None, None),
])
def test_spellings(spelling, key):
    assert spect_unit_key(spelling) == key


def test_labels_and_factors():
    assert [spect_unit_label(k) for k in SPECT_UNITS] == ["Bq/mL", "kBq/mL", "MBq/mL", "counts"]
    assert spect_unit_label("unknown") == "unknown"
    spect = Volume(np.full((2, 2, 2), 2.0, np.float32), (4.0, 4.0, 4.0), (0.0, 0.0, 0.0))
    assert float(spect_to_bqml(spect, "kBq/mL").array[0, 0, 0]) == 2000.0
    assert float(spect_to_bqml(spect, "MBQML").array[0, 0, 0]) == 2e6
    with pytest.raises(DblurDoseError, match="unknown SPECT units") as info:
        spect_to_bqml(spect, "Ci/mL")
    assert info.value.settings == ("spect_units",)
