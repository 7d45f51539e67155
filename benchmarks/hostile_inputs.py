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
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from common import ROOT, save

from codec.format.container import pack_container, unpack_container

TIMEOUT = 120.0
#: Short training: the hostile inputs are about what is refused or written, not about quality.
FAST = ["--steps", "20", "--batch", "2048", "--quiet"]
MIB = 2**20
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
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_WAIT_POLICY": "PASSIVE"}
    start = time.perf_counter()
    # A session of its own: on a timeout the whole group goes, a batch's dask workers included.
    child = subprocess.Popen([sys.executable, "-c", WRAPPER, str(side), *args], cwd=cwd, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
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
    return Run(shlex.join(["moec", *args]), None if timed_out else child.returncode,
               out.decode("utf-8", "surrogateescape"), err.decode("utf-8", "surrogateescape"), own,
               kids or None, seconds, timed_out)


def error_line(run: Run) -> str:
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    return next((line for line in lines if line.startswith("moec: error")), lines[0] if lines else "")


def row(item: str, case: str, run: Run, outcome: str, checks: list[tuple[str, bool]], message: str = "",
        **extra) -> dict:
    """One row of the table: `outcome` if every check holds, else FAILED with those that did not."""
    failed = [what for what, ok in checks if not ok]
    if run.timed_out:
        failed.insert(0, f"timed out after {run.seconds:.0f} s")
    return {"item": item, "input": case, "command": run.command, "rc": run.rc,
            "message": next((x for x in run.stderr.splitlines() if x.startswith("moec: error")), "")
            or message or error_line(run), "stderr_first_line": next(iter(run.stderr.splitlines()), ""),
            "peak_mb": run.peak_mb, "children_peak_mb": run.children_peak_mb, "seconds": run.seconds,
            "outcome": "FAILED" if failed else outcome, "expected": outcome, "checks": [what for what, _ in checks],
            "failed_checks": failed, **extra}


def refusal(run: Run, pattern: str) -> list[tuple[str, bool]]:
    """The checks of a refusal in words: exit 1, one `moec: error:` line saying `pattern`, no traceback."""
    errors = [line for line in run.stderr.splitlines() if line.startswith("moec: error")]
    return [("exit status 1", run.rc == 1), ("no traceback", "Traceback" not in run.stderr),
            ("one moec: error line", len(errors) == 1),
            (f"says /{pattern}/", bool(errors) and re.search(pattern, errors[0]) is not None)]


def worked(run: Run) -> list[tuple[str, bool]]:
    return [("exit status 0", run.rc == 0), ("no traceback", "Traceback" not in run.stderr)]


def manifest_rows(out: Path) -> list[dict]:
    path = out / "manifest.csv"
    if not path.exists():
        return []
    return list(csv.DictReader(io.StringIO(path.read_bytes().decode("utf-8-sig"), newline="")))


def folder(name: str) -> Path:
    path = SCRATCH / name
    path.mkdir(parents=True)
    return path


def files_under(root: Path, leaving: Path | None = None) -> dict[str, int]:
    """Every file and folder under `root` (`leaving` out) with its size, folders -1."""
    found = {}
    for path in sorted(root.rglob("*")):
        if leaving is not None and (path == leaving or leaving in path.parents):
            continue
        found[path.relative_to(root).as_posix()] = -1 if path.is_dir() else path.stat().st_size
    return found


# --- building inputs -------------------------------------------------------------------------------

def ct_nifti(path: Path, shape=(24, 20, 12), seed: int = 0) -> Path:
    """A small CT-like volume (int16, intercept -1024) written with nibabel, as a converter would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_nifti(path, ct_raw(shape, seed + 1), np.diag([0.8, 0.7, 2.5, 1.0]), inter=-1024.0)


def write_nifti(path: Path, raw: np.ndarray, affine=None, inter: float = 0.0) -> Path:
    img = nib.Nifti1Image(raw, np.eye(4) if affine is None else affine)
    img.header.set_sform(img.affine, code=1)
    img.header.set_qform(img.affine, code=1)
    img.header.set_slope_inter(1.0, inter)
    nib.save(img, str(path))
    return path


def patched(path: Path, out: Path, fields: list[tuple[int, str, object]]) -> Path:
    """A copy of the uncompressed NIfTI-1 file `path` with header fields (offset, struct format,
    value) overwritten by hand: nibabel refuses to write such headers."""
    raw = bytearray(path.read_bytes())
    for offset, fmt, value in fields:
        struct.pack_into("<" + fmt, raw, offset, *(value if isinstance(value, (list, tuple)) else (value,)))
    out.write_bytes(bytes(raw))
    return out


def ct_raw(shape=(24, 20, 12), seed: int = 1) -> np.ndarray:
    """Stored CT values with a body and an organ in it, so that a short training has something to learn."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    body = (i**2 + j**2 < 0.7) * 1000 + (i**2 + (j - 0.2) ** 2 + k**2 < 0.15) * 400
    return (body + rng.integers(0, 40, size=shape)).astype(np.int16)


PATIENT = {"PatientName": "Doe^Jane", "PatientID": "MOEC-0042", "PatientBirthDate": "19700101"}
STUDY_UID = "1.2.826.0.1.3680043.8.498.1001"


def dicom_series(where: Path, raw: np.ndarray | None = None, *, series_uid: str = "1.2.3.4.1", number: int = 3,
                 description: str = "Thorax", modality: str = "CT", inter: float = -1024.0, seed: int = 0,
                 edit=None) -> list[Path]:
    """`raw` (stored values, column x row x slice) as an axial DICOM series of one file per slice, as
    a scanner writes it, under random names; `edit(k, ds)` may spoil slice k."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    raw = ct_raw(seed=seed + 1) if raw is None else raw
    where.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sop_class = "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4"
    paths = []
    with warnings.catch_warnings():  # pydicom warns of the invalid values some cases write on purpose
        warnings.simplefilter("ignore")
        for k in rng.permutation(raw.shape[2]):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = sop_class
            meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(k)])
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
            for keyword, value in PATIENT.items():
                setattr(ds, keyword, value)
            ds.StudyInstanceUID, ds.StudyDate, ds.AccessionNumber = STUDY_UID, "20240131", "ACC123"
            ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series_uid, number, description
            ds.Modality, ds.FrameOfReferenceUID = modality, "1.2.826.0.1.3680043.8.498.77"
            ds.InstanceNumber = int(k) + 1
            ds.ImagePositionPatient = ["-100", "-90", f"{20.0 + 2.5 * k:.6f}"]
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
            ds.PixelSpacing = ["0.8", "0.7"]
            image = np.ascontiguousarray(raw[:, :, k].T)
            ds.Rows, ds.Columns = image.shape
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated = ds.BitsStored = 8 * image.dtype.itemsize
            ds.HighBit = ds.BitsStored - 1
            ds.PixelRepresentation = int(image.dtype.kind == "i")
            if inter:
                ds.RescaleSlope, ds.RescaleIntercept = "1", f"{inter:g}"
            ds.PixelData = image.tobytes()
            if edit is not None:
                edit(int(k), ds)
            path = where / f"{rng.integers(1 << 40):x}"
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
            paths.append(path)
    return paths


def raw_element(ds, keyword: str, vr: str, value: bytes) -> None:
    """`value` put in the file as it is, unchecked, as a damaged or hostile file holds it."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    tag = Tag(keyword)
    # As if read from a file of this encoding: pydicom then writes raw elements unconverted.
    ds.set_original_encoding(False, True, ds._character_set)
    if "PixelData" in ds:
        ds["PixelData"].VR = "OW"
    if len(value) % 2:
        value += b"\0" if vr in ("US", "UL", "SS", "SL") else b" "
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)


def forged(source: Path, out: Path, *, shape=None, model=None, made_by=None) -> Path:
    """A real .moec with another declared shape (NIfTI dims to match), another network (float16
    weights of its own, so that it decodes) or another made_by: a valid container, CRC recomputed."""
    container = unpack_container(source.read_bytes())
    meta = json.loads(json.dumps(container.meta))
    nifti, payload = container.nifti, container.payload
    if shape is not None:
        meta["shape"] = list(shape)
        hdr = nib.Nifti1Header(binaryblock=nifti).copy()
        hdr.set_data_shape(shape)
        nifti = bytes(hdr.binaryblock)
    if model is not None:
        from codec.coding.quantize import QuantConfig
        from codec.format.payload import encode_payload
        from codec.model import MoEC

        meta["model"] = model.to_dict()
        meta["weights"] = {"bits": 16, "extra": 0, "granularity": "tensor"}
        payload = encode_payload(MoEC(model), QuantConfig(16, 0, "tensor"), None)
    if made_by is not None:
        meta["made_by"] = made_by
    out.write_bytes(pack_container(meta, nifti, payload))
    return out


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

    def climb(k: int, ds) -> None:  # as text, past pydicom's check of an integer string, as a hostile writer would
        from pydicom.dataelem import DataElement
        ds[0x00200011] = DataElement(0x00200011, "LO", traversal)

    dicom_series(where / "in" / "exam", series_uid="1.2.3.9.1", description="Lung", edit=climb)
    dicom_series(where / "in" / "exam", (ct_raw(seed=4) * 2).astype(np.uint16), series_uid="1.2.3.9.2", number=5,
                 modality="MR", description="T2 ax", inter=0.0, seed=7)
    (where / "nest").mkdir()
    before = files_under(where)
    run = moec(where, "batch", "in", "-o", "nest/out", "--ratio", "6", *FAST)
    out = where / "nest" / "out"
    rows = manifest_rows(out)
    written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    failed = [r for r in rows if r["status"] != "ok"]
    checks = [("nothing at the traversal's target", not target.exists()),
              ("OUT's parent holds only OUT", sorted(p.name for p in (where / "nest").iterdir()) == ["out"]),
              ("the tree outside OUT unchanged", files_under(where, leaving=out) == before),
              ("every file written is inside OUT", all(out.resolve() in p.resolve().parents for p in written)),
              ("two rows in the manifest", len(rows) == 2),
              ("exit 0, or 1 with a failed row", run.rc == 0 or (run.rc == 1 and bool(failed))),
              ("no traceback", "Traceback" not in run.stderr)]
    outputs = ", ".join(r["output"] for r in rows)
    return [row("1", "DICOM SeriesNumber '/../../../../../../tmp/<unique>/pwned'", run,
                "row in manifest" if failed else "handled", checks, message=f"outputs: {outputs}",
                outputs=[r["output"] for r in rows])]


def case_moec_bomb(base: Path) -> list[dict]:
    where = folder("02-moec-bomb")
    bomb = forged(base, where / "bomb.moec", shape=(2048, 1024, 1024))
    size = bomb.stat().st_size
    name = f".moec of {size / 1024:.1f} KB declaring 2048 x 1024 x 1024"
    run = moec(where, "decompress", "bomb.moec", "-o", "x.nii.gz", "--max-memory", "2G")
    checks = refusal(run, r"2048 x 1024 x 1024.*GiB of memory.*--max-memory")
    # The grid's int16 values alone would be 4 GiB: a refusal from the header holds a small fraction.
    checks += [("nothing written", sorted(p.name for p in where.iterdir()) == ["bomb.moec"]),
               ("peak RSS under 1 GiB", run.peak_mb is not None and run.peak_mb < 1024)]
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
    return [row("3", "decompress --scale 8 of a 32 x 28 x 16 file, --max-memory 64M", run, "refused in words",
                checks)]


def case_time_bomb(base: Path) -> list[dict]:
    from codec.model import ModelConfig

    where = folder("04-time-bomb")
    # One sine MLP as wide and deep as a sixteenth of the header's parameter limit: about a million
    # multiply-adds a voxel over a 512^3 grid, in a file of two megabytes.
    wide = ModelConfig(experts=1, encoder_layers=0, expert_width=512, expert_layers=5)
    slow = forged(base, where / "slow.moec", shape=(512, 512, 512), model=wide)
    run = moec(where, "decompress", "slow.moec", "-o", "slow.nii.gz")
    checks = refusal(run, r"would take about .* h on this machine.*--max-decode-minutes")
    checks.append(("nothing written", not (where / "slow.nii.gz").exists()))
    return [row("4", f"huge network over 512^3 ({slow.stat().st_size / MIB:.1f} MB .moec)", run, "refused in words",
                checks, file_bytes=slow.stat().st_size)]


def nifti_header_bytes(shape: tuple[int, ...]) -> bytes:
    """A valid single-file NIfTI-1 header of uint8 voxels and its empty extension flag."""
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.uint8)
    hdr.set_data_shape(shape)
    hdr.set_sform(np.eye(4), code=1)
    hdr["vox_offset"] = 352
    return bytes(hdr.binaryblock) + b"\0" * 4


def case_gzip_bomb() -> list[dict]:
    where = folder("05-gzip-bomb")
    # 1 GiB of zeros as 1024 gzip members of 1 MiB, compressed once and repeated (a gzip file may
    # hold several members, RFC 1952): about a kilobyte a mebibyte.
    member = gzip.compress(bytes(MIB), compresslevel=9)
    bomb = where / "bomb.nii.gz"
    with open(bomb, "wb") as handle:
        handle.write(gzip.compress(nifti_header_bytes((1024, 1024, 1024))))
        for _ in range(1024):
            handle.write(member)
    name = f"gzip bomb: {bomb.stat().st_size / MIB:.1f} MB .nii.gz of 1024^3 uint8"
    rows = []
    for item, extra in (("5a", []), ("5b", ["--max-memory", "1G"])):
        run = moec(where, "compress", "bomb.nii.gz", "-o", "bomb.moec", *extra, *FAST)
        checks = refusal(run, r"1024 x 1024 x 1024 uint8.*--max-memory")
        # Inflating it would hold the whole gibibyte: the refusal comes from the header.
        checks += [("nothing written", not (where / "bomb.moec").exists()),
                   ("peak RSS under 700 MB", run.peak_mb is not None and run.peak_mb < 700)]
        rows.append(row(item, name, run, "refused in words", checks))
    return rows


def case_bit_flips() -> list[dict]:
    where = folder("06-bit-flips")
    raw = np.random.default_rng(3).integers(0, 2000, size=(12, 10, 8)).astype(np.int16)
    good = write_nifti(where / "small.nii.gz", raw, np.diag([0.8, 0.8, 2.0, 1.0])).read_bytes()
    reference = gzip.decompress(good)
    rng = np.random.default_rng(20)
    # The gzip member's own header is 10 bytes (nibabel writes no name) and its trailer 8: the
    # flips land in the deflate data between.
    positions = sorted(rng.choice(np.arange(10, len(good) - 8), size=20, replace=False).tolist())
    flips, runs, refused, problems = [], [], 0, []
    for n, position in enumerate(positions):
        bit = int(rng.integers(8))
        flipped = bytearray(good)
        flipped[position] ^= 1 << bit
        name = f"flip{n:02d}.nii.gz"
        (where / name).write_bytes(bytes(flipped))
        try:  # what an independent reader makes of it: damaged, or the very same voxels
            intact = gzip.decompress(bytes(flipped)) == reference
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
        flips.append({"byte": position, "bit": bit, "rc": run.rc, "message": said, "intact_for_gzip": intact,
                      "peak_mb": run.peak_mb, "seconds": run.seconds})
    summary = Run(f"moec compress flipNN.nii.gz -o flipNN.moec --ratio 4 {' '.join(FAST)}  (x{len(positions)})",
                  1 if refused else 0, "", "", max((r.peak_mb or 0) for r in runs), None,
                  sum(r.seconds for r in runs), any(r.timed_out for r in runs))
    checks = [("each flip refused as damaged, or (zlib agreeing) read as the same voxels", not problems),
              ("at least 18 of 20 refused", refused >= len(positions) - 2)]
    result = row("6", f"{len(positions)} bit flips in a {len(good)}-byte .nii.gz", summary,
                 "refused in words" if refused == len(positions) else "handled", checks,
                 message=f"{refused} of {len(positions)} refused as damaged; e.g. "
                         f"{next((f['message'] for f in flips if f['message']), '').removeprefix('moec: error: ')}",
                 flips=flips, problems=problems)
    result["rc"] = sorted({r.rc for r in runs}, key=str)
    return [result]


def case_empty_rows() -> list[dict]:
    where = folder("07-empty-rows")
    exam = where / "in" / "exam"
    dicom_series(exam)
    spoilt = dicom_series(exam, series_uid="1.2.3.4.9", number=9, seed=4,
                          edit=lambda k, ds: k == 0 and raw_element(ds, "Rows", "US", b""))
    import pydicom

    bad = next(p for p in spoilt if pydicom.dcmread(p, stop_before_pixels=True, force=True).InstanceNumber == 1)
    run = moec(where, "info", "in/exam")
    listed = f"unreadable: {bad.name}: Rows is empty"
    line = next((x for x in run.stdout.splitlines() if "unreadable" in x), "")
    checks = worked(run) + [("lists the good series", "1.2.3.4.1" in run.stdout),
                            (f"says '{listed}'", listed in run.stdout)]
    rows = [row("7a", "DICOM slice with an empty Rows, beside a good series", run, "handled", checks,
                message=line.strip())]
    run = moec(where, "batch", "in", "-o", "out", "--ratio", "6", *FAST)
    manifest = manifest_rows(where / "out")
    failed = [r for r in manifest if r["status"] != "ok"]
    ok = [r for r in manifest if r["status"] == "ok"]
    checks = [("exit status 1 (a failed row)", run.rc == 1), ("no traceback", "Traceback" not in run.stderr),
              ("one failed row, naming the file", len(failed) == 1 and bad.name in failed[0]["input"]
               and "Rows is empty" in failed[0]["error"]),
              ("both series compressed", len(ok) == 2 and all((where / "out" / r["output"]).is_file() for r in ok))]
    rows.append(row("7b", "DICOM slice with an empty Rows, beside a good series", run, "row in manifest", checks,
                    message=failed[0]["error"] if failed else ""))
    return rows


def case_manifest_and_resume() -> list[dict]:
    """Items 8, 12, 13 and 14 on one output folder: a run, then reruns after each spoiling."""
    where = folder("08-formula")
    # "/" cannot be in a file name: this is the folder `=HYPERLINK("http:` holding `x","y").nii.gz`,
    # so the input path the manifest records is the formula (its "//" one "/").
    hostile = '=HYPERLINK("http://x","y").nii.gz'
    ct_nifti(where / "in" / hostile, seed=1)
    expected = "'" + (Path("in") / hostile).relative_to("in").as_posix()
    ct_nifti(where / "in" / "plain.nii.gz", seed=2)
    out = where / "out"
    args = ("batch", "in", "-o", "out", "--ratio", "6", *FAST)
    run = moec(where, *args)
    manifest = manifest_rows(out)
    cell = next((r["input"] for r in manifest if "HYPERLINK" in r["input"]), "")
    raw = (out / "manifest.csv").read_text() if (out / "manifest.csv").exists() else ""
    checks = worked(run) + [("two ok rows", len(manifest) == 2 and all(r["status"] == "ok" for r in manifest)),
                            ("the cell is the path behind a '", cell == expected),
                            ("no cell of the file starts with =", not re.search(r'(^|,)"?=', raw, re.M))]
    rows = [row("8", f"NIfTI at in/{hostile}", run, "handled", checks, message=f"manifest cell: {cell}")]

    # A spreadsheet saves the manifest with a byte-order mark and CRLF line ends.
    path = out / "manifest.csv"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    run = moec(where, *args)
    summary = re.search(r"^(\d+) compressed.*?(?:; (\d+) finished before)?; (\d+) failed", run.stdout, re.M)
    checks = worked(run) + [("nothing recompressed, both finished before",
                             summary is not None and summary[1] == "0" and summary[2] == "2")]
    rows.append(row("12", "manifest.csv saved with a UTF-8 BOM and CRLF", run, "handled", checks,
                    message=summary[0] if summary else ""))

    plain = out / next((r["output"] for r in manifest if r["input"] == "plain.nii.gz"), "plain.moec")
    damaged = bytearray(plain.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    plain.write_bytes(bytes(damaged))
    run = moec(where, *args)
    summary = re.search(r"^(\d+) compressed.*?(?:; (\d+) finished before)?; (\d+) failed", run.stdout, re.M)
    try:
        unpack_container(plain.read_bytes())
        whole = True
    except Exception:
        whole = False
    checks = worked(run) + [("the damaged one recompressed, the other skipped",
                             summary is not None and summary[1] == "1" and summary[2] == "1"),
                            ("the output whole again", whole)]
    rows.append(row("13", "finished .moec with one bit flipped (same size)", run, "handled", checks,
                    message=summary[0] if summary else ""))

    stale = [plain.parent / f".{plain.name}.abc12_xy.part.moec", out / ".manifest.csv.zz9_8765.part.csv"]
    for part in stale:
        part.write_bytes(b"left by a killed run")
    run = moec(where, *args)
    checks = worked(run) + [("the stale .part files removed", not any(p.exists() for p in stale))]
    summary = re.search(r"^\d+ compressed.*", run.stdout, re.M)
    rows.append(row("14", "stale .part files of a killed run", run, "handled", checks,
                    message=f"{len(stale)} .part files removed; {summary[0]}" if summary and checks[-1][1] else ""))
    return rows


def case_no_series_uid() -> list[dict]:
    where = folder("09-no-series-uid")
    dicom_series(where / "in" / "anon", edit=lambda k, ds: delattr(ds, "SeriesInstanceUID"))
    run = moec(where, "compress", "in/anon", "-o", "anon.moec", "--ratio", "6", *FAST)
    warned = next((x for x in run.stderr.splitlines() if "SeriesInstanceUID" in x), "")
    checks = worked(run) + [("a warning names the missing UID", bool(warned)),
                            ("the file written", (where / "anon.moec").is_file())]
    rows = [row("9a", "DICOM slices without SeriesInstanceUID", run, "handled", checks, message=warned)]
    run = moec(where, "batch", "in", "-o", "out", "--ratio", "6", *FAST)
    manifest = manifest_rows(where / "out")
    checks = worked(run) + [("one ok row", len(manifest) == 1 and manifest[0]["status"] == "ok"
                             and (where / "out" / manifest[0]["output"]).is_file())]
    rows.append(row("9b", "DICOM slices without SeriesInstanceUID", run, "handled", checks,
                    message=f"row: {manifest[0]['output']} {manifest[0]['status']}" if manifest else ""))
    return rows


def case_no_study_uid() -> list[dict]:
    import pydicom

    from codec.io.dicom import PSEUDONYM

    where = folder("10-no-study-uid")
    dicom_series(where / "ct", edit=lambda k, ds: delattr(ds, "StudyInstanceUID"))
    run = moec(where, "compress", "ct", "-o", "ct.moec", "--ratio", "6", *FAST)
    rows = [row("10a", "DICOM series without StudyInstanceUID", run, "handled",
                worked(run) + [("the file written", (where / "ct.moec").is_file())],
                message=next(iter(run.stdout.splitlines()), ""))]
    run = moec(where, "decompress", "ct.moec", "--dicom", "back")
    written = sorted((where / "back").rglob("*")) if (where / "back").exists() else []
    written = [p for p in written if p.is_file()]
    first = pydicom.dcmread(written[0]) if written else None
    checks = worked(run) + [
        ("12 slices written", len(written) == 12),
        ("a pseudonymous patient", first is not None and str(first.PatientName) == PSEUDONYM
         and str(first.PatientID).startswith("MOEC-")),
        ("a new study UID", first is not None and bool(first.get("StudyInstanceUID"))
         and first.StudyInstanceUID != STUDY_UID)]
    message = (f"PatientName {first.PatientName}, PatientID {first.PatientID}, study {first.StudyInstanceUID}"
               if first is not None else "")
    rows.append(row("10b", "DICOM series without StudyInstanceUID", run, "handled", checks, message=message))
    return rows


def case_privacy() -> list[dict]:
    where = folder("11-privacy")
    dicom_series(where / "ct")
    run = moec(where, "compress", "ct", "-o", "ct.moec", "--ratio", "6", *FAST)
    rows = [row("11a", "DICOM series with a patient, default settings", run, "handled",
                worked(run) + [("the file written", (where / "ct.moec").is_file())],
                message=next(iter(run.stdout.splitlines()), ""))]
    run = moec(where, "info", "ct.moec")
    said = next((x for x in run.stdout.splitlines() if x.startswith("dicom")), "")
    data = (where / "ct.moec").read_bytes() if (where / "ct.moec").exists() else b""
    try:
        header = json.dumps(unpack_container(data).meta)
    except Exception:
        header = ""
    secrets = [*PATIENT.values(), STUDY_UID, "ACC123"]
    checks = worked(run) + [
        ("info says de-identified", "de-identified" in said),
        ("the inflated header readable", bool(header)),
        ("no PatientName or PatientID key in it", "PatientName" not in header and "PatientID" not in header),
        ("no patient value, study UID or accession number in it or in the bytes",
         not any(s in header or s.encode() in data for s in secrets))]
    rows.append(row("11b", "DICOM series with a patient, default settings", run, "handled", checks, message=said))
    return rows


def case_flat_and_negative() -> list[dict]:
    where = folder("15-shapes")
    rows = []
    for item, shape, pattern in (("15a", (1, 1, 1), r"single voxel"),
                                 ("15b", (1, 40, 40), r"one voxel along axis 0")):
        name = f"flat{'x'.join(map(str, shape))}.nii.gz"
        write_nifti(where / name, np.ones(shape, dtype=np.int16))
        run = moec(where, "compress", name, *FAST)
        rows.append(row(item, f"NIfTI of shape {'x'.join(map(str, shape))}", run, "refused in words",
                        refusal(run, pattern)))
    source = write_nifti(where / "small.nii", np.arange(8 * 7 * 6, dtype=np.int16).reshape(8, 7, 6))
    patched(source, where / "negative.nii", [(40, "8h", [3, -8, 7, 6, 1, 1, 1, 1])])  # dim[1] = -8
    run = moec(where, "compress", "negative.nii", *FAST)
    rows.append(row("15c", "NIfTI with dim[1] = -8", run, "refused in words",
                    refusal(run, r"negative size \(-8\) along axis 0")))
    return rows


def case_tiny_slope() -> list[dict]:
    where = folder("16-slope")
    source = write_nifti(where / "small.nii", np.arange(8 * 7 * 6, dtype=np.int16).reshape(8, 7, 6))
    patched(source, where / "slope.nii", [(112, "f", 1e-40)])  # scl_slope, a float32 denormal
    run = moec(where, "compress", "slope.nii", *FAST)
    return [row("16", "NIfTI with scl_slope 1e-40", run, "refused in words",
                refusal(run, r"slope .* is beyond what MoEC computes") + [
                    ("nothing written", not (where / "slope.moec").exists())])]


def case_made_by(base: Path) -> list[dict]:
    where = folder("17-made-by")
    forged(base, where / "forged.moec", made_by={"moec": "0.1.0\x1b]0;pwned\x07"})
    run = moec(where, "info", "forged.moec")
    checks = refusal(run, r"made_by entry") + [("no ESC byte in the output", "\x1b" not in run.stdout + run.stderr)]
    return [row("17", "made_by with a terminal title escape (ESC ] 0;pwned BEL)", run, "refused in words", checks)]


def case_report_names() -> list[dict]:
    where = folder("18-report")
    odd = "a|b\nc.nii.gz"
    ct_nifti(where / "in" / odd, seed=3)
    ct_nifti(where / "in" / "plain.nii.gz", seed=4)
    run = moec(where, "batch", "in", "-o", "out", "--ratio", "6", "--report", "report", *FAST)
    md = where / "report" / "report.md"
    lines = md.read_text().split("\n") if md.exists() else []
    # The report holds a table by modality first; the volumes' table is the one headed "volume".
    header = next((i for i, x in enumerate(lines) if x.startswith("|") and "| volume |" in x), None)
    separator = header + 1 if header is not None and re.fullmatch(r"\|(-+:?\|)+", lines[header + 1]) else None
    volume_rows = []
    if separator is not None:
        for line in lines[separator + 1:]:
            if not line.startswith("|"):
                break
            volume_rows.append(line)
    columns = lines[separator].count("|") if separator is not None else 0
    shown = next((x for x in volume_rows if "a\\|b" in x), "")
    checks = worked(run) + [("report.md written", md.exists()),
                            ("two volume rows in the table", len(volume_rows) == 2),
                            ("every row has the table's cells",
                             bool(volume_rows) and all(x.replace("\\|", "").count("|") == columns
                                                       for x in volume_rows)),
                            ("the name shown escaped, on one line", bool(shown))]
    cell = next((c.strip() for c in re.split(r"(?<!\\)\|", shown) if "a\\|b" in c), "")
    return [row("18", "NIfTI named 'a|b<newline>c.nii.gz' in a batch --report", run, "handled", checks,
                message=f"report cell: {cell}")]


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
                rows.append({"item": key, "input": f"case {key}", "command": "", "rc": None,
                             "message": f"{type(exc).__name__}: {exc}", "stderr_first_line": "", "peak_mb": None,
                             "children_peak_mb": None, "seconds": 0.0, "outcome": "FAILED", "expected": "",
                             "checks": [], "failed_checks": [f"the case raised {type(exc).__name__}: {exc}"]})
    finally:
        if args.keep:
            print(f"kept {SCRATCH}", file=sys.stderr)
        else:
            shutil.rmtree(SCRATCH, ignore_errors=True)
    lines = ["| # | input | outcome | message | peak MB | s |", "|---|---|---|---|---:|---:|"]
    for r in rows:
        peak = max(filter(None, [r["peak_mb"], r["children_peak_mb"]]), default=None)
        lines.append(f"| {r['item']} | {short(r['input'], 60)} | {r['outcome']} | {short(r['message'])} | "
                     f"{'' if peak is None else format(peak, '.0f')} | {r['seconds']:.1f} |")
    print("\n".join(lines))
    failures = [r for r in rows if r["outcome"] == "FAILED"]
    for r in failures:
        print(f"\nFAILED {r['item']} ({r['input']}): {r['command']}\n  exit {r['rc']}; did not hold: "
              f"{'; '.join(r['failed_checks'])}\n  stderr: {r['stderr_first_line']!r}")
    total = time.perf_counter() - started
    print(f"\n{len(rows) - len(failures)} of {len(rows)} rows as expected, in {total / 60:.1f} min")
    path = save("hostile_inputs", {"timeout_s": TIMEOUT, "fast": FAST, "seconds": total, "rows": rows})
    print(f"wrote {path}")
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
