"""A training budget: steps (reproducible) or wall-clock minutes, and the clock a timed run reads.

`Budget` is the one place that knows which kind a budget is: how much of it a run has used, the
share of it some amount is, the part of it left after others spent theirs, and how a user reads it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    """Steps or minutes of training; steps win when both are given (a step budget is reproducible)."""

    steps: int | None = None
    minutes: float | None = None

    def __post_init__(self) -> None:
        if self.steps is None and self.minutes is None:
            raise ValueError("a budget needs steps or minutes")

    @classmethod
    def of(cls, steps: int | None, minutes: float | None) -> Budget:
        """The budget a run was asked for: steps when given, else minutes (a missing one read as 0)."""
        return cls(steps=steps) if steps is not None else cls(minutes=minutes or 0.0)

    @property
    def by_steps(self) -> bool:
        return self.steps is not None

    @property
    def total(self) -> float:
        """The budget in its own unit: steps, or seconds."""
        return float(self.steps) if self.steps is not None else 60.0 * (self.minutes or 0.0)

    def used(self, steps_done: int, seconds: float) -> float:
        """What `steps_done` steps in `seconds` take of the budget, in its unit (`total`'s)."""
        return float(steps_done) if self.steps is not None else seconds

    def fraction(self, steps_done: int, seconds: float) -> float:
        """The share of the budget `steps_done` steps in `seconds` used (above 1 past its end)."""
        if self.steps is not None:
            return steps_done / self.steps
        return seconds / (60.0 * (self.minutes or 0.0))

    def part(self, amount: float) -> Budget:
        """A budget of the same kind holding `amount` of the unit (`total`'s); at least one step."""
        if self.steps is not None:
            return Budget(steps=max(1, round(amount)))
        return Budget(minutes=amount / 60.0)

    def text(self) -> str:
        """The budget as a user reads it: "200 steps", "5 minutes"."""
        if self.steps is not None:
            return f"{self.steps:,} step" + ("" if self.steps == 1 else "s")
        return f"{self.minutes:g} minute" + ("" if self.minutes == 1 else "s")

    def key(self) -> str:
        """The budget as a cohort manifest's settings key names it: "steps=200", "minutes=5"."""
        return f"steps={self.steps}" if self.steps is not None else f"minutes={self.minutes:g}"


class Clock:
    """The seconds a run has trained, which stop while it is paused (another model trains meanwhile)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self._paused: float | None = None

    def elapsed(self) -> float:
        return (self._paused or time.perf_counter()) - self.start

    def pause(self) -> None:
        if self._paused is None:
            self._paused = time.perf_counter()

    def resume(self) -> None:
        """Go on as if no time had passed since `pause`."""
        if self._paused is not None:
            self.start += time.perf_counter() - self._paused
            self._paused = None
