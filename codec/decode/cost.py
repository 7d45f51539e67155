"""What decoding a .moec file will cost, estimated from its header alone, before anything is decoded.

A few kilobytes can declare two billion voxels, or a network whose every voxel takes millions of
multiply-adds: the file is valid, and decoding it would take the machine's memory or hours. Every
decoder (`moec decompress`, `moec eval`, the napari reader) computes a DecodeCost from the header
(codec.format.header.MoecMeta) and the output grid, and `check` refuses in one line above the
limits, naming the figure and the option that raises the limit; `moec info` prints the estimate.

Memory is what the decode path holds at its peak: its outputs for the whole grid (the values in the
dtype that path keeps, the labels and confidence only where asked), the tiles being decoded
(codec.decode.reconstruct.TILE_VOXELS each, a working figure per voxel from the network's widths),
and the model. Time is the network's multiply-adds per voxel (`macs_per_voxel`, part by part)
over a throughput measured on the kind of CPU this runs on.

Both err high, on purpose: a refusal must come before the machine is overwhelmed, and a user with
a trusted file raises the limit in one option. The per-voxel memory figures were set above the
peak resident memory measured for decodes of every encoder, at top-1 and top-2, on grids of small
and of very large slices (less the interpreter's own); the throughput is the one at which every
measured decode took less than its estimate. A wide network uses the CPU better than the narrow
ones codec files hold, so its time is overestimated most: a few times over at widths of hundreds.
The time is the CPU's: a GPU decodes far faster, and the command line checks no time there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from codec.decode.reconstruct import DEFAULT_CHUNK, TILE_WORKERS, TILES_AHEAD, tiling
from codec.errors import ResourceLimitError
from codec.format.header import MoecMeta
from codec.io.limits import MemoryLimit, cpu_cores, size_text
from codec.model.config import ModelConfig

#: Multiply-adds a second a decode sustains on the kind of CPU it was calibrated on (two cores of a
#: server CPU, TILE_WORKERS tiles at once), with TRANSCENDENTAL_MACS and VOXEL_MACS: fitted to
#: benchmarks-style timings of `reconstruct` (SIREN, latent-grid and block models, widths 4 to
#: 2048, one and two experts a voxel) so that every estimate is at or above the measured time:
#: narrow networks use the CPU least well, and wide ones are estimated long (see `decode_cost`).
MACS_PER_SECOND = 8.0e9
#: The cores that throughput was measured on: fewer cores scale it down; more are not counted on.
CALIBRATION_CORES = 2
#: A sine or an exponential, in multiply-adds: a transcendental costs many multiply-adds' time.
TRANSCENDENTAL_MACS = 20
#: Per decoded voxel, whatever the network: its coordinates, the sort and placement of its rows by
#: expert, the conversion to real units and through the stored dtype, the floor, the copies out.
VOXEL_MACS = 800
#: Bytes a voxel of a tile in flight holds whatever the network: its coordinates (and the copies
#: that build them), its values, labels and confidence as the chunks return them and joined, and
#: the temporaries of taking them to real units and through the stored dtype.
TILE_BYTES_PER_VOXEL = 192
#: Bytes a voxel of the network's chunk holds whatever the network: the int64 expert choice, sort
#: order and rows, and its outputs before they are joined into the tile's.
CHUNK_BYTES_PER_VOXEL = 40
#: Bytes a decode allocates whatever the grid: torch's and the math library's buffers and threads.
DECODE_BYTES = 64 << 20
#: Bytes held per parameter of the model: its float32 tensor, the dequantized weights it was
#: copied from and the coded payload.
BYTES_PER_PARAMETER = 16
#: The default bound on a decode's estimated time (`--max-decode-minutes`): ten minutes on this machine
#: is far beyond what any file this codec writes takes, and far below what a hostile one can ask.
DEFAULT_DECODE_MINUTES = 10.0
#: The option that raises the time limit, named in the refusal.
TIME_OPTION = "--max-decode-minutes"


@dataclass(frozen=True)
class DecodeCost:
    """What decoding a file on one output grid will take: the voxels, the memory held at the peak
    (bytes), the network's multiply-adds and the seconds they take on this machine's CPU."""

    shape: tuple[int, ...]
    voxels: int
    memory: int
    macs: float
    seconds: float

    def text(self) -> str:
        """'about 1.2 GiB of memory and 3 s on this machine (2 cores)'."""
        return (
            f"about {size_text(self.memory)} of memory and {duration_text(self.seconds)} on this machine "
            f"({cpu_cores()} core{'s' if cpu_cores() != 1 else ''})"
        )

    def to_json(self) -> dict:
        return {
            "shape": list(self.shape),
            "voxels": self.voxels,
            "memory_bytes": self.memory,
            "multiply_adds": self.macs,
            "seconds": self.seconds,
        }


def macs_per_second() -> float:
    return MACS_PER_SECOND * min(cpu_cores(), CALIBRATION_CORES) / CALIBRATION_CORES


def duration_text(seconds: float) -> str:
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"{round(seconds)} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


# --- multiply-adds per voxel, part by part -------------------------------------------------------


def _encoder(m: ModelConfig, tile: tuple[int, ...]) -> float:
    """The shared encoder: a latent grid read over the tile as separable products (LatentGrid.
    box_features: per level, the interpolation matrices contracted axis by axis, the axis that
    shrinks most first), or the SIREN layers on the coordinates; the block partition's local
    coordinates cost nothing worth counting."""
    if m.encoder == "grid":
        voxels = math.prod(tile[:3])
        total = 0.0
        for nodes in m.grid_resolutions():
            total += _grid_level(tuple(tile[:3]), nodes, m.grid_channels, cubic=m.grid_interpolation == "cubic")
        return total / voxels + m.feature_width  # the features' copy into the tile's rows
    if m.uses_encoder:
        width_in, total = m.dims, 0.0
        for _ in range(m.encoder_layers):
            total += width_in * m.encoder_width + m.encoder_width * TRANSCENDENTAL_MACS
            width_in = m.encoder_width
        return total
    return 0.0


def _grid_level(out: tuple[int, ...], nodes: tuple[int, ...], channels: int, *, cubic: bool) -> float:
    """Multiply-adds of one level of `box_features` over a box of `out` voxels."""
    # The reading matrices: dense (voxels x nodes), and for cubic reading a product with the
    # refinement matrix (2 n - 1 nodes) first.
    total = float(sum(o * n * (2 * n - 1 if cubic else 1) for o, n in zip(out, nodes)))
    size = list(nodes)
    for axis in sorted(range(3), key=lambda k: out[k] / nodes[k]):
        total += channels * out[axis] * math.prod(size)
        size[axis] = out[axis]
    return total


def _router(m: ModelConfig, tile: tuple[int, ...]) -> float:
    """The gate: two layers, and the exponentials of its softmax (top-k beyond top-1)."""
    if not m.has_router:
        return 0.0
    return m.router_inputs * m.router_width + m.router_width * m.experts + m.experts * TRANSCENDENTAL_MACS


def _experts(m: ModelConfig, tile: tuple[int, ...]) -> float:
    """Each voxel through its top-k experts only (sparse dispatch), its features gathered first."""
    one = m.expert_width * TRANSCENDENTAL_MACS * m.expert_layers
    width_in = m.feature_width
    for _ in range(m.expert_layers):
        one += width_in * m.expert_width
        width_in = m.expert_width
    return m.top_k * (one + m.feature_width)


def _decoder(m: ModelConfig, tile: tuple[int, ...]) -> float:
    """The shared linear layer (once per expert at top-1, once on the mix beyond), and the mix."""
    return m.top_k * m.expert_width * (m.out_channels + 1)


def _voxel(m: ModelConfig, tile: tuple[int, ...]) -> float:
    """What every voxel costs besides the network (VOXEL_MACS), its coordinates included."""
    return VOXEL_MACS + m.dims


#: Every part of a decode, in the order a voxel runs through them. A model field that changes the
#: work changes the function of its part; a new part is a new entry.
PARTS: tuple[tuple[str, Callable[[ModelConfig, tuple[int, ...]], float]], ...] = (
    ("encoder", _encoder),
    ("router", _router),
    ("experts", _experts),
    ("decoder", _decoder),
    ("voxel", _voxel),
)


def macs_per_voxel(model: ModelConfig, tile: tuple[int, ...]) -> dict[str, float]:
    """Multiply-adds per decoded voxel of each part of the network (PARTS), for tiles of `tile`."""
    return {name: part(model, tile) for name, part in PARTS}


# --- memory ---------------------------------------------------------------------------------------


def working_bytes(model: ModelConfig, tile_voxels: int) -> int:
    """Bytes a decode holds for its tiles in flight: per tile, TILE_BYTES_PER_VOXEL and a latent
    grid's features (read for the whole tile at once); per tile being decoded, the network's chunk
    (at most DEFAULT_CHUNK voxels) with CHUNK_BYTES_PER_VOXEL, its features and their copy grouped
    by expert, and float32 activations of the router and of the widest layer: an input and an
    output per expert at top-1; at top-k the experts' outputs, joined, weighted and summed too."""
    chunk = min(tile_voxels, DEFAULT_CHUNK)
    features = model.feature_width
    router = model.router_width + 2 * model.experts if model.has_router else 0
    widest = max(model.expert_width, model.encoder_width if model.uses_encoder else 0, features)
    layers = 3 if model.top_k == 1 else 4 * model.top_k + 1
    per_tile = tile_voxels * (TILE_BYTES_PER_VOXEL + (4 * features if model.encoder == "grid" else 0))
    per_chunk = chunk * (CHUNK_BYTES_PER_VOXEL + 4 * ((1 + model.top_k) * features + router + layers * widest))
    return (TILE_WORKERS + TILES_AHEAD) * per_tile + TILE_WORKERS * per_chunk


def output_bytes_per_voxel(values: np.dtype | str | type, *, labels: bool, confidence: bool) -> int:
    """Bytes per voxel of a decode's outputs: the values in `values`, and where asked the labels
    (uint8) and the confidence (float32)."""
    return np.dtype(values).itemsize + (1 if labels else 0) + (4 if confidence else 0)


def decode_cost(
    meta: MoecMeta,
    shape: tuple[int, ...] | None = None,
    *,
    values: np.dtype | str | type = np.float32,
    labels: bool = True,
    confidence: bool = True,
    beside: int = 0,
    held: int | None = None,
    fixed: int = 0,
) -> DecodeCost:
    """The cost of decoding `meta`'s file on the grid `shape` (None: the file's own).

    `values`, `labels` and `confidence` say what the decode keeps for the whole grid (what
    `reconstruct` keeps by default; `decode_stored` keeps the stored dtype). `beside`: bytes per
    voxel the caller holds besides (an original to compare with). `held`: bytes the outputs hold
    in place of the whole grid's (a viewer's bounded cache of tiles). `fixed`: bytes the caller
    holds whatever the grid (a writer's buffers)."""
    grid = tiling(meta, shape)
    voxels = math.prod(grid.shape)
    box = grid.box(0)
    tile = tuple(s.stop - s.start for s in box)
    tile_voxels = math.prod(tile)
    model = meta.model
    outputs = voxels * output_bytes_per_voxel(values, labels=labels, confidence=confidence)
    memory = (
        (outputs if held is None else min(outputs, held))
        + voxels * beside
        + working_bytes(model, tile_voxels)
        + model.parameter_count() * BYTES_PER_PARAMETER
        + DECODE_BYTES
        + fixed
    )
    macs = float(voxels) * sum(macs_per_voxel(model, tile).values())
    return DecodeCost(tuple(grid.shape), voxels, int(memory), macs, macs / macs_per_second())


def max_seconds(minutes: float | None) -> float | None:
    """The time limit `--max-decode-minutes` sets, in seconds: the default when not given, none at 0."""
    minutes = DEFAULT_DECODE_MINUTES if minutes is None else float(minutes)
    return None if minutes <= 0 else 60.0 * minutes


def check(
    cost: DecodeCost,
    memory: MemoryLimit,
    max_seconds: float | None,
    *,
    what: str = "this decode",
    time_option: str = TIME_OPTION,
) -> None:
    """ResourceLimitError, in one line with the estimate, the limit and the option that raises it,
    when `cost` is above the memory limit or its time above `max_seconds` (None: no time limit).
    `what` names the decode: "decoding ct.moec on a 2048 x 1024 x 1024 grid"."""
    memory.check(cost.memory, what)
    if max_seconds is not None and cost.seconds > max_seconds:
        minutes = math.ceil(cost.seconds / 60)
        raise ResourceLimitError(
            f"{what} would take about {duration_text(cost.seconds)} on this machine "
            f"({cost.macs / cost.voxels:,.0f} multiply-adds per voxel), above the limit of "
            f"{duration_text(max_seconds)}; if the file is trusted, raise the limit ({time_option} {minutes})"
        )


def grid_text(shape: tuple[int, ...]) -> str:
    return " x ".join(map(str, shape))
