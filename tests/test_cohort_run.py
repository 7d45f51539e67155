"""codec.cohort.run as a generator of events, on an engine that compresses nothing (no dask, no
training): the events' order, the manifest after the generator is closed mid-run, a rerun that
starts no engine, the words `moec batch` prints for the events, and an import that changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import codec.cohort.engine as engines
from codec.cli import main
from codec.cohort.jobs import CohortSettings, VolumeJob, VolumeResult
from codec.cohort.manifest import MANIFEST, Manifest
from codec.cohort.run import NOTHING_TO_RUN, Done, Finished, Refused, Started, run
from codec.format.container import pack_container

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = CohortSettings(ratio=6, steps=2)


class FakeCluster:
    """An engine that 'compresses' each volume by writing a well-formed container to its target."""

    described = "a fake engine"

    def __init__(self) -> None:
        self.closed = False

    def results(self, todo: list[VolumeJob], settings: CohortSettings) -> Iterator[VolumeResult]:
        for job in sorted(todo, key=lambda job: job.input):
            data = pack_container({"note": "test"}, b"\0" * 348, b"weights")
            job.target.parent.mkdir(parents=True, exist_ok=True)
            job.target.write_bytes(data)
            yield VolumeResult(
                job.input,
                job.series,
                job.output,
                job.modality,
                "4x4x4",
                len(data),
                6.0,
                30.0,
                0.9,
                1.0,
                "ok",
                "",
                settings.key,
            )

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FakeCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def clusters(monkeypatch) -> list[FakeCluster]:
    started: list[FakeCluster] = []

    def start(todo: list[VolumeJob], engine: engines.Engine) -> FakeCluster:
        started.append(FakeCluster())
        return started[-1]

    monkeypatch.setattr(engines, "start", start)
    return started


def cohort(root: Path) -> Path:
    """Three NIfTI names (never read: the fake engine compresses nothing) and a DICOM file that is not one."""
    source = root / "in"
    (source / "s").mkdir(parents=True)
    for name in ("a", "b", "c"):
        (source / "s" / f"{name}.nii.gz").write_bytes(b"not read")
    (source / "s" / "IM0001.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00garbage" * 3)
    return source


def test_events_come_in_order_and_closing_the_run_stops_its_engine(tmp_path, clusters):
    source, out = cohort(tmp_path), tmp_path / "out"
    events = run(source, out, SETTINGS)
    refused = next(events)
    assert isinstance(refused, Refused) and refused.result.input == "s/IM0001.dcm" and not refused.result.ok
    started = next(events)
    assert started == Started(todo=3, skipped=0, engine=FakeCluster.described)
    first = next(events)
    assert isinstance(first, Finished) and (first.done, first.total) == (1, 3)
    assert (first.mean_ratio, first.mean_psnr) == (6.0, 30.0)
    events.close()
    assert len(clusters) == 1 and clusters[0].closed
    rows = Manifest(out / MANIFEST).rows
    assert set(rows) == {("s/IM0001.dcm", ""), ("s/a.nii.gz", "")}  # what finished before the close

    rest = list(run(source, out, SETTINGS))
    assert [type(event) for event in rest] == [Refused, Started, Finished, Finished, Done]
    summary = rest[-1].summary
    assert (summary.compressed, summary.skipped, summary.failed) == (2, 1, 1) and len(summary.rows) == 4
    assert clusters[-1].closed

    again = list(run(source, out, SETTINGS))  # every volume finished: no engine starts
    assert [type(event) for event in again] == [Refused, Done] and len(clusters) == 2
    assert (again[-1].summary.engine, again[-1].summary.skipped) == (NOTHING_TO_RUN, 3)


def test_moec_batch_says_what_the_events_say(tmp_path, clusters, capsys):
    source, out = cohort(tmp_path), tmp_path / "out"
    assert main(["batch", str(source), "-o", str(out), "--ratio", "6", "--steps", "2"]) == 1  # one failed
    printed = capsys.readouterr()
    lines = printed.err.splitlines()
    assert lines[0].startswith("failed s/IM0001.dcm: IM0001.dcm is not a readable DICOM file")
    assert lines[1:] == [
        "3 volume(s) to compress, on a fake engine",
        "[1/3] ok s/a.nii.gz (NIfTI 4x4x4): 6.0x, PSNR 30.00 dB, SSIM 0.9000, 1 s (cohort: mean 6x, 30.00 dB)",
        "[2/3] ok s/b.nii.gz (NIfTI 4x4x4): 6.0x, PSNR 30.00 dB, SSIM 0.9000, 1 s (cohort: mean 6x, 30.00 dB)",
        "[3/3] ok s/c.nii.gz (NIfTI 4x4x4): 6.0x, PSNR 30.00 dB, SSIM 0.9000, 1 s (cohort: mean 6x, 30.00 dB)",
    ]
    assert "3 compressed in" in printed.out and "on a fake engine" in printed.out and "1 failed" in printed.out
    assert f"manifest: {out / MANIFEST}" in printed.out


def test_quiet_batch_prints_no_progress_only_the_table(tmp_path, clusters, capsys):
    source, out = cohort(tmp_path), tmp_path / "out"
    assert main(["batch", str(source), "-o", str(out), "--ratio", "6", "--steps", "2", "--quiet"]) == 1
    printed = capsys.readouterr()
    assert printed.err == ""
    assert "s/IM0001.dcm" in printed.out and "3 compressed in" in printed.out


def test_importing_the_cohort_changes_no_environment_variable():
    code = (
        "import os; before = dict(os.environ); "
        "import codec.cohort.run, codec.cohort.task, codec.cohort.report, codec.cli.batch; "
        "print(sorted(set(os.environ.items()) ^ set(before.items())))"
    )
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "[]"
