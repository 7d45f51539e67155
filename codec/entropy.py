"""Entropy coding of quantized weights with constriction's range coder.

Each tensor's symbols get a parametric model that costs four numbers (family, scale, lowest and
highest symbol) instead of a probability table: per-tensor 256-entry tables would cost more than a
whole 1024x budget (DESIGN section 7). The family, Laplace or Gaussian, is chosen per tensor by the
smaller ideal code length. A tensor whose symbols span a short range (a latent grid's, at a few bits
per latent) may instead carry its own frequency table, 16 bits per symbol of the range, when that
is cheaper table included: latents pile up at zero more than a Laplace says (measured on the brain
template at 2.5 bits per latent: the empirical entropy is 0.5 bit below the best parametric fit).
All tensors share one range-coder stream (a queue: first in, first out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import constriction
import numpy as np
from scipy.special import ndtr

from .errors import MoecFormatError

FAMILIES = ("laplace", "gaussian", "table")
TABLE = 2
MIN_SCALE = 0.05  # constriction needs a positive scale; below this the mass sits on one symbol anyway
MAX_TABLE = 512  # symbols a frequency table may span
COUNT_MAX = 65535  # table entries are u16


@dataclass(frozen=True)
class SymbolModel:
    """A tensor's probability model: a quantized Laplace or Gaussian with mean 0, on [lo, hi]."""

    family: int
    scale: float  # in units of the quantization step, a float16 value (1.0 for a table)
    lo: int
    hi: int
    counts: tuple[int, ...] = ()  # the table family's frequencies of lo..hi

    @property
    def offset(self) -> int:
        """What is subtracted from a symbol before coding: a table codes indices 0..hi-lo."""
        return self.lo if self.family == TABLE else 0

    @property
    def overhead_bits(self) -> int:
        """What the model itself costs in the file beyond the fixed table entry."""
        return 16 * len(self.counts)

    @property
    def constant(self) -> bool:
        """Every symbol is `lo`: nothing to code."""
        return self.lo == self.hi


def _float16(x: float) -> float:
    return float(np.float16(min(max(x, MIN_SCALE), 6.0e4)))


def _cdf(family: int, x: np.ndarray, scale: float) -> np.ndarray:
    if family == 0:
        return np.where(x < 0, 0.5 * np.exp(np.minimum(x, 0) / scale), 1.0 - 0.5 * np.exp(-np.maximum(x, 0) / scale))
    return ndtr(x / scale)


def ideal_bits(symbols: np.ndarray, model: SymbolModel) -> float:
    """Code length in bits of `symbols` under `model` (truncated to [lo, hi] and renormalised)."""
    if model.constant:
        return 0.0
    values, counts = np.unique(symbols, return_counts=True)
    if model.family == TABLE:
        table = np.asarray(model.counts, dtype=np.float64)
        p = table[values - model.lo] / table.sum()
        return float(-(counts * np.log2(np.maximum(p, 1e-12))).sum())
    lo, hi = model.lo - 0.5, model.hi + 0.5
    total = _cdf(model.family, np.array([hi]), model.scale) - _cdf(model.family, np.array([lo]), model.scale)
    p = (_cdf(model.family, values + 0.5, model.scale) - _cdf(model.family, values - 0.5, model.scale)) / total
    return float(-(counts * np.log2(np.maximum(p, 1e-12))).sum())


def fit_model(symbols: np.ndarray) -> SymbolModel:
    """The cheapest model of the symbols: a Laplace or a Gaussian fitted by maximum likelihood, or,
    over a short range, their own frequency table, its own bits counted."""
    return _cheapest(symbols.reshape(-1))[0]


def coded_bits(symbols: np.ndarray) -> float:
    """Bits that `symbols` cost under their best model, the model's own table included."""
    return _cheapest(symbols.reshape(-1))[1]


def _cheapest(flat: np.ndarray) -> tuple[SymbolModel, float]:
    lo, hi = (int(flat.min()), int(flat.max())) if flat.size else (0, 0)
    if lo == hi:
        return SymbolModel(0, 1.0, lo, hi), 0.0
    candidates = [
        SymbolModel(0, _float16(float(np.abs(flat).mean())), lo, hi),
        SymbolModel(1, _float16(math.sqrt(float((flat.astype(np.float64) ** 2).mean()))), lo, hi),
    ]
    if hi - lo < MAX_TABLE:
        candidates.append(SymbolModel(TABLE, 1.0, lo, hi, table_counts(flat, lo, hi)))
    return min(((m, ideal_bits(flat, m) + m.overhead_bits) for m in candidates), key=lambda pair: pair[1])


def table_counts(flat: np.ndarray, lo: int, hi: int) -> tuple[int, ...]:
    """Frequencies of lo..hi scaled into u16; a symbol that occurs never gets 0."""
    counts = np.bincount(flat - lo, minlength=hi - lo + 1).astype(np.float64)
    scaled = np.where(counts > 0, np.maximum(1, np.round(counts * COUNT_MAX / counts.max())), 0)
    return tuple(int(c) for c in scaled)



def _coder_model(model: SymbolModel):
    if model.family == TABLE:
        # perfect=False gives never-seen symbols a tiny probability; the decoder rebuilds exactly
        # this model from the same stored counts.
        table = np.asarray(model.counts, dtype=np.float64)
        return constriction.stream.model.Categorical(table / table.sum(), perfect=False)
    if model.family == 0:
        return constriction.stream.model.QuantizedLaplace(model.lo, model.hi, 0.0, model.scale)
    return constriction.stream.model.QuantizedGaussian(model.lo, model.hi, 0.0, model.scale)


def encode(streams: list[np.ndarray], models: list[SymbolModel]) -> bytes:
    """Range-code each symbol array with its model into one byte string."""
    encoder = constriction.stream.queue.RangeEncoder()
    for symbols, model in zip(streams, models):
        if not model.constant and symbols.size:
            encoder.encode(np.ascontiguousarray(symbols.reshape(-1) - model.offset, dtype=np.int32),
                           _coder_model(model))
    return encoder.get_compressed().astype("<u4").tobytes()


def decode(data: bytes, models: list[SymbolModel], sizes: list[int]) -> list[np.ndarray]:
    """Inverse of `encode`; garbage in gives MoecFormatError, never another exception."""
    if len(data) % 4:
        raise MoecFormatError("the weight stream is not a whole number of 32-bit words")
    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    try:
        decoder = constriction.stream.queue.RangeDecoder(words)
        out = []
        for model, size in zip(models, sizes):
            if model.constant:
                out.append(np.full(size, model.lo, dtype=np.int32))
            else:
                out.append(np.asarray(decoder.decode(_coder_model(model), size), dtype=np.int32) + model.offset)
    except Exception as exc:  # constriction signals bad streams with assorted exception types
        raise MoecFormatError(f"the weight stream cannot be decoded ({exc})") from None
    return out
