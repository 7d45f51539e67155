"""The steps every front end takes, in one place: settings -> plan -> Fitter -> bytes -> figures.

`Compression` is the one entry point for making a file: the CLI, the napari plugin's job, `moec
bench`, `moec batch`, the benchmarks and the tests all drive it, so a file made in one comes out
the same in the others, and what a user is told about it (`Compressed.notes`) reaches each of them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np
import torch

from . import budget, pack
from .budget import Plan
from .decode import Reconstruction, reconstruct, unfloored_values
from .errors import MoecError
from .floor import SAMPLE_VOXELS, choose_floor
from .metrics import ExpertStat, Quality, RegionQuality, expert_table, quality, region_quality
from .pack import MoecFile
from .roi import check_roi
from .settings import Settings
from .train import Fitter, Progress, TrainConfig, train_record
from .volume import Volume


def plan(volume: Volume, settings: Settings, train: TrainConfig = TrainConfig(), roi: bool = False) -> Plan:
    """Network widths for `volume` at the settings' ratio (BudgetError when it cannot be met); `roi`:
    the file will record a region of interest (a few header bytes)."""
    arch = settings.architecture(len(volume.shape))
    quant = settings.quant()
    budget.check_architecture(arch, quant, len(volume.shape))
    # The largest grid description the header could hold (3 digits per axis).
    thick = arch.grid_spacing_power > 0 and budget.thick_slices(volume.spacing[:3])
    holds = (arch.grid_levels - 1,) * len(volume.shape) if thick else ()
    example = budget.config_for(budget.MIN_WIDTH, arch, volume.shape, finest=(999,) * len(volume.shape), hold=holds)
    # A record with large counters: the header can only shrink once the real numbers are known.
    meta = pack.describe(volume, example, quant, train_record(train, 10**6, [10**6] * 3, 9, 10**9 if roi else None))
    header = budget.header_bytes(meta.nifti, meta.to_json())
    return budget.plan_model(volume.shape, volume.dtype.itemsize, settings.ratio, arch, quant, header,
                             spacing=volume.spacing)


def new_fitter(volume: Volume, plan_: Plan, config: TrainConfig, roi: np.ndarray | None = None) -> Fitter:
    """A Fitter for the plan; `roi` (a mask of the volume's shape) weights its voxels (codec.roi)."""
    return Fitter(volume, plan_.model, plan_.quant, config, file_steps=lambda fitter: file_steps(fitter, plan_),
                  roi=roi)


@dataclass(frozen=True, eq=False)
class Compressed:
    """The bytes of a file made by a Compression, and what a user should be told about them."""

    data: bytes
    steps: int  # training steps run, all runs together
    stages: tuple[int, ...]  # of those, in the router, joint and final stages
    notes: tuple[str, ...]  # sentences for the user (a file smaller than asked, and why)


class Compression:
    """One volume's compression: the plan (BudgetError here, before any work), training in one or
    more runs (each a generator of Progress, so a caller shows progress, stops or continues), and
    the bytes with their notes. Measuring the file is `evaluate`, on the bytes as written."""

    def __init__(self, volume: Volume, settings: Settings = Settings(), train: TrainConfig = TrainConfig(),
                 roi: np.ndarray | None = None):
        self.volume = volume
        self.roi = roi
        self.plan = plan(volume, settings, train, roi is not None)
        self.fitter = new_fitter(volume, self.plan, train, roi)

    def run(self, minutes: float | None = None, steps: int | None = None,
            should_stop: Callable[[], bool] | None = None) -> Generator[Progress, None, None]:
        """Train for a budget (default: the TrainConfig's; a later run continues the model),
        yielding Progress after every step, until the budget ends or `should_stop()` says so. A
        generator closed early (Ctrl-C, a cancelled worker) leaves a model that encodes."""
        run = self.fitter.fit(minutes=minutes, steps=steps)
        try:
            for progress in run:
                yield progress
                if should_stop is not None and should_stop():
                    break
        finally:
            run.close()

    def train(self) -> Compression:
        """Run the whole budget, without progress (scripts and tests)."""
        for _ in self.run():
            pass
        return self

    def encode(self) -> Compressed:
        """The .moec bytes of the model as trained so far (MoecError before the first step)."""
        fitter = self.fitter
        if fitter.steps_run == 0:
            raise MoecError("stopped before the first training step; nothing written")
        data = encode(fitter, self.plan)
        notes = []
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


def file_steps(fitter: Fitter, plan_: Plan) -> dict[str, np.ndarray]:
    """The steps `encode` would store the unfrozen tensors (experts, decoder) at now, for the final
    stage to train them at. Aimed a quarter of the window below its top, so that the few bytes the
    final stage moves, and the floor's header field, still fit and the file holds exactly them."""
    upper = plan_.upper_bytes - (plan_.upper_bytes - plan_.lower_bytes) // 4
    steps, _ = _step_search(fitter, plan_)(_meta(fitter, plan_), upper)
    return {name: step for name, step in steps.items() if name not in fitter.frozen_steps}


def encode(fitter: Fitter, plan_: Plan) -> bytes:
    """The .moec bytes of the model trained so far, landed inside the plan's size window, with the
    decoder's floor (codec.floor) chosen on the weights as written: at the steps the final stage
    trained at when that file lands in the window, else at the searched steps."""
    model = fitter.model
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise MoecError(f"training diverged after {fitter.steps_run} steps (weights are no longer finite numbers); "
                        "nothing was written: try a lower learning rate (--lr)")
    meta = _meta(fitter, plan_)
    if plan_.quant.float16:
        return _with_floor(fitter.volume, meta, pack.encode_payload(model, plan_.quant, None))

    if fitter.trained_steps is not None:
        steps = {**pack.tensor_steps(model, plan_.quant, fitter.frozen_steps), **fitter.trained_steps}
        data = _with_floor(fitter.volume, meta, pack.encode_payload(model, plan_.quant, steps))
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
        data = pack.assemble(sized, payload)
        if len(data) <= plan_.upper_bytes:
            return data
    return pack.assemble(meta, payload)  # the floor's header bytes never fitted: no floor


def _meta(fitter: Fitter, plan_: Plan) -> pack.MoecMeta:
    return pack.describe(fitter.volume, fitter.model.config, plan_.quant, fitter.record())


def _with_floor(volume: Volume, meta: pack.MoecMeta, payload: bytes) -> bytes:
    return pack.assemble(dataclasses.replace(meta, floor=_floor_of(volume, meta, payload)), payload)


StepSearch = Callable[[pack.MoecMeta, int], tuple[dict[str, np.ndarray], bytes]]


def _step_search(fitter: Fitter, plan_: Plan) -> StepSearch:
    """search(meta, upper): the steps, and the payload they code to, of the largest file with header
    `meta` not above `upper` bytes: the frozen tensors' steps as they are, the others' base steps
    scaled by one searched multiplier. The base steps (a rate search for latent grids) are computed
    once, and the coded trials are cached, so a second search (room for the floor) reuses them."""
    model, frozen = fitter.model, fitter.frozen_steps
    base = pack.tensor_steps(model, plan_.quant, frozen)
    finest = pack.finest_multiplier(model, base, frozen)

    @functools.cache
    def payload_at(multiplier: float) -> bytes:
        return pack.encode_payload(model, plan_.quant, pack.scaled_steps(base, multiplier, frozen))

    def search(meta: pack.MoecMeta, upper: int) -> tuple[dict[str, np.ndarray], bytes]:
        multiplier = budget.fit_to_window(lambda m: len(pack.assemble(meta, payload_at(m))), upper, finest=finest)
        return pack.scaled_steps(base, multiplier, frozen), payload_at(multiplier)

    return search


def _floor_of(volume: Volume, meta: pack.MoecMeta, payload: bytes) -> float | None:
    """The floor for these weights, chosen on their decoded values at a fixed sample of voxels."""
    moec = pack.decode(pack.assemble(meta, payload))
    total = volume.data.size
    if total <= SAMPLE_VOXELS:
        flat = torch.arange(total)
    else:
        flat = torch.randint(0, total, (SAMPLE_VOXELS,), generator=torch.Generator().manual_seed(0))
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
    q = quality(original.data, recon.volume.data, original.dtype, original.slope)
    table = expert_table(original.data, recon.volume.data, recon.labels, moec.meta.model.experts,
                         moec.meta.model.expert_parameter_count())
    file_ratio = original.source_bytes / moec.nbytes if original.source_bytes else None
    region = None if roi is None else region_quality(original.data, recon.volume.data, check_roi(roi, original.shape))
    return Evaluation(moec, recon, q, table, moec.ratio, file_ratio, region)
