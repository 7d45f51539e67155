"""The dock beside a volume in a 1600 x 1000 window (issue 44): nothing clipped behind a horizontal
scroll bar, the training curves in view without scrolling while training, the metrics and the
experts in sections that fold, and a tooltip on every button and figure."""

from __future__ import annotations

import pytest
from qtpy.QtCore import QPoint
from qtpy.QtWidgets import (
    QAbstractSpinBox,
    QCheckBox,
    QComboBox,
    QLabel,
    QPushButton,
    QScrollArea,
    QTableWidget,
    QWidget,
)

from codec.io.load import save_volume
from codec.io.phantom import make_phantom

from .conftest import FAST_STEPS, SMALL, wait_for

WINDOW = (1600, 1000)
#: A name as long as a real series' (a layer box sized to it once pushed the dock past the screen).
LONG_NAME = "chest_ct_0001_arterial_phase_1mm_thin_slices"
#: What the form and the results panel may need at most, so a dock narrower than napari's still fits them.
NARROW = 300
#: What can be clipped at the dock's right edge.
CLIPPABLE = (QPushButton, QComboBox, QAbstractSpinBox, QCheckBox, QLabel, QTableWidget)


@pytest.fixture
def docked(make_napari_viewer, qtbot, tmp_path):
    """A shown 1600 x 1000 viewer with a CT volume (a long name) and the dock on the right."""
    from moec_napari.reader import get_reader
    from moec_napari.widget import MoecWidget

    volume, _ = make_phantom(SMALL)
    path = tmp_path / f"{LONG_NAME}.nii.gz"
    save_volume(volume, path)
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(*WINDOW)
    for data, kwargs, kind in get_reader(str(path))(str(path)):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    widget = MoecWidget(viewer)
    viewer.window.add_dock_widget(widget, name="MoEC compression", area="right")
    qtbot.waitUntil(lambda: widget.isVisible() and widget.width() > 0)
    qtbot.wait(50)  # the dock's layout settles
    assert (window.width(), window.height()) == WINDOW, "the test screen is smaller than the window"
    return viewer, widget


def _scroll(widget) -> QScrollArea:
    scroll = widget.findChild(QScrollArea)
    assert scroll is not None
    return scroll


def assert_fits(widget, qtbot, where: str) -> None:
    """No horizontal scroll bar, everything shown inside the viewport's width, the curves in view."""
    qtbot.wait(50)
    scroll = _scroll(widget)
    viewport, content = scroll.viewport(), scroll.widget()
    bar = scroll.horizontalScrollBar()
    assert not bar.isVisible() and bar.maximum() == 0, (
        f"{where}: a horizontal scroll bar: the dock's content needs {content.minimumSizeHint().width()} px, "
        f"the dock gives {viewport.width()} px"
    )
    clipped = []
    for child in content.findChildren(QWidget):
        if isinstance(child, CLIPPABLE) and child.isVisibleTo(widget) and child.parent() is not None:
            left = child.mapTo(viewport, QPoint(0, 0)).x()
            if left < 0 or left + child.width() > viewport.width():
                text = getattr(child, "text", lambda: "")()
                clipped.append(f"{type(child).__name__} {text!r} at {left}..{left + child.width()}")
    assert not clipped, f"{where}: beyond the dock's {viewport.width()} px: {clipped}"
    curves = widget.results.curves
    top = curves.mapTo(viewport, QPoint(0, 0)).y()
    assert scroll.verticalScrollBar().value() == 0
    assert 0 <= top and top + curves.height() <= viewport.height(), (
        f"{where}: the curves at {top}..{top + curves.height()} px, the dock shows {viewport.height()} px"
    )


def test_the_dock_fits_beside_a_volume_and_shows_the_curves_while_training(docked, qtbot):
    viewer, widget = docked
    assert widget.results.windows.isVisibleTo(widget)  # a CT volume: the presets are there to be clipped
    assert_fits(widget, qtbot, "docked")
    widget.form.advanced.expand()
    assert_fits(widget, qtbot, "advanced settings open")
    widget.form.advanced.collapse()

    widget.form.ratio.setValue(12.0)
    widget.form.experts.setValue(4)
    widget.form.steps.setValue(FAST_STEPS)
    widget.train()
    curves = widget.results.curves
    qtbot.waitUntil(lambda: len(curves.steps) >= 2 or widget.worker is None, timeout=120_000)
    assert_fits(widget, qtbot, "training")
    wait_for(widget, qtbot)
    assert widget.result is not None and widget.results.table.rowCount() == 4
    # After a result the figures and the experts unfold, under the curves.
    for section in (widget.results.metrics_section, widget.results.experts_section):
        assert section.isExpanded() and section.toggleButton().isVisibleTo(widget)
    assert widget.results.metrics["psnr"].isVisibleTo(widget) and widget.results.table.isVisibleTo(widget)
    assert curves.mapTo(widget, QPoint(0, 0)).y() < widget.results.metrics_section.mapTo(widget, QPoint(0, 0)).y()
    assert_fits(widget, qtbot, "result shown")


def test_the_metrics_fold_and_keep_the_users_choice(docked, qtbot):
    viewer, widget = docked
    section = widget.results.metrics_section
    assert not section.isExpanded() and section.toggleButton().isVisibleTo(widget)  # nothing measured yet
    section.toggleButton().click()
    assert section.isExpanded() and widget.results.metrics["psnr"].isVisibleTo(widget)
    section.toggleButton().click()
    assert not section.isExpanded() and not widget.results.metrics["psnr"].isVisibleTo(widget)
    widget.results.clear()
    assert not section.isExpanded()  # folded by the user: a new run leaves it folded


def test_the_form_and_results_fit_a_narrow_dock(docked):
    """Narrower than napari's dock: the settings (advanced ones open) and every result figure."""
    viewer, widget = docked
    widget.form.advanced.expand()
    for section in (widget.results.metrics_section, widget.results.experts_section):
        section.expand()
    assert widget.form.minimumSizeHint().width() <= NARROW
    assert widget.results.minimumSizeHint().width() <= NARROW
    assert widget.results.curves.minimumSizeHint().height() >= 140  # tall enough to read


def test_every_button_and_figure_explains_itself(docked):
    viewer, widget = docked
    buttons = widget.findChildren(QPushButton)
    assert len(buttons) >= 12
    assert all(b.toolTip() for b in buttons), [b.text() for b in buttons if not b.toolTip()]
    results = widget.results
    assert all(label.toolTip() for label in results.metrics.values())
    titles = [w for w in results.metrics_box.findChildren(QLabel) if w not in results.metrics.values()]
    assert len(titles) == len(results.metrics) and all(t.toolTip() for t in titles)
    headers = [results.table.horizontalHeaderItem(c) for c in range(results.table.columnCount())]
    assert [h.text() for h in headers] == ["Expert", "Voxels", "PSNR", "Bytes", "Latents"]
    assert all(h.toolTip() for h in headers)
    assert results.table.toolTip() and results.windows.toolTip()
    tip = results.curves.toolTip()
    assert "loss" in tip and "PSNR" in tip and "step" in tip
    assert all(w.toolTip() for w in widget.form.inputs)


def test_the_curves_draw_each_run_apart_and_stay_cheap(qtbot):
    """A model tried first counts its steps from 1 again: its line is its own, never joined to the next."""
    import math

    from moec_napari.curves import MAX_POINTS, CurvesWidget

    curves = CurvesWidget()
    qtbot.addWidget(curves)
    curves.resize(340, curves.sizeHint().height())
    curves.grab()  # empty: the titles and a note
    for run in ("4 experts", "one network"):
        for step in range(1, 21):
            curves.add(step, 0.5 * math.exp(-step / 10), 10 + step, run=run)
    for step in range(21, 41):  # the model kept trains on (Progress.trying is "" after the trial)
        curves.add(step, 0.05 * math.exp(-step / 10), 30 + step / 10)
    curves.add(41, 1e-3, math.nan)  # the router stage: no PSNR, no point
    assert curves.starts == [0, 20, 40] and len(curves.steps) == 60
    curves.add(1, 0.4, 11.0)  # a step that goes back starts a new line as well
    assert curves.starts == [0, 20, 40, 60]
    curves.grab()
    for step in range(2, 2 * MAX_POINTS):
        curves.add(step, 1.0 / step, 10 + math.log(step))
    assert len(curves.steps) <= MAX_POINTS and curves.starts[-1] < len(curves.steps)
    assert curves.starts == sorted(set(curves.starts))
    curves.grab()
    curves.clear()
    assert not curves.steps and not curves.starts
