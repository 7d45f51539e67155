"""How an original and its derived layers are laid out for reading: side by side, named, measured.

Side by side: napari's grid, the original top left and its reconstruction beside it, each large
(the error, the partition and the gate confidence take a view of their own only when shown). Each
view is named on the canvas (the layers' name overlays), a scale bar gives millimetres, and the
error map carries a colour bar (its name states the sign and the unit). Outside the grid the
derived layers that would cover the images (error, confidence, experts) are drawn translucent.
Flip (a key, FLIP_KEY) shows the original and the reconstruction alone, in the same place, one
after the other. Every change of layout resets the view once napari has laid its views out, so no
view opens zoomed in or off centre (a view added, shown, hidden or removed); outside the grid the
user's zoom stays.
"""

from __future__ import annotations

import weakref
from typing import Any

from qtpy.QtCore import QTimer

from .layer_meta import Role
from .napari_compat import colorbar, grid, name_overlay, scale_bar, set_grid

#: The key that flips between the original and the reconstruction.
FLIP_KEY = "Shift-F"
#: With this stride napari's grid puts the first layer of the list (the original, below its derived
#: layers) top left and its reconstruction beside it.
GRID_STRIDE = 1
#: Opacity of a layer that would cover the images outside the grid.
OVER_IMAGES = {Role.ERROR: 0.5, Role.CONFIDENCE: 0.4, Role.EXPERTS: 0.5}


def _bind_flip_key(viewer: Any, comparison: Comparison) -> None:
    """FLIP_KEY flips the viewer's latest comparison. Bound once per viewer, through a weak
    reference: a closed dock's comparison (and the layers it holds) is not kept alive by the key."""
    viewer._moec_flip_target = weakref.ref(comparison)
    if getattr(viewer, "_moec_flip_bound", False):
        return

    def flip(_viewer: Any) -> None:
        target = viewer._moec_flip_target()
        if target is not None:
            target.flip()

    viewer.bind_key(FLIP_KEY, flip, overwrite=True)
    viewer._moec_flip_bound = True


class Comparison:
    """The layout of one original and its derived layers (role -> layer) in `viewer`."""

    def __init__(self, viewer: Any):
        self.viewer = viewer
        self.source: Any = None
        self.derived: dict[Role, Any] = {}
        #: While flipped: the layer shown now, and the visibility of each layer before the flip.
        self.flipped: Any = None
        self._before_flip: dict[Any, bool] = {}
        #: The grid's and the scale bar's state before `begin`, given back by `end`.
        self._before: tuple[bool, bool] | None = None
        g = grid(viewer)
        g.events.enabled.connect(self._on_grid)
        _bind_flip_key(viewer, self)
        self._reset = QTimer()
        self._reset.setSingleShot(True)
        self._reset.setInterval(0)
        self._reset.timeout.connect(self._reset_view)

    def _alive(self, layer: Any) -> bool:
        return layer is not None and layer in self.viewer.layers

    def layers(self) -> list[Any]:
        """The original and the derived layers still open."""
        return [layer for layer in (self.source, *self.derived.values()) if self._alive(layer)]

    # --- layout ---------------------------------------------------------------------------------
    def begin(self, source: Any) -> None:
        """Lay out `source` alone, side by side with what `add` brings: the grid, the scale bar and
        the source's name. (Each step costs napari a good part of 100 ms: the widget takes them one
        per turn of the event loop.)"""
        self._unflip()
        bar = scale_bar(self.viewer)
        if self._before is None:
            self._before = (bool(grid(self.viewer).enabled), bool(bar.visible))
        self.source, self.derived = source, {}
        set_grid(self.viewer, enabled=True, stride=GRID_STRIDE)
        bar.visible = True
        if hasattr(bar, "gridded"):
            bar.gridded = True
        self._name(source)

    def add(self, role: Role, layer: Any) -> None:
        """One derived layer joins the comparison: named, the error map with its colour bar, its
        opacity for where it is drawn, and a new layout when it is shown or hidden."""
        self.derived[role] = layer
        self._name(layer)
        if role is Role.ERROR:
            error_bar = colorbar(layer)
            if error_bar is not None:  # bottom left: the name is top left, the scale bar bottom right
                error_bar.position = "bottom_left"
                error_bar.visible = True
        layer.events.visible.connect(self._on_layout)
        self._on_grid()

    def forget(self, layer: Any) -> None:
        """A derived layer the user removed: the comparison goes on without it."""
        self.derived = {role: kept for role, kept in self.derived.items() if kept is not layer}
        if self.flipped is layer:
            self._unflip()
        self._on_layout()

    def end(self) -> None:
        """No comparison any more: the grid and the scale bar as they were before `begin`, the
        original's name off the canvas."""
        self._unflip()
        if self._alive(self.source):
            overlay = name_overlay(self.source)
            if overlay is not None:
                overlay.visible = False
        if self._before is not None:
            grid(self.viewer).enabled, scale_bar(self.viewer).visible = self._before
            self._before = None
        self.source, self.derived = None, {}

    @staticmethod
    def _name(layer: Any) -> None:
        overlay = name_overlay(layer)
        if overlay is not None:
            overlay.visible = True

    def show_role(self, role: Role, visible: bool) -> None:
        """Show or hide one derived layer (a view of its own in the grid)."""
        layer = self.derived.get(role)
        if layer is not None and self._alive(layer):
            layer.visible = visible

    def side_by_side(self) -> None:
        """Back to the grid, with what was shown before a flip."""
        self._unflip()
        set_grid(self.viewer, enabled=True, stride=GRID_STRIDE)
        self.reset_soon()

    def flip(self) -> None:
        """Show the original alone, then the reconstruction alone, in the same place, each time
        the key is pressed; the grid is left while flipping."""
        original, recon = self.source, self.derived.get(Role.RECONSTRUCTION)
        if not (self._alive(original) and self._alive(recon)):
            return
        if self.flipped is None:
            self._before_flip = {layer: layer.visible for layer in self.layers()}
            grid(self.viewer).enabled = False
            shown = original
        else:
            shown = recon if self.flipped is original else original
        for layer in self.layers():
            layer.visible = layer is shown
        self.flipped = shown
        self.viewer.status = f"MoEC: showing {shown.name} ({FLIP_KEY} flips)"

    def _unflip(self) -> None:
        if self.flipped is None:
            return
        for layer, visible in self._before_flip.items():
            if self._alive(layer):
                layer.visible = visible
        self.flipped, self._before_flip = None, {}

    def _on_grid(self, event: Any = None) -> None:
        """In the grid each layer has its view: opaque. Outside it, translucent over the images."""
        inside = grid(self.viewer).enabled
        for role, opacity in OVER_IMAGES.items():
            layer = self.derived.get(role)
            if layer is not None and self._alive(layer):
                layer.opacity = 1.0 if inside else opacity
        if inside and self.flipped is not None:
            self._unflip()
        self._on_layout()

    def _on_layout(self, event: Any = None) -> None:
        """A view added to or taken from the grid: every view changes size. (Outside the grid the
        user's zoom stays: a flip compares in the same place.)"""
        if grid(self.viewer).enabled:
            self.reset_soon()

    # --- view -----------------------------------------------------------------------------------
    def reset_soon(self, event: Any = None) -> None:
        """Reset the view once the event loop has let napari lay its views out."""
        self._reset.start()

    def _reset_view(self) -> None:
        if self.layers():
            self.viewer.reset_view()
