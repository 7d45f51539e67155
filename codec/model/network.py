"""The MoEC network (arXiv 2312.01361): shared encoder, router, N expert SIRENs, shared decoder.

    x_hat = Dec( sum_{i in top-k} w_i * E_i(e) ),   e = Enc(x),   w = renormalised top-k of softmax(G(e))

Expert weights of one layer are stacked into a single (N, in, out) tensor, so an expert is an index
into the stack, dispatch groups coordinates by expert (each coordinate runs through its k experts
only), and quantization treats each stacked tensor as one tensor. With `partition="blocks"` the router
is replaced by the fixed TINC-style block split and every expert sees its block's local coordinates:
the baseline is an option of the same code, not a copy.

The shared encoder is pluggable (docs/design.md, "The network"): a SIREN layer on the coordinates, or a latent
grid, a few dense 3D feature grids from fine to coarse (each level half the resolution of the one
before), read by trilinear interpolation; its latents are stored quantized and entropy-coded like
every other tensor, and they hold most of a grid model's bytes.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import nn

from codec.model import partition as fixed
from codec.model.config import ModelConfig
from codec.model.latents import LatentGrid
from codec.model.layers import Decoder, FakeQuantizable, SirenStack
from codec.model.router import Router
from codec.settings import TrainConfig


class Routing(NamedTuple):
    probs: torch.Tensor | None  # (B, N) gate probabilities; None for the block partition
    choice: torch.Tensor  # (B, k) chosen experts
    weights: torch.Tensor  # (B, k) mixing weights (ones forward at top-1)


class Output(NamedTuple):
    values: torch.Tensor  # (B, C) normalised intensities
    routing: Routing


class MoEC(nn.Module):
    """The network. `forward` is the sparse form used for training and decoding."""

    def __init__(self, config: ModelConfig, seed: int = 0):
        super().__init__()
        self.config = config
        #: Scale of the router's straight-through gradient at top-1, set by the Fitter from
        #: TrainConfig.gate_gradient (decoding never differentiates). The full-strength gradient
        #: did worse and undid the tissue-aligned partition on the phantom (docs/history.md).
        self.gate_gradient = TrainConfig.gate_gradient
        generator = torch.Generator().manual_seed(seed)
        width_in = config.feature_width
        self.encoder: SirenStack | LatentGrid | None = None
        self.router: Router | None = None
        if config.encoder == "grid":
            self.encoder = LatentGrid(config.grid_channels, config.grid_resolutions(), config.grid_interpolation)
        elif config.uses_encoder:
            self.encoder = SirenStack(
                1,
                config.dims,
                config.encoder_width,
                config.encoder_layers,
                config.omega0,
                first_omega=True,
                generator=generator,
            )
        if config.has_router:
            # The router reads the raw coordinates beside the encoder features: sine features alone
            # made smooth partitions hard to learn for some initialisations (the router's pretraining
            # stalled on the phantom for some seeds: docs/history.md).
            self.router = Router(config.router_inputs, config.router_width, config.experts, generator)
        self.experts = SirenStack(
            config.experts,
            width_in,
            config.expert_width,
            config.expert_layers,
            config.omega0,
            first_omega=not config.uses_encoder,
            generator=generator,
        )
        self.decoder = Decoder(config.expert_width, config.out_channels, config.omega0, generator)

    def read_latents(self, interpolation: str) -> None:
        """Read the latent grid by `interpolation` from now on; the configuration (and so a file
        written from this model) says so. The latents stay as they are."""
        if not isinstance(self.encoder, LatentGrid):
            raise ValueError("only a latent grid has an interpolation")
        self.config = dataclasses.replace(self.config, grid_interpolation=interpolation)
        self.encoder.interpolation = interpolation

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
        if self.config.experts == 1 and k == 1:
            # Every row to the one expert: nothing to sort, gather or place.
            out = self.experts.run(0, feats)
            return out if routing.probs is None else out * routing.weights
        flat = routing.choice.reshape(-1)
        # A stable sort of bytes: far quicker than argsort on int64 (experts are at most 64).
        order = torch.sort(flat.to(torch.uint8), stable=True).indices
        counts = torch.bincount(flat, minlength=self.config.experts).tolist()
        rows = torch.div(order, k, rounding_mode="floor")
        grouped = feats.index_select(0, rows)
        outputs = [self.experts.run(e, part) for e, part in enumerate(grouped.split(counts)) if counts[e]]
        if k == 1 and not torch.is_grad_enabled():
            # Decoding at top-1: each row has one expert and a gate weight of exactly 1 (see
            # `route`), so placing the rows is the whole mix; same values, two passes fewer.
            return feats.new_empty(batch, self.config.expert_width).index_copy_(0, rows, torch.cat(outputs))
        mixed = torch.cat(outputs) * routing.weights.reshape(-1)[order].unsqueeze(1)
        if k == 1:
            # Each row once: copying it into place is the sum, and cheaper than index_add's scatter
            # (docs/benchmarks.md, "Speed and memory (`benchmarks/speed.py`, 2 CPU threads)").
            return mixed.new_zeros(batch, mixed.shape[1]).index_copy(0, rows, mixed)
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
        straight to its rows; with one expert and no partition, the expert on every row."""
        if self.config.experts == 1 and self.config.partition == "learned":
            values = self.decoder(self.experts.run(0, feats))[:, 0]
            return values, torch.zeros(values.shape, dtype=torch.long, device=values.device), torch.ones_like(values)
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
        # A stable sort of bytes: far quicker than argsort on int64 (experts are at most 64).
        order = torch.sort(choice.to(torch.uint8), stable=True).indices
        counts = torch.bincount(choice, minlength=self.config.experts).tolist()
        grouped = feats.index_select(0, order)
        values = feats.new_empty(coords.shape[0])
        start = 0
        for expert, part in enumerate(grouped.split(counts)):
            if counts[expert]:
                rows = order[start : start + counts[expert]]
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

    def set_fake_qsteps(self, qsteps: dict[str, torch.Tensor] | None, noise: torch.Generator | None = None) -> None:
        """Fake-quantize the named tensors (name -> qstep) in every forward pass; None: all off.
        With a `noise` generator they are read with uniform noise over their qstep instead of
        rounded (quantize.add_quantization_noise).

        Expert and decoder tensors in the final stage; latent grids while they learn to live with
        their coarse qsteps. The SIREN encoder and the router need none: in the final stage they are
        quantized for real, in place.
        """
        for prefix, module in (("experts.", self.experts), ("decoder.", self.decoder), ("encoder.", self.encoder)):
            if isinstance(module, FakeQuantizable):
                chosen = {n[len(prefix) :]: s for n, s in (qsteps or {}).items() if n.startswith(prefix)}
                module.fake_qsteps = chosen or None
                module.noise = noise if chosen else None
