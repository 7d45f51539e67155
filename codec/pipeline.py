"""The steps every front end takes, in one place: settings -> plan -> Fitter -> bytes -> figures.

`Compression` is the one entry point for making a file: the CLI, the napari plugin's job, `moec
bench`, `moec batch`, the benchmarks and the tests all drive it, so a file made in one comes out
the same in the others, and what a user is told about it (`Compressed.notes`) reaches each of them.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np
import torch

from codec.coding.quantize import MAX_SYMBOL
from codec.decode.floor import SAMPLE_VOXELS, apply_floor, choose_floor
from codec.decode.reconstruct import Reconstruction, reconstruct, unfloored_values
from codec.errors import MoecError, RatioError
from codec.eval.metrics import ExpertStat, Quality, RegionQuality, expert_table, quality, region_quality
from codec.fit import sizing
from codec.fit.sampling import VoxelSampler
from codec.fit.sizing import Plan
from codec.fit.train import Fitter, Progress, TrainConfig, train_record
from codec.format import moecfile
from codec.format.header import MoecMeta, describe
from codec.format.moecfile import MoecFile
from codec.format.payload import encode_payload, finest_multiplier, scaled_steps, tensor_steps
from codec.io.roi import check_roi
from codec.io.volume import Volume
from codec.settings import Settings


def plan(volume: Volume, settings: Settings, train: TrainConfig = TrainConfig(), roi: bool = False) -> Plan:
    """Network widths for `volume` at the settings' ratio (RatioError when it cannot be met); `roi`:
    the file will record a region of interest (a few header bytes). Settings that leave the number
    of experts open are planned as their first candidate (Settings.candidates)."""
    settings = settings.candidates(len(volume.shape))[0]
    arch = sizing.architecture(settings, len(volume.shape))
    quant = sizing.quantization(settings)
    sizing.check_architecture(arch, quant, len(volume.shape))
    # The largest grid description the header could hold (3 digits per axis).
    thick = arch.grid_spacing_power > 0 and sizing.thick_slices(volume.spacing[:3])
    holds = (arch.grid_levels - 1,) * len(volume.shape) if thick else ()
    example = sizing.config_for(sizing.MIN_WIDTH, arch, volume.shape, finest=(999,) * len(volume.shape), hold=holds)
    # A record with large counters: the header can only shrink once the real numbers are known.
    meta = describe(volume, example, quant, train_record(train, 10**6, [10**6] * 3, 9, 10**9 if roi else None))
    header = sizing.header_bytes(meta.nifti, meta.to_json())
    return sizing.plan_model(volume.shape, volume.dtype.itemsize, settings.ratio, arch, quant, header,
                             spacing=volume.spacing)


def new_fitter(volume: Volume, plan_: Plan, config: TrainConfig, roi: np.ndarray | None = None,
               voxels: VoxelSampler | None = None) -> Fitter:
    """A Fitter for the plan; `roi` (a mask of the volume's shape) weights its voxels (codec.io.roi);
    `voxels`: another Fitter's sampler of the same volume, configuration and region, to reuse."""
    return Fitter(volume, plan_.model, plan_.quant, config, file_steps=lambda fitter: file_steps(fitter, plan_),
                  roi=roi, voxels=voxels)


@dataclass(frozen=True, eq=False)
class Compressed:
    """The bytes of a file made by a Compression, and what a user should be told about them."""

    data: bytes
    steps: int  # training steps run, all runs together
    stages: tuple[int, ...]  # of those, in the router, joint and final stages
    notes: tuple[str, ...]  # sentences for the user (a file smaller than asked, and why)


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
    name: str = ""  # set by `_planned`: its number of experts, and its latent rate where the rates differ

    @property
    def experts(self) -> int:
        return self.plan.model.experts

    @property
    def latent_bits(self) -> float:
        return self.plan.quant.latent_bits


class Compression:
    """One volume's compression: the plan (RatioError here, before any work), training in one or
    more runs (each a generator of Progress, so a caller shows progress, stops or continues), and
    the bytes with their notes. Measuring the file is `evaluate`, on the bytes as written.

    Settings that leave the number of experts open (Settings.candidates) give several candidates,
    tried in rounds by the first run: each number of experts at the first latent rate, then the
    kept number at each other rate (`rounds`). Each candidate trains for TrainConfig.trial_share
    of the budget; the one whose file is then the best trains on for the rest (its run goes on
    where it paused, as if the others had not run), so the budget, in minutes or steps, includes
    the choice."""

    def __init__(self, volume: Volume, settings: Settings = Settings(), train: TrainConfig = TrainConfig(),
                 roi: np.ndarray | None = None):
        if volume.dicom is not None and not settings.keep_identity:
            # The header is planned and written from this volume: without the patient, the file never holds it.
            volume = dataclasses.replace(volume, dicom=volume.dicom.deidentified())
        self.volume = volume
        self.roi = roi
        self.train_config = train
        self.candidates = _planned(volume, settings.candidates(len(volume.shape)), train, roi is not None)
        #: The candidate that trains from now on: the only one, or the one kept after the trial.
        self.chosen: Candidate | None = self.candidates[0] if len(self.candidates) == 1 else None
        self._current = self.candidates[0]  # the one training now (or last), before the choice
        self.notes: list[str] = []
        # `fitter` makes a candidate's Fitter on first use, which the plugin's GUI thread (asking
        # for progress) and its worker can reach at once: one lock, so both get the same Fitter.
        self._fitter_lock = threading.Lock()

    @property
    def plan(self) -> Plan:
        return (self.chosen or self._current).plan

    @property
    def fitter(self) -> Fitter:
        """The model trained so far: the kept candidate's, or before the choice the one training."""
        candidate = self.chosen or self._current
        with self._fitter_lock:
            if candidate.fitter is None:
                # The candidates train on one volume with one configuration: one sampler serves all.
                shared = next((c.fitter.voxels for c in self.candidates if c.fitter is not None), None)
                candidate.fitter = new_fitter(self.volume, candidate.plan, self.train_config, self.roi, shared)
            return candidate.fitter

    def run(self, minutes: float | None = None, steps: int | None = None,
            should_stop: Callable[[], bool] | None = None) -> Generator[Progress, None, None]:
        """Train for a budget (default: the TrainConfig's; a later run continues the model),
        yielding Progress after every step, until the budget ends or `should_stop()` says so. A
        generator closed early (Ctrl-C, a cancelled worker) leaves a model that encodes."""
        if steps is None and minutes is None:
            steps, minutes = self.train_config.steps, self.train_config.minutes
        total = float(steps) if steps is not None else 60.0 * (minutes or 0.0)
        spent = 0.0  # of the budget (steps or seconds), by the candidates not kept
        # Progress.seconds counts this call's training, the trials of the models not kept included,
        # so that the clock a user reads ends near the budget asked for.
        others_seconds = 0.0
        if self.chosen is None:
            trial = yield from self._trial(minutes, steps, should_stop)
            if trial is None:
                return
            run, spent = trial
            others_seconds = sum(c.trial_seconds for c in self.candidates if c is not self.chosen)
        else:
            run = self.fitter.fit(minutes=minutes, steps=steps)
        scale = (total - spent) / total if total > 0 else 1.0
        try:
            for progress in run:
                yield dataclasses.replace(progress, fraction=min(1.0, spent / total + scale * progress.fraction),
                                          seconds=others_seconds + progress.seconds)
                if should_stop is not None and should_stop():
                    break
        finally:
            run.close()

    def rounds(self, kept: Candidate | None = None) -> list[Candidate]:
        """The candidates a trial round trains: the first round (`kept` None) each number of experts
        at the first candidate's latent rate; the second the kept one's number at the other rates.
        Three models trained instead of the four pairs, on the guess that the number of experts
        chosen at one rate suits the other."""
        if kept is None:
            first = self.candidates[0].latent_bits
            return [c for c in self.candidates if c.latent_bits == first]
        return [c for c in self.candidates if c.experts == kept.experts and c.latent_bits != kept.latent_bits]

    def trial_text(self) -> str:
        """What the trial tries, in a sentence for a user ("" where there is one candidate)."""
        if len(self.candidates) == 1:
            return ""
        first = self.rounds()
        text = "trying " + " and ".join(_experts_text(c.experts) for c in first)
        rates = sorted({c.latent_bits for c in self.candidates} - {first[0].latent_bits}, reverse=True)
        if rates:
            text += (f" at {first[0].latent_bits:g} bits per latent, then the kept number at "
                     + " and ".join(f"{r:g}" for r in rates))
        return text + f", for {100 * self.train_config.trial_share:g}% of the budget each; the best trains on"

    def _trial(self, minutes: float | None, steps: int | None, should_stop: Callable[[], bool] | None):
        """Train the candidates of each round (`rounds`) until each has had TrainConfig.trial_share
        of the budget past its router stage (the learned partition's first, cheap steps are not
        counted against it: the candidates are compared on as much reconstruction training), keep
        the better of each round, and give the last kept the budget less what the others spent:
        (its run, the budget the others spent), or None when stopped first (`encode` then
        chooses among those that trained)."""
        share = self.train_config.trial_share
        by_steps = steps is not None
        total = float(steps) if steps is not None else 60.0 * (minutes or 0.0)
        trial = share * total
        # Each run is created for the budget less the others' trials, then set to the budget less
        # what the others really spent once the choice is made (their router stages included).
        first = self.rounds()
        tries = len(first) + len(self.rounds(first[0]))
        guess = total - (tries - 1) * trial
        spent: dict[int, float] = {}  # by candidate (its id)

        def round_of(contenders: list[Candidate], kept: Candidate | None):
            """Train each contender for its trial; the best of them and `kept`, or None when stopped."""
            for candidate in contenders:
                self._current = candidate
                before = sum(spent.values())
                before_seconds = sum(c.trial_seconds for c in self.candidates)
                candidate.run = self.fitter.fit(minutes=None if by_steps else guess / 60.0,
                                                steps=max(1, round(guess)) if by_steps else None)
                started: float | None = None  # where its reconstruction training began
                for progress in candidate.run:
                    used = float(progress.step) if by_steps else progress.seconds
                    yield dataclasses.replace(progress, fraction=min(1.0, (before + used) / total),
                                              seconds=before_seconds + progress.seconds, trying=candidate.name)
                    if should_stop is not None and should_stop():
                        return None
                    if progress.stage != "router" and started is None:
                        started = used - (1.0 if by_steps else 0.0)
                    if started is not None and used - started >= trial:
                        break
                candidate.trial_steps = self.fitter.steps_run
                candidate.trial_seconds = self.fitter.run_seconds()
                spent[id(candidate)] = float(candidate.trial_steps) if by_steps else candidate.trial_seconds
                self.fitter.pause()
            return self._best(([] if kept is None else [kept]) + contenders)

        try:
            kept = yield from round_of(first, None)
            second = self.rounds(kept) if kept is not None else []
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
        assert kept is not None and kept.fitter is not None and kept.run is not None
        self.chosen = kept
        others = sum(v for k, v in spent.items() if k != id(kept))
        kept.fitter.resume()
        kept.fitter.rebudget(steps=max(1, round(total - others)) if by_steps else None,
                             minutes=None if by_steps else (total - others) / 60.0)
        return kept.run, others

    def _choose(self) -> Candidate:
        """Keep the best of the candidates that trained (a trial stopped part way), for good."""
        trained = [c for c in self.candidates if c.fitter is not None and c.fitter.steps_run > 0]
        self.chosen = self._best(trained) if trained else self._current
        return self.chosen

    def _best(self, trained: list[Candidate]) -> Candidate:
        """The candidate of `trained` whose file is better now (each measured once, after its
        trial), said in a note; the others let go."""
        for candidate in trained:
            if candidate.psnr is None:
                try:
                    candidate.psnr = _trial_psnr(self.volume, candidate, self.roi, self.train_config.roi_weight)
                except MoecError:  # diverged: it cannot be kept (and if none can, encode says why)
                    candidate.psnr = -np.inf
        kept = max(trained, key=lambda c: c.psnr if c.psnr is not None else -np.inf)
        if len(trained) > 1:
            tried = ", ".join(f"{c.name} {c.psnr:.2f} dB" for c in trained)
            self.notes.append(f"tried {tried} after {100 * self.train_config.trial_share:g}% of the budget each "
                              f"(PSNR of the file on a sample of voxels); kept {kept.name}")
        for candidate in trained:
            if candidate is not kept:
                self._let_go(candidate)
        return kept

    @staticmethod
    def _let_go(candidate: Candidate) -> None:
        """A candidate not kept: its run closed, its model's memory freed."""
        if candidate.run is not None:
            candidate.run.close()
        candidate.run = candidate.fitter = None

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
        data = encode(fitter, self.plan)
        notes = list(self.notes)
        if len(data) < self.plan.lower_bytes:
            why = ("training stopped in the router stage, so the latent grid is still empty"
                   if self.plan.model.encoder == "grid" and fitter.stage_steps["router"] == fitter.steps_run else
                   "the grid and router take no more bytes at their steps")
            notes.append(f"the file is smaller than asked ({len(data):,} bytes, the window starts at "
                         f"{self.plan.lower_bytes:,} bytes): every other weight already has the finest step it "
                         f"can be stored with, and {why}")
        return Compressed(data, fitter.steps_run, tuple(fitter.record()["stages"]), tuple(notes))

    def evaluate(self, moec: MoecFile, device: str = "cpu") -> Evaluation:
        """`moec` (the file as written and read back) measured against the volume, and inside and
        outside the region of interest when there is one."""
        return evaluate(self.volume, moec, device, self.roi)


def _experts_text(n: int) -> str:
    return "one network" if n == 1 else f"{n} experts"


def _planned(volume: Volume, options: tuple[Settings, ...], train: TrainConfig, roi: bool) -> list[Candidate]:
    """The candidates whose ratio can be met; RatioError (the one naming the highest reachable
    ratio) when none can."""
    planned, refused = [], []
    for settings in options:
        try:
            planned.append(Candidate(settings, plan(volume, settings, train, roi)))
        except RatioError as exc:
            refused.append(exc)
    if not planned:
        raise max(refused, key=lambda e: e.highest or 0.0)
    rates = len({c.latent_bits for c in planned}) > 1
    for c in planned:
        c.name = _experts_text(c.experts) + (
            f" at {c.latent_bits:g} bits per latent" if rates else "")
    return planned


#: The largest weight a file can hold: the largest float16 step times the largest symbol.
LARGEST_WEIGHT = 6.0e4 * MAX_SYMBOL
#: Voxels a trial's file is measured on: enough for a PSNR within a few hundredths of a dB.
TRIAL_VOXELS = 1 << 17


def _trial_psnr(volume: Volume, candidate: Candidate, roi: np.ndarray | None, roi_weight: float) -> float:
    """PSNR of the candidate's file as it would be written now, on a fixed sample of voxels (the
    region of interest's weighted as in training)."""
    assert candidate.fitter is not None
    moec = moecfile.from_bytes(encode(candidate.fitter, candidate.plan))
    flat = _sample_voxels(volume.data.size, TRIAL_VOXELS, seed=1)
    values = apply_floor(unfloored_values(moec, flat), moec.meta.floor, moec.meta.vmin)
    error = (values.astype(np.float64) - volume.data.reshape(-1)[flat.numpy()]) ** 2
    if roi is not None:
        error *= np.where(roi.reshape(-1)[flat.numpy()], roi_weight, 1.0)
    span = float(moec.meta.vmax - moec.meta.vmin)
    mse = float(error.mean())
    return 10.0 * np.log10(span * span / mse) if mse > 0 and span > 0 else np.inf


def file_steps(fitter: Fitter, plan_: Plan) -> dict[str, np.ndarray]:
    """The steps `encode` would store the unfrozen tensors (experts, decoder) at now, for the final
    stage to train them at. Aimed a quarter of the window below its top, so that the few bytes the
    final stage moves, and the floor's header field, still fit and the file holds exactly them."""
    upper = plan_.upper_bytes - (plan_.upper_bytes - plan_.lower_bytes) // 4
    steps, _ = _step_search(fitter, plan_)(_meta(fitter, plan_), upper)
    return {name: step for name, step in steps.items() if name not in fitter.frozen_steps}


def encode(fitter: Fitter, plan_: Plan) -> bytes:
    """The .moec bytes of the model trained so far, landed inside the plan's size window, with the
    decoder's floor (codec.decode.floor) chosen on the weights as written: at the steps the final stage
    trained at when that file lands in the window, else at the searched steps."""
    model = fitter.model
    # The largest float16 step times the largest symbol: a weight beyond it has no stored form.
    if not all(torch.isfinite(p).all() and p.abs().max() <= LARGEST_WEIGHT for p in model.parameters()):
        raise MoecError(f"training diverged after {fitter.steps_run} steps (weights are no longer finite numbers, "
                        "or too large to store); nothing was written: try a lower learning rate (--lr)")
    meta = _meta(fitter, plan_)
    if plan_.quant.float16:
        return _with_floor(fitter.volume, meta, encode_payload(model, plan_.quant, None))

    if fitter.trained_steps is not None:
        steps = {**tensor_steps(model, plan_.quant, fitter.frozen_steps), **fitter.trained_steps}
        data = _with_floor(fitter.volume, meta, encode_payload(model, plan_.quant, steps))
        if plan_.lower_bytes <= len(data) <= plan_.upper_bytes:
            return data

    # The floor is chosen on the weights as stored at the searched steps and changes only the
    # header: the file keeps exactly those weights when its few header bytes still fit, else the
    # steps are searched again with room for them.
    search = _step_search(fitter, plan_)
    sized = meta
    for _ in range(3):
        _, payload = search(sized, plan_.upper_bytes)
        sized = dataclasses.replace(meta, floor=_floor_of(fitter.volume, meta, payload))
        data = moecfile.assemble(sized, payload)
        if len(data) <= plan_.upper_bytes:
            return data
    return moecfile.assemble(meta, payload)  # the floor's header bytes never fitted: no floor


def _meta(fitter: Fitter, plan_: Plan) -> MoecMeta:
    return describe(fitter.volume, fitter.model.config, plan_.quant, fitter.record())


def _with_floor(volume: Volume, meta: MoecMeta, payload: bytes) -> bytes:
    return moecfile.assemble(dataclasses.replace(meta, floor=_floor_of(volume, meta, payload)), payload)


StepSearch = Callable[[MoecMeta, int], tuple[dict[str, np.ndarray], bytes]]


def _step_search(fitter: Fitter, plan_: Plan) -> StepSearch:
    """search(meta, upper): the steps, and the payload they code to, of the largest file with header
    `meta` not above `upper` bytes: the frozen tensors' steps as they are, the others' base steps
    scaled by one searched multiplier. The base steps (a rate search for latent grids) are computed
    once, and the coded trials are cached, so a second search (room for the floor) reuses them."""
    model, frozen = fitter.model, fitter.frozen_steps
    base = tensor_steps(model, plan_.quant, frozen)
    finest = finest_multiplier(model, base, frozen)

    @functools.cache
    def payload_at(multiplier: float) -> bytes:
        return encode_payload(model, plan_.quant, scaled_steps(base, multiplier, frozen))

    def search(meta: MoecMeta, upper: int) -> tuple[dict[str, np.ndarray], bytes]:
        multiplier = sizing.fit_to_window(lambda m: len(moecfile.assemble(meta, payload_at(m))), upper, finest=finest)
        return scaled_steps(base, multiplier, frozen), payload_at(multiplier)

    return search


def _sample_voxels(total: int, count: int, seed: int) -> torch.Tensor:
    """Flat indices of a fixed random sample of `count` voxels of `total` (every voxel when there
    are no more), the same for every file made from one volume."""
    if total <= count:
        return torch.arange(total)
    return torch.randint(0, total, (count,), generator=torch.Generator().manual_seed(seed))


def _floor_of(volume: Volume, meta: MoecMeta, payload: bytes) -> float | None:
    """The floor for these weights, chosen on their decoded values at a fixed sample of voxels."""
    moec = moecfile.from_bytes(moecfile.assemble(meta, payload))
    flat = _sample_voxels(volume.data.size, SAMPLE_VOXELS, seed=0)
    recon = unfloored_values(moec, flat)
    return choose_floor(volume.data.reshape(-1)[flat.numpy()], recon, meta.vmin, meta.vmax)


@dataclass(frozen=True, eq=False)
class Evaluation:
    """A decoded file measured against its original."""

    moec: MoecFile
    reconstruction: Reconstruction
    quality: Quality
    experts: list[ExpertStat]
    ratio: float  # raw voxel bytes / file bytes
    file_ratio: float | None  # source file bytes / file bytes
    roi: RegionQuality | None = None  # inside and outside the region of interest, when one was given


def evaluate(original: Volume, moec: MoecFile, device: str = "cpu", roi: np.ndarray | None = None) -> Evaluation:
    """Decode `moec` and measure it against `original` (same shape, file voxel order), and inside
    and outside `roi` (a mask of that shape) when given."""
    if original.shape != moec.meta.shape:
        raise ValueError(f"the .moec file holds a {moec.meta.shape} volume, the original is {original.shape}")
    recon = reconstruct(moec, device=device)
    assert recon.labels is not None  # reconstruct keeps them unless told not to
    q = quality(original.data, recon.volume.data, original.dtype, original.slope)
    table = expert_table(original.data, recon.volume.data, recon.labels, moec.meta.model.experts,
                         moec.meta.model.expert_parameter_count())
    file_ratio = original.source_bytes / moec.nbytes if original.source_bytes else None
    region = None if roi is None else region_quality(original.data, recon.volume.data, check_roi(roi, original.shape))
    return Evaluation(moec, recon, q, table, moec.ratio, file_ratio, region)
