"""The MoEC dock widget: compress the selected volume, watch it train, compare and inspect.

The widget is wiring. The science (training, encoding, decoding, measuring) is `codec`'s, driven
through `job.TrainingJob` in a napari worker; reading the volume out of its layer happens there too.
The GUI thread only checks what a click asks for, assigns layer data and contrast limits, and adds
the derived layers one per turn of the event loop, so no click holds the viewer. What the job says
goes through `activity.JobActivity`, the layout through `comparison.Comparison`, the derived
layers' names and looks through `derived.DerivedLayers`.
"""

from __future__ import annotations

import functools
import importlib
import os
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from codec import settings as choices
from codec.errors import MoecError
from codec.eval import db_text
from codec.fit.train import Progress
from codec.format import moecfile
from codec.format.header import read_meta
from codec.io.files import refuse_overwrite
from codec.io.resample import spatially_scaled
from codec.io.volume import Volume

from .activity import JobActivity
from .appearance import CT_WINDOWS, is_ct, value_unit, window_limits
from .comparison import FLIP_KEY, Comparison
from .derived import DerivedLayers
from .form import SettingsForm, spin
from .job import PREPARING, Decoded, FileLayers, Preview, Result, Stage, TrainingJob, load
from .layer_meta import DERIVED, LayerMeta, Role, role_of
from .layers import file_stem, layer_orientation, lock_read_only_layers, transforms_of, volume_from, volume_of_layer
from .napari_compat import add_layer
from .orientation import Orientation
from .progressive import follow_progressive_layers
from .results import ResultsPanel


def _warm_up_imports() -> None:
    """napari's first Labels layer imports pandas (about 0.6 s): imported here, on a thread, while
    the user sets up, it is not a stall of the viewer when the first result's layers appear."""
    threading.Thread(target=importlib.import_module, args=("pandas",), daemon=True).start()


#: torch's thread count when the plugin was loaded, given back when a job ends.
_TORCH_THREADS = torch.get_num_threads()


def training_threads() -> int:
    """Leave a core to the viewer: torch's threads compete with Qt's event loop otherwise."""
    return max(1, (os.cpu_count() or 2) - 1)


#: The Result (and Decoded) field each derived layer shows.
FIELDS = {Role.RECONSTRUCTION: "values", Role.ERROR: "error", Role.EXPERTS: "labels", Role.CONFIDENCE: "confidence"}
#: The derived layers shown on demand, and the box that shows each.
ON_DEMAND = ((Role.ERROR, "Error"), (Role.EXPERTS, "Experts"), (Role.CONFIDENCE, "Confidence"))


@dataclass(frozen=True, eq=False)
class Canvases:
    """Copies of the kept result's arrays, made in the worker when a Continue starts: the previews
    of the new run draw into these, so the earlier result stays whole, to be kept or shown again."""

    arrays: dict[Role, np.ndarray]


def _continued(run: Generator[Any, None, Result], previous: Result | None):
    """A Continue's work: fresh canvases for the previews (copies of `previous`, off the GUI thread),
    then the job's run."""
    if previous is not None:
        yield Canvases({role: np.array(getattr(previous, field)) for role, field in FIELDS.items()})
    return (yield from run)


def roi_in_file_order(painted: Any, orientation: Orientation | None) -> np.ndarray:
    """An ROI layer's painted voxels (any label, display order) as a mask in the file's voxel order."""
    mask = np.asarray(painted) != 0
    return mask if orientation is None else orientation.to_file(mask)


@dataclass(frozen=True)
class SourceLayers:
    """What a Train click takes from the source layer and the ROI layer on the GUI thread (array
    references and records, nothing copied); the worker turns them into a Volume and a mask."""

    data: Any
    meta: LayerMeta | None
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    what: str
    roi: Any = None  # the ROI layer's painted array (display order), or None

    def read(self) -> tuple[Volume, Orientation | None, np.ndarray | None]:
        volume, orientation = volume_from(
            self.data, self.meta, scale=self.scale, translate=self.translate, what=self.what
        )
        return volume, orientation, None if self.roi is None else roi_in_file_order(self.roi, orientation)


def _training(
    taken: SourceLayers, make_job: Callable[[Volume, Orientation | None, np.ndarray | None], TrainingJob]
) -> Generator[Any, None, Result]:
    """A Train click's work in the worker: read the volume, make the job, hand it to the GUI (which
    may then ask it to stop), train. The run is asked for before the job is handed over, so a Stop
    that reaches the job is never cleared by the run's start."""
    yield Stage(PREPARING)
    volume, orientation, roi = taken.read()
    job = make_job(volume, orientation, roi)
    run = job.run()
    yield job
    return (yield from run)


def _loading(taken: SourceLayers | None, data: bytes, name: str, shape: tuple[int, ...] | None) -> Result | FileLayers:
    """A Load's work in the worker: read the open volume (when the file is measured against it),
    then decode the file (job.load)."""
    volume, orientation, _ = taken.read() if taken is not None else (None, None, None)
    return load(volume, orientation, data, name, shape)


def _file_shape(layer: Any) -> tuple[int, ...]:
    """A layer's shape in its file's voxel order (as displayed, for a layer the plugin did not open)."""
    meta = LayerMeta.of(layer)
    if meta is not None and meta.has_file_order and meta.orientation is not None:
        return tuple(meta.orientation.file_shape)
    return tuple(layer.data.shape)


def _better(new: Result, old: Result) -> bool:
    """Whether the new file is at least as good as the old, by PSNR of the decoded file (a NaN never is)."""
    return bool(new.quality.psnr >= old.quality.psnr)


class MoecWidget(QWidget):
    """The dock widget's wiring: a settings form (form.SettingsForm) and a results panel
    (results.ResultsPanel) around the training job, the derived layers beside the source volume
    laid out by a Comparison, and .moec files saved and loaded. One job at a time; its worker
    reports back on the GUI thread."""

    def __init__(self, napari_viewer):
        super().__init__()
        _warm_up_imports()
        self.viewer = napari_viewer
        self.job: TrainingJob | None = None
        self.worker = None
        self.result: Result | None = None  # what is on screen and what Save .moec writes
        #: After a Continue, the file not kept (the earlier one, or the new one when it was worse):
        #: "Use the other result" swaps it with `result`.
        self.other: Result | None = None
        self._previous: Result | None = None  # the result a running Continue must beat
        self._source_lost: str | None = None  # the source layer's name, removed while training
        self._stop_pending = False  # Stop pressed while the job was being prepared
        self._failure: str | None = None  # the running worker's error, said again when it ends
        self._range: tuple[Any, tuple[float, float]] | None = None  # (layer, its value range)
        self.source = None  # the Image layer being compressed
        self.derived: dict[Role, Any] = {}  # role -> layer
        self.looks: DerivedLayers | None = None  # how the derived layers are named and drawn
        #: The steps of laying out a result not taken yet, one per turn of the event loop.
        self._to_add: list[Callable[[], None]] = []
        self._linking = False
        self._links: list[tuple[Any, Callable[..., None]]] = []  # the contrast link's (layer, handler)
        #: What the running worker does: "train" (Train or Continue) or "load"; None when idle.
        self._work: str | None = None
        self._build()
        self.activity = JobActivity(self.progress, self._say)
        self.comparison = Comparison(self.viewer)
        self._adder = QTimer(self)
        self._adder.setSingleShot(True)
        self._adder.setInterval(0)
        self._adder.timeout.connect(self._add_next_layer)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._refresh_layers)
        # The experts layers this widget adds are a result, not something to paint on.
        lock_read_only_layers(self.viewer)
        follow_progressive_layers(self.viewer)  # a loaded file's layers refresh as their voxels decode
        self.viewer.layers.events.inserted.connect(self._on_inserted)
        self.viewer.layers.events.removed.connect(self._on_removed)
        self.viewer.layers.events.moved.connect(self._refresh_layers)
        self.viewer.dims.events.current_step.connect(self._on_dims)
        # The camera stays napari's default: the layers' display order (orientation.py, LPI) is what
        # makes the views radiological, so turning the camera here would mirror them again.
        self._refresh_layers()
        self._set_busy(False)

    # --- construction ---------------------------------------------------------------------------
    def _build(self) -> None:
        # Everything sits in a scroll area: a dock is often shorter than the metrics and the table.
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        # Never sideways: the content follows the dock's width (long texts wrap, boxes shrink).
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        outer.addWidget(scroll)
        content = QWidget()
        scroll.setWidget(content)
        layout = QVBoxLayout(content)
        self.form = SettingsForm()
        self.form.layer_box.currentIndexChanged.connect(self._on_layer_chosen)
        layout.addWidget(self.form)

        buttons = QHBoxLayout()
        self.train_button = QPushButton("Train")
        self.stop_button = QPushButton("Stop")
        self.continue_button = QPushButton("Continue")
        self.train_button.setToolTip("Train a new model on the selected volume")
        self.stop_button.setToolTip(
            "Stop at the next step: the model as it stands is shown at once, then encoded and measured"
        )
        self.continue_button.setToolTip(
            "Train the latest model further for the time budget; the earlier file stays unless the new one is better"
        )
        self.train_button.clicked.connect(self.train)
        self.stop_button.clicked.connect(self.stop)
        self.continue_button.clicked.connect(self.continue_training)
        for b in (self.train_button, self.stop_button, self.continue_button):
            buttons.addWidget(b)
        layout.addLayout(buttons)
        self.swap_button = QPushButton("Use the other result")
        self.swap_button.setToolTip(
            "Show, and keep for Save .moec, the other file of the last Continue (the earlier one or the new one)"
        )
        self.swap_button.clicked.connect(self.use_other_result)
        layout.addWidget(self.swap_button)
        self.progress = QProgressBar()
        self.progress.setToolTip("The share of the training budget spent; moving stripes: a stage without a measure")
        self.status = QLabel("Choose a volume and press Train.")
        self.status.setWordWrap(True)
        self.status.setToolTip("What the job is doing, and the last message")
        layout.addWidget(self.progress)
        layout.addWidget(self.status)

        view = QHBoxLayout()
        self.show_boxes: dict[Role, QCheckBox] = {}
        for role, title in ON_DEMAND:
            box = QCheckBox(title)
            box.setToolTip(
                "Show, in a view of its own: "
                + {
                    Role.ERROR: "the error map (MoEC − original, in the volume's units)",
                    Role.EXPERTS: "the expert each voxel went to (the learned partition)",
                    Role.CONFIDENCE: "the router's confidence in its choice (0 to 1)",
                }[role]
            )
            box.toggled.connect(lambda on, r=role: self.comparison.show_role(r, on))
            view.addWidget(box)
            self.show_boxes[role] = box
        layout.addLayout(view)
        layout_buttons = QHBoxLayout()
        self.grid_button = QPushButton("Side by side")
        self.grid_button.setToolTip("The original and the reconstruction side by side (and what Show adds)")
        self.grid_button.clicked.connect(lambda: self.comparison.side_by_side())
        key = FLIP_KEY.replace("-", "+")
        self.flip_button = QPushButton(f"Flip ({key})")
        self.flip_button.setToolTip(f"The original, then the reconstruction, alone in the same place: {key} flips")
        self.flip_button.clicked.connect(lambda: self.comparison.flip())
        layout_buttons.addWidget(self.grid_button)
        layout_buttons.addWidget(self.flip_button)
        layout.addLayout(layout_buttons)

        files = QHBoxLayout()
        self.save_button = QPushButton("Save .moec…")
        self.load_button = QPushButton("Load .moec…")
        self.save_button.setToolTip("Write the file on screen (the figures below) as a .moec file")
        self.load_button.setToolTip(
            "Decode a .moec file: beside the selected volume and measured against it when shapes match, else alone"
        )
        self.save_button.clicked.connect(self._save_dialog)
        self.load_button.clicked.connect(self._load_dialog)
        files.addWidget(self.save_button)
        files.addWidget(self.load_button)
        layout.addLayout(files)
        scale_row = QHBoxLayout()
        self.decode_scale = spin(
            QDoubleSpinBox(),
            "decode_scale",
            1.0,
            "Grid a loaded file is decoded on, as a factor per axis (2: twice the voxels along "
            "each axis, e.g. thin slices; the network is continuous). 1: the file's own grid, "
            "measured against an open volume of its shape",
            decimals=2,
            step=0.25,
        )
        self.decode_scale.setSuffix(" ×")
        scale_label = QLabel("Load at")
        scale_label.setToolTip(self.decode_scale.toolTip())
        scale_row.addWidget(scale_label)
        scale_row.addWidget(self.decode_scale)
        scale_row.addStretch(1)
        layout.addLayout(scale_row)
        self.inputs = [*self.form.inputs, self.decode_scale]

        self.results = ResultsPanel()
        self.results.window_chosen.connect(self.apply_window)
        self.results.worst_requested.connect(self.go_to_worst_slice)
        self.results.expert_chosen.connect(self._show_expert)
        layout.addWidget(self.results)
        layout.addStretch(1)

    # --- layer choice -----------------------------------------------------------------------------
    def _image_layers(self) -> list[Image]:
        return [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, Image) and role_of(layer) is Role.ORIGINAL and layer.data.ndim in (3, 4)
        ]

    def _refresh_layers(self, event=None) -> None:
        self.form.set_layers(self.form.layer_box, self._image_layers())
        self.form.set_layers(self.form.roi_box, self._roi_layers(), none=True)
        self._on_layer_chosen()

    def _on_inserted(self, event) -> None:
        event.value.events.name.connect(self._refresh_layers)  # renames update every box
        self._refresh_layers()

    def _on_removed(self, event) -> None:
        layer = event.value
        layer.events.name.disconnect(self._refresh_layers)
        for role, derived in list(self.derived.items()):
            if derived is layer:  # the user removed it: the comparison goes on without it
                del self.derived[role]
                self.comparison.forget(layer)
        if not self.derived and self.source is not None and self._work is None:
            self.comparison.end()
        if layer is self.source and self.worker is not None and self._work == "train":
            self._source_lost = layer.name
            self._request_stop()
            self._say(f"The source layer {layer.name!r} was removed: training stops, keeping the model so far…")
        self._refresh_layers()

    def _roi_layers(self) -> list[Labels]:
        """Labels layers a user painted or opened (not the expert assignments this widget makes)."""
        return [
            layer for layer in self.viewer.layers if isinstance(layer, Labels) and role_of(layer) is not Role.EXPERTS
        ]

    def _roi_data(self, layer: Image) -> Any:
        """The chosen ROI layer's painted array (display order; None: no ROI), checked to be on
        `layer`'s grid; MoecError saying why not. Nothing is copied here."""
        name = self.form.roi_box.currentText()
        if name in ("", "none"):
            return None
        roi = self.form.chosen(self.form.roi_box)
        if roi is None or roi not in self.viewer.layers:
            raise MoecError(
                f"the ROI layer {name!r} is no longer open: open or paint it again, or choose another ROI or none"
            )
        if tuple(roi.data.shape) != tuple(layer.data.shape):
            raise MoecError(
                f"the ROI layer {name!r} is {' x '.join(map(str, roi.data.shape))} voxels, the volume "
                f"{' x '.join(map(str, layer.data.shape))}: paint it on a layer of the volume's shape"
            )
        return roi.data

    def roi_mask(self, layer: Image) -> np.ndarray | None:
        """The chosen ROI's painted voxels in the file order of `layer` (None: no ROI)."""
        painted = self._roi_data(layer)
        return None if painted is None else roi_in_file_order(painted, layer_orientation(layer))

    def selected_layer(self) -> Image | None:
        layer = self.form.chosen(self.form.layer_box)
        return layer if layer is not None and layer in self.viewer.layers else None

    def _on_layer_chosen(self, *_) -> None:
        layer = self.selected_layer()
        if layer is None:
            self.results.windows.setVisible(False)
        else:
            self.results.windows.setVisible(is_ct(*self._value_range(layer)))
        self._update_buttons()

    # --- messages ---------------------------------------------------------------------------------
    def _say(self, text: str) -> None:
        """A message in the status line and the viewer's status bar."""
        self.status.setText(text)
        self.viewer.status = f"MoEC: {text}"

    def _error(self, text: str) -> None:
        """An error: a notification, repeated in the status line and the viewer's status bar (a toast is clipped)."""
        show_error(f"MoEC: {text}")
        self._say(f"Error: {text}")

    # --- training -----------------------------------------------------------------------------------
    def _source_layers(self, layer: Image, *, roi: bool = True) -> SourceLayers:
        """What training (or a Load, `roi` False) reads from the layers, checked in words (RGB, one
        slice, a missing or misfit ROI) from shapes alone: the reading itself is the worker's."""
        what = f"layer {layer.name!r}"
        if getattr(layer, "rgb", False):
            raise MoecError(f"{what} is an RGB image; MoEC compresses grey-level volumes")
        meta = LayerMeta.of(layer)
        if meta is None or not meta.has_file_order:
            shape = tuple(layer.data.shape)
            if len(shape) < 3 or min(shape[:3]) < 2:
                volume_of_layer(layer)  # refuses it, in words, from its shape
        return SourceLayers(
            layer.data,
            meta,
            tuple(layer.scale),
            tuple(layer.translate),
            what,
            roi=self._roi_data(layer) if roi else None,
        )

    def train(self) -> None:
        if self.worker is not None:
            return
        layer = self.selected_layer()
        if layer is None:
            self._error("open a 3D or 4D image layer first")
            return
        try:
            taken = self._source_layers(layer)
        except (MoecError, ValueError) as exc:
            self._error(str(exc))
            return
        settings, config = self.form.settings(), self.form.train_config()

        def make_job(volume: Volume, orientation: Orientation | None, roi: np.ndarray | None) -> TrainingJob:
            return TrainingJob(volume, orientation, settings, config, roi=roi)

        self.job, self.source, self.result, self.other, self._previous = None, layer, None, None, None
        self._source_lost, self._stop_pending, self.looks = None, False, None
        self._remove_derived()
        self.results.clear()
        self.activity.start(PREPARING)
        self._start(_training(taken, make_job), "train")

    def continue_training(self) -> None:
        """Train further; the result on screen stays (and is what Save writes) unless the new file is better."""
        if self.job is None or self.worker is not None:
            return
        if self.source is None or self.source not in self.viewer.layers:
            self._error("the source volume is no longer open: open it and press Train")
            return
        minutes, steps = self.form.budget()
        self._previous, self.other = self.result, None
        self._stop_pending = False
        if any(role not in self.derived for role in DERIVED):  # the user removed some: shown again
            self._make_derived_layers(self.source, self.result.ratio if self.result else self.form.ratio.value())
        self.activity.start("training")
        self._start(_continued(self.job.run(minutes=minutes, steps=steps), self._previous), "train")

    def stop(self) -> None:
        if self.worker is None or self._work != "train":
            return
        self._request_stop()
        self._say(self.status.text() + " — stopping: the model as it stands shows at once, then it is encoded…")

    def _request_stop(self) -> None:
        if self.job is not None:
            self.job.request_stop()
        else:  # still preparing: the job stops as soon as it exists
            self._stop_pending = True

    def use_other_result(self) -> None:
        """Swap the result on screen (and saved) with the other file of the last Continue."""
        if self.other is None or self.worker is not None:
            return
        self.result, self.other = self.other, self.result
        self._show_result(self.result)
        self._say(
            f"Now showing the {self._which(self.result)} file: {self._psnr(self.result)} "
            f"(the {self._which(self.other)} one: {self._psnr(self.other)}). "
            "Use the other result switches back."
        )

    def _which(self, r: Result | None) -> str:
        """'earlier' or 'new', of the two files of the last Continue."""
        return "new" if r is not None and self.job is not None and r is self.job.result else "earlier"

    @staticmethod
    def _psnr(r: Result | None) -> str:
        return "–" if r is None else db_text(r.quality.psnr)

    def _start(self, generator, work: str) -> None:
        # torch's thread count is the process's: training leaves a core to the viewer, and
        # _on_finished gives it back (a decode's last bits depend on it).
        torch.set_num_threads(training_threads())
        self._on_dims()
        # Errors are the widget's to show (_on_error), in words, not napari's traceback dialog.
        worker = create_worker(lambda: (yield from generator), _ignore_errors=True)
        worker.yielded.connect(self._on_yielded)
        self._run(worker, work)

    def _run(self, worker, work: str) -> None:
        """Connect a worker's outcome to the widget and start it; inputs stay disabled until it ends."""
        worker.returned.connect(self._on_result)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker, self._work = worker, work
        self._set_busy(True)
        worker.start()

    def _on_yielded(self, item) -> None:
        if isinstance(item, Progress):
            self.activity.training(item, self.job.choice if self.job is not None else "")
            self.results.curves.add(item.step, item.loss, item.psnr, run=item.trying)
        elif isinstance(item, Preview):
            self._show_preview(item)
        elif isinstance(item, Stage):
            self.activity.stage(item.text)
        elif isinstance(item, TrainingJob):  # the volume is read and the ratio can be met
            self.job = item
            if self.source is not None and self.source in self.viewer.layers:
                self._make_derived_layers(self.source, item.compression.plan.ratio)
            self._on_dims()
            if self._stop_pending or self._source_lost is not None:
                item.request_stop()
        elif isinstance(item, Decoded):
            self._show_arrays(item)
            self._say("Encoding and measuring: the decoded file is on screen; measuring it…")
        elif isinstance(item, Canvases):
            for role, array in item.arrays.items():
                layer = self.derived.get(role)
                if layer is not None and layer in self.viewer.layers:
                    layer.data = array

    def _on_result(self, result) -> None:
        self.activity.finish()
        if isinstance(result, Result):
            previous, self._previous = self._previous, None
            if previous is None:
                self.result, self.other = result, None
                self._show_result(result)
            elif _better(result, previous):
                self.result, self.other = result, previous
                self._show_result(result)
                self.status.setText(
                    self.status.text() + f" Better than the earlier file: {self._psnr(result)} against "
                    f"{self._psnr(previous)}; Use the other result goes back to it."
                )
            else:
                self.result, self.other = previous, result
                self._show_result(previous)
                stopped = ", stopped" if result.stopped else ""
                self.status.setText(
                    f"Kept the earlier file: {self._psnr(previous)} against {self._psnr(result)} for the "
                    f"new one ({result.steps} steps{stopped}); Use the other result switches to it."
                )
            if self._source_lost is not None:
                self.status.setText(
                    f"Training stopped: the source layer {self._source_lost!r} was removed. " + self.status.text()
                )
            self.viewer.status = f"MoEC: {self.status.text()}"
        elif isinstance(result, FileLayers):  # a loaded file on its own: its lazy layers, decoded as shown
            for layer_data in result.layers:
                add_layer(self.viewer, layer_data)
            self._say(
                "The file's layers are shown alone (decoded as you scroll); open a volume of its shape "
                "and load at 1 × to measure it"
            )
            show_info(f"MoEC: {self.status.text()}")

    def _on_error(self, exc) -> None:
        self.activity.finish(done=False)
        previous, self._previous = self._previous, None
        if previous is not None:  # a Continue failed: the earlier file is still the one
            self.result = previous
            self._show_result(previous)
        elif self.result is None:  # nothing trained: the empty layers made for it go, and the job
            self._remove_derived()
            self.job = None
        self._failure = str(exc)
        self._error(self._failure)

    def _on_finished(self) -> None:
        self.worker, self._work = None, None
        torch.set_num_threads(_TORCH_THREADS)
        self._set_busy(False)
        if self._failure is not None:  # the last word, whatever the worker said before it failed
            self._say(f"Error: {self._failure}")
            self._failure = None

    def _set_busy(self, busy: bool) -> None:
        for widget in self.inputs:
            widget.setEnabled(not busy)
        self.stop_button.setEnabled(busy and self._work == "train")
        self._update_buttons()

    def _update_buttons(self) -> None:
        busy = self.worker is not None
        self.train_button.setEnabled(not busy and self.selected_layer() is not None)
        self.continue_button.setEnabled(not busy and self.job is not None and self._source_lost is None)
        self.swap_button.setEnabled(not busy and self.other is not None)
        self.swap_button.setVisible(self.other is not None)
        self.save_button.setEnabled(not busy and self.result is not None)
        self.load_button.setEnabled(not busy)
        shown = bool(self.derived)
        # One network draws every voxel: it has no partition (nor a router's confidence) to show.
        partition = self.result is None or self.result.experts_count > 1
        for role, box in self.show_boxes.items():
            box.setEnabled(shown and (role is Role.ERROR or partition))
        self.grid_button.setEnabled(shown)
        self.flip_button.setEnabled(shown)
        self.results.set_measured(self.result is not None)

    def _on_dims(self, event=None) -> None:
        """Tell the training job which slice is on screen, in the source layer's data order."""
        if self.job is None or self.source is None:
            return
        axis = self.viewer.dims.not_displayed[-1] if self.viewer.dims.not_displayed else None
        if axis is None:  # a 3D view: preview the middle slice
            self.job.view = (0, self.source.data.shape[0] // 2)
            return
        offset = self.viewer.dims.ndim - self.source.ndim
        layer_axis = axis - offset
        if layer_axis < 0:
            return
        index = int(round(self.source.world_to_data(self.viewer.dims.point)[layer_axis]))
        self.job.view = (layer_axis, int(np.clip(index, 0, self.source.data.shape[layer_axis] - 1)))

    # --- layers ---------------------------------------------------------------------------------------
    def _remove_derived(self) -> None:
        self._adder.stop()
        self._to_add = []
        self._unlink_contrast()
        self.comparison.end()
        layers, self.derived = list(self.derived.values()), {}  # removing them calls _on_removed
        for layer in layers:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self._update_buttons()

    def _make_derived_layers(self, source: Image, ratio: float, moec_bytes: bytes | None = None) -> None:
        """Reconstruction, error, experts and gate confidence beside the source, with its transforms,
        added one per turn of the event loop (each takes napari a good part of 100 ms)."""
        self._remove_derived()
        lo, hi = (float(v) for v in source.contrast_limits)
        self.looks = DerivedLayers(
            stem=source.name,
            ratio=ratio,
            original=LayerMeta.of(source) or LayerMeta(),
            placement=transforms_of(source),
            experts=int(choices.RANGES["experts"][1]),  # one colour per expert any model may have
            limits=(lo, hi),
            unit=value_unit(*self._value_range(source)),
            moec_bytes=moec_bytes,
        )
        self._to_add = [
            functools.partial(self.comparison.begin, source),
            *(functools.partial(self._add_derived, *each) for each in self.looks.empty(tuple(source.data.shape))),
            self._layers_added,
        ]
        for box in self.show_boxes.values():
            box.blockSignals(True)
            box.setChecked(False)
            box.blockSignals(False)
        self._adder.start()

    def _value_range(self, layer: Image) -> tuple[float, float]:
        """`layer`'s range of values (whether it is CT, its unit): a whole volume's, measured once
        per chosen layer."""
        if self._range is None or self._range[0] is not layer:
            self._range = (layer, (float(np.min(layer.data)), float(np.max(layer.data))))
        return self._range[1]

    def _add_next_layer(self) -> None:
        if not self._to_add or self.source is None or self.source not in self.viewer.layers:
            self._to_add = []
            return
        self._to_add.pop(0)()
        if self._to_add:
            self._adder.start()

    def _add_derived(self, role: Role, layer_data: Any) -> None:
        layer = add_layer(self.viewer, layer_data)
        self.derived[role] = layer
        self.comparison.add(role, layer)
        if role is Role.RECONSTRUCTION:
            self._link_contrast(self.source, layer)
        box = self.show_boxes.get(role)
        if box is not None:
            layer.events.visible.connect(lambda event, b=box, shown=layer: self._sync_box(b, shown))

    def _flush_layers(self) -> None:
        """Take the steps left at once: a result has come before the last turns of the event loop."""
        self._adder.stop()
        while self._to_add:
            self._add_next_layer()

    def _layers_added(self) -> None:
        self.viewer.layers.selection.active = self.source  # the layer controls show the original's window
        self.comparison.reset_soon()
        self._update_buttons()

    @staticmethod
    def _sync_box(box: QCheckBox, layer: Any) -> None:
        """The Show box follows the layer's eye in the layer list (and a flip)."""
        if box.isChecked() != layer.visible:
            box.blockSignals(True)
            box.setChecked(layer.visible)
            box.blockSignals(False)

    def _link_contrast(self, a: Image, b: Image) -> None:
        """Changing the window on the original or the reconstruction changes both. The handlers are
        kept, to be disconnected with the layers: an emitter holds a closure, and with it the
        reconstruction's whole volume, for as long as it is connected."""

        def follow(src, dst):
            def handler(event=None):
                if self._linking or dst not in self.viewer.layers:
                    return
                self._linking = True
                try:
                    dst.contrast_limits = src.contrast_limits
                finally:
                    self._linking = False

            return handler

        self._links = [(a, follow(a, b)), (b, follow(b, a))]
        for layer, handler in self._links:
            layer.events.contrast_limits.connect(handler)

    def _unlink_contrast(self) -> None:
        for layer, handler in self._links:
            layer.events.contrast_limits.disconnect(handler)
        self._links = []

    def _show_preview(self, p: Preview) -> None:
        if self.source is None:
            return
        index: Any = [slice(None)] * self.source.ndim
        index[p.axis] = p.index
        index = tuple(index)
        for role, values in (
            (Role.RECONSTRUCTION, p.values),
            (Role.EXPERTS, p.labels),
            (Role.CONFIDENCE, p.confidence),
            (Role.ERROR, p.error),
        ):
            layer = self.derived.get(role)
            if layer is None or layer not in self.viewer.layers:
                continue
            layer.data[index] = values
            layer.refresh()
        self._set_error_limits(p.error_limit)

    def _set_error_limits(self, limit: float) -> None:
        layer = self.derived.get(Role.ERROR)
        if layer is not None and layer in self.viewer.layers:
            layer.contrast_limits = (-limit, limit)

    def _show_arrays(self, shown: Decoded | Result) -> None:
        """A decoded file's voxels in the derived layers. The layers take the worker's arrays (no
        copy: copying four volumes here stalls the event loop); a Continue's previews draw into
        copies of them (Canvases), so the earlier result stays whole."""
        self._flush_layers()
        for role, field in FIELDS.items():
            layer = self.derived.get(role)
            if layer is not None and layer in self.viewer.layers:
                layer.data = getattr(shown, field)
        self._set_error_limits(shown.error_limit)

    def _show_result(self, r: Result) -> None:
        self._show_arrays(r)
        if self.looks is not None:
            self.looks = replace(self.looks, ratio=r.ratio, moec_bytes=r.data)
            for role in DERIVED:
                layer = self.derived.get(role)
                if layer is not None and layer in self.viewer.layers:
                    layer.name = self.looks.name(role)
                    layer.metadata = {**layer.metadata, **self.looks.record(role).metadata()}
        if r.experts_count == 1:  # no partition to show (_update_buttons disables its boxes)
            for role in (Role.EXPERTS, Role.CONFIDENCE):
                self.comparison.show_role(role, False)
        experts = self.derived.get(Role.EXPERTS)
        self.results.show_result(
            r, experts.get_color if experts is not None and experts in self.viewer.layers else None
        )
        q = r.quality
        self._say(
            f"Done: {r.ratio:.1f}x, PSNR {db_text(q.psnr)}, SSIM {q.ssim:.4f}"
            + (" (stopped; Continue trains further)" if r.stopped else "")
            + "".join(f" Note: {note}." for note in r.notes)
        )
        self._update_buttons()

    def _show_expert(self, expert: int | None) -> None:
        """Only this expert's region in the experts layer (None: every region); the layer is shown."""
        layer = self.derived.get(Role.EXPERTS)
        if layer is None or layer not in self.viewer.layers:
            return
        if expert is not None:
            layer.selected_label = expert + 1
            self.comparison.show_role(Role.EXPERTS, True)
        layer.show_selected_label = expert is not None

    def apply_window(self, name: str) -> None:
        """A CT window preset on the original (the reconstruction follows through the link)."""
        limits = window_limits(*CT_WINDOWS[name])
        for layer in (self.selected_layer(), self.derived.get(Role.RECONSTRUCTION)):
            if layer is not None and layer in self.viewer.layers:
                layer.contrast_limits = limits

    def go_to_worst_slice(self) -> None:
        if self.result is None or self.source is None:
            return
        k = self.result.quality.worst_slice
        orientation = layer_orientation(self.source)
        axis, index = orientation.display_position(2, k) if orientation is not None else (2, k)
        offset = self.viewer.dims.ndim - self.source.ndim
        world_axis = axis + offset
        position = [s // 2 for s in self.source.data.shape]
        position[axis] = index
        world = self.source.data_to_world(position)
        if world_axis in self.viewer.dims.displayed:  # make the slice axis the slider's
            self.viewer.dims.order = (world_axis,) + tuple(a for a in range(self.viewer.dims.ndim) if a != world_axis)
        self.viewer.dims.set_point(world_axis, world[axis])

    # --- files ------------------------------------------------------------------------------------------
    def save_moec(self, path: str | Path) -> None:
        if self.result is None:
            raise MoecError("nothing to save yet: train or load a model first")
        meta = LayerMeta.of(self.source) if self.source is not None else None
        refuse_overwrite(path, meta.source if meta is not None else None)
        moecfile.write(path, self.result.data)
        show_info(f"MoEC: wrote {path} ({len(self.result.data):,} bytes, {self.result.ratio:.1f}x)")

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save MoEC file", "", "MoEC files (*.moec)")
        if path:
            if not path.lower().endswith(".moec"):
                path += ".moec"
            try:
                self.save_moec(path)
            except (MoecError, OSError) as exc:
                self._error(str(exc))

    def load_moec(self, path: str | Path) -> None:
        """Decode a .moec file in the background; beside the selected volume when shapes match."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            self._error(f"cannot read {path}: {exc}")
            return
        try:
            meta = read_meta(data, str(path))  # the header only: cheap, and refuses bad files early
            scale = self.decode_scale.value()
            shape = None if scale == 1.0 else spatially_scaled(meta.shape, scale)
        except MoecError as exc:
            self._error(str(exc))
            return
        layer = self.selected_layer()
        taken = None
        if layer is not None and _file_shape(layer) == tuple(meta.shape) and shape in (None, tuple(meta.shape)):
            try:
                taken = self._source_layers(layer, roi=False)  # read in the worker, measured against the file
            except (MoecError, ValueError):
                taken = None
        if taken is not None and layer is not None:
            self.source, self.job, self.other, self._previous, self._source_lost = layer, None, None, None, None
            self.result = None
            self.results.clear()
            self._make_derived_layers(layer, meta.raw_bytes / len(data), data)
        self.activity.start(f"decoding {file_stem(path)}")
        self._run(create_worker(_loading, taken, data, str(path), shape, _ignore_errors=True), "load")

    def _load_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load MoEC file", "", "MoEC files (*.moec)")
        if path:
            self.load_moec(path)
