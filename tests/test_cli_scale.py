"""`moec decompress --scale / --shape`: a file decoded on another grid over the same box, written
as a NIfTI whose affine and header put it where the original was."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from codec.cli import main
from codec.decode.reconstruct import reconstruct
from codec.format import moecfile
from codec.io.load import save_volume
from codec.io.phantom import make_phantom

FAST = ["--steps", "60", "--batch", "1024", "--quiet"]


@pytest.fixture(scope="module")
def thick_slices(tmp_path_factory):
    """A phantom with 5 mm slices (0.8 mm pixels), the clinical case thin slices are asked of, and its file."""
    folder = tmp_path_factory.mktemp("scale")
    volume, _ = make_phantom((24, 20, 10))
    affine = np.diag([0.8, 0.8, 5.0, 1.0])
    affine[:3, 3] = (-10.0, 20.0, -30.0)
    header = nib.Nifti1Header()
    header.set_data_shape(volume.shape)
    header.set_data_dtype(np.int16)
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    volume = type(volume)(volume.data, affine, bytes(header.binaryblock), np.dtype(np.int16))
    source = folder / "thick.nii.gz"
    save_volume(volume, source)
    moec = folder / "thick.moec"
    assert main(["compress", str(source), "-o", str(moec), "--ratio", "8", *FAST]) == 0
    return source, moec


def _world(affine: np.ndarray, ijk) -> np.ndarray:
    return affine[:3, :3] @ np.asarray(ijk, dtype=np.float64) + affine[:3, 3]


def test_thin_slices_cover_the_same_box_with_the_affine_to_match(thick_slices, tmp_path, capsys):
    source, moec = thick_slices
    out = tmp_path / "thin.nii.gz"
    assert main(["decompress", str(moec), "-o", str(out), "--scale", "1", "1", "5"]) == 0
    said = capsys.readouterr().out
    assert "24 x 20 x 50" in said and "0.8 x 0.8 x 1 mm" in said and "resampled to 24x20x50" in said
    original, thin = nib.load(str(source)), nib.load(str(out))
    assert thin.shape == (24, 20, 50) and thin.get_data_dtype() == np.int16
    assert thin.header.get_zooms() == pytest.approx((0.8, 0.8, 1.0))
    np.testing.assert_allclose(thin.header.get_sform(), thin.header.get_qform(), atol=1e-5)
    # The outer faces of the first and last slices stay where the original's were.
    for corner in ((-0.5, -0.5, -0.5), (23.5, 19.5, 9.5)):
        thin_corner = np.where(np.asarray(corner) > 0, np.asarray(thin.shape) - 0.5, -0.5)
        np.testing.assert_allclose(_world(thin.affine, thin_corner), _world(original.affine, corner), atol=1e-4)
    # Thin slices sit between the thick ones' centres, so they are not the thick ones repeated, but
    # they show the same anatomy: the mean of each group of five follows its thick slice.
    decoded = reconstruct(moecfile.read(moec)).volume.data
    thin_data = np.asarray(thin.dataobj, dtype=np.float32)
    slab_means = thin_data.reshape(24, 20, 10, 5).mean(axis=(0, 1, 3))
    assert np.corrcoef(slab_means, decoded.mean(axis=(0, 1)))[0, 1] > 0.9


def test_shape_and_scale_name_the_same_grid_and_the_same_voxels(thick_slices, tmp_path):
    _, moec = thick_slices
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    assert main(["decompress", str(moec), "-o", str(a), "--scale", "0.5"]) == 0
    assert main(["decompress", str(moec), "-o", str(b), "--shape", "12", "10", "5"]) == 0
    x, y = nib.load(str(a)), nib.load(str(b))
    assert x.shape == (12, 10, 5)
    np.testing.assert_array_equal(np.asarray(x.dataobj), np.asarray(y.dataobj))
    np.testing.assert_allclose(x.affine, y.affine)
    assert x.header.get_zooms() == pytest.approx((1.6, 1.6, 10.0))


def test_scale_one_is_the_plain_decode(thick_slices, tmp_path):
    _, moec = thick_slices
    a, b = tmp_path / "plain.nii.gz", tmp_path / "one.nii.gz"
    assert main(["decompress", str(moec), "-o", str(a)]) == 0
    assert main(["decompress", str(moec), "-o", str(b), "--scale", "1", "--labels", str(tmp_path / "l.nii.gz")]) == 0
    np.testing.assert_array_equal(np.asarray(nib.load(str(a)).dataobj), np.asarray(nib.load(str(b)).dataobj))
    assert b"resampled" not in nib.load(str(b)).header["descrip"].tobytes()


def test_labels_and_confidence_follow_the_resampled_grid(thick_slices, tmp_path):
    _, moec = thick_slices
    out, labels, conf = tmp_path / "r.nii.gz", tmp_path / "l.nii.gz", tmp_path / "c.nii.gz"
    assert (
        main(
            [
                "decompress",
                str(moec),
                "-o",
                str(out),
                "--scale",
                "2",
                "--labels",
                str(labels),
                "--confidence",
                str(conf),
            ]
        )
        == 0
    )
    volume, lab, con = (nib.load(str(p)) for p in (out, labels, conf))
    assert volume.shape == lab.shape == con.shape == (48, 40, 20)
    np.testing.assert_allclose(lab.affine, volume.affine)
    assert set(np.unique(np.asarray(lab.dataobj))) <= set(range(1, 5))


@pytest.mark.parametrize(
    "option, message",
    [
        (["--scale", "0"], "positive"),
        (["--scale", "1", "2"], "1 or 3 factors"),
        (["--shape", "0", "5", "5"], "at least one voxel"),
        (["--shape", "5", "5"], "3 whole numbers"),
        (["--scale", "1e6"], "too large"),
    ],
)
def test_a_bad_grid_is_refused_in_one_line_and_nothing_is_written(thick_slices, tmp_path, capsys, option, message):
    _, moec = thick_slices
    out = tmp_path / "never.nii.gz"
    assert main(["decompress", str(moec), "-o", str(out), *option]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not out.exists()


def test_scale_and_shape_together_are_refused(thick_slices, tmp_path, capsys):
    _, moec = thick_slices
    with pytest.raises(SystemExit) as exit_:
        main(["decompress", str(moec), "-o", str(tmp_path / "x.nii.gz"), "--scale", "2", "--shape", "1", "2", "3"])
    assert exit_.value.code == 2 and "not allowed with" in capsys.readouterr().err
