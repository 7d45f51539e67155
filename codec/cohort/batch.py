"""`moec batch`: every volume under a folder compressed into another, on dask.distributed, resumable.

A batch is a list of idempotent tasks: one per volume (a NIfTI file, or a DICOM series), whose
output path follows from its input path (the folder tree mirrored), so a task run twice, or run
again after a lost worker, writes the same file. Each task is `compress_one`, the same codec steps
`moec compress` takes; dask.distributed runs them, on a LocalCluster by default or on a cluster
that already runs (`scheduler`). The engine is dask's: no process pool or scheduler of our own.

The manifest (OUT/manifest.csv, one row per volume) is the batch's memory. It is rewritten whole,
atomically, after each volume, so a Ctrl-C or a killed machine leaves it as it was after the last
volume that finished; each output is written atomically too. A volume is finished when its output
exists, is the size its row says, and its row says ok under the same settings; a rerun skips
those and runs the rest again: failed volumes, and those cut off before their row was written
(whose output, if any, is replaced: the output folder belongs to the batch).

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
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

# OpenMP reads its wait policy when torch loads it: a worker process imports this module (to run
# compress_one) before torch, so this reaches workers of a cluster that already runs. Busy-waiting
# threads of several workers on the same cores steal each other's time (docs/design.md, "Traps").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from codec.errors import MoecError, OutputError
from codec.io.files import atomic_write_bytes
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

    @property
    def key(self) -> str:
        """What a manifest row must match for its volume to count as finished. The device and the
        thread count are left out: they change how fast a file is made, not what was asked."""
        budget = f"steps={self.steps}" if self.steps is not None else f"minutes={self.minutes:g}"
        experts = "auto" if self.experts is None else self.experts
        return f"ratio={self.ratio:g} {budget} experts={experts} seed={self.seed} batch={self.batch_size}"


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

def compress_one(job: VolumeJob, settings: BatchSettings, threads: int | None = None) -> VolumeResult:
    """Compress one volume as `moec compress` does, write its file atomically, measure the file
    written; never raises for a bad volume: the row says what went wrong."""
    start = time.perf_counter()
    try:
        import torch

        from codec import pipeline
        from codec.format import moecfile
        from codec.io.volume import load_volume

        torch.set_num_threads(threads or _worker_threads())
        volume = load_volume(job.source, job.series or None)
        train = TrainConfig(minutes=settings.minutes, steps=settings.steps, batch_size=settings.batch_size,
                            seed=settings.seed, device=settings.device)
        session = pipeline.Compression(volume, pipeline.Settings(ratio=settings.ratio, experts=settings.experts),
                                       train).train()
        if session.fitter.steps_run == 0:
            raise MoecError("the time budget ended before the first training step")
        data = session.encode().data
        job.target.parent.mkdir(parents=True, exist_ok=True)
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
    aside), and a failed row for each DICOM file that cannot be read. DICOM files of one folder
    form its series: a folder of one series maps to FOLDER.moec beside the folder's mirror, a
    folder of several to FOLDER/<series>.moec. OutputError when two volumes would share an output."""
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
        scan = scan_folder(folder)
        for info in scan.series:
            stem = series_stem(info, scan.series)
            out = (rel.parent / f"{folder.name}.moec") if len(scan.series) == 1 else rel / f"{stem}.moec"
            jobs.append(_job(input_dir, output_dir, rel, info.uid, out, info.modality,
                             info.rows * info.columns * len(info.files)))
        for path, why in scan.unreadable:
            bad = (rel / path.name).as_posix()
            broken.append(VolumeResult(bad, "", "", "", "", None, None, None, None, 0.0, "failed",
                                       f"{path.name} is not a readable DICOM file: {why}", ""))
    seen: dict[str, VolumeJob] = {}
    for job in jobs:
        if job.output in seen:
            first = seen[job.output]
            raise OutputError(f"{first.input} and {job.input} would both be written to {job.output}; rename one")
        seen[job.output] = job
    return jobs, broken


def _job(input_dir: Path, output_dir: Path, rel: Path, series: str, out: Path, modality: str,
         voxels: int) -> VolumeJob:
    name = rel.as_posix() if str(rel) != "." else "."
    return VolumeJob(name, series, out.as_posix(), modality, input_dir / rel, output_dir / out, voxels)


def _nifti_voxels(path: Path) -> int:
    import nibabel as nib

    try:
        return int(math.prod(nib.load(str(path)).shape))
    except Exception:  # the task will say what is wrong with it
        return 0


# --- the manifest -----------------------------------------------------------------------------------

def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    return str(value)


def _parse(row: dict) -> VolumeResult:
    def number(kind, text):
        return None if text == "" else kind(text)

    return VolumeResult(row["input"], row["series"], row["output"], row["modality"], row["shape"],
                        number(int, row["bytes"]), number(float, row["ratio"]), number(float, row["psnr"]),
                        number(float, row["ssim"]), float(row["seconds"] or 0.0), row["status"], row["error"],
                        row["settings"])


class Manifest:
    """OUT/manifest.csv: one row per volume, rewritten whole and atomically after each volume."""

    def __init__(self, path: Path):
        self.path = path
        self.rows: dict[tuple[str, str], VolumeResult] = {}
        if not path.exists():
            return
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise OutputError(f"cannot read the manifest {path}: {exc}") from None
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is not None and tuple(reader.fieldnames) != FIELDS:
            raise OutputError(f"{path} is not a moec batch manifest; give the batch another output folder")
        for row in reader:
            try:
                result = _parse(row)
            except (KeyError, TypeError, ValueError):
                continue  # a row cut short (a copy, a disk full): its volume simply runs again
            self.rows[result.key] = result

    def record(self, result: VolumeResult) -> None:
        self.rows[result.key] = result
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(FIELDS)
        for key in sorted(self.rows):
            row = self.rows[key]
            writer.writerow([_cell(getattr(row, f)) for f in FIELDS])
        atomic_write_bytes(self.path, out.getvalue().encode("utf-8"))


def is_finished(job: VolumeJob, row: VolumeResult | None, settings: BatchSettings) -> bool:
    if row is None or not row.ok or row.settings != settings.key:
        return False
    try:
        return job.target.stat().st_size == row.bytes
    except OSError:
        return False


# --- the engine -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Engine:
    """Where the tasks run: a LocalCluster of `workers` processes (each training with `threads`
    torch threads), or the cluster whose scheduler is at `scheduler`."""

    scheduler: str | None = None
    workers: int | None = None
    threads: int | None = None


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
    manifest = Manifest(output_dir / MANIFEST)
    done = [job for job in jobs if is_finished(job, manifest.rows.get(job.key), settings)]
    todo = [job for job in jobs if job not in done]
    other = [job for job in todo if (row := manifest.rows.get(job.key)) is not None and row.ok
             and row.settings != settings.key and job.target.exists()]
    if other and not force:
        raise OutputError(f"{len(other)} volume(s) in {output_dir} were compressed with other settings "
                          f"({manifest.rows[other[0].key].settings}); use --force to compress them again with "
                          "these, or give the batch another output folder")
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
    say_line = (lambda text: bar.write(text, file=sys.stderr)) if tty else say
    say_line(f"{len(todo)} volume(s) to compress" + (f", {skipped} already finished" if skipped else "")
             + f", on {described}")
    finished = 0
    try:
        from distributed import as_completed

        futures = {client.submit(compress_one, job, settings, threads, key=_task_key(job, settings)): job
                   for job in todo}
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
        try:
            client = Client(engine.scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise MoecError(f"cannot reach the dask scheduler at {engine.scheduler}: {exc}") from None
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


def _stop(client, cluster) -> None:
    try:
        client.close(timeout=10)
    finally:
        if cluster is not None:
            cluster.close(timeout=10)
