"""The dock widget under pytest-qt: training in the background, stop and continue, save and load,
round trips with the command line, notifications instead of exceptions."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from napari.utils.notifications import notification_manager

from codec.cli import main as moec
from codec.eval.metrics import psnr
from codec.format import moecfile
from moec_napari.layer_meta import META
from moec_napari.layers import layer_orientation

from .conftest import FAST_STEPS, wait_for


def _configure(widget, steps=FAST_STEPS, ratio=12.0, experts=4):
    widget.form.ratio.setValue(ratio)
    widget.form.experts.setValue(experts)
    widget.form.steps.setValue(steps)


def _file_order(widget, layer) -> np.ndarray:
    return layer_orientation(widget.source).to_file(np.asarray(layer.data))


def test_training_produces_the_four_layers_beside_the_original(widget_on, phantom_nifti, qtbot):
    viewer, widget = widget_on(phantom_nifti)
    source = viewer.layers[0]
    _configure(widget)
    widget.train()
    assert not widget.form.ratio.isEnabled() and widget.stop_button.isEnabled()  # inputs locked while training
    wait_for(widget, qtbot)
    assert widget.form.ratio.isEnabled() and widget.save_button.isEnabled()
    layers = widget.derived
    assert set(layers) == {"reconstruction", "error", "experts", "confidence"}
    dtypes = {"reconstruction": np.float32, "error": np.float32, "experts": np.uint8, "confidence": np.float32}
    for role, layer in layers.items():
        assert layer in viewer.layers
        assert layer.data.shape == source.data.shape and layer.data.dtype == dtypes[role]
        np.testing.assert_allclose(layer.scale, source.scale)
        np.testing.assert_allclose(layer.translate, source.translate)
        np.testing.assert_allclose(layer.affine.affine_matrix, source.affine.affine_matrix)
        assert "MoEC" in layer.name and "x" in layer.name
    recon = layers["reconstruction"].data
    assert psnr(source.data, recon) > 15
    np.testing.assert_allclose(layers["error"].data, recon - source.data, atol=1e-3)
    lo, hi = layers["error"].contrast_limits
    assert lo == pytest.approx(-hi) and hi > 0
    assert set(np.unique(layers["experts"].data)) <= set(range(1, 5))
    assert not layers["experts"].editable  # a result to inspect, not a layer to paint on
    assert 0 < layers["confidence"].data.min() and layers["confidence"].data.max() <= 1
    from moec_napari.napari_compat import grid

    assert grid(viewer).enabled
    assert widget.results.table.rowCount() == 4 and "dB" in widget.results.metrics["psnr"].text()
    # One numbering: the table's experts are the experts layer's labels 1..N, with its colours.
    table, experts = widget.results.table, layers["experts"]
    assert [table.item(row, 0).text() for row in range(4)] == ["1", "2", "3", "4"]
    for row in range(4):
        swatch = table.item(row, 0).data(widget.results.SWATCH_ROLE)
        assert swatch is not None
        np.testing.assert_allclose(swatch.getRgbF(), experts.get_color(row + 1), atol=1 / 255)
    # What each expert's region costs: the result's bytes and latents, the bytes explained on hover.
    for row, e in enumerate(widget.result.experts):
        assert table.item(row, 3).text() == f"{e.coded_bytes:,.0f}" and table.item(row, 4).text() == f"{e.latents:,}"
        assert f"{e.parameters:,} parameters" in table.item(row, 3).toolTip()
    assert 0 < sum(e.coded_bytes for e in widget.result.experts) < len(widget.result.data)
    assert widget.results.curves.steps and widget.results.curves.steps[-1] <= widget.result.steps


def test_contrast_limits_are_linked_and_ct_windows_apply(widget_on, phantom_nifti, qtbot):
    viewer, widget = widget_on(phantom_nifti)
    _configure(widget, steps=40)
    widget.train()
    wait_for(widget, qtbot)
    source, recon = viewer.layers[0], widget.derived["reconstruction"]
    source.contrast_limits = (-160.0, 240.0)
    assert tuple(recon.contrast_limits) == pytest.approx((-160.0, 240.0))
    recon.contrast_limits = (-50.0, 50.0)
    assert tuple(source.contrast_limits) == pytest.approx((-50.0, 50.0))
    assert widget.results.windows.isVisibleTo(widget)  # the phantom is in Hounsfield units
    widget.apply_window("Lung")
    assert tuple(source.contrast_limits) == pytest.approx((-1350.0, 150.0))
    assert tuple(recon.contrast_limits) == pytest.approx((-1350.0, 150.0))


def test_selecting_an_expert_shows_only_its_region_and_worst_slice_jumps(widget_on, phantom_nifti, qtbot):
    viewer, widget = widget_on(phantom_nifti)
    _configure(widget, steps=40)
    widget.train()
    wait_for(widget, qtbot)
    widget.results.table.selectRow(2)
    experts = widget.derived["experts"]
    assert experts.show_selected_label and experts.selected_label == 3
    widget.results.table.clearSelection()
    assert not experts.show_selected_label
    widget.go_to_worst_slice()
    k = widget.result.quality.worst_slice
    orientation = layer_orientation(widget.source)
    axis, index = orientation.display_position(2, k)
    assert axis not in viewer.dims.displayed
    assert viewer.dims.current_step[axis] == index


def test_stop_keeps_a_usable_model_and_continue_improves_it(widget_on, phantom_nifti, qtbot):
    viewer, widget = widget_on(phantom_nifti)
    _configure(widget, steps=100_000)
    widget.train()
    # 300 router steps, then joint
    qtbot.waitUntil(lambda: widget.job is not None and widget.job.steps_done > 600, timeout=60_000)
    widget.stop()
    wait_for(widget, qtbot)
    first = widget.result
    assert first.stopped and first.steps < 100_000
    assert first.quality.psnr > 15
    assert widget.derived["reconstruction"].data.any()
    widget.form.steps.setValue(250)
    widget.continue_training()
    wait_for(widget, qtbot)
    second = widget.result
    assert second.steps == first.steps + 250 and not second.stopped
    assert second.quality.psnr > first.quality.psnr


def test_save_then_load_gives_exactly_the_displayed_reconstruction(widget_on, phantom_nifti, qtbot, tmp_path):
    viewer, widget = widget_on(phantom_nifti)
    _configure(widget)
    widget.train()
    wait_for(widget, qtbot)
    shown = widget.derived["reconstruction"].data.copy()
    labels = widget.derived["experts"].data.copy()
    path = tmp_path / "saved.moec"
    widget.save_moec(path)
    assert path.read_bytes() == widget.result.data

    viewer2, widget2 = widget_on(phantom_nifti)
    widget2.load_moec(path)
    wait_for(widget2, qtbot)
    np.testing.assert_array_equal(widget2.derived["reconstruction"].data, shown)
    np.testing.assert_array_equal(widget2.derived["experts"].data, labels)
    assert widget2.result.ratio == pytest.approx(widget.result.ratio)


def test_plugin_compression_decompresses_with_the_cli_in_file_order(widget_on, phantom_nifti, qtbot, tmp_path):
    viewer, widget = widget_on(phantom_nifti)
    _configure(widget)
    widget.train()
    wait_for(widget, qtbot)
    path = tmp_path / "plugin.moec"
    widget.save_moec(path)
    out = tmp_path / "cli.nii.gz"
    assert moec(["decompress", str(path), "-o", str(out)]) == 0
    cli = nib.load(str(out)).get_fdata(dtype=np.float32)
    np.testing.assert_array_equal(cli, _file_order(widget, widget.derived["reconstruction"]))
    np.testing.assert_allclose(nib.load(str(out)).affine, nib.load(str(phantom_nifti)).affine)


def test_cli_compression_loads_in_the_plugin_in_file_order(widget_on, phantom_nifti, qtbot, tmp_path):
    path, out = tmp_path / "cli.moec", tmp_path / "cli.nii.gz"
    assert (
        moec(
            [
                "compress",
                str(phantom_nifti),
                "-o",
                str(path),
                "--ratio",
                "12",
                "--experts",
                "4",
                "--steps",
                str(FAST_STEPS),
                "--batch",
                "2048",
                "--quiet",
            ]
        )
        == 0
    )
    assert moec(["decompress", str(path), "-o", str(out)]) == 0
    viewer, widget = widget_on(phantom_nifti)
    widget.load_moec(path)
    wait_for(widget, qtbot)
    cli = nib.load(str(out)).get_fdata(dtype=np.float32)
    np.testing.assert_array_equal(_file_order(widget, widget.derived["reconstruction"]), cli)
    assert widget.derived["reconstruction"].metadata[META]["moec_bytes"] == path.read_bytes()


def test_opening_a_moec_file_alone_gives_its_layers(make_napari_viewer, phantom_nifti, tmp_path):
    from moec_napari.reader import get_reader

    path = tmp_path / "alone.moec"
    assert (
        moec(
            [
                "compress",
                str(phantom_nifti),
                "-o",
                str(path),
                "--ratio",
                "12",
                "--experts",
                "4",
                "--steps",
                "30",
                "--batch",
                "1024",
                "--quiet",
            ]
        )
        == 0
    )
    viewer = make_napari_viewer()
    layers = [getattr(viewer, f"add_{kind}")(data, **kwargs) for data, kwargs, kind in get_reader(str(path))(str(path))]
    assert [type(layer).__name__ for layer in layers] == ["Image", "Labels", "Image"]
    assert "MoEC 1" in layers[0].name and layers[1].data.dtype == np.uint8
    original = get_reader(str(phantom_nifti))(str(phantom_nifti))[0]
    np.testing.assert_allclose(layers[0].scale, original[1]["scale"])
    np.testing.assert_allclose(layers[0].translate, original[1]["translate"])


def test_a_corrupt_moec_file_gives_a_notification_not_an_exception(widget_on, phantom_nifti, qtbot, tmp_path):
    viewer, widget = widget_on(phantom_nifti)
    bad = tmp_path / "corrupt.moec"
    bad.write_bytes(b"MOEC\x01\x00\x10" + bytes(64))
    seen = []
    notification_manager.notification_ready.connect(lambda n: seen.append(n))
    widget.load_moec(bad)
    qtbot.waitUntil(lambda: bool(seen), timeout=10_000)
    assert "MoEC" in str(seen[0].message)
    assert widget.worker is None and widget.load_button.isEnabled()


def test_an_impossible_ratio_is_a_notification(widget_on, phantom_nifti, qtbot):
    viewer, widget = widget_on(phantom_nifti)
    seen = []
    notification_manager.notification_ready.connect(lambda n: seen.append(n))
    widget.form.ratio.setValue(100000)
    widget.train()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30_000)
    assert seen and "highest reachable" in str(seen[0].message)
    assert not widget.derived and len(viewer.layers) == 1  # no empty layers left behind
    # Repeated where it is not clipped: the widget's status line and the viewer's status bar.
    assert "highest reachable" in widget.status.text() and "highest reachable" in viewer.status


def test_the_encoder_choice_reaches_the_file_and_a_bad_pairing_is_a_notification(
    widget_on, phantom_nifti, qtbot, tmp_path
):
    viewer, widget = widget_on(phantom_nifti)
    seen = []
    notification_manager.notification_ready.connect(lambda n: seen.append(n))
    _configure(widget)
    widget.form.encoder.setCurrentText("grid")
    widget.form.partition.setCurrentText("blocks")
    widget.train()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30_000)  # settings are checked in the worker
    assert seen and "block partition" in str(seen[0].message) and "block partition" in widget.status.text()
    widget.form.partition.setCurrentText("learned")
    widget.form.router_input.setCurrentText("coordinates")
    widget.form.grid_channels.setValue(1)
    widget.train()
    wait_for(widget, qtbot)
    path = tmp_path / "grid.moec"
    widget.save_moec(path)
    assert moec(["info", str(path)]) == 0
    model = moecfile.read(path).meta.model
    assert model.encoder == "grid" and not model.router_features and model.grid_channels == 1


def test_the_compressions_notes_reach_the_widget(widget_on, phantom_nifti, qtbot):
    """The CLI and the plugin share pipeline.Compression, so its notes reach both: with the number
    of experts left to it (auto), what it tried and what it kept."""
    viewer, widget = widget_on(phantom_nifti)
    _configure(widget, steps=60, experts=0)
    assert widget.form.experts.text() == "auto" and widget.form.settings().experts is None
    widget.train()
    wait_for(widget, qtbot)
    note = next(n for n in widget.result.notes if n.startswith("tried 4 experts"))
    assert f"Note: {note}." in widget.status.text()
    assert widget.result.experts_count == (4 if "kept 4 experts" in note else 1)


def test_one_network_hides_the_partition_layers(widget_on, phantom_nifti, qtbot):
    viewer, widget = widget_on(phantom_nifti)
    _configure(widget, experts=1)
    widget.train()
    wait_for(widget, qtbot)
    assert widget.result.experts_count == 1
    assert widget.derived["reconstruction"].visible
    # The error, the partition and the confidence are on demand; one network has no partition to show.
    assert not any(widget.derived[role].visible for role in ("error", "experts", "confidence"))
    boxes = widget.show_boxes
    assert boxes["error"].isEnabled() and not boxes["experts"].isEnabled() and not boxes["confidence"].isEnabled()
    boxes["error"].setChecked(True)
    assert widget.derived["error"].visible
    _configure(widget, experts=4)
    widget.train()
    wait_for(widget, qtbot)
    assert boxes["experts"].isEnabled() and not boxes["experts"].isChecked()
    boxes["experts"].setChecked(True)
    assert widget.derived["experts"].visible and not widget.derived["confidence"].visible
    widget.derived["experts"].visible = False  # the layer's eye and the box agree
    assert not boxes["experts"].isChecked()


def test_removing_the_source_while_training_stops_the_job_with_a_message(widget_on, phantom_nifti, qtbot):
    viewer, widget = widget_on(phantom_nifti)
    source = viewer.layers[0]
    _configure(widget, steps=100_000)
    widget.train()
    qtbot.waitUntil(lambda: widget.job is not None and widget.job.steps_done > 5, timeout=60_000)
    viewer.layers.remove(source)
    assert "'phantom' was removed" in widget.status.text()
    wait_for(widget, qtbot)
    assert widget.result.stopped and widget.result.steps < 100_000
    assert "Training stopped: the source layer 'phantom' was removed" in widget.status.text()
    assert "was removed" in viewer.status
    assert not widget.continue_button.isEnabled() and not widget.train_button.isEnabled()
    assert widget.save_button.isEnabled()  # the model trained so far is still a file to keep


def test_save_load_presets_and_metrics_explain_themselves(widget_on, phantom_nifti):
    from qtpy.QtWidgets import QLabel, QPushButton

    viewer, widget = widget_on(phantom_nifti)
    assert widget.save_button.toolTip() and widget.load_button.toolTip()
    presets = widget.results.windows.findChildren(QPushButton)
    assert len(presets) == 4 and all("level" in b.toolTip() and "width" in b.toolTip() for b in presets)
    assert all(label.toolTip() for label in widget.results.metrics.values())
    titles = [w for w in widget.results.metrics_box.findChildren(QLabel) if w not in widget.results.metrics.values()]
    assert titles and all(t.toolTip() for t in titles)


def test_the_dock_leaves_the_camera_alone(make_napari_viewer, phantom_nifti):
    """The layers carry the radiological orientation (moec_napari.orientation): a camera turned by the
    widget as well would mirror the views again."""
    from moec_napari.widget import MoecWidget

    viewer = make_napari_viewer()
    scene = getattr(viewer, "scene", None)
    camera = scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera
    default = tuple(camera.orientation)
    viewer.window.add_dock_widget(MoecWidget(viewer))
    assert tuple(camera.orientation) == default
