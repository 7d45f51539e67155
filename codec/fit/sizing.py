"""Target ratio -> network widths, and the final fit of the written file into its window.

The contract (docs/design.md, "Data flow"): the written file, header included, is between R and 1.05 R
times smaller than the raw voxels. Before training, `plan_model` picks the widest network whose
*estimated* file fits; after training, `fit_to_window` adjusts the quantization step of the experts
and decoder until the *real* coded file lands inside the window. Float16 files have no such knob,
so their widths are searched exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from codec.coding.quantize import QuantConfig, qstep_shape
from codec.errors import MoecError, RatioError
from codec.format.container import pack_container
from codec.model import ModelConfig, grid_levels, is_latent
from codec.model.partition import block_grid
from codec.settings import LATENT_BITS, Settings

WINDOW = 1.05
MIN_WIDTH = 8
MAX_WIDTH = 1024
#: Coded bits per weight saved on `bits` by entropy coding, as expected of trained SIRENs (docs/history.md,
#: "Figures behind the code's constants"); the post-training search corrects the rest.
CODING_GAIN_BITS = 1.0
#: Slack for header fields that are only known after training (steps run, library versions).
HEADER_SLACK = 24


@dataclass(frozen=True)
class Plan:
    """The network and quantization a target ratio gets, and the file-size window it must land in."""

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
    """The shape choices that stay fixed while the width scales with the file size. No defaults: they
    are a file's settings (codec.settings.Settings.architecture), chosen in one place."""

    experts: int
    top_k: int
    partition: str
    expert_layers: int
    encoder_layers: int
    encoder_share: float  # encoder width / expert width
    encoder: str
    grid_channels: int
    grid_levels: int
    latent_share: float  # of the payload, for the latent grid (its encoder)
    router_features: bool
    grid_spacing_power: float  # see grid_layout
    omega0: float = 30.0  # SIREN's (Sitzmann et al.): not a user's choice


def architecture(settings: Settings, dims: int = 3) -> Architecture:
    """The shape choices of a file with these settings, for a volume of `dims` axes (an open number
    of experts is its first candidate's: Settings.candidates)."""
    settings = settings.candidates(dims)[0]
    assert settings.experts is not None
    encoder = settings.encoder_for(dims)
    layers = settings.expert_layers if settings.expert_layers is not None else (2 if encoder == "grid" else 3)
    return Architecture(
        experts=settings.experts,
        top_k=settings.top_k,
        partition=settings.partition,
        expert_layers=layers,
        encoder_layers=0 if encoder == "grid" else settings.encoder_layers,
        encoder_share=settings.encoder_share,
        encoder=encoder,
        grid_channels=settings.grid_channels,
        grid_levels=settings.grid_levels,
        grid_spacing_power=settings.grid_spacing_power,
        latent_share=settings.latent_share,
        router_features=settings.router_features,
    )


def quantization(settings: Settings) -> QuantConfig:
    """How a file with these settings stores its weights (an open latent rate: its first candidate's)."""
    latent_bits = settings.latent_bits if settings.latent_bits is not None else LATENT_BITS
    return QuantConfig(settings.bits, settings.first_layer_extra_bits, settings.granularity, latent_bits)


def window(raw_bytes: int, ratio: float) -> tuple[int, int]:
    """(smallest, largest) file size in bytes whose ratio lies in [R, 1.05 R]."""
    return math.ceil(raw_bytes / (WINDOW * ratio)), math.floor(raw_bytes / ratio)


def table_bytes(config: ModelConfig, quant: QuantConfig) -> int:
    if quant.float16:
        return 0
    return sum(7 + 2 * math.prod(qstep_shape(s, quant.granularity)) for _, s in config.tensor_shapes())


def payload_estimate(config: ModelConfig, quant: QuantConfig) -> int:
    if quant.float16:
        return 2 * config.parameter_count()
    bits = 0.0
    for name, shape in config.tensor_shapes():
        if is_latent(name):
            per_weight = quant.latent_bits  # exact by construction (quantize.rate_qstep)
        else:
            per_weight = max(quant.bits_for(name, config.coordinate_layer) - CODING_GAIN_BITS, 1.0)
        bits += per_weight * math.prod(shape)
    return math.ceil(bits / 32) * 4 + table_bytes(config, quant)


#: Voxels this many times longer on one axis than on another are thick slices to grid_layout.
THICK_SLICES = 2.5


def thick_slices(spacing: tuple[float, ...]) -> bool:
    """Whether voxels of these sizes are THICK_SLICES times longer on one axis than on another
    (sizes that are not positive numbers, as a broken header may give, are not)."""
    if not spacing or not all(math.isfinite(s) and s > 0 for s in spacing):
        return False
    return max(spacing) >= THICK_SLICES * min(spacing)


def grid_layout(
    shape: tuple[int, ...],
    latents: int,
    channels: int,
    levels: int,
    spacing: tuple[float, ...] | None = None,
    power: float = 0.0,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The latent grid (finest nodes per axis, levels each axis holds) whose levels hold at most
    `latents` latents, never fewer than 2 nodes per axis nor more nodes than voxels.

    An axis gets nodes in proportion to its voxels times (its voxel size / the largest)^power: at
    power 0 the grid has the voxels' proportions, at 1 about equal spacing in millimetres, so thick
    slices keep their own nodes where thin in-plane pixels share theirs. Coarser levels then halve
    the finely sampled axes first: an axis whose nodes lie 2^h times farther apart than the closest
    ones holds its finest count for h levels. Voxels of one size on every axis (or power 0) give
    the proportional grid, every level halving every axis, and so do voxels less than THICK_SLICES
    times longer on one axis than on another: the spacing-following grid lost on the CT-like phantom's
    thin slices and gained on the clinical volumes' thick ones (docs/benchmarks.md, "The latent grid on
    anisotropic voxels (`--grid-spacing`)")."""
    if spacing is None or not thick_slices(spacing):
        spacing, power = (1.0,) * len(shape), 0.0
    weight = [(s / max(spacing)) ** power for s in spacing]

    def finest(scale: float) -> tuple[int, ...]:
        return tuple(min(n, 1024, max(2, round(n * scale * w))) for n, w in zip(shape, weight))

    def holds(base: tuple[int, ...]) -> tuple[int, ...]:
        if power == 0:
            return ()
        apart = [n * s / b for n, s, b in zip(shape, spacing, base)]  # millimetres between nodes
        hold = tuple(min(levels - 1, max(0, round(math.log2(a / min(apart))))) for a in apart)
        return hold if any(hold) else ()

    def count(scale: float) -> int:
        base = finest(scale)
        return sum(channels * math.prod(r) for r in grid_levels(base, holds(base), levels))

    lo, hi = 0.0, 1.0 / min(weight)
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if count(mid) <= latents else (lo, mid)
    return finest(lo), holds(finest(lo))


def config_for(
    width: int,
    arch: Architecture,
    shape: tuple[int, ...],
    *,
    encoder_width: int | None = None,
    router_width: int | None = None,
    finest: tuple[int, ...] = (),
    hold: tuple[int, ...] = (),
) -> ModelConfig:
    dims = len(shape)
    if arch.encoder == "grid":
        return ModelConfig(
            dims=dims,
            experts=arch.experts,
            top_k=arch.top_k,
            partition=arch.partition,
            encoder_width=MIN_WIDTH,
            encoder_layers=0,
            router_width=router_width or min(32, max(MIN_WIDTH, width // 2)),
            expert_width=width,
            expert_layers=arch.expert_layers,
            omega0=arch.omega0,
            encoder="grid",
            grid_channels=arch.grid_channels,
            grid_levels=arch.grid_levels,
            grid_finest=finest or (2,) * dims,
            grid_hold=hold,
            router_features=arch.router_features,
        )
    if arch.partition == "blocks":
        return ModelConfig(
            dims=dims,
            experts=arch.experts,
            top_k=1,
            partition="blocks",
            encoder_width=MIN_WIDTH,
            encoder_layers=0,
            router_width=MIN_WIDTH,
            expert_width=width,
            expert_layers=arch.expert_layers,
            omega0=arch.omega0,
            block_grid=block_grid(shape, arch.experts),
        )
    if encoder_width is None:
        encoder_width = width if arch.experts == 1 else max(MIN_WIDTH, round(width * arch.encoder_share))
    if router_width is None:
        router_width = min(32, max(MIN_WIDTH, encoder_width // 2))
    return ModelConfig(
        dims=dims,
        experts=arch.experts,
        top_k=arch.top_k,
        partition="learned",
        encoder_width=encoder_width,
        encoder_layers=arch.encoder_layers,
        router_width=router_width,
        expert_width=width,
        expert_layers=arch.expert_layers,
        omega0=arch.omega0,
        router_features=arch.router_features,
    )


def check_architecture(arch: Architecture, quant: QuantConfig, dims: int) -> None:
    """MoecError for choices that cannot go together, said in the user's terms."""
    if arch.encoder != "grid":
        return
    if quant.float16:
        raise MoecError("the latent grid is stored quantized only: use --bits below 16, or the SIREN encoder")
    if dims != 3:
        raise MoecError("the latent grid encoder is for 3D volumes: use the SIREN encoder for 4D")
    if arch.partition != "learned":
        raise MoecError("the block partition reads block-local coordinates: it takes no latent grid")


def header_bytes(nifti: bytes, example_meta: dict) -> int:
    """Container framing plus the deflated header, measured by packing it with an empty payload."""
    return len(pack_container(example_meta, nifti, b"")) + HEADER_SLACK


#: The most multiply-adds a voxel's expert may take to decode (its layers and the decoder): at this
#: cost the development CT decodes within its target on 2 CPU cores (docs/benchmarks.md, "Decoding time").
MAX_SYNTHESIS_MACS = 2560


def synthesis_width_limit(config: ModelConfig) -> int:
    """The widest experts of this configuration whose per-voxel multiply-adds stay within
    MAX_SYNTHESIS_MACS (at least MIN_WIDTH)."""

    def macs(width: int) -> int:
        return config.feature_width * width + (config.expert_layers - 1) * width * width + width * config.out_channels

    width = MIN_WIDTH
    while width < MAX_WIDTH and macs(width + 1) <= MAX_SYNTHESIS_MACS:
        width += 1
    return width


def plan_model(
    shape: tuple[int, ...],
    itemsize: int,
    ratio: float,
    *,
    arch: Architecture,
    quant: QuantConfig,
    header: int,
    spacing: tuple[float, ...] | None = None,
) -> Plan:
    """The widest network of this architecture whose file meets `ratio`, or RatioError. `spacing`
    (voxel sizes) shapes a latent grid (grid_layout)."""
    if not (math.isfinite(ratio) and ratio > 0):
        raise RatioError(f"the ratio must be a positive number, not {ratio}")
    raw = math.prod(shape) * itemsize
    lower, upper = window(raw, ratio)
    check_architecture(arch, quant, len(shape))
    finest: tuple[int, ...] = ()
    hold: tuple[int, ...] = ()

    def layout(latents: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        voxel = None if spacing is None else tuple(spacing[:3])
        return grid_layout(shape, latents, arch.grid_channels, arch.grid_levels, voxel, arch.grid_spacing_power)

    if arch.encoder == "grid":
        payload = (lower + upper) // 2 - header
        # The latents get their share, but never the bytes the narrowest experts need.
        narrowest = config_for(MIN_WIDTH, arch, shape, finest=(2,) * len(shape))
        network = payload_estimate(narrowest, quant) - math.ceil(quant.latent_bits * narrowest.latent_count() / 8)
        latent_bytes = min(arch.latent_share * payload, payload - network)
        latents = int(max(0.0, latent_bytes) * 8 / quant.latent_bits)
        finest, hold = layout(latents)

    def size(config: ModelConfig) -> int:
        return header + payload_estimate(config, quant)

    def build(width: int) -> ModelConfig:
        return config_for(width, arch, shape, finest=finest, hold=hold)

    widest = MAX_WIDTH
    if arch.encoder == "grid":
        # A voxel's cost to decode is its expert's multiply-adds: the experts are no wider than
        # that allows, and the bytes a wider network would have taken go to the latents.
        widest = synthesis_width_limit(build(MIN_WIDTH))
        capped = build(widest)
        if size(capped) < (lower + upper) // 2:
            network = payload_estimate(capped, quant) - math.ceil(quant.latent_bits * capped.latent_count() / 8)
            latents = int(max(0, payload - network) * 8 / quant.latent_bits)
            finest, hold = layout(latents)

    smallest = size(build(MIN_WIDTH))
    if smallest > upper:
        highest = raw / smallest
        raise RatioError(
            f"a ratio of {ratio:g}x cannot be reached for this volume ({raw} raw bytes): the header takes "
            f"{header} bytes and the smallest useful network {smallest - header} more; "
            + (
                f"the highest reachable ratio is about {math.floor(highest * 10) / 10:g}x"
                if highest >= 1
                else "no file would be smaller than the raw voxels: the volume is too small to compress"
            ),
            highest=highest,
        )
    largest = size(build(widest))
    if largest < lower:
        lowest = raw / largest
        raise RatioError(
            f"a ratio of {ratio:g}x is too low: even the widest network ({widest}) gives a file of "
            f"{largest} bytes; the lowest reachable ratio is about {math.ceil(lowest * 10) / 10:g}x",
            lowest=lowest,
        )
    # Aim for the middle of the window when a post-training step search will correct the estimate.
    target = upper if quant.float16 else (lower + upper) // 2
    lo, hi = MIN_WIDTH, widest
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if size(build(mid)) <= target:
            lo = mid
        else:
            hi = mid - 1
    best = build(lo)
    if quant.float16:
        # The header estimate is an upper bound (slack plus the largest counters); the real file can
        # be up to about twice the slack smaller, so aim that far above the window's floor.
        best = _refine_exact(best, arch, shape, size, min(lower + 2 * HEADER_SLACK, upper), upper)
    return Plan(best, quant, float(ratio), raw, header, lower, upper, size(best))


def _refine_exact(
    base: ModelConfig,
    arch: Architecture,
    shape: tuple[int, ...],
    size: Callable[[ModelConfig], int],
    lower: int,
    upper: int,
) -> ModelConfig:
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


def fit_to_window(size_at: Callable[[float], int], upper: int, iterations: int = 30, finest: float = 2.0**-16) -> float:
    """The multiplier of the qsteps (coarser as it grows) that gives the largest file
    not above `upper`: every byte of the window buys precision. Sizes fall as the multiplier grows;
    bracket by doubling, then bisect in log space. Nothing below `finest` is tried: finer qsteps
    than that no longer hold the largest weights (their symbols would clip), so such a file is
    small and wrong, not precise; where even `finest` fits, the file stays below the window.
    RatioError if even very coarse steps do not fit."""
    fits, too_big = None, None
    m = 1.0
    for _ in range(40):
        if size_at(m) <= upper:
            fits = m
            if too_big is not None or m <= finest:
                break
            m = max(m / 2.0, finest)
        else:
            too_big = m
            if fits is not None:
                break
            m *= 2.0
    if fits is None:
        raise RatioError(f"the trained network cannot be coded in {upper} bytes, even with very coarse steps")
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
