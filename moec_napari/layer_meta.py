"""What the plugin knows about a layer: its role and what it takes to give its voxels back to `codec`.

The record lives in `layer.metadata["moec"]` as plain data (napari copies and may serialise
metadata, and a layer saved and reopened keeps it), and is read and written only through
`LayerMeta`, so one spelling of each role and field holds everywhere.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any

from .orientation import Orientation

#: The key of the record in a layer's metadata.
META = "moec"


class Role(str, Enum):
    """What a layer shows; the record stores its value, a plain string."""

    ORIGINAL = "original"
    RECONSTRUCTION = "reconstruction"
    ERROR = "error"
    EXPERTS = "experts"
    CONFIDENCE = "confidence"
    TISSUES = "tissues"


#: The layers a result adds beside its original, in the order they are added.
DERIVED: tuple[Role, ...] = (Role.RECONSTRUCTION, Role.ERROR, Role.EXPERTS, Role.CONFIDENCE)
#: Roles of layers that show what the model decided and are never painted.
READ_ONLY: tuple[Role, ...] = (Role.EXPERTS,)


@dataclass(frozen=True, eq=False)
class LayerMeta:
    """A layer's record: its role and, for layers whose voxels are a file's, the orientation
    transform, the raw NIfTI header, the stored dtype and scaling and the source file (which no
    writer overwrites); for a result, its ratio and the .moec bytes Save writes."""

    role: Role = Role.ORIGINAL
    orientation: Orientation | None = None
    header: bytes | None = None
    dtype: str = "float32"
    slope: float = 1.0
    inter: float = 0.0
    source: str | None = None
    source_bytes: int | None = None
    ratio: float | None = None
    moec_bytes: bytes | None = None
    #: A DICOM series' patient and study identity (codec.format.dicom_entry's JSON form).
    dicom: dict | None = None
    #: Anything else a reader stored, kept as it came.
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_file_order(self) -> bool:
        """Whether the layer's voxels map back to a file's voxel order (it has the header and orientation)."""
        return self.orientation is not None and self.header is not None

    def derived(self, role: Role, **changes: Any) -> LayerMeta:
        """The record of a layer derived from this one (same file, same order), in `role`."""
        return replace(self, role=role, **changes)

    # --- plain data --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("extra", "orientation")}
        d["role"] = self.role.value
        d["orientation"] = self.orientation.to_dict() if self.orientation is not None else None
        return {**self.extra, **d}

    def metadata(self) -> dict[str, Any]:
        """A layer's `metadata` argument holding this record."""
        return {META: self.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerMeta:
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        role = d.get("role")
        orientation = d.get("orientation")
        return cls(
            role=Role(role) if role in {r.value for r in Role} else Role.ORIGINAL,
            orientation=Orientation.from_dict(orientation) if orientation else None,
            header=d.get("header"),
            dtype=str(d.get("dtype") or "float32"),
            slope=float(d.get("slope", 1.0)),
            inter=float(d.get("inter", 0.0)),
            source=d.get("source"),
            source_bytes=d.get("source_bytes"),
            ratio=d.get("ratio"),
            moec_bytes=d.get("moec_bytes"),
            dicom=d.get("dicom"),
            extra={k: v for k, v in d.items() if k not in known},
        )

    @classmethod
    def of(cls, layer: Any) -> LayerMeta | None:
        """The record of a napari layer, or of its `metadata` dict (a writer's attributes); None for
        a layer the plugin did not make or open."""
        metadata = layer if isinstance(layer, dict) else getattr(layer, "metadata", None)
        d = (metadata or {}).get(META)
        return cls.from_dict(d) if isinstance(d, dict) else None


def role_of(layer: Any) -> Role:
    """A layer's role; a layer the plugin knows nothing about is an original."""
    meta = LayerMeta.of(layer)
    return Role.ORIGINAL if meta is None else meta.role
