"""Sample data: the shipped phantom (a synthetic CT torso in Hounsfield units) and its tissues."""

from __future__ import annotations

from codec.io.phantom import TISSUES, make_phantom

from .layer_meta import Role
from .layers import image_layer, orientation_of, record_of


def phantom() -> list[tuple]:
    volume, tissues = make_phantom()
    data, kwargs, kind = image_layer(volume, "phantom (synthetic CT)")
    orientation = orientation_of(volume)
    labels = (
        orientation.to_display(tissues),
        {
            "name": "phantom tissues",
            "metadata": {**record_of(volume, orientation, Role.TISSUES).metadata(), "tissues": list(TISSUES)},
            "visible": False,
            **orientation.layer_kwargs(),
        },
        "labels",
    )
    return [(data, kwargs, kind), labels]
