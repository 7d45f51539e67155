"""One volume's compression: its candidates planned, trained in runs (with a trial when the settings
leave the model open), and the bytes with what a user should be told about them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np

from codec.decode.floor import apply_floor, choose_floor
from codec.decode.reconstruct import unfloored_values
from codec.errors import MoecError
from codec.fit.budget import Budget
from codec.fit.sizing import Plan
from codec.fit.train import Fitter, Progress, TrainConfig
from codec.format.moecfile import MoecFile
from codec.io.volume import Volume
from codec.pipeline.evaluation import Evaluation, evaluate
from codec.pipeline.planning import new_fitter
from codec.pipeline.rate import Interrupted, StopAsked, sample_voxels, sized_file, stop_if_asked, unfloored_file
from codec.pipeline.trial import Candidate, Trial, candidates_for
from codec.settings import Settings

#: Voxels a trial's file is measured on: enough for a PSNR that tells candidates apart reliably.
TRIAL_VOXELS = 1 << 17


@dataclass(frozen=True, eq=False)
class Compressed:
    """The bytes of a file made by a Compression, and what a user should be told about them."""

    data: bytes
    steps: int  # training steps run, all runs together
    stages: tuple[int, ...]  # of those, in the router, joint and final stages
    notes: tuple[str, ...]  # sentences for the user (a file smaller than asked, and why)


class Compression:
    """One volume's compression: the plan (RatioError here, before any work), training in one or
    more runs (each a generator of Progress, so a caller shows progress, stops or continues), and
    the bytes with their notes. Measuring the file is `evaluate`, on the bytes as written.

    Settings that leave the number of experts open (Settings.candidates) give several candidates,
    tried in rounds by the first run (codec.pipeline.trial): each number of experts at the first
    latent rate, then the kept number at each other rate. Each candidate trains for
    TrainConfig.trial_share of the budget; the one whose file is then the best trains on for the
    rest (its run goes on where it paused, as if the others had not run), so the budget, in minutes
    or steps, includes the choice.

    A Compression is driven from one thread (the plugin's worker): a GUI reads the Progress it
    yields, never its Fitter."""

    def __init__(
        self,
        volume: Volume,
        settings: Settings = Settings(),
        train: TrainConfig = TrainConfig(),
        roi: np.ndarray | None = None,
    ):
        if volume.dicom is not None and not settings.keep_identity:
            # The header is planned and written from this volume: without the patient, the file never holds it.
            volume = dataclasses.replace(volume, dicom=volume.dicom.deidentified())
        self.volume = volume
        self.roi = roi
        self.train_config = train
        self.candidates = candidates_for(volume, settings.candidates(len(volume.shape)), train, roi is not None)
        self.trial = Trial(self.candidates, train.trial_share)
        #: The candidate that trains from now on: the only one, or the one kept after the trial.
        self.chosen: Candidate | None = self.candidates[0] if len(self.candidates) == 1 else None
        self._current = self.candidates[0]  # the one training now (or last), before the choice
        self.notes: list[str] = []

    @property
    def plan(self) -> Plan:
        return (self.chosen or self._current).plan

    @property
    def fitter(self) -> Fitter:
        """The model trained so far: the kept candidate's, or before the choice the one training."""
        candidate = self.chosen or self._current
        if candidate.fitter is None:
            # The candidates train on one volume with one configuration: one sampler serves all.
            shared = next((c.fitter.sampler for c in self.candidates if c.fitter is not None), None)
            candidate.fitter = new_fitter(self.volume, candidate.plan, self.train_config, roi=self.roi, sampler=shared)
        return candidate.fitter

    def run(
        self, minutes: float | None = None, steps: int | None = None, should_stop: Callable[[], bool] | None = None
    ) -> Generator[Progress, None, None]:
        """Train for a budget (default: the TrainConfig's; a later run continues the model),
        yielding Progress after every step, until the budget ends or `should_stop()` says so. A
        generator closed early (Ctrl-C, a cancelled worker) leaves a model that encodes."""
        if steps is None and minutes is None:
            steps, minutes = self.train_config.steps, self.train_config.minutes
        budget = Budget.of(steps, minutes)
        total = budget.total
        spent = 0.0  # of the budget (its unit), by the candidates not kept
        # Progress.seconds counts this call's training, the trials of the models not kept included,
        # so that the clock a user reads ends near the budget asked for.
        others_seconds = 0.0
        if self.chosen is None:
            trial = yield from self._trial(budget, should_stop)
            if trial is None:
                return
            run, spent = trial
            others_seconds = sum(c.trial_seconds for c in self.candidates if c is not self.chosen)
        else:
            run = self.fitter.fit(minutes=minutes, steps=steps)
        scale = (total - spent) / total if total > 0 else 1.0
        try:
            for progress in run:
                yield dataclasses.replace(
                    progress,
                    fraction=min(1.0, spent / total + scale * progress.fraction),
                    seconds=others_seconds + progress.seconds,
                )
                if should_stop is not None and should_stop():
                    break
        finally:
            run.close()

    def rounds(self, kept: Candidate | None = None) -> list[Candidate]:
        """The candidates a trial round trains (Trial.rounds)."""
        return self.trial.rounds(kept)

    def trial_text(self) -> str:
        """What the trial tries, in a sentence for a user ("" where there is one candidate)."""
        return self.trial.text()

    def _trial(
        self, budget: Budget, should_stop: Callable[[], bool] | None
    ) -> Generator[Progress, None, tuple[Generator[Progress, None, None], float] | None]:
        """Train the candidates of each round (Trial.rounds) until each has had its share of the
        budget past its router stage (the learned partition's first, cheap steps are not counted
        against it: the candidates are compared on as much reconstruction training), keep the
        better of each round, and give the last kept the budget less what the others spent: (its
        run, the budget the others spent), or None when stopped first (`encode` then chooses among
        those that trained)."""
        trial, total = self.trial, budget.total
        first_budget = trial.first_budget(budget)
        tried: list[Candidate] = []  # those whose trial is over, in order

        def round_of(
            contenders: list[Candidate], kept: Candidate | None
        ) -> Generator[Progress, None, Candidate | None]:
            """Train each contender for its trial; the best of them and `kept`, or None when stopped."""
            for candidate in contenders:
                self._current = candidate
                before = trial.spent(budget, tried)
                before_seconds = sum(c.trial_seconds for c in self.candidates)
                candidate.run = self.fitter.fit(minutes=first_budget.minutes, steps=first_budget.steps)
                started: float | None = None  # where its reconstruction training began
                for progress in candidate.run:
                    used = budget.used(progress.step, progress.seconds)
                    yield dataclasses.replace(
                        progress,
                        fraction=min(1.0, (before + used) / total),
                        seconds=before_seconds + progress.seconds,
                        trying=candidate.name,
                    )
                    if should_stop is not None and should_stop():
                        return None
                    if progress.stage != "router" and started is None:
                        started = used - budget.used(1, 0.0)  # from before this step
                    if trial.over(budget, started, used):
                        break
                candidate.trial_steps = self.fitter.steps_run
                candidate.trial_seconds = self.fitter.run_seconds()
                tried.append(candidate)
                self.fitter.pause()
                # Measured now, one at a time and abandoned on a Stop (`encode` then measures it).
                self._measure(candidate, should_stop)
                if should_stop is not None and should_stop():
                    return None
            return self._best(([] if kept is None else [kept]) + contenders)

        try:
            kept = yield from round_of(trial.rounds(), None)
            second = trial.rounds(kept) if kept is not None else []
            if second:
                kept = yield from round_of(second, kept)
            if kept is None:
                return None
        except GeneratorExit:  # closed during the trial (Ctrl-C, a cancelled worker): `encode` chooses
            for candidate in self.candidates:
                if candidate.run is not None:
                    candidate.run.close()
                    candidate.run = None
            raise
        assert kept.fitter is not None and kept.run is not None
        self.chosen = kept
        kept.fitter.resume()
        kept.fitter.rebudget(trial.rest(budget, tried, kept))
        return kept.run, trial.spent(budget, tried, but=kept)

    def _choose(self) -> Candidate:
        """Keep the best of the candidates that trained (a trial stopped part way), for good."""
        trained = [c for c in self.candidates if c.fitter is not None and c.fitter.steps_run > 0]
        self.chosen = self._best(trained) if trained else self._current
        return self.chosen

    def _best(self, trained: list[Candidate]) -> Candidate:
        """The candidate of `trained` whose file is better now (each measured once, after its
        trial), said in a note; the others let go."""
        for candidate in trained:
            self._measure(candidate)
        kept = self.trial.best(trained)
        if note := self.trial.note(trained, kept):
            self.notes.append(note)
        for candidate in trained:
            if candidate is not kept:
                _let_go(candidate)
        return kept

    def _measure(self, candidate: Candidate, should_stop: StopAsked = None) -> None:
        """The candidate's PSNR on a sample of voxels, once (-inf where it diverged: it cannot be
        kept, and if none can, encode says why); left unmeasured when `should_stop()` says so."""
        if candidate.psnr is None:
            try:
                candidate.psnr = _trial_psnr(
                    self.volume, candidate, self.roi, self.train_config.roi_weight, should_stop
                )
            except Interrupted:
                pass
            except MoecError:
                candidate.psnr = -np.inf

    def train(self) -> Compression:
        """Run the whole budget, without progress (scripts and tests)."""
        for _ in self.run():
            pass
        return self

    def encode(self) -> Compressed:
        """The .moec bytes of the model as trained so far (MoecError before the first step)."""
        if self.chosen is None:  # stopped during the trial
            kept = self._choose()
            if kept.run is not None:
                kept.run.close()
                kept.run = None
        fitter = self.fitter
        if fitter.steps_run == 0:
            raise MoecError("stopped before the first training step; nothing written")
        sized = sized_file(fitter, self.plan)
        data = sized.data
        notes = list(self.notes)
        if sized.below:
            why = (
                "training stopped in the router stage, so the latent grid is still empty"
                if self.plan.model.encoder == "grid" and fitter.stage_steps["router"] == fitter.steps_run
                else "the grid and router take no more bytes at their steps"
            )
            notes.append(
                f"the file is smaller than asked ({len(data):,} bytes, the window starts at "
                f"{self.plan.lower_bytes:,} bytes): every other weight already has the finest step it "
                f"can be stored with, and {why}"
            )
        if not sized.floored:
            notes.append(
                "the file has no floor for the decoder (its few header bytes did not fit below the "
                "size window's top): values below the volume's background are kept as decoded"
            )
        return Compressed(data, fitter.steps_run, tuple(fitter.record()["stages"]), tuple(notes))

    def evaluate(self, moec: MoecFile, device: str = "cpu") -> Evaluation:
        """`moec` (the file as written and read back) measured against the volume, and inside and
        outside the region of interest when there is one."""
        return evaluate(self.volume, moec, device=device, roi=self.roi)


def _let_go(candidate: Candidate) -> None:
    """A candidate not kept: its run closed, its model's memory freed."""
    if candidate.run is not None:
        candidate.run.close()
    candidate.run = candidate.fitter = None


def _trial_psnr(
    volume: Volume, candidate: Candidate, roi: np.ndarray | None, roi_weight: float, should_stop: StopAsked = None
) -> float:
    """PSNR of the candidate's file as it would be written now, on a fixed sample of voxels (the
    region of interest's weighted as in training), with the decoder's floor chosen on that sample
    (the written file's is chosen on more voxels: a trial needs a comparison, and a Stop waits for
    it); Interrupted when `should_stop()` says so."""
    assert candidate.fitter is not None
    moec = unfloored_file(candidate.fitter, candidate.plan, should_stop)
    stop_if_asked(should_stop)
    flat = sample_voxels(volume.data.size, TRIAL_VOXELS, seed=1)
    original = volume.data.reshape(-1)[flat.numpy()]
    values = unfloored_values(moec, flat)
    meta = moec.meta
    values = apply_floor(values, choose_floor(original, values, meta.vmin, meta.vmax), meta.vmin)
    error = (values.astype(np.float64) - original) ** 2
    if roi is not None:
        error *= np.where(roi.reshape(-1)[flat.numpy()], roi_weight, 1.0)
    span = float(meta.vmax - meta.vmin)
    mse = float(error.mean())
    return 10.0 * np.log10(span * span / mse) if mse > 0 and span > 0 else np.inf
