"""Where a cohort's tasks run: dask.distributed, on a LocalCluster this run starts and stops, or on
a cluster that already runs (its scheduler's address, tcp:// or tls://). The engine is dask's: no
process pool or scheduler of our own; each task is codec.cohort.task.compress_one.

torch's thread count is per process, so the LocalCluster's workers are processes of one thread
each, every one running torch with its share of the cores (workers x threads = the cores).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from codec.cohort.jobs import CohortSettings, VolumeJob, VolumeResult, failed_row, in_one_line
from codec.cohort.task import compress_one
from codec.errors import MoecError
from codec.io.limits import MemoryLimit, cpu_cores, physical_memory

if TYPE_CHECKING:
    from distributed import Client, LocalCluster

#: What compressing one volume may hold in memory: a base (the worker with torch loaded) and a share
#: per voxel, both bounds set with room above the peak measured on the development CT.
BASE_MEMORY = 0.5 * 2**30
MEMORY_PER_VOXEL = 64
#: The share of the machine's memory that local workers may plan to fill: the rest is for this
#: process, the scheduler and whatever else runs.
LOCAL_MEMORY_SHARE = 0.8


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


def local_layout(todo: list[VolumeJob], engine: Engine, *, n_cores: int, memory: int) -> tuple[int, int]:
    """(worker processes, torch threads each) for a LocalCluster. By default one thread per worker
    and as many workers as cores, volumes and memory allow: small networks train far better as
    two one-thread processes than as one two-thread one, and volumes are independent."""
    threads = engine.threads
    workers = engine.workers
    if workers is None:
        threads = threads or 1
        largest = max((job.voxels for job in todo), default=0)
        fit = max(1, int(LOCAL_MEMORY_SHARE * memory // (BASE_MEMORY + MEMORY_PER_VOXEL * largest)))
        workers = max(1, min(n_cores // threads, len(todo), fit))
    elif threads is None:
        threads = max(1, n_cores // workers)
    return max(1, min(workers, max(1, len(todo)))), threads


def task_key(job: VolumeJob, settings: CohortSettings) -> str:
    """The same volume under the same settings is the same task (dask runs it once)."""
    digest = hashlib.sha1(f"{job.source}|{job.series}|{job.target}|{settings.key}".encode()).hexdigest()[:16]
    return f"moec-compress-{digest}"


class Cluster:
    """A started engine: the dask client this run uses, and the LocalCluster it started (None on a
    cluster that already runs). A context manager: leaving it closes both, whatever happened."""

    def __init__(self, client: Client, local: LocalCluster | None, engine: Engine, threads: int | None, described: str):
        self.client = client
        self.local = local
        self.engine = engine
        self.threads = threads  # torch threads per task; None: each worker shares out its host's cores
        self.described = described  # in words, for whoever shows the run

    def results(self, todo: list[VolumeJob], settings: CohortSettings) -> Iterator[VolumeResult]:
        """Every volume of `todo` compressed, its row yielded as it finishes (in no set order)."""
        from distributed import as_completed

        futures = {
            self.client.submit(
                compress_one, job, settings, threads=self.threads, limit=self.engine.memory, key=task_key(job, settings)
            ): job
            for job in todo
        }
        for future in as_completed(futures):
            job = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # the task itself never raises: its workers died under it
                result = failed_row(job, settings, _task_error(exc))
            yield result

    def close(self) -> None:
        try:
            self.client.close(timeout=10)
        finally:
            if self.local is not None:
                self.local.close(timeout=10)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def start(todo: list[VolumeJob], engine: Engine) -> Cluster:
    """The engine started for `todo`: connected to the cluster at engine.scheduler, or a LocalCluster
    laid out for these volumes on this machine."""
    logging.getLogger("distributed").setLevel(logging.ERROR)
    from distributed import Client, LocalCluster

    if engine.scheduler:
        client = connect(engine.scheduler)
        workers = client.scheduler_info().get("workers", {})
        slots = sum(w.get("nthreads", 1) for w in workers.values())
        where = f"the cluster at {engine.scheduler} ({len(workers)} worker(s), {slots} slot(s))"
        return Cluster(client, None, engine, engine.threads, where)
    workers, threads = local_layout(todo, engine, n_cores=cpu_cores(), memory=physical_memory())
    # Processes, not threads: torch.set_num_threads is process-wide. OMP_NUM_THREADS too, since
    # dask's nannies otherwise start every worker with 1. OpenMP reads its wait policy when torch
    # loads it: busy-waiting threads of several workers on the same cores steal each other's time.
    env = {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    local = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.ERROR,
        env=env,
    )
    try:
        client = Client(local)
    except BaseException:
        local.close(timeout=10)
        raise
    return Cluster(
        client,
        local,
        engine,
        threads,
        f"a local cluster of {workers} worker process(es) x {threads} torch thread(s) ({cpu_cores()} cores)",
    )


def _task_error(exc: BaseException) -> str:
    name = type(exc).__name__
    if name == "KilledWorker":
        return "the workers running it died, several times (out of memory?); it runs again on a rerun"
    return f"the task failed: {name}: {exc}"


def connect(address: str) -> Client:
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
            raise MoecError(
                f"cannot connect to the dask scheduler at {address} over TLS ({in_one_line(exc)}); "
                f"check the certificate configuration: {_TLS_KEYS}"
            ) from None
        raise MoecError(f"cannot reach the dask scheduler at {address}: {in_one_line(exc)}") from None


_TLS_KEYS = (
    "dask's distributed.comm.tls.ca-file, distributed.comm.tls.client.cert and "
    "distributed.comm.tls.client.key (or DASK_DISTRIBUTED__COMM__TLS__CA_FILE, "
    "..._CLIENT__CERT and ..._CLIENT__KEY), the CA and this client's certificate for the cluster"
)


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
        raise MoecError(
            f"the TLS certificate configuration for {address} cannot be used ({in_one_line(exc)}); check {_TLS_KEYS}"
        ) from None
    if context is None:
        raise MoecError(f"{address} is a TLS address but dask's configuration names no certificate; set {_TLS_KEYS}")
