"""Never worse than before: a Continue keeps the earlier file until the new one is better, a Stop never
replaces a better file with a worse one, and the other file of the two is one click away. Real
viewer, real (step-budgeted) training."""

from __future__ import annotations

import numpy as np

from codec.eval import db_text
from moec_napari.layer_meta import META

from .conftest import FAST_STEPS, wait_for


def _train(widget, qtbot, steps=FAST_STEPS):
    widget.form.ratio.setValue(12.0)
    widget.form.experts.setValue(4)
    widget.form.steps.setValue(steps)
    widget.train()
    wait_for(widget, qtbot)
    return widget.result


def _shows(widget, r) -> None:
    """The screen and Save .moec are `r`'s."""
    assert widget.result is r
    np.testing.assert_array_equal(widget.derived["reconstruction"].data, r.values)
    np.testing.assert_array_equal(widget.derived["experts"].data, r.labels)
    assert widget.derived["reconstruction"].metadata[META]["moec_bytes"] == r.data
    assert db_text(r.quality.psnr) in widget.results.metrics["psnr"].text()


def test_continue_then_an_immediate_stop_keeps_the_better_earlier_file(widget_on, phantom_nifti, qtbot, tmp_path):
    viewer, widget = widget_on(phantom_nifti)
    first = _train(widget, qtbot)
    assert widget.other is None and not widget.swap_button.isEnabled()
    widget.form.steps.setValue(3)
    widget.continue_training()
    widget.stop()  # at once: the continued run ends a step in, before its final (quantization-aware) stage
    wait_for(widget, qtbot)
    new = widget.job.result
    assert new is not first and new.stopped and new.steps < first.steps + 3
    # Whichever is better is kept; here the earlier one (the stop skipped the final stage).
    assert {id(widget.result), id(widget.other)} == {id(first), id(new)}
    assert widget.result.quality.psnr >= widget.other.quality.psnr
    assert widget.result is first and new.quality.psnr < first.quality.psnr
    status = widget.status.text()
    assert "Kept the earlier file" in status
    assert db_text(first.quality.psnr) in status and db_text(new.quality.psnr) in status
    _shows(widget, first)
    kept = tmp_path / "kept.moec"
    widget.save_moec(kept)
    assert kept.read_bytes() == first.data

    # The other file, one click away, and back.
    assert widget.swap_button.isEnabled() and widget.swap_button.isVisibleTo(widget)
    widget.swap_button.click()
    _shows(widget, new)
    assert widget.other is first and "new file" in widget.status.text()
    other = tmp_path / "other.moec"
    widget.save_moec(other)
    assert other.read_bytes() == new.data
    widget.swap_button.click()
    _shows(widget, first)
    assert widget.other is new


def test_a_better_continued_file_replaces_the_earlier_one_which_stays_whole(widget_on, phantom_nifti, qtbot):
    viewer, widget = widget_on(phantom_nifti)
    first = _train(widget, qtbot)
    widget.job.preview_every = 0.0  # previews of the continued run on every step
    earlier = {name: np.array(getattr(first, name)) for name in ("values", "labels", "confidence", "error")}
    widget.form.steps.setValue(250)
    widget.continue_training()
    wait_for(widget, qtbot)
    new = widget.job.result
    assert not new.stopped and new.quality.psnr > first.quality.psnr
    assert widget.result is new and widget.other is first
    assert "Better than the earlier file" in widget.status.text()
    _shows(widget, new)
    # The previews drew into copies: the earlier result is whole, and shown whole when chosen again.
    for name, array in earlier.items():
        np.testing.assert_array_equal(getattr(first, name), array)
    widget.use_other_result()
    _shows(widget, first)
    # A new Train starts afresh: no other file to offer.
    _train(widget, qtbot)
    assert widget.other is None and not widget.swap_button.isEnabled()
