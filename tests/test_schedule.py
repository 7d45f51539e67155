"""codec.fit.schedule: the stage and learning rate of each step, a pure function of the share done."""

from __future__ import annotations

import pytest

from codec.fit.schedule import CONTINUE_LR_FACTOR, ROUTER_TIME_SHARE, Schedule
from codec.settings import TrainConfig

CONFIG = TrainConfig(
    steps=1000,
    lr=1e-2,
    lr_decay=0.1,
    final_fraction=0.2,
    pretrain_steps=300,
    cubic_from=0.4,
    latent_qat_from=0.5,
    latent_rounding_from=0.7,
)


def test_a_step_run_goes_router_joint_final_with_the_rate_decaying_after_the_router():
    schedule = Schedule.for_run(CONFIG, steps=900, fresh=True, has_router=True)
    assert schedule.router_steps == 300  # at most a third of a step budget
    point = schedule.at(0.1, 90, 0.0)
    assert point.stage == "router" and point.lr == CONFIG.pretrain_lr and point.decay_from == 0.1
    joint = schedule.at(0.5, 450, 0.3)
    assert joint.stage == "joint" and joint.decay_from == 0.3 and joint.cubic and joint.latent_qat
    assert joint.lr == pytest.approx(1e-2 * 0.1 ** (0.2 / 0.7))
    final = schedule.at(0.85, 765, 0.3)
    assert final.stage == "final" and final.lr < joint.lr
    assert not schedule.at(0.35, 315, 0.3).cubic
    assert not joint.latent_rounding and schedule.at(0.75, 675, 0.3).latent_rounding


def test_the_latents_train_through_noise_until_the_final_stage_by_default():
    schedule = Schedule.for_run(TrainConfig(steps=1000), steps=1000, fresh=True, has_router=False)
    points = [schedule.at(f, int(1000 * f), 0.0) for f in (0.0, 0.5, 0.79, 0.81, 0.999)]
    assert all(p.latent_qat and not p.latent_rounding for p in points)
    assert [p.stage for p in points] == ["joint", "joint", "joint", "final", "final"]


def test_a_continued_run_or_a_model_without_router_has_no_router_stage():
    continued = Schedule.for_run(CONFIG, steps=200, fresh=False, has_router=True)
    assert continued.router_steps == 0 and continued.lr == CONFIG.lr * CONTINUE_LR_FACTOR
    assert continued.at(0.0, 0, 0.0).stage == "joint"
    assert Schedule.for_run(CONFIG, steps=900, fresh=True, has_router=False).router_steps == 0


def test_a_timed_router_stage_ends_at_its_time_share_but_always_takes_the_first_step():
    timed = Schedule.for_run(CONFIG, steps=None, fresh=True, has_router=True)
    assert timed.router_steps == CONFIG.pretrain_steps and not timed.by_steps
    assert timed.at(0.9, 0, 0.0).stage == "router"  # the first step, however late the clock
    assert timed.at(ROUTER_TIME_SHARE / 2, 5, 0.0).stage == "router"
    assert timed.at(ROUTER_TIME_SHARE, 5, 0.0).stage == "joint"
