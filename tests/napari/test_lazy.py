"""Opening a .moec file in napari never freezes the viewer: layers appear before anything is decoded,
every reslice (axial, coronal, sagittal, 3D, at any decode scale) shows a coarse preview at once,
and the background decoder then brings the exact planes, to exactly the values of the full decode."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from codec.cli import main as moec
from codec.decode.reconstruct import reconstruct
from codec.format import moecfile
from codec.io.load import save_volume
from codec.io.phantom import make_phantom
from codec.io.volume import from_array
from moec_napari.lazy import (
    MAX_REQUESTS,
    ProgressiveArray,
    ProgressiveSource,
    held_back,
    lazy_decode,
    pending,
    upsample,
)
from moec_napari.orientation import Orientation
from moec_napari.progressive import follow_progressive_layers, progressive_source
from moec_napari.reader import get_reader

from .conftest import lps_affine

#: 40 slices of 96 x 80 pixels: the tiles (whole slices, TILE_SLICES at most) leave many undecoded.
SHAPE = (96, 80, 40)
#: The background decoder works on two shared cores: generous waits, no timing asserted.
WAIT_MS = 120_000
CORONAL, SAGITTAL = (1, 0, 2), (2, 0, 1)


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


@pytest.fixture(autouse=True)
def background_done(qtbot):
    """Each test leaves the background decoder idle, so that none works for the next."""
    yield
    qtbot.waitUntil(lambda: pending() == 0, timeout=WAIT_MS)


def _source_of(layer) -> ProgressiveSource:
    source = progressive_source(layer)
    assert source is not None, "the layer is not a progressive .moec array"
    return source


def _on_screen(layer) -> np.ndarray:
    """What napari has sliced out of the layer for the canvas."""
    return np.asarray(layer._slice.image.raw)


def _shown_part(layer, array: np.ndarray) -> np.ndarray:
    """The part of a display-order array that `layer`'s current slice shows (as napari lays it)."""
    point = layer._data_slice.point
    index = tuple(slice(None) if np.isnan(p) else int(np.round(p)) for p in point)
    return array[index]


def _open(viewer, path) -> list:
    follow_progressive_layers(viewer)
    for data, kwargs, kind in get_reader(str(path))(str(path)):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    return list(viewer.layers)


def _add(viewer, volume, labels, confidence) -> list:
    """lazy_decode's arrays as the three layers the reader makes of them, all shown."""
    follow_progressive_layers(viewer)
    orientation = Orientation.from_affine(volume.affine, volume.shape)
    place = orientation.layer_kwargs()
    viewer.add_image(orientation.to_display(volume.data), name="values", **place)
    viewer.add_labels(orientation.to_display(labels), name="labels", **place)
    viewer.add_image(orientation.to_display(confidence), name="confidence", **place)
    return list(viewer.layers)


def _expected(layers, full) -> dict:
    """The full decode's arrays in display order, by layer name."""
    orientation = Orientation.from_affine(full.volume.affine, full.volume.shape)
    return {
        layers[0].name: orientation.to_display(full.volume.data),
        layers[1].name: orientation.to_display(full.labels),
        layers[2].name: orientation.to_display(full.confidence),
    }


def _shows_exactly(layers, expected) -> bool:
    return all(np.array_equal(_on_screen(layer), _shown_part(layer, expected[layer.name])) for layer in layers)


def test_opening_adds_layers_before_the_volume_is_decoded_and_slices_decode_exactly(
    make_napari_viewer, qtbot, moec_file, full
):
    viewer = make_napari_viewer()
    with held_back():  # nothing decodes in the background until the layers are in
        recon, labels, confidence = _open(viewer, moec_file)
        source = _source_of(recon)
        assert source is _source_of(labels) is _source_of(confidence)  # one decode for all three
        assert not source.cache.decoded and source.coarse is None, "opening decodes nothing on the GUI thread"
        assert np.all(_on_screen(recon) == np.float32(source.moec.meta.vmin))  # the lowest value until a preview
    # The reconstruction is what opening shows; the partition and the confidence are a click away.
    assert recon.visible and not labels.visible and not confidence.visible
    labels.visible = confidence.visible = True
    expected = _expected([recon, labels, confidence], full)
    for index in (0, 17, recon.data.shape[0] - 1):
        viewer.dims.set_point(0, recon.data_to_world((index, 0, 0))[0])
        qtbot.waitUntil(lambda: _shows_exactly([recon, labels, confidence], expected), timeout=WAIT_MS)
        for layer in (recon, labels, confidence):
            np.testing.assert_array_equal(np.asarray(layer.data[index]), expected[layer.name][index])
    assert source.coarse is not None
    assert len(set(source.cache.decoded)) < source.cache.tiles  # three slices shown: not the whole volume


def test_a_coronal_or_sagittal_reslice_shows_a_coarse_preview_at_once_then_the_exact_plane(
    make_napari_viewer, qtbot, moec_file, full
):
    viewer = make_napari_viewer()
    layers = _open(viewer, moec_file)
    for layer in layers:
        layer.visible = True
    expected = _expected(layers, full)
    qtbot.waitUntil(lambda: _shows_exactly(layers, expected), timeout=WAIT_MS)  # the axial plane
    source = _source_of(layers[0])
    orientation = Orientation.from_affine(full.volume.affine, full.volume.shape)
    box = tuple(slice(0, n) for n in source.shape)
    preview = {
        layer.name: orientation.to_display(upsample(getattr(source.coarse, layer.data.part), source.shape, box))
        for layer in layers
    }
    with held_back():
        viewer.dims.order = CORONAL  # sliced at once, while the decoder takes up nothing
        for layer in layers:
            shown, exact = _on_screen(layer), _shown_part(layer, expected[layer.name])
            assert shown.shape == exact.shape
            if layer is layers[0]:  # (the experts and the confidence may be flat on a plane)
                assert not np.array_equal(shown, exact), "a coronal plane crosses every tile: not decoded yet"
            # the coarse preview, with the one axial tile decoded laid over it
            assert np.all((shown == exact) | (shown == _shown_part(layer, preview[layer.name])))
    qtbot.waitUntil(lambda: _shows_exactly(layers, expected), timeout=WAIT_MS)
    viewer.dims.set_current_step(1, 5)  # another coronal plane
    qtbot.waitUntil(lambda: _shows_exactly(layers, expected), timeout=WAIT_MS)
    viewer.dims.order = SAGITTAL
    qtbot.waitUntil(lambda: _shows_exactly(layers, expected), timeout=WAIT_MS)
    # every tile went through the cache once: the file's grid fits the default bound
    assert len(source.cache.decoded) == len(set(source.cache.decoded)) == source.cache.tiles


def test_a_3d_view_gets_the_coarse_volume_at_once_and_the_exact_one_after(make_napari_viewer, qtbot, moec_file, full):
    viewer = make_napari_viewer()
    recon, _, _ = _open(viewer, moec_file)
    expected = _expected(list(viewer.layers), full)
    qtbot.waitUntil(lambda: _source_of(recon).coarse is not None, timeout=WAIT_MS)
    with held_back():
        viewer.dims.ndisplay = 3
        assert _on_screen(recon).shape == recon.data.shape  # the whole volume, from the coarse grid
        assert not np.array_equal(_on_screen(recon), expected[recon.name])
    qtbot.waitUntil(lambda: np.array_equal(_on_screen(recon), expected[recon.name]), timeout=WAIT_MS)


def test_a_decode_at_another_scale_is_progressive_too(make_napari_viewer, qtbot, moec_file):
    file = moecfile.read(moec_file)
    shape = (48, 40, 80)
    direct = reconstruct(file, shape=shape)
    viewer = make_napari_viewer()
    layers = _add(viewer, *lazy_decode(file, shape)[:3])
    assert layers[0].data.shape == tuple(reversed(shape))  # display order (S, A, R) of an LPS file
    expected = _expected(layers, direct)
    for order in ((0, 1, 2), CORONAL, SAGITTAL):
        viewer.dims.order = order
        qtbot.waitUntil(lambda: _shows_exactly(layers, expected), timeout=WAIT_MS)


def test_stale_requests_are_dropped_and_the_newest_decoded_first(qtbot, moec_file, full):
    """A fast scroll asks for many planes while the decoder is busy: only the last is decoded."""
    volume, _, _, cache = lazy_decode(moecfile.read(moec_file))
    source = volume.data.source
    orientation = Orientation.from_affine(volume.affine, volume.shape)
    shown = orientation.to_display(volume.data)
    assert isinstance(shown, ProgressiveArray)
    n = shown.shape[0]  # display axis 0: inferior-superior, the tiled axis
    with held_back():
        for index in range(n):
            shown[index]  # a preview at once; each plane replaces the one before in the queue
    assert source.dropped == n - 1
    qtbot.waitUntil(lambda: pending() == 0, timeout=WAIT_MS)
    [last] = source.finished
    assert last == tuple((s.start, s.stop) for s in _display_plane_box(orientation, source, n - 1))
    assert set(cache.decoded) == {cache.grid.covering(_display_plane_box(orientation, source, n - 1))[0]}
    np.testing.assert_array_equal(shown[n - 1], orientation.to_display(full.volume.data)[n - 1])


def test_requests_of_other_views_wait_newest_first_up_to_a_bound(qtbot, moec_file, full):
    volume, _, _, cache = lazy_decode(moecfile.read(moec_file))
    source = volume.data.source
    orientation = Orientation.from_affine(volume.affine, volume.shape)
    shown = orientation.to_display(volume.data)
    asks = [np.s_[3], np.s_[:, 7], np.s_[:, :, 9], np.s_[20:22], np.s_[:, 30:32]]  # five kinds of box
    assert len(asks) == MAX_REQUESTS + 1
    with held_back():
        for ask in asks:
            shown[ask]
    assert source.dropped == 1  # the oldest
    qtbot.waitUntil(lambda: pending() == 0, timeout=WAIT_MS)
    assert len(source.finished) == MAX_REQUESTS
    expected = orientation.to_display(full.volume.data)
    finished = [tuple(b - a for a, b in key) for key in source.finished]
    assert finished == [_file_extent(shown, ask) for ask in reversed(asks[1:])]  # the newest first
    for ask in asks[1:]:
        np.testing.assert_array_equal(shown[ask], expected[ask])


def _file_extent(shown: ProgressiveArray, ask) -> tuple[int, ...]:
    """The file-order extent of the box holding display index `ask`."""
    probe = np.zeros(shown.shape, dtype=bool)
    probe[ask] = True
    where = np.nonzero(probe.transpose(np.argsort(shown.axes)))
    return tuple(int(w.max() - w.min() + 1) for w in where)


def _display_plane_box(orientation: Orientation, source: ProgressiveSource, index: int) -> tuple[slice, ...]:
    """The file-order box of display plane `index` along display axis 0."""
    selection = orientation.file_selection(0, index)
    return tuple(slice(s, s + 1) if isinstance(s, int) else slice(0, n) for s, n in zip(selection, source.shape))


def test_the_memory_bound_holds_and_planes_across_more_tiles_than_it_holds_still_decode(
    make_napari_viewer, qtbot, moec_file, full
):
    file = moecfile.read(moec_file)
    volume, labels, confidence, cache = lazy_decode(file, max_bytes=1)  # the smallest bound: two tiles
    assert cache.max_tiles == 2 < cache.tiles
    source = volume.data.source
    viewer = make_napari_viewer()
    layers = _add(viewer, volume, labels, confidence)
    expected = _expected(layers, full)
    for order in (CORONAL, SAGITTAL):  # planes across all five tiles, gathered tile by tile
        viewer.dims.order = order
        qtbot.waitUntil(lambda: _shows_exactly(layers, expected), timeout=WAIT_MS)
        assert cache.held <= cache.max_tiles and source.boxes_held <= source.box_bytes
    assert len(cache.decoded) > cache.tiles  # the bound held: tiles were dropped and decoded again


def test_the_cache_keeps_recent_tiles_within_its_bound_and_decodes_each_once(moec_file, full):
    moec_ = moecfile.read(moec_file)
    volume, labels, _, cache = lazy_decode(moec_, max_bytes=1)  # the smallest bound: two tiles
    assert cache.max_tiles == 2
    axis = cache.grid.axis
    first = np.take(np.asarray(volume.data), [0], axis=axis)  # the whole array exactly, tile by tile
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
    np.testing.assert_array_equal(
        volume.data.exact((slice(None), slice(None), slice(30, 41))), direct.volume.data[:, :, 30:41]
    )
    np.testing.assert_array_equal(np.asarray(confidence), direct.confidence)


def test_threads_slicing_at_once_get_exact_values_and_share_the_decode(qtbot, moec_file, full):
    """napari may slice from its own threads: reads, exact reads and the decoder side by side."""
    volume, labels, _, cache = lazy_decode(moecfile.read(moec_file))
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(offset, volume.shape[2], 4):
                volume.data[:, :, i]  # a preview now, its decode queued
                np.testing.assert_array_equal(labels.exact((slice(None), slice(None), i)), full.labels[:, :, i])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    qtbot.waitUntil(lambda: pending() == 0, timeout=WAIT_MS)
    assert len(cache.decoded) == len(set(cache.decoded)) == cache.tiles  # each tile once for all threads
    np.testing.assert_array_equal(volume.data[:, :, 7], full.volume.data[:, :, 7])


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
    cache = _source_of(recon).cache
    assert len(set(cache.decoded)) < cache.tiles
    file_scale = np.abs(np.diag(lps_affine())[:3])[::-1]
    np.testing.assert_allclose(np.abs(recon.scale), file_scale / 2)


def test_layers_read_back_whole_are_exact(make_napari_viewer, moec_file, full):
    """Converting a whole layer (writing it, compressing it again) gets the exact voxels."""
    viewer = make_napari_viewer()
    recon, labels, _ = _open(viewer, moec_file)
    expected = _expected(list(viewer.layers), full)
    np.testing.assert_array_equal(np.asarray(recon.data), expected[recon.name])
    np.testing.assert_array_equal(np.asarray(labels.data), expected[labels.name])
