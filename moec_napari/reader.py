"""npe2 reader: NIfTI volumes in real units, and .moec files decoded into their layers.

Layers show in the radiologists' orientation under napari's default camera (moec_napari.orientation):
the reader never turns the viewer's camera. Readers are synchronous in npe2, so a .moec file's layers
are progressive (moec_napari.lazy): the reader returns once the header and weights are read; what
napari draws is a coarse preview at once and the exact voxels when a background thread has decoded
them (moec_napari.progressive refreshes the layers then).
"""

from __future__ import annotations

from pathlib import Path

from codec.format import moecfile
from codec.io.load import load_volume

from .derived import file_layers
from .layers import file_stem, image_layer, lock_read_only_layers
from .lazy import lazy_decode
from .progressive import follow_progressive_layers


def get_reader(path):
    if not isinstance(path, str):
        return None  # one file at a time; napari calls again for each file of a list
    name = path.lower()
    if name.endswith((".nii", ".nii.gz")):
        return read_nifti
    if name.endswith(".moec"):
        return read_moec
    return None


def read_nifti(path: str) -> list[tuple]:
    volume = load_volume(path)
    return [image_layer(volume, file_stem(path))]


def read_moec(path: str) -> list[tuple]:
    data = Path(path).read_bytes()
    moec = moecfile.from_bytes(data, path)
    volume, labels, confidence, _ = lazy_decode(moec)
    _follow_in_viewer()
    return file_layers(volume, labels, confidence, data, moec.meta, file_stem(path), source=Path(path))


def _follow_in_viewer() -> None:
    """The experts layer is read-only and the layers follow their background decodes, but a reader
    returns layer data, not layers: the viewer opening the file (napari's current one) sets both on
    insertion."""
    try:
        from napari import current_viewer
    except ImportError:  # pragma: no cover - the plugin runs inside napari
        return
    viewer = current_viewer()
    if viewer is not None:
        lock_read_only_layers(viewer)
        follow_progressive_layers(viewer)
