"""Volumes in and out: NIfTI and NumPy files, DICOM series, regions of interest, the sample phantom, atomic writes."""
