"""pipeline.Compression, the one way every front end makes a file: plan first, runs that stop and
continue, the bytes with their notes, the measurement on the bytes as written."""

from __future__ import annotations

import pytest

from codec import pipeline
from codec.errors import MoecError, RatioError
from codec.format import moecfile
from codec.io.phantom import make_phantom
from codec.settings import AUTO_EXPERTS, AUTO_LATENT_BITS, TrainConfig

from .training import mean_prediction_psnr

SETTINGS = pipeline.Settings(ratio=12, experts=4)


def test_a_session_trains_in_runs_stops_on_request_and_lands_in_its_window():
    volume, _ = make_phantom((32, 28, 16))
    compression = pipeline.Compression(volume, SETTINGS, TrainConfig(steps=150, batch_size=2048))
    seen = [p.step for p in compression.run(should_stop=lambda: compression.fitter.steps_run >= 60)]
    assert seen == list(range(1, 61))  # stopped where asked, the progress of every step yielded
    list(compression.run(steps=90))  # a second run continues the same model
    made = compression.encode()
    assert made.steps == 150 and sum(made.stages) == 150 and made.notes == ()
    assert compression.plan.lower_bytes <= len(made.data) <= compression.plan.upper_bytes
    evaluation = compression.evaluate(moecfile.from_bytes(made.data))
    assert evaluation.ratio == pytest.approx(volume.raw_bytes / len(made.data))
    assert evaluation.quality.psnr > mean_prediction_psnr(volume) + 3 and evaluation.roi is None


def test_nothing_is_encoded_before_the_first_step_and_an_impossible_plan_fails_first():
    volume, _ = make_phantom((32, 28, 16))
    compression = pipeline.Compression(volume, SETTINGS, TrainConfig(steps=10))
    with pytest.raises(MoecError, match="before the first training step"):
        compression.encode()
    with pytest.raises(RatioError):
        pipeline.Compression(volume, pipeline.Settings(ratio=1e6), TrainConfig(steps=10))


def test_an_open_number_of_experts_tries_each_candidate_and_trains_the_better_on():
    """Settings.experts None: a trial of settings.AUTO_EXPERTS on the latent grid, each for its share
    of the steps past its router stage, the better kept (by its file's PSNR) and trained on where it
    paused for the budget less the others' trials, reproducibly."""
    volume, _ = make_phantom((32, 28, 16))
    config = TrainConfig(steps=200, batch_size=2048, trial_share=0.15)

    def compress():
        compression = pipeline.Compression(volume, pipeline.Settings(ratio=12), config)
        progress = list(compression.run())
        return compression, progress, compression.encode()

    compression, progress, made = compress()
    assert [c.plan.model.experts for c in compression.candidates] == list(AUTO_EXPERTS)
    assert all(c.plan.model.encoder == "grid" for c in compression.candidates)
    assert compression.chosen is not None and compression.chosen in compression.candidates
    kept = compression.chosen
    others = [c for c in compression.candidates if c is not kept]
    # The trial: each candidate's own steps until its share, named; then the kept one goes on.
    trying = [p for p in progress if p.trying]
    assert {p.trying for p in trying} == {c.name for c in compression.candidates}
    assert all(p.trying == "" for p in progress[len(trying) :])
    # Each trial is 15% of the steps past the router's; the kept model gets what the others left.
    assert made.steps + sum(c.trial_steps for c in others) == 200 and kept.fitter.steps_run == made.steps
    assert {c.plan.model.experts: c.trial_steps for c in compression.candidates}[1] == 30  # no router stage
    assert all(c.fitter is None for c in others)  # the others' models are let go
    assert progress[-1].fraction == pytest.approx(1.0)
    assert all(b.fraction >= a.fraction - 1e-9 for a, b in zip(progress, progress[1:]))  # the bar never goes back
    # The clock counts the whole compression's training: it never goes back when another model
    # takes over, and it ends past the time the models not kept trained.
    assert all(b.seconds >= a.seconds for a, b in zip(progress, progress[1:]))
    assert progress[-1].seconds > sum(c.trial_seconds for c in others) > 0
    assert kept.psnr == max(c.psnr for c in compression.candidates)
    assert any(note.startswith("tried ") and note.endswith(f"kept {kept.name}") for note in made.notes)
    assert moecfile.from_bytes(made.data).meta.model.experts == kept.plan.model.experts
    assert compression.plan.lower_bytes <= len(made.data) <= compression.plan.upper_bytes
    assert compress()[2].data == made.data  # a step budget makes the same file again


def test_an_open_rate_is_tried_for_the_kept_number_of_experts():
    """Settings.experts and latent_bits None: a trial in two rounds on the latent grid, each model
    for its share of the steps past its router stage: settings.AUTO_EXPERTS at the first of
    AUTO_LATENT_BITS, then the kept number at the second rate; the best kept (by its file's PSNR)
    and trained on where it paused for the budget less the others' trials, reproducibly."""
    volume, _ = make_phantom((32, 28, 16))
    config = TrainConfig(steps=200, batch_size=2048, trial_share=0.15)

    def compress():
        compression = pipeline.Compression(volume, pipeline.Settings(ratio=12, latent_bits=None), config)
        progress = list(compression.run())
        return compression, progress, compression.encode()

    compression, progress, made = compress()
    first = compression.rounds()
    assert [c.experts for c in first] == list(AUTO_EXPERTS) and {c.latent_bits for c in first} == {AUTO_LATENT_BITS[0]}
    assert len(compression.candidates) == len(AUTO_EXPERTS) * len(AUTO_LATENT_BITS)
    assert all(c.plan.model.encoder == "grid" for c in compression.candidates)
    # A rate's plan holds as many more latents as it spends fewer bits on each.
    one = {c.latent_bits: c.plan.model.latent_count() for c in compression.candidates if c.experts == 1}
    assert one[AUTO_LATENT_BITS[1]] > 1.5 * one[AUTO_LATENT_BITS[0]]
    trained = [c for c in compression.candidates if c.trial_steps > 0]
    first_kept = max(first, key=lambda c: c.psnr)
    assert trained == first + compression.rounds(first_kept)  # three models decide, not four
    assert [c.latent_bits for c in compression.rounds(first_kept)] == [AUTO_LATENT_BITS[1]]
    assert {c.experts for c in compression.rounds(first_kept)} == {first_kept.experts}
    kept = compression.chosen
    assert kept is not None and kept in trained
    others = [c for c in trained if c is not kept]
    # The trial: each candidate's own steps until its share, named; then the kept one goes on.
    trying = [p for p in progress if p.trying]
    assert {p.trying for p in trying} == {c.name for c in trained}
    assert all(p.trying == "" for p in progress[len(trying) :])
    # Each trial is 15% of the steps past the router's; the kept model gets what the others left.
    assert made.steps + sum(c.trial_steps for c in others) == 200 and kept.fitter.steps_run == made.steps
    assert all(c.trial_steps == 30 for c in trained if c.experts == 1)  # no router stage
    assert all(c.fitter is None for c in compression.candidates if c is not kept)  # the others' models are let go
    assert progress[-1].fraction == pytest.approx(1.0)
    assert all(b.fraction >= a.fraction - 1e-9 for a, b in zip(progress, progress[1:]))  # the bar never goes back
    assert kept.psnr == max(c.psnr for c in trained)
    tried = [note for note in made.notes if note.startswith("tried ")]
    assert len(tried) == 2 and tried[1].endswith(f"kept {kept.name}")
    assert compression.trial_text().startswith(
        "trying 4 experts and one network at 1.5 bits per latent, then the kept number at 0.75"
    )
    stored = moecfile.from_bytes(made.data).meta.model
    assert (stored.experts, stored.grid_finest) == (kept.experts, kept.plan.model.grid_finest)
    assert compression.plan.lower_bytes <= len(made.data) <= compression.plan.upper_bytes
    assert compress()[2].data == made.data  # a step budget makes the same file again


def test_a_fixed_number_of_experts_or_a_named_rate_leaves_the_rate_untried():
    volume, _ = make_phantom((32, 28, 16))
    fixed = pipeline.Compression(
        volume, pipeline.Settings(ratio=12, experts=1, encoder="grid", latent_bits=None), TrainConfig(steps=10)
    )
    assert [c.latent_bits for c in fixed.candidates] == [AUTO_LATENT_BITS[0]] and fixed.trial_text() == ""
    named = pipeline.Compression(volume, pipeline.Settings(ratio=12, latent_bits=1.0), TrainConfig(steps=10))
    assert {c.latent_bits for c in named.candidates} == {1.0}
    assert [c.experts for c in named.candidates] == list(AUTO_EXPERTS)
    assert named.trial_text().startswith("trying 4 experts and one network, for 15%")


def test_a_trial_stopped_early_keeps_the_better_of_those_that_trained():
    volume, _ = make_phantom((32, 28, 16))
    compression = pipeline.Compression(volume, pipeline.Settings(ratio=12), TrainConfig(steps=200, batch_size=2048))
    first = compression.candidates[0]
    list(compression.run(should_stop=lambda: compression.fitter.steps_run >= 10))
    assert compression.chosen is None and first.fitter.steps_run == 10
    made = compression.encode()
    assert compression.chosen is first and made.steps == 10


def test_a_stop_during_a_trial_waits_for_one_measure_not_the_round():
    """Each candidate is measured as its trial ends, and a Stop asked meanwhile is honoured before
    the next candidate trains (a Stop in the plugin waits for one measure, not a round's)."""
    volume, _ = make_phantom((32, 28, 16))
    config = TrainConfig(steps=200, batch_size=2048, trial_share=0.15)
    compression = pipeline.Compression(volume, pipeline.Settings(ratio=12), config)
    first, second = compression.candidates
    # Stop is asked after the first candidate's last trial step, while it is measured.
    progress = list(compression.run(should_stop=lambda: first.psnr is not None))
    assert first.psnr is not None and second.fitter is None
    assert {p.trying for p in progress} == {first.name}
    made = compression.encode()
    assert compression.chosen is first and made.steps == first.trial_steps
    # A Stop asked while the candidate is measured abandons the measure; `encode` measures it then.
    compression = pipeline.Compression(volume, pipeline.Settings(ratio=12), config)
    first, second = compression.candidates
    list(compression.run(should_stop=lambda: first.trial_steps > 0))
    assert first.psnr is None and second.fitter is None
    made = compression.encode()
    assert compression.chosen is first and first.psnr is not None and made.steps == first.trial_steps


def test_a_ratio_only_one_network_reaches_needs_no_trial():
    volume, _ = make_phantom((32, 28, 16))
    highest = {}
    for experts in AUTO_EXPERTS:
        with pytest.raises(RatioError) as refused:
            pipeline.make_plan(volume, pipeline.Settings(ratio=1e6, experts=experts, encoder="grid"))
        highest[experts] = refused.value.highest
    assert highest[1] > highest[4]  # one network is smaller: it reaches further
    ratio = (highest[4] + highest[1]) / 2
    compression = pipeline.Compression(volume, pipeline.Settings(ratio=ratio), TrainConfig(steps=30, batch_size=1024))
    assert [c.plan.model.experts for c in compression.candidates] == [1] and compression.chosen is not None
    # With the rate left open too, only the rates are tried.
    rates = pipeline.Compression(
        volume, pipeline.Settings(ratio=ratio, latent_bits=None), TrainConfig(steps=30, batch_size=1024)
    )
    assert [(c.experts, c.latent_bits) for c in rates.candidates] == [(1, b) for b in AUTO_LATENT_BITS]
    assert rates.trial_text().startswith("trying one network at 1.5 bits per latent, then the kept number at 0.75")
    with pytest.raises(RatioError) as refused:
        pipeline.Compression(volume, pipeline.Settings(ratio=highest[1] * 1.5), TrainConfig(steps=10))
    assert refused.value.highest == pytest.approx(highest[1], rel=0.03)  # the furthest any candidate reaches


def test_the_trials_candidates_draw_from_one_sampler():
    """The candidates train on one volume with one configuration, so the second reuses the first's
    voxel sampler instead of building its strata again."""
    volume, _ = make_phantom((32, 28, 16))
    compression = pipeline.Compression(volume, pipeline.Settings(ratio=12), TrainConfig(steps=200, batch_size=2048))
    run = compression.run()
    first, second = compression.candidates
    for progress in run:
        if progress.trying == second.name:
            break
    run.close()
    assert first.fitter is not None and second.fitter is not None
    assert second.fitter.sampler is first.fitter.sampler


def test_a_file_whose_floor_never_fits_says_so(monkeypatch):
    """Rate control makes room for the floor's header bytes a few times; a file it never fits in
    is written without a floor, and told (Compressed.notes), not left silent."""
    from codec.pipeline import rate

    volume, _ = make_phantom((32, 28, 16))
    compression = pipeline.Compression(volume, pipeline.Settings(ratio=12, experts=1), TrainConfig(steps=20))
    compression.train()
    assemble = moecfile.assemble

    def floor_too_big(meta, payload):  # a floor's header field that never fits below the window's top
        return assemble(meta, payload) + (b"\0" * compression.plan.upper_bytes if meta.floor is not None else b"")

    monkeypatch.setattr(rate, "FLOOR_TRIES", 1)
    monkeypatch.setattr(rate, "_floor_of", lambda volume, meta, payload: float(meta.vmin) + 1.0)
    monkeypatch.setattr(rate.moecfile, "assemble", floor_too_big)
    made = compression.encode()
    monkeypatch.undo()
    assert moecfile.from_bytes(made.data).meta.floor is None and len(made.data) <= compression.plan.upper_bytes
    assert any("no floor" in note for note in made.notes)
