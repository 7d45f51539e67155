"""Finding a cohort's volumes: every NIfTI file and DICOM series under a folder, each given an
output path inside the output folder that mirrors its input's.

The input is not trusted: a name built from a file's contents goes through safe_name, every
output path is checked to stay inside the output folder before anything is written, outputs whose
names a file system may take for one get a suffix of their own, and a folder that cannot be
scanned is a failed row rather than the end of the run.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import replace
from pathlib import Path, PurePosixPath

from codec.cohort.jobs import VolumeJob, VolumeResult, failed, in_one_line
from codec.errors import OutputError
from codec.io.files import name_key, safe_name

NIFTI_SUFFIXES = (".nii", ".nii.gz")


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
                jobs.append(
                    _job(input_dir, output_dir, rel / name, "", rel / f"{stem}.moec", "", _nifti_voxels(folder / name))
                )
        if not any(not n.lower().endswith(NIFTI_SUFFIXES) for n in names):
            continue
        try:
            scan = scan_folder(folder)
            found = []
            for info in scan.series:
                # The stem comes from the files' headers: made safe here too, whatever series_stem does.
                stem = safe_name(series_stem(info, scan.series))
                out = (rel.parent / f"{folder.name}.moec") if len(scan.series) == 1 else rel / f"{stem}.moec"
                found.append(
                    _job(
                        input_dir,
                        output_dir,
                        rel,
                        str(info.uid),
                        out,
                        str(info.modality),
                        int(info.rows) * int(info.columns) * len(info.files),
                    )
                )
        except Exception as exc:  # one damaged file must not stop the run: its folder is a failed row
            broken.append(
                failed(_posix(rel), f"cannot scan the folder {_posix(rel)} for DICOM series: {in_one_line(exc)}")
            )
            continue
        jobs += found
        for path, why in scan.unreadable:
            broken.append(failed((rel / path.name).as_posix(), f"{path.name} is not a readable DICOM file: {why}"))
    inside = []
    for job in tell_apart(jobs, output_dir):
        try:
            job.checked_target()
        except OutputError as exc:
            broken.append(failed(job.input, str(exc), series=job.series, output=job.output, modality=job.modality))
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


def _job(input_dir: Path, output_dir: Path, rel: Path, series: str, out: Path, modality: str, voxels: int) -> VolumeJob:
    return VolumeJob(_posix(rel), series, out.as_posix(), modality, input_dir / rel, output_dir / out, voxels)


def _posix(rel: Path) -> str:
    return rel.as_posix() if str(rel) != "." else "."


def _nifti_voxels(path: Path) -> int:
    import nibabel as nib

    try:
        return int(math.prod(nib.load(str(path)).shape))
    except Exception:  # the task will say what is wrong with it
        return 0
