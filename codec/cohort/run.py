"""A cohort compressed: every volume under a folder into another, resumable, as a generator of
events, as Fitter.fit yields progress: whoever drives it (the CLI, a test, a notebook) shows what
it likes; this module prints nothing.

    Refused (one per volume found broken) ... Started, Finished (one per volume run) ... Done

The run is a list of idempotent tasks, one per volume (codec.cohort.jobs), found by
codec.cohort.discover, skipped when the manifest (codec.cohort.manifest) says they are finished,
and run by the engine (codec.cohort.engine), each row recorded as its volume finishes. Closing
the generator, or an exception out of it (a Ctrl-C), stops the engine: the manifest keeps every
volume that finished, and the same run again goes on from there.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Generator
from dataclasses import dataclass, replace
from pathlib import Path

from codec.cohort import engine as engines
from codec.cohort.discover import discover
from codec.cohort.jobs import CohortSettings, VolumeResult
from codec.cohort.manifest import MANIFEST, Manifest, is_finished, remove_stale_parts
from codec.errors import MoecError, OutputError
from codec.io.files import check_inside, terminal_safe

#: What the engine is, in words, when every volume was finished before: no engine starts.
NOTHING_TO_RUN = "nothing to run"


@dataclass(frozen=True)
class Refused:
    """A volume found broken before any task ran (unreadable, or an output outside the output
    folder): its failed row, already in the manifest."""

    result: VolumeResult


@dataclass(frozen=True)
class Started:
    """The engine started, with `todo` volumes to compress; `skipped` were finished before."""

    todo: int
    skipped: int
    engine: str  # in words


@dataclass(frozen=True)
class Finished:
    """One volume compressed (or failed), its row in the manifest: the `done`-th of `total`; the
    running means are over every volume the manifest holds as ok under these settings."""

    result: VolumeResult
    done: int
    total: int
    mean_ratio: float | None
    mean_psnr: float | None


@dataclass(frozen=True)
class CohortSummary:
    """The outcome of one run over a cohort."""

    rows: tuple[VolumeResult, ...]  # every volume found, in the manifest's order
    compressed: int  # finished in this run
    skipped: int  # finished before it
    failed: int  # of the rows
    seconds: float
    engine: str  # in words


@dataclass(frozen=True)
class Done:
    """The run's end: every volume has its row."""

    summary: CohortSummary


Event = Refused | Started | Finished | Done


def run(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    settings: CohortSettings,
    *,
    engine: engines.Engine | None = None,
    force: bool = False,
) -> Generator[Event, None, None]:
    """Compress every volume under `input_dir` into `output_dir` (or go on with a run begun there),
    recording each in the manifest as it finishes, on `engine` (None: a LocalCluster laid out for
    this machine). MoecError, before any work, for folders that cannot be used or a manifest of
    other settings (unless `force`)."""
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
    # What a run killed mid-write left: this run's own temporary files, nothing else.
    remove_stale_parts(output_dir, [job.target for job in jobs] + [output_dir / MANIFEST])
    manifest = Manifest(output_dir / MANIFEST)
    done = [job for job in jobs if is_finished(job, manifest.rows.get(job.key), settings)]
    todo = [job for job in jobs if job not in done]
    other = [
        job
        for job in todo
        if (row := manifest.rows.get(job.key)) is not None
        and row.ok
        and row.settings != settings.key
        and job.target.exists()
    ]
    if other and not force:
        before = terminal_safe(manifest.rows[other[0].key].settings)
        raise OutputError(
            f"{len(other)} volume(s) in {output_dir} were compressed with other settings ({before}); "
            "use --force to compress them again with these, or give the batch another output folder"
        )
    for row in broken:
        refused = replace(row, settings=settings.key)
        manifest.record(refused)
        yield Refused(refused)
    described = NOTHING_TO_RUN
    if todo:
        # Leaving the block, by the end, an exception or the generator closed, stops the engine.
        with engines.start(todo, engine or engines.Engine()) as cluster:
            described = cluster.described
            yield Started(len(todo), len(done), described)
            for finished, result in enumerate(cluster.results(todo, settings), start=1):
                manifest.record(result)
                ratio, psnr = _means([r for r in manifest.rows.values() if r.ok and r.settings == settings.key])
                yield Finished(result, finished, len(todo), ratio, psnr)
    keys = [job.key for job in jobs] + [row.key for row in broken]
    rows = tuple(manifest.rows[k] for k in sorted(set(keys)) if k in manifest.rows)
    compressed = len(todo) - sum(1 for job in todo if not manifest.rows[job.key].ok)
    yield Done(
        CohortSummary(
            rows, compressed, len(done), sum(1 for r in rows if not r.ok), time.perf_counter() - start, described
        )
    )


def _means(ok: list[VolumeResult]) -> tuple[float | None, float | None]:
    """The mean ratio and PSNR of the volumes compressed so far (None where none has one)."""
    psnrs = [r.psnr for r in ok if r.psnr is not None]
    ratios = [r.ratio for r in ok if r.ratio is not None]
    return (statistics.fmean(ratios) if ratios else None), (statistics.fmean(psnrs) if psnrs else None)
