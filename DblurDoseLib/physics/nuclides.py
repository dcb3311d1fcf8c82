"""Radionuclide emission data (ICRP-107) and sampling of the particles one decay emits.

The data are read from the ``icrp107-database`` package (ICRP Publication 107 in JSON), never
typed by hand. Each nuclide file holds, per emission type, ``[energy MeV, yield per decay]``
pairs: ``beta-`` (branch mean energies), ``IE`` (internal-conversion electrons), ``auger``,
``gamma``, ``X``, and ``b-spectra``, the beta spectrum as ``[E MeV, dN/dE]``.

Only the nuclides in :data:`SUPPORTED` are accepted: each needs validated dose kernels too.
Another pure beta-minus/gamma emitter can be added by putting its name in :data:`SUPPORTED`
(its data come from the same ICRP-107 files) and building its kernels
(:func:`DblurDoseLib.physics.kernel_building.build_kernel`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from ..errors import DblurDoseError

#: Nuclides with validated data and kernels, in ICRP-107 spelling.
SUPPORTED: tuple[str, ...] = ("Lu-177",)

#: Total activity (MBq) in the SPECT field of a patient scan, per nuclide in :data:`SUPPORTED`:
#: from a few MBq late after a therapy (5 MBq) up to a whole administration (Lu-177: 7.4 GBq per
#: cycle, up to 100 GBq with margin). A total outside it almost always means wrong units
#: (kBq/mL read as Bq/mL is 1000x low); a new nuclide needs its own range here.
PATIENT_ACTIVITY_MBQ: dict[str, tuple[float, float]] = {"Lu-177": (5.0, 100_000.0)}

#: Particles below this kinetic energy are not transported: their energy is deposited where the
#: decay happens. 10 keV equals ompmc's lowest transport cut-offs (521icru data, ECUT 0.521 MeV
#: total, PCUT 0.010 MeV); a 10 keV electron travels 2.5 um in water, a 10 keV photon ~2 mm.
DEFAULT_CUTOFF_KEV = 10.0

#: Emission groups, and which part of a dose kernel each belongs to.
ELECTRON_LINES = ("IE", "auger")
PHOTON_LINES = ("gamma", "X")

PHOTON = 0
ELECTRON = 1

_UNITS_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "y": 365.25 * 86400.0}


@dataclass(frozen=True)
class Nuclide:
    """Emission data of one radionuclide (ICRP-107). Energies in keV per decay unless named MeV."""

    name: str
    half_life_s: float
    #: discrete lines: group ('IE', 'auger', 'gamma', 'X') -> (n, 2) array [energy MeV, yield/decay]
    lines: dict[str, np.ndarray] = field(repr=False)
    #: beta-minus spectrum, (n, 2) array [energy MeV, dN/dE (1/MeV)], normalised to one beta
    beta_spectrum: np.ndarray = field(repr=False)
    #: betas per decay (sum of the beta-minus branch yields)
    beta_yield: float = 1.0
    #: mean beta energy per decay from the ICRP-107 branch table, keV
    beta_energy_kev: float = 0.0

    @property
    def decay_constant_per_s(self) -> float:
        """Physical decay constant ln 2 / half-life, 1/s."""
        return float(np.log(2.0) / self.half_life_s)

    def line_energy_kev(self, group: str) -> float:
        """Energy per decay emitted in one group of discrete lines, keV.

        Parameters
        ----------
        group : str
            'IE', 'auger', 'gamma' or 'X'.

        Returns
        -------
        float
            Sum of energy x yield over the group's lines (keV per decay); 0 for an empty group.
        """
        table = self.lines[group]
        return float(np.sum(table[:, 0] * table[:, 1]) * 1000.0) if len(table) else 0.0

    @property
    def electron_energy_kev(self) -> float:
        """Beta + conversion + Auger electron energy per decay, keV."""
        return self.beta_energy_kev + sum(self.line_energy_kev(g) for g in ELECTRON_LINES)

    @property
    def photon_energy_kev(self) -> float:
        """Gamma + x-ray energy per decay, keV."""
        return sum(self.line_energy_kev(g) for g in PHOTON_LINES)

    @property
    def total_energy_kev(self) -> float:
        """Electron + photon energy emitted per decay, keV."""
        return self.electron_energy_kev + self.photon_energy_kev


def _canonical(name: str) -> tuple[str, str]:
    """('Lu', '177') from 'Lu-177', 'Lu177', 'lu177', '177Lu', 'lu_177'... ('', '') if unreadable."""
    text = re.sub(r"[\s_\-]", "", str(name))
    m = re.fullmatch(r"([A-Za-z]{1,2})(\d{1,3})([mM]?)", text) or None
    if m:
        return m.group(1).capitalize(), m.group(2) + m.group(3).lower()
    m = re.fullmatch(r"(\d{1,3})([mM]?)([A-Za-z]{1,2})", text)
    if m:
        return m.group(3).capitalize(), m.group(1) + m.group(2).lower()
    return "", ""


def canonical_name(name: str) -> str:
    """ICRP-107 spelling of a nuclide name ('lu177' -> 'Lu-177').

    Parameters
    ----------
    name : str
        A nuclide name in any usual spelling ('Lu-177', 'Lu177', 'lu_177', '177Lu').

    Returns
    -------
    str
        Its ICRP-107 spelling, one of :data:`SUPPORTED`.

    Raises
    ------
    DblurDoseError
        For an unknown or unsupported nuclide.
    """
    element, mass = _canonical(name)
    icrp = f"{element}-{mass}" if element else str(name)
    if icrp in SUPPORTED:
        return icrp
    known = element and _icrp_path(icrp) is not None
    what = "is not supported yet" if known else "is not a nuclide name this library knows"
    raise DblurDoseError(
        f"nuclide {name!r} {what}; supported: {', '.join(SUPPORTED)}. "
        "Give one of these (e.g. Lu-177).", settings=("nuclide",)
    )


def _icrp_path(icrp_name: str):
    try:
        from importlib.resources import files

        path = files("icrp107_database") / "icrp107" / f"{icrp_name}.json"
    except ModuleNotFoundError:
        raise DblurDoseError(
            "the ICRP-107 decay data package is missing; install it with 'pip install icrp107-database'"
        ) from None
    return path if path.is_file() else None


@cache
def patient_activity_mbq(name: str = "Lu-177") -> tuple[float, float]:
    """The (lowest, highest) total activity in MBq of a patient scan of nuclide ``name``.

    Parameters
    ----------
    name : str
        A supported nuclide, any spelling.

    Returns
    -------
    tuple of float
        (lowest, highest) MBq, from :data:`PATIENT_ACTIVITY_MBQ`.

    Raises
    ------
    DblurDoseError
        For an unknown or unsupported nuclide.
    """
    return PATIENT_ACTIVITY_MBQ[canonical_name(name)]


def get_nuclide(name: str = "Lu-177") -> Nuclide:
    """Emission data of a supported nuclide ('Lu-177', 'Lu177', 'lu177', '177Lu' all work).

    Parameters
    ----------
    name : str
        A supported nuclide, any spelling.

    Returns
    -------
    Nuclide
        Its ICRP-107 lines (MeV, yield per decay), normalised beta spectrum (MeV, 1/MeV),
        half-life (s), beta yield and mean beta energy (keV per decay).

    Raises
    ------
    DblurDoseError
        For an unsupported nuclide, missing ICRP-107 data, or a nuclide emitting alpha, beta+,
        neutrons or fission fragments.
    """
    icrp = canonical_name(name)
    path = _icrp_path(icrp)
    if path is None:
        raise DblurDoseError(f"no ICRP-107 data for {icrp}; reinstall the 'icrp107-database' package")
    with path.open("r") as f:
        data = json.load(f)
    if isinstance(data, str):  # the package stores a JSON string inside the JSON file
        data = json.loads(data)
    emissions = data["emissions"]

    def table(key: str) -> np.ndarray:
        return np.asarray(emissions.get(key) or np.zeros((0, 2)), dtype=np.float64).reshape(-1, 2)

    for key in ("alpha", "beta+", "neutron", "fission"):
        if len(table(key)):
            raise DblurDoseError(f"{icrp} emits {key} particles, which this library does not model")
    betas = table("beta-")
    spectrum = table("b-spectra")
    if len(spectrum):
        area = float(np.trapezoid(spectrum[:, 1], spectrum[:, 0]))
        spectrum = np.column_stack([spectrum[:, 0], spectrum[:, 1] / area])
    half_life = float(data["half_life"]) * _UNITS_S[str(data.get("time_unit", "s")).strip().lower()[0]]
    return Nuclide(
        name=icrp,
        half_life_s=half_life,
        lines={g: table(g) for g in ELECTRON_LINES + PHOTON_LINES},
        beta_spectrum=spectrum,
        beta_yield=float(betas[:, 1].sum()) if len(betas) else 0.0,
        beta_energy_kev=float(np.sum(betas[:, 0] * betas[:, 1]) * 1000.0) if len(betas) else 0.0,
    )


@dataclass
class DecayParticles:
    """Particles from ``n_decays`` decays, above the transport cut-off.

    ``decay[i]`` is the index (0..n_decays-1) of the decay particle ``i`` came from, ``kind[i]``
    :data:`ELECTRON` or :data:`PHOTON`, ``energy_mev[i]`` its kinetic energy. ``local_mev[d]`` is
    the energy of decay ``d`` below the cut-off, to be deposited where the decay happened.
    """

    decay: np.ndarray
    kind: np.ndarray
    energy_mev: np.ndarray
    local_mev: np.ndarray

    @property
    def emitted_mev(self) -> float:
        """Energy emitted by all the decays, transported and local, MeV."""
        return float(self.energy_mev.sum() + self.local_mev.sum())


_FINE_BETA: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def _fine_beta_table(nuclide: Nuclide, points: int = 4001) -> tuple[np.ndarray, np.ndarray]:
    if nuclide.name not in _FINE_BETA:
        from scipy.interpolate import PchipInterpolator

        e, p = nuclide.beta_spectrum[:, 0], nuclide.beta_spectrum[:, 1]
        fine = np.unique(np.concatenate([e, np.linspace(e[0], e[-1], points)]))
        _FINE_BETA[nuclide.name] = (fine, np.maximum(PchipInterpolator(e, p)(fine), 0.0))
    return _FINE_BETA[nuclide.name]


def sample_beta_energies(nuclide: Nuclide, n: int, rng: np.random.Generator) -> np.ndarray:
    """Beta energies (MeV) drawn from the ICRP-107 spectrum.

    The tabulated spectrum (101 points for Lu-177) is interpolated by a monotone cubic (PCHIP) onto
    a fine grid, then sampled exactly as piecewise linear. Linear interpolation of the coarse table
    would overstate the mean (133.79 keV for Lu-177, ICRP-107 branch table 133.27); PCHIP gives 133.33.

    Parameters
    ----------
    nuclide : Nuclide
        Its beta spectrum.
    n : int
        Number of energies.
    rng : np.random.Generator
        The random source (seeded for repeatable draws).

    Returns
    -------
    np.ndarray
        ``n`` kinetic energies (MeV, float64).
    """
    e, p = _fine_beta_table(nuclide)
    seg = 0.5 * (p[1:] + p[:-1]) * np.diff(e)
    total = float(seg.sum())
    cdf = np.concatenate([[0.0], np.cumsum(seg)]) / total
    u = rng.random(n)
    i = np.clip(np.searchsorted(cdf, u, side="right") - 1, 0, len(seg) - 1)
    # inside segment i the density is p0 + s t: solve p0 t + s t^2 / 2 = area (stable form)
    area = (u - cdf[i]) * total
    w = e[i + 1] - e[i]
    p0 = p[i]
    slope = (p[i + 1] - p0) / w
    den = p0 + np.sqrt(np.maximum(p0 * p0 + 2.0 * slope * area, 0.0))
    t = np.divide(2.0 * area, den, out=np.zeros_like(area), where=den > 0)
    return e[i] + np.clip(t, 0.0, w)


def sample_decay_particles(
    nuclide: Nuclide,
    n_decays: int,
    rng: np.random.Generator,
    cutoff_kev: float = DEFAULT_CUTOFF_KEV,
    parts: str = "all",
) -> DecayParticles:
    """The particles of ``n_decays`` decays: betas from the spectrum, lines by their yields.

    Betas: ``beta_yield`` per decay (1 for Lu-177; a fractional remainder by Bernoulli), energy
    from the ICRP-107 spectrum. Discrete lines (conversion and Auger electrons, gammas, x-rays):
    the number of each line is Poisson with mean ``yield * n_decays``, each assigned to a decay at
    random -- the same mean per decay as the ICRP table; correlations between the emissions of one
    decay are not modelled (ICRP-107 has none, and one particle per history ignores them anyway).

    Energy below ``cutoff_kev`` is not returned as particles but in ``local_mev``: sampled betas
    below it at their own energy, lines below it at their expected energy per decay (the same for
    every decay), so the energy emitted per decay is exact on average.

    Parameters
    ----------
    nuclide : Nuclide
        The emitter.
    n_decays : int
        Number of decays.
    rng : np.random.Generator
        The random source.
    cutoff_kev : float
        Transport cut-off (keV); energy below it is deposited locally.
    parts : str
        'all', 'electron' (beta, IE, Auger) or 'photon' (gamma, X) -- the kernel parts.

    Returns
    -------
    DecayParticles
        Particles sorted by decay (MeV), and each decay's local energy (MeV).

    Raises
    ------
    ValueError
        For an unknown ``parts``.
    """
    if parts not in ("all", "electron", "photon"):
        raise ValueError(f"parts must be 'all', 'electron' or 'photon', got {parts!r}")
    n_decays = int(n_decays)
    cut = cutoff_kev / 1000.0
    local = np.zeros(n_decays, dtype=np.float64)
    decay, kind, energy = [], [], []

    if parts in ("all", "electron") and nuclide.beta_yield > 0:
        whole, frac = divmod(nuclide.beta_yield, 1.0)
        counts = np.full(n_decays, int(whole), dtype=np.int64)
        if frac > 1e-9:
            counts += rng.random(n_decays) < frac
        d = np.repeat(np.arange(n_decays), counts)
        e = sample_beta_energies(nuclide, d.size, rng)
        low = e < cut
        np.add.at(local, d[low], e[low])
        decay.append(d[~low])
        kind.append(np.full((~low).sum(), ELECTRON, np.int8))
        energy.append(e[~low])

    groups = {"all": ELECTRON_LINES + PHOTON_LINES, "electron": ELECTRON_LINES, "photon": PHOTON_LINES}[parts]
    for group in groups:
        table = nuclide.lines[group]
        if not len(table):
            continue
        below = table[:, 0] < cut
        local += float(np.sum(table[below, 0] * table[below, 1]))
        lines = table[~below]
        if not len(lines):
            continue
        counts = rng.poisson(lines[:, 1] * n_decays)
        e = np.repeat(lines[:, 0], counts)
        decay.append(rng.integers(0, n_decays, e.size) if n_decays else np.zeros(0, np.int64))
        kind.append(np.full(e.size, ELECTRON if group in ELECTRON_LINES else PHOTON, np.int8))
        energy.append(e)

    decay_a = np.concatenate(decay) if decay else np.zeros(0, np.int64)
    order = np.argsort(decay_a, kind="stable")
    return DecayParticles(
        decay=decay_a[order],
        kind=(np.concatenate(kind) if kind else np.zeros(0, np.int8))[order],
        energy_mev=(np.concatenate(energy) if energy else np.zeros(0))[order],
        local_mev=local,
    )
