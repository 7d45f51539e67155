"""The .moec header's `dicom` entry: a DicomIdentity (codec.io.dicom_identity) as DICOM keyword ->
value, only the values present, each validated against its value representation on reading (any
problem is a MoecFormatError, as for every other header field, codec.format.header)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from codec.errors import MoecFormatError
from codec.io.dicom_identity import KEYWORDS, DicomIdentity, valid_value

_FIELD_OF = {keyword: name for name, (keyword, _) in KEYWORDS.items()}
#: A de-identified file keeps no study and no original series; the modality chooses the storage class.
_REQUIRED = ("Modality",)


def identity_to_json(identity: DicomIdentity) -> dict[str, str]:
    """DICOM keyword -> value, only the values present (the header is small at 4096x)."""
    return {KEYWORDS[f.name][0]: getattr(identity, f.name) for f in fields(identity) if getattr(identity, f.name)}


def identity_from_json(entry: Any) -> DicomIdentity:
    """The header's `dicom` entry, validated; MoecFormatError on anything a DICOM value cannot be."""
    if not isinstance(entry, dict):
        raise MoecFormatError("the header's dicom entry must be a record")
    unknown = sorted(set(entry) - set(_FIELD_OF))
    if unknown:
        shown = ", ".join(repr(k)[:40] for k in unknown[:3])
        raise MoecFormatError(f"the header's dicom entry has unknown fields: {shown}")
    values = {}
    for keyword, value in entry.items():
        vr = KEYWORDS[_FIELD_OF[keyword]][1]
        if not isinstance(value, str) or not value or not valid_value(value, vr):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise MoecFormatError(f"the header's dicom field {keyword} is not a valid DICOM {vr} value: {shown}")
        values[_FIELD_OF[keyword]] = value
    missing = [k for k in _REQUIRED if k not in entry]
    if missing:
        raise MoecFormatError(f"the header's dicom entry lacks {', '.join(missing)}")
    return DicomIdentity(**values)
