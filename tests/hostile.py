"""Builders of hostile and damaged inputs, shared by the tests and benchmarks/hostile_inputs.py: a
forged .moec (another declared shape, network or made_by, its CRC recomputed), the network that
takes hours, a NIfTI gzip bomb, header fields patched by hand, bit flips, raw DICOM elements and
DICOM series with a traversal SeriesNumber or without their UIDs.

Plain functions, no fixtures: a test calls them under its tmp_path, the benchmark under its own
temporary folder (it imports this module as `tests.hostile`)."""

from __future__ import annotations

import gzip
import json
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from codec.format.container import pack_container, unpack_container
from codec.model import ModelConfig

from .conftest import oblique_geometry, write_dicom_series, write_nifti
from .test_dicom import ct_raw

MIB = 2**20
#: Byte offsets of NIfTI-1 header fields (the NIfTI-1 standard's nifti1.h).
DIM, DATATYPE, BITPIX, PIXDIM, VOX_OFFSET, SCL_SLOPE, SCL_INTER = 40, 70, 72, 76, 108, 112, 116
QFORM_CODE, SFORM_CODE = 252, 254
#: The tag of SeriesNumber, (0020,0011).
SERIES_NUMBER = 0x00200011
#: A traversal in a header: from OUT/exam/S<number>_<description>.moec it climbs to OUT's parent.
TRAVERSAL = "/../../../pwned/x"

#: `edit(k, ds)` of write_dicom_series: may spoil slice k (a pydicom Dataset) before it is written.
Edit = Callable[[int, Any], object]


# --- .moec files -----------------------------------------------------------------------------------


def forged_moec(
    source: Path,
    out: Path,
    *,
    shape: tuple[int, ...] | None = None,
    model: ModelConfig | None = None,
    made_by: dict | None = None,
) -> Path:
    """A real .moec with another declared shape (and NIfTI dims to match), another network or another
    made_by entry, the CRC recomputed: a valid container whose header declares it. Another network
    gets float16 weights of its own, so the file decodes."""
    from codec.coding.quantize import QuantConfig
    from codec.format.payload import encode_payload
    from codec.model import MoEC

    container = unpack_container(source.read_bytes())
    meta = json.loads(json.dumps(container.meta))
    nifti, payload = container.nifti, container.payload
    if shape is not None:
        meta["shape"] = list(shape)
        hdr = nib.Nifti1Header(binaryblock=nifti).copy()
        hdr.set_data_shape(shape)
        nifti = bytes(hdr.binaryblock)
    if model is not None:
        meta["model"] = model.to_dict()
        meta["weights"] = {"bits": 16, "extra": 0, "granularity": "tensor"}
        payload = encode_payload(MoEC(model), QuantConfig(16, 0, "tensor"), None)
    if made_by is not None:
        meta["made_by"] = made_by
    out.write_bytes(pack_container(meta, nifti, payload))
    return out


def wide_network() -> ModelConfig:
    """One sine MLP as wide and deep as the header's parameter limit allows a sixteenth of: about a
    million multiply-adds a voxel, in a file of two megabytes (over a 512^3 grid, hours of decoding)."""
    from codec.format.header import MAX_PARAMETERS

    config = ModelConfig(experts=1, encoder_layers=0, expert_width=512, expert_layers=5)
    assert config.parameter_count() <= MAX_PARAMETERS
    return config


# --- NIfTI files -----------------------------------------------------------------------------------


def nifti_header(shape: tuple[int, ...], dtype: Any = np.uint8) -> bytes:
    """A valid single-file NIfTI-1 header and its empty extension flag: the 352 bytes before the voxels."""
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(shape)
    hdr.set_sform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    return bytes(hdr.binaryblock) + b"\0" * 4


def write_gzip_bomb(path: Path, declared: tuple[int, ...], zeros_mib: int) -> Path:
    """A .nii.gz whose header declares `declared` uint8 voxels, followed by `zeros_mib` MiB of zeros.

    The zeros are gzip members of 1 MiB each, compressed once and repeated (a gzip file may hold
    several members, RFC 1952), so the file stays near 1 KiB per MiB and is written at once."""
    member = gzip.compress(bytes(MIB), compresslevel=9)
    with open(path, "wb") as handle:
        handle.write(gzip.compress(nifti_header(declared)))
        for _ in range(zeros_mib):
            handle.write(member)
    return path


def patched(path: Path, out: Path, **fields: tuple[int, str, object]) -> Path:
    """A copy of the uncompressed NIfTI file `path` with header fields overwritten: name=(offset, struct
    format, value); written by hand because nibabel refuses to write such headers."""
    raw = bytearray(path.read_bytes())
    for offset, fmt, value in fields.values():
        values = value if isinstance(value, (list, tuple)) else (value,)
        struct.pack_into("<" + fmt, raw, offset, *values)
    out.write_bytes(bytes(raw))
    return out


def write_small_gz(path: Path) -> np.ndarray:
    """A small int16 volume (12 x 10 x 8, seed 3) written to the .nii.gz `path`; its stored values."""
    raw = np.random.default_rng(3).integers(0, 2000, size=(12, 10, 8)).astype(np.int16)
    write_nifti(path, raw, np.diag([0.8, 0.8, 2.0, 1.0]))
    return raw


def write_small_nii(path: Path) -> Path:
    """A small uncompressed int16 volume (8 x 7 x 6, values 0 to 335) at `path`, for `patched`."""
    write_nifti(path, np.arange(8 * 7 * 6, dtype=np.int16).reshape(8, 7, 6), np.eye(4))
    return path


def flipped(data: bytes, position: int, mask: int) -> bytes:
    """`data` with the bits of `mask` flipped in the byte at `position`."""
    damaged = bytearray(data)
    damaged[position] ^= mask
    return bytes(damaged)


# --- DICOM files -----------------------------------------------------------------------------------


def raw_element(ds: Any, keyword: str, vr: str, value: bytes) -> None:
    """Put `value` in the file as it is, unchecked: how a damaged or hostile file holds it."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    tag = Tag(keyword)
    # As if read from a file of this encoding: pydicom then writes raw elements unconverted (and
    # resolves no ambiguous VR, which would read the values: the pixel data's is set here).
    ds.set_original_encoding(False, True, ds._character_set)
    if "PixelData" in ds:
        ds["PixelData"].VR = "OW"
    if len(value) % 2:
        value += b" " if vr not in ("US", "UL", "SS", "SL", "OB", "OW", "FL", "FD") else b"\0"
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)


def quiet_series(folder: Path, raw: np.ndarray, **options: Any) -> list[Path]:
    """conftest.write_dicom_series (oblique unless `options` give the geometry), pydicom's warnings of
    the invalid values a hostile edit writes on purpose silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return write_dicom_series(folder, raw, **{**oblique_geometry(), **options})


def spoil_first_slice(keyword: str, vr: str, value: bytes) -> Edit:
    """An `edit` that puts `value` raw (raw_element) in the element `keyword` of slice 0 only."""
    return lambda k, ds: k == 0 and raw_element(ds, keyword, vr, value)


def without(*keywords: str) -> Edit:
    """An `edit` that deletes the elements `keywords` (SeriesInstanceUID, StudyInstanceUID) of every slice."""

    def edit(k: int, ds: Any) -> None:
        for keyword in keywords:
            delattr(ds, keyword)

    return edit


def traversal_exam(folder: Path, traversal: str = TRAVERSAL) -> list[Path]:
    """A folder of two DICOM series, a CT and an MR; the slices of the CT say their SeriesNumber is
    `traversal` (as text, past pydicom's check of an integer string, as a hostile writer would)."""
    from pydicom.dataelem import DataElement

    def climb(k: int, ds: Any) -> None:
        ds[SERIES_NUMBER] = DataElement(SERIES_NUMBER, "LO", traversal)

    geometry = oblique_geometry()
    ct = write_dicom_series(
        folder,
        ct_raw((24, 20, 12)),
        slope=1.0,
        inter=-1024.0,
        series_uid="1.2.3.9.1",
        series_number=2,
        description="Lung",
        edit=climb,
        **geometry,
    )
    mr = (ct_raw((20, 18, 12), seed=4) * 2).astype(np.uint16)
    return ct + write_dicom_series(
        folder, mr, series_uid="1.2.3.9.2", series_number=5, modality="MR", description="T2 ax", seed=7, **geometry
    )


# --- folders ---------------------------------------------------------------------------------------


def files_under(root: Path, *, leaving: Path | None = None) -> dict[str, int]:
    """Every file and folder under `root` (`leaving` out), with its size (folders -1)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if leaving is not None and (path == leaving or leaving in path.parents):
            continue
        found[path.relative_to(root).as_posix()] = -1 if path.is_dir() else path.stat().st_size
    return found
