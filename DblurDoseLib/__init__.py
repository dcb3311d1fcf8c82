"""DblurDoseLib: voxel-level Lu-177 dose-rate maps from SPECT/CT.

Conventions used throughout the library (read these before adding a module):

* Arrays are numpy ``float32`` (labels ``int16``/``uint8``) indexed ``[z, y, x]``, the order
  SimpleITK's ``GetArrayFromImage`` and Slicer's ``arrayFromVolume`` give.
* Geometry (:class:`DblurDoseLib.volume.Volume`) is in physical ITK order: ``spacing`` (x, y, z)
  in mm, ``origin`` (x, y, z) in mm (LPS), ``direction`` a row-major 3x3 matrix of unit column
  vectors.
* Units: activity concentration in Bq/mL, activity per voxel in Bq, density in g/cm3, kernels
  in mGy per decay, dose rate in mGy/h, energy in keV unless a name says otherwise.
* User-facing problems raise :class:`DblurDoseLib.errors.DblurDoseError` with a message that
  names the problem and the fix; the command line turns it into a clean exit.
"""

#: The package version, written only here (pyproject.toml reads it; ``dblurdose --version``, provenance
#: and DICOM SoftwareVersions print it). Its major.minor follow the shipped weights' model card (v0.2).
__version__ = "0.2.0"
