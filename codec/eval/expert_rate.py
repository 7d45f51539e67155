"""What each expert's region costs in a .moec file: its own network's weights, and the latents of the
grid where the router sends voxels to it.

The file is one range-coded stream, so a part's cost is its symbols' code lengths under the file's
own models (entropy.symbol_bits; the stream is within a byte of their sum). A latent node belongs to
the expert of the voxel nearest to it (levels and channels alike): the grid is shared, so this is
where the latents lie, not a split the decoder knows. The router, the decoder, the refinement taps
and the tables of the models belong to no expert: they are the file's shared bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from codec.coding import entropy
from codec.format.moecfile import MoecFile
from codec.format.payload import read_table
from codec.model import is_latent


@dataclass(frozen=True)
class ExpertRate:
    """What one expert's region costs."""

    latents: int  # latent values (every level and channel) whose node lies in its region
    coded_bytes: float  # its network's weights and those latents, at their code lengths in the file


def expert_rates(moec: MoecFile, labels: np.ndarray) -> list[ExpertRate]:
    """Each expert's ExpertRate, from the file's coded weights (`moec.payload`) and the per-voxel
    expert assignment `labels` (the file's shape, expert k labelled k + 1, 0 for none)."""
    meta = moec.meta
    if labels.shape != tuple(meta.shape):
        raise ValueError(f"labels of shape {labels.shape} for a file of shape {tuple(meta.shape)}")
    experts = meta.model.experts
    latents = np.zeros(experts, dtype=np.int64)
    bits = np.zeros(experts)
    for name, shape, cost in _tensor_bits(moec):
        if name.startswith("experts."):
            bits += cost.reshape(experts, -1).sum(axis=1)
        elif is_latent(name) and len(shape) == 1 + labels.ndim:
            owner = labels[np.ix_(*(_nearest_voxels(r, n) for r, n in zip(shape[1:], labels.shape)))]
            owner = np.broadcast_to(owner, shape).reshape(-1).astype(np.int64)
            latents += np.bincount(owner, minlength=experts + 1)[1 : experts + 1]
            bits += np.bincount(owner, weights=cost.reshape(-1), minlength=experts + 1)[1 : experts + 1]
    return [ExpertRate(int(n), float(b) / 8.0) for n, b in zip(latents, bits)]


def _tensor_bits(moec: MoecFile) -> list[tuple[str, tuple[int, ...], np.ndarray]]:
    """(name, shape, each value's code length in bits) of every stored tensor."""
    shapes = moec.meta.model.tensor_shapes()
    if moec.meta.quant.float16:
        return [(name, shape, np.full(shape, 16.0)) for name, shape in shapes]
    # The symbols are the model's weights over their qsteps (the decode multiplied them out), so
    # the range-coded stream is not decoded a second time.
    models, qsteps, _ = read_table(moec.meta, moec.payload)
    weights = dict(moec.model.named_tensors())
    out = []
    for (name, shape), model, qstep in zip(shapes, models, qsteps):
        if model.constant:
            out.append((name, shape, np.zeros(shape)))
            continue
        values = weights[name].detach().cpu().numpy().astype(np.float64).reshape(shape)
        symbols = np.rint(values / np.asarray(qstep, dtype=np.float64)).astype(np.int64)
        out.append((name, shape, entropy.symbol_bits(symbols, model)))
    return out


def _nearest_voxels(nodes: int, voxels: int) -> np.ndarray:
    """The voxel index nearest each of `nodes` grid nodes along an axis of `voxels` voxels: node j at
    -1 + 2 j / (nodes - 1) (model.LatentGrid), voxel i at (2 i + 1) / voxels - 1 (model.coords)."""
    x = np.linspace(-1.0, 1.0, nodes) if nodes > 1 else np.zeros(1)
    return np.clip(np.rint(((x + 1.0) * voxels - 1.0) / 2.0), 0, voxels - 1).astype(np.int64)
