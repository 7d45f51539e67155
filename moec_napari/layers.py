"""Napari layer data for volumes, reconstructions, errors, expert assignments and gate confidence.

Every layer keeps what it takes to give its voxels back to `codec` in the file's voxel order under
`layer.metadata["moec"]`: the orientation transform, the raw NIfTI header, the stored dtype and
scaling, and the source file (never overwritten by a writer).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from napari.utils.colormaps import Colormap, DirectLabelColormap

from codec.errors import VolumeError
from codec.io.volume import Volume, check_voxels, from_array

from .orientation import Orientation

META = "moec"
#: Roles of layers that show what the model decided and are never painted.
READ_ONLY_ROLES = ("experts",)

#: Window presets for CT (level, width) in Hounsfield units.
CT_WINDOWS = {"Brain": (40.0, 80.0), "Soft tissue": (40.0, 400.0), "Lung": (-600.0, 1500.0), "Bone": (400.0, 1800.0)}

ERROR_COLORMAP = Colormap(
    colors=[[0.13, 0.4, 0.67, 1.0], [1.0, 1.0, 1.0, 1.0], [0.7, 0.09, 0.17, 1.0]],
    name="moec error (blue - white - red)",
    interpolation="linear",
)

#: A fixed colour per expert, so the assignment keeps its colours across updates and sessions: one
#: for each of the most experts a model may have (codec.settings.RANGES["experts"]), none repeated
#: (Tableau's 20, then hues a golden angle apart at alternating saturation and brightness, each kept
#: only if it stands clear of those before it).
_PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#c7c7c7",
    "#dbdb8d",
    "#9edae5",
    "#455d99",
    "#a7f23d",
    "#730b66",
    "#62d9c5",
    "#4f18f2",
    "#367334",
    "#d9366d",
    "#16d977",
    "#3d4cf2",
    "#f2bb18",
    "#503473",
    "#36d951",
    "#990f21",
    "#6da5f2",
    "#d816d9",
    "#459980",
    "#f2883d",
    "#180b73",
    "#76d962",
    "#99265b",
    "#a236d9",
    "#f2786d",
    "#78d916",
    "#994588",
    "#3df2e2",
    "#734c0b",
    "#f21850",
    "#870f99",
    "#1617d9",
    "#5e9945",
    "#f23da8",
    "#0b6773",
    "#733437",
    "#66990f",
    "#959926",
    "#0b7317",
    "#36d9a1",
    "#776df2",
    "#f2e13d",
    "#0f9986",
    "#18d916",
    "#3da9f2",
    "#f24c18",
    "#6de9f2",
]


def expert_colormap(experts: int) -> DirectLabelColormap:
    """Expert k is label k + 1 (0 is "no expert", transparent), each in its own palette colour."""
    colors = {None: "transparent", 0: "transparent"}
    for k in range(experts):
        colors[k + 1] = _PALETTE[k % len(_PALETTE)]
    return DirectLabelColormap(color_dict=colors)


def read_only(layer):
    """A layer one looks at and never paints (the expert assignment is the model's, not the user's):
    napari's Labels take no `editable` argument, and napari makes a layer editable again whenever
    its data are replaced (as each preview and result does), so it is held read-only on every
    change of that flag."""

    def hold(event=None) -> None:
        if layer.editable:
            layer.editable = False

    layer.events.editable.connect(hold)
    hold()
    return layer


def lock_read_only_layers(viewer) -> None:
    """Make every experts layer added to `viewer` from now on read-only (once per viewer): the reader
    returns layer data, not layers, so it cannot set `editable` itself."""
    if getattr(viewer, "_moec_read_only_hook", False):
        return

    def on_inserted(event) -> None:
        layer = event.value
        if (moec_of(layer) or {}).get("role") in READ_ONLY_ROLES and hasattr(layer, "editable"):
            read_only(layer)

    viewer.layers.events.inserted.connect(on_inserted)
    viewer._moec_read_only_hook = True


def is_ct(vmin: float, vmax: float) -> bool:
    """Values that look like Hounsfield units: air near -1000 and tissue or bone above 0."""
    return vmin <= -900.0 and vmax >= 100.0


def window_limits(level: float, width: float) -> tuple[float, float]:
    return level - width / 2.0, level + width / 2.0


#: Percentiles of the starting contrast of a volume that is not CT (an MR's few bright voxels would
#: leave the min-max window dim).
PERCENTILES = (0.5, 99.5)
#: Voxels looked at for those percentiles (a strided subsample of bigger volumes).
PERCENTILE_SAMPLE = 2_000_000


def percentile_limits(array: np.ndarray) -> tuple[float, float]:
    """The 0.5-99.5 percentile window of a numpy array's finite values (min-max where that is flat)."""
    flat = np.asarray(array).reshape(-1)
    sample = flat[:: max(1, flat.size // PERCENTILE_SAMPLE)]
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(sample, PERCENTILES))
    if hi <= lo:
        lo, hi = float(sample.min()), float(sample.max())
    return lo, max(hi, lo + 1e-6)


def metadata_for(volume: Volume, orientation: Orientation | None, role: str, **extra) -> dict:
    meta = {
        "role": role,
        "orientation": orientation.to_dict() if orientation is not None else None,
        "header": volume.header,
        "dtype": np.dtype(volume.stored_dtype).name,
        "slope": volume.slope,
        "inter": volume.inter,
        "source": str(volume.source) if volume.source else None,
        "source_bytes": volume.source_bytes,
    }
    meta.update(extra)
    return {META: meta}


def orientation_of(volume: Volume) -> Orientation:
    return Orientation.from_affine(volume.affine, volume.shape)


def display(orientation: Orientation | None, array: np.ndarray) -> np.ndarray:
    return array if orientation is None else orientation.to_display(array)


def image_layer(
    volume: Volume, name: str, role: str = "original", value_range: tuple[float, float] | None = None, **extra
) -> tuple:
    """(data, kwargs, "image") for a volume, in display order with its transforms. CT opens in the
    soft-tissue window, anything else at its 0.5-99.5 percentiles. A lazy volume gives its
    `value_range` (a file's header has it) and opens at it: measuring more would decode every voxel."""
    orientation = orientation_of(volume)
    vmin, vmax = value_range if value_range is not None else volume.value_range
    if is_ct(vmin, vmax):
        limits = window_limits(*CT_WINDOWS["Soft tissue"])
    elif value_range is None and isinstance(volume.data, np.ndarray):
        limits = percentile_limits(volume.data)
    else:
        limits = (vmin, max(vmax, vmin + 1e-6))
    kwargs = {
        "name": name,
        "metadata": metadata_for(volume, orientation, role, **extra),
        "contrast_limits": limits,
        "colormap": "gray",
        **orientation.layer_kwargs(),
    }
    return orientation.to_display(volume.data), kwargs, "image"


def moec_of(layer) -> dict | None:
    meta = getattr(layer, "metadata", {}).get(META)
    return meta if isinstance(meta, dict) else None


def layer_orientation(layer) -> Orientation | None:
    meta = moec_of(layer)
    return Orientation.from_dict(meta["orientation"]) if meta and meta.get("orientation") else None


def volume_of_layer(layer) -> tuple[Volume, Orientation | None]:
    """The layer's voxels as a codec Volume in the file's own order, and the display transform.

    Layers from our reader carry their file's header and orientation; any other image layer is
    taken as it is (its axes are the file's axes, its scale and translate the affine's diagonal).
    An RGB layer or one that is not a volume (one slice, 2D) is refused in words before any work.
    """
    what = f"layer {layer.name!r}" if getattr(layer, "name", "") else "the layer"
    if getattr(layer, "rgb", False):
        raise VolumeError(f"{what} is an RGB image; MoEC compresses grey-level volumes")
    meta = moec_of(layer)
    orientation = layer_orientation(layer)
    # The codec's own refusal of what is not a volume (one slice, 2D), from the shape alone: such a
    # layer is one slice at most, so a zero array of its shape is cheap.
    shape = orientation.file_shape if orientation is not None else tuple(layer.data.shape)
    if len(shape) < 3 or min(shape[:3]) < 2:
        check_voxels(np.zeros(shape, dtype=np.float32), what)
    data = np.asarray(layer.data)
    if meta and orientation is not None:
        source = Path(meta["source"]) if meta.get("source") else None
        volume = from_array(
            orientation.to_file(data),
            affine=np.asarray(orientation.affine),
            header=meta["header"],
            dtype=meta["dtype"],
            slope=meta["slope"],
            inter=meta["inter"],
            source=source,
            source_bytes=meta.get("source_bytes"),
            what=what,
        )
        return volume, orientation
    affine = np.eye(4)
    scale, translate = np.asarray(layer.scale)[-3:], np.asarray(layer.translate)[-3:]
    affine[:3, :3] = np.diag(scale)
    affine[:3, 3] = translate
    dtype = data.dtype if data.dtype.kind in "iu" and data.dtype.itemsize <= 4 else np.float32
    return from_array(data, affine=affine, dtype=dtype, what=what), None


def transforms_of(layer) -> dict:
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


def lossy_name(stem: str, ratio: float) -> str:
    """Decompressed outputs are lossy: their names say MoEC and the ratio."""
    return f"{stem} MoEC {ratio:.0f}x"


def moec_layers(
    volume: Volume, labels, confidence, data: bytes, meta, stem: str, source: Path | None = None
) -> list[tuple]:
    """Reconstruction, expert assignment and gate confidence of a file (`meta`: its MoecMeta), as
    layer data; numpy arrays or lazy dask arrays (moec_napari.lazy), on the file's grid or another."""
    ratio = meta.raw_bytes / len(data)
    volume = replace(volume, source=source)
    name = lossy_name(stem, ratio)
    if volume.shape != tuple(meta.shape):
        name += f" at {'x'.join(map(str, volume.shape))}"
    data_, kwargs, _ = image_layer(
        volume, name, role="reconstruction", value_range=(meta.vmin, meta.vmax), moec_bytes=data, ratio=ratio
    )
    orientation = orientation_of(volume)
    placement = orientation.layer_kwargs()
    experts = meta.model.experts
    # The reconstruction is what opening a file shows; the partition and the gate confidence come
    # with it hidden (one click on their eye), or the opaque confidence on top would be all one saw.
    labels_layer = (
        orientation.to_display(labels),
        {
            "name": f"{name} experts",
            "colormap": expert_colormap(experts),
            "visible": False,
            "metadata": metadata_for(volume, orientation, "experts", ratio=ratio),  # read-only: see read_only
            **placement,
        },
        "labels",
    )
    confidence_layer = (
        orientation.to_display(confidence),
        {
            "name": f"{name} gate confidence",
            "colormap": "viridis",
            "contrast_limits": (0.0, 1.0),
            "visible": False,
            "metadata": metadata_for(volume, orientation, "confidence", ratio=ratio),
            **placement,
        },
        "image",
    )
    return [(data_, kwargs, "image"), labels_layer, confidence_layer]
