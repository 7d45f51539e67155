"""Entropy coding of quantized weights with constriction's range coder.

Each tensor's symbols get a parametric model that costs four numbers (family, scale, lowest and
highest symbol) instead of a probability table: per-tensor 256-entry tables would cost more than a
whole 1024x budget (docs/design.md, "Traps"). The family, Laplace or Gaussian, is chosen per tensor by the
smaller ideal code length. A tensor whose symbols span a short range (a latent grid's, at a few bits
per latent) may instead carry its own frequency table, 16 bits per symbol of the range, when that
is cheaper table included: latents pile up at zero more than a Laplace says (docs/benchmarks.md,
"The latent grid and its coding").
A latent grid may instead be coded through its spatial context model (`context`): residuals after
prediction from the neighbours, one model of the three kinds above per context bin.
All tensors share one range-coder stream (a queue: first in, first out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import constriction
import numpy as np
from scipy.special import ndtr

from codec.coding import context
from codec.errors import MoecFormatError

FAMILIES = ("laplace", "gaussian", "table", "context")
TABLE = 2
CONTEXT = 3
ENTRY_BITS = 56  # one model's fixed entry in the file's table: u8 family, i16 lo, i16 hi, f16 scale
MAX_RESIDUAL = 32767  # a context model's residuals must fit the entry's int16 range
MIN_SCALE = 0.05  # constriction needs a positive scale; below this the mass sits on one symbol anyway
MAX_TABLE = 512  # symbols a frequency table may span
COUNT_MAX = 65535  # table entries are u16


@dataclass(frozen=True)
class SymbolModel:
    """A tensor's probability model: a quantized Laplace or Gaussian with mean 0 on [lo, hi], a
    frequency table of lo..hi, or a context model (one such model per context bin, for the
    residuals; lo and hi still bound the symbols themselves)."""

    family: int
    scale: float  # in units of the quantization step, a float16 value (1.0 for a table or context)
    lo: int
    hi: int
    counts: tuple[int, ...] = ()  # the table family's frequencies of lo..hi
    bins: tuple[SymbolModel, ...] = ()  # the context family's models, one per context bin

    @property
    def offset(self) -> int:
        """What is subtracted from a symbol before coding: a table codes indices 0..hi-lo."""
        return self.lo if self.family == TABLE else 0

    @property
    def overhead_bits(self) -> int:
        """What the model itself costs in the file beyond the fixed table entry."""
        own = 16 * len(self.counts)
        if self.family == CONTEXT:
            own += 8 + sum(ENTRY_BITS + m.overhead_bits for m in self.bins)  # u8 bin count, then the bins
        return own

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
    """Code length in bits of `symbols` under `model` (truncated to [lo, hi] and renormalised); a
    context model needs the symbols in their grid's shape."""
    if model.constant or not np.size(symbols):
        return 0.0
    if model.family == CONTEXT:
        r, bins = context.residuals(symbols)
        return sum(ideal_bits(r[bins == b], m) for b, m in enumerate(model.bins))
    return _histogram_bits(*_histogram(np.asarray(symbols).reshape(-1)), model)


def symbol_bits(symbols: np.ndarray, model: SymbolModel) -> np.ndarray:
    """Each symbol's code length in bits under `model`, shaped like `symbols` (they sum to
    `ideal_bits`): what a part of a tensor costs, e.g. one expert's weights or a region's latents."""
    symbols = np.asarray(symbols)
    if model.constant or not symbols.size:
        return np.zeros(symbols.shape)
    if model.family == CONTEXT:
        r, bins = context.residuals(symbols)
        bits = np.zeros(symbols.shape)
        for b, m in enumerate(model.bins):
            picked = bins == b
            bits[picked] = symbol_bits(r[picked], m)
        return bits
    return -np.log2(np.maximum(_probabilities(symbols.reshape(-1), model), 1e-12)).reshape(symbols.shape)


def _histogram(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct symbols and how often each occurs (symbols are int16-sized: a bincount)."""
    lo = int(flat.min())
    counts = np.bincount(flat - lo)
    values = np.flatnonzero(counts)
    return values + lo, counts[values]


def _histogram_bits(values: np.ndarray, counts: np.ndarray, model: SymbolModel) -> float:
    return float(-(counts * np.log2(np.maximum(_probabilities(values, model), 1e-12))).sum())


def _probabilities(values: np.ndarray, model: SymbolModel) -> np.ndarray:
    """The probability `model` gives each of `values` (a table's, or its family's truncated to [lo, hi])."""
    if model.family == TABLE:
        table = np.asarray(model.counts, dtype=np.float64)
        return table[values - model.lo] / table.sum()
    lo, hi = model.lo - 0.5, model.hi + 0.5
    total = _cdf(model.family, np.array([hi]), model.scale) - _cdf(model.family, np.array([lo]), model.scale)
    return (_cdf(model.family, values + 0.5, model.scale) - _cdf(model.family, values - 0.5, model.scale)) / total


def fit_model(symbols: np.ndarray, spatial: bool = False) -> SymbolModel:
    """The cheapest model of the symbols: a Laplace or a Gaussian fitted by maximum likelihood, or,
    over a short range, their own frequency table, its own bits counted. `spatial`: the symbols are
    a (channels, *grid) latent grid, which may take a context model."""
    return _best(symbols, spatial)[0]


def coded_bits(symbols: np.ndarray, spatial: bool = False) -> float:
    """Bits that `symbols` cost under their best model, the model's own table included."""
    return _best(symbols, spatial)[1]


def _best(symbols: np.ndarray, spatial: bool) -> tuple[SymbolModel, float]:
    plain = _cheapest(symbols.reshape(-1))
    if not spatial or plain[0].constant or symbols.ndim < 2:
        return plain
    r, bins = context.residuals(symbols)
    if np.abs(r).max() > MAX_RESIDUAL:
        return plain
    fits = [_cheapest(r[bins == b]) for b in range(context.BINS)]
    model = SymbolModel(CONTEXT, 1.0, plain[0].lo, plain[0].hi, bins=tuple(m for m, _ in fits))
    bits = sum(cost - m.overhead_bits for m, cost in fits) + model.overhead_bits
    return min(plain, (model, bits), key=lambda pair: pair[1])


def _cheapest(flat: np.ndarray) -> tuple[SymbolModel, float]:
    lo, hi = (int(flat.min()), int(flat.max())) if flat.size else (0, 0)
    if lo == hi:
        return SymbolModel(0, 1.0, lo, hi), 0.0
    values, counts = _histogram(flat)
    n = float(counts.sum())
    magnitude = values.astype(np.float64)
    candidates = [
        SymbolModel(0, _float16(float((np.abs(magnitude) * counts).sum() / n)), lo, hi),
        SymbolModel(1, _float16(math.sqrt(float((magnitude**2 * counts).sum() / n))), lo, hi),
    ]
    if hi - lo < MAX_TABLE:
        candidates.append(SymbolModel(TABLE, 1.0, lo, hi, table_counts(values, counts, lo, hi)))
    return min(
        ((m, _histogram_bits(values, counts, m) + m.overhead_bits) for m in candidates), key=lambda pair: pair[1]
    )


def table_counts(values: np.ndarray, counts: np.ndarray, lo: int, hi: int) -> tuple[int, ...]:
    """Frequencies of lo..hi (from a histogram) scaled into u16; a symbol that occurs never gets 0."""
    full = np.zeros(hi - lo + 1, dtype=np.float64)
    full[values - lo] = counts
    scaled = np.where(full > 0, np.maximum(1, np.round(full * COUNT_MAX / full.max())), 0)
    return tuple(int(c) for c in scaled)


def _coder_model(model: SymbolModel) -> Any:
    if model.family == TABLE:
        # perfect=False gives never-seen symbols a tiny probability; the decoder rebuilds exactly
        # this model from the same stored counts.
        table = np.asarray(model.counts, dtype=np.float64)
        return constriction.stream.model.Categorical(table / table.sum(), perfect=False)
    if model.family == 0:
        return constriction.stream.model.QuantizedLaplace(model.lo, model.hi, 0.0, model.scale)
    return constriction.stream.model.QuantizedGaussian(model.lo, model.hi, 0.0, model.scale)


def _encode_values(encoder: Any, values: np.ndarray, model: SymbolModel, coder: Any) -> None:
    if not model.constant and values.size:
        encoder.encode(np.ascontiguousarray(values - model.offset, dtype=np.int32), coder)


def _decode_values(decoder: Any, n: int, model: SymbolModel, coder: Any) -> np.ndarray:
    if model.constant:
        return np.full(n, model.lo, dtype=np.int64)
    return np.asarray(decoder.decode(coder, n), dtype=np.int64) + model.offset


def _encode_context(encoder: Any, symbols: np.ndarray, model: SymbolModel) -> None:
    # Plane by plane, and within a plane bin by bin: the order the decoder can follow.
    r, bins = context.residuals(symbols)
    w = context.walk(symbols.shape[1:])
    coders = [None if m.constant else _coder_model(m) for m in model.bins]
    for c in range(symbols.shape[0]):
        rp = np.zeros(math.prod(w.padded), dtype=np.int64)
        bp = np.zeros_like(rp)
        rp[w.nodes], bp[w.nodes] = r[c].reshape(-1), bins[c].reshape(-1)
        for at in w.planes:
            for b, (sub, coder) in enumerate(zip(model.bins, coders)):
                _encode_values(encoder, rp[at[bp[at] == b]], sub, coder)


def _decode_context(decoder: Any, shape: tuple[int, ...], model: SymbolModel) -> np.ndarray:
    w = context.walk(shape[1:])
    coders = [None if m.constant else _coder_model(m) for m in model.bins]
    out = np.empty((shape[0], math.prod(shape[1:])), dtype=np.int64)
    for c in range(shape[0]):
        qp = np.zeros(math.prod(w.padded), dtype=np.int64)
        rp = np.zeros_like(qp)  # |residual|: what the next plane's bins read
        for at in w.planes:
            prediction = context.predict(qp, at, w.strides)
            bins = context.context(rp, at, w.strides)
            for b, (sub, coder) in enumerate(zip(model.bins, coders)):
                chosen = bins == b
                n = int(chosen.sum())
                if n:
                    r = _decode_values(decoder, n, sub, coder)
                    rp[at[chosen]] = np.abs(r)
                    qp[at[chosen]] = r + prediction[chosen]
        out[c] = qp[w.nodes]
    return out.reshape(shape)


def encode(streams: list[np.ndarray], models: list[SymbolModel]) -> bytes:
    """Range-code each symbol array with its model into one byte string (a context model's array
    in its grid's shape)."""
    encoder = constriction.stream.queue.RangeEncoder()
    for symbols, model in zip(streams, models):
        if model.family == CONTEXT and not model.constant:
            _encode_context(encoder, symbols, model)
        elif not model.constant:
            _encode_values(encoder, symbols.reshape(-1), model, _coder_model(model))
    return encoder.get_compressed().astype("<u4").tobytes()


def decode(data: bytes, models: list[SymbolModel], shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Inverse of `encode`, each array in its shape; garbage in gives MoecFormatError, never another
    exception."""
    if len(data) % 4:
        raise MoecFormatError("the weight stream is not a whole number of 32-bit words")
    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    try:
        decoder = constriction.stream.queue.RangeDecoder(words)
        out = []
        for model, shape in zip(models, shapes):
            if model.family == CONTEXT and not model.constant:
                out.append(_decode_context(decoder, tuple(shape), model))
            else:
                size = math.prod(shape)
                out.append(
                    _decode_values(decoder, size, model, None if model.constant else _coder_model(model)).reshape(shape)
                )
        # A stream whose encoder made it ends where its last symbol does; words beyond that (what a
        # checksum forged over tampered bytes would let through) are refused, not ignored.
        exhausted = decoder.maybe_exhausted()
    except Exception as exc:  # constriction signals bad streams with assorted exception types
        raise MoecFormatError(f"the weight stream cannot be decoded ({exc})") from None
    if not exhausted:
        raise MoecFormatError("the weight stream holds data past its last weight")
    return out
