"""The training sampler: busy voxels drawn more often, each draw weighted back so the objective holds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codec.fit.sampling import VoxelSampler, activity


def edge_volume() -> np.ndarray:
    """A [-1, 1] volume: flat, with one cube whose faces are the only changes."""
    unit = np.full((24, 20, 16), -1.0, np.float32)
    unit[8:16, 6:14, 4:12] = 0.5
    return unit


def test_activity_marks_an_edge_and_its_neighbours_and_nothing_flat():
    unit = edge_volume()
    a = activity(unit)
    assert a.shape == unit.shape and a.dtype == np.float32
    assert a[8, 10, 8] == pytest.approx(1.5)  # on the cube's face
    assert a[6, 10, 8] == pytest.approx(1.5)  # two voxels out: the step plus the widening by one
    assert a[0, 0, 0] == 0 and a[12, 10, 8] == 0  # far outside, deep inside


def test_uniform_draws_carry_no_weights_and_come_in_memory_order():
    sampler = VoxelSampler(edge_volume(), 0.0)
    draw = sampler.draw(4096, torch.Generator().manual_seed(0))
    assert draw.weight is None
    assert torch.all(draw.flat[1:] >= draw.flat[:-1])
    assert 0 <= int(draw.flat.min()) and int(draw.flat.max()) < edge_volume().size


def test_busy_voxels_are_drawn_more_often_and_the_weighted_mean_is_the_volume_mean():
    unit = edge_volume()
    busy = activity(unit).reshape(-1) > 0
    sampler = VoxelSampler(unit, 0.8)
    generator = torch.Generator().manual_seed(1)
    draws = [sampler.draw(20_000, generator) for _ in range(20)]
    flat = torch.cat([d.flat for d in draws])
    weight = torch.cat([d.weight for d in draws])
    assert torch.all(torch.cat([d.flat[1:] >= d.flat[:-1] for d in draws]))
    per_voxel_busy = busy[flat.numpy()].sum() / busy.sum()
    per_voxel_flat = (~busy[flat.numpy()]).sum() / (~busy).sum()
    assert per_voxel_busy > 3 * per_voxel_flat
    # Any per-voxel error: the weighted batch mean estimates its plain mean over the volume.
    error = (
        torch.from_numpy(np.random.default_rng(2).random(unit.size).astype(np.float32))
        + torch.from_numpy(busy.astype(np.float32)) * 3
    )
    assert float((weight * error[flat]).mean()) == pytest.approx(float(error.mean()), rel=0.02)
    assert float(weight.mean()) == pytest.approx(1.0, rel=0.02)


def test_a_constant_volume_is_drawn_uniformly():
    sampler = VoxelSampler(np.zeros((8, 8, 8), np.float32), 0.8)
    draw = sampler.draw(50_000, torch.Generator().manual_seed(3))
    assert draw.weight is None
    counts = np.bincount(draw.flat.numpy(), minlength=512)
    assert counts.min() > 0 and counts.std() / counts.mean() < 0.2


def test_the_region_keeps_its_weight_with_busy_voxels_drawn_more_often():
    unit = edge_volume()
    roi = np.zeros(unit.shape, bool)
    roi[:4] = True  # a flat slab: inside and outside differ only by the region's weight
    sampler = VoxelSampler(unit, 0.8, roi, roi_weight=10.0)
    generator = torch.Generator().manual_seed(4)
    draws = [sampler.draw(20_000, generator) for _ in range(20)]
    flat = torch.cat([d.flat for d in draws]).numpy()
    weight = torch.cat([d.weight for d in draws]).numpy()
    inside = roi.reshape(-1)[flat]
    # The objective's weight per voxel: the region's counts 10 times the rest's.
    per_voxel_in = weight[inside].sum() / roi.sum()
    per_voxel_out = weight[~inside].sum() / (~roi).sum()
    assert per_voxel_in / per_voxel_out == pytest.approx(10.0, rel=0.05)


def test_the_share_must_be_a_fraction_and_all_of_it_still_reaches_flat_voxels():
    with pytest.raises(ValueError, match="share"):
        VoxelSampler(edge_volume(), 1.5)
    sampler = VoxelSampler(edge_volume(), 1.0)
    assert torch.isfinite(sampler.weight).all()
    assert float(sampler.cdf.diff().min()) > 0 and float(sampler.cdf[0]) > 0  # every stratum can be drawn
