"""The scale the network works in: a volume's values from vmin .. vmax mapped to [-1, 1] for training
(targets near unit scale) and back to real units for decoding. It belongs to the network, not to
any file: the .moec header stores vmin and vmax, and nothing is written in this scale."""

from __future__ import annotations

import numpy as np


def to_unit(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Real units -> [-1, 1], the scale the network is trained on (targets near unit scale)."""
    span = vmax - vmin
    if span <= 0:
        return np.zeros_like(values, dtype=np.float32)
    return ((np.asarray(values, dtype=np.float32) - np.float32(vmin)) * np.float32(2.0 / span) - 1.0).astype(np.float32)


def from_unit(unit: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """[-1, 1] -> real units, clipped to the original range (no voxel was ever outside it)."""
    unit = np.clip(np.asarray(unit, dtype=np.float32), -1.0, 1.0)
    return ((unit + 1.0) * np.float32(0.5 * (vmax - vmin)) + np.float32(vmin)).astype(np.float32)
