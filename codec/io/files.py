"""Atomic writes, the rule that no command overwrites its own input, and names made from what a
file says (a DICOM series' number and description) made safe to put in a path."""

from __future__ import annotations

import os
import re
import tempfile
import unicodedata
from collections.abc import Callable
from pathlib import Path

from codec.errors import OutputError, VolumeError


def suffixes_of(path: Path) -> str:
    """'.nii.gz' for 'a.b.nii.gz': the suffixes a format is recognised by (nibabel needs them)."""
    name = path.name
    for known in (".nii.gz", ".nii", ".npy", ".moec"):
        if name.lower().endswith(known):
            return name[-len(known) :]
    return path.suffix


_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+|\.{2,}")


def safe_name(text: str, *, max_length: int = 48, fallback: str = "unnamed") -> str:
    """`text` as one path component that cannot leave its folder or hide: Unicode folded to its
    compatible form, every run of characters other than ASCII letters, digits, '.' and '-' made
    one '_', no leading '.', '-' or '_' (no '..', no hidden file, no option), at most `max_length`
    characters; `fallback` when nothing is left. Every name built from a file's contents goes
    through here: a hospital archive's headers are not under the user's control."""
    folded = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode("ascii")
    slug = _UNSAFE.sub("_", folded).lstrip("._-")[:max_length].rstrip("._-")
    return slug or fallback


def terminal_safe(text: object) -> str:
    """`text` from a file (a header's strings, a path) with control characters shown as escapes,
    so that no escape sequence a file carries reaches a terminal."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in str(text))


def name_key(name: str) -> str:
    """What two names share when a file system may take them for one (case folded, Unicode
    normalised): outputs whose keys are equal must be told apart."""
    return unicodedata.normalize("NFKC", name).casefold()


def check_inside(folder: str | os.PathLike, path: str | os.PathLike) -> Path:
    """`path` resolved, or OutputError when it resolves outside `folder` (links followed): checked
    before every write whose name came, even in part, from a file's contents."""
    root = Path(folder).resolve()
    target = Path(path).resolve()
    if target != root and root not in target.parents:
        raise OutputError(f"refusing to write {path}: it resolves to {target}, outside the output folder {root}")
    return target


def refuse_overwrite(output: str | os.PathLike, *inputs: str | os.PathLike | None) -> None:
    """Raise OutputError when `output` is one of `inputs` (after resolving links)."""
    out = Path(output).resolve()
    for source in inputs:
        if source is not None and Path(source).resolve() == out:
            raise OutputError(f"refusing to overwrite the input file {source}; choose another output name")


def parent_of(path: str | os.PathLike) -> Path:
    """The folder `path` would be written in ("." for a bare name)."""
    target = Path(path)
    return target.parent if str(target.parent) else Path(".")


def check_writable_folder(folder: str | os.PathLike) -> None:
    """OutputError unless new entries can be made in `folder` (a file, or a DICOM series' folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OutputError(f"the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write in the folder {folder} (permission denied)")


def check_writable(path: str | os.PathLike) -> None:
    """OutputError unless a file can be written at `path`: said before any long work, not after."""
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"{target} is a folder, not a file name")
    check_writable_folder(parent_of(target))


def check_suffix(path: str | os.PathLike, kinds: tuple[str, ...]) -> None:
    """VolumeError unless `path`'s name ends in one of `kinds` (the suffixes a format is written
    under): said before any work is done, so that no long compression ends in a name nothing writes."""
    if not Path(path).name.lower().endswith(kinds):
        raise VolumeError(f"cannot write {path}: the name must end in {', '.join(kinds[:-1])} or {kinds[-1]}")


def _new_file_mode(target: Path) -> int:
    """What the file would have had without the temporary file (mkstemp makes it private, 0600):
    the replaced file's permissions, else the usual ones under the process's umask."""
    try:
        return target.stat().st_mode & 0o777
    except OSError:
        return 0o666 & ~_UMASK


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once, at import: os.umask can only be read by setting it, and setting it while another
# thread (the plugin's jobs) creates files would give those files the wrong permissions.
_UMASK = _read_umask()


def new_folder_mode() -> int:
    """The permissions a folder made by mkdtemp (private, 0700) would have had without it: the usual
    ones under the process's umask."""
    return 0o777 & ~_UMASK


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call write(temp) on a temporary file beside `path`, then rename it into place.

    The temporary name ends in the target's suffixes, in lower case, because nibabel and numpy
    choose the format (and gzip) from the name. A failure leaves the target untouched and removes
    the temporary file.
    """
    target = Path(path)
    check_writable(target)
    parent = parent_of(target)
    fd, tmp_name = tempfile.mkstemp(dir=parent, prefix=f".{target.name}.", suffix=f".part{suffixes_of(target).lower()}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, _new_file_mode(target))
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    def write(tmp: Path) -> None:
        tmp.write_bytes(data)

    atomic_write(path, write)
