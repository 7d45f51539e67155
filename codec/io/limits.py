"""How much memory a load, a compression or a decode will need, estimated from a header before
anything is read or allocated, and the limit above which a command refuses.

A file a few kilobytes long can declare billions of voxels (a .moec header, a NIfTI header in
front of a gzip bomb, a DICOM series of huge slices). Every entry point estimates what it would
hold from the declared sizes and refuses in words above the limit, so the kernel never has to kill
the process. The per-voxel figures are upper bounds of what the code holds (docs/design.md,
"Bounded memory"); the limit is a share of the machine's memory unless the user sets one
(`--max-memory`, the plugin's setting).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from codec.errors import ResourceLimitError

#: The share of the machine's memory a command may plan to use unless told otherwise: the rest is
#: for the operating system, the viewer and whatever else runs.
MEMORY_SHARE = 0.5
#: Loading a volume holds its stored values, their float32 copy in real units and the checks'
#: temporaries (a float32 and a boolean array): this many bytes per voxel beside the stored ones.
LOAD_BYTES_PER_VOXEL = 13
#: Compressing one volume holds, besides the loaded voxels, the voxel sampler's strata and
#: weights and the evaluation's decode of the written file.
COMPRESS_BYTES_PER_VOXEL = 64

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([KMGT]?)(?:I?B)?\s*", re.IGNORECASE)


def physical_memory() -> int:
    """Bytes of memory this machine has (8 GiB where the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def cpu_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def default_memory_limit() -> int:
    return int(MEMORY_SHARE * physical_memory())


def parse_size(text: str) -> int:
    """'8G', '512M', '1.5GiB', '2000000' -> bytes; '0' means no limit. ValueError otherwise."""
    match = _SIZE.fullmatch(str(text))
    if match is None:
        raise ValueError(f"{text!r} is not a size (for example 8G, 512M or 0 for no limit)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def size_text(n: float) -> str:
    """A size for people: '1.5 GiB', '640 MiB', '12 KiB'."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} bytes"


@dataclass(frozen=True)
class MemoryLimit:
    """The most memory a command may plan to hold, in bytes (0: no limit), and the option a user
    raises it with, named in the refusal."""

    bytes: int = 0
    option: str = "--max-memory"

    @classmethod
    def default(cls) -> MemoryLimit:
        return cls(default_memory_limit())

    def check(self, needed: float, what: str) -> None:
        """ResourceLimitError when `needed` bytes exceed the limit: `what` says what would need
        them ("decoding x.moec on a 2048 x 1024 x 1024 grid")."""
        if self.bytes and needed > self.bytes:
            raise ResourceLimitError(
                f"{what} would need about {size_text(needed)} of memory, above the limit of "
                f"{size_text(self.bytes)}; if the file is trusted and the machine has the memory, "
                f"raise the limit ({self.option} {_ceil_size(needed)})"
            )


def _ceil_size(n: float) -> str:
    gib = -(-int(n) // 2**30)
    return f"{gib}G"


def load_bytes(voxels: int, itemsize: int) -> int:
    """What loading a volume of `voxels` stored at `itemsize` bytes holds at its peak."""
    return int(voxels) * (int(itemsize) + LOAD_BYTES_PER_VOXEL)


def compress_bytes(voxels: int, itemsize: int) -> int:
    """What compressing a volume of `voxels` holds at its peak (the load included)."""
    return load_bytes(voxels, itemsize) + int(voxels) * COMPRESS_BYTES_PER_VOXEL
