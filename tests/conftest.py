"""Shared fixtures: small real volumes on disk, written and read with nibabel."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from codec.phantom import make_phantom  # noqa: E402

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


def write_nifti(path, raw: np.ndarray, affine: np.ndarray, slope: float = 1.0, inter: float = 0.0,
                sform_code: int = 1, qform_code: int = 1) -> None:
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
