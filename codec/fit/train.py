"""Training: `Fitter.fit()` is a generator of Progress; `codec.pipeline.Compression.run` drives it
for the CLI, the plugin, the benchmarks and the tests alike.

A run's stages (docs/design.md, "The network"):

    router  fresh learned models only, a few hundred cheap steps (no expert is evaluated): the
            router learns a balanced starting partition, the intensity clusters of partition.py
            by default, so joint training does not collapse onto one expert (it reads the
            encoder's features but never trains them: codec.model.network);
    joint   everything, loss = MSE + balancing loss (Switch form, alpha N sum_i f_i P_i) + the
            latents' rate penalty (sparse and smooth grids code to fewer bits), until
            1 - final_fraction of the budget;
    final   encoder and router are quantized in place and frozen, so the partition stops moving
            and equals the one the decoder computes from the stored router; experts and decoder
            train quantization-aware against it, at the steps the file will store them at when
            the Fitter is told them (`file_steps`: the pipeline's size search), else at their
            largest weight's step at the configured bit width.

The budget is steps (reproducible) or wall-clock minutes, router stage included. The model trained
so far is `Fitter.model` at every moment: closing the generator (a cancel, a stopped worker) keeps
it, and calling `fit()` again continues from it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from codec.coding.quantize import (
    QuantConfig,
    latent_steps,
    latent_steps_near,
    max_steps,
    max_steps_torch,
    round_in_place,
)
from codec.errors import MoecError
from codec.fit.sampling import VoxelSampler
from codec.io.roi import check_roi
from codec.io.volume import Volume, to_unit
from codec.model import ModelConfig, MoEC, is_latent
from codec.model.coords import coords_from_flat
from codec.model.partition import block_grid, block_index, intensity_clusters
from codec.settings import TrainConfig

STAGES = ("router", "joint", "final")
#: A continued run restarts its learning rate lower: the model is already near a minimum.
CONTINUE_LR_FACTOR = 0.3
#: The router stage never takes more than this share of a time budget.
ROUTER_TIME_SHARE = 0.1
#: Steps between updates of the latents' rate-set quantization step during their QAT (the search
#: costs a few hundred milliseconds; the latents' spread changes slowly).
LATENT_STEP_EVERY = 100
#: The longest share of a run's budget that zero latent grids keep their first, flat step (100
#: steps of a 2,000-step run, where it was measured; a 120-step run gets 6).
FLAT_SHARE = 0.05
#: Latent grids learn at this multiple of the learning rate: each latent sees only the few
#: coordinates around its node, so its gradients are small and sparse.
LATENT_LR_SCALE = 4.0
#: Adam moves every weight by about the learning rate each step, so a layer's output moves in
#: proportion to its fan-in. The default rate was tuned on layers up to about this wide; a wider
#: layer learns at `WIDE_FAN_IN / fan-in` of it. Without this a single SIREN 110 to 190 wide (at
#: 128x-256x) stalled at the PSNR of predicting the mean; 80 is a compromise between the widths
#: measured (docs/benchmarks.md, "Training: learning rate and batch").
WIDE_FAN_IN = 80


def fan_in_scale(param: torch.Tensor) -> float:
    """The learning-rate multiple of a weight matrix (stored as (..., in, out)); vectors keep 1."""
    return 1.0 if param.ndim < 2 else min(1.0, WIDE_FAN_IN / param.shape[-2])


@dataclass(frozen=True)
class Progress:
    """What a training step reports to whoever drives the run (CLI, plugin, tests)."""

    step: int  # steps run by this Fitter so far, all runs together
    stage: str
    loss: float  # reconstruction MSE on the [-1, 1] scale (the router stage: its cross-entropy)
    psnr: float  # on the training batch, dB, peak = max - min of the volume (nan in the router stage)
    seconds: float  # since this run started (a Compression's: its trials' included, pauses left out)
    fraction: float  # of this run's budget used
    lr: float
    expert_share: tuple[float, ...]  # share of the batch routed to each expert
    balance: float = 0.0  # the balancing loss added to the MSE (joint stage)
    trying: str = ""  # while a compression tries several models (codec.pipeline): which one this is


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MoecError("--device cuda was asked for, but this torch build sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise MoecError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


def latent_rate_penalty(grids: list[torch.Tensor], config: TrainConfig) -> torch.Tensor:
    """The joint stage's stand-in for the latents' coded rate: an L1 term (zeros are cheap) and a
    smoothness term (a latent like its neighbours is cheap under the spatial context model), each a
    mean over every latent or neighbour pair of every grid (channels first, then the spatial axes)."""
    penalty = torch.zeros(())
    if not grids:
        return penalty
    if config.latent_l1 > 0:
        penalty = penalty + config.latent_l1 * sum(g.abs().sum() for g in grids) / sum(g.numel() for g in grids)
    if config.latent_tv > 0:
        diffs = [g.diff(dim=axis) for g in grids for axis in range(1, g.dim()) if g.shape[axis] > 1]
        if diffs:
            penalty = penalty + config.latent_tv * sum(d.abs().sum() for d in diffs) / sum(d.numel() for d in diffs)
    return penalty


def psnr_of_mse(mse: float) -> float:
    """PSNR of a mean squared error on the [-1, 1] scale, where the peak (max - min) is 2."""
    if math.isnan(mse):
        return math.nan
    if math.isinf(mse):
        return -math.inf  # a diverged run; pipeline.encode refuses to write it
    return 10.0 * math.log10(4.0 / mse) if mse > 0 else math.inf


_optimizer_ready = False


def _warm_up_optimizer() -> None:
    """torch imports its compiler stack (about 2 s) on the first optimizer step; pay that before a
    run's clock starts, not inside its time budget."""
    global _optimizer_ready
    if not _optimizer_ready:
        p = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.Adam([p])
        p.sum().backward()
        optimizer.step()
        _optimizer_ready = True


def train_record(config: TrainConfig, steps: int, stage_steps: list[int], runs: int,
                 roi_voxels: int | None = None) -> dict:
    """How a model was made, for the file's header (no timestamps: files stay reproducible); a
    region of interest adds its size and weight (a file made without one has no "roi" field)."""
    record = {"seed": config.seed, "steps": steps, "stages": stage_steps, "runs": runs,
              "minutes": None if config.steps is not None else config.minutes, "batch": config.batch_size,
              "lr": config.lr, "balance": config.balance_weight, "gate_gradient": config.gate_gradient,
              "sample_activity": config.sample_activity,
              "pretrain": config.pretrain_target if config.router_pretraining else "none"}
    if roi_voxels is not None:
        record["roi"] = {"voxels": roi_voxels, "weight": config.roi_weight}
    return record


class _Budget:
    """Where a run stands in its budget, as a fraction, by steps or by wall-clock time."""

    def __init__(self, steps: int | None, minutes: float | None):
        if steps is None and minutes is None:
            raise ValueError("a budget needs steps or minutes")
        self.steps = steps
        self.seconds = 60.0 * minutes if minutes is not None else math.inf
        self.start = time.perf_counter()
        self.done = 0
        self._paused: float | None = None

    def elapsed(self) -> float:
        return (self._paused or time.perf_counter()) - self.start

    def pause(self) -> None:
        if self._paused is None:
            self._paused = time.perf_counter()

    def resume(self) -> None:
        """Go on as if no time had passed since `pause`."""
        if self._paused is not None:
            self.start += time.perf_counter() - self._paused
            self._paused = None

    def fraction(self) -> float:
        if self.steps is not None:
            return self.done / self.steps
        return self.elapsed() / self.seconds


class LatentRate:
    """The latent grids' rate-set steps while they train through their rounding (quantize.latent_steps):
    refreshed every LATENT_STEP_EVERY steps, as the grids' spread changes slowly, each refresh a
    warm search from the last one's multiplier (quantize.latent_steps_near); steps set on zero
    grids (1, so the first updates round away) last at most FLAT_SHARE of the budget, so a short
    run still gets its latents."""

    def __init__(self, grids: Mapping[str, torch.Tensor], bits_per_latent: float):
        self.grids = grids
        self.bits = bits_per_latent
        self._steps: dict[str, torch.Tensor] = {}
        self._flat_since: float | None = None  # budget fraction at which zero grids got their steps
        self._scale: float | None = None  # the last refresh's multiplier (log2, relative to the RMS)

    def now(self) -> dict[str, np.ndarray]:
        """The steps that put the grids as they are now at the planned rate, by name."""
        return dict(zip(self.grids, latent_steps(self._values(), self.bits)))

    def _values(self) -> list[np.ndarray]:
        return [p.detach().cpu().numpy() for p in self.grids.values()]

    def during_training(self, fraction: float, step: int) -> dict[str, torch.Tensor]:
        flat_over = self._flat_since is not None and fraction - self._flat_since >= FLAT_SHARE
        if not self._steps or step % LATENT_STEP_EVERY == 0 or flat_over:
            found, self._scale = latent_steps_near(self._values(), self.bits, self._scale)
            self._steps = {name: torch.tensor(s, device=self.grids[name].device) for name, s in zip(self.grids, found)}
            flat = not any(bool(p.detach().any()) for p in self.grids.values())
            self._flat_since = fraction if flat else None
        return self._steps


#: Given a Fitter entering its final stage (encoder and router frozen), the steps the written file
#: would store its other tensors (experts, decoder) at: quantization-aware training at any other
#: step trains weights the file does not hold.
FileSteps = Callable[["Fitter"], dict[str, np.ndarray]]


class Fitter:
    """Owns a volume's training state: the model, the sampler, and the record of what was run."""

    def __init__(self, volume: Volume, model_config: ModelConfig, quant: QuantConfig,
                 config: TrainConfig = TrainConfig(), file_steps: FileSteps | None = None,
                 roi: np.ndarray | None = None, voxels: VoxelSampler | None = None):
        self.volume = volume
        mask = None if roi is None else check_roi(roi, volume.shape)
        #: The number of voxels in the region of interest (codec.io.roi), None without one.
        self.roi_voxels = None if mask is None else int(mask.sum())
        self.quant = quant
        self.config = config
        self.device = resolve_device(config.device)
        self.shape = volume.shape
        self.target = torch.from_numpy(to_unit(volume.data, *volume.value_range).reshape(-1)).to(self.device)
        self.model = MoEC(model_config, seed=config.seed).to(self.device)
        self.model.gate_gradient = config.gate_gradient
        #: The latent grids by name (none without a grid encoder), looked up once: the joint stage
        #: reads them every step (their rate-set steps, the rate penalty).
        self.latents = {name: p for name, p in self.model.named_tensors() if is_latent(name)}
        self.latent_rate = LatentRate(self.latents, quant.latent_bits)
        self.sampler = torch.Generator().manual_seed(config.seed + 1)
        #: Draws the batches: busy voxels and the region of interest more often, weighted back. One
        #: built for another Fitter of the same volume, configuration and region may be passed in
        #: (`voxels`): the strata take about 1.6 s and 100 MB on the chest CT.
        self.voxels = voxels or VoxelSampler(self.target.cpu().numpy().reshape(self.shape),
                                             config.sample_activity, mask, config.roi_weight)
        self.steps_run = 0
        self.stage_steps = {stage: 0 for stage in STAGES}
        self.runs = 0
        #: Steps of the encoder and router tensors once quantized and frozen (final stage).
        self.frozen_steps: dict[str, np.ndarray | None] = {}
        self.file_steps = file_steps
        #: Steps the final stage trains the experts and decoder at, when `file_steps` gave them:
        #: the encoder stores exactly these when its file then lands in the size window.
        self.trained_steps: dict[str, np.ndarray] | None = None
        self._trained_steps_torch: dict[str, torch.Tensor] | None = None
        self.history: list[Progress] = []
        self._budget: _Budget | None = None  # of the run under way, or the last one
        self._pretrain_labels: torch.Tensor | None = None
        _warm_up_optimizer()

    def record(self) -> dict:
        return train_record(self.config, self.steps_run, [self.stage_steps[s] for s in STAGES], self.runs,
                            self.roi_voxels)

    # --- the generator --------------------------------------------------------------------------
    def fit(self, minutes: float | None = None, steps: int | None = None) -> Generator[Progress, None, None]:
        """Train for a budget (default: the config's), yielding Progress after every step."""
        if steps is None and minutes is None:
            steps, minutes = self.config.steps, self.config.minutes
        budget = self._budget = _Budget(steps, minutes)
        fresh = self.steps_run == 0
        lr0 = self.config.lr * (1.0 if fresh else CONTINUE_LR_FACTOR)
        router_steps = 0
        if fresh and self.config.router_pretraining and self.model.router is not None:
            router_steps = self.config.pretrain_steps if steps is None else min(self.config.pretrain_steps, steps // 3)
        self.runs += 1
        stage = optimizer = None
        decay_from = 0.0  # the learning rate decays over the reconstruction stages, not the router's
        try:
            while (fraction := budget.fraction()) < 1.0:
                if self._in_router_stage(budget, router_steps, fraction):
                    wanted, lr = "router", self.config.pretrain_lr
                    decay_from = fraction
                else:
                    wanted = "joint" if fraction < 1.0 - self.config.final_fraction else "final"
                    lr = lr0 * self.config.lr_decay ** ((fraction - decay_from) / (1.0 - decay_from))
                if fraction >= self.config.cubic_from and self._reads_linearly():
                    self.model.read_latents("cubic")
                if wanted != stage or optimizer is None:
                    optimizer = self._enter(wanted, optimizer if stage == "joint" else None)
                    stage = wanted
                for group in optimizer.param_groups:
                    group["lr"] = lr * group["scale"]
                loss, mse, share, balance = self._step(stage, optimizer, fraction)
                budget.done += 1
                self.steps_run += 1
                self.stage_steps[stage] += 1
                progress = Progress(self.steps_run, stage, loss, psnr_of_mse(mse), budget.elapsed(),
                                    min(1.0, budget.fraction()), lr, share, balance)
                self.history.append(progress)
                yield progress
        finally:
            # A closed generator (cancel) leaves a consistent model: no fake quantization left on.
            self.model.set_fake_steps(None)

    def _reads_linearly(self) -> bool:
        return self.model.config.encoder == "grid" and self.model.config.grid_interpolation == "linear"

    def pause(self) -> None:
        """Stop the clock of the run under way (suspended at a yield: another model trains in the
        meantime, codec.pipeline), so that its time budget counts only its own steps."""
        if self._budget is not None:
            self._budget.pause()

    def resume(self) -> None:
        if self._budget is not None:
            self._budget.resume()

    def run_seconds(self) -> float:
        """Seconds the run under way (or the last) has trained, pauses left out."""
        return self._budget.elapsed() if self._budget is not None else 0.0

    def rebudget(self, steps: int | None = None, minutes: float | None = None) -> None:
        """Give the run under way another budget (of the same kind); its schedule follows the new one."""
        if self._budget is None:
            return
        if steps is not None:
            self._budget.steps = steps
        if minutes is not None:
            self._budget.seconds = 60.0 * minutes

    # --- stages ---------------------------------------------------------------------------------
    @staticmethod
    def _in_router_stage(budget: _Budget, router_steps: int, fraction: float) -> bool:
        """Whether the next step is one of the router's: its steps are counted, and in a timed run
        they also end at ROUTER_TIME_SHARE of the time. A timed run's first step is the router's
        whatever the clock says, so that a budget shorter than a step still ends in the stage every
        run starts with, not in whichever the scheduler's delay before the first reading picked."""
        if budget.done >= router_steps:
            return False
        return budget.steps is not None or budget.done == 0 or fraction < ROUTER_TIME_SHARE

    def _enter(self, stage: str, joint: torch.optim.Optimizer | None = None) -> torch.optim.Optimizer:
        """The optimizer of a stage. Into the final stage the joint stage's Adam carries on: its
        frozen tensors get no gradient and so no update, and the experts keep their moment
        estimates (a fresh Adam's first steps move every weight by about the learning rate, which
        cost 4 dB for a hundred steps on the brain)."""
        model = self.model
        if stage == "final":
            self._freeze_prefix()
            self._set_trained_steps()
            if joint is not None:
                return joint
        else:
            self._unfreeze_prefix()
        if stage == "router":
            named = [(n, p) for n, p in model.named_parameters() if n.startswith("router.")]
        elif stage == "final":
            named = [(n, p) for n, p in model.named_parameters() if n.startswith(("experts.", "decoder."))]
        else:
            named = list(model.named_parameters())
        by_scale: dict[float, list[torch.Tensor]] = {}
        for n, p in named:
            by_scale.setdefault(LATENT_LR_SCALE if is_latent(n) else fan_in_scale(p), []).append(p)
        return torch.optim.Adam([{"params": ps, "scale": scale} for scale, ps in by_scale.items()])

    def _freeze_prefix(self) -> None:
        """Quantize the encoder and router in place and stop training them (the partition is final)."""
        latent = {} if self.quant.float16 else self.latent_rate.now()
        for name, param in self.model.named_tensors():
            if name not in self.model.prefix_names():
                continue
            if self.quant.float16:
                step = None
            elif is_latent(name):
                step = latent[name]
            else:
                bits = self.quant.bits_for(name, self.model.config.coordinate_layer)
                step = max_steps(param.detach().cpu().numpy(), bits, self.quant.granularity)
            round_in_place(param, step)
            param.requires_grad_(False)
            self.frozen_steps[name] = step

    def _unfreeze_prefix(self) -> None:
        for param in self.model.parameters():
            param.requires_grad_(True)
        self.frozen_steps = {}
        self.trained_steps = self._trained_steps_torch = None

    def _set_trained_steps(self) -> None:
        """Ask for the file's steps once, at the final stage's start: the frozen encoder and router
        hold nearly all the bytes, so the experts' share, and their step, barely moves after it."""
        if self.file_steps is None or self.quant.float16:
            return
        try:
            steps = self.file_steps(self)
        except MoecError:
            return  # the file cannot be sized now (the encoder will say why): the default steps
        self.trained_steps = steps
        self._trained_steps_torch = {name: torch.from_numpy(np.asarray(step, dtype=np.float32)).to(self.device)
                                     for name, step in steps.items()}

    def _fake_steps(self) -> dict[str, torch.Tensor] | None:
        if self.quant.float16:
            return None
        if self._trained_steps_torch is not None:
            return self._trained_steps_torch
        coordinate_layer = self.model.config.coordinate_layer
        return {
            name: max_steps_torch(p, self.quant.bits_for(name, coordinate_layer), self.quant.granularity)
            for name, p in self.model.named_tensors() if name.startswith(("experts.", "decoder."))
        }

    def _router_targets(self, flat: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        n = self.model.config.experts
        if self.config.pretrain_target == "blocks":
            return block_index(coords, block_grid(self.shape, n))
        if self._pretrain_labels is None:  # computed once, inside the first run's budget
            labels = intensity_clusters(self.target.cpu().numpy(), self.shape, n, seed=self.config.seed)
            self._pretrain_labels = torch.from_numpy(labels).to(self.device)
        return self._pretrain_labels[flat].long()

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Voxels drawn by the sampler (codec.fit.sampling) from the private generator: flat
        indices in memory order (the grids' reads and their gradients' scatter then walk the grids
        forward instead of jumping: the chest CT's finest grid at 256x, its read forward and backward
        13 ms unsorted, 9.5 sorted), coordinates, target values, and the draws' loss weights (None
        where all are 1), so that the batch's weighted MSE is the objective's in expectation."""
        draw = self.voxels.draw(batch, self.sampler)
        flat = draw.flat.to(self.device)
        weight = None if draw.weight is None else draw.weight.to(self.device)
        return flat, coords_from_flat(flat, self.shape), self.target[flat], weight

    def _step(self, stage: str, optimizer: torch.optim.Optimizer,
              fraction: float) -> tuple[float, float, tuple[float, ...], float]:
        """One optimisation step: (loss as reported, MSE, expert shares, balancing loss)."""
        model = self.model
        n = model.config.experts
        flat, coords, target, weight = self.sample(self.config.batch_size)
        optimizer.zero_grad(set_to_none=True)
        if stage == "router":
            logits = model.router_logits(coords, model.features(coords))
            loss = F.cross_entropy(logits, self._router_targets(flat, coords))
            loss.backward()
            optimizer.step()
            share = torch.bincount(logits.argmax(-1), minlength=n).float() / coords.shape[0]
            return loss.item(), math.nan, tuple(share.tolist()), 0.0
        if stage == "final":
            model.set_fake_steps(self._fake_steps())
        elif model.config.encoder == "grid" and not self.quant.float16 and fraction >= self.config.latent_qat_from:
            model.set_fake_steps(self.latent_rate.during_training(fraction, self.steps_run))
        out = model(coords)
        error = (out.values[:, 0] - target).square()
        mse = error.mean() if weight is None else (weight * error).mean()
        share = torch.bincount(out.routing.choice.reshape(-1), minlength=n).float() / out.routing.choice.numel()
        balance = torch.zeros(())
        if out.routing.probs is not None and stage == "joint" and self.config.balance_weight > 0:
            balance = self.config.balance_weight * n * torch.sum(share * out.routing.probs.mean(0))
        rate = latent_rate_penalty(list(self.latents.values()), self.config) if stage == "joint" else torch.zeros(())
        (mse + balance + rate).backward()
        optimizer.step()
        return mse.item(), mse.item(), tuple(share.tolist()), balance.item()
