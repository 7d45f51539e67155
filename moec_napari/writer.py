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
from codec.io.volume import from_array

from .layers import META
from .orientation import Orientation


def _meta(attributes: dict) -> dict:
    meta = (attributes.get("metadata") or {}).get(META)
    return meta if isinstance(meta, dict) else {}


def _volume(data, attributes: dict):
    """The layer's voxels as a codec Volume in its file's order (or as displayed, for other layers)."""
    meta = _meta(attributes)
    array = np.asarray(data)
    if meta.get("orientation") and meta.get("header"):
        o = Orientation.from_dict(meta["orientation"])
        return from_array(
            o.to_file(array).astype(np.float32),
            affine=np.asarray(o.affine),
            header=meta["header"],
            dtype=meta.get("dtype", "float32"),
            slope=meta.get("slope", 1.0),
            inter=meta.get("inter", 0.0),
        )
    affine = np.eye(4)
    scale = np.asarray(attributes.get("scale", np.ones(array.ndim)))[-3:]
    translate = np.asarray(attributes.get("translate", np.zeros(array.ndim)))[-3:]
    affine[:3, :3] = np.diag(scale)
    affine[:3, 3] = translate
    dtype = array.dtype if array.dtype.kind in "iu" and array.dtype.itemsize <= 4 else np.float32
    return from_array(array, affine=affine, dtype=dtype)


def _descrip(attributes: dict) -> str:
    meta = _meta(attributes)
    if meta.get("role") in ("reconstruction", "experts", "confidence", "error") and meta.get("ratio"):
        return f"MoEC lossy {meta['ratio']:.0f}x ({meta['role']})"
    return str(attributes.get("name", ""))[:79]


def write_image(path: str, data, attributes: dict) -> list[str]:
    refuse_overwrite(path, _meta(attributes).get("source"))
    save_volume(_volume(data, attributes), path, descrip=_descrip(attributes))
    return [path]


def write_labels(path: str, data, attributes: dict) -> list[str]:
    refuse_overwrite(path, _meta(attributes).get("source"))
    volume = _volume(np.asarray(data).astype(np.float32), attributes)
    save_labels(volume, volume.data.astype(np.uint8), path, _descrip(attributes))
    return [path]


def write_moec(path: str, data, attributes: dict) -> list[str]:
    meta = _meta(attributes)
    content = meta.get("moec_bytes")
    if not isinstance(content, (bytes, bytearray)):
        raise MoecError("this layer holds no MoEC model: save the reconstruction layer of a trained or loaded model")
    refuse_overwrite(path, meta.get("source"))
    if not Path(path).name.lower().endswith(".moec"):
        path = path + ".moec"
    moecfile.write(path, bytes(content))
    return [path]
