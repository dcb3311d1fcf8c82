"""A 3D image with its geometry, and reading/writing it through SimpleITK.

Arrays are indexed [z, y, x]; spacing/origin/direction are in ITK (x, y, z) order, mm.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DblurDoseError

if TYPE_CHECKING:
    import SimpleITK
    from numpy.typing import DTypeLike

READABLE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd", ".dcm")


@dataclass
class Volume:
    """A voxel array [z, y, x] with spacing (mm), origin (mm) and direction (3x3), ITK order."""

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    metadata: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim != 3:
            raise DblurDoseError(f"expected a 3D image, got an array of shape {self.array.shape}")
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if min(self.spacing) <= 0:
            raise DblurDoseError(f"voxel spacing must be positive, got {self.spacing} mm")

    @property
    def shape(self) -> tuple[int, int, int]:
        """The array's shape (z, y, x voxels)."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL (cm3)."""
        return float(np.prod(self.spacing)) / 1000.0

    def with_array(self, array: np.ndarray) -> Volume:
        """The same geometry holding another array (of the same shape).

        Parameters
        ----------
        array : np.ndarray
            Values [z, y, x] of the grid's shape (any units).

        Returns
        -------
        Volume
            Same spacing, origin and direction (a copy); no metadata.

        Raises
        ------
        ValueError
            When the shape differs from the grid's.
        """
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} differs from the grid's {self.array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction.copy(), {})

    def same_grid(self, other: Volume, tol_mm: float = 1e-3) -> bool:
        """True when both volumes share shape, spacing, origin and direction.

        Parameters
        ----------
        other : Volume
            The volume compared.
        tol_mm : float
            Tolerance on spacing and origin (mm); the direction's is 1e-6.

        Returns
        -------
        bool
        """
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tol_mm)
            and np.allclose(self.origin, other.origin, atol=tol_mm)
            and np.allclose(self.direction, other.direction, atol=1e-6)
        )

    def physical_corners(self) -> np.ndarray:
        """The 8 outer corners of the field (voxel edges, not centres).

        Returns
        -------
        np.ndarray
            Shape (8, 3): (x, y, z) physical positions, mm.
        """
        nz, ny, nx = self.shape
        idx = np.array([[i, j, k] for i in (-0.5, nx - 0.5) for j in (-0.5, ny - 0.5) for k in (-0.5, nz - 0.5)])
        return np.asarray(self.origin) + (idx * np.asarray(self.spacing)) @ self.direction.T

    # --- SimpleITK bridges -------------------------------------------------------------
    def to_sitk(self) -> SimpleITK.Image:
        """The volume as a SimpleITK image (same array, geometry in mm, metadata as text).

        Returns
        -------
        SimpleITK.Image
        """
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(tuple(self.direction.ravel()))
        for key, value in self.metadata.items():
            image.SetMetaData(key, str(value))
        return image

    @classmethod
    def from_sitk(cls, image: SimpleITK.Image, dtype: DTypeLike | None = None) -> Volume:
        """A volume from a SimpleITK image (a 4D image with one time point is taken as 3D).

        Parameters
        ----------
        image : SimpleITK.Image
            A 3D scalar, real-valued image (spacing and origin in mm).
        dtype : numpy dtype, optional
            Convert the voxel values to it; None keeps the image's type.

        Returns
        -------
        Volume
            With the image's metadata fields shorter than 200 characters.

        Raises
        ------
        DblurDoseError
            For an image that is not 3D, not scalar (e.g. RGB), or complex.
        """
        import SimpleITK as sitk

        if image.GetDimension() == 4 and image.GetSize()[3] == 1:
            image = image[:, :, :, 0]
        if image.GetDimension() != 3:
            raise DblurDoseError(
                f"expected a 3D image, got {image.GetDimension()}D of size {image.GetSize()}; "
                "export a single 3D volume"
            )
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise DblurDoseError("expected a scalar image, got a multi-component (e.g. RGB) image")
        array = sitk.GetArrayFromImage(image)
        if np.iscomplexobj(array):
            raise DblurDoseError("expected real voxel values, got a complex image (raw k-space or Fourier data?); "
                                 "export the reconstructed image")
        if dtype is not None:
            array = array.astype(dtype, copy=False)
        meta = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys() if len(image.GetMetaData(k)) < 200}
        return cls(array, image.GetSpacing(), image.GetOrigin(), np.array(image.GetDirection()).reshape(3, 3), meta)


@dataclass
class Segment:
    """A named VOI as a boolean mask [z, y, x] on a volume's grid (the dose grid)."""

    name: str
    mask: np.ndarray


def check_orthogonal(volume: Volume, what: str = "image", tol: float = 1e-3) -> None:
    """Refuse a direction matrix whose axes are not orthonormal (sheared or degenerate grids).

    The dose kernels and voxel volumes assume orthogonal axes; a sheared grid would silently
    give a wrong map.

    Parameters
    ----------
    volume : Volume
        The image checked.
    what : str
        Its name in the message ("SPECT", "CT").
    tol : float
        Largest allowed deviation of ``direction.T @ direction`` from the identity.

    Raises
    ------
    DblurDoseError
        When the axes are not orthonormal (or the matrix is not finite).
    """
    d = np.asarray(volume.direction, dtype=np.float64)
    error = float(np.abs(d.T @ d - np.eye(3)).max()) if np.all(np.isfinite(d)) else float("inf")
    if error > tol:
        raise DblurDoseError(
            f"the {what}'s direction matrix is not orthogonal (axes sheared or degenerate, deviation {error:.3g}); "
            f"the dose calculation needs orthogonal voxel axes. Resample the {what} onto an orthogonal grid "
            "(e.g. harden the transform and resample it in Slicer), or re-export it from the scanner"
        )


def read_volume(path: str | os.PathLike, dtype: DTypeLike | None = np.float32, what: str = "image",
                series_uid: str | None = None) -> Volume:
    """Read NRRD, NIfTI, MHA/MHD or DICOM (a file, a series folder or a study folder: see :mod:`.dicom`).

    Parameters
    ----------
    path : str or os.PathLike
        The file or DICOM folder.
    dtype : numpy dtype, optional
        Type of the voxel values returned (float32 by default; None keeps the file's).
    what : str
        Names the input in error messages ("SPECT", "CT", ...) and picks a DICOM series by modality.
    series_uid : str, optional
        Chooses a DICOM series by its Series Instance UID.

    Returns
    -------
    Volume
        Values in the file's units (HU for CT); spacing and origin in mm.

    Raises
    ------
    DblurDoseError
        When the path does not exist or cannot be read as an image.
    """
    import SimpleITK as sitk

    from .dicom import is_dicom_path, read_dicom

    path = Path(path)
    if not path.exists():
        raise DblurDoseError(f"{what} file not found: {path}. Check the path (it is read, never modified).")
    if is_dicom_path(path):
        return read_dicom(path, what, dtype, series_uid)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise DblurDoseError(
            f"could not read the {what} from {path}: {str(exc).strip().splitlines()[-1]}. "
            f"Supported: {', '.join(READABLE_SUFFIXES)} or a DICOM folder."
        ) from None
    return Volume.from_sitk(image, dtype=dtype)


def write_volume(volume: Volume, path: str | os.PathLike, overwrite: bool = False, compress: bool = True) -> Path:
    """Write a volume (NRRD or any SimpleITK format by suffix); refuses to overwrite unless asked.

    Parameters
    ----------
    volume : Volume
        The image; its metadata is written as header fields.
    path : str or os.PathLike
        The output file; its suffix picks the format. Missing folders are made.
    overwrite : bool
        Replace an existing file.
    compress : bool
        Compress the voxel data (where the format can).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    DblurDoseError
        When ``path`` exists and ``overwrite`` is False.
    """
    import SimpleITK as sitk

    path = Path(path)
    if path.exists() and not overwrite:
        raise DblurDoseError(f"{path} already exists; choose another output or allow overwriting",
                             settings=("out", "overwrite"))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(volume.to_sitk(), str(path), compress)
    return path
