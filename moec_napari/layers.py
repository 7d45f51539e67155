"""Napari layer data for volumes, and volumes back from layers.

A layer the plugin opens keeps, in its record (layer_meta.LayerMeta), what it takes to give its
voxels back to `codec` in the file's voxel order; `volume_from` is the one way back, for the
widget (a layer) and the writers (a layer's data and attributes) alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from codec.errors import VolumeError
from codec.io.volume import Volume, check_voxels, from_array

from .appearance import starting_limits
from .layer_meta import READ_ONLY, LayerMeta, Role, role_of
from .napari_compat import LayerData, hold_read_only, on_every_insert
from .orientation import Orientation


def lock_read_only_layers(viewer: Any) -> None:
    """Make every experts layer added to `viewer` from now on read-only (once per viewer): the reader
    returns layer data, not layers, so it cannot set `editable` itself."""

    def lock(layer: Any) -> None:
        if role_of(layer) in READ_ONLY and hasattr(layer, "editable"):
            hold_read_only(layer)

    on_every_insert(viewer, "read-only", lock)


def record_of(volume: Volume, orientation: Orientation | None, role: Role = Role.ORIGINAL, **extra: Any) -> LayerMeta:
    """The record of a layer showing `volume` (file voxel order) through `orientation`."""
    return LayerMeta(
        role=role,
        orientation=orientation,
        header=volume.header,
        dtype=np.dtype(volume.stored_dtype).name,
        slope=volume.slope,
        inter=volume.inter,
        source=str(volume.source) if volume.source else None,
        source_bytes=volume.source_bytes,
        **extra,
    )


def orientation_of(volume: Volume) -> Orientation:
    return Orientation.from_affine(volume.affine, volume.shape)


def image_layer(volume: Volume, name: str, *, dicom: dict | None = None) -> LayerData:
    """(data, kwargs, "image") for an original volume, in display order with its transforms, in its
    starting window (appearance.starting_limits)."""
    orientation = orientation_of(volume)
    vmin, vmax = volume.value_range
    array = volume.data if isinstance(volume.data, np.ndarray) else None
    kwargs = {
        "name": name,
        "metadata": record_of(volume, orientation, dicom=dicom).metadata(),
        "contrast_limits": starting_limits(vmin, vmax, array),
        "colormap": "gray",
        **orientation.layer_kwargs(),
    }
    return orientation.to_display(volume.data), kwargs, "image"


def layer_orientation(layer: Any) -> Orientation | None:
    meta = LayerMeta.of(layer)
    return None if meta is None else meta.orientation


def volume_from(
    data: Any,
    meta: LayerMeta | None,
    *,
    scale: Any = None,
    translate: Any = None,
    what: str = "the layer",
) -> tuple[Volume, Orientation | None]:
    """A layer's voxels as a codec Volume in the file's own order, and the display transform.

    A layer with a file's record goes back to that file's order, header, stored dtype and scaling.
    Any other layer is taken as it is: its axes are the file's axes, its scale and translate the
    affine's diagonal, its dtype kept where a file can store it (integers up to 32 bits) and
    float32 otherwise. What is not a volume (one slice, 2D) is refused in words before any work."""
    orientation = meta.orientation if meta is not None and meta.has_file_order else None
    # The codec's refusal of what is not a volume, from the shape alone: such a layer is one
    # slice at most, so a zero array of its shape is cheap.
    shape = orientation.file_shape if orientation is not None else tuple(np.shape(data))
    if len(shape) < 3 or min(shape[:3]) < 2:
        check_voxels(np.zeros(shape, dtype=np.float32), what)
    array = np.asarray(data)
    if meta is not None and orientation is not None:
        volume = from_array(
            orientation.to_file(array),
            affine=np.asarray(orientation.affine),
            header=meta.header,
            dtype=meta.dtype,
            slope=meta.slope,
            inter=meta.inter,
            source=Path(meta.source) if meta.source else None,
            source_bytes=meta.source_bytes,
            what=what,
        )
        return volume, orientation
    n = array.ndim
    affine = np.eye(4)
    affine[:3, :3] = np.diag(np.asarray(scale if scale is not None else np.ones(n), dtype=float)[-3:])
    affine[:3, 3] = np.asarray(translate if translate is not None else np.zeros(n), dtype=float)[-3:]
    dtype = array.dtype if array.dtype.kind in "iu" and array.dtype.itemsize <= 4 else np.float32
    return from_array(array, affine=affine, dtype=dtype, what=what), None


def volume_of_layer(layer: Any) -> tuple[Volume, Orientation | None]:
    """`volume_from` for a napari layer; an RGB layer is refused in words."""
    what = f"layer {layer.name!r}" if getattr(layer, "name", "") else "the layer"
    if getattr(layer, "rgb", False):
        raise VolumeError(f"{what} is an RGB image; MoEC compresses grey-level volumes")
    return volume_from(layer.data, LayerMeta.of(layer), scale=layer.scale, translate=layer.translate, what=what)


def transforms_of(layer: Any) -> dict:
    """Everything that places a layer in the world, to copy onto layers derived from it."""
    return {
        "scale": tuple(layer.scale),
        "translate": tuple(layer.translate),
        "rotate": layer.rotate,
        "shear": layer.shear,
        "affine": layer.affine.affine_matrix,
        "axis_labels": tuple(layer.axis_labels),
        "units": tuple(str(u) for u in layer.units),
    }


def file_stem(path: str | Path) -> str:
    """A file's name without .nii.gz, .nii or .moec: what its layers are named after."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".moec"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem
