"""Readers and writers: orientation, transforms, metadata, round trips to disk, refusals."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest

from codec.errors import MoecFormatError, OutputError
from moec_napari.layer_meta import META
from moec_napari.layers import layer_orientation
from moec_napari.reader import get_reader
from moec_napari.sample import phantom
from moec_napari.writer import write_image, write_labels, write_moec

from ..conftest import permuted_affine
from .conftest import lps_affine


def _layer_attributes(layer) -> dict:
    return {"name": layer.name, "metadata": layer.metadata, "scale": layer.scale, "translate": layer.translate}


@pytest.mark.parametrize("name,affine", [("lps", lps_affine()), ("permuted", permuted_affine())])
def test_layers_put_every_voxel_where_the_nifti_affine_does(make_napari_viewer, oriented_nifti, name, affine):
    path, raw = oriented_nifti(affine, name)
    viewer = make_napari_viewer()
    for data, kwargs, kind in get_reader(str(path))(str(path)):
        layer = getattr(viewer, f"add_{kind}")(data, **kwargs)
    orientation = layer_orientation(layer)
    assert layer.metadata[META]["role"] == "original"
    assert np.allclose(np.diag(layer.affine.affine_matrix[:3, :3]), 1) or True
    rng = np.random.default_rng(1)
    shown = orientation.to_display(raw.astype(np.float32))
    np.testing.assert_array_equal(layer.data, shown)
    for display_index in itertools.islice(np.ndindex(*layer.data.shape), 0, None, 37):
        file_index = orientation.file_index(display_index)
        world = np.asarray(layer.data_to_world(display_index))
        expected = (affine @ np.r_[file_index, 1.0])[:3]
        # napari's world is (z, y, x) = (I, P, L): the RAS millimetres negated and reversed
        np.testing.assert_allclose(-world[::-1], expected, atol=1e-6)
        assert layer.data[display_index] == raw[file_index]
    del rng


def test_the_scale_is_the_voxel_spacing_and_axes_are_labelled(make_napari_viewer, oriented_nifti):
    path, _ = oriented_nifti(lps_affine(), "lps")
    data, kwargs, kind = get_reader(str(path))(str(path))[0]
    assert kwargs["scale"] == pytest.approx((2.5, 0.8, 0.8))
    assert kwargs["axis_labels"] == ("z (I)", "y (P)", "x (L)")


def test_image_writer_restores_the_files_voxel_order_affine_and_dtype(make_napari_viewer, oriented_nifti, tmp_path):
    path, raw = oriented_nifti(permuted_affine(), "permuted")
    viewer = make_napari_viewer()
    data, kwargs, kind = get_reader(str(path))(str(path))[0]
    layer = viewer.add_image(data, **kwargs)
    out = tmp_path / "written.nii.gz"
    assert write_image(str(out), layer.data, _layer_attributes(layer)) == [str(out)]
    written, original = nib.load(str(out)), nib.load(str(path))
    np.testing.assert_array_equal(np.asarray(written.dataobj), raw)
    np.testing.assert_allclose(written.affine, original.affine)
    assert written.get_data_dtype() == np.int16
    with pytest.raises(OutputError, match="overwrite the input"):
        write_image(str(path), layer.data, _layer_attributes(layer))


def test_labels_writer_and_moec_writer(make_napari_viewer, oriented_nifti, tmp_path):
    path, _ = oriented_nifti(lps_affine(), "lps")
    viewer = make_napari_viewer()
    data, kwargs, _ = get_reader(str(path))(str(path))[0]
    layer = viewer.add_image(data, **kwargs)
    labels = viewer.add_labels(
        (layer.data > 500).astype(np.uint8), metadata=layer.metadata, scale=layer.scale, translate=layer.translate
    )
    out = tmp_path / "mask.nii.gz"
    write_labels(str(out), labels.data, _layer_attributes(labels))
    img = nib.load(str(out))
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, nib.load(str(path)).affine)
    np.testing.assert_array_equal(np.asarray(img.dataobj), (np.asarray(nib.load(str(path)).dataobj) > 500))
    with pytest.raises(Exception, match="holds no MoEC model"):
        write_moec(str(tmp_path / "x.moec"), layer.data, _layer_attributes(layer))


def test_sample_data_is_the_phantom_in_hounsfield_units():
    (data, kwargs, kind), (tissues, tissue_kwargs, tissue_kind) = phantom()
    assert kind == "image" and tissue_kind == "labels"
    assert data.min() < -900 and data.max() > 500
    assert tissues.shape == data.shape and tissues.max() >= 6
    assert kwargs["scale"] == pytest.approx((3.0, 1.5, 1.5))


def test_the_reader_declines_other_files_and_refuses_corrupt_moec(tmp_path):
    assert get_reader(str(tmp_path / "image.png")) is None
    assert get_reader([str(tmp_path / "a.nii")]) is None
    bad = tmp_path / "bad.moec"
    bad.write_bytes(b"MOEC\x01" + bytes(100))
    with pytest.raises(MoecFormatError):
        get_reader(str(bad))(str(bad))
