"""NIfTI-1 and NIfTI-2 volumes (.nii, .nii.gz) in, NIfTI-1 out.

Scaling (scl_slope / scl_inter) is applied on load so values are in real units (Hounsfield for
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
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from codec.errors import ResourceLimitError, VolumeError
from codec.io.files import atomic_write, check_suffix, refuse_overwrite
from codec.io.limits import MemoryLimit, size_text
from codec.io.reading import check_memory, one_line, shape_text
from codec.io.volume import (
    FLOAT32_TINY,
    NIFTI1_HEADER_BYTES,
    Volume,
    check_stored_dtype,
    check_voxels,
    output_header,
    scaling_fits,
    span_fits,
)

#: The names a NIfTI file is known by (nibabel chooses gzip from them).
SUFFIXES = (".nii", ".nii.gz")


def is_named(path: Path) -> bool:
    """Whether `path`'s name is a NIfTI file's."""
    return path.name.lower().endswith(SUFFIXES)


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


#: How far a .nii.gz may inflate beyond its header, extensions and voxels (padding some writers
#: add) before its stream is taken for damage or a bomb rather than read on.
GZIP_SLACK_BYTES = 1 << 20
#: How far a .nii.gz whose header is refused is inflated to tell damage (a failed checksum) from
#: a header written wrong: the header gives no size to bound this check by.
DAMAGE_SCAN_BYTES = 64 << 20
_CHUNK = 1 << 20
_NIFTI2_HEADER_BYTES = 540
#: What nibabel and zlib raise on files that are not what they claim; each becomes a VolumeError.
_READ_ERRORS = (
    ImageFileError,
    HeaderDataError,
    OSError,
    EOFError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    OverflowError,
    struct.error,
    zlib.error,
)


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


def _nifti_layout(path: Path, head: bytes) -> _Layout:
    """The layout a NIfTI-1 or NIfTI-2 header declares, or VolumeError when it declares nonsense."""
    unreadable = f"{path} is not a readable NIfTI file"
    # sizeof_hdr gives the byte order: nibabel would guess it from dim[0], the very field in question.
    sizes = {struct.unpack(order + "i", head[:4])[0]: order for order in "<>"} if len(head) >= 4 else {}
    if NIFTI1_HEADER_BYTES in sizes and len(head) >= NIFTI1_HEADER_BYTES:
        hdr: nib.Nifti1Header = nib.Nifti1Header(
            binaryblock=head[:NIFTI1_HEADER_BYTES], endianness=sizes[NIFTI1_HEADER_BYTES], check=False
        )
    elif _NIFTI2_HEADER_BYTES in sizes and len(head) >= _NIFTI2_HEADER_BYTES:
        hdr = nib.Nifti2Header(
            binaryblock=head[:_NIFTI2_HEADER_BYTES], endianness=sizes[_NIFTI2_HEADER_BYTES], check=False
        )
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
    check_stored_dtype(dtype, str(path))
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
    return one_line(exc)


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
        raise ResourceLimitError(
            f"loading {path} ({shape_text(layout.shape)} {layout.dtype.name}) needs "
            f"{size_text(layout.nbytes)} for its voxels alone, more than this machine "
            "can allocate"
        ) from None
    short = VolumeError(
        f"{path} is damaged: its header declares {layout.nbytes} bytes of voxels from byte "
        f"{layout.offset}, its data end before them"
    )
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
                        f"its header declares ({shape_text(layout.shape)} {layout.dtype.name} voxels)"
                    )
    except (OSError, EOFError, zlib.error) as exc:
        raise VolumeError(f"{path} is damaged: {_gzip_why(exc)}") from None
    return np.ndarray(layout.shape, dtype=layout.dtype, buffer=data, order="F")


def _check_scaling(path: Path, slope: float, inter: float) -> None:
    with np.errstate(all="ignore"):
        as32 = np.array([slope, inter], dtype=np.float32)
    if not (np.isfinite(as32).all() and abs(slope) >= FLOAT32_TINY):
        raise VolumeError(
            f"{path}'s scaling (slope {slope:g}, intercept {inter:g}) is beyond what MoEC computes in "
            f"(float32, whose smallest normal number is {FLOAT32_TINY:.2g}); the header's scl_slope "
            "is likely wrong"
        )


def load_nifti(path: Path, limit: MemoryLimit, compressing: bool) -> Volume:
    """A .nii or .nii.gz as a Volume in real units, or VolumeError (ResourceLimitError above `limit`)."""
    size = path.stat().st_size
    head = _read_head(path)
    try:
        layout = _nifti_layout(path, head)
        if not _is_gzip_name(path) and layout.offset + layout.nbytes > size:
            raise VolumeError(
                f"{path} is truncated: its header declares {layout.nbytes} bytes of voxels from byte "
                f"{layout.offset}, the file has {size} bytes"
            )
        # nibabel holds the header's extensions (the bytes before the voxels) in memory too.
        extensions = max(layout.offset - layout.header_bytes, 0)
        described = f"{shape_text(layout.shape)} {layout.dtype.name}"
        if extensions > _CHUNK:
            described += f" after {size_text(extensions)} of header extensions"
        check_memory(
            limit, compressing, layout.voxels, layout.dtype, f"loading {path} ({described})", beside=extensions
        )
    except (VolumeError, ResourceLimitError):
        _refuse_if_damaged(path)
        raise
    try:
        img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise VolumeError(f"{path} is not a NIfTI image")
        proxy = img.dataobj
        if (tuple(proxy.shape), int(proxy.offset), np.dtype(proxy.dtype)) != (
            layout.shape,
            layout.offset,
            layout.dtype,
        ):
            raise VolumeError(
                f"{path} is not a readable NIfTI file: its header is inconsistent (nibabel reads "
                "its shape, datatype or voxel offset differently)"
            )
        stored = check_stored_dtype(img.get_data_dtype(), str(path))
        slope, inter = float(proxy.slope), float(proxy.inter)
        _check_scaling(path, slope, inter)
        header = _read_raw_header(head, img)
        affine = np.asarray(img.affine, dtype=np.float64)
    except VolumeError:
        _refuse_if_damaged(path)
        raise
    except _READ_ERRORS as exc:
        _refuse_if_damaged(path)
        raise VolumeError(f"{path} is not a readable NIfTI file: {one_line(exc)}") from None
    if not np.isfinite(affine).all():
        _refuse_if_damaged(path)
        raise VolumeError(f"{path} has an affine with NaN or infinite entries: its voxels have no position")
    if _is_gzip_name(path):
        raw = _inflate_voxels(path, layout)
    else:
        try:
            raw = np.asanyarray(proxy.get_unscaled())
        except _READ_ERRORS as exc:
            raise VolumeError(f"{path} is not a readable NIfTI file: {one_line(exc)}") from None
    data = check_voxels(raw, str(path))
    del raw
    if slope != 1.0 or inter != 0.0:
        varied = bool(data.min() != data.max())
        with np.errstate(over="ignore", invalid="ignore"):
            data = data * np.float32(slope)  # then in place: one float32 copy at a time, as the limit counts
            data += np.float32(inter)
        scaling = f"{path}'s scaling (slope {slope:g}, intercept {inter:g})"
        if not (
            np.isfinite(data).all()
            and span_fits(data)
            and scaling_fits(slope, inter, float(data.min()), float(data.max()))
        ):
            raise VolumeError(
                f"{scaling} takes its values beyond the range MoEC computes in (float32); the "
                "header's scl_slope is likely wrong"
            )
        if varied and data.min() == data.max():
            raise VolumeError(
                f"{scaling} makes all its distinct stored values one value in float32, the precision "
                "MoEC computes in; the header's scl_slope is likely wrong"
            )
    return Volume(
        data=data,
        affine=affine,
        header=header,
        stored_dtype=stored,
        slope=slope,
        inter=inter,
        source=path,
        source_bytes=size,
    )


def save_nifti(
    like: Volume,
    stored: np.ndarray,
    path: str | Path,
    descrip: str,
    *,
    slope: float = 1.0,
    inter: float = 0.0,
    intent: str | None = None,
) -> None:
    """Write stored-dtype voxels with `like`'s affine and header, the scaling set explicitly."""
    path = Path(path)
    check_suffix(path, SUFFIXES)
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
