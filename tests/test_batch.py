"""`moec batch`: a real LocalCluster of two worker processes on small volumes, killed and rerun."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from codec.cli import main
from codec.cohort.discover import discover
from codec.cohort.engine import Engine, local_layout
from codec.cohort.jobs import CohortSettings, VolumeJob, VolumeResult
from codec.cohort.manifest import MANIFEST, Manifest
from codec.errors import OutputError
from codec.format import moecfile
from codec.io.load import save_volume
from codec.io.phantom import make_phantom

from .conftest import oblique_geometry, write_dicom_series
from .test_dicom import ct_raw

ROOT = Path(__file__).resolve().parents[1]
SMALL = (24, 20, 12)
#: Short trainings on two local workers: the workers' start (torch's import) is most of a run.
FAST = ["--ratio", "6", "--steps", "20", "--batch", "2048", "--workers", "2"]


def make_cohort(root: Path) -> dict[str, str]:
    """Two NIfTI files and a folder of two DICOM series: four volumes, in nested folders.
    Returns input -> output, as the batch must mirror them."""
    volume, _ = make_phantom(SMALL)
    (root / "site_a").mkdir(parents=True)
    save_volume(volume, root / "site_a" / "phantom.nii.gz")
    save_volume(volume.with_data(volume.data[::-1].copy()), root / "site_a" / "flipped.nii")
    geometry = oblique_geometry()
    write_dicom_series(
        root / "site_b" / "exam",
        ct_raw(SMALL),
        slope=1.0,
        inter=-1024.0,
        series_uid="1.2.3.9.1",
        series_number=2,
        description="Lung",
        **geometry,
    )
    mr = (ct_raw((20, 18, 12), seed=4) * 2).astype(np.uint16)
    write_dicom_series(
        root / "site_b" / "exam",
        mr,
        series_uid="1.2.3.9.2",
        series_number=5,
        modality="MR",
        description="T2 ax",
        seed=7,
        **geometry,
    )
    return {
        "site_a/phantom.nii.gz": "site_a/phantom.moec",
        "site_a/flipped.nii": "site_a/flipped.moec",
        "site_b/exam 1.2.3.9.1": "site_b/exam/S2_Lung.moec",
        "site_b/exam 1.2.3.9.2": "site_b/exam/S5_T2_ax.moec",
    }


def rows_of(out: Path) -> list[dict]:
    path = out / MANIFEST
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def batch_command(source: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "codec.cli", "batch", str(source), "-o", str(out), *FAST, *extra]


def test_a_batch_killed_after_its_first_volume_finishes_the_rest_on_a_rerun(tmp_path):
    source, out = tmp_path / "cohort", tmp_path / "out"
    expected = make_cohort(source)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Its own session, so that killing it kills its worker processes too, as a lost machine would.
    run = subprocess.Popen(
        batch_command(source, out),
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    while not any(r["status"] == "ok" for r in rows_of(out)):
        assert run.poll() is None, run.stderr.read().decode()
        assert time.monotonic() < deadline, "no volume finished"
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    run.stderr.close()
    before = {r["output"]: r for r in rows_of(out) if r["status"] == "ok"}
    assert 1 <= len(before) < 4, "the kill came after every volume had finished: nothing left to rerun"
    stamps = {name: (out / name).stat().st_mtime_ns for name in before}
    for moec in out.rglob("*.moec"):  # atomic writes: whatever is there is a whole file
        if not moec.name.startswith("."):
            moecfile.read(moec)

    again = subprocess.run(batch_command(source, out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{4 - len(before)} volume(s) to compress, {len(before)} already finished" in again.stderr
    rows = rows_of(out)
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows)
    assert {(f"{r['input']} {r['series']}".strip(), r["output"]) for r in rows} == set(expected.items())
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.moec") if not p.name.startswith(".")) == sorted(
        expected.values()
    )
    for name, row in before.items():  # the first volumes were not computed again
        assert (out / name).stat().st_mtime_ns == stamps[name]
        assert next(r for r in rows if r["output"] == name) == row
    for row in rows:
        assert 6 <= float(row["ratio"]) <= 6.3 and int(row["bytes"]) == (out / row["output"]).stat().st_size
    dicom = moecfile.read(out / expected["site_b/exam 1.2.3.9.2"])
    # De-identified by default: no UID that leads back to the original, but the series is the MR one.
    identity = dicom.meta.dicom
    assert (identity.series_uid, identity.modality, identity.series_number) == ("", "MR", "5")
    assert not identity.keeps_identity and dicom.meta.shape == (20, 18, 12)


def test_a_corrupt_file_is_reported_in_the_manifest_and_the_rest_finish(tmp_path, capsys):
    source, out, report = tmp_path / "cohort", tmp_path / "out", tmp_path / "report"
    volume, _ = make_phantom(SMALL)
    (source / "ok").mkdir(parents=True)
    save_volume(volume, source / "ok" / "one.nii.gz")
    write_dicom_series(source / "ok" / "ct", ct_raw(SMALL), slope=1.0, inter=-1024.0, **oblique_geometry())
    (source / "bad").mkdir()
    (source / "bad" / "cut.nii.gz").write_bytes((source / "ok" / "one.nii.gz").read_bytes()[:300])
    (source / "bad" / "IM0001.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00garbage" * 3)
    (source / "bad" / "notes.txt").write_text("not a volume, not a DICOM file: ignored")

    assert main(["batch", str(source), "-o", str(out), *FAST, "--report", str(report)]) == 1  # some failed
    printed = capsys.readouterr().out
    rows = {r["input"]: r for r in rows_of(out)}
    assert set(rows) == {"ok/one.nii.gz", "ok/ct", "bad/cut.nii.gz", "bad/IM0001.dcm"}
    assert rows["ok/one.nii.gz"]["status"] == rows["ok/ct"]["status"] == "ok"
    assert (out / "ok" / "one.moec").is_file() and (out / "ok" / "ct.moec").is_file()
    for name, words in (
        ("bad/cut.nii.gz", "not a readable NIfTI file|is damaged"),
        ("bad/IM0001.dcm", "not a readable DICOM file"),
    ):
        assert rows[name]["status"] == "failed" and re.search(words, rows[name]["error"])
    assert not (out / "bad").exists() or not list((out / "bad").iterdir())
    # The summary lists the failures first, then the volumes by PSNR; the report says the same.
    lines = [line for line in printed.splitlines() if line.startswith(("FAIL", "ok", "low"))]
    assert [line.split()[0] for line in lines] == ["FAIL", "FAIL", "ok", "ok"]
    assert "2 compressed" in printed and "2 failed" in printed
    page = (report / "report.md").read_text()
    assert "`bad/cut.nii.gz`" in page and "**failed**" in page and "cohort.png" in page
    assert (report / "cohort.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_manifest_survives_a_cut_last_line_and_is_never_someone_elses(tmp_path):
    path = tmp_path / MANIFEST
    manifest = Manifest(path)
    job = VolumeJob("a.nii.gz", "", "a.moec", "", tmp_path / "a.nii.gz", tmp_path / "a.moec", 10)
    for name in ("a.nii.gz", "b.nii.gz"):
        manifest.record(
            VolumeResult(
                name,
                "",
                name.replace(".nii.gz", ".moec"),
                "",
                "4x4x4",
                100,
                6.2,
                30.5,
                0.9,
                1.0,
                "ok",
                "",
                CohortSettings().key,
            )
        )
    text = path.read_text()
    path.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 12])  # the last row cut mid-way
    assert set(Manifest(path).rows) == {(job.input, "")}
    (tmp_path / "other.csv").write_text("patient,age\nx,42\n")
    with pytest.raises(OutputError, match="not a moec batch manifest"):
        Manifest(tmp_path / "other.csv")


def test_outputs_mirror_the_tree_and_colliding_outputs_are_told_apart(tmp_path):
    volume, _ = make_phantom(SMALL)
    (tmp_path / "in" / "p1").mkdir(parents=True)
    save_volume(volume, tmp_path / "in" / "p1" / "ct.nii.gz")
    write_dicom_series(tmp_path / "in" / "scan", ct_raw(SMALL), **oblique_geometry())
    jobs, broken = discover(tmp_path / "in", tmp_path / "in" / "out")
    assert [(j.input, j.output) for j in jobs] == [("p1/ct.nii.gz", "p1/ct.moec"), ("scan", "scan.moec")]
    assert not broken and jobs[1].voxels == int(np.prod(SMALL))
    # A DICOM folder p1/ct beside p1/ct.nii.gz: both would be p1/ct.moec; each gets a suffix of its own,
    # the same on every run.
    write_dicom_series(tmp_path / "in" / "p1" / "ct", ct_raw(SMALL), **oblique_geometry())
    jobs, broken = discover(tmp_path / "in", tmp_path / "out")
    outputs = {j.input: j.output for j in jobs}
    assert not broken and len(set(outputs.values())) == 3 and outputs["scan"] == "scan.moec"
    assert all(re.fullmatch(r"p1/ct_[0-9a-f]{8}\.moec", outputs[name]) for name in ("p1/ct", "p1/ct.nii.gz"))
    assert {j.input: j.output for j in discover(tmp_path / "in", tmp_path / "out")[0]} == outputs


def test_local_workers_times_threads_fit_the_cores_and_the_memory():
    def jobs(n, voxels=24 * 20 * 12):
        return [
            VolumeJob(f"{i}.nii", "", f"{i}.moec", "", Path(f"/{i}.nii"), Path(f"/{i}.moec"), voxels) for i in range(n)
        ]

    gib = 2**30
    # One thread per worker, one worker per core.
    assert local_layout(jobs(8), Engine(), n_cores=2, memory=24 * gib) == (2, 1)
    assert local_layout(jobs(1), Engine(), n_cores=16, memory=64 * gib) == (1, 1)  # no more workers than volumes
    assert local_layout(jobs(8), Engine(threads=4), n_cores=16, memory=64 * gib) == (4, 4)
    assert local_layout(jobs(8), Engine(workers=3), n_cores=12, memory=64 * gib) == (3, 4)
    # 512^3 volumes at 8 GiB: one at a time, whatever the cores.
    assert local_layout(jobs(8, 512**3), Engine(), n_cores=64, memory=8 * gib) == (1, 1)
