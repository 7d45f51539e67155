"""The MoEC dock widget: compress the selected volume, watch it train, compare and inspect.

The widget owns no science: training, encoding, decoding and measuring are `codec`'s, driven through
`job.TrainingJob` in a napari `thread_worker`. The GUI thread only assigns layer data and contrast
limits, so the viewer stays responsive while torch trains on the other core.
"""

from __future__ import annotations

import math
import os
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
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

from codec.errors import MoecError
from codec.eval import db_text
from codec.fit.train import Progress
from codec.format import moecfile
from codec.format.header import read_meta
from codec.io.files import refuse_overwrite
from codec.io.resample import spatially_scaled

from .form import SettingsForm, spin
from .job import Preview, Result, TrainingJob, load
from .layers import (
    CT_WINDOWS,
    ERROR_COLORMAP,
    META,
    expert_colormap,
    is_ct,
    layer_orientation,
    lock_read_only_layers,
    lossy_name,
    moec_of,
    transforms_of,
    volume_of_layer,
    window_limits,
)
from .results import ResultsPanel


def training_threads() -> int:
    """Leave a core to the viewer: torch's threads compete with Qt's event loop otherwise."""
    return max(1, (os.cpu_count() or 2) - 1)


def _grid(viewer):
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


#: The derived layers a result fills, and the Result field each takes.
ROLES = (("reconstruction", "values"), ("error", "error"), ("experts", "labels"), ("confidence", "confidence"))


@dataclass(frozen=True, eq=False)
class Canvases:
    """Copies of the kept result's arrays, made in the worker when a Continue starts: the previews
    of the new run draw into these, so the earlier result stays whole, to be kept or shown again."""

    arrays: dict[str, np.ndarray]  # role -> array


def _continued(run: Generator[Progress | Preview, None, Result], previous: Result | None):
    """A Continue's work: fresh canvases for the previews (copies of `previous`, off the GUI thread),
    then the job's run."""
    if previous is not None:
        yield Canvases({role: np.array(getattr(previous, field)) for role, field in ROLES})
    return (yield from run)


def _better(new: Result, old: Result) -> bool:
    """Whether the new file is at least as good as the old, by PSNR of the decoded file (a NaN never is)."""
    return bool(new.quality.psnr >= old.quality.psnr)


class MoecWidget(QWidget):
    """The dock widget's wiring: a settings form (form.SettingsForm) and a results panel
    (results.ResultsPanel) around the training job, the derived layers beside the source volume, and
    .moec files saved and loaded. One job at a time; its worker reports back on the GUI thread."""

    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.job: TrainingJob | None = None
        self.worker = None
        self.result: Result | None = None  # what is on screen and what Save .moec writes
        #: After a Continue, the file not kept (the earlier one, or the new one when it was worse):
        #: "Use the other result" swaps it with `result`.
        self.other: Result | None = None
        self._previous: Result | None = None  # the result a running Continue must beat
        self._source_lost: str | None = None  # the source layer's name, removed while training
        self._ct_checked: tuple[Any, bool] | None = None  # (layer, looks like CT) of the chosen volume
        self.source = None  # the Image layer being compressed
        self.derived: dict[str, Any] = {}  # role -> layer
        self._linking = False
        self._build()
        for layer in self.viewer.layers:
            layer.events.name.connect(self._refresh_layers)
        # The experts layers this widget adds are a result, not something to paint on.
        lock_read_only_layers(self.viewer)
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
        self.stop_button.setToolTip("Stop at the next step and keep the model trained so far")
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
        self.progress.setRange(0, 1000)
        self.status = QLabel("Choose a volume and press Train.")
        self.status.setWordWrap(True)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)

        files = QHBoxLayout()
        self.save_button = QPushButton("Save .moec…")
        self.load_button = QPushButton("Load .moec…")
        self.save_button.setToolTip("Write the file on screen (the figures below) as a .moec file")
        self.load_button.setToolTip(
            "Decode a .moec file: beside the selected volume and measured against it when shapes match, else alone"
        )
        self.save_button.clicked.connect(self._save_dialog)
        self.load_button.clicked.connect(self._load_dialog)
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
        files.addWidget(self.save_button)
        files.addWidget(self.load_button)
        files.addWidget(QLabel("at"))
        files.addWidget(self.decode_scale)
        layout.addLayout(files)
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
            if isinstance(layer, Image)
            and (moec_of(layer) or {}).get("role", "original") == "original"
            and layer.data.ndim in (3, 4)
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
        if layer is self.source and self.worker is not None and self.job is not None:
            self._source_lost = layer.name
            self.job.request_stop()
            self._say(f"The source layer {layer.name!r} was removed: training stops, keeping the model so far…")
        self._refresh_layers()

    def _roi_layers(self) -> list[Labels]:
        """Labels layers a user painted or opened (not the expert assignments this widget makes)."""
        return [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, Labels) and (moec_of(layer) or {}).get("role") != "experts"
        ]

    def roi_mask(self, layer: Image) -> np.ndarray | None:
        """The chosen ROI layer's painted voxels in the file order of `layer` (None: no ROI);
        MoecError when it is not on that layer's grid."""
        name = self.form.roi_box.currentText()
        if name in ("", "none"):
            return None
        roi = self.form.chosen(self.form.roi_box)
        if roi is None or roi not in self.viewer.layers:
            raise MoecError(
                f"the ROI layer {name!r} is no longer open: open or paint it again, or choose another ROI or none"
            )
        painted = np.asarray(roi.data) != 0
        if painted.shape != tuple(layer.data.shape):
            raise MoecError(
                f"the ROI layer {name!r} is {' x '.join(map(str, painted.shape))} voxels, the volume "
                f"{' x '.join(map(str, layer.data.shape))}: paint it on a layer of the volume's shape"
            )
        orientation = layer_orientation(layer)
        return painted if orientation is None else orientation.to_file(painted)

    def selected_layer(self) -> Image | None:
        layer = self.form.chosen(self.form.layer_box)
        return layer if layer is not None and layer in self.viewer.layers else None

    def _on_layer_chosen(self, *_) -> None:
        layer = self.selected_layer()
        if layer is None:
            self.results.windows.setVisible(False)
        else:
            if self._ct_checked is None or self._ct_checked[0] is not layer:  # a whole volume's range: once
                self._ct_checked = (layer, is_ct(float(np.min(layer.data)), float(np.max(layer.data))))
            self.results.windows.setVisible(self._ct_checked[1])
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
    def train(self) -> None:
        layer = self.selected_layer()
        if layer is None:
            self._error("open a 3D or 4D image layer first")
            return
        try:
            volume, orientation = volume_of_layer(layer)
            job = TrainingJob(
                volume, orientation, self.form.settings(), self.form.train_config(), roi=self.roi_mask(layer)
            )
        except (MoecError, ValueError) as exc:
            self._error(str(exc))
            return
        self.job, self.source, self.result, self.other, self._previous = job, layer, None, None, None
        self._source_lost = None
        self.results.clear()
        self._make_derived_layers(layer, job.max_experts, self.form.ratio.value())
        self._start(job.run())

    def continue_training(self) -> None:
        """Train further; the result on screen stays (and is what Save writes) unless the new file is better."""
        if self.job is None or self.worker is not None:
            return
        if self.source is None or self.source not in self.viewer.layers:
            self._error("the source volume is no longer open: open it and press Train")
            return
        minutes, steps = self.form.budget()
        self._previous, self.other = self.result, None
        self._start(_continued(self.job.run(minutes=minutes, steps=steps), self._previous))

    def stop(self) -> None:
        if self.job is not None and self.worker is not None:
            self.job.request_stop()
            self.status.setText(self.status.text() + " — stopping, keeping the model trained so far…")

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

    def _start(self, generator) -> None:
        torch.set_num_threads(training_threads())
        self._on_dims()
        worker = create_worker(lambda: (yield from generator))
        worker.yielded.connect(self._on_yielded)
        self._run(worker)

    def _run(self, worker) -> None:
        """Connect a worker's outcome to the widget and start it; inputs stay disabled until it ends."""
        worker.returned.connect(self._on_result)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._set_busy(True)
        worker.start()

    def _on_yielded(self, item) -> None:
        if isinstance(item, Progress):
            self.progress.setValue(int(1000 * item.fraction))
            psnr = "" if math.isnan(item.psnr) else f" · PSNR {item.psnr:.2f} dB"
            trying = f"trying {item.trying} · " if item.trying else ""
            self.status.setText(
                f"{trying}step {item.step} · {item.stage} · loss {item.loss:.5f}{psnr} · {item.seconds:.0f} s"
            )
            self.results.curves.add(item.step, item.loss, item.psnr)
        elif isinstance(item, Preview):
            self._show_preview(item)
        elif isinstance(item, Canvases):
            for role, array in item.arrays.items():
                layer = self.derived.get(role)
                if layer is not None and layer in self.viewer.layers:
                    layer.data = array

    def _on_result(self, result) -> None:
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
        elif isinstance(result, list):  # a loaded file on its own: its lazy layers, decoded as shown
            for data, kwargs, kind in result:
                self.viewer.add_image(data, **kwargs) if kind == "image" else self.viewer.add_labels(data, **kwargs)
            show_info(
                "MoEC: the file's layers are shown alone (decoded slab by slab as you scroll); open a "
                "volume of its shape and load at 1 × to measure it"
            )

    def _on_error(self, exc) -> None:
        previous, self._previous = self._previous, None
        if previous is not None:  # a Continue failed: the earlier file is still the one
            self.result = previous
            self._show_result(previous)
        self._error(str(exc))

    def _on_finished(self) -> None:
        self.worker = None
        self._set_busy(False)

    def _set_busy(self, busy: bool) -> None:
        for widget in self.inputs:
            widget.setEnabled(not busy)
        self.stop_button.setEnabled(busy)
        self._update_buttons()

    def _update_buttons(self) -> None:
        busy = self.worker is not None
        self.train_button.setEnabled(not busy and self.selected_layer() is not None)
        self.continue_button.setEnabled(not busy and self.job is not None and self._source_lost is None)
        self.swap_button.setEnabled(not busy and self.other is not None)
        self.swap_button.setVisible(self.other is not None)
        self.save_button.setEnabled(not busy and self.result is not None)
        self.load_button.setEnabled(not busy)
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
    def _make_derived_layers(self, source: Image, experts: int, ratio: float) -> None:
        """Reconstruction, error, experts and gate confidence beside the source, with its transforms."""
        for layer in self.derived.values():
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        shape = source.data.shape
        base = lossy_name(source.name, ratio)
        placement = transforms_of(source)
        meta = {META: {**(moec_of(source) or {}), "role": "reconstruction"}}
        recon = self.viewer.add_image(
            np.zeros(shape, np.float32),
            name=base,
            colormap="gray",
            contrast_limits=source.contrast_limits,
            metadata=meta,
            **placement,
        )
        error = self.viewer.add_image(
            np.zeros(shape, np.float32),
            name=f"{base} error",
            colormap=ERROR_COLORMAP,
            contrast_limits=(-1.0, 1.0),
            metadata={META: {"role": "error"}},
            **placement,
        )
        labels = self.viewer.add_labels(
            np.zeros(shape, np.uint8),
            name=f"{base} experts",
            colormap=expert_colormap(experts),
            metadata={META: {"role": "experts", **{k: v for k, v in (moec_of(source) or {}).items() if k != "role"}}},
            **placement,
        )
        confidence = self.viewer.add_image(
            np.zeros(shape, np.float32),
            name=f"{base} gate confidence",
            colormap="viridis",
            contrast_limits=(0.0, 1.0),
            metadata={META: {"role": "confidence"}},
            **placement,
        )
        self.derived = {"reconstruction": recon, "error": error, "experts": labels, "confidence": confidence}
        self._link_contrast(source, recon)
        grid = _grid(self.viewer)
        if hasattr(grid, "spacing"):  # napari >= 0.6: a gap, or the five views read as one image
            grid.spacing = 0.05
        grid.enabled = True
        self.viewer.layers.selection.active = source  # the layer controls show the original's window
        self.viewer.reset_view()

    def _link_contrast(self, a: Image, b: Image) -> None:
        """Changing the window on the original or the reconstruction changes both."""

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

        a.events.contrast_limits.connect(follow(a, b))
        b.events.contrast_limits.connect(follow(b, a))

    def _show_preview(self, p: Preview) -> None:
        index: Any = [slice(None)] * self.source.ndim
        index[p.axis] = p.index
        index = tuple(index)
        for role, values in (
            ("reconstruction", p.values),
            ("experts", p.labels),
            ("confidence", p.confidence),
            ("error", p.error),
        ):
            layer = self.derived.get(role)
            if layer is None or layer not in self.viewer.layers:
                continue
            layer.data[index] = values
            layer.refresh()
        self._set_error_limits(p.error_limit)

    def _set_error_limits(self, limit: float) -> None:
        layer = self.derived.get("error")
        if layer is not None:
            layer.contrast_limits = (-limit, limit)

    def _show_result(self, r: Result) -> None:
        if not self.derived or self.source is None:
            return
        name = lossy_name(self.source.name, r.ratio)
        for role, field in ROLES:
            values = getattr(r, field)
            layer = self.derived[role]
            if layer not in self.viewer.layers:
                continue
            # The layer takes the worker's array (no copy: copying four volumes here stalled the
            # event loop; docs/benchmarks.md, "Responsiveness of the viewer (`benchmarks/responsiveness.py`)").
            # Previews of a continued run then draw into it, which is what is on screen; the file's
            # bytes stay in `result.data`.
            layer.data = values
            suffix = "gate confidence" if role == "confidence" else role
            layer.name = name if role == "reconstruction" else f"{name} {suffix}"
        # One network draws every voxel: there is no partition, so its layers would be one flat colour.
        for role in ("experts", "confidence"):
            if self.derived[role] in self.viewer.layers:
                self.derived[role].visible = r.experts_count > 1
        recon_meta = self.derived["reconstruction"].metadata.setdefault(META, {})
        recon_meta.update(moec_bytes=r.data, ratio=r.ratio, role="reconstruction")
        self._set_error_limits(r.error_limit)
        self.progress.setValue(1000)
        experts = self.derived["experts"]
        self.results.show_result(r, experts.get_color if experts in self.viewer.layers else None)
        q = r.quality
        self.status.setText(
            f"Done: {r.ratio:.1f}x, PSNR {db_text(q.psnr)}, SSIM {q.ssim:.4f}"
            + (" (stopped; Continue trains further)" if r.stopped else "")
            + "".join(f" Note: {note}." for note in r.notes)
        )
        self._update_buttons()

    def _show_expert(self, expert: int | None) -> None:
        """Only this expert's region in the experts layer (None: every region)."""
        layer = self.derived.get("experts")
        if layer is None or layer not in self.viewer.layers:
            return
        if expert is not None:
            layer.selected_label = expert + 1
        layer.show_selected_label = expert is not None

    def apply_window(self, name: str) -> None:
        """A CT window preset on the original (the reconstruction follows through the link)."""
        limits = window_limits(*CT_WINDOWS[name])
        for layer in (self.selected_layer(), self.derived.get("reconstruction")):
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
        refuse_overwrite(path, (moec_of(self.source) or {}).get("source") if self.source is not None else None)
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
        layer = self.selected_layer()
        volume = orientation = None
        if layer is not None:
            try:
                volume, orientation = volume_of_layer(layer)
            except (MoecError, ValueError):
                volume = None
        try:
            meta = read_meta(data, str(path))  # the header only: cheap, and refuses bad files early
            scale = self.decode_scale.value()
            shape = None if scale == 1.0 else spatially_scaled(meta.shape, scale)
        except MoecError as exc:
            self._error(str(exc))
            return
        if volume is not None and meta.shape == volume.shape and shape in (None, meta.shape):
            self.source, self.job, self.other, self._previous, self._source_lost = layer, None, None, None, None
            self._make_derived_layers(layer, meta.model.experts, meta.raw_bytes / len(data))
        else:
            volume = orientation = None
        self._run(create_worker(load, volume, orientation, data, str(path), shape))

    def _load_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load MoEC file", "", "MoEC files (*.moec)")
        if path:
            self.load_moec(path)
