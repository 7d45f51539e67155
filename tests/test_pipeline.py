"""pipeline.Compression, the one way every front end makes a file: plan first, runs that stop and
continue, the bytes with their notes, the measurement on the bytes as written."""

from __future__ import annotations

import pytest

from codec import pack, pipeline
from codec.errors import BudgetError, MoecError
from codec.phantom import make_phantom
from codec.train import TrainConfig

from .training import mean_prediction_psnr

SETTINGS = pipeline.Settings(ratio=12, experts=4)


def test_a_session_trains_in_runs_stops_on_request_and_lands_in_its_window():
    volume, _ = make_phantom((32, 28, 16))
    session = pipeline.Compression(volume, SETTINGS, TrainConfig(steps=150, batch_size=2048))
    seen = [p.step for p in session.run(should_stop=lambda: session.fitter.steps_run >= 60)]
    assert seen == list(range(1, 61))  # stopped where asked, the progress of every step yielded
    list(session.run(steps=90))  # a second run continues the same model
    made = session.encode()
    assert made.steps == 150 and sum(made.stages) == 150 and made.notes == ()
    assert session.plan.lower_bytes <= len(made.data) <= session.plan.upper_bytes
    evaluation = session.evaluate(pack.decode(made.data))
    assert evaluation.ratio == pytest.approx(volume.raw_bytes / len(made.data))
    assert evaluation.quality.psnr > mean_prediction_psnr(volume) + 3 and evaluation.roi is None


def test_nothing_is_encoded_before_the_first_step_and_an_impossible_plan_fails_first():
    volume, _ = make_phantom((32, 28, 16))
    session = pipeline.Compression(volume, SETTINGS, TrainConfig(steps=10))
    with pytest.raises(MoecError, match="before the first training step"):
        session.encode()
    with pytest.raises(BudgetError):
        pipeline.Compression(volume, pipeline.Settings(ratio=1e6), TrainConfig(steps=10))
