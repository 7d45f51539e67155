"""A small live plot of the training curves (loss on a log axis, PSNR) against the step.

Painted with QPainter: no plotting library in the plugin's dependencies, and a repaint of a few
thousand points costs the GUI thread next to nothing (docs/history.md).
"""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

LOSS_COLOR = QColor("#f28e2b")
PSNR_COLOR = QColor("#4e79a7")
MAX_POINTS = 4000


class CurvesWidget(QWidget):
    """The training curves: loss and PSNR on the training batch against the step."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.steps: list[int] = []
        self.loss: list[float] = []
        self.psnr: list[float] = []
        self.setMinimumHeight(120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Training loss (orange, log scale) and PSNR on the training batch (blue) against the step")

    def clear(self) -> None:
        self.steps, self.loss, self.psnr = [], [], []
        self.update()

    def add(self, step: int, loss: float, psnr: float) -> None:
        if math.isnan(psnr) or not math.isfinite(loss) or loss <= 0:
            return  # the router stage has no reconstruction PSNR yet
        self.steps.append(step)
        self.loss.append(loss)
        self.psnr.append(psnr)
        if len(self.steps) > MAX_POINTS:  # keep every other point: the shape stays, the cost does not grow
            self.steps, self.loss, self.psnr = self.steps[::2], self.loss[::2], self.psnr[::2]
        self.update()

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        rect = QRectF(self.rect()).adjusted(40, 8, -40, -18)
        painter.setPen(QPen(self.palette().color(self.foregroundRole())))
        painter.drawRect(rect)
        if len(self.steps) < 2:
            painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, "training curves appear here")
            return
        s0, s1 = self.steps[0], max(self.steps[-1], self.steps[0] + 1)
        log_loss = [math.log10(v) for v in self.loss]
        finite_psnr = [p if math.isfinite(p) else 99.0 for p in self.psnr]
        for values, color, side in ((log_loss, LOSS_COLOR, "left"), (finite_psnr, PSNR_COLOR, "right")):
            lo, hi = min(values), max(values)
            if hi - lo < 1e-9:
                hi = lo + 1.0
            points = QPolygonF(
                [
                    QPointF(
                        rect.left() + rect.width() * (s - s0) / (s1 - s0),
                        rect.bottom() - rect.height() * (v - lo) / (hi - lo),
                    )
                    for s, v in zip(self.steps, values)
                ]
            )
            painter.setPen(QPen(color, 1.5))
            painter.drawPolyline(points)
            top, bottom = (f"{10**hi:.1e}", f"{10**lo:.1e}") if side == "left" else (f"{hi:.1f}", f"{lo:.1f}")
            x = 2 if side == "left" else rect.right() + 3
            painter.drawText(QPointF(x, rect.top() + 10), top)
            painter.drawText(QPointF(x, rect.bottom()), bottom)
        painter.setPen(QPen(self.palette().color(self.foregroundRole())))
        painter.drawText(QPointF(rect.left(), rect.bottom() + 14), f"step {s0}")
        painter.drawText(QPointF(rect.right() - 60, rect.bottom() + 14), f"step {s1}")
