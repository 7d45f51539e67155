"""The byte budget is the contract: the written file's ratio lies in [R, 1.05 R]."""

from __future__ import annotations

import pytest

from codec import pipeline
from codec.budget import fit_to_window
from codec.errors import BudgetError
from codec.train import TrainConfig

from .training import train

QUICK = TrainConfig(steps=30, batch_size=2048)


@pytest.mark.parametrize("settings", [
    pipeline.Settings(ratio=8, experts=8),
    pipeline.Settings(ratio=20, experts=4, top_k=2),
    pipeline.Settings(ratio=40, experts=1),
    pipeline.Settings(ratio=12, experts=8, partition="blocks"),
    pipeline.Settings(ratio=12, experts=4, granularity="channel"),
    pipeline.Settings(ratio=10, experts=4, bits=16),
    pipeline.Settings(ratio=25, experts=2, bits=6),
], ids=lambda s: f"{s.ratio:g}x-{s.experts}{s.partition[0]}-k{s.top_k}-{s.bits}b-{s.granularity[0]}")
def test_the_written_file_meets_the_ratio_within_5_percent(phantom, settings):
    volume, _ = phantom
    fitter, plan = train(volume, settings, QUICK)
    data = pipeline.encode(fitter, plan)
    ratio = volume.raw_bytes / len(data)
    assert settings.ratio <= ratio <= 1.05 * settings.ratio


def test_an_unreachable_ratio_is_refused_with_the_highest_reachable_one(phantom):
    volume, _ = phantom
    with pytest.raises(BudgetError, match="highest reachable ratio is about") as error:
        pipeline.plan(volume, pipeline.Settings(ratio=5000))
    highest = error.value.highest
    assert 20 < highest < 5000
    plan = pipeline.plan(volume, pipeline.Settings(ratio=highest * 0.97))
    assert plan.upper_bytes >= plan.estimated_bytes


def test_a_ratio_below_what_any_network_needs_is_refused(phantom):
    volume, _ = phantom
    with pytest.raises(BudgetError, match="lowest reachable"):
        pipeline.plan(volume, pipeline.Settings(ratio=0.001))


def test_fit_to_window_takes_the_largest_size_that_fits():
    sizes = lambda m: int(10_000 / m)  # noqa: E731
    m = fit_to_window(sizes, 4000)
    assert 3990 <= sizes(m) <= 4000
    with pytest.raises(BudgetError):
        fit_to_window(lambda m: 10_000, 4000)
