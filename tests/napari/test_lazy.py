"""Opening a .moec file in napari is lazy: layers appear before the volume is decoded, and each slab
is decoded when it is shown, to exactly the values of the full decode."""

from __future__ import annotations

import numpy as np
import pytest

from codec.cli import main as moec
from codec.decode.reconstruct import reconstruct
from codec.format import moecfile
from codec.io.load import save_volume
from codec.io.phantom import make_phantom
from codec.io.volume import from_array
from moec_napari.lazy import TileCache, lazy_decode
from moec_napari.orientation import Orientation
from moec_napari.reader import get_reader

from .conftest import lps_affine

#: 40 slices of 96 x 80 pixels: the tiles (whole slices, TILE_SLICES at most) leave many undecoded.
SHAPE = (96, 80, 40)


@pytest.fixture(scope="module")
def moec_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lazy")
    volume, _ = make_phantom(SHAPE)
    volume = from_array(volume.data, affine=lps_affine(), dtype=np.int16)
    source = folder / "ct.nii.gz"
    save_volume(volume, source)
    path = folder / "ct.moec"
    assert (
        moec(["compress", str(source), "-o", str(path), "--ratio", "40", "--steps", "40", "--batch", "1024", "--quiet"])
        == 0
    )
    return path


@pytest.fixture(scope="module")
def full(moec_file):
    return reconstruct(moecfile.read(moec_file))


def _cache_of(layer) -> TileCache:
    """The TileCache behind a lazy layer's dask graph (the array-like dask reads its chunks from)."""
    for value in dict(layer.data.__dask_graph__()).values():
        cache = getattr(value, "cache", None)
        if isinstance(cache, TileCache):
            return cache
    raise AssertionError("the layer is not a lazy .moec array")


def _on_screen(layer) -> np.ndarray:
    """The 2D slice napari has sliced out of the layer for the canvas."""
    return np.asarray(layer._slice.image.raw)


def test_opening_adds_layers_before_the_volume_is_decoded_and_slices_decode_exactly(
    make_napari_viewer, moec_file, full
):
    viewer = make_napari_viewer()
    for data, kwargs, kind in get_reader(str(moec_file))(str(moec_file)):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    recon, labels, confidence = viewer.layers
    cache = _cache_of(recon)
    assert cache is _cache_of(labels) is _cache_of(confidence)  # one cache: a tile is decoded once for all three
    decoded = set(cache.decoded)
    assert 0 < len(decoded) < cache.tiles, "the layers are lazy: only what is on screen is decoded"
    # The reconstruction is what opening shows; the partition and the confidence are a click away.
    assert recon.visible and not labels.visible and not confidence.visible
    labels.visible = confidence.visible = True

    orientation = Orientation.from_dict(recon.metadata["moec"]["orientation"])
    expected = {
        "values": orientation.to_display(full.volume.data),
        "labels": orientation.to_display(full.labels),
        "confidence": orientation.to_display(full.confidence),
    }
    for index in (0, 17, recon.data.shape[0] - 1):
        viewer.dims.set_point(0, recon.data_to_world((index, 0, 0))[0])
        for layer, part in ((recon, "values"), (labels, "labels"), (confidence, "confidence")):
            np.testing.assert_array_equal(np.asarray(layer.data[index]), expected[part][index])
            np.testing.assert_array_equal(_on_screen(layer), expected[part][index])
    assert len(set(cache.decoded)) < cache.tiles  # three slices shown: still not the whole volume
    assert set(cache.decoded) > decoded


def test_the_cache_keeps_recent_tiles_within_its_bound_and_decodes_each_once(moec_file, full):
    moec_ = moecfile.read(moec_file)
    volume, labels, _, cache = lazy_decode(moec_, max_bytes=1)  # the smallest bound: two tiles
    assert cache.max_tiles == 2
    axis = cache.grid.axis
    first = np.take(np.asarray(volume.data), [0], axis=axis)  # the whole array, tile by tile
    np.testing.assert_array_equal(first, np.take(full.volume.data, [0], axis=axis))
    assert len(cache.decoded) == cache.tiles  # each tile once, though three parts were not all asked
    np.testing.assert_array_equal(np.asarray(labels), full.labels)
    assert len(cache.decoded) == 2 * cache.tiles  # values' tiles were dropped (bound of two): decoded again


def test_a_lazy_resampled_decode_matches_the_full_one(moec_file):
    moec_ = moecfile.read(moec_file)
    shape = (48, 40, 80)
    volume, labels, confidence, _ = lazy_decode(moec_, shape)
    direct = reconstruct(moec_, shape=shape)
    assert volume.shape == shape
    np.testing.assert_allclose(volume.affine, direct.volume.affine)
    np.testing.assert_array_equal(np.asarray(volume.data[:, :, 30:41]), direct.volume.data[:, :, 30:41])
    np.testing.assert_array_equal(np.asarray(confidence), direct.confidence)


def test_the_widget_loads_a_file_at_another_scale_as_lazy_layers(make_napari_viewer, moec_file, qtbot):
    from moec_napari.widget import MoecWidget

    viewer = make_napari_viewer()
    widget = MoecWidget(viewer)
    widget.decode_scale.setValue(2.0)
    widget.load_moec(moec_file)
    qtbot.waitUntil(lambda: len(viewer.layers) == 3, timeout=30_000)
    recon = viewer.layers[0]
    assert "at 192x160x80" in recon.name
    assert recon.data.shape == tuple(reversed((192, 160, 80)))  # display order (S, A, R) of an LPS file
    cache = _cache_of(recon)
    assert len(set(cache.decoded)) < cache.tiles
    file_scale = np.abs(np.diag(lps_affine())[:3])[::-1]
    np.testing.assert_allclose(np.abs(recon.scale), file_scale / 2)
