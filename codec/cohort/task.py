"""One volume of a cohort compressed, as a task that a dask worker runs: the same codec steps
`moec compress` takes, its file written atomically inside the output folder, its row returned.

A worker imports this module to run `compress_one`, so it imports nothing heavy at module level
(torch and the pipeline are imported by the task) and changes nothing in the process at import.
"""

from __future__ import annotations

import math
import os
import time

from codec.cohort.jobs import CohortSettings, VolumeJob, VolumeResult, failed_row
from codec.errors import MoecError
from codec.io.limits import MemoryLimit
from codec.settings import TrainConfig


def compress_one(
    job: VolumeJob, settings: CohortSettings, *, threads: int | None = None, limit: MemoryLimit | None = None
) -> VolumeResult:
    """Compress one volume as `moec compress` does, write its file atomically, measure the file
    written; never raises for a bad volume: the row says what went wrong. `limit`: the memory the
    task may plan to hold (None: the default share of the memory of the machine it runs on)."""
    start = time.perf_counter()
    try:
        # OpenMP reads its wait policy when torch loads it, so it is set before the import: the
        # workers of a cluster this run did not start get it here (a LocalCluster's get it from
        # their environment). Busy-waiting threads of several workers on the same cores steal each
        # other's time (docs/design.md, "Traps").
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        import torch

        from codec import pipeline
        from codec.format import moecfile
        from codec.io.load import load_volume

        job.checked_target()  # before any work: a refused path should not cost a training
        torch.set_num_threads(threads or _worker_threads())
        volume = load_volume(job.source, job.series or None, limit=limit or MemoryLimit.default(), compressing=True)
        train = TrainConfig(
            minutes=settings.minutes,
            steps=settings.steps,
            batch_size=settings.batch_size,
            seed=settings.seed,
            device=settings.device,
        )
        file_settings = pipeline.Settings(
            ratio=settings.ratio, experts=settings.experts, keep_identity=settings.keep_identity
        )
        compression = pipeline.Compression(volume, file_settings, train).train()
        if compression.fitter.steps_run == 0:
            raise MoecError("the time budget ended before the first training step")
        data = compression.encode().data
        job.checked_target()  # again: the output folder may have changed during the training
        job.target.parent.mkdir(parents=True, exist_ok=True)
        job.checked_target()  # and once its folders exist, links resolved, right before the write
        moecfile.write(job.target, data)
        evaluation = compression.evaluate(moecfile.read(job.target))
        q = evaluation.quality
        return VolumeResult(
            input=job.input,
            series=job.series,
            output=job.output,
            modality=job.modality,
            shape="x".join(map(str, volume.shape)),
            bytes=len(data),
            ratio=evaluation.ratio,
            psnr=q.psnr if math.isfinite(q.psnr) else None,
            ssim=q.ssim,
            seconds=time.perf_counter() - start,
            status="ok",
            error="",
            settings=settings.key,
        )
    except MoecError as exc:
        return failed_row(job, settings, str(exc), time.perf_counter() - start)
    except MemoryError:
        return failed_row(job, settings, "out of memory", time.perf_counter() - start)
    except Exception as exc:  # a row that says what happened, and the cohort goes on
        return failed_row(job, settings, f"unexpected {type(exc).__name__}: {exc}", time.perf_counter() - start)


def _worker_threads() -> int:
    """torch threads for a task on a worker this run did not start: the host's cores shared by
    the worker's task slots (a `dask worker` of N threads runs N volumes at once)."""
    try:
        from distributed import get_worker

        slots = get_worker().state.nthreads
    except (ImportError, ValueError, AttributeError):
        slots = 1
    return max(1, (os.cpu_count() or 1) // max(1, slots))
