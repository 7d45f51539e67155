"""What a radiologist sees at a glance (issue 44): the radiological orientation without touching the
camera, an expert palette without repeats, a read-only experts layer, a readable window for MR,
refusals of what is not a grey-level volume, and DICOM series named by their description."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from codec.cli import main as moec
from codec.errors import VolumeError
from codec.io.load import save_volume
from codec.io.phantom import make_phantom
from codec.io.volume import from_array
from codec.settings import RANGES
from moec_napari.appearance import expert_colormap
from moec_napari.layer_meta import META
from moec_napari.layers import layer_orientation, volume_of_layer
from moec_napari.writer import write_image, write_labels

from ..conftest import write_dicom_series, write_nifti
from .conftest import lps_affine

RAS_AFFINE = np.array([[0.9, 0, 0, -10.0], [0, 0.8, 0, 20.0], [0, 0, 2.0, -30.0], [0, 0, 0, 1.0]])
SHAPE = (20, 18, 10)


def _camera(viewer):
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def _marked_volume(affine: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
    """A volume with a bright marker at the patient's anterior right and a dimmer one at the
    posterior left (so no symmetry hides a flip); the marker's file index."""
    raw = np.full(SHAPE, 100, dtype=np.int16)
    signs = np.sign(np.diag(affine)[:3])
    # index of the high (R, A) end along file axes 0 and 1 of an axis-aligned affine
    right = slice(SHAPE[0] - 4, SHAPE[0] - 1) if signs[0] > 0 else slice(1, 4)
    anterior = slice(SHAPE[1] - 4, SHAPE[1] - 1) if signs[1] > 0 else slice(1, 4)
    left = slice(1, 4) if signs[0] > 0 else slice(SHAPE[0] - 4, SHAPE[0] - 1)
    posterior = slice(1, 4) if signs[1] > 0 else slice(SHAPE[1] - 4, SHAPE[1] - 1)
    raw[right, anterior, 5] = 900
    raw[left, posterior, 5] = 500
    return raw, (right.start + 1, anterior.start + 1, 5)


@pytest.mark.parametrize("name,affine", [("ras", RAS_AFFINE), ("lps", lps_affine())])
def test_an_opened_volume_shows_radiologically_under_the_default_camera(make_napari_viewer, tmp_path, name, affine):
    raw, marker = _marked_volume(affine)
    path = tmp_path / f"{name}.nii.gz"
    write_nifti(path, raw, affine)
    viewer = make_napari_viewer()
    default = tuple(_camera(viewer).orientation)
    [layer] = viewer.open(str(path), plugin="moec-napari")
    assert tuple(_camera(viewer).orientation) == default  # the reader leaves the camera alone
    assert default[1:] == ("down", "right")  # world axis -2 grows down the screen, -1 to the right

    # Where the marker is, in world terms: its display index through the layer's own transform.
    orientation = layer_orientation(layer)
    shown = orientation.to_display(raw)
    display_index = np.argwhere(shown == 900)[4]  # the middle of the 3x3 marker
    assert tuple(orientation.file_index(display_index)) == marker
    world = np.asarray(layer.data_to_world(display_index))
    corners = np.array([layer.data_to_world(c) for c in ([0, 0, 0], np.asarray(layer.data.shape) - 1)])
    centre = corners.mean(axis=0)
    assert world[-2] < centre[-2] and world[-1] < centre[-1]  # top left: anterior up, right on the left
    # ... and the RAS millimetres say it is anterior and right of the centre.
    ras = (affine @ np.r_[marker, 1.0])[:3]
    ras_centre = (affine @ np.r_[(np.asarray(SHAPE) - 1) / 2, 1.0])[:3]
    assert ras[0] > ras_centre[0] and ras[1] > ras_centre[1]

    # The axial slice on the slider: the canvas's 2D slice holds the marker in its top-left quadrant.
    assert viewer.dims.ndisplay == 2 and viewer.dims.displayed == (1, 2)
    viewer.dims.set_point(0, world[0])
    on_screen = np.asarray(layer._slice.image.raw)
    rows, cols = np.nonzero(on_screen == 900)
    assert rows.size == 9
    assert rows.max() < on_screen.shape[0] / 2 and cols.max() < on_screen.shape[1] / 2
    rows, cols = np.nonzero(on_screen == 500)
    assert rows.min() > on_screen.shape[0] / 2 and cols.min() > on_screen.shape[1] / 2

    # Writing back (the plugin's writer) and painting give the file's own voxel order, exactly.
    out = tmp_path / "back.nii.gz"
    attributes = {"name": layer.name, "metadata": layer.metadata, "scale": layer.scale, "translate": layer.translate}
    write_image(str(out), layer.data, attributes)
    written = nib.load(str(out))
    np.testing.assert_array_equal(np.asarray(written.dataobj), raw)
    np.testing.assert_allclose(written.affine, nib.load(str(path)).affine)
    painted = viewer.add_labels(
        (layer.data == 900).astype(np.uint8), metadata=layer.metadata, scale=layer.scale, translate=layer.translate
    )
    np.testing.assert_array_equal(orientation.to_file(painted.data), (raw == 900).astype(np.uint8))
    mask = tmp_path / "mask.nii.gz"
    write_labels(str(mask), painted.data, {**attributes, "metadata": painted.metadata})
    np.testing.assert_array_equal(np.asarray(nib.load(str(mask)).dataobj), (raw == 900).astype(np.uint8))


def test_the_expert_palette_never_repeats_within_the_allowed_experts():
    most = RANGES["experts"][1]
    assert most == 64
    colormap = expert_colormap(most)
    colours = np.asarray(colormap.map(np.arange(1, most + 1)))
    assert colours.shape == (most, 4) and (colours[:, 3] == 1).all()
    assert len({tuple(np.round(c, 4)) for c in colours}) == most
    assert np.asarray(colormap.map(np.array([0])))[0, 3] == 0  # no expert: transparent


@pytest.fixture(scope="module")
def moec_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("details")
    volume, _ = make_phantom((32, 28, 16))
    source = folder / "ct.nii.gz"
    save_volume(from_array(volume.data, affine=lps_affine(), dtype=np.int16), source)
    path = folder / "ct.moec"
    args = ["compress", str(source), "-o", str(path), "--ratio", "20", "--steps", "20", "--batch", "512", "--quiet"]
    assert moec(args) == 0
    return path


def test_the_experts_layer_of_an_opened_file_is_read_only(make_napari_viewer, moec_file):
    viewer = make_napari_viewer()
    layers = viewer.open(str(moec_file), plugin="moec-napari")
    experts = next(layer for layer in layers if layer.metadata[META]["role"] == "experts")
    assert experts.editable is False
    assert experts.mode == "pan_zoom"


def test_mr_opens_at_its_percentiles_and_ct_at_its_window(make_napari_viewer, tmp_path):
    rng = np.random.default_rng(0)
    mr = rng.integers(0, 400, size=(24, 20, 12)).astype(np.int16)
    mr[0, 0, :4] = 4000  # a few bright voxels (fat, vessels) would leave a min-max window dim
    path = tmp_path / "mr.nii.gz"
    write_nifti(path, mr, RAS_AFFINE)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="moec-napari")
    lo, hi = np.percentile(mr, (0.5, 99.5))
    assert tuple(layer.contrast_limits) == pytest.approx((lo, hi))
    assert hi < 500

    ct = rng.integers(-1000, 1500, size=(24, 20, 12)).astype(np.int16)
    write_nifti(tmp_path / "ct.nii.gz", ct, RAS_AFFINE)
    [layer] = viewer.open(str(tmp_path / "ct.nii.gz"), plugin="moec-napari")
    assert tuple(layer.contrast_limits) == pytest.approx((-160.0, 240.0))  # the soft-tissue window


def test_rgb_and_one_slice_layers_are_refused_in_words(make_napari_viewer):
    viewer = make_napari_viewer()
    rgb = viewer.add_image(np.zeros((2, 2, 3), dtype=np.uint8), rgb=True, name="photo")
    with pytest.raises(VolumeError, match="layer 'photo' is an RGB image; MoEC compresses grey-level volumes"):
        volume_of_layer(rgb)
    one = viewer.add_image(np.zeros((1, 2, 2), dtype=np.float32), name="one slice")
    with pytest.raises(VolumeError, match=r"layer 'one slice' has one voxel along axis 0 \(shape \(1, 2, 2\)\)"):
        volume_of_layer(one)
    flat = viewer.add_image(np.zeros((2, 2), dtype=np.float32), name="flat")
    with pytest.raises(VolumeError, match=r"layer 'flat' is 2D \(shape \(2, 2\)\); MoEC compresses 3D and 4D"):
        volume_of_layer(flat)


def test_a_dicom_series_is_named_by_its_description(make_napari_viewer, tmp_path):
    raw = np.arange(8 * 6 * 4, dtype=np.int16).reshape(8, 6, 4)
    axial = {"row_cos": np.array([1.0, 0.0, 0.0]), "col_cos": np.array([0.0, 1.0, 0.0]), "origin": np.zeros(3)}
    write_dicom_series(tmp_path / "study", raw, description="CHEST 1.25 mm", **axial)
    write_dicom_series(tmp_path / "bare", raw, description="", **axial)
    viewer = make_napari_viewer()
    [named] = viewer.open(str(tmp_path / "study"), plugin="moec-napari")
    [bare] = viewer.open(str(tmp_path / "bare"), plugin="moec-napari")
    assert named.name == "CHEST 1.25 mm" and bare.name == "bare"
