"""Fixtures for the plugin tests: real NIfTI files and a viewer with the widget, under Xvfb."""

from __future__ import annotations

import numpy as np
import pytest

from codec.io.load import save_volume
from codec.io.phantom import make_phantom

from ..conftest import write_nifti

SMALL = (32, 28, 16)
#: Training settings that finish in a few seconds on two cores.
FAST_STEPS = 120


def lps_affine() -> np.ndarray:
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])
    affine[:3, 3] = [12.0, 30.0, -20.0]
    return affine


@pytest.fixture
def phantom_nifti(tmp_path):
    """The phantom at test size as a NIfTI file (int16, intercept -1024, LPS affine)."""
    volume, _ = make_phantom(SMALL)
    path = tmp_path / "phantom.nii.gz"
    save_volume(volume, path)
    return path


@pytest.fixture
def oriented_nifti(tmp_path):
    """A factory: a random int16 volume under the given affine, written by nibabel."""

    def make(affine: np.ndarray, name: str, shape=(12, 10, 8)):
        rng = np.random.default_rng(0)
        raw = rng.integers(0, 1000, size=shape).astype(np.int16)
        path = tmp_path / f"{name}.nii.gz"
        write_nifti(path, raw, affine)
        return path, raw

    return make


@pytest.fixture
def widget_on(make_napari_viewer, qtbot):
    """A factory: a viewer with these layers opened through our reader, and the dock widget."""
    from moec_napari.reader import get_reader
    from moec_napari.widget import MoecWidget

    def make(*paths):
        viewer = make_napari_viewer()
        for path in paths:
            for data, kwargs, kind in get_reader(str(path))(str(path)):
                getattr(viewer, f"add_{kind}")(data, **kwargs)
        widget = MoecWidget(viewer)
        viewer.window.add_dock_widget(widget)
        return viewer, widget

    return make


def wait_for(widget, qtbot, timeout=120_000) -> None:
    """Wait until the widget's worker has finished (before the viewer is torn down)."""
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)
