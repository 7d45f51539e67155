"""The napari behaviours the plugin leans on that differ between versions (napari >= 0.5), in one
place: where a future napari changes, this module is what changes."""

from __future__ import annotations

from typing import Any

#: (data, kwargs, "image" | "labels"): what npe2 readers return and `add_layer` adds.
LayerData = tuple[Any, dict, str]


def add_layer(viewer: Any, layer_data: LayerData) -> Any:
    """Add one reader-style layer tuple to `viewer`; the new layer."""
    data, kwargs, kind = layer_data
    return getattr(viewer, f"add_{kind}")(data, **kwargs)


def grid(viewer: Any) -> Any:
    """The viewer's grid model (napari 0.6 keeps it on the canvas model, 0.5 on the viewer)."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


def set_grid(viewer: Any, *, enabled: bool, stride: int = 1, spacing: float = 0.05) -> None:
    """Grid mode with `stride` and, where napari has it (0.6), a gap between the views, or
    neighbouring images read as one."""
    g = grid(viewer)
    if hasattr(g, "spacing"):
        g.spacing = spacing
    g.stride = stride
    g.enabled = enabled


def camera(viewer: Any) -> Any:
    """The viewer's camera (napari 0.9 keeps it on the scene)."""
    scene = getattr(viewer, "scene", None)
    return getattr(scene, "camera", None) or viewer.camera


def scale_bar(viewer: Any) -> Any:
    """The viewer's scale bar overlay (napari 0.9 keeps it on the canvas's overlays)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    return getattr(overlays, "scale_bar", None) or viewer.scale_bar


def name_overlay(layer: Any) -> Any | None:
    """The layer's own name overlay, drawn in its grid view (napari >= 0.6), or None."""
    overlays = getattr(layer, "_overlays", {})
    return overlays.get("layer_name") if hasattr(overlays, "get") else None


def colorbar(layer: Any) -> Any | None:
    """The layer's colour bar overlay (napari >= 0.6), or None."""
    overlays = getattr(layer, "_overlays", {})
    return overlays.get("colorbar") if hasattr(overlays, "get") else None


def hold_read_only(layer: Any) -> Any:
    """Keep a Labels layer from being painted. napari's Labels take no `editable` argument, and
    napari makes a layer editable again whenever its data are replaced (as each preview and result
    does), so the flag is held on every change of it."""

    def hold(event: Any = None) -> None:
        if layer.editable:
            layer.editable = False

    layer.events.editable.connect(hold)
    hold()
    return layer


def on_every_insert(viewer: Any, key: str, callback: Any) -> None:
    """Call `callback(layer)` for each layer added to `viewer` from now on, once per viewer and
    `key` (a reader returns layer data, not layers, so whatever it must set on the layer itself is
    set here, on insertion)."""
    hooks: set[str] | None = getattr(viewer, "_moec_insert_hooks", None)
    if hooks is None:
        hooks = set()
        viewer._moec_insert_hooks = hooks
    if key in hooks:
        return
    viewer.layers.events.inserted.connect(lambda event: callback(event.value))
    hooks.add(key)
