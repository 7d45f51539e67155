"""A decoded grid written as .nii, .nii.gz or .npy slab by slab: the file codec.io.volume's
`save_nifti` and `save_volume` write of the same voxels, without the whole-grid copies they make
(scaled, converted, reordered), so that a decode of a large grid holds a few slabs beside its
output and no more (`moec decompress`, docs/design.md "Hostile and damaged input")."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np

from codec.io.files import atomic_write
from codec.io.volume import output_header

#: Voxels converted and written at a time: what writing holds beside the decoded grid stays a few
#: such slabs (WRITE_BYTES, counted in the decode's memory estimate).
WRITE_VOXELS = 1 << 20
#: A slab's bytes at their widest: float64 temporaries of converting it to the stored dtype, the
#: converted slab, its bytes in file order and the compressor's buffers.
WRITE_BYTES = 4 * 8 * WRITE_VOXELS


def write_volume(
    path: Path,
    data: np.ndarray,
    header: bytes,
    *,
    dtype: np.dtype,
    descrip: str,
    slope: float = 1.0,
    inter: float = 0.0,
    intent: str | None = None,
    convert: Callable[[np.ndarray], np.ndarray] | None = None,
) -> None:
    """Write a decoded grid as .nii, .nii.gz or .npy, atomically and slab by slab, holding a few
    slabs beside `data`: the file `save_nifti` (or `save_volume` for .npy) writes of the same
    voxels, with `header` (the output grid's NIfTI-1 header) made the output's as they make it.
    `data` holds the values in `dtype` already, or `convert` turns a slab of it into them."""
    if path.name.lower().endswith(".npy"):
        atomic_write(path, lambda tmp: _stream_npy(tmp, data, dtype, convert))
        return
    hdr = nifti_output_header(header, tuple(data.shape), dtype, descrip, slope=slope, inter=inter, intent=intent)
    atomic_write(path, lambda tmp: _stream_nifti(tmp, hdr, data, convert))


def nifti_output_header(
    raw: bytes, shape: tuple[int, ...], dtype: np.dtype, descrip: str, *, slope: float, inter: float, intent: str | None
) -> nib.Nifti1Header:
    """The header nibabel writes for codec.io.volume.save_nifti of a `shape` array of `dtype`
    under `raw`: the same steps (trailing singleton axes restored, the scaling set after the image
    is made), the image holding a zero-stride stand-in for the voxels."""
    hdr = output_header(raw, shape, dtype, descrip)
    original = tuple(int(d) for d in hdr.get_data_shape())
    if intent is not None:
        hdr.set_intent(intent)
    img = nib.Nifti1Image(np.broadcast_to(np.zeros((), dtype=dtype), original), None, hdr)
    img.header.set_slope_inter(slope, inter)
    img.update_header()
    img.get_data_dtype(finalize=True)
    return img.header


def _stream_nifti(
    tmp: Path, hdr: nib.Nifti1Header, data: np.ndarray, convert: Callable[[np.ndarray], np.ndarray] | None
) -> None:
    out = hdr.get_data_dtype()
    # nibabel's Opener: gzip (at nibabel's level) for a .nii.gz name, as nib.save writes it.
    with nib.openers.Opener(str(tmp), "wb") as handle:
        hdr.write_to(handle)
        handle.write(b"\0" * max(0, int(hdr.get_data_offset()) - handle.tell()))
        for part in _fortran_parts(data):
            handle.write(np.asarray(part if convert is None else convert(part)).astype(out).tobytes(order="F"))


def _fortran_parts(data: np.ndarray) -> Iterator[np.ndarray]:
    """`data` (3D or 4D) in slabs of about WRITE_VOXELS whose Fortran-order bytes, one after the
    other, are the whole array's (NIfTI's order: the first axis fastest)."""
    x, y, z = data.shape[:3]
    for t in range(data.shape[3] if data.ndim > 3 else 1):
        volume = data[..., t] if data.ndim > 3 else data
        if x * y <= WRITE_VOXELS:
            depth = WRITE_VOXELS // (x * y)
            for a in range(0, z, depth):
                yield volume[:, :, a : a + depth]
        else:
            rows = max(1, WRITE_VOXELS // x)
            for c in range(z):
                for b in range(0, y, rows):
                    yield volume[:, b : b + rows, c]


def _stream_npy(
    tmp: Path, data: np.ndarray, dtype: np.dtype, convert: Callable[[np.ndarray], np.ndarray] | None
) -> None:
    """What np.save writes of `data` in `dtype` (C order), slab by slab along the first axis."""
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
        "fortran_order": False,
        "shape": tuple(data.shape),
    }
    rows = max(1, WRITE_VOXELS // max(1, math.prod(data.shape[1:])))
    with open(tmp, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        for a in range(0, data.shape[0], rows):
            part = data[a : a + rows]
            handle.write(np.asarray(part if convert is None else convert(part)).astype(dtype).tobytes())
