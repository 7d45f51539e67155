"""The sample volume that ships with the project: a synthetic CT-like torso phantom, generated.

Distinct tissues with CT values in Hounsfield units (air, fat, muscle, lungs, liver, kidneys, spine,
ribs, aorta), smooth boundaries and a little texture, stored as int16 with intercept -1024 like many
scanners write, with anisotropic 1.5 x 1.5 x 3 mm voxels in an LPS-flipped affine. Its tissue labels
come with it, so a test can ask whether the learned partition follows the anatomy.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from codec.io.volume import Volume, from_array, synthetic_header

TISSUES = ("air", "fat", "muscle", "lung", "liver", "kidney", "bone", "vessel")
#: Mean CT value of each tissue, in Hounsfield units.
HU = {
    "air": -1000.0,
    "fat": -100.0,
    "muscle": 45.0,
    "lung": -820.0,
    "liver": 65.0,
    "kidney": 30.0,
    "bone": 850.0,
    "vessel": 180.0,
}
SPACING = (1.5, 1.5, 3.0)


def _ellipsoid(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, centre: tuple[float, float, float], radii: tuple[float, float, float]
) -> np.ndarray:
    return ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2


def phantom_arrays(shape: tuple[int, int, int] = (96, 80, 48), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(HU values as float32, tissue labels as uint8 indexing TISSUES) for a torso of this shape."""
    nx, ny, nz = shape
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape), indexing="ij")
    labels = np.zeros(shape, dtype=np.uint8)

    def paint(mask: np.ndarray, tissue: str) -> None:
        labels[mask] = TISSUES.index(tissue)

    body = _ellipsoid(x, y, z * 0.6, (0, 0, 0), (0.92, 0.72, 1.0)) < 1
    paint(body, "fat")
    paint(_ellipsoid(x, y, z * 0.6, (0, 0, 0), (0.82, 0.62, 1.0)) < 1, "muscle")
    for side in (-1, 1):
        paint(_ellipsoid(x, y, z, (0.4 * side, 0.02, 0.35), (0.3, 0.42, 0.62)) < 1, "lung")
        paint(_ellipsoid(x, y, z, (0.42 * side, 0.32, -0.55), (0.12, 0.1, 0.22)) < 1, "kidney")
    paint(_ellipsoid(x, y, z, (-0.32, -0.05, -0.45), (0.38, 0.35, 0.4)) < 1, "liver")
    radius = np.sqrt(x**2 + (y * 1.25) ** 2)
    ribs = (np.abs(radius - 0.76) < 0.035) & (np.cos(z * 22.0) > 0.55) & (z > -0.1)
    paint(ribs & body, "bone")
    paint(_ellipsoid(x, y, z, (0, 0.45, 0), (0.1, 0.09, 2.0)) < 1, "bone")  # spine
    paint(_ellipsoid(x, y, z, (0.12, 0.25, 0), (0.06, 0.06, 2.0)) < 1, "vessel")  # aorta

    hu = np.zeros(shape, dtype=np.float32)
    for index, tissue in enumerate(TISSUES):
        hu[labels == index] = HU[tissue]
    rng = np.random.default_rng(seed)
    # Low-frequency texture (organs are not flat) plus a little noise, as a scanner would show.
    texture = rng.standard_normal((nx // 8 + 2, ny // 8 + 2, nz // 8 + 2)).astype(np.float32)
    texture = np.kron(texture, np.ones((8, 8, 8), dtype=np.float32))[:nx, :ny, :nz]
    texture = gaussian_filter(texture, 3.0)
    hu += np.where(labels > 0, 25.0 * texture / max(float(np.abs(texture).max()), 1e-6), 0.0)
    hu += rng.normal(0.0, 4.0, shape).astype(np.float32)
    hu = gaussian_filter(hu, 0.6)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.float32), labels


def phantom_affine(shape: tuple[int, int, int]) -> np.ndarray:
    """LPS-flipped axes (as DICOM-derived NIfTIs often are) with the phantom's voxel spacing."""
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    affine[:3, 3] = [SPACING[0] * (shape[0] - 1) / 2, SPACING[1] * (shape[1] - 1) / 2, -SPACING[2] * (shape[2] - 1) / 2]
    return affine


def make_phantom(shape: tuple[int, int, int] = (96, 80, 48), seed: int = 0) -> tuple[Volume, np.ndarray]:
    """The phantom as a Volume (int16 stored with intercept -1024, HU values) and its tissue labels."""
    hu, labels = phantom_arrays(shape, seed)
    affine = phantom_affine(shape)
    header = synthetic_header(shape, np.dtype(np.int16), affine)
    return from_array(hu, affine=affine, header=header, dtype=np.dtype(np.int16), slope=1.0, inter=-1024.0), labels
