"""NumPy arrays (.npy) in and out: a volume without an affine or a header (an identity affine and
a synthetic NIfTI-1 header stand in, codec.io.volume.synthetic_header). The array's header is
checked, and what loading it would hold weighed against the memory limit, before a voxel is read."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from numpy.lib import format as npformat

from codec.errors import VolumeError
from codec.io.files import atomic_write
from codec.io.limits import MemoryLimit
from codec.io.reading import check_memory, one_line, shape_text
from codec.io.volume import Volume, check_stored_dtype, from_array

#: The names a NumPy array file is known by.
SUFFIXES = (".npy",)


def is_named(path: Path) -> bool:
    """Whether `path`'s name is a NumPy array file's."""
    return path.name.lower().endswith(SUFFIXES)


def load_npy(path: Path, limit: MemoryLimit, compressing: bool) -> Volume:
    """A .npy array as a Volume, or VolumeError (ResourceLimitError above `limit`)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            version = npformat.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = npformat.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, _, dtype = npformat.read_array_header_2_0(handle)
            else:
                raise ValueError(f"format version {version[0]}.{version[1]} holds structured arrays, not volumes")
            start = handle.tell()
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise VolumeError(f"{path} is not a readable NumPy array: {one_line(exc)}") from None
    stored = check_stored_dtype(dtype, str(path))
    shape = tuple(int(n) for n in shape)
    if any(n < 0 for n in shape):
        raise VolumeError(f"{path} is not a readable NumPy array: its header declares the shape {shape}")
    voxels = math.prod(shape)
    check_memory(limit, compressing, voxels, stored, f"loading {path} ({shape_text(shape)} {stored.name})")
    if size - start < voxels * stored.itemsize:
        raise VolumeError(
            f"{path} is truncated: its header declares {voxels * stored.itemsize} bytes of "
            f"{shape_text(shape)} {stored.name} values, the file holds {max(size - start, 0)}"
        )
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise VolumeError(f"{path} is not a readable NumPy array: {one_line(exc)}") from None
    return from_array(array, dtype=stored, source=path, source_bytes=size, what=str(path))


def save_npy(path: Path, stored: np.ndarray) -> None:
    """Write stored-dtype voxels atomically as a .npy array."""
    atomic_write(path, lambda tmp: _write_npy(tmp, stored))


def _write_npy(path: Path, data: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a handle, not a name: np.save would append ".npy" to some names
        np.save(handle, data, allow_pickle=False)
