"""The MoEC network (arXiv 2312.01361): shared encoder, router, N expert SIRENs, shared decoder.

    x_hat = Dec( sum_{i in top-k} w_i * E_i(e) ),   e = Enc(x),   w = renormalised top-k of softmax(G(e))

Expert weights of one layer are stacked into a single (N, in, out) tensor, so an expert is an index
into the stack, dispatch groups coordinates by expert (each coordinate runs through its k experts
only), and quantization treats each stacked tensor as one tensor. With `partition="blocks"` the router
is replaced by the fixed TINC-style block split and every expert sees its block's local coordinates:
the baseline is an option of the same code, not a copy.

The shared encoder is pluggable (DESIGN section 3): a SIREN layer on the coordinates, or a latent
grid, a few dense 3D feature grids from fine to coarse (each level half the resolution of the one
before), read by trilinear interpolation; its latents are stored quantized and entropy-coded like
every other tensor, and they hold most of a grid model's bytes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import partition as fixed
from .quantize import fake_quantize

PARTITIONS = ("learned", "blocks")
ENCODERS = ("siren", "grid")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; stored in the .moec header. The defaults build a
    small SIREN network for direct use (tests, experiments); a file's network comes from its
    settings (codec.settings) through budget.config_for, which sets every field its network uses."""

    dims: int = 3
    experts: int = 8
    top_k: int = 1
    partition: str = "learned"
    encoder_width: int = 32
    encoder_layers: int = 1
    router_width: int = 16
    expert_width: int = 32
    expert_layers: int = 2
    out_channels: int = 1
    omega0: float = 30.0
    block_grid: tuple[int, ...] = field(default_factory=tuple)
    encoder: str = "siren"
    grid_channels: int = 2
    grid_levels: int = 4
    grid_finest: tuple[int, ...] = field(default_factory=tuple)  # finest grid's nodes per axis
    grid_hold: tuple[int, ...] = field(default_factory=tuple)  # per axis, levels before it halves; () none
    router_features: bool = True  # the router reads the encoder features beside the coordinates

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("invalid model configuration: " + "; ".join(problems))

    def problems(self) -> list[str]:
        out = []
        if self.dims not in (3, 4):
            out.append(f"dims must be 3 or 4, not {self.dims}")
        if not 1 <= self.experts <= 64:
            out.append(f"experts must be 1..64, not {self.experts}")
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
            if not (1 <= self.grid_channels <= 16 and 1 <= self.grid_levels <= 8):
                out.append("grid_channels must be 1..16 and grid_levels 1..8")
            if len(self.grid_finest) != self.dims or not all(2 <= n <= 1024 for n in self.grid_finest):
                out.append(f"grid_finest {self.grid_finest} must give 2..1024 nodes on each of {self.dims} axes")
            if self.grid_hold and (len(self.grid_hold) != self.dims
                                   or not all(0 <= h < self.grid_levels for h in self.grid_hold)):
                out.append(f"grid_hold {self.grid_hold} must give 0..{self.grid_levels - 1} levels on each of "
                           f"{self.dims} axes")
        elif self.grid_finest or self.grid_hold:
            out.append("grid_finest and grid_hold are only for the grid encoder")
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
        """The coordinates, and the encoder features unless `router_features` is off (DESIGN: the
        router is conditioned on them; over a latent grid the coordinates alone measured 0.4 dB
        higher while the latents started random, 1.1 dB lower since they start at zero:
        docs/benchmarks.md)."""
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
            shapes += [(f"encoder.grid{level}", (self.grid_channels, *res))
                       for level, res in enumerate(self.grid_resolutions())]
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
    return [tuple(max(2, math.ceil(n / 2 ** max(0, level - h))) for n, h in zip(finest, hold))
            for level in range(levels)]


class Routing(NamedTuple):
    probs: torch.Tensor | None  # (B, N) gate probabilities; None for the block partition
    choice: torch.Tensor  # (B, k) chosen experts
    weights: torch.Tensor  # (B, k) mixing weights (ones forward at top-1)


class Output(NamedTuple):
    values: torch.Tensor  # (B, C) normalised intensities
    routing: Routing


def is_latent(name: str) -> bool:
    """Whether a stored tensor is a latent grid (quantized by rate, see quantize.rate_step)."""
    return name.startswith("encoder.grid")


def _uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator) -> nn.Parameter:
    return nn.Parameter((torch.rand(shape, generator=generator) * 2.0 - 1.0) * bound)


class _FakeQuantizable(nn.Module):
    """A module whose parameters can be read through fake quantization (quantization-aware training)."""

    fake_steps: dict[str, torch.Tensor] | None = None

    def _param(self, name: str) -> torch.Tensor:
        p = getattr(self, name)
        if self.fake_steps is not None and name in self.fake_steps:
            return fake_quantize(p, self.fake_steps[name])
        return p


class SirenStack(_FakeQuantizable):
    """`groups` independent SIRENs of identical shape, with weights stacked as (groups, in, out).

    `first_omega` marks a stack that reads raw coordinates: its first layer gets SIREN's first-layer
    initialisation; a stack that reads encoder features uses the hidden-layer one throughout.
    """

    def __init__(self, groups: int, width_in: int, width: int, layers: int, omega0: float,
                 first_omega: bool, generator: torch.Generator):
        super().__init__()
        self.omega0 = omega0
        self.layers = layers
        for layer in range(layers):
            n_in = width_in if layer == 0 else width
            bound = 1.0 / n_in if (layer == 0 and first_omega) else math.sqrt(6.0 / n_in) / omega0
            setattr(self, f"w{layer}", _uniform((groups, n_in, width), bound, generator))
            setattr(self, f"b{layer}", _uniform((groups, width), 1.0 / math.sqrt(n_in), generator))

    def run(self, group: int, x: torch.Tensor) -> torch.Tensor:
        # omega0 scales the small weight matrices, not the (batch x width) activations: the same
        # sin(omega0 (x W + b)), with two fewer passes over the activations per layer.
        for layer in range(self.layers):
            w, b = self._param(f"w{layer}"), self._param(f"b{layer}")
            x = torch.addmm(self.omega0 * b[group], x, self.omega0 * w[group])
            # Decoding has no graph to keep: the sine overwrites its input (one allocation less).
            x = torch.sin(x) if torch.is_grad_enabled() else x.sin_()
        return x

    def run_all(self, x: torch.Tensor) -> torch.Tensor:
        """Every group on every row: (B, in) -> (groups, B, out). The dense reference form."""
        x = x.unsqueeze(0)
        for layer in range(self.layers):
            w, b = self._param(f"w{layer}"), self._param(f"b{layer}")
            x = torch.sin(self.omega0 * (torch.matmul(x, w) + b.unsqueeze(1)))
        return x


class LatentGrid(_FakeQuantizable):
    """Multi-resolution dense 3D feature grids, read by trilinear interpolation.

    Node j of an axis with r nodes sits at -1 + 2 j / (r - 1) (grid_sample's align_corners=True),
    so the grid spans the volume's coordinate box and every voxel centre falls inside it.
    """

    def __init__(self, channels: int, resolutions: list[tuple[int, ...]]):
        super().__init__()
        self.levels = len(resolutions)
        # Latents start at zero: the grids grow only where the volume needs detail. Random starting
        # latents are noise that the rate-set step then spends bits on, and their draw alone swung
        # the result from seed to seed (docs/benchmarks.md, "Stop 13").
        for level, res in enumerate(resolutions):
            setattr(self, f"grid{level}", nn.Parameter(torch.zeros((channels, *res))))

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        # grid_sample wants (x, y, z) = (last axis, ..., first axis) of the (C, D, H, W) grid.
        where = coords.flip(1).reshape(1, 1, 1, -1, 3)
        parts = []
        for level in range(self.levels):
            grid = self._param(f"grid{level}")
            sampled = F.grid_sample(grid.unsqueeze(0), where, mode="bilinear", align_corners=True)
            parts.append(sampled.reshape(grid.shape[0], -1))
        # Rows contiguous: dispatch gathers whole rows (measured: 1.9 s of a 256^3 decode saved for
        # 0.6 s of copying).
        return torch.cat(parts, dim=0).t().contiguous()

    @torch.no_grad()
    def box_features(self, axes: list[torch.Tensor]) -> torch.Tensor:
        """`forward` at every point of the product grid `axes` (one 1D tensor of positions per axis,
        C order): trilinear interpolation is separable, so a box is three small matrix products per
        level instead of a gather of eight nodes per point (a decoded tile's features in a sixth of
        grid_sample's time). Equal to `forward` up to float rounding."""
        width = sum(getattr(self, f"grid{level}").shape[0] for level in range(self.levels))
        out = torch.empty(*(len(a) for a in axes), width, device=axes[0].device)
        at = 0
        for level in range(self.levels):
            part = self._param(f"grid{level}")
            channels = part.shape[0]
            weights = [interpolation_matrix(a, n) for a, n in zip(axes, part.shape[1:])]
            # The axis that shrinks most first (a tile is often one slice thick): the intermediate
            # products stay small.
            for axis in sorted(range(3), key=lambda k: weights[k].shape[0] / weights[k].shape[1]):
                part = torch.einsum(_CONTRACT[axis], part, weights[axis])
            out[..., at:at + channels] = part.permute(1, 2, 3, 0)
            at += channels
        return out.reshape(-1, width)


#: Interpolating axis k of a (C, nodes, nodes, nodes) grid, the layout kept.
_CONTRACT = ("cijk,ni->cnjk", "cijk,nj->cink", "cijk,nk->cijn")


def interpolation_matrix(positions: torch.Tensor, nodes: int) -> torch.Tensor:
    """(len(positions), nodes) linear-interpolation weights of positions in [-1, 1] over `nodes`
    evenly spaced nodes spanning it (grid_sample's bilinear weights with align_corners=True)."""
    x = (positions + 1.0) * (0.5 * (nodes - 1))
    low = torch.floor(x).clamp(0, nodes - 1)
    frac = x - low
    low_i = low.long()
    high_i = (low_i + 1).clamp(max=nodes - 1)
    rows = torch.arange(len(positions), device=positions.device)
    weights = torch.zeros(len(positions), nodes, device=positions.device)
    weights.index_put_((rows, low_i), 1.0 - frac, accumulate=True)
    weights.index_put_((rows, high_i), frac, accumulate=True)
    return weights


class Router(nn.Module):
    """Gating MLP: Linear, ReLU, Linear, softmax over the experts (softmax applied by the caller)."""

    def __init__(self, width_in: int, width: int, experts: int, generator: torch.Generator):
        super().__init__()
        self.w0 = _uniform((width_in, width), 1.0 / math.sqrt(width_in), generator)
        self.b0 = _uniform((width,), 1.0 / math.sqrt(width_in), generator)
        self.w1 = _uniform((width, experts), 1.0 / math.sqrt(width), generator)
        self.b1 = _uniform((experts,), 1.0 / math.sqrt(width), generator)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.b1, torch.relu(torch.addmm(self.b0, e, self.w0)), self.w1)


class Decoder(_FakeQuantizable):
    """The shared linear layer from expert features to intensities (SIREN's last-layer init)."""

    def __init__(self, width_in: int, channels: int, omega0: float, generator: torch.Generator):
        super().__init__()
        bound = math.sqrt(6.0 / width_in) / omega0
        self.w = _uniform((width_in, channels), bound, generator)
        self.b = _uniform((channels,), bound, generator)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self._param("b"), h, self._param("w"))


class MoEC(nn.Module):
    """The network. `forward` is the sparse form used for training and decoding."""

    def __init__(self, config: ModelConfig, seed: int = 0):
        super().__init__()
        self.config = config
        #: Scale of the router's straight-through gradient at top-1 (a training knob; decoding never
        #: differentiates). The full-strength gradient measured ~1 dB worse and undid the tissue-
        #: aligned partition on the phantom; 0.1 keeps the router learning without that noise.
        self.gate_gradient = 1.0
        generator = torch.Generator().manual_seed(seed)
        width_in = config.feature_width
        self.encoder: SirenStack | LatentGrid | None = None
        self.router: Router | None = None
        if config.encoder == "grid":
            self.encoder = LatentGrid(config.grid_channels, config.grid_resolutions())
        elif config.uses_encoder:
            self.encoder = SirenStack(1, config.dims, config.encoder_width, config.encoder_layers, config.omega0,
                                      first_omega=True, generator=generator)
        if config.has_router:
            # The router reads the raw coordinates beside the encoder features: sine features alone
            # made smooth partitions hard to learn for some initialisations (measured: the router's
            # pretraining loss stalled near 1.0 for one seed in six on the phantom).
            self.router = Router(config.router_inputs, config.router_width, config.experts, generator)
        self.experts = SirenStack(config.experts, width_in, config.expert_width, config.expert_layers,
                                  config.omega0, first_omega=not config.uses_encoder, generator=generator)
        self.decoder = Decoder(config.expert_width, config.out_channels, config.omega0, generator)

    # --- the two halves of a forward pass -------------------------------------------------------
    def features(self, coords: torch.Tensor) -> torch.Tensor:
        """What the experts read: encoder features, or block-local coordinates for the block split."""
        if self.config.partition == "blocks":
            return fixed.block_local(coords, self.config.block_grid)
        if isinstance(self.encoder, LatentGrid):
            return self.encoder(coords)
        if self.encoder is not None:
            return self.encoder.run(0, coords)
        return coords

    def route(self, coords: torch.Tensor, feats: torch.Tensor) -> Routing:
        cfg = self.config
        if cfg.partition == "blocks":
            choice = fixed.block_index(coords, cfg.block_grid).unsqueeze(1)
            return Routing(None, choice, torch.ones(choice.shape, dtype=feats.dtype, device=feats.device))
        if self.router is None:
            choice = torch.zeros(coords.shape[0], 1, dtype=torch.long, device=coords.device)
            return Routing(None, choice, torch.ones(choice.shape, dtype=feats.dtype, device=feats.device))
        probs = torch.softmax(self.router_logits(coords, feats), dim=-1)
        top, choice = probs.topk(cfg.top_k, dim=-1)
        if cfg.top_k == 1:
            # Straight-through: the forward value is the expert's own output (exactly 1 x it); the
            # gate probability only carries the router's gradient, scaled by gate_gradient.
            ones = torch.ones_like(top)
            weights = ones + self.gate_gradient * (top / top.detach() - ones)
        else:
            weights = top / top.sum(dim=-1, keepdim=True)
        return Routing(probs, choice, weights)

    def router_logits(self, coords: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        if self.router is None:
            raise ValueError("a block partition has no router")
        if not self.config.router_features:
            return self.router(coords)
        # The router reads the features but does not train them: its gate, balancing and
        # pretraining gradients would pull the features the experts share toward what separates
        # experts rather than what reconstructs the volume (measured: docs/benchmarks.md).
        return self.router(torch.cat([coords, feats.detach()], dim=1))

    def dispatch(self, feats: torch.Tensor, routing: Routing) -> torch.Tensor:
        """Run each coordinate through its chosen experts only, grouped by expert."""
        batch, k = routing.choice.shape
        flat = routing.choice.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=self.config.experts).tolist()
        rows = torch.div(order, k, rounding_mode="floor")
        grouped = feats.index_select(0, rows)
        outputs = [self.experts.run(e, part) for e, part in enumerate(grouped.split(counts)) if counts[e]]
        if k == 1 and not torch.is_grad_enabled():
            # Decoding at top-1: each row has one expert and a gate weight of exactly 1 (see
            # `route`), so placing the rows is the whole mix; same values, two passes fewer.
            return feats.new_empty(batch, self.config.expert_width).index_copy_(0, rows, torch.cat(outputs))
        mixed = torch.cat(outputs) * routing.weights.reshape(-1)[order].unsqueeze(1)
        return mixed.new_zeros(batch, mixed.shape[1]).index_add(0, rows, mixed)

    def forward(self, coords: torch.Tensor) -> Output:
        feats = self.features(coords)
        routing = self.route(coords, feats)
        return Output(self.decoder(self.dispatch(feats, routing)), routing)

    @torch.no_grad()
    def infer(self, coords: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decoding: (values (B,), chosen expert (B,), gate confidence (B,)) from coordinates and
        their features. At top-1 it takes the shortest way to `forward`'s values: the router's first
        layer without concatenating its inputs, the argmax instead of softmax and top-k (confidence
        is 1 / sum exp(logit - max), the largest gate probability), and each expert's output written
        straight to its rows."""
        if self.config.top_k != 1 or self.router is None:
            routing = self.route(coords, feats)
            values = self.decoder(self.dispatch(feats, routing))[:, 0]
            if routing.probs is None:
                return values, routing.choice[:, 0], torch.ones_like(values)
            return values, routing.choice[:, 0], routing.probs.max(dim=-1).values
        r, nd = self.router, coords.shape[1]
        if self.config.router_features:
            hidden = torch.addmm(r.b0, coords, r.w0[:nd]).addmm_(feats, r.w0[nd:])
        else:
            hidden = torch.addmm(r.b0, coords, r.w0)
        logits = torch.addmm(r.b1, hidden.relu_(), r.w1)
        top, choice = logits.max(dim=1)
        confidence = logits.sub_(top.unsqueeze(1)).exp_().sum(dim=1).reciprocal_()
        # A stable sort of bytes: a quarter of argsort's time on int64 (experts are at most 64).
        order = torch.sort(choice.to(torch.uint8), stable=True).indices
        counts = torch.bincount(choice, minlength=self.config.experts).tolist()
        grouped = feats.index_select(0, order)
        values = feats.new_empty(coords.shape[0])
        start = 0
        for expert, part in enumerate(grouped.split(counts)):
            if counts[expert]:
                rows = order[start:start + counts[expert]]
                values.index_copy_(0, rows, self.decoder(self.experts.run(expert, part))[:, 0])
            start += counts[expert]
        return values, choice, confidence

    # --- bookkeeping ---------------------------------------------------------------------------
    def named_tensors(self) -> list[tuple[str, nn.Parameter]]:
        """Parameters in storage order (ModelConfig.tensor_shapes)."""
        params = dict(self.named_parameters())
        return [(name, params[name]) for name, _ in self.config.tensor_shapes()]

    def prefix_names(self) -> list[str]:
        """The tensors that decide the partition: frozen (and quantized) in the final stage."""
        return [n for n, _ in self.config.tensor_shapes() if n.startswith(("encoder.", "router."))]

    def set_fake_steps(self, steps: dict[str, torch.Tensor] | None) -> None:
        """Fake-quantize the named tensors (name -> step) in every forward pass; None: all off.

        Expert and decoder tensors in the final stage; latent grids while they learn to live with
        their coarse steps. The SIREN encoder and the router need none: in the final stage they are
        quantized for real, in place.
        """
        for prefix, module in (("experts.", self.experts), ("decoder.", self.decoder), ("encoder.", self.encoder)):
            if isinstance(module, _FakeQuantizable):
                chosen = {n[len(prefix):]: s for n, s in (steps or {}).items() if n.startswith(prefix)}
                module.fake_steps = chosen or None
