"""A .moec file as lazy dask arrays: the slab on screen is decoded when napari asks for it.

An implicit representation decodes any voxel alone, so opening a file need not wait for the whole
volume: the reconstruction, the expert assignment and the gate confidence are dask arrays whose
chunks are `codec.decode.reconstruct`'s tiles (slabs of whole slices along the axial axis, the slider's axis
in our display order). One TileCache behind the three decodes each tile once for all of them and
keeps the most recently shown tiles within a memory bound, so scrolling back costs nothing.
Values equal `reconstruct`'s bit for bit (decode_region decodes whole tiles).

Opening a file is refused, in one line the reader's caller shows as a notification, when its
decode is estimated (codec.decode.cost, from the header) to need more memory than the limit or to
take longer than the command line's default on the whole grid: a file whose every slice takes a
minute would freeze the viewer one slice at a time.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import dask.array as da
import numpy as np

from codec.decode import cost
from codec.decode.reconstruct import RegionDecode, Tiling, box_of, decode_region, gather, output_volume, tiling
from codec.format.moecfile import MoecFile
from codec.io.limits import MemoryLimit
from codec.io.volume import Volume

#: Decoded tiles kept for scrolling back: values, labels and confidence take 9 bytes a voxel, so
#: 512 MiB hold a 512 x 512 x 200 CT whole.
CACHE_BYTES = 512 << 20
_PARTS = {"values": np.float32, "labels": np.uint8, "confidence": np.float32}
#: Bytes a decoded voxel takes in the cache: its value, label and confidence.
VOXEL_BYTES = sum(np.dtype(kind).itemsize for kind in _PARTS.values())
#: What a refusal tells the user to do instead, where a viewer has no options to raise.
MEMORY_OPTION = "decode it with moec decompress --max-memory"
TIME_OPTION = "decode it with moec decompress --max-decode-minutes"


class TileCache:
    """Decoded tiles of one file on one output grid, least recently used dropped first. Thread
    safe: napari may slice from more than one thread, and a tile is decoded once however many
    layers ask for it at the same time."""

    def __init__(
        self, moec: MoecFile, shape: tuple[int, ...] | None = None, max_bytes: int = CACHE_BYTES, device: str = "cpu"
    ):
        self.moec = moec
        self.grid: Tiling = tiling(moec.meta, shape)
        self.device = device
        plane = int(np.prod(self.grid.shape[:3])) // self.grid.shape[self.grid.axis]
        self.tile_bytes = VOXEL_BYTES * plane * self.grid.depth
        self.max_tiles = max(2, max_bytes // max(1, self.tile_bytes))
        self._tiles: OrderedDict[tuple[int, int], RegionDecode] = OrderedDict()
        self._lock = threading.Lock()
        #: Every tile decoded so far, in order (a tile dropped and decoded again is listed again).
        self.decoded: list[tuple[int, int]] = []

    @property
    def tiles(self) -> int:
        return len(self.grid.slabs) * self.grid.times

    def tile(self, slab: int, time: int = 0) -> RegionDecode:
        key = (slab, time)
        with self._lock:
            if key in self._tiles:
                self._tiles.move_to_end(key)
                return self._tiles[key]
            part = decode_region(self.moec, self.grid.box(slab, time), shape=self.grid.shape, device=self.device)
            self._tiles[key] = part
            self.decoded.append(key)
            while len(self._tiles) > self.max_tiles:
                self._tiles.popitem(last=False)
            return part


class _TileArray:
    """One part (values, labels or confidence) of a TileCache as the array-like dask reads from:
    shape, dtype, and a box of voxels put together from the tiles that hold it."""

    def __init__(self, cache: TileCache, part: str):
        self.cache, self.part = cache, part
        self.shape = cache.grid.shape
        self.dtype = np.dtype(_PARTS[part])
        self.ndim = len(self.shape)

    def __getitem__(self, key) -> np.ndarray:
        box = box_of(key if isinstance(key, tuple) else (key,), self.shape)
        out = np.empty(tuple(s.stop - s.start for s in box), dtype=self.dtype)
        gather(self.cache.grid, box, lambda slab, time: (getattr(self.cache.tile(slab, time), self.part),), (out,))
        return out


def chunks(grid: Tiling) -> tuple[tuple[int, ...], ...]:
    """dask chunks that are the tiles: the slabs along the tiled axis, one time point each."""
    out = []
    for axis, n in enumerate(grid.shape):
        if axis == grid.axis:
            out.append(tuple(b - a for a, b in grid.slabs))
        elif axis == 3:
            out.append((1,) * n)
        else:
            out.append((n,))
    return tuple(out)


def lazy_arrays(cache: TileCache) -> dict[str, da.Array]:
    """The values (real units), labels and confidence of a file as dask arrays in file voxel order."""
    return {
        part: da.from_array(
            _TileArray(cache, part),
            chunks=chunks(cache.grid),
            asarray=False,
            fancy=False,
            lock=False,
            name=f"moec-{part}-{id(cache):x}",
            meta=np.empty((0,) * len(cache.grid.shape), dtype=_PARTS[part]),
        )
        for part in _PARTS
    }


def lazy_decode(
    moec: MoecFile,
    shape: tuple[int, ...] | None = None,
    max_bytes: int = CACHE_BYTES,
    *,
    memory: MemoryLimit | None = None,
    max_seconds: float | None = 60.0 * cost.DEFAULT_DECODE_MINUTES,
) -> tuple[Volume, da.Array, da.Array, TileCache]:
    """The reconstruction as a Volume holding a dask array (with the resampled affine and header
    where `shape` is another grid), the labels and confidence as dask arrays, and their cache.

    ResourceLimitError when decoding would need more than `memory` (None: half this machine's)
    or take longer than `max_seconds` on the whole grid (None: no limit), before any decoding."""
    cache = TileCache(moec, shape, max_bytes)
    check_lazy(moec, cache, memory, max_seconds)
    arrays = lazy_arrays(cache)
    return output_volume(moec.meta, arrays["values"]), arrays["labels"], arrays["confidence"], cache


def check_lazy(moec: MoecFile, cache: TileCache, memory: MemoryLimit | None, max_seconds: float | None) -> None:
    """Refuse a lazy decode above the limits: the cost of the whole grid (codec.decode.cost), its
    outputs held as the cache holds them (at most `max_tiles` tiles, not the grid)."""
    limit = memory if memory is not None else MemoryLimit.default()
    estimate = cost.decode_cost(moec.meta, cache.grid.shape, held=cache.max_tiles * cache.tile_bytes)
    cost.check(
        estimate,
        MemoryLimit(limit.bytes, MEMORY_OPTION),
        max_seconds,
        time_option=TIME_OPTION,
        what=f"viewing this file on a {cost.grid_text(estimate.shape)} grid",
    )
