"""Uniform weight quantization: post-training and quantization-aware (straight-through estimator).

A tensor w is stored as integer symbols q = round(w / step) with a step per tensor (or per output
channel). Steps are float16 numbers: the value stored in the file is the value training and decoding
use, so the encoder, the QAT forward pass and the decoder all compute the same dequantized weights.
`bits` = 16 means no integer quantization at all: weights are stored as float16.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from codec.coding import entropy
from codec.settings import GRANULARITIES, LATENT_BITS, RANGES, Settings

FLOAT16_BITS = 16
MAX_SYMBOL = 32767  # symbols and their ranges are stored as int16


@dataclass(frozen=True)
class QuantConfig:
    """How weights are quantized. `first_layer_extra_bits` goes to the omega_0-scaled layer that
    reads raw coordinates: an error there is multiplied by omega_0 (about 30) before the sine."""

    bits: int = Settings.bits
    first_layer_extra_bits: int = Settings.first_layer_extra_bits
    granularity: str = Settings.granularity
    #: Coded bits per latent of a grid encoder: its quantization step is chosen for this rate (the
    #: latents' step is stored in the file, so decoding never needs this number).
    latent_bits: float = LATENT_BITS

    def __post_init__(self) -> None:
        if not 0.25 <= self.latent_bits <= 8:
            raise ValueError(f"latent_bits must be 0.25..8, not {self.latent_bits}")
        low, high = RANGES["bits"]
        if not low <= self.bits <= high:
            raise ValueError(f"bits must be {low}..{high}, not {self.bits}")
        if not 0 <= self.first_layer_extra_bits <= 6:
            raise ValueError("first_layer_extra_bits must be 0..6")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}")

    @property
    def float16(self) -> bool:
        return self.bits == FLOAT16_BITS

    def bits_for(self, name: str, coordinate_layer: str) -> int:
        extra = self.first_layer_extra_bits if name == coordinate_layer else 0
        return min(self.bits + extra, 15)


def qstep_shape(shape: tuple[int, ...], granularity: str) -> tuple[int, ...]:
    """Shape of a tensor's qsteps: () per tensor; per channel, one per output column of a weight
    matrix (and per expert of a stack), while biases keep one qstep per tensor."""
    if granularity == "tensor" or not 2 <= len(shape) <= 3:
        return ()  # biases, and latent grids (C, D, H, W): one step, set by rate (rate_qstep)
    return tuple(shape[:-2]) + (1, shape[-1])


def to_float16(x: np.ndarray | float) -> np.ndarray:
    """Round to the nearest float16 and return it as float32: the stored form of qsteps."""
    return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


def max_qsteps(w: np.ndarray, bits: int, granularity: str) -> np.ndarray:
    """QSteps that put the largest |w| (per tensor or channel) on the outermost of 2^bits levels."""
    shape = qstep_shape(w.shape, granularity)
    if shape:
        axes = tuple(a for a in range(w.ndim) if shape[a] == 1 and w.shape[a] != 1)
        peak = np.abs(w).max(axis=axes, keepdims=True)
    else:
        peak = np.asarray(np.abs(w).max() if w.size else 0.0)
    qstep = peak / float(2 ** (bits - 1) - 1)
    # float16 cannot hold qsteps below ~6e-8 or above 65504; a zero tensor gets qstep 1 (all symbols 0).
    qstep = np.where(peak > 0, np.clip(qstep, 6.0e-8, 6.0e4), 1.0)
    return to_float16(qstep).reshape(shape)


def rate_qstep(w: np.ndarray, bits_per_value: float) -> np.ndarray:
    """The (float16) step at which the latent grid `w`'s symbols cost about `bits_per_value` each
    under their coded model (the spatial context model included). One grid alone; a latent stack's
    levels share one rate through `latent_qsteps`."""
    return latent_qsteps([w], bits_per_value)[0]


#: A warm rate search (`latent_qsteps_near`) looks this far either side of its guess, in doublings
#: of the step, and halves that bracket WARM_HALVINGS times: to 1/64 of a doubling (1% of the
#: step), where the cold search's 15 halvings of 20 doublings go below float16's precision.
WARM_RADIUS = 0.125
WARM_HALVINGS = 4


def latent_qsteps(grids: Sequence[np.ndarray], bits_per_value: float) -> list[np.ndarray]:
    """The (float16) qsteps of a latent stack's levels (finest first) at which all their symbols
    together cost about `bits_per_value` each under their coded models: latents are many and cheap,
    so their qsteps are set by rate, not by their largest value.

    A node of a coarser level is read by more voxels, so rounding it costs more distortion: a level
    whose nodes each cover A voxels gets a step proportional to A^(-1/2), the rate-distortion
    optimum for uniform quantization at high rate (distortion A step^2 / 12 per node against
    -log2(step) bits), and one multiplier for the whole stack sets the rate."""
    return latent_qsteps_near(grids, bits_per_value)[0]


def latent_qsteps_near(
    grids: Sequence[np.ndarray], bits_per_value: float, guess: float | None = None
) -> tuple[list[np.ndarray], float | None]:
    """`latent_qsteps`, and the multiplier found (log2, relative to the stack's RMS; None for a zero
    stack). With the `guess` of a previous search, a warm search first: training refreshes the
    qsteps every LATENT_QSTEP_EVERY steps, the multiplier barely moves in between, and a cold search
    is a noticeable share of the steps between refreshes, a warm one far less (6 evaluations instead
    of 15, to WARM_RADIUS / 2^WARM_HALVINGS; docs/benchmarks.md, "Speed and memory
    (`benchmarks/speed.py`, 2 CPU threads)"). A guess that does not bracket the rate falls back to
    the cold search."""
    grids = [np.asarray(w, dtype=np.float32) for w in grids]
    total = sum(w.size for w in grids)
    squares = sum(float(np.sum(w.astype(np.float64) ** 2)) for w in grids)
    if squares == 0.0:
        # A zero stack (every stack at the start of training) has no rate to set. Step 1 rounds its
        # first small updates to zero, so the experts first fit a flat field while the latents
        # gather gradient behind it (straight-through) until the next step refresh, which measured
        # better than a step too fine to round anything (docs/benchmarks.md).
        return [to_float16(1.0).reshape(()) for _ in grids], None
    rms = math.sqrt(squares / total)
    # Nodes per level (channels aside): a node covers voxels / nodes, so A^(-1/2) ~ sqrt(nodes).
    relative = [math.sqrt(math.prod(w.shape[1:]) / math.prod(grids[0].shape[1:])) for w in grids]

    def qsteps(scale: float) -> list[np.ndarray]:
        return [to_float16(np.clip(scale * r, 6.0e-8, 6.0e4)).reshape(()) for r in relative]

    def bits(scale: float) -> float:
        return sum(entropy.coded_bits(quantize(w, s), spatial=True) for w, s in zip(grids, qsteps(scale))) / total

    # Bits fall as the qsteps grow; bisect log2(scale) between 2^-12 and 2^8 times the RMS, to a
    # precision finer than the float16 the qsteps are stored in (or around the guess, coarser).
    lo, hi, halvings = -12.0, 8.0, 15
    if guess is not None:
        near_lo, near_hi = guess - WARM_RADIUS, guess + WARM_RADIUS
        if bits(rms * 2.0**near_lo) > bits_per_value >= bits(rms * 2.0**near_hi):
            lo, hi, halvings = near_lo, near_hi, WARM_HALVINGS
    for _ in range(halvings):
        mid = 0.5 * (lo + hi)
        if bits(rms * 2.0**mid) > bits_per_value:
            lo = mid
        else:
            hi = mid
    return qsteps(rms * 2.0**hi), hi


def quantize(w: np.ndarray, qstep: np.ndarray) -> np.ndarray:
    """Float weights -> int32 symbols (rounded half to even, like torch.round)."""
    q = np.rint(np.asarray(w, dtype=np.float32) / np.asarray(qstep, dtype=np.float32))
    return np.clip(q, -MAX_SYMBOL, MAX_SYMBOL).astype(np.int32)


def dequantize(symbols: np.ndarray, qstep: np.ndarray) -> np.ndarray:
    return symbols.astype(np.float32) * np.asarray(qstep, dtype=np.float32)


def fake_quantize(w: torch.Tensor, qstep: torch.Tensor) -> torch.Tensor:
    """Quantize in the forward pass, pass the gradient straight through in the backward pass."""
    q = torch.clamp(torch.round(w / qstep), -MAX_SYMBOL, MAX_SYMBOL) * qstep
    return w + (q - w).detach()


def add_quantization_noise(w: torch.Tensor, qstep: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """`w` plus noise drawn uniformly over one qstep, centred: training's smooth stand-in for the
    rounding error (the same spread), through which every value gets the gradient of where it is,
    where straight-through rounding answers a value below half a step with zero in the forward pass."""
    noise = torch.rand(w.shape, generator=generator, device=w.device, dtype=w.dtype)
    return w + noise.sub_(0.5).mul_(qstep)


def round_in_place(param: torch.nn.Parameter, qstep: np.ndarray | None) -> None:
    """Replace a parameter by its stored form: its dequantized value, or float16 when qstep is None."""
    with torch.no_grad():
        w = param.detach().cpu().numpy()
        stored = w.astype(np.float16).astype(np.float32) if qstep is None else dequantize(quantize(w, qstep), qstep)
        param.copy_(torch.from_numpy(stored))


def max_qsteps_torch(w: torch.Tensor, bits: int, granularity: str) -> torch.Tensor:
    """`max_qsteps` in torch, on the tensor's own device, for the quantization-aware forward pass."""
    shape = qstep_shape(tuple(w.shape), granularity)
    w = w.detach()
    if shape:
        axes = tuple(a for a in range(w.ndim) if shape[a] == 1 and w.shape[a] != 1)
        peak = w.abs().amax(dim=axes, keepdim=True)
    else:
        peak = w.abs().max()
    qstep = (peak / float(2 ** (bits - 1) - 1)).clamp(6.0e-8, 6.0e4)
    return torch.where(peak > 0, qstep, torch.ones_like(qstep)).half().float().reshape(shape)
