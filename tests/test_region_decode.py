"""Decoding a box of voxels, and decoding on another grid: `decode_region` gives exactly the voxels
of `reconstruct`, a resampled grid covers the file's box with the affine and header to match."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from codec import pipeline
from codec.decode.reconstruct import TILE_SLICES, decode_region, reconstruct, slice_axis, tiling
from codec.errors import VolumeError
from codec.format import moecfile
from codec.format.header import MoecMeta
from codec.io.phantom import make_phantom
from codec.io.resample import resampled_affine, resampled_header, scaled_shape
from codec.io.volume import from_array
from codec.settings import TrainConfig

from .conftest import permuted_affine
from .training import train


def _compress(volume, **settings) -> moecfile.MoecFile:
    config = TrainConfig(steps=40, batch_size=1024)
    fitter, plan = train(volume, pipeline.Settings(ratio=6, experts=4, **settings), config)
    return moecfile.from_bytes(pipeline.file_bytes(fitter, plan))


@pytest.fixture(scope="module")
def files():
    """A latent-grid file of the phantom (slices along the last axis), a SIREN file of the same
    voxels stored axis-permuted (slices along the first axis), and a 4D SIREN file."""
    volume, _ = make_phantom((20, 16, 26))
    permuted = from_array(
        np.ascontiguousarray(volume.data.transpose(2, 0, 1)), affine=permuted_affine(), dtype=np.int16
    )
    rng = np.random.default_rng(3)
    series = from_array((rng.normal(size=(14, 12, 10, 3)) * 40).astype(np.int16), dtype=np.int16)
    return {
        "grid": _compress(volume, encoder="grid"),
        "permuted": _compress(permuted, encoder="siren"),
        "4d": _compress(series, encoder="siren"),
    }


def _random_boxes(shape, count, rng):
    for _ in range(count):
        box = []
        for n in shape:
            a = int(rng.integers(0, n))
            box.append(slice(a, int(rng.integers(a + 1, n + 1))))
        yield tuple(box)


@pytest.mark.parametrize("kind", ["grid", "permuted", "4d"])
@pytest.mark.parametrize("scale", [None, 1.6])
def test_a_region_decodes_to_exactly_the_voxels_of_the_full_decode(files, kind, scale):
    moec = files[kind]
    shape = None if scale is None else scaled_shape(moec.meta.shape, scale)
    full = reconstruct(moec, shape=shape)
    grid = full.volume.shape
    assert grid == (moec.meta.shape if shape is None else shape)
    rng = np.random.default_rng(0)
    for box in _random_boxes(grid, 6, rng):
        part = decode_region(moec, box, shape=shape)
        np.testing.assert_array_equal(part.values, full.volume.data[box])  # bit for bit, not approximately
        np.testing.assert_array_equal(part.labels, full.labels[box])
        np.testing.assert_array_equal(part.confidence, full.confidence[box])
        assert part.values.dtype == np.float32 and part.labels.dtype == np.uint8
    # one whole slab along the slice axis, a single voxel, numpy's negative bounds and missing axes
    axis = tiling(moec.meta, shape).axis
    slab = tuple(slice(2, 3) if a == axis else slice(None) for a in range(len(grid)))
    np.testing.assert_array_equal(decode_region(moec, slab, shape=shape).values, full.volume.data[slab])
    np.testing.assert_array_equal(decode_region(moec, (slice(-1, None),), shape=shape).labels, full.labels[-1:])
    empty = decode_region(moec, (slice(3, 3),), shape=shape)
    assert empty.values.shape == (0, *grid[1:])


def test_the_decoded_values_are_the_files_values_in_real_units(files):
    moec = files["grid"]
    meta = moec.meta
    part = decode_region(moec, (slice(None), slice(None), slice(4, 6)))
    assert meta.vmin <= part.values.min() and part.values.max() <= meta.vmax
    stored = part.values - meta.inter  # int16 with intercept -1024: whole numbers of HU
    np.testing.assert_array_equal(stored, np.rint(stored))
    assert set(np.unique(part.labels)) <= set(range(1, meta.model.experts + 1))
    assert 0 < part.confidence.min() and part.confidence.max() <= 1


def test_tiles_are_slabs_along_the_axial_slice_axis(files):
    assert slice_axis(files["grid"].meta.affine) == 2  # the phantom: z is the file's last axis
    assert slice_axis(permuted_affine()) == 0  # stored (z, x, y)
    grid = tiling(files["grid"].meta)
    assert grid.axis == 2 and 1 <= grid.depth <= TILE_SLICES
    assert [b - a for a, b in grid.slabs][:-1] == [grid.depth] * (len(grid.slabs) - 1)
    assert grid.slabs[0][0] == 0 and grid.slabs[-1][1] == 26
    assert tiling(files["4d"].meta).times == 3
    big = MoecMeta(**{**files["grid"].meta.__dict__, "shape": (512, 512, 61)})
    assert tiling(big).depth == 1  # one 512 x 512 slice: about 0.15 s to decode on two cores


def test_decoding_at_three_times_the_resolution_passes_through_the_files_voxel_centres(files):
    # Output voxel 3 i + 1 of an axis of 3 n voxels sits at file voxel i's centre.
    moec = files["grid"]
    n = moec.meta.shape
    full = reconstruct(moec)
    fine = reconstruct(moec, shape=(n[0], n[1], 3 * n[2]))
    at_centres = fine.volume.data[:, :, 1::3]
    # The same coordinates up to float32 rounding, so the same stored value but for a rare voxel
    # at a rounding boundary, one unit away.
    assert np.abs(at_centres - full.volume.data).max() <= 1.0
    assert np.mean(at_centres == full.volume.data) > 0.99
    assert np.mean(fine.labels[:, :, 1::3] == full.labels) > 0.99


def test_a_resampled_volume_carries_the_adjusted_affine_and_header(files):
    moec = files["grid"]
    meta = moec.meta
    shape = scaled_shape(meta.shape, (1, 1, 2.5))
    assert shape == (20, 16, 65)
    volume = reconstruct(moec, shape=shape).volume
    np.testing.assert_allclose(volume.affine, resampled_affine(meta.affine, meta.shape, shape))
    hdr = nib.Nifti1Header(binaryblock=volume.header)
    assert tuple(hdr.get_data_shape()) == shape
    np.testing.assert_allclose(hdr.get_best_affine(), volume.affine, atol=1e-5)
    np.testing.assert_allclose(hdr.get_zooms(), np.asarray(volume.spacing))
    assert volume.spacing[2] == pytest.approx(nib.Nifti1Header(binaryblock=meta.nifti).get_zooms()[2] / 2.5, rel=1e-3)
    assert volume.stored_dtype == meta.dtype and (volume.slope, volume.inter) == (meta.slope, meta.inter)
    same = reconstruct(moec, shape=meta.shape).volume
    np.testing.assert_array_equal(same.affine, meta.affine)


@pytest.mark.parametrize(
    "affine",
    [
        np.diag([-0.8, -0.8, 5.0, 1.0]),
        permuted_affine(),
        nib.affines.from_matvec(
            nib.eulerangles.euler2mat(0.3, -0.2, 0.1) @ np.diag([0.7, 0.9, 2.0]), [10.0, -4.0, 33.0]
        ),
    ],
)
@pytest.mark.parametrize("new_shape", [(12, 10, 40), (5, 21, 8), (12, 10, 8)])
def test_the_resampled_affine_keeps_the_box_of_the_original_grid(affine, new_shape):
    shape = (12, 10, 8)
    new = resampled_affine(affine, shape, new_shape)

    def world(a, index):
        return (a @ np.r_[index, 1.0])[:3]

    # The outer corners of the first and last voxel (the box's corners) stay where they were.
    for corner in np.ndindex(2, 2, 2):
        old_edge = [-0.5 if c == 0 else n - 0.5 for c, n in zip(corner, shape)]
        new_edge = [-0.5 if c == 0 else n - 0.5 for c, n in zip(corner, new_shape)]
        np.testing.assert_allclose(world(new, new_edge), world(affine, old_edge), atol=1e-9)
    # Voxel sizes scale by n / n'; a voxel's centre is where the file's grid puts that coordinate.
    np.testing.assert_allclose(
        np.linalg.norm(new[:3, :3], axis=0), np.linalg.norm(affine[:3, :3], axis=0) * np.divide(shape, new_shape)
    )
    for i in [(0, 0, 0), (new_shape[0] - 1, 3, 1), tuple(n - 1 for n in new_shape)]:
        normalised = [(2 * k + 1) / m - 1 for k, m in zip(i, new_shape)]
        file_index = [(x + 1) * n / 2 - 0.5 for x, n in zip(normalised, shape)]
        np.testing.assert_allclose(world(new, i), world(affine, file_index), atol=1e-9)
    if tuple(new_shape) == shape:
        np.testing.assert_allclose(new, affine)


def test_the_resampled_header_has_the_new_grid_and_keeps_its_codes():
    affine = np.diag([-0.7, -0.7, 5.0, 1.0])
    affine[:3, 3] = [90.0, 100.0, -40.0]
    hdr = nib.Nifti1Header()
    hdr.set_data_shape((12, 10, 8, 3))
    hdr.set_zooms((0.7, 0.7, 5.0, 2.0))
    hdr.set_sform(affine, code=1)
    hdr.set_qform(affine, code=2)
    out = nib.Nifti1Header(binaryblock=resampled_header(bytes(hdr.binaryblock), (12, 10, 8, 3), (12, 10, 40, 6)))
    assert tuple(out.get_data_shape()) == (12, 10, 40, 6)
    np.testing.assert_allclose(out.get_zooms(), (0.7, 0.7, 1.0, 1.0), rtol=1e-6)
    assert (int(out["sform_code"]), int(out["qform_code"])) == (1, 2)
    expected = resampled_affine(affine, (12, 10, 8), (12, 10, 40))
    np.testing.assert_allclose(out.get_sform(), expected, atol=1e-5)
    np.testing.assert_allclose(out.get_qform(), expected, atol=1e-5)


def test_bad_scales_shapes_and_regions_are_refused_in_words(files):
    moec = files["grid"]
    assert scaled_shape((512, 512, 61), 0.5) == (256, 256, 30) or scaled_shape((512, 512, 61), 0.5) == (256, 256, 31)
    assert scaled_shape((4, 4, 4), 0.01) == (1, 1, 1)
    with pytest.raises(VolumeError, match="1 or 3 factors"):
        scaled_shape((4, 4, 4), (1, 2))
    with pytest.raises(VolumeError, match="positive"):
        scaled_shape((4, 4, 4), (1, 0, 2))
    with pytest.raises(VolumeError, match="at least one voxel"):
        reconstruct(moec, shape=(4, 0, 4))
    with pytest.raises(VolumeError, match="3 whole numbers"):
        reconstruct(moec, shape=(4, 4))
    with pytest.raises(VolumeError, match="too large"):
        decode_region(moec, (slice(0, 1),), shape=(1 << 12, 1 << 12, 1 << 12))
    with pytest.raises(ValueError, match="step"):
        decode_region(moec, (slice(0, 8, 2),))
    with pytest.raises(TypeError, match="slices"):
        decode_region(moec, (3,))
