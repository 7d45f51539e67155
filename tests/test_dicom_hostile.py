"""DICOM headers a hospital archive or an attacker may hand over: empty or garbage values, no UIDs,
names that climb out of a folder, sizes that would exhaust memory. Real files written by pydicom."""

from __future__ import annotations

import re
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec.cli import main
from codec.errors import DicomError, MoecError, MoecFormatError, ResourceLimitError
from codec.format.dicom_entry import identity_from_json, identity_to_json
from codec.io.dicom import (
    PSEUDONYM,
    digest,
    load_series,
    read_series,
    scan_folder,
    series_stem,
    write_series,
)
from codec.io.dicom_identity import DicomIdentity
from codec.io.files import check_inside
from codec.io.limits import MemoryLimit, compress_bytes, load_bytes

from .conftest import PATIENT, STUDY_UID, oblique_geometry, write_dicom_series
from .hostile import quiet_series, raw_element, without

FRAME_UID = "1.2.826.0.1.3680043.8.498.77"  # what conftest.write_dicom_series writes
UID_GROUP = re.compile(r"2\.25\.[1-9][0-9]*")


def small_raw(shape=(6, 5, 4), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2000, size=shape).astype(np.int16)


def series(folder, raw=None, **options) -> list[Path]:
    return quiet_series(folder, small_raw() if raw is None else raw, **options)


# --- one bad file -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "keyword,vr,value,reason",
    [
        ("Rows", "US", b"", "Rows is empty"),
        ("Columns", "US", b"", "Columns is empty"),
        ("Columns", "US", b"\0\0", "Columns is 0"),
        ("Rows", "US", b"\x04\0\x04\0", "Rows is not one whole number"),
        ("Rows", "IS", b"many", "Rows is not one whole number"),
        ("Rows", "UL", b"\0\0\x01\0", "Rows is 65536"),
    ],
)
def test_a_slice_with_a_bad_size_is_unreadable_and_the_other_series_still_loads(
    tmp_path, capsys, keyword, vr, value, reason
):
    good = series(tmp_path)
    series(
        tmp_path,
        series_uid="1.2.3.4.9",
        series_number=9,
        seed=4,
        edit=lambda k, ds: k == 0 and raw_element(ds, keyword, vr, value),
    )
    scan = scan_folder(tmp_path)
    assert [info.uid for info in scan.series] == ["1.2.3.4.1", "1.2.3.4.9"]
    assert len(scan.series[0].files) == len(good) and len(scan.series[1].files) == len(good) - 1
    [(path, why)] = scan.unreadable
    assert why.startswith(reason) and "\n" not in why
    volume = load_series(tmp_path, "1.2.3.4.1")
    assert volume.shape == (6, 5, 4)
    assert main(["info", str(tmp_path)]) == 0  # the listing says which file and why, and goes on
    out = capsys.readouterr().out
    assert f"unreadable: {path.name}: {reason}" in out and "1.2.3.4.1" in out


def test_a_slice_whose_headers_pydicom_cannot_convert_is_a_dicom_error_naming_it(tmp_path):
    files = series(tmp_path, edit=lambda k, ds: k == 2 and raw_element(ds, "NumberOfFrames", "IS", b"lots"))
    bad = next(p for p in files if pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber == 3)
    with pytest.raises(DicomError, match=re.escape(str(bad))):
        load_series(tmp_path)


def test_a_slice_larger_than_its_series_is_refused_before_it_is_decoded(tmp_path):
    def grow(k, ds):
        if k == 1:
            ds.Rows, ds.Columns = 60000, 60000  # a few bytes of pixel data declaring 3.6 G pixels

    series(tmp_path, edit=grow)
    with pytest.raises(DicomError, match="60000 x 60000 where its series' first slice is 6 x 5"):
        load_series(tmp_path)


# --- names ------------------------------------------------------------------------------------------


def test_a_traversal_series_number_gives_a_safe_stem(tmp_path):
    hostile = b"/../../../../tmp/pwned"
    series(tmp_path, series_uid="1.2.3.4.1", edit=lambda k, ds: raw_element(ds, "SeriesNumber", "IS", hostile))
    series(tmp_path, series_uid="1.2.3.4.2", series_number=4, description="../../etc/passwd", seed=3)
    scan = scan_folder(tmp_path)
    assert [(info.uid, info.number) for info in scan.series] == [("1.2.3.4.2", "4"), ("1.2.3.4.1", "")]
    out = tmp_path / "out"
    out.mkdir()
    stems = [series_stem(info, scan.series) for info in scan.series]
    # A header's value reaches a name only through safe_name, even one that did not come from scan_folder.
    numbered = replace(scan.series[1], number=hostile.decode())
    hidden = replace(scan.series[1], folder=tmp_path / "..hidden..x")
    forged = [series_stem(numbered, (scan.series[0], numbered)), series_stem(hidden, (hidden,))]
    for stem in stems + forged:
        assert stem and "/" not in stem and "\\" not in stem and ".." not in stem and not stem.startswith((".", "-"))
        check_inside(out, out / f"{stem}.moec")
    assert stems == ["S4_etc_passwd", "series_1"] and forged == ["S_tmp_pwned_Thorax", "hidden_x"]


def test_normal_stems_are_kept(tmp_path):
    series(tmp_path / "ct", series_number=3, description="Chest CT")
    scan = scan_folder(tmp_path / "ct")
    assert series_stem(scan.series[0], scan.series) == "ct"
    series(tmp_path / "ct", series_uid="1.2.3.4.2", series_number=4, description="Bone", seed=2)
    scan = scan_folder(tmp_path / "ct")
    assert [series_stem(info, scan.series) for info in scan.series] == ["S3_Chest_CT", "S4_Bone"]


# --- anonymised series ------------------------------------------------------------------------------

_no_series_uid = without("SeriesInstanceUID")


def test_slices_without_a_series_uid_are_one_series_with_a_warning(tmp_path):
    folder = tmp_path / "anonymous"
    files = series(folder, edit=_no_series_uid)
    with pytest.warns(UserWarning, match=r"4 slices in .*anonymous have no valid SeriesInstanceUID; grouped by "):
        scan = scan_folder(folder)
    [info] = scan.series
    assert UID_GROUP.fullmatch(info.uid) and len(info.uid) <= 64 and info.number == "3"
    with pytest.warns(UserWarning):
        assert scan_folder(folder).series[0].uid == info.uid  # the same name every time: --series, manifests
        volume = load_series(folder)
        assert load_series(files[0]).shape == volume.shape == (6, 5, 4)  # one of its files stands for it
        assert load_series(folder, info.uid).shape == volume.shape
    assert volume.dicom.series_uid == info.uid and volume.dicom.patient_id == PATIENT["PatientID"]
    # A second group, by series number, in the same folder: two series, each named and read.
    series(folder, series_number=5, seed=7, edit=_no_series_uid)
    with pytest.warns(UserWarning, match="8 slices"):
        scan = scan_folder(folder)
        assert [s.number for s in scan.series] == ["3", "5"] and scan.series[0].uid == info.uid
        assert load_series(folder, scan.series[1].uid).shape == (6, 5, 4)


def test_a_series_without_a_study_uid_loads(tmp_path):
    series(tmp_path, edit=lambda k, ds: delattr(ds, "StudyInstanceUID"))
    volume = load_series(tmp_path)
    assert volume.dicom.study_uid == "" and volume.dicom.series_uid == "1.2.3.4.1"
    assert identity_from_json(identity_to_json(volume.dicom)) == volume.dicom


# --- privacy ----------------------------------------------------------------------------------------


def test_deidentified_keeps_only_what_describes_the_series(tmp_path):
    series(tmp_path, description="Thorax")
    identity = load_series(tmp_path).dicom
    assert identity.keeps_identity and identity.patient_name == PATIENT["PatientName"]
    anonymous = identity.deidentified()
    assert not anonymous.keeps_identity
    assert anonymous == DicomIdentity(modality="CT", series_number="3", series_description="Thorax")
    assert identity_to_json(anonymous) == {"Modality": "CT", "SeriesNumber": "3", "SeriesDescription": "Thorax"}
    assert identity_from_json(identity_to_json(anonymous)) == anonymous


@pytest.mark.parametrize(
    "entry",
    [
        {},
        {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.3"},
        {"Modality": ""},
        {"Modality": "ct scan"},
        {"Modality": "CT", "StudyInstanceUID": ""},
        {"Modality": "CT", "SeriesInstanceUID": "1..3"},
        {"Modality": "CT", "PatientName": "Doe\nJane"},
        {"Modality": "CT", "SeriesNumber": "../1"},
        {"Modality": "CT", "FrameOfReferenceUID": "1.2.x"},
        {"Modality": "CT", "Rows": "4"},
    ],
)
def test_a_deidentified_entry_still_refuses_invalid_values(entry):
    with pytest.raises(MoecFormatError, match="dicom"):
        identity_from_json(entry)


def test_a_deidentified_identity_is_written_under_a_pseudonymous_patient_and_a_new_study(tmp_path):
    series(tmp_path / "ct")
    volume = load_series(tmp_path / "ct")
    anonymous = volume.dicom.deidentified()
    source = digest(b"a .moec file")
    files = write_series(volume, anonymous, tmp_path / "a", ratio=10.0, source_digest=source)
    again = write_series(volume, anonymous, tmp_path / "b", ratio=10.0, source_digest=source)
    other = write_series(volume, anonymous, tmp_path / "c", ratio=10.0, source_digest=digest(b"another .moec file"))
    first = pydicom.dcmread(files[0])
    assert first.PatientName == PSEUDONYM and first.PatientID == f"MOEC-{source[:12]}"
    assert not first.get("PatientBirthDate") and not first.get("PatientSex") and not first.get("AccessionNumber")
    assert first.StudyInstanceUID != STUDY_UID and first.FrameOfReferenceUID != FRAME_UID
    for path in files:  # nothing in any file leads back to the original patient, study or series
        data = path.read_bytes()
        for secret in (STUDY_UID, FRAME_UID, "1.2.3.4.1", "Doe^Jane", "MOEC-0042", "19700101", "ACC123"):
            assert secret.encode() not in data, secret
    # The same file always gives the same study and series; another file other ones.
    second = pydicom.dcmread(again[0])
    assert (second.StudyInstanceUID, second.SeriesInstanceUID, second.PatientID) == (
        first.StudyInstanceUID,
        first.SeriesInstanceUID,
        first.PatientID,
    )
    third = pydicom.dcmread(other[0])
    assert third.StudyInstanceUID != first.StudyInstanceUID and third.PatientID != first.PatientID
    back = load_series(tmp_path / "a")
    np.testing.assert_array_equal(back.data, volume.data)
    assert back.dicom.patient_name == PSEUDONYM and back.dicom.study_uid == first.StudyInstanceUID
    # A full identity is kept as it is.
    kept = pydicom.dcmread(write_series(volume, volume.dicom, tmp_path / "d", ratio=10.0, source_digest=source)[0])
    assert (kept.PatientName, kept.StudyInstanceUID, kept.FrameOfReferenceUID) == (
        PATIENT["PatientName"],
        STUDY_UID,
        FRAME_UID,
    )


# --- memory -----------------------------------------------------------------------------------------


def test_a_series_declaring_more_than_the_limit_is_refused_before_its_pixels_are_read(tmp_path):
    def huge(k, ds):
        ds.Rows, ds.Columns = 40000, 30000  # the pixel data stays a few bytes: nothing could decode it

    series(tmp_path, edit=huge)
    [info] = scan_folder(tmp_path).series
    assert info.voxels == 40000 * 30000 * 4 and info.bits_allocated == 16
    with pytest.raises(
        ResourceLimitError,
        match=r"loading the DICOM series 1\.2\.3\.4\.1 .*\(30000 x 40000 x 4\) "
        r"would need about 67\.1 GiB .*--max-memory 68G",
    ):
        load_series(tmp_path, limit=MemoryLimit(2**30))
    with pytest.raises(DicomError, match="cannot decode the pixels"):  # no limit: the decode says what is wrong
        load_series(tmp_path, limit=MemoryLimit(0))


def test_the_compression_estimate_is_the_larger(tmp_path):
    series(tmp_path)
    [info] = scan_folder(tmp_path).series
    limit = MemoryLimit((load_bytes(info.voxels, 2) + compress_bytes(info.voxels, 2)) // 2)
    assert read_series(info, limit=limit).shape == (6, 5, 4)
    with pytest.raises(ResourceLimitError, match="compressing the DICOM series"):
        load_series(tmp_path, limit=limit, compressing=True)


# --- fuzzing ----------------------------------------------------------------------------------------

#: Header elements a reader trusts, with their VR as written in the file.
FUZZED = {
    "Rows": "US",
    "Columns": "US",
    "BitsAllocated": "US",
    "BitsStored": "US",
    "HighBit": "US",
    "PixelRepresentation": "US",
    "SamplesPerPixel": "US",
    "NumberOfFrames": "IS",
    "SeriesNumber": "IS",
    "SeriesInstanceUID": "UI",
    "StudyInstanceUID": "UI",
    "Modality": "CS",
    "PhotometricInterpretation": "CS",
    "ImagePositionPatient": "DS",
    "ImageOrientationPatient": "DS",
    "PixelSpacing": "DS",
    "RescaleSlope": "DS",
    "RescaleIntercept": "DS",
    "SeriesDescription": "LO",
    "PatientName": "PN",
    "StudyDate": "DA",
}
GARBAGE = [
    b"",
    b"0",
    b"-1",
    b"65535",
    b"1e400",
    b"nan",
    b"inf",
    b"\\",
    b"1\\2",
    b"abc",
    b"\xff\xfe\0",
    b"/../../../../tmp/pwned",
    b"0\\0\\0",
    b"1\\0\\0\\0\\1\\0",
    b"1.2.3",
    b"\0\0",
    b"\x04\0",
    b"\0\x01",
    b"\x10\0",
    b"\x08\0",
]
VALUES = st.one_of(st.none(), st.sampled_from(GARBAGE), st.binary(max_size=24))
MUTATIONS = st.dictionaries(st.sampled_from(sorted(FUZZED)), VALUES, min_size=1, max_size=4)


def _mutate(mutations: dict, where):
    def edit(k, ds):
        if where != "all" and k != where:
            return
        for keyword, value in mutations.items():
            if value is None:
                if keyword in ds:
                    del ds[keyword]
            else:
                raw_element(ds, keyword, FUZZED[keyword], value)

    return edit


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=MUTATIONS, where=st.sampled_from(["all", 0, 1]))
def test_garbage_headers_never_raise_anything_but_a_moec_error(mutations, where):
    with tempfile.TemporaryDirectory() as name, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns of every invalid value it reads
        folder = Path(name) / "series"
        write_dicom_series(folder, small_raw((4, 4, 3)), **oblique_geometry(), edit=_mutate(mutations, where))
        scan = scan_folder(folder)
        assert sum(len(info.files) for info in scan.series) + len(scan.unreadable) + scan.other_files == 3
        for info in scan.series:
            stem = series_stem(info, scan.series)
            assert stem and "/" not in stem and ".." not in stem
            try:
                volume = read_series(info, limit=MemoryLimit(2**26))
            except MoecError:
                continue
            assert volume.shape == (info.columns, info.rows, len(info.files)) and volume.dicom is not None
            assert identity_from_json(identity_to_json(volume.dicom)) == volume.dicom
        try:
            load_series(folder, limit=MemoryLimit(2**26))
        except MoecError:
            pass
