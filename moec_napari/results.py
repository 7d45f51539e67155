"""The widget's results panel: the training curves, CT window presets, the figures measured on the
decoded file and the per-expert table. It shows what it is given and says, through signals,
what the user asked for (a window, the worst slice, one expert's region); the wiring is the
widget's."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from codec.eval import db_text

from .appearance import CT_WINDOWS
from .curves import CurvesWidget
from .form import Fold
from .job import Result

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

#: What each figure means, as the metrics' tooltips; every one is measured on the decoded file.
METRIC_TIPS = {
    "ratio": "Raw voxel bytes divided by the .moec file's bytes (and the source file's bytes, when known)",
    "file": "The size of the .moec file Save writes, and the training steps behind it",
    "psnr": "Peak signal-to-noise ratio of the whole decoded volume against the original; higher is better",
    "ssim": "Structural similarity of the decoded volume to the original (1 = identical)",
    "max": "The largest absolute difference of any voxel, in the volume's units",
    "p99": "99% of the voxels differ from the original by less than this, in the volume's units",
    "body": "PSNR over the voxels inside the body (air around the patient left out)",
    "roi": "PSNR and largest error inside and outside the region of interest trained with",
    "worst": "The slice (file axis k) whose PSNR is lowest: 'Go to worst slice' shows it",
}

#: The per-expert table's columns: a short title that fits a dock's width, and what it means.
TABLE_COLUMNS = (
    ("Expert", "The expert's label in the experts layer (1..N), with its colour there"),
    ("Voxels", "The share of the volume's voxels this expert reconstructs"),
    ("PSNR", "PSNR of the decoded file over this expert's voxels alone (the whole volume's peak)"),
    (
        "Bytes",
        "What this expert's region costs in the file: its network's weights and the latents whose grid "
        "node lies in its region, at their code lengths (the router, decoder and tables are shared)",
    ),
    ("Latents", "The latent values (every level and channel) whose grid node lies in this expert's region"),
)
#: Rows the table shows before it scrolls.
TABLE_ROWS = 8

#: An RGBA colour (floats in 0..1) for an expert's label in the experts layer, or None.
LabelColor = Callable[[int], Sequence[float] | None]


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
    """The figures of a finished model: training curves, CT window presets, metrics, the worst slice
    and the per-expert table; it tells the widget what the user picks through its signals.

    Top to bottom: the curves first, so they are in view while training without scrolling; then
    the presets; then the metrics and the experts, each in a section that folds (closed until a
    result is shown, open after one unless the user folded it). Nothing in it is wider than a
    dock beside a volume: the presets are one row of short names, long figures wrap, and the
    table's columns share its width."""

    window_chosen = Signal(str)  # a CT window preset's name
    worst_requested = Signal()
    expert_chosen = Signal(object)  # the expert (0-based) whose region alone to show, or None: all

    #: The table numbers experts as the experts layer labels them: 1..N.
    SWATCH_ROLE = Qt.ItemDataRole.DecorationRole

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.curves = CurvesWidget()
        layout.addWidget(self.curves)

        self.windows = QGroupBox("CT window")
        self.windows.setToolTip("Window presets for CT (Hounsfield units), on the original and the reconstruction")
        windows = QHBoxLayout(self.windows)
        windows.setContentsMargins(4, 2, 4, 4)
        windows.setSpacing(4)
        for name, (level, width) in CT_WINDOWS.items():
            button = QPushButton(name)
            button.setToolTip(
                f"{name} window on the original and the reconstruction: level {level:g} HU, width {width:g} HU"
            )
            button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
            button.clicked.connect(lambda _=False, n=name: self.window_chosen.emit(n))
            windows.addWidget(button)
        layout.addWidget(self.windows)

        self.metrics_section = Fold(
            "Measured on the decoded file",
            "The figures of the file Save writes, measured on its decoded volume against the original; "
            "click to fold or unfold",
        )
        self.metrics_box = QWidget()
        metrics_form = QFormLayout(self.metrics_box)
        metrics_form.setContentsMargins(0, 0, 0, 0)
        metrics_form.setVerticalSpacing(2)
        self.metrics: dict[str, QLabel] = {}
        for key, title in METRICS:
            label = QLabel("–")
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            label.setWordWrap(True)  # a long figure wraps instead of widening the dock past the window
            label.setToolTip(METRIC_TIPS[key])
            title_label = QLabel(title)
            title_label.setToolTip(METRIC_TIPS[key])
            metrics_form.addRow(title_label, label)
            self.metrics[key] = label
        self.metrics_section.addWidget(self.metrics_box)
        self.worst_button = QPushButton("Go to worst slice")
        self.worst_button.setToolTip("Move the slider to the slice with the lowest PSNR")
        self.worst_button.clicked.connect(self.worst_requested.emit)
        self.metrics_section.addWidget(self.worst_button)
        layout.addWidget(self.metrics_section)

        self.experts_section = Fold(
            "Experts",
            "Each expert's share of the voxels, its PSNR and what its region costs in the file; select a "
            "row to show only its region; click to fold or unfold",
        )
        self.table = QTableWidget(0, len(TABLE_COLUMNS))
        for col, (title, tip) in enumerate(TABLE_COLUMNS):
            header_item = QTableWidgetItem(title)
            header_item.setToolTip(tip)
            self.table.setHorizontalHeaderItem(col, header_item)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setToolTip(
            "Experts numbered as the experts layer labels them, with its colour; select one to show only its region"
        )
        #: The expert (0-based) of each row.
        self.row_experts: list[int] = []
        self.table.itemSelectionChanged.connect(self._on_selection)
        header, rows = self.table.horizontalHeader(), self.table.verticalHeader()
        assert header is not None and rows is not None  # a table has headers
        rows.setVisible(False)
        header.setSectionResizeMode(QHeaderView.ResizeMode.Stretch)  # the columns share the dock's width
        header.setMinimumSectionSize(30)
        self.table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.setWordWrap(False)
        self.experts_section.addWidget(self.table)
        layout.addWidget(self.experts_section)
        #: Whether the user last unfolded (True) or folded (False) each section; None: the section
        #: follows the results, open when there are figures.
        self._user_choice: dict[Fold, bool | None] = {self.metrics_section: None, self.experts_section: None}
        for section in self._user_choice:
            section.toggled.connect(lambda expanded, s=section: self._user_choice.__setitem__(s, expanded))
        self._fit_table()
        self.set_measured(False)

    def clear(self) -> None:
        """A new training run: no figures, no table, no curves."""
        self.curves.clear()
        self.table.setRowCount(0)
        self.row_experts = []
        for label in self.metrics.values():
            label.setText("–")
        self._fit_table()
        self._unfold(False)
        self.set_measured(False)

    def _unfold(self, shown: bool) -> None:
        """Open the sections when there are figures to show and close them when not, unless the user chose."""
        for section, choice in self._user_choice.items():
            section.expand() if (shown if choice is None else choice) else section.collapse()

    def _fit_table(self) -> None:
        """The table as tall as its rows, up to TABLE_ROWS of them (more scroll), at least two."""
        header, rows = self.table.horizontalHeader(), self.table.verticalHeader()
        assert header is not None and rows is not None  # a table has headers
        shown = min(max(self.table.rowCount(), 2), TABLE_ROWS)
        self.table.setFixedHeight(
            header.sizeHint().height() + 2 * self.table.frameWidth() + shown * rows.defaultSectionSize()
        )

    def set_measured(self, measured: bool) -> None:
        self.worst_button.setEnabled(measured)

    def show_result(self, r: Result, color: LabelColor | None = None) -> None:
        """The figures of `r`; `color(label)`: the experts layer's colour of a label, for the swatches."""
        for key, text in metric_texts(r).items():
            self.metrics[key].setText(text)
        self.table.clearSelection()  # every region shown again: the rows may be another model's
        self.table.setRowCount(len(r.experts))
        self.row_experts = [e.expert for e in r.experts]
        for row, e in enumerate(r.experts):
            label = e.expert + 1  # the experts layer's label, the number the user sees there
            measured = not math.isnan(e.coded_bytes)
            cells = (
                str(label),
                f"{100 * e.share:.1f}%",
                db_text(e.psnr),
                f"{e.coded_bytes:,.0f}" if measured else "–",
                f"{e.latents:,}" if measured else "–",
            )
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                if col == 3 and measured:
                    item.setToolTip(
                        f"{e.coded_bytes:,.0f} bytes: the expert's network ({e.parameters:,} parameters) "
                        f"and the {e.latents:,} latents in its region, at their code lengths in the file"
                    )
                if col == 0:
                    rgba = color(label) if color is not None else None
                    if rgba is not None:
                        item.setData(self.SWATCH_ROLE, QColor.fromRgbF(*(float(c) for c in rgba[:4])))
                    item.setToolTip(f"Expert {label}: label {label} in the experts layer")
                self.table.setItem(row, col, item)
        self._fit_table()
        self._unfold(True)
        self.set_measured(True)

    def _on_selection(self) -> None:
        rows = {i.row() for i in self.table.selectedIndexes()}
        self.expert_chosen.emit(self.row_experts[min(rows)] if rows else None)
