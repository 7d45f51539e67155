"""The MoEC dock widget: compress the selected volume, watch it train, compare and inspect.

The widget owns no science: training, encoding, decoding and measuring are `codec`'s, driven through
`job.TrainingJob` in a napari `thread_worker`. The GUI thread only assigns layer data and contrast
limits, so the viewer stays responsive while torch trains on the other core.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from codec import pack
from codec import settings as choices
from codec.errors import MoecError
from codec.files import refuse_overwrite
from codec.resample import spatially_scaled
from codec.train import Progress

from .curves import CurvesWidget
from .job import Preview, Result, TrainingJob, load
from .layers import (
    CT_WINDOWS,
    ERROR_COLORMAP,
    META,
    expert_colormap,
    is_ct,
    layer_orientation,
    lossy_name,
    moec_of,
    transforms_of,
    volume_of_layer,
    window_limits,
)

ROLES = ("reconstruction", "error", "experts", "confidence")
METRICS = (("ratio", "Ratio"), ("file", "File"), ("psnr", "PSNR"), ("ssim", "SSIM"), ("max", "Max error"),
           ("p99", "99th pct error"), ("body", "PSNR in body"), ("roi", "ROI"), ("worst", "Worst slice"))


def training_threads() -> int:
    """Leave a core to the viewer: torch's threads compete with Qt's event loop otherwise."""
    return max(1, (os.cpu_count() or 2) - 1)


def _camera(viewer):
    """napari 0.9 moved the camera to viewer.scene; older versions keep viewer.camera."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def _grid(viewer):
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def _format_db(value: float) -> str:
    if value is None or math.isnan(value):
        return "undefined"
    return "exact" if math.isinf(value) else f"{value:.2f} dB"


class MoecWidget(QWidget):
    def __init__(self, napari_viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.job: TrainingJob | None = None
        self.worker = None
        self.result: Result | None = None
        self.source = None  # the Image layer being compressed
        self.derived: dict[str, object] = {}  # role -> layer
        self._linking = False
        self._build()
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.layers.events.moved.connect(self._refresh_layers)
        self.viewer.dims.events.current_step.connect(self._on_dims)
        # Radiological convention for the axial view of our display order: anterior up, the
        # patient's right on the screen's left.
        _camera(self.viewer).orientation = ("towards", "up", "left")
        self._refresh_layers()
        self._set_busy(False)

    # --- construction ---------------------------------------------------------------------------
    def _build(self) -> None:
        # Every default and choice list comes from codec.settings, as the command line's do.
        file_, train = choices.Settings(), choices.TrainConfig()
        # Everything sits in a scroll area: a dock is often shorter than the metrics and the table.
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        outer.addWidget(scroll)
        content = QWidget()
        scroll.setWidget(content)
        layout = QVBoxLayout(content)
        form = QFormLayout()
        self.layer_box = QComboBox()
        self.layer_box.setToolTip("The image layer to compress (opened NIfTI volumes keep their orientation)")
        self.layer_box.currentIndexChanged.connect(self._on_layer_chosen)
        form.addRow("Volume", self.layer_box)
        self.ratio = self._spin(QDoubleSpinBox(), 2.0, 1e6, file_.ratio, "Target ratio vs the raw voxels; the file "
                                "lands between R and 1.05 R", decimals=1)
        form.addRow("Ratio", self.ratio)
        self.experts = self._spin(QSpinBox(), 1, 64, file_.experts,
                                  "Number of experts (1 = a single SIREN)")
        form.addRow("Experts", self.experts)
        self.top_k = QComboBox()
        self.top_k.addItems([str(k) for k in choices.TOP_K])
        self.top_k.setCurrentText(str(file_.top_k))
        self.top_k.setToolTip("Experts evaluated per voxel")
        form.addRow("Top-k", self.top_k)
        self.minutes = self._spin(QDoubleSpinBox(), 0.05, 600.0, train.minutes, "Training time budget in minutes",
                                  decimals=2)
        form.addRow("Minutes", self.minutes)
        self.roi_box = QComboBox()
        self.roi_box.setToolTip("A Labels layer on the volume's grid whose painted voxels (any label) are the "
                                "region of interest: their squared error counts 'ROI weight' times more, so they "
                                "come out sharper for the same file size")
        form.addRow("ROI", self.roi_box)
        layout.addLayout(form)

        self.advanced = QCollapsible("Advanced")
        adv = QWidget()
        adv_form = QFormLayout(adv)
        self.lr = self._spin(QDoubleSpinBox(), 1e-5, 0.1, train.lr, "Adam learning rate", decimals=5, step=5e-4)
        self.seed = self._spin(QSpinBox(), 0, 2 ** 31 - 1, train.seed, "Random seed (initialisation and sampling)")
        self.balance = self._spin(QDoubleSpinBox(), 0.0, 10.0, train.balance_weight, "Balancing loss weight",
                                  decimals=3, step=0.01)
        self.bits = self._spin(QSpinBox(), 2, 16, file_.bits, "Weight bit width before entropy coding (16 = float16)")
        self.steps = self._spin(QSpinBox(), 0, 10 ** 7, 0,
                                "Train this many steps instead of a time budget (0: use minutes)")
        self.partition = QComboBox()
        self.partition.addItems(list(choices.PARTITIONS))
        self.partition.setCurrentText(file_.partition)
        self.partition.setToolTip("Learned router (MoEC) or the fixed block split (baseline)")
        self.encoder = QComboBox()
        self.encoder.addItems(list(choices.ENCODERS))
        self.encoder.setCurrentText(file_.encoder)
        self.encoder.setToolTip("Shared encoder: a latent grid (3D, quantized weights) or a SIREN layer; "
                                "auto: the grid wherever it applies")
        self.router_input = QComboBox()
        self.router_input.addItems(list(choices.ROUTER_INPUTS))
        self.router_input.setCurrentText("features" if file_.router_features else "coordinates")
        self.router_input.setToolTip("What the router reads: the coordinates and the encoder features, or the "
                                     "coordinates alone (better over a latent grid)")
        self.grid_channels = self._spin(QSpinBox(), 1, 16, file_.grid_channels,
                                        "Latents per grid node and level (latent grid only); fewer channels buy a "
                                        "finer grid in the same bytes")
        self.roi_weight = self._spin(QDoubleSpinBox(), 1.0, 1000.0, train.roi_weight,
                                     "How much more a voxel of the ROI counts in training", decimals=1)
        for label, widget in (("Learning rate", self.lr), ("Seed", self.seed), ("Balancing weight", self.balance),
                              ("Bits", self.bits), ("Steps", self.steps), ("Partition", self.partition),
                              ("Encoder", self.encoder), ("Router input", self.router_input),
                              ("Grid channels", self.grid_channels), ("ROI weight", self.roi_weight)):
            adv_form.addRow(label, widget)
        self.advanced.addWidget(adv)
        layout.addWidget(self.advanced)
        self.inputs = [self.layer_box, self.ratio, self.experts, self.top_k, self.minutes, self.lr, self.seed,
                       self.balance, self.bits, self.steps, self.partition, self.encoder, self.router_input,
                       self.grid_channels, self.roi_box, self.roi_weight]

        buttons = QHBoxLayout()
        self.train_button = QPushButton("Train")
        self.stop_button = QPushButton("Stop")
        self.continue_button = QPushButton("Continue")
        self.train_button.setToolTip("Train a new model on the selected volume")
        self.stop_button.setToolTip("Stop at the next step and keep the model trained so far")
        self.continue_button.setToolTip("Train the current model further for the time budget")
        self.train_button.clicked.connect(self.train)
        self.stop_button.clicked.connect(self.stop)
        self.continue_button.clicked.connect(self.continue_training)
        for b in (self.train_button, self.stop_button, self.continue_button):
            buttons.addWidget(b)
        layout.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.status = QLabel("Choose a volume and press Train.")
        self.status.setWordWrap(True)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)

        files = QHBoxLayout()
        self.save_button = QPushButton("Save .moec…")
        self.load_button = QPushButton("Load .moec…")
        self.save_button.clicked.connect(self._save_dialog)
        self.load_button.clicked.connect(self._load_dialog)
        self.decode_scale = self._spin(QDoubleSpinBox(), 0.1, 8.0, 1.0, "Grid a loaded file is decoded on, as a "
                                       "factor per axis (2: twice the voxels along each axis, e.g. thin slices; "
                                       "the network is continuous). 1: the file's own grid, measured against an "
                                       "open volume of its shape", decimals=2, step=0.25)
        self.decode_scale.setSuffix(" ×")
        files.addWidget(self.save_button)
        files.addWidget(self.load_button)
        files.addWidget(QLabel("at"))
        files.addWidget(self.decode_scale)
        layout.addLayout(files)
        self.inputs.append(self.decode_scale)

        self.windows = QGroupBox("CT window")
        windows = QHBoxLayout(self.windows)
        for name in CT_WINDOWS:
            button = QPushButton(name)
            button.clicked.connect(lambda _=False, n=name: self.apply_window(n))
            windows.addWidget(button)
        layout.addWidget(self.windows)

        self.metrics_box = QGroupBox("Measured on the decoded file")
        metrics_form = QFormLayout(self.metrics_box)
        self.metrics: dict[str, QLabel] = {}
        for key, title in METRICS:
            label = QLabel("–")
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            label.setWordWrap(True)  # a long figure wraps instead of widening the dock past the window
            metrics_form.addRow(title, label)
            self.metrics[key] = label
        layout.addWidget(self.metrics_box)
        self.worst_button = QPushButton("Go to worst slice")
        self.worst_button.clicked.connect(self.go_to_worst_slice)
        layout.addWidget(self.worst_button)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["Expert", "Voxels", "PSNR", "Parameters"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setToolTip("Select an expert to show only its region in the experts layer")
        self.table.itemSelectionChanged.connect(self._on_expert_selected)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.setMinimumHeight(140)
        layout.addWidget(self.table)
        self.curves = CurvesWidget()
        layout.addWidget(self.curves)
        layout.addStretch(1)

    @staticmethod
    def _spin(widget, lo, hi, value, tip, decimals=None, step=None):
        if decimals is not None:
            widget.setDecimals(decimals)
        widget.setRange(lo, hi)
        widget.setValue(value)
        if step is not None:
            widget.setSingleStep(step)
        widget.setToolTip(tip)
        return widget

    # --- layer choice -----------------------------------------------------------------------------
    def _image_layers(self) -> list[Image]:
        return [layer for layer in self.viewer.layers if isinstance(layer, Image)
                and (moec_of(layer) or {}).get("role", "original") == "original" and layer.data.ndim in (3, 4)]

    def _refresh_layers(self, event=None) -> None:
        current = self.layer_box.currentText()
        self.layer_box.blockSignals(True)
        self.layer_box.clear()
        names = [layer.name for layer in self._image_layers()]
        self.layer_box.addItems(names)
        if current in names:
            self.layer_box.setCurrentText(current)
        self.layer_box.blockSignals(False)
        roi = self.roi_box.currentText()
        self.roi_box.clear()
        self.roi_box.addItems(["none"] + [layer.name for layer in self._roi_layers()])
        self.roi_box.setCurrentText(roi if roi in [self.roi_box.itemText(i) for i in range(self.roi_box.count())]
                                    else "none")
        self._on_layer_chosen()

    def _roi_layers(self) -> list[Labels]:
        """Labels layers a user painted or opened (not the expert assignments this widget makes)."""
        return [layer for layer in self.viewer.layers if isinstance(layer, Labels)
                and (moec_of(layer) or {}).get("role") != "experts"]

    def roi_mask(self, layer: Image) -> np.ndarray | None:
        """The chosen ROI layer's painted voxels in the file order of `layer` (None: no ROI);
        MoecError when it is not on that layer's grid."""
        name = self.roi_box.currentText()
        if name in ("", "none") or name not in self.viewer.layers:
            return None
        painted = np.asarray(self.viewer.layers[name].data) != 0
        if painted.shape != tuple(layer.data.shape):
            raise MoecError(f"the ROI layer {name!r} is {' x '.join(map(str, painted.shape))} voxels, the volume "
                            f"{' x '.join(map(str, layer.data.shape))}: paint it on a layer of the volume's shape")
        orientation = layer_orientation(layer)
        return painted if orientation is None else orientation.to_file(painted)

    def selected_layer(self) -> Image | None:
        name = self.layer_box.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _on_layer_chosen(self, *_) -> None:
        layer = self.selected_layer()
        if layer is not None:
            lo, hi = float(np.min(layer.data)), float(np.max(layer.data))
            self.windows.setVisible(is_ct(lo, hi))
        else:
            self.windows.setVisible(False)
        self._update_buttons()

    # --- settings ---------------------------------------------------------------------------------
    def settings(self) -> choices.Settings:
        return choices.Settings(ratio=self.ratio.value(), experts=self.experts.value(),
                                 top_k=int(self.top_k.currentText()), partition=self.partition.currentText(),
                                 bits=self.bits.value(), encoder=self.encoder.currentText(),
                                 router_features=self.router_input.currentText() == "features",
                                 grid_channels=self.grid_channels.value())

    def train_config(self) -> choices.TrainConfig:
        steps = self.steps.value() or None
        return choices.TrainConfig(minutes=self.minutes.value(), steps=steps, lr=self.lr.value(),
                           balance_weight=self.balance.value(), seed=self.seed.value(),
                           roi_weight=self.roi_weight.value())

    # --- training -----------------------------------------------------------------------------------
    def train(self) -> None:
        layer = self.selected_layer()
        if layer is None:
            show_error("MoEC: open a 3D or 4D image layer first")
            return
        try:
            volume, orientation = volume_of_layer(layer)
            job = TrainingJob(volume, orientation, self.settings(), self.train_config(), roi=self.roi_mask(layer))
        except (MoecError, ValueError) as exc:
            show_error(f"MoEC: {exc}")
            return
        self.job, self.source, self.result = job, layer, None
        self.curves.clear()
        self.table.setRowCount(0)
        for label in self.metrics.values():
            label.setText("–")
        self._make_derived_layers(layer, job.plan.model.experts, self.ratio.value())
        self._start(job.run())

    def continue_training(self) -> None:
        if self.job is None or self.worker is not None:
            return
        steps = self.steps.value() or None
        self._start(self.job.run(minutes=None if steps else self.minutes.value(), steps=steps))

    def stop(self) -> None:
        if self.job is not None and self.worker is not None:
            self.job.request_stop()
            self.status.setText(self.status.text() + " — stopping, keeping the model trained so far…")

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
            self.status.setText(f"step {item.step} · {item.stage} · loss {item.loss:.5f}{psnr} · {item.seconds:.0f} s")
            self.curves.add(item.step, item.loss, item.psnr)
        elif isinstance(item, Preview):
            self._show_preview(item)

    def _on_result(self, result) -> None:
        if isinstance(result, Result):
            self.result = result
            self._show_result(result)
        elif isinstance(result, list):  # a loaded file on its own: its lazy layers, decoded as shown
            for data, kwargs, kind in result:
                self.viewer.add_image(data, **kwargs) if kind == "image" else self.viewer.add_labels(data, **kwargs)
            show_info("MoEC: the file's layers are shown alone (decoded slab by slab as you scroll); open a "
                      "volume of its shape and load at 1 × to measure it")

    def _on_error(self, exc) -> None:
        show_error(f"MoEC: {exc}")

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
        self.continue_button.setEnabled(not busy and self.job is not None)
        self.save_button.setEnabled(not busy and self.result is not None)
        self.load_button.setEnabled(not busy)
        self.worst_button.setEnabled(self.result is not None)

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
        recon = self.viewer.add_image(np.zeros(shape, np.float32), name=base, colormap="gray",
                                      contrast_limits=source.contrast_limits, metadata=meta, **placement)
        error = self.viewer.add_image(np.zeros(shape, np.float32), name=f"{base} error", colormap=ERROR_COLORMAP,
                                      contrast_limits=(-1.0, 1.0), metadata={META: {"role": "error"}}, **placement)
        labels = self.viewer.add_labels(np.zeros(shape, np.uint8), name=f"{base} experts",
                                        colormap=expert_colormap(experts), metadata={META: {"role": "experts",
                                        **{k: v for k, v in (moec_of(source) or {}).items() if k != "role"}}},
                                        **placement)
        confidence = self.viewer.add_image(np.zeros(shape, np.float32), name=f"{base} gate confidence",
                                           colormap="viridis", contrast_limits=(0.0, 1.0),
                                           metadata={META: {"role": "confidence"}}, **placement)
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
        index = [slice(None)] * self.source.ndim
        index[p.axis] = p.index
        index = tuple(index)
        for role, values in (("reconstruction", p.values), ("experts", p.labels), ("confidence", p.confidence),
                             ("error", p.error)):
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
        for role, values in (("reconstruction", r.values), ("error", r.error), ("experts", r.labels),
                             ("confidence", r.confidence)):
            layer = self.derived[role]
            if layer not in self.viewer.layers:
                continue
            # The layer takes the worker's array (no copy: copying four volumes here stalled the
            # event loop ~0.2 s on the brain template). Previews of a continued run then draw into
            # it, which is what is on screen; the file's bytes stay in `result.data`.
            layer.data = values
            suffix = "gate confidence" if role == "confidence" else role
            layer.name = name if role == "reconstruction" else f"{name} {suffix}"
        recon_meta = self.derived["reconstruction"].metadata.setdefault(META, {})
        recon_meta.update(moec_bytes=r.data, ratio=r.ratio, role="reconstruction")
        self._set_error_limits(r.error_limit)
        self.progress.setValue(1000)
        q = r.quality
        source_ratio = f", {r.file_ratio:.1f}x vs the source file" if r.file_ratio else ""
        texts = {
            "ratio": f"<b>{r.ratio:.1f}x</b> vs raw voxels{source_ratio}",
            "file": f"{len(r.data):,} bytes, {r.steps} steps{' (stopped early)' if r.stopped else ''}",
            "psnr": f"<b>{_format_db(q.psnr)}</b> (peak {q.peak:g})",
            "ssim": f"{q.ssim:.4f} ({q.ssim_method})",
            "max": f"{q.max_error:g}",
            "p99": f"{q.p99_error:g}",
            "body": f"{_format_db(q.psnr_body)} ({100 * q.body_share:.0f}% of voxels)",
            "roi": "–" if r.roi is None else (
                f"{_format_db(r.roi.psnr_inside)} inside (max error {r.roi.max_inside:g}); "
                f"{_format_db(r.roi.psnr_outside)} outside (max {r.roi.max_outside:g})"),
            "worst": f"k = {q.worst_slice}, {_format_db(q.worst_slice_psnr)}",
        }
        for key, text in texts.items():
            self.metrics[key].setText(text)
        self.table.setRowCount(len(r.experts))
        for row, e in enumerate(r.experts):
            cells = (str(e.expert), f"{100 * e.share:.1f}%", _format_db(e.psnr), f"{e.parameters:,}")
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(row, col, item)
        self.status.setText(f"Done: {r.ratio:.1f}x, PSNR {_format_db(q.psnr)}, SSIM {q.ssim:.4f}"
                            + (" (stopped; Continue trains further)" if r.stopped else "")
                            + "".join(f" Note: {note}." for note in r.notes))
        self._update_buttons()

    def _on_expert_selected(self) -> None:
        layer = self.derived.get("experts")
        if layer is None or layer not in self.viewer.layers:
            return
        rows = {i.row() for i in self.table.selectedIndexes()}
        if rows:
            layer.selected_label = min(rows) + 1
            layer.show_selected_label = True
        else:
            layer.show_selected_label = False

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
        axis, index = (orientation.display_position(2, k) if orientation is not None else (2, k))
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
        pack.write(path, self.result.data)
        show_info(f"MoEC: wrote {path} ({len(self.result.data):,} bytes, {self.result.ratio:.1f}x)")

    def _save_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save MoEC file", "", "MoEC files (*.moec)")
        if path:
            if not path.lower().endswith(".moec"):
                path += ".moec"
            try:
                self.save_moec(path)
            except (MoecError, OSError) as exc:
                show_error(f"MoEC: {exc}")

    def load_moec(self, path: str | Path) -> None:
        """Decode a .moec file in the background; beside the selected volume when shapes match."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            show_error(f"MoEC: cannot read {path}: {exc}")
            return
        layer = self.selected_layer()
        volume = orientation = None
        if layer is not None:
            try:
                volume, orientation = volume_of_layer(layer)
            except (MoecError, ValueError):
                volume = None
        try:
            meta = pack.read_meta(data, str(path))  # the header only: cheap, and refuses bad files early
            scale = self.decode_scale.value()
            shape = None if scale == 1.0 else spatially_scaled(meta.shape, scale)
        except MoecError as exc:
            show_error(f"MoEC: {exc}")
            return
        if volume is not None and meta.shape == volume.shape and shape in (None, meta.shape):
            self.source, self.job = layer, None
            self._make_derived_layers(layer, meta.model.experts, meta.raw_bytes / len(data))
        else:
            volume = orientation = None
        self._run(create_worker(load, volume, orientation, data, str(path), shape))

    def _load_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load MoEC file", "", "MoEC files (*.moec)")
        if path:
            self.load_moec(path)
