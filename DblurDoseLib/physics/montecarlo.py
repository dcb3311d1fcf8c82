"""Monte Carlo dose rate from an activity map: radionuclide decays transported with ompmc.

ompmc (optional ``mc`` extra, GPL-3) is an EGSnrc-class condensed-history photon/electron code
for voxel phantoms. It has no internal-source type, but particles of an IAEA phase-space file that
start inside the phantom are transported from where they start. So:

1. decays are drawn from the activity map (Bq per voxel): stratified per-voxel counts (the
   expected count's floor plus a Bernoulli remainder), positions uniform within the voxel;
2. each decay's particles come from :func:`DblurDoseLib.physics.nuclides.sample_decay_particles`
   (energy below the 10 keV cut-off is deposited in the decay's voxel, here, not transported);
3. the particles, with isotropic directions, are written as an IAEA phase-space file (29-byte
   records) and transported by ``ompmc.calc_forward_phsp``, one particle per history, in a child
   process (ompmc keeps global state and prints from C: one calculation per process, its output
   goes to a log file that is shown only on failure);
4. large runs are split into chunks of at most ``max_particles`` particles, one child each, so
   the phase-space file and ompmc's copy of it stay bounded (2e7 particles = 580 MB); the
   temporary files are removed afterwards, and those of a run that was killed (hundreds of MB
   each) by the next run in the same folder (:func:`remove_stale_workdirs`).

Units: ompmc returns the mean energy deposited per history (MeV, ``output_dose=False``); this
module converts to dose itself with the exact MeV-to-J factor (ompmc's own dose output uses
1.602e-13 J/MeV, 1e-4 below CODATA). Dose rate in mGy/h for the given activity:
``E_voxel[MeV] * 1.602176634e-13 / m_voxel[kg] * (A_total[Bq] / N_decays) * 3.6e6``, with
N_decays the number asked for (the estimator stays unbiased under the stratified rounding).

The uncertainty is ompmc's batch estimate (the decays are dealt out to its 10 batches, each in
voxel order), combined over chunks. It slightly understates the truth: the particles of one decay
start at the same point but run as separate histories. Like ompmc, the map is 0 in voxels below
0.044 g/cm3 (their energy is counted in ``air_mev``).

Speed (2 threads, a shared 2-core machine, body phantom, ``benchmarks/bench_montecarlo.py``):
188k decays/s on 128x128x81 x 4.8 mm (1 GB), 64k decays/s on 512x512x130 x 0.98x0.98x3 mm
(3 GB; 11 s of it fixed cost per run).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DblurDoseError
from ..io.outputs import pid_alive
from ..io.volume import Volume
from .density import BONE_DENSITY_MIN, LUNG_DENSITY_MAX
from .nuclides import DEFAULT_CUTOFF_KEV, ELECTRON, PHOTON, get_nuclide, sample_decay_particles

#: the prefix of a transport run's temporary folder, and the file in it that names its host and process
WORKDIR_PREFIX = "dblurdose-mc-"
WORKDIR_OWNER = "owner.json"

MEV_TO_J = 1.602176634e-13
ELECTRON_REST_MEV = 0.51099895
#: Densities are clamped to this (air) for transport: ompmc needs a positive density everywhere.
MIN_DENSITY = 0.0012
#: ompmc reports no energy (zero dose) in voxels below this density (its air threshold)
OMPMC_AIR_DENSITY = 0.044

#: Media by density: (upper density bound g/cm3, label, PEGS4 medium in ompmc's 521icru data).
#: ompmc ships no adipose tissue; water is the closest of its media (electrons per gram within
#: 0.2%, I-value 75 vs 63 eV), so fat-density voxels are transported as water.
MEDIA: tuple[tuple[float, str, str], ...] = (
    (0.15, "air", "AIR521ICRU"),
    (LUNG_DENSITY_MAX, "lung", "LUNG521ICRU"),
    (0.985, "adipose", "H2O521ICRU"),
    (BONE_DENSITY_MIN, "soft tissue", "ICRUTISSUE521ICRU"),
    (np.inf, "bone", "ICRPBONE521ICRU"),
)
SOFT_TISSUE_MEDIUM = "ICRUTISSUE521ICRU"
PEGS_FILE = "521icru.pegs4dat"  # AE = 0.521 MeV: electrons can be followed down to 10 keV

#: IAEA phase-space particle codes
_IAEA_TYPE = {PHOTON: 1, ELECTRON: 2}
_IAEA_NEUTRON = 4  # ompmc starts nothing for it: used to pad a file to whole batches
RECORD = np.dtype(
    [("type", "i1"), ("energy", "<f4"), ("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("u", "<f4"), ("v", "<f4"),
     ("weight", "<f4")]
)
assert RECORD.itemsize == 29

Progress = Callable[[float, str], object]


def ompmc_available() -> bool:
    """Whether the optional ompmc package (the ``mc`` extra) is installed.

    Returns
    -------
    bool
        True when ``ompmc`` can be imported (it is not imported here).
    """
    import importlib.util

    return importlib.util.find_spec("ompmc") is not None


def ompmc_version() -> str:
    """The installed ompmc version, for provenance.

    Returns
    -------
    str
        The version string, or ``"not installed"``.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ompmc")
    except PackageNotFoundError:
        return "not installed"


def require_ompmc() -> None:
    """Refuse Monte Carlo when ompmc is not installed.

    Raises
    ------
    DblurDoseError
        Without ompmc, naming how to install it.
    """
    if not ompmc_available():
        raise DblurDoseError(
            "Monte Carlo needs the optional ompmc package (GPL-3): pip install 'dblurdose[mc]' "
            "(or pip install ompmc)"
        )


# --- geometry --------------------------------------------------------------------------------------


@dataclass
class TransportGeometry:
    """A voxel phantom for ompmc: bounds in cm (ascending, x/y/z), arrays indexed [z, y, x]."""

    x_bounds: np.ndarray
    y_bounds: np.ndarray
    z_bounds: np.ndarray
    density: np.ndarray  # g/cm3, float64
    material: np.ndarray  # int32, 1-based index into media
    media: list[str]

    def __post_init__(self) -> None:
        self.x_bounds, self.y_bounds, self.z_bounds = (
            np.asarray(b, dtype=np.float64) for b in (self.x_bounds, self.y_bounds, self.z_bounds)
        )
        self.density = np.ascontiguousarray(self.density, dtype=np.float64)
        self.material = np.ascontiguousarray(self.material, dtype=np.int32)
        shape = (self.z_bounds.size - 1, self.y_bounds.size - 1, self.x_bounds.size - 1)
        if self.density.shape != shape or self.material.shape != shape:
            raise ValueError(f"arrays {self.density.shape} do not match the bounds {shape}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """The phantom's (z, y, x) voxels."""
        return self.density.shape  # type: ignore[return-value]

    def voxel_volumes_cm3(self) -> np.ndarray:
        """Volume of each voxel, cm3.

        Returns
        -------
        np.ndarray
            Float64 [z, y, x], from the bounds (cm).
        """
        dz, dy, dx = np.diff(self.z_bounds), np.diff(self.y_bounds), np.diff(self.x_bounds)
        return dz[:, None, None] * dy[None, :, None] * dx[None, None, :]

    def voxel_masses_kg(self) -> np.ndarray:
        """Mass of each voxel, kg (density g/cm3 x volume cm3 / 1000).

        Returns
        -------
        np.ndarray
            Float64 [z, y, x].
        """
        return self.density * self.voxel_volumes_cm3() * 1e-3


def materials_from_density(density: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Material index (1-based, int32) per voxel and the media list, from density (g/cm3).

    Parameters
    ----------
    density : np.ndarray
        Mass density (g/cm3), any shape.

    Returns
    -------
    material : np.ndarray
        Int32, 1-based index into ``media``, the shape of ``density``.
    media : list of str
        The PEGS4 media used (:data:`MEDIA`, by density bound), in density order.
    """
    bounds = np.array([m[0] for m in MEDIA[:-1]])
    index = np.searchsorted(bounds, np.asarray(density), side="right").astype(np.int32)
    used = np.unique(index)
    remap = np.zeros(len(MEDIA), np.int32)
    remap[used] = np.arange(1, used.size + 1)
    return remap[index], [MEDIA[i][2] for i in used]


def geometry_from_density(density: Volume) -> TransportGeometry:
    """ompmc geometry on the volume's grid, in index space.

    Origin and direction do not matter for isotropic transport in a phantom that moves with its
    sources. Densities are clamped to at least :data:`MIN_DENSITY` (ompmc needs them positive).

    Parameters
    ----------
    density : Volume
        Mass density (g/cm3); spacing in mm.

    Returns
    -------
    TransportGeometry
        Bounds in cm from 0, materials from :func:`materials_from_density`.

    Raises
    ------
    DblurDoseError
        When the density holds NaN or infinite values.
    """
    rho = np.asarray(density.array, dtype=np.float64)
    if not np.all(np.isfinite(rho)):
        raise DblurDoseError("the density map holds NaN or infinite values")
    rho = np.maximum(rho, MIN_DENSITY)
    material, media = materials_from_density(rho)
    nz, ny, nx = rho.shape
    sx, sy, sz = (s / 10.0 for s in density.spacing)
    return TransportGeometry(np.arange(nx + 1) * sx, np.arange(ny + 1) * sy, np.arange(nz + 1) * sz, rho,
                             material, media)


# --- phase-space files ----------------------------------------------------------------------------


@dataclass
class ParticleBatch:
    """Particles to transport: kind (ELECTRON/PHOTON), kinetic energy MeV, position cm (n,3 x,y,z),
    unit direction (n,3), and whether each starts a new decay (IAEA 'new history' flag)."""

    kind: np.ndarray
    energy_mev: np.ndarray
    position_cm: np.ndarray
    direction: np.ndarray
    new_history: np.ndarray

    def __len__(self) -> int:
        return int(self.energy_mev.size)


def isotropic_directions(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors uniform on the sphere.

    Parameters
    ----------
    n : int
        Number of directions.
    rng : np.random.Generator
        The random source.

    Returns
    -------
    np.ndarray
        (n, 3) float64 (u, v, w) unit vectors.
    """
    w = rng.uniform(-1.0, 1.0, n)
    phi = rng.uniform(0.0, 2.0 * np.pi, n)
    s = np.sqrt(np.maximum(1.0 - w * w, 0.0))
    return np.column_stack([s * np.cos(phi), s * np.sin(phi), w])


def write_phase_space(base: str | os.PathLike, batch: ParticleBatch, n_batches: int = 1) -> int:
    """Write ``base.IAEAphsp`` and ``base.IAEAheader``; returns the record count.

    The file is padded with neutrons (which ompmc does not transport) to a multiple of
    ``n_batches`` records, so that every particle is used exactly once.

    Parameters
    ----------
    base : str or os.PathLike
        The files' path without suffix.
    batch : ParticleBatch
        The particles (MeV, cm, unit directions).
    n_batches : int
        ompmc's statistical batches.

    Returns
    -------
    int
        Records written, padding included.
    """
    n = len(batch)
    n_total = -(-max(n, 1) // n_batches) * n_batches
    rec = np.zeros(n_total, dtype=RECORD)
    kind_code = np.where(batch.kind == ELECTRON, _IAEA_TYPE[ELECTRON], _IAEA_TYPE[PHOTON]).astype(np.int8)
    d = np.asarray(batch.direction)
    rec["type"][:n] = np.where(d[:, 2] < 0, -kind_code, kind_code)  # the sign of w rides on the type
    energy = np.asarray(batch.energy_mev, dtype=np.float32)
    rec["energy"][:n] = np.where(batch.new_history, -energy, energy)  # negative: a new history
    p = np.asarray(batch.position_cm)
    rec["x"][:n], rec["y"][:n], rec["z"][:n] = p[:, 0], p[:, 1], p[:, 2]
    rec["u"][:n], rec["v"][:n] = d[:, 0], d[:, 1]
    rec["weight"][:n] = 1.0
    rec["type"][n:] = _IAEA_NEUTRON
    rec["energy"][n:] = -1.0
    rec["weight"][n:] = 1.0
    base = Path(base)
    rec.tofile(str(base) + ".IAEAphsp")
    n_electrons = int(np.sum(batch.kind == ELECTRON))
    header = f"""$IAEA_INDEX:
0

$TITLE:
DblurDose radionuclide decays

$FILE_TYPE:
0

$CHECKSUM:
{RECORD.itemsize * n_total}

$RECORD_CONTENTS:
1 // X is stored ?
1 // Y is stored ?
1 // Z is stored ?
1 // U is stored ?
1 // V is stored ?
1 // W is stored ?
1 // Weight is stored ?
0 // Extra floats stored ?
0 // Extra longs stored ?

$RECORD_LENGTH:
{RECORD.itemsize}

$BYTE_ORDER:
1234

$ORIG_HISTORIES:
{int(np.sum(batch.new_history))}

$PARTICLES:
{n_total}

$PHOTONS:
{n - n_electrons}

$ELECTRONS:
{n_electrons}

$NEUTRONS:
{n_total - n}

$COORDINATE_SYSTEM_DESCRIPTION:
Phantom index space, cm, x fastest; particles start inside the phantom.
"""
    Path(str(base) + ".IAEAheader").write_text(header)
    return n_total


# --- transport in child processes ---------------------------------------------------------------


@dataclass(frozen=True)
class TransportSettings:
    """ompmc physics settings. Cut-offs are kinetic energies."""

    electron_cutoff_kev: float = DEFAULT_CUTOFF_KEV
    photon_cutoff_kev: float = DEFAULT_CUTOFF_KEV
    #: electron range rejection (exact but for bremsstrahlung of the rejected electrons, ~0.1%
    #: of their energy): electrons that cannot leave their voxel deposit there. 2-4x faster.
    range_rejection: bool = True
    photon_splitting: int = 1
    n_batches: int = 10

    def physics_items(self, seeds: tuple[int, int]) -> dict:
        """ompmc's physics settings for one run.

        Parameters
        ----------
        seeds : tuple of int
            ompmc's two random seeds.

        Returns
        -------
        dict
            ``pegs_file``, ``global_ecut`` (total energy, MeV), ``global_pcut`` (MeV), ``n_split``,
            ``seeds``, ``esave`` (MeV, None without range rejection).

        Raises
        ------
        DblurDoseError
            For a cut-off below 10 keV.
        """
        if self.electron_cutoff_kev < 10.0 - 1e-9 or self.photon_cutoff_kev < 10.0 - 1e-9:
            raise DblurDoseError("ompmc's data allow cut-offs of 10 keV and above")
        return {
            "pegs_file": PEGS_FILE,
            "global_ecut": ELECTRON_REST_MEV + self.electron_cutoff_kev / 1000.0,
            "global_pcut": self.photon_cutoff_kev / 1000.0,
            "n_split": int(self.photon_splitting),
            "seeds": [int(seeds[0]), int(seeds[1])],
            "esave": 1.5 if self.range_rejection else None,  # total energy, MeV: every Lu-177 electron
        }


@dataclass
class TransportResult:
    """Energy deposited by transported particles (MeV per voxel, summed over all of them)."""

    energy_mev: np.ndarray  # [z,y,x] float64
    variance_mev2: np.ndarray  # [z,y,x] float64, batch estimate
    entered_mev: float  # energy of the particles started (all start inside)
    escaped_mev: float  # energy that left the phantom
    unscored_mev: float  # deposited in voxels below OMPMC_AIR_DENSITY, which ompmc reports as 0
    n_particles: int
    seconds: float


def _seeds(seed: int, chunk: int) -> tuple[int, int]:
    a, b = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(chunk)]).generate_state(2)
    return int(a & 0x7FFFFFFF) | 1, int(b & 0x7FFFFFFF) | 1


def transport(
    geometry: TransportGeometry,
    batches: Iterable[ParticleBatch],
    *,
    seed: int,
    n_chunks: int = 1,
    threads: int | None = None,
    settings: TransportSettings = TransportSettings(),
    progress: Progress | None = None,
    workdir: str | os.PathLike | None = None,
) -> TransportResult:
    """Transport each batch of particles with ompmc in a child process and sum the energies.

    Parameters
    ----------
    geometry : TransportGeometry
        The phantom (cm, g/cm3).
    batches : iterable of ParticleBatch
        Particles starting inside the phantom (MeV, cm); one child process each.
    seed : int
        Random seed (each chunk gets its own seeds from it).
    n_chunks : int
        Number of batches expected; only a hint for progress reporting.
    threads : int, optional
        ompmc threads; None: all CPUs.
    settings : TransportSettings
        Cut-offs (keV) and variance reduction.
    progress : callable, optional
        ``progress(fraction, message)``; returning False cancels.
    workdir : str or os.PathLike, optional
        Folder of the temporary files (default: the system's temporary folder); they are removed
        afterwards.

    Returns
    -------
    TransportResult
        Energy per voxel and its batch variance (MeV, MeV^2), the energy bookkeeping (MeV).

    Raises
    ------
    DblurDoseError
        Without ompmc, on cancel, or when a child process fails.
    """
    require_ompmc()
    t0 = time.perf_counter()
    threads = int(threads or os.cpu_count() or 1)
    energy = np.zeros(geometry.shape, dtype=np.float64)
    variance = np.zeros(geometry.shape, dtype=np.float64)
    entered = escaped = unscored = 0.0
    n_particles = 0
    remove_stale_workdirs(workdir)
    tmp = Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX, dir=workdir))
    try:
        (tmp / WORKDIR_OWNER).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
        np.savez(tmp / "geometry.npz", x=geometry.x_bounds, y=geometry.y_bounds, z=geometry.z_bounds,
                 density=geometry.density, material=geometry.material)
        for chunk, batch in enumerate(batches):
            if len(batch) == 0:
                continue
            base = tmp / f"chunk{chunk}"
            n_hist = write_phase_space(base, batch, settings.n_batches)
            job = {
                "geometry": str(tmp / "geometry.npz"),
                "media": list(geometry.media),
                "phsp": str(base),
                "n_histories": n_hist,
                "n_batches": settings.n_batches,
                "physics": settings.physics_items(_seeds(seed, chunk)),
                "out": str(tmp / "result.npz"),
                "log": str(tmp / "ompmc.log"),
            }

            def report(f: float, chunk=chunk) -> bool:
                if progress is None:
                    return True
                return progress((chunk + f) / max(n_chunks, chunk + 1), f"Monte Carlo chunk {chunk + 1}/{n_chunks}") \
                    is not False

            summary = _run_child(tmp, job, threads, report)
            with np.load(tmp / "result.npz") as res:
                e = res["energy"] * n_hist  # per history -> total, MeV
                energy += e
                variance += (res["uncertainty"] * e) ** 2 * (e > 0)
                scored = float(e.sum())
            for suffix in (".IAEAphsp", ".IAEAheader"):
                os.unlink(str(base) + suffix)
            source_mev = float(np.sum(batch.energy_mev, dtype=np.float64))
            entered += source_mev
            escaped += source_mev * (1.0 - summary["energy_fraction"])
            unscored += max(source_mev * summary["energy_fraction"] - scored, 0.0)
            n_particles += len(batch)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return TransportResult(energy, variance, entered, escaped, unscored, n_particles, time.perf_counter() - t0)


def remove_stale_workdirs(workdir: str | os.PathLike | None = None) -> list[Path]:
    """Remove the temporary folders of transport runs that were killed before they could clean up.

    A run's folder (``dblurdose-mc-*`` in ``workdir``, default the system's temporary folder) names its
    host and process; it is stale when that process, on this host, no longer exists. Folders of live
    processes, of other hosts (a shared folder) and without that record are left alone.

    Parameters
    ----------
    workdir : str or os.PathLike, optional
        The folder the runs make their temporary folders in.

    Returns
    -------
    list of Path
        The folders removed.
    """
    parent = Path(workdir) if workdir is not None else Path(tempfile.gettempdir())
    host, removed = socket.gethostname(), []
    for folder in parent.glob(WORKDIR_PREFIX + "*"):
        try:
            owner = json.loads((folder / WORKDIR_OWNER).read_text())
            stale = owner["host"] == host and not pid_alive(int(owner["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # no record (or being written): not ours to judge
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _run_child(tmp: Path, job: dict, threads: int, report: Callable[[float], bool]) -> dict:
    (tmp / "job.json").write_text(json.dumps(job))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = package_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "DblurDoseLib.physics.montecarlo", str(tmp / "job.json")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )
    other: list[str] = []
    cancelled = False
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            if line.startswith("PROGRESS "):
                if not report(float(line.split()[1])):
                    cancelled = True
                    proc.kill()
                    break
            else:
                other.append(line.rstrip())
    except BaseException:  # interrupted here (Ctrl-C, an error in the callback): stop the child too
        proc.kill()
        raise
    finally:
        proc.wait()
    if cancelled:
        raise DblurDoseError("Monte Carlo cancelled by the user; nothing was written")
    if proc.returncode != 0:
        log = Path(job["log"])
        tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
        raise DblurDoseError(
            "ompmc failed (exit code {}):\n{}".format(proc.returncode, "\n".join(tail + other[-15:]))
        )
    return json.loads((tmp / "summary.json").read_text())


def _worker(job_path: str) -> None:
    """Child process: run one ompmc calculation described by a job file."""
    if sys.platform.startswith("linux"):  # die with the parent, however it ends
        try:
            import ctypes
            import signal

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
    job = json.loads(Path(job_path).read_text())
    log = open(job["log"], "w")
    os.dup2(log.fileno(), 1)  # ompmc prints from C: into the log, not the user's terminal
    import ompmc

    root = ompmc.data_path()
    with np.load(job["geometry"]) as g:
        # [z,y,x] C order transposed is (x,y,z) Fortran order: the layout ompmc wants, no copy
        geometry = ompmc.Geometry(g["x"], g["y"], g["z"], job["media"], g["density"].T, g["material"].T)
    p = job["physics"]
    physics = ompmc.Physics(
        pegs_file=root / "pegs4" / p["pegs_file"],
        output_folder=Path(job_path).parent,
        global_ecut=p["global_ecut"],
        global_pcut=p["global_pcut"],
        n_split=p["n_split"],
        seeds=tuple(p["seeds"]),
        esave=p["esave"],
    )

    def progress(fraction: float) -> bool:
        sys.stderr.write(f"PROGRESS {fraction:.6f}\n")
        sys.stderr.flush()
        return True

    energy, uncertainty, summary = ompmc.calc_forward_phsp(
        geometry, ompmc.PhaseSpaceSource(job["phsp"]), physics, n_histories=job["n_histories"],
        n_batches=job["n_batches"], output_dose=False, progress=progress,
    )
    if summary.n_histories != job["n_histories"]:
        raise RuntimeError(f"ompmc ran {summary.n_histories} histories, not {job['n_histories']}")
    np.savez(job["out"], energy=np.ascontiguousarray(energy.T), uncertainty=np.ascontiguousarray(uncertainty.T))
    Path(job_path).with_name("summary.json").write_text(json.dumps({
        "n_histories": summary.n_histories, "n_started": summary.n_started,
        "energy_fraction": summary.energy_fraction,
    }))


# --- dose rate from an activity map -----------------------------------------------------------


@dataclass
class MonteCarloResult:
    """Dose rate (mGy/h) for the given activity, its relative uncertainty, and energy bookkeeping.

    Unpacks as ``dose_rate, uncertainty = monte_carlo_dose_rate(...)``. Energies are totals over
    the simulated decays, in MeV: ``deposited + escaped == emitted``. The dose map holds
    ``deposited - air``: like ompmc, it reports 0 in voxels below 0.044 g/cm3.
    """

    dose_rate: Volume
    uncertainty: Volume
    n_decays: int  # decays simulated
    emitted_mev: float
    deposited_mev: float
    escaped_mev: float
    local_mev: float  # part of deposited: below the cut-off, deposited where the decay happened
    air_mev: float  # part of deposited: in voxels below 0.044 g/cm3 (0 in the dose map)
    seconds: float
    info: dict = field(default_factory=dict)

    def __iter__(self) -> Iterator[Volume]:
        return iter((self.dose_rate, self.uncertainty))

    def per_decay_kev(self) -> dict[str, float]:
        """The energy bookkeeping per simulated decay, keV.

        Returns
        -------
        dict of str to float
            ``emitted``, ``deposited``, ``escaped``, ``local`` and ``air`` (keV per decay).
        """
        n = max(self.n_decays, 1)
        return {k: getattr(self, f"{k}_mev") * 1000.0 / n for k in ("emitted", "deposited", "escaped", "local", "air")}


def stratified_counts(weights: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Counts with expectation ``n * w / sum(w)``: the floor, plus 1 with the remainder's probability.

    Parameters
    ----------
    weights : np.ndarray
        Non-negative weights (e.g. activity per voxel, Bq), flat.
    n : int
        Expected total count.
    rng : np.random.Generator
        The random source.

    Returns
    -------
    np.ndarray
        Int64 counts, one per weight.
    """
    expected = np.asarray(weights, dtype=np.float64) * (n / float(np.sum(weights, dtype=np.float64)))
    base = np.floor(expected)
    return (base + (rng.random(expected.size) < (expected - base))).astype(np.int64)


def _decay_chunks(voxels: np.ndarray, counts: np.ndarray, per_chunk: int) -> Iterator[np.ndarray]:
    """Flat voxel index of each decay, in chunks of at most ``per_chunk`` decays."""
    ends = np.cumsum(counts)
    total = int(ends[-1]) if ends.size else 0
    for start in range(0, total, per_chunk):
        stop = min(start + per_chunk, total)
        i0 = int(np.searchsorted(ends, start, side="right"))
        i1 = int(np.searchsorted(ends, stop, side="left")) + 1
        c = counts[i0:i1].copy()
        first_start = int(ends[i0] - counts[i0])
        c[0] -= start - first_start  # decays of voxel i0 already in earlier chunks
        c[-1] -= int(ends[i1 - 1]) - stop  # decays of voxel i1-1 left for later chunks
        yield np.repeat(voxels[i0:i1], c)


def monte_carlo_dose_rate(
    activity_bq: Volume,
    density: Volume,
    n_decays: int,
    seed: int = 1,
    nuclide: str = "Lu-177",
    threads: int | None = None,
    progress: Progress | None = None,
    settings: TransportSettings = TransportSettings(),
    max_particles: int = 20_000_000,
    workdir: str | os.PathLike | None = None,
) -> MonteCarloResult:
    """Monte Carlo dose rate (mGy/h) from an activity map (Bq per voxel) and a density map (g/cm3).

    Both on the same grid. ``n_decays`` decays are simulated (about 1.34 transported particles
    each for Lu-177). Reproducible for a seed (and any thread count). Media from density: see
    :data:`MEDIA`.

    Parameters
    ----------
    activity_bq : Volume
        Activity per voxel (Bq).
    density : Volume
        Mass density (g/cm3) on the same grid (spacing in mm).
    n_decays : int
        Decays simulated.
    seed : int
        Random seed.
    nuclide : str
        A supported nuclide.
    threads : int, optional
        ompmc threads; None: all CPUs.
    progress : callable, optional
        ``progress(fraction, message)``; returning False cancels.
    settings : TransportSettings
        Cut-offs (keV) and variance reduction.
    max_particles : int
        Most particles per ompmc run (bounds the phase-space file: 2e7 particles = 580 MB).
    workdir : str or os.PathLike, optional
        Folder of the temporary files.

    Returns
    -------
    MonteCarloResult
        Unpacks as dose rate (mGy/h for the given activity) and relative uncertainty (1 sigma), with
        the energy bookkeeping (MeV).

    Raises
    ------
    DblurDoseError
        Without ompmc, for inputs it refuses (grids that differ, no activity, a bad decay count),
        on cancel, or when ompmc fails.
    """
    require_ompmc()
    nuc = get_nuclide(nuclide)
    act, total_bq, n_decays = _checked_source(activity_bq, density, n_decays)
    t0 = time.perf_counter()
    geometry = geometry_from_density(density)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 177]))

    flat = act.ravel()
    voxels = np.flatnonzero(flat)
    counts = stratified_counts(flat[voxels], n_decays, rng)
    voxels, counts = voxels[counts > 0], counts[counts > 0]
    n_simulated = int(counts.sum())
    per_chunk = max(1, int(max_particles / 1.4))  # ~1.34 particles per Lu-177 decay
    n_chunks = max(1, -(-n_simulated // per_chunk))
    local = np.zeros(int(np.prod(geometry.shape)), dtype=np.float64)
    emitted = [0.0]
    batches = _decay_batches(nuc, geometry, voxels, counts, per_chunk, settings.n_batches, rng, local, emitted)
    result = transport(geometry, batches, seed=seed, n_chunks=n_chunks, threads=threads, settings=settings,
                       progress=progress, workdir=workdir)
    air = geometry.density < OMPMC_AIR_DENSITY
    deposited = result.energy_mev + local.reshape(geometry.shape)
    air_mev = result.unscored_mev + float(deposited[air].sum())
    deposited[air] = 0.0
    to_mgy_h = MEV_TO_J * (total_bq / n_decays) * 3.6e6
    dose = (deposited / geometry.voxel_masses_kg() * to_mgy_h).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(deposited > 0, np.sqrt(result.variance_mev2) / deposited, 0.0).astype(np.float32)
    dose_v = density.with_array(dose)
    dose_v.metadata.update({"units": "mGy/h", "nuclide": nuc.name, "method": "ompmc Monte Carlo",
                            "decays": str(n_simulated), "seed": str(seed)})
    unc_v = density.with_array(rel)
    unc_v.metadata.update({"units": "relative (1 sigma)"})
    return MonteCarloResult(
        dose_rate=dose_v,
        uncertainty=unc_v,
        n_decays=n_simulated,
        emitted_mev=emitted[0],
        deposited_mev=float(deposited.sum()) + air_mev,
        escaped_mev=result.escaped_mev,
        local_mev=float(local.sum()),
        air_mev=air_mev,
        seconds=time.perf_counter() - t0,
        info={"particles": result.n_particles, "transport_seconds": result.seconds, "chunks": n_chunks,
              "media": geometry.media, "ompmc": ompmc_version(), "total_bq": total_bq},
    )


def _checked_source(activity_bq: Volume, density: Volume, n_decays: int) -> tuple[np.ndarray, float, int]:
    """The activity (Bq per voxel, float64), its total (Bq) and the decay count, after the checks."""
    if not activity_bq.same_grid(density):
        raise DblurDoseError(
            "the activity and density maps must share one grid (shape, spacing, origin, direction); "
            "resample the activity onto the CT grid first"
        )
    act = np.asarray(activity_bq.array, dtype=np.float64)
    if not np.all(np.isfinite(act)) or act.min() < 0:
        raise DblurDoseError("the activity map must be finite and non-negative")
    total_bq = float(act.sum())
    if total_bq <= 0:
        raise DblurDoseError("the activity map is all zero: there is nothing to simulate")
    n_decays = int(n_decays)
    if n_decays < 1:
        raise DblurDoseError(f"n_decays must be at least 1, got {n_decays}")
    return act, total_bq, n_decays


def _decay_batches(nuc, geometry: TransportGeometry, voxels: np.ndarray, counts: np.ndarray, per_chunk: int,
                   n_batches: int, rng: np.random.Generator, local: np.ndarray,
                   emitted: list[float]) -> Iterator[ParticleBatch]:
    """The decays as particle batches for ompmc, ``counts[i]`` in voxel ``voxels[i]`` (flat index).

    Energy below the cut-off is added to ``local`` (MeV per voxel, flat) and all emitted energy to
    ``emitted[0]`` (MeV) as the batches are drawn.
    """
    ny, nx = geometry.shape[1:]
    step = np.array([geometry.x_bounds[1] - geometry.x_bounds[0], geometry.y_bounds[1] - geometry.y_bounds[0],
                     geometry.z_bounds[1] - geometry.z_bounds[0]])
    for decay_voxel in _decay_chunks(voxels, counts, per_chunk):
        # ompmc's batches are consecutive stretches of the file, and each must sample the whole
        # map for the batch uncertainty to mean anything: deal the decays (in voxel order) out
        # to the batches like cards, so each batch is still in voxel order (memory locality)
        decay_voxel = np.concatenate([decay_voxel[k::n_batches] for k in range(n_batches)])
        parts = sample_decay_particles(nuc, decay_voxel.size, rng)
        local[:] += np.bincount(decay_voxel, weights=parts.local_mev, minlength=local.size)
        iz, rem = np.divmod(decay_voxel, ny * nx)
        iy, ix = np.divmod(rem, nx)
        corner = np.column_stack([ix, iy, iz]).astype(np.float64)
        pos = ((corner + rng.random((decay_voxel.size, 3))) * step).astype(np.float32)
        energy = parts.energy_mev.astype(np.float32)
        emitted[0] += float(parts.local_mev.sum()) + float(energy.sum(dtype=np.float64))
        new = np.ones(parts.decay.size, bool)
        new[1:] = parts.decay[1:] != parts.decay[:-1]
        yield ParticleBatch(parts.kind, energy, pos[parts.decay], isotropic_directions(parts.decay.size, rng), new)


def monte_carlo_absorbed_dose(time_integrated_activity: Volume, density: Volume, n_decays: int, seed: int = 1,
                              **options: Any) -> tuple[Volume, Volume]:
    """True absorbed dose (Gy) from the time-integrated activity (Bq h/mL), by Monte Carlo.

    Dose is linear in the source, so transporting the time-integrated activity as if it were an
    activity gives mGy where an activity gives mGy/h (the spatial distribution of the decays is
    the same; how many happen is the integral). This is the reference that a multi-time-point
    dosimetry (:mod:`DblurDoseLib.dosimetry`) is checked against, e.g. with
    :func:`DblurDoseLib.simulation.phantom.make_time_series`.

    Parameters
    ----------
    time_integrated_activity : Volume
        Bq h/mL, on the grid of ``density``.
    density : Volume
        g/cm3.
    n_decays : int
        Decays simulated (the statistical noise falls as 1/sqrt).
    seed : int
        Random seed.
    **options
        Passed to :func:`monte_carlo_dose_rate` (threads, progress, settings, ...).

    Returns
    -------
    dose : Volume
        Absorbed dose, Gy (float32).
    uncertainty : Volume
        Relative standard uncertainty per voxel (1 sigma).
    """
    voxel_ml = float(np.prod(time_integrated_activity.spacing)) / 1000.0
    source = time_integrated_activity.with_array(np.asarray(time_integrated_activity.array, np.float64) * voxel_ml)
    result = monte_carlo_dose_rate(source, density, n_decays, seed=seed, **options)
    dose = result.dose_rate.with_array(np.asarray(result.dose_rate.array, np.float32) / np.float32(1000.0))
    dose.metadata.update({**result.dose_rate.metadata, "units": "Gy", "quantity": "absorbed dose",
                          "source": "time-integrated activity (Bq h/mL)"})
    return dose, result.uncertainty


#: Batches of a nested Monte Carlo label (:func:`nested_monte_carlo_dose_rate`).
LABEL_BATCHES = 8


def batch_seed(seed: int, batch: int) -> int:
    """Seed of batch ``batch`` of a nested run with ``seed`` (independent streams, 31-bit).

    Parameters
    ----------
    seed : int
        The run's seed.
    batch : int
        The batch's index.

    Returns
    -------
    int
        A seed in [0, 2^31).
    """
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(batch), 0x6E6573]).generate_state(1)[0] & 0x7FFFFFFF)


def nested_levels(n_decays: int, n_batches: int = LABEL_BATCHES) -> list[int]:
    """Decays of the labels a nested run writes, ascending.

    The first 1, 2, 4, ... batches, then all (the last is the full label).

    Parameters
    ----------
    n_decays : int
        Decays of the whole run.
    n_batches : int
        Batches it is dealt into.

    Returns
    -------
    list of int
        Decays per level: ``n_decays // n_batches`` times 1, 2, 4, ..., ``n_batches``.
    """
    n_batches = int(n_batches)
    per_batch = int(n_decays) // max(n_batches, 1)
    batches = {2 ** i for i in range(n_batches.bit_length()) if 2 ** i < n_batches} | {n_batches}
    return [per_batch * k for k in sorted(batches)]


def nested_monte_carlo_dose_rate(
    activity_bq: Volume,
    density: Volume,
    n_decays: int,
    seed: int = 1,
    n_batches: int = LABEL_BATCHES,
    progress: Progress | None = None,
    **kwargs: Any,
) -> dict[int, tuple[Volume, Volume]]:
    """Monte Carlo dose rate in ``n_batches`` independent batches, with the running means kept.

    Batch ``k`` simulates ``n_decays // n_batches`` decays with seed :func:`batch_seed` (seed, k).
    Each level is the plain mean of the batches it holds (equal decays: the decay-weighted mean),
    so the level with the most decays is the full label and each level nests the ones below it.
    The uncertainty combines the batches' own (ompmc batch) estimates of the absolute variance:
    sigma(mean) = sqrt(sum sigma_k^2) / k.

    Parameters
    ----------
    activity_bq : Volume
        Activity per voxel (Bq).
    density : Volume
        Mass density (g/cm3) on the same grid.
    n_decays : int
        Decays of the whole run (at least one per batch).
    seed : int
        The run's seed.
    n_batches : int
        Independent batches.
    progress : callable, optional
        ``progress(fraction, message)``; returning False cancels.
    **kwargs
        Passed to :func:`monte_carlo_dose_rate` (threads, settings, ...).

    Returns
    -------
    dict of int to tuple of Volume
        For the first 1, 2, 4, ... batches and for all of them, {decays asked for: (mean dose rate
        in mGy/h, its relative uncertainty (1 sigma))}.

    Raises
    ------
    DblurDoseError
        For fewer than 1 batch or 1 decay per batch, and as :func:`monte_carlo_dose_rate`.
    """
    n_batches = int(n_batches)
    if n_batches < 1 or int(n_decays) < n_batches:
        raise DblurDoseError(f"a nested Monte Carlo run needs at least 1 batch and 1 decay per batch, "
                             f"got {n_decays} decays in {n_batches} batches")
    per_batch = int(n_decays) // n_batches
    levels = {n // per_batch for n in nested_levels(n_decays, n_batches)}  # in batches
    total = np.zeros(density.shape, np.float64)
    variance = np.zeros(density.shape, np.float64)
    simulated = 0
    out: dict[int, tuple[Volume, Volume]] = {}
    for k in range(n_batches):
        def report(f: float, message: str, k=k):
            return True if progress is None else progress((k + f) / n_batches, f"batch {k + 1}/{n_batches}: {message}")

        res = monte_carlo_dose_rate(activity_bq, density, per_batch, batch_seed(seed, k), progress=report, **kwargs)
        dose = np.asarray(res.dose_rate.array, np.float64)
        total += dose
        variance += (dose * res.uncertainty.array) ** 2
        simulated += res.n_decays
        if k + 1 in levels:
            mean = total / (k + 1)
            with np.errstate(invalid="ignore", divide="ignore"):
                rel = np.where(mean > 0, np.sqrt(variance) / (k + 1) / mean, 0.0)
            dose_v = res.dose_rate.with_array(mean.astype(np.float32))
            dose_v.metadata.update({**res.dose_rate.metadata, "decays": str(simulated), "seed": str(seed),
                                    "batches": f"{k + 1}/{n_batches}"})
            unc_v = res.uncertainty.with_array(rel.astype(np.float32))
            unc_v.metadata.update(res.uncertainty.metadata)
            out[per_batch * (k + 1)] = (dose_v, unc_v)
    return out


if __name__ == "__main__":
    _worker(sys.argv[1])
