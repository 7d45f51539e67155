"""Decoding a model into voxels: tile by tile, in bounded memory, sparse like training; the whole
grid (`reconstruct`) or any box of it (`decode_region`, what a lazy viewer asks for), on the
file's grid or on another one over the same box (codec.io.resample).

Besides the reconstruction it yields what a researcher inspects: the expert assignment (uint8,
expert k stored as label k+1, 0 never used) and the gate confidence (the largest gate probability;
1 where the partition is fixed), each held only when asked for. Values are returned in real units
*as the output file holds them*: rounded through the stored dtype, so every figure computed from
them is the file's figure; or, for writing (`decode_stored`), as the stored values themselves, two
bytes a voxel for an int16 CT where real units take four. What a decode will hold and how long it
will take is estimated from the header alone by codec.decode.cost.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
import torch

from codec.decode.floor import apply_floor
from codec.format.header import MoecMeta
from codec.format.moecfile import MoecFile
from codec.io.resample import check_shape, resampled_affine, resampled_header
from codec.io.volume import Volume, through_stored, to_stored
from codec.model import LatentGrid, MoEC
from codec.model.coords import coords_from_flat, flat_chunks, selection_axes, selection_coords
from codec.model.units import from_unit

DEFAULT_CHUNK = 1 << 17  # large enough that per-chunk overhead does not count (docs/history.md)


#: Every decode runs through the same tiles: slabs of whole slices along the axis nearest to the
#: patient's superior-inferior direction (the slice axis a viewer scrolls through), of about
#: TILE_VOXELS voxels and at most TILE_SLICES slices, one time point each. The network's output for
#: a voxel depends, in its last bits, on the batch it is computed in (MKL's small and odd-sized
#: matrix products round differently), so a region is decoded as the whole tiles that hold it:
#: `decode_region` then gives exactly the values of `reconstruct`, and a viewer that asks for whole
#: slabs wastes nothing. 2^18 voxels: one 512 x 512 slice, quick enough to show while scrolling.
TILE_VOXELS = 1 << 18
TILE_SLICES = 8
#: Tiles `reconstruct` decodes side by side on the CPU. A tile is many small operations that torch
#: spreads poorly over cores; two tiles at once keep two cores busy (benchmarks/speed.py).
TILE_WORKERS = 2
#: Decoded tiles waiting to be placed, beyond those being decoded: enough to keep the workers busy
#: while one is copied, and a bound on what a whole-grid decode holds beside its output.
TILES_AHEAD = 1


@dataclass(frozen=True, eq=False)
class Reconstruction:
    """A decoded volume with the expert each voxel went to and the router's confidence (each None
    where the decode was not asked for it)."""

    volume: Volume
    labels: np.ndarray | None  # uint8, expert k as k + 1
    confidence: np.ndarray | None  # float32 in (0, 1]


@dataclass(frozen=True, eq=False)
class StoredReconstruction:
    """A decoded grid as a file holds it: the values in the file's stored dtype (what `save_volume`
    writes for `reconstruct`'s volume: rounded, clipped, the NIfTI scaling undone), with the affine
    and NIfTI header of the output grid, and the labels and confidence where asked for."""

    values: np.ndarray  # the stored dtype, output grid's shape, file voxel order
    affine: np.ndarray
    header: bytes  # NIfTI-1, of the output grid (resampled where it is not the file's)
    dtype: np.dtype
    slope: float
    inter: float
    labels: np.ndarray | None  # uint8, expert k as k + 1
    confidence: np.ndarray | None  # float32 in (0, 1]


@dataclass(frozen=True, eq=False)
class RegionDecode:
    """A box of the output grid as `reconstruct` decodes it, in file voxel order."""

    values: np.ndarray  # float32, real units, rounded through the stored dtype, floor applied
    labels: np.ndarray  # uint8, expert k as k + 1
    confidence: np.ndarray  # float32 in (0, 1]


@dataclass(frozen=True)
class Tiling:
    """The tiles of an output grid (see TILE_VOXELS): slabs of `depth` slices along `axis`, each
    at one time point of a 4D grid."""

    shape: tuple[int, ...]
    axis: int
    depth: int

    @property
    def slabs(self) -> list[tuple[int, int]]:
        n = self.shape[self.axis]
        return [(a, min(a + self.depth, n)) for a in range(0, n, self.depth)]

    @property
    def times(self) -> int:
        return self.shape[3] if len(self.shape) > 3 else 1

    def box(self, slab: int, time: int = 0) -> tuple[slice, ...]:
        a, b = self.slabs[slab]
        box = [slice(0, n) for n in self.shape]
        box[self.axis] = slice(a, b)
        if len(self.shape) > 3:
            box[3] = slice(time, time + 1)
        return tuple(box)

    def covering(self, region: tuple[slice, ...]) -> list[tuple[int, int]]:
        """(slab, time) of every tile that holds part of `region` (normalised slices)."""
        lo, hi = region[self.axis].start, region[self.axis].stop
        slabs = [j for j, (a, b) in enumerate(self.slabs) if a < hi and lo < b]
        times = range(region[3].start, region[3].stop) if len(self.shape) > 3 else range(1)
        return [(j, t) for t in times for j in slabs]


@torch.no_grad()
def predict(
    model: MoEC, coords: torch.Tensor, feats: torch.Tensor | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Network output on the [-1, 1] scale, expert labels (k+1) and gate confidence for coordinates
    (and their features, when computed already)."""
    device = next(model.parameters()).device
    coords = coords.to(device)
    values, choice, confidence = model.infer(coords, model.features(coords) if feats is None else feats)
    return (values.float().cpu().numpy(), (choice + 1).to(torch.uint8).cpu().numpy(), confidence.float().cpu().numpy())


def slice_axis(affine: np.ndarray) -> int:
    """The spatial voxel axis closest to the superior-inferior direction (the axial slice axis;
    the display's slider axis in the plugin), or the last spatial axis for a degenerate affine."""
    ornt = nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64)[:4, :4])
    axes = [a for a in range(3) if ornt[a, 0] == 2]
    return axes[0] if axes else 2


def tiling(meta: MoecMeta, shape: tuple[int, ...] | None = None) -> Tiling:
    """The tiles every decode of `meta`'s file on the grid `shape` (None: the file's) runs through."""
    shape = output_shape(meta, shape)
    axis = slice_axis(meta.affine)
    plane = math.prod(shape[:3]) // shape[axis]
    return Tiling(shape, axis, max(1, min(TILE_SLICES, TILE_VOXELS // plane, shape[axis])))


def output_shape(meta: MoecMeta, shape: tuple[int, ...] | None) -> tuple[int, ...]:
    return tuple(meta.shape) if shape is None else check_shape(shape, len(meta.shape))


def box_of(region: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[slice, ...]:
    """`region` as one slice(start, stop) per axis (missing axes whole), numpy's clipping rules."""
    if len(region) > len(shape):
        raise ValueError(f"a region of {len(region)} axes for a {len(shape)}D grid")
    out = []
    for sel, n in zip(tuple(region) + (slice(None),) * (len(shape) - len(region)), shape):
        if not isinstance(sel, slice):
            raise TypeError(f"a region is a tuple of slices, not {sel!r}")
        start, stop, step = sel.indices(n)
        if step != 1:
            raise ValueError("a region is a box: slices with a step of 1")
        out.append(slice(start, max(start, stop)))
    return tuple(out)


def _decode_tile(
    model: MoEC, meta: MoecMeta, shape: tuple[int, ...], box: tuple[slice, ...], chunk: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values (as stored, floor applied), labels and confidence of one whole tile, box-shaped."""
    coords, picked = selection_coords(shape, box)
    feats = None
    if isinstance(model.encoder, LatentGrid):
        device = next(model.parameters()).device
        feats = model.encoder.box_features([a.to(device) for a in selection_axes(shape, box)])
    parts = [
        predict(model, coords[a:b], None if feats is None else feats[a:b])
        for a, b in flat_chunks(coords.shape[0], chunk)
    ]
    values = apply_floor(_as_stored(np.concatenate([p[0] for p in parts]), meta), meta.floor, meta.vmin)
    labels = np.concatenate([p[1] for p in parts])
    confidence = np.concatenate([p[2] for p in parts])
    return values.reshape(picked), labels.reshape(picked), confidence.reshape(picked)


def decode_region(
    moec: MoecFile,
    region: tuple[slice, ...],
    *,
    shape: tuple[int, ...] | None = None,
    device: str | torch.device = "cpu",
    chunk: int = DEFAULT_CHUNK,
) -> RegionDecode:
    """Decode a box of voxels: exactly (bit for bit) those voxels of `reconstruct(moec, shape=shape)`.

    `region` holds one slice per axis (missing trailing axes are whole; step 1; numpy's rules for
    negative and out-of-range bounds), in file voxel order and in the indices of the output grid
    `shape` (None: the file's own grid; another grid resamples, see codec.io.resample). The work is
    that of the tiles holding the region (see TILE_VOXELS): ask for whole slabs to waste none.
    """
    meta = moec.meta
    grid = tiling(meta, shape)
    box = box_of(region, grid.shape)
    picked = tuple(s.stop - s.start for s in box)
    values = np.empty(picked, dtype=np.float32)
    labels = np.empty(picked, dtype=np.uint8)
    confidence = np.empty(picked, dtype=np.float32)
    if values.size:
        model = moec.model.to(device).eval()
        gather(
            grid,
            box,
            lambda slab, time: _decode_tile(model, meta, grid.shape, grid.box(slab, time), chunk),
            (values, labels, confidence),
        )
    return RegionDecode(values, labels, confidence)


def gather(
    grid: Tiling, box: tuple[slice, ...], tile: Callable[[int, int], Sequence[np.ndarray]], outs: Sequence[np.ndarray]
) -> None:
    """Fill `outs` (arrays of the box's shape) from the tiles that hold `box`: `tile(slab, time)`
    gives a tile's arrays, one per out, each of the tile's shape."""
    for slab, time in grid.covering(box):
        where = grid.box(slab, time)
        inside = tuple(slice(max(b.start, t.start), min(b.stop, t.stop)) for b, t in zip(box, where))
        if any(s.stop <= s.start for s in inside):
            continue
        dst = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(inside, box))
        src = tuple(slice(s.start - t.start, s.stop - t.start) for s, t in zip(inside, where))
        for out, part in zip(outs, tile(slab, time)):
            out[dst] = part[src]


def reconstruct(
    moec: MoecFile,
    *,
    chunk: int = DEFAULT_CHUNK,
    device: str | torch.device = "cpu",
    on_chunk: Callable[[int, int], None] | None = None,
    shape: tuple[int, ...] | None = None,
    labels: bool = True,
    confidence: bool = True,
) -> Reconstruction:
    """Decode every voxel of a .moec file tile by tile (bounded memory), on the file's grid or, with
    `shape`, on another one covering the same box (the volume then carries the resampled affine
    and header). `chunk` is the most voxels the network sees at once; the labels and the
    confidence are held only when asked for (None otherwise)."""
    meta = moec.meta
    grid = tiling(meta, shape)
    values = np.empty(grid.shape, dtype=np.float32)
    outs = _optional_outs(grid.shape, labels, confidence)
    for tile, parts in _decoded_tiles(moec, grid, device, chunk, on_chunk):
        values[tile] = parts[0]
        _place_optional(outs, tile, parts)
    return Reconstruction(output_volume(meta, values), outs[0], outs[1])


def decode_stored(
    moec: MoecFile,
    shape: tuple[int, ...] | None = None,
    *,
    labels: bool = False,
    confidence: bool = False,
    device: str | torch.device = "cpu",
    chunk: int = DEFAULT_CHUNK,
    on_chunk: Callable[[int, int], None] | None = None,
) -> StoredReconstruction:
    """`reconstruct` for writing: the values go straight into an array of the file's stored dtype,
    tile by tile, so nothing of the grid's size is held beside it (an int16 grid takes 2 bytes a
    voxel, not real units' 4 and their copies). Bit for bit what `save_volume` writes of
    `reconstruct(moec, shape=shape).volume`: the same per-voxel conversion, one tile at a time."""
    meta = moec.meta
    grid = tiling(meta, shape)
    values = np.empty(grid.shape, dtype=meta.dtype)
    outs = _optional_outs(grid.shape, labels, confidence)
    for tile, parts in _decoded_tiles(moec, grid, device, chunk, on_chunk):
        values[tile] = to_stored(parts[0], meta.dtype, meta.slope, meta.inter)
        _place_optional(outs, tile, parts)
    affine, header = grid_geometry(meta, grid.shape)
    return StoredReconstruction(values, affine, header, meta.dtype, meta.slope, meta.inter, outs[0], outs[1])


def _optional_outs(shape: tuple[int, ...], labels: bool, confidence: bool) -> tuple[np.ndarray | None, ...]:
    return (
        np.empty(shape, dtype=np.uint8) if labels else None,
        np.empty(shape, dtype=np.float32) if confidence else None,
    )


def _place_optional(outs: tuple[np.ndarray | None, ...], tile: tuple[slice, ...], parts: Sequence[np.ndarray]) -> None:
    for out, part in zip(outs, parts[1:]):
        if out is not None:
            out[tile] = part


def _decoded_tiles(
    moec: MoecFile, grid: Tiling, device: str | torch.device, chunk: int, on_chunk: Callable[[int, int], None] | None
) -> Iterator[tuple[tuple[slice, ...], tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """Every tile of `grid` with its decoded (values, labels, confidence), in order, decoded
    TILE_WORKERS at a time with at most TILES_AHEAD more waiting: what a decode holds beside its
    output stays a few tiles whatever the grid (codec.decode.cost counts it)."""
    meta = moec.meta
    model = moec.model.to(device).eval()
    tiles = iter([grid.box(slab, time) for time in range(grid.times) for slab in range(len(grid.slabs))])
    workers = TILE_WORKERS if torch.device(device).type == "cpu" else 1
    total, done = math.prod(grid.shape), 0
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()

        def submit() -> None:
            tile = next(tiles, None)
            if tile is not None:
                pending.append((tile, pool.submit(_decode_tile, model, meta, grid.shape, tile, chunk)))

        for _ in range(workers + TILES_AHEAD):
            submit()
        while pending:
            tile, future = pending.popleft()
            parts = future.result()
            submit()
            yield tile, parts
            done += math.prod(s.stop - s.start for s in tile)
            if on_chunk is not None:
                on_chunk(done, total)


def output_volume(meta: MoecMeta, values: Any) -> Volume:
    """A Volume of decoded `values` (numpy, or a lazy array of their shape) on the file's grid or on
    a resampled one (the affine and header follow the shape of `values`)."""
    affine, header = grid_geometry(meta, tuple(int(n) for n in values.shape))
    return Volume(
        data=values, affine=affine, header=header, stored_dtype=meta.dtype, slope=meta.slope, inter=meta.inter
    )


def grid_geometry(meta: MoecMeta, shape: tuple[int, ...]) -> tuple[np.ndarray, bytes]:
    """The affine and NIfTI-1 header of an output grid: the file's own, or resampled to `shape`."""
    if tuple(shape) == tuple(meta.shape):
        return meta.affine, meta.nifti
    return resampled_affine(meta.affine, meta.shape, shape), resampled_header(meta.nifti, meta.shape, shape)


def unfloored_values(moec: MoecFile, flat: torch.Tensor, chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """The file's values at flat voxel indices as `reconstruct` computes them before the floor: what
    the encoder chooses the floor on."""
    model = moec.model.eval()
    parts = [predict(model, coords_from_flat(part, moec.meta.shape))[0] for part in flat.split(chunk)]
    return _as_stored(np.concatenate(parts), moec.meta)


def _as_stored(unit: np.ndarray, meta: MoecMeta) -> np.ndarray:
    """Network output on the [-1, 1] scale -> real units, rounded through the stored dtype."""
    return through_stored(from_unit(unit, meta.vmin, meta.vmax), meta.dtype, meta.slope, meta.inter)


def render(
    model: MoEC,
    shape: tuple[int, ...],
    vmin: float,
    vmax: float,
    selection: tuple[slice | int, ...],
    *,
    chunk: int = DEFAULT_CHUNK,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode part of the grid (a slice, a strided subsample) for previews: real units (unrounded),
    labels and confidence, shaped like the selection (integer axes kept as length 1)."""
    coords, picked = selection_coords(shape, selection)
    parts = [predict(model, coords[a:b]) for a, b in flat_chunks(coords.shape[0], chunk)]
    values = from_unit(np.concatenate([p[0] for p in parts]), vmin, vmax).reshape(picked)
    labels = np.concatenate([p[1] for p in parts]).reshape(picked)
    confidence = np.concatenate([p[2] for p in parts]).reshape(picked)
    return values, labels, confidence
