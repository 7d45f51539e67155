"""The widget's results panel: CT window presets, the figures measured on the decoded file, the
per-expert table and the training curves. It shows what it is given and says, through signals,
what the user asked for (a window, the worst slice, one expert's region); the wiring is the
widget's."""

from __future__ import annotations

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from codec.eval import db_text

from .curves import CurvesWidget
from .job import Result
from .layers import CT_WINDOWS

METRICS = (
    ("ratio", "Ratio"),
    ("file", "File"),
    ("psnr", "PSNR"),
    ("ssim", "SSIM"),
    ("max", "Max error"),
    ("p99", "99th pct error"),
    ("body", "PSNR in body"),
    ("roi", "ROI"),
    ("worst", "Worst slice"),
)


def metric_texts(r: Result) -> dict[str, str]:
    """The metrics box's lines for a result, by METRICS key."""
    q = r.quality
    source_ratio = f", {r.file_ratio:.1f}x vs the source file" if r.file_ratio else ""
    return {
        "ratio": f"<b>{r.ratio:.1f}x</b> vs raw voxels{source_ratio}",
        "file": f"{len(r.data):,} bytes, {r.steps} steps{' (stopped early)' if r.stopped else ''}",
        "psnr": f"<b>{db_text(q.psnr)}</b> (peak {q.peak:g})",
        "ssim": f"{q.ssim:.4f} ({q.ssim_method})",
        "max": f"{q.max_error:g}",
        "p99": f"{q.p99_error:g}",
        "body": f"{db_text(q.psnr_body)} ({100 * q.body_share:.0f}% of voxels)",
        "roi": "–"
        if r.roi is None
        else (
            f"{db_text(r.roi.psnr_inside)} inside (max error {r.roi.max_inside:g}); "
            f"{db_text(r.roi.psnr_outside)} outside (max {r.roi.max_outside:g})"
        ),
        "worst": f"k = {q.worst_slice}, {db_text(q.worst_slice_psnr)}",
    }


class ResultsPanel(QWidget):
    """The figures of a finished model: metrics, CT window presets, the worst slice and the
    per-expert table; it tells the widget what the user picks through its signals."""

    window_chosen = Signal(str)  # a CT window preset's name
    worst_requested = Signal()
    expert_chosen = Signal(object)  # the expert (0-based) whose region alone to show, or None: all

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.windows = QGroupBox("CT window")
        windows = QHBoxLayout(self.windows)
        for name in CT_WINDOWS:
            button = QPushButton(name)
            button.clicked.connect(lambda _=False, n=name: self.window_chosen.emit(n))
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
        self.worst_button.clicked.connect(self.worst_requested.emit)
        layout.addWidget(self.worst_button)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["Expert", "Voxels", "PSNR", "Parameters"])
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setToolTip("Select an expert to show only its region in the experts layer")
        self.table.itemSelectionChanged.connect(self._on_selection)
        self.table.verticalHeader().setVisible(False)  # type: ignore[union-attr]  # a table has headers
        self.table.horizontalHeader().setSectionResizeMode(  # type: ignore[union-attr]
            QHeaderView.ResizeMode.Stretch
        )
        self.table.setMinimumHeight(140)
        layout.addWidget(self.table)
        self.curves = CurvesWidget()
        layout.addWidget(self.curves)
        self.set_measured(False)

    def clear(self) -> None:
        """A new training run: no figures, no table, no curves."""
        self.curves.clear()
        self.table.setRowCount(0)
        for label in self.metrics.values():
            label.setText("–")
        self.set_measured(False)

    def set_measured(self, measured: bool) -> None:
        self.worst_button.setEnabled(measured)

    def show_result(self, r: Result) -> None:
        for key, text in metric_texts(r).items():
            self.metrics[key].setText(text)
        self.table.setRowCount(len(r.experts))
        for row, e in enumerate(r.experts):
            cells = (str(e.expert), f"{100 * e.share:.1f}%", db_text(e.psnr), f"{e.parameters:,}")
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(row, col, item)
        self.set_measured(True)

    def _on_selection(self) -> None:
        rows = {i.row() for i in self.table.selectedIndexes()}
        self.expert_chosen.emit(min(rows) if rows else None)
