"""pipeline.Trial, the choice of a model among candidates, from figures given to it: no training."""

from __future__ import annotations

import pytest

from codec import pipeline
from codec.fit.budget import Budget
from codec.io.phantom import make_phantom
from codec.pipeline.trial import Candidate, Trial, candidates_for
from codec.settings import AUTO_EXPERTS, AUTO_LATENT_BITS, TrainConfig


@pytest.fixture(scope="module")
def candidates() -> list[Candidate]:
    """Each number of experts at each latent rate, planned (not trained) on a small phantom."""
    volume, _ = make_phantom((32, 28, 16))
    settings = pipeline.Settings(ratio=12, latent_bits=None)
    return candidates_for(volume, settings.candidates(3), TrainConfig(steps=10), roi=False)


def figures(candidates: list[Candidate], psnr: dict[tuple[int, float], float], steps: int = 0) -> list[Candidate]:
    """Fresh copies of the candidates with the given PSNR and trial steps."""
    return [
        Candidate(c.settings, c.plan, psnr=psnr.get((c.experts, c.latent_bits)), trial_steps=steps, name=c.name)
        for c in candidates
    ]


def test_the_rounds_try_each_number_of_experts_then_the_kept_one_at_the_other_rates(candidates):
    trial = Trial(candidates, share=0.15)
    first = trial.rounds()
    assert [(c.experts, c.latent_bits) for c in first] == [(n, AUTO_LATENT_BITS[0]) for n in AUTO_EXPERTS]
    kept = first[-1]
    assert [(c.experts, c.latent_bits) for c in trial.rounds(kept)] == [(kept.experts, AUTO_LATENT_BITS[1])]
    assert trial.text() == (
        f"trying 4 experts and one network at {AUTO_LATENT_BITS[0]:g} bits per latent, then the "
        f"kept number at {AUTO_LATENT_BITS[1]:g}, for 15% of the budget each; the best trains on"
    )
    assert Trial(candidates[:1], share=0.15).text() == ""


def test_the_best_file_is_kept_and_said(candidates):
    tried = figures(candidates, {(4, AUTO_LATENT_BITS[0]): 30.5, (1, AUTO_LATENT_BITS[0]): 31.25})[:2]
    trial = Trial(tried, share=0.15)
    kept = trial.best(tried)
    assert kept.experts == 1
    assert trial.note(tried, kept) == (
        f"tried {tried[0].name} 30.50 dB, {tried[1].name} 31.25 dB after 15% of the "
        f"budget each (PSNR of the file on a sample of voxels); kept {kept.name}"
    )
    assert trial.note([kept], kept) == ""
    unmeasured = figures(candidates, {(1, AUTO_LATENT_BITS[0]): -1e9})[:2]  # a candidate not measured loses
    assert trial.best(unmeasured).experts == 1


def test_a_step_budget_is_shared_by_the_trials_and_the_kept_one_gets_the_rest(candidates):
    trial = Trial(candidates, share=0.15)
    budget = Budget(steps=200)
    assert trial.each(budget) == 30.0
    # Three models decide (two numbers of experts, then the kept one's other rate): two trials are others'.
    assert trial.first_budget(budget) == Budget(steps=140)
    tried = figures(candidates, {}, steps=40)[:3]
    assert trial.spent(budget, tried) == 120.0
    assert trial.rest(budget, tried, kept=tried[1]) == Budget(steps=120)
    assert trial.spent(budget, tried, but=tried[1]) == 80.0
    timed = Budget(minutes=2.0)
    assert trial.first_budget(timed).minutes == pytest.approx((120 - 2 * 18) / 60)


def test_a_trial_is_over_after_its_share_past_the_router_stage(candidates):
    trial = Trial(candidates, share=0.15)
    budget = Budget(steps=200)
    assert not trial.over(budget, None, 150.0)  # still in the router stage: not counted
    assert not trial.over(budget, 10.0, 39.0)
    assert trial.over(budget, 10.0, 40.0)
