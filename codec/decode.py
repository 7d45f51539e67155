"""Decoding a model into voxels: chunked, in bounded memory, sparse like training.

Besides the reconstruction it yields what a researcher inspects: the expert assignment (uint8,
expert k stored as label k+1, 0 never used) and the gate confidence (the largest gate probability;
1 where the partition is fixed). Values are returned in real units *as the output file holds them*:
rounded through the stored dtype, so every figure computed from them is the file's figure.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .floor import apply_floor
from .grid import coords_from_flat, flat_chunks, selection_coords
from .model import MoEC
from .pack import MoecFile, MoecMeta
from .volume import Volume, from_unit, through_stored

DEFAULT_CHUNK = 1 << 17  # measured (benchmarks/speed.py): 1 << 14 decodes 256^3 ~25% slower (per-chunk overhead)


@dataclass(frozen=True, eq=False)
class Reconstruction:
    volume: Volume
    labels: np.ndarray  # uint8, expert k as k + 1
    confidence: np.ndarray  # float32 in (0, 1]


@torch.no_grad()
def evaluate(model: MoEC, coords: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Network output on the [-1, 1] scale, expert labels (k+1) and gate confidence for coordinates."""
    device = next(model.parameters()).device
    out = model(coords.to(device))
    values = out.values[:, 0].float().cpu().numpy()
    labels = (out.routing.choice[:, 0] + 1).to(torch.uint8).cpu().numpy()
    if out.routing.probs is None:
        confidence = np.ones(values.shape, dtype=np.float32)
    else:
        confidence = out.routing.probs.max(dim=-1).values.float().cpu().numpy()
    return values, labels, confidence


def reconstruct(moec: MoecFile, chunk: int = DEFAULT_CHUNK, device: str | torch.device = "cpu",
                on_chunk: Callable[[int, int], None] | None = None) -> Reconstruction:
    """Decode every voxel of a .moec file, `chunk` coordinates at a time."""
    meta = moec.meta
    model = moec.model.to(device).eval()
    total = math.prod(meta.shape)
    values = np.empty(total, dtype=np.float32)
    labels = np.empty(total, dtype=np.uint8)
    confidence = np.empty(total, dtype=np.float32)
    done = 0
    for start, stop in flat_chunks(total, chunk):
        flat = torch.arange(start, stop, dtype=torch.long)
        v, lab, conf = evaluate(model, coords_from_flat(flat, meta.shape))
        values[start:stop] = apply_floor(_as_stored(v, meta), meta.floor, meta.vmin)
        labels[start:stop] = lab
        confidence[start:stop] = conf
        done += stop - start
        if on_chunk is not None:
            on_chunk(done, total)
    return Reconstruction(meta.volume_like(values.reshape(meta.shape)), labels.reshape(meta.shape),
                          confidence.reshape(meta.shape))


def unfloored_values(moec: MoecFile, flat: torch.Tensor, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """The file's values at flat voxel indices as `reconstruct` computes them before the floor: what
    the encoder chooses the floor on."""
    model = moec.model.eval()
    parts = [evaluate(model, coords_from_flat(part, moec.meta.shape))[0] for part in flat.split(chunk)]
    return _as_stored(np.concatenate(parts), moec.meta)


def _as_stored(unit: np.ndarray, meta: MoecMeta) -> np.ndarray:
    """Network output on the [-1, 1] scale -> real units, rounded through the stored dtype."""
    return through_stored(from_unit(unit, meta.vmin, meta.vmax), meta.dtype, meta.slope, meta.inter)


def render(model: MoEC, shape: tuple[int, ...], vmin: float, vmax: float,
           selection: tuple[slice | int, ...], chunk: int = DEFAULT_CHUNK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode part of the grid (a slice, a strided subsample) for previews: real units (unrounded),
    labels and confidence, shaped like the selection (integer axes kept as length 1)."""
    coords, picked = selection_coords(shape, selection)
    parts = [evaluate(model, coords[a:b]) for a, b in flat_chunks(coords.shape[0], chunk)]
    values = from_unit(np.concatenate([p[0] for p in parts]), vmin, vmax).reshape(picked)
    labels = np.concatenate([p[1] for p in parts]).reshape(picked)
    confidence = np.concatenate([p[2] for p in parts]).reshape(picked)
    return values, labels, confidence
