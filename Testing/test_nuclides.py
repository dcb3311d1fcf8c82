"""Lu-177 emission data from ICRP-107 (icrp107-database) and decay-particle sampling.

Reference figures (ICRP-107, notes/reference.md section 3), keV per decay: beta 133.27, conversion
electrons 13.52, Auger 1.13, all electrons 147.9; gammas 31.56, x-rays 3.54, all photons 35.1;
total 183.0; half-life 6.647 d.
"""

import numpy as np
import pytest

from DblurDoseLib.errors import DblurDoseError
from DblurDoseLib.physics.nuclides import (
    ELECTRON,
    PHOTON,
    SUPPORTED,
    canonical_name,
    get_nuclide,
    sample_beta_energies,
    sample_decay_particles,
)


def test_lu177_energies_match_icrp107():
    lu = get_nuclide("Lu-177")
    assert lu.name == "Lu-177"
    assert lu.half_life_s / 86400 == pytest.approx(6.647, abs=1e-3)
    assert lu.beta_energy_kev == pytest.approx(133.27, abs=0.01)
    assert lu.line_energy_kev("IE") == pytest.approx(13.52, abs=0.01)
    assert lu.line_energy_kev("auger") == pytest.approx(1.13, abs=0.01)
    assert lu.line_energy_kev("gamma") == pytest.approx(31.56, abs=0.01)
    assert lu.line_energy_kev("X") == pytest.approx(3.54, abs=0.01)
    assert lu.electron_energy_kev == pytest.approx(147.9, abs=0.05)
    assert lu.photon_energy_kev == pytest.approx(35.1, abs=0.05)
    assert lu.total_energy_kev == pytest.approx(183.0, abs=0.05)
    gammas = lu.lines["gamma"]
    assert gammas[np.argmin(abs(gammas[:, 0] - 0.208)), 1] == pytest.approx(0.11, abs=1e-3)
    assert gammas[np.argmin(abs(gammas[:, 0] - 0.113)), 1] == pytest.approx(0.064, abs=1e-3)
    assert lu.beta_spectrum[-1, 0] == pytest.approx(0.4978, abs=1e-4)  # endpoint 497.8 keV


@pytest.mark.parametrize("spelling", ["Lu-177", "Lu177", "lu177", "LU-177", "177Lu", "lu_177", " Lu 177 "])
def test_name_spellings(spelling):
    assert canonical_name(spelling) == "Lu-177"
    assert get_nuclide(spelling).name == "Lu-177"


@pytest.mark.parametrize("name,phrase", [("Tc-99m", "not supported"), ("I-131", "not supported"),
                                         ("Xx-999", "not a nuclide"), ("", "not a nuclide")])
def test_unknown_or_unsupported_nuclide(name, phrase):
    with pytest.raises(DblurDoseError) as err:
        get_nuclide(name)
    assert phrase in str(err.value)
    assert all(s in str(err.value) for s in SUPPORTED)  # says what is supported


def test_beta_spectrum_sampling():
    lu = get_nuclide("Lu-177")
    e = sample_beta_energies(lu, 1_000_000, np.random.default_rng(1))
    assert e.min() >= 0 and e.max() <= 0.4978
    # PCHIP through the ICRP table gives 133.33 keV; the ICRP branch table says 133.27
    assert e.mean() * 1000 == pytest.approx(133.3, abs=0.3)


def test_decay_particles_carry_the_emitted_energy():
    lu = get_nuclide("Lu-177")
    n = 500_000
    p = sample_decay_particles(lu, n, np.random.default_rng(2))
    assert p.energy_mev.min() >= 0.010  # below the 10 keV cut-off: deposited locally instead
    assert np.all(np.diff(p.decay) >= 0) and p.decay.max() < n
    electrons = (p.energy_mev[p.kind == ELECTRON].sum()) / n * 1000
    photons = (p.energy_mev[p.kind == PHOTON].sum()) / n * 1000
    assert p.emitted_mev / n * 1000 == pytest.approx(183.0, rel=0.003)
    assert electrons + p.local_mev.mean() * 1000 == pytest.approx(147.9, rel=0.003)
    assert photons == pytest.approx(35.1, rel=0.01)  # x-rays below 10 keV (~0.2 keV) are in local
    assert len(p.energy_mev) / n == pytest.approx(1.34, abs=0.02)  # transported particles per decay


def test_parts_and_determinism():
    lu = get_nuclide("Lu-177")
    a = sample_decay_particles(lu, 10_000, np.random.default_rng(3), parts="photon")
    b = sample_decay_particles(lu, 10_000, np.random.default_rng(3), parts="photon")
    assert np.all(a.kind == PHOTON) and np.array_equal(a.energy_mev, b.energy_mev)
    e = sample_decay_particles(lu, 10_000, np.random.default_rng(3), parts="electron")
    assert np.all(e.kind == ELECTRON)
    with pytest.raises(ValueError):
        sample_decay_particles(lu, 10, np.random.default_rng(0), parts="alpha")
