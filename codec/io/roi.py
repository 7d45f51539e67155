"""A region of interest: voxels whose squared error counts `weight` times more in training.

A radiologist cares about the lesion, not the air. The region is a mask in the volume's voxel order
(a NIfTI label file on the command line, a Labels layer in the plugin); training draws its voxels
that much more often (codec.fit.sampling), so the batch's loss is the ROI-weighted MSE in
expectation, and the rate it buys goes where the weight says. The file records the region's size and
weight in its training record; the mask itself is not stored (decoding does not need it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from codec.errors import VolumeError


def check_roi(mask: np.ndarray, shape: tuple[int, ...], where: str = "the ROI") -> np.ndarray:
    """A boolean mask of the volume's shape (a 3D mask applies to every time point of a 4D
    volume), with at least one voxel in it and at least one outside."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and len(shape) == 4 and mask.shape == tuple(shape[:3]):
        mask = np.broadcast_to(mask[..., None], shape)
    if mask.shape != tuple(shape):
        raise VolumeError(
            f"{where} is {' x '.join(map(str, mask.shape))} voxels, the volume "
            f"{' x '.join(map(str, shape))}: a mask must be on the volume's grid"
        )
    if mask.dtype.kind == "f" and not np.isfinite(mask).all():
        raise VolumeError(f"{where} holds NaN or infinite values")
    mask = mask != 0
    if not mask.any():
        raise VolumeError(f"{where} is empty (no voxel is marked)")
    if mask.all():
        raise VolumeError(f"{where} covers the whole volume, so it weights nothing more than the rest")
    return np.ascontiguousarray(mask)


def load_roi(path: str | Path, shape: tuple[int, ...], affine: np.ndarray | None = None) -> np.ndarray:
    """A mask from a NIfTI file (any non-zero voxel is in the region), in the volume's voxel order.
    VolumeError when it is not a NIfTI file, not on the volume's grid, or places its voxels
    elsewhere than the volume's affine (more than a tenth of a voxel apart)."""
    import nibabel as nib

    path = Path(path)
    if not path.name.lower().endswith((".nii", ".nii.gz")):
        raise VolumeError(f"{path}: an ROI mask is a NIfTI file (.nii or .nii.gz)")
    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except FileNotFoundError:
        raise VolumeError(f"{path}: no such file") from None
    except Exception as exc:
        raise VolumeError(f"{path}: not a readable NIfTI mask ({exc})") from None
    mask = check_roi(data, shape, f"the ROI {path.name}")
    if affine is not None:
        spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
        if not np.allclose(image.affine[:3], np.asarray(affine)[:3], atol=0.1 * float(spacing.min())):
            raise VolumeError(
                f"the ROI {path.name} has the volume's shape but another affine: it would mark "
                "other anatomy (write the mask on the volume's grid)"
            )
    return mask
