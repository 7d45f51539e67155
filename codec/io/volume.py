"""Volume: voxels in real units plus everything needed to write them back as the file they came from.

The codec always works in the file's own voxel order with its original affine (docs/design.md, "Data flow").
NIfTI scaling (scl_slope / scl_inter) is applied on load so values are in real units (Hounsfield for
CT), and undone by hand on save: nibabel would otherwise recompute the scaling from float data
(docs/design.md, "Traps").
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError

from codec.errors import VolumeError
from codec.io.files import atomic_write, refuse_overwrite

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
    if array.ndim < 3 or (array.ndim == 3 and array.shape[2] == 1):
        raise VolumeError(f"{what} is {min(array.ndim, 2)}D (shape {array.shape}); MoEC compresses 3D and 4D volumes")
    if array.ndim > 4:
        raise VolumeError(f"{what} is {array.ndim}D (shape {array.shape}); MoEC compresses 3D and 4D volumes")
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


def _read_raw_header(path: Path, img: nib.spatialimages.SpatialImage) -> bytes:
    """The file's own 348-byte NIfTI-1 header; NIfTI-2 headers are converted to NIfTI-1."""
    if isinstance(img, nib.Nifti2Image):
        hdr = nib.Nifti1Header.from_header(img.header)
    else:
        with nib.openers.Opener(str(path)) as handle:
            raw = handle.read(NIFTI1_HEADER_BYTES)
        hdr = nib.Nifti1Header(binaryblock=raw)
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
) -> Volume:
    """A Volume from voxels in real units (the stored dtype defaults to the array's own)."""
    stored = _stored_dtype(np.dtype(dtype) if dtype is not None else np.asanyarray(array).dtype, "the array")
    data = check_voxels(array)
    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all():
        raise VolumeError("the affine must be a finite 4x4 matrix")
    if header is None:
        header = synthetic_header(data.shape, stored, affine)
    if len(header) != NIFTI1_HEADER_BYTES:
        raise VolumeError(f"a NIfTI-1 header has {NIFTI1_HEADER_BYTES} bytes, not {len(header)}")
    return Volume(data, affine, bytes(header), stored, float(slope), float(inter), source, source_bytes)


def load_volume(path: str | Path, series: str | None = None) -> Volume:
    """Load a .nii, .nii.gz or .npy file, or a DICOM series (its folder, or one of its files; `series`
    a SeriesInstanceUID where the folder holds several), as a Volume in real units, or raise
    VolumeError (DicomError for DICOM input)."""
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"no such file: {path}")
    name = path.name.lower()
    if path.is_dir() or not name.endswith((".nii", ".nii.gz", ".npy")) and _is_dicom(path):
        from codec.io.dicom import load_series

        return load_series(path, series)
    if series is not None:
        raise VolumeError(f"{path} is not DICOM; a series can only be chosen in a DICOM folder")
    size = path.stat().st_size
    if name.endswith(".npy"):
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise VolumeError(f"{path} is not a readable NumPy array: {exc}") from None
        stored = _stored_dtype(array.dtype, str(path))
        return from_array(array, dtype=stored, source=path, source_bytes=size)
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        raise VolumeError(f"{path} is not a volume file: expected .nii, .nii.gz, .npy or a DICOM series")
    try:
        img = nib.load(str(path))
        if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
            raise VolumeError(f"{path} is not a NIfTI image")
        stored = _stored_dtype(img.get_data_dtype(), str(path))
        raw = np.asanyarray(img.dataobj.get_unscaled())
        header = _read_raw_header(path, img)
        slope, inter = float(img.dataobj.slope), float(img.dataobj.inter)
    except VolumeError:
        raise
    except (ImageFileError, OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile) as exc:
        # nibabel's texts run over several lines
        why = " ".join(str(exc).replace(" - ", "; ").split()).replace(" ;", ";")
        raise VolumeError(f"{path} is not a readable NIfTI file: {why}") from None
    if 0 in img.shape:
        raise VolumeError(f"{path} is empty (shape {img.shape})")
    if not np.isfinite(img.affine).all():
        raise VolumeError(f"{path} has an affine with NaN or infinite entries: its voxels have no position")
    data = check_voxels(raw, str(path))
    if slope != 1.0 or inter != 0.0:
        with np.errstate(over="ignore", invalid="ignore"):
            data = data * np.float32(slope) + np.float32(inter)
        if not (np.isfinite(data).all() and _span_fits(data)):
            raise VolumeError(f"{path}'s scaling (slope {slope:g}, intercept {inter:g}) takes its values beyond the "
                              "range MoEC computes in (float32); the header's scl_slope is likely wrong")
    return Volume(data, np.asarray(img.affine, dtype=np.float64), header, stored, slope, inter, path, size)


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


def _output_header(volume: Volume, shape: tuple[int, ...], dtype: np.dtype, descrip: str) -> nib.Nifti1Header:
    hdr = nifti_header(volume.header).copy()
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
    hdr = _output_header(like, tuple(stored.shape), stored.dtype, descrip)
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
