"""The payload of a .moec file: the weights, either as float16, or (the default) quantized and
range-coded: a small binary table of per-tensor qsteps and symbol models followed by one stream of
integer symbols:

    per tensor, in ModelConfig.tensor_shapes() order:
        u8 family | i16 lowest symbol | i16 highest symbol | f16 scale | f16 qstep x n_qsteps
        [u16 count x (highest - lowest + 1), for the table family only]
        [u8 bins, then per bin: u8 family | i16 lo | i16 hi | f16 scale | [u16 counts],
         for the context family only (latent grids, format version 3): the residuals' models]
    then the range coder's 32-bit words.

Reading validates every field before anything is allocated; any problem is a MoecFormatError.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from codec.coding import entropy
from codec.coding.quantize import (
    MAX_SYMBOL,
    QuantConfig,
    dequantize,
    latent_qsteps,
    max_qsteps,
    qstep_shape,
    quantize,
    to_float16,
)
from codec.errors import MoecFormatError
from codec.format.container import unpack_container
from codec.format.header import MoecMeta, parse_meta
from codec.model import MoEC, is_latent

#: A coded weight costs well over 1/64 of a byte; a file claiming more weights than this per payload
#: byte is hostile, and is refused before anything is decoded or allocated.
MAX_WEIGHTS_PER_BYTE = 64

_TABLE_ENTRY = struct.Struct("<Bhhe")


def tensor_qsteps(
    model: MoEC, quant: QuantConfig, fixed: Mapping[str, np.ndarray | None] | None = None
) -> dict[str, np.ndarray]:
    """Each tensor's qsteps: `fixed` ones as they are (the frozen encoder and router),
    latent grids at the qsteps their rate asks for, the rest from their largest weight at the
    configured bit width. Unrounded: `scaled_qsteps` turns them into the stored float16 qsteps."""
    fixed = fixed or {}
    qsteps: dict[str, Any] = {}  # a frozen float16 tensor keeps its None
    # A latent stack's levels share one rate (quantize.latent_qsteps): set together, or all fixed.
    grids = {name: p.detach().cpu().numpy() for name, p in model.named_tensors() if is_latent(name)}
    if grids and not all(name in fixed for name in grids):
        qsteps.update(zip(grids, latent_qsteps(list(grids.values()), quant.latent_bits)))
    for name, param in model.named_tensors():
        if name in fixed:
            qsteps[name] = fixed[name]
        elif name not in qsteps:
            bits = quant.bits_for(name, model.config.coordinate_layer)
            qsteps[name] = max_qsteps(param.detach().cpu().numpy(), bits, quant.granularity)
    return qsteps


def scaled_qsteps(
    base: dict[str, np.ndarray], multiplier: float, fixed: Mapping[str, np.ndarray | None] | None = None
) -> dict[str, np.ndarray]:
    """`base` qsteps times `multiplier` (coarser as it grows), as stored; `fixed` ones untouched."""
    fixed = fixed or {}
    return {
        name: qstep if name in fixed else to_float16(np.clip(qstep * multiplier, 6.0e-8, 6.0e4))
        for name, qstep in base.items()
    }


def finest_multiplier(
    model: MoEC, base: dict[str, np.ndarray], fixed: Mapping[str, np.ndarray | None] | None = None
) -> float:
    """The smallest multiplier of `base` at which every scaled tensor still holds its largest
    weight in a symbol (MAX_SYMBOL); finer, symbols clip and the weights come out wrong."""
    fixed = fixed or {}
    peaks = {name: np.abs(p.detach().cpu().numpy()) for name, p in model.named_tensors() if name not in fixed}

    def clips(multiplier: float) -> bool:
        qsteps = scaled_qsteps(base, multiplier, fixed)
        return any(np.max(w / qsteps[name], initial=0.0) > MAX_SYMBOL for name, w in peaks.items())

    multiplier = max(
        (float(np.max(w / (np.asarray(base[name]) * MAX_SYMBOL), initial=0.0)) for name, w in peaks.items()),
        default=0.0,
    )
    # Small qsteps are float16 subnormals, stored up to several percent finer than asked.
    while multiplier > 0 and clips(multiplier):
        multiplier *= 1.05
    return multiplier


def encode_payload(model: MoEC, quant: QuantConfig, qsteps: dict[str, np.ndarray] | None) -> bytes:
    tensors = [(name, p.detach().cpu().numpy().astype(np.float32)) for name, p in model.named_tensors()]
    if quant.float16:
        return b"".join(w.astype("<f2").tobytes() for _, w in tensors)
    assert qsteps is not None
    symbols = [quantize(w, qsteps[name]) for name, w in tensors]
    models = [entropy.fit_model(s, spatial=is_latent(name)) for (name, _), s in zip(tensors, symbols)]
    table = b"".join(_model_entry(m, qsteps[name]) for (name, _), m in zip(tensors, models))
    return table + entropy.encode(symbols, models)


def _model_entry(model: entropy.SymbolModel, qstep: np.ndarray | None = None) -> bytes:
    """A symbol model as the table stores it (with the tensor's qsteps, for a top-level entry)."""
    entry = _TABLE_ENTRY.pack(model.family, model.lo, model.hi, model.scale)
    if qstep is not None:
        entry += qstep.astype("<f2").tobytes()
    entry += np.asarray(model.counts, dtype="<u2").tobytes()
    if model.family == entropy.CONTEXT:
        entry += bytes([len(model.bins)]) + b"".join(_model_entry(m) for m in model.bins)
    return entry


def read_table(meta: MoecMeta, payload: bytes) -> tuple[list[entropy.SymbolModel], list[np.ndarray], int]:
    """The per-tensor symbol models and qsteps at the start of a quantized payload, and where the
    coded stream begins."""
    at, models, qsteps = 0, [], []
    for name, shape in meta.model.tensor_shapes():
        n_qsteps = math.prod(qstep_shape(shape, meta.quant.granularity))
        family, lo, hi, scale, after_entry = _read_entry(payload, at)
        end = after_entry + 2 * n_qsteps
        if end > len(payload):
            raise MoecFormatError("the weight table is truncated")
        qstep = np.frombuffer(payload[after_entry:end], dtype="<f2").astype(np.float32)
        if not (np.isfinite(qstep).all() and (qstep > 0).all()):
            raise MoecFormatError("the weight table holds an invalid quantization step")
        if family == entropy.CONTEXT and not (meta.version >= 3 and is_latent(name)):
            raise MoecFormatError("the weight table holds a context model where none can be")
        model, at = _read_model(payload, end, family, lo, hi, scale)
        models.append(model)
        qsteps.append(qstep.reshape(qstep_shape(shape, meta.quant.granularity)))
    return models, qsteps, at


def _read_entry(payload: bytes, at: int) -> tuple[int, int, int, float, int]:
    if at + _TABLE_ENTRY.size > len(payload):
        raise MoecFormatError("the weight table is truncated")
    family, lo, hi, scale = _TABLE_ENTRY.unpack_from(payload, at)
    if family >= len(entropy.FAMILIES) or lo > hi or not (math.isfinite(scale) and scale > 0):
        raise MoecFormatError("the weight table holds an invalid symbol model")
    return family, lo, hi, float(scale), at + _TABLE_ENTRY.size


def _read_model(
    payload: bytes, at: int, family: int, lo: int, hi: int, scale: float
) -> tuple[entropy.SymbolModel, int]:
    """The rest of a symbol model whose fixed entry has been read: its table or its bins."""
    if family == entropy.TABLE:
        if hi - lo >= entropy.MAX_TABLE:
            raise MoecFormatError("the weight table holds a frequency table over too many symbols")
        end = at + 2 * (hi - lo + 1)
        if end > len(payload):
            raise MoecFormatError("the weight table is truncated")
        counts = tuple(int(c) for c in np.frombuffer(payload[at:end], dtype="<u2"))
        if not any(counts):
            raise MoecFormatError("the weight table holds an empty frequency table")
        return entropy.SymbolModel(family, scale, lo, hi, counts), end
    if family != entropy.CONTEXT:
        return entropy.SymbolModel(family, scale, lo, hi), at
    if at >= len(payload):
        raise MoecFormatError("the weight table is truncated")
    n_bins = payload[at]
    if n_bins != entropy.context.BINS:
        raise MoecFormatError(f"the weight table holds a context model of {n_bins} bins, not {entropy.context.BINS}")
    at += 1
    bins = []
    for _ in range(n_bins):
        sub_family, sub_lo, sub_hi, sub_scale, at = _read_entry(payload, at)
        if sub_family == entropy.CONTEXT:
            raise MoecFormatError("the weight table holds a context model inside a context model")
        sub, at = _read_model(payload, at, sub_family, sub_lo, sub_hi, sub_scale)
        bins.append(sub)
    return entropy.SymbolModel(family, scale, lo, hi, bins=tuple(bins)), at


def stored_qsteps(data: bytes) -> dict[str, np.ndarray]:
    """The qstep of every tensor of a quantized .moec file (for analysis tools)."""
    return {name: qstep for name, (_, qstep) in _stored_table(data).items()}


def stored_models(data: bytes) -> dict[str, entropy.SymbolModel]:
    """The symbol model of every tensor of a quantized .moec file (for `moec info` and analysis)."""
    return {name: model for name, (model, _) in _stored_table(data).items()}


def _stored_table(data: bytes) -> dict[str, tuple[entropy.SymbolModel, np.ndarray]]:
    container = unpack_container(data)
    meta = parse_meta(container)
    if meta.quant.float16:
        raise MoecFormatError("a float16 file has no quantization steps")
    models, qsteps, _ = read_table(meta, container.payload)
    return {name: pair for (name, _), pair in zip(meta.model.tensor_shapes(), zip(models, qsteps))}


def decode_tensors(meta: MoecMeta, payload: bytes) -> list[np.ndarray]:
    shapes = meta.model.tensor_shapes()
    count = meta.model.parameter_count()
    if count > MAX_WEIGHTS_PER_BYTE * len(payload) + 1024:
        raise MoecFormatError(f"the header claims {count} weights but the payload has only {len(payload)} bytes")
    if meta.quant.float16:
        need = 2 * meta.model.parameter_count()
        if len(payload) != need:
            raise MoecFormatError(f"the float16 weights take {len(payload)} bytes, not {need}")
        flat = np.frombuffer(payload, dtype="<f2").astype(np.float32)
        out, at = [], 0
        for _, shape in shapes:
            n = math.prod(shape)
            out.append(flat[at : at + n].reshape(shape))
            at += n
        return out
    models, qsteps, at = read_table(meta, payload)
    symbols = entropy.decode(payload[at:], models, [s for _, s in shapes])
    out = []
    for (_, shape), sym, model, qstep in zip(shapes, symbols, models, qsteps):
        if sym.size and (sym.min() < model.lo or sym.max() > model.hi):
            raise MoecFormatError("the weight stream decodes to symbols outside their range")
        out.append(dequantize(sym.reshape(shape), qstep))
    return out
