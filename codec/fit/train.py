"""Training: `Fitter.fit()` is a generator of Progress; `codec.pipeline.Compression.run` drives it
for the CLI, the plugin, the benchmarks and the tests alike.

A run's stages (docs/design.md, "The network"):

    router  fresh learned models only, a few hundred cheap steps (no expert is evaluated): the
            router learns a balanced starting partition, the intensity clusters of partition.py
            by default, so joint training does not collapse onto one expert (it reads the
            encoder's features but never trains them: codec.model.network);
    joint   everything, loss = MSE + balancing loss (Switch form, alpha N sum_i f_i P_i) + the
            latents' rate penalty (sparse and smooth grids code to fewer bits), the latents read
            with uniform noise over their rate-set step (rounded, straight-through, from
            TrainConfig.latent_rounding_from), until 1 - final_fraction of the budget;
    final   encoder and router are quantized in place and frozen, so the partition stops moving
            and equals the one the decoder computes from the stored router; experts and decoder
            train quantization-aware against it, at the quantization steps (qsteps) the file
            will store them at when the Fitter is told them (`file_qsteps`: the pipeline's size
            search), else at their largest weight's qstep at the configured bit width
            (codec.fit.quantization).

The stages' schedule is a pure function of the share of the budget done (codec.fit.schedule). The
budget (codec.fit.budget) is steps (reproducible) or wall-clock minutes, router stage included. The
model trained so far is `Fitter.model` at every moment: closing the generator (a cancel, a stopped
worker) keeps it, and calling `fit()` again continues from it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from codec.coding.quantize import QuantConfig
from codec.errors import MoecError
from codec.fit.budget import Budget, Clock
from codec.fit.quantization import Quantization
from codec.fit.sampling import VoxelSampler
from codec.fit.schedule import STAGES, Point, Schedule
from codec.io.roi import check_roi
from codec.io.volume import Volume
from codec.model import ModelConfig, MoEC, is_latent
from codec.model.coords import coords_from_flat
from codec.model.partition import block_grid, block_index, intensity_clusters
from codec.model.units import to_unit
from codec.settings import TrainConfig

#: Latent grids learn at this multiple of the learning rate: each latent sees only the few
#: coordinates around its node, so its gradients are small and sparse.
LATENT_LR_SCALE = 4.0
#: Adam moves every weight by about the learning rate each step, so a layer's output moves in
#: proportion to its fan-in. The default rate was tuned on layers up to about this wide; a wider
#: layer learns at `WIDE_FAN_IN / fan-in` of it. Without this a single wide SIREN (at high ratios)
#: stalled at the PSNR of predicting the mean; the value is a compromise between the widths
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
    if not grids or (config.latent_l1 <= 0 and config.latent_tv <= 0):
        return torch.zeros(())
    latents = sum(g.numel() for g in grids)
    pairs = sum(g.numel() // g.shape[axis] * (g.shape[axis] - 1) for g in grids for axis in range(1, g.dim()))
    l1 = config.latent_l1 / latents
    tv = config.latent_tv / pairs if pairs else 0.0
    return _RatePenalty.apply(l1, tv, *grids)


class _RatePenalty(torch.autograd.Function):
    """l1 * sum |g| + tv * sum |neighbour differences| over the grids, with the backward written by
    hand from the differences' signs kept by the forward: autograd through `diff` and `abs` spent a
    zeroed grid-sized tensor and several passes per axis, a step's largest cost after the reading
    on a large grid. Its subgradient at 0 is 0, as autograd's."""

    @staticmethod
    def forward(ctx: Any, l1: float, tv: float, *grids: torch.Tensor) -> torch.Tensor:
        total = grids[0].new_zeros(())
        signs: list[torch.Tensor] = []  # per grid, its differences' signs along each axis of 2+ nodes
        for g in grids:
            if l1 > 0:
                total += l1 * torch.linalg.vector_norm(g, 1)
            for axis in range(1, g.dim()):
                if tv > 0 and g.shape[axis] > 1:
                    d = g.diff(dim=axis)
                    total += tv * torch.linalg.vector_norm(d, 1)
                    signs.append(d.sign_())
        ctx.save_for_backward(*grids, *signs)
        ctx.l1, ctx.tv, ctx.grids = l1, tv, len(grids)
        return total

    @staticmethod
    def backward(ctx: Any, out_grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        grids, signs = saved[: ctx.grids], iter(saved[ctx.grids :])
        grads: list[torch.Tensor | None] = []
        for g, needed in zip(grids, ctx.needs_input_grad[2:]):
            axes = [axis for axis in range(1, g.dim()) if ctx.tv > 0 and g.shape[axis] > 1]
            steps = [next(signs) for _ in axes]  # consumed whether or not this grid needs a gradient
            if not needed:
                grads.append(None)
                continue
            grad = torch.sign(g).mul_(ctx.l1) if ctx.l1 > 0 else torch.zeros_like(g)
            for axis, step in zip(axes, steps):
                n = g.shape[axis]
                grad.narrow(axis, 1, n - 1).add_(step, alpha=ctx.tv)
                grad.narrow(axis, 0, n - 1).sub_(step, alpha=ctx.tv)
            grads.append(grad.mul_(out_grad))
        return (None, None, *grads)


def psnr_of_mse(mse: float) -> float:
    """PSNR of a mean squared error on the [-1, 1] scale, where the peak (max - min) is 2."""
    if math.isnan(mse):
        return math.nan
    if math.isinf(mse):
        return -math.inf  # a diverged run; pipeline.file_bytes refuses to write it
    return 10.0 * math.log10(4.0 / mse) if mse > 0 else math.inf


def adam(params: list) -> torch.optim.Optimizer:
    """Adam, fused where this torch build has it for the parameters' device (CPU since torch 2.4):
    one pass over each tensor a step instead of a dozen, which counts on a large latent grid."""
    try:
        return torch.optim.Adam(params, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params)


_optimizer_ready = False


def _warm_up_optimizer() -> None:
    """torch imports its compiler stack on the first optimizer step, which takes long next to a step:
    pay that before a run's clock starts, not inside its time budget."""
    global _optimizer_ready
    if not _optimizer_ready:
        p = torch.nn.Parameter(torch.zeros(1))
        optimizer = adam([p])
        p.sum().backward()
        optimizer.step()
        _optimizer_ready = True


def train_record(
    config: TrainConfig, steps: int, stage_steps: list[int], *, runs: int, roi_voxels: int | None = None
) -> dict:
    """How a model was made, for the file's header (no timestamps: files stay reproducible); a
    region of interest adds its size and weight (a file made without one has no "roi" field)."""
    record = {
        "seed": config.seed,
        "steps": steps,
        "stages": stage_steps,
        "runs": runs,
        "minutes": None if config.steps is not None else config.minutes,
        "batch": config.batch_size,
        "lr": config.lr,
        "balance": config.balance_weight,
        "gate_gradient": config.gate_gradient,
        "sample_activity": config.sample_activity,
        "pretrain": config.pretrain_target if config.router_pretraining else "none",
    }
    if roi_voxels is not None:
        record["roi"] = {"voxels": roi_voxels, "weight": config.roi_weight}
    return record


#: Given a Fitter entering its final stage (encoder and router frozen), the qsteps the written file
#: would store its other tensors (experts, decoder) at: quantization-aware training at any other
#: qstep trains weights the file does not hold.
FileQSteps = Callable[["Fitter"], dict[str, np.ndarray]]


class _Run:
    """The run under way (or the last): its budget, its clock and the steps it has done."""

    def __init__(self, budget: Budget):
        self.budget = budget
        self.clock = Clock()
        self.done = 0

    def fraction(self) -> float:
        return self.budget.fraction(self.done, self.clock.elapsed())


class Fitter:
    """Owns a volume's training state: the model, the sampler, and the record of what was run."""

    def __init__(
        self,
        volume: Volume,
        model_config: ModelConfig,
        quant: QuantConfig,
        config: TrainConfig = TrainConfig(),
        *,
        file_qsteps: FileQSteps | None = None,
        roi: np.ndarray | None = None,
        sampler: VoxelSampler | None = None,
    ):
        self.volume = volume
        mask = None if roi is None else check_roi(roi, volume.shape)
        #: The number of voxels in the region of interest (codec.io.roi), None without one.
        self.roi_voxels = None if mask is None else int(mask.sum())
        self.config = config
        self.device = resolve_device(config.device)
        self.shape = volume.shape
        self.target = torch.from_numpy(to_unit(volume.data, *volume.value_range).reshape(-1)).to(self.device)
        self.model = MoEC(model_config, seed=config.seed).to(self.device)
        self.model.gate_gradient = config.gate_gradient
        #: The qsteps the model trains through (the latents', the frozen prefix's, the file's).
        self.quantization = Quantization(
            self.model, quant, self.device, None if file_qsteps is None else lambda: file_qsteps(self)
        )
        #: The random numbers of the batches drawn.
        self.rng = torch.Generator().manual_seed(config.seed + 1)
        #: The random numbers of the latents' quantization noise (apart: the batches stay as they were).
        self.noise_rng = torch.Generator(device=self.device).manual_seed(config.seed + 2)
        #: Draws the batches: busy voxels and the region of interest more often, weighted back. One
        #: built for another Fitter of the same volume, configuration and region may be passed in
        #: (`sampler`): its strata are costly to build on a large volume, in time and memory.
        self.sampler = sampler or VoxelSampler(
            self.target.cpu().numpy().reshape(self.shape), config.sample_activity, mask, config.roi_weight
        )
        self.steps_run = 0
        self.stage_steps = {stage: 0 for stage in STAGES}
        self.runs = 0
        self.history: list[Progress] = []
        self._run: _Run | None = None  # the run under way, or the last one
        self._pretrain_labels: torch.Tensor | None = None
        _warm_up_optimizer()

    @property
    def quant(self) -> QuantConfig:
        return self.quantization.quant

    @property
    def frozen_qsteps(self) -> dict[str, np.ndarray | None]:
        """QSteps of the encoder and router tensors once quantized and frozen (final stage)."""
        return self.quantization.frozen_qsteps

    @property
    def trained_qsteps(self) -> dict[str, np.ndarray] | None:
        """QSteps the final stage trains the experts and decoder at, when the file's were given."""
        return self.quantization.trained_qsteps

    def record(self) -> dict:
        return train_record(
            self.config,
            self.steps_run,
            [self.stage_steps[s] for s in STAGES],
            runs=self.runs,
            roi_voxels=self.roi_voxels,
        )

    # --- the generator --------------------------------------------------------------------------
    def fit(self, minutes: float | None = None, steps: int | None = None) -> Generator[Progress, None, None]:
        """Train for a budget (default: the config's), yielding Progress after every step."""
        if steps is None and minutes is None:
            steps, minutes = self.config.steps, self.config.minutes
        run = self._run = _Run(Budget(steps, minutes))
        schedule = Schedule.for_run(
            self.config, steps=steps, fresh=self.steps_run == 0, has_router=self.model.router is not None
        )
        self.runs += 1
        stage = optimizer = None
        decay_from = 0.0  # the learning rate decays over the reconstruction stages, not the router's
        try:
            while (fraction := run.fraction()) < 1.0:
                point = schedule.at(fraction, run.done, decay_from)
                decay_from = point.decay_from
                if point.cubic and self._reads_linearly():
                    self.model.read_latents("cubic")
                if point.stage != stage or optimizer is None:
                    optimizer = self._enter(point.stage, optimizer if stage == "joint" else None)
                    stage = point.stage
                for group in optimizer.param_groups:
                    group["lr"] = point.lr * group["scale"]
                loss, mse, share, balance = self._step(stage, optimizer, fraction, point)
                run.done += 1
                self.steps_run += 1
                self.stage_steps[stage] += 1
                progress = Progress(
                    self.steps_run,
                    stage,
                    loss,
                    psnr_of_mse(mse),
                    run.clock.elapsed(),
                    min(1.0, run.fraction()),
                    point.lr,
                    share,
                    balance,
                )
                self.history.append(progress)
                yield progress
        finally:
            # A closed generator (cancel) leaves a consistent model: no fake quantization left on.
            self.model.set_fake_qsteps(None)

    def _reads_linearly(self) -> bool:
        return self.model.config.encoder == "grid" and self.model.config.grid_interpolation == "linear"

    def pause(self) -> None:
        """Stop the clock of the run under way (suspended at a yield: another model trains in the
        meantime, codec.pipeline), so that its time budget counts only its own steps."""
        if self._run is not None:
            self._run.clock.pause()

    def resume(self) -> None:
        if self._run is not None:
            self._run.clock.resume()

    def run_seconds(self) -> float:
        """Seconds the run under way (or the last) has trained, pauses left out."""
        return self._run.clock.elapsed() if self._run is not None else 0.0

    def rebudget(self, budget: Budget) -> None:
        """Give the run under way another budget (of the same kind); its schedule follows the new one."""
        if self._run is not None:
            self._run.budget = budget

    # --- stages ---------------------------------------------------------------------------------
    def _enter(self, stage: str, joint: torch.optim.Optimizer | None = None) -> torch.optim.Optimizer:
        """The optimizer of a stage. Into the final stage the joint stage's Adam carries on: its
        frozen tensors get no gradient and so no update, and the experts keep their moment
        estimates (a fresh Adam's first steps move every weight by about the learning rate, which
        costs dB that take many steps to win back)."""
        model = self.model
        if stage == "final":
            self.quantization.freeze_prefix()
            if joint is not None:
                return joint
        else:
            self.quantization.unfreeze_prefix()
        if stage == "router":
            named = [(n, p) for n, p in model.named_parameters() if n.startswith("router.")]
        elif stage == "final":
            named = [(n, p) for n, p in model.named_parameters() if n.startswith(("experts.", "decoder."))]
        else:
            named = list(model.named_parameters())
        by_scale: dict[float, list[torch.Tensor]] = {}
        for n, p in named:
            by_scale.setdefault(LATENT_LR_SCALE if is_latent(n) else fan_in_scale(p), []).append(p)
        return adam([{"params": ps, "scale": scale} for scale, ps in by_scale.items()])

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
        forward instead of jumping, which is faster on a large grid), coordinates, target values,
        and the draws' loss weights (None where all are 1), so that the batch's weighted MSE is the
        objective's in expectation."""
        draw = self.sampler.draw(batch, self.rng)
        flat = draw.flat.to(self.device)
        weight = None if draw.weight is None else draw.weight.to(self.device)
        return flat, coords_from_flat(flat, self.shape), self.target[flat], weight

    def _step(
        self, stage: str, optimizer: torch.optim.Optimizer, fraction: float, point: Point
    ) -> tuple[float, float, tuple[float, ...], float]:
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
            model.set_fake_qsteps(self.quantization.final_qsteps())
        elif model.config.encoder == "grid" and not self.quant.float16 and point.latent_qat:
            latent_rate = self.quantization.latent_rate
            qsteps = latent_rate.during_training(fraction, self.steps_run)
            # Zero grids' first step (1) is there to round the first small updates away: noise over
            # it would bury the features the experts are fitting.
            noise = None if point.latent_rounding or latent_rate.flat else self.noise_rng
            model.set_fake_qsteps(qsteps, noise)
        out = model(coords)
        error = (out.values[:, 0] - target).square()
        mse = error.mean() if weight is None else (weight * error).mean()
        share = torch.bincount(out.routing.choice.reshape(-1), minlength=n).float() / out.routing.choice.numel()
        balance = torch.zeros(())
        if out.routing.probs is not None and stage == "joint" and self.config.balance_weight > 0:
            balance = self.config.balance_weight * n * torch.sum(share * out.routing.probs.mean(0))
        latents = list(self.quantization.latent_rate.grids.values())
        rate = latent_rate_penalty(latents, self.config) if stage == "joint" else torch.zeros(())
        (mse + balance + rate).backward()
        optimizer.step()
        return mse.item(), mse.item(), tuple(share.tolist()), balance.item()
