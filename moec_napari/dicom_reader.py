"""npe2 reader for DICOM: drag a folder of one or more series onto the viewer, get a layer per series.

A layer is named by its series' SeriesDescription where it has one, else by the folder. A separate
contribution from the NIfTI and .moec reader (reader.py), for directories only. Each
series becomes an Image layer through `layers.image_layer`, so it is oriented, scaled and described
exactly like a NIfTI of the same voxels; the layer's metadata also keeps the series' patient and
study identity (codec.io.dicom.DicomIdentity, as the .moec header stores it).
"""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

from codec.errors import DicomError
from codec.format.dicom_entry import identity_to_json
from codec.io.dicom import SeriesInfo, choose_series, is_dicom_file, read_series, scan_folder, series_stem

from .layers import image_layer

#: Entries looked at before deciding a folder holds no DICOM (napari asks every reader about every
#: folder dropped; a folder of thousands of files must not be read through for that).
PEEK = 64


def get_dicom_reader(path):
    if not isinstance(path, str):
        return None  # napari calls again for each folder of a list
    folder = Path(path)
    if not folder.is_dir():
        return None
    try:
        entries = itertools.islice((p for p in folder.iterdir() if p.is_file()), PEEK)
        if not any(is_dicom_file(p) for p in entries):
            return None
    except OSError:
        return None
    return read_dicom_folder


def layer_name(info: SeriesInfo, siblings: tuple[SeriesInfo, ...], folder: str) -> str:
    """What a radiologist calls a series: its SeriesDescription ("Lung", "T2 AX"), with its stem
    where another series of the folder has the same one; the folder's name (and the series' stem
    among several) where it has none."""
    stem = series_stem(info, siblings)
    if info.description:
        same = sum(1 for s in siblings if s.description == info.description)
        return info.description if same == 1 else f"{info.description} ({stem})"
    return folder if len(siblings) == 1 else f"{folder} {stem}"


def read_dicom_folder(path: str) -> list[tuple]:
    """One Image layer per series of the folder; a series that cannot be read is said in a warning
    (napari shows it) while the others open, and the error is raised when none can."""
    folder = Path(path)
    scan = scan_folder(folder)
    if not scan.series:
        choose_series(folder)  # raises why, in words
    layers, problems = [], []
    for info in scan.series:
        try:
            volume = read_series(info)
        except DicomError as exc:
            problems.append(str(exc))
            continue
        name = layer_name(info, scan.series, folder.name)
        layers.append(image_layer(volume, name, dicom=identity_to_json(volume.dicom)))  # type: ignore[arg-type]  # read from DICOM
    if not layers:
        raise DicomError(problems[0])
    for problem in problems:
        warnings.warn(problem, stacklevel=2)
    return layers
