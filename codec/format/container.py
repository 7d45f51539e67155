"""The .moec container: magic, version, deflated header, payload, CRC32 (docs/format.md).

    offset  size  field
    0       4     magic b"MOEC"
    4       1     format version (u8)
    5       2     H = length of the deflated header (u16, little-endian)
    7       H     header: zlib-deflated [u16 NIfTI header length | raw NIfTI-1 header | UTF-8 JSON],
                  from version 5 against the preset dictionary HEADER_DICTIONARY
    7+H     4     P = payload length (u32)
    11+H    P     payload: the coded weights (codec.format.payload)
    11+H+P  4     CRC32 of every byte before it

This module knows bytes and sections only; what the JSON and the payload mean is the business of
codec.format.header and codec.format.payload.
Every length is checked against the file size before anything is allocated, and the header is
inflated with a hard output limit, so a hostile file cannot make the reader allocate gigabytes.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import zlib
from dataclasses import dataclass

from codec.errors import MoecFormatError

__all__ = [
    "MAGIC",
    "VERSION",
    "READABLE_VERSIONS",
    "HEADER_DICTIONARY",
    "Container",
    "pack_container",
    "unpack_container",
    "MoecFormatError",
]

MAGIC = b"MOEC"
#: 2 added the latent-grid encoder (model fields) and frequency-table symbol models; a version-1
#: file is a SIREN-encoder model with parametric symbol models only. 3 added the context symbol
#: model of latent grids (codec.coding.context). 4 added the decoder's floor (codec.decode.floor). 5 deflates the
#: header against HEADER_DICTIONARY. 6 added the latent grid's held axes (model field grid_hold,
#: optional; the same dictionary). 7 added cubic reading of the latent grid (model field
#: grid_interpolation, optional; the same dictionary).
VERSION = 7
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6, 7)
MAX_INFLATED_HEADER = 1 << 16
NIFTI_HEADER_BYTES = 348
#: What every header repeats, given to zlib as its preset dictionary (version 5): a NIfTI-1 header
#: as nibabel writes one (256^3 int16, 1 mm; made once and frozen here), then the JSON of a SIREN
#: and of a latent-grid file. Field names and the usual values then cost a back-reference instead
#: of their text, which matters most at high ratios, where the header is a large part of the file
#: (docs/benchmarks.md, "Quantization and entropy coding"). Never edit it: version-5 files need it
#: byte for byte (a test pins its CRC32); another dictionary is another format version.
HEADER_DICTIONARY = base64.b64decode(
    "XAEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAMAAAEAAQABAQABAAEAAQAAAAAAAAAAAAAAAAAAAAQAEAAA"
    "AAAAgL8AAIA/AACAPwAAgD8AAIA/AACAPwAAgD8AAIA/AAAAAAAAgD8AAAAAAAAACgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAQABAAAAAAAAAIA/AAAAAAAAAEMAAADDAAAAwwAAgL8A"
    "AAAAAAAAAAAAAEMAAAAAAACAPwAAAAAAAADDAAAAAAAAAAAAAIA/AAAAwwAAAAAAAAAAAAAAAAAAAABuKzEA"
) + (
    b'{"coords":"centre","dtype":"int16","floor":0.0,"made_by":{"moec":"0.1.0","numpy":"2.4.6",'
    b'"torch":"2.13.0"},"model":{"block_grid":[],"dims":3,"encoder":"siren","encoder_layers":1,'
    b'"encoder_width":22,"expert_layers":3,"expert_width":22,"experts":1,"grid_channels":2,"grid_finest":[],'
    b'"grid_levels":4,"omega0":30.0,"out_channels":1,"partition":"learned","router_features":true,'
    b'"router_width":11,"top_k":1},"range":[0.0,255.0],"scaling":[1.0,0.0],"shape":[512,512,300],'
    b'"train":{"balance":0.01,"batch":32768,"gate_gradient":0.1,"lr":0.0025,"minutes":5.0,"pretrain":"none",'
    b'"runs":1,"seed":0,"stages":[0,1000,250],"steps":1250},"weights":{"bits":8,"extra":2,'
    b'"granularity":"tensor"}}'
    b'{"coords":"centre","dtype":"uint8","floor":5.0,"made_by":{"moec":"0.1.0","numpy":"2.4.6",'
    b'"torch":"2.13.0"},"model":{"block_grid":[],"dims":3,"encoder":"grid","encoder_layers":0,'
    b'"encoder_width":8,"expert_layers":2,"expert_width":8,"experts":4,"grid_channels":1,'
    b'"grid_finest":[32,32,24],"grid_levels":4,"omega0":30.0,"out_channels":1,"partition":"learned",'
    b'"router_features":true,"router_width":8,"top_k":1},"range":[0.0,255.0],"scaling":[1.0,0.0],'
    b'"shape":[182,218,182],"train":{"balance":0.01,"batch":32768,"gate_gradient":0.1,"lr":0.0025,'
    b'"minutes":2.0,"pretrain":"clusters","runs":1,"seed":0,"stages":[300,5000,1250],"steps":6550},'
    b'"weights":{"bits":8,"extra":2,"granularity":"tensor"}}'
)
_PREFIX = struct.Struct("<4sBH")
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")
MIN_FILE_BYTES = _PREFIX.size + _U32.size + _U32.size


@dataclass(frozen=True)
class Container:
    """A file's sections as read, before the header's meaning is checked."""

    version: int
    meta: dict
    nifti: bytes
    payload: bytes


def pack_container(meta: dict, nifti: bytes, payload: bytes) -> bytes:
    if len(nifti) != NIFTI_HEADER_BYTES:
        raise ValueError(f"the NIfTI header must have {NIFTI_HEADER_BYTES} bytes")
    text = json.dumps(meta, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
    inner = _U16.pack(len(nifti)) + nifti + text
    if len(inner) > MAX_INFLATED_HEADER:
        raise ValueError("the header is too large")
    deflater = zlib.compressobj(9, zdict=HEADER_DICTIONARY)
    header = deflater.compress(inner) + deflater.flush()
    body = _PREFIX.pack(MAGIC, VERSION, len(header)) + header + _U32.pack(len(payload)) + payload
    return body + _U32.pack(zlib.crc32(body))


def _reject_constant(name: str) -> float:
    raise MoecFormatError(f"the header holds a non-finite number ({name})")


def _finite_float(text: str) -> float:
    # A literal such as 1e999 is valid JSON that parses to infinity, past parse_constant.
    value = float(text)
    if not math.isfinite(value):
        _reject_constant(text if len(text) <= 20 else text[:17] + "...")
    return value


def unpack_container(data: bytes, name: str = "the file") -> Container:
    """Split and verify a .moec byte string; MoecFormatError on anything malformed."""
    data = bytes(data)
    if len(data) < MIN_FILE_BYTES:
        raise MoecFormatError(f"{name} is not a .moec file: {len(data)} bytes is too short")
    magic, version, header_len = _PREFIX.unpack_from(data, 0)
    if magic != MAGIC:
        raise MoecFormatError(f"{name} is not a .moec file (it does not start with 'MOEC')")
    if version not in READABLE_VERSIONS:
        readable = ", ".join(str(v) for v in READABLE_VERSIONS)
        raise MoecFormatError(
            f"{name} is .moec format version {version}; this program reads version {readable}"
            + (" (a newer moec-napari may read it)" if version > max(READABLE_VERSIONS) else "")
        )
    at = _PREFIX.size + header_len
    if at + _U32.size + _U32.size > len(data):
        raise MoecFormatError(f"{name} is truncated: its header claims {header_len} bytes")
    (payload_len,) = _U32.unpack_from(data, at)
    end = at + _U32.size + payload_len
    if end + _U32.size != len(data):
        if end + _U32.size > len(data):
            raise MoecFormatError(f"{name} is truncated: {len(data)} bytes where its header promises {end + _U32.size}")
        raise MoecFormatError(f"{name} has {len(data) - end - _U32.size} unexpected bytes after its end")
    (crc,) = _U32.unpack_from(data, end)
    if zlib.crc32(data[:end]) != crc:
        raise MoecFormatError(f"{name} is corrupt: its checksum does not match its contents")
    try:
        inflater = zlib.decompressobj(zdict=HEADER_DICTIONARY) if version >= 5 else zlib.decompressobj()
        inner = inflater.decompress(data[_PREFIX.size : at], MAX_INFLATED_HEADER + 1)
        if len(inner) > MAX_INFLATED_HEADER or inflater.unconsumed_tail or not inflater.eof:
            raise MoecFormatError(f"{name} has a malformed header (bad length or not fully deflated)")
    except zlib.error as exc:
        raise MoecFormatError(f"{name} has a header that cannot be inflated ({exc})") from None
    if len(inner) < _U16.size or _U16.unpack_from(inner, 0)[0] != NIFTI_HEADER_BYTES:
        raise MoecFormatError(f"{name} has no valid NIfTI header")
    nifti = inner[_U16.size : _U16.size + NIFTI_HEADER_BYTES]
    if len(nifti) != NIFTI_HEADER_BYTES:
        raise MoecFormatError(f"{name} has a truncated NIfTI header")
    try:
        meta = json.loads(
            inner[_U16.size + NIFTI_HEADER_BYTES :].decode("utf-8"),
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except MoecFormatError:
        raise
    except (ValueError, RecursionError) as exc:
        raise MoecFormatError(f"{name} has an unreadable header ({type(exc).__name__})") from None
    if not isinstance(meta, dict):
        raise MoecFormatError(f"{name} has a header that is not a record")
    return Container(version, meta, nifti, data[at + _U32.size : end])
