"""The decoder's floor: reconstructed values at or below it decode as the volume's minimum.

Much of a medical volume is exactly its minimum (air and padding outside the body: most of the
brain template's voxels are 0). A network reconstructs that background with a small noise of its
own, a fraction of an intensity level that rounding turns into patches of 1s and 0s. That costs
little PSNR but much SSIM, whose constants make a flat region very sensitive to any noise
(docs/benchmarks.md, "The latent grid and its coding", on the decoder's floor). The encoder, which
has the original, picks the floor that lowers the squared error most on a sample of voxels and
stores it in the header (format version 4); the decoder applies it after rounding to the stored
dtype. A floor is a clean-up of background noise, not a segmentation: it is capped at
FLOOR_SHARE of the intensity range, and a file without one decodes as before.
"""

from __future__ import annotations

import numpy as np

#: The highest floor, as a share of the intensity range above the minimum.
FLOOR_SHARE = 0.1
#: Voxels decoded to choose the floor (every voxel of a smaller volume).
SAMPLE_VOXELS = 1 << 20


def choose_floor(original: np.ndarray, recon: np.ndarray, vmin: float, vmax: float) -> float | None:
    """The floor that lowers the squared error of `recon` against `original` most (same voxels,
    real units, `recon` as decoded), or None where no floor lowers it."""
    recon = np.asarray(recon, dtype=np.float64).reshape(-1)
    original = np.asarray(original, dtype=np.float64).reshape(-1)
    pick = (recon > vmin) & (recon <= vmin + FLOOR_SHARE * (vmax - vmin))
    r, o = recon[pick], original[pick]
    if not r.size:
        return None
    gain = (r - o) ** 2 - (vmin - o) ** 2  # what snapping each voxel to vmin saves
    order = np.argsort(r, kind="stable")
    r, total = r[order], np.cumsum(gain[order])
    ends = np.append(np.flatnonzero(np.diff(r)), r.size - 1)  # a floor takes all voxels of a value or none
    best = ends[np.argmax(total[ends])]
    return float(r[best]) if total[best] > 0 else None


def apply_floor(values: np.ndarray, floor: float | None, vmin: float) -> np.ndarray:
    """`values` with every value at or below `floor` set to `vmin` (in place; returned)."""
    if floor is not None:
        values[values <= np.float32(floor)] = np.float32(vmin)
    return values
