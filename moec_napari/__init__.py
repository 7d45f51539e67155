"""MoEC Viewer: the napari plugin. Readers, writers, sample data and the compression dock widget,
all built on the `codec` package (which never imports anything from here)."""

import os

# Must precede torch's import (through codec): idle OpenMP threads spinning on the cores would
# starve napari's event loop while training runs in the background.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from codec import __version__

__all__ = ["__version__"]
