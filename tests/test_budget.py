"""codec.fit.budget.Budget: steps or minutes, what is used of it, its parts and its text."""

from __future__ import annotations

import pytest

from codec.fit.budget import Budget


def test_a_step_budget_counts_steps_and_ignores_the_clock():
    budget = Budget(steps=200, minutes=5.0)  # steps win: they are reproducible
    assert budget.by_steps and budget.total == 200.0
    assert budget.fraction(50, 1e6) == 0.25 and budget.used(50, 1e6) == 50.0
    assert budget.part(139.6) == Budget(steps=140) and budget.part(0.2) == Budget(steps=1)
    assert budget.text() == "200 steps" and Budget(steps=1).text() == "1 step"


def test_a_timed_budget_counts_seconds():
    budget = Budget(minutes=2.0)
    assert not budget.by_steps and budget.total == 120.0
    assert budget.fraction(10**6, 30.0) == 0.25 and budget.used(10**6, 30.0) == 30.0
    assert budget.part(90.0) == Budget(minutes=1.5)
    assert budget.text() == "2 minutes" and Budget(minutes=1).text() == "1 minute"


def test_a_budget_needs_steps_or_minutes():
    with pytest.raises(ValueError):
        Budget()
    assert Budget.of(None, None) == Budget(minutes=0.0) and Budget.of(5, 3.0) == Budget(steps=5)
