"""File voxel order <-> display order, and the layer transforms that put voxels where the affine says.

`codec` always works in the file's own voxel order; only the plugin reorients, for display
(docs/design.md, "Data flow"). Display order is the closest LPI orientation (RAS with every axis
flipped) with the axes reversed, (t,) I, P, L, so that napari's *default* camera (depth towards the
viewer, world axis -2 pointing down, -1 pointing right) shows the radiologists' views without touching
the camera: axial slices on the slider (superior first) with anterior up and the patient's right on the
screen's left; coronal and sagittal views with the head up (and the face on the left); and a 3D view
that is the patient, not its mirror image ((I, P, L) is right-handed, like napari's (z, y, x)). The
flips are in the data, never a negative scale, so painting and `to_file` stay exact. The layer gets a
diagonal (positive) scale and translate, or a full affine for oblique volumes. Napari's world axes
are therefore (t,) z, y, x = I, P, L in millimetres: the NIfTI's RAS millimetres negated and reversed.

The transform is stored in each layer's metadata as plain lists, so it survives napari's metadata
handling and can be undone whenever voxels go back to `codec` or to a file.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np

SPATIAL = 3
RAS = nib.orientations.axcodes2ornt("RAS")
#: The canonical orientation the display reverses: RAS with every axis flipped (see the module doc).
LPI = nib.orientations.axcodes2ornt("LPI")
ornt_transform = nib.orientations.ornt_transform
AXIS_LABELS_3D = ("z (I)", "y (P)", "x (L)")
#: World millimetres (canonical LPI) from RAS millimetres.
_RAS_TO_LPI = np.diag([-1.0, -1.0, -1.0, 1.0])


@dataclass(frozen=True)
class Orientation:
    """How a file's voxel array becomes the displayed array."""

    ornt: tuple[tuple[int, int], ...]  # nibabel orientation transform, file -> canonical RAS
    file_shape: tuple[int, ...]
    affine: tuple[tuple[float, ...], ...]  # the file's affine (voxel -> RAS mm)

    @classmethod
    def from_affine(cls, affine: np.ndarray, shape: tuple[int, ...]) -> Orientation:
        ornt = nib.orientations.io_orientation(np.asarray(affine, dtype=np.float64))
        return cls(
            tuple((int(a), int(f)) for a, f in ornt),
            tuple(int(n) for n in shape),
            tuple(tuple(float(v) for v in row) for row in np.asarray(affine, dtype=np.float64)),
        )

    def to_dict(self) -> dict:
        return {
            "ornt": [list(r) for r in self.ornt],
            "file_shape": list(self.file_shape),
            "affine": [list(r) for r in self.affine],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Orientation:
        return cls(
            tuple(tuple(int(v) for v in r) for r in d["ornt"]),  # type: ignore[misc]  # rows are pairs
            tuple(int(n) for n in d["file_shape"]),
            tuple(tuple(float(v) for v in r) for r in d["affine"]),
        )

    @property
    def _ornt(self) -> np.ndarray:
        return np.asarray(self.ornt, dtype=np.float64)

    @property
    def _to_canonical(self) -> np.ndarray:
        """nibabel orientation transform, file axes -> canonical LPI axes (target axis, flip)."""
        return ornt_transform(self._ornt, LPI)

    @property
    def ndim(self) -> int:
        return len(self.file_shape)

    # --- arrays -------------------------------------------------------------------------------------
    def _reverse(self) -> tuple[int, ...]:
        return tuple(range(self.ndim - 1, -1, -1))

    def to_display(self, array):
        """File voxel order -> display order: a view of a numpy array, a lazy dask array of a dask
        array (flips and a transpose only, never np.asarray, which would decode a lazy file whole)."""
        transform = self._to_canonical
        flips = tuple(slice(None, None, -1) if flip < 0 else slice(None) for _, flip in transform)
        order = list(range(array.ndim))
        order[:SPATIAL] = np.argsort(transform[:, 0]).tolist()
        canonical = array[flips].transpose(order)
        return canonical.transpose(self._reverse())

    def to_file(self, array: np.ndarray) -> np.ndarray:
        """Display order -> file voxel order (contiguous, ready for codec or a file)."""
        canonical = np.transpose(array, self._reverse())
        return np.ascontiguousarray(nib.orientations.apply_orientation(canonical, ornt_transform(LPI, self._ornt)))

    def file_selection(self, display_axis: int, index: int) -> tuple[slice | int, ...]:
        """The file-order selection (an int on one axis, full slices elsewhere) holding the display
        slice `index` along `display_axis`."""
        n = self.ndim
        if display_axis < n - SPATIAL:  # a time axis: same position in both orders
            return tuple(index if a == n - 1 - display_axis else slice(None) for a in range(n))
        canonical_axis = n - 1 - display_axis
        transform = self._to_canonical
        file_axis = next(a for a, (target, _) in enumerate(transform) if target == canonical_axis)
        flip = transform[file_axis][1] < 0
        position = self.file_shape[file_axis] - 1 - index if flip else index
        return tuple(position if a == file_axis else slice(None) for a in range(n))

    def display_position(self, file_axis: int, index: int) -> tuple[int, int]:
        """(display axis, display index) of the file slice `index` along `file_axis`."""
        n = self.ndim
        if file_axis >= SPATIAL:
            return n - 1 - file_axis, index
        target, flip = self._to_canonical[file_axis]
        return n - 1 - int(target), (self.file_shape[file_axis] - 1 - index if flip < 0 else index)

    def slab_to_display(self, slab: np.ndarray, display_axis: int) -> np.ndarray:
        """A file-order slab picked by `file_selection` (its picked axis kept as length 1) -> the
        display slice."""
        return np.take(self.to_display(slab), 0, axis=display_axis)

    def file_index(self, display_index) -> tuple[int, ...]:
        """The file voxel index of a display index (for jumps such as the worst slice)."""
        probe = np.zeros(self.display_shape, dtype=bool)
        probe[tuple(display_index)] = True
        return tuple(int(i[0]) for i in np.nonzero(self.to_file(probe)))

    @property
    def display_shape(self) -> tuple[int, ...]:
        spatial = [0] * SPATIAL
        for axis, (target, _) in enumerate(self.ornt):
            spatial[target] = self.file_shape[axis]
        shape = spatial + list(self.file_shape[SPATIAL:])
        return tuple(reversed(shape))

    # --- transforms ---------------------------------------------------------------------------------
    def canonical_affine(self) -> np.ndarray:
        """Voxel (canonical LPI index) -> LPI mm (RAS mm negated)."""
        inv = nib.orientations.inv_ornt_aff(self._to_canonical, self.file_shape[:SPATIAL])
        return _RAS_TO_LPI @ np.asarray(self.affine) @ inv

    def display_affine(self) -> np.ndarray:
        """Display index (t, k, j, i reversed) -> world (t, z, y, x) = (t, I, P, L) mm: the canonical
        affine with axes reversed."""
        canonical = self.canonical_affine()
        n = self.ndim
        display = np.eye(n + 1)
        reverse = list(range(SPATIAL - 1, -1, -1))
        display[n - SPATIAL : n, n - SPATIAL : n] = canonical[:SPATIAL, :SPATIAL][np.ix_(reverse, reverse)]
        display[n - SPATIAL : n, n] = canonical[:SPATIAL, 3][reverse]
        return display

    def layer_kwargs(self) -> dict:
        """scale/translate (or a full affine for oblique volumes) and axis labels for a napari layer."""
        display = self.display_affine()
        n = self.ndim
        linear = display[:n, :n]
        labels = (("t",) if n > SPATIAL else ()) + AXIS_LABELS_3D
        units = (("s",) if n > SPATIAL else ()) + ("mm",) * SPATIAL
        if np.allclose(linear, np.diag(np.diag(linear)), atol=1e-6):
            return {
                "scale": tuple(np.diag(linear)),
                "translate": tuple(display[:n, n]),
                "axis_labels": labels,
                "units": units,
            }
        return {"affine": display, "axis_labels": labels, "units": units}
