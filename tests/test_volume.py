"""Volumes: NIfTI and NumPy loading, faithful round trips, and clear refusals of bad input."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from codec.errors import OutputError, VolumeError
from codec.io.load import load_volume, save_volume
from codec.io.nifti import save_labels
from codec.io.volume import from_array

from .conftest import permuted_affine, write_nifti


def test_scaled_int16_loads_in_real_units(scaled_ct):
    path, raw, affine = scaled_ct
    vol = load_volume(path)
    assert vol.shape == raw.shape
    assert vol.stored_dtype == np.int16
    assert (vol.slope, vol.inter) == (2.0, -1024.0)
    np.testing.assert_array_equal(vol.data, raw.astype(np.float32) * 2 - 1024)
    np.testing.assert_allclose(vol.affine, affine)
    assert vol.spacing == pytest.approx((0.7, 0.7, 2.5))
    assert vol.source_bytes == path.stat().st_size


@pytest.mark.parametrize(
    "name,affine",
    [
        ("lps", np.diag([-0.7, -0.7, 2.5, 1.0])),
        ("permuted", permuted_affine()),
    ],
)
def test_nifti_round_trip_keeps_affine_header_dtype_and_values(tmp_path, name, affine):
    rng = np.random.default_rng(2)
    raw = rng.integers(-1000, 3000, size=(16, 14, 10)).astype(np.int16)
    source = tmp_path / f"{name}.nii.gz"
    write_nifti(source, raw, affine, slope=2.0, inter=-1024.0, sform_code=4, qform_code=1)
    vol = load_volume(source)
    out = tmp_path / f"{name}_out.nii.gz"
    save_volume(vol, out, descrip="MoEC lossy 100x")

    before, after = nib.load(str(source)), nib.load(str(out))
    assert after.get_data_dtype() == np.int16
    assert after.shape == raw.shape
    np.testing.assert_allclose(after.affine, before.affine)
    assert int(after.header["sform_code"]) == 4 and int(after.header["qform_code"]) == 1
    np.testing.assert_allclose(after.header.get_qform(), before.header.get_qform())
    assert (after.dataobj.slope, after.dataobj.inter) == (2.0, -1024.0)
    np.testing.assert_array_equal(np.asarray(after.dataobj.get_unscaled()), raw)
    np.testing.assert_array_equal(after.get_fdata(), before.get_fdata())
    assert after.header["descrip"].tobytes().startswith(b"MoEC lossy 100x")
    np.testing.assert_array_equal(after.header.get_zooms(), before.header.get_zooms())


def test_float_values_are_rounded_and_clipped_to_the_stored_dtype(tmp_path):
    raw = np.zeros((8, 8, 8), dtype=np.uint8)
    source = tmp_path / "u8.nii"
    write_nifti(source, raw, np.eye(4))
    vol = load_volume(source)
    noisy = vol.with_data(np.full(vol.shape, 300.7, dtype=np.float32))
    noisy.data[0, 0, 0] = -5.0
    noisy.data[1, 0, 0] = 12.4
    save_volume(noisy, tmp_path / "u8_out.nii")
    back = np.asarray(nib.load(str(tmp_path / "u8_out.nii")).dataobj)
    assert back.dtype == np.uint8
    assert back[0, 0, 0] == 0 and back[1, 0, 0] == 12 and back[2, 2, 2] == 255


def test_4d_volume_and_trailing_singleton_axes(tmp_path):
    raw = np.arange(6 * 5 * 4 * 3, dtype=np.int16).reshape(6, 5, 4, 3)
    write_nifti(tmp_path / "t.nii.gz", raw, np.eye(4))
    vol = load_volume(tmp_path / "t.nii.gz")
    assert vol.shape == (6, 5, 4, 3)
    squeezed = raw[..., :1]
    write_nifti(tmp_path / "s.nii.gz", squeezed, np.eye(4))
    vol = load_volume(tmp_path / "s.nii.gz")
    assert vol.shape == (6, 5, 4)
    save_volume(vol, tmp_path / "s_out.nii.gz")
    assert nib.load(str(tmp_path / "s_out.nii.gz")).shape == (6, 5, 4, 1)


def test_npy_volume_loads_with_identity_affine_and_writes_nifti(tmp_path):
    array = np.random.default_rng(0).random((10, 9, 8)).astype(np.float32)
    np.save(tmp_path / "v.npy", array)
    vol = load_volume(tmp_path / "v.npy")
    assert vol.stored_dtype == np.float32
    np.testing.assert_array_equal(vol.affine, np.eye(4))
    save_volume(vol, tmp_path / "v.nii.gz")
    img = nib.load(str(tmp_path / "v.nii.gz"))
    np.testing.assert_array_equal(img.get_fdata(dtype=np.float32), array)
    np.testing.assert_array_equal(img.affine, np.eye(4))


def test_labels_are_uint8_with_the_volume_affine(tmp_path, scaled_ct):
    path, raw, affine = scaled_ct
    vol = load_volume(path)
    labels = np.ones(vol.shape, dtype=np.uint8)
    save_labels(vol, labels, tmp_path / "labels.nii.gz", "experts")
    img = nib.load(str(tmp_path / "labels.nii.gz"))
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, affine)
    assert img.header.get_intent()[0] == "label"
    np.testing.assert_array_equal(np.asarray(img.dataobj), labels)


@pytest.mark.parametrize(
    "shape,message",
    [
        ((10,), "1D"),
        ((10, 12), "2D"),
        ((10, 12, 1), "2D"),
        ((4, 4, 4, 2, 2), "5D"),
        ((0, 5, 5), "empty"),
    ],
)
def test_wrong_dimensionality_and_empty_arrays_are_refused(tmp_path, shape, message):
    np.save(tmp_path / "bad.npy", np.zeros(shape, dtype=np.float32))
    with pytest.raises(VolumeError, match=message):
        load_volume(tmp_path / "bad.npy")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_are_refused_with_a_count(tmp_path, bad):
    array = np.zeros((8, 8, 8), dtype=np.float32)
    array[1, 2, 3] = bad
    array[4, 4, 4] = bad
    write_nifti(tmp_path / "nan.nii.gz", array, np.eye(4))
    with pytest.raises(VolumeError, match="2 NaN or infinite"):
        load_volume(tmp_path / "nan.nii.gz")


def test_values_beyond_float32_and_an_empty_nifti_are_refused_in_words(tmp_path):
    huge = np.full((8, 8, 8), 1e300)  # finite in float64, not in float32
    nib.save(nib.Nifti1Image(huge, np.eye(4)), tmp_path / "f64.nii.gz")
    wide = np.zeros((8, 8, 8), dtype=np.float32)
    wide[0], wide[1] = 3e38, -3e38  # each finite, their difference not
    nib.save(nib.Nifti1Image(wide, np.eye(4)), tmp_path / "f32.nii.gz")
    for name in ("f64.nii.gz", "f32.nii.gz"):
        with pytest.raises(VolumeError, match="range .* is beyond float32"):
            load_volume(tmp_path / name)
    scaled = nib.Nifti1Image(np.arange(512, dtype=np.int16).reshape(8, 8, 8), np.eye(4))
    scaled.header.set_slope_inter(1e38, 0.0)
    nib.save(scaled, tmp_path / "slope.nii")
    with pytest.raises(VolumeError, match=r"scaling \(slope 1e\+38"):
        load_volume(tmp_path / "slope.nii")
    nib.save(nib.Nifti1Image(np.zeros((8, 0, 8), dtype=np.int16), np.eye(4)), tmp_path / "empty.nii.gz")
    with pytest.raises(VolumeError, match=r"empty \(shape \(8, 0, 8\)\)"):
        load_volume(tmp_path / "empty.nii.gz")


def test_a_nifti_whose_affine_is_not_finite_is_refused_when_loaded(tmp_path):
    path = tmp_path / "a.nii"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), dtype=np.int16), np.eye(4)), path)
    raw = bytearray(path.read_bytes())
    header = nib.Nifti1Header.from_fileobj(open(path, "rb"))
    header["qform_code"], header["sform_code"], header["srow_x"] = 0, 1, [np.nan, 0, 0, 0]
    raw[:348] = header.binaryblock  # nibabel will not write such a header itself
    path.write_bytes(bytes(raw))
    with pytest.raises(VolumeError, match="affine with NaN or infinite entries"):
        load_volume(path)


def test_files_that_are_not_volumes_are_refused(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(VolumeError, match="not a volume file"):
        load_volume(text)
    fake = tmp_path / "fake.nii.gz"
    with gzip.open(fake, "wb") as handle:
        handle.write(b"this is not a NIfTI header" * 20)
    with pytest.raises(VolumeError, match="not a readable NIfTI"):
        load_volume(fake)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(VolumeError):
        load_volume(broken)
    with pytest.raises(VolumeError, match="no such file"):
        load_volume(tmp_path / "missing.nii")
    with pytest.raises(VolumeError, match="folder"):
        load_volume(tmp_path)
    np.save(tmp_path / "complex.npy", np.zeros((4, 4, 4), dtype=np.complex64))
    with pytest.raises(VolumeError, match="complex"):
        load_volume(tmp_path / "complex.npy")


def test_truncated_nifti_is_refused(tmp_path, scaled_ct):
    path, _, _ = scaled_ct
    raw = gzip.decompress(path.read_bytes())
    cut = tmp_path / "cut.nii"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(VolumeError):
        load_volume(cut)


def test_a_volume_is_never_written_over_its_own_source(scaled_ct):
    path, _, _ = scaled_ct
    vol = load_volume(path)
    before = path.read_bytes()
    with pytest.raises(OutputError, match="overwrite the input"):
        save_volume(vol, path)
    assert path.read_bytes() == before


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    vol = from_array(np.zeros((8, 8, 8), dtype=np.float32))
    with pytest.raises(VolumeError):
        save_volume(vol, tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "out.nii").write_bytes(b"old")
    with pytest.raises(OutputError):
        save_volume(vol, tmp_path / "missing_folder" / "out.nii")
    assert (tmp_path / "out.nii").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nii"]
