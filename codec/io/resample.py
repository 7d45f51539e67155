"""Decoding on another grid than the file's: the output shape, its affine and its NIfTI header.

The network is continuous in its coordinates, so a .moec file decodes at any resolution (thin
slices from a 5 mm CT, a coarse overview of a large volume). Output voxel i of an axis of n'
voxels sits at the "centre" coordinate (2 i + 1) / n' - 1 (codec.model.coords), so the n' voxels cut the
same [-1, 1] box into n' equal cells as the file's n voxels cut it into n: the box the output
covers is the file's box, the voxel size along that axis is multiplied by n / n', and the outer
edges of the first and last voxel stay where they were.
"""

from __future__ import annotations

import math
from typing import Any

import nibabel as nib
import numpy as np

from codec.errors import VolumeError

#: The largest output grid decoded in one piece (values, labels and confidence take 9 bytes a
#: voxel: 2^32 voxels would be 36 GiB); a region of a larger grid can still be decoded.
MAX_OUTPUT_VOXELS = 1 << 32


def scaled_shape(shape: tuple[int, ...], scale: float | tuple[float, ...]) -> tuple[int, ...]:
    """The output grid for a scale factor (one for every axis, or one per axis): n' = round(n s),
    at least 1 voxel per axis."""
    factors = tuple(float(s) for s in (scale if isinstance(scale, (tuple, list)) else (scale,) * len(shape)))
    if len(factors) != len(shape):
        raise VolumeError(f"a scale needs 1 or {len(shape)} factors (one per axis), not {len(factors)}")
    if not all(math.isfinite(s) and s > 0 for s in factors):
        raise VolumeError(f"scale factors must be positive numbers, not {' '.join(f'{s:g}' for s in factors)}")
    return check_shape(tuple(max(1, int(round(n * s))) for n, s in zip(shape, factors)), len(shape))


def spatially_scaled(shape: tuple[int, ...], scale: float | tuple[float, ...]) -> tuple[int, ...]:
    """`scaled_shape` of the three spatial axes (one factor, or three); a 4D grid keeps its time
    points, which the user asks for when decoding thin slices, not more frames."""
    return scaled_shape(tuple(shape[:3]), scale) + tuple(shape[3:])


def check_shape(shape: Any, ndim: int) -> tuple[int, ...]:
    """An output grid of `ndim` axes of at least one voxel each, small enough to decode."""
    try:
        out = tuple(int(n) for n in shape)
    except (TypeError, ValueError):
        raise VolumeError(f"an output shape is a list of {ndim} whole numbers, not {shape!r}") from None
    if len(out) != ndim or any(n != m for n, m in zip(out, shape)):
        raise VolumeError(f"an output shape needs {ndim} whole numbers (one per axis), not {tuple(shape)}")
    if any(n < 1 for n in out):
        raise VolumeError(f"every axis of an output shape needs at least one voxel, not {' x '.join(map(str, out))}")
    if math.prod(out) > MAX_OUTPUT_VOXELS:
        raise VolumeError(
            f"an output grid of {' x '.join(map(str, out))} voxels is too large to decode "
            f"(at most {MAX_OUTPUT_VOXELS:,} voxels)"
        )
    return out


def resampled_affine(affine: np.ndarray, shape: tuple[int, ...], new_shape: tuple[int, ...]) -> np.ndarray:
    """The voxel-to-world affine of `new_shape` voxels covering the box of `shape` voxels under
    `affine`: the voxel size scales by n / n' per axis and the origin moves so that the outer edges
    of the first and last voxel stay in place (only the three spatial axes enter the affine)."""
    affine = np.asarray(affine, dtype=np.float64)
    ratio = np.ones(3)
    for axis in range(min(3, len(shape))):
        ratio[axis] = shape[axis] / new_shape[axis]
    # Output voxel i' sits at file voxel u = (i' + 1/2) r - 1/2 (the same normalised coordinate).
    to_file = np.diag(np.r_[ratio, 1.0])
    to_file[:3, 3] = 0.5 * ratio - 0.5
    return affine @ to_file


def resampled_header(header: bytes, shape: tuple[int, ...], new_shape: tuple[int, ...]) -> bytes:
    """The file's NIfTI-1 header for the output grid: its dims, zooms (time too, for 4D) and the
    sform and qform of `resampled_affine`, each under the file's own code."""
    hdr = nib.Nifti1Header(binaryblock=header).copy()
    new_affine = resampled_affine(hdr.get_best_affine(), shape, new_shape)
    zooms = (list(hdr.get_zooms()) + [1.0] * len(new_shape))[: len(new_shape)]
    hdr.set_data_shape(tuple(new_shape))
    # Each transform keeps its code: one the file marked unknown (0) stays unknown.
    hdr.set_sform(new_affine, code=int(hdr["sform_code"]))
    hdr.set_qform(new_affine, code=int(hdr["qform_code"]))
    # Last, since setting the qform rewrites the spatial zooms from the affine; time scales too.
    hdr.set_zooms(tuple(float(z) * n / m for z, n, m in zip(zooms, shape, new_shape)))
    return bytes(hdr.binaryblock)


def resampled_descrip(tag: str, new_shape: tuple[int, ...]) -> str:
    """The NIfTI descrip of a resampled output: still marked lossy (MoEC, the ratio), and resampled."""
    return f"{tag}, resampled to {'x'.join(map(str, new_shape))}"
