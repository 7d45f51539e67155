"""Volume: voxels in real units plus everything needed to write them back as the file they came from.

The codec always works in the file's own voxel order with its original affine (docs/design.md, "Data flow").
A volume knows no file format: each format has its module (codec.io.nifti, codec.io.npy,
codec.io.dicom) and codec.io.load asks each in turn. What every format shares is here: the checks
any voxels pass, the stored dtype and its scaling (scl_slope / scl_inter, applied on load so values
are in real units, Hounsfield for CT, and undone by hand on save: docs/design.md, "Traps"), and the
NIfTI-1 header every volume carries, the .moec file's too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from codec.errors import VolumeError

if TYPE_CHECKING:
    from codec.io.dicom_identity import DicomIdentity

#: The stored dtypes the codec accepts; the .moec header stores the index's name.
SUPPORTED_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
NIFTI1_HEADER_BYTES = 348
DESCRIP_BYTES = 80


@dataclass(frozen=True, eq=False)
class Volume:
    """Voxels (float32, real units, file voxel order, 3D or 4D) with their affine and raw header."""

    data: np.ndarray
    affine: np.ndarray
    header: bytes
    #: The dtype the voxels are stored as in a file (and written back as); `data` is always float32.
    stored_dtype: np.dtype
    slope: float = 1.0
    inter: float = 0.0
    source: Path | None = None
    source_bytes: int | None = None
    #: Patient, study and series of a volume read from a DICOM series (codec.io.dicom), which the .moec
    #: header keeps so that the reconstruction can be filed back under them; None for other inputs.
    dicom: DicomIdentity | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.data.shape)

    @property
    def raw_bytes(self) -> int:
        """Size of the voxels in their stored dtype: the numerator of every compression ratio."""
        return int(self.data.size) * np.dtype(self.stored_dtype).itemsize

    @property
    def spacing(self) -> tuple[float, ...]:
        zooms = nifti_header(self.header).get_zooms()
        return tuple(float(z) for z in zooms[: self.data.ndim])

    @property
    def value_range(self) -> tuple[float, float]:
        return float(self.data.min()), float(self.data.max())

    def with_data(self, data: np.ndarray) -> Volume:
        """The same volume (affine, header, stored dtype, scaling) holding other voxels of the same shape."""
        if tuple(data.shape) != self.shape:
            raise VolumeError(f"shape {tuple(data.shape)} does not match the volume's {self.shape}")
        return replace(self, data=np.asarray(data, dtype=np.float32))


def nifti_header(raw: bytes) -> nib.Nifti1Header:
    return nib.Nifti1Header(binaryblock=raw)


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def span_fits(data: np.ndarray) -> bool:
    """Whether max - min of finite float32 voxels is itself a float32 (normalising divides by it)."""
    return float(np.max(data)) - float(np.min(data)) <= _FLOAT32_MAX


def check_voxels(array: np.ndarray, what: str = "the input") -> np.ndarray:
    """Return the array as a 3D or 4D float32 array, or raise VolumeError saying why it is not one."""
    array = np.asanyarray(array)
    if array.dtype.kind not in "biuf":
        raise VolumeError(f"{what} holds {array.dtype} values; a volume needs real numbers")
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.size == 0:
        raise VolumeError(f"{what} is empty (shape {array.shape})")
    if array.ndim < 3:
        raise VolumeError(f"{what} is {array.ndim}D (shape {array.shape}); MoEC compresses 3D and 4D volumes")
    if array.ndim > 4:
        raise VolumeError(f"{what} is {array.ndim}D (shape {array.shape}); MoEC compresses 3D and 4D volumes")
    flat = [axis for axis in range(3) if array.shape[axis] == 1]
    if len(flat) == 3 and array.ndim == 3:
        raise VolumeError(
            f"{what} is a single voxel (shape {array.shape}); MoEC compresses 3D and 4D volumes of "
            "at least 2 voxels per axis"
        )
    if flat:
        # Compression interpolates between voxels along every spatial axis: it needs two along each.
        axes = ("axis " if len(flat) == 1 else "axes ") + " and ".join(str(axis) for axis in flat)
        raise VolumeError(
            f"{what} has one voxel along {axes} (shape {array.shape}), so it is "
            f"{3 - len(flat)}D; MoEC compresses 3D volumes of at least 2 voxels per axis"
        )
    beyond = VolumeError(
        f"{what} holds values whose range (max - min) is beyond float32, the precision MoEC "
        f"computes in ({_FLOAT32_MAX:.1e}); rescale them before compressing"
    )
    with np.errstate(over="ignore"):
        data = np.asarray(array, dtype=np.float32)
    finite = np.isfinite(data)
    if finite.all() and not span_fits(data):
        raise beyond
    if not finite.all():
        if array.dtype.kind == "f" and np.isfinite(array).all():  # finite until the cast to float32
            raise beyond
        bad = int(data.size - np.count_nonzero(finite))
        raise VolumeError(
            f"{what} has {bad} NaN or infinite voxel(s) of {data.size}; replace them (for example with the "
            "background value) before compressing"
        )
    return data


def check_stored_dtype(dtype: np.dtype, what: str) -> np.dtype:
    """`dtype` as a numpy dtype, or VolumeError unless it is one the codec stores (SUPPORTED_DTYPES)."""
    dtype = np.dtype(dtype)
    if dtype.name not in SUPPORTED_DTYPES:
        raise VolumeError(f"{what} is stored as {dtype}; supported: {', '.join(SUPPORTED_DTYPES)}")
    return dtype


def synthetic_header(shape: tuple[int, ...], dtype: np.dtype, affine: np.ndarray | None = None) -> bytes:
    """A NIfTI-1 header for arrays that came without one (.npy, napari layers)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.dtype(dtype))
    hdr.set_data_shape(shape)
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    hdr.set_sform(affine, code="aligned")
    hdr.set_qform(affine, code="aligned")
    hdr.set_xyzt_units("mm", "sec")
    return bytes(hdr.binaryblock)


def from_array(
    array: np.ndarray,
    affine: np.ndarray | None = None,
    *,
    header: bytes | None = None,
    dtype: np.dtype | type[np.generic] | str | None = None,
    slope: float = 1.0,
    inter: float = 0.0,
    source: Path | None = None,
    source_bytes: int | None = None,
    what: str = "the input",
) -> Volume:
    """A Volume from voxels in real units (the stored dtype defaults to the array's own); `what`
    names the array in refusals."""
    stored = check_stored_dtype(np.dtype(dtype) if dtype is not None else np.asanyarray(array).dtype, "the array")
    data = check_voxels(array, what)
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise VolumeError("the affine must be a finite 4x4 matrix")
    if header is None:
        header = synthetic_header(data.shape, stored, affine)
    if len(header) != NIFTI1_HEADER_BYTES:
        raise VolumeError(f"a NIfTI-1 header has {NIFTI1_HEADER_BYTES} bytes, not {len(header)}")
    return Volume(
        data=data,
        affine=affine,
        header=bytes(header),
        stored_dtype=stored,
        slope=float(slope),
        inter=float(inter),
        source=source,
        source_bytes=source_bytes,
    )


#: The smallest normal float32: a slope below it cannot be undone in the precision MoEC computes in.
FLOAT32_TINY = float(np.finfo(np.float32).tiny)


def scaling_fits(slope: float, inter: float, vmin: float, vmax: float) -> bool:
    """Whether a volume of values in vmin .. vmax with this scaling survives float32 both ways: the
    scaling itself, the span of the range and its ends in stored units (what a .moec header must hold
    to be read back, codec.format.header.parse_meta)."""
    with np.errstate(all="ignore"):
        as32 = np.array([vmin, vmax, slope, inter], dtype=np.float32)
        span = as32[1] - as32[0]
        ends = (as32[:2] - as32[3]) / as32[2]
    return bool(
        np.isfinite(as32).all() and np.isfinite(span) and np.isfinite(ends).all() and abs(slope) >= FLOAT32_TINY
    )


def to_stored(data: np.ndarray, dtype: np.dtype, slope: float = 1.0, inter: float = 0.0) -> np.ndarray:
    """Real units -> stored values: undo the scaling, round and clip for integer types."""
    dtype = np.dtype(dtype)
    raw = np.asarray(data, dtype=np.float64 if dtype.itemsize > 2 else np.float32)
    if slope != 1.0 or inter != 0.0:
        raw = (raw - inter) / slope
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        raw = np.clip(np.rint(raw), info.min, info.max)
    return raw.astype(dtype)


def output_header(raw: bytes, shape: tuple[int, ...], dtype: np.dtype, descrip: str) -> nib.Nifti1Header:
    """The NIfTI-1 header of an output of `shape` and `dtype` made from a volume's raw header."""
    hdr = nifti_header(raw).copy()
    original = tuple(int(d) for d in hdr.get_data_shape())
    # Restore trailing singleton axes that loading squeezed away, so the file's dims come back too.
    if int(np.prod(original)) != int(np.prod(shape)) or original[: len(shape)] != shape:
        original = shape
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(original)
    hdr["descrip"] = descrip.encode("ascii", "replace")[: DESCRIP_BYTES - 1]
    return hdr


def through_stored(data: np.ndarray, dtype: np.dtype, slope: float = 1.0, inter: float = 0.0) -> np.ndarray:
    """Real units as a file of this dtype would hold them: stored (rounded, clipped) and scaled back."""
    stored = to_stored(data, dtype, slope, inter)
    real = stored.astype(np.float32)
    if slope != 1.0 or inter != 0.0:
        real = real * np.float32(slope) + np.float32(inter)
    return real
