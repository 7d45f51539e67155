"""The plugin's background job without Qt: previews are slices of the model's decode, in display order."""

from __future__ import annotations

import threading
import time

import numpy as np

from codec import pipeline
from codec.decode.reconstruct import render
from codec.fit.train import Progress, TrainConfig
from codec.io.phantom import make_phantom
from moec_napari.job import ENCODING, Decoded, FileLayers, Preview, Result, Stage, TrainingJob, error_limit, load
from moec_napari.layer_meta import META
from moec_napari.layers import orientation_of


def drained(run):
    """Everything a job's run yields, and what it returns."""
    items = []
    try:
        while True:
            items.append(next(run))
    except StopIteration as stop:
        return items, stop.value


def test_previews_are_the_displayed_slice_of_the_current_model_and_run_returns_a_result():
    volume, _ = make_phantom((32, 28, 16))
    orientation = orientation_of(volume)
    job = TrainingJob(
        volume,
        orientation,
        pipeline.Settings(ratio=12, experts=4),
        TrainConfig(steps=120, batch_size=2048),
        preview_every=0.0,
    )
    job.view = (0, 5)  # display axis 0 (superior-inferior), slice 5
    items, result = drained(job.run())
    previews = [i for i in items if isinstance(i, Preview)]
    assert any(isinstance(i, Progress) for i in items) and previews
    assert isinstance(result, Result) and result.steps == 120 and not result.stopped

    last = job.preview(0, 5)
    full, labels, confidence = render(job.fitter.model, volume.shape, *volume.value_range, (slice(None),) * 3)
    shown = orientation.to_display(full)
    np.testing.assert_allclose(last.values, shown[5], rtol=1e-5, atol=1e-3)
    np.testing.assert_array_equal(last.labels, orientation.to_display(labels)[5])
    np.testing.assert_allclose(last.error, last.values - orientation.to_display(volume.data)[5], atol=1e-3)
    assert result.values.shape == orientation.display_shape == result.labels.shape
    # the error layer's window comes with the data, computed in the worker
    assert result.error_limit == error_limit(result.error) > 0
    assert last.error_limit == error_limit(last.error)


def test_error_limit_ignores_a_few_outliers_and_never_collapses():
    error = np.linspace(-10, 10, 10_001, dtype=np.float32)
    error[:3] = 1e6  # outliers must not wash the map out
    assert 9.5 < error_limit(error) < 10.5
    assert error_limit(np.zeros((4, 4), np.float32)) > 0
    assert error_limit(np.zeros(0, np.float32)) == 1.0


def test_stop_request_ends_training_early_and_keeps_the_model():
    volume, _ = make_phantom((32, 28, 16))
    job = TrainingJob(volume, None, pipeline.Settings(ratio=12, experts=4), TrainConfig(steps=100_000, batch_size=1024))
    run = job.run()
    for item in run:
        if isinstance(item, Progress) and item.step > 20:
            job.request_stop()
            break
    result = None
    try:
        while True:
            next(run)
    except StopIteration as stop:
        result = stop.value
    assert result.stopped and result.steps < 1000
    assert result.values.shape == volume.shape


def test_a_stop_between_asking_for_a_run_and_its_first_step_still_stops_it():
    """The widget asks for the run on the GUI thread and a worker starts it later: a Stop pressed in
    between must not be cleared when the worker begins."""
    volume, _ = make_phantom((32, 28, 16))
    job = TrainingJob(volume, None, pipeline.Settings(ratio=12, experts=4), TrainConfig(steps=40, batch_size=1024))
    run = job.run()
    job.request_stop()
    try:
        while True:
            next(run)
    except StopIteration as stop:
        result = stop.value
    assert result.stopped and result.steps <= 1


def test_after_a_stop_the_model_as_it_stands_comes_first_then_the_file_then_its_figures():
    """What Stop shows at once is a preview of the stopped model; the decoded file follows before it
    is measured; a stage says what happens in between."""
    volume, _ = make_phantom((32, 28, 16))
    job = TrainingJob(volume, None, pipeline.Settings(ratio=12, experts=4), TrainConfig(steps=100_000, batch_size=1024))
    job.view = (0, 5)
    run = job.run()
    for item in run:
        if isinstance(item, Progress) and item.stage != "router" and item.step > 20:
            job.request_stop()
            break
    after = []
    try:
        while True:
            after.append(next(run))
    except StopIteration as stop:
        result = stop.value
    kinds = [type(i).__name__ for i in after if not isinstance(i, Progress)]
    assert kinds == ["Preview", "Stage", "Decoded"], kinds
    stage = next(i for i in after if isinstance(i, Stage))
    assert stage.text == ENCODING
    shown = next(i for i in after if isinstance(i, Decoded))
    assert result.stopped and shown.values is result.values and shown.labels is result.labels
    np.testing.assert_allclose(result.error, result.values - volume.data, atol=1e-3)


def test_a_stop_while_the_trial_measures_a_model_is_honoured_before_the_next_trains():
    """The job hands its stop request to the compression, which asks it where training yields
    nothing (a trial's measure of a model): a Stop pressed then shows the measured model's slice at
    once, and the next model never trains."""
    volume, _ = make_phantom((32, 28, 16))
    job = TrainingJob(volume, None, pipeline.Settings(ratio=12), TrainConfig(steps=200, batch_size=2048))
    job.view = (0, 5)
    first, second = job.compression.candidates
    watching = threading.Event()

    def press_stop_when_its_trial_ends() -> None:  # a user's click, on another thread
        while not watching.is_set():
            if first.trial_steps > 0:
                job.request_stop()
                return
            time.sleep(0.0005)

    watcher = threading.Thread(target=press_stop_when_its_trial_ends)
    watcher.start()
    try:
        items, result = drained(job.run())
    finally:
        watching.set()
        watcher.join()
    assert second.fitter is None and {i.trying for i in items if isinstance(i, Progress)} == {first.name}
    assert result.stopped and result.steps == first.trial_steps
    kinds = [type(i).__name__ for i in items if not isinstance(i, Progress)]
    assert kinds[-3:] == ["Preview", "Stage", "Decoded"], kinds


def test_a_file_without_its_original_opens_as_typed_layers(tmp_path):
    volume, _ = make_phantom((32, 28, 16))
    job = TrainingJob(volume, None, pipeline.Settings(ratio=12, experts=4), TrainConfig(steps=40, batch_size=1024))
    run = job.run()
    try:
        while True:
            next(run)
    except StopIteration as stop:
        data = stop.value.data
    opened = load(None, None, data, str(tmp_path / "ct.moec"))
    assert isinstance(opened, FileLayers)
    roles = [kwargs["metadata"][META]["role"] for _, kwargs, _ in opened.layers]
    assert roles == ["reconstruction", "experts", "confidence"]
    assert [kind for *_, kind in opened.layers] == ["image", "labels", "image"]
    measured = load(volume, None, data, "ct.moec")
    assert isinstance(measured, Result) and measured.data == data
