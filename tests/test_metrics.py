"""The measures of docs/design.md ("Measures")."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from codec.eval.metrics import expert_table, foreground, psnr, quality, ssim


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    a = rng.random((40, 30, 26)).astype(np.float32) * 100
    b = a + rng.normal(0, 5, a.shape).astype(np.float32)
    return a, b


def test_slab_ssim_equals_whole_volume_ssim(pair):
    a, b = pair
    expected = structural_similarity(a, b, win_size=7, data_range=float(a.max() - a.min()))
    value, method = ssim(a, b, slab=8)
    assert method == "3D"
    assert value == pytest.approx(expected, rel=1e-5)


def test_thin_volumes_fall_back_to_2d_ssim_and_say_so():
    a = np.random.default_rng(1).random((20, 20, 4)).astype(np.float32)
    value, method = ssim(a, a * 0.9)
    assert "2D per slice" in method and 0 < value <= 1


def test_psnr_uses_the_originals_range_and_handles_edge_cases(pair):
    a, b = pair
    peak = float(a.max() - a.min())
    expected = 10 * math.log10(peak**2 / float(np.mean((a.astype(np.float64) - b) ** 2)))
    assert psnr(a, b) == pytest.approx(expected)
    assert psnr(a, a) == math.inf
    constant = np.full((8, 8, 8), 3.0, dtype=np.float32)
    assert math.isnan(psnr(constant, constant + 1))


def test_quality_reports_the_clinical_figures():
    original = np.zeros((30, 30, 20), dtype=np.float32)
    original[8:22, 8:22, 4:16] = 1000.0
    recon = original.copy()
    recon[10, 10, 9] += 50.0  # one bad voxel in slice 9
    q = quality(original, recon, dtype=np.dtype(np.int16))
    assert q.max_error == 50.0
    assert q.p99_error == 0.0
    assert q.worst_slice == 9
    assert q.psnr_body < q.psnr  # the error sits inside the body, which is a fraction of the volume
    assert 0.1 < q.body_share < 0.6
    assert q.psnr_dtype_peak > q.psnr  # the literature's peak (32767) flatters the figure


def test_foreground_is_the_bright_part_dilated():
    original = np.zeros((20, 20, 20), dtype=np.float32)
    original[5:15, 5:15, 5:15] = 10
    mask = foreground(original)
    assert mask[5:15, 5:15, 5:15].all() and mask[3, 10, 10] and not mask[0, 0, 0]


def test_expert_table_shares_and_region_psnr():
    original = np.zeros((10, 10, 10), dtype=np.float32)
    original[5:] = 100
    recon = original.copy()
    recon[:5] += 1.0  # expert 0's region has an error of 1, expert 1's none
    labels = np.ones(original.shape, dtype=np.uint8)
    labels[5:] = 2
    table = expert_table(original, recon, labels, experts=3, parameters_per_expert=50)
    assert [t.share for t in table] == [0.5, 0.5, 0.0]
    assert table[0].psnr == pytest.approx(40.0)
    assert table[1].psnr == math.inf and math.isnan(table[2].psnr)
    assert all(t.parameters == 50 for t in table)


def test_the_body_mask_keeps_the_air_inside_the_body():
    """A chest: soft tissue around two lungs of air, air around the body. Otsu alone puts the lungs
    out of the body; the body mask is the outline with its holes filled, lungs included."""
    original = np.full((40, 48, 24), -1000.0, dtype=np.float32)  # air around
    original[6:34, 6:42, :] = 40.0  # the body, through every slice like a chest CT's field of view
    original[10:30, 10:22, 2:22] = -850.0  # right lung
    original[10:30, 26:38, 2:22] = -850.0  # left lung
    original[0, 0, 0] = 40.0  # a stray bright voxel outside is not body
    mask = foreground(original)
    assert mask[10:30, 10:22, 2:22].all() and mask[10:30, 26:38, 2:22].all()
    assert mask[20, 24, 12] and not mask[1, 1, 12] and not mask[0, 0, 0]
    assert not mask[38, 24, 12]  # the air around stays out (the dilation is two voxels)
    q = quality(original, original + 1.0, dtype=np.dtype(np.int16))
    body = (34 - 6 + 4) * (42 - 6 + 4) * 24 / original.size
    assert q.body_share == pytest.approx(body, rel=0.05)
