"""What a running job tells the user: the dock's progress bar and status line, and a bar in napari's
activity dock (napari.utils.progress), all saying the same stage.

A job has stages without a measure of progress (preparing, encoding and measuring), where the bars
are indeterminate, and training, where the bar is the share of the budget spent and the status says
when training should end, from the pace so far.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from napari.utils import progress
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QProgressBar

from codec.fit.train import Progress

#: The bars' resolution.
STEPS = 1000
#: Share of the budget spent before the end of training is estimated (the first steps are slower).
ESTIMATE_AFTER = 0.03
#: Seconds between updates of the activity dock's bar: napari's bar runs the event loop on each
#: change of its value or text, which costs the GUI thread about 10 ms (and can end the job inside it).
ACTIVITY_EVERY = 1.0


def clock(seconds_from_now: float) -> str:
    """A wall-clock time `seconds_from_now` ahead, as a user reads it ("14:05:30")."""
    return time.strftime("%H:%M:%S", time.localtime(time.time() + seconds_from_now))


def training_text(p: Progress, choice: str = "") -> str:
    """The status line of a training step: the stage, the model tried, the figures, the end."""
    stage = choice if p.trying and choice else "training"
    trying = f" · trying {p.trying}" if p.trying else ""
    psnr = "" if math.isnan(p.psnr) else f" · PSNR {p.psnr:.2f} dB"
    if p.fraction >= ESTIMATE_AFTER and p.seconds > 0:
        left = p.seconds * (1.0 - p.fraction) / p.fraction
        end = f" · training ends about {clock(left)}, then encoding and measuring"
    else:
        end = " · estimating when training ends"
    return f"{stage}{trying} · step {p.step}{psnr} · {p.seconds:.0f} s{end}"


class JobActivity:
    """The bars and the status of one job at a time; `say(text)` writes the status line (and the
    viewer's status bar)."""

    def __init__(self, bar: QProgressBar, say: Callable[[str], None]):
        self.bar = bar
        self.say = say
        self.bar.setRange(0, STEPS)
        self.activity: progress | None = None
        self._description = ""
        self._updated = 0.0  # time.monotonic() of the activity bar's last update
        self._opening = False  # the activity bar is to open on the next turn of the event loop
        self._job = 0  # counts the jobs ended: a bar opened for an ended job is closed at once

    def start(self, text: str) -> None:
        """A new job, in a stage without progress (`text`). The activity dock's bar opens on the
        next turn of the event loop: opening it costs napari about 100 ms, which a click must not."""
        self.finish()
        self.bar.setRange(0, 0)
        self.say(f"{text[:1].upper()}{text[1:]}…")
        self._description, self._updated = f"MoEC: {text}", 0.0
        self._opening = True
        QTimer.singleShot(0, self._open)

    def _open(self) -> None:
        if not self._opening:  # the job ended first
            return
        self._opening = False
        job = self._job
        activity = progress(total=0, desc=self._description)  # napari runs the event loop in here
        if job != self._job:  # and the job ended in there
            activity.close()
            return
        self.activity = activity

    @property
    def running(self) -> bool:
        return self._opening or self.activity is not None

    def stage(self, text: str) -> None:
        """A stage with no measure of progress: both bars indeterminate. (Nothing once the job is
        over: a worker's last words may arrive after its error.)"""
        if not self.running:
            return
        if self.activity is None:  # not open yet: it opens with this text
            self._description = f"MoEC: {text}"
            self.bar.setRange(0, 0)
            self.say(f"{text[:1].upper()}{text[1:]}…")
            return
        # The status first: napari's activity dock may run the event loop while it redraws, and the
        # job's end can arrive in there.
        self.bar.setRange(0, 0)
        self.say(f"{text[:1].upper()}{text[1:]}…")
        activity = self.activity
        activity.total = 0
        self._describe(activity, f"MoEC: {text}")

    def training(self, p: Progress, choice: str = "") -> None:
        if not self.running:
            return
        value = int(STEPS * min(1.0, max(0.0, p.fraction)))
        if self.bar.maximum() == 0:
            self.bar.setRange(0, STEPS)
        self.bar.setValue(value)
        self.say(training_text(p, choice))
        activity = self.activity  # the event loop may run (and end the job) in the calls below
        if activity is None:
            return
        now = time.monotonic()
        if activity.total != STEPS:
            activity.total = STEPS
        elif now - self._updated < ACTIVITY_EVERY:
            return
        self._updated = now
        self._describe(activity, f"MoEC: {choice if p.trying and choice else 'training'}")
        if self._ended(activity):  # the event loop ran in there, and the job ended
            return
        activity.update(value - activity.n)

    def _ended(self, activity: progress) -> bool:
        """Whether `activity` is no longer this job's bar."""
        return self.activity is not activity

    def _describe(self, activity: progress, text: str) -> None:
        if text != self._description:
            self._description = text
            activity.set_description(text)

    def finish(self, *, done: bool = True) -> None:
        """The job is over: the bar full (`done`: a result) or empty (an error), the activity closed."""
        self.bar.setRange(0, STEPS)
        self.bar.setValue(STEPS if done else 0)
        self._opening = False
        self._job += 1
        if self.activity is not None:
            self.activity.close()
            self.activity = None
