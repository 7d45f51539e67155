"""The layers a result shows beside its original: reconstruction, error, expert assignment and gate
confidence. One builder names them, colours them and writes their records, for the widget's
results and the reader's .moec files alike.

Only the reconstruction opens visible: the error, the partition and the gate confidence are a
click away (their eye, or the widget's boxes), so nothing opaque covers the images.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from codec.format.header import MoecMeta
from codec.io.volume import Volume

from .appearance import ERROR_COLORMAP, expert_colormap, starting_limits, value_unit
from .layer_meta import DERIVED, LayerMeta, Role
from .layers import orientation_of, record_of
from .napari_compat import LayerData

#: The stored dtype of each derived layer's voxels, where it is not the original's.
_DTYPES = {Role.ERROR: "float32", Role.EXPERTS: "uint8", Role.CONFIDENCE: "float32"}


def lossy_name(stem: str, ratio: float) -> str:
    """Decompressed outputs are lossy: their names say MoEC and the ratio."""
    return f"{stem} MoEC {ratio:.0f}x"


@dataclass(frozen=True)
class DerivedLayers:
    """How the derived layers of one result look: their names, colours, windows and records.

    `original`: the original's record (its file order, header and source; a bare record for a
    layer the plugin did not open); `placement`: the transforms that put the original in the world.
    """

    stem: str
    ratio: float
    original: LayerMeta
    placement: dict
    experts: int
    #: The reconstruction's starting window (the original's, so both read alike).
    limits: tuple[float, float]
    #: The unit of the values ("HU" for CT, "" where unknown): the error layer's name states it.
    unit: str = ""
    #: Said after the name when decoded on a grid other than the file's (" at 512x512x240").
    suffix: str = ""
    #: The .moec bytes behind the reconstruction (what Save and the .moec writer write).
    moec_bytes: bytes | None = field(default=None, repr=False)

    @property
    def base(self) -> str:
        return lossy_name(self.stem, self.ratio) + self.suffix

    def name(self, role: Role) -> str:
        if role is Role.RECONSTRUCTION:
            return self.base
        if role is Role.ERROR:  # the unit first: a narrow view cuts the name's end
            unit = f" in {self.unit}" if self.unit else ""
            return f"{self.base} error{unit} (MoEC − original)"
        return f"{self.base} {'gate confidence' if role is Role.CONFIDENCE else role.value}"

    def record(self, role: Role) -> LayerMeta:
        changes: dict[str, Any] = {"ratio": self.ratio}
        if role in _DTYPES:  # the original's scaling would turn an error or a confidence into integers
            changes.update(dtype=_DTYPES[role], slope=1.0, inter=0.0)
        if role is Role.RECONSTRUCTION:
            changes["moec_bytes"] = self.moec_bytes
        return self.original.derived(role, **changes)

    def layer(self, role: Role, data: Any, *, error_limit: float = 1.0) -> LayerData:
        """(data, kwargs, kind) of the layer in `role` showing `data` (display order)."""
        kwargs: dict[str, Any] = {
            "name": self.name(role),
            "metadata": self.record(role).metadata(),
            "visible": role is Role.RECONSTRUCTION,
            **self.placement,
        }
        if role is Role.EXPERTS:
            return data, {**kwargs, "colormap": expert_colormap(self.experts)}, "labels"
        if role is Role.RECONSTRUCTION:
            kwargs.update(colormap="gray", contrast_limits=self.limits)
        elif role is Role.ERROR:
            kwargs.update(colormap=ERROR_COLORMAP, contrast_limits=(-error_limit, error_limit))
        else:
            kwargs.update(colormap="viridis", contrast_limits=(0.0, 1.0))
        return data, kwargs, "image"

    def empty(self, shape: tuple[int, ...]) -> list[tuple[Role, LayerData]]:
        """Every derived layer with zero voxels of `shape`, for a training run's previews to fill."""
        return [
            (role, self.layer(role, np.zeros(shape, np.uint8 if role is Role.EXPERTS else np.float32)))
            for role in DERIVED
        ]


def file_layers(
    volume: Volume, labels: Any, confidence: Any, data: bytes, meta: MoecMeta, stem: str, source: Path | None = None
) -> list[LayerData]:
    """Reconstruction, expert assignment and gate confidence of a .moec file opened alone (`meta`:
    its header), as layer data: numpy or lazy arrays (moec_napari.lazy), on the file's grid or
    another. No error layer: there is no original to measure against."""
    volume = replace(volume, source=source)
    orientation = orientation_of(volume)
    suffix = "" if volume.shape == tuple(meta.shape) else f" at {'x'.join(map(str, volume.shape))}"
    derived = DerivedLayers(
        stem=stem,
        ratio=meta.raw_bytes / len(data),
        original=record_of(volume, orientation),
        placement=orientation.layer_kwargs(),
        experts=meta.model.experts,
        limits=starting_limits(meta.vmin, meta.vmax),
        unit=value_unit(meta.vmin, meta.vmax),
        suffix=suffix,
        moec_bytes=data,
    )
    show = orientation.to_display
    return [
        derived.layer(Role.RECONSTRUCTION, show(volume.data)),
        derived.layer(Role.EXPERTS, show(labels)),
        derived.layer(Role.CONFIDENCE, show(confidence)),
    ]
