"""npe2 reader: NIfTI volumes in real units, and .moec files decoded into their layers.

Readers are synchronous in npe2; a .moec file is decoded here, chunk by chunk, in bounded memory.
"""

from __future__ import annotations

from pathlib import Path

from codec import pack
from codec.decode import reconstruct
from codec.volume import load_volume

from .layers import image_layer, moec_layers


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".moec"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


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
    return [image_layer(volume, _stem(Path(path)))]


def read_moec(path: str) -> list[tuple]:
    data = Path(path).read_bytes()
    moec = pack.decode(data, path)
    recon = reconstruct(moec)
    return moec_layers(recon, data, moec.meta.model.experts, _stem(Path(path)), source=Path(path))
