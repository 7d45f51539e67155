"""Who a DICOM series belongs to (patient, study, series) and what each of those values may be.

The value representations (PS3.5 table 6.2-1) are defined once, here: reading a series keeps only
the values they allow (codec.io.dicom.identity_of), and the .moec header's `dicom` entry is
validated against them (codec.format.dicom_entry). No pydicom here: a Volume refers to an identity,
and reading a .moec header must not pay for pydicom.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class DicomIdentity:
    """What a derived series needs to be filed under its original's patient and study. Every field
    but the modality may be empty: a de-identified file keeps only what describes the series."""

    study_uid: str = ""
    series_uid: str = ""  # the original series', which the derived series names as its source
    modality: str = "OT"  # "other", DICOM's own word for an unknown modality
    patient_name: str = ""
    patient_id: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    study_id: str = ""
    accession_number: str = ""
    series_number: str = ""
    series_description: str = ""
    frame_of_reference_uid: str = ""

    @property
    def has_non_ascii(self) -> bool:
        return any(not getattr(self, f.name).isascii() for f in fields(self))

    @property
    def keeps_identity(self) -> bool:
        """Whether any patient or study value is present (a de-identified identity has none)."""
        return any(getattr(self, name) for name in PATIENT_FIELDS + STUDY_FIELDS)

    def deidentified(self) -> DicomIdentity:
        """Only what describes the series (modality, number, description): no patient, no study and
        no UID that would lead back to the original in an archive."""
        return DicomIdentity(
            modality=self.modality, series_number=self.series_number, series_description=self.series_description
        )


PATIENT_FIELDS = ("patient_name", "patient_id", "patient_birth_date", "patient_sex")
STUDY_FIELDS = ("study_uid", "study_date", "study_time", "study_description", "study_id", "accession_number")

#: field -> (DICOM keyword, value representation). The VR bounds what a value may be.
KEYWORDS = {
    "study_uid": ("StudyInstanceUID", "UI"),
    "series_uid": ("SeriesInstanceUID", "UI"),
    "modality": ("Modality", "CS"),
    "patient_name": ("PatientName", "PN"),
    "patient_id": ("PatientID", "LO"),
    "patient_birth_date": ("PatientBirthDate", "DA"),
    "patient_sex": ("PatientSex", "CS"),
    "study_date": ("StudyDate", "DA"),
    "study_time": ("StudyTime", "TM"),
    "study_description": ("StudyDescription", "LO"),
    "study_id": ("StudyID", "SH"),
    "accession_number": ("AccessionNumber", "SH"),
    "series_number": ("SeriesNumber", "IS"),
    "series_description": ("SeriesDescription", "LO"),
    "frame_of_reference_uid": ("FrameOfReferenceUID", "UI"),
}
#: PS3.5 table 6.2-1: the longest value of each representation (PN: three groups of 64).
_MAX_LENGTH = {"UI": 64, "CS": 16, "PN": 194, "LO": 64, "SH": 16, "DA": 8, "TM": 16, "IS": 12}
_PATTERN = {
    "UI": re.compile(r"[0-9]+(\.[0-9]+)*"),
    "CS": re.compile(r"[A-Z0-9 _]*"),
    "DA": re.compile(r"[0-9]{8}"),
    "TM": re.compile(r"[0-9]{2}([0-9]{2}([0-9]{2}(\.[0-9]{1,6})?)?)?"),
    "IS": re.compile(r"[+-]?[0-9]{1,11}"),
}


def valid_value(value: str, vr: str) -> bool:
    """Whether `value` is one value of the representation `vr` (one of KEYWORDS' VRs)."""
    if len(value) > _MAX_LENGTH[vr]:
        return False
    if vr in _PATTERN:
        return _PATTERN[vr].fullmatch(value) is not None
    # Text (PN, LO, SH): printable, one value (a backslash separates values), no control characters.
    return all(ch >= " " and ch not in "\\\x7f" for ch in value)
