"""One record per layer and one way from a layer back to a volume, for the widget and the writers."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from codec.io.phantom import make_phantom
from moec_napari.derived import DerivedLayers
from moec_napari.layer_meta import META, LayerMeta, Role, role_of
from moec_napari.layers import image_layer, volume_of_layer
from moec_napari.writer import write_image

from .conftest import SMALL


def test_a_record_survives_plain_metadata_and_keeps_what_it_does_not_know():
    volume, _ = make_phantom(SMALL)
    data, kwargs, _ = image_layer(volume, "phantom", dicom={"PatientID": "X"})
    stored = kwargs["metadata"][META]
    assert stored["role"] == "original" and isinstance(stored["orientation"], dict)  # plain data
    meta = LayerMeta.of(kwargs["metadata"])
    assert meta.role is Role.ORIGINAL and meta.has_file_order and meta.dicom == {"PatientID": "X"}
    again = LayerMeta.from_dict({**meta.to_dict(), "made_by": "another tool"})
    assert again.extra == {"made_by": "another tool"} and again.to_dict()["made_by"] == "another tool"
    assert LayerMeta.from_dict({"role": "something else"}).role is Role.ORIGINAL
    assert role_of(object()) is Role.ORIGINAL and LayerMeta.of({}) is None


def test_the_widget_and_the_writer_read_a_plain_layer_alike(make_napari_viewer, tmp_path):
    """A layer no reader of ours made: int16 stays int16 whichever way it goes back to a volume."""
    viewer = make_napari_viewer()
    raw = np.arange(np.prod(SMALL), dtype=np.int16).reshape(SMALL) % 700 - 300
    layer = viewer.add_image(raw, name="plain", scale=(2.0, 1.0, 0.5))
    volume, orientation = volume_of_layer(layer)
    assert orientation is None and np.dtype(volume.stored_dtype) == np.int16
    out = tmp_path / "plain.nii.gz"
    write_image(str(out), layer.data, {"name": layer.name, "metadata": layer.metadata, "scale": layer.scale})
    written = nib.load(str(out))
    assert written.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(written.dataobj), raw)
    np.testing.assert_allclose(np.diag(written.affine)[:3], volume.affine.diagonal()[:3])


def test_derived_layers_keep_their_own_dtype_and_say_what_they_are(tmp_path):
    volume, _ = make_phantom(SMALL)
    shown, kwargs, _ = image_layer(volume, "ct")
    original = LayerMeta.of(kwargs["metadata"])
    looks = DerivedLayers("ct", 64.0, original, {}, experts=4, limits=(-160.0, 240.0), unit="HU")
    assert looks.name(Role.RECONSTRUCTION) == "ct MoEC 64x"
    assert looks.name(Role.ERROR) == "ct MoEC 64x error in HU (MoEC − original)"
    assert looks.name(Role.CONFIDENCE) == "ct MoEC 64x gate confidence"
    assert looks.record(Role.RECONSTRUCTION).dtype == original.dtype  # the original's int16 and scaling
    for role, dtype in ((Role.ERROR, "float32"), (Role.CONFIDENCE, "float32"), (Role.EXPERTS, "uint8")):
        record = looks.record(role)
        assert record.dtype == dtype and record.slope == 1.0 and record.source == original.source
    # An error map written as NIfTI keeps its fractions and its sign (not the original's integers).
    display = np.full(shown.shape, -0.25, np.float32)
    data, error_kwargs, kind = looks.layer(Role.ERROR, display, error_limit=2.0)
    assert kind == "image" and error_kwargs["contrast_limits"] == (-2.0, 2.0) and not error_kwargs["visible"]
    out = tmp_path / "error.nii.gz"
    write_image(str(out), data, error_kwargs)
    assert np.allclose(np.asarray(nib.load(str(out)).dataobj), -0.25)
    assert "MoEC lossy 64x (error)" in str(nib.load(str(out)).header["descrip"].astype(str))
