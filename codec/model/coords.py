"""Voxel coordinates (not the latent grid: that is model.LatentGrid).

Convention "centre" (stored in every .moec header): voxel i of an axis of length n sits at
x = (2 i + 1) / n - 1, the centre of its cell when [-1, 1] is cut into n equal cells. An axis of
length 1 therefore maps to 0, and no coordinate ever reaches the edges of [-1, 1].
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

COORDINATE_CONVENTION = "centre"


def axis_positions(index: Any, n: int) -> Any:
    """Positions in [-1, 1] of voxel indices along an axis of length n (the "centre" convention)."""
    return (2.0 * index + 1.0) / n - 1.0


def coords_from_flat(flat: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Coordinates (B, D) in [-1, 1] of the voxels with C-order flat indices `flat` (B,)."""
    coords = torch.empty(flat.shape[0], len(shape), dtype=torch.float32, device=flat.device)
    rest = flat
    for axis in range(len(shape) - 1, -1, -1):
        n = shape[axis]
        index = rest % n
        rest = torch.div(rest, n, rounding_mode="floor")
        coords[:, axis] = axis_positions(index.to(torch.float32), n)
    return coords


def selection_coords(
    shape: tuple[int, ...], selection: tuple[slice | int, ...]
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Coordinates (C order) of the voxels picked by `selection` (an int or a slice per axis), and
    the picked shape (integer axes kept as length 1)."""
    axes = selection_axes(shape, selection)
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=1), tuple(len(a) for a in axes)


def selection_axes(shape: tuple[int, ...], selection: tuple[slice | int, ...]) -> list[torch.Tensor]:
    """Positions in [-1, 1] along each axis of the voxels picked by `selection`: the selection's
    coordinates are their product (C order)."""
    return [
        torch.from_numpy(axis_positions(np.atleast_1d(np.arange(n)[sel]).astype(np.float32), n))
        for n, sel in zip(shape, selection)
    ]


def flat_chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(start + size, total)
