"""A .moec file as progressive arrays: the viewer never waits for a decode.

An implicit representation decodes any voxel alone, so opening a file need not wait for the whole
volume, nor a reslice for its plane. The reconstruction, the expert assignment and the gate
confidence are array-likes (`ProgressiveArray`) that napari slices like numpy arrays, and whose
slicing never decodes at full detail on the calling thread (napari's GUI thread, or its slicing
threads):

* voxels decoded exactly already are returned exactly;
* anything else is returned as a coarse preview: the file decoded on a grid about COARSE_FACTOR
  times coarser per axis (in the background, from the first time napari asks; the file's lowest
  value until then), upsampled nearest-neighbour to the asked box, with the exact tiles at hand
  laid over it. The exact decode of that box (the plane on screen in any orientation: a box one
  voxel thick) is queued for one background thread, newest first: a plane of the same view
  elsewhere (the slider moved on) drops the older one, so the background work follows the screen;
* when a background decode lands, the layers showing the arrays are refreshed on the GUI thread
  (moec_napari.progressive.follow_progressive_layers), and napari's next slice is exact; a plane
  across many tiles is refreshed every PROGRESS_SECONDS meanwhile, exact where its tiles are in.

A 3D view asks for the whole volume: it gets the coarse volume upsampled (with the exact tiles at
hand laid over it), never a whole decode on the GUI thread; its exact decode is queued only where
the tile cache holds the whole grid.

Exact values equal `reconstruct`'s bit for bit: every decode runs through codec.decode.reconstruct's
tiles (slabs of whole slices along the axial axis), on a thread with torch's default thread count
(a tile's last bits depend on it). One TileCache behind the three arrays decodes each tile once for
all of them and keeps the most recently used within a memory bound, so scrolling back costs
nothing; a plane across the tiles (coronal, sagittal) is decoded tile by tile and kept whole in a
small cache of exact boxes, which also serves grids larger than the tile cache. `np.asarray` of an
array is the one explicit exception: a caller converting a whole layer (writing it to a file,
compressing it again) gets exact values, what is missing decoded on its own thread, as before.

Opening a file is refused, in one line the reader's caller shows as a notification, when its
decode is estimated (codec.decode.cost, from the header) to need more memory than the limit or to
take longer than the command line's default on the whole grid: a file whose every slice takes a
minute would keep the viewer coarse one slice at a time.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from codec.decode import cost
from codec.decode.reconstruct import (
    RegionDecode,
    Tiling,
    decode_region,
    gather,
    output_shape,
    output_volume,
    tiling,
)
from codec.format.moecfile import MoecFile
from codec.io.limits import MemoryLimit
from codec.io.volume import Volume

log = logging.getLogger(__name__)

#: Decoded tiles kept for scrolling back: values, labels and confidence take 9 bytes a voxel, so
#: 512 MiB hold a 512 x 512 x 200 CT whole.
CACHE_BYTES = 512 << 20
_PARTS = {"values": np.float32, "labels": np.uint8, "confidence": np.float32}
#: Bytes a decoded voxel takes in the cache: its value, label and confidence.
VOXEL_BYTES = sum(np.dtype(kind).itemsize for kind in _PARTS.values())
#: What a refusal tells the user to do instead, where a viewer has no options to raise.
MEMORY_OPTION = "decode it with moec decompress --max-memory"
TIME_OPTION = "decode it with moec decompress --max-decode-minutes"
#: The coarse preview's grid: this many times coarser per spatial axis than the file's grid (or
#: than the output grid, where that is the coarser), and coarser still where it would exceed
#: COARSE_VOXELS (1/64 of the file's voxels: a tenth of a second for the development CT).
COARSE_FACTOR = 4
COARSE_VOXELS = 1 << 22
#: Exact boxes decoded across tiles (coronal and sagittal planes) are kept within this share of the
#: cache's bound beside the tiles (at least two tiles' worth); one box takes a quarter of that at most.
BOX_SHARE = 4
#: Requests the background decoder keeps waiting (planes of other views, other files): a newer
#: one pushes the oldest out. A plane of the same view elsewhere replaces its older one at once.
MAX_REQUESTS = 4
#: While a request takes long (a plane across every tile), the layers are refreshed this often
#: with the tiles decoded so far.
PROGRESS_SECONDS = 1.0
#: The background decoder's niceness above the viewer's (Linux, where a thread has its own): the
#: GUI thread and the renderer come first on a busy machine. Its torch thread count stays
#: torch's default, as `reconstruct`'s threads': a tile's last bits depend on it.
DECODER_NICENESS = 10

TileKey = tuple[int, int]
Box = tuple[slice, ...]


class TileCache:
    """Decoded tiles of one file on one output grid, least recently used dropped first. Thread
    safe: napari may slice from more than one thread; a tile is decoded once however many threads
    ask for it at the same time, and nothing waits on a decode to look at what is held (`peek`)."""

    def __init__(
        self, moec: MoecFile, shape: tuple[int, ...] | None = None, max_bytes: int = CACHE_BYTES, device: str = "cpu"
    ):
        self.moec = moec
        self.grid: Tiling = tiling(moec.meta, shape)
        self.device = device
        plane = int(np.prod(self.grid.shape[:3])) // self.grid.shape[self.grid.axis]
        self.tile_bytes = VOXEL_BYTES * plane * self.grid.depth
        self.max_tiles = max(2, max_bytes // max(1, self.tile_bytes))
        self._tiles: OrderedDict[TileKey, RegionDecode] = OrderedDict()
        self._decoding: dict[TileKey, threading.Event] = {}
        self._lock = threading.Lock()
        #: Every tile decoded so far, in order (a tile dropped and decoded again is listed again).
        self.decoded: list[TileKey] = []

    @property
    def tiles(self) -> int:
        return len(self.grid.slabs) * self.grid.times

    @property
    def held(self) -> int:
        """Tiles held now (at most `max_tiles`)."""
        with self._lock:
            return len(self._tiles)

    def peek(self, slab: int, time: int = 0) -> RegionDecode | None:
        """The tile if it is held (and then as recently used), else None: never decodes or waits."""
        key = (slab, time)
        with self._lock:
            part = self._tiles.get(key)
            if part is not None:
                self._tiles.move_to_end(key)
            return part

    def tile(self, slab: int, time: int = 0) -> RegionDecode:
        """The tile, decoded on the calling thread where it is not held (or waited for where another
        thread is decoding it)."""
        key = (slab, time)
        while True:
            with self._lock:
                part = self._tiles.get(key)
                if part is not None:
                    self._tiles.move_to_end(key)
                    return part
                other = self._decoding.get(key)
                if other is None:
                    mine = self._decoding[key] = threading.Event()
                    break
            other.wait()  # then held, unless dropped again at once: look again
        try:
            part = decode_region(self.moec, self.grid.box(slab, time), shape=self.grid.shape, device=self.device)
            with self._lock:
                self._tiles[key] = part
                self.decoded.append(key)
                while len(self._tiles) > self.max_tiles:
                    self._tiles.popitem(last=False)
            return part
        finally:
            with self._lock:
                del self._decoding[key]
            mine.set()


def coarse_shape(meta, shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The coarse preview's grid for the output grid `shape` (None: the file's): see COARSE_FACTOR.
    A 4D grid keeps its time points."""
    grid = output_shape(meta, shape)
    base = [min(n, f) for n, f in zip(grid[:3], meta.shape[:3])]
    voxels = math.prod(base) * math.prod(grid[3:])
    factor = max(float(COARSE_FACTOR), (voxels / COARSE_VOXELS) ** (1 / 3))
    return tuple(max(1, math.ceil(n / factor)) for n in base) + tuple(grid[3:])


def upsample(coarse: np.ndarray, shape: tuple[int, ...], box: Box) -> np.ndarray:
    """The voxels `box` of a grid of `shape` taken from the coarse grid covering the same box
    (codec.io.resample: voxel i of n sits at (i + 1/2) / n of the axis), nearest neighbour."""
    picks = []
    for axis, (n, sel) in enumerate(zip(shape, box)):
        m = coarse.shape[axis]
        index = np.arange(sel.start, sel.stop)
        if m != n:
            index = np.minimum(((index + 0.5) * (m / n)).astype(np.intp), m - 1)
        picks.append((len(index) / m, axis, index))
    out = coarse
    for _, axis, index in sorted(picks, key=lambda pick: pick[0]):  # the axes that shrink first
        out = np.take(out, index, axis=axis)  # a new array
    return out


def _extent(box: Box) -> tuple[int, ...]:
    return tuple(s.stop - s.start for s in box)


def _key(box: Box) -> tuple[tuple[int, int], ...]:
    return tuple((s.start, s.stop) for s in box)


def _overlap(grid: Tiling, box: Box, slab: int, time: int) -> tuple[Box, Box] | None:
    """Where tile (slab, time) meets `box`: (in the box's array, in the tile's), or None."""
    where = grid.box(slab, time)
    inside = tuple(slice(max(b.start, t.start), min(b.stop, t.stop)) for b, t in zip(box, where))
    if any(s.stop <= s.start for s in inside):
        return None
    dst = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(inside, box))
    src = tuple(slice(s.start - t.start, s.stop - t.start) for s, t in zip(inside, where))
    return dst, src


class ProgressiveSource:
    """One file on one output grid behind its three progressive arrays: the tile cache, the coarse
    preview, the exact boxes decoded across tiles, and the listeners (moec_napari.progressive) told,
    from the background thread, whenever more detail has landed."""

    def __init__(
        self, moec: MoecFile, shape: tuple[int, ...] | None = None, max_bytes: int = CACHE_BYTES, device: str = "cpu"
    ):
        self.moec = moec
        self.cache = TileCache(moec, shape, max_bytes, device)
        self.grid = self.cache.grid
        self.shape: tuple[int, ...] = tuple(self.grid.shape)
        self.coarse_shape = coarse_shape(moec.meta, shape)
        #: The coarse preview, once decoded.
        self.coarse: RegionDecode | None = None
        self._coarse_asked = False
        #: The bound on the exact boxes kept beside the tiles.
        self.box_bytes = max(max_bytes // BOX_SHARE, 2 * self.cache.tile_bytes)
        self._boxes: OrderedDict[tuple[tuple[int, int], ...], RegionDecode] = OrderedDict()
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], bool]] = []
        self._fill = {"values": float(moec.meta.vmin), "labels": 0, "confidence": 0.0}
        self.last_notice = 0.0
        #: Requests dropped before they were done, as stale (see _Decoder.submit).
        self.dropped = 0
        #: Boxes the background decoder finished, in order (file voxel order, as (start, stop) pairs).
        self.finished: list[tuple[tuple[int, int], ...]] = []

    @property
    def held_bytes(self) -> int:
        """The most the decoded outputs hold at once: the tile cache, the exact boxes, the boxes
        being gathered (MAX_REQUESTS waiting and one in hand) and the preview."""
        gathering = (MAX_REQUESTS + 1) * self.box_bytes // BOX_SHARE
        coarse = math.prod(self.coarse_shape) * VOXEL_BYTES
        return self.cache.max_tiles * self.cache.tile_bytes + self.box_bytes + gathering + coarse

    @property
    def boxes_held(self) -> int:
        """Bytes the exact boxes hold now (at most `box_bytes`)."""
        with self._lock:
            return self._box_bytes()

    # --- reading ------------------------------------------------------------------------------------
    def read(self, part: str, box: Box) -> np.ndarray:
        """The box of one part (file voxel order, normalised slices): exact where decoded, else the
        preview with the exact tiles at hand laid over it, and the box's exact decode queued.
        Never decodes at full detail."""
        ready = self._at_hand(part, box)
        if ready is not None:
            return ready
        tiles = self.grid.covering(box)
        parts = [(tile, self.cache.peek(*tile)) for tile in tiles]
        missing = [tile for tile, found in parts if found is None]
        out = self._preview(part, box) if missing else np.empty(_extent(box), dtype=_PARTS[part])
        for (slab, time_), found in parts:
            where = None if found is None else _overlap(self.grid, box, slab, time_)
            if where is not None:
                out[where[0]] = getattr(found, part)[where[1]]
        if missing:
            self._request(box, tiles)
        return out

    def exact(self, part: str, box: Box) -> np.ndarray:
        """The box of one part exactly, decoding what is missing on the calling thread."""
        ready = self._at_hand(part, box)
        if ready is not None:
            return ready
        out = np.empty(_extent(box), dtype=_PARTS[part])
        gather(self.grid, box, lambda slab, time_: (getattr(self.cache.tile(slab, time_), part),), (out,))
        return out

    def _at_hand(self, part: str, box: Box) -> np.ndarray | None:
        """What needs neither a decode nor a preview: an empty box, or one held exactly."""
        if 0 in _extent(box):
            return np.empty(_extent(box), dtype=_PARTS[part])
        return self._held_box(part, box)

    def _preview(self, part: str, box: Box) -> np.ndarray:
        coarse = self.coarse
        if coarse is None:
            self._ask_coarse()
            return np.full(_extent(box), self._fill[part], dtype=_PARTS[part])
        return upsample(getattr(coarse, part), self.shape, box)

    def _held_box(self, part: str, box: Box) -> np.ndarray | None:
        with self._lock:
            key = next((k for k in self._boxes if all(a <= s.start and s.stop <= b for (a, b), s in zip(k, box))), None)
            if key is None:
                return None
            self._boxes.move_to_end(key)
            region = self._boxes[key]
        return getattr(region, part)[tuple(slice(s.start - a, s.stop - a) for (a, _), s in zip(key, box))].copy()

    # --- the background decoder's side --------------------------------------------------------------
    def _ask_coarse(self) -> None:
        with self._lock:
            if self._coarse_asked:
                return
            self._coarse_asked = True
        _DECODER.coarse(self)

    def _request(self, box: Box, tiles: list[TileKey]) -> None:
        nbytes = math.prod(_extent(box)) * VOXEL_BYTES
        if len(tiles) > 1 and BOX_SHARE * nbytes <= self.box_bytes:
            _DECODER.submit(_Request(self, box, tiles, keep=True))
        elif len(tiles) <= self.cache.max_tiles:
            _DECODER.submit(_Request(self, box, tiles, keep=False))
        # else: a box larger than the memory bound (a 3D view of a grid larger than the cache) stays coarse

    def decode_coarse(self) -> None:
        """Decode the coarse preview (the background decoder calls this) and tell the listeners."""
        try:
            box = tuple(slice(0, n) for n in self.coarse_shape)
            self.coarse = decode_region(self.moec, box, shape=self.coarse_shape, device=self.cache.device)
        except Exception:  # a preview is not worth a crash: the layers stay at the lowest value
            log.exception("decoding the coarse preview of a .moec file failed")
            return
        self.notify()

    def keep_box(self, box: Box, region: RegionDecode) -> None:
        key = _key(box)
        with self._lock:
            self._boxes[key] = region
            self._boxes.move_to_end(key)
            while self._boxes and self._box_bytes() > self.box_bytes:
                self._boxes.popitem(last=False)

    def _box_bytes(self) -> int:
        return sum(math.prod(b - a for a, b in key) for key in self._boxes) * VOXEL_BYTES

    def listen(self, callback: Callable[[], bool]) -> None:
        """Call `callback` (from the background thread) whenever more detail has landed; it returns
        False once it wants no more calls."""
        with self._lock:
            self._listeners.append(callback)

    def notify(self) -> None:
        self.last_notice = time.perf_counter()
        with self._lock:
            listeners = list(self._listeners)
        gone = []
        for callback in listeners:
            try:
                if not callback():
                    gone.append(callback)
            except Exception:
                log.exception("a listener of a progressive .moec array failed")
        if gone:
            with self._lock:
                self._listeners = [c for c in self._listeners if c not in gone]


class _Request:
    """The exact decode of one box, tile by tile: placed into the box's own arrays where it is
    `keep`, else left in the tile cache (a box within one tile, or a 3D view the cache holds)."""

    def __init__(self, source: ProgressiveSource, box: Box, tiles: list[TileKey], keep: bool):
        self.source, self.box, self.key = source, box, _key(box)
        self.extent = _extent(box)
        self.remaining = list(tiles)
        self.outs = {part: np.empty(self.extent, dtype=dtype) for part, dtype in _PARTS.items()} if keep else None

    def same(self, other: _Request) -> bool:
        return self.source is other.source and self.key == other.key

    def step(self) -> bool:
        """Place every tile of the box already held, then decode one more: True once all are in."""
        cache = self.source.cache
        for tile in list(self.remaining):
            found = cache.peek(*tile)
            if found is not None:
                self._place(tile, found)
                self.remaining.remove(tile)
        if self.remaining:
            tile = self.remaining.pop(0)
            self._place(tile, cache.tile(*tile))
        return not self.remaining

    def _place(self, tile: TileKey, found: RegionDecode) -> None:
        if self.outs is None:
            return
        where = _overlap(self.source.grid, self.box, *tile)
        if where is not None:
            for part, out in self.outs.items():
                out[where[0]] = getattr(found, part)[where[1]]

    def finish(self) -> None:
        if self.outs is not None:
            self.source.keep_box(self.box, RegionDecode(**self.outs))
        self.source.finished.append(self.key)
        self.source.notify()


class _Decoder:
    """The one background thread that decodes for every progressive array: coarse previews first
    (they serve every view), then the newest request, one tile at a time so that a newer request
    is taken up after the tile in hand; stale requests are dropped (see `submit`)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._coarse: list[ProgressiveSource] = []
        self._requests: list[_Request] = []  # oldest first
        self._busy = False
        self._holds = 0
        self._stopping = False
        self._thread: threading.Thread | None = None

    def pending(self) -> int:
        """Jobs waiting or in hand."""
        with self._cond:
            return len(self._coarse) + len(self._requests) + int(self._busy)

    def coarse(self, source: ProgressiveSource) -> None:
        with self._cond:
            self._coarse.append(source)
            self._wake()

    def submit(self, request: _Request) -> None:
        """Queue a request as the newest. The same box asked again (by another layer, or napari
        slicing after a refresh) keeps what it has done; a box of the same extent of the same file
        elsewhere (the slider moved on) drops the older one, as do more than MAX_REQUESTS waiting."""
        with self._cond:
            for i, waiting in enumerate(self._requests):
                if waiting.same(request):
                    request = self._requests.pop(i)
                    break
            stale = [r for r in self._requests if r.source is request.source and r.extent == request.extent]
            kept = [r for r in self._requests if r not in stale]
            dropped = stale + kept[: max(0, len(kept) + 1 - MAX_REQUESTS)]
            self._requests = [r for r in kept if r not in dropped] + [request]
            for r in dropped:
                r.source.dropped += 1
            self._wake()

    @contextmanager
    def held(self) -> Iterator[None]:
        """Nothing new is taken up while held (the tile in hand finishes): requests made meanwhile
        queue as `submit` says."""
        with self._cond:
            self._holds += 1
        try:
            yield
        finally:
            with self._cond:
                self._holds -= 1
                self._cond.notify_all()

    def stop(self, timeout: float = 30.0) -> None:
        """Drop what waits and let the tile in hand finish (at the interpreter's exit: a thread
        killed inside torch aborts the process)."""
        with self._cond:
            self._stopping = True
            self._coarse.clear()
            self._requests.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _wake(self) -> None:
        if self._stopping:
            return
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="moec-progressive-decoder", daemon=True)
            self._thread.start()
        self._cond.notify_all()

    def _run(self) -> None:
        _lower_priority()
        while True:
            with self._cond:
                while not self._stopping and (self._holds or not (self._coarse or self._requests)):
                    self._busy = False
                    self._cond.wait()
                if self._stopping:
                    self._busy = False
                    return
                self._busy = True
                source = self._coarse.pop(0) if self._coarse else None
                request = self._requests[-1] if source is None else None
            if source is not None:
                source.decode_coarse()
                continue
            assert request is not None
            try:
                done = request.step()
            except Exception:
                log.exception("decoding part of a .moec file in the background failed")
                with self._cond:
                    if request in self._requests:
                        self._requests.remove(request)
                continue
            if done:
                with self._cond:
                    if request in self._requests:
                        self._requests.remove(request)
                request.finish()
            elif time.perf_counter() - request.source.last_notice >= PROGRESS_SECONDS:
                request.source.notify()


def _lower_priority() -> None:
    """Lower the calling thread's priority by DECODER_NICENESS (its torch threads, started from it,
    inherit it); nothing where threads have no niceness of their own."""
    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + DECODER_NICENESS))
    except OSError:
        pass


_DECODER = _Decoder()
atexit.register(_DECODER.stop)


def pending() -> int:
    """Background decodes waiting or in hand, for every file (0: every request is done)."""
    return _DECODER.pending()


def held_back():
    """A context in which the background decoder takes up nothing new (see _Decoder.held)."""
    return _DECODER.held()


def _index(key, ndim: int) -> tuple:
    """`key` as one int or slice per axis (Ellipsis expanded, missing trailing axes whole)."""
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        at = next(i for i, k in enumerate(key) if k is Ellipsis)
        key = key[:at] + (slice(None),) * (ndim - len(key) + 1) + key[at + 1 :]
    if len(key) > ndim:
        raise IndexError(f"too many indices for an array of {ndim} dimensions")
    out: list[int | slice] = []
    for k in key:
        if isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            out.append(int(k))
        elif isinstance(k, slice):
            out.append(k)
        else:
            raise TypeError(f"a progressive .moec array takes ints and slices, not {type(k).__name__}")
    return tuple(out) + (slice(None),) * (ndim - len(out))


class ProgressiveArray:
    """One part (values, labels or confidence) of a ProgressiveSource as an array-like for napari:
    shape, dtype, transposes, and indexing that returns numpy arrays, exact where decoded and a
    coarse preview elsewhere (see the module's doc). A view holds the file voxel axis behind each
    of its axes and whether it runs backwards.

    The array `lazy_decode` returns (in file voxel order) gives views for indices of whole axes,
    forwards or backwards (what Orientation.to_display applies); every other index, and any index
    of a view, returns voxels. `np.asarray` returns every voxel exactly (decoding on the calling
    thread what is missing), as does `exact`."""

    def __init__(
        self,
        source: ProgressiveSource,
        part: str,
        axes: tuple[int, ...] | None = None,
        backwards: tuple[bool, ...] | None = None,
        *,
        root: bool = True,
    ):
        self.source, self.part = source, part
        n = len(source.shape)
        self.axes = tuple(range(n)) if axes is None else tuple(axes)
        self.backwards = (False,) * n if backwards is None else tuple(backwards)
        self._root = root
        self.shape: tuple[int, ...] = tuple(source.shape[a] for a in self.axes)
        self.dtype = np.dtype(_PARTS[part])
        self.ndim = n

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ProgressiveArray({self.part}, shape={self.shape}, dtype={self.dtype})"

    def transpose(self, *axes) -> ProgressiveArray:
        if len(axes) == 1 and not isinstance(axes[0], (int, np.integer)):
            axes = tuple(axes[0])
        order = tuple(int(a) % self.ndim for a in axes) if axes else tuple(range(self.ndim - 1, -1, -1))
        if sorted(order) != list(range(self.ndim)):
            raise ValueError(f"axes {axes} are not a permutation of {self.ndim} axes")
        return ProgressiveArray(
            self.source,
            self.part,
            tuple(self.axes[a] for a in order),
            tuple(self.backwards[a] for a in order),
            root=False,
        )

    @property
    def T(self) -> ProgressiveArray:  # noqa: N802 - numpy's name
        return self.transpose()

    def __getitem__(self, key) -> ProgressiveArray | np.ndarray:
        key = _index(key, self.ndim)
        if self._root and all(
            isinstance(k, slice) and k.start is None and k.stop is None and k.step in (None, 1, -1) for k in key
        ):
            flips = tuple(back != (k.step == -1) for back, k in zip(self.backwards, key))
            return ProgressiveArray(self.source, self.part, self.axes, flips, root=False)
        return self._take(key, self.source.read)

    def exact(self, key=()) -> np.ndarray:
        """The voxels of `key` exactly, decoding what is missing on the calling thread."""
        return self._take(_index(key, self.ndim), self.source.exact)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self.exact()
        return out if dtype is None else out.astype(dtype, copy=False)

    def _take(self, key: tuple, read: Callable[[str, Box], np.ndarray]) -> np.ndarray:
        """Voxels of a normalised key: the file-order box that holds them, read, then picked and
        put in this view's order."""
        n = len(self.source.shape)
        box: list[slice] = [slice(0, 0)] * n
        pick: list[int | slice] = [0] * n
        kept: list[int] = []  # file axes of the view's axes that stay, in the view's order
        for k, axis, back in zip(key, self.axes, self.backwards):
            size = self.source.shape[axis]
            if isinstance(k, int):
                i = k + size if k < 0 else k
                if not 0 <= i < size:
                    raise IndexError(f"index {k} is out of bounds for an axis of {size}")
                i = size - 1 - i if back else i
                box[axis], pick[axis] = slice(i, i + 1), 0
                continue
            kept.append(axis)
            steps = range(*k.indices(size))
            if back:
                steps = range(size - 1 - steps.start, size - 1 - steps.stop, -steps.step)
            if not steps:
                box[axis], pick[axis] = slice(0, 0), slice(0, 0)
                continue
            lo, hi = min(steps[0], steps[-1]), max(steps[0], steps[-1]) + 1
            first = steps[0] - lo
            stop = first + steps.step * len(steps)
            box[axis], pick[axis] = slice(lo, hi), slice(first, stop if stop >= 0 else None, steps.step)
        voxels = read(self.part, tuple(box))[tuple(pick)]
        order = sorted(kept)
        return voxels.transpose([order.index(axis) for axis in kept])


def lazy_decode(
    moec: MoecFile,
    shape: tuple[int, ...] | None = None,
    max_bytes: int = CACHE_BYTES,
    *,
    memory: MemoryLimit | None = None,
    max_seconds: float | None = 60.0 * cost.DEFAULT_DECODE_MINUTES,
) -> tuple[Volume, ProgressiveArray, ProgressiveArray, TileCache]:
    """The reconstruction as a Volume holding a ProgressiveArray (with the resampled affine and
    header where `shape` is another grid), the labels and confidence as ProgressiveArrays (all in
    file voxel order, sharing one ProgressiveSource), and their tile cache. Nothing is decoded
    until napari asks (then the coarse preview and the planes on screen, in the background).

    ResourceLimitError when decoding would need more than `memory` (None: half this machine's)
    or take longer than `max_seconds` on the whole grid (None: no limit), before any decoding."""
    source = ProgressiveSource(moec, shape, max_bytes)
    check_lazy(moec, source.cache, memory, max_seconds, held=source.held_bytes)
    values, labels, confidence = (ProgressiveArray(source, part) for part in _PARTS)
    return output_volume(moec.meta, values), labels, confidence, source.cache


def check_lazy(
    moec: MoecFile,
    cache: TileCache,
    memory: MemoryLimit | None,
    max_seconds: float | None,
    held: int | None = None,
) -> None:
    """Refuse a lazy decode above the limits: the cost of the whole grid (codec.decode.cost), its
    outputs held as the viewer holds them (`held` bytes; None: the cache's `max_tiles` tiles), not
    the grid."""
    limit = memory if memory is not None else MemoryLimit.default()
    held = cache.max_tiles * cache.tile_bytes if held is None else held
    estimate = cost.decode_cost(moec.meta, cache.grid.shape, held=held)
    cost.check(
        estimate,
        MemoryLimit(limit.bytes, MEMORY_OPTION),
        max_seconds,
        time_option=TIME_OPTION,
        what=f"viewing this file on a {cost.grid_text(estimate.shape)} grid",
    )
