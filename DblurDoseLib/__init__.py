"""DblurDoseLib: voxel-level Lu-177 dose-rate maps from SPECT/CT.

Layout, by pipeline stage (each sub-package imports only those above it in this list, and
``errors``/``devices``; ARCHITECTURE.md draws the data flow):

* ``io``: volumes and segments (NRRD, NIfTI, DICOM) in and out, atomic output files, DICOM
  export, Slicer's file formats, the training data set's file layout.
* ``geometry``: the one resampler and grid builder, segments, registration.
* ``physics``: nuclides, CT-to-density, dose-voxel kernels, the DVK convolution, Monte Carlo
  transport, time integration, radiobiology.
* ``simulation``: virtual patients (phantoms) and SPECT acquisition/reconstruction.
* ``learning``: the DblurDoseNet network, inference, training.
* ``evaluation``: metrics, the paper's evaluation, HTML reports.
* top level: the workflows (``dose`` dose-rate maps, ``dosimetry`` absorbed dose, ``data`` the
  training set, ``demo``) and the command line (``cli``).
* ``mrml``: the Qt-free bridge to Slicer's scene, and the module's sample data.

Conventions used throughout the library (read these before adding a module):

* Arrays are numpy ``float32`` (labels ``int16``/``uint8``) indexed ``[z, y, x]``, the order
  SimpleITK's ``GetArrayFromImage`` and Slicer's ``arrayFromVolume`` give.
* Geometry (:class:`DblurDoseLib.io.volume.Volume`) is in physical ITK order: ``spacing`` (x, y, z)
  in mm, ``origin`` (x, y, z) in mm (LPS), ``direction`` a row-major 3x3 matrix of unit column
  vectors.
* Units: activity concentration in Bq/mL, activity per voxel in Bq, density in g/cm3, kernels
  in mGy per decay, dose rate in mGy/h, energy in keV unless a name says otherwise.
* User-facing problems raise :class:`DblurDoseLib.errors.DblurDoseError` with a message that
  names the problem and the fix; the command line turns it into a clean exit.
"""

#: The package version, written only here (pyproject.toml reads it; ``dblurdose --version``, provenance
#: and DICOM SoftwareVersions print it). Its major.minor follow the shipped weights' model card (v0.3).
__version__ = "0.3.0"

from pathlib import Path as _Path

#: Files shipped with the package (kernels, weights, tables): one folder, found from here.
DATA_DIR = _Path(__file__).resolve().parent / "data"
