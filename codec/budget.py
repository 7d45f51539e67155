"""Target ratio -> network widths, and the final fit of the written file into its window.

The contract (DESIGN section 3, issue 2): the written file, header included, is between R and 1.05 R
times smaller than the raw voxels. Before training, `plan_model` picks the widest network whose
*estimated* file fits; after training, `fit_to_window` adjusts the quantization step of the experts
and decoder until the *real* coded file lands inside the window. Float16 files have no such knob,
so their widths are searched exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .bitstream import pack_container
from .errors import BudgetError
from .partition import block_grid
from .model import ModelConfig
from .quantize import QuantConfig, step_shape

WINDOW = 1.05
MIN_WIDTH = 8
MAX_WIDTH = 1024
#: Coded bits per weight expected at `bits` (measured on trained SIRENs: entropy coding saves
#: about one bit over the fixed-length code); the post-training search corrects the rest.
CODING_GAIN_BITS = 1.0
#: Slack for header fields that are only known after training (steps run, library versions).
HEADER_SLACK = 24


@dataclass(frozen=True)
class Plan:
    model: ModelConfig
    quant: QuantConfig
    ratio: float
    raw_bytes: int
    header_bytes: int
    lower_bytes: int  # smallest file allowed (ratio 1.05 R)
    upper_bytes: int  # largest file allowed (ratio R)
    estimated_bytes: int


@dataclass(frozen=True)
class Architecture:
    """The shape choices that stay fixed while the width scales with the budget."""

    experts: int = 8
    top_k: int = 1
    partition: str = "learned"
    expert_layers: int = 3
    encoder_layers: int = 1
    encoder_share: float = 1.0  # encoder width / expert width
    omega0: float = 30.0


def window(raw_bytes: int, ratio: float) -> tuple[int, int]:
    """(smallest, largest) file size in bytes whose ratio lies in [R, 1.05 R]."""
    return math.ceil(raw_bytes / (WINDOW * ratio)), math.floor(raw_bytes / ratio)


def table_bytes(config: ModelConfig, quant: QuantConfig) -> int:
    if quant.float16:
        return 0
    return sum(7 + 2 * math.prod(step_shape(s, quant.granularity)) for _, s in config.tensor_shapes())


def payload_estimate(config: ModelConfig, quant: QuantConfig) -> int:
    if quant.float16:
        return 2 * config.parameter_count()
    bits = 0.0
    for name, shape in config.tensor_shapes():
        per_weight = max(quant.bits_for(name, config.coordinate_layer) - CODING_GAIN_BITS, 1.0)
        bits += per_weight * math.prod(shape)
    return math.ceil(bits / 32) * 4 + table_bytes(config, quant)


def config_for(width: int, arch: Architecture, shape: tuple[int, ...], encoder_width: int | None = None,
               router_width: int | None = None) -> ModelConfig:
    dims = len(shape)
    if arch.partition == "blocks":
        return ModelConfig(dims=dims, experts=arch.experts, top_k=1, partition="blocks", encoder_width=MIN_WIDTH,
                           encoder_layers=0, router_width=MIN_WIDTH, expert_width=width,
                           expert_layers=arch.expert_layers, omega0=arch.omega0,
                           block_grid=block_grid(shape, arch.experts))
    if encoder_width is None:
        encoder_width = width if arch.experts == 1 else max(MIN_WIDTH, round(width * arch.encoder_share))
    if router_width is None:
        router_width = min(32, max(MIN_WIDTH, encoder_width // 2))
    return ModelConfig(dims=dims, experts=arch.experts, top_k=arch.top_k, partition="learned",
                       encoder_width=encoder_width, encoder_layers=arch.encoder_layers, router_width=router_width,
                       expert_width=width, expert_layers=arch.expert_layers, omega0=arch.omega0)


def header_bytes(nifti: bytes, example_meta: dict) -> int:
    """Container framing plus the deflated header, measured by packing it with an empty payload."""
    return len(pack_container(example_meta, nifti, b"")) + HEADER_SLACK


def plan_model(shape: tuple[int, ...], itemsize: int, ratio: float, arch: Architecture, quant: QuantConfig,
               header: int) -> Plan:
    """The widest network of this architecture whose file meets `ratio`, or BudgetError."""
    if not (math.isfinite(ratio) and ratio > 0):
        raise BudgetError(f"the ratio must be a positive number, not {ratio}")
    raw = math.prod(shape) * itemsize
    lower, upper = window(raw, ratio)

    def size(config: ModelConfig) -> int:
        return header + payload_estimate(config, quant)

    smallest = size(config_for(MIN_WIDTH, arch, shape))
    if smallest > upper:
        highest = raw / smallest
        raise BudgetError(
            f"a ratio of {ratio:g}x cannot be reached for this volume ({raw} raw bytes): the header takes "
            f"{header} bytes and the smallest useful network {smallest - header} more; the highest reachable "
            f"ratio is about {math.floor(highest * 10) / 10:g}x", highest=highest)
    largest = size(config_for(MAX_WIDTH, arch, shape))
    if largest < lower:
        lowest = raw / largest
        raise BudgetError(
            f"a ratio of {ratio:g}x is too low: even the widest network ({MAX_WIDTH}) gives a file of "
            f"{largest} bytes; the lowest reachable ratio is about {math.ceil(lowest * 10) / 10:g}x", lowest=lowest)
    # Aim for the middle of the window when a post-training step search will correct the estimate.
    target = upper if quant.float16 else (lower + upper) // 2
    lo, hi = MIN_WIDTH, MAX_WIDTH
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if size(config_for(mid, arch, shape)) <= target:
            lo = mid
        else:
            hi = mid - 1
    best = config_for(lo, arch, shape)
    if quant.float16:
        # The header estimate is an upper bound (slack plus the largest counters); the real file can
        # be up to about twice the slack smaller, so aim that far above the window's floor.
        best = _refine_exact(best, arch, shape, size, min(lower + 2 * HEADER_SLACK, upper), upper)
    return Plan(best, quant, float(ratio), raw, header, lower, upper, size(best))


def _refine_exact(base: ModelConfig, arch: Architecture, shape: tuple[int, ...],
                  size: Callable[[ModelConfig], int], lower: int, upper: int) -> ModelConfig:
    """Float16 sizes are exact, so search the encoder and router widths near `base` for the largest
    file within [lower, upper]: the expert width alone moves in steps too coarse for a 5% window."""
    if size(base) >= lower or arch.partition == "blocks":
        return base
    best = base
    for width in (base.expert_width, base.expert_width + 1):
        for enc in range(max(MIN_WIDTH, base.encoder_width - 8), base.encoder_width + 24):
            for router in range(MIN_WIDTH, 33) if base.has_router else (base.router_width,):
                candidate = config_for(width, arch, shape, encoder_width=enc, router_width=router)
                s = size(candidate)
                if s <= upper and s > size(best):
                    best = candidate
                    if s >= lower:
                        return best
    return best


def fit_to_window(size_at: Callable[[float], int], upper: int, iterations: int = 30) -> float:
    """The multiplier of the quantization steps (coarser as it grows) that gives the largest file
    not above `upper`: every byte of the budget buys precision. Sizes fall as the multiplier grows;
    bracket by doubling, then bisect in log space. BudgetError if even very coarse steps do not fit."""
    fits, too_big = None, None
    m = 1.0
    for _ in range(40):
        if size_at(m) <= upper:
            fits = m
            if too_big is not None:
                break
            m /= 2.0
        else:
            too_big = m
            if fits is not None:
                break
            m *= 2.0
        if m < 2.0 ** -16:  # finer steps than this only hit the symbol limit: take what fits
            return fits
    if fits is None:
        raise BudgetError(f"the trained network cannot be coded in {upper} bytes, even with very coarse steps")
    if too_big is None:
        return fits
    for _ in range(iterations):
        mid = math.sqrt(fits * too_big)
        if size_at(mid) <= upper:
            fits = mid
        else:
            too_big = mid
        if fits / too_big < 1.0005:
            break
    return fits
