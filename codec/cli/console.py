"""What the commands print and check before they write: figures in words, a progress bar, JSON
that every parser reads, and the outputs' paths."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from codec.eval import db_text

if TYPE_CHECKING:
    from codec.io.limits import MemoryLimit

EXIT_ERROR = 1


def nbytes(n: int) -> str:
    return f"{n:,} bytes"


def clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


class ProgressBar:
    """A one-line progress bar on stderr; a line every 10% when stderr is not a terminal."""

    def __init__(self, stream: TextIO = sys.stderr, width: int = 28) -> None:
        self.stream = stream
        self.width = width
        self.tty = stream.isatty()
        self.last = 0.0
        self.last_decile = -1

    def update(self, p: Any, budget_text: str) -> None:
        now = time.monotonic()
        decile = int(p.fraction * 10)
        if self.tty and now - self.last < 0.2:
            return
        if not self.tty and decile == self.last_decile:
            return
        self.last, self.last_decile = now, decile
        filled = int(self.width * p.fraction)
        psnr = "" if math.isnan(p.psnr) else f" PSNR {p.psnr:5.2f} dB"
        text = (
            f"[{'#' * filled}{'.' * (self.width - filled)}] {100 * p.fraction:3.0f}% step {p.step}"
            f" {p.stage:<6}{f' ({p.trying})' if p.trying else ''} loss {p.loss:.5f}{psnr} {clock(p.seconds)}"
            f"{budget_text}"
        )
        if self.tty:
            self.stream.write("\r" + text[:150].ljust(150))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def to_json(value: object) -> str:
    """JSON that every parser reads: an undefined figure (the PSNR of a constant volume) is null,
    not the NaN or Infinity that Python's json module writes by default."""

    def clean(v: object) -> object:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value), allow_nan=False)


def check_output(path: Path, force: bool, *inputs: Path | None) -> None:
    """Everything that would stop the write, said before the work that precedes it."""
    from codec.errors import OutputError
    from codec.io.files import check_writable, refuse_overwrite

    refuse_overwrite(path, *inputs)
    check_writable(path)
    if path.exists() and not force:
        raise OutputError(f"{path} exists; use --force to replace it")


def check_volume_output(path: Path, force: bool, *inputs: Path | None, npy: bool = True) -> None:
    from codec.io.load import check_volume_name

    check_output(Path(path), force, *inputs)
    check_volume_name(path, npy=npy)


def check_distinct(*paths: Path | None) -> None:
    from codec.errors import OutputError

    seen: dict[Path, object] = {}
    for path in paths:
        if path is not None:
            where = Path(path).resolve()
            if where in seen:
                raise OutputError(f"{seen[where]} and {path} name the same file; give each output its own name")
            seen[where] = path


def describe_model(m: Any) -> str:
    router = f"router {m.router_width}" + ("" if m.router_features else " on the coordinates alone")
    if m.partition == "blocks":
        grid = "x".join(map(str, m.block_grid))
        return f"block partition {grid} ({m.experts} SIRENs of {m.expert_layers}x{m.expert_width})"
    if m.encoder == "grid":
        # A grid whose thick-slice axis holds is described level by level: its levels are not halvings.
        levels = (
            " > ".join("x".join(map(str, r)) for r in m.grid_resolutions())
            if m.grid_hold
            else "x".join(map(str, m.grid_finest))
        )
        channels = f"{m.grid_channels} channel{'s' if m.grid_channels != 1 else ''}"
        reading = ", read cubically" if m.grid_interpolation == "cubic" else ""
        encoder = f"latent grid {levels}, {m.grid_levels} levels x {channels} ({m.latent_count():,} latents{reading})"
        if m.experts == 1:
            return f"{encoder}; one sine MLP {m.expert_layers}x{m.expert_width}"
        return (
            f"{encoder}; learned partition, {m.experts} experts, top-{m.top_k}; {router}, "
            f"experts {m.expert_layers}x{m.expert_width}"
        )
    if m.experts == 1:
        return f"single SIREN ({m.encoder_layers + m.expert_layers} sine layers of {m.expert_width})"
    return (
        f"learned partition, {m.experts} experts, top-{m.top_k}; encoder {m.encoder_layers}x{m.encoder_width}, "
        f"{router}, experts {m.expert_layers}x{m.expert_width}"
    )


def region_text(r: Any) -> str:
    return (
        f"inside {db_text(r.psnr_inside)}, max error {r.max_inside:g} ({r.voxels:,} voxels, {100 * r.share:.2f}%); "
        f"outside {db_text(r.psnr_outside)}, max error {r.max_outside:g}"
    )


def memory_limit(args: argparse.Namespace) -> MemoryLimit:
    """The memory limit a command's --max-memory sets (codec.io.limits.MemoryLimit): the default
    share of this machine's memory when the option is not given, none when it is 0."""
    from codec.io.limits import MemoryLimit

    value = getattr(args, "max_memory", None)
    return MemoryLimit.default() if value is None else MemoryLimit(int(value))
