"""What every format's reader shares: the memory check made from a header before any voxel is read
(codec.io.limits), and the texts its refusals are written in."""

from __future__ import annotations

import numpy as np

from codec.io.limits import MemoryLimit, compress_bytes, load_bytes


def check_memory(
    limit: MemoryLimit, compressing: bool, voxels: int, dtype: np.dtype, what: str, beside: int = 0
) -> None:
    """ResourceLimitError when loading (or, with `compressing`, compressing) `voxels` stored as
    `dtype`, and `beside` bytes more, would exceed `limit`; `what` names the load in the refusal."""
    estimate = compress_bytes if compressing else load_bytes
    limit.check(estimate(voxels, np.dtype(dtype).itemsize) + beside, what)


def one_line(exc: BaseException) -> str:
    """An exception's text on one line, as a refusal quotes it."""
    # nibabel's texts run over several lines
    return " ".join(str(exc).replace(" - ", "; ").split()).replace(" ;", ";") or type(exc).__name__


def shape_text(shape: tuple[int, ...]) -> str:
    return " x ".join(str(n) for n in shape)
