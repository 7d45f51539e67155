"""Shared fixtures: small real volumes on disk, written and read with nibabel."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import nibabel as nib
import numpy as np
import pytest
import torch

from codec.io.phantom import make_phantom

torch.set_num_threads(min(2, os.cpu_count() or 1))

#: Small enough to train in seconds, large enough to hold every tissue of the phantom.
PHANTOM_SHAPE = (48, 40, 24)


@pytest.fixture(scope="session")
def phantom():
    """(Volume, tissue labels) of the shipped phantom at test size."""
    return make_phantom(PHANTOM_SHAPE)


def permuted_affine() -> np.ndarray:
    """Voxel axes stored in the order (z, x, y) with mixed signs, as some exports do."""
    affine = np.zeros((4, 4))
    affine[0, 1] = -0.9
    affine[1, 2] = 1.1
    affine[2, 0] = 3.0
    affine[:3, 3] = [12.0, -30.0, 7.5]
    affine[3, 3] = 1.0
    return affine


def write_nifti(
    path,
    raw: np.ndarray,
    affine: np.ndarray,
    slope: float = 1.0,
    inter: float = 0.0,
    sform_code: int = 1,
    qform_code: int = 1,
) -> None:
    """Write stored values with explicit scaling, the way a scanner's converter would."""
    img = nib.Nifti1Image(raw, affine)
    img.header.set_sform(affine, code=sform_code)
    img.header.set_qform(affine, code=qform_code)
    img.header.set_slope_inter(slope, inter)
    img.header["descrip"] = b"test volume"
    nib.save(img, str(path))


@pytest.fixture
def scaled_ct(tmp_path):
    """An int16 CT-like volume with slope 2 and intercept -1024, LPS-flipped, on disk."""
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 2000, size=(20, 18, 12)).astype(np.int16)
    affine = np.diag([-0.7, -0.7, 2.5, 1.0])
    affine[:3, 3] = [90.0, 100.0, -40.0]
    path = tmp_path / "ct.nii.gz"
    write_nifti(path, raw, affine, slope=2.0, inter=-1024.0, sform_code=1, qform_code=2)
    return path, raw, affine


#: One study of one patient, the identity every generated DICOM series is filed under.
STUDY_UID = "1.2.826.0.1.3680043.8.498.1001"
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "MOEC-0042", "PatientBirthDate": "19700101", "PatientSex": "F"}


def oblique_geometry() -> dict:
    """Row and column directions rotated 20 degrees about the patient's S axis and 10 about L, LPS."""
    a, b = np.radians(20.0), np.radians(10.0)
    about_s = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    about_l = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    rotation = about_l @ about_s
    return {"row_cos": rotation[:, 0], "col_cos": rotation[:, 1], "origin": np.array([-120.5, -80.25, 33.0])}


def dicom_affine(row_cos, col_cos, origin, spacing, slice_gap) -> np.ndarray:
    """The RAS affine of (column, row, slice) voxels by PS3.3 C.7.6.2.1.1 (LPS), first two rows negated."""
    normal = np.cross(row_cos, col_cos)
    lps = np.eye(4)
    lps[:3, 0] = np.asarray(row_cos) * spacing[1]
    lps[:3, 1] = np.asarray(col_cos) * spacing[0]
    lps[:3, 2] = normal * slice_gap
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def write_dicom_series(
    folder,
    raw: np.ndarray,
    *,
    row_cos,
    col_cos,
    origin,
    spacing=(0.8, 0.7),
    slice_gap=2.5,
    slope: float = 1.0,
    inter: float = 0.0,
    modality: str = "CT",
    series_uid: str = "1.2.3.4.1",
    series_number: int = 3,
    description: str = "Thorax",
    seed: int = 0,
    edit=None,
) -> list:
    """Write `raw` (stored values indexed column, row, slice) as a DICOM series with pydicom, the way
    a scanner would: one file per slice under a random name (so names do not sort like slices),
    positions along the normal, rescale slope and intercept. `edit(k, ds)` may spoil slice k."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    normal = np.cross(row_cos, col_cos)
    rng = np.random.default_rng(seed)
    sop_class = "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4"
    paths = []
    for k in rng.permutation(raw.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(k)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        for keyword, value in PATIENT.items():
            setattr(ds, keyword, value)
        ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = STUDY_UID, "20240131", "101500"
        ds.AccessionNumber, ds.StudyDescription = "ACC123", "Chest"
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, series_number, description
        ds.Modality, ds.FrameOfReferenceUID = modality, "1.2.826.0.1.3680043.8.498.77"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = int(k) + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(origin) + k * slice_gap * normal]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in np.r_[row_cos, col_cos]]
        ds.PixelSpacing = [f"{spacing[0]:g}", f"{spacing[1]:g}"]
        ds.SliceThickness = "5"  # deliberately not the spacing: the reader must take it from the positions
        image = np.ascontiguousarray(raw[:, :, k].T)
        ds.Rows, ds.Columns = image.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8 * image.dtype.itemsize
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = int(image.dtype.kind == "i")
        if (slope, inter) != (1.0, 0.0):
            ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{inter:g}"
        ds.PixelData = image.tobytes()
        if edit is not None:
            edit(int(k), ds)
        path = folder / f"{rng.integers(1 << 40):x}"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths
