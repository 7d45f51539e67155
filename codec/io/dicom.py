"""DICOM series in and out: a folder of slices <-> a Volume in real units with its RAS affine.

Voxel order. A series becomes an array indexed (column, row, slice): the first axis runs along a
row of the image (DICOM's row direction, ImageOrientationPatient[:3]), the second down its rows
(ImageOrientationPatient[3:]), the third through the slices sorted by their position along the
slice normal (row direction x column direction), ascending. That is the DICOM's own order, the one
ITK-based readers (SimpleITK, 3D Slicer) give, and the NIfTI `moec decompress` writes from such a
file agrees with it voxel for voxel. dcm2niix flips the rows by default (its `-y n` keeps them):
every voxel is at the same place in the world, but `moec eval` compares voxel by voxel, so measure
against the DICOM folder itself or a NIfTI in this order.

Geometry. DICOM is LPS, NIfTI RAS: the affine is built in LPS from ImagePositionPatient,
ImageOrientationPatient and PixelSpacing, and its first two rows are negated. The slice axis is the
step between the first and the last position over the slice count, never SliceThickness (which is
the slab's width, not the spacing, and is absent or wrong often enough); a tilted gantry keeps its
shear in the affine, nothing is resampled.

Values. Rescale slope and intercept give real units (HU for CT). When every slice shares them, the
Volume keeps the pixels' own dtype and that scaling, exactly like a NIfTI with scl_slope/scl_inter;
when slices differ (some PET and MR exports), the stored dtype is the narrowest that holds the real
values (int16, int32, else float32) without scaling.

Identity. A Volume read here carries a DicomIdentity (patient, study, series). The .moec header
(the `dicom` entry, codec.format.dicom_entry) keeps all of it only when asked (--keep-identity), so that
`moec decompress --dicom` files the reconstruction as a new, derived, lossy series under the same
patient and study; by default it keeps DicomIdentity.deidentified(), and the derived series goes
under a pseudonymous patient and a new study (derived_identity).

Hostile input. A header is not trusted: a file whose size elements cannot describe an image is
listed as unreadable, never raised for; slices without a SeriesInstanceUID form series under a
synthetic UID; names made from header values go through codec.io.files.safe_name; a series'
memory is estimated from its headers and checked (codec.io.limits) before any pixel is decoded.

pydicom is imported by the functions that need it, so that reading a .moec header never pays for it.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from codec import __version__
from codec.errors import DicomError, OutputError, SeriesChoiceError
from codec.io.dicom_identity import KEYWORDS, PATIENT_FIELDS, DicomIdentity, valid_value
from codec.io.files import check_writable_folder, new_folder_mode, parent_of, safe_name
from codec.io.limits import MemoryLimit, compress_bytes, load_bytes
from codec.io.volume import SUPPORTED_DTYPES, Volume, check_voxels, from_array, to_stored

#: Every file of a DICOM Part 10 file set has "DICM" after a 128-byte preamble.
_MAGIC_AT, _MAGIC = 128, b"DICM"
#: Direction cosines and spacings of one series agree to this (scanners print 6 decimals or more).
_GEOMETRY_TOLERANCE = 1e-4
#: The gaps between consecutive slices may differ by this share of their mean (rounding of the
#: printed positions), and not more: one affine cannot hold a missing slice or a variable spacing.
_SPACING_TOLERANCE = 0.01
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


# --- identity ---------------------------------------------------------------------------------------


def identity_of(ds: Any) -> DicomIdentity:
    """The identity of a pydicom dataset; a value its VR does not allow (or that pydicom cannot even
    convert) is dropped, not refused, so that a real archive's small liberties never stop a
    compression. The study and series UIDs may be missing: only `decompress --dicom` needs a study,
    and it makes a new one where there is none."""
    values = {}
    for name, (keyword, vr) in KEYWORDS.items():
        try:
            raw = ds.get(keyword)
            text = "" if raw is None else str(raw).strip()
        except Exception:  # pydicom converts values when they are read, and fails in many ways
            continue
        if vr == "CS":
            text = text.upper()
        if text and valid_value(text, vr):
            values[name] = text
    return DicomIdentity(**values)


# --- finding series ---------------------------------------------------------------------------------

#: Rows and Columns are 16-bit (US): a larger or non-positive value is a damaged or hostile header.
_MAX_SIDE = 65535
#: A folder's name may be longer than a name made from a header's values; both stay one component.
_FOLDER_NAME_LENGTH = 128


def is_dicom_file(path: Path) -> bool:
    """Whether `path` is a DICOM Part 10 file (preamble and "DICM"), whatever its name."""
    try:
        with open(path, "rb") as handle:
            handle.seek(_MAGIC_AT)
            return handle.read(len(_MAGIC)) == _MAGIC
    except OSError:
        return False


@dataclass(frozen=True)
class SeriesInfo:
    """One series of a folder, as its headers describe it (no pixels read). `uid` is its
    SeriesInstanceUID, or a synthetic one (synthetic_uid) where its slices have none."""

    uid: str
    folder: Path
    files: tuple[Path, ...]
    modality: str
    number: str  # a valid IS value, else ""
    description: str  # one printable line
    rows: int
    columns: int
    bits_allocated: int = 16  # the first slice's, when it is one DICOM allows; what a load estimate uses

    @property
    def voxels(self) -> int:
        return self.rows * self.columns * len(self.files)

    @property
    def itemsize(self) -> int:
        """Bytes per stored value the pixels will be decoded to (pydicom unpacks 1-bit data to bytes)."""
        return max(1, self.bits_allocated // 8)

    def describe(self) -> str:
        """One line: what a user needs to tell the series of a folder apart and choose one."""
        number = f"series {self.number}" if self.number else "no series number"
        text = f' "{self.description}"' if self.description else ""
        return f"{self.uid}  {self.modality or '??'}  {number}  {self.columns} x {self.rows} x {len(self.files)}{text}"


@dataclass(frozen=True)
class FolderScan:
    """What a folder holds: its DICOM series, the DICOM files that cannot be read, the rest."""

    series: tuple[SeriesInfo, ...]
    #: DICOM files (by their magic) that pydicom cannot parse or whose header cannot describe an
    #: image (an empty Rows, a size out of range), each with a one-line reason.
    unreadable: tuple[tuple[Path, str], ...]
    other_files: int  # files that are not DICOM, or DICOM without an image (DICOMDIR, reports)


class _Invalid(Exception):
    """A header value that makes a file unusable; the message is the reason, in words."""


@dataclass(frozen=True)
class _Header:
    """What scan_folder needs of one file's header, every value checked."""

    uid: str
    synthetic: bool  # no valid SeriesInstanceUID: grouped by folder and series number
    modality: str
    number: str
    description: str
    rows: int
    columns: int
    bits_allocated: int


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _side(ds: Any, keyword: str) -> int:
    """Rows or Columns, checked: an image side of 1 to _MAX_SIDE, else _Invalid naming the element."""
    if keyword not in ds:
        raise _Invalid(f"{keyword} is missing")
    value = ds.get(keyword)
    if value is None or (isinstance(value, (str, bytes)) and not value.strip()):
        raise _Invalid(f"{keyword} is empty")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise _Invalid(f"{keyword} is not one whole number ({_shown(value)})")
    if not 1 <= value <= _MAX_SIDE:
        raise _Invalid(f"{keyword} is {int(value)}; an image has 1 to {_MAX_SIDE} {keyword.lower()}")
    return int(value)


def _text(ds: Any, keyword: str) -> str:
    """An element as one printable line ("" where absent or unconvertible): values from a header
    are shown in terminals and listings, never with control characters."""
    try:
        raw = ds.get(keyword)
        text = "" if raw is None else str(raw)
    except Exception:  # pydicom converts values when they are read, and fails in many ways
        return ""
    return " ".join("".join(ch if ch >= " " and ch != "\x7f" else " " for ch in text).split())[:64]


def _bits_allocated(ds: Any) -> int:
    try:
        bits = ds.get("BitsAllocated")
    except Exception:
        return 16
    return int(bits) if isinstance(bits, int) and bits in (1, 8, 16, 32, 64) else 16


def _folder_name(folder: Path) -> str:
    """The folder's own name, also for "." or a path ending in ".." (absolute, not resolved: a link
    keeps the name the user gave it)."""
    return Path(os.path.abspath(folder)).name


def synthetic_uid(folder: Path, number: str, found: str = "") -> str:
    """The UID that names a group of slices without a valid SeriesInstanceUID: derived from the
    folder's name, the series number and whatever invalid UID the slices hold, so the same folder
    always gives the same UID (for --series, a batch manifest, a later load). A UUID-derived UID
    (root 2.25, PS3.5 B.2) of 128 bits: at most 44 characters, a valid DICOM UI."""
    seed = "\0".join((_folder_name(folder), number, found)).encode("utf-8", "backslashreplace")
    return "2.25." + str(int.from_bytes(hashlib.sha256(seed).digest()[:16], "big"))


def _header_of(ds: Any, folder: Path) -> _Header:
    """One image file's header, checked; _Invalid (or pydicom's own exception) when it describes no image."""
    rows, columns = _side(ds, "Rows"), _side(ds, "Columns")
    number = _text(ds, "SeriesNumber")
    found = _text(ds, "SeriesInstanceUID")
    synthetic = not valid_value(found, "UI")
    uid = synthetic_uid(folder, number, found) if synthetic else found
    modality = _text(ds, "Modality").upper()
    return _Header(
        uid,
        synthetic,
        modality if valid_value(modality, "CS") else "",
        number if valid_value(number, "IS") else "",
        _text(ds, "SeriesDescription"),
        rows,
        columns,
        _bits_allocated(ds),
    )


def scan_folder(folder: Path) -> FolderScan:
    """The DICOM series among the files of `folder` (not its subfolders), grouped by
    SeriesInstanceUID; slices without a valid one are grouped by series number under a synthetic
    UID, with a warning. Never raises for one bad file: it is listed in `unreadable` with its reason."""
    import pydicom

    groups: dict[str, list[tuple[Path, _Header]]] = {}
    unreadable: list[tuple[Path, str]] = []
    other = 0
    try:
        entries = sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError as exc:
        raise DicomError(f"cannot list the folder {folder}: {exc.strerror or exc}") from None
    for path in entries:
        if not is_dicom_file(path):
            other += 1
            continue
        try:
            with warnings.catch_warnings():  # a damaged file is reported in its row, not as warnings
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                if "Rows" not in ds and "Columns" not in ds:
                    other += 1  # no image: a DICOMDIR, a structured report, a presentation state
                    continue
                header = _header_of(ds, Path(folder))
        except _Invalid as exc:
            unreadable.append((path, str(exc)))
            continue
        except Exception as exc:  # pydicom reports a damaged file with many exception types
            unreadable.append((path, _why(exc)))
            continue
        groups.setdefault(header.uid, []).append((path, header))
    series = []
    for uid, members in groups.items():
        first = members[0][1]
        series.append(
            SeriesInfo(
                uid,
                Path(folder),
                tuple(p for p, _ in members),
                first.modality,
                first.number,
                first.description,
                first.rows,
                first.columns,
                first.bits_allocated,
            )
        )
    series.sort(key=lambda s: (_number_key(s.number), s.uid))
    anonymous = sum(header.synthetic for members in groups.values() for _, header in members)
    if anonymous:
        slices = "1 slice" if anonymous == 1 else f"{anonymous} slices"
        warnings.warn(
            f"{slices} in {folder} {'has' if anonymous == 1 else 'have'} no valid SeriesInstanceUID; "
            "grouped by folder and series number",
            stacklevel=2,
        )
    return FolderScan(tuple(series), tuple(unreadable), other)


def _number_key(number: str) -> tuple[int, int]:
    try:
        return 0, int(number)
    except ValueError:
        return 1, 0


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def series_uid_of(path: Path) -> str:
    """The UID that names the series of the DICOM file `path` in its folder (its SeriesInstanceUID,
    else the synthetic one scan_folder gives its group); DicomError naming the file when it is no
    readable DICOM image."""
    import pydicom

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _header_of(pydicom.dcmread(path, stop_before_pixels=True), path.parent).uid
    except Exception as exc:  # pydicom reports a damaged file with many exception types
        raise DicomError(f"{path} is not a readable DICOM image: {_why(exc)}") from None


def choose_series(folder: Path, series: str | None = None) -> tuple[SeriesInfo, FolderScan]:
    """The series of `folder` to read: the one asked for, or the only one; DicomError otherwise."""
    scan = scan_folder(folder)
    if not scan.series:
        if scan.unreadable:
            path, why = scan.unreadable[0]
            raise DicomError(f"{path} is not a readable DICOM file: {why}")
        what = f"{scan.other_files} file(s), none of them a DICOM image" if scan.other_files else "no files"
        raise DicomError(f"the folder {folder} holds no DICOM series ({what})")
    if series is not None:
        for info in scan.series:
            if info.uid == series:
                return info, scan
        held = ", ".join(info.uid for info in scan.series)
        shown = series if len(series) <= 64 else series[:61] + "..."
        raise DicomError(f"{folder} holds no series {shown} (it holds {held})")
    if len(scan.series) > 1:
        raise SeriesChoiceError(
            f"{folder} holds {len(scan.series)} DICOM series; choose one with --series UID", scan.series
        )
    return scan.series[0], scan


def series_stem(info: SeriesInfo, siblings: tuple[SeriesInfo, ...]) -> str:
    """A file-name stem for a series: the folder's name when it is the folder's only series, else
    the series number and description (the UID's tail where the number does not tell them apart).
    Always one safe path component: a header's values are not the user's."""
    if len(siblings) <= 1:
        return _component(_folder_name(info.folder), _FOLDER_NAME_LENGTH, "series")
    numbers = [s.number for s in siblings]
    if info.number and numbers.count(info.number) == 1:
        description = _component(info.description, 32, "")
        return _component(f"S{info.number}", 17, "S") + (f"_{description}" if description else "")
    return "series_" + _component(info.uid.rsplit(".", 1)[-1][-16:], 16, "0")


def _component(text: str, max_length: int, fallback: str) -> str:
    """codec.io.files.safe_name, with runs of dots made one '_' too: such a name is one component
    either way, but one that reads like '..' invites a mistake wherever it is joined to a path."""
    return safe_name(re.sub(r"\.{2,}", "_", text), max_length=max_length, fallback=fallback)


# --- reading ----------------------------------------------------------------------------------------


def load_series(
    path: str | os.PathLike, series: str | None = None, *, limit: MemoryLimit | None = None, compressing: bool = False
) -> Volume:
    """A DICOM series as a Volume: `path` is its folder, or one of its files (its series is then
    the one read unless `series` names another). DicomError on anything that is not one volume,
    ResourceLimitError (before any pixel is read) when it would need more memory than `limit`
    (the machine's default limit where None) allows for a load, or a compression if `compressing`."""
    path = Path(path)
    if path.is_file():
        if series is None:
            series = series_uid_of(path)
        path = path.parent
    info, _ = choose_series(path, series)
    return read_series(info, limit=limit, compressing=compressing)


def read_series(info: SeriesInfo, *, limit: MemoryLimit | None = None, compressing: bool = False) -> Volume:
    """The Volume of a series found by `scan_folder` (DicomError when its slices are not one volume).
    The memory it needs is estimated from the headers and checked against `limit` first."""
    need = (compress_bytes if compressing else load_bytes)(info.voxels, info.itemsize)
    what = "compressing" if compressing else "loading"
    (limit if limit is not None else MemoryLimit.default()).check(
        need, f"{what} the DICOM series {info.uid} in {info.folder} ({info.columns} x {info.rows} x {len(info.files)})"
    )
    return _assemble(info, [_read_slice(f, (info.rows, info.columns)) for f in info.files])


@dataclass(frozen=True)
class _Slice:
    path: Path
    pixels: np.ndarray  # (rows, columns), stored values
    position: np.ndarray  # LPS mm
    orientation: np.ndarray  # 6 direction cosines
    spacing: tuple[float, float]  # (between rows, between columns)
    slope: float
    inter: float
    identity: DicomIdentity  # not the dataset: it would keep the slice's pixel bytes alive a second time


def _numbers(ds: Any, keyword: str, count: int, path: Path) -> np.ndarray:
    value = ds.get(keyword)
    try:
        # A string is an invalid value pydicom could not split: its characters are no coordinates.
        numbers = (
            np.array([float(v) for v in value], dtype=np.float64)
            if value is not None and not isinstance(value, (str, bytes))
            else None
        )
    except (TypeError, ValueError, OverflowError):
        numbers = None
    if numbers is None or numbers.shape != (count,) or not np.isfinite(numbers).all():
        raise DicomError(
            f"{path} has no valid {keyword}: the slices cannot be placed in space "
            "(MoEC needs ImagePositionPatient, ImageOrientationPatient and PixelSpacing)"
        )
    return numbers


def _scaling(ds: Any, keyword: str, default: float, path: Path) -> float:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or (keyword == "RescaleSlope" and number == 0):
        raise DicomError(f"{path} has an invalid {keyword} ({value!r})")
    return number


def _read_slice(path: Path, shape: tuple[int, int] | None = None) -> _Slice:
    """One slice, checked; DicomError naming the file on anything else (pydicom raises many
    exception types for a damaged or hostile file). `shape` (rows, columns) is the series' size,
    which its memory estimate assumed: a slice that declares another is refused before decoding."""
    try:
        with warnings.catch_warnings():  # pydicom warns of each odd value it reads: the error, if any, says enough
            warnings.simplefilter("ignore")
            return _read_checked_slice(path, shape)
    except DicomError:
        raise
    except Exception as exc:
        raise DicomError(f"{path} is not a readable DICOM image: {_why(exc)}") from None


def _read_checked_slice(path: Path, shape: tuple[int, int] | None) -> _Slice:
    import pydicom
    from pydicom.pixels import get_decoder

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise DicomError(f"{path} is not a readable DICOM file: {_why(exc)}") from None
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise DicomError(
            f"{path} is a multi-frame (enhanced) DICOM image; MoEC reads series of single-frame "
            "slices (convert it first, for example with dcm2niix)"
        )
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DicomError(
            f"{path} is a colour image ({ds.get('PhotometricInterpretation', '?')}); MoEC compresses grey-level volumes"
        )
    if "PixelData" not in ds:
        raise DicomError(f"{path} has no pixel data")
    try:
        size = (_side(ds, "Rows"), _side(ds, "Columns"))
    except _Invalid as exc:
        raise DicomError(f"{path} is not a readable DICOM image: {exc}") from None
    if shape is not None and size != shape:
        raise DicomError(
            f"{path} is {size[1]} x {size[0]} where its series' first slice is {shape[1]} x {shape[0]}: "
            "the series mixes image sizes; a volume needs one size for every slice"
        )
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            decoder = None
        if decoder is None or not decoder.is_available:
            # pydicom names each plugin that would decode it as "name - requires ...": the names suffice.
            plugins = [d.split(" - ")[0] for d in decoder.missing_dependencies] if decoder is not None else []
            needs = f"pydicom needs one of: {', '.join(plugins)}" if plugins else "pydicom has no decoder for it"
            raise DicomError(
                f"{path} is stored as {syntax.name} ({syntax}), which this installation cannot "
                f"decode ({needs}); install one, or decompress the series first (gdcmconv --raw)"
            )
    try:
        pixels = np.asarray(ds.pixel_array)
    except Exception as exc:
        raise DicomError(f"cannot decode the pixels of {path}: {_why(exc)}") from None
    if pixels.ndim != 2:
        raise DicomError(f"{path} holds {pixels.ndim}D pixel data, not one image")
    orientation = _numbers(ds, "ImageOrientationPatient", 6, path)
    rows, columns = orientation[:3], orientation[3:]
    if not (
        abs(np.linalg.norm(rows) - 1) < 1e-3
        and abs(np.linalg.norm(columns) - 1) < 1e-3
        and abs(float(rows @ columns)) < 1e-3
    ):
        raise DicomError(f"{path}'s ImageOrientationPatient is not two perpendicular unit vectors")
    spacing = _numbers(ds, "PixelSpacing", 2, path)
    if not (spacing > 0).all():
        raise DicomError(f"{path} has a PixelSpacing that is not positive")
    return _Slice(
        path,
        pixels,
        _numbers(ds, "ImagePositionPatient", 3, path),
        orientation,
        (float(spacing[0]), float(spacing[1])),
        _scaling(ds, "RescaleSlope", 1.0, path),
        _scaling(ds, "RescaleIntercept", 0.0, path),
        identity_of(ds),
    )


def _assemble(info: SeriesInfo, slices: list[_Slice]) -> Volume:
    where = f"the series {info.uid} in {info.folder}"
    if len(slices) < 2:
        raise DicomError(f"{where} has one slice; MoEC compresses 3D volumes")
    sizes = sorted({s.pixels.shape for s in slices})
    if len(sizes) > 1:
        shown = ", ".join(f"{c} x {r}" for r, c in sizes[:4])
        raise DicomError(f"{where} mixes image sizes ({shown}); a volume needs one size for every slice")
    dtypes = {s.pixels.dtype for s in slices}
    if len(dtypes) > 1:
        raise DicomError(f"{where} mixes pixel types ({', '.join(sorted(d.name for d in dtypes))})")
    first = slices[0]
    for s in slices[1:]:
        if np.abs(s.orientation - first.orientation).max() > _GEOMETRY_TOLERANCE:
            raise DicomError(
                f"{where} mixes slice orientations ({s.path.name} and {first.path.name}); "
                "a volume needs one orientation"
            )
        if max(abs(a - b) for a, b in zip(s.spacing, first.spacing)) > _GEOMETRY_TOLERANCE * max(first.spacing):
            raise DicomError(f"{where} mixes pixel spacings ({s.path.name} and {first.path.name})")
    row_cos, col_cos = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row_cos, col_cos)
    depth = np.array([s.position @ normal for s in slices])
    order = np.argsort(depth, kind="stable")
    slices = [slices[i] for i in order]
    depth = depth[order]
    gaps = np.diff(depth)
    if gaps.min() < 1e-3:
        i = int(np.argmin(gaps))
        raise DicomError(
            f"{where} has two slices at the same position ({slices[i].path.name} and "
            f"{slices[i + 1].path.name}): several phases, echoes or volumes in one series; "
            "MoEC reads one 3D volume"
        )
    mean = float(gaps.mean())
    if gaps.max() - gaps.min() > _SPACING_TOLERANCE * mean:
        raise DicomError(
            f"{where} has uneven slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm between "
            "positions: a missing slice?); one affine cannot place such slices"
        )
    row_spacing, column_spacing = first.spacing
    lps = np.eye(4)
    lps[:3, 0] = row_cos * column_spacing  # along a row: the column index
    lps[:3, 1] = col_cos * row_spacing  # down the rows: the row index
    lps[:3, 2] = (slices[-1].position - slices[0].position) / (len(slices) - 1)
    lps[:3, 3] = slices[0].position
    affine = _LPS_TO_RAS @ lps

    raw = np.stack([s.pixels.T for s in slices], axis=2)
    if raw.dtype.name not in SUPPORTED_DTYPES:
        raise DicomError(f"{where} holds {raw.dtype} pixels; supported: {', '.join(SUPPORTED_DTYPES)}")
    scalings = {(s.slope, s.inter) for s in slices}
    if len(scalings) == 1:
        slope, inter = scalings.pop()
        stored = raw.dtype
        real = check_voxels(raw, where)
        if (slope, inter) != (1.0, 0.0):  # in float32, as load_volume scales a NIfTI: the two agree exactly
            real = real * np.float32(slope) + np.float32(inter)
    else:
        slope, inter = 1.0, 0.0
        real = raw.astype(np.float64) * np.array([s.slope for s in slices]) + np.array([s.inter for s in slices])
        stored = _holding_dtype(real)
    header = _nifti_header(raw.shape, stored, affine, slope, inter)
    size = sum(s.path.stat().st_size for s in slices)
    volume = from_array(
        real,
        affine=affine,
        header=header,
        dtype=stored,
        slope=slope,
        inter=inter,
        source=info.folder,
        source_bytes=size,
    )
    identity = slices[0].identity
    if not identity.series_uid:  # a group scan_folder named: the name --series and the manifest know it by
        identity = replace(identity, series_uid=info.uid)
    return replace(volume, dicom=identity)


def _holding_dtype(real: np.ndarray) -> np.dtype:
    """The narrowest stored dtype that holds these real values exactly, float32 when none does."""
    if np.array_equal(real, np.round(real)):
        for dtype in (np.int16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= real.min() and real.max() <= info.max:
                return np.dtype(dtype)
    return np.dtype(np.float32)


def _nifti_header(shape: tuple[int, ...], dtype: np.dtype, affine: np.ndarray, slope: float, inter: float) -> bytes:
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(shape)
    hdr.set_sform(affine, code="scanner")
    hdr.set_qform(affine, code="scanner")  # the nearest rotation where a gantry tilt shears the sform
    hdr.set_zooms(tuple(float(z) for z in np.linalg.norm(affine[:3, :3], axis=0)))
    hdr.set_xyzt_units("mm", "sec")
    hdr.set_slope_inter(slope, inter)
    return bytes(hdr.binaryblock)


# --- writing ----------------------------------------------------------------------------------------

#: What marks a series this module wrote (its DerivationDescription starts with it), so that
#: --force replaces such a folder and never one holding anything else.
MARK = "MoEC lossy"


def check_series_output(folder: str | os.PathLike, force: bool) -> None:
    """OutputError unless a series can be written as `folder` (said before any work)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} is a file, not a folder for a DICOM series")
    check_writable_folder(parent_of(folder))
    if folder.is_dir() and any(folder.iterdir()):
        if not force:
            raise OutputError(f"{folder} exists and is not empty; use --force to replace the series MoEC wrote there")
        foreign = next((p for p in sorted(folder.iterdir()) if not _written_here(p)), None)
        if foreign is not None:
            raise OutputError(
                f"{folder} holds files MoEC did not write ({foreign.name}); refusing to replace it, even with --force"
            )


def _written_here(path: Path) -> bool:
    import pydicom

    if not path.is_file() or not is_dicom_file(path):
        return False
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["DerivationDescription"])
    except Exception:
        return False
    return str(ds.get("DerivationDescription", "")).startswith(MARK)


#: The storage class of a derived series by modality: CT and MR keep theirs; any other modality
#: becomes a secondary capture, whose IOD needs none of the acquisition attributes we do not have.
_SOP_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


#: The patient a derived series of a de-identified file is filed under (PatientID: "MOEC-" and the
#: start of the .moec file's digest, so the series of one file stay together and apart from others').
PSEUDONYM = "MOEC^PSEUDONYM"


def derived_identity(identity: DicomIdentity, source_digest: str) -> DicomIdentity:
    """The patient and study a derived series is filed under: the identity's own where it has a
    study; else (a de-identified file) a new study, and a pseudonymous patient unless the identity
    names one. Derived from `source_digest` (the .moec file's), so the same file always gives the
    same study and patient, and nothing in them leads back to the original."""
    from pydicom.uid import generate_uid

    if identity.study_uid:
        return identity
    filed = replace(identity, study_uid=generate_uid(entropy_srcs=["MoEC study", source_digest]))
    if not any(getattr(identity, name) for name in PATIENT_FIELDS):
        filed = replace(filed, patient_name=PSEUDONYM, patient_id=f"MOEC-{source_digest[:12]}")
    return filed


def write_series(
    volume: Volume,
    identity: DicomIdentity,
    folder: str | os.PathLike,
    *,
    ratio: float,
    source_digest: str,
    force: bool = False,
) -> list[Path]:
    """Write a reconstruction as a new DICOM series in `folder`: marked lossy (LossyImageCompression
    01, a DERIVED image type, the ratio), new series and instance UIDs, the original's patient,
    study and frame of reference kept where the identity has them (a de-identified one gets a
    pseudonymous patient and a new study: derived_identity; `identity.keeps_identity` tells the two
    apart). UIDs derive from the original series and `source_digest` (the .moec file's), so the
    same file always gives the same series. The series appears whole or not at all: it is written
    in a temporary folder beside `folder`, then renamed into place."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    if len(volume.shape) != 3:
        raise DicomError(f"a DICOM series holds a 3D volume, not a {len(volume.shape)}D one")
    check_series_output(folder, force)
    lps = np.linalg.inv(_LPS_TO_RAS) @ np.asarray(volume.affine, dtype=np.float64)
    along_row, down_rows, through = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    column_spacing, row_spacing = float(np.linalg.norm(along_row)), float(np.linalg.norm(down_rows))
    row_cos, col_cos = along_row / column_spacing, down_rows / row_spacing
    if abs(float(row_cos @ col_cos)) > 1e-3:
        raise DicomError("the volume's first two axes are not perpendicular; DICOM slices cannot hold that geometry")
    normal = np.cross(row_cos, col_cos)
    pixels, slope, inter = _pixels_for_dicom(volume, identity.modality)
    sop_class = _SOP_CLASSES.get(identity.modality, _SECONDARY_CAPTURE)

    def uid_of(*parts: str) -> str:
        return generate_uid(entropy_srcs=[identity.series_uid, source_digest, *parts])

    series_uid = uid_of("series")
    frame_uid = identity.frame_of_reference_uid or uid_of("frame")
    description = f" MoEC {ratio:.0f}x"
    description = (identity.series_description[: 64 - len(description)] + description).strip()
    shifted = int(identity.series_number) + 1000 if identity.series_number else 0
    number = str(shifted) if 0 < shifted < 2**31 else "1000"  # IS holds a signed 32-bit number
    source = f"the series {identity.series_uid}" if identity.series_uid else "a de-identified series"
    derivation = f"{MARK} compression ({ratio:.1f}x, a mixture-of-experts neural representation) of {source}"
    filed = derived_identity(identity, source_digest)
    digits = max(4, len(str(volume.shape[2])))
    tmp = Path(tempfile.mkdtemp(dir=parent_of(folder), prefix=f".{folder.name}.", suffix=".part"))
    written = []
    try:
        for k in range(volume.shape[2]):
            instance_uid = uid_of("instance", str(k))
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = sop_class
            meta.MediaStorageSOPInstanceUID = instance_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
            if filed.has_non_ascii:
                ds.SpecificCharacterSet = "ISO_IR 192"
            ds.ImageType = ["DERIVED", "SECONDARY"]
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = instance_uid
            for name, (keyword, _) in KEYWORDS.items():
                if name not in ("series_uid", "series_number", "series_description"):
                    setattr(ds, keyword, getattr(filed, name))
            ds.FrameOfReferenceUID = frame_uid
            ds.ReferringPhysicianName = ""
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = number
            ds.SeriesDescription = description
            ds.InstanceNumber = k + 1
            ds.Manufacturer = "MoEC Viewer"
            ds.SoftwareVersions = f"moec {__version__}"
            ds.DerivationDescription = derivation
            ds.LossyImageCompression = "01"
            ds.LossyImageCompressionRatio = f"{ratio:.2f}"[:16]
            ds.LossyImageCompressionMethod = "MOEC"
            position = lps[:3, 3] + k * through
            ds.ImagePositionPatient = [_ds(v, MM_DECIMALS) for v in position]
            ds.ImageOrientationPatient = [_ds(v, 8) for v in np.r_[row_cos, col_cos]]
            ds.PixelSpacing = [_ds(row_spacing, MM_DECIMALS), _ds(column_spacing, MM_DECIMALS)]
            ds.SliceThickness = ds.SpacingBetweenSlices = _ds(abs(float(through @ normal)), MM_DECIMALS)
            ds.SliceLocation = _ds(float(position @ normal), MM_DECIMALS)
            ds.PositionReferenceIndicator = ""
            if sop_class == _SECONDARY_CAPTURE:
                ds.ConversionType = "WSD"
            elif identity.modality == "MR":
                ds.ScanningSequence, ds.SequenceVariant = "RM", "NONE"  # research mode: not an acquisition
            elif identity.modality == "CT":
                ds.KVP, ds.AcquisitionNumber = "", ""
            image = np.ascontiguousarray(pixels[:, :, k].T)
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = image.shape
            ds.BitsAllocated = ds.BitsStored = 8 * image.dtype.itemsize
            ds.HighBit = ds.BitsStored - 1
            ds.PixelRepresentation = 1 if image.dtype.kind == "i" else 0
            ds.RescaleSlope, ds.RescaleIntercept = _ds(slope), _ds(inter)
            if identity.modality == "CT":
                ds.RescaleType = "HU"
            ds.PixelData = image.astype(image.dtype.newbyteorder("<")).tobytes()
            path = tmp / f"MOEC{k + 1:0{digits}d}.dcm"
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
            with open(path, "rb+") as handle:
                os.fsync(handle.fileno())
            written.append(folder / path.name)
        os.chmod(tmp, new_folder_mode())
        _replace_folder(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written


#: The .moec file keeps the affine in its NIfTI header, in float32: positions come back a few
#: 1e-7 mm off, printed as such noise unless rounded (to 1 µm, far below any scanner's precision).
MM_DECIMALS = 6


def _ds(value: float, decimals: int | None = None) -> str:
    """A decimal string (DS, at most 16 characters), rounded to `decimals` places, else as close
    to `value` as 16 characters allow."""
    value = float(value) if decimals is None else round(float(value), decimals) + 0.0  # + 0.0: no "-0"
    for digits in range(12, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.1e}"


def _pixels_for_dicom(volume: Volume, modality: str) -> tuple[np.ndarray, float, float]:
    """Stored pixels and their rescale slope and intercept. Integer dtypes of up to 16 bits are kept
    with the volume's scaling (CT images are 16-bit, so 8-bit values widen); anything wider or
    floating becomes int16 under a slope and intercept that span the volume's range."""
    dtype = np.dtype(volume.stored_dtype)
    if dtype.kind in "iu" and dtype.itemsize <= 2:
        stored = to_stored(volume.data, dtype, volume.slope, volume.inter)
        if modality == "CT" and dtype.itemsize == 1:
            stored = stored.astype(np.int16 if dtype.kind == "i" else np.uint16)
        return stored, volume.slope, volume.inter
    lo, hi = volume.value_range
    slope = (hi - lo) / 65534.0 if hi > lo else 1.0
    inter = lo + 32767.0 * slope
    return to_stored(volume.data, np.dtype(np.int16), slope, inter), slope, inter


def _replace_folder(tmp: Path, target: Path) -> None:
    """Rename the finished folder `tmp` into place; an old series there goes only once it has."""
    if not target.exists() or not any(target.iterdir()):
        os.replace(tmp, target)  # an empty folder is replaced by rename(2) itself
        return
    aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
    os.replace(target, aside / "series")
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(aside / "series", target)
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)


def digest(data: bytes) -> str:
    """What ties a derived series to the .moec file it was decoded from (its UIDs' entropy)."""
    return hashlib.sha256(data).hexdigest()
