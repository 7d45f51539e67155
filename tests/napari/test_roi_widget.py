"""A painted Labels layer as the region of interest in the widget: it reaches training in the file's
voxel order, the file records it, the metrics report inside and outside it."""

from __future__ import annotations

import numpy as np
from napari.utils.notifications import notification_manager

from codec.format import moecfile
from moec_napari.layers import layer_orientation

from .conftest import FAST_STEPS, wait_for


def _paint(viewer, source):
    """A small painted box, in display order, on a Labels layer of the source's grid."""
    painted = np.zeros(source.data.shape, dtype=np.uint8)
    painted[6:10, 10:16, 12:20] = 3  # any label marks the region
    return viewer.add_labels(painted, name="lesion", scale=source.scale, translate=source.translate)


def test_a_painted_roi_trains_and_is_measured_inside_and_outside(widget_on, phantom_nifti, qtbot, tmp_path):
    viewer, widget = widget_on(phantom_nifti)
    source = viewer.layers[0]
    roi_layer = _paint(viewer, source)
    items = [widget.form.roi_box.itemText(i) for i in range(widget.form.roi_box.count())]
    assert items == ["none", "lesion"]
    widget.form.roi_box.setCurrentText("lesion")
    widget.form.ratio.setValue(12.0)
    widget.form.steps.setValue(FAST_STEPS)
    mask = widget.roi_mask(source)
    orientation = layer_orientation(source)
    np.testing.assert_array_equal(orientation.to_display(mask), roi_layer.data != 0)  # the file's voxel order
    widget.train()
    wait_for(widget, qtbot)
    r = widget.result
    assert r.roi is not None and r.roi.voxels == 4 * 6 * 8
    assert "inside" in widget.results.metrics["roi"].text() and "outside" in widget.results.metrics["roi"].text()
    path = tmp_path / "roi.moec"
    widget.save_moec(path)
    assert moecfile.read(path).meta.train["roi"] == {"voxels": 192, "weight": widget.form.roi_weight.value()}
    # The widget's own expert assignment is never offered as a region.
    assert [widget.form.roi_box.itemText(i) for i in range(widget.form.roi_box.count())] == ["none", "lesion"]


def test_an_roi_on_another_grid_is_a_notification(widget_on, phantom_nifti, qtbot):
    viewer, widget = widget_on(phantom_nifti)
    viewer.add_labels(np.ones((5, 5, 5), np.uint8), name="elsewhere")
    widget.form.roi_box.setCurrentText("elsewhere")
    seen = []
    notification_manager.notification_ready.connect(lambda n: seen.append(n))
    widget.train()
    qtbot.waitUntil(lambda: bool(seen), timeout=10_000)
    assert "ROI layer 'elsewhere'" in str(seen[0].message) and widget.worker is None


def _items(box) -> list[str]:
    return [box.itemText(i) for i in range(box.count())]


def test_renamed_layers_are_followed_in_every_box(widget_on, phantom_nifti, qtbot):
    viewer, widget = widget_on(phantom_nifti)
    source = viewer.layers[0]
    roi_layer = _paint(viewer, source)
    widget.form.roi_box.setCurrentText("lesion")
    source.name = "chest CT"
    roi_layer.name = "nodule"
    assert _items(widget.form.layer_box) == ["chest CT"] and widget.form.layer_box.currentText() == "chest CT"
    assert _items(widget.form.roi_box) == ["none", "nodule"] and widget.form.roi_box.currentText() == "nodule"
    assert widget.selected_layer() is source
    assert widget.roi_mask(source).sum() == 4 * 6 * 8  # the renamed layer, still the region


def test_a_removed_roi_is_an_error_in_words_never_a_run_without_it(widget_on, phantom_nifti, qtbot):
    viewer, widget = widget_on(phantom_nifti)
    source = viewer.layers[0]
    roi_layer = _paint(viewer, source)
    widget.form.roi_box.setCurrentText("lesion")
    viewer.layers.remove(roi_layer)
    assert widget.form.roi_box.currentText() == "lesion"  # still the choice, with no layer behind it
    seen = []
    notification_manager.notification_ready.connect(lambda n: seen.append(n))
    widget.form.steps.setValue(FAST_STEPS)
    widget.train()
    qtbot.waitUntil(lambda: bool(seen), timeout=10_000)
    assert "ROI layer 'lesion' is no longer open" in str(seen[0].message)
    assert widget.worker is None and widget.job is None
    assert "no longer open" in widget.status.text() and "no longer open" in viewer.status
    # Choosing none (or another region) trains again.
    widget.form.roi_box.setCurrentText("none")
    assert widget.roi_mask(source) is None and _items(widget.form.roi_box) == ["none", "lesion"]
    viewer.add_labels(np.zeros((2, 2, 2), np.uint8), name="other")
    assert _items(widget.form.roi_box) == ["none", "other"]  # the gone choice is dropped once not chosen
