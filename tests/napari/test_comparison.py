"""What a user reads after training: the comparison's layout, names, units and flip, and a progress
that says what the job is doing."""

from __future__ import annotations

from napari.utils import progress

from moec_napari.activity import STEPS
from moec_napari.comparison import OVER_IMAGES
from moec_napari.layer_meta import Role
from moec_napari.napari_compat import camera, colorbar, grid, name_overlay, scale_bar

from .conftest import FAST_STEPS
from .test_widget import _configure, wait_for


def _tile(viewer, layer) -> tuple[int, int]:
    layers = list(viewer.layers)
    return tuple(grid(viewer).position(layers.index(layer), layers))


def test_the_original_and_its_reconstruction_side_by_side_named_with_units(widget_on, phantom_nifti, qtbot):
    viewer, widget = widget_on(phantom_nifti)
    _configure(widget, experts=4)
    widget.train()
    wait_for(widget, qtbot)
    source, recon, error = widget.source, widget.derived[Role.RECONSTRUCTION], widget.derived[Role.ERROR]
    g = grid(viewer)
    assert g.enabled and _tile(viewer, source) == (0, 0) and _tile(viewer, recon) == (0, 1)
    assert g.actual_shape(list(viewer.layers)) == (1, 2)  # two large views: the rest is on demand
    assert all(name_overlay(layer).visible for layer in (source, recon, error))
    assert scale_bar(viewer).visible
    # The error map: its sign and unit in its name (the phantom is CT: HU), a colour bar.
    assert "error in HU (MoEC − original)" in error.name and colorbar(error).visible
    lo, hi = error.contrast_limits
    assert lo == -hi

    # Showing the error adds a view; the views are laid out again and the camera follows.
    qtbot.wait(50)
    zoom = camera(viewer).zoom
    widget.show_boxes[Role.ERROR].setChecked(True)
    assert error.visible and g.actual_shape(list(viewer.layers))[0] * g.actual_shape(list(viewer.layers))[1] >= 3
    qtbot.waitUntil(lambda: camera(viewer).zoom != zoom, timeout=5_000)

    # Outside the grid nothing opaque covers the images.
    g.enabled = False
    for role, opacity in OVER_IMAGES.items():
        assert widget.derived[role].opacity == opacity
    g.enabled = True
    assert error.opacity == 1.0


def test_flip_shows_the_original_then_the_reconstruction_in_the_same_place(widget_on, phantom_nifti, qtbot):
    viewer, widget = widget_on(phantom_nifti)
    _configure(widget, experts=4)
    widget.train()
    wait_for(widget, qtbot)
    source, recon = widget.source, widget.derived[Role.RECONSTRUCTION]
    widget.show_boxes[Role.EXPERTS].setChecked(True)
    qtbot.wait(50)  # the views are laid out again
    camera(viewer).zoom = 3.0  # the user looks closely; a flip must keep the place
    widget.flip_button.click()
    assert not grid(viewer).enabled
    assert [layer for layer in viewer.layers if layer.visible] == [source]
    widget.comparison.flip()
    qtbot.wait(20)
    assert [layer for layer in viewer.layers if layer.visible] == [recon]
    assert camera(viewer).zoom == 3.0
    assert "MoEC" in viewer.status
    widget.grid_button.click()  # back side by side, as before the flip
    assert grid(viewer).enabled and source.visible and recon.visible and widget.derived[Role.EXPERTS].visible


def test_a_new_run_after_a_flip_starts_from_the_original_and_links_nothing_twice(widget_on, phantom_nifti, qtbot):
    viewer, widget = widget_on(phantom_nifti)
    _configure(widget, experts=1)
    widget.train()
    wait_for(widget, qtbot)
    source = widget.source
    links = len(source.events.contrast_limits.callbacks)
    widget.comparison.flip()
    widget.comparison.flip()  # the reconstruction alone, the original hidden
    assert not source.visible
    widget.train()
    wait_for(widget, qtbot)
    assert source.visible and grid(viewer).enabled and widget.derived[Role.RECONSTRUCTION].visible
    # The earlier reconstruction is let go: the window link is made anew, not added to.
    assert len(source.events.contrast_limits.callbacks) == links
    # Removing every derived layer ends the comparison: the grid as it was before.
    for layer in list(widget.derived.values()):
        viewer.layers.remove(layer)
    assert not widget.derived and not grid(viewer).enabled
    assert not widget.flip_button.isEnabled()


def test_progress_says_the_stage_and_the_activity_dock_shows_the_job(widget_on, phantom_nifti, qtbot):
    viewer, widget = widget_on(phantom_nifti)
    _configure(widget, steps=100_000, experts=0)  # experts auto: the first run chooses
    widget.train()
    assert widget.progress.maximum() == 0 and "Preparing" in widget.status.text()  # no measure yet

    def ours() -> list:
        return [p for p in progress._all_instances if str(p.desc).startswith("MoEC")]

    qtbot.waitUntil(lambda: len(ours()) == 1, timeout=5_000)  # opened after the click, in the activity dock
    qtbot.waitUntil(lambda: "choosing 4 experts or one network" in widget.status.text(), timeout=60_000)
    assert widget.progress.maximum() == STEPS and "step" in widget.status.text()
    qtbot.waitUntil(lambda: "training ends about" in widget.status.text(), timeout=120_000)
    widget.stop()
    wait_for(widget, qtbot)
    assert widget.result is not None and widget.result.stopped
    assert widget.progress.value() == STEPS and widget.status.text().startswith("Done")
    assert not ours()


def test_a_stop_while_preparing_stops_the_job_as_soon_as_it_exists(widget_on, phantom_nifti, qtbot):
    viewer, widget = widget_on(phantom_nifti)
    _configure(widget, steps=FAST_STEPS * 1000, experts=1)
    widget.train()
    assert widget.job is None  # the volume is read in the worker: the job does not exist yet
    widget.stop()
    wait_for(widget, qtbot)
    assert widget.result is None or widget.result.stopped
