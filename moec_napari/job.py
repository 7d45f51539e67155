"""The plugin's background work, with no Qt in it: training with previews, and loading a file.

`TrainingJob.run` is a generator over `codec.pipeline.Compression.run`: it yields Progress (at most every
0.1 s) and Preview (the displayed slice decoded at most every `preview_every` seconds); once training
ends or is stopped, a Preview of the model as it stands (at once: what Stop shows first), the Stage
"encoding and measuring", the Decoded file's voxels, and it returns the measured Result. Everything
heavy (previews, encoding, the full decode, the measurements) happens here, in the worker thread; the
GUI thread only assigns arrays, and reads how far training is from `TrainingJob.snapshot` (the last
Progress), never the Fitter.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np

from codec import pipeline
from codec.decode.reconstruct import Reconstruction, reconstruct, render
from codec.eval.metrics import ExpertStat, Quality, RegionQuality
from codec.fit.train import Fitter, Progress, TrainConfig
from codec.format import moecfile
from codec.io.volume import Volume
from codec.pipeline.trial import experts_text

from .derived import file_layers
from .layers import file_stem
from .lazy import lazy_decode
from .napari_compat import LayerData
from .orientation import Orientation

PROGRESS_EVERY = 0.1

#: What the job is doing where it has no training progress to show (the bar is indeterminate).
PREPARING = "preparing"
ENCODING = "encoding and measuring"


@dataclass(frozen=True)
class Stage:
    """A part of the job without a measure of progress: reading the volume, encoding and measuring."""

    text: str


@dataclass(frozen=True, eq=False)
class Preview:
    """The reconstruction of one displayed slice, in display order."""

    step: int
    axis: int  # display axis the slice is taken along
    index: int
    values: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    error: np.ndarray
    error_limit: float


@dataclass(frozen=True, eq=False)
class Decoded:
    """The written file's voxels, decoded, in display order: shown before they are measured."""

    values: np.ndarray  # real units
    labels: np.ndarray
    confidence: np.ndarray
    error: np.ndarray
    error_limit: float


@dataclass(frozen=True, eq=False)
class Result:
    """A finished (or stopped) run, decoded from the bytes that Save .moec will write."""

    data: bytes
    values: np.ndarray  # display order, real units
    labels: np.ndarray
    confidence: np.ndarray
    error: np.ndarray
    error_limit: float  # symmetric contrast limit of the error layer, computed here, off the GUI thread
    quality: Quality
    experts: list[ExpertStat]
    ratio: float
    file_ratio: float | None
    steps: int
    experts_count: int
    parameters_per_expert: int
    stopped: bool
    roi: RegionQuality | None = None  # inside and outside the region of interest it was trained with
    notes: tuple[str, ...] = ()  # what the user should be told about the file (pipeline.Compressed.notes)


def error_limit(error: np.ndarray) -> float:
    """The error layer's symmetric window: the 99.5th percentile of |error| (a few outliers would
    otherwise wash the map out). A percentile of a whole volume is slow for the GUI thread: workers compute it."""
    if not error.size:
        return 1.0
    return max(float(np.percentile(np.abs(error), 99.5)), 1e-6)


def _display(orientation: Orientation | None, array: np.ndarray) -> np.ndarray:
    return array if orientation is None else orientation.to_display(array)


def decoded(volume: Volume, orientation: Orientation | None, recon: Reconstruction) -> Decoded:
    """A file's reconstruction (with labels and confidence) against `volume`, in display order."""
    values = _display(orientation, recon.volume.data)
    error = values - _display(orientation, volume.data)
    return Decoded(
        values,
        _display(orientation, recon.labels),  # type: ignore[arg-type]  # labels were asked for
        _display(orientation, recon.confidence),  # type: ignore[arg-type]  # and the confidence
        error,
        error_limit(error),
    )


def measured(
    volume: Volume,
    data: bytes,
    moec: moecfile.MoecFile,
    shown: Decoded,
    recon: Reconstruction,
    steps: int,
    stopped: bool,
    roi: np.ndarray | None = None,
    notes: tuple[str, ...] = (),
) -> Result:
    """The Result of a decoded file: `shown` measured against `volume` (and inside and outside
    `roi`, file voxel order)."""
    evaluation = pipeline.evaluate(volume, moec, roi=roi, reconstruction=recon)
    model = moec.meta.model
    return Result(
        data,
        shown.values,
        shown.labels,
        shown.confidence,
        shown.error,
        shown.error_limit,
        evaluation.quality,
        evaluation.experts,
        evaluation.ratio,
        evaluation.file_ratio,
        steps,
        model.experts,
        model.expert_parameter_count(),
        stopped,
        evaluation.roi,
        notes,
    )


def finish(
    volume: Volume,
    orientation: Orientation | None,
    data: bytes,
    steps: int,
    stopped: bool,
    moec: moecfile.MoecFile | None = None,
    roi: np.ndarray | None = None,
    notes: tuple[str, ...] = (),
) -> Result:
    """Decode `data` (unless already read) and measure it against `volume`, in display order."""
    moec = moec or moecfile.from_bytes(data)
    recon = reconstruct(moec)
    return measured(volume, data, moec, decoded(volume, orientation, recon), recon, steps, stopped, roi, notes)


class TrainingJob:
    """One volume's training session in the plugin: train, stop, continue, each run a generator."""

    def __init__(
        self,
        volume: Volume,
        orientation: Orientation | None,
        settings: pipeline.Settings,
        config: TrainConfig,
        preview_every: float = 0.5,
        roi: np.ndarray | None = None,
    ):
        """`roi`: a region of interest (a mask in the file's voxel order) weighted config.roi_weight."""
        self.volume = volume
        self.orientation = orientation
        #: RatioError here, before any thread starts.
        self.compression = pipeline.Compression(volume, settings, config, roi)
        self.preview_every = preview_every
        self.stop_requested = False
        #: (display axis, index) of the slice on screen; the GUI thread replaces the tuple whole.
        self.view: tuple[int, int] | None = None
        #: The last Progress of training, replaced whole by the worker: what the GUI thread reads.
        self.snapshot: Progress | None = None
        self.result: Result | None = None

    @property
    def fitter(self) -> Fitter:
        """The model training now (during a trial of several, the one being tried); the worker's
        alone: the GUI thread reads `snapshot`."""
        return self.compression.fitter

    @property
    def steps_done(self) -> int:
        """Training steps run so far, all runs together, as of the last snapshot."""
        return 0 if self.snapshot is None else self.snapshot.step

    @property
    def choice(self) -> str:
        """What the first run chooses between, for a user ("choosing 4 experts or one network"),
        or "" where there is one model."""
        first = self.compression.rounds()
        return "" if len(first) < 2 else "choosing " + " or ".join(experts_text(c.experts) for c in first)

    def request_stop(self) -> None:
        self.stop_requested = True

    def run(
        self, minutes: float | None = None, steps: int | None = None
    ) -> Generator[Progress | Preview | Stage | Decoded, None, Result]:
        """Train (the config's budget, or the one given to continue), then encode and decode. The
        stop request is cleared here, when the run is asked for, not when a worker first advances
        the generator: a Stop pressed in between still stops it."""
        self.stop_requested = False
        return self._run(minutes, steps)

    def _run(
        self, minutes: float | None, steps: int | None
    ) -> Generator[Progress | Preview | Stage | Decoded, None, Result]:
        last_progress = last_preview = 0.0
        progress = said = None
        stopped = False  # a Stop during training (one later, while encoding, changes nothing)

        def should_stop() -> bool:  # also asked where training yields nothing (a trial's measures)
            nonlocal stopped
            stopped = stopped or self.stop_requested
            return stopped

        run = self.compression.run(minutes=minutes, steps=steps, should_stop=should_stop)
        try:
            for progress in run:
                self.snapshot = progress
                now = time.monotonic()
                if now - last_progress >= PROGRESS_EVERY:
                    last_progress = now
                    said = progress
                    yield progress
                if should_stop():
                    break
                if self.view is not None and now - last_preview >= self.preview_every and progress.stage != "router":
                    yield self.preview(*self.view)
                    last_preview = time.monotonic()
        finally:
            run.close()
        if progress is not None and progress is not said:  # the last step, unless just said
            yield progress
        if self.view is not None and progress is not None and progress.stage != "router":
            yield self.preview(*self.view)  # the model as it stands, on screen before the file is made
        yield Stage(ENCODING)
        made = self.compression.encode()
        moec = moecfile.from_bytes(made.data)
        recon = reconstruct(moec)
        decoded_file = decoded(self.volume, self.orientation, recon)
        yield decoded_file
        roi = self.compression.roi
        self.result = measured(self.volume, made.data, moec, decoded_file, recon, made.steps, stopped, roi, made.notes)
        return self.result

    def preview(self, axis: int, index: int) -> Preview:
        """Decode the displayed slice with the model as it is now (no full decode)."""
        o = self.orientation
        shape = self.volume.shape
        if o is None:
            selection = tuple(index if a == axis else slice(None) for a in range(len(shape)))
        else:
            selection = o.file_selection(axis, index)
        values, labels, confidence = render(self.fitter.model, shape, *self.volume.value_range, selection)
        original = self.volume.data[tuple(slice(s, s + 1) if isinstance(s, int) else s for s in selection)]

        def shown(slab: np.ndarray) -> np.ndarray:
            return np.take(slab, 0, axis=axis) if o is None else o.slab_to_display(slab, axis)

        values = shown(values)
        error = values - shown(original)
        return Preview(
            self.fitter.steps_run, axis, index, values, shown(labels), shown(confidence), error, error_limit(error)
        )


@dataclass(frozen=True, eq=False)
class FileLayers:
    """A .moec file opened without its original: its own layers (lazy), to add as they are."""

    layers: list[LayerData]


def load(
    volume: Volume | None, orientation: Orientation | None, data: bytes, name: str, shape: tuple[int, ...] | None = None
) -> Result | FileLayers:
    """Decode a .moec file for the plugin: a Result measured against `volume` when an open volume
    has its shape (and no other grid is asked for), else the file's own layers (reconstruction,
    experts, confidence), lazy, on its grid or on `shape`."""
    moec = moecfile.from_bytes(data, name)
    if volume is not None and volume.shape == moec.meta.shape and shape in (None, moec.meta.shape):
        steps = moec.meta.train.get("steps")
        return finish(volume, orientation, data, steps if isinstance(steps, int) else 0, stopped=False, moec=moec)
    lazy, labels, confidence, _ = lazy_decode(moec, shape)
    return FileLayers(file_layers(lazy, labels, confidence, data, moec.meta, file_stem(name)))
