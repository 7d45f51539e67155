"""A cohort's manifest (OUT/manifest.csv, one row per volume): its memory between runs.

It is rewritten whole, atomically, after each volume, so a Ctrl-C or a killed machine leaves it as
it was after the last volume that finished; each output is written atomically too. A volume is
finished when its output exists, is the size its row says, passes its checksum, and its row says
ok under the same settings; a rerun skips those and runs the rest again: failed volumes, damaged
outputs, and those cut off before their row was written (whose output, if any, is replaced: the
output folder belongs to the run), after removing the temporary files a killed run left beside
its outputs.

Its text cells come in part from the files (names, DICOM headers): they are neutralised for
spreadsheets (OWASP's CSV injection).
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from codec.cohort.jobs import FIELDS, CohortSettings, VolumeJob, VolumeResult
from codec.errors import MoecError, OutputError
from codec.io.files import atomic_write_bytes, check_inside, suffixes_of

MANIFEST = "manifest.csv"


def remove_stale_parts(output_dir: Path, targets: Iterable[Path]) -> list[Path]:
    """Remove the temporary files (codec.io.files.atomic_write's `.NAME.<random>.part<suffix>`) that
    a killed run left beside `targets`, and nothing else: only regular files of that pattern, only
    beside a target of this run, only inside `output_dir`. Returns those removed."""
    by_folder: dict[Path, set[str]] = {}
    for target in targets:
        by_folder.setdefault(Path(target).parent, set()).add(Path(target).name)
    removed = []
    for folder, names in sorted(by_folder.items()):
        try:
            check_inside(output_dir, folder)
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except (OSError, OutputError):  # no such folder yet, or one that is not the run's
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
    return (
        candidate.startswith(prefix)
        and re.fullmatch(r"[a-z0-9_]+\.part" + re.escape(suffix), candidate[len(prefix) :]) is not None
    )


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

    def number(kind: Callable[[str], Any], text: str) -> Any:
        return None if text == "" else kind(text)

    return VolumeResult(
        input=cells["input"],
        series=cells["series"],
        output=cells["output"],
        modality=cells["modality"],
        shape=cells["shape"],
        bytes=number(int, cells["bytes"]),
        ratio=number(float, cells["ratio"]),
        psnr=number(float, cells["psnr"]),
        ssim=number(float, cells["ssim"]),
        seconds=float(cells["seconds"] or 0.0),
        status=cells["status"],
        error=cells["error"],
        settings=cells["settings"],
    )


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
            raise OutputError(
                f"the manifest {path} is not a readable CSV file ({exc}); move it away or give "
                "the batch another output folder"
            ) from None
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


def is_finished(job: VolumeJob, row: VolumeResult | None, settings: CohortSettings) -> bool:
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
