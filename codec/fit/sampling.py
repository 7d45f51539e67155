"""Where training draws its voxels: more often where the volume changes, each draw weighted back.

A uniform draw spends most of a batch on voxels the model already gets right: the air around a
chest CT, flat tissue, the background of a brain. The sampler draws a voxel with probability

    p_i = (1 - a) q_i + a q_i s_i / sum_j(q_j s_j)

where q_i is the voxel's share of the objective (1/N; a region of interest's voxels `roi_weight`
times more than the others, codec.io.roi) and s_i its activity: the largest step to a face neighbour,
widened by one voxel, so an edge and the voxels either side of it count as busy. Each draw carries
the weight q_i / p_i into the loss, so the batch's weighted MSE is the objective's MSE in
expectation: the objective does not change, the gradient's variance falls (importance sampling).
At a = 0 every weight is 1 and the draw is the objective's own.

Voxels are grouped into strata of equal activity (its log2 rounded to half-steps, split by the
region of interest): a draw picks a stratum by its mass, then a voxel of it uniformly, through one
array of flat indices sorted by stratum: a batch then costs little more than a uniform one, where a
search of a per-voxel cumulative distribution would cost more than the draw saves
(docs/benchmarks.md, "Training: where the batch is drawn").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

#: Activity strata per octave: within one, activity varies by at most 2^(1/2).
STEPS_PER_OCTAVE = 2
#: Activities below this (in the [-1, 1] scale's units) count as this, in the lowest stratum: a
#: 12-bit CT's single level is 2 / 4096, so this is a quarter of a level. A constant volume is then
#: drawn uniformly.
FLOOR = 2.0**-13


@dataclass(frozen=True)
class Draw:
    """A batch: flat voxel indices in ascending (memory) order, and each draw's loss weight
    (None where all are 1)."""

    flat: torch.Tensor
    weight: torch.Tensor | None


def activity(unit: np.ndarray) -> np.ndarray:
    """Per voxel, the largest absolute step to a face neighbour, then the largest over the voxel's
    3^d neighbourhood (float32, the volume's shape)."""
    unit = np.asarray(unit, dtype=np.float32)
    step = np.zeros_like(unit)
    for axis in range(unit.ndim):
        if unit.shape[axis] < 2:
            continue
        d = np.abs(np.diff(unit, axis=axis))
        ahead = [slice(None)] * unit.ndim
        behind = [slice(None)] * unit.ndim
        ahead[axis], behind[axis] = slice(0, -1), slice(1, None)
        np.maximum(step[tuple(ahead)], d, out=step[tuple(ahead)])
        np.maximum(step[tuple(behind)], d, out=step[tuple(behind)])
    return ndimage.maximum_filter(step, size=3, mode="nearest")


class VoxelSampler:
    """Draws training voxels of one volume (see the module's docstring). `roi`: a boolean mask in
    the volume's shape, or None; `share`: the a above, in [0, 1]."""

    def __init__(self, unit: np.ndarray, share: float, roi: np.ndarray | None = None, roi_weight: float = 1.0):
        if not 0.0 <= share <= 1.0:
            raise ValueError("the activity share must be in [0, 1]")
        self.total = total = int(np.asarray(unit).size)
        self.weighted = False
        self._uniform = share == 0 and roi is None
        if self._uniform:
            return
        inside = None if roi is None else np.asarray(roi, dtype=bool).reshape(-1)
        keys = np.zeros(total, dtype=np.uint8)
        busy = None
        if share > 0:
            # Floored, so that even a = 1 draws every voxel now and then.
            busy = np.maximum(activity(unit).reshape(-1), np.float32(FLOOR))
            levels = np.floor(np.log2(busy) * STEPS_PER_OCTAVE).astype(np.int16)
            keys = (levels - levels.min()).astype(np.uint8)  # at most 2 x 14 octaves: a byte
            del levels
        if inside is not None:
            keys = keys * np.uint8(2) + inside
        # Small unsigned keys: numpy's stable sort is a radix sort here, linear in the voxels.
        count = np.bincount(keys)
        present = np.flatnonzero(count)
        stratum = np.zeros(count.size, dtype=np.uint8)
        stratum[present] = np.arange(present.size)
        stratum = stratum[keys]
        del keys
        order = np.argsort(stratum, kind="stable")
        count = count[present]
        q = None if inside is None else np.where(inside, roi_weight, 1.0)
        objective = count.astype(np.float64) if q is None else np.bincount(stratum, weights=q, minlength=len(present))
        objective /= objective.sum()  # Q_c: the stratum's share of the objective
        mass = objective
        if busy is not None:
            activity_mass = np.bincount(stratum, weights=busy if q is None else q * busy, minlength=len(present))
            mass = (1.0 - share) * objective + share * activity_mass / activity_mass.sum()
        # A voxel of stratum c: q_i = Q_c / n_c, p_i = m_c / n_c, so its draws weigh Q_c / m_c.
        weight = objective / mass
        self.order = torch.from_numpy(order.astype(np.int32 if total < 2**31 else np.int64))
        self.start = torch.from_numpy(np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64))
        self.count = torch.from_numpy(count.astype(np.int64))
        cdf = np.cumsum(mass) / mass.sum()
        low = np.concatenate([[0.0], cdf[:-1]])  # where each stratum's share of [0, 1) starts
        self.cdf = torch.from_numpy(cdf)
        self.low = torch.from_numpy(low)
        self.mass = torch.from_numpy(np.maximum(cdf - low, 1e-300))
        self.weight = torch.from_numpy(weight.astype(np.float32))
        self.weighted = not np.allclose(weight, 1.0)

    def draw(self, batch: int, generator: torch.Generator) -> Draw:
        if self._uniform:
            return Draw(torch.randint(0, self.total, (batch,), generator=generator).sort().values, None)
        # One uniform number per draw picks the stratum and, rescaled within the stratum's share
        # of [0, 1), the voxel in it.
        u = torch.rand(batch, generator=generator, dtype=torch.float64)
        stratum = torch.searchsorted(self.cdf, u).clamp_(max=self.cdf.numel() - 1)
        low, mass, count = self.low[stratum], self.mass[stratum], self.count[stratum]
        within = torch.minimum(((u - low) / mass * count).long(), count - 1)
        flat = self.order[self.start[stratum] + within].long()
        # In memory order: the grids' reads and their gradients' scatter then walk the grids forward
        # (codec.fit.train.Fitter.sample).
        flat, at = flat.sort()
        return Draw(flat, self.weight[stratum[at]] if self.weighted else None)
