"""Fixed partitions of the volume: the block split and the intensity clusters.

The block split is the TINC-style baseline (`--partition blocks`): a near-cubic grid of N equal
blocks. The intensity clusters are the router's pretraining target: k-means on (smoothed intensity,
position), so experts start on regions that are both compact and homogeneous (tissues, air), which
measured better than starting from blocks (see the README's ablation table).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from codec.model.coords import coords_from_flat, flat_chunks

CLUSTER_SAMPLE = 100_000
CLUSTER_ITERATIONS = 25


def block_grid(shape: tuple[int, ...], blocks: int) -> tuple[int, ...]:
    """A near-cubic grid of `blocks` equal blocks: 2x2x2 for 8, 2x2x1 for 4 on a cube.

    Prime factors, largest first, go to the axis whose blocks are currently longest, so blocks stay
    close to cubes in voxels whatever the volume's proportions.
    """
    grid = [1] * len(shape)
    factors = []
    rest, p = blocks, 2
    while rest > 1:
        while rest % p == 0:
            factors.append(p)
            rest //= p
        p += 1
    for factor in sorted(factors, reverse=True):
        longest = max(range(len(shape)), key=lambda a: (shape[a] / grid[a], -a))
        grid[longest] *= factor
    assert math.prod(grid) == blocks
    return tuple(grid)


def block_index(coords: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """The block (0 .. prod(grid)-1, C order) holding each coordinate."""
    index = torch.zeros(coords.shape[0], dtype=torch.long, device=coords.device)
    for axis, g in enumerate(grid):
        cell = ((coords[:, axis] + 1.0) * (0.5 * g)).floor().clamp_(0, g - 1).long()
        index = index * g + cell
    return index


def block_local(coords: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """Coordinates rescaled to [-1, 1] inside their own block."""
    local = torch.empty_like(coords)
    for axis, g in enumerate(grid):
        scaled = (coords[:, axis] + 1.0) * (0.5 * g)
        cell = scaled.floor().clamp_(0, g - 1)
        local[:, axis] = 2.0 * (scaled - cell) - 1.0
    return local


def intensity_clusters(
    unit: np.ndarray, shape: tuple[int, ...], n: int, seed: int = 0, sigma: float = 1.5, spatial: float = 1.0
) -> np.ndarray:
    """k-means labels (uint8, C-order flat) on (Gaussian-smoothed intensity, spatial * position).

    `unit` is the volume on the [-1, 1] training scale, flat in C order. The smoothing keeps the
    partition simple enough for a small router to learn; the position term keeps clusters compact.
    Fitting uses a random subsample, so the cost is dominated by one pass of assignments.
    """
    smoothed = gaussian_filter(unit.reshape(shape), sigma=sigma, mode="nearest").reshape(-1)
    generator = torch.Generator().manual_seed(seed)

    def features(flat: torch.Tensor) -> torch.Tensor:
        values = torch.from_numpy(smoothed[flat.numpy()]).unsqueeze(1)
        return torch.cat([values, spatial * coords_from_flat(flat, shape)], dim=1)

    total = smoothed.size
    sample = features(torch.randint(0, total, (min(total, CLUSTER_SAMPLE),), generator=generator))
    centres = sample[torch.randperm(sample.shape[0], generator=generator)[:n]].clone()
    for _ in range(CLUSTER_ITERATIONS):
        nearest = torch.cdist(sample, centres).argmin(dim=1)
        for k in range(n):
            members = sample[nearest == k]
            if members.shape[0]:
                centres[k] = members.mean(dim=0)
    labels = np.empty(total, dtype=np.uint8)
    for start, stop in flat_chunks(total, 1 << 18):
        flat = torch.arange(start, stop)
        labels[start:stop] = torch.cdist(features(flat), centres).argmin(dim=1).numpy()
    return labels
