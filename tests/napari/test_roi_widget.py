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
