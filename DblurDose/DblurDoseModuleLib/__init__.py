"""Helpers of the DblurDose Slicer module (kept out of the module's folder, where Slicer would take
every .py file for a module of its own; installed beside DblurDose.py as DICOM's DICOMLib is)."""
