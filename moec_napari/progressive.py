"""Refreshing the layers that show a progressive .moec (moec_napari.lazy) as its detail lands.

The background decoder tells a ProgressiveSource's listeners, from its own thread, when the coarse
preview or an exact plane is in; the layers are napari's, touched only on the GUI thread. A reader
returns layer data, not layers, so the viewer is hooked instead: `follow_progressive_layers(viewer)`
follows every layer inserted into it (and those already there) whose data is a progressive array,
and on each notice refreshes, on the GUI thread, the viewer's layers showing that file. Notices
that arrive while a refresh is already posted are folded into it.
"""

from __future__ import annotations

import inspect
import threading
import weakref

from superqt.utils import ensure_main_thread

from .lazy import ProgressiveArray, ProgressiveSource

_HOOK = "_moec_progressive_hook"


def progressive_source(layer) -> ProgressiveSource | None:
    """The ProgressiveSource behind a layer's data, or None for any other layer."""
    data = getattr(layer, "data", None)
    return data.source if isinstance(data, ProgressiveArray) else None


def follow_progressive_layers(viewer) -> None:
    """Refresh `viewer`'s progressive .moec layers whenever their background decode brings more
    detail (the coarse preview, then each exact plane). Once per viewer; call it where a viewer
    opens .moec files (the reader's viewer, the dock widget's)."""
    if viewer is None or getattr(viewer, _HOOK, False):
        return
    viewer_ref = weakref.ref(viewer)
    followed: weakref.WeakSet[ProgressiveSource] = weakref.WeakSet()

    def follow(layer) -> None:
        source = progressive_source(layer)
        if source is None or source in followed:
            return
        followed.add(source)
        source.listen(_Refresher(viewer_ref, source, followed))

    viewer.layers.events.inserted.connect(lambda event: follow(event.value))
    for layer in viewer.layers:
        follow(layer)
    setattr(viewer, _HOOK, True)


class _Refresher:
    """A source's listener for one viewer: posts one refresh at a time to the GUI thread."""

    def __init__(self, viewer_ref, source: ProgressiveSource, followed) -> None:
        self.viewer_ref = viewer_ref
        self.source_ref = weakref.ref(source)
        self.followed = followed
        self.posted = False
        self.gone = False
        self.lock = threading.Lock()

    def __call__(self) -> bool:
        """From the background thread: post a refresh unless one waits; False once not needed."""
        if self.gone or self.viewer_ref() is None:
            return False
        with self.lock:
            if self.posted:
                return True
            self.posted = True
        _refresh_on_gui_thread(self)
        return True

    def refresh(self) -> None:
        with self.lock:
            self.posted = False
        viewer, source = self.viewer_ref(), self.source_ref()
        if viewer is None or source is None:
            self.gone = True
            return
        layers = [layer for layer in viewer.layers if progressive_source(layer) is source]
        if not layers:  # the file's layers were removed: a layer of it inserted again follows anew
            self.gone = True
            self.followed.discard(source)
            return
        for layer in layers:
            _refresh(layer)


def _refresh(layer) -> None:
    """Slice the layer again: its shape stays, so napari need not measure its extent again where
    its refresh takes the option (napari >= 0.6; before, refresh(event=None) only)."""
    if "extent" in inspect.signature(layer.refresh).parameters:
        layer.refresh(extent=False)
    else:
        layer.refresh()


@ensure_main_thread
def _refresh_on_gui_thread(refresher: _Refresher) -> None:
    refresher.refresh()
