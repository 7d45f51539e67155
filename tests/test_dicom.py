"""DICOM series in and out: real files written by pydicom, read back like the NIfTI of the same voxels."""

from __future__ import annotations

import json
import re

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGLSLossless

from codec.cli import main
from codec.errors import DicomError, MoecFormatError, SeriesChoiceError
from codec.format import moecfile
from codec.format.container import pack_container, unpack_container
from codec.format.dicom_entry import identity_from_json, identity_to_json
from codec.io.dicom_identity import DicomIdentity
from codec.io.load import load_volume

from .conftest import PATIENT, STUDY_UID, dicom_affine, oblique_geometry, write_dicom_series, write_nifti

SHAPE = (24, 20, 12)  # columns, rows, slices
SPACING, GAP = (0.8, 0.7), 2.5
FAST = ["--steps", "20", "--batch", "2048", "--quiet"]


def ct_raw(shape=SHAPE, seed=1) -> np.ndarray:
    """Stored CT values (HU + 1024) with structure, so a short training has something to learn."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    body = (i**2 + j**2 < 0.7) * 1000 + (i**2 + (j - 0.2) ** 2 + k**2 < 0.15) * 400
    return (body + rng.integers(0, 40, size=shape)).astype(np.int16)


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory):
    """An oblique CT series (slope 2, intercept -1024, random file names) and the NIfTI of its voxels."""
    folder = tmp_path_factory.mktemp("dicom")
    geometry = oblique_geometry()
    raw = ct_raw()
    files = write_dicom_series(folder / "ct", raw, spacing=SPACING, slice_gap=GAP, slope=2.0, inter=-1024.0, **geometry)
    affine = dicom_affine(geometry["row_cos"], geometry["col_cos"], geometry["origin"], SPACING, GAP)
    nifti = folder / "ct.nii.gz"
    write_nifti(nifti, raw, affine, slope=2.0, inter=-1024.0)
    return folder / "ct", files, nifti, raw, affine


def test_a_series_reads_like_the_nifti_of_its_voxels(ct_series):
    folder, files, nifti, raw, affine = ct_series
    assert sorted(p.name for p in files) != [p.name for p in files]  # names do not sort like the slices
    volume, reference = load_volume(folder), load_volume(nifti)
    assert volume.shape == SHAPE and volume.stored_dtype == np.int16 and (volume.slope, volume.inter) == (2.0, -1024.0)
    np.testing.assert_array_equal(volume.data, reference.data)  # real units (HU), voxel for voxel
    np.testing.assert_allclose(volume.affine, reference.affine, atol=1e-5)
    np.testing.assert_allclose(volume.spacing, (0.7, 0.8, 2.5), atol=1e-6)  # from positions, not SliceThickness (5)
    assert volume.source_bytes == sum(p.stat().st_size for p in files)
    # Independently of the sort: each file's pixels sit where its own position and orientation put them.
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine
    for path in files[:4]:
        ds = pydicom.dcmread(path)
        k = int(
            np.argmin(
                [
                    np.abs(lps[:3, 3] + s * lps[:3, 2] - np.array(ds.ImagePositionPatient, float)).max()
                    for s in range(SHAPE[2])
                ]
            )
        )
        np.testing.assert_allclose(lps[:3, 3] + k * lps[:3, 2], np.array(ds.ImagePositionPatient, float), atol=1e-4)
        np.testing.assert_array_equal(volume.data[:, :, k], ds.pixel_array.T * 2.0 - 1024.0)
    # One file of the series stands for its series.
    np.testing.assert_array_equal(load_volume(files[0]).data, volume.data)
    assert volume.dicom.patient_id == PATIENT["PatientID"] and volume.dicom.study_uid == STUDY_UID


def test_two_series_in_one_folder_are_listed_and_chosen_by_uid(tmp_path, capsys):
    geometry = oblique_geometry()
    write_dicom_series(tmp_path, ct_raw(), series_uid="1.2.3.4.1", series_number=3, **geometry)
    mr = np.random.default_rng(2).integers(0, 3000, size=(16, 14, 10)).astype(np.uint16)
    write_dicom_series(
        tmp_path, mr, series_uid="1.2.3.4.2", series_number=4, modality="MR", description="T1", seed=5, **geometry
    )
    with pytest.raises(SeriesChoiceError) as choice:
        load_volume(tmp_path)
    assert [s.uid for s in choice.value.series] == ["1.2.3.4.1", "1.2.3.4.2"]
    chosen = load_volume(tmp_path, "1.2.3.4.2")
    assert chosen.shape == (16, 14, 10) and chosen.stored_dtype == np.uint16 and chosen.dicom.modality == "MR"
    np.testing.assert_array_equal(chosen.data, mr)

    assert main(["info", str(tmp_path)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[1].split()[:2] == ["1.2.3.4.1", "CT"] and listing[2].split()[:2] == ["1.2.3.4.2", "MR"]
    assert main(["compress", str(tmp_path), *FAST]) == 1  # nothing chosen: the choices, then one error line
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.split()[0] for line in err[:2]] == ["1.2.3.4.1", "1.2.3.4.2"]
    assert err[2].startswith("moec: error:") and "--series UID" in err[2] and len(err) == 3
    assert main(["compress", str(tmp_path), "--series", "9.9", *FAST]) == 1
    assert "holds no series 9.9" in capsys.readouterr().err


def _spoil(folder, how: str) -> None:
    geometry = oblique_geometry()
    raw = ct_raw()
    if how == "mixed sizes":
        write_dicom_series(folder, raw, **geometry)
        write_dicom_series(folder, ct_raw((24, 18, 1)), seed=9, **{**geometry, "origin": geometry["origin"] + 100})
    elif how == "missing positions":
        write_dicom_series(folder, raw, edit=lambda k, ds: k == 3 and delattr(ds, "ImagePositionPatient"), **geometry)
    elif how == "compressed":

        def jpeg_ls(k, ds):
            ds.file_meta.TransferSyntaxUID = JPEGLSLossless
            ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + bytes(64)])
            ds["PixelData"].VR = "OB"

        write_dicom_series(folder, raw, edit=jpeg_ls, **geometry)
    elif how == "not dicom":
        for name in ("notes.txt", "scan.img"):
            (folder / name).write_bytes(b"not a DICOM file\n" * 20)
    elif how == "missing slice":
        files = write_dicom_series(folder, raw, **geometry)
        next(p for p in files if pydicom.dcmread(p).InstanceNumber == 6).unlink()  # a slice inside the stack
    elif how == "same position":
        write_dicom_series(folder, raw, **geometry)
        write_dicom_series(folder, raw, seed=3, **geometry)  # a second phase under the same series UID


@pytest.mark.parametrize(
    "how,words",
    [
        ("mixed sizes", "mixes image sizes"),
        ("missing positions", "no valid ImagePositionPatient"),
        ("compressed", "JPEG-LS Lossless Image Compression"),
        ("not dicom", "holds no DICOM series (2 file(s)"),
        ("missing slice", "uneven slice spacing"),
        ("same position", "two slices at the same position"),
    ],
)
def test_bad_dicom_input_is_one_clear_line(tmp_path, capsys, how, words):
    _spoil(tmp_path, how)
    with pytest.raises(DicomError, match=re.escape(words)):
        load_volume(tmp_path)
    assert main(["compress", str(tmp_path), *FAST]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("moec: error:") and words in err[0]
    assert not list(tmp_path.parent.glob("*.moec"))


@pytest.fixture(scope="module")
def compressed_ct(ct_series):
    """The CT series compressed with its patient and study kept (--keep-identity)."""
    folder = ct_series[0]
    out = folder.with_name("ct.moec")
    assert main(["compress", str(folder), "--ratio", "10", "--keep-identity", *FAST]) == 0  # default output: beside
    assert out.is_file()
    return out


@pytest.fixture(scope="module")
def deidentified_ct(ct_series, tmp_path_factory):
    """The CT series compressed as by default: the file holds no patient and no study."""
    out = tmp_path_factory.mktemp("deidentified") / "ct.moec"
    assert main(["compress", str(ct_series[0]), "-o", str(out), "--ratio", "10", *FAST]) == 0
    return out


def test_decompress_writes_a_derived_lossy_series_under_the_same_patient_and_study(
    ct_series, compressed_ct, tmp_path, capsys
):
    folder, files, _, _, affine = ct_series
    assert 10 <= 2 * np.prod(SHAPE) / compressed_ct.stat().st_size <= 10.5  # the identity fits the budget
    out, nifti = tmp_path / "derived", tmp_path / "recon.nii.gz"
    assert main(["decompress", str(compressed_ct), "--dicom", str(out), "-o", str(nifti)]) == 0
    assert "derived CT series marked lossy" in capsys.readouterr().out
    written = sorted(out.iterdir())
    assert len(written) == SHAPE[2]
    originals = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    derived = [pydicom.dcmread(p) for p in written]
    first = derived[0]
    assert first.LossyImageCompression == "01" and list(first.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert float(first.LossyImageCompressionRatio) == pytest.approx(moecfile.read(compressed_ct).ratio, abs=0.01)
    assert first.SOPClassUID == originals[0].SOPClassUID  # CT Image Storage
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "AccessionNumber",
        "FrameOfReferenceUID",
        "Modality",
    ):
        assert first.get(keyword) == originals[0].get(keyword), keyword
    assert {d.SeriesInstanceUID for d in derived} == {first.SeriesInstanceUID} != {originals[0].SeriesInstanceUID}
    assert len({d.SOPInstanceUID for d in derived}) == SHAPE[2]
    assert not {d.SOPInstanceUID for d in derived} & {o.SOPInstanceUID for o in originals}
    assert originals[0].SeriesInstanceUID in first.DerivationDescription
    # Read back, the series is the NIfTI reconstruction, placed where the original was.
    series, recon = load_volume(out), load_volume(nifti)
    np.testing.assert_array_equal(series.data, recon.data)
    np.testing.assert_allclose(series.affine, affine, atol=1e-4)
    np.testing.assert_allclose(recon.affine, affine, atol=1e-4)
    assert series.dicom.series_uid == first.SeriesInstanceUID

    # An existing series is replaced with --force only, and never a folder holding anything else.
    assert main(["decompress", str(compressed_ct), "--dicom", str(out)]) == 1
    assert "use --force" in capsys.readouterr().err
    assert main(["decompress", str(compressed_ct), "--dicom", str(out), "--force"]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in written]
    assert main(["decompress", str(compressed_ct), "--dicom", str(folder), "--force"]) == 1  # the original's folder
    assert "MoEC did not write" in capsys.readouterr().err
    assert len(list(folder.iterdir())) == SHAPE[2]


def test_a_file_compressed_by_default_decompresses_under_a_pseudonymous_patient(
    ct_series, deidentified_ct, tmp_path, capsys
):
    folder, files, _, _, affine = ct_series
    original = pydicom.dcmread(files[0], stop_before_pixels=True)
    entry = unpack_container(deidentified_ct.read_bytes()).meta["dicom"]
    assert entry == {"Modality": "CT", "SeriesNumber": "3", "SeriesDescription": "Thorax"}
    assert not moecfile.read(deidentified_ct).meta.dicom.keeps_identity
    out = tmp_path / "derived"
    assert main(["decompress", str(deidentified_ct), "--dicom", str(out)]) == 0
    assert "under a new pseudonymous patient and study" in capsys.readouterr().out
    derived = [pydicom.dcmread(p) for p in sorted(out.iterdir())]
    first = derived[0]
    assert first.PatientName == "MOEC^PSEUDONYM" and re.fullmatch(r"MOEC-[0-9a-f]{12}", first.PatientID)
    assert not first.get("PatientBirthDate") and not first.get("AccessionNumber") and not first.get("StudyDate")
    assert first.StudyInstanceUID != original.StudyInstanceUID
    assert first.FrameOfReferenceUID != original.FrameOfReferenceUID
    assert original.SeriesInstanceUID not in first.DerivationDescription
    assert {d.StudyInstanceUID for d in derived} == {first.StudyInstanceUID}
    series = load_volume(out)
    np.testing.assert_allclose(series.affine, affine, atol=1e-4)


def test_a_file_not_from_dicom_refuses_dicom_output_in_one_line(ct_series, tmp_path, capsys):
    nifti = ct_series[2]
    moec = tmp_path / "from_nifti.moec"
    assert main(["compress", str(nifti), "-o", str(moec), "--ratio", "10", *FAST]) == 0
    assert "dicom" not in unpack_container(moec.read_bytes()).meta
    capsys.readouterr()
    assert main(["decompress", str(moec), "--dicom", str(tmp_path / "series")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not compressed from a DICOM series" in err[0]
    assert not (tmp_path / "series").exists()


HOSTILE = [
    [],
    "CT",
    {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.3"},  # not a record; Modality missing
    {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.3", "Modality": "CT", "PatientAge": "042Y"},
    {"StudyInstanceUID": "1.2.x", "SeriesInstanceUID": "1.3", "Modality": "CT"},
    {"StudyInstanceUID": "1." + "2" * 63, "SeriesInstanceUID": "1.3", "Modality": "CT"},
    {"StudyInstanceUID": 1.2, "SeriesInstanceUID": "1.3", "Modality": "CT"},
    {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "", "Modality": "CT"},
    {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.3", "Modality": "ct scan"},
    {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.3", "Modality": "CT", "StudyDate": "2024-01-31"},
    {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.3", "Modality": "CT", "PatientName": "Doe\nJane"},
    {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.3", "Modality": "CT", "PatientID": "a\\b"},
    {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.3", "Modality": "CT", "PatientID": "x" * 10_000},
    {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.3", "Modality": "CT", "SeriesNumber": True},
    {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.3", "Modality": "CT", "SeriesNumber": "1e3"},
]


@pytest.mark.parametrize("entry", HOSTILE, ids=range(len(HOSTILE)))
def test_a_malformed_dicom_entry_is_a_format_error(compressed_ct, entry):
    container = unpack_container(compressed_ct.read_bytes())
    assert identity_from_json(container.meta["dicom"]) == moecfile.read(compressed_ct).meta.dicom
    hostile = pack_container({**container.meta, "dicom": entry}, container.nifti, container.payload)
    with pytest.raises(MoecFormatError, match="dicom"):
        moecfile.from_bytes(hostile)


def test_the_dicom_entry_holds_only_the_identity_and_round_trips_unicode():
    identity = DicomIdentity("1.2.3", "1.2.4", "MR", patient_name="Müller^Zoë", series_number="7")
    entry = identity_to_json(identity)
    assert entry == {
        "StudyInstanceUID": "1.2.3",
        "SeriesInstanceUID": "1.2.4",
        "Modality": "MR",
        "PatientName": "Müller^Zoë",
        "SeriesNumber": "7",
    }
    assert identity_from_json(json.loads(json.dumps(entry))) == identity


def test_info_says_whether_a_file_holds_the_patient(compressed_ct, deidentified_ct, capsys):
    assert main(["info", str(deidentified_ct)]) == 0
    line = next(t for t in capsys.readouterr().out.splitlines() if t.startswith("dicom"))
    assert "no patient or study in the file (de-identified)" in line and PATIENT["PatientID"] not in line
    assert main(["info", str(compressed_ct)]) == 0
    line = next(t for t in capsys.readouterr().out.splitlines() if t.startswith("dicom"))
    assert "holds the patient's identity" in line and PATIENT["PatientID"] in line and STUDY_UID in line
