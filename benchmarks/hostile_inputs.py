"""Hostile and damaged inputs against the real `moec` command: each input is built in a temporary folder,
`moec` runs on it in a child process (a timeout, its peak resident memory measured), and the outcome
is checked against what the codec must do with it: refuse it in one line of words, record it as a
failed row of a batch's manifest, or handle it (compress it, keep names inside the output folder,
keep the patient out of the file). Prints a table and writes benchmarks/results/hostile_inputs.json.

The inputs are those of the security review: a traversal in a DICOM SeriesNumber, a .moec bomb, a
scaled decode past the memory limit, a network that takes hours, a NIfTI gzip bomb, bit flips in a
.nii.gz, an empty DICOM Rows, a formula as a file name, UID-less and study-less DICOM series, the
default privacy of a DICOM input, a manifest with a byte-order mark, a damaged finished output,
stale temporary files, impossible shapes and slopes, an escape sequence in a .moec header and a
report whose volume names break Markdown. Each is small, so the whole run takes minutes.

An outcome is "refused in words" (exit status 1, one `moec: error:` line, no traceback), "row in
manifest" (a batch records the input as a failed row and goes on), "handled" (the command did what
a good input gets, with the checks of that row) or FAILED (the checks that did not hold are listed
under the table and in the JSON). The message column is the child's `moec: error:` line, else the
line of its output that the row checks (a warning, a manifest cell, a summary), else the first line
of its standard error (the JSON keeps that first line in every row too). Peak memory is
the child's own ru_maxrss; for `moec batch` its dask workers' (the largest child's) too, if larger.

    .venv/bin/python benchmarks/hostile_inputs.py [--only 2,5] [--timeout 120] [--keep]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import ROOT, save

from codec.format.container import unpack_container

sys.path.insert(0, str(ROOT))  # the builders of hostile inputs the tests use: `tests` is no installed package
from tests.conftest import PATIENT, STUDY_UID, write_nifti  # noqa: E402
from tests.hostile import (  # noqa: E402
    DIM,
    MIB,
    SCL_SLOPE,
    ct_raw,
    files_under,
    flipped,
    forged_moec,
    patched,
    quiet_series,
    spoil_first_slice,
    traversal_exam,
    wide_network,
    without,
    write_gzip_bomb,
    write_small_gz,
    write_small_nii,
)

TIMEOUT = 120.0
#: Short training: the hostile inputs are about what is refused or written, not about quality.
FAST = ["--steps", "20", "--batch", "2048", "--quiet"]
#: Runs `codec.cli` as `python -m codec.cli` does, and writes the process's own peak resident memory
#: and its largest reaped child's (a batch's dask workers) to the file named by the first argument,
#: whatever way the command ends.
WRAPPER = (
    "import resource, runpy, sys\n"
    "side = sys.argv.pop(1)\n"
    "sys.argv[0] = 'moec'\n"
    "try:\n"
    "    runpy.run_module('codec.cli', run_name='__main__', alter_sys=True)\n"
    "finally:\n"
    "    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
    "    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "    with open(side, 'w') as handle:\n"
    "        handle.write(f'{own} {kids}')\n"
)
SCRATCH: Path  # the temporary folder every case builds under, set by main


# --- running moec ----------------------------------------------------------------------------------


@dataclass
class Run:
    command: str
    rc: int | None
    stdout: str
    stderr: str
    peak_mb: float | None
    children_peak_mb: float | None
    seconds: float
    timed_out: bool


def moec(cwd: Path, *args: str, timeout: float | None = None) -> Run:
    """`moec ARGS` in `cwd` (paths in ARGS relative to it, so the command reads as typed)."""
    side = Path(tempfile.mkstemp(prefix="rss-", dir=SCRATCH)[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_WAIT_POLICY": "PASSIVE",
    }
    start = time.perf_counter()
    # A session of its own: on a timeout the whole group goes, a batch's dask workers included.
    child = subprocess.Popen(
        [sys.executable, "-c", WRAPPER, str(side), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    timed_out = False
    try:
        out, err = child.communicate(timeout=timeout or TIMEOUT)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(child.pid, signal.SIGKILL)
        out, err = child.communicate()
    seconds = time.perf_counter() - start
    own = kids = None
    text = side.read_text().split() if side.exists() else []
    if len(text) == 2:
        own, kids = (int(v) / 1024 for v in text)  # Linux reports ru_maxrss in KiB
    side.unlink(missing_ok=True)
    # surrogateescape keeps every byte the child wrote, an escape sequence included, for the checks.
    return Run(
        shlex.join(["moec", *args]),
        None if timed_out else child.returncode,
        out.decode("utf-8", "surrogateescape"),
        err.decode("utf-8", "surrogateescape"),
        own,
        kids or None,
        seconds,
        timed_out,
    )


def error_line(run: Run) -> str:
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    return next((line for line in lines if line.startswith("moec: error")), lines[0] if lines else "")


def row(
    item: str, case: str, run: Run, outcome: str, checks: list[tuple[str, bool]], message: str = "", **extra
) -> dict:
    """One row of the table: `outcome` if every check holds, else FAILED with those that did not."""
    failed = [what for what, ok in checks if not ok]
    if run.timed_out:
        failed.insert(0, f"timed out after {run.seconds:.0f} s")
    return {
        "item": item,
        "input": case,
        "command": run.command,
        "rc": run.rc,
        "message": next((x for x in run.stderr.splitlines() if x.startswith("moec: error")), "")
        or message
        or error_line(run),
        "stderr_first_line": next(iter(run.stderr.splitlines()), ""),
        "peak_mb": run.peak_mb,
        "children_peak_mb": run.children_peak_mb,
        "seconds": run.seconds,
        "outcome": "FAILED" if failed else outcome,
        "expected": outcome,
        "checks": [what for what, _ in checks],
        "failed_checks": failed,
        **extra,
    }


def refusal(run: Run, pattern: str) -> list[tuple[str, bool]]:
    """The checks of a refusal in words: exit 1, one `moec: error:` line saying `pattern`, no traceback."""
    errors = [line for line in run.stderr.splitlines() if line.startswith("moec: error")]
    return [
        ("exit status 1", run.rc == 1),
        ("no traceback", "Traceback" not in run.stderr),
        ("one moec: error line", len(errors) == 1),
        (f"says /{pattern}/", bool(errors) and re.search(pattern, errors[0]) is not None),
    ]


def worked(run: Run) -> list[tuple[str, bool]]:
    return [("exit status 0", run.rc == 0), ("no traceback", "Traceback" not in run.stderr)]


def batch(where: Path, *extra: str, out: str = "out") -> Run:
    """`moec batch in -o OUT --ratio 6 EXTRA` in `where`, with the short training."""
    return moec(where, "batch", "in", "-o", out, "--ratio", "6", *extra, *FAST)


#: A batch's summary line: compressed, finished before (if any) and failed.
SUMMARY = re.compile(r"^(\d+) compressed.*?(?:; (\d+) finished before)?; (\d+) failed", re.M)


def manifest_rows(out: Path) -> list[dict]:
    path = out / "manifest.csv"
    if not path.exists():
        return []
    return list(csv.DictReader(io.StringIO(path.read_bytes().decode("utf-8-sig"), newline="")))


def folder(name: str) -> Path:
    path = SCRATCH / name
    path.mkdir(parents=True)
    return path


# --- building inputs -------------------------------------------------------------------------------


def ct_nifti(path: Path, shape=(24, 20, 12), seed: int = 0) -> Path:
    """A small CT-like volume (int16, intercept -1024) written with nibabel, as a converter would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_nifti(path, ct_raw(shape, seed + 1), np.diag([0.8, 0.7, 2.5, 1.0]), inter=-1024.0)
    return path


def named_beside_plain(case: str, name: str, seeds: tuple[int, int]) -> Path:
    """The case's folder, its `in` holding two CT NIfTIs: one at `name` (the hostile one), `plain.nii.gz`."""
    where = folder(case)
    ct_nifti(where / "in" / name, seed=seeds[0])
    ct_nifti(where / "in" / "plain.nii.gz", seed=seeds[1])
    return where


#: The axial geometry of the benchmark's DICOM series (conftest.write_dicom_series is oblique unless told).
AXIAL = {"row_cos": (1.0, 0.0, 0.0), "col_cos": (0.0, 1.0, 0.0), "origin": (-100.0, -90.0, 20.0)}


def ct_series(
    where: Path, raw: np.ndarray | None = None, *, seed: int = 0, inter: float = -1024.0, **options
) -> list[Path]:
    """`raw` (ct_raw's voxels by default) as an axial DICOM series of one file per slice under random
    names, as a scanner writes it (tests.hostile.quiet_series); `edit=(k, ds)` may spoil slice k."""
    raw = ct_raw(seed=seed + 1) if raw is None else raw
    return quiet_series(where, raw, seed=seed, inter=inter, **{**AXIAL, **options})


def small_moec() -> Path:
    """A real small .moec (a CT-like 32 x 28 x 16 int16 volume), the file the .moec cases forge."""
    where = folder("base")
    ct_nifti(where / "ct.nii.gz", (32, 28, 16))
    run = moec(where, "compress", "ct.nii.gz", "-o", "ct.moec", "--ratio", "10", "--experts", "4", *FAST)
    if run.rc != 0:
        raise SystemExit(f"could not make the base .moec file:\n{run.stderr}")
    return where / "ct.moec"


# --- the cases -------------------------------------------------------------------------------------


def case_traversal() -> list[dict]:
    where = folder("01-traversal")
    unique = f"moec-hostile-{uuid.uuid4().hex[:12]}"
    target = Path("/tmp") / unique
    traversal = f"/../../../../../../tmp/{unique}/pwned"

    traversal_exam(where / "in" / "exam", traversal)
    (where / "nest").mkdir()
    before = files_under(where)
    run = batch(where, out="nest/out")
    out = where / "nest" / "out"
    rows = manifest_rows(out)
    written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    failed = [r for r in rows if r["status"] != "ok"]
    checks = [
        ("nothing at the traversal's target", not target.exists()),
        ("OUT's parent holds only OUT", sorted(p.name for p in (where / "nest").iterdir()) == ["out"]),
        ("the tree outside OUT unchanged", files_under(where, leaving=out) == before),
        ("every file written is inside OUT", all(out.resolve() in p.resolve().parents for p in written)),
        ("two rows in the manifest", len(rows) == 2),
        ("exit 0, or 1 with a failed row", run.rc == 0 or (run.rc == 1 and bool(failed))),
        ("no traceback", "Traceback" not in run.stderr),
    ]
    outputs = ", ".join(r["output"] for r in rows)
    return [
        row(
            "1",
            "DICOM SeriesNumber '/../../../../../../tmp/<unique>/pwned'",
            run,
            "row in manifest" if failed else "handled",
            checks,
            message=f"outputs: {outputs}",
            outputs=[r["output"] for r in rows],
        )
    ]


def case_moec_bomb(base: Path) -> list[dict]:
    where = folder("02-moec-bomb")
    bomb = forged_moec(base, where / "bomb.moec", shape=(2048, 1024, 1024))
    size = bomb.stat().st_size
    name = f".moec of {size / 1024:.1f} KB declaring 2048 x 1024 x 1024"
    run = moec(where, "decompress", "bomb.moec", "-o", "x.nii.gz", "--max-memory", "2G")
    checks = refusal(run, r"2048 x 1024 x 1024.*GiB of memory.*--max-memory")
    # The grid's int16 values alone would be 4 GiB: a refusal from the header holds a small fraction.
    checks += [
        ("nothing written", sorted(p.name for p in where.iterdir()) == ["bomb.moec"]),
        ("peak RSS under 1 GiB", run.peak_mb is not None and run.peak_mb < 1024),
    ]
    rows = [row("2a", name, run, "refused in words", checks, file_bytes=size)]
    run = moec(where, "info", "bomb.moec")
    decode = next((line for line in run.stdout.splitlines() if line.startswith("decode ")), "")
    checks = worked(run) + [("a decode line with the memory estimate", "GiB of memory" in decode)]
    rows.append(row("2b", name, run, "handled", checks, message=decode))
    return rows


def case_scale(base: Path) -> list[dict]:
    where = folder("03-scale")
    shutil.copy(base, where / "ct.moec")
    run = moec(where, "decompress", "ct.moec", "-o", "x8.nii.gz", "--scale", "8", "--max-memory", "64M")
    checks = refusal(run, r"256 x 224 x 128.*--max-memory") + [("nothing written", not (where / "x8.nii.gz").exists())]
    return [row("3", "decompress --scale 8 of a 32 x 28 x 16 file, --max-memory 64M", run, "refused in words", checks)]


def case_time_bomb(base: Path) -> list[dict]:
    where = folder("04-time-bomb")
    # About a million multiply-adds a voxel over a 512^3 grid, in a file of two megabytes.
    slow = forged_moec(base, where / "slow.moec", shape=(512, 512, 512), model=wide_network())
    run = moec(where, "decompress", "slow.moec", "-o", "slow.nii.gz")
    checks = refusal(run, r"would take about .* h on this machine.*--max-decode-minutes")
    checks.append(("nothing written", not (where / "slow.nii.gz").exists()))
    return [
        row(
            "4",
            f"huge network over 512^3 ({slow.stat().st_size / MIB:.1f} MB .moec)",
            run,
            "refused in words",
            checks,
            file_bytes=slow.stat().st_size,
        )
    ]


def case_gzip_bomb() -> list[dict]:
    where = folder("05-gzip-bomb")
    # 1 GiB of zeros as 1024 gzip members of 1 MiB, compressed once and repeated (a gzip file may
    # hold several members, RFC 1952): about a kilobyte a mebibyte.
    bomb = write_gzip_bomb(where / "bomb.nii.gz", (1024, 1024, 1024), 1024)
    name = f"gzip bomb: {bomb.stat().st_size / MIB:.1f} MB .nii.gz of 1024^3 uint8"
    rows = []
    for item, extra in (("5a", []), ("5b", ["--max-memory", "1G"])):
        run = moec(where, "compress", "bomb.nii.gz", "-o", "bomb.moec", *extra, *FAST)
        checks = refusal(run, r"1024 x 1024 x 1024 uint8.*--max-memory")
        # Inflating it would hold the whole gibibyte: the refusal comes from the header.
        checks += [
            ("nothing written", not (where / "bomb.moec").exists()),
            ("peak RSS under 700 MB", run.peak_mb is not None and run.peak_mb < 700),
        ]
        rows.append(row(item, name, run, "refused in words", checks))
    return rows


def case_bit_flips() -> list[dict]:
    where = folder("06-bit-flips")
    write_small_gz(where / "small.nii.gz")
    good = (where / "small.nii.gz").read_bytes()
    reference = gzip.decompress(good)
    rng = np.random.default_rng(20)
    # The gzip member's own header is 10 bytes (nibabel writes no name) and its trailer 8: the
    # flips land in the deflate data between.
    positions = sorted(rng.choice(np.arange(10, len(good) - 8), size=20, replace=False).tolist())
    flips, runs, refused, problems = [], [], 0, []
    for n, position in enumerate(positions):
        bit = int(rng.integers(8))
        damaged = flipped(good, position, 1 << bit)
        name = f"flip{n:02d}.nii.gz"
        (where / name).write_bytes(damaged)
        try:  # what an independent reader makes of it: damaged, or the very same voxels
            intact = gzip.decompress(damaged) == reference
        except (OSError, EOFError, zlib.error):
            intact = False
        run = moec(where, "compress", name, "-o", f"flip{n:02d}.moec", "--ratio", "4", *FAST)
        runs.append(run)
        said = error_line(run)
        if run.rc == 1 and "damaged" in said and "Traceback" not in run.stderr:
            refused += 1
            ok = not intact
        else:
            ok = run.rc == 0 and intact and "Traceback" not in run.stderr
        if not ok:
            problems.append(f"flip at byte {position} bit {bit}: exit {run.rc}, {said or run.stderr[-200:]!r}")
        flips.append(
            {
                "byte": position,
                "bit": bit,
                "rc": run.rc,
                "message": said,
                "intact_for_gzip": intact,
                "peak_mb": run.peak_mb,
                "seconds": run.seconds,
            }
        )
    summary = Run(
        f"moec compress flipNN.nii.gz -o flipNN.moec --ratio 4 {' '.join(FAST)}  (x{len(positions)})",
        1 if refused else 0,
        "",
        "",
        max((r.peak_mb or 0) for r in runs),
        None,
        sum(r.seconds for r in runs),
        any(r.timed_out for r in runs),
    )
    checks = [
        ("each flip refused as damaged, or (zlib agreeing) read as the same voxels", not problems),
        ("at least 18 of 20 refused", refused >= len(positions) - 2),
    ]
    result = row(
        "6",
        f"{len(positions)} bit flips in a {len(good)}-byte .nii.gz",
        summary,
        "refused in words" if refused == len(positions) else "handled",
        checks,
        message=f"{refused} of {len(positions)} refused as damaged; e.g. "
        f"{next((f['message'] for f in flips if f['message']), '').removeprefix('moec: error: ')}",
        flips=flips,
        problems=problems,
    )
    result["rc"] = sorted({r.rc for r in runs}, key=str)
    return [result]


def case_empty_rows() -> list[dict]:
    where = folder("07-empty-rows")
    exam = where / "in" / "exam"
    ct_series(exam)
    spoilt = ct_series(exam, series_uid="1.2.3.4.9", series_number=9, seed=4, edit=spoil_first_slice("Rows", "US", b""))
    import pydicom

    bad = next(p for p in spoilt if pydicom.dcmread(p, stop_before_pixels=True, force=True).InstanceNumber == 1)
    run = moec(where, "info", "in/exam")
    listed = f"unreadable: {bad.name}: Rows is empty"
    line = next((x for x in run.stdout.splitlines() if "unreadable" in x), "")
    checks = worked(run) + [
        ("lists the good series", "1.2.3.4.1" in run.stdout),
        (f"says '{listed}'", listed in run.stdout),
    ]
    rows = [
        row("7a", "DICOM slice with an empty Rows, beside a good series", run, "handled", checks, message=line.strip())
    ]
    run = batch(where)
    manifest = manifest_rows(where / "out")
    failed = [r for r in manifest if r["status"] != "ok"]
    ok = [r for r in manifest if r["status"] == "ok"]
    checks = [
        ("exit status 1 (a failed row)", run.rc == 1),
        ("no traceback", "Traceback" not in run.stderr),
        (
            "one failed row, naming the file",
            len(failed) == 1 and bad.name in failed[0]["input"] and "Rows is empty" in failed[0]["error"],
        ),
        ("both series compressed", len(ok) == 2 and all((where / "out" / r["output"]).is_file() for r in ok)),
    ]
    rows.append(
        row(
            "7b",
            "DICOM slice with an empty Rows, beside a good series",
            run,
            "row in manifest",
            checks,
            message=failed[0]["error"] if failed else "",
        )
    )
    return rows


def case_manifest_and_resume() -> list[dict]:
    """Items 8, 12, 13 and 14 on one output folder: a run, then reruns after each spoiling."""
    # "/" cannot be in a file name: this is the folder `=HYPERLINK("http:` holding `x","y").nii.gz`,
    # so the input path the manifest records is the formula (its "//" one "/").
    hostile = '=HYPERLINK("http://x","y").nii.gz'
    where = named_beside_plain("08-formula", hostile, (1, 2))
    expected = "'" + (Path("in") / hostile).relative_to("in").as_posix()
    out = where / "out"
    run = batch(where)
    manifest = manifest_rows(out)
    cell = next((r["input"] for r in manifest if "HYPERLINK" in r["input"]), "")
    raw = (out / "manifest.csv").read_text() if (out / "manifest.csv").exists() else ""
    checks = worked(run) + [
        ("two ok rows", len(manifest) == 2 and all(r["status"] == "ok" for r in manifest)),
        ("the cell is the path behind a '", cell == expected),
        ("no cell of the file starts with =", not re.search(r'(^|,)"?=', raw, re.M)),
    ]
    rows = [row("8", f"NIfTI at in/{hostile}", run, "handled", checks, message=f"manifest cell: {cell}")]

    # A spreadsheet saves the manifest with a byte-order mark and CRLF line ends.
    path = out / "manifest.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    run = batch(where)
    summary = SUMMARY.search(run.stdout)
    checks = worked(run) + [
        ("nothing recompressed, both finished before", summary is not None and summary[1] == "0" and summary[2] == "2")
    ]
    rows.append(
        row(
            "12",
            "manifest.csv saved with a UTF-8 BOM and CRLF",
            run,
            "handled",
            checks,
            message=summary[0] if summary else "",
        )
    )

    plain = out / next((r["output"] for r in manifest if r["input"] == "plain.nii.gz"), "plain.moec")
    damaged = bytearray(plain.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    plain.write_bytes(bytes(damaged))
    run = batch(where)
    summary = SUMMARY.search(run.stdout)
    try:
        unpack_container(plain.read_bytes())
        whole = True
    except Exception:
        whole = False
    checks = worked(run) + [
        (
            "the damaged one recompressed, the other skipped",
            summary is not None and summary[1] == "1" and summary[2] == "1",
        ),
        ("the output whole again", whole),
    ]
    rows.append(
        row(
            "13",
            "finished .moec with one bit flipped (same size)",
            run,
            "handled",
            checks,
            message=summary[0] if summary else "",
        )
    )

    stale = [plain.parent / f".{plain.name}.abc12_xy.part.moec", out / ".manifest.csv.zz9_8765.part.csv"]
    for part in stale:
        part.write_bytes(b"left by a killed run")
    run = batch(where)
    checks = worked(run) + [("the stale .part files removed", not any(p.exists() for p in stale))]
    summary = re.search(r"^\d+ compressed.*", run.stdout, re.M)
    rows.append(
        row(
            "14",
            "stale .part files of a killed run",
            run,
            "handled",
            checks,
            message=f"{len(stale)} .part files removed; {summary[0]}" if summary and checks[-1][1] else "",
        )
    )
    return rows


def case_no_series_uid() -> list[dict]:
    where = folder("09-no-series-uid")
    ct_series(where / "in" / "anon", edit=without("SeriesInstanceUID"))
    run = moec(where, "compress", "in/anon", "-o", "anon.moec", "--ratio", "6", *FAST)
    warned = next((x for x in run.stderr.splitlines() if "SeriesInstanceUID" in x), "")
    checks = worked(run) + [
        ("a warning names the missing UID", bool(warned)),
        ("the file written", (where / "anon.moec").is_file()),
    ]
    rows = [row("9a", "DICOM slices without SeriesInstanceUID", run, "handled", checks, message=warned)]
    run = batch(where)
    manifest = manifest_rows(where / "out")
    checks = worked(run) + [
        (
            "one ok row",
            len(manifest) == 1 and manifest[0]["status"] == "ok" and (where / "out" / manifest[0]["output"]).is_file(),
        )
    ]
    rows.append(
        row(
            "9b",
            "DICOM slices without SeriesInstanceUID",
            run,
            "handled",
            checks,
            message=f"row: {manifest[0]['output']} {manifest[0]['status']}" if manifest else "",
        )
    )
    return rows


def compressed_series(case: str, item: str, what: str, **options) -> tuple[Path, dict]:
    """The case's folder with a CT series in `ct` (ct_series with `options`) compressed to `ct.moec`,
    and the row of that compression: handled if the file is written."""
    where = folder(case)
    ct_series(where / "ct", **options)
    run = moec(where, "compress", "ct", "-o", "ct.moec", "--ratio", "6", *FAST)
    return where, row(
        item,
        what,
        run,
        "handled",
        worked(run) + [("the file written", (where / "ct.moec").is_file())],
        message=next(iter(run.stdout.splitlines()), ""),
    )


def case_no_study_uid() -> list[dict]:
    import pydicom

    from codec.io.dicom import PSEUDONYM

    where, compressed = compressed_series(
        "10-no-study-uid", "10a", "DICOM series without StudyInstanceUID", edit=without("StudyInstanceUID")
    )
    rows = [compressed]
    run = moec(where, "decompress", "ct.moec", "--dicom", "back")
    written = sorted((where / "back").rglob("*")) if (where / "back").exists() else []
    written = [p for p in written if p.is_file()]
    first = pydicom.dcmread(written[0]) if written else None
    checks = worked(run) + [
        ("12 slices written", len(written) == 12),
        (
            "a pseudonymous patient",
            first is not None and str(first.PatientName) == PSEUDONYM and str(first.PatientID).startswith("MOEC-"),
        ),
        (
            "a new study UID",
            first is not None and bool(first.get("StudyInstanceUID")) and first.StudyInstanceUID != STUDY_UID,
        ),
    ]
    message = (
        f"PatientName {first.PatientName}, PatientID {first.PatientID}, study {first.StudyInstanceUID}"
        if first is not None
        else ""
    )
    rows.append(row("10b", "DICOM series without StudyInstanceUID", run, "handled", checks, message=message))
    return rows


def case_privacy() -> list[dict]:
    where, compressed = compressed_series("11-privacy", "11a", "DICOM series with a patient, default settings")
    rows = [compressed]
    run = moec(where, "info", "ct.moec")
    said = next((x for x in run.stdout.splitlines() if x.startswith("dicom")), "")
    data = (where / "ct.moec").read_bytes() if (where / "ct.moec").exists() else b""
    try:
        header = json.dumps(unpack_container(data).meta)
    except Exception:
        header = ""
    # PatientSex, one letter, would be found in any file's bytes.
    secrets = [*(v for k, v in PATIENT.items() if k != "PatientSex"), STUDY_UID, "ACC123"]
    checks = worked(run) + [
        ("info says de-identified", "de-identified" in said),
        ("the inflated header readable", bool(header)),
        ("no PatientName or PatientID key in it", "PatientName" not in header and "PatientID" not in header),
        (
            "no patient value, study UID or accession number in it or in the bytes",
            not any(s in header or s.encode() in data for s in secrets),
        ),
    ]
    rows.append(row("11b", "DICOM series with a patient, default settings", run, "handled", checks, message=said))
    return rows


def case_flat_and_negative() -> list[dict]:
    where = folder("15-shapes")
    rows = []
    for item, shape, pattern in (("15a", (1, 1, 1), r"single voxel"), ("15b", (1, 40, 40), r"one voxel along axis 0")):
        name = f"flat{'x'.join(map(str, shape))}.nii.gz"
        write_nifti(where / name, np.ones(shape, dtype=np.int16), np.eye(4))
        run = moec(where, "compress", name, *FAST)
        rows.append(
            row(item, f"NIfTI of shape {'x'.join(map(str, shape))}", run, "refused in words", refusal(run, pattern))
        )
    source = write_small_nii(where / "small.nii")
    patched(source, where / "negative.nii", dim=(DIM, "8h", [3, -8, 7, 6, 1, 1, 1, 1]))  # dim[1] = -8
    run = moec(where, "compress", "negative.nii", *FAST)
    rows.append(
        row(
            "15c", "NIfTI with dim[1] = -8", run, "refused in words", refusal(run, r"negative size \(-8\) along axis 0")
        )
    )
    return rows


def case_tiny_slope() -> list[dict]:
    where = folder("16-slope")
    source = write_small_nii(where / "small.nii")
    patched(source, where / "slope.nii", slope=(SCL_SLOPE, "f", 1e-40))  # a float32 denormal
    run = moec(where, "compress", "slope.nii", *FAST)
    return [
        row(
            "16",
            "NIfTI with scl_slope 1e-40",
            run,
            "refused in words",
            refusal(run, r"slope .* is beyond what MoEC computes")
            + [("nothing written", not (where / "slope.moec").exists())],
        )
    ]


def case_made_by(base: Path) -> list[dict]:
    where = folder("17-made-by")
    forged_moec(base, where / "forged.moec", made_by={"moec": "0.1.0\x1b]0;pwned\x07"})
    run = moec(where, "info", "forged.moec")
    checks = refusal(run, r"made_by entry") + [("no ESC byte in the output", "\x1b" not in run.stdout + run.stderr)]
    return [row("17", "made_by with a terminal title escape (ESC ] 0;pwned BEL)", run, "refused in words", checks)]


def case_report_names() -> list[dict]:
    odd = "a|b\nc.nii.gz"
    where = named_beside_plain("18-report", odd, (3, 4))
    run = batch(where, "--report", "report")
    md = where / "report" / "report.md"
    lines = md.read_text().split("\n") if md.exists() else []
    # The report holds a table by modality first; the volumes' table is the one headed "volume".
    header = next((i for i, x in enumerate(lines) if x.startswith("|") and "| volume |" in x), None)
    separator = header + 1 if header is not None and re.fullmatch(r"\|(-+:?\|)+", lines[header + 1]) else None
    volume_rows = []
    if separator is not None:
        for line in lines[separator + 1 :]:
            if not line.startswith("|"):
                break
            volume_rows.append(line)
    columns = lines[separator].count("|") if separator is not None else 0
    shown = next((x for x in volume_rows if "a\\|b" in x), "")
    checks = worked(run) + [
        ("report.md written", md.exists()),
        ("two volume rows in the table", len(volume_rows) == 2),
        (
            "every row has the table's cells",
            bool(volume_rows) and all(x.replace("\\|", "").count("|") == columns for x in volume_rows),
        ),
        ("the name shown escaped, on one line", bool(shown)),
    ]
    cell = next((c.strip() for c in re.split(r"(?<!\\)\|", shown) if "a\\|b" in c), "")
    return [
        row(
            "18",
            "NIfTI named 'a|b<newline>c.nii.gz' in a batch --report",
            run,
            "handled",
            checks,
            message=f"report cell: {cell}",
        )
    ]


CASES = {
    "1": lambda base: case_traversal(),
    "2": case_moec_bomb,
    "3": case_scale,
    "4": case_time_bomb,
    "5": lambda base: case_gzip_bomb(),
    "6": lambda base: case_bit_flips(),
    "7": lambda base: case_empty_rows(),
    "8": lambda base: case_manifest_and_resume(),  # with 12, 13 and 14: reruns of the same batch
    "9": lambda base: case_no_series_uid(),
    "10": lambda base: case_no_study_uid(),
    "11": lambda base: case_privacy(),
    "15": lambda base: case_flat_and_negative(),
    "16": lambda base: case_tiny_slope(),
    "17": case_made_by,
    "18": lambda base: case_report_names(),
}


def short(text: str, width: int = 90) -> str:
    # A pipe the text already escapes (a report cell) stays as it is; any other would split the cell.
    text = re.sub(r"(?<!\\)\|", r"\\|", text.removeprefix("moec: error: ")).replace("\x1b", "\\x1b")
    return text if len(text) <= width else text[: width - 1] + "…"


def main() -> None:
    global SCRATCH, TIMEOUT
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated case numbers (of " + ", ".join(CASES) + ")")
    parser.add_argument("--timeout", type=float, default=TIMEOUT, help="seconds a command may run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and print its path")
    args = parser.parse_args()
    TIMEOUT = args.timeout
    chosen = [c for c in args.only.split(",") if c] or list(CASES)
    unknown = [c for c in chosen if c not in CASES]
    if unknown:
        raise SystemExit(f"no case {', '.join(unknown)} (cases: {', '.join(CASES)})")
    started = time.perf_counter()
    SCRATCH = Path(tempfile.mkdtemp(prefix="moec-hostile-"))
    rows: list[dict] = []
    try:
        base = small_moec() if {"2", "3", "4", "17"} & set(chosen) else None
        for key in chosen:
            print(f"case {key} ...", file=sys.stderr, flush=True)
            try:
                rows += CASES[key](base)
            except Exception as exc:  # a broken case is a FAILED row, the others still run
                rows.append(
                    {
                        "item": key,
                        "input": f"case {key}",
                        "command": "",
                        "rc": None,
                        "message": f"{type(exc).__name__}: {exc}",
                        "stderr_first_line": "",
                        "peak_mb": None,
                        "children_peak_mb": None,
                        "seconds": 0.0,
                        "outcome": "FAILED",
                        "expected": "",
                        "checks": [],
                        "failed_checks": [f"the case raised {type(exc).__name__}: {exc}"],
                    }
                )
    finally:
        if args.keep:
            print(f"kept {SCRATCH}", file=sys.stderr)
        else:
            shutil.rmtree(SCRATCH, ignore_errors=True)
    lines = ["| # | input | outcome | message | peak MB | s |", "|---|---|---|---|---:|---:|"]
    for r in rows:
        peak = max(filter(None, [r["peak_mb"], r["children_peak_mb"]]), default=None)
        lines.append(
            f"| {r['item']} | {short(r['input'], 60)} | {r['outcome']} | {short(r['message'])} | "
            f"{'' if peak is None else format(peak, '.0f')} | {r['seconds']:.1f} |"
        )
    print("\n".join(lines))
    failures = [r for r in rows if r["outcome"] == "FAILED"]
    for r in failures:
        print(
            f"\nFAILED {r['item']} ({r['input']}): {r['command']}\n  exit {r['rc']}; did not hold: "
            f"{'; '.join(r['failed_checks'])}\n  stderr: {r['stderr_first_line']!r}"
        )
    total = time.perf_counter() - started
    print(f"\n{len(rows) - len(failures)} of {len(rows)} rows as expected, in {total / 60:.1f} min")
    path = save("hostile_inputs", {"timeout_s": TIMEOUT, "fast": FAST, "seconds": total, "rows": rows})
    print(f"wrote {path}")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
