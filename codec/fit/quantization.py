"""A Fitter's quantization state: the quantization steps (qsteps) its model trains through.

The joint stage trains the latent grids through their rounding at rate-set qsteps (`LatentRate`);
the final stage freezes the encoder and router at the qsteps the file stores them at and trains the
experts and decoder at the file's qsteps when the pipeline's size search gave them (`file_qsteps`),
else at their largest weight's qstep at the configured bit width.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from codec.coding.quantize import (
    QuantConfig,
    latent_qsteps,
    latent_qsteps_near,
    max_qsteps,
    max_qsteps_torch,
    round_in_place,
)
from codec.errors import MoecError
from codec.model import MoEC, is_latent

#: Steps between updates of the latents' rate-set qstep during their QAT: the search is slow next
#: to a training step, and the latents' spread changes slowly.
LATENT_QSTEP_EVERY = 100
#: The longest share of a run's budget that zero latent grids keep their first, flat qstep, so
#: that a short run still gets its latents.
FLAT_SHARE = 0.05


class LatentRate:
    """The latent grids' rate-set qsteps while they train through their rounding (quantize.latent_qsteps):
    refreshed every LATENT_QSTEP_EVERY steps, as the grids' spread changes slowly, each refresh a
    warm search from the last one's multiplier (quantize.latent_qsteps_near); qsteps set on zero
    grids (1, so the first updates round away) last at most FLAT_SHARE of the budget, so a short
    run still gets its latents."""

    def __init__(self, grids: Mapping[str, torch.Tensor], bits_per_latent: float):
        self.grids = grids
        self.bits = bits_per_latent
        self._qsteps: dict[str, torch.Tensor] = {}
        self._flat_since: float | None = None  # budget fraction at which zero grids got their qsteps
        self._scale: float | None = None  # the last refresh's multiplier (log2, relative to the RMS)

    def now(self) -> dict[str, np.ndarray]:
        """The qsteps that put the grids as they are now at the planned rate, by name."""
        return dict(zip(self.grids, latent_qsteps(self._values(), self.bits)))

    def _values(self) -> list[np.ndarray]:
        return [p.detach().cpu().numpy() for p in self.grids.values()]

    @property
    def flat(self) -> bool:
        """Whether the qsteps in use were set on zero grids (1: the first small updates round away)."""
        return self._flat_since is not None

    def during_training(self, fraction: float, step: int) -> dict[str, torch.Tensor]:
        flat_over = self._flat_since is not None and fraction - self._flat_since >= FLAT_SHARE
        if not self._qsteps or step % LATENT_QSTEP_EVERY == 0 or flat_over:
            found, self._scale = latent_qsteps_near(self._values(), self.bits, self._scale)
            self._qsteps = {name: torch.tensor(s, device=self.grids[name].device) for name, s in zip(self.grids, found)}
            flat = not any(bool(p.detach().any()) for p in self.grids.values())
            self._flat_since = fraction if flat else None
        return self._qsteps


class Quantization:
    """The qsteps a model trains through: the latents' during the joint stage, the frozen encoder's
    and router's and the trained experts' and decoder's in the final stage."""

    def __init__(
        self,
        model: MoEC,
        quant: QuantConfig,
        device: torch.device,
        file_qsteps: Callable[[], dict[str, np.ndarray]] | None = None,
    ):
        """`file_qsteps()`: the qsteps the written file would store the experts and decoder at now
        (asked once the encoder and router are frozen; MoecError when the file cannot be sized)."""
        self.model = model
        self.quant = quant
        self.device = device
        self.file_qsteps = file_qsteps
        latents = {name: p for name, p in model.named_tensors() if is_latent(name)}
        self.latent_rate = LatentRate(latents, quant.latent_bits)
        #: QSteps of the encoder and router tensors once quantized and frozen (final stage).
        self.frozen_qsteps: dict[str, np.ndarray | None] = {}
        #: QSteps the final stage trains the experts and decoder at, when `file_qsteps` gave them:
        #: the pipeline stores exactly these when its file then lands in the size window.
        self.trained_qsteps: dict[str, np.ndarray] | None = None
        self._trained_torch: dict[str, torch.Tensor] | None = None

    def freeze_prefix(self) -> None:
        """Quantize the encoder and router in place and stop training them (the partition is
        final), then ask for the file's qsteps of the others."""
        model, quant = self.model, self.quant
        latent = {} if quant.float16 else self.latent_rate.now()
        for name, param in model.named_tensors():
            if name not in model.prefix_names():
                continue
            if quant.float16:
                qstep = None
            elif is_latent(name):
                qstep = latent[name]
            else:
                bits = quant.bits_for(name, model.config.coordinate_layer)
                qstep = max_qsteps(param.detach().cpu().numpy(), bits, quant.granularity)
            round_in_place(param, qstep)
            param.requires_grad_(False)
            self.frozen_qsteps[name] = qstep
        self._ask_file_qsteps()

    def unfreeze_prefix(self) -> None:
        for param in self.model.parameters():
            param.requires_grad_(True)
        self.frozen_qsteps = {}
        self.trained_qsteps = self._trained_torch = None

    def _ask_file_qsteps(self) -> None:
        """Ask for the file's qsteps once, at the final stage's start: the frozen encoder and router
        hold nearly all the bytes, so the experts' share, and their qstep, barely moves after it."""
        if self.file_qsteps is None or self.quant.float16:
            return
        try:
            qsteps = self.file_qsteps()
        except MoecError:
            return  # the file cannot be sized now (the encoder will say why): the default qsteps
        self.trained_qsteps = qsteps
        self._trained_torch = {
            name: torch.from_numpy(np.asarray(qstep, dtype=np.float32)).to(self.device)
            for name, qstep in qsteps.items()
        }

    def final_qsteps(self) -> dict[str, torch.Tensor] | None:
        """The qsteps the final stage trains the experts and decoder through (None: float16)."""
        if self.quant.float16:
            return None
        if self._trained_torch is not None:
            return self._trained_torch
        coordinate_layer = self.model.config.coordinate_layer
        return {
            name: max_qsteps_torch(p, self.quant.bits_for(name, coordinate_layer), self.quant.granularity)
            for name, p in self.model.named_tensors()
            if name.startswith(("experts.", "decoder."))
        }
