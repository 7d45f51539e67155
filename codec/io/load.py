"""Load and save a volume in whichever format its path names: each format (codec.io.dicom,
codec.io.nifti, codec.io.npy) is asked in turn whether the path is one of its files, as nibabel's
loadsave asks its image classes; the first that claims it reads it.

DICOM is asked first, by content: a folder, or a file with DICOM's magic whose name no other format
claims (a .nii that happens to hold DICOM's magic at byte 128 stays a NIfTI file). The others go by
their names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from codec.errors import VolumeError
from codec.io import dicom, nifti, npy
from codec.io.files import check_suffix, refuse_overwrite
from codec.io.limits import MemoryLimit
from codec.io.volume import Volume, to_stored


@dataclass(frozen=True)
class _Format:
    """A format the loader asks: whether a path is one of its files, and how to read it."""

    claims: Callable[[Path], bool]
    read: Callable[[Path, str | None, MemoryLimit, bool], Volume]
    #: Whether a path of this format may hold several series, one of which a caller chooses.
    has_series: bool = False


def _named(path: Path) -> bool:
    """Whether a format known by its names claims `path`."""
    return nifti.is_named(path) or npy.is_named(path)


def _claims_dicom(path: Path) -> bool:
    return path.is_dir() or not _named(path) and dicom.is_dicom_file(path)


def _read_dicom(path: Path, series: str | None, limit: MemoryLimit, compressing: bool) -> Volume:
    return dicom.load_series(path, series, limit=limit, compressing=compressing)


#: The formats in the order they are asked.
FORMATS = (
    _Format(_claims_dicom, _read_dicom, has_series=True),
    _Format(nifti.is_named, lambda path, _, limit, compressing: nifti.load_nifti(path, limit, compressing)),
    _Format(npy.is_named, lambda path, _, limit, compressing: npy.load_npy(path, limit, compressing)),
)


def load_volume(
    path: str | Path, series: str | None = None, *, limit: MemoryLimit | None = None, compressing: bool = False
) -> Volume:
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
    found = next((fmt for fmt in FORMATS if fmt.claims(path)), None)
    if series is not None and (found is None or not found.has_series):
        raise VolumeError(f"{path} is not DICOM; a series can only be chosen in a DICOM folder")
    if found is None:
        raise VolumeError(f"{path} is not a volume file: expected .nii, .nii.gz, .npy or a DICOM series")
    return found.read(path, series, limit, compressing)


#: The names save_volume writes under.
_WRITTEN = nifti.SUFFIXES + npy.SUFFIXES


def check_volume_name(path: str | Path, npy: bool = True) -> None:
    """VolumeError unless `path` names a file format save_volume writes (before any work is done);
    without `npy`, a NIfTI file's name only."""
    check_suffix(path, _WRITTEN if npy else nifti.SUFFIXES)


def save_volume(volume: Volume, path: str | Path, descrip: str = "") -> None:
    """Write `volume` atomically as .nii / .nii.gz (original dtype, affine and header) or .npy."""
    path = Path(path)
    refuse_overwrite(path, volume.source)
    stored = to_stored(volume.data, volume.stored_dtype, volume.slope, volume.inter)
    if npy.is_named(path):
        npy.save_npy(path, stored)
        return
    check_volume_name(path)
    nifti.save_nifti(volume, stored, path, descrip, slope=volume.slope, inter=volume.inter)
