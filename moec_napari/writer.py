"""npe2 writers: image and label layers as NIfTI in their file's voxel order and affine, and the
model behind a reconstruction as .moec. No writer overwrites the file a layer came from."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from codec.errors import MoecError
from codec.format import moecfile
from codec.io.files import refuse_overwrite
from codec.io.load import save_volume
from codec.io.nifti import save_labels
from codec.io.volume import Volume

from .layer_meta import LayerMeta, Role
from .layers import volume_from


def _meta(attributes: dict) -> LayerMeta | None:
    return LayerMeta.of(attributes.get("metadata") or {})


def _volume(data, attributes: dict) -> Volume:
    """The layer's voxels as a codec Volume in its file's order (or as displayed, for other layers)."""
    name = attributes.get("name")
    return volume_from(
        data,
        _meta(attributes),
        scale=attributes.get("scale"),
        translate=attributes.get("translate"),
        what=f"layer {name!r}" if name else "the layer",
    )[0]


def _descrip(attributes: dict) -> str:
    meta = _meta(attributes)
    if meta is not None and meta.role is not Role.ORIGINAL and meta.ratio:
        return f"MoEC lossy {meta.ratio:.0f}x ({meta.role.value})"
    return str(attributes.get("name", ""))[:79]


def _source(attributes: dict) -> str | None:
    meta = _meta(attributes)
    return None if meta is None else meta.source


def write_image(path: str, data, attributes: dict) -> list[str]:
    refuse_overwrite(path, _source(attributes))
    save_volume(_volume(data, attributes), path, descrip=_descrip(attributes))
    return [path]


def write_labels(path: str, data, attributes: dict) -> list[str]:
    refuse_overwrite(path, _source(attributes))
    volume = _volume(np.asarray(data), attributes)
    save_labels(volume, volume.data.astype(np.uint8), path, _descrip(attributes))
    return [path]


def write_moec(path: str, data, attributes: dict) -> list[str]:
    meta = _meta(attributes)
    content = None if meta is None else meta.moec_bytes
    if not isinstance(content, (bytes, bytearray)):
        raise MoecError("this layer holds no MoEC model: save the reconstruction layer of a trained or loaded model")
    refuse_overwrite(path, _source(attributes))
    if not Path(path).name.lower().endswith(".moec"):
        path = path + ".moec"
    moecfile.write(path, bytes(content))
    return [path]
