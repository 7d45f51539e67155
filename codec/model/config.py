"""The network's configuration: everything needed to rebuild it, stored in the .moec header, and
the names and shapes of its tensors in storage order."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from codec.settings import ENCODERS as CHOSEN_ENCODERS
from codec.settings import GRID_INTERPOLATIONS, PARTITIONS, RANGES, Settings

#: The encoders a network can have (a user may also leave the choice to codec.settings: "auto").
ENCODERS = tuple(e for e in CHOSEN_ENCODERS if e != "auto")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Everything needed to rebuild the network; stored in the .moec header. A file's network comes
    from its settings (codec.settings) through codec.fit.sizing.config_for, which sets every field
    its network uses. The number of experts is always given; the other defaults build a small SIREN
    network for direct use (tests, experiments), with the user's defaults where a user chooses."""

    dims: int = 3
    experts: int
    top_k: int = Settings.top_k
    partition: str = Settings.partition
    encoder_width: int = 32
    encoder_layers: int = Settings.encoder_layers
    router_width: int = 16
    expert_width: int = 32
    expert_layers: int = 2
    out_channels: int = 1
    omega0: float = 30.0
    block_grid: tuple[int, ...] = field(default_factory=tuple)
    encoder: str = "siren"
    grid_channels: int = Settings.grid_channels
    grid_levels: int = Settings.grid_levels
    grid_finest: tuple[int, ...] = field(default_factory=tuple)  # finest grid's nodes per axis
    grid_hold: tuple[int, ...] = field(default_factory=tuple)  # per axis, levels before it halves; () none
    grid_interpolation: str = "linear"  # how the grid is read between nodes (GRID_INTERPOLATIONS)
    router_features: bool = Settings.router_features  # the router reads the encoder features beside the coordinates

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("invalid model configuration: " + "; ".join(problems))

    def problems(self) -> list[str]:
        out = []
        if self.dims not in (3, 4):
            out.append(f"dims must be 3 or 4, not {self.dims}")
        low, high = RANGES["experts"]
        if not low <= self.experts <= high:
            out.append(f"experts must be {low}..{high}, not {self.experts}")
        if not 1 <= self.top_k <= min(2, self.experts):
            out.append(f"top_k must be 1..{min(2, self.experts)}, not {self.top_k}")
        if self.partition not in PARTITIONS:
            out.append(f"partition must be one of {PARTITIONS}, not {self.partition!r}")
        for name in ("encoder_width", "router_width", "expert_width"):
            if not 1 <= getattr(self, name) <= 4096:
                out.append(f"{name} must be 1..4096")
        if not 1 <= self.expert_layers <= 8:
            out.append("expert_layers must be 1..8")
        if not 0 <= self.encoder_layers <= 4:
            out.append("encoder_layers must be 0..4")
        if self.partition == "learned" and not self.uses_encoder and self.experts > 1:
            out.append("a learned partition needs an encoder")
        if self.out_channels != 1:
            out.append("only one output channel is supported")
        if not (1.0 <= self.omega0 <= 1000.0):
            out.append("omega0 must be in 1..1000")
        if self.partition == "blocks":
            if len(self.block_grid) != self.dims or math.prod(self.block_grid) != self.experts:
                out.append(f"block_grid {self.block_grid} must have {self.dims} axes and {self.experts} blocks")
            if self.top_k != 1:
                out.append("the block partition routes each voxel to exactly one expert")
        elif self.block_grid:
            out.append("block_grid is only for the block partition")
        if self.encoder not in ENCODERS:
            out.append(f"encoder must be one of {ENCODERS}, not {self.encoder!r}")
        elif self.encoder == "grid":
            if self.partition != "learned":
                out.append("the grid encoder is for the learned partition")
            if self.dims != 3:
                out.append("the grid encoder reads 3D coordinates only")
            if self.encoder_layers != 0:
                out.append("the grid encoder has no SIREN layers (encoder_layers must be 0)")
            low, high = RANGES["grid_channels"]
            if not (low <= self.grid_channels <= high and 1 <= self.grid_levels <= 8):
                out.append(f"grid_channels must be {low}..{high} and grid_levels 1..8")
            if len(self.grid_finest) != self.dims or not all(2 <= n <= 1024 for n in self.grid_finest):
                out.append(f"grid_finest {self.grid_finest} must give 2..1024 nodes on each of {self.dims} axes")
            if self.grid_hold and (
                len(self.grid_hold) != self.dims or not all(0 <= h < self.grid_levels for h in self.grid_hold)
            ):
                out.append(
                    f"grid_hold {self.grid_hold} must give 0..{self.grid_levels - 1} levels on each of {self.dims} axes"
                )
            if self.grid_interpolation not in GRID_INTERPOLATIONS:
                out.append(f"grid_interpolation must be one of {GRID_INTERPOLATIONS}, not {self.grid_interpolation!r}")
        elif self.grid_finest or self.grid_hold or self.grid_interpolation != "linear":
            out.append("grid_finest, grid_hold and grid_interpolation are only for the grid encoder")
        return out

    @property
    def has_router(self) -> bool:
        return self.partition == "learned" and self.experts > 1

    @property
    def uses_encoder(self) -> bool:
        return self.partition == "learned" and (self.encoder_layers > 0 or self.encoder == "grid")

    @property
    def feature_width(self) -> int:
        """Width of what the experts read."""
        if self.encoder == "grid":
            return self.grid_levels * self.grid_channels
        return self.encoder_width if self.uses_encoder else self.dims

    @property
    def coordinate_layer(self) -> str:
        """The weight tensor that reads raw coordinates (the omega_0-scaled one); none with a grid."""
        if self.encoder == "grid":
            return ""
        return "encoder.w0" if self.uses_encoder else "experts.w0"

    @property
    def router_inputs(self) -> int:
        """The coordinates, and the encoder features unless `router_features` is off (the design: the
        router is conditioned on them; the coordinates alone are measured in docs/benchmarks.md)."""
        return self.dims + (self.feature_width if self.router_features else 0)

    def grid_resolutions(self) -> list[tuple[int, ...]]:
        """Nodes per axis of each grid level, finest first (at least 2 per axis): each level halves
        every axis, except that axis k keeps its finest count for its first grid_hold[k] levels."""
        return grid_levels(self.grid_finest, self.grid_hold, self.grid_levels)

    def latent_count(self) -> int:
        return sum(self.grid_channels * math.prod(r) for r in self.grid_resolutions()) if self.encoder == "grid" else 0

    def tensor_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Names and shapes of every parameter, in the order they are stored in a .moec file."""
        shapes: list[tuple[str, tuple[int, ...]]] = []
        width_in = self.dims
        if self.encoder == "grid":
            shapes += [
                (f"encoder.grid{level}", (self.grid_channels, *res))
                for level, res in enumerate(self.grid_resolutions())
            ]
            if self.grid_interpolation == "cubic":  # the refinement's learned taps, per level and axis
                shapes.append(("encoder.taps", (self.grid_levels, 3)))
            width_in = self.feature_width
        elif self.uses_encoder:
            for layer in range(self.encoder_layers):
                shapes += [
                    (f"encoder.w{layer}", (1, width_in, self.encoder_width)),
                    (f"encoder.b{layer}", (1, self.encoder_width)),
                ]
                width_in = self.encoder_width
        if self.has_router:
            shapes += [
                ("router.w0", (self.router_inputs, self.router_width)),
                ("router.b0", (self.router_width,)),
                ("router.w1", (self.router_width, self.experts)),
                ("router.b1", (self.experts,)),
            ]
        for layer in range(self.expert_layers):
            shapes += [
                (f"experts.w{layer}", (self.experts, width_in, self.expert_width)),
                (f"experts.b{layer}", (self.experts, self.expert_width)),
            ]
            width_in = self.expert_width
        shapes += [("decoder.w", (self.expert_width, self.out_channels)), ("decoder.b", (self.out_channels,))]
        return shapes

    def parameter_count(self) -> int:
        return sum(math.prod(shape) for _, shape in self.tensor_shapes())

    def expert_parameter_count(self) -> int:
        """Parameters that belong to one expert alone (its share of the stacked tensors)."""
        return sum(math.prod(s[1:]) for name, s in self.tensor_shapes() if name.startswith("experts."))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["block_grid"] = list(self.block_grid)
        d["grid_finest"] = list(self.grid_finest)
        # Stored only where some axis holds (format version 6): an isotropic file's header stays
        # what it was.
        if self.grid_hold:
            d["grid_hold"] = list(self.grid_hold)
        else:
            del d["grid_hold"]
        if self.grid_interpolation == "linear":  # stored only where cubic (format version 7)
            del d["grid_interpolation"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        d["block_grid"] = tuple(d.get("block_grid", ()))
        d["grid_finest"] = tuple(d.get("grid_finest", ()))
        d["grid_hold"] = tuple(d.get("grid_hold", ()))
        return cls(**d)


def grid_levels(finest: tuple[int, ...], hold: tuple[int, ...], levels: int) -> list[tuple[int, ...]]:
    """Nodes per axis of `levels` grid levels below `finest`: level l has ceil(n / 2^(l - h)) nodes
    on an axis of n finest nodes that holds h levels (at least 2)."""
    hold = hold or (0,) * len(finest)
    return [
        tuple(max(2, math.ceil(n / 2 ** max(0, level - h))) for n, h in zip(finest, hold)) for level in range(levels)
    ]


def is_latent(name: str) -> bool:
    """Whether a stored tensor is a latent grid (quantized by rate, see quantize.rate_qstep)."""
    return name.startswith("encoder.grid")
