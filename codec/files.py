"""Atomic writes and the rule that no command overwrites its own input."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import OutputError


def suffixes_of(path: Path) -> str:
    """'.nii.gz' for 'a.b.nii.gz': the suffixes a format is recognised by (nibabel needs them)."""
    name = path.name
    for known in (".nii.gz", ".nii", ".npy", ".moec"):
        if name.lower().endswith(known):
            return name[-len(known):]
    return path.suffix


def refuse_overwrite(output: str | os.PathLike, *inputs: str | os.PathLike | None) -> None:
    """Raise OutputError when `output` is one of `inputs` (after resolving links)."""
    out = Path(output).resolve()
    for source in inputs:
        if source is not None and Path(source).resolve() == out:
            raise OutputError(f"refusing to overwrite the input file {source}; choose another output name")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call write(temp) on a temporary file beside `path`, then rename it into place.

    The temporary name keeps the target's suffixes because nibabel chooses the format (and gzip)
    from the name. A failure leaves the target untouched and removes the temporary file.
    """
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"{target} is a folder, not a file name")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"the folder {parent} does not exist")
    fd, tmp_name = tempfile.mkstemp(dir=parent, prefix=f".{target.name}.", suffix=f".part{suffixes_of(target)}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
