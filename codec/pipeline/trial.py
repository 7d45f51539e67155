"""The choice of a model: when the settings leave the number of experts (or the latents' rate) open,
several candidates train for a share of the budget each and the one whose file is best trains on.

`Trial` decides, from figures it is given: which candidates train in which round, for how much of
the budget, when a candidate's trial is over, which is kept, and what the kept one has left. The
training and the measuring are the Compression's (codec.pipeline.compression).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np

from codec.errors import RatioError
from codec.fit.budget import Budget
from codec.fit.sizing import Plan
from codec.fit.train import Fitter, Progress, TrainConfig
from codec.io.volume import Volume
from codec.pipeline.planning import make_plan
from codec.settings import Settings


@dataclass(eq=False)
class Candidate:
    """One configuration a compression tries: its settings, its plan, and once it has trained, its
    Fitter and its first run (a generator suspended while the others try)."""

    settings: Settings
    plan: Plan
    fitter: Fitter | None = None
    run: Generator[Progress, None, None] | None = None
    psnr: float | None = None  # of its file at the end of its trial, on a sample of voxels
    trial_steps: int = 0  # steps it trained in its trial
    trial_seconds: float = 0.0  # seconds it trained in its trial, pauses left out
    name: str = ""  # its number of experts, and its latent rate where the rates differ (`candidates_for`)

    @property
    def experts(self) -> int:
        return self.plan.model.experts

    @property
    def latent_bits(self) -> float:
        return self.plan.quant.latent_bits


def experts_text(n: int) -> str:
    return "one network" if n == 1 else f"{n} experts"


def candidates_for(volume: Volume, options: Sequence[Settings], train: TrainConfig, roi: bool) -> list[Candidate]:
    """The candidates whose ratio can be met, named; RatioError (the one naming the highest
    reachable ratio) when none can."""
    planned, refused = [], []
    for settings in options:
        try:
            planned.append(Candidate(settings, make_plan(volume, settings, train, roi=roi)))
        except RatioError as exc:
            refused.append(exc)
    if not planned:
        raise max(refused, key=lambda e: e.highest or 0.0)
    rates = len({c.latent_bits for c in planned}) > 1
    for c in planned:
        c.name = experts_text(c.experts) + (f" at {c.latent_bits:g} bits per latent" if rates else "")
    return planned


class Trial:
    """The rounds of a choice among candidates, each trained for `share` of the budget."""

    def __init__(self, candidates: Sequence[Candidate], share: float):
        self.candidates = list(candidates)
        self.share = share

    def rounds(self, kept: Candidate | None = None) -> list[Candidate]:
        """The candidates a round trains: the first round (`kept` None) each number of experts at
        the first candidate's latent rate; the second the kept one's number at the other rates.
        Three models trained instead of the four pairs, on the guess that the number of experts
        chosen at one rate suits the other."""
        if kept is None:
            first = self.candidates[0].latent_bits
            return [c for c in self.candidates if c.latent_bits == first]
        return [c for c in self.candidates if c.experts == kept.experts and c.latent_bits != kept.latent_bits]

    def text(self) -> str:
        """What the trial tries, in a sentence for a user ("" where there is one candidate)."""
        if len(self.candidates) == 1:
            return ""
        first = self.rounds()
        text = "trying " + " and ".join(experts_text(c.experts) for c in first)
        rates = sorted({c.latent_bits for c in self.candidates} - {first[0].latent_bits}, reverse=True)
        if rates:
            text += f" at {first[0].latent_bits:g} bits per latent, then the kept number at " + " and ".join(
                f"{r:g}" for r in rates
            )
        return text + f", for {100 * self.share:g}% of the budget each; the best trains on"

    def each(self, budget: Budget) -> float:
        """Each candidate's trial, in the budget's unit."""
        return self.share * budget.total

    def first_budget(self, budget: Budget) -> Budget:
        """The budget a candidate's run is created for: the whole less the others' trials (set to
        the whole less what the others really spent once the choice is made, `rest`)."""
        first = self.rounds()
        tries = len(first) + len(self.rounds(first[0]))
        return budget.part(budget.total - (tries - 1) * self.each(budget))

    def over(self, budget: Budget, started: float | None, used: float) -> bool:
        """Whether a candidate's trial is over: `used` of the budget by its run, `started` where its
        reconstruction training began (None: still in its router stage, which is not counted)."""
        return started is not None and used - started >= self.each(budget)

    @staticmethod
    def spent(budget: Budget, tried: Sequence[Candidate], but: Candidate | None = None) -> float:
        """What the candidates `tried` spent of the budget in their trials (less `but`'s)."""
        return sum(budget.used(c.trial_steps, c.trial_seconds) for c in tried if c is not but)

    def rest(self, budget: Budget, tried: Sequence[Candidate], kept: Candidate) -> Budget:
        """The kept candidate's budget: the whole less what the others spent."""
        return budget.part(budget.total - self.spent(budget, tried, but=kept))

    @staticmethod
    def best(trained: Sequence[Candidate]) -> Candidate:
        """The candidate whose file measured best (a candidate not measured counts as the worst)."""
        return max(trained, key=lambda c: c.psnr if c.psnr is not None else -np.inf)

    def note(self, trained: Sequence[Candidate], kept: Candidate) -> str:
        """The choice, in a sentence for a user ("" where there was none)."""
        if len(trained) < 2:
            return ""
        tried = ", ".join(f"{c.name} {c.psnr:.2f} dB" for c in trained)
        return (
            f"tried {tried} after {100 * self.share:g}% of the budget each "
            f"(PSNR of the file on a sample of voxels); kept {kept.name}"
        )
