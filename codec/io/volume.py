"""Volume: voxels in real units plus everything needed to write them back as the file they came from.

The codec always works in the file's own voxel order with its original affine (docs/design.md, "Data flow").
NIfTI scaling (scl_slope / scl_inter) is applied on load so values are in real units (Hounsfield for
CT), and undone by hand on save: nibabel would otherwise recompute the scaling from float data
(docs/design.md, "Traps").

Files are hostile until read: every header is checked, and what loading it would hold weighed
against the memory limit, before a voxel is read; a .nii.gz is read to the end of its gzip stream so
its checksum is checked, and never inflated far past what its header declares.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError
from numpy.lib import format as npformat

from codec.errors import ResourceLimitError, VolumeError
from codec.io.files import atomic_write, refuse_overwrite
from codec.io.limits import MemoryLimit, compress_bytes, load_bytes, size_text

if TYPE_CHECKING:
    from codec.io.dicom import DicomIdentity

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
    dtype: np.dtype
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
        return int(self.data.size) * np.dtype(self.dtype).itemsize

    @property
    def spacing(self) -> tuple[float, ...]:
        zooms = nifti_header(self.header).get_zooms()
        return tuple(float(z) for z in zooms[: self.data.ndim])

    @property
    def value_range(self) -> tuple[float, float]:
        return float(self.data.min()), float(self.data.max())

    def with_data(self, data: np.ndarray) -> Volume:
        """The same volume (affine, header, dtype, scaling) holding other voxels of the same shape."""
        if tuple(data.shape) != self.shape:
            raise VolumeError(f"shape {tuple(data.shape)} does not match the volume's {self.shape}")
        return replace(self, data=np.asarray(data, dtype=np.float32))


def nifti_header(raw: bytes) -> nib.Nifti1Header:
    return nib.Nifti1Header(binaryblock=raw)


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _span_fits(data: np.ndarray) -> bool:
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
        raise VolumeError(f"{what} is a single voxel (shape {array.shape}); MoEC compresses 3D and 4D volumes of "
                          "at least 2 voxels per axis")
    if flat:
        # Compression interpolates between voxels along every spatial axis: it needs two along each.
        axes = ("axis " if len(flat) == 1 else "axes ") + " and ".join(str(axis) for axis in flat)
        raise VolumeError(f"{what} has one voxel along {axes} (shape {array.shape}), so it is "
                          f"{3 - len(flat)}D; MoEC compresses 3D volumes of at least 2 voxels per axis")
    beyond = VolumeError(f"{what} holds values whose range (max - min) is beyond float32, the precision MoEC "
                         f"computes in ({_FLOAT32_MAX:.1e}); rescale them before compressing")
    with np.errstate(over="ignore"):
        data = np.asarray(array, dtype=np.float32)
    finite = np.isfinite(data)
    if finite.all() and not _span_fits(data):
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


def _stored_dtype(dtype: np.dtype, what: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.name not in SUPPORTED_DTYPES:
        raise VolumeError(f"{what} is stored as {dtype}; supported: {', '.join(SUPPORTED_DTYPES)}")
    return dtype


def _read_raw_header(head: bytes, img: nib.spatialimages.SpatialImage) -> bytes:
    """The file's own 348-byte NIfTI-1 header (`head`: the file's first bytes); NIfTI-2 headers are
    converted to NIfTI-1."""
    if isinstance(img, nib.Nifti2Image):
        hdr = nib.Nifti1Header.from_header(img.header)
    else:
        hdr = nib.Nifti1Header(binaryblock=head[:NIFTI1_HEADER_BYTES])
    # Scaling is applied to `data` and restored explicitly on save; keep it in the header too.
    hdr.set_slope_inter(float(img.dataobj.slope), float(img.dataobj.inter))
    return bytes(hdr.binaryblock)


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
    header: bytes | None = None,
    dtype: np.dtype | str | None = None,
    slope: float = 1.0,
    inter: float = 0.0,
    source: Path | None = None,
    source_bytes: int | None = None,
    what: str = "the input",
) -> Volume:
    """A Volume from voxels in real units (the stored dtype defaults to the array's own); `what`
    names the array in refusals."""
    stored = _stored_dtype(np.dtype(dtype) if dtype is not None else np.asanyarray(array).dtype, "the array")
    data = check_voxels(array, what)
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise VolumeError("the affine must be a finite 4x4 matrix")
    if header is None:
        header = synthetic_header(data.shape, stored, affine)
    if len(header) != NIFTI1_HEADER_BYTES:
        raise VolumeError(f"a NIfTI-1 header has {NIFTI1_HEADER_BYTES} bytes, not {len(header)}")
    return Volume(data, affine, bytes(header), stored, float(slope), float(inter), source, source_bytes)


#: How far a .nii.gz may inflate beyond its header, extensions and voxels (padding some writers
#: add) before its stream is taken for damage or a bomb rather than read on.
GZIP_SLACK_BYTES = 1 << 20
#: How far a .nii.gz whose header is refused is inflated to tell damage (a failed checksum) from
#: a header written wrong: the header gives no size to bound this check by.
DAMAGE_SCAN_BYTES = 64 << 20
_CHUNK = 1 << 20
_NIFTI2_HEADER_BYTES = 540
_FLOAT32_TINY = float(np.finfo(np.float32).tiny)
#: What nibabel and zlib raise on files that are not what they claim; each becomes a VolumeError.
_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, KeyError, IndexError, TypeError,
                OverflowError, struct.error, zlib.error)


@dataclass(frozen=True)
class _Layout:
    """Where a NIfTI file's voxels are and what they take, as its header declares them."""

    shape: tuple[int, ...]
    dtype: np.dtype  # in the file's byte order
    offset: int
    header_bytes: int

    @property
    def voxels(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.voxels * self.dtype.itemsize


def scaling_fits(slope: float, inter: float, vmin: float, vmax: float) -> bool:
    """Whether a volume of values in vmin .. vmax with this scaling survives float32 both ways: the
    scaling itself, the span of the range and its ends in stored units (what a .moec header must hold
    to be read back, codec.format.header.parse_meta)."""
    with np.errstate(all="ignore"):
        as32 = np.array([vmin, vmax, slope, inter], dtype=np.float32)
        span = as32[1] - as32[0]
        ends = (as32[:2] - as32[3]) / as32[2]
    return bool(np.isfinite(as32).all() and np.isfinite(span) and np.isfinite(ends).all()
                and abs(slope) >= _FLOAT32_TINY)


def _one_line(exc: BaseException) -> str:
    # nibabel's texts run over several lines
    return " ".join(str(exc).replace(" - ", "; ").split()).replace(" ;", ";") or type(exc).__name__


def _shape_text(shape: tuple[int, ...]) -> str:
    return " x ".join(str(n) for n in shape)


def _nifti_layout(path: Path, head: bytes) -> _Layout:
    """The layout a NIfTI-1 or NIfTI-2 header declares, or VolumeError when it declares nonsense."""
    unreadable = f"{path} is not a readable NIfTI file"
    # sizeof_hdr gives the byte order: nibabel would guess it from dim[0], the very field in question.
    sizes = {struct.unpack(order + "i", head[:4])[0]: order for order in "<>"} if len(head) >= 4 else {}
    if NIFTI1_HEADER_BYTES in sizes and len(head) >= NIFTI1_HEADER_BYTES:
        hdr: nib.Nifti1Header = nib.Nifti1Header(binaryblock=head[:NIFTI1_HEADER_BYTES],
                                                 endianness=sizes[NIFTI1_HEADER_BYTES], check=False)
    elif _NIFTI2_HEADER_BYTES in sizes and len(head) >= _NIFTI2_HEADER_BYTES:
        hdr = nib.Nifti2Header(binaryblock=head[:_NIFTI2_HEADER_BYTES], endianness=sizes[_NIFTI2_HEADER_BYTES],
                               check=False)
    else:
        raise VolumeError(f"{unreadable}: it does not begin with a NIfTI-1 or NIfTI-2 header")
    dim = [int(d) for d in hdr["dim"]]
    if not 1 <= dim[0] <= 7:
        raise VolumeError(f"{unreadable}: its header declares {dim[0]} dimensions (dim[0]); NIfTI allows 1 to 7")
    shape = tuple(dim[1 : dim[0] + 1])
    for axis, n in enumerate(shape):
        if n < 0:
            raise VolumeError(f"{unreadable}: its header declares a negative size ({n}) along axis {axis}")
    if 0 in shape:
        raise VolumeError(f"{path} is empty (shape {shape})")
    try:
        dtype = hdr.get_data_dtype()
    except (KeyError, ValueError, TypeError):
        code = int(hdr["datatype"])
        raise VolumeError(f"{unreadable}: its header declares the unknown datatype code {code}") from None
    _stored_dtype(dtype, str(path))
    vox_offset = float(hdr["vox_offset"])
    if not (math.isfinite(vox_offset) and 0 <= vox_offset):
        raise VolumeError(f"{unreadable}: its header places the voxels at byte {vox_offset:g} (vox_offset)")
    return _Layout(shape, np.dtype(dtype), int(vox_offset), len(hdr.binaryblock))


def _gzip_damage(path: Path, budget: int) -> str | None:
    """Why the gzip stream of `path` is damaged (a failed checksum or length, corrupt deflate data, an
    early end), found by inflating at most `budget` bytes of it; None where none was found."""
    produced = 0
    try:
        with gzip.open(path, "rb") as stream:
            while produced <= budget:
                chunk = stream.read(_CHUNK)
                if not chunk:
                    return None
                produced += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        return _gzip_why(exc)
    return None


def _gzip_why(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "its compressed data end early (the file is truncated)"
    return _one_line(exc)


def _refuse_if_damaged(path: Path) -> None:
    """VolumeError "PATH is damaged" when a .nii.gz fails its checksum within the scan's bound: a
    header refused as nonsense may be damage in transit, and then "damaged" tells the user what to do
    (fetch the file again) where the header's nonsense would not."""
    if _is_gzip_name(path) and (why := _gzip_damage(path, DAMAGE_SCAN_BYTES)) is not None:
        raise VolumeError(f"{path} is damaged: {why}") from None


def _is_gzip_name(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def _read_head(path: Path) -> bytes:
    """The first bytes of a NIfTI file, inflated for .nii.gz: enough for either header version."""
    if not _is_gzip_name(path):
        with open(path, "rb") as handle:
            return handle.read(_NIFTI2_HEADER_BYTES)
    with open(path, "rb") as handle:
        magic = handle.read(2)
    if magic != b"\x1f\x8b":
        raise VolumeError(f"{path} is not gzip-compressed although its name ends in .gz; rename it to .nii")
    try:
        with gzip.open(path, "rb") as stream:
            return stream.read(_NIFTI2_HEADER_BYTES)
    except (OSError, EOFError, zlib.error) as exc:
        raise VolumeError(f"{path} is damaged: {_gzip_why(exc)}") from None


def _inflate_voxels(path: Path, layout: _Layout) -> np.ndarray:
    """The stored voxels of a .nii.gz, read in one pass to the end of its gzip stream so its CRC and
    length are checked (nibabel stops at the last voxel and never reads them), and never inflated far
    beyond what the header declares."""
    try:
        data = np.empty(layout.nbytes, dtype=np.uint8)
    except (MemoryError, ValueError):
        raise ResourceLimitError(f"loading {path} ({_shape_text(layout.shape)} {layout.dtype.name}) needs "
                                 f"{size_text(layout.nbytes)} for its voxels alone, more than this machine "
                                 "can allocate") from None
    short = VolumeError(f"{path} is damaged: its header declares {layout.nbytes} bytes of voxels from byte "
                        f"{layout.offset}, its data end before them")
    filled = skipped = extra = 0
    try:
        with gzip.open(path, "rb") as stream:
            while skipped < layout.offset:
                chunk = stream.read(min(_CHUNK, layout.offset - skipped))
                if not chunk:
                    raise short
                skipped += len(chunk)
            while filled < layout.nbytes:
                chunk = stream.read(min(_CHUNK, layout.nbytes - filled))
                if not chunk:
                    raise short
                data[filled : filled + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
                filled += len(chunk)
            while chunk := stream.read(_CHUNK):
                extra += len(chunk)
                if extra > GZIP_SLACK_BYTES:
                    raise VolumeError(
                        f"{path} is damaged: it inflates to more than the {layout.offset + layout.nbytes} bytes "
                        f"its header declares ({_shape_text(layout.shape)} {layout.dtype.name} voxels)")
    except (OSError, EOFError, zlib.error) as exc:
        raise VolumeError(f"{path} is damaged: {_gzip_why(exc)}") from None
    return np.ndarray(layout.shape, dtype=layout.dtype, buffer=data, order="F")


def _check_scaling(path: Path, slope: float, inter: float) -> None:
    with np.errstate(all="ignore"):
        as32 = np.array([slope, inter], dtype=np.float32)
    if not (np.isfinite(as32).all() and abs(slope) >= _FLOAT32_TINY):
        raise VolumeError(f"{path}'s scaling (slope {slope:g}, intercept {inter:g}) is beyond what MoEC computes in "
                          f"(float32, whose smallest normal number is {_FLOAT32_TINY:.2g}); the header's scl_slope "
                          "is likely wrong")


def _load_npy(path: Path, limit: MemoryLimit, compressing: bool) -> Volume:
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
        raise VolumeError(f"{path} is not a readable NumPy array: {_one_line(exc)}") from None
    stored = _stored_dtype(dtype, str(path))
    shape = tuple(int(n) for n in shape)
    if any(n < 0 for n in shape):
        raise VolumeError(f"{path} is not a readable NumPy array: its header declares the shape {shape}")
    voxels = math.prod(shape)
    _check_memory(limit, compressing, voxels, stored, f"loading {path} ({_shape_text(shape)} {stored.name})")
    if size - start < voxels * stored.itemsize:
        raise VolumeError(f"{path} is truncated: its header declares {voxels * stored.itemsize} bytes of "
                          f"{_shape_text(shape)} {stored.name} values, the file holds {max(size - start, 0)}")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise VolumeError(f"{path} is not a readable NumPy array: {_one_line(exc)}") from None
    return from_array(array, dtype=stored, source=path, source_bytes=size, what=str(path))


def _check_memory(limit: MemoryLimit, compressing: bool, voxels: int, dtype: np.dtype, what: str,
                  beside: int = 0) -> None:
    estimate = compress_bytes if compressing else load_bytes
    limit.check(estimate(voxels, np.dtype(dtype).itemsize) + beside, what)


def load_volume(path: str | Path, series: str | None = None, *, limit: MemoryLimit | None = None,
                compressing: bool = False) -> Volume:
    """Load a .nii, .nii.gz or .npy file, or a DICOM series (its folder, or one of its files; `series`
    a SeriesInstanceUID where the folder holds several), as a Volume in real units, or raise
    VolumeError (DicomError for DICOM input).

    What the load (or, with `compressing`, the whole compression) would hold is estimated from the
    header before any voxel is read, and ResourceLimitError raised above `limit` (by default half
    the machine's memory)."""
    path = Path(path)
    limit = MemoryLimit.default() if limit is None else limit
    if not path.exists():
        raise VolumeError(f"no such file: {path}")
    name = path.name.lower()
    if path.is_dir() or not name.endswith((".nii", ".nii.gz", ".npy")) and _is_dicom(path):
        from codec.io.dicom import load_series

        return load_series(path, series, limit=limit, compressing=compressing)
    if series is not None:
        raise VolumeError(f"{path} is not DICOM; a series can only be chosen in a DICOM folder")
    if name.endswith(".npy"):
        return _load_npy(path, limit, compressing)
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        raise VolumeError(f"{path} is not a volume file: expected .nii, .nii.gz, .npy or a DICOM series")
    return _load_nifti(path, limit, compressing)


def _load_nifti(path: Path, limit: MemoryLimit, compressing: bool) -> Volume:
    size = path.stat().st_size
    head = _read_head(path)
    try:
        layout = _nifti_layout(path, head)
        if not _is_gzip_name(path) and layout.offset + layout.nbytes > size:
            raise VolumeError(f"{path} is truncated: its header declares {layout.nbytes} bytes of voxels from byte "
                              f"{layout.offset}, the file has {size} bytes")
        # nibabel holds the header's extensions (the bytes before the voxels) in memory too.
        extensions = max(layout.offset - layout.header_bytes, 0)
        described = f"{_shape_text(layout.shape)} {layout.dtype.name}"
        if extensions > _CHUNK:
            described += f" after {size_text(extensions)} of header extensions"
        _check_memory(limit, compressing, layout.voxels, layout.dtype, f"loading {path} ({described})",
                      beside=extensions)
    except (VolumeError, ResourceLimitError):
        _refuse_if_damaged(path)
        raise
    try:
        img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise VolumeError(f"{path} is not a NIfTI image")
        proxy = img.dataobj
        if (tuple(proxy.shape), int(proxy.offset), np.dtype(proxy.dtype)) != (layout.shape, layout.offset,
                                                                            layout.dtype):
            raise VolumeError(f"{path} is not a readable NIfTI file: its header is inconsistent (nibabel reads "
                              "its shape, datatype or voxel offset differently)")
        stored = _stored_dtype(img.get_data_dtype(), str(path))
        slope, inter = float(proxy.slope), float(proxy.inter)
        _check_scaling(path, slope, inter)
        header = _read_raw_header(head, img)
        affine = np.asarray(img.affine, dtype=np.float64)
    except VolumeError:
        _refuse_if_damaged(path)
        raise
    except _READ_ERRORS as exc:
        _refuse_if_damaged(path)
        raise VolumeError(f"{path} is not a readable NIfTI file: {_one_line(exc)}") from None
    if not np.isfinite(affine).all():
        _refuse_if_damaged(path)
        raise VolumeError(f"{path} has an affine with NaN or infinite entries: its voxels have no position")
    if _is_gzip_name(path):
        raw = _inflate_voxels(path, layout)
    else:
        try:
            raw = np.asanyarray(proxy.get_unscaled())
        except _READ_ERRORS as exc:
            raise VolumeError(f"{path} is not a readable NIfTI file: {_one_line(exc)}") from None
    data = check_voxels(raw, str(path))
    del raw
    if slope != 1.0 or inter != 0.0:
        varied = bool(data.min() != data.max())
        with np.errstate(over="ignore", invalid="ignore"):
            data = data * np.float32(slope)  # then in place: one float32 copy at a time, as the limit counts
            data += np.float32(inter)
        scaling = f"{path}'s scaling (slope {slope:g}, intercept {inter:g})"
        if not (np.isfinite(data).all() and _span_fits(data)
                and scaling_fits(slope, inter, float(data.min()), float(data.max()))):
            raise VolumeError(f"{scaling} takes its values beyond the range MoEC computes in (float32); the "
                              "header's scl_slope is likely wrong")
        if varied and data.min() == data.max():
            raise VolumeError(f"{scaling} makes all its distinct stored values one value in float32, the precision "
                              "MoEC computes in; the header's scl_slope is likely wrong")
    return Volume(data, affine, header, stored, slope, inter, path, size)


def _is_dicom(path: Path) -> bool:
    from codec.io.dicom import is_dicom_file

    return is_dicom_file(path)


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


def save_volume(volume: Volume, path: str | Path, descrip: str = "") -> None:
    """Write `volume` atomically as .nii / .nii.gz (original dtype, affine and header) or .npy."""
    path = Path(path)
    refuse_overwrite(path, volume.source)
    name = path.name.lower()
    stored = to_stored(volume.data, volume.dtype, volume.slope, volume.inter)
    if name.endswith(".npy"):
        atomic_write(path, lambda tmp: _save_npy(tmp, stored))
        return
    check_volume_name(path)
    save_nifti(volume, stored, path, descrip, slope=volume.slope, inter=volume.inter)


def _save_npy(path: Path, data: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a handle, not a name: np.save would append ".npy" to some names
        np.save(handle, data, allow_pickle=False)


def check_volume_name(path: str | Path, npy: bool = True) -> None:
    """VolumeError unless `path` names a format this module writes (before any work is done)."""
    name = Path(path).name.lower()
    kinds = (".nii", ".nii.gz", ".npy") if npy else (".nii", ".nii.gz")
    if not name.endswith(kinds):
        raise VolumeError(f"cannot write {path}: the name must end in {', '.join(kinds[:-1])} or {kinds[-1]}")


def save_nifti(
    like: Volume,
    stored: np.ndarray,
    path: str | Path,
    descrip: str,
    slope: float = 1.0,
    inter: float = 0.0,
    intent: str | None = None,
) -> None:
    """Write stored-dtype voxels with `like`'s affine and header, the scaling set explicitly."""
    path = Path(path)
    check_volume_name(path, npy=False)
    refuse_overwrite(path, like.source)
    hdr = output_header(like.header, tuple(stored.shape), stored.dtype, descrip)
    if intent is not None:
        hdr.set_intent(intent)
    img = nib.Nifti1Image(stored.reshape(hdr.get_data_shape(), order="A"), None, hdr)
    # Nifti1Image(..., header) would recompute scaling from the data; set it after construction.
    img.header.set_slope_inter(slope, inter)
    atomic_write(path, lambda tmp: nib.save(img, str(tmp)))


def save_labels(like: Volume, labels: np.ndarray, path: str | Path, descrip: str) -> None:
    """Write a uint8 label volume (expert k as label k+1) with `like`'s affine."""
    save_nifti(like, np.asarray(labels, dtype=np.uint8), path, descrip, intent="label")


def to_unit(values: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Real units -> [-1, 1], the scale the network is trained on (targets near unit scale)."""
    span = vmax - vmin
    if span <= 0:
        return np.zeros_like(values, dtype=np.float32)
    return ((np.asarray(values, dtype=np.float32) - np.float32(vmin)) * np.float32(2.0 / span) - 1.0).astype(np.float32)


def from_unit(unit: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """[-1, 1] -> real units, clipped to the original range (no voxel was ever outside it)."""
    unit = np.clip(np.asarray(unit, dtype=np.float32), -1.0, 1.0)
    return ((unit + 1.0) * np.float32(0.5 * (vmax - vmin)) + np.float32(vmin)).astype(np.float32)


def through_stored(data: np.ndarray, dtype: np.dtype, slope: float = 1.0, inter: float = 0.0) -> np.ndarray:
    """Real units as a file of this dtype would hold them: stored (rounded, clipped) and scaled back."""
    stored = to_stored(data, dtype, slope, inter)
    real = stored.astype(np.float32)
    if slope != 1.0 or inter != 0.0:
        real = real * np.float32(slope) + np.float32(inter)
    return real
