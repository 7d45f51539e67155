"""A small live plot of the training curves (loss on a log axis, PSNR) against the step.

Painted with QPainter: no plotting library in the plugin's dependencies, and a repaint of a few
thousand points costs the GUI thread next to nothing (docs/history.md). The axes say what they
show: a coloured title above each value axis (the loss's on the left, the PSNR's on the right, each
in its curve's colour), its range at its ends, and "training step" under the step axis between the
first and last step. Every label has a fixed place, so none overlaps another at a dock's width.
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, QSize, Qt
from qtpy.QtGui import QColor, QFontMetricsF, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOR = QColor("#f28e2b")
PSNR_COLOR = QColor("#4e79a7")
MAX_POINTS = 4000
HEIGHT = 150  # px: enough to read both curves, small enough to leave the figures below in view

LOSS_TITLE = "loss (MSE, log)"
PSNR_TITLE = "PSNR (dB)"
STEP_TITLE = "training step"
TOOLTIP = (
    "Training curves against the training step: the loss (reconstruction MSE on the [-1, 1] scale, "
    "orange, log axis on the left) and the PSNR on the training batch (dB, blue, axis on the right); "
    "fainter lines: the models tried before the one trained on. "
    "The figures of the saved file are measured on the decoded file, below."
)


def loss_text(value: float) -> str:
    """A loss as a short tick label: 2.3e-4 rather than 2.3e-04."""
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def psnr_text(value: float) -> str:
    """A PSNR as a short tick label: one decimal below 100 dB, none above."""
    return f"{value:.1f}" if value < 99.95 else f"{value:.0f}"


class CurvesWidget(QWidget):
    """The training curves: loss and PSNR on the training batch against the step."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.steps: list[int] = []
        self.loss: list[float] = []
        self.psnr: list[float] = []
        #: Where each run's points start in the lists. A new run (a model tried first, each counting its
        #: steps from 1, or the model kept) is drawn as its own line, never joined to the one before.
        self.starts: list[int] = []
        self._run: str | None = None
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip(TOOLTIP)
        font = self.font()
        font.setPointSizeF(font.pointSizeF() * 0.9)
        self.setFont(font)

    def sizeHint(self) -> QSize:
        return QSize(300, HEIGHT)

    def minimumSizeHint(self) -> QSize:
        return QSize(160, HEIGHT)

    def clear(self) -> None:
        self.steps, self.loss, self.psnr, self.starts, self._run = [], [], [], [], None
        self.update()

    def add(self, step: int, loss: float, psnr: float, run: str = "") -> None:
        """A training step's point; `run`: which model it trains (Progress.trying: a new name, or a
        step that goes back, starts a new line)."""
        if math.isnan(psnr) or not math.isfinite(loss) or loss <= 0:
            return  # the router stage has no reconstruction PSNR yet
        if not self.steps or run != self._run or step <= self.steps[-1]:
            self.starts.append(len(self.steps))
            self._run = run
        self.steps.append(step)
        self.loss.append(loss)
        self.psnr.append(psnr)
        if len(self.steps) > MAX_POINTS:  # keep every other point: the shape stays, the cost does not grow
            self.steps, self.loss, self.psnr = self.steps[::2], self.loss[::2], self.psnr[::2]
            self.starts = sorted({(i + 1) // 2 for i in self.starts})
        self.update()

    def plot_rect(self) -> QRectF:
        """Where the curves go: the margins hold the value labels (left, right) and the titles (top, bottom)."""
        fm = QFontMetricsF(self.font())
        left = fm.horizontalAdvance("8.8e-88") + 6
        right = fm.horizontalAdvance("99.9") + 6
        line = fm.height()
        return QRectF(self.rect()).adjusted(left, line + 4, -right, -(line + 4))

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        fm = QFontMetricsF(self.font())
        line = fm.height()
        rect = self.plot_rect()
        full = QRectF(self.rect())
        text = self.palette().color(self.foregroundRole())
        grid = QColor(text)
        grid.setAlphaF(0.2)

        # The titles: each value axis's above it, in its curve's colour (the legend as well).
        top_row = QRectF(full.left() + 2, full.top(), full.width() - 4, line)
        painter.setPen(LOSS_COLOR)
        painter.drawText(top_row, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, f"— {LOSS_TITLE}")
        painter.setPen(PSNR_COLOR)
        painter.drawText(top_row, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, f"{PSNR_TITLE} —")
        bottom_row = QRectF(rect.left(), rect.bottom() + 3, rect.width(), line)
        painter.setPen(text)
        painter.drawText(bottom_row, Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignVCenter, STEP_TITLE)
        painter.setPen(QPen(text))
        painter.drawRect(rect)
        if len(self.steps) < 2:
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, "the curves appear here while training")
            return

        s0 = min(self.steps)
        s1 = max(max(self.steps), s0 + 1)
        first, last = f"{s0:,}", f"{s1:,}"
        if fm.horizontalAdvance(first + last + STEP_TITLE) + 16 > rect.width():
            first = ""  # a very narrow plot: the last step and the title, never on top of each other
        painter.drawText(bottom_row, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, first)
        painter.drawText(bottom_row, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, last)

        log_loss = [math.log10(v) for v in self.loss]
        finite_psnr = [p if math.isfinite(p) else 99.0 for p in self.psnr]
        for values, color, side in ((log_loss, LOSS_COLOR, "left"), (finite_psnr, PSNR_COLOR, "right")):
            lo, hi = min(values), max(values)
            if hi - lo < 1e-9:
                hi = lo + 1.0

            def y(v: float, lo: float = lo, hi: float = hi) -> float:
                return rect.bottom() - rect.height() * (v - lo) / (hi - lo)

            if side == "left":  # a faint line at each power of ten the loss crosses, labelled where there is room
                for decade in range(math.ceil(lo), math.floor(hi) + 1):
                    at = y(decade)
                    painter.setPen(QPen(grid, 1.0, Qt.PenStyle.DashLine))
                    painter.drawLine(QPointF(rect.left(), at), QPointF(rect.right(), at))
                    if rect.top() + 1.5 * line < at < rect.bottom() - 1.5 * line:
                        painter.setPen(color)
                        label = QRectF(full.left(), at - line / 2, rect.left() - full.left() - 3, line)
                        painter.drawText(
                            label, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, f"1e{decade}"
                        )
            faded = QColor(color)
            faded.setAlphaF(0.35)
            ends = [*self.starts[1:], len(self.steps)]
            for start, end in zip(self.starts, ends):
                points = QPolygonF(
                    [
                        QPointF(rect.left() + rect.width() * (s - s0) / (s1 - s0), y(v))
                        for s, v in zip(self.steps[start:end], values[start:end])
                    ]
                )
                current = end == len(self.steps)  # the model trained on; the others, fainter, were tried first
                painter.setPen(QPen(color if current else faded, 1.5 if current else 1.0))
                painter.drawPolyline(points)
            # The range at the axis's ends, in the curve's colour, beside the plot.
            top, bottom = (loss_text(10**hi), loss_text(10**lo)) if side == "left" else (psnr_text(hi), psnr_text(lo))
            if side == "left":
                column = QRectF(full.left(), rect.top(), rect.left() - full.left() - 3, rect.height())
                align = Qt.AlignmentFlag.AlignRight
            else:
                column = QRectF(rect.right() + 3, rect.top(), full.right() - rect.right() - 3, rect.height())
                align = Qt.AlignmentFlag.AlignLeft
            painter.drawText(column, align | Qt.AlignmentFlag.AlignTop, top)
            painter.drawText(column, align | Qt.AlignmentFlag.AlignBottom, bottom)
