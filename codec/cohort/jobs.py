"""What a cohort's run is made of: the settings every volume is compressed with, one job per
volume (where it is read, where its .moec file goes) and one result per volume (a manifest row).

A job's output path follows from its input path (the folder tree mirrored), so a task run twice,
or run again after a lost worker, writes the same file.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath

from codec.errors import MoecError, OutputError
from codec.fit.budget import Budget
from codec.io.files import check_inside
from codec.settings import Settings, TrainConfig

_FILE, _TRAIN = Settings(), TrainConfig()  # the defaults, read from their one place


@dataclass(frozen=True)
class CohortSettings:
    """What every volume of a cohort is compressed with (training time and seed included)."""

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
        budget = Budget.of(self.steps, self.minutes).key()
        experts = "auto" if self.experts is None else self.experts
        identity = " identity=kept" if self.keep_identity else ""
        return f"ratio={self.ratio:g} {budget} experts={experts} seed={self.seed} batch={self.batch_size}{identity}"


@dataclass(frozen=True)
class VolumeJob:
    """One volume of the cohort: where it is read and where its .moec file goes."""

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
        if not parts or len(parts) > len(self.target.parts) or self.target.parts[-len(parts) :] != parts:
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


def failed_row(job: VolumeJob, settings: CohortSettings, error: str, seconds: float = 0.0) -> VolumeResult:
    """The row of a volume that could not be compressed, saying why."""
    return failed(
        job.input,
        error,
        series=job.series,
        output=job.output,
        modality=job.modality,
        seconds=seconds,
        settings=settings.key,
    )


def failed(
    name: str,
    error: str,
    *,
    series: str = "",
    output: str = "",
    modality: str = "",
    seconds: float = 0.0,
    settings: str = "",
) -> VolumeResult:
    """A failed row for `name` (a volume, a file or a folder of the input), saying why; a row found
    before any settings apply leaves them empty (the run records its own)."""
    return VolumeResult(
        input=name,
        series=series,
        output=output,
        modality=modality,
        shape="",
        bytes=None,
        ratio=None,
        psnr=None,
        ssim=None,
        seconds=seconds,
        status="failed",
        error=error,
        settings=settings,
    )


def in_one_line(exc: BaseException) -> str:
    """An exception in one line of reasonable length, for a row or a message."""
    text = " ".join(str(exc).split())
    if not isinstance(exc, MoecError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
