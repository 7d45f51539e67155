"""The stage schedule of a run: which stage a step trains in, at what learning rate, as a pure
function of the share of the budget done (codec.fit.train's module text describes the stages)."""

from __future__ import annotations

from dataclasses import dataclass

from codec.settings import TrainConfig

STAGES = ("router", "joint", "final")
#: The router stage never takes more than this share of a time budget.
ROUTER_TIME_SHARE = 0.1
#: A continued run restarts its learning rate lower: the model is already near a minimum.
CONTINUE_LR_FACTOR = 0.3


@dataclass(frozen=True)
class Point:
    """What the schedule says for the next step."""

    stage: str
    lr: float
    decay_from: float  # the fraction the learning rate decays from (where the router stage ended)
    cubic: bool  # the latent grids are read cubically from here on
    latent_qat: bool  # the latents train through their quantization from here on (joint stage)
    latent_rounding: bool  # that quantization is their rounding, not noise over their step


@dataclass(frozen=True)
class Schedule:
    """One run's schedule: its router steps, the kind of its budget, and the configuration's shares."""

    router_steps: int  # the router stage's steps (0: none)
    by_steps: bool  # the budget is steps, not minutes
    lr: float  # the reconstruction stages' first learning rate
    pretrain_lr: float
    lr_decay: float  # the learning rate's factor over the reconstruction stages
    final_fraction: float
    cubic_from: float
    latent_qat_from: float
    latent_rounding_from: float

    @classmethod
    def for_run(cls, config: TrainConfig, *, steps: int | None, fresh: bool, has_router: bool) -> Schedule:
        """The schedule of a run of `steps` (None: a timed run); `fresh`: the model has not trained
        yet (only a fresh learned partition has a router stage, and a continued run starts lower)."""
        router_steps = 0
        if fresh and config.router_pretraining and has_router:
            router_steps = config.pretrain_steps if steps is None else min(config.pretrain_steps, steps // 3)
        return cls(
            router_steps,
            steps is not None,
            config.lr * (1.0 if fresh else CONTINUE_LR_FACTOR),
            config.pretrain_lr,
            config.lr_decay,
            config.final_fraction,
            config.cubic_from,
            config.latent_qat_from,
            config.latent_rounding_from,
        )

    def at(self, fraction: float, steps_done: int, decay_from: float) -> Point:
        """The next step of a run that has done `steps_done` steps and `fraction` of its budget;
        `decay_from`: the last point's."""
        if self.in_router_stage(fraction, steps_done):
            stage, lr, decay_from = "router", self.pretrain_lr, fraction
        else:
            stage = "joint" if fraction < 1.0 - self.final_fraction else "final"
            lr = self.lr * self.lr_decay ** ((fraction - decay_from) / (1.0 - decay_from))
        return Point(
            stage,
            lr,
            decay_from,
            fraction >= self.cubic_from,
            fraction >= self.latent_qat_from,
            fraction >= self.latent_rounding_from,
        )

    def in_router_stage(self, fraction: float, steps_done: int) -> bool:
        """Whether the next step is one of the router's: its steps are counted, and in a timed run
        they also end at ROUTER_TIME_SHARE of the time. A timed run's first step is the router's
        whatever the clock says, so that a budget shorter than a step still ends in the stage every
        run starts with, not in whichever the scheduler's delay before the first reading picked."""
        if steps_done >= self.router_steps:
            return False
        return self.by_steps or steps_done == 0 or fraction < ROUTER_TIME_SHARE
