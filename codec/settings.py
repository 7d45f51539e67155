"""What a user chooses, each with its one default, its choices and its checks: the settings of a
file (`Settings`) and of its training (`TrainConfig`). The command line, the plugin's widget and the
pipeline read them from here, so changing a default is one edit. No torch here: `moec --help`
builds its options from these without loading it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

PARTITIONS = ("learned", "blocks")  # a learned router (MoEC), or the fixed block split (TINC-style baseline)
ENCODERS = ("auto", "grid", "siren")  # auto: the latent grid wherever it applies (Settings.encoder_for)
ROUTER_INPUTS = ("features", "coordinates")
GRID_INTERPOLATIONS = ("linear", "cubic")  # how a latent grid is read between its nodes (codec.model.latents)
GRANULARITIES = ("tensor", "channel")  # one quantization step per tensor, or per output channel
TOP_K = (1, 2)
PRETRAIN_TARGETS = ("clusters", "blocks")
DEVICES = ("auto", "cpu", "cuda")
#: Coded bits per latent the size plan counts on: the sparse, smooth grids of
#: codec.fit.train.latent_rate_penalty. Fewer bits buy more, coarser latents.
LATENT_BITS = 1.5
#: The rates a compression tries when asked to choose (Settings.latent_bits None, `--latent-bits
#: auto`): with the number of experts open, it tries the kept number at the second rate after the
#: experts' trial (codec.pipeline); a fixed number of experts takes the first. Not the default:
#: which rate pays depends on the volume (the second gains on the development CT and loses on the
#: MR), but at the targets' budgets the trial's third model cost about what the choice gained
#: (docs/benchmarks.md, "The latent rate, chosen per volume").
AUTO_LATENT_BITS = (LATENT_BITS, 0.75)
#: How much more a voxel of a region of interest counts (codec.io.roi).
ROI_WEIGHT = 10.0
#: The experts a compression tries when the number is left to it (Settings.experts None): the
#: learned partition, and its control, one synthesis network on the same latents. It keeps the one
#: whose file is better after a short trial of each (codec.pipeline), so the router is used where it
#: pays (the brain template) and not where one network does better (the clinical CT and MR:
#: docs/benchmarks.md). The first is also the number where no trial applies.
AUTO_EXPERTS = (4, 1)
#: The ratios `moec bench` measures unless told, and the one its ablations run at.
BENCH_RATIOS = (128.0, 256.0, 512.0, 1024.0, 4096.0)
ABLATION_RATIO = 256.0
#: The MoEC rows `moec bench` may run: all of them, or those its verdicts read (codec.bench.methods.SEEDED).
BENCH_ROWS = ("all", "verdict")
#: The range of each number a user chooses. The checks refuse values outside those of `experts`,
#: `bits`, `grid_channels`, `seed` and `roi_weight` (the model, the file or the sampling cannot
#: hold them); the others bound the widget's boxes only, and the command line takes any positive
#: value there.
RANGES: dict[str, tuple[float, float]] = {
    "ratio": (2.0, 1e6),
    "experts": (1, 64),
    "bits": (2, 16),  # 16: float16 weights
    "grid_channels": (1, 16),
    "minutes": (0.05, 600.0),
    "steps": (1, 10**7),
    "lr": (1e-5, 0.1),
    "balance_weight": (0.0, 10.0),
    "seed": (0, 2**62 - 1),
    "roi_weight": (1.0, 1e6),
    "decode_scale": (0.1, 8.0),  # the grid a file is decoded on, as a factor per axis (codec.io.resample)
}


@dataclass(frozen=True)
class Settings:
    """What a user chooses about the file (training time and seed live in TrainConfig)."""

    ratio: float = 256.0
    experts: int | None = None  # None: the better of AUTO_EXPERTS for the volume; 1: one network
    top_k: int = 1  # one of TOP_K
    partition: str = "learned"  # one of PARTITIONS
    bits: int = 8  # 16: float16 weights
    granularity: str = "tensor"  # one of GRANULARITIES
    first_layer_extra_bits: int = 2
    expert_layers: int | None = None  # None: 3 after a SIREN encoder, 2 after a latent grid
    encoder_layers: int = 1
    encoder_share: float = 1.0
    encoder: str = "auto"  # "siren", "grid", or "auto": the grid wherever it applies
    grid_channels: int = 1
    grid_levels: int = 4
    #: Latent nodes per axis ~ voxels x (voxel size / largest)^P on thick slices (codec.fit.sizing.grid_layout).
    grid_spacing_power: float = 0.5
    latent_share: float = 0.95
    latent_bits: float | None = LATENT_BITS  # None: AUTO_LATENT_BITS, tried where the experts are
    router_features: bool = True  # False: the router reads the coordinates alone
    #: Whether a file compressed from DICOM keeps the patient's identity and the study (name, ID,
    #: birth date, UIDs): off, so that a file shared is anonymous unless its maker asked otherwise.
    keep_identity: bool = False

    def encoder_for(self, dims: int) -> str:
        """The encoder these settings give a volume of `dims` axes."""
        if self.encoder != "auto":
            return self.encoder
        # `--experts 1` stays a plain SIREN and `--partition blocks` SIREN blocks (the design's
        # baselines); the grid is 3D and stores its latents by rate, not as float16.
        grid_fits = (
            self.partition == "learned" and (self.experts is None or self.experts > 1) and dims == 3 and self.bits < 16
        )
        return "grid" if grid_fits else "siren"

    def candidates(self, dims: int) -> tuple[Settings, ...]:
        """The settings a compression of a volume of `dims` axes may try, each with its number of
        experts and its latent rate set, the first planned where one plan is asked for: these, when
        they name the number of experts (at the first of AUTO_LATENT_BITS unless they name a rate);
        else each of AUTO_EXPERTS on the latent grid at each rate, where the grid applies and a
        single network is possible (top-1), and otherwise the first of them. The compression
        trains them in rounds (codec.pipeline.Compression), not all of them."""
        bits = AUTO_LATENT_BITS if self.latent_bits is None else (self.latent_bits,)
        if self.experts is not None:
            return (replace(self, latent_bits=bits[0]),)
        if self.encoder_for(dims) != "grid" or self.top_k > 1:
            return (replace(self, experts=AUTO_EXPERTS[0], latent_bits=bits[0]),)
        return tuple(replace(self, experts=n, encoder="grid", latent_bits=b) for b in bits for n in AUTO_EXPERTS)


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained: the budget, the optimiser, the losses' weights, the seed."""

    minutes: float = 5.0
    steps: int | None = None  # a step budget overrides `minutes` and makes the run reproducible
    #: Coordinates per step. 16,384 runs more steps than 32,768 in the same time,
    #: and on the latent grid those steps gained more than the noisier gradients cost on all three
    #: development volumes (docs/benchmarks.md, "Training: learning rate and batch").
    batch_size: int = 1 << 14
    lr: float = 2.5e-3
    lr_decay: float = 0.1  # learning rate at the end of a run / at its start (exponential)
    balance_weight: float = 0.01
    #: Weight of an L1 penalty on the latent grids (mean |latent|, joint stage), against the MSE on
    #: the [-1, 1] scale. It makes the grids sparse (most latents zero once rounded), so
    #: that a plan at fewer bits per latent (Settings.latent_bits 1.5) holds more latents in the
    #: same bytes (measured against 2 bits without it: docs/benchmarks.md, "The latent grid and its coding").
    latent_l1: float = 3e-3
    #: Weight of a smoothness penalty on the latent grids (mean |difference| of neighbouring latents
    #: along every axis, joint stage), on the same scale. The spatial context model codes each latent
    #: as its residual from its causal neighbours (codec.coding.context), so a smooth grid costs fewer bits
    #: at the same step and its rate-set step comes out finer (measured, with the weights tried:
    #: docs/benchmarks.md, "The latent grid and its coding").
    latent_tv: float = 1e-2
    #: The share of each batch drawn by the volume's local activity rather than uniformly, each draw
    #: weighted back so the objective is unchanged (codec.fit.sampling): the air and flat tissue
    #: stop taking most of the batch, and the gradient's variance falls (docs/benchmarks.md,
    #: "Training: where the batch is drawn"). 0: uniform draws.
    sample_activity: float = 0.8
    gate_gradient: float = 0.1  # scale of the router's straight-through gradient at top-1
    router_pretraining: bool = True
    pretrain_target: str = "clusters"  # one of PRETRAIN_TARGETS
    pretrain_steps: int = 300
    pretrain_lr: float = 3e-2
    final_fraction: float = 0.2
    #: From this fraction of the budget on, latent grids train through their quantization at the
    #: step their rate asks for. From the start: float latents rounded later lose much at the
    #: switch, and an annealed soft rounding did worse still (docs/benchmarks.md).
    latent_qat_from: float = 0.0
    #: From this fraction of the budget on, that quantization is the latents' rounding (straight-
    #: through); before it, uniform noise over their step. 1: noise throughout the joint stage, the
    #: rounding met only when the final stage freezes them: measured better at equal steps on all
    #: three development volumes (docs/benchmarks.md, "Training: quantization noise").
    latent_rounding_from: float = 1.0
    #: From this fraction of the budget on, latent grids are read by cubic interpolation, trilinear
    #: before (1: never). Cubic is better at equal steps but each step costs much more, so
    #: cubic from the start loses at equal time; trilinear first, then cubic, wins on all three
    #: development volumes (docs/benchmarks.md, "Cubic reading of the latent grid"). The file
    #: records the reading its latents were last trained with (ModelConfig.grid_interpolation).
    cubic_from: float = 0.4
    seed: int = 0
    device: str = "auto"  # one of DEVICES
    #: How much more a voxel of the region of interest counts (codec.io.roi), when a Fitter has one.
    roi_weight: float = ROI_WEIGHT
    #: Where a compression tries several settings (Settings.candidates), the share of the budget
    #: each trains before the better is kept; the kept one trains on for the rest.
    trial_share: float = 0.15

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise ValueError("steps must be at least 1")
        if self.steps is None and not (self.minutes > 0 and math.isfinite(self.minutes)):
            raise ValueError("minutes must be a positive number")
        if not 1 <= self.batch_size <= 1 << 22:
            raise ValueError("batch_size must be 1 .. 4194304")
        rates = (self.lr, self.pretrain_lr, self.balance_weight, self.latent_l1, self.latent_tv, self.gate_gradient)
        if not (
            all(math.isfinite(r) for r in rates)
            and self.lr > 0
            and self.pretrain_lr > 0
            and 0 < self.lr_decay <= 1
            and self.balance_weight >= 0
            and self.latent_l1 >= 0
            and self.latent_tv >= 0
        ):
            raise ValueError(
                "learning rates must be positive and finite, lr_decay in (0, 1], balance_weight, "
                "latent_l1 and latent_tv finite and not negative"
            )
        if not RANGES["seed"][0] <= self.seed <= RANGES["seed"][1]:
            raise ValueError(f"seed must be an integer in 0 .. {RANGES['seed'][1]}")
        shares = (self.latent_qat_from, self.latent_rounding_from, self.cubic_from)
        if not 0 <= self.final_fraction < 1 or not all(0 <= share <= 1 for share in shares):
            raise ValueError(
                "final_fraction must be in [0, 1), latent_qat_from, latent_rounding_from and cubic_from in [0, 1]"
            )
        if not 0.0 <= self.sample_activity <= 1.0:
            raise ValueError("sample_activity must be in [0, 1]")
        if not 0.0 < self.trial_share <= 0.3:
            raise ValueError("trial_share must be in (0, 0.3]")
        low, high = RANGES["roi_weight"]
        if not (math.isfinite(self.roi_weight) and low <= self.roi_weight <= high):
            raise ValueError(f"roi_weight must be a number from {low:g} to {high:g}")
        if self.pretrain_target not in PRETRAIN_TARGETS or self.pretrain_steps < 0:
            raise ValueError(f"pretrain_target must be one of {PRETRAIN_TARGETS}; pretrain_steps not negative")
