"""`moec batch`: every volume under a folder compressed into another, on dask.distributed, resumable.

A batch is a list of idempotent tasks: one per volume (a NIfTI file, or a DICOM series), whose
output path follows from its input path (the folder tree mirrored), so a task run twice, or run
again after a lost worker, writes the same file. Each task is `compress_one`, the same codec steps
`moec compress` takes; dask.distributed runs them, on a LocalCluster by default or on a cluster
that already runs (`scheduler`). The engine is dask's: no process pool or scheduler of our own.

The manifest (OUT/manifest.csv, one row per volume) is the batch's memory. It is rewritten whole,
atomically, after each volume, so a Ctrl-C or a killed machine leaves it as it was after the last
volume that finished; each output is written atomically too. A volume is finished when its output
exists, is the size its row says, passes its checksum, and its row says ok under the same settings;
a rerun skips those and runs the rest again: failed volumes, damaged outputs, and those cut off
before their row was written (whose output, if any, is replaced: the output folder belongs to the
batch), after removing the temporary files a killed run left beside its outputs.

The input is not trusted: a name built from a file's contents goes through safe_name, every
output path is checked to stay inside the output folder before anything is written, outputs whose
names a file system may take for one get a suffix of their own, a folder that cannot be scanned is
a failed row, and the manifest's text cells are neutralised for spreadsheets (OWASP's CSV injection).

torch's thread count is per process, so the LocalCluster's workers are processes of one thread
each, every one running torch with its share of the cores (workers x threads = the cores).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path, PurePosixPath

# OpenMP reads its wait policy when torch loads it: a worker process imports this module (to run
# compress_one) before torch, so this reaches workers of a cluster that already runs. Busy-waiting
# threads of several workers on the same cores steal each other's time (docs/design.md, "Traps").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from codec.errors import MoecError, OutputError
from codec.io.files import atomic_write_bytes, check_inside, name_key, safe_name, suffixes_of, terminal_safe
from codec.io.limits import MemoryLimit
from codec.settings import Settings, TrainConfig

_FILE, _TRAIN = Settings(), TrainConfig()  # the defaults, read from their one place

MANIFEST = "manifest.csv"
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: What compressing one volume holds in memory, measured: 0.95 GB peak for the 512 x 512 x 61 CT
#: (16 M voxels) with torch loaded, so about 0.35 GB plus 37 bytes per voxel; these bounds leave room.
BASE_MEMORY = 0.5 * 2**30
MEMORY_PER_VOXEL = 64


@dataclass(frozen=True)
class BatchSettings:
    """What every volume of a batch is compressed with (training time and seed included)."""

    ratio: float = _FILE.ratio
    minutes: float = _TRAIN.minutes
    steps: int | None = None  # a step budget instead of minutes (reproducible)
    experts: int | None = _FILE.experts  # None: the better of settings.AUTO_EXPERTS per volume
    seed: int = _TRAIN.seed
    batch_size: int = _TRAIN.batch_size
    device: str = _TRAIN.device  # auto: a GPU worker (dask-cuda) trains on its GPU
    keep_identity: bool = _FILE.keep_identity  # DICOM: keep the patient's identity and the study in the file

    @property
    def key(self) -> str:
        """What a manifest row must match for its volume to count as finished. The device and the
        thread count are left out: they change how fast a file is made, not what was asked. Keeping
        the identity changes what a file holds, so it is in; it is named only when asked for, so the
        rows of manifests written before the option existed still match."""
        budget = f"steps={self.steps}" if self.steps is not None else f"minutes={self.minutes:g}"
        experts = "auto" if self.experts is None else self.experts
        identity = " identity=kept" if self.keep_identity else ""
        return f"ratio={self.ratio:g} {budget} experts={experts} seed={self.seed} batch={self.batch_size}{identity}"


@dataclass(frozen=True)
class VolumeJob:
    """One volume of the batch: where it is read and where its .moec file goes."""

    input: str  # relative to the input folder (POSIX): a NIfTI file, or a DICOM series' folder
    series: str  # the SeriesInstanceUID of a DICOM series; "" for a NIfTI file
    output: str  # relative to the output folder
    modality: str  # DICOM's Modality; "" for a NIfTI file, which does not say
    source: Path  # absolute: the workers of a cluster must see the same paths (a shared file system)
    target: Path
    voxels: int  # from the header alone, to size the workers' memory

    @property
    def key(self) -> tuple[str, str]:
        return self.input, self.series

    def checked_target(self) -> Path:
        """The target resolved, or OutputError unless it is `output` inside the output folder (links
        followed): checked before every write, since the name came in part from a file's contents."""
        parts = PurePosixPath(self.output).parts
        if not parts or len(parts) > len(self.target.parts) or self.target.parts[-len(parts):] != parts:
            raise OutputError(f"refusing to write {self.target}: it is not {self.output} in an output folder")
        return check_inside(self.target.parents[len(parts) - 1], self.target)


@dataclass(frozen=True)
class VolumeResult:
    """One row of the manifest."""

    input: str
    series: str
    output: str
    modality: str
    shape: str
    bytes: int | None
    ratio: float | None
    psnr: float | None
    ssim: float | None
    seconds: float
    status: str  # "ok" or "failed"
    error: str
    settings: str

    @property
    def key(self) -> tuple[str, str]:
        return self.input, self.series

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def name(self) -> str:
        """How a person tells volumes apart: a NIfTI file's path; a DICOM series' output path without
        .moec, which is its folder's path, or the folder and the series where it holds several."""
        if self.series and self.output.endswith(".moec"):
            return self.output[: -len(".moec")]
        return self.input


FIELDS = tuple(f.name for f in fields(VolumeResult))


def _failed(job: VolumeJob, settings: BatchSettings, error: str, seconds: float = 0.0) -> VolumeResult:
    return VolumeResult(job.input, job.series, job.output, job.modality, "", None, None, None, None, seconds,
                        "failed", error, settings.key)


# --- one volume (runs on a worker) ------------------------------------------------------------------

def compress_one(job: VolumeJob, settings: BatchSettings, threads: int | None = None,
                 limit: MemoryLimit | None = None) -> VolumeResult:
    """Compress one volume as `moec compress` does, write its file atomically, measure the file
    written; never raises for a bad volume: the row says what went wrong. `limit`: the memory the
    task may plan to hold (None: the default share of the memory of the machine it runs on)."""
    start = time.perf_counter()
    try:
        import torch

        from codec import pipeline
        from codec.format import moecfile
        from codec.io.volume import load_volume

        job.checked_target()  # before any work: a refused path should not cost a training
        torch.set_num_threads(threads or _worker_threads())
        volume = load_volume(job.source, job.series or None, limit=limit or MemoryLimit.default(), compressing=True)
        train = TrainConfig(minutes=settings.minutes, steps=settings.steps, batch_size=settings.batch_size,
                            seed=settings.seed, device=settings.device)
        file_settings = pipeline.Settings(ratio=settings.ratio, experts=settings.experts,
                                          keep_identity=settings.keep_identity)
        session = pipeline.Compression(volume, file_settings, train).train()
        if session.fitter.steps_run == 0:
            raise MoecError("the time budget ended before the first training step")
        data = session.encode().data
        job.checked_target()  # again: the output folder may have changed during the training
        job.target.parent.mkdir(parents=True, exist_ok=True)
        job.checked_target()  # and once its folders exist, links resolved, right before the write
        moecfile.write(job.target, data)
        evaluation = session.evaluate(moecfile.read(job.target))
        q = evaluation.quality
        return VolumeResult(job.input, job.series, job.output, job.modality, "x".join(map(str, volume.shape)),
                            len(data), evaluation.ratio, q.psnr if math.isfinite(q.psnr) else None, q.ssim,
                            time.perf_counter() - start, "ok", "", settings.key)
    except MoecError as exc:
        return _failed(job, settings, str(exc), time.perf_counter() - start)
    except MemoryError:
        return _failed(job, settings, "out of memory", time.perf_counter() - start)
    except Exception as exc:  # a row that says what happened, and the batch goes on
        return _failed(job, settings, f"unexpected {type(exc).__name__}: {exc}", time.perf_counter() - start)


def _worker_threads() -> int:
    """torch threads for a task on a worker this batch did not start: the host's cores shared by
    the worker's task slots (a `dask worker` of N threads runs N volumes at once)."""
    try:
        from distributed import get_worker

        slots = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        slots = 1
    return max(1, (os.cpu_count() or 1) // max(1, slots))


# --- finding the volumes ----------------------------------------------------------------------------

def discover(input_dir: Path, output_dir: Path) -> tuple[list[VolumeJob], list[VolumeResult]]:
    """Every NIfTI file and DICOM series under `input_dir` (hidden entries and the output folder
    aside), and a failed row for each DICOM file that cannot be read, each folder that cannot be
    scanned and each volume whose output would leave the output folder. DICOM files of one folder
    form its series: a folder of one series maps to FOLDER.moec beside the folder's mirror, a
    folder of several to FOLDER/<series>.moec, <series> made path-safe. Outputs whose names a file
    system may take for one (case, Unicode forms) each get a suffix from their input."""
    from codec.io.dicom import scan_folder, series_stem

    input_dir, output_dir = input_dir.resolve(), output_dir.resolve()
    jobs, broken = [], []
    for here, dirs, files in os.walk(input_dir):
        folder = Path(here)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (folder / d).resolve() != output_dir)
        rel = folder.relative_to(input_dir)
        names = sorted(f for f in files if not f.startswith("."))
        for name in names:
            if name.lower().endswith(NIFTI_SUFFIXES):
                stem = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else name[: -len(".nii")]
                jobs.append(_job(input_dir, output_dir, rel / name, "", rel / f"{stem}.moec", "",
                                 _nifti_voxels(folder / name)))
        if not any(not n.lower().endswith(NIFTI_SUFFIXES) for n in names):
            continue
        try:
            scan = scan_folder(folder)
            found = []
            for info in scan.series:
                # The stem comes from the files' headers: made safe here too, whatever series_stem does.
                stem = safe_name(series_stem(info, scan.series))
                out = (rel.parent / f"{folder.name}.moec") if len(scan.series) == 1 else rel / f"{stem}.moec"
                found.append(_job(input_dir, output_dir, rel, str(info.uid), out, str(info.modality),
                                  int(info.rows) * int(info.columns) * len(info.files)))
        except Exception as exc:  # one damaged file must not stop the batch: its folder is a failed row
            broken.append(_broken(_posix(rel), f"cannot scan the folder {_posix(rel)} for DICOM series: {_why(exc)}"))
            continue
        jobs += found
        for path, why in scan.unreadable:
            broken.append(_broken((rel / path.name).as_posix(), f"{path.name} is not a readable DICOM file: {why}"))
    inside = []
    for job in tell_apart(jobs, output_dir):
        try:
            job.checked_target()
        except OutputError as exc:
            broken.append(VolumeResult(job.input, job.series, job.output, job.modality, "", None, None, None, None,
                                       0.0, "failed", str(exc), ""))
            continue
        inside.append(job)
    return inside, broken


def tell_apart(jobs: list[VolumeJob], output_dir: Path) -> list[VolumeJob]:
    """`jobs` with every output whose name_key another shares renamed NAME_<hash>.moec, the hash of
    its input and series: the same on every run, whatever else the folder holds. OutputError in
    the unlikely case that a renamed output still meets another."""
    shared: dict[str, int] = {}
    for job in jobs:
        shared[name_key(job.output)] = shared.get(name_key(job.output), 0) + 1
    named = [job if shared[name_key(job.output)] == 1 else _suffixed(job, output_dir) for job in jobs]
    seen: dict[str, VolumeJob] = {}
    for job in named:
        first = seen.setdefault(name_key(job.output), job)
        if first is not job:
            raise OutputError(f"{first.input} and {job.input} would both be written to {job.output}; rename one")
    return named


def _suffixed(job: VolumeJob, output_dir: Path) -> VolumeJob:
    digest = hashlib.sha1(f"{job.input}\0{job.series}".encode()).hexdigest()[:8]
    out = PurePosixPath(job.output)
    renamed = out.with_name(f"{out.name[: -len('.moec')]}_{digest}.moec").as_posix()
    return replace(job, output=renamed, target=output_dir / renamed)


def _job(input_dir: Path, output_dir: Path, rel: Path, series: str, out: Path, modality: str,
         voxels: int) -> VolumeJob:
    return VolumeJob(_posix(rel), series, out.as_posix(), modality, input_dir / rel, output_dir / out, voxels)


def _posix(rel: Path) -> str:
    return rel.as_posix() if str(rel) != "." else "."


def _broken(name: str, error: str) -> VolumeResult:
    return VolumeResult(name, "", "", "", "", None, None, None, None, 0.0, "failed", error, "")


def _why(exc: BaseException) -> str:
    """An exception in one line of reasonable length, for a row."""
    text = " ".join(str(exc).split())
    if not isinstance(exc, MoecError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _nifti_voxels(path: Path) -> int:
    import nibabel as nib

    try:
        return int(math.prod(nib.load(str(path)).shape))
    except Exception:  # the task will say what is wrong with it
        return 0


def remove_stale_parts(output_dir: Path, targets: Iterable[Path]) -> list[Path]:
    """Remove the temporary files (codec.io.files.atomic_write's `.NAME.<random>.part<suffix>`) that
    a killed run left beside `targets`, and nothing else: only regular files of that pattern, only
    beside a target of this batch, only inside `output_dir`. Returns those removed."""
    by_folder: dict[Path, set[str]] = {}
    for target in targets:
        by_folder.setdefault(Path(target).parent, set()).add(Path(target).name)
    removed = []
    for folder, names in sorted(by_folder.items()):
        try:
            check_inside(output_dir, folder)
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except (OSError, OutputError):  # no such folder yet, or one that is not the batch's
            continue
        for entry in entries:
            if any(_is_part_of(entry.name, name) for name in names) and entry.is_file(follow_symlinks=False):
                try:
                    os.unlink(entry.path)
                except FileNotFoundError:
                    continue
                removed.append(Path(entry.path))
    return removed


def _is_part_of(candidate: str, name: str) -> bool:
    prefix = f".{name}."
    suffix = suffixes_of(Path(name)).lower()
    return (candidate.startswith(prefix)
            and re.fullmatch(r"[a-z0-9_]+\.part" + re.escape(suffix), candidate[len(prefix):]) is not None)


# --- the manifest -----------------------------------------------------------------------------------

#: What makes a spreadsheet read a cell as a formula (OWASP, "CSV Injection"): such a cell is
#: written after a quote, which spreadsheets show as text; a cell that starts with a quote gets one
#: too, so that reading strips exactly one from every cell that has one before these.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_QUOTE = "'"


def neutralise(text: str) -> str:
    """A manifest cell as written: a formula's start made text for spreadsheets (see unneutralise)."""
    return _QUOTE + text if text.startswith(_FORMULA_START + (_QUOTE,)) else text


def unneutralise(text: str) -> str:
    """What neutralise wrote, read back: the quote before a formula's start or a quote removed."""
    if text.startswith(_QUOTE) and text[1:2] and text[1:].startswith(_FORMULA_START + (_QUOTE,)):
        return text[1:]
    return text


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return str(value)
    return neutralise(str(value))


def _parse(row: dict) -> VolumeResult:
    if any(key is None or value is None for key, value in row.items()):
        raise ValueError("a row of the wrong length")
    cells = {key: unneutralise(value) for key, value in row.items()}

    def number(kind, text):
        return None if text == "" else kind(text)

    return VolumeResult(cells["input"], cells["series"], cells["output"], cells["modality"], cells["shape"],
                        number(int, cells["bytes"]), number(float, cells["ratio"]), number(float, cells["psnr"]),
                        number(float, cells["ssim"]), float(cells["seconds"] or 0.0), cells["status"],
                        cells["error"], cells["settings"])


class Manifest:
    """OUT/manifest.csv: one row per volume, rewritten whole and atomically after each volume."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[tuple[str, str], VolumeResult] = {}
        if not path.exists():
            return
        try:
            # Bytes, then text: a spreadsheet may have saved it with a byte-order mark, and a cell may
            # hold a carriage return that a text-mode read would turn into a line feed.
            text = path.read_bytes().decode("utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise OutputError(f"cannot read the manifest {path}: {exc}") from None
        # A cell may be as long as the file (a long error, a deep path): the csv module's default
        # bound is for untrusted input of unknown size, and this one's size is known.
        bound = csv.field_size_limit()
        csv.field_size_limit(max(bound, min(len(text) + 1, 2**31 - 1)))
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""))
            if reader.fieldnames is not None and tuple(reader.fieldnames) != FIELDS:
                raise OutputError(f"{path} is not a moec batch manifest; give the batch another output folder")
            for row in reader:
                try:
                    result = _parse(row)
                except (KeyError, TypeError, ValueError):
                    continue  # a row cut short (a copy, a disk full): its volume simply runs again
                self.rows[result.key] = result
        except csv.Error as exc:
            raise OutputError(f"the manifest {path} is not a readable CSV file ({exc}); move it away or give "
                              "the batch another output folder") from None
        finally:
            csv.field_size_limit(bound)

    def record(self, result: VolumeResult) -> None:
        self.rows[result.key] = result
        out = io.StringIO()
        # The csv module quotes a cell only for the characters of its line terminator: with CRLF, a
        # carriage return in a cell is quoted too, and cannot end the row early.
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(FIELDS)
        for key in sorted(self.rows):
            row = self.rows[key]
            writer.writerow([_cell(getattr(row, f)) for f in FIELDS])
        check_inside(self.path.parent, self.path)
        atomic_write_bytes(self.path, out.getvalue().encode("utf-8"))


def is_finished(job: VolumeJob, row: VolumeResult | None, settings: BatchSettings) -> bool:
    """Whether the volume's row says ok under these settings for this output, and the output is
    whole: the size the row says and a checksum that holds (a damaged file is made again)."""
    from codec.format.container import unpack_container

    if row is None or not row.ok or row.settings != settings.key or row.output != job.output:
        return False
    try:
        if job.target.stat().st_size != row.bytes:
            return False
        unpack_container(job.target.read_bytes(), str(job.target))
    except (OSError, MoecError):
        return False
    return True


# --- the engine -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Engine:
    """Where the tasks run: a LocalCluster of `workers` processes (each training with `threads`
    torch threads), or the cluster whose scheduler is at `scheduler` (tcp:// or tls://, with TLS
    set up in dask's own configuration); `memory`: what one task may plan to hold (None: the
    default share of the memory of the machine it runs on), above which its volume fails."""

    scheduler: str | None = None
    workers: int | None = None
    threads: int | None = None
    memory: MemoryLimit | None = None


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def local_layout(todo: list[VolumeJob], engine: Engine, n_cores: int, memory: int) -> tuple[int, int]:
    """(worker processes, torch threads each) for a LocalCluster. By default one thread per worker
    and as many workers as cores, volumes and memory allow: small networks train far better as
    two one-thread processes than as one two-thread one, and volumes are independent."""
    threads = engine.threads
    workers = engine.workers
    if workers is None:
        threads = threads or 1
        largest = max((job.voxels for job in todo), default=0)
        fit = max(1, int(0.8 * memory // (BASE_MEMORY + MEMORY_PER_VOXEL * largest)))
        workers = max(1, min(n_cores // threads, len(todo), fit))
    elif threads is None:
        threads = max(1, n_cores // workers)
    return max(1, min(workers, max(1, len(todo)))), threads


def _task_key(job: VolumeJob, settings: BatchSettings) -> str:
    """The same volume under the same settings is the same task (dask runs it once)."""
    digest = hashlib.sha1(f"{job.source}|{job.series}|{job.target}|{settings.key}".encode()).hexdigest()[:16]
    return f"moec-compress-{digest}"


@dataclass(frozen=True)
class BatchSummary:
    """The outcome of one `moec batch` run over a cohort."""

    rows: tuple[VolumeResult, ...]  # every volume found, in the manifest's order
    compressed: int  # finished in this run
    skipped: int  # finished before it
    failed: int  # of the rows
    seconds: float
    engine: str  # in words


def run(input_dir: str | os.PathLike, output_dir: str | os.PathLike, settings: BatchSettings,
        engine: Engine = Engine(), force: bool = False, progress: bool = True,
        log: Callable[[str], None] | None = None) -> BatchSummary:
    """Compress every volume under `input_dir` into `output_dir` (or go on with a batch begun
    there), recording each in the manifest as it finishes."""
    start = time.perf_counter()
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if not input_dir.is_dir():
        raise MoecError(f"{input_dir} is not a folder" if input_dir.exists() else f"no such folder: {input_dir}")
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"{output_dir} is a file, not a folder")
    if input_dir.resolve() == output_dir.resolve():
        raise OutputError("the output folder is the input folder; give the batch its own (-o)")
    jobs, broken = discover(input_dir, output_dir)
    if not jobs and not broken:
        raise MoecError(f"{input_dir} holds no NIfTI file and no DICOM series")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {output_dir}: {exc.strerror or exc}") from None
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write in the folder {output_dir} (permission denied)")
    check_inside(output_dir, output_dir / MANIFEST)
    # What a run killed mid-write left: this batch's own temporary files, nothing else.
    remove_stale_parts(output_dir, [job.target for job in jobs] + [output_dir / MANIFEST])
    manifest = Manifest(output_dir / MANIFEST)
    done = [job for job in jobs if is_finished(job, manifest.rows.get(job.key), settings)]
    todo = [job for job in jobs if job not in done]
    other = [job for job in todo if (row := manifest.rows.get(job.key)) is not None and row.ok
             and row.settings != settings.key and job.target.exists()]
    if other and not force:
        before = terminal_safe(manifest.rows[other[0].key].settings)
        raise OutputError(f"{len(other)} volume(s) in {output_dir} were compressed with other settings ({before}); "
                          "use --force to compress them again with these, or give the batch another output folder")
    say = log or (lambda text: None)
    for row in broken:
        manifest.record(replace(row, settings=settings.key))
        say(f"failed {row.name}: {row.error}")
    described = "nothing to run"
    if todo:
        described = _run_tasks(todo, settings, engine, manifest, progress, say, skipped=len(done))
    keys = [job.key for job in jobs] + [row.key for row in broken]
    rows = tuple(manifest.rows[k] for k in sorted(set(keys)) if k in manifest.rows)
    return BatchSummary(rows, len(todo) - sum(1 for job in todo if not manifest.rows[job.key].ok), len(done),
                        sum(1 for r in rows if not r.ok), time.perf_counter() - start, described)


def _run_tasks(todo: list[VolumeJob], settings: BatchSettings, engine: Engine, manifest: Manifest,
               progress: bool, say: Callable[[str], None], skipped: int) -> str:
    from tqdm import tqdm

    client, cluster, threads, described = _start(todo, engine)
    # The bar redraws one line, which a terminal shows and a log file garbles: elsewhere, the
    # per-volume lines carry the count and the running means instead.
    tty = progress and sys.stderr.isatty()
    bar = tqdm(total=len(todo), unit="volume", desc="moec batch", file=sys.stderr, disable=not tty,
               dynamic_ncols=True, smoothing=0)
    # Names and errors come from the files: no escape sequence they hold reaches the terminal.
    say_line = (lambda text: bar.write(terminal_safe(text), file=sys.stderr)) if tty else say
    say_line(f"{len(todo)} volume(s) to compress" + (f", {skipped} already finished" if skipped else "")
             + f", on {described}")
    finished = 0
    try:
        from distributed import as_completed

        futures = {client.submit(compress_one, job, settings, threads, engine.memory, key=_task_key(job, settings)):
                   job for job in todo}
        for future in as_completed(futures):
            job = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # the task itself never raises: its workers died under it
                result = _failed(job, settings, _task_error(exc))
            manifest.record(result)
            finished += 1
            means = _means([r for r in manifest.rows.values() if r.ok and r.settings == settings.key])
            say_line(f"[{finished}/{len(todo)}] {_line(result)}" + (f" (cohort: {means})" if means and not tty else ""))
            bar.update(1)
            if means:
                bar.set_postfix_str(means)
    finally:
        bar.close()
        _stop(client, cluster)
    return described


def _means(ok: list[VolumeResult]) -> str:
    """The running mean ratio and PSNR of the volumes compressed so far."""
    if not ok:
        return ""
    psnrs = [r.psnr for r in ok if r.psnr is not None]
    ratios = [r.ratio for r in ok if r.ratio is not None]
    mean_psnr = f", {statistics.fmean(psnrs):.2f} dB" if psnrs else ""
    return f"mean {statistics.fmean(ratios):.0f}x{mean_psnr}" if ratios else mean_psnr.lstrip(", ")


def _task_error(exc: BaseException) -> str:
    name = type(exc).__name__
    if name == "KilledWorker":
        return "the workers running it died, several times (out of memory?); it runs again on a rerun"
    return f"the task failed: {name}: {exc}"


def _line(result: VolumeResult) -> str:
    if not result.ok:
        return f"failed {result.name}: {result.error}"
    psnr = "undefined" if result.psnr is None else f"{result.psnr:.2f} dB"
    return (f"ok {result.name} ({result.modality or 'NIfTI'} {result.shape}): {result.ratio:.1f}x, "
            f"PSNR {psnr}, SSIM {result.ssim:.4f}, {result.seconds:.0f} s")


def _start(todo: list[VolumeJob], engine: Engine):
    """(client, cluster or None, torch threads per task or None, the engine in words)."""
    logging.getLogger("distributed").setLevel(logging.ERROR)
    from distributed import Client, LocalCluster

    if engine.scheduler:
        client = connect(engine.scheduler)
        workers = client.scheduler_info().get("workers", {})
        slots = sum(w.get("nthreads", 1) for w in workers.values())
        where = f"the cluster at {engine.scheduler} ({len(workers)} worker(s), {slots} slot(s))"
        return client, None, engine.threads, where
    workers, threads = local_layout(todo, engine, cores(), memory_bytes())
    # Processes, not threads: torch.set_num_threads is process-wide. OMP_NUM_THREADS too, since
    # dask's nannies otherwise start every worker with 1.
    env = {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR, env=env)
    client = Client(cluster)
    return client, cluster, threads, (f"a local cluster of {workers} worker process(es) x {threads} torch "
                                      f"thread(s) ({cores()} cores)")


def connect(address: str):
    """A distributed Client of the scheduler at `address`. No `security` is passed, so the Client
    builds its own from dask's configuration (distributed.comm.tls.*, which the environment's
    DASK_DISTRIBUTED__COMM__TLS__* variables set, or distributed.client.security-loader), as every
    dask tool does; MoecError in one line when it cannot connect."""
    from distributed import Client

    tls = address.strip().lower().startswith("tls://")
    if tls:
        _check_tls_configuration(address)
    try:
        return Client(address, timeout="20s")
    except (OSError, TimeoutError, TypeError, ValueError) as exc:
        if tls:
            raise MoecError(f"cannot connect to the dask scheduler at {address} over TLS ({_why(exc)}); check the "
                            f"certificate configuration: {_TLS_KEYS}") from None
        raise MoecError(f"cannot reach the dask scheduler at {address}: {_why(exc)}") from None


_TLS_KEYS = ("dask's distributed.comm.tls.ca-file, distributed.comm.tls.client.cert and "
             "distributed.comm.tls.client.key (or DASK_DISTRIBUTED__COMM__TLS__CA_FILE, "
             "..._CLIENT__CERT and ..._CLIENT__KEY), the CA and this client's certificate for the cluster")


def _check_tls_configuration(address: str) -> None:
    """MoecError, before any connection, when dask's configuration gives no usable TLS certificate
    (distributed would say only that an ssl_context is None)."""
    import dask.config

    if dask.config.get("distributed.client.security-loader", None):
        return  # the loader gives the Client its certificates, as it sees fit
    from distributed.security import Security

    try:
        context = Security().get_connection_args("client")["ssl_context"]
    except (OSError, ValueError) as exc:  # a certificate file missing or unreadable, a bad TLS version
        raise MoecError(f"the TLS certificate configuration for {address} cannot be used ({_why(exc)}); check "
                        f"{_TLS_KEYS}") from None
    if context is None:
        raise MoecError(f"{address} is a TLS address but dask's configuration names no certificate; set {_TLS_KEYS}")


def _stop(client, cluster) -> None:
    try:
        client.close(timeout=10)
    finally:
        if cluster is not None:
            cluster.close(timeout=10)
